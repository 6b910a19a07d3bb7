//! A seeded, deterministic fault simulation of Cube's whole lifecycle, in the spirit of
//! FoundationDB's simulator and TigerBeetle's VOPR.
//!
//! The real decision cores run unchanged — the manager's [`Core`](ManagerCore), the scheduler's
//! [`Book`], one worker [`Core`](WorkerCore) and change [`Feed`] per node, and the proxies'
//! [`Liveness`] rule — inside a simulated world: a network that delays, drops, duplicates and
//! partitions messages; disks whose writes become durable only when their group commit
//! completes; a Docker per node whose starts and stops fail; processes that crash at any step
//! (the manager restarts from its durable records, a worker from its own, its containers
//! surviving or dying with it) or are lost for good; and users who submit, resubmit and stop
//! tasks at any time. Everything happens on one simulated clock, in an order fixed by one seed,
//! so any run can be replayed exactly.
//!
//! The shells this world stands in for (the Manager, Worker and WorkerProxy actors, the
//! HealthChecker) are modelled here in a few lines each, doing what those actors do: carry
//! effects out after the writes they depend on are durable, long-poll the change feed, start
//! over at 0 on a resync, heartbeat, time calls out.
//!
//! After every step the invariants that must always hold are checked (nothing acknowledged is
//! lost, a stop acknowledged stays asked for, Completed is final, attempts only grow,
//! `restart_count` never exceeds the ends the world caused, the scheduler's book matches the
//! tasks' reservations). Then every fault is healed, the world runs quiet for long enough for
//! every retry, backoff and resync to play out, and the promises are checked: exactly one
//! running container of each task that should run and none of anything else, every stopped
//! task Completed, no task stuck.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::actors::client::CallError;
use crate::actors::manager::core::{
    CallKind, Config as ManagerConfig, Core as ManagerCore, Effect as MEffect, EndpointId, Seen,
    Submitted,
};
use crate::actors::policy::{PolicyKind, Resources};
use crate::actors::scheduler::{Book, NoFit, PlaceRequest};
use crate::actors::worker::WorkerError;
use crate::actors::worker::core::{Core as WorkerCore, Effect as WEffect};
use crate::actors::worker::feed::{Changes, Feed};
use crate::clock::Now;
use crate::node::{Capacity, Liveness, LivenessChange};
use crate::runtime::{ContainerSpec, ContainerStatus, RuntimeError};
use crate::task::{Goal, RestartPolicy, State, Task};

/// Time between heartbeats of a proxy (as `WorkerProxy`).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence that makes a node Down (as `--node-timeout`'s default).
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a long-poll waits on the worker.
const WATCH_WAIT: Duration = Duration::from_secs(20);
/// A call to a worker times out after this, beyond any wait it asks for.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker compares its table with Docker this often.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Health checks of a task this often.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Capacity of every simulated node: ample, so nothing waits for room.
const CAPACITY: Capacity = Capacity {
    cpus: 16.0,
    memory: 64 << 30,
    disk: 0,
};
/// A run that takes more events than this is stuck in a loop, which is a bug too.
const MAX_EVENTS: u64 = 1_000_000;
/// The simulated wall clock starts here (any fixed instant does).
const EPOCH_SECS: i64 = 1_800_000_000;

/// How a run is shaped; the seed picks everything else.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long faults and user actions go on.
    pub fault_time: Duration,
    /// How long the healed world runs quiet before the final checks.
    pub settle_time: Duration,
    /// Stop taking fault and user actions after this many (shrinking a failure).
    pub max_actions: Option<usize>,
    /// Record a line for every event.
    pub trace: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fault_time: Duration::from_secs(40),
            settle_time: Duration::from_secs(150),
            max_actions: None,
            trace: false,
        }
    }
}

/// A broken promise, and when it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    /// Fault and user actions taken.
    pub actions: usize,
    /// Events processed.
    pub events: u64,
    pub violation: Option<Violation>,
    /// One line per event, when asked for.
    pub trace: Vec<String>,
    /// What the run did, counted (crashes, drops, …), for a soak's summary.
    pub counts: BTreeMap<&'static str, u64>,
}

/// Run one seed.
pub fn run(seed: u64, options: &Options) -> Outcome {
    let mut world = World::new(seed, options.clone());
    world.run();
    Outcome {
        seed,
        actions: world.actions,
        events: world.events,
        violation: world.violation,
        trace: world.trace,
        counts: world.counts,
    }
}

