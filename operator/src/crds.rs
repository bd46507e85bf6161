//! Installs or upgrades Axon's CRDs (the definitions in crate `axon-crds`) with server-side apply, then
//! waits until the apiserver serves them, so the controllers that follow can use them at once.

use crate::error::{KubeContext, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use std::time::Duration;
use tracing::{info, warn};

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "axon-operator";
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies every CRD (creating or upgrading it) and waits for each to be Established.
pub async fn install(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // force: the operator owns these definitions, including fields a Helm install set first.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in axon_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await.ctx(|| format!("applying CRD {name}"))?;
        wait_established(&api, &name).await?;
        info!(crd = %name, "CRD installed");
    }
    Ok(())
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let crd = api.get(name).await.ctx(|| format!("reading CRD {name}"))?;
        if is_established(&crd) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            // Not fatal: the controllers retry; say so instead of blocking leadership forever.
            warn!(crd = %name, "CRD not Established after {ESTABLISH_TIMEOUT:?}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}
