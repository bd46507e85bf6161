//! The agent's configuration: command-line flags, optionally a YAML or TOML
//! file (`--config`), flags winning over the file. The four paths make two
//! agents on one machine fully independent.

use axon_api::{LbAlgorithm, LbMode};
use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "axon-agent", version, about = "Axon agent: eBPF service load balancing (kube-proxy replacement)")]
pub struct Flags {
    /// YAML or TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// bpffs directory holding this agent's pinned maps and links [default: /sys/fs/bpf/axon].
    #[arg(long)]
    pub bpffs_root: Option<PathBuf>,
    /// cgroup2 directory the socket-LB programs attach to [default: the cgroup2 mount].
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Unix socket of the REST API [default: /run/axon/agent.sock].
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Directory of the embedded state store [default: /var/lib/axon].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Most backends one service may have [default: 4096].
    #[arg(long)]
    pub max_backends_per_service: Option<usize>,
    /// max_entries of axon_lb{4,6}_services (one entry per frontend plus one per backend slot).
    #[arg(long)]
    pub lb_service_map_max: Option<u32>,
    /// max_entries of axon_lb{4,6}_backends.
    #[arg(long)]
    pub lb_backend_map_max: Option<u32>,
    /// max_entries of axon_lb{4,6}_reverse_nat (one per service).
    #[arg(long)]
    pub lb_revnat_map_max: Option<u32>,
    /// max_entries of the LRU axon_lb{4,6}_reverse_sk socket maps.
    #[arg(long)]
    pub lb_sock_revnat_map_max: Option<u32>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// This node's name: backends whose `node` matches are local [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// North-south mode for services that do not choose: snat, dsr or hybrid [default: snat].
    #[arg(long)]
    pub lb_mode: Option<String>,
    /// North-south backend selection for services that do not choose: random or maglev [default: random].
    #[arg(long)]
    pub lb_algorithm: Option<String>,
    /// NodePort range, MIN-MAX [default: 30000-32767].
    #[arg(long)]
    pub nodeport_range: Option<String>,
    /// Entries of each Maglev table, a prime [default: 16381].
    #[arg(long)]
    pub maglev_table_size: Option<u32>,
    /// Detach every program and remove every pin under --bpffs-root, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// The same settings as a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub bpffs_root: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub max_backends_per_service: Option<usize>,
    pub lb_service_map_max: Option<u32>,
    pub lb_backend_map_max: Option<u32>,
    pub lb_revnat_map_max: Option<u32>,
    pub lb_sock_revnat_map_max: Option<u32>,
    pub log_level: Option<String>,
    pub node_name: Option<String>,
    pub lb_mode: Option<String>,
    pub lb_algorithm: Option<String>,
    pub nodeport_range: Option<String>,
    pub maglev_table_size: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bpffs_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub max_backends_per_service: usize,
    pub lb_service_map_max: u32,
    pub lb_backend_map_max: u32,
    pub lb_revnat_map_max: u32,
    pub lb_sock_revnat_map_max: u32,
    pub log_level: String,
    pub node_name: String,
    pub lb_mode: LbMode,
    pub lb_algorithm: LbAlgorithm,
    pub nodeport_range: (u16, u16),
    pub maglev_table_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("--cgroup-root not given and no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    pub fn from_flags(flags: &Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let cgroup_root = match flags.cgroup_root.clone().or(file.cgroup_root) {
            Some(p) => p,
            None if flags.cleanup => PathBuf::new(),
            None => find_cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
                .ok_or(ConfigError::NoCgroup2)?,
        };
        let d = axon_bpf::maps::defaults::SERVICE_ENTRIES;
        let config = Config {
            bpffs_root: flags.bpffs_root.clone().or(file.bpffs_root).unwrap_or_else(|| "/sys/fs/bpf/axon".into()),
            cgroup_root,
            api_socket: flags.api_socket.clone().or(file.api_socket).unwrap_or_else(|| "/run/axon/agent.sock".into()),
            state_dir: flags.state_dir.clone().or(file.state_dir).unwrap_or_else(|| "/var/lib/axon".into()),
            max_backends_per_service: flags.max_backends_per_service.or(file.max_backends_per_service).unwrap_or(4096),
            lb_service_map_max: flags.lb_service_map_max.or(file.lb_service_map_max).unwrap_or(d),
            lb_backend_map_max: flags
                .lb_backend_map_max
                .or(file.lb_backend_map_max)
                .unwrap_or(axon_bpf::maps::defaults::BACKEND_ENTRIES),
            lb_revnat_map_max: flags
                .lb_revnat_map_max
                .or(file.lb_revnat_map_max)
                .unwrap_or(axon_bpf::maps::defaults::REVNAT_ENTRIES),
            lb_sock_revnat_map_max: flags
                .lb_sock_revnat_map_max
                .or(file.lb_sock_revnat_map_max)
                .unwrap_or(axon_bpf::maps::defaults::SOCK_REVNAT_ENTRIES),
            log_level: flags.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into()),
            node_name: flags.node_name.clone().or(file.node_name).unwrap_or_else(hostname),
            lb_mode: parse_setting("lb-mode", flags.lb_mode.clone().or(file.lb_mode), LbMode::Snat)?,
            lb_algorithm: parse_setting("lb-algorithm", flags.lb_algorithm.clone().or(file.lb_algorithm), LbAlgorithm::Random)?,
            nodeport_range: parse_range("nodeport-range", flags.nodeport_range.clone().or(file.nodeport_range), (30000, 32767))?,
            maglev_table_size: flags.maglev_table_size.or(file.maglev_table_size).unwrap_or(crate::service::maglev::DEFAULT_TABLE_SIZE),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=65535).contains(&self.max_backends_per_service) {
            return Err(ConfigError::Invalid {
                field: "max-backends-per-service",
                message: "must be between 1 and 65535".into(),
            });
        }
        if !crate::service::maglev::is_prime(self.maglev_table_size) || self.maglev_table_size > 1 << 20 {
            return Err(ConfigError::Invalid {
                field: "maglev-table-size",
                message: format!(
                    "{} is not a prime up to 1048576 (try one of {:?})",
                    self.maglev_table_size,
                    crate::service::maglev::SUGGESTED_SIZES
                ),
            });
        }
        if self.node_name.is_empty() {
            return Err(ConfigError::Invalid { field: "node-name", message: "must not be empty".into() });
        }
        for (field, v) in [
            ("lb-service-map-max", self.lb_service_map_max),
            ("lb-backend-map-max", self.lb_backend_map_max),
            ("lb-revnat-map-max", self.lb_revnat_map_max),
            ("lb-sock-revnat-map-max", self.lb_sock_revnat_map_max),
        ] {
            if v < 16 {
                return Err(ConfigError::Invalid { field, message: format!("must be at least 16, got {v}") });
            }
        }
        Ok(())
    }
}

