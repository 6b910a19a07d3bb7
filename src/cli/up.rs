//! `cube up`: a manager and N workers as one process tree, for a local cluster.
//!
//! Docker workers run as child processes on their own ports (each its own node, as in
//! production); fake workers run in-process. The children hold a pipe to this process on their
//! standard input and exit when it closes, so they never outlive `cube up`, not even after a
//! SIGKILL of it. Containers are left running on exit, to be adopted by the next `cube up` on
//! the same data directory, as after any crash.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use log::{info, warn};
use tokio::process::{Child, Command};

use super::CliError;
use crate::actors::policy::PolicyKind;
use crate::http::auth::{self, Role};
use crate::runtime::fake::FakeRuntime;
use crate::server::{
    DEFAULT_FAKE_CAPACITY, DEFAULT_HEALTH_INTERVAL, DEFAULT_NODE_TIMEOUT, ManagerConfig,
    RuntimeKind, start_manager,
};
use crate::tls::{LocalPki, TlsFiles};

/// The image the README's first example runs; built here from Debian's static busybox, since a
/// fresh machine may have no registry to pull from.
pub const DEMO_IMAGE: &str = "cube-demo/busybox:latest";
/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// Workers `cube up` starts unless told otherwise.
pub const DEFAULT_WORKERS: usize = 3;
/// Where `cube up` keeps its stores unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "cube-data/up";
/// How long children get to exit after their pipe closes.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many workers.
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    pub workers: usize,
    /// How the workers run containers.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
    /// Where the manager and the workers keep their stores.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address the manager and workers listen on.
    #[arg(long, default_value = crate::DEFAULT_HOST)]
    pub host: String,
    /// The manager's port; workers take the ports after it.
    #[arg(long, default_value_t = crate::DEFAULT_MANAGER_PORT)]
    pub port: u16,
    /// Placement policy: epvm, roundrobin, binpack or spread.
    #[arg(long, env = "CUBE_SCHEDULER", default_value_t = PolicyKind::default())]
    pub scheduler: PolicyKind,
    /// Seconds between health checks of a task.
    #[arg(long, default_value_t = DEFAULT_HEALTH_INTERVAL.as_secs_f64())]
    pub health_interval: f64,
    /// Seconds a worker may be silent before it is Down.
    #[arg(long, default_value_t = DEFAULT_NODE_TIMEOUT.as_secs_f64())]
    pub node_timeout: f64,
    /// Serve both APIs without tokens. By default `cube up` makes an API token (kept in
    /// `~/.config/cube/`, where the CLI finds it) and a cluster token for its workers.
    #[arg(long)]
    pub insecure: bool,
    /// Serve both APIs over HTTPS, with mutual TLS between the manager and its workers: a CA
    /// and certificates for this cluster are made in <data-dir>/tls, and the CA is saved where
    /// the CLI finds it (~/.config/cube/<host>-<port>.ca.pem).
    #[arg(long)]
    pub tls: bool,
    /// Let the workers' tasks mount host paths under this directory (repeatable), as
    /// `cube worker --allow-host-path`. None by default.
    #[arg(long, value_name = "PATH", value_parser = super::parse_allowed_host_path)]
    pub allow_host_path: Vec<String>,
}

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    if args.workers == 0 {
        return Err(CliError::Usage("--workers must be at least 1".into()));
    }
    let mut config = ManagerConfig::new(args.data_dir.join("manager"));
    config.host = args.host.clone();
    config.port = args.port;
    config.scheduler = args.scheduler;
    config.health_interval =
        super::seconds("health interval", args.health_interval).map_err(CliError::Usage)?;
    config.node_timeout =
        super::seconds("node timeout", args.node_timeout).map_err(CliError::Usage)?;
    config.insecure = args.insecure;
    let manager_url = format!("http://{}:{}", args.host, args.port);
    let token_file = if args.insecure {
        None
    } else {
        let (token, path) = api_token(&manager_url)?;
        config.tokens.add(&token, Role::Write)?;
        config.cluster_token = Some(auth::generate());
        Some(path)
    };

    let pki = if args.tls {
        let names: Vec<String> = std::iter::once("manager".to_string())
            .chain((1..=args.workers).map(|i| format!("w{i}")))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut hosts = vec![args.host.clone()];
        for h in ["127.0.0.1", "localhost"] {
            if !hosts.iter().any(|x| x == h) {
                hosts.push(h.to_string());
            }
        }
        let pki = LocalPki::generate(&args.data_dir.join("tls"), &names, &hosts)?;
        let files = pki.files("manager");
        config.tls_cert = Some(files.cert);
        config.tls_key = Some(files.key);
        config.tls_ca = Some(pki.ca.clone());
        let saved = super::ca_path(&manager_url)
            .ok_or("HOME is not set, so there is nowhere to keep the cluster's CA")?;
        let ca = std::fs::read_to_string(&pki.ca)
            .map_err(|e| format!("cannot read {}: {e}", pki.ca.display()))?;
        crate::fsutil::write_private(&saved, &ca)
            .map_err(|e| format!("cannot save the CA to {}: {e}", saved.display()))?;
        Some((pki, saved))
    } else {
        // A CA left by an earlier `cube up --tls` here would send the CLI to HTTPS.
        if let Some(stale) = super::ca_path(&manager_url) {
            let _ = std::fs::remove_file(stale);
        }
        None
    };
    let mut children = Vec::new();
    let mut worker_lines = Vec::new();
    match args.runtime {
        RuntimeKind::Docker => {
            ensure_demo_image().await?;
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the cube binary to start workers: {e}"))?;
            for i in 1..=args.workers {
                let port = args
                    .port
                    .checked_add(i as u16)
                    .ok_or("the manager's port leaves no room for worker ports")?;
                let name = format!("w{i}");
                let tls = pki.as_ref().map(|(pki, _)| pki.files(&name));
                let child = spawn_worker(
                    &exe,
                    &args,
                    &name,
                    port,
                    config.cluster_token.as_deref(),
                    tls.as_ref(),
                )?;
                children.push(child);
                let address = format!("{}:{port}", args.host);
                let scheme = if tls.is_some() { "https" } else { "http" };
                worker_lines.push(format!("  worker     {name}  {scheme}://{address}"));
                config.workers.push(address);
            }
        }
        RuntimeKind::Fake => {}
    }
    let handle = start_manager(config).await.map_err(|e| e.to_string())?;
    if args.runtime == RuntimeKind::Fake {
        let runtime = std::sync::Arc::new(FakeRuntime::new(Duration::ZERO));
        for i in 1..=args.workers {
            let name = format!("w{i}");
            runtime.allow_host_paths(&name, args.allow_host_path.clone());
            handle
                .actors
                .add_local_worker(&name, runtime.clone(), DEFAULT_FAKE_CAPACITY)
                .map_err(|e| e.to_string())?;
            worker_lines.push(format!("  worker     {name}  (in-process, fake runtime)"));
        }
    }
    print_banner(
        &args,
        &handle.addr.to_string(),
        &worker_lines,
        token_file.as_deref(),
        pki.as_ref().map(|(_, saved)| saved.as_path()),
    );

    // A signal to this process alone (systemd, `kill`) stops the manager at once, cutting its
    // long-polls; the workers are told next, all together, by closing their pipes.
    let server = handle.server_handle();
    actix_web::rt::spawn(async move {
        let name = super::shutdown_signal().await;
        eprintln!("cube up: {name}, stopping the manager and the workers");
        server.stop(false).await;
    });
    let served = handle.wait().await;
    let workers = children.len();
    info!("stopping the workers; their containers keep running");
    stop_children(children).await;
    served.map_err(|e| e.to_string())?;
    eprintln!(
        "cube up stopped (the manager and {workers} worker process(es)). Containers are left running; `cube up` on the same --data-dir adopts them."
    );
    Ok(())
}

