//! Tokens on both APIs, with real processes: who gets in, who is refused and how, and that
//! `cube up` is secure without the user doing anything.

mod common;

use std::path::Path;

use common::{
    Containers, CubeProcess, Http, eventually, free_port, run_cube, run_sleeper, test_image,
    unique, worker_process_with,
};
use serde_json::{Value, json};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
const CLUSTER: &str = "cluster-token-0123456789abcdef";

/// A manager with a read and a write token from a file, and `extra` flags.
fn manager_with_tokens(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> CubeProcess {
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        format!("# role token\nread {READ}\nwrite {WRITE}   # the operator\n"),
    )
    .expect("write the token file");
    let data = dir.join("manager");
    let mut args = vec![
        "manager",
        "--port",
        "0",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--token-file",
        file.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    CubeProcess::start_with_env(&args, env, dir, "manager")
}

/// An error answer: the status and the JSON error shape with a message that says what to do.
fn assert_refused(reply: &common::Reply, status: u16, says: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(says), "{error:?} should say {says:?}");
}

#[test]
fn the_manager_refuses_missing_wrong_and_read_only_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_token = "env-token-0123456789abcdef";
    let manager = manager_with_tokens(dir.path(), &[], &[("CUBE_TOKEN", env_token)]);
    let url = |p: &str| format!("{}{p}", manager.url());
    let task = json!({"task": {"image": "cube-test/busybox", "cmd": ["true"]}}).to_string();

    let anonymous = Http::new();
    assert_refused(&anonymous.get(&url("/tasks")), 401, "Bearer");
    assert_refused(&anonymous.post(&url("/tasks"), &task), 401, "Bearer");
    assert_refused(&anonymous.get(&url("/nodes")), 401, "Bearer");
    let wrong = Http::with_token("not-a-token-of-this-cluster");
    assert_refused(&wrong.get(&url("/tasks")), 401, "token");
    assert_refused(&wrong.delete(&url("/tasks/whatever")), 401, "token");

    // Open to anyone: liveness and the API's description.
    assert_eq!(anonymous.get(&url("/health")).status, 200);

    let reader = Http::with_token(READ);
    assert_eq!(reader.get(&url("/tasks")).status, 200);
    assert_eq!(reader.get(&url("/nodes")).status, 200);
    assert_refused(&reader.post(&url("/tasks"), &task), 403, "read");
    assert_refused(&reader.delete(&url("/tasks/whatever")), 403, "read");

    for writer in [Http::with_token(WRITE), Http::with_token(env_token)] {
        let created = writer.post(&url("/tasks"), &task);
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json()["id"].as_str().expect("an id").to_string();
        assert_eq!(reader.get(&url(&format!("/tasks/{id}"))).status, 200);
    }

    let log = manager.log_text();
    for token in [READ, WRITE, env_token] {
        assert!(!log.contains(token), "a token is in the log:\n{log}");
    }
}

#[test]
fn without_tokens_a_loopback_manager_is_open_and_ignores_the_header() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("manager");
    let manager = CubeProcess::start(
        &[
            "manager",
            "--port",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        dir.path(),
        "manager",
    );
    let url = format!("{}/tasks", manager.url());
    assert_eq!(Http::new().get(&url).status, 200);
    assert_eq!(
        Http::with_token("anything-at-all-here-0000")
            .get(&url)
            .status,
        200
    );
}

#[test]
fn workers_accept_only_the_cluster_token_the_manager_presents() {
    test_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("auth");
    let _containers = Containers::of(&[&name]);
    let worker = {
        let data = dir.path().join(&name);
        CubeProcess::start_with_env(
            &[
                "worker",
                "--port",
                "0",
                "--name",
                &name,
                "--data-dir",
                data.to_str().expect("utf-8"),
            ],
            &[("CUBE_CLUSTER_TOKEN", CLUSTER)],
            dir.path(),
            &name,
        )
    };
    let tasks = format!("{}/tasks", worker.url());
    assert_refused(&Http::new().get(&tasks), 401, "Bearer");
    assert_refused(&Http::with_token(READ).get(&tasks), 401, "token");
    assert_eq!(Http::with_token(CLUSTER).get(&tasks).status, 200);
    assert_eq!(
        Http::new().get(&format!("{}/health", worker.url())).status,
        200
    );

    // A manager with another cluster token is refused, and says so.
    let wrong_dir = tempfile::tempdir().expect("temp dir");
    let wrong = manager_with_tokens(
        wrong_dir.path(),
        &[
            "--workers",
            &worker.addr,
            "--cluster-token",
            "some-other-cluster-token-00",
        ],
        &[],
    );
    eventually("the refused manager to say why", || {
        wrong
            .log_text()
            .contains("refuses this manager")
            .then_some(())
    });
    let nodes = Http::with_token(READ)
        .get(&format!("{}/nodes", wrong.url()))
        .json();
    assert_ne!(nodes[0]["status"], "Ready", "{nodes}");
    drop(wrong);

    // The right one places and runs a task there.
    let manager = manager_with_tokens(
        dir.path(),
        &["--workers", &worker.addr],
        &[("CUBE_CLUSTER_TOKEN", CLUSTER)],
    );
    let running = run_sleeper(&Http::with_token(WRITE), &manager.url());
    assert_eq!(running["worker"], Value::String(name.clone()));
    assert!(!manager.log_text().contains(CLUSTER));
    assert!(!worker.log_text().contains(CLUSTER));
}

