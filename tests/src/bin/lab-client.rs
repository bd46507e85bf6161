//! `lab-client`: the lab's traffic generator. The harness starts it inside the
//! client namespace (and, for socket-LB tests, the test's cgroup); it prints
//! one JSON line per request (`tcp`, `udp`, `http`, `bind`) or one summary
//! (`load`), as defined in `axon_lab::probe`. Every socket call has a timeout
//! and every loop a bound, so it always ends by itself.

use anyhow::{Context, Result};
use axon_lab::probe::{self, Attempt, Checksum, ClientEnv, HttpAnswer, LoadSummary};
use clap::{Args, Parser, Subcommand};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Traffic generator of the Axon lab")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// Where the client's packets come from.
#[derive(Args, Clone, Copy, Debug, Default)]
struct Source {
    /// Source address (one of the client's own; default: the kernel's choice).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Source port. Every attempt reuses it (SO_REUSEADDR; TCP closes with a
    /// reset so no TIME_WAIT blocks the next one): one 5-tuple throughout.
    #[arg(long)]
    source_port: Option<u16>,
    /// Attempt N uses source port `source_port + N * step` instead: many
    /// distinct, known 5-tuples in one run.
    #[arg(long, default_value_t = 0)]
    source_port_step: u16,
}

impl Source {
    /// The source of attempt `seq`.
    fn for_attempt(self, seq: u32) -> Source {
        let source_port = self.source_port.map(|p| p.wrapping_add((seq as u16).wrapping_mul(self.source_port_step)));
        Source { source_port, ..self }
    }
}

