//! The Worker actor: runs the tasks placed on one node through a [`Runtime`] and keeps a durable
//! record of them.
//!
//! It owns the node's task table (one entry per task: the current attempt and its container) and
//! a change sequence that the manager's proxy long-polls ([`WatchTasks`]), so every state change
//! reaches the manager within milliseconds. State changes come from the runtime's event stream,
//! never from polling: exit 0 → Completed, non-zero → Failed with `exit_code`, OOM kill → Failed
//! with that reason.
//!
//! Starts and stops run as futures beside the actor, so one slow start never blocks another; the
//! actor's own state is only touched between awaits. Every change is written to the worker's
//! store (when it has one) before a caller is told about it. On start, and whenever the runtime's
//! event stream had to reconnect, the worker reconciles its table with the containers carrying
//! its `cube.worker` label: running ones are adopted, ended ones get their true final state, and
//! containers of older attempts are removed. It never touches containers of another worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::BoxStream;
use log::{info, warn};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::db::{Batch, Store, StoreError};
use crate::node::{Capacity, NodeStats, Sample, StatsSampler};
use crate::runtime::{ContainerSpec, ContainerStatus, Runtime, RuntimeError, RuntimeEvent};
use crate::task::{State, Task};

/// The worker's table in its store.
pub const TASKS_TABLE: &str = "tasks";
/// How long the container of a finished task is kept for its logs.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Longest a [`WatchTasks`] may wait for a change.
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
    pub store: Option<Store>,
    /// Machine measurement; `None` reports `capacity` instead (simulated workers).
    pub sampler: Option<Addr<StatsSampler>>,
    /// Capacity reported when there is no sampler.
    pub capacity: Capacity,
    /// How long the container of a finished task is kept for its logs.
    pub retention: Duration,
}

/// One task on this worker: its record, and what the worker does not publish.
struct Entry {
    task: Task,
    /// Position in the change sequence of the entry's last change.
    seq: u64,
    /// A user asked for a stop: whatever ends the container, the task is Completed.
    stopping: bool,
    /// A start of the current attempt is under way: reconciliation leaves the entry alone.
    starting: bool,
}

/// A long-poll waiting for the next change.
struct Watcher {
    since: u64,
    reply: oneshot::Sender<Changes>,
}

pub struct Worker {
    name: String,
    /// Changes with every process start, so a watcher can tell the sequence started over.
    instance: Uuid,
    runtime: Arc<dyn Runtime>,
    store: Option<Store>,
    sampler: Option<Addr<StatsSampler>>,
    capacity: Capacity,
    retention: Duration,
    tasks: HashMap<Uuid, Entry>,
    /// seq → task id of its latest change: the change feed, in order.
    changes: BTreeMap<u64, Uuid>,
    seq: u64,
    watchers: Vec<Watcher>,
    notify_scheduled: bool,
}

impl Worker {
    /// A worker with the tasks its store holds; reconciliation with the runtime happens when the
    /// actor starts.
    pub fn new(setup: WorkerSetup) -> Result<Worker, WorkerError> {
        let mut worker = Worker {
            name: setup.name,
            instance: Uuid::new_v4(),
            runtime: setup.runtime,
            store: setup.store,
            sampler: setup.sampler,
            capacity: setup.capacity,
            retention: setup.retention,
            tasks: HashMap::new(),
            changes: BTreeMap::new(),
            seq: 0,
            watchers: Vec::new(),
            notify_scheduled: false,
        };
        if let Some(store) = &worker.store {
            for (_, task) in store.scan_json::<Task>(TASKS_TABLE)? {
                worker.seq += 1;
                worker.changes.insert(worker.seq, task.id);
                worker.tasks.insert(
                    task.id,
                    Entry {
                        task,
                        seq: worker.seq,
                        stopping: false,
                        starting: false,
                    },
                );
            }
            info!(
                "worker {}: {} task(s) loaded from {}",
                worker.name,
                worker.tasks.len(),
                store.path().display()
            );
        }
        Ok(worker)
    }

