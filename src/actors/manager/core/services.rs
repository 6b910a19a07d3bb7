//! Services: the desired count of a template's tasks, compared with the tasks there are, on
//! every input that touches them (ARCHITECTURE.md §13).
//!
//! A service's tasks are ordinary tasks carrying `service`, `version` and `slot`. Whenever one
//! of them changes, a node comes or goes, the service itself changes, or a timer of its own
//! fires, [`Core::reconcile_service`] looks at all of them afresh and decides, slot by slot
//! (a replicated service's slots are 1..=replicas; a global service's are the eligible nodes):
//! - a slot with no live task gets a new one of the current version (a replacement keeps the
//!   slot, and prefers the node its last task ran on, for its volumes);
//! - a slot whose task runs an older version is *outdated*; a rollout takes `parallelism`
//!   outdated slots at a time: stop-first stops the old task and fills the slot once it is
//!   gone, start-first starts the new one and stops the old once the new counts as updated
//!   (Running for `min_healthy_s`, and passing its health check when it has one);
//! - a task in a slot beyond the replicas, or of a deleted service, is stopped;
//! - too many failures among the rollout's new tasks pause it or roll it back, which makes the
//!   previous template current again and replaces slots the same way.
//!
//! Nothing here remembers what it did last: the slots' state is read off the tasks each time.
//! What is kept in memory only (when a task was first seen Running, the delay between batches,
//! a slot's replacement backoff) starts over after a restart, which only makes it wait again.

use std::collections::BTreeMap;

use super::*;
use crate::service::{
    Endpoint, FailureAction, Mode, Order, Previous, Rollout, RolloutState, Service, ServiceSpec,
    ServiceView, VersionCount, same_template, template_json,
};

/// Derives a service task's id from its service, the service's creation and a counter, so the
/// core stays deterministic (the fault simulation replays it from a seed).
const TASK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6375_6265_2d73_6572_7669_6365_2d74_6173);

/// A slot: its number (replicated) or its node (global).
type SlotKey = (u32, String);

pub(super) struct ServiceEntry {
    pub(super) svc: Service,
    /// Its tasks not yet collected, in any state.
    pub(super) tasks: BTreeSet<Uuid>,
    /// Current-version tasks by when they were first seen Running (monotonic).
    running_since: BTreeMap<Uuid, Duration>,
    /// A batch of the rollout was under way at the last look.
    in_batch: bool,
    /// The next batch waits until then (`delay_s`).
    next_batch_at: Option<Duration>,
    /// Slots whose tasks keep ending: their next replacement waits.
    backoff: BTreeMap<SlotKey, Backoff>,
    endpoints: Vec<Endpoint>,
    endpoints_index: u64,
    /// Deleted, and its record gone: kept so ids stay stable.
    gone: bool,
}

/// Why a service change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceRefusal {
    #[error("service {0} does not exist")]
    NotFound(String),
    #[error(
        "service {0} exists already with another spec; change it with PUT or PATCH /services/{0}"
    )]
    Exists(String),
    #[error(
        "service {0} is being deleted: its tasks are stopping; create it again once it is gone"
    )]
    Removing(String),
    #[error("service {name} has no previous version to roll back to (it is at version {version})")]
    NoPrevious { name: String, version: u64 },
}

impl ServiceEntry {
    fn new(svc: Service) -> ServiceEntry {
        ServiceEntry {
            svc,
            tasks: BTreeSet::new(),
            running_since: BTreeMap::new(),
            in_batch: false,
            next_batch_at: None,
            backoff: BTreeMap::new(),
            endpoints: Vec::new(),
            endpoints_index: 0,
            gone: false,
        }
    }
}

/// A slot's consecutive ended tasks, and when its next replacement may start.
struct Backoff {
    ended: u32,
    /// The last ended task counted.
    last: Uuid,
    not_before: Duration,
}

/// What a slot looks like now.
#[derive(Default)]
struct Slot {
    /// Current version, desired Running, not leaving a draining node: best first.
    staying: Vec<Uuid>,
    /// Desired Running but to be replaced: an older version, or on a draining node.
    leaving: Vec<Uuid>,
    /// A leaving task must go now, whatever the rollout (its node drains).
    urgent: bool,
    /// Being stopped and not gone yet.
    stopping: usize,
}

