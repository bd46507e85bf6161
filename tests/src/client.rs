//! Running `lab-client` inside the lab: a real process in a lab namespace —
//! for socket-LB tests the client namespace *and* the test's cgroup, which is
//! where the socket-LB hooks fire ([`Place`]). Its JSON lines (see
//! [`crate::probe`]) are parsed back here; [`Probe`] builds its command line.

use crate::bins;
use crate::cgroup::Cgroup;
use crate::error::{IoContext, LabError, Result};
use crate::netns::Netns;
use crate::probe::{Attempt, ClientEnv, HttpAnswer, LoadSummary};
use crate::topology::Lab;
use std::ffi::CString;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a UDP client addresses the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// A new socket per request, `connect()`ed to the VIP (backend chosen at connect).
    Connected,
    /// One socket, `sendto()` per datagram (backend chosen per datagram).
    Unconnected,
}

/// A finished client run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// Every `Attempt` line of stdout.
    pub fn attempts(&self) -> Result<Vec<Attempt>> {
        self.json_lines()
    }

    /// The `LoadSummary` line of a `load` run.
    pub fn summary(&self) -> Result<LoadSummary> {
        self.json_lines::<LoadSummary>()?.pop().ok_or_else(|| self.error("no summary line"))
    }

    /// Every stdout line parsed as a `T` (fails when the client failed).
    pub fn json_lines<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        if !self.status.success() {
            return Err(self.error("exited with failure"));
        }
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| self.error(&format!("bad line {l:?}: {e}"))))
            .collect()
    }

    fn error(&self, what: &str) -> LabError {
        LabError::Client(format!("{what} ({}); stdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr))
    }
}

/// A client still running (e.g. continuous load while the test restarts the agent).
#[derive(Debug)]
pub struct RunningClient {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
}

impl RunningClient {
    /// Waits for the client to end by itself, killing it past its deadline.
    pub fn wait(mut self) -> Result<ClientRun> {
        let mut child = self.child.take().ok_or_else(|| LabError::Client("already waited".into()))?;
        let status = loop {
            if let Some(status) = child.try_wait().ctx(|| "waiting for lab-client".into())? {
                break status;
            }
            if Instant::now() >= self.deadline {
                let _ = child.kill();
                break child.wait().ctx(|| "reaping lab-client".into())?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let timed_out = status.signal() == Some(libc::SIGKILL);
        let run = ClientRun { status, stdout, stderr };
        if timed_out {
            return Err(run.error("killed: ran past its deadline"));
        }
        Ok(run)
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where `lab-client` runs: a namespace, and optionally a cgroup to join.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    netns: &'a Netns,
    cgroup: Option<&'a Cgroup>,
}

impl<'a> Place<'a> {
    pub fn new(netns: &'a Netns, cgroup: Option<&'a Cgroup>) -> Self {
        Place { netns, cgroup }
    }

    pub fn netns(&self) -> &'a Netns {
        self.netns
    }

    /// `lab-client <args>` as a command that joins the cgroup and enters the
    /// namespace between fork and exec.
    pub fn command(&self, args: &[String]) -> Result<Command> {
        let mut cmd = Command::new(bins::binary("lab-client")?);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let procs: Option<CString> = self.cgroup.map(|c| c.procs_cstr().clone());
        let ns_fd = self.netns.raw_fd();
        // SAFETY: the hook only makes async-signal-safe syscalls on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || enter_place(procs.as_ref(), ns_fd));
        }
        Ok(cmd)
    }

    /// Starts `lab-client <args>`; it is killed if still running after `limit`.
    pub fn spawn(&self, args: &[String], limit: Duration) -> Result<RunningClient> {
        let mut child = self.command(args)?.spawn().ctx(|| format!("starting lab-client {args:?}"))?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Ok(RunningClient { child: Some(child), stdout, stderr, deadline: Instant::now() + limit })
    }

    /// Runs `lab-client <args>` to the end (at most `limit`).
    pub fn run(&self, args: &[String], limit: Duration) -> Result<ClientRun> {
        self.spawn(args, limit)?.wait()
    }

    /// Runs a [`Probe`] and parses its attempts.
    pub fn probe(&self, probe: &Probe) -> Result<Vec<Attempt>> {
        self.run(&probe.args(), probe.limit())?.attempts()
    }

    /// One HTTP/1.0 GET of `path` at `addr`.
    pub fn http(&self, addr: SocketAddr, path: &str) -> Result<HttpAnswer> {
        let run = self.run(&strings(&["http", &addr.to_string(), "--path", path]), Duration::from_secs(10))?;
        run.json_lines::<HttpAnswer>()?.pop().ok_or_else(|| run.error("no answer line"))
    }

    /// Tries to bind `addr` (TCP, and listen; or UDP): `ok`, or the errno.
    pub fn try_bind(&self, addr: SocketAddr, udp: bool) -> Result<Attempt> {
        let mut args = strings(&["bind", &addr.to_string()]);
        if udp {
            args.push("--udp".into());
        }
        let run = self.run(&args, Duration::from_secs(10))?;
        run.json_lines::<Attempt>()?.pop().ok_or_else(|| run.error("no bind line"))
    }

    /// Where a client process lands: its cgroup and network namespace.
    pub fn env(&self) -> Result<ClientEnv> {
        let run = self.run(&strings(&["env"]), Duration::from_secs(10))?;
        run.json_lines::<ClientEnv>()?.pop().ok_or_else(|| run.error("no env line"))
    }
}

/// One `lab-client tcp|udp` run, built up from its options.
#[derive(Debug, Clone)]
pub struct Probe {
    udp: bool,
    addr: SocketAddr,
    count: u32,
    unconnected: bool,
    send_bytes: usize,
    payload_bytes: usize,
    timeout: Duration,
    bind: Option<IpAddr>,
    source_port: Option<u16>,
    source_port_step: u16,
}

impl Probe {
    /// One TCP connection to `addr`, reading the backend's first line.
    pub fn tcp(addr: SocketAddr) -> Probe {
        Probe {
            udp: false,
            addr,
            count: 1,
            unconnected: false,
            send_bytes: 0,
            payload_bytes: 0,
            timeout: Duration::from_secs(2),
            bind: None,
            source_port: None,
            source_port_step: 0,
        }
    }

    /// One UDP request to `addr` from a fresh connected socket.
    pub fn udp(addr: SocketAddr) -> Probe {
        Probe { udp: true, timeout: Duration::from_secs(1), ..Probe::tcp(addr) }
    }

    /// TCP or UDP by protocol name (`"TCP"`/`"UDP"`, any case).
    pub fn of(proto: &str, addr: SocketAddr) -> Probe {
        if proto.eq_ignore_ascii_case("udp") {
            Probe::udp(addr)
        } else {
            Probe::tcp(addr)
        }
    }

    pub fn count(mut self, n: u32) -> Probe {
        self.count = n;
        self
    }

    /// UDP: one socket, `sendto()` per datagram.
    pub fn unconnected(mut self) -> Probe {
        self.unconnected = true;
        self
    }

    /// TCP: send `n` bytes per connection and check the echo (content checksums both ways).
    pub fn send_bytes(mut self, n: usize) -> Probe {
        self.send_bytes = n;
        self
    }

    /// UDP: pad each datagram to `n` bytes.
    pub fn payload_bytes(mut self, n: usize) -> Probe {
        self.payload_bytes = n;
        self
    }

    /// Per socket call (connect, each read): what "no answer" waits for.
    pub fn timeout(mut self, t: Duration) -> Probe {
        self.timeout = t;
        self
    }

    /// Source address: one of the client's own.
    pub fn bind(mut self, ip: IpAddr) -> Probe {
        self.bind = Some(ip);
        self
    }

    /// Source port, the same for every attempt: one 5-tuple throughout.
    pub fn source_port(mut self, port: u16) -> Probe {
        self.source_port = Some(port);
        self
    }

    /// Attempt N uses source port `first + N`: `count` distinct, known 5-tuples.
    pub fn source_ports_from(mut self, first: u16) -> Probe {
        self.source_port = Some(first);
        self.source_port_step = 1;
        self
    }

    /// The `lab-client` command line.
    pub fn args(&self) -> Vec<String> {
        let mut args = strings(&[
            if self.udp { "udp" } else { "tcp" },
            &self.addr.to_string(),
            "--count",
            &self.count.to_string(),
            "--timeout-ms",
            &self.timeout.as_millis().to_string(),
        ]);
        if self.udp {
            if self.unconnected {
                args.push("--unconnected".into());
            }
            if self.payload_bytes > 0 {
                args.extend(strings(&["--payload-bytes", &self.payload_bytes.to_string()]));
            }
        } else if self.send_bytes > 0 {
            args.extend(strings(&["--send-bytes", &self.send_bytes.to_string()]));
        }
        if let Some(ip) = self.bind {
            args.extend(strings(&["--bind", &ip.to_string()]));
        }
        if let Some(port) = self.source_port {
            args.extend(strings(&["--source-port", &port.to_string()]));
        }
        if self.source_port_step != 0 {
            args.extend(strings(&["--source-port-step", &self.source_port_step.to_string()]));
        }
        args
    }

    /// How long the whole run may take before it is killed.
    pub fn limit(&self) -> Duration {
        // A transfer moves at well over 1 MB/s even unoptimised.
        let transfer = Duration::from_secs((self.send_bytes / 1_000_000) as u64);
        Duration::from_secs(10) + (self.timeout * 2 + transfer) * self.count
    }
}

impl Lab {
    /// Where this lab's clients run: the client namespace and the lab's cgroup.
    pub fn client_place(&self) -> Place<'_> {
        Place::new(self.client().netns(), Some(self.cgroup()))
    }

    /// `lab-client <args>` as a command that enters the client namespace and
    /// the lab's cgroup between fork and exec.
    pub fn client_command(&self, args: &[String]) -> Result<Command> {
        self.client_place().command(args)
    }

    /// Starts `lab-client <args>`; it is killed if still running after `limit`.
    pub fn spawn_client(&self, args: &[String], limit: Duration) -> Result<RunningClient> {
        self.client_place().spawn(args, limit)
    }

    /// Runs `lab-client <args>` to the end (at most `limit`).
    pub fn run_client(&self, args: &[String], limit: Duration) -> Result<ClientRun> {
        self.client_place().run(args, limit)
    }

    /// `count` TCP requests to `addr`, each on a new connection.
    pub fn tcp(&self, addr: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        let args = strings(&["tcp", &addr.to_string(), "--count", &count.to_string()]);
        self.run_client(&args, Duration::from_secs(10 + u64::from(count)))?.attempts()
    }

    /// Like [`Lab::tcp`], sending `bytes` bytes on each connection and checking the echo.
    pub fn tcp_echo(&self, addr: SocketAddr, count: u32, bytes: usize) -> Result<Vec<Attempt>> {
        let args =
            strings(&["tcp", &addr.to_string(), "--count", &count.to_string(), "--send-bytes", &bytes.to_string()]);
        self.run_client(&args, Duration::from_secs(10 + u64::from(count)))?.attempts()
    }

    /// `count` UDP requests to `addr`.
    pub fn udp(&self, addr: SocketAddr, count: u32, mode: UdpMode) -> Result<Vec<Attempt>> {
        let mut args = strings(&["udp", &addr.to_string(), "--count", &count.to_string()]);
        if mode == UdpMode::Unconnected {
            args.push("--unconnected".into());
        }
        self.run_client(&args, Duration::from_secs(10 + 2 * u64::from(count)))?.attempts()
    }

    /// Where a client process lands: its cgroup and network namespace.
    pub fn client_env(&self) -> Result<ClientEnv> {
        self.client_place().env()
    }

    /// Starts continuous load: a new TCP connection every `interval` for `duration`.
    pub fn spawn_load(&self, addr: SocketAddr, duration: Duration, interval: Duration) -> Result<RunningClient> {
        let args = strings(&[
            "load",
            &addr.to_string(),
            "--duration-ms",
            &duration.as_millis().to_string(),
            "--interval-ms",
            &interval.as_millis().to_string(),
        ]);
        self.spawn_client(&args, duration + Duration::from_secs(30))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs in the forked child: join the cgroup (if any), enter the namespace,
/// and die with the test process.
fn enter_place(procs: Option<&CString>, ns_fd: i32) -> std::io::Result<()> {
    // SAFETY: raw syscalls on a NUL-terminated path and a valid fd; no allocation.
    unsafe {
        if let Some(procs) = procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
