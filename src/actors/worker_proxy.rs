//! The WorkerProxy actor: the manager's side of one worker endpoint, a shell around the
//! transport. It decides nothing about tasks; it moves requests and answers, and applies the
//! pure [`Liveness`] rule to what it hears.
//!
//! - heartbeats the worker's `/stats` every [`HEARTBEAT_INTERVAL`]; each answer (and each feed
//!   answer) is "heard": the first one, and the first after the worker was Down, is a
//!   [`NodeUp`] to the Manager, which registers the name the worker gives (or refuses it);
//! - a worker silent for the node timeout, counted from the proxy's start when it never
//!   answered, is a [`NodeDown`]: the Manager moves its tasks;
//! - long-polls the worker's change feed and forwards every answer as a [`Report`] (full when
//!   the worker sent everything); on the Manager's [`Resync`] the next poll starts over at 0;
//! - carries out the Manager's starts and stops, one try each with a timeout, and sends back
//!   the outcome ([`CallsDone`]): retries are the Manager's decision. Starts go in batches
//!   (`POST /starts`, one commit on the worker for the batch): those asked for while a batch is
//!   on its way wait for the next, at most [`BATCHES_IN_FLIGHT`] at a time, so a burst of
//!   thousands of placements is a few requests, not thousands of connections. Stops go one
//!   request each, at most [`STOPS_IN_FLIGHT`] at a time (those waiting fail with the first
//!   that finds the worker unreachable);
//! - once registered, reports the worker's capacity to the Scheduler when it changes.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use log::{debug, info, warn};
use uuid::Uuid;

use super::client::{BATCH_BYTES, BATCH_STARTS, CallError, StartCall, WorkerClient, WorkerTarget};
use super::manager::core::EndpointId;
use super::manager::core::{CallKind, Seen};
use super::manager::{CallDone, CallsDone, Manager, NodeDown, NodeUp, Report};
use super::scheduler::{NodeCapacity, Scheduler};
use crate::clock::Clock;
use crate::node::{Capacity, Liveness, LivenessChange, NodeStats, NodeStatus};
use crate::task::Task;

/// How often the worker's stats are fetched: the heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one long-poll of the change feed waits on the worker.
pub const WATCH_WAIT: Duration = Duration::from_secs(20);
/// Shortest wait before the silence is checked again: never a busy loop, whatever the rule.
const MIN_DOWN_CHECK: Duration = Duration::from_millis(100);
/// First pause after a failed feed read; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Batches of starts on their way to one worker at once: the next fills while they are.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Stops on their way to one worker at once; more wait their turn in the proxy, so stopping
/// thousands of tasks is not thousands of connections, nor a queue in the worker's mailbox that
/// its heartbeat answer waits behind.
pub const STOPS_IN_FLIGHT: usize = 16;

/// What a proxy knows of its worker, for `/nodes`.
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    pub name: Option<String>,
    pub status: NodeStatus,
    pub last_seen: Option<DateTime<Utc>>,
    pub stats: Option<NodeStats>,
    /// The last failure to reach it, while it does not answer.
    pub error: Option<String>,
}

pub struct WorkerProxy {
    endpoint: EndpointId,
    client: WorkerClient,
    manager: Addr<Manager>,
    scheduler: Addr<Scheduler>,
    clock: Clock,
    liveness: Liveness,
    /// The name the worker last gave.
    name: Option<String>,
    /// The Manager accepted the name: capacity may go to the Scheduler.
    registered: bool,
    capacity_sent: Option<Capacity>,
    instance: Option<Uuid>,
    since: u64,
    /// The next feed read starts over at 0.
    resync: bool,
    watching: Option<SpawnHandle>,
    watch_backoff: Duration,
    down_check: Option<SpawnHandle>,
    last_seen: Option<DateTime<Utc>>,
    stats: Option<NodeStats>,
    error: Option<String>,
    /// Outcomes of calls not yet sent to the Manager: a burst goes as one message.
    done: Vec<CallDone>,
    /// Starts waiting for a batch, in the order asked, with the node name each was asked for.
    starts: VecDeque<(String, StartCall)>,
    /// Batches of starts sent and not answered yet.
    batches_in_flight: usize,
    /// A send of the waiting starts is scheduled for the end of this turn.
    send_scheduled: bool,
    /// Stops waiting for their turn, in the order asked, with the node name each was asked for.
    stops: VecDeque<(String, Uuid, u32)>,
    /// Stops sent and not answered yet.
    stops_in_flight: usize,
}

