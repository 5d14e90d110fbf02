//! Protocol parameters and limits, with Consul's LAN and WAN defaults.

use super::time::Millis;

/// Every tunable of the protocol and every bound on memory or packet size.
///
/// Start from [`Config::lan`] or [`Config::wan`] (Consul's defaults, which are memberlist's
/// `DefaultLANConfig` / `DefaultWANConfig` plus Serf's reaping and event settings) and adjust.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SWIM protocol period: one member is probed per interval (scaled by local health).
    pub probe_interval: Millis,
    /// How long to wait for a direct ack before asking `indirect_checks` members to probe.
    pub probe_timeout: Millis,
    /// Number of members asked to probe indirectly when a direct probe times out.
    pub indirect_checks: usize,
    /// Period of the piggyback gossip round.
    pub gossip_interval: Millis,
    /// Members gossiped to per round.
    pub gossip_nodes: usize,
    /// Failed / left members keep receiving gossip for this long, so a falsely failed node
    /// learns about it and can refute.
    pub gossip_to_the_dead: Millis,
    /// Suspicion timeout multiplier: `min = suspicion_mult * log10(max(1, n)) * probe_interval`.
    pub suspicion_mult: u32,
    /// `max = suspicion_max_timeout_mult * min` (Lifeguard: start at max, shrink with
    /// independent confirmations).
    pub suspicion_max_timeout_mult: u32,
    /// A broadcast is sent `retransmit_mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Period of full-state push-pull sync (scaled up for clusters above 32 members).
    pub push_pull_interval: Millis,
    /// Lifeguard local health: the probe interval and timeout are multiplied by
    /// `1 + score`, where `score` is in `0..awareness_max_multiplier`.
    pub awareness_max_multiplier: u32,
    /// An indirect prober sends a nack if the target has not acked within this fraction
    /// (percent) of the probe timeout.
    pub nack_timeout_percent: u64,
    /// How often a random failed member is retried with a push-pull (Serf's reconnect).
    pub reconnect_interval: Millis,
    /// Failed members are reaped after this long (Consul: 72 h).
    pub reconnect_timeout: Millis,
    /// Left members are reaped after this long; reaped names stay tombstoned as long again.
    pub tombstone_timeout: Millis,
    /// How often reaping runs.
    pub reap_interval: Millis,
    /// After `leave`, the node keeps gossiping for this long before it reports `Left`.
    pub leave_propagate_delay: Millis,
    /// Base64 keys (16, 24 or 32 bytes); the first is the primary. Empty: no encryption.
    pub keys: Vec<String>,
    /// The incarnation this node starts at. A node that restarts without its state (a
    /// wiped data dir, new tags) must start above every incarnation its earlier self
    /// reached, or members that hold the old self at an equal or higher incarnation keep
    /// its old tags until a push-pull; the agent passes the wall clock in milliseconds
    /// (refutations add one each, so an earlier self is always below a later start).
    pub first_incarnation: u64,
    /// Size and queue bounds.
    pub limits: Limits,
}

/// Named bounds on every buffer and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest UDP datagram sent or accepted (bytes, after encryption).
    pub packet_bytes_max: usize,
    /// Largest push-pull stream payload sent or accepted.
    pub stream_bytes_max: usize,
    /// Pending broadcasts; beyond it the most-retransmitted are dropped.
    pub broadcast_queue_max: usize,
    /// Known members (including failed/left ones not yet reaped).
    pub member_count_max: usize,
    /// Recently seen user events kept for de-duplication (Serf's EventBuffer).
    pub event_buffer: usize,
    /// Largest user event (name + payload).
    pub user_event_bytes_max: usize,
    /// Largest encoded tag map (memberlist's meta limit).
    pub tags_bytes_max: usize,
    /// Queued outputs not yet drained; beyond it new sends are dropped (and counted).
    pub output_queue_max: usize,
    /// Indirect probes relayed for others at once.
    pub relay_max: usize,
    /// Reaped names remembered so stale gossip cannot resurrect them.
    pub tombstone_max: usize,
    /// Keys in a keyring.
    pub keys_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            packet_bytes_max: 1400,
            stream_bytes_max: 8 * 1024 * 1024,
            broadcast_queue_max: 4096,
            member_count_max: 16_384,
            event_buffer: 512,
            user_event_bytes_max: 512,
            tags_bytes_max: 512,
            output_queue_max: 8192,
            relay_max: 1024,
            tombstone_max: 16_384,
            keys_max: 16,
        }
    }
}

impl Config {
    /// Consul's LAN profile: probe 1 s / 500 ms, gossip 200 ms to 3, suspicion mult 4,
    /// retransmit mult 4, push-pull 30 s, 3 indirect checks.
    pub fn lan() -> Config {
        Config {
            probe_interval: Millis(1000),
            probe_timeout: Millis(500),
            indirect_checks: 3,
            gossip_interval: Millis(200),
            gossip_nodes: 3,
            gossip_to_the_dead: Millis::secs(30),
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            push_pull_interval: Millis::secs(30),
            awareness_max_multiplier: 8,
            nack_timeout_percent: 80,
            reconnect_interval: Millis::secs(30),
            reconnect_timeout: Millis::hours(72),
            tombstone_timeout: Millis::hours(24),
            reap_interval: Millis::secs(15),
            leave_propagate_delay: Millis::secs(1),
            keys: Vec::new(),
            first_incarnation: 1,
            limits: Limits::default(),
        }
    }

    /// Consul's WAN profile: probe 5 s / 3 s, gossip 500 ms to 4, suspicion mult 6,
    /// retransmit mult 4, push-pull 60 s.
    pub fn wan() -> Config {
        Config {
            probe_interval: Millis::secs(5),
            probe_timeout: Millis::secs(3),
            gossip_interval: Millis(500),
            gossip_nodes: 4,
            gossip_to_the_dead: Millis::secs(60),
            suspicion_mult: 6,
            push_pull_interval: Millis::secs(60),
            ..Config::lan()
        }
    }
}
