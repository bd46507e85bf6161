//! Proves the Rust mirrors in `axon_bpf::maps` and the C structs in
//! `bpf/lib/maps.h` agree, from the BTF clang wrote into every compiled
//! object (socket-LB, tc nodeport, XDP): every struct's size, every field's
//! offset and size, and every map's key and value size. Every object pins the
//! same maps by name, so they must also agree with each other on every map's
//! definition (type, sizes, entries, flags).
//!
//! The BTF is read by the small reader below (aya-obj keeps its type tables
//! private): ELF section `.BTF`, then the type and string sections.

use axon_bpf::maps::*;
use axon_bpf::objects::{NODEPORT, SOCK_LB, XDP};
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

// ------------------------------------------------------------------ ELF --

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn cstr_at(b: &[u8], off: usize) -> &str {
    let end = b[off..].iter().position(|&c| c == 0).expect("NUL-terminated string") + off;
    std::str::from_utf8(&b[off..end]).expect("UTF-8 name")
}

/// The contents of the named section of a 64-bit little-endian ELF file.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> &'a [u8] {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF object");
    assert_eq!((elf[4], elf[5]), (2, 1), "expected ELF64 little-endian");
    let shoff = u64_at(elf, 0x28) as usize;
    let shentsize = u16_at(elf, 0x3a) as usize;
    let shnum = u16_at(elf, 0x3c) as usize;
    let shstrndx = u16_at(elf, 0x3e) as usize;
    let header = |i: usize| shoff + i * shentsize;
    let body = |i: usize| {
        let h = header(i);
        let (off, size) = (u64_at(elf, h + 24) as usize, u64_at(elf, h + 32) as usize);
        &elf[off..off + size]
    };
    let names = body(shstrndx);
    (0..shnum)
        .find(|&i| cstr_at(names, u32_at(elf, header(i)) as usize) == name)
        .map(body)
        .unwrap_or_else(|| panic!("no {name} section in the object"))
}

// ------------------------------------------------------------------ BTF --

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits (bitfields are not used in maps.h).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct BtfType {
    name: String,
    kind: u32,
    /// `size` for sized kinds, the referenced type otherwise.
    size_or_type: u32,
    members: Vec<Member>,
    /// ARRAY: (element type, number of elements).
    array: Option<(u32, u32)>,
}

struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<BtfType>,
}

