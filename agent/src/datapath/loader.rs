//! [`Datapath::load`]: pins the LB maps, loads the socket-LB programs and
//! keeps each attached to the cgroup through a pinned bpf_link.
//!
//! Restart policy, per program (the pin is `<root>/links/<function name>`):
//! - no pin: attach a new link and pin it;
//! - a pinned link on the same cgroup and attach type, running a program
//!   with the same tag and the same maps: keep it untouched — a restarted
//!   agent changes nothing in the kernel, so there is no gap;
//! - same cgroup and attach type, different program (an upgrade, or maps
//!   that were re-created): `BPF_LINK_UPDATE` swaps the program inside the
//!   link atomically; the link keeps its id and pin and the hook is never
//!   empty;
//! - anything else (another cgroup, a link whose cgroup is gone, a pin that
//!   is not a link, or an update the kernel refuses): attach the new link
//!   first, pin it under a temporary name, rename it over the old pin, and
//!   only then detach the old link. For a moment both run; that is harmless
//!   because the second sees the first's backend address, which is no
//!   frontend, and leaves it alone.

use super::config::{nearest_existing, DatapathConfig};
use super::status::{probe_features, DatapathStatus};
use super::sys;
use super::{AyaLbMaps, DatapathError};
use axon_bpf::maps::{
    names, Ipv4RevnatEntry, Ipv4RevnatTuple, Ipv6RevnatEntry, Ipv6RevnatTuple, Lb4Backend, Lb4Key, Lb4ReverseNat,
    Lb6Backend, Lb6Key, Lb6ReverseNat, LbService,
};
use axon_bpf::objects::{SOCK_LB, SOCK_LB_PROGRAMS};
use axon_bpf::pinned::{links_dir, maps_dir};
use aya::maps::{Map, MapData, MapType, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use std::collections::BTreeMap;
use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What loading did to a program's pinned link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkAction {
    /// No link was pinned: a new one was attached and pinned.
    Created,
    /// The pinned link already ran this program on this cgroup.
    Kept,
    /// The pinned link now runs the new program (same link, atomic swap).
    Updated,
    /// A new link replaced the pinned one, which was then detached.
    Replaced,
}

/// One socket-LB program as attached by [`Datapath::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Function name in the object (`sock4_connect`).
    pub name: &'static str,
    /// Attach point, as the ELF section names it (`cgroup/connect4`).
    pub attach_type: &'static str,
    /// Where the link is pinned.
    pub link_pin: PathBuf,
    /// Kernel link id (stable across agent restarts while the link is kept).
    pub link_id: u32,
    /// Kernel id of the program the link runs.
    pub program_id: u32,
    pub action: LinkAction,
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
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("bpffs_root", &self.bpffs_root)
            .field("cgroup_root", &self.cgroup_root)
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

/// Expected shape of each pinned map: (name, type, key size, value size).
fn map_specs() -> [(&'static str, MapType, usize, usize); 9] {
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
    ]
}

/// `enum bpf_attach_type` of each socket-LB attach point.
fn kernel_attach_type(section: &str) -> Option<u32> {
    Some(match section {
        "cgroup/connect4" => 10,
        "cgroup/connect6" => 11,
        "cgroup/sendmsg4" => 14,
        "cgroup/sendmsg6" => 15,
        "cgroup/recvmsg4" => 19,
        "cgroup/recvmsg6" => 20,
        "cgroup/getpeername4" => 29,
        "cgroup/getpeername6" => 30,
        _ => return None,
    })
}

fn load_err(context: impl Into<String>, message: impl ToString) -> DatapathError {
    DatapathError::Load { context: context.into(), message: message.to_string() }
}

fn io_err(path: &Path, source: std::io::Error) -> DatapathError {
    DatapathError::Io { path: path.display().to_string(), source }
}

impl Datapath {
    /// Loads the socket-LB object, pins or reuses its maps and links, and
    /// returns the datapath with typed access to its LB maps.
    pub fn load(cfg: &DatapathConfig) -> Result<(Datapath, AyaLbMaps), DatapathError> {
        check_bpffs(&cfg.bpffs_root)?;
        let cgroup = Cgroup::open(&cfg.cgroup_root)?;
        let (maps_dir, links_dir) = (maps_dir(&cfg.bpffs_root), links_dir(&cfg.bpffs_root));
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }

        let mut ebpf = load_object(cfg, &maps_dir)?;
        let maps = open_status_maps(&maps_dir, cfg)?;

        let mut programs = Vec::new();
        let mut links = Vec::new();
        for &(name, section) in SOCK_LB_PROGRAMS {
            let (attached, link) = attach_program(&mut ebpf, name, section, &cgroup, &links_dir)?;
            tracing::info!(
                program = name,
                attach = section,
                cgroup = %cfg.cgroup_root.display(),
                link_id = attached.link_id,
                action = ?attached.action,
                "socket-LB program attached"
            );
            programs.push(attached);
            links.push(link);
        }

        let metrics = open_metrics(&maps_dir)?;
        let lb_maps = AyaLbMaps::open(&cfg.bpffs_root)?;
        let datapath = Datapath {
            bpffs_root: cfg.bpffs_root.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            programs,
            links,
            maps,
            metrics,
            kernel_release: sys::kernel_release(),
            features: probe_features(),
        };
        Ok((datapath, lb_maps))
    }

    /// The programs and their links, as load left them.
    pub fn programs(&self) -> &[AttachedProgram] {
        &self.programs
    }

    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// What is loaded and attached, map fill levels, kernel and counters.
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
        Ok(Self { file, id })
    }
}

