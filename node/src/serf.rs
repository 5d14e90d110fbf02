//! The gossip shell: one task owns the core's [`Gossip`] state machine for a pool (LAN on
//! 8301, WAN on 8302), feeds it datagrams, push-pull streams, timer deadlines and commands,
//! and carries out its outputs.
//!
//! Push-pull streams are TCP on the same port: one frame each way, a 4-byte big-endian
//! length and that many bytes ([`STREAM_BYTES_MAX`] at most, refused before it is read).
//! Commands arrive on a bounded channel ([`COMMANDS_MAX`]); the member list is published to
//! readers after a step that changed it (the core's `members_version` moved), the counters
//! after every step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tribune_core::gossip;
use tribune_core::gossip::CommandError;
use tribune_core::gossip::Event;
use tribune_core::gossip::Gossip;
use tribune_core::gossip::Identity;
use tribune_core::gossip::MemberInfo;
use tribune_core::gossip::Millis;
use tribune_core::gossip::Output;

/// Largest push-pull frame read from a peer.
pub const STREAM_BYTES_MAX: usize = 4 << 20;
/// Commands waiting for the gossip task.
pub const COMMANDS_MAX: usize = 64;
/// Push-pull streams in flight at once (each has a 10 s deadline).
pub const STREAMS_MAX: usize = 64;
const STREAM_TTL: Duration = Duration::from_secs(10);

/// Why the pool did not do what it was asked, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// The pool's task has stopped (the agent is shutting down): nothing more can be asked.
    #[error("gossip stopped")]
    Stopped,
    /// This node has left the pool, or is leaving it: only a restart joins again.
    #[error("node has left")]
    Left,
    /// A join without an address: give one.
    #[error("no addresses to join")]
    NoAddresses,
    /// No member has that name: nothing to force out.
    #[error("unknown member")]
    NoSuchMember,
    /// A force-leave of this node itself: leave instead.
    #[error("cannot force-leave self")]
    IsSelf,
    /// Anything else the core refused (tags too large, keyring changes).
    #[error(transparent)]
    Refused(CommandError),
}

impl From<CommandError> for GossipError {
    fn from(e: CommandError) -> GossipError {
        match e {
            CommandError::NotRunning => GossipError::Left,
            CommandError::NoAddresses => GossipError::NoAddresses,
            CommandError::UnknownMember => GossipError::NoSuchMember,
            CommandError::IsSelf => GossipError::IsSelf,
            other => GossipError::Refused(other),
        }
    }
}

pub enum Command {
    Join(Vec<SocketAddr>, oneshot::Sender<Result<usize, GossipError>>),
    Leave(oneshot::Sender<Result<(), GossipError>>),
    ForceLeave {
        name: String,
        prune: bool,
        done: oneshot::Sender<Result<(), GossipError>>,
    },
}

/// A handle on a running pool.
#[derive(Clone)]
pub struct Pool {
    commands: mpsc::Sender<Command>,
    members: Arc<RwLock<Vec<MemberInfo>>>,
    counters: Arc<RwLock<gossip::Counters>>,
    pub label: &'static str,
    pub addr: SocketAddr,
}

enum Wake {
    Packet(Vec<u8>, SocketAddr),
    /// A push-pull request on an accepted connection, to be answered on it.
    Request(Vec<u8>, SocketAddr, oneshot::Sender<Option<Vec<u8>>>),
    /// The reply to one of our push-pull requests.
    Reply(Vec<u8>, SocketAddr),
    Command(Command),
    Deadline,
}

/// Read one push-pull frame: a 4-byte big-endian length, then that many bytes. A length
/// over [`STREAM_BYTES_MAX`] is refused before anything else is read, and the buffer grows
/// with the bytes that arrive, not with what the length announces.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    if len > STREAM_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("push-pull frame of {len} bytes exceeds {STREAM_BYTES_MAX}"),
        ));
    }
    let mut body = Vec::new();
    s.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("push-pull frame cut short: {} of {len} bytes", body.len()),
        ));
    }
    Ok(body)
}

