//! Placement: the queue of tasks that want a node, the requests to the scheduler, and what
//! its answers mean (a new attempt on the chosen node, a wait for room, a booking to give back).

use super::*;

/// Room announced within this long of another is retried once, with the later room.
pub const ROOM_DEBOUNCE: Duration = Duration::from_millis(20);

impl Core {
    /// The scheduler's answer to a [`Effect::Place`].
    pub fn placed(&mut self, now: Now, placements: Vec<(Uuid, Result<String, NoFit>)>) {
        self.asking = false;
        // Room announced while the scheduler chose may have overtaken this answer.
        let retry = std::mem::take(&mut self.room_while_asking);
        let mut placed_any = false;
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
                    if self.nodes[nid].status != NodeStatus::Ready
                        || self.availability(nid) != Availability::Active
                    {
                        // The node went Down, or was paused or drained, after the scheduler
                        // chose it.
                        self.releases.push(id);
                        self.enqueue(id);
                        continue;
                    }
                    self.assign(now, id, nid);
                    placed_any = true;
                }
                Err(NoFit {
                    reason,
                    unsatisfied,
                }) if wanted => {
                    // The reason is live information, worked out again after a restart: it is
                    // not written, so a full cluster costs no commit per waiting task.
                    let e = self.tasks.get_mut(&id).expect("looked up above");
                    if e.task.error.as_deref() != Some(reason.as_str()) {
                        debug!("task {id}: {reason}");
                        e.task.error = Some(reason);
                    }
                    // A task no node can satisfy waits for node facts, not for room: it must
                    // not take the room of those that wait for room (retry_waiting).
                    if unsatisfied {
                        e.placing = Placing::Unsatisfied;
                        self.unsatisfied.push(id);
                    } else {
                        e.placing = Placing::Waiting;
                        self.waiting.push_back(id);
                    }
                }
                Err(_) => {}
            }
        }
        // Retry the waiting tasks when room was announced meanwhile, or when the last retry
        // held some back and this answer placed some (so the room is known afresh).
        if retry || (std::mem::take(&mut self.held_back) && placed_any) {
            self.retry_waiting();
        }
        if std::mem::take(&mut self.facts_while_asking) {
            self.retry_unsatisfied();
        }
        self.settle(now);
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

    /// The room left after the scheduler's last answer (sent with it, before [`Core::placed`]).
    ///
    /// Room announced while the scheduler chose may be newer than the answer's: answers and
    /// announcements travel apart (ARCHITECTURE.md §11), and a node that came up after the
    /// scheduler chose is in the announcement only. The announced room is then kept for the
    /// retry that follows: if it is the older one, that costs one more "fits nowhere"; the
    /// answer's, if older, would hold the waiting tasks back until room is announced again,
    /// which may be never.
    pub fn room_left(&mut self, room: Room) {
        if !self.room_while_asking {
            self.room = Some(room);
        }
    }

    /// Room may have appeared (a reservation was given back, a node came up or grew): the
    /// waiting tasks that might fit in it are worth another try. Announcements a moment apart
    /// make one retry ([`ROOM_DEBOUNCE`]), so a stream of releases never walks the waiting
    /// tasks once each.
    pub fn capacity_available(&mut self, now: Now, room: Room) {
        self.room = Some(room);
        if self.asking {
            self.room_while_asking = true;
        }
        if !self.room_armed {
            self.room_armed = true;
            self.timers.arm(now.mono + ROOM_DEBOUNCE, Timer::Room);
        }
    }

    /// Queue the waiting tasks that might fit in the room, oldest first: each must fit on the
    /// roomiest node, and all of them together in the room of every node. The rest keep
    /// waiting, in order; if some were held back, another retry follows the answer.
    pub(super) fn retry_waiting(&mut self) {
        if self.asking {
            self.room_while_asking = true;
            return;
        }
        let mut taken = Resources::default();
        let mut kept = VecDeque::new();
        let mut held_back = false;
        while let Some(id) = self.waiting.pop_front() {
            let Some(e) = self.tasks.get_mut(&id) else {
                continue;
            };
            if e.placing != Placing::Waiting {
                continue;
            }
            let need = resources(&e.task);
            if self.room.is_none_or(|room| room.might_take(&taken, &need)) {
                taken.add(&need);
                e.placing = Placing::No;
                self.enqueue(id);
            } else {
                held_back = true;
                kept.push_back(id);
            }
        }
        self.waiting = kept;
        self.held_back = held_back;
        self.kick();
    }

    /// A task placed on `nid`: the next attempt, Scheduled there, to be started.
    pub(super) fn assign(&mut self, now: Now, id: Uuid, nid: NodeId) {
        let name = self.nodes[nid].name.clone();
        let e = self.tasks.get_mut(&id).expect("assign on a known task");
        // The attempt this one replaces, read before the new one's state is set over it.
        let ended = Attempt::of(&e.task, now.wall);
        if let Err(err) = e.task.transition(State::Scheduled, now.wall) {
            warn!("manager: task {id}: {err}");
            self.releases.push(id);
            return;
        }
        if let Some(ended) = ended {
            e.task.keep_attempt(ended);
        }
        e.task.attempt += 1;
        self.tally.placements += 1;
        if std::mem::take(&mut e.restarting) {
            e.task.restart_count += 1;
            self.tally.restarts += 1;
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

    pub(super) fn enqueue(&mut self, id: Uuid) {
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
    pub(super) fn kick(&mut self) {
        self.flush_releases();
        if self.asking {
            return;
        }
        let mut batch = Vec::with_capacity(self.config.place_batch.min(self.queue.len()));
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
            batch.push(place_request(&e.task, e.prefer.clone()));
        }
        if !batch.is_empty() {
            self.asking = true;
            self.effects.push(Effect::Place(batch));
        }
    }

    pub(super) fn flush_releases(&mut self) {
        if !self.releases.is_empty() {
            let ids = std::mem::take(&mut self.releases);
            self.effects.push(Effect::Release(ids));
        }
    }
}

/// What the scheduler is asked for a task: its room, a node to try first, and what it asks
/// of a node (constraints, spread, volumes).
pub(super) fn place_request(task: &Task, prefer: Option<String>) -> PlaceRequest {
    PlaceRequest {
        id: task.id,
        resources: resources(task),
        prefer,
        constraints: task.constraints.clone(),
        spread_by: task.spread_by.clone(),
        group: task.service.clone(),
        volumes: task
            .volumes
            .iter()
            .filter_map(|v| v.name().map(str::to_string))
            .collect(),
        host_paths: task
            .volumes
            .iter()
            .filter(|v| v.is_host_path())
            .map(|v| v.source.clone())
            .collect(),
    }
}
