//! Virtual time: the state machine never reads a clock; the caller passes `now`.

use serde::{Deserialize, Serialize};

/// Milliseconds on the caller's monotonic clock (an instant), or a span of milliseconds.
///
/// The epoch is arbitrary (a shell typically uses "milliseconds since the process started");
/// only differences matter. Arithmetic saturates so a bad input can never panic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// Zero milliseconds.
    pub const ZERO: Millis = Millis(0);

    /// `n` seconds.
    pub const fn secs(n: u64) -> Millis {
        Millis(n.saturating_mul(1000))
    }

    /// `n` hours.
    pub const fn hours(n: u64) -> Millis {
        Millis(n.saturating_mul(3_600_000))
    }

    /// `self + d`, saturating.
    pub const fn plus(self, d: Millis) -> Millis {
        Millis(self.0.saturating_add(d.0))
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub const fn since(self, earlier: Millis) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }

    /// `self * k`, saturating.
    pub const fn times(self, k: u64) -> Millis {
        Millis(self.0.saturating_mul(k))
    }

    /// `self * f` for a non-negative factor, rounded down.
    pub fn scale(self, f: f64) -> Millis {
        let v = (self.0 as f64) * f.max(0.0);
        if v >= u64::MAX as f64 {
            Millis(u64::MAX)
        } else {
            Millis(v as u64)
        }
    }
}