/// Write one push-pull frame (at most [`STREAM_BYTES_MAX`], as a peer reads it).
async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.len() > STREAM_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "push-pull frame of {} bytes exceeds {STREAM_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(bytes);
    s.write_all(&frame).await
}

impl Pool {
    /// Bind UDP and TCP on `bind`, advertise `identity.addr`, and run the pool.
    pub async fn start(
        bind: SocketAddr,
        mut config: gossip::Config,
        identity: Identity,
        label: &'static str,
    ) -> std::io::Result<Pool> {
        // Start above any incarnation an earlier run of this node reached (see
        // `first_incarnation`): a restarted agent is seen with its new tags at once.
        config.first_incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let udp = Arc::new(UdpSocket::bind(bind).await?);
        let tcp = TcpListener::bind(bind).await?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        let start = Instant::now();
        let now = move || Millis(start.elapsed().as_millis() as u64);
        let advertise = identity.addr;
        let mut g = Gossip::new(now(), config, identity, seed)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let members = Arc::new(RwLock::new(g.members()));
        let counters = Arc::new(RwLock::new(g.counters()));
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(COMMANDS_MAX);
        let (wake_tx, mut wake_rx) = mpsc::channel::<Wake>(1024);

        // UDP receiver.
        let rx_udp = udp.clone();
        let tx = wake_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = rx_udp.recv_from(&mut buf).await {
                if tx
                    .send(Wake::Packet(buf[..n].to_vec(), from))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        // TCP push-pull acceptor: one request frame, one reply frame.
        let tx = wake_tx.clone();
        let streams = Arc::new(tokio::sync::Semaphore::new(STREAMS_MAX));
        let accept_streams = streams.clone();
        tokio::spawn(async move {
            loop {
                let Ok(permit) = accept_streams.clone().acquire_owned().await else {
                    return;
                };
                let Ok((mut s, from)) = tcp.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tokio::time::timeout(STREAM_TTL, async {
                        let req = read_frame(&mut s).await?;
                        let (reply_tx, reply_rx) = oneshot::channel();
                        tx.send(Wake::Request(req, from, reply_tx))
                            .await
                            .map_err(std::io::Error::other)?;
                        if let Ok(Some(reply)) = reply_rx.await {
                            write_frame(&mut s, &reply).await?;
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                });
            }
        });

        let published = members.clone();
        let mut published_version = g.members_version();
        let published_counters = counters.clone();
        tokio::spawn(async move {
            loop {
                let deadline = g
                    .next_deadline()
                    .map(|d| start + Duration::from_millis(d.0));
                let wake = tokio::select! {
                    biased;
                    Some(c) = cmd_rx.recv() => Wake::Command(c),
                    Some(w) = wake_rx.recv() => w,
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending().await,
                        }
                    } => Wake::Deadline,
                };
                let t = now();
                match wake {
                    Wake::Packet(bytes, from) => g.handle_packet(t, from, &bytes),
                    Wake::Request(bytes, from, reply) => {
                        let _ = reply.send(g.handle_stream(t, from, &bytes));
                    }
                    Wake::Reply(bytes, from) => {
                        let _ = g.handle_stream(t, from, &bytes);
                    }
                    Wake::Deadline => g.handle_timeout(t),
                    Wake::Command(Command::Join(addrs, done)) => {
                        let _ = done.send(
                            g.join(t, &addrs)
                                .map(|_| addrs.len())
                                .map_err(GossipError::from),
                        );
                    }
                    Wake::Command(Command::Leave(done)) => {
                        let _ = done.send(g.leave(t).map_err(GossipError::from));
                    }
                    Wake::Command(Command::ForceLeave { name, prune, done }) => {
                        let _ =
                            done.send(g.force_leave(t, &name, prune).map_err(GossipError::from));
                    }
                }
                while let Some(out) = g.poll_output() {
                    match out {
                        Output::Packet { to, bytes } => {
                            let _ = udp.try_send_to(&bytes, to);
                        }
                        // Replies go back on the request's own connection (above).
                        Output::StreamReply { .. } => {}
                        Output::Stream { to, bytes } => {
                            let Ok(permit) = streams.clone().try_acquire_owned() else {
                                continue;
                            };
                            let tx = wake_tx.clone();
                            tokio::spawn(async move {
                                let _permit = permit;
                                let r = tokio::time::timeout(STREAM_TTL, async {
                                    let mut s = TcpStream::connect(to).await?;
                                    write_frame(&mut s, &bytes).await?;
                                    read_frame(&mut s).await
                                })
                                .await;
                                if let Ok(Ok(reply)) = r {
                                    let _ = tx.send(Wake::Reply(reply, to)).await;
                                }
                            });
                        }
                        Output::Event(e) => log_event(label, &e),
                    }
                }
                // The member list is copied out only when it changed (a copy is O(members));
                // the counters are a few words.
                if g.members_version() != published_version {
                    published_version = g.members_version();
                    *published.write().unwrap_or_else(PoisonError::into_inner) = g.members();
                }
                *published_counters
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = g.counters();
            }
        });
        Ok(Pool {
            commands: cmd_tx,
            members,
            counters,
            label,
            addr: advertise,
        })
    }

