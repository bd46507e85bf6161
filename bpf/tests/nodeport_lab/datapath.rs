//! One node's datapath set up by hand, as the agent would: the objects
//! loaded with their maps pinned in a private bpffs directory, programs
//! attached inside the node's namespace, maps written with the #[repr(C)]
//! types of `axon_bpf::maps`.

use super::net::in_ns;
use axon_bpf::maps::*;
use axon_bpf::objects::{NODEPORT, XDP, XDP_PASS_PROGRAM, XDP_PROGRAM};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A private pin directory under /sys/fs/bpf, removed with its pins on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let path = Path::new("/sys/fs/bpf").join(format!("axon-np-{tag}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a pin directory under /sys/fs/bpf (root and a bpffs needed)");
        PinDir(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn load(object: &[u8], pins: &Path) -> Ebpf {
    EbpfLoader::new().default_map_pin_directory(pins).load(object).expect("loading an object (maps pinned by name)")
}

/// A backend of a [`Service`].
#[derive(Clone, Debug)]
pub struct Backend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// `backend_state::F_LOCAL` for a backend on this node.
    pub flags: u8,
}

/// One frontend and its backends, written like the agent writes them.
#[derive(Clone, Debug)]
pub struct Service {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// `scope::EXTERNAL`, or `scope::INTERNAL` for the internal view.
    pub scope: u8,
    pub id: u32,
    pub svc_type: u8,
    pub flags: u8,
    pub affinity_timeout: u32,
    pub backends: Vec<Backend>,
}

/// A node's programs and maps. Field order is drop order: programs (and
/// with them their links) go before the pins.
pub struct NodeDatapath {
    tc: Ebpf,
    xdp: Option<Ebpf>,
    maps: Maps,
    pub pins: PinDir,
}

impl std::ops::Deref for NodeDatapath {
    type Target = Maps;

    fn deref(&self) -> &Maps {
        &self.maps
    }
}

impl NodeDatapath {
    pub fn load(tag: &str) -> Self {
        let pins = PinDir::new(tag);
        let tc = load(NODEPORT, &pins.0);
        NodeDatapath { tc, xdp: None, maps: Maps::new(&pins), pins }
    }

    /// Attaches nodeport_ingress/egress to `dev` in `ns` (TCX on this kernel).
    pub fn attach_tc(&mut self, ns: &str, dev: &str) {
        let tc = &mut self.tc;
        in_ns(ns, move || {
            for (name, direction) in
                [("nodeport_ingress", TcAttachType::Ingress), ("nodeport_egress", TcAttachType::Egress)]
            {
                let program: &mut SchedClassifier =
                    tc.program_mut(name).expect("program in nodeport.o").try_into().expect("a classifier");
                program.load().unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
                program.attach(dev, direction).unwrap_or_else(|e| panic!("attaching {name} to {dev}: {e:?}"));
            }
        });
    }

    /// Attaches xdp_nodeport to `dev` in `ns`, sharing this node's maps.
    pub fn attach_xdp(&mut self, ns: &str, dev: &str, mode: XdpMode) {
        let mut ebpf = load(XDP, &self.pins.0);
        in_ns(ns, || {
            let program: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).expect("program in xdp.o").try_into().expect("xdp");
            program.load().unwrap_or_else(|e| panic!("loading {XDP_PROGRAM}: {e:?}"));
            program.attach(dev, mode).unwrap_or_else(|e| panic!("attaching {XDP_PROGRAM} to {dev} ({mode:?}): {e:?}"));
        });
        self.xdp = Some(ebpf);
    }
}

/// The maps pinned in one directory, written and read with the #[repr(C)]
/// types.
pub struct Maps {
    dir: PathBuf,
}

impl Maps {
    pub fn new(pins: &PinDir) -> Self {
        Maps { dir: pins.0.clone() }
    }

    fn map(&self, name: &str) -> Map {
        let path = self.dir.join(name);
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Map::from_map_data(data).expect("a known map type")
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        HashMap::try_from(self.map(name)).expect("a hash map")
    }

    pub fn set_config(&self, cfg: AxonConfig) {
        let mut map: Array<MapData, AxonConfig> = Array::try_from(self.map(names::CONFIG)).expect("an array");
        map.set(0, cfg, 0).expect("writing axon_config");
    }

    pub fn add_device(&self, ifindex: u32, dev: AxonDevice) {
        self.hash::<u32, AxonDevice>(names::DEVICES).insert(ifindex, dev, 0).expect("writing axon_devices");
    }

    pub fn add_node_addr(&self, addr: IpAddr, ifindex: u32) {
        let key = NodeAddrKey { address: mapped(addr) };
        self.hash::<NodeAddrKey, u32>(names::NODE_ADDRS).insert(key, ifindex, 0).expect("writing axon_node_addrs");
    }

