//! The gossip state machine: SWIM failure detection with Lifeguard, piggybacked
//! dissemination, push-pull anti-entropy, leave / force-leave, user events, encryption.
//!
//! # Driving it
//!
//! ```text
//! let mut g = Gossip::new(now, config, identity, seed)?;
//! loop {
//!     // feed one input ...
//!     g.handle_packet(now, from, &datagram);          // UDP
//!     let reply = g.handle_stream(now, from, &bytes);  // TCP push-pull (request or reply)
//!     g.handle_timeout(now);                           // when now >= g.next_deadline()
//!     g.join(now, &addrs); g.leave(now); g.set_tags(now, tags); g.user_event(now, name, payload);
//!     // ... then drain every output, in order
//!     while let Some(out) = g.poll_output() { /* send / connect / report */ }
//! }
//! ```
//!
//! # Drain order
//!
//! [`Gossip::poll_output`] returns outputs strictly in the order they were produced (one FIFO
//! queue). Within one input the machine first updates its state and then appends, in causal
//! order, the events and sends that update produced; e.g. a ping carrying an alive broadcast
//! yields `Event(MemberJoined)` before the `Packet` with the ack. Timers are not outputs:
//! after every input the shell reads [`Gossip::next_deadline`] (quinn's `poll_timeout`) and
//! calls [`Gossip::handle_timeout`] once that instant is reached. Outputs are bounded by
//! `limits.output_queue_max`; beyond it new outputs are dropped and counted, so drain after
//! every input.
//!
//! # Streams
//!
//! An [`Output::Stream`] asks the shell to open a TCP connection to `to`, write `bytes`, read
//! the peer's reply and hand it to [`Gossip::handle_stream`]. On the accepting side the shell
//! hands the request to `handle_stream` and writes back the returned bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

use super::broadcast::{retransmit_limit, BroadcastKey, BroadcastQueue};
use super::codec::{
    compound_len, encode_compound, Ack, Alive, Dead, DeadReason, IndirectPing, Message, Nack, Ping,
    PushPull, PushPullMember, Suspect, UserEvent, VERSION,
};
use super::config::Config;
use super::counters::Counters;
use super::crypto::{KeyError, Keyring, ENCRYPTED_VERSION, OVERHEAD};
use super::events::Event;
use super::member::{Member, MemberInfo, MemberState, ServerInfo, Tags};
use super::probe::{Probe, Prober, Relay};
use super::suspicion::{confirmations_wanted, suspicion_bounds, Suspicion};
use super::time::Millis;

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique node name.
    pub name: String,
    /// Address other nodes reach this node's gossip at (UDP and TCP).
    pub addr: SocketAddr,
    /// Initial tags.
    pub tags: Tags,
}

/// A timer of the state machine (exposed for shells that schedule timers one by one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Start the next protocol period.
    Probe,
    /// The direct probe timed out: go indirect.
    ProbeTimeout,
    /// Piggyback gossip round.
    Gossip,
    /// Periodic push-pull.
    PushPull,
    /// Retry a failed member.
    Reconnect,
    /// Reap old failed / left members and tombstones.
    Reap,
    /// The leave broadcast had its time: become `Left`.
    LeaveDone,
    /// A suspicion timeout.
    Suspicion(String),
    /// A relayed indirect probe: nack time, then expiry.
    Relay(u32),
}

