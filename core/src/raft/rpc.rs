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
    /// One chunk of a snapshot: bytes `offset..offset + data.len()` of `total`. Chunks are
    /// sent in order, one at a time; the last one installs the snapshot.
    SnapshotChunk {
        vote: Vote,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRpcReply<C: Types> {
    Append(AppendEntriesResponse<C>),
    Vote(VoteResponse<C>),
    Snapshot(SnapshotResponse<C>),
    /// A chunk that was not the last was taken.
    ChunkTaken,
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
    Claim {
        granted: bool,
    },
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
    fn call(
        &self,
        addr: &str,
        rpc: PeerRpc<C>,
        ttl: Duration,
    ) -> impl Future<Output = io::Result<PeerReply<C>>> + Send;
}

/// The largest snapshot a server takes ([`SnapshotAssembly`] holds it in memory).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;
/// The size of a snapshot chunk in production.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// A snapshot being received, chunk by chunk. One at a time: the first chunk of another
/// snapshot (another leader, or a newer snapshot) starts over.
#[derive(Default)]
pub struct SnapshotAssembly {
    current: Option<(Vote, Option<super::LogId>, Vec<u8>)>,
    /// Chunks taken, and snapshots completed from more than one chunk.
    pub chunks: u64,
    pub multi_chunk_snapshots: u64,
}

impl SnapshotAssembly {
    /// Take one chunk; the whole snapshot once its last chunk arrived.
    fn take(
        &mut self,
        vote: Vote,
        meta: &SnapshotMeta,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, String> {
        if total > SNAPSHOT_BYTES_MAX {
            return Err(format!(
                "snapshot of {total} bytes exceeds {SNAPSHOT_BYTES_MAX}"
            ));
        }
        if offset == 0 {
            self.current = Some((vote, meta.last_log_id, Vec::with_capacity(data.len())));
        }
        let Some((v, id, buf)) = self.current.as_mut() else {
            return Err("snapshot chunk without its start".into());
        };
        if *v != vote || *id != meta.last_log_id || buf.len() as u64 != offset {
            self.current = None;
            return Err(format!("snapshot chunk at {offset} out of order"));
        }
        if offset + data.len() as u64 > total {
            self.current = None;
            return Err("snapshot chunk past the announced size".into());
        }
        buf.extend_from_slice(&data);
        self.chunks += 1;
        if buf.len() as u64 == total {
            if offset > 0 {
                self.multi_chunk_snapshots += 1;
            }
            return Ok(self.current.take().map(|(_, _, b)| b));
        }
        Ok(None)
    }
}

/// Hand a Raft message meant for server `to` to the local Raft node and build the reply.
pub async fn serve<C, SM>(
    raft: &openraft::Raft<C, SM>,
    to: NodeId,
    rpc: RaftRpc<C>,
    check_target: bool,
    assembly: &std::sync::Mutex<SnapshotAssembly>,
) -> RaftRpcReply<C>
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
        RaftRpc::Append(r) => raft
            .append_entries(r)
            .await
            .map_or_else(|e| failed(&e), RaftRpcReply::Append),
        RaftRpc::Vote(r) => raft
            .vote(r)
            .await
            .map_or_else(|e| failed(&e), RaftRpcReply::Vote),
        RaftRpc::PreVote(r) => raft
            .pre_vote(r)
            .await
            .map_or_else(|e| failed(&e), RaftRpcReply::Vote),
        RaftRpc::SnapshotChunk {
            vote,
            meta,
            offset,
            total,
            data,
        } => {
            let taken = assembly
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(vote, &meta, offset, total, data);
            match taken {
                Err(e) => RaftRpcReply::Failed(e),
                Ok(None) => RaftRpcReply::ChunkTaken,
                Ok(Some(data)) => raft
                    .install_full_snapshot(
                        vote,
                        Snapshot {
                            meta,
                            snapshot: data,
                        },
                    )
                    .await
                    .map_or_else(|e| failed(&e), RaftRpcReply::Snapshot),
            }
        }
    }
}

/// openraft's network factory over any [`PeerTransport`].
#[derive(Clone)]
pub struct NetFactory<T> {
    pub transport: T,
    /// Snapshots go in chunks of this many bytes.
    pub snapshot_chunk_bytes: usize,
}

impl<T> NetFactory<T> {
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }
}

impl<C: Types, T: PeerTransport<C>> openraft::RaftNetworkFactory<C> for NetFactory<T> {
    type Network = Network<T>;

    async fn new_client(&mut self, target: NodeId, node: &super::Node) -> Network<T> {
        Network {
            transport: self.transport.clone(),
            addr: node.addr.clone(),
            target,
            chunk: self.snapshot_chunk_bytes.max(1),
        }
    }
}

