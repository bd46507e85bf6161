//! Two-instruction XDP programs, loaded with raw bpf(2) calls:
//!
//! - XDP_PASS, attached in native mode to the hub side of each node's
//!   segment device: native XDP on a veth can only XDP_TX or redirect into
//!   the peer when the peer runs an XDP program of its own. The link lives
//!   as long as its fd (or the device): no pin, nothing to sweep.
//! - the packet generator's program, never attached: it steps the UDP
//!   source port of each frame through `flows` values (keeping the checksum
//!   right by moving a payload byte the other way) and returns XDP_TX.
//!   `BPF_PROG_TEST_RUN` in live-frame mode runs it and sends every frame
//!   out of the client's generator device as an XDP frame: the node's device
//!   receives page-backed frames through NAPI, as from a NIC driver, instead
//!   of socket-made skbs (which native XDP on veth must copy first, and which
//!   no real NIC delivers).

use super::bpf::{bpf, bpf_raw, Attr};
use super::sys;
use anyhow::Context;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// `struct bpf_insn`: opcode, dst/src registers (4 bits each), offset, immediate.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// Loads `insns` as an XDP program called `name`.
fn load(insns: &[Insn], name: &[u8]) -> io::Result<OwnedFd> {
    let license = b"Dual BSD/GPL\0";
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_PROG_TYPE_XDP);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    let n = name.len().min(15);
    attr.0[48..48 + n].copy_from_slice(&name[..n]);
    attr.put_u32(68, BPF_XDP);
    bpf(BPF_PROG_LOAD, &mut attr)
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// r0 = XDP_PASS; exit.
const PASS: [Insn; 2] = [insn(0xb7, 0, 0, 0, XDP_PASS), insn(0x95, 0, 0, 0, 0)];

/// Offsets in the generator's frame (Ethernet, IPv4 without options, UDP):
/// the low byte of the source port, and the payload byte that balances it.
pub const SPORT_LO: usize = 14 + 20 + 1;
pub const BALANCE: usize = 14 + 20 + 8 + 1;
/// The generator's frames: 60 bytes, the Ethernet minimum.
pub const FRAME_LEN: usize = 60;

/// The generator. Live-frame test runs recycle their pages without
/// resetting the data, and whatever the path wrote into a page (a new MAC
/// header on forwarding, a lower TTL, NAT rewrites) would come round again:
/// so the program writes the whole frame each time, then draws the source
/// port's low byte at random (masked to `mask`) and sets the balance byte to
/// 0xff minus it, which keeps the one's-complement sum, hence the UDP
/// checksum, right. Then XDP_TX.
fn generator(frame: &[u8; FRAME_LEN], mask: u8) -> Vec<Insn> {
    let mut p = vec![
        insn(0x61, 2, 1, 0, 0),                // r2 = ctx->data
        insn(0x61, 3, 1, 4, 0),                // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                // r4 = r2
        insn(0x07, 4, 0, 0, FRAME_LEN as i32), // r4 += FRAME_LEN
        insn(0x2d, 4, 3, 0, 0),                // if r4 > r3 goto out (patched below)
        insn(0xbf, 6, 2, 0, 0),                // r6 = r2 (kept across the call)
    ];
    for (k, word) in frame.chunks_exact(4).enumerate() {
        let imm = i32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        p.push(insn(0x62, 6, 0, (k * 4) as i16, imm)); // *(u32 *)(r6 + 4k) = imm
    }
    p.extend([
        insn(0x85, 0, 0, 0, 7),               // r0 = bpf_get_prandom_u32()
        insn(0x57, 0, 0, 0, i32::from(mask)), // r0 &= mask
        insn(0x73, 6, 0, SPORT_LO as i16, 0), // sport low byte = r0
        insn(0xb7, 7, 0, 0, 0xff),            // r7 = 0xff
        insn(0x1f, 7, 0, 0, 0),               // r7 -= r0
        insn(0x73, 6, 7, BALANCE as i16, 0),  // balance byte = r7
    ]);
    let out = p.len();
    p[4].off = (out - 4 - 1) as i16;
    p.extend([insn(0xb7, 0, 0, 0, XDP_TX), insn(0x95, 0, 0, 0, 0)]); // out: return XDP_TX
    p
}

/// An attached XDP_PASS program (its link and program fds); detached on drop.
pub struct XdpPass {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl XdpPass {
    /// Attaches XDP_PASS to `ifname` of netns `ns` in native (driver) mode.
    pub fn attach(ns: &str, ifname: &str) -> anyhow::Result<XdpPass> {
        let prog = load(&PASS, b"axn_xdp_pass").context("loading the XDP_PASS program")?;
        let prog_raw = prog.as_raw_fd() as u32;
        // The ifindex is resolved in the namespace of the calling thread.
        let link = sys::in_netns(ns, || {
            let ifindex = sys::if_index(ifname)?;
            let mut attr = Attr::new();
            attr.put_u32(0, prog_raw);
            attr.put_u32(4, ifindex);
            attr.put_u32(8, BPF_XDP);
            attr.put_u32(12, XDP_FLAGS_DRV_MODE);
            bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("attaching XDP_PASS to {ifname} in {ns}"))
        })?;
        Ok(XdpPass { _link: link, _prog: prog })
    }
}

/// Sends frames out of a device as XDP frames (the generator program in
/// live-frame test runs). Use from a thread inside the device's namespace.
pub struct FrameSender {
    prog: OwnedFd,
    ifindex: u32,
}

impl FrameSender {
    /// Sends `frame` with `flows` (a power of two, at most 256) source ports.
    pub fn new(ifname: &str, frame: &[u8; FRAME_LEN], flows: u16) -> anyhow::Result<FrameSender> {
        let mask = u8::try_from(flows.saturating_sub(1)).context("at most 256 flows")?;
        let prog = load(&generator(frame, mask), b"axn_xdp_gen").context("loading the generator program")?;
        Ok(FrameSender { prog, ifindex: sys::if_index(ifname)? })
    }

    /// Sends `count` frames (`frame` is only the template of the first).
    pub fn send(&self, frame: &[u8], count: u32) -> io::Result<()> {
        // struct xdp_md: data 0, data_end = length, ingress_ifindex.
        let mut ctx = [0u32; 6];
        ctx[1] = frame.len() as u32;
        ctx[3] = self.ifindex;
        let mut attr = Attr::new();
        attr.put_u32(0, self.prog.as_raw_fd() as u32);
        attr.put_u32(8, frame.len() as u32);
        attr.put_u64(16, frame.as_ptr() as u64);
        attr.put_u32(32, count);
        attr.put_u32(40, std::mem::size_of_val(&ctx) as u32);
        attr.put_u64(48, ctx.as_ptr() as u64);
        attr.put_u32(64, BPF_F_TEST_XDP_LIVE_FRAMES);
        bpf_raw(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }
}
