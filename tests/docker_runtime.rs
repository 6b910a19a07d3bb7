//! The Docker runtime against the real engine of this machine: builds the busybox test image from
//! the host's static busybox, then starts, inspects, lists, stops and watches real containers.
//! Every test uses its own worker name and removes all containers carrying it when it ends, also
//! when it fails (`common::Containers`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cube::runtime::docker::{self, DockerRuntime};
use cube::runtime::{ContainerSpec, Runtime, RuntimeError, RuntimeEvent};
use futures_util::StreamExt;
use uuid::Uuid;

mod common;

use common::{Containers, IMAGE as TEST_IMAGE};

const BUSYBOX: &str = "/bin/busybox";
/// Generous bound for anything Docker should do in about a second.
const DOCKER_WAIT: Duration = Duration::from_secs(30);
/// A failed pull must be reported quickly, not after a long network timeout.
const MISSING_IMAGE_BOUND: Duration = Duration::from_secs(20);

/// A connected runtime, the test image, and a fresh worker name with its cleanup guard.
async fn setup() -> (DockerRuntime, String, Containers) {
    let runtime = docker::connect().await.expect("Docker is reachable");
    runtime
        .build_busybox_image(TEST_IMAGE, Path::new(BUSYBOX))
        .await
        .expect("the busybox test image builds");
    let worker = format!("test-{}", Uuid::new_v4().simple());
    let cleanup = Containers::of(&[&worker]);
    (runtime, worker, cleanup)
}

fn spec(worker: &str, cmd: &[&str]) -> ContainerSpec {
    let task_id = Uuid::new_v4();
    ContainerSpec {
        name: ContainerSpec::container_name(task_id, 1),
        task_id,
        attempt: 1,
        worker: worker.to_string(),
        image: TEST_IMAGE.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cpu: 0.0,
        memory: 0,
        ports: BTreeMap::new(),
        pids_limit: cube::task::DEFAULT_PIDS_LIMIT,
        volumes: vec![],
    }
}

fn docker_label(container_id: &str, label: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{label}\"}}}}");
    let output = Command::new("docker")
        .args(["inspect", "--format", &format, container_id])
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test]
async fn start_runs_with_labels_and_auto_assigned_host_port() {
    let (runtime, worker, _cleanup) = setup().await;
    let mut spec = spec(&worker, &["httpd", "-f", "-p", "8080"]);
    spec.ports.insert("8080/tcp".into(), None);
    spec.cpu = 0.5;
    spec.memory = 64 << 20;
    spec.env = vec!["CUBE_TEST=1".into()];

    let status = runtime.start(spec.clone()).await.expect("started");
    assert!(status.running, "{status:?}");
    assert_eq!(status.task_id, spec.task_id);
    assert_eq!(status.attempt, 1);
    assert_eq!(status.image, TEST_IMAGE);
    assert_eq!(status.exit_code, None);
    assert!(status.started_at.is_some());
    assert_eq!(status.finished_at, None);
    let host_port: u16 = status
        .host_ports
        .get("8080/tcp")
        .unwrap_or_else(|| panic!("a host port for 8080/tcp in {:?}", status.host_ports))
        .parse()
        .expect("a port number");
    assert!(host_port > 0);

    assert_eq!(
        docker_label(&status.container_id, "cube.task.id"),
        spec.task_id.to_string()
    );
    assert_eq!(docker_label(&status.container_id, "cube.attempt"), "1");
    assert_eq!(docker_label(&status.container_id, "cube.worker"), worker);

    let inspected = runtime
        .inspect(status.container_id.clone())
        .await
        .expect("inspect")
        .expect("exists");
    assert!(inspected.running);
    assert_eq!(inspected.host_ports, status.host_ports);

    // Something accepts connections on the bound host port.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], host_port));
    let connected = std::net::TcpStream::connect_timeout(&address, DOCKER_WAIT);
    assert!(connected.is_ok(), "connect to {address}: {connected:?}");
}

