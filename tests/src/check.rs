//! Small helpers the integration tests share: building service specs and
//! judging what the client saw, with failure messages that show every attempt.

use crate::probe::Attempt;
use axon_api::{Backend, L4Addr, Protocol, ServiceSpec, ServiceType};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it returns Some; fails the test naming
/// `what` once `limit` has passed.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A ClusterIP spec for `frontend` with `backends`.
pub fn spec(name: &str, frontend: SocketAddr, protocol: Protocol, backends: &[SocketAddr]) -> ServiceSpec {
    ServiceSpec {
        id: None,
        name: Some(name.to_string()),
        frontend: L4Addr::new(frontend.ip(), frontend.port(), protocol),
        backends: backends.iter().map(|b| Backend::new(b.ip(), b.port())).collect(),
        svc_type: ServiceType::ClusterIP,
        options: Default::default(),
    }
}

/// How many answers each backend gave.
pub fn answers(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.ok) {
        if let Some(name) = &a.answer {
            *out.entry(name.clone()).or_default() += 1;
        }
    }
    out
}

/// Renders attempts one per line for a panic message.
pub fn show(attempts: &[Attempt]) -> String {
    attempts.iter().map(|a| serde_json::to_string(a).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Panics unless every attempt succeeded.
pub fn assert_all_ok(attempts: &[Attempt], what: &str) {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty() && !attempts.is_empty(),
        "{what}: {} of {} attempts failed:\n{}",
        failed.len(),
        attempts.len(),
        show(attempts)
    );
}

/// Panics unless every attempt succeeded and the answers are exactly `expected` (each at least once).
pub fn assert_spread(attempts: &[Attempt], expected: &[&str], what: &str) {
    assert_all_ok(attempts, what);
    let seen: BTreeSet<String> = answers(attempts).into_keys().collect();
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, want, "{what}: backends that answered (counts {:?})", answers(attempts));
}

/// Panics unless every attempt's field (picked by `get`) equals `want`.
pub fn assert_each(attempts: &[Attempt], what: &str, get: impl Fn(&Attempt) -> Option<&String>, want: &str) {
    for a in attempts {
        assert_eq!(get(a).map(String::as_str), Some(want), "{what}: attempt {}:\n{}", a.seq, show(attempts));
    }
}
