//! The `cube` command as scripts use it, against real processes: `cube run` with docker-style
//! flags (and `-f`), `inspect`, exit codes (2 usage, 3 not found), completions, `cube events`
//! against a stand-in event stream, `status -w` without one, and `cube up` stopping at once on
//! SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The fake runtime runs any image; this one it treats as an ordinary task.
const SIM_IMAGE: &str = "cube-sim/task";

/// `cube <args>` run to its end, with none of the caller's tokens.
fn cube(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(args)
        .env_remove("CUBE_TOKEN")
        .env_remove("CUBE_CLUSTER_TOKEN")
        .env_remove("CUBE_CA_CERT")
        .env_remove("CUBE_WORKERS")
        .env_remove("CUBE_SCHEDULER")
        .output()
        .expect("run cube")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A manager with one fake-runtime worker, Ready.
fn cluster(dir: &std::path::Path) -> (CubeProcess, CubeProcess) {
    let worker = worker_process_with(dir, "w1", 0, &["--runtime", "fake"]);
    let manager = manager_process(dir, "manager", &["--workers", &worker.addr]);
    let http = Http::new();
    let base = manager.url();
    eventually("the worker Ready", || {
        let nodes = http.get(&format!("{base}/nodes")).json();
        (nodes.as_array()?.iter().any(|n| n["status"] == "Ready")).then_some(())
    });
    (worker, manager)
}

#[test]
fn cube_run_takes_docker_flags_or_a_file_and_prints_the_full_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_worker, manager) = cluster(dir.path());
    let base = manager.url();
    let http = Http::new();

    let out = cube(&[
        "--manager",
        &base,
        "run",
        SIM_IMAGE,
        "sleep",
        "100",
        "-e",
        "A=1",
        "--memory",
        "64m",
        "--name",
        "web-1",
        "-p",
        "8080:80",
        "--restart",
        "on-failure",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a full id: {id:?}");
    let task = http.get(&format!("{base}/tasks/{id}")).json();
    assert_eq!(task["image"], SIM_IMAGE, "{task}");
    assert_eq!(task["cmd"], serde_json::json!(["sleep", "100"]), "{task}");
    assert_eq!(task["env"], serde_json::json!(["A=1"]), "{task}");
    assert_eq!(task["memory"], 64 << 20, "{task}");
    assert_eq!(task["name"], "web-1", "{task}");
    assert_eq!(task["port_bindings"]["80/tcp"], "8080", "{task}");

    // `inspect` prints the whole task as JSON.
    let out = cube(&["--manager", &base, "inspect", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(inspected["id"], id.as_str());
    assert_eq!(inspected["memory"], 64 << 20);

    // -f still works, and flags change what the file says.
    let file = dir.path().join("task.json");
    std::fs::write(
        &file,
        serde_json::json!({"task": {"image": SIM_IMAGE, "cmd": ["sleep", "5"], "env": ["B=2"]}})
            .to_string(),
    )
    .expect("write");
    let out = cube(&[
        "--manager",
        &base,
        "run",
        "-f",
        file.to_str().expect("utf-8"),
        "--cpu",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let task = http.get(&format!("{base}/tasks/{id}")).json();
    assert_eq!(task["cmd"], serde_json::json!(["sleep", "5"]), "{task}");
    assert_eq!(task["env"], serde_json::json!(["B=2"]), "{task}");
    assert_eq!(task["cpu"], 0.5, "{task}");

    // `status` keeps ID, NAME and STATE first and says how long ago.
    let out = cube(&["--manager", &base, "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header[..3], ["ID", "NAME", "STATE"], "{text}");
    assert!(text.contains(" ago"), "{text}");
}

#[test]
fn unknown_ids_exit_3_and_bad_flags_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_worker, manager) = cluster(dir.path());
    let base = manager.url();
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["inspect", unknown.as_str()],
        vec!["stop", unknown.as_str()],
        vec!["status", unknown.as_str()],
        vec!["service", "inspect", "nope"],
    ] {
        let mut argv = vec!["--manager", base.as_str()];
        argv.extend_from_slice(&args);
        let out = cube(&argv);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
    }
    // A usage error of clap's, and one found after parsing, are both 2.
    let out = cube(&["--manager", &base, "run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cube(&["--manager", &base, "run", SIM_IMAGE, "-e", "NOEQUALS"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Any other failure is 1.
    let out = cube(&["--manager", "http://127.0.0.1:1", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_manager_with_a_bad_worker_address_or_config_key_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("m");
    let data = data.to_str().expect("utf-8");
    let out = cube(&["manager", "--data-dir", data, "--workers", "garbage::::"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("garbage::::"), "{}", stderr(&out));

    let bad_config = |toml: &str| {
        let file = dir.path().join("cube.toml");
        std::fs::write(&file, toml).expect("write");
        cube(&[
            "manager",
            "--data-dir",
            data,
            "--config",
            file.to_str().expect("utf-8"),
        ])
    };
    let out = bad_config("prot = 6000\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"prot\"") && err.contains("port") && err.contains("node_timeout"),
        "names the key and the keys there are: {err}"
    );
    let out = bad_config("workers = [\"10.0.0.1:5556\", \"nope\"]\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    let out = bad_config("scheduler = \"fastest\"\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = bad_config("node_timeout = -3\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cube(&["manager", "--data-dir", data, "--scheduler", "fastest"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cube(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(
            script.contains("cube") && script.contains("service"),
            "{shell}"
        );
    }
}

/// A stand-in for the manager's `GET /events`: each connection gets the next of `answers`
/// (written whole, then closed); the request lines are sent to the returned channel.
fn fake_event_server(answers: Vec<String>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let _ = tx.send(head.lines().next().unwrap_or("").to_string());
            let Some(body) = answers.next() else {
                // No more events: hold the stream open, as a quiet manager does.
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
                std::thread::sleep(Duration::from_secs(30));
                return;
            };
            // Chunked, as actix streams a body; then the end, as a manager that restarts.
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (format!("http://{addr}"), rx)
}

fn sse(index: u64, kind: &str, action: &str, object: Value) -> (String, Value) {
    let data = serde_json::json!({
        "index": index, "time": "2026-11-27T10:00:00Z", "type": kind, "action": action,
        "object": object,
    });
    (
        format!("id: {index}\nevent: {kind}\ndata: {data}\n\n"),
        data,
    )
}

/// Start `cube <args>` and collect its stdout lines on a channel.
fn follow(args: &[&str]) -> (Killed, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(args)
        .env_remove("CUBE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cube");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Killed(child), rx)
}

#[test]
fn cube_events_prints_each_event_and_reconnects_after_the_last_index() {
    let task = uuid::Uuid::new_v4();
    let (e1, _) = sse(
        1,
        "task",
        "created",
        serde_json::json!({"id": task, "name": "web", "state": "Pending"}),
    );
    let (e2, d2) = sse(
        2,
        "task",
        "updated",
        serde_json::json!({"id": task, "name": "web", "state": "Running"}),
    );
    let (e3, d3) = sse(3, "node", "updated", serde_json::json!({"name": "w1"}));
    let (base, requests) = fake_event_server(vec![format!(": hello\n\n{e1}{e2}"), e3.clone()]);

    let (_events, lines) = follow(&["--manager", &base, "events", "--task", &task.to_string()]);
    let next = || {
        lines
            .recv_timeout(PATIENCE)
            .expect("cube events printed a line")
    };
    assert_eq!(
        next(),
        format!("2026-11-27T10:00:00Z task created id={task} name=web state=Pending")
    );
    assert!(next().ends_with("state=Running"));
    assert_eq!(next(), "2026-11-27T10:00:00Z node updated name=w1");
    let first = requests.recv_timeout(PATIENCE).expect("a request");
    assert_eq!(first, format!("GET /events?task={task} HTTP/1.1"));
    let second = requests.recv_timeout(PATIENCE).expect("a second request");
    assert_eq!(
        second,
        format!("GET /events?task={task}&since=2 HTTP/1.1"),
        "it reconnects after the last index it saw"
    );

    // -o json prints the data as sent, one event a line.
    let (base, _requests) = fake_event_server(vec![format!("{e2}{e3}")]);
    let (_events, lines) = follow(&["--manager", &base, "events", "-o", "json", "--since", "1"]);
    for expected in [d2, d3] {
        let line = lines.recv_timeout(PATIENCE).expect("a line");
        let got: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(got, expected);
    }
}

#[test]
fn status_watch_lists_again_when_the_manager_serves_no_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_worker, manager) = cluster(dir.path());
    let base = manager.url();
    let (_watch, lines) = follow(&["--manager", &base, "status", "-w"]);
    let header = lines.recv_timeout(PATIENCE).expect("the table");
    assert!(header.trim_start().starts_with("ID"), "{header}");

    let out = cube(&["--manager", &base, "run", SIM_IMAGE, "sleep", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    eventually("the watcher to show the new task", || {
        let line = lines.recv_timeout(Duration::from_millis(200)).ok()?;
        line.contains(&id).then_some(())
    });
}

#[test]
fn cube_up_stops_within_two_seconds_of_a_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(["up", "--runtime", "fake", "--insecure", "--port"])
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("CUBE_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cube up");
    let mut up = Killed(child);
    let err = up.0.stderr.take().expect("piped stderr");
    let (tx, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    eventually("cube up to say it is up", || {
        said.recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|l| l.contains("Cube is up"))
    });
    let http = Http::new();
    eventually("cube up's workers Ready", || {
        let nodes = http.get(&format!("http://127.0.0.1:{port}/nodes"));
        (nodes.status == 200
            && nodes
                .json()
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "Ready")
                .count()
                == 3)
            .then_some(())
    });
    let pid = up.0.id().to_string();
    let before = Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .map(|o| stdout(&o))
        .unwrap_or_default();

    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = loop {
        if let Some(status) = up.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "cube up still runs 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let said: String = said.try_iter().collect::<Vec<_>>().join("\n");
    assert!(said.contains("SIGTERM"), "it says why it stops: {said}");
    assert!(said.contains("cube up stopped"), "{said}");
    for child in before.split_whitespace() {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists()
                || std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z")),
            "process {child} of cube up outlived it"
        );
    }
}
