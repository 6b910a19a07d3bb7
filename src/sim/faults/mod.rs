//! A seeded, deterministic fault simulation of Cube's whole lifecycle, in the spirit of
//! FoundationDB's simulator and TigerBeetle's VOPR.
//!
//! The real decision cores run unchanged — the manager's [`Core`](ManagerCore), the scheduler's
//! [`Book`], one worker [`Core`](WorkerCore) and change [`Feed`] per node, and the proxies'
//! [`Liveness`] rule and [`FeedReader`] — inside a simulated world: a network that delays,
//! drops, duplicates and partitions messages, and carries a start or stop out again seconds
//! later; disks whose writes become durable only when their group commit
//! completes; a Docker per node whose starts and stops fail; processes that crash at any step
//! (the manager restarts from its durable records, a worker from its own, its containers
//! surviving or dying with it) or are lost for good; users who submit, resubmit and stop
//! tasks at any time; and, on half the seeds, users of services (`services`), whose promises
//! are checked too. Everything happens on one simulated clock, in an order fixed by one seed,
//! so any run can be replayed exactly.
//!
//! The shells this world stands in for (the Manager, Worker and WorkerProxy actors, the
//! HealthChecker) are modelled here in a few lines each, doing what those actors do: carry
//! effects out after the writes they depend on are durable, long-poll the change feed (in
//! pages on some seeds), start over at 0 on a resync, hand a report's mark back to its proxy
//! once the commit of the step that took it is durable, so that the next polls carry it as
//! `acked`, heartbeat, time calls out. On some seeds the workers keep finished tasks only a few
//! seconds, so they drop what the manager acknowledged, and expire tombstones, amid the faults.
//!
//! After every step the invariants that must always hold are checked (nothing acknowledged is
//! lost, a stop acknowledged stays asked for, Completed is final, attempts only grow, a task's
//! history of attempts is ordered, bounded and earlier than its current attempt,
//! `restart_count` never exceeds the ends the world caused, the scheduler's book matches the
//! tasks' reservations, a worker drops a task only once the manager durably recorded its end
//! and keeps its tombstone for the retention, no worker takes a start of an attempt it
//! answered a stop of or dropped while the tombstone lives). Then every fault is healed, the
//! world runs quiet for long enough for every retry, backoff and resync to play out, and the
//! promises are checked: exactly one running container of each task that should run and none
//! of anything else, every stopped task Completed, no task stuck (nor placed on a worker that
//! dropped it), no finished task kept long past the workers' retention.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::actors::client::CallError;
use crate::actors::manager::core::{
    CallKind, Config as ManagerConfig, Core as ManagerCore, Effect as MEffect, EndpointId, Seen,
    Submitted, Tombstone as Collected, is_final,
};
use crate::actors::policy::PolicyKind;
use crate::actors::scheduler::{Book, NoFit, PlaceRequest, Room};
use crate::actors::worker::core::{Core as WorkerCore, Effect as WEffect};
use crate::actors::worker::feed::{Changes, Feed, Page};
use crate::actors::worker::{
    MAX_FEED_PAGE_BYTES, MAX_WATCH_WAIT, Tombstone, WatchChanges, WorkerError,
};
use crate::actors::worker_proxy::{FeedMark, FeedReader};
use crate::clock::Now;
use crate::node::{Capacity, Liveness, LivenessChange};
use crate::runtime::{ContainerSpec, ContainerStatus, RuntimeError};
use crate::task::{Goal, RestartPolicy, State, Task};

