//! The worker's decision core: the rules of the tasks on one node, as plain synchronous code
//! with no actix, no I/O and no clock of its own.
//!
//! The [`Worker`](super::Worker) actor feeds it starts and stops from the manager, the outcome of
//! every runtime call, container exits and the runtime's list of containers, each with the time
//! it happened; it carries out the [`Effect`]s and writes what [`Core::take_writes`] returns
//! before it answers anyone. The seeded fault simulation drives the same code.
//!
//! The promises it keeps:
//! - **Idempotent by (task, attempt).** A repeated start returns the existing attempt and never
//!   makes a second container; a start older than the attempt it has is refused.
//! - **A stop is remembered.** A stop of attempt N leaves a durable *tombstone*: no attempt up
//!   to N of that task starts here afterwards, even when the stop arrives before the start, for
//!   an attempt the worker never saw, or across a restart of the worker.
//! - **A stop is carried out.** A failed runtime stop is retried with backoff until the
//!   container is gone; a worker restarted in the middle of one finishes it.
//! - **One container per task.** A newer attempt's container replaces the older one's (which is
//!   stopped first); a container the worker cannot account for (an older attempt, a fenced one,
//!   one whose start it recorded as failed) is removed, not left running.
//! - **Level-triggered.** [`Core::reconcile`] compares the table with the containers the runtime
//!   lists (on start, after the event stream reconnects, and periodically) and acts on every
//!   difference.
//! - **Bounded by retention, never ahead of the manager.** A finished task is dropped (record,
//!   feed position, store row) only once its retention passed *and* the manager acknowledged
//!   ([`Core::acked`]) the feed position of its latest durable record ([`Core::written`]); a
//!   tombstone of its attempt stays so a delayed start of it is still refused. A tombstone of a
//!   task the worker no longer has expires `retention` after it was written. Both happen in
//!   batches of at most [`SWEEP_BATCH`] per step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use log::{debug, info, warn};
use uuid::Uuid;

use super::{Tombstone, WorkerError};
use crate::clock::{Now, Timers, backoff};
use crate::runtime::{ContainerSpec, ContainerStatus, RuntimeError};
use crate::sim::planted::{Bug, planted};
use crate::task::{Goal, State, Task};

/// First retry of a failed runtime stop; each further one waits twice as long, up to
/// [`MAX_STOP_RETRY`].
pub const MIN_STOP_RETRY: Duration = Duration::from_secs(1);
pub const MAX_STOP_RETRY: Duration = Duration::from_secs(30);
/// Most tasks dropped, tombstones expired, or timers handled in one step: a backlog (a worker
/// restarted with a million finished tasks) is worked off a batch at a time, with starts and
/// stops served in between.
pub const SWEEP_BATCH: usize = 1000;

/// What the core asks the shell to do with the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Stop and remove `replaces` first when given, then create and start the attempt's
    /// container; report with [`Core::started`]. Sent after this step's writes are durable.
    Run {
        spec: ContainerSpec,
        replaces: Option<(String, Duration)>,
    },
    /// Stop and remove the container; report with [`Core::stopped`].
    Stop {
        id: Uuid,
        attempt: u32,
        container: String,
        timeout: Duration,
    },
    /// Remove an ended container, or whatever container has this name; a failure is only
    /// logged (reconciliation removes leftovers).
    Remove(String),
}

/// Records changed since the last [`Core::take_writes`]: commit them, then publish the tasks on
/// the change feed (and tell the core where with [`Core::written`]), and take the dropped ones
/// off it.
#[derive(Debug, Default)]
pub struct Writes {
    pub tasks: Vec<Task>,
    /// Tombstones: (task, highest fenced attempt and when).
    pub stops: Vec<(Uuid, Tombstone)>,
    /// Finished tasks dropped: delete their records.
    pub dropped: Vec<Uuid>,
    /// Tombstones expired: delete them.
    pub expired: Vec<Uuid>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.stops.is_empty()
            && self.dropped.is_empty()
            && self.expired.is_empty()
    }
}

/// Where the runtime stop of a container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    /// Asked of the runtime, after this many failures.
    InFlight(u32),
    /// Failed this many times; try again at this time.
    RetryAt(Duration, u32),
}

impl Stopping {
    fn failures(self) -> u32 {
        match self {
            Stopping::No => 0,
            Stopping::InFlight(n) | Stopping::RetryAt(_, n) => n,
        }
    }
}

struct Slot {
    task: Task,
    /// A runtime start of the current attempt is under way.
    starting: bool,
    stopping: Stopping,
    /// Reconciliation epoch of the slot's last runtime outcome: a container list begun before
    /// it is older than the slot and says nothing about it.
    epoch: u64,
    dirty: bool,
    /// Writes of the record taken and not yet known durable (or failed).
    unsettled: u32,
    /// Feed position of its latest durable record; 0 before there is one.
    position: u64,
    /// The attempt finished and its retention passed.
    expired: bool,
}

