//! The workers' processes in the simulated world: each one's core, change feed, disk and group
//! commit, and the Docker it runs containers on (with its failures).

use super::*;

impl World {
    pub(super) fn worker_inc(&self, w: usize) -> Option<u64> {
        self.nodes[w].proc.as_ref().map(|p| p.inc)
    }

    pub(super) fn start_worker(&mut self, w: usize) {
        self.seq += 1;
        let inc = self.seq;
        let tasks: Vec<Task> = self.nodes[w].disk.tasks.values().cloned().collect();
        let stops: Vec<(Uuid, Tombstone)> = self.nodes[w]
            .disk
            .stops
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        self.note(format!(
            "w{} starts with {} records and {} tombstones",
            w + 1,
            tasks.len(),
            stops.len()
        ));
        let instance = Uuid::from_u128(self.rng.u128(..));
        let mut feed = Feed::new(instance);
        let positions: Vec<(Uuid, u64)> =
            tasks.iter().map(|t| (t.id, feed.changed(t.id))).collect();
        let mut core = WorkerCore::recover(
            self.nodes[w].name.clone(),
            self.worker_retention,
            self.now(),
            tasks,
            stops,
        );
        // As the shell: the recovered records are on the feed, at these positions.
        core.written(self.now(), &positions);
        let published = self.nodes[w].disk.tasks.clone();
        self.nodes[w].proc = Some(WorkerProc {
            inc,
            core,
            feed,
            published,
            watchers: BTreeMap::new(),
            next_watcher: 0,
            commits: BTreeMap::new(),
            last_commit: self.now,
            timer_at: None,
            fencing: Vec::new(),
        });
        // A first step writes what the recovery let go at once (tombstones past their
        // retention), so the world knows of those expiries before the worker serves a request.
        self.worker_step(w, Vec::new());
        self.at(Duration::ZERO, Ev::Reconcile(w, inc));
    }

    pub(super) fn crash_worker(&mut self, w: usize, containers_die: bool) {
        self.note(format!(
            "crash w{}{}",
            w + 1,
            if containers_die {
                ", its containers die with it"
            } else {
                ", its containers run on"
            }
        ));
        self.count("worker crashes");
        self.nodes[w].proc = None;
        if containers_die {
            let killed: Vec<Uuid> = self.nodes[w]
                .docker
                .values()
                .filter(|c| c.running)
                .map(|c| c.task)
                .collect();
            for id in killed {
                *self.ends.entry(id).or_insert(0) += 1;
            }
            self.nodes[w].docker.clear();
        }
    }

    pub(super) fn worker_request(&mut self, packet: Packet) {
        let w = packet.worker;
        if self.nodes[w].proc.is_none() {
            return; // nobody listens: the caller times out
        }
        let now = self.now();
        let name = self.nodes[w].name.clone();
        match packet.body {
            Body::Stats => self.reply(w, packet.manager, packet.req, Body::Name(name)),
            Body::Watch(query) => {
                // As the shell: the acknowledgement first (what it lets go is dropped in a
                // step of its own), then the read.
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                if let Some(acked) = query.acked.and_then(|a| p.feed.acked(a, query.instance)) {
                    p.core.acked(now, acked);
                    self.worker_step(w, Vec::new());
                } else if let Some(acked) = query.acked {
                    self.note(format!(
                        "w{} ignores acked {acked} (not of its feed, or from its future)",
                        w + 1
                    ));
                }
                let feed_page = self.feed_page;
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let since = p.feed.start_of(query.since, query.instance);
                let page = query.limit.map(|limit| Page {
                    tasks: limit.clamp(1, feed_page),
                    bytes: MAX_FEED_PAGE_BYTES,
                });
                if p.feed.has_news(since) || query.wait.is_zero() {
                    let changes = read_feed(p, &name, since, page);
                    self.reply(
                        w,
                        packet.manager,
                        packet.req,
                        Body::Changes(Box::new(changes)),
                    );
                } else {
                    p.next_watcher += 1;
                    let id = p.next_watcher;
                    let inc = p.inc;
                    p.watchers.insert(
                        id,
                        Watcher {
                            since,
                            page,
                            manager: packet.manager,
                            req: packet.req,
                        },
                    );
                    let wait = query.wait.min(MAX_WATCH_WAIT);
                    self.at(wait, Ev::WatchTimeout(w, inc, id));
                }
            }
            Body::Start(task) => {
                let (id, attempt) = (task.id, task.attempt);
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let outcome = p.core.start(now, *task).map(|(t, _)| t).map_err(call_error);
                self.check_fenced_start(w, id, attempt, outcome.is_ok());
                let reply = (packet.manager, packet.req, Body::Started(Box::new(outcome)));
                self.worker_step(w, vec![reply]);
            }
            Body::Stop { id, attempt } => {
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let outcome = p.core.stop(now, id, Some(attempt)).map_err(call_error);
                p.fencing.push((id, attempt));
                let reply = (packet.manager, packet.req, Body::Stopped(Box::new(outcome)));
                self.worker_step(w, vec![reply]);
            }
            _ => {}
        }
    }

