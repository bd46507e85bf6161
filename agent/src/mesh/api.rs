//! The `/v1/mesh/...` routes: pod registration, the enable/disable toggle
//! and the status. Wired into the agent's API router by one match arm.

use super::{handle, MeshError, MeshManager, PodRef};
use crate::api::{error_reply as error, json, Reply};
use axon_api::mesh::{parse_pod_ref, paths, PodRegistration, ToggleRequest};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use std::net::IpAddr;
use std::path::PathBuf;

fn mesh_error(e: MeshError) -> Reply {
    let (status, field) = match &e {
        MeshError::Invalid { field, .. } => (StatusCode::BAD_REQUEST, Some(field.clone())),
        MeshError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        MeshError::Off => (StatusCode::CONFLICT, None),
        MeshError::Datapath(_) | MeshError::State { .. } => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    error(status, e.to_string(), field)
}

/// Answers every request under `/v1/mesh`.
pub async fn route(method: &Method, path: &str, body: Bytes) -> Reply {
    let Some(manager) = handle() else {
        return mesh_error(MeshError::Off);
    };
    let method = method.clone();
    let path = path.to_string();
    let joined = tokio::task::spawn_blocking(move || {
        let mut m = manager.lock().unwrap_or_else(|p| p.into_inner());
        dispatch(&mut m, &method, &path, &body)
    })
    .await;
    match joined {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => mesh_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("mesh handler failed: {e}"), None),
    }
}

fn dispatch(m: &mut MeshManager, method: &Method, path: &str, body: &Bytes) -> Result<Reply, MeshError> {
    match (method, path) {
        (&Method::GET, paths::ROOT) | (&Method::GET, paths::PODS) => Ok(json(StatusCode::OK, &m.status())),
        (&Method::POST, paths::ENABLE) => toggle(m, body, true),
        (&Method::POST, paths::DISABLE) => toggle(m, body, false),
        _ => match path.strip_prefix(paths::PODS).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => {
                let (namespace, name) = parse_pod_ref(rest).map_err(|msg| MeshError::invalid("pod", msg))?;
                match *method {
                    Method::PUT => {
                        let reg: PodRegistration = parse(body)?;
                        let pod = pod_from(namespace, name, &reg)?;
                        Ok(json(StatusCode::OK, &m.register(pod, reg.enabled)?))
                    }
                    Method::DELETE => {
                        m.remove_pod(&namespace, &name)?;
                        Ok(json(StatusCode::OK, &m.status()))
                    }
                    _ => Err(MeshError::invalid("method", format!("{method} is not allowed on a mesh pod"))),
                }
            }
            None => Err(MeshError::NotFound(format!("no such API path: {method} {path}"))),
        },
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, MeshError> {
    if body.is_empty() {
        return Err(MeshError::invalid("body", "request body is empty (expected JSON)"));
    }
    serde_json::from_slice(body).map_err(|e| MeshError::invalid("body", format!("invalid JSON: {e}")))
}

fn toggle(m: &mut MeshManager, body: &Bytes, enabled: bool) -> Result<Reply, MeshError> {
    let req: ToggleRequest = parse(body)?;
    match (&req.namespace, &req.pod) {
        (Some(ns), None) => m.set_namespace(ns, enabled)?,
        (None, Some(pod)) => {
            let (ns, name) = parse_pod_ref(pod).map_err(|msg| MeshError::invalid("pod", msg))?;
            m.set_pod_enabled(&ns, &name, enabled)?
        }
        _ => return Err(MeshError::invalid("namespace", "give exactly one of namespace and pod")),
    }
    Ok(json(StatusCode::OK, &m.status()))
}

/// A registration body as a [`PodRef`]: a relative cgroup is taken under
/// the cgroup2 mount.
fn pod_from(namespace: String, name: String, reg: &PodRegistration) -> Result<PodRef, MeshError> {
    if reg.cgroup.is_empty() {
        return Err(MeshError::invalid("cgroup", "the pod's cgroup2 directory is required"));
    }
    let mut cgroup = PathBuf::from(&reg.cgroup);
    if cgroup.is_relative() {
        let mount = crate::datapath::cgroup2_mount()
            .ok_or_else(|| MeshError::invalid("cgroup", "relative path but no cgroup2 mount found"))?;
        cgroup = mount.join(cgroup);
    }
    let ips = reg
        .ips
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpAddr>().map_err(|_| MeshError::invalid(format!("ips[{i}]"), format!("{s:?} is not an address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PodRef { namespace, name, cgroup, ips, annotations: reg.annotations.clone(), labels: Default::default() })
}
