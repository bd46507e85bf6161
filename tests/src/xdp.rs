//! A minimal XDP_PASS program attached to an interface of a lab namespace.
//!
//! On veth, native XDP can only send a frame on (XDP_TX, or a redirect into
//! another veth) when the receiving peer has an XDP program of its own (or
//! GRO); without one the frame is dropped. Tests of native XDP attach this to
//! the peers of the devices the agent runs XDP on. The program lives as long
//! as the guard (dropping it detaches the link), or until the interface goes.

use crate::error::{LabError, Result};
use crate::netns::Netns;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pass.o"));
const PROGRAM: &str = "lab_xdp_pass";

/// An attached XDP_PASS program; detached on drop.
pub struct XdpPass {
    netns: String,
    ifname: String,
    // Holds the program and its link: dropping it detaches.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for XdpPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpPass").field("netns", &self.netns).field("ifname", &self.ifname).finish()
    }
}

impl XdpPass {
    /// Attaches XDP_PASS to `ifname` in `netns`, in native (driver) mode.
    pub fn attach(netns: &Netns, ifname: &str) -> Result<XdpPass> {
        Self::attach_mode(netns, ifname, XdpMode::Driver)
    }

    /// Attaches in the given mode (`XdpMode::Skb` is generic XDP).
    pub fn attach_mode(netns: &Netns, ifname: &str, mode: XdpMode) -> Result<XdpPass> {
        let what = format!("attaching XDP_PASS to {ifname} in {} ({mode:?})", netns.label());
        let err = |e: &dyn std::fmt::Display| LabError::Setup(format!("{what}: {e}"));
        // The interface is looked up and the link created in the calling
        // thread's namespace: do both from a thread inside `netns`.
        let ebpf = netns.run(|| -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(OBJECT).map_err(|e| err(&e))?;
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM)
                .ok_or_else(|| err(&"program missing from the object"))?
                .try_into()
                .map_err(|e| err(&e))?;
            prog.load().map_err(|e| err(&e))?;
            prog.attach(ifname, mode).map_err(|e| err(&e))?;
            Ok(ebpf)
        })??;
        Ok(XdpPass { netns: netns.label().to_string(), ifname: ifname.to_string(), _ebpf: ebpf })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}
