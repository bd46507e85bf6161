//! Backend servers: threads of the test process that enter a backend's
//! namespace and answer TCP and UDP on one port with the backend's name — and,
//! for a reporting server, the peer address it saw (see [`crate::probe`]). They run outside the test cgroup, so the socket-LB never
//! touches their side of the traffic.

use crate::error::{IoContext, LabError, Result};
use crate::netns::Netns;
use crate::probe;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a connection may sit idle before the server drops it: bounds the
/// handler threads whatever a client does.
const IDLE: Duration = Duration::from_secs(5);

/// What the first line of an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStyle {
    /// `"<name>\n"`.
    Name,
    /// `"<name> from <peer>\n"`: the address the connection or datagram came from.
    NameAndPeer,
}

impl ReplyStyle {
    fn first_line(self, name: &str, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        match self {
            ReplyStyle::Name => probe::reply(name, payload),
            ReplyStyle::NameAndPeer => probe::reply_from(name, canonical(peer), payload),
        }
    }
}

/// A dual-stack socket shows IPv4 peers as `::ffff:a.b.c.d`; tests compare plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A running server; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct BackendServer {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl BackendServer {
    /// Listens on `[::]:port` (dual-stack, TCP and UDP) inside `netns`,
    /// answering with the name alone.
    pub fn start(netns: &Netns, name: &str, port: u16) -> Result<BackendServer> {
        Self::start_with(netns, name, port, ReplyStyle::Name)
    }

    /// Like [`BackendServer::start`], answering `"<name> from <peer>"`.
    pub fn start_reporting(netns: &Netns, name: &str, port: u16) -> Result<BackendServer> {
        Self::start_with(netns, name, port, ReplyStyle::NameAndPeer)
    }

    pub fn start_with(netns: &Netns, name: &str, port: u16, style: ReplyStyle) -> Result<BackendServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let what = format!("{name} on port {port}");
        // The sockets are made on a thread inside the namespace, then served there.
        let thread = std::thread::Builder::new()
            .name(format!("lab-{name}-{port}"))
            .spawn({
                let (stop, served, name) = (stop.clone(), served.clone(), name.to_string());
                let ns_fd = netns.raw_fd();
                let label = netns.label().to_string();
                move || match enter(ns_fd, &label).and_then(|()| bind(port)) {
                    Ok((tcp, udp)) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(&name, style, &tcp, &udp, &stop, &served);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .ctx(|| format!("spawning server thread for {what}"))?;
        // Waiting here also keeps `netns` (and so its fd) alive until setns is done.
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(BackendServer { name: name.to_string(), port, stop, served, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LabError::Setup(format!("server {what} did not start"))),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted plus datagrams answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter(ns_fd: i32, label: &str) -> Result<()> {
    // SAFETY: setns on a descriptor the caller keeps open until we report ready.
    if unsafe { libc::setns(ns_fd, libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::io(format!("entering namespace {label}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn bind(port: u16) -> Result<(TcpListener, UdpSocket)> {
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let tcp = TcpListener::bind(addr).ctx(|| format!("binding TCP {addr}"))?;
    let udp = UdpSocket::bind(addr).ctx(|| format!("binding UDP {addr}"))?;
    tcp.set_nonblocking(true).ctx(|| "non-blocking listener".into())?;
    udp.set_nonblocking(true).ctx(|| "non-blocking UDP socket".into())?;
    Ok((tcp, udp))
}

fn serve(name: &str, style: ReplyStyle, tcp: &TcpListener, udp: &UdpSocket, stop: &AtomicBool, served: &AtomicU64) {
    let mut fds = [
        libc::pollfd { fd: tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: udp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        while let Ok((stream, peer)) = tcp.accept() {
            served.fetch_add(1, Ordering::Relaxed);
            let first = style.first_line(name, peer, b"");
            // A thread per connection: echo clients may hold it open a while.
            let _ = std::thread::Builder::new().name("lab-conn".into()).spawn(move || handle_tcp(&first, stream));
        }
        while let Ok((len, from)) = udp.recv_from(&mut buf) {
            served.fetch_add(1, Ordering::Relaxed);
            let _ = udp.send_to(&style.first_line(name, from, &buf[..len]), from);
        }
    }
}

fn handle_tcp(first_line: &[u8], mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    if stream.write_all(first_line).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
