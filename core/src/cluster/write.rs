//! The client write path: lanes, forwarding to the leader, retries under one id.
//!
//! A lane is one client id whose sequence numbers are used one at a time, so the state
//! machine's dedup (the latest sequence number per client) holds for concurrent writes: a
//! write takes a free lane (or opens a new one), uses its next sequence number for every
//! attempt, and gives the lane back when it is done.
//!
//! The state machine keeps the latest sequence number of at most
//! [`DEDUP_CLIENTS_MAX`](crate::fsm::DEDUP_CLIENTS_MAX) clients. A lane whose client id was
//! evicted gets [`Response::Expired`] for every later write: such a lane is retired. When
//! that answer comes to the first attempt of a write, the write was never applied and is
//! submitted again on a fresh lane (a few times: a fresh lane opened below the table's
//! eviction horizon is refused too); after an earlier attempt whose answer was lost, it may
//! have been applied, and the caller is told the outcome is unknown.

use std::sync::atomic::Ordering;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;

use super::now;
use super::sleep;
use super::Discovery;
use super::Server;
use crate::fsm::Command;
use crate::fsm::Request;
use crate::fsm::Response;
use crate::raft::rpc::PeerReply;
use crate::raft::rpc::PeerRpc;
use crate::raft::rpc::PeerTransport;
use crate::raft::Types;

/// Why a write did not return a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader took the write before the deadline. If an attempt reached a leader whose
    /// answer was lost, the write may still be applied (at most once).
    #[error("No cluster leader")]
    NoLeader,
    /// The write may or may not have been applied, and this server cannot find out.
    #[error("the outcome of the write is unknown: {0}")]
    Indeterminate(&'static str),
    /// openraft refused the write on this server (it is shutting down or failed); nothing
    /// was applied.
    #[error("{0}")]
    Raft(String),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Lane {
    client: u64,
    seq: u64,
    /// The index this server had applied when it opened the lane (see `fsm`).
    opened_at: u64,
}

/// How many fresh lanes a write whose first attempts were refused as expired tries.
const FRESH_LANES_MAX: u32 = 4;

impl<C, SM, T, D> Server<C, SM, T, D>
where
    C: Types,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    T: PeerTransport<C>,
    D: Discovery,
{
    fn fresh_lane(&self) -> Lane {
        // Consul's indexes are openraft's plus one (see the state-machine store).
        let applied = self.raft.metrics().borrow_watched().last_applied;
        Lane {
            client: self.next_client.fetch_add(1, Ordering::Relaxed),
            seq: 0,
            opened_at: applied.map(|l| l.index + 1).unwrap_or(0),
        }
    }

    fn take_lane(&self) -> Lane {
        let lane = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut lane = lane.unwrap_or_else(|| self.fresh_lane());
        lane.seq += 1;
        lane
    }

    fn return_lane(&self, lane: Lane) {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lane);
    }

    /// Apply `cmd` through the Raft log, from any server: the leader submits it, a
    /// follower forwards it to the leader. Returns the state machine's response.
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        let mut lane = self.take_lane();
        let mut req = Request {
            client: lane.client,
            seq: lane.seq,
            opened_at: lane.opened_at,
            cmd,
        };
        let mut fresh_lanes = 0;
        loop {
            let (result, attempts) = self.submit(&req).await;
            match result {
                Ok(Response::Expired) if !self.sabotage().lane_poison => {
                    // The lane's client id is no longer in the dedup table: retire the lane.
                    // Refused at the first attempt, the write was not applied: try again on a
                    // fresh lane. After a lost answer it may have been.
                    if attempts > 1 {
                        return Err(WriteError::Indeterminate(
                            "the write's client id expired from the dedup table",
                        ));
                    }
                    if fresh_lanes == FRESH_LANES_MAX {
                        return Err(WriteError::Raft(
                            "the write was refused: its client ids kept expiring from the \
                             dedup table (not applied)"
                                .into(),
                        ));
                    }
                    fresh_lanes += 1;
                    lane = self.fresh_lane();
                    lane.seq += 1;
                    req.client = lane.client;
                    req.seq = lane.seq;
                    req.opened_at = lane.opened_at;
                }
                other => {
                    self.return_lane(lane);
                    return other;
                }
            }
        }
    }

    /// Submit `req` until a server answers for it or the deadline passes; also returns
    /// how many attempts were made (an attempt without an answer may have been applied).
    async fn submit(&self, req: &Request) -> (Result<Response, WriteError>, u32) {
        let deadline = now::<C>() + self.cfg.request_deadline;
        // None: try the local Raft node; Some(addr): forward to that server. A follower
        // forwards to a known leader at once.
        let mut target: Option<String> = self.leader_addr().filter(|l| *l != self.cfg.rpc_addr);
        let mut attempts = 0;
        while now::<C>() < deadline {
            attempts += 1;
            let leader_hint: Option<String> = match &target {
                None if self.sabotage().ack_before_commit && self.raft.is_leader() => {
                    // Wrong on purpose: acknowledge before the entry is committed.
                    let _ = self.raft.client_write_ff(req.clone(), None).await;
                    let outcome = crate::kv::KvOutcome {
                        ok: true,
                        changed: true,
                    };
                    return (Ok(Response::Kv { outcome, index: 0 }), attempts);
                }
                None => match self.raft.client_write(req.clone()).await {
                    Ok(r) => return (Ok(r.data), attempts),
                    Err(e) => match e.forward_to_leader() {
                        Some(f) => f.leader_node.as_ref().map(|n| n.addr.clone()),
                        None => return (Err(WriteError::Raft(e.to_string())), attempts),
                    },
                },
                Some(addr) => match self
                    .transport
                    .call(addr, PeerRpc::Write(req.clone()), self.cfg.forward_ttl)
                    .await
                {
                    Ok(PeerReply::Written(r)) => return (Ok(r), attempts),
                    Ok(PeerReply::NotLeader(l)) => l,
                    // No answer: retry the same request (applied at most once).
                    _ => None,
                },
            };
            match leader_hint {
                // This server was named the leader, by itself (its Raft still holds a stale
                // leader, as a removed server's does) or by another server: try it locally,
                // after a pause if it was just tried, so a stale view is not spun on.
                Some(leader) if leader == self.cfg.rpc_addr => {
                    if target.is_none() {
                        sleep::<C>(std::time::Duration::from_millis(100)).await;
                    }
                    target = None;
                }
                Some(leader) => target = Some(leader),
                None => {
                    sleep::<C>(std::time::Duration::from_millis(100)).await;
                    target = self.leader_addr().filter(|l| *l != self.cfg.rpc_addr);
                }
            }
        }
        (Err(WriteError::NoLeader), attempts)
    }
}
