//! The `cube` command: clap definitions and what each subcommand does.
//!
//! Server commands (`manager`, `worker`, `up`) start the library's servers and stop at once on
//! SIGINT or SIGTERM; client commands (`run`, `status`, `inspect`, `events`, `stop`, `node`,
//! `logs`, `snapshot`, `service`) talk to a manager over HTTP. Every failure is one clear line on
//! stderr and an exit code scripts can tell apart ([`CliError`]: 1, 2 for usage, 3 not found).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::actors::manager::NodeReport;
use crate::actors::policy::PolicyKind;
use crate::actors::worker::DEFAULT_FEED_PAGE;
use crate::http::auth::{Role, Tokens};
use crate::runtime::{DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE, Hardening};
use crate::server::{
    JoinConfig, ManagerConfig, RuntimeKind, WorkerConfig, start_manager, start_worker,
};
use crate::task::{Goal, State, Task};

mod events;
mod service;
mod snapshot;
mod up;

/// Why a command failed, and so the exit code scripts can tell apart: 1 for an error, 2 for
/// a usage error (as clap's own), 3 when the manager has no such object.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Anything else that went wrong: exit 1.
    #[error("{0}")]
    Failed(String),
    /// A flag or a config file that cannot work, found after clap parsed the line: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The manager answered 404 (an unknown task, service or node): exit 3.
    #[error("{0}")]
    NotFound(String),
}

/// Exit code of a usage error, as clap uses it.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the manager has no such object (it answered 404).
pub const EXIT_NOT_FOUND: u8 = 3;

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::NotFound(_) => EXIT_NOT_FOUND,
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Failed(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::Failed(message.to_string())
    }
}

/// Seconds `cube run --wait` waits for a task to run (or end) unless told otherwise.
pub const RUN_WAIT_TIMEOUT_S: u64 = 120;

/// Cube: a small container orchestrator.
#[derive(Debug, Parser)]
#[command(name = "cube", version, about, propagate_version = true)]
pub struct Cli {
    /// The manager's URL, for the client commands.
    #[arg(
        long,
        global = true,
        env = "CUBE_MANAGER",
        default_value = crate::DEFAULT_MANAGER_URL
    )]
    pub manager: String,

    /// The token for the manager's API. Without it the client commands read the one `cube up`
    /// wrote for this manager (~/.config/cube/<host>-<port>.token); `cube manager` accepts it
    /// as a write token.
    #[arg(long, global = true, env = "CUBE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA to trust for an `https://` manager. Without it the client commands use the one
    /// `cube up --tls` saved for this manager (~/.config/cube/<host>-<port>.ca.pem).
    #[arg(long, global = true, env = "CUBE_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the manager: the API users talk to, the scheduler, and the store of every task.
    Manager(ManagerArgs),
    /// Run a worker: it runs the tasks placed on this node as containers.
    Worker(WorkerArgs),
    /// Run a manager and several workers as one process tree, for a local cluster.
    Up(up::UpArgs),
    /// Run a task: `cube run IMAGE [CMD…]` with docker-style flags, or `-f FILE` (a POST /tasks
    /// body) that the flags change; prints the task's id.
    Run(RunArgs),
    /// Show tasks, or one task; `-w` keeps the table up to date.
    Status(StatusArgs),
    /// Print a task as JSON, as `GET /tasks/{id}` answers it.
    Inspect(IdArgs),
    /// Follow the manager's events (tasks, services, nodes), one line each.
    Events(events::EventsArgs),
    /// Print a shell's completion script: `source <(cube completions bash)`.
    Completions {
        /// bash, zsh or fish (also elvish and powershell).
        shell: clap_complete::Shell,
    },
    /// Stop a task: its container is stopped and removed, then it is Completed.
    Stop(IdArgs),
    /// Show the workers, or forget one (`cube node rm NAME`).
    Node(NodeArgs),
    /// Print a task's container output.
    Logs(LogsArgs),
    /// Save a consistent copy of the manager's store, or restore one.
    Snapshot(snapshot::SnapshotArgs),
    /// Run services: N copies of a task, replaced a few at a time when it changes.
    Service(service::ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to listen on; anything but loopback exposes an API without authentication.
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    /// Worker addresses, host:port, separated by commas.
    #[arg(long, env = "CUBE_WORKERS", value_delimiter = ',', value_parser = parse_worker_entry)]
    pub workers: Option<Vec<String>>,
    /// A TOML file with any of: host, port, workers, scheduler, data_dir, health_interval,
    /// node_timeout, retention, retention_count, event_buffer, store_size. Flags and environment
    /// win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Placement policy: epvm, roundrobin (round-robin), binpack (bin-pack) or spread.
    #[arg(long, env = "CUBE_SCHEDULER")]
    pub scheduler: Option<PolicyKind>,
    /// Where the manager keeps its store [default: ./cube-data/manager].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The most its store may hold: bytes, or with k, m, g or t (1k = 1024), e.g. 512m or
    /// 64g [default: 64g]. Address space, not disk: the file grows only as data is written.
    /// New tasks are refused (507) while the last 1/16 is kept for stops.
    #[arg(long, value_name = "SIZE", value_parser = parse_store_size)]
    pub store_size: Option<usize>,
    /// Seconds between health checks of a task.
    #[arg(long)]
    pub health_interval: Option<f64>,
    /// Seconds a worker may be silent before it is Down and its tasks move.
    #[arg(long)]
    pub node_timeout: Option<f64>,
    /// How long finished tasks (Completed, or Failed with no restart left) are kept before
    /// they are collected: `30s`, `90m`, `24h`, `7d` [default: 24h]. A collected task's id
    /// stays reserved for 7 times as long.
    #[arg(long, value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// The most finished tasks kept; the oldest beyond it are collected [default: 100000].
    #[arg(long)]
    pub retention_count: Option<usize>,
    /// Events `GET /events` keeps for clients that reconnect with `since` [default: 100000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_buffer: Option<u64>,
    /// Tokens the API accepts: TOML (`[[token]]` with `token` and `role`) or `ROLE TOKEN` a
    /// line, roles `read` (GET only) and `write`. CUBE_TOKEN (or --token) adds a write token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The token the manager presents to its workers.
    #[arg(long, env = "CUBE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// Serve beyond loopback with no token: anyone who reaches the API can run containers.
    #[arg(long)]
    pub insecure: bool,
    /// Serve HTTPS with this certificate (PEM, chain first); also the client certificate
    /// presented to workers.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Call workers over HTTPS, trusting this CA (PEM) for their certificates.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

/// The manager's TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagerFile {
    host: Option<String>,
    port: Option<u16>,
    workers: Option<Vec<String>>,
    scheduler: Option<String>,
    data_dir: Option<PathBuf>,
    health_interval: Option<f64>,
    node_timeout: Option<f64>,
    retention: Option<String>,
    retention_count: Option<usize>,
    event_buffer: Option<usize>,
    /// `"512m"` or a number of bytes.
    store_size: Option<toml::Value>,
}