    /// Backends first, then slots, reverse NAT, and the master last, so the
    /// datapath never follows a slot to nothing.
    pub fn put_service(&self, svc: &Service) {
        let master = LbService {
            backend_id: svc.affinity_timeout,
            rev_nat_index: svc.id,
            count: svc.backends.len() as u16,
            svc_type: svc.svc_type,
            flags: svc.flags,
        };
        match svc.addr {
            IpAddr::V4(addr) => {
                let mut backends = self.hash::<u32, Lb4Backend>(names::LB4_BACKENDS);
                let mut services = self.hash::<Lb4Key, LbService>(names::LB4_SERVICES);
                for (i, be) in svc.backends.iter().enumerate() {
                    let IpAddr::V4(be_addr) = be.addr else { panic!("an IPv4 service with an IPv6 backend") };
                    backends.insert(be.id, Lb4Backend::new(be_addr, be.port, svc.proto, be.flags), 0).expect("backend");
                    let slot = LbService { backend_id: be.id, rev_nat_index: svc.id, ..LbService::default() };
                    let key = Lb4Key { scope: svc.scope, ..Lb4Key::new(addr, svc.port, svc.proto, i as u16 + 1) };
                    services.insert(key, slot, 0).expect("slot");
                }
                self.hash::<u32, Lb4ReverseNat>(names::LB4_REVERSE_NAT)
                    .insert(svc.id, Lb4ReverseNat::new(addr, svc.port), 0)
                    .expect("reverse nat");
                let key = Lb4Key { scope: svc.scope, ..Lb4Key::new(addr, svc.port, svc.proto, 0) };
                services.insert(key, master, 0).expect("master");
            }
            IpAddr::V6(addr) => {
                let mut backends = self.hash::<u32, Lb6Backend>(names::LB6_BACKENDS);
                let mut services = self.hash::<Lb6Key, LbService>(names::LB6_SERVICES);
                for (i, be) in svc.backends.iter().enumerate() {
                    let IpAddr::V6(be_addr) = be.addr else { panic!("an IPv6 service with an IPv4 backend") };
                    backends.insert(be.id, Lb6Backend::new(be_addr, be.port, svc.proto, be.flags), 0).expect("backend");
                    let slot = LbService { backend_id: be.id, rev_nat_index: svc.id, ..LbService::default() };
                    let key = Lb6Key { scope: svc.scope, ..Lb6Key::new(addr, svc.port, svc.proto, i as u16 + 1) };
                    services.insert(key, slot, 0).expect("slot");
                }
                self.hash::<u32, Lb6ReverseNat>(names::LB6_REVERSE_NAT)
                    .insert(svc.id, Lb6ReverseNat::new(addr, svc.port), 0)
                    .expect("reverse nat");
                let key = Lb6Key { scope: svc.scope, ..Lb6Key::new(addr, svc.port, svc.proto, 0) };
                services.insert(key, master, 0).expect("master");
            }
        }
    }

    /// Adds `net/prefix` to the source ranges of service `rev_nat_index`.
    pub fn allow_source(&self, rev_nat_index: u32, net: IpAddr, prefix: u32) {
        match net {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<MapData, [u8; 8], u8> =
                    LpmTrie::try_from(self.map(names::LB4_SOURCE_RANGE)).expect("an LPM trie");
                let mut data = [0u8; 8];
                data[..4].copy_from_slice(&rev_nat_index.to_ne_bytes());
                data[4..].copy_from_slice(&a.octets());
                trie.insert(&Key::new(32 + prefix, data), 1, 0).expect("source range");
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<MapData, [u8; 20], u8> =
                    LpmTrie::try_from(self.map(names::LB6_SOURCE_RANGE)).expect("an LPM trie");
                let mut data = [0u8; 20];
                data[..4].copy_from_slice(&rev_nat_index.to_ne_bytes());
                data[4..].copy_from_slice(&a.octets());
                trie.insert(&Key::new(32 + prefix, data), 1, 0).expect("source range");
            }
        }
    }

    /// Deletes a backend (after the slots naming it were rewritten).
    pub fn remove_backend(&self, id: u32, ipv6: bool) {
        if ipv6 {
            self.hash::<u32, Lb6Backend>(names::LB6_BACKENDS).remove(&id).expect("removing a backend");
        } else {
            self.hash::<u32, Lb4Backend>(names::LB4_BACKENDS).remove(&id).expect("removing a backend");
        }
    }

    /// Writes a service's whole Maglev table (external scope).
    pub fn set_maglev(&self, rev_nat_index: u32, table: &[u32]) {
        let mut map = self.hash::<LbMaglevKey, u32>(names::LB_MAGLEV);
        for (index, &backend_id) in table.iter().enumerate() {
            let key = LbMaglevKey { rev_nat_index, index: index as u32, ..LbMaglevKey::default() };
            map.insert(key, backend_id, 0).expect("maglev entry");
        }
    }

    pub fn config(&self) -> AxonConfig {
        let map: Array<MapData, AxonConfig> = Array::try_from(self.map(names::CONFIG)).expect("an array");
        map.get(&0, 0).expect("reading axon_config")
    }

    /// A datapath counter, summed over CPUs.
    pub fn metric(&self, index: u32) -> u64 {
        let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(self.map(names::METRICS)).expect("a per-CPU array");
        map.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }

    pub fn ct4(&self) -> Vec<(Ct4Key, Ct4Entry)> {
        self.hash::<Ct4Key, Ct4Entry>(names::CT4_GLOBAL).iter().filter_map(Result::ok).collect()
    }

    pub fn ct6(&self) -> Vec<(Ct6Key, Ct6Entry)> {
        self.hash::<Ct6Key, Ct6Entry>(names::CT6_GLOBAL).iter().filter_map(Result::ok).collect()
    }
}

/// An address as axon_node_addrs keys it (IPv4 v4-mapped).
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// `xdp_pass` on a veth peer, so native XDP on the other end can transmit
/// into it. Its maps are private (it uses none).
pub struct PeerXdp {
    _ebpf: Ebpf,
    _pins: PinDir,
}

pub fn attach_xdp_pass(ns: &str, dev: &str, tag: &str) -> PeerXdp {
    let pins = PinDir::new(tag);
    let mut ebpf = load(XDP, &pins.0);
    in_ns(ns, || {
        let program: &mut Xdp = ebpf.program_mut(XDP_PASS_PROGRAM).expect("program in xdp.o").try_into().expect("xdp");
        program.load().expect("loading xdp_pass");
        program.attach(dev, XdpMode::Driver).unwrap_or_else(|e| panic!("attaching xdp_pass to {dev}: {e:?}"));
    });
    PeerXdp { _ebpf: ebpf, _pins: pins }
}