    /// Record a change of `id`: bump the sequence, persist, and wake the watchers soon. Returns
    /// the commit, which callers that reply to someone wait for.
    fn changed(
        &mut self,
        id: Uuid,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let commit = match self.tasks.get_mut(&id) {
            Some(entry) => {
                self.changes.remove(&entry.seq);
                self.seq += 1;
                entry.seq = self.seq;
                self.changes.insert(self.seq, id);
                persist(self.store.as_ref(), &entry.task)
            }
            None => futures_util::future::ready(Ok(())).boxed(),
        };
        if !self.notify_scheduled {
            // Coalesce: changes made while this mailbox drains go out in one answer.
            self.notify_scheduled = true;
            ctx.run_later(Duration::ZERO, |act, _| act.notify_watchers());
        }
        commit
    }

    /// Like [`Worker::changed`] when nobody waits for the commit; a failed write is logged.
    fn changed_detached(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let commit = self.changed(id, ctx);
        let name = self.name.clone();
        actix::spawn(async move {
            if let Err(e) = commit.await {
                warn!("worker {name}: could not persist task {id}: {e}");
            }
        });
    }

    fn changes_since(&self, since: u64) -> Changes {
        let tasks = self
            .changes
            .range(since + 1..)
            .filter_map(|(_, id)| self.tasks.get(id).map(|e| e.task.clone()))
            .collect();
        Changes {
            instance: self.instance,
            seq: self.seq,
            tasks,
        }
    }

    fn notify_watchers(&mut self) {
        self.notify_scheduled = false;
        let watchers = std::mem::take(&mut self.watchers);
        for w in watchers {
            if w.reply.is_closed() {
                continue;
            }
            if w.since < self.seq {
                let _ = w.reply.send(self.changes_since(w.since));
            } else {
                self.watchers.push(w);
            }
        }
    }

    fn active_count(&self) -> usize {
        self.tasks
            .values()
            .filter(|e| e.task.state.is_active())
            .count()
    }

