//! The node's network devices as north-south load balancing sees them: which
//! devices carry the programs (the default-route devices, or the configured
//! ones), their index, MAC and addresses, and the node addresses NodePort
//! answers on.
//!
//! Everything is read in the network namespace of the calling thread: routes
//! from `/proc/thread-self/net` (`/proc/self/net` would show the main
//! thread's namespace), addresses and MACs with `getifaddrs` (a netlink
//! socket opened in the thread's namespace).

use super::config::Devices;
use super::DatapathError;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `RTF_UP` and `RTF_REJECT` from `linux/route.h` / `ipv6_route.h`.
const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// One device the north-south programs attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDevice {
    pub name: String,
    pub ifindex: u32,
    /// All zero for devices without a link-layer address.
    pub mac: [u8; 6],
    /// The primary IPv4 address: SNAT source for IPv4 leaving here.
    pub ipv4: Option<Ipv4Addr>,
    /// The first global IPv6 address: SNAT source for IPv6 leaving here.
    pub ipv6: Option<Ipv6Addr>,
    /// Every address of the device except IPv6 link-local ones, in the
    /// kernel's order (primary first).
    pub addresses: Vec<IpAddr>,
}

/// What `getifaddrs` reports for one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Interface {
    mac: [u8; 6],
    addresses: Vec<IpAddr>,
}

fn load_err(context: impl Into<String>, message: impl ToString) -> DatapathError {
    DatapathError::Load { context: context.into(), message: message.to_string() }
}

/// The devices `selection` names, with their addresses. `Devices::None`
/// gives none; `Auto` the devices of the IPv4 and IPv6 default routes (an
/// error when there is no default route: say which devices with
/// `--devices`); `Named` each device, which must exist.
pub fn detect_devices(selection: &Devices) -> Result<Vec<NodeDevice>, DatapathError> {
    let names: Vec<String> = match selection {
        Devices::None => return Ok(Vec::new()),
        Devices::Auto => {
            let names = default_route_devices().map_err(|e| load_err("detecting the default-route devices", e))?;
            if names.is_empty() {
                return Err(load_err(
                    "detecting the default-route devices",
                    "this network namespace has no default route; name the devices with --devices",
                ));
            }
            names.into_iter().collect()
        }
        Devices::Named(names) => names.clone(),
    };
    let interfaces = interfaces().map_err(|e| load_err("listing network interfaces (getifaddrs)", e))?;
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        if devices.iter().any(|d: &NodeDevice| d.name == name) {
            continue;
        }
        let ifindex = ifindex(&name).map_err(|e| {
            load_err(format!("device {name}"), format!("{e} (no such device in the agent's network namespace?)"))
        })?;
        let iface = interfaces.get(&name).cloned().unwrap_or_default();
        devices.push(node_device(name, ifindex, iface));
    }
    tracing::info!(devices = ?devices.iter().map(|d| &d.name).collect::<Vec<_>>(), "north-south devices");
    Ok(devices)
}

fn node_device(name: String, ifindex: u32, iface: Interface) -> NodeDevice {
    let addresses: Vec<IpAddr> = iface.addresses.into_iter().filter(|a| !is_v6_link_local(a)).collect();
    let ipv4 = addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ipv6 = addresses.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    NodeDevice { name, ifindex, mac: iface.mac, ipv4, ipv6, addresses }
}

fn is_v6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Every node address (the devices' and `extra`) and the device it is on;
/// 0 for extra addresses on no device. The first device wins an address
/// that two devices share.
pub fn node_addresses(devices: &[NodeDevice], extra: &[IpAddr]) -> BTreeMap<IpAddr, u32> {
    let mut addrs = BTreeMap::new();
    for device in devices {
        for addr in &device.addresses {
            addrs.entry(canonical(*addr)).or_insert(device.ifindex);
        }
    }
    for addr in extra {
        addrs.entry(canonical(*addr)).or_insert(0);
    }
    addrs
}

/// `::ffff:a.b.c.d` is the IPv4 address it embeds.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Names of the devices the IPv4 and IPv6 default routes leave by.
fn default_route_devices() -> io::Result<BTreeSet<String>> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    // No IPv6 in the namespace (or the kernel) means no IPv6 routes.
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    let mut names = default_devices_v4(&v4);
    names.extend(default_devices_v6(&v6));
    Ok(names)
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`,
/// hex fields; a default route has destination and mask 0.
fn default_devices_v4(table: &str) -> BTreeSet<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let is_default = *dest == "00000000" && *mask == "00000000";
            (is_default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && *iface != "lo").then(|| iface.to_string())
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dest plen src plen nexthop metric refcnt use flags dev`;
/// the kernel's unreachable default routes sit on `lo` with RTF_REJECT.
fn default_devices_v6(table: &str) -> BTreeSet<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, flags, iface) = (f.first()?, f.get(1)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let is_default = dest.chars().all(|c| c == '0') && *plen == "00";
            (is_default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && *iface != "lo").then(|| iface.to_string())
        })
        .collect()
}

/// `if_nametoindex` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in device name"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// Addresses and MACs of every interface, by name.
fn interfaces() -> io::Result<BTreeMap<String, Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out: BTreeMap<String, Interface> = BTreeMap::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned; every node
        // and its name and address stay valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() || entry.ifa_addr.is_null() {
            continue;
        }
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy().into_owned();
        let iface = out.entry(name).or_default();
        // SAFETY: ifa_addr points at a sockaddr whose family says which
        // struct it really is.
        unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    iface.addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    iface.addresses.push(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                }
                libc::AF_PACKET => {
                    let sa = &*(entry.ifa_addr as *const libc::sockaddr_ll);
                    if sa.sll_halen == 6 {
                        iface.mac.copy_from_slice(&sa.sll_addr[..6]);
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list came from getifaddrs and is not used after this.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_from_proc_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(default_devices_v4(v4), BTreeSet::from(["eth0".to_string()]));
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth2\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_devices_v6(v6), BTreeSet::from(["eth2".to_string()]));
        assert!(default_devices_v4("Iface\tDestination\n").is_empty());
    }

    #[test]
    fn device_addresses_skip_link_local_and_pick_primaries() {
        let iface = Interface {
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec![
                "fe80::1".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                "fd00::5".parse().unwrap(),
                "10.0.0.6".parse().unwrap(),
            ],
        };
        let dev = node_device("eth0".into(), 7, iface);
        assert_eq!(dev.ipv4, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(dev.ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(dev.addresses.len(), 3);
        let extra: Vec<IpAddr> = vec!["::ffff:10.0.0.6".parse().unwrap(), "192.0.2.1".parse().unwrap()];
        let addrs = node_addresses(&[dev], &extra);
        assert_eq!(addrs.get(&"10.0.0.6".parse::<IpAddr>().unwrap()), Some(&7), "the device wins");
        assert_eq!(addrs.get(&"192.0.2.1".parse::<IpAddr>().unwrap()), Some(&0));
        assert_eq!(addrs.len(), 4);
    }
}
