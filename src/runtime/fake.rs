//! The fake runtime: containers as in-memory records, for simulations at scale and for tests.
//!
//! [`FakeRuntime`] owns a model of one Docker engine per worker name: containers keyed by id,
//! names unique per worker, host ports counted up from 40000 per worker, and exits announced on a
//! per-worker broadcast channel. A container "runs" until it is stopped, unless its command says
//! otherwise:
//!
//! | command                                   | behaviour                                  |
//! |-------------------------------------------|--------------------------------------------|
//! | `sleep N` (fractional ok)                 | exits 0 after N seconds                    |
//! | `exit N`, `sh -c "exit N"`                | exits N right at start                     |
//! | `true` / `false`                          | exits 0 / 1 right at start                 |
//! | `sh -c "<one of the above>"`              | as the inner command                       |
//! | anything else                             | runs until stopped                         |
//!
//! Volumes are checked as Docker's runtime checks them: a host path outside the prefixes allowed
//! for the worker ([`FakeRuntime::allow_host_paths`], none by default) refuses the start; a named
//! volume is "created" on the worker's engine the first time a container mounts it, and kept.
//!
//! An image whose name contains `missing` cannot be pulled. Like Docker, stopping or removing a
//! running container announces its exit. It is kept lean for a million containers: a record of a
//! few hundred bytes each, and no task per container except the timer of a `sleep N`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use log::debug;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::{
    ContainerSpec, ContainerStatus, Runtime, RuntimeError, RuntimeEvent, VolumeInfo,
    check_host_paths, normalize_port,
};

/// The first host port handed out when a spec leaves the choice to the runtime.
const FIRST_AUTO_HOST_PORT: u16 = 40000;
/// Exit events buffered per worker before a slow subscriber lags (and gets a Resync). Small on
/// purpose: tokio allocates the whole buffer up front, and there may be 10,000 workers.
const EVENTS_CAPACITY: usize = 64;
/// Substring of an image name that makes the fake refuse to pull it.
const MISSING_IMAGE_MARKER: &str = "missing";
/// What `sh` exits with for `exit <not a number>`.
const SH_ILLEGAL_NUMBER_EXIT: i64 = 2;

/// An in-memory container runtime. Clones share the same containers.
#[derive(Clone)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    start_delay: Duration,
    // The fake stands for an external system (the Docker engines), so it keeps its own state
    // behind a lock rather than in an actor; no lock is ever held across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Boxed, so a slot of the table is small (a simulation holds a million of them).
    containers: HashMap<Uuid, Box<FakeContainer>>,
    workers: HashMap<Arc<str>, WorkerState>,
}

/// What one worker's engine keeps besides the containers themselves.
struct WorkerState {
    /// Container name → id; doubles as the index for listing this worker's containers.
    names: HashMap<Arc<str>, Uuid>,
    next_port: u16,
    /// Created on the first subscription; without subscribers, exits are not announced.
    events: Option<broadcast::Sender<RuntimeEvent>>,
    /// Host paths its containers may mount lie under one of these.
    allowed_host_paths: Vec<String>,
    /// The named volumes its containers mounted, and when each was first mounted (created).
    volumes: BTreeMap<String, DateTime<Utc>>,
}

struct FakeContainer {
    worker: Arc<str>,
    name: Arc<str>,
    task_id: Uuid,
    attempt: u32,
    image: String,
    /// The command as one line, only for the log line.
    cmd: Box<str>,
    running: bool,
    exit_code: Option<i64>,
    host_ports: BTreeMap<String, String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// The `sleep N` timer, cancelled when the container goes away first.
    timer: Option<AbortHandle>,
}

/// How long a fake container runs, from its command.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lifetime {
    UntilStopped,
    ExitsAfter(Duration),
    ExitsAtStart(i64),
}

