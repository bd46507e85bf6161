//! North-south load balancing end to end, with nothing of the agent.
//!
//! Each test builds the lab of `nodeport_lab` (client, a node with a local
//! backend, a remote node with its own backend, on a shared segment), loads
//! nodeport.o (and xdp.o) for both nodes with maps pinned in private bpffs
//! directories, writes axon_config/devices/node_addrs and the services by
//! hand, attaches tc (TCX) and, per test, XDP in generic or native mode to
//! the node's eth0, and pushes real TCP and UDP through:
//!
//!  - NodePort via the wildcard entry to the node-local backend: the backend
//!    sees the client's address;
//!  - to the remote backend with SNAT: the backend sees the node's address,
//!    replies come back through the node;
//!  - with DSR: the backend sees the client, its replies leave the remote
//!    node straight to the client (the node translates none of them);
//!  - a frontend without backends: TCP connect is refused at once (RST),
//!    UDP gets ECONNREFUSED (ICMP port unreachable);
//!  - 5 MB each way on every path, checked by content checksum;
//!  - loadBalancerSourceRanges: a source outside them gets nothing.
//!
//! Needs root, iproute2 and a bpffs at /sys/fs/bpf. Everything is removed
//! on drop, also when a check fails.

#[path = "nodeport_lab/mod.rs"]
mod lab;

use axon_bpf::maps::{backend_state, ct, metric, svc_flags, svc_type, AxonConfig, AxonDevice};
use aya::programs::XdpMode;
use lab::capture::{l4, l4_checksum_ok, ones_sum, Capture, Frame};
use lab::datapath::{attach_xdp_pass, Backend, NodeDatapath, PeerXdp, Service};
use lab::net::{ifindex, set_tx_checksum};
use lab::servers::{self, Backend as Server};
use lab::{Addrs, Lab, V4, V6};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const TCP: u8 = 6;
const UDP: u8 = 17;
const BACKEND_PORT: u16 = 8080;
const PORT_LOCAL: u16 = 30080;
const PORT_SNAT: u16 = 30081;
const PORT_DSR: u16 = 30082;
const PORT_EMPTY: u16 = 30083;
const PORT_RANGED: u16 = 30084;
const TRANSFER: usize = 5 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Tc,
    XdpGeneric,
    XdpNative,
}

/// The lab with both nodes' datapaths and the backends. Field order is drop
/// order: servers, programs, the veth peer's XDP, then the namespaces.
struct Setup {
    _servers: Vec<Server>,
    node: NodeDatapath,
    remote: NodeDatapath,
    _peer: Option<PeerXdp>,
    lab: Lab,
    a: Addrs,
}

fn tag(name: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{name}{}{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::Relaxed))
}

fn config() -> AxonConfig {
    AxonConfig {
        ct_timeout_syn: 60,
        ct_timeout_tcp: 3600,
        ct_timeout_close: 10,
        ct_timeout_udp: 60,
        maglev_table_size: 0,
        nodeport_min: 30000,
        nodeport_max: 32767,
        // Outside the default ephemeral range, so SNAT never collides with
        // the node's own connections.
        snat_port_min: 61000,
        snat_port_max: 61999,
        lb_mode: 0,
        pad: [0; 3],
    }
}

fn device(addr4: Ipv4Addr, addr6: Ipv6Addr) -> AxonDevice {
    AxonDevice { ipv4: u32::from(addr4).to_be(), ipv6: addr6.octets(), ..AxonDevice::default() }
}

/// What the agent writes for a node at load: config, its device, its addresses.
fn prepare_node(dp: &NodeDatapath, ns: &str, v4: &str, v6: &str) {
    let (v4, v6): (Ipv4Addr, Ipv6Addr) = (v4.parse().expect("literal"), v6.parse().expect("literal"));
    let index = ifindex(ns, "eth0");
    dp.set_config(config());
    dp.add_device(index, device(v4, v6));
    dp.add_node_addr(IpAddr::V4(v4), index);
    dp.add_node_addr(IpAddr::V6(v6), index);
}

