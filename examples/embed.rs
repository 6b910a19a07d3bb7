//! Embedding Cube in your own actix program: a Manager and Scheduler with three in-process
//! workers, driven through the actors' messages rather than HTTP.
//!
//! ```sh
//! cargo run --example embed                   # fake runtime: runs anywhere
//! cargo run --example embed -- --docker       # real containers (needs cube-demo/busybox:latest)
//! ```
//!
//! The same `ManagerActors` back `cube manager`; here nothing listens on a port. Workers can
//! also be processes elsewhere: `actors.add_worker(WorkerLink::Http("http://host:5556".into()))`. Add
//! `cube::http::manager::configure` to your own actix-web `App` to serve the API as well.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cube::actors::manager::{GetTask, ListNodes, StopTask, Submit};
use cube::runtime::Runtime;
use cube::server::{DEFAULT_FAKE_CAPACITY, ManagerActors, ManagerConfig};
use cube::task::{State, Task};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let docker = std::env::args().any(|a| a == "--docker");

    // The manager's store lives in a temporary directory here; use a real path to keep it.
    let dir = tempfile::tempdir()?;
    let actors = ManagerActors::start(&ManagerConfig::new(dir.path()))?;

    let runtime: Arc<dyn Runtime> = if docker {
        Arc::new(cube::runtime::docker::connect().await?)
    } else {
        Arc::new(cube::runtime::fake::FakeRuntime::new(
            Duration::from_millis(20),
        ))
    };
    for i in 1..=3 {
        actors.add_local_worker(
            &format!("embedded-{i}"),
            runtime.clone(),
            DEFAULT_FAKE_CAPACITY,
        )?;
    }

    // Submit three tasks through the Manager's message API: each answer means "committed".
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut task = Task::new("cube-demo/busybox:latest");
        task.name = format!("embedded-task-{n}");
        task.cmd = vec!["sleep".into(), "60".into()];
        task.cpu = 0.5;
        let submitted = actors.manager.send(Submit(task)).await??;
        ids.push(submitted.task.id);
    }

    let started = Instant::now();
    for id in &ids {
        loop {
            let task = actors
                .manager
                .send(GetTask(*id))
                .await?
                .expect("submitted above");
            if task.state == State::Running {
                println!(
                    "{} {} on {} after {:?}",
                    task.name,
                    task.state,
                    task.worker.as_deref().unwrap_or("?"),
                    started.elapsed()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for node in actors.manager.send(ListNodes).await? {
        println!(
            "node {:<12} {:<6} tasks {} cpu {:.1}/{:.0}",
            node.name,
            format!("{:?}", node.status),
            node.tasks,
            node.cpu_allocated,
            node.cpus
        );
    }
    for id in ids {
        actors.manager.send(StopTask(id)).await??;
    }
    Ok(())
}
