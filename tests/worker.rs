//! The worker as a user (or the manager) sees it: a real `cube worker` process, real Docker,
//! real LMDB.

mod common;

use common::*;
use serde_json::{Value, json};

struct Setup {
    worker: CubeProcess,
    name: String,
    dir: tempfile::TempDir,
    _containers: Containers,
    http: Http,
}

fn worker() -> Setup {
    test_image();
    let name = unique("wt");
    let dir = tempfile::tempdir().expect("temp dir");
    let containers = Containers::of(&[&name]);
    let worker = worker_process(dir.path(), &name, 0);
    Setup {
        worker,
        name,
        dir,
        _containers: containers,
        http: Http::new(),
    }
}

fn submit(s: &Setup, task: Value) -> Value {
    let r = s.http.post(
        &format!("{}/tasks", s.worker.url()),
        json!({ "task": task }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn task_url(s: &Setup, id: &Value) -> String {
    format!("{}/tasks/{}", s.worker.url(), id.as_str().expect("an id"))
}

#[test]
fn task_reaches_running_in_a_container_with_both_labels() {
    let s = worker();
    let t = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["httpd", "-f", "-p", "8080"], "exposed_ports": ["8080/tcp"]}),
    );
    assert_eq!(t["state"], "Scheduled");
    assert_eq!(t["attempt"], 1);
    let t = wait_state(&s.http, &task_url(&s, &t["id"]), "Running");
    let cid = t["container_id"].as_str().expect("a container id");
    let c = inspect(cid).expect("the container exists");
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["cube.task.id"], t["id"]);
    assert_eq!(labels["cube.worker"], s.name.as_str());
    assert_eq!(labels["cube.attempt"], "1");
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    // The host port was assigned by Docker and is reported.
    let host_port = t["host_ports"]["8080/tcp"].as_str().expect("a host port");
    assert!(host_port.parse::<u16>().is_ok(), "{host_port}");
    assert_eq!(
        c["Name"],
        format!("/cube-{}-1", t["id"].as_str().unwrap_or_default())
    );
}

#[test]
fn nonzero_exit_ends_failed_with_its_exit_code() {
    let s = worker();
    let t = submit(&s, json!({"image": IMAGE, "cmd": ["sh", "-c", "exit 3"]}));
    let t = wait_state(&s.http, &task_url(&s, &t["id"]), "Failed");
    assert_eq!(t["exit_code"], 3);
    assert!(
        t["error"].as_str().unwrap_or_default().contains("code 3"),
        "{t}"
    );
}

#[test]
fn zero_exit_ends_completed() {
    let s = worker();
    let t = submit(&s, json!({"image": IMAGE, "cmd": ["true"]}));
    let t = wait_state(&s.http, &task_url(&s, &t["id"]), "Completed");
    assert_eq!(t["exit_code"], 0);
    assert!(
        t["start_time"].is_string() && t["finish_time"].is_string(),
        "{t}"
    );
}

#[test]
fn missing_image_ends_failed_with_a_reason() {
    let s = worker();
    let t = submit(&s, json!({"image": "cube-test/no-such-image:1"}));
    let t = wait_state(&s.http, &task_url(&s, &t["id"]), "Failed");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("cube-test/no-such-image:1"), "{error}");
}

#[test]
fn delete_stops_and_removes_the_container_then_completes() {
    let s = worker();
    let t = submit(&s, sleeper());
    let url = task_url(&s, &t["id"]);
    let t = wait_state(&s.http, &url, "Running");
    let cid = t["container_id"].as_str().expect("a container").to_string();
    let r = s.http.delete(&url);
    assert_eq!(r.status, 202, "{}", r.body);
    let t = wait_state(&s.http, &url, "Completed");
    assert!(t["container_id"].is_null(), "{t}");
    assert!(inspect(&cid).is_none(), "the container is gone");
}

