//! The Manager actor: a shell around the manager's [`Core`]. Each handler feeds one input in
//! with the time; [`Manager::carry_out`] then hands the scheduler its requests, commits the
//! records the core changed (group commit) and, only once they are durable, sends the workers'
//! calls and answers whoever waits. Waiting for commits happens outside the actor's context:
//! thousands of submissions wait at once, and an actor polls every future spawned in its
//! context on each wake-up.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use log::{info, warn};
use uuid::Uuid;

use super::core::{self, Core, Effect, Writes};
use super::{
    COLLECTED, CallsDone, ChangeNode, Connect, CountTasks, EVENTS, ForgetNode, GetNode, GetTask,
    GetVitals, JoinNode, Joined, ListNodes, ListTasks, Listing, LogsOf, ManagerError,
    ManagerScrape, NODES, NodeDown, NodeRecord, NodeReport, NodeUp, Report, SERVICES,
    ScrapeManager, Snapshot, StopTask, Submit, Submitted, TASKS, Vitals, WorkerFacts,
};
use crate::actors::CoreTimer;
use crate::actors::client::{WorkerClient, WorkerLink, WorkerTarget};
use crate::actors::events::{Change, EventHub, Publish};
use crate::actors::health::{HealthChecked, HealthChecker, Unwatch, Watch};
use crate::actors::scheduler::{
    CapacityAvailable, ListBook, NodeFacts as SchedulerNodeFacts, NodeReady, Place, Release,
    Restore, Scheduler, SetListener,
};
use crate::actors::worker_proxy::{
    CallWorker, Disconnect, FeedMark, Info, Link, Recorded, Registration, Resync, WorkerCall,
    WorkerProxy,
};
use crate::clock::Clock;
use crate::db::{Batch, Store, StoreError};
use crate::metrics::ManagerMetrics;
use crate::node::NodeStatus;
use crate::task::{Desired, Goal, State, Task};

/// How the Manager is set up.
pub struct ManagerSetup {
    pub store: Store,
    pub scheduler: Addr<Scheduler>,
    /// Time between health checks of a task.
    pub health_interval: Duration,
    /// Silence after which a worker is Down.
    pub node_timeout: Duration,
    /// The thread WorkerProxies run on.
    pub workers_arbiter: actix::dev::ArbiterHandle,
    /// The token presented to workers.
    pub cluster_token: Option<String>,
    /// Workers are called over HTTPS with this configuration.
    pub worker_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Finished tasks are kept this long, and at most this many of them.
    pub retention: Duration,
    pub retention_count: usize,
    /// The event stream: told what each step committed once it is durable.
    pub events: Option<Addr<EventHub>>,
}

pub struct Manager {
    pub(super) core: Core,
    pub(super) clock: Clock,
    pub(super) store: Store,
    scheduler: Addr<Scheduler>,
    /// Proxies by endpoint.
    proxies: Vec<Addr<WorkerProxy>>,
    workers_arbiter: actix::dev::ArbiterHandle,
    cluster_token: Option<String>,
    worker_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    node_timeout: Duration,
    health_interval: Duration,
    health: Option<Addr<HealthChecker>>,
    timer: CoreTimer,
    /// Records of an older store rewritten at start-up (intents folded in).
    upgrade: Option<Batch>,
    /// Long-polls of services' endpoints.
    pub(super) endpoint_waiters: Vec<super::services::Waiter>,
    /// The counters and histograms `GET /metrics` shows; the HTTP handlers share them.
    metrics: ManagerMetrics,
    /// The event stream (`GET /events`).
    events: Option<Addr<EventHub>>,
}

