//! The Worker actor: a shell around the worker's [`Core`]. Each handler feeds one input in with
//! the time, then [`Worker::carry_out`] writes what changed, and only once that is durable
//! answers the caller, publishes the changes on the feed and makes the runtime calls. Runtime
//! calls run as futures beside the actor, so one slow start never blocks another; their
//! outcomes come back as inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use log::{info, warn};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::core::{Core, Effect, Writes};
use super::feed::{Changes, Feed, Page};
use super::{
    CountWorkerTasks, GetStats, MAX_FEED_PAGE_BYTES, MAX_WATCH_WAIT, ReadLogs, ReadTask, ReadTasks,
    ReadVolumes, STOPS, StartAttempt, StartAttempts, Started, StopAttempt, StopAttempts, TASKS,
    VolumeReport, VolumesAnswer, WatchChanges, WorkerError, WorkerSetup,
};
use crate::actors::CoreTimer;
use crate::clock::Clock;
use crate::db::{Batch, Store, StoreError};
use crate::node::{Capacity, NodeStats, Sample, StatsSampler};
use crate::runtime::{ContainerSpec, Runtime, RuntimeError, RuntimeEvent, VolumeInfo};
use crate::task::Task;
use crate::volume::Volume;

/// Resolves once a step's writes are durable (or failed).
type Durable = oneshot::Receiver<Result<(), WorkerError>>;

/// Wait for a step's writes, when it had any.
async fn durable(commit: Option<Durable>) -> Result<(), WorkerError> {
    match commit {
        Some(rx) => rx.await.unwrap_or(Err(WorkerError::Gone)),
        None => Ok(()),
    }
}

/// A long-poll waiting for the next change.
struct Watcher {
    since: u64,
    page: Option<Page>,
    reply: oneshot::Sender<Changes>,
}

pub struct Worker {
    core: Core,
    clock: Clock,
    feed: Feed,
    /// What the feed and the API show: each task as last written. The core may be a step
    /// ahead while a commit is under way, and what is not durable is never told. A worker
    /// without a store (simulated, in-process) has nothing to wait for and shows the core.
    published: Option<BTreeMap<Uuid, Task>>,
    runtime: Arc<dyn Runtime>,
    store: Option<Store>,
    sampler: Option<Addr<StatsSampler>>,
    capacity: Capacity,
    /// Its labels (`cube worker --label`), reported in its stats for placement constraints.
    labels: BTreeMap<String, String>,
    /// Most tasks in one answer to a watcher that asks for pages.
    feed_page: usize,
    watchers: Vec<Watcher>,
    notify_scheduled: bool,
    /// The armed timer of the core, and when it fires.
    timer: CoreTimer,
    /// The named volumes Cube created on the runtime, as last listed: at the start, after a
    /// start that mounted one not listed yet, and at each `GET /volumes` (never by polling).
    volumes: Vec<VolumeInfo>,
    /// Listings of the volumes asked for, and the latest one applied: an older listing that
    /// arrives late never replaces a newer one.
    volume_listings: (u64, u64),
}

impl Worker {
    /// A worker with the tasks its store holds; reconciliation with the runtime happens when the
    /// actor starts.
    pub fn new(setup: WorkerSetup) -> Result<Worker, WorkerError> {
        let clock = Clock::new();
        let (mut tasks, mut stops) = (Vec::new(), Vec::new());
        if let Some(store) = &setup.store {
            tasks = TASKS.scan(store)?.into_iter().map(|(_, t)| t).collect();
            stops = STOPS.scan(store)?;
            info!(
                "worker {}: {} task(s) and {} stop(s) loaded from {}",
                setup.name,
                tasks.len(),
                stops.len(),
                store.path().display()
            );
        }
        let mut feed = Feed::new(Uuid::new_v4());
        let positions: Vec<(Uuid, u64)> =
            tasks.iter().map(|t| (t.id, feed.changed(t.id))).collect();
        let published = setup
            .store
            .is_some()
            .then(|| tasks.iter().map(|t| (t.id, t.clone())).collect());
        let now = clock.now();
        let mut core = Core::recover(setup.name, setup.retention, now, tasks, stops);
        core.written(now, &positions);
        Ok(Worker {
            core,
            clock,
            feed,
            published,
            runtime: setup.runtime,
            store: setup.store,
            sampler: setup.sampler,
            capacity: setup.capacity,
            labels: BTreeMap::new(),
            feed_page: setup.feed_page.max(1),
            watchers: Vec::new(),
            notify_scheduled: false,
            timer: CoreTimer::default(),
            volumes: Vec::new(),
            volume_listings: (0, 0),
        })
    }

