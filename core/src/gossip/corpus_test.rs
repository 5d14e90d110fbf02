//! Replays the checked-in fuzz corpus (fuzz/corpus/gossip_packet) on stable, and generates
//! it: `TRIBUNE_WRITE_CORPUS=1 cargo test -p tribune-core --release replay_corpus` rewrites
//! the seed files from real encoded messages.

use std::path::PathBuf;

use super::fuzzing::{exercise, seed_files};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/gossip_packet");

#[test]
fn replay_corpus() {
    let dir = PathBuf::from(CORPUS);
    if std::env::var_os("TRIBUNE_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, f) in seed_files().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), f).unwrap();
        }
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        exercise(&data);
        n += 1;
    }
    assert!(n >= 10, "corpus at {CORPUS} has only {n} files");
    for f in seed_files() {
        exercise(&f);
    }
}
