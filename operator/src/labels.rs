//! The security label set of a pod, as identities record it in `AxonIdentity.spec.securityLabels`: every
//! pod label under the `k8s:` source prefix, plus the pod's namespace as `k8s:io.kubernetes.pod.namespace`.
//! Labels that change with every rollout (and so would mint a new identity per ReplicaSet) are left out.

use std::collections::BTreeMap;

/// The source prefix of labels that come from Kubernetes.
pub const SOURCE_PREFIX: &str = "k8s:";
/// The key carrying the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Pod labels controllers add per revision; not security-relevant.
pub const IGNORED: &[&str] = &["pod-template-hash", "controller-revision-hash", "pod-template-generation"];

/// The identity label set of a pod in `namespace` with `labels`.
pub fn security_labels(namespace: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
        .map(|(k, v)| (format!("{SOURCE_PREFIX}{k}"), v.clone()))
        .collect();
    out.insert(format!("{SOURCE_PREFIX}{NAMESPACE_LABEL}"), namespace.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_and_prefixed_labels_without_revision_hashes() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("pod-template-hash", "5d8f")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = security_labels("prod", &labels);
        let want: BTreeMap<String, String> = [("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "prod")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
