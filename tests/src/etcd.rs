//! A real etcd cluster on loopback (Debian's `etcd-server`): one or three members with unique ports and
//! private data dirs, members that can be killed and brought back on the same data, and a guard that kills
//! everything and removes the data when dropped.
//!
//! Children are started with `PR_SET_PDEATHSIG`: they die with the thread that started them, so start the
//! cluster from the test's own thread and keep it there.

use crate::bins::unique_id;
use crate::error::{IoContext, LabError, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "etcd";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster; see the module doc.
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3 make sense) and waits until every one answers `/health`.
    pub fn start(members: usize) -> Result<Self> {
        if members == 0 {
            return Err(LabError::Setup("an etcd cluster needs at least one member".into()));
        }
        let dir = std::env::temp_dir().join(format!("{}-etcd", unique_id()));
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut cluster = EtcdCluster { dir, members: Vec::with_capacity(members) };
        // All ports at once, each listener held until every one is chosen: no port twice.
        let ports = free_ports(2 * members)?;
        for i in 0..members {
            let name = format!("m{i}");
            let data_dir = cluster.dir.join(&name);
            let log = cluster.dir.join(format!("{name}.log"));
            cluster.members.push(Member {
                name,
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir,
                log,
                child: None,
            });
        }
        for i in 0..members {
            cluster.spawn(i)?;
        }
        for i in 0..members {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client URLs of every member, `http://127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Kills member `i` (SIGKILL: what a crashed node looks like).
    pub fn stop_member(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts member `i` again on its old data dir and waits until it is healthy.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if self.member_mut(i)?.child.is_some() {
            return Ok(());
        }
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Starts several stopped members together and waits for each: a cluster that lost its quorum only
    /// becomes healthy once enough members run, so starting them one by one would wait forever.
    pub fn start_members(&mut self, members: &[usize]) -> Result<()> {
        for &i in members {
            if self.member_mut(i)?.child.is_none() {
                self.spawn(i)?;
            }
        }
        for &i in members {
            self.wait_healthy(i)?;
        }
        Ok(())
    }

    /// The log file of member `i` (for failure messages).
    pub fn log(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(|m| m.log.as_path())
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member> {
        let n = self.members.len();
        self.members.get_mut(i).ok_or_else(|| LabError::Setup(format!("etcd member {i} does not exist ({n} members)")))
    }

    fn initial_cluster(&self) -> String {
        let peers: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        peers.join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self.initial_cluster();
        let token = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let m = &mut self.members[i];
        let state = if m.data_dir.join("member").exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .ctx(|| format!("opening {}", m.log.display()))?;
        let log_err = log.try_clone().ctx(|| "duplicating the etcd log handle".into())?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            // Member loss is noticed within a couple of seconds, yet a loaded 2-core CI machine
            // does not miss heartbeats and flap leaders.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            LabError::io("starting etcd (Debian package etcd-server; `make deps` installs it)".to_string(), e)
        })?;
        m.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.members[i].client_port;
        loop {
            if http_get_ok(port, "/health", "\"health\":\"true\"") {
                return Ok(());
            }
            let m = &mut self.members[i];
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let tail = crate::kube::tail(&m.log, 20);
                return Err(LabError::Setup(format!(
                    "etcd member {} did not become healthy ({}):\n{tail}",
                    m.name,
                    if exited.is_some() { "it exited" } else { "timeout" }
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` distinct loopback TCP ports nobody listens on right now.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").ctx(|| "finding a free loopback port".into()))
        .collect::<Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr().ctx(|| "reading a bound port".into())?.port())).collect()
}

/// A loopback TCP port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ctx(|| "finding a free loopback port".into())?;
    let port = listener.local_addr().ctx(|| "reading a bound port".into())?.port();
    Ok(port)
}

/// Children die with the spawning thread, so a test that panics or is killed leaves no server behind.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A plain-HTTP GET on loopback whose body contains `expect`.
fn http_get_ok(port: u16, path: &str, expect: &str) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains(expect)
}
