//! Services with real processes and real Docker: replicas spread over workers and kept at
//! their count through a worker's loss, rolling updates that never dip below the count the
//! rollout allows, an automatic rollback when a new version fails its health check, endpoints
//! that follow a scale-up, and a named volume whose data outlives a rolling update.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A second tag of the test image, so that a rollout changes the image.
fn second_tag() -> &'static str {
    const V2: &str = "cube-test/busybox:v2";
    test_image();
    let ok = Command::new("docker")
        .args(["tag", IMAGE, V2])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "docker tag {IMAGE} {V2}");
    V2
}

/// An httpd that serves `/www/health`, as a service template.
fn web_template(image: &str) -> Value {
    json!({
        "image": image,
        "cmd": ["sh", "-c", "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8080 -h /www"],
        "exposed_ports": ["8080/tcp"],
        "port_bindings": {"8080/tcp": ""},
        "health_check": "/health",
        "stop_timeout_s": 1,
    })
}

fn service(c: &Cluster, name: &str) -> Value {
    c.http.get(&c.url(&format!("/services/{name}"))).json()
}

/// Watch the service's running count from another thread until told to stop; returns the
/// lowest count seen.
struct Watch {
    stop: Arc<AtomicBool>,
    low: Arc<Mutex<(i64, String)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(url: String) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let low = Arc::new(Mutex::new((i64::MAX, String::new())));
        let (s, l) = (stop.clone(), low.clone());
        let thread = std::thread::spawn(move || {
            let http = Http::new();
            while !s.load(Ordering::Relaxed) {
                let v = http.get(&url).json();
                let running = v["running"].as_i64().unwrap_or(-1);
                if let Ok(mut low) = l.lock()
                    && running < low.0
                {
                    *low = (running, v.to_string());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            stop,
            low,
            thread: Some(thread),
        }
    }

    fn lowest(mut self) -> (i64, String) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.low.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn wait_rollout(c: &Cluster, name: &str, state: &str) -> Value {
    eventually(&format!("service {name}'s rollout {state}"), || {
        let s = service(c, name);
        (s["rollout"]["state"] == state).then_some(s)
    })
}

#[test]
fn a_service_spreads_survives_a_loss_rolls_without_dipping_and_rolls_back_by_itself() {
    let v2 = second_tag();
    let mut c = Cluster::start(3, &["--node-timeout", "2", "--health-interval", "1"]);
    let created = c.http.post(
        &c.url("/services"),
        json!({
            "name": "web", "replicas": 4, "task": web_template(IMAGE),
            "update": {"parallelism": 1, "min_healthy_s": 1, "failure_action": "rollback"},
        })
        .to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.location.as_deref(), Some("/services/web"));

    // Four replicas, named by slot, over the three workers.
    let tasks = eventually("4 tasks of web Running", || {
        let tasks = c.http.get(&c.url("/tasks?service=web")).json();
        let running: Vec<Value> = tasks
            .as_array()?
            .iter()
            .filter(|t| t["state"] == "Running")
            .cloned()
            .collect();
        (running.len() == 4).then_some(running)
    });
    let names: BTreeSet<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["web.1", "web.2", "web.3", "web.4"]));
    let workers: BTreeSet<&str> = tasks.iter().filter_map(|t| t["worker"].as_str()).collect();
    assert_eq!(workers.len(), 3, "{tasks:?}");

    // A worker is lost: its tasks run on the other two, and the service is back at 4.
    let lost = tasks[0]["worker"].as_str().expect("a worker").to_string();
    c.kill_worker(c.worker_index(&lost));
    eventually("web back at 4 Running, none on the lost worker", || {
        let tasks = c.http.get(&c.url("/tasks?service=web")).json();
        let running: Vec<&Value> = tasks
            .as_array()?
            .iter()
            .filter(|t| t["state"] == "Running" && t["desired"] == "running")
            .collect();
        (running.len() == 4 && running.iter().all(|t| t["worker"] != lost.as_str())).then_some(())
    });

    // A rolling update to a new image, one slot at a time: never below 3 Running.
    let watch = Watch::start(c.url("/services/web"));
    let patched = c.http.patch(
        &c.url("/services/web"),
        json!({"task": {"image": v2}}).to_string(),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["rollout"]["state"], "updating");
    let done = wait_rollout(&c, "web", "completed");
    let (low, at) = watch.lowest();
    assert!(low >= 3, "the rollout dipped to {low} running: {at}");
    assert_eq!(done["version"], 2, "{done}");
    assert_eq!(done["running_current"], 4, "{done}");
    let tasks = c
        .http
        .get(&c.url("/tasks?service=web&state=Running"))
        .json();
    let images: BTreeSet<&str> = tasks
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["desired"] == "running")
        .filter_map(|t| t["image"].as_str())
        .collect();
    assert_eq!(images, BTreeSet::from([v2]));

