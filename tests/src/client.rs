//! Running `lab-client` inside the lab: a real process in the client
//! namespace *and* the test's cgroup, which is where the socket-LB hooks
//! fire. Its JSON lines (see [`crate::probe`]) are parsed back here.

use crate::bins;
use crate::error::{IoContext, LabError, Result};
use crate::probe::{Attempt, ClientEnv, LoadSummary};
use crate::topology::Lab;
use std::ffi::CString;
use std::io::Read;
use std::net::SocketAddr;
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

    fn json_lines<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
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

impl Lab {
    /// `lab-client <args>` as a command that enters the client namespace and
    /// the lab's cgroup between fork and exec.
    pub fn client_command(&self, args: &[String]) -> Result<Command> {
        let mut cmd = Command::new(bins::binary("lab-client")?);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let procs: CString = self.cgroup().procs_cstr().clone();
        let ns_fd = self.client().netns().raw_fd();
        // SAFETY: the hook only makes async-signal-safe syscalls on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || enter_lab(&procs, ns_fd));
        }
        Ok(cmd)
    }

    /// Starts `lab-client <args>`; it is killed if still running after `limit`.
    pub fn spawn_client(&self, args: &[String], limit: Duration) -> Result<RunningClient> {
        let mut child = self.client_command(args)?.spawn().ctx(|| format!("starting lab-client {args:?}"))?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Ok(RunningClient { child: Some(child), stdout, stderr, deadline: Instant::now() + limit })
    }

    /// Runs `lab-client <args>` to the end (at most `limit`).
    pub fn run_client(&self, args: &[String], limit: Duration) -> Result<ClientRun> {
        self.spawn_client(args, limit)?.wait()
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
        let run = self.run_client(&strings(&["env"]), Duration::from_secs(10))?;
        run.json_lines::<ClientEnv>()?.pop().ok_or_else(|| run.error("no env line"))
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

/// Runs in the forked child: join the lab's cgroup, enter the client
/// namespace, and die with the test process.
fn enter_lab(procs: &CString, ns_fd: i32) -> std::io::Result<()> {
    // SAFETY: raw syscalls on a NUL-terminated path and a valid fd; no allocation.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(std::io::Error::last_os_error());
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
