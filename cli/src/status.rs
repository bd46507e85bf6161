//! `agentctl status`: a human summary of the agent's `GET /v1/status`.

use crate::table;
use crate::Output;
use anyhow::Result;
use axon_api::{Client, Status};
use std::fmt::Write;

/// `3723` → `1h2m3s`.
pub fn format_uptime(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h{m}m"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn indented(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The whole summary; `client_version` is agentctl's own.
/// `eth0 (10.0.0.1, fd00::1; tcx, xdp native)`, or what it means when empty.
fn devices_line(st: &Status) -> String {
    if st.devices.is_empty() {
        return "none (socket-LB only)".into();
    }
    st.devices
        .iter()
        .map(|d| {
            let addrs: Vec<&str> = [d.ipv4.as_deref(), d.ipv6.as_deref()].into_iter().flatten().collect();
            let xdp = d.xdp.as_deref().map(|m| format!(", xdp {m}")).unwrap_or_default();
            format!("{} ({}; {}{xdp})", d.name, addrs.join(", "), d.tc)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn node_addresses_line(st: &Status) -> String {
    if st.node_addresses.is_empty() {
        return "-".into();
    }
    st.node_addresses.iter().map(|a| a.address.as_str()).collect::<Vec<_>>().join(", ")
}

pub fn render(st: &Status, client_version: &str) -> String {
    let features = st.kernel.features.iter().map(|(k, v)| format!("{k}={}", yes_no(*v))).collect::<Vec<_>>().join(" ");
    let head: Vec<Vec<String>> = [
        ("agentctl:", client_version.to_string()),
        ("Axon agent:", format!("{} (up {})", st.version, format_uptime(st.uptime_seconds))),
        ("Kernel:", format!("{} {features}", st.kernel.release).trim_end().to_string()),
        ("Service source:", st.source.clone()),
        ("Services:", format!("{} services, {} backends", st.services, st.backends)),
        ("API socket:", st.api_socket.clone()),
        ("BPF fs root:", st.bpffs_root.clone()),
        ("Cgroup root:", st.cgroup_root.clone()),
        ("State dir:", st.state_dir.clone()),
        ("Devices:", devices_line(st)),
        ("Node addresses:", node_addresses_line(st)),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect();
    let mut out = String::new();
    out.push_str(&table::render_rows(&head));

    let programs: Vec<Vec<String>> = st
        .programs
        .iter()
        .map(|p| {
            let id = p.program_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            vec![p.name.clone(), p.attach_type.clone(), p.attached_to.clone(), id, p.link_pin.clone()]
        })
        .collect();
    let _ = writeln!(out, "Programs: {} attached", st.programs.len());
    if !programs.is_empty() {
        out.push_str(&indented(&table::render(&["PROGRAM", "HOOK", "ATTACHED TO", "ID", "LINK PIN"], &programs)));
    }

    let maps: Vec<Vec<String>> = st
        .maps
        .iter()
        .map(|m| vec![m.name.clone(), format!("{}/{}", m.entries, m.max_entries), m.pin.clone()])
        .collect();
    let _ = writeln!(out, "Maps: {}", st.maps.len());
    if !maps.is_empty() {
        out.push_str(&indented(&table::render(&["MAP", "ENTRIES/MAX", "PIN"], &maps)));
    }

    let counters: Vec<Vec<String>> = st.counters.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect();
    let _ = writeln!(out, "Counters:");
    if !counters.is_empty() {
        out.push_str(&indented(&table::render(&["COUNTER", "VALUE"], &counters)));
    }
    out
}

pub async fn show(client: &Client, output: Output) -> Result<()> {
    let st = client.status().await?;
    match output {
        Output::Table => crate::emit(&render(&st, env!("CARGO_PKG_VERSION")))?,
        Output::Json => crate::print_json(&st)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axon_api::status::{KernelStatus, MapStatus, ProgramStatus};

    #[test]
    fn uptime_reads_like_cilium() {
        assert_eq!(format_uptime(5), "5s");
        assert_eq!(format_uptime(125), "2m5s");
        assert_eq!(format_uptime(3_723), "1h2m3s");
        assert_eq!(format_uptime(90_000), "1d1h0m");
    }

    #[test]
    fn summary_shows_programs_maps_and_counters() {
        let st = Status {
            version: "0.1.0".into(),
            uptime_seconds: 61,
            bpffs_root: "/sys/fs/bpf/axon".into(),
            cgroup_root: "/sys/fs/cgroup/unified".into(),
            api_socket: "/run/axon/agent.sock".into(),
            state_dir: "/var/lib/axon".into(),
            source: "embedded store".into(),
            services: 1,
            backends: 3,
            programs: vec![ProgramStatus {
                name: "sock4_connect".into(),
                attach_type: "cgroup/connect4".into(),
                attached_to: "/sys/fs/cgroup/unified".into(),
                link_pin: "/sys/fs/bpf/axon/links/connect4".into(),
                program_id: Some(42),
            }],
            maps: vec![MapStatus {
                name: "axon_lb4_services".into(),
                pin: "/sys/fs/bpf/axon/maps/axon_lb4_services".into(),
                entries: 4,
                max_entries: 65536,
            }],
            kernel: KernelStatus {
                release: "6.18.0".into(),
                features: [("bpf_link".to_string(), true)].into_iter().collect(),
            },
            counters: [("sock_xlate_fwd".to_string(), 30)].into_iter().collect(),
            devices: vec![axon_api::status::DeviceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mac: "02:00:00:00:00:01".into(),
                ipv4: Some("10.77.0.20".into()),
                ipv6: None,
                tc: "tcx".into(),
                xdp: Some("generic".into()),
            }],
            node_addresses: vec![],
        };
        let out = render(&st, "0.1.0");
        assert!(out.starts_with("agentctl:         0.1.0\nAxon agent:       0.1.0 (up 1m1s)\n"), "{out}");
        assert!(out.contains("Kernel:           6.18.0 bpf_link=yes\n"), "{out}");
        assert!(
            out.contains(
                "  sock4_connect   cgroup/connect4   /sys/fs/cgroup/unified   42   /sys/fs/bpf/axon/links/connect4\n"
            ),
            "{out}"
        );
        assert!(out.contains("  axon_lb4_services   4/65536       /sys/fs/bpf/axon/maps/axon_lb4_services\n"), "{out}");
        assert!(out.contains("  sock_xlate_fwd   30\n"), "{out}");
    }
}
