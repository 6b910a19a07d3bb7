//! The lifecycle's promises in the races that broke them, with real processes and Docker: an
//! acknowledged stop is carried out, no task runs twice once the dust settles, and a lost
//! worker's tasks run elsewhere.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[test]
fn concurrent_post_then_delete_pairs_leave_no_container_and_every_task_completed() {
    let c = Cluster::start(2, &["--scheduler", "roundrobin"]);
    let url = c.url("/tasks");
    let stopped = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (url, stopped) = (url.clone(), stopped.clone());
            std::thread::spawn(move || {
                let http = Arc::new(Http::new());
                for pair in 0..5 {
                    // The DELETE follows the POST by a few milliseconds, without waiting for
                    // its answer: a user who changes their mind at once.
                    let id = uuid::Uuid::new_v4().to_string();
                    let post = {
                        let (http, url, body) =
                            (http.clone(), url.clone(), sleeper_with_id(&id).to_string());
                        std::thread::spawn(move || http.try_post(&url, body))
                    };
                    std::thread::sleep(Duration::from_millis(((client * 5 + pair) % 7) as u64 * 3));
                    let task_url = format!("{url}/{id}");
                    let deleted = eventually("the DELETE to be accepted", || {
                        let r = http.delete(&task_url);
                        (r.status == 202).then_some(r)
                    });
                    let posted = post.join().expect("the POST thread").expect("an answer");
                    assert_eq!(posted.status, 201, "{}", posted.body);
                    assert_eq!(deleted.json()["desired"], "stopped", "{}", deleted.body);
                    stopped.lock().expect("lock").push(id);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    let stopped = stopped.lock().expect("lock").clone();
    assert_eq!(stopped.len(), 30);
    for id in &stopped {
        wait_state(&c.http, &c.url(&format!("/tasks/{id}")), "Completed");
    }
    // Starts that were still on their way must not bring a container back.
    std::thread::sleep(Duration::from_secs(3));
    let ids: HashSet<&str> = stopped.iter().map(String::as_str).collect();
    let left: Vec<String> = c
        .names
        .iter()
        .flat_map(|n| containers(n, false))
        .filter(|cid| {
            inspect(cid).is_some_and(|i| {
                ids.contains(i["Config"]["Labels"]["cube.task.id"].as_str().unwrap_or(""))
            })
        })
        .collect();
    assert!(
        left.is_empty(),
        "containers of stopped tasks still run: {left:?}"
    );
    for id in &stopped {
        let t = c.http.get(&c.url(&format!("/tasks/{id}"))).json();
        assert_eq!(t["state"], "Completed", "{t}");
    }
}

#[test]
fn a_delete_while_the_worker_is_away_is_carried_out_when_it_returns() {
    let mut c = Cluster::start(1, &["--node-timeout", "30"]);
    let t = c.submit(sleeper());
    let id = t["id"].as_str().expect("an id").to_string();
    wait_state(&c.http, &c.task_url(&t), "Running");
    // The worker dies (its container keeps running) and the manager restarts without it.
    c.kill_worker(0);
    c.restart_manager();
    let r = c.http.delete(&c.task_url(&t));
    assert_eq!(r.status, 202, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["desired"], "stopped", "{answer}");
    // Running, or Scheduled when the manager was killed before its record of Running was
    // committed (reports are written behind, and the worker's next report restores it): never
    // Completed before the worker says the copy is gone.
    assert!(
        answer["state"] == "Running" || answer["state"] == "Scheduled",
        "not Completed before its worker says so: {answer}"
    );
    assert_eq!(c.running_copies(&id), 1);
    // The worker returns (the manager knows it from its store): the stop is carried out.
    c.restart_worker(0);
    wait_state(&c.http, &c.task_url(&t), "Completed");
    eventually("no container of the stopped task", || {
        (c.running_copies(&id) == 0).then_some(())
    });
}

#[test]
fn a_worker_dead_when_the_manager_starts_becomes_down_and_its_tasks_run_elsewhere() {
    let mut c = Cluster::start(2, &["--scheduler", "roundrobin", "--node-timeout", "2"]);
    let tasks = c.running_sleepers(4);
    let lost = tasks[0]["worker"].as_str().expect("a worker").to_string();
    let lost_index = c.worker_index(&lost);
    c.kill_worker(lost_index);
    c.restart_manager();
    let started = std::time::Instant::now();
    eventually("the dead worker Down", || {
        let nodes = c.http.get(&c.url("/nodes")).json();
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == lost.as_str() && n["status"] == "Down")
            .then_some(())
    });
    eventually("every task Running on the live worker", || {
        tasks
            .iter()
            .map(|t| c.task(t))
            .all(|t| t["state"] == "Running" && t["worker"] != lost.as_str())
            .then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(2 + 15),
        "took {:?}",
        started.elapsed()
    );
    for t in &tasks {
        assert_eq!(c.task(t)["restart_count"], 0, "a move is not a restart");
    }
}

#[test]
fn node_loss_racing_the_workers_return_leaves_exactly_one_copy_of_each_task() {
    let mut c = Cluster::start(2, &["--scheduler", "roundrobin", "--node-timeout", "2"]);
    for offset_ms in [-300i64, 0, 300] {
        let tasks = c.running_sleepers(4);
        let lost = tasks[0]["worker"].as_str().expect("a worker").to_string();
        let i = c.worker_index(&lost);
        c.kill_worker(i);
        // Back right around the moment its silence reaches the node timeout.
        std::thread::sleep(Duration::from_millis((2000 + offset_ms) as u64));
        c.restart_worker(i);
        c.wait_ready(2);
        eventually("each task Running with exactly one container", || {
            tasks
                .iter()
                .all(|t| {
                    c.task(t)["state"] == "Running"
                        && c.running_copies(t["id"].as_str().unwrap_or("")) == 1
                })
                .then_some(())
        });
        for t in &tasks {
            assert!(c.http.delete(&c.task_url(t)).status == 202);
        }
        for t in &tasks {
            wait_state(&c.http, &c.task_url(t), "Completed");
        }
    }
}
