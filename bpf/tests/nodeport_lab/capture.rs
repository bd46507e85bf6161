//! Packet capture on a lab device (AF_PACKET), to check what the datapath
//! put on the wire: veth receivers trust an skb's checksum state and never
//! verify, so the test does. PACKET_AUXDATA says whether a captured frame
//! still carries a CHECKSUM_PARTIAL seed (TP_STATUS_CSUMNOTREADY) instead of
//! a complete checksum.

use super::net::{ifindex, in_ns};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

#[repr(C)]
#[derive(Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// A captured Ethernet frame.
pub struct Frame {
    pub data: Vec<u8>,
    /// The L4 checksum is a CHECKSUM_PARTIAL seed, not a complete checksum.
    pub csum_partial: bool,
}

pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Captures every frame on `dev` in `ns` from now on.
    pub fn open(ns: &str, dev: &str) -> Capture {
        let index = ifindex(ns, dev) as i32;
        let fd = in_ns(ns, || {
            // SAFETY: plain socket calls on a descriptor owned from here on;
            // every struct passed is initialised and sized.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let one: libc::c_int = 1;
                let len = std::mem::size_of_val(&one) as libc::socklen_t;
                let rc = libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    PACKET_AUXDATA,
                    (&one as *const libc::c_int).cast(),
                    len,
                );
                assert_eq!(rc, 0, "PACKET_AUXDATA");
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = ETH_P_ALL.to_be();
                sll.sll_ifindex = index;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "binding the capture: {}", std::io::Error::last_os_error());
                let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                fd
            }
        });
        Capture { fd }
    }

    /// The next frame, or None once nothing came for 200 ms.
    pub fn next(&self) -> Option<Frame> {
        let mut buf = vec![0u8; 65536];
        let mut control = [0u64; 16];
        // SAFETY: recvmsg into buffers that outlive the call; the control
        // messages are read within the length the kernel reports.
        unsafe {
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return None;
            }
            buf.truncate(n as usize);
            let mut aux = TpacketAuxdata::default();
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA {
                    std::ptr::copy_nonoverlapping(
                        libc::CMSG_DATA(cmsg),
                        (&mut aux as *mut TpacketAuxdata).cast(),
                        std::mem::size_of::<TpacketAuxdata>(),
                    );
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Some(Frame { data: buf, csum_partial: aux.tp_status & TP_STATUS_CSUMNOTREADY != 0 })
        }
    }

    /// Every frame until the line goes quiet.
    pub fn drain(&self) -> Vec<Frame> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// One's complement sum of `data` (16-bit big-endian words), folded.
pub fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    u32::from(ones_sum(&bytes, 0))
}

/// An IP packet in a frame: (source, destination, protocol, L4 bytes).
pub fn l4(frame: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let src = IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
            let dst = IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
            Some((src, dst, *ip.get(9)?, ip.get(ihl..total)?))
        }
        0x86dd => {
            let payload = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let src = IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
            let dst = IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
            Some((src, dst, *ip.get(6)?, ip.get(40..40 + payload)?))
        }
        _ => None,
    }
}

/// Whether an L4 checksum is right: a complete checksum sums to 0xffff
/// with the pseudo-header (ICMPv4 has none); a partial one is exactly the
/// folded pseudo-header sum.
pub fn l4_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8], partial: bool) -> bool {
    let pseudo = if proto == 1 { 0 } else { pseudo_sum(src, dst, proto, segment.len()) };
    if partial {
        let field_at = if proto == 6 { 16 } else { 6 };
        let field = u16::from_be_bytes([segment[field_at], segment[field_at + 1]]);
        return field == ones_sum(&[], pseudo);
    }
    ones_sum(segment, pseudo) == 0xffff
}
