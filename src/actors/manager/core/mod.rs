//! The manager's decision core: every rule of a task's life and of a node's, as plain
//! synchronous code with no actix, no I/O and no clock of its own.
//!
//! The [`Manager`](super::Manager) actor is a shell around it: it feeds each input in (a
//! submission, a stop, a worker's report, a node going up or down, a placement, a call's
//! outcome, a timer) with the time it happened, then carries out the [`Effect`]s the core asks
//! for and writes the records [`Core::take_writes`] returns. The seeded fault simulation
//! (`crate::sim::faults`) drives the same code with simulated workers, network and time.
//!
//! **Level-triggered.** For every task the core knows what should run (its *desired copy*:
//! attempt N on worker W, or nothing) and what does run (what each worker last reported, and
//! the outcome of every call). Every input re-evaluates the tasks it touches
//! ([`Core::reconcile`]), so a difference produces an effect again however it arose:
//! - a live copy that is not the desired one (an older attempt, a copy on a worker the task
//!   moved from, any copy of a stopped task, a copy of a task the manager does not know) is
//!   stopped, again and again until the worker reports it gone;
//! - a desired copy the worker has not reported is (re)started; starts are idempotent on the
//!   worker;
//! - a task whose worker is Down is placed elsewhere as a new attempt.
//!
//! Each worker sends a full report when its watch starts over (every (re)connection) and at
//! least every [`Config::resync_interval`]: the safety net that catches whatever a lost message
//! hid. A stop is done when the worker reports the attempt gone (or the worker is Down: any
//! copy it still runs is stopped when it reports again), not when a request was answered.
//!
//! **Durability.** Every record the core changes is returned by [`Core::take_writes`]; the
//! shell commits them before it carries out any call to a worker made in the same step, so
//! nothing leaves the manager before the record that explains it is durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use log::{debug, info, warn};
use uuid::Uuid;

use crate::actors::FastMap;
use crate::actors::client::CallError;
use crate::actors::policy::Resources;
use crate::actors::scheduler::{NoFit, PlaceRequest, PlacementFacts, Room};
use crate::clock::{Now, Timers, backoff};
use crate::node::{Availability, NodeFacts, NodeStatus};
use crate::sim::planted::{Bug, planted};
use crate::task::{Attempt, Goal, RestartPolicy, State, Task};

/// First restart waits this long; each further one twice as long, up to [`MAX_RESTART_BACKOFF`].
pub const MIN_RESTART_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);
/// Consecutive failed health checks that make an attempt Failed.
pub const HEALTH_FAILURES_TO_RESTART: u32 = 3;

/// Wait before restart number `restarts + 1`: 1 s, 2 s, 4 s … up to a minute.
pub fn restart_backoff(restarts: u32) -> Duration {
    backoff(MIN_RESTART_BACKOFF, MAX_RESTART_BACKOFF, restarts)
}

/// A fraction in [0, 1) that spreads the `n`th of many over an interval evenly (the golden
/// ratio's sequence), the same every time.
fn spread(n: usize) -> f64 {
    (n as f64 * 0.618_033_988_749_895).fract()
}

/// What a task reserves.
pub fn resources(task: &Task) -> Resources {
    Resources {
        cpu: task.cpu,
        memory: task.memory,
        disk: task.disk,
    }
}

/// How the core behaves; the defaults are what `cube manager` uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// A node with no endpoint to watch it (known from the store only) is Down after this long.
    pub node_timeout: Duration,
    /// Wait before re-sending a call that failed in transport.
    pub call_retry: Duration,
    /// Every worker sends a full report at least this often.
    pub resync_interval: Duration,
    /// Most tasks in one placement request.
    pub place_batch: usize,
    /// Finished tasks are kept this long after they finished, then collected.
    pub retention: Duration,
    /// At most this many finished tasks are kept; the oldest beyond it are collected.
    pub retention_count: usize,
    /// A collected task's tombstone (which keeps its id reserved) lives this long.
    pub tombstone_life: Duration,
    /// Most tombstones kept; the oldest beyond it are dropped early.
    pub tombstone_count: usize,
    /// How often collection looks for what is due.
    pub collect_interval: Duration,
    /// Most tasks collected (or tombstones dropped) in one step, so submissions never wait
    /// behind a long collection.
    pub collect_batch: usize,
}

/// Default time between full reports of a worker.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Default wait before a call that failed in transport is sent again.
pub const DEFAULT_CALL_RETRY: Duration = Duration::from_millis(500);
/// Default size of a placement batch.
pub const DEFAULT_PLACE_BATCH: usize = 8192;
/// Default time a finished task is kept (Nomad's `job_gc_threshold` is 4 h; a day lets people
/// read yesterday's results).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default most finished tasks kept.
pub const DEFAULT_RETENTION_COUNT: usize = 100_000;
/// A tombstone lives this many times the retention.
pub const TOMBSTONE_LIFE_FACTOR: u32 = 7;
/// Tombstones kept at most, per finished task kept.
pub const TOMBSTONE_COUNT_FACTOR: usize = 10;
/// Default interval between collection steps, and size of one.
pub const DEFAULT_COLLECT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_COLLECT_BATCH: usize = 1000;

