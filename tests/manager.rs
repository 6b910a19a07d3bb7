//! The manager as users see it: a real `cube manager` process with two real `cube worker`
//! processes on Docker, driven over HTTP and through the `cube` CLI.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

#[test]
fn submission_reaches_running_in_a_labelled_container_on_a_named_worker() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    // curl-style: a raw body, as a user would type it.
    let r = c.http.post(
        &c.url("/tasks"),
        format!(r#"{{"task": {{"name": "web", "image": "{IMAGE}", "cmd": ["httpd", "-f", "-p", "8080"], "exposed_ports": ["8080/tcp"]}}}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json();
    assert_eq!(t["state"], "Pending");
    let t = wait_state(&c.http, &c.task_url(&t), "Running");
    let worker = t["worker"].as_str().expect("a worker");
    assert!(c.names.iter().any(|n| n == worker), "{worker}");
    let container = inspect(t["container_id"].as_str().expect("a container")).expect("it exists");
    assert_eq!(container["Config"]["Labels"]["cube.task.id"], t["id"]);
    assert_eq!(container["Config"]["Labels"]["cube.worker"], worker);
    assert!(t["host_ports"]["8080/tcp"].is_string(), "{t}");
    assert_eq!(t["attempt"], 1);
}

#[test]
fn round_robin_spreads_five_tasks_over_both_workers() {
    let c = Cluster::start(2, &["--scheduler", "round-robin"]);
    let tasks: Vec<Value> = (0..5).map(|_| c.submit(sleeper())).collect();
    let mut per_worker = std::collections::HashMap::new();
    for t in &tasks {
        let t = wait_state(&c.http, &c.task_url(t), "Running");
        *per_worker
            .entry(t["worker"].as_str().unwrap_or_default().to_string())
            .or_insert(0usize) += 1;
    }
    let mut counts: Vec<usize> = per_worker.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![2, 3], "{per_worker:?}");
    for name in &c.names {
        assert_eq!(containers(name, false).len(), per_worker[name.as_str()]);
    }
    // The listing filters by worker and by state.
    let on_first: Value = c
        .http
        .get(&c.url(&format!("/tasks?worker={}", c.names[0])))
        .json();
    assert_eq!(
        on_first.as_array().map(Vec::len),
        Some(per_worker[c.names[0].as_str()])
    );
    let running: Value = c.http.get(&c.url("/tasks?state=Running")).json();
    assert_eq!(running.as_array().map(Vec::len), Some(5));
}

#[test]
fn nodes_lists_both_workers_with_capacity() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let nodes: Value = c.http.get(&c.url("/nodes")).json();
    let nodes = nodes.as_array().expect("an array");
    assert_eq!(nodes.len(), 2);
    for (n, w) in nodes.iter().zip(c.workers.iter().flatten()) {
        assert!(c.names.iter().any(|name| n["name"] == name.as_str()), "{n}");
        assert_eq!(n["status"], "Ready");
        assert!(n["memory"].as_u64().unwrap_or(0) > 0);
        assert!(n["last_seen"].is_string());
        assert!(nodes.iter().any(|n| n["address"] == w.addr.as_str()));
    }
}

#[test]
fn delete_stops_and_removes_the_container_then_completes() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let t = c.submit(sleeper());
    let url = c.task_url(&t);
    let t = wait_state(&c.http, &url, "Running");
    let container = t["container_id"].as_str().expect("a container").to_string();
    let r = c.http.delete(&url);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&c.http, &url, "Completed");
    eventually("the container to be removed", || {
        inspect(&container).is_none().then_some(())
    });
    // Stopping again is harmless; unknown and malformed ids are told apart.
    assert_eq!(c.http.delete(&url).status, 202);
    assert_eq!(
        c.http
            .delete(&c.url(&format!("/tasks/{}", uuid::Uuid::new_v4())))
            .status,
        404
    );
    assert_eq!(c.http.delete(&c.url("/tasks/xyz")).status, 400);
}

