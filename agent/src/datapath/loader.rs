//! [`Datapath::load`]: pins the maps, writes the node facts the programs
//! read, and keeps every program attached through a pinned bpf_link: the
//! socket-LB and bind-protection programs on the cgroup, and the north-south
//! programs on each node device (tcx ingress and egress, XDP per the mode).
//!
//! Link pins live in `<root>/links/`: `<function>` for cgroup programs,
//! `<function>@<device>` for tcx programs and `<function>-<mode>@<device>`
//! for XDP (`xdp_nodeport-native@eth0`): XDP link info does not say the
//! mode, the pin name does.
//!
//! Restart policy, per link:
//! - no pin: attach a new link and pin it;
//! - a pinned link on the same hook (cgroup and attach type, or device and
//!   tcx direction, or device for XDP), running a program with the same tag
//!   and the same maps: keep it untouched — a restarted agent changes
//!   nothing in the kernel, so there is no gap;
//! - same hook, different program (an upgrade, or maps that were
//!   re-created): `BPF_LINK_UPDATE` swaps the program inside the link
//!   atomically; the link keeps its id and pin and the hook is never empty;
//! - anything else (another cgroup, a device re-created with a new index, a
//!   pin that is not a link, or an update the kernel refuses): attach the
//!   new link first, pin it under a temporary name, rename it over the old
//!   pin, and only then detach the old link. For a moment both run; that is
//!   harmless because the second sees translated packets, which match no
//!   frontend. XDP allows one link per device, so there the old link goes
//!   first when the kernel refuses a second.
//!
//! Device pins that are no longer wanted (a device gone or dropped from the
//! configuration, another XDP mode) are detached and removed before the
//! device programs attach.
//!
//! Order at load: maps, then `axon_config`, `axon_devices` and
//! `axon_node_addrs`, then programs — a program never runs against unset
//! node facts.

use super::config::{nearest_existing, DatapathConfig, XdpMode};
use super::devices::{detect_devices, node_addresses, NodeDevice};
use super::node;
use super::status::{probe_features, DatapathStatus};
use super::sys::{self, LinkTarget};
use super::{AyaLbMaps, DatapathError};
use axon_bpf::maps::{
    names, AxonConfig, AxonDevice, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key, Ipv4RevnatEntry, Ipv4RevnatTuple,
    Ipv6RevnatEntry, Ipv6RevnatTuple, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4SrcRangeKey, Lb6Backend, Lb6Key,
    Lb6ReverseNat, Lb6SrcRangeKey, LbAffinityKey, LbAffinityVal, LbMaglevKey, LbService, NodeAddrKey,
};
use axon_bpf::objects::{NODEPORT, SOCK_LB, SOCK_LB_PROGRAMS, SOCK_POST_BIND_PROGRAMS, XDP, XDP_PROGRAM};
use axon_bpf::pinned::{links_dir, maps_dir};
use aya::maps::{Map, MapData, MapType, PerCpuArray};
use aya::programs::Program;
use aya::{Ebpf, EbpfLoader};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The tc programs of `bpf/nodeport.c`: (function, tcx attach type, label).
const TC_PROGRAMS: [(&str, u32, &str); 2] = [
    ("nodeport_ingress", sys::ATTACH_TCX_INGRESS, "tcx/ingress"),
    ("nodeport_egress", sys::ATTACH_TCX_EGRESS, "tcx/egress"),
];

/// What loading did to a program's pinned link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkAction {
    /// No link was pinned: a new one was attached and pinned.
    Created,
    /// The pinned link already ran this program on this hook.
    Kept,
    /// The pinned link now runs the new program (same link, atomic swap).
    Updated,
    /// A new link replaced the pinned one, which was then detached.
    Replaced,
}

/// Where a program is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachTarget {
    Cgroup(PathBuf),
    Device { name: String, ifindex: u32 },
}

impl std::fmt::Display for AttachTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachTarget::Cgroup(path) => write!(f, "{}", path.display()),
            AttachTarget::Device { name, .. } => f.write_str(name),
        }
    }
}

