//! Prometheus metrics: what `GET /metrics` serves on both APIs, in the Prometheus text format
//! (version 0.0.4), encoded by `prometheus-client`.
//!
//! Two kinds of series. **Counters and histograms** are atomics bumped where things happen
//! (a submission in the HTTP handler, a commit on the store's writer thread, a long-poll in a
//! WorkerProxy): no lock and no allocation on those paths. **Gauges** (tasks by state, nodes,
//! services, the scheduler's book) are not kept anywhere: the `/metrics` handler asks the
//! actors at scrape time and writes the answers into a registry made for that scrape. The
//! manager's core counts what it decides (placements, restarts, failed health checks) in plain
//! integers ([`crate::actors::manager::core::Tally`]), read at scrape time as well.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `GET /metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds, in seconds, of the latency histograms: half a millisecond (an fsync on a fast
/// disk) to a minute (a task whose image is pulled).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds of the long-poll round trips, in seconds: an answer comes at once when the
/// worker has news, or after the poll's wait (tens of seconds) when it has none.
pub const POLL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Upper bounds of the group-commit sizes, in batches per transaction.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram whose observation is a few atomic adds, so threads that observe at once never
/// wait for each other (`prometheus-client`'s own histogram takes a mutex). Clones share it.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One count per bound, and one more for `+Inf`; not cumulative.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, as the bits of an `f64`.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramInner {
            bounds,
            buckets,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let h = &self.0;
        let i = h.bounds.partition_point(|&b| b < value);
        if let Some(bucket) = h.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        let _ = h
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observe a duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, read once, so `_count` and the `+Inf` bucket agree
        // even while observations go on.
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl prometheus_client::metrics::TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// A gauge of any value (`f64`), set at scrape time.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

