//! The Manager actor: owns every task record and its lifecycle.
//!
//! - **Durability first.** A submission or a stop is committed to the store (group commit)
//!   before it is answered; every later change of a record is written too, so a restart (even
//!   after SIGKILL) rebuilds the task table, the intents not yet carried out, and the
//!   scheduler's allocations from the store alone.
//! - **Placement.** New tasks queue for the Scheduler in batches; a placement gets the next
//!   `attempt` and is committed before the WorkerProxy is told to start it. A task that fits
//!   nowhere stays Pending with the reason in `error` and is tried again whenever the Scheduler
//!   says room appeared.
//! - **Reports.** Workers' change feeds arrive as [`Observed`]. A report about an older attempt,
//!   or from a worker the task has moved away from, is never applied: that copy is stopped, so
//!   each task ends with one running container.
//! - **Restarts and node loss.** A failed task restarts under its policy as a new attempt after
//!   an exponential backoff; the tasks of a worker that goes Down are placed elsewhere at once.
//!
//! It never calls a worker itself (its proxies do) and never chooses a node (the Scheduler does).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};
use log::{debug, info, warn};
use serde::Serialize;
use uuid::Uuid;

use super::client::WorkerLink;
use super::health::{HealthChecker, Unhealthy, Unwatch, Watch};
use super::policy::Resources;
use super::scheduler::{CapacityAvailable, NodeReady, Nodes, Place, Release, Restore, Scheduler};
use super::worker_proxy::{Info, Link, NodeStatus, Start, Stop, WorkerProxy};
use crate::db::{Batch, Store, StoreError};
use crate::task::{Desired, RestartPolicy, State, Task, TaskEvent};

/// Tables of the manager's store.
pub const TASKS_TABLE: &str = "tasks";
/// Accepted TaskEvents not yet carried out, as [`Intent`]s under their task's key.
pub const EVENTS_TABLE: &str = "events";
/// Workers seen: name → address.
pub const NODES_TABLE: &str = "nodes";
pub const TABLES: &[&str] = &[TASKS_TABLE, EVENTS_TABLE, NODES_TABLE];

/// Most tasks in one placement message.
const PLACE_BATCH: usize = 8192;
/// First restart waits this long; each further one twice as long, up to [`MAX_RESTART_BACKOFF`].
pub const MIN_RESTART_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// What can go wrong when asking the Manager for something.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No task has this id.
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// The id is taken by a task with another spec.
    #[error("task {0} exists already with another spec; submit it unchanged, or use a new id")]
    Conflict(Uuid),
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
}

/// What the events table keeps of an accepted TaskEvent until the task record reflects it: the
/// task (whose spec is in the tasks table already) and what was asked for.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Intent {
    pub task: Uuid,
    pub state: Desired,
    pub at: DateTime<Utc>,
}

/// Store key of a task: a sequence number given at submission, big-endian. Keys that only grow
/// make every insert an append at the B-tree's right edge, so a group commit of thousands of new
/// tasks dirties a handful of pages instead of one page per task (random UUID keys did).
fn store_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// How the Manager is set up.
pub struct ManagerSetup {
    pub store: Store,
    pub scheduler: Addr<Scheduler>,
    /// Time between health checks of a task.
    pub health_interval: Duration,
}

/// One worker as the Manager knows it.
struct WorkerSlot {
    address: String,
    proxy: Addr<WorkerProxy>,
    down: bool,
}

pub struct Manager {
    store: Store,
    scheduler: Addr<Scheduler>,
    tasks: HashMap<Uuid, Task>,
    /// Every task id, in order, for listings. Lookups go to the hash map: with a million tasks a
    /// B-tree walk per lookup was a string of cache misses on the hot path.
    order: BTreeSet<Uuid>,
    /// Each task's key in the store, and the next key to give out.
    keys: HashMap<Uuid, u64>,
    next_key: u64,
    /// Submissions not yet carried out: the task has not reached Running or an end.
    run_intents: HashSet<Uuid>,
    /// Stops asked for and not yet carried out.
    stop_intents: HashSet<Uuid>,
    workers: HashMap<String, WorkerSlot>,
    /// Every proxy, registered or not, for `/nodes`.
    proxies: Vec<Addr<WorkerProxy>>,
    /// Tasks to place, in arrival order, each at most once (`queued` mirrors it).
    queue: VecDeque<Uuid>,
    queued: HashSet<Uuid>,
    /// Tasks that fit nowhere; tried again when room appears.
    waiting: HashSet<Uuid>,
    /// Worker to prefer for a task's next placement (a restart goes back where it was).
    prefer: HashMap<Uuid, String>,
    placing: bool,
    restart_timers: HashMap<Uuid, SpawnHandle>,
    health_interval: Duration,
    health: Option<Addr<HealthChecker>>,
}

