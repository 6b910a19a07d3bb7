//! The manager's process in the simulated world: its core, the scheduler's book behind a
//! mailbox, its disk and group commit, and one proxy per worker doing what the WorkerProxy
//! actor does (heartbeats, liveness, the long-polled feed, calls with timeouts).

use super::*;
use crate::actors::manager::core::NodeRecord;

impl World {
    pub(super) fn start_manager(&mut self) {
        self.manager_inc += 1;
        let inc = self.manager_inc;
        let records: Vec<(u64, Task)> = self
            .disk_tasks
            .iter()
            .map(|(k, t)| (*k, t.clone()))
            .collect();
        let nodes: Vec<(String, NodeRecord)> = self
            .disk_nodes
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        self.note(format!(
            "manager starts (incarnation {inc}) with {} records",
            records.len()
        ));
        let mut config = ManagerConfig::new(NODE_TIMEOUT);
        if self.retention {
            config = config.with_retention(RETENTION, RETENTION_COUNT);
        }
        let mut core = ManagerCore::recover(config, self.now(), records, nodes);
        core.restore_tombstones(self.now(), self.disk_tombs.values().cloned().collect());
        core.restore_services(self.now(), self.disk_services.values().cloned().collect());
        // Every worker is given by address, as with `--workers`.
        let endpoints = self
            .nodes
            .iter()
            .map(|n| core.add_endpoint(&n.address))
            .collect();
        let proxies = (0..self.nodes.len())
            .map(|_| Proxy {
                liveness: Liveness::new(self.now, NODE_TIMEOUT),
                name: None,
                registered: false,
                capacity_sent: false,
                feed: FeedReader::default(),
                watch_gen: 0,
                watching: false,
                backoff: Duration::from_millis(100),
                down_check: false,
                pending: BTreeMap::new(),
            })
            .collect();
        self.manager = Some(ManagerProc {
            inc,
            core,
            book: Book::new(PolicyKind::Epvm),
            proxies,
            endpoints,
            commits: BTreeMap::new(),
            answers: Vec::new(),
            service_answers: Vec::new(),
            last_commit: self.now,
            last_sched: self.now,
            sched_in_flight: 0,
            health: BTreeMap::new(),
            timer_at: None,
            recorded: BTreeMap::new(),
        });
        for w in 0..self.nodes.len() {
            self.arm_down_check(w);
            self.at(Duration::ZERO, Ev::Heartbeat(inc, w));
            self.at(Duration::ZERO, Ev::Watch(inc, w, 0));
        }
        self.manager_step();
    }

    /// The shell's `carry_out`: scheduler and proxy messages now, the records into a commit,
    /// worker calls once it is durable. Returns the commit's id (0: nothing to write).
    pub(super) fn manager_step(&mut self) -> u64 {
        self.manager_step_with(false)
    }

