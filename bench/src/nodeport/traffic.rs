//! The traffic: backend servers (a TCP request/response server and a UDP
//! sink that counts what arrives) and the client side (TCP request/response
//! over kept-alive connections or one connection per request, and a UDP
//! flood of ready-made Ethernet frames sent as XDP frames — see
//! [`super::xdp::FrameSender`] — as a packet generator on a wire would). Sockets are created on a
//! thread inside the right namespace (they stay in it); load threads are
//! pinned to a CPU so the client side and the backend side do not share one.

use super::sys;
use super::xdp::{FrameSender, BALANCE, FRAME_LEN, SPORT_LO};
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of one request and of one response.
pub const MSG_LEN: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The servers of one backend namespace; shut down on drop.
pub struct BackendServers {
    listener: Arc<TcpListener>,
    sink: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl BackendServers {
    /// A TCP server on `tcp_port` (`workers` connections served at once,
    /// on `cpu`) and a UDP sink on `udp_port` (on `sink_cpu`), in netns `ns`.
    pub fn start(
        ns: &str,
        tcp_port: u16,
        udp_port: u16,
        workers: usize,
        cpu: Option<usize>,
        sink_cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let (listener, sink) = sys::in_netns(ns, || {
            let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, tcp_port))?;
            let sink = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, udp_port))?;
            set_int_opt(&sink, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
            Ok((listener, sink))
        })?;
        let mut s = BackendServers {
            listener: Arc::new(listener),
            sink: Arc::new(sink),
            stop: Arc::new(AtomicBool::new(false)),
            received: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        for _ in 0..workers {
            let (l, stop) = (s.listener.clone(), s.stop.clone());
            s.threads.push(std::thread::spawn(move || {
                sys::pin_to_cpu(cpu);
                serve_tcp(&l, &stop)
            }));
        }
        let (sink, stop, received) = (s.sink.clone(), s.stop.clone(), s.received.clone());
        s.threads.push(std::thread::spawn(move || {
            sys::pin_to_cpu(sink_cpu);
            count_udp(&sink, &stop, &received)
        }));
        Ok(s)
    }

    /// UDP datagrams the sink has received so far.
    pub fn udp_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for BackendServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown(2) wakes a thread blocked in accept/recv on the socket.
        // SAFETY: both fds stay open (the Arcs are alive) during the calls.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
            libc::shutdown(self.sink.as_raw_fd(), libc::SHUT_RDWR);
        }
        // Workers still serving a connection finish when the client closes
        // it; nothing waits for them here.
        self.threads.clear();
    }
}

fn set_int_opt(sock: &impl AsRawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt(2) reads one int we pass by pointer with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool) {
    let response = [b'r'; MSG_LEN];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else { continue };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut req = [0u8; MSG_LEN];
        while conn.read_exact(&mut req).is_ok() {
            if conn.write_all(&response).is_err() {
                break;
            }
        }
    }
}

fn count_udp(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 128]; BATCH];
    // SAFETY (whole loop): iovecs and headers point into `bufs`, which
    // outlives every recvmmsg call; the kernel writes within their lengths.
    let mut iov: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; zero is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
        } else if n == 0 {
            break;
        }
    }
}

/// When load starts, when the timed part begins and ends.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub begin: Instant,
    pub end: Instant,
}

impl Window {
    /// Starts `settle` from now, measures after `warmup` for `duration`.
    pub fn new(settle: Duration, warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + settle;
        Window { start, begin: start + warmup, end: start + warmup + duration }
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.begin).as_secs_f64()
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// What a request/response run measured inside its window.
#[derive(Debug, Default)]
pub struct RrOutcome {
    pub ops: u64,
    pub errors: u64,
    /// Per operation, in nanoseconds.
    pub latencies_ns: Vec<u32>,
}

/// TCP request/response from netns `ns` to `target` over `conns` parallel
/// connections: kept alive (`new_conn` false) or one per request (connect,
/// request, response, close — the time of all of it is the latency).
pub fn tcp_rr(
    ns: &str,
    target: SocketAddrV4,
    conns: usize,
    new_conn: bool,
    win: Window,
    cpu: Option<usize>,
) -> anyhow::Result<RrOutcome> {
    let results: Vec<anyhow::Result<RrOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                s.spawn(move || {
                    sys::enter_netns(ns).with_context(|| format!("entering {ns}"))?;
                    sys::pin_to_cpu(cpu);
                    if new_conn {
                        Ok(crr_loop(target, win))
                    } else {
                        rr_loop(target, win)
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("a client thread panicked"))).collect()
    });
    let mut total = RrOutcome::default();
    for r in results {
        let r = r?;
        total.ops += r.ops;
        total.errors += r.errors;
        total.latencies_ns.extend(r.latencies_ns);
    }
    Ok(total)
}

