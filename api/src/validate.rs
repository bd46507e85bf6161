//! Turning untrusted JSON into the typed model. Every rejection is a
//! [`FieldError`] naming the field (`services[2].backends[0].port`), so the
//! API and the CLI can tell the user exactly what to fix.

use crate::model::{
    Backend, BackendState, Cidr, L4Addr, LbAlgorithm, LbMode, Protocol, ServiceOptions, ServiceSpec, ServiceType,
    SessionAffinity, TrafficPolicy,
};
use serde_json::{Map, Value};
use std::fmt;
use std::net::IpAddr;

/// A value that is wrong, and which field holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error, one level deeper in a document (`services[3]` + `.frontend`).
    pub fn within(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, message: self.message }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object().ok_or_else(|| FieldError::new(field, format!("expected an object, got {}", json_type(v))))
}

fn reject_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), FieldError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            Err(FieldError::new(join(prefix, k), format!("unknown field (expected one of: {})", known.join(", "))))
        }
        None => Ok(()),
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str, prefix: &str) -> Result<&'a Value, FieldError> {
    obj.get(key).filter(|v| !v.is_null()).ok_or_else(|| FieldError::new(join(prefix, key), "is required"))
}

/// An IP address from a JSON string.
pub fn parse_ip(v: &Value, field: &str) -> Result<IpAddr, FieldError> {
    let s = v
        .as_str()
        .ok_or_else(|| FieldError::new(field, format!("expected an IP address string, got {}", json_type(v))))?;
    parse_ip_str(s).map_err(|m| FieldError::new(field, m))
}

fn parse_ip_str(s: &str) -> Result<IpAddr, String> {
    // A v4-mapped IPv6 address (::ffff:a.b.c.d) is that IPv4 address: one
    // service, one key, whichever socket family reaches it.
    let ip: IpAddr = s.trim().parse::<IpAddr>().map_err(|_| format!("invalid IP address {s:?}"))?.to_canonical();
    if ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err(format!("{ip} cannot be a service or backend address"));
    }
    Ok(ip)
}

/// A port 1..=65535 from a JSON number.
pub fn parse_port(v: &Value, field: &str) -> Result<u16, FieldError> {
    let n = v.as_i64().ok_or_else(|| {
        FieldError::new(
            field,
            format!(
                "expected an integer port, got {}",
                if v.is_number() { "a fraction".into() } else { json_type(v).to_string() }
            ),
        )
    })?;
    check_port(n).map_err(|m| FieldError::new(field, m))
}

fn check_port(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("port must be between 1 and 65535, got {n}"))
    }
}

fn parse_string<'a>(v: &'a Value, field: &str) -> Result<&'a str, FieldError> {
    v.as_str().ok_or_else(|| FieldError::new(field, format!("expected a string, got {}", json_type(v))))
}

fn parse_protocol(v: Option<&Value>, field: &str) -> Result<Protocol, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(Protocol::default()),
        Some(v) => parse_string(v, field)?.parse().map_err(|m: String| FieldError::new(field, m)),
    }
}

/// `{"address": "10.96.0.10", "port": 80, "protocol": "TCP"}`. The
/// wildcard address (`0.0.0.0`, `::`: every node address) is accepted here
/// and checked against the service type by [`check_consistency`].
pub fn frontend_from_json(v: &Value, prefix: &str) -> Result<L4Addr, FieldError> {
    let obj = as_object(v, prefix)?;
    reject_unknown(obj, &["address", "port", "protocol"], prefix)?;
    let address_field = join(prefix, "address");
    let address_value = required(obj, "address", prefix)?;
    let address = match address_value.as_str().map(|a| a.trim().parse::<IpAddr>()) {
        Some(Ok(ip)) if ip.is_unspecified() => ip,
        _ => parse_ip(address_value, &address_field)?,
    };
    let port = parse_port(required(obj, "port", prefix)?, &join(prefix, "port"))?;
    let protocol = parse_protocol(obj.get("protocol"), &join(prefix, "protocol"))?;
    Ok(L4Addr { address, port, protocol })
}

