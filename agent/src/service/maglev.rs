//! Maglev consistent hashing (Eisenbud et al., NSDI '16): each backend's
//! preference list is a permutation of the table derived from its name, and
//! backends take turns claiming their next preferred free entry. Every node
//! computes the same table from the same backend set, and removing one of N
//! backends moves little more than that backend's own 1/N of the entries.

/// Table sizes Cilium offers; any prime works.
pub const SUGGESTED_SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];

/// Kubernetes-sized default: 16381 entries keep the imbalance between
/// backends under 1% for up to ~160 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| (*d as u64) * (*d as u64) <= n as u64).all(|d| !n.is_multiple_of(d))
}

/// FNV-1a, 64-bit: stable across Rust versions and machines (the table must
/// be identical on every node), unlike `std`'s hasher.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix so nearby names (10.0.0.1, 10.0.0.2) spread.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The table of size `m` (prime) for `backends` (name, id): entry i is the
/// id of the backend flows hashing to i go to. Empty when there are no
/// backends. The result depends only on the set, not on its order.
pub fn table(backends: &[(String, u32)], m: u32) -> Vec<u32> {
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    let mut sorted: Vec<&(String, u32)> = backends.iter().collect();
    sorted.sort();
    let m64 = m as u64;
    let prefs: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(name, _)| {
            let offset = fnv1a(0x5bd1_e995, name.as_bytes()) % m64;
            let skip = fnv1a(0x1b87_3593, name.as_bytes()) % (m64.max(2) - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut entries = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m64) as usize;
            while entries[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m64) as usize;
            }
            entries[c] = sorted[i].1;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'fill;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<(String, u32)> {
        (1..=n).map(|i| (format!("10.0.0.{i}:8080/TCP"), i)).collect()
    }

    #[test]
    fn primes() {
        assert!(SUGGESTED_SIZES.iter().all(|m| is_prime(*m)));
        assert!(!is_prime(16383) && !is_prime(1) && is_prime(2));
    }

    #[test]
    fn every_entry_is_filled_evenly_and_order_does_not_matter() {
        let b = backends(7);
        let t = table(&b, 1021);
        assert_eq!(t.len(), 1021);
        for (_, id) in &b {
            let share = t.iter().filter(|e| *e == id).count();
            assert!((145..=147).contains(&share), "backend {id} owns {share} of 1021");
        }
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(table(&reversed, 1021), t);
    }

    /// The figure docs/architecture.md quotes: removing one of ten backends
    /// moves its own tenth plus a small extra share.
    #[test]
    fn removing_one_backend_of_many_moves_little_else() {
        for (n, m) in [(10u32, DEFAULT_TABLE_SIZE), (100, DEFAULT_TABLE_SIZE), (10, 1021)] {
            let before = table(&backends(n), m);
            let fewer: Vec<(String, u32)> = backends(n).into_iter().filter(|(_, id)| *id != 3).collect();
            let after = table(&fewer, m);
            let moved_others = before.iter().zip(&after).filter(|(b, a)| **b != 3 && b != a).count();
            let others = before.iter().filter(|b| **b != 3).count();
            let extra = moved_others as f64 / others as f64;
            eprintln!("maglev n={n} m={m}: {:.2}% of the remaining backends' entries moved", extra * 100.0);
            assert!(extra < 0.06, "n={n} m={m}: {:.2}% of the other backends' entries moved", extra * 100.0);
            assert!(after.iter().all(|id| *id != 3));
        }
    }
}
