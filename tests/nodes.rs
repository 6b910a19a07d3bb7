//! Node labels, availability and placement constraints end to end (ARCHITECTURE.md §8b): a
//! manager and fake-runtime workers as real processes, driven over HTTP and through the CLI.
//! The fake runtime is enough here: what is tested is where tasks go, not how they run; one
//! test runs real containers on Docker.

mod common;

use std::path::Path;

use common::{
    Containers, CubeProcess, Http, containers, eventually, inspect, manager_process, run_cube,
    sleeper, test_image, unique, wait_state, worker_process_with,
};
use serde_json::{Value, json};

/// A manager watching fake-runtime workers started with their own flags.
struct Nodes {
    dir: tempfile::TempDir,
    workers: Vec<CubeProcess>,
    manager: CubeProcess,
    http: Http,
}

impl Nodes {
    fn start(workers: &[(&str, &[&str])]) -> Nodes {
        let dir = tempfile::tempdir().expect("temp dir");
        let workers: Vec<CubeProcess> = workers
            .iter()
            .map(|(name, extra)| {
                let mut args = vec!["--runtime", "fake"];
                args.extend_from_slice(extra);
                worker_process_with(dir.path(), name, 0, &args)
            })
            .collect();
        let manager = Nodes::manager(dir.path(), &workers);
        let nodes = Nodes {
            dir,
            workers,
            manager,
            http: Http::new(),
        };
        nodes.wait_ready();
        nodes
    }

    fn manager(dir: &Path, workers: &[CubeProcess]) -> CubeProcess {
        let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
        manager_process(dir, "manager", &["--workers", &addrs.join(",")])
    }

    /// SIGKILL the manager and start it again on the same store.
    fn restart_manager(&mut self) {
        self.manager.kill();
        self.manager = Nodes::manager(self.dir.path(), &self.workers);
        self.wait_ready();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.manager.url())
    }

    fn wait_ready(&self) {
        let n = self.workers.len();
        eventually(&format!("{n} workers Ready"), || {
            let nodes = self.http.get(&self.url("/nodes")).json();
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "Ready" && n["cpus"].as_f64().unwrap_or(0.0) > 0.0)
                .count();
            (ready == n).then_some(())
        });
    }

    fn node(&self, name: &str) -> Value {
        let r = self.http.get(&self.url(&format!("/nodes/{name}")));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Submit a task that runs until stopped, with more fields.
    fn submit(&self, extra: Value) -> String {
        let mut task = json!({"image": "fake", "cmd": ["serve"], "stop_timeout_s": 1});
        if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        let r = self
            .http
            .post(&self.url("/tasks"), json!({ "task": task }).to_string());
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().expect("an id").to_string()
    }

    fn task_url(&self, id: &str) -> String {
        self.url(&format!("/tasks/{id}"))
    }

    fn running(&self, id: &str) -> Value {
        wait_state(&self.http, &self.task_url(id), "Running")
    }

    /// `cube <args>` against this manager; what it printed, after asserting it succeeded.
    fn cli(&self, args: &[&str]) -> String {
        let url = self.manager.url();
        let (ok, out) = run_cube(args, &[("CUBE_MANAGER", url.as_str())]);
        assert!(ok, "cube {args:?}: {out}");
        out
    }

    /// Wait until the worker says it runs `n` tasks.
    fn worker_runs(&self, i: usize, n: u64) {
        let url = format!("{}/stats", self.workers[i].url());
        eventually(&format!("worker {i} to run {n} task(s)"), || {
            let stats = self.http.get(&url).json();
            (stats["tasks"].as_u64() == Some(n)).then_some(())
        });
    }
}

#[test]
fn worker_labels_show_in_nodes_and_a_constraint_pins_tasks_to_them() {
    let nodes = Nodes::start(&[
        ("w1", &["--label", "zone=a", "--label", "disk=ssd"]),
        ("w2", &["--label", "zone=b"]),
    ]);
    let w1 = eventually("w1's labels in /nodes/w1", || {
        let n = nodes.node("w1");
        (n["labels"]["zone"] == "a").then_some(n)
    });
    assert_eq!(w1["worker_labels"], json!({"zone": "a", "disk": "ssd"}));
    assert_eq!(w1["manager_labels"], json!({}));
    assert_eq!(w1["availability"], "active");
    let listed = nodes.http.get(&nodes.url("/nodes")).json();
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|n| n["name"] == "w2" && n["labels"]["zone"] == "b")),
        "{listed}"
    );
    let pinned: Vec<String> = (0..4)
        .map(|_| nodes.submit(json!({"constraints": ["zone==a"]})))
        .collect();
    for id in &pinned {
        assert_eq!(nodes.running(id)["worker"], "w1");
    }
    let elsewhere = nodes.submit(json!({"constraints": ["zone!=a"]}));
    assert_eq!(nodes.running(&elsewhere)["worker"], "w2");
    let by_name = nodes.submit(json!({"constraints": ["node==w2"]}));
    assert_eq!(nodes.running(&by_name)["worker"], "w2");
    // The cube node listing shows both columns.
    let table = nodes.cli(&["node"]);
    assert!(
        table.contains("AVAILABILITY") && table.contains("LABELS"),
        "{table}"
    );
    assert!(table.contains("disk=ssd,zone=a"), "{table}");
    // A host path no worker allows is refused at once, naming it and what each allows.
    let r = nodes.http.post(
        &nodes.url("/tasks"),
        json!({"task": {"image": "fake", "volumes": ["/etc:/x"]}}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("/etc") && error.contains("w1 allows none"),
        "{error}"
    );
}

