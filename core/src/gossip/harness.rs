//! In-process discrete-event harness: N gossip state machines on a simulated lossy network
//! with a virtual clock.
//!
//! Events (packet deliveries, stream deliveries, node wake-ups) sit in a binary heap keyed by
//! `(time, sequence number)`, so a run is a pure function of the seed and the calls made on
//! the harness. Faults: random loss, cutting the link between two nodes, isolating a node,
//! muting a node (it hears but its packets are lost: "never acks"), killing a node; `heal`
//! undoes cuts, isolation and muting. Streams (push-pull, TCP) are not subject to random loss
//! but are to cuts and isolation.
//!
//! Checkers ([`Harness::check_converged`], [`Harness::check_failed`],
//! [`Harness::check_event_delivered_once`]) return `Err(description)` instead of panicking so
//! that tests can also assert that they *catch* broken runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::Config;
use super::events::Event;
use super::machine::{Gossip, Identity, Output};
use super::member::{MemberState, Tags};
use super::time::Millis;

/// Simulated network characteristics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetConfig {
    /// Probability that a UDP datagram is lost.
    pub loss: f64,
    /// Smallest one-way latency.
    pub latency_min: Millis,
    /// Largest one-way latency.
    pub latency_max: Millis,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss: 0.0,
            latency_min: Millis(1),
            latency_max: Millis(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Wake(usize),
    Packet {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    StreamRequest {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    StreamReply {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
}

struct Slot {
    gossip: Gossip,
    addr: SocketAddr,
    up: bool,
    wake: Option<Millis>,
}

/// Traffic totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// UDP packets sent.
    pub packets: u64,
    /// UDP packets lost (random loss, cuts, dead receivers).
    pub packets_lost: u64,
    /// UDP bytes sent.
    pub packet_bytes: u64,
    /// Stream payloads sent.
    pub streams: u64,
    /// Stream bytes sent.
    pub stream_bytes: u64,
}

/// A simulated cluster.
pub struct Harness {
    now: Millis,
    nodes: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, usize>,
    heap: BinaryHeap<Reverse<(Millis, u64, Ev)>>,
    seq: u64,
    rng: ChaCha8Rng,
    seed: u64,
    net: NetConfig,
    cuts: BTreeSet<(usize, usize)>,
    isolated: BTreeSet<usize>,
    muted: BTreeSet<usize>,
    record: bool,
    log: Vec<(Millis, usize, Event)>,
    pending: Vec<(Millis, usize, Event)>,
    traffic: Traffic,
    /// The first broken invariant seen (checked after every event a node handles).
    violation: Option<String>,
    /// Each node's own incarnation after its last event (it must never go down).
    incarnations: Vec<u64>,
}

/// The address the harness gives node `i`.
pub fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))
}

/// The name the harness gives node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

impl Harness {
    /// An empty cluster; everything random derives from `seed`.
    pub fn new(seed: u64, net: NetConfig) -> Harness {
        Harness {
            now: Millis::ZERO,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            net,
            cuts: BTreeSet::new(),
            isolated: BTreeSet::new(),
            muted: BTreeSet::new(),
            record: true,
            log: Vec::new(),
            pending: Vec::new(),
            traffic: Traffic::default(),
            violation: None,
            incarnations: Vec::new(),
        }
    }

    /// Keep (default) or stop keeping the event log (big simulations use callbacks).
    pub fn set_recording(&mut self, on: bool) {
        self.record = on;
    }

    /// Change the network characteristics from now on.
    pub fn set_net(&mut self, net: NetConfig) {
        self.net = net;
    }

    /// Virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// No nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Events recorded so far: `(time, node index, event)`.
    pub fn log(&self) -> &[(Millis, usize, Event)] {
        &self.log
    }

    /// Add a node named [`node_name`]`(i)` at [`node_addr`]`(i)`; it knows only itself.
    pub fn add_node(&mut self, config: Config, tags: Tags) -> usize {
        let i = self.nodes.len();
        let identity = Identity {
            name: node_name(i),
            addr: node_addr(i),
            tags,
        };
        let seed =
            Gossip::seed_from_u64(self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let gossip = match Gossip::new(self.now, config, identity, seed) {
            Ok(g) => g,
            Err(e) => panic!("harness node config invalid: {e}"),
        };
        self.by_addr.insert(node_addr(i), i);
        self.nodes.push(Slot {
            gossip,
            addr: node_addr(i),
            up: true,
            wake: None,
        });
        self.pump(i);
        i
    }

    /// The state machine of node `i` (call [`Harness::pump`] after driving it directly).
    pub fn node(&mut self, i: usize) -> &mut Gossip {
        &mut self.nodes[i].gossip
    }

    /// Read-only access to node `i`.
    pub fn node_ref(&self, i: usize) -> &Gossip {
        &self.nodes[i].gossip
    }

    /// Is node `i` running (not killed)?
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Node `i` joins via the given nodes.
    pub fn join(&mut self, i: usize, via: &[usize]) {
        let addrs: Vec<SocketAddr> = via.iter().map(|&j| node_addr(j)).collect();
        let now = self.now;
        let _ = self.nodes[i].gossip.join(now, &addrs);
        self.pump(i);
    }

    /// Crash node `i` (no more input or output, no leave).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Cut the link between `a` and `b` (both directions).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cuts.insert((a.min(b), a.max(b)));
    }

