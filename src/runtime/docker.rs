//! The Docker runtime: real containers through the Docker Engine API (bollard).
//!
//! [`DockerRuntime`] owns the translation between a [`ContainerSpec`] and Docker's create body,
//! between Docker's inspect document and a [`ContainerStatus`], and the long-lived, self-healing
//! event subscription behind [`Runtime::events`]. It only lists and reports containers labelled
//! `cube.worker=<worker>`. It creates a task's missing named volumes (labelled `cube.volume` and
//! `cube.worker`) and never removes them, and bind-mounts host paths only under the allowed
//! prefixes, also once symbolic links are resolved. It also owns the helper that builds the small
//! busybox test image.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EventMessage, HostConfig, HostConfigLogConfig,
    Mount, MountType, MountVolumeOptions, PortBinding, PortMap, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, Stream};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use log::{debug, info, warn};
use uuid::Uuid;

use super::{
    ContainerSpec, ContainerStatus, Hardening, LABEL_ATTEMPT, LABEL_TASK_ID, LABEL_VOLUME,
    LABEL_WORKER, Runtime, RuntimeError, RuntimeEvent, VolumeInfo, allowed_list, check_host_paths,
    is_allowed, normalize_port,
};
use crate::volume::Volume;

/// First wait before reopening a broken event stream.
const EVENTS_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to reopen the event stream.
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An event stream that stayed open this long was healthy: its failure starts the backoff afresh
/// instead of continuing to double it.
const EVENTS_STABLE_AFTER: Duration = Duration::from_secs(10);
/// Upper bound for pulling a missing image, so a stalled registry cannot hang a start forever
/// (bollard's own timeout only covers the response headers, not the progress stream).
const IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Time granted to Docker's stop request beyond the container's own grace period (Docker answers
/// only once the container is gone, and bollard times the whole request out otherwise).
const STOP_REQUEST_MARGIN: Duration = Duration::from_secs(30);
/// How many containers [`Runtime::list`] inspects at once.
const LIST_INSPECT_CONCURRENCY: usize = 8;
/// How often a worker compares its table with the containers Docker lists.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// Docker reports an unset `StartedAt`/`FinishedAt` as Go's zero time.
const DOCKER_ZERO_TIME_PREFIX: &str = "0001-01-01";

/// Containers through the local Docker engine. Cheap to clone: all clones share one connection
/// pool.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    docker: Docker,
    hardening: Arc<Hardening>,
}

/// Connect to the local Docker engine (`DOCKER_HOST` when it names a unix socket, otherwise
/// `/var/run/docker.sock`) and agree on an API version it supports.
///
/// Negotiation matters: bollard speaks a newer API than older engines (Docker 20.10 stops at
/// 1.41) and the engine rejects requests for versions it does not know.
pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
    let docker = Docker::connect_with_local_defaults().map_err(|e| {
        RuntimeError::Backend(format!("cannot connect to Docker: {}", describe(&e)))
    })?;
    let docker = docker.negotiate_version().await.map_err(|e| {
        RuntimeError::Backend(format!(
            "cannot negotiate the Docker API version: {}",
            describe(&e)
        ))
    })?;
    info!(
        "connected to Docker, API version {}",
        docker.client_version()
    );
    Ok(DockerRuntime::from_docker(docker))
}

impl DockerRuntime {
    /// Wrap an existing bollard client (its API version should already be negotiated).
    pub fn from_docker(docker: Docker) -> Self {
        Self {
            docker,
            hardening: Arc::new(Hardening::default()),
        }
    }

    /// The same engine, confining containers as `hardening` says.
    pub fn with_hardening(self, hardening: Hardening) -> Self {
        Self {
            hardening: Arc::new(hardening),
            ..self
        }
    }