/// One program as attached by [`Datapath::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Function name in the object (`sock4_connect`, `nodeport_ingress`).
    pub name: &'static str,
    /// Attach point: the ELF section for cgroup programs
    /// (`cgroup/connect4`), else `tcx/ingress`, `tcx/egress`, `xdp/native`
    /// or `xdp/generic`.
    pub attach_type: &'static str,
    pub target: AttachTarget,
    /// Where the link is pinned.
    pub link_pin: PathBuf,
    /// Kernel link id (stable across agent restarts while the link is kept).
    pub link_id: u32,
    /// Kernel id of the program the link runs.
    pub program_id: u32,
    pub action: LinkAction,
}

/// The XDP mode a device actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpAttach {
    Native,
    Generic,
}

impl XdpAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttach::Native => "native",
            XdpAttach::Generic => "generic",
        }
    }

    fn flags(self) -> u32 {
        match self {
            XdpAttach::Native => sys::XDP_FLAGS_DRV_MODE,
            XdpAttach::Generic => sys::XDP_FLAGS_SKB_MODE,
        }
    }

    fn label(self) -> &'static str {
        match self {
            XdpAttach::Native => "xdp/native",
            XdpAttach::Generic => "xdp/generic",
        }
    }
}

/// A node device and how it is served: tcx always, XDP when `xdp` says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttachment {
    pub device: NodeDevice,
    pub xdp: Option<XdpAttach>,
}

/// A pinned map the status reports on.
pub(crate) struct StatusMap {
    pub name: &'static str,
    pub pin: PathBuf,
    pub data: MapData,
    pub is_array: bool,
}

