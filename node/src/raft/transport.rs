//! Server RPC on port 8300: length-prefixed postcard frames of [`crate::wire`]'s messages
//! over TCP.
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
//!
//! Memory follows the bytes that actually arrived, not what a header announces: a frame's
//! buffer grows as its body is read, in steps of [`READ_STEP_BYTES`] doubling from there, so
//! it holds at most twice the bytes received (at least one step, at most the frame). A
//! peer announcing 64 MiB and sending 10 bytes costs 64 KiB.
//!
//! Time bounds of served connections ([`Timeouts`], defaults below): a connection waiting
//! for its next request longer than [`SERVER_IDLE_TIMEOUT`] (60 s) is closed, but not
//! while one of its requests is still being served (a forwarded blocking query may run
//! for minutes); once a frame's first byte has arrived, the rest of it must arrive within
//! [`FRAME_READ_TIMEOUT`] (10 s) plus 1 s per MiB it announces, and a reply must be
//! written within the same allowance, or the connection is closed. So silent or trickling
//! peers hold one of the [`SERVER_CONNS_MAX`] slots for a minute at most.
//!
//! Callers do not reuse a pooled or multiplexed connection idle for [`POOL_IDLE_MAX`]
//! (30 s, half the server's idle timeout, so a request does not race the server closing
//! the connection), nor a pooled one the peer has closed (a non-blocking peek finds its
//! end of stream): the call goes to another or a fresh connection instead.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::wire::Rpc;
use crate::wire::RpcError;
use crate::wire::RpcReply;
use crate::wire::FRAME_BYTES_MAX;

/// Idle connections kept per peer.
pub const IDLE_CONNS_PER_PEER_MAX: usize = 64;
/// Connections the RPC server serves at once; more wait in the listen backlog.
pub const SERVER_CONNS_MAX: usize = 512;
/// Requests served at once on one multiplexed connection.
pub const MUX_INFLIGHT_MAX: usize = 1024;
/// Queued frames are coalesced into writes of about this size.
const MUX_WRITE_BYTES: usize = 64 << 10;
/// A frame's body is read into a buffer grown by this much at first, then doubling.
pub const READ_STEP_BYTES: usize = 64 << 10;
/// A served connection with no request for this long (and none running) is closed.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Once a frame has started to arrive, the rest must within this (plus 1 s per MiB).
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled or multiplexed client connection idle this long is not used again.
pub const POOL_IDLE_MAX: Duration = Duration::from_secs(30);

pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> io::Result<()> {
    stream.write_all(&encode_frame(msg)?).await
}

/// One frame, length prefix included.
pub(crate) fn encode_frame<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4]).map_err(io::Error::other)?;
    let len = buf.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

pub async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    decode(&read_raw(stream, FRAME_BYTES_MAX).await?)
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    postcard::from_bytes(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Read one frame of at most `max` bytes; a longer one is refused before it is read, and
/// memory is taken as the bytes arrive (see the module docs).
async fn read_raw<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = frame_len(header, max)?;
    let mut body = Vec::new();
    read_body(stream, len, &mut body).await?;
    Ok(body)
}

fn frame_len(header: [u8; 4], max: usize) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    Ok(len)
}

/// Read a frame's `len` bytes into `body`, growing it only as they arrive: at first by
/// [`READ_STEP_BYTES`], then doubling, never past `len`.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    len: usize,
    body: &mut Vec<u8>,
) -> io::Result<()> {
    while body.len() < len {
        if body.len() == body.capacity() {
            body.reserve_exact(body.capacity().max(READ_STEP_BYTES).min(len - body.len()));
        }
        let room = (body.capacity() - body.len()).min(len - body.len());
        if (&mut *stream).take(room as u64).read_buf(body).await? == 0 {
            let msg = format!("frame cut short: {} of {len} bytes", body.len());
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
        }
    }
    Ok(())
}

/// How long a frame of `len` bytes may take to arrive, or to be written: `base` plus 1 s
/// per MiB (a 64 MiB snapshot at 1 MiB/s still makes it).
fn frame_allowance(base: Duration, len: usize) -> Duration {
    base + Duration::from_secs((len >> 20) as u64)
}

fn too_slow(_: tokio::time::error::Elapsed) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "frame too slow")
}

