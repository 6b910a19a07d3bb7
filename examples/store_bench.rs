//! Rough throughput figures for the store's group commit.
//!
//! `cargo run --release --example store_bench [DIR]`: runs in a fresh temporary directory
//! (or a fresh subdirectory of DIR, to measure another disk). Every acknowledged commit is
//! fsync'd, so the figures mostly measure the disk's fsync latency.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Instant;

use cube::db::{Batch, Store, StoreError};

const TABLE: &str = "bench";
const SEQUENTIAL: usize = 2_000;
const CONCURRENT: usize = 100_000;
const TASKS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args().nth(1).map(PathBuf::from);
    let tmp = match &base {
        Some(base) => tempfile::tempdir_in(base)?,
        None => tempfile::tempdir()?,
    };
    let store = Store::open(tmp.path(), &[TABLE])?;
    println!("store at {}", store.path().display());

    // 1. One caller, one row per commit, waiting for each acknowledgement: one fsync per ack.
    let commits_before = store.commits();
    let started = Instant::now();
    for i in 0..SEQUENTIAL {
        let mut batch = Batch::new();
        batch.put(TABLE, format!("seq-{i:08}"), vec![0u8; 100]);
        commit_blocking(&store, batch)?;
    }
    let elapsed = started.elapsed();
    println!(
        "sequential: {SEQUENTIAL} single-row commits in {:.2?}: {:.0} acks/s, {:.1} µs/commit, {} commits",
        elapsed,
        SEQUENTIAL as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / SEQUENTIAL as f64,
        store.commits() - commits_before,
    );

    // 2. 64 tasks, each committing its share one row at a time and awaiting each ack:
    //    up to 64 batches wait while a commit is in flight, and ride in the next one.
    let runtime = tokio::runtime::Builder::new_multi_thread().build()?;
    let commits_before = store.commits();
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::with_capacity(TASKS);
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..CONCURRENT).step_by(TASKS) {
                    let mut batch = Batch::new();
                    batch.put(TABLE, format!("con-{i:08}"), vec![0u8; 100]);
                    store.commit(batch).await?;
                }
                Ok::<_, cube::db::StoreError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let elapsed = started.elapsed();
    let commits = store.commits() - commits_before;
    println!(
        "concurrent: {CONCURRENT} single-row batches from {TASKS} tasks in {:.2?}: {:.0} acks/s, \
         {commits} commits ({:.1} batches/commit)",
        elapsed,
        CONCURRENT as f64 / elapsed.as_secs_f64(),
        CONCURRENT as f64 / commits as f64,
    );

    assert_eq!(store.len(TABLE)?, (SEQUENTIAL + CONCURRENT) as u64);
    Ok(())
}

/// Commit and wait on this thread, as a synchronous caller would: one fsync per acknowledgement.
fn commit_blocking(store: &Store, batch: Batch) -> Result<(), StoreError> {
    block_on(store.commit(batch))
}

/// Wakes the thread parked in [`block_on`].
struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The smallest executor: poll on this thread, park between polls. No runtime is needed for a
/// commit, whose future only waits for the writer thread's answer.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // Spurious unparks are harmless: the loop polls again.
        thread::park();
    }
}
