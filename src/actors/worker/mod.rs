//! The Worker actor: runs the tasks placed on one node through a [`Runtime`] and keeps a
//! durable record of them.
//!
//! - [`core`]: the rules, pure (starts, stops and their tombstones, exits, reconciliation with
//!   the runtime); unit-tested and driven by the fault simulation.
//! - [`feed`]: the change feed the manager's proxy long-polls.
//! - `shell`: the actor that feeds the core (messages, runtime events and outcomes, timers) and
//!   carries out its effects (runtime calls, store writes, feed notifications).
//!
//! State changes come from the runtime's event stream, never from polling: exit 0 → Completed,
//! non-zero → Failed with `exit_code`, OOM kill → Failed with that reason. The worker only ever
//! touches containers carrying its own `cube.worker` label.

pub mod core;
pub mod feed;
mod shell;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use uuid::Uuid;

pub use self::feed::Changes;
pub use self::shell::Worker;
use crate::db::{Record, StoreError, Table};
use crate::node::{Capacity, NodeStats, StatsSampler};
use crate::runtime::{Runtime, RuntimeError};
use crate::task::Task;

/// The worker's tasks: id → its latest record.
pub const TASKS: Table<Uuid, Task> = Table::new("tasks");
/// Tombstones: id → the highest attempt fenced here (by a stop, a newer attempt, or the drop of
/// a finished task), and when that was written.
pub const STOPS: Table<Uuid, Tombstone> = Table::new("stops");
/// Every table of a worker's store.
pub const TABLES: &[&str] = &[TASKS.name(), STOPS.name()];

/// What the worker remembers of the attempts it fenced for a task (ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    /// Every attempt up to this one is fenced here.
    pub attempt: u32,
    /// When it was last written. Once the worker no longer has the task, the tombstone expires
    /// `retention` after this. `None` in records of older versions: counted from the worker's
    /// start.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

impl Record for Tombstone {
    const VERSION: u8 = 2;

    /// Version 1 was `{"attempt": N}`; before versions, the attempt as 4 big-endian bytes, whose
    /// first byte the table reads as the version (so 3 bytes are left), or, for an attempt of
    /// 2^29 or more, as version 0 with all 4.
    fn upgrade(version: u8, bytes: &[u8]) -> Result<Self, String> {
        let plain = |attempt: u32| Tombstone { attempt, at: None };
        match (version, bytes) {
            (_, &[b1, b2, b3]) => Ok(plain(u32::from_be_bytes([version, b1, b2, b3]))),
            (0, &[b0, b1, b2, b3]) => Ok(plain(u32::from_be_bytes([b0, b1, b2, b3]))),
            (1, json) => serde_json::from_slice(json).map_err(|e| e.to_string()),
            (v, _) => Err(format!(
                "schema version {v} is not one this build reads (it writes {})",
                Self::VERSION
            )),
        }
    }
}
/// How long the container of a finished task is kept for its logs; the task's record is kept
/// at least as long (and until the manager has recorded it), a tombstone as long after it is
/// written once the task is gone.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Most tasks in one answer of the change feed, for a watcher that asks for pages (`limit`).
pub const DEFAULT_FEED_PAGE: usize = 5000;
/// Most bytes of tasks (as JSON) in one answer of the change feed for a watcher that asks for
/// pages; an answer always holds at least one task, so its size is bounded by this plus one task.
pub const MAX_FEED_PAGE_BYTES: usize = 32 << 20;
/// Longest a [`WatchChanges`] may wait for a change.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(60);

/// What can go wrong when asking the worker for something.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No task with this id was ever placed here, or it finished and was dropped: its final
    /// state was recorded by the manager and its retention passed.
    #[error(
        "task {0} is not known to this worker (a finished task is dropped once the manager has recorded it and --retention has passed)"
    )]
    NotFound(Uuid),
    /// The request is about an attempt older than the one this worker runs.
    #[error("task {id} attempt {attempt} is older than attempt {current} that this worker runs")]
    StaleAttempt {
        id: Uuid,
        attempt: u32,
        current: u32,
    },
    /// A stop fenced this attempt here: it never starts on this worker.
    #[error(
        "task {id} attempt {attempt} was stopped on this worker (every attempt up to {stopped} is); it will not start here"
    )]
    Stopped {
        id: Uuid,
        attempt: u32,
        stopped: u32,
    },
    /// The task has no container (never started, or already removed).
    #[error("task {0} has no container")]
    NoContainer(Uuid),
    /// The worker's store refused the write; nothing was acknowledged.
    #[error("the worker's store failed: {0}")]
    Store(#[from] StoreError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The worker stopped while the request waited.
    #[error("the worker is shutting down")]
    Gone,
}

