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
    /// The request was not served, and why.
    Failed(RpcError),
    /// The multiplexed connection is accepted.
    Done,
    /// The server's response to a forwarded HTTP request.
    Http(HttpReply),
}

/// Why a server did not serve a request (it answers [`RpcReply::Failed`]), by what the
/// caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    /// A forwarded request whose method does not parse: do not send it again.
    #[error("bad method {0}")]
    BadMethod(String),
    /// A forwarded request whose URI does not parse: do not send it again.
    #[error("bad uri {0}")]
    BadUri(String),
    /// A path server RPC does not serve (only what client agents forward is): ask the
    /// agent's own HTTP API instead.
    #[error("{0} is not served over server RPC")]
    NotServed(String),
    /// The server is starting and cannot serve this yet: retry shortly, or another server.
    #[error("the HTTP API is not up yet")]
    NotReady,
    /// The reply would not fit in one frame ([`FRAME_BYTES_MAX`]): it cannot be served over
    /// server RPC; ask for less.
    #[error("response too large: {0}")]
    TooLarge(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_travels_with_its_reason() {
        for e in [
            RpcError::BadMethod("G T".into()),
            RpcError::BadUri("::".into()),
            RpcError::NotServed("/v1/agent/leave".into()),
            RpcError::NotReady,
            RpcError::TooLarge("frame too large".into()),
        ] {
            let bytes = postcard::to_stdvec(&RpcReply::Failed(e.clone())).unwrap();
            match postcard::from_bytes::<RpcReply>(&bytes).unwrap() {
                RpcReply::Failed(got) => assert_eq!(got, e),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            RpcError::NotServed("/v1/agent/leave".into()).to_string(),
            "/v1/agent/leave is not served over server RPC"
        );
    }
}
