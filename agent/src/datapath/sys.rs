//! The few raw `bpf(2)` and filesystem calls aya 0.14 does not expose (or
//! wraps in ways that cannot be pinned): creating and pinning links on
//! cgroups and devices, link info (which cgroup or device, which attach
//! type), swapping a link's program in place, forced link detach, counting a
//! map's keys, monotonic time, and filesystem magic.
//!
//! The attribute layouts are the stable prefixes of `union bpf_attr` and
//! `struct bpf_link_info` from `linux/bpf.h`; the kernel accepts a shorter
//! attr than its own and zero-fills the rest.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_link_type`.
pub const LINK_TYPE_CGROUP: u32 = 3;
pub const LINK_TYPE_XDP: u32 = 6;
pub const LINK_TYPE_TCX: u32 = 11;

/// `enum bpf_attach_type` of the device hooks.
pub const ATTACH_XDP: u32 = 37;
pub const ATTACH_TCX_INGRESS: u32 = 46;
pub const ATTACH_TCX_EGRESS: u32 = 47;

/// `XDP_FLAGS_SKB_MODE` (generic) and `XDP_FLAGS_DRV_MODE` (native).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `BPF_FS_MAGIC` and `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable, repr(C) prefix of `union bpf_attr`
    // and its exact size is passed; the kernel reads and writes within it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What the kernel says about a link (`struct bpf_link_info`, the cgroup,
/// XDP and tcx parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Cgroup links: the cgroup's id (its inode number on cgroup2); 0 once
    /// the cgroup is gone and the link is defunct.
    pub cgroup_id: u64,
    /// XDP and tcx links: the device; 0 once the device is gone.
    pub ifindex: u32,
    /// Cgroup and tcx links: `enum bpf_attach_type`.
    pub attach_type: u32,
}

#[repr(C)]
struct ObjGetInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` is 48 bytes today; a larger zeroed buffer is
/// accepted (the tail must be zero) and leaves room for newer kernels.
#[repr(C, align(8))]
struct LinkInfoBuf([u8; 128]);

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut buf = LinkInfoBuf([0; 128]);
    let mut attr = ObjGetInfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: buf.0.len() as u32,
        info: buf.0.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let b = &buf.0;
    let u32_at = |off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"));
    let u64_at = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"));
    let link_type = u32_at(0);
    // The union after prog_id starts at 16: cgroup { u64 cgroup_id; u32
    // attach_type }, xdp { u32 ifindex }, tcx { u32 ifindex; u32 attach_type }.
    let (cgroup_id, ifindex, attach_type) = match link_type {
        LINK_TYPE_CGROUP => (u64_at(16), 0, u32_at(24)),
        LINK_TYPE_XDP => (0, u32_at(16), ATTACH_XDP),
        LINK_TYPE_TCX => (0, u32_at(16), u32_at(20)),
        _ => (0, 0, 0),
    };
    Ok(LinkInfo { link_type, id: u32_at(4), prog_id: u32_at(8), cgroup_id, ifindex, attach_type })
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Atomically makes `link` run `new_prog` instead of its current program:
/// the hook is never without a program and the link keeps its id and pin.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    /// A cgroup fd, or a device's ifindex.
    target: u32,
    attach_type: u32,
    flags: u32,
    /// The per-type union (tcx relative_fd and expected_revision): all zero,
    /// which appends to a tcx chain.
    rest: [u64; 3],
}

/// Where a new link attaches.
#[derive(Debug, Clone, Copy)]
pub enum LinkTarget<'a> {
    Cgroup(BorrowedFd<'a>),
    Ifindex(u32),
}

/// `BPF_LINK_CREATE`: attaches `prog` with a new link, returned open (it is
/// detached when the last fd closes unless it is pinned first).
pub fn link_create(prog: BorrowedFd<'_>, target: LinkTarget<'_>, attach_type: u32, flags: u32) -> io::Result<OwnedFd> {
    let target = match target {
        LinkTarget::Cgroup(fd) => fd.as_raw_fd() as u32,
        LinkTarget::Ifindex(index) => index,
    };
    let mut attr = LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target, attach_type, flags, rest: [0; 3] };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins any BPF object (here: links) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = ObjPinAttr { pathname: c_path.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Seconds of `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_secs() -> u64 {
    // SAFETY: clock_gettime only writes into the zeroed struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64
}

#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches a link now, even while other processes hold it open.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr { link_fd: link.as_raw_fd() as u32 };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens any pinned BPF object (link, map, program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct MapNextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// Number of keys in a hash-like map, walked with `BPF_MAP_GET_NEXT_KEY`
/// (the kernel keeps no element count for hash maps). Concurrent updates
/// can make the result off by the entries changed during the walk.
pub fn count_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<u64> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0u64;
    let mut first = true;
    loop {
        let mut attr = MapNextKeyAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(count),
            Err(e) => return Err(e),
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// `f_type` of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname only writes into the zeroed struct we pass.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
