//! The operator's life: connect, serve health, wait for leadership, then run the controllers while the
//! lease is renewed. Losing the lease stops every controller and ends the process with an error (the
//! Deployment restarts it as a fresh candidate), so a replica that lost leadership never acts again.

use crate::config::Config;
use crate::error::{OperatorError, Result};
use crate::leader::LeaderElector;
use crate::{crds, health, identity_gc, ipam};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::{error, info};

/// A client from `--kubeconfig`, or from the pod's ServiceAccount when none is given.
pub async fn client(config: &Config) -> Result<Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| OperatorError::Client(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| OperatorError::Client(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::incluster().map_err(|e| OperatorError::Client(format!("in-cluster config: {e}")))?,
    };
    Client::try_from(kube_config).map_err(|e| OperatorError::Client(e.to_string()))
}

/// Runs until a shutdown signal (Ok, lease released) or lost leadership (Err).
pub async fn run(config: Config) -> Result<()> {
    let client = client(&config).await?;
    let leading = Arc::new(AtomicBool::new(false));
    health::serve(config.health_addr, leading.clone()).await?;
    let mut elector = LeaderElector::new(client.clone(), config.lease.clone());
    tokio::select! {
        r = elector.acquire() => r?,
        _ = shutdown_signal() => {
            info!("shutting down before becoming leader");
            return Ok(());
        }
    }
    leading.store(true, Ordering::Relaxed);
    let mut controllers = JoinSet::new();
    let outcome = tokio::select! {
        e = elector.keep_renewing() => Err(e),
        r = lead(&client, &config, &mut controllers) => r,
        _ = shutdown_signal() => Ok(()),
    };
    // Stop acting before anything else: after this no controller of this replica writes.
    controllers.shutdown().await;
    leading.store(false, Ordering::Relaxed);
    match &outcome {
        Ok(()) => {
            info!("shutting down; giving up the lease");
            if let Err(e) = elector.release().await {
                error!(error = %e, "could not release the lease; it expires by itself");
            }
        }
        Err(e) => error!(error = %e, "stopping"),
    }
    outcome
}

/// What the leader does: CRDs first, then the controllers, until one of them fails.
async fn lead(client: &Client, config: &Config, controllers: &mut JoinSet<Result<()>>) -> Result<()> {
    if config.install_crds {
        crds::install(client).await?;
    }
    controllers.spawn(ipam::run(client.clone(), config.ipam.clone()));
    if let Some(gc) = config.identity_gc.clone() {
        controllers.spawn(identity_gc::run(client.clone(), gc));
    } else {
        info!("identity allocation mode kvstore: identities expire in etcd; no garbage collection here");
    }
    match controllers.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(join)) => Err(OperatorError::Client(format!("a controller task died: {join}"))),
        Some(Ok(Ok(()))) | None => Ok(()),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
