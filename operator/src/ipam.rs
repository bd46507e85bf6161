//! Cluster-pool IPAM: every Node gets a pod CIDR per configured family, carved from the cluster pool and
//! recorded in the spec of the node's `AxonNode` object (created here, owned by the Node). The AxonNodes
//! are the only record: each reconcile rebuilds the pools from them, so allocations survive operator
//! restarts and leader changes, and two nodes never hold the same CIDR. A deleted Node's AxonNode is
//! deleted and its CIDR returns to the pool.

use crate::cidr::{Cidr, CidrPool, Claim};
use crate::config::IpamConfig;
use crate::crds::FIELD_MANAGER;
use crate::error::{is_status, KubeContext, OperatorError, Result};
use axon_crds::{AxonNode, AxonNodeSpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// A Node as IPAM needs it.
#[derive(Debug, Clone)]
pub struct NodeRef {
    pub name: String,
    pub uid: String,
}

/// An existing AxonNode as IPAM needs it.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub pod_cidrs: Vec<String>,
    /// Sort key giving older records priority in a conflict: creation time in RFC 3339, then name.
    pub created: String,
}

/// What one reconcile must change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Node name → its complete pod CIDR list, for nodes whose AxonNode is missing or differs.
    pub assign: BTreeMap<String, Vec<String>>,
    /// AxonNodes whose Node is gone.
    pub delete: Vec<String>,
    /// Nodes left without a CIDR of some family because the pool is full.
    pub exhausted: Vec<(String, &'static str)>,
}

fn family(c: &Cidr) -> &'static str {
    if c.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Decides allocations from the current Nodes and AxonNodes alone (no memory of earlier runs).
pub fn plan(cfg: &IpamConfig, nodes: &[NodeRef], records: &[Record]) -> Plan {
    let mut pools: [Option<CidrPool>; 2] = [cfg.ipv4.clone(), cfg.ipv6.clone()];
    let live: BTreeMap<&str, &NodeRef> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = Plan::default();
    let mut ordered: Vec<&Record> = records.iter().collect();
    ordered.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    // Existing allocations first, oldest record first, so a duplicate loses on the younger node.
    let mut kept: BTreeMap<&str, Vec<Cidr>> = BTreeMap::new();
    for r in ordered {
        if !live.contains_key(r.name.as_str()) {
            out.delete.push(r.name.clone());
            continue;
        }
        let mine = kept.entry(r.name.as_str()).or_default();
        for s in &r.pod_cidrs {
            let Ok(c) = Cidr::parse(s) else {
                warn!(node = %r.name, cidr = %s, "dropping an unparsable pod CIDR");
                continue;
            };
            if mine.iter().any(|m| m.is_ipv6() == c.is_ipv6()) {
                warn!(node = %r.name, cidr = %s, "dropping a second pod CIDR of the same family");
                continue;
            }
            match pools[c.is_ipv6() as usize].as_mut().map(|p| p.claim(&c)) {
                Some(Claim::Taken) => {
                    warn!(node = %r.name, cidr = %s, "pod CIDR already held by an older node; reallocating")
                }
                Some(Claim::Claimed) => mine.push(c),
                // Not from the pool (the pool changed, or set by hand): the node keeps it; renumbering a
                // running node would break its pods.
                Some(Claim::Foreign) | None => mine.push(c),
            }
        }
    }
    let current: BTreeMap<&str, &Vec<String>> = records.iter().map(|r| (r.name.as_str(), &r.pod_cidrs)).collect();
    for node in nodes {
        let mut cidrs = kept.remove(node.name.as_str()).unwrap_or_default();
        for pool in pools.iter_mut().flatten() {
            if cidrs.iter().any(|c| c.is_ipv6() == pool.cidr().is_ipv6()) {
                continue;
            }
            match pool.allocate() {
                Some(c) => cidrs.push(c),
                None => out.exhausted.push((node.name.clone(), family(&pool.cidr()))),
            }
        }
        cidrs.sort_by_key(|c| c.is_ipv6());
        let want: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
        if current.get(node.name.as_str()).is_none_or(|have| **have != want) {
            out.assign.insert(node.name.clone(), want);
        }
    }
    out
}

