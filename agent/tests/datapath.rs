//! The datapath on the real kernel: load into a private bpffs dir, attach to a
//! private child cgroup, program services through `AyaLbMaps`, and check what
//! a client process inside that cgroup sees over loopback (TCP and UDP
//! through a VIP, getpeername, fail-fast without backends, IPv6 and
//! v4-mapped). Then restart (links kept), re-created maps (links updated in
//! place), a cgroup change (links replaced) and cleanup.
//!
//! Needs root, a mounted bpffs at /sys/fs/bpf and a cgroup2 mount. Client
//! sockets are bound to `lo`, so even an untranslated VIP never leaves the
//! machine. The client is this test binary re-run as `client_helper`.

use axon_agent::datapath::{
    cgroup2_mount, cleanup, AyaLbMaps, BackendValue, Datapath, DatapathConfig, DatapathError, Family, LbMaps,
    LinkAction, SlotKey, SlotValue,
};
use axon_api::{L4Addr, Protocol};
use axon_bpf::maps::svc_type;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const ENV_CGROUP: &str = "AXON_DP_TEST_CGROUP";
const ENV_OPS: &str = "AXON_DP_TEST_OPS";
const TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per traffic check: both of two backends answer with
/// probability 1 - 2^-23.
const TCP_TRIES: usize = 24;

// ------------------------------------------------------------- guards --

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A bpffs root of our own, cleaned up (links detached, pins removed) on drop.
struct BpffsRoot(PathBuf);