    fn name(&self) -> &str {
        self.core.name()
    }

    /// Ask the runtime for the named volumes again (a start may have created one).
    fn refresh_volumes(&mut self, ctx: &mut Context<Self>) {
        self.volume_listings.0 += 1;
        let listing = self.volume_listings.0;
        let runtime = self.runtime.clone();
        let name = self.name().to_string();
        ctx.spawn(
            async move { runtime.volumes(name).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(volumes) => act.listed_volumes(listing, volumes),
                    Err(e) => warn!("worker {}: cannot list its volumes: {e}", act.name()),
                }),
        );
    }

    /// Keep a listing of the volumes, unless a newer one was kept already.
    fn listed_volumes(&mut self, listing: u64, volumes: Vec<VolumeInfo>) {
        if listing > self.volume_listings.1 {
            self.volume_listings.1 = listing;
            self.volumes = volumes;
        }
    }

    /// The volumes as `GET /volumes` shows them: each with the active tasks mounting it.
    fn volume_reports(&self) -> Vec<VolumeReport> {
        self.volumes
            .iter()
            .map(|v| VolumeReport {
                name: v.name.clone(),
                created: v.created_at,
                tasks: self
                    .core
                    .tasks()
                    .filter(|t| {
                        t.state.is_active()
                            && t.volumes.iter().any(|m| m.name() == Some(v.name.as_str()))
                    })
                    .map(|t| t.id)
                    .collect(),
            })
            .collect()
    }

    /// The worker's labels (`cube worker --label zone=a`), which its stats report and
    /// placement constraints match.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Worker {
        self.labels = labels;
        self
    }

    /// Write what the core changed; once durable, publish the changes and carry out the core's
    /// effects. Resolves when the writes are durable (or failed). With `barrier`, a step that
    /// wrote nothing still waits for a commit, so the answer to a repeated start or stop never
    /// comes before the first one's records are durable.
    fn carry_out(&mut self, ctx: &mut Context<Self>, barrier: bool) -> Option<Durable> {
        let writes = self.core.take_writes();
        let effects = self.core.take_effects();
        self.rearm(ctx);
        if writes.is_empty() && !(barrier && self.store.is_some()) {
            self.perform(effects, ctx);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let commit = persist(self.store.as_ref(), &writes);
        ctx.spawn(commit.into_actor(self).map(move |res, act, ctx| {
            let mut positions = Vec::new();
            match &res {
                Ok(()) => {
                    for t in &writes.tasks {
                        positions.push((t.id, act.feed.changed(t.id)));
                        if let Some(published) = act.published.as_mut() {
                            published.insert(t.id, t.clone());
                        }
                    }
                    for id in &writes.dropped {
                        act.feed.forget(*id);
                        if let Some(published) = act.published.as_mut() {
                            published.remove(id);
                        }
                    }
                    act.notify_soon(ctx);
                }
                Err(e) => {
                    warn!("worker {}: could not write its records: {e}", act.name());
                    act.core.unwritten(writes);
                }
            }
            act.perform(effects, ctx);
            let _ = tx.send(res.map_err(WorkerError::from));
            if !positions.is_empty() {
                // What retired may now be dropped, if the manager acknowledged it already.
                let now = act.clock.now();
                act.core.written(now, &positions);
                act.step(ctx);
            }
        }));
        Some(rx)
    }

    /// Carry out, when nobody waits for the writes; a failure is logged there.
    fn step(&mut self, ctx: &mut Context<Self>) {
        let _ = self.carry_out(ctx, false);
    }

    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Run { spec, replaces } => self.run(spec, replaces, ctx),
                Effect::Stop {
                    id,
                    attempt,
                    container,
                    timeout,
                } => {
                    let runtime = self.runtime.clone();
                    let c = container.clone();
                    ctx.spawn(
                        async move { runtime.stop(c, timeout).await }
                            .into_actor(self)
                            .map(move |res, act, ctx| {
                                let now = act.clock.now();
                                act.core.stopped(now, id, attempt, container, res);
                                act.step(ctx);
                            }),
                    );
                }
                Effect::Remove(container) => {
                    let runtime = self.runtime.clone();
                    let name = self.name().to_string();
                    actix::spawn(async move {
                        if let Err(e) = runtime.remove(container.clone()).await {
                            warn!("worker {name}: could not remove container {container}: {e}");
                        }
                    });
                }
            }
        }
    }

    /// Start a container, replacing an older attempt's first.
    fn run(
        &mut self,
        spec: ContainerSpec,
        replaces: Option<(String, Duration)>,
        ctx: &mut Context<Self>,
    ) {
        let runtime = self.runtime.clone();
        let worker = self.name().to_string();
        let (id, attempt) = (spec.task_id, spec.attempt);
        // A named volume not listed yet is one this start creates (or tried to).
        let creates_volume = spec
            .volumes
            .iter()
            .filter_map(Volume::name)
            .any(|name| !self.volumes.iter().any(|v| v.name == name));
        let start = async move {
            if let Some((old, timeout)) = replaces
                && let Err(e) = runtime.stop(old.clone(), timeout).await
            {
                warn!(
                    "worker {worker}: could not remove container {old} of an older attempt of {id}: {e}"
                );
            }
            let name = spec.name.clone();
            match runtime.start(spec).await {
                // The same attempt was started before (a retry, or a crash between the runtime
                // creating it and our record of it): adopt that container, never make a second.
                Err(RuntimeError::NameConflict(_)) => {
                    if let Some(found) = runtime.inspect(name.clone()).await? {
                        return Ok(found);
                    }
                    runtime
                        .list(worker)
                        .await?
                        .into_iter()
                        .find(|c| c.task_id == id && c.attempt == attempt)
                        .ok_or(RuntimeError::NameConflict(name))
                }
                other => other,
            }
        };
        ctx.spawn(start.into_actor(self).map(move |res, act, ctx| {
            if creates_volume {
                act.refresh_volumes(ctx);
            }
            let now = act.clock.now();
            act.core.started(now, id, attempt, res);
            act.step(ctx);
        }));
    }

    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.core.next_timer();
        self.timer.arm(ctx, &self.clock, next, |act, ctx| {
            act.timer.fired();
            let now = act.clock.now();
            act.core.tick(now);
            act.step(ctx);
        });
    }

    /// A task as the feed and the API show it.
    fn shown(&self, id: Uuid) -> Option<&Task> {
        match &self.published {
            Some(published) => published.get(&id),
            None => self.core.task(id),
        }
    }

    fn notify_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.notify_scheduled {
            // Coalesce: changes made while this mailbox drains go out in one answer.
            self.notify_scheduled = true;
            ctx.run_later(Duration::ZERO, |act, _| act.notify_watchers());
        }
    }

    /// The answer for a watcher starting at `since`, in a page when it asks for pages.
    fn changes(&self, since: u64, page: Option<Page>) -> Changes {
        let lookup = |id| self.shown(id);
        match page {
            Some(page) => self.feed.read_page(self.core.name(), since, page, lookup),
            None => self.feed.read(self.core.name(), since, lookup),
        }
    }

    fn notify_watchers(&mut self) {
        self.notify_scheduled = false;
        let watchers = std::mem::take(&mut self.watchers);
        for w in watchers {
            if w.reply.is_closed() {
                continue;
            }
            if self.feed.has_news(w.since) {
                let _ = w.reply.send(self.changes(w.since, w.page));
            } else {
                self.watchers.push(w);
            }
        }
    }

    /// Compare the table with the runtime's containers.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let token = self.core.begin_reconcile();
        let runtime = self.runtime.clone();
        let name = self.name().to_string();
        ctx.spawn(
            async move { runtime.list(name).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(containers) => {
                        let now = act.clock.now();
                        act.core.reconcile(now, token, containers);
                        act.step(ctx);
                    }
                    Err(e) => {
                        warn!(
                            "worker {}: cannot list containers to reconcile: {e}",
                            act.name()
                        );
                        ctx.run_later(Duration::from_secs(1), |act, ctx| act.reconcile(ctx));
                    }
                }),
        );
    }
}