impl Btf {
    fn parse(data: &[u8]) -> Self {
        assert_eq!(u16_at(data, 0), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(data, 4) as usize;
        let (type_off, type_len) = (u32_at(data, 8) as usize, u32_at(data, 12) as usize);
        let (str_off, str_len) = (u32_at(data, 16) as usize, u32_at(data, 20) as usize);
        let type_sec = &data[hdr_len + type_off..hdr_len + type_off + type_len];
        let strings = &data[hdr_len + str_off..hdr_len + str_off + str_len];
        let void = BtfType { name: String::new(), kind: 0, size_or_type: 0, members: vec![], array: None };
        let mut types = vec![void];
        let mut pos = 0;
        while pos < type_sec.len() {
            let (ty, len) = Self::parse_type(&type_sec[pos..], strings);
            types.push(ty);
            pos += len;
        }
        Btf { types }
    }

    /// One type record and its length in bytes.
    fn parse_type(b: &[u8], strings: &[u8]) -> (BtfType, usize) {
        let name = cstr_at(strings, u32_at(b, 0) as usize).to_string();
        let info = u32_at(b, 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let mut ty = BtfType { name, kind, size_or_type: u32_at(b, 8), members: vec![], array: None };
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => {
                ty.array = Some((u32_at(b, 12), u32_at(b, 20)));
                12
            }
            KIND_STRUCT | KIND_UNION => {
                let kind_flag = info >> 31 == 1;
                ty.members = (0..vlen)
                    .map(|i| {
                        let m = 12 + i * 12;
                        let offset = u32_at(b, m + 8);
                        Member {
                            name: cstr_at(strings, u32_at(b, m) as usize).to_string(),
                            type_id: u32_at(b, m + 4),
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        }
                    })
                    .collect();
                vlen * 12
            }
            KIND_ENUM => vlen * 8,
            KIND_FUNC_PROTO => vlen * 8,
            KIND_DATASEC => {
                // (var type, offset, size) per variable; keep the var types.
                ty.members = (0..vlen)
                    .map(|i| Member { name: String::new(), type_id: u32_at(b, 12 + i * 12), bit_offset: 0 })
                    .collect();
                vlen * 12
            }
            KIND_ENUM64 => vlen * 12,
            _ => 0,
        };
        (ty, 12 + extra)
    }

    fn get(&self, id: u32) -> &BtfType {
        &self.types[id as usize]
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        while matches!(self.get(id).kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) {
            id = self.get(id).size_or_type;
        }
        id
    }

    fn size(&self, id: u32) -> usize {
        let ty = self.get(self.resolve(id));
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT | KIND_DATASEC => {
                ty.size_or_type as usize
            }
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (elem, n) = ty.array.expect("array record");
                self.size(elem) * n as usize
            }
            kind => panic!("type {id} ({}) of kind {kind} has no size", ty.name),
        }
    }

    fn struct_named(&self, name: &str) -> &BtfType {
        self.types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && t.name == name)
            .unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"))
    }

    /// name -> (key size, value size, max_entries) of every map in `.maps`.
    fn maps(&self) -> BTreeMap<String, (usize, usize, u32)> {
        self.map_defs().into_iter().map(|(name, d)| (name, (d.key, d.value, d.max_entries))).collect()
    }

    /// name -> the whole definition of every map in `.maps`.
    fn map_defs(&self) -> BTreeMap<String, MapDef> {
        let datasec = self
            .types
            .iter()
            .find(|t| t.kind == KIND_DATASEC && t.name == ".maps")
            .expect("a .maps section in the BTF");
        datasec
            .members
            .iter()
            .map(|var_ref| {
                let var = self.get(var_ref.type_id);
                assert_eq!(var.kind, KIND_VAR);
                let def = self.get(self.resolve(var.size_or_type));
                let member = |name: &str| {
                    def.members
                        .iter()
                        .find(|m| m.name == name)
                        .unwrap_or_else(|| panic!("map {} has no {name}", var.name))
                        .type_id
                };
                // `__type(key, T)` is `T *key`; `__uint(n, V)` is `int (*n)[V]`.
                let pointee = |name: &str| self.get(self.resolve(member(name))).size_or_type;
                let uint = |name: &str| {
                    if def.members.iter().any(|m| m.name == name) {
                        self.get(pointee(name)).array.expect("__uint array").1
                    } else {
                        0
                    }
                };
                let def = MapDef {
                    map_type: uint("type"),
                    key: self.size(pointee("key")),
                    value: self.size(pointee("value")),
                    max_entries: uint("max_entries"),
                    flags: uint("map_flags"),
                    pinning: uint("pinning"),
                };
                (var.name.clone(), def)
            })
            .collect()
    }
}

/// A map definition as the BTF of `.maps` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapDef {
    map_type: u32,
    key: usize,
    value: usize,
    max_entries: u32,
    flags: u32,
    pinning: u32,
}

/// Every embedded object, by file name.
const OBJECTS: &[(&str, &[u8])] = &[("sock_lb.o", SOCK_LB), ("nodeport.o", NODEPORT), ("xdp.o", XDP)];

fn btf_of(object: &[u8]) -> Btf {
    Btf::parse(elf_section(object, ".BTF"))
}

// ---------------------------------------------------------------- tests --

/// Size of a field, named by a projection closure.
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Checks one struct: size, and each field's name, offset and size, in
/// declaration order, with nothing missing on either side.
macro_rules! check_struct {
    ($btf:expr, $c_name:literal, $rust:ty, [$($field:ident),+ $(,)?]) => {{
        let c = $btf.struct_named($c_name);
        assert_eq!(c.size_or_type as usize, size_of::<$rust>(), "sizeof(struct {})", $c_name);
        let rust_fields: Vec<(&str, usize, usize)> = vec![
            $((stringify!($field), offset_of!($rust, $field), field_size(|v: &$rust| &v.$field))),+
        ];
        let c_fields: Vec<(&str, usize, usize)> = c
            .members
            .iter()
            .map(|m| (m.name.as_str(), (m.bit_offset / 8) as usize, $btf.size(m.type_id)))
            .collect();
        assert_eq!(c_fields, rust_fields, "fields (name, offset, size) of struct {}", $c_name);
    }};
}

