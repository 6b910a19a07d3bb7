//! `GET /metrics` on the manager and on its workers, scraped from real processes and read with
//! a Prometheus text parser: the series are there and their values match what the cluster did.

mod common;

use common::{Http, eventually, manager_process, sleeper, unique, worker_process_with};
use serde_json::json;

/// The scrape at `url`, parsed as Prometheus would, and checked to be served as its text format.
fn scrape(url: &str) -> prometheus_parse::Scrape {
    let mut reply = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}/metrics: {e}"));
    let content_type = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = reply.body_mut().read_to_string().expect("a text body");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("it parses")
}

/// The value of the sample `name{labels}`, if the scrape has it.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

fn must(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
}

#[test]
fn metrics_count_what_the_manager_and_its_workers_did() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (w1, w2) = (unique("m1"), unique("m2"));
    let worker1 = worker_process_with(dir.path(), &w1, 0, &["--runtime", "fake"]);
    let worker2 = worker_process_with(dir.path(), &w2, 0, &["--runtime", "fake"]);
    let workers = format!("{},{}", worker1.addr, worker2.addr);
    let manager = manager_process(dir.path(), "manager", &["--workers", &workers]);
    let http = Http::new();
    let url = manager.url();
    eventually("both workers Ready", || {
        let s = scrape(&url);
        (value(&s, "cube_nodes", &[("status", "Ready")]) == Some(2.0)).then_some(())
    });

    const TASKS: usize = 4;
    const CPU: f64 = 0.25;
    for _ in 0..TASKS {
        let mut task = sleeper();
        task["cpu"] = json!(CPU);
        let created = http.post(&format!("{url}/tasks"), json!({ "task": task }).to_string());
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let s = eventually("every task Running in the metrics", || {
        let s = scrape(&url);
        (value(&s, "cube_tasks", &[("state", "Running")]) == Some(TASKS as f64)).then_some(s)
    });
    assert_eq!(must(&s, "cube_tasks", &[("state", "Pending")]), 0.0);
    assert_eq!(must(&s, "cube_submissions_total", &[]), TASKS as f64);
    assert_eq!(must(&s, "cube_placements_total", &[]), TASKS as f64);
    assert_eq!(must(&s, "cube_task_restarts_total", &[]), 0.0);
    assert_eq!(
        must(&s, "cube_submit_commit_seconds_count", &[]),
        TASKS as f64
    );
    assert_eq!(
        must(&s, "cube_submit_running_seconds_count", &[]),
        TASKS as f64
    );
    assert!(must(&s, "cube_store_commit_batch_size_count", &[]) >= 1.0);
    assert!(must(&s, "cube_store_fsync_seconds_count", &[]) >= 1.0);
    // Each worker's long-polls are timed under its name.
    for w in [&w1, &w2] {
        assert!(must(&s, "cube_worker_poll_seconds_count", &[("node", w)]) >= 1.0);
    }
    assert!(must(&s, "process_resident_memory_bytes", &[]) > 0.0);
    let booked: f64 = [&w1, &w2]
        .iter()
        .map(|w| {
            must(
                &s,
                "cube_node_allocated",
                &[("node", w), ("resource", "cpu")],
            )
        })
        .sum();
    assert_eq!(
        booked,
        TASKS as f64 * CPU,
        "the running tasks' cpus are booked"
    );
    for w in [&w1, &w2] {
        assert!(
            must(
                &s,
                "cube_node_capacity",
                &[("node", w), ("resource", "cpu")]
            ) > 0.0
        );
        let age = must(&s, "cube_worker_heartbeat_age_seconds", &[("node", w)]);
        assert!((0.0..60.0).contains(&age), "{w}: {age}");
    }

    // Each worker counts the tasks it runs and the runtime starts it made: together, all of them.
    let mut running = 0.0;
    let mut starts = 0.0;
    for worker in [&worker1, &worker2] {
        let s = scrape(&worker.url());
        running += must(&s, "cube_worker_tasks", &[("state", "Running")]);
        starts += must(&s, "cube_docker_call_seconds_count", &[("call", "start")]);
        assert!(must(&s, "cube_store_fsync_seconds_count", &[]) >= 1.0);
        assert!(must(&s, "process_cpu_seconds_total", &[]) >= 0.0);
    }
    assert_eq!(running, TASKS as f64);
    assert_eq!(starts, TASKS as f64);
}