/// Write the changed records in one batch; `Ok` at once without a store.
fn persist(store: Option<&Store>, writes: &Writes) -> BoxFuture<'static, Result<(), StoreError>> {
    let Some(store) = store else {
        return futures_util::future::ready(Ok(())).boxed();
    };
    // Divisible: records and tombstones are independent, and a step that rewrites many (a
    // reconciliation) must go through in parts in a nearly full store (db::Batch::divisible).
    let mut batch = Batch::new().divisible();
    for task in &writes.tasks {
        if let Err(e) = TASKS.put(&mut batch, &task.id, task) {
            return futures_util::future::ready(Err(e)).boxed();
        }
    }
    for (id, tombstone) in &writes.stops {
        if let Err(e) = STOPS.put(&mut batch, id, tombstone) {
            return futures_util::future::ready(Err(e)).boxed();
        }
    }
    for id in &writes.dropped {
        TASKS.delete(&mut batch, id);
    }
    for id in &writes.expired {
        STOPS.delete(&mut batch, id);
    }
    store.commit(batch).boxed()
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(crate::actors::MAILBOX_CAPACITY);
        ctx.add_stream(self.runtime.events(self.name().to_string()));
        self.reconcile(ctx);
        self.refresh_volumes(ctx);
        if let Some(every) = self.runtime.reconcile_every() {
            // A phase of its own, so many workers started together do not all list their
            // containers at the same moment.
            let phase = every.mul_f64(fastrand::f64());
            ctx.run_later(phase, move |act, ctx| {
                act.reconcile(ctx);
                ctx.run_interval(every, |act, ctx| act.reconcile(ctx));
            });
        }
    }
}