    /// Start the container for the entry's current attempt, replacing `old` first.
    fn launch(&mut self, id: Uuid, old: Option<String>, ctx: &mut Context<Self>) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.starting = true;
        let task = &entry.task;
        let attempt = task.attempt;
        let spec = ContainerSpec {
            name: ContainerSpec::container_name(id, attempt),
            task_id: id,
            attempt,
            worker: self.name.clone(),
            image: task.image.clone(),
            cmd: task.cmd.clone(),
            env: task.env.clone(),
            cpu: task.cpu,
            memory: task.memory,
            ports: task
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), task.port_bindings.get(p).cloned()))
                .collect(),
        };
        let stop_timeout = Duration::from_secs(task.stop_timeout_s);
        let runtime = self.runtime.clone();
        let worker = self.name.clone();
        info!(
            "worker {worker}: starting task {id} attempt {attempt} ({})",
            task.image
        );
        let start = async move {
            if let Some(old) = old
                && let Err(e) = runtime.stop(old.clone(), stop_timeout).await
            {
                warn!(
                    "worker {worker}: could not remove container {old} of an older attempt of {id}: {e}"
                );
            }
            match runtime.start(spec).await {
                // The same attempt was started before (a retry, or a crash between the runtime
                // creating it and our record of it): adopt that container, never make a second.
                Err(RuntimeError::NameConflict(name)) => {
                    if let Some(found) = runtime.inspect(name.clone()).await? {
                        return Ok(found);
                    }
                    let found = runtime.list(worker).await?;
                    found
                        .into_iter()
                        .find(|c| c.task_id == id && c.attempt == attempt)
                        .ok_or(RuntimeError::NameConflict(name))
                }
                other => other,
            }
        };
        ctx.spawn(
            start
                .into_actor(self)
                .map(move |res, act, ctx| act.on_started(id, attempt, res, ctx)),
        );
    }

    fn on_started(
        &mut self,
        id: Uuid,
        attempt: u32,
        res: Result<ContainerStatus, RuntimeError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        if entry.task.attempt != attempt {
            // A newer attempt replaced this one while it started; it removes this container.
            return;
        }
        entry.starting = false;
        match res {
            Ok(status) => {
                entry.task.container_id = Some(status.container_id.clone());
                if entry.stopping {
                    self.stop_container(id, ctx);
                    return;
                }
                if entry.task.state == State::Scheduled {
                    if status.running || status.exit_code.is_some() {
                        self.record_running(id, &status);
                    }
                    if !status.running && status.exit_code.is_some() {
                        self.record_exit(id, &status, ctx);
                    }
                    self.changed_detached(id, ctx);
                }
            }
            Err(e) => {
                if entry.task.state.is_finished() {
                    return;
                }
                let stopping = entry.stopping;
                let to = if stopping {
                    State::Completed
                } else {
                    State::Failed
                };
                if let Err(t) = entry.task.transition(to) {
                    warn!("worker {}: task {id}: {t}", self.name);
                    return;
                }
                if !stopping {
                    entry.task.error = Some(e.to_string());
                }
                warn!(
                    "worker {}: task {id} attempt {attempt} could not start: {e}",
                    self.name
                );
                self.changed_detached(id, ctx);
            }
        }
    }

    /// Scheduled → Running with what the runtime says about the container.
    fn record_running(&mut self, id: Uuid, status: &ContainerStatus) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        if entry.task.state != State::Scheduled {
            return;
        }
        if let Err(e) = entry.task.transition(State::Running) {
            warn!("worker {}: task {id}: {e}", self.name);
            return;
        }
        entry.task.container_id = Some(status.container_id.clone());
        entry.task.host_ports = status.host_ports.clone();
        if let Some(t) = status.started_at {
            entry.task.start_time = Some(t);
        }
        entry.task.exit_code = None;
        entry.task.error = None;
        info!(
            "worker {}: task {id} attempt {} Running in {}",
            self.name,
            entry.task.attempt,
            short(&status.container_id)
        );
    }

    /// The container of the current attempt ended: Completed or Failed, by what the runtime says.
    fn record_exit(&mut self, id: Uuid, status: &ContainerStatus, ctx: &mut Context<Self>) {
        let retention = self.retention;
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        if entry.task.state.is_finished() {
            return;
        }
        if entry.stopping {
            // Our own stop ended it: the stop's completion removes the container and records
            // Completed, so the task is never seen Completed with its container still there.
            entry.task.exit_code = status.exit_code;
            return;
        }
        if entry.task.state == State::Scheduled {
            self.record_running(id, status);
        }
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let code = status.exit_code;
        let (to, error) = if status.oom_killed {
            let limit = entry.task.memory;
            (
                State::Failed,
                Some(format!(
                    "out of memory: the container exceeded its memory limit of {limit} bytes and was killed"
                )),
            )
        } else if code == Some(0) {
            (State::Completed, None)
        } else {
            let reason = match (&status.error, code) {
                (Some(e), _) => e.clone(),
                (None, Some(c)) => format!("exited with code {c}"),
                (None, None) => "the container ended".to_string(),
            };
            (State::Failed, Some(reason))
        };
        if let Err(e) = entry.task.transition(to) {
            warn!("worker {}: task {id}: {e}", self.name);
            return;
        }
        entry.task.exit_code = code;
        entry.task.error = error;
        entry.task.host_ports.clear();
        if let Some(t) = status.finished_at {
            entry.task.finish_time = Some(t);
        }
        info!(
            "worker {}: task {id} attempt {} {to} (exit code {})",
            self.name,
            entry.task.attempt,
            code.map_or("unknown".into(), |c| c.to_string())
        );
        // Keep the ended container for its logs, for a while.
        if let Some(container) = entry.task.container_id.clone() {
            let attempt = entry.task.attempt;
            ctx.run_later(retention, move |act, ctx| {
                act.expire_container(id, attempt, container, ctx)
            });
        }
    }

    fn expire_container(
        &mut self,
        id: Uuid,
        attempt: u32,
        container: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        if entry.task.attempt != attempt
            || !entry.task.state.is_finished()
            || entry.task.container_id.as_deref() != Some(container.as_str())
        {
            return;
        }
        entry.task.container_id = None;
        self.remove_detached(container);
        self.changed_detached(id, ctx);
    }

    /// Remove an ended container in the background; a failure is logged.
    fn remove_detached(&self, container: String) {
        let runtime = self.runtime.clone();
        actix::spawn(async move {
            if let Err(e) = runtime.remove(container.clone()).await {
                warn!("could not remove the ended container {container}: {e}");
            }
        });
    }

    /// Stop and remove the entry's container, then mark the task Completed.
    fn stop_container(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.stopping = true;
        let Some(container) = entry.task.container_id.clone() else {
            // Still starting: `on_started` comes back here once there is a container.
            if entry.task.state == State::Pending {
                self.complete_stopped(id, ctx);
            }
            return;
        };
        let timeout = Duration::from_secs(entry.task.stop_timeout_s);
        let attempt = entry.task.attempt;
        let runtime = self.runtime.clone();
        info!("worker {}: stopping task {id} attempt {attempt}", self.name);
        ctx.spawn(
            async move { runtime.stop(container, timeout).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if let Err(e) = res {
                        warn!("worker {}: stopping task {id} failed: {e}", act.name);
                        // Leave it Running; the manager retries the stop.
                        if let Some(entry) = act.tasks.get_mut(&id) {
                            entry.task.error = Some(format!("stop failed: {e}"));
                            act.changed_detached(id, ctx);
                        }
                        return;
                    }
                    if act
                        .tasks
                        .get(&id)
                        .is_some_and(|e| e.task.attempt == attempt)
                    {
                        act.complete_stopped(id, ctx);
                    }
                }),
        );
    }

    fn complete_stopped(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.task.container_id = None;
        entry.task.host_ports.clear();
        if !entry.task.state.is_finished() || entry.task.state == State::Failed {
            if let Err(e) = entry.task.transition(State::Completed) {
                warn!("worker {}: task {id}: {e}", self.name);
            } else {
                info!("worker {}: task {id} stopped: Completed", self.name);
            }
        }
        self.changed_detached(id, ctx);
    }

    /// Bring the table in line with the containers that carry this worker's label.
    fn reconcile(&mut self, containers: Vec<ContainerStatus>, ctx: &mut Context<Self>) {
        let mut current: HashMap<Uuid, ContainerStatus> = HashMap::new();
        for c in containers {
            let entry = self.tasks.get(&c.task_id);
            let is_current = entry.is_some_and(|e| e.task.attempt == c.attempt);
            if is_current {
                current.insert(c.task_id, c);
                continue;
            }
            let stale = entry.is_some_and(|e| e.task.attempt > c.attempt);
            if stale || !c.running {
                // An older attempt, or an ended container nobody knows: remove it so that each
                // task has exactly one copy.
                info!(
                    "worker {}: removing container {} (task {} attempt {})",
                    self.name,
                    short(&c.container_id),
                    c.task_id,
                    c.attempt
                );
                let runtime = self.runtime.clone();
                actix::spawn(async move {
                    let _ = runtime.stop(c.container_id, Duration::from_secs(1)).await;
                });
                continue;
            }
            // A running container of a task this worker has no record of (its store was lost):
            // adopt it rather than leave an unmanaged copy behind.
            let mut task = Task::new(c.image.clone());
            task.id = c.task_id;
            task.name = format!("adopted-{}", &c.task_id.simple().to_string()[..8]);
            task.attempt = c.attempt;
            task.state = State::Scheduled;
            task.worker = Some(self.name.clone());
            warn!(
                "worker {}: adopting unknown running task {}",
                self.name, c.task_id
            );
            self.tasks.insert(
                c.task_id,
                Entry {
                    task,
                    seq: 0,
                    stopping: false,
                    starting: false,
                },
            );
            current.insert(c.task_id, c);
        }

        let ids: Vec<Uuid> = self.tasks.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            let state = entry.task.state;
            if entry.starting {
                // A start is under way; its outcome is recorded when it returns.
                continue;
            }
            match current.remove(&id) {
                Some(c) if state.is_active() => {
                    if c.running {
                        if state == State::Scheduled {
                            self.record_running(id, &c);
                        } else if entry.task.container_id.as_deref() != Some(&c.container_id) {
                            entry.task.container_id = Some(c.container_id.clone());
                            entry.task.host_ports = c.host_ports.clone();
                        } else {
                            continue;
                        }
                        info!("worker {}: adopted running task {id}", self.name);
                    } else {
                        self.record_exit(id, &c, ctx);
                    }
                    self.changed_detached(id, ctx);
                }
                Some(_) => {}
                None if state == State::Scheduled && entry.task.container_id.is_none() => {
                    // Accepted before a crash but never started: start it now.
                    self.launch(id, None, ctx);
                }
                None if state.is_active() => {
                    entry.task.transition(State::Failed).ok();
                    entry.task.error =
                        Some("the container disappeared while the worker was not watching".into());
                    entry.task.container_id = None;
                    warn!("worker {}: task {id}: container gone, Failed", self.name);
                    self.changed_detached(id, ctx);
                }
                None => {
                    if entry.task.container_id.take().is_some() {
                        self.changed_detached(id, ctx);
                    }
                }
            }
        }
    }

    fn resync(&mut self, ctx: &mut Context<Self>) {
        let runtime = self.runtime.clone();
        let name = self.name.clone();
        ctx.spawn(
            async move { runtime.list(name).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(containers) => act.reconcile(containers, ctx),
                    Err(e) => {
                        warn!(
                            "worker {}: cannot list containers to reconcile: {e}",
                            act.name
                        );
                        ctx.run_later(Duration::from_secs(1), |act, ctx| act.resync(ctx));
                    }
                }),
        );
    }
}

