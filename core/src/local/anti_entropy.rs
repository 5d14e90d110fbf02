//! Anti-entropy: the agent keeps the catalog in step with its local state, as Consul's
//! agent does.
//!
//! - On every local change, a *partial sync* pushes what changed (the entries marked out
//!   of sync or deleted), without reading the catalog.
//! - Every [`FULL_SYNC_INTERVAL`] (scaled up for large clusters, plus a random stagger of
//!   up to the same again, so agents do not sync in step), a *full sync* reads this node's
//!   slice of the catalog, marks every entry against it, and pushes the difference: what
//!   the catalog lost is registered again and what this agent no longer has is
//!   deregistered. A failed sync is retried after [`RETRY_INTERVAL`] (plus stagger).
//!
//! Writes go out in rounds of at most [`SYNC_OPS_PER_ROUND`], at most [`SYNC_IN_FLIGHT`] at
//! a time. Generic over openraft's runtime (time, sleep) and a [`CatalogPort`] (how this
//! agent reads and writes the catalog: its own store on a server, forwarded to a server on
//! a client agent), so the simulator runs the same loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use openraft::rt::watch::Watch;
use openraft::rt::watch::WatchReceiver;
use openraft::rt::watch::WatchSender;
use openraft::rt::AsyncRuntime;
use openraft::rt::Select2;
use rand_chacha::rand_core::RngCore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::LocalState;
use super::RemoteNode;
use crate::catalog::CatalogOp;
use crate::catalog::NodeInfo;

/// Catalog writes in one round of a sync.
pub const SYNC_OPS_PER_ROUND: usize = 128;
/// Catalog writes in flight at once.
pub const SYNC_IN_FLIGHT: usize = 8;
/// Rounds one sync makes at most (enough for a full agent; a state changing faster than
/// it syncs is left to the next sync).
const SYNC_ROUNDS_MAX: usize = 2 * super::SERVICES_MAX / SYNC_OPS_PER_ROUND + 8;
/// Consul's interval between full syncs, for a cluster of up to [`SCALE_THRESHOLD`] nodes.
pub const FULL_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Consul's wait before retrying a failed sync.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// Cluster size beyond which the full-sync interval grows (Consul's).
const SCALE_THRESHOLD: usize = 128;

/// How much longer than [`FULL_SYNC_INTERVAL`] a cluster of `nodes` waits between full
/// syncs: 1 up to 128 nodes, then one more for every doubling (Consul's `aeScale`).
pub fn scale_factor(nodes: usize) -> u32 {
    if nodes <= SCALE_THRESHOLD {
        return 1;
    }
    let doublings = (nodes as f64).log2() - (SCALE_THRESHOLD as f64).log2();
    doublings.ceil() as u32 + 1
}

/// Why a sync did not finish; it is tried again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The catalog could not be reached (no leader, no server).
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    /// The catalog refused a write (its text says why).
    #[error("catalog refused a write: {0}")]
    Refused(String),
}

/// How the agent reads and writes the catalog.
pub trait CatalogPort: Send + Sync + 'static {
    /// What the catalog holds for node `name`.
    fn node_slice(&self, name: &str) -> impl Future<Output = Result<RemoteNode, SyncError>> + Send;
    /// Apply one catalog write.
    fn apply(&self, op: CatalogOp) -> impl Future<Output = Result<(), SyncError>> + Send;
    /// The number of nodes in the cluster (the LAN pool), to scale the full-sync interval.
    fn cluster_size(&self) -> usize {
        1
    }
}

type Sender<R> = <<R as AsyncRuntime>::Watch as Watch>::Sender<u64>;
type Receiver<R> = <<R as AsyncRuntime>::Watch as Watch>::Receiver<u64>;

/// The local state with its change signal: every change that moves the state's version is
/// announced to the syncer and to blocking readers.
pub struct LocalAgent<R: AsyncRuntime> {
    state: Mutex<LocalState>,
    tx: Sender<R>,
    rx: Receiver<R>,
}

impl<R: AsyncRuntime> LocalAgent<R> {
    pub fn new(node: NodeInfo) -> LocalAgent<R> {
        let state = LocalState::new(node);
        let (tx, rx) = R::Watch::channel(state.version());
        LocalAgent {
            state: Mutex::new(state),
            tx,
            rx,
        }
    }

    /// Read the state (under its lock; keep `f` short).
    pub fn read<T>(&self, f: impl FnOnce(&LocalState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Change the state, and announce the change if it made one.
    pub fn change<T>(&self, f: impl FnOnce(&mut LocalState) -> T) -> T {
        let (out, version) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut s);
            (out, s.version())
        };
        self.tx.send_if_greater(version);
        out
    }

    /// A receiver of the state's version, woken by every change.
    pub fn subscribe(&self) -> Receiver<R> {
        self.rx.clone()
    }
}

