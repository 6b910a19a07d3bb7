//! The event stream (`GET /events`, ARCHITECTURE.md §14) end to end: a manager and
//! fake-runtime workers as real processes, the stream read as a client reads it, a line at a
//! time. A task's states arrive in index order; a client that reconnects with the last index
//! it saw gets exactly what it missed; services and nodes have their events; an index the
//! manager no longer holds gets a `reset`.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    CubeProcess, Http, eventually, manager_process, sleeper, wait_state, worker_process_with,
};
use serde_json::{Value, json};

/// How long a test waits for an event before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A subscription read on a thread of its own; events arrive through a channel.
struct Stream {
    rx: mpsc::Receiver<Sse>,
}

impl Stream {
    /// `GET {manager}/events?{query}`: the stream, once its answer's head has come.
    fn open(manager: &str, query: &str) -> Stream {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .get(&format!("{manager}/events?{query}"))
            .call()
            .expect("GET /events answers");
        assert_eq!(resp.status(), 200);
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        let (tx, rx) = mpsc::channel();
        let reader = BufReader::new(resp.into_body().into_reader());
        std::thread::spawn(move || {
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let sse = Sse {
                            id,
                            event: std::mem::take(&mut event),
                            data: serde_json::from_str(&data).expect("data is JSON"),
                        };
                        if tx.send(sse).is_err() {
                            return;
                        }
                    }
                    (id, data) = (None, String::new());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().expect("an index"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
        });
        Stream { rx }
    }

    /// The next event, or None once the stream ended (or nothing came in time).
    fn next(&self) -> Option<Sse> {
        self.rx.recv_timeout(PATIENCE).ok()
    }

    /// Every event until one that `done` takes (included).
    fn until(&self, what: &str, mut done: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(e) = self.next() else { break };
            let last = done(&e);
            seen.push(e);
            if last {
                return seen;
            }
        }
        panic!("no event for {what}; seen: {seen:#?}");
    }

    /// Every event up to the stream's end (a `wait` ended it).
    fn all(&self) -> Vec<Sse> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// A manager and fake-runtime workers.
struct Setup {
    _dir: tempfile::TempDir,
    workers: Vec<CubeProcess>,
    manager: CubeProcess,
    http: Http,
}

impl Setup {
    fn start(names: &[&str], manager_args: &[&str]) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let workers: Vec<CubeProcess> = names
            .iter()
            .map(|name| worker_process_with(dir.path(), name, 0, &["--runtime", "fake"]))
            .collect();
        let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
        let joined = addrs.join(",");
        let mut args = vec!["--workers", joined.as_str()];
        args.extend_from_slice(manager_args);
        let manager = manager_process(dir.path(), "manager", &args);
        let setup = Setup {
            _dir: dir,
            workers,
            manager,
            http: Http::new(),
        };
        let n = names.len();
        eventually(&format!("{n} workers Ready"), || {
            let nodes = setup.http.get(&setup.url("/nodes")).json();
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "Ready")
                .count();
            (ready == n).then_some(())
        });
        setup
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.manager.url())
    }

    /// Submit a sleeper; its id.
    fn submit(&self) -> String {
        let r = self.http.post(
            &self.url("/tasks"),
            json!({ "task": sleeper() }).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().expect("an id").to_string()
    }

    fn wait_running(&self, id: &str) {
        wait_state(&self.http, &self.url(&format!("/tasks/{id}")), "Running");
    }
}

fn index(e: &Sse) -> u64 {
    e.data["index"].as_u64().expect("an index")
}