    pub(super) fn reply(&mut self, w: usize, manager: u64, req: u64, body: Body) {
        self.transmit(Packet {
            worker: w,
            manager,
            req,
            body,
        });
    }

    /// The worker shell's `carry_out`: write, then publish, run effects and answer.
    pub(super) fn worker_step(&mut self, w: usize, replies: Vec<(u64, u64, Body)>) {
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let writes = p.core.take_writes();
        let effects = p.core.take_effects();
        let inc = p.inc;
        let next = p.core.next_timer();
        if !writes.dropped.is_empty() || !writes.expired.is_empty() {
            self.check_drops(w, &writes.dropped, &writes.expired);
        }
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let fences = std::mem::take(&mut p.fencing);
        if next != p.timer_at {
            p.timer_at = next;
            if let Some(at) = next {
                self.at(at.saturating_sub(self.now), Ev::WorkerTimer(w, inc, at));
            }
        }
        if writes.is_empty() && replies.is_empty() && fences.is_empty() {
            self.worker_effects(w, effects);
            return;
        }
        self.seq += 1;
        let id = self.seq;
        let delay = self.ms(0, 3);
        let p = self.nodes[w].proc.as_mut().expect("checked above");
        let at = (self.now + delay).max(p.last_commit);
        p.last_commit = at;
        p.commits.insert(
            id,
            WorkerHeld {
                held: Held { writes, effects },
                replies,
                fences,
            },
        );
        let rel = at - self.now;
        self.at(rel, Ev::WorkerCommit(w, id));
    }

    pub(super) fn worker_committed(&mut self, w: usize, id: u64) {
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let Some(held) = p.commits.remove(&id) else {
            return;
        };
        let mut positions = Vec::new();
        for t in &held.held.writes.tasks {
            positions.push((t.id, p.feed.changed(t.id)));
            p.published.insert(t.id, t.clone());
        }
        let mut dropped = Vec::new();
        for id in &held.held.writes.dropped {
            p.feed.forget(*id);
            if let Some(t) = p.published.remove(id) {
                dropped.push((*id, t.attempt));
            }
        }
        // The drops are durable, and so are their tombstones (written in the same batch); the
        // stops are answered now.
        for (id, attempt) in dropped {
            self.note(format!("w{} dropped {}#{attempt}", w + 1, short(id)));
            self.count("tasks dropped by workers");
            self.fence(w, id, attempt, true);
        }
        for (id, attempt) in held.fences {
            self.fence(w, id, attempt, false);
        }
        let disk = &mut self.nodes[w].disk;
        for t in held.held.writes.tasks {
            disk.tasks.insert(t.id, t);
        }
        for (id, a) in held.held.writes.stops {
            disk.stops.insert(id, a);
        }
        for id in held.held.writes.dropped {
            disk.tasks.remove(&id);
        }
        for id in held.held.writes.expired {
            disk.stops.remove(&id);
        }
        self.notify_watchers(w);
        self.worker_effects(w, held.held.effects);
        for (m, r, b) in held.replies {
            self.reply(w, m, r, b);
        }
        if !positions.is_empty() {
            // As the shell: what retired may now be dropped, if the manager acknowledged it.
            let now = self.now();
            if let Some(p) = self.nodes[w].proc.as_mut() {
                p.core.written(now, &positions);
            }
            self.worker_step(w, Vec::new());
        }
    }

    /// The worker promised to refuse attempts of `id` up to `attempt` (see [`Node::fenced`]).
    fn fence(&mut self, w: usize, id: Uuid, attempt: u32, dropped: bool) {
        let at = self.now;
        let fenced = &mut self.nodes[w].fenced;
        if fenced.get(&id).is_none_or(|f| f.attempt <= attempt) {
            fenced.insert(
                id,
                Fence {
                    attempt,
                    at,
                    dropped,
                },
            );
        }
    }

    pub(super) fn notify_watchers(&mut self, w: usize) {
        let name = self.nodes[w].name.clone();
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let ready: Vec<u64> = p
            .watchers
            .iter()
            .filter(|(_, watcher)| p.feed.has_news(watcher.since))
            .map(|(id, _)| *id)
            .collect();
        let mut answers = Vec::new();
        for id in ready {
            if let Some(watcher) = p.watchers.remove(&id) {
                let changes = read_feed(p, &name, watcher.since, watcher.page);
                answers.push((watcher.manager, watcher.req, changes));
            }
        }
        for (m, r, c) in answers {
            self.reply(w, m, r, Body::Changes(Box::new(c)));
        }
    }