fn persist(
    store: Option<&Store>,
    task: &Task,
) -> futures_util::future::BoxFuture<'static, Result<(), StoreError>> {
    let Some(store) = store else {
        return futures_util::future::ready(Ok(())).boxed();
    };
    let mut batch = Batch::new();
    if let Err(e) = batch.put_json(TASKS_TABLE, task.id.as_bytes().to_vec(), task) {
        return futures_util::future::ready(Err(e)).boxed();
    }
    store.commit(batch).boxed()
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        ctx.add_stream(self.runtime.events(self.name.clone()));
        self.resync(ctx);
    }
}

impl StreamHandler<RuntimeEvent> for Worker {
    fn handle(&mut self, event: RuntimeEvent, ctx: &mut Context<Self>) {
        match event {
            RuntimeEvent::Resync => self.resync(ctx),
            RuntimeEvent::Exited { container_id } => {
                let runtime = self.runtime.clone();
                ctx.spawn(
                    async move { runtime.inspect(container_id).await }
                        .into_actor(self)
                        .map(|res, act, ctx| match res {
                            Ok(Some(status)) => {
                                let id = status.task_id;
                                let current = act
                                    .tasks
                                    .get(&id)
                                    .is_some_and(|e| e.task.attempt == status.attempt);
                                if current && !status.running {
                                    act.record_exit(id, &status, ctx);
                                    act.changed_detached(id, ctx);
                                }
                            }
                            // Removed already: a stop of ours, which records its own outcome.
                            Ok(None) => {}
                            Err(e) => warn!(
                                "worker {}: cannot inspect an ended container: {e}",
                                act.name
                            ),
                        }),
                );
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        warn!("worker {}: the runtime's event stream ended", self.name);
    }
}

/// Run this attempt of a task. Idempotent by task id and attempt: a repeat returns the existing
/// task and never starts a second container. Answers once the record is durable.
#[derive(Message)]
#[rtype(result = "Result<Started, WorkerError>")]
pub struct StartTask {
    pub task: Task,
}

/// The answer to [`StartTask`].
#[derive(Debug, Clone)]
pub struct Started {
    pub task: Task,
    /// False when this attempt was known already.
    pub created: bool,
}

impl Handler<StartTask> for Worker {
    type Result = ResponseActFuture<Self, Result<Started, WorkerError>>;

    fn handle(&mut self, msg: StartTask, ctx: &mut Context<Self>) -> Self::Result {
        let mut task = msg.task;
        let id = task.id;
        task.attempt = task.attempt.max(1);
        let old = match self.tasks.get(&id) {
            Some(e) if e.task.attempt == task.attempt => {
                let started = Started {
                    task: e.task.clone(),
                    created: false,
                };
                return Box::pin(fut::ready(Ok(started)));
            }
            Some(e) if e.task.attempt > task.attempt => {
                let err = WorkerError::StaleAttempt {
                    id,
                    attempt: task.attempt,
                    current: e.task.attempt,
                };
                return Box::pin(fut::ready(Err(err)));
            }
            // A newer attempt replaces an older one: its container goes first.
            Some(e) => e.task.container_id.clone(),
            None => None,
        };
        task.state = State::Scheduled;
        task.worker = Some(self.name.clone());
        task.container_id = None;
        task.host_ports.clear();
        task.exit_code = None;
        task.error = None;
        task.start_time = None;
        task.finish_time = None;
        self.tasks.insert(
            id,
            Entry {
                task,
                seq: 0,
                stopping: false,
                // Reconciliation must not launch it before the record is durable.
                starting: true,
            },
        );
        let commit = self.changed(id, ctx);
        Box::pin(commit.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res {
                // Not durable, so not accepted: forget it; the caller retries.
                act.tasks.remove(&id);
                return Err(e.into());
            }
            act.launch(id, old, ctx);
            let task = act
                .tasks
                .get(&id)
                .map(|e| e.task.clone())
                .ok_or(WorkerError::NotFound(id))?;
            Ok(Started {
                task,
                created: true,
            })
        }))
    }
}