fn task_states(events: &[Sse], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "task" && e.data["id"] == id)
        .map(|e| e.data["object"]["state"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_task_s_states_arrive_in_order_and_a_reconnect_gets_exactly_what_it_missed() {
    let s = Setup::start(&["e1"], &[]);
    let live = Stream::open(&s.manager.url(), "");
    let id = s.submit();
    let seen = live.until("the task Running", |e| {
        e.data["id"] == id.as_str() && e.data["object"]["state"] == "Running"
    });
    for e in &seen {
        assert_eq!(e.id, Some(index(e)), "the SSE id is the event's index");
        assert!(e.data["time"].as_str().is_some_and(|t| t.contains('T')));
        assert_eq!(e.data["type"], e.event.as_str());
    }
    assert!(
        seen.windows(2).all(|w| index(&w[0]) < index(&w[1])),
        "indexes grow: {seen:#?}"
    );
    let states = task_states(&seen, &id);
    let actions: Vec<&Value> = seen
        .iter()
        .filter(|e| e.data["id"] == id.as_str())
        .map(|e| &e.data["action"])
        .collect();
    assert_eq!(actions[0], "created", "{actions:?}");
    assert!(actions[1..].iter().all(|a| *a == "updated"), "{actions:?}");
    assert_eq!(
        states.first().map(String::as_str),
        Some("Pending"),
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("Running"),
        "{states:?}"
    );
    let last = seen.last().map(index).expect("events");
    drop(live);

    // Changes while nobody listens.
    let missed: Vec<String> = (0..2).map(|_| s.submit()).collect();
    for id in &missed {
        s.wait_running(id);
    }
    let stop = s.http.delete(&s.url(&format!("/tasks/{id}")));
    assert_eq!(stop.status, 202, "{}", stop.body);
    wait_state(&s.http, &s.url(&format!("/tasks/{id}")), "Completed");

    let again = Stream::open(&s.manager.url(), &format!("since={last}&wait=2")).all();
    assert!(!again.is_empty());
    let indexes: Vec<u64> = again.iter().map(index).collect();
    let expected: Vec<u64> = (last + 1..=last + again.len() as u64).collect();
    assert_eq!(indexes, expected, "every event after {last}, none twice");
    for id in &missed {
        let states = task_states(&again, id);
        assert_eq!(
            states.first().map(String::as_str),
            Some("Pending"),
            "{states:?}"
        );
        assert!(states.iter().any(|s| s == "Running"), "{states:?}");
    }
    assert_eq!(
        task_states(&again, &id).last().map(String::as_str),
        Some("Completed")
    );
    // The same as a replay of everything retained shows after that index.
    let everything = Stream::open(&s.manager.url(), "since=0&wait=1").all();
    let after: Vec<Sse> = everything.into_iter().filter(|e| index(e) > last).collect();
    assert_eq!(after, again);

    // The filter of one task: its events only.
    let one = Stream::open(
        &s.manager.url(),
        &format!("since=0&wait=1&task={}", missed[0]),
    )
    .all();
    assert!(!one.is_empty() && one.iter().all(|e| e.data["id"] == missed[0].as_str()));
}

#[test]
fn services_and_nodes_have_their_events_and_filters_keep_the_others_out() {
    let s = Setup::start(&["n1", "n2"], &["--node-timeout", "2"]);
    let stream = Stream::open(&s.manager.url(), "type=service,node");
    let template = sleeper();
    let r = s.http.post(
        &s.url("/services"),
        json!({"name": "web", "replicas": 1, "task": template}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let created = stream.until("the service created", |e| e.event == "service");
    assert_eq!(
        created.last().map(|e| &e.data["action"]),
        Some(&json!("created"))
    );
    assert_eq!(created.last().map(|e| &e.data["name"]), Some(&json!("web")));

    let r = s
        .http
        .patch(&s.url("/services/web"), json!({"replicas": 3}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    stream.until("the service scaled to 3", |e| {
        e.event == "service" && e.data["object"]["replicas"] == 3
    });

    let r = s.http.patch(
        &s.url("/nodes/n1"),
        json!({"availability": "drain"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    stream.until("n1 drained", |e| {
        e.event == "node" && e.data["name"] == "n1" && e.data["object"]["availability"] == "drain"
    });

    let mut workers = s.workers;
    workers[1].kill();
    let down = stream.until("n2 Down", |e| {
        e.event == "node" && e.data["name"] == "n2" && e.data["action"] == "down"
    });
    assert!(
        down.iter().all(|e| e.event != "task"),
        "?type=service,node has no task events: {down:#?}"
    );
    assert_eq!(
        down.last().map(|e| &e.data["object"]["status"]),
        Some(&json!("Down"))
    );
}

#[test]
fn an_index_no_longer_retained_gets_a_reset() {
    let s = Setup::start(&["r1"], &["--event-buffer", "3"]);
    let first = Stream::open(&s.manager.url(), "since=0&wait=1").all();
    let oldest = first.first().map(index).unwrap_or(0);
    // Each submission to Running writes several records: the ring of 3 forgets the oldest.
    for _ in 0..2 {
        let id = s.submit();
        s.wait_running(&id);
    }
    let replay = Stream::open(&s.manager.url(), &format!("since={oldest}&wait=1")).all();
    let reset = replay.first().expect("a first event");
    assert_eq!(reset.event, "reset", "{replay:#?}");
    assert_eq!(reset.data["type"], "reset");
    assert!(reset.data["object"]["reason"].is_string());
    // An index from before this run of the manager too.
    let old = Stream::open(&s.manager.url(), "since=1&wait=1").all();
    assert_eq!(old.first().map(|e| e.event.as_str()), Some("reset"));
    // The latest index is still good: nothing was missed.
    let latest = reset.data["index"].as_u64().expect("an index");
    let fine = Stream::open(&s.manager.url(), &format!("since={latest}&wait=1")).all();
    assert!(fine.iter().all(|e| e.event != "reset"), "{fine:#?}");
}

#[test]
fn a_tail_replays_the_last_events_then_follows() {
    let s = Setup::start(&["t1"], &[]);
    for _ in 0..3 {
        let id = s.submit();
        s.wait_running(&id);
    }
    let everything = Stream::open(&s.manager.url(), "since=0&wait=1").all();
    assert!(everything.len() > 4, "{everything:#?}");
    // The last four retained, oldest first, with nothing before them.
    let tail = Stream::open(&s.manager.url(), "tail=4&wait=1").all();
    let indexes = |events: &[Sse]| events.iter().map(index).collect::<Vec<_>>();
    assert_eq!(
        indexes(&tail),
        indexes(&everything[everything.len() - 4..]),
        "{tail:#?}"
    );
    // Filters apply to the tail: the last task event only.
    let last_task = Stream::open(&s.manager.url(), "tail=1&type=node&wait=1").all();
    assert!(
        last_task.iter().all(|e| e.event == "node"),
        "{last_task:#?}"
    );
    // Then it follows like any stream.
    let following = Stream::open(&s.manager.url(), "tail=1&wait=10");
    let first = following.next().expect("the tail");
    let id = s.submit();
    let created = following.until("the new task", |e| e.data["id"] == id.as_str());
    assert!(index(created.last().expect("an event")) > index(&first));
    // since and tail contradict each other.
    let both = s.http.get(&s.url("/events?since=0&tail=3"));
    assert_eq!(both.status, 400, "{}", both.body);
    assert!(both.json()["error"].as_str().unwrap_or("").contains("tail"));
    let too_many = s.http.get(&s.url("/events?tail=1001"));
    assert_eq!(too_many.status, 400, "{}", too_many.body);
}
