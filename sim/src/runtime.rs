//! openraft's `AsyncRuntime` over madsim: simulated tasks, time and randomness.
//!
//! openraft (built without its tokio feature) reaches the runtime only through this
//! trait, so a whole Raft node runs inside madsim's deterministic executor. mpsc, oneshot
//! and mutex reuse tokio's `sync` types, which need no tokio runtime and draw no random
//! numbers; the watch channel is our own, because tokio's picks wake slots with a
//! thread-local RNG that madsim does not control.

use std::future::Future;
use std::io;
use std::ops::Add;
use std::ops::AddAssign;
use std::ops::Sub;
use std::ops::SubAssign;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use openraft_rt::AsyncRuntime;
use openraft_rt::OptionalSend;
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use crate::watch::SimWatch;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MadsimRuntime;

/// Simulated time as one server's clock reads it (madsim intercepts the clock inside the
/// simulation). Each server's clock may run fast or slow ([`set_drift`]): everything that
/// openraft and the core's cluster engine time (elections, heartbeats, leases, deadlines,
/// retries) runs on it, while the network and the disk keep the simulation's true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimInstant(madsim::time::Instant);

/// Clock rates by madsim node (1.0 where none is set), and the instant all clocks agreed.
#[derive(Default)]
struct Clocks {
    epoch: Option<madsim::time::Instant>,
    rates: std::collections::HashMap<madsim::task::NodeId, f64>,
}

thread_local! {
    static CLOCKS: std::cell::RefCell<Clocks> = std::cell::RefCell::default();
}

/// Forget every drift (call at the start of each seed, inside its runtime).
pub fn reset_drifts() {
    CLOCKS.with(|c| {
        *c.borrow_mut() = Clocks {
            epoch: Some(madsim::time::Instant::now()),
            rates: Default::default(),
        }
    });
}

/// `node`'s clock runs at `rate` times true time from now on (1.1: 10% fast).
pub fn set_drift(node: madsim::task::NodeId, rate: f64) {
    CLOCKS.with(|c| c.borrow_mut().rates.insert(node, rate));
}

/// The current node's clock rate and the epoch it is measured from.
fn drift() -> Option<(madsim::time::Instant, f64)> {
    CLOCKS.with(|c| {
        let c = c.borrow();
        let rate = *c.rates.get(&madsim::plugin::node())?;
        Some((c.epoch?, rate))
    })
}

/// True time to this node's clock.
fn to_local(t: madsim::time::Instant) -> madsim::time::Instant {
    match drift() {
        Some((epoch, rate)) => epoch + t.saturating_duration_since(epoch).mul_f64(rate),
        None => t,
    }
}

/// This node's clock reading to true time.
fn to_true(t: madsim::time::Instant) -> madsim::time::Instant {
    match drift() {
        Some((epoch, rate)) => epoch + t.saturating_duration_since(epoch).div_f64(rate),
        None => t,
    }
}

/// A span of this node's clock in true time.
fn true_span(d: Duration) -> Duration {
    match drift() {
        Some((_, rate)) => d.div_f64(rate),
        None => d,
    }
}

impl Add<Duration> for SimInstant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        SimInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for SimInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for SimInstant {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        // Simulated time starts near zero: never underflow.
        SimInstant(self.0.checked_sub(d).unwrap_or(self.0))
    }
}

impl Sub<SimInstant> for SimInstant {
    type Output = Duration;
    fn sub(self, other: SimInstant) -> Duration {
        self.0.saturating_duration_since(other.0)
    }
}

impl SubAssign<Duration> for SimInstant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl openraft_rt::Instant for SimInstant {
    fn now() -> Self {
        SimInstant(to_local(madsim::time::Instant::now()))
    }
}

/// A timeout future with a name (madsim's own is unnameable): polls the inner future
/// first, then the timer.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<madsim::time::Sleep>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = SimInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(true_span(duration))
    }

    fn sleep_until(deadline: SimInstant) -> Self::Sleep {
        madsim::time::sleep_until(to_true(deadline.0))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep(true_span(duration))),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: SimInstant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep_until(to_true(deadline.0))),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(madsim::rand::random::<u64>())
    }

    type Mpsc = openraft_rt_tokio::TokioMpsc;
    type Watch = SimWatch;
    type Oneshot = openraft_rt_tokio::TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = openraft_rt_tokio::TokioMutex<T>;

    fn new(_threads: usize) -> Self {
        MadsimRuntime
    }

    fn block_on<F, T>(&mut self, _future: F) -> T
    where
        F: Future<Output = T>,
    {
        panic!("the simulated runtime is entered through madsim::runtime::Runtime::block_on")
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // madsim refuses OS threads: run it inline, deterministically.
        let out = f();
        async move { Ok(out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft_rt::Instant as _;

    /// A server's clock set 10% fast: its 1 s sleeps last 1/1.1 s of true time, and its
    /// clock reads 1.1 s after 1 s of true time. Other nodes keep true time.
    #[madsim::test]
    async fn a_drifting_clock_runs_its_own_rate_on_its_node_only() {
        reset_drifts();
        let handle = madsim::runtime::Handle::current();
        let node = handle.create_node().name("fast").build();
        set_drift(node.id(), 1.1);
        let (slept, read) = node
            .spawn(async {
                let t0 = madsim::time::Instant::now();
                MadsimRuntime::sleep(Duration::from_secs(1)).await;
                let slept = t0.elapsed();
                let local = SimInstant::now();
                madsim::time::sleep(Duration::from_secs(1)).await;
                (slept, SimInstant::now() - local)
            })
            .await
            .unwrap();
        assert_eq!(slept.as_millis(), 909, "true time slept");
        assert_eq!(read.as_millis(), 1_100, "what the fast clock read over 1 s");
        let t0 = SimInstant::now();
        MadsimRuntime::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            (SimInstant::now() - t0).as_millis(),
            1_000,
            "this node's clock is true"
        );
    }
}