/// Watches Nodes and AxonNodes and reconciles on every change, and at least every `cfg.resync`.
pub async fn run(client: Client, cfg: IpamConfig) -> Result<()> {
    let wake = Arc::new(Notify::new());
    spawn_trigger::<Node>(Api::all(client.clone()), wake.clone());
    spawn_trigger::<AxonNode>(Api::all(client.clone()), wake.clone());
    loop {
        if let Err(e) = reconcile(&client, &cfg).await {
            warn!(error = %e, "pod CIDR reconcile failed; retrying");
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.resync) => {}
        }
        // Coalesce a burst (a node and its AxonNode appear together) into one pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_trigger<K>(api: Api<K>, wake: Arc<Notify>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .for_each(|event| {
                match event {
                    Ok(_) => wake.notify_one(),
                    Err(e) => debug!(error = %e, "watch error (retrying)"),
                }
                futures::future::ready(())
            })
            .await;
    });
}

/// One full pass: list, plan, apply.
pub async fn reconcile(client: &Client, cfg: &IpamConfig) -> Result<()> {
    let node_api: Api<Node> = Api::all(client.clone());
    let axn_api: Api<AxonNode> = Api::all(client.clone());
    let node_list = node_api.list(&ListParams::default()).await.ctx(|| "listing nodes".into())?;
    let axn_list = axn_api.list(&ListParams::default()).await.ctx(|| "listing axonnodes".into())?;
    let nodes: Vec<NodeRef> =
        node_list.items.iter().map(|n| NodeRef { name: n.name_any(), uid: n.uid().unwrap_or_default() }).collect();
    let by_name: BTreeMap<String, AxonNode> = axn_list.items.into_iter().map(|a| (a.name_any(), a)).collect();
    let records: Vec<Record> = by_name
        .values()
        .map(|a| Record {
            name: a.name_any(),
            pod_cidrs: a.spec.pod_cidrs.clone(),
            created: a.creation_timestamp().map(|t| t.0.to_string()).unwrap_or_default(),
        })
        .collect();
    let p = plan(cfg, &nodes, &records);
    for (node, fam) in &p.exhausted {
        let pool = if *fam == "IPv6" { cfg.ipv6.as_ref() } else { cfg.ipv4.as_ref() };
        let e = OperatorError::PoolExhausted {
            family: fam,
            pool: pool.map(|p| p.cidr().to_string()).unwrap_or_default(),
            mask: pool.map(|p| p.mask()).unwrap_or_default(),
            node: node.clone(),
        };
        warn!(error = %e, "cannot allocate a pod CIDR");
    }
    for name in &p.delete {
        release(&node_api, &axn_api, by_name.get(name)).await?;
    }
    let uids: BTreeMap<&str, &str> = nodes.iter().map(|n| (n.name.as_str(), n.uid.as_str())).collect();
    for (name, cidrs) in p.assign {
        let uid = uids.get(name.as_str()).copied().unwrap_or_default();
        write(&axn_api, by_name.get(&name), &name, uid, cidrs).await?;
    }
    Ok(())
}

/// Deletes the AxonNode of a Node that is gone, after checking the Node really is gone.
async fn release(node_api: &Api<Node>, axn_api: &Api<AxonNode>, record: Option<&AxonNode>) -> Result<()> {
    let Some(record) = record else { return Ok(()) };
    let name = record.name_any();
    if node_api.get_opt(&name).await.ctx(|| format!("reading node {name}"))?.is_some() {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: record.uid(), resource_version: record.resource_version() }),
        ..DeleteParams::default()
    };
    match axn_api.delete(&name, &params).await {
        Ok(_) => {
            info!(node = %name, cidrs = ?record.spec.pod_cidrs, "node deleted; released its pod CIDRs");
            Ok(())
        }
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("deleting axonnode {name}")),
    }
}

