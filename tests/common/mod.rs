//! What the integration tests share: real `cube` processes on free ports, a test image built from
//! Debian's static busybox, a small HTTP client, a headless browser ([`browser`]), and guards
//! that remove every process and container a test made, also when it fails.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The image every Docker test runs; built by [`test_image`].
pub const IMAGE: &str = "cube-test/busybox:latest";
/// Generous bound for anything to happen; tests wait, they never assert a speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Build the test image once per test binary, with the same code `cube up` uses for its demo
/// image: `FROM scratch`, Debian's static busybox, its applets installed as links (`sh`,
/// `sleep`, `httpd`, …). Nothing is pulled.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "the Docker tests need Debian's static busybox at /bin/busybox: apt-get install busybox-static"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let docker = cube::runtime::docker::connect()
                .await
                .expect("Docker answers");
            docker
                .build_busybox_image(IMAGE, busybox)
                .await
                .expect("the test image builds");
        });
    });
    IMAGE
}

/// A task that runs until it is stopped, and stops at once (the common case of these tests).
pub fn sleeper() -> Value {
    serde_json::json!({"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1})
}

/// The same, with a client-chosen id, as a POST /tasks body.
pub fn sleeper_with_id(id: &str) -> Value {
    let mut task = sleeper();
    task["id"] = Value::String(id.to_string());
    serde_json::json!({ "task": task })
}

/// A `cube worker` process named `name` with its store in `dir/name`, on `port` (0: a free one).
/// Started again with the same arguments, it is the same worker after a restart.
pub fn worker_process(dir: &Path, name: &str, port: u16) -> CubeProcess {
    worker_process_with(dir, name, port, &[])
}

/// The same, with more flags.
pub fn worker_process_with(dir: &Path, name: &str, port: u16, extra: &[&str]) -> CubeProcess {
    let data = dir.join(name);
    let port = port.to_string();
    let mut args = vec![
        "worker",
        "--port",
        &port,
        "--name",
        name,
        "--data-dir",
        data.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    CubeProcess::start(&args, dir, name)
}

/// A `cube manager` on a free port with its store in `dir/data`, and more flags (`--workers`,
/// tokens, TLS).
pub fn manager_process(dir: &Path, data: &str, extra: &[&str]) -> CubeProcess {
    let data = dir.join(data);
    let mut args = vec![
        "manager",
        "--port",
        "0",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    CubeProcess::start(&args, dir, "manager")
}

/// Run `cube <args>` to its end with `env` (and none of the caller's tokens): whether it
/// succeeded, and everything it printed (stdout, then stderr).
pub fn run_cube(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(args)
        .env_remove("CUBE_TOKEN")
        .env_remove("CUBE_CLUSTER_TOKEN")
        .env_remove("CUBE_CA_CERT")
        .envs(env.iter().copied())
        .output()
        .expect("run cube");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A loopback port nothing listens on now (for `cube up`, whose port must be known before).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Submit a [`sleeper`] to the manager at `manager` and wait until it is Running; the task.
pub fn run_sleeper(http: &Http, manager: &str) -> Value {
    let created = http.post(
        &format!("{manager}/tasks"),
        serde_json::json!({ "task": sleeper() }).to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("an id").to_string();
    wait_state(http, &format!("{manager}/tasks/{id}"), "Running")
}

/// A unique name for this test's worker(s), so its containers can be told apart and removed.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A `cube` child process; SIGKILLed when dropped. Its log goes to a file kept for failures.
pub struct CubeProcess {
    child: Option<Child>,
    scheme: String,
    pub addr: String,
    pub log: PathBuf,
}

impl CubeProcess {
    /// Start `cube <args>` and wait until it logs the address it listens on.
    pub fn start(args: &[&str], log_dir: &Path, label: &str) -> CubeProcess {
        CubeProcess::start_with_env(args, &[], log_dir, label)
    }

    /// The same, with more environment (the tokens of the caller's environment are not passed
    /// on, so a test sees only the ones it sets).
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
        label: &str,
    ) -> CubeProcess {
        let log = log_dir.join(format!("{label}-{}.log", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(args)
            .env_remove("CUBE_TOKEN")
            .env_remove("CUBE_CLUSTER_TOKEN")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,actix_server=warn,actix_web=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cube");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some((scheme, rest)) = rest.split_once("://")
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send((scheme.to_string(), addr));
                }
            }
        });
        let (scheme, addr) = match rx.recv_timeout(PATIENCE) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "cube {args:?} did not start listening; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        CubeProcess {
            child: Some(child),
            scheme,
            addr,
            log,
        }
    }

    /// `http://host:port`, or `https://` when it serves TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CubeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.addr, self.log_text());
        }
    }
}

/// Removes every container carrying one of these worker labels, when dropped, then the named
/// volumes they created (labelled `cube.volume` and `cube.worker`; a volume is removable once
/// no container uses it).
pub struct Containers {
    workers: Vec<String>,
}

