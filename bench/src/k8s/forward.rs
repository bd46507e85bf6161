//! kube-proxy runs in its node's network namespace, where the host's loopback apiserver is out of reach.
//! Like a node's local apiserver proxy, a forwarder listens on 127.0.0.1 *inside* that namespace and relays
//! each connection to the apiserver on the host's loopback: one thread creates the listener after entering
//! the namespace and returns to the host namespace before connecting out. TLS passes through untouched.

use crate::sys;
use anyhow::Context;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;

/// Starts forwarding `listen` (inside the netns at `netns`) to `upstream` (host namespace). The listener
/// lives as long as the process (the namespace's deletion closes nothing; the run ends soon after).
pub fn start(netns: &Path, listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let host = sys::open_netns(Path::new("/proc/thread-self/ns/net")).context("opening the host netns")?;
    let target = sys::open_netns(netns).with_context(|| format!("opening {}", netns.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::Builder::new().name("apiserver-forward".into()).spawn(move || {
        let bound = (|| -> std::io::Result<TcpListener> {
            sys::setns_net(&target)?;
            let listener = TcpListener::bind(listen);
            sys::setns_net(&host)?;
            listener
        })();
        match bound {
            Ok(listener) => {
                let _ = tx.send(Ok(()));
                accept_loop(listener, upstream);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv().context("forwarder thread")?.with_context(|| format!("listening on {listen} in {}", netns.display()))
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr) {
    for conn in listener.incoming().flatten() {
        let Ok(up) = TcpStream::connect(upstream) else {
            continue;
        };
        let (Ok(conn2), Ok(up2)) = (conn.try_clone(), up.try_clone()) else {
            continue;
        };
        thread::spawn(move || relay(conn, up));
        thread::spawn(move || relay(up2, conn2));
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