    /// The underlying bollard client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Whether the image is present locally (no pull).
    pub async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(backend(&format!("inspect image {image}"), &e)),
        }
    }

    /// Build the image `tag` from nothing but a static busybox binary: `FROM scratch`, the binary
    /// as `/bin/busybox`, and its applets installed as symlinks in `/bin`. Used by tests and demos
    /// on machines without a registry. Uses the classic builder; any error the build reports is
    /// returned.
    pub async fn build_busybox_image(
        &self,
        tag: &str,
        busybox_path: &Path,
    ) -> Result<(), RuntimeError> {
        let path = busybox_path.to_path_buf();
        // Reading a ~2 MB binary and packing it is blocking file I/O: keep it off the reactor.
        let context = tokio::task::spawn_blocking(move || busybox_build_context(&path))
            .await
            .map_err(|e| {
                RuntimeError::Backend(format!("building the busybox context failed: {e}"))
            })?
            .map_err(|e| {
                RuntimeError::Backend(format!(
                    "cannot pack {} into a build context: {e}",
                    busybox_path.display()
                ))
            })?;

        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut progress = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(Bytes::from(context))),
        );
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| backend(&format!("build image {tag}"), &e))?;
            // bollard turns an error detail with a message into Err; one without a message is
            // still a failed build.
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::Backend(format!(
                    "build image {tag}: {}",
                    detail
                        .message
                        .unwrap_or_else(|| format!("error code {:?}", detail.code))
                )));
            }
            if let Some(line) = info
                .stream
                .as_deref()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
            {
                debug!("build {tag}: {line}");
            }
        }
        info!("built image {tag} from {}", busybox_path.display());
        Ok(())
    }

    /// Make sure the image is present, pulling it only when it is missing.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_exists(image).await? {
            return Ok(());
        }
        info!("image {image} is not present, pulling it");
        let (from_image, tag) = split_image_reference(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(&from_image)
            .tag(&tag)
            .build();
        let pull = self
            .docker
            .create_image(Some(options), None, None)
            .try_for_each(|info| {
                if let Some(status) = info.status {
                    debug!("pull {image}: {status}");
                }
                futures_util::future::ready(Ok(()))
            });
        let unavailable = |reason: String| RuntimeError::ImageUnavailable {
            image: image.to_string(),
            reason,
        };
        match tokio::time::timeout(IMAGE_PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => {
                info!("pulled image {image}");
                Ok(())
            }
            Ok(Err(e)) => {
                warn!("cannot pull image {image}: {}", describe(&e));
                Err(unavailable(docker_message(&e)))
            }
            Err(_) => Err(unavailable(format!(
                "pull did not finish within {IMAGE_PULL_TIMEOUT:?}"
            ))),
        }
    }

    async fn start_container(&self, spec: ContainerSpec) -> Result<ContainerStatus, RuntimeError> {
        let allowed = &self.hardening.allowed_host_paths;
        check_host_paths(&spec.volumes, allowed)?;
        // Quick system calls on local paths (never a network round trip), so done in place.
        check_resolved_host_paths(&spec.volumes, allowed)?;
        self.ensure_volumes(&spec).await?;
        // Create first and pull only when Docker says the image is missing: the common case
        // costs no image inspection (every API call counts when the engine is the bottleneck).
        let id = match self.create(&spec).await {
            Err(RuntimeError::ImageUnavailable { .. }) => {
                self.ensure_image(&spec.image).await?;
                self.create(&spec).await?
            }
            other => other?,
        };
        let name = &spec.name;
        if let Err(e) = self.docker.start_container(&id, None).await {
            warn!("cannot start container {name} ({id}): {}", describe(&e));
            // Leave nothing behind: a created but never started container would block the name
            // and show up in every reconciliation.
            if let Err(remove_err) = self.remove_container(&id).await {
                warn!("cannot remove container {name} ({id}) after its failed start: {remove_err}");
            }
            return Err(backend(&format!("start container {name}"), &e));
        }
        debug!("started container {name} ({id})");
        if spec.ports.is_empty() {
            // Nothing to learn from an inspection: no ports were bound. An immediate exit still
            // arrives on the event stream.
            return Ok(ContainerStatus {
                container_id: id,
                task_id: spec.task_id,
                attempt: spec.attempt,
                image: spec.image,
                running: true,
                exit_code: None,
                oom_killed: false,
                error: None,
                host_ports: Default::default(),
                started_at: Some(chrono::Utc::now()),
                finished_at: None,
            });
        }
        match self.inspect_container(&id).await {
            Ok(Some(status)) => Ok(status),
            // Gone already: it ended and someone removed it; nothing runs.
            Ok(None) => Err(RuntimeError::NoSuchContainer(id)),
            Err(e) => {
                // A container we cannot account for must not run: without its host ports the
                // task could not be reached or health-checked, and nobody would stop it.
                warn!("cannot inspect container {name} ({id}) after its start, removing it: {e}");
                if let Err(remove_err) = self.remove_container(&id).await {
                    warn!("cannot remove container {name} ({id}): {remove_err}");
                }
                Err(e)
            }
        }
    }

    /// Create the spec's named volumes that do not exist yet, labelled as Cube's. One that
    /// exists already (Cube's or not) is used as it is.
    async fn ensure_volumes(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        for name in spec.volumes.iter().filter_map(Volume::name) {
            match self.docker.inspect_volume(name).await {
                Ok(_) => continue,
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(backend(&format!("inspect volume {name}"), &e)),
            }
            let request = VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(volume_labels(name, &spec.worker)),
                ..Default::default()
            };
            // Creating a volume that appeared meanwhile (another start) returns that one.
            self.docker
                .create_volume(request)
                .await
                .map_err(|e| backend(&format!("create volume {name}"), &e))?;
            info!(
                "worker {}: created volume {name} for task {}",
                spec.worker, spec.task_id
            );
        }
        Ok(())
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![LABEL_VOLUME.to_string()])]);
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let answer = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| backend("list volumes", &e))?;
        for warning in answer.warnings.unwrap_or_default() {
            warn!("listing volumes: {warning}");
        }
        let mut volumes: Vec<VolumeInfo> = answer
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeInfo {
                created_at: v.created_at.as_deref().and_then(parse_docker_time),
                name: v.name,
            })
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Create the container; a missing image is `ImageUnavailable`, a taken name `NameConflict`.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let name = spec.name.clone();
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self
            .docker
            .create_container(Some(options), create_body(spec, &self.hardening)?)
            .await
        {
            Ok(created) => {
                for warning in &created.warnings {
                    warn!("creating container {name}: {warning}");
                }
                Ok(created.id)
            }
            Err(e) => Err(match status_code(&e) {
                Some(409) => RuntimeError::NameConflict(name),
                Some(404) => RuntimeError::ImageUnavailable {
                    image: spec.image.clone(),
                    reason: docker_message(&e),
                },
                _ => backend(&format!("create container {name}"), &e),
            }),
        }
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        // Docker takes whole seconds; round up so a short grace period is not turned into none.
        let whole_secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let grace_secs = i32::try_from(whole_secs).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(grace_secs).build();
        // Docker answers the stop request only once the container is down, which may take the
        // whole grace period: make sure bollard's per-request timeout does not cut it short.
        let needed = timeout.saturating_add(STOP_REQUEST_MARGIN);
        let docker = if needed > self.docker.timeout() {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        };
        match docker.stop_container(id, Some(options)).await {
            // bollard treats 304 (already stopped) as success.
            Ok(()) => debug!("stopped container {id}"),
            Err(e) if status_code(&e) == Some(404) => {
                debug!("container {id} is gone already");
                return Ok(());
            }
            // The forced removal below kills it anyway; the stop error is only worth a warning.
            Err(e) => warn!(
                "cannot stop container {id}, removing it by force: {}",
                describe(&e)
            ),
        }
        self.remove_container(id).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => {
                debug!("removed container {id}");
                Ok(())
            }
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            // "removal of container … is already in progress": it is going away, as asked.
            Err(e) if status_code(&e) == Some(409) => {
                debug!(
                    "container {id} is being removed already: {}",
                    docker_message(&e)
                );
                Ok(())
            }
            Err(e) => Err(backend(&format!("remove container {id}"), &e)),
        }
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerStatus>, RuntimeError> {
        self.inspect_document(id)
            .await?
            .map(status_from_inspect)
            .transpose()
    }

    /// Docker's inspect document; `None` when the container does not exist.
    async fn inspect_document(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(inspect) => Ok(Some(inspect)),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend(&format!("inspect container {id}"), &e)),
        }
    }

    async fn list_containers(&self, worker: String) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_WORKER}={worker}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| backend(&format!("list containers of worker {worker}"), &e))?;
        let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
        let documents: Vec<(String, Option<ContainerInspectResponse>)> = stream::iter(ids)
            .map(|id| async move {
                let document = self.inspect_document(&id).await?;
                Ok::<_, RuntimeError>((id, document))
            })
            .buffered(LIST_INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut statuses = Vec::with_capacity(documents.len());
        for (id, document) in documents {
            let Some(document) = document else {
                debug!("container {id} vanished while listing");
                continue;
            };
            match status_from_inspect(document) {
                Ok(status) => statuses.push(status),
                // Carries our worker label but no valid task labels: not one Cube started. Worth
                // a warning, but it must not stop the reconciliation of the others.
                Err(e) => warn!("skipping container {id} of worker {worker}: {e}"),
            }
        }
        Ok(statuses)
    }

    fn container_logs(
        &self,
        id: String,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        self.docker
            .logs(&id, Some(options))
            .map(move |item| match item {
                Ok(output) => Ok(output.into_bytes()),
                Err(e) if status_code(&e) == Some(404) => {
                    Err(RuntimeError::NoSuchContainer(id.clone()))
                }
                Err(e) => Err(backend(&format!("logs of container {id}"), &e)),
            })
            .boxed()
    }

    fn container_events(&self, worker: String) -> BoxStream<'static, RuntimeEvent> {
        let docker = self.docker.clone();
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                vec!["die".to_string(), "oom".to_string()],
            ),
            (
                "label".to_string(),
                vec![format!("{LABEL_WORKER}={worker}")],
            ),
        ]);
        let connect = move |since: i64| {
            debug!("subscribing to Docker events of worker {worker} since {since}");
            let options = EventsOptionsBuilder::default()
                .since(&since.to_string())
                .filters(&filters)
                .build();
            docker.events(Some(options)).boxed()
        };
        reconnecting_events(connect, unix_now()).boxed()
    }
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    /// Docker's event stream is replayed from its last event after a reconnect, but an event
    /// the engine itself dropped would be missed: compare every [`RECONCILE_INTERVAL`].
    fn reconcile_every(&self) -> Option<Duration> {
        Some(RECONCILE_INTERVAL)
    }

    fn start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'static, Result<ContainerStatus, RuntimeError>> {
        let this = self.clone();
        async move { this.start_container(spec).await }.boxed()
    }

    fn stop(
        &self,
        container_id: String,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let this = self.clone();
        async move { this.stop_container(&container_id, timeout).await }.boxed()
    }

    fn remove(&self, container_id: String) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let this = self.clone();
        async move { this.remove_container(&container_id).await }.boxed()
    }

    fn inspect(
        &self,
        container_id: String,
    ) -> BoxFuture<'static, Result<Option<ContainerStatus>, RuntimeError>> {
        let this = self.clone();
        async move { this.inspect_container(&container_id).await }.boxed()
    }

    fn list(
        &self,
        worker: String,
    ) -> BoxFuture<'static, Result<Vec<ContainerStatus>, RuntimeError>> {
        let this = self.clone();
        async move { this.list_containers(worker).await }.boxed()
    }

    fn logs(
        &self,
        container_id: String,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        self.container_logs(container_id, tail, follow)
    }

    fn allowed_host_paths(&self, _worker: &str) -> Vec<String> {
        self.hardening.allowed_host_paths.clone()
    }

    fn volumes(
        &self,
        _worker: String,
    ) -> BoxFuture<'static, Result<Vec<VolumeInfo>, RuntimeError>> {
        let this = self.clone();
        async move { this.list_volumes().await }.boxed()
    }

    fn events(&self, worker: String) -> BoxStream<'static, RuntimeEvent> {
        self.container_events(worker)
    }
}

