//! openraft's log store and state-machine store over a [`Backend`].

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::type_config::OneshotSender;
use openraft::type_config::TypeConfigExt;
use openraft::EntryPayload;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::Backend;
use super::backend::OnDurable;
use super::backend::Op;
use super::backend::Space;
use super::LogEntry;
use super::LogId;
use super::Snapshot;
use super::SnapshotMeta;
use super::StoredMembership;
use super::Types;
use super::Vote;
use crate::fsm::Response;
use crate::fsm::StateMachine;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// How many log entries one read returned at most before reads returned whole ranges
/// (the [`LogStore::short_reads`] sabotage brings the cap back).
#[cfg(feature = "sabotage")]
pub const LOG_READ_MAX: usize = 4096;

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn get_meta<T: DeserializeOwned>(b: &dyn Backend, key: &[u8]) -> io::Result<Option<T>> {
    b.get(Space::Meta, key)?.map(|v| decode(&v)).transpose()
}

// ---------------------------------------------------------------------------------------
// Log store

/// The Raft log and vote. Cheap to clone (one shared backend).
pub struct LogStore<C, B> {
    backend: Arc<B>,
    /// Sabotage for the simulator: acknowledge appends without syncing them.
    #[cfg(feature = "sabotage")]
    pub skip_fsync: bool,
    /// Sabotage for the simulator: a read returns at most this many entries (the old cap
    /// was [`LOG_READ_MAX`]; the simulator uses a small one so that its bursts reach it)
    /// and does not look for holes, so a commit jump past that many entries is applied
    /// with a gap (the bug reads had before they returned whole ranges).
    #[cfg(feature = "sabotage")]
    pub short_reads: Option<usize>,
    /// Sabotage for the simulator: an append whose sync failed is acknowledged as durable
    /// (the server carries on after an fsync error, on data the disk does not have).
    #[cfg(feature = "sabotage")]
    pub ignore_sync_errors: bool,
    /// Set by the first failed sync: the store then refuses every write until the process
    /// starts again from what the disk kept. A disk that failed an fsync may report the next
    /// one as a success without the earlier data (the page cache dropped it), so writing on
    /// would leave a hole in the log behind acknowledged entries.
    poisoned: Arc<AtomicBool>,
    _c: PhantomData<fn() -> C>,
}

impl<C, B> Clone for LogStore<C, B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            #[cfg(feature = "sabotage")]
            skip_fsync: self.skip_fsync,
            #[cfg(feature = "sabotage")]
            short_reads: self.short_reads,
            #[cfg(feature = "sabotage")]
            ignore_sync_errors: self.ignore_sync_errors,
            poisoned: self.poisoned.clone(),
            _c: PhantomData,
        }
    }
}

impl<C, B: Backend> LogStore<C, B> {
    pub fn new(backend: Arc<B>) -> Self {
        Self {
            backend,
            #[cfg(feature = "sabotage")]
            skip_fsync: false,
            #[cfg(feature = "sabotage")]
            short_reads: None,
            #[cfg(feature = "sabotage")]
            ignore_sync_errors: false,
            poisoned: Arc::default(),
            _c: PhantomData,
        }
    }

    fn sync_appends(&self) -> bool {
        #[cfg(feature = "sabotage")]
        if self.skip_fsync {
            return false;
        }
        true
    }

    /// An error if an earlier sync failed (see `poisoned`).
    fn writable(&self) -> io::Result<()> {
        match self.poisoned.load(Ordering::SeqCst) {
            true => Err(io::Error::other(
                "an earlier sync of the raft store failed: no more writes until a restart",
            )),
            false => Ok(()),
        }
    }

    /// `done`, told of the batch's sync; a failed sync poisons the store first, so that no
    /// write after it reaches the backend.
    pub fn on_durable(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) -> OnDurable {
        #[cfg(feature = "sabotage")]
        if self.ignore_sync_errors {
            return Box::new(move |_| done(Ok(())));
        }
        let poisoned = self.poisoned.clone();
        Box::new(move |r: io::Result<()>| {
            if r.is_err() {
                poisoned.store(true, Ordering::SeqCst);
            }
            done(r)
        })
    }

    fn last_entry(&self) -> io::Result<Option<LogEntry>> {
        self.backend
            .last(Space::Log)?
            .map(|(_, v)| decode(&v))
            .transpose()
    }

