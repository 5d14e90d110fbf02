//! Server RPC on port 8300: length-prefixed postcard frames over TCP.
//!
//! A frame is a 4-byte big-endian length and that many bytes of postcard. A connection
//! carries one request, then its reply, then the next request: callers keep a small pool of
//! idle connections per peer and open another when all are busy.
//!
//! A connection whose first request is [`Rpc::Mux`] is multiplexed instead: every later frame
//! is `(id, Rpc)` one way and `(id, RpcReply)` the other, requests are served concurrently and
//! replies come back in completion order; frames queued together go out in one write. Writes
//! and read-index requests a follower forwards to its leader share one such connection per
//! peer ([`Pool::call_mux`]), so many in-flight requests cost a few syscalls, not a
//! connection and two syscalls each.
//!
//! Bounds: a frame is at most [`FRAME_BYTES_MAX`]; a peer's pool keeps at most
//! [`IDLE_CONNS_PER_PEER_MAX`] idle connections; the server accepts at most
//! [`SERVER_CONNS_MAX`] at once and serves at most [`MUX_INFLIGHT_MAX`] requests at once on
//! one multiplexed connection (more wait, unread, in the socket).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tribune_core::raft::rpc::PeerReply;
use tribune_core::raft::rpc::PeerRpc;

use super::Types;

/// Largest frame accepted (a whole snapshot travels in one frame).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Idle connections kept per peer.
pub const IDLE_CONNS_PER_PEER_MAX: usize = 64;
/// Connections the RPC server serves at once; more wait in the listen backlog.
pub const SERVER_CONNS_MAX: usize = 512;
/// Requests served at once on one multiplexed connection.
pub const MUX_INFLIGHT_MAX: usize = 1024;
/// Queued frames are coalesced into writes of about this size.
const MUX_WRITE_BYTES: usize = 64 << 10;

/// Everything said on 8300.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// From another server: Raft, forwarded writes and read-index requests, hellos (served
    /// by the cluster engine).
    Peer(PeerRpc<Types>),
    /// An HTTP request a client agent forwards to a server (only the paths client agents
    /// forward are served: `forward::is_forwarded`).
    Http(crate::forward::HttpCall),
    /// First frame of a multiplexed connection (see the module docs); answered `Done`.
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
    Http(crate::forward::HttpReply),
}

pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> io::Result<()> {
    stream.write_all(&encode_frame(msg)?).await
}

/// One frame, length prefix included.
fn encode_frame<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4]).map_err(io::Error::other)?;
    let len = buf.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
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
pub async fn read_raw<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> io::Result<Vec<u8>> {
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

/// Outgoing connections, pooled per peer, and one multiplexed connection per peer.
#[derive(Default, Clone)]
pub struct Pool {
    idle: Arc<Mutex<BTreeMap<SocketAddr, Vec<TcpStream>>>>,
    mux: Arc<Mutex<BTreeMap<SocketAddr, Arc<MuxSlot>>>>,
}

/// A peer's multiplexed connection; the async lock makes concurrent callers share one connect.
#[derive(Default)]
struct MuxSlot {
    conn: tokio::sync::Mutex<Option<Arc<MuxConn>>>,
}

type Waiters = Mutex<BTreeMap<u64, oneshot::Sender<RpcReply>>>;

struct MuxConn {
    frames: mpsc::Sender<Vec<u8>>,
    /// Calls waiting for their reply, by id; dropped (the calls fail) when the connection dies.
    waiting: Arc<Waiters>,
    next_id: AtomicU64,
    dead: Arc<AtomicBool>,
}

/// Removes a call's waiter when the call ends (answered, failed or timed out).
struct Forget<'a>(&'a Waiters, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

impl MuxConn {
    async fn open(peer: SocketAddr) -> io::Result<MuxConn> {
        let mut stream = TcpStream::connect(peer).await?;
        stream.set_nodelay(true)?;
        write_frame(&mut stream, &Rpc::Mux).await?;
        match read_frame(&mut stream).await? {
            RpcReply::Done => {}
            other => return Err(io::Error::other(format!("{peer} refused a multiplexed connection: {other:?}"))),
        }
        let (mut rd, mut wr) = stream.into_split();
        let (frames, mut queued) = mpsc::channel::<Vec<u8>>(MUX_INFLIGHT_MAX);
        let waiting: Arc<Waiters> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (w, d) = (waiting.clone(), dead.clone());
        tokio::spawn(async move {
            let _ = write_coalesced(&mut wr, &mut queued).await;
            d.store(true, Ordering::SeqCst);
            w.lock().unwrap().clear();
        });
        let (w, d) = (waiting.clone(), dead.clone());
        tokio::spawn(async move {
            while let Ok(body) = read_raw(&mut rd, FRAME_BYTES_MAX).await {
                let Ok((id, reply)) = postcard::from_bytes::<(u64, RpcReply)>(&body) else { break };
                if let Some(tx) = w.lock().unwrap().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            d.store(true, Ordering::SeqCst);
            w.lock().unwrap().clear();
        });
        Ok(MuxConn { frames, waiting, next_id: AtomicU64::new(1), dead })
    }

    async fn call(&self, rpc: &Rpc) -> io::Result<RpcReply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&(id, rpc))?;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        let _forget = Forget(&self.waiting, id);
        if self.dead.load(Ordering::SeqCst) || self.frames.send(frame).await.is_err() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "multiplexed connection closed"));
        }
        rx.await.map_err(|_| io::Error::new(io::ErrorKind::ConnectionAborted, "multiplexed connection closed"))
    }
}