impl Manager {
    /// A manager with everything the store holds.
    pub fn new(setup: ManagerSetup) -> Result<Manager, ManagerError> {
        let store = setup.store;
        let clock = Clock::new();
        let nodes: Vec<(String, NodeRecord)> = NODES.scan(&store)?;
        let known = nodes.len();
        let config = core::Config::new(setup.node_timeout)
            .with_retention(setup.retention, setup.retention_count);
        // Stores written before `desired` was part of the record kept stops as intents.
        let mut upgrade = Batch::new();
        let intents = EVENTS.scan(&store)?;
        let mut core = if intents.is_empty() {
            let count = usize::try_from(store.len(TASKS.name())?).unwrap_or(0);
            let now = clock.now();
            with_task_records(&store, |records| {
                Core::recover_from(config, now, count, records, nodes)
            })?
        } else {
            let mut records = TASKS.scan(&store)?;
            let by_id: HashMap<Uuid, usize> = records
                .iter()
                .enumerate()
                .map(|(i, (_, t))| (t.id, i))
                .collect();
            for (key, intent) in intents {
                if intent.state == Desired::Completed
                    && let Some(&i) = by_id.get(&intent.task)
                {
                    let (seq, task) = &mut records[i];
                    task.desired = Goal::Stopped;
                    TASKS.put(&mut upgrade, seq, task)?;
                }
                EVENTS.delete(&mut upgrade, &key);
            }
            Core::recover(config, clock.now(), records, nodes)
        };
        let counts = core.counts();
        let placed = counts[State::Scheduled.index()] + counts[State::Running.index()];
        info!(
            "manager: {} task(s) recovered from {} ({placed} placed), {known} worker(s) known",
            counts.iter().sum::<usize>(),
            store.path().display(),
        );
        let tombstones: Vec<core::Tombstone> = COLLECTED
            .scan(&store)?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        core.restore_tombstones(clock.now(), tombstones);
        let services: Vec<crate::service::Service> =
            SERVICES.scan(&store)?.into_iter().map(|(_, s)| s).collect();
        if !services.is_empty() {
            info!("manager: {} service(s) recovered", services.len());
        }
        core.restore_services(clock.now(), services);
        Ok(Manager {
            core,
            clock,
            store,
            scheduler: setup.scheduler,
            proxies: Vec::new(),
            workers_arbiter: setup.workers_arbiter,
            cluster_token: setup.cluster_token,
            worker_tls: setup.worker_tls,
            node_timeout: setup.node_timeout,
            health_interval: setup.health_interval,
            health: None,
            timer: CoreTimer::default(),
            upgrade: (!upgrade.is_empty()).then_some(upgrade),
            endpoint_waiters: Vec::new(),
            metrics: ManagerMetrics::default(),
            events: setup.events,
        })
    }

    /// The counters and histograms this manager bumps (shared: they go on counting).
    pub fn metrics(&self) -> ManagerMetrics {
        self.metrics.clone()
    }

    /// Carry out what the core asks: the scheduler's and the proxies' messages now; the records
    /// into one commit; the workers' calls once it is durable. Resolves with the commit. With
    /// `barrier`, a step that wrote nothing still waits for a commit, so an answer that depends
    /// on an earlier step (a repeated submission or stop) is never given before that step's
    /// records are durable: the writer commits in order.
    pub(super) fn carry_out(&mut self, ctx: &mut Context<Self>, barrier: bool) -> Option<Commit> {
        self.carry_out_with(ctx, barrier, true)
    }

