use std::future::Future;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;

use super::*;
use crate::raft::CommittedLeaderId;
use crate::raft::MemBackend;

crate::declare_types!(TestTypes, openraft_rt_tokio::TokioRuntime);

type Log = LogStore<TestTypes, MemBackend>;

/// Run a store future: the in-memory backend never waits, so one poll finishes it.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a store call waited"),
    }
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1), index)
}

/// A log with entries `0..n`, appended in batches of 256 (openraft's largest append here).
fn log_of(n: u64) -> (Log, Arc<MemBackend>) {
    let backend = Arc::new(MemBackend::new());
    let mut log = Log::new(backend.clone());
    let mut next = 0;
    while next < n {
        let end = (next + 256).min(n);
        let entries: Vec<LogEntry> = (next..end)
            .map(|i| LogEntry::new_blank(log_id(i)))
            .collect();
        now(log.append(entries, IOFlushed::noop())).unwrap();
        next = end;
    }
    (log, backend)
}

fn indexes(entries: &[LogEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.index()).collect()
}

/// `entries` are exactly `want`, in order (without printing thousands of indexes).
#[track_caller]
fn assert_exactly(entries: &[LogEntry], want: std::ops::Range<u64>) {
    let got = indexes(entries);
    let first_wrong = got.iter().zip(want.clone()).position(|(g, w)| *g != w);
    assert!(
        got.len() as u64 == want.end - want.start && first_wrong.is_none(),
        "want entries {want:?}, got {} of them, {:?}..={:?}, first wrong at position \
        {first_wrong:?}",
        got.len(),
        got.first(),
        got.last(),
    );
}

#[test]
fn a_read_returns_the_whole_range_however_long() {
    // openraft applies a commit jump as one range: 5,000 entries committed at once must
    // all come back, not the first 4,096 (which left the rest unapplied).
    let (mut log, _) = log_of(5_000);
    assert_exactly(&now(log.try_get_log_entries(0..5_000)).unwrap(), 0..5_000);
    assert_exactly(&now(log.try_get_log_entries(..=4_999)).unwrap(), 0..5_000);
    assert_exactly(&now(log.try_get_log_entries(100..)).unwrap(), 100..5_000);
    // past the end: what the log has (openraft allows a short read at the end only)
    assert_exactly(
        &now(log.try_get_log_entries(4_990..6_000)).unwrap(),
        4_990..5_000,
    );
    assert!(now(log.try_get_log_entries(7..7)).unwrap().is_empty());
}

#[test]
fn a_hole_inside_the_range_is_an_error() {
    let (mut log, backend) = log_of(100);
    backend
        .write(vec![(Space::Log, log_key(50).to_vec(), None)], true)
        .unwrap();
    for range in [0..100, 40..60, 45..51, 50..51, 50..100] {
        let err = now(log.try_get_log_entries(range.clone()))
            .expect_err(&format!("{range:?} has a hole at 50"));
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            err.to_string().contains("50"),
            "the error names the missing entry: {err}"
        );
    }
    // ranges that do not cover the hole are read as usual
    assert_exactly(&now(log.try_get_log_entries(0..50)).unwrap(), 0..50);
    assert_exactly(&now(log.try_get_log_entries(51..100)).unwrap(), 51..100);
}

#[test]
fn only_purged_entries_may_be_missing_at_the_start() {
    let (mut log, _) = log_of(100);
    now(log.purge(log_id(9))).unwrap();
    assert_exactly(&now(log.try_get_log_entries(0..20)).unwrap(), 10..20);
    assert!(
        now(log.try_get_log_entries(0..5)).unwrap().is_empty(),
        "all purged"
    );
    // an entry after the purged ones that is gone is a hole, wherever the range starts
    let (mut log, backend) = log_of(100);
    now(log.purge(log_id(9))).unwrap();
    backend
        .write(vec![(Space::Log, log_key(10).to_vec(), None)], true)
        .unwrap();
    assert!(now(log.try_get_log_entries(0..20)).is_err());
    assert!(now(log.try_get_log_entries(10..20)).is_err());
}

