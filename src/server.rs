//! Starting Cube's processes as library calls: [`start_worker`] (and, in `manager`, the
//! manager). `main`, the tests and the examples all start them the same way; tests bind port 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::header;
use actix_web::{App, HttpServer, web};
use log::info;

use crate::actors::client::WorkerLink;
use crate::actors::events::EventHub;
use crate::actors::manager::{Connect, Manager, ManagerError, ManagerSetup};
use crate::actors::policy::PolicyKind;
use crate::actors::scheduler::Scheduler;
use crate::actors::worker::{
    DEFAULT_FEED_PAGE, DEFAULT_RETENTION, Worker, WorkerError, WorkerSetup,
};
use crate::db::{Store, StoreError};
use crate::http::auth::{self, Access, Role, Tokens};
use crate::http::manager::ManagerApi;
use crate::http::worker::WorkerApi;
use crate::node::{Capacity, StatsSampler};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Hardening, Runtime, RuntimeError};

mod join;
pub use join::JoinConfig;

use crate::tls::{self, TlsFiles};

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
    /// The configuration is refused, with the reason and what to do.
    #[error("{0}")]
    Config(String),
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
    /// How long the container of a finished task is kept for its logs; its record and
    /// tombstone are kept at least as long.
    pub retention: Duration,
    /// Most tasks in one answer of the change feed (a test knob: small pages with few tasks).
    pub feed_page: usize,
    /// Capacity a fake worker reports.
    pub fake_capacity: Capacity,
    /// How long a fake container takes to start.
    pub fake_start_delay: Duration,
    /// How the worker confines its containers (published address, port range, logs, caps).
    pub hardening: Hardening,
    /// The token its manager presents; `None` serves the API open (loopback only, unless
    /// `insecure`).
    pub cluster_token: Option<String>,
    /// Serve beyond loopback without a token.
    pub insecure: bool,
    /// Join this manager at start (`cube worker --join`).
    pub join: Option<join::JoinConfig>,
    /// Serve HTTPS with this certificate and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require callers' client certificates signed by this CA (mutual TLS); also trusted for
    /// the manager's certificate when joining over HTTPS.
    pub tls_ca: Option<PathBuf>,
    /// The size of its store's memory map, the most it may hold (`--store-size`).
    pub store_size: usize,
    /// Its labels (`--label zone=a`), which placement constraints match.
    pub labels: BTreeMap<String, String>,
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
            feed_page: DEFAULT_FEED_PAGE,
            fake_capacity: DEFAULT_FAKE_CAPACITY,
            fake_start_delay: Duration::ZERO,
            hardening: Hardening::default(),
            cluster_token: None,
            insecure: false,
            join: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            store_size: crate::db::DEFAULT_MAP_SIZE,
            labels: BTreeMap::new(),
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
    /// Serve until the server stops (the program decides what stops it: actix's own signal
    /// handling is off).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.await
    }

    /// Stop serving.
    pub async fn stop(&self) {
        self.server.handle().stop(true).await;
    }

    /// A handle that stops the server from elsewhere.
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// Time a client has to send a request's head (line and headers) once it connects.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to close after its connection is shut down.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a graceful stop ([`ManagerHandle::stop`], [`WorkerHandle::stop`]) waits for
/// requests in flight before it cuts them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long an idle keep-alive connection stays open. Longer than the manager's heartbeat
/// (1 s), so its connections to workers are reused.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Bind `host:port` (port 0 picks a free one), before serving: a worker that joins a manager
/// learns its port, and connections that arrive before it serves wait in the backlog.
fn bind(host: &str, port: u16) -> Result<std::net::TcpListener, ServeError> {
    let addr = format!("{host}:{port}");
    std::net::TcpListener::bind(&addr).map_err(|source| ServeError::Bind { addr, source })
}

/// Serve an API on `listener`: `configure` mounts the routes, anything else gets the JSON 404.
fn serve<F>(
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    threads: usize,
    access: Access,
    configure: F,
) -> Result<actix_web::dev::Server, ServeError>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let addr = listener
        .local_addr()
        .map_or_else(|_| "the listener".to_string(), |a| a.to_string());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(access.clone()))
            .wrap(actix_web::middleware::from_fn(auth::require_token))
            // The API's answers are data, never a page: a browser must not sniff them into
            // one, run them, or frame them (the dashboard's own answers set their policy).
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; frame-ancestors 'none'; sandbox",
                    )),
            )
            .configure(configure.clone())
            .default_service(web::to(crate::http::no_route))
    })
    .workers(threads)
    // A client that is slow to send its request head, or half-sends it, is answered 408 and
    // dropped; a connection costs no thread while it waits (every one is async), and a
    // request body gets its own deadline where it is read (`http::read_body`).
    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    .client_disconnect_timeout(DISCONNECT_TIMEOUT)
    .keep_alive(KEEP_ALIVE)
    // The embedding program decides what a signal does (`cube` stops at once, see
    // `cli::stop_on_signal`); a graceful stop waits this long at most for open requests, which
    // are mostly long-polls with nothing to lose: every answer given was durable first.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(server.run())
}