/// Read one request frame on a served connection: wait up to `t.idle` for its first byte
/// (and on while `busy()`: a request of this connection is still being served), then up
/// to [`frame_allowance`] for the rest.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    t: &Timeouts,
    busy: impl Fn() -> bool,
) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    loop {
        // `read` is cancel-safe: a timeout loses no byte.
        match tokio::time::timeout(t.idle, stream.read(&mut header[..1])).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) if busy() => continue,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle")),
        }
    }
    let started = tokio::time::Instant::now();
    tokio::time::timeout_at(started + t.frame, stream.read_exact(&mut header[1..]))
        .await
        .map_err(too_slow)??;
    let len = frame_len(header, FRAME_BYTES_MAX)?;
    let mut body = Vec::new();
    tokio::time::timeout_at(
        started + frame_allowance(t.frame, len),
        read_body(stream, len, &mut body),
    )
    .await
    .map_err(too_slow)??;
    Ok(body)
}

/// Write `bytes` within [`frame_allowance`] (a peer that stops reading is let go).
async fn write_timed<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    base: Duration,
) -> io::Result<()> {
    tokio::time::timeout(frame_allowance(base, bytes.len()), wr.write_all(bytes))
        .await
        .map_err(too_slow)?
}

/// Whether a pooled connection can carry a request: the peer has not closed it and nothing
/// unread waits on it (between a reply and the next request there never is).
#[allow(unsafe_code)] // a non-blocking MSG_PEEK recv: tokio offers no synchronous peek
fn idle_conn_usable(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a non-blocking peek of one byte into a local, on the descriptor `s` owns.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// An idle pooled connection and the time it was put back.
type IdleConn = (TcpStream, Instant);

/// Outgoing connections, pooled per peer, and one multiplexed connection per peer.
#[derive(Clone)]
pub struct Pool {
    idle: Arc<Mutex<BTreeMap<SocketAddr, Vec<IdleConn>>>>,
    mux: Arc<Mutex<BTreeMap<SocketAddr, Arc<MuxSlot>>>>,
    /// Connections idle this long are not used again ([`POOL_IDLE_MAX`]).
    idle_max: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Arc::default(),
            mux: Arc::default(),
            idle_max: POOL_IDLE_MAX,
        }
    }
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
    /// When a call last started or got its reply.
    last_used: Arc<Mutex<Instant>>,
}

/// Removes a call's waiter when the call ends (answered, failed or timed out).
struct Forget<'a>(&'a Waiters, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

impl MuxConn {
    async fn open(peer: SocketAddr) -> io::Result<MuxConn> {
        let mut stream = TcpStream::connect(peer).await?;
        stream.set_nodelay(true)?;
        write_frame(&mut stream, &Rpc::Mux).await?;
        match read_frame(&mut stream).await? {
            RpcReply::Done => {}
            other => {
                return Err(io::Error::other(format!(
                    "{peer} refused a multiplexed connection: {other:?}"
                )))
            }
        }
        let (mut rd, mut wr) = stream.into_split();
        let (frames, mut queued) = mpsc::channel::<Vec<u8>>(MUX_INFLIGHT_MAX);
        let waiting: Arc<Waiters> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (w, d) = (waiting.clone(), dead.clone());
        tokio::spawn(async move {
            let _ = write_coalesced(&mut wr, &mut queued, None).await;
            d.store(true, Ordering::SeqCst);
            w.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
        let last_used = Arc::new(Mutex::new(Instant::now()));
        let (w, d, used) = (waiting.clone(), dead.clone(), last_used.clone());
        tokio::spawn(async move {
            while let Ok(body) = read_raw(&mut rd, FRAME_BYTES_MAX).await {
                let Ok((id, reply)) = postcard::from_bytes::<(u64, RpcReply)>(&body) else {
                    break;
                };
                *used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                if let Some(tx) = w.lock().unwrap_or_else(PoisonError::into_inner).remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            d.store(true, Ordering::SeqCst);
            w.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
        Ok(MuxConn {
            frames,
            waiting,
            next_id: AtomicU64::new(1),
            dead,
            last_used,
        })
    }

    /// Alive, and busy or used within `idle_max` (else the server may be closing it).
    fn usable(&self, idle_max: Duration) -> bool {
        !self.dead.load(Ordering::SeqCst)
            && (!self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
                || self
                    .last_used
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .elapsed()
                    < idle_max)
    }

    async fn call(&self, rpc: &Rpc) -> io::Result<RpcReply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&(id, rpc))?;
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let _forget = Forget(&self.waiting, id);
        if self.dead.load(Ordering::SeqCst) || self.frames.send(frame).await.is_err() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "multiplexed connection closed",
            ));
        }
        rx.await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "multiplexed connection closed",
            )
        })
    }
}

