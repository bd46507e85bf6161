//! A real Kubernetes control plane on loopback: kube-apiserver 1.20.2 (built from Debian's source by
//! `scripts/kube-build.sh`) over its own real etcd, serving TLS with a test CA, authenticating a static
//! admin token, authorizing with RBAC. Optionally a real kube-controller-manager. `kubectl` (the same
//! build) talks to it through a generated kubeconfig, which agents and operators under test use too.
//!
//! The ServiceAccount admission plugin is off so Pods can be created without a controller-manager minting
//! service accounts. Children die with the thread that started them (see [`crate::etcd`]).

use crate::agent::CmdOutput;
use crate::bins::unique_id;
use crate::error::{IoContext, LabError, Result};
use crate::etcd::{die_with_parent, free_port, EtcdCluster};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The ClusterIP range of the test apiserver; test Services pick addresses from it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// kube-proxy's default NodePort range, as the apiserver allocates it.
pub const NODEPORT_RANGE: &str = "30000-32767";

/// Where the cached Kubernetes binaries live: `$AXON_KUBE_BIN`, else the cache `scripts/kube-build.sh` fills.
pub fn kube_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AXON_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("axon/kubernetes-1.20.2/bin")
}

/// The path of a cached Kubernetes binary (`kube-apiserver`, `kube-controller-manager`, `kube-proxy`,
/// `kubectl`), or an error saying how to build them.
pub fn kube_bin(name: &str) -> Result<PathBuf> {
    let path = kube_bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Setup(format!(
            "{} not found: run `bash scripts/kube-build.sh` (make test does) to build Kubernetes 1.20.2 from Debian's source",
            path.display()
        )))
    }
}

/// A running kube-apiserver (and its etcd); see the module doc.
pub struct KubeCluster {
    dir: PathBuf,
    etcd: EtcdCluster,
    port: u16,
    server: String,
    token: String,
    kubeconfig: PathBuf,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver and waits until the apiserver is ready.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-kube", unique_id()));
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let etcd = EtcdCluster::start(1)?;
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let token = format!("axon-admin-{}", std::process::id());
        let mut cluster = KubeCluster {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            etcd,
            port,
            server,
            token,
            apiserver: None,
            controller_manager: None,
        };
        cluster.write_credentials()?;
        cluster.start_apiserver()?;
        Ok(cluster)
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin bearer token (group `system:masters`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA that signed the apiserver's serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn etcd(&self) -> &EtcdCluster {
        &self.etcd
    }

    /// The apiserver's log (for failure messages).
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// Runs kubectl against this cluster. A non-zero exit is not an error here: the caller checks.
    pub fn kubectl(&self, args: &[&str]) -> Result<CmdOutput> {
        self.kubectl_stdin(args, "")
    }

    /// Runs kubectl with `stdin` as its standard input (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<CmdOutput> {
        let mut child = Command::new(kube_bin("kubectl")?)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("running kubectl {}", args.join(" ")))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).ctx(|| "writing kubectl's stdin".into())?;
        }
        let out = child.wait_with_output().ctx(|| format!("waiting for kubectl {}", args.join(" ")))?;
        Ok(CmdOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `kubectl apply -f -` of `yaml`; an error carries kubectl's output.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        if out.success() {
            Ok(())
        } else {
            Err(LabError::Setup(format!("kubectl apply failed: {out}")))
        }
    }

    /// Starts kube-apiserver (again) on the same port and etcd, and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let log = self.apiserver_log();
        let d = &self.dir;
        let mut cmd = Command::new(kube_bin("kube-apiserver")?);
        cmd.arg(format!("--etcd-servers={}", self.etcd.endpoints().join(",")))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.port))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--tls-cert-file={}", d.join("apiserver.crt").display()))
            .arg(format!("--tls-private-key-file={}", d.join("apiserver.key").display()))
            .arg(format!("--token-auth-file={}", d.join("tokens.csv").display()))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg(format!("--service-node-port-range={NODEPORT_RANGE}"))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", d.join("sa.key").display()))
            .arg(format!("--service-account-signing-key-file={}", d.join("sa.key").display()))
            .arg("--allow-privileged=true")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--v=1");
        self.apiserver = Some(spawn_logged(cmd, &log, "kube-apiserver")?);
        self.wait_ready()
    }

    /// Kills kube-apiserver (SIGKILL); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver()
    }

    /// Starts a real kube-controller-manager (endpoints, namespace deletion, garbage collection...).
    pub fn start_controller_manager(&mut self) -> Result<()> {
        if self.controller_manager.is_some() {
            return Ok(());
        }
        let log = self.dir.join("kube-controller-manager.log");
        let mut cmd = Command::new(kube_bin("kube-controller-manager")?);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", self.kubeconfig.display()))
            .arg("--bind-address=127.0.0.1")
            .arg("--port=0")
            .arg(format!("--secure-port={}", free_port()?))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg(format!("--service-account-private-key-file={}", self.dir.join("sa.key").display()))
            .arg(format!("--root-ca-file={}", self.ca_file().display()))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=false")
            .arg("--v=1");
        self.controller_manager = Some(spawn_logged(cmd, &log, "kube-controller-manager")?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"])?;
            if out.success() && out.stdout.trim() == "ok" {
                // The default namespace and the `kubernetes` service appear right after readiness.
                if self.kubectl(&["get", "namespace", "default", "-o", "name"])?.success() {
                    return Ok(());
                }
            }
            let exited = self.apiserver.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                return Err(LabError::Setup(format!(
                    "kube-apiserver did not become ready ({}):\n{}",
                    if exited.is_some() { "it exited" } else { "timeout" },
                    tail(&self.apiserver_log(), 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A test CA, a serving certificate for 127.0.0.1 signed by it, a service-account key, the token file
    /// and the kubeconfig.
    fn write_credentials(&self) -> Result<()> {
        let d = &self.dir;
        openssl(
            d,
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"],
            "/CN=axon-test-ca",
        )?;
        openssl(
            d,
            &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr"],
            "/CN=kube-apiserver",
        )?;
        write(
            &d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n\
             basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        run_openssl(
            d,
            &["x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
                .into_iter()
                .chain(["-out", "apiserver.crt", "-days", "2", "-extfile", "san.ext"])
                .collect::<Vec<_>>(),
        )?;
        run_openssl(d, &["genrsa", "-out", "sa.key", "2048"])?;
        write(&d.join("tokens.csv"), &format!("{},admin,admin,system:masters\n", self.token))?;
        write(
            &self.kubeconfig,
            &format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: axon-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: admin\n  user:\n    token: {token}\n\
                 contexts:\n- name: axon-test\n  context:\n    cluster: axon-test\n    user: admin\n    namespace: default\n\
                 current-context: axon-test\n",
                server = self.server,
                ca = self.ca_file().display(),
                token = self.token,
            ),
        )
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.controller_manager.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_apiserver();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_logged(mut cmd: Command, log: &Path, what: &str) -> Result<Child> {
    let file =
        std::fs::OpenOptions::new().create(true).append(true).open(log).ctx(|| format!("opening {}", log.display()))?;
    let file_err = file.try_clone().ctx(|| format!("duplicating the {what} log handle"))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(file_err);
    die_with_parent(&mut cmd);
    cmd.spawn().ctx(|| format!("starting {what}"))
}

fn openssl(dir: &Path, args: &[&str], subject: &str) -> Result<()> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-days", "2", "-subj", subject]);
    run_openssl(dir, &all)
}

fn run_openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .ctx(|| format!("running openssl {}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Setup(format!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))))
    }
}

fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).ctx(|| format!("writing {}", path.display()))
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
