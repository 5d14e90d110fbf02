//! The gossip scale scenario on tribune-core's discrete-event harness.
//!
//! 1. `nodes` nodes start 10 ms apart, each joining the seed node 0 (push-pull).
//! 2. Run until every node sees every other alive (the cluster converged).
//! 3. Add one new node: `join_all_ms` is the time until every other node reported it joined.
//! 4. Kill one random node: `detect_all_ms` is the time until every live node marked it failed.
//! 5. Run on for `minutes` more simulated minutes.
//!
//! Throughout, `loss` of UDP datagrams is random; `false_failures` counts every
//! `MemberFailed` event (observer, subject) whose subject was in fact running.
//! `bytes_per_node_s` is UDP + stream bytes sent per node per simulated second after
//! convergence.

use tribune_core::gossip::harness::{node_name, Harness, NetConfig};
use tribune_core::gossip::{Config, Event, Millis, Tags};

/// Scenario parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Cluster size before the extra node joins.
    pub nodes: usize,
    /// UDP loss probability.
    pub loss: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Simulated minutes to run after the detection phase.
    pub minutes: u64,
    /// Sabotage for the checker's self-test: after convergence, one running node stops
    /// sending (never acks); the false-failure count must catch it.
    pub sabotage_mute: bool,
}

/// Scenario results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Time from start until every node saw every other alive.
    pub converge_ms: u64,
    /// Time until every node knew of the new member (`u64::MAX` if never).
    pub join_all_ms: u64,
    /// Time from the kill until every live node marked the victim failed (`u64::MAX` if never).
    pub detect_all_ms: u64,
    /// Running nodes wrongly declared failed, counted per (observer, subject) event.
    pub false_failures: u64,
    /// Traffic per node per simulated second after convergence.
    pub bytes_per_node_s: u64,
    /// Total simulated milliseconds.
    pub sim_ms: u64,
    /// The first gossip invariant a node broke (checked after every event), if any.
    pub invariant: Option<String>,
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok()
}

