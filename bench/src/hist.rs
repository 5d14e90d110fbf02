//! A small log-linear latency histogram (HdrHistogram-style): values below 128 are
//! exact, larger values keep their top 7 significant bits, so every recorded value
//! is within 1/64 (~1.6%) of its bucket's bounds. Values are microseconds.

const SUB: u64 = 128; // exact region and sub-buckets per power of two (upper half used)
const HALF: u64 = SUB / 2;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    min: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros() as u64; // >= 7
    let shift = msb - 6; // v >> shift lands in [64, 128)
    let m = v >> shift;
    (SUB + (shift - 1) * HALF + (m - HALF)) as usize
}

/// Lowest and highest value that map to bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = (i - SUB) / HALF + 1;
    let m = (i - SUB) % HALF + HALF;
    (m << shift, ((m + 1) << shift) - 1)
}

impl Histogram {
    pub fn new() -> Self {
        // 64-bit values need at most SUB + 57 * HALF buckets.
        Histogram {
            counts: vec![0; (SUB + 58 * HALF) as usize],
            n: 0,
            max: 0,
            min: u64::MAX,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
        self.min = self.min.min(o.min);
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value with at least
    /// ceil(q*n) values at or below it, reported as its bucket's midpoint (clamped to
    /// the observed min/max). None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return Some((lo + (hi - lo) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_hi = None;
        for i in 0..(SUB + 40 * HALF) as usize {
            let (lo, hi) = bounds(i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            assert!(
                (hi - lo) as f64 <= lo as f64 / 64.0 + 1.0,
                "bucket {i} too wide: {lo}..{hi}"
            );
            prev_hi = Some(hi);
        }
        assert!(index(u64::MAX) < Histogram::new().counts.len());
    }

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let near = |got: u64, want: f64| (got as f64 - want).abs() <= want / 60.0;
        assert!(
            near(h.quantile(0.5).unwrap(), 5000.0),
            "{:?}",
            h.quantile(0.5)
        );
        assert!(
            near(h.quantile(0.99).unwrap(), 9900.0),
            "{:?}",
            h.quantile(0.99)
        );
        assert_eq!(h.quantile(1.0), Some(10_000));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.len(), 10_000);
    }

    #[test]
    fn small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for _ in 0..99 {
            a.record(10);
        }
        b.record(100_000);
        assert_eq!(a.quantile(0.99), Some(10));
        a.merge(&b);
        assert_eq!(a.len(), 100);
        assert_eq!(a.quantile(0.99), Some(10)); // rank 99 of 100
        let top = a.quantile(0.999).unwrap(); // rank 100: the 100 ms bucket
        assert!((98_500..=100_000).contains(&top), "{top}");
        assert_eq!(a.max(), 100_000);
        assert_eq!(Histogram::new().quantile(0.5), None);
    }
}
