//! Loads `bpf/mesh.c`: its maps pinned under `<bpffs-root>/mesh/maps/`, its
//! cgroup programs (connect4/6, getsockopt, sockops) attached to the agent's
//! cgroup root through links pinned in `<bpffs-root>/mesh/links/`, and the
//! sk_msg program attached to the pinned sockhash (pinned itself in
//! `<bpffs-root>/mesh/progs/`). A restart finds the pins and reuses them:
//! sockets already in the sockhash keep their sk_msg program, so no insert
//! ever meets EBUSY and accelerated connections carry on untouched.

use super::MeshError;
use crate::datapath::error_chain;
use axon_bpf::maps::mesh::{names, MeshIp, MeshPod, MeshPodRef, MeshSockKey};
use axon_bpf::objects::{MESH, MESH_CGROUP_PROGRAMS, MESH_MSG_PROGRAM};
use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupSockAddr, CgroupSockopt, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use tracing::info;

/// The pinned mesh maps the agent writes and reads.
pub struct MeshMaps {
    pub pods: HashMap<MapData, u64, MeshPod>,
    pub pod_ips: HashMap<MapData, MeshIp, MeshPodRef>,
    /// Key data: `struct mesh_cidr_key` without its prefixlen (pad, cgroup id, address).
    pub cidrs: LpmTrie<MapData, [u8; 28], u8>,
    pub metrics: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for MeshMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshMaps")
    }
}

/// `<bpffs-root>/mesh`.
pub fn mesh_dir(bpffs_root: &Path) -> PathBuf {
    bpffs_root.join("mesh")
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> MeshError {
    MeshError::Datapath(format!("{}: {e}", what.into()))
}

/// Loads and attaches what is missing, reuses what is pinned.
pub fn load(bpffs_root: &Path, cgroup_root: &Path) -> Result<MeshMaps, MeshError> {
    let dir = mesh_dir(bpffs_root);
    let (maps_dir, links_dir, progs_dir) = (dir.join("maps"), dir.join("links"), dir.join("progs"));
    for d in [&maps_dir, &links_dir, &progs_dir] {
        std::fs::create_dir_all(d).map_err(|e| err(format!("creating {}", d.display()), e))?;
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .load(MESH)
        .map_err(|e| err("loading the mesh object (creating or reusing pinned maps)", error_chain(&e)))?;
    let cgroup =
        std::fs::File::open(cgroup_root).map_err(|e| err(format!("opening cgroup {}", cgroup_root.display()), e))?;
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(
        &cgroup.metadata().map_err(|e| err(format!("stat of cgroup {}", cgroup_root.display()), e))?,
    );
    for (name, section) in MESH_CGROUP_PROGRAMS {
        let pin = links_dir.join(name);
        match sys::pinned_link_cgroup(&pin) {
            Ok(id) if id == cgroup_id => {
                info!(program = name, "mesh program already attached (pinned link kept)");
                continue;
            }
            // Unpinning drops the last reference: the old link detaches.
            Ok(other) => info!(program = name, old_cgroup_id = other, "mesh link on another cgroup; replacing it"),
            Err(_) => {}
        }
        let _ = std::fs::remove_file(&pin);
        attach_cgroup(&mut ebpf, name, section, &cgroup, &pin)?;
        info!(program = name, cgroup = %cgroup_root.display(), "mesh program attached");
    }
    attach_msg(&mut ebpf, &progs_dir.join(MESH_MSG_PROGRAM))?;
    open_maps(&maps_dir)
}

fn attach_cgroup(
    ebpf: &mut Ebpf,
    name: &str,
    section: &str,
    cgroup: &std::fs::File,
    pin: &Path,
) -> Result<(), MeshError> {
    let what = || format!("attaching {name} ({section})");
    let program = ebpf.program_mut(name).ok_or_else(|| err(what(), "not in the mesh object"))?;
    let (attach_type, prog_fd) = match section {
        "sockops" => {
            let p: &mut SockOps = program.try_into().map_err(|e| err(what(), e))?;
            p.load().map_err(|e| err(what(), error_chain(&e)))?;
            (BPF_CGROUP_SOCK_OPS, p.fd().map_err(|e| err(what(), e))?.as_fd().try_clone_to_owned())
        }
        "cgroup/getsockopt" => {
            let p: &mut CgroupSockopt = program.try_into().map_err(|e| err(what(), e))?;
            p.load().map_err(|e| err(what(), error_chain(&e)))?;
            (BPF_CGROUP_GETSOCKOPT, p.fd().map_err(|e| err(what(), e))?.as_fd().try_clone_to_owned())
        }
        "cgroup/connect4" | "cgroup/connect6" | "cgroup/bind4" | "cgroup/bind6" => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(|e| err(what(), e))?;
            p.load().map_err(|e| err(what(), error_chain(&e)))?;
            let t = match section {
                "cgroup/connect4" => BPF_CGROUP_INET4_CONNECT,
                "cgroup/connect6" => BPF_CGROUP_INET6_CONNECT,
                "cgroup/bind4" => BPF_CGROUP_INET4_BIND,
                _ => BPF_CGROUP_INET6_BIND,
            };
            (t, p.fd().map_err(|e| err(what(), e))?.as_fd().try_clone_to_owned())
        }
        other => return Err(err(what(), format!("unknown section {other}"))),
    };
    let prog_fd = prog_fd.map_err(|e| err(what(), e))?;
    // A bpf_link (not a legacy attach): it coexists with the socket-LB's
    // links on the same cgroup and lives as long as its pin.
    let link = sys::link_create(prog_fd.as_fd(), cgroup.as_fd(), attach_type).map_err(|e| err(what(), e))?;
    sys::obj_pin(link.as_fd(), pin).map_err(|e| err(format!("pinning {}", pin.display()), e))
}

const BPF_CGROUP_INET4_BIND: u32 = 8;
const BPF_CGROUP_INET6_BIND: u32 = 9;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// The two bpf(2) commands aya 0.14 does not offer for every cgroup program type.
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
        // SAFETY: attr is a zero-padded 128-byte bpf_attr, as large as any command reads.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
        let mut attr = [0u64; 16];
        // prog_fd, target_fd; attach_type, flags.
        attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
        attr[1] = u64::from(attach_type);
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: the kernel returned a new fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    /// The cgroup id a pinned cgroup link is attached to (`bpf_link_info.cgroup`).
    pub fn pinned_link_cgroup(path: &Path) -> io::Result<u64> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))?;
        let mut attr = [0u64; 16];
        attr[0] = c.as_ptr() as u64;
        let fd = bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: the kernel returned a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // struct bpf_link_info: type, id, prog_id, then (8-aligned) cgroup_id, attach_type.
        let mut info = [0u64; 12];
        let mut attr = [0u64; 16];
        attr[0] = u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        const BPF_LINK_TYPE_CGROUP: u64 = 3;
        if info[0] & 0xffff_ffff != BPF_LINK_TYPE_CGROUP {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a cgroup link"));
        }
        Ok(info[2])
    }

    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))?;
        let mut attr = [0u64; 16];
        attr[0] = c.as_ptr() as u64;
        attr[1] = u64::from(fd.as_raw_fd() as u32);
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }
}