/// Creates the node's AxonNode or replaces its spec (resourceVersion-checked: a conflict waits for the
/// next pass, which sees the other writer's change).
async fn write(
    api: &Api<AxonNode>,
    existing: Option<&AxonNode>,
    name: &str,
    uid: &str,
    cidrs: Vec<String>,
) -> Result<()> {
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let result = match existing {
        Some(current) => {
            let mut updated = current.clone();
            updated.spec.pod_cidrs = cidrs.clone();
            api.replace(name, &pp, &updated).await.map(|_| ())
        }
        None => {
            let mut obj = AxonNode::new(name, AxonNodeSpec { pod_cidrs: cidrs.clone() });
            obj.metadata = ObjectMeta {
                name: Some(name.to_string()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.to_string(),
                    uid: uid.to_string(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            };
            api.create(&pp, &obj).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => {
            info!(node = %name, cidrs = ?cidrs, "pod CIDRs allocated");
            Ok(())
        }
        Err(e) if is_status(&e, 409) => {
            debug!(node = %name, "axonnode changed meanwhile; next pass retries");
            Ok(())
        }
        Err(e) => Err(e).ctx(|| format!("writing axonnode {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v4: &str, mask4: u8, v6: Option<(&str, u8)>) -> IpamConfig {
        IpamConfig {
            ipv4: Some(CidrPool::new(Cidr::parse(v4).expect("v4"), mask4).expect("pool")),
            ipv6: v6.map(|(c, m)| CidrPool::new(Cidr::parse(c).expect("v6"), m).expect("pool")),
            resync: Duration::from_secs(60),
        }
    }

    fn nodes(names: &[&str]) -> Vec<NodeRef> {
        names.iter().map(|n| NodeRef { name: n.to_string(), uid: format!("uid-{n}") }).collect()
    }

    fn rec(name: &str, created: &str, cidrs: &[&str]) -> Record {
        Record { name: name.into(), created: created.into(), pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn new_nodes_get_distinct_cidrs_of_each_family() {
        let p = plan(&cfg("10.8.0.0/16", 24, Some(("fd00::/112", 120))), &nodes(&["a", "b", "c"]), &[]);
        assert_eq!(p.assign["a"], vec!["10.8.0.0/24", "fd00::/120"]);
        assert_eq!(p.assign["b"], vec!["10.8.1.0/24", "fd00::100/120"]);
        assert_eq!(p.assign["c"], vec!["10.8.2.0/24", "fd00::200/120"]);
    }

    #[test]
    fn existing_records_are_kept_and_skipped_around() {
        let recs = [rec("b", "1", &["10.8.0.0/24"])];
        let p = plan(&cfg("10.8.0.0/16", 24, None), &nodes(&["a", "b"]), &recs);
        assert_eq!(p.assign.len(), 1, "b is already right: {p:?}");
        assert_eq!(p.assign["a"], vec!["10.8.1.0/24"]);
    }

    #[test]
    fn duplicate_goes_to_the_older_record() {
        let recs = [rec("young", "2", &["10.8.0.0/24"]), rec("old", "1", &["10.8.0.0/24"])];
        let p = plan(&cfg("10.8.0.0/16", 24, None), &nodes(&["old", "young"]), &recs);
        assert!(!p.assign.contains_key("old"));
        assert_eq!(p.assign["young"], vec!["10.8.1.0/24"]);
    }

    #[test]
    fn records_of_deleted_nodes_are_released() {
        let recs = [rec("gone", "1", &["10.8.0.0/24"]), rec("a", "2", &["10.8.1.0/24"])];
        let p = plan(&cfg("10.8.0.0/16", 24, None), &nodes(&["a", "new"]), &recs);
        assert_eq!(p.delete, vec!["gone".to_string()]);
        assert_eq!(p.assign["new"], vec!["10.8.0.0/24"], "the released CIDR is free again");
    }

    #[test]
    fn exhausted_pool_is_reported_not_duplicated() {
        let p = plan(&cfg("10.8.0.0/24", 25, None), &nodes(&["a", "b", "c"]), &[]);
        assert_eq!(p.assign["a"], vec!["10.8.0.0/25"]);
        assert_eq!(p.assign["b"], vec!["10.8.0.128/25"]);
        assert_eq!(p.assign["c"], Vec::<String>::new());
        assert_eq!(p.exhausted, vec![("c".to_string(), "IPv4")]);
    }
}
