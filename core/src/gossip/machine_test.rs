//! Cluster scenarios on the in-process harness, and the checkers' self-tests.

use std::collections::BTreeMap;

use super::codec::{Alive, Message, PushPull, PushPullMember, Suspect};
use super::harness::{node_addr, node_name, Harness, NetConfig};
use super::*;

fn cluster_with(n: usize, seed: u64, config: &Config) -> Harness {
    let mut h = Harness::new(seed, NetConfig::default());
    for i in 0..n {
        h.add_node(config.clone(), Tags::new());
        if i > 0 {
            h.join(i, &[0]);
        }
    }
    h.run_for(Millis::secs(10));
    h
}

fn cluster(n: usize, seed: u64) -> Harness {
    cluster_with(n, seed, &Config::lan())
}

fn failed_events_about(h: &Harness, name: &str) -> usize {
    h.log()
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::MemberFailed(m) if m.name == name))
        .count()
}

#[test]
fn join_converges() {
    let h = cluster(8, 1);
    h.check_converged().unwrap();
    for i in 0..8 {
        assert_eq!(h.node_ref(i).members().len(), 8);
        assert!(h.node_ref(i).members().iter().all(|m| m.status == 1));
    }
    // Each node reported each other node joining.
    let joins = h
        .log()
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::MemberJoined(_)))
        .count();
    assert!(joins >= 8 * 7, "{joins}");
}

#[test]
fn false_suspicion_is_refuted() {
    let mut h = cluster(6, 2);
    let before = h.node_ref(2).local().incarnation;
    let s = Message::Suspect(Suspect {
        name: node_name(2),
        incarnation: before,
        from: node_name(1),
    });
    let now = h.now();
    h.node(1).handle_packet(now, node_addr(1), &s.encode());
    h.pump(1);
    assert_eq!(
        h.node_ref(1).member(&node_name(2)).unwrap().state,
        MemberState::Suspect
    );
    h.run_for(Millis::secs(10));
    h.check_converged().unwrap();
    assert!(h.node_ref(2).local().incarnation > before);
    assert!(h.node_ref(2).counters().refutations >= 1);
    assert_eq!(failed_events_about(&h, &node_name(2)), 0);
}

#[test]
fn dead_node_is_detected() {
    let mut h = cluster(6, 3);
    h.kill(3);
    let t0 = h.now();
    h.run_for(Millis::secs(30));
    h.check_failed(3).unwrap();
    h.check_converged().unwrap();
    let first = h
        .log()
        .iter()
        .find(|(_, _, e)| matches!(e, Event::MemberFailed(m) if m.name == node_name(3)));
    assert!(first.unwrap().0.since(t0) < Millis::secs(20));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(h.node_ref(i).member(&node_name(3)).unwrap().status, 4);
    }
}

#[test]
fn graceful_leave() {
    let mut h = cluster(5, 4);
    let now = h.now();
    h.node(2).leave(now).unwrap();
    h.pump(2);
    assert_eq!(h.node_ref(2).local().state, MemberState::Leaving);
    assert_eq!(h.node_ref(2).local().status, 2);
    h.run_for(Millis::secs(5));
    assert!(h.node_ref(2).has_left());
    assert_eq!(h.node_ref(2).next_deadline(), None);
    for i in [0, 1, 3, 4] {
        let m = h.node_ref(i).member(&node_name(2)).unwrap();
        assert_eq!((m.state, m.status), (MemberState::Left, 3));
    }
    h.run_for(Millis::secs(30));
    h.check_converged().unwrap();
    assert_eq!(failed_events_about(&h, &node_name(2)), 0);
}

#[test]
fn partition_and_heal() {
    let mut h = cluster(8, 5);
    for a in 0..4 {
        for b in 4..8 {
            h.cut(a, b);
        }
    }
    h.run_for(Millis::secs(60));
    for a in 0..4 {
        for b in 4..8 {
            assert!(!h.node_ref(a).member(&node_name(b)).unwrap().state.is_live());
        }
    }
    assert!(h.check_converged().is_err());
    h.heal();
    h.run_for(Millis::secs(120));
    h.check_converged().unwrap();
}