/// The labels of a named volume Cube creates: its name, and the worker that created it.
fn volume_labels(name: &str, worker: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_VOLUME.to_string(), name.to_string()),
        (LABEL_WORKER.to_string(), worker.to_string()),
    ])
}

/// Host paths as Docker will find them: each must exist (Docker would otherwise refuse with
/// less to go on), and once its symbolic links are resolved it must still lie under an allowed
/// prefix (itself resolved), so a link under `/srv/data` cannot hand a task `/etc`.
fn check_resolved_host_paths(volumes: &[Volume], allowed: &[String]) -> Result<(), RuntimeError> {
    let resolved_allowed: Vec<String> = allowed
        .iter()
        .map(|p| {
            std::fs::canonicalize(p)
                .map_or_else(|_| p.clone(), |r| r.to_string_lossy().into_owned())
        })
        .collect();
    for v in volumes.iter().filter(|v| v.is_host_path()) {
        let real = std::fs::canonicalize(&v.source).map_err(|e| {
            RuntimeError::Refused(format!(
                "volume {v}: host path {} cannot be used on this worker: {e}; expected an existing file or directory",
                v.source
            ))
        })?;
        let real = real.to_string_lossy();
        if !is_allowed(&real, &resolved_allowed) {
            return Err(RuntimeError::Refused(format!(
                "volume {v}: host path {} resolves to {real}, which is not under a path this worker allows (--allow-host-path); it allows: {}",
                v.source,
                allowed_list(allowed)
            )));
        }
    }
    Ok(())
}

