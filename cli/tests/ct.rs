//! `agentctl bpf ct list|flush` against real pinned conntrack maps with no
//! agent anywhere: the maps are created and filled with bpftool under a
//! private bpffs directory, which is removed afterwards.
//!
//! Needs root, bpffs at /sys/fs/bpf and bpftool (`make deps`).

use axon_bpf::maps::{ct, names, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key};
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bpffs directory of our own; dropping it unpins (and so frees) the maps.
struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Self {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")))
            .unwrap_or(false);
        if !mounted {
            let status = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status();
            assert!(status.is_ok_and(|s| s.success()), "mounting bpffs at /sys/fs/bpf");
        }
        let root = Path::new("/sys/fs/bpf").join(format!("axon-cli-ct-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(root.join("maps")).expect("creating the maps dir");
        Root(root)
    }

    fn map(&self, name: &str) -> PathBuf {
        self.0.join("maps").join(name)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bpftool(args: &[&str]) {
    let out = Command::new("bpftool").args(args).output().expect("running bpftool (make deps installs it)");
    assert!(out.status.success(), "bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The bytes of a `#[repr(C)]` value with explicit padding, as bpftool's `hex` words.
fn hex<T: Copy>(value: &T) -> Vec<String> {
    // SAFETY: the axon_bpf map types are repr(C), Copy, and have no implicit padding.
    let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn create_lru(path: &Path, name: &str, key: usize, value: usize) {
    let (key, value) = (key.to_string(), value.to_string());
    let path = path.to_str().expect("UTF-8 path");
    bpftool(&["map", "create", path, "type", "lru_hash", "key", &key, "value", &value, "entries", "64", "name", name]);
}

fn update<K: Copy, V: Copy>(path: &Path, key: &K, value: &V) {
    let mut args: Vec<String> = ["map", "update", "pinned", path.to_str().expect("UTF-8 path"), "key", "hex"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(hex(key));
    args.extend(["value".to_string(), "hex".to_string()]);
    args.extend(hex(value));
    bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn agentctl(root: &Root, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("--bpffs-root")
        .arg(&root.0)
        .arg("--socket")
        .arg("/nonexistent/agent.sock")
        .args(args)
        .output()
        .expect("running agentctl");
    assert!(out.status.success(), "agentctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ct_list_and_flush_work_on_the_pins_alone() {
    let root = Root::new("list");
    let (ct4, ct6) = (root.map(names::CT4_GLOBAL), root.map(names::CT6_GLOBAL));
    create_lru(&ct4, names::CT4_GLOBAL, size_of::<Ct4Key>(), size_of::<Ct4Entry>());
    create_lru(&ct6, names::CT6_GLOBAL, size_of::<Ct6Key>(), size_of::<Ct6Entry>());

    let v4 = |a: [u8; 4]| u32::from(Ipv4Addr::from(a)).to_be();
    let key = Ct4Key {
        saddr: v4([10, 77, 0, 2]),
        daddr: v4([10, 77, 0, 20]),
        sport: 41234u16.to_be(),
        dport: 30080u16.to_be(),
        proto: 6,
        dir: ct::DIR_SERVICE,
        pad: [0; 2],
    };
    let entry = Ct4Entry {
        packets: 4,
        bytes: 300,
        expires: u32::MAX,
        rev_nat_index: 3,
        backend_id: 7,
        client_addr: v4([10, 77, 0, 2]),
        frontend_addr: v4([10, 77, 0, 20]),
        backend_addr: v4([10, 81, 2, 10]),
        nat_addr: v4([10, 77, 0, 20]),
        client_port: 41234u16.to_be(),
        frontend_port: 30080u16.to_be(),
        backend_port: 8080u16.to_be(),
        nat_port: 61001u16.to_be(),
        flags: ct::F_SNAT,
        tcp_state: ct::TCP_EST,
        pad: [0; 10],
    };
    update(&ct4, &key, &entry);
    let key6 = Ct6Key {
        saddr: "fd00:77::2".parse::<Ipv6Addr>().unwrap().octets(),
        daddr: "fd00:77::20".parse::<Ipv6Addr>().unwrap().octets(),
        sport: 5353u16.to_be(),
        dport: 30053u16.to_be(),
        proto: 17,
        dir: ct::DIR_REPLY,
        pad: [0; 2],
    };
    update(&ct6, &key6, &Ct6Entry { expires: 1, ..Ct6Entry::default() });

    let list = agentctl(&root, &["bpf", "ct", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("TCP SVC 10.77.0.2:41234 -> 10.77.0.20:30080 expires=4294967295 (in "), "{list}");
    assert!(
        lines[0].ends_with(
            "state=EST packets=4 bytes=300 flags=SNAT revnat=3 backend_id=7 client=10.77.0.2:41234 \
             frontend=10.77.0.20:30080 backend=10.81.2.10:8080 nat=10.77.0.20:61001"
        ),
        "{list}"
    );
    assert!(lines[1].starts_with("UDP REPLY [fd00:77::2]:5353 -> [fd00:77::20]:30053 expires=1 (expired "), "{list}");

    let json: serde_json::Value =
        serde_json::from_str(&agentctl(&root, &["bpf", "ct", "list", "-o", "json"])).expect("JSON output");
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    assert_eq!(json[0]["backend"], "10.81.2.10:8080");
    assert_eq!(json[1]["direction"], "reply");

    assert_eq!(agentctl(&root, &["bpf", "ct", "flush"]), "Flushed 2 entries from the conntrack maps\n");
    assert_eq!(agentctl(&root, &["bpf", "ct", "list"]), "");
    let json: serde_json::Value =
        serde_json::from_str(&agentctl(&root, &["bpf", "ct", "flush", "-o", "json"])).expect("JSON output");
    assert_eq!(json["flushed"], 0);
}

#[test]
fn ct_list_without_pins_says_so() {
    let root = Root::new("none");
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("--bpffs-root")
        .arg(&root.0)
        .args(["bpf", "ct", "list"])
        .output()
        .expect("running agentctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("axon_ct4_global") && err.contains("not pinned"), "{err}");
}
