//! The socket-LB extensions of north-south serving, against the kernel and
//! with nothing of the agent:
//!
//!  - a host-local client connecting to nodeIP:nodePort is served by the
//!    wildcard NodePort entry, and getpeername() shows what it dialled;
//!  - a service with an internal view (AXON_SVC_F_TWO_SCOPES) is balanced
//!    over its internal scope only;
//!  - ClientIP affinity keyed by network namespace keeps one backend;
//!  - post_bind4/post_bind6 refuse, with EADDRINUSE, binds to ports NodePort
//!    and HostPort services own (wildcard, exact, any-address, dual-stack),
//!    and leave every other bind alone.
//!
//! sock_lb.o is loaded with its maps pinned in a private bpffs directory and
//! attached to a child cgroup made for the test; the client is this test
//! binary re-run as a child process that joins the cgroup and a private
//! network namespace (its loopback holds the node address and the backends).

#[allow(dead_code)]
#[path = "nodeport_lab/datapath.rs"]
mod datapath;
#[allow(dead_code)]
#[path = "nodeport_lab/net.rs"]
mod net;
#[allow(dead_code)]
#[path = "nodeport_lab/servers.rs"]
mod servers;

use axon_bpf::maps::{metric, scope, svc_flags, svc_type};
use axon_bpf::objects::{SOCK_LB, SOCK_LB_PROGRAMS, SOCK_POST_BIND_PROGRAMS};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use datapath::{Backend, Maps, PinDir, Service};
use net::{ip, Netns};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENV_CGROUP: &str = "AXON_SOCKLB_TEST_CGROUP";
const ENV_NETNS: &str = "AXON_SOCKLB_TEST_NETNS";
const ENV_OPS: &str = "AXON_SOCKLB_TEST_OPS";
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A child of the cgroup2 root, removed on drop (once empty).
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
        // Field 5 is the mount point; the filesystem type follows " - ".
        let root = mountinfo
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split_whitespace().nth(4))
            .expect("a cgroup2 mount");
        let path = Path::new(root).join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        ChildCgroup(path)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Everything the test sets up; field order is drop order.
struct Setup {
    _servers: Vec<servers::Backend>,
    _ebpf: aya::Ebpf,
    maps: Maps,
    _pins: PinDir,
    cgroup: ChildCgroup,
    netns: Netns,
}

fn backend(id: u32, addr: &str) -> Backend {
    Backend { id, addr: addr.parse().expect("literal"), port: 8080, flags: 0 }
}

fn service(addr: &str, port: u16, proto: u8, id: u32, kind: u8, flags: u8, backends: Vec<Backend>) -> Service {
    Service {
        addr: addr.parse().expect("literal"),
        port,
        proto,
        scope: scope::EXTERNAL,
        id,
        svc_type: kind,
        flags,
        affinity_timeout: 0,
        backends,
    }
}