    /// [`Manager::carry_out`], with the records committed in parts when they do not fit whole
    /// (`divisible`, db::Batch::divisible) or all or nothing. One step's records are
    /// independent, and a step that rewrites many of them must go through in parts when the
    /// store is nearly full, or the writes queued again after each failure would never fit.
    /// A submission's step is all or nothing: a new task whose commit fails is forgotten, so
    /// its record must not be left in the store either.
    fn carry_out_with(
        &mut self,
        ctx: &mut Context<Self>,
        barrier: bool,
        divisible: bool,
    ) -> Option<Commit> {
        let writes = self.core.take_writes();
        let effects = self.core.take_effects();
        for took in self.core.take_running_latencies() {
            self.metrics.submit_running_seconds.observe_duration(took);
        }
        self.rearm(ctx);
        self.wake_endpoint_waiters();
        let mut calls: Vec<(Addr<WorkerProxy>, CallWorker)> = Vec::new();
        let mut changes = self.events.as_ref().map(|_| self.service_changes(&writes));
        for effect in effects {
            match effect {
                Effect::Restore(allocations) => {
                    if !allocations.is_empty() {
                        self.scheduler.do_send(Restore(allocations));
                    }
                }
                Effect::Place(batch) => self.place(batch, ctx),
                Effect::Release(ids) => self.scheduler.do_send(Release(ids)),
                Effect::NodeReady { name, ready } => {
                    if let Some(changes) = &mut changes {
                        let name = name.clone();
                        changes.push(Change::NodeStatus { name, ready });
                    }
                    self.scheduler.do_send(NodeReady { name, ready })
                }
                Effect::NodeFacts { name, facts } => {
                    self.scheduler.do_send(SchedulerNodeFacts { name, facts })
                }
                Effect::Registered { endpoint, name } => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        p.do_send(Registration(Ok(name)));
                    }
                }
                Effect::Refused { endpoint, reason } => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        p.do_send(Registration(Err(reason)));
                    }
                }
                Effect::Resync(endpoint) => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        p.do_send(Resync);
                    }
                }
                Effect::Watch { id, attempt, url } => {
                    if let Some(h) = &self.health {
                        h.do_send(Watch { id, attempt, url });
                    }
                }
                Effect::Unwatch(id) => {
                    if let Some(h) = &self.health {
                        h.do_send(Unwatch(id));
                    }
                }
                Effect::Disconnect(endpoint) => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        p.do_send(Disconnect);
                    }
                }
                Effect::Start {
                    endpoint,
                    node,
                    task,
                } => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        let call = WorkerCall::Start(task);
                        calls.push((p.clone(), CallWorker { node, call }));
                    }
                }
                Effect::Stop {
                    endpoint,
                    node,
                    id,
                    attempt,
                } => {
                    if let Some(p) = self.proxies.get(endpoint) {
                        let call = WorkerCall::Stop { id, attempt };
                        calls.push((p.clone(), CallWorker { node, call }));
                    }
                }
            }
        }
        let events = self.events.clone().zip(changes);
        if writes.is_empty() && !barrier {
            send_calls(calls);
            if let Some((hub, changes)) = events
                && !changes.is_empty()
            {
                hub.do_send(Publish {
                    writes: None,
                    changes,
                });
            }
            return None;
        }
        let commit = match batch_of(&writes) {
            Ok(batch) => {
                let batch = if divisible { batch.divisible() } else { batch };
                futures_util::future::Either::Left(self.store.commit(batch))
            }
            Err(e) => futures_util::future::Either::Right(futures_util::future::ready(Err(e))),
        };
        let me = ctx.address();
        Some(Box::pin(async move {
            let res = commit.await;
            match &res {
                // Nothing leaves before the records that explain it are durable; nor is it
                // told on the event stream before.
                Ok(()) => {
                    send_calls(calls);
                    if let Some((hub, changes)) = events
                        && (!writes.is_empty() || !changes.is_empty())
                    {
                        hub.do_send(Publish {
                            writes: Some(writes),
                            changes,
                        });
                    }
                }
                Err(e) => {
                    warn!("manager: could not write task records: {e}");
                    // The records are written (and told) again later; a node's readiness is
                    // no record and would not be: it is told now.
                    if let Some((hub, mut changes)) = events {
                        changes.retain(|c| matches!(c, Change::NodeStatus { .. }));
                        if !changes.is_empty() {
                            hub.do_send(Publish {
                                writes: None,
                                changes,
                            });
                        }
                    }
                    me.do_send(Unwritten(writes));
                }
            }
            res
        }))
    }

    /// The event stream's view of each service this step writes: cheap, for services change
    /// seldom; the other records go to the stream as they are.
    fn service_changes(&self, writes: &Writes) -> Vec<Change> {
        writes
            .services
            .iter()
            .filter_map(|svc| self.core.service_view(&svc.name))
            .map(|view| Change::Service {
                created: view.created_at == view.updated_at,
                view: Box::new(view),
            })
            .collect()
    }

    /// Carry out, when nobody waits for the writes.
    fn step(&mut self, ctx: &mut Context<Self>) {
        if let Some(commit) = self.carry_out(ctx, false) {
            actix::spawn(async move {
                let _ = commit.await;
            });
        }
    }

    fn place(
        &mut self,
        batch: Vec<crate::actors::scheduler::PlaceRequest>,
        ctx: &mut Context<Self>,
    ) {
        let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
        let placing = self.scheduler.send(Place(batch));
        ctx.spawn(placing.into_actor(self).map(move |res, act, ctx| {
            let now = act.clock.now();
            match res {
                Ok((placements, room)) => {
                    act.core.room_left(room);
                    act.core.placed(now, placements);
                }
                Err(e) => {
                    warn!("manager: the scheduler did not answer: {e}");
                    act.core.place_failed(&ids);
                }
            }
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

    /// How to reach the worker at `host:port`: over HTTPS when workers are.
    fn link(&self, address: &str) -> WorkerLink {
        WorkerLink::http(address, self.worker_tls.is_some())
    }

    /// Start a proxy for a worker link, on the workers' thread.
    fn connect(&mut self, link: WorkerLink, ctx: &mut Context<Self>) -> Addr<WorkerProxy> {
        let endpoint = self.core.add_endpoint(&link.address());
        if let Some(p) = self.proxies.get(endpoint) {
            return p.clone();
        }
        let (manager, scheduler, timeout) =
            (ctx.address(), self.scheduler.clone(), self.node_timeout);
        let poll_seconds = self.metrics.worker_poll_seconds.clone();
        let target = WorkerTarget {
            link,
            token: self.cluster_token.clone(),
            tls: self.worker_tls.clone(),
        };
        // The client is made on the proxy's thread: it stays on the thread that made it.
        let proxy = WorkerProxy::start_in_arbiter(&self.workers_arbiter, move |_| {
            WorkerProxy::new(
                endpoint,
                WorkerClient::new(target),
                manager,
                scheduler,
                timeout,
            )
            .with_poll_histogram(poll_seconds)
        });
        debug_assert_eq!(self.proxies.len(), endpoint);
        self.proxies.push(proxy.clone());
        proxy
    }
}

/// A commit under way and what follows it (the workers' calls); resolves once it is durable.
pub(super) type Commit = futures_util::future::BoxFuture<'static, Result<(), StoreError>>;

/// Hand every task record to `build` as they are decoded on a thread of their own, in chunks:
/// at a restart with a million records, one core decodes while the other builds the memory.
fn with_task_records<R>(
    store: &Store,
    build: impl FnOnce(&mut dyn Iterator<Item = (u64, Task)>) -> R,
) -> Result<R, StoreError> {
    const CHUNK: usize = 4096;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, Task)>>(16);
        let loader = std::thread::Builder::new()
            .name("cube-store-load".into())
            .spawn_scoped(scope, move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                TASKS.scan_each(store, |key, task| {
                    chunk.push((key, task));
                    if chunk.len() == CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        // The builder stopped taking records only if it failed: end quietly.
                        if tx.send(full).is_err() {
                            return Err(StoreError::Closed);
                        }
                    }
                    Ok(())
                })?;
                let _ = tx.send(chunk);
                Ok(())
            })
            .map_err(|e| StoreError::Open {
                path: store.path().to_path_buf(),
                reason: format!("cannot start the thread that reads the store: {e}"),
            })?;
        let built = build(&mut rx.iter().flatten());
        // Should the builder ever stop early, the loader's next send fails instead of waiting.
        drop(rx);
        match loader.join() {
            Ok(read) => read.map(|()| built),
            Err(_) => Err(StoreError::Open {
                path: store.path().to_path_buf(),
                reason: "the thread reading the store's task records panicked".into(),
            }),
        }
    })
}