impl Manager {
    /// A manager with everything the store holds; the scheduler is given the allocations back.
    pub fn new(setup: ManagerSetup) -> Result<Manager, ManagerError> {
        let store = setup.store;
        let mut tasks = HashMap::new();
        let mut order = BTreeSet::new();
        let mut keys = HashMap::new();
        let mut next_key = 0;
        for (key, task) in store.scan_json::<Task>(TASKS_TABLE)? {
            let Ok(seq) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
                warn!("manager: skipping a task row with a malformed key {key:?}");
                continue;
            };
            next_key = next_key.max(seq + 1);
            keys.insert(task.id, seq);
            order.insert(task.id);
            tasks.insert(task.id, task);
        }
        let mut run_intents = HashSet::new();
        let mut stop_intents = HashSet::new();
        for (_, intent) in store.scan_json::<Intent>(EVENTS_TABLE)? {
            match intent.state {
                Desired::Running => run_intents.insert(intent.task),
                Desired::Completed => stop_intents.insert(intent.task),
            };
        }
        let allocations: Vec<(Uuid, String, Resources)> = tasks
            .values()
            .filter(|t| t.state.is_active())
            .filter_map(|t| t.worker.clone().map(|w| (t.id, w, resources(t))))
            .collect();
        info!(
            "manager: {} task(s) recovered from {} ({} placed, {} intent(s) to carry out)",
            tasks.len(),
            store.path().display(),
            allocations.len(),
            run_intents.len() + stop_intents.len()
        );
        setup.scheduler.do_send(Restore { allocations });
        Ok(Manager {
            store,
            scheduler: setup.scheduler,
            tasks,
            order,
            keys,
            next_key,
            run_intents,
            stop_intents,
            workers: HashMap::new(),
            proxies: Vec::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            waiting: HashSet::new(),
            prefer: HashMap::new(),
            placing: false,
            restart_timers: HashMap::new(),
            health_interval: setup.health_interval,
            health: None,
        })
    }

    /// Write these tasks (and drop carried-out intents) in one batch.
    fn persist(&self, ids: &[Uuid]) -> BoxFuture<'static, Result<(), StoreError>> {
        let mut batch = Batch::new();
        for id in ids {
            if let (Some(task), Some(&key)) = (self.tasks.get(id), self.keys.get(id)) {
                if let Err(e) = batch.put_json(TASKS_TABLE, store_key(key), task) {
                    return futures_util::future::ready(Err(e)).boxed();
                }
                if !self.run_intents.contains(id) && !self.stop_intents.contains(id) {
                    batch.delete(EVENTS_TABLE, store_key(key));
                }
            }
        }
        self.store.commit(batch).boxed()
    }

    /// Persist without anyone waiting; a failure is logged.
    fn persist_detached(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let commit = self.persist(ids);
        actix::spawn(async move {
            if let Err(e) = commit.await {
                warn!("manager: could not persist task changes: {e}");
            }
        });
    }

    fn enqueue(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        self.push_queue(id);
        self.kick(ctx);
    }

    fn push_queue(&mut self, id: Uuid) {
        self.waiting.remove(&id);
        if self.queued.insert(id) {
            self.queue.push_back(id);
        }
    }

    /// Whether a queued task still wants a placement: not stopped, not placed meanwhile.
    fn wants_placement(&self, id: &Uuid) -> bool {
        self.tasks.get(id).is_some_and(|t| {
            !self.stop_intents.contains(id)
                && !matches!(t.state, State::Completed | State::Scheduled)
        })
    }

    /// Send the queue to the Scheduler unless a placement is in flight (it calls back here).
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.placing || self.queue.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        while batch.len() < PLACE_BATCH {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&id);
            if !self.wants_placement(&id) {
                continue;
            }
            if let Some(task) = self.tasks.get(&id) {
                batch.push((id, resources(task), self.prefer.get(&id).cloned()));
            }
        }
        if batch.is_empty() {
            return;
        }
        self.placing = true;
        let place = self.scheduler.send(Place { tasks: batch });
        ctx.spawn(place.into_actor(self).map(|res, act, ctx| {
            act.placing = false;
            match res {
                Ok(placements) => act.placed(placements, ctx),
                Err(e) => warn!("manager: the scheduler did not answer: {e}"),
            }
            act.kick(ctx);
        }));
    }

    /// Record the Scheduler's answers; start the placed tasks once their records are durable.
    fn placed(&mut self, placements: Vec<(Uuid, Result<String, String>)>, ctx: &mut Context<Self>) {
        let mut changed = Vec::new();
        let mut starts: Vec<(String, Task)> = Vec::new();
        let mut release = Vec::new();
        for (id, result) in placements {
            if !self.wants_placement(&id) {
                // Stopped (or placed) while the Scheduler chose: give the booking back.
                release.push(id);
                continue;
            }
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            match result {
                Ok(worker) => {
                    if let Err(e) = task.transition(State::Scheduled) {
                        warn!("manager: task {id}: {e}");
                        release.push(id);
                        continue;
                    }
                    self.prefer.remove(&id);
                    task.attempt += 1;
                    task.worker = Some(worker.clone());
                    task.container_id = None;
                    task.host_ports.clear();
                    task.error = None;
                    info!("task {id} attempt {} Scheduled on {worker}", task.attempt);
                    starts.push((worker, task.clone()));
                    changed.push(id);
                }
                Err(reason) => {
                    if task.error.as_deref() != Some(reason.as_str()) {
                        debug!("task {id} waits: {reason}");
                        task.error = Some(reason);
                        changed.push(id);
                    }
                    self.waiting.insert(id);
                }
            }
        }
        if !release.is_empty() {
            self.scheduler.do_send(Release(release));
        }
        let commit = self.persist(&changed);
        ctx.spawn(commit.into_actor(self).map(move |res, act, _| {
            if let Err(e) = res {
                // Not durable: do not start anything the store does not know about. The tasks
                // stay Scheduled in memory and are started again on the next recovery.
                warn!("manager: could not persist placements: {e}");
                return;
            }
            for (worker, task) in starts {
                match act.workers.get(&worker) {
                    Some(slot) => slot.proxy.do_send(Start(task)),
                    None => warn!(
                        "manager: worker {worker} vanished before task {} could start",
                        task.id
                    ),
                }
            }
        }));
    }

    /// A task's container ended (or it cannot start): release, then restart or finish.
    fn after_finish(&mut self, id: Uuid, ctx: &mut Context<Self>) -> bool {
        self.scheduler.do_send(Release(vec![id]));
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if self.stop_intents.remove(&id) {
            if task.state != State::Completed && task.transition(State::Completed).is_ok() {
                info!("task {id} stopped: Completed");
            }
            self.run_intents.remove(&id);
            return true;
        }
        self.run_intents.remove(&id);
        let wants_restart = match task.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => task.state == State::Failed,
            RestartPolicy::Always => true,
        };
        if !wants_restart || task.restart_count >= task.max_restarts {
            if wants_restart {
                info!(
                    "task {id} {}: no restarts left ({} of {})",
                    task.state, task.restart_count, task.max_restarts
                );
            }
            return false;
        }
        let delay = restart_backoff(task.restart_count);
        let attempt = task.attempt;
        info!(
            "task {id} attempt {attempt} {}; restart {} of {} in {:.0?}",
            task.state,
            task.restart_count + 1,
            task.max_restarts,
            delay
        );
        let handle = ctx.run_later(delay, move |act, ctx| act.restart(id, attempt, ctx));
        if let Some(old) = self.restart_timers.insert(id, handle) {
            ctx.cancel_future(old);
        }
        false
    }

    fn restart(&mut self, id: Uuid, attempt: u32, ctx: &mut Context<Self>) {
        self.restart_timers.remove(&id);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.attempt != attempt
            || self.stop_intents.contains(&id)
            || task.state == State::Completed
        {
            return;
        }
        task.restart_count += 1;
        if let Some(w) = task.worker.clone() {
            self.prefer.insert(id, w);
        }
        self.enqueue(id, ctx);
    }

    /// Apply one worker's report about one task.
    fn observe(
        &mut self,
        worker: &str,
        seen: Task,
        changed: &mut Vec<Uuid>,
        ctx: &mut Context<Self>,
    ) {
        let id = seen.id;
        let Some(task) = self.tasks.get_mut(&id) else {
            debug!("manager: worker {worker} reports task {id}, unknown here; ignored");
            return;
        };
        let current = task.worker.as_deref() == Some(worker) && task.attempt == seen.attempt;
        if !current {
            // An older attempt, a copy left behind on a worker the task moved from, or a task
            // stopped while its worker was away: that copy must not run.
            let stale = seen.attempt < task.attempt
                || task.worker.as_deref() != Some(worker)
                || task.state == State::Completed;
            if stale && seen.state.is_active() {
                info!(
                    "task {id}: stopping stale attempt {} on {worker} (current: attempt {} on {})",
                    seen.attempt,
                    task.attempt,
                    task.worker.as_deref().unwrap_or("none")
                );
                if let Some(slot) = self.workers.get(worker) {
                    slot.proxy.do_send(Stop {
                        id,
                        attempt: Some(seen.attempt),
                    });
                }
            } else if !stale {
                warn!(
                    "manager: worker {worker} reports task {id} attempt {} ahead of attempt {}",
                    seen.attempt, task.attempt
                );
            }
            return;
        }
        if task.state == State::Completed {
            return;
        }
        if task.state == State::Failed && !self.stop_intents.contains(&id) {
            // The attempt failed already (as reported, or by its health checks, after which we
            // stopped it); its container being stopped changes nothing.
            return;
        }
        // An `always` task that ended waits for its restart in Running; reports of the ended
        // attempt change nothing more.
        if task.state == seen.state
            && task.container_id == seen.container_id
            && task.exit_code == seen.exit_code
            && task.error == seen.error
            && task.host_ports == seen.host_ports
        {
            // Nothing new (a full report after a restart of either side); the health checker
            // may still need to hear of it.
            self.watch_health(id);
            return;
        }
        let restarting_always = task.restart_policy == RestartPolicy::Always
            && seen.state == State::Completed
            && !self.stop_intents.contains(&id)
            && task.restart_count < task.max_restarts;
        if !restarting_always && task.state != seen.state {
            if let Err(e) = task.transition(seen.state) {
                warn!("manager: task {id} report from {worker} refused: {e}");
                return;
            }
            info!(
                "task {id} attempt {} {} on {worker}",
                task.attempt, seen.state
            );
        }
        task.container_id = seen.container_id;
        task.host_ports = seen.host_ports;
        task.exit_code = seen.exit_code;
        task.error = seen.error;
        if seen.start_time.is_some() {
            task.start_time = seen.start_time;
        }
        if seen.finish_time.is_some() {
            task.finish_time = seen.finish_time;
        }
        let state = if restarting_always {
            State::Completed
        } else {
            task.state
        };
        if state == State::Running {
            self.run_intents.remove(&id);
        }
        changed.push(id);
        self.watch_health(id);
        if state.is_finished() {
            self.after_finish(id, ctx);
        }
    }

    /// Tell a newly (re)connected worker what it should be running, and stop what it should not.
    fn resume_on(&mut self, worker: &str) {
        let Some(slot) = self.workers.get(worker) else {
            return;
        };
        for task in self.tasks.values() {
            if task.worker.as_deref() != Some(worker) || !task.state.is_active() {
                continue;
            }
            if self.stop_intents.contains(&task.id) {
                slot.proxy.do_send(Stop {
                    id: task.id,
                    attempt: Some(task.attempt),
                });
            } else if task.state == State::Scheduled {
                // Idempotent on the worker: a start it has seen returns the existing task.
                slot.proxy.do_send(Start(task.clone()));
            }
        }
    }

    /// Keep the health checker in line with the task: checked while Running, not otherwise.
    fn watch_health(&self, id: Uuid) {
        let (Some(health), Some(task)) = (&self.health, self.tasks.get(&id)) else {
            return;
        };
        let Some(path) = &task.health_check else {
            return;
        };
        let url = (task.state == State::Running)
            .then(|| {
                let port = task.health_port()?;
                let host_port = task.host_ports.get(port)?;
                let address = &self.workers.get(task.worker.as_deref()?)?.address;
                // In-process workers have no network address to check.
                let (host, _) = address.rsplit_once(':')?;
                Some(format!("http://{host}:{host_port}{path}"))
            })
            .flatten();
        match url {
            Some(url) => health.do_send(Watch {
                id,
                attempt: task.attempt,
                url,
            }),
            None => health.do_send(Unwatch(id)),
        }
    }

    fn fail_placement(
        &mut self,
        id: Uuid,
        error: String,
        changed: &mut Vec<Uuid>,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.transition(State::Failed).is_ok() {
            task.error = Some(error);
            changed.push(id);
            self.after_finish(id, ctx);
        }
    }
}

