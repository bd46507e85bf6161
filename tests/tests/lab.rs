//! Self-test of the lab, no agent involved: the topology carries TCP and UDP
//! (v4 and v6) between namespaces, clients land in the test's cgroup and the
//! client namespace, and an address outside the lab fails locally — the
//! property every socket-LB test relies on to catch a missed translation.

use axon_lab::check::{assert_all_ok, assert_each, assert_spread};
use axon_lab::{Lab, UdpMode};
use std::net::SocketAddr;

const ENETUNREACH: i32 = libc::ENETUNREACH;

#[test]
fn client_reaches_every_backend_directly() {
    let lab = Lab::new("direct", 2).expect("lab");
    let _servers = lab.serve_all(8080).expect("servers");
    for b in lab.backends() {
        for v6 in [false, true] {
            let addr = b.addr(v6, 8080);
            let tcp = lab.tcp(addr, 2).expect("tcp client");
            assert_spread(&tcp, &[b.name()], &format!("tcp {addr}"));
            assert_each(&tcp, "getpeername", |a| a.peer.as_ref(), &addr.to_string());
            for mode in [UdpMode::Connected, UdpMode::Unconnected] {
                let udp = lab.udp(addr, 2, mode).expect("udp client");
                assert_spread(&udp, &[b.name()], &format!("udp {mode:?} {addr}"));
                assert_each(&udp, "reply source", |a| a.from.as_ref(), &addr.to_string());
            }
        }
    }
    let echo = lab.tcp_echo(lab.backend(1).addr(false, 8080), 2, 100_000).expect("echo");
    assert_all_ok(&echo, "tcp echo");
    assert!(echo.iter().all(|a| a.echo_ok == Some(true)));
}

#[test]
fn outside_addresses_fail_locally() {
    let lab = Lab::new("unreach", 1).expect("lab");
    let _servers = lab.serve_all(80).expect("servers");
    for vip in ["10.96.0.10:80", "[fd96::10]:80", "[::ffff:10.96.0.10]:80"] {
        let vip: SocketAddr = vip.parse().expect("addr");
        let tcp = lab.tcp(vip, 1).expect("tcp client");
        assert_eq!(tcp[0].errno, Some(ENETUNREACH), "tcp {vip}: {tcp:?}");
        assert!(tcp[0].micros < 1_000_000, "tcp {vip} failed slowly: {tcp:?}");
        for mode in [UdpMode::Connected, UdpMode::Unconnected] {
            let udp = lab.udp(vip, 1, mode).expect("udp client");
            assert_eq!(udp[0].errno, Some(ENETUNREACH), "udp {mode:?} {vip}: {udp:?}");
        }
    }
}

#[test]
fn clients_run_in_the_lab_cgroup_and_namespace() {
    let lab = Lab::new("env", 1).expect("lab");
    let env = lab.client_env().expect("client env");
    assert_eq!(env.netns_inode, lab.client().netns().inode().expect("inode"));
    let mount = axon_lab::cgroup::cgroup2_mount().expect("cgroup2");
    let rel = lab.cgroup().path().strip_prefix(&mount).expect("under the mount");
    assert_eq!(env.cgroup, format!("/{}", rel.display()));
    assert!(lab.cgroup().pids().is_empty(), "client left processes behind");
}

#[test]
fn lab_is_removed_on_drop() {
    let cgroup_path;
    {
        let lab = Lab::new("drop", 1).expect("lab");
        cgroup_path = lab.cgroup().path().to_path_buf();
        assert!(cgroup_path.is_dir());
    }
    assert!(!cgroup_path.exists(), "cgroup {} survived the lab", cgroup_path.display());
}

#[test]
fn a_panicking_test_leaves_no_agent_pins_or_cgroup_behind() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("panic", 1).expect("lab");
        let agent = lab.start_agent().expect("agent");
        seen = Some((
            lab.cgroup().path().to_path_buf(),
            agent.bpffs_root().to_path_buf(),
            agent.api_socket().to_path_buf(),
            agent.pid(),
        ));
        panic!("on purpose");
    }));
    assert!(result.is_err());
    let (cgroup, bpffs, socket, pid) = seen.expect("the lab came up");
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(!bpffs.exists(), "bpffs dir {} left behind", bpffs.display());
    assert!(!socket.exists(), "API socket {} left behind", socket.display());
    let pid = pid.expect("agent pid");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "agent {pid} still running");
}
