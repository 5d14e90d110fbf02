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
use openraft::RaftNetworkFactory;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tribune_core::fsm::Request;
use tribune_core::fsm::Response;
use tribune_core::kv::Entry;
use tribune_core::raft::Node;
use tribune_core::raft::rpc::Network;
use tribune_core::raft::rpc::RaftRpc;
use tribune_core::raft::rpc::RaftRpcReply;
use tribune_core::raft::rpc::Transport;
use tribune_core::raft::NodeId;

use crate::SimTypes;

/// The port every simulated process listens on.
pub const PORT: u16 = 9000;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Raft(RaftRpc<SimTypes>),
    Client(ClientMsg),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Raft(RaftRpcReply<SimTypes>),
    Client(ClientReply),
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

/// One peer, as openraft's network sees it.
pub struct Peer {
    net: Arc<Net>,
    target: SocketAddr,
}

impl RaftNetworkFactory<SimTypes> for NetFactory {
    type Network = Network<Peer>;

    async fn new_client(&mut self, _target: NodeId, node: &Node) -> Network<Peer> {
        Network(Peer { net: self.net.clone(), target: node.addr.parse().expect("node address") })
    }
}

impl Transport<SimTypes> for Peer {
    async fn call(&mut self, rpc: RaftRpc<SimTypes>, ttl: Duration) -> io::Result<RaftRpcReply<SimTypes>> {
        match self.net.call(self.target, &Msg::Raft(rpc), ttl).await? {
            Reply::Raft(r) => Ok(r),
            Reply::Client(r) => Err(io::Error::other(format!("client reply to a raft message: {r:?}"))),
        }
    }
}
