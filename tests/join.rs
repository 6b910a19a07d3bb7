//! Workers that join a running manager, and nodes forgotten, with real processes and Docker.

mod common;

use std::path::Path;

use common::{Containers, CubeProcess, Http, eventually, sleeper, test_image, unique, wait_state};
use serde_json::{Value, json};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
const CLUSTER: &str = "cluster-token-0123456789abcdef";

/// A manager with tokens and a cluster token, and no `--workers`, on `port` (0: a free one).
fn manager(dir: &Path, port: u16) -> CubeProcess {
    let file = dir.join("tokens");
    std::fs::write(&file, format!("read {READ}\nwrite {WRITE}\n")).expect("write tokens");
    let data = dir.join("manager");
    CubeProcess::start_with_env(
        &[
            "manager",
            "--port",
            &port.to_string(),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--token-file",
            file.to_str().expect("utf-8"),
        ],
        &[("CUBE_CLUSTER_TOKEN", CLUSTER)],
        dir,
        "manager",
    )
}

/// A Docker worker that joins `manager` with `token`.
fn joining_worker(dir: &Path, name: &str, manager: &str, token: &str) -> CubeProcess {
    let data = dir.join(name);
    CubeProcess::start_with_env(
        &[
            "worker",
            "--port",
            "0",
            "--name",
            name,
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--join",
            manager,
        ],
        &[("CUBE_TOKEN", token)],
        dir,
        name,
    )
}

fn node<'a>(nodes: &'a Value, name: &str) -> Option<&'a Value> {
    nodes.as_array()?.iter().find(|n| n["name"] == name)
}

#[test]
fn a_worker_joins_a_running_manager_takes_tasks_and_is_forgotten_once_empty() {
    test_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("join");
    let _containers = Containers::of(&[&name]);
    let mut manager = manager(dir.path(), 0);
    let http = Http::with_token(WRITE);
    let url = |m: &CubeProcess, p: &str| format!("{}{p}", m.url());
    assert_eq!(http.get(&url(&manager, "/nodes")).json(), json!([]));

    let worker = joining_worker(dir.path(), &name, &manager.url(), WRITE);
    eventually("the joined worker to be Ready", || {
        let nodes = http.get(&url(&manager, "/nodes")).json();
        (node(&nodes, &name)?["status"] == "Ready").then_some(())
    });
    // It took the manager's cluster token: nobody else gets in.
    let tasks = format!("{}/tasks", worker.url());
    assert_eq!(Http::new().get(&tasks).status, 401);
    assert_eq!(Http::with_token(CLUSTER).get(&tasks).status, 200);

    let created = http.post(
        &url(&manager, "/tasks"),
        json!({ "task": sleeper() }).to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("an id").to_string();
    let task_url = url(&manager, &format!("/tasks/{id}"));
    let running = wait_state(&http, &task_url, "Running");
    assert_eq!(running["worker"], Value::String(name.clone()));

    // The join is durable: a restarted manager watches the worker again by itself.
    let port = manager.port();
    manager.kill();
    let manager = self::manager(dir.path(), port);
    eventually(
        "the joined worker to be Ready after a manager restart",
        || {
            let nodes = http.get(&url(&manager, "/nodes")).json();
            (node(&nodes, &name)?["status"] == "Ready").then_some(())
        },
    );

    // A node with tasks is not forgotten; the answer names them.
    let node_url = url(&manager, &format!("/nodes/{name}"));
    let refused = http.delete(&node_url);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap_or("").contains(&id));
    assert_eq!(Http::with_token(READ).delete(&node_url).status, 403);

    assert_eq!(http.delete(&task_url).status, 202);
    wait_state(&http, &task_url, "Completed");
    let forgotten = http.delete(&node_url);
    assert_eq!(forgotten.status, 204, "{}", forgotten.body);
    assert!(node(&http.get(&url(&manager, "/nodes")).json(), &name).is_none());
    assert_eq!(http.delete(&node_url).status, 404);

    // Nothing is placed there any more.
    let other = http.post(
        &url(&manager, "/tasks"),
        json!({ "task": sleeper() }).to_string(),
    );
    assert_eq!(other.status, 201);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let other = http
        .get(&url(
            &manager,
            &format!("/tasks/{}", other.json()["id"].as_str().unwrap_or("")),
        ))
        .json();
    assert_eq!(other["state"], "Pending", "{other}");
    drop(worker);
}

#[test]
fn a_join_without_a_write_token_is_refused_and_the_worker_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = manager(dir.path(), 0);
    for (token, says) in [(READ, "403"), ("not-a-token-0123456789", "401")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cube"))
            .args([
                "worker",
                "--port",
                "0",
                "--runtime",
                "fake",
                "--name",
                "refused",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("w"))
            .args(["--join", &manager.url()])
            .env("CUBE_TOKEN", token)
            .env_remove("CUBE_CLUSTER_TOKEN")
            .output()
            .expect("run cube worker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a worker joined with {token}");
        assert!(
            err.contains("refused the join") && err.contains(says) && err.contains("--token"),
            "{err}"
        );
    }
    let nodes = Http::with_token(READ).get(&format!("{}/nodes", manager.url()));
    assert_eq!(nodes.json(), json!([]));
}

#[test]
fn bad_joins_get_a_400_that_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = manager(dir.path(), 0);
    let http = Http::with_token(WRITE);
    let nodes = format!("{}/nodes", manager.url());
    for (body, says) in [
        (json!({"name": "w/1", "port": 5556}), "name"),
        (json!({"name": "w1", "address": "no-port"}), "address"),
        (json!({"name": "w1"}), "address"),
        (json!({"name": "w1", "port": 0}), "port"),
        (json!({"name": "w1", "port": 5556, "extra": 1}), "extra"),
    ] {
        let reply = http.post(&nodes, body.to_string());
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = reply.json()["error"].as_str().unwrap_or("").to_string();
        assert!(error.contains(says), "{body}: {error}");
    }
}
