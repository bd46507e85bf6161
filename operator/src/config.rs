//! The operator's command line: every setting is a flag (with an `AXON_OPERATOR_*` environment
//! variable for the chart), validated once at start so a bad value names its flag and nothing runs.

use crate::cidr::{Cidr, CidrPool};
use crate::error::{OperatorError, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "axon-operator", about = "Axon's cluster-wide operator")]
pub struct Flags {
    /// kubeconfig file; in-cluster credentials (the pod's ServiceAccount) when absent.
    #[arg(long, env = "AXON_OPERATOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "AXON_OPERATOR_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "axon-operator")]
    pub lease_name: String,
    /// This replica's holder identity in the Lease (the pod name in the chart); the hostname when empty.
    #[arg(long, env = "AXON_OPERATOR_ID")]
    pub id: Option<String>,
    /// How long a leader's claim lasts without renewal (seconds): the longest a dead leader blocks others.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// The leader gives up (and exits) when it could not renew for this long (seconds); < lease-duration.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline: u64,
    /// How often candidates retry and the leader renews (seconds).
    #[arg(long, default_value_t = 2)]
    pub retry_period: u64,
    /// Install or upgrade Axon's CRDs when becoming leader.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub install_crds: bool,
    /// IPv4 cluster pool pod CIDRs are carved from (empty: no IPv4 pod CIDRs).
    #[arg(long, default_value = "10.0.0.0/8")]
    pub cluster_pool_ipv4_cidr: String,
    /// Prefix length of each node's IPv4 pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub cluster_pool_ipv4_mask_size: u8,
    /// IPv6 cluster pool (empty: no IPv6 pod CIDRs).
    #[arg(long, default_value = "")]
    pub cluster_pool_ipv6_cidr: String,
    /// Prefix length of each node's IPv6 pod CIDR.
    #[arg(long, default_value_t = 120)]
    pub cluster_pool_ipv6_mask_size: u8,
    /// Full resync of nodes and pod CIDRs at least this often (seconds), besides reacting to watch events.
    #[arg(long, default_value_t = 60)]
    pub ipam_resync_interval: u64,
    /// `crd`: identities are AxonIdentity objects and this operator collects unused ones. `kvstore`:
    /// identities live in etcd and expire with their leases; no collection here.
    #[arg(long, env = "AXON_OPERATOR_IDENTITY_ALLOCATION_MODE", default_value = "crd")]
    pub identity_allocation_mode: String,
    /// How often unused identities are looked for (seconds).
    #[arg(long, default_value_t = 60)]
    pub identity_gc_interval: u64,
    /// An identity no pod has used for this long (seconds) is deleted.
    #[arg(long, default_value_t = 900)]
    pub identity_gc_grace_period: u64,
    /// Address of the HTTP health endpoint (`/healthz`).
    #[arg(long, default_value = "0.0.0.0:9234")]
    pub health_addr: String,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "AXON_OPERATOR_LOG", default_value = "info")]
    pub log_level: String,
}

/// Leader election timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub holder: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Cluster-pool IPAM settings: a pool per enabled family.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub ipv4: Option<CidrPool>,
    pub ipv6: Option<CidrPool>,
    pub resync: Duration,
}

/// Identity garbage collection settings; `None` when identities are not CRDs.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub interval: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub lease: LeaseConfig,
    pub install_crds: bool,
    pub ipam: IpamConfig,
    pub identity_gc: Option<GcConfig>,
    pub health_addr: SocketAddr,
}

fn invalid(field: &'static str, message: impl Into<String>) -> OperatorError {
    OperatorError::Config { field, message: message.into() }
}

fn pool(field: &'static str, cidr: &str, mask: u8, v6: bool) -> Result<Option<CidrPool>> {
    if cidr.trim().is_empty() {
        return Ok(None);
    }
    let parsed = Cidr::parse(cidr).map_err(|m| invalid(field, m))?;
    if parsed.is_ipv6() != v6 {
        return Err(invalid(field, format!("{cidr} is not an IPv{} prefix", if v6 { 6 } else { 4 })));
    }
    let mask_field = if v6 { "cluster-pool-ipv6-mask-size" } else { "cluster-pool-ipv4-mask-size" };
    CidrPool::new(parsed, mask).map(Some).map_err(|m| invalid(mask_field, m))
}