/// Write queued frames, as many per write as are queued (up to about [`MUX_WRITE_BYTES`]).
async fn write_coalesced<W: AsyncWrite + Unpin>(wr: &mut W, queued: &mut mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(first) = queued.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < MUX_WRITE_BYTES {
            match queued.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        wr.write_all(&buf).await?;
    }
    Ok(())
}

impl Pool {
    /// Send `rpc` to `peer` over the peer's multiplexed connection (opened on first use,
    /// reopened after it fails) and wait at most `ttl` for the reply. A peer that refuses
    /// multiplexing is called over a pooled connection.
    pub async fn call_mux(&self, peer: SocketAddr, rpc: &Rpc, ttl: Duration) -> io::Result<RpcReply> {
        let work = async {
            let slot = self.mux.lock().unwrap().entry(peer).or_default().clone();
            let conn = {
                let mut c = slot.conn.lock().await;
                match &*c {
                    Some(conn) if !conn.dead.load(Ordering::SeqCst) => Some(conn.clone()),
                    _ => match MuxConn::open(peer).await {
                        Ok(conn) => {
                            let conn = Arc::new(conn);
                            *c = Some(conn.clone());
                            Some(conn)
                        }
                        Err(_) => {
                            *c = None;
                            None
                        }
                    },
                }
            };
            match conn {
                Some(conn) => conn.call(rpc).await,
                None => self.call_inner(peer, rpc).await,
            }
        };
        match tokio::time::timeout(ttl, work).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("rpc to {peer} timed out"))),
        }
    }

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
                if let Rpc::Mux = rpc {
                    if write_frame(&mut stream, &RpcReply::Done).await.is_ok() {
                        serve_mux(stream, handle).await;
                    }
                    return;
                }
                let reply = handle(rpc).await;
                if write_frame(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Serve a multiplexed connection: each request in its own task, at most
/// [`MUX_INFLIGHT_MAX`] at once, replies coalesced into as few writes as possible.
async fn serve_mux<H, F>(stream: TcpStream, handle: H)
where
    H: Fn(Rpc) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = RpcReply> + Send,
{
    let (mut rd, mut wr) = stream.into_split();
    let (replies, mut queued) = mpsc::channel::<Vec<u8>>(MUX_INFLIGHT_MAX);
    let writer = tokio::spawn(async move { write_coalesced(&mut wr, &mut queued).await });
    let inflight = Arc::new(tokio::sync::Semaphore::new(MUX_INFLIGHT_MAX));
    while let Ok(body) = read_raw(&mut rd, FRAME_BYTES_MAX).await {
        let Ok((id, rpc)) = postcard::from_bytes::<(u64, Rpc)>(&body) else { break };
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        let (handle, replies) = (handle.clone(), replies.clone());
        tokio::spawn(async move {
            let reply = handle(rpc).await;
            // A reply too large to frame fails the call; the caller times out and retries.
            let frame = encode_frame(&(id, reply)).or_else(|e| encode_frame(&(id, RpcReply::Failed(e.to_string()))));
            if let Ok(frame) = frame {
                let _ = replies.send(frame).await;
            }
            drop(permit);
        });
    }
    // The peer closed (or sent garbage): requests in flight still finish and their
    // replies are written, then the writer ends with the last sender.
    drop(replies);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: Rpc = Rpc::Peer(PeerRpc::Hello);

    fn numbered(i: u64) -> Rpc {
        Rpc::Http(crate::forward::HttpCall { method: "GET".into(), uri: i.to_string(), headers: Vec::new(), body: Vec::new() })
    }

    fn index(i: u64) -> RpcReply {
        RpcReply::Peer(PeerReply::ReadIndex(i))
    }

    async fn futures_join_all<F: std::future::Future + Send + 'static>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = fs.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_multiplexed_connection_that_dies_fails_its_calls_and_is_reopened() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let p = pool.clone();
        let call = tokio::spawn(async move { p.call_mux(addr, &HELLO, Duration::from_secs(5)).await });
        // a peer that accepts the multiplexed connection, reads one request and hangs up
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(matches!(read_frame::<Rpc>(&mut s).await.unwrap(), Rpc::Mux));
        write_frame(&mut s, &RpcReply::Done).await.unwrap();
        read_raw(&mut s, FRAME_BYTES_MAX).await.unwrap();
        drop(s);
        assert!(call.await.unwrap().is_err(), "the call fails with its connection, before its timeout");
        tokio::spawn(serve(listener, |_| async { index(9) }));
        let r = pool.call_mux(addr, &HELLO, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(r, RpcReply::Peer(PeerReply::ReadIndex(9))), "{r:?}");
    }

    #[tokio::test]
    async fn round_trip_and_oversized_frames_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |rpc| async move {
            match rpc {
                Rpc::Peer(PeerRpc::Hello) => RpcReply::Peer(PeerReply::Hello(tribune_core::raft::rpc::Hello {
                    id: 7,
                    name: "n".into(),
                    datacenter: "dc1".into(),
                    cluster_formed: false,
                })),
                Rpc::Http(call) => {
                    let id: u64 = call.uri.parse().unwrap();
                    // later requests finish first
                    tokio::time::sleep(Duration::from_millis(200 - id)).await;
                    index(id)
                }
                _ => RpcReply::Failed("no".into()),
            }
        }));
        let pool = Pool::default();
        for _ in 0..3 {
            let r = pool.call(addr, &HELLO, Duration::from_secs(5)).await.unwrap();
            assert!(matches!(r, RpcReply::Peer(PeerReply::Hello(ref h)) if h.id == 7));
        }
        assert_eq!(pool.idle.lock().unwrap()[&addr].len(), 1, "one connection reused");

        // Multiplexed: concurrent calls on one connection, each gets its own reply, in
        // whatever order the server finishes them.
        let replies = futures_join_all((0..200u64).map(|i| {
            let pool = pool.clone();
            async move { (i, pool.call_mux(addr, &numbered(i), Duration::from_secs(5)).await.unwrap()) }
        }))
        .await;
        for (i, r) in replies {
            assert!(matches!(r, RpcReply::Peer(PeerReply::ReadIndex(n)) if n == i), "{i}: {r:?}");
        }
        assert_eq!(pool.mux.lock().unwrap().len(), 1, "one multiplexed connection");

        // A peer announcing a huge frame is disconnected, not served.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "server closed the connection");
    }
}
