//! Server RPC on port 8300: length-prefixed postcard frames over TCP.
//!
//! A frame is a 4-byte big-endian length and that many bytes of postcard. A connection
//! carries one request, then its reply, then the next request: callers keep a small pool of
//! idle connections per peer and open another when all are busy. Bounds: a frame is at most
//! [`FRAME_BYTES_MAX`]; a peer's pool keeps at most [`IDLE_CONNS_PER_PEER_MAX`] idle
//! connections; the server accepts at most [`SERVER_CONNS_MAX`] at once.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tribune_core::fsm::Request;
use tribune_core::fsm::Response;
use tribune_core::raft::rpc::RaftRpc;
use tribune_core::raft::rpc::RaftRpcReply;

use super::Types;

/// Largest frame accepted (a whole snapshot travels in one frame).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Idle connections kept per peer.
pub const IDLE_CONNS_PER_PEER_MAX: usize = 64;
/// Connections the RPC server serves at once; more wait in the listen backlog.
pub const SERVER_CONNS_MAX: usize = 512;

/// Everything one server says to another on 8300.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Raft(RaftRpc<Types>),
    /// A write forwarded by a server that is not the leader.
    Write(Request),
    /// "Who are you?" — for cluster formation.
    Hello,
    /// Confirm leadership and return the read index (for a follower's linearizable read).
    ReadIndex,
    /// Make this server a voter (sent to the leader by a server joining a formed cluster).
    Join { id: u64, addr: String },
    /// Remove a server from the voters (sent to the leader).
    Remove { id: u64 },
    /// An HTTP request a client agent forwards to a server.
    Http(crate::forward::HttpCall),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Raft(RaftRpcReply<Types>),
    Written(Response),
    /// Not the leader; the leader's RPC address if known.
    NotLeader(Option<String>),
    Failed(String),
    /// Reply to `Hello`: Raft node id, node name, datacenter, whether it is a server.
    Hello { id: u64, name: String, datacenter: String, cluster_formed: bool },
    /// The log index a read must see applied.
    ReadIndex(u64),
    /// A membership change (join or remove) is committed.
    Done,
    /// The server's response to a forwarded HTTP request.
    Http(crate::forward::HttpReply),
}

pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> io::Result<()> {
    let body = postcard::to_allocvec(msg).map_err(io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    write_raw(stream, &body).await
}

pub async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    let body = read_raw(stream, FRAME_BYTES_MAX).await?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Write one frame: a 4-byte big-endian length, then the bytes.
pub async fn write_raw(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    stream.write_all(&buf).await
}

/// Read one frame of at most `max` bytes; a longer one is refused before it is read.
pub async fn read_raw(stream: &mut TcpStream, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {max}")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Outgoing connections, pooled per peer.
#[derive(Default, Clone)]
pub struct Pool {
    idle: Arc<Mutex<BTreeMap<SocketAddr, Vec<TcpStream>>>>,
}

impl Pool {
    /// Send `rpc` to `peer` and wait at most `ttl` for the reply.
    pub async fn call(&self, peer: SocketAddr, rpc: &Rpc, ttl: Duration) -> io::Result<RpcReply> {
        match tokio::time::timeout(ttl, self.call_inner(peer, rpc)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("rpc to {peer} timed out"))),
        }
    }

    async fn call_inner(&self, peer: SocketAddr, rpc: &Rpc) -> io::Result<RpcReply> {
        let pooled = self.idle.lock().unwrap().get_mut(&peer).and_then(Vec::pop);
        let mut stream = match pooled {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(peer).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        write_frame(&mut stream, rpc).await?;
        let reply = read_frame(&mut stream).await?;
        let mut idle = self.idle.lock().unwrap();
        let conns = idle.entry(peer).or_default();
        if conns.len() < IDLE_CONNS_PER_PEER_MAX {
            conns.push(stream);
        }
        Ok(reply)
    }
}

/// Serve RPCs on `listener` with `handle` until the listener fails.
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Rpc) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = RpcReply> + Send,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(SERVER_CONNS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let rpc: Rpc = match read_frame(&mut stream).await {
                    Ok(r) => r,
                    Err(_) => return, // closed, or garbage: drop the connection
                };
                let reply = handle(rpc).await;
                if write_frame(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_oversized_frames_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |rpc| async move {
            match rpc {
                Rpc::Hello => RpcReply::Hello { id: 7, name: "n".into(), datacenter: "dc1".into(), cluster_formed: false },
                _ => RpcReply::Failed("no".into()),
            }
        }));
        let pool = Pool::default();
        for _ in 0..3 {
            let r = pool.call(addr, &Rpc::Hello, Duration::from_secs(5)).await.unwrap();
            assert!(matches!(r, RpcReply::Hello { id: 7, .. }));
        }
        assert_eq!(pool.idle.lock().unwrap()[&addr].len(), 1, "one connection reused");

        // A peer announcing a huge frame is disconnected, not served.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "server closed the connection");
    }
}