/// Write queued frames, as many per write as are queued (up to about [`MUX_WRITE_BYTES`]);
/// with `timeout`, each write within [`frame_allowance`] of it.
async fn write_coalesced<W: AsyncWrite + Unpin>(
    wr: &mut W,
    queued: &mut mpsc::Receiver<Vec<u8>>,
    timeout: Option<Duration>,
) -> io::Result<()> {
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
        match timeout {
            Some(base) => write_timed(wr, &buf, base).await?,
            None => wr.write_all(&buf).await?,
        }
    }
    Ok(())
}

impl Pool {
    /// Send `rpc` to `peer` over the peer's multiplexed connection (opened on first use,
    /// reopened after it fails) and wait at most `ttl` for the reply. A peer that refuses
    /// multiplexing is called over a pooled connection.
    pub async fn call_mux(
        &self,
        peer: SocketAddr,
        rpc: &Rpc,
        ttl: Duration,
    ) -> io::Result<RpcReply> {
        let work = async {
            let slot = self
                .mux
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(peer)
                .or_default()
                .clone();
            let conn = {
                let mut c = slot.conn.lock().await;
                match &*c {
                    Some(conn) if conn.usable(self.idle_max) => Some(conn.clone()),
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
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("rpc to {peer} timed out"),
            )),
        }
    }

    /// Send `rpc` to `peer` and wait at most `ttl` for the reply.
    pub async fn call(&self, peer: SocketAddr, rpc: &Rpc, ttl: Duration) -> io::Result<RpcReply> {
        match tokio::time::timeout(ttl, self.call_inner(peer, rpc)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("rpc to {peer} timed out"),
            )),
        }
    }

    async fn call_inner(&self, peer: SocketAddr, rpc: &Rpc) -> io::Result<RpcReply> {
        let frame = encode_frame(rpc)?;
        let mut stream = loop {
            match self.take_idle(peer) {
                // A failed write never delivered the whole request: try another connection.
                Some(mut s) => {
                    if s.write_all(&frame).await.is_ok() {
                        break s;
                    }
                }
                None => {
                    let mut s = TcpStream::connect(peer).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&frame).await?;
                    break s;
                }
            }
        };
        // A reply that does not come is not retried: the request may have been served.
        let reply = read_frame(&mut stream).await?;
        self.put_idle(peer, stream);
        Ok(reply)
    }

    /// The most recently used idle connection to `peer` that is still usable; the stale
    /// and closed ones met on the way are dropped.
    fn take_idle(&self, peer: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let conns = idle.get_mut(&peer)?;
        while let Some((s, since)) = conns.pop() {
            if since.elapsed() < self.idle_max && idle_conn_usable(&s) {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, peer: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let conns = idle.entry(peer).or_default();
        conns.retain(|(_, since)| since.elapsed() < self.idle_max);
        if conns.len() < IDLE_CONNS_PER_PEER_MAX {
            conns.push((stream, Instant::now()));
        }
    }
}

/// The time bounds of served connections (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a connection may wait for its next request while none of its is running.
    pub idle: Duration,
    /// How long the rest of a frame may take once its first byte arrived, and a reply
    /// frame to be written; both plus 1 s per MiB.
    pub frame: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: SERVER_IDLE_TIMEOUT,
            frame: FRAME_READ_TIMEOUT,
        }
    }
}

/// Serve RPCs on `listener` with `handle` until the listener fails.
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Rpc) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = RpcReply> + Send,
{
    serve_with(listener, Timeouts::default(), handle).await
}

