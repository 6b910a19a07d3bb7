//! The durable store: every byte of Cube state that must survive a restart lives here, in one
//! LMDB environment (via `heed`) split into named tables.
//!
//! What this module owns:
//! - opening the environment (creating the directory, sizing the memory map, creating the tables)
//!   and turning every way that can fail into a [`StoreError`] that says what to do about it;
//! - typed tables ([`Table`]): each declares its key encoding and its records, stored with a
//!   schema version, so callers never build keys or JSON by hand;
//! - reads ([`Store::get`], [`Store::scan`], [`Store::len`], and the tables' own), which run
//!   on the caller's thread in short read transactions and never wait for writers;
//! - all writes, which go through one dedicated OS thread, `cube-store-writer`.
//!
//! Why group commit: a write is only acknowledged once LMDB has committed it *and* fsync'd it,
//! and that fsync costs far more than the write itself (milliseconds on a real disk). LMDB
//! allows a single write transaction at a time, so if every caller committed on its own, callers
//! would queue on the write lock and pay one fsync each. Instead callers hand a [`Batch`] to the
//! writer thread; the writer takes every batch already waiting, applies them all in one
//! transaction, commits once, and then acknowledges each caller. Under load one commit covers
//! every batch that queued up while the previous one was being fsync'd, while a lone batch is
//! still committed immediately (nothing waits for a timer). A batch is all-or-nothing: it is never
//! split across transactions.
//!
//! If the combined transaction fails (for example the map is full, or one batch carries an
//! invalid key), it is aborted and each batch is retried in its own transaction, so only the
//! batch that is actually at fault receives the error.
//!
//! Why a store never wedges (ARCHITECTURE.md §7): after every commit the writer measures the
//! bytes in use — the pages of every table's B-tree, not the file's high-water mark, so pages
//! that deletes and overwrites free (LMDB reuses them) count as free again — and [`Usage`]
//! says whether *new* data may come in: only while a reserve of the store stays free (see
//! [`reserve_for`]). Callers refuse new data (a submission, a start) when
//! [`Store::check_room`] says no; what keeps existing work moving (stops, reports, deletions)
//! always commits, into the reserve.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

pub mod lock;
pub mod table;

pub use table::{Encoding, Key, Record, Table};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, CommitToken, CompactionOption, Database, Env, EnvOpenOptions, MdbError,
    OnCommit, WithoutTls,
};
use tokio::sync::oneshot;

/// Default size of the memory map. This is virtual address space, not disk space: the data
/// file only grows as data is written. It is sized generously so that a full store is an
/// anomaly rather than an operating condition.
pub const DEFAULT_MAP_SIZE: usize = 64 << 30;

/// Most batches the writer folds into one transaction. Bounds the size of one transaction (and
/// so the latency of the callers at the front of the queue) when the queue is very long.
pub const MAX_BATCHES_PER_COMMIT: usize = 4096;

/// Map sizes are rounded up to a multiple of this, which is a multiple of every page size in
/// common use (4 KiB, 16 KiB, 64 KiB): LMDB refuses a map size that is not a page multiple.
const MAP_SIZE_GRANULE: usize = 64 << 10;

/// The least room kept free for stops and status updates, whatever the store's size (but never
/// more than half of it): see [`reserve_for`].
pub const MIN_RESERVE: u64 = 1 << 20;

/// Name of the thread that owns all writes.
const WRITER_THREAD_NAME: &str = "cube-store-writer";

/// How many bytes of a key an error message shows before eliding the rest.
const KEY_DISPLAY_LIMIT: usize = 64;

type Db = Database<'static, Bytes, Bytes>;

/// One row of a table as returned by [`Store::scan`]: `(key, value)`.
pub type Row = (Vec<u8>, Vec<u8>);

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The environment could not be opened or created. `reason` says why and, where there is
    /// one, what to do about it (e.g. when the data file is not an LMDB file or is damaged).
    #[error("cannot open the store at {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },

    /// A write needed more room than the memory map allows. Nothing of the failing batch was
    /// written; the store stays readable and smaller batches may still fit.
    #[error(
        "the store at {} is full (map size {map_size} bytes, {} in use); delete data that is \
         no longer needed or reopen the store with a larger map size (it is virtual address \
         space, the file only grows as data is written)",
        path.display(),
        human_bytes(*in_use)
    )]
    Full {
        path: PathBuf,
        map_size: usize,
        /// Bytes in use as last measured (before the failing batch).
        in_use: u64,
    },

    /// The file system holding the store is full (`ENOSPC`, or the owner's quota is spent):
    /// the transaction failed and nothing of it was written.
    #[error("the disk holding the store at {} is full ({source})", path.display())]
    DiskFull {
        path: PathBuf,
        source: std::io::Error,
    },

    /// New data is refused before it is written: what is in use and the reserve kept for
    /// stops and status updates fill what the store can hold ([`Usage::has_room`]).
    #[error("the store at {} has no room for new data: {usage}", path.display())]
    NoRoom { path: PathBuf, usage: Usage },

    /// The writer thread is gone (the store is shutting down, or the thread died), so the batch
    /// was not written, or its outcome is unknown.
    #[error("the store writer thread is gone; the batch was not acknowledged")]
    Closed,

    /// The table was not declared when the store was opened.
    #[error("unknown table {0:?}: it was not declared when the store was opened")]
    UnknownTable(String),

    /// A record could not be serialized.
    #[error("cannot encode the value for key {key} of table {table:?}: {reason}")]
    Encode {
        table: String,
        key: String,
        reason: String,
    },

    /// A stored record cannot be read as its table's records are: damaged, or written by a
    /// newer Cube.
    #[error("cannot read the record at key {key} of table {table:?}: {reason}")]
    Record {
        table: String,
        key: String,
        reason: String,
    },

    /// LMDB refused one write of a batch (e.g. an empty key, or a key longer than 511 bytes).
    #[error("cannot write key {key} of table {table:?}: {source}")]
    Write {
        table: String,
        key: String,
        source: heed::Error,
    },

    /// Any other LMDB or I/O error.
    #[error("store error: {0}")]
    Lmdb(#[from] heed::Error),
}

impl StoreError {
    /// True when the error means the store has no room: its map is full, its disk is, or new
    /// data is refused to keep the reserve ([`StoreError::NoRoom`]). HTTP answers these 507.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Full { .. } | StoreError::DiskFull { .. } | StoreError::NoRoom { .. }
        )
    }
}

