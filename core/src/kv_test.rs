use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn set(k: &str, v: &str) -> KvOp {
    KvOp::Set {
        key: k.into(),
        value: v.as_bytes().to_vec(),
        flags: 0,
    }
}

/// Apply ops at indexes 1, 2, 3, ... and return the outcomes.
fn run(store: &mut KvStore, ops: &[KvOp]) -> Vec<KvOutcome> {
    let start = store.table_index();
    ops.iter()
        .enumerate()
        .map(|(i, op)| store.apply(start + 1 + i as u64, op))
        .collect()
}

#[test]
fn index_bookkeeping_table() {
    // Spec §3.5, one row per line: op, then the entry's (create, modify) afterwards.
    let mut s = KvStore::new();
    s.apply(10, &set("a", "1"));
    assert_eq!(
        (
            s.get("a").unwrap().create_index,
            s.get("a").unwrap().modify_index
        ),
        (10, 10)
    );
    // changed value: modify moves, create stays
    s.apply(11, &set("a", "2"));
    assert_eq!(
        (
            s.get("a").unwrap().create_index,
            s.get("a").unwrap().modify_index
        ),
        (10, 11)
    );
    // identical write: nothing moves, not even the table index
    let out = s.apply(12, &set("a", "2"));
    assert_eq!(
        out,
        KvOutcome {
            ok: true,
            changed: false
        }
    );
    assert_eq!(s.get("a").unwrap().modify_index, 11);
    assert_eq!(s.table_index(), 11);
    // flags alone are a change
    s.apply(
        13,
        &KvOp::Set {
            key: "a".into(),
            value: b"2".to_vec(),
            flags: 7,
        },
    );
    assert_eq!(s.get("a").unwrap().modify_index, 13);
    assert_eq!(s.get("a").unwrap().flags, 7);
    // flags are not preserved by a write that omits them
    s.apply(14, &set("a", "2"));
    assert_eq!(s.get("a").unwrap().flags, 0);
}

#[test]
fn cas_rules() {
    let mut s = KvStore::new();
    let cas = |k: &str, v: &str, i: u64| KvOp::Cas {
        key: k.into(),
        value: v.as_bytes().to_vec(),
        flags: 0,
        index: i,
    };
    assert!(
        s.apply(1, &cas("k", "a", 0)).ok,
        "cas=0 creates an absent key"
    );
    assert!(
        !s.apply(2, &cas("k", "b", 0)).ok,
        "cas=0 fails on a present key"
    );
    assert!(!s.apply(3, &cas("k", "b", 5)).ok, "wrong index fails");
    assert!(s.apply(4, &cas("k", "b", 1)).ok, "right index succeeds");
    assert_eq!(s.get("k").unwrap().value, b"b");
    assert!(
        !s.apply(5, &cas("missing", "x", 4)).ok,
        "cas=N on a missing key fails"
    );
    // delete-cas
    assert!(
        !s.apply(
            6,
            &KvOp::DeleteCas {
                key: "k".into(),
                index: 0
            }
        )
        .ok,
        "cas=0 never deletes"
    );
    assert!(
        !s.apply(
            7,
            &KvOp::DeleteCas {
                key: "k".into(),
                index: 1
            }
        )
        .ok
    );
    assert!(
        s.apply(
            8,
            &KvOp::DeleteCas {
                key: "k".into(),
                index: 4
            }
        )
        .ok
    );
    assert!(s.get("k").is_none());
    let out = s.apply(
        9,
        &KvOp::DeleteCas {
            key: "k".into(),
            index: 4,
        },
    );
    assert_eq!(
        out,
        KvOutcome {
            ok: true,
            changed: false
        },
        "missing key returns true"
    );
}

#[test]
fn deletes_leave_tombstones_and_indexes_never_go_back() {
    let mut s = KvStore::new();
    run(&mut s, &[set("p/a", "1"), set("p/b", "2"), set("q", "3")]);
    assert_eq!(s.prefix_index("p/"), 2);
    s.apply(4, &KvOp::Delete { key: "p/b".into() });
    // p/b was the highest entry under p/; the tombstone keeps the prefix index at 4.
    assert_eq!(s.prefix_index("p/"), 4);
    assert_eq!(s.key_index("p/b"), 4);
    assert_eq!(s.tombstone_count(), 1);
    // deleting a missing key changes nothing
    assert!(!s.apply(5, &KvOp::Delete { key: "nope".into() }).changed);
    // reaping keeps the floor
    s.apply(6, &KvOp::ReapTombstones { up_to: 4 });
    assert_eq!(s.tombstone_count(), 0);
    assert_eq!(s.prefix_index("p/"), 4);
    assert_eq!(s.key_index("p/b"), 4);
    // recreate clears the tombstone
    s.apply(7, &KvOp::Delete { key: "q".into() });
    s.apply(8, &set("q", "again"));
    assert_eq!(s.tombstone_count(), 0);
    assert_eq!(s.get("q").unwrap().create_index, 8);
}

#[test]
fn missing_key_index_ignores_unrelated_writes() {
    let mut s = KvStore::new();
    s.apply(1, &set("a", "1"));
    let before = s.key_index("watched");
    s.apply(2, &set("b", "1"));
    s.apply(3, &KvOp::Delete { key: "a".into() });
    assert_eq!(
        s.key_index("watched"),
        before,
        "writes elsewhere must not move a missing key's index"
    );
    s.apply(4, &set("watched", "x"));
    assert_eq!(s.key_index("watched"), 4);
}

