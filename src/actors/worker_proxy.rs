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
//!   the worker sent everything); on the Manager's [`Resync`] the next poll starts over at 0.
//!   Answers come in pages of at most [`FEED_PAGE`] tasks: the pages of a full report are
//!   gathered and forwarded as one full `Report`, so no answer's size grows with the worker;
//! - tells the worker how far the Manager has recorded its feed: the Manager hands each
//!   report's [`FeedMark`] back as [`Recorded`] once what followed from it is committed, and the
//!   next polls carry it as `acked` (ARCHITECTURE.md §5: the worker may then drop finished
//!   tasks). Only marks of the current *run* count: a run begins with a full report the Manager
//!   took, and ends at a `Resync` (which is how the Manager says it set a report aside);
//! - carries out the Manager's starts and stops, one try each with a timeout, and sends back
//!   the outcome ([`CallsDone`]): retries are the Manager's decision. Starts go in batches
//!   (`POST /starts`, one commit on the worker for the batch): those asked for while a batch is
//!   on its way wait for the next, at most [`BATCHES_IN_FLIGHT`] at a time, so a burst of
//!   thousands of placements is a few requests, not thousands of connections. Stops go the same
//!   way (`POST /stops`), at most [`STOP_BATCHES_IN_FLIGHT`] batches at a time (those waiting
//!   fail with the first batch that finds the worker unreachable);
//! - once registered, reports the worker's capacity to the Scheduler when it changes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use log::{debug, info, warn};
use uuid::Uuid;

use super::client::{
    BATCH_BYTES, BATCH_STARTS, BATCH_STOPS, CallError, StartCall, WorkerClient, WorkerTarget,
};
use super::manager::core::EndpointId;
use super::manager::core::{CallKind, Seen};
use super::manager::{CallDone, CallsDone, Manager, NodeDown, NodeUp, Report, WorkerFacts};
use super::scheduler::{NodeCapacity, Scheduler};
use super::worker::{Changes, DEFAULT_FEED_PAGE, WatchChanges};
use crate::clock::Clock;
use crate::node::{Capacity, Liveness, LivenessChange, NodeFacts, NodeStats, NodeStatus};
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
/// Most tasks asked for in one answer of the feed.
pub const FEED_PAGE: usize = DEFAULT_FEED_PAGE;

/// Where a report stands in its worker's feed: handed to the Manager with the [`Report`], and
/// back to the proxy as [`Recorded`] once what followed from it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedMark {
    /// The worker process whose feed it is.
    pub instance: Uuid,
    /// The report covers the feed up to this position.
    pub seq: u64,
    /// The proxy's run of reports it belongs to (a run begins with a full report).
    pub run: u64,
}

/// A full report being read in pages.
#[derive(Debug)]
struct Gathering {
    /// The worker's process is not the one of the previous report.
    restarted: bool,
    /// Each task's latest record among the pages so far.
    tasks: BTreeMap<Uuid, Task>,
}

/// A report for the Manager, as [`FeedReader::answered`] makes it.
#[derive(Debug)]
pub struct FeedReport {
    pub full: bool,
    pub restarted: bool,
    pub tasks: Vec<Task>,
    pub mark: FeedMark,
}

/// The proxy's reading of the worker's feed, pure: where the next read starts, the pages of a
/// full report gathered into one, and how far the Manager has recorded the feed (the `acked`
/// the reads carry).
#[derive(Debug)]
pub struct FeedReader {
    instance: Option<Uuid>,
    since: u64,
    /// The next read starts over at 0.
    resync: bool,
    /// A full report read so far, while its pages come.
    gathering: Option<Gathering>,
    /// How far the Manager has recorded the feed of this worker instance.
    acked: Option<(Uuid, u64)>,
    /// The current run of reports: full reports made so far.
    run: u64,
    /// No mark counts until the next full report: the Manager set a report aside (or there was
    /// none yet).
    run_broken: bool,
}

impl Default for FeedReader {
    fn default() -> FeedReader {
        FeedReader {
            instance: None,
            since: 0,
            resync: true,
            gathering: None,
            acked: None,
            run: 0,
            run_broken: true,
        }
    }
}

