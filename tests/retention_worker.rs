//! A worker's retention and its paged feed, with real processes (a manager and a fake-runtime
//! worker): a full report larger than one page of the feed is gathered whole after a manager
//! restart, and finished tasks leave the worker once the manager has recorded them and the
//! retention passed, while a start of a dropped attempt is still refused.

mod common;

use std::time::{Duration, Instant};

use common::{Http, eventually, manager_process, unique, wait_state, worker_process_with};
use serde_json::{Value, json};

/// Small pages, so a hundred tasks make several.
const PAGE: usize = 50;

fn submit(http: &Http, base: &str, cmd: &[&str]) -> String {
    let r = http.post(
        &format!("{base}/tasks"),
        json!({"task": {"image": "cube-sim/task", "cmd": cmd}}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().expect("an id").to_string()
}

fn state_of(http: &Http, base: &str, id: &str) -> Value {
    let r = http.get(&format!("{base}/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Wait up to `limit` for `f`, which a proxy's long-poll (20 s) may delay.
fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_report_larger_than_a_page_is_gathered_whole_after_a_manager_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("pages");
    let page = PAGE.to_string();
    let worker = worker_process_with(
        dir.path(),
        &name,
        0,
        &["--runtime", "fake", "--feed-page", &page],
    );
    let wargs = ["--workers", worker.addr.as_str()];
    let mut manager = manager_process(dir.path(), "manager", &wargs);
    let http = Http::new();
    let base = manager.url();

    // Two pages of tasks that finish at once, then some that finish while the manager is away:
    // their changes are the feed's last, so only the report's last page has them.
    let done: Vec<String> = (0..2 * PAGE)
        .map(|_| submit(&http, &base, &["exit", "0"]))
        .collect();
    for id in &done {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Completed");
    }
    let later: Vec<String> = (0..20)
        .map(|_| submit(&http, &base, &["sleep", "8"]))
        .collect();
    for id in &later {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Running");
    }
    manager.kill();

    // The worker's feed comes in pages to a reader that asks for them; its list stays whole.
    let w = worker.url();
    let all = http.get(&format!("{w}/tasks"));
    assert_eq!(all.json().as_array().map(Vec::len), Some(2 * PAGE + 20));
    let first = http.get(&format!("{w}/tasks?since=0&limit=100000")).json();
    assert_eq!(first["full"], true);
    assert_eq!(first["more"], true);
    assert_eq!(first["tasks"].as_array().map(Vec::len), Some(PAGE));
    let unpaged = http.get(&format!("{w}/tasks?since=0")).json();
    assert_eq!(unpaged["more"], false);
    assert_eq!(
        unpaged["tasks"].as_array().map(Vec::len),
        Some(2 * PAGE + 20)
    );

    // The sleepers end while no manager listens.
    eventually("the sleepers to end on the worker", || {
        let tasks = http.get(&format!("{w}/tasks")).json();
        let ended = tasks
            .as_array()?
            .iter()
            .filter(|t| later.iter().any(|id| t["id"] == id.as_str()))
            .all(|t| t["state"] == "Completed");
        ended.then_some(())
    });

    let manager = manager_process(dir.path(), "manager", &wargs);
    let base = manager.url();
    for id in &later {
        let t = wait_state(&http, &format!("{base}/tasks/{id}"), "Completed");
        assert_eq!(t["attempt"], 1, "{t}");
    }
    for id in &done {
        let t = state_of(&http, &base, id);
        assert_eq!(
            (&t["state"], &t["attempt"]),
            (&json!("Completed"), &json!(1))
        );
    }
    // New tasks still run and report.
    let fresh: Vec<String> = (0..3)
        .map(|_| submit(&http, &base, &["sleep", "600"]))
        .collect();
    for id in &fresh {
        wait_state(&http, &format!("{base}/tasks/{id}"), "Running");
    }
}

#[test]
fn finished_tasks_leave_the_worker_once_recorded_and_their_attempts_stay_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("retain");
    let worker = worker_process_with(
        dir.path(),
        &name,
        0,
        &["--runtime", "fake", "--retention", "5s"],
    );
    let manager = manager_process(dir.path(), "manager", &["--workers", &worker.addr]);
    let http = Http::new();
    let base = manager.url();
    let w = worker.url();

    let running = submit(&http, &base, &["sleep", "600"]);
    wait_state(&http, &format!("{base}/tasks/{running}"), "Running");
    let finished: Vec<String> = (0..5)
        .map(|_| submit(&http, &base, &["exit", "0"]))
        .collect();
    let records: Vec<Value> = finished
        .iter()
        .map(|id| wait_state(&http, &format!("{base}/tasks/{id}"), "Completed"))
        .collect();

    // Retention (5 s), then a poll that carries the manager's acknowledgement (a long-poll may
    // take 20 s). Each task is tried the moment it is gone, as a delayed start would come: its
    // tombstone refuses it for the retention after the drop, then expires.
    let mut left: Vec<&Value> = records.iter().collect();
    within(
        Duration::from_secs(90),
        "the finished tasks to leave the worker",
        || {
            let tasks = http.get(&format!("{w}/tasks")).json();
            let listed = tasks.as_array()?;
            for record in std::mem::take(&mut left) {
                let id = record["id"].as_str().expect("an id");
                if listed.iter().any(|t| t["id"] == id) {
                    left.push(record);
                    continue;
                }
                let r = http.post(&format!("{w}/tasks"), json!({ "task": record }).to_string());
                assert_eq!(r.status, 409, "{id}: {}", r.body);
                let gone = http.get(&format!("{w}/tasks/{id}"));
                assert_eq!(gone.status, 404, "{}", gone.body);
                assert!(gone.body.contains("dropped"), "{}", gone.body);
            }
            left.is_empty().then_some(())
        },
    );
    // The manager keeps its records; the running task stays on the worker.
    for id in &finished {
        assert_eq!(state_of(&http, &base, id)["state"], "Completed");
    }
    let still = http.get(&format!("{w}/tasks/{running}"));
    assert_eq!(still.status, 200, "{}", still.body);
    assert_eq!(still.json()["state"], "Running");
    assert_eq!(state_of(&http, &base, &running)["state"], "Running");
}