/// A failing seed cut down to the fewest actions that still fail, traced.
pub fn shrink(seed: u64, options: &Options) -> Outcome {
    let first = run(seed, options);
    let Some(_) = first.violation else {
        return first;
    };
    let mut best = first.actions;
    let (mut lo, mut hi) = (0usize, best);
    // The actions are a prefix of the same random stream, so fewer of them is the same run cut
    // short; search for the shortest prefix that still breaks a promise.
    while lo < hi {
        let mid = (lo + hi) / 2;
        let probe = run(
            seed,
            &Options {
                max_actions: Some(mid),
                ..options.clone()
            },
        );
        if probe.violation.is_some() {
            best = mid;
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    run(
        seed,
        &Options {
            max_actions: Some(best),
            trace: true,
            ..options.clone()
        },
    )
}

/// The one-line command that replays a run.
pub fn replay_command(outcome: &Outcome) -> String {
    format!(
        "cargo run --release --example faults -- --seed {} --actions {} --trace",
        outcome.seed, outcome.actions
    )
}

/// A failing outcome as a report: the violation, the end of the trace, how to replay it.
pub fn report(outcome: &Outcome) -> String {
    let mut out = String::new();
    if let Some(v) = &outcome.violation {
        let _ = writeln!(
            out,
            "seed {} broke a promise at t={:.3}s after {} actions: {}",
            outcome.seed,
            v.at.as_secs_f64(),
            outcome.actions,
            v.what
        );
    }
    let skip = outcome.trace.len().saturating_sub(200);
    if skip > 0 {
        let _ = writeln!(out, "… {skip} earlier events");
    }
    for line in &outcome.trace[skip..] {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "replay: {}", replay_command(outcome));
    out
}

// ---- the world ---------------------------------------------------------------------------

/// Knobs of one run's faults, drawn from its seed.
#[derive(Debug, Clone)]
struct Faults {
    drop: f64,
    duplicate: f64,
    max_delay_ms: u64,
    start_fails: f64,
    stop_fails: f64,
    unhealthy: f64,
    /// Faults happen (false once healed).
    on: bool,
}

#[derive(Debug, Clone)]
enum Ev {
    /// One fault or user action, then the next one is drawn.
    Chaos,
    Heal,
    RestartManager,
    RestartWorker(usize),
    EndPartition(usize),
    /// A user's stop of a task, some time after its submission was acknowledged.
    UserStop(Uuid),
    ManagerTimer(u64, Duration),
    ManagerCommit(u64),
    /// A message arrives at the scheduler.
    Sched(u64, SchedMsg),
    /// The scheduler's answer arrives at the manager.
    Placed(u64, Vec<(Uuid, Result<String, NoFit>)>),
    Capacity(u64),
    Heartbeat(u64, usize),
    DownCheck(u64, usize),
    Watch(u64, usize, u64),
    CallTimeout(u64, usize, u64),
    HealthCheck(u64, Uuid, u32),
    Packet(Packet),
    WorkerTimer(usize, u64, Duration),
    WorkerCommit(usize, u64),
    WatchTimeout(usize, u64, u64),
    Reconcile(usize, u64),
    Listed(usize, u64, u64, Vec<ContainerStatus>),
    /// A Docker call of a worker finishes.
    Docker(usize, u64, DockerOp),
    /// A container ends on its own, with this exit code.
    Exit(usize, String, i64),
    /// A worker inspected an ended container.
    Inspected(usize, u64, ContainerStatus),
}

#[derive(Debug, Clone)]
enum SchedMsg {
    Restore(Vec<(Uuid, String, Resources)>),
    Place(Vec<PlaceRequest>),
    Release(Vec<Uuid>),
    Ready(String, bool),
    Capacity(String, Capacity),
}

#[derive(Debug, Clone)]
enum DockerOp {
    Run {
        spec: ContainerSpec,
        replaces: Option<String>,
    },
    Stop {
        id: Uuid,
        attempt: u32,
        container: String,
    },
    Remove(String),
}

/// A message on the network between the manager's proxies and a worker.
#[derive(Debug, Clone)]
struct Packet {
    worker: usize,
    /// The manager incarnation the exchange belongs to.
    manager: u64,
    req: u64,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Stats,
    Watch {
        since: u64,
        instance: Option<Uuid>,
    },
    Start(Box<Task>),
    Stop {
        id: Uuid,
        attempt: u32,
    },
    /// Answers.
    Name(String),
    Changes(Box<Changes>),
    Started(Box<Result<Task, CallError>>),
    Stopped(Box<Result<Task, CallError>>),
}

impl Body {
    fn to_worker(&self) -> bool {
        matches!(
            self,
            Body::Stats | Body::Watch { .. } | Body::Start(_) | Body::Stop { .. }
        )
    }
}

/// What a proxy waits for.
#[derive(Debug, Clone)]
enum Pending {
    Stats,
    Watch(u64),
    Call(String, (Uuid, u32, CallKind)),
}

/// The manager's side of one worker (the WorkerProxy actor).
struct Proxy {
    liveness: Liveness,
    name: Option<String>,
    registered: bool,
    capacity_sent: bool,
    instance: Option<Uuid>,
    since: u64,
    resync: bool,
    /// Generation of the watch loop; answers of another are ignored (a cancelled long-poll).
    watch_gen: u64,
    watching: bool,
    backoff: Duration,
    down_check: bool,
    pending: BTreeMap<u64, Pending>,
}

/// Effects and answers held until a commit makes the writes they depend on durable.
struct Held<W, E> {
    writes: W,
    effects: Vec<E>,
}

struct ManagerProc {
    inc: u64,
    core: ManagerCore,
    book: Book,
    proxies: Vec<Proxy>,
    endpoints: Vec<EndpointId>,
    commits: BTreeMap<u64, ManagerHeld>,
    /// Submissions and stops waiting for their commit: (commit, who, task).
    answers: Vec<(u64, Answer, Uuid)>,
    last_commit: Duration,
    last_sched: Duration,
    /// Scheduler messages on their way, and placements on their way back.
    sched_in_flight: u32,
    health: BTreeMap<Uuid, u32>,
    /// When the core's timer is armed for.
    timer_at: Option<Duration>,
}

type ManagerHeld = Held<crate::actors::manager::core::Writes, MEffect>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Created,
    Existing,
    Stopped,
}

struct WorkerProc {
    inc: u64,
    core: WorkerCore,
    feed: Feed,
    /// Each task as last written: what the feed shows (as the worker shell).
    published: BTreeMap<Uuid, Task>,
    watchers: BTreeMap<u64, Watcher>,
    next_watcher: u64,
    commits: BTreeMap<u64, WorkerHeld>,
    last_commit: Duration,
    timer_at: Option<Duration>,
}

struct Watcher {
    since: u64,
    manager: u64,
    req: u64,
}

/// What a worker commit releases: records, runtime calls, and answers to requests.
struct WorkerHeld {
    held: Held<crate::actors::worker::core::Writes, WEffect>,
    replies: Vec<(u64, u64, Body)>,
}

#[derive(Default)]
struct WorkerDisk {
    tasks: BTreeMap<Uuid, Task>,
    stops: BTreeMap<Uuid, u32>,
}

#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    task: Uuid,
    attempt: u32,
    running: bool,
    exit_code: Option<i64>,
    healthy: bool,
    host_ports: BTreeMap<String, String>,
}

