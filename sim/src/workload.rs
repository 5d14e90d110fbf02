//! Simulated clients: set, cas, delete and linearizable get on a few keys, recording a
//! history of invocations and outcomes in simulated time.
//!
//! A client asks any server, as an HTTP client asks any agent: the server's write path
//! (the engine's) forwards to the leader and retries under one `(client, seq)` id, which
//! the state machine applies at most once. A write without a definite answer has an
//! unknown outcome; one refused before Raft is tried on another server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;
use rand::SeedableRng;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::kv::KvOp;
use tribune_core::raft::NodeId;

use crate::lin::Op;
use crate::lin::OpKind;
use crate::lin::Outcome;
use crate::lin::Value;
use crate::net::ClientMsg;
use crate::net::ClientReply;
use crate::net::Msg;
use crate::net::Net;
use crate::net::Reply;

/// How long one attempt waits for a reply (the server's own deadline is 2 s).
const ATTEMPT_TTL: Duration = Duration::from_millis(2_500);
/// How long one read attempt waits before the client asks another server.
const READ_ATTEMPT_TTL: Duration = Duration::from_millis(800);
/// How long a read may take, retries included.
const OP_DEADLINE: Duration = Duration::from_millis(2_500);

/// Everything the clients record, shared with the harness.
#[derive(Debug, Default)]
pub struct History {
    /// (key, operation)
    pub ops: Vec<(String, Op)>,
    /// Acknowledged writes: (index, command).
    pub acked: Vec<(u64, Command)>,
}

pub struct ClientCfg {
    pub id: u64,
    pub addr: SocketAddr,
    pub servers: BTreeMap<NodeId, SocketAddr>,
    pub keys: u64,
    pub think_ms: u64,
    /// Operations stop being invoked at this simulated time (ms since start).
    pub until_ms: u64,
    pub history: Arc<Mutex<History>>,
}

fn key_name(k: u64) -> String {
    format!("k/{k}")
}