/// How full the store is, as the writer measured it after its last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the pages holding data: every table's B-tree (branch, leaf and overflow
    /// pages), the table of tables and the two meta pages. Pages that deletes and overwrites
    /// freed are not counted: LMDB reuses them. (The free list's own pages, a few per
    /// thousand free pages, are not counted either.)
    pub in_use: u64,
    /// Bytes of the batches queued for the writer and not yet committed (keys and values),
    /// so a burst of submissions cannot run past the measurement into the reserve.
    pub queued: u64,
    /// The memory map's size: the most the store can ever hold (`--store-size`).
    pub map_size: u64,
    /// The data file's size (its high-water mark): pages up to it are in use or free to reuse.
    pub file_size: u64,
    /// Free bytes of the file system holding the store, for the file to grow into
    /// (`u64::MAX` when it cannot be read).
    pub disk_free: u64,
}

impl Usage {
    /// The most the store can hold now: its map, or less when the disk cannot grow the file
    /// that far.
    pub fn capacity(&self) -> u64 {
        self.map_size
            .min(self.file_size.saturating_add(self.disk_free))
    }

    /// The room kept for what keeps existing work moving: [`reserve_for`] the capacity.
    pub fn reserve(&self) -> u64 {
        reserve_for(self.capacity())
    }

    /// True while new data may be accepted: what is in use (and queued) leaves the reserve
    /// free.
    pub fn has_room(&self) -> bool {
        self.in_use
            .saturating_add(self.queued)
            .saturating_add(self.reserve())
            <= self.capacity()
    }

    /// True when the disk, not the map, bounds what the store can hold.
    pub fn disk_bound(&self) -> bool {
        self.capacity() < self.map_size
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in use and {} queued, of the {} it can hold",
            human_bytes(self.in_use),
            human_bytes(self.queued),
            human_bytes(self.capacity()),
        )?;
        if self.disk_bound() {
            write!(
                f,
                " (its map is {}, but the disk holding it has only {} free)",
                human_bytes(self.map_size),
                human_bytes(self.disk_free)
            )?;
        } else {
            write!(f, " (its map size)")?;
        }
        write!(
            f,
            "; the last {} is kept for stops and status updates",
            human_bytes(self.reserve())
        )
    }
}

/// The room kept free for stops, status updates and deletions once new data is refused:
/// 1/16 of what the store can hold, at least [`MIN_RESERVE`] (1 MiB), at most half of it.
///
/// What it must cover (ARCHITECTURE.md §7): LMDB copies every page a transaction touches, so
/// one stop needs its record's leaf (or overflow pages), the branch pages above it and the
/// table of tables — half a dozen pages, 24 KiB — while it commits, and afterwards keeps only
/// the record's growth (a hundred bytes or so). A group of many stops that does not fit as one
/// transaction is retried batch by batch by the writer, and a [`Batch::divisible`] batch of
/// many records in parts, so the reserve need not hold a whole group; it must hold the freed
/// pages LMDB cannot reuse yet (readers still see them), what the tasks accepted before the
/// limit go on writing while they run and stop, and submissions that raced past the last
/// measurement. 1 MiB is some forty single-stop transactions at once; 1/16 of a 64 GiB map is
/// 4 GiB, millions of stops.
pub fn reserve_for(capacity: u64) -> u64 {
    (capacity / 16).max(MIN_RESERVE).min(capacity / 2)
}

/// `512 B`, `64 KiB`, `1.5 MiB`, `64 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut v = n as f64;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One operation of a [`Batch`].
enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
}

impl Op {
    fn table(&self) -> &'static str {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } => table,
        }
    }

    /// Bytes the operation may add to the store (a delete adds none).
    fn bytes(&self) -> u64 {
        match self {
            Op::Put { key, value, .. } => (key.len() + value.len()) as u64,
            Op::Delete { .. } => 0,
        }
    }
}

/// A set of writes that is committed atomically: all of it or none of it — unless it is
/// marked [`Batch::divisible`].
/// Operations apply in the order they were added (a put then a delete of the same key deletes it).
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    divisible: bool,
}

impl fmt::Debug for Batch {
    // Values can be large and binary: show what is touched, not the payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for op in &self.ops {
            match op {
                Op::Put { table, key, value } => list.entry(&format_args!(
                    "put {table}/{} ({} bytes)",
                    display_key(key),
                    value.len()
                )),
                Op::Delete { table, key } => {
                    list.entry(&format_args!("delete {table}/{}", display_key(key)))
                }
            };
        }
        list.finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `table`, replacing any previous value.
    pub fn put(&mut self, table: &'static str, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value,
        });
    }

    /// Removes `key` from `table`; deleting a missing key is not an error.
    pub fn delete(&mut self, table: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
        });
    }

    /// True when the batch holds no operation (committing it still waits for the writer).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Let the writer commit this batch in parts (each in order, each atomic) when it does
    /// not fit in the store as one transaction: for a set of independent records, such as
    /// the records one step of a core changed.
    ///
    /// Why: LMDB copies every page a transaction touches and frees the old ones only at its
    /// commit, so rewriting records spread over N pages needs N free pages at once. A batch
    /// that rewrites more than the store's free room can never commit whole, and a caller that
    /// queues it again with its next writes (as the Manager does) would wedge the store. In
    /// parts, each part needs only its own pages, and the pages the earlier parts freed are
    /// reused. When even one operation does not fit, the batch fails with the parts before it
    /// committed: a caller that writes records (puts of whole values) and writes them again
    /// after a failure loses nothing.
    pub fn divisible(mut self) -> Self {
        self.divisible = true;
        self
    }

    /// Bytes of the keys and values the batch puts.
    fn bytes(&self) -> u64 {
        self.ops.iter().map(Op::bytes).sum()
    }
}

/// Counters shared by the writer and every `Store` clone.
#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    batches: AtomicU64,
    /// What the writer last measured ([`Usage`]), and the bytes queued for it.
    in_use: AtomicU64,
    queued: AtomicU64,
    file_size: AtomicU64,
    disk_free: AtomicU64,
    /// Time the writer spent measuring, and how many times it did.
    measure_nanos: AtomicU64,
    measures: AtomicU64,
    /// The group commits' sizes and durations, as `GET /metrics` shows them.
    metrics: crate::metrics::StoreMetrics,
}

/// What the readers and the writer share: the environment and its tables.
struct Shared {
    env: Env<WithoutTls>,
    tables: HashMap<&'static str, Db>,
    /// The unnamed database that holds the tables' records: measured with them.
    main: Db,
    path: PathBuf,
    /// `path` for `statvfs`.
    c_path: Option<CString>,
    stats: Stats,
    /// Declared after `env`, so the environment is closed before the directory is let go.
    _lock: lock::DirLock,
}

/// One queued batch and where to send its outcome.
type Job = (Batch, oneshot::Sender<Result<(), StoreError>>);