#[test]
fn an_unsatisfiable_task_waits_with_the_reason_until_cube_node_label_lets_it_place() {
    let nodes = Nodes::start(&[
        ("w1", &["--label", "zone=a"]),
        ("w2", &["--label", "zone=b"]),
    ]);
    eventually("both workers' labels", || {
        (nodes.node("w2")["labels"]["zone"] == "b" && nodes.node("w1")["labels"]["zone"] == "a")
            .then_some(())
    });
    let id = nodes.submit(json!({"constraints": ["zone==c"]}));
    let waiting = eventually("the reason in the task's error", || {
        let t = nodes.http.get(&nodes.task_url(&id)).json();
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("no Ready node satisfies zone==c"))
            .then_some(t)
    });
    assert_eq!(waiting["state"], "Pending");
    let error = waiting["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("w1: zone=a") && error.contains("w2: zone=b"),
        "{error}"
    );
    let out = nodes.cli(&["node", "label", "w2", "zone=c"]);
    assert!(out.contains("zone=c"), "{out}");
    assert_eq!(nodes.running(&id)["worker"], "w2");
    let w2 = nodes.node("w2");
    assert_eq!(w2["labels"]["zone"], "c", "the manager's label wins");
    assert_eq!(w2["worker_labels"]["zone"], "b");
    assert_eq!(w2["manager_labels"]["zone"], "c");
    // Removed, the worker's own label shows again.
    nodes.cli(&["node", "label", "w2", "--rm", "zone"]);
    assert_eq!(nodes.node("w2")["labels"]["zone"], "b");
}

#[test]
fn a_drained_node_moves_its_tasks_and_ends_with_none_and_a_paused_one_takes_nothing_new() {
    let nodes = Nodes::start(&[("w1", &[]), ("w2", &[])]);
    let ids: Vec<String> = (0..4).map(|_| nodes.submit(json!({}))).collect();
    let on_w1 = ids
        .iter()
        .filter(|id| nodes.running(id)["worker"] == "w1")
        .count();
    assert!(on_w1 > 0, "some task runs on w1 before the drain");
    let out = nodes.cli(&["node", "drain", "w1", "--deadline", "30s"]);
    assert!(out.contains("drain"), "{out}");
    for id in &ids {
        eventually(&format!("task {id} Running on w2"), || {
            let t = nodes.http.get(&nodes.task_url(id)).json();
            (t["state"] == "Running" && t["worker"] == "w2").then_some(())
        });
    }
    nodes.worker_runs(0, 0);
    let w1 = nodes.node("w1");
    assert_eq!(w1["status"], "Ready", "a drained node stays up");
    assert_eq!(w1["availability"], "drain");
    assert_eq!(w1["tasks"], 0);
    assert!(w1["drain_deadline"].is_string(), "{w1}");
    // Paused, w2 keeps what runs and takes nothing new: new tasks go to the activated w1.
    nodes.cli(&["node", "activate", "w1"]);
    nodes.cli(&["node", "pause", "w2"]);
    let new: Vec<String> = (0..3).map(|_| nodes.submit(json!({}))).collect();
    for id in &new {
        assert_eq!(nodes.running(id)["worker"], "w1");
    }
    for id in &ids {
        let t = nodes.http.get(&nodes.task_url(id)).json();
        assert_eq!(
            (&t["state"], &t["worker"]),
            (&json!("Running"), &json!("w2"))
        );
    }
    nodes.worker_runs(1, 4);
}