impl BpffsRoot {
    fn new() -> Self {
        let bpffs = Path::new("/sys/fs/bpf");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")))
            .unwrap_or(false);
        if !mounted {
            let status = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status();
            assert!(status.is_ok_and(|s| s.success()), "mounting bpffs at /sys/fs/bpf");
        }
        BpffsRoot(bpffs.join(unique("axon-dp-test")))
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child cgroup of the cgroup2 mount, removed on drop (after its
/// processes, which are our short-lived clients, have exited).
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn new() -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount in /proc/self/mountinfo");
        let path = mount.join(unique("axon-dp-test"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        ChildCgroup(path)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

// ----------------------------------------------------------- backends --

/// A TCP listener answering every connection with its name.
fn tcp_backend(ip: &str, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("binding a TCP backend");
    let addr = listener.local_addr().expect("backend address");
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
    addr
}

/// A UDP socket answering every datagram with its name, to its sender.
fn udp_backend(ip: &str, name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).expect("binding a UDP backend");
    let addr = socket.local_addr().expect("backend address");
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
    addr
}

fn l4(addr: SocketAddr, protocol: Protocol) -> L4Addr {
    L4Addr::new(addr.ip(), addr.port(), protocol)
}

/// Writes a service the way the reconciler orders it: backends, then slots,
/// then rev-NAT and the master slot last.
fn put_service(maps: &mut AyaLbMaps, frontend: L4Addr, rev_nat: u32, backends: &[(u32, SocketAddr)]) {
    for &(id, addr) in backends {
        let be = BackendValue { addr: l4(addr, frontend.protocol), state: 0 };
        maps.put_backend(id, &be).expect("put_backend");
    }
    for (slot, &(id, _)) in (1u16..).zip(backends) {
        let value = SlotValue { backend_id: id, rev_nat_index: rev_nat, ..SlotValue::default() };
        maps.put_slot(&SlotKey { frontend, scope: 0, slot }, &value).expect("put_slot");
    }
    maps.put_rev_nat(rev_nat, &frontend).expect("put_rev_nat");
    let master = SlotValue {
        backend_id: 0,
        rev_nat_index: rev_nat,
        count: backends.len() as u16,
        svc_type: svc_type::CLUSTER_IP,
        flags: 0,
    };
    maps.put_slot(&SlotKey { frontend, scope: 0, slot: 0 }, &master).expect("put master slot");
}

// ------------------------------------------------------------- client --

/// Runs `ops` (`tcp ADDR`, `udp ADDR`, one per line) in a child process
/// placed in `cgroup`; returns its result lines.
fn run_client(cgroup: &Path, ops: &[String]) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args(["client_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_CGROUP, cgroup)
        .env(ENV_OPS, ops.join("\n"))
        .output()
        .expect("running the client helper");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // libtest's "test client_helper ... " may share a line with the first result.
    let lines: Vec<String> = stdout.lines().filter_map(|l| l.split_once("AXON ")).map(|(_, r)| r.to_string()).collect();
    assert_eq!(lines.len(), ops.len(), "one result per op: {stdout}");
    lines
}

/// The client side. A no-op in the normal test run; when re-run by
/// `run_client` it joins the cgroup, then performs each op and prints
/// `AXON <result>`.
#[test]
fn client_helper() {
    let (Ok(cgroup), Ok(ops)) = (std::env::var(ENV_CGROUP), std::env::var(ENV_OPS)) else {
        return;
    };
    // Sockets belong to the cgroup of the process that creates them.
    std::fs::write(Path::new(&cgroup).join("cgroup.procs"), "0").expect("joining the test cgroup");
    for op in ops.lines() {
        let (kind, addr) = op.split_once(' ').expect("op ADDR");
        let addr: SocketAddr = addr.parse().expect("socket address");
        let result = match kind {
            "tcp" => client_tcp(addr),
            "udp" => client_udp(addr),
            other => panic!("unknown op {other}"),
        };
        println!("AXON {result}");
    }
}

fn client_tcp(addr: SocketAddr) -> String {
    let started = Instant::now();
    let fd = lo_socket(&addr, libc::SOCK_STREAM).expect("socket");
    if let Err(e) = connect(&fd, &addr) {
        let errno = e.raw_os_error().unwrap_or(0);
        return format!("err errno={errno} ms={}", started.elapsed().as_millis());
    }
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut name = String::new();
    if let Err(e) = stream.read_to_string(&mut name) {
        return format!("err read={e}");
    }
    let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_else(|e| format!("?{e}"));
    format!("ok name={name} peer={peer}")
}

fn client_udp(addr: SocketAddr) -> String {
    let socket = UdpSocket::from(lo_socket(&addr, libc::SOCK_DGRAM).expect("socket"));
    socket.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    if let Err(e) = socket.send_to(b"hello", addr) {
        return format!("err send errno={}", e.raw_os_error().unwrap_or(0));
    }
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => format!("ok name={} from={from}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => format!("err recv={e}"),
    }
}

/// A socket bound to `lo`: whatever the datapath does, packets stay local.
/// Blocking connect gives up after TIMEOUT (SO_SNDTIMEO).
fn lo_socket(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscalls on a descriptor we own from here on.
    unsafe {
        let raw = libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let dev = b"lo\0";
        if libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr().cast(), dev.len() as u32) != 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: TIMEOUT.as_secs() as i64, tv_usec: 0 };
        let tv_len = std::mem::size_of::<libc::timeval>() as u32;
        if libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), tv_len) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn connect(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    // SAFETY: the sockaddr structs are fully initialised and sized.
    let ret = unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                let len = std::mem::size_of_val(&sa) as u32;
                libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), len)
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                let len = std::mem::size_of_val(&sa) as u32;
                libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in6).cast(), len)
            }
        }
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

// -------------------------------------------------------------- tests --

struct Lab {
    tcp_vip: SocketAddr,
    udp_vip: SocketAddr,
    empty_vip: SocketAddr,
    v6_vip: SocketAddr,
    tcp: [(u32, SocketAddr); 2],
    udp: [(u32, SocketAddr); 2],
    tcp6: [(u32, SocketAddr); 1],
}

impl Lab {
    fn new() -> Self {
        Lab {
            tcp_vip: "10.213.0.1:80".parse().unwrap(),
            udp_vip: "10.213.0.1:53".parse().unwrap(),
            empty_vip: "10.213.0.2:80".parse().unwrap(),
            v6_vip: "[fd00:213::1]:80".parse().unwrap(),
            tcp: [(1, tcp_backend("127.0.0.2", "tcp-b1")), (2, tcp_backend("127.0.0.3", "tcp-b2"))],
            udp: [(3, udp_backend("127.0.0.2", "udp-b1")), (4, udp_backend("127.0.0.3", "udp-b2"))],
            tcp6: [(5, tcp_backend("::1", "tcp6-b1"))],
        }
    }

