//! HTTPS on both APIs and mutual TLS between the manager and its workers, with real processes,
//! real Docker and certificates made as `cube up --tls` makes them.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Containers, CubeProcess, Http, eventually, free_port, run_sleeper, test_image, unique,
};
use cube::tls::{LocalPki, TlsFiles};
use serde_json::Value;

const WRITE: &str = "write-token-0123456789abcdef";
const CLUSTER: &str = "cluster-token-0123456789abcdef";
const HOSTS: &[&str] = &["127.0.0.1", "localhost"];

fn pki(dir: &Path, names: &[&str]) -> LocalPki {
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    LocalPki::generate(dir, names, &hosts).expect("certificates")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

fn tls_args(files: &TlsFiles) -> Vec<String> {
    let mut args = vec![
        "--tls-cert".to_string(),
        p(&files.cert).to_string(),
        "--tls-key".to_string(),
        p(&files.key).to_string(),
    ];
    if let Some(ca) = &files.ca {
        args.extend(["--tls-ca".to_string(), p(ca).to_string()]);
    }
    args
}

/// A manager over HTTPS that calls its workers with `files` (a client certificate when it has
/// one), with a write token and the cluster token.
fn manager(dir: &Path, workers: &str, tls: &[String]) -> CubeProcess {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("write {WRITE}\n")).expect("write tokens");
    let data = dir.join(format!("manager-{}", unique("m")));
    let mut args: Vec<&str> = vec![
        "manager",
        "--port",
        "0",
        "--data-dir",
        p(&data),
        "--token-file",
        p(&tokens),
        "--workers",
        workers,
    ];
    args.extend(tls.iter().map(String::as_str));
    CubeProcess::start_with_env(&args, &[("CUBE_CLUSTER_TOKEN", CLUSTER)], dir, "manager")
}

#[test]
fn a_manager_and_a_worker_talk_over_mutual_tls_and_nobody_else_gets_in() {
    test_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = pki(&dir.path().join("tls"), &["manager", "worker"]);
    let strangers = pki(&dir.path().join("other"), &["manager"]);
    let name = unique("tls");
    let _containers = Containers::of(&[&name]);

    let data = dir.path().join(&name);
    let mut args: Vec<String> = [
        "worker",
        "--port",
        "0",
        "--name",
        &name,
        "--data-dir",
        p(&data),
    ]
    .map(String::from)
    .to_vec();
    args.extend(tls_args(&certs.files("worker")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker =
        CubeProcess::start_with_env(&args, &[("CUBE_CLUSTER_TOKEN", CLUSTER)], dir.path(), &name);
    assert!(worker.url().starts_with("https://"), "{}", worker.url());
    let tasks = format!("{}/tasks", worker.url());

    // Without a client certificate, or with one another CA signed, the handshake fails.
    assert!(
        Http::tls(&certs.ca, None, Some(CLUSTER))
            .try_get(&tasks)
            .is_err()
    );
    let stranger = strangers.files("manager");
    let with_strange_cert = Http::tls(
        &certs.ca,
        Some((&stranger.cert, &stranger.key)),
        Some(CLUSTER),
    );
    assert!(with_strange_cert.try_get(&tasks).is_err());
    // Nor does plain HTTP get an answer.
    let plain = format!("http://{}/tasks", worker.addr);
    assert!(
        Http::new()
            .try_get(&plain)
            .map_or(true, |r| r.status != 200)
    );
    // The cluster's certificate gets through TLS; the token is still needed.
    let ours = certs.files("manager");
    let with_cert = |token| Http::tls(&certs.ca, Some((&ours.cert, &ours.key)), token);
    assert_eq!(with_cert(None).get(&tasks).status, 401);
    assert_eq!(with_cert(Some(CLUSTER)).get(&tasks).status, 200);

    // The manager calls it over mutual TLS and runs a task there; its own API is HTTPS.
    let manager = manager(dir.path(), &worker.addr, &tls_args(&certs.files("manager")));
    assert!(manager.url().starts_with("https://"));
    let running = run_sleeper(&Http::tls(&certs.ca, None, Some(WRITE)), &manager.url());
    assert_eq!(running["worker"], Value::String(name.clone()));

    // The CLI trusts the CA it is given, and says what is missing when it has none.
    let home = tempfile::tempdir().expect("temp dir");
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(["--manager", &manager.url(), "--token", WRITE])
            .args(extra)
            .arg("status")
            .env("HOME", home.path())
            .env_remove("CUBE_CA_CERT")
            .output()
            .expect("run cube")
    };
    let out = cli(&["--ca-cert", p(&certs.ca)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Running"));
    let out = cli(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-cert"));

    // A manager that presents no client certificate is refused by the worker.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let ca_only = vec!["--tls-ca".to_string(), p(&certs.ca).to_string()];
    let refused = self::manager(other_dir.path(), &worker.addr, &ca_only);
    let nodes_url = format!("{}/nodes", refused.url());
    let nodes = eventually("the refused manager to give the reason", || {
        let nodes = Http::with_token(WRITE).get(&nodes_url).json();
        nodes[0]["reason"].is_string().then_some(nodes)
    });
    assert_ne!(nodes[0]["status"], "Ready", "{nodes}");
}

#[test]
fn cube_up_tls_serves_https_and_the_cli_trusts_it_with_no_flag() {
    let home = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let data = home.path().join("data");
    let up = CubeProcess::start_with_env(
        &[
            "up",
            "--tls",
            "--runtime",
            "fake",
            "--workers",
            "1",
            "--port",
            &port,
            "--data-dir",
            p(&data),
        ],
        &[("HOME", p(home.path()))],
        home.path(),
        "up",
    );
    assert!(up.url().starts_with("https://"), "{}", up.url());
    let out = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(["--manager", &format!("http://127.0.0.1:{port}"), "node"])
        .env("HOME", home.path())
        .env_remove("CUBE_TOKEN")
        .env_remove("CUBE_CA_CERT")
        .output()
        .expect("run cube");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("w1"));
}