/// The loaded and attached datapath. Dropping it leaves everything pinned
/// and attached: the kernel keeps serving while no agent runs.
pub struct Datapath {
    pub(crate) bpffs_root: PathBuf,
    pub(crate) cgroup_root: PathBuf,
    pub(crate) programs: Vec<AttachedProgram>,
    /// Open links, in the order of `programs`, to read their state back.
    pub(crate) links: Vec<OwnedFd>,
    pub(crate) maps: Vec<StatusMap>,
    pub(crate) metrics: PerCpuArray<MapData, u64>,
    pub(crate) kernel_release: String,
    pub(crate) features: BTreeMap<String, bool>,
    pub(crate) devices: Vec<DeviceAttachment>,
    pub(crate) node_addresses: BTreeMap<IpAddr, u32>,
    pub(crate) kernel_config: AxonConfig,
    /// Device link pins removed at load (stale devices or XDP modes).
    pub(crate) stale_links_removed: Vec<PathBuf>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("bpffs_root", &self.bpffs_root)
            .field("cgroup_root", &self.cgroup_root)
            .field("programs", &self.programs)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// Expected shape of each pinned map: (name, type, key size, value size).
fn map_specs() -> [(&'static str, MapType, usize, usize); 19] {
    [
        (names::LB4_SERVICES, MapType::Hash, size_of::<Lb4Key>(), size_of::<LbService>()),
        (names::LB6_SERVICES, MapType::Hash, size_of::<Lb6Key>(), size_of::<LbService>()),
        (names::LB4_BACKENDS, MapType::Hash, size_of::<u32>(), size_of::<Lb4Backend>()),
        (names::LB6_BACKENDS, MapType::Hash, size_of::<u32>(), size_of::<Lb6Backend>()),
        (names::LB4_REVERSE_NAT, MapType::Hash, size_of::<u32>(), size_of::<Lb4ReverseNat>()),
        (names::LB6_REVERSE_NAT, MapType::Hash, size_of::<u32>(), size_of::<Lb6ReverseNat>()),
        (names::LB4_REVERSE_SK, MapType::LruHash, size_of::<Ipv4RevnatTuple>(), size_of::<Ipv4RevnatEntry>()),
        (names::LB6_REVERSE_SK, MapType::LruHash, size_of::<Ipv6RevnatTuple>(), size_of::<Ipv6RevnatEntry>()),
        (names::METRICS, MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>()),
        (names::CT4_GLOBAL, MapType::LruHash, size_of::<Ct4Key>(), size_of::<Ct4Entry>()),
        (names::CT6_GLOBAL, MapType::LruHash, size_of::<Ct6Key>(), size_of::<Ct6Entry>()),
        (names::LB_MAGLEV, MapType::Hash, size_of::<LbMaglevKey>(), size_of::<u32>()),
        (names::LB_AFFINITY, MapType::LruHash, size_of::<LbAffinityKey>(), size_of::<LbAffinityVal>()),
        (names::LB4_SOURCE_RANGE, MapType::LpmTrie, size_of::<Lb4SrcRangeKey>(), size_of::<u8>()),
        (names::LB6_SOURCE_RANGE, MapType::LpmTrie, size_of::<Lb6SrcRangeKey>(), size_of::<u8>()),
        (names::DEVICES, MapType::Hash, size_of::<u32>(), size_of::<AxonDevice>()),
        (names::NODE_ADDRS, MapType::Hash, size_of::<NodeAddrKey>(), size_of::<u32>()),
        (names::CONFIG, MapType::Array, size_of::<u32>(), size_of::<AxonConfig>()),
        (
            names::IPCACHE,
            MapType::LpmTrie,
            size_of::<axon_bpf::maps::ipcache::IpcacheKey>(),
            size_of::<axon_bpf::maps::ipcache::IpcacheEntry>(),
        ),
    ]
}

/// `enum bpf_attach_type` of each cgroup attach point.
fn kernel_attach_type(section: &str) -> Option<u32> {
    Some(match section {
        "cgroup/connect4" => 10,
        "cgroup/connect6" => 11,
        "cgroup/post_bind4" => 12,
        "cgroup/post_bind6" => 13,
        "cgroup/sendmsg4" => 14,
        "cgroup/sendmsg6" => 15,
        "cgroup/recvmsg4" => 19,
        "cgroup/recvmsg6" => 20,
        "cgroup/getpeername4" => 29,
        "cgroup/getpeername6" => 30,
        _ => return None,
    })
}

/// Every cgroup program: socket-LB, then bind protection.
fn cgroup_programs() -> impl Iterator<Item = (&'static str, &'static str)> {
    SOCK_LB_PROGRAMS.iter().chain(SOCK_POST_BIND_PROGRAMS).copied()
}

fn load_err(context: impl Into<String>, message: impl ToString) -> DatapathError {
    DatapathError::Load { context: context.into(), message: message.to_string() }
}

fn io_err(path: &Path, source: io::Error) -> DatapathError {
    DatapathError::Io { path: path.display().to_string(), source }
}

/// What load attached, as it goes.
#[derive(Default)]
struct Attached {
    programs: Vec<AttachedProgram>,
    links: Vec<OwnedFd>,
}

impl Attached {
    fn push(&mut self, (program, link): (AttachedProgram, OwnedFd)) {
        tracing::info!(
            program = program.name,
            attach = program.attach_type,
            target = %program.target,
            link_id = program.link_id,
            action = ?program.action,
            "program attached"
        );
        self.programs.push(program);
        self.links.push(link);
    }
}

impl Datapath {
    /// Loads the objects, pins or reuses their maps and links, writes the
    /// node facts, and returns the datapath with typed access to its LB
    /// maps. Devices are looked up, and attached to, in the network
    /// namespace of the calling thread.
    pub fn load(cfg: &DatapathConfig) -> Result<(Datapath, AyaLbMaps), DatapathError> {
        cfg.validate().map_err(|e| load_err("configuration", e))?;
        check_bpffs(&cfg.bpffs_root)?;
        let cgroup = Cgroup::open(&cfg.cgroup_root)?;
        let (maps_dir, links_dir) = (maps_dir(&cfg.bpffs_root), links_dir(&cfg.bpffs_root));
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let devices = detect_devices(&cfg.devices)?;

        let mut sock_lb = load_object(SOCK_LB, "socket-LB", cfg, &maps_dir)?;
        let maps = open_status_maps(&maps_dir, cfg)?;

        // Node facts first: programs never run against unset ones.
        let kernel_config = node::write_config(&maps_dir, cfg)?;
        let addresses = node_addresses(&devices, &cfg.extra_node_addresses);
        let xdp_pinned: BTreeSet<u32> = devices
            .iter()
            .filter(|d| wanted_xdp_pin(cfg.xdp_mode, d).is_some_and(|name| links_dir.join(name).exists()))
            .map(|d| d.ifindex)
            .collect();
        node::write_devices(&maps_dir, &devices, &xdp_pinned)?;
        node::write_node_addrs(&maps_dir, &addresses)?;
        if !devices.is_empty() {
            if let Err(e) = node::reserve_ports(cfg.nodeport_range) {
                tracing::warn!(error = %e, "could not reserve the NodePort range from ephemeral ports");
            }
            node::check_snat_range(cfg.snat_port_range);
        }

        let mut attached = Attached::default();
        for (name, section) in cgroup_programs() {
            attached.push(attach_cgroup_program(&mut sock_lb, name, section, &cgroup, &links_dir)?);
        }

        let stale_links_removed = sweep_device_links(&links_dir, &wanted_device_pins(cfg.xdp_mode, &devices))?;
        let device_attachments = if devices.is_empty() {
            Vec::new()
        } else {
            attach_devices(cfg, &devices, &maps_dir, &links_dir, &mut attached)?
        };
        let xdp_actual: BTreeSet<u32> =
            device_attachments.iter().filter(|a| a.xdp.is_some()).map(|a| a.device.ifindex).collect();
        if xdp_actual != xdp_pinned {
            node::write_devices(&maps_dir, &devices, &xdp_actual)?;
        }

        let metrics = open_metrics(&maps_dir)?;
        let lb_maps = AyaLbMaps::open(&cfg.bpffs_root)?;
        let datapath = Datapath {
            bpffs_root: cfg.bpffs_root.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            programs: attached.programs,
            links: attached.links,
            maps,
            metrics,
            kernel_release: sys::kernel_release(),
            features: probe_features(),
            devices: device_attachments,
            node_addresses: addresses,
            kernel_config,
            stale_links_removed,
        };
        Ok((datapath, lb_maps))
    }

    /// The programs and their links, as load left them.
    pub fn programs(&self) -> &[AttachedProgram] {
        &self.programs
    }

    /// The node devices and the XDP mode each got.
    pub fn devices(&self) -> &[DeviceAttachment] {
        &self.devices
    }

    /// Every node address written to `axon_node_addrs`, with its device's
    /// ifindex (0: an extra address on no device).
    pub fn node_addresses(&self) -> &BTreeMap<IpAddr, u32> {
        &self.node_addresses
    }

    /// The `axon_config` value written at load.
    pub fn kernel_config(&self) -> &AxonConfig {
        &self.kernel_config
    }

    /// Device link pins load detached and removed (devices gone or no
    /// longer configured, or another XDP mode).
    pub fn stale_links_removed(&self) -> &[PathBuf] {
        &self.stale_links_removed
    }

    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// What is loaded and attached, map fill levels, devices, kernel and
    /// counters.
    pub fn status(&self) -> DatapathStatus {
        super::status::collect(self)
    }
}

fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids
}

/// Refuses a bpffs root that is not on a bpffs: pins elsewhere fail late
/// and confusingly.
fn check_bpffs(root: &Path) -> Result<(), DatapathError> {
    let existing = nearest_existing(root);
    let magic = sys::fs_magic(existing).map_err(|e| io_err(existing, e))?;
    if magic != sys::BPF_FS_MAGIC {
        return Err(load_err(
            format!("bpffs root {}", root.display()),
            format!(
                "{} is not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or pick a --bpffs-root under it)",
                existing.display()
            ),
        ));
    }
    Ok(())
}

/// The cgroup2 directory programs attach to.
struct Cgroup {
    file: File,
    path: PathBuf,
    /// The cgroup id the kernel reports in link info: the directory's inode.
    id: u64,
}

impl Cgroup {
    fn open(path: &Path) -> Result<Self, DatapathError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let magic = sys::fs_magic(path).map_err(|e| io_err(path, e))?;
        if magic != sys::CGROUP2_SUPER_MAGIC {
            return Err(load_err(
                format!("cgroup root {}", path.display()),
                "not a cgroup2 directory (on hybrid layouts cgroup2 is /sys/fs/cgroup/unified)",
            ));
        }
        let id = file.metadata().map_err(|e| io_err(path, e))?.ino();
        Ok(Self { file, path: path.to_path_buf(), id })
    }
}