/// The sk_msg program is attached to the sockhash itself (not a link): the
/// map holds it as long as the map lives. Its pin marks it as attached.
fn attach_msg(ebpf: &mut Ebpf, pin: &Path) -> Result<(), MeshError> {
    if pin.exists() {
        info!("mesh sk_msg program already attached to the pinned sockhash");
        return Ok(());
    }
    let what = "attaching mesh_msg to axon_mesh_sockhash";
    let map = ebpf.take_map(names::SOCKHASH).ok_or_else(|| err(what, "no sockhash in the mesh object"))?;
    let sockhash: SockHash<MapData, MeshSockKey> = SockHash::try_from(map).map_err(|e| err(what, e))?;
    let program = ebpf.program_mut(MESH_MSG_PROGRAM).ok_or_else(|| err(what, "not in the mesh object"))?;
    let msg: &mut SkMsg = program.try_into().map_err(|e| err(what, e))?;
    msg.load().map_err(|e| err(what, error_chain(&e)))?;
    let id = msg.attach(sockhash.fd()).map_err(|e| err(what, e))?;
    let link = msg.take_link(id).map_err(|e| err(what, e))?;
    // Dropping the link would detach the program from the map: the
    // attachment must outlive this process, like the pinned links.
    std::mem::forget(link);
    msg.pin(pin).map_err(|e| err(format!("pinning {}", pin.display()), e))?;
    Ok(())
}

fn open_maps(maps_dir: &Path) -> Result<MeshMaps, MeshError> {
    let data = |name: &str| {
        let pin = maps_dir.join(name);
        MapData::from_pin(&pin).map_err(|e| err(format!("opening {}", pin.display()), error_chain(&e)))
    };
    let map = |name: &str| data(name).map(aya::maps::Map::from_map_data);
    Ok(MeshMaps {
        pods: HashMap::try_from(map(names::PODS)?.map_err(|e| err(names::PODS, e))?)
            .map_err(|e| err(names::PODS, e))?,
        pod_ips: HashMap::try_from(map(names::POD_IPS)?.map_err(|e| err(names::POD_IPS, e))?)
            .map_err(|e| err(names::POD_IPS, e))?,
        cidrs: LpmTrie::try_from(map(names::EXCL_CIDRS)?.map_err(|e| err(names::EXCL_CIDRS, e))?)
            .map_err(|e| err(names::EXCL_CIDRS, e))?,
        metrics: PerCpuArray::try_from(map(names::METRICS)?.map_err(|e| err(names::METRICS, e))?)
            .map_err(|e| err(names::METRICS, e))?,
    })
}

/// Detaches and unpins everything under `<bpffs-root>/mesh` (the cgroup
/// links are detached when their last reference, the pin, goes).
pub fn cleanup(bpffs_root: &Path) -> Result<(), MeshError> {
    let dir = mesh_dir(bpffs_root);
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for entry in entries.flatten() {
            if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                let _ = link.unpin().map(|fd: FdLink| drop(fd));
            }
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|e| err(format!("removing {}", dir.display()), e))
}