fn send_calls(calls: Vec<(Addr<WorkerProxy>, CallWorker)>) {
    for (proxy, call) in calls {
        proxy.do_send(call);
    }
}

fn batch_of(writes: &Writes) -> Result<Batch, StoreError> {
    let mut batch = Batch::new();
    for (key, task) in &writes.tasks {
        TASKS.put(&mut batch, key, task)?;
    }
    for name in &writes.forgotten {
        NODES.delete(&mut batch, name);
    }
    for (key, tomb) in &writes.collected {
        TASKS.delete(&mut batch, key);
        COLLECTED.put(&mut batch, &tomb.id, tomb)?;
    }
    for id in &writes.expired {
        COLLECTED.delete(&mut batch, id);
    }
    super::services::put_services(&mut batch, &writes.services, &writes.services_removed)?;
    for (name, record) in &writes.nodes {
        NODES.put(&mut batch, name, record)?;
    }
    Ok(batch)
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(crate::actors::MAILBOX_CAPACITY);
        self.scheduler
            .do_send(SetListener(ctx.address().recipient()));
        self.health =
            Some(HealthChecker::new(self.health_interval, ctx.address().recipient()).start());
        if let Some(upgrade) = self.upgrade.take() {
            let commit = self.store.commit(upgrade);
            actix::spawn(async move {
                if let Err(e) = commit.await {
                    warn!("manager: could not fold the old store's intents into its records: {e}");
                }
            });
        }
        // Every worker the store knows is watched from the start: one that never answers is
        // Down after the node timeout, and its tasks move.
        for (name, address) in self.core.bound_addresses() {
            if address.contains(':') && !address.starts_with("in-process") {
                info!("manager: watching worker {name} at {address} (known from the store)");
                let link = self.link(&address);
                self.connect(link, ctx);
            }
        }
        self.step(ctx);
    }
}