/// Loads one object; its maps are created, or reused, by name under
/// `maps_dir`, so every object shares one set of maps.
fn load_object(object: &[u8], what: &str, cfg: &DatapathConfig, maps_dir: &Path) -> Result<Ebpf, DatapathError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
    for name in names::ALL {
        if let Some(max) = configured_max_entries(name, cfg) {
            loader.map_max_entries(name, max);
        }
    }
    loader
        .load(object)
        .map_err(|e| load_err(format!("loading the {what} object (creating or reusing pinned maps)"), error_chain(&e)))
}

/// An error and its sources on one line (aya's top-level messages are terse).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn configured_max_entries(name: &str, cfg: &DatapathConfig) -> Option<u32> {
    Some(match name {
        names::LB4_SERVICES | names::LB6_SERVICES => cfg.service_entries,
        names::LB4_BACKENDS | names::LB6_BACKENDS => cfg.backend_entries,
        names::LB4_REVERSE_NAT | names::LB6_REVERSE_NAT => cfg.rev_nat_entries,
        names::LB4_REVERSE_SK | names::LB6_REVERSE_SK => cfg.sock_revnat_entries,
        names::CT4_GLOBAL | names::CT6_GLOBAL => cfg.ct_entries,
        names::LB_MAGLEV => cfg.maglev_entries,
        names::LB_AFFINITY => cfg.affinity_entries,
        names::LB4_SOURCE_RANGE | names::LB6_SOURCE_RANGE => cfg.source_range_entries,
        _ => return None,
    })
}