    fn program(&self, maps: &mut AyaLbMaps) {
        put_service(maps, l4(self.tcp_vip, Protocol::Tcp), 100, &self.tcp);
        put_service(maps, l4(self.udp_vip, Protocol::Udp), 101, &self.udp);
        put_service(maps, l4(self.empty_vip, Protocol::Tcp), 102, &[]);
        put_service(maps, l4(self.v6_vip, Protocol::Tcp), 103, &self.tcp6);
    }

    /// Everything a client in the cgroup should see.
    fn check_traffic(&self, cgroup: &Path) {
        let mapped: SocketAddr = format!("[::ffff:{}]:{}", self.tcp_vip.ip(), self.tcp_vip.port()).parse().unwrap();
        let mut ops: Vec<String> = (0..TCP_TRIES).map(|_| format!("tcp {}", self.tcp_vip)).collect();
        ops.extend((0..8).map(|_| format!("udp {}", self.udp_vip)));
        ops.push(format!("tcp {}", self.empty_vip));
        ops.push(format!("tcp {}", self.v6_vip));
        ops.push(format!("tcp {mapped}"));
        let results = run_client(cgroup, &ops);

        let mut tcp_names = BTreeSet::new();
        for line in &results[..TCP_TRIES] {
            assert!(line.starts_with("ok "), "TCP via VIP: {line}");
            assert_eq!(field(line, "peer"), self.tcp_vip.to_string(), "getpeername shows the VIP: {line}");
            tcp_names.insert(field(line, "name").to_string());
        }
        assert_eq!(tcp_names, BTreeSet::from(["tcp-b1".into(), "tcp-b2".into()]), "both backends serve");

        let mut udp_names = BTreeSet::new();
        for line in &results[TCP_TRIES..TCP_TRIES + 8] {
            assert!(line.starts_with("ok "), "UDP via VIP: {line}");
            assert_eq!(field(line, "from"), self.udp_vip.to_string(), "UDP reply comes from the VIP: {line}");
            udp_names.insert(field(line, "name").to_string());
        }
        assert!(udp_names.is_subset(&BTreeSet::from(["udp-b1".into(), "udp-b2".into()])), "{udp_names:?}");

        let empty = &results[TCP_TRIES + 8];
        assert_eq!(field(empty, "errno"), libc::ECONNREFUSED.to_string(), "no backend: refused: {empty}");
        assert!(field(empty, "ms").parse::<u64>().unwrap() < 500, "no backend fails fast: {empty}");

        let v6 = &results[TCP_TRIES + 9];
        assert!(v6.starts_with("ok name=tcp6-b1 "), "IPv6 VIP: {v6}");
        assert_eq!(field(v6, "peer"), self.v6_vip.to_string(), "IPv6 getpeername: {v6}");

        let v4_mapped = &results[TCP_TRIES + 10];
        assert!(v4_mapped.starts_with("ok name=tcp-b"), "v4-mapped VIP on a v6 socket: {v4_mapped}");
        assert_eq!(field(v4_mapped, "peer"), mapped.to_string(), "v4-mapped getpeername: {v4_mapped}");
    }
}

fn link_ids(dp: &Datapath) -> Vec<u32> {
    dp.programs().iter().map(|p| p.link_id).collect()
}

fn actions(dp: &Datapath) -> BTreeSet<LinkAction> {
    dp.programs().iter().map(|p| p.action).collect()
}

fn live_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links().filter_map(Result::ok).map(|l| l.id()).collect()
}