impl Slot {
    fn new(task: Task, epoch: u64) -> Slot {
        Slot {
            task,
            starting: false,
            stopping: Stopping::No,
            epoch,
            dirty: false,
            unsettled: 0,
            position: 0,
            expired: false,
        }
    }

    /// Nothing left to do or to tell but the manager's acknowledgement of `position`.
    fn retired(&self) -> bool {
        self.expired
            && self.task.state.is_finished()
            && self.task.container_id.is_none()
            && !self.starting
            && self.stopping == Stopping::No
            && !self.dirty
            && self.unsettled == 0
            && self.position > 0
    }
}

/// What the core keeps of a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tomb {
    attempt: u32,
    at: DateTime<Utc>,
}

/// The container of an older or fenced attempt, being removed.
struct Orphan {
    id: Uuid,
    attempt: u32,
    stopping: Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    RetryStop(Uuid, u32),
    RetryOrphan(String),
    /// A finished attempt has served its retention: its kept container goes, and the task may
    /// be dropped once the manager has recorded it.
    Expire(Uuid, u32),
    /// Drop what the manager acknowledged, expire old tombstones (armed for this instant).
    Sweep(Duration),
}

pub struct Core {
    name: String,
    retention: Duration,
    tasks: BTreeMap<Uuid, Slot>,
    tombstones: BTreeMap<Uuid, Tomb>,
    /// Tombstones by when they were written, oldest first, while they may expire: not those of
    /// tasks still here (they are written again when the task is dropped).
    aging: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// The feed position up to which the manager has recorded this worker's records.
    acked: u64,
    /// Retired tasks (see [`Slot::retired`]) by feed position, to drop once acknowledged. An
    /// entry whose slot changed since is found stale when it comes up.
    retired: BTreeMap<u64, Uuid>,
    orphans: BTreeMap<String, Orphan>,
    epoch: u64,
    timers: Timers<Timer>,
    /// The earliest [`Timer::Sweep`] armed and not yet fired.
    sweep_at: Option<Duration>,
    effects: Vec<Effect>,
    dirty_tasks: Vec<Uuid>,
    dirty_stops: Vec<Uuid>,
    dirty_drops: Vec<Uuid>,
    dirty_expired: Vec<Uuid>,
}

impl Core {
    /// A core with what the worker's store holds. Reconcile it with the runtime next, and tell
    /// it where the tasks are on the feed ([`Core::written`]).
    ///
    /// A finished task's retention counts from its `finish_time`, its kept container's from now;
    /// a tombstone's from when it was written (from now for those of older versions).
    pub fn recover(
        name: String,
        retention: Duration,
        now: Now,
        tasks: Vec<Task>,
        tombstones: Vec<(Uuid, Tombstone)>,
    ) -> Core {
        let mut core = Core {
            name,
            retention,
            tasks: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            aging: BTreeSet::new(),
            acked: 0,
            retired: BTreeMap::new(),
            orphans: BTreeMap::new(),
            epoch: 0,
            timers: Timers::default(),
            sweep_at: None,
            effects: Vec::new(),
            dirty_tasks: Vec::new(),
            dirty_stops: Vec::new(),
            dirty_drops: Vec::new(),
            dirty_expired: Vec::new(),
        };
        let ids: BTreeSet<Uuid> = tasks.iter().map(|t| t.id).collect();
        for (id, t) in tombstones {
            let at = t.at.unwrap_or(now.wall);
            core.tombstones.insert(
                id,
                Tomb {
                    attempt: t.attempt,
                    at,
                },
            );
            if !ids.contains(&id) {
                core.aging.insert((at, id));
            }
        }
        for task in tasks {
            let (id, attempt) = (task.id, task.attempt);
            let mut slot = Slot::new(task, 0);
            if slot.task.state.is_finished() {
                let left = if slot.task.container_id.is_some() {
                    retention
                } else {
                    let end = slot.task.finish_time.and_then(|f| add(f, retention));
                    end.map_or(retention, |end| {
                        (end - now.wall).to_std().unwrap_or(Duration::ZERO)
                    })
                };
                if left.is_zero() {
                    slot.expired = true;
                } else {
                    core.timers.arm(now.mono + left, Timer::Expire(id, attempt));
                }
            }
            core.tasks.insert(id, slot);
        }
        core.arm_sweep(now);
        core
    }