/// What a task reserves.
pub fn resources(task: &Task) -> Resources {
    Resources {
        cpu: task.cpu,
        memory: task.memory,
        disk: task.disk,
    }
}

/// Wait before restart number `restarts + 1`: 1 s, 2 s, 4 s … up to a minute.
pub fn restart_backoff(restarts: u32) -> Duration {
    MIN_RESTART_BACKOFF
        .saturating_mul(1 << restarts.min(16))
        .min(MAX_RESTART_BACKOFF)
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        self.scheduler
            .do_send(super::scheduler::SetListener(ctx.address().recipient()));
        self.health =
            Some(HealthChecker::new(self.health_interval, ctx.address().recipient()).start());
        // Carry on with what the store says was accepted and not yet done.
        let mut changed = Vec::new();
        let ids: Vec<Uuid> = self.tasks.keys().copied().collect();
        for id in ids {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let stop = self.stop_intents.contains(&id);
            match task.state {
                State::Pending if stop => {
                    task.transition(State::Completed).ok();
                    self.stop_intents.remove(&id);
                    changed.push(id);
                }
                State::Pending => self.push_queue(id),
                State::Failed if stop => {
                    task.transition(State::Completed).ok();
                    self.stop_intents.remove(&id);
                    changed.push(id);
                }
                State::Failed => {
                    self.after_finish(id, ctx);
                }
                _ => {}
            }
        }
        self.persist_detached(&changed);
        self.kick(ctx);
    }
}