    /// The members as this node sees them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, GossipError>>) -> Command,
    ) -> Result<T, GossipError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)?
    }

    /// The pool's counters (dropped input by reason, traffic).
    pub fn counters(&self) -> gossip::Counters {
        self.counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// (metric name, labels, value): members by state and input dropped by reason.
    pub fn metrics(&self) -> Vec<crate::metrics::Metric> {
        let mut out = Vec::new();
        let members = self.members();
        for state in ["alive", "suspect", "leaving", "left", "failed"] {
            let n = members
                .iter()
                .filter(|m| format!("{:?}", m.state).eq_ignore_ascii_case(state))
                .count();
            out.push((
                "serf.members",
                vec![
                    ("pool", self.label.to_string()),
                    ("state", state.to_string()),
                ],
                n as u64,
            ));
        }
        let c = self.counters();
        for (reason, n) in [
            ("decrypt_failed", c.decrypt_failed),
            ("plaintext_rejected", c.plaintext_rejected),
            ("decode_failed", c.decode_failed),
            ("oversize", c.oversize_dropped),
        ] {
            out.push((
                "serf.packets_dropped",
                vec![
                    ("pool", self.label.to_string()),
                    ("reason", reason.to_string()),
                ],
                n,
            ));
        }
        out
    }

    pub async fn join(&self, addrs: Vec<SocketAddr>) -> Result<usize, GossipError> {
        self.command(|done| Command::Join(addrs, done)).await
    }

    pub async fn leave(&self) -> Result<(), GossipError> {
        self.command(Command::Leave).await
    }

    pub async fn force_leave(&self, name: String, prune: bool) -> Result<(), GossipError> {
        self.command(|done| Command::ForceLeave { name, prune, done })
            .await
    }
}

fn log_event(label: &str, e: &Event) {
    match e {
        Event::MemberJoined(m) => {
            tracing::info!(pool = label, member = %m.name, addr = %m.addr, "serf: member joined")
        }
        Event::MemberFailed(m) => {
            tracing::warn!(pool = label, member = %m.name, "serf: member failed")
        }
        Event::MemberLeft(m) => tracing::info!(pool = label, member = %m.name, "serf: member left"),
        Event::MemberReaped(m) => {
            tracing::info!(pool = label, member = %m.name, "serf: member reaped")
        }
        Event::MemberUpdated(_) | Event::User(_) => {}
    }
}

