//! Starting Cube's processes as library calls: [`start_worker`] (and, in `manager`, the
//! manager). `main`, the tests and the examples all start them the same way; tests bind port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{App, HttpServer, web};
use log::info;

use crate::actors::client::WorkerLink;
use crate::actors::manager::{Connect, Manager, ManagerError, ManagerSetup};
use crate::actors::policy::PolicyKind;
use crate::actors::scheduler::Scheduler;
use crate::actors::worker::{DEFAULT_RETENTION, Worker, WorkerError, WorkerSetup};
use crate::db::{Store, StoreError};
use crate::http::manager::ManagerApi;
use crate::http::worker::WorkerApi;
use crate::node::{Capacity, StatsSampler};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Hardening, Runtime, RuntimeError};

/// Threads serving a worker's HTTP API; its handlers only forward to the actor.
const WORKER_HTTP_THREADS: usize = 2;

/// What failed while starting a process.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach Docker: {0}; is the Docker daemon running and is its socket readable?")]
    Docker(RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// Which runtime a worker runs containers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Real containers through the Docker Engine API.
    Docker,
    /// In-memory containers, for simulation and scheduling tests.
    Fake,
}

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Stable across restarts: it labels the worker's containers and names its store.
    pub name: String,
    pub data_dir: PathBuf,
    pub runtime: RuntimeKind,
    /// How long the container of a finished task is kept for its logs.
    pub retention: Duration,
    /// Capacity a fake worker reports.
    pub fake_capacity: Capacity,
    /// How long a fake container takes to start.
    pub fake_start_delay: Duration,
    /// How the worker confines its containers (published address, port range, logs, caps).
    pub hardening: Hardening,
}

impl WorkerConfig {
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> WorkerConfig {
        WorkerConfig {
            host: crate::DEFAULT_HOST.into(),
            port: crate::DEFAULT_WORKER_PORT,
            name: name.into(),
            data_dir: data_dir.into(),
            runtime: RuntimeKind::Docker,
            retention: DEFAULT_RETENTION,
            fake_capacity: DEFAULT_FAKE_CAPACITY,
            fake_start_delay: Duration::ZERO,
            hardening: Hardening::default(),
        }
    }
}

/// What a simulated node offers: 4 cores, 8 GiB of memory, 100 GiB of disk.
pub const DEFAULT_FAKE_CAPACITY: Capacity = Capacity {
    cpus: 4.0,
    memory: 8 << 30,
    disk: 100 << 30,
};

/// A running worker process.
pub struct WorkerHandle {
    /// Where its API listens.
    pub addr: SocketAddr,
    pub name: String,
    pub worker: Addr<Worker>,
    server: actix_web::dev::Server,
}

impl WorkerHandle {
    /// Serve until the server stops (SIGINT or SIGTERM stop it gracefully).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.await
    }

    /// Stop serving.
    pub async fn stop(&self) {
        self.server.handle().stop(true).await;
    }
}

/// Bind an API on `host:port` and start serving it: `configure` mounts the routes, anything
/// else gets the JSON 404. Returns the address bound (port 0 picks a free one).
fn serve<F>(
    host: &str,
    port: u16,
    threads: usize,
    configure: F,
) -> Result<(SocketAddr, actix_web::dev::Server), ServeError>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let bind_addr = format!("{host}:{port}");
    let server = HttpServer::new(move || {
        App::new()
            .configure(configure.clone())
            .default_service(web::to(crate::http::no_route))
    })
    .workers(threads)
    .bind(&bind_addr)
    .map_err(|source| ServeError::Bind {
        addr: bind_addr.clone(),
        source,
    })?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| ServeError::Bind {
            addr: bind_addr.clone(),
            source: std::io::Error::other("no address bound"),
        })?;
    Ok((addr, server.run()))
}

/// Open the runtime a worker was asked for.
pub async fn open_runtime(config: &WorkerConfig) -> Result<Arc<dyn Runtime>, ServeError> {
    Ok(match config.runtime {
        RuntimeKind::Docker => Arc::new(
            crate::runtime::docker::connect()
                .await
                .map_err(ServeError::Docker)?
                .with_hardening(config.hardening.clone()),
        ),
        RuntimeKind::Fake => Arc::new(FakeRuntime::new(config.fake_start_delay)),
    })
}

/// Start a worker: open its store, connect its runtime, start the actor (which reconciles with
/// the runtime) and serve its API. Must run inside an actix system.
pub async fn start_worker(config: WorkerConfig) -> Result<WorkerHandle, ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&config.data_dir, crate::actors::worker::TABLES)?;
    let runtime = open_runtime(&config).await?;
    let sampler = match config.runtime {
        RuntimeKind::Docker => {
            let dir = config.data_dir.clone();
            Some(SyncArbiter::start(1, move || StatsSampler::new(&dir)))
        }
        RuntimeKind::Fake => None,
    };
    let worker = Worker::new(WorkerSetup {
        name: config.name.clone(),
        runtime: runtime.clone(),
        store: Some(store),
        sampler,
        capacity: config.fake_capacity,
        retention: config.retention,
    })?
    .start();

    crate::http::warn_if_exposed("worker", &config.host);
    let api = WorkerApi {
        name: config.name.clone(),
        worker: worker.clone(),
    };
    let (addr, server) = serve(
        &config.host,
        config.port,
        WORKER_HTTP_THREADS,
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(api.clone()))
                .configure(crate::http::worker::configure);
        },
    )?;
    info!(
        "worker {} listening on http://{addr} (runtime {:?}, data in {})",
        config.name,
        config.runtime,
        config.data_dir.display()
    );
    Ok(WorkerHandle {
        addr,
        name: config.name,
        worker,
        server,
    })
}