#[test]
fn socket_lb_serves_through_the_vip_and_survives_restarts() {
    // Declared before the bpffs root so links are detached before the
    // cgroups are removed (locals drop in reverse order).
    let cgroup = ChildCgroup::new();
    let other = ChildCgroup::new();
    let root = BpffsRoot::new();
    let cfg = DatapathConfig {
        service_entries: 1024,
        backend_entries: 1024,
        rev_nat_entries: 1024,
        sock_revnat_entries: 1024,
        ..DatapathConfig::new(&root.0, &cgroup.0)
    };
    let lab = Lab::new();

    // First start: everything created.
    let (dp, mut maps) = Datapath::load(&cfg).expect("loading the datapath");
    // Eight socket-LB programs and two bind-protection ones.
    assert_eq!(dp.programs().len(), 10);
    assert_eq!(actions(&dp), BTreeSet::from([LinkAction::Created]));
    assert_eq!(maps.capacity().service_entries, 1024);
    lab.program(&mut maps);
    lab.check_traffic(&cgroup.0);

    // A master counting slots that are gone (the agent shrinking the
    // service mid-lookup): the program falls back to slot 1.
    let shrinking: SocketAddr = "10.213.0.3:80".parse().unwrap();
    put_service(&mut maps, l4(shrinking, Protocol::Tcp), 104, &lab.tcp[..1]);
    let stale_master =
        SlotValue { rev_nat_index: 104, count: 3, svc_type: svc_type::CLUSTER_IP, ..SlotValue::default() };
    maps.put_slot(&SlotKey { frontend: l4(shrinking, Protocol::Tcp), scope: 0, slot: 0 }, &stale_master)
        .expect("stale master");
    let results = run_client(&cgroup.0, &vec![format!("tcp {shrinking}"); 8]);
    assert!(results.iter().all(|r| r.starts_with("ok name=tcp-b1 ")), "{results:?}");
    for slot in 0..=1 {
        maps.delete_slot(&SlotKey { frontend: l4(shrinking, Protocol::Tcp), scope: 0, slot })
            .expect("removing the shrinking service");
    }
    maps.delete_rev_nat(104, Family::V4).expect("removing the shrinking service");

    let status = dp.status();
    assert!(status.counters["sock_missing_slot"] >= 1, "{:?}", status.counters);
    assert_eq!(status.programs.len(), 10);
    assert!(status.programs.iter().all(|p| p.program_id.is_some() && p.attached_to == cgroup.0.display().to_string()));
    let entries = |name: &str| status.maps.iter().find(|m| m.name == name).map(|m| (m.entries, m.max_entries));
    assert_eq!(entries("axon_lb4_services"), Some((3 + 3 + 1, 1024)), "{:?}", status.maps);
    assert_eq!(entries("axon_lb4_backends"), Some((4, 1024)));
    assert!(status.counters["sock_xlate_fwd"] >= TCP_TRIES as u64 + 18, "{:?}", status.counters);
    assert!(status.counters["sock_xlate_rev"] >= TCP_TRIES as u64 + 18, "{:?}", status.counters);
    assert!(status.counters["sock_no_backend"] >= 1, "{:?}", status.counters);
    assert_eq!(status.kernel.features.get("cgroup_sock_addr"), Some(&true));
    assert!(!status.kernel.release.is_empty());

    // Restart: same links, same programs, same map contents.
    let before_links = link_ids(&dp);
    let before_progs: Vec<u32> = dp.programs().iter().map(|p| p.program_id).collect();
    let before_snapshot = maps.snapshot().expect("snapshot");
    drop((dp, maps));
    let (dp, maps) = Datapath::load(&cfg).expect("reloading the datapath");
    assert_eq!(actions(&dp), BTreeSet::from([LinkAction::Kept]));
    assert_eq!(link_ids(&dp), before_links, "links kept across restart");
    assert_eq!(dp.programs().iter().map(|p| p.program_id).collect::<Vec<_>>(), before_progs);
    assert_eq!(maps.snapshot().expect("snapshot"), before_snapshot, "map contents kept");
    lab.check_traffic(&cgroup.0);

    // Pins that name the wrong links (two swapped): each is replaced by a
    // new link attached before the old one is detached.
    drop((dp, maps));
    let links = root.0.join("links");
    let swap = links.join("swap");
    std::fs::rename(links.join("sock4_connect"), &swap).expect("swapping pins");
    std::fs::rename(links.join("sock4_sendmsg"), links.join("sock4_connect")).expect("swapping pins");
    std::fs::rename(&swap, links.join("sock4_sendmsg")).expect("swapping pins");
    let (dp, maps) = Datapath::load(&cfg).expect("reloading over swapped pins");
    let replaced: Vec<&str> =
        dp.programs().iter().filter(|p| p.action == LinkAction::Replaced).map(|p| p.name).collect();
    assert_eq!(replaced, ["sock4_connect", "sock4_sendmsg"]);
    assert_eq!(dp.programs().iter().filter(|p| p.action == LinkAction::Kept).count(), 8);
    assert!(!links.join("sock4_connect__staging").exists());
    lab.check_traffic(&cgroup.0);
    let before_links = link_ids(&dp);

    // Maps re-created under running programs: the links swap to programs
    // that use the new maps, in place.
    drop((dp, maps));
    for name in axon_bpf::maps::names::ALL {
        std::fs::remove_file(root.0.join("maps").join(name)).expect("removing a map pin");
    }
    let (dp, mut maps) = Datapath::load(&cfg).expect("loading with fresh maps");
    assert_eq!(actions(&dp), BTreeSet::from([LinkAction::Updated]));
    assert_eq!(link_ids(&dp), before_links, "links updated in place");
    assert!(maps.snapshot().expect("snapshot").slots.is_empty());
    lab.program(&mut maps);
    lab.check_traffic(&cgroup.0);

    // Another cgroup: new links attached there, the old ones detached.
    drop((dp, maps));
    let moved = DatapathConfig { cgroup_root: other.0.clone(), ..cfg.clone() };
    let (dp, maps) = Datapath::load(&moved).expect("loading on another cgroup");
    assert_eq!(actions(&dp), BTreeSet::from([LinkAction::Replaced]));
    let live = live_link_ids();
    assert!(before_links.iter().all(|id| !live.contains(id)), "old links detached");
    assert!(link_ids(&dp).iter().all(|id| live.contains(id)));
    lab.check_traffic(&other.0);

    // Cleanup: links detached, pins and dirs gone; a second run is a no-op.
    let new_links = link_ids(&dp);
    drop((dp, maps));
    let report = cleanup(&root.0).expect("cleanup");
    assert_eq!(report.links_detached.len(), 10, "{report}");
    assert_eq!(report.maps_unpinned.len(), axon_bpf::maps::names::ALL.len(), "{report}");
    assert!(!root.0.exists());
    let live = live_link_ids();
    assert!(new_links.iter().all(|id| !live.contains(id)), "links detached by cleanup");
    assert!(cleanup(&root.0).expect("second cleanup").is_empty());
}

