//! What is said on server RPC (8300): the requests ([`Rpc`]) and replies ([`RpcReply`])
//! between servers, the HTTP requests client agents forward to servers over it
//! ([`HttpCall`], [`HttpReply`]), the Raft type config the peers' messages carry
//! ([`Types`]), and the bound on one frame ([`FRAME_BYTES_MAX`]).
//!
//! These are postcard-encoded as declared here; every server of a cluster runs the same
//! build, so a peer decodes what it is sent. How frames travel (pooled and multiplexed
//! connections, timeouts) is the transport's business (`raft::transport`).

use serde::Deserialize;
use serde::Serialize;
use tribune_core::raft::rpc::PeerReply;
use tribune_core::raft::rpc::PeerRpc;

tribune_core::declare_types!(pub Types, openraft_rt_tokio::TokioRuntime);

/// Largest frame accepted (a whole snapshot travels in one frame).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// Everything said on 8300.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// From another server: Raft, forwarded writes and read-index requests, hellos (served
    /// by the cluster engine).
    Peer(PeerRpc<Types>),
    /// An HTTP request a client agent forwards to a server (only the paths client agents
    /// forward are served: `forward::is_forwarded`).
    Http(HttpCall),
    /// First frame of a multiplexed connection (see the transport); answered `Done`.
    Mux,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Peer(PeerReply<Types>),
    /// The request was not served (bad request, or the server is not ready).
    Failed(String),
    /// The multiplexed connection is accepted.
    Done,
    /// The server's response to a forwarded HTTP request.
    Http(HttpReply),
}

/// An HTTP request carried over server RPC.
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The server's response to an [`HttpCall`].
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}
