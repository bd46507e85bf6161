//! The operator's typed errors: bad settings (naming the flag), Kubernetes API failures (naming the
//! object), and exhausted pod CIDR pools.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OperatorError {
    /// A flag's value cannot be used; nothing was started.
    #[error("invalid --{field}: {message}")]
    Config { field: &'static str, message: String },
    /// A call to the Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// Building the Kubernetes client failed.
    #[error("kubeconfig: {0}")]
    Client(String),
    /// No free pod CIDR is left in a pool.
    #[error("the {family} cluster pool {pool} has no free /{mask} left for node {node}")]
    PoolExhausted { family: &'static str, pool: String, mask: u8, node: String },
    /// This replica stopped being the leader (could not renew its Lease in time).
    #[error("lost leadership of lease {0}")]
    LostLeadership(String),
    #[error("health endpoint on {addr}: {source}")]
    Health {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// Attaches what was being done to a kube error.
pub trait KubeContext<T> {
    fn ctx(self, action: impl FnOnce() -> String) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn ctx(self, action: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| OperatorError::Kube { action: action(), source })
    }
}

/// True when the API answered with this HTTP status (404 not found, 409 conflict, ...).
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}
