//! ClusterIP through the socket-LB, end to end: real TCP and UDP from the
//! client namespace to a VIP, translated in the client's cgroup to backends in
//! other namespaces. Every check reads the backends' answers, never just an
//! exit code.

use axon_api::Protocol;
use axon_lab::check::{answers, assert_all_ok, assert_each, assert_spread, show, spec};
use axon_lab::{Agent, Lab, UdpMode};
use std::net::SocketAddr;

const BACKEND_PORT: u16 = 8080;
/// Enough that 3 backends chosen at random all answer: P(miss) ≈ 3·(2/3)^60 ≈ 1e-10.
const SPREAD_REQUESTS: u32 = 60;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A lab with `n` backends serving on [`BACKEND_PORT`] and a running agent.
fn setup(label: &str, n: usize) -> (Lab, Vec<axon_lab::BackendServer>, Agent) {
    let lab = Lab::new(label, n).expect("lab");
    let servers = lab.serve_all(BACKEND_PORT).expect("backend servers");
    let agent = lab.start_agent().expect("agent");
    (lab, servers, agent)
}

/// TCP, connected UDP and unconnected UDP through `vip_tcp`/`vip_udp` reach
/// every backend, and the client only ever sees the VIP.
fn check_spread(lab: &Lab, vip_tcp: SocketAddr, vip_udp: SocketAddr) {
    let names = lab.backend_names();
    let tcp = lab.tcp(vip_tcp, SPREAD_REQUESTS).expect("tcp client");
    assert_spread(&tcp, &names, &format!("tcp {vip_tcp}"));
    assert_each(&tcp, "getpeername (tcp)", |a| a.peer.as_ref(), &vip_tcp.to_string());

    let udp = lab.udp(vip_udp, SPREAD_REQUESTS, UdpMode::Connected).expect("udp client");
    assert_spread(&udp, &names, &format!("connected udp {vip_udp}"));
    assert_each(&udp, "getpeername (connected udp)", |a| a.peer.as_ref(), &vip_udp.to_string());
    assert_each(&udp, "reply source (connected udp)", |a| a.from.as_ref(), &vip_udp.to_string());

    let udp = lab.udp(vip_udp, SPREAD_REQUESTS, UdpMode::Unconnected).expect("udp client");
    assert_spread(&udp, &names, &format!("unconnected udp {vip_udp}"));
    assert_each(&udp, "reply source (unconnected udp)", |a| a.from.as_ref(), &vip_udp.to_string());
}

#[test]
fn ipv4_vip_spreads_tcp_and_udp_over_every_backend() {
    let (lab, _servers, agent) = setup("spread4", 3);
    let backends = lab.backend_addrs(false, BACKEND_PORT);
    let (vip_tcp, vip_udp) = (addr("10.96.0.10:80"), addr("10.96.0.10:53"));
    agent.create_service(&spec("default/web", vip_tcp, Protocol::Tcp, &backends)).expect("create tcp service");
    agent.create_service(&spec("default/dns", vip_udp, Protocol::Udp, &backends)).expect("create udp service");
    check_spread(&lab, vip_tcp, vip_udp);
}

#[test]
fn ipv6_vip_spreads_tcp_and_udp_over_ipv6_backends() {
    let (lab, _servers, agent) = setup("spread6", 3);
    let backends = lab.backend_addrs(true, BACKEND_PORT);
    let (vip_tcp, vip_udp) = (addr("[fd96::10]:80"), addr("[fd96::10]:53"));
    agent.create_service(&spec("default/web6", vip_tcp, Protocol::Tcp, &backends)).expect("create tcp service");
    agent.create_service(&spec("default/dns6", vip_udp, Protocol::Udp, &backends)).expect("create udp service");
    check_spread(&lab, vip_tcp, vip_udp);
}

#[test]
fn ipv4_service_is_reachable_from_an_ipv6_socket_through_the_v4_mapped_vip() {
    let (lab, _servers, agent) = setup("mapped", 3);
    let backends = lab.backend_addrs(false, BACKEND_PORT);
    agent
        .create_service(&spec("default/web", addr("10.96.0.10:80"), Protocol::Tcp, &backends))
        .expect("create tcp service");
    agent
        .create_service(&spec("default/dns", addr("10.96.0.10:53"), Protocol::Udp, &backends))
        .expect("create udp service");
    check_spread(&lab, addr("[::ffff:10.96.0.10]:80"), addr("[::ffff:10.96.0.10]:53"));
}

#[test]
fn streams_through_the_vip_arrive_intact() {
    let (lab, _servers, agent) = setup("echo", 2);
    let vip = addr("10.96.0.10:80");
    agent
        .create_service(&spec("default/echo", vip, Protocol::Tcp, &lab.backend_addrs(false, BACKEND_PORT)))
        .expect("create");
    let echo = lab.tcp_echo(vip, 8, 256 * 1024).expect("echo client");
    assert_all_ok(&echo, "echo through the VIP");
    assert!(echo.iter().all(|a| a.echo_ok == Some(true)), "corrupted echo:\n{}", show(&echo));
}

