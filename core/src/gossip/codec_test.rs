//! Property tests of the wire format.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::codec::*;
use super::member::{MemberState, Tags};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn tags() -> impl Strategy<Value = Tags> {
    proptest::collection::btree_map("[a-z]{1,6}", ".{0,8}", 0..4)
}

fn state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Alive),
        Just(MemberState::Suspect),
        Just(MemberState::Leaving),
        Just(MemberState::Left),
        Just(MemberState::Failed),
    ]
}

fn simple() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), ".{0,12}", any::<u64>()).prop_map(|(seq, target, incarnation)| {
            Message::Ping(Ping {
                seq,
                target,
                incarnation,
            })
        }),
        (any::<u32>(), ".{0,12}", addr(), any::<bool>()).prop_map(
            |(seq, target, target_addr, nack)| Message::IndirectPing(IndirectPing {
                seq,
                target,
                target_addr,
                nack
            })
        ),
        any::<u32>().prop_map(|seq| Message::Ack(Ack { seq })),
        any::<u32>().prop_map(|seq| Message::Nack(Nack { seq })),
        (".{0,12}", addr(), tags(), any::<u64>()).prop_map(|(name, addr, tags, incarnation)| {
            Message::Alive(Alive {
                name,
                addr,
                tags,
                incarnation,
            })
        }),
        (".{0,12}", any::<u64>(), ".{0,12}").prop_map(
            |(name, incarnation, from)| Message::Suspect(Suspect {
                name,
                incarnation,
                from
            })
        ),
        (".{0,12}", any::<u64>(), ".{0,12}", 0..3u8).prop_map(|(name, incarnation, from, r)| {
            let reason = [DeadReason::Failed, DeadReason::Left, DeadReason::Pruned][r as usize];
            Message::Dead(Dead {
                name,
                incarnation,
                from,
                reason,
            })
        }),
        (
            any::<u64>(),
            ".{0,12}",
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(ltime, name, payload)| Message::UserEvent(UserEvent {
                ltime,
                name,
                payload
            })),
        (
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec((".{0,8}", addr(), tags(), any::<u64>(), state()), 0..4)
        )
            .prop_map(|(reply, join, event_ltime, ms)| {
                let from = ms.first().map(|m| m.0.clone()).unwrap_or_default();
                let members = ms
                    .into_iter()
                    .map(|(name, addr, tags, incarnation, state)| PushPullMember {
                        name,
                        addr,
                        tags,
                        incarnation,
                        state,
                    })
                    .collect();
                Message::PushPull(PushPull {
                    from,
                    reply,
                    join,
                    event_ltime,
                    members,
                })
            }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        simple(),
        proptest::collection::vec(simple(), 0..5).prop_map(Message::Compound)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(m in message()) {
        let bytes = m.encode();
        prop_assert_eq!(Message::decode(&bytes), Ok(m.clone()));
        if let Message::Compound(items) = &m {
            let parts: Vec<Vec<u8>> = items.iter().map(Message::encode_part).collect();
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(encode_compound(&refs), bytes.clone());
            prop_assert_eq!(compound_len(parts.iter().map(Vec::len)), bytes.len());
        }
    }

    #[test]
    fn any_bytes_decode_to_error_or_canonical_message(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes);
        }
    }

    #[test]
    fn mutated_messages_decode_to_error_or_canonical(
        m in message(),
        i in any::<usize>(),
        b in any::<u8>(),
    ) {
        let mut bytes = m.encode();
        let len = bytes.len();
        bytes[i % len] = b;
        if let Ok(m2) = Message::decode(&bytes) {
            prop_assert_eq!(m2.encode(), bytes);
        }
    }
}