impl ManagerArgs {
    /// The config file's name, for errors about what it holds.
    fn config_name(&self) -> String {
        self.config
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string())
    }

    /// Flags (and environment) over the config file over the defaults; `token` is the global
    /// `--token`/CUBE_TOKEN.
    pub fn config(&self, token: Option<&str>) -> Result<ManagerConfig, String> {
        let file = match &self.config {
            None => ManagerFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| config_file_error(path, &e))?
            }
        };
        let scheduler = match (&self.scheduler, &file.scheduler) {
            (Some(s), _) => *s,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| format!("{}: scheduler: {e}", self.config_name()))?,
            (None, None) => PolicyKind::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("cube-data").join("manager"));
        let mut config = ManagerConfig::new(data_dir);
        config.host = self.host.clone().or(file.host).unwrap_or(config.host);
        config.port = self.port.or(file.port).unwrap_or(config.port);
        config.workers = self
            .workers
            .clone()
            .or(file.workers)
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
        // A flag's entries were checked by clap; the file's are checked here, before anything
        // starts, so a typo is not retried forever as an unreachable worker.
        for w in &config.workers {
            crate::node::check_address(w).map_err(|e| {
                let path = self.config.as_deref().unwrap_or(std::path::Path::new(""));
                format!("{}: workers: {e}", path.display())
            })?;
        }
        config.scheduler = scheduler;
        if let Some(s) = self.health_interval.or(file.health_interval) {
            config.health_interval = seconds("health interval", s)?;
        }
        if let Some(s) = self.node_timeout.or(file.node_timeout) {
            config.node_timeout = seconds("node timeout", s)?;
        }
        if let Some(r) = self.retention {
            config.retention = r;
        } else if let Some(text) = &file.retention {
            config.retention = parse_duration(text).map_err(|e| format!("retention: {e}"))?;
        }
        if let Some(n) = self.retention_count.or(file.retention_count) {
            config.retention_count = n;
        }
        match (self.event_buffer, file.event_buffer) {
            (Some(n), _) => config.event_buffer = usize::try_from(n).unwrap_or(usize::MAX),
            (None, Some(0)) => return Err("event_buffer: expected at least 1".into()),
            (None, Some(n)) => config.event_buffer = n,
            (None, None) => {}
        }
        match (self.store_size, &file.store_size) {
            (Some(size), _) => config.store_size = size,
            (None, Some(value)) => {
                config.store_size = toml_store_size(value).map_err(|e| {
                    let path = self.config.as_deref().unwrap_or(std::path::Path::new(""));
                    format!("{}: store_size: {e}", path.display())
                })?;
            }
            (None, None) => {}
        }
        if let Some(path) = &self.token_file {
            config.tokens = Tokens::from_file(path)?;
        }
        if let Some(token) = token {
            config
                .tokens
                .add(token, Role::Write)
                .map_err(|e| format!("CUBE_TOKEN: {e}"))?;
        }
        config.cluster_token = self.cluster_token.clone();
        config.insecure = self.insecure;
        config.tls_cert = self.tls_cert.clone();
        config.tls_key = self.tls_key.clone();
        config.tls_ca = self.tls_ca.clone();
        Ok(config)
    }
}

/// The keys of the manager's TOML file, for the error that names an unknown one.
const MANAGER_FILE_KEYS: &str = "host, port, workers, scheduler, data_dir, health_interval, \
     node_timeout, retention, retention_count, store_size";

/// A config file that does not parse, in one line: an unknown key is named, with the keys
/// there are.
fn config_file_error(path: &std::path::Path, e: &toml::de::Error) -> String {
    let message = e.message();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        return format!(
            "{}: unknown key {key:?}; the keys are {MANAGER_FILE_KEYS}",
            path.display()
        );
    }
    let line = e
        .span()
        .map(|span| format!(" (at byte {})", span.start))
        .unwrap_or_default();
    format!("{}: {message}{line}", path.display())
}

/// `--workers`: an entry `host:port` (blanks around it and empty entries are allowed, and
/// dropped later).
fn parse_worker_entry(text: &str) -> Result<String, String> {
    let entry = text.trim();
    if !entry.is_empty() {
        crate::node::check_address(entry)?;
    }
    Ok(entry.to_string())
}

/// The smallest `--store-size`: below it the reserve kept for stops (at least 1 MiB, at most
/// half the store) leaves almost nothing for tasks.
pub const MIN_STORE_SIZE: u64 = 1 << 20;
/// The largest `--store-size`: 64 TiB, well within the address space of a 64-bit process.
pub const MAX_STORE_SIZE: u64 = 64 << 40;

/// What `--store-size` takes, for its errors.
const STORE_SIZE_FORM: &str =
    "expected bytes, or a number with k, m, g or t (1k = 1024), from 1m to 64t, e.g. 512m or 64g";

/// `--store-size`: `512m`, `64g`, `100000k`, `1t` or plain bytes (units are binary and
/// case-blind), from [`MIN_STORE_SIZE`] to [`MAX_STORE_SIZE`].
pub fn parse_store_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let (digits, shift) = match trimmed.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("{text:?} is not a size; {STORE_SIZE_FORM}")),
            };
            (&trimmed[..i], shift)
        }
        _ => (trimmed, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a size; {STORE_SIZE_FORM}"));
    }
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n <= MAX_STORE_SIZE);
    match bytes {
        Some(n) if n >= MIN_STORE_SIZE => {
            usize::try_from(n).map_err(|_| format!("{text:?} is larger than this machine can map"))
        }
        Some(_) => Err(format!("{text:?} is too small; {STORE_SIZE_FORM}")),
        None => Err(format!("{text:?} is too large; {STORE_SIZE_FORM}")),
    }
}

