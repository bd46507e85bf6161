//! `agentctl bpf ct list` and `agentctl bpf ct flush`: the north-south
//! conntrack maps read and emptied directly through their pins, so both work
//! while the agent is down. One line per entry, like `cilium bpf ct list
//! global`: protocol, direction, the key's tuple, expiry, counters, and the
//! translation the entry carries.

use crate::Output;
use anyhow::Result;
use axon_api::Protocol;
use axon_bpf::maps::ct;
use axon_bpf::pinned::{flush_ct, read_ct, CtEntryView};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;

/// One entry as printed and as `-o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtRow {
    /// `TCP`, `UDP`, or `proto-N`.
    pub proto: String,
    /// `service` (keyed as the client's packet arrives) or `reply` (keyed as
    /// the backend's reply arrives).
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// CLOCK_MONOTONIC seconds.
    pub expires: u32,
    /// Seconds left (negative: expired, waiting for the agent's GC).
    pub expires_in: i64,
    /// TCP only: `SYN`, `EST`, `CLOSING`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
    pub flags: Vec<&'static str>,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    /// The source the backend sees, when the flow is source-NATed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<SocketAddr>,
}

fn proto_name(proto: u8) -> String {
    match Protocol::from_number(proto) {
        Some(p) => p.to_string(),
        None => format!("proto-{proto}"),
    }
}

fn flag_names(flags: u8) -> Vec<&'static str> {
    [(ct::F_SNAT, "SNAT"), (ct::F_DSR, "DSR"), (ct::F_LOCAL, "LOCAL"), (ct::F_DSR_BACKEND, "DSR_BACKEND")]
        .into_iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
        .collect()
}

fn tcp_state(proto: u8, state: u8) -> Option<&'static str> {
    if proto != 6 {
        return None;
    }
    Some(match state {
        ct::TCP_SYN => "SYN",
        ct::TCP_EST => "EST",
        ct::TCP_CLOSING => "CLOSING",
        _ => "NONE",
    })
}

/// The rows of `entries` at `now` (CLOCK_MONOTONIC seconds), sorted by
/// tuple (IPv4 first), service direction before reply.
pub fn rows(entries: &[CtEntryView], now: u64) -> Vec<CtRow> {
    let mut sorted: Vec<&CtEntryView> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.src.is_ipv6(), e.src, e.dst, e.proto, e.dir));
    sorted
        .into_iter()
        .map(|e| CtRow {
            proto: proto_name(e.proto),
            direction: if e.dir == ct::DIR_REPLY { "reply" } else { "service" },
            src: e.src,
            dst: e.dst,
            expires: e.expires,
            expires_in: i64::from(e.expires) - now as i64,
            state: tcp_state(e.proto, e.tcp_state),
            packets: e.packets,
            bytes: e.bytes,
            flags: flag_names(e.flags),
            rev_nat_id: e.rev_nat_index,
            backend_id: e.backend_id,
            client: e.client,
            frontend: e.frontend,
            backend: e.backend,
            nat: (e.flags & ct::F_SNAT != 0).then_some(e.nat),
        })
        .collect()
}

/// One line per row.
pub fn render(rows: &[CtRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let dir = if r.direction == "reply" { "REPLY" } else { "SVC" };
        let expires = if r.expires_in >= 0 {
            format!("expires={} (in {}s)", r.expires, r.expires_in)
        } else {
            format!("expires={} (expired {}s ago)", r.expires, -r.expires_in)
        };
        let state = r.state.map(|s| format!(" state={s}")).unwrap_or_default();
        let flags = if r.flags.is_empty() { "none".to_string() } else { r.flags.join(",") };
        let nat = r.nat.map(|n| format!(" nat={n}")).unwrap_or_default();
        out.push_str(&format!(
            "{} {dir} {} -> {} {expires}{state} packets={} bytes={} flags={flags} revnat={} backend_id={} client={} frontend={} backend={}{nat}\n",
            r.proto, r.src, r.dst, r.packets, r.bytes, r.rev_nat_id, r.backend_id, r.client, r.frontend, r.backend
        ));
    }
    out
}

