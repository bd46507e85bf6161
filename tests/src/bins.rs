//! Finding the workspace's binaries (`axon-agent`, `agentctl`, `lab-client`)
//! and naming things uniquely so tests never collide.

use crate::error::{LabError, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Where the binaries are: `$AXON_BIN_DIR`, else `target/<profile>/` — the
/// test binary lives in `target/<profile>/deps/`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AXON_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| LabError::io("finding the test executable", e))?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of binary `name`, or an error telling how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::MissingBinary { path })
    }
}

/// Whether `axon-agent --help` lists `flag` (asked once per process).
pub fn agent_has_flag(flag: &str) -> Result<bool> {
    static HELP: OnceLock<String> = OnceLock::new();
    if let Some(help) = HELP.get() {
        return Ok(help_lists(help, flag));
    }
    let out = std::process::Command::new(binary("axon-agent")?)
        .arg("--help")
        .output()
        .map_err(|e| LabError::io("running axon-agent --help", e))?;
    let help = HELP.get_or_init(|| String::from_utf8_lossy(&out.stdout).into_owned());
    Ok(help_lists(help, flag))
}

fn help_lists(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == flag)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `axt-<pid>-<seq>`: unique on this machine while this process lives, and
/// the pid lets [`crate::sweep`] recognise leftovers of dead test processes.
pub fn unique_id() -> String {
    format!("axt-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Keeps `[a-z0-9]`, maps the rest to `_`, and bounds the length: a label
/// that is safe in file names.
pub fn sanitize_label(label: &str) -> String {
    label.chars().take(24).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let e = binary("no-such-axon-binary").expect_err("missing");
        assert!(e.to_string().contains("cargo build --workspace"), "{e}");
    }

    #[test]
    fn help_lists_whole_flags_only() {
        let help = "  --devices <DEVICES>\n      --node-name <NODE_NAME>\n  -h, --help";
        assert!(help_lists(help, "--devices"));
        assert!(help_lists(help, "-h"));
        assert!(!help_lists(help, "--dev"));
    }

    #[test]
    fn unique_ids_carry_the_pid_and_differ() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("axt-{}-", std::process::id())));
        assert_eq!(sanitize_label("Web/UDP v6"), "web_udp_v6");
    }
}