/// State of the never-ending event stream between two items.
struct EventsLoop<C> {
    connect: C,
    current: Option<BoxStream<'static, Result<EventMessage, DockerError>>>,
    /// When the current subscription was opened.
    opened_at: Instant,
    /// Unix seconds to resume from: when events were first asked for, later the time of the
    /// newest event seen. A reconnect replays from here, so exits during the gap are still
    /// reported (Docker keeps a short backlog); duplicates are harmless.
    resume_from: i64,
    backoff: Duration,
    resync_due: bool,
}

/// Exit events from the subscriptions `connect(since)` opens, for ever: whenever a subscription
/// fails or ends, wait (500 ms doubling to 5 s), open a new one from the last event seen, and
/// yield [`RuntimeEvent::Resync`] first since Docker's backlog may not cover the whole gap.
fn reconnecting_events<C, S>(
    connect: C,
    since: i64,
) -> impl Stream<Item = RuntimeEvent> + Send + 'static
where
    C: FnMut(i64) -> S + Send + 'static,
    S: Stream<Item = Result<EventMessage, DockerError>> + Send + 'static,
{
    let state = EventsLoop {
        connect,
        current: None,
        opened_at: Instant::now(),
        resume_from: since,
        backoff: EVENTS_BACKOFF_INITIAL,
        resync_due: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if state.resync_due {
                state.resync_due = false;
                return Some((RuntimeEvent::Resync, state));
            }
            let Some(current) = state.current.as_mut() else {
                state.current = Some((state.connect)(state.resume_from).boxed());
                state.opened_at = Instant::now();
                continue;
            };
            match current.next().await {
                Some(Ok(message)) => {
                    if let Some(time) = message.time {
                        state.resume_from = state.resume_from.max(time);
                    }
                    match message.actor.and_then(|actor| actor.id) {
                        Some(container_id) => {
                            debug!(
                                "Docker event {:?} for container {container_id}",
                                message.action
                            );
                            return Some((RuntimeEvent::Exited { container_id }, state));
                        }
                        None => warn!(
                            "ignoring a Docker {:?} event without a container id",
                            message.action
                        ),
                    }
                    continue;
                }
                Some(Err(e)) => warn!("Docker event stream failed: {}", describe(&e)),
                None => warn!("Docker event stream ended"),
            }
            state.current = None;
            if state.opened_at.elapsed() >= EVENTS_STABLE_AFTER {
                state.backoff = EVENTS_BACKOFF_INITIAL;
            }
            debug!("reopening the Docker event stream in {:?}", state.backoff);
            tokio::time::sleep(state.backoff).await;
            state.backoff = (state.backoff * 2).min(EVENTS_BACKOFF_MAX);
            state.current = Some((state.connect)(state.resume_from).boxed());
            state.opened_at = Instant::now();
            state.resync_due = true;
        }
    })
}

