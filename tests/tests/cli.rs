//! `agentctl` against a real agent: the Cilium-shaped tables, create/replace/
//! delete/apply driving real traffic, bad flags rejected with the flag named
//! on stderr and nothing changed, and `bpf lb list` reading the pinned maps
//! while the agent is down (and the datapath still serving).

use axon_lab::check::{assert_spread, show};
use axon_lab::{Agent, Lab, UdpMode};
use serde_json::Value;
use std::net::SocketAddr;

const BACKEND_PORT: u16 = 8080;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn ctl(agent: &Agent, args: &[&str]) -> axon_lab::CmdOutput {
    let out = agent.agentctl(args).expect("running agentctl");
    assert!(out.success(), "agentctl {args:?} failed:\n{out}");
    out
}

fn ctl_fails(agent: &Agent, args: &[&str]) -> axon_lab::CmdOutput {
    let out = agent.agentctl(args).expect("running agentctl");
    assert!(!out.success(), "agentctl {args:?} should fail:\n{out}");
    assert!(!out.stderr.trim().is_empty(), "agentctl {args:?} failed without a message:\n{out}");
    out
}

/// Columns of a table line: cells are separated by two or more spaces.
fn cells(line: &str) -> Vec<String> {
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
}

fn backends_flag(lab: &Lab) -> String {
    lab.backend_addrs(false, BACKEND_PORT).iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

fn ids_json(agent: &Agent) -> Vec<u64> {
    let out = ctl(agent, &["-o", "json", "service", "list"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("service list -o json: {e}\n{out}"));
    let mut ids: Vec<u64> = v.as_array().expect("a JSON array").iter().map(|s| s["id"].as_u64().expect("id")).collect();
    ids.sort();
    ids
}

#[test]
fn service_update_list_get_delete_and_apply() {
    let lab = Lab::new("cli", 3).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let agent = lab.start_agent().expect("agent");
    let backends = backends_flag(&lab);
    ctl(
        &agent,
        &[
            "service",
            "update",
            "--id",
            "7",
            "--frontend",
            "10.96.0.10:80",
            "--backends",
            &backends,
            "--type",
            "ClusterIP",
        ],
    );
    ctl(
        &agent,
        &[
            "service",
            "update",
            "--id",
            "8",
            "--frontend",
            "10.96.0.10:53/udp",
            "--backends",
            &backends,
            "--type",
            "ClusterIP",
        ],
    );
    assert_spread(&lab.tcp(addr("10.96.0.10:80"), 60).expect("tcp"), &lab.backend_names(), "tcp via agentctl service");
    assert_spread(
        &lab.udp(addr("10.96.0.10:53"), 60, UdpMode::Unconnected).expect("udp"),
        &lab.backend_names(),
        "udp via agentctl service",
    );

    let list = ctl(&agent, &["service", "list"]).stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(cells(lines[0]), ["ID", "Frontend", "Service Type", "Backend"], "header:\n{list}");
    let backend_col = lines[0].find("Backend").expect("Backend column");
    assert_eq!(
        cells(lines[1]),
        ["7", "10.96.0.10:80/TCP", "ClusterIP", "1 => 10.77.0.11:8080/TCP (active)"],
        "first row:\n{list}"
    );
    for (line, n) in lines[2..4].iter().zip(2..) {
        assert_eq!(cells(line), [format!("{n} => 10.77.0.{}:8080/TCP (active)", 10 + n)], "continuation row:\n{list}");
        assert_eq!(line.find(&format!("{n} =>")), Some(backend_col), "continuation rows sit under Backend:\n{list}");
    }
    assert_eq!(
        cells(lines[4]),
        ["8", "10.96.0.10:53/UDP", "ClusterIP", "1 => 10.77.0.11:8080/UDP (active)"],
        "udp row:\n{list}"
    );
    assert_eq!(lines.len(), 7, "two services of three backends:\n{list}");

    let get = ctl(&agent, &["service", "get", "7"]).stdout;
    assert!(
        get.contains("10.96.0.10:80/TCP") && get.contains("3 => 10.77.0.13:8080/TCP (active)"),
        "service get 7:\n{get}"
    );
    assert_eq!(ids_json(&agent), [7, 8]);

    ctl(&agent, &["service", "delete", "7"]);
    assert_eq!(ids_json(&agent), [8]);
    let tcp = lab.tcp(addr("10.96.0.10:80"), 1).expect("tcp");
    assert_eq!(tcp[0].errno, Some(libc::ENETUNREACH), "deleted through agentctl:\n{}", show(&tcp));

    let file = agent.state_dir().parent().expect("work dir").join("services.yaml");
    let yaml = "services:\n  - id: 20\n    name: default/web\n    frontend: {address: 10.96.3.3, port: 80, protocol: TCP}\n    backends:\n      - {address: 10.77.0.12, port: 8080}\n      - {address: 10.77.0.13, port: 8080}\n";
    std::fs::write(&file, yaml).expect("writing the apply file");
    ctl(&agent, &["service", "apply", "-f", file.to_str().expect("utf-8 path")]);
    assert_eq!(ids_json(&agent), [8, 20]);
    assert_spread(
        &lab.tcp(addr("10.96.3.3:80"), 40).expect("tcp"),
        &["backend-2", "backend-3"],
        "tcp via agentctl apply",
    );

    let status = ctl(&agent, &["status"]).stdout;
    assert!(!status.trim().is_empty(), "agentctl status printed nothing");
    let status_json = ctl(&agent, &["-o", "json", "status"]).stdout;
    serde_json::from_str::<Value>(&status_json).unwrap_or_else(|e| panic!("status -o json: {e}\n{status_json}"));
}

#[test]
fn bad_flags_are_rejected_with_the_flag_named_and_change_nothing() {
    let lab = Lab::new("clibad", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let agent = lab.start_agent().expect("agent");
    let backends = backends_flag(&lab);
    ctl(
        &agent,
        &[
            "service",
            "update",
            "--id",
            "7",
            "--frontend",
            "10.96.0.10:80",
            "--backends",
            &backends,
            "--type",
            "ClusterIP",
        ],
    );
    let before_list = ctl(&agent, &["-o", "json", "service", "list"]).stdout;
    let before_maps = ctl(&agent, &["-o", "json", "bpf", "lb", "list"]).stdout;
    let too_many: String =
        (0..4097).map(|i| format!("10.78.{}.{}:8080", i / 250, i % 250 + 1)).collect::<Vec<_>>().join(",");

    let update = |frontend: &str, backends: &str| -> Vec<String> {
        ["service", "update", "--id", "9", "--frontend", frontend, "--backends", backends, "--type", "ClusterIP"]
            .map(String::from)
            .to_vec()
    };
    // (what, args, words one of which stderr must contain: the flag or field to blame)
    let cases: Vec<(&str, Vec<String>, &[&str])> = vec![
        ("bad frontend IP", update("10.96.0.300:80", &backends), &["--frontend"]),
        ("frontend port 0", update("10.96.0.11:0", &backends), &["--frontend"]),
        ("frontend port 65536", update("10.96.0.11:65536", &backends), &["--frontend"]),
        ("unknown protocol", update("10.96.0.11:80/sctp", &backends), &["--frontend"]),
        ("bad backend", update("10.96.0.11:80", "10.77.0.11:0"), &["--backends"]),
        ("duplicate frontend", update("10.96.0.10:80", &backends), &["frontend"]),
        ("too many backends", update("10.96.0.11:80", &too_many), &["backends"]),
        (
            "unknown type",
            [
                "service",
                "update",
                "--id",
                "9",
                "--frontend",
                "10.96.0.11:80",
                "--backends",
                &backends,
                "--type",
                "Mesh",
            ]
            .map(String::from)
            .to_vec(),
            &["--type"],
        ),
        ("get unknown id", ["service", "get", "999"].map(String::from).to_vec(), &["999"]),
        ("delete unknown id", ["service", "delete", "999"].map(String::from).to_vec(), &["999"]),
    ];
    for (what, args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl_fails(&agent, &args);
        let stderr = out.stderr.to_lowercase();
        assert!(words.iter().any(|w| stderr.contains(w)), "{what}: stderr names none of {words:?}:\n{out}");
        assert_eq!(ctl(&agent, &["-o", "json", "service", "list"]).stdout, before_list, "{what}: service list changed");
        assert_eq!(ctl(&agent, &["-o", "json", "bpf", "lb", "list"]).stdout, before_maps, "{what}: maps changed");
    }
}

#[test]
fn bpf_lb_list_reads_the_pinned_maps_while_the_agent_is_down() {
    let lab = Lab::new("clilb", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let mut agent = lab.start_agent().expect("agent");
    let backends = backends_flag(&lab);
    ctl(
        &agent,
        &[
            "service",
            "update",
            "--id",
            "7",
            "--frontend",
            "10.96.0.10:80",
            "--backends",
            &backends,
            "--type",
            "ClusterIP",
        ],
    );
    ctl(
        &agent,
        &[
            "service",
            "update",
            "--id",
            "8",
            "--frontend",
            "[fd96::10]:53/udp",
            "--backends",
            "[fd77::b]:8080",
            "--type",
            "ClusterIP",
        ],
    );
    let running = ctl(&agent, &["bpf", "lb", "list"]).stdout;
    agent.stop().expect("SIGTERM");

    let out = ctl(&agent, &["bpf", "lb", "list"]).stdout;
    assert_eq!(out, running, "the table must not depend on the agent");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(cells(lines[0]), ["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"], "header:\n{out}");
    let master = lines
        .iter()
        .position(|l| l.starts_with("10.96.0.10:80/TCP"))
        .unwrap_or_else(|| panic!("no 10.96.0.10:80/TCP row:\n{out}"));
    assert!(lines[master].contains("(0)") && lines[master].contains("[ClusterIP]"), "master slot row:\n{out}");
    for (slot, backend) in lab.backend_addrs(false, BACKEND_PORT).iter().enumerate() {
        let row = lines[master + 1 + slot];
        assert!(row.starts_with(' '), "backend rows continue the service:\n{out}");
        assert!(
            row.contains(&format!("{backend}/TCP")) && row.trim_end().ends_with(&format!("({})", slot + 1)),
            "slot {}:\n{out}",
            slot + 1
        );
    }
    assert!(out.contains("[fd96::10]:53/UDP") && out.contains("[fd77::b]:8080/UDP"), "IPv6 service:\n{out}");
    let json = ctl(&agent, &["-o", "json", "bpf", "lb", "list"]).stdout;
    serde_json::from_str::<Value>(&json).unwrap_or_else(|e| panic!("bpf lb list -o json: {e}\n{json}"));

    // Still serving with the agent down, and the API is plainly unreachable.
    assert_spread(&lab.tcp(addr("10.96.0.10:80"), 30).expect("tcp"), &lab.backend_names(), "tcp with the agent down");
    let down = ctl_fails(&agent, &["service", "list"]);
    assert_eq!(down.stderr.trim().lines().count(), 1, "one line when the agent is unreachable:\n{down}");
}
