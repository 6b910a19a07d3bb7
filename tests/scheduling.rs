//! Placement through the real Manager, Scheduler and WorkerProxy actors, with in-process workers
//! on the fake runtime standing in for nodes (the fake runtime is for scheduling at scale, never
//! for Docker behaviour). The store is a real LMDB in a temp dir.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cube::actors::manager::{CountTasks, ListTasks, Submit};
use cube::actors::policy::PolicyKind;
use cube::node::Capacity;
use cube::runtime::fake::FakeRuntime;
use cube::server::{ManagerActors, ManagerConfig};
use cube::task::{State, Task};

const GIB: u64 = 1 << 30;

/// A manager with workers of the given capacities; returns the actors and the workers' names.
fn cluster(policy: PolicyKind, capacities: &[Capacity]) -> (ManagerActors, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ManagerConfig::new(dir.path());
    config.scheduler = policy;
    let actors = ManagerActors::start(&config).expect("manager starts");
    let runtime = Arc::new(FakeRuntime::new(Duration::ZERO));
    for (i, cap) in capacities.iter().enumerate() {
        actors
            .add_local_worker(&format!("n{}", i + 1), runtime.clone(), *cap)
            .expect("worker starts");
    }
    (actors, dir)
}

async fn submit(actors: &ManagerActors, cpu: f64, memory: u64) -> uuid::Uuid {
    let mut task = Task::new("sim");
    task.cpu = cpu;
    task.memory = memory;
    actors
        .manager
        .send(Submit(task))
        .await
        .expect("manager answers")
        .expect("accepted")
        .task
        .id
}

async fn get_task(actors: &ManagerActors, id: uuid::Uuid) -> Task {
    actors
        .manager
        .send(cube::actors::manager::GetTask(id))
        .await
        .expect("the manager answers")
        .expect("the task exists")
}

/// Wait until `n` tasks run; returns how many landed on each node.
async fn placements(actors: &ManagerActors, n: usize) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = actors.manager.send(CountTasks).await.expect("counts");
        if counts.get(&State::Running).copied().unwrap_or(0) >= n {
            break;
        }
        assert!(Instant::now() < deadline, "only {counts:?} after 30 s");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks = actors
        .manager
        .send(ListTasks::default())
        .await
        .expect("the manager answers")
        .expect("a listing by id never fails")
        .tasks;
    let mut per_node = HashMap::new();
    for t in tasks.iter().filter(|t| t.state == State::Running) {
        *per_node
            .entry(t.worker.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    per_node
}

async fn wait_nodes_ready(actors: &ManagerActors, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = actors
            .manager
            .send(cube::actors::manager::ListNodes)
            .await
            .expect("nodes");
        if nodes
            .iter()
            .filter(|n| n.status == cube::node::NodeStatus::Ready && n.cpus > 0.0)
            .count()
            == n
        {
            return;
        }
        assert!(Instant::now() < deadline, "nodes not ready: {nodes:?}");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cap(cpus: f64, mem_gib: u64) -> Capacity {
    Capacity {
        cpus,
        memory: mem_gib * GIB,
        disk: 100 * GIB,
    }
}

#[actix_web::test]
async fn round_robin_places_evenly_in_turn() {
    let (actors, _dir) = cluster(
        PolicyKind::RoundRobin,
        &[cap(4.0, 8), cap(4.0, 8), cap(4.0, 8)],
    );
    wait_nodes_ready(&actors, 3).await;
    for _ in 0..9 {
        submit(&actors, 0.0, 0).await;
    }
    let per_node = placements(&actors, 9).await;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
}

#[actix_web::test]
async fn binpack_fills_one_node_before_the_next() {
    let (actors, _dir) = cluster(PolicyKind::BinPack, &[cap(4.0, 8), cap(4.0, 8)]);
    wait_nodes_ready(&actors, 2).await;
    for _ in 0..5 {
        submit(&actors, 1.0, GIB).await;
    }
    let per_node = placements(&actors, 5).await;
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 4], "{per_node:?}");
}

#[actix_web::test]
async fn spread_and_epvm_balance_by_allocation() {
    for policy in [PolicyKind::Spread, PolicyKind::Epvm] {
        let (actors, _dir) = cluster(policy, &[cap(4.0, 8), cap(4.0, 8)]);
        wait_nodes_ready(&actors, 2).await;
        for _ in 0..6 {
            submit(&actors, 1.0, GIB).await;
        }
        let per_node = placements(&actors, 6).await;
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![3, 3],
            "{policy}: {per_node:?}"
        );
    }
}

#[actix_web::test]
async fn a_task_that_fits_nowhere_waits_pending_and_runs_when_room_appears() {
    let (actors, _dir) = cluster(PolicyKind::Epvm, &[cap(2.0, 8)]);
    wait_nodes_ready(&actors, 1).await;
    let first = submit(&actors, 2.0, 0).await;
    placements(&actors, 1).await;
    let second = submit(&actors, 2.0, 0).await;
    // The second cannot fit while the first holds both cores.
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let t = get_task(&actors, second).await;
        if t.error.is_some() {
            break t;
        }
        assert!(Instant::now() < deadline, "no reason given: {t:?}");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(waiting.state, State::Pending);
    assert!(
        waiting
            .error
            .as_deref()
            .unwrap_or("")
            .contains("cores free"),
        "{waiting:?}"
    );
    // Stopping the first frees the room; the second is placed without being submitted again.
    actors
        .manager
        .send(cube::actors::manager::StopTask(first))
        .await
        .expect("answer")
        .expect("stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = get_task(&actors, second).await;
        if t.state == State::Running {
            break;
        }
        assert!(Instant::now() < deadline, "never placed: {t:?}");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}
