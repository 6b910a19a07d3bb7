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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use log::{debug, info, warn};
use uuid::Uuid;

use crate::actors::client::CallError;
use crate::actors::policy::Resources;
use crate::actors::scheduler::{NoFit, PlaceRequest};
use crate::clock::{Now, Timers, backoff};
use crate::node::NodeStatus;
use crate::sim::planted::{Bug, planted};
use crate::task::{Goal, RestartPolicy, State, Task};

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
}

/// Default time between full reports of a worker.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Default wait before a call that failed in transport is sent again.
pub const DEFAULT_CALL_RETRY: Duration = Duration::from_millis(500);
/// Default size of a placement batch.
pub const DEFAULT_PLACE_BATCH: usize = 8192;

impl Config {
    pub fn new(node_timeout: Duration) -> Config {
        Config {
            node_timeout,
            call_retry: DEFAULT_CALL_RETRY,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            place_batch: DEFAULT_PLACE_BATCH,
        }
    }
}

/// The shell's handle on one worker endpoint (one WorkerProxy).
pub type EndpointId = usize;
type NodeId = usize;

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Book these reservations without choosing (the scheduler's book after a restart).
    Restore(Vec<(Uuid, String, Resources)>),
    /// Ask the scheduler where these tasks go; the answer comes back as [`Core::placed`].
    Place(Vec<PlaceRequest>),
    /// Give these tasks' reservations back to the scheduler.
    Release(Vec<Uuid>),
    /// Tell the scheduler a node takes placements, or no longer does.
    NodeReady { name: String, ready: bool },
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
}

/// Records changed by the inputs since the last [`Core::take_writes`], to commit.
#[derive(Debug, Default)]
pub struct Writes {
    /// (store key, record).
    pub tasks: Vec<(u64, Task)>,
    /// (name, address).
    pub nodes: Vec<(String, String)>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.nodes.is_empty()
    }
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
    /// What each worker last said about its copy.
    copies: Vec<(NodeId, Seen)>,
    dirty: bool,
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
}

struct Endpoint {
    address: String,
    name: Option<String>,
    /// Liveness as the endpoint's proxy reports it: Connecting, Ready or Down.
    status: NodeStatus,
    refused: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Restart(Uuid),
    Retry(NodeId, Uuid),
    Resync(NodeId),
    /// A node known only from the store, with no endpoint watching it.
    Unwatched(NodeId),
}

/// A row of `GET /nodes`, as far as the core knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView {
    pub endpoint: EndpointId,
    pub address: String,
    pub name: Option<String>,
    pub status: NodeStatus,
    pub reason: Option<String>,
}

pub struct Core {
    config: Config,
    tasks: HashMap<Uuid, Entry>,
    /// Every task id, in order, for listings and deterministic walks.
    order: BTreeSet<Uuid>,
    next_key: u64,
    nodes: Vec<Node>,
    node_ids: HashMap<String, NodeId>,
    endpoints: Vec<Endpoint>,
    queue: VecDeque<Uuid>,
    waiting: VecDeque<Uuid>,
    /// A placement request is with the scheduler.
    asking: bool,
    /// Room appeared while a request was out: its "fits nowhere" answers may be stale.
    room_while_asking: bool,
    timers: Timers<Timer>,
    effects: Vec<Effect>,
    dirty_tasks: Vec<Uuid>,
    dirty_nodes: Vec<NodeId>,
    /// Reservations to give back, sent as one effect.
    releases: Vec<Uuid>,
}