impl FeedReader {
    /// The next read of the feed.
    pub fn query(&mut self) -> WatchChanges {
        if std::mem::take(&mut self.resync) {
            self.since = 0;
            self.gathering = None;
        }
        let instance = self.instance;
        WatchChanges {
            since: self.since,
            instance,
            // The pages of a full report follow one another without waiting.
            wait: if self.gathering.is_some() {
                Duration::ZERO
            } else {
                WATCH_WAIT
            },
            acked: self
                .acked
                .filter(|(i, _)| Some(*i) == instance)
                .map(|(_, seq)| seq),
            limit: Some(FEED_PAGE),
        }
    }

    /// An answer of the feed: a report to forward, unless it is a page of a full report with
    /// more to come (or an incremental answer with nothing in it).
    pub fn answered(&mut self, changes: Changes) -> Option<FeedReport> {
        let restarted = self.instance.is_some_and(|i| i != changes.instance);
        self.instance = Some(changes.instance);
        self.since = changes.seq;
        if changes.full {
            // A new full report (one under way, of a restarted worker, starts over).
            self.gathering = Some(Gathering {
                restarted,
                tasks: BTreeMap::new(),
            });
        }
        let Some(gathering) = self.gathering.as_mut() else {
            if changes.tasks.is_empty() {
                return None;
            }
            return Some(self.report(false, restarted, changes.tasks, changes.seq));
        };
        // A task that changed between pages comes again: its latest record counts.
        for task in changes.tasks {
            gathering.tasks.insert(task.id, task);
        }
        if changes.more {
            return None;
        }
        let done = self.gathering.take()?;
        let tasks = done.tasks.into_values().collect();
        Some(self.report(true, done.restarted, tasks, changes.seq))
    }

    fn report(&mut self, full: bool, restarted: bool, tasks: Vec<Task>, seq: u64) -> FeedReport {
        if full {
            self.run += 1;
            self.run_broken = false;
        }
        FeedReport {
            full,
            restarted,
            tasks,
            mark: FeedMark {
                instance: self.instance.unwrap_or_default(),
                seq,
                run: self.run,
            },
        }
    }

    /// The Manager asks for a full report: the next read starts over, and what the Manager
    /// records of this run says nothing about the feed any more (it may have set a report of
    /// it aside).
    pub fn resync(&mut self) {
        self.resync = true;
        self.run_broken = true;
    }

    /// The Manager has committed everything that followed from the report with `mark`.
    pub fn recorded(&mut self, mark: FeedMark) {
        if self.run_broken || mark.run != self.run {
            return;
        }
        let ahead = match self.acked {
            Some((instance, seq)) => instance != mark.instance || seq < mark.seq,
            None => true,
        };
        if ahead {
            self.acked = Some((mark.instance, mark.seq));
        }
    }
}
/// Batches of starts on their way to one worker at once: the next fills while they are.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Batches of stops on their way to one worker at once; more wait their turn in the proxy, so
/// stopping thousands of tasks is a few requests and commits, not thousands, nor a queue in the
/// worker's mailbox that its heartbeat answer waits behind.
pub const STOP_BATCHES_IN_FLIGHT: usize = 2;

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
    /// The labels, volumes and host paths last sent to the Manager.
    facts_sent: Option<NodeFacts>,
    feed: FeedReader,
    watching: Option<SpawnHandle>,
    watch_backoff: Duration,
    down_check: Option<SpawnHandle>,
    last_seen: Option<DateTime<Utc>>,
    stats: Option<NodeStats>,
    error: Option<String>,
    /// When the worker's want of room in its store was last logged (once a minute at most).
    no_room_logged: Option<std::time::Instant>,
    /// Outcomes of calls not yet sent to the Manager: a burst goes as one message.
    done: Vec<CallDone>,
    /// Starts waiting for a batch, in the order asked, with the node name each was asked for.
    starts: VecDeque<(String, StartCall)>,
    /// Batches of starts sent and not answered yet.
    batches_in_flight: usize,
    /// A send of the waiting starts is scheduled for the end of this turn.
    send_scheduled: bool,
    /// Stops waiting for a batch, in the order asked, with the node name each was asked for.
    stops: VecDeque<(String, Uuid, u32)>,
    /// Batches of stops sent and not answered yet.
    stop_batches_in_flight: usize,
    /// A send of the waiting stops is scheduled for the end of this turn.
    stops_scheduled: bool,
    /// Round trips of answered long-polls (`cube_worker_poll_seconds`), by worker; this
    /// worker's, once its name is known.
    poll_seconds: Option<crate::metrics::PerWorker>,
    poll_histogram: Option<(String, crate::metrics::Histogram)>,
}

