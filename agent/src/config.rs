//! The agent's configuration: command-line flags, optionally a YAML or TOML
//! file (`--config`), flags winning over the file. The four paths make two
//! agents on one machine fully independent.

use crate::datapath::{CtTimeouts, DatapathConfig, Devices, PortRange, XdpMode};
use axon_api::{LbAlgorithm, LbMode};
use clap::Parser;
use serde::Deserialize;
use std::net::IpAddr;
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
    /// Node devices for NodePort/LoadBalancer/externalIPs: `auto` (the default-route devices), `none`
    /// (socket-LB only), or a comma-separated list [default: auto].
    #[arg(long)]
    pub devices: Option<String>,
    /// Node addresses beside the devices' own, comma-separated.
    #[arg(long)]
    pub node_addresses: Option<String>,
    /// XDP acceleration: native, best-effort (native where the driver can, tc elsewhere), generic, disabled
    /// [default: best-effort].
    #[arg(long)]
    pub xdp_mode: Option<String>,
    /// Source ports SNAT uses, MIN-MAX, outside the NodePort range [default: 61000-65535].
    #[arg(long)]
    pub snat_port_range: Option<String>,
    /// Conntrack timeouts in seconds: TCP before the handshake completes [default: 60].
    #[arg(long)]
    pub ct_timeout_syn: Option<u32>,
    /// Conntrack timeout of established TCP [default: 21600].
    #[arg(long)]
    pub ct_timeout_tcp: Option<u32>,
    /// Conntrack timeout after FIN/RST [default: 10].
    #[arg(long)]
    pub ct_timeout_close: Option<u32>,
    /// Conntrack timeout of UDP flows [default: 60].
    #[arg(long)]
    pub ct_timeout_udp: Option<u32>,
    /// Seconds between conntrack garbage collections [default: 30].
    #[arg(long)]
    pub ct_gc_interval: Option<u64>,
    /// max_entries of each axon_ct{4,6}_global (two entries per flow).
    #[arg(long)]
    pub ct_map_max: Option<u32>,
    /// max_entries of axon_lb_maglev (table size × Maglev services).
    #[arg(long)]
    pub maglev_map_max: Option<u32>,
    /// max_entries of axon_lb_affinity.
    #[arg(long)]
    pub affinity_map_max: Option<u32>,
    /// max_entries of each axon_lb{4,6}_source_range.
    #[arg(long)]
    pub source_range_map_max: Option<u32>,
    /// Mesh acceleration (sidecar capture + sockmap bypass): istio, linkerd or off [default: off].
    #[arg(long)]
    pub mesh_mode: Option<String>,
    /// The sidecar's outbound port [default: 15001 istio, 4140 linkerd].
    #[arg(long)]
    pub mesh_outbound_port: Option<u16>,
    /// The sidecar's inbound port [default: 15006 istio, 4143 linkerd].
    #[arg(long)]
    pub mesh_inbound_port: Option<u16>,
    /// The sidecar's uid, whose own connections are not captured [default: 1337 istio, 2102 linkerd].
    #[arg(long)]
    pub mesh_proxy_uid: Option<u32>,
    /// Sockmap bypass of local socket pairs for accelerated pods: on or off [default: on].
    #[arg(long)]
    pub mesh_bypass: Option<String>,
    /// Serve the cluster's Services from Kubernetes instead of the embedded store: in-cluster credentials unless
    /// --k8s-kubeconfig is given [default: false; true when a kubeconfig is given].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub k8s_enabled: Option<bool>,
    /// Kubeconfig file for the Kubernetes API server (implies --k8s-enabled).
    #[arg(long)]
    pub k8s_kubeconfig: Option<PathBuf>,
    /// Serve only Services labelled service.kubernetes.io/service-proxy-name=NAME [default: only unlabelled ones].
    #[arg(long)]
    pub k8s_service_proxy_name: Option<String>,
    /// Where security identities are allocated: embedded (this node only), crd (AxonIdentity objects) or
    /// kvstore (etcd) [default: embedded].
    #[arg(long)]
    pub identity_allocation_mode: Option<String>,
    /// Identity numbers to allocate from, MIN-MAX [default: 256-65535].
    #[arg(long)]
    pub identity_range: Option<String>,
    /// etcd client URLs for --identity-allocation-mode kvstore, comma-separated.
    #[arg(long)]
    pub kvstore_endpoints: Option<String>,
    /// Seconds this node's etcd lease (and so its identity references) outlives it [default: 15].
    #[arg(long)]
    pub kvstore_lease_ttl: Option<u64>,
    /// Detach every program and remove every pin under --bpffs-root, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// The same settings as a file.