#[test]
fn availability_and_labels_survive_a_manager_restart() {
    let mut nodes = Nodes::start(&[("w1", &[]), ("w2", &[])]);
    let r = nodes.http.patch(
        &nodes.url("/nodes/w1"),
        json!({"availability": "pause", "labels": {"rack": "r1"}}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["availability"], "pause");
    assert_eq!(r.json()["manager_labels"], json!({"rack": "r1"}));
    nodes.restart_manager();
    let w1 = nodes.node("w1");
    assert_eq!(w1["availability"], "pause", "{w1}");
    assert_eq!(w1["labels"], json!({"rack": "r1"}), "{w1}");
    for _ in 0..3 {
        let id = nodes.submit(json!({}));
        assert_eq!(
            nodes.running(&id)["worker"],
            "w2",
            "a paused node takes nothing new"
        );
    }
    let pinned = nodes.submit(json!({"constraints": ["rack==r1"]}));
    let t = eventually("the pinned task to wait for the paused node", || {
        let t = nodes.http.get(&nodes.task_url(&pinned)).json();
        t["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
            .then_some(t)
    });
    assert_eq!(t["state"], "Pending", "{t}");
    nodes.cli(&["node", "activate", "w1"]);
    assert_eq!(nodes.running(&pinned)["worker"], "w1");
}

#[test]
fn node_changes_that_cannot_be_made_are_clear_4xx_errors() {
    let nodes = Nodes::start(&[("w1", &[])]);
    for (path, body, status, says) in [
        (
            "/nodes/nope",
            json!({"availability": "pause"}),
            404,
            "no node is called nope",
        ),
        (
            "/nodes/w1",
            json!({"availability": "off"}),
            400,
            "expected active, pause or drain",
        ),
        (
            "/nodes/w1",
            json!({"labels": {"node": "x"}}),
            400,
            "reserved",
        ),
        (
            "/nodes/w1",
            json!({"labels": {"zone": "a b"}}),
            400,
            "spaces",
        ),
        (
            "/nodes/w1",
            json!({"deadline_s": 5}),
            400,
            "goes with a drain",
        ),
        ("/nodes/w1", json!({"zone": "a"}), 400, "not a field"),
    ] {
        let r = nodes.http.patch(&nodes.url(path), body.to_string());
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{path} {body}: {error}");
    }
    let (ok, out) = run_cube(&["worker", "--runtime", "fake", "--label", "zone"], &[]);
    assert!(
        !ok && out.contains("--label") && out.contains("KEY=VALUE"),
        "{out}"
    );
}

/// On Docker: a constraint pins real containers to the labelled worker, and a drain of that
/// worker stops them there and runs them on the other one.
#[test]
fn a_constraint_pins_containers_to_the_labelled_docker_worker_and_a_drain_moves_them() {
    test_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (unique("lbl-a"), unique("lbl-b"));
    let _containers = Containers::of(&[&a, &b]);
    let wa = worker_process_with(dir.path(), &a, 0, &["--label", "zone=a"]);
    let wb = worker_process_with(dir.path(), &b, 0, &["--label", "zone=b"]);
    let workers = format!("{},{}", wa.addr, wb.addr);
    let manager = manager_process(dir.path(), "manager", &["--workers", &workers]);
    let http = Http::new();
    let url = |path: &str| format!("{}{path}", manager.url());
    eventually("both workers Ready with their labels", || {
        let nodes = http.get(&url("/nodes")).json();
        let labelled = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "Ready" && n["labels"]["zone"].is_string())
            .count();
        (labelled == 2).then_some(())
    });
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let mut task = sleeper();
            task["constraints"] = json!(["zone==a"]);
            let r = http.post(&url("/tasks"), json!({ "task": task }).to_string());
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()["id"].as_str().expect("an id").to_string()
        })
        .collect();
    for id in &ids {
        let t = wait_state(&http, &url(&format!("/tasks/{id}")), "Running");
        assert_eq!(t["worker"], a.as_str());
        let c = inspect(t["container_id"].as_str().expect("a container")).expect("it exists");
        assert_eq!(c["Config"]["Labels"]["cube.worker"], a.as_str());
    }
    assert_eq!(containers(&a, false).len(), 3);
    assert!(containers(&b, false).is_empty());
    // Labelled zone=a on the manager, b satisfies the pin too; drained, a stops its
    // containers and b runs the tasks.
    let (ok, out) = run_cube(
        &["node", "label", &b, "zone=a"],
        &[("CUBE_MANAGER", manager.url().as_str())],
    );
    assert!(ok, "{out}");
    let (ok, out) = run_cube(
        &["node", "drain", &a],
        &[("CUBE_MANAGER", manager.url().as_str())],
    );
    assert!(ok, "{out}");
    for id in &ids {
        eventually(&format!("task {id} Running on {b}"), || {
            let t = http.get(&url(&format!("/tasks/{id}"))).json();
            (t["state"] == "Running" && t["worker"] == b.as_str()).then_some(())
        });
    }
    eventually(&format!("no running container left on {a}"), || {
        containers(&a, false).is_empty().then_some(())
    });
    assert_eq!(containers(&b, false).len(), 3);
}
