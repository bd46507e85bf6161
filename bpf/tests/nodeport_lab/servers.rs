//! Backends and the client side of their protocol.
//!
//! A backend answers one command per TCP connection:
//!   `WHO\n`          -> `<peer address> <backend name>\n` (what it sees as
//!                       the client);
//!   `PUT <n>\n` + n bytes -> `<fnv64 of the bytes>\n`;
//!   `GET <n> <seed>\n`    -> n bytes of `data(seed)`.
//! and every UDP datagram with `<peer address> <backend name>`.

use super::net::in_ns;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// FNV-1a, 64 bits: the content checksum of a transfer.
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `n` deterministic pseudo-random bytes (xorshift64*).
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A TCP and a UDP server on one address, stopped and joined on drop.
pub struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    pub fn start(ns: &str, addr: SocketAddr, name: &str) -> Backend {
        let (listener, udp) = in_ns(ns, || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
            let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
            (listener, udp)
        });
        listener.set_nonblocking(true).expect("non-blocking listener");
        udp.set_read_timeout(Some(Duration::from_millis(50))).expect("udp timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let tcp_thread = {
            let (stop, name) = (stop.clone(), name.clone());
            std::thread::spawn(move || serve_tcp(listener, &name, &stop))
        };
        let udp_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || serve_udp(udp, &name, &stop))
        };
        Backend { stop, threads: vec![tcp_thread, udp_thread] }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let name = name.to_string();
                std::thread::spawn(move || {
                    let _ = handle_tcp(stream, peer, &name);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle_tcp(stream: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["WHO"] => writer.write_all(format!("{} {name}\n", peer.ip()).as_bytes())?,
        ["PUT", n] => {
            let n: usize = n.parse().unwrap_or(0);
            let mut buf = vec![0u8; n];
            reader.read_exact(&mut buf)?;
            writer.write_all(format!("{}\n", fnv64(&buf)).as_bytes())?;
        }
        ["GET", n, seed] => {
            let n: usize = n.parse().unwrap_or(0);
            let seed: u64 = seed.parse().unwrap_or(0);
            writer.write_all(&data(n, seed))?;
        }
        _ => {}
    }
    writer.flush()?;
    writer.shutdown(std::net::Shutdown::Write)?;
    // Wait for the client to close, so our FIN is not followed by a RST.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}

fn serve_udp(socket: UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{} {name}", peer.ip()).as_bytes(), peer);
        }
    }
}

/// What a backend reported: the client address it saw, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub peer: String,
    pub backend: String,
}

fn parse_who(text: &str) -> Who {
    let mut words = text.split_whitespace();
    Who { peer: words.next().unwrap_or_default().to_string(), backend: words.next().unwrap_or_default().to_string() }
}

fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

/// Connects from `ns` to `target` (a socket created in `ns`).
pub fn tcp_connect(ns: &str, target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    in_ns(ns, || connect(target, timeout))
}

pub fn tcp_who(ns: &str, target: SocketAddr) -> std::io::Result<Who> {
    let mut stream = tcp_connect(ns, target, Duration::from_secs(3))?;
    stream.write_all(b"WHO\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(parse_who(&text))
}

/// Uploads `n` bytes and checks the backend's checksum of what it got.
pub fn tcp_put(ns: &str, target: SocketAddr, n: usize, seed: u64) -> std::io::Result<bool> {
    let payload = data(n, seed);
    let mut stream = tcp_connect(ns, target, Duration::from_secs(3))?;
    stream.write_all(format!("PUT {n}\n").as_bytes())?;
    stream.write_all(&payload)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text.trim() == fnv64(&payload).to_string())
}

/// Downloads `n` bytes and checks them against what the backend generated.
pub fn tcp_get(ns: &str, target: SocketAddr, n: usize, seed: u64) -> std::io::Result<bool> {
    let mut stream = tcp_connect(ns, target, Duration::from_secs(3))?;
    stream.write_all(format!("GET {n} {seed}\n").as_bytes())?;
    let mut got = Vec::with_capacity(n);
    stream.read_to_end(&mut got)?;
    Ok(got.len() == n && fnv64(&got) == fnv64(&data(n, seed)))
}

/// A connected UDP socket in `ns`: what sendmsg/recv errors (ICMP) reach.
pub fn udp_socket(ns: &str, target: SocketAddr) -> std::io::Result<UdpSocket> {
    in_ns(ns, || {
        let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = UdpSocket::bind(bind)?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok(socket)
    })
}

/// Asks over UDP, retrying a few times (the first datagram may wait for
/// neighbour resolution).
pub fn udp_who(ns: &str, target: SocketAddr) -> std::io::Result<Who> {
    let socket = udp_socket(ns, target)?;
    let mut last = None;
    for _ in 0..4 {
        socket.send(b"WHO")?;
        let mut buf = [0u8; 256];
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(parse_who(&String::from_utf8_lossy(&buf[..n]))),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try"))
}
