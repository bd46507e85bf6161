//! Turning what the user typed (flags of `service update`, a file for
//! `service apply`) into validated `ServiceSpec`s before anything is sent, so
//! a mistake is reported against the flag or the document field that holds it.

use anyhow::{anyhow, bail, Context, Result};
use axon_api::validate::{self, FieldError};
use axon_api::{Backend, Cidr, ServiceOptions, ServiceSpec, ServiceType, SessionAffinity};
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// Flags of `agentctl service update`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    /// Service id (1..4294967294); the service is created or replaced.
    #[arg(long)]
    pub id: String,
    /// Frontend as IP:PORT[/tcp|/udp] (`[fd00::10]:80/udp` for IPv6); TCP when no protocol is given.
    #[arg(long)]
    pub frontend: String,
    /// Backends as IP:PORT,IP:PORT (they share the frontend's protocol); empty for none.
    #[arg(long, default_value = "")]
    pub backends: String,
    /// Service type.
    #[arg(long = "type", value_name = "TYPE", default_value = "ClusterIP")]
    pub svc_type: String,
    /// Optional name, such as NAMESPACE/NAME.
    #[arg(long)]
    pub name: Option<String>,
    /// North-south mode: snat, dsr or hybrid (default: the agent's --lb-mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// North-south backend selection: random or maglev (default: the agent's --lb-algorithm).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// ClientIP session affinity with this timeout in seconds (Kubernetes' default is 10800).
    #[arg(long, value_name = "SECONDS")]
    pub affinity_timeout: Option<String>,
    /// externalTrafficPolicy: Cluster or Local.
    #[arg(long)]
    pub external_traffic_policy: Option<String>,
    /// internalTrafficPolicy: Cluster or Local.
    #[arg(long)]
    pub internal_traffic_policy: Option<String>,
    /// loadBalancerSourceRanges as CIDR,CIDR (LoadBalancer only).
    #[arg(long)]
    pub source_ranges: Option<String>,
    /// healthCheckNodePort (with --external-traffic-policy Local).
    #[arg(long)]
    pub health_check_node_port: Option<String>,
}

/// The per-service options from their flags; each error names its flag.
fn options_from_flags(args: &UpdateArgs) -> Result<ServiceOptions> {
    fn parsed<T: std::str::FromStr<Err = String>>(v: &Option<String>, flag: &str) -> Result<Option<T>> {
        v.as_deref().map(|s| s.trim().parse::<T>().map_err(|m| anyhow!("{flag}: {m}"))).transpose()
    }
    let session_affinity = match &args.affinity_timeout {
        None => None,
        Some(t) => {
            let timeout_seconds = t.trim().parse::<u32>().ok().filter(|t| (1..=86_400).contains(t));
            let timeout_seconds =
                timeout_seconds.ok_or_else(|| anyhow!("--affinity-timeout: {t:?} is not 1-86400 seconds"))?;
            Some(SessionAffinity { timeout_seconds })
        }
    };
    let source_ranges = match &args.source_ranges {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<Cidr>().map_err(|m| anyhow!("--source-ranges: {m}")))
            .collect::<Result<_>>()?,
    };
    let health_check_node_port = match &args.health_check_node_port {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow!("--health-check-node-port: {p:?} is not a port"))?,
        ),
    };
    Ok(ServiceOptions {
        mode: parsed(&args.mode, "--mode")?,
        algorithm: parsed(&args.algorithm, "--algorithm")?,
        session_affinity,
        external_traffic_policy: parsed(&args.external_traffic_policy, "--external-traffic-policy")?
            .unwrap_or_default(),
        internal_traffic_policy: parsed(&args.internal_traffic_policy, "--internal-traffic-policy")?
            .unwrap_or_default(),
        source_ranges,
        health_check_node_port,
    })
}

/// A service id given on the command line; `what` names the argument in errors.
pub fn parse_id_arg(s: &str, what: &str) -> Result<u32> {
    let n: i64 = s.trim().parse().map_err(|_| anyhow!("{what}: invalid service id {s:?}"))?;
    validate::check_id(n).map_err(|m| anyhow!("{what}: {m}"))
}