#[test]
fn the_same_attempt_twice_never_starts_a_second_container() {
    let s = worker();
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"task": {"id": id, "image": IMAGE, "cmd": ["sleep", "600"], "attempt": 1}})
        .to_string();
    let url = format!("{}/tasks", s.worker.url());
    let first = s.http.post(&url, &body);
    assert_eq!(first.status, 201, "{}", first.body);
    let again = s.http.post(&url, &body);
    assert_eq!(again.status, 200, "{}", again.body);
    wait_state(&s.http, &format!("{url}/{id}"), "Running");
    let third = s.http.post(&url, &body);
    assert_eq!(third.status, 200);
    assert_eq!(containers(&s.name, true).len(), 1);
    // A newer attempt replaces the container; an older one is then refused.
    let older = json!({"task": {"id": id, "image": IMAGE, "attempt": 1}}).to_string();
    let newer = json!({"task": {"id": id, "image": IMAGE, "cmd": ["sleep", "600"], "attempt": 2}})
        .to_string();
    let r = s.http.post(&url, &newer);
    assert_eq!(r.status, 201, "{}", r.body);
    let t = wait_state(&s.http, &format!("{url}/{id}"), "Running");
    assert_eq!(t["attempt"], 2);
    let r = s.http.post(&url, &older);
    assert_eq!(r.status, 409, "{}", r.body);
    eventually("the first attempt's container to be gone", || {
        (containers(&s.name, true).len() == 1).then_some(())
    });
}

