//! The client side, run as a helper process inside the client netns (and,
//! for Axon, inside the socket-LB cgroup): timed sequential connect()s, and
//! a reachability probe for a service being added.
//!
//! Only connect() is timed. After it, the client reads the one line the
//! backend writes (its own address) to check that the connection really
//! reached a backend of that service, then closes with RST (SO_LINGER 0) so
//! thousands of connections leave no TIME_WAIT behind to slow port search.

use crate::stats::{Latency, Summary};
use crate::sys;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where to connect and which backends may answer.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub expect: Vec<SocketAddrV4>,
}

impl FromStr for Target {
    type Err = String;
    /// `VIP:PORT=BACKEND:PORT,BACKEND:PORT`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, expect) =
            s.split_once('=').ok_or_else(|| format!("target {s:?}: expected ADDR=BACKEND[,BACKEND...]"))?;
        let addr = addr.parse().map_err(|e| format!("target address {addr:?}: {e}"))?;
        let expect = expect
            .split(',')
            .map(|b| b.parse().map_err(|e| format!("backend {b:?}: {e}")))
            .collect::<Result<Vec<SocketAddrV4>, String>>()?;
        Ok(Target { addr, expect })
    }
}

/// What the latency client reports for one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    pub latency: Summary,
    /// Connections per backend that answered (shows the spread).
    pub backends: BTreeMap<String, u64>,
    /// Failed connects or answers from a backend not of this service.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl TargetReport {
    /// How many distinct backends answered.
    pub fn backends_seen(&self) -> usize {
        self.backends.len()
    }
}

/// What the reachability probe reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReachReport {
    /// CLOCK_MONOTONIC (ns) when a connect first reached a backend.
    pub reached_ns: Option<u64>,
    pub attempts: u64,
    pub last_error: Option<String>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Puts this helper where its connections must come from.
pub fn enter(netns: &Path, cgroup: Option<&Path>) -> anyhow::Result<()> {
    sys::die_with_parent();
    if let Some(cg) = cgroup {
        sys::join_cgroup(cg).with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    sys::enter_netns(netns).with_context(|| format!("entering netns {}", netns.display()))?;
    Ok(())
}

/// One side of a paired measurement: where its connections come from.
pub struct Side {
    netns: OwnedFd,
    cgroup: Option<PathBuf>,
}

impl Side {
    pub fn open(netns: &Path, cgroup: Option<&Path>) -> anyhow::Result<Side> {
        let fd = sys::open_netns(netns).with_context(|| format!("opening netns {}", netns.display()))?;
        Ok(Side { netns: fd, cgroup: cgroup.map(Path::to_path_buf) })
    }

    /// Makes this helper's next sockets belong to this side: a socket takes
    /// the netns and cgroup of its creator at socket() time.
    fn enter(&self) -> anyhow::Result<()> {
        if let Some(cg) = &self.cgroup {
            sys::join_cgroup(cg).with_context(|| format!("joining cgroup {}", cg.display()))?;
        }
        sys::setns_net(&self.netns).context("entering netns")?;
        Ok(())
    }
}

/// A peer's report for one target and, when asked for, the baseline's
/// (direct connects from a pristine netns) measured in the same time slices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paired {
    pub peer: TargetReport,
    pub baseline: Option<TargetReport>,
}