#[test]
fn beyond_loopback_both_refuse_to_start_without_tokens_unless_insecure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("m");
    let data = data.to_str().expect("utf-8");
    let (ok, err) = run_cube(
        &[
            "manager",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(!ok, "a manager open to the network started");
    assert!(
        err.contains("--insecure") && err.contains("--token-file"),
        "{err}"
    );

    let (ok, err) = run_cube(
        &[
            "worker",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            &format!("{data}-w"),
        ],
        &[],
    );
    assert!(!ok, "a worker open to the network started");
    assert!(
        err.contains("--insecure") && err.contains("--cluster-token"),
        "{err}"
    );

    let manager = CubeProcess::start(
        &[
            "manager",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            data,
            "--insecure",
        ],
        dir.path(),
        "manager",
    );
    assert!(
        manager.log_text().contains("without authentication"),
        "{}",
        manager.log_text()
    );
    drop(manager);
    let worker = worker_process_with(
        dir.path(),
        &unique("open"),
        0,
        &["--host", "0.0.0.0", "--insecure"],
    );
    assert!(worker.log_text().contains("without authentication"));
}

#[test]
fn cube_up_makes_a_token_that_the_cli_finds_by_itself() {
    let home = tempfile::tempdir().expect("temp dir");
    let home_dir = home.path().to_str().expect("utf-8");
    let port = free_port().to_string();
    let data = home.path().join("data");
    let up_args = [
        "up",
        "--runtime",
        "fake",
        "--workers",
        "2",
        "--port",
        &port,
        "--data-dir",
        data.to_str().expect("utf-8"),
    ];
    let up = CubeProcess::start_with_env(&up_args, &[("HOME", home_dir)], home.path(), "up");
    let manager = up.url();
    let token_file = home
        .path()
        .join(format!(".config/cube/127.0.0.1-{port}.token"));
    let token = std::fs::read_to_string(&token_file).expect("cube up saves its token");
    let token = token.trim();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the token file is readable by others: {mode:o}"
        );
    }
    eventually("the banner to name the token file", || {
        up.log_text().contains(".config/cube/").then_some(())
    });
    assert!(!up.log_text().contains(token), "the token is in the output");

    assert_eq!(Http::new().get(&format!("{manager}/tasks")).status, 401);
    let cli = |args: &[&str]| {
        let mut all = vec!["--manager", manager.as_str()];
        all.extend_from_slice(args);
        run_cube(&all, &[("HOME", home_dir)])
    };
    let (ok, err) = cli(&["status"]);
    assert!(ok, "cube status without a token flag failed: {err}");
    let task = home.path().join("task.json");
    std::fs::write(
        &task,
        r#"{"image": "cube-demo/busybox", "cmd": ["sleep", "600"]}"#,
    )
    .expect("write");
    let (ok, err) = cli(&["run", "-f", task.to_str().expect("utf-8")]);
    assert!(ok, "cube run without a token flag failed: {err}");
    eventually("the task to be Running", || {
        let tasks = Http::with_token(token)
            .get(&format!("{manager}/tasks"))
            .json();
        (tasks[0]["state"] == "Running").then_some(())
    });
    // A wrong token given explicitly wins over the saved one, and is refused.
    let (ok, err) = cli(&["--token", "wrong-token-0123456789abc", "status"]);
    assert!(!ok && err.contains("token"), "{err}");

    // A second `cube up` keeps the token, so shells that hold it keep working.
    drop(up);
    let up = CubeProcess::start_with_env(&up_args, &[("HOME", home_dir)], home.path(), "up");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("token").trim(),
        token
    );
    assert_eq!(
        Http::with_token(token)
            .get(&format!("{}/tasks", up.url()))
            .status,
        200
    );
}