fn keyed(key: &str) -> Config {
    Config {
        keys: vec![key.to_owned()],
        ..Config::lan()
    }
}

#[test]
fn key_rotation_keeps_cluster_up() {
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let (k1, k2) = (generate_key(&mut rng), generate_key(&mut rng));
    let mut h = cluster_with(5, 6, &keyed(&k1));
    h.check_converged().unwrap();
    for i in 0..5 {
        h.node(i).install_key(&k2).unwrap();
        h.run_for(Millis(300));
    }
    for i in 0..5 {
        h.node(i).use_key(&k2).unwrap();
        h.run_for(Millis(300));
    }
    h.run_for(Millis::secs(5));
    for i in 0..5 {
        h.node(i).remove_key(&k1).unwrap();
        assert_eq!(h.node_ref(i).list_keys().unwrap(), vec![k2.clone()]);
        assert!(matches!(
            h.node(i).remove_key(&k2),
            Err(CommandError::Key(KeyError::RemovePrimary))
        ));
    }
    h.run_for(Millis::secs(60));
    h.check_converged().unwrap();
    assert!(!h
        .log()
        .iter()
        .any(|(_, _, e)| matches!(e, Event::MemberFailed(_))));
    assert_eq!(h.node_ref(0).counters().decrypt_failed, 0);
}

#[test]
fn wrong_key_never_appears_alive() {
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (good, bad) = (generate_key(&mut rng), generate_key(&mut rng));
    let mut h = cluster_with(4, 7, &keyed(&good));
    h.add_node(keyed(&bad), Tags::new());
    h.join(4, &[0, 1]);
    // A plaintext node too.
    h.add_node(Config::lan(), Tags::new());
    h.join(5, &[2]);
    h.run_for(Millis::secs(60));
    for i in 0..4 {
        for stranger in [4, 5] {
            let m = h.node_ref(i).member(&node_name(stranger));
            assert!(
                m.as_ref().is_none_or(|m| !m.state.is_live()),
                "{i} sees {stranger}: {m:?}"
            );
        }
    }
    assert!(h.node_ref(0).counters().decrypt_failed > 0);
    assert!(h.node_ref(2).counters().plaintext_rejected > 0);
    assert_eq!(h.node_ref(4).members().len(), 1);
}

#[test]
fn force_leave_survives_stale_gossip() {
    let mut h = cluster(6, 8);
    let victim = node_name(3);
    let stale = h.node_ref(0).member(&victim).unwrap();
    h.kill(3);
    h.run_for(Millis::secs(30));
    h.check_failed(3).unwrap();
    let now = h.now();
    h.node(0).force_leave(now, &victim, false).unwrap();
    h.pump(0);
    h.run_for(Millis::secs(5));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(
            h.node_ref(i).member(&victim).unwrap().state,
            MemberState::Left,
            "node {i}"
        );
    }
    // Stale gossip: the old alive message and a push-pull that still lists it alive.
    let alive = Alive {
        name: victim.clone(),
        addr: stale.addr,
        tags: stale.tags.clone(),
        incarnation: stale.incarnation,
    };
    let pp = PushPull {
        from: node_name(5),
        reply: true,
        join: false,
        event_ltime: 0,
        members: vec![PushPullMember {
            name: victim.clone(),
            addr: stale.addr,
            tags: stale.tags.clone(),
            incarnation: stale.incarnation,
            state: MemberState::Alive,
        }],
    };
    for i in [1, 2, 4] {
        let now = h.now();
        h.node(i)
            .handle_packet(now, node_addr(5), &Message::Alive(alive.clone()).encode());
        h.node(i)
            .handle_stream(now, node_addr(5), &Message::PushPull(pp.clone()).encode());
        h.pump(i);
    }
    h.run_for(Millis::secs(60));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(
            h.node_ref(i).member(&victim).unwrap().state,
            MemberState::Left,
            "node {i}"
        );
    }
    assert!(h.node_ref(1).counters().stale_ignored >= 1);
    // Prune: forgotten everywhere, and stale gossip still cannot bring it back.
    let now = h.now();
    h.node(0).force_leave(now, &victim, true).unwrap();
    h.pump(0);
    h.run_for(Millis::secs(5));
    for i in [1, 2] {
        let now = h.now();
        h.node(i)
            .handle_packet(now, node_addr(5), &Message::Alive(alive.clone()).encode());
        h.pump(i);
    }
    h.run_for(Millis::secs(10));
    for i in [0, 1, 2, 4, 5] {
        assert!(h.node_ref(i).member(&victim).is_none(), "node {i}");
    }
}