/// `{"address": "10.0.0.2", "port": 8080}`.
pub fn backend_from_json(v: &Value, prefix: &str) -> Result<Backend, FieldError> {
    let obj = as_object(v, prefix)?;
    reject_unknown(obj, &["address", "port", "state", "node"], prefix)?;
    let address = parse_ip(required(obj, "address", prefix)?, &join(prefix, "address"))?;
    let port = parse_port(required(obj, "port", prefix)?, &join(prefix, "port"))?;
    let state = match obj.get("state") {
        None | Some(Value::Null) => BackendState::Active,
        Some(v) => match parse_string(v, &join(prefix, "state"))? {
            "active" => BackendState::Active,
            "terminating" => BackendState::Terminating,
            other => {
                return Err(FieldError::new(
                    join(prefix, "state"),
                    format!("unknown backend state {other:?} (expected active or terminating)"),
                ))
            }
        },
    };
    let node = match obj.get("node") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_name(v, &join(prefix, "node"))?),
    };
    Ok(Backend { address, port, state, node })
}

/// A whole service. `prefix` is where it sits in the document ("" at the top).
pub fn service_spec_from_json(v: &Value, prefix: &str) -> Result<ServiceSpec, FieldError> {
    let obj = as_object(v, prefix)?;
    reject_unknown(
        obj,
        &[
            "id",
            "name",
            "frontend",
            "backends",
            "type",
            "mode",
            "algorithm",
            "sessionAffinity",
            "externalTrafficPolicy",
            "internalTrafficPolicy",
            "loadBalancerSourceRanges",
            "healthCheckNodePort",
        ],
        prefix,
    )?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_id(v, &join(prefix, "id"))?),
    };
    let name = match obj.get("name") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_name(v, &join(prefix, "name"))?),
    };
    let frontend = frontend_from_json(required(obj, "frontend", prefix)?, &join(prefix, "frontend"))?;
    let backends_field = join(prefix, "backends");
    let backends = match obj.get("backends") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, b)| backend_from_json(b, &format!("{backends_field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(FieldError::new(backends_field, format!("expected an array, got {}", json_type(other))))
        }
    };
    let svc_type = match obj.get("type") {
        None | Some(Value::Null) => ServiceType::default(),
        Some(v) => parse_string(v, &join(prefix, "type"))?
            .parse()
            .map_err(|m: String| FieldError::new(join(prefix, "type"), m))?,
    };
    let options = options_from_json(obj, prefix)?;
    let spec = ServiceSpec { id, name, frontend, backends, svc_type, options };
    check_consistency(&spec, prefix)?;
    Ok(spec)
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    obj: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<T>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_string(v, &join(prefix, key))?
            .parse()
            .map(Some)
            .map_err(|m: String| FieldError::new(join(prefix, key), m)),
    }
}

/// The per-service load-balancing options.
fn options_from_json(obj: &Map<String, Value>, prefix: &str) -> Result<ServiceOptions, FieldError> {
    let session_affinity = match obj.get("sessionAffinity") {
        None | Some(Value::Null) => None,
        Some(v) => Some(affinity_from_json(v, &join(prefix, "sessionAffinity"))?),
    };
    let ranges_field = join(prefix, "loadBalancerSourceRanges");
    let source_ranges = match obj.get("loadBalancerSourceRanges") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let field = format!("{ranges_field}[{i}]");
                parse_string(v, &field)?.trim().parse::<Cidr>().map_err(|m| FieldError::new(field, m))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(FieldError::new(ranges_field, format!("expected an array of CIDRs, got {}", json_type(other))))
        }
    };
    let health_check_node_port = match obj.get("healthCheckNodePort") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_port(v, &join(prefix, "healthCheckNodePort"))?),
    };
    Ok(ServiceOptions {
        mode: parse_enum::<LbMode>(obj, "mode", prefix)?,
        algorithm: parse_enum::<LbAlgorithm>(obj, "algorithm", prefix)?,
        session_affinity,
        external_traffic_policy: parse_enum::<TrafficPolicy>(obj, "externalTrafficPolicy", prefix)?.unwrap_or_default(),
        internal_traffic_policy: parse_enum::<TrafficPolicy>(obj, "internalTrafficPolicy", prefix)?.unwrap_or_default(),
        source_ranges,
        health_check_node_port,
    })
}