impl Containers {
    pub fn of(workers: &[&str]) -> Containers {
        Containers {
            workers: workers.iter().map(|w| w.to_string()).collect(),
        }
    }

    pub fn add(&mut self, worker: &str) {
        self.workers.push(worker.to_string());
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        // Twice: a create the engine was still carrying out for a killed worker lands late.
        for pass in 0..2 {
            if pass > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            for w in &self.workers {
                for id in containers(w, true) {
                    let _ = Command::new("docker")
                        .args(["rm", "-f", "-v", &id])
                        .output();
                }
            }
        }
        for w in &self.workers {
            for name in volumes(w) {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", &name])
                    .output();
            }
        }
    }
}

/// Names of the named volumes the worker `worker` created (labelled `cube.volume` and
/// `cube.worker=<worker>`).
pub fn volumes(worker: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=cube.volume",
            "--filter",
        ])
        .arg(format!("label=cube.worker={worker}"))
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Ids of the containers labelled `cube.worker=<worker>` (running only unless `all`).
pub fn containers(worker: &str, all: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=cube.worker={worker}"));
    if all {
        cmd.arg("-a");
    }
    let out = cmd.output().expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// `docker inspect` of one container, or None when it does not exist.
pub fn inspect(id: &str) -> Option<Value> {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

/// A blocking HTTP client that returns every status instead of failing on 4xx/5xx.
pub struct Http {
    agent: ureq::Agent,
    token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    /// The `Link` header (the next page of a listing).
    pub link: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Http { agent, token: None }
    }

    /// A client of HTTPS servers whose certificates `ca` signed, presenting the client
    /// certificate `identity` (certificate, key) when given, and `token` when given.
    pub fn tls(ca: &Path, identity: Option<(&Path, &Path)>, token: Option<&str>) -> Http {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let pem = |p: &Path| std::fs::read(p).expect("a PEM file");
        let ca = Certificate::from_pem(&pem(ca)).expect("a CA certificate");
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
        if let Some((cert, key)) = identity {
            let cert = Certificate::from_pem(&pem(cert)).expect("a certificate");
            let key = PrivateKey::from_pem(&pem(key)).expect("a key");
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tls.build())
            .build()
            .into();
        Http {
            agent,
            token: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// A client that presents `token` as `Authorization: Bearer` on every request.
    pub fn with_token(token: &str) -> Http {
        Http {
            token: Some(format!("Bearer {token}")),
            ..Http::new()
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", t),
            None => req,
        }
    }

    fn reply(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        Http::try_reply(res).expect("the server answers")
    }

    /// The reply, or the error of a request that got none (refused, TLS handshake failed).
    fn try_reply(
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ureq::Error> {
        let mut res = res?;
        let status = res.status().as_u16();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (location, link) = (header("location"), header("link"));
        let body = res
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .unwrap_or_default();
        Ok(Reply {
            status,
            body,
            location,
            link,
        })
    }

    /// GET that tells a request with no answer (refused, a failed TLS handshake) from a reply.
    pub fn try_get(&self, url: &str) -> Result<Reply, ureq::Error> {
        Http::try_reply(self.auth(self.agent.get(url)).call())
    }

    pub fn get(&self, url: &str) -> Reply {
        Http::reply(self.auth(self.agent.get(url)).call())
    }

    pub fn delete(&self, url: &str) -> Reply {
        Http::reply(self.auth(self.agent.delete(url)).call())
    }

    /// POST that tolerates a server that is not (or no longer) there.
    pub fn try_post(&self, url: &str, body: impl AsRef<[u8]>) -> Option<Reply> {
        let res = self
            .auth(self.agent.post(url))
            .header("Content-Type", "application/json")
            .send(body.as_ref())
            .ok()?;
        Some(Http::reply(Ok(res)))
    }

    pub fn patch(&self, url: &str, body: impl AsRef<[u8]>) -> Reply {
        Http::reply(
            self.auth(self.agent.patch(url))
                .header("Content-Type", "application/json")
                .send(body.as_ref()),
        )
    }

    pub fn put(&self, url: &str, body: impl AsRef<[u8]>) -> Reply {
        Http::reply(
            self.auth(self.agent.put(url))
                .header("Content-Type", "application/json")
                .send(body.as_ref()),
        )
    }

    pub fn post(&self, url: &str, body: impl AsRef<[u8]>) -> Reply {
        Http::reply(
            self.auth(self.agent.post(url))
                .header("Content-Type", "application/json")
                .send(body.as_ref()),
        )
    }
}

/// Poll `f` until it returns Some, for at most [`PATIENCE`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {PATIENCE:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the task at `url` is in `state`; returns it.
pub fn wait_state(http: &Http, url: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = http.get(url);
        if r.status == 200 {
            last = r.json();
            if last["state"] == state {
                return last;
            }
        }
        if Instant::now() > deadline {
            panic!("{url} never became {state}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A manager and its worker processes, each on a free port, with data in a temp dir. Workers
/// can be killed and restarted on the same port and data; everything is cleaned up on drop.
pub struct Cluster {
    pub manager: CubeProcess,
    pub workers: Vec<Option<CubeProcess>>,
    pub names: Vec<String>,
    pub dir: tempfile::TempDir,
    worker_ports: Vec<u16>,
    manager_args: Vec<String>,
    _containers: Containers,
    pub http: Http,
}

impl Cluster {
    /// `n` Docker workers and a manager started with `manager_args` (e.g. `--scheduler`).
    pub fn start(n: usize, manager_args: &[&str]) -> Cluster {
        test_image();
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = (1..=n).map(|i| unique(&format!("c{i}"))).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let containers = Containers::of(&refs);
        let workers: Vec<Option<CubeProcess>> = names
            .iter()
            .map(|name| Some(worker_process(dir.path(), name, 0)))
            .collect();
        let worker_ports = workers.iter().flatten().map(CubeProcess::port).collect();
        let manager_args: Vec<String> = manager_args.iter().map(|a| a.to_string()).collect();
        let manager = Cluster::manager_process(dir.path(), &workers, &manager_args, 0);
        let cluster = Cluster {
            manager,
            workers,
            names,
            dir,
            worker_ports,
            manager_args,
            _containers: containers,
            http: Http::new(),
        };
        cluster.wait_ready(n);
        cluster
    }

    fn manager_process(
        dir: &Path,
        workers: &[Option<CubeProcess>],
        extra: &[String],
        port: u16,
    ) -> CubeProcess {
        let addrs: Vec<String> = workers.iter().flatten().map(|w| w.addr.clone()).collect();
        let data = dir.join("manager");
        let mut args: Vec<String> = vec![
            "manager".into(),
            "--port".into(),
            port.to_string(),
            "--workers".into(),
            addrs.join(","),
            "--data-dir".into(),
            data.to_str().expect("utf-8").into(),
        ];
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        CubeProcess::start(&args, dir, "manager")
    }

    /// Wait until `n` workers are Ready with a known capacity.
    pub fn wait_ready(&self, n: usize) {
        let url = self.url("/nodes");
        eventually(&format!("{n} workers Ready in /nodes"), || {
            let nodes = self.http.get(&url).json();
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "Ready" && n["cpus"].as_f64().unwrap_or(0.0) > 0.0)
                .count();
            (ready == n).then_some(())
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.manager.url())
    }

    pub fn submit(&self, task: Value) -> Value {
        let r = self.http.post(
            &self.url("/tasks"),
            serde_json::json!({ "task": task }).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let t = r.json();
        assert_eq!(
            r.location,
            Some(format!("/tasks/{}", t["id"].as_str().unwrap_or("")))
        );
        t
    }

    /// Submit `n` sleepers and wait until each is Running; returns them as they run.
    pub fn running_sleepers(&self, n: usize) -> Vec<Value> {
        let tasks: Vec<Value> = (0..n).map(|_| self.submit(sleeper())).collect();
        tasks
            .iter()
            .map(|t| wait_state(&self.http, &self.task_url(t), "Running"))
            .collect()
    }

    pub fn task_url(&self, t: &Value) -> String {
        self.url(&format!("/tasks/{}", t["id"].as_str().expect("an id")))
    }

    pub fn task(&self, t: &Value) -> Value {
        self.http.get(&self.task_url(t)).json()
    }

    /// SIGKILL the manager and start it again on the same port and store.
    pub fn restart_manager(&mut self) {
        let port = self.manager.port();
        self.manager.kill();
        self.manager =
            Cluster::manager_process(self.dir.path(), &self.workers, &self.manager_args, port);
    }

    /// SIGKILL worker `i` (its containers keep running, as on a crashed node).
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            w.kill();
        }
    }

    /// Start worker `i` again with its name, port and store.
    pub fn restart_worker(&mut self, i: usize) {
        self.kill_worker(i);
        self.workers[i] = Some(worker_process(
            self.dir.path(),
            &self.names[i],
            self.worker_ports[i],
        ));
    }

    /// Index of the worker called `name`.
    pub fn worker_index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no worker {name}"))
    }

    /// Running containers of task `id` across every worker of the cluster.
    pub fn running_copies(&self, id: &str) -> usize {
        self.names
            .iter()
            .flat_map(|n| containers(n, false))
            .filter(|c| inspect(c).is_some_and(|i| i["Config"]["Labels"]["cube.task.id"] == id))
            .count()
    }

    /// Run the CLI against this manager.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(args)
            .env("CUBE_MANAGER", self.manager.url())
            .env_remove("RUST_LOG")
            .output()
            .expect("run cube")
    }
}
