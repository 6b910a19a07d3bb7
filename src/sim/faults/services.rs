//! Services in the simulated world, on half the seeds: users who create, scale, change, roll
//! back and delete them amid the faults (answered once the commit is durable), a disk that keeps
//! their records, and the promises services make: acknowledged changes are durable; at rest
//! each service runs its replicas once each on its current version; a deleted one runs nothing
//! and leaves no record; and a rollout in a quiet world never runs fewer tasks than its order
//! and parallelism allow, and completes.

use super::*;
use crate::service::{
    FailureAction, Mode, Order, RolloutState, Service, ServiceSpec, UpdateConfig,
};

/// Whether the first service of seeds 24 to 31 modulo 32 is global (its tasks pinned to their
/// nodes by a `node==` constraint, which placement honours).
const GLOBAL_SERVICES: bool = true;
/// At most this many services live at once.
const MAX_SERVICES: usize = 3;
/// The cmd of a template whose containers exit with an error as soon as they start (the
/// simulated Docker ends `exit <code> <after s>` after that long).
const BAD_CMD: [&str; 3] = ["exit", "1", "0"];
/// After healing, a service whose template is bad gets a good one this soon (a user repairs
/// it), so every service can come to rest; and again every `REPAIR_EVERY` until
/// `REPAIR_UNTIL`, since what happened before healing still plays out for a while (a worker's
/// first look at Docker, a resync, a late call) and may fail the new template's rollout and
/// roll it back onto the bad one.
const REPAIR_AFTER: Duration = Duration::from_secs(1);
const REPAIR_EVERY: Duration = Duration::from_secs(10);
const REPAIR_UNTIL: Duration = Duration::from_secs(35);
/// After healing, services are checked at rest this much later, and the quiet rollout starts:
/// long enough after the last repair for the longest slot backoff (60 s), a placement, a start
/// and `min_healthy_s`.
const REST_AFTER: Duration = Duration::from_secs(100);
/// The quiet rollout needs this long after it starts (5 slots one at a time, each up to 3 s
/// to count as updated and 1 s of delay), with room to spare.
const QUIET_ROLLOUT_TIME: Duration = Duration::from_secs(50);

/// What the world knows of services.
#[derive(Default)]
pub(super) struct Services {
    /// This seed has services.
    pub(super) on: bool,
    /// Its first service is global.
    global_first: bool,
    /// Names given so far (`s1`, `s2`, …): a name is never used twice.
    created: u32,
    /// Templates made so far: each gets its own `V=<n>`, so a change is a new version.
    templates: u32,
    /// What each service's users asked and were told.
    pub(super) users: BTreeMap<String, ServiceUser>,
    /// Rollouts the quiet world asked for, being watched.
    quiet: BTreeMap<String, Quiet>,
}

/// A service as its users know it.
#[derive(Default)]
pub(super) struct ServiceUser {
    /// The record of the last 2xx answer, given once its commit was durable.
    acked: Option<Service>,
    /// Changes asked, and answered; while they differ a change is on its way (or was lost with
    /// a crash, and is not promised).
    asked: u64,
    answered: u64,
    /// A deletion was asked for, or acknowledged.
    delete_asked: bool,
    deleted: bool,
}

/// A rollout in the quiet world: the bound it keeps and the version it goes to.
struct Quiet {
    version: u64,
    /// Fewest real running tasks allowed at any step (none for stop-first with parallelism 0).
    floor: usize,
    order: Order,
    parallelism: u32,
}

/// A user's change, answered once its commit is durable.
#[derive(Debug, Clone)]
pub(super) struct ServiceAnswer {
    name: String,
    record: Service,
    deleted: bool,
}

impl Services {
    pub(super) fn new(seed: u64) -> Services {
        Services {
            on: (seed / 8) % 2 == 1,
            global_first: GLOBAL_SERVICES && (seed / 16) % 2 == 1,
            ..Services::default()
        }
    }
}

/// A template the simulated Docker fails at once.
fn is_bad(task: &Task) -> bool {
    task.cmd.iter().map(String::as_str).eq(BAD_CMD)
}