/// openraft's network client for one peer. Every failure, remote ones included, is reported
/// as `Unreachable` (openraft's remote error type cannot carry ours).
pub struct Network<T> {
    transport: T,
    addr: String,
    target: NodeId,
    chunk: usize,
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
        let msg = PeerRpc::Raft {
            to: self.target,
            rpc,
        };
        match self
            .transport
            .call(&self.addr, msg, option.hard_ttl())
            .await
        {
            Ok(PeerReply::Raft(RaftRpcReply::Failed(e))) => Err(unreachable(io::Error::other(e))),
            Ok(PeerReply::Raft(reply)) => Ok(reply),
            Ok(other) => Err(unreachable(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
            Err(e) => Err(unreachable(e)),
        }
    }
}

/// The least time an AppendEntries call may take. openraft gives one a heartbeat interval
/// (100 ms by default) and, when it runs out, takes the follower for unreachable and waits
/// 200 ms before it sends again. A follower whose fsync stalls for a little longer than a
/// heartbeat (a busy disk) then held every write up for about 300 ms; with this much time
/// the append is answered as soon as the disk is back. A dead peer's connection fails at
/// once, and a silent one is given up on after this long.
pub const APPEND_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(1);

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
        let ttl = option.hard_ttl().max(APPEND_TTL_MIN);
        let option = openraft::network::RPCOption::new(ttl);
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
        let data = snapshot.snapshot;
        let total = data.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + self.chunk).min(data.len());
            let rpc = RaftRpc::SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                offset: offset as u64,
                total,
                data: data[offset..end].to_vec(),
            };
            match self.rpc(rpc, &option).await? {
                RaftRpcReply::Snapshot(r) if end == data.len() => return Ok(r),
                RaftRpcReply::ChunkTaken if end < data.len() => offset = end,
                r => return Err(unexpected(r).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::declare_types!(RpcTypes, openraft_rt_tokio::TokioRuntime);

    /// A transport that keeps the time each call was given and answers none.
    #[derive(Clone, Default)]
    struct Ttls(std::sync::Arc<std::sync::Mutex<Vec<Duration>>>);

    impl PeerTransport<RpcTypes> for Ttls {
        async fn call(
            &self,
            _addr: &str,
            _rpc: PeerRpc<RpcTypes>,
            ttl: Duration,
        ) -> io::Result<PeerReply<RpcTypes>> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(ttl);
            Err(io::Error::other("no reply"))
        }
    }

    /// Run a future that never waits (the transport above answers at once).
    fn now<F: Future>(f: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the call waited"),
        }
    }

    #[test]
    fn an_append_gets_at_least_append_ttl_min_and_a_vote_its_own_ttl() {
        use openraft::RaftNetworkV2;
        let ttls = Ttls::default();
        let mut net = Network {
            transport: ttls.clone(),
            addr: "peer:8300".into(),
            target: 2,
            chunk: 1,
        };
        let heartbeat = openraft::network::RPCOption::new(Duration::from_millis(100));
        let append = AppendEntriesRequest::<RpcTypes> {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        };
        assert!(now(net.append_entries(append, heartbeat.clone())).is_err());
        let vote = VoteRequest::<RpcTypes>::new(Vote::new(2, 1), None);
        assert!(now(net.vote(vote, heartbeat)).is_err());
        let seen = ttls.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen, vec![APPEND_TTL_MIN, Duration::from_millis(100)]);
        let long = openraft::network::RPCOption::new(Duration::from_secs(3));
        let append = AppendEntriesRequest::<RpcTypes> {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        };
        assert!(now(net.append_entries(append, long)).is_err());
        let last = ttls
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied();
        assert_eq!(last, Some(Duration::from_secs(3)), "a longer ttl is kept");
    }

    fn meta(index: u64) -> SnapshotMeta {
        let log_id = crate::raft::LogId::new(crate::raft::CommittedLeaderId::new(1), index);
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn a_snapshot_is_assembled_from_its_chunks_in_order() {
        let (mut a, vote, m) = (SnapshotAssembly::default(), Vote::new(1, 1), meta(7));
        assert_eq!(a.take(vote, &m, 0, 5, b"ab".to_vec()), Ok(None));
        assert_eq!(a.take(vote, &m, 2, 5, b"cd".to_vec()), Ok(None));
        assert_eq!(
            a.take(vote, &m, 4, 5, b"e".to_vec()),
            Ok(Some(b"abcde".to_vec()))
        );
        assert_eq!(a.multi_chunk_snapshots, 1);
    }

    #[test]
    fn chunks_out_of_order_of_another_snapshot_or_too_large_are_refused() {
        let (mut a, vote, m) = (SnapshotAssembly::default(), Vote::new(1, 1), meta(7));
        assert!(a.take(vote, &m, 2, 5, b"cd".to_vec()).is_err(), "no start");
        a.take(vote, &m, 0, 5, b"ab".to_vec()).unwrap();
        assert!(
            a.take(vote, &meta(8), 2, 5, b"cd".to_vec()).is_err(),
            "another snapshot"
        );
        a.take(vote, &m, 0, 5, b"ab".to_vec()).unwrap();
        assert!(a.take(vote, &m, 3, 5, b"d".to_vec()).is_err(), "a gap");
        a.take(vote, &m, 0, 5, b"ab".to_vec()).unwrap();
        assert!(
            a.take(vote, &m, 2, 5, b"cdef".to_vec()).is_err(),
            "past the size"
        );
        assert!(
            a.take(vote, &m, 0, SNAPSHOT_BYTES_MAX + 1, b"a".to_vec())
                .is_err(),
            "too large"
        );
    }
}