/// `{"timeoutSeconds": 10800}` (ClientIP; the timeout defaults like Kubernetes').
fn affinity_from_json(v: &Value, prefix: &str) -> Result<SessionAffinity, FieldError> {
    let obj = as_object(v, prefix)?;
    reject_unknown(obj, &["timeoutSeconds"], prefix)?;
    let field = join(prefix, "timeoutSeconds");
    let timeout_seconds = match obj.get("timeoutSeconds") {
        None | Some(Value::Null) => SessionAffinity::DEFAULT_TIMEOUT_SECONDS,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=86_400).contains(&n) => n as u32,
            _ => return Err(FieldError::new(field, format!("must be an integer from 1 to 86400 seconds, got {v}"))),
        },
    };
    Ok(SessionAffinity { timeout_seconds })
}

/// Checks that need the whole service but no agent state.
pub fn check_consistency(spec: &ServiceSpec, prefix: &str) -> Result<(), FieldError> {
    check_type_rules(spec, prefix)?;
    let mut seen = std::collections::HashSet::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let field = join(prefix, &format!("backends[{i}]"));
        if b.address.is_ipv4() != spec.frontend.address.is_ipv4() {
            return Err(FieldError::new(
                format!("{field}.address"),
                format!("{} is not the frontend's address family ({})", b.address, spec.frontend.address),
            ));
        }
        if b.address.is_unspecified() {
            return Err(FieldError::new(
                format!("{field}.address"),
                format!("{} cannot be a backend address", b.address),
            ));
        }
        if !seen.insert((b.address, b.port)) {
            return Err(FieldError::new(field, format!("duplicate backend {}", b.socket_addr())));
        }
    }
    Ok(())
}

/// What each service type allows, as Kubernetes has it.
fn check_type_rules(spec: &ServiceSpec, prefix: &str) -> Result<(), FieldError> {
    let t = spec.svc_type;
    let o = &spec.options;
    if spec.frontend.address.is_unspecified() && !t.allows_wildcard() {
        return Err(FieldError::new(
            join(prefix, "frontend.address"),
            format!(
                "{} (every node address) is only for NodePort and HostPort services, not {t}",
                spec.frontend.address
            ),
        ));
    }
    if !t.is_north_south() {
        let north_south_only = [
            ("mode", o.mode.is_some()),
            ("algorithm", o.algorithm.is_some()),
            ("externalTrafficPolicy", !o.external_traffic_policy.is_cluster()),
        ];
        if let Some((field, _)) = north_south_only.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                join(prefix, field),
                format!(
                    "applies to traffic from outside the node (NodePort, LoadBalancer, ExternalIPs, HostPort), not {t}"
                ),
            ));
        }
    }
    if !o.source_ranges.is_empty() && t != ServiceType::LoadBalancer {
        return Err(FieldError::new(
            join(prefix, "loadBalancerSourceRanges"),
            format!("only LoadBalancer services have source ranges, not {t}"),
        ));
    }
    if let Some(port) = o.health_check_node_port {
        let field = join(prefix, "healthCheckNodePort");
        if !matches!(t, ServiceType::NodePort | ServiceType::LoadBalancer) || o.external_traffic_policy.is_cluster() {
            return Err(FieldError::new(
                field,
                "needs a NodePort or LoadBalancer service with externalTrafficPolicy Local",
            ));
        }
        if port == spec.frontend.port {
            return Err(FieldError::new(field, format!("{port} is the service's own port")));
        }
    }
    Ok(())
}

/// Service ids are 1..=u32::MAX-1 (0 means "none" in the datapath).
pub fn parse_id(v: &Value, field: &str) -> Result<u32, FieldError> {
    let n =
        v.as_i64().ok_or_else(|| FieldError::new(field, format!("expected an integer id, got {}", json_type(v))))?;
    check_id(n).map_err(|m| FieldError::new(field, m))
}

pub fn check_id(n: i64) -> Result<u32, String> {
    if n >= 1 && n < u32::MAX as i64 {
        Ok(n as u32)
    } else {
        Err(format!("id must be between 1 and {}, got {n}", u32::MAX - 1))
    }
}

