//! The north-south plumbing of the datapath on the real kernel, inside
//! network namespaces this test creates: device auto-detection, the node
//! facts written before any program runs (`axon_config`, `axon_devices`,
//! `axon_node_addrs`, the reserved NodePort range), tcx links on veth
//! devices (pinned, kept across reloads, updated in place, swept when a
//! device goes), XDP in generic and native mode, the bind-protection cgroup
//! programs, conntrack GC and flush, and cleanup of everything.
//!
//! Needs root, bpffs at /sys/fs/bpf, cgroup2 and `ip`. No packet is sent:
//! programs are attached to veth pairs inside private namespaces only.

use axon_agent::datapath::{
    cgroup2_mount, cleanup, ct_flush, ct_gc, detect_devices, monotonic_secs, node_addr_key, AttachTarget, CtTimeouts,
    Datapath, DatapathConfig, Devices, LinkAction, PortRange, XdpAttach, XdpMode,
};
use axon_api::LbMode;
use axon_bpf::maps::{ct, dev_flags, lb_mode, names, AxonConfig, AxonDevice, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key};
use axon_bpf::pinned::{open_hash, read_ct};
use aya::maps::{Array, Map, MapData};
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

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
        BpffsRoot(bpffs.join(unique("axon-ns-test")))
    }

    fn links(&self) -> PathBuf {
        self.0.join("links")
    }

    fn maps(&self) -> PathBuf {
        self.0.join("maps")
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

/// A child cgroup of the cgroup2 mount, removed on drop.
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn new() -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount in /proc/self/mountinfo");
        let path = mount.join(unique("axon-ns-test"));
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

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop with every
/// device in it.
struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        // Short: names show up in `ip netns` and must fit the test's
        // cleanup scripts' patterns.
        let name = unique("axns");
        ip(&["netns", "add", &name]);
        let ns = NetNs(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A veth pair `a`/`b` in this namespace, both up, `a` with the given
    /// addresses (CIDR).
    fn veth(&self, a: &str, b: &str, addrs: &[&str]) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", a];
            if addr.contains(':') {
                args.push("nodad");
            }
            self.ip(&args);
        }
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns on a namespace fd we hold; it moves only this thread.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns into {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }

    fn ifindex(&self, dev: &str) -> u32 {
        let line = self.ip(&["-o", "link", "show", "dev", dev]);
        line.split(':').next().and_then(|n| n.trim().parse().ok()).expect("ifindex in `ip -o link`")
    }

    fn mac(&self, dev: &str) -> [u8; 6] {
        let line = self.ip(&["-o", "link", "show", "dev", dev]);
        let text = line.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("link/ether");
        let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
        bytes.try_into().expect("6 bytes")
    }

    /// The XDP word `ip link` prints for a device: `xdp` (native),
    /// `xdpgeneric`, or `None`.
    fn xdp_state(&self, dev: &str) -> Option<String> {
        let line = self.ip(&["-o", "link", "show", "dev", dev]);
        line.split_whitespace().find(|w| *w == "xdp" || *w == "xdpgeneric").map(str::to_string)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

// ------------------------------------------------------------ helpers --

fn config(root: &BpffsRoot, cgroup: &ChildCgroup, devices: Devices, xdp_mode: XdpMode) -> DatapathConfig {
    DatapathConfig {
        service_entries: 1024,
        backend_entries: 1024,
        rev_nat_entries: 1024,
        sock_revnat_entries: 1024,
        ct_entries: 1024,
        maglev_entries: 4096,
        maglev_table_size: 251,
        affinity_entries: 1024,
        source_range_entries: 1024,
        devices,
        xdp_mode,
        ..DatapathConfig::new(&root.0, &cgroup.0)
    }
}

fn named(devices: &[&str]) -> Devices {
    Devices::Named(devices.iter().map(|d| d.to_string()).collect())
}

fn load_in(ns: &NetNs, cfg: &DatapathConfig) -> Datapath {
    ns.run(|| Datapath::load(cfg).map(|(dp, _)| dp)).unwrap_or_else(|e| panic!("loading the datapath: {e}"))
}

fn live_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links().filter_map(Result::ok).map(|l| l.id()).collect()
}

/// (program, target, action) of every device program.
fn device_programs(dp: &Datapath) -> Vec<(String, String, String, LinkAction)> {
    dp.programs()
        .iter()
        .filter_map(|p| match &p.target {
            AttachTarget::Device { name, .. } => {
                Some((p.name.to_string(), p.attach_type.to_string(), name.clone(), p.action))
            }
            AttachTarget::Cgroup(_) => None,
        })
        .collect()
}

fn device_link_ids(dp: &Datapath) -> Vec<u32> {
    dp.programs().iter().filter(|p| matches!(p.target, AttachTarget::Device { .. })).map(|p| p.link_id).collect()
}

fn pins(root: &BpffsRoot) -> BTreeSet<String> {
    std::fs::read_dir(root.links())
        .map(|r| r.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn device_pins(root: &BpffsRoot) -> BTreeSet<String> {
    pins(root).into_iter().filter(|p| p.contains('@')).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn read_devices(root: &BpffsRoot) -> Vec<(u32, AxonDevice)> {
    let mut v: Vec<(u32, AxonDevice)> =
        axon_bpf::pinned::dump_hash(&root.maps().join(names::DEVICES)).expect("reading axon_devices");
    v.sort_by_key(|(k, _)| *k);
    v
}

fn xdp_flag(root: &BpffsRoot, ifindex: u32) -> bool {
    read_devices(root).iter().any(|(k, d)| *k == ifindex && d.flags & dev_flags::XDP != 0)
}

// -------------------------------------------------------------- tests --

#[test]
fn auto_detects_devices_and_writes_node_facts() {
    let ns = NetNs::new();
    ns.veth("np0", "np0p", &["10.250.1.1/24", "10.250.1.9/24", "fd00:250:1::1/64"]);
    ns.ip(&["route", "add", "default", "via", "10.250.1.2", "dev", "np0"]);
    ns.ip(&["-6", "route", "add", "default", "via", "fd00:250:1::2", "dev", "np0"]);
    // An addressed device off the default route is no node device.
    ns.veth("side0", "side0p", &["10.251.0.1/24"]);

    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();
    let host_reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").expect("host sysctl");
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "8080")).expect("pre-existing reservation");
    let extra: IpAddr = "192.0.2.77".parse().unwrap();
    let cfg = DatapathConfig {
        extra_node_addresses: vec![extra],
        lb_mode: LbMode::Hybrid,
        ct_timeouts: CtTimeouts { syn: 7, tcp: 700, close: 3, udp: 30 },
        maglev_table_size: 251,
        snat_port_range: PortRange { min: 40000, max: 40999 },
        ..config(&root, &cgroup, Devices::Auto, XdpMode::Disabled)
    };
    let dp = load_in(&ns, &cfg);

    let np0 = ns.ifindex("np0");
    let devices: Vec<(&str, u32)> = dp.devices().iter().map(|a| (a.device.name.as_str(), a.device.ifindex)).collect();
    assert_eq!(devices, [("np0", np0)]);
    let dev = &dp.devices()[0].device;
    assert_eq!(dev.ipv4, Some(Ipv4Addr::new(10, 250, 1, 1)), "primary address");
    assert_eq!(dev.ipv6, Some("fd00:250:1::1".parse().unwrap()), "global, not link-local");
    assert_eq!(dev.mac, ns.mac("np0"));

    // axon_config.
    let data = MapData::from_pin(root.maps().join(names::CONFIG)).expect("axon_config pin");
    let array: Array<MapData, AxonConfig> = Array::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let kc = array.get(&0, 0).expect("axon_config[0]");
    assert_eq!(kc, cfg.kernel_config());
    assert_eq!((kc.ct_timeout_syn, kc.ct_timeout_tcp, kc.ct_timeout_close, kc.ct_timeout_udp), (7, 700, 3, 30));
    assert_eq!((kc.nodeport_min, kc.nodeport_max, kc.snat_port_min, kc.snat_port_max), (30000, 32767, 40000, 40999));
    assert_eq!((kc.maglev_table_size, kc.lb_mode), (251, lb_mode::HYBRID));

    // axon_devices.
    let want = AxonDevice {
        ipv4: u32::from(Ipv4Addr::new(10, 250, 1, 1)).to_be(),
        ipv6: "fd00:250:1::1".parse::<Ipv6Addr>().unwrap().octets(),
        mac: ns.mac("np0"),
        flags: 0,
        pad: 0,
    };
    assert_eq!(read_devices(&root), [(np0, want)]);

    // axon_node_addrs: every address of the device, v4-mapped, plus the extra one.
    let addrs = axon_bpf::pinned::dump_hash::<axon_bpf::maps::NodeAddrKey, u32>(&root.maps().join(names::NODE_ADDRS))
        .expect("reading axon_node_addrs");
    let got: BTreeSet<([u8; 16], u32)> = addrs.iter().map(|(k, v)| (k.address, *v)).collect();
    let key = |a: &str| node_addr_key(a.parse().unwrap()).address;
    let want: BTreeSet<([u8; 16], u32)> =
        [(key("10.250.1.1"), np0), (key("10.250.1.9"), np0), (key("fd00:250:1::1"), np0), (key("192.0.2.77"), 0)]
            .into();
    assert_eq!(got, want);
    assert_eq!(key("10.250.1.1")[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

    // The NodePort range is reserved in the namespace, beside what was there.
    let reserved = ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")).unwrap();
    assert_eq!(reserved.trim(), "8080,30000-32767");
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    assert_eq!(host_after, host_reserved, "the host's namespace is untouched");

    // Status reports devices and addresses.
    let status = dp.status();
    assert_eq!(status.devices.len(), 1);
    assert_eq!((status.devices[0].name.as_str(), status.devices[0].tc, status.devices[0].xdp), ("np0", "tcx", None));
    assert_eq!(status.node_addresses.len(), 4);
    assert!(status.node_addresses.iter().any(|a| a.address == extra && a.device.is_none()));
    let fill = |name: &str| status.maps.iter().find(|m| m.name == name).map(|m| (m.entries, m.max_entries));
    assert_eq!(fill(names::DEVICES), Some((1, 64)));
    assert_eq!(fill(names::NODE_ADDRS), Some((4, 256)));
    assert_eq!(fill(names::CONFIG), Some((1, 1)));
    assert_eq!(fill(names::CT4_GLOBAL), Some((0, 1024)));
    assert_eq!(fill(names::LB_MAGLEV), Some((0, 4096)));
    assert!(status.programs.iter().any(|p| p.name == "nodeport_ingress" && p.attached_to == "np0"));

    // The same detection as a function.
    let found = ns.run(|| detect_devices(&Devices::Auto)).expect("detect_devices");
    assert_eq!(found.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["np0"]);

    // A device that is gone from the addresses is gone from the map at the
    // next load.
    drop(dp);
    ns.ip(&["addr", "del", "10.250.1.9/24", "dev", "np0"]);
    let _dp = load_in(&ns, &cfg);
    let addrs = axon_bpf::pinned::dump_hash::<axon_bpf::maps::NodeAddrKey, u32>(&root.maps().join(names::NODE_ADDRS))
        .expect("reading axon_node_addrs");
    assert_eq!(addrs.len(), 3);
    assert!(!addrs.iter().any(|(k, _)| k.address == key("10.250.1.9")));
}

#[test]
fn device_selection_errors_are_clear() {
    let ns = NetNs::new();
    ns.veth("np0", "np0p", &["10.250.2.1/24"]);
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();

    let err = ns.run(|| Datapath::load(&config(&root, &cgroup, Devices::Auto, XdpMode::Disabled)).map(drop));
    let err = err.expect_err("no default route");
    assert!(err.to_string().contains("--devices"), "{err}");

    let err = ns.run(|| Datapath::load(&config(&root, &cgroup, named(&["nope0"]), XdpMode::Disabled)).map(drop));
    let err = err.expect_err("no such device");
    assert!(err.to_string().contains("nope0"), "{err}");

    let bad = DatapathConfig { maglev_table_size: 1000, ..config(&root, &cgroup, Devices::None, XdpMode::Disabled) };
    let err = Datapath::load(&bad).expect_err("not a prime");
    assert!(err.to_string().contains("maglev-table-size"), "{err}");
    let bad = DatapathConfig {
        snat_port_range: PortRange { min: 32000, max: 33000 },
        ..config(&root, &cgroup, Devices::None, XdpMode::Disabled)
    };
    let err = Datapath::load(&bad).expect_err("SNAT overlaps NodePort");
    assert!(err.to_string().contains("snat-port-range"), "{err}");
    assert!(device_pins(&root).is_empty());
}

#[test]
fn tcx_links_are_pinned_kept_updated_and_swept() {
    let ns = NetNs::new();
    ns.veth("np0", "np0p", &["10.250.3.1/24"]);
    ns.veth("np1", "np1p", &["10.250.4.1/24"]);
    ns.ip(&["link", "add", "gone0", "type", "bridge"]);
    ns.ip(&["link", "set", "gone0", "up"]);
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();

    // First load: both tcx directions on np0, pinned.
    let cfg = config(&root, &cgroup, named(&["np0"]), XdpMode::Disabled);
    let dp = load_in(&ns, &cfg);
    assert_eq!(
        device_programs(&dp),
        [
            ("nodeport_ingress".into(), "tcx/ingress".into(), "np0".into(), LinkAction::Created),
            ("nodeport_egress".into(), "tcx/egress".into(), "np0".into(), LinkAction::Created),
        ]
    );
    assert_eq!(device_pins(&root), set(&["nodeport_ingress@np0", "nodeport_egress@np0"]));
    let ingress_prog = dp.programs().iter().find(|p| p.name == "nodeport_ingress").unwrap().program_id;
    let on_device = ns.run(|| {
        aya::programs::SchedClassifier::query_tcx("np0", aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| progs.iter().map(|p| p.id()).collect::<Vec<_>>())
    });
    assert_eq!(on_device.expect("query_tcx"), [ingress_prog], "the kernel runs it on np0 ingress");
    let first_ids = device_link_ids(&dp);
    assert!(first_ids.iter().all(|id| live_link_ids().contains(id)));

    // Restart: kept, same links.
    drop(dp);
    let dp = load_in(&ns, &cfg);
    assert!(device_programs(&dp).iter().all(|p| p.3 == LinkAction::Kept), "{:?}", device_programs(&dp));
    assert_eq!(device_link_ids(&dp), first_ids);

    // Maps re-created under the running programs: links updated in place.
    drop(dp);
    for entry in std::fs::read_dir(root.maps()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let dp = load_in(&ns, &cfg);
    assert!(device_programs(&dp).iter().all(|p| p.3 == LinkAction::Updated), "{:?}", device_programs(&dp));
    assert_eq!(device_link_ids(&dp), first_ids, "same links, new programs");

    // More devices: np0 kept, np1 and gone0 created.
    drop(dp);
    let cfg3 = config(&root, &cgroup, named(&["np0", "np1", "gone0"]), XdpMode::Disabled);
    let dp = load_in(&ns, &cfg3);
    let actions: BTreeSet<(String, LinkAction)> = device_programs(&dp).into_iter().map(|p| (p.2, p.3)).collect();
    assert_eq!(
        actions,
        [("np0".into(), LinkAction::Kept), ("np1".into(), LinkAction::Created), ("gone0".into(), LinkAction::Created)]
            .into()
    );
    assert_eq!(device_pins(&root).len(), 6);
    assert_eq!(read_devices(&root).len(), 3);

    // A device deleted while no agent runs, another dropped from the list:
    // both swept at the next load, their links detached.
    let np0_ids: Vec<u32> = dp
        .programs()
        .iter()
        .filter(|p| matches!(&p.target, AttachTarget::Device { name, .. } if name == "np0"))
        .map(|p| p.link_id)
        .collect();
    drop(dp);
    ns.ip(&["link", "del", "gone0"]);
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np1"]), XdpMode::Disabled));
    let swept: BTreeSet<String> =
        dp.stale_links_removed().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        swept,
        set(&["nodeport_egress@gone0", "nodeport_ingress@gone0", "nodeport_egress@np0", "nodeport_ingress@np0"])
    );
    assert_eq!(device_pins(&root), set(&["nodeport_ingress@np1", "nodeport_egress@np1"]));
    let live = live_link_ids();
    assert!(np0_ids.iter().all(|id| !live.contains(id)), "np0 links detached");
    let np0_progs = ns.run(|| {
        aya::programs::SchedClassifier::query_tcx("np0", aya::programs::TcAttachType::Ingress).map(|(_, p)| p.len())
    });
    assert_eq!(np0_progs.expect("query_tcx"), 0);
    assert_eq!(read_devices(&root).iter().map(|(k, _)| *k).collect::<Vec<_>>(), [ns.ifindex("np1")]);

    // Socket-LB only: every device link goes.
    let kept_ids = device_link_ids(&dp);
    drop(dp);
    let dp = load_in(&ns, &config(&root, &cgroup, Devices::None, XdpMode::BestEffort));
    assert!(device_programs(&dp).is_empty());
    assert!(device_pins(&root).is_empty());
    assert!(read_devices(&root).is_empty());
    let live = live_link_ids();
    assert!(kept_ids.iter().all(|id| !live.contains(id)));

    // Cleanup removes the device links too.
    drop(dp);
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0", "np1"]), XdpMode::Disabled));
    let all_ids: Vec<u32> = dp.programs().iter().map(|p| p.link_id).collect();
    drop(dp);
    let report = cleanup(&root.0).expect("cleanup");
    let detached: BTreeSet<String> =
        report.links_detached.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(detached.contains("nodeport_ingress@np0") && detached.contains("nodeport_egress@np1"), "{report}");
    assert!(!root.0.exists());
    let live = live_link_ids();
    assert!(all_ids.iter().all(|id| !live.contains(id)), "every link detached by cleanup");
}

// ---------------------------------------------------------------- XDP --

/// `BPF_PROG_LOAD` of `r0 = XDP_PASS; exit`: the program a veth peer needs
/// for native XDP on the other end to transmit.
fn load_xdp_pass() -> OwnedFd {
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    // struct bpf_insn { code, dst:4|src:4, off, imm }, little-endian.
    let insns: [u64; 2] = [0xb7 | (2u64 << 32), 0x95];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"axon_pass");
    let mut attr = ProgLoadAttr {
        prog_type: 6, // BPF_PROG_TYPE_XDP
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 37, // BPF_XDP
    };
    // SAFETY: a complete BPF_PROG_LOAD attr; the kernel reads it and the
    // buffers it points at, which outlive the call.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, 5, &mut attr as *mut ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>()) };
    assert!(fd >= 0, "loading an XDP_PASS program: {}", io::Error::last_os_error());
    // SAFETY: a new fd we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Attaches `prog` as native XDP on `ifindex` (of the calling thread's
/// namespace) with a link that lives as long as the returned fd.
fn attach_native_xdp(prog: &OwnedFd, ifindex: u32) -> OwnedFd {
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 3],
    }
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: 37,
        flags: 1 << 2, // XDP_FLAGS_DRV_MODE
        rest: [0; 3],
    };
    // SAFETY: a complete BPF_LINK_CREATE attr.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, 28, &mut attr as *mut LinkCreateAttr, std::mem::size_of::<LinkCreateAttr>())
    };
    assert!(fd >= 0, "attaching XDP_PASS: {}", io::Error::last_os_error());
    // SAFETY: a new fd we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn xdp_attaches_generic_native_and_best_effort() {
    let ns = NetNs::new();
    ns.veth("np0", "np0p", &["10.250.5.1/24"]);
    ns.ip(&["link", "add", "dm0", "type", "bridge"]);
    ns.ip(&["link", "set", "dm0", "up"]);
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();
    let np0 = ns.ifindex("np0");

    // Generic.
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0"]), XdpMode::Generic));
    assert_eq!(dp.devices()[0].xdp, Some(XdpAttach::Generic));
    assert!(device_programs(&dp).contains(&(
        "xdp_nodeport".into(),
        "xdp/generic".into(),
        "np0".into(),
        LinkAction::Created
    )));
    assert!(device_pins(&root).contains("xdp_nodeport-generic@np0"));
    assert_eq!(ns.xdp_state("np0").as_deref(), Some("xdpgeneric"));
    assert!(xdp_flag(&root, np0), "axon_devices says XDP runs on np0");
    assert_eq!(dp.status().devices[0].xdp, Some("generic"));
    let generic_link = dp.programs().iter().find(|p| p.name == "xdp_nodeport").unwrap().link_id;

    // Kept across a restart.
    drop(dp);
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0"]), XdpMode::Generic));
    let xdp = dp.programs().iter().find(|p| p.name == "xdp_nodeport").unwrap();
    assert_eq!((xdp.action, xdp.link_id), (LinkAction::Kept, generic_link));

    // Native on veth, with an XDP program on the peer (what veth needs to
    // pass XDP_TX/redirected frames on): the generic link goes first.
    let pass = load_xdp_pass();
    let peer_index = ns.ifindex("np0p");
    let _peer_link = ns.run(|| attach_native_xdp(&pass, peer_index));
    drop(dp);
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0"]), XdpMode::Native));
    assert_eq!(dp.devices()[0].xdp, Some(XdpAttach::Native));
    assert_eq!(dp.stale_links_removed().len(), 1);
    assert!(device_pins(&root).contains("xdp_nodeport-native@np0"));
    assert!(!device_pins(&root).contains("xdp_nodeport-generic@np0"));
    assert_eq!(ns.xdp_state("np0").as_deref(), Some("xdp"));
    assert!(!live_link_ids().contains(&generic_link));
    assert!(xdp_flag(&root, np0));

    // Native on a device without driver XDP fails the load...
    drop(dp);
    let err = ns.run(|| Datapath::load(&config(&root, &cgroup, named(&["np0", "dm0"]), XdpMode::Native)).map(drop));
    let err = err.expect_err("dummy has no native XDP");
    assert!(err.to_string().contains("xdp_nodeport"), "{err}");

    // ...best-effort leaves it to tc.
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0", "dm0"]), XdpMode::BestEffort));
    let xdp: Vec<(&str, Option<XdpAttach>)> = dp.devices().iter().map(|a| (a.device.name.as_str(), a.xdp)).collect();
    assert_eq!(xdp, [("np0", Some(XdpAttach::Native)), ("dm0", None)]);
    assert!(!xdp_flag(&root, ns.ifindex("dm0")));
    assert!(xdp_flag(&root, np0));
    assert!(device_pins(&root).contains("nodeport_ingress@dm0"), "tc still serves dm0");

    // Disabled: XDP links go, the flag clears, tc stays.
    drop(dp);
    let dp = load_in(&ns, &config(&root, &cgroup, named(&["np0"]), XdpMode::Disabled));
    assert_eq!(dp.devices()[0].xdp, None);
    assert_eq!(ns.xdp_state("np0"), None);
    assert!(!xdp_flag(&root, np0));
    assert_eq!(device_pins(&root), set(&["nodeport_ingress@np0", "nodeport_egress@np0"]));
}