/// Time between heartbeats of a proxy (as `WorkerProxy`).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence that makes a node Down (as `--node-timeout`'s default).
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
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
/// With retention on (odd seeds), finished tasks are kept this long, and at most this many, so
/// that collection runs amid the faults (tombstones live 7 times as long).
const RETENTION: Duration = Duration::from_secs(10);
const RETENTION_COUNT: usize = 25;
/// With worker retention on (seeds 2 and 3 modulo 4), workers keep a finished task this long
/// (and a tombstone of a task they no longer have as long), then drop it once the manager
/// acknowledged it, so that drops and expiries happen amid the faults. Otherwise they keep
/// everything for the whole run, as a long retention would.
const WORKER_RETENTION: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(8)];
const WORKER_RETENTION_LONG: Duration = Duration::from_secs(3600);
/// On some seeds workers answer their feed in pages of this many tasks, so full reports come
/// in pieces the proxy gathers (as with `--feed-page`); on the others in one answer.
const SMALL_FEED_PAGE: usize = 3;
/// At rest, a finished task a worker still keeps this long after its retention ended is one
/// the manager's acknowledgement never reached (a poll waits up to 20 s, a resync comes at
/// least every 30 s and a phase).
const DROP_SLACK: Duration = Duration::from_secs(90);

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
    /// A start or stop is carried out a second time, seconds later (a request a slow worker
    /// serves after its caller gave up): what a worker dropped, or stopped, may be asked
    /// for again long after.
    late: f64,
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
    /// The world healed: users give services that fail at once a good template.
    RepairServices,
    /// The healed world is at rest: check services, and roll each out once more.
    QuietRollouts,
    ManagerTimer(u64, Duration),
    ManagerCommit(u64),
    /// A message arrives at the scheduler.
    Sched(u64, SchedMsg),
    /// The scheduler's answer arrives at the manager.
    Placed(u64, Vec<(Uuid, Result<String, NoFit>)>, Room),
    Capacity(u64, Room),
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
    Restore(Vec<crate::actors::scheduler::Restored>),
    Place(Vec<PlaceRequest>),
    Release(Vec<Uuid>),
    Ready(String, bool),
    Capacity(String, Capacity),
    Facts(String, crate::actors::scheduler::PlacementFacts),
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
    /// A long-poll of the change feed, as the proxy's [`FeedReader`] makes it (with `acked`).
    Watch(WatchChanges),
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
            Body::Stats | Body::Watch(_) | Body::Start(_) | Body::Stop { .. }
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
    /// Where the next read of the feed starts, a full report's pages, and the `acked` the
    /// reads carry: the proxy's own pure reader.
    feed: FeedReader,
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
    /// Service changes waiting for their commit.
    service_answers: Vec<(u64, services::ServiceAnswer)>,
    last_commit: Duration,
    last_sched: Duration,
    /// Scheduler messages on their way, and placements on their way back.
    sched_in_flight: u32,
    health: BTreeMap<Uuid, u32>,
    /// When the core's timer is armed for.
    timer_at: Option<Duration>,
    /// Reports whose step each commit holds: once it is durable their marks go back to the
    /// proxies (`Recorded`, as the shell's `recorded_after`).
    recorded: BTreeMap<u64, Vec<(usize, FeedMark)>>,
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
    /// Stops answered in this step, (task, attempt): their tombstones are promised once the
    /// answers leave.
    fencing: Vec<(Uuid, u32)>,
}

struct Watcher {
    since: u64,
    page: Option<Page>,
    manager: u64,
    req: u64,
}

/// What a worker commit releases: records, runtime calls, and answers to requests.
struct WorkerHeld {
    held: Held<crate::actors::worker::core::Writes, WEffect>,
    replies: Vec<(u64, u64, Body)>,
    fences: Vec<(Uuid, u32)>,
}

#[derive(Default)]
struct WorkerDisk {
    tasks: BTreeMap<Uuid, Task>,
    stops: BTreeMap<Uuid, Tombstone>,
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
    /// What this worker promised to refuse: for each task, the highest attempt it answered a
    /// stop of or durably dropped, while that tombstone has not expired. No start of that
    /// attempt or an older one may be taken meanwhile.
    fenced: BTreeMap<Uuid, Fence>,
}