/// Records whose commit failed: written again with the next commit.
#[derive(Message)]
#[rtype(result = "()")]
struct Unwritten(Writes);

impl Handler<Unwritten> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Unwritten, _: &mut Context<Self>) {
        self.core.unwritten(msg.0);
    }
}

impl Handler<Submit> for Manager {
    type Result = ResponseFuture<Result<Submitted, ManagerError>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        // A new task is new data: refused, before the core hears of it, while the store keeps
        // its reserve for stops and status updates (db::Usage). A known id goes on: its
        // answer (the task, or a conflict) writes nothing.
        if self.core.task(msg.0.id).is_none()
            && let Err(full) = self.store.check_room()
        {
            return Box::pin(async move { Err(ManagerError::Store(full)) });
        }
        // A host path no known worker allows would wait forever: refused while the manager
        // knows its workers' prefixes (a new id only; a known one is answered as before).
        if self.core.task(msg.0.id).is_none()
            && let Err(why) = self.core.check_host_paths(&msg.0)
        {
            return Box::pin(async move { Err(ManagerError::Unplaceable(why)) });
        }
        let now = self.clock.now();
        let outcome = self.core.submit(now, msg.0);
        // A repeat is answered after a commit too: the first submission may still be
        // committing, and a commit later in the writer's order covers it.
        let durable = self.carry_out_with(ctx, true, false);
        let me = ctx.address();
        Box::pin(async move {
            let outcome = outcome?;
            let res = match durable {
                Some(commit) => commit.await,
                None => Ok(()),
            };
            match outcome {
                core::Submitted::Created(task) => {
                    me.do_send(Committed {
                        id: task.id,
                        ok: res.is_ok(),
                    });
                    res?;
                    Ok(Submitted {
                        task,
                        created: true,
                    })
                }
                core::Submitted::Existing(task) => {
                    res?;
                    Ok(Submitted {
                        task,
                        created: false,
                    })
                }
            }
        })
    }
}

/// A submission's commit finished: place the task, or forget it when the commit failed.
#[derive(Message)]
#[rtype(result = "()")]
struct Committed {
    id: Uuid,
    ok: bool,
}

impl Handler<Committed> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        self.core.submit_committed(&[msg.id], msg.ok);
        self.step(ctx);
    }
}

impl Handler<StopTask> for Manager {
    type Result = ResponseFuture<Result<Task, ManagerError>>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self.core.stop(now, msg.0);
        let durable = self.carry_out(ctx, true);
        Box::pin(async move {
            let task = outcome?;
            if let Some(commit) = durable {
                commit.await?;
            }
            Ok(task)
        })
    }
}

impl Handler<GetTask> for Manager {
    type Result = Result<Task, ManagerError>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        match (self.core.task(id), self.core.collected(id)) {
            (Some(task), _) => Ok(task.clone()),
            (None, Some(tomb)) => Err(ManagerError::Collected(Box::new(tomb.clone()))),
            (None, None) => Err(ManagerError::NotFound(id)),
        }
    }
}

