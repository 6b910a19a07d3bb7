//! `GET /tasks` in pages, with real processes (a manager and a fake-runtime worker): a default
//! page of 500, a larger limit cut to 5000, the next page named in the `Link` header with the
//! same filters, and `cube status` following the pages and filtering.

mod common;

use std::process::Command;

use common::{Http, eventually, manager_process, unique, worker_process_with};
use serde_json::{Value, json};

const TASKS: usize = 1203;

fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .expect("an array")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_string())
        .collect()
}

#[test]
fn listings_come_in_pages_that_the_link_header_chains_and_the_cli_follows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("pages");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    let manager = manager_process(dir.path(), "manager", &["--workers", &worker.addr]);
    let http = Http::new();
    let base = manager.url();
    let mut submitted: Vec<String> = (0..TASKS)
        .map(|_| {
            let r = http.post(
                &format!("{base}/tasks"),
                json!({"task": {"image": "cube-sim/task", "cmd": ["sleep", "600"]}}).to_string(),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()["id"].as_str().expect("an id").to_string()
        })
        .collect();
    submitted.sort();

    // Page by page, following the Link header: 500, 500, 203, in id order, then no link.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut next = Some("/tasks".to_string());
    while let Some(path) = next.take() {
        let page = http.get(&format!("{base}{path}"));
        assert_eq!(page.status, 200, "{}", page.body);
        let page_ids = ids(&page.json());
        sizes.push(page_ids.len());
        seen.extend(page_ids);
        next = page.link.map(|link| {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            link.split(['<', '>']).nth(1).expect("a target").to_string()
        });
    }
    assert_eq!(sizes, vec![500, 500, TASKS - 1000]);
    assert_eq!(seen, submitted);

    // A limit above the maximum is cut, never refused; here one page holds everything.
    let all = http.get(&format!("{base}/tasks?limit=99999"));
    assert_eq!(all.status, 200);
    assert_eq!(ids(&all.json()).len(), TASKS);
    assert_eq!(all.link, None);
    // The link keeps the filters.
    eventually("every task Running", || {
        let running = http.get(&format!("{base}/tasks?state=Running&limit=5000"));
        (ids(&running.json()).len() == TASKS).then_some(())
    });
    let filtered = http.get(&format!("{base}/tasks?state=running&limit=1000"));
    let link = filtered.link.expect("a next page");
    assert!(
        link.contains("state=Running") && link.contains("limit=1000"),
        "{link}"
    );

    // The CLI follows the pages, and filters.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(["--manager", &base])
            .args(args)
            .env_remove("CUBE_TOKEN")
            .output()
            .expect("run cube");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rows = |text: &str| text.lines().filter(|l| l.contains("Running")).count();
    assert_eq!(rows(&cli(&["status"])), TASKS);
    assert_eq!(rows(&cli(&["status", "--worker", &name])), TASKS);
    assert_eq!(rows(&cli(&["status", "--worker", "nobody"])), 0);
    assert_eq!(rows(&cli(&["status", "--state", "Pending"])), 0);
    let json: Value =
        serde_json::from_str(&cli(&["status", "--state", "running", "-o", "json"])).expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(TASKS));
}
