//! `cube snapshot save` and `restore`, with real processes: a snapshot taken while the manager
//! serves, restored into a new data directory, gives a manager that reconciles with the
//! running worker: the snapshot's tasks run on, and what the worker runs that the snapshot does
//! not know is stopped.

mod common;

use std::path::Path;

use common::{
    CubeProcess, Http, eventually, manager_process, run_cube, unique, wait_state,
    worker_process_with,
};
use serde_json::{Value, json};

/// A manager on `dir/data`, watching `worker` when given.
fn manager(dir: &Path, data: &str, worker: Option<&str>) -> CubeProcess {
    match worker {
        Some(worker) => manager_process(dir, data, &["--workers", worker]),
        None => manager_process(dir, data, &[]),
    }
}

fn submit(http: &Http, base: &str) -> String {
    let r = http.post(
        &format!("{base}/tasks"),
        json!({"task": {"image": "cube-sim/task", "cmd": ["sleep", "600"]}}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().expect("an id").to_string()
}

#[test]
fn a_snapshot_restored_into_a_new_manager_reconciles_with_the_running_worker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = worker_process_with(dir.path(), &unique("snap"), 0, &["--runtime", "fake"]);
    let mut first = manager(dir.path(), "first", Some(&worker.addr));
    let http = Http::new();
    let base = first.url();
    let kept: Vec<String> = (0..5).map(|_| submit(&http, &base)).collect();
    for id in &kept {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Running");
    }
    let file = dir.path().join("cube.snapshot");
    let (ok, said) = run_cube(
        &[
            "--manager",
            &base,
            "snapshot",
            "save",
            file.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(ok, "{said}");
    // Submitted after the snapshot: the restored manager never heard of it.
    let later = submit(&http, &base);
    wait_state(&http, &format!("{base}/tasks/{later}"), "Running");
    first.kill();

    // A directory a manager holds is not restored into (this one watches no worker: it would
    // stop every copy it does not know).
    let busy = manager(dir.path(), "busy", None);
    let busy_dir = dir.path().join("busy");
    let (ok, said) = run_cube(
        &[
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            busy_dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(!ok && said.contains("stop the manager first"), "{said}");
    drop(busy);
    // Nor is something that is not a snapshot.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a store").expect("write");
    let (ok, said) = run_cube(
        &[
            "snapshot",
            "restore",
            junk.to_str().expect("utf-8"),
            "--data-dir",
            dir.path().join("x").to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(!ok && said.contains("not a snapshot"), "{said}");

    let restored_dir = dir.path().join("restored");
    let (ok, said) = run_cube(
        &[
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            restored_dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(ok && said.contains("restored 5 task(s)"), "{said}");
    let restored = manager(dir.path(), "restored", Some(&worker.addr));
    let base = restored.url();
    let tasks: Value = http.get(&format!("{base}/tasks")).json();
    let mut ids: Vec<String> = tasks
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(ids, expected);
    for id in &kept {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Running");
    }
    // The copy the snapshot does not know is stopped on the worker.
    let on_worker = format!("{}/tasks/{later}", worker.url());
    eventually("the unknown copy stopped on the worker", || {
        let t = http.get(&on_worker).json();
        (t["state"] != "Running").then_some(())
    });
}