impl FakeRuntime {
    /// A fake whose starts each take `start_delay` (zero: immediate).
    pub fn new(start_delay: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                start_delay,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Let the containers of `worker` mount host paths under these prefixes (none until then),
    /// as `cube worker --allow-host-path` does.
    pub fn allow_host_paths(&self, worker: &str, prefixes: Vec<String>) {
        let mut state = self.shared.lock();
        let key = state.worker_key(worker);
        if let Some(worker_state) = state.workers.get_mut(&key) {
            worker_state.allowed_host_paths = prefixes;
        }
    }

    /// Number of containers currently recorded, over all workers.
    pub fn container_count(&self) -> usize {
        self.shared.lock().containers.len()
    }

    async fn start_container(self, spec: ContainerSpec) -> Result<ContainerStatus, RuntimeError> {
        if spec.image.contains(MISSING_IMAGE_MARKER) {
            return Err(RuntimeError::ImageUnavailable {
                reason: format!(
                    "pull access denied for {}, repository does not exist (fake)",
                    spec.image
                ),
                image: spec.image,
            });
        }
        if !self.shared.start_delay.is_zero() {
            tokio::time::sleep(self.shared.start_delay).await;
        }
        let lifetime = lifetime_of(&spec.cmd);

        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let worker = state.worker_key(&spec.worker);
        let Some(worker_state) = state.workers.get_mut(&worker) else {
            return Err(RuntimeError::Backend(format!(
                "fake: worker {worker} vanished"
            )));
        };
        check_host_paths(&spec.volumes, &worker_state.allowed_host_paths)?;
        if worker_state.names.contains_key(spec.name.as_str()) {
            return Err(RuntimeError::NameConflict(spec.name));
        }
        for name in spec.volumes.iter().filter_map(|v| v.name()) {
            if !worker_state.volumes.contains_key(name) {
                debug!("fake: created volume {name} on {worker}");
                worker_state.volumes.insert(name.to_string(), Utc::now());
            }
        }
        let id = Uuid::new_v4();
        let host_ports = spec
            .ports
            .iter()
            .map(|(container_port, host_port)| {
                let host_port = host_port
                    .clone()
                    .unwrap_or_else(|| worker_state.allocate_port().to_string());
                (normalize_port(container_port), host_port)
            })
            .collect();
        let name: Arc<str> = Arc::from(spec.name);
        worker_state.names.insert(name.clone(), id);
        let mut container = FakeContainer {
            worker,
            name,
            task_id: spec.task_id,
            attempt: spec.attempt,
            image: spec.image,
            cmd: spec.cmd.join(" ").into_boxed_str(),
            running: true,
            exit_code: None,
            host_ports,
            started_at: Utc::now(),
            finished_at: None,
            timer: None,
        };
        match lifetime {
            Lifetime::UntilStopped => {}
            Lifetime::ExitsAtStart(code) => {
                container.exit(code);
                worker_state.announce_exit(id);
            }
            Lifetime::ExitsAfter(duration) => {
                let shared = Arc::downgrade(&self.shared);
                // Spawned under the lock on purpose: the timer cannot fire before its container
                // is recorded.
                let timer = tokio::spawn(exit_later(shared, id, duration));
                container.timer = Some(timer.abort_handle());
            }
        }
        debug!(
            "fake: started {} ({id}) on {}: {lifetime:?}",
            container.name, container.worker
        );
        let status = container.status(id);
        state.containers.insert(id, Box::new(container));
        Ok(status)
    }

    /// Forget a container (by id, or by name as Docker also accepts); announce its end if it
    /// was still running, as Docker's `die` would.
    fn discard(&self, container_id: &str) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let id = match Uuid::parse_str(container_id) {
            Ok(id) => id,
            Err(_) => match state
                .workers
                .values()
                .find_map(|w| w.names.get(container_id).copied())
            {
                Some(id) => id,
                None => return,
            },
        };
        let Some(container) = state.containers.remove(&id) else {
            return;
        };
        if let Some(timer) = &container.timer {
            timer.abort();
        }
        if let Some(worker_state) = state.workers.get_mut(&container.worker) {
            worker_state.names.remove(&container.name);
            if container.running {
                worker_state.announce_exit(id);
            }
        }
        debug!("fake: removed {} ({id})", container.name);
    }