#[tokio::test]
async fn exit_code_is_reported_with_an_exit_event() {
    let (runtime, worker, _cleanup) = setup().await;
    let mut events = runtime.events(worker.clone());
    let status = runtime
        .start(spec(&worker, &["sh", "-c", "exit 3"]))
        .await
        .expect("started");

    let deadline = Instant::now() + DOCKER_WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(remaining, events.next())
            .await
            .expect("an exit event in time")
            .expect("the event stream never ends");
        match event {
            RuntimeEvent::Exited { container_id } if container_id == status.container_id => break,
            other => eprintln!("ignoring {other:?}"),
        }
    }

    let inspected = runtime
        .inspect(status.container_id.clone())
        .await
        .expect("inspect")
        .expect("kept until removed");
    assert!(!inspected.running);
    assert_eq!(inspected.exit_code, Some(3));
    assert!(!inspected.oom_killed);
    assert!(inspected.finished_at.is_some());
    assert!(inspected.host_ports.is_empty());

    runtime
        .remove(status.container_id.clone())
        .await
        .expect("removed");
    assert_eq!(
        runtime
            .inspect(status.container_id.clone())
            .await
            .expect("inspect"),
        None
    );
    runtime
        .remove(status.container_id)
        .await
        .expect("removing twice is fine");
}

