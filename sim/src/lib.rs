//! Tribune's deterministic simulator: real openraft clusters over the real core stores,
//! driven by madsim with a fault plan derived from one seed, checked for linearizability
//! and Raft's safety properties. Build and run it with `ci/sim` (it sets `--cfg madsim`).

pub mod check;
pub mod lin;
pub mod plan;

#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod gossip;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod local;
#[cfg(madsim)]
pub mod net;
#[cfg(madsim)]
pub mod runtime;
#[cfg(madsim)]
pub mod server;
#[cfg(madsim)]
mod watch;
#[cfg(madsim)]
pub mod workload;

#[cfg(madsim)]
tribune_core::declare_types!(pub SimTypes, crate::runtime::MadsimRuntime);

/// `TRIBUNE_SIM_DEBUG=1` prints faults, acknowledged writes, reads and the history of a
/// key that failed the linearizability check, to stderr.
pub fn debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TRIBUNE_SIM_DEBUG").is_some())
}

/// A deliberately wrong variant of the real code that the checks must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Any server answers linearizable reads from its local state.
    StaleRead,
    /// The leader acknowledges a write before it is committed.
    AckBeforeCommit,
    /// Log appends are acknowledged without fsync.
    SkipFsync,
    /// A write that changes nothing still bumps ModifyIndex.
    NoopBumpsIndex,
    /// Retried writes are applied again.
    NoDedup,
    /// A restarted leader takes up its leadership again without an election (openraft's
    /// default), serving reads from the commit index it recovered.
    LeaderRestore,
    /// A server answers Raft messages meant for another server id (a wiped server answers
    /// for the id it had before, with an empty log).
    IgnoreTarget,
    /// Log reads return at most a few entries without looking for holes: an apply after a
    /// commit jump skips entries.
    ShortLogReads,
    /// The leader removes voters without checking that the rest keep a working majority.
    UnguardedRemoval,
    /// Servers bootstrap without claims, each with the servers it found.
    NoClaim,
    /// An append whose fsync failed is acknowledged, and the server writes on (the disk's
    /// next sync succeeds without the lost batches).
    IgnoreSyncErrors,
    /// A write lane whose client id the dedup table evicted is kept: every later write on it
    /// is answered Expired.
    LanePoison,
    /// The dedup table ignores its eviction horizon: a retried first write of an evicted
    /// client is applied again.
    NoEvictionHorizon,
    /// The leader's catalog reconcile never updates a node it registered once: a server
    /// that failed and came back stays critical.
    StaleSerfHealth,
    /// An agent's full sync keeps the services the catalog has and the agent does not: a
    /// restarted server's old services are never deregistered.
    KeepStrays,
}

impl Sabotage {
    pub const ALL: [(&'static str, Sabotage); 15] = [
        ("stale-read", Sabotage::StaleRead),
        ("ack-before-commit", Sabotage::AckBeforeCommit),
        ("skip-fsync", Sabotage::SkipFsync),
        ("noop-bumps-index", Sabotage::NoopBumpsIndex),
        ("no-dedup", Sabotage::NoDedup),
        ("leader-restore", Sabotage::LeaderRestore),
        ("ignore-target", Sabotage::IgnoreTarget),
        ("short-log-reads", Sabotage::ShortLogReads),
        ("unguarded-removal", Sabotage::UnguardedRemoval),
        ("no-claim", Sabotage::NoClaim),
        ("ignore-sync-errors", Sabotage::IgnoreSyncErrors),
        ("lane-poison", Sabotage::LanePoison),
        ("no-eviction-horizon", Sabotage::NoEvictionHorizon),
        ("stale-serf-health", Sabotage::StaleSerfHealth),
        ("keep-strays", Sabotage::KeepStrays),
    ];

    /// The checks that must catch this sabotage: a seed counts as catching it only if one
    /// of these properties fails (a liveness or workload failure alone does not count).
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Sabotage::None => &[],
            Sabotage::StaleRead | Sabotage::LeaderRestore => &["linearizability"],
            Sabotage::ShortLogReads => &[
                "state machine safety",
                " differ at index ",
                "acknowledged write lost",
                "linearizability",
                "restart",
            ],
            // A configuration stuck half-changed: nothing commits again.
            Sabotage::NoClaim => &[
                "election safety",
                "state machine safety",
                "linearizability",
                "acknowledged write lost",
                " differ at index ",
            ],
            Sabotage::UnguardedRemoval => {
                &["liveness: the leader did not make every server a voter"]
            }
            Sabotage::IgnoreTarget => &[
                "acknowledged write lost",
                "state machine safety",
                "linearizability",
                " differ at index ",
            ],
            Sabotage::AckBeforeCommit => &["linearizability", "acknowledged write lost"],
            Sabotage::SkipFsync | Sabotage::IgnoreSyncErrors => &[
                "acknowledged write lost",
                "state machine safety",
                "linearizability",
                " differ at index ",
                "restart",
            ],
            Sabotage::NoopBumpsIndex => &["index rule broken"],
            Sabotage::LanePoison => &["expired"],
            Sabotage::NoDedup | Sabotage::NoEvictionHorizon => {
                &["linearizability", "index rule broken"]
            }
            Sabotage::StaleSerfHealth => &["catalog: "],
            Sabotage::KeepStrays => &["anti-entropy: "],
        }
    }

    /// Whether `failures` include one of the checks that must catch this sabotage.
    pub fn is_caught(self, failures: &[String]) -> bool {
        failures
            .iter()
            .any(|f| self.caught_by().iter().any(|p| f.starts_with(p)))
    }

    pub fn parse(name: &str) -> Option<Sabotage> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .unwrap_or("none")
    }
}