fn unspecified(a: &Addrs) -> IpAddr {
    match a.node {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Backend ids: b1/b2 per protocol.
fn backend(a: &Addrs, name: &str, proto: u8) -> Backend {
    let (id, addr, flags) = match name {
        "b1" => (1, a.b1, backend_state::F_LOCAL),
        _ => (3, a.b2, 0),
    };
    Backend { id: id + u32::from(proto == UDP), addr, port: BACKEND_PORT, flags }
}

/// The services of every test, for both protocols: ids 2*k+1 (TCP), 2*k+2 (UDP).
fn services(a: &Addrs) -> Vec<Service> {
    let mut all = Vec::new();
    let table: [(u16, IpAddr, u8, &[&str]); 5] = [
        (PORT_LOCAL, unspecified(a), svc_flags::NODEPORT_WILDCARD, &["b1"]),
        (PORT_SNAT, a.node, 0, &["b2"]),
        (PORT_DSR, a.node, svc_flags::DSR, &["b2"]),
        (PORT_EMPTY, a.node, 0, &[]),
        (PORT_RANGED, a.node, svc_flags::SRC_RANGES, &["b1"]),
    ];
    for (k, (port, addr, flags, backends)) in table.into_iter().enumerate() {
        for proto in [TCP, UDP] {
            all.push(Service {
                addr,
                port,
                proto,
                scope: 0,
                id: 2 * k as u32 + 1 + u32::from(proto == UDP),
                svc_type: svc_type::NODE_PORT,
                flags,
                affinity_timeout: 0,
                backends: backends.iter().map(|b| backend(a, b, proto)).collect(),
            });
        }
    }
    all
}

fn setup(name: &str, a: Addrs, mode: Mode, tx_checksum_offload: bool) -> Setup {
    let tag = tag(name);
    let lab = Lab::new(&tag);
    let servers = vec![
        Server::start(&lab.b1, SocketAddr::new(a.b1, BACKEND_PORT), "b1"),
        Server::start(&lab.b2, SocketAddr::new(a.b2, BACKEND_PORT), "b2"),
    ];
    if !tx_checksum_offload {
        for ns in [&lab.client, &lab.b1, &lab.b2] {
            set_tx_checksum(ns, "eth0", false);
        }
    }

    let mut node = NodeDatapath::load(&format!("{tag}-n"));
    prepare_node(&node, &lab.node, "10.77.0.2", "fd77::2");
    for svc in services(&a) {
        node.put_service(&svc);
    }
    node.attach_tc(&lab.node, "eth0");

    let mut remote = NodeDatapath::load(&format!("{tag}-r"));
    prepare_node(&remote, &lab.remote, "10.77.0.3", "fd77::3");
    remote.attach_tc(&lab.remote, "eth0");

    let peer = match mode {
        Mode::Tc => None,
        Mode::XdpGeneric => {
            node.attach_xdp(&lab.node, "eth0", XdpMode::Skb);
            None
        }
        Mode::XdpNative => {
            // XDP_TX out of a veth lands on its peer, which must run XDP.
            let peer = attach_xdp_pass(&lab.lan, "n", &format!("{tag}-p"));
            node.attach_xdp(&lab.node, "eth0", XdpMode::Driver);
            Some(peer)
        }
    };
    Setup { _servers: servers, node, remote, _peer: peer, lab, a }
}

fn frontend(s: &Setup, port: u16) -> SocketAddr {
    SocketAddr::new(s.a.node, port)
}

/// Runs `check` while capturing at the client and both backends, then
/// verifies the checksum of every TCP and UDP packet seen: translated
/// packets must carry checksums a verifying receiver accepts (veth
/// receivers trust the skb and would not notice).
fn with_wire_check(s: &Setup, what: &str, check: fn(&Setup)) {
    let captures = [
        ("client", Capture::open(&s.lab.client, "eth0")),
        ("b1", Capture::open(&s.lab.b1, "eth0")),
        ("b2", Capture::open(&s.lab.b2, "eth0")),
    ];
    check(s);
    let mut checked = 0;
    for (place, capture) in &captures {
        for frame in capture.drain() {
            let Some((src, dst, proto, seg)) = l4(&frame.data) else { continue };
            let csum_at = match proto {
                TCP => 16,
                UDP => 6,
                _ => continue,
            };
            if seg.len() < csum_at + 2 || (proto == UDP && s.a.node.is_ipv4() && seg[6] == 0 && seg[7] == 0) {
                continue;
            }
            assert!(
                l4_checksum_ok(src, dst, proto, seg, frame.csum_partial),
                "{what}: bad checksum at {place}: {src} -> {dst} proto {proto} partial {}: {:02x?}",
                frame.csum_partial,
                &seg[..seg.len().min(40)]
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: no packets captured");
}

fn check_local_backend(s: &Setup) {
    let who = servers::tcp_who(&s.lab.client, frontend(s, PORT_LOCAL)).expect("TCP to the NodePort (local backend)");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b1", Some(s.a.client)), "TCP local: {who:?}");
    let who = servers::udp_who(&s.lab.client, frontend(s, PORT_LOCAL)).expect("UDP to the NodePort (local backend)");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b1", Some(s.a.client)), "UDP local: {who:?}");
}

fn check_snat(s: &Setup) {
    let who = servers::tcp_who(&s.lab.client, frontend(s, PORT_SNAT)).expect("TCP to the SNAT frontend");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b2", Some(s.a.node)), "TCP SNAT: {who:?}");
    let who = servers::udp_who(&s.lab.client, frontend(s, PORT_SNAT)).expect("UDP to the SNAT frontend");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b2", Some(s.a.node)), "UDP SNAT: {who:?}");
    let snat_flows = match s.a.node {
        IpAddr::V4(_) => {
            s.node.ct4().iter().filter(|(k, e)| k.dir == ct::DIR_REPLY && e.flags & ct::F_SNAT != 0).count()
        }
        IpAddr::V6(_) => {
            s.node.ct6().iter().filter(|(k, e)| k.dir == ct::DIR_REPLY && e.flags & ct::F_SNAT != 0).count()
        }
    };
    assert!(snat_flows >= 2, "SNAT REPLY conntrack entries on the node: {snat_flows}");
}

fn check_dsr(s: &Setup) {
    let node_rev = s.node.metric(metric::NP_REV);
    let remote_rev = s.remote.metric(metric::NP_REV);
    let who = servers::tcp_who(&s.lab.client, frontend(s, PORT_DSR)).expect("TCP to the DSR frontend");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b2", Some(s.a.client)), "TCP DSR: {who:?}");
    let who = servers::udp_who(&s.lab.client, frontend(s, PORT_DSR)).expect("UDP to the DSR frontend");
    assert_eq!((who.backend.as_str(), who.peer.parse::<IpAddr>().ok()), ("b2", Some(s.a.client)), "UDP DSR: {who:?}");
    assert_eq!(s.node.metric(metric::NP_REV), node_rev, "DSR replies must not pass the load-balancing node");
    assert!(s.remote.metric(metric::NP_REV) > remote_rev, "the backend's node translates DSR replies");
}

/// The RST and the ICMP error on the client's wire: from the frontend, and
/// with checksums a receiver that verifies would accept.
fn check_reject_packets(s: &Setup, frames: &[Frame]) {
    let answers: Vec<(&Frame, IpAddr, IpAddr, u8, &[u8])> = frames
        .iter()
        .filter_map(|f| l4(&f.data).map(|(src, dst, proto, seg)| (f, src, dst, proto, seg)))
        .filter(|&(_, src, dst, _, _)| src == s.a.node && dst == s.a.client)
        .collect();
    let rst = answers
        .iter()
        .find(|(_, _, _, proto, seg)| *proto == TCP && seg.len() >= 20 && seg[13] & 0x04 != 0)
        .expect("a TCP RST from the frontend on the client's wire");
    assert_eq!(u16::from_be_bytes([rst.4[0], rst.4[1]]), PORT_EMPTY, "RST from the frontend port");
    assert!(
        l4_checksum_ok(rst.1, rst.2, TCP, rst.4, rst.0.csum_partial),
        "RST checksum (partial: {}): {:02x?}",
        rst.0.csum_partial,
        rst.4
    );
    eprintln!("RST on the wire with a {} checksum", if rst.0.csum_partial { "partial (seed)" } else { "complete" });
    let icmp_proto = if s.a.node.is_ipv4() { 1 } else { 58 };
    let icmp = answers
        .iter()
        .find(|(_, _, _, proto, _)| *proto == icmp_proto)
        .expect("an ICMP port unreachable from the frontend on the client's wire");
    assert_eq!((icmp.4[0], icmp.4[1]), if icmp_proto == 1 { (3, 3) } else { (1, 4) }, "port unreachable");
    assert!(l4_checksum_ok(icmp.1, icmp.2, icmp_proto, icmp.4, false), "ICMP checksum: {:02x?}", icmp.4);
    if s.a.node.is_ipv4() {
        for (f, ..) in [rst, icmp] {
            assert_eq!(ones_sum(&f.data[14..34], 0), 0xffff, "IPv4 header checksum");
        }
    }
}

fn check_reject(s: &Setup) {
    let capture = Capture::open(&s.lab.client, "eth0");
    let started = Instant::now();
    let err = servers::tcp_connect(&s.lab.client, frontend(s, PORT_EMPTY), Duration::from_secs(5))
        .expect_err("a frontend without backends must refuse");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "TCP without backends: {err}");
    assert!(took < Duration::from_millis(900), "refused in {took:?}: an RST, not a retransmitted SYN");

    let socket = servers::udp_socket(&s.lab.client, frontend(s, PORT_EMPTY)).expect("UDP socket");
    socket.send(b"WHO").expect("UDP send");
    let mut buf = [0u8; 64];
    let err = socket.recv(&mut buf).expect_err("no answer but an ICMP error");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "UDP without backends: {err}");
    assert!(s.node.metric(metric::NP_NO_BACKEND) >= 2);
    check_reject_packets(s, &capture.drain());
}

fn check_transfers(s: &Setup) {
    for (port, what) in [(PORT_LOCAL, "local"), (PORT_SNAT, "SNAT"), (PORT_DSR, "DSR")] {
        let target = frontend(s, port);
        assert!(
            servers::tcp_put(&s.lab.client, target, TRANSFER, 7).expect("upload"),
            "5 MB upload via {what}: content differs"
        );
        assert!(
            servers::tcp_get(&s.lab.client, target, TRANSFER, 11).expect("download"),
            "5 MB download via {what}: content differs"
        );
    }
}

fn check_source_ranges(s: &Setup) {
    let (tcp_id, udp_id) = (9, 10);
    let (other, prefix) = match s.a.client {
        IpAddr::V4(_) => ("10.77.9.0".parse::<IpAddr>().expect("literal"), 24),
        IpAddr::V6(_) => ("fd77:9::".parse::<IpAddr>().expect("literal"), 64),
    };
    s.node.allow_source(tcp_id, other, prefix);
    s.node.allow_source(udp_id, other, prefix);
    let denied = s.node.metric(metric::NP_SRC_DENIED);
    let err = servers::tcp_connect(&s.lab.client, frontend(s, PORT_RANGED), Duration::from_millis(1500))
        .expect_err("a source outside loadBalancerSourceRanges gets nothing");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "denied source: {err}");
    assert!(servers::udp_who(&s.lab.client, frontend(s, PORT_RANGED)).is_err(), "denied UDP source got an answer");
    assert!(s.node.metric(metric::NP_SRC_DENIED) > denied);

    let lan = match s.a.client {
        IpAddr::V4(_) => "10.77.0.0".parse::<IpAddr>().expect("literal"),
        IpAddr::V6(_) => "fd77::".parse::<IpAddr>().expect("literal"),
    };
    s.node.allow_source(tcp_id, lan, prefix);
    s.node.allow_source(udp_id, lan, prefix);
    let who = servers::tcp_who(&s.lab.client, frontend(s, PORT_RANGED)).expect("an allowed source");
    assert_eq!(who.backend, "b1");
    servers::udp_who(&s.lab.client, frontend(s, PORT_RANGED)).expect("an allowed UDP source");
}

/// A named step of [`run`].
type Check = (&'static str, fn(&Setup));

fn run(name: &str, a: Addrs, mode: Mode, tx_checksum_offload: bool) {
    let s = setup(name, a, mode, tx_checksum_offload);
    let checks: [Check; 6] = [
        ("local backend", |s| with_wire_check(s, "local backend", check_local_backend)),
        ("SNAT", |s| with_wire_check(s, "SNAT", check_snat)),
        ("DSR", |s| with_wire_check(s, "DSR", check_dsr)),
        ("reject", check_reject),
        ("transfers", check_transfers),
        ("source ranges", check_source_ranges),
    ];
    for (what, check) in checks {
        let started = Instant::now();
        check(&s);
        eprintln!("{name}: {what} ok in {:?}", started.elapsed());
    }
    let xdp = s.node.metric(metric::XDP_FWD);
    eprintln!(
        "{name}: np_fwd={} np_rev={} xdp_fwd={xdp} ct_new={} fib_fail={} remote np_rev={}",
        s.node.metric(metric::NP_FWD),
        s.node.metric(metric::NP_REV),
        s.node.metric(metric::NP_CT_NEW),
        s.node.metric(metric::NP_FIB_FAIL),
        s.remote.metric(metric::NP_REV),
    );
    if mode != Mode::Tc && !tx_checksum_offload {
        assert!(xdp > 0, "with complete checksums XDP forwards itself");
    }
    if mode == Mode::Tc {
        assert_eq!(xdp, 0);
    }
}

/// Maglev picks from the service's table, not at random, and ClientIP
/// affinity keeps a client on one backend across connections.
fn run_selection(name: &str, a: Addrs) {
    const MAGLEV_SIZE: u32 = 13;
    let s = setup(name, a, Mode::Tc, true);
    s.node.set_config(AxonConfig { maglev_table_size: MAGLEV_SIZE, ..s.node.config() });
    let both = |proto| vec![backend(&a, "b1", proto), backend(&a, "b2", proto)];
    let (maglev_port, affinity_port) = (30090, 30091);
    for (port, id, flags, timeout) in
        [(maglev_port, 20, svc_flags::MAGLEV, 0), (affinity_port, 21, svc_flags::AFFINITY, 300)]
    {
        s.node.put_service(&Service {
            addr: a.node,
            port,
            proto: TCP,
            scope: 0,
            id,
            svc_type: svc_type::LOAD_BALANCER,
            flags,
            affinity_timeout: timeout,
            backends: both(TCP),
        });
    }
    let backends_seen = |port: u16, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| servers::tcp_who(&s.lab.client, frontend(&s, port)).expect("TCP to the frontend").backend)
            .collect()
    };

    for (table_backend, name) in [(backend(&a, "b2", TCP).id, "b2"), (backend(&a, "b1", TCP).id, "b1")] {
        s.node.set_maglev(20, &[table_backend; MAGLEV_SIZE as usize]);
        let seen = backends_seen(maglev_port, 8);
        assert!(seen.iter().all(|b| b == name), "Maglev table says {name}, connections went to {seen:?}");
    }

    let seen = backends_seen(affinity_port, 12);
    assert!(seen.iter().all(|b| *b == seen[0]), "ClientIP affinity: {seen:?}");

    // A flow outlives its backend only until its next packet: the same UDP
    // 5-tuple is balanced afresh once the backend is gone.
    let moving = |backend: Backend| Service {
        addr: a.node,
        port: 30092,
        proto: UDP,
        scope: 0,
        id: 22,
        svc_type: svc_type::LOAD_BALANCER,
        flags: 0,
        affinity_timeout: 0,
        backends: vec![backend],
    };
    s.node.put_service(&moving(Backend { id: 40, ..backend(&a, "b2", UDP) }));
    let socket = servers::udp_socket(&s.lab.client, frontend(&s, 30092)).expect("UDP socket");
    let ask = || -> String {
        for _ in 0..4 {
            let mut buf = [0u8; 128];
            socket.send(b"WHO").expect("send");
            if let Ok(n) = socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap_or_default().to_string();
            }
        }
        panic!("no UDP answer from port 30092");
    };
    assert_eq!(ask(), "b2");
    s.node.put_service(&moving(Backend { id: 41, ..backend(&a, "b1", UDP) }));
    s.node.remove_backend(40, a.node.is_ipv6());
    assert_eq!(ask(), "b1", "the flow follows the service once its backend is gone");
}