impl Core {
    /// Services as the store holds them, and the tasks that belong to each (after
    /// [`Core::recover`]).
    pub fn restore_services(&mut self, now: Now, services: Vec<Service>) {
        for svc in services {
            let sid = self.services.len();
            self.service_ids.insert(svc.name.clone(), sid);
            self.services.push(ServiceEntry::new(svc));
            self.dirty_services.insert(sid);
        }
        if self.services.is_empty() {
            return;
        }
        let mut owned: Vec<(usize, Uuid)> = Vec::new();
        for e in self.tasks.values() {
            if let Some(name) = &e.task.service
                && let Some(&sid) = self.service_ids.get(name)
            {
                owned.push((sid, e.task.id));
            }
        }
        for (sid, id) in owned {
            self.services[sid].tasks.insert(id);
        }
        self.settle(now);
    }

    /// `POST /services`: a new service, or the same spec again (idempotent).
    pub fn create_service(
        &mut self,
        now: Now,
        spec: ServiceSpec,
    ) -> Result<(Service, bool), ServiceRefusal> {
        if let Some(&sid) = self.service_ids.get(&spec.name) {
            let e = &self.services[sid];
            if e.svc.removing {
                return Err(ServiceRefusal::Removing(spec.name));
            }
            let same = e.svc.mode == spec.mode
                && e.svc.replicas == spec.replicas
                && e.svc.update == spec.update
                && same_template(&e.svc.task, &spec.task);
            return if same {
                Ok((e.svc.clone(), false))
            } else {
                Err(ServiceRefusal::Exists(spec.name))
            };
        }
        let svc = Service {
            name: spec.name.clone(),
            mode: spec.mode,
            replicas: spec.replicas,
            task: spec.task,
            update: spec.update,
            version: 1,
            previous: None,
            last_version: 1,
            rollout: Rollout {
                state: RolloutState::Completed,
                from_version: 0,
                to_version: 1,
                started_at: Some(now.wall),
                finished_at: None,
                message: None,
            },
            created_tasks: 0,
            removing: false,
            created_at: now.wall,
            updated_at: now.wall,
        };
        info!("service {}: created ({:?})", svc.name, svc.mode);
        let sid = self.services.len();
        self.service_ids.insert(svc.name.clone(), sid);
        self.services.push(ServiceEntry::new(svc));
        self.service_changed(sid);
        self.settle(now);
        Ok((self.services[sid].svc.clone(), true))
    }

    /// `PUT`/`PATCH /services/{name}`: the new spec. A changed template is a new version, and
    /// starts a rollout to it; replicas and the update settings apply at once.
    pub fn update_service(
        &mut self,
        now: Now,
        spec: ServiceSpec,
    ) -> Result<Service, ServiceRefusal> {
        let sid = self.live_service(&spec.name)?;
        let e = &mut self.services[sid];
        let svc = &mut e.svc;
        if svc.mode != spec.mode {
            // The HTTP layer refuses this with its reason; keep the mode.
            warn!("service {}: the mode cannot change", svc.name);
        }
        svc.replicas = spec.replicas;
        svc.update = spec.update;
        if !same_template(&svc.task, &spec.task) {
            let from = svc.version;
            svc.last_version += 1;
            let to = svc.last_version;
            info!(
                "service {}: version {to} (from {from}), rolling out",
                svc.name
            );
            svc.previous = Some(Previous {
                version: from,
                task: std::mem::replace(&mut svc.task, spec.task),
            });
            svc.version = to;
            svc.rollout = Rollout {
                state: RolloutState::Updating,
                from_version: from,
                to_version: to,
                started_at: Some(now.wall),
                finished_at: None,
                message: None,
            };
            e.in_batch = false;
            e.next_batch_at = None;
        } else if svc.rollout.state == RolloutState::Paused {
            // Any change resumes a paused rollout, as `docker service update` does.
            info!("service {}: rollout resumed", svc.name);
            svc.rollout.state = RolloutState::Updating;
            svc.rollout.message = None;
        }
        svc.updated_at = now.wall;
        self.service_changed(sid);
        self.settle(now);
        Ok(self.services[sid].svc.clone())
    }

    /// `POST /services/{name}/rollback`: the previous template becomes current again, rolled
    /// out like any change.
    pub fn rollback_service(&mut self, now: Now, name: &str) -> Result<Service, ServiceRefusal> {
        let sid = self.live_service(name)?;
        self.roll_back(now, sid, "rollback asked for".into())?;
        self.settle(now);
        Ok(self.services[sid].svc.clone())
    }

