//! The real kube-proxy 1.20.2 (built from Debian's source), in iptables mode, running in its node's network
//! namespace and reading the same apiserver as Axon through the namespace's apiserver forwarder. It reads
//! core/v1 Endpoints (`EndpointSliceProxying=false`), as Axon must on this 1.20 apiserver, so both proxies
//! consume the same objects.

use crate::{guard, sys, workload};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the forwarder listens inside kube-proxy's namespace.
pub const APISERVER_IN_NETNS: &str = "127.0.0.1:6443";
/// The Node object kube-proxy runs as (created by the bench, as a kubelet would).
pub const NODE_NAME: &str = "bench-kube-proxy";

pub struct KubeProxy {
    child: Option<Child>,
    log: PathBuf,
}

impl KubeProxy {
    /// Starts kube-proxy inside `netns`; `kubeconfig` must point at [`APISERVER_IN_NETNS`].
    pub fn start(bin: &Path, netns: &Path, kubeconfig: &Path, workdir: &Path) -> anyhow::Result<KubeProxy> {
        let log = workdir.join("kube-proxy.log");
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(bin)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--proxy-mode=iptables")
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--cluster-cidr={}", workload::CLUSTER_CIDR))
            .arg("--feature-gates=EndpointSliceProxying=false")
            // Nothing to tune in a namespace: conntrack sysctls are the host's.
            .args(["--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0"])
            .args(["--conntrack-tcp-timeout-close-wait=0"])
            .args(["--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"])
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // nsenter execs kube-proxy in the same process, so the tie holds for kube-proxy.
        sys::die_with_parent_after_exec(&mut cmd);
        let _creating = guard::creating()?;
        let child = cmd.spawn().context("starting kube-proxy")?;
        guard::register_child(child.id());
        Ok(KubeProxy { child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Fails when kube-proxy has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("kube-proxy exited ({status}); log {}:\n{}", self.log.display(), crate::agent::tail(&self.log));
            }
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            guard::forget_child(child.id());
        }
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if !guard::stopping() {
            self.stop();
        }
    }
}

/// A kubeconfig for kube-proxy: the same CA and token, the server at the in-namespace forwarder.
pub fn kubeconfig(dir: &Path, ca: &Path, token: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("kube-proxy.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://{APISERVER_IN_NETNS}\n    certificate-authority: {}\n\
         users:\n- name: kube-proxy\n  user:\n    token: {token}\n\
         contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: kube-proxy\ncurrent-context: bench\n",
        ca.display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
