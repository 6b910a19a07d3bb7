//! The Manager actor: owns every task record and its lifecycle.
//!
//! - [`core`]: every rule of a task's life and of a node's, pure and level-triggered: it
//!   compares what should run with what the workers report on every input.
//! - `shell`: the actor. It feeds the core (user requests, proxies' reports and call outcomes,
//!   the scheduler's placements, health results, timers) and carries out its effects: store
//!   writes first (group commit), then calls to workers, placements, health watches.
//!
//! It never calls a worker itself (its proxies do) and never chooses a node (the Scheduler does).
//! The messages below are its whole API; each says who sends it.

pub mod core;
mod services;
mod shell;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::services::{
    CreateService, DeleteService, GetService, ListServices, MAX_ENDPOINTS_WAIT, PatchService,
    ReplaceService, RollbackService, WatchEndpoints,
};
pub use self::shell::{Manager, ManagerSetup};
use super::client::{CallError, WorkerLink};
use super::worker_proxy::WorkerProxy;
use crate::db::{Record, StoreError, Table};
use crate::node::{Availability, NodeStatus};
use crate::task::{State, Task};
use std::collections::BTreeMap;

/// The manager's tasks: a sequence number given at submission → the task record, which carries
/// what the user wants of it (`desired`). Keys that only grow make every insert an append at
/// the B-tree's right edge, so a group commit of thousands of new tasks dirties a handful of
/// pages instead of one per task (random UUID keys did).
pub const TASKS: Table<u64, Task> = Table::new("tasks");
/// Accepted TaskEvents of stores written before `desired` was part of the record; read once at
/// start-up, folded into the records and emptied.
pub const EVENTS: Table<u64, Intent> = Table::new("events");
/// Registered workers: name → the address the name is bound to.
pub const NODES: Table<String, NodeRecord> = Table::new("nodes");
/// Collected tasks: id → tombstone, which keeps the id reserved for a while (ARCHITECTURE.md
/// §12).
pub const COLLECTED: Table<Uuid, core::Tombstone> = Table::new("collected");
/// Services: name → the service, its template and its rollout (ARCHITECTURE.md §13).
pub const SERVICES: Table<String, crate::service::Service> = Table::new("services");
/// Every table of the manager's store.
pub const TABLES: &[&str] = &[
    TASKS.name(),
    EVENTS.name(),
    NODES.name(),
    COLLECTED.name(),
    SERVICES.name(),
];

/// Version 2 is binary (about 40 bytes; version 1 was JSON, over 130). A collected task's
/// tombstone must take less room than its record did, or collecting cannot make room in a full
/// store until the tombstones expire.
impl Record for core::Tombstone {
    const VERSION: u8 = 2;
    const ENCODING: crate::db::Encoding = crate::db::Encoding::Binary;

    fn upgrade(version: u8, bytes: &[u8]) -> Result<Self, String> {
        match version {
            0 | 1 => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            v => Err(format!(
                "schema version {v} is not one this build reads (it writes {})",
                Self::VERSION
            )),
        }
    }
}

/// A registered worker, as the store keeps it: the address its name is bound to, and the
/// labels and availability the operator set on it (version 2; version 1 was the address
/// alone, and reads as an active node with no labels of the manager's).
pub use self::core::NodeRecord;

impl Record for NodeRecord {
    const VERSION: u8 = 2;

    /// Before versions, the record was the address itself.
    fn upgrade(version: u8, bytes: &[u8]) -> Result<Self, String> {
        match version {
            0 => String::from_utf8(bytes.to_vec())
                .map(NodeRecord::at)
                .map_err(|e| format!("the address is not UTF-8: {e}")),
            1 => serde_json::from_slice::<NodeRecordV1>(bytes)
                .map(|r| NodeRecord::at(r.address))
                .map_err(|e| format!("not a version 1 node record ({e})")),
            v => Err(format!("schema version {v} is not one this build reads")),
        }
    }
}

/// A node record of version 1: its address only.
#[derive(Deserialize)]
struct NodeRecordV1 {
    address: String,
}

/// What the events table of an older store kept of an accepted TaskEvent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    pub task: Uuid,
    pub state: crate::task::Desired,
}

impl Record for Intent {
    const VERSION: u8 = 1;
}