    /// Every entry of `start..end` the log holds, as openraft requires: the whole range in
    /// one backend read (one atomic view), missing entries only where the log genuinely has
    /// none: purged ones at the start, not yet appended ones at the end. A hole is an
    /// error, never a shorter answer: openraft applies a committed range as it is read.
    ///
    /// The read takes one entry past the range too (in the same view), so a hole at the
    /// range's end is seen when the log goes on after it.
    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<LogEntry>> {
        let past = end.saturating_add(1);
        let limit = usize::try_from(past - start).unwrap_or(usize::MAX);
        let rows = self
            .backend
            .range(Space::Log, &log_key(start), &log_key(past), limit)?;
        let mut entries: Vec<LogEntry> = Vec::with_capacity(rows.len());
        let mut next = start;
        for (key, value) in &rows {
            let entry: LogEntry = decode(value)?;
            let index = entry.index();
            if key[..] != log_key(index) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log key {key:02x?} holds entry {index}"),
                ));
            }
            if index != next {
                // Entries `next..index` are missing: a hole, unless they come before the
                // first entry read and were purged.
                let purged = get_meta::<LogId>(&*self.backend, KEY_PURGED)?.map(|p| p.index);
                let first_kept = match purged {
                    Some(p) if next == start => next.max(p.saturating_add(1)),
                    _ => next,
                };
                if first_kept < index {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "raft log entry {first_kept} is missing (reading entries \
                             {start}..{end}): the log has a hole"
                        ),
                    ));
                }
            }
            next = index + 1;
            if index < end {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
}

impl<C: Types, B: Backend> RaftLogReader<C> for LogStore<C, B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        #[cfg(feature = "sabotage")]
        if let Some(cap) = self.short_reads {
            let rows = self
                .backend
                .range(Space::Log, &log_key(start), &log_key(end), cap)?;
            return rows.iter().map(|(_, v)| decode(v)).collect();
        }
        self.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        get_meta(&*self.backend, KEY_VOTE)
    }
}

impl<C: Types, B: Backend> RaftLogStorage<C> for LogStore<C, B> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged: Option<LogId> = get_meta(&*self.backend, KEY_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id()).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.writable()?;
        self.backend.write(
            vec![(Space::Meta, KEY_VOTE.to_vec(), Some(encode(vote)?))],
            true,
        )
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: losing it only means re-applying from the last snapshot.
        let value = committed.map(|c| encode(&c)).transpose()?;
        self.backend
            .write(vec![(Space::Meta, KEY_COMMITTED.to_vec(), value)], false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        get_meta(&*self.backend, KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops: Vec<Op> = Vec::new();
        for e in entries {
            ops.push((Space::Log, log_key(e.index()).to_vec(), Some(encode(&e)?)));
        }
        if !self.sync_appends() {
            self.backend.write(ops, false)?;
            callback.io_completed(Ok(()));
            return Ok(());
        }
        // Readable at once (the leader replicates the entries while its own sync runs);
        // openraft counts them as this server's only once the backend reports them durable.
        // A failed sync goes to openraft, which stops this server's Raft: it must not go on
        // as if the entries were on disk.
        self.writable()?;
        let done = self.on_durable(move |r| callback.io_completed(r));
        self.backend.write_then(ops, done)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.writable()?;
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let rows =
            self.backend
                .range(Space::Log, &log_key(from), &log_key(u64::MAX), usize::MAX)?;
        let ops: Vec<Op> = rows
            .into_iter()
            .map(|(k, _)| (Space::Log, k, None))
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        self.backend.write(ops, true)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.writable()?;
        let rows = self.backend.range(
            Space::Log,
            &log_key(0),
            &log_key(log_id.index + 1),
            usize::MAX,
        )?;
        let mut ops: Vec<Op> = rows
            .into_iter()
            .map(|(k, _)| (Space::Log, k, None))
            .collect();
        ops.push((Space::Meta, KEY_PURGED.to_vec(), Some(encode(&log_id)?)));
        // Not synced here: the entries are in a durable snapshot already, so a purge lost in
        // a crash leaves them readable again, which is harmless (the batch is atomic, so
        // `purged` never runs ahead of the entries). The next sync makes it durable. A
        // synchronous sync here stalled appends every `purge_batch_size` entries.
        self.backend.write(ops, false)
    }
}

// ---------------------------------------------------------------------------------------
// State machine store

/// What the simulator (or a test) may observe of every applied entry.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    pub index: u64,
    pub entry: &'a LogEntry,
    pub response: &'a Response,
    /// A broken index rule found while applying this entry, if any.
    pub violation: Option<String>,
}

