use proptest::prelude::*;

use super::*;

fn put(client: u64, seq: u64, key: &str, value: &str) -> Request {
    Request {
        client,
        seq,
        opened_at: 0,
        cmd: Command::Kv(KvOp::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
        }),
    }
}

fn cas(client: u64, seq: u64, key: &str, value: &str, index: u64) -> Request {
    Request {
        client,
        seq,
        opened_at: 0,
        cmd: Command::Kv(KvOp::Cas {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            index,
        }),
    }
}

#[test]
fn retried_write_is_applied_once() {
    let mut sm = StateMachine::new();
    let first = sm.apply(1, &cas(7, 1, "k", "a", 0));
    assert!(matches!(
        first,
        Response::Kv {
            outcome: KvOutcome { ok: true, .. },
            index: 1
        }
    ));
    // The same request committed again (a client retry after a timeout) returns the first
    // answer; a second application would have failed the cas.
    let retry = sm.apply(2, &cas(7, 1, "k", "a", 0));
    assert_eq!(retry, first);
    assert_eq!(sm.kv().get("k").unwrap().modify_index, 1);
    // An older sequence number is refused, not re-applied.
    sm.apply(3, &put(7, 2, "k", "b"));
    assert_eq!(sm.apply(4, &put(7, 1, "k", "old")), Response::Expired);
    assert_eq!(sm.kv().get("k").unwrap().value, b"b");
    // Client 0 is never deduplicated.
    sm.apply(5, &put(0, 1, "z", "1"));
    assert!(matches!(
        sm.apply(6, &put(0, 1, "z", "2")),
        Response::Kv { .. }
    ));
    assert_eq!(sm.kv().get("z").unwrap().value, b"2");
    assert_eq!(sm.last_applied(), 6);
}

#[test]
fn dedup_table_is_bounded() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put(1, 1, "first", "a"));
    sm.apply(2, &put(1, 2, "first", "b"));
    let n = DEDUP_CLIENTS_MAX as u64 + 10;
    for c in 2..=n {
        sm.apply(c + 1, &put(c, 1, "k", &c.to_string()));
    }
    assert_eq!(sm.clients.len(), DEDUP_CLIENTS_MAX);
    // Client 1 was evicted: its retry is refused, never re-applied.
    assert_eq!(sm.apply(n + 2, &put(1, 2, "first", "b")), Response::Expired);
    assert_eq!(sm.kv().get("first").unwrap().modify_index, 2);
    sm.check_invariants().unwrap();
}

/// A retry of an evicted client's very first write is refused, while a client opened after
/// the eviction is served.
#[test]
fn a_retried_first_write_of_an_evicted_client_is_refused() {
    let mut sm = StateMachine::new();
    sm.dedup_clients_max = Some(2);
    let first = |client, opened_at| Request {
        opened_at,
        ..put(client, 1, "k", &client.to_string())
    };
    // Client 1 opened with index 0 applied; its first write lands at 1.
    assert!(matches!(
        sm.apply(1, &first(1, 0)),
        Response::Kv { index: 1, .. }
    ));
    sm.apply(2, &first(2, 1));
    sm.apply(3, &first(3, 2));
    assert_eq!(sm.clients.len(), 2, "client 1 was evicted");
    assert_eq!(sm.apply(4, &first(1, 0)), Response::Expired, "the retry");
    assert_eq!(sm.kv().get("k").unwrap().modify_index, 3);
    // A client opened before the eviction's index is refused too; one opened after is not.
    assert_eq!(sm.apply(5, &first(9, 0)), Response::Expired);
    assert!(matches!(
        sm.apply(6, &first(10, 5)),
        Response::Kv { index: 6, .. }
    ));
    sm.check_invariants().unwrap();
}

#[test]
#[should_panic(expected = "applied after")]
fn indexes_must_increase() {
    let mut sm = StateMachine::new();
    sm.apply(5, &put(1, 1, "k", "v"));
    sm.apply(5, &put(1, 2, "k", "v"));
}

#[test]
fn snapshot_rejects_garbage() {
    assert_eq!(
        StateMachine::restore(b"nope"),
        Err(SnapshotError::NotASnapshot)
    );
    let mut snap = StateMachine::new().snapshot();
    snap[8..12].copy_from_slice(&99u32.to_be_bytes());
    assert_eq!(
        StateMachine::restore(&snap),
        Err(SnapshotError::Version(99))
    );
    let mut snap = StateMachine::new().snapshot();
    snap.push(0xff);
    snap.truncate(12);
    snap.extend_from_slice(&[0xff; 3]);
    assert!(matches!(
        StateMachine::restore(&snap),
        Err(SnapshotError::Decode(_))
    ));
}

