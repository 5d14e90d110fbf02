//! What a server counts about its Raft node for `/v1/agent/metrics`: write commit latency
//! (a fixed-bucket histogram), leader changes, elections won, and when the leader was last
//! heard from (`X-Consul-LastContact`).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use crate::metrics::Metric;

/// Upper bounds (ms) of the commit-time buckets; one more bucket holds the rest.
const BUCKETS_MS: [u64; 13] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000,
];

/// A latency histogram: fixed buckets, a count and a sum, all lock-free.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ms = d.as_micros().div_ceil(1_000) as u64;
        let i = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Prometheus-style cumulative buckets (`le` in ms), the count and the sum (µs).
    pub fn metrics(
        &self,
        bucket: &'static str,
        count: &'static str,
        sum: &'static str,
    ) -> Vec<Metric> {
        let mut out = Vec::with_capacity(BUCKETS_MS.len() + 3);
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BUCKETS_MS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out.push((bucket, vec![("le", le)], cumulative));
        }
        out.push((count, vec![], self.count.load(Ordering::Relaxed)));
        out.push((sum, vec![], self.sum_us.load(Ordering::Relaxed)));
        out
    }
}

#[derive(Default)]
pub struct RaftStats {
    /// Writes this server proposed, from proposal to applied outcome (forwarding included
    /// for writes a follower received).
    pub commit: Histogram,
    /// Times this server saw the leader change to a known leader.
    pub leader_changes: AtomicU64,
    /// Times this server became leader.
    pub became_leader: AtomicU64,
    /// When a leader last replicated to this server.
    last_contact: Mutex<Option<Instant>>,
}

impl RaftStats {
    pub fn contact(&self) {
        *self
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Milliseconds since the leader last replicated to this server (0 on the leader);
    /// `u64::MAX >> 1` if it never has.
    pub fn last_contact_ms(&self, is_leader: bool) -> u64 {
        if is_leader {
            return 0;
        }
        self.last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(u64::MAX >> 1, |t| t.elapsed().as_millis() as u64)
    }

    pub fn metrics(&self, is_leader: bool) -> Vec<Metric> {
        let mut out = self.commit.metrics(
            "raft.commit_time_ms_bucket",
            "raft.commit_time_ms_count",
            "raft.commit_time_us_sum",
        );
        out.push((
            "raft.leader_changes",
            vec![],
            self.leader_changes.load(Ordering::Relaxed),
        ));
        out.push((
            "raft.state.leader",
            vec![],
            self.became_leader.load(Ordering::Relaxed),
        ));
        out.push(("raft.is_leader", vec![], is_leader as u64));
        if !is_leader {
            out.push((
                "raft.leader.last_contact_ms",
                vec![],
                self.last_contact_ms(false),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for ms in [0, 1, 3, 3, 40, 20_000] {
            h.record(Duration::from_millis(ms));
        }
        let m = h.metrics("t_bucket", "t_count", "t_sum");
        let le = |b: &str| {
            m.iter()
                .find(|(n, l, _)| *n == "t_bucket" && l[0].1 == b)
                .unwrap()
                .2
        };
        assert_eq!(
            (le("1"), le("2"), le("5"), le("50"), le("10000"), le("+Inf")),
            (2, 2, 4, 5, 5, 6)
        );
        assert_eq!(m.iter().find(|(n, ..)| *n == "t_count").unwrap().2, 6);
        assert_eq!(
            m.iter().find(|(n, ..)| *n == "t_sum").unwrap().2,
            20_047_000
        );
    }
}
