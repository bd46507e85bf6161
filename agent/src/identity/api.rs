//! The `/v1/identities` and `/v1/endpoints` routes. Wired into the agent's
//! API router by one match arm.

use super::{handle, to_wire, AllocError};
use crate::api::{error_reply as error, field_error, json, Reply};
use axon_api::identity::{check_endpoint_ref, paths, registration_from_json};
use axon_api::FieldError;
use bytes::Bytes;
use hyper::{Method, StatusCode};

/// Whether `path` is one of these routes.
pub fn owns(path: &str) -> bool {
    let under = |root: &str| path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'));
    under(paths::IDENTITIES) || under(paths::ENDPOINTS)
}

fn alloc_error(e: AllocError) -> Reply {
    let status = match &e {
        AllocError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AllocError::Exhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
        AllocError::Invalid { .. } => StatusCode::BAD_REQUEST,
        AllocError::NotFound(_) => StatusCode::NOT_FOUND,
        AllocError::Store(_) | AllocError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let field = match &e {
        AllocError::Invalid { field, .. } => Some(field.clone()),
        _ => None,
    };
    error(status, e.to_string(), field)
}

/// Answers every request under `/v1/identities` and `/v1/endpoints`.
pub async fn route(method: &Method, path: &str, body: Bytes) -> Reply {
    let Some(manager) = handle() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "identities are not running".into(), None);
    };
    if let Some(rest) = path.strip_prefix(paths::IDENTITIES) {
        if *method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on identities"), None);
        }
        let m = manager.lock().await;
        return match rest.strip_prefix('/') {
            None => match m.backend().list().await {
                Ok(list) => json(StatusCode::OK, &list.into_iter().map(|(id, l)| to_wire(id, l)).collect::<Vec<_>>()),
                Err(e) => alloc_error(e),
            },
            Some(id) => {
                let Ok(id) = id.parse::<u32>() else {
                    return field_error(
                        StatusCode::BAD_REQUEST,
                        FieldError::new("id", format!("invalid identity id {id:?}")),
                    );
                };
                match m.backend().get(id).await {
                    Ok(Some(labels)) => json(StatusCode::OK, &to_wire(id, labels)),
                    Ok(None) => alloc_error(AllocError::NotFound(format!("identity {id}"))),
                    Err(e) => alloc_error(e),
                }
            }
        };
    }
    let rest = path.strip_prefix(paths::ENDPOINTS).unwrap_or_default();
    let Some(rest) = rest.strip_prefix('/') else {
        if *method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on endpoints"), None);
        }
        return json(StatusCode::OK, &manager.lock().await.endpoints());
    };
    let Some((namespace, name)) = rest.split_once('/') else {
        return field_error(
            StatusCode::BAD_REQUEST,
            FieldError::new("name", "the path must be /v1/endpoints/<namespace>/<name>"),
        );
    };
    if let Err(e) = check_endpoint_ref(namespace, name) {
        return field_error(StatusCode::BAD_REQUEST, e);
    }
    match *method {
        Method::PUT => {
            let value = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => v,
                Err(e) => {
                    return field_error(StatusCode::BAD_REQUEST, FieldError::new("", format!("invalid JSON: {e}")))
                }
            };
            let reg = match registration_from_json(&value) {
                Ok(r) => r,
                Err(e) => return field_error(StatusCode::BAD_REQUEST, e),
            };
            let mut m = manager.lock().await;
            if !m.persist {
                return error(
                    StatusCode::CONFLICT,
                    "endpoints come from Kubernetes on this agent; the API cannot register them".into(),
                    None,
                );
            }
            let ep = m.upsert_local(namespace, name, reg.ips, reg.labels, None).await;
            json(StatusCode::OK, &ep)
        }
        Method::DELETE => {
            let mut m = manager.lock().await;
            if !m.persist {
                return error(StatusCode::CONFLICT, "endpoints come from Kubernetes on this agent".into(), None);
            }
            match m.delete_local(namespace, name).await {
                Some(ep) => json(StatusCode::OK, &ep),
                None => alloc_error(AllocError::NotFound(format!("endpoint {namespace}/{name}"))),
            }
        }
        Method::GET => {
            match manager.lock().await.endpoints().into_iter().find(|e| e.namespace == namespace && e.name == name) {
                Some(ep) => json(StatusCode::OK, &ep),
                None => alloc_error(AllocError::NotFound(format!("endpoint {namespace}/{name}"))),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on an endpoint"), None),
    }
}