/// The scheme an API serves: `https` with TLS.
fn scheme(tls: &Option<rustls::ServerConfig>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// Certificate, key and CA flags as files, checked: a certificate needs its key.
pub fn tls_files(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    ca: Option<&PathBuf>,
) -> Result<Option<TlsFiles>, ServeError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.cloned(),
        })),
        (None, None) => Ok(None),
        _ => Err(ServeError::Config(
            "--tls-cert and --tls-key go together: give both, or neither".into(),
        )),
    }
}

fn local_addr(listener: &std::net::TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        addr: "the listener".into(),
        source,
    })
}

/// How the manager reaches its workers over HTTPS: trusting `--tls-ca`, presenting its own
/// certificate when it has one. `None`: plain HTTP.
fn worker_tls(config: &ManagerConfig) -> Result<Option<Arc<rustls::ClientConfig>>, ServeError> {
    let Some(ca) = &config.tls_ca else {
        return Ok(None);
    };
    let identity = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    tls::client_config(ca, identity)
        .map(|c| Some(Arc::new(c)))
        .map_err(ServeError::Config)
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
        RuntimeKind::Fake => {
            let fake = FakeRuntime::new(config.fake_start_delay);
            fake.allow_host_paths(&config.name, config.hardening.allowed_host_paths.clone());
            Arc::new(fake)
        }
    })
}

/// Start a worker: open its store, connect its runtime, start the actor (which reconciles with
/// the runtime) and serve its API. Must run inside an actix system.
pub async fn start_worker(config: WorkerConfig) -> Result<WorkerHandle, ServeError> {
    crate::node::check_name(&config.name)
        .map_err(|e| ServeError::Config(format!("the worker name {:?}: {e}", config.name)))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open_with_map_size(
        &config.data_dir,
        crate::actors::worker::TABLES,
        config.store_size,
    )?;
    let runtime_metrics = crate::metrics::RuntimeMetrics::default();
    let runtime: Arc<dyn Runtime> = Arc::new(crate::runtime::timed::Timed::new(
        open_runtime(&config).await?,
        runtime_metrics.clone(),
    ));
    let store_metrics = store.metrics();
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
        feed_page: config.feed_page,
    })?
    .with_labels(config.labels.clone())
    .start();

    let tls = tls_files(
        config.tls_cert.as_ref(),
        config.tls_key.as_ref(),
        config.tls_ca.as_ref(),
    )?
    .map(|files| tls::server_config(&files, files.ca.is_some()))
    .transpose()
    .map_err(ServeError::Config)?;
    let listener = bind(&config.host, config.port)?;
    let addr = local_addr(&listener)?;
    let mut cluster_token = config.cluster_token.clone();
    if let Some(join) = &config.join {
        let join_tls = match (join.manager.starts_with("https://"), &config.tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(Arc::new(
                tls::client_config(ca, None).map_err(ServeError::Config)?,
            )),
            (true, None) => {
                return Err(ServeError::Config(
                    "joining a manager over HTTPS needs --tls-ca, the CA that signed its certificate".into(),
                ));
            }
        };
        let presented = join::join(join, join_tls, &config.name, &config.host, addr.port())
            .await
            .map_err(ServeError::Config)?;
        match (&cluster_token, presented) {
            (None, presented) => cluster_token = presented,
            (Some(mine), Some(theirs)) if *mine != theirs => {
                return Err(ServeError::Config(
                    "the manager presents another cluster token than this worker's --cluster-token; give the worker the manager's, or none (it takes the manager's when it joins)".into(),
                ));
            }
            _ => {}
        }
    }
    let mut tokens = Tokens::default();
    if let Some(token) = &cluster_token {
        tokens.add(token, Role::Write).map_err(ServeError::Config)?;
    }
    auth::check_exposure("worker", &config.host, &tokens, config.insecure)
        .map_err(ServeError::Config)?;
    let api = WorkerApi {
        name: config.name.clone(),
        worker: worker.clone(),
        runtime_metrics,
        store_metrics,
    };
    let scheme = scheme(&tls);
    let server = serve(
        listener,
        tls,
        WORKER_HTTP_THREADS,
        Access(Arc::new(tokens)),
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(api.clone()))
                .configure(crate::http::worker::configure);
        },
    )?;
    info!(
        "worker {} listening on {scheme}://{addr} (runtime {:?}, data in {})",
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
    /// Finished tasks are kept this long, and at most this many, then collected.
    pub retention: Duration,
    pub retention_count: usize,
    /// The tokens its API accepts; none serves it open (loopback only, unless `insecure`).
    pub tokens: Tokens,
    /// The token it presents to its workers.
    pub cluster_token: Option<String>,
    /// Serve beyond loopback without tokens.
    pub insecure: bool,
    /// Serve HTTPS with this certificate and key; present them to workers as a client
    /// certificate.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Call workers over HTTPS, trusting this CA for their certificates.
    pub tls_ca: Option<PathBuf>,
    /// The size of its store's memory map, the most it may hold (`--store-size`).
    pub store_size: usize,
    /// Events the event stream keeps for clients that reconnect (`--event-buffer`).
    pub event_buffer: usize,
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
            retention: crate::actors::manager::core::DEFAULT_RETENTION,
            retention_count: crate::actors::manager::core::DEFAULT_RETENTION_COUNT,
            tokens: Tokens::default(),
            cluster_token: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            store_size: crate::db::DEFAULT_MAP_SIZE,
            event_buffer: crate::actors::events::DEFAULT_EVENT_BUFFER,
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
    /// The Manager's counters and histograms, and its store's.
    pub metrics: crate::metrics::ManagerMetrics,
    pub store_metrics: crate::metrics::StoreMetrics,
    /// The event stream's hub, on a thread of its own.
    pub events: Addr<EventHub>,
}

