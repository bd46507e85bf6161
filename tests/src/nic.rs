//! Device settings netlink does not carry: transmit checksum offload, set
//! through the ethtool ioctl from a thread inside the device's namespace.
//!
//! With offload on (the veth default) locally sent TCP/UDP packets carry only
//! a partial checksum that nobody verifies on the way; with it off the
//! sender computes the full checksum and the receiving stack checks it, so a
//! translation that breaks a checksum makes packets vanish instead of
//! passing unnoticed.

use crate::error::{LabError, Result};
use crate::netns::Netns;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes in all).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Turns transmit checksum offload of `ifname` (in `netns`) on or off.
pub fn set_tx_checksum(netns: &Netns, ifname: &str, on: bool) -> Result<()> {
    ethtool_value(netns, ifname, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether transmit checksum offload of `ifname` (in `netns`) is on.
pub fn tx_checksum(netns: &Netns, ifname: &str) -> Result<bool> {
    ethtool_value(netns, ifname, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

fn ethtool_value(netns: &Netns, ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let what = format!("ethtool command {cmd:#x} on {ifname} in {}", netns.label());
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(LabError::Setup(format!("{what}: interface name too long")));
    }
    netns
        .run(|| {
            let mut value = EthtoolValue { cmd, data };
            let mut req =
                IfreqData { name: [0; libc::IFNAMSIZ], data: (&mut value as *mut EthtoolValue).cast(), _pad: [0; 16] };
            for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: a socket for the ioctl, closed below; `req` and `value`
            // outlive the call, and the kernel writes only within them.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfreqData);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if rc < 0 {
                    return Err(err);
                }
            }
            Ok(value.data)
        })?
        .map_err(|e| LabError::io(what, e))
}