    // A version that fails its health check rolls back by itself to version 2 everywhere.
    let broken = c.http.patch(
        &c.url("/services/web"),
        json!({"task": {"health_check": "/missing"}}).to_string(),
    );
    assert_eq!(broken.status, 200, "{}", broken.body);
    let back = wait_rollout(&c, "web", "rolled_back");
    assert_eq!(back["version"], 2, "{back}");
    let message = back["rollout"]["message"].as_str().unwrap_or("");
    assert!(message.contains("failed"), "{back}");
    let settled = eventually("web at 4 Running on version 2 only", || {
        let s = service(&c, "web");
        (s["running"] == 4 && s["running_current"] == 4).then_some(s)
    });
    assert_eq!(
        settled["versions"].as_array().map(Vec::len),
        Some(1),
        "{settled}"
    );

    // Deleted: every container goes, then the service.
    let deleted = c.http.delete(&c.url("/services/web"));
    assert!(matches!(deleted.status, 202 | 204), "{}", deleted.body);
    eventually("web gone", || {
        (c.http.get(&c.url("/services/web")).status == 404).then_some(())
    });
    // (The lost worker's containers run on, as on a machine that is gone; the guard of the
    // cluster removes them.)
    let live: Vec<String> = c.names.iter().filter(|n| **n != lost).cloned().collect();
    eventually(
        "no container of web left running on the live workers",
        || {
            live.iter()
                .all(|n| containers(n, false).is_empty())
                .then_some(())
        },
    );
}