#[derive(Debug, Default, Clone, Deserialize)]
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
    pub devices: Option<String>,
    pub node_addresses: Option<String>,
    pub xdp_mode: Option<String>,
    pub snat_port_range: Option<String>,
    pub ct_timeout_syn: Option<u32>,
    pub ct_timeout_tcp: Option<u32>,
    pub ct_timeout_close: Option<u32>,
    pub ct_timeout_udp: Option<u32>,
    pub ct_gc_interval: Option<u64>,
    pub ct_map_max: Option<u32>,
    pub maglev_map_max: Option<u32>,
    pub affinity_map_max: Option<u32>,
    pub source_range_map_max: Option<u32>,
    pub k8s_enabled: Option<bool>,
    pub k8s_kubeconfig: Option<PathBuf>,
    pub k8s_service_proxy_name: Option<String>,
    pub identity_allocation_mode: Option<String>,
    pub identity_range: Option<String>,
    pub kvstore_endpoints: Option<String>,
    pub kvstore_lease_ttl: Option<u64>,
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
    /// Everything the kernel side needs (paths, sizes, devices, timeouts).
    pub datapath: DatapathConfig,
    pub ct_gc_interval: std::time::Duration,
    /// Services come from Kubernetes (true) or the embedded store (false, the default).
    pub k8s_enabled: bool,
    /// Kubeconfig for the API server; None with `k8s_enabled` means in-cluster credentials.
    pub k8s_kubeconfig: Option<PathBuf>,
    /// The service-proxy-name label value this agent serves (None: only unlabelled Services).
    pub k8s_service_proxy_name: Option<String>,
    /// Security identities: allocation mode, range, etcd.
    pub identity: crate::identity::IdentityConfig,
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
        let file_for_datapath = file.clone();
        let k8s_kubeconfig = flags.k8s_kubeconfig.clone().or(file.k8s_kubeconfig.clone());
        let k8s_enabled = flags.k8s_enabled.or(file.k8s_enabled).unwrap_or(k8s_kubeconfig.is_some());
        let k8s_service_proxy_name = flags.k8s_service_proxy_name.clone().or(file.k8s_service_proxy_name.clone());
        let identity = crate::identity::IdentityConfig::from_settings(flags, &file_for_datapath)
            .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        let cgroup_root = match flags.cgroup_root.clone().or(file.cgroup_root) {
            Some(p) => p,
            None if flags.cleanup => PathBuf::new(),
            None => find_cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
                .ok_or(ConfigError::NoCgroup2)?,
        };
        let d = axon_bpf::maps::defaults::SERVICE_ENTRIES;
        let mut config = Config {
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
            lb_algorithm: parse_setting(
                "lb-algorithm",
                flags.lb_algorithm.clone().or(file.lb_algorithm),
                LbAlgorithm::Random,
            )?,
            nodeport_range: parse_range(
                "nodeport-range",
                flags.nodeport_range.clone().or(file.nodeport_range),
                (30000, 32767),
            )?,
            maglev_table_size: flags
                .maglev_table_size
                .or(file.maglev_table_size)
                .unwrap_or(crate::service::maglev::DEFAULT_TABLE_SIZE),
            datapath: DatapathConfig::default(),
            ct_gc_interval: std::time::Duration::from_secs(
                flags.ct_gc_interval.or(file.ct_gc_interval).unwrap_or(30).max(1),
            ),
            k8s_enabled,
            k8s_kubeconfig,
            k8s_service_proxy_name,
            identity,
        };
        config.datapath = datapath_config(flags, &file_for_datapath, &config)?;
        config.validate()?;
        config.datapath.validate().map_err(|e| ConfigError::Invalid { field: e.field, message: e.message })?;
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