#[test]
fn map_full_is_an_error_and_absent_deletes_are_fine() {
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();
    let cfg = DatapathConfig { backend_entries: 2, ..DatapathConfig::new(&root.0, &cgroup.0) };
    let (_dp, mut maps) = Datapath::load(&cfg).expect("loading the datapath");
    let be = |port| BackendValue { addr: L4Addr::new(IpAddr::from([127, 0, 0, 9]), port, Protocol::Tcp), state: 0 };
    maps.put_backend(1, &be(1)).expect("first backend");
    maps.put_backend(2, &be(2)).expect("second backend");
    maps.put_backend(2, &be(3)).expect("replacing an existing key fits");
    match maps.put_backend(3, &be(4)) {
        Err(DatapathError::MapFull { map, max_entries }) => assert_eq!((map, max_entries), ("axon_lb4_backends", 2)),
        other => panic!("expected MapFull, got {other:?}"),
    }
    maps.delete_backend(42, Family::V4).expect("deleting an absent backend");
    maps.delete_rev_nat(42, Family::V6).expect("deleting an absent rev-NAT");
    let frontend = L4Addr::new(IpAddr::from([10, 213, 0, 9]), 80, Protocol::Udp);
    maps.delete_slot(&SlotKey { frontend, scope: 0, slot: 0 }).expect("deleting an absent slot");
}

#[test]
fn load_refuses_a_root_outside_bpffs() {
    let dir = std::env::temp_dir().join(unique("axon-not-bpffs"));
    let cgroup = ChildCgroup::new();
    let err = Datapath::load(&DatapathConfig::new(&dir, &cgroup.0)).expect_err("tmp is not a bpffs");
    assert!(err.to_string().contains("not on a BPF filesystem"), "{err}");
    assert!(!dir.exists());
    assert!(cleanup(&dir).expect("cleanup of nothing").is_empty());
}