    pub(super) fn worker_effects(&mut self, w: usize, effects: Vec<WEffect>) {
        let Some(inc) = self.worker_inc(w) else {
            return;
        };
        for effect in effects {
            let (op, d) = match effect {
                WEffect::Run { spec, replaces } => {
                    let d = self.ms(20, 400);
                    (
                        DockerOp::Run {
                            spec,
                            replaces: replaces.map(|r| r.0),
                        },
                        d,
                    )
                }
                WEffect::Stop {
                    id,
                    attempt,
                    container,
                    ..
                } => {
                    let d = self.ms(5, 300);
                    (
                        DockerOp::Stop {
                            id,
                            attempt,
                            container,
                        },
                        d,
                    )
                }
                WEffect::Remove(c) => {
                    let d = self.ms(1, 50);
                    (DockerOp::Remove(c), d)
                }
            };
            self.at(d, Ev::Docker(w, inc, op));
        }
    }

    pub(super) fn docker(&mut self, w: usize, op: DockerOp) {
        let now = self.now();
        match op {
            DockerOp::Run { spec, replaces } => {
                let (id, attempt) = (spec.task_id, spec.attempt);
                let result = self.docker_run(w, spec, replaces);
                if let Some(p) = self.nodes[w].proc.as_mut() {
                    p.core.started(now, id, attempt, result);
                }
            }
            DockerOp::Stop {
                id,
                attempt,
                container,
            } => {
                let result = if self.chance(self.faults.stop_fails) {
                    self.count("docker stops failed");
                    Err(RuntimeError::Backend("the daemon did not answer".into()))
                } else {
                    self.docker_remove(w, &container);
                    Ok(())
                };
                if let Some(p) = self.nodes[w].proc.as_mut() {
                    p.core.stopped(now, id, attempt, container, result);
                }
            }
            DockerOp::Remove(c) => self.docker_remove(w, &c),
        }
        self.worker_step(w, Vec::new());
    }

    /// Docker's create-and-start, and the worker's adoption of a container made before.
    pub(super) fn docker_run(
        &mut self,
        w: usize,
        spec: ContainerSpec,
        replaces: Option<String>,
    ) -> Result<ContainerStatus, RuntimeError> {
        if let Some(old) = replaces {
            self.docker_remove(w, &old);
        }
        if let Some(c) = self.nodes[w].docker.values().find(|c| c.name == spec.name) {
            // The name is taken: the same attempt was started before; adopt it.
            return Ok(status_of(c));
        }
        if self.chance(self.faults.start_fails) {
            self.count("docker starts failed");
            *self.ends.entry(spec.task_id).or_insert(0) += 1;
            if self.rng.bool() {
                // Started, then the inspection failed: a container the worker cannot account
                // for, which it must remove.
                self.create(w, &spec);
            }
            return Err(RuntimeError::Backend("start failed".into()));
        }
        let id = self.create(w, &spec);
        Ok(status_of(&self.nodes[w].docker[&id]))
    }

    pub(super) fn create(&mut self, w: usize, spec: &ContainerSpec) -> String {
        self.next_container += 1;
        let id = format!("ctr{}", self.next_container);
        let healthy = !self.chance(self.faults.unhealthy);
        if !healthy {
            *self.ends.entry(spec.task_id).or_insert(0) += 1;
        }
        let host_ports = spec
            .ports
            .keys()
            .map(|p| (p.clone(), (40000 + self.next_container % 20000).to_string()))
            .collect();
        self.nodes[w].docker.insert(
            id.clone(),
            Container {
                id: id.clone(),
                name: spec.name.clone(),
                task: spec.task_id,
                attempt: spec.attempt,
                running: true,
                exit_code: None,
                healthy,
                host_ports,
            },
        );
        if let [exit, code, after] = spec.cmd.as_slice()
            && exit == "exit"
        {
            let code = code.parse().unwrap_or(1);
            let after = after.parse().unwrap_or(1);
            self.at(Duration::from_secs(after), Ev::Exit(w, id.clone(), code));
        }
        id
    }

    pub(super) fn docker_remove(&mut self, w: usize, id_or_name: &str) {
        let key = self.nodes[w]
            .docker
            .values()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
            .map(|c| c.id.clone());
        if let Some(k) = key {
            self.nodes[w].docker.remove(&k);
        }
    }

    pub(super) fn exit(&mut self, w: usize, container: String, code: i64) {
        let Some(c) = self.nodes[w].docker.get_mut(&container) else {
            return;
        };
        if !c.running {
            return;
        }
        c.running = false;
        c.host_ports.clear();
        c.exit_code = Some(code);
        let task = c.task;
        let status = status_of(c);
        *self.ends.entry(task).or_insert(0) += 1;
        if let Some(inc) = self.worker_inc(w) {
            // Docker's `die` event, then the worker's inspection.
            let d = self.ms(1, 20);
            self.at(d, Ev::Inspected(w, inc, status));
        }
    }
}

/// The answer for a watcher starting at `since`, in a page when it asks for pages (as the
/// shell's `changes`): each task as last written.
fn read_feed(p: &WorkerProc, name: &str, since: u64, page: Option<Page>) -> Changes {
    let lookup = |id| p.published.get(&id);
    match page {
        Some(page) => p.feed.read_page(name, since, page, lookup),
        None => p.feed.read(name, since, lookup),
    }
}