fn connect(target: SocketAddrV4) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&target.into(), CONNECT_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

fn exchange(c: &mut TcpStream, req: &[u8; MSG_LEN], resp: &mut [u8; MSG_LEN]) -> std::io::Result<()> {
    c.write_all(req)?;
    c.read_exact(resp)
}

fn record(out: &mut RrOutcome, win: &Window, t0: Instant, ok: bool) {
    if t0 < win.begin || t0 >= win.end {
        return;
    }
    if ok {
        out.ops += 1;
        out.latencies_ns.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
    } else {
        out.errors += 1;
    }
}

fn rr_loop(target: SocketAddrV4, win: Window) -> anyhow::Result<RrOutcome> {
    let mut out = RrOutcome { latencies_ns: Vec::with_capacity(1 << 18), ..Default::default() };
    let (req, mut resp) = ([b'q'; MSG_LEN], [0u8; MSG_LEN]);
    let mut conn = connect(target).with_context(|| format!("connecting to {target}"))?;
    sleep_until(win.start);
    loop {
        let t0 = Instant::now();
        if t0 >= win.end {
            break;
        }
        let ok = exchange(&mut conn, &req, &mut resp).is_ok();
        record(&mut out, &win, t0, ok);
        if !ok {
            match connect(target) {
                Ok(c) => conn = c,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    Ok(out)
}

fn crr_loop(target: SocketAddrV4, win: Window) -> RrOutcome {
    let mut out = RrOutcome { latencies_ns: Vec::with_capacity(1 << 16), ..Default::default() };
    let (req, mut resp) = ([b'q'; MSG_LEN], [0u8; MSG_LEN]);
    sleep_until(win.start);
    loop {
        let t0 = Instant::now();
        if t0 >= win.end {
            break;
        }
        // Closed by us first: TIME_WAIT stays on the client, where the
        // namespace reuses it (tcp_tw_reuse), never on a NATed tuple.
        let ok = connect(target).and_then(|mut c| exchange(&mut c, &req, &mut resp)).is_ok();
        record(&mut out, &win, t0, ok);
    }
    out
}

/// Counters a flood reads, each a closure so the caller decides where from.
pub struct FloodCounters<'a> {
    /// Packets the backend's device received.
    pub backend_rx: &'a (dyn Fn() -> u64 + Sync),
    /// Datagrams the backend's sink socket handed to the application.
    pub app_rx: &'a (dyn Fn() -> u64 + Sync),
}

/// What a UDP flood measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct FloodOutcome {
    /// Packets the backend's device received inside the window.
    pub backend_window: u64,
    /// The same over the whole flood (warm-up, window, and the tail).
    pub backend_total: u64,
    /// Of those, what the sink application read.
    pub app_total: u64,
}

impl FloodOutcome {
    /// The share of what reached the backend's device that reached its socket.
    pub fn socket_share(&self) -> f64 {
        if self.backend_total == 0 {
            0.0
        } else {
            (self.app_total as f64 / self.backend_total as f64).min(1.0)
        }
    }
}

/// The frames of a flood: `flows` source ports, complete checksums.
pub struct Frames {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub flows: u16,
}

const PAYLOAD: usize = FRAME_LEN - (14 + 20 + 8);
/// Source ports are 39936 + (0..flows): the generator draws the low byte.
const FLOW_BASE_PORT: u16 = 0x9c00;

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn csum_add(sum: u32, bytes: &[u8]) -> u32 {
    bytes.chunks(2).fold(sum, |s, c| s + u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
}

impl Frames {
    /// The frame of the first flow; the generator program derives the others.
    pub fn build(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 8 + PAYLOAD) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.ip().octets());
        let c = csum_fold(csum_add(0, ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp_len = (8 + PAYLOAD) as u16;
        {
            let udp = &mut f[34..42];
            udp[0..2].copy_from_slice(&FLOW_BASE_PORT.to_be_bytes());
            udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
            udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        }
        f[42..].copy_from_slice(&[b'p'; PAYLOAD]);
        // The generator keeps (sport low byte) + (this byte) at 0xff.
        f[BALANCE] = 0xff - f[SPORT_LO];
        let mut sum = csum_add(0, &self.src.octets());
        sum = csum_add(sum, &self.dst.ip().octets());
        sum += 17 + u32::from(udp_len);
        sum = csum_add(sum, &f[34..]);
        let c = match csum_fold(sum) {
            0 => 0xffff,
            c => c,
        };
        f[40..42].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// How long the sink may take to catch up after a flood.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Frames per live-frame test run. Each run has a fixed set-up cost (tens
/// of ms, mostly waiting), so runs are long and two generator threads take
/// turns: one is always sending.
const FRAMES_PER_RUN: u32 = 1 << 16;
const GENERATORS: usize = 2;

/// Floods `frames` out of `dev` in netns `ns` from the window's start to its
/// end, from generator threads on `cpu`. After each batch of 64 frames the
/// receiving veth's NAPI runs in softirq on that same CPU and carries the
/// frames through node-1 (and node-2) to the backend's socket: the whole path
/// is paid for by the generator's CPU, and what arrives at the backend per
/// second is the rate of that path on one CPU. The sink reads on another.
pub fn udp_flood(
    ns: &str,
    dev: &str,
    frames: &Frames,
    win: Window,
    cpu: Option<usize>,
    counters: &FloodCounters,
) -> anyhow::Result<FloodOutcome> {
    let stop = AtomicBool::new(false);
    let frame = frames.build();
    let (b_start, a_start) = ((counters.backend_rx)(), (counters.app_rx)());
    let backend_window = std::thread::scope(|s| {
        let generators: Vec<_> = (0..GENERATORS)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    sys::enter_netns(ns).with_context(|| format!("entering {ns}"))?;
                    sys::pin_to_cpu(cpu);
                    let sender = FrameSender::new(dev, &frame, frames.flows)?;
                    sleep_until(win.start);
                    while !stop.load(Ordering::Relaxed) {
                        sender.send(&frame, FRAMES_PER_RUN).context("sending frames (live-frame test run)")?;
                    }
                    Ok(())
                })
            })
            .collect();
        sleep_until(win.begin);
        let b0 = (counters.backend_rx)();
        sleep_until(win.end);
        let b1 = (counters.backend_rx)();
        stop.store(true, Ordering::SeqCst);
        for g in generators {
            g.join().unwrap_or_else(|_| bail!("a generator thread panicked"))?;
        }
        anyhow::Ok(b1 - b0)
    })?;
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut last = (counters.app_rx)();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = (counters.app_rx)();
        if now == last {
            break;
        }
        last = now;
    }
    Ok(FloodOutcome { backend_window, backend_total: (counters.backend_rx)() - b_start, app_total: last - a_start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let frames = Frames {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(10, 77, 0, 2),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 11), 30091),
            flows: 4,
        };
        let udp_ok = |f: &[u8]| {
            let mut sum = csum_add(0, &f[26..34]);
            sum += 17 + (8 + PAYLOAD) as u32;
            csum_fold(csum_add(sum, &f[34..])) == 0
        };
        let mut f = frames.build();
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0, "IP header checksum");
        assert!(udp_ok(&f), "UDP checksum");
        // What the generator program does to a frame: the checksum holds.
        for k in 1..=3u8 {
            f[SPORT_LO] = k;
            f[BALANCE] = 0xff - k;
            assert!(udp_ok(&f), "UDP checksum after stepping the port to {k}");
        }
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), FLOW_BASE_PORT + 3);
    }
}
