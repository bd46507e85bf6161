//! Wire types of mesh acceleration (`/v1/mesh/...`): registering a pod (its
//! cgroup and addresses, which the embedded mode has no other way to learn),
//! turning acceleration on or off for a pod or a namespace, and the status.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Paths of the mesh API.
pub mod paths {
    pub const ROOT: &str = "/v1/mesh";
    pub const PODS: &str = "/v1/mesh/pods";
    pub const ENABLE: &str = "/v1/mesh/enable";
    pub const DISABLE: &str = "/v1/mesh/disable";

    /// `/v1/mesh/pods/<namespace>/<name>`.
    pub fn pod(namespace: &str, name: &str) -> String {
        format!("{PODS}/{namespace}/{name}")
    }
}

/// The Istio-style annotations Axon honours.
pub mod annotations {
    pub const ISTIO_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    pub const ISTIO_EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const ISTIO_EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const LINKERD_SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
    pub const LINKERD_SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
    /// `"false"` keeps the pod's capture but not the sockmap bypass.
    pub const AXON_BYPASS: &str = "axon.io/mesh-bypass";
    /// The pod / namespace label of the Kubernetes mode.
    pub const AXON_LABEL: &str = "axon.io/mesh-acceleration";
}

/// Body of `PUT /v1/mesh/pods/<ns>/<name>`: a pod Axon may accelerate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodRegistration {
    /// The pod's cgroup2 directory (absolute, or relative to the cgroup2 mount).
    pub cgroup: String,
    /// The pod's addresses (inbound capture is keyed on them).
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Explicit per-pod choice; absent = follow the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// What `enable` / `disable` applies to: exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToggleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One pod as the agent sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshPodStatus {
    pub namespace: String,
    pub name: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub ips: Vec<String>,
    /// The pod's own setting (None: follows its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whether the datapath captures and accelerates it now.
    pub accelerated: bool,
    /// Local socket pairs go through the sockhash (not only the capture).
    pub bypass: bool,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
}

/// The datapath's counters (sums over CPUs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshCounters {
    pub captured_outbound: u64,
    pub captured_inbound: u64,
    pub excluded: u64,
    pub original_dst_answered: u64,
    /// Sockets put in the shortcut (two per bypassed connection).
    pub sockets_bypassed: u64,
    /// Of those, the ones whose writes are redirected: the sidecar's, and an
    /// app's to a destination known for request/response. The others write
    /// through the stack and only receive redirects.
    #[serde(default)]
    pub sockets_sending: u64,
    /// App sockets on plain TCP writes (only receiving through the shortcut):
    /// their destination is not known for request/response.
    #[serde(default)]
    pub app_sockets_plain: u64,
    /// App sockets sending through the shortcut: a request/response destination.
    #[serde(default)]
    pub app_sockets_sending: u64,
    /// Connects left uncaptured because the sidecar has no listener of
    /// their address family (e.g. IPv6 with an IPv4-only outbound listener).
    #[serde(default)]
    pub no_listener: u64,
    pub sockhash_insert_failures: u64,
    pub messages_redirected: u64,
    pub messages_passed: u64,
    pub bytes_redirected: u64,
    /// Directions that left the shortcut for the stack (small-write streams).
    #[serde(default)]
    pub streams_to_stack: u64,
}

/// Answer of `GET /v1/mesh` and of every change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStatus {
    /// `istio`, `linkerd` or `off`.
    pub mode: String,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    /// Namespaces enabled as a whole.
    pub namespaces: Vec<String>,
    pub pods: Vec<MeshPodStatus>,
    pub counters: MeshCounters,
}

/// Splits `NAMESPACE/NAME`, both parts DNS-label-like and non-empty.
pub fn parse_pod_ref(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s.split_once('/').ok_or_else(|| format!("{s:?} is not NAMESPACE/NAME"))?;
    check_name("namespace", ns)?;
    check_name("name", name)?;
    Ok((ns.to_string(), name.to_string()))
}

/// A namespace or pod name: 1-253 characters of `[a-z0-9.-]`.
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {s:?} must be 1-253 characters of a-z, 0-9, '-' and '.'"))
    }
}

/// A comma-separated port list (`"8080,9090"`), as the annotations write it.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        })
        .collect()
}

impl crate::Client {
    /// `GET /v1/mesh`.
    pub async fn mesh_status(&self) -> Result<MeshStatus, crate::ClientError> {
        self.mesh_call(hyper::Method::GET, paths::ROOT, None).await
    }

    /// `PUT /v1/mesh/pods/<ns>/<name>`.
    pub async fn mesh_register(
        &self,
        namespace: &str,
        name: &str,
        reg: &PodRegistration,
    ) -> Result<MeshPodStatus, crate::ClientError> {
        let body = serde_json::to_vec(reg).map_err(|e| self.encode_error(e))?;
        self.mesh_call(hyper::Method::PUT, &paths::pod(namespace, name), Some(body)).await
    }

    /// `DELETE /v1/mesh/pods/<ns>/<name>`.
    pub async fn mesh_forget(&self, namespace: &str, name: &str) -> Result<MeshStatus, crate::ClientError> {
        self.mesh_call(hyper::Method::DELETE, &paths::pod(namespace, name), None).await
    }

    /// `POST /v1/mesh/enable` or `/v1/mesh/disable`.
    pub async fn mesh_toggle(&self, req: &ToggleRequest, enabled: bool) -> Result<MeshStatus, crate::ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| self.encode_error(e))?;
        let path = if enabled { paths::ENABLE } else { paths::DISABLE };
        self.mesh_call(hyper::Method::POST, path, Some(body)).await
    }

    fn encode_error(&self, e: serde_json::Error) -> crate::ClientError {
        crate::ClientError::Transport { socket: self.socket().to_path_buf(), message: e.to_string() }
    }

    async fn mesh_call<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, crate::ClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        if !status.is_success() {
            let (error, field) = match serde_json::from_slice::<crate::ErrorBody>(&bytes) {
                Ok(e) => (e.error, e.field),
                Err(_) => (String::from_utf8_lossy(&bytes).trim().to_string(), None),
            };
            return Err(crate::ClientError::Api { status: status.as_u16(), error, field });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| crate::ClientError::Decode { status: status.as_u16(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs_and_ports() {
        assert_eq!(parse_pod_ref("default/web-1").unwrap(), ("default".into(), "web-1".into()));
        assert!(parse_pod_ref("web").is_err());
        assert!(parse_pod_ref("Default/x").is_err());
        assert_eq!(parse_port_list("80, 443,").unwrap(), vec![80, 443]);
        assert!(parse_port_list("80,x").unwrap_err().contains("\"x\""));
        assert!(parse_port_list("0").is_err());
    }
}