impl Handler<CapacityAvailable> for Manager {
    type Result = ();

    fn handle(&mut self, _: CapacityAvailable, ctx: &mut Context<Self>) {
        if self.waiting.is_empty() {
            return;
        }
        let mut waiting: Vec<Uuid> = self.waiting.drain().collect();
        waiting.sort_by_key(|id| self.tasks.get(id).map(|t| t.created_at));
        for id in waiting {
            self.push_queue(id);
        }
        self.kick(ctx);
    }
}

/// Accept a task: answers once it is committed. The same id and spec again is answered with
/// the recorded task (`created` false); the same id with another spec is a conflict.
#[derive(Message)]
#[rtype(result = "Result<Submitted, ManagerError>")]
pub struct Submit(pub TaskEvent);

/// The answer to [`Submit`].
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: Task,
    pub created: bool,
}

impl Handler<Submit> for Manager {
    // The wait for the commit runs outside the actor's context: thousands of submissions wait
    // at once, and an actor polls every future spawned in its context on each wake-up.
    type Result = ResponseFuture<Result<Submitted, ManagerError>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let event = msg.0;
        let id = event.task.id;
        let me = ctx.address();
        if event.state == Desired::Completed {
            return Box::pin(async move {
                let task = me
                    .send(StopTask(id))
                    .await
                    .map_err(|_| ManagerError::Gone)??;
                Ok(Submitted {
                    task,
                    created: false,
                })
            });
        }
        if let Some(existing) = self.tasks.get(&id) {
            if !existing.same_spec(&event.task) {
                return Box::pin(async move { Err(ManagerError::Conflict(id)) });
            }
            // The first submission may still be committing: answer after a commit that comes
            // later in the writer's order.
            let barrier = self.store.commit(Batch::new());
            return Box::pin(async move {
                barrier.await?;
                let task = me
                    .send(GetTask(id))
                    .await
                    .map_err(|_| ManagerError::Gone)?
                    .ok_or(ManagerError::NotFound(id))?;
                Ok(Submitted {
                    task,
                    created: false,
                })
            });
        }
        let mut task = event.task;
        task.state = State::Pending;
        task.attempt = 0;
        task.worker = None;
        task.created_at = Utc::now();
        let key = self.next_key;
        let intent = Intent {
            task: id,
            state: Desired::Running,
            at: event.timestamp,
        };
        let mut batch = Batch::new();
        let encoded = batch
            .put_json(TASKS_TABLE, store_key(key), &task)
            .and_then(|_| batch.put_json(EVENTS_TABLE, store_key(key), &intent));
        if let Err(e) = encoded {
            return Box::pin(async move { Err(e.into()) });
        }
        self.next_key += 1;
        self.keys.insert(id, key);
        self.tasks.insert(id, task.clone());
        self.order.insert(id);
        self.run_intents.insert(id);
        let commit = self.store.commit(batch);
        Box::pin(async move {
            match commit.await {
                Ok(()) => {
                    me.do_send(Accepted { id, ok: true });
                    Ok(Submitted {
                        task,
                        created: true,
                    })
                }
                Err(e) => {
                    me.do_send(Accepted { id, ok: false });
                    Err(e.into())
                }
            }
        })
    }
}