fn arb_request() -> impl Strategy<Value = Request> {
    let key = prop::sample::select(vec!["a", "a/b", "b", "c/d"]).prop_map(String::from);
    let op = prop_oneof![
        (
            key.clone(),
            prop::collection::vec(any::<u8>(), 0..4),
            any::<u64>()
        )
            .prop_map(|(key, value, flags)| KvOp::Set { key, value, flags }),
        (
            key.clone(),
            prop::collection::vec(any::<u8>(), 0..4),
            0u64..20
        )
            .prop_map(|(key, value, index)| KvOp::Cas {
                key,
                value,
                flags: 0,
                index
            }),
        key.clone().prop_map(|key| KvOp::Delete { key }),
        (key.clone(), 0u64..20).prop_map(|(key, index)| KvOp::DeleteCas { key, index }),
        prop::sample::select(vec!["a", ""]).prop_map(|p| KvOp::DeleteTree { prefix: p.into() }),
        (0u64..20).prop_map(|up_to| KvOp::ReapTombstones { up_to }),
    ]
    .prop_map(Command::Kv);
    let cmd = prop_oneof![3 => op, 1 => arb_catalog_op().prop_map(Command::Catalog)];
    (0u64..4, 1u64..6, cmd).prop_map(|(client, seq, cmd)| Request {
        opened_at: 0,
        client,
        seq,
        cmd,
    })
}

fn arb_catalog_op() -> impl Strategy<Value = CatalogOp> {
    use crate::catalog::{CheckInfo, Health, NodeInfo, Registration, ServiceInfo};
    let node = prop::sample::select(vec!["n1", "N1", "n2"]).prop_map(String::from);
    let sid = prop::sample::select(vec!["", "web", "db"]).prop_map(String::from);
    let status = prop::sample::select(vec![Health::Passing, Health::Critical]);
    prop_oneof![
        (node.clone(), sid.clone(), 0u16..3, status, any::<bool>()).prop_map(
            |(name, sid, port, status, with_check)| {
                let service = (!sid.is_empty()).then(|| ServiceInfo {
                    id: sid.clone(),
                    name: sid.clone(),
                    port,
                    ..ServiceInfo::default()
                });
                let checks = match with_check {
                    true => vec![CheckInfo {
                        check_id: format!("{sid}-check"),
                        name: "check".into(),
                        service_id: sid,
                        status,
                        ..CheckInfo::default()
                    }],
                    false => vec![],
                };
                CatalogOp::Register(Box::new(Registration {
                    node: NodeInfo {
                        name,
                        address: "10.0.0.1".into(),
                        ..NodeInfo::default()
                    },
                    skip_node_update: false,
                    service,
                    checks,
                }))
            }
        ),
        (node, sid).prop_map(|(node, sid)| CatalogOp::Deregister {
            node,
            service_id: (!sid.is_empty()).then_some(sid),
            check_id: None,
        }),
    ]
}

/// A snapshot written before the catalog existed (version 1) is still read.
#[test]
fn a_version_1_snapshot_is_restored_with_an_empty_catalog() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put(1, 1, "k", "v"));
    sm.apply(2, &put(2, 1, "j", "w"));
    let v1_body = (
        &sm.kv,
        sm.last_applied,
        &sm.clients,
        &sm.clients_by_index,
        sm.evicted_upto,
    );
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&postcard::to_allocvec(&v1_body).unwrap());
    let restored = StateMachine::restore(&bytes).unwrap();
    assert_eq!(restored, sm);
    assert!(restored.catalog().is_empty());
}

proptest! {
    #[test]
    fn snapshot_restore_round_trip(reqs in prop::collection::vec(arb_request(), 0..40)) {
        let mut sm = StateMachine::new();
        for (i, r) in reqs.iter().enumerate() {
            sm.apply(i as u64 + 1, r);
            prop_assert!(sm.check_invariants().is_ok());
        }
        let restored = StateMachine::restore(&sm.snapshot()).unwrap();
        prop_assert_eq!(&restored, &sm);
        // and the restored copy behaves the same from here on
        let mut a = sm.clone();
        let mut b = restored;
        let next = put(3, 99, "a", "after");
        prop_assert_eq!(a.apply(1000, &next), b.apply(1000, &next));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn request_codec_round_trip(r in arb_request()) {
        let bytes = postcard::to_allocvec(&r).unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = postcard::from_bytes::<Request>(&bytes);
        let _ = StateMachine::restore(&bytes);
    }
}
