//! A pod as mesh acceleration sees it ([`PodRef`]: name, cgroup, addresses,
//! annotations, labels) and what the datapath does with it ([`PodCapture`]:
//! the `struct mesh_pod` value and the excluded CIDRs, from the mode and the
//! Istio/Linkerd exclusion annotations).

use super::{MeshConfig, MeshError};
use axon_api::mesh::{annotations as ann, parse_port_list};
use axon_bpf::maps::mesh::{mode, pod_flags, MeshPod, MAX_PORTS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::MeshMode;

/// A pod: what the Kubernetes watchers or the API know of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Its cgroup2 directory, absolute.
    pub cgroup: PathBuf,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl PodRef {
    /// Names are DNS-like and the cgroup is a directory under the agent's
    /// cgroup root (the mesh programs are attached there and see nothing else).
    pub fn validate(&self, cgroup_root: &Path) -> Result<(), MeshError> {
        axon_api::mesh::check_name("namespace", &self.namespace).map_err(|m| MeshError::invalid("namespace", m))?;
        axon_api::mesh::check_name("name", &self.name).map_err(|m| MeshError::invalid("name", m))?;
        let cgroup = self.cgroup.canonicalize().map_err(|e| {
            MeshError::invalid("cgroup", format!("{}: {e} (the pod's cgroup2 directory)", self.cgroup.display()))
        })?;
        let root = cgroup_root.canonicalize().unwrap_or_else(|_| cgroup_root.to_path_buf());
        if !cgroup.is_dir() || !cgroup.starts_with(&root) || cgroup == root {
            return Err(MeshError::invalid(
                "cgroup",
                format!("{} is not a cgroup below the agent's cgroup root {}", cgroup.display(), root.display()),
            ));
        }
        if self.ips.is_empty() {
            return Err(MeshError::invalid("ips", "a pod needs at least one address (inbound capture is keyed on it)"));
        }
        Ok(())
    }

    /// The cgroup id the kernel reports for tasks of the pod (the cgroup
    /// directory's inode on cgroup2).
    pub fn cgroup_id(&self, _cgroup_root: &Path) -> Result<u64, MeshError> {
        std::fs::metadata(&self.cgroup)
            .map(|m| m.ino())
            .map_err(|e| MeshError::invalid("cgroup", format!("{}: {e}", self.cgroup.display())))
    }
}

/// How the datapath treats one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCapture {
    pub value: MeshPod,
    pub exclude_out: Vec<u16>,
    pub exclude_in: Vec<u16>,
    pub exclude_cidrs: Vec<(IpAddr, u8)>,
}