#[test]
fn every_map_struct_matches_its_rust_mirror() {
    for (object, bytes) in OBJECTS {
        eprintln!("checking the structs of {object}");
        check_structs(&btf_of(bytes));
    }
}

fn check_structs(btf: &Btf) {
    check_struct!(btf, "lb4_key", Lb4Key, [address, dport, backend_slot, proto, scope, pad]);
    check_struct!(btf, "lb6_key", Lb6Key, [address, dport, backend_slot, proto, scope, pad]);
    check_struct!(btf, "lb_service", LbService, [backend_id, rev_nat_index, count, svc_type, flags]);
    check_struct!(btf, "lb4_backend", Lb4Backend, [address, port, proto, flags]);
    check_struct!(btf, "lb6_backend", Lb6Backend, [address, port, proto, flags]);
    check_struct!(btf, "lb4_reverse_nat", Lb4ReverseNat, [address, port, pad]);
    check_struct!(btf, "lb6_reverse_nat", Lb6ReverseNat, [address, port, pad]);
    check_struct!(btf, "ipv4_revnat_tuple", Ipv4RevnatTuple, [cookie, address, port, pad]);
    check_struct!(btf, "ipv4_revnat_entry", Ipv4RevnatEntry, [address, port, pad, rev_nat_index]);
    check_struct!(btf, "ipv6_revnat_tuple", Ipv6RevnatTuple, [cookie, address, port, pad, pad2]);
    check_struct!(btf, "ipv6_revnat_entry", Ipv6RevnatEntry, [address, port, pad, rev_nat_index]);
    check_struct!(btf, "ct4_key", Ct4Key, [saddr, daddr, sport, dport, proto, dir, pad]);
    check_struct!(btf, "ct6_key", Ct6Key, [saddr, daddr, sport, dport, proto, dir, pad]);
    check_struct!(
        btf,
        "ct4_entry",
        Ct4Entry,
        [
            packets,
            bytes,
            expires,
            rev_nat_index,
            backend_id,
            client_addr,
            frontend_addr,
            backend_addr,
            nat_addr,
            client_port,
            frontend_port,
            backend_port,
            nat_port,
            flags,
            tcp_state,
            pad
        ]
    );
    check_struct!(
        btf,
        "ct6_entry",
        Ct6Entry,
        [
            packets,
            bytes,
            expires,
            rev_nat_index,
            backend_id,
            pad0,
            client_addr,
            frontend_addr,
            backend_addr,
            nat_addr,
            client_port,
            frontend_port,
            backend_port,
            nat_port,
            flags,
            tcp_state,
            pad
        ]
    );
    check_struct!(btf, "lb_maglev_key", LbMaglevKey, [rev_nat_index, scope, pad, index]);
    check_struct!(btf, "lb_affinity_key", LbAffinityKey, [client, rev_nat_index, client_kind, pad]);
    check_struct!(btf, "lb_affinity_val", LbAffinityVal, [backend_id, last_used]);
    check_struct!(btf, "lb4_src_range_key", Lb4SrcRangeKey, [prefixlen, rev_nat_index, address]);
    check_struct!(btf, "lb6_src_range_key", Lb6SrcRangeKey, [prefixlen, rev_nat_index, address]);
    check_struct!(btf, "ipcache_key", axon_bpf::maps::ipcache::IpcacheKey, [prefixlen, family, pad, addr]);
    check_struct!(btf, "ipcache_entry", axon_bpf::maps::ipcache::IpcacheEntry, [identity, flags, pad]);
    check_struct!(btf, "axon_device", AxonDevice, [ipv4, ipv6, mac, flags, pad]);
    check_struct!(btf, "node_addr_key", NodeAddrKey, [address]);
    check_struct!(
        btf,
        "axon_config",
        AxonConfig,
        [
            ct_timeout_syn,
            ct_timeout_tcp,
            ct_timeout_close,
            ct_timeout_udp,
            maglev_table_size,
            nodeport_min,
            nodeport_max,
            snat_port_min,
            snat_port_max,
            lb_mode,
            pad
        ]
    );
}