impl WorkerProxy {
    pub fn new(
        endpoint: EndpointId,
        client: WorkerClient,
        manager: Addr<Manager>,
        scheduler: Addr<Scheduler>,
        node_timeout: Duration,
    ) -> WorkerProxy {
        let clock = Clock::new();
        WorkerProxy {
            endpoint,
            client,
            manager,
            scheduler,
            liveness: Liveness::new(clock.now().mono, node_timeout),
            clock,
            name: None,
            registered: false,
            capacity_sent: None,
            instance: None,
            since: 0,
            resync: true,
            watching: None,
            watch_backoff: MIN_BACKOFF,
            down_check: None,
            last_seen: None,
            stats: None,
            error: None,
            done: Vec::new(),
            starts: VecDeque::new(),
            batches_in_flight: 0,
            send_scheduled: false,
            stops: VecDeque::new(),
            stops_in_flight: 0,
        }
    }

    /// Report a call's outcome with the others that finish in the same turn.
    fn call_done(&mut self, done: CallDone, ctx: &mut Context<Self>) {
        if self.done.is_empty() {
            ctx.run_later(Duration::ZERO, |act, _| {
                let done = std::mem::take(&mut act.done);
                act.manager.do_send(CallsDone(done));
            });
        }
        self.done.push(done);
    }