/// Opens every pinned map and checks it has the layout this agent was built
/// for. A pinned map from an agent with another layout would be misread by
/// both sides, so it is an error; a different size is only a warning (maps
/// cannot be resized in place, and re-creating them would drop every
/// service until the reconciler rewrites it).
fn open_status_maps(dir: &Path, cfg: &DatapathConfig) -> Result<Vec<StatusMap>, DatapathError> {
    map_specs()
        .into_iter()
        .map(|(name, map_type, key_size, value_size)| {
            let pin = dir.join(name);
            let context = || format!("pinned map {}", pin.display());
            let data = MapData::from_pin(&pin).map_err(|e| load_err(context(), error_chain(&e)))?;
            let info = data.info().map_err(|e| load_err(context(), error_chain(&e)))?;
            let found = (info.map_type().ok(), info.key_size() as usize, info.value_size() as usize);
            if found != (Some(map_type), key_size, value_size) {
                return Err(load_err(
                    context(),
                    format!(
                        "has (type, key size, value size) {found:?}, this agent needs {:?}; \
                         it was created by an incompatible agent: run `axon-agent --cleanup` first",
                        (map_type, key_size, value_size)
                    ),
                ));
            }
            if let Some(want) = configured_max_entries(name, cfg).filter(|&w| w != info.max_entries()) {
                tracing::warn!(
                    map = name,
                    pinned = info.max_entries(),
                    configured = want,
                    "pinned map keeps its size; run cleanup to resize"
                );
            }
            let is_array = matches!(map_type, MapType::PerCpuArray | MapType::Array);
            Ok(StatusMap { name, pin, data, is_array })
        })
        .collect()
}

fn open_metrics(dir: &Path) -> Result<PerCpuArray<MapData, u64>, DatapathError> {
    let pin = dir.join(names::METRICS);
    let context = || format!("pinned map {}", pin.display());
    let data = MapData::from_pin(&pin).map_err(|e| load_err(context(), error_chain(&e)))?;
    let map = Map::from_map_data(data).map_err(|e| load_err(context(), error_chain(&e)))?;
    PerCpuArray::try_from(map).map_err(|e| load_err(context(), error_chain(&e)))
}

/// A program's identity for the keep-or-update decision: the tag covers the
/// instructions (with map references masked), the map ids the rest.
#[derive(Debug, PartialEq, Eq)]
struct ProgramIdentity {
    tag: u64,
    map_ids: Vec<u32>,
}

fn identity_of_loaded(id: u32) -> Option<ProgramIdentity> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| ProgramIdentity { tag: p.tag(), map_ids: sorted(p.map_ids().ok().flatten().unwrap_or_default()) })
}

/// A program loaded into the kernel, ready to attach.
struct LoadedProgram {
    name: &'static str,
    fd: OwnedFd,
    identity: ProgramIdentity,
}

/// Loads `name` from `ebpf` (once; a second call reuses it).
fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<LoadedProgram, DatapathError> {
    let context = || format!("program {name}");
    let program = ebpf.program_mut(name).ok_or_else(|| load_err(context(), "not in the object"))?;
    if program.fd().is_err() {
        let loaded = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            other => return Err(load_err(context(), format!("unexpected program type {:?}", other.prog_type()))),
        };
        loaded.map_err(|e| load_err(context(), error_chain(&e)))?;
    }
    let info = program.info().map_err(|e| load_err(context(), error_chain(&e)))?;
    let map_ids = info.map_ids().map_err(|e| load_err(context(), error_chain(&e)))?;
    let fd = program
        .fd()
        .map_err(|e| load_err(context(), error_chain(&e)))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| load_err(context(), e))?;
    Ok(LoadedProgram {
        name,
        fd,
        identity: ProgramIdentity { tag: info.tag(), map_ids: sorted(map_ids.unwrap_or_default()) },
    })
}