    /// A container's status, by id or by name.
    fn status_of(&self, container_id: &str) -> Option<ContainerStatus> {
        let state = self.shared.lock();
        let id = Uuid::parse_str(container_id).ok().or_else(|| {
            state
                .workers
                .values()
                .find_map(|w| w.names.get(container_id).copied())
        })?;
        state.containers.get(&id).map(|c| c.status(id))
    }

    fn statuses_of(&self, worker: &str) -> Vec<ContainerStatus> {
        let state = self.shared.lock();
        let Some(worker_state) = state.workers.get(worker) else {
            return Vec::new();
        };
        worker_state
            .names
            .values()
            .filter_map(|id| state.containers.get(id).map(|c| c.status(*id)))
            .collect()
    }

    fn subscribe(&self, worker: &str) -> broadcast::Receiver<RuntimeEvent> {
        let mut state = self.shared.lock();
        let key = state.worker_key(worker);
        let worker_state = state.workers.entry(key).or_insert_with(WorkerState::new);
        worker_state
            .events
            .get_or_insert_with(|| broadcast::channel(EVENTS_CAPACITY).0)
            .subscribe()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a record half-written in a way that matters to a fake.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The shared key of a worker, creating its state on first use (so every container of a
    /// worker shares one allocation of the worker's name).
    fn worker_key(&mut self, worker: &str) -> Arc<str> {
        if let Some((key, _)) = self.workers.get_key_value(worker) {
            return key.clone();
        }
        let key: Arc<str> = Arc::from(worker);
        self.workers.insert(key.clone(), WorkerState::new());
        key
    }
}

impl WorkerState {
    fn new() -> Self {
        Self {
            names: HashMap::new(),
            next_port: FIRST_AUTO_HOST_PORT,
            events: None,
            allowed_host_paths: Vec::new(),
            volumes: BTreeMap::new(),
        }
    }

    fn allocate_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = self
            .next_port
            .checked_add(1)
            .unwrap_or(FIRST_AUTO_HOST_PORT);
        port
    }

    fn announce_exit(&self, id: Uuid) {
        if let Some(events) = &self.events {
            // No subscriber at the moment is fine: nobody is watching this worker.
            let _ = events.send(RuntimeEvent::Exited {
                container_id: id.simple().to_string(),
            });
        }
    }
}

impl FakeContainer {
    fn exit(&mut self, code: i64) {
        self.running = false;
        self.exit_code = Some(code);
        self.finished_at = Some(Utc::now());
        // Docker drops the port bindings of an ended container.
        self.host_ports.clear();
        self.timer = None;
    }