/// Owns the writer thread: dropped when the last `Store` clone is.
struct Inner {
    shared: Arc<Shared>,
    /// `Option` so `Drop` can close the queue before joining the writer. `mpsc::Sender` is
    /// `Sync` (std's channel is the crossbeam implementation since Rust 1.67), so no extra
    /// dependency is needed for a multi-producer queue shared by all clones.
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is already queued and return. Joining
        // it here means that once the last Store is dropped, the environment is closed and the
        // same directory can be opened again in this process (LMDB allows one Env per path).
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            log::error!("the store writer thread panicked");
        }
    }
}

/// Handle to the store. Cheap to clone; all clones share one environment and one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

/// Lets `create_databases_and_commit` hand back any number of tables, not a fixed tuple,
/// and the unnamed database.
struct NewTables<'e> {
    tables: Vec<(&'static str, Database<'e, Bytes, Bytes>)>,
    main: Database<'e, Bytes, Bytes>,
}

impl OnCommit for NewTables<'_> {
    type Committed = (Vec<(&'static str, Db)>, Db);

    fn on_commit(self, token: &CommitToken) -> Self::Committed {
        let tables = self
            .tables
            .into_iter()
            .map(|(name, db)| (name, db.on_commit(token)))
            .collect();
        (tables, self.main.on_commit(token))
    }
}

impl Store {
    /// Creates `dir` when missing; opens/creates an env with the given table names
    /// (max_dbs = tables.len()), with a map of [`DEFAULT_MAP_SIZE`].
    pub fn open(dir: &Path, tables: &[&'static str]) -> Result<Store, StoreError> {
        Self::open_with_map_size(dir, tables, DEFAULT_MAP_SIZE)
    }

    /// Like [`Store::open`] with an explicit map size, rounded up to a multiple of 64 KiB
    /// (the smallest accepted value). LMDB grows the map on its own if the existing data
    /// needs more.
    pub fn open_with_map_size(
        dir: &Path,
        tables: &[&'static str],
        map_size: usize,
    ) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.to_owned(),
            reason,
        };

        let mut names: Vec<&'static str> = Vec::with_capacity(tables.len());
        for &name in tables {
            // heed panics on a NUL in a database name; LMDB refuses an empty one.
            if name.is_empty() || name.contains('\0') {
                return Err(open_err(format!("invalid table name {name:?}")));
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }

        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;

        let map_size = map_size
            .max(MAP_SIZE_GRANULE)
            .div_ceil(MAP_SIZE_GRANULE)
            .saturating_mul(MAP_SIZE_GRANULE);
        let max_dbs = u32::try_from(names.len())
            .map_err(|_| open_err(format!("too many tables ({})", names.len())))?;

        // One process per directory: two managers on one store would place and stop the same
        // tasks. LMDB's own lock file lets several processes share an environment; this does not.
        let dir_lock = lock::DirLock::acquire(dir).map_err(open_err)?;

        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(max_dbs);
        // SAFETY: LMDB memory-maps the data file; the map stays valid as long as nothing else
        // truncates or rewrites the file behind LMDB's back. Cube only touches it through this
        // one Env (heed refuses a second Env on the same path in this process, and other
        // processes coordinate through LMDB's lock file), and we set no unsafe flags
        // (no NO_LOCK, no NO_SYNC).
        let env =
            unsafe { options.open(dir) }.map_err(|e| open_err(explain_open_error(dir, &e)))?;

        let wtxn = env
            .write_txn()
            .map_err(|e| open_err(explain_open_error(dir, &e)))?;
        let created = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let mut tables = Vec::with_capacity(names.len());
                for &name in &names {
                    tables.push((name, opener.create_database(wtxn, Some(name))?));
                }
                let main = opener.create_database(wtxn, None)?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit(
                    NewTables { tables, main },
                ))
            })
            .map_err(|e| {
                open_err(format!(
                    "cannot create the tables: {}",
                    explain_open_error(dir, &e)
                ))
            })?;
        let (tables, main) = match created {
            CommitOrAbort::Commit((tables, main)) => (tables.into_iter().collect(), main),
            CommitOrAbort::Abort(never) => match never {},
        };

        let path = env.path().to_owned();
        let shared = Arc::new(Shared {
            c_path: CString::new(path.as_os_str().as_bytes()).ok(),
            path,
            env,
            tables,
            main,
            stats: Stats::default(),
            _lock: dir_lock,
        });
        shared.measure();

        let (queue, jobs) = mpsc::channel::<Job>();
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name(WRITER_THREAD_NAME.to_owned())
            .spawn(move || run_writer(&writer_shared, &jobs))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;

        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                queue: Some(queue),
                writer: Some(writer),
            }),
        })
    }

    /// Group commit: queue the batch for the writer thread; resolves once the transaction
    /// holding it is committed (fsync'd) to disk.
    ///
    /// The batch is queued before this returns, so batches commit in call order, and dropping
    /// the future does not cancel the write (it only forgoes the acknowledgement). The future
    /// is `'static + Send` and does not borrow `self`.
    pub fn commit(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let queued = self.enqueue(batch);
        async move {
            // A dropped reply sender means the writer died before answering.
            queued?.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    fn enqueue(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        // Reject unknown tables here, on the caller's thread, rather than in the writer.
        if let Some(op) = batch
            .ops
            .iter()
            .find(|op| !self.inner.shared.tables.contains_key(op.table()))
        {
            return Err(StoreError::UnknownTable(op.table().to_owned()));
        }
        let queue = self.inner.queue.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let bytes = batch.bytes();
        let queued = &self.inner.shared.stats.queued;
        queued.fetch_add(bytes, Ordering::Relaxed);
        queue.send((batch, reply)).map_err(|_| {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            StoreError::Closed
        })?;
        Ok(answer)
    }

    /// The value stored at `key`, if any.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let shared = &self.inner.shared;
        let db = shared.table(table)?;
        let rtxn = shared.env.read_txn()?;
        Ok(db.get(&rtxn, key)?.map(<[u8]>::to_vec))
    }

    /// Every row of the table, in key order (bytewise).
    pub fn scan(&self, table: &str) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.scan_with(table, |key, value| {
            rows.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        Ok(rows)
    }

    /// Hand every row of `table`, in key order, to `each` straight from the map, without
    /// copying it; the first error ends the scan.
    pub fn scan_with(
        &self,
        table: &str,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        let db = shared.table(table)?;
        let rtxn = shared.env.read_txn()?;
        for row in db.iter(&rtxn)? {
            let (key, value) = row?;
            each(key, value)?;
        }
        Ok(())
    }

    /// Number of rows in the table.
    pub fn len(&self, table: &str) -> Result<u64, StoreError> {
        let shared = &self.inner.shared;
        let db = shared.table(table)?;
        let rtxn = shared.env.read_txn()?;
        Ok(db.len(&rtxn)?)
    }

    /// The (canonical) directory holding the store.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Write a consistent, compacted copy of the whole store to `file` (a new file): LMDB copies
    /// from one read transaction, so writers go on meanwhile and the copy is what was committed
    /// when it began. Blocking: call it off any async thread. The copy is a complete LMDB data
    /// file (`data.mdb`) that [`Store::open`] opens once it is put in a directory of its own.
    pub fn snapshot(&self, file: &Path) -> Result<u64, StoreError> {
        let failed = |reason: String| StoreError::Open {
            path: file.to_owned(),
            reason,
        };
        let copy = self
            .inner
            .shared
            .env
            .copy_to_path(file, CompactionOption::Enabled)
            .map_err(|e| failed(format!("cannot write the snapshot: {e}")))?;
        copy.sync_all()
            .map_err(|e| failed(format!("cannot sync the snapshot: {e}")))?;
        copy.metadata()
            .map(|m| m.len())
            .map_err(|e| failed(e.to_string()))
    }

    /// Transactions the writer has committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.inner.shared.stats.commits.load(Ordering::Relaxed)
    }

    /// Batches committed and acknowledged since the store was opened (`batches / commits`
    /// is the average group size).
    pub fn batches_committed(&self) -> u64 {
        self.inner.shared.stats.batches.load(Ordering::Relaxed)
    }

    /// Current size of the memory map in bytes.
    pub fn map_size(&self) -> usize {
        self.inner.shared.env.info().map_size
    }

    /// How full the store is, as the writer measured it after its last commit (free to call:
    /// it reads counters).
    pub fn usage(&self) -> Usage {
        self.inner.shared.usage()
    }

    /// True while new data may be accepted ([`Usage::has_room`]).
    pub fn has_room(&self) -> bool {
        self.usage().has_room()
    }

    /// `Ok` while new data may be accepted, else [`StoreError::NoRoom`] with the numbers. Ask
    /// it before accepting anything that adds data (a submission, a new attempt); never before
    /// what keeps existing work moving (stops, status updates, deletions).
    pub fn check_room(&self) -> Result<(), StoreError> {
        let usage = self.usage();
        if usage.has_room() {
            Ok(())
        } else {
            Err(StoreError::NoRoom {
                path: self.inner.shared.path.clone(),
                usage,
            })
        }
    }

    /// Average time the writer took to measure the bytes in use after a commit, and how many
    /// times it did.
    pub fn measure_cost(&self) -> (std::time::Duration, u64) {
        let stats = &self.inner.shared.stats;
        let n = stats.measures.load(Ordering::Relaxed);
        let nanos = stats.measure_nanos.load(Ordering::Relaxed);
        (
            std::time::Duration::from_nanos(nanos.checked_div(n).unwrap_or(0)),
            n,
        )
    }

    /// The histograms of the writer's transactions: batches per transaction and the time
    /// each took to commit (its fsync included). Shared: they go on counting.
    pub fn metrics(&self) -> crate::metrics::StoreMetrics {
        self.inner.shared.stats.metrics.clone()
    }
}