impl World {
    /// One user action on services (in place of another fault or user action).
    pub(super) fn user_service(&mut self) {
        let live: Vec<String> = self
            .services
            .users
            .iter()
            .filter(|(_, u)| !u.delete_asked)
            .map(|(n, _)| n.clone())
            .collect();
        let roll = self.rng.u32(0..100);
        if live.is_empty() || (live.len() < MAX_SERVICES && roll < 15) {
            return self.user_create_service();
        }
        let name = live[self.rng.usize(..live.len())].clone();
        let Some(known) = self
            .manager
            .as_ref()
            .map(|m| m.core.service(&name).map(Service::spec))
        else {
            return; // the manager is down: the user's call fails
        };
        let Some(spec) = known else {
            // Its creation was lost with a crash before it was answered (an acknowledged one
            // cannot be: the checks say so): the user gives up on it.
            if self.services.users[&name].acked.is_none() {
                self.services.users.remove(&name);
            }
            return;
        };
        match roll {
            15..=39 if spec.mode == Mode::Replicated => {
                let mut spec = spec;
                spec.replicas = self.rng.u32(1..=5);
                let what = format!("scales to {}", spec.replicas);
                self.service_change(&name, &what, |core, now| core.update_service(now, spec));
            }
            15..=69 => {
                let bad = spec.update.failure_action == FailureAction::Rollback
                    && self.rng.u32(0..3) == 0;
                let mut spec = spec;
                self.new_template(&mut spec.task, bad);
                let what = format!(
                    "changes the template to {:?} {:?}",
                    spec.task.cmd, spec.task.env
                );
                self.service_change(&name, &what, |core, now| core.update_service(now, spec));
            }
            70..=84 => {
                self.service_change(&name, "rolls back", |core, now| {
                    core.rollback_service(now, &name)
                });
            }
            85..=92 => {
                if let Some(u) = self.services.users.get_mut(&name) {
                    u.delete_asked = true;
                }
                self.service_change(&name, "deletes", |core, now| {
                    core.delete_service(now, &name)
                });
            }
            _ => {
                self.service_change(&name, "creates again", |core, now| {
                    core.create_service(now, spec).map(|(s, _)| s)
                });
            }
        }
    }

    fn user_create_service(&mut self) {
        if self.manager.is_none() {
            return;
        }
        self.services.created += 1;
        let name = format!("s{}", self.services.created);
        let global = self.services.created == 1 && self.services.global_first;
        let mut task = Task::new("sim/busybox");
        task.id = Uuid::nil();
        task.name = String::new();
        task.created_at = wall(self.now);
        task.restart_policy = [
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
            RestartPolicy::Always,
        ][self.rng.usize(..3)];
        if self.rng.u32(0..3) == 0 {
            task.exposed_ports = vec!["8080/tcp".into()];
            task.health_check = Some("/health".into());
        }
        self.new_template(&mut task, false);
        let update = UpdateConfig {
            parallelism: self.rng.u32(0..=2),
            delay_s: self.rng.u64(0..=1),
            order: if self.rng.bool() {
                Order::StopFirst
            } else {
                Order::StartFirst
            },
            failure_action: if self.rng.bool() {
                FailureAction::Pause
            } else {
                FailureAction::Rollback
            },
            max_failure_ratio: [0.0, 0.0, 0.5][self.rng.usize(..3)],
            min_healthy_s: self.rng.u64(0..=3),
        };
        let spec = ServiceSpec {
            name: name.clone(),
            mode: if global {
                Mode::Global
            } else {
                Mode::Replicated
            },
            replicas: if global { 0 } else { self.rng.u32(2..=5) },
            task,
            update,
        };
        let what = format!(
            "creates {:?} ×{} {:?}, health check {}",
            spec.mode,
            spec.replicas,
            spec.update,
            spec.task.health_check.is_some()
        );
        self.services.users.entry(name.clone()).or_default();
        self.service_change(&name, &what, |core, now| {
            core.create_service(now, spec).map(|(s, _)| s)
        });
    }

    /// A template of its own: good (runs until stopped) or bad (exits with an error at once).
    fn new_template(&mut self, task: &mut Task, bad: bool) {
        self.services.templates += 1;
        task.env = vec![format!("V={}", self.services.templates)];
        task.cmd = if bad {
            BAD_CMD.iter().map(|s| s.to_string()).collect()
        } else {
            vec!["run".into()]
        };
    }

