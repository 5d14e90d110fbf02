//! A member of the cluster as one node sees it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::time::Millis;

/// Member tags (Consul: `role`, `dc`, `port`, `build`, `vsn`, `id`, `expect`, ...).
pub type Tags = BTreeMap<String, String>;

/// Liveness of a member.
///
/// `Suspect` is SWIM's intermediate state: it reports as alive to Consul (status 1) until the
/// suspicion timeout expires or the member refutes it with a higher incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// A probe failed; waiting for refutation or the suspicion timeout.
    Suspect,
    /// This node announced its leave and is still propagating it (local node only).
    Leaving,
    /// Left gracefully (or was force-left).
    Left,
    /// Declared dead by the failure detector.
    Failed,
}

impl MemberState {
    /// Consul's `/v1/agent/members` `Status`: 0 none, 1 alive, 2 leaving, 3 left, 4 failed.
    pub fn consul_status(self) -> u8 {
        match self {
            MemberState::Alive | MemberState::Suspect => 1,
            MemberState::Leaving => 2,
            MemberState::Left => 3,
            MemberState::Failed => 4,
        }
    }

    /// Alive or suspect: still a probe and gossip target.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One member's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique node name.
    pub name: String,
    /// Gossip address (UDP and TCP).
    pub addr: SocketAddr,
    /// Tags as last announced.
    pub tags: Tags,
    /// The member's incarnation number: only the member itself raises it (to refute or to
    /// announce new tags); higher always wins.
    pub incarnation: u64,
    /// Current state.
    pub state: MemberState,
    /// When `state` last changed (local time).
    pub state_change: Millis,
}

/// A snapshot of a member for `members` / events, with Consul's status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// State.
    pub state: MemberState,
    /// Consul's status code (see [`MemberState::consul_status`]).
    pub status: u8,
    /// Tags.
    pub tags: Tags,
    /// Incarnation.
    pub incarnation: u64,
}

impl Member {
    /// Snapshot for the outside world.
    pub fn info(&self) -> MemberInfo {
        MemberInfo {
            name: self.name.clone(),
            addr: self.addr,
            state: self.state,
            status: self.state.consul_status(),
            tags: self.tags.clone(),
            incarnation: self.incarnation,
        }
    }
}

/// An alive server for `bootstrap_expect`: a member tagged `role=consul` (or `server`)
/// in the requested datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Parsed `expect` tag, if present and numeric.
    pub expect: Option<u32>,
    /// All tags.
    pub tags: Tags,
}