impl ManagerActors {
    /// Open the store, recover every task from it, and start the Manager and the Scheduler.
    pub fn start(config: &ManagerConfig) -> Result<ManagerActors, ServeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Store::open_with_map_size(
            &config.data_dir,
            crate::actors::manager::TABLES,
            config.store_size,
        )?;
        // The Manager and the Scheduler share a thread of their own, so that neither the caller
        // (an HTTP accept loop, a simulation's submitter) nor the workers' side slows them.
        let arbiter = Arbiter::new().handle();
        let workers_arbiter = Arbiter::new().handle();
        // The event hub numbers, keeps and serializes what the Manager committed on a thread
        // of its own, so that a burst of task records costs the Manager's thread one message.
        let capacity = config.event_buffer;
        let events =
            EventHub::start_in_arbiter(&Arbiter::new().handle(), move |_| EventHub::new(capacity));
        let policy = config.scheduler;
        let scheduler = Scheduler::start_in_arbiter(&arbiter, move |_| Scheduler::new(policy));
        let store_metrics = store.metrics();
        let manager = Manager::new(ManagerSetup {
            store,
            scheduler: scheduler.clone(),
            health_interval: config.health_interval,
            node_timeout: config.node_timeout,
            workers_arbiter: workers_arbiter.clone(),
            cluster_token: config.cluster_token.clone(),
            worker_tls: worker_tls(config)?,
            retention: config.retention,
            retention_count: config.retention_count,
            events: Some(events.clone()),
        })?;
        let metrics = manager.metrics();
        let manager = Manager::start_in_arbiter(&arbiter, move |_| manager);
        Ok(ManagerActors {
            manager,
            scheduler,
            workers_arbiter,
            metrics,
            store_metrics,
            events,
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
            feed_page: DEFAULT_FEED_PAGE,
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
    /// A handle that stops the server from elsewhere.
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serve until the server stops (the program decides what stops it: actix's own signal
    /// handling is off).
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
    let tls = tls_files(
        config.tls_cert.as_ref(),
        config.tls_key.as_ref(),
        config.tls_ca.as_ref(),
    )?
    .map(|files| tls::server_config(&files, false))
    .transpose()
    .map_err(ServeError::Config)?;
    let actors = ManagerActors::start(&config)?;
    for address in &config.workers {
        actors.add_worker(WorkerLink::http(address, config.tls_ca.is_some()));
    }
    auth::check_exposure("manager", &config.host, &config.tokens, config.insecure)
        .map_err(ServeError::Config)?;
    let api = ManagerApi {
        manager: actors.manager.clone(),
        metrics: actors.metrics.clone(),
        store_metrics: actors.store_metrics.clone(),
        events: actors.events.clone(),
    };
    let listener = bind(&config.host, config.port)?;
    let addr = local_addr(&listener)?;
    let scheme = scheme(&tls);
    // One set of dashboard sessions for every HTTP thread.
    let sessions = web::Data::new(crate::http::session::Sessions::new(tls.is_some()));
    let server = serve(
        listener,
        tls,
        MANAGER_HTTP_THREADS,
        Access(Arc::new(config.tokens.clone())),
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(api.clone()))
                .app_data(sessions.clone())
                .configure(crate::http::manager::configure)
                .configure(crate::http::ui::configure);
        },
    )?;
    info!(
        "manager listening on {scheme}://{addr} (scheduler {}, {} worker(s), data in {})",
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