/// [`serve`] with the given timeouts.
pub async fn serve_with<H, F>(listener: TcpListener, timeouts: Timeouts, handle: H)
where
    H: Fn(Rpc) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = RpcReply> + Send,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(SERVER_CONNS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let rpc: Rpc = match read_request(&mut stream, &timeouts, || false)
                    .await
                    .and_then(|b| decode(&b))
                {
                    Ok(r) => r,
                    Err(_) => return, // closed, idle, too slow, or garbage: drop the connection
                };
                if let Rpc::Mux = rpc {
                    let done = encode_frame(&RpcReply::Done).expect("a small frame");
                    if write_timed(&mut stream, &done, timeouts.frame)
                        .await
                        .is_ok()
                    {
                        serve_mux(stream, timeouts, handle).await;
                    }
                    return;
                }
                let reply = handle(rpc).await;
                // A reply too large to frame fails the call (the connection is dropped).
                let Ok(frame) = encode_frame(&reply) else {
                    return;
                };
                if write_timed(&mut stream, &frame, timeouts.frame)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Serve a multiplexed connection: each request in its own task, at most
/// [`MUX_INFLIGHT_MAX`] at once, replies coalesced into as few writes as possible.
async fn serve_mux<H, F>(stream: TcpStream, timeouts: Timeouts, handle: H)
where
    H: Fn(Rpc) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = RpcReply> + Send,
{
    let (mut rd, mut wr) = stream.into_split();
    let (replies, mut queued) = mpsc::channel::<Vec<u8>>(MUX_INFLIGHT_MAX);
    let writer =
        tokio::spawn(
            async move { write_coalesced(&mut wr, &mut queued, Some(timeouts.frame)).await },
        );
    let inflight = Arc::new(tokio::sync::Semaphore::new(MUX_INFLIGHT_MAX));
    // Not idle while a request is being served (its permit is held until its reply is queued).
    let busy = || inflight.available_permits() < MUX_INFLIGHT_MAX;
    while let Ok(body) = read_request(&mut rd, &timeouts, busy).await {
        let Ok((id, rpc)) = postcard::from_bytes::<(u64, Rpc)>(&body) else {
            break;
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let (handle, replies) = (handle.clone(), replies.clone());
        tokio::spawn(async move {
            let reply = handle(rpc).await;
            // A reply too large to frame fails the call; the caller times out and retries.
            let frame = encode_frame(&(id, reply)).or_else(|e| {
                let failed = RpcReply::Failed(RpcError::TooLarge(e.to_string()));
                encode_frame(&(id, failed))
            });
            if let Ok(frame) = frame {
                let _ = replies.send(frame).await;
            }
            drop(permit);
        });
    }
    // The peer closed, went idle, was too slow or sent garbage: requests in flight still
    // finish and their replies are written, then the writer ends with the last sender.
    drop(replies);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use tribune_core::raft::rpc::PeerReply;
    use tribune_core::raft::rpc::PeerRpc;

    use super::*;

    const HELLO: Rpc = Rpc::Peer(PeerRpc::Hello);

    fn numbered(i: u64) -> Rpc {
        Rpc::Http(crate::wire::HttpCall {
            method: "GET".into(),
            uri: i.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    fn index(i: u64) -> RpcReply {
        RpcReply::Peer(PeerReply::ReadIndex(i))
    }

    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        fs: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
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
        let call =
            tokio::spawn(async move { p.call_mux(addr, &HELLO, Duration::from_secs(5)).await });
        // a peer that accepts the multiplexed connection, reads one request and hangs up
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(matches!(read_frame::<Rpc>(&mut s).await.unwrap(), Rpc::Mux));
        write_frame(&mut s, &RpcReply::Done).await.unwrap();
        read_raw(&mut s, FRAME_BYTES_MAX).await.unwrap();
        drop(s);
        assert!(
            call.await.unwrap().is_err(),
            "the call fails with its connection, before its timeout"
        );
        tokio::spawn(serve(listener, |_| async { index(9) }));
        let r = pool
            .call_mux(addr, &HELLO, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            matches!(r, RpcReply::Peer(PeerReply::ReadIndex(9))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn round_trip_and_oversized_frames_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |rpc| async move {
            match rpc {
                Rpc::Peer(PeerRpc::Hello) => {
                    RpcReply::Peer(PeerReply::Hello(tribune_core::raft::rpc::Hello {
                        id: 7,
                        name: "n".into(),
                        datacenter: "dc1".into(),
                        cluster_formed: false,
                    }))
                }
                Rpc::Http(call) => {
                    let id: u64 = call.uri.parse().unwrap();
                    // later requests finish first
                    tokio::time::sleep(Duration::from_millis(200 - id)).await;
                    index(id)
                }
                _ => RpcReply::Failed(RpcError::NotReady),
            }
        }));
        let pool = Pool::default();
        for _ in 0..3 {
            let r = pool
                .call(addr, &HELLO, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(matches!(r, RpcReply::Peer(PeerReply::Hello(ref h)) if h.id == 7));
        }
        assert_eq!(
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner)[&addr].len(),
            1,
            "one connection reused"
        );

        // Multiplexed: concurrent calls on one connection, each gets its own reply, in
        // whatever order the server finishes them.
        let replies = futures_join_all((0..200u64).map(|i| {
            let pool = pool.clone();
            async move {
                (
                    i,
                    pool.call_mux(addr, &numbered(i), Duration::from_secs(5))
                        .await
                        .unwrap(),
                )
            }
        }))
        .await;
        for (i, r) in replies {
            assert!(
                matches!(r, RpcReply::Peer(PeerReply::ReadIndex(n)) if n == i),
                "{i}: {r:?}"
            );
        }
        assert_eq!(
            pool.mux
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            1,
            "one multiplexed connection"
        );

        // A peer announcing a huge frame is disconnected, not served.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            s.read(&mut buf).await.unwrap(),
            0,
            "server closed the connection"
        );
    }

    // ---- allocation tracking: the largest single allocation made on this thread ----

    struct Tracking;

    thread_local! {
        static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    #[allow(unsafe_code)] // a counting allocator, in this test only
    unsafe impl std::alloc::GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            note(layout.size());
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            note(layout.size());
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            note(new_size);
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Tracking = Tracking;

    /// The largest allocation this thread makes in `f` (a current-thread runtime runs every
    /// task, the server's included, on the test's thread).
    async fn largest_allocation<F: std::future::Future>(f: F) -> (F::Output, usize) {
        LARGEST.set(0);
        let out = f.await;
        (out, LARGEST.get())
    }

    const ANNOUNCED: u32 = 64 << 20;

    #[tokio::test]
    async fn a_frame_is_allocated_as_its_bytes_arrive_not_as_its_header_claims() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(&ANNOUNCED.to_be_bytes()).await.unwrap();
        client.write_all(&[1u8; 10]).await.unwrap();
        drop(client);
        let (read, largest) = largest_allocation(read_raw(&mut server, FRAME_BYTES_MAX)).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            largest <= 256 << 10,
            "a 64 MiB header and 10 bytes made a {largest}-byte allocation"
        );

        // a whole frame still arrives whole, in steps
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let body: Vec<u8> = (0..(3 << 20) + 17).map(|i| i as u8).collect();
        let sent = body.clone();
        tokio::spawn(async move {
            client
                .write_all(&(sent.len() as u32).to_be_bytes())
                .await
                .unwrap();
            client.write_all(&sent).await.unwrap();
        });
        assert_eq!(read_raw(&mut server, FRAME_BYTES_MAX).await.unwrap(), body);
    }

    #[tokio::test]
    async fn the_server_does_not_allocate_what_a_header_announces() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |_| async { RpcReply::Done }));
        let (_client, largest) = largest_allocation(async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&ANNOUNCED.to_be_bytes()).await.unwrap();
            s.write_all(&[1u8; 10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            s
        })
        .await;
        assert!(
            largest <= 256 << 10,
            "the server made a {largest}-byte allocation for 14 bytes received"
        );
    }

    const QUICK: Timeouts = Timeouts {
        idle: Duration::from_millis(300),
        frame: Duration::from_millis(300),
    };

    async fn quick_server(timeouts: Timeouts) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, timeouts, |rpc| async move {
            match rpc {
                // a slow request: `id` milliseconds
                Rpc::Http(call) => {
                    let id: u64 = call.uri.parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(id)).await;
                    index(id)
                }
                _ => index(1),
            }
        }));
        addr
    }

    /// Wait (at most `within`) for the peer to close `s`; how long that took.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(within.saturating_sub(t0.elapsed()), s.read(&mut buf)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the server kept the connection open for {within:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let addr = quick_server(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut s, Duration::from_secs(2)).await;
        assert!(
            took >= Duration::from_millis(250),
            "closed after {took:?}, before the idle timeout"
        );

        // and one idle after a request, too
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut s, &HELLO).await.unwrap();
        assert!(matches!(
            read_frame(&mut s).await.unwrap(),
            RpcReply::Peer(PeerReply::ReadIndex(1))
        ));
        closed_within(&mut s, Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_frame_trickling_in_is_cut_after_the_frame_timeout() {
        // idle timeout far off: only the frame timeout can end this
        let addr = quick_server(Timeouts {
            idle: Duration::from_secs(30),
            frame: Duration::from_millis(300),
        })
        .await;
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let trickle = tokio::spawn(async move {
            wr.write_all(&100u32.to_be_bytes()).await?;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                wr.write_all(&[0u8]).await?;
            }
            io::Result::Ok(())
        });
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(2), rd.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the slow frame is still being read after 2 s: {closed:?}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "cut after {:?}",
            t0.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test]
    async fn idle_connections_filling_the_cap_time_out_and_a_new_client_is_served() {
        let addr = quick_server(QUICK).await;
        let mut idle = Vec::new();
        for _ in 0..SERVER_CONNS_MAX {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // every permit is held by a silent connection; this one waits in the backlog until
        // the idle ones are dropped
        let pool = Pool::default();
        let r = pool.call(addr, &HELLO, Duration::from_secs(3)).await;
        assert!(
            matches!(r, Ok(RpcReply::Peer(PeerReply::ReadIndex(1)))),
            "{r:?}"
        );
        drop(idle);
    }

    #[tokio::test]
    async fn a_multiplexed_connection_is_closed_when_idle_but_not_while_a_request_runs() {
        let addr = quick_server(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut s, &Rpc::Mux).await.unwrap();
        assert!(matches!(read_frame(&mut s).await.unwrap(), RpcReply::Done));
        closed_within(&mut s, Duration::from_secs(2)).await;

        // a request running for three idle timeouts keeps its connection
        let pool = Pool::default();
        let r = pool
            .call_mux(addr, &numbered(900), Duration::from_secs(5))
            .await;
        assert!(
            matches!(r, Ok(RpcReply::Peer(PeerReply::ReadIndex(900)))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_not_failed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // a server that answers the first connection's request and then closes it (as an
        // idle timeout does), then serves as usual
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _: Rpc = read_frame(&mut s).await.unwrap();
            write_frame(&mut s, &index(1)).await.unwrap();
            drop(s);
            serve(listener, |_| async { index(2) }).await;
        });
        let pool = Pool::default();
        let r = pool.call(addr, &HELLO, Duration::from_secs(2)).await;
        assert!(
            matches!(r, Ok(RpcReply::Peer(PeerReply::ReadIndex(1)))),
            "{r:?}"
        );
        assert_eq!(
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner)[&addr].len(),
            1,
            "pooled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = pool.call(addr, &HELLO, Duration::from_secs(2)).await;
        assert!(
            matches!(r, Ok(RpcReply::Peer(PeerReply::ReadIndex(2)))),
            "the call went to a fresh connection: {r:?}"
        );
    }

    #[tokio::test]
    async fn connections_idle_past_the_pool_limit_are_not_reused() {
        let addr = quick_server(Timeouts {
            idle: Duration::from_secs(30),
            frame: Duration::from_secs(5),
        })
        .await;
        let pool = Pool {
            idle_max: Duration::from_millis(100),
            ..Pool::default()
        };
        let port = |pool: &Pool| {
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner)[&addr][0]
                .0
                .local_addr()
                .unwrap()
                .port()
        };
        pool.call(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        let first = port(&pool);
        pool.call(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(port(&pool), first, "reused while fresh");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.call(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        assert_ne!(
            port(&pool),
            first,
            "a new connection once the pooled one was idle too long"
        );
        assert_eq!(
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner)[&addr].len(),
            1,
            "the stale one is gone"
        );

        let conn = |pool: &Pool| {
            pool.mux.lock().unwrap_or_else(PoisonError::into_inner)[&addr]
                .conn
                .try_lock()
                .unwrap()
                .clone()
                .unwrap()
        };
        pool.call_mux(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        let first = conn(&pool);
        pool.call_mux(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&conn(&pool), &first), "reused while fresh");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.call_mux(addr, &HELLO, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(
            !Arc::ptr_eq(&conn(&pool), &first),
            "reopened once idle too long"
        );
    }
}