/// How a worker is set up.
pub struct WorkerSetup {
    /// The worker's name, stable across restarts: its containers' `cube.worker` label.
    pub name: String,
    pub runtime: Arc<dyn Runtime>,
    /// Durable record of its tasks; `None` keeps them in memory (in-process simulated workers).
    pub store: Option<crate::db::Store>,
    /// Machine measurement; `None` reports `capacity` instead (simulated workers).
    pub sampler: Option<Addr<StatsSampler>>,
    /// Capacity reported when there is no sampler.
    pub capacity: Capacity,
    /// How long the container of a finished task is kept for its logs, and its record and
    /// tombstone at least.
    pub retention: Duration,
    /// Most tasks in one answer of the change feed to a watcher that asks for pages.
    pub feed_page: usize,
}

/// Run this attempt of a task. Idempotent by task id and attempt: a repeat returns the existing
/// task and never starts a second container. Answers once the record is durable.
#[derive(Message)]
#[rtype(result = "Result<Started, WorkerError>")]
pub struct StartAttempt(pub Task);

/// The answer to [`StartAttempt`].
#[derive(Debug, Clone)]
pub struct Started {
    pub task: Task,
    /// False when this attempt was known already.
    pub created: bool,
}

/// Run these attempts, each as [`StartAttempt`] would, in one step with one commit: what a
/// batch of starts (`POST /starts`) costs the worker is one write, not one per task. Answers
/// each start, in order, once the step is durable; `Err` when the commit failed (nothing of
/// the batch is acknowledged then).
#[derive(Message)]
#[rtype(result = "Result<Vec<Result<Started, WorkerError>>, WorkerError>")]
pub struct StartAttempts(pub Vec<Task>);

/// The answer of a worker's `POST /starts`: its name, and what became of each start of the
/// batch, in the batch's order. Only what the manager needs of each: not the whole task back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StartsAnswer {
    /// The worker's name.
    pub name: String,
    /// One outcome per task of the batch, in its order.
    pub starts: Vec<StartOutcome>,
}

/// What became of one start of a batch: the attempt the worker has (as `POST /tasks` answers
/// 201, or 200 when it knew the attempt already: `created` false), or the refusal one
/// `POST /tasks` would have answered (`status` 409: fenced here, or older than the attempt it
/// runs; 400: the task cannot run here).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StartOutcome {
    Started {
        id: Uuid,
        attempt: u32,
        state: crate::task::State,
        created: bool,
    },
    Refused {
        id: Uuid,
        status: u16,
        error: String,
    },
}

/// Stop the task: every attempt up to `attempt` (the current one when `None`) is fenced for
/// good; the current one's container is stopped (SIGTERM, SIGKILL after `stop_timeout_s`) and
/// removed, then the task is Completed. Answers once the stop is durable.
#[derive(Message)]
#[rtype(result = "Result<Task, WorkerError>")]
pub struct StopAttempt {
    pub id: Uuid,
    pub attempt: Option<u32>,
}

/// Stop these attempts, each as [`StopAttempt`] would, in one step with one commit: what a
/// batch of stops (`POST /stops`) costs the worker is one write, not one per task. Answers each
/// stop, in order, once the step is durable; `Err` when the commit failed (nothing of the batch
/// is acknowledged then).
#[derive(Message)]
#[rtype(result = "Result<Vec<Result<Task, WorkerError>>, WorkerError>")]
pub struct StopAttempts(pub Vec<StopAttempt>);

/// The answer of a worker's `POST /stops`: its name, and what became of each stop of the batch,
/// in the batch's order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StopsAnswer {
    /// The worker's name.
    pub name: String,
    /// One outcome per stop of the batch, in its order.
    pub stops: Vec<StopOutcome>,
}

/// What became of one stop of a batch: the task as the stop left it (the attempt it has and its
/// state, as `DELETE /tasks/{id}` answers 202), or the refusal that would have answered (404:
/// no such task here).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StopOutcome {
    Stopped {
        id: Uuid,
        attempt: u32,
        state: crate::task::State,
    },
    Refused {
        id: Uuid,
        status: u16,
        error: String,
    },
}