/// The datapath's share of the settings, in its own types.
fn datapath_config(flags: &Flags, file: &FileConfig, c: &Config) -> Result<DatapathConfig, ConfigError> {
    let defaults = DatapathConfig::default();
    let pick = |flag: Option<u32>, file: Option<u32>, default: u32| flag.or(file).unwrap_or(default);
    let node_addresses = match flags.node_addresses.clone().or(file.node_addresses.clone()) {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                a.trim().parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
                    field: "node-addresses",
                    message: format!("invalid address {a:?}"),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let t = CtTimeouts::default();
    Ok(DatapathConfig {
        bpffs_root: c.bpffs_root.clone(),
        cgroup_root: c.cgroup_root.clone(),
        service_entries: c.lb_service_map_max,
        backend_entries: c.lb_backend_map_max,
        rev_nat_entries: c.lb_revnat_map_max,
        sock_revnat_entries: c.lb_sock_revnat_map_max,
        devices: parse_setting::<Devices>("devices", flags.devices.clone().or(file.devices.clone()), Devices::Auto)?,
        extra_node_addresses: node_addresses,
        xdp_mode: parse_setting::<XdpMode>(
            "xdp-mode",
            flags.xdp_mode.clone().or(file.xdp_mode.clone()),
            XdpMode::default(),
        )?,
        lb_mode: c.lb_mode,
        nodeport_range: PortRange { min: c.nodeport_range.0, max: c.nodeport_range.1 },
        snat_port_range: parse_setting::<PortRange>(
            "snat-port-range",
            flags.snat_port_range.clone().or(file.snat_port_range.clone()),
            defaults.snat_port_range,
        )?,
        maglev_table_size: c.maglev_table_size,
        ct_timeouts: CtTimeouts {
            syn: pick(flags.ct_timeout_syn, file.ct_timeout_syn, t.syn),
            tcp: pick(flags.ct_timeout_tcp, file.ct_timeout_tcp, t.tcp),
            close: pick(flags.ct_timeout_close, file.ct_timeout_close, t.close),
            udp: pick(flags.ct_timeout_udp, file.ct_timeout_udp, t.udp),
        },
        ct_entries: pick(flags.ct_map_max, file.ct_map_max, defaults.ct_entries),
        maglev_entries: pick(flags.maglev_map_max, file.maglev_map_max, defaults.maglev_entries),
        affinity_entries: pick(flags.affinity_map_max, file.affinity_map_max, defaults.affinity_entries),
        source_range_entries: pick(
            flags.source_range_map_max,
            file.source_range_map_max,
            defaults.source_range_entries,
        ),
    })
}

fn parse_setting<T: std::str::FromStr<Err = String>>(
    field: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
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
    let port = |p: &str| {
        p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| invalid(format!("{p:?} is not a port (1-65535)")))
    };
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
    fn kubernetes_is_chosen_by_a_kubeconfig_or_explicitly_and_embedded_stays_the_default() {
        let base = ["axon-agent", "--cgroup-root", "/tmp/cg"];
        let parse = |extra: &[&str]| Config::from_flags(&Flags::parse_from(base.iter().chain(extra))).unwrap();
        assert!(!parse(&[]).k8s_enabled);
        let c = parse(&["--k8s-kubeconfig", "/etc/axon/kubeconfig"]);
        assert!(c.k8s_enabled && c.k8s_kubeconfig == Some(PathBuf::from("/etc/axon/kubeconfig")));
        let c = parse(&["--k8s-enabled", "--k8s-service-proxy-name", "axon"]);
        assert!(c.k8s_enabled && c.k8s_kubeconfig.is_none());
        assert_eq!(c.k8s_service_proxy_name.as_deref(), Some("axon"));
        assert!(!parse(&["--k8s-enabled=false", "--k8s-kubeconfig", "/k"]).k8s_enabled);
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
