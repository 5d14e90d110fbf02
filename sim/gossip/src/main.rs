//! `tribune-gossip-sim [--nodes N] [--loss P] [--seed S] [--minutes M] [--check]`
//!
//! Prints `nodes=N loss=P join_all_ms=… detect_all_ms=… false_failures=… bytes_per_node_s=…`.
//! With `--check` it exits 1 when the figures miss the targets: join_all_ms ≤ 3000 and
//! detect_all_ms ≤ 16000 (checked when loss is 0) and no false failures.

use std::process::ExitCode;

use tribune_gossip_sim::{run, Params};

fn main() -> ExitCode {
    let mut p = Params {
        nodes: 1000,
        loss: 0.0,
        seed: 1,
        minutes: 0,
        sabotage_mute: false,
    };
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--nodes" => p.nodes = val("--nodes").parse().expect("--nodes N"),
            "--loss" => p.loss = val("--loss").parse().expect("--loss P"),
            "--seed" => p.seed = val("--seed").parse().expect("--seed S"),
            "--minutes" => p.minutes = val("--minutes").parse().expect("--minutes M"),
            "--check" => check = true,
            "--sabotage-mute" => p.sabotage_mute = true,
            _ => {
                eprintln!(
                    "usage: tribune-gossip-sim [--nodes N] [--loss P] [--seed S] [--minutes M] \
                    [--check]",
                );
                return ExitCode::from(2);
            }
        }
    }
    let f = run(&p);
    let ms = |v: u64| {
        if v == u64::MAX {
            "never".to_string()
        } else {
            v.to_string()
        }
    };
    println!(
        "nodes={} loss={} join_all_ms={} detect_all_ms={} false_failures={} bytes_per_node_s={}",
        p.nodes,
        p.loss,
        ms(f.join_all_ms),
        ms(f.detect_all_ms),
        f.false_failures,
        f.bytes_per_node_s
    );
    eprintln!("converge_ms={} sim_ms={}", ms(f.converge_ms), f.sim_ms);
    if let Some(v) = &f.invariant {
        eprintln!(
            "gossip-sim: {v} (repro: ci/gossip-sim --nodes {} --loss {} --seed {})",
            p.nodes, p.loss, p.seed
        );
        return ExitCode::FAILURE;
    }
    if check {
        let mut ok =
            f.false_failures == 0 && f.join_all_ms != u64::MAX && f.detect_all_ms != u64::MAX;
        if p.loss == 0.0 {
            ok &= f.join_all_ms <= 3_000 && f.detect_all_ms <= 16_000;
        }
        if !ok {
            eprintln!("gossip-sim: figures miss the targets");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