#[derive(Subcommand)]
enum Mode {
    /// N TCP connections, each reading the backend's first line.
    Tcp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Send this many bytes (while reading the echo) and check they come back intact.
        #[arg(long, default_value_t = 0)]
        send_bytes: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        source: Source,
    },
    /// N UDP requests.
    Udp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// One socket and sendto() per datagram, instead of a connected socket per request.
        #[arg(long)]
        unconnected: bool,
        /// Pad each request to this many bytes (the echo is checked).
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[command(flatten)]
        source: Source,
    },
    /// One HTTP/1.0 GET; prints the status and body.
    Http {
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Tries to bind (TCP: and listen on) an address; prints whether it worked.
    Bind {
        addr: SocketAddr,
        #[arg(long)]
        udp: bool,
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
        Mode::Tcp { addr, count, send_bytes, timeout_ms, source } => {
            for seq in 0..count {
                let a = tcp_attempt(seq, addr, source.for_attempt(seq), send_bytes, Duration::from_millis(timeout_ms));
                print_line(&mut out, &a)?;
            }
        }
        Mode::Udp { addr, count, unconnected, payload_bytes, timeout_ms, source } => {
            let req = UdpRequest { addr, source, payload_bytes, timeout: Duration::from_millis(timeout_ms) };
            if unconnected {
                udp_unconnected(&mut out, &req, count)?;
            } else {
                for seq in 0..count {
                    print_line(&mut out, &udp_connected(seq, &req))?;
                }
            }
        }
        Mode::Http { addr, path, timeout_ms } => {
            print_line(&mut out, &http_get(addr, &path, Duration::from_millis(timeout_ms)))?
        }
        Mode::Bind { addr, udp } => print_line(&mut out, &try_bind(addr, udp))?,
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

/// Deterministic, non-periodic bytes for echo checks, varied by attempt
/// (xorshift64: a shifted or repeated block never matches by accident).
fn pattern(seq: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seq).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn unspecified(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A socket for `addr`'s family, bound as `source` asks (failures are stage `bind`).
fn socket_for(addr: SocketAddr, ty: Type, source: Source) -> Result<Socket, (&'static str, std::io::Error)> {
    let sock = Socket::new(Domain::for_address(addr), ty, None).map_err(|e| ("socket", e))?;
    if source.bind.is_some() || source.source_port.is_some() {
        sock.set_reuse_address(true).map_err(|e| ("socket", e))?;
        let local = SocketAddr::new(source.bind.unwrap_or_else(|| unspecified(addr)), source.source_port.unwrap_or(0));
        sock.bind(&SockAddr::from(local)).map_err(|e| ("bind", e))?;
    }
    Ok(sock)
}

fn tcp_connect(
    addr: SocketAddr,
    source: Source,
    timeout: Duration,
) -> Result<TcpStream, (&'static str, std::io::Error)> {
    let sock = socket_for(addr, Type::STREAM, source)?;
    sock.connect_timeout(&SockAddr::from(addr), timeout).map_err(|e| ("connect", e))?;
    if source.source_port.is_some() {
        // Close with RST: the next attempt reuses this 5-tuple at once.
        sock.set_linger(Some(Duration::ZERO)).map_err(|e| ("socket", e))?;
    }
    Ok(sock.into())
}

fn tcp_attempt(seq: u32, addr: SocketAddr, source: Source, send_bytes: usize, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let a = Attempt { seq, ..Default::default() };
    let mut stream = match tcp_connect(addr, source, timeout) {
        Ok(s) => s,
        Err((stage, e)) => return failed(a, stage, &e, start),
    };
    let a = Attempt {
        peer: stream.peer_addr().ok().map(|p| p.to_string()),
        local: stream.local_addr().ok().map(|p| p.to_string()),
        ..a
    };
    if let Err(e) = stream.set_read_timeout(Some(timeout)).and_then(|()| stream.set_write_timeout(Some(timeout))) {
        return failed(a, "socket", &e, start);
    }
    if send_bytes == 0 {
        return match read_first_line(&mut stream) {
            Ok(data) => finish(a, &data, start),
            Err(e) => failed(a, "recv", &e, start),
        };
    }
    echo(a, stream, seq, send_bytes, start)
}

/// The first line of the answer (the name line).
fn read_first_line(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        data.extend_from_slice(&buf[..n]);
        if n == 0 || data.contains(&b'\n') {
            return Ok(data);
        }
    }
}

/// Sends `len` bytes from a second thread while reading the echo here (a
/// multi-MB echo would otherwise fill both directions' buffers and stall),
/// then compares content checksums of what went out and what came back.
fn echo(a: Attempt, stream: TcpStream, seq: u32, len: usize, start: Instant) -> Attempt {
    let payload = pattern(seq, len);
    let sent_sum = probe::checksum(&payload);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(a, "socket", &e, start),
    };
    let sender = std::thread::spawn(move || writer.write_all(&payload).and_then(|()| writer.shutdown(Shutdown::Write)));
    let received = read_echo(stream);
    let sent = sender.join().unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
    let mut a = Attempt { sent_bytes: Some(len as u64), sent_sum: Some(sent_sum.clone()), ..a };
    let (first_line, recv_bytes, recv_sum) = match received {
        Ok(r) => r,
        Err(e) => return failed(a, "recv", &e, start),
    };
    if let Err(e) = sent {
        return failed(a, "send", &e, start);
    }
    a.recv_bytes = Some(recv_bytes);
    a.recv_sum = Some(recv_sum.clone());
    let mut a = finish(a, &first_line, start);
    let intact = recv_bytes == len as u64 && recv_sum == sent_sum;
    a.echo_ok = Some(intact);
    a.ok &= intact;
    a
}

/// Reads to EOF: the first line kept, the rest only counted and checksummed.
fn read_echo(mut stream: TcpStream) -> std::io::Result<(Vec<u8>, u64, String)> {
    let mut first_line = Vec::new();
    let mut in_first_line = true;
    let (mut count, mut sum) = (0u64, Checksum::default());
    let mut buf = vec![0u8; 65536];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok((first_line, count, sum.hex()));
        }
        let mut chunk = &buf[..n];
        if in_first_line {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    first_line.extend_from_slice(&chunk[..=nl]);
                    chunk = &chunk[nl + 1..];
                    in_first_line = false;
                }
                None => {
                    first_line.extend_from_slice(chunk);
                    continue;
                }
            }
        }
        count += chunk.len() as u64;
        sum.update(chunk);
    }
}

/// Fills in the backend's name (and the peer it saw) from an answer's first line.
fn finish(mut a: Attempt, data: &[u8], start: Instant) -> Attempt {
    a.micros = start.elapsed().as_micros() as u64;
    match probe::split_reply(data) {
        Some((line, _)) => {
            let (name, seen_from) = probe::split_name_line(&line);
            a.ok = true;
            a.answer = Some(name);
            a.seen_from = seen_from;
        }
        None => {
            a.stage = Some("reply".into());
            a.error = Some(format!("malformed answer {:?}", String::from_utf8_lossy(data)));
        }
    }
    a
}

/// One UDP request's parameters.
struct UdpRequest {
    addr: SocketAddr,
    source: Source,
    payload_bytes: usize,
    timeout: Duration,
}

impl UdpRequest {
    fn socket(&self, seq: u32) -> Result<UdpSocket, (&'static str, std::io::Error)> {
        let mut source = self.source.for_attempt(seq);
        if source.bind.is_none() && source.source_port.is_none() {
            // Unbound sockets still need a local port to receive on.
            source.bind = Some(unspecified(self.addr));
        }
        let sock: UdpSocket = socket_for(self.addr, Type::DGRAM, source)?.into();
        sock.set_read_timeout(Some(self.timeout)).map_err(|e| ("socket", e))?;
        Ok(sock)
    }