/// `store_size` of the manager's TOML file: a string as the flag takes it, or bytes.
fn toml_store_size(value: &toml::Value) -> Result<usize, String> {
    match value {
        toml::Value::String(text) => parse_store_size(text),
        toml::Value::Integer(n) => parse_store_size(&n.to_string()),
        other => Err(format!(
            "{other} is not a size; {STORE_SIZE_FORM} (a string such as \"512m\", or a number of bytes)"
        )),
    }
}

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "the {what} must be a number of seconds > 0, not {s}"
        ))
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address to listen on; anything but loopback exposes an API without authentication.
    #[arg(long, default_value = crate::DEFAULT_HOST)]
    pub host: String,
    #[arg(long, default_value_t = crate::DEFAULT_WORKER_PORT)]
    pub port: u16,
    /// The worker's name, stable across restarts [default: <hostname>-<port>].
    #[arg(long, env = "CUBE_WORKER_NAME")]
    pub name: Option<String>,
    /// Where the worker keeps its store [default: ./cube-data/worker-<name>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The most its store may hold: bytes, or with k, m, g or t (1k = 1024), e.g. 512m or
    /// 64g [default: 64g]. New attempts are refused (507) while the last 1/16 is kept for stops.
    #[arg(long, value_name = "SIZE", value_parser = parse_store_size)]
    pub store_size: Option<usize>,
    /// How containers are run.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
    /// A label of this node, KEY=VALUE (repeatable), which placement constraints match
    /// (`zone==a`); `cube node label` on the manager overrides it.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::constraint::parse_label)]
    pub labels: Vec<(String, String)>,
    /// How long the container of a finished task is kept for its logs (30s, 5m, 24h, 1h30m; a
    /// plain number is seconds). The task's record goes too once the manager has recorded it,
    /// and the tombstone that refuses its attempt this long after that.
    #[arg(long, value_parser = parse_duration, default_value = DEFAULT_RETENTION_TEXT)]
    pub retention: Duration,
    /// Most tasks in one answer of the change feed (tests use small pages).
    #[arg(long, hide = true, default_value_t = DEFAULT_FEED_PAGE, value_parser = parse_page)]
    pub feed_page: usize,
    /// Host address containers' published ports bind to [default: the --host address].
    #[arg(long)]
    pub publish_address: Option<String>,
    /// Host ports containers may publish on, inclusive; a task asking for one outside is refused.
    #[arg(long, value_parser = parse_port_range, default_value = DEFAULT_PORT_RANGE_TEXT)]
    pub port_range: (u16, u16),
    /// Size at which a container's log file is rotated (Docker's form: 500k, 10m, 1g).
    #[arg(long, value_parser = parse_log_size, default_value = DEFAULT_LOG_MAX_SIZE)]
    pub log_max_size: String,
    /// Rotated log files kept per container.
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_FILES, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub log_max_files: u32,
    /// Capabilities to drop from every container besides Docker's defaults (e.g. NET_RAW).
    #[arg(long, value_delimiter = ',')]
    pub cap_drop: Vec<String>,
    /// Let tasks mount host paths under this directory (repeatable); a task naming a host path
    /// under none of them fails. None by default: tasks get named volumes only.
    #[arg(long, value_name = "PATH", value_parser = parse_allowed_host_path)]
    pub allow_host_path: Vec<String>,
    /// The token the manager must present; without it the API is open (loopback only).
    #[arg(long, env = "CUBE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// Serve beyond loopback with no token: anyone who reaches the API can run containers.
    #[arg(long)]
    pub insecure: bool,
    /// Join the manager at this URL at start (as `docker swarm join`): it stores the worker
    /// and watches it from then on, and the worker takes the manager's cluster token. Needs a
    /// write token of the manager (--token or CUBE_TOKEN) when it has tokens.
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// Serve HTTPS with this certificate (PEM, chain first).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require callers to present a client certificate signed by this CA (PEM): mutual TLS,
    /// so only the manager gets in. Also trusted for the manager's certificate when joining.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// With --join: `host:port` the manager reaches this worker at [default: --host and the
    /// port; with --host 0.0.0.0, the address the join comes from].
    #[arg(long, value_name = "HOST:PORT", requires = "join", value_parser = parse_address)]
    pub advertise: Option<String>,
    /// Exit when standard input closes (set by `cube up`, so workers end with their parent).
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

/// An `--allow-host-path` prefix: absolute, without `..`, not `/`.
pub fn parse_allowed_host_path(text: &str) -> Result<String, String> {
    crate::volume::check_allowed_prefix(text).map(|()| text.to_string())
}

fn parse_address(text: &str) -> Result<String, String> {
    crate::node::check_address(text).map(|()| text.to_string())
}

/// The default `--port-range`, as the flag spells it.
const DEFAULT_PORT_RANGE_TEXT: &str = "20000-32767";

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a range; expected LOW-HIGH, e.g. 20000-32767"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port; expected 1 to 65535"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("{text:?} runs backwards; expected LOW-HIGH"));
    }
    Ok((lo, hi))
}

/// The default `--retention`, as the flag spells it: [`crate::actors::worker::DEFAULT_RETENTION`].
const DEFAULT_RETENTION_TEXT: &str = "1h";

/// A duration as people write it: `30s`, `5m`, `24h`, `7d`, parts together (`1h30m`), or a plain
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "{text:?} is not a duration; expected a number of seconds, or one with s, m, h or d \
             (e.g. 30s, 5m, 24h, 1h30m)"
        )
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(refuse());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(refuse());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| refuse())?;
        let unit = rest[digits..].chars().next().ok_or_else(refuse)?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(refuse()),
        };
        total = n
            .checked_mul(scale)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

fn parse_page(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("{text:?} is not a page size; expected a number of tasks, 1 or more")
        })
}

fn parse_log_size(text: &str) -> Result<String, String> {
    let digits = text.trim_end_matches(['k', 'm', 'g']);
    let ok = !digits.is_empty()
        && digits.len() + 1 >= text.len()
        && digits.chars().all(|c| c.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0);
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a size; expected a number with k, m or g, e.g. 10m"
        ))
    }
}

