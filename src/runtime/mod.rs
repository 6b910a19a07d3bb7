//! Container runtimes: the one thing a worker does to the outside world.
//!
//! A [`Runtime`] creates, starts, stops, inspects and lists containers and reports their exits
//! as a stream of [`RuntimeEvent`]s. Two implementations exist: [`docker::DockerRuntime`]
//! (bollard, real containers) and [`fake::FakeRuntime`] (in memory, for simulation at scale and
//! scheduling tests). The worker never talks to Docker except through this trait, so both run the
//! same worker code.
//!
//! A runtime only ever lists, reports or touches containers labelled with its own worker name
//! (`cube.worker=<name>`). It mounts a task's named volumes, creating those missing (labelled
//! `cube.volume=<name>`) and never removing them, and its host paths only under the prefixes the
//! worker allows ([`check_host_paths`]), whatever the manager checked before.

pub mod docker;
pub mod fake;
pub mod timed;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use uuid::Uuid;

use crate::volume::{Volume, under};

/// Label naming the task a container belongs to.
pub const LABEL_TASK_ID: &str = "cube.task.id";
/// Label carrying the placement attempt the container was started for.
pub const LABEL_ATTEMPT: &str = "cube.attempt";
/// Label naming the worker that owns the container.
pub const LABEL_WORKER: &str = "cube.worker";
/// Label of a named volume Cube created, carrying its name: what a worker lists its volumes by.
/// Such a volume also carries `cube.worker`, naming the worker that created it.
pub const LABEL_VOLUME: &str = "cube.volume";

/// What can go wrong in a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present locally and could not be pulled.
    #[error("image {image} is not available: {reason}")]
    ImageUnavailable { image: String, reason: String },
    /// The container does not exist (any more).
    #[error("container {0} does not exist")]
    NoSuchContainer(String),
    /// A container with this name exists already (the same task and attempt was started before).
    #[error("a container named {0} exists already")]
    NameConflict(String),
    /// Docker (or the fake) refused the request.
    #[error("container runtime error: {0}")]
    Backend(String),
    /// The worker's own rules refuse the container as asked (a host port outside its range).
    #[error("{0}")]
    Refused(String),
}

/// Everything needed to create and start one container for one attempt of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name, `cube-<task id>-<attempt>`: unique, so a repeated start cannot make a copy.
    pub name: String,
    pub task_id: Uuid,
    pub attempt: u32,
    /// Name of the worker; becomes the `cube.worker` label.
    pub worker: String,
    pub image: String,
    /// Command; empty means the image's default.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// CPU limit in cores; 0 means none.
    pub cpu: f64,
    /// Memory limit in bytes; 0 means none.
    pub memory: u64,
    /// Container port (`"8080/tcp"`) → requested host port; `None` lets the runtime choose one.
    pub ports: BTreeMap<String, Option<String>>,
    /// Most processes the container may run at once.
    pub pids_limit: u64,
    /// What it mounts: named volumes (created when missing, kept after the container) and
    /// host paths (only under the worker's allowed prefixes).
    pub volumes: Vec<Volume>,
}

/// The first port of a worker's default host port range.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (20000, 32767);
/// Size at which a container's log file is rotated, in Docker's form.
pub const DEFAULT_LOG_MAX_SIZE: &str = "10m";
/// Rotated log files kept per container: with the size, the most a task's logs take on disk.
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// How a worker confines the containers it runs, whatever the task asks. Every container runs
/// with `no-new-privileges` and its task's pids limit; these are the worker's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// The host address published ports bind to (the worker's listen address by default, so a
    /// worker on loopback publishes on loopback).
    pub publish_address: String,
    /// Host ports come only from here, inclusive; a task asking for one outside is refused.
    pub port_range: (u16, u16),
    /// Docker's json-file rotation: size of a file (`10m`) and files kept.
    pub log_max_size: String,
    pub log_max_files: u32,
    /// Capabilities dropped besides Docker's defaults (`NET_RAW`, …).
    pub cap_drop: Vec<String>,
    /// Host paths a task may mount lie under one of these (`--allow-host-path`); none by
    /// default, so no task reaches the host's files.
    pub allowed_host_paths: Vec<String>,
}

impl Default for Hardening {
    fn default() -> Hardening {
        Hardening {
            publish_address: crate::DEFAULT_HOST.to_string(),
            port_range: DEFAULT_PORT_RANGE,
            log_max_size: DEFAULT_LOG_MAX_SIZE.to_string(),
            log_max_files: DEFAULT_LOG_MAX_FILES,
            cap_drop: Vec::new(),
            allowed_host_paths: Vec::new(),
        }
    }
}

impl Hardening {
    /// The host port to bind for a container port: the task's own, when it lies in the range,
    /// or the whole range for the engine to choose from.
    pub fn host_port(&self, asked: Option<&str>) -> Result<String, RuntimeError> {
        let (lo, hi) = self.port_range;
        match asked {
            None => Ok(format!("{lo}-{hi}")),
            Some(port) => match port.parse::<u16>() {
                Ok(p) if (lo..=hi).contains(&p) => Ok(port.to_string()),
                _ => Err(RuntimeError::Refused(format!(
                    "host port {port} is outside this worker's --port-range {lo}-{hi}; ask for one in it, or let the worker choose"
                ))),
            },
        }
    }
}

/// Refuse volumes whose host path lies under none of the `allowed` prefixes: the worker's own
/// check of what it mounts, whatever the manager checked before. Named volumes always pass.
pub fn check_host_paths(volumes: &[Volume], allowed: &[String]) -> Result<(), RuntimeError> {
    match volumes.iter().find(|v| !v.allowed_by(allowed)) {
        None => Ok(()),
        Some(v) => Err(RuntimeError::Refused(format!(
            "volume {v}: host path {} is not under a path this worker allows (--allow-host-path); it allows: {}",
            v.source,
            allowed_list(allowed)
        ))),
    }
}

