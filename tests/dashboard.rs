//! The dashboard in a real browser: a headless Chromium, driven over the DevTools protocol,
//! against a live manager (tokens on) and three fake-runtime workers, each a process of its own.
//!
//! It signs in, submits a task from the form and sees it Running without a reload, reads its
//! logs, stops it and sees it Completed, drains a node and sees its tasks move (their attempt
//! history naming the drained node), scales a service, measures how long a state change takes
//! to reach the page, and checks the session cookie's flags, CSRF, a read-only token, and what
//! the page shows when its connection to the manager is lost and comes back. Screenshots go to
//! `target/tmp/dashboard/`. No console error, exception or CSP violation may happen.
//!
//! Without a Chromium the tests are skipped, loudly, unless `CUBE_REQUIRE_BROWSER=1` (CI).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::{CubeProcess, Http, eventually, free_port, worker_process_with};
use serde_json::{Value, json};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
const CLUSTER: &str = "cluster-token-0123456789abcdef";
/// How long the page may take to show something: generous, this is not a benchmark.
const SHOWN: Duration = Duration::from_secs(30);

/// Where the screenshots go, for people to look at.
fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("the screenshots' directory");
    dir
}

/// A manager with a read and a write token and three fake-runtime workers.
struct Cluster {
    dir: tempfile::TempDir,
    workers: Vec<CubeProcess>,
    manager: CubeProcess,
    port: u16,
    http: Http,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("tokens"),
            format!("read {READ}\nwrite {WRITE}\n"),
        )
        .expect("the token file");
        let zones = ["a", "a", "b"];
        let workers: Vec<CubeProcess> = ["w1", "w2", "w3"]
            .iter()
            .zip(zones)
            .map(|(name, zone)| {
                let label = format!("zone={zone}");
                worker_process_with(
                    dir.path(),
                    name,
                    0,
                    &[
                        "--runtime",
                        "fake",
                        "--cluster-token",
                        CLUSTER,
                        "--label",
                        &label,
                    ],
                )
            })
            .collect();
        let port = free_port();
        let cluster = Cluster {
            manager: Cluster::manager(dir.path(), &workers, port),
            dir,
            workers,
            port,
            http: Http::with_token(WRITE),
        };
        cluster.manager_ready();
        cluster.wait_ready();
        cluster
    }

    fn manager(dir: &Path, workers: &[CubeProcess], port: u16) -> CubeProcess {
        let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
        let tokens = dir.join("tokens");
        let data = dir.join("manager");
        CubeProcess::start(
            &[
                "manager",
                "--port",
                &port.to_string(),
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--token-file",
                tokens.to_str().expect("utf-8"),
                "--cluster-token",
                CLUSTER,
                "--workers",
                &addrs.join(","),
            ],
            dir,
            "manager",
        )
    }

    fn manager_ready(&self) {
        eventually("the manager healthy", || {
            (self.http.get(&self.url("/health")).status == 200).then_some(())
        });
    }

    fn wait_ready(&self) {
        eventually("3 workers Ready", || {
            let nodes = self.http.get(&self.url("/nodes")).json();
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "Ready")
                .count();
            (ready == 3).then_some(())
        });
    }

    fn restart_manager(&mut self) {
        self.manager.kill();
        self.manager = Cluster::manager(self.dir.path(), &self.workers, self.port);
        self.manager_ready();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.manager.url())
    }

    fn submit(&self, task: Value) -> Value {
        let r = self.http.post(&self.url("/tasks"), task.to_string());
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    fn task(&self, id: &str) -> Value {
        self.http.get(&self.url(&format!("/tasks/{id}"))).json()
    }

    fn wait_state(&self, id: &str, state: &str) -> Value {
        eventually(&format!("task {id} {state}"), || {
            let t = self.task(id);
            (t["state"] == state).then_some(t)
        })
    }
}