fn load_object(cfg: &DatapathConfig, maps_dir: &Path) -> Result<Ebpf, DatapathError> {
    EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .map_max_entries(names::LB4_SERVICES, cfg.service_entries)
        .map_max_entries(names::LB6_SERVICES, cfg.service_entries)
        .map_max_entries(names::LB4_BACKENDS, cfg.backend_entries)
        .map_max_entries(names::LB6_BACKENDS, cfg.backend_entries)
        .map_max_entries(names::LB4_REVERSE_NAT, cfg.rev_nat_entries)
        .map_max_entries(names::LB6_REVERSE_NAT, cfg.rev_nat_entries)
        .map_max_entries(names::LB4_REVERSE_SK, cfg.sock_revnat_entries)
        .map_max_entries(names::LB6_REVERSE_SK, cfg.sock_revnat_entries)
        .load(SOCK_LB)
        .map_err(|e| load_err("loading the socket-LB object (creating or reusing pinned maps)", error_chain(&e)))
}

/// An error and its sources on one line (aya's top-level messages are terse).
fn error_chain(e: &dyn std::error::Error) -> String {
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
            let is_array = map_type == MapType::PerCpuArray;
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

/// Loads one program and makes sure a pinned link attaches it to `cgroup`.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    section: &'static str,
    cgroup: &Cgroup,
    links_dir: &Path,
) -> Result<(AttachedProgram, OwnedFd), DatapathError> {
    let context = || format!("program {name} ({section})");
    let attach_type = kernel_attach_type(section).ok_or_else(|| load_err(context(), "unknown attach point"))?;
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or_else(|| load_err(context(), "not in the object"))?
        .try_into()
        .map_err(|e| load_err(context(), error_chain(&e)))?;
    prog.load().map_err(|e| load_err(context(), error_chain(&e)))?;
    let info = prog.info().map_err(|e| load_err(context(), error_chain(&e)))?;
    let map_ids = info.map_ids().map_err(|e| load_err(context(), error_chain(&e)))?;
    let new_identity = ProgramIdentity { tag: info.tag(), map_ids: sorted(map_ids.unwrap_or_default()) };

    let pin = links_dir.join(name);
    let action = match read_pin(&pin) {
        Pinned::Nothing => {
            attach_and_pin(prog, cgroup, &pin)?;
            LinkAction::Created
        }
        Pinned::Unusable => {
            replace_link(prog, cgroup, &pin, None)?;
            LinkAction::Replaced
        }
        Pinned::Link { fd, info: old } => {
            let same_hook =
                old.link_type == sys::LINK_TYPE_CGROUP && old.cgroup_id == cgroup.id && old.attach_type == attach_type;
            if !same_hook {
                replace_link(prog, cgroup, &pin, Some(fd))?;
                LinkAction::Replaced
            } else if identity_of_loaded(old.prog_id).as_ref() == Some(&new_identity) {
                LinkAction::Kept
            } else {
                let prog_fd = prog.fd().map_err(|e| load_err(context(), error_chain(&e)))?;
                match sys::link_update(fd.as_fd(), prog_fd.as_fd()) {
                    Ok(()) => LinkAction::Updated,
                    Err(e) => {
                        tracing::warn!(program = name, error = %e, "link update refused; attaching a new link instead");
                        replace_link(prog, cgroup, &pin, Some(fd))?;
                        LinkAction::Replaced
                    }
                }
            }
        }
    };

    let link = sys::obj_get(&pin).map_err(|e| io_err(&pin, e))?;
    let info = sys::link_info(link.as_fd()).map_err(|e| io_err(&pin, e))?;
    let attached = AttachedProgram {
        name,
        attach_type: section,
        link_pin: pin,
        link_id: info.id,
        program_id: info.prog_id,
        action,
    };
    Ok((attached, link))
}

/// Attaches `prog` to the cgroup with a new bpf_link pinned at `pin`.
fn attach_and_pin(prog: &mut CgroupSockAddr, cgroup: &Cgroup, pin: &Path) -> Result<(), DatapathError> {
    let context = || format!("attaching to cgroup, link pin {}", pin.display());
    // Single mode: bpf_link cgroup attachments are always multi-program, the
    // flag only matters for legacy attachment.
    let link_id =
        prog.attach(cgroup.file.as_fd(), CgroupAttachMode::Single).map_err(|e| load_err(context(), error_chain(&e)))?;
    let link = prog.take_link(link_id).map_err(|e| load_err(context(), error_chain(&e)))?;
    let link = FdLink::try_from(link).map_err(|e| load_err(context(), error_chain(&e)))?;
    // Dropping the returned PinnedLink only closes our fd: the pin keeps the
    // link, and with it the program, attached.
    link.pin(pin).map_err(|e| load_err(context(), error_chain(&e)))?;
    Ok(())
}

/// Attach-then-swap: the new link is attached before the old one goes.
fn replace_link(
    prog: &mut CgroupSockAddr,
    cgroup: &Cgroup,
    pin: &Path,
    old: Option<OwnedFd>,
) -> Result<(), DatapathError> {
    let file_name = pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // bpffs refuses names with a dot (they are reserved for its own files).
    let staging = pin.with_file_name(format!("{file_name}__staging"));
    // A crash between pin and rename can leave a staging pin; it is ours.
    let _ = std::fs::remove_file(&staging);
    attach_and_pin(prog, cgroup, &staging)?;
    std::fs::rename(&staging, pin).map_err(|e| io_err(pin, e))?;
    if let Some(old) = old {
        // The old pin is gone; detach explicitly in case another process
        // (an old agent still shutting down) holds the link open.
        if let Err(e) = sys::link_detach(old.as_fd()) {
            tracing::warn!(pin = %pin.display(), error = %e, "detaching the replaced link");
        }
    }
    Ok(())
}