    // ---- what the shell reads -------------------------------------------------------------

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn take_writes(&mut self) -> Writes {
        let mut writes = Writes::default();
        for id in std::mem::take(&mut self.dirty_tasks) {
            if let Some(slot) = self.tasks.get_mut(&id) {
                slot.dirty = false;
                slot.unsettled += 1;
                writes.tasks.push(slot.task.clone());
            }
        }
        let mut stops = std::mem::take(&mut self.dirty_stops);
        stops.sort_unstable();
        stops.dedup();
        for id in stops {
            if let Some(t) = self.tombstones.get(&id) {
                let tombstone = Tombstone {
                    attempt: t.attempt,
                    at: Some(t.at),
                };
                writes.stops.push((id, tombstone));
            }
        }
        // A task started again since it was dropped has a record to keep, not to delete.
        writes.dropped = std::mem::take(&mut self.dirty_drops)
            .into_iter()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        writes.expired = std::mem::take(&mut self.dirty_expired)
            .into_iter()
            .filter(|id| !self.tombstones.contains_key(id))
            .collect();
        writes
    }

    /// These writes failed to commit: write them again with the next ones.
    pub fn unwritten(&mut self, writes: Writes) {
        for task in writes.tasks {
            if let Some(slot) = self.tasks.get_mut(&task.id) {
                slot.unsettled = slot.unsettled.saturating_sub(1);
            }
            self.touch(task.id);
        }
        for (id, _) in writes.stops {
            self.dirty_stops.push(id);
        }
        self.dirty_drops.extend(writes.dropped);
        self.dirty_expired.extend(writes.expired);
    }

    /// These tasks' records are durable and on the change feed at these positions (also the
    /// records the worker recovered, once its feed is built).
    pub fn written(&mut self, now: Now, published: &[(Uuid, u64)]) {
        for &(id, position) in published {
            let Some(slot) = self.tasks.get_mut(&id) else {
                continue;
            };
            slot.unsettled = slot.unsettled.saturating_sub(1);
            slot.position = slot.position.max(position);
            self.consider_retiring(id);
        }
        self.sweep(now);
    }

    /// The manager has recorded everything that followed from this worker's feed up to
    /// `position` (of this process's feed): what retired there may be dropped.
    pub fn acked(&mut self, now: Now, position: u64) {
        if position > self.acked {
            self.acked = position;
            self.sweep(now);
        }
    }

    pub fn next_timer(&self) -> Option<Duration> {
        self.timers.next()
    }

    pub fn task(&self, id: Uuid) -> Option<&Task> {
        self.tasks.get(&id).map(|s| &s.task)
    }

