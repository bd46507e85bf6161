//! `agentctl identity list|get` and `agentctl endpoint list`: security
//! identities and this node's endpoints, as the agent knows them. Cilium's
//! shape: one row per identity, its labels one per line under LABELS.

use crate::table;
use crate::Output;
use anyhow::{Context, Result};
use axon_api::identity::{Endpoint, EndpointState, Identity};
use axon_api::Client;

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCmd {
    /// List every identity of the cluster (or of this node, embedded mode).
    #[command(visible_alias = "ls")]
    List,
    /// Show one identity.
    Get { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum IpcacheCmd {
    /// Every entry as the kernel holds it, read from the pin (works while the agent is down).
    #[command(visible_alias = "ls")]
    List,
}

/// One ipcache entry on the wire (`-o json`).
#[derive(Debug, serde::Serialize)]
struct IpcacheRow {
    prefix: String,
    identity: u32,
    local: bool,
}

/// `agentctl bpf ipcache list`: `IP PREFIX  IDENTITY  FLAGS`.
pub fn ipcache_list(bpffs_root: &std::path::Path, output: Output) -> Result<()> {
    let entries = axon_bpf::maps::ipcache::read(bpffs_root).context("reading axon_ipcache")?;
    let rows: Vec<IpcacheRow> = entries
        .iter()
        .map(|e| IpcacheRow {
            prefix: format!("{}/{}", e.ip, e.prefix_len),
            identity: e.identity,
            local: e.flags & axon_bpf::maps::ipcache::flags::LOCAL != 0,
        })
        .collect();
    match output {
        Output::Json => crate::print_json(&rows),
        Output::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| vec![r.prefix.clone(), r.identity.to_string(), if r.local { "local" } else { "" }.to_string()])
                .collect();
            crate::emit(&table::render(&["IP PREFIX", "IDENTITY", "FLAGS"], &cells))
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum EndpointCmd {
    /// List this node's endpoints with their identities.
    #[command(visible_alias = "ls")]
    List,
}

pub async fn run_identity(client: &Client, cmd: IdentityCmd, output: Output) -> Result<()> {
    match cmd {
        IdentityCmd::List => list(client, output).await,
        IdentityCmd::Get { id } => get(client, &id, output).await,
    }
}

pub async fn run_endpoint(client: &Client, cmd: EndpointCmd, output: Output) -> Result<()> {
    match cmd {
        EndpointCmd::List => list_endpoints(client, output).await,
    }
}

/// `ID  LABELS` rows; an identity with several labels takes several lines.
pub fn rows(identities: &[Identity]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for identity in identities {
        let labels = identity.label_strings();
        if labels.is_empty() {
            rows.push(vec![identity.id.to_string(), String::new()]);
        }
        for (i, label) in labels.into_iter().enumerate() {
            let id = if i == 0 { identity.id.to_string() } else { String::new() };
            rows.push(vec![id, label]);
        }
    }
    rows
}

pub fn render(identities: &[Identity]) -> String {
    table::render(&["ID", "LABELS"], &rows(identities))
}

pub async fn list(client: &Client, output: Output) -> Result<()> {
    let mut identities = client.list_identities().await.context("listing identities")?;
    identities.sort_by_key(|i| i.id);
    match output {
        Output::Json => crate::print_json(&identities),
        Output::Table => crate::emit(&render(&identities)),
    }
}

pub async fn get(client: &Client, id: &str, output: Output) -> Result<()> {
    let id: u32 = id.trim().parse().map_err(|_| anyhow::anyhow!("id: {id:?} is not an identity number"))?;
    let identity = client.get_identity(id).await.with_context(|| format!("getting identity {id}"))?;
    match output {
        Output::Json => crate::print_json(&identity),
        Output::Table => crate::emit(&render(std::slice::from_ref(&identity))),
    }
}

pub fn render_endpoints(endpoints: &[Endpoint]) -> String {
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            vec![
                format!("{}/{}", e.namespace, e.name),
                e.identity.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                match e.state {
                    EndpointState::Ready => "ready".to_string(),
                    EndpointState::Pending => "pending".to_string(),
                },
                e.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table::render(&["ENDPOINT", "IDENTITY", "STATE", "IPS"], &rows)
}

pub async fn list_endpoints(client: &Client, output: Output) -> Result<()> {
    let endpoints = client.list_endpoints().await.context("listing endpoints")?;
    match output {
        Output::Json => crate::print_json(&endpoints),
        Output::Table => crate::emit(&render_endpoints(&endpoints)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_go_one_per_line_under_their_id() {
        let identity = Identity {
            id: 256,
            labels: [
                ("k8s:app".to_string(), "web".to_string()),
                ("k8s:io.kubernetes.pod.namespace".to_string(), "prod".to_string()),
            ]
            .into(),
        };
        assert_eq!(
            render(&[identity]),
            "ID    LABELS\n256   k8s:app=web\n      k8s:io.kubernetes.pod.namespace=prod\n"
        );
    }
}