impl Config {
    pub fn from_flags(f: &Flags) -> Result<Config> {
        let secs = |field: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(field, "must be at least 1 second"))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        let lease_duration = secs("lease-duration", f.lease_duration)?;
        let renew_deadline = secs("renew-deadline", f.renew_deadline)?;
        let retry_period = secs("retry-period", f.retry_period)?;
        if renew_deadline >= lease_duration {
            return Err(invalid("renew-deadline", "must be shorter than --lease-duration"));
        }
        if retry_period >= renew_deadline {
            return Err(invalid("retry-period", "must be shorter than --renew-deadline"));
        }
        let holder = match f.id.clone().filter(|s| !s.trim().is_empty()) {
            Some(id) => id,
            None => hostname().ok_or_else(|| invalid("id", "empty and the hostname is unknown"))?,
        };
        if f.namespace.trim().is_empty() {
            return Err(invalid("namespace", "must not be empty"));
        }
        let ipv4 = pool("cluster-pool-ipv4-cidr", &f.cluster_pool_ipv4_cidr, f.cluster_pool_ipv4_mask_size, false)?;
        let ipv6 = pool("cluster-pool-ipv6-cidr", &f.cluster_pool_ipv6_cidr, f.cluster_pool_ipv6_mask_size, true)?;
        let identity_gc = match f.identity_allocation_mode.as_str() {
            "crd" => Some(GcConfig {
                interval: secs("identity-gc-interval", f.identity_gc_interval)?,
                grace: Duration::from_secs(f.identity_gc_grace_period),
            }),
            "kvstore" => None,
            other => return Err(invalid("identity-allocation-mode", format!("{other:?} (expected crd or kvstore)"))),
        };
        let health_addr = f
            .health_addr
            .parse()
            .map_err(|_| invalid("health-addr", format!("{:?} is not ADDRESS:PORT", f.health_addr)))?;
        Ok(Config {
            kubeconfig: f.kubeconfig.clone(),
            lease: LeaseConfig {
                namespace: f.namespace.clone(),
                name: f.lease_name.clone(),
                holder,
                lease_duration,
                renew_deadline,
                retry_period,
            },
            install_crds: f.install_crds,
            ipam: IpamConfig { ipv4, ipv6, resync: secs("ipam-resync-interval", f.ipam_resync_interval)? },
            identity_gc,
            health_addr,
        })
    }
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut all = vec!["axon-operator", "--id", "op-a"];
        all.extend_from_slice(args);
        Config::from_flags(&Flags::parse_from(all))
    }

    fn field_of(r: Result<Config>) -> &'static str {
        match r {
            Err(OperatorError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.lease.holder, "op-a");
        assert_eq!(c.ipam.ipv4.as_ref().map(|p| p.mask()), Some(24));
        assert!(c.ipam.ipv6.is_none());
        assert!(c.identity_gc.is_some());
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert_eq!(field_of(parse(&["--cluster-pool-ipv4-cidr", "10.0.0.1/8"])), "cluster-pool-ipv4-cidr");
        assert_eq!(field_of(parse(&["--cluster-pool-ipv4-cidr", "fd00::/64"])), "cluster-pool-ipv4-cidr");
        assert_eq!(field_of(parse(&["--cluster-pool-ipv4-mask-size", "4"])), "cluster-pool-ipv4-mask-size");
        assert_eq!(
            field_of(parse(&["--cluster-pool-ipv6-cidr", "fd00::/104", "--cluster-pool-ipv6-mask-size", "200"])),
            "cluster-pool-ipv6-mask-size"
        );
        assert_eq!(field_of(parse(&["--renew-deadline", "20"])), "renew-deadline");
        assert_eq!(field_of(parse(&["--identity-allocation-mode", "etcd"])), "identity-allocation-mode");
        assert_eq!(field_of(parse(&["--health-addr", "nope"])), "health-addr");
    }

    #[test]
    fn kvstore_mode_disables_identity_gc() {
        assert!(parse(&["--identity-allocation-mode", "kvstore"]).expect("kvstore").identity_gc.is_none());
    }
}
