//! Axon's Kubernetes custom resources, defined once for the agent, the operator and the Helm chart: the
//! types here are the schema; `crds/` in the chart is generated from them (a test keeps the two in sync).
//! Also the well-known label and annotation keys Axon reads on Kubernetes objects.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of every Axon resource.
pub const GROUP: &str = "axon.io";

/// A security identity: a cluster-wide numeric id for one set of security-relevant labels (namespace + pod
/// labels). The object's name is the id in decimal, so creating it claims the id atomically.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "axon.io", version = "v1alpha1", kind = "AxonIdentity", plural = "axonidentities")]
#[kube(shortname = "axid")]
#[serde(rename_all = "camelCase")]
pub struct AxonIdentitySpec {
    /// The label set, keys prefixed by their source (`k8s:app=web`, `k8s:io.kubernetes.pod.namespace=prod`).
    pub security_labels: BTreeMap<String, String>,
}

/// One node as Axon's operator sees it: the pod CIDRs allocated to it (cluster-pool IPAM).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "axon.io", version = "v1alpha1", kind = "AxonNode", plural = "axonnodes")]
#[kube(status = "AxonNodeStatus", shortname = "axn")]
#[serde(rename_all = "camelCase")]
pub struct AxonNodeSpec {
    /// Pod CIDRs the operator allocated to this node (one per IP family at most).
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AxonNodeStatus {
    /// The agent's view: the addresses it serves NodePorts on.
    #[serde(default)]
    pub addresses: Vec<String>,
}

pub mod labels;

/// Labels and annotations Axon reads.
pub mod keys {
    /// kube-proxy's: a Service with this label is served only by the proxy it names.
    pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
    /// Headless services carry it too, but `clusterIP: None` is the check; this one marks endpoints'
    /// owner service on EndpointSlices.
    pub const ENDPOINTSLICE_SERVICE_NAME: &str = "kubernetes.io/service-name";
    /// Namespace or pod label turning sidecar acceleration on (`enabled`) or off (`disabled`).
    pub const MESH_ACCELERATION: &str = "axon.io/mesh-acceleration";
    /// AxonIdentity annotation: `pending` (created, not yet usable), `confirmed` (the label set's one
    /// identity); absent means confirmed. Only confirmed identities are used; see the agent's
    /// `identity::crd` for the protocol. A garbage collector may delete pending objects older than a minute.
    pub const IDENTITY_STATE: &str = "axon.io/identity-state";
    /// AxonIdentity label: a digest of the label set, so a list can select one label set's objects.
    pub const IDENTITY_LABELS_DIGEST: &str = "axon.io/identity-labels";
    /// AxonIdentity annotation: the node that created it.
    pub const IDENTITY_OWNER: &str = "axon.io/identity-owner";
}

/// Every CRD Axon installs, as the objects the operator applies.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![AxonIdentity::crd(), AxonNode::crd()]
}

/// The CRDs as one multi-document YAML stream (what the chart's `crds/` directory holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