#[test]
fn every_map_has_the_key_and_value_sizes_of_its_rust_types() {
    for (object, bytes) in OBJECTS {
        check_map_sizes(object, &btf_of(bytes).maps());
    }
}

/// Pinned by name, a map is created by whichever object loads first and
/// reused by the others: they must define it identically.
#[test]
fn every_object_defines_every_map_identically() {
    let (first, first_bytes) = OBJECTS[0];
    let reference = btf_of(first_bytes).map_defs();
    for (object, bytes) in &OBJECTS[1..] {
        assert_eq!(btf_of(bytes).map_defs(), reference, "maps of {object} against {first}");
    }
    assert!(reference.values().all(|d| d.pinning == 1), "every map is LIBBPF_PIN_BY_NAME");
}

fn check_map_sizes(object: &str, maps: &BTreeMap<String, (usize, usize, u32)>) {
    let expected: BTreeMap<String, (usize, usize, u32)> = [
        (names::LB4_SERVICES, size_of::<Lb4Key>(), size_of::<LbService>(), defaults::SERVICE_ENTRIES),
        (names::LB6_SERVICES, size_of::<Lb6Key>(), size_of::<LbService>(), defaults::SERVICE_ENTRIES),
        (names::LB4_BACKENDS, size_of::<u32>(), size_of::<Lb4Backend>(), defaults::BACKEND_ENTRIES),
        (names::LB6_BACKENDS, size_of::<u32>(), size_of::<Lb6Backend>(), defaults::BACKEND_ENTRIES),
        (names::LB4_REVERSE_NAT, size_of::<u32>(), size_of::<Lb4ReverseNat>(), defaults::REVNAT_ENTRIES),
        (names::LB6_REVERSE_NAT, size_of::<u32>(), size_of::<Lb6ReverseNat>(), defaults::REVNAT_ENTRIES),
        (
            names::LB4_REVERSE_SK,
            size_of::<Ipv4RevnatTuple>(),
            size_of::<Ipv4RevnatEntry>(),
            defaults::SOCK_REVNAT_ENTRIES,
        ),
        (
            names::LB6_REVERSE_SK,
            size_of::<Ipv6RevnatTuple>(),
            size_of::<Ipv6RevnatEntry>(),
            defaults::SOCK_REVNAT_ENTRIES,
        ),
        (names::METRICS, size_of::<u32>(), size_of::<u64>(), metric::COUNT),
        (names::CT4_GLOBAL, size_of::<Ct4Key>(), size_of::<Ct4Entry>(), defaults::CT_ENTRIES),
        (names::CT6_GLOBAL, size_of::<Ct6Key>(), size_of::<Ct6Entry>(), defaults::CT_ENTRIES),
        (names::LB_MAGLEV, size_of::<LbMaglevKey>(), size_of::<u32>(), defaults::MAGLEV_ENTRIES),
        (names::LB_AFFINITY, size_of::<LbAffinityKey>(), size_of::<LbAffinityVal>(), defaults::AFFINITY_ENTRIES),
        (names::LB4_SOURCE_RANGE, size_of::<Lb4SrcRangeKey>(), size_of::<u8>(), defaults::SRC_RANGE_ENTRIES),
        (names::LB6_SOURCE_RANGE, size_of::<Lb6SrcRangeKey>(), size_of::<u8>(), defaults::SRC_RANGE_ENTRIES),
        (names::DEVICES, size_of::<u32>(), size_of::<AxonDevice>(), defaults::DEVICE_ENTRIES),
        (names::NODE_ADDRS, size_of::<NodeAddrKey>(), size_of::<u32>(), defaults::NODE_ADDR_ENTRIES),
        (names::CONFIG, size_of::<u32>(), size_of::<AxonConfig>(), 1),
        (
            names::IPCACHE,
            size_of::<axon_bpf::maps::ipcache::IpcacheKey>(),
            size_of::<axon_bpf::maps::ipcache::IpcacheEntry>(),
            defaults::IPCACHE_ENTRIES,
        ),
    ]
    .into_iter()
    .map(|(name, k, v, n)| (name.to_string(), (k, v, n)))
    .collect();
    assert_eq!(*maps, expected, "maps in {object}: name -> (key size, value size, default max_entries)");
    let all: Vec<&str> = names::ALL.to_vec();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(maps.keys().map(String::as_str).collect::<Vec<_>>(), sorted, "names::ALL lists every map");
}

