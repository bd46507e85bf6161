//! Raw bpf(2) calls the bench needs without a BPF library: the attribute
//! buffer, and run-time statistics of the programs Axon's agent attached to
//! a node device (enabled with `BPF_ENABLE_STATS` only while the bench holds
//! the fd, so nothing on the host changes for good), read through the
//! agent's pinned links.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes of `union bpf_attr` we pass; the kernel zero-fills the rest.
const ATTR_LEN: usize = 128;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// `struct bpf_link_info`: prog_id at 8; `struct bpf_prog_info`: run_time_ns
/// at 192, run_cnt at 200 (offsets of linux/bpf.h).
const LINK_INFO_LEN: usize = 48;
const LINK_PROG_ID: usize = 8;
const PROG_INFO_LEN: usize = 232;
const PROG_RUN_TIME_NS: usize = 192;
const PROG_RUN_CNT: usize = 200;

/// `union bpf_attr`, as bytes at the offsets of linux/bpf.h.
#[repr(C, align(8))]
pub struct Attr(pub [u8; ATTR_LEN]);

impl Attr {
    pub fn new() -> Attr {
        Attr([0; ATTR_LEN])
    }
    pub fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

/// bpf(2); the kernel reads (and for some commands writes) within `attr`.
pub fn bpf_raw(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: bpf(2) stays within `attr`, whose size we pass; any pointers
    // inside it were set by the caller to buffers that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR_LEN as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// bpf(2) for a command that returns a new fd.
pub fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf_raw(cmd, attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn obj_info(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, buf.len() as u32);
    attr.put_u64(8, buf.as_mut_ptr() as u64);
    bpf_raw(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    u64::from_ne_bytes(b)
}

/// Run-time statistics are collected while this lives.
pub struct StatsEnabled(#[allow(dead_code)] OwnedFd);

/// Turns on run time and count accounting of every BPF program until the
/// returned guard drops.
pub fn enable_stats() -> io::Result<StatsEnabled> {
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_STATS_RUN_TIME);
    bpf(BPF_ENABLE_STATS, &mut attr).map(StatsEnabled)
}

/// Cumulative run time and runs of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub ns: u64,
    pub runs: u64,
}

/// The programs an agent attached to one device, by link pin name.
pub struct DevicePrograms {
    progs: Vec<(String, OwnedFd)>,
}

impl DevicePrograms {
    /// Opens the programs behind the link pins `<bpffs>/links/*@<dev>` of
    /// each device. One program attached to several devices counts once
    /// (its statistics cover all of them), named `<function>@<dev>+<dev>`.
    pub fn open(bpffs: &Path, devs: &[&str]) -> anyhow::Result<DevicePrograms> {
        let dir = bpffs.join("links");
        let mut by_id: BTreeMap<u32, (Vec<String>, OwnedFd)> = BTreeMap::new();
        let mut pins: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        pins.sort_by_key(|e| e.file_name());
        for e in pins {
            let name = e.file_name().to_string_lossy().to_string();
            if !devs.iter().any(|d| name.ends_with(&format!("@{d}"))) {
                continue;
            }
            let link = obj_get(&e.path()).with_context(|| format!("opening {}", e.path().display()))?;
            let mut info = [0u8; LINK_INFO_LEN];
            obj_info(&link, &mut info).context("link info")?;
            let mut id = [0u8; 4];
            id.copy_from_slice(&info[LINK_PROG_ID..LINK_PROG_ID + 4]);
            let prog_id = u32::from_ne_bytes(id);
            if let Some((names, _)) = by_id.get_mut(&prog_id) {
                names.push(name);
                continue;
            }
            let mut attr = Attr::new();
            attr.put_u32(0, prog_id);
            let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).with_context(|| format!("program {prog_id}"))?;
            by_id.insert(prog_id, (vec![name], prog));
        }
        let progs = by_id.into_values().map(|(names, fd)| (joined_name(&names), fd)).collect();
        Ok(DevicePrograms { progs })
    }

    /// Each program's statistics now.
    pub fn snapshot(&self) -> BTreeMap<String, RunStats> {
        self.progs
            .iter()
            .filter_map(|(name, fd)| {
                let mut info = [0u8; PROG_INFO_LEN];
                obj_info(fd, &mut info).ok()?;
                Some((
                    name.clone(),
                    RunStats { ns: u64_at(&info, PROG_RUN_TIME_NS), runs: u64_at(&info, PROG_RUN_CNT) },
                ))
            })
            .collect()
    }
}

/// `f@a`, `f@b` → `f@a+b`.
fn joined_name(pins: &[String]) -> String {
    let function = pins[0].split('@').next().unwrap_or_default();
    let devs: Vec<&str> = pins.iter().filter_map(|p| p.split_once('@').map(|(_, d)| d)).collect();
    format!("{function}@{}", devs.join("+"))
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut attr)
}