    fn status(&self, id: Uuid) -> ContainerStatus {
        ContainerStatus {
            container_id: id.simple().to_string(),
            task_id: self.task_id,
            attempt: self.attempt,
            image: self.image.clone(),
            running: self.running,
            exit_code: self.exit_code,
            oom_killed: false,
            error: None,
            host_ports: self.host_ports.clone(),
            started_at: Some(self.started_at),
            finished_at: self.finished_at,
        }
    }
}

/// The timer of a `sleep N` container. Holds the runtime only weakly, so a dropped runtime does
/// not linger until its longest sleep ends.
async fn exit_later(shared: Weak<Shared>, id: Uuid, after: Duration) {
    tokio::time::sleep(after).await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut guard = shared.lock();
    let state = &mut *guard;
    let Some(container) = state.containers.get_mut(&id) else {
        return;
    };
    if !container.running {
        return;
    }
    container.exit(0);
    if let Some(worker_state) = state.workers.get(&container.worker) {
        worker_state.announce_exit(id);
    }
}

/// How long a container with this command runs (see the module documentation).
fn lifetime_of(cmd: &[String]) -> Lifetime {
    let words: Vec<&str> = cmd.iter().map(String::as_str).collect();
    lifetime_of_words(&words)
}

fn lifetime_of_words(words: &[&str]) -> Lifetime {
    let Some(program) = words.first() else {
        return Lifetime::UntilStopped;
    };
    let program = program.rsplit('/').next().unwrap_or(program);
    match program {
        "true" => Lifetime::ExitsAtStart(0),
        "false" => Lifetime::ExitsAtStart(1),
        "exit" => Lifetime::ExitsAtStart(words.get(1).map_or(0, |code| shell_exit_code(code))),
        "sleep" => match words.get(1).map(|secs| secs.parse::<f64>()) {
            Some(Ok(secs)) if secs >= 0.0 => match Duration::try_from_secs_f64(secs) {
                Ok(duration) => Lifetime::ExitsAfter(duration),
                // Too long to represent: as good as for ever.
                Err(_) => Lifetime::UntilStopped,
            },
            // `sleep` without a valid duration fails at once.
            _ => Lifetime::ExitsAtStart(1),
        },
        "sh" | "bash" if words.get(1) == Some(&"-c") => {
            let script: Vec<&str> = words
                .get(2)
                .map(|s| s.split_whitespace().collect())
                .unwrap_or_default();
            lifetime_of_words(&script)
        }
        _ => Lifetime::UntilStopped,
    }
}

/// `exit N` as a shell does it: modulo 256, and 2 for something that is not a number.
fn shell_exit_code(code: &str) -> i64 {
    code.parse::<i64>()
        .map_or(SH_ILLEGAL_NUMBER_EXIT, |c| c.rem_euclid(256))
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    /// Exits go out on a channel that says when a subscriber fell behind (a `Resync`), so none
    /// is lost silently.
    fn reconcile_every(&self) -> Option<Duration> {
        None
    }

    fn start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'static, Result<ContainerStatus, RuntimeError>> {
        self.clone().start_container(spec).boxed()
    }

    fn stop(
        &self,
        container_id: String,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.discard(&container_id);
        futures_util::future::ready(Ok(())).boxed()
    }

