//! Where the datapath pins and attaches, how large its maps are, and the
//! node settings of north-south load balancing (devices, XDP, NodePort and
//! SNAT ranges, conntrack timeouts, Maglev).

use axon_api::LbMode;
use axon_bpf::maps::{defaults, lb_mode, AxonConfig};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The bpffs directory the agent owns unless told otherwise.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/axon";

/// Kubernetes' default NodePort range.
pub const DEFAULT_NODEPORT_RANGE: PortRange = PortRange { min: 30000, max: 32767 };

/// Source ports for SNAT: above Linux's default ephemeral range
/// (`ip_local_port_range` 32768-60999) and the NodePort range, so a
/// translated flow never takes the 4-tuple of a local socket. That leaves
/// 4536 concurrent flows per (node address, backend address and port).
pub const DEFAULT_SNAT_PORT_RANGE: PortRange = PortRange { min: 61000, max: 65535 };

/// Maglev table size: a prime; 16381 keeps a service's table at 64 KiB of
/// map values and spreads up to ~160 backends within 1% of each other.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// Which network devices get the north-south programs (tc, XDP).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Devices {
    /// No device programs: socket-LB only. The library default, so a
    /// datapath loaded without a decision never touches a network device.
    #[default]
    None,
    /// The device(s) of the default route(s), IPv4 and IPv6, in the agent's
    /// network namespace.
    Auto,
    /// These devices, by name (`--devices eth0,eth1`); each must exist.
    Named(Vec<String>),
}

impl FromStr for Devices {
    type Err = String;
    /// `auto`, `none`, or a comma-separated list of device names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Devices::Auto),
            "none" | "" => Ok(Devices::None),
            list => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
                if let Some(bad) = names.iter().find(|n| !valid_ifname(n)) {
                    return Err(format!("invalid device name {bad:?}"));
                }
                Ok(Devices::Named(names))
            }
        }
    }
}

/// The kernel's rule (`dev_valid_name`): 1-15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`; `@` is refused too because link pins use it
/// as the separator (`nodeport_ingress@eth0`).
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '@' || c.is_whitespace())
}

/// How the XDP entry program is attached to each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// Native (driver) XDP on every device; loading fails where a device
    /// cannot run it.
    Native,
    /// Native XDP where the driver supports it; other devices are silently
    /// left to tc, which serves everything XDP does.
    #[default]
    BestEffort,
    /// Generic (skb) XDP on every device: works on any device, runs after
    /// the skb is built, so it is slower than native but still before tc.
    Generic,
    /// No XDP: tc serves everything.
    Disabled,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::BestEffort => "best-effort",
            XdpMode::Generic => "generic",
            XdpMode::Disabled => "disabled",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(XdpMode::Native),
            "best-effort" | "besteffort" => Ok(XdpMode::BestEffort),
            "generic" => Ok(XdpMode::Generic),
            "disabled" | "none" => Ok(XdpMode::Disabled),
            _ => Err(format!("unknown XDP mode {s:?} (expected native, best-effort, generic or disabled)")),
        }
    }
}

/// An inclusive port range, `30000-32767`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;
    /// `MIN-MAX` (inclusive, MIN <= MAX, both 1-65535) or a single port.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("invalid port {p:?} in range {s:?} (ports are 1-65535)"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if min > max {
            return Err(format!("port range {s:?} ends before it starts"));
        }
        Ok(PortRange { min, max })
    }
}

/// Conntrack lifetimes by state, in seconds. An entry expires this long
/// after the last packet that refreshed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtTimeouts {
    /// TCP until the handshake completes.
    pub syn: u32,
    /// Established TCP.
    pub tcp: u32,
    /// TCP after FIN or RST.
    pub close: u32,
    pub udp: u32,
}

impl Default for CtTimeouts {
    /// Cilium's defaults: 60 s, 6 h, 10 s, 60 s.
    fn default() -> Self {
        CtTimeouts { syn: 60, tcp: 21_600, close: 10, udp: 60 }
    }
}