/// Docker's create body for a spec: labels, command, environment, limits and ports; no restart
/// policy, since Cube restarts tasks itself.
fn create_body(
    spec: &ContainerSpec,
    hardening: &Hardening,
) -> Result<ContainerCreateBody, RuntimeError> {
    let labels = HashMap::from([
        (LABEL_TASK_ID.to_string(), spec.task_id.to_string()),
        (LABEL_ATTEMPT.to_string(), spec.attempt.to_string()),
        (LABEL_WORKER.to_string(), spec.worker.clone()),
    ]);
    let mut exposed_ports = Vec::with_capacity(spec.ports.len());
    let mut port_bindings = PortMap::new();
    for (container_port, host_port) in &spec.ports {
        let container_port = normalize_port(container_port);
        // A range lets the engine pick a free port in it; the host address is the worker's.
        let binding = PortBinding {
            host_ip: Some(hardening.publish_address.clone()),
            host_port: Some(hardening.host_port(host_port.as_deref())?),
        };
        port_bindings.insert(container_port.clone(), Some(vec![binding]));
        exposed_ports.push(container_port);
    }
    let log_config = HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), hardening.log_max_size.clone()),
            ("max-file".to_string(), hardening.log_max_files.to_string()),
        ])),
    };
    let host_config = HostConfig {
        nano_cpus: (spec.cpu > 0.0).then(|| (spec.cpu * 1e9).round() as i64),
        memory: (spec.memory > 0).then(|| i64::try_from(spec.memory).unwrap_or(i64::MAX)),
        pids_limit: Some(i64::try_from(spec.pids_limit).unwrap_or(i64::MAX)),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: (!hardening.cap_drop.is_empty()).then(|| hardening.cap_drop.clone()),
        log_config: Some(log_config),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        mounts: (!spec.volumes.is_empty()).then(|| mounts(spec)),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The spec's volumes as Docker mounts: named volumes (labelled as Cube's, should Docker have to
/// create one after all) and bind mounts of host paths; never removed with the container.
fn mounts(spec: &ContainerSpec) -> Vec<Mount> {
    spec.volumes
        .iter()
        .map(|v| {
            let mut mount = Mount {
                target: Some(v.target.clone()),
                source: Some(v.source.clone()),
                read_only: Some(v.read_only),
                ..Default::default()
            };
            match v.name() {
                Some(name) => {
                    mount.typ = Some(MountType::VOLUME);
                    mount.volume_options = Some(MountVolumeOptions {
                        labels: Some(volume_labels(name, &spec.worker)),
                        ..Default::default()
                    });
                }
                None => mount.typ = Some(MountType::BIND),
            }
            mount
        })
        .collect()
}

/// A [`ContainerStatus`] from Docker's inspect document. A container without valid Cube labels
/// is an error: every container this runtime reports must map to a task attempt.
fn status_from_inspect(inspect: ContainerInspectResponse) -> Result<ContainerStatus, RuntimeError> {
    let container_id = inspect.id.unwrap_or_default();
    let config = inspect.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let label = |key: &str| {
        labels.get(key).ok_or_else(|| {
            RuntimeError::Backend(format!("container {container_id} has no label {key}"))
        })
    };
    let task_id = label(LABEL_TASK_ID)?;
    let task_id = Uuid::parse_str(task_id).map_err(|e| {
        RuntimeError::Backend(format!(
            "container {container_id} has an invalid label {LABEL_TASK_ID}={task_id}: {e}"
        ))
    })?;
    let attempt = label(LABEL_ATTEMPT)?;
    let attempt = attempt.parse::<u32>().map_err(|e| {
        RuntimeError::Backend(format!(
            "container {container_id} has an invalid label {LABEL_ATTEMPT}={attempt}: {e}"
        ))
    })?;

    let state = inspect.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let host_ports = inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .map(host_ports_from)
        .unwrap_or_default();
    Ok(ContainerStatus {
        container_id,
        task_id,
        attempt,
        // The name the container was created from; the top-level `Image` is the image id.
        image: config.image.or(inspect.image).unwrap_or_default(),
        running,
        exit_code: if running { None } else { state.exit_code },
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.filter(|e| !e.is_empty()),
        host_ports,
        started_at: state.started_at.as_deref().and_then(parse_docker_time),
        finished_at: state.finished_at.as_deref().and_then(parse_docker_time),
    })
}

/// Container port → the first host port bound for it (Docker may list one binding per address
/// family).
fn host_ports_from(ports: PortMap) -> BTreeMap<String, String> {
    ports
        .into_iter()
        .filter_map(|(container_port, bindings)| {
            let host_port = bindings?
                .into_iter()
                .find_map(|b| b.host_port.filter(|p| !p.is_empty()))?;
            Some((container_port, host_port))
        })
        .collect()
}

/// Docker's RFC 3339 timestamps; `None` for Go's zero time (never started or never finished).
fn parse_docker_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if text.is_empty() || text.starts_with(DOCKER_ZERO_TIME_PREFIX) {
        return None;
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(time) => Some(time.with_timezone(&chrono::Utc)),
        Err(e) => {
            warn!("ignoring the unparsable Docker time {text:?}: {e}");
            None
        }
    }
}