impl Shared {
    fn table(&self, name: &str) -> Result<Db, StoreError> {
        self.tables
            .get(name)
            .copied()
            .ok_or_else(|| StoreError::UnknownTable(name.to_owned()))
    }

    fn full(&self) -> StoreError {
        StoreError::Full {
            path: self.path.clone(),
            map_size: self.env.info().map_size,
            in_use: self.stats.in_use.load(Ordering::Relaxed),
        }
    }

    fn usage(&self) -> Usage {
        let stats = &self.stats;
        Usage {
            in_use: stats.in_use.load(Ordering::Relaxed),
            queued: stats.queued.load(Ordering::Relaxed),
            map_size: self.env.info().map_size as u64,
            file_size: stats.file_size.load(Ordering::Relaxed),
            disk_free: stats.disk_free.load(Ordering::Relaxed),
        }
    }

    /// Measure the bytes in use, the file's size and the disk's free space into the stats.
    /// Cheap: one read transaction, one `mdb_stat` per table (each reads the table's header),
    /// `mdb_env_info` and one `statvfs`; `Store::measure_cost` says how cheap.
    fn measure(&self) {
        let started = std::time::Instant::now();
        match self.pages_in_use() {
            Ok((pages, page_size)) => {
                let in_use = pages.saturating_mul(page_size);
                self.stats.in_use.store(in_use, Ordering::Relaxed);
                let info = self.env.info();
                let file = (info.last_page_number as u64 + 1).saturating_mul(page_size);
                self.stats.file_size.store(file, Ordering::Relaxed);
            }
            // Keep the last measure: the next commit measures again.
            Err(e) => log::warn!("cannot measure the store at {}: {e}", self.path.display()),
        }
        let disk_free = self
            .c_path
            .as_deref()
            .and_then(disk_free)
            .unwrap_or(u64::MAX);
        self.stats.disk_free.store(disk_free, Ordering::Relaxed);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.measure_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.stats.measures.fetch_add(1, Ordering::Relaxed);
    }