impl Config {
    pub fn new(node_timeout: Duration) -> Config {
        Config {
            node_timeout,
            call_retry: DEFAULT_CALL_RETRY,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            place_batch: DEFAULT_PLACE_BATCH,
            retention: DEFAULT_RETENTION,
            retention_count: DEFAULT_RETENTION_COUNT,
            tombstone_life: DEFAULT_RETENTION * TOMBSTONE_LIFE_FACTOR,
            tombstone_count: DEFAULT_RETENTION_COUNT * TOMBSTONE_COUNT_FACTOR,
            collect_interval: DEFAULT_COLLECT_INTERVAL,
            collect_batch: DEFAULT_COLLECT_BATCH,
        }
    }

    /// Keep finished tasks for `retention`, at most `count` of them; tombstones follow.
    pub fn with_retention(mut self, retention: Duration, count: usize) -> Config {
        self.retention = retention;
        self.retention_count = count;
        self.tombstone_life = retention.saturating_mul(TOMBSTONE_LIFE_FACTOR);
        self.tombstone_count = count.saturating_mul(TOMBSTONE_COUNT_FACTOR).max(1);
        self
    }
}

/// The shell's handle on one worker endpoint (one WorkerProxy).
pub type EndpointId = usize;
type NodeId = usize;

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Book these reservations without choosing (the scheduler's book after a restart).
    Restore(Vec<crate::actors::scheduler::Restored>),
    /// Ask the scheduler where these tasks go; the answer comes back as [`Core::placed`].
    Place(Vec<PlaceRequest>),
    /// Give these tasks' reservations back to the scheduler.
    Release(Vec<Uuid>),
    /// Tell the scheduler a node takes placements, or no longer does.
    NodeReady { name: String, ready: bool },
    /// Tell the scheduler a node's effective labels, volumes, allowed host paths and
    /// availability (whether it takes new tasks); sent when any of them changes.
    NodeFacts { name: String, facts: PlacementFacts },
    /// Start this attempt of the task on the worker; the outcome comes back as
    /// [`Core::call_done`]. Sent only after this step's writes are durable.
    Start {
        endpoint: EndpointId,
        node: String,
        task: Box<Task>,
    },
    /// Stop this attempt (and any older one) of the task on the worker; the outcome comes back
    /// as [`Core::call_done`]. Sent only after this step's writes are durable.
    Stop {
        endpoint: EndpointId,
        node: String,
        id: Uuid,
        attempt: u32,
    },
    /// The endpoint's next report must be a full one.
    Resync(EndpointId),
    /// The endpoint's worker is registered under this name: it may report its capacity.
    Registered { endpoint: EndpointId, name: String },
    /// The endpoint's worker claims a name bound to another live address.
    Refused {
        endpoint: EndpointId,
        reason: String,
    },
    /// Health-check this attempt at `url`, and report each result.
    Watch { id: Uuid, attempt: u32, url: String },
    /// Stop health-checking the task.
    Unwatch(Uuid),
    /// Stop watching this endpoint: its node was forgotten.
    Disconnect(EndpointId),
}

/// Why a worker may not join, or a node may not be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRefusal {
    /// No node has this name.
    #[error("no node is called {0}")]
    NotFound(String),
    /// The name is bound to another address that still answers.
    #[error(
        "the name {name} is bound to the worker at {address}, which still answers; give each worker its own --name"
    )]
    NameTaken { name: String, address: String },
    /// The address answers as another node that is not Down.
    #[error(
        "the worker at {address} answers as {name}, which is not Down; give this worker its own address, or forget {name} first"
    )]
    AddressTaken { address: String, name: String },
    /// Tasks are placed on the node.
    #[error(
        "node {name} still has {} task(s): {}; stop them, or wait until the node is Down and they have moved",
        tasks.len(),
        tasks.iter().take(10).map(Uuid::to_string).collect::<Vec<_>>().join(", ")
    )]
    HasTasks { name: String, tasks: Vec<Uuid> },
    /// A change of a node's availability or labels that cannot be made.
    #[error("{0}")]
    BadChange(String),
}

