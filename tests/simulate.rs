//! The simulation, small: a few hundred tasks over a few dozen in-process workers behind the
//! real Manager, Scheduler and WorkerProxy actors and a real LMDB store. Every task must end
//! Running on a simulated worker, with no node booked beyond its capacity.

use std::collections::HashMap;
use std::time::Duration;

use cube::actors::manager::ListTasks;
use cube::actors::policy::PolicyKind;
use cube::node::Capacity;
use cube::sim::{SimConfig, run};
use cube::task::State;

#[actix_web::test]
async fn every_simulated_task_runs_with_a_valid_placement_under_each_policy() {
    for scheduler in [
        PolicyKind::Epvm,
        PolicyKind::RoundRobin,
        PolicyKind::BinPack,
        PolicyKind::Spread,
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SimConfig {
            // More workers than the scheduler scores exactly, so sampling is exercised too.
            workers: 80,
            tasks: 400,
            scheduler,
            data_dir: dir.path().join("manager"),
            capacity: Capacity {
                cpus: 4.0,
                memory: 8 << 30,
                disk: 100 << 30,
            },
            task_cpu: 0.5,
            task_memory: 256 << 20,
            timeout: Duration::from_secs(60),
            progress: false,
        };
        let (report, cluster) = run(&config).await.expect("the simulation completes");
        assert_eq!(report.running, 400, "{scheduler}");
        assert_eq!(report.scheduler, scheduler.to_string());

        let tasks = cluster
            .actors
            .manager
            .send(ListTasks::default())
            .await
            .expect("the manager answers")
            .expect("a listing by id never fails")
            .tasks;
        assert_eq!(tasks.len(), 400);
        let mut per_worker: HashMap<String, usize> = HashMap::new();
        for t in &tasks {
            assert_eq!(t.state, State::Running, "{scheduler}: {t:?}");
            assert_eq!(t.attempt, 1);
            let worker = t.worker.clone().expect("placed");
            assert!(worker.starts_with("sim-"), "{worker}");
            assert!(t.container_id.is_some());
            *per_worker.entry(worker).or_insert(0) += 1;
        }
        let nodes = cluster.nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 80);
        for n in &nodes {
            let placed = per_worker.get(&n.name).copied().unwrap_or(0);
            assert_eq!(n.tasks, placed, "{scheduler}: {n:?}");
            assert!(n.cpu_allocated <= n.cpus + 1e-9, "{scheduler}: {n:?}");
            assert!(n.memory_allocated <= n.memory, "{scheduler}: {n:?}");
            // Eight half-core tasks fill a four-core node.
            assert!(placed <= 8, "{scheduler}: {n:?}");
        }
        if scheduler == PolicyKind::BinPack {
            assert_eq!(per_worker.len(), 50, "bin-pack fills 50 nodes exactly");
        } else {
            assert!(
                per_worker.len() >= 70,
                "{scheduler} spreads: {}",
                per_worker.len()
            );
        }
    }
}