impl WorkerArgs {
    /// The worker configuration these flags describe; `token` is the global `--token`, used
    /// to join.
    pub fn config(&self, token: Option<&str>) -> WorkerConfig {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_worker_name(self.port));
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("cube-data").join(format!("worker-{name}")));
        let mut config = WorkerConfig::new(name, data_dir);
        config.host = self.host.clone();
        config.port = self.port;
        config.runtime = self.runtime;
        config.retention = self.retention;
        config.feed_page = self.feed_page;
        config.labels = self.labels.iter().cloned().collect();
        if let Some(size) = self.store_size {
            config.store_size = size;
        }
        config.hardening = Hardening {
            publish_address: self
                .publish_address
                .clone()
                .unwrap_or_else(|| self.host.clone()),
            port_range: self.port_range,
            log_max_size: self.log_max_size.clone(),
            log_max_files: self.log_max_files,
            cap_drop: self.cap_drop.clone(),
            allowed_host_paths: self.allow_host_path.clone(),
        };
        config.cluster_token = self.cluster_token.clone();
        config.insecure = self.insecure;
        config.tls_cert = self.tls_cert.clone();
        config.tls_key = self.tls_key.clone();
        config.tls_ca = self.tls_ca.clone();
        config.join = self.join.as_ref().map(|url| {
            let manager = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            JoinConfig {
                token: token.map(str::to_string).or_else(|| saved_token(&manager)),
                manager,
                advertise: self.advertise.clone(),
            }
        });
        config
    }
}

/// `<hostname>-<port>`: the same on every restart, different for workers side by side.
pub fn default_worker_name(port: u16) -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|| "worker".into());
    // Within a node name's length and alphabet, whatever the host is called.
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(crate::node::MAX_NAME_LEN - 6)
        .collect();
    format!("{host}-{port}")
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image to run.
    #[arg(required_unless_present = "file")]
    pub image: Option<String>,
    /// The command and its arguments (put `--` before it when a word starts with '-').
    pub cmd: Vec<String>,
    /// A task file: a TaskEvent ({"task": {...}}) or a bare task ({"image": ...}); the flags
    /// given change it.
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// The task's name (unique among tasks that have not ended) [default: its id].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub task: service::TaskFlags,
    /// Show progress until the task is Running, or has ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = RUN_WAIT_TIMEOUT_S)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Forget a node that runs no tasks: the manager stops watching it and removes it from
    /// its store (a joined worker joins again when it restarts).
    Rm {
        /// The node's name, as `cube node` shows it.
        name: String,
    },
    /// Take no new tasks on the node and move every task off it; it stays up.
    Drain {
        /// The node's name, as `cube node` shows it.
        name: String,
        /// How long a service's tasks have to be replaced elsewhere (30s, 5m; a plain number
        /// is seconds).
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Take no new tasks on the node; what runs there stays.
    Pause {
        /// The node's name, as `cube node` shows it.
        name: String,
    },
    /// Let the node take new tasks again (after a pause or a drain).
    Activate {
        /// The node's name, as `cube node` shows it.
        name: String,
    },
    /// Set labels on the node, KEY=VALUE, over the worker's own (--label); --rm removes
    /// labels set here.
    Label {
        /// The node's name, as `cube node` shows it.
        name: String,
        /// Labels to set, KEY=VALUE.
        #[arg(value_name = "KEY=VALUE", value_parser = crate::constraint::parse_label)]
        labels: Vec<(String, String)>,
        /// Labels set here to remove (repeatable).
        #[arg(long = "rm", value_name = "KEY")]
        remove: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A task id; all tasks when absent.
    pub id: Option<String>,
    /// Only tasks in this state (Pending, Scheduled, Running, Completed, Failed).
    #[arg(long, conflicts_with = "id")]
    pub state: Option<String>,
    /// Only tasks placed on this worker.
    #[arg(long, conflicts_with = "id")]
    pub worker: Option<String>,
    /// Keep the table up to date: redrawn when a task changes (from the manager's events, or
    /// by listing again every second when it serves none).
    #[arg(short, long, conflicts_with = "id")]
    pub watch: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The task id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task id.
    pub id: String,
    /// Keep printing while the container runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
}

/// Parse the command line, run the command, and turn any error into one line and an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Manager(_) | Command::Worker(_) | Command::Up(_)
    );
    // Servers log at info by default; client commands stay quiet unless RUST_LOG says otherwise.
    let default_level = if server { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    let system = actix_web::rt::System::new();
    let code = match system.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cube: {e}");
            e.exit_code()
        }
    };
    let _ = std::io::stdout().flush();
    // Exit here rather than drop the runtime: dropping it waits for every blocking task still
    // running (a Docker call, a store commit), which a stopping server has no reason to await.
    std::process::exit(i32::from(code))
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let token = cli.token.clone().or_else(|| saved_token(&cli.manager));
    let client = Client::new(&cli.manager, token, cli.ca_cert.clone());
    match cli.command {
        Command::Manager(args) => {
            let config = args.config(cli.token.as_deref()).map_err(CliError::Usage)?;
            let handle = start_manager(config).await.map_err(|e| e.to_string())?;
            stop_on_signal(vec![handle.server_handle()]);
            handle.wait().await.map_err(|e| e.to_string())?;
        }
        Command::Worker(args) => {
            let handle = start_worker(args.config(cli.token.as_deref()))
                .await
                .map_err(|e| e.to_string())?;
            stop_on_signal(vec![handle.server_handle()]);
            if args.exit_with_stdin {
                exit_when_stdin_closes(handle.server_handle());
            }
            handle.wait().await.map_err(|e| e.to_string())?;
        }
        Command::Up(args) => return up::run(args).await,
        Command::Run(args) => run_task(&client, args).await?,
        Command::Status(args) if args.watch => events::watch_status(&client, args).await?,
        Command::Status(args) => status(&client, args).await?,
        Command::Inspect(args) => {
            let task: serde_json::Value = client
                .get(&format!("/tasks/{}", task_id(&args.id)?))
                .await?;
            let json = serde_json::to_string_pretty(&task).map_err(|e| e.to_string())?;
            println!("{json}");
        }
        Command::Events(args) => events::run(&client, args).await?,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "cube", &mut std::io::stdout());
        }
        Command::Stop(args) => {
            let id = task_id(&args.id)?;
            let task: Task = client.delete(&format!("/tasks/{id}")).await?;
            if task.state == State::Completed {
                println!("{} Completed", task.id);
            } else {
                println!("{} stopping (state {})", task.id, task.state);
            }
        }
        Command::Node(NodeArgs {
            action: Some(action),
            output,
        }) => change_node(&client, action, output).await?,
        Command::Node(args) => nodes(&client, args.output).await?,
        Command::Logs(args) => logs(&client, args).await?,
        Command::Snapshot(args) => snapshot::run(&client, args).await?,
        Command::Service(args) => service::run(&client, args).await?,
    }
    Ok(())
}