/// Records changed by the inputs since the last [`Core::take_writes`], to commit.
#[derive(Debug, Default)]
pub struct Writes {
    /// (store key, record).
    pub tasks: Vec<(u64, Task)>,
    /// (name, its record: address, the labels and availability the manager set).
    pub nodes: Vec<(String, NodeRecord)>,
    /// Names of nodes forgotten.
    pub forgotten: Vec<String>,
    /// Tasks collected: (store key, tombstone) — the record goes, the tombstone stays.
    pub collected: Vec<(u64, Tombstone)>,
    /// Tombstones that lived their time.
    pub expired: Vec<Uuid>,
    /// Services created or changed.
    pub services: Vec<crate::service::Service>,
    /// Names of services removed.
    pub services_removed: Vec<String>,
    /// Tasks of `tasks` written for the first time (for the event stream; not stored).
    pub created: Vec<Uuid>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.nodes.is_empty()
            && self.forgotten.is_empty()
            && self.collected.is_empty()
            && self.expired.is_empty()
            && self.services.is_empty()
            && self.services_removed.is_empty()
    }
}

/// What is left of a finished task once it was collected: enough to keep its id reserved and
/// to say what became of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    pub id: Uuid,
    /// Completed or Failed.
    pub state: State,
    #[serde(with = "crate::task::stamp")]
    pub finished_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "crate::task::stamp")]
    pub collected_at: chrono::DateTime<chrono::Utc>,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new task; acknowledge once the step's writes are durable, then call
    /// [`Core::submit_committed`].
    Created(Task),
    /// The same id and spec again: the recorded task (answer after a commit, since the first
    /// submission may still be committing).
    Existing(Task),
}

/// Why the core refused an input from a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No task has this id.
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// The id is taken by a task with another spec.
    #[error("task {0} exists already with another spec; submit it unchanged, or use a new id")]
    Conflict(Uuid),
    /// The task finished and was collected after the retention period; its id stays reserved.
    #[error("{}", collected_message(.0))]
    Collected(Box<Tombstone>),
}

/// What a user reads about a collected task.
pub fn collected_message(t: &Tombstone) -> String {
    format!(
        "task {} finished ({}) at {} and was collected at {}, after the manager's retention \
         period (--retention, --retention-count); its record is gone and its id stays \
         reserved: submit new work under a new id",
        t.id,
        t.state,
        t.finished_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        t.collected_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// What a worker last said about its copy of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub attempt: u32,
    pub state: State,
}

impl From<&Task> for Seen {
    fn from(t: &Task) -> Seen {
        Seen {
            attempt: t.attempt,
            state: t.state,
        }
    }
}

impl Seen {
    /// Whether `other` is news about the same copy: a later attempt, or the same one further on.
    fn superseded_by(self, other: Seen) -> bool {
        other.attempt > self.attempt
            || (other.attempt == self.attempt && rank(other.state) >= rank(self.state))
    }
}

/// How far a worker's copy of an attempt has got; its state only moves forward.
fn rank(state: State) -> u8 {
    match state {
        State::Pending => 0,
        State::Scheduled => 1,
        State::Running => 2,
        State::Completed | State::Failed => 3,
    }
}

/// The two calls the manager makes to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallKind {
    Start,
    Stop,
}

/// Where a call to a worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Sent; no answer yet.
    InFlight,
    /// The worker took it (durably) at this time. Forgotten once a full report was asked for
    /// after it (the report after the next one) or the worker restarted, so a worker that
    /// lost it is asked again, but a report that left before the call arrived never counts.
    Acked(Duration),
    /// Failed in transport; may be sent again from this time.
    RetryAt(Duration),
}

/// Where a task stands with respect to placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placing {
    /// Not waiting for a placement.
    No,
    /// Queued for the next request to the scheduler.
    Queued,
    /// In a request the scheduler has not answered yet.
    Asked,
    /// Fits nowhere now; queued again when room appears.
    Waiting,
    /// No node meets what it asks besides room (a constraint, a host path); queued again when
    /// a node's facts or availability change or a node comes up (facts.rs).
    Unsatisfied,
}

struct Entry {
    task: Task,
    key: u64,
    /// The submission is committed; placement waits for it.
    acked: bool,
    placing: Placing,
    /// The scheduler holds a reservation for it on `node`.
    reserved: bool,
    /// Node of the current attempt while it is Scheduled or Running.
    node: Option<NodeId>,
    /// Try this node first at the next placement (a restart goes back where it ran).
    prefer: Option<String>,
    /// A policy restart is due at this time.
    restart_at: Option<Duration>,
    /// The next placement is a policy restart (counted when it is placed, so a crash in
    /// between never counts one twice).
    restarting: bool,
    /// Consecutive failed health checks of the current attempt.
    health_failures: u32,
    /// Health checks are asked for the current attempt.
    watched: bool,
    /// The current attempt passed its last health check.
    healthy: bool,
    /// What each worker last said about its copy.
    copies: Vec<(NodeId, Seen)>,
    dirty: bool,
    /// Never written yet: its first record is its creation (`Writes::created`).
    fresh: bool,
    /// The state it is counted under (kept in step with the record by [`Core::touch`]).
    counted: State,
    /// Its key in the index of finished tasks, while it is final.
    ended: Option<chrono::DateTime<chrono::Utc>>,
}

