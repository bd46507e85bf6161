//! The node's facts as the north-south programs read them: `axon_config`
//! (timeouts, ranges, Maglev size, default mode), `axon_devices` (each
//! device's addresses, MAC and whether XDP runs there) and
//! `axon_node_addrs` (every node address). Also keeps the NodePort range out
//! of the ephemeral ports (`net.ipv4.ip_local_reserved_ports`).

use super::config::{DatapathConfig, PortRange};
use super::devices::NodeDevice;
use super::DatapathError;
use axon_bpf::maps::{dev_flags, names, AxonConfig, AxonDevice, NodeAddrKey};
use aya::maps::{Array, HashMap, Map, MapData};
use aya::Pod;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

fn map_err(map: &'static str, op: &'static str, e: impl std::error::Error) -> DatapathError {
    DatapathError::Map { map, op, source: std::io::Error::other(e.to_string()) }
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(dir.join(name)).map_err(|e| map_err(name, "open", e))?;
    Map::from_map_data(data).map_err(|e| map_err(name, "open", e))
}

fn open_hash<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Result<HashMap<MapData, K, V>, DatapathError> {
    HashMap::try_from(open_map(dir, name)?).map_err(|e| map_err(name, "open", e))
}

/// Writes `axon_config` from the agent's settings.
pub(crate) fn write_config(maps_dir: &Path, cfg: &DatapathConfig) -> Result<AxonConfig, DatapathError> {
    let value = cfg.kernel_config();
    let mut array: Array<MapData, AxonConfig> =
        Array::try_from(open_map(maps_dir, names::CONFIG)?).map_err(|e| map_err(names::CONFIG, "open", e))?;
    array.set(0, value, 0).map_err(|e| map_err(names::CONFIG, "update", e))?;
    Ok(value)
}

/// The `axon_devices` value of a device.
pub(crate) fn device_value(device: &NodeDevice, xdp: bool) -> AxonDevice {
    AxonDevice {
        ipv4: device.ipv4.map_or(0, |a| u32::from(a).to_be()),
        ipv6: device.ipv6.map_or([0; 16], |a| a.octets()),
        mac: device.mac,
        flags: if xdp { dev_flags::XDP } else { 0 },
        pad: 0,
    }
}

/// Makes `axon_devices` hold exactly `devices`, flagged XDP where the
/// ifindex is in `xdp`. Entries are written before stale ones go, so a
/// device that stays is never missing.
pub(crate) fn write_devices(maps_dir: &Path, devices: &[NodeDevice], xdp: &BTreeSet<u32>) -> Result<(), DatapathError> {
    let want: Vec<(u32, AxonDevice)> =
        devices.iter().map(|d| (d.ifindex, device_value(d, xdp.contains(&d.ifindex)))).collect();
    sync_hash(maps_dir, names::DEVICES, &want)
}

/// The `axon_node_addrs` key of an address: IPv4 as `::ffff:a.b.c.d`.
pub fn node_addr_key(addr: IpAddr) -> NodeAddrKey {
    let v6 = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    NodeAddrKey { address: v6.octets() }
}

/// Makes `axon_node_addrs` hold exactly `addrs` (address → ifindex).
pub(crate) fn write_node_addrs(maps_dir: &Path, addrs: &BTreeMap<IpAddr, u32>) -> Result<(), DatapathError> {
    let want: Vec<(NodeAddrKey, u32)> = addrs.iter().map(|(a, i)| (node_addr_key(*a), *i)).collect();
    sync_hash(maps_dir, names::NODE_ADDRS, &want)
}

/// Writes every wanted entry that differs, then deletes the keys not wanted.
fn sync_hash<K, V>(maps_dir: &Path, name: &'static str, want: &[(K, V)]) -> Result<(), DatapathError>
where
    K: Pod + PartialEq,
    V: Pod + PartialEq,
{
    let mut map: HashMap<MapData, K, V> = open_hash(maps_dir, name)?;
    for (key, value) in want {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            map.insert(key, value, 0).map_err(|e| map_err(name, "update", e))?;
        }
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !want.iter().any(|(w, _)| w == k)).collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name, "delete", e)),
        }
    }
    Ok(())
}