/// A setting the datapath refuses, named as the agent's flag names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidConfig {
    pub field: &'static str,
    pub message: String,
}

/// How the datapath is laid out on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// bpffs directory holding `maps/` and `links/`; must be on a bpffs.
    pub bpffs_root: PathBuf,
    /// cgroup2 directory the socket-LB programs attach to; every socket
    /// created in it or below is load-balanced.
    pub cgroup_root: PathBuf,
    /// max_entries of `axon_lb{4,6}_services` (one entry per slot).
    pub service_entries: u32,
    /// max_entries of `axon_lb{4,6}_backends`.
    pub backend_entries: u32,
    /// max_entries of `axon_lb{4,6}_reverse_nat` (one per service).
    pub rev_nat_entries: u32,
    /// max_entries of the LRU `axon_lb{4,6}_reverse_sk` (sockets remembered
    /// for getpeername/recvmsg).
    pub sock_revnat_entries: u32,
    /// Devices that get the north-south programs, in the network namespace
    /// of the thread that calls [`Datapath::load`](super::Datapath::load).
    pub devices: Devices,
    /// Node addresses beside those of the devices (NodePort answers on
    /// every node address).
    pub extra_node_addresses: Vec<IpAddr>,
    pub xdp_mode: XdpMode,
    /// The agent's default mode; a service may override it.
    pub lb_mode: LbMode,
    /// NodePorts allowed; reserved from the ephemeral ports while devices
    /// are served.
    pub nodeport_range: PortRange,
    /// Source ports SNAT picks from; must not overlap the NodePort range.
    pub snat_port_range: PortRange,
    /// Entries of each Maglev table; a prime.
    pub maglev_table_size: u32,
    pub ct_timeouts: CtTimeouts,
    /// max_entries of each LRU `axon_ct{4,6}_global` (two per flow).
    pub ct_entries: u32,
    /// max_entries of `axon_lb_maglev` (table size per service and scope
    /// with Maglev).
    pub maglev_entries: u32,
    /// max_entries of the LRU `axon_lb_affinity`.
    pub affinity_entries: u32,
    /// max_entries of each `axon_lb{4,6}_source_range` LPM trie.
    pub source_range_entries: u32,
}

impl Default for DatapathConfig {
    /// The defaults of `axon_bpf::maps::defaults`, the machine's cgroup2 mount
    /// (falling back to `/sys/fs/cgroup`), [`DEFAULT_BPFFS_ROOT`], and no
    /// device programs ([`Devices::None`]; the agent binary asks for
    /// [`Devices::Auto`] unless told otherwise).
    fn default() -> Self {
        Self {
            bpffs_root: PathBuf::from(DEFAULT_BPFFS_ROOT),
            cgroup_root: cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            service_entries: defaults::SERVICE_ENTRIES,
            backend_entries: defaults::BACKEND_ENTRIES,
            rev_nat_entries: defaults::REVNAT_ENTRIES,
            sock_revnat_entries: defaults::SOCK_REVNAT_ENTRIES,
            devices: Devices::None,
            extra_node_addresses: Vec::new(),
            xdp_mode: XdpMode::default(),
            lb_mode: LbMode::Snat,
            nodeport_range: DEFAULT_NODEPORT_RANGE,
            snat_port_range: DEFAULT_SNAT_PORT_RANGE,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            ct_timeouts: CtTimeouts::default(),
            ct_entries: defaults::CT_ENTRIES,
            maglev_entries: defaults::MAGLEV_ENTRIES,
            affinity_entries: defaults::AFFINITY_ENTRIES,
            source_range_entries: defaults::SRC_RANGE_ENTRIES,
        }
    }
}

impl DatapathConfig {
    /// Defaults, with the given bpffs root and cgroup.
    pub fn new(bpffs_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        Self { bpffs_root: bpffs_root.into(), cgroup_root: cgroup_root.into(), ..Self::default() }
    }

