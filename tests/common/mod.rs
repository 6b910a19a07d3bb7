//! What the integration tests share: real `cube` processes on free ports, a test image built from
//! Debian's static busybox, a small HTTP client, and guards that remove every process and
//! container a test made, also when it fails.

#![allow(dead_code)] // each test binary uses a different part of this module

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
    pub addr: String,
    pub log: PathBuf,
}

impl CubeProcess {
    /// Start `cube <args>` and wait until it logs the address it listens on.
    pub fn start(args: &[&str], log_dir: &Path, label: &str) -> CubeProcess {
        let log = log_dir.join(format!("{label}-{}.log", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(args)
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
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
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
            addr,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

/// Removes every container carrying one of these worker labels, when dropped.
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
    }
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
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
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
        Http { agent }
    }

    fn reply(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut res = res.expect("the server answers");
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = res
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .unwrap_or_default();
        Reply {
            status,
            body,
            location,
        }
    }

    pub fn get(&self, url: &str) -> Reply {
        Http::reply(self.agent.get(url).call())
    }

    pub fn delete(&self, url: &str) -> Reply {
        Http::reply(self.agent.delete(url).call())
    }

    pub fn post(&self, url: &str, body: impl AsRef<[u8]>) -> Reply {
        Http::reply(
            self.agent
                .post(url)
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