    /// Send the waiting starts once this turn's calls are in: one batch per [`BATCH_STARTS`]
    /// or [`BATCH_BYTES`], while fewer than [`BATCHES_IN_FLIGHT`] are on their way.
    fn send_starts_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.send_scheduled {
            self.send_scheduled = true;
            ctx.run_later(Duration::ZERO, |act, ctx| {
                act.send_scheduled = false;
                act.send_starts(ctx);
            });
        }
    }

    fn send_starts(&mut self, ctx: &mut Context<Self>) {
        while self.batches_in_flight < BATCHES_IN_FLIGHT && !self.starts.is_empty() {
            let mut batch = Vec::new();
            let mut nodes = Vec::new();
            let mut bytes = 0;
            while let Some((_, call)) = self.starts.front() {
                if !batch.is_empty()
                    && (batch.len() == BATCH_STARTS || bytes + call.size() > BATCH_BYTES)
                {
                    break;
                }
                bytes += call.size();
                let (node, call) = self.starts.pop_front().expect("a start");
                nodes.push((node, call.id, call.attempt));
                batch.push(call);
            }
            self.batches_in_flight += 1;
            let client = self.client.clone();
            ctx.spawn(
                async move { client.start_batch(batch).await }
                    .into_actor(self)
                    .map(move |answer, act, ctx| {
                        act.batches_in_flight -= 1;
                        match answer {
                            Ok((name, outcomes)) => {
                                // Any answer shows the worker is there, and names it.
                                act.heard(&name, ctx);
                                for ((node, id, attempt), outcome) in
                                    nodes.into_iter().zip(outcomes)
                                {
                                    if let Err(e @ CallError::Transport(_)) = &outcome {
                                        act.failed(e);
                                    }
                                    let outcome = outcome.map(|s| Seen {
                                        attempt: s.attempt,
                                        state: s.state,
                                    });
                                    let call = (id, attempt, CallKind::Start);
                                    act.call_done(
                                        CallDone {
                                            node,
                                            call,
                                            outcome,
                                        },
                                        ctx,
                                    );
                                }
                            }
                            Err(e) => {
                                if matches!(e, CallError::Transport(_)) {
                                    act.failed(&e);
                                }
                                for (node, id, attempt) in nodes {
                                    let call = (id, attempt, CallKind::Start);
                                    let outcome = Err(e.clone());
                                    act.call_done(
                                        CallDone {
                                            node,
                                            call,
                                            outcome,
                                        },
                                        ctx,
                                    );
                                }
                            }
                        }
                        act.send_starts(ctx);
                    }),
            );
        }
    }

    /// Send waiting stops while fewer than [`STOPS_IN_FLIGHT`] are on their way.
    fn send_stops(&mut self, ctx: &mut Context<Self>) {
        while self.stops_in_flight < STOPS_IN_FLIGHT {
            let Some((node, id, attempt)) = self.stops.pop_front() else {
                return;
            };
            self.stops_in_flight += 1;
            let client = self.client.clone();
            let call = (id, attempt, CallKind::Stop);
            ctx.spawn(
                async move { client.stop(id, Some(attempt)).await }
                    .into_actor(self)
                    .map(move |outcome, act, ctx| {
                        act.stops_in_flight -= 1;
                        if let Err(e @ CallError::Transport(_)) = &outcome {
                            act.failed(e);
                            // The worker does not answer: the stops waiting their turn fail
                            // with it now rather than each wait for its own timeout; the
                            // Manager retries them as it retries this one.
                            for (node, id, attempt) in std::mem::take(&mut act.stops) {
                                let call = (id, attempt, CallKind::Stop);
                                let outcome = Err(e.clone());
                                act.call_done(
                                    CallDone {
                                        node,
                                        call,
                                        outcome,
                                    },
                                    ctx,
                                );
                            }
                        }
                        let outcome = outcome.map(|t| Seen::from(&t));
                        act.call_done(
                            CallDone {
                                node,
                                call,
                                outcome,
                            },
                            ctx,
                        );
                        act.send_stops(ctx);
                    }),
            );
        }
    }

    fn address(&self) -> String {
        self.client.link().address()
    }

    /// The worker answered, as `name`.
    fn heard(&mut self, name: &str, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.last_seen = Some(now.wall);
        self.error = None;
        let renamed = !name.is_empty() && self.name.as_deref() != Some(name);
        if renamed {
            self.name = Some(name.to_string());
            self.registered = false;
        }
        let up = self.liveness.heard(now.mono) == Some(LivenessChange::Up);
        if (up || renamed)
            && let Some(name) = &self.name
        {
            if up {
                info!("worker {name} at {} answers", self.address());
            }
            self.manager.do_send(NodeUp {
                endpoint: self.endpoint,
                name: name.clone(),
            });
        }
        self.arm_down_check(ctx);
    }

    /// Check the silence when it could reach the node timeout.
    fn arm_down_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(check) = self.down_check.take() {
            ctx.cancel_future(check);
        }
        let Some(deadline) = self.liveness.deadline() else {
            return;
        };
        let wait = self.clock.until(deadline).max(MIN_DOWN_CHECK);
        self.down_check = Some(ctx.run_later(wait, |act, ctx| {
            act.down_check = None;
            let now = act.clock.now();
            match act.liveness.check(now.mono) {
                Some(LivenessChange::Down { silent_for }) => {
                    warn!(
                        "worker {} at {} is Down: silent for {:.1} s{}",
                        act.name.as_deref().unwrap_or("(never answered)"),
                        act.address(),
                        silent_for.as_secs_f64(),
                        act.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                    act.manager.do_send(NodeDown {
                        endpoint: act.endpoint,
                    });
                }
                _ => act.arm_down_check(ctx),
            }
        }));
    }

    fn failed(&mut self, err: &CallError) {
        let refused_us = matches!(
            err,
            CallError::Rejected {
                status: 401 | 403,
                ..
            }
        );
        if refused_us && self.error.as_deref() != Some(err.to_string().as_str()) {
            warn!(
                "worker at {} refuses this manager: {err}; give the manager the worker's --cluster-token",
                self.address()
            );
        } else if self.error.is_none() {
            debug!("worker at {} does not answer: {err}", self.address());
        }
        self.error = Some(err.to_string());
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        ctx.spawn(async move { client.stats().await }.into_actor(self).map(
            |res, act, ctx| match res {
                Ok(stats) => {
                    act.heard(&stats.name.clone(), ctx);
                    act.stats = Some(stats);
                    act.send_capacity();
                }
                Err(e) => act.failed(&e),
            },
        ));
    }

    /// The Scheduler hears of a registered worker's capacity when it changes: with thousands
    /// of workers, a report per heartbeat would keep its thread busy for nothing.
    fn send_capacity(&mut self) {
        let (Some(stats), Some(name)) = (&self.stats, &self.name) else {
            return;
        };
        let capacity = stats.capacity();
        if self.registered && self.capacity_sent != Some(capacity) {
            self.capacity_sent = Some(capacity);
            self.scheduler.do_send(NodeCapacity {
                name: name.clone(),
                capacity,
            });
        }
    }

    /// One long-poll of the change feed; it calls itself again when answered.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        if std::mem::take(&mut self.resync) {
            self.since = 0;
        }
        let (since, instance) = (self.since, self.instance);
        let handle = ctx.spawn(
            async move { client.watch(since, instance, WATCH_WAIT).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.watching = None;
                    match res {
                        Ok(changes) => {
                            let name = if changes.name.is_empty() {
                                act.name.clone().unwrap_or_default()
                            } else {
                                changes.name.clone()
                            };
                            act.heard(&name, ctx);
                            act.watch_backoff = MIN_BACKOFF;
                            let restarted = act.instance.is_some_and(|i| i != changes.instance);
                            act.instance = Some(changes.instance);
                            act.since = changes.seq;
                            if changes.full || !changes.tasks.is_empty() {
                                act.manager.do_send(Report {
                                    endpoint: act.endpoint,
                                    full: changes.full,
                                    restarted,
                                    tasks: changes.tasks,
                                });
                            }
                            act.watch(ctx);
                        }
                        Err(e) => {
                            act.failed(&e);
                            let backoff = act.watch_backoff;
                            act.watch_backoff = (backoff * 2).min(MAX_BACKOFF);
                            ctx.run_later(backoff, |act, ctx| {
                                if act.watching.is_none() {
                                    act.watch(ctx)
                                }
                            });
                        }
                    }
                }),
        );
        self.watching = Some(handle);
    }
}

