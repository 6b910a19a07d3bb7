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
/// Tombstones: id → the highest attempt a stop was accepted for.
pub const STOPS: Table<Uuid, Tombstone> = Table::new("stops");
/// Every table of a worker's store.
pub const TABLES: &[&str] = &[TASKS.name(), STOPS.name()];

/// What the worker remembers of the stops it accepted for a task (ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    /// Every attempt up to this one is fenced here.
    pub attempt: u32,
}

impl Record for Tombstone {
    const VERSION: u8 = 1;
}
/// How long the container of a finished task is kept for its logs.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Longest a [`WatchChanges`] may wait for a change.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(60);

/// What can go wrong when asking the worker for something.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No task with this id was ever placed here.
    #[error("task {0} is not known to this worker")]
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
    /// How long the container of a finished task is kept for its logs.
    pub retention: Duration,
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

/// One task as the worker knows it.
#[derive(Message)]
#[rtype(result = "Option<Task>")]
pub struct ReadTask(pub Uuid);

/// Every task of this worker, ordered by id.
#[derive(Message)]
#[rtype(result = "Vec<Task>")]
pub struct ReadTasks;

/// The change feed: tasks changed after `since`, answered as soon as there is at least one (or
/// empty when `wait` passes). A watcher from another instance of the worker starts over at 0.
#[derive(Message)]
#[rtype(result = "Changes")]
pub struct WatchChanges {
    pub since: u64,
    /// The instance the watcher's `since` belongs to.
    pub instance: Option<Uuid>,
    pub wait: Duration,
}

/// The worker's report about its machine.
#[derive(Message)]
#[rtype(result = "Result<NodeStats, WorkerError>")]
pub struct GetStats;

/// The output of a task's container: the last `tail` lines, and on while it runs when `follow`.
#[derive(Message)]
#[rtype(result = "Result<BoxStream<'static, Result<Bytes, RuntimeError>>, WorkerError>")]
pub struct ReadLogs {
    pub id: Uuid,
    pub tail: Option<usize>,
    pub follow: bool,
}