#[test]
fn updated_backends_take_effect_for_new_connections() {
    let (lab, _servers, agent) = setup("update", 3);
    let all = lab.backend_addrs(false, BACKEND_PORT);
    let (vip_tcp, vip_udp) = (addr("10.96.0.10:80"), addr("10.96.0.10:53"));
    let tcp_svc = agent.create_service(&spec("default/web", vip_tcp, Protocol::Tcp, &all[..2])).expect("create tcp");
    let udp_svc = agent.create_service(&spec("default/dns", vip_udp, Protocol::Udp, &all[..2])).expect("create udp");
    assert_spread(&lab.tcp(vip_tcp, SPREAD_REQUESTS).expect("tcp"), &["backend-1", "backend-2"], "tcp before update");
    assert_spread(
        &lab.udp(vip_udp, SPREAD_REQUESTS, UdpMode::Unconnected).expect("udp"),
        &["backend-1", "backend-2"],
        "udp before update",
    );

    // backend-1 out, backend-3 in.
    agent.put_service(tcp_svc.id, &spec("default/web", vip_tcp, Protocol::Tcp, &all[1..])).expect("update tcp");
    agent.put_service(udp_svc.id, &spec("default/dns", vip_udp, Protocol::Udp, &all[1..])).expect("update udp");
    let want = ["backend-2", "backend-3"];
    assert_spread(&lab.tcp(vip_tcp, SPREAD_REQUESTS).expect("tcp"), &want, "tcp after update");
    assert_spread(
        &lab.udp(vip_udp, SPREAD_REQUESTS, UdpMode::Connected).expect("udp"),
        &want,
        "connected udp after update",
    );
    assert_spread(
        &lab.udp(vip_udp, SPREAD_REQUESTS, UdpMode::Unconnected).expect("udp"),
        &want,
        "unconnected udp after update",
    );

    // Down to one backend: only it answers.
    agent.put_service(tcp_svc.id, &spec("default/web", vip_tcp, Protocol::Tcp, &all[2..])).expect("shrink tcp");
    assert_spread(&lab.tcp(vip_tcp, 20).expect("tcp"), &["backend-3"], "tcp with one backend");
}

#[test]
fn deleted_service_is_no_longer_translated() {
    let (lab, _servers, agent) = setup("delete", 2);
    let backends = lab.backend_addrs(false, BACKEND_PORT);
    let (vip_tcp, vip_udp) = (addr("10.96.0.10:80"), addr("10.96.0.10:53"));
    let tcp_svc = agent.create_service(&spec("default/web", vip_tcp, Protocol::Tcp, &backends)).expect("create tcp");
    let udp_svc = agent.create_service(&spec("default/dns", vip_udp, Protocol::Udp, &backends)).expect("create udp");
    assert_all_ok(&lab.tcp(vip_tcp, 4).expect("tcp"), "tcp before delete");
    assert_all_ok(&lab.udp(vip_udp, 4, UdpMode::Connected).expect("udp"), "udp before delete");

    agent.delete_service(tcp_svc.id).expect("delete tcp");
    agent.delete_service(udp_svc.id).expect("delete udp");
    // The client has no route out of the lab: an untranslated VIP fails locally.
    let tcp = lab.tcp(vip_tcp, 3).expect("tcp");
    assert!(tcp.iter().all(|a| !a.ok && a.errno == Some(libc::ENETUNREACH)), "tcp after delete:\n{}", show(&tcp));
    for mode in [UdpMode::Connected, UdpMode::Unconnected] {
        let udp = lab.udp(vip_udp, 3, mode).expect("udp");
        assert!(
            udp.iter().all(|a| !a.ok && a.errno == Some(libc::ENETUNREACH)),
            "udp {mode:?} after delete:\n{}",
            show(&udp)
        );
    }
    assert!(agent.list_services().expect("list").is_empty());
}

#[test]
fn service_without_backends_fails_fast() {
    let (lab, _servers, agent) = setup("zero", 1);
    let (vip_tcp, vip_udp, vip6) = (addr("10.96.0.20:80"), addr("10.96.0.20:53"), addr("[fd96::20]:80"));
    agent.create_service(&spec("default/empty", vip_tcp, Protocol::Tcp, &[])).expect("create tcp");
    agent.create_service(&spec("default/empty-dns", vip_udp, Protocol::Udp, &[])).expect("create udp");
    agent.create_service(&spec("default/empty6", vip6, Protocol::Tcp, &[])).expect("create tcp6");
    let fast = |attempts: &[axon_lab::Attempt], what: &str| {
        assert!(
            attempts.iter().all(|a| !a.ok && a.error.is_some() && a.micros < 1_000_000),
            "{what}: expected an error in < 1 s:\n{}",
            show(attempts)
        );
    };
    fast(&lab.tcp(vip_tcp, 3).expect("tcp"), "tcp");
    fast(&lab.tcp(vip6, 3).expect("tcp6"), "tcp6");
    fast(&lab.udp(vip_udp, 3, UdpMode::Connected).expect("udp"), "connected udp");
    fast(&lab.udp(vip_udp, 3, UdpMode::Unconnected).expect("udp"), "unconnected udp");
    let tcp = lab.tcp(vip_tcp, 1).expect("tcp");
    assert_eq!(tcp[0].stage.as_deref(), Some("connect"), "the connect() itself must fail: {tcp:?}");
    assert!(answers(&tcp).is_empty());
}