/// A service's template: a sleeper with a reservation.
fn template() -> Value {
    json!({"image": "cube-sim/task", "cmd": ["sleep", "600"], "memory": 64 << 20, "cpu": 0.25})
}

fn sleeper(name: &str) -> Value {
    let mut task = template();
    task["name"] = json!(name);
    task
}

/// `s` as a JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// Sign in on the page with `token`, and wait until it follows the manager's events.
fn sign_in(page: &Page, token: &str) {
    page.wait_for(
        "the sign-in form",
        "!!document.querySelector('#login-token')",
        SHOWN,
    );
    page.fill("#login-token", token);
    page.click("#login button[type=submit]");
    live(page);
}

fn live(page: &Page) {
    page.wait_for(
        "the page live",
        "document.querySelector('#live')?.dataset.state === 'live' && !document.querySelector('#nav').hidden",
        SHOWN,
    );
}

/// The state a badge in `scope` shows (`data-state`), or null.
fn badge_is(scope: &str, state: &str) -> String {
    format!(
        "document.querySelector({})?.dataset.state === {}",
        js(&format!("{scope} .badge[data-state]")),
        js(state)
    )
}

/// Click the open dialog's submit button.
fn confirm_dialog(page: &Page) {
    page.wait_for(
        "a dialog",
        "!!document.querySelector('dialog[open] button[type=submit]')",
        SHOWN,
    );
    page.click("dialog[open] button[type=submit]");
    page.wait_for(
        "the dialog closed",
        "!document.querySelector('dialog[open]')",
        SHOWN,
    );
}

/// Fail on anything the page logged as an error (exceptions, console errors, CSP violations,
/// assets that did not load), but the API's refusals the test provoked (a 4xx to an API call is
/// logged by the browser too) and, when `dropped` (the network was cut on purpose), failed
/// connections.
fn assert_no_errors(page: &Page, dropped: bool) {
    let asset = |e: &str| {
        let url = e.rsplit('(').next().unwrap_or("").trim_end_matches(')');
        url.ends_with(".js") || url.ends_with(".css") || url.ends_with(".svg") || url.ends_with('/')
    };
    let errors: Vec<String> = page
        .take_errors()
        .into_iter()
        .filter(|e| !e.contains("status of 40") || asset(e))
        .filter(|e| !(dropped && e.contains("net::ERR_")))
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}

