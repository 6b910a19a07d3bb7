//! Input validation at the edge, against real processes: a manager and a worker on the fake
//! runtime (no Docker). Every bad query, path or body field is a 400 in the JSON error shape
//! that names the field and what is accepted; the edge values themselves are accepted; and no
//! input makes either process panic.

mod common;

use common::*;
use serde_json::{Value, json};

struct Edge {
    manager: CubeProcess,
    worker: CubeProcess,
    http: Http,
    _dir: tempfile::TempDir,
}

/// A worker on the fake runtime and a manager that drives it.
fn start() -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("edge");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let manager = manager_process(dir.path(), "manager", &["--workers", &worker.addr]);
    Edge {
        manager,
        worker,
        http: Http::new(),
        _dir: dir,
    }
}

/// The longest error message a refusal may have: a client's absurd value is not echoed in full.
const MAX_MESSAGE: usize = 400;

/// Assert `reply` is a 400 with exactly `{"error": "..."}`, the message containing each of `says`.
fn assert_refused(what: &str, reply: &Reply, says: &[&str]) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.body);
    let body: Value = reply.json();
    let fields = body.as_object().map(|o| o.len());
    assert_eq!(fields, Some(1), "{what}: not the error shape: {body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message: {body}"));
    for needle in says {
        assert!(error.contains(needle), "{what}: {error:?} lacks {needle:?}");
    }
    assert!(error.len() <= MAX_MESSAGE, "{what}: {error:?} is too long");
}

enum Method {
    Get,
    Delete,
    Post(Value),
}
use Method::*;

/// Send each request of `table` to `base` and assert its refusal.
fn assert_all_refused(http: &Http, base: &str, table: &[(Method, String, &[&str])]) {
    for (method, path, says) in table {
        let url = format!("{base}{path}");
        let (what, reply) = match method {
            Get => (format!("GET {path}"), http.get(&url)),
            Delete => (format!("DELETE {path}"), http.delete(&url)),
            Post(body) => (
                format!("POST {path} {body}"),
                http.post(&url, body.to_string()),
            ),
        };
        assert_refused(&what, &reply, says);
    }
}

fn assert_no_panic(process: &CubeProcess, http: &Http) {
    let health = http.get(&format!("{}/health", process.url()));
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        !process.log_text().contains("panicked"),
        "{}",
        process.log_text()
    );
}

const LIMIT: &str = "expected an integer from 1 to 5000";
const TAIL: &str = "expected an integer from 0 to 100000";
const SINCE: &str = "expected an integer from 0 to 18446744073709551615";
const ATTEMPT: &str = "expected an integer from 1 to 4294967295";
const PORT: &str = "expected an integer from 1 to 65535";
const BOOLEAN: &str = "expected true or false";
const UUID: &str = "expected a UUID";

