//! The peers' rulesets, generated for the same services the agent gets:
//! kube-proxy's iptables mode (an `iptables-restore` document) and its
//! nftables mode (an `nft -f` transaction in knftables' `add ...` form).
//! The shapes follow what kube-proxy writes for ClusterIP services with
//! endpoints, so per-packet work and load time are representative.

use crate::workload::{self, BACKEND_PORT, CLUSTER_CIDR, VIP_PORT};
use std::fmt::Write;
use std::ops::Range;

const MASQ_MARK: &str = "0x4000";

fn svc_chain(i: usize) -> String {
    format!("KUBE-SVC-{}", workload::hash_name(1, i, 16))
}

fn sep_chain(i: usize, j: usize) -> String {
    format!("KUBE-SEP-{}", workload::hash_name(2, i * workload::BACKENDS_PER_SERVICE + j, 16))
}

/// How an iptables document is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesStyle {
    /// A fresh node: the whole tables, built-in chains included, no `--noflush`.
    Full,
    /// kube-proxy's periodic/full sync: `iptables-restore --noflush` of every
    /// KUBE-* chain (each declared, hence flushed and rewritten); the jumps
    /// from the built-in chains already exist.
    Sync,
}

/// kube-proxy iptables-mode ruleset for services `range`.
pub fn iptables(range: Range<usize>, style: IptablesStyle) -> String {
    let n = range.len();
    let mut out = String::with_capacity(200 + n * 900);
    write_filter(&mut out, style);
    write_nat(&mut out, range, style);
    out
}

fn write_filter(out: &mut String, style: IptablesStyle) {
    out.push_str("*filter\n");
    if style == IptablesStyle::Full {
        out.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    }
    for c in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if style == IptablesStyle::Full {
        out.push_str(concat!(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        ));
    }
    let _ = writeln!(out, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    out.push_str("COMMIT\n");
}

fn write_nat(out: &mut String, range: Range<usize>, style: IptablesStyle) {
    out.push_str("*nat\n");
    if style == IptablesStyle::Full {
        out.push_str(
            ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
        );
    }
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for i in range.clone() {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(i));
        for j in 0..workload::BACKENDS_PER_SERVICE {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, j));
        }
    }
    if style == IptablesStyle::Full {
        out.push_str(concat!(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        ));
    }
    let _ = writeln!(out, "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for i in range.clone() {
        let (ns, name) = workload::name(i);
        let vip = workload::vip(i);
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{ns}/{name}:http cluster IP\" -d {}/32 -p tcp -m tcp --dport {VIP_PORT} -j {}",
            vip.ip(),
            svc_chain(i)
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for i in range {
        write_service_chains(out, i);
    }
    out.push_str("COMMIT\n");
}

fn write_service_chains(out: &mut String, i: usize) {
    let (ns, name) = workload::name(i);
    let vip = workload::vip(i);
    let svc = svc_chain(i);
    let backends = workload::backends(i);
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{ns}/{name}:http cluster IP\" -d {}/32 -p tcp -m tcp --dport {VIP_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        vip.ip()
    );
    let n = backends.len();
    for (j, b) in backends.iter().enumerate() {
        // kube-proxy: endpoint j of n is taken with probability 1/(n-j), the last always.
        let statistic = if j + 1 < n {
            format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - j) as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{ns}/{name}:http -> {b}\"{statistic} -j {}",
            sep_chain(i, j)
        );
    }
    for (j, b) in backends.iter().enumerate() {
        let sep = sep_chain(i, j);
        let _ = writeln!(out, "-A {sep} -m comment --comment \"{ns}/{name}:http\" -s {}/32 -j KUBE-MARK-MASQ", b.ip());
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment \"{ns}/{name}:http\" -m tcp -p tcp -j DNAT --to-destination {b}"
        );
    }
}

/// The nftables table kube-proxy's nftables mode owns.
pub const NFT_TABLE: &str = "kube-proxy";

fn nft_svc_chain(i: usize) -> String {
    let (ns, name) = workload::name(i);
    format!("service-{}-{ns}/{name}/tcp/http", workload::hash_name(3, i, 8))
}

fn nft_ep_chain(i: usize, j: usize) -> String {
    let (ns, name) = workload::name(i);
    let b = workload::backends(i)[j];
    format!(
        "endpoint-{}-{ns}/{name}/tcp/http__{}/{}",
        workload::hash_name(4, i * workload::BACKENDS_PER_SERVICE + j, 8),
        b.ip(),
        b.port()
    )
}

