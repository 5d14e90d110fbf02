//! Raft's messages between servers, shared by every transport (the simulator's and the
//! agent's TCP one), and the one function that hands a received message to openraft.

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;

use super::Snapshot;
use super::SnapshotMeta;
use super::Types;
use super::Vote;

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
    /// The receiving node could not handle it (shutting down, fatal error).
    Failed(String),
}

/// Hand a received message to the local Raft node and build the reply.
pub async fn serve<C, SM>(raft: &openraft::Raft<C, SM>, rpc: RaftRpc<C>) -> RaftRpcReply<C>
where
    C: Types,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
{
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

/// How a shell sends one Raft message to one peer and waits at most `ttl` for the reply.
pub trait Transport<C: Types>: Send + Sync + 'static {
    fn call(
        &mut self,
        rpc: RaftRpc<C>,
        ttl: std::time::Duration,
    ) -> impl std::future::Future<Output = std::io::Result<RaftRpcReply<C>>> + Send;
}

/// openraft's network client over any [`Transport`]. Every failure, remote ones included,
/// is reported as `Unreachable` (openraft's remote error type cannot carry ours).
pub struct Network<T>(pub T);

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
        T: Transport<C>,
    {
        match self.0.call(rpc, option.hard_ttl()).await {
            Ok(RaftRpcReply::Failed(e)) => Err(unreachable(std::io::Error::other(e))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unreachable(e)),
        }
    }
}

fn unexpected<C: Types>(r: RaftRpcReply<C>) -> openraft::error::Unreachable<C> {
    unreachable(std::io::Error::other(format!("unexpected reply {r:?}")))
}

impl<C: Types, T: Transport<C>> openraft::RaftNetworkV2<C> for Network<T> {
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
        _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        option: openraft::network::RPCOption,
    ) -> Result<SnapshotResponse<C>, openraft::error::StreamingError<C>> {
        let rpc = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        match self.rpc(rpc, &option).await? {
            RaftRpcReply::Snapshot(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }
}