struct Node {
    name: String,
    address: String,
    proc: Option<WorkerProc>,
    disk: WorkerDisk,
    docker: BTreeMap<String, Container>,
    /// Lost for good: never comes back.
    lost: bool,
    partitioned: bool,
}

/// What the users were told.
#[derive(Default)]
struct Users {
    /// Submissions acknowledged (2xx), with their spec.
    acked: BTreeMap<Uuid, Task>,
    /// Stops acknowledged.
    stops: BTreeSet<Uuid>,
    /// Submitted and not (yet) acknowledged.
    asked: BTreeMap<Uuid, Task>,
}

struct World {
    options: Options,
    rng: fastrand::Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    scheduled: BTreeMap<u64, Ev>,
    faults: Faults,
    manager: Option<ManagerProc>,
    manager_inc: u64,
    disk_tasks: BTreeMap<u64, Task>,
    disk_nodes: BTreeMap<String, String>,
    nodes: Vec<Node>,
    users: Users,
    next_req: u64,
    next_container: u64,
    /// Ends the world caused per task: exits, failed starts, unhealthy or killed containers.
    ends: BTreeMap<Uuid, u32>,
    /// Tasks once seen Completed in the durable records.
    completed: BTreeSet<Uuid>,
    attempts: BTreeMap<Uuid, u32>,
    actions: usize,
    events: u64,
    violation: Option<Violation>,
    trace: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
    healed: bool,
}