/// Resolve on SIGINT or SIGTERM, with the signal's name; never when signals cannot be watched
/// (the process then stops as a signal's default action says).
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::warn!("cannot watch SIGINT and SIGTERM");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// On SIGINT or SIGTERM stop `servers` at once, without waiting for open requests: they are
/// long-polls and streams, and every answer given was durable first.
fn stop_on_signal(servers: Vec<actix_web::dev::ServerHandle>) {
    actix_web::rt::spawn(async move {
        let name = shutdown_signal().await;
        log::info!("{name}: stopping");
        for server in servers {
            server.stop(false).await;
        }
    });
}

/// Stop the process when stdin reaches its end: the parent that holds the other end is gone.
/// The server stops at once rather than gracefully: a graceful stop would wait out the
/// manager's long-polls (up to their whole wait), and nothing is lost by not waiting, since
/// every answer the worker gave was durable first and the manager retries what got none.
fn exit_when_stdin_closes(server: actix_web::dev::ServerHandle) {
    let arbiter = actix::System::current().arbiter().clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        log::info!("standard input closed: the parent is gone, stopping");
        arbiter.spawn(async move { server.stop(false).await });
    });
}

fn task_id(s: &str) -> Result<uuid::Uuid, String> {
    crate::task::parse_task_id(s).map_err(|e| e.0)
}

/// Where `cube up` keeps the token of the manager at `url`: `~/.config/cube/<host>-<port>.token`
/// (as k3s keeps its kubeconfig), so the CLI finds it from any directory.
pub fn token_path(url: &str) -> Option<PathBuf> {
    saved_path(url, "token")
}

/// Where `cube up --tls` keeps the CA of the manager at `url`, for the CLI to trust.
pub fn ca_path(url: &str) -> Option<PathBuf> {
    saved_path(url, "ca.pem")
}

/// `~/.config/cube/<host>-<port>.<ext>`, what `cube up` saves for the manager at `url`.
fn saved_path(url: &str, ext: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, p),
        _ => (authority, "80"),
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(
        PathBuf::from(home)
            .join(".config/cube")
            .join(format!("{host}-{port}.{ext}")),
    )
}

/// The token `cube up` saved for the manager at `url`, if any.
fn saved_token(url: &str) -> Option<String> {
    let text = std::fs::read_to_string(token_path(url)?).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// A small HTTP client for the manager API, with errors fit for one line.
pub struct Client {
    base: String,
    /// The client, or why there is none (an `https://` manager with no CA to trust).
    http: Result<awc::Client, String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The `error` of an error answer, or the body itself when it is not the JSON error shape.
/// The target of a `Link` header's `rel="next"`, a path on the same server.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"" || p.trim() == "rel=next")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
            .filter(|t| t.starts_with('/'))
    })
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

impl Client {
    /// A client of the manager at `base`, presenting `token`; an `https://` manager's
    /// certificate is checked against `ca`, or the CA `cube up --tls` saved for it.
    pub fn new(base: &str, token: Option<String>, ca: Option<PathBuf>) -> Client {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        // `cube up --tls` saved a CA for this manager: it serves HTTPS.
        let saved_ca = ca_path(&base).filter(|p| p.exists());
        let base = match base.strip_prefix("http://") {
            Some(rest) if saved_ca.is_some() => format!("https://{rest}"),
            _ => base,
        };
        let tls = if base.starts_with("https://") {
            match ca.or(saved_ca) {
                Some(ca) => crate::tls::client_config(&ca, None).map(|c| Some(Arc::new(c))),
                None => Err(format!(
                    "{base} serves HTTPS: give the CA that signed its certificate with --ca-cert or CUBE_CA_CERT"
                )),
            }
        } else {
            Ok(None)
        };
        let http = tls.map(|tls| {
            let connector = match tls {
                Some(c) => awc::Connector::new().rustls_0_23(c),
                None => awc::Connector::new(),
            };
            let mut http = awc::Client::builder()
                .connector(connector)
                .timeout(Duration::from_secs(30));
            if let Some(token) = token {
                http = http.bearer_auth(token);
            }
            http.finish()
        });
        Client { base, http }
    }

    fn http(&self) -> Result<&awc::Client, CliError> {
        self.http.as_ref().map_err(|e| CliError::Failed(e.clone()))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> String {
        format!(
            "cannot reach the manager at {} ({e}); is `cube manager` or `cube up` running? (set --manager or CUBE_MANAGER)",
            self.base
        )
    }

    async fn send(
        &self,
        req: awc::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, bytes::Bytes), CliError> {
        let sent = match body {
            Some(b) => {
                req.insert_header(("Content-Type", "application/json"))
                    .send_body(b)
                    .await
            }
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let body = res
            .body()
            .limit(1 << 30)
            .await
            .map_err(|e| format!("the manager's answer could not be read: {e}"))?;
        if status == 404 {
            return Err(CliError::NotFound(error_message(&body)));
        }
        if status >= 400 {
            return Err(error_message(&body).into());
        }
        Ok((status, body))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: awc::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let (_, body) = self.send(req, body).await?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("unexpected answer from the manager: {e}").into())
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.http()?.get(format!("{}{path}", self.base)), None)
            .await
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, CliError> {
        self.json(
            self.http()?.post(format!("{}{path}", self.base)),
            Some(body),
        )
        .await
    }

    pub async fn patch<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, CliError> {
        self.json(
            self.http()?.patch(format!("{}{path}", self.base)),
            Some(body),
        )
        .await
    }

    /// A GET the manager may hold for a while (a long-poll): `timeout` instead of the usual.
    pub async fn get_waiting<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CliError> {
        let req = self
            .http()?
            .get(format!("{}{path}", self.base))
            .timeout(timeout);
        self.json(req, None).await
    }

    /// A listing, every page of it: each answer's `Link: <…>; rel="next"` names the next.
    pub async fn get_pages<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<T>, CliError> {
        let mut all = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(path) = next.take() {
            let mut res = self
                .http()?
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            next = res
                .headers()
                .get(awc::http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page);
            let status = res.status().as_u16();
            let body = res
                .body()
                .limit(1 << 30)
                .await
                .map_err(|e| format!("the manager's answer could not be read: {e}"))?;
            if status == 404 {
                return Err(CliError::NotFound(error_message(&body)));
            }
            if status >= 400 {
                return Err(error_message(&body).into());
            }
            let page: Vec<T> = serde_json::from_slice(&body)
                .map_err(|e| format!("unexpected answer from the manager: {e}"))?;
            all.extend(page);
        }
        Ok(all)
    }

    /// A POST with no body whose answer is bytes, not JSON (a snapshot).
    pub async fn post_raw(&self, path: &str) -> Result<bytes::Bytes, CliError> {
        self.send(self.http()?.post(format!("{}{path}", self.base)), None)
            .await
            .map(|(_, body)| body)
    }

    /// A DELETE whose answer has no body (204).
    pub async fn delete_empty(&self, path: &str) -> Result<(), CliError> {
        self.send(self.http()?.delete(format!("{}{path}", self.base)), None)
            .await
            .map(|_| ())
    }

    pub async fn delete<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.http()?.delete(format!("{}{path}", self.base)), None)
            .await
    }
}

