//! What workers say: change-feed reports (full or not), the outcomes of calls, and health
//! checks, merged into what the core knows of each copy and applied to the current attempt.

use super::*;

impl Core {
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
            if full {
                self.run_again(nid, &task);
            }
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
        self.settle(now);
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
        self.settle(now);
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
            Ok(()) => {
                e.health_failures = 0;
                if !e.healthy {
                    e.healthy = true;
                    // A service counts it as updated, and lists it as an endpoint, from now.
                    self.task_touched_service(id);
                    self.settle(now);
                }
            }
            Err(reason) => {
                let was_healthy = std::mem::replace(&mut e.healthy, false);
                e.health_failures += 1;
                self.tally.health_check_failures += 1;
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
                    self.settle(now);
                } else if was_healthy {
                    self.task_touched_service(id);
                    self.settle(now);
                }
            }
        }
    }

    /// Record what a worker says about its copy of a task, and apply it to the record when it
    /// is about the current attempt.
    pub(super) fn observe(&mut self, now: Now, nid: NodeId, report: Task) {
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
                let first = (t.restart_count == 0).then_some(t.created_at);
                changed = true;
                if let Some(created) = first {
                    self.first_running(now, created);
                }
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
    pub(super) fn merge_seen(&mut self, nid: NodeId, id: Uuid, seen: Seen) -> bool {
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

    /// A full report is the whole truth about the node: a copy it lists as active, at an
    /// attempt no later than one known to have finished there, runs again. The worker dropped
    /// what it had of the task, the tombstone expired, and a late start of that attempt (or of
    /// an older one) ran (ARCHITECTURE.md §5). Merged as news only moving forward, it would
    /// pass for a stale report and run on unseen; forgotten first, it is a copy like any other,
    /// stopped unless it is the one wanted. (A report read before a call's answer that overtook
    /// it comes back here too: its copy moves forward again with the next report of the feed,
    /// which follows it in order, at the cost of at most a stop of an ended attempt.)
    fn run_again(&mut self, nid: NodeId, report: &Task) {
        let finished_here = self.tasks.get(&report.id).is_some_and(|e| {
            e.copies
                .iter()
                .any(|(n, s)| *n == nid && s.attempt >= report.attempt && s.state.is_finished())
        });
        if report.state.is_active() && finished_here {
            info!(
                "task {}: worker {} runs attempt {} again, which had finished there",
                report.id, self.nodes[nid].name, report.attempt
            );
            self.forget_copy(nid, report.id);
        }
    }

    pub(super) fn forget_copy(&mut self, nid: NodeId, id: Uuid) {
        self.nodes[nid].seen.remove(&id);
        if let Some(e) = self.tasks.get_mut(&id) {
            e.copies.retain(|(n, _)| *n != nid);
        }
    }
}
