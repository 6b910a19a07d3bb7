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

#[test]
fn listings_go_newest_first_and_search_names_ids_and_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique("newest");
    let worker = worker_process_with(dir.path(), &name, 0, &["--runtime", "fake"]);
    // Finished tasks are collected a second after they end: a page's cursor must outlive them.
    let manager = manager_process(
        dir.path(),
        "manager",
        &["--workers", &worker.addr, "--retention", "1s"],
    );
    let http = Http::new();
    let base = manager.url();
    let submitted: Vec<Value> = (0..25)
        .map(|i| {
            let image = if i % 5 == 0 {
                "cube-sim/task:Other"
            } else {
                "cube-sim/task"
            };
            let r = http.post(
                &format!("{base}/tasks"),
                json!({"name": format!("job-{i:02}"), "image": image, "cmd": ["sleep", "600"]})
                    .to_string(),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()
        })
        .collect();
    let names = |page: &Value| -> Vec<String> {
        page.as_array()
            .expect("an array")
            .iter()
            .map(|t| t["name"].as_str().expect("a name").to_string())
            .collect()
    };

    // Newest first, ten at a time, the Link keeping the order.
    let first = http.get(&format!("{base}/tasks?order=newest&limit=10"));
    assert_eq!(first.status, 200, "{}", first.body);
    let expected: Vec<String> = (15..25).rev().map(|i| format!("job-{i:02}")).collect();
    assert_eq!(names(&first.json()), expected);
    let link = first.link.clone().expect("a next page");
    assert!(
        link.contains("order=newest") && link.contains("before="),
        "{link}"
    );
    let target = link.split(['<', '>']).nth(1).expect("a target").to_string();
    // The task the first page ended with is stopped and collected before the next page is read:
    // the cursor is its submission number, not its record, so the next page is still right.
    let last = first.json()[9]["id"].as_str().expect("an id").to_string();
    assert_eq!(http.delete(&format!("{base}/tasks/{last}")).status, 202);
    eventually("the task collected", || {
        let listed = http.get(&format!("{base}/tasks?limit=5000")).json();
        (!ids(&listed).contains(&last)).then_some(())
    });
    let second = http.get(&format!("{base}{target}"));
    assert_eq!(second.status, 200, "{}", second.body);
    let expected: Vec<String> = (5..15).rev().map(|i| format!("job-{i:02}")).collect();
    assert_eq!(names(&second.json()), expected);

    // A search matches the name, the id or the image, in any case, with the other filters.
    let by_name = http.get(&format!("{base}/tasks?order=newest&q=JOB-1"));
    // (job-15 was collected above.)
    let expected: Vec<String> = (10..20)
        .rev()
        .filter(|i| *i != 15)
        .map(|i| format!("job-{i:02}"))
        .collect();
    assert_eq!(names(&by_name.json()), expected);
    let by_image = http.get(&format!("{base}/tasks?q=TASK:other"));
    assert_eq!(
        ids(&by_image.json()).len(),
        4,
        "jobs 0, 5, 10 and 20 (15 was collected)"
    );
    let id = submitted[7]["id"].as_str().expect("an id");
    let by_id = http.get(&format!("{base}/tasks?q={}", &id[..13]));
    assert_eq!(ids(&by_id.json()), vec![id.to_string()]);
    let none = http.get(&format!("{base}/tasks?q=nothing-is-called-this"));
    assert_eq!((none.status, ids(&none.json()).len()), (200, 0));
    let paged = http.get(&format!("{base}/tasks?q=job&limit=3"));
    assert!(paged.link.expect("a next page").contains("q=job"));

    // Refusals name the field.
    let bad = http.get(&format!("{base}/tasks?order=oldest"));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap_or("").contains("order"));
    let long = http.get(&format!("{base}/tasks?q={}", "x".repeat(300)));
    assert_eq!(long.status, 400);
    let gone = http.get(&format!("{base}/tasks?order=newest&after={last}"));
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(
        gone.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("from the start")
    );
    for (query, says) in [
        ("before=5".to_string(), "order=newest"),
        (format!("order=newest&before=5&after={last}"), "both"),
        ("order=newest&before=soon".to_string(), "before"),
    ] {
        let r = http.get(&format!("{base}/tasks?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap_or("").contains(says),
            "{query}: {}",
            r.body
        );
    }
}
