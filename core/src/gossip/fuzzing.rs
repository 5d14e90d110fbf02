//! Shared by the `gossip_packet` fuzz target and the stable corpus replay test
//! (`corpus_test.rs`): seed inputs built from real encoded messages, and the exercise that
//! feeds one input to a live node and checks its invariants.

use std::net::SocketAddr;

use super::codec::*;
use super::crypto::Keyring;
use super::harness::node_addr;
use super::member::MemberState;
use super::{Config, Gossip, Identity, Millis, Tags};

/// The key the fuzz target uses for its "encrypted" mode (first input byte odd).
pub const FUZZ_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Seed messages: one of each type, a compound, a push-pull.
pub fn seed_messages() -> Vec<Message> {
    let a: SocketAddr = node_addr(1);
    let mut tags = Tags::new();
    tags.insert("role".into(), "consul".into());
    tags.insert("dc".into(), "dc1".into());
    let alive = Message::Alive(Alive {
        name: "node-0001".into(),
        addr: a,
        tags: tags.clone(),
        incarnation: 3,
    });
    vec![
        Message::Ping(Ping {
            seq: 7,
            target: "fuzz".into(),
            incarnation: 0,
        }),
        Message::IndirectPing(IndirectPing {
            seq: 8,
            target: "node-0001".into(),
            target_addr: a,
            nack: true,
        }),
        Message::Ack(Ack { seq: 7 }),
        Message::Nack(Nack { seq: 8 }),
        alive.clone(),
        Message::Suspect(Suspect {
            name: "node-0001".into(),
            incarnation: 3,
            from: "node-0002".into(),
        }),
        Message::Suspect(Suspect {
            name: "fuzz".into(),
            incarnation: 1,
            from: "node-0002".into(),
        }),
        Message::Dead(Dead {
            name: "node-0001".into(),
            incarnation: 3,
            from: "node-0002".into(),
            reason: DeadReason::Failed,
        }),
        Message::Dead(Dead {
            name: "node-0001".into(),
            incarnation: 3,
            from: "node-0001".into(),
            reason: DeadReason::Left,
        }),
        Message::Dead(Dead {
            name: "node-0001".into(),
            incarnation: 4,
            from: "fuzz".into(),
            reason: DeadReason::Pruned,
        }),
        Message::UserEvent(UserEvent {
            ltime: 5,
            name: "deploy".into(),
            payload: b"v1".to_vec(),
        }),
        Message::Compound(vec![Message::Ack(Ack { seq: 1 }), alive.clone()]),
        Message::PushPull(PushPull {
            from: "node-0001".into(),
            reply: false,
            join: true,
            event_ltime: 9,
            members: vec![PushPullMember {
                name: "node-0001".into(),
                addr: a,
                tags,
                incarnation: 3,
                state: MemberState::Alive,
            }],
        }),
    ]
}

/// The corpus files: `[mode, packet...]` where mode 0 is plaintext and 1 encrypted.
pub fn seed_files() -> Vec<Vec<u8>> {
    use rand_chacha::rand_core::SeedableRng;
    let ring = Keyring::new(&[FUZZ_KEY.to_owned()], 4).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut out = Vec::new();
    for m in seed_messages() {
        let plain = m.encode();
        let mut f = vec![0u8];
        f.extend_from_slice(&plain);
        out.push(f);
        let mut f = vec![1u8];
        f.extend_from_slice(&ring.encrypt(&mut rng, &plain));
        out.push(f);
    }
    out
}

/// What the fuzz target does with one input (`[mode, bytes...]`) (shared so the corpus
/// replays identically): feed it to a live node as a packet and as a stream, check invariants.
pub fn exercise(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let keyed = mode & 1 == 1;
    let mut config = Config::lan();
    if keyed {
        config.keys = vec![FUZZ_KEY.to_owned()];
    }
    let me = Identity {
        name: "fuzz".into(),
        addr: node_addr(0),
        tags: Tags::new(),
    };
    let mut g = Gossip::new(Millis(0), config, me, [7; 32]).unwrap();
    let from = node_addr(1);
    g.handle_packet(Millis(10), from, bytes);
    let _ = g.handle_stream(Millis(20), from, bytes);
    g.handle_timeout(Millis(5_000));
    // Invariants: we are still alive and in the list, counters are consistent, outputs bounded.
    let local = g.local();
    assert_eq!(local.name, "fuzz");
    assert!(local.state.is_live());
    let c = g.counters();
    assert_eq!(c.packets_in, 1);
    assert_eq!(c.streams_in, 1);
    let mut n = 0;
    while let Some(o) = g.poll_output() {
        if let super::Output::Packet { bytes, .. } = &o {
            assert!(bytes.len() <= 1400);
        }
        n += 1;
        assert!(n <= 8192);
    }
    assert!(g.next_deadline().is_some());
}

/// Encrypt `plain` with [`FUZZ_KEY`] (fixed nonce stream), so fuzzed bytes reach the
/// decoder of a keyed node.
pub fn encrypt_with_fuzz_key(plain: &[u8]) -> Vec<u8> {
    use rand_chacha::rand_core::SeedableRng;
    let ring = Keyring::new(&[FUZZ_KEY.to_owned()], 4).expect("valid fuzz key");
    ring.encrypt(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1), plain)
}