/// Split `repo[:tag]` (or `repo@digest`) into what the pull API wants. The tag defaults to
/// `latest`: an empty tag would make Docker pull every tag of the repository.
fn split_image_reference(image: &str) -> (String, String) {
    if image.contains('@') {
        // A digest reference names exactly one image already.
        return (image.to_string(), String::new());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (image[..colon].to_string(), image[colon + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The tar build context: a Dockerfile and the busybox binary.
fn busybox_build_context(busybox_path: &Path) -> std::io::Result<Vec<u8>> {
    // The default command serves HTTP, so task files without a command (as the Go Cube's are)
    // still run something useful.
    const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\"]\n";
    let busybox = std::fs::read(busybox_path)?;
    let mut archive = tar::Builder::new(Vec::with_capacity(busybox.len() + 4096));
    for (name, mode, data) in [
        ("Dockerfile", 0o644, DOCKERFILE.as_bytes()),
        ("busybox", 0o755, busybox.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        archive.append_data(&mut header, name, data)?;
    }
    archive.into_inner()
}

/// Seconds since the Unix epoch, for Docker's `since` filter.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The HTTP status of a Docker error response, if it was one.
fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker's own words for an error, without bollard's wrapping.
fn docker_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Docker's message plus the HTTP status, for logs and backend errors.
fn describe(err: &DockerError) -> String {
    match status_code(err) {
        Some(code) => format!("{} (HTTP {code})", docker_message(err)),
        None => docker_message(err),
    }
}

fn backend(context: &str, err: &DockerError) -> RuntimeError {
    RuntimeError::Backend(format!("{context}: {}", describe(err)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, EventActor, NetworkSettings};

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            split_image_reference("busybox"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            split_image_reference("cube-test/busybox:1.36"),
            ("cube-test/busybox".into(), "1.36".into())
        );
        assert_eq!(
            split_image_reference("localhost:5000/app"),
            ("localhost:5000/app".into(), "latest".into())
        );
        assert_eq!(
            split_image_reference("localhost:5000/app:v2"),
            ("localhost:5000/app".into(), "v2".into())
        );
        assert_eq!(
            split_image_reference("app@sha256:abcd"),
            ("app@sha256:abcd".into(), String::new())
        );
    }

    #[test]
    fn docker_zero_time_is_none() {
        assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_docker_time(""), None);
        let time = parse_docker_time("2024-05-01T12:00:01.123456789Z").map(|t| t.timestamp());
        assert_eq!(time, Some(1_714_564_801));
    }

    #[test]
    fn create_body_carries_labels_limits_and_ports() {
        let task_id = Uuid::new_v4();
        let spec = ContainerSpec {
            name: ContainerSpec::container_name(task_id, 2),
            task_id,
            attempt: 2,
            worker: "w1".into(),
            image: "img:1".into(),
            cmd: vec![],
            env: vec!["A=1".into()],
            cpu: 0.5,
            memory: 64 << 20,
            ports: BTreeMap::from([
                ("8080/tcp".into(), None),
                ("53/udp".into(), Some("25353".into())),
            ]),
            pids_limit: 100,
            volumes: vec![
                Volume::parse("data:/data").expect("a volume"),
                Volume::parse("/srv/x:/x:ro").expect("a volume"),
            ],
        };
        let hardening = Hardening {
            publish_address: "10.1.2.3".into(),
            cap_drop: vec!["NET_RAW".into()],
            ..Hardening::default()
        };
        let body = create_body(&spec, &hardening).expect("a body");
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_TASK_ID), Some(&task_id.to_string()));
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("2"));
        assert_eq!(labels.get(LABEL_WORKER).map(String::as_str), Some("w1"));
        assert_eq!(body.cmd, None);
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        let bindings = host.port_bindings.unwrap_or_default();
        let port = |p: &str| {
            bindings
                .get(p)
                .cloned()
                .flatten()
                .and_then(|b| b.first().cloned())
                .and_then(|b| b.host_port)
        };
        assert_eq!(port("8080/tcp").as_deref(), Some("20000-32767"));
        assert_eq!(port("53/udp").as_deref(), Some("25353"));
        assert!(
            bindings
                .values()
                .flatten()
                .flatten()
                .all(|b| b.host_ip.as_deref() == Some("10.1.2.3"))
        );
        assert_eq!(body.exposed_ports.map(|p| p.len()), Some(2));
        assert_eq!(host.pids_limit, Some(100));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_string()]));
        let mounts = host.mounts.clone().unwrap_or_default();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("data"));
        assert_eq!(mounts[0].read_only, Some(false));
        let labels = mounts[0]
            .volume_options
            .clone()
            .and_then(|o| o.labels)
            .unwrap_or_default();
        assert_eq!(labels.get(LABEL_VOLUME).map(String::as_str), Some("data"));
        assert_eq!(labels.get(LABEL_WORKER).map(String::as_str), Some("w1"));
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].target.as_deref(), Some("/x"));
        assert_eq!(mounts[1].read_only, Some(true));
        let log = host
            .log_config
            .unwrap_or_default()
            .config
            .unwrap_or_default();
        assert_eq!(log.get("max-size").map(String::as_str), Some("10m"));
        assert_eq!(log.get("max-file").map(String::as_str), Some("3"));
    }

    #[test]
    fn a_host_port_outside_the_workers_range_is_refused() {
        let hardening = Hardening::default();
        assert!(matches!(
            hardening.host_port(Some("8080")),
            Err(RuntimeError::Refused(m)) if m.contains("--port-range 20000-32767")
        ));
        assert_eq!(
            hardening.host_port(Some("20000")).ok().as_deref(),
            Some("20000")
        );
    }

    #[test]
    fn host_paths_are_checked_once_their_links_are_resolved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let allowed_dir = dir.path().join("allowed");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(allowed_dir.join("web")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, allowed_dir.join("escape")).expect("symlink");
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let allowed = vec![text(&allowed_dir)];
        let volume = |source: &Path| Volume {
            source: text(source),
            target: "/x".into(),
            read_only: false,
        };
        check_resolved_host_paths(&[volume(&allowed_dir.join("web"))], &allowed)
            .expect("a real directory under the prefix");
        let escape = check_resolved_host_paths(&[volume(&allowed_dir.join("escape"))], &allowed)
            .expect_err("a link out of the prefix");
        assert!(
            escape.to_string().contains(&format!(
                "resolves to {}, which is not under a path this worker allows",
                text(&outside.canonicalize().expect("exists"))
            )),
            "{escape}"
        );
        let missing = check_resolved_host_paths(&[volume(&allowed_dir.join("nope"))], &allowed)
            .expect_err("a missing path");
        assert!(
            missing
                .to_string()
                .contains("expected an existing file or directory"),
            "{missing}"
        );
    }

    #[test]
    fn inspect_maps_to_status() {
        let task_id = Uuid::new_v4();
        let inspect = ContainerInspectResponse {
            id: Some("abc".into()),
            image: Some("sha256:feed".into()),
            config: Some(ContainerConfig {
                image: Some("img:1".into()),
                labels: Some(HashMap::from([
                    (LABEL_TASK_ID.to_string(), task_id.to_string()),
                    (LABEL_ATTEMPT.to_string(), "3".to_string()),
                ])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(false),
                exit_code: Some(137),
                oom_killed: Some(true),
                error: Some(String::new()),
                started_at: Some("2024-05-01T12:00:00Z".into()),
                finished_at: Some("0001-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([
                    (
                        "8080/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: Some("0.0.0.0".into()),
                            host_port: Some("49153".into()),
                        }]),
                    ),
                    ("9090/tcp".to_string(), None),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = status_from_inspect(inspect).expect("valid labels");
        assert_eq!(status.task_id, task_id);
        assert_eq!(status.attempt, 3);
        assert_eq!(status.image, "img:1");
        assert!(!status.running);
        assert_eq!(status.exit_code, Some(137));
        assert!(status.oom_killed);
        assert_eq!(status.error, None);
        assert_eq!(
            status.host_ports,
            BTreeMap::from([("8080/tcp".to_string(), "49153".to_string())])
        );
        assert!(status.started_at.is_some());
        assert_eq!(status.finished_at, None);
    }

    #[test]
    fn inspect_without_labels_is_an_error() {
        let inspect = ContainerInspectResponse {
            id: Some("abc".into()),
            ..Default::default()
        };
        assert!(matches!(
            status_from_inspect(inspect),
            Err(RuntimeError::Backend(_))
        ));
    }

    fn die_event(id: &str, time: i64) -> Result<EventMessage, DockerError> {
        Ok(EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: None,
            }),
            time: Some(time),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn event_stream_reconnects_with_resync_and_resumes_from_last_event() {
        let sinces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = sinces.clone();
        let mut calls = 0;
        let connect = move |since: i64| {
            recorded.lock().expect("not poisoned").push(since);
            calls += 1;
            match calls {
                // First subscription: one exit, then the connection breaks.
                1 => stream::iter(vec![
                    die_event("c1", 1_000),
                    Err(DockerError::RequestTimeoutError),
                ])
                .boxed(),
                // Second: ends without anything.
                2 => stream::iter(Vec::new()).boxed(),
                // Third: one more exit, then stays open.
                _ => stream::iter(vec![die_event("c2", 1_005)])
                    .chain(stream::pending())
                    .boxed(),
            }
        };
        let events: Vec<RuntimeEvent> = reconnecting_events(connect, 900).take(4).collect().await;
        assert_eq!(
            events,
            vec![
                RuntimeEvent::Exited {
                    container_id: "c1".into()
                },
                RuntimeEvent::Resync,
                RuntimeEvent::Resync,
                RuntimeEvent::Exited {
                    container_id: "c2".into()
                },
            ]
        );
        assert_eq!(
            *sinces.lock().expect("not poisoned"),
            vec![900, 1_000, 1_000]
        );
    }
}