/// The body of `POST /tasks` that `cube run` sends: the file's task (if any) with what the
/// flags give over it.
pub fn run_body(
    args: &RunArgs,
    file: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    use serde_json::{Map, Value};
    let mut flags = Map::new();
    if let Some(image) = &args.image {
        flags.insert("image".into(), image.as_str().into());
    }
    if !args.cmd.is_empty() {
        flags.insert("cmd".into(), serde_json::json!(args.cmd));
    }
    if let Some(name) = &args.name {
        flags.insert("name".into(), name.as_str().into());
    }
    service::task_template(&mut flags, &args.task)?;
    let patch = Value::Object(flags);
    match file {
        None => Ok(serde_json::json!({ "task": patch })),
        // A TaskEvent: the flags change the task inside, the rest is kept.
        Some(Value::Object(mut event)) if event.get("task").is_some_and(Value::is_object) => {
            if let Some(task) = event.get_mut("task") {
                crate::service::merge_patch(task, &patch);
            }
            Ok(Value::Object(event))
        }
        Some(mut task @ Value::Object(_)) => {
            crate::service::merge_patch(&mut task, &patch);
            Ok(serde_json::json!({ "task": task }))
        }
        Some(_) => Err("the task file is not a JSON object; expected {\"task\": {\"image\": ...}} or {\"image\": ...}".into()),
    }
}

/// A JSON file a command takes with `-f`, or why it cannot be read.
pub(crate) fn read_json_file(path: &std::path::Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

async fn run_task(client: &Client, args: RunArgs) -> Result<(), CliError> {
    let file = args.file.as_deref().map(read_json_file).transpose()?;
    let body = run_body(&args, file).map_err(CliError::Usage)?;
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let task: Task = client.post("/tasks", body).await?;
    println!("{}", task.id);
    if !args.wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut last: Option<State> = None;
    // Progress is for a person watching; a script reads the id and the exit code.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let t: Task = client.get(&format!("/tasks/{}", task.id)).await?;
        if last != Some(t.state) {
            let place = t
                .worker
                .as_deref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default();
            let why = t
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            if progress {
                eprintln!("{}{place}{why}", t.state);
            }
            last = Some(t.state);
        }
        match t.state {
            State::Running | State::Completed => return Ok(()),
            State::Failed => {
                return Err(format!(
                    "task {} failed: {}",
                    t.id,
                    t.error.unwrap_or_else(|| "no reason given".into())
                )
                .into());
            }
            State::Pending | State::Scheduled => {}
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "task {} is still {} after {} s",
                t.id, t.state, args.timeout
            )
            .into());
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tasks `cube status` shows: the one asked for, or every page of the listing.
async fn status_tasks(client: &Client, args: &StatusArgs) -> Result<Vec<Task>, CliError> {
    Ok(match &args.id {
        Some(id) => vec![client.get(&format!("/tasks/{}", task_id(id)?)).await?],
        None => {
            let mut query = Vec::new();
            if let Some(state) = &args.state {
                let state = State::parse(state).ok_or_else(|| {
                    CliError::Usage(format!("--state {state:?} is not a state; expected Pending, Scheduled, Running, Completed or Failed"))
                })?;
                query.push(format!("state={state}"));
            }
            if let Some(worker) = &args.worker {
                crate::node::check_name(worker)
                    .map_err(|e| CliError::Usage(format!("--worker: {e}")))?;
                query.push(format!("worker={worker}"));
            }
            query.push(format!("limit={}", crate::http::manager::MAX_LIST_LIMIT));
            client
                .get_pages(&format!("/tasks?{}", query.join("&")))
                .await?
        }
    })
}

/// The table of `cube status`: ID, NAME and STATE first (scripts read them), then where,
/// what, and how long ago it was submitted.
fn status_table(tasks: &[Task], now: chrono::DateTime<chrono::Utc>) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header(["ID", "NAME", "STATE", "WORKER", "IMAGE", "MEMORY", "AGE"]);
    for t in tasks {
        table.add_row([
            t.id.to_string(),
            t.name.clone(),
            t.state.to_string(),
            t.worker.clone().unwrap_or_else(|| "-".into()),
            t.image.clone(),
            if t.memory == 0 {
                "-".into()
            } else {
                bytes(t.memory)
            },
            format!("{} ago", age(now - t.created_at)),
        ]);
    }
    table
}