#[tokio::test]
async fn second_start_with_the_same_name_conflicts() {
    let (runtime, worker, _cleanup) = setup().await;
    let spec = spec(&worker, &["sleep", "600"]);
    runtime.start(spec.clone()).await.expect("started");
    match runtime.start(spec.clone()).await {
        Err(RuntimeError::NameConflict(name)) => assert_eq!(name, spec.name),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    assert_eq!(runtime.list(worker).await.expect("list").len(), 1);
}

#[tokio::test]
async fn missing_image_is_unavailable_quickly() {
    let (runtime, worker, _cleanup) = setup().await;
    let mut spec = spec(&worker, &[]);
    spec.image = format!("cube-test/missing-{}:latest", Uuid::new_v4().simple());
    let began = Instant::now();
    let result = runtime.start(spec.clone()).await;
    match result {
        Err(RuntimeError::ImageUnavailable { image, reason }) => {
            assert_eq!(image, spec.image);
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
    assert!(
        began.elapsed() < MISSING_IMAGE_BOUND,
        "took {:?}",
        began.elapsed()
    );
    assert!(
        !runtime
            .image_exists(&spec.image)
            .await
            .expect("image_exists")
    );
    assert!(
        runtime
            .image_exists(TEST_IMAGE)
            .await
            .expect("image_exists")
    );
}

#[tokio::test]
async fn failed_start_leaves_no_container() {
    let (runtime, worker, _cleanup) = setup().await;
    let spec = spec(&worker, &["/no/such/binary"]);
    match runtime.start(spec.clone()).await {
        Err(RuntimeError::Backend(reason)) => assert!(reason.contains("no such file"), "{reason}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(runtime.list(worker).await.expect("list").is_empty());
    // The name is free again for the next attempt with the same name.
    match runtime.start(spec).await {
        Err(RuntimeError::Backend(_)) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn stop_removes_the_container() {
    let (runtime, worker, _cleanup) = setup().await;
    let status = runtime
        .start(spec(&worker, &["sleep", "600"]))
        .await
        .expect("started");
    let began = Instant::now();
    // sleep as PID 1 ignores SIGTERM, so this also covers the SIGKILL after the grace period.
    runtime
        .stop(status.container_id.clone(), Duration::from_secs(1))
        .await
        .expect("stopped");
    assert!(began.elapsed() < DOCKER_WAIT);
    assert_eq!(
        runtime
            .inspect(status.container_id.clone())
            .await
            .expect("inspect"),
        None
    );
    assert!(runtime.list(worker).await.expect("list").is_empty());
    runtime
        .stop(status.container_id, Duration::from_secs(1))
        .await
        .expect("stopping a gone container is fine");
}

#[tokio::test]
async fn list_returns_only_this_workers_containers() {
    let (runtime, worker, _cleanup) = setup().await;
    let other_worker = format!("{worker}-other");
    let _other_cleanup = Containers::of(&[&other_worker]);

    let running = runtime
        .start(spec(&worker, &["sleep", "600"]))
        .await
        .expect("started");
    let ended = runtime
        .start(spec(&worker, &["true"]))
        .await
        .expect("started");
    runtime
        .start(spec(&other_worker, &["sleep", "600"]))
        .await
        .expect("started");

    let mut listed: Vec<String> = runtime
        .list(worker)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.container_id)
        .collect();
    listed.sort();
    let mut expected = vec![running.container_id, ended.container_id];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(runtime.list(other_worker).await.expect("list").len(), 1);
}

#[tokio::test]
async fn logs_return_the_output() {
    let (runtime, worker, _cleanup) = setup().await;
    let status = runtime
        .start(spec(&worker, &["sh", "-c", "echo hello"]))
        .await
        .expect("started");
    // Following ends when the container does, so this also waits for the output to be complete.
    let chunks: Vec<bytes::Bytes> = tokio::time::timeout(
        DOCKER_WAIT,
        runtime
            .logs(status.container_id.clone(), None, true)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("logs end with the container")
    .into_iter()
    .map(|chunk| chunk.expect("a log chunk"))
    .collect();
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text, "hello\n");

    let tail: Vec<_> = runtime
        .logs(status.container_id, Some(1), false)
        .collect()
        .await;
    assert_eq!(tail.len(), 1);

    let missing: Vec<_> = runtime
        .logs("no-such-container".into(), None, false)
        .collect()
        .await;
    assert!(
        matches!(missing.as_slice(), [Err(RuntimeError::NoSuchContainer(_))]),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_named_volume_is_created_labelled_and_kept_after_its_container() {
    let (runtime, worker, _cleanup) = setup().await;
    let volume = format!("vol-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let mut spec = spec(&worker, &["sh", "-c", "echo kept > /data/file"]);
    spec.volumes = vec![cube::volume::Volume::parse(&format!("{volume}:/data")).expect("a volume")];
    let status = runtime.start(spec).await.expect("started");
    let listed = runtime.volumes(worker.clone()).await.expect("listed");
    let mine = listed
        .iter()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("{volume} in {listed:?}"));
    assert!(mine.created_at.is_some(), "{mine:?}");
    let labels = Command::new("docker")
        .args(["volume", "inspect", "--format", "{{json .Labels}}", &volume])
        .output()
        .expect("docker CLI runs");
    let labels: serde_json::Value =
        serde_json::from_slice(&labels.stdout).expect("the labels as JSON");
    assert_eq!(labels["cube.volume"], volume.as_str());
    assert_eq!(labels["cube.worker"], worker.as_str());

    runtime
        .stop(status.container_id.clone(), Duration::from_secs(1))
        .await
        .expect("stopped");
    assert_eq!(
        runtime.inspect(status.container_id).await.expect("inspect"),
        None
    );
    let listed = runtime.volumes(worker).await.expect("listed");
    assert!(
        listed.iter().any(|v| v.name == volume),
        "{volume} kept after its container: {listed:?}"
    );
}

#[tokio::test]
async fn a_host_path_outside_the_allowed_prefixes_is_refused_before_anything_is_made() {
    let (runtime, worker, _cleanup) = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let allowed = dir.path().to_str().expect("utf-8").to_string();
    let runtime = runtime.with_hardening(cube::runtime::Hardening {
        allowed_host_paths: vec![allowed.clone()],
        ..Default::default()
    });
    let mut spec = spec(&worker, &["true"]);
    spec.volumes = vec![cube::volume::Volume::parse("/etc:/x:ro").expect("a volume")];
    match runtime.start(spec.clone()).await {
        Err(RuntimeError::Refused(m)) => assert_eq!(
            m,
            format!(
                "volume /etc:/x:ro: host path /etc is not under a path this worker allows (--allow-host-path); it allows: {allowed}"
            )
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        common::containers(&worker, true).is_empty(),
        "no container was made"
    );
}
