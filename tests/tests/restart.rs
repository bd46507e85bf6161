//! The agent going away must not take the service with it: programs and maps
//! stay pinned and keep translating while the agent is stopped (SIGTERM) or
//! killed (SIGKILL), and a new agent picks up the pinned state and its store
//! without a gap, with the same service ids.

use axon_api::{Protocol, Service};
use axon_lab::check::{assert_spread, spec};
use axon_lab::{Agent, Lab, UdpMode};
use std::net::SocketAddr;
use std::time::Duration;

const BACKEND_PORT: u16 = 8080;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn sorted(mut services: Vec<Service>) -> Vec<Service> {
    services.sort_by_key(|s| s.id);
    services
}

/// Entries per pinned map: a restart must neither leak nor lose any.
fn map_sizes(agent: &Agent) -> [usize; 6] {
    let d = agent.lb_maps().expect("pinned maps");
    [d.services4.len(), d.services6.len(), d.backends4.len(), d.backends6.len(), d.rev_nat4.len(), d.rev_nat6.len()]
}

#[test]
fn restarts_under_continuous_load_lose_no_connection() {
    let lab = Lab::new("reload", 3).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let mut agent = lab.start_agent().expect("agent");
    let vip = addr("10.96.0.10:80");
    agent
        .create_service(&spec("default/web", vip, Protocol::Tcp, &lab.backend_addrs(false, BACKEND_PORT)))
        .expect("create");

    let pause = Duration::from_millis(600);
    let load = lab.spawn_load(vip, Duration::from_secs(7), Duration::from_millis(5)).expect("load client");
    std::thread::sleep(pause);
    agent.stop().expect("SIGTERM");
    std::thread::sleep(pause); // serving with no agent at all
    agent.start_again().expect("start after SIGTERM");
    std::thread::sleep(pause);
    agent.kill().expect("SIGKILL");
    std::thread::sleep(pause);
    agent.start_again().expect("start after SIGKILL");
    let summary = load.wait().expect("load run").summary().expect("summary");

    assert_eq!(summary.failed, 0, "failed connections during restarts: {summary:#?}\nagent log:\n{}", agent.log());
    assert!(summary.ok >= 200, "too few connections to mean anything: {summary:#?}");
    let names: Vec<&str> = summary.answers.keys().map(String::as_str).collect();
    assert_eq!(names, lab.backend_names(), "every backend keeps answering: {summary:#?}");
}

#[test]
fn state_survives_sigterm_and_sigkill() {
    let lab = Lab::new("state", 3).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let mut agent = lab.start_agent().expect("agent");
    let b4 = lab.backend_addrs(false, BACKEND_PORT);
    let b6 = lab.backend_addrs(true, BACKEND_PORT);
    let (vip_tcp, vip_udp6) = (addr("10.96.0.10:80"), addr("[fd96::10]:53"));

    let mut fixed = spec("default/web", vip_tcp, Protocol::Tcp, &b4);
    fixed.id = Some(7);
    agent.put_service(7, &fixed).expect("put id 7");
    agent.create_service(&spec("default/dns6", vip_udp6, Protocol::Udp, &b6)).expect("create udp6");
    agent
        .apply(vec![
            spec("default/a", addr("10.96.1.1:80"), Protocol::Tcp, &b4[..1]),
            spec("default/b", addr("[fd96::1:1]:443"), Protocol::Tcp, &b6[1..]),
        ])
        .expect("apply");
    let before = sorted(agent.list_services().expect("list"));
    assert_eq!(before.len(), 4);
    assert!(before.iter().any(|s| s.id == 7));
    let sizes = map_sizes(&agent);

    let names = lab.backend_names();
    for how in ["SIGTERM", "SIGKILL"] {
        match how {
            "SIGTERM" => agent.restart().expect("restart after SIGTERM"),
            _ => agent.restart_killed().expect("restart after SIGKILL"),
        }
        assert_eq!(sorted(agent.list_services().expect("list")), before, "services after {how}");
        assert_eq!(map_sizes(&agent), sizes, "pinned map entries after {how}");
        assert_spread(&lab.tcp(vip_tcp, 45).expect("tcp"), &names, &format!("tcp after {how}"));
        assert_spread(&lab.udp(vip_udp6, 45, UdpMode::Unconnected).expect("udp"), &names, &format!("udp6 after {how}"));
    }

    // The restarted agent still allocates fresh ids and applies changes.
    let new = agent
        .create_service(&spec("default/new", addr("10.96.2.2:80"), Protocol::Tcp, &b4[2..]))
        .expect("create after restarts");
    assert!(before.iter().all(|s| s.id != new.id), "id {} reused while still taken", new.id);
    fixed.backends.truncate(1);
    agent.put_service(7, &fixed).expect("update after restarts");
    assert_spread(&lab.tcp(vip_tcp, 10).expect("tcp"), &["backend-1"], "tcp after update");
    assert_spread(&lab.tcp(addr("10.96.2.2:80"), 5).expect("tcp"), &["backend-3"], "new service");
}

