//! `cube service`: services in the style of `docker service`, over the manager's `/services`
//! API. The flags map to a request body by pure functions ([`create_body`], [`update_patch`],
//! [`scale_target`]), so the mapping is unit-tested without a manager; the rest sends it and
//! prints the answer. `--wait` follows a rollout by polling `GET /services/{name}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use comfy_table::{Table, presets::NOTHING};
use serde_json::{Map, Value, json};

use super::{CliError, Client, parse_duration};
use crate::service::{Endpoints, RolloutState, ServiceView, check_name, merge_patch};
use crate::task::Task;

/// Seconds `--wait` follows a rollout unless told otherwise.
pub const SERVICE_WAIT_TIMEOUT_S: u64 = 300;
/// How often `--wait` looks at the service.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// Seconds one long-poll of `cube service endpoints --watch` waits for a change.
const WATCH_WAIT_S: u64 = 60;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Create a service: keep N copies of a task running.
    Create(Box<CreateArgs>),
    /// List the services: NAME, MODE, REPLICAS (running/desired), VERSION, ROLLOUT, IMAGE.
    Ls,
    /// Show a service's tasks: ID, NAME, VERSION, STATE, NODE, ERROR.
    Ps {
        /// The service's name.
        name: String,
    },
    /// Print a service as JSON, as `GET /services/{name}` answers it.
    Inspect {
        /// The service's name.
        name: String,
    },
    /// Change the replicas of services: `cube service scale web=5 api=2`.
    Scale {
        /// NAME=REPLICAS, one or more.
        #[arg(required = true, value_name = "NAME=REPLICAS")]
        targets: Vec<String>,
    },
    /// Change a service: only what is given changes (a JSON merge patch); a new template
    /// rolls out as its update settings say.
    Update(UpdateArgs),
    /// Roll a service back to its previous template.
    Rollback {
        /// The service's name.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete services: their tasks stop, then they are gone.
    Rm {
        /// The services' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the `host:port` a service answers at, one a line.
    Endpoints {
        /// The service's name.
        name: String,
        /// Keep printing: each time the endpoints change, the new list (after a blank line).
        #[arg(long)]
        watch: bool,
    },
}

/// `--wait` and its `--timeout`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until the rollout is over, with progress on stderr when it is a terminal (completed or rolled back; a
    /// paused one fails with its message).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = SERVICE_WAIT_TIMEOUT_S, value_name = "SECONDS")]
    pub timeout: u64,
}

/// How a changed template rolls out (`"update"` of the spec); only what is given is sent.
#[derive(Debug, Args, Default)]
pub struct UpdateFlags {
    /// Tasks replaced at a time (0: all at once) [default: 1].
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u32>,
    /// Wait between batches: 10s, 1m [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// stop-first or start-first [default: stop-first].
    #[arg(long, value_name = "ORDER", value_parser = ["stop-first", "start-first"])]
    pub update_order: Option<String>,
    /// What too many failed new tasks do: pause or rollback [default: pause].
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "rollback"])]
    pub update_failure_action: Option<String>,
    /// Share of new tasks that may fail, 0 to 1 [default: 0].
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,
    /// How long a new task must run (and pass its health check) to count as updated: 5s
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_min_healthy: Option<Duration>,
}