impl Core {
    /// A core with what the store holds: task records under their keys, and bound nodes. Tasks
    /// placed before are booked again, accepted ones queued, stops and restarts carried on.
    pub fn recover(
        config: Config,
        now: Now,
        records: Vec<(u64, Task)>,
        nodes: Vec<(String, String)>,
    ) -> Core {
        let mut core = Core {
            config,
            tasks: HashMap::with_capacity(records.len()),
            order: BTreeSet::new(),
            next_key: 0,
            nodes: Vec::new(),
            node_ids: HashMap::new(),
            endpoints: Vec::new(),
            queue: VecDeque::new(),
            waiting: VecDeque::new(),
            asking: false,
            room_while_asking: false,
            timers: Timers::default(),
            effects: Vec::new(),
            dirty_tasks: Vec::new(),
            dirty_nodes: Vec::new(),
            releases: Vec::new(),
        };
        for (name, address) in nodes {
            let id = core.node_id(&name);
            core.nodes[id].address = address;
        }
        let mut restore = Vec::new();
        for (key, task) in records {
            core.next_key = core.next_key.max(key + 1);
            let id = task.id;
            let mut entry = Entry::new(task, key);
            entry.acked = true;
            if entry.task.state.is_active()
                && let Some(worker) = entry.task.worker.clone()
            {
                let nid = core.node_id(&worker);
                core.nodes[nid].placed.insert(id);
                entry.node = Some(nid);
                entry.reserved = true;
                restore.push((id, worker, resources(&entry.task)));
            }
            core.order.insert(id);
            core.tasks.insert(id, entry);
        }
        core.effects.push(Effect::Restore(restore));
        // Every node starts unwatched until an endpoint claims it; one that none does in a
        // node timeout is Down.
        for nid in 0..core.nodes.len() {
            core.timers
                .arm(now.mono + core.config.node_timeout, Timer::Unwatched(nid));
        }
        let ids: Vec<Uuid> = core.order.iter().copied().collect();
        for id in ids {
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
        });
        let id = self.nodes.len() - 1;
        self.node_ids.insert(name.to_string(), id);
        id
    }

    // ---- what the shell reads -------------------------------------------------------------

    /// Effects to carry out, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.flush_releases();
        std::mem::take(&mut self.effects)
    }

    /// Records to commit.
    pub fn take_writes(&mut self) -> Writes {
        let mut writes = Writes::default();
        for id in std::mem::take(&mut self.dirty_tasks) {
            if let Some(e) = self.tasks.get_mut(&id) {
                e.dirty = false;
                writes.tasks.push((e.key, e.task.clone()));
            }
        }
        for nid in std::mem::take(&mut self.dirty_nodes) {
            let n = &self.nodes[nid];
            writes.nodes.push((n.name.clone(), n.address.clone()));
        }
        writes
    }

    /// These writes failed to commit: write them again with the next ones.
    pub fn unwritten(&mut self, writes: Writes) {
        for (_, task) in writes.tasks {
            self.touch(task.id);
        }
        for (name, _) in writes.nodes {
            if let Some(&nid) = self.node_ids.get(&name) {
                self.dirty_nodes.push(nid);
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
        self.order.range((start, Bound::Unbounded))
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
                }
            })
            .collect();
        for n in self.nodes.iter().filter(|n| n.endpoint.is_none()) {
            out.push(EndpointView {
                endpoint: usize::MAX,
                address: n.address.clone(),
                name: Some(n.name.clone()),
                status: n.status,
                reason: None,
            });
        }
        out
    }

    /// Bound nodes and their addresses, known from the store or registered since.
    pub fn bound_addresses(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|n| !n.address.is_empty())
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect()
    }

    // ---- inputs: users --------------------------------------------------------------------

    /// A submission (POST /tasks). A new task is acknowledged only once the step's writes are
    /// durable; tell the core with [`Core::submit_committed`].
    pub fn submit(&mut self, now: Now, task: Task) -> Result<Submitted, Refusal> {
        let id = task.id;
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
        task.created_at = now.wall;
        let key = self.next_key;
        self.next_key += 1;
        self.order.insert(id);
        self.tasks.insert(id, Entry::new(task.clone(), key));
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
                self.tasks.remove(&id);
                self.order.remove(&id);
            }
        }
        self.kick();
    }

    /// A user's stop (DELETE /tasks/{id}): the task's goal becomes `stopped` for good. It is
    /// Completed once no copy runs; a policy restart never follows.
    pub fn stop(&mut self, now: Now, id: Uuid) -> Result<Task, Refusal> {
        let e = self.tasks.get_mut(&id).ok_or(Refusal::NotFound(id))?;
        if e.task.desired != Goal::Stopped && e.task.state != State::Completed {
            info!("task {id}: stop asked for");
            e.task.desired = Goal::Stopped;
            e.restart_at = None;
            e.prefer = None;
            self.touch(id);
        }
        self.reconcile(now, id);
        self.kick();
        Ok(self.tasks[&id].task.clone())
    }

    // ---- inputs: the scheduler ------------------------------------------------------------

    /// The scheduler's answer to a [`Effect::Place`].
    pub fn placed(&mut self, now: Now, placements: Vec<(Uuid, Result<String, NoFit>)>) {
        self.asking = false;
        // Room announced while the scheduler chose may have overtaken this answer.
        let retry = std::mem::take(&mut self.room_while_asking);
        for (id, result) in placements {
            let Some(e) = self.tasks.get_mut(&id) else {
                if result.is_ok() {
                    self.releases.push(id);
                }
                continue;
            };
            let wanted = e.placing == Placing::Asked && e.task.desired == Goal::Running;
            if e.placing == Placing::Asked {
                e.placing = Placing::No;
            }
            match result {
                Ok(_) if !wanted => {
                    // Stopped (or placed) while the scheduler chose: give the booking back.
                    self.releases.push(id);
                }
                Ok(name) => {
                    let nid = self.node_id(&name);
                    if self.nodes[nid].status != NodeStatus::Ready {
                        // The node went Down after the scheduler chose it.
                        self.releases.push(id);
                        self.enqueue(id);
                        continue;
                    }
                    self.assign(now, id, nid);
                }
                Err(NoFit(reason)) if wanted => {
                    // The reason is live information, worked out again after a restart: it is
                    // not written, so a full cluster costs no commit per waiting task.
                    let e = self.tasks.get_mut(&id).expect("looked up above");
                    if e.task.error.as_deref() != Some(reason.as_str()) {
                        debug!("task {id}: {reason}");
                        e.task.error = Some(reason);
                    }
                    e.placing = Placing::Waiting;
                    self.waiting.push_back(id);
                }
                Err(_) => {}
            }
        }
        if retry {
            self.capacity_available();
        }
        self.kick();
    }

    /// The scheduler could not be asked; put the tasks back in the queue.
    pub fn place_failed(&mut self, ids: &[Uuid]) {
        self.asking = false;
        for &id in ids {
            if let Some(e) = self.tasks.get_mut(&id)
                && e.placing == Placing::Asked
            {
                e.placing = Placing::No;
                self.enqueue(id);
            }
        }
    }

    /// Room may have appeared: tasks that fit nowhere are worth another try.
    pub fn capacity_available(&mut self) {
        if self.asking {
            self.room_while_asking = true;
        }
        while let Some(id) = self.waiting.pop_front() {
            if let Some(e) = self.tasks.get_mut(&id)
                && e.placing == Placing::Waiting
            {
                e.placing = Placing::No;
                self.enqueue(id);
            }
        }
        self.kick();
    }

    /// A task placed on `nid`: the next attempt, Scheduled there, to be started.
    fn assign(&mut self, now: Now, id: Uuid, nid: NodeId) {
        let name = self.nodes[nid].name.clone();
        let e = self.tasks.get_mut(&id).expect("assign on a known task");
        if let Err(err) = e.task.transition(State::Scheduled, now.wall) {
            warn!("manager: task {id}: {err}");
            self.releases.push(id);
            return;
        }
        e.task.attempt += 1;
        if std::mem::take(&mut e.restarting) {
            e.task.restart_count += 1;
        }
        e.task.worker = Some(name.clone());
        e.task.container_id = None;
        e.task.host_ports.clear();
        e.task.exit_code = None;
        e.task.error = None;
        e.task.start_time = None;
        e.task.finish_time = None;
        e.reserved = true;
        e.node = Some(nid);
        e.prefer = None;
        e.health_failures = 0;
        info!("task {id} attempt {} Scheduled on {name}", e.task.attempt);
        self.nodes[nid].placed.insert(id);
        self.touch(id);
        self.reconcile(now, id);
    }

    // ---- inputs: workers ------------------------------------------------------------------

    /// The shell watches a worker at `address` (a WorkerProxy). A node bound to that address
    /// in the store is watched by it from now on.
    pub fn add_endpoint(&mut self, address: &str) -> EndpointId {
        if let Some(i) = self.endpoints.iter().position(|e| e.address == address) {
            return i;
        }
        let id = self.endpoints.len();
        let bound = self
            .nodes
            .iter()
            .position(|n| n.address == address && n.endpoint.is_none());
        self.endpoints.push(Endpoint {
            address: address.to_string(),
            name: bound.map(|n| self.nodes[n].name.clone()),
            status: NodeStatus::Connecting,
            refused: None,
        });
        if let Some(nid) = bound {
            self.nodes[nid].endpoint = Some(id);
        }
        id
    }

    /// The worker at `endpoint` answers, as `name` (its first answer, or its first since it was
    /// Down, or a new name). Registers the name, or refuses it when another live address holds
    /// it.
    pub fn node_up(&mut self, now: Now, endpoint: EndpointId, name: &str) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        ep.status = NodeStatus::Ready;
        if ep.name.as_deref() != Some(name)
            && let Some(old) = ep.name.replace(name.to_string())
            && let Some(&old_id) = self.node_ids.get(&old)
            && self.nodes[old_id].endpoint == Some(endpoint)
        {
            self.nodes[old_id].endpoint = None;
            warn!(
                "the worker at {} now answers as {name}, no longer as {old}",
                self.endpoints[endpoint].address
            );
            self.node_lost(now, old_id);
        }
        let nid = self.node_id(name);
        if let Some(other) = self.nodes[nid].endpoint
            && other != endpoint
            && self.endpoints[other].status != NodeStatus::Down
        {
            let reason = format!(
                "the name {name} is bound to the worker at {}, which still answers; give each worker its own --name",
                self.endpoints[other].address
            );
            if self.endpoints[endpoint].refused.as_ref() != Some(&reason) {
                warn!(
                    "worker at {} refused: {reason}",
                    self.endpoints[endpoint].address
                );
                self.effects.push(Effect::Refused {
                    endpoint,
                    reason: reason.clone(),
                });
            }
            self.endpoints[endpoint].refused = Some(reason);
            return;
        }
        self.endpoints[endpoint].refused = None;
        let address = self.endpoints[endpoint].address.clone();
        let node = &mut self.nodes[nid];
        if let Some(other) = node.endpoint.replace(endpoint)
            && other != endpoint
        {
            info!("worker {name} moves from {} to {address}", node.address);
            self.endpoints[other].name = None;
        }
        if node.address != address {
            node.address = address;
            self.dirty_nodes.push(nid);
        }
        self.effects.push(Effect::Registered {
            endpoint,
            name: name.to_string(),
        });
        if self.nodes[nid].status != NodeStatus::Ready {
            info!("worker {name} at {} is Ready", self.nodes[nid].address);
            let node = &mut self.nodes[nid];
            node.status = NodeStatus::Ready;
            node.synced = false;
            node.calls.clear();
            self.effects.push(Effect::NodeReady {
                name: name.to_string(),
                ready: true,
            });
            self.effects.push(Effect::Resync(endpoint));
            // Each node's resyncs keep a phase of their own, so thousands of nodes that came
            // up together do not all send their full reports at the same moment.
            let phase = self.config.resync_interval.mul_f64(spread(nid));
            self.timers.arm(
                now.mono + self.config.resync_interval + phase,
                Timer::Resync(nid),
            );
            let touched: BTreeSet<Uuid> = self.nodes[nid]
                .placed
                .union(&self.nodes[nid].seen)
                .copied()
                .collect();
            for id in touched {
                self.reconcile(now, id);
            }
        }
        self.kick();
    }

    /// The worker at `endpoint` has been silent for the node timeout.
    pub fn node_down(&mut self, now: Now, endpoint: EndpointId) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        ep.status = NodeStatus::Down;
        let Some(name) = ep.name.clone() else {
            return;
        };
        if ep.refused.is_some() {
            return;
        }
        let nid = self.node_id(&name);
        if self.nodes[nid].endpoint != Some(endpoint) {
            return;
        }
        self.node_lost(now, nid);
        // A live worker refused this name may take it now.
        let claimant = self.endpoints.iter().position(|e| {
            e.refused.is_some() && e.status == NodeStatus::Ready && e.name.as_deref() == Some(&name)
        });
        if let Some(c) = claimant {
            self.node_up(now, c, &name);
        }
        self.kick();
    }

    /// A node is gone: its tasks run elsewhere (as new attempts, not restarts), its stopped
    /// tasks are done. Whatever it still runs is stopped when it reports again.
    fn node_lost(&mut self, now: Now, nid: NodeId) {
        let node = &mut self.nodes[nid];
        if node.status == NodeStatus::Down {
            return;
        }
        warn!("worker {} is Down; moving its tasks", node.name);
        node.status = NodeStatus::Down;
        node.synced = false;
        node.calls.clear();
        self.effects.push(Effect::NodeReady {
            name: node.name.clone(),
            ready: false,
        });
        let placed: Vec<Uuid> = node.placed.iter().copied().collect();
        for id in placed {
            self.reconcile(now, id);
        }
    }

    /// A worker's change feed: its latest record of each task that changed, or of every task it
    /// has when `full`; `restarted` when it comes from a new process of the worker.
    pub fn report(
        &mut self,
        now: Now,
        endpoint: EndpointId,
        full: bool,
        restarted: bool,
        tasks: Vec<Task>,
    ) {
        let Some(nid) = self.bound_node(endpoint) else {
            // Not registered (yet): once it is, its first report must be full.
            self.effects.push(Effect::Resync(endpoint));
            return;
        };
        if self.nodes[nid].status != NodeStatus::Ready {
            self.effects.push(Effect::Resync(endpoint));
            return;
        }
        let mut touched: BTreeSet<Uuid> = BTreeSet::new();
        for task in tasks {
            touched.insert(task.id);
            self.observe(now, nid, task);
        }
        if full {
            let node = &self.nodes[nid];
            let gone: Vec<Uuid> = node
                .seen
                .iter()
                .filter(|id| !touched.contains(id))
                .filter(|&&id| {
                    // A start under way may have reached the worker after it wrote the report.
                    node.calls
                        .range((id, 0, CallKind::Start)..=(id, u32::MAX, CallKind::Stop))
                        .all(|(&(_, _, kind), call)| {
                            !(kind == CallKind::Start && *call == Call::InFlight)
                        })
                })
                .copied()
                .collect();
            for id in gone {
                self.forget_copy(nid, id);
                touched.insert(id);
            }
            let node = &mut self.nodes[nid];
            node.synced = true;
            let asked_after = node.last_full;
            node.last_full = now.mono;
            node.calls.retain(|_, c| match c {
                Call::Acked(at) => !restarted && *at >= asked_after,
                _ => true,
            });
            touched.extend(node.placed.iter().copied());
        }
        for id in touched {
            self.reconcile(now, id);
        }
        self.kick();
    }

    /// The outcome of a [`Effect::Start`] or [`Effect::Stop`] on `node`: what the worker then
    /// had of the task (its record's attempt and state), or why the call failed. The record
    /// itself comes with the worker's change feed.
    pub fn call_done(
        &mut self,
        now: Now,
        node: &str,
        call: (Uuid, u32, CallKind),
        outcome: Result<Seen, CallError>,
    ) {
        let Some(&nid) = self.node_ids.get(node) else {
            return;
        };
        let (id, attempt, kind) = call;
        // What the worker's answer proves gone: this attempt of the task, on this node.
        let gone = Seen {
            attempt,
            state: State::Completed,
        };
        match (kind, outcome) {
            (_, Err(CallError::Transport(reason))) => {
                debug!("{kind:?} of task {id} attempt {attempt} on {node} failed: {reason}");
                self.retry_later(now, nid, call);
            }
            (CallKind::Start, Ok(seen)) => {
                self.settle_call(nid, call, Call::Acked(now.mono));
                self.merge_seen(nid, id, seen);
            }
            (CallKind::Start, Err(CallError::Stale(_) | CallError::NotFound(_))) => {
                // The worker fenced this attempt (it was stopped there, or a newer one runs);
                // its feed says what it has.
                self.settle_call(nid, call, Call::Acked(now.mono));
            }
            (CallKind::Start, Err(CallError::Rejected { message, .. })) => {
                self.settle_call(nid, call, Call::Acked(now.mono));
                let current = self.tasks.get(&id).is_some_and(|e| {
                    e.node == Some(nid) && e.task.attempt == attempt && e.task.state.is_active()
                });
                if current {
                    let why = format!("the worker refused to start it: {message}");
                    self.attempt_ended(now, id, State::Failed, Some(why));
                }
            }
            (CallKind::Stop, Ok(seen)) => {
                self.settle_call(nid, call, Call::Acked(now.mono));
                self.merge_seen(nid, id, seen);
                if seen.attempt < attempt {
                    // The worker fenced every attempt up to this one and has only an older
                    // one: this attempt never ran there, and never will.
                    self.merge_seen(nid, id, gone);
                }
            }
            (CallKind::Stop, Err(CallError::NotFound(_) | CallError::Stale(_))) => {
                // Nothing of this attempt (or older) runs there: the worker knows no such task,
                // or runs a newer attempt only.
                self.settle_call(nid, call, Call::Acked(now.mono));
                self.merge_seen(nid, id, gone);
            }
            (CallKind::Stop, Err(CallError::Rejected { message, .. })) => {
                warn!("worker {node} refused to stop task {id} attempt {attempt}: {message}");
                self.retry_later(now, nid, call);
            }
        }
        self.reconcile(now, id);
        self.kick();
    }

    /// The result of one health check of an attempt.
    pub fn health_checked(&mut self, now: Now, id: Uuid, attempt: u32, result: Result<(), String>) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.task.attempt != attempt
            || e.task.state != State::Running
            || e.task.desired != Goal::Running
        {
            return;
        }
        match result {
            Ok(()) => e.health_failures = 0,
            Err(reason) => {
                e.health_failures += 1;
                debug!(
                    "task {id}: health check {} failed: {reason}",
                    e.health_failures
                );
                if e.health_failures >= HEALTH_FAILURES_TO_RESTART {
                    warn!("task {id} attempt {attempt} is unhealthy: {reason}");
                    let reason = format!(
                        "health check failed {HEALTH_FAILURES_TO_RESTART} times in a row: {reason}"
                    );
                    self.attempt_ended(now, id, State::Failed, Some(reason));
                    if let Some(e) = self.tasks.get_mut(&id) {
                        e.task.exit_code = None;
                    }
                    self.reconcile(now, id);
                    self.kick();
                }
            }
        }
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
        self.kick();
    }

    // ---- the rules ------------------------------------------------------------------------

    fn bound_node(&self, endpoint: EndpointId) -> Option<NodeId> {
        let ep = self.endpoints.get(endpoint)?;
        if ep.refused.is_some() {
            return None;
        }
        let nid = *self.node_ids.get(ep.name.as_ref()?)?;
        (self.nodes[nid].endpoint == Some(endpoint)).then_some(nid)
    }

    /// Record what a worker says about its copy of a task, and apply it to the record when it
    /// is about the current attempt.
    fn observe(&mut self, now: Now, nid: NodeId, report: Task) {
        let id = report.id;
        let seen = Seen {
            attempt: report.attempt,
            state: report.state,
        };
        if !self.tasks.contains_key(&id) {
            // A copy of a task the manager does not know: it must not run.
            if seen.state.is_active() {
                info!(
                    "task {id}: worker {} runs attempt {} of a task unknown here; stopping it",
                    self.nodes[nid].name, seen.attempt
                );
                self.ensure_call(now, nid, id, seen.attempt, CallKind::Stop, None);
            }
            return;
        }
        let stale_as_current = planted(Bug::StaleReportIsCurrent)
            && self.tasks[&id].node == Some(nid)
            && seen.attempt < self.tasks[&id].task.attempt;
        if !self.merge_seen(nid, id, seen) && !stale_as_current {
            return;
        }
        let e = self.tasks.get_mut(&id).expect("checked above");
        let current = e.node == Some(nid)
            && (e.task.attempt == seen.attempt || stale_as_current)
            && e.task.state.is_active();
        if !current {
            return;
        }
        let t = &mut e.task;
        let mut changed = false;
        macro_rules! take {
            ($field:ident) => {
                if t.$field != report.$field {
                    t.$field = report.$field.clone();
                    changed = true;
                }
            };
        }
        take!(container_id);
        take!(host_ports);
        take!(exit_code);
        if report.start_time.is_some() {
            take!(start_time);
        }
        if report.finish_time.is_some() {
            take!(finish_time);
        }
        match report.state {
            State::Running if t.state == State::Scheduled => {
                let _ = t.transition(State::Running, now.wall);
                if let Some(start) = report.start_time {
                    t.start_time = Some(start);
                }
                t.error = None;
                info!(
                    "task {id} attempt {} Running on {}",
                    t.attempt, self.nodes[nid].name
                );
                changed = true;
            }
            State::Completed | State::Failed => {
                let error = report.error.clone();
                self.attempt_ended(now, id, report.state, error);
                return;
            }
            _ => {}
        }
        if changed {
            self.touch(id);
        }
        self.update_health_watch(id);
    }

    /// Merge news about a worker's copy; false when it is older than what is known.
    fn merge_seen(&mut self, nid: NodeId, id: Uuid, seen: Seen) -> bool {
        let Some(e) = self.tasks.get_mut(&id) else {
            return false;
        };
        match e.copies.iter_mut().find(|(n, _)| *n == nid) {
            Some((_, old)) if !old.superseded_by(seen) => return false,
            Some((_, old)) => *old = seen,
            None => {
                e.copies.push((nid, seen));
                self.nodes[nid].seen.insert(id);
            }
        }
        true
    }

    fn forget_copy(&mut self, nid: NodeId, id: Uuid) {
        self.nodes[nid].seen.remove(&id);
        if let Some(e) = self.tasks.get_mut(&id) {
            e.copies.retain(|(n, _)| *n != nid);
        }
    }

    /// The current attempt's container ended (or it could not start, or failed its health
    /// checks): give its reservation back, then finish the task or plan its restart.
    fn attempt_ended(&mut self, now: Now, id: Uuid, state: State, error: Option<String>) {
        self.unplace(id);
        let e = self
            .tasks
            .get_mut(&id)
            .expect("attempt_ended on a known task");
        let node = e.task.worker.clone().unwrap_or_default();
        e.task.error = error;
        if e.task.desired == Goal::Stopped {
            let _ = e.task.transition(State::Completed, now.wall);
            info!("task {id} stopped: Completed");
            self.touch(id);
            return;
        }
        let policy_restarts = match e.task.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => state == State::Failed,
            RestartPolicy::Always => true,
        };
        let restarts = policy_restarts && e.task.restart_count < e.task.max_restarts;
        if state == State::Completed && restarts {
            // Completed is final, so an `always` task that exited 0 waits for its restart in
            // Pending, with the reason.
            let _ = e.task.transition(State::Scheduled, now.wall);
            let _ = e.task.transition(State::Pending, now.wall);
            e.task.finish_time = Some(now.wall);
        } else if let Err(err) = e.task.transition(state, now.wall) {
            warn!("manager: task {id}: {err}");
        }
        info!(
            "task {id} attempt {} {} on {node}{}",
            e.task.attempt,
            if state == State::Completed && restarts {
                "ended"
            } else {
                e.task.state.as_str()
            },
            e.task
                .error
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        if restarts {
            self.plan_restart(now, id);
        } else if policy_restarts {
            info!(
                "task {id}: no restarts left ({} of {})",
                e.task.restart_count, e.task.max_restarts
            );
        }
        self.touch(id);
    }

    /// Arm the restart of a task that ended, after the backoff of its restart count.
    fn plan_restart(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        let policy_restarts = match e.task.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => e.task.state == State::Failed,
            RestartPolicy::Always => true,
        };
        if !policy_restarts || e.task.restart_count >= e.task.max_restarts {
            return;
        }
        let delay = restart_backoff(e.task.restart_count);
        let note = format!(
            "restart {} of {} in {:.0?}",
            e.task.restart_count + 1,
            e.task.max_restarts,
            delay
        );
        if e.task.state == State::Pending {
            let why = e
                .task
                .exit_code
                .map_or("ended".to_string(), |c| format!("exited with code {c}"));
            e.task.error = Some(format!("{why}; restart policy always: {note}"));
        }
        info!("task {id}: {note}");
        e.restart_at = Some(now.mono + delay);
        self.timers.arm(now.mono + delay, Timer::Restart(id));
    }

    fn restart_due(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.restart_at.is_none_or(|at| at > now.mono)
            || e.task.desired != Goal::Running
            || !matches!(e.task.state, State::Failed | State::Pending)
        {
            return;
        }
        e.restart_at = None;
        e.restarting = true;
        e.prefer = e.task.worker.clone();
        self.enqueue(id);
    }

    /// Give back the task's reservation and take it off its node's placed list.
    fn unplace(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.reserved {
            e.reserved = false;
            self.releases.push(id);
        }
        if let Some(nid) = e.node.take() {
            self.nodes[nid].placed.remove(&id);
        }
        self.update_health_watch(id);
    }

    /// The stop of a task is carried out: Completed.
    fn finish_stopped(&mut self, now: Now, id: Uuid) {
        self.unplace(id);
        let e = self
            .tasks
            .get_mut(&id)
            .expect("finish_stopped on a known task");
        e.restart_at = None;
        if e.placing != Placing::No {
            e.placing = Placing::No;
        }
        if e.task.state != State::Completed {
            if e.task.state == State::Pending {
                e.task.error = None;
            }
            let _ = e.task.transition(State::Completed, now.wall);
            info!("task {id} stopped: Completed");
            self.touch(id);
        }
    }

    /// The task's worker is Down: place it elsewhere, as a new attempt (not a restart).
    fn move_away(&mut self, now: Now, id: Uuid) {
        let node = self.tasks[&id].task.worker.clone().unwrap_or_default();
        self.unplace(id);
        let e = self.tasks.get_mut(&id).expect("move_away on a known task");
        if e.task.state == State::Running {
            let _ = e.task.transition(State::Scheduled, now.wall);
        }
        let _ = e.task.transition(State::Pending, now.wall);
        e.task.worker = None;
        e.task.container_id = None;
        e.task.host_ports.clear();
        e.task.error = Some(format!("worker {node} was lost; placing it elsewhere"));
        info!("task {id}: worker {node} lost, moving it");
        self.touch(id);
        self.enqueue(id);
    }

    /// Compare what should run of the task with what its workers report, and act on any
    /// difference. Called for every task an input touches; idempotent.
    pub fn reconcile(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get(&id) else {
            return;
        };
        let goal = e.task.desired;
        let state = e.task.state;
        let attempt = e.task.attempt;
        let node = e.node;
        let desired = match (goal, state.is_active(), node) {
            (Goal::Running, true, Some(n)) => Some((n, attempt)),
            _ => None,
        };
        // Any live copy but the desired one is stopped.
        let stray: Vec<(NodeId, u32)> = e
            .copies
            .iter()
            .filter(|(n, s)| s.state.is_active() && Some((*n, s.attempt)) != desired)
            .map(|(n, s)| (*n, s.attempt))
            .collect();
        for (n, a) in stray {
            self.ensure_call(now, n, id, a, CallKind::Stop, None);
        }
        // A task not placed anywhere while stopped is done.
        if goal == Goal::Stopped && !state.is_active() {
            if state != State::Completed {
                self.finish_stopped(now, id);
            }
            return;
        }
        let Some(nid) = node else {
            return;
        };
        match goal {
            Goal::Stopped => {
                if self.nodes[nid].status == NodeStatus::Down || self.copy_gone(nid, id, attempt) {
                    self.finish_stopped(now, id);
                } else {
                    self.ensure_call(now, nid, id, attempt, CallKind::Stop, None);
                }
            }
            Goal::Running => {
                if self.nodes[nid].status == NodeStatus::Down {
                    self.move_away(now, id);
                } else if !self.observed(nid, id, attempt) {
                    let task = self.tasks[&id].task.clone();
                    self.ensure_call(now, nid, id, attempt, CallKind::Start, Some(task));
                }
            }
        }
    }

    /// Whether the worker reported this attempt (or a later one) of the task.
    fn observed(&self, nid: NodeId, id: Uuid, attempt: u32) -> bool {
        self.tasks[&id]
            .copies
            .iter()
            .any(|(n, s)| *n == nid && s.attempt >= attempt)
    }

    /// Whether the worker reported this attempt gone: ended, superseded, or absent from a full
    /// report with no start of it under way.
    fn copy_gone(&self, nid: NodeId, id: Uuid, attempt: u32) -> bool {
        match self.tasks[&id].copies.iter().find(|(n, _)| *n == nid) {
            Some((_, s)) => s.attempt > attempt || (s.attempt == attempt && s.state.is_finished()),
            None => {
                let node = &self.nodes[nid];
                node.synced
                    && node.calls.get(&(id, attempt, CallKind::Start)) != Some(&Call::InFlight)
            }
        }
    }

    /// Send a start or stop unless one is under way, taken, or waiting for its retry.
    fn ensure_call(
        &mut self,
        now: Now,
        nid: NodeId,
        id: Uuid,
        attempt: u32,
        kind: CallKind,
        task: Option<Task>,
    ) {
        let node = &mut self.nodes[nid];
        if node.status != NodeStatus::Ready {
            return;
        }
        let Some(endpoint) = node.endpoint else {
            return;
        };
        match node.calls.get(&(id, attempt, kind)) {
            Some(Call::InFlight | Call::Acked(_)) => return,
            Some(Call::RetryAt(at)) if *at > now.mono => return,
            _ => {}
        }
        node.calls.insert((id, attempt, kind), Call::InFlight);
        let name = node.name.clone();
        match (kind, task) {
            (CallKind::Start, Some(task)) => {
                debug!("task {id}: starting attempt {attempt} on {name}");
                self.effects.push(Effect::Start {
                    endpoint,
                    node: name,
                    task: Box::new(task),
                })
            }
            _ => {
                info!("task {id}: stopping attempt {attempt} on {name}");
                self.effects.push(Effect::Stop {
                    endpoint,
                    node: name,
                    id,
                    attempt,
                })
            }
        }
    }

    fn settle_call(&mut self, nid: NodeId, key: (Uuid, u32, CallKind), to: Call) {
        if let Some(c) = self.nodes[nid].calls.get_mut(&key) {
            *c = to;
        }
    }

    fn retry_later(&mut self, now: Now, nid: NodeId, key: (Uuid, u32, CallKind)) {
        let at = now.mono + self.config.call_retry;
        if let Some(call) = self.nodes[nid].calls.get_mut(&key) {
            *call = Call::RetryAt(at);
            self.timers.arm(at, Timer::Retry(nid, key.0));
        }
    }

    /// Keep health checks in line with the task: checked while Running, not otherwise.
    fn update_health_watch(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get(&id) else {
            return;
        };
        let url = (e.task.state == State::Running && e.task.desired == Goal::Running)
            .then(|| {
                let path = e.task.health_check.as_ref()?;
                let port = e.task.health_port()?;
                let host_port = e.task.host_ports.get(port)?;
                let address = &self.nodes[e.node?].address;
                // In-process workers have no network address to check.
                let (host, _) = address.rsplit_once(':')?;
                Some(format!("http://{host}:{host_port}{path}"))
            })
            .flatten();
        let e = self.tasks.get_mut(&id).expect("looked up above");
        match url {
            Some(url) => {
                if !e.watched {
                    e.watched = true;
                    e.health_failures = 0;
                    self.effects.push(Effect::Watch {
                        id,
                        attempt: e.task.attempt,
                        url,
                    });
                }
            }
            None => {
                if e.watched {
                    e.watched = false;
                    self.effects.push(Effect::Unwatch(id));
                }
            }
        }
    }

    fn enqueue(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if !e.acked || e.task.desired != Goal::Running || e.placing != Placing::No {
            return;
        }
        e.placing = Placing::Queued;
        self.queue.push_back(id);
    }

    /// Ask the scheduler to place the queue unless a request is out (its answer calls back).
    fn kick(&mut self) {
        self.flush_releases();
        if self.asking {
            return;
        }
        let mut batch = Vec::new();
        while batch.len() < self.config.place_batch {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let Some(e) = self.tasks.get_mut(&id) else {
                continue;
            };
            if e.placing != Placing::Queued {
                continue;
            }
            if e.task.desired != Goal::Running || e.task.state.is_active() {
                e.placing = Placing::No;
                continue;
            }
            e.placing = Placing::Asked;
            batch.push(PlaceRequest {
                id,
                resources: resources(&e.task),
                prefer: e.prefer.clone(),
            });
        }
        if !batch.is_empty() {
            self.asking = true;
            self.effects.push(Effect::Place(batch));
        }
    }

    fn flush_releases(&mut self) {
        if !self.releases.is_empty() {
            let ids = std::mem::take(&mut self.releases);
            self.effects.push(Effect::Release(ids));
        }
    }

    fn touch(&mut self, id: Uuid) {
        if let Some(e) = self.tasks.get_mut(&id)
            && !e.dirty
        {
            e.dirty = true;
            self.dirty_tasks.push(id);
        }
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
            copies: Vec::new(),
            dirty: false,
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
