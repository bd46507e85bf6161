//! `agentctl mesh`: register pods, turn mesh acceleration on or off for a
//! pod or a namespace, and show which pods are accelerated with the
//! datapath's counters.

use crate::table;
use crate::Output;
use anyhow::{bail, Context, Result};
use axon_api::mesh::{parse_pod_ref, MeshStatus, PodRegistration, ToggleRequest};
use axon_api::Client;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;

#[derive(Debug, Subcommand)]
pub enum MeshCmd {
    /// Accelerate a namespace or a pod (registering the pod when --cgroup is given).
    Enable(Target),
    /// Return a namespace or a pod to the plain path (open connections keep working).
    Disable(Target),
    /// Forget a registered pod.
    Forget {
        /// NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
    },
    /// Accelerated pods, the mode, and the datapath counters.
    Status,
}

#[derive(Debug, Args)]
pub struct Target {
    /// Every pod of this namespace (also pods registered later).
    #[arg(long, conflicts_with = "pod", required_unless_present = "pod")]
    pub namespace: Option<String>,
    /// One pod: NAMESPACE/NAME.
    #[arg(long)]
    pub pod: Option<String>,
    /// Registers the pod: its cgroup2 directory (absolute or under the cgroup2 mount).
    #[arg(long, requires = "pod")]
    pub cgroup: Option<String>,
    /// The pod's addresses (with --cgroup; repeat for each).
    #[arg(long = "ip", requires = "cgroup")]
    pub ips: Vec<String>,
    /// KEY=VALUE pod annotations (exclusions; with --cgroup; repeat for each).
    #[arg(long = "annotation", requires = "cgroup")]
    pub annotations: Vec<String>,
}

pub async fn run(client: &Client, cmd: MeshCmd, out: Output) -> Result<()> {
    let status = match cmd {
        MeshCmd::Enable(t) => toggle(client, t, true).await?,
        MeshCmd::Disable(t) => toggle(client, t, false).await?,
        MeshCmd::Forget { pod } => {
            let (ns, name) = parse_pod_ref(&pod).map_err(anyhow::Error::msg).context("--pod")?;
            client.mesh_forget(&ns, &name).await?
        }
        MeshCmd::Status => client.mesh_status().await?,
    };
    match out {
        Output::Json => crate::print_json(&status),
        Output::Table => crate::emit(&render(&status)),
    }
}

async fn toggle(client: &Client, t: Target, enabled: bool) -> Result<MeshStatus> {
    if let (Some(pod), Some(cgroup)) = (&t.pod, &t.cgroup) {
        let (ns, name) = parse_pod_ref(pod).map_err(anyhow::Error::msg).context("--pod")?;
        let reg = PodRegistration {
            cgroup: cgroup.clone(),
            ips: t.ips.clone(),
            annotations: parse_annotations(&t.annotations)?,
            enabled: Some(enabled),
        };
        client.mesh_register(&ns, &name, &reg).await?;
        return Ok(client.mesh_status().await?);
    }
    let req = ToggleRequest { namespace: t.namespace, pod: t.pod };
    Ok(client.mesh_toggle(&req, enabled).await?)
}

fn parse_annotations(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in list {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--annotation {a:?}: expected KEY=VALUE");
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn render(st: &MeshStatus) -> String {
    let mut text = format!(
        "Mode:        {} (outbound {}, inbound {}, proxy uid {})\nNamespaces:  {}\n\n",
        st.mode,
        st.outbound_port,
        st.inbound_port,
        st.proxy_uid,
        if st.namespaces.is_empty() { "-".to_string() } else { st.namespaces.join(", ") }
    );
    let rows: Vec<Vec<String>> = st
        .pods
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.namespace, p.name),
                if p.accelerated { "yes".into() } else { "no".into() },
                if p.bypass { "sockmap".into() } else { "capture".into() },
                p.ips.join(","),
                p.cgroup_id.to_string(),
                excl(&p.exclude_outbound_ports, &p.exclude_outbound_cidrs),
            ]
        })
        .collect();
    text.push_str(&table::render(&["POD", "ACCELERATED", "PATH", "IPS", "CGROUP ID", "EXCLUDED OUT"], &rows));
    let c = &st.counters;
    text.push_str(&format!(
        "\nCounters: captured outbound {}, inbound {}, excluded {}, no sidecar listener {}, SO_ORIGINAL_DST answered {}\n\
         \x20         sockets bypassed {} (sending {}, apps sending {}, apps on plain writes {}, insert failures {}), messages redirected {} ({} bytes), passed {}, streams sent through the stack {}\n",
        c.captured_outbound,
        c.captured_inbound,
        c.excluded,
        c.no_listener,
        c.original_dst_answered,
        c.sockets_bypassed,
        c.sockets_sending,
        c.app_sockets_sending,
        c.app_sockets_plain,
        c.sockhash_insert_failures,
        c.messages_redirected,
        c.bytes_redirected,
        c.messages_passed,
        c.streams_to_stack
    ));
    text
}

fn excl(ports: &[u16], cidrs: &[String]) -> String {
    let mut parts: Vec<String> = ports.iter().map(ToString::to_string).collect();
    parts.extend(cidrs.iter().cloned());
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}
