//! The system calls the north-south bench needs beyond std: running code in
//! a network namespace (on a thread of its own, since setns(2) is per
//! thread), pinning a thread to a CPU, transmit checksum offload through the
//! ethtool ioctl, per-namespace sysctls, and signals to our own children.

use anyhow::{bail, Context};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where `ip netns add` binds named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Opens the handle of a named network namespace.
pub fn open_netns(name: &str) -> io::Result<OwnedFd> {
    let path = Path::new(NETNS_DIR).join(name);
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open(2) of a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and belongs to nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace `name`.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let fd = open_netns(name)?;
    // SAFETY: setns(2) on a namespace fd we own; affects this thread only.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside netns `name` and returns its
/// result: the caller's own namespace never changes.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name).with_context(|| format!("entering netns {name}"))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread inside netns {name} panicked"))
    })
}

/// Pins the calling thread to `cpu`; a CPU this machine lacks is ignored
/// (the bench then runs unpinned, and says so).
pub fn pin_to_cpu(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it, and
    // sched_setaffinity(0) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Packets device `dev` of netns `ns` has received (`ip -s -j link`:
/// netlink, so the namespace is the one named, whatever thread asks).
pub fn rx_packets(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", dev]).output()?;
    if !out.status.success() {
        bail!("ip -n {ns} -s link show dev {dev}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    v.get(0)
        .and_then(|l| l.pointer("/stats64/rx/packets"))
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no rx packet count of {dev} in {ns}"))
}

/// Writes a sysctl (`net.ipv4.ip_forward` form) of netns `ns`: /proc/sys/net
/// shows the namespace of the thread that opens it.
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::write(&path, value).with_context(|| format!("writing {path} in {ns}")))
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Turns transmit checksum offload of `ifname` in netns `ns` off, so its
/// senders put complete checksums on the wire as a real NIC's peers do
/// (veth otherwise leaves a partial one that XDP hands to tc untouched).
pub fn tx_checksum_off(ns: &str, ifname: &str) -> anyhow::Result<()> {
    ethtool_set(ns, ifname, ETHTOOL_STXCSUM, 0)
}

/// Turns GRO of veth `ifname` in netns `ns` on: the veth then receives
/// through NAPI (as a NIC driver does) and accepts XDP frames from its peer.
pub fn gro_on(ns: &str, ifname: &str) -> anyhow::Result<()> {
    ethtool_set(ns, ifname, ETHTOOL_SGRO, 1)
}

fn ethtool_set(ns: &str, ifname: &str, cmd: u32, data: u32) -> anyhow::Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname:?} too long");
    }
    in_netns(ns, || {
        let mut value = EthtoolValue { cmd, data };
        let mut req =
            IfreqData { name: [0; libc::IFNAMSIZ], data: (&mut value as *mut EthtoolValue).cast(), _pad: [0; 16] };
        for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: a datagram socket for the ioctl, closed by OwnedFd; `req`
        // and `value` outlive the call and the kernel writes only into them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("socket for the ethtool ioctl");
            }
            let sock = OwnedFd::from_raw_fd(fd);
            if libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfreqData) < 0 {
                return Err(io::Error::last_os_error()).with_context(|| format!("ethtool {cmd:#x} on {ifname}"));
            }
        }
        Ok(())
    })
}

/// The index of `ifname` in the calling thread's namespace.
pub fn if_index(ifname: &str) -> anyhow::Result<u32> {
    let c = CString::new(ifname).context("interface name")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {ifname}"));
    }
    Ok(idx)
}

/// Sends `sig` to a process we started.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Whether `pid` is alive (not a zombie) and its command name is `comm`.
pub fn process_is(pid: u32, comm: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) state ...": comm may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    &stat[open + 1..close] == comm && !matches!(state, "Z" | "X")
}

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