/// Whether `task`'s name, id or image holds `text` (lower case), in any case: compared in
/// place, since a search that matches nothing looks at every task.
fn mentions(task: &Task, text: &str) -> bool {
    let holds = |field: &str| {
        field
            .as_bytes()
            .windows(text.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(text.as_bytes()))
    };
    let mut id = Uuid::encode_buffer();
    holds(&task.name) || holds(&task.image) || holds(task.id.hyphenated().encode_lower(&mut id))
}

impl Handler<ListTasks> for Manager {
    type Result = Result<Listing, ManagerError>;

    fn handle(&mut self, msg: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let ids: Box<dyn Iterator<Item = (u64, &Uuid)>> = if msg.newest {
            // A page continues below a submission number, or below a task's.
            let before = match (msg.before, msg.after) {
                (Some(before), _) => Some(before),
                (None, Some(after)) => Some(
                    self.core
                        .submission(after)
                        .ok_or(ManagerError::NotFound(after))?,
                ),
                (None, None) => None,
            };
            Box::new(self.core.ids_newest_before(before))
        } else {
            Box::new(self.core.ids_after(msg.after).map(|id| (0, id)))
        };
        let (submissions, tasks) = ids
            .filter_map(|(key, id)| self.core.task(*id).map(|t| (key, t)))
            .filter(|(_, t)| msg.state.is_none_or(|s| t.state == s))
            .filter(|(_, t)| {
                msg.service
                    .as_ref()
                    .is_none_or(|name| t.service.as_ref() == Some(name))
            })
            .filter(|(_, t)| {
                msg.worker
                    .as_ref()
                    .is_none_or(|w| t.worker.as_ref() == Some(w))
            })
            .filter(|(_, t)| msg.search.as_deref().is_none_or(|text| mentions(t, text)))
            .take(msg.limit.unwrap_or(usize::MAX))
            .map(|(key, t)| (key, t.clone()))
            .unzip();
        Ok(Listing { tasks, submissions })
    }
}

impl Handler<Snapshot> for Manager {
    type Result = ResponseFuture<Result<(std::fs::File, u64), ManagerError>>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let copy = tokio::task::spawn_blocking(move || {
                let path = store
                    .path()
                    .join(format!("snapshot-{}.tmp", Uuid::new_v4().simple()));
                let size = store.snapshot(&path)?;
                let opened = std::fs::File::open(&path);
                let _ = std::fs::remove_file(&path);
                let file = opened.map_err(|e| StoreError::Open {
                    path: path.clone(),
                    reason: format!("cannot read the snapshot back: {e}"),
                })?;
                Ok::<_, StoreError>((file, size))
            });
            match copy.await {
                Ok(res) => res.map_err(ManagerError::Store),
                Err(_) => Err(ManagerError::Gone),
            }
        })
    }
}

impl Handler<CountTasks> for Manager {
    type Result = MessageResult<CountTasks>;

    fn handle(&mut self, _: CountTasks, _: &mut Context<Self>) -> Self::Result {
        let counts = self.core.counts();
        MessageResult(
            crate::task::State::ALL
                .iter()
                .filter(|s| counts[s.index()] > 0)
                .map(|&s| (s, counts[s.index()]))
                .collect(),
        )
    }
}

impl Handler<ScrapeManager> for Manager {
    type Result = MessageResult<ScrapeManager>;

    fn handle(&mut self, _: ScrapeManager, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ManagerScrape {
            counts: self.core.counts(),
            tally: self.core.tally(),
        })
    }
}

impl Handler<GetVitals> for Manager {
    type Result = MessageResult<GetVitals>;

    fn handle(&mut self, _: GetVitals, _: &mut Context<Self>) -> Self::Result {
        let counts = self.core.counts();
        MessageResult(Vitals {
            states: crate::task::State::ALL
                .iter()
                .map(|&s| (s, counts[s.index()]))
                .collect(),
            collected: self.core.tombstone_count(),
            store: self.store.usage(),
        })
    }
}

impl Handler<LogsOf> for Manager {
    type Result = ResponseFuture<Result<WorkerTarget, ManagerError>>;

