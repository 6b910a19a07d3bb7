//! The WorkerProxy actor: the manager's side of one worker. It owns the connection to it.
//!
//! - learns the worker's name from `/health` and registers it with the Manager (which refuses a
//!   second address answering with a name already taken);
//! - long-polls the worker's change feed and forwards every changed task to the Manager, so the
//!   Manager hears of a state change within milliseconds;
//! - heartbeats the worker's `/stats` and reports capacity to the Scheduler; a worker silent for
//!   the node timeout is reported Down, and Up again when it answers;
//! - carries out the Manager's starts and stops, retrying with backoff while the worker is
//!   unreachable. Every call has a timeout.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use log::{debug, info, warn};
use serde::Serialize;
use uuid::Uuid;

use super::client::{CallError, WorkerClient, WorkerLink};
use super::manager::{
    Manager, Observed, Register, StartRefused, StopUnknown, WorkerDown, WorkerUp,
};
use super::scheduler::{NodeCapacity, Scheduler};
use crate::node::NodeStats;
use crate::task::Task;

/// How often the worker's stats are fetched: the heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one long-poll of the change feed waits on the worker.
pub const WATCH_WAIT: Duration = Duration::from_secs(20);
/// First pause after a failed call; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a worker stands, as `/nodes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodeStatus {
    /// Not reached yet.
    Connecting,
    /// Answers and takes placements.
    Ready,
    /// Silent for longer than the node timeout.
    Down,
    /// Its name is taken by another address.
    Refused,
}

/// What a proxy knows of its worker, for `/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyInfo {
    pub name: Option<String>,
    pub address: String,
    pub status: NodeStatus,
    pub last_seen: Option<DateTime<Utc>>,
    pub stats: Option<NodeStats>,
    /// Why the worker is refused or unreachable.
    pub reason: Option<String>,
}

pub struct WorkerProxy {
    client: WorkerClient,
    manager: Addr<Manager>,
    scheduler: Addr<Scheduler>,
    node_timeout: Duration,
    name: Option<String>,
    status: NodeStatus,
    reason: Option<String>,
    instance: Option<Uuid>,
    since: u64,
    last_seen: Option<Instant>,
    last_seen_at: Option<DateTime<Utc>>,
    stats: Option<NodeStats>,
    watch_backoff: Duration,
    /// The pending check that declares the worker Down when its silence reaches the timeout.
    down_check: Option<SpawnHandle>,
    /// Set when the worker answers again after being Down: the next feed read starts at 0, so
    /// the Manager sees every task the worker still has (and stops copies that moved away).
    resync: bool,
}

impl WorkerProxy {
    pub fn new(
        link: WorkerLink,
        manager: Addr<Manager>,
        scheduler: Addr<Scheduler>,
        node_timeout: Duration,
    ) -> WorkerProxy {
        WorkerProxy {
            client: WorkerClient::new(link),
            manager,
            scheduler,
            node_timeout,
            name: None,
            status: NodeStatus::Connecting,
            reason: None,
            instance: None,
            since: 0,
            last_seen: None,
            last_seen_at: None,
            stats: None,
            watch_backoff: MIN_BACKOFF,
            resync: false,
            down_check: None,
        }
    }

    fn address(&self) -> String {
        self.client.link().address()
    }

    fn seen(&mut self, ctx: &mut Context<Self>) {
        self.last_seen = Some(Instant::now());
        self.last_seen_at = Some(Utc::now());
        if let Some(check) = self.down_check.take() {
            ctx.cancel_future(check);
        }
        if self.status == NodeStatus::Down {
            self.status = NodeStatus::Ready;
            self.reason = None;
            self.resync = true;
            if let Some(name) = &self.name {
                info!("worker {name} at {} answers again", self.address());
                self.manager.do_send(WorkerUp {
                    name: name.clone(),
                    proxy: ctx.address(),
                });
            }
        }
    }

