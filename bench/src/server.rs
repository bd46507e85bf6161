//! The backends: one helper process in the backend netns listening on
//! 0.0.0.0:8080. The netns routes the whole pod range to itself (AnyIP), so
//! this one listener is every backend of every service. Each connection gets
//! one line, the address it was made to, and is closed.

use crate::sys;
use anyhow::Context;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;

/// Accept loops; two keep up with one sequential client and leave the other
/// CPU to it.
const ACCEPTORS: usize = 2;

pub fn run(netns: &Path, port: u16) -> anyhow::Result<()> {
    sys::die_with_parent();
    sys::enter_netns(netns).with_context(|| format!("entering {}", netns.display()))?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("listening on :{port}"))?;
    println!("ready");
    let mut threads = Vec::new();
    for _ in 1..ACCEPTORS {
        let l = listener.try_clone().context("cloning the listener")?;
        threads.push(std::thread::spawn(move || serve(&l)));
    }
    serve(&listener);
    Ok(())
}

fn serve(listener: &TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept() else { continue };
        if let Ok(local) = stream.local_addr() {
            // The client may already have reset the connection; nothing to do then.
            let _ = writeln!(stream, "{local}");
        }
    }
}