    /// `DELETE /services/{name}`: every task stops; the record goes once none runs.
    pub fn delete_service(&mut self, now: Now, name: &str) -> Result<Service, ServiceRefusal> {
        let sid = *self
            .service_ids
            .get(name)
            .ok_or_else(|| ServiceRefusal::NotFound(name.to_string()))?;
        let e = &mut self.services[sid];
        if !e.svc.removing {
            info!("service {name}: deleted; stopping its tasks");
            e.svc.removing = true;
            e.svc.updated_at = now.wall;
            self.service_changed(sid);
        }
        self.settle(now);
        Ok(self
            .services
            .get(sid)
            .map(|e| e.svc.clone())
            .expect("entries are never removed"))
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        let &sid = self.service_ids.get(name)?;
        Some(&self.services[sid].svc)
    }

    /// Every service, by name.
    pub fn service_names(&self) -> impl Iterator<Item = &String> {
        self.service_ids.keys()
    }

    /// The service's endpoints and their index.
    pub fn service_endpoints(&self, name: &str) -> Option<(u64, &[Endpoint])> {
        let &sid = self.service_ids.get(name)?;
        let e = &self.services[sid];
        Some((e.endpoints_index, &e.endpoints))
    }

    /// What `GET /services/{name}` shows.
    pub fn service_view(&self, name: &str) -> Option<ServiceView> {
        let &sid = self.service_ids.get(name)?;
        let e = &self.services[sid];
        let svc = &e.svc;
        let mut versions: BTreeMap<u64, VersionCount> = BTreeMap::new();
        let (mut running, mut running_current, mut updated) = (0, 0, 0);
        for id in &e.tasks {
            let Some(t) = self.tasks.get(id).map(|e| &e.task) else {
                continue;
            };
            if is_final(t) || t.desired == Goal::Stopped {
                continue;
            }
            let count = versions.entry(t.version).or_insert(VersionCount {
                version: t.version,
                tasks: 0,
                running: 0,
            });
            count.tasks += 1;
            if t.state == State::Running {
                count.running += 1;
                running += 1;
                if t.version == svc.version {
                    running_current += 1;
                    if self.is_updated(e, *id) {
                        updated += 1;
                    }
                }
            }
        }
        Some(ServiceView {
            name: svc.name.clone(),
            mode: svc.mode,
            replicas: svc.replicas,
            desired: if svc.removing {
                0
            } else {
                self.slot_keys(svc).len()
            },
            running,
            running_current,
            version: svc.version,
            previous_version: svc.previous.as_ref().map(|p| p.version),
            task: template_json(&svc.task),
            update: svc.update.clone(),
            rollout: svc.rollout.clone(),
            updated,
            versions: versions.into_values().collect(),
            removing: svc.removing,
            created_at: svc.created_at,
            updated_at: svc.updated_at,
        })
    }

    fn live_service(&self, name: &str) -> Result<usize, ServiceRefusal> {
        let &sid = self
            .service_ids
            .get(name)
            .ok_or_else(|| ServiceRefusal::NotFound(name.to_string()))?;
        if self.services[sid].svc.removing {
            return Err(ServiceRefusal::Removing(name.to_string()));
        }
        Ok(sid)
    }

    /// The service's record changed: write it, and look at its slots again.
    fn service_changed(&mut self, sid: usize) {
        if !self.service_writes.contains(&sid) {
            self.service_writes.push(sid);
        }
        self.dirty_services.insert(sid);
    }

    /// A task changed: look at its service again.
    pub(super) fn task_touched_service(&mut self, id: Uuid) {
        if let Some(name) = self.tasks.get(&id).and_then(|e| e.task.service.as_ref())
            && let Some(&sid) = self.service_ids.get(name)
        {
            self.dirty_services.insert(sid);
        }
    }

    /// Nodes changed: every service may have slots to fill or move.
    pub(super) fn nodes_changed_services(&mut self) {
        for sid in 0..self.services.len() {
            if !self.services[sid].gone {
                self.dirty_services.insert(sid);
            }
        }
    }

    /// Look at the services that inputs touched, then place what is queued. Every input that
    /// carries a time ends here.
    pub(super) fn settle(&mut self, now: Now) {
        // A pass may touch tasks of the same service again (a stop, a creation): look again
        // until nothing changes, a bounded number of times.
        for _ in 0..4 {
            let dirty = std::mem::take(&mut self.dirty_services);
            if dirty.is_empty() {
                break;
            }
            for sid in dirty {
                self.reconcile_service(now, sid);
            }
        }
        // Still marked after that: look again at once, in a step of its own.
        for sid in std::mem::take(&mut self.dirty_services) {
            self.timers.arm(now.mono, Timer::Service(sid));
        }
        self.kick();
    }