async fn status(client: &Client, args: StatusArgs) -> Result<(), CliError> {
    let tasks = status_tasks(client, &args).await?;
    if args.output.output == Output::Json {
        let json = match (&args.id, tasks.as_slice()) {
            (Some(_), [t]) => serde_json::to_string_pretty(t),
            _ => serde_json::to_string_pretty(&tasks),
        };
        println!("{}", json.map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("{}", status_table(&tasks, chrono::Utc::now()));
    if let (Some(_), [t]) = (&args.id, tasks.as_slice()) {
        for (port, host) in &t.host_ports {
            println!("\nport {port} is published on the worker's host port {host}");
        }
        if let Some(e) = &t.error {
            println!("\nerror: {e}");
        }
        if t.desired == Goal::Stopped && t.state != State::Completed {
            println!(
                "\na stop was asked for; the task is Completed once its worker reports the container gone"
            );
        }
    }
    Ok(())
}

/// `42s`, `5m`, `3h`, `2d`.
fn age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `512M`, `7.6G`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 10.0 || unit == 0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

async fn nodes(client: &Client, args: OutputArgs) -> Result<(), CliError> {
    let nodes: Vec<NodeReport> = client.get("/nodes").await?;
    if args.output == Output::Json {
        let json = serde_json::to_string_pretty(&nodes).map_err(|e| e.to_string())?;
        println!("{json}");
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header([
        "NAME",
        "ADDRESS",
        "STATUS",
        "AVAILABILITY",
        "CPUS",
        "MEMORY",
        "DISK",
        "TASKS",
        "LABELS",
    ]);
    for n in &nodes {
        table.add_row([
            if n.name.is_empty() {
                "?".into()
            } else {
                n.name.clone()
            },
            n.address.clone(),
            format!("{:?}", n.status),
            n.availability.to_string(),
            format!("{:.1}/{:.0}", n.cpu_allocated, n.cpus),
            format!("{}/{}", bytes(n.memory_allocated), bytes(n.memory)),
            format!("{}/{}", bytes(n.disk_allocated), bytes(n.disk)),
            n.tasks.to_string(),
            label_list(&n.labels),
        ]);
    }
    println!("{table}");
    let reasons: BTreeMap<&str, &str> = nodes
        .iter()
        .filter(|n| n.status != crate::node::NodeStatus::Ready)
        .filter_map(|n| n.reason.as_deref().map(|r| (n.address.as_str(), r)))
        .collect();
    for (address, reason) in reasons {
        println!("{address}: {reason}");
    }
    Ok(())
}

/// `zone=a,disk=ssd`, or `-` for none.
fn label_list(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `cube node drain|pause|activate|label`: one PATCH of the node, then what it is now.
async fn change_node(
    client: &Client,
    action: NodeAction,
    output: OutputArgs,
) -> Result<(), CliError> {
    let (name, body) = match action {
        NodeAction::Rm { name } => {
            crate::node::check_name(&name).map_err(|e| format!("node name: {e}"))?;
            client.delete_empty(&format!("/nodes/{name}")).await?;
            println!("{name} forgotten");
            return Ok(());
        }
        NodeAction::Drain { name, deadline } => {
            let mut body = serde_json::json!({"availability": "drain"});
            if let Some(d) = deadline {
                body["deadline_s"] = d.as_secs().into();
            }
            (name, body)
        }
        NodeAction::Pause { name } => (name, serde_json::json!({"availability": "pause"})),
        NodeAction::Activate { name } => (name, serde_json::json!({"availability": "active"})),
        NodeAction::Label {
            name,
            labels,
            remove,
        } => {
            if labels.is_empty() && remove.is_empty() {
                return Err(
                    "cube node label: nothing to do; expected KEY=VALUE labels to set, or --rm KEY"
                        .into(),
                );
            }
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            (
                name,
                serde_json::json!({"labels": labels, "remove_labels": remove}),
            )
        }
    };
    crate::node::check_name(&name).map_err(|e| format!("node name: {e}"))?;
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let node: NodeReport = client.patch(&format!("/nodes/{name}"), body).await?;
    if output.output == Output::Json {
        let json = serde_json::to_string_pretty(&node).map_err(|e| e.to_string())?;
        println!("{json}");
        return Ok(());
    }
    let deadline = node
        .drain_deadline
        .map(|d| {
            format!(
                " until {}",
                d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    println!(
        "{}: {}{deadline}, labels {}",
        node.name,
        node.availability,
        label_list(&node.labels)
    );
    Ok(())
}

async fn logs(client: &Client, args: LogsArgs) -> Result<(), CliError> {
    let id = task_id(&args.id)?;
    let mut path = format!("/tasks/{id}/logs?follow={}", args.follow);
    if let Some(t) = args.tail {
        path.push_str(&format!("&tail={t}"));
    }
    let req = client.http()?.get(format!("{}{path}", client.base));
    let req = if args.follow {
        req.timeout(Duration::from_secs(365 * 24 * 3600))
    } else {
        req
    };
    let mut res = req.send().await.map_err(|e| client.unreachable(e))?;
    if !res.status().is_success() {
        let body = res.body().await.map_err(|e| e.to_string())?;
        return Err(error_message(&body).into());
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = res.next().await {
        let chunk = chunk.map_err(|e| format!("the log stream broke: {e}"))?;
        out.write_all(&chunk).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_flags_win_over_the_config_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cube.toml");
        std::fs::write(
            &file,
            "port = 6000\nworkers = [\"10.0.0.1:5556\", \"10.0.0.2:5556\"]\nscheduler = \"bin-pack\"\nnode_timeout = 3\n",
        )
        .expect("write");
        let cli = Cli::parse_from([
            "cube",
            "manager",
            "--config",
            file.to_str().expect("utf-8"),
            "--port",
            "7000",
        ]);
        let Command::Manager(args) = cli.command else {
            panic!("not the manager command");
        };
        let config = args.config(None).expect("valid");
        assert_eq!(config.port, 7000, "the flag wins");
        assert_eq!(config.workers, ["10.0.0.1:5556", "10.0.0.2:5556"]);
        assert_eq!(config.scheduler, PolicyKind::BinPack);
        assert_eq!(config.node_timeout, Duration::from_secs(3));
        assert_eq!(
            config.health_interval,
            crate::server::DEFAULT_HEALTH_INTERVAL
        );
        assert_eq!(config.host, "127.0.0.1");
    }

    #[test]
    fn worker_defaults_parse_to_the_runtimes_constants() {
        assert_eq!(
            parse_port_range(DEFAULT_PORT_RANGE_TEXT),
            Ok(crate::runtime::DEFAULT_PORT_RANGE)
        );
        assert!(parse_port_range("300-200").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert_eq!(parse_log_size("10m").as_deref(), Ok("10m"));
        for bad in ["", "m", "10mm", "ten", "0k"] {
            assert!(parse_log_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration(DEFAULT_RETENTION_TEXT),
            Ok(crate::actors::worker::DEFAULT_RETENTION)
        );
    }

    #[test]
    fn retention_takes_durations_as_people_write_them() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90"), Ok(90), "a plain number is seconds, as before");
        assert_eq!(secs("0"), Ok(0));
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("7d"), Ok(7 * 86_400));
        assert_eq!(secs("1h30m"), Ok(5400));
        for bad in [
            "",
            "h",
            "5x",
            "1.5h",
            "-3",
            "5 m",
            "m5",
            "99999999999999999999d",
        ] {
            let Err(e) = parse_duration(bad) else {
                panic!("{bad:?} was taken");
            };
            assert!(e.contains("duration"), "{e}");
        }
        let cli = Cli::try_parse_from(["cube", "worker", "--retention", "2s", "--feed-page", "50"])
            .expect("parses");
        let Command::Worker(args) = cli.command else {
            panic!("not the worker command");
        };
        let config = args.config(None);
        assert_eq!(config.retention, Duration::from_secs(2));
        assert_eq!(config.feed_page, 50);
        let cli = Cli::try_parse_from(["cube", "worker"]).expect("parses");
        let Command::Worker(args) = cli.command else {
            panic!("not the worker command");
        };
        let config = args.config(None);
        assert_eq!(config.retention, crate::actors::worker::DEFAULT_RETENTION);
        assert_eq!(config.feed_page, DEFAULT_FEED_PAGE);
        assert!(Cli::try_parse_from(["cube", "worker", "--feed-page", "0"]).is_err());
    }

    #[test]
    fn store_sizes_take_units_and_bad_ones_name_the_flag_and_the_form() {
        for (text, bytes) in [
            ("512m", 512 << 20),
            ("64g", 64 << 30),
            ("64G", 64 << 30),
            ("100000k", 100_000 << 10),
            ("1048576", 1 << 20),
            ("1t", 1 << 40),
            ("64t", 64 << 40),
        ] {
            assert_eq!(parse_store_size(text), Ok(bytes), "{text}");
        }
        for (bad, says) in [
            ("", "is not a size"),
            ("m", "is not a size"),
            ("12x", "is not a size"),
            ("1.5g", "is not a size"),
            ("-1g", "is not a size"),
            ("64gb", "is not a size"),
            ("1k", "is too small"),
            ("1048575", "is too small"),
            ("65t", "is too large"),
            ("99999999999999999999", "is too large"),
        ] {
            let err = parse_store_size(bad).expect_err(bad);
            assert!(
                err.contains(says) && err.contains("e.g. 512m or 64g"),
                "{bad}: {err}"
            );
        }

        // clap names the flag.
        let err = Cli::try_parse_from(["cube", "manager", "--store-size", "lots"])
            .expect_err("not a size")
            .to_string();
        assert!(
            err.contains("--store-size") && err.contains("e.g. 512m"),
            "{err}"
        );
        let err = Cli::try_parse_from(["cube", "worker", "--store-size", "0"])
            .expect_err("too small")
            .to_string();
        assert!(
            err.contains("--store-size") && err.contains("too small"),
            "{err}"
        );

        let Command::Worker(args) =
            Cli::parse_from(["cube", "worker", "--store-size", "2m"]).command
        else {
            panic!("not the worker command");
        };
        assert_eq!(args.config(None).store_size, 2 << 20);
        let Command::Worker(args) = Cli::parse_from(["cube", "worker"]).command else {
            panic!("not the worker command");
        };
        assert_eq!(args.config(None).store_size, crate::db::DEFAULT_MAP_SIZE);
    }

    #[test]
    fn the_managers_store_size_comes_from_the_flag_or_the_config_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = |toml: &str, flags: &[&str]| {
            let file = dir.path().join("cube.toml");
            std::fs::write(&file, toml).expect("write");
            let mut args = vec!["cube", "manager", "--config", file.to_str().expect("utf-8")];
            args.extend_from_slice(flags);
            let Command::Manager(args) = Cli::parse_from(args).command else {
                panic!("not the manager command");
            };
            args.config(None).map(|c| c.store_size)
        };
        assert_eq!(config("", &[]), Ok(crate::db::DEFAULT_MAP_SIZE));
        assert_eq!(config("store_size = \"512m\"\n", &[]), Ok(512 << 20));
        assert_eq!(config("store_size = 2097152\n", &[]), Ok(2 << 20));
        assert_eq!(
            config("store_size = \"512m\"\n", &["--store-size", "1g"]),
            Ok(1 << 30),
            "the flag wins"
        );
        for (bad, says) in [
            (
                "store_size = \"lots\"\n",
                "store_size: \"lots\" is not a size",
            ),
            ("store_size = 10\n", "store_size: \"10\" is too small"),
            ("store_size = -5\n", "store_size: \"-5\" is not a size"),
            ("store_size = 1.5\n", "store_size: 1.5 is not a size"),
        ] {
            let err = config(bad, &[]).expect_err(bad);
            assert!(
                err.contains("cube.toml: ") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_saved_token_is_found_by_the_managers_host_and_port() {
        let path = token_path("http://127.0.0.1:5555/").expect("HOME is set in tests");
        assert!(
            path.ends_with(".config/cube/127.0.0.1-5555.token"),
            "{path:?}"
        );
        let other = token_path("cube.example:7000").expect("a path");
        assert!(other.ends_with("cube.example-7000.token"), "{other:?}");
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_page("</tasks?limit=5&after=x>; rel=\"next\"").as_deref(),
            Some("/tasks?limit=5&after=x")
        );
        assert_eq!(
            next_page("</a>; rel=\"prev\", </b>; rel=next").as_deref(),
            Some("/b")
        );
        assert_eq!(next_page("<http://elsewhere/x>; rel=\"next\""), None);
        assert_eq!(next_page("garbage"), None);
    }

    #[test]
    fn the_manager_takes_a_token_file_and_cube_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("tokens");
        std::fs::write(&file, "read read-only-token-123456\n").expect("write");
        let cli = Cli::parse_from([
            "cube",
            "manager",
            "--token-file",
            file.to_str().expect("utf-8"),
        ]);
        let Command::Manager(args) = cli.command else {
            panic!("not the manager command");
        };
        let config = args.config(Some("write-token-0123456789")).expect("valid");
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(
            config.tokens.role_of("write-token-0123456789"),
            Some(Role::Write)
        );
        assert!(args.config(Some("short")).is_err());
    }

    #[test]
    fn a_bad_config_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cube.toml");
        std::fs::write(&file, "prot = 6000\n").expect("write");
        let cli = Cli::parse_from(["cube", "manager", "--config", file.to_str().expect("utf-8")]);
        let Command::Manager(args) = cli.command else {
            panic!("not the manager command");
        };
        let err = args.config(None).expect_err("unknown key");
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn the_manager_url_is_global_before_or_after_the_subcommand() {
        let before = Cli::parse_from(["cube", "--manager", "http://h:1", "status"]);
        let after = Cli::parse_from(["cube", "status", "--manager", "http://h:1"]);
        assert_eq!(before.manager, "http://h:1");
        assert_eq!(after.manager, "http://h:1");
    }
}
