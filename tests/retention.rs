//! Retention with real processes (a manager and a fake-runtime worker): finished tasks are
//! collected after `--retention`, or beyond `--retention-count`; a collected task is 404 saying
//! so, its id stays reserved (409), and both survive a manager restart; the store's space is
//! reused.

mod common;

use common::{Http, eventually, manager_process, unique, worker_process_with};
use serde_json::{Value, json};

fn submit(http: &Http, base: &str, cmd: &[&str]) -> String {
    let r = http.post(
        &format!("{base}/tasks"),
        json!({"task": {"image": "cube-sim/task", "cmd": cmd, "restart_policy": "never"}})
            .to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().expect("an id").to_string()
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

#[test]
fn finished_tasks_are_collected_and_their_ids_stay_reserved_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("retention");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let args = ["--workers", &worker.addr, "--retention", "2s"];
    let mut manager = manager_process(dir.path(), "manager", &args);
    let http = Http::new();
    let base = manager.url();

    let done = submit(&http, &base, &["true"]);
    let running = submit(&http, &base, &["sleep", "600"]);
    let url = format!("{base}/tasks/{done}");
    eventually("the finished task is Completed", || {
        (http.get(&url).json()["state"] == "Completed").then_some(())
    });

    // After the retention it is gone, and says so; the running one stays.
    let gone = eventually("the finished task is collected", || {
        let r = http.get(&url);
        (r.status == 404).then_some(r)
    });
    let message = error_of(&gone.body);
    assert!(message.contains("collected"), "{message}");
    assert!(message.contains("--retention"), "{message}");
    let r = http.get(&format!("{base}/tasks/{running}"));
    assert_eq!(r.json()["state"], "Running", "{}", r.body);
    let listed = http.get(&format!("{base}/tasks"));
    assert!(
        !listed.body.contains(&done),
        "a collected task is not listed"
    );

    // Its id stays reserved, a stop of it is a 404 too.
    let again = json!({"task": {"id": done, "image": "cube-sim/task", "cmd": ["true"]}});
    let r = http.post(&format!("{base}/tasks"), again.to_string());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(error_of(&r.body).contains("collected"), "{}", r.body);
    assert_eq!(http.delete(&url).status, 404);

    // The tombstone is durable: a restarted manager still knows.
    manager.kill();
    let manager = manager_process(dir.path(), "manager", &args);
    let base = manager.url();
    let r = http.get(&format!("{base}/tasks/{done}"));
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(error_of(&r.body).contains("collected"), "{}", r.body);
    let r = http.post(&format!("{base}/tasks"), again.to_string());
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http.get(&format!("{base}/tasks/{running}"));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_count_keeps_the_newest_finished_tasks_and_the_store_reuses_its_space() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("retention-count");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let args = [
        "--workers",
        &worker.addr,
        "--retention",
        "1h",
        "--retention-count",
        "50",
    ];
    let manager = manager_process(dir.path(), "manager", &args);
    let http = Http::new();
    let base = manager.url();
    let data = dir.path().join("manager").join("data.mdb");

    // Rounds of short tasks: the store grows for the first rounds, then its freed pages are
    // reused and it stays the same size.
    let mut sizes = Vec::new();
    let mut last = Vec::new();
    for _ in 0..10 {
        last = (0..200).map(|_| submit(&http, &base, &["true"])).collect();
        eventually("the round is collected down to the count", || {
            let page = http.get(&format!("{base}/tasks?limit=5000")).json();
            let n = page.as_array().map_or(usize::MAX, Vec::len);
            (n <= 50).then_some(())
        });
        sizes.push(std::fs::metadata(&data).expect("the store").len());
    }
    // The newest are the ones kept.
    let newest = last.last().expect("a task");
    let r = http.get(&format!("{base}/tasks/{newest}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let first = &last[0];
    assert_eq!(http.get(&format!("{base}/tasks/{first}")).status, 404);
    // Tombstones fill up to their most kept (10 × the count) in the first rounds.
    let (early, late) = (sizes[5], sizes[9]);
    assert!(
        late <= early + early / 5,
        "the store keeps growing with a steady workload: {sizes:?}"
    );
}
