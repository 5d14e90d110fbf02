//! The filesystem itself, without FUSE: what every process sees (the *visible* state, the
//! page cache of a real machine) and, apart from it, what a power cut would leave (the
//! *durable* state, the disk).
//!
//! # The durability model
//!
//! Strict POSIX, with nothing a real filesystem adds on top (no journal commit that makes
//! unrelated metadata durable as a side effect):
//!
//! - `write`, `ftruncate`, `fallocate`, `chmod`... change only the visible state.
//! - `fsync` or `fdatasync` of a file makes its contents, size and mode durable, and nothing
//!   else: not its name. A file that was never fsynced is durable with no contents.
//! - `fsync` of a directory makes its entries durable, as they are at that moment: the names
//!   created, linked, renamed in or out, unlinked or removed in it since its last fsync. An
//!   inode that a durable entry names exists after a cut, with the contents its own last
//!   fsync made durable (none if it was never fsynced: a file created, written and named by
//!   a directory fsync, but not fsynced itself, comes back empty).
//! - A rename is an entry change in each of its two directories: each side becomes durable
//!   with its own directory's fsync. (For a rename inside one directory, one fsync.)
//! - A cut keeps exactly the durable state: what is reachable from the root through durable
//!   entries, each inode with its durable contents. Everything else is discarded.
//!
//! This is the worst case a power cut may leave on a conforming filesystem (nothing that was
//! not forced out reached the disk); ext4 with `data=ordered` gives at least this much.
//! Two simplifications: times are not modelled (a cut keeps an inode's last durable
//! mtime, for the rest the time of the cut), and a directory that a cut would find under
//! two names (only a cross-directory rename of a directory, with one side synced, can do
//! that) is kept under the first name found, the other entry dropped.
//!
//! After [`Fs::freeze`] (the moment of the cut) every fsync fails with `EIO`: nothing more
//! becomes durable, and no process is told that it did.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::SystemTime;

/// The page size of file contents; holes (pages never written) read as zeros.
pub const PAGE: usize = 4096;
/// The root directory's inode number.
pub const ROOT: Ino = 1;

pub type Ino = u64;
/// An errno.
pub type Errno = i32;
pub type R<T> = Result<T, Errno>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// What `stat` shows.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Bytes of pages that hold data (a sparse file's holes do not count).
    pub allocated: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Counters since the filesystem was made.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    /// Successful `fsync`/`fdatasync` of files.
    pub file_syncs: u64,
    /// Successful `fsync` of directories.
    pub dir_syncs: u64,
    /// Syncs refused because the filesystem was frozen.
    pub refused_syncs: u64,
    pub cuts: u64,
}

/// What a [`Fs::cut`] threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Bytes of file contents that read differently after the cut (written but not synced,
    /// or in files that did not survive).
    pub bytes_discarded: u64,
    /// Bytes handed to `write` since the last fsync of their file, summed over the files
    /// visible before the cut (an upper bound of the above, for files that survive).
    pub unsynced_write_bytes: u64,
    /// Files, directories and symlinks visible before the cut and gone after it.
    pub inodes_lost: u64,
    /// Names that were unlinked or renamed away without a directory fsync, back after it.
    pub inodes_resurrected: u64,
    /// Directory entries that differ between before and after (created, removed or renamed
    /// without a sync of their directory).
    pub entries_discarded: u64,
    /// Files, directories and symlinks after the cut.
    pub inodes_kept: u64,
    /// `bytes_discarded` by path (as visible before the cut), for the files that lost any.
    pub discarded_by_path: BTreeMap<String, u64>,
}

impl CutReport {
    /// Whether the cut discarded anything at all.
    pub fn discarded_anything(&self) -> bool {
        self.bytes_discarded > 0
            || self.inodes_lost > 0
            || self.inodes_resurrected > 0
            || self.entries_discarded > 0
    }
}

/// A file's contents: pages by index, and a size. Bytes at or past `size` in the last page
/// are always zero, so growing a file shows zeros.
#[derive(Clone, Debug, Default)]
struct Pages {
    map: BTreeMap<u64, Arc<[u8; PAGE]>>,
    size: u64,
}

const ZERO: [u8; PAGE] = [0; PAGE];