#[test]
fn kill_during_bulk_apply_leaves_all_or_nothing() {
    let lab = Lab::new("crash", 1).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let mut agent = lab.start_agent().expect("agent");
    let backend = lab.backend_addrs(false, BACKEND_PORT);
    agent.create_service(&spec("default/base", addr("10.96.0.10:80"), Protocol::Tcp, &backend)).expect("create");
    let mut expected = sorted(agent.list_services().expect("list"));

    for (round, delay_ms) in [5u64, 30, 120].into_iter().enumerate() {
        let batch: Vec<_> = (0..1000u32)
            .map(|i| {
                spec(
                    &format!("bulk/{round}-{i}"),
                    addr(&format!("10.97.{round}.{}:{}", i % 250 + 1, 1000 + i)),
                    Protocol::Tcp,
                    &backend,
                )
            })
            .collect();
        let client = agent.api().clone();
        let apply = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(client.apply(batch)).map(|s| s.len())
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill().expect("SIGKILL mid-apply");
        let answered = apply.join().expect("apply thread");
        agent.start_again().expect("start after SIGKILL");

        let now = sorted(agent.list_services().expect("list"));
        let added = now.len() - expected.len().min(now.len());
        assert!(
            now.starts_with(&expected) && (added == 0 || added == 1000),
            "round {round}: not all-or-nothing: {} services before, {} after (apply answered {answered:?})",
            expected.len(),
            now.len()
        );
        if answered.is_ok() {
            assert_eq!(added, 1000, "round {round}: an acknowledged apply was lost");
        }
        // The maps hold exactly what the store holds: a master slot plus one slot per backend.
        let maps = agent.lb_maps().expect("maps");
        let slots: usize = now.iter().map(|s| 1 + s.backends.len()).sum();
        assert_eq!(maps.services4.len(), slots, "round {round}: service slots vs store");
        assert_eq!(maps.rev_nat4.len(), now.len(), "round {round}: rev-NAT entries vs store");
        assert_spread(&lab.tcp(addr("10.96.0.10:80"), 3).expect("tcp"), &["backend-1"], "base service after the crash");
        if let Some(last) = now.last().filter(|_| added > 0) {
            assert_spread(
                &lab.tcp(last.frontend.socket_addr(), 2).expect("tcp"),
                &["backend-1"],
                "applied service after the crash",
            );
        }
        expected = now;
    }
}

#[test]
fn pinned_entries_nothing_wants_are_removed_on_start() {
    let lab = Lab::new("orphan", 1).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let mut agent = lab.start_agent().expect("agent");
    let vip = addr("10.96.0.10:80");
    agent
        .create_service(&spec("default/web", vip, Protocol::Tcp, &lab.backend_addrs(false, BACKEND_PORT)))
        .expect("create");
    agent
        .create_service(&spec(
            "default/web6",
            addr("[fd96::10]:80"),
            Protocol::Tcp,
            &lab.backend_addrs(true, BACKEND_PORT),
        ))
        .expect("create6");
    assert_spread(&lab.tcp(vip, 3).expect("tcp"), &["backend-1"], "before");

    // Forget the desired state but keep the pins: everything pinned is now an orphan.
    agent.stop().expect("SIGTERM");
    std::fs::remove_dir_all(agent.state_dir()).expect("removing the state dir");
    std::fs::create_dir_all(agent.state_dir()).expect("recreating the state dir");
    agent.start_again().expect("start on an empty store");

    assert!(agent.list_services().expect("list").is_empty());
    assert_eq!(map_sizes(&agent), [0; 6], "orphaned map entries survived the start");
    let tcp = lab.tcp(vip, 1).expect("tcp");
    assert_eq!(tcp[0].errno, Some(libc::ENETUNREACH), "orphan still translated: {tcp:?}");
}