/// Where a link attaches, and how to recognise a pinned link already there.
enum Hook<'a> {
    Cgroup { cgroup: &'a Cgroup, attach_type: u32 },
    Tcx { ifindex: u32, attach_type: u32 },
    Xdp { ifindex: u32, mode: XdpAttach },
}

impl Hook<'_> {
    fn matches(&self, info: &sys::LinkInfo) -> bool {
        match *self {
            Hook::Cgroup { cgroup, attach_type } => {
                info.link_type == sys::LINK_TYPE_CGROUP
                    && info.cgroup_id == cgroup.id
                    && info.attach_type == attach_type
            }
            Hook::Tcx { ifindex, attach_type } => {
                info.link_type == sys::LINK_TYPE_TCX && info.ifindex == ifindex && info.attach_type == attach_type
            }
            // The mode is in the pin's name; the kernel keeps it with the link.
            Hook::Xdp { ifindex, .. } => info.link_type == sys::LINK_TYPE_XDP && info.ifindex == ifindex,
        }
    }

    fn attach(&self, prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        match *self {
            Hook::Cgroup { cgroup, attach_type } => {
                sys::link_create(prog, LinkTarget::Cgroup(cgroup.file.as_fd()), attach_type, 0)
            }
            Hook::Tcx { ifindex, attach_type } => sys::link_create(prog, LinkTarget::Ifindex(ifindex), attach_type, 0),
            Hook::Xdp { ifindex, mode } => {
                sys::link_create(prog, LinkTarget::Ifindex(ifindex), sys::ATTACH_XDP, mode.flags())
            }
        }
    }

    /// XDP keeps one link per device: a second attach is refused.
    fn exclusive(&self) -> bool {
        matches!(self, Hook::Xdp { .. })
    }
}

/// What is pinned where a program's link belongs.
enum Pinned {
    Nothing,
    /// A file that is not a usable link: replaced.
    Unusable,
    Link {
        fd: OwnedFd,
        info: sys::LinkInfo,
    },
}

fn read_pin(pin: &Path) -> Pinned {
    if std::fs::symlink_metadata(pin).is_err() {
        return Pinned::Nothing;
    }
    let opened = sys::obj_get(pin).and_then(|fd| sys::link_info(fd.as_fd()).map(|info| (fd, info)));
    match opened {
        Ok((fd, info)) => Pinned::Link { fd, info },
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "pinned object is not a usable link; replacing it");
            Pinned::Unusable
        }
    }
}

/// Makes sure a link pinned at `pin` runs `prog` on `hook`, with the
/// least change (see the module doc); returns what it did and the link.
fn ensure_link(
    prog: &LoadedProgram,
    hook: &Hook<'_>,
    pin: &Path,
) -> Result<(LinkAction, OwnedFd, sys::LinkInfo), DatapathError> {
    let action = match read_pin(pin) {
        Pinned::Nothing => {
            attach_and_pin(prog, hook, pin)?;
            LinkAction::Created
        }
        Pinned::Unusable => {
            replace_link(prog, hook, pin, None)?;
            LinkAction::Replaced
        }
        Pinned::Link { fd, info: old } => {
            if !hook.matches(&old) {
                replace_link(prog, hook, pin, Some(fd))?;
                LinkAction::Replaced
            } else if identity_of_loaded(old.prog_id).as_ref() == Some(&prog.identity) {
                LinkAction::Kept
            } else {
                match sys::link_update(fd.as_fd(), prog.fd.as_fd()) {
                    Ok(()) => LinkAction::Updated,
                    Err(e) => {
                        tracing::warn!(program = prog.name, error = %e, "link update refused; attaching a new link instead");
                        replace_link(prog, hook, pin, Some(fd))?;
                        LinkAction::Replaced
                    }
                }
            }
        }
    };
    let link = sys::obj_get(pin).map_err(|e| io_err(pin, e))?;
    let info = sys::link_info(link.as_fd()).map_err(|e| io_err(pin, e))?;
    Ok((action, link, info))
}