    /// The slots a service should fill now.
    fn slot_keys(&self, svc: &Service) -> Vec<SlotKey> {
        if svc.removing {
            return Vec::new();
        }
        match svc.mode {
            Mode::Replicated => (1..=svc.replicas).map(|s| (s, String::new())).collect(),
            Mode::Global => self
                .known_nodes()
                .filter(|n| self.takes_global_task(n, svc))
                .map(|n| (0, n.name.clone()))
                .collect(),
        }
    }

    /// Whether a global service runs a task on this node.
    fn takes_global_task(&self, n: &Node, svc: &Service) -> bool {
        n.status == NodeStatus::Ready
            && self.node_takes_new(n)
            && self.node_satisfies(n, &svc.task.constraints)
    }

    /// The slot a task of the service holds.
    fn slot_of(task: &Task, mode: Mode) -> SlotKey {
        match mode {
            Mode::Replicated => (task.slot, String::new()),
            Mode::Global => (
                0,
                task.constraints
                    .iter()
                    .rev()
                    .find(|c| {
                        c.key == crate::constraint::NODE_KEY && c.op == crate::constraint::Op::Eq
                    })
                    .map(|c| c.value.clone())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Whether a current-version task counts as updated, so the rollout moves on: Running,
    /// and with a health check, passing it for `min_healthy_s` (without one, Running is all a
    /// rollout can wait for, as Swarm does).
    fn is_updated(&self, e: &ServiceEntry, id: Uuid) -> bool {
        let Some(t) = self.tasks.get(&id) else {
            return false;
        };
        if t.task.health_check.is_some() {
            self.is_stable(e, id)
        } else {
            t.task.state == State::Running && t.task.desired == Goal::Running
        }
    }

    /// Whether a current-version task has run, passing its health check if it has one, for
    /// `min_healthy_s`: a rollout is over only once every new task is (Swarm's monitor), so
    /// a version that crashes a few seconds after it starts is caught.
    fn is_stable(&self, e: &ServiceEntry, id: Uuid) -> bool {
        let Some(t) = self.tasks.get(&id) else {
            return false;
        };
        t.task.state == State::Running
            && t.task.desired == Goal::Running
            && self.passes_health(t)
            && e.running_since.get(&id).is_some_and(|since| {
                self.service_clock >= *since + Duration::from_secs(e.svc.update.min_healthy_s)
            })
    }

    /// Whether a task passes its health check: it has none, passed the last one, or cannot be
    /// checked (an in-process worker has no address to check it at).
    fn passes_health(&self, e: &Entry) -> bool {
        e.task.health_check.is_none() || e.healthy || !e.watched
    }

    /// Compare the service with its tasks and act on every difference. Idempotent.
    pub(super) fn reconcile_service(&mut self, now: Now, sid: usize) {
        self.service_clock = now.mono;
        if self.services[sid].gone {
            return;
        }
        let mode = self.services[sid].svc.mode;
        let version = self.services[sid].svc.version;
        let keys = self.slot_keys(&self.services[sid].svc);
        let wanted: BTreeSet<&SlotKey> = keys.iter().collect();

        // When current-version tasks were first seen Running; forget the others.
        let mut since = std::mem::take(&mut self.services[sid].running_since);
        since.retain(|id, _| {
            self.tasks
                .get(id)
                .is_some_and(|e| e.task.state == State::Running && e.task.version == version)
        });
        let ids: Vec<Uuid> = self.services[sid].tasks.iter().copied().collect();
        for &id in &ids {
            if let Some(e) = self.tasks.get(&id)
                && e.task.state == State::Running
                && e.task.version == version
            {
                since.entry(id).or_insert(now.mono);
            }
        }
        self.services[sid].running_since = since;

        // Read the slots off the tasks.
        let mut slots: BTreeMap<SlotKey, Slot> = BTreeMap::new();
        let mut to_stop: Vec<Uuid> = Vec::new();
        let mut drain_wake: Option<Duration> = None;
        let mut last_node: BTreeMap<SlotKey, String> = BTreeMap::new();
        // The newest task of each slot that ended on its own (not stopped).
        let mut ended: BTreeMap<SlotKey, (chrono::DateTime<chrono::Utc>, Uuid)> = BTreeMap::new();
        for &id in &ids {
            let Some(e) = self.tasks.get(&id) else {
                continue;
            };
            let t = &e.task;
            let key = Self::slot_of(t, mode);
            if let Some(w) = &t.worker {
                last_node.insert(key.clone(), w.clone());
            }
            if is_final(t) {
                if t.desired == Goal::Running {
                    let newest = ended.entry(key).or_insert((t.created_at, id));
                    if t.created_at > newest.0 {
                        *newest = (t.created_at, id);
                    }
                }
                continue;
            }
            if t.desired == Goal::Stopped {
                if t.state.is_active() || t.state == State::Pending {
                    slots.entry(key).or_default().stopping += 1;
                }
                continue;
            }
            if !wanted.contains(&key) {
                // Beyond the replicas, of a node no longer eligible, or of a deleted service;
                // a global task whose node is only Down or paused keeps waiting for it.
                let keep = mode == Mode::Global
                    && !self.services[sid].svc.removing
                    && self.global_task_waits(&key.1, &self.services[sid].svc);
                if !keep {
                    to_stop.push(id);
                }
                continue;
            }
            let draining = e.node.is_some_and(|nid| self.node_drains(nid));
            if draining && let Some(deadline) = e.node.and_then(|nid| self.drain_deadline(nid)) {
                if deadline <= now.mono {
                    // The drain's deadline passed: whatever still runs there stops, and its
                    // slot fills elsewhere.
                    to_stop.push(id);
                    continue;
                }
                drain_wake = Some(drain_wake.map_or(deadline, |w: Duration| w.min(deadline)));
            }
            let slot = slots.entry(key).or_default();
            if t.version == version && !draining {
                slot.staying.push(id);
            } else {
                slot.urgent |= draining;
                slot.leaving.push(id);
            }
        }

        // Fill, keep or replace each wanted slot.
        let e = &self.services[sid];
        let moving = e.svc.rollout.state.is_moving();
        let order = e.svc.update.order;
        let mut in_progress = 0usize;
        let mut outdated: Vec<SlotKey> = Vec::new();
        let mut to_create: Vec<SlotKey> = Vec::new();
        let mut next_wake: Option<Duration> = drain_wake;
        let mut any_leaving = false;
        let mut healthy_slots: Vec<SlotKey> = Vec::new();
        // Some slot's task has not run for `min_healthy_s` yet: the rollout is not over.
        let mut unstable = false;
        for key in &keys {
            let slot = slots.remove(key).unwrap_or_default();
            any_leaving |= !slot.leaving.is_empty();
            if !slot.staying.is_empty() {
                let mut staying = slot.staying;
                staying.sort_by_key(|id| {
                    let t = &self.tasks[id].task;
                    (
                        std::cmp::Reverse(self.is_updated(e, *id)),
                        std::cmp::Reverse(t.state == State::Running),
                        std::cmp::Reverse(t.created_at),
                    )
                });
                let keep = staying[0];
                to_stop.extend_from_slice(&staying[1..]);
                if self.is_updated(e, keep) {
                    to_stop.extend_from_slice(&slot.leaving);
                } else {
                    in_progress += 1;
                }
                if self.is_stable(e, keep) {
                    healthy_slots.push(key.clone());
                } else {
                    unstable = true;
                    // Wake when it will have run long enough. Past that, what it waits for is
                    // its health check, whose passing is an input of its own: a wake-up in the
                    // past would only fire again at once, for ever.
                    if let Some(at) = e.running_since.get(&keep) {
                        let due = *at + Duration::from_secs(e.svc.update.min_healthy_s);
                        if due > now.mono {
                            next_wake = Some(next_wake.map_or(due, |w: Duration| w.min(due)));
                        }
                    }
                }
            } else if !slot.leaving.is_empty() {
                // Several old tasks in one slot (a start-first replacement overtaken by another
                // change): keep the best, stop the others, whatever the rollout, or a paused one
                // would run them all for good.
                if slot.leaving.len() > 1 {
                    let mut leaving = slot.leaving.clone();
                    leaving.sort_by_key(|id| {
                        let t = &self.tasks[id].task;
                        (
                            std::cmp::Reverse(t.state == State::Running),
                            std::cmp::Reverse(t.version),
                            std::cmp::Reverse(t.created_at),
                        )
                    });
                    to_stop.extend_from_slice(&leaving[1..]);
                }
                if slot.urgent {
                    // Its node drains: the replacement starts first, whatever the rollout.
                    to_create.push(key.clone());
                    in_progress += 1;
                } else {
                    outdated.push(key.clone());
                }
            } else if slot.stopping > 0 {
                // Stop-first: the slot fills once its old task is gone.
                in_progress += 1;
            } else {
                to_create.push(key.clone());
                in_progress += 1;
            }
        }
        // Tasks of slots no longer wanted, never seen by the loop above.
        for (_, slot) in slots {
            to_stop.extend(slot.staying);
            to_stop.extend(slot.leaving);
        }

        for key in &healthy_slots {
            self.services[sid].backoff.remove(key);
        }

        // The rollout: failures first, then the next batch of outdated slots.
        if moving && self.rollout_failed(now, sid) {
            self.settle_rollout_failure(now, sid);
            return self.reconcile_again(sid);
        }
        let e = &mut self.services[sid];
        let mut started: Vec<(SlotKey, bool)> = Vec::new();
        // Outdated slots are replaced at the rollout's pace whenever it is not paused: also
        // after it completed, for a slot that was away (a global task on a node that was Down)
        // and came back with an older version.
        let paced = moving || e.svc.rollout.state != RolloutState::Paused;
        if paced && !outdated.is_empty() {
            if in_progress == 0 && e.in_batch {
                e.in_batch = false;
                if e.svc.update.delay_s > 0 {
                    e.next_batch_at = Some(now.mono + Duration::from_secs(e.svc.update.delay_s));
                }
            }
            let waiting = e.next_batch_at.is_some_and(|at| at > now.mono);
            if let Some(at) = e.next_batch_at.filter(|_| waiting) {
                next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
            } else {
                e.next_batch_at = None;
                let parallelism = match e.svc.update.parallelism {
                    0 => usize::MAX,
                    p => p as usize,
                };
                let room = parallelism.saturating_sub(in_progress);
                for key in outdated.iter().take(room) {
                    started.push((key.clone(), order == Order::StartFirst));
                    e.in_batch = true;
                }
            }
        }
        let done = moving && outdated.is_empty() && in_progress == 0 && !any_leaving && !unstable;

        for id in to_stop {
            self.stop_service_task(now, id);
        }
        for (key, start_first) in started {
            if start_first {
                self.create_service_task(now, sid, &key, last_node.get(&key).cloned());
            } else {
                let leaving: Vec<Uuid> = self.services[sid]
                    .tasks
                    .iter()
                    .copied()
                    .filter(|id| {
                        self.tasks.get(id).is_some_and(|e| {
                            !is_final(&e.task)
                                && e.task.desired == Goal::Running
                                && Self::slot_of(&e.task, mode) == key
                        })
                    })
                    .collect();
                for id in leaving {
                    self.stop_service_task(now, id);
                }
            }
        }
        for key in to_create {
            // A slot whose last task ended on its own is filled after a backoff that grows
            // with each such end, so a crashing template does not spin.
            if let Some(&(_, last)) = ended.get(&key) {
                let b = self.services[sid]
                    .backoff
                    .entry(key.clone())
                    .or_insert(Backoff {
                        ended: 0,
                        last: Uuid::nil(),
                        not_before: now.mono,
                    });
                if b.last != last {
                    b.not_before = now.mono + restart_backoff(b.ended);
                    b.ended += 1;
                    b.last = last;
                }
            }
            let not_before = self.services[sid].backoff.get(&key).map(|b| b.not_before);
            if let Some(at) = not_before.filter(|at| *at > now.mono) {
                next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                continue;
            }
            self.create_service_task(now, sid, &key, last_node.get(&key).cloned());
        }
        if done {
            let svc = &mut self.services[sid].svc;
            svc.rollout.state = match svc.rollout.state {
                RolloutState::RollingBack => RolloutState::RolledBack,
                _ => RolloutState::Completed,
            };
            svc.rollout.finished_at = Some(now.wall);
            info!(
                "service {}: rollout to version {} {}",
                svc.name, svc.version, svc.rollout.state
            );
            self.service_changed(sid);
        }
        if let Some(at) = next_wake {
            self.timers.arm(at, Timer::Service(sid));
        }
        self.update_endpoints(sid);
        self.finish_removal(sid);
    }

    fn reconcile_again(&mut self, sid: usize) {
        self.dirty_services.insert(sid);
    }

    /// Whether the rollout's new tasks failed more than it allows.
    fn rollout_failed(&self, _now: Now, sid: usize) -> bool {
        let (failed, total, _) = self.rollout_failures(sid);
        let svc = &self.services[sid].svc;
        failed > 0 && (failed as f64 / total.max(1) as f64) > svc.update.max_failure_ratio
    }

    /// The rollout's new tasks: how many failed, how many there are, and one failure's reason.
    fn rollout_failures(&self, sid: usize) -> (usize, usize, Option<String>) {
        let e = &self.services[sid];
        let svc = &e.svc;
        let Some(started) = svc.rollout.started_at else {
            return (0, 0, None);
        };
        let (mut failed, mut total, mut reason) = (0, 0, None);
        for id in &e.tasks {
            let Some(t) = self.tasks.get(id).map(|e| &e.task) else {
                continue;
            };
            if t.version != svc.version || t.created_at < started {
                continue;
            }
            total += 1;
            let failed_now = t.restart_count > 0
                || t.state == State::Failed
                || (t.state == State::Completed && t.desired == Goal::Running);
            if failed_now {
                failed += 1;
                if reason.is_none() {
                    reason = Some(format!(
                        "task {} ({}): {}",
                        t.name,
                        t.id,
                        t.error.as_deref().unwrap_or(match t.exit_code {
                            Some(_) => "exited",
                            None => "failed",
                        })
                    ));
                }
            }
        }
        (failed, total, reason)
    }

    /// Too many new tasks failed: pause, or roll back.
    fn settle_rollout_failure(&mut self, now: Now, sid: usize) {
        let (failed, total, reason) = self.rollout_failures(sid);
        let svc = &self.services[sid].svc;
        let message = format!(
            "{failed} of {total} new task(s) of version {} failed (more than max_failure_ratio {}); first: {}",
            svc.version,
            svc.update.max_failure_ratio,
            reason.unwrap_or_default()
        );
        let rolling_back = svc.rollout.state == RolloutState::RollingBack;
        if svc.update.failure_action == FailureAction::Rollback
            && !rolling_back
            && self.roll_back(now, sid, message.clone()).is_ok()
        {
            return;
        }
        let svc = &mut self.services[sid].svc;
        warn!("service {}: rollout paused: {message}", svc.name);
        svc.rollout.state = RolloutState::Paused;
        svc.rollout.message = Some(if rolling_back {
            format!("the rollback failed too: {message}")
        } else {
            message
        });
        svc.updated_at = now.wall;
        self.service_changed(sid);
    }

    /// Make the previous template current again, and roll it out.
    fn roll_back(&mut self, now: Now, sid: usize, why: String) -> Result<(), ServiceRefusal> {
        let e = &mut self.services[sid];
        let svc = &mut e.svc;
        let Some(previous) = svc.previous.take() else {
            return Err(ServiceRefusal::NoPrevious {
                name: svc.name.clone(),
                version: svc.version,
            });
        };
        let from = svc.version;
        warn!(
            "service {}: rolling back from version {from} to {}: {why}",
            svc.name, previous.version
        );
        svc.previous = Some(Previous {
            version: from,
            task: std::mem::replace(&mut svc.task, previous.task),
        });
        svc.version = previous.version;
        svc.rollout = Rollout {
            state: RolloutState::RollingBack,
            from_version: from,
            to_version: previous.version,
            started_at: Some(now.wall),
            finished_at: None,
            message: Some(why),
        };
        svc.updated_at = now.wall;
        e.in_batch = false;
        e.next_batch_at = None;
        self.service_changed(sid);
        Ok(())
    }

    /// A global task whose node is not eligible now but may be again (Down, or paused):
    /// it waits; on a node that drains, was forgotten, or no longer satisfies, it stops.
    fn global_task_waits(&self, node: &str, svc: &Service) -> bool {
        let Some(&nid) = self.node_ids.get(node) else {
            return false;
        };
        let n = &self.nodes[nid];
        !self.node_drains(nid)
            && self.node_satisfies(n, &svc.task.constraints)
            && (n.status != NodeStatus::Ready || !self.node_takes_new(n))
    }

    /// A new task of the current version in the slot.
    fn create_service_task(&mut self, now: Now, sid: usize, key: &SlotKey, prefer: Option<String>) {
        let e = &mut self.services[sid];
        let svc = &mut e.svc;
        svc.created_tasks += 1;
        let id = Uuid::new_v5(
            &TASK_ID_NAMESPACE,
            format!(
                "{}/{}/{}",
                svc.name,
                svc.created_at.timestamp_nanos_opt().unwrap_or_default(),
                svc.created_tasks
            )
            .as_bytes(),
        );
        let mut task = svc.task.clone();
        task.id = id;
        task.service = Some(svc.name.clone());
        task.version = svc.version;
        match svc.mode {
            Mode::Replicated => {
                task.slot = key.0;
                task.name = format!("{}.{}", svc.name, key.0);
            }
            Mode::Global => {
                task.slot = 0;
                task.name = format!("{}.{}", svc.name, key.1);
                task.constraints
                    .push(crate::constraint::Constraint::node(&key.1));
            }
        }
        task.state = State::Pending;
        task.desired = Goal::Running;
        task.created_at = now.wall;
        debug!(
            "service {}: task {} ({id}) for version {}",
            svc.name, task.name, task.version
        );
        e.tasks.insert(id);
        self.service_changed(sid);
        let key_no = self.next_key;
        self.next_key += 1;
        self.order.insert(id, key_no);
        let mut entry = Box::new(Entry::new(task, key_no));
        // Nothing waits for an answer: its record is written with this step, before any call
        // it leads to (a crash before that leaves no trace, and the service makes it again).
        entry.acked = true;
        entry.prefer = prefer;
        self.tasks.insert(id, entry);
        self.count_in(id);
        self.touch(id);
        self.enqueue(id);
    }

    /// Stop a task for its service (scale-down, rollout, drain, deletion).
    fn stop_service_task(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.task.desired != Goal::Stopped && !is_final(&e.task) {
            debug!("task {id}: stopped for its service");
            e.task.desired = Goal::Stopped;
            e.restart_at = None;
            e.prefer = None;
            self.touch(id);
        }
        self.reconcile(now, id);
    }

    /// Recompute the endpoints; a change gets a new index.
    fn update_endpoints(&mut self, sid: usize) {
        let mut list = Vec::new();
        for id in &self.services[sid].tasks {
            let Some(e) = self.tasks.get(id) else {
                continue;
            };
            let t = &e.task;
            if t.state != State::Running || t.desired != Goal::Running || !self.passes_health(e) {
                continue;
            }
            let Some(nid) = e.node else {
                continue;
            };
            let Some((host, _)) = self.nodes[nid].address.rsplit_once(':') else {
                continue;
            };
            for (port, host_port) in &t.host_ports {
                list.push(Endpoint {
                    address: format!("{host}:{host_port}"),
                    port: port.clone(),
                    task: t.id,
                    node: self.nodes[nid].name.clone(),
                    slot: t.slot,
                    version: t.version,
                });
            }
        }
        list.sort_by(|a, b| (a.slot, &a.node, &a.address).cmp(&(b.slot, &b.node, &b.address)));
        let e = &mut self.services[sid];
        if list != e.endpoints || e.endpoints_index == 0 {
            self.endpoint_clock += 1;
            e.endpoints = list;
            e.endpoints_index = self.endpoint_clock;
        }
    }

    /// A deleted service whose tasks all ended: its record goes.
    fn finish_removal(&mut self, sid: usize) {
        let e = &self.services[sid];
        if !e.svc.removing {
            return;
        }
        let live = e
            .tasks
            .iter()
            .any(|id| self.tasks.get(id).is_some_and(|t| !is_final(&t.task)));
        if live {
            return;
        }
        let name = e.svc.name.clone();
        info!("service {name}: every task ended; removed");
        self.service_ids.remove(&name);
        self.service_writes.retain(|s| *s != sid);
        self.services_removed.push(name);
        let e = &mut self.services[sid];
        e.gone = true;
        e.tasks.clear();
        e.running_since.clear();
        e.endpoints.clear();
    }

    /// Whether a node drains (its tasks move away).
    pub(super) fn node_drains(&self, nid: NodeId) -> bool {
        self.availability(nid) == Availability::Drain
    }

    /// Whether a node takes new tasks (it is neither paused nor draining).
    fn node_takes_new(&self, n: &Node) -> bool {
        n.settings.availability == Availability::Active
    }

    /// Whether a node's labels (the worker's, overlaid by the operator's) satisfy the
    /// constraints.
    fn node_satisfies(&self, n: &Node, constraints: &[crate::constraint::Constraint]) -> bool {
        crate::constraint::satisfies(constraints, &n.name, &n.effective_labels())
    }

    /// Service records to write, and names of those removed.
    pub(super) fn take_service_writes(&mut self) -> (Vec<Service>, Vec<String>) {
        let writes = std::mem::take(&mut self.service_writes)
            .into_iter()
            .filter(|&sid| !self.services[sid].gone)
            .map(|sid| self.services[sid].svc.clone())
            .collect();
        (writes, std::mem::take(&mut self.services_removed))
    }

    /// A collected task leaves its service's index.
    pub(super) fn forget_service_task(&mut self, task: &Task) {
        if let Some(name) = &task.service
            && let Some(&sid) = self.service_ids.get(name)
        {
            self.services[sid].tasks.remove(&task.id);
        }
    }
}