/// Run the scenario.
pub fn run(p: &Params) -> Figures {
    let config = Config::lan();
    let net = NetConfig {
        loss: p.loss,
        ..NetConfig::default()
    };
    let mut h = Harness::new(p.seed, net);
    h.set_recording(false);
    let mut rng = SplitMix(p.seed ^ 0x5eed);
    let mut false_failures = 0u64;
    let mut up: Vec<bool> = Vec::new();
    let mut muted: Option<usize> = None;

    // Every event passes through this, for the false-failure count.
    macro_rules! run_until {
        ($t:expr, $extra:expr) => {{
            #[allow(unused_mut)]
            let mut extra = $extra;
            let up_now = up.clone();
            let muted_now = muted;
            h.run_until_with($t, &mut |t: Millis, i: usize, e: &Event| {
                if let Event::MemberFailed(m) = e {
                    if let Some(j) = index_of(&m.name) {
                        if up_now.get(j).copied().unwrap_or(false) || muted_now == Some(j) {
                            false_failures += 1;
                        }
                    }
                }
                extra(t, i, e);
            });
        }};
    }

    // 1. Staggered joins.
    for i in 0..p.nodes {
        let t = Millis(10 * i as u64);
        run_until!(t, |_, _, _: &Event| {});
        h.add_node(config.clone(), Tags::new());
        up.push(true);
        if i > 0 {
            h.join(i, &[0]);
        }
    }
    // 2. Converge.
    let mut converge_ms = u64::MAX;
    let cap = h.now().plus(Millis::secs(300));
    while h.now() < cap {
        let t = h.now().plus(Millis(500));
        run_until!(t, |_, _, _: &Event| {});
        if std::env::var_os("GSIM_DEBUG").is_some() {
            let lives: Vec<usize> = (0..p.nodes).map(|i| h.node_ref(i).num_live()).collect();
            let members: Vec<usize> = (0..p.nodes).map(|i| h.node_ref(i).num_members()).collect();
            let tr = h.traffic();
            eprintln!(
                "t={} min_live={} min_members={} packets={} bytes={} streams={} sbytes={}",
                h.now().0,
                lives.iter().min().unwrap(),
                members.iter().min().unwrap(),
                tr.packets,
                tr.packet_bytes,
                tr.streams,
                tr.stream_bytes
            );
        }
        if (0..p.nodes).all(|i| h.node_ref(i).num_live() == p.nodes) {
            converge_ms = h.now().0;
            break;
        }
    }
    let steady_from = h.now();
    let traffic0 = h.traffic();
    if p.sabotage_mute {
        let j = rng.below(p.nodes);
        h.mute(j);
        muted = Some(j);
    }

    // 3. One more node.
    let newcomer = h.add_node(config.clone(), Tags::new());
    up.push(true);
    let via = rng.below(p.nodes);
    h.join(newcomer, &[via]);
    let t0 = h.now();
    let new_name = node_name(newcomer);
    let mut knows = vec![false; p.nodes];
    let mut known = 0usize;
    let mut join_all_ms = u64::MAX;
    let cap = t0.plus(Millis::secs(60));
    while h.now() < cap && join_all_ms == u64::MAX {
        let t = h.now().plus(Millis(100));
        let mut last = Millis::ZERO;
        run_until!(t, |at: Millis, i: usize, e: &Event| {
            if let Event::MemberJoined(m) = e {
                if m.name == new_name && i < knows.len() && !knows[i] {
                    knows[i] = true;
                    known += 1;
                    last = at;
                }
            }
        });
        if known == p.nodes {
            join_all_ms = last.since(t0).0;
        }
    }

    // 4. Kill one node.
    let victim = rng.below(p.nodes);
    h.kill(victim);
    up[victim] = false;
    let victim_name = node_name(victim);
    let t1 = h.now();
    let mut marked = vec![false; p.nodes + 1];
    marked[victim] = true;
    if let Some(m) = muted {
        marked[m] = true;
    }
    let mut left = marked.iter().filter(|m| !**m).count();
    let mut detect_all_ms = u64::MAX;
    let cap = t1.plus(Millis::secs(180));
    while h.now() < cap && detect_all_ms == u64::MAX {
        let t = h.now().plus(Millis(100));
        let mut last = Millis::ZERO;
        run_until!(t, |at: Millis, i: usize, e: &Event| {
            if let Event::MemberFailed(m) | Event::MemberLeft(m) = e {
                if m.name == victim_name && !marked[i] {
                    marked[i] = true;
                    left -= 1;
                    last = at;
                }
            }
        });
        if std::env::var_os("GSIM_DEBUG").is_some() {
            let suspecting = (0..p.nodes)
                .filter(|&i| {
                    h.node_ref(i)
                        .member(&victim_name)
                        .is_some_and(|m| m.state == tribune_core::gossip::MemberState::Suspect)
                })
                .count();
            eprintln!(
                "t+{} remaining={left} suspecting={suspecting}",
                h.now().since(t1).0
            );
        }
        if left == 0 {
            detect_all_ms = last.since(t1).0;
        }
    }

    // 5. Run on.
    let end = h.now().plus(Millis::secs(60 * p.minutes));
    while h.now() < end {
        let t = h.now().plus(Millis::secs(10)).min(end);
        run_until!(t, |_, _, _: &Event| {});
    }

    let tr = h.traffic();
    let bytes =
        (tr.packet_bytes + tr.stream_bytes) - (traffic0.packet_bytes + traffic0.stream_bytes);
    let secs = (h.now().since(steady_from).0 as f64 / 1000.0).max(0.001);
    Figures {
        converge_ms,
        join_all_ms,
        detect_all_ms,
        false_failures,
        bytes_per_node_s: (bytes as f64 / (p.nodes + 1) as f64 / secs) as u64,
        sim_ms: h.now().0,
        invariant: h.check_invariants().err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> Params {
        Params {
            nodes: 40,
            loss: 0.02,
            seed,
            minutes: 1,
            sabotage_mute: false,
        }
    }

    #[test]
    fn same_seed_same_figures() {
        let a = run(&small(3));
        let b = run(&small(3));
        assert_eq!(a, b);
        assert!(a.join_all_ms < 5_000 && a.detect_all_ms < 30_000, "{a:?}");
        assert_eq!(a.false_failures, 0, "{a:?}");
        assert_ne!(run(&small(4)), a);
    }

    #[test]
    fn false_failure_count_catches_a_mute_node() {
        let f = run(&Params {
            sabotage_mute: true,
            minutes: 1,
            ..small(5)
        });
        assert!(f.false_failures > 0, "{f:?}");
    }
}
