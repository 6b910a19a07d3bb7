//! The promises, checked: what must hold after every step, and what must hold once the healed
//! world has been quiet for long enough (ARCHITECTURE.md §9).

use super::*;

impl World {
    /// A worker's core let these tasks go (`dropped`) and these tombstones expire (`expired`)
    /// in the step whose writes were just taken: a worker never drops a task the manager still
    /// waits to hear about, and keeps the tombstone of a dropped task for its retention
    /// (ARCHITECTURE.md §5).
    pub(super) fn check_drops(&mut self, w: usize, dropped: &[Uuid], expired: &[Uuid]) {
        let node = &self.nodes[w];
        let Some(p) = node.proc.as_ref() else {
            return;
        };
        let mut problem = None;
        for id in dropped {
            // The record the worker last wrote, and the manager may have read.
            let Some(t) = p.published.get(id) else {
                problem = Some(format!(
                    "{} dropped task {id}, whose record it never wrote",
                    node.name
                ));
                break;
            };
            let (attempt, state) = (t.attempt, t.state);
            if !state.is_finished() {
                problem = Some(format!(
                    "{} dropped task {id} attempt {attempt} while it is {state}",
                    node.name
                ));
                break;
            }
            if p.core.tombstone(*id).is_none_or(|a| a < attempt) {
                problem = Some(format!(
                    "{} dropped task {id} attempt {attempt} without a tombstone fencing it (has {:?})",
                    node.name,
                    p.core.tombstone(*id)
                ));
                break;
            }
            // Collected by the manager's retention: its end was recorded before.
            if self.collected_ever.contains(id) {
                continue;
            }
            let record = self.disk_tasks.values().find(|r| r.id == *id);
            match record {
                None => {
                    problem = Some(format!(
                        "{} dropped task {id} attempt {attempt} ({state}), of which the manager has no durable record",
                        node.name
                    ));
                }
                Some(r) if r.attempt < attempt => {
                    problem = Some(format!(
                        "{} dropped task {id} attempt {attempt} ({state}), but the manager's durable record is only at attempt {}",
                        node.name, r.attempt
                    ));
                }
                Some(r)
                    if r.attempt == attempt
                        && r.state.is_active()
                        && r.worker.as_deref() == Some(node.name.as_str()) =>
                {
                    problem = Some(format!(
                        "{} dropped task {id} attempt {attempt} ({state}) before the manager durably recorded its end: the manager's record still has that attempt {} there",
                        node.name, r.state
                    ));
                }
                // Recorded finished (or waiting to restart) at this attempt, or moved on to a
                // later attempt: the manager needs nothing more of this one.
                Some(_) => {}
            }
            if problem.is_some() {
                break;
            }
        }
        if problem.is_none() {
            let wall_now = wall(self.now);
            for id in expired {
                // The tombstone as last written: it must have lived for the retention.
                if let Some(tomb) = node.disk.stops.get(id)
                    && let Some(at) = tomb.at
                    && wall_now.signed_duration_since(at)
                        < chrono::Duration::from_std(self.worker_retention)
                            .unwrap_or(chrono::Duration::MAX)
                {
                    problem = Some(format!(
                        "{} expired the tombstone of task {id} (attempt {}) {:.3}s after it was written, within its retention of {:?}",
                        node.name,
                        tomb.attempt,
                        (wall_now - at).num_milliseconds() as f64 / 1000.0,
                        self.worker_retention
                    ));
                    break;
                }
            }
        }
        if let Some(p) = problem {
            return self.violated(p);
        }
        for id in expired {
            self.note(format!(
                "w{} expires the tombstone of {}",
                w + 1,
                short(*id)
            ));
            self.count("tombstones expired by workers");
            self.nodes[w].fenced.remove(id);
        }
    }

    /// A worker answered a start of (`id`, `attempt`) (`accepted` when it took it): no start of
    /// an attempt it answered a stop of or dropped, or an older one, may be taken while the
    /// tombstone lives (ARCHITECTURE.md §5).
    pub(super) fn check_fenced_start(&mut self, w: usize, id: Uuid, attempt: u32, accepted: bool) {
        let Some(fence) = self.nodes[w].fenced.get(&id).copied() else {
            return;
        };
        if attempt > fence.attempt {
            return;
        }
        if accepted {
            let what = format!(
                "{} took a start of task {id} attempt {attempt} after it {} attempt {} at t={:.3}s, while that tombstone lives",
                self.nodes[w].name,
                if fence.dropped {
                    "dropped"
                } else {
                    "answered a stop of"
                },
                fence.attempt,
                fence.at.as_secs_f64()
            );
            return self.violated(what);
        }
        self.count(if fence.dropped {
            "starts refused after a drop"
        } else {
            "starts refused after a stop"
        });
    }