/// A submission's commit finished: place the task, or forget it when the commit failed.
#[derive(Message)]
#[rtype(result = "()")]
struct Accepted {
    id: Uuid,
    ok: bool,
}

impl Handler<Accepted> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Accepted, ctx: &mut Context<Self>) {
        let id = msg.id;
        if msg.ok {
            debug!("task {id} accepted");
            self.enqueue(id, ctx);
        } else {
            self.tasks.remove(&id);
            self.order.remove(&id);
            self.keys.remove(&id);
            self.run_intents.remove(&id);
        }
    }
}

/// Stop a task: answers once the stop is committed; the container is stopped and removed, then
/// the task is Completed. A user's stop also ends the restart policy.
#[derive(Message)]
#[rtype(result = "Result<Task, ManagerError>")]
pub struct StopTask(pub Uuid);

impl Handler<StopTask> for Manager {
    type Result = ResponseActFuture<Self, Result<Task, ManagerError>>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let (Some(task), Some(&key)) = (self.tasks.get_mut(&id), self.keys.get(&id)) else {
            return Box::pin(fut::ready(Err(ManagerError::NotFound(id))));
        };
        if let Some(timer) = self.restart_timers.remove(&id) {
            ctx.cancel_future(timer);
        }
        self.run_intents.remove(&id);
        self.prefer.remove(&id);
        self.waiting.remove(&id);
        let mut batch = Batch::new();
        match task.state {
            State::Completed => {}
            State::Pending | State::Failed => {
                task.transition(State::Completed).ok();
                task.error = None;
                info!("task {id} stopped: Completed");
                self.scheduler.do_send(Release(vec![id]));
            }
            State::Scheduled | State::Running => {
                let worker = task.worker.clone().unwrap_or_default();
                match self.workers.get(&worker) {
                    Some(slot) if !slot.down => {
                        self.stop_intents.insert(id);
                        slot.proxy.do_send(Stop {
                            id,
                            attempt: Some(task.attempt),
                        });
                        let intent = Intent {
                            task: id,
                            state: Desired::Completed,
                            at: Utc::now(),
                        };
                        if let Err(e) = batch.put_json(EVENTS_TABLE, store_key(key), &intent) {
                            return Box::pin(fut::ready(Err(e.into())));
                        }
                    }
                    other => {
                        // The worker is unreachable: the task ends here, and whatever the worker
                        // still runs is stopped when it reports again.
                        if let Some(slot) = other {
                            slot.proxy.do_send(Stop {
                                id,
                                attempt: Some(task.attempt),
                            });
                        }
                        task.transition(State::Completed).ok();
                        info!("task {id} stopped while worker {worker} is away: Completed");
                        self.scheduler.do_send(Release(vec![id]));
                    }
                }
            }
        }
        let task = task.clone();
        if let Err(e) = batch.put_json(TASKS_TABLE, store_key(key), &task) {
            return Box::pin(fut::ready(Err(e.into())));
        }
        if !self.stop_intents.contains(&id) {
            batch.delete(EVENTS_TABLE, store_key(key));
        }
        let commit = self.store.commit(batch);
        Box::pin(commit.into_actor(self).map(move |res, _, _| {
            res?;
            Ok(task)
        }))
    }
}

