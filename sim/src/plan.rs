//! The fault plan: plain data derived from one seed before the run starts.

use rand::rngs::SmallRng;
use rand::RngExt;
use rand::SeedableRng;

/// Servers are numbered 1..=n.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Cut the cluster into two sides, both directions.
    Partition { side: Vec<u64> },
    /// Drop traffic from one server to another only.
    OneWay { from: u64, to: u64 },
    /// Cut whoever leads at that moment off from everyone (clients too).
    IsolateLeader,
    /// Two halves that cannot talk, and one server that talks to both.
    Bridge { bridge: u64 },
    /// Lose this share of packets everywhere.
    Loss(f64),
    /// Deliver each packet after 1 ms up to this many ms: reordering.
    SlowNet(u64),
    /// Send this share of requests twice.
    Duplicate(f64),
    /// kill -9 one server; unsynced writes are lost.
    Kill(u64),
    /// kill -9 one server and wipe its data dir; it restarts at the same address with an
    /// empty store and a new Raft id (a new server, as far as Raft is concerned).
    Wipe(u64),
    /// The amnesia scenario, aimed at the window before the leader replaces a wiped
    /// server's old id: while a minority lags (cut off), writes commit on the rest; one of
    /// those followers is wiped and restarts at once; the laggards return while the leader
    /// and the other up-to-date followers are cut off. A wiped server that answered for its
    /// old id would let the laggards elect a leader without those writes.
    Amnesia,
    /// The server's process is frozen (SIGSTOP), then resumes with the state it had.
    Pause(u64),
    /// The server's next fsync fails: its store takes no more writes and its Raft stops,
    /// as the agent exits on a failed fsync; at the end of the episode it is killed (what
    /// the failed sync did not write is lost) and restarted.
    FsyncError(u64),
    /// Power loss: every server dies at once.
    KillAll,
    /// Remove a server from the voters (membership change), then add it back.
    Reconfigure(u64),
}

