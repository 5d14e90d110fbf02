//! SWIM probe bookkeeping: the probe in flight, the round-robin target order and indirect
//! probes relayed for others.
//!
//! A protocol period: ping the next member in a shuffled round-robin order; if no ack within
//! `probe_timeout`, send indirect pings via `indirect_checks` random members (asking for
//! Lifeguard nacks); if still no ack when the period ends, suspect the member and raise the
//! local health score by the number of missing nacks (or by one if no indirect probe was
//! possible). Any ack lowers the score by one.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The probe of the current protocol period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Sequence number in the ping and expected in the ack.
    pub seq: u32,
    /// Target name.
    pub target: String,
    /// Got an ack (directly or forwarded).
    pub acked: bool,
    /// Indirect pings sent (= nacks expected).
    pub indirect: u32,
    /// Nacks received.
    pub nacks: u32,
}

/// An indirect ping this node performs on behalf of `origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// Who asked.
    pub origin: SocketAddr,
    /// Their sequence number.
    pub origin_seq: u32,
    /// They want a nack if the target stays silent.
    pub want_nack: bool,
    /// The nack has been sent; the relay is kept a little longer for late acks.
    pub nacked: bool,
}

/// Probe state of one node.
#[derive(Debug, Clone, Default)]
pub struct Prober {
    /// Probe in flight.
    pub current: Option<Probe>,
    /// Shuffled member names for round-robin probing.
    pub order: Vec<String>,
    /// Next index into `order`.
    pub index: usize,
    /// Relays in flight, by the local sequence number used to ping the target.
    pub relays: BTreeMap<u32, Relay>,
    next_seq: u32,
}

impl Prober {
    /// A fresh sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }
}