/// Attaches `prog` with a new bpf_link pinned at `pin`. Should pinning fail,
/// the link closes with its only fd and detaches.
fn attach_and_pin(prog: &LoadedProgram, hook: &Hook<'_>, pin: &Path) -> Result<(), DatapathError> {
    let link = hook.attach(prog.fd.as_fd()).map_err(|e| attach_err(prog, pin, e))?;
    sys::obj_pin(link.as_fd(), pin).map_err(|e| io_err(pin, e))
}

fn attach_err(prog: &LoadedProgram, pin: &Path, e: io::Error) -> DatapathError {
    load_err(format!("attaching {} (link pin {})", prog.name, pin.display()), e)
}

/// Attach-then-swap: the new link is attached before the old one goes,
/// except on exclusive hooks whose kernel refuses a second link.
fn replace_link(prog: &LoadedProgram, hook: &Hook<'_>, pin: &Path, old: Option<OwnedFd>) -> Result<(), DatapathError> {
    let file_name = pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // bpffs refuses names with a dot (they are reserved for its own files).
    let staging = pin.with_file_name(format!("{file_name}__staging"));
    // A crash between pin and rename can leave a staging pin; it is ours.
    let _ = std::fs::remove_file(&staging);
    let first_try = hook.attach(prog.fd.as_fd());
    let link = match (first_try, &old) {
        (Ok(link), _) => link,
        (Err(e), Some(old)) if hook.exclusive() && matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
            detach(old.as_fd(), pin);
            hook.attach(prog.fd.as_fd()).map_err(|e| attach_err(prog, pin, e))?
        }
        (Err(e), _) => return Err(attach_err(prog, pin, e)),
    };
    sys::obj_pin(link.as_fd(), &staging).map_err(|e| io_err(&staging, e))?;
    std::fs::rename(&staging, pin).map_err(|e| io_err(pin, e))?;
    if let Some(old) = old {
        // The old pin is gone; detach explicitly in case another process
        // (an old agent still shutting down) holds the link open.
        detach(old.as_fd(), pin);
    }
    Ok(())
}

fn detach(link: BorrowedFd<'_>, pin: &Path) {
    match sys::link_detach(link) {
        Ok(()) => {}
        // A link whose cgroup or device is gone is detached already.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "detaching a link"),
    }
}

fn attached_program(
    name: &'static str,
    attach_type: &'static str,
    target: AttachTarget,
    pin: PathBuf,
    (action, link, info): (LinkAction, OwnedFd, sys::LinkInfo),
) -> (AttachedProgram, OwnedFd) {
    let program = AttachedProgram {
        name,
        attach_type,
        target,
        link_pin: pin,
        link_id: info.id,
        program_id: info.prog_id,
        action,
    };
    (program, link)
}

/// Loads one cgroup program and makes sure a pinned link attaches it.
fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    section: &'static str,
    cgroup: &Cgroup,
    links_dir: &Path,
) -> Result<(AttachedProgram, OwnedFd), DatapathError> {
    let attach_type = kernel_attach_type(section)
        .ok_or_else(|| load_err(format!("program {name} ({section})"), "unknown attach point"))?;
    let prog = load_program(ebpf, name)?;
    let pin = links_dir.join(name);
    let result = ensure_link(&prog, &Hook::Cgroup { cgroup, attach_type }, &pin)?;
    Ok(attached_program(name, section, AttachTarget::Cgroup(cgroup.path.clone()), pin, result))
}

fn tc_pin_name(program: &str, device: &str) -> String {
    format!("{program}@{device}")
}

fn xdp_pin_name(mode: XdpAttach, device: &str) -> String {
    format!("{XDP_PROGRAM}-{}@{device}", mode.as_str())
}

/// The XDP mode tried first on a device under `mode`.
fn first_xdp_attach(mode: XdpMode) -> Option<XdpAttach> {
    match mode {
        XdpMode::Native | XdpMode::BestEffort => Some(XdpAttach::Native),
        XdpMode::Generic => Some(XdpAttach::Generic),
        XdpMode::Disabled => None,
    }
}

fn wanted_xdp_pin(mode: XdpMode, device: &NodeDevice) -> Option<String> {
    first_xdp_attach(mode).map(|m| xdp_pin_name(m, &device.name))
}