/// Stop the task: its container is stopped (SIGTERM, SIGKILL after `stop_timeout_s`) and removed,
/// then the task is Completed. Answers at once with the task as it is.
#[derive(Message)]
#[rtype(result = "Result<Task, WorkerError>")]
pub struct StopTask {
    pub id: Uuid,
    /// Only stop when this is the current attempt (`None`: whatever runs).
    pub attempt: Option<u32>,
}

impl Handler<StopTask> for Worker {
    type Result = Result<Task, WorkerError>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.id;
        let entry = self.tasks.get_mut(&id).ok_or(WorkerError::NotFound(id))?;
        if let Some(attempt) = msg.attempt
            && attempt < entry.task.attempt
        {
            return Err(WorkerError::StaleAttempt {
                id,
                attempt,
                current: entry.task.attempt,
            });
        }
        match entry.task.state {
            State::Completed => {
                if let Some(container) = entry.task.container_id.take() {
                    self.remove_detached(container);
                    self.changed_detached(id, ctx);
                }
            }
            State::Failed => {
                // Its container ended already: remove it (kept until now for its logs).
                if let Some(container) = entry.task.container_id.clone() {
                    self.remove_detached(container);
                }
                self.complete_stopped(id, ctx);
            }
            _ => self.stop_container(id, ctx),
        }
        self.tasks
            .get(&id)
            .map(|e| e.task.clone())
            .ok_or(WorkerError::NotFound(id))
    }
}