impl Pages {
    fn page(&self, idx: u64) -> &[u8; PAGE] {
        self.map.get(&idx).map(|p| &**p).unwrap_or(&ZERO)
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (idx, within) = (at / PAGE as u64, (at % PAGE as u64) as usize);
            let n = (PAGE - within).min((end - at) as usize);
            out.extend_from_slice(&self.page(idx)[within..within + n]);
            at += n as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8], dirty: &mut BTreeSet<u64>) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (idx, within) = (at / PAGE as u64, (at % PAGE as u64) as usize);
            let n = (PAGE - within).min(rest.len());
            let page = self.map.entry(idx).or_insert_with(|| Arc::new(ZERO));
            Arc::make_mut(page)[within..within + n].copy_from_slice(&rest[..n]);
            dirty.insert(idx);
            at += n as u64;
            rest = &rest[n..];
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    fn truncate(&mut self, size: u64, dirty: &mut BTreeSet<u64>) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE as u64);
            let gone: Vec<u64> = self.map.range(first_gone..).map(|(i, _)| *i).collect();
            for idx in gone {
                self.map.remove(&idx);
                dirty.insert(idx);
            }
            let within = (size % PAGE as u64) as usize;
            if within != 0 {
                let idx = size / PAGE as u64;
                if let Some(page) = self.map.get_mut(&idx) {
                    Arc::make_mut(page)[within..].fill(0);
                    dirty.insert(idx);
                }
            }
        }
        self.size = size;
    }

    fn allocated(&self) -> u64 {
        let full = self.map.len() as u64 * PAGE as u64;
        full.min(self.size.next_multiple_of(PAGE as u64))
    }

    /// Bytes below `size` in pages that hold data.
    fn bytes(&self) -> u64 {
        self.map
            .keys()
            .map(|idx| self.size.saturating_sub(idx * PAGE as u64).min(PAGE as u64))
            .sum()
    }
}

/// What of an inode is on disk.
#[derive(Clone, Debug)]
struct Durable {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    data: Pages,
    entries: BTreeMap<OsString, Ino>,
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    nlink: u32,
    /// Files: the visible contents.
    data: Pages,
    /// Files: pages changed since the last fsync.
    dirty: BTreeSet<u64>,
    /// Files: bytes written since the last fsync.
    unsynced: u64,
    /// Directories: the visible entries.
    entries: BTreeMap<OsString, Ino>,
    /// Directories: the visible parent (for `..`).
    parent: Ino,
    /// Symlinks: the target (fixed at creation, durable with the inode).
    target: Vec<u8>,
    /// The name it was last given (for [`Fs::freeze_after_write_to`]).
    name: OsString,
    /// Open file handles.
    open: u32,
    /// `None`: this inode never reached the disk (no fsync of it, and no durable entry
    /// names it). A durable entry only ever names an inode that has `Some`.
    durable: Option<Durable>,
}

impl Inode {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: Ino) -> Inode {
        let now = SystemTime::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Pages::default(),
            dirty: BTreeSet::new(),
            unsynced: 0,
            entries: BTreeMap::new(),
            parent,
            target: Vec::new(),
            name: OsString::new(),
            open: 0,
            durable: None,
        }
    }

    /// What the disk would hold of this inode if it were named durably now, without a sync
    /// of its own: nothing of its contents.
    fn bare(&self) -> Durable {
        Durable {
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            data: Pages::default(),
            entries: BTreeMap::new(),
        }
    }
}

/// The filesystem: visible and durable state of every inode.
#[derive(Debug)]
pub struct Fs {
    inodes: HashMap<Ino, Inode>,
    next: Ino,
    frozen: bool,
    /// Freeze right after a write to a file whose name ends so.
    freeze_after: Option<Vec<u8>>,
    stats: Stats,
}

impl Default for Fs {
    fn default() -> Self {
        Self::new()
    }
}

