//! Self-test of the north-south lab: the topology is what the N-S tests rely
//! on — the client reaches every node, never a backend subnet; nodes reach
//! each other's backends; backends answer with the peer they saw — and an
//! agent started for a node really runs inside that node's namespace.

use axon_lab::check::{assert_all_ok, show};
use axon_lab::{nic, AgentOptions, BackendServer, MultiNodeLab, MultiNodeOptions, Place, Probe};
use std::time::Duration;

const PORT: u16 = 8080;

#[test]
fn client_reaches_every_node_address_and_is_seen_as_itself() {
    let lab = MultiNodeLab::new("mn_nodes", 3, 1).expect("lab");
    let servers: Vec<BackendServer> = lab
        .nodes()
        .iter()
        .map(|n| BackendServer::start_reporting(n.netns(), n.name(), PORT).expect("server on a node"))
        .collect();
    for node in lab.nodes() {
        for v6 in [false, true] {
            let addr = node.addr(v6, PORT);
            for probe in [Probe::tcp(addr).count(2), Probe::udp(addr).count(2)] {
                let attempts = lab.probe(&probe).expect("client");
                assert_all_ok(&attempts, &format!("{probe:?}"));
                for a in &attempts {
                    assert_eq!(a.answer.as_deref(), Some(node.name()), "{}", show(&attempts));
                    assert_eq!(a.seen_ip(), Some(lab.client_ip(v6)), "{}", show(&attempts));
                }
            }
            // The second client address is a usable source.
            let alt = lab.probe(&Probe::tcp(addr).bind(lab.client_alt(v6))).expect("client");
            assert_all_ok(&alt, "from the second address");
            assert_eq!(alt[0].seen_ip(), Some(lab.client_alt(v6)), "{}", show(&alt));
        }
    }
    assert!(servers.iter().all(|s| s.served() >= 10));
}

#[test]
fn client_has_no_route_to_any_backend_and_lb_ips_go_to_node_1() {
    let lab = MultiNodeLab::new("mn_noroute", 2, 1).expect("lab");
    let _servers = lab.serve_all(PORT).expect("servers");
    for b in lab.backends() {
        for v6 in [false, true] {
            let addr = b.addr(v6, PORT);
            for probe in [Probe::tcp(addr), Probe::udp(addr)] {
                let a = lab.probe(&probe).expect("client");
                assert_eq!(a[0].errno, Some(libc::ENETUNREACH), "{probe:?} reached a backend: {}", show(&a));
                assert!(a[0].micros < 500_000, "failed slowly: {}", show(&a));
            }
        }
    }
    // No service: node-1 has no route for the LB subnet and says so at once.
    for v6 in [false, true] {
        let lb = std::net::SocketAddr::new(lab.lb_ip(v6, 10), 80);
        let a = lab.probe(&Probe::tcp(lb)).expect("client");
        assert!(!a[0].ok && a[0].micros < 1_500_000, "LB IP without a service: {}", show(&a));
        let errno = a[0].errno.unwrap_or_default();
        assert!([libc::ENETUNREACH, libc::EHOSTUNREACH].contains(&errno), "{}", show(&a));
    }
}

#[test]
fn nodes_reach_their_own_and_each_others_backends() {
    let lab = MultiNodeLab::new("mn_fwd", 3, 2).expect("lab");
    let _servers = lab.serve_all(PORT).expect("servers");
    for node in lab.nodes() {
        for b in lab.backends() {
            for v6 in [false, true] {
                let addr = b.addr(v6, PORT);
                let a = node.place().probe(&Probe::tcp(addr)).expect("client on a node");
                assert_all_ok(&a, &format!("{} -> {}", node.name(), addr));
                assert_eq!(a[0].answer.as_deref(), Some(b.name()));
                // Forwarded, not translated: the backend sees the node itself
                // (its gateway address when local, its segment address when remote).
                let seen = a[0].seen_ip().expect("peer reported");
                if b.node() == node.index() {
                    assert_eq!(seen, node.backend_gateway(v6), "{}", show(&a));
                } else {
                    assert_eq!(seen, node.ip(v6), "{}", show(&a));
                }
            }
        }
    }
}

#[test]
fn backends_reach_other_nodes_backends_but_not_the_client() {
    let lab = MultiNodeLab::new("mn_back", 2, 1).expect("lab");
    let _servers = lab.serve_all(PORT).expect("servers");
    let _client_server = lab.client().serve_reporting(PORT).expect("server on the client");
    for v6 in [false, true] {
        let from_b1 = Place::new(lab.backend(1).netns(), None);
        let a = from_b1.probe(&Probe::udp(lab.backend(2).addr(v6, PORT))).expect("client on a backend");
        assert_all_ok(&a, "backend-1 -> backend-2 through both nodes");
        assert_eq!(a[0].seen_ip(), Some(lab.backend(1).ip(v6)), "routed, not translated: {}", show(&a));
        // The client has no route back to a backend: only translated replies reach it.
        let a = from_b1
            .probe(&Probe::udp(lab.client().addr(v6, PORT)).timeout(Duration::from_millis(300)))
            .expect("client");
        assert!(!a[0].ok, "the client answered a backend directly: {}", show(&a));
    }
}