struct Node {
    name: String,
    /// The address the name is bound to (persisted).
    address: String,
    endpoint: Option<EndpointId>,
    status: NodeStatus,
    /// It has sent a full report since it last became Ready.
    synced: bool,
    last_full: Duration,
    /// Tasks some copy of which it reported (the index for full reports).
    seen: BTreeSet<Uuid>,
    /// Tasks whose current attempt is placed on it and not finished.
    placed: BTreeSet<Uuid>,
    calls: BTreeMap<(Uuid, u32, CallKind), Call>,
    /// Labels, availability and drain deadline: the operator's, worker facts: the worker's
    /// (facts.rs).
    settings: facts::Settings,
}

struct Endpoint {
    address: String,
    name: Option<String>,
    /// Liveness as the endpoint's proxy reports it: Connecting, Ready or Down.
    status: NodeStatus,
    refused: Option<String>,
    /// Its node was forgotten: no longer shown, and nothing it says counts.
    forgotten: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Restart(Uuid),
    Retry(NodeId, Uuid),
    Resync(NodeId),
    /// A node known only from the store, with no endpoint watching it.
    Unwatched(NodeId),
    /// Collect finished tasks and expired tombstones that are due.
    Collect,
    /// Room appeared a moment ago: retry the waiting tasks that might fit.
    Room,
    /// A service waits for something due then (a task's monitoring, a batch's delay, a
    /// replacement's backoff).
    Service(usize),
}

/// A row of `GET /nodes`, as far as the core knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView {
    pub endpoint: EndpointId,
    pub address: String,
    pub name: Option<String>,
    pub status: NodeStatus,
    pub reason: Option<String>,
    /// Availability, labels, volumes and host paths, once it has a name.
    pub facts: Option<NodeInfo>,
}

/// Every task id by id, and by submission (its store key), kept together.
#[derive(Default)]
struct TaskOrder {
    by_id: BTreeSet<Uuid>,
    by_key: BTreeMap<u64, Uuid>,
}

impl TaskOrder {
    /// From `(id, key)` pairs sorted by id.
    fn from_sorted(ids: Vec<(Uuid, u64)>) -> TaskOrder {
        TaskOrder {
            by_key: ids.iter().map(|&(id, key)| (key, id)).collect(),
            by_id: ids.into_iter().map(|(id, _)| id).collect(),
        }
    }

    fn insert(&mut self, id: Uuid, key: u64) {
        self.by_id.insert(id);
        self.by_key.insert(key, id);
    }

    fn remove(&mut self, id: Uuid, key: u64) {
        self.by_id.remove(&id);
        self.by_key.remove(&key);
    }
}

pub struct Core {
    config: Config,
    /// Boxed: a slot of the table is then 24 bytes, so the half-empty table after it grows (and
    /// the old and new tables side by side while it does) cost little at a million tasks.
    tasks: FastMap<Uuid, Box<Entry>>,
    /// Every task id, in order and by submission, for listings and deterministic walks.
    order: TaskOrder,
    next_key: u64,
    nodes: Vec<Node>,
    node_ids: FastMap<String, NodeId>,
    endpoints: Vec<Endpoint>,
    queue: VecDeque<Uuid>,
    waiting: VecDeque<Uuid>,
    /// Tasks no node meets the constraints of (facts.rs).
    unsatisfied: Vec<Uuid>,
    /// Node facts changed while a request was out: its "unsatisfied" answers may be stale.
    facts_while_asking: bool,
    /// A placement request is with the scheduler.
    asking: bool,
    /// Room appeared while a request was out: its "fits nowhere" answers may be stale.
    room_while_asking: bool,
    /// The free room as the scheduler last told it (none yet: anything might fit).
    room: Option<Room>,
    /// A retry of the waiting tasks is armed.
    room_armed: bool,
    /// The last retry held tasks back for want of room; retry again once its answer shows
    /// what was placed.
    held_back: bool,
    timers: Timers<Timer>,
    effects: Vec<Effect>,
    dirty_tasks: Vec<Uuid>,
    dirty_nodes: Vec<NodeId>,
    /// Names of nodes forgotten since the last [`Core::take_writes`].
    forgotten: Vec<String>,
    /// Reservations to give back, sent as one effect.
    releases: Vec<Uuid>,
    /// Tasks by state, kept as records change.
    counts: [usize; State::COUNT],
    /// Final tasks (Completed, or Failed with no restart left) by when they finished: what
    /// retention collects, oldest first.
    ended: BTreeSet<(chrono::DateTime<chrono::Utc>, Uuid)>,
    /// Collected tasks whose ids stay reserved, and the order they were collected in.
    tombstones: FastMap<Uuid, Tombstone>,
    tomb_order: VecDeque<Uuid>,
    /// Collections and expired tombstones to write.
    collected: Vec<(u64, Tombstone)>,
    expired: Vec<Uuid>,
    /// Services by id; a removed one keeps its entry so ids stay stable.
    services: Vec<services::ServiceEntry>,
    service_ids: BTreeMap<String, usize>,
    /// Services to look at before this input ends.
    dirty_services: BTreeSet<usize>,
    /// Services whose records to write.
    service_writes: Vec<usize>,
    services_removed: Vec<String>,
    /// Gives each change of a service's endpoints a new index.
    endpoint_clock: u64,
    /// The time of the last look at a service.
    service_clock: Duration,
    /// What the core has decided so far, counted for `GET /metrics`.
    tally: Tally,
    /// Creation to first Running of tasks that just started, for the shell to observe
    /// ([`Core::take_running_latencies`]).
    running_latencies: Vec<Duration>,
}