fn name_ok(name: &OsStr) -> R<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl Fs {
    /// An empty filesystem whose root directory is durable (as after `mkfs`).
    pub fn new() -> Fs {
        let mut root = Inode::new(Kind::Dir, 0o755, 0, 0, ROOT);
        root.durable = Some(root.bare());
        Fs {
            inodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
            frozen: false,
            freeze_after: None,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn frozen(&self) -> bool {
        self.frozen
    }

    fn get(&self, ino: Ino) -> R<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn get_mut(&mut self, ino: Ino) -> R<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> R<&Inode> {
        let i = self.get(ino)?;
        if i.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(i)
    }

    fn attr_of(ino: Ino, i: &Inode) -> Attr {
        let (size, allocated) = match i.kind {
            Kind::File => (i.data.size, i.data.allocated()),
            Kind::Dir => (PAGE as u64, PAGE as u64),
            Kind::Symlink => (i.target.len() as u64, 0),
        };
        Attr {
            ino,
            kind: i.kind,
            size,
            allocated,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        }
    }

    pub fn getattr(&self, ino: Ino) -> R<Attr> {
        Ok(Self::attr_of(ino, self.get(ino)?))
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> R<Attr> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.getattr(ino)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &mut self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> R<Attr> {
        let i = self.get_mut(ino)?;
        if let Some(size) = size {
            match i.kind {
                Kind::File => {
                    i.data.truncate(size, &mut i.dirty);
                    i.mtime = SystemTime::now();
                }
                Kind::Dir => return Err(libc::EISDIR),
                Kind::Symlink => return Err(libc::EINVAL),
            }
        }
        if let Some(mode) = mode {
            i.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            i.uid = uid;
        }
        if let Some(gid) = gid {
            i.gid = gid;
        }
        if let Some(t) = atime {
            i.atime = t;
        }
        if let Some(t) = mtime {
            i.mtime = t;
        }
        i.ctime = SystemTime::now();
        Ok(Self::attr_of(ino, i))
    }

    fn add_entry(&mut self, parent: Ino, name: &OsStr, mut inode: Inode) -> R<Attr> {
        name_ok(name)?;
        inode.name = name.to_owned();
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let is_dir = inode.kind == Kind::Dir;
        self.inodes.insert(ino, inode);
        let p = self.get_mut(parent)?;
        p.entries.insert(name.to_owned(), ino);
        if is_dir {
            p.nlink += 1;
        }
        p.mtime = SystemTime::now();
        p.ctime = p.mtime;
        self.getattr(ino)
    }

    /// Create a file or a directory.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> R<Attr> {
        assert!(kind != Kind::Symlink, "symlinks are made by symlink()");
        self.add_entry(parent, name, Inode::new(kind, perm, uid, gid, parent))
    }

    pub fn symlink(
        &mut self,
        parent: Ino,
        name: &OsStr,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> R<Attr> {
        let mut inode = Inode::new(Kind::Symlink, 0o777, uid, gid, parent);
        inode.target = target.to_vec();
        self.add_entry(parent, name, inode)
    }

    pub fn readlink(&self, ino: Ino) -> R<Vec<u8>> {
        let i = self.get(ino)?;
        if i.kind != Kind::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(i.target.clone())
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> R<Attr> {
        name_ok(name)?;
        if self.get(ino)?.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.get_mut(parent)?.entries.insert(name.to_owned(), ino);
        let i = self.get_mut(ino)?;
        i.nlink += 1;
        i.ctime = SystemTime::now();
        self.getattr(ino)
    }

    /// One fewer name for `ino` (already removed from its directory).
    fn unname(&mut self, ino: Ino) {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return;
        };
        i.nlink = if i.kind == Kind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = SystemTime::now();
        self.forget_if_gone(ino);
    }

    /// Drop an inode nobody can reach any more: no name, no open handle, and nothing of it
    /// on disk (an inode with a durable entry naming it may come back with a cut).
    fn forget_if_gone(&mut self, ino: Ino) {
        if self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.nlink == 0 && i.open == 0 && i.durable.is_none())
        {
            self.inodes.remove(&ino);
        }
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> R<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        if self.get(ino)?.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let p = self.get_mut(parent)?;
        p.entries.remove(name);
        p.mtime = SystemTime::now();
        self.unname(ino);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> R<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        let p = self.get_mut(parent)?;
        p.entries.remove(name);
        p.nlink -= 1;
        p.mtime = SystemTime::now();
        self.unname(ino);
        Ok(())
    }

    /// Whether `dir` is `ancestor` or below it.
    fn is_under(&self, mut dir: Ino, ancestor: Ino) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            if dir == ROOT {
                return false;
            }
            match self.inodes.get(&dir) {
                Some(i) => dir = i.parent,
                None => return false,
            }
        }
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
        exchange: bool,
    ) -> R<()> {
        name_ok(newname)?;
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        let target = self.dir(newparent)?.entries.get(newname).copied();
        let kind = self.get(ino)?.kind;
        if kind == Kind::Dir && self.is_under(newparent, ino) {
            return Err(libc::EINVAL);
        }
        if exchange {
            let other = target.ok_or(libc::ENOENT)?;
            if self.get(other)?.kind == Kind::Dir && self.is_under(parent, other) {
                return Err(libc::EINVAL);
            }
            self.get_mut(parent)?.entries.insert(name.to_owned(), other);
            self.get_mut(newparent)?
                .entries
                .insert(newname.to_owned(), ino);
            self.moved(ino, kind, parent, newparent);
            self.get_mut(ino)?.name = newname.to_owned();
            self.get_mut(other)?.name = name.to_owned();
            let other_kind = self.get(other)?.kind;
            self.moved(other, other_kind, newparent, parent);
            return Ok(());
        }
        if target == Some(ino) {
            return Ok(());
        }
        if let Some(t) = target {
            if noreplace {
                return Err(libc::EEXIST);
            }
            match (kind, self.get(t)?.kind) {
                (Kind::Dir, Kind::Dir) if !self.get(t)?.entries.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                (Kind::Dir, Kind::Dir) => {}
                (Kind::Dir, _) => return Err(libc::ENOTDIR),
                (_, Kind::Dir) => return Err(libc::EISDIR),
                _ => {}
            }
        }
        self.get_mut(parent)?.entries.remove(name);
        self.get_mut(newparent)?
            .entries
            .insert(newname.to_owned(), ino);
        if let Some(t) = target {
            if self.get(t)?.kind == Kind::Dir {
                self.get_mut(newparent)?.nlink -= 1;
            }
            self.unname(t);
        }
        self.moved(ino, kind, parent, newparent);
        self.get_mut(ino)?.name = newname.to_owned();
        Ok(())
    }

    fn moved(&mut self, ino: Ino, kind: Kind, from: Ino, to: Ino) {
        let now = SystemTime::now();
        if kind == Kind::Dir && from != to {
            if let Some(f) = self.inodes.get_mut(&from) {
                f.nlink -= 1;
            }
            if let Some(t) = self.inodes.get_mut(&to) {
                t.nlink += 1;
            }
        }
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.parent = if kind == Kind::Dir { to } else { i.parent };
            i.ctime = now;
        }
        for d in [from, to] {
            if let Some(d) = self.inodes.get_mut(&d) {
                d.mtime = now;
                d.ctime = now;
            }
        }
    }

    pub fn open(&mut self, ino: Ino) -> R<Kind> {
        let i = self.get_mut(ino)?;
        i.open += 1;
        Ok(i.kind)
    }

    pub fn release(&mut self, ino: Ino) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open = i.open.saturating_sub(1);
        }
        self.forget_if_gone(ino);
    }

    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> R<Vec<u8>> {
        let i = self.get(ino)?;
        match i.kind {
            Kind::File => Ok(i.data.read(offset, len)),
            Kind::Dir => Err(libc::EISDIR),
            Kind::Symlink => Err(libc::EINVAL),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> R<u32> {
        // The field, not `get_mut(&mut self)`: `freeze_after` is read while `i` is held.
        let i = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        if i.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        i.data.write(offset, data, &mut i.dirty);
        i.unsynced += data.len() as u64;
        i.mtime = SystemTime::now();
        let trigger = self.freeze_after.as_ref();
        if trigger.is_some_and(|suffix| i.name.as_encoded_bytes().ends_with(suffix)) {
            self.frozen = true;
            self.freeze_after = None;
        }
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    /// `fallocate`: mode 0 grows the file to cover the range; `FALLOC_FL_KEEP_SIZE` only
    /// reserves space, which a memory filesystem has no need of.
    pub fn fallocate(&mut self, ino: Ino, offset: u64, len: u64, mode: i32) -> R<()> {
        let i = self.get_mut(ino)?;
        if i.kind != Kind::File {
            return Err(libc::ENODEV);
        }
        match mode {
            0 => {
                let end = offset + len;
                if end > i.data.size {
                    i.data.truncate(end, &mut i.dirty);
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// `fsync`/`fdatasync` of a file, or `fsync` of a directory: see the module docs.
    pub fn fsync(&mut self, ino: Ino) -> R<()> {
        if self.frozen {
            self.stats.refused_syncs += 1;
            return Err(libc::EIO);
        }
        let i = self.get_mut(ino)?;
        let mut d = i.durable.take().unwrap_or_else(|| i.bare());
        (d.perm, d.uid, d.gid, d.mtime) = (i.perm, i.uid, i.gid, i.mtime);
        match i.kind {
            Kind::File => {
                for idx in std::mem::take(&mut i.dirty) {
                    match i.data.map.get(&idx) {
                        Some(page) => d.data.map.insert(idx, page.clone()),
                        None => d.data.map.remove(&idx),
                    };
                }
                d.data.size = i.data.size;
                i.unsynced = 0;
                i.durable = Some(d);
                self.stats.file_syncs += 1;
            }
            Kind::Dir => {
                d.entries = i.entries.clone();
                i.durable = Some(d);
                // The inodes those entries name are on disk from now on (their contents
                // only as far as their own syncs went).
                let named: Vec<Ino> = self.inodes[&ino].entries.values().copied().collect();
                for child in named {
                    if let Some(c) = self.inodes.get_mut(&child) {
                        if c.durable.is_none() {
                            c.durable = Some(c.bare());
                        }
                    }
                }
                self.stats.dir_syncs += 1;
            }
            Kind::Symlink => {
                i.durable = Some(d);
                self.stats.file_syncs += 1;
            }
        }
        Ok(())
    }

    /// `.`, `..` and the entries of a directory, in a stable order.
    pub fn readdir(&self, ino: Ino) -> R<Vec<(Ino, Kind, OsString)>> {
        let d = self.dir(ino)?;
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (d.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, child) in &d.entries {
            let kind = self.inodes.get(child).map_or(Kind::File, |c| c.kind);
            out.push((*child, kind, name.clone()));
        }
        Ok(out)
    }

    /// Number of inodes and bytes of file pages held (visible state).
    pub fn usage(&self) -> (u64, u64) {
        (
            self.inodes.len() as u64,
            self.inodes.values().map(|i| i.data.allocated()).sum(),
        )
    }

    /// The visible tree, a line a name: path, kind, visible size, and what a cut would keep
    /// of it (`durable: -` where its name is not durable).
    pub fn listing(&self) -> String {
        let (durable, _) = self.reachable(true);
        let durable: BTreeSet<Ino> = durable.into_iter().collect();
        let mut out = String::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((dir, path)) = stack.pop() {
            let d = &self.inodes[&dir];
            let named = d.durable.as_ref().map(|d| &d.entries);
            for (name, child) in d.entries.iter().rev() {
                let Some(c) = self.inodes.get(child) else {
                    continue;
                };
                let p = format!("{path}/{}", name.to_string_lossy());
                let kept =
                    durable.contains(child) && named.is_some_and(|e| e.get(name) == Some(child));
                let size = Self::attr_of(*child, c).size;
                let dsize = match (&c.durable, c.kind) {
                    (Some(d), Kind::File) if kept => d.data.size.to_string(),
                    (Some(_), _) if kept => "yes".into(),
                    _ => "-".into(),
                };
                out += &format!(
                    "{p} {:?} size={size} durable={dsize} unsynced={}\n",
                    c.kind, c.unsynced
                );
                if c.kind == Kind::Dir {
                    stack.push((*child, p));
                }
            }
        }
        out
    }

    /// The moment of the power cut: from now on no sync succeeds.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Freeze right after the next write to a file whose name ends with `suffix`: the cut
    /// then falls between that write and its fsync.
    pub fn freeze_after_write_to(&mut self, suffix: &str) {
        self.freeze_after = Some(suffix.as_bytes().to_vec());
    }

    /// Visible paths of inodes (a hard-linked file: the first name found).
    fn paths(&self) -> HashMap<Ino, String> {
        let mut out = HashMap::from([(ROOT, String::new())]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(d) = self.inodes.get(&dir) else {
                continue;
            };
            let base = out[&dir].clone();
            for (name, child) in &d.entries {
                if out.contains_key(child) {
                    continue;
                }
                out.insert(*child, format!("{base}/{}", name.to_string_lossy()));
                if self.inodes.get(child).is_some_and(|c| c.kind == Kind::Dir) {
                    queue.push_back(*child);
                }
            }
        }
        out
    }

    /// Inodes reachable from the root, through the visible entries or the durable ones;
    /// a directory only through the first name found.
    fn reachable(&self, durable: bool) -> (Vec<Ino>, u64) {
        let mut seen = BTreeSet::from([ROOT]);
        let mut order = vec![ROOT];
        let mut queue = VecDeque::from([ROOT]);
        let mut dropped = 0;
        while let Some(dir) = queue.pop_front() {
            let Some(d) = self.inodes.get(&dir) else {
                continue;
            };
            let entries = if durable {
                d.durable.as_ref().map(|d| &d.entries)
            } else {
                Some(&d.entries)
            };
            for child in entries.into_iter().flat_map(|e| e.values()) {
                let Some(c) = self.inodes.get(child) else {
                    continue;
                };
                if !seen.insert(*child) {
                    dropped += u64::from(c.kind == Kind::Dir);
                    continue;
                }
                order.push(*child);
                if c.kind == Kind::Dir {
                    queue.push_back(*child);
                }
            }
        }
        (order, dropped)
    }

    /// Bytes that read differently in a file's visible and durable contents.
    fn differing_bytes(i: &Inode, d: &Durable) -> u64 {
        let end = i.data.size.max(d.data.size);
        let mut n = 0;
        for idx in &i.dirty {
            let start = idx * PAGE as u64;
            if start >= end {
                continue;
            }
            let len = (end - start).min(PAGE as u64) as usize;
            let (a, b) = (i.data.page(*idx), d.data.page(*idx));
            n += a[..len]
                .iter()
                .zip(&b[..len])
                .filter(|(x, y)| x != y)
                .count() as u64;
        }
        // Pages that only the size change exposes or hides are zeros past the shorter size
        // (pages are zero past `size`), counted above where they were written.
        n
    }

    /// The power cut: everything not durable is discarded, and the durable state becomes
    /// what every process sees. Call it with no process using the filesystem (unmounted):
    /// open handles are dropped.
    pub fn cut(&mut self) -> CutReport {
        let (visible, _) = self.reachable(false);
        let (durable, dropped_dirs) = self.reachable(true);
        let (vis_set, dur_set): (BTreeSet<Ino>, BTreeSet<Ino>) = (
            visible.iter().copied().collect(),
            durable.iter().copied().collect(),
        );
        let mut report = CutReport {
            entries_discarded: dropped_dirs,
            ..CutReport::default()
        };
        let paths = self.paths();
        for ino in &visible {
            let i = &self.inodes[ino];
            report.unsynced_write_bytes += i.unsynced;
            let lost = match (dur_set.contains(ino), &i.durable) {
                (true, Some(d)) => Self::differing_bytes(i, d),
                _ => {
                    report.inodes_lost += 1;
                    i.data.bytes()
                }
            };
            report.bytes_discarded += lost;
            if lost > 0 {
                report
                    .discarded_by_path
                    .insert(paths.get(ino).cloned().unwrap_or_default(), lost);
            }
        }
        report.inodes_resurrected = dur_set.difference(&vis_set).count() as u64;
        for ino in vis_set.union(&dur_set) {
            let i = &self.inodes[ino];
            if i.kind != Kind::Dir {
                continue;
            }
            let empty = BTreeMap::new();
            let (v, d) = (
                if vis_set.contains(ino) {
                    &i.entries
                } else {
                    &empty
                },
                i.durable.as_ref().map_or(&empty, |d| &d.entries),
            );
            report.entries_discarded +=
                v.iter().filter(|(k, x)| d.get(*k) != Some(x)).count() as u64;
            report.entries_discarded +=
                d.iter().filter(|(k, _)| !v.contains_key(*k)).count() as u64;
        }

        // The disk becomes the state.
        let now = SystemTime::now();
        let mut old = std::mem::take(&mut self.inodes);
        let mut placed: BTreeSet<Ino> = BTreeSet::new();
        for ino in &durable {
            let mut i = old.remove(ino).expect("reachable inodes exist");
            let d = i
                .durable
                .clone()
                .expect("durable entries name durable inodes");
            i.perm = d.perm;
            i.uid = d.uid;
            i.gid = d.gid;
            (i.atime, i.mtime, i.ctime) = (now, d.mtime, now);
            i.data = d.data;
            i.dirty.clear();
            i.unsynced = 0;
            i.entries = d.entries;
            i.open = 0;
            i.nlink = if i.kind == Kind::Dir { 2 } else { 0 };
            self.inodes.insert(*ino, i);
        }
        // Links and parents as the durable entries have them; an entry naming a directory
        // already placed elsewhere is dropped (see the module docs).
        placed.insert(ROOT);
        for dir in &durable {
            if self.inodes[dir].kind != Kind::Dir {
                continue;
            }
            let entries: Vec<(OsString, Ino)> = self.inodes[dir]
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (name, child) in entries {
                let Some(kind) = self.inodes.get(&child).map(|c| c.kind) else {
                    self.inodes.get_mut(dir).unwrap().entries.remove(&name);
                    continue;
                };
                if kind == Kind::Dir {
                    if !placed.insert(child) {
                        self.inodes.get_mut(dir).unwrap().entries.remove(&name);
                        continue;
                    }
                    self.inodes.get_mut(&child).unwrap().parent = *dir;
                    self.inodes.get_mut(dir).unwrap().nlink += 1;
                } else {
                    self.inodes.get_mut(&child).unwrap().nlink += 1;
                }
            }
        }
        self.inodes.get_mut(&ROOT).unwrap().parent = ROOT;
        report.inodes_kept = self.inodes.len() as u64 - 1;
        self.frozen = false;
        self.stats.cuts += 1;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(fs: &mut Fs, parent: Ino, name: &str, data: &[u8]) -> Ino {
        let ino = fs
            .create(parent, os(name), Kind::File, 0o644, 0, 0)
            .unwrap()
            .ino;
        fs.write(ino, 0, data).unwrap();
        ino
    }

    fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
        let size = fs.getattr(ino).unwrap().size;
        fs.read(ino, 0, size as usize).unwrap()
    }

    #[test]
    fn a_file_never_synced_nor_named_durably_is_gone() {
        let mut fs = Fs::new();
        file(&mut fs, ROOT, "a", b"hello");
        let r = fs.cut();
        assert_eq!(fs.lookup(ROOT, os("a")).unwrap_err(), libc::ENOENT);
        assert_eq!(
            (
                r.inodes_lost,
                r.bytes_discarded,
                r.unsynced_write_bytes,
                r.entries_discarded
            ),
            (1, 5, 5, 1)
        );
    }

    #[test]
    fn a_synced_file_needs_its_directory_synced_too() {
        let mut fs = Fs::new();
        let a = file(&mut fs, ROOT, "a", b"hello");
        fs.fsync(a).unwrap();
        fs.cut();
        assert!(
            fs.lookup(ROOT, os("a")).is_err(),
            "strict model: the name was never synced"
        );

        let a = file(&mut fs, ROOT, "a", b"hello");
        fs.fsync(a).unwrap();
        fs.fsync(ROOT).unwrap();
        let r = fs.cut();
        assert_eq!(
            read_all(&fs, fs.lookup(ROOT, os("a")).unwrap().ino),
            b"hello"
        );
        assert!(!r.discarded_anything(), "{r:?}");
    }

    #[test]
    fn a_name_synced_without_its_file_comes_back_empty() {
        let mut fs = Fs::new();
        file(&mut fs, ROOT, "a", b"hello");
        fs.fsync(ROOT).unwrap();
        let r = fs.cut();
        let a = fs.lookup(ROOT, os("a")).unwrap();
        assert_eq!(a.size, 0);
        assert_eq!((r.inodes_lost, r.bytes_discarded), (0, 5));
    }

    #[test]
    fn only_what_the_last_sync_covered_of_a_file_survives() {
        let mut fs = Fs::new();
        let a = file(&mut fs, ROOT, "a", &[1; 10_000]);
        fs.fsync(a).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.write(a, 10_000, &[2; 100]).unwrap(); // an append
        fs.write(a, 0, &[3; 10]).unwrap(); // an overwrite
        let r = fs.cut();
        assert_eq!(read_all(&fs, a), vec![1; 10_000]);
        assert_eq!((r.bytes_discarded, r.unsynced_write_bytes), (110, 110));
        // and the unsynced truncation of a synced file
        fs.setattr(a, None, None, None, Some(3), None, None)
            .unwrap();
        fs.cut();
        assert_eq!(read_all(&fs, a).len(), 10_000);
    }

    #[test]
    fn preallocated_files_keep_their_size_and_lose_unsynced_bytes() {
        let mut fs = Fs::new();
        let j = fs
            .create(ROOT, os("0.jnl"), Kind::File, 0o644, 0, 0)
            .unwrap()
            .ino;
        fs.setattr(j, None, None, None, Some(64 << 20), None, None)
            .unwrap();
        fs.fsync(j).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.write(j, 0, b"batch one").unwrap();
        fs.fsync(j).unwrap();
        fs.write(j, 9, b"batch two").unwrap();
        let r = fs.cut();
        assert_eq!(fs.getattr(j).unwrap().size, 64 << 20);
        assert_eq!(fs.read(j, 0, 18).unwrap(), b"batch one\0\0\0\0\0\0\0\0\0");
        assert_eq!(r.bytes_discarded, 9);
        assert_eq!(fs.getattr(j).unwrap().allocated, PAGE as u64, "sparse");
    }

    #[test]
    fn unlinks_and_renames_are_durable_with_their_directory() {
        let mut fs = Fs::new();
        let a = file(&mut fs, ROOT, "a", b"A");
        fs.fsync(a).unwrap();
        fs.fsync(ROOT).unwrap();
        // the write-temp-then-rename idiom, without the directory sync
        let t = file(&mut fs, ROOT, "a.tmp", b"B");
        fs.fsync(t).unwrap();
        fs.rename(ROOT, os("a.tmp"), ROOT, os("a"), false, false)
            .unwrap();
        let r = fs.cut();
        assert_eq!(read_all(&fs, fs.lookup(ROOT, os("a")).unwrap().ino), b"A");
        assert_eq!(r.entries_discarded, 1);
        // with it
        let t = file(&mut fs, ROOT, "a.tmp", b"B");
        fs.fsync(t).unwrap();
        fs.rename(ROOT, os("a.tmp"), ROOT, os("a"), false, false)
            .unwrap();
        fs.fsync(ROOT).unwrap();
        fs.cut();
        assert_eq!(read_all(&fs, fs.lookup(ROOT, os("a")).unwrap().ino), b"B");
        assert!(fs.lookup(ROOT, os("a.tmp")).is_err());
        // an unsynced unlink is undone
        fs.unlink(ROOT, os("a")).unwrap();
        let r = fs.cut();
        assert_eq!(r.inodes_resurrected, 1);
        assert_eq!(read_all(&fs, fs.lookup(ROOT, os("a")).unwrap().ino), b"B");
        fs.unlink(ROOT, os("a")).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.cut();
        assert!(fs.lookup(ROOT, os("a")).is_err());
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let mut fs = Fs::new();
        let d = fs
            .create(ROOT, os("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap()
            .ino;
        let f = file(&mut fs, d, "f", b"x");
        fs.fsync(f).unwrap();
        fs.fsync(d).unwrap();
        fs.cut();
        assert!(fs.lookup(ROOT, os("d")).is_err());

        let d = fs
            .create(ROOT, os("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap()
            .ino;
        let f = file(&mut fs, d, "f", b"x");
        fs.fsync(f).unwrap();
        fs.fsync(d).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.cut();
        let d = fs.lookup(ROOT, os("d")).unwrap();
        assert_eq!(d.nlink, 2);
        assert_eq!(read_all(&fs, fs.lookup(d.ino, os("f")).unwrap().ino), b"x");
        assert_eq!(fs.readdir(d.ino).unwrap().len(), 3);
    }

    #[test]
    fn a_cross_directory_rename_is_durable_side_by_side() {
        let mut fs = Fs::new();
        let (a, b) = (
            fs.create(ROOT, os("a"), Kind::Dir, 0o755, 0, 0)
                .unwrap()
                .ino,
            fs.create(ROOT, os("b"), Kind::Dir, 0o755, 0, 0)
                .unwrap()
                .ino,
        );
        let f = file(&mut fs, a, "f", b"x");
        fs.fsync(f).unwrap();
        fs.fsync(a).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.rename(a, os("f"), b, os("f"), false, false).unwrap();
        fs.fsync(b).unwrap();
        fs.cut();
        // the source side was not synced: the file has two names now
        assert_eq!(
            fs.lookup(a, os("f")).unwrap().ino,
            fs.lookup(b, os("f")).unwrap().ino
        );
        assert_eq!(fs.getattr(f).unwrap().nlink, 2);
    }

    #[test]
    fn after_freeze_no_sync_succeeds() {
        let mut fs = Fs::new();
        let a = file(&mut fs, ROOT, "a", b"x");
        fs.freeze();
        assert_eq!(fs.fsync(a), Err(libc::EIO));
        assert_eq!(fs.fsync(ROOT), Err(libc::EIO));
        fs.cut();
        assert!(fs.lookup(ROOT, os("a")).is_err());
        assert_eq!(fs.stats().refused_syncs, 2);
        assert!(
            !fs.frozen(),
            "a cut ends the freeze: the machine is back up"
        );
    }

    #[test]
    fn a_write_to_a_named_file_can_trigger_the_freeze() {
        let mut fs = Fs::new();
        let other = file(&mut fs, ROOT, "x.log", b"1");
        let j = file(&mut fs, ROOT, "1.tmp", b"");
        fs.rename(ROOT, os("1.tmp"), ROOT, os("1.jnl"), false, false)
            .unwrap();
        fs.fsync(j).unwrap();
        fs.fsync(ROOT).unwrap();
        fs.freeze_after_write_to(".jnl");
        fs.write(other, 1, b"2").unwrap();
        assert!(!fs.frozen());
        fs.write(j, 0, b"entry").unwrap();
        assert!(fs.frozen());
        assert_eq!(fs.fsync(j), Err(libc::EIO));
        let r = fs.cut();
        assert_eq!(r.discarded_by_path.get("/1.jnl"), Some(&5));
        assert_eq!(r.discarded_by_path.get("/x.log"), Some(&2));
    }

    #[test]
    fn namespace_rules() {
        let mut fs = Fs::new();
        let d = fs
            .create(ROOT, os("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap()
            .ino;
        file(&mut fs, d, "f", b"x");
        assert_eq!(
            fs.create(ROOT, os("d"), Kind::File, 0o644, 0, 0)
                .unwrap_err(),
            libc::EEXIST
        );
        assert_eq!(fs.rmdir(ROOT, os("d")).unwrap_err(), libc::ENOTEMPTY);
        assert_eq!(fs.unlink(ROOT, os("d")).unwrap_err(), libc::EISDIR);
        assert_eq!(
            fs.rename(ROOT, os("d"), d, os("x"), false, false)
                .unwrap_err(),
            libc::EINVAL
        );
        assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
        let e = fs
            .create(ROOT, os("e"), Kind::Dir, 0o755, 0, 0)
            .unwrap()
            .ino;
        fs.rename(ROOT, os("e"), d, os("e"), false, false).unwrap();
        assert_eq!(
            (
                fs.getattr(ROOT).unwrap().nlink,
                fs.getattr(d).unwrap().nlink
            ),
            (3, 3)
        );
        assert_eq!(fs.readdir(e).unwrap()[1].0, d, "..");
        let g = file(&mut fs, ROOT, "g", b"y");
        fs.link(g, d, os("g2")).unwrap();
        assert_eq!(fs.getattr(g).unwrap().nlink, 2);
        assert_eq!(
            fs.rename(ROOT, os("g"), d, os("f"), true, false)
                .unwrap_err(),
            libc::EEXIST
        );
        fs.rename(ROOT, os("g"), d, os("f"), false, true).unwrap();
        assert_eq!(fs.lookup(ROOT, os("g")).unwrap().size, 1);
        assert_eq!(fs.lookup(d, os("f")).unwrap().ino, g);
        // an open, unlinked file stays readable until released
        let h = file(&mut fs, ROOT, "h", b"zz");
        fs.open(h).unwrap();
        fs.unlink(ROOT, os("h")).unwrap();
        assert_eq!(read_all(&fs, h), b"zz");
        fs.release(h);
        assert_eq!(fs.getattr(h).unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn pages_read_write_truncate() {
        let mut p = Pages::default();
        let mut dirty = BTreeSet::new();
        p.write(5000, b"abc", &mut dirty);
        assert_eq!(p.size, 5003);
        assert_eq!(p.read(4999, 10), b"\0abc");
        p.truncate(5001, &mut dirty);
        p.truncate(6000, &mut dirty);
        assert_eq!(
            p.read(5000, 3),
            b"a\0\0",
            "bytes past a shrink read as zeros after a regrow"
        );
        p.truncate(0, &mut dirty);
        assert!(p.map.is_empty());
        assert_eq!(dirty, BTreeSet::from([1]));
    }
}
