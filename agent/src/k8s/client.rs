//! The connection to the Kubernetes API server: a kubeconfig file when one is
//! configured (`--k8s-kubeconfig`), else the in-cluster service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted token and CA).

use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::Path;

/// Why the agent could not talk to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("k8s-kubeconfig: reading {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("in-cluster config (no --k8s-kubeconfig given): {0}")]
    InCluster(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client for the configured API server. Does not contact the server: the
/// watchers retry until it answers, so an agent can start before its apiserver.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, K8sError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |message: String| K8sError::Kubeconfig { path: path.display().to_string(), message };
            let file = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| K8sError::InCluster(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| K8sError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_flag_and_the_path() {
        let Err(e) = connect(Some(Path::new("/nonexistent/axon-kubeconfig"))).await else {
            panic!("a missing kubeconfig was accepted");
        };
        let msg = e.to_string();
        assert!(msg.starts_with("k8s-kubeconfig:") && msg.contains("/nonexistent/axon-kubeconfig"), "{msg}");
    }
}