    /// What must hold after every step.
    pub(super) fn check_always(&mut self) {
        if self.services.on {
            self.check_services_always();
            if self.violation.is_some() {
                return;
            }
        }
        let durable: BTreeMap<Uuid, &Task> = self.disk_tasks.values().map(|t| (t.id, t)).collect();
        for id in self.users.acked.keys() {
            // Retention may collect a finished task: its record goes, its tombstone stays.
            if self.collected_ever.contains(id) {
                continue;
            }
            if !durable.contains_key(id) {
                let what = format!("acknowledged task {id} is not in the durable records");
                return self.violated(what);
            }
            if let Some(m) = &self.manager
                && m.core.task(*id).is_none()
                && m.core.collected(*id).is_none()
            {
                let what = format!("acknowledged task {id} is unknown to the running manager");
                return self.violated(what);
            }
        }
        for id in &self.users.stops {
            // A stop of a task already Completed changes nothing: it is final.
            if durable
                .get(id)
                .is_some_and(|t| t.desired != Goal::Stopped && t.state != State::Completed)
            {
                let what = format!("acknowledged stop of {id} is not in the durable record");
                return self.violated(what);
            }
        }
        let mut problems = Vec::new();
        for (id, t) in &durable {
            if self.completed.contains(id) && t.state != State::Completed {
                problems.push(format!("task {id} left Completed for {}", t.state));
            }
            if self.attempts.get(id).is_some_and(|a| t.attempt < *a) {
                problems.push(format!("task {id}'s attempt went back to {}", t.attempt));
            }
            let ends = self.ends.get(id).copied().unwrap_or(0);
            if t.restart_count > ends || t.restart_count > t.max_restarts {
                problems.push(format!(
                    "task {id} counts {} restarts, but its containers ended {ends} times (max {})",
                    t.restart_count, t.max_restarts
                ));
            }
            // The history holds earlier attempts, oldest first, each once; the current one
            // joins it only once given up (moved, and not yet placed again).
            let kept: Vec<u32> = t.attempts.iter().map(|a| a.attempt).collect();
            let ordered = kept.windows(2).all(|w| w[0] < w[1]);
            let earlier = kept.last().is_none_or(|&last| {
                last < t.attempt || (last == t.attempt && !t.state.is_active())
            });
            if kept.len() > crate::task::MAX_ATTEMPTS_KEPT || !ordered || !earlier {
                problems.push(format!(
                    "task {id} at attempt {} ({}) keeps the history {kept:?}",
                    t.attempt, t.state
                ));
            }
        }
        for (id, t) in &durable {
            if t.state == State::Completed {
                self.completed.insert(*id);
            }
            self.attempts.insert(*id, t.attempt);
        }
        if let Some(p) = problems.into_iter().next() {
            return self.violated(p);
        }
        if let Some(m) = &self.manager {
            let mut recount = [0; State::COUNT];
            for t in m.core.tasks() {
                recount[t.state.index()] += 1;
            }
            if m.core.counts() != recount {
                let what = format!(
                    "the manager counts {:?} tasks by state, but holds {recount:?}",
                    m.core.counts()
                );
                return self.violated(what);
            }
        }
        if let Some(m) = &self.manager
            && m.sched_in_flight == 0
        {
            // Nothing on its way to or from the scheduler: its book is the tasks' reservations.
            let mut problem = None;
            for t in m.core.tasks() {
                let booked = m.book.booking(t.id).map(|(n, _)| n.to_string());
                let reserved = m.core.reservation(t.id).map(str::to_string);
                if booked != reserved {
                    problem = Some(format!(
                        "task {} is booked on {booked:?} but holds a reservation on {reserved:?}",
                        t.id
                    ));
                    break;
                }
            }
            if problem.is_none() {
                for node in m.book.nodes() {
                    let sum: f64 = m
                        .core
                        .tasks()
                        .filter(|t| m.core.reservation(t.id) == Some(node.name.as_str()))
                        .map(|t| t.cpu)
                        .sum();
                    if (sum - node.allocated.cpu).abs() > 1e-6 {
                        problem = Some(format!(
                            "node {} has {} cores booked but its tasks reserve {sum}",
                            node.name, node.allocated.cpu
                        ));
                        break;
                    }
                }
            }
            if let Some(p) = problem {
                self.violated(p);
            }
        }
    }

