//! The harness's one error type: every failure says what the lab was doing.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {what}: {message}")]
    Netlink { what: String, message: String },
    #[error("{path} not found: run `cargo build --workspace` first (or point AXON_BIN_DIR at the binaries)")]
    MissingBinary { path: PathBuf },
    #[error("axon-agent: {message}\n--- agent log ({log}) ---\n{stderr}")]
    Agent { message: String, log: PathBuf, stderr: String },
    #[error("lab client: {0}")]
    Client(String),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, LabError>;

impl LabError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io { what: what.into(), source }
    }
}

/// Attaches what the lab was doing to an io::Error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| LabError::io(what(), e))
    }
}