fn now<R: AsyncRuntime>() -> R::Instant {
    <R::Instant as openraft::rt::Instant>::now()
}

/// How often the syncer syncs in full, and how soon it retries a failed sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTimes {
    pub full: Duration,
    pub retry: Duration,
}

impl Default for SyncTimes {
    /// Consul's: [`FULL_SYNC_INTERVAL`] and [`RETRY_INTERVAL`].
    fn default() -> Self {
        SyncTimes {
            full: FULL_SYNC_INTERVAL,
            retry: RETRY_INTERVAL,
        }
    }
}

/// The syncer of one agent.
pub struct AntiEntropy<R: AsyncRuntime, P> {
    agent: Arc<LocalAgent<R>>,
    port: P,
    times: SyncTimes,
    rng: Mutex<ChaCha8Rng>,
    /// Full syncs that finished, and syncs that failed (for metrics and tests).
    pub stats: Mutex<SyncStats>,
}

/// What the syncer has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub failures: u64,
    pub writes: u64,
}

impl<R: AsyncRuntime, P: CatalogPort> AntiEntropy<R, P> {
    /// A syncer; `seed` drives its stagger.
    pub fn new(agent: Arc<LocalAgent<R>>, port: P, seed: u64) -> AntiEntropy<R, P> {
        AntiEntropy {
            agent,
            port,
            times: SyncTimes::default(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            stats: Mutex::new(SyncStats::default()),
        }
    }

    /// The same syncer on other intervals (the simulator's runs are seconds long).
    pub fn with_times(mut self, times: SyncTimes) -> Self {
        self.times = times;
        self
    }

    fn stagger(&self, max: Duration) -> Duration {
        let ms = max.as_millis().max(1) as u64;
        let x = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_u64();
        Duration::from_millis(x % ms)
    }

    fn count(&self, f: impl FnOnce(&mut SyncStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Read this node's slice of the catalog, mark the local state against it, and push
    /// the difference.
    pub async fn sync_full(&self) -> Result<(), SyncError> {
        let name = self.agent.read(|s| s.node().name.clone());
        let remote = self.port.node_slice(&name).await?;
        self.agent.change(|s| s.mark_against(&remote));
        self.sync_changes().await?;
        self.count(|s| s.full_syncs += 1);
        Ok(())
    }

    /// Push what is marked out of sync or deleted, in bounded rounds. Returns the writes
    /// the catalog took.
    pub async fn sync_changes(&self) -> Result<usize, SyncError> {
        let mut done = 0;
        for _ in 0..SYNC_ROUNDS_MAX {
            let batch = self.agent.read(|s| s.pending(SYNC_OPS_PER_ROUND));
            if batch.is_empty() {
                break;
            }
            let port = &self.port;
            let results: Vec<_> = futures_util::stream::iter(batch)
                .map(|(key, op)| async move { (key, port.apply(op).await) })
                .buffer_unordered(SYNC_IN_FLIGHT)
                .collect()
                .await;
            let mut failed = None;
            for (key, r) in results {
                match r {
                    Ok(()) => {
                        self.agent.change(|s| s.confirm(&key));
                        done += 1;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            self.count(|s| s.writes += done as u64);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(done)
    }

    /// The next full sync's wait: the scaled interval plus a stagger of up to as much again.
    fn full_wait(&self) -> Duration {
        let scaled = self.times.full * scale_factor(self.port.cluster_size());
        scaled + self.stagger(scaled)
    }

    /// Run until the agent goes away: a full sync at once, then partial syncs on change and
    /// full syncs on schedule.
    pub async fn run(&self) {
        let mut changed = self.agent.subscribe();
        let mut wait = Duration::ZERO;
        let mut full = true;
        loop {
            if full {
                match self.sync_full().await {
                    Ok(()) => wait = self.full_wait(),
                    Err(e) => {
                        tracing::warn!(error = %e, "agent: syncing with the catalog failed");
                        self.count(|s| s.failures += 1);
                        wait = self.times.retry + self.stagger(self.times.retry);
                    }
                }
            }
            let mut deadline = now::<R>() + wait;
            loop {
                let woke = R::select2(changed.changed(), R::sleep_until(deadline)).await;
                match woke {
                    Select2::First(Ok(())) => {
                        self.count(|s| s.partial_syncs += 1);
                        if let Err(e) = self.sync_changes().await {
                            tracing::debug!(error = %e, "agent: a partial sync failed");
                            self.count(|s| s.failures += 1);
                            // Retried by a full sync soon, not only at the next change.
                            let retry = self.times.retry + self.stagger(self.times.retry);
                            let retry = now::<R>() + retry;
                            deadline = deadline.min(retry);
                        }
                    }
                    // The agent is gone.
                    Select2::First(Err(_)) => return,
                    Select2::Second(()) => break,
                }
            }
            full = true;
        }
    }
}