    /// A call failed: Down once the worker has been silent for the node timeout. Until then a
    /// check is set for the moment the timeout runs out (unless the worker answers first), so
    /// loss is noticed on time rather than at the next heartbeat after it.
    fn failed(&mut self, err: &CallError, ctx: &mut Context<Self>) {
        let silent_for = self.last_seen.map_or(Duration::MAX, |t| t.elapsed());
        if self.status == NodeStatus::Ready && silent_for < self.node_timeout {
            if self.down_check.is_none() {
                let reason = err.clone();
                let wait = self.node_timeout - silent_for;
                self.down_check = Some(ctx.run_later(wait, move |act, ctx| {
                    act.down_check = None;
                    act.failed(&reason, ctx);
                }));
            }
            return;
        }
        if self.status == NodeStatus::Ready {
            self.status = NodeStatus::Down;
            self.reason = Some(err.to_string());
            if let Some(name) = &self.name {
                warn!(
                    "worker {name} at {} is Down: silent for {:.1} s ({err})",
                    self.address(),
                    silent_for.as_secs_f64()
                );
                self.manager.do_send(WorkerDown { name: name.clone() });
            }
        }
    }

    /// Reach the worker's /health until it answers, then register with the Manager.
    fn connect(&mut self, ctx: &mut Context<Self>, backoff: Duration) {
        let client = self.client.clone();
        ctx.spawn(async move { client.health().await }.into_actor(self).map(
            move |res, act, ctx| match res {
                Ok(health) => {
                    let manager = act.manager.clone();
                    let register = Register {
                        name: health.name.clone(),
                        address: act.address(),
                        proxy: ctx.address(),
                    };
                    ctx.spawn(
                        async move { manager.send(register).await }
                            .into_actor(act)
                            .map(move |res, act, ctx| match res {
                                Ok(Ok(())) => {
                                    info!("worker {} at {} registered", health.name, act.address());
                                    act.name = Some(health.name);
                                    act.status = NodeStatus::Ready;
                                    act.reason = None;
                                    act.seen(ctx);
                                    act.heartbeat(ctx);
                                    ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
                                        act.heartbeat(ctx)
                                    });
                                    act.watch(ctx);
                                }
                                Ok(Err(reason)) => {
                                    warn!("worker at {} refused: {reason}", act.address());
                                    act.name = Some(health.name);
                                    act.status = NodeStatus::Refused;
                                    act.reason = Some(reason);
                                }
                                Err(_) => ctx.stop(),
                            }),
                    );
                }
                Err(e) => {
                    if act.reason.is_none() {
                        warn!("worker at {} not reachable yet: {e}", act.address());
                    }
                    act.reason = Some(e.to_string());
                    let next = (backoff * 2).min(MAX_BACKOFF);
                    ctx.run_later(backoff, move |act, ctx| act.connect(ctx, next));
                }
            },
        ));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        ctx.spawn(async move { client.stats().await }.into_actor(self).map(
            |res, act, ctx| match res {
                Ok(stats) => {
                    act.seen(ctx);
                    // The Scheduler hears only of changes: with thousands of workers, a report
                    // per heartbeat would keep its thread busy for nothing.
                    let capacity = stats.capacity();
                    let changed = act.stats.as_ref().is_none_or(|s| s.capacity() != capacity);
                    if let Some(name) = act.name.as_ref().filter(|_| changed) {
                        act.scheduler.do_send(NodeCapacity {
                            name: name.clone(),
                            capacity,
                        });
                    }
                    act.stats = Some(stats);
                }
                Err(e) => {
                    debug!("heartbeat of {} failed: {e}", act.address());
                    act.failed(&e, ctx);
                }
            },
        ));
    }

    /// One long-poll of the change feed; it calls itself again when answered.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let (since, instance) = (self.since, self.instance);
        ctx.spawn(
            async move { client.watch(since, instance, WATCH_WAIT).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(changes) => {
                        act.seen(ctx);
                        act.watch_backoff = MIN_BACKOFF;
                        let restarted = act.instance.is_some_and(|i| i != changes.instance);
                        act.instance = Some(changes.instance);
                        act.since = if std::mem::take(&mut act.resync) {
                            0
                        } else {
                            changes.seq
                        };
                        if let Some(name) = &act.name
                            && (!changes.tasks.is_empty() || restarted)
                        {
                            act.manager.do_send(Observed {
                                worker: name.clone(),
                                tasks: changes.tasks,
                            });
                        }
                        act.watch(ctx);
                    }
                    Err(e) => {
                        act.failed(&e, ctx);
                        let backoff = act.watch_backoff;
                        act.watch_backoff = (backoff * 2).min(MAX_BACKOFF);
                        ctx.run_later(backoff, |act, ctx| act.watch(ctx));
                    }
                }),
        );
    }

    fn start_with_retry(&mut self, task: Task, backoff: Duration, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let t = task.clone();
        ctx.spawn(async move { client.start(&t).await }.into_actor(self).map(
            move |res, act, ctx| match res {
                Ok(_) => act.seen(ctx),
                // The worker runs a newer attempt already: nothing to do.
                Err(e) if e.status() == Some(409) => {}
                Err(e) if e.is_transient() => {
                    act.failed(&e, ctx);
                    if act.status == NodeStatus::Down {
                        // The Manager moves the worker's tasks elsewhere.
                        return;
                    }
                    let next = (backoff * 2).min(MAX_BACKOFF);
                    ctx.run_later(backoff, move |act, ctx| {
                        act.start_with_retry(task, next, ctx)
                    });
                }
                Err(e) => act.manager.do_send(StartRefused {
                    id: task.id,
                    attempt: task.attempt,
                    error: e.to_string(),
                }),
            },
        ));
    }

    fn stop_with_retry(
        &mut self,
        id: Uuid,
        attempt: Option<u32>,
        backoff: Duration,
        ctx: &mut Context<Self>,
    ) {
        let client = self.client.clone();
        ctx.spawn(
            async move { client.stop(id, attempt).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(_) => act.seen(ctx),
                    Err(e) if e.status() == Some(409) => {}
                    Err(e) if e.status() == Some(404) => {
                        if let Some(name) = &act.name {
                            act.manager.do_send(StopUnknown {
                                id,
                                worker: name.clone(),
                            });
                        }
                    }
                    Err(e) => {
                        act.failed(&e, ctx);
                        // Stops are retried even while the worker is Down: whatever it still runs
                        // must end when it comes back.
                        let next = (backoff * 2).min(MAX_BACKOFF);
                        ctx.run_later(backoff, move |act, ctx| {
                            act.stop_with_retry(id, attempt, next, ctx)
                        });
                    }
                }),
        );
    }
}