    /// Pages of every table, the table of tables and the two meta pages; and the page size.
    fn pages_in_use(&self) -> Result<(u64, u64), heed::Error> {
        let rtxn = self.env.read_txn()?;
        let mut pages = 2;
        let mut page_size = 0;
        for db in self.tables.values().chain(std::iter::once(&self.main)) {
            let stat = db.stat(&rtxn)?;
            page_size = u64::from(stat.page_size);
            pages += (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64;
        }
        Ok((pages, page_size))
    }
}

/// Free bytes of the file system holding `path` for an unprivileged writer, if it can be read.
fn disk_free(path: &std::ffi::CStr) -> Option<u64> {
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `buf` is a valid place for one `statvfs`,
    // which is read only when the call succeeds (it then filled it).
    let rc = unsafe { libc::statvfs(path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so it initialised `buf`.
    let buf = unsafe { buf.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let (avail, frsize) = (u64::from(buf.f_bavail), u64::from(buf.f_frsize));
    Some(avail.saturating_mul(frsize))
}

/// Body of the writer thread: returns when every `Store` clone is gone and the queue is drained.
fn run_writer(shared: &Shared, jobs: &mpsc::Receiver<Job>) {
    // `recv` keeps returning queued jobs after the last sender is dropped, so nothing queued
    // is lost at shutdown.
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        // Everything that queued up during the previous commit rides in this one.
        while group.len() < MAX_BATCHES_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        write_group(shared, group);
    }
    log::debug!("store writer for {} stopped", shared.path.display());
}

/// Commits a group of batches in one transaction, then answers every caller. On failure,
/// retries each batch alone so the error reaches only the batch that caused it. Then measures
/// what is in use, before the callers learn of it: an answer never outruns the measure.
fn write_group(shared: &Shared, jobs: Vec<Job>) {
    let bytes: u64 = jobs.iter().map(|(batch, _)| batch.bytes()).sum();
    let replies = commit_group(shared, jobs);
    shared.measure();
    // Saturating: a group handed to this function directly (the tests) was never queued.
    let _ = shared
        .stats
        .queued
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
            Some(q.saturating_sub(bytes))
        });
    for (reply, outcome) in replies {
        // The caller may have dropped its future; the write stands regardless.
        let _ = reply.send(outcome);
    }
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// The work of [`write_group`]: each caller's outcome, not yet sent.
fn commit_group(shared: &Shared, jobs: Vec<Job>) -> Vec<(Reply, Result<(), StoreError>)> {
    match apply_and_commit(shared, jobs.iter().map(|(batch, _)| batch.ops.as_slice())) {
        Ok(()) => {
            shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .metrics
                .commit_batch_size
                .observe(jobs.len() as f64);
            shared
                .stats
                .batches
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            jobs.into_iter().map(|(_, reply)| (reply, Ok(()))).collect()
        }
        // A lone batch already ran in its own transaction: its error is its own (or, when it
        // did not fit and may be divided, its halves get a chance).
        Err(error) if jobs.len() == 1 => {
            let mut replies = Vec::with_capacity(1);
            if let Some((batch, reply)) = jobs.into_iter().next() {
                let outcome = match error {
                    StoreError::Full { .. } if batch.divisible && batch.ops.len() > 1 => {
                        commit_halves(shared, &batch.ops)
                    }
                    error => Err(error),
                };
                if outcome.is_ok() {
                    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                }
                replies.push((reply, outcome));
            }
            replies
        }
        Err(error) => {
            log::warn!(
                "a group commit of {} batches failed ({error}); retrying each batch alone",
                jobs.len()
            );
            jobs.into_iter()
                .map(|(batch, reply)| {
                    let outcome = if batch.divisible {
                        commit_in_parts(shared, &batch.ops)
                    } else {
                        commit_ops(shared, &batch.ops)
                    };
                    if outcome.is_ok() {
                        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    (reply, outcome)
                })
                .collect()
        }
    }
}

/// Commits `ops` in a transaction of their own.
fn commit_ops(shared: &Shared, ops: &[Op]) -> Result<(), StoreError> {
    apply_and_commit(shared, std::iter::once(ops))?;
    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Commits `ops` in one transaction, or when they do not fit (and there are several), in
/// halves, in order, each the same way ([`Batch::divisible`]).
fn commit_in_parts(shared: &Shared, ops: &[Op]) -> Result<(), StoreError> {
    match commit_ops(shared, ops) {
        Err(StoreError::Full { .. }) if ops.len() > 1 => commit_halves(shared, ops),
        outcome => outcome,
    }
}

fn commit_halves(shared: &Shared, ops: &[Op]) -> Result<(), StoreError> {
    let (first, second) = ops.split_at(ops.len() / 2);
    log::debug!(
        "{} writes do not fit in the store at {} at once: committing them in parts",
        ops.len(),
        shared.path.display()
    );
    commit_in_parts(shared, first)?;
    commit_in_parts(shared, second)
}

/// Applies the operations in one write transaction and commits it; aborts it on any error.
fn apply_and_commit<'b>(
    shared: &Shared,
    batches: impl Iterator<Item = &'b [Op]>,
) -> Result<(), StoreError> {
    let mut wtxn = shared
        .env
        .write_txn()
        .map_err(|e| map_txn_error(shared, e))?;
    for ops in batches {
        for op in ops {
            let db = shared.table(op.table())?;
            let (table, key, outcome) = match op {
                Op::Put { table, key, value } => (table, key, db.put(&mut wtxn, key, value)),
                Op::Delete { table, key } => (table, key, db.delete(&mut wtxn, key).map(drop)),
            };
            // Returning drops `wtxn`, which aborts it: nothing of this group is written.
            outcome.map_err(|source| match source {
                heed::Error::Mdb(MdbError::MapFull) => shared.full(),
                source => StoreError::Write {
                    table: (*table).to_owned(),
                    key: display_key(key),
                    source,
                },
            })?;
        }
    }
    let started = std::time::Instant::now();
    let committed = wtxn.commit().map_err(|e| map_txn_error(shared, e));
    shared
        .stats
        .metrics
        .fsync_seconds
        .observe_duration(started.elapsed());
    committed
}

fn map_txn_error(shared: &Shared, error: heed::Error) -> StoreError {
    match error {
        heed::Error::Mdb(MdbError::MapFull) => shared.full(),
        heed::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull {
            path: shared.path.clone(),
            source: io,
        },
        error => StoreError::Lmdb(error),
    }
}

/// `ENOSPC` (no space left on the device) or `EDQUOT` (the owner's quota is spent): LMDB
/// reports a failed write of its pages as the errno, which heed turns into an `io::Error`.
fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Turns an error from opening the environment into a sentence that says what to do.
fn explain_open_error(dir: &Path, error: &heed::Error) -> String {
    let data = dir.join("data.mdb");
    match error {
        heed::Error::Mdb(MdbError::Invalid | MdbError::Corrupted | MdbError::PageNotFound) => {
            format!(
                "{} is not an LMDB file or is damaged ({error}); move the directory aside and \
                 restore it from a backup, or point Cube at an empty directory to start afresh",
                data.display()
            )
        }
        heed::Error::Mdb(MdbError::VersionMismatch) => format!(
            "{} was written by an incompatible LMDB version ({error}); open it with the Cube \
             release that wrote it and export the data",
            data.display()
        ),
        heed::Error::Mdb(MdbError::Panic) => format!(
            "LMDB hit a fatal error ({error}); the environment must be reopened, and if this \
             persists {} may be damaged",
            data.display()
        ),
        heed::Error::EnvAlreadyOpened => format!(
            "it is already open in this process ({error}); clone the existing Store instead \
             of opening it again"
        ),
        heed::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("permission denied ({io}); check the owner and mode of the directory")
        }
        error => error.to_string(),
    }
}

/// Keys are usually UTF-8 ids; show them as such, escaping anything else, and cut long ones.
pub(crate) fn display_key(key: &[u8]) -> String {
    let shown = &key[..key.len().min(KEY_DISPLAY_LIMIT)];
    let mut text = format!("{:?}", String::from_utf8_lossy(shown));
    if key.len() > KEY_DISPLAY_LIMIT {
        text.push_str(&format!("… ({} bytes)", key.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: &str = "things";
    const U: &str = "others";

    fn open(dir: &Path) -> Store {
        match Store::open(dir, &[T, U]) {
            Ok(store) => store,
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }

    /// Wait for a future on this thread: the tests have no runtime of their own.
    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn commit(store: &Store, batch: Batch) -> Result<(), StoreError> {
        block_on(store.commit(batch))
    }

    fn put(store: &Store, table: &'static str, key: &str, value: &str) {
        let mut batch = Batch::new();
        batch.put(table, key, value.as_bytes().to_vec());
        commit(store, batch).unwrap();
    }

    /// Builds a job for `write_group` and the receiver of its outcome.
    fn job(batch: Batch) -> (Job, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, answer) = oneshot::channel();
        ((batch, reply), answer)
    }

    fn rows(store: &Store, table: &str) -> Vec<(String, String)> {
        store
            .scan(table)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn store_and_commit_future_are_send_sync_static() {
        fn send_sync_clone<S: Send + Sync + Clone + 'static>() {}
        fn send_sync<S: Send + Sync + 'static>() {}
        fn send_static<F: Future + Send + 'static>(_: &F) {}
        send_sync_clone::<Store>();
        send_sync::<StoreError>();
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let future = store.commit(Batch::new());
        drop(store); // the future does not borrow the store
        send_static(&future);
        block_on(future).unwrap();
    }

    #[test]
    fn put_get_delete_and_scan_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());

        let mut batch = Batch::new();
        for key in ["b", "c", "a", "ab"] {
            batch.put(T, key, format!("v-{key}").into_bytes());
        }
        batch.put(U, "a", b"other table".to_vec());
        assert_eq!(batch.len(), 5);
        commit(&store, batch).unwrap();

        assert_eq!(store.get(T, b"a").unwrap().as_deref(), Some(&b"v-a"[..]));
        assert_eq!(store.get(T, b"zz").unwrap(), None);
        assert_eq!(
            rows(&store, T),
            [("a", "v-a"), ("ab", "v-ab"), ("b", "v-b"), ("c", "v-c")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(store.len(T).unwrap(), 4);
        assert_eq!(store.len(U).unwrap(), 1);

        // Overwrite, delete, and delete of a missing key, in one batch; ops apply in order.
        let mut batch = Batch::new();
        batch.put(T, "a", b"new".to_vec());
        batch.delete(T, "b");
        batch.delete(T, "missing");
        batch.put(T, "d", b"gone".to_vec());
        batch.delete(T, "d");
        commit(&store, batch).unwrap();
        assert_eq!(
            rows(&store, T),
            [("a", "new"), ("ab", "v-ab"), ("c", "v-c")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(store.len(T).unwrap(), 3);
        assert!(store.scan(U).unwrap().len() == 1);
    }

    #[test]
    fn reopen_keeps_everything_once_the_writer_thread_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let clone = store.clone();
        put(&store, T, "kept", "yes");
        put(&clone, U, "also", "kept");

        // Opening the same directory twice in one process is refused, with a hint.
        let err = Store::open(dir.path(), &[T, U]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Open { reason, .. } if reason.contains("clone the existing Store")),
            "{err}"
        );

        let closed = heed::env_closing_event(store.path()).unwrap();
        drop(store);
        assert!(
            !closed.wait_timeout(Duration::from_millis(50)),
            "a clone is still alive"
        );
        drop(clone);
        // Dropping the last clone joins the writer, which held the last other Env handle:
        // the environment is closed by the time `drop` returns.
        assert!(closed.wait_timeout(Duration::ZERO));

        let store = open(dir.path());
        assert_eq!(store.get(T, b"kept").unwrap().as_deref(), Some(&b"yes"[..]));
        assert_eq!(
            store.get(U, b"also").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(store.commits(), 0, "a fresh writer");
    }

    #[test]
    fn batches_queued_before_the_last_drop_are_still_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let pending: Vec<_> = (0..50)
            .map(|i| {
                let mut batch = Batch::new();
                batch.put(T, format!("k{i:02}"), vec![1]);
                store.commit(batch)
            })
            .collect();
        drop(store);
        for future in pending {
            block_on(future).unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.len(T).unwrap(), 50);
    }

    #[test]
    fn many_concurrent_commits_are_all_acknowledged_present_and_grouped() {
        const THREADS: usize = 8;
        const PER_THREAD: usize = 25;
        const TASKS: usize = 800;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let commits_before = store.commits();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = store.clone();
                runtime.spawn(async move {
                    let mut batch = Batch::new();
                    batch.put(T, format!("task-{i:04}"), i.to_string().into_bytes());
                    store.commit(batch).await
                })
            })
            .collect();
        thread::scope(|scope| {
            for t in 0..THREADS {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut batch = Batch::new();
                        batch.put(T, format!("thread-{t}-{i:02}"), vec![t as u8]);
                        commit(store, batch).unwrap();
                    }
                });
            }
        });
        runtime.block_on(async {
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        });

        let batches = (TASKS + THREADS * PER_THREAD) as u64;
        assert_eq!(store.len(T).unwrap(), batches);
        assert_eq!(
            store.get(T, b"task-0799").unwrap().as_deref(),
            Some(&b"799"[..])
        );
        let commits = store.commits() - commits_before;
        eprintln!("{batches} batches in {commits} commits");
        assert!(
            commits < batches,
            "{batches} batches took {commits} commits: no grouping"
        );
        assert_eq!(store.batches_committed(), batches);
    }

    #[test]
    fn a_tiny_map_filling_up_gives_full_and_the_store_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        // Asking for 1 byte gets the smallest map accepted: 64 KiB.
        let store = Store::open_with_map_size(dir.path(), &[T], 1).unwrap();
        assert_eq!(store.map_size(), 64 << 10);

        let mut written = 0;
        let full = loop {
            assert!(written < 1000, "64 KiB never filled up");
            let mut batch = Batch::new();
            batch.put(T, format!("row-{written:04}"), vec![7; 1000]);
            match commit(&store, batch) {
                Ok(()) => written += 1,
                Err(err) => break err,
            }
        };
        assert!(written > 0, "nothing fit");
        assert!(
            matches!(&full, StoreError::Full { map_size, .. } if *map_size == 64 << 10),
            "{full:?}"
        );
        assert!(full.is_full());
        let message = full.to_string();
        assert!(
            message.contains("is full (map size 65536 bytes, ")
                && message.contains("in use)")
                && message.contains("larger map size"),
            "{message}"
        );

        // Reads still work and see everything acknowledged, and nothing of the failed batch.
        assert_eq!(store.len(T).unwrap(), written);
        assert_eq!(store.scan(T).unwrap().len() as u64, written);
        assert_eq!(store.get(T, b"row-0000").unwrap(), Some(vec![7; 1000]));
        let failed = format!("row-{written:04}");
        assert_eq!(store.get(T, failed.as_bytes()).unwrap(), None);

        // The writer survived the failure and still answers.
        commit(&store, Batch::new()).unwrap();
        assert_eq!(store.len(T).unwrap(), written);

        // What the error message advises works: reopening with a larger map makes room.
        drop(store);
        let store = Store::open_with_map_size(dir.path(), &[T], 1 << 20).unwrap();
        assert_eq!(store.len(T).unwrap(), written);
        put(&store, T, "after", "full");
        assert_eq!(
            store.get(T, b"after").unwrap().as_deref(),
            Some(&b"full"[..])
        );
    }