impl World {
    fn new(seed: u64, options: Options) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let workers = rng.usize(2..=4);
        let faults = Faults {
            drop: [0.0, 0.01, 0.05, 0.1][rng.usize(..4)],
            duplicate: [0.0, 0.02, 0.05][rng.usize(..3)],
            max_delay_ms: [2, 20, 200][rng.usize(..3)],
            start_fails: [0.0, 0.05, 0.2][rng.usize(..3)],
            stop_fails: [0.0, 0.1, 0.3][rng.usize(..3)],
            unhealthy: [0.0, 0.1, 0.3][rng.usize(..3)],
            on: true,
        };
        let nodes = (0..workers)
            .map(|i| Node {
                name: format!("w{}", i + 1),
                address: format!("10.0.0.{}:5556", i + 1),
                proc: None,
                disk: WorkerDisk::default(),
                docker: BTreeMap::new(),
                lost: false,
                partitioned: false,
            })
            .collect();
        let mut world = World {
            options,
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            scheduled: BTreeMap::new(),
            faults,
            manager: None,
            manager_inc: 0,
            disk_tasks: BTreeMap::new(),
            disk_nodes: BTreeMap::new(),
            nodes,
            users: Users::default(),
            next_req: 0,
            next_container: 0,
            ends: BTreeMap::new(),
            completed: BTreeSet::new(),
            attempts: BTreeMap::new(),
            actions: 0,
            events: 0,
            violation: None,
            trace: Vec::new(),
            counts: BTreeMap::new(),
            healed: false,
        };
        for w in 0..workers {
            world.start_worker(w);
        }
        world.start_manager();
        world.at(Duration::from_millis(200), Ev::Chaos);
        let fault_time = world.options.fault_time;
        world.at(fault_time, Ev::Heal);
        world
    }

    fn run(&mut self) {
        let end = self.options.fault_time + self.options.settle_time;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end || self.violation.is_some() {
                break;
            }
            self.now = at;
            let Some(ev) = self.scheduled.remove(&seq) else {
                continue;
            };
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.violated(format!(
                    "the world never settles: {MAX_EVENTS} events by t={:.3}s (a livelock)",
                    self.now.as_secs_f64()
                ));
                break;
            }
            if self.options.trace {
                self.trace_event(&ev);
            }
            // The durable records change only when a commit completes, and the scheduler's
            // book only with its messages: check after those (checking after every event finds
            // nothing more and costs most of a run).
            let check = matches!(
                ev,
                Ev::ManagerCommit(_) | Ev::Sched(..) | Ev::Placed(..) | Ev::Capacity(_)
            );
            self.handle(ev);
            if check && self.violation.is_none() {
                self.check_always();
            }
        }
        if self.violation.is_none() {
            self.now = end;
            self.check_at_rest();
        }
    }

    // ---- plumbing --------------------------------------------------------------------------

    fn now(&self) -> Now {
        Now {
            mono: self.now,
            wall: wall(self.now),
        }
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.scheduled.insert(self.seq, ev);
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faults.on && p > 0.0 && self.rng.f64() < p
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(self.rng.u64(lo * 1000..=hi * 1000))
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_insert(0) += 1;
    }

    fn note(&mut self, line: String) {
        if self.options.trace {
            self.trace
                .push(format!("{:>9.3}s   {line}", self.now.as_secs_f64()));
        }
    }

    fn trace_event(&mut self, ev: &Ev) {
        let line = match ev {
            Ev::Packet(p) => format!(
                "net {} w{} req {}: {}",
                if p.body.to_worker() { "→" } else { "←" },
                p.worker + 1,
                p.req,
                describe(&p.body)
            ),
            Ev::Sched(_, m) => format!("scheduler ← {}", describe_sched(m)),
            Ev::Placed(_, p) => format!("manager ← placed {p:?}"),
            Ev::Docker(w, _, op) => format!("docker w{}: {}", w + 1, describe_op(op)),
            Ev::Exit(w, c, code) => {
                format!("docker w{}: container {c} ends on its own ({code})", w + 1)
            }
            Ev::Listed(w, _, _, l) => format!("w{} ← list of {} containers", w + 1, l.len()),
            Ev::Heartbeat(..) | Ev::DownCheck(..) | Ev::ManagerTimer(..) | Ev::WorkerTimer(..) => {
                return;
            }
            other => format!("{other:?}"),
        };
        self.note(line);
    }

    fn violated(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION: {what}"));
            self.violation = Some(Violation { at: self.now, what });
        }
    }

    // ---- events ----------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
        let minc = self.manager.as_ref().map(|m| m.inc);
        match ev {
            Ev::Chaos => self.chaos(),
            Ev::Heal => self.heal(),
            Ev::RestartManager if self.manager.is_none() => self.start_manager(),
            Ev::RestartWorker(w) if self.nodes[w].proc.is_none() && !self.nodes[w].lost => {
                self.start_worker(w)
            }
            Ev::EndPartition(w) => self.nodes[w].partitioned = false,
            Ev::UserStop(id) => self.user_stop(id),
            Ev::ManagerTimer(inc, at) if Some(inc) == minc => {
                let now = self.now();
                if let Some(m) = self.manager.as_mut() {
                    if m.timer_at == Some(at) {
                        m.timer_at = None;
                    }
                    m.core.tick(now);
                }
                self.manager_step();
            }
            Ev::ManagerCommit(id) => self.manager_committed(id),
            Ev::Sched(inc, msg) if Some(inc) == minc => self.scheduler(msg),
            Ev::Placed(inc, placements) if Some(inc) == minc => {
                let now = self.now();
                if let Some(m) = self.manager.as_mut() {
                    m.sched_in_flight -= 1;
                    m.core.placed(now, placements);
                }
                self.manager_step();
            }
            Ev::Capacity(inc) if Some(inc) == minc => {
                if let Some(m) = self.manager.as_mut() {
                    m.sched_in_flight -= 1;
                    m.core.capacity_available();
                }
                self.manager_step();
            }
            Ev::Heartbeat(inc, w) if Some(inc) == minc => {
                self.send(w, Body::Stats, Pending::Stats, CALL_TIMEOUT);
                self.at(HEARTBEAT, Ev::Heartbeat(inc, w));
            }
            Ev::DownCheck(inc, w) if Some(inc) == minc => self.down_check(w),
            Ev::Watch(inc, w, generation) if Some(inc) == minc => self.watch(w, generation),
            Ev::CallTimeout(inc, w, req) if Some(inc) == minc => {
                let pending = self
                    .manager
                    .as_mut()
                    .and_then(|m| m.proxies[w].pending.remove(&req));
                if let Some(p) = pending {
                    self.call_failed(w, p, "timed out");
                }
            }
            Ev::HealthCheck(inc, id, attempt) if Some(inc) == minc => {
                self.health_check(id, attempt)
            }
            Ev::Packet(p) => self.deliver(p),
            Ev::WorkerTimer(w, inc, at) if self.worker_inc(w) == Some(inc) => {
                let now = self.now();
                if let Some(p) = self.nodes[w].proc.as_mut() {
                    if p.timer_at == Some(at) {
                        p.timer_at = None;
                    }
                    p.core.tick(now);
                }
                self.worker_step(w, Vec::new());
            }
            Ev::WorkerCommit(w, id) => self.worker_committed(w, id),
            Ev::WatchTimeout(w, inc, watcher) if self.worker_inc(w) == Some(inc) => {
                let answer = self.nodes[w].proc.as_mut().and_then(|p| {
                    let watcher = p.watchers.remove(&watcher)?;
                    let changes = Changes {
                        name: String::new(),
                        instance: p.feed.instance(),
                        seq: p.feed.seq(),
                        full: false,
                        tasks: Vec::new(),
                    };
                    Some((watcher, changes))
                });
                if let Some((watcher, mut changes)) = answer {
                    changes.name = self.nodes[w].name.clone();
                    self.reply(
                        w,
                        watcher.manager,
                        watcher.req,
                        Body::Changes(Box::new(changes)),
                    );
                }
            }
            Ev::Reconcile(w, inc) if self.worker_inc(w) == Some(inc) => {
                let token = self.nodes[w]
                    .proc
                    .as_mut()
                    .map(|p| p.core.begin_reconcile())
                    .unwrap_or(0);
                let list: Vec<ContainerStatus> =
                    self.nodes[w].docker.values().map(status_of).collect();
                let d = self.ms(1, 30);
                self.at(d, Ev::Listed(w, inc, token, list));
                self.at(RECONCILE_EVERY, Ev::Reconcile(w, inc));
            }
            Ev::Listed(w, inc, token, list) if self.worker_inc(w) == Some(inc) => {
                let now = self.now();
                if let Some(p) = self.nodes[w].proc.as_mut() {
                    p.core.reconcile(now, token, list);
                }
                self.worker_step(w, Vec::new());
            }
            Ev::Docker(w, inc, op) if self.worker_inc(w) == Some(inc) => self.docker(w, op),
            Ev::Docker(w, _, op) => {
                // The worker that asked is gone; Docker still does what it was asked.
                match op {
                    DockerOp::Run { spec, replaces } => {
                        let _ = self.docker_run(w, spec, replaces);
                    }
                    DockerOp::Stop { container, .. } | DockerOp::Remove(container) => {
                        self.docker_remove(w, &container)
                    }
                }
            }
            Ev::Exit(w, container, code) => self.exit(w, container, code),
            Ev::Inspected(w, inc, status) if self.worker_inc(w) == Some(inc) => {
                let now = self.now();
                if let Some(p) = self.nodes[w].proc.as_mut() {
                    p.core.exited(now, status);
                }
                self.worker_step(w, Vec::new());
            }
            // Addressed to a process that has since crashed.
            _ => {}
        }
    }

    /// One fault or user action, drawn from the seed.
    fn chaos(&mut self) {
        if !self.faults.on
            || self
                .options
                .max_actions
                .is_some_and(|max| self.actions >= max)
        {
            return;
        }
        self.actions += 1;
        let roll = self.rng.u32(0..100);
        match roll {
            0..=34 => self.user_submit(),
            35..=39 => self.user_resubmit(),
            40..=49 => {
                let id = self.pick_task();
                if let Some(id) = id {
                    self.user_stop(id);
                }
            }
            50..=57 => {
                if self.manager.is_some() {
                    self.note("crash manager".into());
                    self.count("manager crashes");
                    self.manager = None;
                    let d = self.ms(10, 4000);
                    self.at(d, Ev::RestartManager);
                }
            }
            58..=69 => {
                let w = self.rng.usize(..self.nodes.len());
                if self.nodes[w].proc.is_some() {
                    let die = self.rng.bool();
                    self.crash_worker(w, die);
                    let d = self.ms(10, 12_000);
                    self.at(d, Ev::RestartWorker(w));
                }
            }
            70..=72 => {
                let w = self.rng.usize(..self.nodes.len());
                if !self.nodes[w].lost && self.others_live(w) {
                    self.note(format!("lose w{} for good", w + 1));
                    self.count("workers lost");
                    self.crash_worker(w, true);
                    self.nodes[w].lost = true;
                }
            }
            73..=84 => {
                let w = self.rng.usize(..self.nodes.len());
                if !self.nodes[w].partitioned {
                    self.note(format!("partition w{}", w + 1));
                    self.count("partitions");
                    self.nodes[w].partitioned = true;
                    let d = self.ms(100, 15_000);
                    self.at(d, Ev::EndPartition(w));
                }
            }
            85..=88 => {
                // An outage takes the manager and a worker down together; the worker's machine
                // may never come back.
                let w = self.rng.usize(..self.nodes.len());
                if self.manager.is_some() && self.nodes[w].proc.is_some() && self.others_live(w) {
                    let lost = self.rng.bool();
                    self.note(format!(
                        "outage: the manager and w{} go down{}",
                        w + 1,
                        if lost { ", the worker for good" } else { "" }
                    ));
                    self.count("outages");
                    self.manager = None;
                    self.crash_worker(w, true);
                    let d = self.ms(10, 4000);
                    self.at(d, Ev::RestartManager);
                    if lost {
                        self.nodes[w].lost = true;
                    } else {
                        let d = self.ms(10, 12_000);
                        self.at(d, Ev::RestartWorker(w));
                    }
                }
            }
            _ => {
                // A running container ends on its own (crash of the process inside).
                let w = self.rng.usize(..self.nodes.len());
                let running: Vec<String> = self.nodes[w]
                    .docker
                    .values()
                    .filter(|c| c.running)
                    .map(|c| c.id.clone())
                    .collect();
                if !running.is_empty() {
                    let c = running[self.rng.usize(..running.len())].clone();
                    self.count("containers crashed");
                    self.exit(w, c, 137);
                }
            }
        }
        let next = self.ms(10, 1500);
        self.at(next, Ev::Chaos);
    }

    fn heal(&mut self) {
        self.note("heal: faults stop, every process and link comes back".into());
        self.faults.on = false;
        self.healed = true;
        for w in 0..self.nodes.len() {
            self.nodes[w].partitioned = false;
            if self.nodes[w].proc.is_none() && !self.nodes[w].lost {
                self.start_worker(w);
            }
            for c in self.nodes[w].docker.values_mut() {
                c.healthy = true;
            }
        }
        if self.manager.is_none() {
            self.start_manager();
        }
    }

    /// Whether some node other than `w` is not lost for good: the last one never is.
    fn others_live(&self, w: usize) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != w && !n.lost)
    }

    fn pick_task(&mut self) -> Option<Uuid> {
        let ids: Vec<Uuid> = self.users.acked.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.usize(..ids.len())])
    }

    // ---- users -----------------------------------------------------------------------------

    fn user_submit(&mut self) {
        let mut task = Task::new("sim/busybox");
        task.id = Uuid::from_u128(self.rng.u128(..));
        task.name = format!("t{}", self.users.asked.len() + self.users.acked.len());
        task.created_at = wall(self.now);
        task.cpu = [0.0, 0.5, 1.0][self.rng.usize(..3)];
        task.restart_policy = [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ][self.rng.usize(..3)];
        task.max_restarts = self.rng.u32(0..=3);
        // What each of its containers does: run until stopped, or end after a while.
        task.cmd = match self.rng.u32(0..4) {
            0 | 1 => vec!["run".into()],
            2 => vec!["exit".into(), "0".into(), self.rng.u32(1..15).to_string()],
            _ => vec!["exit".into(), "1".into(), self.rng.u32(1..15).to_string()],
        };
        if self.rng.u32(0..4) == 0 {
            task.exposed_ports = vec!["8080/tcp".into()];
            task.health_check = Some("/health".into());
        }
        let stop_soon = self.rng.u32(0..4) == 0;
        self.note(format!(
            "user submits {} {} {:?} {:?}{}",
            task.id,
            task.restart_policy.as_str(),
            task.cmd,
            task.max_restarts,
            if stop_soon {
                ", and stops it at once"
            } else {
                ""
            }
        ));
        self.users.asked.insert(task.id, task.clone());
        self.submit(task.clone());
        if stop_soon {
            let d = self.ms(0, 60);
            self.at(d, Ev::UserStop(task.id));
        }
    }

    fn user_resubmit(&mut self) {
        if let Some(id) = self.pick_task() {
            let task = self.users.acked[&id].clone();
            self.note(format!("user submits {id} again"));
            self.submit(task);
        }
    }

    fn submit(&mut self, task: Task) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let id = task.id;
        let answer = match m.core.submit(now, task) {
            Ok(Submitted::Created(_)) => Answer::Created,
            Ok(Submitted::Existing(_)) => Answer::Existing,
            Err(e) => {
                self.note(format!("user gets {e}"));
                return;
            }
        };
        let commit = self.manager_step_with(true);
        self.answer_after(commit, answer, id);
    }

    /// Answer a user once commit `commit` is durable (at once when nothing was written).
    fn answer_after(&mut self, commit: u64, answer: Answer, id: Uuid) {
        if commit == 0 {
            if answer == Answer::Stopped {
                self.users.stops.insert(id);
            }
            return;
        }
        if let Some(m) = self.manager.as_mut() {
            m.answers.push((commit, answer, id));
        }
    }

    fn user_stop(&mut self, id: Uuid) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        if m.core.stop(now, id).is_err() {
            return;
        }
        self.note(format!("user stops {id}"));
        let commit = self.manager_step_with(true);
        self.answer_after(commit, Answer::Stopped, id);
    }

    // ---- the manager process ---------------------------------------------------------------

    fn start_manager(&mut self) {
        self.manager_inc += 1;
        let inc = self.manager_inc;
        let records: Vec<(u64, Task)> = self
            .disk_tasks
            .iter()
            .map(|(k, t)| (*k, t.clone()))
            .collect();
        let nodes: Vec<(String, String)> = self
            .disk_nodes
            .iter()
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        self.note(format!(
            "manager starts (incarnation {inc}) with {} records",
            records.len()
        ));
        let mut core =
            ManagerCore::recover(ManagerConfig::new(NODE_TIMEOUT), self.now(), records, nodes);
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
                instance: None,
                since: 0,
                resync: true,
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
            last_commit: self.now,
            last_sched: self.now,
            sched_in_flight: 0,
            health: BTreeMap::new(),
            timer_at: None,
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
    fn manager_step(&mut self) -> u64 {
        self.manager_step_with(false)
    }

    /// As the shell's `carry_out(barrier)`: with `barrier`, even a step that wrote nothing is
    /// answered only after a commit, which follows every earlier one.
    fn manager_step_with(&mut self, barrier: bool) -> u64 {
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
                        p.resync = true;
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

    fn rearm_manager(&mut self) {
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

    fn manager_committed(&mut self, id: u64) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let Some(held) = m.commits.remove(&id) else {
            return;
        };
        for (key, task) in &held.writes.tasks {
            self.disk_tasks.insert(*key, task.clone());
        }
        for (name, address) in &held.writes.nodes {
            self.disk_nodes.insert(name.clone(), address.clone());
        }
        let m = self.manager.as_mut().expect("checked above");
        let answers: Vec<(Answer, Uuid)> = m
            .answers
            .iter()
            .filter(|(c, _, _)| *c == id)
            .map(|(_, a, t)| (*a, *t))
            .collect();
        m.answers.retain(|(c, _, _)| *c != id);
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
        if !created.is_empty() {
            let m = self.manager.as_mut().expect("checked above");
            m.core.submit_committed(&created, true);
            self.manager_step();
        }
        self.rearm_manager();
    }

    fn manager_calls(&mut self, calls: Vec<MEffect>) {
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

    fn worker_of(&self, endpoint: EndpointId) -> usize {
        self.manager
            .as_ref()
            .and_then(|m| m.endpoints.iter().position(|e| *e == endpoint))
            .unwrap_or(0)
    }

    fn tell_scheduler(&mut self, msg: SchedMsg) {
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

    fn scheduler(&mut self, msg: SchedMsg) {
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
                m.sched_in_flight += 1;
                let d = self.ms(0, 2);
                self.at(d, Ev::Placed(inc, placements));
                false
            }
            SchedMsg::Release(ids) => m.book.release(&ids),
            SchedMsg::Ready(name, ready) => m.book.set_ready(&name, ready),
            SchedMsg::Capacity(name, capacity) => m.book.set_capacity(&name, capacity),
        };
        if room {
            if let Some(m) = self.manager.as_mut() {
                m.sched_in_flight += 1;
            }
            let d = self.ms(0, 2);
            self.at(d, Ev::Capacity(inc));
        }
    }

    // ---- the proxies -----------------------------------------------------------------------

    fn send(&mut self, w: usize, body: Body, pending: Pending, timeout: Duration) {
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
    fn transmit(&mut self, packet: Packet) {
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
        self.at(d, Ev::Packet(packet));
    }

    fn deliver(&mut self, packet: Packet) {
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

    fn proxy_answer(&mut self, packet: Packet) {
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
                let restarted = p.instance.is_some_and(|i| i != changes.instance);
                p.instance = Some(changes.instance);
                p.since = changes.seq;
                if changes.full || !changes.tasks.is_empty() {
                    let endpoint = m.endpoints[w];
                    m.core
                        .report(now, endpoint, changes.full, restarted, changes.tasks);
                }
                self.manager_step();
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

    fn call_failed(&mut self, w: usize, pending: Pending, why: &str) {
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
    fn heard(&mut self, w: usize, name: &str) {
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

    fn arm_down_check(&mut self, w: usize) {
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

    fn down_check(&mut self, w: usize) {
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

    fn watch(&mut self, w: usize, generation: u64) {
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let p = &mut m.proxies[w];
        if generation != p.watch_gen || p.watching {
            return;
        }
        p.watching = true;
        if std::mem::take(&mut p.resync) {
            p.since = 0;
        }
        let body = Body::Watch {
            since: p.since,
            instance: p.instance,
        };
        self.send(
            w,
            body,
            Pending::Watch(generation),
            WATCH_WAIT + CALL_TIMEOUT,
        );
    }

    fn send_capacity(&mut self, w: usize) {
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

    fn health_check(&mut self, id: Uuid, attempt: u32) {
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

    // ---- the workers -----------------------------------------------------------------------

    fn worker_inc(&self, w: usize) -> Option<u64> {
        self.nodes[w].proc.as_ref().map(|p| p.inc)
    }

    fn start_worker(&mut self, w: usize) {
        self.seq += 1;
        let inc = self.seq;
        let tasks: Vec<Task> = self.nodes[w].disk.tasks.values().cloned().collect();
        let stops: Vec<(Uuid, u32)> = self.nodes[w]
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
        for t in &tasks {
            feed.changed(t.id);
        }
        let core = WorkerCore::recover(
            self.nodes[w].name.clone(),
            Duration::from_secs(3600),
            self.now(),
            tasks,
            stops,
        );
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
        });
        self.at(Duration::ZERO, Ev::Reconcile(w, inc));
    }

    fn crash_worker(&mut self, w: usize, containers_die: bool) {
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

    fn worker_request(&mut self, packet: Packet) {
        let w = packet.worker;
        if self.nodes[w].proc.is_none() {
            return; // nobody listens: the caller times out
        }
        let now = self.now();
        let name = self.nodes[w].name.clone();
        match packet.body {
            Body::Stats => self.reply(w, packet.manager, packet.req, Body::Name(name)),
            Body::Watch { since, instance } => {
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let since = p.feed.start_of(since, instance);
                if p.feed.has_news(since) {
                    let changes = p.feed.read(&name, since, |id| p.published.get(&id));
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
                            manager: packet.manager,
                            req: packet.req,
                        },
                    );
                    self.at(WATCH_WAIT, Ev::WatchTimeout(w, inc, id));
                }
            }
            Body::Start(task) => {
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let outcome = p.core.start(now, *task).map(|(t, _)| t).map_err(call_error);
                let reply = (packet.manager, packet.req, Body::Started(Box::new(outcome)));
                self.worker_step(w, vec![reply]);
            }
            Body::Stop { id, attempt } => {
                let p = self.nodes[w].proc.as_mut().expect("checked above");
                let outcome = p.core.stop(now, id, Some(attempt)).map_err(call_error);
                let reply = (packet.manager, packet.req, Body::Stopped(Box::new(outcome)));
                self.worker_step(w, vec![reply]);
            }
            _ => {}
        }
    }

    fn reply(&mut self, w: usize, manager: u64, req: u64, body: Body) {
        self.transmit(Packet {
            worker: w,
            manager,
            req,
            body,
        });
    }

    /// The worker shell's `carry_out`: write, then publish, run effects and answer.
    fn worker_step(&mut self, w: usize, replies: Vec<(u64, u64, Body)>) {
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let writes = p.core.take_writes();
        let effects = p.core.take_effects();
        let inc = p.inc;
        let next = p.core.next_timer();
        if next != p.timer_at {
            p.timer_at = next;
            if let Some(at) = next {
                self.at(at.saturating_sub(self.now), Ev::WorkerTimer(w, inc, at));
            }
        }
        if writes.is_empty() && replies.is_empty() {
            self.worker_effects(w, effects);
            for (m, r, b) in replies {
                self.reply(w, m, r, b);
            }
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
            },
        );
        let rel = at - self.now;
        self.at(rel, Ev::WorkerCommit(w, id));
    }

    fn worker_committed(&mut self, w: usize, id: u64) {
        let Some(p) = self.nodes[w].proc.as_mut() else {
            return;
        };
        let Some(held) = p.commits.remove(&id) else {
            return;
        };
        for t in &held.held.writes.tasks {
            p.feed.changed(t.id);
            p.published.insert(t.id, t.clone());
        }
        let disk = &mut self.nodes[w].disk;
        for t in held.held.writes.tasks {
            disk.tasks.insert(t.id, t);
        }
        for (id, a) in held.held.writes.stops {
            disk.stops.insert(id, a);
        }
        self.notify_watchers(w);
        self.worker_effects(w, held.held.effects);
        for (m, r, b) in held.replies {
            self.reply(w, m, r, b);
        }
    }

    fn notify_watchers(&mut self, w: usize) {
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
                let changes = p.feed.read(&name, watcher.since, |t| p.published.get(&t));
                answers.push((watcher.manager, watcher.req, changes));
            }
        }
        for (m, r, c) in answers {
            self.reply(w, m, r, Body::Changes(Box::new(c)));
        }
    }

    fn worker_effects(&mut self, w: usize, effects: Vec<WEffect>) {
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

    fn docker(&mut self, w: usize, op: DockerOp) {
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
    fn docker_run(
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

    fn create(&mut self, w: usize, spec: &ContainerSpec) -> String {
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

    fn docker_remove(&mut self, w: usize, id_or_name: &str) {
        let key = self.nodes[w]
            .docker
            .values()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
            .map(|c| c.id.clone());
        if let Some(k) = key {
            self.nodes[w].docker.remove(&k);
        }
    }

    fn exit(&mut self, w: usize, container: String, code: i64) {
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

    // ---- invariants ------------------------------------------------------------------------

    /// What must hold after every step.
    fn check_always(&mut self) {
        let durable: BTreeMap<Uuid, &Task> = self.disk_tasks.values().map(|t| (t.id, t)).collect();
        for id in self.users.acked.keys() {
            if !durable.contains_key(id) {
                let what = format!("acknowledged task {id} is not in the durable records");
                return self.violated(what);
            }
            if let Some(m) = &self.manager
                && m.core.task(*id).is_none()
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
    fn check_at_rest(&mut self) {
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
            } else if matches!(t.state, State::Pending | State::Scheduled) {
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
        for id in &self.users.stops {
            if m.core
                .task(*id)
                .is_some_and(|t| t.state != State::Completed)
            {
                problems.push(format!("the stop of {id} was acknowledged but never done"));
            }
        }
        if let Some(p) = problems.into_iter().next() {
            self.violated(p);
        }
    }
}

fn wall(mono: Duration) -> DateTime<Utc> {
    Utc.timestamp_opt(EPOCH_SECS, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        + chrono::Duration::from_std(mono).unwrap_or(chrono::Duration::zero())
}

fn status_of(c: &Container) -> ContainerStatus {
    ContainerStatus {
        container_id: c.id.clone(),
        task_id: c.task,
        attempt: c.attempt,
        image: "sim/busybox".into(),
        running: c.running,
        exit_code: c.exit_code,
        oom_killed: false,
        error: None,
        host_ports: c.host_ports.clone(),
        started_at: None,
        finished_at: None,
    }
}

/// What the HTTP layer makes of a worker's error, as the manager's client sees it.
fn call_error(e: WorkerError) -> CallError {
    CallError::from(e)
}

fn describe(body: &Body) -> String {
    match body {
        Body::Stats => "stats?".into(),
        Body::Watch { since, .. } => format!("watch since {since}"),
        Body::Start(t) => format!("start {} attempt {}", t.id, t.attempt),
        Body::Stop { id, attempt } => format!("stop {id} attempt {attempt}"),
        Body::Name(n) => format!("stats of {n}"),
        Body::Changes(c) => format!(
            "{} changes{}: {}",
            c.tasks.len(),
            if c.full { " (full)" } else { "" },
            c.tasks
                .iter()
                .map(|t| format!("{}#{} {}", short(t.id), t.attempt, t.state))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Body::Started(r) => format!(
            "started: {}",
            match r.as_ref() {
                Ok(t) => format!("{}#{} {}", short(t.id), t.attempt, t.state),
                Err(e) => format!("{e:?}"),
            }
        ),
        Body::Stopped(r) => format!(
            "stopped: {}",
            match r.as_ref() {
                Ok(t) => format!("{}#{} {}", short(t.id), t.attempt, t.state),
                Err(e) => format!("{e:?}"),
            }
        ),
    }
}

fn describe_sched(m: &SchedMsg) -> String {
    match m {
        SchedMsg::Restore(b) => format!("restore {} bookings", b.len()),
        SchedMsg::Place(b) => format!(
            "place {}",
            b.iter().map(|r| short(r.id)).collect::<Vec<_>>().join(", ")
        ),
        SchedMsg::Release(ids) => format!(
            "release {}",
            ids.iter().map(|i| short(*i)).collect::<Vec<_>>().join(", ")
        ),
        SchedMsg::Ready(n, r) => format!("{n} ready: {r}"),
        SchedMsg::Capacity(n, _) => format!("{n} capacity"),
    }
}

fn describe_op(op: &DockerOp) -> String {
    match op {
        DockerOp::Run { spec, replaces } => format!(
            "run {}#{}{}",
            short(spec.task_id),
            spec.attempt,
            replaces
                .as_ref()
                .map(|r| format!(" replacing {r}"))
                .unwrap_or_default()
        ),
        DockerOp::Stop {
            id,
            attempt,
            container,
        } => format!("stop {container} ({}#{attempt})", short(*id)),
        DockerOp::Remove(c) => format!("remove {c}"),
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::planted::{self, Bug};

    /// Seeds run by CI: each is a whole run with faults, healing and the final checks.
    const CI_SEEDS: u64 = 1000;

    /// Run `seeds` over two threads with `bug` planted; the seeds that broke a promise.
    fn failing(seeds: std::ops::Range<u64>, bug: Option<Bug>, stop_at_first: bool) -> Vec<u64> {
        let next = std::sync::atomic::AtomicU64::new(seeds.start);
        let found = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    planted::plant(bug);
                    let options = Options::default();
                    loop {
                        if stop_at_first && found.lock().is_ok_and(|f| !f.is_empty()) {
                            break;
                        }
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed >= seeds.end {
                            break;
                        }
                        if run(seed, &options).violation.is_some()
                            && let Ok(mut f) = found.lock()
                        {
                            f.push(seed);
                        }
                    }
                    planted::plant(None);
                });
            }
        });
        let mut found = found.into_inner().unwrap_or_default();
        found.sort();
        found
    }

    #[test]
    fn a_thousand_seeds_of_faults_keep_every_promise() {
        let failed = failing(0..CI_SEEDS, None, false);
        if let Some(&seed) = failed.first() {
            let outcome = shrink(seed, &Options::default());
            panic!(
                "{} of {CI_SEEDS} seeds broke a promise ({failed:?}); the first, shrunk:\n{}",
                failed.len(),
                report(&outcome)
            );
        }
    }

    #[test]
    fn a_seed_replays_exactly() {
        let options = Options {
            trace: true,
            ..Options::default()
        };
        let (a, b) = (run(7, &options), run(7, &options));
        assert!(a.events > 1000, "a run does something: {} events", a.events);
        assert_eq!(a.trace, b.trace);
        assert_ne!(a.trace, run(8, &options).trace);
    }

    #[test]
    fn a_failure_is_shrunk_to_the_fewest_actions_and_says_how_to_replay_it() {
        let seeds = failing(0..CI_SEEDS, Some(Bug::FailedStopNotRetried), true);
        let seed = *seeds.first().expect("the planted bug is found");
        planted::plant(Some(Bug::FailedStopNotRetried));
        let full = run(seed, &Options::default());
        let shrunk = shrink(seed, &Options::default());
        planted::plant(None);
        assert!(shrunk.violation.is_some());
        assert!(shrunk.actions <= full.actions);
        assert!(!shrunk.trace.is_empty());
        let text = report(&shrunk);
        assert!(
            text.contains(&format!("--seed {seed} --actions {}", shrunk.actions)),
            "{text}"
        );
    }

    fn finds(bug: Bug) {
        let seeds = failing(0..CI_SEEDS, Some(bug), true);
        assert!(
            !seeds.is_empty(),
            "{bug:?} planted, yet {CI_SEEDS} seeds kept every promise"
        );
        planted::plant(Some(bug));
        let outcome = shrink(seeds[0], &Options::default());
        planted::plant(None);
        eprintln!(
            "{bug:?} found by seed {}: {}",
            seeds[0],
            outcome.violation.map(|v| v.what).unwrap_or_default()
        );
    }

    #[test]
    fn the_simulation_finds_a_report_of_an_older_attempt_taken_as_current() {
        finds(Bug::StaleReportIsCurrent);
    }

    #[test]
    fn the_simulation_finds_a_stop_answered_and_then_forgotten() {
        finds(Bug::EarlyStopForgotten);
    }

    #[test]
    fn the_simulation_finds_a_failed_docker_stop_never_retried() {
        finds(Bug::FailedStopNotRetried);
    }

    #[test]
    fn the_simulation_finds_a_worker_dead_at_the_managers_start_never_down() {
        finds(Bug::SilentFromStartNeverDown);
    }
}
