//! Fault tolerance, proven by killing real processes with SIGKILL: node loss, failing
//! containers, failing health checks and a manager crash in the middle of a burst.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[test]
fn a_lost_worker_s_tasks_run_elsewhere_and_its_return_leaves_one_copy_each() {
    let mut c = Cluster::start(3, &["--scheduler", "roundrobin", "--node-timeout", "2"]);
    let running = c.running_sleepers(6);
    let tasks = running.clone();
    let lost = running[0]["worker"].as_str().expect("a worker").to_string();
    let lost_index = c.worker_index(&lost);
    let moved: HashSet<String> = running
        .iter()
        .filter(|t| t["worker"] == lost.as_str())
        .map(|t| t["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!moved.is_empty());
    c.kill_worker(lost_index);

    // Every task runs again, none on the lost worker; moved ones have a new attempt and no
    // restart counted.
    eventually("all six Running on the other two workers", || {
        tasks
            .iter()
            .map(|t| c.task(t))
            .all(|t| t["state"] == "Running" && t["worker"] != lost.as_str())
            .then_some(())
    });
    for t in &tasks {
        let t = c.task(t);
        if moved.contains(t["id"].as_str().unwrap_or("")) {
            assert_eq!(t["attempt"], 2, "{t}");
            assert_eq!(t["restart_count"], 0, "{t}");
        }
    }
    let nodes: Value = c.http.get(&c.url("/nodes")).json();
    let lost_node = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == lost.as_str()).cloned())
        .expect("the lost worker is listed");
    assert_eq!(lost_node["status"], "Down", "{lost_node}");

    // Back again: the copies it kept running are stopped; each task has exactly one.
    c.restart_worker(lost_index);
    c.wait_ready(3);
    eventually("exactly one running container per task", || {
        tasks
            .iter()
            .all(|t| c.running_copies(t["id"].as_str().unwrap_or("")) == 1)
            .then_some(())
    });
    for t in &tasks {
        assert_eq!(c.task(t)["state"], "Running");
    }
}

#[test]
fn on_failure_restarts_until_max_restarts_then_stays_failed() {
    let c = Cluster::start(1, &[]);
    let t = c.submit(json!({
        "image": IMAGE, "cmd": ["sh", "-c", "exit 3"],
        "restart_policy": "on-failure", "max_restarts": 2
    }));
    let done = eventually("the task Failed with its restarts used up", || {
        let t = c.task(&t);
        (t["state"] == "Failed" && t["restart_count"] == 2).then_some(t)
    });
    assert_eq!(done["exit_code"], 3, "{done}");
    assert_eq!(done["attempt"], 3, "{done}");
    // Nothing more happens after the last restart.
    std::thread::sleep(Duration::from_secs(5));
    let later = c.task(&t);
    assert_eq!(later["state"], "Failed");
    assert_eq!(later["restart_count"], 2);
    assert_eq!(later["attempt"], 3);
}

#[test]
fn a_never_policy_or_a_users_stop_ends_restarts() {
    let c = Cluster::start(1, &[]);
    let never = c.submit(json!({"image": IMAGE, "cmd": ["false"], "restart_policy": "never"}));
    let failing = c.submit(json!({
        "image": IMAGE, "cmd": ["sh", "-c", "sleep 1; exit 1"], "max_restarts": 10
    }));
    let t = wait_state(&c.http, &c.task_url(&never), "Failed");
    assert_eq!(t["restart_count"], 0);
    eventually("a restart of the failing task", || {
        (c.task(&failing)["restart_count"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert_eq!(c.http.delete(&c.task_url(&failing)).status, 202);
    let stopped = wait_state(&c.http, &c.task_url(&failing), "Completed");
    std::thread::sleep(Duration::from_secs(4));
    let later = c.task(&failing);
    assert_eq!(later["state"], "Completed");
    assert_eq!(later["attempt"], stopped["attempt"]);
    assert_eq!(c.task(&never)["restart_count"], 0);
}

#[test]
fn an_unhealthy_task_is_restarted_and_a_healthy_one_is_left_alone() {
    let c = Cluster::start(1, &["--health-interval", "1"]);
    let serve = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8080 -h /www";
    let healthy = c.submit(json!({
        "image": IMAGE, "cmd": ["sh", "-c", serve], "exposed_ports": ["8080/tcp"],
        "health_check": "/health", "stop_timeout_s": 1
    }));
    let unhealthy = c.submit(json!({
        "image": IMAGE, "cmd": ["sh", "-c", serve], "exposed_ports": ["8080/tcp"],
        "health_check": "/missing", "stop_timeout_s": 1
    }));
    let restarted = eventually("the unhealthy task restarted", || {
        let t = c.task(&unhealthy);
        (t["restart_count"].as_u64().unwrap_or(0) >= 1).then_some(t)
    });
    assert!(
        restarted["attempt"].as_u64().unwrap_or(0) >= 2,
        "{restarted}"
    );
    let t = eventually("the restarted attempt Running", || {
        let t = c.task(&unhealthy);
        (t["state"] == "Running").then_some(t)
    });
    assert!(t["attempt"].as_u64().unwrap_or(0) >= 2);
    let h = c.task(&healthy);
    assert_eq!(h["state"], "Running", "{h}");
    assert_eq!(h["restart_count"], 0, "{h}");
    assert_eq!(h["attempt"], 1, "{h}");
}

#[test]
fn a_manager_killed_mid_burst_keeps_every_acknowledged_task_exactly_once() {
    let mut c = Cluster::start(2, &["--scheduler", "spread"]);
    let url = c.url("/tasks");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = Http::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = uuid::Uuid::new_v4().to_string();
                    let body = json!({"task": {"id": id, "image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1}});
                    match http.try_post(&url, body.to_string()) {
                        Some(r) if r.status == 201 || r.status == 200 => {
                            acked.lock().expect("lock").push(id)
                        }
                        // Refused or cut off by the crash: not acknowledged, so not promised.
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    eventually("some acknowledged submissions", || {
        (acked.lock().expect("lock").len() >= 12).then_some(())
    });
    c.restart_manager();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    let acked = acked.lock().expect("lock").clone();
    let all: Value = c.http.get(&c.url("/tasks?limit=5000")).json();
    let known: HashMap<String, Value> = all
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["id"].as_str().unwrap_or("").to_string(), t.clone()))
        .collect();
    for id in &acked {
        assert!(known.contains_key(id), "acknowledged task {id} was lost");
    }
    for id in &acked {
        wait_state(&c.http, &c.url(&format!("/tasks/{id}")), "Running");
    }
    eventually("every acknowledged task running exactly once", || {
        let mut per_task: HashMap<String, usize> = HashMap::new();
        for name in &c.names {
            for container in containers(name, false) {
                if let Some(i) = inspect(&container) {
                    let id = i["Config"]["Labels"]["cube.task.id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    *per_task.entry(id).or_insert(0) += 1;
                }
            }
        }
        acked
            .iter()
            .all(|id| per_task.get(id) == Some(&1))
            .then_some(())
    });
}