#[test]
fn user_event_delivered_once_everywhere() {
    let mut h = cluster(7, 9);
    let now = h.now();
    h.node(2).user_event(now, "deploy", b"v2".to_vec()).unwrap();
    h.pump(2);
    h.run_for(Millis::secs(10));
    h.check_event_delivered_once("deploy").unwrap();
    // A replayed event packet is de-duplicated.
    let ev = Message::UserEvent(UserEvent {
        ltime: 0,
        name: "deploy".into(),
        payload: b"v2".to_vec(),
    });
    let now = h.now();
    h.node(4).handle_packet(now, node_addr(2), &ev.encode());
    h.pump(4);
    h.run_for(Millis::secs(5));
    h.check_event_delivered_once("deploy").unwrap();
    assert!(h.node_ref(4).counters().events_deduped >= 1);
    assert!(h.node_ref(5).event_clock() >= 1);
}

// ----- the checkers catch broken runs ------------------------------------------------------

#[test]
fn convergence_checker_catches_a_node_that_never_acks() {
    let mut h = cluster(6, 10);
    h.check_converged().unwrap();
    h.mute(4);
    h.run_for(Millis::secs(60));
    let err = h.check_converged().unwrap_err();
    assert!(err.contains("node-0004"), "{err}");
    // Lifeguard: the muted node gets no acks, so its local health score rises.
    assert!(h.node_ref(4).health_score() > 0);
}

#[test]
fn failure_checker_catches_a_live_victim() {
    let mut h = cluster(5, 11);
    h.run_for(Millis::secs(30));
    assert!(h.check_failed(3).is_err());
}

#[test]
fn event_checker_catches_a_missed_delivery() {
    let mut h = cluster(5, 12);
    h.isolate(3);
    let now = h.now();
    h.node(1).user_event(now, "missed", vec![]).unwrap();
    h.pump(1);
    h.run_for(Millis::secs(3));
    assert!(h.check_event_delivered_once("missed").is_err());
}

// ----- API details ------------------------------------------------------------------------

#[test]
fn garbage_never_changes_state() {
    let mut h = cluster(3, 13);
    let before = h.node_ref(0).members();
    let now = h.now();
    for bytes in [
        &[][..],
        &[1],
        &[1, 5, 0xff, 0xff],
        &[2; 40],
        &[9; 2000],
        &[1, 10, 1, 1, 10],
    ] {
        h.node(0).handle_packet(now, node_addr(1), bytes);
        assert_eq!(h.node(0).handle_stream(now, node_addr(1), bytes), None);
    }
    assert_eq!(h.node_ref(0).members(), before);
    let c = h.node_ref(0).counters();
    assert!(
        c.decode_failed >= 4 && c.oversize_dropped >= 1 && c.decrypt_failed >= 1,
        "{c:?}"
    );
}