/// Counts of the core's decisions since it started: plain integers, since the core runs on one
/// thread; read at scrape time ([`Core::tally`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts placed on a node (each new attempt, a restart or a move included).
    pub placements: u64,
    /// Attempts that are restarts by the task's policy.
    pub restarts: u64,
    /// Health checks that failed.
    pub health_check_failures: u64,
}

/// At most this many latencies wait for the shell: a driver that never takes them (the
/// simulation) does not make the core grow.
const MAX_RUNNING_LATENCIES: usize = 4096;

impl Core {
    /// A core with what the store holds: task records under their keys, and bound nodes. Tasks
    /// placed before are booked again, accepted ones queued, stops and restarts carried on.
    pub fn recover(
        config: Config,
        now: Now,
        records: Vec<(u64, Task)>,
        nodes: Vec<(String, NodeRecord)>,
    ) -> Core {
        let count = records.len();
        Core::recover_from(config, now, count, records, nodes)
    }

    /// [`Core::recover`] from records as they come (about `count` of them), so they can be
    /// decoded while the core is built.
    pub fn recover_from(
        config: Config,
        now: Now,
        count: usize,
        records: impl IntoIterator<Item = (u64, Task)>,
        nodes: Vec<(String, NodeRecord)>,
    ) -> Core {
        let mut core = Core {
            config,
            tasks: FastMap::with_capacity_and_hasher(count, Default::default()),
            order: TaskOrder::default(),
            next_key: 0,
            nodes: Vec::new(),
            node_ids: FastMap::default(),
            endpoints: Vec::new(),
            queue: VecDeque::new(),
            waiting: VecDeque::new(),
            unsatisfied: Vec::new(),
            facts_while_asking: false,
            asking: false,
            room_while_asking: false,
            room: None,
            room_armed: false,
            held_back: false,
            timers: Timers::default(),
            effects: Vec::new(),
            dirty_tasks: Vec::new(),
            dirty_nodes: Vec::new(),
            forgotten: Vec::new(),
            releases: Vec::new(),
            counts: [0; State::COUNT],
            ended: BTreeSet::new(),
            tombstones: FastMap::default(),
            tomb_order: VecDeque::new(),
            collected: Vec::new(),
            expired: Vec::new(),
            services: Vec::new(),
            service_ids: BTreeMap::new(),
            dirty_services: BTreeSet::new(),
            service_writes: Vec::new(),
            services_removed: Vec::new(),
            endpoint_clock: 0,
            service_clock: Duration::ZERO,
            tally: Tally::default(),
            running_latencies: Vec::new(),
        };
        for (name, record) in nodes {
            let id = core.node_id(&name);
            core.restore_node(now, id, record);
        }
        // The ordered sets are built in bulk from sorted ids at the end: inserting a million
        // random ids one by one into a B-tree was most of a restart's time.
        let mut restore = Vec::new();
        let mut ids = Vec::with_capacity(count);
        let mut placed: Vec<Vec<Uuid>> = vec![Vec::new(); core.nodes.len()];
        let mut ended = Vec::new();
        // Only Pending and Failed records have something to carry on with.
        let mut unsettled = Vec::new();
        for (key, task) in records {
            core.next_key = core.next_key.max(key + 1);
            let id = task.id;
            let mut entry = Box::new(Entry::new(task, key));
            entry.acked = true;
            entry.fresh = false;
            if entry.task.state.is_active()
                && let Some(worker) = entry.task.worker.clone()
            {
                let nid = core.node_id(&worker);
                if placed.len() <= nid {
                    placed.resize_with(nid + 1, Vec::new);
                }
                placed[nid].push(id);
                entry.node = Some(nid);
                entry.reserved = true;
                restore.push((
                    id,
                    worker,
                    resources(&entry.task),
                    entry.task.service.clone(),
                ));
            }
            entry.counted = entry.task.state;
            core.counts[entry.counted.index()] += 1;
            entry.ended = retention::ended_key(&entry.task);
            if let Some(at) = entry.ended {
                ended.push((at, id));
            }
            if matches!(entry.task.state, State::Pending | State::Failed) {
                unsettled.push(id);
            }
            ids.push((id, entry.key));
            core.tasks.insert(id, entry);
        }
        ids.sort_unstable();
        core.order = TaskOrder::from_sorted(ids);
        ended.sort_unstable();
        core.ended = ended.into_iter().collect();
        for (nid, mut on_node) in placed.into_iter().enumerate() {
            on_node.sort_unstable();
            core.nodes[nid].placed = on_node.into_iter().collect();
        }
        core.effects.push(Effect::Restore(restore));
        core.timers
            .arm(now.mono + core.config.collect_interval, Timer::Collect);
        // Every node starts unwatched until an endpoint claims it; one that none does in a
        // node timeout is Down.
        for nid in 0..core.nodes.len() {
            core.timers
                .arm(now.mono + core.config.node_timeout, Timer::Unwatched(nid));
        }
        unsettled.sort_unstable();
        // A damaged store may hold an id under two keys: carry it on once.
        unsettled.dedup();
        for id in unsettled {
            core.resume(now, id);
        }
        core.kick();
        core
    }