fn parse_setting<T: std::str::FromStr<Err = String>>(field: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|message| ConfigError::Invalid { field, message }),
    }
}

/// `MIN-MAX`, both ports, MIN <= MAX.
pub fn parse_range(field: &'static str, value: Option<String>, default: (u16, u16)) -> Result<(u16, u16), ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let invalid = |message: String| ConfigError::Invalid { field, message };
    let (lo, hi) = v.split_once('-').ok_or_else(|| invalid(format!("{v:?} is not MIN-MAX")))?;
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| invalid(format!("{p:?} is not a port (1-65535)")));
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(invalid(format!("{lo} is above {hi}")));
    }
    Ok((lo, hi))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    } else {
        serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// The mount point of the cgroup2 hierarchy (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn north_south_settings_are_checked() {
        let base = ["axon-agent", "--cgroup-root", "/tmp/cg"];
        let parse = |extra: &[&str]| Config::from_flags(&Flags::parse_from(base.iter().chain(extra)));
        let c = parse(&["--lb-mode", "hybrid", "--nodeport-range", "20000-20100", "--node-name", "n1"]).unwrap();
        assert_eq!((c.lb_mode, c.nodeport_range, c.node_name.as_str()), (LbMode::Hybrid, (20000, 20100), "n1"));
        assert!(parse(&["--lb-mode", "tunnel"]).unwrap_err().to_string().starts_with("lb-mode:"));
        assert!(parse(&["--nodeport-range", "32767-30000"]).unwrap_err().to_string().starts_with("nodeport-range:"));
        assert!(parse(&["--maglev-table-size", "16384"]).unwrap_err().to_string().starts_with("maglev-table-size:"));
        assert_eq!(parse(&["--lb-algorithm", "maglev"]).unwrap().lb_algorithm, LbAlgorithm::Maglev);
    }

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        let mi = "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"), None);
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("axon-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "bpffs-root: /sys/fs/bpf/from-file\nstate-dir: /tmp/s\ncgroup-root: /tmp/cg\n").unwrap();
        let flags = Flags::parse_from(["axon-agent", "--config", file.to_str().unwrap(), "--state-dir", "/tmp/flag"]);
        let c = Config::from_flags(&flags).unwrap();
        assert_eq!((c.bpffs_root.to_str(), c.state_dir.to_str()), (Some("/sys/fs/bpf/from-file"), Some("/tmp/flag")));
        std::fs::write(&file, "bpffs-rot: /x\n").unwrap();
        assert!(Config::from_flags(&flags).unwrap_err().to_string().contains("bpffs-rot"));
        let toml_file = dir.join("agent.toml");
        std::fs::write(&toml_file, "max-backends-per-service = 8\ncgroup-root = \"/tmp/cg\"\n").unwrap();
        let flags = Flags::parse_from(["axon-agent", "--config", toml_file.to_str().unwrap()]);
        assert_eq!(Config::from_flags(&flags).unwrap().max_backends_per_service, 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