    fn handle(&mut self, msg: LogsOf, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let worker = match (self.core.task(id), self.core.collected(id)) {
            (Some(t), _) => t.worker.clone(),
            (None, Some(tomb)) => {
                let err = ManagerError::Collected(Box::new(tomb.clone()));
                return Box::pin(async move { Err(err) });
            }
            (None, None) => return Box::pin(async move { Err(ManagerError::NotFound(id)) }),
        };
        let Some(worker) = worker else {
            return Box::pin(async move { Err(ManagerError::NotPlaced(id)) });
        };
        let proxy = self
            .core
            .endpoints()
            .into_iter()
            .find(|e| e.name.as_deref() == Some(worker.as_str()) && e.status != NodeStatus::Refused)
            .and_then(|e| self.proxies.get(e.endpoint).cloned());
        let Some(proxy) = proxy else {
            return Box::pin(async move { Err(ManagerError::WorkerGone(worker)) });
        };
        let link = proxy.send(Link);
        Box::pin(async move { link.await.map_err(|_| ManagerError::WorkerGone(worker)) })
    }
}

impl Manager {
    /// The `GET /nodes` rows of these endpoints: the core's view, the proxies' last stats and
    /// the scheduler's bookings.
    fn node_reports(&self, views: Vec<core::EndpointView>) -> ResponseFuture<Vec<NodeReport>> {
        let infos = join_all(views.iter().map(|v| {
            let proxy = self.proxies.get(v.endpoint).cloned();
            async move {
                match proxy {
                    Some(p) => p.send(Info).await.ok(),
                    None => None,
                }
            }
        }));
        let book = self.scheduler.send(ListBook);
        Box::pin(async move {
            let book: HashMap<String, _> = book
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect();
            let infos = infos.await;
            let mut out: Vec<NodeReport> = views
                .into_iter()
                .zip(infos)
                .map(|(view, info)| {
                    let name = view.name.clone().unwrap_or_default();
                    let booked = book
                        .get(&name)
                        .filter(|_| view.status != NodeStatus::Refused);
                    let stats = info.as_ref().and_then(|i| i.stats.as_ref());
                    let cap = booked
                        .and_then(|b| b.capacity)
                        .or(stats.map(|s| s.capacity()));
                    let reason = view.reason.clone().or_else(|| {
                        (view.status != NodeStatus::Ready)
                            .then(|| info.as_ref().and_then(|i| i.error.clone()))
                            .flatten()
                    });
                    let facts = view.facts.unwrap_or_default();
                    NodeReport {
                        status: view.status,
                        address: view.address,
                        cpus: cap.map_or(0.0, |c| c.cpus),
                        cpu_allocated: booked.map_or(0.0, |b| b.allocated.cpu),
                        memory: cap.map_or(0, |c| c.memory),
                        memory_allocated: booked.map_or(0, |b| b.allocated.memory),
                        disk: cap.map_or(0, |c| c.disk),
                        disk_allocated: booked.map_or(0, |b| b.allocated.disk),
                        tasks: booked.map_or(0, |b| b.tasks),
                        last_seen: info.and_then(|i| i.last_seen),
                        reason,
                        name,
                        availability: facts.availability,
                        drain_deadline: facts.drain_deadline,
                        labels: facts.labels,
                        worker_labels: facts.worker_labels,
                        manager_labels: facts.manager_labels,
                        volumes: facts.volumes,
                        allowed_host_paths: facts.allowed_host_paths,
                    }
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
            out
        })
    }

    /// The row of the node called `name` (the endpoint bound to it, or the node alone).
    fn node_report(&self, name: &str) -> ResponseFuture<Result<NodeReport, ManagerError>> {
        let views: Vec<core::EndpointView> = self
            .core
            .endpoints()
            .into_iter()
            .filter(|v| v.name.as_deref() == Some(name) && v.status != NodeStatus::Refused)
            .take(1)
            .collect();
        let reports = self.node_reports(views);
        let name = name.to_string();
        Box::pin(async move {
            reports
                .await
                .into_iter()
                .next()
                .ok_or(ManagerError::Node(core::NodeRefusal::NotFound(name)))
        })
    }
}

impl Handler<ListNodes> for Manager {
    type Result = ResponseFuture<Vec<NodeReport>>;

    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        self.node_reports(self.core.endpoints())
    }
}

impl Handler<GetNode> for Manager {
    type Result = ResponseFuture<Result<NodeReport, ManagerError>>;