/// Resolve join addresses (`host`, `ip`, `host:port`) to gossip addresses on `default_port`
/// unless a port is given.
pub async fn resolve(hosts: &[String], default_port: u16) -> Vec<SocketAddr> {
    resolve_hosts(hosts, default_port, true).await
}

/// Resolve join addresses to IPv4 socket addresses on `port`; with `keep_given`, a port
/// written in the address wins over `port`. Names that do not resolve (yet) are skipped.
pub async fn resolve_hosts(hosts: &[String], port: u16, keep_given: bool) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for h in hosts {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, p)) if !host.contains(':') => match p.parse::<u16>() {
                Ok(p) => (host, if keep_given { p } else { port }),
                Err(_) => (h.as_str(), port),
            },
            _ => (h.as_str(), port),
        };
        if let Ok(addrs) = tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await {
            for a in addrs.filter(|a| a.is_ipv4()) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Join `hosts` now and keep retrying every `every` until at least one answers (Consul's
/// `start_join` + `retry_join`).
pub async fn retry_join(pool: Pool, hosts: Vec<String>, port: u16, every: Duration) {
    if hosts.is_empty() {
        return;
    }
    loop {
        let addrs: Vec<SocketAddr> = resolve(&hosts, port)
            .await
            .into_iter()
            .filter(|a| *a != pool.addr)
            .collect();
        if !addrs.is_empty() {
            let _ = pool.join(addrs).await;
        }
        tokio::time::sleep(every.min(Duration::from_secs(2))).await;
        if pool.members().iter().filter(|m| m.state.is_live()).count() > 1 {
            tracing::info!("serf: joined the cluster");
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Peers a snapshot keeps at most.
pub const SNAPSHOT_PEERS_MAX: usize = 1024;

/// What the LAN pool remembers across restarts (Consul's serf snapshot,
/// `data_dir/serf/local.snapshot`): the live peers' addresses and whether this node left
/// gracefully. On start, the peers are joined again unless the node left and
/// `rejoin_after_leave` is off.
pub struct Snapshot {
    path: PathBuf,
    left: AtomicBool,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct SnapshotData {
    pub left: bool,
    pub peers: Vec<SocketAddr>,
}

impl Snapshot {
    pub fn new(path: PathBuf) -> Snapshot {
        Snapshot {
            path,
            left: AtomicBool::new(false),
        }
    }

    /// The snapshot of the previous run, if any (a corrupt one counts as none).
    pub fn load(&self) -> Option<SnapshotData> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    fn save(&self, data: &SnapshotData) {
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(
                &tmp,
                serde_json::to_vec(data).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "serf: cannot write the snapshot",
            );
        }
    }

    fn peers(pool: &Pool) -> Vec<SocketAddr> {
        pool.members()
            .iter()
            .filter(|m| m.state.is_live() && m.addr != pool.addr)
            .map(|m| m.addr)
            .take(SNAPSHOT_PEERS_MAX)
            .collect()
    }

    /// Record the live peers every `every` when they changed (until a leave is recorded).
    pub async fn keep(self: Arc<Self>, pool: Pool, every: Duration) {
        let mut saved = Vec::new();
        loop {
            tokio::time::sleep(every).await;
            let mut peers = Snapshot::peers(&pool);
            peers.sort();
            if self.left.load(Ordering::SeqCst) {
                return;
            }
            if !peers.is_empty() && peers != saved {
                self.save(&SnapshotData {
                    left: false,
                    peers: peers.clone(),
                });
                saved = peers;
            }
        }
    }

    /// Record a graceful leave (the peers stay, for `rejoin_after_leave`).
    pub fn left(&self, pool: &Pool) {
        self.left.store(true, Ordering::SeqCst);
        let mut peers = self.load().map(|d| d.peers).unwrap_or_default();
        for p in Snapshot::peers(pool) {
            if !peers.contains(&p) && peers.len() < SNAPSHOT_PEERS_MAX {
                peers.push(p);
            }
        }
        self.save(&SnapshotData { left: true, peers });
    }
}

/// Whether `m` is a server of datacenter `dc` (Consul's `role=consul` and `dc` tags), in
/// any state.
pub fn is_server_of(m: &MemberInfo, dc: &str) -> bool {
    m.tags.get("role").is_some_and(|r| r == "consul")
        && m.tags.get("dc").is_some_and(|d| d.eq_ignore_ascii_case(dc))
}

/// A server member's server-RPC address (its `port` tag).
pub fn rpc_addr(m: &MemberInfo) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        m.addr.ip(),
        m.tags.get("port")?.parse().ok()?,
    ))
}

/// Server-RPC addresses of the live servers of datacenter `dc` on `pool`.
pub fn live_servers(pool: &Pool, dc: &str) -> Vec<SocketAddr> {
    pool.members()
        .iter()
        .filter(|m| m.state.is_live() && is_server_of(m, dc))
        .filter_map(rpc_addr)
        .collect()
}

/// Consul's flood join: every `every`, servers seen alive on the LAN pool that are not live
/// on the WAN pool are joined there (at their `wan_join_port` tag), so all servers show in
/// `members -wan` without `retry_join_wan`.
pub async fn flood_join(lan: Pool, wan: Pool, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let live: Vec<SocketAddr> = wan
            .members()
            .iter()
            .filter(|m| m.state.is_live())
            .map(|m| m.addr)
            .collect();
        let missing: Vec<SocketAddr> = lan
            .members()
            .iter()
            .filter(|m| m.state.is_live() && m.tags.get("role").is_some_and(|r| r == "consul"))
            .filter_map(|m| {
                Some(SocketAddr::new(
                    m.addr.ip(),
                    m.tags.get("wan_join_port")?.parse().ok()?,
                ))
            })
            .filter(|a| *a != wan.addr && !live.contains(a))
            .collect();
        if !missing.is_empty() {
            if let Err(e) = wan.join(missing).await {
                tracing::debug!(error = %e, "serf: flood join of the WAN pool failed");
            }
        }
    }
}

/// A member as `/v1/agent/members` shows it (Consul's field names).
pub fn member_json(m: &MemberInfo) -> serde_json::Value {
    serde_json::json!({
        "Name": m.name,
        "Addr": m.addr.ip().to_string(),
        "Port": m.addr.port(),
        "Tags": m.tags,
        "Status": m.status,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

/// Tags as a string map, from the JSON object the API builds for this agent.
pub fn tags_of(v: &serde_json::Value) -> gossip::Tags {
    v.get("Tags")
        .and_then(|t| t.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refusals_say_what_was_wrong() {
        let identity = Identity {
            name: "me".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            tags: gossip::Tags::new(),
        };
        let bind = "127.0.0.1:0".parse().unwrap();
        let pool = Pool::start(bind, gossip::Config::lan(), identity, "lan")
            .await
            .unwrap();
        let nobody = pool.force_leave("nobody".into(), false).await;
        assert_eq!(nobody, Err(GossipError::NoSuchMember));
        let me = pool.force_leave("me".into(), true).await;
        assert_eq!(me, Err(GossipError::IsSelf));
        assert_eq!(pool.join(Vec::new()).await, Err(GossipError::NoAddresses));
        pool.leave().await.unwrap();
        assert_eq!(pool.leave().await, Err(GossipError::Left));
    }

    #[tokio::test]
    async fn push_pull_frames_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), b"hello");

        // A length over the bound is refused at once, whatever follows.
        a.write_all(&(STREAM_BYTES_MAX as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let e = read_frame(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let big = vec![0u8; STREAM_BYTES_MAX + 1];
        let e = write_frame(&mut a, &big).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");

        // A frame cut short is an error, not a short frame.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let e = read_frame(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
}