fn value_bytes(v: Value) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn value_of(bytes: &[u8]) -> Value {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

struct Client {
    cfg: ClientCfg,
    net: Arc<Net>,
    rng: SmallRng,
    written: u64,
    leader: Option<NodeId>,
    last_read: BTreeMap<String, Option<(Value, u64)>>,
    start: madsim::time::Instant,
}

impl Client {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn pick_server(&mut self) -> NodeId {
        let ids: Vec<NodeId> = self.cfg.servers.keys().copied().collect();
        ids[self.rng.random_range(0..ids.len())]
    }

    /// `None`: refused everywhere before Raft, definitely not applied.
    async fn write(&mut self, op: KvOp) -> Option<(Outcome, Option<(u64, Command)>)> {
        let cmd = Command::Kv(op);
        let deadline = madsim::time::Instant::now() + ATTEMPT_TTL;
        let mut target = self.leader.unwrap_or_else(|| self.pick_server());
        while madsim::time::Instant::now() < deadline {
            let msg = Msg::Client(ClientMsg::Write(cmd.clone()));
            match self
                .net
                .call(self.cfg.servers[&target], &msg, ATTEMPT_TTL)
                .await
            {
                Ok(Reply::Client(ClientReply::Written(Response::Kv { outcome, index }))) => {
                    self.leader = Some(target);
                    let acked = (index != 0).then(|| (index, cmd.clone()));
                    return Some((
                        Outcome::Write {
                            ok: outcome.ok,
                            index,
                        },
                        acked,
                    ));
                }
                Ok(Reply::Client(ClientReply::Refused(_))) => {
                    madsim::time::sleep(Duration::from_millis(50)).await;
                    target = self.pick_server();
                }
                // No definite answer: it may have been applied.
                _ => {
                    self.leader = None;
                    return Some((Outcome::Unknown, None));
                }
            }
        }
        None
    }

    async fn read(&mut self, key: &str) -> Option<Outcome> {
        let deadline = madsim::time::Instant::now() + OP_DEADLINE;
        // Reads go to any server: only the leader may answer them.
        let mut target = self.pick_server();
        while madsim::time::Instant::now() < deadline {
            let msg = Msg::Client(ClientMsg::Read {
                key: key.to_string(),
            });
            match self
                .net
                .call(self.cfg.servers[&target], &msg, READ_ATTEMPT_TTL)
                .await
            {
                Ok(Reply::Client(ClientReply::Read { entry })) => {
                    let seen = entry.map(|e| (value_of(&e.value), e.modify_index));
                    self.last_read.insert(key.to_string(), seen);
                    return Some(Outcome::Read(seen));
                }
                _ => {
                    madsim::time::sleep(Duration::from_millis(30)).await;
                    target = self.pick_server();
                }
            }
        }
        None
    }

    async fn one_op(&mut self) {
        let key = key_name(self.rng.random_range(0..self.cfg.keys));
        let known = self.last_read.get(&key).copied().flatten();
        let fresh = |c: &mut Self| {
            c.written += 1;
            (c.cfg.id << 32) | c.written
        };
        let kind = match self.rng.random_range(0..100) {
            0..=34 => OpKind::Get,
            35..=59 => OpKind::Set(fresh(self)),
            60..=77 => {
                let expect = if self.rng.random_bool(0.8) {
                    known.map(|(_, i)| i).unwrap_or(0)
                } else {
                    0
                };
                OpKind::Cas {
                    expect,
                    value: fresh(self),
                    fresh: true,
                }
            }
            78..=85 => match known {
                // Write back what was read: an identical write must not move the index.
                Some((v, i)) => OpKind::Cas {
                    expect: i,
                    value: v,
                    fresh: false,
                },
                None => OpKind::Get,
            },
            86..=92 => OpKind::Delete,
            _ => OpKind::DeleteCas {
                expect: known.map(|(_, i)| i).unwrap_or(0),
            },
        };
        let invoke = self.now();
        let done = match &kind {
            // A failed read has no effect: it is left out.
            OpKind::Get => self.read(&key).await.map(|o| (o, None)),
            OpKind::Set(v) => {
                self.write(KvOp::Set {
                    key: key.clone(),
                    value: value_bytes(*v),
                    flags: 0,
                })
                .await
            }
            OpKind::Cas { expect, value, .. } => {
                let op = KvOp::Cas {
                    key: key.clone(),
                    value: value_bytes(*value),
                    flags: 0,
                    index: *expect,
                };
                self.write(op).await
            }
            OpKind::Delete => self.write(KvOp::Delete { key: key.clone() }).await,
            OpKind::DeleteCas { expect } => {
                self.write(KvOp::DeleteCas {
                    key: key.clone(),
                    index: *expect,
                })
                .await
            }
        };
        let Some((outcome, acked)) = done else { return };
        let complete = if outcome == Outcome::Unknown {
            u64::MAX
        } else {
            self.now()
        };
        let op = Op {
            client: self.cfg.id,
            invoke,
            complete,
            kind,
            outcome,
        };
        let mut h = self.cfg.history.lock().unwrap();
        h.ops.push((key, op));
        if let Some(a) = acked {
            h.acked.push(a);
        }
    }
}

impl Client {
    /// A client on its own endpoint, with its own random stream, timing from `start`.
    async fn bind(cfg: ClientCfg, start: Option<madsim::time::Instant>) -> Client {
        let net = Net::bind(cfg.addr).await.expect("client bind");
        let rng = SmallRng::seed_from_u64(madsim::rand::random::<u64>());
        let start = start.unwrap_or_else(madsim::time::Instant::now);
        Client {
            cfg,
            net,
            rng,
            written: 0,
            leader: None,
            last_read: BTreeMap::new(),
            start,
        }
    }
}

pub async fn run_client(cfg: ClientCfg, start: madsim::time::Instant) {
    let mut c = Client::bind(cfg, Some(start)).await;
    while c.now() < c.cfg.until_ms * 1_000 {
        let pause = c.rng.random_range(0..=3 * c.cfg.think_ms / 2);
        madsim::time::sleep(Duration::from_millis(pause)).await;
        c.one_op().await;
    }
}

/// The liveness probe: write one key until a write is acknowledged; returns its index.
pub async fn probe_write(cfg: ClientCfg) -> Option<u64> {
    let mut c = Client::bind(cfg, None).await;
    for n in 1..=4u64 {
        let op = KvOp::Set {
            key: "probe".into(),
            value: value_bytes(n),
            flags: 0,
        };
        if let Some((Outcome::Write { ok: true, index }, _)) = c.write(op).await {
            return Some(index);
        }
    }
    None
}