/// What a task runs with, as flags: shared by `cube run` and `cube service create`, which
/// both turn them into a task template with [`task_template`].
#[derive(Debug, Args, Default)]
pub struct TaskFlags {
    /// Publish a container port: PORT[/PROTO] on a host port the worker picks, or
    /// HOST_PORT:PORT[/PROTO] on that one.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// An environment variable, KEY=VALUE.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Cores to reserve for each task.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory to reserve (and limit) for each task: bytes, or with k, m or g (64m).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// An HTTP path checked on the first published port (/health).
    #[arg(long, value_name = "PATH")]
    pub health: Option<String>,
    /// never, on-failure or always.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// A node label the node must have (zone==a) or lack (disk!=hdd).
    #[arg(long, value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// A node label whose values the tasks are spread over evenly.
    #[arg(long, value_name = "LABEL")]
    pub spread_by: Option<String>,
    /// A volume: SOURCE:TARGET[:ro] (a named volume or an allowed host path).
    #[arg(long, value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The service's name: lower-case letters, digits and '-' (its tasks are NAME.SLOT).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// The image to run.
    #[arg(required_unless_present = "file")]
    pub image: Option<String>,
    /// The command and its arguments (put `--` before it when a word starts with '-').
    pub cmd: Vec<String>,
    /// A JSON spec (a POST /services body); the flags given change it.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tasks to keep running [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// replicated (N tasks wherever they fit) or global (one on each node).
    #[arg(long, value_parser = ["replicated", "global"])]
    pub mode: Option<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    #[command(flatten)]
    pub update: UpdateFlags,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The service's name.
    pub name: String,
    /// A new image: rolls out.
    #[arg(long)]
    pub image: Option<String>,
    /// Tasks to keep running.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Set an environment variable, KEY=VALUE (the others stay): rolls out.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub update: UpdateFlags,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Run `cube service …`.
pub async fn run(client: &Client, args: ServiceArgs) -> Result<(), CliError> {
    match args.action {
        ServiceAction::Create(args) => create(client, *args).await,
        ServiceAction::Ls => list(client).await,
        ServiceAction::Ps { name } => tasks(client, &name).await,
        ServiceAction::Inspect { name } => {
            let view: Value = client.get(&service_path(&name)?).await?;
            let json = serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(())
        }
        ServiceAction::Scale { targets } => scale(client, &targets).await,
        ServiceAction::Update(args) => update(client, args).await,
        ServiceAction::Rollback { name, wait } => {
            let path = format!("{}/rollback", service_path(&name)?);
            let view: ServiceView = client.post(&path, Vec::new()).await?;
            println!("{}", view.name);
            follow(client, &view.name, Goal::Rollback, &wait).await
        }
        ServiceAction::Rm { names } => remove(client, &names).await,
        ServiceAction::Endpoints { name, watch } => endpoints(client, &name, watch).await,
    }
}

/// `/services/{name}`, the name checked first so that a typo is not sent.
fn service_path(name: &str) -> Result<String, String> {
    check_name(name)?;
    Ok(format!("/services/{name}"))
}

/// `64m` → 67108864: bytes, or a number with k, m, g or t (1k = 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let refuse =
        || format!("{text:?} is not a size; expected bytes, or a number with k, m or g, e.g. 64m");
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is too large a size"))
}

/// `-p`: `80` and `80/udp` expose a port (the worker picks the host port); `8080:80` binds it
/// to host port 8080. Adds to `exposed_ports` or `port_bindings` of `task`.
fn publish(task: &mut Map<String, Value>, spec: &str) -> Result<(), String> {
    let refuse = || {
        format!("-p {spec:?}: expected PORT[/PROTO] or HOST_PORT:PORT[/PROTO], e.g. 80 or 8080:80")
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (host, container) = match spec.split_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, spec),
    };
    let (number, proto) = container.split_once('/').unwrap_or((container, "tcp"));
    if port(number).is_none() || proto.is_empty() {
        return Err(refuse());
    }
    let key = format!("{number}/{proto}");
    match host {
        None => push(task, "exposed_ports", Value::String(key)),
        Some(host) => {
            port(host).ok_or_else(refuse)?;
            let bindings = task
                .entry("port_bindings")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(b) = bindings {
                b.insert(key, Value::String(host.to_string()));
            }
        }
    }
    Ok(())
}

/// Append `value` to the array at `key` of `map`.
fn push(map: &mut Map<String, Value>, key: &str, value: Value) {
    let list = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = list {
        items.push(value);
    }
}

/// `KEY=VALUE`, checked.
fn env_entry(entry: &str) -> Result<(&str, &str), String> {
    match entry.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key, value)),
        _ => Err(format!(
            "-e {entry:?}: expected KEY=VALUE, e.g. -e GREETING=hello"
        )),
    }
}