/// One task as the worker knows it.
#[derive(Message)]
#[rtype(result = "Option<Task>")]
pub struct ReadTask(pub Uuid);

/// Every task of this worker, ordered by id.
#[derive(Message)]
#[rtype(result = "Vec<Task>")]
pub struct ReadTasks;

/// How many of this worker's tasks are in each state (as its feed publishes them), for
/// `GET /metrics`.
#[derive(Message)]
#[rtype(result = "Vec<(crate::task::State, usize)>")]
pub struct CountWorkerTasks;

/// The change feed: tasks changed after `since`, answered as soon as there is at least one (or
/// empty when `wait` passes). A watcher from another instance of the worker starts over at 0.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "Changes")]
pub struct WatchChanges {
    pub since: u64,
    /// The instance the watcher's `since` belongs to.
    pub instance: Option<Uuid>,
    pub wait: Duration,
    /// The manager has committed everything that followed from this feed's records up to this
    /// position (of `instance`): finished tasks written there may be dropped (§5).
    pub acked: Option<u64>,
    /// Answer in pages of at most this many tasks (cut to the worker's page size) and
    /// [`MAX_FEED_PAGE_BYTES`]; `more` then says the next read goes on from the answer's `seq`.
    /// Without it, one answer holds everything, as for watchers of older versions.
    pub limit: Option<usize>,
}

/// The worker's report about its machine.
#[derive(Message)]
#[rtype(result = "Result<NodeStats, WorkerError>")]
pub struct GetStats;

/// The named volumes Cube created on the worker's engine, asked of the runtime now, with the
/// tasks that mount each.
#[derive(Message)]
#[rtype(result = "Result<VolumesAnswer, WorkerError>")]
pub struct ReadVolumes;

/// The answer of a worker's `GET /volumes`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VolumesAnswer {
    /// The worker's name.
    pub name: String,
    /// The named volumes Cube created on the worker's engine (labelled `cube.volume`), by name.
    /// A volume made outside Cube is mounted when a task names it, but not listed.
    pub volumes: Vec<VolumeReport>,
}

/// One named volume of a worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VolumeReport {
    /// The volume's name.
    pub name: String,
    /// When the engine created it; null when it does not say.
    pub created: Option<DateTime<Utc>>,
    /// The tasks on this worker that mount it now (Scheduled or Running), by id.
    pub tasks: Vec<Uuid>,
}

/// The output of a task's container: the last `tail` lines, and on while it runs when `follow`.
#[derive(Message)]
#[rtype(result = "Result<BoxStream<'static, Result<Bytes, RuntimeError>>, WorkerError>")]
pub struct ReadLogs {
    pub id: Uuid,
    pub tail: Option<usize>,
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::db::{Batch, Store};

    #[tokio::test]
    async fn tombstones_of_every_version_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), TABLES).expect("store");
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let at = Utc::now();
        let mut batch = Batch::new();
        // Before versions: the attempt as 4 big-endian bytes.
        batch.put(
            "stops",
            ids[0].as_bytes().to_vec(),
            7u32.to_be_bytes().to_vec(),
        );
        batch.put(
            "stops",
            ids[1].as_bytes().to_vec(),
            ((1u32 << 24) + 5).to_be_bytes().to_vec(),
        );
        batch.put(
            "stops",
            ids[2].as_bytes().to_vec(),
            (3u32 << 29).to_be_bytes().to_vec(),
        );
        // Version 1: the attempt alone.
        batch.put(
            "stops",
            ids[3].as_bytes().to_vec(),
            [&[1u8][..], br#"{"attempt":5}"#].concat(),
        );
        // Today's.
        let today = Tombstone {
            attempt: 9,
            at: Some(at),
        };
        STOPS.put(&mut batch, &ids[4], &today).expect("put");
        store.commit(batch).await.expect("committed");
        let read: BTreeMap<Uuid, Tombstone> =
            STOPS.scan(&store).expect("scan").into_iter().collect();
        let plain = |attempt| Tombstone { attempt, at: None };
        assert_eq!(read[&ids[0]], plain(7));
        assert_eq!(read[&ids[1]], plain((1 << 24) + 5));
        assert_eq!(read[&ids[2]], plain(3 << 29));
        assert_eq!(read[&ids[3]], plain(5));
        assert_eq!(read[&ids[4]], today);
    }
}
