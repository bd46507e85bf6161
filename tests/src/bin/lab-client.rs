//! `lab-client`: the lab's traffic generator. The harness starts it inside the
//! client namespace and the test's cgroup (where the socket-LB hooks fire); it
//! prints one JSON line per request (`tcp`, `udp`) or one summary (`load`),
//! as defined in `axon_lab::probe`. Every socket call has a timeout and every
//! loop a bound, so it always ends by itself.

use anyhow::{Context, Result};
use axon_lab::probe::{self, Attempt, ClientEnv, LoadSummary};
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Traffic generator of the Axon lab")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N TCP connections, each reading the backend's name.
    Tcp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Send this many bytes and check they come back intact.
        #[arg(long, default_value_t = 0)]
        send_bytes: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// N UDP requests.
    Udp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// One socket and sendto() per datagram, instead of a connected socket per request.
        #[arg(long)]
        unconnected: bool,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Where this process runs: its cgroup and network namespace.
    Env,
    /// A new TCP connection every interval for a duration; prints a summary.
    Load {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match cli.mode {
        Mode::Tcp { addr, count, send_bytes, timeout_ms } => {
            for seq in 0..count {
                let a = tcp_attempt(seq, addr, send_bytes, Duration::from_millis(timeout_ms));
                print_line(&mut out, &a)?;
            }
        }
        Mode::Udp { addr, count, unconnected, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms);
            if unconnected {
                udp_unconnected(&mut out, addr, count, timeout)?;
            } else {
                for seq in 0..count {
                    print_line(&mut out, &udp_connected(seq, addr, timeout))?;
                }
            }
        }
        Mode::Env => print_line(&mut out, &client_env()?)?,
        Mode::Load { addr, duration_ms, interval_ms, timeout_ms } => {
            let summary = load(
                addr,
                Duration::from_millis(duration_ms),
                Duration::from_millis(interval_ms),
                Duration::from_millis(timeout_ms),
            );
            print_line(&mut out, &summary)?;
        }
    }
    Ok(())
}

fn print_line<T: serde::Serialize>(out: &mut impl Write, value: &T) -> Result<()> {
    let line = serde_json::to_string(value).context("encoding a result")?;
    writeln!(out, "{line}").context("writing stdout")?;
    out.flush().context("flushing stdout")
}

fn failed(mut a: Attempt, stage: &str, e: &std::io::Error, start: Instant) -> Attempt {
    a.ok = false;
    a.stage = Some(stage.to_string());
    a.error = Some(e.to_string());
    a.errno = e.raw_os_error();
    a.micros = start.elapsed().as_micros() as u64;
    a
}

/// Deterministic bytes for echo checks, varied by attempt.
fn pattern(seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8).collect()
}

fn tcp_attempt(seq: u32, addr: SocketAddr, send_bytes: usize, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let a = Attempt { seq, ..Default::default() };
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return failed(a, "connect", &e, start),
    };
    let a = Attempt { peer: stream.peer_addr().ok().map(|p| p.to_string()), ..a };
    if let Err(e) = stream.set_read_timeout(Some(timeout)).and_then(|()| stream.set_write_timeout(Some(timeout))) {
        return failed(a, "socket", &e, start);
    }
    let payload = pattern(seq, send_bytes);
    if send_bytes > 0 {
        if let Err(e) = stream.write_all(&payload).and_then(|()| stream.shutdown(Shutdown::Write)) {
            return failed(a, "send", &e, start);
        }
    }
    let data = match read_answer(&mut stream, send_bytes > 0) {
        Ok(d) => d,
        Err(e) => return failed(a, "recv", &e, start),
    };
    finish(a, &data, (send_bytes > 0).then_some(&payload[..]), start)
}

/// The name line alone, or (echo) everything up to the server's EOF.
fn read_answer(stream: &mut TcpStream, to_eof: bool) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&buf[..n]);
        if !to_eof && data.contains(&b'\n') {
            return Ok(data);
        }
    }
}

