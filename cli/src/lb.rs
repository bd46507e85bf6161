//! `agentctl bpf lb list`: what the kernel serves, read straight from the
//! pinned maps (so it works while the agent is down), laid out like
//! `cilium bpf lb list`.

use crate::table;
use crate::Output;
use anyhow::Result;
use axon_api::Protocol;
use axon_bpf::maps::{svc_flags, svc_type, LbService};
use axon_bpf::pinned::{read_lb_maps, LbMapsDump};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

pub const HEADER: [&str; 2] = ["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"];

/// `AXON_SCOPE_INTERNAL` in maps.h; Cilium marks such frontends with `/i`.
const SCOPE_INTERNAL: u8 = 1;

/// One frontend of the service maps with every slot found for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbFrontend {
    pub frontend: String,
    pub internal_scope: bool,
    /// The master slot (0); absent if only backend slots were found.
    pub master: Option<LbMaster>,
    pub slots: Vec<LbSlot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbMaster {
    pub rev_nat_id: u32,
    pub count: u16,
    #[serde(rename = "type")]
    pub svc_type: String,
    /// What the master's flags turn on (`maglev`, `dsr`, `affinity=600s`, ...).
    pub flags: Vec<String>,
}

/// The master flags as words, in a fixed order.
fn flag_words(v: &LbService) -> Vec<String> {
    let named = [
        (svc_flags::NODEPORT_WILDCARD, "all-node-addresses"),
        (svc_flags::TWO_SCOPES, "two-scopes"),
        (svc_flags::DSR, "dsr"),
        (svc_flags::MAGLEV, "maglev"),
        (svc_flags::SRC_RANGES, "source-ranges"),
    ];
    let mut words: Vec<String> =
        named.iter().filter(|(bit, _)| v.flags & bit != 0).map(|(_, w)| w.to_string()).collect();
    if v.flags & svc_flags::AFFINITY != 0 {
        // The master's backend field carries the affinity timeout.
        words.push(format!("affinity={}s", v.backend_id));
    }
    words
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbSlot {
    pub slot: u16,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    /// `10.0.0.2:8080/TCP`; absent when the backend map has no such id.
    pub backend: Option<String>,
}

/// Frontend identity as the maps key it, minus the slot; sorts v4 before v6.
type FrontendKey = (IpAddr, u16, u8, u8);

/// `ip:port/PROTO`, with the raw number when it is no protocol we know.
fn l4(ip: IpAddr, port: u16, proto: u8) -> String {
    let addr = SocketAddr::new(ip, port);
    match Protocol::from_number(proto) {
        Some(p) => format!("{addr}/{p}"),
        None => format!("{addr}/proto-{proto}"),
    }
}

fn type_name(v: u8) -> String {
    match v {
        svc_type::CLUSTER_IP => "ClusterIP".into(),
        svc_type::NODE_PORT => "NodePort".into(),
        svc_type::EXTERNAL_IPS => "ExternalIPs".into(),
        svc_type::LOAD_BALANCER => "LoadBalancer".into(),
        svc_type::HOST_PORT => "HostPort".into(),
        other => format!("type {other}"),
    }
}

/// Groups the service maps by frontend, sorted by frontend then slot.
pub fn frontends(dump: &LbMapsDump) -> Vec<LbFrontend> {
    let backends: HashMap<u32, String> = dump
        .backends4
        .iter()
        .map(|(id, b)| (*id, l4(b.ip().into(), b.host_port(), b.proto)))
        .chain(dump.backends6.iter().map(|(id, b)| (*id, l4(b.ip().into(), b.host_port(), b.proto))))
        .collect();
    let mut grouped: BTreeMap<FrontendKey, Vec<(u16, LbService)>> = BTreeMap::new();
    for (k, v) in &dump.services4 {
        grouped.entry((k.ip().into(), k.port(), k.proto, k.scope)).or_default().push((k.backend_slot, *v));
    }
    for (k, v) in &dump.services6 {
        grouped.entry((k.ip().into(), k.port(), k.proto, k.scope)).or_default().push((k.backend_slot, *v));
    }
    grouped
        .into_iter()
        .map(|((ip, port, proto, scope), mut entries)| {
            entries.sort_by_key(|(slot, _)| *slot);
            let master = entries.iter().find(|(slot, _)| *slot == 0).map(|(_, v)| LbMaster {
                rev_nat_id: v.rev_nat_index,
                count: v.count,
                svc_type: type_name(v.svc_type),
                flags: flag_words(v),
            });
            let slots = entries
                .iter()
                .filter(|(slot, _)| *slot != 0)
                .map(|(slot, v)| LbSlot {
                    slot: *slot,
                    rev_nat_id: v.rev_nat_index,
                    backend_id: v.backend_id,
                    backend: backends.get(&v.backend_id).cloned(),
                })
                .collect();
            LbFrontend { frontend: l4(ip, port, proto), internal_scope: scope == SCOPE_INTERNAL, master, slots }
        })
        .collect()
}

/// The master row's placeholder address: Cilium's zero address of the family.
fn zero_addr(frontend: &str) -> &'static str {
    if frontend.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

pub fn rows(frontends: &[LbFrontend]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for fe in frontends {
        let mut cells = Vec::new();
        if let Some(m) = &fe.master {
            let mut labels = vec![m.svc_type.clone()];
            labels.extend(m.flags.iter().cloned());
            cells.push(format!("{} ({}) (0) [{}]", zero_addr(&fe.frontend), m.rev_nat_id, labels.join(", ")));
        }
        for s in &fe.slots {
            let backend = s.backend.clone().unwrap_or_else(|| format!("<missing backend id {}>", s.backend_id));
            cells.push(format!("{backend} ({}) ({})", s.rev_nat_id, s.slot));
        }
        let name = if fe.internal_scope { format!("{}/i", fe.frontend) } else { fe.frontend.clone() };
        for (i, cell) in cells.into_iter().enumerate() {
            let first = if i == 0 { name.clone() } else { String::new() };
            rows.push(vec![first, cell]);
        }
    }
    rows
}

pub fn render(frontends: &[LbFrontend]) -> String {
    table::render(&HEADER, &rows(frontends))
}

/// Backends in the backend maps marked terminating: in no slot (no new
/// connection picks them), kept so the flows already on them drain.
pub fn terminating(dump: &LbMapsDump) -> Vec<String> {
    let is_terminating =
        |flags: u8| flags & !axon_bpf::maps::backend_state::F_LOCAL == axon_bpf::maps::backend_state::TERMINATING;
    let mut out: Vec<(u32, String)> = dump
        .backends4
        .iter()
        .filter(|(_, b)| is_terminating(b.flags))
        .map(|(id, b)| (*id, l4(b.ip().into(), b.host_port(), b.proto)))
        .chain(
            dump.backends6
                .iter()
                .filter(|(_, b)| is_terminating(b.flags))
                .map(|(id, b)| (*id, l4(b.ip().into(), b.host_port(), b.proto))),
        )
        .collect();
    out.sort();
    out.into_iter().map(|(id, b)| format!("{b} (backend {id}) (terminating)")).collect()
}

/// The frontends' table, then one row per draining backend.
pub fn render_with_terminating(frontends: &[LbFrontend], terminating: &[String]) -> String {
    let mut all = rows(frontends);
    for (i, b) in terminating.iter().enumerate() {
        let first = if i == 0 { "<draining>".to_string() } else { String::new() };
        all.push(vec![first, b.clone()]);
    }
    table::render(&HEADER, &all)
}

pub fn list(bpffs_root: &Path, output: Output) -> Result<()> {
    let dump = read_lb_maps(bpffs_root)?;
    let fes = frontends(&dump);
    match output {
        Output::Table => {
            let draining = terminating(&dump);
            crate::emit(&if draining.is_empty() { render(&fes) } else { render_with_terminating(&fes, &draining) })?
        }
        Output::Json => crate::print_json(&fes)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axon_bpf::maps::{Lb4Backend, Lb4Key, Lb6Backend, Lb6Key};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn master(rev_nat: u32, count: u16) -> LbService {
        LbService { backend_id: 0, rev_nat_index: rev_nat, count, svc_type: svc_type::CLUSTER_IP, flags: 0 }
    }

    fn slot(rev_nat: u32, backend_id: u32) -> LbService {
        LbService { backend_id, rev_nat_index: rev_nat, count: 0, svc_type: svc_type::CLUSTER_IP, flags: 0 }
    }

    #[test]
    fn master_flags_are_spelled_out() {
        let v = LbService {
            backend_id: 600,
            rev_nat_index: 4,
            count: 2,
            svc_type: svc_type::NODE_PORT,
            flags: svc_flags::NODEPORT_WILDCARD | svc_flags::MAGLEV | svc_flags::DSR | svc_flags::AFFINITY,
        };
        assert_eq!(flag_words(&v), vec!["all-node-addresses", "dsr", "maglev", "affinity=600s"]);
        let dump =
            LbMapsDump { services4: vec![(Lb4Key::new(Ipv4Addr::UNSPECIFIED, 30080, 6, 0), v)], ..Default::default() };
        let text = render(&frontends(&dump));
        assert!(
            text.contains(
                "0.0.0.0:30080/TCP   0.0.0.0:0 (4) (0) [NodePort, all-node-addresses, dsr, maglev, affinity=600s]"
            ),
            "{text}"
        );
    }

    #[test]
    fn frontends_sorted_master_first_then_slots() {
        let vip_b = Ipv4Addr::new(10, 96, 0, 20);
        let vip_a = Ipv4Addr::new(10, 96, 0, 10);
        let vip6: Ipv6Addr = "fd00::10".parse().unwrap();
        let dump = LbMapsDump {
            // Deliberately out of order: hash maps iterate in any order.
            services4: vec![
                (Lb4Key::new(vip_b, 53, 17, 1), slot(2, 12)),
                (Lb4Key::new(vip_a, 80, 6, 2), slot(1, 11)),
                (Lb4Key::new(vip_b, 53, 17, 0), master(2, 1)),
                (Lb4Key::new(vip_a, 80, 6, 0), master(1, 2)),
                (Lb4Key::new(vip_a, 80, 6, 1), slot(1, 10)),
            ],
            services6: vec![(Lb6Key::new(vip6, 80, 6, 1), slot(3, 99)), (Lb6Key::new(vip6, 80, 6, 0), master(3, 1))],
            backends4: vec![
                (10, Lb4Backend::new(Ipv4Addr::new(10, 0, 0, 2), 8080, 6, 0)),
                (11, Lb4Backend::new(Ipv4Addr::new(10, 0, 0, 3), 8080, 6, 0)),
                (12, Lb4Backend::new(Ipv4Addr::new(10, 0, 0, 4), 53, 17, 0)),
            ],
            backends6: vec![(20, Lb6Backend::new("fd00::2".parse().unwrap(), 8080, 6, 0))],
            ..Default::default()
        };
        let expected = "\
SERVICE ADDRESS     BACKEND ADDRESS (REVNAT_ID) (SLOT)
10.96.0.10:80/TCP   0.0.0.0:0 (1) (0) [ClusterIP]
                    10.0.0.2:8080/TCP (1) (1)
                    10.0.0.3:8080/TCP (1) (2)
10.96.0.20:53/UDP   0.0.0.0:0 (2) (0) [ClusterIP]
                    10.0.0.4:53/UDP (2) (1)
[fd00::10]:80/TCP   [::]:0 (3) (0) [ClusterIP]
                    <missing backend id 99> (3) (1)
";
        assert_eq!(render(&frontends(&dump)), expected);
    }

    #[test]
    fn empty_maps_print_the_header() {
        assert_eq!(
            render(&frontends(&LbMapsDump::default())),
            "SERVICE ADDRESS   BACKEND ADDRESS (REVNAT_ID) (SLOT)\n"
        );
    }
}