/// What one side of a measurement collects.
struct Sampler {
    lat: Latency,
    backends: BTreeMap<String, u64>,
    attempts: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Sampler {
    fn new(samples: usize) -> Self {
        Sampler {
            lat: Latency::with_capacity(samples),
            backends: BTreeMap::new(),
            attempts: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// `n` connections, recorded or not (warm-up).
    fn run(&mut self, t: &Target, n: usize, record: bool) {
        for _ in 0..n {
            self.attempts += 1;
            match attempt(t) {
                Ok((ns, backend)) if record => {
                    self.lat.push_ns(ns);
                    *self.backends.entry(backend.to_string()).or_insert(0) += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    self.errors += 1;
                    self.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    /// A broken peer must not turn 2000 samples into 2000 timeouts.
    fn hopeless(&self) -> bool {
        self.errors >= 20 && self.errors * 2 > self.attempts
    }

    fn report(self, t: &Target) -> TargetReport {
        TargetReport {
            target: t.addr.to_string(),
            latency: self.lat.summary(),
            backends: self.backends,
            errors: self.errors,
            first_error: self.first_error,
        }
    }
}

/// How a latency run is shaped.
pub struct Plan {
    pub samples: usize,
    pub warmup: usize,
    /// Connections per slice; peer and baseline slices alternate (ABBA), so
    /// background load and drift hit both alike.
    pub block: usize,
    /// Per target: past it the run stops early, with fewer samples, so a
    /// slow peer cannot stretch the bench without bound.
    pub budget: Duration,
}

/// Times connects to each target (and its baseline, interleaved).
pub fn latency(
    peer: &Side,
    baseline: Option<&Side>,
    targets: &[(Target, Option<Target>)],
    plan: &Plan,
) -> anyhow::Result<Vec<Paired>> {
    let mut out = Vec::with_capacity(targets.len());
    for (target, base_target) in targets {
        let base = match (baseline, base_target) {
            (Some(side), Some(t)) => Some((side, t)),
            _ => None,
        };
        out.push(latency_one(peer, target, base, plan)?);
    }
    Ok(out)
}

fn latency_one(peer: &Side, target: &Target, base: Option<(&Side, &Target)>, plan: &Plan) -> anyhow::Result<Paired> {
    let deadline = sys::mono_ns() + plan.budget.as_nanos() as u64;
    let mut ps = Sampler::new(plan.samples);
    let mut bs = Sampler::new(plan.samples);
    if let Some((side, t)) = base {
        side.enter()?;
        bs.run(t, plan.warmup, false);
    }
    peer.enter()?;
    ps.run(target, plan.warmup, false);
    let block = plan.block.max(1);
    let mut done = 0;
    let mut slice = 0;
    while done < plan.samples && sys::mono_ns() < deadline && !ps.hopeless() {
        let n = block.min(plan.samples - done);
        // ABBA: peer, baseline, baseline, peer, ...
        let order = if slice % 4 == 0 || slice % 4 == 3 { [true, false] } else { [false, true] };
        for is_peer in order {
            match base {
                None if is_peer => ps.run(target, n, true),
                None => {}
                Some(_) if is_peer => {
                    peer.enter()?;
                    ps.run(target, n, true);
                }
                Some((side, t)) => {
                    side.enter()?;
                    bs.run(t, n, true);
                }
            }
        }
        done += n;
        slice += 1;
    }
    Ok(Paired { peer: ps.report(target), baseline: base.map(|(_, t)| bs.report(t)) })
}

/// One connection: the connect() time and the backend that answered.
fn attempt(t: &Target) -> anyhow::Result<(u64, SocketAddrV4)> {
    let (ns, stream) = timed_connect(t.addr)?;
    let backend = read_answer(stream)?;
    if !t.expect.contains(&backend) {
        bail!("{} answered by {backend}, not one of its backends", t.addr);
    }
    Ok((ns, backend))
}

/// socket(), then connect() between two clock reads.
fn timed_connect(addr: SocketAddrV4) -> io::Result<(u64, TcpStream)> {
    let fd = tcp_socket()?;
    let sa = sockaddr(addr);
    let start = sys::mono_ns();
    // SAFETY: connect(2) with a valid sockaddr_in of the right length.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    let elapsed = sys::mono_ns() - start;
    if rc != 0 {
        let e = io::Error::last_os_error();
        // With SO_SNDTIMEO set, a connect that timed out reports EINPROGRESS.
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")));
        }
        return Err(io::Error::new(e.kind(), format!("connect to {addr}: {e}")));
    }
    Ok((elapsed, TcpStream::from(fd)))
}

fn tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2); the fd is wrapped at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // connect() honours SO_SNDTIMEO: a lost SYN costs 2 s, not minutes.
    let tv = libc::timeval { tv_sec: IO_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    setsockopt(&fd, libc::SO_SNDTIMEO, &tv)?;
    Ok(fd)
}

fn setsockopt<T>(fd: &OwnedFd, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: setsockopt(2) reading size_of::<T>() bytes from a live reference.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            val as *const T as *const libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Reads the backend's `IP:PORT\n`, then resets the connection.
fn read_answer(mut stream: TcpStream) -> anyhow::Result<SocketAddrV4> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..]).context("reading the backend's answer")?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let fd = OwnedFd::from(stream);
    // Best effort: without it the close leaves a TIME_WAIT, nothing worse.
    let _ = setsockopt(&fd, libc::SO_LINGER, &linger);
    drop(fd);
    let text = std::str::from_utf8(&buf[..len]).unwrap_or("").trim();
    text.parse().with_context(|| format!("backend answered {text:?}, not IP:PORT"))
}

/// Connects to `t` until a backend of it answers, pausing `pause` between
/// attempts, for at most `timeout`.
pub fn reach(t: &Target, pause: Duration, timeout: Duration) -> ReachReport {
    let deadline = sys::mono_ns() + timeout.as_nanos() as u64;
    let mut attempts = 0;
    let mut last_error = None;
    while sys::mono_ns() < deadline {
        attempts += 1;
        match attempt(t) {
            Ok(_) => {
                // Stamped after the answer was read: one round trip past the
                // handshake, well under a millisecond.
                return ReachReport { reached_ns: Some(sys::mono_ns()), attempts, last_error };
            }
            Err(e) => last_error = Some(e.to_string()),
        }
        std::thread::sleep(pause);
    }
    ReachReport { reached_ns: None, attempts, last_error }
}