    /// Ask the manager for a change of service `name`; a 2xx answer comes once its commit is
    /// durable (the shell's `answer_after_commit`), a refusal at once.
    fn service_change(
        &mut self,
        name: &str,
        what: &str,
        change: impl FnOnce(
            &mut ManagerCore,
            Now,
        ) -> Result<Service, crate::actors::manager::core::ServiceRefusal>,
    ) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let outcome = change(&mut m.core, now);
        let record = match outcome {
            Ok(record) => record,
            Err(e) => {
                self.note(format!("user {what} service {name}: refused: {e}"));
                return;
            }
        };
        self.note(format!("user {what} service {name}"));
        self.count("service changes asked");
        if let Some(u) = self.services.users.get_mut(name) {
            u.asked += 1;
        }
        let commit = self.manager_step_with(true);
        if let Some(m) = self.manager.as_mut() {
            let deleted = record.removing;
            m.service_answers.push((
                commit,
                ServiceAnswer {
                    name: name.to_string(),
                    record,
                    deleted,
                },
            ));
        }
    }

    /// Commit `id` is durable: the users of its service changes get their answers.
    pub(super) fn services_answered(&mut self, id: u64) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut m.service_answers)
            .into_iter()
            .partition(|(c, _)| *c == id);
        m.service_answers = later;
        for (_, a) in now {
            self.count("service changes acknowledged");
            let u = self.services.users.entry(a.name).or_default();
            u.answered += 1;
            u.deleted |= a.deleted;
            u.acked = Some(a.record);
        }
    }

    /// The manager's records of services, applied as its commit completes (as the store's
    /// batch: puts, then deletions).
    pub(super) fn services_committed(&mut self, writes: &crate::actors::manager::core::Writes) {
        for svc in &writes.services {
            self.disk_services.insert(svc.name.clone(), svc.clone());
        }
        for name in &writes.services_removed {
            self.disk_services.remove(name);
        }
    }

    /// Always: an acknowledged service change is durable, and known to the running manager.
    pub(super) fn check_services_always(&mut self) {
        let mut problem = None;
        for (name, u) in &self.services.users {
            let durable = self.disk_services.get(name);
            let known = self.manager.as_ref().map(|m| m.core.service(name));
            if u.deleted {
                // Deleted: the record stays, marked, until every task ended, then goes.
                if durable.is_some_and(|s| !s.removing) {
                    problem = Some(format!(
                        "the deletion of service {name} was acknowledged, but its durable record is not being deleted"
                    ));
                }
                continue;
            }
            // A deletion on its way may end the service (its record goes) at any moment.
            let Some(acked) = u.acked.as_ref().filter(|_| !u.delete_asked) else {
                continue;
            };
            let Some(d) = durable else {
                problem = Some(format!(
                    "acknowledged service {name} is not in the durable records"
                ));
                break;
            };
            if d.created_at != acked.created_at
                || d.updated_at < acked.updated_at
                || d.last_version < acked.last_version
                || (u.asked == u.answered && d.replicas != acked.replicas)
            {
                problem = Some(format!(
                    "service {name}: the durable record (replicas {}, version {} of {}, updated {}) is older than the acknowledged one (replicas {}, version {} of {}, updated {})",
                    d.replicas,
                    d.version,
                    d.last_version,
                    d.updated_at,
                    acked.replicas,
                    acked.version,
                    acked.last_version,
                    acked.updated_at
                ));
                break;
            }
            if known.is_some_and(|s| s.is_none()) {
                problem = Some(format!(
                    "acknowledged service {name} is unknown to the running manager"
                ));
                break;
            }
        }
        if let Some(p) = problem {
            self.violated(p);
        }
    }

    /// The tasks of each service that really run: a running container on a live node whose
    /// task the manager records as Running at that attempt there, and wants running.
    fn services_running(&self) -> BTreeMap<String, Vec<Task>> {
        let mut out: BTreeMap<String, Vec<Task>> = BTreeMap::new();
        let Some(m) = self.manager.as_ref() else {
            return out;
        };
        for n in self.nodes.iter().filter(|n| !n.lost && n.proc.is_some()) {
            for c in n.docker.values().filter(|c| c.running) {
                if let Some(t) = m.core.task(c.task)
                    && let Some(service) = &t.service
                    && t.state == State::Running
                    && t.desired == Goal::Running
                    && t.attempt == c.attempt
                    && t.worker.as_deref() == Some(n.name.as_str())
                {
                    out.entry(service.clone()).or_default().push(t.clone());
                }
            }
        }
        out
    }

    /// Tasks a service should run now: its replicas, or (global) a node that is not lost.
    fn service_desired(&self, svc: &Service) -> usize {
        match svc.mode {
            Mode::Replicated => svc.replicas as usize,
            Mode::Global => self.nodes.iter().filter(|n| !n.lost).count(),
        }
    }

    /// A global service's task pinned to a node lost for good: it waits for the node, by
    /// design, and is not stuck.
    pub(super) fn waits_for_lost_node(&self, t: &Task) -> bool {
        t.service.is_some()
            && t.constraints.iter().any(|c| {
                c.key == crate::constraint::NODE_KEY
                    && self.nodes.iter().any(|n| n.lost && n.name == c.value)
            })
    }

    /// At rest: every service runs what it should, once, on its current version; a deleted one
    /// runs nothing and has no record; the durable records are the ones in memory.
    pub(super) fn services_at_rest(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(m) = self.manager.as_ref() else {
            return problems;
        };
        let running = self.services_running();
        let names: Vec<String> = m.core.service_names().cloned().collect();
        for name in &names {
            let Some(svc) = m.core.service(name) else {
                continue;
            };
            if self.disk_services.get(name) != Some(svc) {
                problems.push(format!(
                    "service {name}: the durable record differs from the one in memory at rest"
                ));
            }
            if svc.removing {
                problems.push(format!(
                    "service {name} is still being deleted at rest ({} tasks run)",
                    running.get(name).map_or(0, Vec::len)
                ));
                continue;
            }
            if is_bad(&svc.task) {
                problems.push(format!(
                    "service {name} runs a failing template at rest (version {}, rollout {:?}), though its users gave it a good one after healing",
                    svc.version, svc.rollout
                ));
                continue;
            }
            let tasks = running.get(name).map(Vec::as_slice).unwrap_or_default();
            let desired = self.service_desired(svc);
            let describe = || {
                tasks
                    .iter()
                    .map(|t| format!("{} v{} on {:?}", t.name, t.version, t.worker))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if tasks.len() != desired {
                problems.push(format!(
                    "service {name} ({:?}) should run {desired} tasks at rest but runs {}: {} (rollout {:?})",
                    svc.mode,
                    tasks.len(),
                    describe(),
                    svc.rollout
                ));
            }
            if svc.rollout.state.is_moving() {
                problems.push(format!(
                    "service {name}'s rollout is left {} at rest: {:?}",
                    svc.rollout.state, svc.rollout
                ));
            }
            // Paused: the slots not yet replaced keep whatever version earlier rollouts left
            // them on (two changes paused in a row leave two).
            let allowed = |v: u64| v == svc.version || svc.rollout.state == RolloutState::Paused;
            if tasks.iter().any(|t| !allowed(t.version)) {
                problems.push(format!(
                    "service {name} is at version {} ({}) but runs {}",
                    svc.version,
                    svc.rollout.state,
                    describe()
                ));
            }
            let mut slots = BTreeSet::new();
            for t in tasks {
                let slot = match svc.mode {
                    Mode::Replicated => t.slot.to_string(),
                    Mode::Global => t.worker.clone().unwrap_or_default(),
                };
                if !slots.insert(slot.clone()) {
                    problems.push(format!(
                        "service {name} runs two tasks in slot {slot}: {}",
                        describe()
                    ));
                    break;
                }
            }
        }
        for name in self.disk_services.keys() {
            if m.core.service(name).is_none() {
                problems.push(format!(
                    "service {name} has a durable record but the manager does not know it"
                ));
            }
        }
        for (name, u) in &self.services.users {
            if !u.deleted {
                continue;
            }
            if m.core.service(name).is_some() || self.disk_services.contains_key(name) {
                problems.push(format!(
                    "service {name} was deleted, yet has a record at rest"
                ));
            }
            if let Some(tasks) = running.get(name) {
                problems.push(format!(
                    "service {name} was deleted, yet {} of its tasks run",
                    tasks.len()
                ));
            }
        }
        problems
    }

    /// The world healed: a service whose template fails at once gets a good one.
    pub(super) fn repair_services(&mut self) {
        if self.now + REPAIR_EVERY <= self.options.fault_time + REPAIR_UNTIL {
            self.at(REPAIR_EVERY, Ev::RepairServices);
        }
        let bad: Vec<ServiceSpec> = self
            .manager
            .as_ref()
            .map(|m| {
                m.core
                    .service_names()
                    .filter_map(|n| m.core.service(n))
                    .filter(|s| !s.removing && is_bad(&s.task))
                    .map(Service::spec)
                    .collect()
            })
            .unwrap_or_default();
        for mut spec in bad {
            self.new_template(&mut spec.task, false);
            let name = spec.name.clone();
            self.service_change(&name, "repairs the template of", |core, now| {
                core.update_service(now, spec)
            });
        }
    }

    /// The healed world is at rest: check the services, then change each one's template once
    /// more and watch that rollout.
    pub(super) fn quiet_rollouts(&mut self) {
        let problems = self.services_at_rest();
        if let Some(p) = problems.into_iter().next() {
            return self.violated(p);
        }
        let specs: Vec<(ServiceSpec, usize)> = self
            .manager
            .as_ref()
            .map(|m| {
                m.core
                    .service_names()
                    .filter_map(|n| m.core.service(n))
                    .filter(|s| !s.removing)
                    .map(|s| (s.spec(), self.service_desired(s)))
                    .collect()
            })
            .unwrap_or_default();
        for (mut spec, desired) in specs {
            self.new_template(&mut spec.task, false);
            let name = spec.name.clone();
            let (order, parallelism) = (spec.update.order, spec.update.parallelism);
            let floor = match (order, parallelism) {
                (Order::StartFirst, _) => desired,
                (Order::StopFirst, 0) => 0,
                (Order::StopFirst, p) => desired.saturating_sub(p as usize),
            };
            self.service_change(&name, "changes (quiet) the template of", |core, now| {
                core.update_service(now, spec)
            });
            let Some(version) = self
                .manager
                .as_ref()
                .and_then(|m| m.core.service(&name))
                .map(|s| s.version)
            else {
                continue;
            };
            self.count("quiet rollouts");
            self.services.quiet.insert(
                name,
                Quiet {
                    version,
                    floor,
                    order,
                    parallelism,
                },
            );
        }
    }

    /// During the quiet rollouts, after every event: no service runs fewer tasks than its order
    /// and parallelism allow.
    pub(super) fn check_quiet_rollouts(&mut self) {
        if self.services.quiet.is_empty() {
            return;
        }
        let running = self.services_running();
        let mut problem = None;
        for (name, q) in &self.services.quiet {
            let n = running.get(name).map_or(0, Vec::len);
            if n < q.floor {
                problem = Some(format!(
                    "service {name}: the quiet rollout to version {} ({:?}, parallelism {}) runs only {n} tasks, fewer than {}",
                    q.version, q.order, q.parallelism, q.floor
                ));
                break;
            }
        }
        if let Some(p) = problem {
            self.violated(p);
        }
    }

    /// At the end: each quiet rollout completed, on its version.
    pub(super) fn quiet_rollouts_done(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(m) = self.manager.as_ref() else {
            return problems;
        };
        for (name, q) in &self.services.quiet {
            match m.core.service(name) {
                Some(s) if s.version == q.version && s.rollout.state == RolloutState::Completed => {
                }
                Some(s) => problems.push(format!(
                    "service {name}: the quiet rollout to version {} never completed (version {}, rollout {:?})",
                    q.version, s.version, s.rollout
                )),
                None => problems.push(format!(
                    "service {name} vanished during its quiet rollout"
                )),
            }
        }
        problems
    }

    /// When the healed world repairs services, and when it checks them at rest and rolls them
    /// out once more (none when the run is too short for it).
    pub(super) fn schedule_quiet(&mut self) {
        if !self.services.on {
            return;
        }
        let fault_time = self.options.fault_time;
        self.at(fault_time + REPAIR_AFTER, Ev::RepairServices);
        if self.options.settle_time >= REST_AFTER + QUIET_ROLLOUT_TIME {
            self.at(fault_time + REST_AFTER, Ev::QuietRollouts);
        }
    }
}