    /// The promises, once the healed world has been quiet for long enough.
    pub(super) fn check_at_rest(&mut self) {
        let Some(m) = self.manager.as_ref() else {
            return self.violated("the manager is not running after healing".into());
        };
        let mut running: BTreeMap<Uuid, Vec<(String, u32)>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| !n.lost) {
            for c in n.docker.values().filter(|c| c.running) {
                running
                    .entry(c.task)
                    .or_default()
                    .push((n.name.clone(), c.attempt));
            }
        }
        let mut problems = Vec::new();
        for t in m.core.tasks() {
            // Placed on a worker that dropped that attempt: the manager would wait for it, or
            // start it, forever.
            if t.state.is_active()
                && let Some(n) = self
                    .nodes
                    .iter()
                    .find(|n| !n.lost && Some(&n.name) == t.worker.as_ref())
                && let Some(fence) = n.fenced.get(&t.id)
                && fence.dropped
                && fence.attempt >= t.attempt
            {
                problems.push(format!(
                    "task {} is {} as attempt {} on {} in the manager's records, but {} dropped attempt {} at t={:.3}s",
                    t.id,
                    t.state,
                    t.attempt,
                    n.name,
                    n.name,
                    fence.attempt,
                    fence.at.as_secs_f64()
                ));
            }
        }
        for t in m.core.tasks() {
            let copies = running.remove(&t.id).unwrap_or_default();
            let should_run = t.desired == Goal::Running && t.state == State::Running;
            if t.desired == Goal::Stopped && t.state != State::Completed {
                problems.push(format!(
                    "task {} was stopped but is {} (copies {copies:?})",
                    t.id, t.state
                ));
            } else if should_run {
                let expected = vec![(t.worker.clone().unwrap_or_default(), t.attempt)];
                if copies != expected {
                    problems.push(format!(
                        "task {} should run once as attempt {} on {:?}, but runs {copies:?}",
                        t.id, t.attempt, t.worker
                    ));
                }
            } else if matches!(t.state, State::Pending | State::Scheduled)
                && !self.waits_for_lost_node(t)
            {
                problems.push(format!(
                    "task {} is stuck in {} ({:?}), copies {copies:?}",
                    t.id, t.state, t.error
                ));
            } else if !copies.is_empty() {
                problems.push(format!(
                    "task {} is {} ({}) but runs {copies:?}",
                    t.id,
                    t.state,
                    match t.desired {
                        Goal::Running => "running wanted",
                        Goal::Stopped => "stopped",
                    }
                ));
            }
            if t.state == State::Failed
                && t.desired == Goal::Running
                && t.restart_policy != RestartPolicy::Never
                && t.restart_count < t.max_restarts
                && !self.waits_for_lost_node(t)
            {
                problems.push(format!(
                    "task {} is Failed with restarts left ({} of {})",
                    t.id, t.restart_count, t.max_restarts
                ));
            }
        }
        for (id, copies) in running {
            problems.push(format!(
                "task {id}, unknown to the manager, runs {copies:?}"
            ));
        }
        if self.services.on {
            problems.extend(self.services_at_rest());
            problems.extend(self.quiet_rollouts_done());
        }
        for id in &self.users.stops {
            if m.core
                .task(*id)
                .is_some_and(|t| t.state != State::Completed)
            {
                problems.push(format!("the stop of {id} was acknowledged but never done"));
            }
        }
        // Bounded by retention: what finished long enough ago, and the manager has recorded, is
        // gone from every worker (the acknowledgements flow once the world is healed).
        let end = wall(self.now);
        let slack = chrono::Duration::from_std(self.worker_retention + DROP_SLACK)
            .unwrap_or(chrono::Duration::MAX);
        for n in self.nodes.iter().filter(|n| !n.lost) {
            let Some(p) = n.proc.as_ref() else {
                continue;
            };
            for t in p.core.tasks() {
                let Some(finished) = t.finish_time else {
                    continue;
                };
                let recorded = m.core.task(t.id).is_none_or(|r| {
                    r.attempt > t.attempt || !r.state.is_active() || r.worker != t.worker
                });
                if t.state.is_finished() && recorded && end.signed_duration_since(finished) > slack
                {
                    problems.push(format!(
                        "{} still keeps task {} attempt {} ({}), finished {:.0}s ago, with a retention of {:?}: the manager's acknowledgement never came",
                        n.name,
                        t.id,
                        t.attempt,
                        t.state,
                        end.signed_duration_since(finished).num_seconds(),
                        self.worker_retention
                    ));
                }
            }
        }
        if let Some(p) = problems.into_iter().next() {
            self.violated(p);
        }
    }
}