#[test]
fn bind_protection_programs_attach_to_the_cgroup() {
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();
    let (dp, _) = Datapath::load(&config(&root, &cgroup, Devices::None, XdpMode::Disabled)).expect("load");
    for (name, hook) in [("sock4_post_bind", "cgroup/post_bind4"), ("sock6_post_bind", "cgroup/post_bind6")] {
        let p = dp.programs().iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} attached"));
        assert_eq!(p.attach_type, hook);
        assert_eq!(p.target, AttachTarget::Cgroup(cgroup.0.clone()));
        assert!(root.links().join(name).exists());
    }
    drop(dp);
    let (dp, _) = Datapath::load(&config(&root, &cgroup, Devices::None, XdpMode::Disabled)).expect("reload");
    assert!(dp.programs().iter().all(|p| p.action == LinkAction::Kept));
}

// --------------------------------------------------------- conntrack --

fn ct4(sport: u16, dir: u8, expires: u32) -> (Ct4Key, Ct4Entry) {
    let key = Ct4Key {
        saddr: u32::from(Ipv4Addr::new(10, 77, 0, 2)).to_be(),
        daddr: u32::from(Ipv4Addr::new(10, 77, 0, 20)).to_be(),
        sport: sport.to_be(),
        dport: 30080u16.to_be(),
        proto: 6,
        dir,
        pad: [0; 2],
    };
    let entry = Ct4Entry { expires, packets: 3, bytes: 180, tcp_state: ct::TCP_EST, ..Ct4Entry::default() };
    (key, entry)
}

