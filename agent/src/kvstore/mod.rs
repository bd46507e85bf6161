//! The agent's etcd client (`--kvstore-endpoints`): bounded-time reads and
//! writes, atomic create-if-absent transactions, and this node's lease — the
//! keys put under it vanish when the node stops renewing it (it died, or lost
//! etcd for longer than the TTL). The identity allocator's kvstore backend is
//! built on it.
//!
//! Every call is bounded by the request timeout, so a dead etcd makes calls
//! fail fast instead of hanging the caller; the client reconnects by itself
//! when members come back. With three endpoints, calls are balanced over the
//! members that answer, so losing one member is invisible.

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("kvstore {endpoints}: {message}")]
    Unavailable { endpoints: String, message: String },
    #[error("kvstore: key {key}: {message}")]
    Data { key: String, message: String },
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct KvConfig {
    pub endpoints: Vec<String>,
    /// TTL of this node's lease: how long its leased keys outlive it.
    pub lease_ttl: Duration,
    /// Upper bound of one request.
    pub request_timeout: Duration,
}

/// What a create-if-absent transaction found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Every key was absent and is now written.
    Created,
    /// At least one key existed; nothing was written. The current values of
    /// the keys, in the order given (`None`: absent).
    Exists(Vec<Option<Vec<u8>>>),
}

/// One key of a create-if-absent transaction.
pub struct NewKey {
    pub key: String,
    pub value: Vec<u8>,
    /// Put under this node's lease (expires with the node).
    pub leased: bool,
}

#[derive(Clone)]
pub struct KvStore {
    client: Client,
    config: KvConfig,
    lease: Arc<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// The current lease and when it was last known alive.
    current: Mutex<Option<(i64, Instant)>>,
    /// Bumped on every new lease: holders of leased keys re-put them.
    epoch: AtomicU64,
}

