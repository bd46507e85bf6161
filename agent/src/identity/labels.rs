//! Security-relevant label sets: the label set of a pod (the rule itself is
//! `axon_crds::labels`, shared with the operator's collector), and the one
//! canonical string form every backend keys label sets by.

use std::collections::BTreeMap;

pub use axon_crds::labels::{NAMESPACE_LABEL as NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, SOURCE_PREFIX as K8S};

/// A label set with source-prefixed keys, sorted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LabelSet(pub BTreeMap<String, String>);

impl LabelSet {
    /// The identity labels of a pod: its namespace, its own labels minus the
    /// per-replica ones, and its namespace's labels (when known).
    pub fn for_pod(
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> Self {
        LabelSet(axon_crds::labels::security_labels(namespace, pod_labels, namespace_labels))
    }

    /// `k8s:a=1;k8s:b=2`: sorted, unambiguous (label keys and values cannot
    /// hold `;` or `=` in the key), and a valid etcd key part.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// The inverse of [`LabelSet::canonical`].
    pub fn parse_canonical(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(LabelSet::default());
        }
        let mut set = BTreeMap::new();
        for part in s.split(';') {
            let (k, v) = part.split_once('=')?;
            if k.is_empty() || set.insert(k.to_string(), v.to_string()).is_some() {
                return None;
            }
        }
        Some(LabelSet(set))
    }

    /// A short stable digest (FNV-1a 64, hex), for Kubernetes label values
    /// that let a list select one label set's candidates.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.canonical().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.0.get(&format!("{K8S}{NAMESPACE_KEY}")).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pod_labels_are_prefixed_and_replica_labels_dropped() {
        let set = LabelSet::for_pod(
            "prod",
            &map(&[("app", "web"), ("pod-template-hash", "abc")]),
            Some(&map(&[("team", "a"), ("kubernetes.io/metadata.name", "prod")])),
        );
        assert_eq!(
            set.canonical(),
            "k8s:app=web;k8s:io.axon.k8s.namespace.labels.team=a;k8s:io.kubernetes.pod.namespace=prod"
        );
        assert_eq!(set.namespace(), Some("prod"));
        assert_eq!(LabelSet::parse_canonical(&set.canonical()), Some(set.clone()));
        let other = LabelSet::for_pod("prod", &map(&[("app", "web"), ("pod-template-hash", "xyz")]), None);
        assert_ne!(other, set);
        assert_eq!(other, LabelSet::for_pod("prod", &map(&[("app", "web")]), None));
        assert_ne!(set.digest(), other.digest());
        assert_eq!(LabelSet::parse_canonical("a=1;a=2"), None);
    }
}