/// One task.
#[derive(Message)]
#[rtype(result = "Option<Task>")]
pub struct GetTask(pub Uuid);

impl Handler<GetTask> for Manager {
    type Result = Option<Task>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        self.tasks.get(&msg.0).cloned()
    }
}

/// Tasks ordered by id, filtered, one page at a time.
#[derive(Message, Default)]
#[rtype(result = "Vec<Task>")]
pub struct ListTasks {
    pub state: Option<State>,
    pub worker: Option<String>,
    /// Start after this id.
    pub after: Option<Uuid>,
    /// At most this many; all when `None`.
    pub limit: Option<usize>,
}

impl Handler<ListTasks> for Manager {
    type Result = Vec<Task>;

    fn handle(&mut self, msg: ListTasks, _: &mut Context<Self>) -> Self::Result {
        use std::ops::Bound;
        let start = match msg.after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        self.order
            .range((start, Bound::Unbounded))
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| msg.state.is_none_or(|s| t.state == s))
            .filter(|t| {
                msg.worker
                    .as_ref()
                    .is_none_or(|w| t.worker.as_ref() == Some(w))
            })
            .take(msg.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }
}

/// Counts of tasks per state (for progress displays and benchmarks).
#[derive(Message)]
#[rtype(result = "BTreeMap<State, usize>")]
pub struct CountTasks;

impl Handler<CountTasks> for Manager {
    type Result = MessageResult<CountTasks>;

    fn handle(&mut self, _: CountTasks, _: &mut Context<Self>) -> Self::Result {
        let mut counts = BTreeMap::new();
        for t in self.tasks.values() {
            *counts.entry(t.state).or_insert(0) += 1;
        }
        MessageResult(counts)
    }
}

/// Where to read a task's logs.
#[derive(Message)]
#[rtype(result = "Result<WorkerLink, ManagerError>")]
pub struct LogsOf(pub Uuid);