/// One fault and its time span. Episodes may overlap: one can start before the previous
/// one ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub at_ms: u64,
    pub fault: Fault,
    /// How long the fault lasts (for kills: until restart).
    pub for_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub servers: u64,
    /// `bootstrap_expect`: all the servers, or (some 5-server plans) only 3 of them.
    pub expect: u64,
    /// When each server starts (ms), by server number from 1: staggered in some plans.
    pub start_ms: Vec<u64>,
    /// Each server's clock rate, by server number from 1: in a third of the plans the
    /// clocks drift apart (0.9 to 1.1 times true time; 1.0 elsewhere).
    pub clock_rate: Vec<f64>,
    /// The dedup table's size: in a quarter of the plans a few clients only (production:
    /// 16,384), so that write lanes are evicted and retired.
    pub dedup_clients_max: Option<usize>,
    pub clients: u64,
    pub keys: u64,
    /// Faults happen in [0, safety_ms); then everything heals.
    pub safety_ms: u64,
    /// Fault-free time in which the cluster must converge and serve.
    pub liveness_ms: u64,
    pub episodes: Vec<Episode>,
    /// Mean pause between one client's operations.
    pub think_ms: u64,
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7472_6962_756e_6521);
        let servers = if rng.random_bool(0.7) { 3 } else { 5 };
        let safety_ms = 30_000;
        let mut episodes = Vec::new();
        let mut t = rng.random_range(500..2_000);
        while t < safety_ms - 1_000 {
            let for_ms = rng.random_range(300..4_000);
            let node = rng.random_range(1..=servers);
            let fault = match rng.random_range(0..100) {
                0..=15 => {
                    let size = rng.random_range(1..=servers / 2);
                    let mut side: Vec<u64> = (1..=servers).collect();
                    // deterministic shuffle, then take a minority
                    for i in (1..side.len()).rev() {
                        let j = rng.random_range(0..=i);
                        side.swap(i, j);
                    }
                    side.truncate(size as usize);
                    side.sort_unstable();
                    Fault::Partition { side }
                }
                16..=24 => {
                    let to = 1 + (node + rng.random_range(0..servers - 1)) % servers;
                    Fault::OneWay { from: node, to }
                }
                25..=36 => Fault::IsolateLeader,
                37..=43 => Fault::Bridge { bridge: node },
                44..=52 => Fault::Loss(rng.random_range(0.05..0.3)),
                53..=59 => Fault::SlowNet(rng.random_range(20..200)),
                60..=66 => Fault::Duplicate(rng.random_range(0.1..0.5)),
                67..=83 => Fault::Kill(node),
                84..=86 => Fault::Wipe(node),
                87..=89 => Fault::Amnesia,
                90..=94 => Fault::Reconfigure(node),
                _ => Fault::KillAll,
            };
            let at_ms = t;
            // A quarter of the faults overlap the next one.
            t += if rng.random_bool(0.25) {
                rng.random_range(100..=for_ms)
            } else {
                for_ms + rng.random_range(100..2_500)
            };
            episodes.push(Episode {
                at_ms,
                fault,
                for_ms,
            });
        }
        // Drawn from a stream of their own, so the rest of the plan is as it was.
        let mut boot = SmallRng::seed_from_u64(seed ^ 0x626f_6f74_7374_7261);
        let (expect, stagger_ms) = match servers {
            5 if boot.random_bool(0.5) => (3, 4_000),
            _ if boot.random_bool(0.3) => (servers, 1_500),
            _ => (servers, 0),
        };
        let start_ms = (0..servers)
            .map(|_| {
                if stagger_ms == 0 {
                    0
                } else {
                    boot.random_range(0..stagger_ms)
                }
            })
            .collect();
        // A third of the kills are pauses instead, and a fifth of the rest fsync errors (each
        // from another stream of its own).
        let mut pauses = SmallRng::seed_from_u64(seed ^ 0x7061_7573_6573_2121);
        let mut disk = SmallRng::seed_from_u64(seed ^ 0x6673_796e_6365_7272);
        for e in &mut episodes {
            if let Fault::Kill(n) = e.fault {
                if pauses.random_bool(0.33) {
                    e.fault = Fault::Pause(n);
                } else if disk.random_bool(0.2) {
                    e.fault = Fault::FsyncError(n);
                }
            }
        }
        // Clock drift (from a stream of its own).
        let mut clocks = SmallRng::seed_from_u64(seed ^ 0x636c_6f63_6b64_7269);
        let drifting = clocks.random_bool(0.33);
        let clock_rate = (0..servers)
            .map(|_| match drifting {
                true => clocks.random_range(0.9..1.1),
                false => 1.0,
            })
            .collect();
        // The dedup table's size (from a stream of its own).
        let mut dedup = SmallRng::seed_from_u64(seed ^ 0x6465_6475_7074_6162);
        let dedup_clients_max = dedup.random_bool(0.25).then(|| dedup.random_range(2..=6));
        Plan {
            seed,
            servers,
            expect,
            start_ms,
            clock_rate,
            dedup_clients_max,
            clients: rng.random_range(4..=6),
            keys: rng.random_range(1..=4),
            safety_ms,
            liveness_ms: 15_000,
            episodes,
            think_ms: rng.random_range(150..300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_a_function_of_the_seed() {
        assert_eq!(Plan::from_seed(7), Plan::from_seed(7));
        assert_ne!(Plan::from_seed(7).episodes, Plan::from_seed(8).episodes);
    }

    #[test]
    fn plans_cover_every_fault_kind() {
        let mut kinds = std::collections::HashSet::new();
        for seed in 1..50 {
            for e in Plan::from_seed(seed).episodes {
                kinds.insert(std::mem::discriminant(&e.fault));
                assert!(e.at_ms + 1 < 30_000);
            }
        }
        assert_eq!(kinds.len(), 14);
    }
}