#[test]
fn bad_bodies_get_400_with_the_expected_shape() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let r = c.http.post(&c.url("/tasks"), r#"{"task": "example"}"#);
    assert_eq!(r.status, 400);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(r#"{"task": {"image""#), "{error}");
    for (body, needle) in [
        ("", "not valid JSON"),
        (r#"{"task": {}}"#, "task.image"),
        (
            r#"{"task": {"image": "x", "memory": "lots"}}"#,
            "task.memory",
        ),
    ] {
        let r = c.http.post(&c.url("/tasks"), body);
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{}",
            r.body
        );
    }
    assert_eq!(c.http.get(&c.url("/tasks/1234")).status, 400);
    assert_eq!(
        c.http
            .get(&c.url(&format!("/tasks/{}", uuid::Uuid::new_v4())))
            .status,
        404
    );
    assert_eq!(c.http.get(&c.url("/tasks?state=Sleeping")).status, 400);
    assert_eq!(c.http.get(&c.url("/tasks?limit=many")).status, 400);
    assert_eq!(c.http.get(&c.url("/health")).status, 200);
}

#[test]
fn a_client_chosen_id_makes_submission_idempotent() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"task": {"id": id, "image": IMAGE, "cmd": ["sleep", "600"]}}).to_string();
    let first = c.http.post(&c.url("/tasks"), &body);
    assert_eq!(first.status, 201, "{}", first.body);
    let again = c.http.post(&c.url("/tasks"), &body);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], id.as_str());
    let other = json!({"task": {"id": id, "image": IMAGE, "cmd": ["sleep", "1"]}}).to_string();
    let r = c.http.post(&c.url("/tasks"), &other);
    assert_eq!(r.status, 409, "{}", r.body);
    wait_state(&c.http, &c.url(&format!("/tasks/{id}")), "Running");
    let all: Value = c.http.get(&c.url("/tasks?limit=5000")).json();
    assert_eq!(all.as_array().map(Vec::len), Some(1));
}

#[test]
fn a_go_cube_task_file_runs_unchanged() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let task_id = uuid::Uuid::new_v4();
    let body = format!(
        r#"{{
        "ID": "{}",
        "State": 2,
        "Timestamp": "0001-01-01T00:00:00Z",
        "Task": {{
            "ID": "{task_id}",
            "ContainerID": "",
            "Name": "test-chapter-9",
            "State": 1,
            "Image": "{IMAGE}",
            "Cpu": 0.1,
            "Memory": 0,
            "Disk": 0,
            "ExposedPorts": {{"7777/tcp": {{}}}},
            "HostPorts": null,
            "PortBindings": null,
            "RestartPolicy": "",
            "StartTime": "0001-01-01T00:00:00Z",
            "FinishTime": "0001-01-01T00:00:00Z",
            "HealthCheck": "",
            "RestartCount": 0
        }}
    }}"#,
        uuid::Uuid::new_v4()
    );
    let r = c.http.post(&c.url("/tasks"), body.clone());
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["id"], task_id.to_string().as_str());
    let t = wait_state(&c.http, &c.url(&format!("/tasks/{task_id}")), "Running");
    assert_eq!(t["name"], "test-chapter-9");
    assert!(t["host_ports"]["7777/tcp"].is_string(), "{t}");

    // The Go Cube stops a task by sending it again with State 3 (Completed): a DELETE.
    let stop = body.replacen("\"State\": 2", "\"State\": 3", 1);
    let r = c.http.post(&c.url("/tasks"), stop);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["desired"], "stopped");
    wait_state(&c.http, &c.url(&format!("/tasks/{task_id}")), "Completed");
    eventually("no container left", || {
        (c.running_copies(&task_id.to_string()) == 0).then_some(())
    });
}

#[test]
fn tasks_survive_a_manager_sigkill_and_can_still_be_stopped() {
    let mut c = Cluster::start(2, &["--scheduler", "epvm"]);
    let tasks: Vec<Value> = (0..4).map(|_| c.submit(sleeper())).collect();
    for t in &tasks {
        wait_state(&c.http, &c.task_url(t), "Running");
    }
    // Accepted just before the crash: must be there afterwards too.
    let late = c.submit(sleeper());
    c.restart_manager();
    assert_eq!(c.http.get(&c.url("/health")).status, 200);
    let all: Value = c.http.get(&c.url("/tasks?limit=5000")).json();
    assert_eq!(all.as_array().map(Vec::len), Some(5), "{all}");
    for t in tasks.iter().chain(std::iter::once(&late)) {
        wait_state(&c.http, &c.task_url(t), "Running");
    }
    // Exactly one container per task across both workers.
    let running: usize = c.names.iter().map(|n| containers(n, false).len()).sum();
    assert_eq!(running, 5);
    // A task placed before the kill can be stopped.
    let first = &tasks[0];
    let before = c.http.get(&c.task_url(first)).json();
    assert_eq!(c.http.delete(&c.task_url(first)).status, 202);
    wait_state(&c.http, &c.task_url(first), "Completed");
    let container = before["container_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eventually("the container to be gone", || {
        inspect(&container).is_none().then_some(())
    });
    // Paging goes through every task in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = c.http.get(&c.url(&format!("/tasks?limit=2{after}"))).json();
        let page = page.as_array().expect("a page").clone();
        if page.is_empty() {
            break;
        }
        after = format!(
            "&after={}",
            page.last().and_then(|t| t["id"].as_str()).unwrap_or("")
        );
        seen.extend(
            page.into_iter()
                .map(|t| t["id"].as_str().unwrap_or("").to_string()),
        );
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen, sorted);
}