/// The `update` object of what `flags` give (empty when none is given).
fn update_object(flags: &UpdateFlags) -> Result<Map<String, Value>, String> {
    let mut u = Map::new();
    if let Some(p) = flags.update_parallelism {
        u.insert("parallelism".into(), p.into());
    }
    if let Some(d) = flags.update_delay {
        u.insert("delay_s".into(), d.as_secs().into());
    }
    if let Some(o) = &flags.update_order {
        u.insert("order".into(), o.as_str().into());
    }
    if let Some(a) = &flags.update_failure_action {
        u.insert("failure_action".into(), a.as_str().into());
    }
    if let Some(r) = flags.update_max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(format!(
                "--update-max-failure-ratio {r}: expected a share from 0 to 1, e.g. 0.25"
            ));
        }
        u.insert("max_failure_ratio".into(), r.into());
    }
    if let Some(m) = flags.update_min_healthy {
        u.insert("min_healthy_s".into(), m.as_secs().into());
    }
    Ok(u)
}

/// Add what `flags` give to the task template `task` (a POST /tasks task, a service's
/// `task`), in the API's field names.
pub fn task_template(task: &mut Map<String, Value>, flags: &TaskFlags) -> Result<(), String> {
    for entry in &flags.env {
        env_entry(entry)?;
        push(task, "env", entry.as_str().into());
    }
    if let Some(cpu) = flags.cpu {
        task.insert("cpu".into(), cpu.into());
    }
    if let Some(memory) = flags.memory {
        task.insert("memory".into(), memory.into());
    }
    for p in &flags.publish {
        publish(task, p)?;
    }
    if let Some(path) = &flags.health {
        task.insert("health_check".into(), path.as_str().into());
    }
    if let Some(policy) = &flags.restart {
        task.insert("restart_policy".into(), policy.as_str().into());
    }
    for c in &flags.constraint {
        push(task, "constraints", c.as_str().into());
    }
    if let Some(label) = &flags.spread_by {
        task.insert("spread_by".into(), label.as_str().into());
    }
    for v in &flags.volume {
        push(task, "volumes", v.as_str().into());
    }
    Ok(())
}

/// The body of `POST /services` that `cube service create` sends: the file's spec (if any)
/// with what the flags give merged over it.
pub fn create_body(args: &CreateArgs, file: Option<Value>) -> Result<Value, String> {
    let mut task = Map::new();
    if let Some(image) = &args.image {
        task.insert("image".into(), image.as_str().into());
    }
    if !args.cmd.is_empty() {
        task.insert("cmd".into(), json!(args.cmd));
    }
    task_template(&mut task, &args.task)?;
    let mut flags = Map::new();
    if let Some(name) = &args.name {
        check_name(name)?;
        flags.insert("name".into(), name.as_str().into());
    }
    if let Some(mode) = &args.mode {
        flags.insert("mode".into(), mode.as_str().into());
    }
    if let Some(replicas) = args.replicas {
        flags.insert("replicas".into(), replicas.into());
    }
    if !task.is_empty() {
        flags.insert("task".into(), Value::Object(task));
    }
    let update = update_object(&args.update)?;
    if !update.is_empty() {
        flags.insert("update".into(), Value::Object(update));
    }
    let Some(mut spec) = file else {
        return Ok(Value::Object(flags));
    };
    if !spec.is_object() {
        return Err("the spec file is not a JSON object; expected a POST /services body, e.g. {\"name\": \"web\", \"replicas\": 3, \"task\": {\"image\": \"cube-demo/busybox:latest\"}}".into());
    }
    merge_patch(&mut spec, &Value::Object(flags));
    Ok(spec)
}

/// The merge patch `cube service update` sends; `env` is the service's current environment,
/// which `-e` entries change by key. `None` when no flag asks for a change.
pub fn update_patch(args: &UpdateArgs, env: &[String]) -> Result<Option<Value>, String> {
    let mut patch = Map::new();
    let mut task = Map::new();
    if let Some(image) = &args.image {
        task.insert("image".into(), image.as_str().into());
    }
    if !args.env.is_empty() {
        // A merge patch replaces a list whole: send the current one with these set.
        let mut merged: Vec<String> = env.to_vec();
        for entry in &args.env {
            let (key, _) = env_entry(entry)?;
            let prefix = format!("{key}=");
            match merged.iter_mut().find(|e| e.starts_with(&prefix)) {
                Some(existing) => *existing = entry.clone(),
                None => merged.push(entry.clone()),
            }
        }
        task.insert("env".into(), json!(merged));
    }
    if !task.is_empty() {
        patch.insert("task".into(), Value::Object(task));
    }
    if let Some(replicas) = args.replicas {
        patch.insert("replicas".into(), replicas.into());
    }
    let update = update_object(&args.update)?;
    if !update.is_empty() {
        patch.insert("update".into(), Value::Object(update));
    }
    Ok((!patch.is_empty()).then_some(Value::Object(patch)))
}