/// `POST /starts`, the manager's way of starting: one request and one commit for a batch, each
/// start answered as `POST /tasks` would (a repeat is not created again; a fenced attempt is
/// refused with 409), and a bad element refuses the whole batch, naming it.
#[test]
fn a_batch_of_starts_answers_each_as_one_start_would() {
    let s = worker();
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let task = |id: uuid::Uuid, attempt: u32| json!({"id": id, "image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1, "attempt": attempt});
    let url = format!("{}/starts", s.worker.url());
    let r = s
        .http
        .post(&url, json!({"tasks": [task(a, 1), task(b, 1)]}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["name"], s.name.as_str());
    assert_eq!(
        answer["starts"],
        json!([
            {"id": a, "attempt": 1, "state": "Scheduled", "created": true},
            {"id": b, "attempt": 1, "state": "Scheduled", "created": true},
        ])
    );
    for id in [a, b] {
        wait_state(
            &s.http,
            &format!("{}/tasks/{id}", s.worker.url()),
            "Running",
        );
    }
    // Attempt 1 of `b` is fenced by a stop; `a` is repeated.
    let r = s
        .http
        .delete(&format!("{}/tasks/{b}?attempt=1", s.worker.url()));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = s
        .http
        .post(&url, json!({"tasks": [task(a, 1), task(b, 1)]}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let starts = r.json()["starts"].clone();
    assert_eq!(
        starts[0],
        json!({"id": a, "attempt": 1, "state": "Running", "created": false})
    );
    assert_eq!(
        (&starts[1]["id"], &starts[1]["status"]),
        (&json!(b), &json!(409))
    );
    assert!(
        starts[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped"),
        "{starts}"
    );
    eventually("one container to run: a's", || {
        (containers(&s.name, false).len() == 1).then_some(())
    });
    // A bad element refuses the batch, and nothing of it starts.
    let c = uuid::Uuid::new_v4();
    let r = s.http.post(
        &url,
        json!({"tasks": [task(c, 1), {"image": ""}]}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("tasks[1].image"), "{}", r.body);
    let r = s.http.get(&format!("{}/tasks/{c}", s.worker.url()));
    assert_eq!(r.status, 404, "{}", r.body);
}

/// `POST /stops`, the manager's way of stopping: one request and one commit for a batch, each
/// stop answered as `DELETE /tasks/{id}?attempt=N` would (an unknown task is refused with 404),
/// each stop fencing its attempt, and a bad element refusing the whole batch, naming it.
#[test]
fn a_batch_of_stops_answers_each_as_one_stop_would() {
    let s = worker();
    let (a, b, unknown) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let task = |id: uuid::Uuid| json!({"id": id, "image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1, "attempt": 1});
    let starts = format!("{}/starts", s.worker.url());
    let r = s
        .http
        .post(&starts, json!({"tasks": [task(a), task(b)]}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    for id in [a, b] {
        wait_state(
            &s.http,
            &format!("{}/tasks/{id}", s.worker.url()),
            "Running",
        );
    }
    let stops = format!("{}/stops", s.worker.url());
    // A bad element refuses the batch, naming it, and stops nothing.
    let r = s.http.post(
        &stops,
        json!({"stops": [{"id": a, "attempt": 1}, {"id": b, "attempt": 0}]}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("stops[1].attempt"), "{}", r.body);
    let r = s
        .http
        .post(&stops, json!({"stops": [{"id": "not-a-uuid"}]}).to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("stops[0].id"), "{}", r.body);
    let r = s.http.post(&stops, json!({"tasks": []}).to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("no \"stops\""), "{error}");
    assert_eq!(containers(&s.name, false).len(), 2, "nothing was stopped");

    let r = s.http.post(
        &stops,
        json!({"stops": [{"id": a, "attempt": 1}, {"id": unknown, "attempt": 1}, {"id": b, "attempt": 1}]})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["name"], s.name.as_str());
    let outcomes = answer["stops"].as_array().expect("outcomes").clone();
    assert_eq!(outcomes.len(), 3, "{answer}");
    for (outcome, id) in [(&outcomes[0], a), (&outcomes[2], b)] {
        assert_eq!(
            (&outcome["id"], &outcome["attempt"]),
            (&json!(id), &json!(1)),
            "{answer}"
        );
        assert!(outcome.get("status").is_none(), "{answer}");
    }
    assert_eq!(
        (&outcomes[1]["id"], &outcomes[1]["status"]),
        (&json!(unknown), &json!(404))
    );
    for id in [a, b] {
        wait_state(
            &s.http,
            &format!("{}/tasks/{id}", s.worker.url()),
            "Completed",
        );
    }
    eventually("both containers to be gone", || {
        containers(&s.name, true).is_empty().then_some(())
    });
    // The stops fenced attempt 1: a delayed start of it is refused.
    let r = s
        .http
        .post(&starts, json!({"tasks": [task(a)]}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["starts"][0]["status"], 409, "{}", r.body);
}

#[test]
fn change_feed_answers_as_soon_as_a_task_changes() {
    let s = worker();
    let feed: Value = s
        .http
        .get(&format!("{}/tasks?since=0", s.worker.url()))
        .json();
    let seq = feed["seq"].as_u64().expect("a seq");
    let instance = feed["instance"].as_str().expect("an instance").to_string();
    let url = s.worker.url();
    let http = Http::new();
    let waiter = std::thread::spawn(move || {
        http.get(&format!(
            "{url}/tasks?since={seq}&instance={instance}&wait=30"
        ))
        .json()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let t = submit(&s, json!({"image": IMAGE, "cmd": ["sleep", "600"]}));
    let changes = waiter.join().expect("the long-poll answers");
    assert!(changes["seq"].as_u64().unwrap_or(0) > seq);
    let ids: Vec<&Value> = changes["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert!(ids.contains(&&t["id"]), "{changes}");
}

#[test]
fn worker_killed_and_restarted_adopts_its_running_container() {
    let mut s = worker();
    let t = submit(&s, json!({"image": IMAGE, "cmd": ["sleep", "600"]}));
    let url = task_url(&s, &t["id"]);
    let before = wait_state(&s.http, &url, "Running");
    let finishing = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["sh", "-c", "sleep 2; exit 4"]}),
    );
    wait_state(&s.http, &task_url(&s, &finishing["id"]), "Running");
    let port = s.worker.port();
    s.worker.kill();
    // The second task ends while the worker is down.
    std::thread::sleep(std::time::Duration::from_secs(3));
    s.worker = worker_process(s.dir.path(), &s.name, port);
    let after = wait_state(&s.http, &url, "Running");
    assert_eq!(after["container_id"], before["container_id"]);
    let running = containers(&s.name, false);
    assert_eq!(running.len(), 1, "exactly one running copy: {running:?}");
    let ended = wait_state(&s.http, &task_url(&s, &finishing["id"]), "Failed");
    assert_eq!(ended["exit_code"], 4);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_the_worker_keeps_serving() {
    let s = worker();
    let url = format!("{}/tasks", s.worker.url());
    let cases: [(&str, u16, &str); 6] = [
        ("{not json", 400, "not valid JSON"),
        (r#"{"task": {"cmd": ["true"]}}"#, 400, "task.image"),
        (r#"{"task": {"image": "i", "cpu": "two"}}"#, 400, "task.cpu"),
        (r#"{"task": "example"}"#, 400, "expected a TaskEvent"),
        (r#"{"task": {"image": "i", "id": "nope"}}"#, 400, "task.id"),
        (r#"[]"#, 400, "array"),
    ];
    for (body, status, needle) in cases {
        let r = s.http.post(&url, body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(needle), "{body}: {error}");
    }
    let r = s.http.get(&format!("{url}/not-a-uuid"));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = s.http.get(&format!("{url}/{}", uuid::Uuid::new_v4()));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = s.http.delete(&format!("{url}/{}", uuid::Uuid::new_v4()));
    assert_eq!(r.status, 404);
    let huge = format!(
        r#"{{"task": {{"image": "i", "env": ["X={}"]}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = s.http.post(&url, huge);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    let r = s.http.get(&format!("{}/nope", s.worker.url()));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    // An absurd long-poll is cut to the longest the worker holds one, never an overflow.
    let r = s.http.get(&format!("{url}?since=0&wait=1e20"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["full"], true);
    let r = s.http.get(&format!("{url}?since=0&wait=-1"));
    assert_eq!(r.status, 400);
    // An image reference Docker would refuse is refused at once, saying why.
    let long = format!(r#"{{"task": {{"image": "{}"}}}}"#, "a".repeat(300));
    let r = s.http.post(&url, long);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("at most 255"), "{}", r.body);
    // Still serving.
    let r = s.http.get(&format!("{}/health", s.worker.url()));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], s.name.as_str());
}

#[test]
fn stats_report_the_machine() {
    let s = worker();
    let stats = s.http.get(&format!("{}/stats", s.worker.url())).json();
    assert!(stats["cpus"].as_f64().unwrap_or(0.0) >= 1.0, "{stats}");
    assert!(stats["memory_total"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats["disk_total"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats["load"].as_array().is_some_and(|l| l.len() == 3));
    assert_eq!(stats["name"], s.name.as_str());
    assert_eq!(stats["tasks"], 0);
}

#[test]
fn logs_of_a_task_are_served() {
    let s = worker();
    let t = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["sh", "-c", "echo hello from cube"]}),
    );
    let url = task_url(&s, &t["id"]);
    wait_state(&s.http, &url, "Completed");
    let r = s.http.get(&format!("{url}/logs"));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("hello from cube"), "{:?}", r.body);
}

#[test]
fn containers_run_hardened_and_publish_only_where_the_worker_says() {
    test_image();
    let name = unique("hard");
    let dir = tempfile::tempdir().expect("temp dir");
    let _containers = Containers::of(&[&name]);
    let worker = worker_process_with(
        dir.path(),
        &name,
        0,
        &["--port-range", "21000-21099", "--cap-drop", "NET_RAW"],
    );
    let http = Http::new();
    let url = format!("{}/tasks", worker.url());
    let r = http.post(
        &url,
        json!({"task": {"image": IMAGE, "cmd": ["httpd", "-f", "-p", "8080"],
            "exposed_ports": ["8080/tcp"], "pids_limit": 100, "stop_timeout_s": 1}})
        .to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("an id").to_string();
    let t = wait_state(&http, &format!("{url}/{id}"), "Running");
    let host_port: u16 = t["host_ports"]["8080/tcp"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a host port in {t}"));
    assert!((21000..=21099).contains(&host_port), "{host_port}");
    let i = inspect(t["container_id"].as_str().expect("a container")).expect("inspect");
    let host = &i["HostConfig"];
    assert_eq!(host["PidsLimit"], 100, "{host}");
    assert!(
        host["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "no-new-privileges")),
        "{host}"
    );
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "10m");
    assert_eq!(host["LogConfig"]["Config"]["max-file"], "3");
    assert!(
        host["CapDrop"].as_array().is_some_and(|c| c
            .iter()
            .any(|x| x.as_str().unwrap_or("").ends_with("NET_RAW"))),
        "{host}"
    );
    // A loopback worker publishes on loopback only.
    let bound = &i["NetworkSettings"]["Ports"]["8080/tcp"][0];
    assert_eq!(bound["HostIp"], "127.0.0.1", "{bound}");
    // A host port outside the range is refused with the reason.
    let r = http.post(
        &url,
        json!({"task": {"image": IMAGE, "cmd": ["sleep", "600"],
            "port_bindings": {"8080/tcp": "8080"}}})
        .to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let outside = r.json()["id"].as_str().expect("an id").to_string();
    let t = wait_state(&http, &format!("{url}/{outside}"), "Failed");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("outside this worker's --port-range 21000-21099"),
        "{t}"
    );
}

/// Poll the worker's log of a task until it holds `text`; the log.
fn wait_log(s: &Setup, id: &Value, text: &str) -> String {
    let url = format!("{}/logs", task_url(s, id));
    eventually(&format!("{text:?} in the log of {id}"), || {
        let r = s.http.get(&url);
        (r.status == 200 && r.body.contains(text)).then_some(r.body)
    })
}

/// `docker volume inspect` of one volume, or None when it does not exist.
fn inspect_volume(name: &str) -> Option<Value> {
    let out = std::process::Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .expect("docker volume inspect");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

#[test]
fn a_named_volume_outlives_its_task_and_the_next_task_reads_it() {
    let s = worker();
    let volume = unique("vol");
    let writer = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["sh", "-c", "echo hello > /data/greeting && echo written && sleep 600"],
            "volumes": [format!("{volume}:/data")], "stop_timeout_s": 1}),
    );
    wait_state(&s.http, &task_url(&s, &writer["id"]), "Running");
    wait_log(&s, &writer["id"], "written");

    // Created on demand, labelled as Cube's and its worker's.
    let v = inspect_volume(&volume).expect("the volume was created");
    assert_eq!(v["Labels"]["cube.volume"], volume.as_str(), "{v}");
    assert_eq!(v["Labels"]["cube.worker"], s.name.as_str(), "{v}");
    // Listed while the task mounts it, with that task; and in the stats.
    let listed = s.http.get(&format!("{}/volumes", s.worker.url()));
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed = listed.json();
    assert_eq!(listed["name"], s.name.as_str());
    let entry = listed["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|e| e["name"] == volume.as_str()))
        .unwrap_or_else(|| panic!("{volume} in {listed}"))
        .clone();
    assert!(entry["created"].is_string(), "{entry}");
    assert_eq!(entry["tasks"], json!([writer["id"]]), "{entry}");
    let stats = s.http.get(&format!("{}/stats", s.worker.url())).json();
    assert!(
        stats["volumes"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|n| n == volume.as_str())),
        "{stats}"
    );
    assert_eq!(stats["allowed_host_paths"], json!([]), "{stats}");

    // Stopped: its container goes, the volume stays.
    let r = s.http.delete(&task_url(&s, &writer["id"]));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&s.http, &task_url(&s, &writer["id"]), "Completed");
    eventually("the writer's container removed", || {
        containers(&s.name, true).is_empty().then_some(())
    });
    assert!(inspect_volume(&volume).is_some(), "the volume was kept");

    let reader = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["cat", "/data/greeting"],
            "volumes": [{"source": volume, "target": "/data", "read_only": true}]}),
    );
    let t = wait_state(&s.http, &task_url(&s, &reader["id"]), "Completed");
    assert_eq!(t["exit_code"], 0, "{t}");
    wait_log(&s, &reader["id"], "hello");
    // Nobody mounts it any more, and it is still listed.
    let listed = s.http.get(&format!("{}/volumes", s.worker.url())).json();
    let entry = listed["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|e| e["name"] == volume.as_str()))
        .unwrap_or_else(|| panic!("{volume} in {listed}"))
        .clone();
    assert_eq!(entry["tasks"], json!([]), "{entry}");
}

#[test]
fn host_paths_mount_only_under_an_allowed_prefix_and_read_only_refuses_writes() {
    test_image();
    let name = unique("wt");
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::write(shared.join("in.txt"), "from the host\n").expect("write");
    let allowed = shared.to_str().expect("utf-8").to_string();
    let worker = worker_process_with(dir.path(), &name, 0, &["--allow-host-path", &allowed]);
    let s = Setup {
        worker,
        _containers: Containers::of(&[&name]),
        name,
        dir,
        http: Http::new(),
    };
    let stats = s.http.get(&format!("{}/stats", s.worker.url())).json();
    assert_eq!(stats["allowed_host_paths"], json!([allowed]), "{stats}");

    let rw = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["sh", "-c", "cat /host/in.txt && echo out > /host/out.txt"],
            "volumes": [format!("{allowed}:/host")]}),
    );
    let t = wait_state(&s.http, &task_url(&s, &rw["id"]), "Completed");
    assert_eq!(t["exit_code"], 0, "{t}");
    wait_log(&s, &rw["id"], "from the host");
    assert_eq!(
        std::fs::read_to_string(shared.join("out.txt"))
            .ok()
            .as_deref(),
        Some("out\n")
    );

    let ro = submit(
        &s,
        json!({"image": IMAGE, "cmd": ["sh", "-c", "echo no > /host/ro.txt"],
            "volumes": [format!("{allowed}:/host:ro")]}),
    );
    let t = wait_state(&s.http, &task_url(&s, &ro["id"]), "Failed");
    assert_ne!(t["exit_code"], 0, "{t}");
    assert!(
        !shared.join("ro.txt").exists(),
        "a read-only mount was written"
    );

    // Outside the prefix (its parent, then somewhere else): Failed with the reason, no container.
    for outside in [s.dir.path().to_str().expect("utf-8"), "/etc"] {
        let t = submit(
            &s,
            json!({"image": IMAGE, "cmd": ["cat", "/x/passwd"], "volumes": [format!("{outside}:/x")]}),
        );
        let t = wait_state(&s.http, &task_url(&s, &t["id"]), "Failed");
        assert_eq!(
            t["error"],
            format!(
                "volume {outside}:/x: host path {outside} is not under a path this worker allows (--allow-host-path); it allows: {allowed}"
            ),
            "{t}"
        );
        assert!(t["container_id"].is_null(), "{t}");
    }
}

#[test]
fn a_bad_allowed_host_path_is_a_usage_error_naming_it() {
    for bad in ["srv/data", "/", "/srv/../etc"] {
        // Were the flag taken, the data directory would stop the worker anyway.
        let (ok, out) = run_cube(
            &[
                "worker",
                "--data-dir",
                "/proc/cube-no-such-dir",
                "--allow-host-path",
                bad,
            ],
            &[],
        );
        assert!(!ok, "{bad} was taken: {out}");
        assert!(out.contains("--allow-host-path"), "{out}");
        assert!(out.contains(bad), "{out}");
    }
}