fn ct6(sport: u16, expires: u32) -> (Ct6Key, Ct6Entry) {
    let key = Ct6Key {
        saddr: "fd00:77::2".parse::<Ipv6Addr>().unwrap().octets(),
        daddr: "fd00:77::20".parse::<Ipv6Addr>().unwrap().octets(),
        sport: sport.to_be(),
        dport: 30080u16.to_be(),
        proto: 17,
        dir: ct::DIR_SERVICE,
        pad: [0; 2],
    };
    (key, Ct6Entry { expires, ..Ct6Entry::default() })
}

#[test]
fn ct_gc_deletes_only_expired_entries_and_flush_deletes_all() {
    let cgroup = ChildCgroup::new();
    let root = BpffsRoot::new();
    let (_dp, _) = Datapath::load(&config(&root, &cgroup, Devices::None, XdpMode::Disabled)).expect("load");
    let now = monotonic_secs();
    assert!(now > 0);
    let now32 = now as u32;
    let mut map4 = open_hash::<Ct4Key, Ct4Entry>(&root.maps().join(names::CT4_GLOBAL)).unwrap();
    let mut map6 = open_hash::<Ct6Key, Ct6Entry>(&root.maps().join(names::CT6_GLOBAL)).unwrap();
    let expired4 = [ct4(1000, ct::DIR_SERVICE, now32 - 5), ct4(1001, ct::DIR_REPLY, now32 - 1)];
    let alive4 = [ct4(2000, ct::DIR_SERVICE, now32 + 60), ct4(2001, ct::DIR_REPLY, now32 + 3600)];
    for (k, v) in expired4.iter().chain(&alive4) {
        map4.insert(k, v, 0).unwrap();
    }
    let (k6_old, v6_old) = ct6(3000, now32 - 100);
    let (k6_new, v6_new) = ct6(3001, now32 + 100);
    map6.insert(k6_old, v6_old, 0).unwrap();
    map6.insert(k6_new, v6_new, 0).unwrap();

    let stats = ct_gc(&root.0, now).expect("ct_gc");
    assert_eq!((stats.scanned, stats.deleted, stats.deleted_v4, stats.deleted_v6), (6, 3, 2, 1));
    assert_eq!(stats.alive(), 3);
    let left = read_ct(&root.0).expect("read_ct");
    let ports: BTreeSet<u16> = left.iter().map(|e| e.src.port()).collect();
    assert_eq!(ports, [2000, 2001, 3001].into());
    let e = left.iter().find(|e| e.src.port() == 2000).unwrap();
    assert_eq!((e.dst.to_string(), e.proto, e.packets, e.tcp_state), ("10.77.0.20:30080".into(), 6, 3, ct::TCP_EST));
    assert!(!e.expired_at(now));

    // A second pass finds nothing more; a later "now" expires the rest.
    assert_eq!(ct_gc(&root.0, now).unwrap().deleted, 0);
    assert_eq!(ct_gc(&root.0, now + 61).unwrap().deleted, 1);

    assert_eq!(ct_flush(&root.0).expect("flush"), 2);
    assert!(read_ct(&root.0).unwrap().is_empty());
}
