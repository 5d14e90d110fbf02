//! Messages between simulated servers and clients, and server RPC over madsim.
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
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::kv::Entry;
use tribune_core::raft::rpc::PeerReply;
use tribune_core::raft::rpc::PeerRpc;
use tribune_core::raft::rpc::PeerTransport;

use crate::SimTypes;

/// The port every simulated process listens on.
pub const PORT: u16 = 9000;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Between servers: what production's server RPC carries (the engine's requests).
    Peer(PeerRpc<SimTypes>),
    /// From a simulated client to a server: what the HTTP API would ask of it.
    Client(ClientMsg),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Peer(PeerReply<SimTypes>),
    Client(ClientReply),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMsg {
    /// A write, through the server's write path (`Server::write`).
    Write(Command),
    /// A linearizable read of one key (`Server::read_barrier`, then local state).
    Read { key: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientReply {
    Written(Response),
    Read {
        entry: Option<Entry>,
    },
    /// Definitely not done (a read that failed, a write refused before Raft).
    Refused(String),
    /// The write may or may not have been applied.
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
        Ok(Arc::new(Net {
            ep: Endpoint::bind(addr).await?,
            next_tag: AtomicU64::new(base),
        }))
    }

    /// Send `msg` to `dst` and wait at most `ttl` for the reply.
    pub async fn call(&self, dst: SocketAddr, msg: &Msg, ttl: Duration) -> io::Result<Reply> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&(tag, msg));
        // Server RPC may deliver a request twice (a retried frame); a client's HTTP request
        // is one request (a client that retries sends a new one).
        let duplicable = matches!(msg, Msg::Peer(_));
        let copies = if duplicable && madsim::rand::random::<f64>() < crate::faults::dup_rate() {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.ep.send_to_raw(dst, 0, Box::new(frame.clone())).await?;
        }
        match madsim::time::timeout(ttl, self.ep.recv_from_raw(tag)).await {
            Ok(Ok((payload, _))) => {
                let bytes = payload
                    .downcast::<Vec<u8>>()
                    .map_err(|_| io::Error::other("not bytes"))?;
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
            let Ok(bytes) = payload.downcast::<Vec<u8>>() else {
                continue;
            };
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

/// Server RPC between simulated servers, as the engine and openraft send it.
#[derive(Clone)]
pub struct SimPeers {
    pub net: Arc<Net>,
}

impl PeerTransport<SimTypes> for SimPeers {
    async fn call(
        &self,
        addr: &str,
        rpc: PeerRpc<SimTypes>,
        ttl: Duration,
    ) -> io::Result<PeerReply<SimTypes>> {
        let dst: SocketAddr = addr.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}"))
        })?;
        match self.net.call(dst, &Msg::Peer(rpc), ttl).await? {
            Reply::Peer(r) => Ok(r),
            Reply::Client(r) => Err(io::Error::other(format!(
                "client reply to a server message: {r:?}"
            ))),
        }
    }
}