    /// Puts `n` rows of `size` bytes, `per_batch` rows a commit, keys `prefix-0000…`.
    fn fill(store: &Store, prefix: &str, n: usize, size: usize, per_batch: usize) {
        for chunk in (0..n).collect::<Vec<_>>().chunks(per_batch) {
            let mut batch = Batch::new();
            for i in chunk {
                batch.put(T, format!("{prefix}-{i:05}"), vec![1; size]);
            }
            commit(store, batch).unwrap();
        }
    }

    #[test]
    fn in_use_counts_the_pages_holding_data_and_goes_down_after_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_map_size(dir.path(), &[T, U], 16 << 20).unwrap();
        let empty = store.usage();
        assert_eq!(empty.map_size, 16 << 20);
        assert_eq!(empty.queued, 0);
        // Meta pages, the table of tables: a few pages, no more.
        assert!(empty.in_use > 0 && empty.in_use <= 8 * 4096, "{empty:?}");
        assert!(empty.has_room());

        // 2000 rows of 1000 bytes: at least 2 MB of leaves, and not much more.
        fill(&store, "row", 2000, 1000, 100);
        let full = store.usage();
        assert!(
            full.in_use >= 2_000_000 && full.in_use <= 3_000_000,
            "{full:?}"
        );
        assert!(full.file_size >= full.in_use, "{full:?}");
        assert_eq!(full.queued, 0, "every batch is committed");

