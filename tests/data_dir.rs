//! One process per data directory, with real processes: a second manager or worker on a
//! directory in use refuses to start and names the directory and the holder; a crash (SIGKILL)
//! frees it.

mod common;

use common::{manager_process, run_cube, worker_process_with};

#[test]
fn a_second_manager_on_a_directory_in_use_refuses_to_start_until_the_first_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = manager_process(dir.path(), "manager", &[]);
    let data = dir.path().join("manager");
    let data = data.to_str().expect("utf-8");
    let (ok, err) = run_cube(&["manager", "--port", "0", "--data-dir", data], &[]);
    assert!(!ok, "a second manager started on {data}");
    let pid = first.pid().expect("running").to_string();
    assert!(
        err.contains(data) && err.contains(&format!("pid {pid}")) && err.contains("--data-dir"),
        "{err}"
    );
    // A crash lets go of the directory: the next manager starts there.
    first.kill();
    let _second = manager_process(dir.path(), "manager", &[]);
}

#[test]
fn a_second_worker_on_a_directory_in_use_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = worker_process_with(dir.path(), "w1", 0, &["--runtime", "fake"]);
    let data = dir.path().join("w1");
    let data = data.to_str().expect("utf-8");
    let (ok, err) = run_cube(
        &[
            "worker",
            "--port",
            "0",
            "--name",
            "w2",
            "--runtime",
            "fake",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(!ok, "a second worker started on {data}");
    let pid = first.pid().expect("running").to_string();
    assert!(
        err.contains(data) && err.contains(&format!("pid {pid}")),
        "{err}"
    );
}