/// A promise of a worker's tombstone, as the world saw it made.
#[derive(Debug, Clone, Copy)]
struct Fence {
    attempt: u32,
    at: Duration,
    /// Made by dropping the attempt (else by answering a stop of it).
    dropped: bool,
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
    /// Odd seeds run the manager with a short retention, so collection happens amid the
    /// faults; even ones keep every task, as a long retention would.
    retention: bool,
    /// The workers' retention: short on seeds 2 and 3 modulo 4 (so workers drop what the
    /// manager acknowledged, and expire tombstones), long on the others.
    worker_retention: Duration,
    /// Most tasks a worker puts in one answer of its feed.
    feed_page: usize,
    rng: fastrand::Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    scheduled: BTreeMap<u64, Ev>,
    faults: Faults,
    manager: Option<ManagerProc>,
    manager_inc: u64,
    disk_tasks: BTreeMap<u64, Task>,
    disk_nodes: BTreeMap<String, crate::actors::manager::core::NodeRecord>,
    /// Service records, as the disk holds them.
    disk_services: BTreeMap<String, crate::service::Service>,
    /// Tombstones of collected tasks, as the disk holds them.
    disk_tombs: BTreeMap<Uuid, Collected>,
    /// Every task whose collection was written.
    collected_ever: BTreeSet<Uuid>,
    nodes: Vec<Node>,
    users: Users,
    /// Services and their users (on half the seeds).
    services: services::Services,
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
            late: [0.0, 0.02, 0.05][rng.usize(..3)],
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
                fenced: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            retention: seed % 2 == 1,
            worker_retention: match seed % 4 {
                2 => WORKER_RETENTION[0],
                3 => WORKER_RETENTION[1],
                _ => WORKER_RETENTION_LONG,
            },
            feed_page: if (seed / 4) % 2 == 1 {
                SMALL_FEED_PAGE
            } else {
                crate::actors::worker::DEFAULT_FEED_PAGE
            },
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
            disk_services: BTreeMap::new(),
            disk_tombs: BTreeMap::new(),
            collected_ever: BTreeSet::new(),
            nodes,
            users: Users::default(),
            services: services::Services::new(seed),
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
        world.schedule_quiet();
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
                Ev::ManagerCommit(_) | Ev::Sched(..) | Ev::Placed(..) | Ev::Capacity(..)
            );
            self.handle(ev);
            if check && self.violation.is_none() {
                self.check_always();
            }
            if self.violation.is_none() {
                self.check_quiet_rollouts();
            }
        }
        if self.violation.is_none() {
            self.now = end;
            self.check_at_rest();
        }
    }

    // ---- plumbing ---------------------------------------------------------------------

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
            Ev::Placed(_, p, _) => format!("manager ← placed {p:?}"),
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

    // ---- events -----------------------------------------------------------------------

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
            Ev::RepairServices => self.repair_services(),
            Ev::QuietRollouts => self.quiet_rollouts(),
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
            Ev::Placed(inc, placements, room) if Some(inc) == minc => {
                let now = self.now();
                if let Some(m) = self.manager.as_mut() {
                    m.sched_in_flight -= 1;
                    m.core.room_left(room);
                    m.core.placed(now, placements);
                }
                self.manager_step();
            }
            Ev::Capacity(inc, room) if Some(inc) == minc => {
                let now = self.now();
                if let Some(m) = self.manager.as_mut() {
                    m.sched_in_flight -= 1;
                    m.core.capacity_available(now, room);
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
                        more: false,
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
        // On seeds with services, a fifth of the actions are users' changes of services; the
        // other seeds draw exactly as before.
        let roll = if self.services.on && self.rng.u32(0..5) == 0 {
            None
        } else {
            Some(self.rng.u32(0..100))
        };
        let Some(roll) = roll else {
            self.user_service();
            let next = self.ms(10, 1500);
            return self.at(next, Ev::Chaos);
        };
        match roll {
            0..=32 => self.user_submit(),
            33..=34 => self.user_availability(),
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
        // Every node takes tasks again, so at rest what should run can run.
        self.activate_all();
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
        Body::Watch(q) => format!(
            "watch since {}{}",
            q.since,
            q.acked.map(|a| format!(", acked {a}")).unwrap_or_default()
        ),
        Body::Start(t) => format!("start {} attempt {}", t.id, t.attempt),
        Body::Stop { id, attempt } => format!("stop {id} attempt {attempt}"),
        Body::Name(n) => format!("stats of {n}"),
        Body::Changes(c) => format!(
            "{} changes{} to seq {}{}: {}",
            c.tasks.len(),
            if c.full { " (full)" } else { "" },
            c.seq,
            if c.more { " (more)" } else { "" },
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
        SchedMsg::Facts(n, f) => format!("{n} {} {:?}", f.availability, f.labels),
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

mod invariants;
mod manager;
mod services;
mod users;
mod workers;

#[cfg(test)]
mod tests;
