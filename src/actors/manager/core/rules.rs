//! The rules of a task's life: the level-triggered comparison of what should run with what
//! runs (ARCHITECTURE.md §4), the calls that follow from it, and how an attempt ends, restarts,
//! moves or is stopped.

use super::*;

impl Core {
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
                } else if self.availability(nid) == Availability::Drain
                    && self.tasks[&id].task.service.is_none()
                {
                    // Level-triggered: whatever is found on a draining node moves (facts.rs).
                    self.drain_task(now, id);
                } else if !self.observed(nid, id, attempt) {
                    // The history is the manager's: a worker is sent the attempt it runs.
                    let mut task = self.tasks[&id].task.clone();
                    task.attempts = Vec::new();
                    self.ensure_call(now, nid, id, attempt, CallKind::Start, Some(task));
                }
            }
        }
    }

    /// Whether the worker reported this attempt (or a later one) of the task.
    pub(super) fn observed(&self, nid: NodeId, id: Uuid, attempt: u32) -> bool {
        self.tasks[&id]
            .copies
            .iter()
            .any(|(n, s)| *n == nid && s.attempt >= attempt)
    }

    /// Whether the worker reported this attempt gone: ended, superseded, or absent from a full
    /// report with no start of it under way.
    pub(super) fn copy_gone(&self, nid: NodeId, id: Uuid, attempt: u32) -> bool {
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
    pub(super) fn ensure_call(
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

    pub(super) fn settle_call(&mut self, nid: NodeId, key: (Uuid, u32, CallKind), to: Call) {
        if let Some(c) = self.nodes[nid].calls.get_mut(&key) {
            *c = to;
        }
    }

    pub(super) fn retry_later(&mut self, now: Now, nid: NodeId, key: (Uuid, u32, CallKind)) {
        let at = now.mono + self.config.call_retry;
        if let Some(call) = self.nodes[nid].calls.get_mut(&key) {
            *call = Call::RetryAt(at);
            self.timers.arm(at, Timer::Retry(nid, key.0));
        }
    }

    /// The current attempt's container ended (or it could not start, or failed its health
    /// checks): give its reservation back, then finish the task or plan its restart.
    pub(super) fn attempt_ended(
        &mut self,
        now: Now,
        id: Uuid,
        state: State,
        error: Option<String>,
    ) {
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
    pub(super) fn plan_restart(&mut self, now: Now, id: Uuid) {
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

    pub(super) fn restart_due(&mut self, now: Now, id: Uuid) {
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
    pub(super) fn unplace(&mut self, id: Uuid) {
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
    pub(super) fn finish_stopped(&mut self, now: Now, id: Uuid) {
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
    pub(super) fn move_away(&mut self, now: Now, id: Uuid) {
        let node = self.tasks[&id].task.worker.clone().unwrap_or_default();
        info!("task {id}: worker {node} lost, moving it");
        self.place_elsewhere(
            now,
            id,
            format!("worker {node} was lost; placing it elsewhere"),
        );
    }

    /// Give up the task's current attempt where it is placed and queue it for a new one,
    /// Pending with `why` (a move, not a restart).
    pub(super) fn place_elsewhere(&mut self, now: Now, id: Uuid, why: String) {
        self.unplace(id);
        let e = self
            .tasks
            .get_mut(&id)
            .expect("place_elsewhere on a known task");
        // Kept now, while it still names its worker and container, which are cleared below.
        if let Some(given_up) = Attempt::of(&e.task, now.wall) {
            e.task.keep_attempt(given_up);
        }
        if e.task.state == State::Running {
            let _ = e.task.transition(State::Scheduled, now.wall);
        }
        let _ = e.task.transition(State::Pending, now.wall);
        e.task.worker = None;
        e.task.container_id = None;
        e.task.host_ports.clear();
        e.task.error = Some(why);
        self.touch(id);
        self.enqueue(id);
    }

    /// Keep health checks in line with the task: checked while Running, not otherwise.
    pub(super) fn update_health_watch(&mut self, id: Uuid) {
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
                    e.healthy = false;
                    self.effects.push(Effect::Watch {
                        id,
                        attempt: e.task.attempt,
                        url,
                    });
                }
            }
            None => {
                e.healthy = false;
                if e.watched {
                    e.watched = false;
                    self.effects.push(Effect::Unwatch(id));
                }
            }
        }
    }

    /// The record changed: write it with the step, and keep its count and index in step.
    pub(super) fn touch(&mut self, id: Uuid) {
        if let Some(e) = self.tasks.get_mut(&id)
            && !e.dirty
        {
            e.dirty = true;
            self.dirty_tasks.push(id);
        }
        self.recount(id);
        self.task_touched_service(id);
    }
}