#[test]
fn tags_and_bootstrap_query() {
    let mut h = Harness::new(14, NetConfig::default());
    let server = |dc: &str, expect: &str| -> Tags {
        let mut t = BTreeMap::new();
        t.insert("role".into(), "consul".into());
        t.insert("dc".into(), dc.into());
        t.insert("expect".into(), expect.into());
        t
    };
    h.add_node(Config::lan(), server("dc1", "3"));
    h.add_node(Config::lan(), server("dc1", "3"));
    h.add_node(Config::lan(), server("dc2", "3"));
    h.add_node(Config::lan(), Tags::new());
    for i in 1..4 {
        h.join(i, &[0]);
    }
    h.run_for(Millis::secs(5));
    let s = h.node_ref(3).alive_servers("dc1");
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|s| s.expect == Some(3)));
    let now = h.now();
    h.node(1).set_tags(now, server("dc1", "5")).unwrap();
    h.pump(1);
    h.run_for(Millis::secs(5));
    let s = h.node_ref(3).alive_servers("dc1");
    assert_eq!(
        s.iter().find(|s| s.name == node_name(1)).unwrap().expect,
        Some(5)
    );
    assert!(
        h.log()
            .iter()
            .any(|(_, i, e)| *i == 3
                && matches!(e, Event::MemberUpdated(m) if m.name == node_name(1)))
    );
    let big: Tags = (0..100)
        .map(|i| (format!("k{i}"), "v".repeat(10)))
        .collect();
    assert_eq!(
        h.node(0).set_tags(now, big),
        Err(CommandError::TagsTooLarge)
    );
}

#[test]
fn failed_members_are_reaped() {
    let config = Config {
        reconnect_timeout: Millis::secs(60),
        ..Config::lan()
    };
    let mut h = cluster_with(4, 15, &config);
    h.kill(2);
    h.run_for(Millis::secs(120));
    assert!(h.node_ref(0).member(&node_name(2)).is_none());
    assert!(h
        .log()
        .iter()
        .any(|(_, _, e)| matches!(e, Event::MemberReaped(_))));
}

#[test]
fn profiles_match_consul() {
    let lan = Config::lan();
    assert_eq!(
        (lan.probe_interval, lan.probe_timeout, lan.gossip_interval),
        (Millis(1000), Millis(500), Millis(200))
    );
    assert_eq!(
        (
            lan.gossip_nodes,
            lan.suspicion_mult,
            lan.retransmit_mult,
            lan.indirect_checks
        ),
        (3, 4, 4, 3)
    );
    assert_eq!(lan.push_pull_interval, Millis::secs(30));
    assert_eq!(lan.reconnect_timeout, Millis::hours(72));
    assert_eq!(lan.tombstone_timeout, Millis::hours(24));
    assert_eq!(lan.limits.packet_bytes_max, 1400);
    let wan = Config::wan();
    assert_eq!(
        (wan.probe_interval, wan.probe_timeout, wan.gossip_interval),
        (Millis(5000), Millis(3000), Millis(500))
    );
    assert_eq!(
        (wan.gossip_nodes, wan.suspicion_mult, wan.retransmit_mult),
        (4, 6, 4)
    );
}

#[test]
fn packets_respect_the_size_limit() {
    let mut h = cluster(40, 16);
    h.run_for(Millis::secs(5));
    let mut max = 0;
    for i in 0..40 {
        let g = h.node(i);
        // Queue a lot of broadcasts then force a gossip round.
        for j in 0..50 {
            let _ = g.user_event(Millis(0), &format!("e{j}"), vec![7; 100]);
        }
        let now = h.now().plus(Millis(1000));
        h.node(i).handle_timeout(now);
        while let Some(o) = h.node(i).poll_output() {
            if let Output::Packet { bytes, .. } = o {
                max = max.max(bytes.len());
            }
        }
    }
    assert!(max > 1000 && max <= 1400, "{max}");
}

