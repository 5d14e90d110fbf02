//! Fault knobs the network layer reads (madsim has no duplication knob). Thread-local:
//! each madsim runtime runs on one thread, and tests may run several at once.

use std::cell::Cell;

thread_local! {
    static DUP_RATE: Cell<f64> = const { Cell::new(0.0) };
}

/// Share of requests sent twice.
pub fn dup_rate() -> f64 {
    DUP_RATE.with(Cell::get)
}

pub fn set_dup_rate(rate: f64) {
    DUP_RATE.with(|c| c.set(rate));
}
