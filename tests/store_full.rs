//! A store that fills up never wedges, with real processes (a manager and a fake-runtime
//! worker, so no Docker): once the manager's store keeps only its reserve, `POST /tasks` is
//! 507 with what is full and what to do, and nothing of the refused task is left behind;
//! stops, listings and the running tasks' status updates go on; and a manager restarted with a
//! larger `--store-size` takes tasks again. A worker whose store is full answers a new attempt
//! 507 and the manager retries it, rather than failing the task.

mod common;

use common::{
    Http, eventually, manager_process, run_cube, unique, wait_state, worker_process_with,
};
use serde_json::{Value, json};

/// A task the fake runtime runs until it is stopped.
fn task(id: Option<&str>) -> String {
    let mut task = json!({"image": "cube-sim/task", "cmd": ["sleep", "600"]});
    if let Some(id) = id {
        task["id"] = Value::String(id.to_string());
    }
    json!({ "task": task }).to_string()
}

/// Submit tasks with ids of their own until the manager answers something other than 201:
/// the ids accepted, the id refused, and that answer.
fn submit_until_refused(http: &Http, base: &str) -> (Vec<String>, String, common::Reply) {
    let mut accepted = Vec::new();
    loop {
        assert!(accepted.len() < 20_000, "the store never filled up");
        let id = uuid::Uuid::new_v4().to_string();
        let r = http.post(&format!("{base}/tasks"), task(Some(&id)));
        if r.status != 201 {
            return (accepted, id, r);
        }
        accepted.push(id);
    }
}

/// Every task the manager lists.
fn listed(http: &Http, base: &str) -> Vec<Value> {
    let r = http.get(&format!("{base}/tasks?limit=5000"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.link, None, "one page holds them all");
    r.json().as_array().expect("an array").clone()
}

#[test]
fn a_full_manager_store_refuses_new_tasks_with_507_and_keeps_stopping_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("full");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let mut manager = manager_process(
        dir.path(),
        "manager",
        &["--workers", &worker.addr, "--store-size", "2m"],
    );
    let http = Http::new();
    let base = manager.url();

    let (accepted, refused_id, refused) = submit_until_refused(&http, &base);
    assert_eq!(refused.status, 507, "{}", refused.body);
    eprintln!("{} tasks accepted in a 2 MiB store", accepted.len());
    assert!(
        accepted.len() > 200,
        "only {} tasks fit in 1 MiB",
        accepted.len()
    );
    let message = refused.json()["error"]
        .as_str()
        .expect("the JSON error shape")
        .to_string();
    let store = std::fs::canonicalize(dir.path().join("manager")).expect("the store's path");
    for says in [
        "the manager's store is full",
        &store.display().to_string(),
        "2 MiB it can hold",
        "larger --store-size",
        "free disk space",
        "retention",
    ] {
        assert!(message.contains(says), "{says:?} in {message}");
    }

    // Refused before anything was written: the refused task is not there, and the listing
    // holds exactly the accepted tasks. (Right at the limit, the next submission may be taken
    // once the writes in flight are committed: the store counts them while they are queued.)
    assert_eq!(http.get(&format!("{base}/tasks/{refused_id}")).status, 404);
    let mut ids: Vec<String> = listed(&http, &base)
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_string())
        .collect();
    ids.sort();
    let mut expected = accepted.clone();
    expected.sort();
    assert_eq!(ids, expected);

    // The accepted tasks go on to run: their placements and reports commit into the reserve.
    eventually("every accepted task Running", || {
        let tasks = listed(&http, &base);
        tasks.iter().all(|t| t["state"] == "Running").then_some(())
    });

    // Stops still commit: each is answered 202, and reaches Completed.
    let stopped = &accepted[..20];
    for id in stopped {
        let r = http.delete(&format!("{base}/tasks/{id}"));
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["desired"], "stopped");
    }
    for id in stopped {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Completed");
    }
    // The Go Cube's way of stopping (POST with state Completed) too.
    let go_stop =
        json!({"state": "Completed", "task": {"id": accepted[20], "image": "cube-sim/task"}});
    let r = http.post(&format!("{base}/tasks"), go_stop.to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(
        &http,
        &format!("{base}/tasks/{}", accepted[20]),
        "Completed",
    );
    assert_eq!(listed(&http, &base).len(), accepted.len());

    // A larger store takes tasks again; nothing accepted was lost.
    manager.kill();
    let manager = manager_process(
        dir.path(),
        "manager",
        &["--workers", &worker.addr, "--store-size", "4m"],
    );
    let base = manager.url();
    let r = http.post(&format!("{base}/tasks"), task(None));
    assert_eq!(r.status, 201, "{}", r.body);
    let tasks = listed(&http, &base);
    assert_eq!(tasks.len(), accepted.len() + 1);
    for id in stopped {
        let t = http.get(&format!("{base}/tasks/{id}")).json();
        assert_eq!(t["state"], "Completed", "{t}");
    }
    let new = r.json()["id"].as_str().expect("an id").to_string();
    wait_state(&http, &format!("{base}/tasks/{new}"), "Running");
}