/// Seconds of CLOCK_MONOTONIC, the clock the datapath stamps `expires` with.
fn monotonic_secs() -> u64 {
    // SAFETY: clock_gettime only writes into the zeroed struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64
}

pub fn list(bpffs_root: &Path, output: Output) -> Result<()> {
    let entries = read_ct(bpffs_root)?;
    let rows = rows(&entries, monotonic_secs());
    match output {
        Output::Table => crate::emit(&render(&rows)),
        Output::Json => crate::print_json(&rows),
    }
}

#[derive(Debug, Serialize)]
struct Flushed {
    flushed: u64,
}

pub fn flush(bpffs_root: &Path, output: Output) -> Result<()> {
    let flushed = flush_ct(bpffs_root)?;
    match output {
        Output::Table => crate::emit(&format!("Flushed {flushed} entries from the conntrack maps\n")),
        Output::Json => crate::print_json(&Flushed { flushed }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(src: &str, dst: &str, dir: u8) -> CtEntryView {
        let zero = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        CtEntryView {
            proto: 6,
            dir,
            src: sa(src),
            dst: sa(dst),
            expires: 1000,
            rev_nat_index: 3,
            backend_id: 7,
            client: zero,
            frontend: zero,
            backend: zero,
            nat: zero,
            flags: 0,
            tcp_state: ct::TCP_EST,
            packets: 10,
            bytes: 1500,
        }
    }

    #[test]
    fn snat_flow_both_directions() {
        let translation = |mut e: CtEntryView| {
            e.client = sa("10.77.0.2:41234");
            e.frontend = sa("10.77.0.20:30080");
            e.backend = sa("10.81.2.10:8080");
            e.nat = sa("10.77.0.20:61001");
            e.flags = ct::F_SNAT;
            e
        };
        let reply = translation(entry("10.81.2.10:8080", "10.77.0.20:61001", ct::DIR_REPLY));
        let service = translation(entry("10.77.0.2:41234", "10.77.0.20:30080", ct::DIR_SERVICE));
        let out = render(&rows(&[reply, service], 940));
        assert_eq!(
            out,
            "TCP SVC 10.77.0.2:41234 -> 10.77.0.20:30080 expires=1000 (in 60s) state=EST packets=10 bytes=1500 \
             flags=SNAT revnat=3 backend_id=7 client=10.77.0.2:41234 frontend=10.77.0.20:30080 \
             backend=10.81.2.10:8080 nat=10.77.0.20:61001\n\
             TCP REPLY 10.81.2.10:8080 -> 10.77.0.20:61001 expires=1000 (in 60s) state=EST packets=10 bytes=1500 \
             flags=SNAT revnat=3 backend_id=7 client=10.77.0.2:41234 frontend=10.77.0.20:30080 \
             backend=10.81.2.10:8080 nat=10.77.0.20:61001\n"
        );
    }

    #[test]
    fn udp_dsr_ipv6_expired_and_sorted_after_ipv4() {
        let mut v6 = entry("[fd00::2]:5353", "[fd00::20]:30053", ct::DIR_SERVICE);
        v6.proto = 17;
        v6.tcp_state = ct::TCP_NONE;
        v6.flags = ct::F_DSR | ct::F_LOCAL;
        v6.expires = 90;
        let v4 = entry("10.0.0.1:1", "10.0.0.2:2", ct::DIR_SERVICE);
        let rows = rows(&[v6, v4], 100);
        assert_eq!(rows[0].src, sa("10.0.0.1:1"));
        assert_eq!((rows[1].state, rows[1].nat, rows[1].expires_in), (None, None, -10));
        let text = render(&rows[1..]);
        assert!(text.starts_with("UDP SVC [fd00::2]:5353 -> [fd00::20]:30053 expires=90 (expired 10s ago) packets=10"));
        assert!(text.contains(" flags=DSR,LOCAL "), "{text}");
        assert!(!text.contains(" nat="), "{text}");
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["direction"], "service");
        assert_eq!(json["flags"], serde_json::json!(["DSR", "LOCAL"]));
        assert!(json.get("nat").is_none() && json.get("state").is_none());
    }

    #[test]
    fn no_entries_no_lines() {
        assert_eq!(render(&rows(&[], 5)), "");
    }
}
