//! kube-proxy's iptables mode for NodePort services, as it writes them for
//! `externalTrafficPolicy: Cluster` (kube-proxy 1.28+): nat `PREROUTING` →
//! `KUBE-SERVICES` (one cluster-IP rule per service, then the jump to
//! `KUBE-NODEPORTS` for local destinations) → `KUBE-EXT-*` (mark for
//! masquerade) → `KUBE-SVC-*` → `KUBE-SEP-*` (`DNAT`), and `KUBE-POSTROUTING`
//! doing `MASQUERADE --random-fully` for marked packets; plus its filter
//! chains (`KUBE-FORWARD`: drop INVALID, accept marked and established).
//! Loaded with `iptables-legacy-restore` or `iptables-nft-restore` inside a
//! node's namespace.

use super::services::{Svc, CLUSTER_CIDR};
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const MASQ_MARK: &str = "0x4000";

/// Which iptables backend loads the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub fn restore_bin(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy-restore",
            Backend::Nft => "iptables-nft-restore",
        }
    }
}

/// kube-proxy's chain-name hash: 16 characters of base32 over FNV-1a of
/// the name (kube-proxy uses SHA-256; only the shape matters here).
fn chain(prefix: &str, name: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in format!("{prefix}/{name}").bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let s: String = (0..16).map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char).collect();
    format!("{prefix}-{s}")
}

/// The `iptables-restore` document for `services`, as a fresh node gets it.
pub fn ruleset(services: &[Svc]) -> String {
    let mut out = String::with_capacity(2000 + services.len() * 1200);
    write_filter(&mut out);
    write_nat(&mut out, services);
    out
}

fn write_filter(out: &mut String) {
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment \"kubernetes forwarding rules\" -j DROP\n",
    ));
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n");
}

fn write_nat(out: &mut String, services: &[Svc]) {
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for s in services {
        for prefix in ["KUBE-SVC", "KUBE-EXT", "KUBE-SEP"] {
            let _ = writeln!(out, ":{} - [0:0]", chain(prefix, &s.name));
        }
    }
    out.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ));
    let _ = writeln!(out, "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for s in services {
        let p = s.proto.iptables();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"bench/{n}:p cluster IP\" -d {ip}/32 -p {p} -m {p} --dport 80 -j {svc}",
            n = s.name,
            ip = s.cluster_ip,
            svc = chain("KUBE-SVC", &s.name)
        );
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for s in services {
        write_service(out, s);
    }
    out.push_str("COMMIT\n");
}

fn write_service(out: &mut String, s: &Svc) {
    let (n, p) = (&s.name, s.proto.iptables());
    let (svc, ext, sep) = (chain("KUBE-SVC", n), chain("KUBE-EXT", n), chain("KUBE-SEP", n));
    let be = format!("{}:{}", s.backend, s.backend_port);
    let _ = writeln!(
        out,
        "-A KUBE-NODEPORTS -m comment --comment \"bench/{n}:p\" -p {p} -m {p} --dport {} -j {ext}",
        s.node_port
    );
    let _ = writeln!(
        out,
        "-A {ext} -m comment --comment \"masquerade traffic for bench/{n}:p external destinations\" -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(out, "-A {ext} -j {svc}");
    let _ = writeln!(
        out,
        "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -m comment --comment \"bench/{n}:p cluster IP\" -p {p} -m {p} --dport 80 -j KUBE-MARK-MASQ",
        s.cluster_ip
    );
    let _ = writeln!(out, "-A {svc} -m comment --comment \"bench/{n}:p -> {be}\" -j {sep}");
    let _ = writeln!(out, "-A {sep} -s {}/32 -m comment --comment \"bench/{n}:p\" -j KUBE-MARK-MASQ", s.backend);
    let _ = writeln!(out, "-A {sep} -p {p} -m comment --comment \"bench/{n}:p\" -m {p} -j DNAT --to-destination {be}");
}

/// Loads `doc` with `backend`'s restore tool inside netns `ns`.
pub fn load(ns: &str, backend: Backend, doc: &str) -> anyhow::Result<()> {
    let fd = super::sys::open_netns(ns).with_context(|| format!("opening netns {ns}"))?;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(backend.restore_bin());
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only setns(2) between fork and exec; `fd` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = {
        let _creating = super::lab::creating()?;
        let child = cmd.spawn().with_context(|| format!("running {} (is it installed?)", backend.restore_bin()))?;
        super::lab::register_child(child.id());
        child
    };
    let pid = child.id();
    let written = child.stdin.take().context("restore stdin")?.write_all(doc.as_bytes());
    let out = child.wait_with_output()?;
    super::lab::forget_child(pid);
    written.context("writing the ruleset")?;
    if !out.status.success() {
        bail!("{} in {ns}: {}", backend.restore_bin(), String::from_utf8_lossy(&out.stderr).trim());
    }
    drop(fd);
    Ok(())
}