impl PodCapture {
    /// Both meshes' annotations are honoured whatever the mode: a pod
    /// carries the ones of the mesh it was written for.
    pub fn build(config: &MeshConfig, pod: &PodRef) -> Result<PodCapture, MeshError> {
        let ports = |keys: &[&str]| -> Result<Vec<u16>, MeshError> {
            let mut out = Vec::new();
            for key in keys {
                if let Some(v) = pod.annotations.get(*key) {
                    out.extend(parse_port_list(v).map_err(|m| MeshError::invalid(format!("annotations.{key}"), m))?);
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        };
        let exclude_out = ports(&[ann::ISTIO_EXCLUDE_OUTBOUND_PORTS, ann::LINKERD_SKIP_OUTBOUND_PORTS])?;
        let mut exclude_in = ports(&[ann::ISTIO_EXCLUDE_INBOUND_PORTS, ann::LINKERD_SKIP_INBOUND_PORTS])?;
        exclude_in.extend_from_slice(config.mode.defaults().3);
        exclude_in.sort_unstable();
        exclude_in.dedup();
        let exclude_cidrs = match pod.annotations.get(ann::ISTIO_EXCLUDE_OUTBOUND_IP_RANGES) {
            Some(v) => parse_cidrs(v)
                .map_err(|m| MeshError::invalid(format!("annotations.{}", ann::ISTIO_EXCLUDE_OUTBOUND_IP_RANGES), m))?,
            None => Vec::new(),
        };
        let bypass = match pod.annotations.get(ann::AXON_BYPASS).map(String::as_str) {
            None => config.bypass,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(MeshError::invalid(
                    format!("annotations.{}", ann::AXON_BYPASS),
                    format!("{other:?} is not true or false"),
                ))
            }
        };
        let value = MeshPod {
            proxy_uid: config.proxy_uid,
            outbound_port: config.outbound_port,
            inbound_port: config.inbound_port,
            exclude_out: port_array(&exclude_out, "exclude outbound ports")?,
            exclude_in: port_array(&exclude_in, "exclude inbound ports")?,
            mode: match config.mode {
                MeshMode::Istio => mode::ISTIO,
                MeshMode::Linkerd => mode::LINKERD,
            },
            flags: if bypass { pod_flags::BYPASS } else { 0 },
            pad: [0; 6],
        };
        Ok(PodCapture { value, exclude_out, exclude_in, exclude_cidrs })
    }

    pub fn bypass(&self) -> bool {
        self.value.flags & pod_flags::BYPASS != 0
    }
}

fn port_array(ports: &[u16], what: &str) -> Result<[u16; MAX_PORTS], MeshError> {
    if ports.len() > MAX_PORTS {
        return Err(MeshError::invalid("annotations", format!("{} {what}: at most {MAX_PORTS}", ports.len())));
    }
    let mut out = [0u16; MAX_PORTS];
    out[..ports.len()].copy_from_slice(ports);
    Ok(out)
}

/// `"10.0.0.0/8,fd00::/8,1.2.3.4"` (a bare address is a host route).
fn parse_cidrs(s: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (addr, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: IpAddr = addr.parse().map_err(|_| format!("{c:?} is not an address or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = if len.is_empty() { max } else { len.parse::<u8>().map_err(|_| format!("{c:?}: bad prefix"))? };
            if len > max {
                return Err(format!("{c:?}: prefix longer than {max}"));
            }
            Ok((ip, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MeshConfig {
        MeshConfig::from_flags(Some("istio"), None, None, None, None).unwrap().unwrap()
    }

    fn pod(annotations: &[(&str, &str)]) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web".into(),
            cgroup: "/nonexistent".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn istio_defaults_and_annotations() {
        let c = PodCapture::build(
            &config(),
            &pod(&[
                (ann::ISTIO_EXCLUDE_OUTBOUND_PORTS, "5432, 6379"),
                (ann::ISTIO_EXCLUDE_INBOUND_PORTS, "9000"),
                (ann::ISTIO_EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12,fd00::1"),
            ]),
        )
        .unwrap();
        assert_eq!((c.value.outbound_port, c.value.inbound_port, c.value.proxy_uid), (15001, 15006, 1337));
        assert_eq!(c.exclude_out, vec![5432, 6379]);
        assert_eq!(c.exclude_in, vec![9000, 15020, 15021, 15090]);
        assert_eq!(c.exclude_cidrs.len(), 2);
        assert!(c.bypass());
    }

    #[test]
    fn linkerd_mode_and_bad_annotations() {
        let linkerd = MeshConfig::from_flags(Some("linkerd"), None, None, None, Some("off")).unwrap().unwrap();
        let c = PodCapture::build(&linkerd, &pod(&[(ann::LINKERD_SKIP_OUTBOUND_PORTS, "25")])).unwrap();
        assert_eq!((c.value.outbound_port, c.value.inbound_port, c.value.proxy_uid), (4140, 4143, 2102));
        assert_eq!(c.exclude_out, vec![25]);
        assert!(!c.bypass());
        let e = PodCapture::build(&config(), &pod(&[(ann::ISTIO_EXCLUDE_OUTBOUND_PORTS, "80,http")])).unwrap_err();
        assert!(e.to_string().starts_with("annotations.traffic.sidecar.istio.io/excludeOutboundPorts"), "{e}");
        assert!(MeshConfig::from_flags(Some("consul"), None, None, None, None).is_err());
        assert_eq!(MeshConfig::from_flags(Some("off"), None, None, None, None).unwrap(), None);
    }
}