/// Inputs, for shells that prefer one entry point ([`Gossip::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A UDP datagram.
    Packet {
        /// Source address.
        from: SocketAddr,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// A stream (TCP) payload: a push-pull request (the reply is queued as
    /// [`Output::StreamReply`]) or the reply to our request.
    Stream {
        /// Peer address.
        from: SocketAddr,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// The deadline from [`Gossip::next_deadline`] was reached.
    Timeout,
    /// Join via push-pull with these addresses.
    Join(Vec<SocketAddr>),
    /// Leave gracefully.
    Leave,
    /// Replace this node's tags.
    SetTags(Tags),
    /// Fire a user event.
    UserEvent {
        /// Name.
        name: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Force a failed member into the left state (and optionally forget it).
    ForceLeave {
        /// Member name.
        name: String,
        /// Forget it right away (tombstoned).
        prune: bool,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a UDP datagram.
    Packet {
        /// Destination.
        to: SocketAddr,
        /// Datagram.
        bytes: Vec<u8>,
    },
    /// Open a stream to `to`, send `bytes`, hand the reply to `handle_stream`.
    Stream {
        /// Destination.
        to: SocketAddr,
        /// Push-pull request.
        bytes: Vec<u8>,
    },
    /// Write `bytes` back on the stream a request came from (only from [`Gossip::handle`]).
    StreamReply {
        /// Peer.
        to: SocketAddr,
        /// Push-pull reply.
        bytes: Vec<u8>,
    },
    /// Report an event.
    Event(Event),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The node has left (or is leaving).
    #[error("node has left")]
    NotRunning,
    /// No join address given.
    #[error("no addresses to join")]
    NoAddresses,
    /// Tags exceed `tags_bytes_max`.
    #[error("tags too large")]
    TagsTooLarge,
    /// User event exceeds `user_event_bytes_max`.
    #[error("user event too large")]
    EventTooLarge,
    /// Unknown member.
    #[error("unknown member")]
    UnknownMember,
    /// The member is this node.
    #[error("cannot force-leave self")]
    IsSelf,
    /// No keyring is configured.
    #[error("encryption not enabled")]
    NoKeyring,
    /// Keyring error.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The SWIM + Lifeguard membership state machine of one node.
pub struct Gossip {
    config: Config,
    me: String,
    members: BTreeMap<String, Member>,
    names: Vec<String>,
    tombstones: BTreeMap<String, (u64, Millis)>,
    suspicions: BTreeMap<String, Suspicion>,
    broadcasts: BroadcastQueue,
    prober: Prober,
    timers: BTreeMap<Timer, Millis>,
    deadlines: BTreeSet<(Millis, Timer)>,
    outputs: VecDeque<Output>,
    rng: ChaCha12Rng,
    keyring: Option<Keyring>,
    counters: Counters,
    health: u32,
    event_clock: u64,
    events_seen: BTreeMap<u64, BTreeSet<(String, Vec<u8>)>>,
    events_seen_len: usize,
    /// When this node last pushed its state to a member it holds failed or left that
    /// pinged it (see `resync_stale_prober`); one entry per such member at most.
    resyncs: BTreeMap<String, Millis>,
    /// When this node last pushed its state to a prober it does not know.
    unknown_resync: Option<Millis>,
    /// Moves on every change to what [`Gossip::members`] returns.
    members_version: u64,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("me", &self.me)
            .field("members", &self.members.len())
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

fn digest(bytes: &[u8]) -> u64 {
    // FNV-1a: only to key the broadcast queue.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn tags_len(tags: &Tags) -> usize {
    tags.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
}

impl Gossip {
    /// A node that knows only itself (alive, at `config.first_incarnation`). `seed` drives
    /// every random choice and every nonce: pass fresh OS randomness in production (never
    /// reuse a seed with the same key), a fixed value in tests.
    pub fn new(
        now: Millis,
        config: Config,
        identity: Identity,
        seed: [u8; 32],
    ) -> Result<Gossip, CommandError> {
        let keyring = if config.keys.is_empty() {
            None
        } else {
            Some(Keyring::new(&config.keys, config.limits.keys_max)?)
        };
        if tags_len(&identity.tags) > config.limits.tags_bytes_max {
            return Err(CommandError::TagsTooLarge);
        }
        let me = identity.name.clone();
        let first_incarnation = config.first_incarnation.max(1);
        let mut g = Gossip {
            broadcasts: BroadcastQueue::new(config.limits.broadcast_queue_max),
            config,
            me: me.clone(),
            members: BTreeMap::new(),
            names: Vec::new(),
            tombstones: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            prober: Prober::default(),
            timers: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outputs: VecDeque::new(),
            rng: ChaCha12Rng::from_seed(seed),
            keyring,
            counters: Counters::default(),
            health: 0,
            event_clock: 0,
            events_seen: BTreeMap::new(),
            events_seen_len: 0,
            resyncs: BTreeMap::new(),
            unknown_resync: None,
            members_version: 0,
        };
        g.members.insert(
            me.clone(),
            Member {
                name: me.clone(),
                addr: identity.addr,
                tags: identity.tags,
                incarnation: first_incarnation,
                state: MemberState::Alive,
                state_change: now,
            },
        );
        g.names.push(me);
        g.broadcast_self_alive();
        // Stagger the periodic timers so nodes started together don't probe in lockstep.
        let (pi, gi, ppi) = (
            g.config.probe_interval,
            g.config.gossip_interval,
            g.config.push_pull_interval,
        );
        let p = Millis(g.rng.next_u64() % pi.0.max(1));
        g.schedule(Timer::Probe, now.plus(p));
        let gj = Millis(g.rng.next_u64() % gi.0.max(1));
        g.schedule(Timer::Gossip, now.plus(gj));
        let pj = Millis(g.rng.next_u64() % ppi.0.max(1));
        g.schedule(Timer::PushPull, now.plus(ppi).plus(pj));
        g.schedule(Timer::Reconnect, now.plus(g.config.reconnect_interval));
        g.schedule(Timer::Reap, now.plus(g.config.reap_interval));
        Ok(g)
    }

    /// A 32-byte seed from a `u64` (tests and simulations).
    pub fn seed_from_u64(seed: u64) -> [u8; 32] {
        let mut s = [0u8; 32];
        ChaCha12Rng::seed_from_u64(seed).fill_bytes(&mut s);
        s
    }

    // ----- public API -------------------------------------------------------------------

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.me
    }

    /// This node's own record.
    pub fn local(&self) -> MemberInfo {
        self.members[&self.me].info()
    }

    /// The state machine's own invariants: this node is in its member list, with a
    /// positive incarnation, not failed; the probe list holds only known members;
    /// every running suspicion is of a member held suspect. The harnesses check them after
    /// every input.
    pub fn check_invariants(&self) -> Result<(), String> {
        let me = self
            .members
            .get(&self.me)
            .ok_or("this node is missing from its own member list")?;
        if me.incarnation == 0 {
            return Err("this node's incarnation is 0".into());
        }
        if me.state == MemberState::Failed {
            return Err("this node holds itself failed".into());
        }
        for n in &self.names {
            if !self.members.contains_key(n) {
                return Err(format!("probe list names {n}, which is not a member"));
            }
        }
        for n in self.suspicions.keys() {
            match self.members.get(n) {
                Some(m) if m.state == MemberState::Suspect => {}
                Some(m) => {
                    return Err(format!("a suspicion of {n} runs while it is {:?}", m.state))
                }
                None => return Err(format!("a suspicion of {n} runs, which is not a member")),
            }
        }
        Ok(())
    }

    /// Break an invariant on purpose (the checker's own test).
    #[cfg(test)]
    pub(crate) fn break_invariant_for_test(&mut self) {
        self.names.push("nobody".into());
    }

    /// Every known member (this node included), by name: for `tribune members`.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.values().map(Member::info).collect()
    }

    /// A number that moves whenever what [`Gossip::members`] returns changes (a member
    /// added, reaped, or with another state, incarnation, address or tags), and only then:
    /// a shell that publishes the member list can copy it only when this moved.
    pub fn members_version(&self) -> u64 {
        self.members_version
    }

    /// One member.
    pub fn member(&self, name: &str) -> Option<MemberInfo> {
        self.members.get(name).map(Member::info)
    }

    /// Members currently alive or suspect (this node included if running).
    pub fn num_live(&self) -> usize {
        self.members.values().filter(|m| m.state.is_live()).count()
    }

    /// Known members (any state, reaped ones excluded).
    pub fn num_members(&self) -> usize {
        self.members.len()
    }

    /// Alive servers of datacenter `dc` (tags `role=consul` or `role=server`, `dc=<dc>`) with
    /// their `expect` tag: what `bootstrap_expect` needs.
    pub fn alive_servers(&self, dc: &str) -> Vec<ServerInfo> {
        self.members
            .values()
            .filter(|m| m.state.is_live())
            .filter(|m| {
                matches!(
                    m.tags.get("role").map(String::as_str),
                    Some("consul" | "server")
                )
            })
            .filter(|m| m.tags.get("dc").map(String::as_str) == Some(dc))
            .map(|m| ServerInfo {
                name: m.name.clone(),
                addr: m.addr,
                expect: m.tags.get("expect").and_then(|e| e.parse().ok()),
                tags: m.tags.clone(),
            })
            .collect()
    }

    /// Counters for metrics.
    pub fn counters(&self) -> Counters {
        Counters {
            broadcasts_dropped: self.broadcasts.dropped(),
            ..self.counters.clone()
        }
    }

    /// Broadcasts dropped because the queue was full.
    pub fn broadcasts_dropped(&self) -> u64 {
        self.broadcasts.dropped()
    }

    /// Lifeguard local health score (0 = healthy).
    pub fn health_score(&self) -> u32 {
        self.health
    }

    /// Current user-event Lamport clock.
    pub fn event_clock(&self) -> u64 {
        self.event_clock
    }

    /// Next output, in production order (see the module docs).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Gossip::handle_timeout`] must next be called (None once the node has left).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.iter().next().map(|(t, _)| *t)
    }

    /// One entry point for every input.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<(), CommandError> {
        match input {
            Input::Packet { from, bytes } => self.handle_packet(now, from, &bytes),
            Input::Stream { from, bytes } => {
                if let Some(reply) = self.handle_stream(now, from, &bytes) {
                    self.push_output(Output::StreamReply {
                        to: from,
                        bytes: reply,
                    });
                }
            }
            Input::Timeout => self.handle_timeout(now),
            Input::Join(addrs) => self.join(now, &addrs)?,
            Input::Leave => self.leave(now)?,
            Input::SetTags(tags) => self.set_tags(now, tags)?,
            Input::UserEvent { name, payload } => self.user_event(now, &name, payload)?,
            Input::ForceLeave { name, prune } => self.force_leave(now, &name, prune)?,
        }
        Ok(())
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        for _ in 0..100_000 {
            let Some((at, timer)) = self.deadlines.iter().next().cloned() else {
                return;
            };
            if at > now {
                return;
            }
            self.deadlines.remove(&(at, timer.clone()));
            self.timers.remove(&timer);
            self.fire(now, timer);
        }
    }

    /// Fire one timer if it is scheduled and due (for shells that track timers themselves).
    pub fn handle_timer(&mut self, now: Millis, timer: Timer) {
        if let Some(at) = self.timers.get(&timer).copied() {
            if at <= now {
                self.cancel(&timer);
                self.fire(now, timer);
            }
        }
    }

    /// Scheduled timers, earliest first.
    pub fn timers(&self) -> Vec<(Millis, Timer)> {
        self.deadlines.iter().cloned().collect()
    }

    /// A UDP datagram arrived. Invalid input is counted and dropped.
    pub fn handle_packet(&mut self, now: Millis, from: SocketAddr, bytes: &[u8]) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += bytes.len() as u64;
        if self.has_left() {
            return;
        }
        if bytes.len() > self.config.limits.packet_bytes_max {
            self.counters.oversize_dropped += 1;
            return;
        }
        let Some(msg) = self.open(bytes) else { return };
        for part in msg.into_parts() {
            self.handle_message(now, from, part);
        }
    }

    /// A stream payload arrived: a push-pull request (returns the reply to write back) or
    /// the reply to one of our requests (returns None). Invalid input is counted and dropped.
    pub fn handle_stream(
        &mut self,
        now: Millis,
        _from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        self.counters.streams_in += 1;
        self.counters.stream_bytes_in += bytes.len() as u64;
        if self.has_left() {
            return None;
        }
        if bytes.len() > self.config.limits.stream_bytes_max {
            self.counters.oversize_dropped += 1;
            return None;
        }
        let Message::PushPull(pp) = self.open(bytes)? else {
            self.counters.unexpected_message += 1;
            return None;
        };
        let reply = pp.reply;
        self.merge(now, pp);
        if reply {
            return None;
        }
        let bytes = self.push_pull_bytes(true, false);
        self.counters.streams_out += 1;
        self.counters.stream_bytes_out += bytes.len() as u64;
        Some(bytes)
    }

    /// Join a cluster: push-pull with each address (the replies come back through
    /// [`Gossip::handle_stream`]).
    pub fn join(&mut self, _now: Millis, addrs: &[SocketAddr]) -> Result<(), CommandError> {
        if self.has_left() || self.is_leaving() {
            return Err(CommandError::NotRunning);
        }
        if addrs.is_empty() {
            return Err(CommandError::NoAddresses);
        }
        for &to in addrs {
            let bytes = self.push_pull_bytes(false, true);
            self.send_stream(to, bytes);
        }
        Ok(())
    }

    /// Leave gracefully: broadcast the intent, keep gossiping for `leave_propagate_delay`
    /// (state `Leaving`), then become `Left` and stop (no timers, inputs ignored).
    pub fn leave(&mut self, now: Millis) -> Result<(), CommandError> {
        if self.has_left() || self.is_leaving() {
            return Err(CommandError::NotRunning);
        }
        let inc = self.local_incarnation();
        self.set_self_state(now, MemberState::Leaving);
        let d = Dead {
            name: self.me.clone(),
            incarnation: inc,
            from: self.me.clone(),
            reason: DeadReason::Left,
        };
        self.queue_broadcast(BroadcastKey::Member(self.me.clone()), &Message::Dead(d));
        self.cancel(&Timer::Probe);
        self.cancel(&Timer::ProbeTimeout);
        self.prober.current = None;
        self.schedule(
            Timer::LeaveDone,
            now.plus(self.config.leave_propagate_delay),
        );
        Ok(())
    }

    /// Replace this node's tags (raises the incarnation and broadcasts).
    pub fn set_tags(&mut self, now: Millis, tags: Tags) -> Result<(), CommandError> {
        if self.has_left() || self.is_leaving() {
            return Err(CommandError::NotRunning);
        }
        if tags_len(&tags) > self.config.limits.tags_bytes_max {
            return Err(CommandError::TagsTooLarge);
        }
        let m = self
            .members
            .get_mut(&self.me)
            .ok_or(CommandError::NotRunning)?;
        m.tags = tags;
        m.incarnation += 1;
        m.state_change = now;
        let info = m.info();
        self.members_version += 1;
        self.emit(Event::MemberUpdated(info));
        self.broadcast_self_alive();
        Ok(())
    }

    /// Fire a user event: stamped with the Lamport clock, delivered locally and broadcast.
    pub fn user_event(
        &mut self,
        _now: Millis,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<(), CommandError> {
        if self.has_left() {
            return Err(CommandError::NotRunning);
        }
        if name.len() + payload.len() > self.config.limits.user_event_bytes_max {
            return Err(CommandError::EventTooLarge);
        }
        let ev = UserEvent {
            ltime: self.event_clock,
            name: name.to_owned(),
            payload,
        };
        self.event_clock += 1;
        self.receive_event(ev);
        Ok(())
    }

    /// Force a member into `Left` at its current incarnation, so that stale alive gossip
    /// (same or lower incarnation) cannot bring it back; only the member itself can, by
    /// refuting with a higher incarnation. With `prune` the member is also forgotten
    /// (tombstoned) cluster-wide.
    pub fn force_leave(
        &mut self,
        now: Millis,
        name: &str,
        prune: bool,
    ) -> Result<(), CommandError> {
        if name == self.me {
            return Err(CommandError::IsSelf);
        }
        let m = self.members.get(name).ok_or(CommandError::UnknownMember)?;
        let reason = if prune {
            DeadReason::Pruned
        } else {
            DeadReason::Left
        };
        let d = Dead {
            name: name.to_owned(),
            incarnation: m.incarnation,
            from: self.me.clone(),
            reason,
        };
        self.dead_node(now, d);
        Ok(())
    }

    /// Installed keys (base64, primary first).
    pub fn list_keys(&self) -> Result<Vec<String>, CommandError> {
        Ok(self.keyring.as_ref().ok_or(CommandError::NoKeyring)?.list())
    }

    /// Install a secondary key.
    pub fn install_key(&mut self, b64: &str) -> Result<(), CommandError> {
        Ok(self
            .keyring
            .as_mut()
            .ok_or(CommandError::NoKeyring)?
            .install(b64)?)
    }

    /// Make an installed key the primary.
    pub fn use_key(&mut self, b64: &str) -> Result<(), CommandError> {
        Ok(self
            .keyring
            .as_mut()
            .ok_or(CommandError::NoKeyring)?
            .use_key(b64)?)
    }

    /// Remove a secondary key.
    pub fn remove_key(&mut self, b64: &str) -> Result<(), CommandError> {
        Ok(self
            .keyring
            .as_mut()
            .ok_or(CommandError::NoKeyring)?
            .remove(b64)?)
    }

    /// True once the leave completed.
    pub fn has_left(&self) -> bool {
        self.members
            .get(&self.me)
            .is_none_or(|m| m.state == MemberState::Left)
    }

    fn is_leaving(&self) -> bool {
        self.members
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Leaving)
    }

    // ----- timers -----------------------------------------------------------------------

    fn schedule(&mut self, timer: Timer, at: Millis) {
        self.cancel(&timer);
        self.deadlines.insert((at, timer.clone()));
        self.timers.insert(timer, at);
    }

    fn cancel(&mut self, timer: &Timer) {
        if let Some(at) = self.timers.remove(timer) {
            self.deadlines.remove(&(at, timer.clone()));
        }
    }

    /// `d` stretched by the Lifeguard local health score.
    fn scaled(&self, d: Millis) -> Millis {
        d.times(self.health as u64 + 1)
    }

    fn fire(&mut self, now: Millis, timer: Timer) {
        match timer {
            Timer::Probe => self.probe_tick(now),
            Timer::ProbeTimeout => self.probe_timeout(now),
            Timer::Gossip => {
                self.gossip_tick(now);
                self.schedule(Timer::Gossip, now.plus(self.config.gossip_interval));
            }
            Timer::PushPull => {
                if let Some((_, addr)) = self.random_members(1, now, |m, _| m.state.is_live()).pop()
                {
                    let bytes = self.push_pull_bytes(false, false);
                    self.send_stream(addr, bytes);
                }
                let n = self.members.len() as f64;
                let mult = if n <= 32.0 {
                    1.0
                } else {
                    (n.log2() - 32f64.log2()).ceil() + 1.0
                };
                self.schedule(
                    Timer::PushPull,
                    now.plus(self.config.push_pull_interval.scale(mult)),
                );
            }
            Timer::Reconnect => {
                let pick = self
                    .random_members(1, now, |m, _| m.state == MemberState::Failed)
                    .pop();
                if let Some((_, addr)) = pick {
                    let bytes = self.push_pull_bytes(false, true);
                    self.send_stream(addr, bytes);
                }
                self.schedule(Timer::Reconnect, now.plus(self.config.reconnect_interval));
            }
            Timer::Reap => {
                self.reap(now);
                self.schedule(Timer::Reap, now.plus(self.config.reap_interval));
            }
            Timer::LeaveDone => {
                self.set_self_state(now, MemberState::Left);
                let info = self.local();
                self.emit(Event::MemberLeft(info));
                let all: Vec<Timer> = self.timers.keys().cloned().collect();
                for t in all {
                    self.cancel(&t);
                }
            }
            Timer::Suspicion(name) => {
                let Some(m) = self.members.get(&name) else {
                    return;
                };
                if m.state != MemberState::Suspect {
                    return;
                }
                let d = Dead {
                    name: name.clone(),
                    incarnation: m.incarnation,
                    from: self.me.clone(),
                    reason: DeadReason::Failed,
                };
                self.dead_node(now, d);
            }
            Timer::Relay(seq) => {
                let Some(relay) = self.prober.relays.get_mut(&seq) else {
                    return;
                };
                if relay.nacked || !relay.want_nack {
                    self.prober.relays.remove(&seq);
                    return;
                }
                relay.nacked = true;
                let (origin, origin_seq) = (relay.origin, relay.origin_seq);
                self.send_message(origin, &Message::Nack(Nack { seq: origin_seq }));
                let rest = self
                    .config
                    .probe_timeout
                    .scale((100 - self.config.nack_timeout_percent.min(100)) as f64 / 100.0);
                self.schedule(Timer::Relay(seq), now.plus(rest));
            }
        }
    }

    // ----- probing ----------------------------------------------------------------------

    fn probe_tick(&mut self, now: Millis) {
        // End of the previous protocol period.
        if let Some(p) = self.prober.current.take() {
            if !p.acked {
                self.counters.probes_failed += 1;
                let delta = if p.indirect > 0 {
                    p.indirect.saturating_sub(p.nacks)
                } else {
                    1
                };
                self.adjust_health(delta as i64);
                if let Some(m) = self.members.get(&p.target) {
                    if m.state.is_live() {
                        let s = Suspect {
                            name: p.target.clone(),
                            incarnation: m.incarnation,
                            from: self.me.clone(),
                        };
                        self.suspect_node(now, s);
                    }
                }
            }
        }
        self.cancel(&Timer::ProbeTimeout);
        if let Some(target) = self.next_probe_target() {
            let (addr, incarnation) = (
                self.members[&target].addr,
                self.members[&target].incarnation,
            );
            let seq = self.prober.next_seq();
            self.prober.current = Some(Probe {
                seq,
                target: target.clone(),
                acked: false,
                indirect: 0,
                nacks: 0,
            });
            self.counters.probes_sent += 1;
            self.send_message(
                addr,
                &Message::Ping(Ping {
                    seq,
                    target,
                    incarnation,
                }),
            );
            self.schedule(
                Timer::ProbeTimeout,
                now.plus(self.scaled(self.config.probe_timeout)),
            );
        }
        self.schedule(
            Timer::Probe,
            now.plus(self.scaled(self.config.probe_interval)),
        );
    }

    fn next_probe_target(&mut self) -> Option<String> {
        for _ in 0..2 {
            while self.prober.index < self.prober.order.len() {
                let name = self.prober.order[self.prober.index].clone();
                self.prober.index += 1;
                if name != self.me && self.members.get(&name).is_some_and(|m| m.state.is_live()) {
                    return Some(name);
                }
            }
            // New round: reshuffle the current members.
            let mut order: Vec<String> = self
                .members
                .values()
                .filter(|m| m.name != self.me && m.state.is_live())
                .map(|m| m.name.clone())
                .collect();
            if order.is_empty() {
                return None;
            }
            for i in (1..order.len()).rev() {
                let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            self.prober.order = order;
            self.prober.index = 0;
        }
        None
    }

    fn probe_timeout(&mut self, now: Millis) {
        let Some(p) = self.prober.current.as_ref() else {
            return;
        };
        if p.acked {
            return;
        }
        let (seq, target) = (p.seq, p.target.clone());
        let Some(addr) = self.members.get(&target).map(|m| m.addr) else {
            return;
        };
        let k = self.config.indirect_checks;
        let helpers = self.random_members(k, now, |m, me| {
            m.state == MemberState::Alive && m.name != me && m.name != target
        });
        let n = helpers.len() as u32;
        for (_, h) in helpers {
            let msg = Message::IndirectPing(IndirectPing {
                seq,
                target: target.clone(),
                target_addr: addr,
                nack: true,
            });
            self.send_message(h, &msg);
        }
        if let Some(p) = self.prober.current.as_mut() {
            p.indirect = n;
        }
    }

    fn adjust_health(&mut self, delta: i64) {
        let max = self.config.awareness_max_multiplier.saturating_sub(1) as i64;
        self.health = (self.health as i64 + delta).clamp(0, max) as u32;
    }

    // ----- receiving --------------------------------------------------------------------

    /// Decrypt (if keyed) and decode; count and drop anything invalid.
    fn open(&mut self, bytes: &[u8]) -> Option<Message> {
        let plain;
        let body: &[u8] = match (&self.keyring, bytes.first()) {
            (_, None) => {
                self.counters.decode_failed += 1;
                return None;
            }
            (Some(_), Some(&VERSION)) => {
                self.counters.plaintext_rejected += 1;
                return None;
            }
            (Some(ring), Some(_)) => match ring.decrypt(bytes) {
                Ok(p) => {
                    plain = p;
                    &plain
                }
                Err(_) => {
                    self.counters.decrypt_failed += 1;
                    return None;
                }
            },
            (None, Some(&ENCRYPTED_VERSION)) => {
                self.counters.decrypt_failed += 1;
                return None;
            }
            (None, Some(_)) => bytes,
        };
        match Message::decode(body) {
            Ok(m) => Some(m),
            Err(_) => {
                self.counters.decode_failed += 1;
                None
            }
        }
    }

    fn handle_message(&mut self, now: Millis, from: SocketAddr, msg: Message) {
        match msg {
            Message::Ping(p) => {
                if p.target != self.me {
                    self.counters.misdirected_ping += 1;
                    return;
                }
                self.resync_stale_prober(now, from);
                let ack = Message::Ack(Ack { seq: p.seq });
                let me = &self.members[&self.me];
                if p.incarnation < me.incarnation {
                    // The prober missed our latest alive (e.g. a refutation): include it.
                    let a = Alive {
                        name: me.name.clone(),
                        addr: me.addr,
                        tags: me.tags.clone(),
                        incarnation: me.incarnation,
                    };
                    self.send_messages(from, &[ack, Message::Alive(a)]);
                } else {
                    self.send_message(from, &ack);
                }
            }
            Message::IndirectPing(ip) => {
                if self.prober.relays.len() >= self.config.limits.relay_max {
                    self.counters.relays_dropped += 1;
                    return;
                }
                let seq = self.prober.next_seq();
                let relay = Relay {
                    origin: from,
                    origin_seq: ip.seq,
                    want_nack: ip.nack,
                    nacked: false,
                };
                self.prober.relays.insert(seq, relay);
                let incarnation = self.members.get(&ip.target).map_or(0, |m| m.incarnation);
                self.send_message(
                    ip.target_addr,
                    &Message::Ping(Ping {
                        seq,
                        target: ip.target,
                        incarnation,
                    }),
                );
                let wait = self
                    .config
                    .probe_timeout
                    .scale(self.config.nack_timeout_percent.min(100) as f64 / 100.0);
                self.schedule(Timer::Relay(seq), now.plus(wait));
            }
            Message::Ack(a) => {
                if let Some(relay) = self.prober.relays.remove(&a.seq) {
                    self.cancel(&Timer::Relay(a.seq));
                    self.send_message(
                        relay.origin,
                        &Message::Ack(Ack {
                            seq: relay.origin_seq,
                        }),
                    );
                    return;
                }
                let mut healthy = false;
                if let Some(p) = self.prober.current.as_mut() {
                    if p.seq == a.seq && !p.acked {
                        p.acked = true;
                        healthy = true;
                    }
                }
                if healthy {
                    self.adjust_health(-1);
                }
            }
            Message::Nack(n) => {
                if let Some(p) = self.prober.current.as_mut() {
                    if p.seq == n.seq {
                        p.nacks = p.nacks.saturating_add(1);
                    }
                }
            }
            Message::Alive(a) => self.alive_node(now, a),
            Message::Suspect(s) => self.suspect_node(now, s),
            Message::Dead(d) => self.dead_node(now, d),
            Message::UserEvent(e) => {
                self.event_clock = self.event_clock.max(e.ltime.saturating_add(1));
                self.receive_event(e);
            }
            Message::PushPull(_) | Message::Compound(_) => self.counters.unexpected_message += 1,
        }
    }

    fn receive_event(&mut self, e: UserEvent) {
        let window = self.config.limits.event_buffer as u64;
        if e.ltime.saturating_add(window) < self.event_clock {
            self.counters.events_too_old += 1;
            return;
        }
        let key = (e.name.clone(), e.payload.clone());
        if self
            .events_seen
            .get(&e.ltime)
            .is_some_and(|s| s.contains(&key))
        {
            self.counters.events_deduped += 1;
            return;
        }
        self.events_seen.entry(e.ltime).or_default().insert(key);
        self.events_seen_len += 1;
        // Bound the buffer: forget events outside the window, then the oldest.
        while let Some((&oldest, set)) = self.events_seen.iter().next() {
            if oldest.saturating_add(window) >= self.event_clock
                && self.events_seen_len <= self.config.limits.event_buffer.max(1)
            {
                break;
            }
            self.events_seen_len -= set.len();
            self.events_seen.remove(&oldest);
        }
        let bkey = BroadcastKey::Event(e.ltime, e.name.clone(), digest(&e.payload));
        self.queue_broadcast(bkey, &Message::UserEvent(e.clone()));
        self.emit(Event::User(e));
    }

    fn local_incarnation(&self) -> u64 {
        self.members.get(&self.me).map_or(0, |m| m.incarnation)
    }

    fn set_self_state(&mut self, now: Millis, state: MemberState) {
        if let Some(m) = self.members.get_mut(&self.me) {
            m.state = state;
            m.state_change = now;
            self.members_version += 1;
        }
    }

    /// A member this node holds failed or left probes it: it is up (restarted, or back
    /// from a partition) and this node missed its alive broadcast, which it will not send
    /// again, and failed members are not probed. Push-pull with it now, at most once per
    /// five probe intervals per member, rather than wait for a reconnect or push-pull round
    /// (30 s each in the LAN profile; memberlist waits for them).
    fn resync_stale_prober(&mut self, now: Millis, from: SocketAddr) {
        let every = Millis(self.config.probe_interval.0.saturating_mul(5));
        let known = self
            .members
            .values()
            .find(|m| m.addr == from && m.name != self.me)
            .map(|m| (m.name.clone(), m.state.is_live()));
        let name = match known {
            Some((_, true)) => return,
            Some((name, false)) => name,
            // A prober this node does not know at all: it joined where this node could
            // not hear of it (behind a partition, its alive broadcasts spent) and would
            // otherwise stay unknown here until a push-pull round (30 s). One such
            // push-pull per period, whoever asks, so pings cannot make it send more.
            None => {
                if self.unknown_resync.is_some_and(|t| now < t.plus(every)) {
                    return;
                }
                self.unknown_resync = Some(now);
                self.counters.unknown_resyncs += 1;
                let bytes = self.push_pull_bytes(false, false);
                self.send_stream(from, bytes);
                return;
            }
        };
        if self.resyncs.get(&name).is_some_and(|t| now < t.plus(every)) {
            return;
        }
        // Forget members that are live again or gone: one entry per stale member at most.
        let members = &self.members;
        self.resyncs
            .retain(|n, _| members.get(n).is_some_and(|m| !m.state.is_live()));
        self.resyncs.insert(name, now);
        self.counters.stale_resyncs += 1;
        let bytes = self.push_pull_bytes(false, false);
        self.send_stream(from, bytes);
    }

    /// Someone says we are suspect / dead / alive-with-other-data at `inc`: outbid it.
    fn refute(&mut self, inc: u64) {
        let Some(m) = self.members.get_mut(&self.me) else {
            return;
        };
        m.incarnation = m.incarnation.max(inc) + 1;
        self.members_version += 1;
        self.counters.refutations += 1;
        self.adjust_health(1);
        self.broadcast_self_alive();
    }

    fn alive_node(&mut self, now: Millis, a: Alive) {
        if a.name == self.me {
            if self.has_left() || self.is_leaving() {
                return;
            }
            let m = &self.members[&self.me];
            if a.incarnation > m.incarnation
                || (a.incarnation == m.incarnation && (a.addr != m.addr || a.tags != m.tags))
            {
                self.refute(a.incarnation);
            }
            return;
        }
        if let Some(&(inc, _)) = self.tombstones.get(&a.name) {
            if a.incarnation <= inc {
                self.counters.stale_ignored += 1;
                return;
            }
            self.tombstones.remove(&a.name);
        }
        let event = match self.members.get_mut(&a.name) {
            None => {
                if self.members.len() >= self.config.limits.member_count_max {
                    self.counters.members_rejected += 1;
                    return;
                }
                let m = Member {
                    name: a.name.clone(),
                    addr: a.addr,
                    tags: a.tags.clone(),
                    incarnation: a.incarnation,
                    state: MemberState::Alive,
                    state_change: now,
                };
                let info = m.info();
                self.members.insert(a.name.clone(), m);
                self.members_version += 1;
                self.names.push(a.name.clone());
                Some(Event::MemberJoined(info))
            }
            Some(m) => {
                if a.incarnation <= m.incarnation {
                    if matches!(m.state, MemberState::Left | MemberState::Failed)
                        && a.incarnation == m.incarnation
                    {
                        self.counters.stale_ignored += 1;
                    }
                    // The member claims other data (a restarted node with new tags, say)
                    // at an incarnation not above the one we hold: tell it what we hold,
                    // so that it outbids it now rather than at the next push-pull (which
                    // may be 30 s away). memberlist leaves the two views apart until then.
                    let conflict = m.state.is_live() && (m.addr != a.addr || m.tags != a.tags);
                    if conflict {
                        let ours = Message::Alive(Alive {
                            name: m.name.clone(),
                            addr: m.addr,
                            tags: m.tags.clone(),
                            incarnation: m.incarnation,
                        });
                        self.counters.conflicts_told += 1;
                        self.send_message(a.addr, &ours);
                    }
                    return;
                }
                let old = m.state;
                let changed = m.addr != a.addr || m.tags != a.tags;
                m.incarnation = a.incarnation;
                m.addr = a.addr;
                m.tags = a.tags.clone();
                if old != MemberState::Alive {
                    m.state = MemberState::Alive;
                    m.state_change = now;
                }
                let info = m.info();
                self.members_version += 1;
                if matches!(
                    old,
                    MemberState::Failed | MemberState::Left | MemberState::Leaving
                ) {
                    Some(Event::MemberJoined(info))
                } else if changed {
                    Some(Event::MemberUpdated(info))
                } else {
                    None
                }
            }
        };
        if self.suspicions.remove(&a.name).is_some() {
            self.cancel(&Timer::Suspicion(a.name.clone()));
        }
        if matches!(event, Some(Event::MemberJoined(_))) {
            // Probe newcomers this round, not after a whole round of the old members
            // (memberlist inserts new nodes at a random offset too).
            let lo = self.prober.index.min(self.prober.order.len());
            let span = (self.prober.order.len() - lo + 1) as u64;
            let at = lo + (self.rng.next_u64() % span) as usize;
            self.prober.order.insert(at, a.name.clone());
        }
        if let Some(e) = event {
            self.emit(e);
        }
        self.queue_broadcast(BroadcastKey::Member(a.name.clone()), &Message::Alive(a));
    }

    fn suspect_node(&mut self, now: Millis, s: Suspect) {
        if s.name == self.me {
            if self.has_left() || self.is_leaving() || s.incarnation < self.local_incarnation() {
                return;
            }
            self.refute(s.incarnation);
            return;
        }
        let n = self.members.len();
        let Some(m) = self.members.get_mut(&s.name) else {
            return;
        };
        if s.incarnation < m.incarnation {
            return;
        }
        match m.state {
            MemberState::Suspect => {
                let Some(sus) = self.suspicions.get_mut(&s.name) else {
                    return;
                };
                if sus.confirm(&s.from) {
                    let at = sus.deadline();
                    self.schedule(Timer::Suspicion(s.name.clone()), at);
                    self.queue_broadcast(
                        BroadcastKey::Member(s.name.clone()),
                        &Message::Suspect(s),
                    );
                }
            }
            MemberState::Alive | MemberState::Leaving => {
                m.incarnation = s.incarnation;
                m.state = MemberState::Suspect;
                m.state_change = now;
                self.members_version += 1;
                let k = confirmations_wanted(self.config.suspicion_mult, n);
                let (min, max) = suspicion_bounds(
                    self.config.suspicion_mult,
                    self.config.suspicion_max_timeout_mult,
                    n,
                    self.config.probe_interval,
                );
                let sus = Suspicion::new(now, &s.from, k, min, max);
                let at = sus.deadline();
                self.suspicions.insert(s.name.clone(), sus);
                self.schedule(Timer::Suspicion(s.name.clone()), at);
                self.queue_broadcast(BroadcastKey::Member(s.name.clone()), &Message::Suspect(s));
            }
            MemberState::Failed | MemberState::Left => {}
        }
    }

    fn dead_node(&mut self, now: Millis, d: Dead) {
        if d.name == self.me {
            if self.has_left() || self.is_leaving() || d.incarnation < self.local_incarnation() {
                return;
            }
            self.refute(d.incarnation);
            return;
        }
        let Some(m) = self.members.get_mut(&d.name) else {
            if d.reason == DeadReason::Pruned {
                self.tombstone(now, &d.name, d.incarnation);
            }
            return;
        };
        if d.incarnation < m.incarnation {
            return;
        }
        let new = if d.reason == DeadReason::Failed {
            MemberState::Failed
        } else {
            MemberState::Left
        };
        let old = m.state;
        let transition = !matches!(
            (old, new),
            (MemberState::Left, _) | (MemberState::Failed, MemberState::Failed)
        );
        if !transition && d.reason != DeadReason::Pruned {
            return;
        }
        m.incarnation = d.incarnation;
        if transition {
            m.state = new;
            m.state_change = now;
        }
        let info = m.info();
        self.members_version += 1;
        if self.suspicions.remove(&d.name).is_some() {
            self.cancel(&Timer::Suspicion(d.name.clone()));
        }
        if transition {
            self.emit(if new == MemberState::Failed {
                Event::MemberFailed(info)
            } else {
                Event::MemberLeft(info)
            });
        }
        let name = d.name.clone();
        let pruned = d.reason == DeadReason::Pruned;
        self.queue_broadcast(BroadcastKey::Member(name.clone()), &Message::Dead(d));
        if pruned {
            self.reap_member(now, &name);
        }
    }

    /// Push-pull merge (memberlist's rules): remote alive → alive; remote suspect or failed →
    /// suspect (so the member gets a chance to refute); remote left → left. Failed / left
    /// members we have never heard of are recorded silently.
    fn merge(&mut self, now: Millis, pp: PushPull) {
        self.event_clock = self.event_clock.max(pp.event_ltime);
        let refutations = self.counters.refutations;
        let peer = pp
            .members
            .iter()
            .find(|e| e.name == pp.from && e.name != self.me)
            .map(|e| e.addr);
        for e in pp
            .members
            .into_iter()
            .take(self.config.limits.member_count_max)
        {
            let known = self.members.contains_key(&e.name) || e.name == self.me;
            match e.state {
                MemberState::Alive | MemberState::Leaving => self.alive_node(
                    now,
                    Alive {
                        name: e.name,
                        addr: e.addr,
                        tags: e.tags,
                        incarnation: e.incarnation,
                    },
                ),
                MemberState::Suspect | MemberState::Failed if known => self.suspect_node(
                    now,
                    Suspect {
                        name: e.name,
                        incarnation: e.incarnation,
                        from: self.me.clone(),
                    },
                ),
                MemberState::Left if known => self.dead_node(
                    now,
                    Dead {
                        name: e.name,
                        incarnation: e.incarnation,
                        from: self.me.clone(),
                        reason: DeadReason::Left,
                    },
                ),
                MemberState::Suspect => {
                    let a = Alive {
                        name: e.name.clone(),
                        addr: e.addr,
                        tags: e.tags,
                        incarnation: e.incarnation,
                    };
                    self.alive_node(now, a);
                    self.suspect_node(
                        now,
                        Suspect {
                            name: e.name,
                            incarnation: e.incarnation,
                            from: self.me.clone(),
                        },
                    );
                }
                MemberState::Failed | MemberState::Left => {
                    if self.members.len() >= self.config.limits.member_count_max {
                        self.counters.members_rejected += 1;
                        continue;
                    }
                    if self
                        .tombstones
                        .get(&e.name)
                        .is_some_and(|(inc, _)| e.incarnation <= *inc)
                    {
                        continue;
                    }
                    self.names.push(e.name.clone());
                    self.members_version += 1;
                    self.members.insert(
                        e.name.clone(),
                        Member {
                            name: e.name,
                            addr: e.addr,
                            tags: e.tags,
                            incarnation: e.incarnation,
                            state: e.state,
                            state_change: now,
                        },
                    );
                }
            }
        }
        // We refuted something the peer believed: tell the peer directly too, since it may
        // not gossip with us (it thinks we are dead).
        if self.counters.refutations != refutations {
            if let Some(addr) = peer {
                let me = &self.members[&self.me];
                let a = Alive {
                    name: me.name.clone(),
                    addr: me.addr,
                    tags: me.tags.clone(),
                    incarnation: me.incarnation,
                };
                self.send_message(addr, &Message::Alive(a));
            }
        }
    }

    // ----- reaping ----------------------------------------------------------------------

    fn reap(&mut self, now: Millis) {
        let c = &self.config;
        let due: Vec<String> = self
            .members
            .values()
            .filter(|m| m.name != self.me)
            .filter(|m| match m.state {
                MemberState::Failed => now.since(m.state_change) >= c.reconnect_timeout,
                MemberState::Left => now.since(m.state_change) >= c.tombstone_timeout,
                _ => false,
            })
            .map(|m| m.name.clone())
            .collect();
        for name in due {
            self.reap_member(now, &name);
        }
        self.tombstones.retain(|_, (_, until)| *until > now);
    }

    fn reap_member(&mut self, now: Millis, name: &str) {
        let Some(m) = self.members.remove(name) else {
            return;
        };
        self.members_version += 1;
        self.names.retain(|n| n != name);
        if self.suspicions.remove(name).is_some() {
            self.cancel(&Timer::Suspicion(name.to_owned()));
        }
        self.tombstone(now, name, m.incarnation);
        self.emit(Event::MemberReaped(m.info()));
    }

    fn tombstone(&mut self, now: Millis, name: &str, inc: u64) {
        let until = now.plus(self.config.tombstone_timeout);
        let e = self
            .tombstones
            .entry(name.to_owned())
            .or_insert((inc, until));
        e.0 = e.0.max(inc);
        e.1 = until;
        while self.tombstones.len() > self.config.limits.tombstone_max {
            // Forget the tombstone expiring first.
            let first = self
                .tombstones
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(n, _)| n.clone());
            match first {
                Some(n) => self.tombstones.remove(&n),
                None => break,
            };
        }
    }

    // ----- sending ----------------------------------------------------------------------

    fn emit(&mut self, e: Event) {
        self.push_output(Output::Event(e));
    }

    fn push_output(&mut self, o: Output) {
        if self.outputs.len() >= self.config.limits.output_queue_max {
            self.counters.outputs_dropped += 1;
            return;
        }
        self.outputs.push_back(o);
    }

    fn queue_broadcast(&mut self, key: BroadcastKey, msg: &Message) {
        self.broadcasts.push(key, msg.encode_part());
    }

    fn broadcast_self_alive(&mut self) {
        let m = &self.members[&self.me];
        let a = Alive {
            name: m.name.clone(),
            addr: m.addr,
            tags: m.tags.clone(),
            incarnation: m.incarnation,
        };
        self.queue_broadcast(BroadcastKey::Member(self.me.clone()), &Message::Alive(a));
    }

    fn seal(&mut self, plain: Vec<u8>) -> Vec<u8> {
        match &self.keyring {
            Some(ring) => ring.encrypt(&mut self.rng, &plain),
            None => plain,
        }
    }

    /// Send `msg` with as many piggybacked broadcasts as fit in one packet.
    fn send_message(&mut self, to: SocketAddr, msg: &Message) {
        self.send_messages(to, std::slice::from_ref(msg));
    }

    /// Send `msgs` (small, non-compound) in one packet, filled up with piggybacked broadcasts.
    fn send_messages(&mut self, to: SocketAddr, msgs: &[Message]) {
        let own: Vec<Vec<u8>> = msgs.iter().map(Message::encode_part).collect();
        let overhead = if self.keyring.is_some() { OVERHEAD } else { 0 };
        let budget = self.config.limits.packet_bytes_max.saturating_sub(overhead);
        let used = compound_len(own.iter().map(Vec::len)) + 1; // +1: room for a longer item count
        let limit = retransmit_limit(self.config.retransmit_mult, self.members.len());
        let extra = self.broadcasts.take(budget.saturating_sub(used), limit);
        let plain = if extra.is_empty() && own.len() == 1 {
            let mut p = Vec::with_capacity(own[0].len() + 1);
            p.push(VERSION);
            p.extend_from_slice(&own[0]);
            p
        } else {
            let parts: Vec<&[u8]> = own
                .iter()
                .map(Vec::as_slice)
                .chain(extra.iter().map(|p| &p[..]))
                .collect();
            encode_compound(&parts)
        };
        self.send_packet(to, plain);
    }

    fn send_packet(&mut self, to: SocketAddr, plain: Vec<u8>) {
        let bytes = self.seal(plain);
        self.counters.packets_out += 1;
        self.counters.bytes_out += bytes.len() as u64;
        self.push_output(Output::Packet { to, bytes });
    }

    fn send_stream(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.counters.streams_out += 1;
        self.counters.stream_bytes_out += bytes.len() as u64;
        self.push_output(Output::Stream { to, bytes });
    }

    fn push_pull_bytes(&mut self, reply: bool, join: bool) -> Vec<u8> {
        let members = self
            .members
            .values()
            .map(|m| PushPullMember {
                name: m.name.clone(),
                addr: m.addr,
                tags: m.tags.clone(),
                incarnation: m.incarnation,
                state: m.state,
            })
            .collect();
        let pp = PushPull {
            from: self.me.clone(),
            reply,
            join,
            event_ltime: self.event_clock,
            members,
        };
        let plain = Message::PushPull(pp).encode();
        self.seal(plain)
    }

    /// One gossip round: piggyback pending broadcasts to `gossip_nodes` random members
    /// (live ones, plus recently failed / left ones so they can learn and refute).
    fn gossip_tick(&mut self, now: Millis) {
        if self.broadcasts.is_empty() {
            return;
        }
        let dead_window = self.config.gossip_to_the_dead;
        let targets = self.random_members(self.config.gossip_nodes, now, move |m, _| {
            m.state.is_live() || now.since(m.state_change) < dead_window
        });
        let overhead = if self.keyring.is_some() { OVERHEAD } else { 0 };
        let budget = self
            .config
            .limits
            .packet_bytes_max
            .saturating_sub(overhead + 2 + 2);
        let limit = retransmit_limit(self.config.retransmit_mult, self.members.len());
        for (_, addr) in targets {
            let parts = self.broadcasts.take(budget, limit);
            if parts.is_empty() {
                break;
            }
            let plain = if parts.len() == 1 {
                let mut p = vec![VERSION];
                p.extend_from_slice(&parts[0]);
                p
            } else {
                let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                encode_compound(&refs)
            };
            self.send_packet(addr, plain);
        }
    }

    /// Up to `k` distinct random members other than this node satisfying `ok`.
    fn random_members(
        &mut self,
        k: usize,
        _now: Millis,
        ok: impl Fn(&Member, &str) -> bool,
    ) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<(String, SocketAddr)> = Vec::with_capacity(k);
        if k == 0 || self.names.len() <= 1 {
            return out;
        }
        let n = self.names.len();
        let eligible = |g: &Gossip, name: &str| -> Option<SocketAddr> {
            if name == g.me {
                return None;
            }
            let m = g.members.get(name)?;
            ok(m, &g.me).then_some(m.addr)
        };
        // Random tries first (cheap on big clusters), then a full scan if that fell short.
        for _ in 0..(4 * k + 8) {
            if out.len() >= k {
                return out;
            }
            let i = (self.rng.next_u64() % n as u64) as usize;
            let name = &self.names[i];
            if out.iter().any(|(o, _)| o == name) {
                continue;
            }
            if let Some(addr) = eligible(self, name) {
                out.push((name.clone(), addr));
            }
        }
        let mut rest: Vec<(String, SocketAddr)> = self
            .names
            .iter()
            .filter(|name| !out.iter().any(|(o, _)| o == *name))
            .filter_map(|name| eligible(self, name).map(|a| (name.clone(), a)))
            .collect();
        while out.len() < k && !rest.is_empty() {
            let i = (self.rng.next_u64() % rest.len() as u64) as usize;
            out.push(rest.swap_remove(i));
        }
        out
    }
}
