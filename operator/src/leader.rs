//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator replicas exactly
//! one acts. Every write is a replace carrying the resourceVersion that was read, so two candidates racing
//! for an expired lease cannot both win: the apiserver rejects the second with a conflict.
//!
//! Expiry is judged on this replica's own clock: a lease is expired when its record has not changed for
//! its duration since this replica first saw that record (as client-go does), so clock skew between nodes
//! does not matter.

use crate::config::LeaseConfig;
use crate::error::{is_status, KubeContext, OperatorError, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The last lease record this replica saw and when it first saw it.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    holder: String,
    duration: Duration,
    at: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease (just acquired or renewed).
    Leading,
    /// Someone else holds a lease that has not expired, or won a race for it.
    Following(String),
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg, observed: None }
    }

    pub fn holder(&self) -> &str {
        &self.cfg.holder
    }

    /// Blocks until this replica is the leader.
    pub async fn acquire(&mut self) -> Result<()> {
        info!(lease = %self.cfg.name, namespace = %self.cfg.namespace, id = %self.cfg.holder, "waiting to become leader");
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.cfg.name, id = %self.cfg.holder, "became leader");
                    return Ok(());
                }
                Ok(Attempt::Following(holder)) => {
                    if holder != last_holder {
                        info!(leader = %holder, "another replica leads");
                        last_holder = holder;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the lease every retry period; returns (with `LostLeadership`) once a renewal has not
    /// succeeded for the renew deadline or another replica took the lease. The caller must stop acting
    /// then: the lease may be someone else's from the moment the renew deadline passes.
    pub async fn keep_renewing(&mut self) -> OperatorError {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let remaining = self.cfg.renew_deadline.saturating_sub(last_renew.elapsed());
            let attempt = tokio::time::timeout(remaining.max(Duration::from_millis(100)), self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(Attempt::Leading)) => {
                    debug!("lease renewed");
                    last_renew = Instant::now();
                }
                Ok(Ok(Attempt::Following(holder))) => {
                    warn!(leader = %holder, "another replica holds the lease");
                    return OperatorError::LostLeadership(self.cfg.name.clone());
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                Err(_) => warn!("renewing the lease timed out"),
            }
            if last_renew.elapsed() >= self.cfg.renew_deadline {
                return OperatorError::LostLeadership(self.cfg.name.clone());
            }
        }
    }

    /// Gives the lease up on a clean shutdown so a standby takes over at once instead of after expiry.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.ctx(|| self.what("reading"))? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await.ctx(|| self.what("releasing"))?;
        info!(lease = %self.cfg.name, "released the lease");
        Ok(())
    }

    fn what(&self, verb: &str) -> String {
        format!("{verb} lease {}/{}", self.cfg.namespace, self.cfg.name)
    }

    /// One read-modify-write of the lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.ctx(|| self.what("reading"))? else {
            return self.create(now).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.lease_duration);
        if self.observed.as_ref().is_none_or(|o| o.resource_version != rv) {
            self.observed =
                Some(Observed { resource_version: rv, holder: holder.clone(), duration, at: Instant::now() });
        }
        let mine = holder == self.cfg.holder;
        if !mine && !holder.is_empty() && !self.observed_expired() {
            return Ok(Attempt::Following(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.cfg.holder.clone()),
            lease_duration_seconds: Some(secs_i32(self.cfg.lease_duration)),
            acquire_time: if mine { spec.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        });
        // The resourceVersion read above rides along: a concurrent writer makes this fail with 409.
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                if !mine {
                    info!(previous = %holder, transitions = transitions + 1, "took over the lease");
                }
                self.remember(&written);
                Ok(Attempt::Leading)
            }
            Err(e) if is_status(&e, 409) => Ok(Attempt::Following(holder)),
            Err(e) => Err(e).ctx(|| self.what("updating")),
        }
    }

    async fn create(&mut self, now: MicroTime) -> Result<Attempt> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.cfg.name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.cfg.holder.clone()),
                lease_duration_seconds: Some(secs_i32(self.cfg.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(written) => {
                self.remember(&written);
                Ok(Attempt::Leading)
            }
            Err(e) if is_status(&e, 409) => Ok(Attempt::Following(String::new())),
            Err(e) => Err(e).ctx(|| self.what("creating")),
        }
    }

    fn remember(&mut self, lease: &Lease) {
        self.observed = Some(Observed {
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
            holder: self.cfg.holder.clone(),
            duration: self.cfg.lease_duration,
            at: Instant::now(),
        });
    }

    fn observed_expired(&self) -> bool {
        self.observed.as_ref().is_none_or(|o| o.holder.is_empty() || o.at.elapsed() >= o.duration)
    }
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}