/// One task as the worker knows it.
#[derive(Message)]
#[rtype(result = "Option<Task>")]
pub struct GetTask(pub Uuid);

impl Handler<GetTask> for Worker {
    type Result = Option<Task>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        self.tasks.get(&msg.0).map(|e| e.task.clone())
    }
}

/// Every task of this worker, ordered by id.
#[derive(Message)]
#[rtype(result = "Vec<Task>")]
pub struct ListTasks;

impl Handler<ListTasks> for Worker {
    type Result = Vec<Task>;

    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let mut tasks: Vec<Task> = self.tasks.values().map(|e| e.task.clone()).collect();
        tasks.sort_by_key(|t| t.id);
        tasks
    }
}

/// The change feed: tasks changed after `since`, answered as soon as there is at least one (or
/// empty when `wait` passes). A watcher from another instance of the worker starts over at 0.
#[derive(Message)]
#[rtype(result = "Changes")]
pub struct WatchTasks {
    pub since: u64,
    /// The instance the watcher's `since` belongs to.
    pub instance: Option<Uuid>,
    pub wait: Duration,
}

/// The answer to [`WatchTasks`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    /// The worker process the sequence belongs to.
    pub instance: Uuid,
    /// Pass this as `since` next time.
    pub seq: u64,
    /// Every task changed after `since`, in the order of their last change.
    pub tasks: Vec<Task>,
}