#[test]
fn maglev_and_affinity_ipv4() {
    run_selection("sel4", V4());
}

#[test]
fn maglev_and_affinity_ipv6() {
    run_selection("sel6", V6());
}

#[test]
fn tc_ipv4() {
    run("tc4", V4(), Mode::Tc, true);
}

/// tc on complete checksums (senders without offload).
#[test]
fn tc_complete_checksums_ipv4() {
    run("tk4", V4(), Mode::Tc, false);
}

#[test]
fn tc_complete_checksums_ipv6() {
    run("tk6", V6(), Mode::Tc, false);
}

#[test]
fn xdp_generic_ipv4() {
    run("xg4", V4(), Mode::XdpGeneric, false);
}

#[test]
fn xdp_native_ipv4() {
    run("xn4", V4(), Mode::XdpNative, false);
}

/// Senders with checksum offload hand XDP CHECKSUM_PARTIAL packets, which
/// it passes to tc instead of translating.
#[test]
fn xdp_native_partial_checksums_ipv4() {
    run("xp4", V4(), Mode::XdpNative, true);
}

#[test]
fn tc_ipv6() {
    run("tc6", V6(), Mode::Tc, true);
}

#[test]
fn xdp_generic_ipv6() {
    run("xg6", V6(), Mode::XdpGeneric, false);
}

#[test]
fn xdp_native_ipv6() {
    run("xn6", V6(), Mode::XdpNative, false);
}

#[test]
fn xdp_native_partial_checksums_ipv6() {
    run("xp6", V6(), Mode::XdpNative, true);
}