/// Threads serving the manager's HTTP API.
const MANAGER_HTTP_THREADS: usize = 2;
/// Default seconds between health checks of a task.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default silence after which a worker is Down.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Worker addresses, `host:port`.
    pub workers: Vec<String>,
    pub scheduler: PolicyKind,
    pub data_dir: PathBuf,
    pub health_interval: Duration,
    pub node_timeout: Duration,
}

impl ManagerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ManagerConfig {
        ManagerConfig {
            host: crate::DEFAULT_HOST.into(),
            port: crate::DEFAULT_MANAGER_PORT,
            workers: Vec::new(),
            scheduler: PolicyKind::default(),
            data_dir: data_dir.into(),
            health_interval: DEFAULT_HEALTH_INTERVAL,
            node_timeout: DEFAULT_NODE_TIMEOUT,
        }
    }
}

/// The actors of a manager, without HTTP: what an embedding program or a simulation drives
/// through messages.
#[derive(Clone)]
pub struct ManagerActors {
    pub manager: Addr<Manager>,
    pub scheduler: Addr<Scheduler>,
    /// The thread the WorkerProxies (and in-process workers) run on, beside the Manager's, so
    /// talking to thousands of workers never queues behind the Manager's own work.
    pub workers_arbiter: actix::dev::ArbiterHandle,
}

impl ManagerActors {
    /// Open the store, recover every task from it, and start the Manager and the Scheduler.
    pub fn start(config: &ManagerConfig) -> Result<ManagerActors, ServeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Store::open(&config.data_dir, crate::actors::manager::TABLES)?;
        // The Manager and the Scheduler share a thread of their own, so that neither the caller
        // (an HTTP accept loop, a simulation's submitter) nor the workers' side slows them.
        let arbiter = Arbiter::new().handle();
        let workers_arbiter = Arbiter::new().handle();
        let policy = config.scheduler;
        let scheduler = Scheduler::start_in_arbiter(&arbiter, move |_| Scheduler::new(policy));
        let manager = Manager::new(ManagerSetup {
            store,
            scheduler: scheduler.clone(),
            health_interval: config.health_interval,
            node_timeout: config.node_timeout,
            workers_arbiter: workers_arbiter.clone(),
        })?;
        let manager = Manager::start_in_arbiter(&arbiter, move |_| manager);
        Ok(ManagerActors {
            manager,
            scheduler,
            workers_arbiter,
        })
    }

    /// Connect a worker: a WorkerProxy that learns its name and registers it.
    pub fn add_worker(&self, link: WorkerLink) {
        self.manager.do_send(Connect(link));
    }

    /// Start an in-process worker (no HTTP, no store of its own) on the workers' thread and
    /// connect it: the simulation's building block.
    pub fn add_local_worker(
        &self,
        name: &str,
        runtime: Arc<dyn Runtime>,
        capacity: Capacity,
    ) -> Result<Addr<Worker>, WorkerError> {
        let worker = Worker::new(WorkerSetup {
            name: name.to_string(),
            runtime,
            store: None,
            sampler: None,
            capacity,
            retention: DEFAULT_RETENTION,
        })?;
        let addr = Worker::start_in_arbiter(&self.workers_arbiter, move |_| worker);
        self.add_worker(WorkerLink::Local(addr.clone(), name.to_string()));
        Ok(addr)
    }
}

/// A running manager.
pub struct ManagerHandle {
    pub addr: SocketAddr,
    pub actors: ManagerActors,
    server: actix_web::dev::Server,
}

impl ManagerHandle {
    /// Serve until the server stops (SIGINT or SIGTERM stop it gracefully).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.await
    }

    /// Stop serving.
    pub async fn stop(&self) {
        self.server.handle().stop(true).await;
    }
}

/// Start a manager: recover from its store, connect to the configured workers and serve its
/// API. Must run inside an actix system.
pub async fn start_manager(config: ManagerConfig) -> Result<ManagerHandle, ServeError> {
    let actors = ManagerActors::start(&config)?;
    for address in &config.workers {
        let url = if address.starts_with("http://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{address}")
        };
        actors.add_worker(WorkerLink::Http(url));
    }
    crate::http::warn_if_exposed("manager", &config.host);
    let api = ManagerApi {
        manager: actors.manager.clone(),
    };
    let (addr, server) = serve(
        &config.host,
        config.port,
        MANAGER_HTTP_THREADS,
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(api.clone()))
                .configure(crate::http::manager::configure);
        },
    )?;
    info!(
        "manager listening on http://{addr} (scheduler {}, {} worker(s), data in {})",
        config.scheduler,
        config.workers.len(),
        config.data_dir.display()
    );
    Ok(ManagerHandle {
        addr,
        actors,
        server,
    })
}