    /// Checks every setting the kernel side depends on; the first problem
    /// is reported with the agent flag's name.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |field, message: String| Err(InvalidConfig { field, message });
        for (field, v) in [
            ("lb-service-map-max", self.service_entries),
            ("lb-backend-map-max", self.backend_entries),
            ("lb-revnat-map-max", self.rev_nat_entries),
            ("lb-sock-revnat-map-max", self.sock_revnat_entries),
            ("ct-map-max", self.ct_entries),
            ("maglev-map-max", self.maglev_entries),
            ("affinity-map-max", self.affinity_entries),
            ("source-range-map-max", self.source_range_entries),
        ] {
            if v == 0 {
                return invalid(field, "a map needs at least one entry".into());
            }
        }
        if !is_prime(self.maglev_table_size) {
            return invalid("maglev-table-size", format!("must be a prime, got {}", self.maglev_table_size));
        }
        if self.maglev_table_size > self.maglev_entries {
            return invalid(
                "maglev-table-size",
                format!(
                    "{} does not fit in the Maglev map ({} entries); raise maglev-map-max",
                    self.maglev_table_size, self.maglev_entries
                ),
            );
        }
        if self.nodeport_range.overlaps(&self.snat_port_range) {
            return invalid(
                "snat-port-range",
                format!("{} overlaps the NodePort range {}", self.snat_port_range, self.nodeport_range),
            );
        }
        let t = &self.ct_timeouts;
        for (field, v) in [
            ("ct-timeout-syn", t.syn),
            ("ct-timeout-tcp", t.tcp),
            ("ct-timeout-close", t.close),
            ("ct-timeout-udp", t.udp),
        ] {
            if v == 0 {
                return invalid(field, "must be at least 1 second".into());
            }
        }
        if let Devices::Named(names) = &self.devices {
            if names.is_empty() {
                return invalid("devices", "an empty device list; use `none` or `auto`".into());
            }
            if let Some(bad) = names.iter().find(|n| !valid_ifname(n)) {
                return invalid("devices", format!("invalid device name {bad:?}"));
            }
        }
        Ok(())
    }

    /// The `axon_config` map value these settings make.
    pub fn kernel_config(&self) -> AxonConfig {
        AxonConfig {
            ct_timeout_syn: self.ct_timeouts.syn,
            ct_timeout_tcp: self.ct_timeouts.tcp,
            ct_timeout_close: self.ct_timeouts.close,
            ct_timeout_udp: self.ct_timeouts.udp,
            maglev_table_size: self.maglev_table_size,
            nodeport_min: self.nodeport_range.min,
            nodeport_max: self.nodeport_range.max,
            snat_port_min: self.snat_port_range.min,
            snat_port_max: self.snat_port_range.max,
            lb_mode: match self.lb_mode {
                LbMode::Snat => lb_mode::SNAT,
                LbMode::Dsr => lb_mode::DSR,
                LbMode::Hybrid => lb_mode::HYBRID,
            },
            pad: [0; 3],
        }
    }
}

/// Trial division: table sizes are at most a few million.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The first cgroup2 mount in `/proc/self/mountinfo`: `/sys/fs/cgroup` on a
/// unified layout, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| mount_point_of_type(line, "cgroup2"))
}