impl StreamHandler<RuntimeEvent> for Worker {
    fn handle(&mut self, event: RuntimeEvent, ctx: &mut Context<Self>) {
        match event {
            RuntimeEvent::Resync => self.reconcile(ctx),
            RuntimeEvent::Exited { container_id } => {
                let runtime = self.runtime.clone();
                ctx.spawn(
                    async move { runtime.inspect(container_id).await }
                        .into_actor(self)
                        .map(|res, act, ctx| match res {
                            Ok(Some(status)) => {
                                let now = act.clock.now();
                                act.core.exited(now, status);
                                act.step(ctx);
                            }
                            // Removed already: a stop of ours, which records its own outcome.
                            Ok(None) => {}
                            Err(e) => warn!(
                                "worker {}: cannot inspect an ended container: {e}",
                                act.name()
                            ),
                        }),
                );
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        warn!("worker {}: the runtime's event stream ended", self.name());
    }
}

impl Handler<StartAttempt> for Worker {
    type Result = ResponseFuture<Result<Started, WorkerError>>;

    fn handle(&mut self, msg: StartAttempt, ctx: &mut Context<Self>) -> Self::Result {
        // A new attempt is new data: refused, before the core hears of it, while the store
        // keeps its reserve for stops and status updates (db::Usage). A known or fenced
        // attempt goes on: its answer writes nothing new.
        if let Err(full) = self.room_for(&msg.0) {
            return Box::pin(async move { Err(WorkerError::Store(full)) });
        }
        let now = self.clock.now();
        let outcome = self.core.start(now, msg.0);
        let commit = self.carry_out(ctx, true);
        Box::pin(async move {
            let (task, created) = outcome?;
            durable(commit).await?;
            Ok(Started { task, created })
        })
    }
}

impl Worker {
    /// A new attempt is new data: refused, before the core hears of it, while the store keeps
    /// its reserve for stops and status updates (db::Usage). A known or fenced attempt goes
    /// on: its answer writes nothing new.
    fn room_for(&self, task: &Task) -> Result<(), crate::db::StoreError> {
        let (id, attempt) = (task.id, task.attempt.max(1));
        let new = self
            .core
            .tombstone(id)
            .is_none_or(|stopped| attempt > stopped)
            && self.core.task(id).is_none_or(|t| t.attempt < attempt);
        match &self.store {
            Some(store) if new => store.check_room(),
            _ => Ok(()),
        }
    }
}

impl Handler<StartAttempts> for Worker {
    type Result = ResponseFuture<Result<Vec<Result<Started, WorkerError>>, WorkerError>>;

    fn handle(&mut self, msg: StartAttempts, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcomes: Vec<_> = msg
            .0
            .into_iter()
            .map(|task| {
                // Each new attempt is refused while the store keeps its reserve, as alone.
                self.room_for(&task).map_err(WorkerError::Store)?;
                self.core
                    .start(now, task)
                    .map(|(task, created)| Started { task, created })
            })
            .collect();
        let commit = self.carry_out(ctx, true);
        Box::pin(async move {
            durable(commit).await?;
            Ok(outcomes)
        })
    }
}

impl Handler<StopAttempt> for Worker {
    type Result = ResponseFuture<Result<Task, WorkerError>>;

    fn handle(&mut self, msg: StopAttempt, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self.core.stop(now, msg.id, msg.attempt);
        let commit = self.carry_out(ctx, true);
        Box::pin(async move {
            // Even a refusal may have left a tombstone: answer once it is durable.
            durable(commit).await?;
            outcome
        })
    }
}

impl Handler<StopAttempts> for Worker {
    type Result = ResponseFuture<Result<Vec<Result<Task, WorkerError>>, WorkerError>>;

    fn handle(&mut self, msg: StopAttempts, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcomes: Vec<_> = msg
            .0
            .into_iter()
            .map(|stop| self.core.stop(now, stop.id, stop.attempt))
            .collect();
        let commit = self.carry_out(ctx, true);
        Box::pin(async move {
            // Even a refusal may have left a tombstone: answer once the step is durable.
            durable(commit).await?;
            Ok(outcomes)
        })
    }
}

impl Handler<ReadTask> for Worker {
    type Result = Option<Task>;

    fn handle(&mut self, msg: ReadTask, _: &mut Context<Self>) -> Self::Result {
        self.shown(msg.0).cloned()
    }
}

impl Handler<CountWorkerTasks> for Worker {
    type Result = MessageResult<CountWorkerTasks>;

    fn handle(&mut self, _: CountWorkerTasks, _: &mut Context<Self>) -> Self::Result {
        let mut counts = [0usize; crate::task::State::COUNT];
        let states: Box<dyn Iterator<Item = crate::task::State>> = match &self.published {
            Some(published) => Box::new(published.values().map(|t| t.state)),
            None => Box::new(self.core.tasks().map(|t| t.state)),
        };
        for state in states {
            if let Some(n) = counts.get_mut(state.index()) {
                *n += 1;
            }
        }
        MessageResult(
            crate::task::State::ALL
                .iter()
                .map(|&s| (s, counts[s.index()]))
                .collect(),
        )
    }
}

impl Handler<ReadTasks> for Worker {
    type Result = Vec<Task>;

    fn handle(&mut self, _: ReadTasks, _: &mut Context<Self>) -> Self::Result {
        match &self.published {
            Some(published) => published.values().cloned().collect(),
            None => self.core.tasks().cloned().collect(),
        }
    }
}

impl Handler<WatchChanges> for Worker {
    type Result = ResponseFuture<Changes>;

    fn handle(&mut self, msg: WatchChanges, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(acked) = msg.acked.and_then(|a| self.feed.acked(a, msg.instance)) {
            let now = self.clock.now();
            self.core.acked(now, acked);
            self.step(ctx);
        }
        let since = self.feed.start_of(msg.since, msg.instance);
        let page = msg.limit.map(|limit| Page {
            tasks: limit.clamp(1, self.feed_page),
            bytes: MAX_FEED_PAGE_BYTES,
        });
        if self.feed.has_news(since) || msg.wait.is_zero() {
            let changes = self.changes(since, page);
            return Box::pin(async move { changes });
        }
        let (tx, rx) = oneshot::channel();
        self.watchers.retain(|w| !w.reply.is_closed());
        self.watchers.push(Watcher {
            since,
            page,
            reply: tx,
        });
        let empty = Changes {
            name: self.core.name().to_string(),
            instance: self.feed.instance(),
            seq: self.feed.seq(),
            full: false,
            more: false,
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

impl Handler<GetStats> for Worker {
    type Result = ResponseFuture<Result<NodeStats, WorkerError>>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let name = self.name().to_string();
        let tasks = self.core.active();
        let volumes: Vec<String> = self.volumes.iter().map(|v| v.name.clone()).collect();
        let allowed_host_paths = self.runtime.allowed_host_paths(&name);
        match &self.sampler {
            None => {
                let mut stats = NodeStats::simulated(&name, self.capacity, tasks);
                stats.volumes = volumes;
                stats.allowed_host_paths = allowed_host_paths;
                stats.labels = self.labels.clone();
                Box::pin(async move { Ok(stats) })
            }
            Some(sampler) => {
                let sample = sampler.send(Sample);
                let labels = self.labels.clone();
                Box::pin(async move {
                    let mut stats = sample.await.map_err(|_| WorkerError::Gone)?;
                    stats.name = name;
                    stats.tasks = tasks;
                    stats.volumes = volumes;
                    stats.allowed_host_paths = allowed_host_paths;
                    stats.labels = labels;
                    Ok(stats)
                })
            }
        }
    }
}

impl Handler<ReadVolumes> for Worker {
    type Result = ResponseActFuture<Self, Result<VolumesAnswer, WorkerError>>;

    fn handle(&mut self, _: ReadVolumes, _: &mut Context<Self>) -> Self::Result {
        self.volume_listings.0 += 1;
        let listing = self.volume_listings.0;
        let runtime = self.runtime.clone();
        let name = self.name().to_string();
        Box::pin(
            async move { runtime.volumes(name).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    act.listed_volumes(listing, res?);
                    Ok(VolumesAnswer {
                        name: act.name().to_string(),
                        volumes: act.volume_reports(),
                    })
                }),
        )
    }
}

impl Handler<ReadLogs> for Worker {
    type Result = Result<
        futures_util::stream::BoxStream<'static, Result<bytes::Bytes, RuntimeError>>,
        WorkerError,
    >;

    fn handle(&mut self, msg: ReadLogs, _: &mut Context<Self>) -> Self::Result {
        let task = self
            .core
            .task(msg.id)
            .ok_or(WorkerError::NotFound(msg.id))?;
        let container = task
            .container_id
            .clone()
            .ok_or(WorkerError::NoContainer(msg.id))?;
        Ok(self.runtime.logs(container, msg.tail, msg.follow))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::actors::worker::DEFAULT_FEED_PAGE;
    use crate::runtime::fake::FakeRuntime;
    use crate::task::State;
    use crate::volume::Volume;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn task(volumes: &[&str]) -> Task {
        let mut task = Task::new("cube-test/busybox:latest");
        task.attempt = 1;
        task.volumes = volumes
            .iter()
            .map(|v| Volume::parse(v).expect("a volume"))
            .collect();
        task
    }

    async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix_web::test]
    async fn stats_and_volumes_show_what_the_runtime_made_and_allows() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        runtime.allow_host_paths("w1", vec!["/srv/data".into()]);
        let worker = Worker::new(WorkerSetup {
            name: "w1".into(),
            runtime: Arc::new(runtime),
            store: None,
            sampler: None,
            capacity: crate::server::DEFAULT_FAKE_CAPACITY,
            retention: super::super::DEFAULT_RETENTION,
            feed_page: DEFAULT_FEED_PAGE,
        })
        .expect("a worker")
        .start();
        let stats = worker
            .send(GetStats)
            .await
            .expect("answers")
            .expect("stats");
        assert!(stats.volumes.is_empty(), "{stats:?}");
        assert_eq!(stats.allowed_host_paths, vec!["/srv/data"]);

        let mounts = task(&["data:/data", "/srv/data/web:/web:ro"]);
        worker
            .send(StartAttempt(mounts.clone()))
            .await
            .expect("answers")
            .expect("started");
        // Listed once the start created it, without anyone asking.
        eventually("the volume in the stats", async || {
            let stats = worker.send(GetStats).await.ok()?.ok()?;
            (stats.volumes == ["data"]).then_some(())
        })
        .await;
        let listed = worker
            .send(ReadVolumes)
            .await
            .expect("answers")
            .expect("listed");
        assert_eq!(listed.volumes.len(), 1);
        assert_eq!(listed.volumes[0].name, "data");
        assert!(listed.volumes[0].created.is_some());
        assert_eq!(listed.volumes[0].tasks, vec![mounts.id]);

        let outside = task(&["logs:/logs", "/etc:/x"]);
        worker
            .send(StartAttempt(outside.clone()))
            .await
            .expect("answers")
            .expect("accepted");
        let failed = eventually("the start outside the prefixes to fail", async || {
            let t = worker.send(ReadTask(outside.id)).await.ok()??;
            (t.state == State::Failed).then_some(t)
        })
        .await;
        assert_eq!(
            failed.error.as_deref(),
            Some(
                "volume /etc:/x: host path /etc is not under a path this worker allows (--allow-host-path); it allows: /srv/data"
            )
        );
        let listed = worker
            .send(ReadVolumes)
            .await
            .expect("answers")
            .expect("listed");
        let names: Vec<&str> = listed.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["data"], "a refused start creates no volume");
    }
}