/// What can go wrong when asking the Manager for something.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No task has this id.
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// The id is taken by a task with another spec.
    #[error("task {0} exists already with another spec; submit it unchanged, or use a new id")]
    Conflict(Uuid),
    /// The task finished and was collected; its id stays reserved.
    #[error("{}", core::collected_message(.0))]
    Collected(Box<core::Tombstone>),
    /// The task has not been placed on a worker (yet), so there is nothing to read.
    #[error("task {0} has not been placed on a worker yet")]
    NotPlaced(Uuid),
    /// The worker the task is on is not connected.
    #[error("worker {0} is not connected")]
    WorkerGone(String),
    /// The store refused the write; nothing was acknowledged.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The manager is shutting down.
    #[error("the manager is shutting down")]
    Gone,
    /// A join, a forget or a change of a node refused.
    #[error("{0}")]
    Node(#[from] core::NodeRefusal),
    /// The task cannot run on any worker the manager knows (a host path none allows).
    #[error("{0}")]
    Unplaceable(String),
    /// No service has this name.
    #[error("service {0} does not exist")]
    ServiceNotFound(String),
    /// A service change refused.
    #[error("{0}")]
    Service(core::ServiceRefusal),
    /// The request's body cannot be taken; the message names the field.
    #[error("{0}")]
    Input(String),
}

impl From<core::ServiceRefusal> for ManagerError {
    fn from(r: core::ServiceRefusal) -> ManagerError {
        match r {
            core::ServiceRefusal::NotFound(name) => ManagerError::ServiceNotFound(name),
            other => ManagerError::Service(other),
        }
    }
}

impl From<core::Refusal> for ManagerError {
    fn from(r: core::Refusal) -> ManagerError {
        match r {
            core::Refusal::NotFound(id) => ManagerError::NotFound(id),
            core::Refusal::Conflict(id) => ManagerError::Conflict(id),
            core::Refusal::Collected(t) => ManagerError::Collected(t),
        }
    }
}

// ---- from users (HTTP handlers, embedding programs) --------------------------------------

/// Accept a task: answers once it is committed. The same id and spec again is answered with the
/// recorded task (`created` false); the same id with another spec is a conflict.
#[derive(Message)]
#[rtype(result = "Result<Submitted, ManagerError>")]
pub struct Submit(pub Task);

/// The answer to [`Submit`].
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: Task,
    pub created: bool,
}

/// Stop a task: answers once the stop is committed. The task shows `desired: "stopped"` until
/// no copy of it runs, then it is Completed. A user's stop also ends the restart policy.
#[derive(Message)]
#[rtype(result = "Result<Task, ManagerError>")]
pub struct StopTask(pub Uuid);

/// One task: not found, or collected after its retention.
#[derive(Message)]
#[rtype(result = "Result<Task, ManagerError>")]
pub struct GetTask(pub Uuid);

/// Tasks ordered by id (or newest first), filtered, one page at a time; not found when a
/// newest-first page starts after a task that is gone.
#[derive(Message, Default)]
#[rtype(result = "Result<Listing, ManagerError>")]
pub struct ListTasks {
    /// Newest first (by submission) rather than by id.
    pub newest: bool,
    /// Newest first: only tasks submitted before this submission number (a page's cursor,
    /// which stays good when the task it came from is collected).
    pub before: Option<u64>,
    pub state: Option<State>,
    pub worker: Option<String>,
    /// Only the tasks of this service.
    pub service: Option<String>,
    /// Only tasks whose name, id or image holds this text, in any case (lower-cased here).
    pub search: Option<String>,
    /// Start after this id.
    pub after: Option<Uuid>,
    /// At most this many; all when `None`.
    pub limit: Option<usize>,
}

/// A page of tasks, with each one's submission number (what newest-first pages continue from).
#[derive(Debug, Default)]
pub struct Listing {
    pub tasks: Vec<Task>,
    /// `submissions[i]` is `tasks[i]`'s.
    pub submissions: Vec<u64>,
}

/// Counts of tasks per state (for progress displays and benchmarks).
#[derive(Message)]
#[rtype(result = "std::collections::BTreeMap<State, usize>")]
pub struct CountTasks;

/// What `/health` shows: tasks by state, collected tasks whose ids stay reserved, and how
/// full the store is.
#[derive(Message)]
#[rtype(result = "Vitals")]
pub struct GetVitals;