    /// Carry on with what a recovered record says was accepted and not yet done.
    fn resume(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get(&id) else {
            return;
        };
        match (e.task.state, e.task.desired) {
            (State::Pending | State::Failed, Goal::Stopped) => self.finish_stopped(now, id),
            // A Pending task that ran before is an `always` task waiting for its restart.
            (State::Pending, Goal::Running) if e.task.finish_time.is_some() => {
                self.plan_restart(now, id)
            }
            (State::Pending, Goal::Running) => self.enqueue(id),
            (State::Failed, Goal::Running) => self.plan_restart(now, id),
            _ => {}
        }
    }

    fn node_id(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.node_ids.get(name) {
            return id;
        }
        self.nodes.push(Node {
            name: name.to_string(),
            address: String::new(),
            endpoint: None,
            status: NodeStatus::Connecting,
            synced: false,
            last_full: Duration::ZERO,
            seen: BTreeSet::new(),
            placed: BTreeSet::new(),
            calls: BTreeMap::new(),
            settings: facts::Settings::default(),
        });
        let id = self.nodes.len() - 1;
        self.node_ids.insert(name.to_string(), id);
        id
    }

    /// What the core has decided so far ([`Tally`]).
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// How long tasks that became Running since the last call took from their creation (their
    /// first attempt only: a restart is not a submission's latency).
    pub fn take_running_latencies(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.running_latencies)
    }

    /// Note that a task created at `created` was first seen Running at `now`.
    pub(super) fn first_running(&mut self, now: Now, created: chrono::DateTime<chrono::Utc>) {
        if self.running_latencies.len() < MAX_RUNNING_LATENCIES
            && let Ok(took) = (now.wall - created).to_std()
        {
            self.running_latencies.push(took);
        }
    }

    /// Effects to carry out, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.flush_releases();
        std::mem::take(&mut self.effects)
    }

    /// Records to commit.
    pub fn take_writes(&mut self) -> Writes {
        let dirty = std::mem::take(&mut self.dirty_tasks);
        // Sized up front: a step after a burst writes tens of thousands of records, and growing
        // a vector of them one doubling at a time copied each record several times.
        let mut writes = Writes {
            tasks: Vec::with_capacity(dirty.len()),
            ..Writes::default()
        };
        for id in dirty {
            if let Some(e) = self.tasks.get_mut(&id) {
                e.dirty = false;
                if e.fresh {
                    e.fresh = false;
                    writes.created.push(id);
                }
                writes.tasks.push((e.key, e.task.clone()));
            }
        }
        for nid in std::mem::take(&mut self.dirty_nodes) {
            let n = &self.nodes[nid];
            writes.nodes.push((n.name.clone(), n.record()));
        }
        writes.forgotten = std::mem::take(&mut self.forgotten);
        writes.collected = std::mem::take(&mut self.collected);
        writes.expired = std::mem::take(&mut self.expired);
        (writes.services, writes.services_removed) = self.take_service_writes();
        writes
    }

    /// These writes failed to commit: write them again with the next ones.
    pub fn unwritten(&mut self, writes: Writes) {
        for (_, task) in writes.tasks {
            self.touch(task.id);
        }
        for id in writes.created {
            if let Some(e) = self.tasks.get_mut(&id) {
                e.fresh = true;
            }
        }
        for (name, _) in writes.nodes {
            if let Some(&nid) = self.node_ids.get(&name) {
                self.dirty_nodes.push(nid);
            }
        }
        for name in writes.forgotten {
            if !self.node_ids.contains_key(&name) {
                self.forgotten.push(name);
            }
        }
        // A collection not written leaves the record in the store: write its removal again
        // (a task restored from that record after a crash is simply collected once more).
        self.collected.extend(writes.collected);
        self.expired.extend(writes.expired);
        for svc in writes.services {
            if let Some(&sid) = self.service_ids.get(&svc.name)
                && !self.service_writes.contains(&sid)
            {
                self.service_writes.push(sid);
            }
        }
        for name in writes.services_removed {
            if !self.service_ids.contains_key(&name) {
                self.services_removed.push(name);
            }
        }
    }

    /// When the core next needs [`Core::tick`].
    pub fn next_timer(&self) -> Option<Duration> {
        self.timers.next()
    }

    pub fn task(&self, id: Uuid) -> Option<&Task> {
        self.tasks.get(&id).map(|e| &e.task)
    }

    /// Task ids in order, from just after `after`.
    pub fn ids_after(&self, after: Option<Uuid>) -> impl Iterator<Item = &Uuid> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.order.by_id.range((start, Bound::Unbounded))
    }

    /// Task ids newest first, with their submission numbers, from just below `before` (all of
    /// them without it).
    pub fn ids_newest_before(&self, before: Option<u64>) -> impl Iterator<Item = (u64, &Uuid)> {
        self.order
            .by_key
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(key, id)| (*key, id))
    }

    /// A task's submission number (its store key): what newest-first listings page by.
    pub fn submission(&self, id: Uuid) -> Option<u64> {
        self.tasks.get(&id).map(|e| e.key)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Every task, in no particular order.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|e| &e.task)
    }

    /// Whether the task holds a reservation with the scheduler, and on which node.
    pub fn reservation(&self, id: Uuid) -> Option<&str> {
        let e = self.tasks.get(&id)?;
        e.reserved
            .then(|| e.node.map(|n| self.nodes[n].name.as_str()))
            .flatten()
    }

    /// Whether anything is still to be done about the task: a call unanswered, a placement
    /// asked, a restart due. The simulation uses it to tell quiescence.
    pub fn busy(&self) -> bool {
        self.asking
            || !self.queue.is_empty()
            || self
                .nodes
                .iter()
                .any(|n| n.calls.values().any(|c| *c == Call::InFlight))
    }

    /// The status of a node by name, as the core sees it.
    pub fn node_status(&self, name: &str) -> Option<NodeStatus> {
        self.node_ids.get(name).map(|&n| self.nodes[n].status)
    }

    /// Every endpoint, and every node no endpoint watches, for `GET /nodes`.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let mut out: Vec<EndpointView> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.forgotten)
            .map(|(i, e)| {
                let bound = e
                    .name
                    .as_ref()
                    .and_then(|n| self.node_ids.get(n))
                    .map(|&nid| &self.nodes[nid])
                    .filter(|n| n.endpoint == Some(i));
                let status = match (&e.refused, bound) {
                    (Some(_), _) => NodeStatus::Refused,
                    (None, Some(n)) => n.status,
                    (None, None) => e.status,
                };
                EndpointView {
                    endpoint: i,
                    address: e.address.clone(),
                    name: e.name.clone(),
                    status,
                    reason: e.refused.clone(),
                    facts: bound.map(Node::info),
                }
            })
            .collect();
        for n in self.known_nodes().filter(|n| n.endpoint.is_none()) {
            out.push(EndpointView {
                endpoint: usize::MAX,
                address: n.address.clone(),
                name: Some(n.name.clone()),
                status: n.status,
                reason: None,
                facts: Some(n.info()),
            });
        }
        out
    }

    /// Every node but the forgotten ones (whose entries stay, unnamed, so ids stay stable).
    fn known_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(nid, n)| self.node_ids.get(&n.name) == Some(nid))
            .map(|(_, n)| n)
    }

    /// Bound nodes and their addresses, known from the store or registered since.
    pub fn bound_addresses(&self) -> Vec<(String, String)> {
        self.known_nodes()
            .filter(|n| !n.address.is_empty())
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect()
    }

    /// A submission (POST /tasks). A new task is acknowledged only once the step's writes are
    /// durable; tell the core with [`Core::submit_committed`].
    pub fn submit(&mut self, now: Now, task: Task) -> Result<Submitted, Refusal> {
        let id = task.id;
        if let Some(tomb) = self.tombstones.get(&id) {
            return Err(Refusal::Collected(Box::new(tomb.clone())));
        }
        if let Some(existing) = self.tasks.get(&id) {
            if !existing.task.same_spec(&task) {
                return Err(Refusal::Conflict(id));
            }
            return Ok(Submitted::Existing(existing.task.clone()));
        }
        let mut task = task;
        task.state = State::Pending;
        task.desired = Goal::Running;
        task.attempt = 0;
        task.restart_count = 0;
        task.worker = None;
        task.container_id = None;
        task.host_ports.clear();
        task.exit_code = None;
        task.error = None;
        task.start_time = None;
        task.finish_time = None;
        task.attempts.clear();
        task.created_at = now.wall;
        let key = self.next_key;
        self.next_key += 1;
        self.order.insert(id, key);
        self.tasks
            .insert(id, Box::new(Entry::new(task.clone(), key)));
        self.count_in(id);
        self.touch(id);
        Ok(Submitted::Created(task))
    }

    /// The writes holding these submissions are durable (`ok`), or failed: place the tasks, or
    /// forget them (nothing was acknowledged).
    pub fn submit_committed(&mut self, ids: &[Uuid], ok: bool) {
        for &id in ids {
            if ok {
                let Some(e) = self.tasks.get_mut(&id) else {
                    continue;
                };
                e.acked = true;
                if e.task.desired == Goal::Running && e.task.state == State::Pending {
                    self.enqueue(id);
                }
            } else if self.tasks.get(&id).is_some_and(|e| !e.acked) {
                self.count_out(id);
                if let Some(e) = self.tasks.remove(&id) {
                    self.order.remove(id, e.key);
                }
            }
        }
        self.kick();
    }

    /// A user's stop (DELETE /tasks/{id}): the task's goal becomes `stopped` for good. It is
    /// Completed once no copy runs; a policy restart never follows.
    pub fn stop(&mut self, now: Now, id: Uuid) -> Result<Task, Refusal> {
        if let Some(tomb) = self.tombstones.get(&id) {
            return Err(Refusal::Collected(Box::new(tomb.clone())));
        }
        let e = self.tasks.get_mut(&id).ok_or(Refusal::NotFound(id))?;
        if e.task.desired != Goal::Stopped && e.task.state != State::Completed {
            info!("task {id}: stop asked for");
            e.task.desired = Goal::Stopped;
            e.restart_at = None;
            e.prefer = None;
            self.touch(id);
        }
        self.reconcile(now, id);
        self.settle(now);
        Ok(self.tasks[&id].task.clone())
    }

    /// Time passed: carry out whatever is due (restarts, retries, resyncs).
    pub fn tick(&mut self, now: Now) {
        while let Some(timer) = self.timers.pop_due(now.mono) {
            match timer {
                Timer::Restart(id) => self.restart_due(now, id),
                Timer::Retry(nid, id) => {
                    let node = &mut self.nodes[nid];
                    let due: Vec<_> = node
                        .calls
                        .iter()
                        .filter(|(k, c)| {
                            k.0 == id && matches!(c, Call::RetryAt(t) if *t <= now.mono)
                        })
                        .map(|(k, _)| *k)
                        .collect();
                    for k in due {
                        node.calls.remove(&k);
                    }
                    self.reconcile(now, id);
                }
                Timer::Resync(nid) => {
                    let node = &self.nodes[nid];
                    if node.status != NodeStatus::Ready {
                        continue;
                    }
                    let due = node.last_full + self.config.resync_interval;
                    if due <= now.mono {
                        if let Some(ep) = node.endpoint {
                            self.effects.push(Effect::Resync(ep));
                        }
                        self.timers
                            .arm(now.mono + self.config.resync_interval, Timer::Resync(nid));
                    } else {
                        self.timers.arm(due, Timer::Resync(nid));
                    }
                }
                Timer::Collect => self.collect(now),
                Timer::Room => {
                    self.room_armed = false;
                    self.retry_waiting();
                }
                Timer::Service(sid) => {
                    self.dirty_services.insert(sid);
                }
                Timer::Unwatched(nid) => {
                    let node = &self.nodes[nid];
                    if node.endpoint.is_none() && node.status == NodeStatus::Connecting {
                        warn!(
                            "worker {} (known from the store) is not watched by any address",
                            node.name
                        );
                        self.node_lost(now, nid);
                    }
                }
            }
        }
        self.settle(now);
    }
}

impl Entry {
    fn new(task: Task, key: u64) -> Entry {
        Entry {
            task,
            key,
            acked: false,
            placing: Placing::No,
            reserved: false,
            node: None,
            prefer: None,
            restart_at: None,
            restarting: false,
            health_failures: 0,
            watched: false,
            healthy: false,
            copies: Vec::new(),
            dirty: false,
            fresh: true,
            counted: State::Pending,
            ended: None,
        }
    }
}

mod facts;
pub use facts::{MAX_DRAIN_DEADLINE, NodeChange, NodeInfo, NodeRecord};
mod nodes;
mod placement;
mod reports;
mod retention;
pub use retention::is_final;
mod rules;
mod services;
pub use services::ServiceRefusal;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