    /// `<tag>-<seq>-<pid>-` padded with pattern bytes to the requested size.
    fn payload(&self, tag: &str, seq: u32) -> Vec<u8> {
        let mut p = format!("{tag}-{seq}-{}-", std::process::id()).into_bytes();
        if p.len() < self.payload_bytes {
            let fill = pattern(seq, self.payload_bytes - p.len());
            p.extend_from_slice(&fill);
        }
        p
    }
}

/// A fresh socket connected to the address: a socket-LB picks the backend at connect().
fn udp_connected(seq: u32, req: &UdpRequest) -> Attempt {
    let start = Instant::now();
    let a = Attempt { seq, ..Default::default() };
    let sock = match req.socket(seq) {
        Ok(s) => s,
        Err((stage, e)) => return failed(a, stage, &e, start),
    };
    if let Err(e) = sock.connect(req.addr) {
        return failed(a, "connect", &e, start);
    }
    let a = Attempt {
        peer: sock.peer_addr().ok().map(|p| p.to_string()),
        local: sock.local_addr().ok().map(|p| p.to_string()),
        ..a
    };
    let payload = req.payload("req", seq);
    if let Err(e) = sock.send(&payload) {
        return failed(a, "send", &e, start);
    }
    recv_reply(a, &sock, &payload, req.timeout, start)
}

/// Waits for the reply to `payload`, skipping stale replies to earlier requests.
fn recv_reply(mut a: Attempt, sock: &UdpSocket, payload: &[u8], timeout: Duration, start: Instant) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if probe::split_reply(&buf[..n]).is_some_and(|(_, rest)| rest == payload) {
                    a.from = Some(from.to_string());
                    return finish(a, &buf[..n], start);
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

/// One socket, sendto() per datagram: a socket-LB picks the backend per datagram.
fn udp_unconnected(out: &mut impl Write, req: &UdpRequest, count: u32) -> Result<()> {
    let sock = req.socket(0).map_err(|(stage, e)| anyhow::anyhow!("{stage}: {e}"))?;
    let local = sock.local_addr().ok().map(|p| p.to_string());
    for seq in 0..count {
        let start = Instant::now();
        let a = Attempt { seq, local: local.clone(), ..Default::default() };
        let payload = req.payload("dgram", seq);
        let a = match sock.send_to(&payload, req.addr) {
            Ok(_) => recv_reply(a, &sock, &payload, req.timeout, start),
            Err(e) => failed(a, "send", &e, start),
        };
        print_line(out, &a)?;
    }
    Ok(())
}

/// A plain HTTP/1.0 GET (what kube-proxy's health check clients do).
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> HttpAnswer {
    let start = Instant::now();
    let fail = |e: std::io::Error| HttpAnswer {
        error: Some(e.to_string()),
        errno: e.raw_os_error(),
        micros: start.elapsed().as_micros() as u64,
        ..Default::default()
    };
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let io = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| stream.read_to_end(&mut raw));
    if let Err(e) = io {
        return fail(e);
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    HttpAnswer {
        ok: status.is_some(),
        status,
        body: body.to_string(),
        error: status.is_none().then(|| format!("not an HTTP answer: {text:?}")),
        errno: None,
        micros: start.elapsed().as_micros() as u64,
    }
}

/// Binds (and for TCP listens on) `addr`, reporting the errno if refused.
fn try_bind(addr: SocketAddr, udp: bool) -> Attempt {
    let start = Instant::now();
    let a = Attempt { local: Some(addr.to_string()), ..Default::default() };
    let ty = if udp { Type::DGRAM } else { Type::STREAM };
    let sock = match Socket::new(Domain::for_address(addr), ty, None) {
        Ok(s) => s,
        Err(e) => return failed(a, "socket", &e, start),
    };
    if let Err(e) = sock.bind(&SockAddr::from(addr)) {
        return failed(a, "bind", &e, start);
    }
    if !udp {
        if let Err(e) = sock.listen(8) {
            return failed(a, "listen", &e, start);
        }
    }
    Attempt { ok: true, micros: start.elapsed().as_micros() as u64, ..a }
}

/// Opens a new connection every `interval` until `duration` is over.
fn load(addr: SocketAddr, duration: Duration, interval: Duration, timeout: Duration) -> LoadSummary {
    let start = Instant::now();
    let mut s = LoadSummary::default();
    let mut seq = 0u32;
    while start.elapsed() < duration {
        let tick = Instant::now();
        let a = tcp_attempt(seq, addr, Source::default(), 0, timeout);
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