/// What the manager's core counts, for `GET /metrics`: tasks by state (kept as records change,
/// no walk over the tasks) and its decisions so far.
#[derive(Message)]
#[rtype(result = "ManagerScrape")]
pub struct ScrapeManager;

/// The answer to [`ScrapeManager`].
#[derive(Debug, Clone)]
pub struct ManagerScrape {
    /// Tasks by state, indexed by [`State::index`].
    pub counts: [usize; State::COUNT],
    pub tally: core::Tally,
}

/// The answer to [`GetVitals`].
#[derive(Debug, Clone)]
pub struct Vitals {
    pub states: std::collections::BTreeMap<State, usize>,
    pub collected: usize,
    pub store: crate::db::Usage,
}

/// Where the worker that has a task's logs is, and how to be let in.
#[derive(Message)]
#[rtype(result = "Result<super::client::WorkerTarget, ManagerError>")]
pub struct LogsOf(pub Uuid);

/// A node as `GET /nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeReport {
    /// The worker's name.
    pub name: String,
    /// `host:port` the manager reaches it at.
    pub address: String,
    pub status: NodeStatus,
    /// Cores, as the worker reports them.
    pub cpus: f64,
    /// Cores the scheduler has booked for tasks on it.
    pub cpu_allocated: f64,
    /// Bytes of memory.
    pub memory: u64,
    pub memory_allocated: u64,
    /// Bytes of disk.
    pub disk: u64,
    pub disk_allocated: u64,
    /// Tasks placed on it.
    pub tasks: usize,
    /// When it last answered; `null` if never.
    pub last_seen: Option<DateTime<Utc>>,
    /// Why it is not Ready, when it is not.
    pub reason: Option<String>,
    /// Whether it takes new tasks: `active`; `pause` keeps what runs; `drain` moves it away.
    pub availability: Availability,
    /// When a drain should be over, if it was given a deadline.
    pub drain_deadline: Option<DateTime<Utc>>,
    /// Its labels as constraints see them: the worker's, overlaid by the manager's.
    pub labels: BTreeMap<String, String>,
    /// Labels the worker reports (`cube worker --label`).
    pub worker_labels: BTreeMap<String, String>,
    /// Labels set on the manager (`cube node label`); they win on the same key.
    pub manager_labels: BTreeMap<String, String>,
    /// Named volumes the worker holds.
    pub volumes: Vec<String>,
    /// Host paths under which the worker lets tasks mount.
    pub allowed_host_paths: Vec<String>,
}

/// Every worker the manager knows, with what the scheduler has booked on it.
#[derive(Message)]
#[rtype(result = "Vec<NodeReport>")]
pub struct ListNodes;

/// A worker joins (`cube worker --join`): bind `name` to `address` durably and watch it.
/// Answers once the binding is committed.
#[derive(Message)]
#[rtype(result = "Result<Joined, ManagerError>")]
pub struct JoinNode {
    pub name: String,
    /// `host:port` the manager reaches the worker at.
    pub address: String,
}

/// The answer to [`JoinNode`].
#[derive(Debug, Clone)]
pub struct Joined {
    /// The name was new, or bound to another address before.
    pub created: bool,
    /// The token the manager presents to its workers, for the worker to accept.
    pub cluster_token: Option<String>,
}

/// Change a node's availability or the labels the manager sets on it (`PATCH /nodes/{name}`).
/// Answers with the node's view once the change is committed.
#[derive(Message)]
#[rtype(result = "Result<NodeReport, ManagerError>")]
pub struct ChangeNode {
    pub name: String,
    pub change: core::NodeChange,
}

/// One node as `GET /nodes` shows it.
#[derive(Message)]
#[rtype(result = "Result<NodeReport, ManagerError>")]
pub struct GetNode(pub String);

/// Forget a node with no tasks: its record, its proxy, its place in the scheduler. Answers
/// once the forgetting is committed.
#[derive(Message)]
#[rtype(result = "Result<(), ManagerError>")]
pub struct ForgetNode(pub String);

/// A consistent, compacted copy of the manager's store, made on a blocking thread while the
/// Manager goes on serving: answers with the copy open for reading (its file already removed,
/// so nothing is left behind whatever happens to the reader) and its size.
#[derive(Message)]
#[rtype(result = "Result<(std::fs::File, u64), ManagerError>")]
pub struct Snapshot;