impl Handler<WatchTasks> for Worker {
    type Result = ResponseFuture<Changes>;

    fn handle(&mut self, msg: WatchTasks, _: &mut Context<Self>) -> Self::Result {
        let since = match msg.instance {
            // Another process's sequence, or one from the future: start over.
            Some(i) if i != self.instance => 0,
            _ if msg.since > self.seq => 0,
            _ => msg.since,
        };
        if since < self.seq || msg.wait.is_zero() {
            let changes = self.changes_since(since);
            return Box::pin(async move { changes });
        }
        let (tx, rx) = oneshot::channel();
        self.watchers.retain(|w| !w.reply.is_closed());
        self.watchers.push(Watcher { since, reply: tx });
        let empty = Changes {
            instance: self.instance,
            seq: self.seq,
            tasks: Vec::new(),
        };
        let wait = msg.wait.min(MAX_WATCH_WAIT);
        Box::pin(async move {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(changes)) => changes,
                _ => empty,
            }
        })
    }
}

/// The worker's report about its machine.
#[derive(Message)]
#[rtype(result = "Result<NodeStats, WorkerError>")]
pub struct GetStats;

impl Handler<GetStats> for Worker {
    type Result = ResponseFuture<Result<NodeStats, WorkerError>>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let name = self.name.clone();
        let tasks = self.active_count();
        match &self.sampler {
            None => {
                let stats = NodeStats::simulated(&name, self.capacity, tasks);
                Box::pin(async move { Ok(stats) })
            }
            Some(sampler) => {
                let sample = sampler.send(Sample);
                Box::pin(async move {
                    let mut stats = sample.await.map_err(|_| WorkerError::Gone)?;
                    stats.name = name;
                    stats.tasks = tasks;
                    Ok(stats)
                })
            }
        }
    }
}

/// The worker's name and process instance.
#[derive(Message)]
#[rtype(result = "(String, Uuid)")]
pub struct Identify;

impl Handler<Identify> for Worker {
    type Result = MessageResult<Identify>;

    fn handle(&mut self, _: Identify, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.name.clone(), self.instance))
    }
}

/// The output of a task's container: the last `tail` lines, and on while it runs when `follow`.
#[derive(Message)]
#[rtype(result = "Result<BoxStream<'static, Result<Bytes, RuntimeError>>, WorkerError>")]
pub struct Logs {
    pub id: Uuid,
    pub tail: Option<usize>,
    pub follow: bool,
}

impl Handler<Logs> for Worker {
    type Result = Result<BoxStream<'static, Result<Bytes, RuntimeError>>, WorkerError>;

    fn handle(&mut self, msg: Logs, _: &mut Context<Self>) -> Self::Result {
        let entry = self
            .tasks
            .get(&msg.id)
            .ok_or(WorkerError::NotFound(msg.id))?;
        let container = entry
            .task
            .container_id
            .clone()
            .ok_or(WorkerError::NoContainer(msg.id))?;
        Ok(self.runtime.logs(container, msg.tail, msg.follow))
    }
}