/// The API token for the manager at `url`: the one a previous `cube up` saved, so shells that
/// already use it keep working, or a new one saved (owner-only) where the CLI looks.
fn api_token(url: &str) -> Result<(String, PathBuf), String> {
    let path = super::token_path(url).ok_or(
        "HOME is not set, so there is nowhere to keep the API token; set HOME or use --insecure",
    )?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim();
        if token.len() >= auth::MIN_TOKEN_LEN && !token.chars().any(char::is_whitespace) {
            return Ok((token.to_string(), path));
        }
    }
    let token = auth::generate();
    crate::fsutil::write_private(&path, &format!("{token}\n"))
        .map_err(|e| format!("cannot save the API token to {}: {e}", path.display()))?;
    Ok((token, path))
}

fn spawn_worker(
    exe: &Path,
    args: &UpArgs,
    name: &str,
    port: u16,
    cluster_token: Option<&str>,
    tls: Option<&TlsFiles>,
) -> Result<Child, String> {
    let data_dir = args.data_dir.join(name);
    let mut command = Command::new(exe);
    if let Some(token) = cluster_token {
        // In the environment, not the arguments: `ps` shows arguments to every user.
        command.env("CUBE_CLUSTER_TOKEN", token);
    } else {
        command.env_remove("CUBE_CLUSTER_TOKEN");
    }
    command.arg("worker");
    if cluster_token.is_none() {
        command.arg("--insecure");
    }
    if let Some(tls) = tls {
        command.arg("--tls-cert").arg(&tls.cert);
        command.arg("--tls-key").arg(&tls.key);
        if let Some(ca) = &tls.ca {
            command.arg("--tls-ca").arg(ca);
        }
    }
    command
        .args(["--host", &args.host])
        .args(["--port", &port.to_string()])
        .args(["--name", name])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--exit-with-stdin");
    for prefix in &args.allow_host_path {
        command.arg("--allow-host-path").arg(prefix);
    }
    command
        .stdin(Stdio::piped())
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start worker {name}: {e}"))
}