/// Watch a worker (one more WorkerProxy); answers with its proxy.
#[derive(Message)]
#[rtype(result = "Addr<WorkerProxy>")]
pub struct Connect(pub WorkerLink);

// ---- from WorkerProxies -------------------------------------------------------------------

/// The worker at this endpoint answers, as `name`: its first answer, its first since it was
/// Down, or a new name.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeUp {
    pub endpoint: core::EndpointId,
    pub name: String,
}

/// The worker at this endpoint has been silent for the node timeout.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeDown {
    pub endpoint: core::EndpointId,
}

/// A change-feed answer: the worker's latest record of each task that changed, or of every
/// task it has when `full`. Once the step that took it is committed, the Manager hands `mark`
/// back to the proxy ([`Recorded`](super::worker_proxy::Recorded)), which tells the worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Report {
    pub endpoint: core::EndpointId,
    pub full: bool,
    /// The worker's process is not the one of its previous report.
    pub restarted: bool,
    pub tasks: Vec<Task>,
    /// Where the report stands in the worker's feed.
    pub mark: super::worker_proxy::FeedMark,
}

/// The worker at this endpoint reports its labels, named volumes and allowed host paths: sent
/// after each registration and whenever they change.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerFacts {
    pub endpoint: core::EndpointId,
    pub facts: crate::node::NodeFacts,
}

/// The outcome of a call the Manager asked a proxy to make.
#[derive(Debug)]
pub struct CallDone {
    pub node: String,
    /// The task, the attempt, and whether it was a start or a stop.
    pub call: (Uuid, u32, core::CallKind),
    /// What the worker then had of the task, or why the call failed.
    pub outcome: Result<core::Seen, CallError>,
}

/// Outcomes of calls, as many as finished together: one message for a burst of starts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CallsDone(pub Vec<CallDone>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Batch, Store};

    fn tombstone() -> core::Tombstone {
        core::Tombstone {
            id: Uuid::new_v4(),
            state: State::Completed,
            finished_at: chrono::Utc::now(),
            collected_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn tombstones_are_small_binary_records_and_json_ones_still_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), TABLES).expect("store");
        let (new, old) = (tombstone(), tombstone());
        let mut batch = Batch::new();
        COLLECTED.put(&mut batch, &new.id, &new).expect("put");
        let mut v1 = vec![1];
        v1.extend(serde_json::to_vec(&old).expect("json"));
        batch.put(COLLECTED.name(), old.id.as_bytes().to_vec(), v1);
        store.commit(batch).await.expect("committed");
        let raw = store
            .get(COLLECTED.name(), new.id.as_bytes())
            .expect("get")
            .expect("a row");
        assert_eq!(raw[0], 2);
        assert!(raw.len() <= 48, "{} bytes", raw.len());
        for t in [&new, &old] {
            assert_eq!(
                COLLECTED.get(&store, &t.id).expect("readable").as_ref(),
                Some(t)
            );
        }
    }

    #[tokio::test]
    async fn node_records_of_version_1_and_0_read_as_active_nodes_without_labels() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), TABLES).expect("store");
        let mut batch = Batch::new();
        let mut v1 = vec![1];
        v1.extend(br#"{"address":"10.0.0.1:5556"}"#);
        batch.put(NODES.name(), b"w1".to_vec(), v1);
        batch.put(NODES.name(), b"w0".to_vec(), b"10.0.0.0:5556".to_vec());
        let mut labelled = NodeRecord::at("10.0.0.2:5556");
        labelled.labels.insert("zone".into(), "a".into());
        labelled.availability = crate::node::Availability::Pause;
        NODES
            .put(&mut batch, &"w2".to_string(), &labelled)
            .expect("put");
        store.commit(batch).await.expect("committed");
        let read: std::collections::BTreeMap<String, NodeRecord> =
            NODES.scan(&store).expect("readable").into_iter().collect();
        assert_eq!(read["w0"], NodeRecord::at("10.0.0.0:5556"));
        assert_eq!(read["w1"], NodeRecord::at("10.0.0.1:5556"));
        assert_eq!(read["w2"], labelled);
    }
}