fn setup() -> Setup {
    let tag = format!("{}", std::process::id());
    let netns = Netns::new(&format!("axsk-{tag}"));
    let ns = netns.name.clone();
    // Node address and backends all live on the namespace's loopback.
    for cidr in ["10.88.0.1/32", "10.88.0.2/32", "10.88.0.3/32"] {
        ip(&["-n", &ns, "addr", "add", cidr, "dev", "lo"]);
    }
    for cidr in ["fd88::1/128", "fd88::2/128"] {
        ip(&["-n", &ns, "addr", "add", cidr, "dev", "lo", "nodad"]);
    }
    let servers = vec![
        servers::Backend::start(&ns, "10.88.0.2:8080".parse().expect("literal"), "A"),
        servers::Backend::start(&ns, "10.88.0.3:8080".parse().expect("literal"), "B"),
        servers::Backend::start(&ns, "[fd88::2]:8080".parse().expect("literal"), "A6"),
    ];

    let pins = PinDir::new(&format!("sock-{tag}"));
    let cgroup = ChildCgroup::new(&format!("axon-socklb-test-{tag}"));
    let mut ebpf = datapath::load(SOCK_LB, &pins.0);
    let file = File::open(&cgroup.0).expect("opening the cgroup");
    for &(name, _) in SOCK_LB_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf.program_mut(name).expect("program").try_into().expect("sock_addr");
        program.load().unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        program.attach(&file, CgroupAttachMode::Single).unwrap_or_else(|e| panic!("attaching {name}: {e:?}"));
    }
    for &(name, _) in SOCK_POST_BIND_PROGRAMS {
        let program: &mut CgroupSock = ebpf.program_mut(name).expect("program").try_into().expect("cgroup sock");
        program.load().unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        program.attach(&file, CgroupAttachMode::Single).unwrap_or_else(|e| panic!("attaching {name}: {e:?}"));
    }

    let maps = Maps::new(&pins);
    maps.add_node_addr("10.88.0.1".parse().expect("literal"), 1);
    maps.add_node_addr("fd88::1".parse().expect("literal"), 1);
    let wildcard = svc_flags::NODEPORT_WILDCARD;
    for svc in [
        service("0.0.0.0", 30080, TCP, 1, svc_type::NODE_PORT, wildcard, vec![backend(1, "10.88.0.2")]),
        service("0.0.0.0", 30083, UDP, 5, svc_type::NODE_PORT, wildcard, vec![backend(1, "10.88.0.2")]),
        service("10.88.0.1", 30090, TCP, 4, svc_type::HOST_PORT, 0, vec![backend(1, "10.88.0.2")]),
        service("::", 30080, TCP, 6, svc_type::NODE_PORT, wildcard, vec![backend(6, "fd88::2")]),
        // Internal view first, then the external master that announces it.
        Service {
            scope: scope::INTERNAL,
            ..service("10.88.0.1", 30081, TCP, 2, svc_type::NODE_PORT, 0, vec![backend(2, "10.88.0.3")])
        },
        service("10.88.0.1", 30081, TCP, 2, svc_type::NODE_PORT, svc_flags::TWO_SCOPES, vec![backend(1, "10.88.0.2")]),
        Service {
            affinity_timeout: 300,
            ..service(
                "10.88.0.1",
                30082,
                TCP,
                3,
                svc_type::NODE_PORT,
                svc_flags::AFFINITY,
                vec![backend(1, "10.88.0.2"), backend(2, "10.88.0.3")],
            )
        },
    ] {
        maps.put_service(&svc);
    }
    Setup { _servers: servers, _ebpf: ebpf, maps, _pins: pins, cgroup, netns }
}

/// Runs `ops` in a child process inside the test's cgroup and namespace.
fn run_client(s: &Setup, ops: &[&str]) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args(["client_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_CGROUP, &s.cgroup.0)
        .env(ENV_NETNS, &s.netns.name)
        .env(ENV_OPS, ops.join("\n"))
        .output()
        .expect("running the client process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<String> =
        stdout.lines().filter_map(|l| l.split_once("AXON> ")).map(|(_, r)| r.to_string()).collect();
    assert_eq!(results.len(), ops.len(), "one result per op: {stdout}");
    results
}

/// The client side: a no-op in the normal run; re-run by `run_client`, it
/// joins the cgroup and the namespace, performs each op and prints
/// `AXON> <result>`.
#[test]
fn client_process() {
    let (Ok(cgroup), Ok(netns), Ok(ops)) =
        (std::env::var(ENV_CGROUP), std::env::var(ENV_NETNS), std::env::var(ENV_OPS))
    else {
        return;
    };
    // Sockets belong to the cgroup of the process, and the namespace of the
    // thread, that creates them.
    std::fs::write(Path::new(&cgroup).join("cgroup.procs"), "0").expect("joining the cgroup");
    let ns = File::open(format!("/run/netns/{netns}")).expect("opening the namespace");
    // SAFETY: setns on a valid namespace fd, for this thread only.
    assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
    for op in ops.lines() {
        let words: Vec<&str> = op.split_whitespace().collect();
        let result = match words.as_slice() {
            ["who", addr] => who(addr.parse().expect("address")),
            ["bind", "tcp", addr] => {
                bind_result(TcpListener::bind(addr.parse::<SocketAddr>().expect("address")).map(drop))
            }
            ["bind", "udp", addr] => {
                bind_result(UdpSocket::bind(addr.parse::<SocketAddr>().expect("address")).map(drop))
            }
            _ => panic!("unknown op {op}"),
        };
        println!("AXON> {result}");
    }
}

/// `ok <getpeername> <backend> <client address the backend saw>`.
fn who(target: SocketAddr) -> String {
    let mut stream = match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return format!("err {}", e.raw_os_error().unwrap_or(0)),
    };
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut text = String::new();
    if stream.write_all(b"WHO\n").and_then(|_| stream.read_to_string(&mut text)).is_err() {
        return "err read".to_string();
    }
    let mut words = text.split_whitespace();
    let seen = words.next().unwrap_or_default();
    let backend = words.next().unwrap_or_default();
    format!("ok {peer} {backend} {seen}")
}

fn bind_result(result: std::io::Result<()>) -> String {
    match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err {}", e.raw_os_error().unwrap_or(0)),
    }
}