#[test]
fn endpoints_follow_a_scale_up_and_a_named_volume_outlives_a_rolling_update() {
    let c = Cluster::start(1, &["--health-interval", "1"]);
    let volume = unique("svcdata");
    // The first version writes the file once; every version serves it.
    let serve = "[ -f /data/first ] || echo v1 > /data/first; exec httpd -f -p 8080 -h /data";
    let created = c.http.post(
        &c.url("/services"),
        json!({
            "name": "store", "replicas": 1,
            "task": {
                "image": IMAGE, "cmd": ["sh", "-c", serve],
                "exposed_ports": ["8080/tcp"], "port_bindings": {"8080/tcp": ""},
                "health_check": "/first", "volumes": [format!("{volume}:/data")],
                "stop_timeout_s": 1,
            },
            "update": {"min_healthy_s": 1},
        })
        .to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let first = eventually("one endpoint", || {
        let e = c.http.get(&c.url("/services/store/endpoints")).json();
        (e["endpoints"].as_array()?.len() == 1).then_some(e)
    });
    let address = first["endpoints"][0]["address"]
        .as_str()
        .expect("an address");
    let body = c.http.get(&format!("http://{address}/first")).body;
    assert_eq!(body.trim(), "v1");

    // A long-poll from the current index answers when the scale-up changes the list.
    let index = first["index"].as_u64().expect("an index");
    let url = c.url(&format!("/services/store/endpoints?index={index}&wait=60"));
    let poll = std::thread::spawn(move || Http::new().get(&url).json());
    std::thread::sleep(Duration::from_millis(300));
    let scaled = c
        .http
        .patch(&c.url("/services/store"), r#"{"replicas": 3}"#);
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    let changed = poll.join().expect("the long-poll answers");
    assert!(changed["index"].as_u64() > Some(index), "{changed}");
    let all = eventually("three endpoints", || {
        let e = c.http.get(&c.url("/services/store/endpoints")).json();
        (e["endpoints"].as_array()?.len() == 3).then_some(e)
    });
    for e in all["endpoints"].as_array().expect("a list") {
        let address = e["address"].as_str().expect("an address");
        let body = c.http.get(&format!("http://{address}/first")).body;
        assert_eq!(body.trim(), "v1", "{e}");
    }

    // A rolling update replaces every task; the volume, and what the first version wrote,
    // stay.
    let patched = c.http.patch(
        &c.url("/services/store"),
        json!({"task": {"env": ["VERSION=2"]}}).to_string(),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    let done = wait_rollout(&c, "store", "completed");
    assert_eq!(done["running_current"], 3, "{done}");
    let now = eventually("three endpoints of version 2", || {
        let e = c.http.get(&c.url("/services/store/endpoints")).json();
        let list = e["endpoints"].as_array()?;
        (list.len() == 3 && list.iter().all(|e| e["version"] == 2)).then_some(e)
    });
    for e in now["endpoints"].as_array().expect("a list") {
        let address = e["address"].as_str().expect("an address");
        let body = c.http.get(&format!("http://{address}/first")).body;
        assert_eq!(body.trim(), "v1", "the data of version 1 is kept: {e}");
    }
    assert_eq!(c.http.delete(&c.url("/services/store")).status, 202);
    eventually("store gone", || {
        (c.http.get(&c.url("/services/store")).status == 404).then_some(())
    });
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", &volume])
        .output();
}

#[test]
fn bad_service_requests_get_a_clear_4xx() {
    let c = Cluster::start(1, &[]);
    let post = |body: &str| c.http.post(&c.url("/services"), body);
    let r = post(r#"{"name": "Bad Name", "task": {"image": "x"}}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("name:")
    );
    let r = post(r#"{"name": "w", "task": {"image": "x"}, "update": {"order": "sideways"}}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(c.http.get(&c.url("/services/nope")).status, 404);
    assert_eq!(
        c.http
            .patch(&c.url("/services/nope"), r#"{"replicas": 2}"#)
            .status,
        404
    );
    let spec =
        json!({"name": "w", "replicas": 0, "task": {"image": IMAGE, "cmd": ["sleep", "60"]}});
    assert_eq!(post(&spec.to_string()).status, 201);
    assert_eq!(post(&spec.to_string()).status, 200, "the same spec again");
    let other = json!({"name": "w", "replicas": 2, "task": {"image": IMAGE}});
    assert_eq!(post(&other.to_string()).status, 409);
    let r = c.http.post(&c.url("/services/w/rollback"), "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("no previous version")
    );
    let r = c.http.patch(&c.url("/services/w"), r#"{"mode": "global"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c
        .http
        .patch(&c.url("/services/w"), r#"{"task": {"cpu": -1}}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("task.cpu")
    );
    assert_eq!(c.http.delete(&c.url("/services/w")).status, 204);
}

#[test]
fn a_drained_worker_ends_empty_with_its_services_at_full_count_and_constraints_pin_tasks() {
    let c = Cluster::start(3, &["--health-interval", "1"]);
    let (w1, w2, w3) = (&c.names[0], &c.names[1], &c.names[2]);
    for w in [w1, w2] {
        let r = c.http.patch(
            &c.url(&format!("/nodes/{w}")),
            r#"{"labels": {"zone": "a"}}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let sleeper = |name: &str, replicas: u32, constraints: Value| {
        json!({
            "name": name, "replicas": replicas,
            "task": {"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1,
                     "constraints": constraints},
            "update": {"min_healthy_s": 1},
        })
        .to_string()
    };
    assert_eq!(
        c.http
            .post(
                &c.url("/services"),
                sleeper("pinned", 4, json!(["zone==a"]))
            )
            .status,
        201
    );
    assert_eq!(
        c.http
            .post(&c.url("/services"), sleeper("free", 3, json!([])))
            .status,
        201
    );
    let running_of = |service: &str| -> Vec<Value> {
        c.http
            .get(&c.url(&format!("/tasks?service={service}&state=Running")))
            .json()
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| t["desired"] == "running")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let pinned = eventually("4 pinned tasks Running", || {
        let r = running_of("pinned");
        (r.len() == 4).then_some(r)
    });
    assert!(
        pinned
            .iter()
            .all(|t| t["worker"] == w1.as_str() || t["worker"] == w2.as_str()),
        "a constraint zone==a keeps tasks off {w3}: {pinned:?}"
    );
    eventually("3 free tasks Running", || {
        (running_of("free").len() == 3).then_some(())
    });

    // Drain w1: its tasks start elsewhere first (the pinned ones only on w2), then it is empty.
    let watch = Watch::start(c.url("/services/pinned"));
    let r = c.http.patch(
        &c.url(&format!("/nodes/{w1}")),
        r#"{"availability": "drain"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["availability"], "drain");
    eventually("w1 empty, both services at full count elsewhere", || {
        let pinned = running_of("pinned");
        let free = running_of("free");
        let on_w1 = c
            .http
            .get(&c.url(&format!("/tasks?worker={w1}&state=Running")))
            .json()
            .as_array()
            .map_or(1, Vec::len);
        (pinned.len() == 4
            && free.len() == 3
            && on_w1 == 0
            && pinned.iter().all(|t| t["worker"] == w2.as_str()))
        .then_some(())
    });
    let (low, at) = watch.lowest();
    assert!(
        low >= 4,
        "the drain dipped the pinned service to {low}: {at}"
    );
    eventually("no container left on the drained worker", || {
        containers(w1, false).is_empty().then_some(())
    });
    let node = c.http.get(&c.url(&format!("/nodes/{w1}"))).json();
    assert_eq!(node["status"], "Ready", "a drained node stays up: {node}");
}

#[test]
fn a_manager_killed_mid_rollout_carries_on_from_where_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let workers: Vec<CubeProcess> = ["r1", "r2"]
        .iter()
        .map(|n| worker_process_with(dir.path(), &unique(n), 0, &["--runtime", "fake"]))
        .collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let start = || manager_process(dir.path(), "manager", &["--workers", &addrs.join(",")]);
    let http = Http::new();
    let mut manager = start();
    let url = |m: &CubeProcess, path: &str| format!("{}{path}", m.url());
    let spec = json!({
        "name": "api", "replicas": 6,
        "task": {"image": "cube-sim/task", "cmd": ["sleep", "600"]},
        "update": {"parallelism": 1, "delay_s": 1, "min_healthy_s": 1},
    });
    eventually("the service created", || {
        let r = http.try_post(&url(&manager, "/services"), spec.to_string())?;
        (r.status == 201).then_some(())
    });
    eventually("6 running", || {
        (http.get(&url(&manager, "/services/api")).json()["running"] == 6).then_some(())
    });
    let r = http.patch(
        &url(&manager, "/services/api"),
        r#"{"task": {"cmd": ["sleep", "601"]}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let midway = eventually("the rollout under way", || {
        let s = http.get(&url(&manager, "/services/api")).json();
        let current = s["running_current"].as_u64()?;
        (s["rollout"]["state"] == "updating" && (1..=4).contains(&current)).then_some(s)
    });

    manager.kill();
    manager = start();
    let done = eventually("the rollout completed after the restart", || {
        let s = http.try_get(&url(&manager, "/services/api")).ok()?.json();
        (s["rollout"]["state"] == "completed").then_some(s)
    });
    assert_eq!(done["version"], 2, "{done}");
    assert_eq!(done["running_current"], 6, "{done}");
    assert_eq!(done["versions"].as_array().map(Vec::len), Some(1), "{done}");
    let tasks = http
        .get(&url(&manager, "/tasks?service=api&state=Running"))
        .json();
    let names: BTreeSet<&str> = tasks
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["desired"] == "running")
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.len(), 6, "one task per slot: {tasks}");
    assert!(midway["running_current"].as_u64() < Some(6));
}