impl WorkerProxy {
    /// Observe every answered long-poll's round trip into its worker's histogram of `family`.
    pub fn with_poll_histogram(mut self, family: crate::metrics::PerWorker) -> WorkerProxy {
        self.poll_seconds = Some(family);
        self
    }

    /// Observe one long-poll's round trip, under the worker's name.
    fn observe_poll(&mut self, name: &str, took: Duration) {
        let Some(family) = &self.poll_seconds else {
            return;
        };
        if name.is_empty() {
            return;
        }
        let cached = self.poll_histogram.as_ref().is_some_and(|(n, _)| n == name);
        if !cached {
            self.poll_histogram = Some((name.to_owned(), crate::metrics::of_worker(family, name)));
        }
        if let Some((_, h)) = &self.poll_histogram {
            h.observe_duration(took);
        }
    }

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
            facts_sent: None,
            feed: FeedReader::default(),
            watching: None,
            watch_backoff: MIN_BACKOFF,
            down_check: None,
            last_seen: None,
            stats: None,
            error: None,
            no_room_logged: None,
            done: Vec::new(),
            starts: VecDeque::new(),
            batches_in_flight: 0,
            send_scheduled: false,
            stops: VecDeque::new(),
            stop_batches_in_flight: 0,
            stops_scheduled: false,
            poll_seconds: None,
            poll_histogram: None,
        }
    }

    /// Report a call's outcome with the others that finish in the same turn.
    fn call_done(
        &mut self,
        node: String,
        call: (Uuid, u32, CallKind),
        outcome: Result<Seen, CallError>,
        ctx: &mut Context<Self>,
    ) {
        let done = CallDone {
            node,
            call,
            outcome,
        };
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
                                // Any answer shows the worker is there, and names it (one
                                // request per start to an older worker: if any answered).
                                let answered = outcomes
                                    .iter()
                                    .any(|o| !matches!(o, Err(CallError::Transport(_))));
                                if answered {
                                    act.heard(&name, ctx);
                                }
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
                                    act.call_done(node, call, outcome, ctx);
                                }
                            }
                            Err(e) => {
                                if matches!(e, CallError::Transport(_)) {
                                    act.failed(&e);
                                }
                                for (node, id, attempt) in nodes {
                                    let call = (id, attempt, CallKind::Start);
                                    let outcome = Err(e.clone());
                                    act.call_done(node, call, outcome, ctx);
                                }
                            }
                        }
                        act.send_starts(ctx);
                    }),
            );
        }
    }

    /// Send the waiting stops once this turn's calls are in, as starts are sent.
    fn send_stops_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.stops_scheduled {
            self.stops_scheduled = true;
            ctx.run_later(Duration::ZERO, |act, ctx| {
                act.stops_scheduled = false;
                act.send_stops(ctx);
            });
        }
    }

    /// Send the waiting stops, [`BATCH_STOPS`] a batch, while fewer than
    /// [`STOP_BATCHES_IN_FLIGHT`] batches are on their way.
    fn send_stops(&mut self, ctx: &mut Context<Self>) {
        while self.stop_batches_in_flight < STOP_BATCHES_IN_FLIGHT && !self.stops.is_empty() {
            let take = self.stops.len().min(BATCH_STOPS);
            let calls: Vec<(String, Uuid, u32)> = self.stops.drain(..take).collect();
            let batch = calls
                .iter()
                .map(|(_, id, attempt)| (*id, *attempt))
                .collect();
            self.stop_batches_in_flight += 1;
            let client = self.client.clone();
            ctx.spawn(
                async move { client.stop_batch(batch).await }
                    .into_actor(self)
                    .map(move |answer, act, ctx| {
                        act.stop_batches_in_flight -= 1;
                        match answer {
                            Ok((name, outcomes)) => {
                                let answered = outcomes
                                    .iter()
                                    .any(|o| !matches!(o, Err(CallError::Transport(_))));
                                if answered && !name.is_empty() {
                                    act.heard(&name, ctx);
                                }
                                for ((node, id, attempt), outcome) in
                                    calls.into_iter().zip(outcomes)
                                {
                                    if let Err(e @ CallError::Transport(_)) = &outcome {
                                        act.failed(e);
                                    }
                                    let outcome = outcome.map(|s| Seen {
                                        attempt: s.attempt,
                                        state: s.state,
                                    });
                                    act.call_done(
                                        node,
                                        (id, attempt, CallKind::Stop),
                                        outcome,
                                        ctx,
                                    );
                                }
                            }
                            Err(e) => {
                                if matches!(e, CallError::Transport(_)) {
                                    act.failed(&e);
                                    // The worker does not answer: the stops waiting their turn
                                    // fail with it now rather than each wait for its own
                                    // timeout; the Manager retries them as it retries these.
                                    act.stops.extend(calls);
                                    let waiting: Vec<_> = act.stops.drain(..).collect();
                                    for (node, id, attempt) in waiting {
                                        let call = (id, attempt, CallKind::Stop);
                                        act.call_done(node, call, Err(e.clone()), ctx);
                                    }
                                } else {
                                    for (node, id, attempt) in calls {
                                        let call = (id, attempt, CallKind::Stop);
                                        act.call_done(node, call, Err(e.clone()), ctx);
                                    }
                                }
                            }
                        }
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
        if err.is_no_room() {
            // The worker answers; its store is full. The Manager retries its starts.
            if self
                .no_room_logged
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            {
                self.no_room_logged = Some(std::time::Instant::now());
                warn!(
                    "worker at {}: {err}; its starts are retried until it has room",
                    self.address()
                );
            }
            return;
        }
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

    /// The Scheduler hears of a registered worker's capacity when it changes, and the Manager
    /// of its labels, volumes and allowed host paths: with thousands of workers, a report per
    /// heartbeat would keep their thread busy for nothing.
    fn send_capacity(&mut self) {
        let (Some(stats), Some(name)) = (&self.stats, &self.name) else {
            return;
        };
        let facts = stats.facts();
        if self.registered && self.facts_sent.as_ref() != Some(&facts) {
            self.facts_sent = Some(facts.clone());
            self.manager.do_send(WorkerFacts {
                endpoint: self.endpoint,
                facts,
            });
        }
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
        let query = self.feed.query();
        let sent = std::time::Instant::now();
        let handle = ctx.spawn(
            async move { client.watch(query).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.watching = None;
                    match res {
                        Ok(changes) => {
                            let name = if changes.name.is_empty() {
                                act.name.clone().unwrap_or_default()
                            } else {
                                changes.name.clone()
                            };
                            act.observe_poll(&name, sent.elapsed());
                            act.heard(&name, ctx);
                            act.watch_backoff = MIN_BACKOFF;
                            if let Some(report) = act.feed.answered(changes) {
                                act.manager.do_send(Report {
                                    endpoint: act.endpoint,
                                    full: report.full,
                                    restarted: report.restarted,
                                    tasks: report.tasks,
                                    mark: report.mark,
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
                    self.facts_sent = None;
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
        self.feed.resync();
        // Cut a long-poll that is waiting, so the full report comes now, not in up to
        // WATCH_WAIT; a read that failed retries on its own schedule.
        if let Some(handle) = self.watching.take() {
            ctx.cancel_future(handle);
            self.watch(ctx);
        }
    }
}

/// The Manager has committed everything that followed from the report with this mark (and,
/// the store committing in order, from every report before it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recorded(pub FeedMark);

impl Handler<Recorded> for WorkerProxy {
    type Result = ();

    fn handle(&mut self, msg: Recorded, _: &mut Context<Self>) {
        self.feed.recorded(msg.0);
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
                self.send_stops_soon(ctx);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(instance: Uuid, seq: u64, full: bool, more: bool, tasks: &[&Task]) -> Changes {
        Changes {
            name: "w1".into(),
            instance,
            seq,
            full,
            more,
            tasks: tasks.iter().map(|t| (*t).clone()).collect(),
        }
    }

    #[test]
    fn the_pages_of_a_full_report_make_one_report_and_reads_go_on_from_each_page() {
        let mut feed = FeedReader::default();
        let w = Uuid::new_v4();
        let (a, b, c) = (Task::new("a"), Task::new("b"), Task::new("c"));
        let q = feed.query();
        assert_eq!((q.since, q.instance, q.acked), (0, None, None));
        assert_eq!(q.limit, Some(FEED_PAGE));
        assert!(feed.answered(answer(w, 3, true, true, &[&a, &b])).is_none());
        let q = feed.query();
        assert_eq!((q.since, q.instance, q.wait), (3, Some(w), Duration::ZERO));
        // `a` changed meanwhile: it comes again in a later page, and its latest record counts.
        let mut a2 = a.clone();
        a2.attempt = 2;
        assert!(feed.answered(answer(w, 5, false, true, &[&c])).is_none());
        let report = feed
            .answered(answer(w, 6, false, false, &[&a2]))
            .expect("the last page");
        assert!(report.full && !report.restarted);
        assert_eq!(report.tasks.len(), 3);
        assert_eq!(
            report
                .tasks
                .iter()
                .find(|t| t.id == a.id)
                .map(|t| t.attempt),
            Some(2)
        );
        assert_eq!(report.mark.seq, 6);
        let q = feed.query();
        assert_eq!((q.since, q.wait), (6, WATCH_WAIT));
        // Incremental answers go as they come; empty ones not at all.
        assert!(feed.answered(answer(w, 6, false, false, &[])).is_none());
        let report = feed
            .answered(answer(w, 7, false, true, &[&b]))
            .expect("a report");
        assert!(!report.full);
        assert_eq!(report.mark.seq, 7);
    }

    #[test]
    fn a_worker_restarted_or_a_resync_mid_report_starts_it_over() {
        let mut feed = FeedReader::default();
        let (w, w2) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (Task::new("a"), Task::new("b"));
        feed.query();
        let first = feed
            .answered(answer(w, 2, true, false, &[&a]))
            .expect("full");
        assert!(first.full && !first.restarted);
        feed.query();
        assert!(feed.answered(answer(w, 9, true, true, &[&a])).is_none());
        // The worker restarts between pages: its new process's first page begins it again.
        feed.query();
        assert!(feed.answered(answer(w2, 3, true, true, &[&b])).is_none());
        feed.query();
        let report = feed
            .answered(answer(w2, 4, false, false, &[]))
            .expect("full");
        assert!(report.full && report.restarted);
        assert_eq!(report.tasks.len(), 1, "nothing of the old process's pages");
        assert_eq!(report.mark.instance, w2);
        // A resync between pages starts the read over at 0.
        feed.query();
        assert!(feed.answered(answer(w2, 8, true, true, &[&a])).is_none());
        feed.resync();
        let q = feed.query();
        assert_eq!((q.since, q.wait), (0, WATCH_WAIT));
        let report = feed
            .answered(answer(w2, 8, true, false, &[&b]))
            .expect("full");
        assert_eq!(report.tasks.len(), 1);
    }

    #[test]
    fn acks_count_only_within_a_run_the_manager_did_not_break() {
        let mut feed = FeedReader::default();
        let w = Uuid::new_v4();
        let t = Task::new("a");
        feed.query();
        let full = feed
            .answered(answer(w, 4, true, false, &[&t]))
            .expect("full");
        feed.query();
        let next = feed
            .answered(answer(w, 6, false, false, &[&t]))
            .expect("a report");
        assert_eq!(next.mark.run, full.mark.run);
        // Marks come back out of order: the furthest counts.
        feed.recorded(next.mark);
        feed.recorded(full.mark);
        assert_eq!(feed.query().acked, Some(6));
        // The Manager set a report aside and asked for a full one: marks of this run, and any
        // recorded before the full report comes, say nothing more.
        let aside = feed
            .answered(answer(w, 8, false, false, &[&t]))
            .expect("a report");
        feed.resync();
        feed.recorded(aside.mark);
        let q = feed.query();
        assert_eq!(q.acked, Some(6), "what was acknowledged before stays true");
        let full = feed
            .answered(answer(w, 9, true, false, &[&t]))
            .expect("full");
        feed.recorded(aside.mark);
        assert_eq!(feed.query().acked, Some(6));
        feed.recorded(full.mark);
        assert_eq!(feed.query().acked, Some(9));
        // Acknowledgements are of one process's feed: not sent to the next one.
        let w2 = Uuid::new_v4();
        let restarted = feed
            .answered(answer(w2, 2, true, false, &[]))
            .expect("full");
        assert!(restarted.restarted);
        assert_eq!(feed.query().acked, None);
        feed.recorded(restarted.mark);
        assert_eq!(feed.query().acked, Some(2));
    }
}
