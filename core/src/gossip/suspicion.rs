//! Lifeguard suspicion: a timeout that starts at `max` and shrinks toward `min` as
//! independent members confirm the suspicion.
//!
//! With `c` confirmations out of `k` wanted, the timeout is
//! `max(min, max - (max - min) * ln(c + 1) / ln(k + 1))`, measured from when this node
//! started suspecting. `min = suspicion_mult * log10(max(1, n)) * probe_interval` and
//! `max = suspicion_max_timeout_mult * min` (memberlist's scaling with cluster size `n`).
//! `k = suspicion_mult - 2`, or 0 when the cluster is too small to provide that many.

use std::collections::BTreeSet;

use super::time::Millis;

/// One suspected member's timer.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspicion {
    start: Millis,
    min: Millis,
    max: Millis,
    k: u32,
    confirmers: BTreeSet<String>,
}

/// `(min, max)` suspicion timeouts for a cluster of `n` members.
pub fn suspicion_bounds(
    suspicion_mult: u32,
    max_mult: u32,
    n: usize,
    probe_interval: Millis,
) -> (Millis, Millis) {
    let scale = (n.max(1) as f64).log10().max(1.0);
    let min = probe_interval.scale(suspicion_mult as f64 * scale);
    (min, min.times(max_mult.max(1) as u64))
}

impl Suspicion {
    /// Start suspecting at `now`; `from` (the first accuser) is not counted as an
    /// independent confirmation beyond itself. `k` is the number of confirmations wanted.
    pub fn new(now: Millis, from: &str, k: u32, min: Millis, max: Millis) -> Suspicion {
        let mut confirmers = BTreeSet::new();
        confirmers.insert(from.to_owned());
        Suspicion {
            start: now,
            min,
            max: max.max(min),
            k,
            confirmers,
        }
    }

    /// Record an independent confirmation; true if `from` was new (and so worth
    /// re-broadcasting). Bounded: at most `k` confirmations are kept.
    pub fn confirm(&mut self, from: &str) -> bool {
        if self.confirmations() >= self.k || self.confirmers.contains(from) {
            return false;
        }
        self.confirmers.insert(from.to_owned());
        true
    }

    /// Independent confirmations so far (the first accuser excluded).
    pub fn confirmations(&self) -> u32 {
        (self.confirmers.len() as u32).saturating_sub(1)
    }

    /// Current timeout, from `start`.
    pub fn timeout(&self) -> Millis {
        if self.k == 0 {
            return self.min;
        }
        let c = self.confirmations() as f64;
        let frac = (c + 1.0).ln() / (self.k as f64 + 1.0).ln();
        let span = self.max.since(self.min).0 as f64;
        let t = self.max.0 as f64 - span * frac;
        Millis((t.max(self.min.0 as f64)) as u64)
    }

    /// When the member is declared failed if nobody refutes.
    pub fn deadline(&self) -> Millis {
        self.start.plus(self.timeout())
    }
}

/// Confirmations wanted for a cluster of `n` members.
pub fn confirmations_wanted(suspicion_mult: u32, n: usize) -> u32 {
    let k = suspicion_mult.saturating_sub(2);
    if (n as u64).saturating_sub(2) < k as u64 {
        0
    } else {
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_with_confirmations() {
        let (min, max) = suspicion_bounds(4, 6, 1000, Millis(1000));
        assert_eq!(min, Millis(12_000));
        assert_eq!(max, Millis(72_000));
        let mut s = Suspicion::new(Millis(0), "a", 2, min, max);
        assert_eq!(s.deadline(), Millis(72_000));
        assert!(s.confirm("b"));
        assert!(!s.confirm("b"));
        let mid = s.deadline();
        assert!(mid < Millis(72_000) && mid > Millis(12_000));
        assert!(s.confirm("c"));
        assert_eq!(s.deadline(), Millis(12_000));
        assert!(!s.confirm("d"));
    }

    #[test]
    fn small_clusters_use_min() {
        assert_eq!(confirmations_wanted(4, 3), 0);
        assert_eq!(confirmations_wanted(4, 10), 2);
        let (min, _) = suspicion_bounds(4, 6, 1, Millis(1000));
        assert_eq!(min, Millis(4000));
    }
}