#[test]
fn a_full_worker_store_answers_507_and_the_manager_retries_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("wfull");
    let worker = worker_process_with(
        dir.path(),
        &name,
        0,
        &["--runtime", "fake", "--store-size", "1m"],
    );
    let manager = manager_process(dir.path(), "manager", &["--workers", &worker.addr]);
    let http = Http::new();
    let (base, wbase) = (manager.url(), worker.url());

    // Fill the worker through the manager until the worker itself refuses a new attempt. (The
    // probes it takes are tasks the manager does not know: it stops them.)
    let mut submitted = Vec::new();
    let probe = || {
        let probe =
            json!({"task": {"id": uuid::Uuid::new_v4(), "image": "cube-sim/task", "attempt": 1}});
        http.post(&format!("{wbase}/tasks"), probe.to_string())
    };
    let refused = eventually("the worker's store to fill up", || {
        for _ in 0..50 {
            let r = http.post(&format!("{base}/tasks"), task(None));
            assert_eq!(r.status, 201, "the manager's store has room: {}", r.body);
            submitted.push(r.json()["id"].as_str().expect("an id").to_string());
        }
        let r = probe();
        (r.status == 507).then_some(r)
    });
    // The worker says why, in the JSON error shape.
    let message = refused.json()["error"]
        .as_str()
        .expect("an error")
        .to_string();
    assert!(
        message.contains("the worker's store is full")
            && message.contains("--store-size")
            && message.contains(&name),
        "{message}"
    );

    // A task placed there now is not failed: it stays Scheduled, its start retried, and the
    // manager's log says why. (The store sits at its limit: a commit on the worker may free a
    // page or two, so a task placed at that moment may still get in; so ten are placed at a
    // time, and the first that stays out is the one watched.)
    let stuck = eventually("a task the full worker refuses to start", || {
        let ids: Vec<String> = (0..10)
            .map(|_| {
                let r = http.post(&format!("{base}/tasks"), task(None));
                assert_eq!(r.status, 201, "{}", r.body);
                r.json()["id"].as_str().expect("an id").to_string()
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let mut stuck = None;
        for id in ids {
            let t = http.get(&format!("{base}/tasks/{id}")).json();
            if t["state"] == "Running" {
                submitted.push(id);
                continue;
            }
            assert_eq!(t["state"], "Scheduled", "{t}");
            assert_eq!(t["error"], Value::Null, "{t}");
            stuck.get_or_insert(id);
        }
        stuck
    });
    eventually("the manager's log to name the worker's full store", || {
        manager
            .log_text()
            .contains("the worker's store has no room for new attempts")
            .then_some(())
    });
    let t = http.get(&format!("{base}/tasks/{stuck}")).json();
    assert_ne!(t["state"], "Failed", "{t}");

    // Stops of running tasks still go through on the full worker.
    let running = submitted
        .iter()
        .find(|id| http.get(&format!("{base}/tasks/{id}")).json()["state"] == "Running")
        .expect("a task that got in before the worker filled up")
        .clone();
    let r = http.delete(&format!("{base}/tasks/{running}"));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&http, &format!("{base}/tasks/{running}"), "Completed");
    // And so does the stop of the stuck one: it never ran.
    let r = http.delete(&format!("{base}/tasks/{stuck}"));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&http, &format!("{base}/tasks/{stuck}"), "Completed");
}

#[test]
fn a_bad_store_size_is_a_usage_error_naming_the_flag() {
    for command in ["manager", "worker"] {
        let (ok, text) = run_cube(&[command, "--store-size", "lots"], &[]);
        assert!(!ok, "{text}");
        assert!(
            text.contains("--store-size") && text.contains("e.g. 512m or 64g"),
            "{text}"
        );
    }
}

#[test]
fn a_full_store_takes_tasks_again_once_retention_collects_finished_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("full-retention");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let manager = manager_process(
        dir.path(),
        "manager",
        &[
            "--workers",
            &worker.addr,
            "--store-size",
            "2m",
            "--retention",
            "10s",
        ],
    );
    let http = Http::new();
    let base = manager.url();
    // Tasks that end at once fill the store until it refuses (faster than the retention).
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 20_000, "the store never filled up");
        let body =
            json!({"task": {"image": "cube-sim/task", "cmd": ["true"], "restart_policy": "never"}});
        let r = http.post(&format!("{base}/tasks"), body.to_string());
        if r.status != 201 {
            break r;
        }
        accepted += 1;
    };
    assert_eq!(refused.status, 507, "{}", refused.body);
    // No restart, no bigger store: once the finished tasks are collected, room is back.
    let again = eventually("the store takes tasks again", || {
        let r = http.post(&format!("{base}/tasks"), task(None));
        (r.status == 201).then_some(r)
    });
    let id = again.json()["id"].as_str().expect("an id").to_string();
    wait_state(&http, &format!("{base}/tasks/{id}"), "Running");
}
