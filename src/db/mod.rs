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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

pub mod lock;
pub mod table;

pub use table::{Key, Record, Table};

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
        "the store at {} is full (map size {map_size} bytes); delete data that is no longer \
         needed or reopen the store with a larger map size (it is virtual address space, \
         the file only grows as data is written)",
        path.display()
    )]
    Full { path: PathBuf, map_size: usize },

    /// The writer thread is gone (the store is shutting down, or the thread died), so the batch
    /// was not written, or its outcome is unknown.
    #[error("the store writer thread is gone; the batch was not acknowledged")]
    Closed,

    /// The table was not declared when the store was opened.
    #[error("unknown table {0:?}: it was not declared when the store was opened")]
    UnknownTable(String),

    /// A record could not be serialized to JSON.
    #[error("cannot encode the value for key {key} of table {table:?} as JSON: {source}")]
    Encode {
        table: String,
        key: String,
        source: serde_json::Error,
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
}

/// A set of writes that is committed atomically: all of it or none of it.
/// Operations apply in the order they were added (a put then a delete of the same key deletes it).
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
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
}

/// Counters shared by the writer and every `Store` clone.
#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    batches: AtomicU64,
}

/// What the readers and the writer share: the environment and its tables.
struct Shared {
    env: Env<WithoutTls>,
    tables: HashMap<&'static str, Db>,
    path: PathBuf,
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

/// Lets `create_databases_and_commit` hand back any number of tables, not a fixed tuple.
struct NewTables<'e>(Vec<(&'static str, Database<'e, Bytes, Bytes>)>);

impl OnCommit for NewTables<'_> {
    type Committed = Vec<(&'static str, Db)>;

    fn on_commit(self, token: &CommitToken) -> Self::Committed {
        self.0
            .into_iter()
            .map(|(name, db)| (name, db.on_commit(token)))
            .collect()
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
                let mut created = Vec::with_capacity(names.len());
                for &name in &names {
                    created.push((name, opener.create_database(wtxn, Some(name))?));
                }
                Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit(
                    NewTables(created),
                ))
            })
            .map_err(|e| {
                open_err(format!(
                    "cannot create the tables: {}",
                    explain_open_error(dir, &e)
                ))
            })?;
        let tables = match created {
            CommitOrAbort::Commit(tables) => tables.into_iter().collect(),
            CommitOrAbort::Abort(never) => match never {},
        };

        let shared = Arc::new(Shared {
            path: env.path().to_owned(),
            env,
            tables,
            stats: Stats::default(),
            _lock: dir_lock,
        });

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
        queue.send((batch, reply)).map_err(|_| StoreError::Closed)?;
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
        let shared = &self.inner.shared;
        let db = shared.table(table)?;
        let rtxn = shared.env.read_txn()?;
        let mut rows = Vec::new();
        for row in db.iter(&rtxn)? {
            let (key, value) = row?;
            rows.push((key.to_vec(), value.to_vec()));
        }
        Ok(rows)
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
        }
    }
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
/// retries each batch alone so the error reaches only the batch that caused it.
fn write_group(shared: &Shared, jobs: Vec<Job>) {
    match apply_and_commit(shared, jobs.iter().map(|(batch, _)| batch)) {
        Ok(()) => {
            shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .batches
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            for (_, reply) in jobs {
                // The caller may have dropped its future; the write stands regardless.
                let _ = reply.send(Ok(()));
            }
        }
        // A lone batch already ran in its own transaction: its error is its own.
        Err(error) if jobs.len() == 1 => {
            if let Some((_, reply)) = jobs.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
        Err(error) => {
            log::warn!(
                "a group commit of {} batches failed ({error}); retrying each batch alone",
                jobs.len()
            );
            for (batch, reply) in jobs {
                let outcome = apply_and_commit(shared, std::iter::once(&batch));
                if outcome.is_ok() {
                    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Applies the batches in one write transaction and commits it; aborts it on any error.
fn apply_and_commit<'b>(
    shared: &Shared,
    batches: impl Iterator<Item = &'b Batch>,
) -> Result<(), StoreError> {
    let mut wtxn = shared
        .env
        .write_txn()
        .map_err(|e| map_txn_error(shared, e))?;
    for batch in batches {
        for op in &batch.ops {
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
    wtxn.commit().map_err(|e| map_txn_error(shared, e))
}

fn map_txn_error(shared: &Shared, error: heed::Error) -> StoreError {
    match error {
        heed::Error::Mdb(MdbError::MapFull) => shared.full(),
        error => StoreError::Lmdb(error),
    }
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
        let message = full.to_string();
        assert!(
            message.contains("is full (map size 65536 bytes)")
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
