//! What the datapath reports: attached programs, map fill levels, node
//! devices (tcx, XDP mode) and addresses, the kernel and its BPF features,
//! and the datapath counters.

use super::loader::Datapath;
use super::sys;
use axon_api::status::{KernelStatus, MapStatus, ProgramStatus};
use axon_bpf::maps::metric;
use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper};
use aya::util::KernelVersion;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

/// The datapath's part of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatapathStatus {
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub kernel: KernelStatus,
    /// Counters summed over CPUs, named as in `axon_bpf::maps::metric::NAMES`.
    pub counters: BTreeMap<String, u64>,
    /// The north-south devices and how each is attached.
    pub devices: Vec<DeviceStatus>,
    /// Every node address NodePort answers on.
    pub node_addresses: Vec<NodeAddressStatus>,
}

/// One north-south device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub name: String,
    pub ifindex: u32,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// SNAT source addresses for traffic leaving by this device.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// How the tc programs are attached: `tcx`.
    pub tc: &'static str,
    /// The XDP mode in use (`native`, `generic`), or `None` without XDP.
    pub xdp: Option<&'static str>,
}

/// A node address and the device it is on (`None`: configured, on no device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddressStatus {
    pub address: IpAddr,
    pub device: Option<String>,
}

pub(crate) fn collect(dp: &Datapath) -> DatapathStatus {
    DatapathStatus {
        programs: programs(dp),
        maps: maps(dp),
        kernel: KernelStatus { release: dp.kernel_release.clone(), features: dp.features.clone() },
        counters: counters(dp),
        devices: devices(dp),
        node_addresses: node_addresses(dp),
    }
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn devices(dp: &Datapath) -> Vec<DeviceStatus> {
    dp.devices
        .iter()
        .map(|a| DeviceStatus {
            name: a.device.name.clone(),
            ifindex: a.device.ifindex,
            mac: mac_string(&a.device.mac),
            ipv4: a.device.ipv4,
            ipv6: a.device.ipv6,
            tc: "tcx",
            xdp: a.xdp.map(|x| x.as_str()),
        })
        .collect()
}

fn node_addresses(dp: &Datapath) -> Vec<NodeAddressStatus> {
    dp.node_addresses
        .iter()
        .map(|(address, ifindex)| NodeAddressStatus {
            address: *address,
            device: dp.devices.iter().find(|a| a.device.ifindex == *ifindex).map(|a| a.device.name.clone()),
        })
        .collect()
}

fn programs(dp: &Datapath) -> Vec<ProgramStatus> {
    dp.programs
        .iter()
        .zip(&dp.links)
        .map(|(p, link)| {
            // Read back: another agent may have updated the link since load.
            let program_id = sys::link_info(link.as_fd()).map(|i| i.prog_id).unwrap_or(p.program_id);
            ProgramStatus {
                name: p.name.to_string(),
                attach_type: p.attach_type.to_string(),
                attached_to: p.target.to_string(),
                link_pin: p.link_pin.display().to_string(),
                program_id: Some(program_id),
            }
        })
        .collect()
}

fn maps(dp: &Datapath) -> Vec<MapStatus> {
    dp.maps
        .iter()
        .map(|m| {
            let info = m.data.info().ok();
            let max_entries = info.as_ref().map_or(0, |i| i.max_entries());
            // Arrays always hold max_entries slots; hash maps are walked.
            let entries = if m.is_array {
                u64::from(max_entries)
            } else {
                let key_size = info.as_ref().map_or(0, |i| i.key_size() as usize);
                sys::count_keys(m.data.fd().as_fd(), key_size).unwrap_or_else(|e| {
                    tracing::warn!(map = m.name, error = %e, "counting map entries");
                    0
                })
            };
            MapStatus { name: m.name.to_string(), pin: m.pin.display().to_string(), entries, max_entries }
        })
        .collect()
}

fn counters(dp: &Datapath) -> BTreeMap<String, u64> {
    metric::NAMES
        .iter()
        .zip(0u32..)
        .map(|(name, index)| {
            let total = match dp.metrics.get(&index, 0) {
                Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
                Err(e) => {
                    tracing::warn!(counter = name, error = %e, "reading datapath counter");
                    0
                }
            };
            (name.to_string(), total)
        })
        .collect()
}

/// BPF features of the running kernel that Axon uses now or will use.
pub fn probe_features() -> BTreeMap<String, bool> {
    let program = |t: ProgramType| is_program_supported(t).unwrap_or(false);
    let kernel_at_least = |major: u8, minor: u8| {
        KernelVersion::current().map(|v| v >= KernelVersion::new(major, minor, 0)).unwrap_or(false)
    };
    let features = [
        ("cgroup_sock_addr", program(ProgramType::CgroupSockAddr)),
        // Cgroup bpf_links (BPF_LINK_CREATE for cgroups) arrived in 5.7.
        ("bpf_link", kernel_at_least(5, 7)),
        // connect()/sendmsg() refusals with a chosen errno.
        (
            "bpf_set_retval",
            is_helper_supported(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval).unwrap_or(false),
        ),
        ("lru_hash", is_map_supported(MapType::LruHash).unwrap_or(false)),
        ("sockops", program(ProgramType::SockOps)),
        ("sk_msg", program(ProgramType::SkMsg)),
        // tcx links have no cheap probe; they arrived in 6.6.
        ("tcx", kernel_at_least(6, 6)),
        ("xdp", program(ProgramType::Xdp)),
    ];
    features.into_iter().map(|(name, ok)| (name.to_string(), ok)).collect()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    sys::kernel_release()
}
