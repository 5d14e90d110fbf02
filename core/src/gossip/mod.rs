//! SWIM + Lifeguard gossip membership (sans-IO).
//!
//! The protocol, as in HashiCorp memberlist / Serf which Consul uses:
//!
//! * **Failure detection (SWIM).** Every `probe_interval` a node pings the next member of a
//!   shuffled round-robin order (newly learned members are inserted at a random point of the
//!   current round). The ping carries the prober's view of the target's incarnation; a
//!   target that is ahead piggybacks its current `Alive` on the ack, so a missed refutation
//!   heals on the next probe. Without an ack within `probe_timeout` it asks
//!   `indirect_checks` random members to ping the target for it. Without any ack by the end
//!   of the period it broadcasts `Suspect`. A suspected member that hears about it refutes
//!   by broadcasting `Alive` with a higher incarnation number; otherwise, when the suspicion
//!   timeout expires, the suspecter broadcasts `Dead` and everyone marks the member failed.
//! * **Lifeguard.** The suspicion timeout starts at `max` and shrinks toward `min` as other
//!   members independently confirm it ([`suspicion`]); indirect probers send nacks when they
//!   cannot reach the target, so a prober that gets neither acks nor nacks learns that *it*
//!   is the slow one and raises its local health score, which stretches its own probe
//!   interval and timeout (as does having to refute a suspicion).
//! * **Dissemination.** State changes are queued as broadcasts ([`broadcast`]) and
//!   piggybacked on probes, acks and a gossip round every `gossip_interval` to
//!   `gossip_nodes` random members, each sent `retransmit_mult * ceil(log10(n + 1))` times.
//! * **Anti-entropy.** Push-pull exchanges the full member list over a stream on join and
//!   every `push_pull_interval` (scaled for large clusters); failed members are retried
//!   every `reconnect_interval` (Serf's reconnect), reaped after `reconnect_timeout`; left
//!   members are reaped after `tombstone_timeout`, and reaped names stay tombstoned.
//! * **Leave.** A leaving node broadcasts `Dead` about itself (reason `Left`), stays
//!   `Leaving` for `leave_propagate_delay`, then `Left`. Force-leave does the same on behalf
//!   of a failed member at its current incarnation, so stale alive gossip cannot undo it.
//! * **User events** carry a Lamport time and are de-duplicated in a bounded window.
//! * **Wire and encryption**: [`codec`], [`crypto`].
//!
//! The entry point is [`Gossip`]; [`harness`] runs many of them on a simulated network.

pub mod broadcast;
pub mod codec;
pub mod config;
pub mod counters;
pub mod crypto;
pub mod events;
pub mod fuzzing;
pub mod harness;
pub mod machine;
pub mod member;
pub mod probe;
pub mod suspicion;
pub mod time;

pub use codec::{CodecError, Message, UserEvent};
pub use config::{Config, Limits};
pub use counters::Counters;
pub use crypto::{generate_key, DecryptError, KeyError, Keyring};
pub use events::Event;
pub use machine::{CommandError, Gossip, Identity, Input, Output, Timer};
pub use member::{MemberInfo, MemberState, ServerInfo, Tags};
pub use time::Millis;

/// The RNG trait [`generate_key`] takes (rand_core 0.6, as used by rand 0.8).
pub use rand_core;

#[cfg(test)]
mod codec_test;
#[cfg(test)]
mod corpus_test;
#[cfg(test)]
mod machine_test;