#[cfg(feature = "sabotage")]
#[test]
fn the_short_reads_sabotage_brings_back_the_capped_read() {
    let (mut log, backend) = log_of(5_000);
    log.short_reads = Some(super::LOG_READ_MAX);
    assert_exactly(&now(log.try_get_log_entries(0..5_000)).unwrap(), 0..4_096);
    backend
        .write(vec![(Space::Log, log_key(50).to_vec(), None)], true)
        .unwrap();
    assert_eq!(
        now(log.try_get_log_entries(0..100)).unwrap().len(),
        99,
        "a hole goes unnoticed"
    );
}

/// Blocking queries on a follower must wake when a snapshot replaces its state: the store
/// tells its install observer the index the snapshot brought the state to.
#[test]
fn an_installed_snapshot_is_reported_with_its_index() {
    use openraft::storage::RaftStateMachine;

    let mut source = crate::fsm::StateMachine::new();
    let set = crate::kv::KvOp::Set {
        key: "a".into(),
        value: b"1".to_vec(),
        flags: 0,
    };
    let req = crate::fsm::Request {
        client: 1,
        seq: 1,
        opened_at: 0,
        cmd: crate::fsm::Command::Kv(set),
    };
    source.apply(7, &req);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(6)),
        last_membership: Default::default(),
    };

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let mut sm: SmStore<TestTypes, MemBackend> = SmStore::open(Arc::new(MemBackend::new()))
        .unwrap()
        .with_install_observer(Arc::new(move |index| record.lock().unwrap().push(index)));
    now(sm.install_snapshot(&meta, source.snapshot())).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![7],
        "one report, at the snapshot's Consul index"
    );
    assert!(
        sm.read(|s| s.kv().get("a").is_some()),
        "the snapshot's state is in place"
    );
}

/// An append is durable only once the backend syncs it, and after a failed sync the store
/// takes no more writes: the next sync of a real disk may succeed without the lost data,
/// and writing on would leave a hole behind acknowledged entries.
#[test]
fn a_failed_sync_stops_every_later_write() {
    let backend = Arc::new(MemBackend::new());
    let mut log = Log::new(backend.clone());
    let append = |log: &mut Log, i: u64| {
        now(log.append([LogEntry::new_blank(log_id(i))], IOFlushed::noop()))
    };
    append(&mut log, 0).unwrap();
    assert_eq!(
        backend.unsynced_batches(),
        1,
        "an append waits for its sync"
    );
    backend.sync();
    append(&mut log, 1).unwrap();
    backend.fail_next_sync();
    backend.sync();
    let refused = append(&mut log, 2).expect_err("an append after a failed sync");
    assert!(refused.to_string().contains("earlier sync"), "{refused}");
    assert!(
        now(log.save_vote(&Vote::new(2, 1))).is_err(),
        "a vote after a failed sync"
    );
    assert_eq!(
        backend.unsynced_batches(),
        0,
        "nothing more reached the backend"
    );
    backend.crash();
    assert_exactly(&now(log.try_get_log_entries(0..10)).unwrap(), 0..1);
}

/// The sabotage of the rule above: the failed sync is reported as a success and the store
/// writes on.
#[cfg(feature = "sabotage")]
#[test]
fn the_ignore_sync_errors_sabotage_writes_on() {
    let backend = Arc::new(MemBackend::new());
    let mut log = Log::new(backend.clone());
    log.ignore_sync_errors = true;
    now(log.append([LogEntry::new_blank(log_id(0))], IOFlushed::noop())).unwrap();
    backend.fail_next_sync();
    backend.sync();
    now(log.append([LogEntry::new_blank(log_id(1))], IOFlushed::noop())).unwrap();
}
