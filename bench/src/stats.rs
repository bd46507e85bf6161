//! Latency samples and their summary (percentiles by nearest rank).

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct Latency {
    ns: Vec<u64>,
}

/// Microseconds, as reported.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn with_capacity(n: usize) -> Self {
        Self { ns: Vec::with_capacity(n) }
    }

    pub fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
    }

    pub fn summary(mut self) -> Summary {
        if self.ns.is_empty() {
            return Summary::default();
        }
        self.ns.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let sum: u128 = self.ns.iter().map(|&n| n as u128).sum();
        Summary {
            samples: self.ns.len(),
            p50_us: us(percentile(&self.ns, 50.0)),
            p99_us: us(percentile(&self.ns, 99.0)),
            mean_us: sum as f64 / self.ns.len() as f64 / 1000.0,
            min_us: us(self.ns[0]),
            max_us: us(self.ns[self.ns.len() - 1]),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty data.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latency::default();
        for v in 1..=100u64 {
            l.push_ns(v * 1000);
        }
        let s = l.summary();
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.samples, 100);
        assert_eq!(s.min_us, 1.0);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Latency::default().summary().samples, 0);
    }
}