    fn remove(&self, container_id: String) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.discard(&container_id);
        futures_util::future::ready(Ok(())).boxed()
    }

    fn inspect(
        &self,
        container_id: String,
    ) -> BoxFuture<'static, Result<Option<ContainerStatus>, RuntimeError>> {
        futures_util::future::ready(Ok(self.status_of(&container_id))).boxed()
    }

    fn list(
        &self,
        worker: String,
    ) -> BoxFuture<'static, Result<Vec<ContainerStatus>, RuntimeError>> {
        futures_util::future::ready(Ok(self.statuses_of(&worker))).boxed()
    }

    /// One line naming the container and its command; `follow` does not wait for the exit.
    fn logs(
        &self,
        container_id: String,
        tail: Option<usize>,
        _follow: bool,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let line = Uuid::parse_str(&container_id).ok().and_then(|id| {
            let state = self.shared.lock();
            state
                .containers
                .get(&id)
                .map(|c| format!("fake container {} running {}\n", c.name, c.cmd))
        });
        match line {
            None => stream::once(futures_util::future::ready(Err(
                RuntimeError::NoSuchContainer(container_id),
            )))
            .boxed(),
            Some(_) if tail == Some(0) => stream::empty().boxed(),
            Some(line) => stream::once(futures_util::future::ready(Ok(Bytes::from(line)))).boxed(),
        }
    }

    fn allowed_host_paths(&self, worker: &str) -> Vec<String> {
        let state = self.shared.lock();
        state
            .workers
            .get(worker)
            .map(|w| w.allowed_host_paths.clone())
            .unwrap_or_default()
    }

    fn volumes(&self, worker: String) -> BoxFuture<'static, Result<Vec<VolumeInfo>, RuntimeError>> {
        let volumes = {
            let state = self.shared.lock();
            state
                .workers
                .get(worker.as_str())
                .map(|w| {
                    w.volumes
                        .iter()
                        .map(|(name, at)| VolumeInfo {
                            name: name.clone(),
                            created_at: Some(*at),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        futures_util::future::ready(Ok(volumes)).boxed()
    }

    fn events(&self, worker: String) -> BoxStream<'static, RuntimeEvent> {
        let receiver = self.subscribe(&worker);
        stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(event) => Some((event, receiver)),
                // Missed some exits: the worker must reconcile, exactly as after a Docker reconnect.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!("fake: event subscriber lagged by {missed}");
                    Some((RuntimeEvent::Resync, receiver))
                }
                // The sender lives as long as the runtime; once it is gone there is nothing more to
                // report, but the stream still never ends.
                Err(broadcast::error::RecvError::Closed) => futures_util::future::pending().await,
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT_WAIT: Duration = Duration::from_secs(5);

    fn spec(worker: &str, cmd: &[&str]) -> ContainerSpec {
        let task_id = Uuid::new_v4();
        ContainerSpec {
            name: ContainerSpec::container_name(task_id, 1),
            task_id,
            attempt: 1,
            worker: worker.to_string(),
            image: "cube-test/busybox:latest".to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cpu: 0.0,
            memory: 0,
            ports: BTreeMap::new(),
            pids_limit: crate::task::DEFAULT_PIDS_LIMIT,
            volumes: vec![],
        }
    }

    async fn next_event(events: &mut BoxStream<'static, RuntimeEvent>) -> RuntimeEvent {
        tokio::time::timeout(EVENT_WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("the stream never ends")
    }

    #[tokio::test]
    async fn start_inspect_and_list_by_worker() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let mut with_ports = spec("w1", &["httpd", "-f"]);
        with_ports.ports = BTreeMap::from([
            ("8080/tcp".into(), None),
            ("9090".into(), Some("19090".into())),
        ]);
        let first = runtime.start(with_ports.clone()).await.expect("started");
        assert!(first.running);
        assert_eq!(first.task_id, with_ports.task_id);
        assert_eq!(first.attempt, 1);
        assert_eq!(first.exit_code, None);
        assert_eq!(
            first.host_ports,
            BTreeMap::from([
                ("8080/tcp".into(), "40000".into()),
                ("9090/tcp".into(), "19090".into())
            ])
        );
        let second = runtime.start(spec("w1", &[])).await.expect("started");
        let other = runtime.start(spec("w2", &[])).await.expect("started");

        let inspected = runtime
            .inspect(first.container_id.clone())
            .await
            .expect("inspect");
        assert_eq!(inspected, Some(first.clone()));
        assert_eq!(runtime.inspect("nope".into()).await.expect("inspect"), None);

        let mut w1: Vec<String> = runtime
            .list("w1".into())
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.container_id)
            .collect();
        w1.sort();
        let mut expected = vec![first.container_id.clone(), second.container_id];
        expected.sort();
        assert_eq!(w1, expected);
        let w2 = runtime.list("w2".into()).await.expect("list");
        assert_eq!(w2.len(), 1);
        assert_eq!(w2[0].container_id, other.container_id);
        assert!(runtime.list("w3".into()).await.expect("list").is_empty());

        let logs: Vec<Bytes> = runtime
            .logs(first.container_id, None, false)
            .map(|l| l.expect("log"))
            .collect()
            .await;
        assert_eq!(
            logs,
            vec![Bytes::from(format!(
                "fake container {} running httpd -f\n",
                with_ports.name
            ))]
        );
    }

    #[tokio::test]
    async fn repeated_name_conflicts_and_missing_image_is_unavailable() {
        let runtime = FakeRuntime::new(Duration::from_millis(10));
        let spec = spec("w1", &[]);
        runtime.start(spec.clone()).await.expect("started");
        let again = runtime.start(spec.clone()).await;
        assert!(matches!(again, Err(RuntimeError::NameConflict(name)) if name == spec.name));
        // Names are per engine: another worker may use it.
        let mut elsewhere = spec.clone();
        elsewhere.worker = "w2".into();
        runtime
            .start(elsewhere)
            .await
            .expect("started on another worker");

        let mut missing = spec.clone();
        missing.name = "other".into();
        missing.image = "cube-test/missing:latest".into();
        assert!(matches!(
            runtime.start(missing).await,
            Err(RuntimeError::ImageUnavailable { .. })
        ));
    }

    #[tokio::test]
    async fn exit_n_announces_an_exit() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let mut events = runtime.events("w1".into());
        for (cmd, code) in [
            (&["sh", "-c", "exit 3"][..], 3),
            (&["exit", "4"][..], 4),
            (&["true"][..], 0),
            (&["false"][..], 1),
        ] {
            let status = runtime.start(spec("w1", cmd)).await.expect("started");
            assert!(!status.running, "{cmd:?}");
            assert_eq!(status.exit_code, Some(code), "{cmd:?}");
            assert_eq!(
                next_event(&mut events).await,
                RuntimeEvent::Exited {
                    container_id: status.container_id.clone()
                }
            );
            let inspected = runtime
                .inspect(status.container_id)
                .await
                .expect("inspect")
                .expect("still recorded");
            assert_eq!(inspected.exit_code, Some(code));
            assert!(inspected.finished_at.is_some());
        }
    }

    #[tokio::test]
    async fn sleep_n_exits_zero_later() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let mut events = runtime.events("w1".into());
        let status = runtime
            .start(spec("w1", &["sleep", "0.2"]))
            .await
            .expect("started");
        assert!(status.running);
        assert_eq!(
            next_event(&mut events).await,
            RuntimeEvent::Exited {
                container_id: status.container_id.clone()
            }
        );
        let inspected = runtime
            .inspect(status.container_id)
            .await
            .expect("inspect")
            .expect("still recorded");
        assert!(!inspected.running);
        assert_eq!(inspected.exit_code, Some(0));
    }

    #[tokio::test]
    async fn stop_removes_and_announces() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let mut events = runtime.events("w1".into());
        let spec = spec("w1", &["sleep", "3600"]);
        let status = runtime.start(spec.clone()).await.expect("started");
        runtime
            .stop(status.container_id.clone(), Duration::from_secs(1))
            .await
            .expect("stopped");
        assert_eq!(
            next_event(&mut events).await,
            RuntimeEvent::Exited {
                container_id: status.container_id.clone()
            }
        );
        assert_eq!(
            runtime
                .inspect(status.container_id.clone())
                .await
                .expect("inspect"),
            None
        );
        assert!(runtime.list("w1".into()).await.expect("list").is_empty());
        assert_eq!(runtime.container_count(), 0);
        // Gone already is fine, and the name is free again.
        runtime
            .stop(status.container_id.clone(), Duration::ZERO)
            .await
            .expect("stopped twice");
        runtime.remove(status.container_id).await.expect("removed");
        runtime.start(spec).await.expect("name reusable");
    }

    #[tokio::test]
    async fn lagging_subscriber_gets_resync() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let mut events = runtime.events("w1".into());
        for _ in 0..EVENTS_CAPACITY + 5 {
            runtime.start(spec("w1", &["true"])).await.expect("started");
        }
        assert_eq!(next_event(&mut events).await, RuntimeEvent::Resync);
        assert!(matches!(
            next_event(&mut events).await,
            RuntimeEvent::Exited { .. }
        ));
    }

    fn with_volumes(worker: &str, volumes: &[&str]) -> ContainerSpec {
        let mut spec = spec(worker, &[]);
        spec.volumes = volumes
            .iter()
            .map(|v| crate::volume::Volume::parse(v).expect("a volume"))
            .collect();
        spec
    }

    #[tokio::test]
    async fn host_paths_need_a_prefix_the_worker_allows() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        let refused = runtime
            .start(with_volumes("w1", &["/srv/data/web:/web"]))
            .await
            .expect_err("no host path is allowed by default");
        assert_eq!(
            refused.to_string(),
            "volume /srv/data/web:/web: host path /srv/data/web is not under a path this worker allows (--allow-host-path); it allows: none"
        );
        assert_eq!(runtime.container_count(), 0, "nothing was created");

        runtime.allow_host_paths("w1", vec!["/srv/data".into()]);
        assert_eq!(runtime.allowed_host_paths("w1"), vec!["/srv/data"]);
        assert!(runtime.allowed_host_paths("w2").is_empty());
        runtime
            .start(with_volumes("w1", &["/srv/data/web:/web:ro"]))
            .await
            .expect("allowed on w1");
        // Allowances are per worker.
        let elsewhere = runtime
            .start(with_volumes("w2", &["/srv/data/web:/web"]))
            .await
            .expect_err("w2 allows nothing");
        assert!(
            elsewhere.to_string().contains("it allows: none"),
            "{elsewhere}"
        );
        let sibling = runtime
            .start(with_volumes("w1", &["/srv/database:/db"]))
            .await
            .expect_err("a sibling of the prefix is not under it");
        assert!(
            sibling.to_string().contains("it allows: /srv/data"),
            "{sibling}"
        );
    }

    #[tokio::test]
    async fn named_volumes_are_remembered_per_worker_and_kept_after_the_container() {
        let runtime = FakeRuntime::new(Duration::ZERO);
        assert!(runtime.volumes("w1".into()).await.expect("list").is_empty());
        let first = runtime
            .start(with_volumes("w1", &["data:/data", "cache:/cache:ro"]))
            .await
            .expect("started");
        runtime
            .start(with_volumes("w1", &["data:/other"]))
            .await
            .expect("started");
        let names = |v: Vec<VolumeInfo>| v.into_iter().map(|v| v.name).collect::<Vec<_>>();
        let created = runtime.volumes("w1".into()).await.expect("list");
        assert!(created.iter().all(|v| v.created_at.is_some()));
        assert_eq!(names(created.clone()), vec!["cache", "data"]);
        runtime
            .stop(first.container_id, Duration::ZERO)
            .await
            .expect("stopped");
        assert_eq!(
            runtime.volumes("w1".into()).await.expect("list"),
            created,
            "kept, with their creation times, after the container"
        );
        assert!(runtime.volumes("w2".into()).await.expect("list").is_empty());
        // A refused start creates nothing.
        let _ = runtime
            .start(with_volumes("w2", &["logs:/logs", "/etc:/etc"]))
            .await
            .expect_err("/etc is not allowed");
        assert!(runtime.volumes("w2".into()).await.expect("list").is_empty());
    }

    #[test]
    fn commands_map_to_lifetimes() {
        let of = |cmd: &[&str]| lifetime_of(&cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(of(&[]), Lifetime::UntilStopped);
        assert_eq!(of(&["httpd", "-f"]), Lifetime::UntilStopped);
        assert_eq!(
            of(&["sleep", "1.5"]),
            Lifetime::ExitsAfter(Duration::from_millis(1500))
        );
        assert_eq!(
            of(&["/bin/sh", "-c", "sleep 2"]),
            Lifetime::ExitsAfter(Duration::from_secs(2))
        );
        assert_eq!(of(&["sleep", "x"]), Lifetime::ExitsAtStart(1));
        assert_eq!(of(&["exit", "256"]), Lifetime::ExitsAtStart(0));
        assert_eq!(of(&["sh", "-c", "exit"]), Lifetime::ExitsAtStart(0));
        assert_eq!(of(&["sh", "-c", "exit 7"]), Lifetime::ExitsAtStart(7));
        assert_eq!(of(&["sh", "-c", "echo hi"]), Lifetime::UntilStopped);
    }
}
