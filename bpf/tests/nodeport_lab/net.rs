//! Network namespaces for the lab: creating and deleting them with `ip`,
//! running code inside one (a thread that entered it), device queries and
//! the one ethtool setting the lab needs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `ip` with `args`; panics with its stderr when it fails (a lab that
/// cannot be built is a test failure, not something to carry on from).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running `ip` (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

/// Runs a shell snippet inside `ns` (for sysctls).
pub fn ns_sh(ns: &str, script: &str) {
    ip(&["netns", "exec", ns, "sh", "-c", script]);
}

/// A network namespace, deleted (with every device in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        // A namespace of this name left behind by a crashed run of the same
        // pid would make `ip netns add` fail; it is ours to remove.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        // No duplicate address detection: a link-local address still
        // tentative cannot source the neighbour solicitations a router sends
        // for forwarded packets, which would hold a flow's first packet ~1 s.
        ns_sh(
            name,
            "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad",
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets
/// created there belong to `ns` for good, whichever thread uses them later.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it only changes the
            // network namespace of this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        });
        match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The ifindex of `dev` in `ns`.
pub fn ifindex(ns: &str, dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).expect("device name without NUL");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = in_ns(ns, || unsafe { libc::if_nametoindex(name.as_ptr()) });
    assert_ne!(index, 0, "no device {dev} in {ns}");
    index
}

/// Switches TX checksum offload of `dev` in `ns` (ETHTOOL_STXCSUM). Off, the
/// stack sends complete checksums instead of CHECKSUM_PARTIAL seeds (and no
/// TSO, which needs the offload).
pub fn set_tx_checksum(ns: &str, dev: &str, on: bool) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let name = dev.to_string();
    let result = in_ns(ns, move || {
        let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: on as u32 };
        // SAFETY: a plain datagram socket for the ioctl, an ifreq with a
        // NUL-terminated name and a pointer to `value`, which outlives the call.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
            let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("switching tx checksumming of {ns}/{dev}: {e}");
    }
}