/// Fills in the answer from a reply, checking the echo when one was expected.
fn finish(mut a: Attempt, data: &[u8], sent: Option<&[u8]>, start: Instant) -> Attempt {
    a.micros = start.elapsed().as_micros() as u64;
    match probe::split_reply(data) {
        Some((name, rest)) => {
            a.ok = true;
            a.answer = Some(name);
            if let Some(sent) = sent {
                a.echo_ok = Some(rest == sent);
                a.ok = rest == sent;
            }
        }
        None => {
            a.stage = Some("reply".into());
            a.error = Some(format!("malformed answer {:?}", String::from_utf8_lossy(data)));
        }
    }
    a
}

fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A fresh socket connected to the VIP: the backend is picked at connect().
fn udp_connected(seq: u32, addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let a = Attempt { seq, ..Default::default() };
    let sock = match UdpSocket::bind(unspecified(addr)).and_then(|s| s.set_read_timeout(Some(timeout)).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return failed(a, "socket", &e, start),
    };
    if let Err(e) = sock.connect(addr) {
        return failed(a, "connect", &e, start);
    }
    let a = Attempt { peer: sock.peer_addr().ok().map(|p| p.to_string()), ..a };
    let payload = format!("req-{seq}-{}", std::process::id()).into_bytes();
    if let Err(e) = sock.send(&payload) {
        return failed(a, "send", &e, start);
    }
    recv_reply(a, &sock, &payload, timeout, start)
}

/// Waits for the reply to `payload`, skipping stale replies to earlier requests.
fn recv_reply(mut a: Attempt, sock: &UdpSocket, payload: &[u8], timeout: Duration, start: Instant) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if probe::split_reply(&buf[..n]).is_some_and(|(_, rest)| rest == payload) {
                    a.from = Some(from.to_string());
                    return finish(a, &buf[..n], None, start);
                }
            }
            Err(e) => return failed(a, "recv", &e, start),
        }
    }
    a.ok = false;
    a.stage = Some("recv".into());
    a.error = Some("no reply before the timeout".into());
    a.micros = start.elapsed().as_micros() as u64;
    a
}

/// One socket, sendto() the VIP per datagram: the backend is picked per datagram.
fn udp_unconnected(out: &mut impl Write, addr: SocketAddr, count: u32, timeout: Duration) -> Result<()> {
    let sock = UdpSocket::bind(unspecified(addr)).context("binding the UDP socket")?;
    sock.set_read_timeout(Some(timeout)).context("setting the read timeout")?;
    for seq in 0..count {
        let start = Instant::now();
        let a = Attempt { seq, ..Default::default() };
        let payload = format!("dgram-{seq}-{}", std::process::id()).into_bytes();
        let a = match sock.send_to(&payload, addr) {
            Ok(_) => recv_reply(a, &sock, &payload, timeout, start),
            Err(e) => failed(a, "send", &e, start),
        };
        print_line(out, &a)?;
    }
    Ok(())
}

/// Opens a new connection every `interval` until `duration` is over.
fn load(addr: SocketAddr, duration: Duration, interval: Duration, timeout: Duration) -> LoadSummary {
    let start = Instant::now();
    let mut s = LoadSummary::default();
    let mut seq = 0u32;
    while start.elapsed() < duration {
        let tick = Instant::now();
        let a = tcp_attempt(seq, addr, 0, timeout);
        s.max_micros = s.max_micros.max(a.micros);
        match (a.ok, a.answer) {
            (true, Some(name)) => {
                s.ok += 1;
                *s.answers.entry(name).or_default() += 1;
            }
            _ => {
                s.failed += 1;
                if s.errors.len() < 20 {
                    let at = start.elapsed().as_millis();
                    s.errors.push(format!(
                        "{seq} @{at}ms: {}: {}",
                        a.stage.unwrap_or_default(),
                        a.error.unwrap_or_default()
                    ));
                }
            }
        }
        seq += 1;
        if let Some(rest) = interval.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    s.elapsed_ms = start.elapsed().as_millis() as u64;
    s
}

fn client_env() -> Result<ClientEnv> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let cgroup = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default().to_string();
    let netns_inode = std::fs::metadata("/proc/self/ns/net").context("stat /proc/self/ns/net")?.ino();
    Ok(ClientEnv { cgroup, netns_inode })
}