impl Actor for WorkerProxy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        self.arm_down_check(ctx);
        self.heartbeat(ctx);
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| act.heartbeat(ctx));
        self.watch(ctx);
    }
}

/// Stop watching the worker: its node was forgotten.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect;

impl Handler<Disconnect> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, _: Disconnect, ctx: &mut Context<Self>) {
        info!("no longer watching the worker at {}", self.address());
        ctx.stop();
    }
}

/// The Manager's word on the name the worker gave: registered (`Ok`) or refused (the reason).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Registration(pub Result<String, String>);

impl Handler<Registration> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, msg: Registration, _: &mut Context<Self>) {
        match msg.0 {
            Ok(name) => {
                if self.name.as_deref() == Some(name.as_str()) && !self.registered {
                    info!("worker {name} at {} registered", self.address());
                    self.registered = true;
                    self.capacity_sent = None;
                    self.send_capacity();
                }
            }
            Err(reason) => {
                self.registered = false;
                self.error = Some(reason);
            }
        }
    }
}

/// The next feed read must be a full report: start it now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.resync = true;
        // Cut a long-poll that is waiting, so the full report comes now, not in up to
        // WATCH_WAIT; a read that failed retries on its own schedule.
        if let Some(handle) = self.watching.take() {
            ctx.cancel_future(handle);
            self.watch(ctx);
        }
    }
}

/// What the Manager asks of a worker.
#[derive(Debug)]
pub enum WorkerCall {
    /// Start this attempt of the task.
    Start(Box<Task>),
    /// Stop this attempt of the task, and fence every older one.
    Stop { id: Uuid, attempt: u32 },
}

/// Make a call on the worker (the node named `node`); the outcome goes back to the Manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CallWorker {
    pub node: String,
    pub call: WorkerCall,
}

impl Handler<CallWorker> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, msg: CallWorker, ctx: &mut Context<Self>) {
        let node = msg.node;
        match msg.call {
            WorkerCall::Start(task) => {
                let start = self.client.prepare_start(task);
                self.starts.push_back((node, start));
                self.send_starts_soon(ctx);
            }
            WorkerCall::Stop { id, attempt } => {
                self.stops.push_back((node, id, attempt));
                self.send_stops(ctx);
            }
        }
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
            status: self.liveness.status(),
            last_seen: self.last_seen,
            stats: self.stats.clone(),
            error: self.error.clone(),
        })
    }
}

/// Where the worker is and how to be let in, for calls made outside the proxy (logs).
#[derive(Message)]
#[rtype(result = "WorkerTarget")]
pub struct Link;

impl Handler<Link> for WorkerProxy {
    type Result = MessageResult<Link>;

    fn handle(&mut self, _: Link, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.client.target().clone())
    }
}