impl Handler<LogsOf> for Manager {
    type Result = ResponseFuture<Result<WorkerLink, ManagerError>>;

    fn handle(&mut self, msg: LogsOf, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let worker = match self.tasks.get(&id) {
            None => return Box::pin(async move { Err(ManagerError::NotFound(id)) }),
            Some(t) => t.worker.clone(),
        };
        let Some(worker) = worker else {
            return Box::pin(async move { Err(ManagerError::NotPlaced(id)) });
        };
        let Some(slot) = self.workers.get(&worker) else {
            return Box::pin(async move { Err(ManagerError::WorkerGone(worker)) });
        };
        let link = slot.proxy.send(Link);
        Box::pin(async move { link.await.map_err(|_| ManagerError::WorkerGone(worker)) })
    }
}

/// A node as `GET /nodes` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub address: String,
    pub status: String,
    pub cpus: f64,
    pub cpu_allocated: f64,
    pub memory: u64,
    pub memory_allocated: u64,
    pub disk: u64,
    pub disk_allocated: u64,
    pub tasks: usize,
    pub last_seen: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// Every worker the manager was given, with what the scheduler has booked on it.
#[derive(Message)]
#[rtype(result = "Vec<NodeReport>")]
pub struct ListNodes;

impl Handler<ListNodes> for Manager {
    type Result = ResponseFuture<Vec<NodeReport>>;

    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        let infos = join_all(self.proxies.iter().map(|p| p.send(Info)));
        let nodes = self.scheduler.send(Nodes);
        Box::pin(async move {
            let book: HashMap<String, _> = nodes
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect();
            let mut out: Vec<NodeReport> = infos
                .await
                .into_iter()
                .flatten()
                .map(|info| {
                    let name = info.name.clone().unwrap_or_default();
                    let booked = book
                        .get(&name)
                        .filter(|_| info.status != NodeStatus::Refused);
                    let cap = booked
                        .and_then(|b| b.capacity)
                        .or(info.stats.as_ref().map(|s| s.capacity()));
                    NodeReport {
                        status: format!("{:?}", info.status),
                        address: info.address,
                        cpus: cap.map_or(0.0, |c| c.cpus),
                        cpu_allocated: booked.map_or(0.0, |b| b.allocated.cpu),
                        memory: cap.map_or(0, |c| c.memory),
                        memory_allocated: booked.map_or(0, |b| b.allocated.memory),
                        disk: cap.map_or(0, |c| c.disk),
                        disk_allocated: booked.map_or(0, |b| b.allocated.disk),
                        tasks: booked.map_or(0, |b| b.tasks),
                        last_seen: info.last_seen,
                        reason: info.reason,
                        name,
                    }
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
            out
        })
    }
}

/// Keep a proxy in the node list (every proxy the manager starts is added).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddProxy(pub Addr<WorkerProxy>);

impl Handler<AddProxy> for Manager {
    type Result = ();

    fn handle(&mut self, msg: AddProxy, _: &mut Context<Self>) {
        self.proxies.push(msg.0);
    }
}

/// A proxy reached its worker and learned its name. Refused when another address holds the name.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Register {
    pub name: String,
    pub address: String,
    pub proxy: Addr<WorkerProxy>,
}

impl Handler<Register> for Manager {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Self::Result {
        if let Some(slot) = self.workers.get(&msg.name)
            && slot.address != msg.address
            && slot.proxy.connected()
        {
            return Err(format!(
                "the name {} is taken by the worker at {}; give each worker its own --name",
                msg.name, slot.address
            ));
        }
        let mut batch = Batch::new();
        batch.put(
            NODES_TABLE,
            msg.name.clone().into_bytes(),
            msg.address.clone().into_bytes(),
        );
        let store = self.store.clone();
        actix::spawn(async move {
            if let Err(e) = store.commit(batch).await {
                warn!("manager: could not record a node: {e}");
            }
        });
        self.workers.insert(
            msg.name.clone(),
            WorkerSlot {
                address: msg.address,
                proxy: msg.proxy,
                down: false,
            },
        );
        self.scheduler.do_send(NodeReady {
            name: msg.name.clone(),
            ready: true,
        });
        self.resume_on(&msg.name);
        Ok(())
    }
}

/// Tasks a worker reports as changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed {
    pub worker: String,
    pub tasks: Vec<Task>,
}

impl Handler<Observed> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Observed, ctx: &mut Context<Self>) {
        let mut changed = Vec::new();
        for task in msg.tasks {
            self.observe(&msg.worker, task, &mut changed, ctx);
        }
        self.persist_detached(&changed);
    }
}