#[test]
fn the_dashboard_runs_a_cluster_in_a_real_browser() {
    let out = out_dir();
    let Some(browser) = Browser::launch(&out) else {
        return;
    };
    let cluster = Cluster::start();
    let base = cluster.manager.url();
    let page = browser.new_page();

    // What the page costs: a first visit, nothing cached.
    page.goto(&format!("{base}/"));
    page.wait_for(
        "the sign-in form",
        "!!document.querySelector('#login-token')",
        SHOWN,
    );
    let assets: Vec<_> = page
        .transferred()
        .into_iter()
        .filter(|t| t.url == format!("{base}/") || t.url.contains("/ui/"))
        .collect();
    let total: u64 = assets.iter().map(|t| t.bytes).sum();
    eprintln!(
        "dashboard: the page and its {} assets took {total} bytes on the wire (gzipped, headers included)",
        assets.len() - 1
    );
    assert!(
        assets.iter().any(|t| t.url.ends_with("/app.js")),
        "{assets:?}"
    );

    // A wrong token is refused with the manager's words; the right one signs in.
    page.fill("#login-token", "not-a-token-of-this-cluster");
    page.click("#login button[type=submit]");
    page.wait_for(
        "the refusal",
        "document.querySelector('#login .error-text')?.textContent.includes(\"not one of this manager's\")",
        SHOWN,
    );
    sign_in(&page, WRITE);
    page.eval("window.loadedOnce = true");

    // The session is an HttpOnly, SameSite=Strict cookie the page's scripts cannot read.
    let cookies = page.cookies();
    let session = cookies
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "cube_session"))
        .unwrap_or_else(|| panic!("no session cookie in {cookies}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(
        page.eval("document.cookie.includes('cube_session')"),
        json!(false)
    );
    assert!(
        !page
            .eval("JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + location.href")
            .as_str()
            .unwrap_or("")
            .contains(WRITE),
        "the token is kept nowhere the page can read"
    );
    // The cookie alone (which a container's web server on another port of this host would
    // receive too) reads and writes nothing: requests need the session's key, which only this
    // origin's page holds.
    for request in [
        "fetch('/tasks').then(async r => [r.status, (await r.json()).error])",
        "fetch('/tasks', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({image: 'cube-sim/task', cmd: ['true']})}).then(async r => [r.status, (await r.json()).error])",
    ] {
        let forged = page.eval(request);
        assert_eq!(forged[0], 401, "{forged}");
        assert!(
            forged[1].as_str().unwrap_or("").contains("X-Cube-CSRF"),
            "{forged}"
        );
    }

    // A cluster to look at: a service of three, four tasks, one that failed.
    let service = cluster.http.post(
        &cluster.url("/services"),
        json!({"name": "web", "replicas": 3, "task": template()}).to_string(),
    );
    assert_eq!(service.status, 201, "{}", service.body);
    for i in 1..=4 {
        cluster.submit(sleeper(&format!("batch-{i}")));
    }
    let failed = cluster.submit(json!({"name": "migrate", "image": "cube-sim/task", "cmd": ["exit", "3"], "restart_policy": "never"}));
    cluster.wait_state(failed["id"].as_str().expect("an id"), "Failed");
    page.wait_for(
        "7 Running and 1 Failed counted",
        "document.querySelector('[data-count=Running] .n')?.textContent === '7' && document.querySelector('[data-count=Failed] .n')?.textContent === '1'",
        SHOWN,
    );
    page.wait_for(
        "the service at 3 of 3",
        "document.querySelector('[data-service=web]')?.textContent.includes('3 / 3')",
        SHOWN,
    );
    page.wait_for(
        "the failed task among the recent failures, with its error",
        "document.querySelector('#failing')?.textContent.includes('migrate') && document.querySelector('#failing').textContent.includes('exit')",
        SHOWN,
    );
    page.wait_for(
        "three node cards with capacity bars",
        "document.querySelectorAll('[data-node] .meter').length === 9",
        SHOWN,
    );
    page.screenshot(&out.join("overview.png"));

    // Submit from the form: the JSON editor's refusal first, in the API's words.
    page.click("#run-task");
    page.wait_for(
        "the run dialog",
        "!!document.querySelector('#run-dialog')",
        SHOWN,
    );
    page.fill("#run-image", "cube-sim/task");
    page.click("#run-dialog [role=tab]:nth-child(2)");
    page.fill(
        "#run-json",
        r#"{"image": "cube-sim/task", "cmd": ["sleep", "600"], "cpu": -1}"#,
    );
    page.click("#run-dialog button[type=submit]");
    page.wait_for(
        "the API's refusal in the dialog",
        "document.querySelector('#run-dialog .error-text:not([hidden])')?.textContent.includes('cpu')",
        SHOWN,
    );
    // Back to the form, which took the JSON's fields, and run it from there.
    page.fill(
        "#run-json",
        r#"{"image": "cube-sim/task", "cmd": ["sleep", "600"]}"#,
    );
    page.click("#run-dialog [role=tab]:nth-child(1)");
    assert_eq!(
        page.eval("document.querySelector('#run-cmd').value"),
        json!("sleep 600")
    );
    page.fill("#run-name", "from-the-form");
    page.fill("#run-memory", "32M");
    page.fill("#run-env", "GREETING=hello");
    page.click("#run-dialog button[type=submit]");
    page.wait_for(
        "the new task's page",
        "location.hash.startsWith('#/tasks/') && !!document.querySelector('#task-detail h1')",
        SHOWN,
    );
    let hash = page.eval("location.hash");
    let id = hash
        .as_str()
        .and_then(|h| h.strip_prefix("#/tasks/"))
        .expect("the task's id in the address")
        .to_string();
    let submitted = cluster.task(&id);
    assert_eq!(submitted["name"], "from-the-form");
    assert_eq!(submitted["memory"], 32 << 20);
    assert_eq!(submitted["cmd"], json!(["sleep", "600"]));
    assert_eq!(submitted["env"], json!(["GREETING=hello"]));
    page.wait_for(
        "the task Running on its page",
        &badge_is("#task-detail .node-head", "Running"),
        SHOWN,
    );
    assert_eq!(
        page.eval("window.loadedOnce === true"),
        json!(true),
        "no reload"
    );

    // Its logs, then a stop: Completed, live.
    page.wait_for(
        "the task's output",
        "document.querySelector('#logs')?.textContent.includes('fake container')",
        SHOWN,
    );
    page.wait_for(
        "its first attempt",
        "!!document.querySelector('#attempts tr[data-attempt=\"1\"]')",
        SHOWN,
    );
    page.screenshot(&out.join("task.png"));
    page.click("#stop-task");
    confirm_dialog(&page);
    page.wait_for(
        "the task Completed on its page",
        &badge_is("#task-detail .node-head", "Completed"),
        SHOWN,
    );
    assert_eq!(cluster.task(&id)["state"], "Completed");

    // How long a state change takes to reach the page: stop 20 tasks shown in the table and
    // compare when each row turned Completed with the task's own finish time.
    page.eval("location.hash = '#/tasks'");
    page.wait_for(
        "the tasks table",
        "!!document.querySelector('#task-rows')",
        SHOWN,
    );
    let watched: Vec<String> = (0..20)
        .map(|i| {
            cluster.submit(sleeper(&format!("timed-{i:02}")))["id"]
                .as_str()
                .expect("an id")
                .to_string()
        })
        .collect();
    for id in &watched {
        cluster.wait_state(id, "Running");
    }
    page.wait_for(
        "the 20 new tasks in the table, Running",
        "[...document.querySelectorAll('#task-rows tr[data-task]')].filter(r => r.querySelector('.badge')?.dataset.state === 'Running' && r.textContent.includes('timed-')).length === 20",
        SHOWN,
    );
    page.eval(&format!(
        "window.watched = new Set({}); window.shownAt = {{}}; new MutationObserver(() => {{ for (const row of document.querySelectorAll('#task-rows tr[data-task]')) {{ const id = row.dataset.task; if (watched.has(id) && !shownAt[id] && row.querySelector('.badge')?.dataset.state === 'Completed') shownAt[id] = Date.now(); }} }}).observe(document.querySelector('#task-rows'), {{childList: true, subtree: true}}); true",
        json!(watched)
    ));
    for id in &watched {
        let r = cluster.http.delete(&cluster.url(&format!("/tasks/{id}")));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let shown = page.wait_for(
        "20 rows Completed",
        "Object.keys(window.shownAt).length === 20 ? window.shownAt : null",
        SHOWN,
    );
    let mut latencies: Vec<i64> = watched
        .iter()
        .map(|id| {
            let t = cluster.wait_state(id, "Completed");
            let finished = chrono::DateTime::parse_from_rfc3339(
                t["finish_time"].as_str().expect("a finish time"),
            )
            .expect("RFC 3339")
            .timestamp_millis();
            shown[id.as_str()].as_i64().expect("a time") - finished
        })
        .collect();
    latencies.sort_unstable();
    eprintln!(
        "dashboard: state change to page, 20 stops: median {} ms, p95 {} ms, max {} ms (min {} ms)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 95 / 100],
        latencies[latencies.len() - 1],
        latencies[0]
    );
    assert!(
        latencies.iter().all(|ms| *ms < 10_000),
        "a change took over 10 s to show: {latencies:?}"
    );

    // Pages: 50 tasks a page, newest first; Next and Previous follow the manager's cursor.
    for i in 0..25 {
        cluster.submit(sleeper(&format!("filler-{i:02}")));
    }
    let total = cluster
        .http
        .get(&cluster.url("/tasks?limit=5000"))
        .json()
        .as_array()
        .map_or(0, Vec::len);
    assert!(total > 50, "{total} tasks");
    page.eval("location.hash = '#/'; location.hash = '#/tasks'");
    page.wait_for(
        "a full first page, newest first",
        "document.querySelectorAll('#task-rows tr[data-task]').length === 50 && document.querySelector('#task-rows tr[data-task]').textContent.includes('filler-24')",
        SHOWN,
    );
    page.click(".pager .btn:last-child");
    page.wait_for(
        "the second page",
        &format!(
            "location.hash.includes('before=') && document.querySelectorAll('#task-rows tr[data-task]').length === {} && document.querySelector('.pager').textContent.includes('Page 2')",
            total - 50
        ),
        SHOWN,
    );
    page.click(".pager .btn:first-of-type");
    page.wait_for(
        "the first page again",
        "document.querySelectorAll('#task-rows tr[data-task]').length === 50 && document.querySelector('.pager').textContent.includes('Page 1')",
        SHOWN,
    );

    // Search and filters.
    page.click("#task-search");
    page.fill("#task-search", "from-the");
    page.wait_for(
        "the search's one row",
        "location.hash.includes('q=from-the') && document.querySelectorAll('#task-rows tr[data-task]').length === 1",
        SHOWN,
    );
    assert_eq!(
        page.eval("document.activeElement?.id"),
        json!("task-search"),
        "the search field keeps its focus"
    );
    page.eval("location.hash = '#/tasks?state=Failed'");
    page.wait_for(
        "the failed task alone",
        "document.querySelectorAll('#task-rows tr[data-task]').length === 1 && document.querySelector('#task-rows').textContent.includes('migrate')",
        SHOWN,
    );

    // Drain the node with the most tasks: its tasks move, and a moved task's attempts name it.
    let nodes = cluster.http.get(&cluster.url("/nodes")).json();
    let busiest = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .max_by_key(|n| n["tasks"].as_u64())
        .expect("a node");
    let drained = busiest["name"].as_str().expect("a name").to_string();
    let on_drained: Vec<Value> = cluster
        .http
        .get(&cluster.url(&format!("/tasks?worker={drained}&state=Running")))
        .json()
        .as_array()
        .expect("tasks")
        .clone();
    assert!(!on_drained.is_empty(), "{drained} runs something");
    page.eval("location.hash = '#/nodes'");
    let card = format!("[data-node={drained}]");
    page.wait_for(
        "the node cards",
        &format!("!!document.querySelector({})", js(&card)),
        SHOWN,
    );
    page.click(&format!("{card} .btn.danger"));
    confirm_dialog(&page);
    page.wait_for(
        "the node draining and empty",
        &format!(
            "!!document.querySelector({}) && document.querySelector({}).textContent.includes('0 task(s)')",
            js(&format!("{card} .badge.drain")),
            js(&card)
        ),
        SHOWN,
    );
    page.screenshot(&out.join("nodes.png"));
    let plain = on_drained
        .iter()
        .find(|t| t["service"].is_null())
        .or(on_drained.first())
        .expect("a task");
    let moved_id = plain["id"].as_str().expect("an id");
    let moved = eventually("the task Running elsewhere", || {
        let t = cluster.task(moved_id);
        (t["state"] == "Running" && t["worker"] != drained.as_str()).then_some(t)
    });
    assert_ne!(moved["worker"], drained.as_str());
    let running = cluster
        .http
        .get(&cluster.url(&format!("/tasks?worker={drained}&state=Running")))
        .json();
    assert_eq!(running.as_array().map(Vec::len), Some(0), "{running}");
    if plain["service"].is_null() {
        page.eval(&format!("location.hash = '#/tasks/{moved_id}'"));
        page.wait_for(
            "the earlier attempt on the drained node",
            &format!(
                "document.querySelector('#attempts tr[data-attempt=\"1\"]')?.textContent.includes({})",
                js(&drained)
            ),
            SHOWN,
        );
    }
    // Activate it again.
    page.eval("location.hash = '#/nodes'");
    page.wait_for(
        "the node cards",
        &format!("!!document.querySelector({})", js(&card)),
        SHOWN,
    );
    page.click(&format!("{card} .actions .btn"));
    page.wait_for(
        "the node active",
        &format!(
            "!document.querySelector({})",
            js(&format!("{card} .badge.drain"))
        ),
        SHOWN,
    );

    // A keyboard user's place survives the page's redraws: with focus on a node's Pause button,
    // a new task on that node changes its card, and focus stays on its Pause button.
    let pause = format!("{card} [data-focus=pause]");
    page.wait_for(
        "the node's Pause button",
        &format!("!!document.querySelector({})", js(&pause)),
        SHOWN,
    );
    page.eval(&format!("document.querySelector({}).focus()", js(&pause)));
    let before = page.text(&format!("{card} .node-foot a"));
    let pinned = cluster.submit(json!({"name": "pinned", "image": "cube-sim/task", "cmd": ["sleep", "600"], "constraints": [format!("node=={drained}")]}));
    cluster.wait_state(pinned["id"].as_str().expect("an id"), "Running");
    page.wait_for(
        "the card redrawn with one more task",
        &format!(
            "document.querySelector({})?.textContent !== {}",
            js(&format!("{card} .node-foot a")),
            js(&before)
        ),
        SHOWN,
    );
    assert_eq!(
        page.eval(&format!(
            "document.activeElement === document.querySelector({})",
            js(&pause)
        )),
        json!(true),
        "focus stayed on the node's Pause button"
    );

    // A service: scale it from its page.
    page.eval("location.hash = '#/services/web'");
    page.wait_for(
        "the service's page",
        "!!document.querySelector('#scale')",
        SHOWN,
    );
    page.click("#scale");
    page.fill("#scale-replicas", "5");
    confirm_dialog(&page);
    page.wait_for(
        "the service at 5 of 5",
        "document.querySelector('main')?.textContent.includes('5 of 5')",
        SHOWN,
    );
    page.wait_for(
        "its five tasks Running",
        "[...document.querySelectorAll('#service-tasks tr[data-task]')].filter(r => r.querySelector('.badge')?.dataset.state === 'Running').length === 5",
        SHOWN,
    );
    page.screenshot(&out.join("service.png"));

    // Dark, and a phone.
    page.emulate_dark(true);
    page.eval("location.hash = '#/'");
    page.wait_for(
        "the overview",
        "!!document.querySelector('[data-count=Running]')",
        SHOWN,
    );
    page.screenshot(&out.join("overview-dark.png"));
    page.emulate_dark(false);
    page.viewport(390, 844, true);
    page.wait_for(
        "nothing wider than the phone",
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
        SHOWN,
    );
    page.screenshot(&out.join("overview-phone.png"));
    assert_eq!(
        page.eval("window.loadedOnce === true"),
        json!(true),
        "no reload"
    );
    assert_no_errors(&page, false);
    eprintln!("dashboard: screenshots in {}", out.display());
}

/// A TCP relay between the browser and the manager that can cut every connection and refuse
/// new ones, as a network that drops would.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a relay port");
        let port = listener.local_addr().expect("an address").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                if let Ok(mut open) = open2.lock() {
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_read_token_gets_a_read_only_page_and_a_lost_connection_is_shown() {
    let out = out_dir();
    let Some(browser) = Browser::launch(&out) else {
        return;
    };
    let mut cluster = Cluster::start();
    let service = cluster.http.post(
        &cluster.url("/services"),
        json!({"name": "api", "replicas": 2, "task": template()}).to_string(),
    );
    assert_eq!(service.status, 201, "{}", service.body);
    let relay = Relay::start(cluster.port);
    let base = format!("http://127.0.0.1:{}", relay.port);

    // A read token: the page says read-only and offers no action; the API refuses one anyway.
    let page = browser.new_incognito_page();
    page.goto(&format!("{base}/"));
    sign_in(&page, READ);
    page.wait_for(
        "the read-only sign",
        "!document.querySelector('#role').hidden && document.querySelector('#role').textContent.includes('Read-only')",
        SHOWN,
    );
    page.wait_for(
        "the service",
        "!!document.querySelector('[data-service=api]')",
        SHOWN,
    );
    let actions = page
        .eval("[...document.querySelectorAll('main button, main .btn')].map(b => b.textContent)");
    assert_eq!(actions, json!([]), "a read-only overview offers no action");
    page.eval("location.hash = '#/services/api'");
    page.wait_for(
        "the service's page",
        "document.querySelector('main h1')?.textContent === 'api' && document.querySelectorAll('#service-tasks tr[data-task]').length === 2",
        SHOWN,
    );
    assert_eq!(
        page.eval("document.querySelectorAll('main button').length"),
        json!(0)
    );
    page.screenshot(&out.join("read-only.png"));
    let csrf = page.eval("localStorage.getItem('cube-session-key')");
    assert!(csrf.as_str().is_some_and(|k| k.len() == 64), "{csrf}");
    let refused = page.eval(&format!(
        "fetch('/services/api', {{method: 'PATCH', headers: {{'Content-Type': 'application/json', 'X-Cube-CSRF': {}}}, body: '{{\"replicas\": 9}}'}}).then(async r => [r.status, (await r.json()).error])",
        csrf
    ));
    assert_eq!(refused[0], 403, "{refused}");
    assert!(
        refused[1].as_str().unwrap_or("").contains("read token"),
        "{refused}"
    );
    page.eval("location.hash = '#/'");
    page.wait_for(
        "the overview",
        "!!document.querySelector('[data-count=Running]')",
        SHOWN,
    );

    // The network drops: the page says so at once, and keeps what it showed.
    let cut_at = Instant::now();
    relay.cut();
    page.wait_for(
        "the connection shown lost",
        "document.querySelector('#live').dataset.state === 'lost' && !document.querySelector('#banner').hidden",
        SHOWN,
    );
    eprintln!(
        "dashboard: a dropped connection shown after {} ms",
        cut_at.elapsed().as_millis()
    );
    page.screenshot(&out.join("connection-lost.png"));
    // What happens meanwhile is not lost: the stream replays it when it is back.
    let missed = cluster.submit(sleeper("while-away"));
    cluster.wait_state(missed["id"].as_str().expect("an id"), "Running");
    relay.restore();
    live(&page);
    page.wait_for(
        "the banner gone, and the page saying it is back",
        "document.querySelector('#banner').hidden && document.querySelector('#toasts').textContent.includes('Reconnected')",
        SHOWN,
    );
    page.wait_for(
        "the event missed while away",
        "document.querySelector('#feed')?.textContent.includes('while-away')",
        SHOWN,
    );

    // A manager restart ends every session (they live in its memory): the page asks again.
    cluster.restart_manager();
    page.wait_for(
        "the sign-in form, saying why",
        "document.querySelector('#login .error-text')?.textContent.includes('sign in again')",
        SHOWN,
    );
    sign_in(&page, READ);
    page.wait_for(
        "the overview again",
        "!!document.querySelector('[data-count=Running]')",
        SHOWN,
    );

    // Signing out ends the session: the page asks for the token again.
    page.click("#logout");
    page.wait_for(
        "the sign-in form",
        "!!document.querySelector('#login-token')",
        SHOWN,
    );
    let after = page.eval("fetch('/tasks').then(r => r.status)");
    assert_eq!(after, 401);
    assert_no_errors(&page, true);
}