#[test]
fn every_cli_command_works_against_a_manager() {
    let c = Cluster::start(2, &["--scheduler", "epvm"]);
    let file = c.dir.path().join("task.json");
    std::fs::write(
        &file,
        json!({"task": {"name": "echo", "image": IMAGE, "cmd": ["sh", "-c", "echo hi from cube; sleep 600"], "stop_timeout_s": 1}}).to_string(),
    )
    .expect("write task file");
    let out = c.cli(&["run", "-f", file.to_str().expect("utf-8"), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id:?}");
    // --wait's progress is for a terminal; this stderr is a pipe.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Running"));

    // A bare task file works too, and --manager may come after the subcommand.
    let bare = c.dir.path().join("bare.json");
    std::fs::write(
        &bare,
        json!({"image": IMAGE, "cmd": ["sleep", "600"]}).to_string(),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args([
            "run",
            "-f",
            bare.to_str().expect("utf-8"),
            "--manager",
            &c.manager.url(),
        ])
        .output()
        .expect("run cube");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = c.cli(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for header in ["ID", "NAME", "STATE", "WORKER", "IMAGE", "AGE"] {
        assert!(table.contains(header), "{table}");
    }
    assert!(
        table.contains(&id) && table.contains("echo") && table.contains("Running"),
        "{table}"
    );

    let out = c.cli(&["status", &id, "-o", "json"]);
    let t: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(t["id"], id.as_str());

    let out = c.cli(&["node"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for header in [
        "NAME", "ADDRESS", "STATUS", "CPUS", "MEMORY", "DISK", "TASKS",
    ] {
        assert!(table.contains(header), "{table}");
    }
    assert!(
        c.names.iter().all(|n| table.contains(n.as_str())),
        "{table}"
    );

    // Running means started; the shell may not have printed yet.
    eventually("the task's output in cube logs", || {
        let out = c.cli(&["logs", &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .contains("hi from cube")
            .then_some(())
    });

    let out = c.cli(&["stop", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(&c.http, &c.url(&format!("/tasks/{id}")), "Completed");

    let out = c.cli(&["status", "not-a-uuid"]);
    assert!(!out.status.success());
    let out = c.cli(&["stop", &uuid::Uuid::new_v4().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn an_unreachable_manager_is_one_clear_line_and_a_failure() {
    let out = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(["--manager", "http://127.0.0.1:9", "status"])
        .output()
        .expect("run cube");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the manager at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn a_second_worker_with_a_taken_name_is_refused_and_shown() {
    test_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("dup");
    let _containers = Containers::of(&[&name]);
    let start = |sub: &str| {
        let data = dir.path().join(sub);
        CubeProcess::start(
            &[
                "worker",
                "--port",
                "0",
                "--name",
                &name,
                "--data-dir",
                data.to_str().expect("utf-8"),
            ],
            dir.path(),
            sub,
        )
    };
    let (first, second) = (start("a"), start("b"));
    let data = dir.path().join("manager");
    let workers = format!("{},{}", first.addr, second.addr);
    let manager = CubeProcess::start(
        &[
            "manager",
            "--port",
            "0",
            "--workers",
            &workers,
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        dir.path(),
        "manager",
    );
    let http = Http::new();
    let nodes = eventually("one worker Ready and one Refused", || {
        let nodes = http.get(&format!("{}/nodes", manager.url())).json();
        let statuses: Vec<&str> = nodes
            .as_array()?
            .iter()
            .filter_map(|n| n["status"].as_str())
            .collect();
        (statuses.contains(&"Ready") && statuses.contains(&"Refused")).then_some(nodes)
    });
    let refused = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["status"] == "Refused"))
        .expect("a refused node")
        .clone();
    assert_eq!(refused["name"], name.as_str());
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("is bound to the worker at"), "{reason}");
    // Tasks only go to the worker that holds the name.
    let r = http.post(
        &format!("{}/tasks", manager.url()),
        json!({"task": {"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1}}).to_string(),
    );
    assert_eq!(r.status, 201);
    let t = wait_state(
        &http,
        &format!(
            "{}/tasks/{}",
            manager.url(),
            r.json()["id"].as_str().unwrap_or("")
        ),
        "Running",
    );
    assert_eq!(t["worker"], name.as_str());
}