    /// Every task, ordered by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|s| &s.task)
    }

    /// Tasks with a container running or being made.
    pub fn active(&self) -> usize {
        self.tasks
            .values()
            .filter(|s| s.task.state.is_active())
            .count()
    }

    /// The highest attempt of the task fenced here.
    pub fn tombstone(&self, id: Uuid) -> Option<u32> {
        self.tombstones.get(&id).map(|t| t.attempt)
    }

    /// How many tombstones the worker keeps.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Whether a runtime call is under way (the simulation's quiescence test).
    pub fn busy(&self) -> bool {
        self.tasks
            .values()
            .any(|s| s.starting || matches!(s.stopping, Stopping::InFlight(_)))
            || self
                .orphans
                .values()
                .any(|o| matches!(o.stopping, Stopping::InFlight(_)))
    }

    /// Start a reconciliation: list the runtime's containers after this, and pass the token to
    /// [`Core::reconcile`] with the list.
    pub fn begin_reconcile(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// Run this attempt of a task. Answer once the step's writes are durable; `true` when the
    /// attempt is new here.
    pub fn start(&mut self, now: Now, mut task: Task) -> Result<(Task, bool), WorkerError> {
        let id = task.id;
        let attempt = task.attempt.max(1);
        if let Some(stopped) = self.tombstone(id)
            && attempt <= stopped
        {
            return Err(WorkerError::Stopped {
                id,
                attempt,
                stopped,
            });
        }
        let replaces = match self.tasks.get(&id) {
            Some(s) if s.task.attempt == attempt => return Ok((s.task.clone(), false)),
            Some(s) if s.task.attempt > attempt => {
                return Err(WorkerError::StaleAttempt {
                    id,
                    attempt,
                    current: s.task.attempt,
                });
            }
            Some(_) => self.supersede(now, id),
            None => None,
        };
        task.attempt = attempt;
        task.state = State::Scheduled;
        task.desired = Goal::Running;
        task.worker = Some(self.name.clone());
        task.container_id = None;
        task.host_ports.clear();
        task.exit_code = None;
        task.error = None;
        task.start_time = None;
        task.finish_time = None;
        let spec = self.spec(&task);
        info!(
            "worker {}: starting task {id} attempt {attempt} ({})",
            self.name, task.image
        );
        let mut slot = Slot::new(task.clone(), self.epoch);
        slot.starting = true;
        self.tasks.insert(id, slot);
        self.touch(id);
        self.effects.push(Effect::Run { spec, replaces });
        Ok((task, true))
    }

    /// The current attempt of `id` gives way to a newer one: it is fenced, and its container
    /// (if any) is handed back to go first.
    fn supersede(&mut self, now: Now, id: Uuid) -> Option<(String, Duration)> {
        let old = self.tasks.get(&id)?.task.attempt;
        self.fence(now, id, old, false);
        let slot = self.tasks.get_mut(&id)?;
        let container = slot.task.container_id.take()?;
        let timeout = Duration::from_secs(slot.task.stop_timeout_s);
        Some((container, timeout))
    }

    /// Stop the task: every attempt up to `attempt` (the current one when `None`) is fenced for
    /// good, and the current one's container is stopped and removed, after which the task is
    /// Completed. Answer once the step's writes are durable.
    pub fn stop(&mut self, now: Now, id: Uuid, attempt: Option<u32>) -> Result<Task, WorkerError> {
        let current = self.tasks.get(&id).map(|s| s.task.attempt);
        let Some(target) = attempt.or(current) else {
            return Err(WorkerError::NotFound(id));
        };
        if current.is_some() || !planted(Bug::EarlyStopForgotten) {
            self.fence(now, id, target, false);
        }
        let Some(current) = current else {
            // A stop that came before its start: remembered, so the start will be refused.
            info!(
                "worker {}: task {id} attempt {target} stopped before it arrived",
                self.name
            );
            return Err(WorkerError::NotFound(id));
        };
        if current > target {
            return Err(WorkerError::StaleAttempt {
                id,
                attempt: target,
                current,
            });
        }
        self.carry_out_stop(now, id);
        Ok(self.tasks[&id].task.clone())
    }

    /// Bring a fenced slot to its end: stop its container, or finish it when it has none.
    fn carry_out_stop(&mut self, now: Now, id: Uuid) {
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        if slot.starting || slot.stopping != Stopping::No {
            // The start's outcome, or the stop under way, comes back here.
            return;
        }
        match (slot.task.state, slot.task.container_id.clone()) {
            (State::Completed, None) => {}
            (state, Some(container)) if state.is_finished() => {
                // Ended already; its container was kept for its logs.
                self.effects.push(Effect::Remove(container));
                self.complete_stopped(now, id);
            }
            (_, Some(container)) => {
                info!(
                    "worker {}: stopping task {id} attempt {}",
                    self.name, slot.task.attempt
                );
                slot.stopping = Stopping::InFlight(0);
                let timeout = Duration::from_secs(slot.task.stop_timeout_s);
                let attempt = slot.task.attempt;
                self.effects.push(Effect::Stop {
                    id,
                    attempt,
                    container,
                    timeout,
                });
            }
            (_, None) => self.complete_stopped(now, id),
        }
    }

    fn fenced(&self, id: Uuid, attempt: u32) -> bool {
        self.tombstone(id).is_some_and(|t| attempt <= t)
    }

    /// Every attempt of `id` up to `attempt` is fenced here for good: the tombstone is raised
    /// (and written now) when it is lower, or written now anyway with `rewrite`.
    fn fence(&mut self, now: Now, id: Uuid, attempt: u32, rewrite: bool) {
        let old = self.tombstones.get(&id).copied();
        if old.is_some_and(|t| t.attempt >= attempt && !rewrite) {
            return;
        }
        if let Some(t) = old {
            self.aging.remove(&(t.at, id));
        }
        let attempt = old.map_or(attempt, |t| t.attempt.max(attempt));
        self.tombstones.insert(
            id,
            Tomb {
                attempt,
                at: now.wall,
            },
        );
        if !self.tasks.contains_key(&id) {
            // Of a task this worker does not have (a stop before its start, or a drop): it
            // expires after the retention.
            self.aging.insert((now.wall, id));
            self.arm_sweep(now);
        }
        self.dirty_stops.push(id);
    }

    /// The outcome of an [`Effect::Run`].
    pub fn started(
        &mut self,
        now: Now,
        id: Uuid,
        attempt: u32,
        result: Result<ContainerStatus, RuntimeError>,
    ) {
        let current = self
            .tasks
            .get(&id)
            .is_some_and(|s| s.task.attempt == attempt);
        if !current {
            // A newer attempt replaced this one while it started: its container must go.
            match result {
                Ok(status) => self.orphan(id, attempt, status.container_id, Duration::ZERO),
                Err(_) => self
                    .effects
                    .push(Effect::Remove(ContainerSpec::container_name(id, attempt))),
            }
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let fenced = self.fenced(id, attempt);
        let slot = self.tasks.get_mut(&id).expect("checked above");
        slot.starting = false;
        slot.epoch = epoch;
        match result {
            Ok(status) => {
                slot.task.container_id = Some(status.container_id.clone());
                if fenced {
                    self.carry_out_stop(now, id);
                    return;
                }
                if slot.task.state == State::Scheduled {
                    if status.running || status.exit_code.is_some() {
                        self.record_running(id, &status);
                    }
                    if !status.running && status.exit_code.is_some() {
                        self.record_exit(now, id, &status);
                    }
                }
                self.touch(id);
            }
            Err(e) => {
                warn!(
                    "worker {}: task {id} attempt {attempt} could not start: {e}",
                    self.name
                );
                // Whatever the runtime made of it before failing must not run unaccounted.
                self.effects
                    .push(Effect::Remove(ContainerSpec::container_name(id, attempt)));
                slot.task.container_id = None;
                if slot.task.state.is_finished() {
                    return;
                }
                if fenced {
                    self.complete_stopped(now, id);
                    return;
                }
                let _ = slot.task.transition(State::Failed, now.wall);
                slot.task.error = Some(e.to_string());
                self.touch(id);
                self.finished(now, id);
            }
        }
    }

    /// The outcome of an [`Effect::Stop`] (the container is gone when it is `Ok`).
    pub fn stopped(
        &mut self,
        now: Now,
        id: Uuid,
        attempt: u32,
        container: String,
        result: Result<(), RuntimeError>,
    ) {
        if let Some(orphan) = self.orphans.get_mut(&container) {
            match result {
                Ok(()) => {
                    self.orphans.remove(&container);
                }
                Err(e) => {
                    let failures = orphan.stopping.failures() + 1;
                    let at = now.mono + stop_backoff(failures);
                    warn!(
                        "worker {}: removing container {} of task {} attempt {} failed ({e}); retrying",
                        self.name,
                        short(&container),
                        orphan.id,
                        orphan.attempt
                    );
                    orphan.stopping = Stopping::RetryAt(at, failures);
                    self.timers.arm(at, Timer::RetryOrphan(container));
                }
            }
            return;
        }
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        if slot.task.attempt != attempt || slot.task.container_id.as_deref() != Some(&container) {
            return;
        }
        self.epoch += 1;
        slot.epoch = self.epoch;
        match result {
            Ok(()) => {
                slot.stopping = Stopping::No;
                self.complete_stopped(now, id);
            }
            Err(_) if planted(Bug::FailedStopNotRetried) => {}
            Err(e) => {
                let failures = slot.stopping.failures() + 1;
                let at = now.mono + stop_backoff(failures);
                warn!(
                    "worker {}: stopping task {id} attempt {attempt} failed ({e}); retrying in {:.0?}",
                    self.name,
                    stop_backoff(failures)
                );
                slot.stopping = Stopping::RetryAt(at, failures);
                let note = format!("stop failed: {e}; retrying");
                if slot.task.error.as_deref() != Some(note.as_str()) {
                    slot.task.error = Some(note);
                    self.touch(id);
                }
                self.timers.arm(at, Timer::RetryStop(id, attempt));
            }
        }
    }

    /// A container of this worker ended (as the runtime inspected it after its exit event).
    pub fn exited(&mut self, now: Now, status: ContainerStatus) {
        let id = status.task_id;
        let fenced = self.fenced(id, status.attempt);
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        if slot.task.attempt != status.attempt || status.running {
            return;
        }
        if slot.task.container_id.is_none() {
            slot.task.container_id = Some(status.container_id.clone());
        }
        if fenced {
            // Our own stop ended it: the stop's completion removes the container and records
            // Completed, so the task is never seen Completed with its container still there.
            let slot = self.tasks.get_mut(&id).expect("checked above");
            slot.task.exit_code = status.exit_code;
            return;
        }
        if slot.task.state == State::Scheduled {
            self.record_running(id, &status);
        }
        self.record_exit(now, id, &status);
        self.touch(id);
    }

    /// Compare the table with the runtime's containers (listed after `token` was taken from
    /// [`Core::begin_reconcile`]) and act on every difference.
    pub fn reconcile(&mut self, now: Now, token: u64, containers: Vec<ContainerStatus>) {
        let mut listed: BTreeMap<Uuid, ContainerStatus> = BTreeMap::new();
        for c in containers {
            let slot = self.tasks.get(&c.task_id);
            if slot.is_some_and(|s| s.epoch >= token || s.starting) {
                // Changed since the list was taken, or its start is under way: the list is
                // older than what the slot knows.
                if slot.is_some_and(|s| s.task.attempt == c.attempt) {
                    listed.insert(c.task_id, c);
                }
                continue;
            }
            if self.orphans.contains_key(&c.container_id) {
                continue;
            }
            let current = slot.is_some_and(|s| s.task.attempt == c.attempt);
            if current {
                listed.insert(c.task_id, c);
                continue;
            }
            let newer_known = slot.is_some_and(|s| s.task.attempt > c.attempt);
            if newer_known || self.fenced(c.task_id, c.attempt) || !c.running {
                // An older attempt, a fenced one, or an ended container nobody knows: remove
                // it so that each task has exactly one copy.
                self.orphan(c.task_id, c.attempt, c.container_id, Duration::from_secs(1));
                continue;
            }
            // A running container of a task this worker has no record of (its store was lost):
            // adopt it rather than leave an unmanaged copy behind.
            warn!(
                "worker {}: adopting unknown running task {} attempt {}",
                self.name, c.task_id, c.attempt
            );
            let mut task = Task::new(c.image.clone());
            task.id = c.task_id;
            task.name = format!("adopted-{}", &c.task_id.simple().to_string()[..8]);
            task.attempt = c.attempt;
            task.state = State::Scheduled;
            task.worker = Some(self.name.clone());
            task.created_at = now.wall;
            self.tasks.insert(c.task_id, Slot::new(task, 0));
            listed.insert(c.task_id, c);
        }

        let ids: Vec<Uuid> = self.tasks.keys().copied().collect();
        for id in ids {
            let slot = &self.tasks[&id];
            if slot.starting || slot.epoch >= token {
                continue;
            }
            let (state, attempt) = (slot.task.state, slot.task.attempt);
            let fenced = self.fenced(id, attempt);
            match listed.remove(&id) {
                Some(c) if fenced => {
                    let slot = self.tasks.get_mut(&id).expect("listed above");
                    slot.task.container_id = Some(c.container_id);
                    self.carry_out_stop(now, id);
                }
                Some(c) if state.is_active() => {
                    if c.running {
                        let slot = self.tasks.get_mut(&id).expect("listed above");
                        if state == State::Scheduled {
                            self.record_running(id, &c);
                        } else if slot.task.container_id.as_deref() != Some(&c.container_id) {
                            slot.task.container_id = Some(c.container_id.clone());
                            slot.task.host_ports = c.host_ports.clone();
                        } else {
                            continue;
                        }
                        info!("worker {}: adopted running task {id}", self.name);
                    } else {
                        if state == State::Scheduled {
                            self.record_running(id, &c);
                        }
                        self.record_exit(now, id, &c);
                    }
                    self.touch(id);
                }
                Some(c) => {
                    // The record says it ended; a container of it still running (a start that
                    // was recorded as failed, say) must not go on unaccounted.
                    if c.running {
                        warn!(
                            "worker {}: task {id} attempt {attempt} is {state} but its container runs; removing it",
                            self.name
                        );
                        self.orphan(id, attempt, c.container_id, Duration::from_secs(1));
                        let slot = self.tasks.get_mut(&id).expect("listed above");
                        slot.task.container_id = None;
                        self.touch(id);
                    }
                }
                None if fenced => {
                    if state != State::Completed {
                        let slot = self.tasks.get_mut(&id).expect("listed above");
                        slot.task.container_id = None;
                        self.complete_stopped(now, id);
                    }
                }
                None if state == State::Scheduled && slot.task.container_id.is_none() => {
                    // Accepted before a crash but never started: start it now.
                    let slot = self.tasks.get_mut(&id).expect("listed above");
                    slot.starting = true;
                    let spec = self.spec(&self.tasks[&id].task);
                    info!(
                        "worker {}: starting task {id} attempt {attempt}, accepted before a restart",
                        self.name
                    );
                    self.effects.push(Effect::Run {
                        spec,
                        replaces: None,
                    });
                }
                None if state.is_active() => {
                    let slot = self.tasks.get_mut(&id).expect("listed above");
                    let _ = slot.task.transition(State::Failed, now.wall);
                    slot.task.error =
                        Some("the container disappeared while the worker was not watching".into());
                    slot.task.container_id = None;
                    slot.task.host_ports.clear();
                    warn!("worker {}: task {id}: container gone, Failed", self.name);
                    self.touch(id);
                    self.finished(now, id);
                }
                None => {
                    let slot = self.tasks.get_mut(&id).expect("listed above");
                    if slot.task.container_id.take().is_some() {
                        self.touch(id);
                    }
                }
            }
        }
    }

    /// Time passed: retry stops, end retentions, drop and expire what may go. At most
    /// [`SWEEP_BATCH`] timers per call: [`Core::next_timer`] is then due at once for the rest.
    pub fn tick(&mut self, now: Now) {
        let mut handled = 0;
        while handled < SWEEP_BATCH
            && let Some(timer) = self.timers.pop_due(now.mono)
        {
            handled += 1;
            match timer {
                Timer::RetryStop(id, attempt) => {
                    let Some(slot) = self.tasks.get_mut(&id) else {
                        continue;
                    };
                    let Stopping::RetryAt(at, failures) = slot.stopping else {
                        continue;
                    };
                    if slot.task.attempt != attempt || at > now.mono {
                        continue;
                    }
                    let Some(container) = slot.task.container_id.clone() else {
                        continue;
                    };
                    slot.stopping = Stopping::InFlight(failures);
                    let timeout = Duration::from_secs(slot.task.stop_timeout_s);
                    self.effects.push(Effect::Stop {
                        id,
                        attempt,
                        container,
                        timeout,
                    });
                }
                Timer::RetryOrphan(container) => {
                    if let Some(o) = self.orphans.get_mut(&container)
                        && let Stopping::RetryAt(at, failures) = o.stopping
                        && at <= now.mono
                    {
                        o.stopping = Stopping::InFlight(failures);
                        self.effects.push(Effect::Stop {
                            id: o.id,
                            attempt: o.attempt,
                            container,
                            timeout: Duration::from_secs(1),
                        });
                    }
                }
                Timer::Expire(id, attempt) => {
                    let Some(slot) = self.tasks.get_mut(&id) else {
                        continue;
                    };
                    if slot.task.attempt != attempt || !slot.task.state.is_finished() {
                        continue;
                    }
                    slot.expired = true;
                    if let Some(container) = slot.task.container_id.take() {
                        // Its record changes: it retires once that is written.
                        self.effects.push(Effect::Remove(container));
                        self.touch(id);
                    } else {
                        self.consider_retiring(id);
                    }
                }
                Timer::Sweep(at) => {
                    if self.sweep_at == Some(at) {
                        self.sweep_at = None;
                    }
                }
            }
        }
        self.sweep(now);
    }

    // ---- the rules ------------------------------------------------------------------------

    /// The current attempt of `id` just finished: its retention starts.
    fn finished(&mut self, now: Now, id: Uuid) {
        if let Some(slot) = self.tasks.get(&id) {
            let timer = Timer::Expire(id, slot.task.attempt);
            self.timers.arm(now.mono + self.retention, timer);
        }
    }

    /// Queue the task to be dropped once the manager acknowledges its position, if it retired.
    fn consider_retiring(&mut self, id: Uuid) {
        if let Some(slot) = self.tasks.get(&id)
            && slot.retired()
        {
            self.retired.insert(slot.position, id);
        }
    }

    /// Drop retired tasks the manager acknowledged and expire old tombstones, a batch of each;
    /// then arm the next sweep.
    fn sweep(&mut self, now: Now) {
        let mut dropped = 0;
        let mut looked = 0;
        while dropped < SWEEP_BATCH && looked < 4 * SWEEP_BATCH {
            let Some((&position, &id)) = self.retired.first_key_value() else {
                break;
            };
            if position > self.acked && !planted(Bug::DropUnacknowledged) {
                break;
            }
            self.retired.pop_first();
            looked += 1;
            // Stale when the task changed (or was dropped) since it was queued.
            if self
                .tasks
                .get(&id)
                .is_some_and(|s| s.position == position && s.retired())
            {
                self.drop_task(now, id);
                dropped += 1;
            }
        }
        let mut expired = 0;
        looked = 0;
        while expired < SWEEP_BATCH && looked < 4 * SWEEP_BATCH {
            let Some(&(at, id)) = self.aging.first() else {
                break;
            };
            if add(at, self.retention).is_none_or(|end| end > now.wall) {
                break;
            }
            self.aging.pop_first();
            looked += 1;
            if self.tombstones.get(&id).is_some_and(|t| t.at == at) && !self.tasks.contains_key(&id)
            {
                self.tombstones.remove(&id);
                self.dirty_expired.push(id);
                expired += 1;
            }
        }
        if dropped == SWEEP_BATCH || expired == SWEEP_BATCH {
            info!(
                "worker {}: dropped {dropped} finished task(s) the manager has recorded, expired {expired} tombstone(s); more to come",
                self.name
            );
        } else if dropped > 0 || expired > 0 {
            debug!(
                "worker {}: dropped {dropped} finished task(s) the manager has recorded, expired {expired} tombstone(s)",
                self.name
            );
        }
        self.arm_sweep(now);
    }

    /// Drop a retired task: its record goes, a tombstone of its attempt stays.
    fn drop_task(&mut self, now: Now, id: Uuid) {
        let Some(slot) = self.tasks.remove(&id) else {
            return;
        };
        debug!(
            "worker {}: dropping task {id} attempt {} ({})",
            self.name, slot.task.attempt, slot.task.state
        );
        self.fence(now, id, slot.task.attempt, true);
        self.dirty_drops.push(id);
    }

    /// Arm a sweep for the next thing that may go: at once while acknowledged retired tasks
    /// are left, else when the oldest tombstone expires.
    fn arm_sweep(&mut self, now: Now) {
        let drops_left = self
            .retired
            .first_key_value()
            .is_some_and(|(&p, _)| p <= self.acked);
        let next = if drops_left {
            Some(now.mono)
        } else {
            self.aging.first().map(|&(at, _)| {
                let end = add(at, self.retention).unwrap_or(DateTime::<Utc>::MAX_UTC);
                now.mono + (end - now.wall).to_std().unwrap_or(Duration::ZERO)
            })
        };
        if let Some(at) = next
            && self.sweep_at.is_none_or(|armed| at < armed)
        {
            self.sweep_at = Some(at);
            self.timers.arm(at, Timer::Sweep(at));
        }
    }

    /// Remove a container the table does not account for.
    fn orphan(&mut self, id: Uuid, attempt: u32, container: String, timeout: Duration) {
        if self.orphans.contains_key(&container) {
            return;
        }
        info!(
            "worker {}: removing container {} (task {id} attempt {attempt})",
            self.name,
            short(&container)
        );
        self.orphans.insert(
            container.clone(),
            Orphan {
                id,
                attempt,
                stopping: Stopping::InFlight(0),
            },
        );
        self.effects.push(Effect::Stop {
            id,
            attempt,
            container,
            timeout,
        });
    }

    /// Scheduled → Running with what the runtime says about the container.
    fn record_running(&mut self, id: Uuid, status: &ContainerStatus) {
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        if slot.task.state != State::Scheduled {
            return;
        }
        let at = status.started_at.unwrap_or(slot.task.created_at);
        if let Err(e) = slot.task.transition(State::Running, at) {
            warn!("worker {}: task {id}: {e}", self.name);
            return;
        }
        slot.task.container_id = Some(status.container_id.clone());
        slot.task.host_ports = status.host_ports.clone();
        slot.task.exit_code = None;
        slot.task.error = None;
        info!(
            "worker {}: task {id} attempt {} Running in {}",
            self.name,
            slot.task.attempt,
            short(&status.container_id)
        );
    }

    /// The current attempt's container ended: Completed or Failed, by what the runtime says.
    fn record_exit(&mut self, now: Now, id: Uuid, status: &ContainerStatus) {
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        if slot.task.state.is_finished() {
            return;
        }
        let code = status.exit_code;
        let (to, error) = if status.oom_killed {
            let limit = slot.task.memory;
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
        if let Err(e) = slot
            .task
            .transition(to, status.finished_at.unwrap_or(now.wall))
        {
            warn!("worker {}: task {id}: {e}", self.name);
            return;
        }
        slot.task.exit_code = code;
        slot.task.error = error;
        slot.task.host_ports.clear();
        info!(
            "worker {}: task {id} attempt {} {to} (exit code {})",
            self.name,
            slot.task.attempt,
            code.map_or("unknown".into(), |c| c.to_string())
        );
        // Keep the ended container for its logs, for a while.
        self.finished(now, id);
    }

    /// The stop is done and the container gone: Completed.
    fn complete_stopped(&mut self, now: Now, id: Uuid) {
        let Some(slot) = self.tasks.get_mut(&id) else {
            return;
        };
        slot.task.container_id = None;
        slot.task.host_ports.clear();
        slot.task.desired = Goal::Stopped;
        // The container is gone (reconciliation may find so while a runtime stop of it is
        // under way or waits for its retry): nothing is left to stop. The stop's outcome, if it
        // comes, names a container the slot no longer has and is ignored; left `InFlight` or
        // `RetryAt`, the slot would never retire, and the task never be dropped.
        slot.stopping = Stopping::No;
        let was_finished = slot.task.state.is_finished();
        if was_finished && slot.task.state != State::Failed {
            self.touch(id);
            return;
        }
        if slot.task.state == State::Failed {
            // Stopping a failed attempt ends it for good.
            slot.task.state = State::Completed;
        } else if let Err(e) = slot.task.transition(State::Completed, now.wall) {
            warn!("worker {}: task {id}: {e}", self.name);
        }
        if slot
            .task
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("stop failed"))
        {
            slot.task.error = None;
        }
        info!("worker {}: task {id} stopped: Completed", self.name);
        self.touch(id);
        if !was_finished {
            self.finished(now, id);
        }
    }

    fn spec(&self, task: &Task) -> ContainerSpec {
        ContainerSpec {
            name: ContainerSpec::container_name(task.id, task.attempt),
            task_id: task.id,
            attempt: task.attempt,
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
            pids_limit: task.pids_limit,
            volumes: task.volumes.clone(),
        }
    }

    fn touch(&mut self, id: Uuid) {
        if let Some(slot) = self.tasks.get_mut(&id)
            && !slot.dirty
        {
            slot.dirty = true;
            self.dirty_tasks.push(id);
        }
    }
}

/// Wait before retry number `failures` of a runtime stop: 1 s, 2 s, 4 s … up to 30 s.
pub fn stop_backoff(failures: u32) -> Duration {
    backoff(MIN_STOP_RETRY, MAX_STOP_RETRY, failures.saturating_sub(1))
}

/// `at` plus `d`, when that is a time chrono can hold.
fn add(at: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
}

/// The first 12 characters of a container id, as Docker shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