    fn handle(&mut self, msg: GetNode, _: &mut Context<Self>) -> Self::Result {
        self.node_report(&msg.0)
    }
}

impl Handler<ChangeNode> for Manager {
    type Result = ResponseFuture<Result<NodeReport, ManagerError>>;

    fn handle(&mut self, msg: ChangeNode, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self.core.change_node(now, &msg.name, msg.change);
        let durable = self.carry_out(ctx, true);
        let report = self.node_report(&msg.name);
        Box::pin(async move {
            outcome?;
            if let Some(commit) = durable {
                commit.await?;
            }
            report.await
        })
    }
}

impl Handler<WorkerFacts> for Manager {
    type Result = ();

    fn handle(&mut self, msg: WorkerFacts, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core.node_facts(now, msg.endpoint, msg.facts);
        self.step(ctx);
    }
}

impl Handler<JoinNode> for Manager {
    type Result = ResponseFuture<Result<Joined, ManagerError>>;

    fn handle(&mut self, msg: JoinNode, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self.core.join(now, &msg.name, &msg.address);
        if outcome.is_ok() {
            info!("worker {} joins at {}", msg.name, msg.address);
            let link = self.link(&msg.address);
            self.connect(link, ctx);
        }
        let durable = self.carry_out(ctx, true);
        let cluster_token = self.cluster_token.clone();
        Box::pin(async move {
            let created = outcome?;
            if let Some(commit) = durable {
                commit.await?;
            }
            Ok(Joined {
                created,
                cluster_token,
            })
        })
    }
}

impl Handler<ForgetNode> for Manager {
    type Result = ResponseFuture<Result<(), ManagerError>>;

    fn handle(&mut self, msg: ForgetNode, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self.core.forget(&msg.0);
        let durable = self.carry_out(ctx, true);
        Box::pin(async move {
            outcome?;
            if let Some(commit) = durable {
                commit.await?;
            }
            Ok(())
        })
    }
}

impl Handler<Connect> for Manager {
    type Result = MessageResult<Connect>;

    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.connect(msg.0, ctx))
    }
}

impl Handler<NodeUp> for Manager {
    type Result = ();

    fn handle(&mut self, msg: NodeUp, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core.node_up(now, msg.endpoint, &msg.name);
        self.step(ctx);
    }
}

impl Handler<NodeDown> for Manager {
    type Result = ();

    fn handle(&mut self, msg: NodeDown, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core.node_down(now, msg.endpoint);
        self.step(ctx);
    }
}

impl Handler<Report> for Manager {
    type Result = ();

    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core
            .report(now, msg.endpoint, msg.full, msg.restarted, msg.tasks);
        // With a barrier even a step that wrote nothing waits for the commits before it, so
        // `Recorded` means everything that followed from this report, and from the reports
        // before it, is durable: the worker may drop what finished there (ARCHITECTURE.md §5).
        // A report the core set aside came with a Resync to the proxy, sent before this.
        let commit = self.carry_out(ctx, true);
        let proxy = self.proxies.get(msg.endpoint).cloned();
        recorded_after(commit, proxy, msg.mark);
    }
}

/// Tell the proxy its report is recorded once the commit is durable.
fn recorded_after(commit: Option<Commit>, proxy: Option<Addr<WorkerProxy>>, mark: FeedMark) {
    let (Some(commit), Some(proxy)) = (commit, proxy) else {
        return;
    };
    actix::spawn(async move {
        if commit.await.is_ok() {
            proxy.do_send(Recorded(mark));
        }
    });
}

impl Handler<CallsDone> for Manager {
    type Result = ();

    fn handle(&mut self, msg: CallsDone, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        for done in msg.0 {
            self.core
                .call_done(now, &done.node, done.call, done.outcome);
        }
        self.step(ctx);
    }
}

impl Handler<HealthChecked> for Manager {
    type Result = ();

    fn handle(&mut self, msg: HealthChecked, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core
            .health_checked(now, msg.id, msg.attempt, msg.result);
        self.step(ctx);
    }
}

impl Handler<CapacityAvailable> for Manager {
    type Result = ();

    fn handle(&mut self, msg: CapacityAvailable, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.core.capacity_available(now, msg.0);
        self.step(ctx);
    }
}
