//! Simulation: the real Manager, Scheduler and WorkerProxy actors and a real, durable store,
//! driving many in-process workers on the fake runtime. There is no second, simplified code
//! path: only the transport to the workers (actor messages instead of HTTP) and the runtime
//! (in memory instead of Docker) differ from a real cluster.
//!
//! [`run`] submits tasks through the Manager's own message API, as fast as the Manager accepts
//! them (each answer means "committed"), and measures the time from the first submission until
//! every task is Running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;

use crate::actors::manager::{CountTasks, ListNodes, NodeReport, Submit};
use crate::actors::policy::PolicyKind;
use crate::node::{Capacity, NodeStatus};
use crate::runtime::fake::FakeRuntime;
use crate::server::{ManagerActors, ManagerConfig, ServeError};
use crate::task::{State, Task};

/// Submissions waiting for their commit at once; enough to fill every group commit.
const IN_FLIGHT: usize = 4096;
/// How often the Manager is asked how many tasks run, once all are submitted.
const COUNT_EVERY: Duration = Duration::from_millis(25);
/// How often progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub workers: usize,
    pub tasks: usize,
    pub scheduler: PolicyKind,
    pub data_dir: PathBuf,
    /// Each simulated node's capacity.
    pub capacity: Capacity,
    /// What each task reserves.
    pub task_cpu: f64,
    pub task_memory: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Show progress on stderr.
    pub progress: bool,
}

/// The outcome, printed as the last line of `examples/simulate.rs`.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub workers: usize,
    pub tasks: usize,
    pub running: usize,
    pub seconds: f64,
    pub tasks_per_s: f64,
    pub scheduler: String,
}

/// What went wrong in a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("a simulated worker could not start: {0}")]
    Worker(#[from] crate::actors::worker::WorkerError),
    #[error("the manager stopped answering: {0}")]
    Mailbox(#[from] actix::MailboxError),
    #[error("a submission was refused: {0}")]
    Refused(#[from] crate::actors::manager::ManagerError),
    #[error("only {running} of {tasks} tasks were Running after {seconds:.1} s")]
    Timeout {
        running: usize,
        tasks: usize,
        seconds: f64,
    },
}

/// A running simulated cluster.
pub struct SimCluster {
    pub actors: ManagerActors,
    pub runtime: Arc<FakeRuntime>,
}

impl SimCluster {
    /// Start the manager on `config.data_dir` and `config.workers` in-process workers, and wait
    /// until every worker is Ready.
    pub async fn start(config: &SimConfig) -> Result<SimCluster, SimError> {
        let mut manager = ManagerConfig::new(&config.data_dir);
        manager.scheduler = config.scheduler;
        let actors = ManagerActors::start(&manager)?;
        let runtime = Arc::new(FakeRuntime::new(Duration::ZERO));
        for i in 0..config.workers {
            actors.add_local_worker(&format!("sim-{i:05}"), runtime.clone(), config.capacity)?;
        }
        let cluster = SimCluster { actors, runtime };
        let deadline = Instant::now() + config.timeout;
        loop {
            let nodes = cluster.nodes().await?;
            let ready = nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Ready && n.cpus > 0.0)
                .count();
            if ready == config.workers {
                break;
            }
            if Instant::now() > deadline {
                return Err(SimError::Timeout {
                    running: 0,
                    tasks: config.tasks,
                    seconds: config.timeout.as_secs_f64(),
                });
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeReport>, SimError> {
        Ok(self.actors.manager.send(ListNodes).await?)
    }

    pub async fn counts(&self) -> Result<BTreeMap<State, usize>, SimError> {
        Ok(self.actors.manager.send(CountTasks).await?)
    }
}

/// One task of the simulation.
fn sim_task(config: &SimConfig, n: usize) -> Task {
    let mut task = Task::new("cube-sim/task:latest");
    task.name = format!("sim-task-{n}");
    task.cpu = config.task_cpu;
    task.memory = config.task_memory;
    task
}

/// Run a whole simulation: start the cluster, submit every task, wait until all are Running.
pub async fn run(config: &SimConfig) -> Result<(SimReport, SimCluster), SimError> {
    let started = Instant::now();
    let cluster = SimCluster::start(config).await?;
    if config.progress {
        eprintln!(
            "{} workers ready in {:.1} s; submitting {} tasks ({})",
            config.workers,
            started.elapsed().as_secs_f64(),
            config.tasks,
            config.scheduler
        );
    }
    let manager = cluster.actors.manager.clone();
    let t0 = Instant::now();
    let mut next = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut last_progress = Instant::now();
    while next < config.tasks || !in_flight.is_empty() {
        while next < config.tasks && in_flight.len() < IN_FLIGHT {
            in_flight.push(manager.send(Submit(sim_task(config, next))));
            next += 1;
        }
        if let Some(res) = in_flight.next().await {
            res??;
        }
        if config.progress && last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("submitted {next}/{}", config.tasks);
            last_progress = Instant::now();
        }
    }
    let submitted_in = t0.elapsed();
    if config.progress {
        eprintln!(
            "all {} submissions committed in {:.2} s ({:.0}/s)",
            config.tasks,
            submitted_in.as_secs_f64(),
            config.tasks as f64 / submitted_in.as_secs_f64()
        );
    }
    let deadline = t0 + config.timeout;
    let running = loop {
        let counts = cluster.counts().await?;
        let running = counts.get(&State::Running).copied().unwrap_or(0);
        if running >= config.tasks {
            break running;
        }
        if Instant::now() > deadline {
            return Err(SimError::Timeout {
                running,
                tasks: config.tasks,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        if config.progress && last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("{counts:?}");
            last_progress = Instant::now();
        }
        // Counting is a walk over every task on the Manager's thread: often enough to time the
        // run to a few tens of milliseconds, rarely enough not to slow it.
        actix_web::rt::time::sleep(COUNT_EVERY).await;
    };
    let seconds = t0.elapsed().as_secs_f64();
    let report = SimReport {
        workers: config.workers,
        tasks: config.tasks,
        running,
        seconds: (seconds * 1000.0).round() / 1000.0,
        tasks_per_s: (config.tasks as f64 / seconds).round(),
        scheduler: config.scheduler.to_string(),
    };
    Ok((report, cluster))
}