fn parse_name(v: &Value, field: &str) -> Result<String, FieldError> {
    let s = parse_string(v, field)?;
    if s.is_empty() || s.len() > 253 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c)) {
        return Err(FieldError::new(
            field,
            format!("invalid name {s:?} (1-253 characters of a-z, 0-9, '-', '.', '_', '/')"),
        ));
    }
    Ok(s.to_string())
}

/// A bulk document: `{"services": [...]}` or a bare array of services.
pub fn apply_from_json(v: &Value) -> Result<Vec<ServiceSpec>, FieldError> {
    let items = match v {
        Value::Array(items) => items,
        Value::Object(obj) => {
            reject_unknown(obj, &["services"], "")?;
            match required(obj, "services", "")? {
                Value::Array(items) => items,
                other => {
                    return Err(FieldError::new("services", format!("expected an array, got {}", json_type(other))))
                }
            }
        }
        other => {
            return Err(FieldError::new(
                "",
                format!("expected an object with \"services\" or an array, got {}", json_type(other)),
            ))
        }
    };
    let specs = items
        .iter()
        .enumerate()
        .map(|(i, s)| service_spec_from_json(s, &format!("services[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    check_no_duplicate_frontends(&specs)?;
    Ok(specs)
}

/// [`apply_from_json`] straight from the request bytes, one service at a
/// time: a bulk document of 100k services is never held as a JSON tree
/// (which costs ten times the document), only as the typed specs.
pub fn apply_from_slice(body: &[u8]) -> Result<Vec<ServiceSpec>, FieldError> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    /// The first field error found; the serde error that stops parsing
    /// only carries "stop".
    struct Failure(RefCell<Option<FieldError>>);

    struct Specs<'f>(&'f Failure);
    impl<'de> DeserializeSeed<'de> for Specs<'_> {
        type Value = Vec<ServiceSpec>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Specs<'_> {
        type Value = Vec<ServiceSpec>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of services")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(v) = seq.next_element::<Value>()? {
                match service_spec_from_json(&v, &format!("services[{}]", out.len())) {
                    Ok(spec) => out.push(spec),
                    Err(e) => {
                        *self.0 .0.borrow_mut() = Some(e);
                        return Err(A::Error::custom("stop"));
                    }
                }
            }
            Ok(out)
        }
    }

    struct Document<'f>(&'f Failure);
    impl<'de> Visitor<'de> for Document<'_> {
        type Value = Vec<ServiceSpec>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object with \"services\" or an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Specs(self.0).visit_seq(seq)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut specs = None;
            while let Some(key) = map.next_key::<String>()? {
                if key != "services" {
                    *self.0 .0.borrow_mut() = Some(FieldError::new(key, "unknown field (expected one of: services)"));
                    return Err(A::Error::custom("stop"));
                }
                specs = Some(map.next_value_seed(Specs(self.0))?);
            }
            specs.ok_or_else(|| {
                *self.0 .0.borrow_mut() = Some(FieldError::new("services", "is required"));
                A::Error::custom("stop")
            })
        }
    }

    let failure = Failure(RefCell::new(None));
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_any(Document(&failure)).and_then(|specs| de.end().map(|_| specs));
    let specs = match parsed {
        Ok(specs) => specs,
        Err(e) => {
            return Err(failure.0.into_inner().unwrap_or_else(|| {
                if body.iter().all(u8::is_ascii_whitespace) {
                    FieldError::new("", "request body is empty (expected JSON)")
                } else if e.is_data() {
                    FieldError::new("", format!("expected an object with \"services\" or an array: {e}"))
                } else {
                    FieldError::new("", format!("invalid JSON: {e}"))
                }
            }))
        }
    };
    check_no_duplicate_frontends(&specs)?;
    Ok(specs)
}

fn check_no_duplicate_frontends(specs: &[ServiceSpec]) -> Result<(), FieldError> {
    let mut frontends = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        if let Some(j) = frontends.insert(s.frontend, i) {
            return Err(FieldError::new(
                format!("services[{i}].frontend"),
                format!("{} is also the frontend of services[{j}]", s.frontend),
            ));
        }
        if let Some(id) = s.id {
            if let Some(j) = ids.insert(id, i) {
                return Err(FieldError::new(
                    format!("services[{i}].id"),
                    format!("id {id} is also the id of services[{j}]"),
                ));
            }
        }
    }
    Ok(())
}