/// Adds `range` to `net.ipv4.ip_local_reserved_ports` of the calling
/// thread's network namespace (the file also covers IPv6), keeping every
/// reservation already there. Returns whether the file was changed. Nothing
/// removes the reservation later: an unused reserved range only narrows the
/// ports `bind(0)`/`connect()` pick, and the default NodePort range lies
/// below Linux's default ephemeral range anyway.
pub fn reserve_ports(range: PortRange) -> Result<bool, DatapathError> {
    let io = |e| DatapathError::Io { path: RESERVED_PORTS.to_string(), source: e };
    let current = std::fs::read_to_string(RESERVED_PORTS).map_err(io)?;
    let Some(updated) = with_reserved(current.trim(), range) else {
        return Ok(false);
    };
    std::fs::write(RESERVED_PORTS, &updated).map_err(io)?;
    tracing::info!(range = %range, reserved = %updated, "NodePort range reserved from ephemeral ports");
    if let Ok(ephemeral) = std::fs::read_to_string(LOCAL_PORT_RANGE) {
        tracing::debug!(ip_local_port_range = %ephemeral.trim(), "ephemeral ports");
    }
    Ok(true)
}

/// Warns when SNAT could pick a port the local stack also hands out: a
/// translated flow and a local socket to the same backend would share a
/// 4-tuple.
pub(crate) fn check_snat_range(snat: PortRange) {
    let Ok(text) = std::fs::read_to_string(LOCAL_PORT_RANGE) else {
        return;
    };
    let mut parts = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    if let (Some(min), Some(max)) = (parts.next(), parts.next()) {
        let ephemeral = PortRange { min, max };
        if ephemeral.overlaps(&snat) {
            tracing::warn!(
                snat_port_range = %snat,
                ip_local_port_range = %ephemeral,
                "the SNAT port range overlaps the local ephemeral ports; rare 4-tuple clashes are possible"
            );
        }
    }
}

/// The new `ip_local_reserved_ports` text with `range` added, or `None`
/// when `current` already covers it. Format: comma-separated `N` or `N-M`.
fn with_reserved(current: &str, range: PortRange) -> Option<String> {
    let mut ranges: Vec<(u16, u16)> = current
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.parse().ok().map(|n| (n, n)),
        })
        .collect();
    ranges.sort_unstable();
    // Walk the sorted ranges: covered if they reach from min to max without a hole.
    let mut next = u32::from(range.min);
    for &(a, b) in &ranges {
        if u32::from(a) <= next && u32::from(b) >= next {
            next = u32::from(b) + 1;
        }
    }
    if next > u32::from(range.max) {
        return None;
    }
    ranges.push((range.min, range.max));
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let parts: Vec<String> =
        merged.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NP: PortRange = PortRange { min: 30000, max: 32767 };

    #[test]
    fn reservations_are_merged_not_clobbered() {
        assert_eq!(with_reserved("", NP).as_deref(), Some("30000-32767"));
        assert_eq!(with_reserved("8080,50000-50010", NP).as_deref(), Some("8080,30000-32767,50000-50010"));
        assert_eq!(with_reserved("29000-30500,32000", NP).as_deref(), Some("29000-32767"));
        assert_eq!(with_reserved("30000-31000,31001-40000", NP), None, "already covered");
        assert_eq!(with_reserved("30000-32767", NP), None);
        assert_eq!(with_reserved("30000-31000,31002-40000", NP).as_deref(), Some("30000-40000"), "a hole is filled");
    }

    #[test]
    fn node_addr_keys_map_ipv4() {
        let k = node_addr_key("10.0.0.1".parse().unwrap());
        assert_eq!(k.address, "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let k = node_addr_key("fd00::1".parse().unwrap());
        assert_eq!(k.address, "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
}
