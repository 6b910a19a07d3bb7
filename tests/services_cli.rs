//! `cube service` against a real manager and two fake-runtime workers: create with --wait, ls,
//! ps, scale, a rolling update with --wait, endpoints (and --watch), rollback, rm, and the
//! API's errors as the CLI prints them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The fake runtime runs any image; this one it treats as an ordinary task.
const SIM_IMAGE: &str = "cube-sim/task";

/// `cube --manager URL service <args>`: whether it succeeded, and its output.
fn service(manager: &str, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["--manager", manager, "service"];
    argv.extend_from_slice(args);
    run_cube(&argv, &[])
}

/// The lines of `text` whose first word starts with `prefix` (a table pads its cells).
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// A child process killed when dropped.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cube_service_creates_scales_updates_rolls_back_and_removes_a_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w1 = worker_process_with(dir.path(), "w1", 0, &["--runtime", "fake"]);
    let w2 = worker_process_with(dir.path(), "w2", 0, &["--runtime", "fake"]);
    let workers = format!("{},{}", w1.addr, w2.addr);
    let manager = manager_process(dir.path(), "manager", &["--workers", &workers]);
    let base = manager.url();
    let http = Http::new();
    eventually("both workers Ready", || {
        let nodes = http.get(&format!("{base}/nodes")).json();
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "Ready")
            .count();
        (ready == 2).then_some(())
    });
    let view = |name: &str| http.get(&format!("{base}/services/{name}"));

    // Create, and wait until every replica runs.
    let (ok, out) = service(
        &base,
        &[
            "create",
            "web",
            SIM_IMAGE,
            "sleep",
            "1000",
            "--replicas",
            "3",
            "-p",
            "80",
            "--update-parallelism",
            "2",
            "--wait",
        ],
    );
    assert!(ok, "{out}");
    // --wait waited (all 3 run below); its progress is for a terminal, and this is a pipe.
    assert_eq!(out, "web\n");
    let created = view("web").json();
    assert_eq!(created["running"], 3, "{created}");
    assert_eq!(created["task"]["cmd"], serde_json::json!(["sleep", "1000"]));

    // The same name with another spec is the API's 409, printed as its message.
    let (ok, out) = service(&base, &["create", "web", "cube-sim/other"]);
    assert!(!ok, "{out}");
    assert!(out.contains("exists already with another spec"), "{out}");

    let (ok, out) = service(&base, &["ls"]);
    assert!(ok, "{out}");
    let row: Vec<&str> = lines_starting(&out, "web")[0].split_whitespace().collect();
    assert_eq!(
        row,
        ["web", "replicated", "3/3", "1", "completed", SIM_IMAGE],
        "{out}"
    );

    let (ok, out) = service(&base, &["ps", "web"]);
    assert!(ok, "{out}");
    assert!(out.contains("VERSION") && out.contains("NODE"), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (slot, row) in rows.iter().enumerate() {
        assert_eq!(row[1], format!("web.{}", slot + 1), "{out}");
        assert_eq!(&row[2..4], ["1", "Running"], "{out}");
        assert!(row[4] == "w1" || row[4] == "w2", "{out}");
    }

    let (ok, out) = service(&base, &["scale", "web=5"]);
    assert!(ok, "{out}");
    assert!(out.contains("web scaled to 5"), "{out}");
    eventually("5 replicas running", || {
        (view("web").json()["running"] == 5).then_some(())
    });

    // Follow the endpoints from here: one address per replica.
    let mut watcher = Watcher(
        Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(["--manager", &base, "service", "endpoints", "web", "--watch"])
            .env_remove("CUBE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the watcher"),
    );
    let (tx, watched) = mpsc::channel::<String>();
    let stdout = watcher.0.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: Vec<String> = (0..5)
        .map(|_| {
            watched
                .recv_timeout(PATIENCE)
                .expect("the watcher's first list")
        })
        .collect();
    for line in &first {
        let (host, port) = line.rsplit_once(':').expect("host:port");
        assert_eq!(host, "127.0.0.1", "{first:?}");
        assert!(port.parse::<u16>().is_ok(), "{first:?}");
    }

    // A rolling update, two slots at a time, each new task counted after 1 s.
    let (ok, out) = service(
        &base,
        &[
            "update",
            "web",
            "--image",
            "cube-sim/task:2",
            "--update-min-healthy",
            "1s",
            "--wait",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "web\n", "no progress on a pipe");
    let updated = view("web").json();
    assert_eq!(updated["version"], 2, "{updated}");
    assert_eq!(updated["task"]["image"], "cube-sim/task:2");
    assert_eq!(updated["running_current"], 5, "{updated}");

    // The watcher printed the lists that followed: a blank line before each.
    let after_update = eventually("the watcher to print a new list", || {
        watched.recv_timeout(Duration::from_millis(100)).ok()
    });
    assert_eq!(after_update, "", "a new list starts with a blank line");
    drop(watcher);

    let (ok, out) = service(&base, &["endpoints", "web"]);
    assert!(ok, "{out}");
    let addresses: Vec<&str> = out.lines().collect();
    assert_eq!(addresses.len(), 5, "{out}");
    assert!(
        addresses.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{out}"
    );

    let (ok, out) = service(&base, &["rollback", "web", "--wait"]);
    assert!(ok, "{out}");
    assert_eq!(out, "web\n", "no progress on a pipe");
    let back = view("web").json();
    assert_eq!(back["task"]["image"], SIM_IMAGE, "{back}");
    assert_eq!(back["rollout"]["state"], "rolled_back", "{back}");

    let (ok, out) = service(&base, &["inspect", "web"]);
    assert!(ok, "{out}");
    let inspected: Value = serde_json::from_str(&out).expect("inspect prints JSON");
    assert_eq!(inspected["name"], "web");
    assert_eq!(inspected["replicas"], 5);

    let (ok, out) = service(&base, &["rm", "web"]);
    assert!(ok, "{out}");
    assert_eq!(out, "web\n");
    eventually("the service gone", || {
        (view("web").status == 404).then_some(())
    });
    let (ok, out) = service(&base, &["ls"]);
    assert!(ok && lines_starting(&out, "web").is_empty(), "{out}");

    // Errors are the API's message, and a failure exit.
    let (ok, out) = service(&base, &["inspect", "web"]);
    assert!(!ok, "{out}");
    assert!(out.contains("service web does not exist"), "{out}");
    let (ok, out) = service(&base, &["rm", "web"]);
    assert!(!ok, "{out}");
    assert!(out.contains("does not exist"), "{out}");
    let (ok, out) = service(&base, &["scale", "nope=2"]);
    assert!(!ok && out.contains("service nope does not exist"), "{out}");
}