async fn stop_children(children: Vec<Child>) {
    // Every worker is asked at once, so stopping N of them takes one grace period at most,
    // not N one after another.
    futures_util::future::join_all(children.into_iter().map(|mut child| async move {
        // Closing the pipe asks the worker to stop; it leaves its containers running.
        drop(child.stdin.take());
        if tokio::time::timeout(CHILD_EXIT_GRACE, child.wait())
            .await
            .is_err()
        {
            warn!("a worker did not stop within {CHILD_EXIT_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }))
    .await;
}

/// Build the demo image from the static busybox when it is missing.
async fn ensure_demo_image() -> Result<(), String> {
    let docker = crate::runtime::docker::connect().await.map_err(|e| {
        format!(
            "cannot reach Docker ({e}); start the Docker daemon, or try `cube up --runtime fake`"
        )
    })?;
    if docker
        .image_exists(DEMO_IMAGE)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        warn!(
            "the demo image {DEMO_IMAGE} is missing and {BUSYBOX} is not there to build it; install Debian's busybox-static (apt-get install busybox-static) to use the examples"
        );
        return Ok(());
    }
    eprintln!("building the demo image {DEMO_IMAGE} from {BUSYBOX} …");
    docker
        .build_busybox_image(DEMO_IMAGE, busybox)
        .await
        .map_err(|e| format!("cannot build the demo image {DEMO_IMAGE}: {e}"))
}

fn print_banner(
    args: &UpArgs,
    manager: &str,
    workers: &[String],
    token_file: Option<&Path>,
    ca: Option<&Path>,
) {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let cacert = ca.map_or(String::new(), |p| format!(" --cacert {}", home_relative(p)));
    let exe = std::env::current_exe()
        .ok()
        .map(|p| shorten(&p))
        .unwrap_or_else(|| "cube".into());
    let auth = token_file.map_or(String::new(), |p| {
        format!(" -H \"Authorization: Bearer $(cat {})\"", home_relative(p))
    });
    let example = Path::new("examples/tasks/web.json");
    let try_run = if example.exists() {
        format!("{exe} run -f {} --wait", example.display())
    } else {
        format!(
            "curl -s{cacert} -XPOST {scheme}://{manager}/tasks{auth} -d '{{\"task\": {{\"image\": \"{DEMO_IMAGE}\", \"cmd\": [\"httpd\", \"-f\", \"-p\", \"8080\"], \"exposed_ports\": [\"8080/tcp\"]}}}}'"
        )
    };
    let mut lines = vec![
        String::new(),
        format!(
            "Cube is up ({} runtime, {} scheduler).",
            match args.runtime {
                RuntimeKind::Docker => "docker",
                RuntimeKind::Fake => "fake",
            },
            args.scheduler
        ),
        format!("  manager    {scheme}://{manager}"),
        format!("  dashboard  {scheme}://{manager}/"),
    ];
    lines.extend(workers.iter().cloned());
    lines.push(String::new());
    match token_file {
        Some(path) => {
            lines.push(format!(
                "API token in {} (the cube CLI finds it by itself; the dashboard asks for it once).",
                home_relative(path)
            ));
        }
        None => lines.push(
            "No tokens (--insecure): anyone who can reach these ports can run containers.".into(),
        ),
    }
    if let Some(ca) = ca {
        lines.push(format!(
            "HTTPS, with mutual TLS to the workers; the CA is in {} (the CLI trusts it by itself).",
            home_relative(ca)
        ));
    }
    lines.push("Try:".into());
    lines.push(format!("  {try_run}"));
    lines.push(format!("  {exe} status"));
    lines.push(format!("  {exe} node"));
    lines.push("Ctrl-C stops Cube; containers keep running and are adopted next time.".into());
    lines.push(String::new());
    eprintln!("{}", lines.join("\n"));
}

/// A path under the home directory as `~/…`, as the user would type it.
fn home_relative(p: &Path) -> String {
    std::env::var_os("HOME")
        .and_then(|home| {
            p.strip_prefix(home)
                .ok()
                .map(|r| format!("~/{}", r.display()))
        })
        .unwrap_or_else(|| p.display().to_string())
}

/// The binary as the user can type it: relative to the current directory when inside it.
fn shorten(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            p.strip_prefix(cwd)
                .ok()
                .map(|r| format!("./{}", r.display()))
        })
        .unwrap_or_else(|| p.display().to_string())
}