impl KvStore {
    /// Creates the client; connections are made lazily, so this succeeds with
    /// etcd down (calls fail until it is back).
    pub async fn connect(config: KvConfig) -> Result<Self, KvError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(2), config.request_timeout);
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(|e| unavailable(&config, &e))?;
        Ok(Self { client, config, lease: Arc::new(LeaseState::default()) })
    }

    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    pub fn endpoints(&self) -> &[String] {
        &self.config.endpoints
    }

    /// Runs one request, bounded by the request timeout. A member that is
    /// down refuses connections: the request is sent again (the balancer
    /// picks among the members) until one answers or the time is up. Every
    /// request here is safe to repeat (puts and deletes are idempotent, a
    /// repeated create-if-absent finds its own keys).
    async fn bounded<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, KvError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(left, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(unavailable(
                        &self.config,
                        &format!("{what}: no answer within {:?}", self.config.request_timeout),
                    ))
                }
            };
            if !retryable(&err) || Instant::now() + RETRY_PAUSE >= deadline {
                return Err(unavailable(&self.config, &format!("{what}: {err}")));
            }
            debug!(what, error = %err, "kvstore request failed; trying again");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let resp = self.bounded("get", |mut c| async move { c.get(key, None).await }).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every (key, value) under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let resp = self
            .bounded("list", |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().map_err(|e| KvError::Data {
                    key: String::from_utf8_lossy(kv.key()).into(),
                    message: e.to_string(),
                })?;
                Ok((key.to_string(), kv.value().to_vec()))
            })
            .collect()
    }

    /// Writes `checked` and `also` in one transaction if, and only if, none
    /// of `checked` exists; `also` is written unconditionally with them.
    pub async fn create_all(&self, checked: &[NewKey], also: &[NewKey]) -> Result<CreateOutcome, KvError> {
        let all = || checked.iter().chain(also);
        let lease = if all().any(|k| k.leased) { Some(self.lease_id().await?) } else { None };
        let compares: Vec<Compare> =
            checked.iter().map(|k| Compare::create_revision(k.key.as_str(), CompareOp::Equal, 0)).collect();
        let puts: Vec<TxnOp> = all()
            .map(|k| {
                let options = match (k.leased, lease) {
                    (true, Some(id)) => Some(PutOptions::new().with_lease(id)),
                    _ => None,
                };
                TxnOp::put(k.key.as_str(), k.value.clone(), options)
            })
            .collect();
        let gets: Vec<TxnOp> = checked.iter().map(|k| TxnOp::get(k.key.as_str(), None)).collect();
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
        let resp = match self
            .bounded("transaction", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
        {
            Err(e) if e.to_string().contains("lease not found") => {
                // etcd expired the lease before this node noticed; the caller retries.
                if let Some(id) = lease {
                    self.drop_lease(id);
                }
                return Err(e);
            }
            other => other?,
        };
        if resp.succeeded() {
            return Ok(CreateOutcome::Created);
        }
        let values = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .collect();
        Ok(CreateOutcome::Exists(values))
    }

    /// Puts `key` under this node's lease.
    pub async fn put_leased(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        for attempt in 0..2 {
            let lease = self.lease_id().await?;
            let put = |mut c: Client| async move {
                c.put(key, value.to_vec(), Some(PutOptions::new().with_lease(lease))).await
            };
            match self.bounded("put", put).await {
                Ok(_) => return Ok(()),
                // etcd expired the lease before this node noticed: grant a new one.
                Err(e) if attempt == 0 && e.to_string().contains("lease not found") => self.drop_lease(lease),
                Err(e) => return Err(e),
            }
        }
        Err(unavailable(&self.config, &"put: the lease keeps expiring"))
    }

    /// Puts `key` under this node's lease if `guard` still holds `expected`;
    /// false (nothing written) otherwise.
    pub async fn put_leased_if(&self, key: &str, value: &[u8], guard: &str, expected: &[u8]) -> Result<bool, KvError> {
        let lease = self.lease_id().await?;
        let txn = Txn::new().when([Compare::value(guard, CompareOp::Equal, expected.to_vec())]).and_then([TxnOp::put(
            key,
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let resp = self
            .bounded("conditional put", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        match resp {
            Ok(r) => Ok(r.succeeded()),
            Err(e) => {
                if e.to_string().contains("lease not found") {
                    self.drop_lease(lease);
                }
                Err(e)
            }
        }
    }

    /// Deletes `keys` in one transaction if no key under `empty_prefix`
    /// exists; false (nothing deleted) otherwise.
    pub async fn delete_if_none(&self, keys: &[String], empty_prefix: &str) -> Result<bool, KvError> {
        let txn = Txn::new()
            .when([Compare::version(empty_prefix, CompareOp::Equal, 0).with_prefix()])
            .and_then(keys.iter().map(|k| TxnOp::delete(k.as_str(), None)).collect::<Vec<_>>());
        let resp = self
            .bounded("conditional delete", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.bounded("delete", |mut c| async move { c.delete(key, None).await }).await?;
        Ok(())
    }

    /// The lease generation: it changes whenever the lease had to be granted
    /// anew, after which keys put under the old one are gone.
    pub fn lease_epoch(&self) -> u64 {
        self.lease.epoch.load(Ordering::SeqCst)
    }

    /// This node's lease, granted if there is none (or it may have expired).
    pub async fn lease_id(&self) -> Result<i64, KvError> {
        if let Some(id) = self.live_lease() {
            return Ok(id);
        }
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let resp = self.bounded("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?;
        let id = resp.id();
        *self.lease.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, Instant::now()));
        let epoch = self.lease.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        info!(lease = id, ttl, epoch, "kvstore lease granted");
        Ok(id)
    }

    /// The current lease if it was renewed within its TTL.
    fn live_lease(&self) -> Option<i64> {
        let current = self.lease.current.lock().unwrap_or_else(|p| p.into_inner());
        current.filter(|(_, renewed)| renewed.elapsed() < self.config.lease_ttl).map(|(id, _)| id)
    }

    /// Renews the lease every third of its TTL, forever. A lease etcd says is
    /// gone, or one not renewed within its TTL, is dropped: the next write
    /// grants a new one (and bumps the epoch).
    pub async fn keep_alive_loop(self) {
        let period = (self.config.lease_ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(period).await;
            let Some(id) = self.lease.current.lock().unwrap_or_else(|p| p.into_inner()).map(|(id, _)| id) else {
                continue;
            };
            match self.renew(id).await {
                Ok(true) => {
                    if let Some(cur) = self.lease.current.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                        if cur.0 == id {
                            cur.1 = Instant::now();
                        }
                    }
                    debug!(lease = id, "kvstore lease renewed");
                }
                Ok(false) => {
                    warn!(lease = id, "kvstore lease expired; a new one is granted on the next write");
                    self.drop_lease(id);
                }
                Err(e) => {
                    debug!(lease = id, error = %e, "kvstore lease renewal failed");
                    if self.live_lease() != Some(id) {
                        self.drop_lease(id);
                    }
                }
            }
        }
    }

    fn drop_lease(&self, id: i64) {
        let mut current = self.lease.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some_and(|(cur, _)| cur == id) {
            *current = None;
        }
    }

    /// One keep-alive round trip: `Ok(false)` when etcd no longer knows the lease.
    async fn renew(&self, id: i64) -> Result<bool, KvError> {
        let resp = self
            .bounded("lease keep-alive", |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await?;
        Ok(resp.is_some_and(|r| r.ttl() > 0))
    }
}

/// Pause between two tries of one request.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors of a member that is down or unreachable (another member may answer).
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes: 2 unknown, 4 deadline exceeded, 10 aborted, 14 unavailable.
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 2 | 4 | 10 | 14),
        _ => false,
    }
}

fn unavailable(config: &KvConfig, e: &dyn std::fmt::Display) -> KvError {
    KvError::Unavailable { endpoints: config.endpoints.join(","), message: e.to_string() }
}
