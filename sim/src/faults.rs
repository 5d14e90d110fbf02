//! Process-wide fault knobs the network layer reads (madsim has no duplication knob).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

static DUP_RATE_BITS: AtomicU64 = AtomicU64::new(0);

/// Share of requests sent twice.
pub fn dup_rate() -> f64 {
    f64::from_bits(DUP_RATE_BITS.load(Ordering::Relaxed))
}

pub fn set_dup_rate(rate: f64) {
    DUP_RATE_BITS.store(rate.to_bits(), Ordering::Relaxed);
}