#[test]
fn delete_tree_and_byte_prefix() {
    let mut s = KvStore::new();
    run(
        &mut s,
        &[
            set("foo", "1"),
            set("food", "2"),
            set("fo", "3"),
            set("g", "4"),
        ],
    );
    let (list, _) = s.list("foo");
    assert_eq!(
        list.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["foo", "food"]
    );
    s.apply(
        5,
        &KvOp::DeleteTree {
            prefix: "foo".into(),
        },
    );
    assert_eq!(
        s.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["fo", "g"]
    );
    s.apply(6, &KvOp::DeleteTree { prefix: "".into() });
    assert!(s.is_empty());
    assert_eq!(s.tombstone_count(), 4);
}

#[test]
fn keys_with_separator() {
    let mut s = KvStore::new();
    run(
        &mut s,
        &[
            set("/web/bar", ""),
            set("/web/foo", ""),
            set("/web/subdir/x", ""),
            set("/web/subdir/y", ""),
        ],
    );
    let (keys, index) = s.keys("/web/", Some("/"));
    assert_eq!(keys, ["/web/bar", "/web/foo", "/web/subdir/"]);
    assert_eq!(index, 4);
    let (keys, _) = s.keys("/web/", None);
    assert_eq!(keys.len(), 4);
}

// ---- model-based property test: the index against a plain BTreeMap model ----

#[derive(Debug, Clone)]
struct ModelEntry {
    value: Vec<u8>,
    flags: u64,
    create: u64,
    modify: u64,
}

fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a/b", "a/c", "ab", "b", "b/x/y", ""]).prop_map(String::from)
}

fn arb_op() -> impl Strategy<Value = KvOp> {
    let val = prop::collection::vec(0u8..3, 0..3);
    prop_oneof![
        (arb_key(), val.clone(), 0u64..2).prop_map(|(key, value, flags)| KvOp::Set {
            key,
            value,
            flags
        }),
        (arb_key(), val, 0u64..2, 0u64..12).prop_map(|(key, value, flags, index)| KvOp::Cas {
            key,
            value,
            flags,
            index
        }),
        arb_key().prop_map(|key| KvOp::Delete { key }),
        (arb_key(), 0u64..12).prop_map(|(key, index)| KvOp::DeleteCas { key, index }),
        prop::sample::select(vec!["a", "b", "", "a/"])
            .prop_map(|p| KvOp::DeleteTree { prefix: p.into() }),
        (0u64..12).prop_map(|up_to| KvOp::ReapTombstones { up_to }),
    ]
}

fn model_apply(m: &mut BTreeMap<String, ModelEntry>, index: u64, op: &KvOp) -> bool {
    let put =
        |m: &mut BTreeMap<String, ModelEntry>, key: &String, value: &Vec<u8>, flags: u64| match m
            .get_mut(key)
        {
            Some(e) if e.value == *value && e.flags == flags => {}
            Some(e) => {
                e.value = value.clone();
                e.flags = flags;
                e.modify = index;
            }
            None => {
                m.insert(
                    key.clone(),
                    ModelEntry {
                        value: value.clone(),
                        flags,
                        create: index,
                        modify: index,
                    },
                );
            }
        };
    match op {
        KvOp::Set { key, value, flags } => {
            put(m, key, value, *flags);
            true
        }
        KvOp::Cas {
            key,
            value,
            flags,
            index: want,
        } => {
            let ok = match m.get(key) {
                None => *want == 0,
                Some(e) => *want != 0 && e.modify == *want,
            };
            if ok {
                put(m, key, value, *flags);
            }
            ok
        }
        KvOp::Delete { key } => {
            m.remove(key);
            true
        }
        KvOp::DeleteCas { key, index: want } => match m.get(key) {
            None => true,
            Some(e) if *want != 0 && e.modify == *want => {
                m.remove(key);
                true
            }
            Some(_) => false,
        },
        KvOp::DeleteTree { prefix } => {
            m.retain(|k, _| !k.starts_with(prefix.as_str()));
            true
        }
        KvOp::ReapTombstones { .. } => true,
    }
}

proptest! {
    #[test]
    fn kv_index_matches_model(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut s = KvStore::new();
        let mut m: BTreeMap<String, ModelEntry> = BTreeMap::new();
        let probes = ["a", "a/", "b", "", "ab", "zz"];
        let mut last_key_idx: BTreeMap<&str, u64> = BTreeMap::new();
        let mut last_prefix_idx: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            let got = s.apply(index, op);
            let want = model_apply(&mut m, index, op);
            prop_assert_eq!(got.ok, want, "outcome of {:?}", op);
            prop_assert!(s.check_invariants(index).is_ok(), "{:?}", s.check_invariants(index));
            // contents equal the model
            let live: Vec<(String, Vec<u8>, u64, u64, u64)> = s.iter()
                .map(|e| {
                    (e.key.clone(), e.value.clone(), e.flags, e.create_index, e.modify_index)
                })
                .collect();
            let model: Vec<(String, Vec<u8>, u64, u64, u64)> = m.iter()
                .map(|(k, e)| (k.clone(), e.value.clone(), e.flags, e.create, e.modify)).collect();
            prop_assert_eq!(live, model);
            // indexes of reads never go backwards
            for p in probes {
                let ki = s.key_index(p);
                let pi = s.prefix_index(p);
                prop_assert!(
                    ki >= *last_key_idx.get(p).unwrap_or(&0),
                    "key index of {:?} went back",
                    p,
                );
                prop_assert!(
                    pi >= *last_prefix_idx.get(p).unwrap_or(&0),
                    "prefix index of {:?} went back",
                    p,
                );
                last_key_idx.insert(p, ki);
                last_prefix_idx.insert(p, pi);
                let (list, li) = s.list(p);
                prop_assert_eq!(li, pi);
                prop_assert!(list.iter().all(|e| e.modify_index <= li));
            }
        }
    }
}
