//! A simulated server's LAN pool: the core's gossip state machine (SWIM with Lifeguard,
//! encrypted with the pool's key), as the agent runs it, over madsim datagrams. Only the
//! shell is the simulator's: a UDP datagram is a message on tag [`PACKET`], and a push-pull
//! stream is a request on [`STREAM`] answered on [`STREAM_REPLY`].
//!
//! The pool feeds the cluster engine's [`Discovery`](tribune_core::cluster::Discovery):
//! bootstrap counts the servers it finds here, and the leader's reconcile makes the alive
//! servers voters and removes the ones that left. Partitions, losses and kills hit the
//! pool as they hit Raft, since both share the node's network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use madsim::net::Endpoint;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tribune_core::gossip::Config;
use tribune_core::gossip::Gossip;
use tribune_core::gossip::Identity;
use tribune_core::gossip::MemberInfo;
use tribune_core::gossip::Millis;
use tribune_core::gossip::Output;

use crate::check::Recorder;

/// The LAN pool's port.
pub const GOSSIP_PORT: u16 = 8301;
/// Every simulated server's `encrypt` key (32 bytes, base64).
pub const KEY: &str = "dHJpYnVuZS1zaW11bGF0b3ItZ29zc2lwLWtleS0zMmI=";

const PACKET: u64 = 1;
const STREAM: u64 = 2;
const STREAM_REPLY: u64 = 3;
/// How often a server that knows no other member joins its join addresses again (the
/// agent's `retry_join`).
const RETRY_JOIN: Duration = Duration::from_secs(1);
/// Wake-ups queued for the pool's loop; beyond it datagrams are dropped (as a full socket
/// buffer drops them).
const WAKES_MAX: usize = 1024;

enum Wake {
    Packet(Vec<u8>, SocketAddr),
    Request(Vec<u8>, SocketAddr),
    Reply(Vec<u8>, SocketAddr),
    RetryJoin,
    Leave(oneshot::Sender<()>),
}

/// A running pool: its members as last seen, and a way to make it leave.
#[derive(Clone)]
pub struct Pool {
    members: Arc<Mutex<Vec<MemberInfo>>>,
    wake: mpsc::Sender<Wake>,
}

impl Pool {
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.lock().unwrap().clone()
    }

    /// Leave gracefully: returns once the pool has broadcast the leave.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.wake.send(Wake::Leave(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Start the pool of the server named `name` at `addr` (its gossip address), joining
/// `join`; gossip invariants broken on the way are recorded as failures.
pub async fn start(
    identity: Identity,
    join: Vec<SocketAddr>,
    recorder: Arc<Mutex<Recorder>>,
) -> std::io::Result<Pool> {
    let ep = Arc::new(Endpoint::bind(identity.addr).await?);
    let mut config = Config::lan();
    config.keys = vec![KEY.to_string()];
    // As the agent does: the wall clock's milliseconds (madsim's simulated clock here).
    config.first_incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let start = madsim::time::Instant::now();
    let now = move || Millis(start.elapsed().as_millis() as u64);
    let seed = Gossip::seed_from_u64(madsim::rand::random::<u64>());
    let me = identity.name.clone();
    let mut g = Gossip::new(now(), config, identity, seed).map_err(std::io::Error::other)?;
    let members = Arc::new(Mutex::new(g.members()));
    let (wake_tx, mut wake_rx) = mpsc::channel::<Wake>(WAKES_MAX);

    for (tag, kind) in [(PACKET, 0u8), (STREAM, 1), (STREAM_REPLY, 2)] {
        let (ep, tx) = (ep.clone(), wake_tx.clone());
        madsim::task::spawn(async move {
            while let Ok((payload, from)) = ep.recv_from_raw(tag).await {
                let Ok(bytes) = payload.downcast::<Vec<u8>>() else {
                    continue;
                };
                let wake = match kind {
                    0 => Wake::Packet(*bytes, from),
                    1 => Wake::Request(*bytes, from),
                    _ => Wake::Reply(*bytes, from),
                };
                let _ = tx.try_send(wake);
            }
        });
    }
    let tx = wake_tx.clone();
    madsim::task::spawn(async move {
        loop {
            madsim::time::sleep(RETRY_JOIN).await;
            if tx.send(Wake::RetryJoin).await.is_err() {
                return;
            }
        }
    });

    let published = members.clone();
    madsim::task::spawn(async move {
        let _ = g.join(now(), &join);
        let mut version = g.members_version();
        loop {
            let wake = match g.next_deadline() {
                Some(d) => {
                    let wait = Duration::from_millis(d.0.saturating_sub(now().0));
                    match madsim::time::timeout(wait, wake_rx.recv()).await {
                        Ok(Some(w)) => Some(w),
                        Ok(None) => return,
                        Err(_) => None,
                    }
                }
                None => match wake_rx.recv().await {
                    Some(w) => Some(w),
                    None => return,
                },
            };
            let t = now();
            let mut left = None;
            match wake {
                None => g.handle_timeout(t),
                Some(Wake::Packet(bytes, from)) => g.handle_packet(t, from, &bytes),
                Some(Wake::Request(bytes, from)) => {
                    if let Some(reply) = g.handle_stream(t, from, &bytes) {
                        let _ = ep.send_to_raw(from, STREAM_REPLY, Box::new(reply)).await;
                    }
                }
                Some(Wake::Reply(bytes, from)) => {
                    let _ = g.handle_stream(t, from, &bytes);
                }
                Some(Wake::RetryJoin) => {
                    if g.num_members() < 2 && !g.has_left() {
                        let _ = g.join(t, &join);
                    }
                }
                Some(Wake::Leave(done)) => {
                    let _ = g.leave(t);
                    left = Some(done);
                }
            }
            while let Some(out) = g.poll_output() {
                match out {
                    Output::Packet { to, bytes } => {
                        let _ = ep.send_to_raw(to, PACKET, Box::new(bytes)).await;
                    }
                    Output::Stream { to, bytes } => {
                        let _ = ep.send_to_raw(to, STREAM, Box::new(bytes)).await;
                    }
                    // Replies go back as the request's answer (above).
                    Output::StreamReply { .. } => {}
                    Output::Event(e) => {
                        if crate::debug() {
                            eprintln!("t={:?} gossip {me}: {e:?}", madsim::time::Instant::now());
                        }
                    }
                }
            }
            if let Some(done) = left {
                let _ = done.send(());
            }
            if let Err(e) = g.check_invariants() {
                recorder
                    .lock()
                    .unwrap()
                    .violate(format!("gossip invariant broken on {me}: {e}"));
            }
            // Copied out only when it changed, as the agent's shell does.
            if g.members_version() != version {
                version = g.members_version();
                *published.lock().unwrap() = g.members();
            }
        }
    });
    Ok(Pool {
        members,
        wake: wake_tx,
    })
}
