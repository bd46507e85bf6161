//! The security label set of a pod, as identities record it in `AxonIdentity.spec.securityLabels`: the one
//! rule the agent allocates by and the operator's collector judges use by. The pod's namespace as
//! `k8s:io.kubernetes.pod.namespace`, its labels under the `k8s:` source prefix minus the per-replica ones, and
//! its namespace's labels under `k8s:io.axon.k8s.namespace.labels.` when the namespace is known.

use std::collections::BTreeMap;

/// The source prefix of labels that come from Kubernetes.
pub const SOURCE_PREFIX: &str = "k8s:";
/// The key carrying the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels inside a pod's label set.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.axon.k8s.namespace.labels.";
/// Pod labels that differ between replicas of one workload; not security-relevant.
pub const IGNORED: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
];
/// Kubernetes' automatic namespace label: says nothing the namespace key does not.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The identity label set of a pod in `namespace` with `labels`, its namespace carrying `namespace_labels`.
pub fn security_labels(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
        .map(|(k, v)| (format!("{SOURCE_PREFIX}{k}"), v.clone()))
        .collect();
    out.insert(format!("{SOURCE_PREFIX}{NAMESPACE_LABEL}"), namespace.to_string());
    for (k, v) in namespace_labels.into_iter().flatten() {
        if k != NAMESPACE_NAME_LABEL {
            out.insert(format!("{SOURCE_PREFIX}{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn namespace_and_pod_labels_are_prefixed_and_replica_labels_dropped() {
        let got = security_labels(
            "prod",
            &map(&[("app", "web"), ("pod-template-hash", "abc")]),
            Some(&map(&[("team", "a"), ("kubernetes.io/metadata.name", "prod")])),
        );
        let canonical: Vec<String> = got.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            canonical.join(";"),
            "k8s:app=web;k8s:io.axon.k8s.namespace.labels.team=a;k8s:io.kubernetes.pod.namespace=prod"
        );
        assert_eq!(
            security_labels("prod", &map(&[("app", "web"), ("job-name", "x")]), None),
            map(&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "prod")])
        );
    }
}