impl Actor for WorkerProxy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        self.connect(ctx, MIN_BACKOFF);
    }
}

/// Start this attempt of a task on the worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start(pub Task);

impl Handler<Start> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, msg: Start, ctx: &mut Context<Self>) {
        self.start_with_retry(msg.0, MIN_BACKOFF, ctx);
    }
}

/// Stop a task on the worker (only `attempt`, when given).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub id: Uuid,
    pub attempt: Option<u32>,
}

impl Handler<Stop> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Context<Self>) {
        self.stop_with_retry(msg.id, msg.attempt, MIN_BACKOFF, ctx);
    }
}

/// What the proxy knows of its worker.
#[derive(Message)]
#[rtype(result = "ProxyInfo")]
pub struct Info;

impl Handler<Info> for WorkerProxy {
    type Result = MessageResult<Info>;

    fn handle(&mut self, _: Info, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ProxyInfo {
            name: self.name.clone(),
            address: self.address(),
            status: self.status,
            last_seen: self.last_seen_at,
            stats: self.stats.clone(),
            reason: self.reason.clone(),
        })
    }
}

/// The link to the worker, for calls made outside the proxy (logs).
#[derive(Message)]
#[rtype(result = "WorkerLink")]
pub struct Link;

impl Handler<Link> for WorkerProxy {
    type Result = MessageResult<Link>;

    fn handle(&mut self, _: Link, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.client.link().clone())
    }
}