    /// Isolate node `i` from everyone.
    pub fn isolate(&mut self, i: usize) {
        self.isolated.insert(i);
    }

    /// Node `i` still receives but everything it sends over UDP is lost (never acks).
    pub fn mute(&mut self, i: usize) {
        self.muted.insert(i);
    }

    /// Undo every cut, isolation and mute.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.isolated.clear();
        self.muted.clear();
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.isolated.contains(&a)
            && !self.isolated.contains(&b)
            && !self.cuts.contains(&(a.min(b), a.max(b)))
    }

    fn latency(&mut self) -> Millis {
        let lo = self.net.latency_min.0;
        let hi = self.net.latency_max.0.max(lo);
        Millis(lo + self.rng.next_u64() % (hi - lo + 1))
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    /// Route node `i`'s outputs onto the network and schedule its next wake-up.
    pub fn pump(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].gossip.poll_output() {
            if !self.nodes[i].up {
                continue;
            }
            match out {
                Output::Packet { to, bytes } => {
                    self.traffic.packets += 1;
                    self.traffic.packet_bytes += bytes.len() as u64;
                    let Some(&j) = self.by_addr.get(&to) else {
                        self.traffic.packets_lost += 1;
                        continue;
                    };
                    let lost = self.net.loss > 0.0
                        && (self.rng.next_u64() as f64 / u64::MAX as f64) < self.net.loss;
                    if lost || !self.reachable(i, j) || self.muted.contains(&i) {
                        self.traffic.packets_lost += 1;
                        continue;
                    }
                    let at = self.now.plus(self.latency());
                    let from = self.nodes[i].addr;
                    self.push(at, Ev::Packet { to: j, from, bytes });
                }
                Output::Stream { to, bytes } => self.route_stream(i, to, bytes, true),
                Output::StreamReply { to, bytes } => self.route_stream(i, to, bytes, false),
                Output::Event(e) => self.pending.push((self.now, i, e)),
            }
        }
        if !self.nodes[i].up {
            return;
        }
        if let Some(d) = self.nodes[i].gossip.next_deadline() {
            if self.nodes[i].wake.is_none_or(|w| d < w) {
                self.nodes[i].wake = Some(d);
                let at = d.max(self.now);
                self.push(at, Ev::Wake(i));
            }
        }
    }

    fn route_stream(&mut self, i: usize, to: SocketAddr, bytes: Vec<u8>, request: bool) {
        self.traffic.streams += 1;
        self.traffic.stream_bytes += bytes.len() as u64;
        let Some(&j) = self.by_addr.get(&to) else {
            return;
        };
        if !self.reachable(i, j) {
            return;
        }
        let at = self.now.plus(self.latency());
        let from = self.nodes[i].addr;
        let ev = if request {
            Ev::StreamRequest {
                to: j,
                from: i,
                bytes,
            }
        } else {
            Ev::StreamReply { to: j, from, bytes }
        };
        self.push(at, ev);
    }

    /// Process one event; false when nothing is left before `until`.
    fn step(&mut self, until: Millis) -> bool {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= until => {}
            _ => return false,
        }
        let Some(Reverse((at, _, ev))) = self.heap.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let now = self.now;
        match ev {
            Ev::Wake(i) => {
                if !self.nodes[i].up || self.nodes[i].wake.is_some_and(|w| w > at) {
                    return true;
                }
                self.nodes[i].wake = None;
                self.nodes[i].gossip.handle_timeout(now);
                self.pump(i);
                self.check_node(i);
            }
            Ev::Packet { to, from, bytes } => {
                if !self.nodes[to].up {
                    self.traffic.packets_lost += 1;
                    return true;
                }
                self.nodes[to].gossip.handle_packet(now, from, &bytes);
                self.pump(to);
                self.check_node(to);
            }
            Ev::StreamRequest { to, from, bytes } => {
                if !self.nodes[to].up {
                    return true;
                }
                let from_addr = self.nodes[from].addr;
                let reply = self.nodes[to].gossip.handle_stream(now, from_addr, &bytes);
                self.pump(to);
                self.check_node(to);
                if let Some(reply) = reply {
                    self.traffic.streams += 1;
                    self.traffic.stream_bytes += reply.len() as u64;
                    if self.reachable(to, from) {
                        let at = now.plus(self.latency());
                        let to_addr = self.nodes[to].addr;
                        self.push(
                            at,
                            Ev::StreamReply {
                                to: from,
                                from: to_addr,
                                bytes: reply,
                            },
                        );
                    }
                }
            }
            Ev::StreamReply { to, from, bytes } => {
                if !self.nodes[to].up {
                    return true;
                }
                let _ = self.nodes[to].gossip.handle_stream(now, from, &bytes);
                self.pump(to);
                self.check_node(to);
            }
        }
        true
    }

    /// Check node `i`'s invariants after it handled an event; keep the first violation.
    fn check_node(&mut self, i: usize) {
        if self.violation.is_some() {
            return;
        }
        let g = &self.nodes[i].gossip;
        let inc = g.local().incarnation;
        if self.incarnations.len() <= i {
            self.incarnations.resize(i + 1, 0);
        }
        let result = g
            .check_invariants()
            .and_then(|()| match inc < self.incarnations[i] {
                true => Err(format!(
                    "own incarnation went down from {} to {inc}",
                    self.incarnations[i]
                )),
                false => Ok(()),
            });
        self.incarnations[i] = inc;
        if let Err(e) = result {
            self.violation = Some(format!("t={}ms node {i}: {e}", self.now.0));
        }
    }

    /// The first invariant a node broke during the run, if any (seed: `self.seed`).
    pub fn check_invariants(&self) -> Result<(), String> {
        match &self.violation {
            Some(v) => Err(format!("gossip invariant broken (seed {}): {v}", self.seed)),
            None => Ok(()),
        }
    }

    /// Node `i`'s state machine, to break on purpose in the checker's own test.
    #[cfg(test)]
    pub(crate) fn node_for_test(&mut self, i: usize) -> &mut Gossip {
        &mut self.nodes[i].gossip
    }

    /// Run until virtual time `until`, recording events in the log.
    pub fn run_until(&mut self, until: Millis) {
        self.run_until_with(until, &mut |_, _, _| {});
    }

    /// Run for `d` more milliseconds.
    pub fn run_for(&mut self, d: Millis) {
        self.run_until(self.now.plus(d));
    }

    /// Run until `until`, handing every event to `f` as `(time, node, event)` (and to the log
    /// if recording).
    pub fn run_until_with(&mut self, until: Millis, f: &mut dyn FnMut(Millis, usize, &Event)) {
        loop {
            self.flush_events(f);
            if !self.step(until) {
                break;
            }
        }
        self.flush_events(f);
        self.now = self.now.max(until);
    }

    /// Deliver events produced by direct calls (e.g. `node(i).user_event`) to `f` and the log.
    pub fn flush_events(&mut self, f: &mut dyn FnMut(Millis, usize, &Event)) {
        for (t, i, e) in std::mem::take(&mut self.pending) {
            f(t, i, &e);
            if self.record {
                self.log.push((t, i, e));
            }
        }
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].up && !self.nodes[i].gossip.has_left()
    }

    /// Every running node sees every other running node `Alive`, and no killed node live.
    pub fn check_converged(&self) -> Result<(), String> {
        for (i, slot) in self.nodes.iter().enumerate() {
            if !self.running(i) {
                continue;
            }
            for j in 0..self.nodes.len() {
                if i == j {
                    continue;
                }
                let state = slot.gossip.member(&node_name(j)).map(|m| m.state);
                if self.running(j) {
                    if state != Some(MemberState::Alive) {
                        return Err(format!(
                            "{} sees running {} as {:?}",
                            node_name(i),
                            node_name(j),
                            state
                        ));
                    }
                } else if state.is_some_and(MemberState::is_live) {
                    return Err(format!(
                        "{} still sees stopped {} as {:?}",
                        node_name(i),
                        node_name(j),
                        state
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every running node other than `victim` sees `victim` failed, left or forgotten.
    pub fn check_failed(&self, victim: usize) -> Result<(), String> {
        for (i, slot) in self.nodes.iter().enumerate() {
            if i == victim || !self.running(i) {
                continue;
            }
            let state = slot.gossip.member(&node_name(victim)).map(|m| m.state);
            if state.is_some_and(MemberState::is_live) {
                return Err(format!(
                    "{} sees {} as {:?}",
                    node_name(i),
                    node_name(victim),
                    state
                ));
            }
        }
        Ok(())
    }

    /// Every running node got user event `name` exactly once (from the log).
    pub fn check_event_delivered_once(&self, name: &str) -> Result<(), String> {
        let mut got: BTreeMap<usize, usize> = BTreeMap::new();
        for (_, i, e) in &self.log {
            if let Event::User(u) = e {
                if u.name == name {
                    *got.entry(*i).or_default() += 1;
                }
            }
        }
        for i in 0..self.nodes.len() {
            if !self.running(i) {
                continue;
            }
            let n = got.get(&i).copied().unwrap_or(0);
            if n != 1 {
                return Err(format!("{} got event {name:?} {n} times", node_name(i)));
            }
        }
        Ok(())
    }
}