/// Names of every device link pin this configuration wants.
fn wanted_device_pins(mode: XdpMode, devices: &[NodeDevice]) -> BTreeSet<String> {
    let mut pins = BTreeSet::new();
    for device in devices {
        for (program, _, _) in TC_PROGRAMS {
            pins.insert(tc_pin_name(program, &device.name));
        }
        pins.extend(wanted_xdp_pin(mode, device));
    }
    pins
}

/// Detaches and removes every device link pin (`…@device`) not in `keep`.
fn sweep_device_links(links_dir: &Path, keep: &BTreeSet<String>) -> Result<Vec<PathBuf>, DatapathError> {
    let read = std::fs::read_dir(links_dir).map_err(|e| io_err(links_dir, e))?;
    let mut removed = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| io_err(links_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains('@') || keep.contains(&name) {
            continue;
        }
        let pin = entry.path();
        if let Ok(fd) = sys::obj_get(&pin) {
            detach(fd.as_fd(), &pin);
        }
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&pin, e)),
        }
        tracing::info!(pin = %pin.display(), "stale device link detached");
        removed.push(pin);
    }
    removed.sort();
    Ok(removed)
}

/// Loads the tc and XDP objects and attaches them to every device.
fn attach_devices(
    cfg: &DatapathConfig,
    devices: &[NodeDevice],
    maps_dir: &Path,
    links_dir: &Path,
    attached: &mut Attached,
) -> Result<Vec<DeviceAttachment>, DatapathError> {
    let mut nodeport = load_object(NODEPORT, "north-south tc", cfg, maps_dir)?;
    let tc: Vec<(LoadedProgram, u32, &'static str)> = TC_PROGRAMS
        .into_iter()
        .map(|(name, attach_type, label)| Ok((load_program(&mut nodeport, name)?, attach_type, label)))
        .collect::<Result<_, DatapathError>>()?;
    let xdp = match cfg.xdp_mode {
        XdpMode::Disabled => None,
        _ => {
            let mut object = load_object(XDP, "XDP", cfg, maps_dir)?;
            Some(load_program(&mut object, XDP_PROGRAM)?)
        }
    };

    let mut result = Vec::with_capacity(devices.len());
    for device in devices {
        let target = || AttachTarget::Device { name: device.name.clone(), ifindex: device.ifindex };
        for (prog, attach_type, label) in &tc {
            let pin = links_dir.join(tc_pin_name(prog.name, &device.name));
            let hook = Hook::Tcx { ifindex: device.ifindex, attach_type: *attach_type };
            let outcome = ensure_link(prog, &hook, &pin).map_err(|e| tcx_hint(e, &device.name))?;
            attached.push(attached_program(prog.name, label, target(), pin, outcome));
        }
        let xdp_mode = match &xdp {
            Some(prog) => attach_xdp(cfg.xdp_mode, prog, device, links_dir, attached)?,
            None => None,
        };
        result.push(DeviceAttachment { device: device.clone(), xdp: xdp_mode });
    }
    Ok(result)
}

/// tcx arrived in Linux 6.6; older kernels refuse the attach type.
fn tcx_hint(e: DatapathError, device: &str) -> DatapathError {
    match e {
        DatapathError::Load { context, message } if message.contains("os error 22") => DatapathError::Load {
            context,
            message: format!("{message} (tcx links on {device} need Linux 6.6 or later)"),
        },
        other => other,
    }
}

/// Attaches XDP to one device as `mode` says; best-effort leaves devices
/// without native XDP support to tc.
fn attach_xdp(
    mode: XdpMode,
    prog: &LoadedProgram,
    device: &NodeDevice,
    links_dir: &Path,
    attached: &mut Attached,
) -> Result<Option<XdpAttach>, DatapathError> {
    let Some(xdp_attach) = first_xdp_attach(mode) else {
        return Ok(None);
    };
    let pin = links_dir.join(xdp_pin_name(xdp_attach, &device.name));
    let hook = Hook::Xdp { ifindex: device.ifindex, mode: xdp_attach };
    match ensure_link(prog, &hook, &pin) {
        Ok(outcome) => {
            let target = AttachTarget::Device { name: device.name.clone(), ifindex: device.ifindex };
            attached.push(attached_program(prog.name, xdp_attach.label(), target, pin, outcome));
            Ok(Some(xdp_attach))
        }
        Err(e) if mode == XdpMode::BestEffort => {
            tracing::info!(device = %device.name, reason = %e, "no native XDP on this device; tc serves it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