/// A worker went silent for longer than the node timeout: its tasks go elsewhere.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerDown {
    pub name: String,
}

impl Handler<WorkerDown> for Manager {
    type Result = ();

    fn handle(&mut self, msg: WorkerDown, ctx: &mut Context<Self>) {
        let Some(slot) = self.workers.get_mut(&msg.name) else {
            return;
        };
        slot.down = true;
        self.scheduler.do_send(NodeReady {
            name: msg.name.clone(),
            ready: false,
        });
        let lost: Vec<Uuid> = self
            .tasks
            .values()
            .filter(|t| t.worker.as_deref() == Some(msg.name.as_str()) && t.state.is_active())
            .map(|t| t.id)
            .collect();
        let mut changed = Vec::new();
        let mut release = Vec::new();
        for id in lost {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if self.stop_intents.remove(&id) {
                task.transition(State::Completed).ok();
                release.push(id);
                changed.push(id);
                continue;
            }
            // Running → Scheduled → Pending: not placed anywhere until the Scheduler says where.
            // A move is a new attempt but not a restart.
            if task.state == State::Running {
                task.transition(State::Scheduled).ok();
            }
            if task.transition(State::Pending).is_ok() {
                task.error = Some(format!(
                    "worker {} was lost; placing it elsewhere",
                    msg.name
                ));
                task.container_id = None;
                task.host_ports.clear();
                info!("task {id}: worker {} lost, moving it", msg.name);
                release.push(id);
                changed.push(id);
                self.push_queue(id);
            }
        }
        if !release.is_empty() {
            self.scheduler.do_send(Release(release));
        }
        self.persist_detached(&changed);
        self.kick(ctx);
    }
}

/// A worker that was Down answers again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerUp {
    pub name: String,
    pub proxy: Addr<WorkerProxy>,
}

impl Handler<WorkerUp> for Manager {
    type Result = ();

    fn handle(&mut self, msg: WorkerUp, _: &mut Context<Self>) {
        if let Some(slot) = self.workers.get_mut(&msg.name) {
            slot.down = false;
        }
        self.scheduler.do_send(NodeReady {
            name: msg.name.clone(),
            ready: true,
        });
        self.resume_on(&msg.name);
    }
}

/// The worker refused to start an attempt (not a transient failure).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartRefused {
    pub id: Uuid,
    pub attempt: u32,
    pub error: String,
}

impl Handler<StartRefused> for Manager {
    type Result = ();

    fn handle(&mut self, msg: StartRefused, ctx: &mut Context<Self>) {
        if self
            .tasks
            .get(&msg.id)
            .is_some_and(|t| t.attempt == msg.attempt && t.state == State::Scheduled)
        {
            let mut changed = Vec::new();
            self.fail_placement(
                msg.id,
                format!("the worker refused to start it: {}", msg.error),
                &mut changed,
                ctx,
            );
            self.persist_detached(&changed);
        }
    }
}

/// A worker does not know a task the manager asked it to stop: nothing runs there.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopUnknown {
    pub id: Uuid,
    pub worker: String,
}

impl Handler<StopUnknown> for Manager {
    type Result = ();

    fn handle(&mut self, msg: StopUnknown, ctx: &mut Context<Self>) {
        let Some(task) = self.tasks.get_mut(&msg.id) else {
            return;
        };
        if task.worker.as_deref() == Some(msg.worker.as_str())
            && self.stop_intents.contains(&msg.id)
        {
            task.transition(State::Completed).ok();
            task.container_id = None;
            self.after_finish(msg.id, ctx);
            self.persist_detached(&[msg.id]);
        }
    }
}

/// Whether recovery is complete (it is, once the actor runs: the store is read before it starts).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Ready;

impl Handler<Ready> for Manager {
    type Result = bool;

    fn handle(&mut self, _: Ready, _: &mut Context<Self>) -> bool {
        true
    }
}

impl Handler<Unhealthy> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Unhealthy, ctx: &mut Context<Self>) {
        let id = msg.id;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.attempt != msg.attempt
            || task.state != State::Running
            || self.stop_intents.contains(&id)
        {
            return;
        }
        if task.transition(State::Failed).is_err() {
            return;
        }
        warn!("task {id} attempt {}: {}", msg.attempt, msg.reason);
        task.error = Some(msg.reason);
        task.exit_code = None;
        if let Some(slot) = task.worker.as_ref().and_then(|w| self.workers.get(w)) {
            slot.proxy.do_send(Stop {
                id,
                attempt: Some(msg.attempt),
            });
        }
        self.after_finish(id, ctx);
        self.persist_detached(&[id]);
    }
}