        // Deleting them frees their pages: in use goes down, the file stays as large (LMDB
        // reuses the pages, it does not shrink the file).
        let mut batch = Batch::new();
        for i in 0..2000 {
            batch.delete(T, format!("row-{i:05}"));
        }
        commit(&store, batch).unwrap();
        let emptied = store.usage();
        assert!(emptied.in_use <= empty.in_use + 4096, "{emptied:?}");
        assert!(emptied.file_size >= full.in_use, "{emptied:?}");

        // Writing as much again reuses the freed pages: the file barely grows.
        fill(&store, "row", 2000, 1000, 100);
        let again = store.usage();
        assert!(
            again.file_size <= emptied.file_size + emptied.file_size / 4,
            "{emptied:?} then {again:?}"
        );

        let (cost, measures) = store.measure_cost();
        eprintln!("measuring in use: {cost:?} on average over {measures} commits");
        assert!(measures >= 41, "measured after every commit: {measures}");
    }

    #[test]
    fn new_data_is_refused_near_the_limit_stops_still_commit_and_room_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        // 2 MiB: the reserve is 1 MiB (1/16 would be less than the 1 MiB floor).
        let store = Store::open_with_map_size(dir.path(), &[T], 2 << 20).unwrap();
        assert_eq!(store.usage().reserve(), 1 << 20);

        // Accept rows while the store says there is room, as the manager accepts submissions.
        let mut accepted = 0;
        while store.check_room().is_ok() {
            assert!(accepted < 10_000, "2 MiB never filled up");
            fill(&store, &format!("t{accepted:05}"), 1, 600, 1);
            accepted += 1;
        }
        let usage = store.usage();
        assert!(accepted > 500, "only {accepted} rows fit in the first MiB");
        assert!(!usage.has_room());
        assert!(
            usage.in_use + usage.reserve() > usage.capacity(),
            "{usage:?}"
        );
        assert!(usage.in_use < usage.capacity(), "{usage:?}");
        let Err(refused) = store.check_room() else {
            panic!("room after all");
        };
        assert!(refused.is_full());
        let message = refused.to_string();
        assert!(
            message.contains(&store.path().display().to_string())
                && message.contains("has no room for new data")
                && message.contains("2 MiB")
                && message.contains("kept for stops"),
            "{message}"
        );

        // What keeps work moving still commits, into the reserve: every row rewritten a
        // little larger (as a stop rewrites a task record), one at a time and in one group.
        for i in 0..accepted {
            let mut batch = Batch::new();
            batch.put(T, format!("t{i:05}-00000"), vec![2; 650]);
            commit(&store, batch).unwrap();
        }
        // A burst of them, queued at once as concurrent stops are: the writer groups them, and
        // if a group does not fit it commits each alone.
        let burst: Vec<_> = (0..accepted)
            .map(|i| {
                let mut batch = Batch::new();
                batch.put(T, format!("t{i:05}-00000"), vec![3; 660]);
                store.commit(batch)
            })
            .collect();
        for stop in burst {
            block_on(stop).unwrap();
        }
        // One batch that rewrites every row touches every page at once: whole, it cannot fit
        // (LMDB keeps the old pages until it commits), and it fails leaving nothing behind...
        let rewrite_all = |fill: u8| {
            let mut batch = Batch::new();
            for i in 0..accepted {
                batch.put(T, format!("t{i:05}-00000"), vec![fill; 670]);
            }
            batch
        };
        let err = commit(&store, rewrite_all(4)).unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
        assert_eq!(store.get(T, b"t00000-00000").unwrap(), Some(vec![3; 660]));
        // ...but divisible, it is committed in parts.
        commit(&store, rewrite_all(5).divisible()).unwrap();
        assert!(
            store
                .scan(T)
                .unwrap()
                .iter()
                .all(|(_, v)| *v == vec![5; 670])
        );
        assert!(!store.has_room());

        // A delete of one row in three frees no page (LMDB merges a page only once it is
        // nearly empty), and copies every page it touches, so as one batch it cannot fit:
        // divisible, it goes through in parts.
        let mut batch = Batch::new();
        for i in (0..accepted).step_by(3) {
            batch.delete(T, format!("t{i:05}-00000"));
        }
        commit(&store, batch.divisible()).unwrap();
        assert!(!store.has_room(), "{:?}", store.usage());
        // Deleting the oldest half (as retention collects the oldest finished tasks, whose
        // keys are the smallest) empties their pages: the room comes back, with no reopening.
        let mut batch = Batch::new();
        for i in 0..accepted / 2 {
            batch.delete(T, format!("t{i:05}-00000"));
        }
        commit(&store, batch.divisible()).unwrap();
        let after = store.usage();
        assert!(after.in_use < usage.in_use, "{usage:?} then {after:?}");
        assert!(store.check_room().is_ok(), "{after:?}");
    }

    #[test]
    fn the_reserve_is_a_sixteenth_at_least_1_mib_at_most_half() {
        assert_eq!(reserve_for(64 << 30), 4 << 30);
        assert_eq!(reserve_for(64 << 20), 4 << 20);
        assert_eq!(reserve_for(16 << 20), 1 << 20);
        assert_eq!(reserve_for(2 << 20), 1 << 20);
        assert_eq!(reserve_for(1 << 20), 512 << 10);
        assert_eq!(reserve_for(0), 0);
        for (n, text) in [
            (0, "0 B"),
            (512, "512 B"),
            (64 << 10, "64 KiB"),
            (1536 << 10, "1.5 MiB"),
            (64 << 30, "64 GiB"),
            // Past the largest unit, the number just grows.
            (u64::MAX, "16384 PiB"),
        ] {
            assert_eq!(human_bytes(n), text);
        }
    }

    #[test]
    fn a_disk_that_cannot_grow_the_file_bounds_the_room() {
        let usage = Usage {
            in_use: 99 << 20,
            queued: 0,
            map_size: 64 << 30,
            file_size: 100 << 20,
            disk_free: 5 << 20,
        };
        // The disk, not the map, bounds it: 105 MiB, whose last 6.6 MiB are the reserve.
        assert_eq!(usage.capacity(), 105 << 20);
        assert_eq!(usage.reserve(), (105 << 20) / 16);
        assert!(usage.disk_bound());
        assert!(!usage.has_room());
        let text = usage.to_string();
        assert!(
            text.contains("99 MiB in use") && text.contains("only 5 MiB free"),
            "{text}"
        );
        let freed = Usage {
            disk_free: 50 << 20,
            ..usage
        };
        assert!(freed.has_room(), "freeing disk space makes room");
        let queued = Usage {
            queued: 45 << 20,
            ..freed
        };
        assert!(!queued.has_room(), "queued batches count");
    }

    #[test]
    fn a_full_disk_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for io in [
            std::io::Error::from_raw_os_error(libc::ENOSPC),
            std::io::Error::from_raw_os_error(libc::EDQUOT),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ] {
            let err = map_txn_error(&store.inner.shared, heed::Error::Io(io));
            assert!(
                matches!(&err, StoreError::DiskFull { path, .. } if path == store.path()),
                "{err:?}"
            );
            assert!(err.is_full());
            assert!(
                err.to_string().contains("the disk holding the store at"),
                "{err}"
            );
        }
        let other = map_txn_error(
            &store.inner.shared,
            heed::Error::Io(std::io::Error::from_raw_os_error(libc::EIO)),
        );
        assert!(matches!(other, StoreError::Lmdb(_)), "{other:?}");
        assert!(!other.is_full());
    }

    #[test]
    fn a_failing_batch_in_a_group_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_map_size(dir.path(), &[T], 64 << 10).unwrap();
        let shared = &store.inner.shared;

        let mut good1 = Batch::new();
        good1.put(T, "good1", b"1".to_vec());
        let mut too_big = Batch::new();
        too_big.put(T, "big-neighbour", b"x".to_vec());
        too_big.put(T, "big", vec![0; 1 << 20]);
        let mut empty_key = Batch::new();
        empty_key.put(T, "", b"LMDB refuses empty keys".to_vec());
        let mut good2 = Batch::new();
        good2.put(T, "good2", b"2".to_vec());

        let (jobs, mut answers): (Vec<_>, Vec<_>) = [good1, too_big, empty_key, good2]
            .into_iter()
            .map(job)
            .unzip();
        // Deterministic stand-in for four callers whose batches landed in one group.
        write_group(shared, jobs);

        let outcomes: Vec<_> = answers.iter_mut().map(|a| a.try_recv().unwrap()).collect();
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        assert!(
            matches!(outcomes[1], Err(StoreError::Full { .. })),
            "{:?}",
            outcomes[1]
        );
        assert!(
            matches!(&outcomes[2], Err(StoreError::Write { table, .. }) if table == T),
            "{:?}",
            outcomes[2]
        );
        assert!(outcomes[3].is_ok(), "{:?}", outcomes[3]);

        // Each good batch was committed on its own after the group failed; the failing batch
        // left nothing behind (not even its first, valid, put).
        assert_eq!(store.commits(), 2);
        assert_eq!(
            rows(&store, T),
            [("good1", "1"), ("good2", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn a_garbage_data_file_gives_a_clear_open_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("data.mdb"),
            b"this is not an LMDB file ".repeat(1000),
        )
        .unwrap();
        let err = Store::open(dir.path(), &[T]).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            message.contains("data.mdb is not an LMDB file or is damaged")
                && message.contains("restore it from a backup"),
            "{message}"
        );
    }

    #[test]
    fn unknown_table_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut batch = Batch::new();
        batch.put(T, "fine", vec![1]);
        batch.put("nope", "k", vec![1]);
        let err = commit(&store, batch).unwrap_err();
        assert!(
            matches!(&err, StoreError::UnknownTable(t) if t == "nope"),
            "{err:?}"
        );
        assert!(err.to_string().contains("not declared"));
        // The batch is all-or-nothing: its valid put was not written either.
        assert_eq!(store.len(T).unwrap(), 0);

        assert!(matches!(
            store.get("nope", b"k"),
            Err(StoreError::UnknownTable(_))
        ));
        assert!(matches!(
            store.scan("nope"),
            Err(StoreError::UnknownTable(_))
        ));
        assert!(matches!(
            store.len("nope"),
            Err(StoreError::UnknownTable(_))
        ));
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b").join("store");
        let store = open(&nested);
        assert!(nested.join("data.mdb").is_file());
        assert_eq!(store.path(), nested.canonicalize().unwrap());
        put(&store, T, "k", "v");
        assert_eq!(store.len(T).unwrap(), 1);
    }

    #[test]
    fn invalid_table_names_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "nul\0inside"] {
            let err = Store::open(dir.path(), &[bad]).unwrap_err();
            assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        }
    }

    #[test]
    fn batch_debug_shows_operations_not_payloads() {
        let mut batch = Batch::new();
        batch.put(T, "k", vec![0; 10_000]);
        batch.delete(U, "gone");
        let debug = format!("{batch:?}");
        assert_eq!(
            debug,
            r#"[put things/"k" (10000 bytes), delete others/"gone"]"#
        );
        assert!(Batch::new().is_empty());
        assert!(!batch.is_empty());
        assert_eq!(batch.len(), 2);
    }
}