    /// As the shell's `carry_out(barrier)`: with `barrier`, even a step that wrote nothing is
    /// answered only after a commit, which follows every earlier one.
    pub(super) fn manager_step_with(&mut self, barrier: bool) -> u64 {
        let Some(m) = self.manager.as_mut() else {
            return 0;
        };
        let writes = m.core.take_writes();
        let effects = m.core.take_effects();
        let inc = m.inc;
        let mut held = Vec::new();
        for effect in effects {
            match effect {
                MEffect::Restore(b) => self.tell_scheduler(SchedMsg::Restore(b)),
                MEffect::Place(b) => self.tell_scheduler(SchedMsg::Place(b)),
                MEffect::Release(ids) => self.tell_scheduler(SchedMsg::Release(ids)),
                MEffect::NodeReady { name, ready } => {
                    self.tell_scheduler(SchedMsg::Ready(name, ready))
                }
                MEffect::NodeFacts { name, facts } => {
                    self.tell_scheduler(SchedMsg::Facts(name, facts))
                }
                MEffect::Registered { endpoint, name } => {
                    let w = self.worker_of(endpoint);
                    let send = self.manager.as_mut().and_then(|m| {
                        let p = &mut m.proxies[w];
                        (p.name.as_deref() == Some(name.as_str()) && !p.registered).then(|| {
                            p.registered = true;
                            p.capacity_sent = false;
                        })
                    });
                    if send.is_some() {
                        self.send_capacity(w);
                    }
                }
                MEffect::Refused { endpoint, .. } => {
                    let w = self.worker_of(endpoint);
                    if let Some(m) = self.manager.as_mut() {
                        m.proxies[w].registered = false;
                    }
                }
                MEffect::Resync(endpoint) => {
                    let w = self.worker_of(endpoint);
                    let restart = self.manager.as_mut().and_then(|m| {
                        let p = &mut m.proxies[w];
                        p.feed.resync();
                        // Cut a long-poll that waits, as the proxy does.
                        p.watching.then(|| {
                            p.watch_gen += 1;
                            p.watching = false;
                            p.watch_gen
                        })
                    });
                    if let Some(generation) = restart {
                        self.at(Duration::ZERO, Ev::Watch(inc, w, generation));
                    }
                }
                MEffect::Watch { id, attempt, .. } => {
                    if let Some(m) = self.manager.as_mut() {
                        m.health.insert(id, attempt);
                    }
                    self.at(HEALTH_INTERVAL, Ev::HealthCheck(inc, id, attempt));
                }
                // The simulated users never forget a node.
                MEffect::Disconnect(_) => {}
                MEffect::Unwatch(id) => {
                    if let Some(m) = self.manager.as_mut() {
                        m.health.remove(&id);
                    }
                }
                call @ (MEffect::Start { .. } | MEffect::Stop { .. }) => held.push(call),
            }
        }
        if writes.is_empty() && !barrier {
            self.manager_calls(held);
            self.rearm_manager();
            return 0;
        }
        self.seq += 1;
        let id = self.seq;
        let delay = self.ms(0, 3);
        let m = self.manager.as_mut().expect("checked above");
        // Group commit: commits complete in the order they were asked for.
        let at = (self.now + delay).max(m.last_commit);
        m.last_commit = at;
        m.commits.insert(
            id,
            Held {
                writes,
                effects: held,
            },
        );
        let rel = at - self.now;
        self.at(rel, Ev::ManagerCommit(id));
        self.rearm_manager();
        id
    }

    pub(super) fn rearm_manager(&mut self) {
        let now = self.now;
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let next = m.core.next_timer();
        if next != m.timer_at {
            m.timer_at = next;
            if let Some(at) = next {
                let inc = m.inc;
                self.at(at.saturating_sub(now), Ev::ManagerTimer(inc, at));
            }
        }
    }