/// `IP:PORT[/tcp|/udp]` as the CLI takes it (`[fd00::1]:80/udp` for IPv6).
pub fn parse_frontend_arg(s: &str) -> Result<L4Addr, String> {
    let (addr, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.parse::<Protocol>()?),
        None => (s, Protocol::Tcp),
    };
    let (host, _) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not IP:PORT"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        if ip.is_unspecified() {
            // The wildcard frontend of a NodePort/HostPort; the type check is the agent's.
            let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
            let port: i64 = port.parse().map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
            return Ok(L4Addr::new(ip, check_port(port)?, proto));
        }
    }
    let (ip, port) = parse_ip_port(addr)?;
    Ok(L4Addr::new(ip, port, proto))
}

/// `IP:PORT` (`[v6]:PORT` for IPv6).
pub fn parse_ip_port(s: &str) -> Result<(IpAddr, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not IP:PORT"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = parse_ip_str(host)?;
    let port: i64 = port.parse().map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
    Ok((ip, check_port(port)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> FieldError {
        service_spec_from_json(&v, "").unwrap_err()
    }

    #[test]
    fn accepts_a_full_service() {
        let s = service_spec_from_json(
            &json!({"id": 7, "name": "default/web", "frontend": {"address": "10.96.0.10", "port": 80, "protocol": "udp"},
                    "backends": [{"address": "10.0.0.2", "port": 8080}], "type": "ClusterIP"}),
            "",
        )
        .unwrap();
        assert_eq!(s.id, Some(7));
        assert_eq!(s.frontend.protocol, Protocol::Udp);
        assert_eq!(s.backends.len(), 1);
    }

    #[test]
    fn rejections_name_the_field() {
        let fe = |f: Value| json!({"frontend": f, "backends": []});
        assert_eq!(err(fe(json!({"address": "10.0.0.300", "port": 80}))).field, "frontend.address");
        assert_eq!(err(fe(json!({"address": "10.0.0.3", "port": 0}))).field, "frontend.port");
        assert_eq!(err(fe(json!({"address": "10.0.0.3", "port": 65536}))).field, "frontend.port");
        assert_eq!(err(fe(json!({"address": "10.0.0.3", "port": 80, "protocol": "sctp"}))).field, "frontend.protocol");
        assert_eq!(err(json!({"backends": []})).field, "frontend");
        let e = err(
            json!({"frontend": {"address": "10.0.0.3", "port": 80}, "backends": [{"address": "fd00::1", "port": 1}]}),
        );
        assert_eq!(e.field, "backends[0].address");
        let e = err(json!({"frontend": {"address": "10.0.0.3", "port": 80}, "type": "Bogus"}));
        assert_eq!(e.field, "type");
        let e = err(json!({"frontend": {"address": "10.0.0.3", "port": 80}, "backend": []}));
        assert_eq!(e.field, "backend");
    }

    #[test]
    fn bulk_rejects_duplicate_frontends_with_index() {
        let fe = json!({"address": "10.96.0.1", "port": 53, "protocol": "UDP"});
        let e = apply_from_json(&json!({"services": [{"frontend": fe}, {"frontend": fe}]})).unwrap_err();
        assert_eq!(e.field, "services[1].frontend");
        let e = apply_from_json(&json!([{"frontend": {"address": "10.96.0.1", "port": "x"}}])).unwrap_err();
        assert_eq!(e.field, "services[0].frontend.port");
    }

    #[test]
    fn north_south_options_parse_and_are_checked_against_the_type() {
        let s = service_spec_from_json(
            &json!({"frontend": {"address": "0.0.0.0", "port": 30080}, "type": "NodePort",
                    "backends": [{"address": "10.0.1.2", "port": 8080, "node": "node-1"}],
                    "mode": "dsr", "algorithm": "maglev", "sessionAffinity": {},
                    "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
            "",
        )
        .unwrap();
        assert_eq!(s.options.mode, Some(LbMode::Dsr));
        assert_eq!(s.options.session_affinity.unwrap().timeout_seconds, 10_800);
        assert_eq!(s.backends[0].node.as_deref(), Some("node-1"));
        let back: ServiceSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s, "the wire form round-trips");

        let e = err(json!({"frontend": {"address": "0.0.0.0", "port": 80}}));
        assert_eq!(e.field, "frontend.address");
        let e = err(json!({"frontend": {"address": "10.96.0.1", "port": 80}, "mode": "dsr"}));
        assert_eq!(e.field, "mode");
        let e = err(json!({"frontend": {"address": "10.0.0.9", "port": 80}, "type": "LoadBalancer", "mode": "tunnel"}));
        assert_eq!(e.field, "mode");
        let e = err(json!({"frontend": {"address": "10.0.0.9", "port": 80}, "type": "LoadBalancer",
                           "loadBalancerSourceRanges": ["10.0.0.0/8", "10.1.2.3/16"]}));
        assert_eq!(e.field, "loadBalancerSourceRanges[1]");
        let e = err(json!({"frontend": {"address": "10.0.0.9", "port": 80}, "type": "NodePort",
                           "loadBalancerSourceRanges": ["10.0.0.0/8"]}));
        assert_eq!(e.field, "loadBalancerSourceRanges");
        let e = err(
            json!({"frontend": {"address": "0.0.0.0", "port": 30080}, "type": "NodePort", "healthCheckNodePort": 32000}),
        );
        assert_eq!(e.field, "healthCheckNodePort");
        let e = err(
            json!({"frontend": {"address": "0.0.0.0", "port": 30080}, "type": "NodePort", "sessionAffinity": {"timeoutSeconds": 0}}),
        );
        assert_eq!(e.field, "sessionAffinity.timeoutSeconds");
        assert_eq!(parse_frontend_arg("0.0.0.0:30080/udp").unwrap().to_string(), "0.0.0.0:30080/UDP");
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.77.0.0/24".parse().unwrap();
        assert!(c.contains(&"10.77.0.9".parse().unwrap()) && !c.contains(&"10.78.0.9".parse().unwrap()));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains(&"fd77::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(&"1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn streaming_bulk_parse_matches_the_tree_parse() {
        let fe = |port: u16| json!({"address": "10.96.0.1", "port": port});
        let doc = json!({"services": [{"frontend": fe(80)}, {"frontend": fe(81), "backends": [{"address": "10.0.0.1", "port": 1}]}]});
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(apply_from_slice(&bytes).unwrap(), apply_from_json(&doc).unwrap());
        let arr = serde_json::to_vec(&doc["services"]).unwrap();
        assert_eq!(apply_from_slice(&arr).unwrap().len(), 2);
        let bad = json!({"services": [{"frontend": fe(80)}, {"frontend": {"address": "10.96.0.1", "port": 0}}]});
        assert_eq!(
            apply_from_slice(&serde_json::to_vec(&bad).unwrap()).unwrap_err().field,
            "services[1].frontend.port"
        );
        let dup = json!([{"frontend": fe(80)}, {"frontend": fe(80)}]);
        assert_eq!(apply_from_slice(&serde_json::to_vec(&dup).unwrap()).unwrap_err().field, "services[1].frontend");
        assert_eq!(apply_from_slice(br#"{"service": []}"#).unwrap_err().field, "service");
        assert_eq!(apply_from_slice(br#"{}"#).unwrap_err().field, "services");
        assert!(apply_from_slice(b"{\"services\": [").unwrap_err().message.starts_with("invalid JSON"));
        assert!(apply_from_slice(b"  ").unwrap_err().message.contains("empty"));
        assert!(apply_from_slice(b"7").unwrap_err().message.starts_with("expected an object"));
    }

    #[test]
    fn cli_frontend_syntax() {
        assert_eq!(parse_frontend_arg("10.96.0.10:80").unwrap().to_string(), "10.96.0.10:80/TCP");
        assert_eq!(parse_frontend_arg("[fd00::10]:53/udp").unwrap().to_string(), "[fd00::10]:53/UDP");
        assert!(parse_frontend_arg("10.96.0.10:0").is_err());
        assert!(parse_frontend_arg("10.96.0.10").is_err());
        assert!(parse_frontend_arg("10.96.0.10:80/sctp").is_err());
    }
}
