//! Wire types of security identities and endpoints (`/v1/identities`,
//! `/v1/endpoints`): an identity is a numeric id for a set of labels; an
//! endpoint (a pod) has addresses and labels and, once allocated, an identity.
//! Also the checks an endpoint registration must pass (Kubernetes' own rules
//! for names, label keys and values), each naming the field that is wrong.

use crate::client::{Client, ClientError};
use crate::validate::FieldError;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Paths of the identity and endpoint API.
pub mod paths {
    pub const IDENTITIES: &str = "/v1/identities";
    pub const ENDPOINTS: &str = "/v1/endpoints";

    /// `/v1/identities/<id>`.
    pub fn identity(id: u32) -> String {
        format!("{IDENTITIES}/{id}")
    }

    /// `/v1/endpoints/<namespace>/<name>`.
    pub fn endpoint(namespace: &str, name: &str) -> String {
        format!("{ENDPOINTS}/{namespace}/{name}")
    }
}

/// A security identity: `labels` are source-prefixed (`k8s:app=web`,
/// `k8s:io.kubernetes.pod.namespace=prod`), keys to values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    /// `k8s:app=web` strings, sorted: how the CLI prints them.
    pub fn label_strings(&self) -> Vec<String> {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Body of `PUT /v1/endpoints/<namespace>/<name>`: the pod's addresses and
/// its (unprefixed, Kubernetes) labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRegistration {
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Whether an endpoint has its identity yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Identity allocated; its addresses are in the ipcache.
    Ready,
    /// The allocator is unreachable (etcd or the apiserver down): retried in
    /// the background, the endpoint keeps its last identity meanwhile.
    Pending,
}

/// An endpoint as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// The pod's own labels (unprefixed).
    pub labels: BTreeMap<String, String>,
    /// The identity, once allocated (or the last one known while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    pub state: EndpointState,
    /// Why it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Parses and checks a registration body: every address an IP, every label a
/// valid Kubernetes label.
pub fn registration_from_json(v: &Value) -> Result<EndpointRegistration, FieldError> {
    let Some(obj) = v.as_object() else {
        return Err(FieldError::new("", "an endpoint registration must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !matches!(k.as_str(), "ips" | "labels")) {
        return Err(FieldError::new(unknown.clone(), "unknown field (expected ips, labels)"));
    }
    let mut reg = EndpointRegistration::default();
    match obj.get("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("ips[{i}]");
                let ip = crate::validate::parse_ip(item, &field)?;
                if reg.ips.contains(&ip) {
                    return Err(FieldError::new(field, format!("{ip} is listed twice")));
                }
                reg.ips.push(ip);
            }
        }
        Some(_) => return Err(FieldError::new("ips", "must be a list of IP addresses")),
    }
    match obj.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (key, value) in labels {
                let field = format!("labels[{key}]");
                check_label_key(key).map_err(|m| FieldError::new(&field, m))?;
                let Some(value) = value.as_str() else {
                    return Err(FieldError::new(field, "a label value must be a string"));
                };
                check_label_value(value).map_err(|m| FieldError::new(&field, m))?;
                reg.labels.insert(key.clone(), value.to_string());
            }
        }
        Some(_) => return Err(FieldError::new("labels", "must be an object of label keys to values")),
    }
    Ok(reg)
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A DNS-1123 label: what a namespace name must be.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1-63 characters"));
    }
    let ok = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(format!("{s:?} must be lower-case letters, digits and '-', starting and ending alphanumeric"));
    }
    Ok(())
}

/// A DNS-1123 subdomain: what a pod name must be.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} must be 1-253 characters"));
    }
    for part in s.split('.') {
        check_dns_label(part).map_err(|_| {
            format!("{s:?} must be lower-case letters, digits, '-' and '.', each part starting and ending alphanumeric")
        })?;
    }
    Ok(())
}

/// The name part of a label key, or a label value (non-empty): at most 63
/// characters, alphanumerics with `-`, `_`, `.` inside.
fn check_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(is_alnum)
        && s.chars().last().is_some_and(is_alnum)
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|e| format!("label key {key:?}: prefix {e}"))?;
    }
    if name.is_empty() || !check_label_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 characters, alphanumerics with '-', '_' or '.' inside"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or like a key's name.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || check_label_name(value) {
        return Ok(());
    }
    Err(format!("label value {value:?} must be at most 63 characters, alphanumerics with '-', '_' or '.' inside"))
}

/// Checks the `<namespace>/<name>` of an endpoint path.
pub fn check_endpoint_ref(namespace: &str, name: &str) -> Result<(), FieldError> {
    check_dns_label(namespace).map_err(|m| FieldError::new("namespace", m))?;
    check_dns_subdomain(name).map_err(|m| FieldError::new("name", m))
}

/// Typed calls of the identity and endpoint API.
impl Client {
    pub async fn list_identities(&self) -> Result<Vec<Identity>, ClientError> {
        self.call(Method::GET, paths::IDENTITIES, None::<&()>).await
    }

    pub async fn get_identity(&self, id: u32) -> Result<Identity, ClientError> {
        self.call(Method::GET, &paths::identity(id), None::<&()>).await
    }

    pub async fn list_endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.call(Method::GET, paths::ENDPOINTS, None::<&()>).await
    }

    pub async fn put_endpoint(
        &self,
        namespace: &str,
        name: &str,
        reg: &EndpointRegistration,
    ) -> Result<Endpoint, ClientError> {
        self.call(Method::PUT, &paths::endpoint(namespace, name), Some(reg)).await
    }

    pub async fn delete_endpoint(&self, namespace: &str, name: &str) -> Result<Endpoint, ClientError> {
        self.call(Method::DELETE, &paths::endpoint(namespace, name), None::<&()>).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_rules_follow_kubernetes() {
        for ok in ["app", "app.kubernetes.io/name", "a_b-c.d", "example.com/x"] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-app", "app-", "Bad_Prefix/x", "a/b/c", "x/", &"a".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert_eq!(check_label_value(""), Ok(()));
        assert!(check_label_value("has space").is_err());
    }

    #[test]
    fn registration_errors_name_the_field() {
        let e = registration_from_json(&json!({"ips": ["10.0.0.1", "nope"]})).unwrap_err();
        assert_eq!(e.field, "ips[1]");
        let e = registration_from_json(&json!({"labels": {"app": "we b"}})).unwrap_err();
        assert_eq!(e.field, "labels[app]");
        let e = registration_from_json(&json!({"labels": {"-x": "y"}})).unwrap_err();
        assert_eq!(e.field, "labels[-x]");
        let e = registration_from_json(&json!({"ip": []})).unwrap_err();
        assert_eq!(e.field, "ip");
        let ok = registration_from_json(&json!({"ips": ["fd00::1"], "labels": {"app": "web"}})).unwrap();
        assert_eq!(ok.labels["app"], "web");
        assert_eq!(check_endpoint_ref("Prod", "x").unwrap_err().field, "namespace");
    }
}