#[test]
fn the_manager_refuses_every_bad_field_by_name() {
    let e = start();
    let id = uuid::Uuid::new_v4();
    let long_name = "a".repeat(300);
    let table: Vec<(Method, String, &[&str])> = vec![
        (
            Get,
            "/tasks?limit=-1".into(),
            &["limit=-1 is out of range", LIMIT],
        ),
        (
            Get,
            "/tasks?limit=0".into(),
            &["limit=0 is out of range", LIMIT],
        ),
        (
            Get,
            "/tasks?limit=1e99".into(),
            &["limit=1e99 is not an integer", LIMIT],
        ),
        (
            Get,
            "/tasks?limit=1.5".into(),
            &["limit=1.5 is not an integer", LIMIT],
        ),
        (
            Get,
            "/tasks?limit=abc".into(),
            &["limit=abc is not a number", LIMIT],
        ),
        (Get, "/tasks?limit=".into(), &["limit= is empty", LIMIT]),
        (
            Get,
            "/tasks?limit=1&limit=2".into(),
            &["duplicate field `limit`", "at most once"],
        ),
        (
            Get,
            "/tasks?after=xyz".into(),
            &["after=xyz is not a task id", UUID],
        ),
        (
            Get,
            "/tasks?state=Sleeping".into(),
            &["state=Sleeping is not a state", "Running"],
        ),
        (
            Get,
            "/tasks/1234".into(),
            &["task id 1234 in the path is not a UUID"],
        ),
        (
            Delete,
            "/tasks/1234".into(),
            &["task id 1234 in the path is not a UUID"],
        ),
        (
            Get,
            "/tasks/1234/logs".into(),
            &["task id 1234 in the path is not a UUID"],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=abc"),
            &["tail=abc is not a number", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=-1"),
            &["tail=-1 is out of range", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=100001"),
            &["tail=100001 is out of range", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=1e99"),
            &["tail=1e99 is not an integer", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?follow=maybe"),
            &["follow=maybe is not a boolean", BOOLEAN],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?follow=1"),
            &["follow=1 is not a boolean", BOOLEAN],
        ),
        (
            Delete,
            format!("/nodes/{long_name}"),
            &["node name", "1 to 63 characters"],
        ),
        (Delete, "/nodes/a%2Fb".into(), &["node name", "'/'"]),
        (Delete, "/nodes/a%20b".into(), &["node name", "' '"]),
        (
            Post(json!({"name": "w1", "port": 70000})),
            "/nodes".into(),
            &["port=70000 is out of range", PORT],
        ),
        (
            Post(json!({"name": "w1", "port": -1})),
            "/nodes".into(),
            &["port=-1 is out of range", PORT],
        ),
        (
            Post(json!({"name": "w1", "port": 0})),
            "/nodes".into(),
            &["port=0 is out of range", PORT],
        ),
        (
            Post(json!({"name": "w1", "port": 5556.5})),
            "/nodes".into(),
            &["port=5556.5 is not an integer", PORT],
        ),
        (
            Post(json!({"name": "w1", "port": "5556"})),
            "/nodes".into(),
            &["port is \"5556\", not a number", PORT],
        ),
        (
            Post(json!({"name": 1, "port": 5556})),
            "/nodes".into(),
            &["name is 1, not a string"],
        ),
        (
            Post(json!({"name": long_name, "port": 5556})),
            "/nodes".into(),
            &["name: ", "1 to 63 characters"],
        ),
    ];
    assert_all_refused(&e.http, &e.manager.url(), &table);
    assert_no_panic(&e.manager, &e.http);
}

#[test]
fn the_worker_refuses_every_bad_field_by_name() {
    let e = start();
    let id = uuid::Uuid::new_v4();
    let table: Vec<(Method, String, &[&str])> = vec![
        (
            Get,
            "/tasks?since=-5".into(),
            &["since=-5 is out of range", SINCE],
        ),
        (
            Get,
            "/tasks?since=18446744073709551616".into(),
            &["since=18446744073709551616 is out of range", SINCE],
        ),
        (
            Get,
            "/tasks?since=1.5".into(),
            &["since=1.5 is not an integer", SINCE],
        ),
        (
            Get,
            "/tasks?since=abc".into(),
            &["since=abc is not a number", SINCE],
        ),
        (
            Get,
            "/tasks?since=1&since=2".into(),
            &["duplicate field `since`", "at most once"],
        ),
        (
            Get,
            "/tasks?since=0&wait=abc".into(),
            &["wait=abc is not a number", "seconds >= 0"],
        ),
        (
            Get,
            "/tasks?since=0&wait=NaN".into(),
            &["wait=NaN is out of range", "seconds >= 0"],
        ),
        (
            Get,
            "/tasks?since=0&wait=-1".into(),
            &["wait=-1 is out of range", "seconds >= 0"],
        ),
        (
            Get,
            "/tasks?since=0&wait=inf".into(),
            &["wait=inf is out of range", "cut to 60"],
        ),
        (
            Get,
            "/tasks?since=0&instance=xyz".into(),
            &["instance=xyz is not a worker instance id", UUID],
        ),
        (
            Get,
            "/tasks?since=0&acked=-1".into(),
            &["acked=-1 is out of range", "a sequence number"],
        ),
        (
            Get,
            "/tasks?since=0&limit=0".into(),
            &["limit=0 is out of range", "cut to the worker's page size"],
        ),
        (
            Delete,
            format!("/tasks/{id}?attempt=0"),
            &["attempt=0 is out of range", ATTEMPT],
        ),
        (
            Delete,
            format!("/tasks/{id}?attempt=-1"),
            &["attempt=-1 is out of range", ATTEMPT],
        ),
        (
            Delete,
            format!("/tasks/{id}?attempt=99999999999"),
            &["attempt=99999999999 is out of range", ATTEMPT],
        ),
        (
            Delete,
            format!("/tasks/{id}?attempt=1.0"),
            &["attempt=1.0 is not an integer", ATTEMPT],
        ),
        (
            Delete,
            format!("/tasks/{id}?attempt=abc"),
            &["attempt=abc is not a number", ATTEMPT],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=abc"),
            &["tail=abc is not a number", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?tail=100001"),
            &["tail=100001 is out of range", TAIL],
        ),
        (
            Get,
            format!("/tasks/{id}/logs?follow=maybe"),
            &["follow=maybe is not a boolean", BOOLEAN],
        ),
        (
            Get,
            "/tasks/xyz".into(),
            &["task id xyz in the path is not a UUID"],
        ),
        (
            Delete,
            "/tasks/xyz?attempt=1".into(),
            &["task id xyz in the path is not a UUID"],
        ),
        (
            Get,
            "/tasks/xyz/logs".into(),
            &["task id xyz in the path is not a UUID"],
        ),
    ];
    assert_all_refused(&e.http, &e.worker.url(), &table);
    assert_no_panic(&e.worker, &e.http);
}

#[test]
fn the_edge_values_themselves_are_accepted() {
    let e = start();
    let (m, w) = (e.manager.url(), e.worker.url());

    // A limit above the maximum is cut to it, never refused.
    for limit in ["5001", "99999999999999999999999"] {
        let r = e.http.get(&format!("{m}/tasks?limit={limit}"));
        assert_eq!(r.status, 200, "limit={limit}: {}", r.body);
    }
    let r = e.http.get(&format!("{m}/tasks?limit=5000"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().is_array());
    let r = e
        .http
        .get(&format!("{m}/tasks?limit=1&after={}", uuid::Uuid::max()));
    assert_eq!((r.status, r.json()), (200, json!([])));

    // A sequence number ahead of the worker's reads the whole feed; an absurd wait is cut, and
    // with news to tell the answer is immediate.
    let r = e
        .http
        .get(&format!("{w}/tasks?since=18446744073709551615&wait=1e300"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["full"], true);
    let r = e.http.get(&format!("{w}/tasks?since=0&wait=0"));
    assert_eq!(r.status, 200, "{}", r.body);
    // An acknowledgement of another instance, or from the future, and the largest page.
    let r = e.http.get(&format!(
        "{w}/tasks?since=0&instance={}&acked=18446744073709551615&limit=18446744073709551615",
        uuid::Uuid::max()
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["more"], false);

    // A task, on the fake worker through the manager; its logs with the smallest and the
    // largest tail.
    let r = e.http.post(
        &format!("{m}/tasks"),
        json!({"task": {"image": "edge/busybox", "cmd": ["sleep", "600"]}}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("an id").to_string();
    let empty = eventually("the logs of the task", || {
        let r = e
            .http
            .get(&format!("{m}/tasks/{id}/logs?tail=0&follow=false"));
        (r.status == 200).then_some(r.body)
    });
    assert_eq!(empty, "");
    let r = e.http.get(&format!("{m}/tasks/{id}/logs?tail=100000"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("sleep 600"), "{}", r.body);
    let r = e.http.get(&format!("{w}/tasks/{id}/logs?tail=0"));
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    // The largest attempt fences every attempt of the task on the worker and stops it.
    let r = e.http.delete(&format!("{w}/tasks/{id}?attempt=4294967295"));
    assert_eq!(r.status, 202, "{}", r.body);
    // A task the worker never had: not found, yet the attempt was understood.
    let r = e
        .http
        .delete(&format!("{w}/tasks/{}?attempt=1", uuid::Uuid::new_v4()));
    assert_eq!(r.status, 404, "{}", r.body);

    assert_no_panic(&e.manager, &e.http);
    assert_no_panic(&e.worker, &e.http);
}

/// Send `bytes` on a new connection and read what comes back until the server closes it.
fn half_sent(addr: &str, bytes: &[u8]) -> std::thread::JoinHandle<(String, std::time::Duration)> {
    use std::io::{Read, Write};
    let addr = addr.to_string();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("a read timeout");
        stream.write_all(&bytes).expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    })
}

#[test]
fn slow_or_half_sent_requests_time_out_and_the_api_keeps_serving() {
    let edge = start();
    // On both APIs at once: a head that never ends, and a body that stops half-way.
    let mut slow = Vec::new();
    for process in [&edge.manager, &edge.worker] {
        slow.push((
            "head",
            half_sent(
                &process.addr,
                b"GET /tasks HTTP/1.1\r\nHost: cube\r\nX-Slow",
            ),
        ));
        slow.push((
            "body",
            half_sent(
                &process.addr,
                b"POST /tasks HTTP/1.1\r\nHost: cube\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"task\":",
            ),
        ));
    }
    // Meanwhile the APIs answer everyone else.
    for process in [&edge.manager, &edge.worker] {
        assert_eq!(
            edge.http.get(&format!("{}/health", process.url())).status,
            200
        );
    }
    {
        for (what, slow) in slow {
            let (answer, took) = slow.join().expect("the slow client");
            assert!(
                took < PATIENCE,
                "a half-sent {what} held its connection for {took:?}"
            );
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "a half-sent {what} got {answer:?}"
            );
        }
    }
}