/// `web=5` → `("web", 5)`.
pub fn scale_target(target: &str) -> Result<(&str, u32), String> {
    let refuse = || format!("{target:?}: expected NAME=REPLICAS, e.g. web=5");
    let (name, n) = target.split_once('=').ok_or_else(refuse)?;
    check_name(name)?;
    let n = n.trim().parse::<u32>().map_err(|_| refuse())?;
    Ok((name, n))
}

async fn create(client: &Client, args: CreateArgs) -> Result<(), CliError> {
    let file = args
        .file
        .as_deref()
        .map(super::read_json_file)
        .transpose()?;
    let body = create_body(&args, file)?;
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let view: ServiceView = client.post("/services", body).await?;
    println!("{}", view.name);
    follow(client, &view.name, Goal::Running, &args.wait).await
}

async fn update(client: &Client, args: UpdateArgs) -> Result<(), CliError> {
    let path = service_path(&args.name)?;
    let env = if args.env.is_empty() {
        Vec::new()
    } else {
        let view: ServiceView = client.get(&path).await?;
        string_list(&view.task["env"])
    };
    let patch = update_patch(&args, &env)?.ok_or_else(|| {
        "nothing to change: give --image, --replicas, -e or an --update-* flag".to_string()
    })?;
    let body = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
    let view: ServiceView = client.patch(&path, body).await?;
    println!("{}", view.name);
    follow(client, &view.name, Goal::Rollout, &args.wait).await
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn scale(client: &Client, targets: &[String]) -> Result<(), CliError> {
    // Check every target before changing any.
    let targets = targets
        .iter()
        .map(|t| scale_target(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut failed = 0;
    for (name, replicas) in targets {
        let body =
            serde_json::to_vec(&json!({ "replicas": replicas })).map_err(|e| e.to_string())?;
        match client
            .patch::<ServiceView>(&format!("/services/{name}"), body)
            .await
        {
            Ok(_) => println!("{name} scaled to {replicas}"),
            Err(e) => {
                eprintln!("cube: {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of the services could not be scaled").into());
    }
    Ok(())
}

async fn remove(client: &Client, names: &[String]) -> Result<(), CliError> {
    let mut failed = 0;
    for name in names {
        let done = match service_path(name) {
            Ok(path) => client.delete_empty(&path).await,
            Err(e) => Err(CliError::Usage(e)),
        };
        match done {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("cube: {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of the services could not be removed").into());
    }
    Ok(())
}

/// What `ls` shows of a rollout: its state, or that the service is being deleted.
fn rollout_column(view: &ServiceView) -> String {
    if view.removing {
        "removing".into()
    } else {
        view.rollout.state.to_string()
    }
}

async fn list(client: &Client) -> Result<(), CliError> {
    let services: Vec<ServiceView> = client.get("/services").await?;
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header(["NAME", "MODE", "REPLICAS", "VERSION", "ROLLOUT", "IMAGE"]);
    for s in &services {
        table.add_row([
            s.name.clone(),
            serde_json::to_value(s.mode)
                .ok()
                .and_then(|m| m.as_str().map(str::to_string))
                .unwrap_or_default(),
            format!("{}/{}", s.running, s.desired),
            s.version.to_string(),
            rollout_column(s),
            s.task["image"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn tasks(client: &Client, name: &str) -> Result<(), CliError> {
    // The service first: an unknown name is an error, not an empty list.
    let path = service_path(name)?;
    let _: ServiceView = client.get(&path).await?;
    let limit = crate::http::manager::MAX_LIST_LIMIT;
    let mut tasks: Vec<Task> = client
        .get_pages(&format!("/tasks?service={name}&limit={limit}"))
        .await?;
    // By slot, the newest task first: each slot's history reads down.
    tasks.sort_by_key(|t| (t.slot, std::cmp::Reverse(t.created_at)));
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header(["ID", "NAME", "VERSION", "STATE", "NODE", "ERROR"]);
    for t in &tasks {
        table.add_row([
            t.id.to_string(),
            t.name.clone(),
            t.version.to_string(),
            t.state.to_string(),
            t.worker.clone().unwrap_or_else(|| "-".into()),
            t.error.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn endpoints(client: &Client, name: &str, watch: bool) -> Result<(), CliError> {
    let path = format!("{}/endpoints", service_path(name)?);
    let mut answer: Endpoints = client.get(&path).await?;
    print_endpoints(&answer, false)?;
    if !watch {
        return Ok(());
    }
    loop {
        let next: Endpoints = client
            .get_waiting(
                &format!("{path}?index={}&wait={WATCH_WAIT_S}", answer.index),
                Duration::from_secs(WATCH_WAIT_S + 30),
            )
            .await?;
        if next.index != answer.index {
            print_endpoints(&next, true)?;
        }
        answer = next;
    }
}

/// Print a list of endpoints; an error once stdout is gone (a reader that stopped), which
/// ends a watch.
fn print_endpoints(answer: &Endpoints, separate: bool) -> Result<(), String> {
    use std::io::Write;
    let mut text = String::new();
    if separate {
        text.push('\n');
    }
    for e in &answer.endpoints {
        text.push_str(&e.address);
        text.push('\n');
    }
    // A watcher reads each list as it comes.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the endpoints: {e}"))
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// A new service: every desired task runs.
    Running,
    /// A change: the rollout completed (a rollback by itself is a failure, as
    /// `docker service update` says).
    Rollout,
    /// A rollback asked for: it is over.
    Rollback,
}

/// Where a wait stands: `None` to go on, or its end.
fn wait_outcome(view: &ServiceView, goal: Goal) -> Option<Result<(), String>> {
    let all_run = view.running_current >= view.desired;
    let why = view.rollout.message.as_deref().unwrap_or("no reason given");
    match view.rollout.state {
        RolloutState::Paused => Some(Err(format!("{}: rollout paused: {why}", view.name))),
        RolloutState::RolledBack if all_run && goal == Goal::Rollout => Some(Err(format!(
            "{}: the update was rolled back to version {}: {why}",
            view.name, view.version
        ))),
        RolloutState::Completed | RolloutState::RolledBack if all_run => Some(Ok(())),
        _ => None,
    }
}

/// One line of progress.
fn progress(view: &ServiceView, goal: Goal) -> String {
    match goal {
        Goal::Running if view.rollout.state == RolloutState::Completed => format!(
            "{}: {}/{} running",
            view.name, view.running_current, view.desired
        ),
        _ => format!(
            "{}: {}/{} updated, rollout {}",
            view.name, view.updated, view.desired, view.rollout.state
        ),
    }
}

/// With `--wait`, print progress on stderr until the rollout is over.
async fn follow(client: &Client, name: &str, goal: Goal, wait: &WaitArgs) -> Result<(), CliError> {
    if !wait.wait {
        return Ok(());
    }
    let path = format!("/services/{name}");
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let mut last = String::new();
    // Progress is for a person watching; a script reads the exit code.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let view: ServiceView = client.get(&path).await?;
        let line = progress(&view, goal);
        if line != last {
            if terminal {
                eprintln!("{line}");
            }
            last = line;
        }
        if let Some(outcome) = wait_outcome(&view, goal) {
            return outcome.map_err(CliError::Failed);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name}: still {} after {} s",
                last.split_once(": ").map_or(last.as_str(), |(_, s)| s),
                wait.timeout
            )
            .into());
        }
        actix_web::rt::time::sleep(WAIT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn action(args: &[&str]) -> ServiceAction {
        let mut argv = vec!["cube", "service"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Service(s),
                ..
            }) => s.action,
            Ok(other) => panic!("not a service command: {other:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut argv = vec!["create"];
        argv.extend_from_slice(args);
        match action(&argv) {
            ServiceAction::Create(c) => *c,
            other => panic!("not create: {other:?}"),
        }
    }

    #[test]
    fn create_maps_every_flag_to_the_spec() {
        let args = create_args(&[
            "web",
            "cube-demo/busybox:latest",
            "httpd",
            "--replicas",
            "4",
            "-p",
            "8080",
            "-p",
            "9000:53/udp",
            "-e",
            "A=1",
            "-e",
            "B=x=y",
            "--cpu",
            "0.25",
            "--memory",
            "32m",
            "--health",
            "/",
            "--restart",
            "always",
            "--constraint",
            "zone==a",
            "--spread-by",
            "zone",
            "--volume",
            "data:/data:ro",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--update-max-failure-ratio",
            "0.5",
            "--update-min-healthy",
            "1m",
            "--wait",
        ]);
        assert!(args.wait.wait);
        let body = create_body(&args, None).expect("valid");
        assert_eq!(
            body,
            json!({
                "name": "web",
                "replicas": 4,
                "task": {
                    "image": "cube-demo/busybox:latest",
                    "cmd": ["httpd"],
                    "env": ["A=1", "B=x=y"],
                    "cpu": 0.25,
                    "memory": 32 << 20,
                    "exposed_ports": ["8080/tcp"],
                    "port_bindings": {"53/udp": "9000"},
                    "health_check": "/",
                    "restart_policy": "always",
                    "constraints": ["zone==a"],
                    "spread_by": "zone",
                    "volumes": ["data:/data:ro"],
                },
                "update": {
                    "parallelism": 2,
                    "delay_s": 10,
                    "order": "start-first",
                    "failure_action": "rollback",
                    "max_failure_ratio": 0.5,
                    "min_healthy_s": 60,
                },
            })
        );
    }

    #[test]
    fn flags_after_the_command_are_flags_and_dashes_need_a_separator() {
        let args = create_args(&[
            "web",
            "cube-sim/task",
            "sleep",
            "1000",
            "--replicas",
            "3",
            "--wait",
        ]);
        assert_eq!(args.cmd, ["sleep", "1000"]);
        assert_eq!(args.replicas, Some(3));
        assert!(args.wait.wait);
        let args = create_args(&["web", "img", "--mode", "global", "--", "sh", "-c", "exit 1"]);
        assert_eq!(args.cmd, ["sh", "-c", "exit 1"]);
        let body = create_body(&args, None).expect("valid");
        assert_eq!(
            body,
            json!({"name": "web", "mode": "global", "task": {"image": "img", "cmd": ["sh", "-c", "exit 1"]}})
        );
    }

    #[test]
    fn a_spec_file_is_the_base_and_flags_change_it() {
        let args = create_args(&["-f", "web.json", "--replicas", "2", "-e", "A=1"]);
        let file = json!({
            "name": "web",
            "replicas": 5,
            "task": {"image": "i", "cmd": ["sleep", "9"], "env": ["Z=0"]},
            "update": {"parallelism": 3},
        });
        let body = create_body(&args, Some(file)).expect("valid");
        assert_eq!(
            body,
            json!({
                "name": "web",
                "replicas": 2,
                "task": {"image": "i", "cmd": ["sleep", "9"], "env": ["A=1"]},
                "update": {"parallelism": 3},
            })
        );
        assert!(create_body(&args, Some(json!([1]))).is_err());
        // Without a file, the name and the image are needed.
        assert!(Cli::try_parse_from(["cube", "service", "create", "web"]).is_err());
    }

    #[test]
    fn bad_create_flags_say_what_is_expected() {
        for (argv, says) in [
            (&["Web", "i"][..], "not a service name"),
            (&["web", "i", "-p", "http"], "expected PORT"),
            (&["web", "i", "-p", "0"], "expected PORT"),
            (&["web", "i", "-p", "x:80"], "expected PORT"),
            (&["web", "i", "-e", "NOVALUE"], "KEY=VALUE"),
            (
                &["web", "i", "--update-max-failure-ratio", "2"],
                "from 0 to 1",
            ),
        ] {
            let err = create_body(&create_args(argv), None).expect_err(says);
            assert!(err.contains(says), "{argv:?}: {err}");
        }
        for bad in [
            &["web", "i", "--memory", "lots"][..],
            &["web", "i", "--update-delay", "soon"],
            &["web", "i", "--update-order", "sideways"],
            &["web", "i", "--mode", "both"],
        ] {
            let mut argv = vec!["cube", "service", "create"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    fn update_args(args: &[&str]) -> UpdateArgs {
        let mut argv = vec!["update"];
        argv.extend_from_slice(args);
        match action(&argv) {
            ServiceAction::Update(u) => u,
            other => panic!("not update: {other:?}"),
        }
    }

    #[test]
    fn update_patches_only_what_is_given() {
        let args = update_args(&["web", "--image", "i:2", "--update-min-healthy", "1s"]);
        assert_eq!(
            update_patch(&args, &[]).expect("valid"),
            Some(json!({"task": {"image": "i:2"}, "update": {"min_healthy_s": 1}}))
        );
        let args = update_args(&["web", "--replicas", "0"]);
        assert_eq!(
            update_patch(&args, &[]).expect("valid"),
            Some(json!({"replicas": 0}))
        );
        // -e sets one variable and keeps the others: a merge patch replaces a list whole.
        let args = update_args(&["web", "-e", "B=2", "-e", "C=3"]);
        let env = ["A=1".to_string(), "B=1".to_string()];
        assert_eq!(
            update_patch(&args, &env).expect("valid"),
            Some(json!({"task": {"env": ["A=1", "B=2", "C=3"]}}))
        );
        assert_eq!(
            update_patch(&update_args(&["web", "--wait"]), &[]),
            Ok(None)
        );
    }

    #[test]
    fn scale_takes_name_equals_replicas() {
        assert_eq!(scale_target("web=5"), Ok(("web", 5)));
        for bad in ["web", "web=", "web=-1", "Web=2", "=3", "web=many"] {
            assert!(scale_target(bad).is_err(), "{bad}");
        }
        match action(&["scale", "web=5", "api=0"]) {
            ServiceAction::Scale { targets } => assert_eq!(targets, ["web=5", "api=0"]),
            other => panic!("not scale: {other:?}"),
        }
        assert!(Cli::try_parse_from(["cube", "service", "scale"]).is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        for bad in ["", "m", "1.5g", "-1", "99999999999999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    fn view(state: RolloutState, running_current: usize, desired: usize) -> ServiceView {
        let now = chrono::Utc::now();
        ServiceView {
            name: "web".into(),
            mode: crate::service::Mode::Replicated,
            replicas: desired as u32,
            desired,
            running: running_current,
            running_current,
            version: 2,
            previous_version: Some(1),
            task: json!({"image": "i"}),
            update: Default::default(),
            rollout: crate::service::Rollout {
                state,
                message: Some("2 of 4 new tasks failed".into()),
                ..Default::default()
            },
            updated: running_current,
            versions: Vec::new(),
            removing: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_wait_ends_when_the_rollout_is_over() {
        let r = Goal::Rollout;
        assert_eq!(wait_outcome(&view(RolloutState::Updating, 2, 4), r), None);
        assert_eq!(wait_outcome(&view(RolloutState::Completed, 3, 4), r), None);
        assert_eq!(
            wait_outcome(&view(RolloutState::Completed, 4, 4), r),
            Some(Ok(()))
        );
        assert_eq!(
            wait_outcome(&view(RolloutState::RolledBack, 4, 4), Goal::Rollback),
            Some(Ok(()))
        );
        let Some(Err(back)) = wait_outcome(&view(RolloutState::RolledBack, 4, 4), r) else {
            panic!("an update rolled back by itself is a failure");
        };
        assert!(back.contains("rolled back"), "{back}");
        let Some(Err(paused)) = wait_outcome(&view(RolloutState::Paused, 2, 4), r) else {
            panic!("a paused rollout ends the wait");
        };
        assert!(
            paused.contains("paused: 2 of 4 new tasks failed"),
            "{paused}"
        );
        assert_eq!(
            progress(&view(RolloutState::Updating, 2, 4), Goal::Rollout),
            "web: 2/4 updated, rollout updating"
        );
        assert_eq!(
            progress(&view(RolloutState::Completed, 1, 3), Goal::Running),
            "web: 1/3 running"
        );
    }
}