/// A family of gauges by labels, filled at scrape time.
pub type Gauges = Family<Vec<(&'static str, String)>, GaugeF64>;

/// Set `name{labels} = value` in a family.
pub fn set(family: &Gauges, labels: &[(&'static str, &str)], value: f64) {
    let labels: Vec<(&'static str, String)> =
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    family.get_or_create(&labels).set(value);
}

/// A counter (`u64`), bumped with an atomic add.
pub type Count = Counter<u64, AtomicU64>;

/// What the store's writer thread measures of its group commits.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Batches in each committed transaction.
    pub commit_batch_size: Histogram,
    /// Time each transaction took to commit, its fsync included.
    pub fsync_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            commit_batch_size: Histogram::new(BATCH_BUCKETS),
            fsync_seconds: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl StoreMetrics {
    /// Add the store's series (`cube_store_…`) to a scrape.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cube_store_commit_batch_size",
            "Batches folded into one store transaction (group commit)",
            self.commit_batch_size.clone(),
        );
        registry.register(
            "cube_store_fsync_seconds",
            "Time a store transaction took to commit and fsync",
            self.fsync_seconds.clone(),
        );
    }
}

/// The manager's counters and histograms, bumped where things happen. Clones share them.
#[derive(Clone, Debug)]
pub struct ManagerMetrics {
    /// `POST /tasks` answered with a new task (201).
    pub submissions: Count,
    /// `POST /tasks` received to its commit (201 or 200).
    pub submit_commit_seconds: Histogram,
    /// A task's creation to the first report of it Running.
    pub submit_running_seconds: Histogram,
    /// One long-poll of a worker's change feed, sent to answered, by worker.
    pub worker_poll_seconds: PerWorker,
}

/// Histograms by worker (`{node="w1"}`); a proxy takes its worker's once and observes into it
/// with no lock.
pub type PerWorker = Family<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>;

fn poll_histogram() -> Histogram {
    Histogram::new(POLL_BUCKETS)
}

/// The histogram of worker `node` in a [`PerWorker`] family.
pub fn of_worker(family: &PerWorker, node: &str) -> Histogram {
    family
        .get_or_create(&vec![("node", node.to_owned())])
        .clone()
}

impl Default for ManagerMetrics {
    fn default() -> ManagerMetrics {
        ManagerMetrics {
            submissions: Count::default(),
            submit_commit_seconds: Histogram::new(LATENCY_BUCKETS),
            submit_running_seconds: Histogram::new(LATENCY_BUCKETS),
            worker_poll_seconds: Family::new_with_constructor(poll_histogram),
        }
    }
}

impl ManagerMetrics {
    /// Add these series to a scrape.
    pub fn register(&self, registry: &mut Registry) {
        // `prometheus-client` adds `_total` to a counter's name.
        registry.register(
            "cube_submissions",
            "Tasks submitted (POST /tasks answered 201)",
            self.submissions.clone(),
        );
        registry.register(
            "cube_submit_commit_seconds",
            "POST /tasks received to its record committed",
            self.submit_commit_seconds.clone(),
        );
        registry.register(
            "cube_submit_running_seconds",
            "A task's creation to the first report of it Running",
            self.submit_running_seconds.clone(),
        );
        registry.register(
            "cube_worker_poll_seconds",
            "Round trip of one long-poll of a worker's change feed, by worker",
            self.worker_poll_seconds.clone(),
        );
    }
}

/// The worker's histograms of runtime (Docker) calls, by call.
#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    calls: Arc<[(&'static str, Histogram)]>,
}

/// The runtime calls timed, as the `call` label names them.
/// `start` pulls a missing image, creates and starts the container.
pub const RUNTIME_CALLS: &[&str] = &["start", "stop", "remove", "inspect", "list", "volumes"];

impl Default for RuntimeMetrics {
    fn default() -> RuntimeMetrics {
        RuntimeMetrics {
            calls: RUNTIME_CALLS
                .iter()
                .map(|&c| (c, Histogram::new(LATENCY_BUCKETS)))
                .collect(),
        }
    }
}

impl RuntimeMetrics {
    /// Observe one call (one of [`RUNTIME_CALLS`]; another name is ignored).
    pub fn observe(&self, call: &str, took: Duration) {
        if let Some((_, h)) = self.calls.iter().find(|(c, _)| *c == call) {
            h.observe_duration(took);
        }
    }

    /// The histogram of one call.
    pub fn call(&self, call: &str) -> Option<&Histogram> {
        self.calls.iter().find(|(c, _)| *c == call).map(|(_, h)| h)
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cube_docker_call_seconds",
            "Runtime (Docker) calls by call",
            ByCall(self.calls.clone()),
        );
    }
}