#[test]
fn seed_sweep_with_loss_no_false_failures() {
    for seed in 100..108 {
        let mut h = Harness::new(
            seed,
            NetConfig {
                loss: 0.05,
                ..NetConfig::default()
            },
        );
        for i in 0..10 {
            h.add_node(Config::lan(), Tags::new());
            if i > 0 {
                h.join(i, &[0]);
            }
        }
        h.run_for(Millis::secs(120));
        h.check_converged()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            !h.log()
                .iter()
                .any(|(_, _, e)| matches!(e, Event::MemberFailed(_))),
            "seed {seed}"
        );
        let victim = 1 + (seed as usize % 9);
        h.kill(victim);
        h.run_for(Millis::secs(60));
        h.check_failed(victim)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        h.check_converged()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn invariants_hold_after_every_step_through_joins_failures_partitions_and_leaves() {
    let mut h = cluster(12, 41);
    h.run_for(Millis::secs(10));
    h.kill(3);
    h.cut(1, 2);
    h.run_for(Millis::secs(20));
    h.heal();
    let now = h.now();
    h.node(5).leave(now).unwrap();
    h.pump(5);
    h.run_for(Millis::secs(30));
    h.check_converged().ok();
    assert_eq!(h.check_invariants(), Ok(()));
}

#[test]
fn invariant_checker_catches_a_node_that_probes_a_stranger() {
    let mut h = cluster(4, 42);
    h.run_for(Millis::secs(5));
    assert_eq!(h.check_invariants(), Ok(()));
    h.node_for_test(2).break_invariant_for_test();
    h.run_for(Millis::secs(5));
    let verdict = h.check_invariants();
    assert!(
        verdict
            .as_ref()
            .is_err_and(|e| e.contains("node 2") && e.contains("probe list names nobody")),
        "{verdict:?}"
    );
}

/// A member that claims other data at an incarnation a node already holds (a restarted
/// server with new tags, whose old self reached that incarnation) is told what the node
/// holds, and outbids it.
#[test]
fn a_member_claiming_other_data_at_a_held_incarnation_is_told() {
    let mut h = cluster(4, 9);
    let old_tags = h.node_ref(3).local().tags.clone();
    let mut new_tags = old_tags.clone();
    new_tags.insert("raft_id".into(), "101".into());
    // Node 3 takes new tags while cut off: nobody hears of them.
    h.isolate(3);
    let now = h.now();
    h.node(3).set_tags(now, new_tags.clone()).unwrap();
    h.run_for(Millis::secs(2));
    let inc = h.node_ref(3).local().incarnation;
    // Node 1 holds node 3 at that incarnation with the old tags (a stale claim).
    let stale = Message::Alive(Alive {
        name: node_name(3),
        addr: node_addr(3),
        tags: old_tags,
        incarnation: inc,
    });
    let now = h.now();
    h.node(1).handle_packet(now, node_addr(2), &stale.encode());
    h.heal();
    // Node 3's claim reaches node 1.
    let claim = Message::Alive(Alive {
        name: node_name(3),
        addr: node_addr(3),
        tags: new_tags.clone(),
        incarnation: inc,
    });
    let now = h.now();
    h.node(1).handle_packet(now, node_addr(3), &claim.encode());
    h.run_for(Millis::secs(5));
    for i in 0..4 {
        let m = h.node_ref(i).member(&node_name(3)).unwrap();
        assert_eq!(m.tags, new_tags, "node {i} sees node 3's new tags");
        assert!(m.incarnation > inc, "node {i}: node 3 outbid the conflict");
    }
    assert!(h.node_ref(1).counters().conflicts_told >= 1);
}

/// A member that the others hold failed and that comes back probes them; they push-pull
/// with it at once instead of waiting for a reconnect round (30 s), so it is alive again
/// everywhere within seconds.
#[test]
fn a_member_held_failed_that_probes_is_resynced_at_once() {
    let mut h = cluster(5, 11);
    h.isolate(4);
    h.run_for(Millis::secs(25));
    assert_eq!(
        h.node_ref(0).member(&node_name(4)).unwrap().state,
        MemberState::Failed
    );
    h.heal();
    h.run_for(Millis::secs(6));
    for i in 0..4 {
        let m = h.node_ref(i).member(&node_name(4)).unwrap();
        assert!(m.state.is_live(), "node {i} holds node 4 {:?}", m.state);
    }
    let resyncs: u64 = (0..4).map(|i| h.node_ref(i).counters().stale_resyncs).sum();
    assert!(resyncs >= 1);
}

/// A node that joins behind a partition is heard of only on its own side; its alive
/// broadcasts are spent by the time the partition heals. When it then probes a member that
/// does not know it, that member push-pulls with it at once instead of leaving it unknown
/// until a push-pull round (30 s).
#[test]
fn a_prober_nobody_heard_of_is_resynced_at_once() {
    let mut h = cluster(4, 5);
    h.add_node(Config::lan(), Tags::new());
    for a in [0, 4] {
        for b in [1, 2, 3] {
            h.cut(a, b);
        }
    }
    h.join(4, &[0]);
    h.run_for(Millis::secs(3));
    assert!(h.node_ref(1).member(&node_name(4)).is_none());
    h.heal();
    h.run_for(Millis::secs(8));
    for i in 0..4 {
        let m = h.node_ref(i).member(&node_name(4));
        assert!(
            m.as_ref().is_some_and(|m| m.state.is_live()),
            "node {i} holds node 4 as {:?}",
            m.map(|m| m.state)
        );
    }
    let resyncs: u64 = (1..4)
        .map(|i| h.node_ref(i).counters().unknown_resyncs)
        .sum();
    assert!(resyncs >= 1);
}

/// Each node's member list and version, to compare against after a step.
fn member_views(h: &Harness) -> Vec<(Vec<MemberInfo>, u64)> {
    (0..h.len())
        .map(|i| (h.node_ref(i).members(), h.node_ref(i).members_version()))
        .collect()
}

#[test]
fn members_version_moves_with_every_change_to_the_member_list() {
    let mut h = cluster(8, 43);
    let mut views = member_views(&h);
    let mut moved = 0;
    let mut step = |h: &mut Harness, d: Millis| {
        h.run_for(d);
        let now = member_views(h);
        for (i, (before, after)) in views.iter().zip(&now).enumerate() {
            if before.0 != after.0 {
                assert_ne!(
                    before.1, after.1,
                    "node {i}: its members changed, its version not"
                );
                moved += 1;
            }
        }
        views = now;
    };
    // Joins, a failure, a graceful leave, a tag change, a force-leave with prune.
    let newcomer = h.add_node(Config::lan(), Tags::new());
    h.join(newcomer, &[0]);
    for _ in 0..100 {
        step(&mut h, Millis(100));
    }
    h.kill(3);
    for _ in 0..300 {
        step(&mut h, Millis(100));
    }
    let now = h.now();
    h.node(5).leave(now).unwrap();
    h.pump(5);
    let tags: Tags = [("role".to_string(), "node".to_string())].into();
    h.node(1).set_tags(now, tags).unwrap();
    h.pump(1);
    for _ in 0..100 {
        step(&mut h, Millis(100));
    }
    let now = h.now();
    h.node(0).force_leave(now, &node_name(3), true).unwrap();
    h.pump(0);
    for _ in 0..100 {
        step(&mut h, Millis(100));
    }
    assert!(moved > 20, "only {moved} changes seen");
}

#[test]
fn members_version_stays_put_while_nothing_changes() {
    let mut h = cluster(6, 44);
    h.run_for(Millis::secs(20));
    h.check_converged().unwrap();
    let before: Vec<u64> = (0..6).map(|i| h.node_ref(i).members_version()).collect();
    // Probes, acks, gossip rounds and push-pulls of a settled cluster change nothing.
    h.run_for(Millis::secs(60));
    let after: Vec<u64> = (0..6).map(|i| h.node_ref(i).members_version()).collect();
    assert_eq!(before, after);

    // Nor does news the node already has: an alive at the incarnation it knows.
    let m = h.node_ref(0).member(&node_name(2)).unwrap();
    let alive = Message::Alive(Alive {
        name: m.name.clone(),
        addr: m.addr,
        tags: m.tags.clone(),
        incarnation: m.incarnation,
    });
    let v = h.node_ref(0).members_version();
    let now = h.now();
    h.node(0).handle_packet(now, node_addr(2), &alive.encode());
    h.node(0).handle_packet(now, node_addr(2), b"\x01garbage");
    assert_eq!(h.node_ref(0).members_version(), v);

    // A newer incarnation is news.
    let newer = Message::Alive(Alive {
        name: m.name,
        addr: m.addr,
        tags: m.tags,
        incarnation: m.incarnation + 1,
    });
    h.node(0).handle_packet(now, node_addr(2), &newer.encode());
    assert!(h.node_ref(0).members_version() > v);
}
