//! Messages between simulated servers and clients, and openraft's network over madsim.
//!
//! Every message is encoded with postcard, although madsim could pass Rust values: the
//! simulator must exercise serialization too. A request goes to the peer's endpoint on tag
//! 0 with a fresh reply tag; the reply comes back on that tag.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tribune_core::fsm::Request;
use tribune_core::fsm::Response;
use tribune_core::kv::Entry;
use tribune_core::raft::Node;
use tribune_core::raft::NodeId;
use tribune_core::raft::Snapshot;
use tribune_core::raft::SnapshotMeta;
use tribune_core::raft::Vote;

use crate::SimTypes;

/// The port every simulated process listens on.
pub const PORT: u16 = 9000;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Append(AppendEntriesRequest<SimTypes>),
    Vote(VoteRequest<SimTypes>),
    PreVote(VoteRequest<SimTypes>),
    Snapshot { vote: Vote, meta: SnapshotMeta, data: Vec<u8> },
    Client(ClientMsg),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(AppendEntriesResponse<SimTypes>),
    Vote(VoteResponse<SimTypes>),
    Snapshot(SnapshotResponse<SimTypes>),
    Client(ClientReply),
    /// The remote node failed the RPC (shut down, fatal error).
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMsg {
    Write(Request),
    /// A linearizable read of one key.
    Read { key: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientReply {
    Written(Response),
    Read { entry: Option<Entry> },
    /// Definitely not done here; try the leader.
    NotLeader { leader: Option<NodeId> },
    /// Definitely not done (a read that failed, a write refused before Raft).
    Refused(String),
    /// The write may or may not have been committed.
    Unknown(String),
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("simulator messages encode")
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One process's endpoint, used both to serve (tag 0) and to call others.
pub struct Net {
    pub ep: Endpoint,
    next_tag: AtomicU64,
}

impl Net {
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<Net>> {
        // Reply tags start at a random point: a restarted process must never take a late
        // reply meant for its previous incarnation as the answer to a new request.
        let base = (madsim::rand::random::<u64>() >> 2) | 1;
        Ok(Arc::new(Net { ep: Endpoint::bind(addr).await?, next_tag: AtomicU64::new(base) }))
    }

    /// Send `msg` to `dst` and wait at most `ttl` for the reply.
    pub async fn call(&self, dst: SocketAddr, msg: &Msg, ttl: Duration) -> io::Result<Reply> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&(tag, msg));
        let copies = if madsim::rand::random::<f64>() < crate::faults::dup_rate() { 2 } else { 1 };
        for _ in 0..copies {
            self.ep.send_to_raw(dst, 0, Box::new(frame.clone())).await?;
        }
        match madsim::time::timeout(ttl, self.ep.recv_from_raw(tag)).await {
            Ok(Ok((payload, _))) => {
                let bytes = payload.downcast::<Vec<u8>>().map_err(|_| io::Error::other("not bytes"))?;
                decode(&bytes)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "rpc timed out")),
        }
    }

    /// Receive the next request: (reply tag, message, sender).
    pub async fn next_request(&self) -> io::Result<(u64, Msg, SocketAddr)> {
        loop {
            let (payload, from) = self.ep.recv_from_raw(0).await?;
            let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
            match decode::<(u64, Msg)>(&bytes) {
                Ok((tag, msg)) => return Ok((tag, msg, from)),
                Err(_) => continue,
            }
        }
    }

    pub async fn reply(&self, to: SocketAddr, tag: u64, reply: &Reply) {
        let _ = self.ep.send_to_raw(to, tag, Box::new(encode(reply))).await;
    }
}

#[derive(Clone)]
pub struct NetFactory {
    pub net: Arc<Net>,
}

pub struct NetClient {
    net: Arc<Net>,
    target: SocketAddr,
}

fn unreachable(e: impl std::error::Error + 'static) -> Unreachable<SimTypes> {
    Unreachable::new(&e)
}

impl RaftNetworkFactory<SimTypes> for NetFactory {
    type Network = NetClient;

    async fn new_client(&mut self, _target: NodeId, node: &Node) -> NetClient {
        NetClient { net: self.net.clone(), target: node.addr.parse().expect("node address") }
    }
}

impl NetClient {
    async fn rpc(&self, msg: Msg, option: &RPCOption) -> Result<Reply, Unreachable<SimTypes>> {
        match self.net.call(self.target, &msg, option.hard_ttl()).await {
            Ok(Reply::Failed(e)) => Err(unreachable(io::Error::other(e))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unreachable(e)),
        }
    }
}

fn unexpected(r: Reply) -> Unreachable<SimTypes> {
    unreachable(io::Error::other(format!("unexpected reply {r:?}")))
}

impl RaftNetworkV2<SimTypes> for NetClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<SimTypes>, RPCError<SimTypes>> {
        match self.rpc(Msg::Append(rpc), &option).await? {
            Reply::Append(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<SimTypes>, option: RPCOption) -> Result<VoteResponse<SimTypes>, RPCError<SimTypes>> {
        match self.rpc(Msg::Vote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<SimTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimTypes>, RPCError<SimTypes>> {
        match self.rpc(Msg::PreVote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<SimTypes>, StreamingError<SimTypes>> {
        let msg = Msg::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        match self.rpc(msg, &option).await? {
            Reply::Snapshot(r) => Ok(r),
            r => Err(unexpected(r).into()),
        }
    }
}
