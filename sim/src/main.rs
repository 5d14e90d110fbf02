//! `tribune-sim`: run seeded simulations. See `ci/sim --help`.

#[cfg(not(madsim))]
fn main() {
    eprintln!("tribune-sim must be built with RUSTFLAGS=\"--cfg madsim\": run it through ci/sim");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(madsim)]
mod cli {
    use std::time::Instant;

    use tribune_sim::harness::run_seed;
    use tribune_sim::Sabotage;

    const USAGE: &str =
        "usage: ci/sim [--seeds N | --seed S] [--first F] [--sabotage NAME [--until-caught]] \
[--max-inconclusive SHARE] [--list-sabotages] [--verbose]

With --sabotage, a seed catches the sabotage only if a check meant for it fails (see
Sabotage::caught_by); the exit status is 1 when some seed caught it. Without, the exit
status is 1 when a seed failed or more than SHARE of the checked keys (default 0.01) had
an inconclusive linearizability verdict.";

    fn repro(seed: u64, sabotage: Sabotage) -> String {
        match sabotage {
            Sabotage::None => format!("ci/sim --seed {seed}"),
            s => format!("ci/sim --seed {seed} --sabotage {}", s.name()),
        }
    }

    pub fn main() -> i32 {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut seeds: Option<u64> = None;
        let mut single: Option<u64> = None;
        let mut first = 1u64;
        let mut sabotage = Sabotage::None;
        let mut verbose = false;
        let mut until_caught = false;
        let mut max_inconclusive = 0.01f64;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |name: &str| -> Result<u64, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("{name} needs a number"))
            };
            let r = match a.as_str() {
                "--seeds" => num("--seeds").map(|n| seeds = Some(n)),
                "--seed" => num("--seed").map(|n| single = Some(n)),
                "--first" => num("--first").map(|n| first = n),
                "--sabotage" => match it.next().and_then(|n| Sabotage::parse(n)) {
                    Some(s) => {
                        sabotage = s;
                        Ok(())
                    }
                    None => Err("unknown sabotage (see --list-sabotages)".to_string()),
                },
                "--list-sabotages" => {
                    for (name, _) in Sabotage::ALL {
                        println!("{name}");
                    }
                    return 0;
                }
                "--until-caught" => {
                    until_caught = true;
                    Ok(())
                }
                "--max-inconclusive" => match it.next().and_then(|v| v.parse::<f64>().ok()) {
                    Some(v) => {
                        max_inconclusive = v;
                        Ok(())
                    }
                    None => Err("--max-inconclusive needs a share (0.01 = 1%)".to_string()),
                },
                "--verbose" | "-v" => {
                    verbose = true;
                    Ok(())
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    return 0;
                }
                other => Err(format!("unknown argument {other}")),
            };
            if let Err(e) = r {
                eprintln!("ci/sim: {e}\n{USAGE}");
                return 2;
            }
        }

        if let Some(seed) = single {
            let started = Instant::now();
            let r = run_seed(seed, sabotage);
            println!(
                "seed {seed}: ops={} unknown={} terms={} membership_changes={} \
                chunked_snapshots={} sim_ms={} wall_ms={}",
                r.ops,
                r.unknown,
                r.leader_terms,
                r.membership_changes,
                r.chunked_snapshots,
                r.sim_ms,
                started.elapsed().as_millis()
            );
            for f in &r.failures {
                println!(
                    "FAIL seed={seed} property=\"{f}\" repro: {}",
                    repro(seed, sabotage)
                );
            }
            println!("trace {:016x}", r.trace);
            return if r.failures.is_empty() { 0 } else { 1 };
        }

        let n = seeds.unwrap_or(300);
        let started = Instant::now();
        let (mut failed, mut caught, mut ops, mut sim_ms, mut inconclusive, mut keys) =
            (0u64, 0u64, 0usize, 0u64, 0usize, 0usize);
        let mut min_ops = usize::MAX;
        let mut ran = 0u64;
        let mut chunked = 0u64;
        for seed in first..first + n {
            let r = run_seed(seed, sabotage);
            ran += 1;
            ops += r.ops;
            min_ops = min_ops.min(r.ops);
            sim_ms += r.sim_ms;
            inconclusive += r.inconclusive;
            keys += r.keys;
            chunked += r.chunked_snapshots;
            if verbose {
                println!(
                    "seed {seed}: ops={} unknown={} terms={} membership_changes={} \
                    chunked_snapshots={} trace {:016x}",
                    r.ops,
                    r.unknown,
                    r.leader_terms,
                    r.membership_changes,
                    r.chunked_snapshots,
                    r.trace
                );
            }
            if let Some(f) = r.failures.first() {
                failed += 1;
                println!(
                    "FAIL seed={seed} property=\"{f}\" repro: {}",
                    repro(seed, sabotage)
                );
            }
            if sabotage != Sabotage::None && sabotage.is_caught(&r.failures) {
                caught += 1;
                if until_caught {
                    break;
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let share = inconclusive as f64 / keys.max(1) as f64;
        println!(
            "summary: sabotage={} seeds={ran} failures={failed} caught={caught} ops_checked={ops} \
             min_ops_per_seed={min_ops} inconclusive_keys={inconclusive} keys_checked={keys} \
             inconclusive_share={share:.4} chunked_snapshots={chunked} sim_seconds={:.0} \
             wall_seconds={wall:.1} sim_per_wall={:.0} seeds_per_min={:.0}",
            sabotage.name(),
            sim_ms as f64 / 1000.0,
            sim_ms as f64 / 1000.0 / wall.max(1e-9),
            ran as f64 * 60.0 / wall.max(1e-9),
        );
        if sabotage != Sabotage::None {
            return if caught > 0 { 1 } else { 0 };
        }
        if share > max_inconclusive {
            println!(
                "FAIL inconclusive share {share:.4} exceeds {max_inconclusive} (ci/sim --seeds \
                {n} --first {first})",
            );
            return 1;
        }
        if failed == 0 {
            0
        } else {
            1
        }
    }
}