/// The mount point of a mountinfo line if its filesystem type is `fstype`.
/// Format: `id parent maj:min root mount-point options [optional...] - fstype source super-options`.
fn mount_point_of_type(line: &str, fstype: &str) -> Option<PathBuf> {
    let (before, after) = line.split_once(" - ")?;
    if after.split_whitespace().next()? != fstype {
        return None;
    }
    let mount_point = before.split_whitespace().nth(4)?;
    Some(PathBuf::from(unescape_mountinfo(mount_point)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok());
        match (bytes[i], octal.and_then(|d| u8::from_str_radix(d, 8).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The nearest ancestor of `path` (or `path` itself) that exists: where a
/// not-yet-created directory would land.
pub(crate) fn nearest_existing(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_points_in_mountinfo_lines() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw";
        assert_eq!(mount_point_of_type(hybrid, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v1 = "36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert_eq!(mount_point_of_type(v1, "cgroup2"), None);
        let escaped = r"40 25 0:33 / /mnt/my\040cg rw - cgroup2 none rw";
        assert_eq!(mount_point_of_type(escaped, "cgroup2"), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!("30000-32767".parse::<PortRange>(), Ok(DEFAULT_NODEPORT_RANGE));
        assert_eq!("8080".parse::<PortRange>(), Ok(PortRange { min: 8080, max: 8080 }));
        assert!("32767-30000".parse::<PortRange>().unwrap_err().contains("ends before"));
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
        assert_eq!(DEFAULT_SNAT_PORT_RANGE.len(), 4536);
        assert!(!DEFAULT_NODEPORT_RANGE.overlaps(&DEFAULT_SNAT_PORT_RANGE));
    }

    #[test]
    fn devices_and_xdp_modes_parse() {
        assert_eq!("auto".parse::<Devices>(), Ok(Devices::Auto));
        assert_eq!("none".parse::<Devices>(), Ok(Devices::None));
        assert_eq!("eth0, eth1".parse::<Devices>(), Ok(Devices::Named(vec!["eth0".into(), "eth1".into()])));
        assert!("eth0,a/b".parse::<Devices>().is_err());
        assert!("averyveryverylongname".parse::<Devices>().is_err());
        assert_eq!("best-effort".parse::<XdpMode>(), Ok(XdpMode::BestEffort));
        assert_eq!("Native".parse::<XdpMode>(), Ok(XdpMode::Native));
        assert!("turbo".parse::<XdpMode>().unwrap_err().contains("native, best-effort, generic or disabled"));
    }

    #[test]
    fn validation_names_the_setting() {
        let ok = DatapathConfig::new("/sys/fs/bpf/x", "/sys/fs/cgroup");
        assert_eq!(ok.validate(), Ok(()));
        let field = |c: DatapathConfig| c.validate().unwrap_err().field;
        assert_eq!(field(DatapathConfig { maglev_table_size: 16383, ..ok.clone() }), "maglev-table-size");
        assert_eq!(
            field(DatapathConfig { maglev_table_size: 251, maglev_entries: 100, ..ok.clone() }),
            "maglev-table-size"
        );
        assert_eq!(
            field(DatapathConfig { snat_port_range: PortRange { min: 32000, max: 40000 }, ..ok.clone() }),
            "snat-port-range"
        );
        let zero = CtTimeouts { close: 0, ..CtTimeouts::default() };
        assert_eq!(field(DatapathConfig { ct_timeouts: zero, ..ok.clone() }), "ct-timeout-close");
        assert_eq!(field(DatapathConfig { ct_entries: 0, ..ok.clone() }), "ct-map-max");
        assert_eq!(field(DatapathConfig { devices: Devices::Named(vec![]), ..ok.clone() }), "devices");
        assert!(is_prime(16381) && is_prime(65521) && is_prime(2) && !is_prime(1) && !is_prime(16383));
    }

    #[test]
    fn kernel_config_carries_every_setting() {
        let cfg = DatapathConfig { lb_mode: LbMode::Dsr, ..DatapathConfig::new("/x", "/y") };
        let k = cfg.kernel_config();
        assert_eq!((k.ct_timeout_syn, k.ct_timeout_tcp, k.ct_timeout_close, k.ct_timeout_udp), (60, 21_600, 10, 60));
        assert_eq!((k.nodeport_min, k.nodeport_max, k.snat_port_min, k.snat_port_max), (30000, 32767, 61000, 65535));
        assert_eq!((k.maglev_table_size, k.lb_mode), (16381, lb_mode::DSR));
    }
}
