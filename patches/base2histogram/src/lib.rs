//! Log-linear histograms of `u64` samples: values below 8 have a bucket each; above, every
//! power of two is split into 8 equal buckets, so a percentile is off by at most 12.5%.
//! 496 counters (about 4 KB) per histogram, whatever is recorded.
//!
//! The interface is the one openraft's runtime statistics call.

use std::fmt;
use std::marker::PhantomData;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

/// The smallest value that falls in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

/// A histogram; `T` is unused (kept for the interface).
pub struct Histogram<T = ()> {
    counts: Box<[u64; BUCKETS]>,
    samples: u64,
    _t: PhantomData<T>,
}

impl<T> Histogram<T> {
    pub fn new() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            samples: 0,
            _t: PhantomData,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Record `value` `n` times.
    pub fn record_n(&mut self, value: u64, n: u64) {
        self.counts[bucket_of(value)] += n;
        self.samples += n;
    }

    /// The lower bound of the bucket holding the sample at fraction `q` (0..=1) of the
    /// samples, or 0 without samples.
    fn percentile(&self, q: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let rank = ((q * self.samples as f64).ceil() as u64).clamp(1, self.samples);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.samples,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Histogram {
            counts: self.counts.clone(),
            samples: self.samples,
            _t: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.samples == other.samples && self.counts == other.counts
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Histogram{}", self.percentile_stats())
    }
}

/// Percentiles of a histogram (bucket lower bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PercentileStats {
    pub samples: u64,
    pub p0_1: u64,
    pub p1: u64,
    pub p5: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[samples: {}, P0.1: {}, P1: {}, P5: {}, P10: {}, P50: {}, P90: {}, P99: {}, P99.9: \
            {}]",
            self.samples,
            self.p0_1,
            self.p1,
            self.p5,
            self.p10,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9
        )
    }
}

/// Named histograms shown together, one text line each.
#[derive(Default)]
pub struct AsciiChart {
    series: Vec<(String, Histogram)>,
}

impl AsciiChart {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(mut self, name: impl Into<String>, h: Histogram) -> Self {
        self.series.push((name.into(), h));
        self
    }

    /// The chart as text: each series' percentiles.
    pub fn detailed(&self) -> impl fmt::Display + '_ {
        Lines(self)
    }
}

struct Lines<'a>(&'a AsciiChart);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, h) in &self.0.series {
            writeln!(f, "{name}: {}", h.percentile_stats())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut prev = 0;
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS && b >= prev, "{v} -> {b}");
            assert!(
                lower_bound(b) <= v,
                "{v}: lower bound {} too high",
                lower_bound(b)
            );
            if b + 1 < BUCKETS {
                assert!(
                    lower_bound(b + 1) > v,
                    "{v}: next bucket starts at {}",
                    lower_bound(b + 1)
                );
            }
            prev = b;
        }
    }

    #[test]
    fn percentiles_are_within_an_eighth() {
        let mut h: Histogram = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        h.record_n(1_000_000, 10);
        let s = h.percentile_stats();
        assert_eq!(s.samples, 1010);
        for (got, want) in [(s.p1, 11), (s.p50, 505), (s.p90, 909)] {
            assert!(
                got <= want && got as f64 >= want as f64 * 0.875,
                "{got} vs {want}"
            );
        }
        assert!(s.p99_9 >= 875_000 && s.p99_9 <= 1_000_000, "{}", s.p99_9);
        assert_eq!(
            Histogram::<()>::new().percentile_stats(),
            PercentileStats::default()
        );
    }
}