/// `enum axon_metric` itself is not in the BTF (only its enumerators are
/// used), but `axon_metrics` is sized by `AXON_METRIC_MAX`, which the map test
/// above compares with `metric::COUNT`; here the names must cover it.
#[test]
fn metric_names_cover_every_counter() {
    assert_eq!(metric::NAMES.len(), metric::COUNT as usize);
    assert_eq!(
        [metric::SOCK_XLATE_FWD, metric::SOCK_XLATE_REV, metric::SOCK_NO_BACKEND, metric::SOCK_MISSING_SLOT],
        [0, 1, 2, 3]
    );
}

/// The mesh object (`bpf/mesh.c`) has maps of its own (`lib/mesh_maps.h`):
/// each struct and map agrees with `axon_bpf::maps::mesh`.
#[test]
fn mesh_maps_match_their_rust_mirrors() {
    use axon_bpf::maps::mesh::{self, *};
    let btf = btf_of(axon_bpf::objects::MESH);
    check_struct!(
        btf,
        "mesh_pod",
        MeshPod,
        [proxy_uid, outbound_port, inbound_port, exclude_out, exclude_in, mode, flags, pad]
    );
    check_struct!(btf, "mesh_ip", MeshIp, [addr]);
    check_struct!(btf, "mesh_pod_ref", MeshPodRef, [cgroup_id]);
    check_struct!(btf, "mesh_cidr_key", MeshCidrKey, [prefixlen, pad, cgroup_id, addr]);
    check_struct!(btf, "mesh_orig", MeshOrig, [addr, port, family, flags, pad]);
    check_struct!(btf, "mesh_sock_key", MeshSockKey, [local, remote, local_port, remote_port, netns]);
    check_struct!(btf, "mesh_flow", MeshFlow, [streak, pass, last_send_ns, app, redirected]);
    check_struct!(btf, "mesh_dst_profile", MeshDstProfile, [rpc_ns, stream_ns]);
    check_struct!(btf, "mesh_dst", MeshDst, [addr, port, role, pad]);
    check_struct!(btf, "mesh_listeners", MeshListeners, [flags]);
    let maps = btf.maps();
    let sizes: BTreeMap<String, (usize, usize)> = maps.iter().map(|(n, (k, v, _))| (n.clone(), (*k, *v))).collect();
    let expected: BTreeMap<String, (usize, usize)> = [
        (mesh::names::PODS, size_of::<u64>(), size_of::<MeshPod>()),
        (mesh::names::POD_IPS, size_of::<MeshIp>(), size_of::<MeshPodRef>()),
        (mesh::names::EXCL_CIDRS, size_of::<MeshCidrKey>(), size_of::<u8>()),
        (mesh::names::ORIG, size_of::<u64>(), size_of::<MeshOrig>()),
        (mesh::names::PAIRS, size_of::<MeshSockKey>(), size_of::<MeshOrig>()),
        (mesh::names::SOCKHASH, size_of::<MeshSockKey>(), size_of::<u32>()),
        (mesh::names::TARGETS, size_of::<MeshSockKey>(), size_of::<u32>()),
        (mesh::names::METRICS, size_of::<u32>(), size_of::<u64>()),
        (mesh::names::FLOWS, size_of::<MeshSockKey>(), size_of::<MeshFlow>()),
        (mesh::names::DST_PROFILES, size_of::<MeshDst>(), size_of::<MeshDstProfile>()),
        (mesh::names::LISTENERS, size_of::<u64>(), size_of::<MeshListeners>()),
    ]
    .into_iter()
    .map(|(name, k, v)| (name.to_string(), (k, v)))
    .collect();
    assert_eq!(sizes, expected, "mesh maps: name -> (key size, value size)");
    assert_eq!(maps[mesh::names::METRICS].2, mesh::metric::MAX, "axon_mesh_metrics entries");
}