/// The allowed prefixes as an error names them: `/a, /b`, or `none`.
pub fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none".to_string()
    } else {
        allowed.join(", ")
    }
}

/// Whether `path` lies under one of the `allowed` prefixes.
pub fn is_allowed(path: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|prefix| under(path, prefix))
}

/// A named volume Cube created on a worker's engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// When the engine created it, when it says.
    pub created_at: Option<DateTime<Utc>>,
}

impl ContainerSpec {
    /// The container name for an attempt of a task.
    pub fn container_name(task_id: Uuid, attempt: u32) -> String {
        format!("cube-{task_id}-{attempt}")
    }
}

/// A container port in Docker's `<port>/<protocol>` form: a bare `"8080"` means `"8080/tcp"`,
/// so specs written either way name the same port in [`ContainerStatus::host_ports`].
pub fn normalize_port(port: &str) -> String {
    if port.contains('/') {
        port.to_string()
    } else {
        format!("{port}/tcp")
    }
}

/// What a runtime knows about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub container_id: String,
    /// From the `cube.task.id` label.
    pub task_id: Uuid,
    /// From the `cube.attempt` label.
    pub attempt: u32,
    pub image: String,
    pub running: bool,
    /// Exit code once the container has ended.
    pub exit_code: Option<i64>,
    /// The kernel killed the container for exceeding its memory limit.
    pub oom_killed: bool,
    /// Why the runtime could not run it, when it says.
    pub error: Option<String>,
    /// Container port → host port, while it runs.
    pub host_ports: BTreeMap<String, String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A change the runtime observed on its own; the worker inspects the container for the details.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    /// A container of this worker ended (exited, was killed or OOM-killed).
    Exited { container_id: String },
    /// The event stream was interrupted and resumed: anything may have happened meanwhile, so
    /// the worker must reconcile with [`Runtime::list`].
    Resync,
}

/// A container runtime. Every method returns a `'static` future so the worker can run many
/// starts and stops concurrently without holding its own state across an `.await`.
pub trait Runtime: Send + Sync + 'static {
    /// `"docker"` or `"fake"`.
    fn kind(&self) -> &'static str;

    /// How often the worker should compare its table with [`Runtime::list`] besides on start
    /// and on [`RuntimeEvent::Resync`]: the safety net for an event the runtime lost without
    /// saying so. `None` when it cannot lose one.
    fn reconcile_every(&self) -> Option<Duration>;

    /// Make sure the image is present (pulling it only when missing), create the container with
    /// the spec's name, labels, limits and ports, start it, and return its status (with the host
    /// ports actually bound). Docker's own restart policy stays off: Cube restarts tasks itself.
    fn start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'static, Result<ContainerStatus, RuntimeError>>;

    /// Stop (SIGTERM, then SIGKILL after `timeout`) and remove the container. A container that is
    /// already gone is not an error.
    fn stop(
        &self,
        container_id: String,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// Remove an ended container (kept until now for its logs). Gone already is not an error.
    fn remove(&self, container_id: String) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// The container's current status; `Ok(None)` when it does not exist.
    fn inspect(
        &self,
        container_id: String,
    ) -> BoxFuture<'static, Result<Option<ContainerStatus>, RuntimeError>>;

    /// Every container, running or ended, that carries `cube.worker=<worker>`.
    fn list(
        &self,
        worker: String,
    ) -> BoxFuture<'static, Result<Vec<ContainerStatus>, RuntimeError>>;

    /// The container's output (stdout and stderr interleaved), the last `tail` lines when given,
    /// and on until the container ends when `follow`.
    fn logs(
        &self,
        container_id: String,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>>;

    /// The host path prefixes the worker's tasks may mount (`--allow-host-path`), as this
    /// runtime enforces them.
    fn allowed_host_paths(&self, worker: &str) -> Vec<String>;

    /// The named volumes Cube created on the worker's engine (labelled `cube.volume`), ordered
    /// by name. On an engine several workers share, every worker holds them all.
    fn volumes(&self, worker: String) -> BoxFuture<'static, Result<Vec<VolumeInfo>, RuntimeError>>;

    /// Exits of containers carrying `cube.worker=<worker>`, as they happen. The stream never ends
    /// on its own: after an interruption it reconnects and yields [`RuntimeEvent::Resync`].
    fn events(&self, worker: String) -> BoxStream<'static, RuntimeEvent>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_outside_the_allowed_prefixes_are_refused_by_name() {
        let volumes = |specs: &[&str]| -> Vec<Volume> {
            specs
                .iter()
                .map(|s| Volume::parse(s).expect("a volume"))
                .collect()
        };
        let none: Vec<String> = Vec::new();
        let err = check_host_paths(&volumes(&["data:/d", "/etc:/x"]), &none)
            .expect_err("/etc is allowed nowhere");
        assert_eq!(
            err.to_string(),
            "volume /etc:/x: host path /etc is not under a path this worker allows (--allow-host-path); it allows: none"
        );
        let allowed = vec!["/srv/data".to_string(), "/srv/logs".to_string()];
        let err = check_host_paths(&volumes(&["/srv/database:/x:ro"]), &allowed)
            .expect_err("a sibling is not under the prefix");
        assert!(
            err.to_string().ends_with(
                "volume /srv/database:/x:ro: host path /srv/database is not under a path this worker allows (--allow-host-path); it allows: /srv/data, /srv/logs"
            ),
            "{err}"
        );
        check_host_paths(&volumes(&["data:/d", "/srv/data/web:/w:ro"]), &allowed)
            .expect("named volumes and allowed paths pass");
    }
}