/// `IP:PORT[@NODE],...`; an empty string is no backend at all. `@NODE`
/// names the node a backend runs on (for traffic policies).
pub fn parse_backends_arg(s: &str) -> Result<Vec<Backend>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (addr, node) = match item.split_once('@') {
                Some((a, n)) if !n.is_empty() => (a, Some(n)),
                Some(_) => return Err(format!("{item:?}: empty node name after @")),
                None => (item, None),
            };
            let (ip, port) = validate::parse_ip_port(addr)?;
            let backend = Backend::new(ip, port);
            Ok(match node {
                Some(n) => backend.on_node(n),
                None => backend,
            })
        })
        .collect()
}

/// The service `update` describes, checked exactly as the agent will check it.
pub fn from_flags(args: &UpdateArgs) -> Result<(u32, ServiceSpec)> {
    let id = parse_id_arg(&args.id, "--id")?;
    let frontend = validate::parse_frontend_arg(args.frontend.trim()).map_err(|m| anyhow!("--frontend: {m}"))?;
    let backends = parse_backends_arg(&args.backends).map_err(|m| anyhow!("--backends: {m}"))?;
    let svc_type: ServiceType = args.svc_type.parse().map_err(|m: String| anyhow!("--type: {m}"))?;
    let options = options_from_flags(args)?;
    let spec = ServiceSpec { id: Some(id), name: args.name.clone(), frontend, backends, svc_type, options };
    // The whole-service rules (name syntax, one address family, no duplicate
    // backend) live in the API crate; run them on the wire form so the CLI
    // can never accept what the agent would refuse.
    let wire = serde_json::to_value(&spec).context("encoding the service")?;
    validate::service_spec_from_json(&wire, "").map_err(|e| anyhow!("{}", flag_error(&e)))?;
    Ok((id, spec))
}

/// A field error of a service built from flags, told in terms of the flag.
fn flag_error(e: &FieldError) -> String {
    let flag = match e.field.split(['.', '[']).next().unwrap_or("") {
        "id" => "--id",
        "name" => "--name",
        "frontend" => "--frontend",
        "backends" => "--backends",
        "type" => "--type",
        "mode" => "--mode",
        "algorithm" => "--algorithm",
        "sessionAffinity" => "--affinity-timeout",
        "externalTrafficPolicy" => "--external-traffic-policy",
        "internalTrafficPolicy" => "--internal-traffic-policy",
        "loadBalancerSourceRanges" => "--source-ranges",
        "healthCheckNodePort" => "--health-check-node-port",
        _ => return e.to_string(),
    };
    format!("{flag}: {}", e.message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// The format a file's extension promises, if any.
pub fn format_from_path(path: &str) -> Option<Format> {
    match Path::new(path).extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "json" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        _ => None,
    }
}

/// Without an extension to go by: a document opening with `{` or `[` is JSON.
pub fn sniff_format(text: &str) -> Format {
    match text.trim_start().chars().next() {
        Some('{') | Some('[') => Format::Json,
        _ => Format::Yaml,
    }
}

/// Parses a bulk document and validates every service in it. Errors name the
/// source and the field (`services.yaml: services[1].frontend.port: ...`).
pub fn specs_from_document(text: &str, format: Format, source: &str) -> Result<Vec<ServiceSpec>> {
    let value: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| anyhow!("{source}: invalid JSON: {e}"))?,
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| anyhow!("{source}: invalid YAML: {e}"))?,
    };
    if value.is_null() {
        bail!("{source}: the document is empty (expected {{\"services\": [...]}} or a list of services)");
    }
    validate::apply_from_json(&value).map_err(|e| anyhow!("{source}: {e}"))
}

