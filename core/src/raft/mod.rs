//! Raft glue: the openraft type configuration Tribune uses, and the log and state-machine
//! stores, written once over a [`Backend`] so that the simulator (in-memory,
//! crash-consistent) and the agent (fjall) share every line of storage logic.
//!
//! The async runtime is the one thing left open: each shell declares its own type config
//! (`openraft::declare_raft_types!`) with its runtime and the types below, and the stores
//! here are generic over any config that satisfies [`Types`].
//!
//! Key layout: `Space::Log` holds `index (big-endian u64) → postcard(Entry)`; `Space::Meta`
//! holds `vote`, `committed`, `purged` and `snapshot` (meta and state-machine bytes).

pub mod backend;
pub mod rpc;
pub mod store;

pub use backend::Backend;
pub use backend::MemBackend;
pub use backend::Space;
pub use store::LogStore;
pub use store::SmStore;

use openraft::impls::BasicNode;
use openraft::RaftTypeConfig;

use crate::fsm::Request;
use crate::fsm::Response;

pub type NodeId = u64;
pub type Node = BasicNode;
/// Standard Raft leader ids: at most one leader per term (the simulator checks it).
pub type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;
pub type CommittedLeaderId = <LeaderId as openraft::vote::RaftLeaderId>::Committed;
pub type Vote = openraft::impls::Vote<LeaderId>;
pub type Payload = openraft::EntryPayload<Request, NodeId, Node>;
pub type LogEntry = openraft::Entry<CommittedLeaderId, Payload>;
pub type LogId = openraft::LogId<CommittedLeaderId>;
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId, NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, NodeId, Node>;
pub type Snapshot = openraft::Snapshot<CommittedLeaderId, NodeId, Node, Vec<u8>>;

/// A Raft type config with Tribune's types; only the async runtime differs between the
/// simulator and the agent. Declare one with [`declare_types!`](crate::declare_types).
pub trait Types:
    RaftTypeConfig<
    D = Request,
    R = Response,
    NodeId = NodeId,
    Node = Node,
    Term = u64,
    LeaderId = LeaderId,
    Vote = Vote,
    Payload = Payload,
    Entry = LogEntry,
>
{
}

impl<T> Types for T where
    T: RaftTypeConfig<
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Term = u64,
        LeaderId = LeaderId,
        Vote = Vote,
        Payload = Payload,
        Entry = LogEntry,
    >
{
}

/// Declare a Raft type config named `$name` with Tribune's types and runtime `$rt`.
#[macro_export]
macro_rules! declare_types {
    ($vis:vis $name:ident, $rt:ty) => {
        openraft::declare_raft_types!(
            $vis $name:
                D = $crate::fsm::Request,
                R = $crate::fsm::Response,
                NodeId = u64,
                Node = openraft::impls::BasicNode,
                LeaderId = $crate::raft::LeaderId,
                AsyncRuntime = $rt,
        );
    };
}

/// Consul's default `performance.raft_multiplier`.
pub const DEFAULT_RAFT_MULTIPLIER: u64 = 5;

/// The Raft settings Tribune runs with, scaled by `raft_multiplier` as Consul's
/// `performance.raft_multiplier` (1 = fastest, 5 = default). At the default: heartbeat every
/// 100 ms, election timeout 300-600 ms; a follower also refuses votes while its leader's
/// lease (the maximum election timeout) runs, so a dead leader is replaced in about 1 s.
///
/// openraft takes no snapshot by itself: [`Server::snapshots`](crate::cluster::Server::snapshots)
/// asks for one on Consul's schedule. After a snapshot the log keeps `snapshot_threshold / 2`
/// entries behind it for followers that lag.
pub fn config(raft_multiplier: u64, snapshot_threshold: u64) -> openraft::Config {
    let m = raft_multiplier.max(1);
    openraft::Config {
        cluster_name: "tribune".into(),
        heartbeat_interval: 20 * m,
        election_timeout_min: 60 * m,
        election_timeout_max: 120 * m,
        // Pre-Vote: a server that was cut off cannot disrupt a healthy leader when it
        // comes back (Consul's history of rejoin-triggered elections).
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election. Restored at once, it would serve
        // ReadIndex reads from the commit index it recovered, which can be older than
        // writes it acknowledged before the crash (found by simulation seed 76).
        enable_leader_restore: Some(false),
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: snapshot_threshold / 2,
        purge_batch_size: 64,
        max_payload_entries: 256,
        ..Default::default()
    }
}