    pub(super) fn manager_committed(&mut self, id: u64) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let Some(held) = m.commits.remove(&id) else {
            return;
        };
        for (key, task) in &held.writes.tasks {
            if self.disk_tombs.contains_key(&task.id) {
                let what = format!("collected task {} was written again", task.id);
                return self.violated(what);
            }
            self.disk_tasks.insert(*key, task.clone());
        }
        for (key, tomb) in &held.writes.collected {
            match self.disk_tasks.remove(key) {
                Some(t) if !is_final(&t) => {
                    let what = format!("task {} was collected while {}", t.id, t.state);
                    return self.violated(what);
                }
                _ => {}
            }
            self.count("tasks collected");
            self.collected_ever.insert(tomb.id);
            self.disk_tombs.insert(tomb.id, tomb.clone());
        }
        for id in &held.writes.expired {
            self.disk_tombs.remove(id);
        }
        for (name, record) in &held.writes.nodes {
            self.disk_nodes.insert(name.clone(), record.clone());
        }
        self.services_committed(&held.writes);
        let m = self.manager.as_mut().expect("checked above");
        let answers: Vec<(Answer, Uuid)> = m
            .answers
            .iter()
            .filter(|(c, _, _)| *c == id)
            .map(|(_, a, t)| (*a, *t))
            .collect();
        m.answers.retain(|(c, _, _)| *c != id);
        // What followed from these reports is durable, and so is every earlier step (commits
        // complete in order): their proxies may tell the workers (`recorded_after`).
        for (w, mark) in m.recorded.remove(&id).unwrap_or_default() {
            m.proxies[w].feed.recorded(mark);
        }
        self.manager_calls(held.effects);
        let mut created = Vec::new();
        for (answer, task) in answers {
            match answer {
                Answer::Created => {
                    if let Some(spec) = self.users.asked.remove(&task) {
                        self.users.acked.insert(task, spec);
                    }
                    created.push(task);
                }
                Answer::Existing => {}
                Answer::Stopped => {
                    self.users.stops.insert(task);
                }
            }
        }
        self.services_answered(id);
        if !created.is_empty() {
            let m = self.manager.as_mut().expect("checked above");
            m.core.submit_committed(&created, true);
            self.manager_step();
        }
        self.rearm_manager();
    }

    pub(super) fn manager_calls(&mut self, calls: Vec<MEffect>) {
        for call in calls {
            match call {
                MEffect::Start {
                    endpoint,
                    node,
                    task,
                } => {
                    let w = self.worker_of(endpoint);
                    let pending = Pending::Call(node, (task.id, task.attempt, CallKind::Start));
                    self.send(w, Body::Start(task), pending, CALL_TIMEOUT);
                }
                MEffect::Stop {
                    endpoint,
                    node,
                    id,
                    attempt,
                } => {
                    let w = self.worker_of(endpoint);
                    let pending = Pending::Call(node, (id, attempt, CallKind::Stop));
                    self.send(w, Body::Stop { id, attempt }, pending, CALL_TIMEOUT);
                }
                _ => {}
            }
        }
        self.rearm_manager();
    }

    pub(super) fn worker_of(&self, endpoint: EndpointId) -> usize {
        self.manager
            .as_ref()
            .and_then(|m| m.endpoints.iter().position(|e| *e == endpoint))
            .unwrap_or(0)
    }

    pub(super) fn tell_scheduler(&mut self, msg: SchedMsg) {
        let delay = self.ms(0, 2);
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        // One mailbox: messages arrive in the order they were sent.
        let at = (self.now + delay).max(m.last_sched);
        m.last_sched = at;
        m.sched_in_flight += 1;
        let inc = m.inc;
        let rel = at - self.now;
        self.at(rel, Ev::Sched(inc, msg));
    }

    pub(super) fn scheduler(&mut self, msg: SchedMsg) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        m.sched_in_flight -= 1;
        let inc = m.inc;
        let room = match msg {
            SchedMsg::Restore(b) => {
                m.book.restore(b);
                false
            }
            SchedMsg::Place(batch) => {
                let placements = m.book.place(batch);
                let room = m.book.room();
                m.sched_in_flight += 1;
                let d = self.ms(0, 2);
                self.at(d, Ev::Placed(inc, placements, room));
                false
            }
            SchedMsg::Release(ids) => m.book.release(&ids),
            SchedMsg::Ready(name, ready) => m.book.set_ready(&name, ready),
            SchedMsg::Capacity(name, capacity) => m.book.set_capacity(&name, capacity),
            SchedMsg::Facts(name, facts) => m.book.set_facts(&name, facts),
        };
        if room && let Some(m) = self.manager.as_mut() {
            m.sched_in_flight += 1;
            let room = m.book.room();
            let d = self.ms(0, 2);
            self.at(d, Ev::Capacity(inc, room));
        }
    }

    pub(super) fn send(&mut self, w: usize, body: Body, pending: Pending, timeout: Duration) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        self.next_req += 1;
        let req = self.next_req;
        m.proxies[w].pending.insert(req, pending);
        let inc = m.inc;
        self.at(timeout, Ev::CallTimeout(inc, w, req));
        self.transmit(Packet {
            worker: w,
            manager: inc,
            req,
            body,
        });
    }

    /// Put a packet on the network: delayed, maybe dropped, maybe duplicated; nothing crosses
    /// a partition.
    pub(super) fn transmit(&mut self, packet: Packet) {
        if self.nodes[packet.worker].partitioned {
            self.count("packets cut by a partition");
            return;
        }
        if self.chance(self.faults.drop) {
            self.count("packets dropped");
            self.note(format!(
                "net drops req {}: {}",
                packet.req,
                describe(&packet.body)
            ));
            return;
        }
        let max = self.faults.max_delay_ms.max(1);
        let d = self.ms(0, max);
        if self.chance(self.faults.duplicate) {
            self.count("packets duplicated");
            let d2 = self.ms(0, max);
            self.at(d2, Ev::Packet(packet.clone()));
        }
        if matches!(packet.body, Body::Start(_) | Body::Stop { .. })
            && self.chance(self.faults.late)
        {
            self.count("calls carried out again, late");
            let late = self.ms(1000, 20_000);
            self.note(format!(
                "net: req {} ({}) will arrive again in {:.3}s",
                packet.req,
                describe(&packet.body),
                late.as_secs_f64()
            ));
            self.at(late, Ev::Packet(packet.clone()));
        }
        self.at(d, Ev::Packet(packet));
    }

    pub(super) fn deliver(&mut self, packet: Packet) {
        if self.nodes[packet.worker].partitioned {
            self.count("packets cut by a partition");
            return;
        }
        if packet.body.to_worker() {
            self.worker_request(packet);
        } else if self
            .manager
            .as_ref()
            .is_some_and(|m| m.inc == packet.manager)
        {
            self.proxy_answer(packet);
        }
    }

    pub(super) fn proxy_answer(&mut self, packet: Packet) {
        let w = packet.worker;
        let Some(pending) = self
            .manager
            .as_mut()
            .and_then(|m| m.proxies[w].pending.remove(&packet.req))
        else {
            return; // timed out already, or a duplicate
        };
        let now = self.now();
        match (pending, packet.body) {
            (Pending::Stats, Body::Name(name)) => self.heard(w, &name),
            (Pending::Watch(generation), Body::Changes(changes)) => {
                self.heard(w, &changes.name);
                let inc = self.manager_inc;
                let Some(m) = self.manager.as_mut() else {
                    return;
                };
                let p = &mut m.proxies[w];
                if generation != p.watch_gen {
                    return;
                }
                p.watching = false;
                p.backoff = Duration::from_millis(100);
                if let Some(report) = p.feed.answered(*changes) {
                    let endpoint = m.endpoints[w];
                    m.core
                        .report(now, endpoint, report.full, report.restarted, report.tasks);
                    // As the shell: a barrier, so the mark goes back to the proxy only once
                    // this step and every one before it are durable.
                    let commit = self.manager_step_with(true);
                    if commit != 0
                        && let Some(m) = self.manager.as_mut()
                    {
                        m.recorded.entry(commit).or_default().push((w, report.mark));
                    }
                } else {
                    self.manager_step();
                }
                self.at(Duration::ZERO, Ev::Watch(inc, w, generation));
            }
            (Pending::Call(node, call), Body::Started(outcome) | Body::Stopped(outcome)) => {
                if let (CallKind::Start, Ok(t)) = (call.2, outcome.as_ref()) {
                    let name = t.worker.clone().unwrap_or_default();
                    self.heard(w, &name);
                }
                if let Some(m) = self.manager.as_mut() {
                    let outcome = outcome.map(|t| Seen::from(&t));
                    m.core.call_done(now, &node, call, outcome);
                }
                self.manager_step();
            }
            _ => {}
        }
    }

    pub(super) fn call_failed(&mut self, w: usize, pending: Pending, why: &str) {
        let now = self.now();
        let inc = self.manager_inc;
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let err = CallError::Transport(why.to_string());
        match pending {
            Pending::Stats => {}
            Pending::Watch(generation) => {
                let p = &mut m.proxies[w];
                if generation == p.watch_gen {
                    p.watching = false;
                    let backoff = p.backoff;
                    p.backoff = (backoff * 2).min(Duration::from_secs(2));
                    self.at(backoff, Ev::Watch(inc, w, generation));
                }
            }
            Pending::Call(node, call) => {
                m.core.call_done(now, &node, call, Err(err));
                self.manager_step();
            }
        }
    }

    /// The worker answered, as `name`: liveness, and registration when it is news.
    pub(super) fn heard(&mut self, w: usize, name: &str) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let p = &mut m.proxies[w];
        let renamed = !name.is_empty() && p.name.as_deref() != Some(name);
        if renamed {
            p.name = Some(name.to_string());
            p.registered = false;
        }
        let up = p.liveness.heard(now.mono) == Some(LivenessChange::Up);
        if (up || renamed)
            && let Some(name) = p.name.clone()
        {
            let endpoint = m.endpoints[w];
            m.core.node_up(now, endpoint, &name);
            self.manager_step();
        }
        self.arm_down_check(w);
    }

    pub(super) fn arm_down_check(&mut self, w: usize) {
        let now = self.now;
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let p = &mut m.proxies[w];
        if p.down_check {
            return;
        }
        if let Some(deadline) = p.liveness.deadline() {
            p.down_check = true;
            let inc = m.inc;
            // As the proxy: never sooner than a heartbeat's worth of time from a check that
            // found the node alive.
            let wait = deadline.saturating_sub(now).max(Duration::from_millis(100));
            self.at(wait, Ev::DownCheck(inc, w));
        }
    }

    pub(super) fn down_check(&mut self, w: usize) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let p = &mut m.proxies[w];
        p.down_check = false;
        if let Some(LivenessChange::Down { .. }) = p.liveness.check(now.mono) {
            let endpoint = m.endpoints[w];
            m.core.node_down(now, endpoint);
            self.note(format!("proxy: w{} is Down", w + 1));
            self.manager_step();
        }
        self.arm_down_check(w);
    }

    pub(super) fn watch(&mut self, w: usize, generation: u64) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let p = &mut m.proxies[w];
        if generation != p.watch_gen || p.watching {
            return;
        }
        p.watching = true;
        let query = p.feed.query();
        let timeout = query.wait + CALL_TIMEOUT;
        self.send(w, Body::Watch(query), Pending::Watch(generation), timeout);
    }

    pub(super) fn send_capacity(&mut self, w: usize) {
        let msg = self.manager.as_mut().and_then(|m| {
            let p = &mut m.proxies[w];
            let name = p.name.clone()?;
            (p.registered && !p.capacity_sent).then(|| {
                p.capacity_sent = true;
                SchedMsg::Capacity(name, CAPACITY)
            })
        });
        if let Some(msg) = msg {
            self.tell_scheduler(msg);
        }
    }

    pub(super) fn health_check(&mut self, id: Uuid, attempt: u32) {
        let Some(m) = self.manager.as_ref() else {
            return;
        };
        if m.health.get(&id) != Some(&attempt) {
            return;
        }
        let inc = m.inc;
        let worker = m.core.task(id).and_then(|t| t.worker.clone());
        let result = match self.nodes.iter().find(|n| Some(&n.name) == worker.as_ref()) {
            Some(n) if n.partitioned => Err("unreachable".to_string()),
            Some(n) => match n
                .docker
                .values()
                .find(|c| c.task == id && c.attempt == attempt && c.running)
            {
                Some(c) if c.healthy => Ok(()),
                Some(_) => Err("answered 503".to_string()),
                None => Err("connection refused".to_string()),
            },
            None => Err("no worker".to_string()),
        };
        if result.is_err() {
            // A failed check may fail the attempt: an end the world caused.
            *self.ends.entry(id).or_insert(0) += 1;
        }
        let now = self.now();
        if let Some(m) = self.manager.as_mut() {
            m.core.health_checked(now, id, attempt, result);
        }
        self.manager_step();
        self.at(HEALTH_INTERVAL, Ev::HealthCheck(inc, id, attempt));
    }
}
