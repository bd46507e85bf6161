//! `agentctl service ...`: the service table as Cilium prints it, and the
//! commands that read and change services through the agent's API.

use crate::spec;
use crate::table;
use crate::Output;
use anyhow::Result;
use axon_api::{Client, Service};

pub const HEADER: [&str; 4] = ["ID", "Frontend", "Service Type", "Backend"];

/// One row per service (sorted by id) with its first backend, then one
/// continuation row per further backend, numbered from 1. Services from
/// Kubernetes (named `namespace/name:port`) add a Name column.
pub fn rows(services: &[Service]) -> Vec<Vec<String>> {
    let named = with_names(services);
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.id);
    let mut rows = Vec::new();
    for svc in sorted {
        let mut backends = svc
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{} => {} ({})", i + 1, svc.backend_addr(b), b.state.as_str()));
        let first = backends.next().unwrap_or_default();
        let mut row = vec![svc.id.to_string(), svc.frontend.to_string(), svc.svc_type.to_string(), first];
        if named {
            row.push(svc.name.clone().unwrap_or_default());
        }
        rows.push(row);
        let blank = if named { 4 } else { 3 };
        rows.extend(backends.map(|b| {
            let mut row = vec![String::new(); blank];
            row.insert(3, b);
            row
        }));
    }
    rows
}

/// Whether any service comes from Kubernetes (its name has the owner separator).
fn with_names(services: &[Service]) -> bool {
    services.iter().any(|s| s.name.as_deref().is_some_and(|n| n.contains(':')))
}

pub fn render(services: &[Service]) -> String {
    if with_names(services) {
        let header: Vec<&str> = HEADER.iter().copied().chain(["Name"]).collect();
        table::render(&header, &rows(services))
    } else {
        table::render(&HEADER, &rows(services))
    }
}

fn print_services(services: &[Service], output: Output) -> Result<()> {
    match output {
        Output::Table => crate::emit(&render(services))?,
        Output::Json => crate::print_json(&services)?,
    }
    Ok(())
}

pub async fn list(client: &Client, output: Output) -> Result<()> {
    let services = client.list_services().await?;
    print_services(&services, output)
}

pub async fn get(client: &Client, id: &str, output: Output) -> Result<()> {
    let id = spec::parse_id_arg(id, "ID")?;
    let svc = client.get_service(id).await?;
    match output {
        Output::Table => crate::emit(&render(std::slice::from_ref(&svc)))?,
        Output::Json => crate::print_json(&svc)?,
    }
    Ok(())
}

pub async fn delete(client: &Client, id: &str, output: Output) -> Result<()> {
    let id = spec::parse_id_arg(id, "ID")?;
    let svc = client.delete_service(id).await?;
    match output {
        Output::Table => crate::emit(&format!("Deleted service {} ({})\n", svc.id, svc.frontend))?,
        Output::Json => crate::print_json(&svc)?,
    }
    Ok(())
}

pub async fn update(client: &Client, args: &spec::UpdateArgs, output: Output) -> Result<()> {
    let (id, spec) = spec::from_flags(args)?;
    let svc = client.put_service(id, &spec).await?;
    print_services(std::slice::from_ref(&svc), output)
}

pub async fn apply(client: &Client, file: &str, output: Output) -> Result<()> {
    let specs = spec::read_apply_file(file)?;
    let applied = client.apply(specs).await?;
    print_services(&applied, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axon_api::{Backend, L4Addr, Protocol, ServiceType};

    fn svc(id: u32, frontend: &str, proto: Protocol, backends: &[&str]) -> Service {
        Service {
            id,
            name: None,
            frontend: L4Addr::new(frontend.parse().unwrap(), 80, proto),
            backends: backends.iter().map(|b| Backend::new(b.parse().unwrap(), 8080)).collect(),
            svc_type: ServiceType::ClusterIP,
            options: Default::default(),
        }
    }

    #[test]
    fn continuation_rows_number_backends_and_services_sort_by_id() {
        let services = vec![
            svc(2, "fd00::10", Protocol::Udp, &["fd00::2"]),
            svc(1, "10.96.0.10", Protocol::Tcp, &["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        ];
        let expected = "\
ID   Frontend            Service Type   Backend
1    10.96.0.10:80/TCP   ClusterIP      1 => 10.0.0.2:8080/TCP (active)
                                        2 => 10.0.0.3:8080/TCP (active)
                                        3 => 10.0.0.4:8080/TCP (active)
2    [fd00::10]:80/UDP   ClusterIP      1 => [fd00::2]:8080/UDP (active)
";
        assert_eq!(render(&services), expected);
    }

    #[test]
    fn a_service_without_backends_is_one_row() {
        let out = render(&[svc(7, "10.96.0.11", Protocol::Tcp, &[])]);
        assert_eq!(out, "ID   Frontend            Service Type   Backend\n7    10.96.0.11:80/TCP   ClusterIP\n");
    }

    #[test]
    fn kubernetes_services_add_their_names_and_terminating_backends_show() {
        let mut web = svc(3, "10.96.0.12", Protocol::Tcp, &["10.0.0.2", "10.0.0.3"]);
        web.name = Some("shop/web:http".into());
        web.backends[1].state = axon_api::BackendState::Terminating;
        let out = render(&[web]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].split_whitespace().last() == Some("Name"), "{out}");
        assert!(lines[1].ends_with("(active)        shop/web:http"), "{out}");
        assert!(lines[2].trim_start().starts_with("2 => 10.0.0.3:8080/TCP (terminating)"), "{out}");
    }

    #[test]
    fn empty_list_is_the_header() {
        assert_eq!(render(&[]), "ID   Frontend   Service Type   Backend\n");
    }
}