pub type ApplyObserver = Arc<dyn Fn(&Applied<'_>) + Send + Sync>;

/// Called after a snapshot replaced the whole state, with the Consul index it brought the
/// state to (blocking queries of every topic must wake: anything may have changed).
pub type InstallObserver = Arc<dyn Fn(u64) + Send + Sync>;

/// The state machine with its Raft bookkeeping, shared between openraft and readers.
#[derive(Debug, Default)]
pub struct SmState {
    pub sm: StateMachine,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// The state-machine store: state in memory, made durable by snapshots in the backend;
/// entries after the last snapshot are replayed from the log on restart.
pub struct SmStore<C, B> {
    /// Sabotages for the simulator, applied to the state machine before every entry.
    #[cfg(feature = "sabotage")]
    pub sabotage: crate::fsm::Sabotage,
    /// The state machine's dedup table size, if not the default (see
    /// [`StateMachine::dedup_clients_max`]).
    pub dedup_clients_max: Option<usize>,
    state: Arc<Mutex<SmState>>,
    backend: Arc<B>,
    observer: Option<ApplyObserver>,
    on_install: Option<InstallObserver>,
    /// Check the index rules and the whole table after every entry (on by default; O(keys)
    /// per entry, which the simulator wants and a server under load cannot afford).
    checked: bool,
    _c: PhantomData<fn() -> C>,
}

impl<C, B> Clone for SmStore<C, B> {
    fn clone(&self) -> Self {
        Self {
            #[cfg(feature = "sabotage")]
            sabotage: self.sabotage,
            dedup_clients_max: self.dedup_clients_max,
            state: self.state.clone(),
            backend: self.backend.clone(),
            observer: self.observer.clone(),
            on_install: self.on_install.clone(),
            checked: self.checked,
            _c: PhantomData,
        }
    }
}

impl<C, B: Backend> SmStore<C, B> {
    /// Open the store, restoring the last durable snapshot if there is one.
    pub fn open(backend: Arc<B>) -> io::Result<Self> {
        let mut state = SmState::default();
        if let Some((meta, data)) = get_meta::<(SnapshotMeta, Vec<u8>)>(&*backend, KEY_SNAPSHOT)? {
            state.sm = StateMachine::restore(&data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.snapshot = Some((meta, data));
        }
        Ok(Self {
            #[cfg(feature = "sabotage")]
            sabotage: Default::default(),
            dedup_clients_max: None,
            state: Arc::new(Mutex::new(state)),
            backend,
            observer: None,
            on_install: None,
            checked: true,
            _c: PhantomData,
        })
    }

    /// Apply entries without the per-entry invariant checks ([`Applied::violation`] is then
    /// always `None`).
    pub fn without_checks(mut self) -> Self {
        self.checked = false;
        self
    }

    /// Call `observer` for every applied entry (the simulator's checks).
    pub fn with_observer(mut self, observer: ApplyObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Call `observer` after every installed snapshot.
    pub fn with_install_observer(mut self, observer: InstallObserver) -> Self {
        self.on_install = Some(observer);
        self
    }

    pub fn lock(&self) -> MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the state machine.
    pub fn read<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.lock().sm)
    }
}

impl<C: Types, B: Backend> SmStore<C, B> {
    /// Take a snapshot of the applied state and store it durably. The state is encoded
    /// under the lock (applies wait for that, not for the disk); the write then waits for
    /// the backend's sync without blocking a runtime thread, so a snapshot of a large state
    /// stalls neither applies nor the runtime for the length of an fsync.
    async fn current_snapshot(&self) -> io::Result<Snapshot> {
        let (meta, data) = {
            let s = self.lock();
            let meta = SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.membership.clone(),
            };
            (meta, s.sm.snapshot())
        };
        let (tx, rx) = C::oneshot::<io::Result<()>>();
        let done: OnDurable = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.backend.write_then(
            vec![(
                Space::Meta,
                KEY_SNAPSHOT.to_vec(),
                Some(encode(&(&meta, &data))?),
            )],
            done,
        )?;
        rx.await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::Interrupted,
                "the snapshot's sync was dropped",
            )
        })??;
        self.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<C: Types, B: Backend> RaftSnapshotBuilder<C> for SmStore<C, B> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        self.current_snapshot().await
    }
}

impl<C: Types, B: Backend> RaftStateMachine<C> for SmStore<C, B> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let s = self.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            // openraft numbers its log from 0 (the initial membership entry); Consul's
            // indexes start at 1 with that same entry. The state machine sees Consul's.
            let index = entry.index() + 1;
            let (response, violation) = {
                let mut s = self.lock();
                #[cfg(feature = "sabotage")]
                {
                    s.sm.sabotage = self.sabotage;
                }
                s.sm.dedup_clients_max = self.dedup_clients_max;
                s.last_applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Blank => {
                        s.sm.apply_empty(index);
                        (Response::Empty, None)
                    }
                    EntryPayload::Normal(req) if self.checked => {
                        let (r, v) = s.sm.apply_checked(index, req);
                        (r, v.err())
                    }
                    EntryPayload::Normal(req) => (s.sm.apply(index, req), None),
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id()), m.clone());
                        s.sm.apply_empty(index);
                        (Response::Empty, None)
                    }
                }
            };
            if let Some(observer) = &self.observer {
                observer(&Applied {
                    index,
                    entry: &entry,
                    response: &response,
                    violation,
                });
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let sm = StateMachine::restore(&snapshot)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.backend.write(
            vec![(
                Space::Meta,
                KEY_SNAPSHOT.to_vec(),
                Some(encode(&(meta, &snapshot))?),
            )],
            true,
        )?;
        let index = {
            let mut s = self.lock();
            s.sm = sm;
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
            s.snapshot = Some((meta.clone(), snapshot));
            s.sm.last_applied()
        };
        if let Some(observer) = &self.on_install {
            observer(index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let s = self.lock();
        Ok(s.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: data.clone(),
        }))
    }
}

#[cfg(test)]
#[path = "store_test.rs"]
mod store_test;