/// kube-proxy nftables-mode ruleset for services `range`, from an empty netns.
pub fn nft_full(range: Range<usize>) -> String {
    let t = format!("ip {NFT_TABLE}");
    let mut out = String::with_capacity(4000 + range.len() * 1200);
    let _ = writeln!(out, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(out, "add chain {t} mark-for-masquerade");
    let _ = writeln!(out, "add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}");
    let _ = writeln!(out, "add chain {t} masquerading");
    let _ = writeln!(out, "add rule {t} masquerading mark and {MASQ_MARK} == 0 return");
    let _ = writeln!(out, "add rule {t} masquerading mark set mark xor {MASQ_MARK}");
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
    for (map, comment) in [
        ("service-ips", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        ("no-endpoint-services", "vmap to drop or reject packets to services with no endpoints"),
        ("firewall-ips", "destinations that are subject to LoadBalancerSourceRanges"),
    ] {
        let _ = writeln!(
            out,
            "add map {t} {map} {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"{comment}\" ; }}"
        );
    }
    let _ =
        writeln!(out, "add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}");
    let _ = writeln!(
        out,
        "add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(out, "add chain {t} service-endpoints-check");
    let _ = writeln!(
        out,
        "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    let _ = writeln!(out, "add chain {t} firewall-check");
    let _ = writeln!(out, "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips");
    let _ = writeln!(out, "add chain {t} services");
    let _ = writeln!(out, "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips");
    let _ =
        writeln!(out, "add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports");
    let _ = writeln!(out, "add chain {t} filter-output {{ type filter hook output priority -110 ; policy accept ; }}");
    let _ = writeln!(out, "add rule {t} filter-output ct state new jump service-endpoints-check");
    let _ = writeln!(out, "add rule {t} filter-output ct state new jump firewall-check");
    let _ =
        writeln!(out, "add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}");
    let _ = writeln!(out, "add rule {t} nat-prerouting jump services");
    let _ = writeln!(out, "add chain {t} nat-output {{ type nat hook output priority -100 ; policy accept ; }}");
    let _ = writeln!(out, "add rule {t} nat-output jump services");
    let _ = writeln!(
        out,
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}"
    );
    let _ = writeln!(out, "add rule {t} nat-postrouting jump masquerading");
    for i in range {
        nft_service(&mut out, i);
    }
    out
}

/// One more service added to a programmed table: the transaction
/// kube-proxy's nftables mode sends for a new service.
pub fn nft_add(i: usize) -> String {
    let mut out = String::new();
    nft_service(&mut out, i);
    out
}

fn nft_service(out: &mut String, i: usize) {
    let t = format!("ip {NFT_TABLE}");
    let vip = workload::vip(i);
    let backends = workload::backends(i);
    let svc = nft_svc_chain(i);
    let mut arms = Vec::with_capacity(backends.len());
    for (j, b) in backends.iter().enumerate() {
        let ep = nft_ep_chain(i, j);
        let _ = writeln!(out, "add chain {t} {ep}");
        let _ = writeln!(out, "add rule {t} {ep} ip saddr {} jump mark-for-masquerade", b.ip());
        let _ = writeln!(out, "add rule {t} {ep} meta l4proto tcp dnat to {}:{}", b.ip(), BACKEND_PORT);
        arms.push(format!("{j} : goto {ep}"));
    }
    let _ = writeln!(out, "add chain {t} {svc}");
    let _ = writeln!(
        out,
        "add rule {t} {svc} ip daddr {} tcp dport {VIP_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        vip.ip()
    );
    let _ = writeln!(out, "add rule {t} {svc} numgen random mod {} vmap {{ {} }}", backends.len(), arms.join(" , "));
    let _ = writeln!(out, "add element {t} service-ips {{ {} . tcp . {VIP_PORT} : goto {svc} }}", vip.ip());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_full_declares_every_chain_it_jumps_to() {
        let doc = iptables(0..3, IptablesStyle::Full);
        for line in doc.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(target) = line.split(" -j ").nth(1).map(|t| t.split(' ').next().unwrap_or("")) {
                if target.starts_with("KUBE-") {
                    assert!(doc.contains(&format!(":{target} - [0:0]")), "{target} not declared");
                }
            }
        }
        assert!(doc.contains("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
        assert!(doc.contains("--probability 0.5000000000"));
        assert!(doc.contains("DNAT --to-destination 10.128.0.2:8080"));
    }

    #[test]
    fn iptables_sync_leaves_builtin_chains_alone() {
        let doc = iptables(0..2, IptablesStyle::Sync);
        assert!(!doc.contains(":OUTPUT"));
        assert!(!doc.contains("-A OUTPUT"));
        assert!(doc.contains(&format!(":{} - [0:0]", svc_chain(1))));
    }

    #[test]
    fn nft_service_maps_vip_to_its_chain() {
        let doc = nft_add(0);
        assert!(doc.contains("add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 : goto service-"));
        assert!(doc.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(doc.contains("dnat to 10.128.0.1:8080"));
    }
}