#[test]
fn socket_lb_serves_north_south_frontends_and_protects_their_ports() {
    let s = setup();

    // (What the backend sees as its client is the kernel's loopback source
    // choice, not checked.)
    let r = run_client(&s, &["who 10.88.0.1:30080", "who [fd88::1]:30080"]);
    assert!(r[0].starts_with("ok 10.88.0.1:30080 A "), "v4 NodePort via the wildcard entry: {}", r[0]);
    assert!(r[1].starts_with("ok [fd88::1]:30080 A6 "), "v6 NodePort via the wildcard entry: {}", r[1]);

    let r = run_client(&s, &["who 10.88.0.1:30081"; 6]);
    assert!(r.iter().all(|l| l.split_whitespace().nth(2) == Some("B")), "internal scope only: {r:?}");

    let r = run_client(&s, &["who 10.88.0.1:30082"; 10]);
    let first = r[0].split_whitespace().nth(2).expect("a backend").to_string();
    assert!(r.iter().all(|l| l.split_whitespace().nth(2) == Some(first.as_str())), "affinity: {r:?}");
    let again = run_client(&s, &["who 10.88.0.1:30082"; 4]);
    assert!(
        again.iter().all(|l| l.split_whitespace().nth(2) == Some(first.as_str())),
        "affinity by namespace outlives the process: {again:?}"
    );

    let denied_before = s.maps.metric(metric::BIND_DENIED);
    // "err 98" is EADDRINUSE.
    let cases: [(&str, &str); 12] = [
        ("bind tcp 0.0.0.0:30080", "err 98"),   // wildcard NodePort
        ("bind tcp 10.88.0.1:30080", "err 98"), // wildcard covers every address
        ("bind tcp 0.0.0.0:30090", "err 98"),   // HostPort on a node address
        ("bind tcp 10.88.0.1:30090", "err 98"),
        ("bind tcp 127.0.0.1:30090", "ok"),   // not where the HostPort is
        ("bind udp 0.0.0.0:30083", "err 98"), // UDP NodePort
        ("bind tcp 0.0.0.0:30083", "ok"),     // other protocol
        ("bind tcp 0.0.0.0:30099", "ok"),     // nobody's port
        ("bind tcp [::]:30080", "err 98"),
        ("bind tcp [fd88::1]:30080", "err 98"),
        ("bind tcp [::]:30090", "err 98"), // dual-stack: the v4 HostPort
        ("bind tcp [::1]:30099", "ok"),
    ];
    let ops: Vec<&str> = cases.iter().map(|(op, _)| *op).collect();
    let r = run_client(&s, &ops);
    for ((op, want), got) in cases.iter().zip(&r) {
        assert_eq!(got, want, "{op}");
    }
    let denied = cases.iter().filter(|(_, want)| want.starts_with("err")).count() as u64;
    assert_eq!(s.maps.metric(metric::BIND_DENIED) - denied_before, denied, "bind_denied counts each refusal");
}