/// Reads `path` (`-` for standard input) and validates it.
pub fn read_apply_file(path: &str) -> Result<Vec<ServiceSpec>> {
    let (text, source) = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        (text, "<stdin>".to_string())
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        (text, path.to_string())
    };
    let format = format_from_path(path).unwrap_or_else(|| sniff_format(&text));
    specs_from_document(&text, format, &source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(frontend: &str, backends: &str) -> UpdateArgs {
        UpdateArgs {
            id: "1".into(),
            frontend: frontend.into(),
            backends: backends.into(),
            svc_type: "ClusterIP".into(),
            name: None,
            mode: None,
            algorithm: None,
            affinity_timeout: None,
            external_traffic_policy: None,
            internal_traffic_policy: None,
            source_ranges: None,
            health_check_node_port: None,
        }
    }

    fn err(a: &UpdateArgs) -> String {
        from_flags(a).unwrap_err().to_string()
    }

    #[test]
    fn north_south_flags() {
        let mut a = args("0.0.0.0:30080", "10.0.1.2:8080@node-1, 10.0.2.2:8080@node-2");
        a.svc_type = "NodePort".into();
        a.mode = Some("dsr".into());
        a.algorithm = Some("maglev".into());
        a.affinity_timeout = Some("600".into());
        a.external_traffic_policy = Some("Local".into());
        a.health_check_node_port = Some("32000".into());
        let (_, spec) = from_flags(&a).unwrap();
        assert_eq!(spec.backends[1].node.as_deref(), Some("node-2"));
        assert_eq!(spec.options.session_affinity.unwrap().timeout_seconds, 600);
        a.mode = Some("tunnel".into());
        assert!(err(&a).starts_with("--mode:"), "{}", err(&a));
        a.mode = None;
        a.source_ranges = Some("10.0.0.0/8".into());
        assert!(err(&a).starts_with("--source-ranges:"), "NodePort has no source ranges: {}", err(&a));
        a.svc_type = "ClusterIP".into();
        a.source_ranges = None;
        assert!(err(&a).starts_with("--frontend:"), "{}", err(&a));
    }

    #[test]
    fn flags_become_a_spec() {
        let (id, spec) = from_flags(&args("10.96.0.10:80/udp", "10.0.0.2:53, 10.0.0.3:53")).unwrap();
        assert_eq!(id, 1);
        assert_eq!(spec.frontend.to_string(), "10.96.0.10:80/UDP");
        assert_eq!(spec.backends.len(), 2);
        assert!(from_flags(&args("10.96.0.10:80", "")).unwrap().1.backends.is_empty());
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(err(&args("10.96.0.10:0", "")).starts_with("--frontend: port must be"));
        assert!(err(&args("10.96.0.10:80", "10.0.0.2:x")).starts_with("--backends: invalid port"));
        assert!(err(&args("10.96.0.10:80", "fd00::2:80")).starts_with("--backends:"));
        assert!(err(&args("10.96.0.10:80", "10.0.0.2:80,10.0.0.2:80")).starts_with("--backends: duplicate backend"));
        let mut a = args("10.96.0.10:80", "");
        a.svc_type = "Headless".into();
        assert!(err(&a).starts_with("--type:"));
        a = args("10.96.0.10:80", "");
        a.id = "0".into();
        assert!(err(&a).starts_with("--id:"));
        a = args("10.96.0.10:80", "");
        a.name = Some("bad name!".into());
        assert!(err(&a).starts_with("--name:"));
    }

    #[test]
    fn documents_in_either_format() {
        let yaml = "services:\n  - id: 3\n    frontend: {address: 10.96.0.3, port: 53, protocol: UDP}\n    backends:\n      - {address: 10.0.0.9, port: 53}\n";
        let specs = specs_from_document(yaml, sniff_format(yaml), "f").unwrap();
        assert_eq!((specs[0].id, specs[0].backends.len()), (Some(3), 1));
        let json = r#"[{"frontend": {"address": "10.96.0.4", "port": 80}}]"#;
        assert_eq!(sniff_format(json), Format::Json);
        assert_eq!(specs_from_document(json, Format::Json, "f").unwrap().len(), 1);
        assert_eq!(format_from_path("x.YML"), Some(Format::Yaml));
        assert_eq!(format_from_path("-"), None);
    }

    #[test]
    fn document_errors_name_source_and_field() {
        let yaml = "- frontend: {address: 10.96.0.3, port: 70000}\n";
        let e = specs_from_document(yaml, Format::Yaml, "svc.yaml").unwrap_err().to_string();
        assert!(e.starts_with("svc.yaml: services[0].frontend.port:"), "{e}");
        let e = specs_from_document("{", Format::Json, "svc.json").unwrap_err().to_string();
        assert!(e.starts_with("svc.json: invalid JSON"), "{e}");
        assert!(specs_from_document("", Format::Yaml, "e.yaml").is_err());
    }
}