#[test]
fn large_transfers_cross_a_node_intact_with_checksum_offload_off() {
    let lab = MultiNodeLab::with_options(
        "mn_csum",
        &MultiNodeOptions { nodes: 2, backends_per_node: 1, checksum_offload: false },
    )
    .expect("lab");
    assert!(!nic::tx_checksum(lab.client().netns(), "eth0").expect("ethtool"));
    assert!(!nic::tx_checksum(lab.backend(1).netns(), "eth0").expect("ethtool"));
    assert!(nic::tx_checksum(lab.node(1).netns(), "eth0").expect("ethtool"), "nodes keep the default");
    let _server = BackendServer::start_reporting(lab.node(1).netns(), "node-1", PORT).expect("server");
    let a = lab.probe(&Probe::tcp(lab.node(1).addr(false, PORT)).send_bytes(4 << 20)).expect("client");
    assert_all_ok(&a, "4 MB echo");
    assert_eq!(a[0].recv_bytes, Some(4 << 20));
    assert_eq!(a[0].sent_sum, a[0].recv_sum);
    let _servers = lab.serve_all(PORT).expect("servers");
    let a = lab
        .node(2)
        .place()
        .probe(&Probe::udp(lab.backend(1).addr(true, PORT)).payload_bytes(1200).count(3))
        .expect("client");
    assert_all_ok(&a, "UDP with a full checksum");
}

#[test]
fn xdp_pass_on_every_peer_keeps_traffic_flowing() {
    let lab = MultiNodeLab::new("mn_xdp", 2, 1).expect("lab");
    lab.attach_xdp_pass_to_peers().expect("XDP_PASS on the peers");
    let _servers = lab.serve_all(PORT).expect("servers");
    let _node_server = BackendServer::start_reporting(lab.node(1).netns(), "node-1", PORT).expect("server");
    assert_all_ok(&lab.tcp(lab.node(1).addr(false, PORT), 3).expect("client"), "client -> node with XDP on the hub");
    let a = lab.node(1).place().probe(&Probe::tcp(lab.backend(2).addr(false, PORT))).expect("client");
    assert_all_ok(&a, "node-1 -> backend-2 with XDP on its device");
}

#[test]
fn an_agent_runs_inside_its_node_and_attaches_to_the_node_device() {
    let lab = MultiNodeLab::new("mn_agent", 2, 1).expect("lab");
    let cluster = lab.start_agents(&AgentOptions::default()).expect("agents");
    for node in lab.nodes() {
        let agent = cluster.agent(node.index());
        let pid = agent.pid().expect("running");
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("agent netns");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ns.ino(), node.netns().inode().expect("inode"), "agent of {} runs elsewhere", node.name());
        assert!(agent.bpffs_root().is_dir());
        let (status, body) = agent.request("GET", "/v1/status", None).expect("status");
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        assert!(text.contains("eth0"), "status of {} does not show its device eth0: {body:#}", node.name());
    }
    // A restarted agent comes back inside its node too.
    let mut cluster = cluster;
    cluster.agent_mut(1).restart_killed().expect("restart");
    let pid = cluster.agent(1).pid().expect("running again");
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("agent netns");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(ns.ino(), lab.node(1).netns().inode().expect("inode"), "restarted agent runs elsewhere");
    drop(cluster);
    // The node cgroups are empty again and the lab tears down cleanly.
    std::thread::sleep(Duration::from_millis(50));
    assert!(lab.nodes().iter().all(|n| n.cgroup().pids().is_empty()));
}

#[test]
fn the_lab_is_removed_on_drop() {
    let (cgroups, id);
    {
        let lab = MultiNodeLab::new("mn_drop", 2, 1).expect("lab");
        id = lab.id().to_string();
        cgroups = lab.nodes().iter().map(|n| n.cgroup().path().to_path_buf()).collect::<Vec<_>>();
        assert!(cgroups.iter().all(|c| c.is_dir()));
    }
    assert!(cgroups.iter().all(|c| !c.exists()), "node cgroups of {id} survived the lab");
    let mount = axon_lab::cgroup::cgroup2_mount().expect("cgroup2");
    assert!(!mount.join(format!("{id}-client")).exists(), "client cgroup survived");
}