/// The histograms of [`RuntimeMetrics`] as one family labelled `call`.
#[derive(Debug)]
struct ByCall(Arc<[(&'static str, Histogram)]>);

impl EncodeMetric for ByCall {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (call, h) in self.0.iter() {
            let labels = [("call", *call)];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Add `process_resident_memory_bytes` and `process_cpu_seconds_total` of this process.
pub fn register_process(registry: &mut Registry) {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let Ok(pid) = sysinfo::get_current_pid() else {
        return;
    };
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    let Some(process) = system.process(pid) else {
        return;
    };
    let rss = GaugeF64::default();
    rss.set(process.memory() as f64);
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory of this process",
        rss,
    );
    let cpu = prometheus_client::metrics::counter::ConstCounter::new(
        process.accumulated_cpu_time() as f64 / 1000.0,
    );
    registry.register(
        "process_cpu_seconds",
        "User and system CPU time this process has used",
        cpu,
    );
}

/// A scrape's registry, encoded in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error would come from a metric's own encoder.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        log::warn!("metrics: could not encode a scrape: {e}");
    }
    out
}

/// The manager's scrape: its counters and histograms, and gauges from what the actors answered
/// (tasks by state and the core's tally, every node with its booking, every service).
pub fn manager_registry(
    metrics: &ManagerMetrics,
    store: &StoreMetrics,
    scrape: &crate::actors::manager::ManagerScrape,
    nodes: &[crate::actors::manager::NodeReport],
    services: &[crate::service::ServiceView],
    now: chrono::DateTime<chrono::Utc>,
) -> Registry {
    use crate::node::NodeStatus;
    use crate::service::RolloutState;
    use crate::task::State;
    use prometheus_client::metrics::counter::ConstCounter;

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    store.register(&mut registry);
    register_process(&mut registry);

    let tasks = Gauges::default();
    for state in State::ALL {
        let n = scrape.counts.get(state.index()).copied().unwrap_or(0);
        set(&tasks, &[("state", state.as_str())], n as f64);
    }
    registry.register("cube_tasks", "Tasks the manager knows, by state", tasks);
    let tally = scrape.tally;
    registry.register(
        "cube_placements",
        "Attempts placed on a node (restarts and moves included)",
        ConstCounter::new(tally.placements),
    );
    registry.register(
        "cube_task_restarts",
        "Attempts started again by a task's restart policy",
        ConstCounter::new(tally.restarts),
    );
    registry.register(
        "cube_health_check_failures",
        "Health checks of running tasks that failed",
        ConstCounter::new(tally.health_check_failures),
    );

    let by_status = Gauges::default();
    for status in [
        NodeStatus::Connecting,
        NodeStatus::Ready,
        NodeStatus::Down,
        NodeStatus::Refused,
    ] {
        let n = nodes.iter().filter(|n| n.status == status).count();
        set(&by_status, &[("status", status_name(status))], n as f64);
    }
    registry.register(
        "cube_nodes",
        "Workers the manager knows, by status",
        by_status,
    );
    let allocated = Gauges::default();
    let capacity = Gauges::default();
    let age = Gauges::default();
    for n in nodes {
        let name = n.name.as_str();
        for (resource, cap, alloc) in [
            ("cpu", n.cpus, n.cpu_allocated),
            ("memory_bytes", n.memory as f64, n.memory_allocated as f64),
            ("disk_bytes", n.disk as f64, n.disk_allocated as f64),
        ] {
            set(&capacity, &[("node", name), ("resource", resource)], cap);
            set(&allocated, &[("node", name), ("resource", resource)], alloc);
        }
        if let Some(seen) = n.last_seen {
            let secs = (now - seen).to_std().map_or(0.0, |d| d.as_secs_f64());
            set(&age, &[("node", name)], secs);
        }
    }
    registry.register(
        "cube_node_capacity",
        "What a worker has (cpu in cores, memory and disk in bytes)",
        capacity,
    );
    registry.register(
        "cube_node_allocated",
        "What the scheduler has booked on a worker (cpu in cores, memory and disk in bytes)",
        allocated,
    );
    registry.register(
        "cube_worker_heartbeat_age_seconds",
        "Time since a worker last answered",
        age,
    );

    let count = GaugeF64::default();
    count.set(services.len() as f64);
    registry.register("cube_services", "Services the manager knows", count);
    let desired = Gauges::default();
    let running = Gauges::default();
    let rollout = Gauges::default();
    for s in services {
        let name = s.name.as_str();
        set(&desired, &[("service", name)], s.desired as f64);
        set(&running, &[("service", name)], s.running as f64);
        for state in [
            RolloutState::Completed,
            RolloutState::Updating,
            RolloutState::Paused,
            RolloutState::RollingBack,
            RolloutState::RolledBack,
        ] {
            let current = if s.rollout.state == state { 1.0 } else { 0.0 };
            set(
                &rollout,
                &[("service", name), ("state", state.as_str())],
                current,
            );
        }
    }
    registry.register(
        "cube_service_desired_tasks",
        "Tasks a service should run now",
        desired,
    );
    registry.register(
        "cube_service_running_tasks",
        "A service's tasks that run now",
        running,
    );
    registry.register(
        "cube_service_rollout",
        "A service's rollout state: 1 for the current one",
        rollout,
    );
    registry
}

fn status_name(status: crate::node::NodeStatus) -> &'static str {
    use crate::node::NodeStatus;
    match status {
        NodeStatus::Connecting => "Connecting",
        NodeStatus::Ready => "Ready",
        NodeStatus::Down => "Down",
        NodeStatus::Refused => "Refused",
    }
}

/// A worker's scrape: its tasks by state, its runtime calls and its store's commits.
pub fn worker_registry(
    runtime: &RuntimeMetrics,
    store: Option<&StoreMetrics>,
    counts: &[(crate::task::State, usize)],
) -> Registry {
    let mut registry = Registry::default();
    let tasks = Gauges::default();
    for state in crate::task::State::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        set(&tasks, &[("state", state.as_str())], n as f64);
    }
    registry.register(
        "cube_worker_tasks",
        "Tasks this worker keeps, by state",
        tasks,
    );
    runtime.register(&mut registry);
    if let Some(store) = store {
        store.register(&mut registry);
    }
    register_process(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::manager::ManagerScrape;
    use crate::actors::manager::core::Tally;
    use crate::task::State;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses")
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    }

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_in_the_sum() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("cube_x_seconds", "x", h.clone());
        let text = encode(&registry);
        assert!(
            text.contains("cube_x_seconds_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cube_x_seconds_bucket{le=\"10\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("cube_x_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        let scrape = parse(&text);
        assert_eq!(value(&scrape, "cube_x_seconds_count", &[]), 4.0);
        assert_eq!(value(&scrape, "cube_x_seconds_sum", &[]), 56.5);
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn the_manager_scrape_shows_the_cores_counts_and_tally() {
        let mut counts = [0usize; State::COUNT];
        counts[State::Running.index()] = 3;
        counts[State::Pending.index()] = 1;
        let scrape = ManagerScrape {
            counts,
            tally: Tally {
                placements: 5,
                restarts: 2,
                health_check_failures: 7,
            },
        };
        let metrics = ManagerMetrics::default();
        metrics.submissions.inc();
        metrics
            .submit_commit_seconds
            .observe_duration(Duration::from_millis(3));
        let registry = manager_registry(
            &metrics,
            &StoreMetrics::default(),
            &scrape,
            &[],
            &[],
            chrono::Utc::now(),
        );
        let text = encode(&registry);
        let parsed = parse(&text);
        assert_eq!(value(&parsed, "cube_tasks", &[("state", "Running")]), 3.0);
        assert_eq!(value(&parsed, "cube_tasks", &[("state", "Pending")]), 1.0);
        assert_eq!(value(&parsed, "cube_tasks", &[("state", "Failed")]), 0.0);
        assert_eq!(value(&parsed, "cube_placements_total", &[]), 5.0);
        assert_eq!(value(&parsed, "cube_task_restarts_total", &[]), 2.0);
        assert_eq!(value(&parsed, "cube_health_check_failures_total", &[]), 7.0);
        assert_eq!(value(&parsed, "cube_submissions_total", &[]), 1.0);
        assert_eq!(value(&parsed, "cube_submit_commit_seconds_count", &[]), 1.0);
        assert_eq!(value(&parsed, "cube_nodes", &[("status", "Ready")]), 0.0);
        assert_eq!(value(&parsed, "cube_services", &[]), 0.0);
        assert!(value(&parsed, "process_resident_memory_bytes", &[]) > 0.0);
    }

    #[test]
    fn the_worker_scrape_labels_runtime_calls_by_name() {
        let runtime = RuntimeMetrics::default();
        runtime.observe("start", Duration::from_millis(20));
        runtime.observe("start", Duration::from_millis(40));
        runtime.observe("no such call", Duration::from_millis(1));
        let registry = worker_registry(&runtime, None, &[(State::Running, 2)]);
        let parsed = parse(&encode(&registry));
        assert_eq!(
            value(
                &parsed,
                "cube_docker_call_seconds_count",
                &[("call", "start")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &parsed,
                "cube_docker_call_seconds_count",
                &[("call", "stop")]
            ),
            0.0
        );
        assert_eq!(
            value(&parsed, "cube_worker_tasks", &[("state", "Running")]),
            2.0
        );
        assert!(value(&parsed, "process_cpu_seconds_total", &[]) >= 0.0);
    }
}
