//! The mesh lab: two pods on one node, each a network namespace with its own
//! cgroup (a child of the lab's cgroup, where the agent attaches), an app
//! ([`PodApp`], `mesh-app`) and a sidecar: a real Envoy run as uid 1337 with
//! an Istio-like configuration ([`Sidecar::envoy`]: outbound listener on
//! 15001 and inbound on 15006, both with the `original_dst` listener filter
//! and an `ORIGINAL_DST` cluster), or HAProxy as a Linkerd-style proxy
//! (uid 2102, 4140/4143, transparent tcp mode reading SO_ORIGINAL_DST).
//!
//! ```text
//!   pod a (10.77.0.2)                          pod b (10.77.0.11)
//!   app ──connect 10.77.0.11:8080──┐           ┌──► app :8080
//!          (captured to :15001)    ▼           │
//!                       envoy :15001 ──► envoy :15006 (captured inbound)
//! ```

use crate::agent::{Agent, AgentOptions};
use crate::bins;
use crate::cgroup::Cgroup;
use crate::client::Place;
use crate::error::{IoContext, LabError, Result};
use crate::netns::Netns;
use crate::topology::{Lab, Node};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/deps.sh` installs Envoy so that uid 1337 can run it.
pub const ENVOY_BIN: &str = "/usr/local/lib/axon/envoy";
/// The port every lab app listens on.
pub const APP_PORT: u16 = 8080;

/// Which sidecar flavour the pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshFlavor {
    /// Envoy, uid 1337, outbound 15001, inbound 15006.
    Istio,
    /// HAProxy, uid 2102, outbound 4140, inbound 4143.
    Linkerd,
}

impl MeshFlavor {
    pub fn mode(self) -> &'static str {
        match self {
            MeshFlavor::Istio => "istio",
            MeshFlavor::Linkerd => "linkerd",
        }
    }

    pub fn uid(self) -> u32 {
        match self {
            MeshFlavor::Istio => 1337,
            MeshFlavor::Linkerd => 2102,
        }
    }

    pub fn ports(self) -> (u16, u16) {
        match self {
            MeshFlavor::Istio => (15001, 15006),
            MeshFlavor::Linkerd => (4140, 4143),
        }
    }
}

/// A process of the lab, killed on drop.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    what: String,
}

impl LabProcess {
    /// Starts `cmd` inside `netns` and `cgroup`, as `uid` when given.
    pub fn spawn(mut cmd: Command, what: &str, netns: &Netns, cgroup: &Cgroup, uid: Option<u32>) -> Result<Self> {
        let procs = CString::new(cgroup.path().join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| LabError::Setup("cgroup path with a NUL".into()))?;
        let ns_fd = netns.raw_fd();
        // SAFETY: only async-signal-safe syscalls on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || enter(&procs, ns_fd, uid));
        }
        let child = cmd.spawn().ctx(|| format!("starting {what}"))?;
        Ok(LabProcess { child, what: what.to_string() })
    }

    /// Fails if the process already exited (a config it refused, a port taken).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(LabError::Setup(format!("{} exited: {status}", self.what))),
            Err(e) => Err(LabError::io(format!("waiting for {}", self.what), e)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) and returns stdout; fails unless it exited 0.
    pub fn wait_output(mut self, limit: Duration) -> Result<String> {
        let mut out = String::new();
        let mut err = String::new();
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut o) = stdout {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().ctx(|| format!("waiting for {}", self.what))? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(LabError::Client(format!("{} still running after {limit:?}", self.what)));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        out.push_str(&reader.join().unwrap_or_default());
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut err);
        }
        if !status.success() {
            return Err(LabError::Client(format!("{} failed ({status}): {err}", self.what)));
        }
        Ok(out)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enter(procs: &CString, ns_fd: i32, uid: Option<u32>) -> std::io::Result<()> {
    let check = |r: libc::c_int| if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
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
        check(libc::setns(ns_fd, libc::CLONE_NEWNET))?;
        if let Some(uid) = uid {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))?;
        }
        // After setuid, which clears the parent-death signal.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    Ok(())
}

/// Waits until `addr` accepts a TCP connection from inside `netns` (the test
/// process's own cgroup is outside the lab's, so nothing captures this).
pub fn wait_listening(netns: &Netns, addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let ok = netns.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Setup(format!("nothing listens on {addr} in {} after {limit:?}", netns.label())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pod's sidecar: Envoy or HAProxy, with its config and log files.
#[derive(Debug)]
pub struct Sidecar {
    process: LabProcess,
    dir: PathBuf,
    flavor: MeshFlavor,
}

impl Sidecar {
    /// Envoy as uid 1337: L4 `tcp_proxy` on both listeners, an access log
    /// line per connection: `<listener> <downstream local> <upstream host> <downstream remote>`.
    pub fn envoy(netns: &Netns, cgroup: &Cgroup, dir: &Path) -> Result<Sidecar> {
        let log = dir.join("access.log");
        let config = envoy_config(&log);
        std::fs::write(dir.join("envoy.yaml"), config).ctx(|| "writing envoy.yaml".into())?;
        let mut cmd = Command::new(ENVOY_BIN);
        cmd.arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning", "--file-flush-interval-msec", "20"])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = LabProcess::spawn(cmd, "envoy", netns, cgroup, Some(MeshFlavor::Istio.uid()))?;
        let mut sidecar = Sidecar { process, dir: dir.to_path_buf(), flavor: MeshFlavor::Istio };
        sidecar.wait_ready(netns)?;
        Ok(sidecar)
    }

    /// HAProxy as uid 2102 in tcp mode: `transparent` servers (`0.0.0.0:0`)
    /// go where SO_ORIGINAL_DST says, like a Linkerd proxy.
    pub fn haproxy(netns: &Netns, cgroup: &Cgroup, dir: &Path) -> Result<Sidecar> {
        let log = dir.join("access.log");
        std::fs::write(dir.join("haproxy.cfg"), haproxy_config()).ctx(|| "writing haproxy.cfg".into())?;
        // HAProxy logs through syslog; the lab reads connection counts from its stats instead.
        let _ = std::fs::write(&log, "");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.err")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
        let process = LabProcess::spawn(cmd, "haproxy", netns, cgroup, Some(MeshFlavor::Linkerd.uid()))?;
        let mut sidecar = Sidecar { process, dir: dir.to_path_buf(), flavor: MeshFlavor::Linkerd };
        sidecar.wait_ready(netns)?;
        Ok(sidecar)
    }

    fn wait_ready(&mut self, netns: &Netns) -> Result<()> {
        let (out, inb) = self.flavor.ports();
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [out, inb] {
            loop {
                self.process.check_running().map_err(|e| LabError::Setup(format!("{e}; {}", self.logs())))?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let ok = netns.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(LabError::Setup(format!("sidecar not listening on {port}; {}", self.logs())));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The access log so far (Envoy: one line per closed connection).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Access log lines of `listener` (`outbound`, `inbound`), waiting up to
    /// `limit` for at least `n` of them (Envoy writes them as connections close).
    pub fn wait_log_lines(&self, listener: &str, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let lines: Vec<String> = self
                .access_log()
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(listener))
                // The readiness check connects straight to the listener: no upstream.
                .filter(|l| l.split_whitespace().nth(2) != Some("-"))
                .map(str::to_string)
                .collect();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("envoy.log: {} haproxy.err: {}", read("envoy.log"), read("haproxy.err"))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn envoy_listener(name: &str, address: &str, port: u16, log: &Path) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: "{address}", port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: passthrough
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}"
              log_format:
                text_format_source:
                  inline_string: "{kind} %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS%\n"
"#,
        log = log.display(),
        kind = name.trim_end_matches('6'),
    )
}

/// The Istio-like bootstrap: outbound and inbound listeners for IPv4 and
/// IPv6, one ORIGINAL_DST cluster.
pub fn envoy_config(log: &Path) -> String {
    let mut s = String::from(
        "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}\nstatic_resources:\n  listeners:\n",
    );
    s.push_str(&envoy_listener("outbound", "0.0.0.0", 15001, log));
    s.push_str(&envoy_listener("outbound6", "::", 15001, log));
    s.push_str(&envoy_listener("inbound", "0.0.0.0", 15006, log));
    s.push_str(&envoy_listener("inbound6", "::", 15006, log));
    s.push_str(
        "  clusters:\n  - name: passthrough\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n",
    );
    s
}

/// Listeners where Linkerd's proxy has them without dual-stack: outbound on
/// 127.0.0.1:4140 only (loopback: not an open proxy), inbound on 0.0.0.0:4143.
/// HAProxy in tcp mode with transparent servers: the destination is what
/// getsockopt(SO_ORIGINAL_DST) answers on the accepted connection.
pub fn haproxy_config() -> String {
    "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
     frontend outbound\n  bind 127.0.0.1:4140\n  default_backend passthrough\n\
     frontend inbound\n  bind 0.0.0.0:4143\n  default_backend passthrough\n\
     backend passthrough\n  server orig 0.0.0.0:0\n"
        .to_string()
}

/// The app of a pod.
#[derive(Debug)]
pub struct PodApp {
    _process: LabProcess,
}

/// One pod: a lab node's namespace (held by the [`MeshLab`]) plus a cgroup
/// of its own.
#[derive(Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    ipv4: std::net::Ipv4Addr,
    ipv6: std::net::Ipv6Addr,
    pub cgroup: Cgroup,
}

impl Pod {
    pub fn ipv4(&self) -> IpAddr {
        self.ipv4.into()
    }

    pub fn ipv6(&self) -> IpAddr {
        self.ipv6.into()
    }

    pub fn addr(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(if v6 { self.ipv6() } else { self.ipv4() }, port)
    }

    /// `NAMESPACE/NAME`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Two pods (a = the lab's client namespace, b = its first backend) and an
/// agent with mesh acceleration in the given mode.
#[derive(Debug)]
pub struct MeshLab {
    // Dropped in this order: processes, then pods' cgroups, then the agent, then the lab.
    pub sidecars: Vec<Sidecar>,
    pub apps: Vec<PodApp>,
    pub pods: Vec<Pod>,
    pub agent: Agent,
    work: PathBuf,
    pub flavor: MeshFlavor,
    lab: Lab,
}

impl MeshLab {
    /// The lab, the pods' cgroups and the agent (`--mesh-mode` + `extra_args`);
    /// no process runs yet.
    pub fn new(label: &str, flavor: MeshFlavor, extra_args: &[&str]) -> Result<MeshLab> {
        let lab = Lab::new(label, 1)?;
        let mut args = vec!["--mesh-mode", flavor.mode()];
        args.extend_from_slice(extra_args);
        let agent = Agent::start(lab.id(), lab.cgroup().path(), AgentOptions::default().with_args(&args))?;
        let work = std::env::temp_dir().join(format!("{}-mesh", lab.id()));
        std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
        // The sidecars run unprivileged and write their logs here.
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).ctx(|| "chmod work dir".into())?;
        let nodes: [(&Node, &str); 2] = [(lab.client(), "pod-a"), (lab.backend(1), "pod-b")];
        let mut pods = Vec::new();
        for (node, name) in nodes {
            let cgroup = Cgroup::create(&format!("{}/{name}", lab.id()))?;
            pods.push(Pod {
                namespace: "default".into(),
                name: name.into(),
                ipv4: node.ipv4(),
                ipv6: node.ipv6(),
                cgroup,
            });
        }
        Ok(MeshLab { sidecars: vec![], apps: vec![], pods, agent, work, flavor, lab })
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    /// The network namespace of pod `i` (0 = a, 1 = b).
    pub fn netns(&self, i: usize) -> &Netns {
        if i == 0 {
            self.lab.client().netns()
        } else {
            self.lab.backend(i).netns()
        }
    }

    /// `mesh-app probe`: `count` connections from pod `i`'s app to `to`,
    /// each echoing `bytes` (an app that retries reads after EAGAIN).
    pub fn probe(&self, i: usize, to: SocketAddr, count: u32, bytes: usize) -> Result<Vec<crate::Attempt>> {
        let mut cmd = Command::new(bins::binary("mesh-app")?);
        cmd.args(["probe", &to.to_string(), &count.to_string(), &bytes.to_string()]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = LabProcess::spawn(cmd, "mesh-app probe", self.netns(i), &self.pods[i].cgroup, None)?;
        child
            .wait_output(Duration::from_secs(60))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| LabError::Client(format!("bad probe line {l:?}: {e}"))))
            .collect()
    }

    /// Starts `mesh-app <args>` as pod `i`'s app (stdout piped: [`LabProcess::wait_output`]).
    pub fn spawn_app(&self, i: usize, args: &[&str]) -> Result<LabProcess> {
        let mut cmd = Command::new(bins::binary("mesh-app")?);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        LabProcess::spawn(cmd, &format!("mesh-app {args:?}"), self.netns(i), &self.pods[i].cgroup, None)
    }

    /// Where `lab-client` runs as pod `i`'s app.
    pub fn place(&self, i: usize) -> Place<'_> {
        Place::new(self.netns(i), Some(&self.pods[i].cgroup))
    }

    /// Starts `mesh-app serve <name> <port>` in pod `i` (as root, like an app).
    pub fn serve(&self, i: usize, port: u16, http: bool) -> Result<PodApp> {
        let pod = &self.pods[i];
        let mut cmd = Command::new(bins::binary("mesh-app")?);
        cmd.args(["serve", &pod.name, &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null());
        if http {
            cmd.arg("--http");
        }
        let process = LabProcess::spawn(cmd, "mesh-app", self.netns(i), &pod.cgroup, None)?;
        wait_listening(self.netns(i), SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))?;
        Ok(PodApp { _process: process })
    }

    /// Starts the app of every pod (`mesh-app serve`) and a sidecar in each.
    pub fn start_pods(&mut self, http: bool) -> Result<()> {
        for i in 0..self.pods.len() {
            let app = self.serve(i, APP_PORT, http)?;
            self.apps.push(app);
            let dir = self.work.join(&self.pods[i].name);
            std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).ctx(|| "chmod".into())?;
            let sidecar = match self.flavor {
                MeshFlavor::Istio => Sidecar::envoy(self.netns(i), &self.pods[i].cgroup, &dir)?,
                MeshFlavor::Linkerd => Sidecar::haproxy(self.netns(i), &self.pods[i].cgroup, &dir)?,
            };
            self.sidecars.push(sidecar);
        }
        Ok(())
    }

    /// `agentctl mesh enable --pod NS/NAME --cgroup PATH --ip ... [--annotation K=V]`.
    pub fn enable_pod(&self, i: usize, annotations: &[(&str, &str)]) -> Result<()> {
        let pod = &self.pods[i];
        let pod_ref = pod.pod_ref();
        let cgroup = pod.cgroup.path().display().to_string();
        let (v4, v6) = (pod.ipv4().to_string(), pod.ipv6().to_string());
        let mut args = vec!["mesh", "enable", "--pod", &pod_ref, "--cgroup", &cgroup, "--ip", &v4, "--ip", &v6];
        let annotations: Vec<String> = annotations.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for a in &annotations {
            args.push("--annotation");
            args.push(a);
        }
        self.agentctl_ok(&args)
    }

    /// Runs agentctl and fails with its output unless it succeeded.
    pub fn agentctl_ok(&self, args: &[&str]) -> Result<()> {
        let out = self.agent.agentctl(args)?;
        if !out.success() {
            return Err(LabError::Client(format!("agentctl {args:?} failed: {out:?}")));
        }
        Ok(())
    }

    /// `GET /v1/mesh`, as JSON.
    pub fn status(&self) -> Result<axon_api::mesh::MeshStatus> {
        self.agent.block_on(self.agent.api().mesh_status()).map_err(|e| LabError::Client(format!("mesh status: {e}")))
    }
}

/// Reads an HTTP answer body from a raw keep-alive GET (for quick checks).
pub fn http_get(stream: &mut TcpStream, path: &str) -> std::io::Result<String> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        // Keep the sidecars' logs of a failed test for the reader.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
