//! What servers say to each other, shared by every transport (the simulator's and the
//! agent's TCP one): Raft's messages addressed to one server id, and the cluster engine's
//! own requests (forwarded writes, read-index requests, hellos). Also openraft's network
//! client over any [`PeerTransport`], and the one function that hands a received Raft
//! message to openraft.
//!
//! Every Raft message names the id of the server it is meant for. A server refuses a
//! message for another id: a server whose data dir was wiped comes back at its old address
//! with a new id, and must not answer votes and appends meant for the old one with an empty
//! log.

use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;

use super::NodeId;
use super::Snapshot;
use super::SnapshotMeta;
use super::Types;
use super::Vote;
use crate::fsm::Request;
use crate::fsm::Response;

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRpc<C: Types> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    PreVote(VoteRequest<C>),
    /// A whole snapshot in one message (snapshots are small: the KV state).
    Snapshot { vote: Vote, meta: SnapshotMeta, data: Vec<u8> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRpcReply<C: Types> {
    Append(AppendEntriesResponse<C>),
    Vote(VoteResponse<C>),
    Snapshot(SnapshotResponse<C>),
    /// The receiving node could not handle it (shutting down, fatal error, another id).
    Failed(String),
}

/// A request from one server to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerRpc<C: Types> {
    /// A Raft message for the server whose id is `to`.
    Raft { to: NodeId, rpc: RaftRpc<C> },
    /// A write forwarded by a server that is not the leader.
    Write(Request),
    /// Confirm leadership and return the read index (for a follower's linearizable read).
    ReadIndex,
    /// "Who are you?": cluster formation and reconciliation learn a server's id from it.
    Hello,
    /// Grant server `by` the bootstrap (see `cluster::bootstrap`).
    Claim { by: NodeId },
    /// Take back the grant of a claim by `by` that did not complete.
    Release { by: NodeId },
}

/// A server's answer to a [`PeerRpc`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerReply<C: Types> {
    Raft(RaftRpcReply<C>),
    /// A forwarded write was applied with this response.
    Written(Response),
    /// Not the leader (nothing was done); the leader's RPC address if known.
    NotLeader(Option<String>),
    /// The log index a read must see applied.
    ReadIndex(u64),
    Hello(Hello),
    /// The answer to a claim (or a release: whether the grant was held by the caller).
    Claim { granted: bool },
    /// The request failed; whether it took effect is unknown.
    Failed(String),
}

/// What a server tells about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub id: NodeId,
    pub name: String,
    pub datacenter: String,
    /// Whether it belongs to a formed cluster (has a Raft membership).
    pub cluster_formed: bool,
}

/// How a shell sends one request to the server at RPC address `addr` and waits at most
/// `ttl` for its reply. An error means no reply: the request may or may not have been
/// handled.
pub trait PeerTransport<C: Types>: Clone + Send + Sync + 'static {
    fn call(&self, addr: &str, rpc: PeerRpc<C>, ttl: Duration) -> impl Future<Output = io::Result<PeerReply<C>>> + Send;
}

/// Hand a Raft message meant for server `to` to the local Raft node and build the reply.
pub async fn serve<C, SM>(raft: &openraft::Raft<C, SM>, to: NodeId, rpc: RaftRpc<C>, check_target: bool) -> RaftRpcReply<C>
where
    C: Types,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
{
    let me = *raft.node_id();
    if check_target && to != me {
        return RaftRpcReply::Failed(format!("message for server {to} reached server {me}"));
    }
    let failed = |e: &dyn std::fmt::Display| RaftRpcReply::Failed(e.to_string());
    match rpc {
        RaftRpc::Append(r) => raft.append_entries(r).await.map_or_else(|e| failed(&e), RaftRpcReply::Append),
        RaftRpc::Vote(r) => raft.vote(r).await.map_or_else(|e| failed(&e), RaftRpcReply::Vote),
        RaftRpc::PreVote(r) => raft.pre_vote(r).await.map_or_else(|e| failed(&e), RaftRpcReply::Vote),
        RaftRpc::Snapshot { vote, meta, data } => raft
            .install_full_snapshot(vote, Snapshot { meta, snapshot: data })
            .await
            .map_or_else(|e| failed(&e), RaftRpcReply::Snapshot),
    }
}

/// openraft's network factory over any [`PeerTransport`].
#[derive(Clone)]
pub struct NetFactory<T> {
    pub transport: T,
}

impl<C: Types, T: PeerTransport<C>> openraft::RaftNetworkFactory<C> for NetFactory<T> {
    type Network = Network<T>;

    async fn new_client(&mut self, target: NodeId, node: &super::Node) -> Network<T> {
        Network { transport: self.transport.clone(), addr: node.addr.clone(), target }
    }
}

/// openraft's network client for one peer. Every failure, remote ones included, is reported
/// as `Unreachable` (openraft's remote error type cannot carry ours).
pub struct Network<T> {
    transport: T,
    addr: String,
    target: NodeId,
}

fn unreachable<C: Types>(e: impl std::error::Error + 'static) -> openraft::error::Unreachable<C> {
    openraft::error::Unreachable::new(&e)
}

impl<T> Network<T> {
    async fn rpc<C: Types>(
        &mut self,
        rpc: RaftRpc<C>,
        option: &openraft::network::RPCOption,
    ) -> Result<RaftRpcReply<C>, openraft::error::Unreachable<C>>
    where
        T: PeerTransport<C>,
    {
        let msg = PeerRpc::Raft { to: self.target, rpc };
        match self.transport.call(&self.addr, msg, option.hard_ttl()).await {
            Ok(PeerReply::Raft(RaftRpcReply::Failed(e))) => Err(unreachable(io::Error::other(e))),
            Ok(PeerReply::Raft(reply)) => Ok(reply),
            Ok(other) => Err(unreachable(io::Error::other(format!("unexpected reply {other:?}")))),
            Err(e) => Err(unreachable(e)),
        }
    }
}

fn unexpected<C: Types>(r: RaftRpcReply<C>) -> openraft::error::Unreachable<C> {
    unreachable(io::Error::other(format!("unexpected reply {r:?}")))
}

impl<C: Types, T: PeerTransport<C>> openraft::RaftNetworkV2<C> for Network<T> {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: openraft::network::RPCOption,
    ) -> Result<AppendEntriesResponse<C>, openraft::error::RPCError<C>> {
        match self.rpc(RaftRpc::Append(rpc), &option).await? {
            RaftRpcReply::Append(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: openraft::network::RPCOption,
    ) -> Result<VoteResponse<C>, openraft::error::RPCError<C>> {
        match self.rpc(RaftRpc::Vote(rpc), &option).await? {
            RaftRpcReply::Vote(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: openraft::network::RPCOption,
    ) -> Result<VoteResponse<C>, openraft::error::RPCError<C>> {
        match self.rpc(RaftRpc::PreVote(rpc), &option).await? {
            RaftRpcReply::Vote(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        option: openraft::network::RPCOption,
    ) -> Result<SnapshotResponse<C>, openraft::error::StreamingError<C>> {
        let rpc = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        match self.rpc(rpc, &option).await? {
            RaftRpcReply::Snapshot(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }
}
