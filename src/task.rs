//! The task model: what a user asks Cube to run, the states it goes through, and the input
//! formats Cube accepts for it.
//!
//! This module is pure (no I/O) and owns three contracts (ARCHITECTURE.md §10, README
//! "Contracts"):
//! - [`Task`] and its snake_case JSON, the one shape the manager, the worker, the store and the
//!   CLI all use;
//! - [`State`] and [`check_transition`], the whole transition table in one function;
//! - [`parse_submission`], which turns a request body (a TaskEvent or a bare task, in Cube's own
//!   snake_case or in the PascalCase of task files written for the Go Cube) into a validated
//!   [`TaskEvent`], with errors that name the field and say what is expected.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::constraint::Constraint;
use crate::volume::Volume;

/// Restarts allowed when a task says nothing (what the Go Cube did).
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// Seconds between SIGTERM and SIGKILL when a task is stopped and says nothing.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 5;
/// Longest stop timeout a task may ask for; longer would make a stop look like a hang.
pub const MAX_STOP_TIMEOUT_S: u64 = 3600;
/// Processes a task's container may run unless it says otherwise: enough for any real service,
/// few enough that a fork bomb stops there.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// Most processes a task may ask for.
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;
/// Earlier attempts a task's record keeps ([`Task::attempts`]): enough to see a crash loop or a
/// move, few enough that a task restarted forever keeps a record of bounded size.
pub const MAX_ATTEMPTS_KEPT: usize = 10;

/// Where a task is in its life. Serialized as its name; the Go Cube's integers 0..4 are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum State {
    /// Accepted and durable, not yet placed on a worker (or waiting for room).
    Pending,
    /// Placed on a worker, which is starting its container.
    Scheduled,
    /// Its container runs.
    Running,
    /// Ended with exit code 0 or stopped by a user: final.
    Completed,
    /// Ended otherwise (non-zero exit, OOM kill, could not start); the restart policy may retry.
    Failed,
}

impl State {
    /// Every state, in the Go Cube's integer order.
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Scheduled,
        State::Running,
        State::Completed,
        State::Failed,
    ];

    /// How many states there are.
    pub const COUNT: usize = 5;

    /// The state's place in [`State::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The state's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::Scheduled => "Scheduled",
            State::Running => "Running",
            State::Completed => "Completed",
            State::Failed => "Failed",
        }
    }

    /// Completed or Failed: the container, if any, has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, State::Completed | State::Failed)
    }

    /// Scheduled or Running: a container exists or is being made for the current attempt.
    pub fn is_active(self) -> bool {
        matches!(self, State::Scheduled | State::Running)
    }

    /// Parse a state name, ignoring case (`running`, `Running`).
    pub fn parse(s: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

/// The JSON of a state is its name (the Go Cube's integers are accepted on input only).
impl utoipa::PartialSchema for State {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(State::ALL.map(State::as_str)))
            .description(Some(
                "Where a task is in its life: Pending → Scheduled → Running → Completed | Failed.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for State {}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<State, D::Error> {
        struct StateVisitor;
        impl Visitor<'_> for StateVisitor {
            type Value = State;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state: Pending, Scheduled, Running, Completed, Failed, or 0..4")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<State, E> {
                State::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<State, E> {
                usize::try_from(v)
                    .ok()
                    .and_then(|i| State::ALL.get(i).copied())
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<State, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(StateVisitor)
        } else {
            // Binary forms (the store's records) hold the variant's index.
            d.deserialize_u32(StateVisitor)
        }
    }
}

/// A move the transition table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: State,
    pub to: State,
}

/// The whole transition table (ARCHITECTURE.md §10). Staying in the same state is not a
/// transition.
pub fn check_transition(from: State, to: State) -> Result<(), TransitionError> {
    use State::*;
    let allowed = match from {
        Pending => matches!(to, Scheduled | Completed | Failed),
        Scheduled => matches!(to, Running | Failed | Pending | Completed),
        Running => matches!(to, Completed | Failed | Scheduled),
        Failed => matches!(to, Scheduled | Completed),
        Completed => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

/// What to do when a task's container ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Restart after a failure (non-zero exit, OOM kill, failed health checks), up to `max_restarts`.
    #[default]
    OnFailure,
    /// Restart whenever the container ends, up to `max_restarts`, until a user stops the task.
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    /// Parse Cube's names and Docker's (`no`, `unless-stopped`, `on-failure:N`); `""` is the
    /// default. Returns the policy and the restart limit when the text carries one.
    pub fn parse(s: &str) -> Option<(RestartPolicy, Option<u32>)> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(n) = s.strip_prefix("on-failure:") {
            return n.parse().ok().map(|n| (RestartPolicy::OnFailure, Some(n)));
        }
        let policy = match s.as_str() {
            "" | "on-failure" | "on_failure" | "onfailure" => RestartPolicy::OnFailure,
            "never" | "no" | "none" => RestartPolicy::Never,
            "always" | "unless-stopped" => RestartPolicy::Always,
            _ => return None,
        };
        Some((policy, None))
    }
}

/// The JSON of a policy is its name; input also takes Docker's names (see [`RestartPolicy::parse`]).
impl utoipa::PartialSchema for RestartPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let all = [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ];
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(all.map(RestartPolicy::as_str)))
            .description(Some("What to do when the task's container ends."))
            .into()
    }
}

impl utoipa::ToSchema for RestartPolicy {}

impl Serialize for RestartPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RestartPolicy, D::Error> {
        let s = String::deserialize(d)?;
        RestartPolicy::parse(&s).map(|(p, _)| p).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown restart policy {s:?}; expected never, on-failure or always"
            ))
        })
    }
}

/// One task: the user's spec plus what Cube knows of its current attempt. This is the JSON of
/// README's "Contracts", used unchanged by the HTTP APIs, the store and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub name: String,
    /// The service the task belongs to, if any (its name is then `<service>.<slot>`).
    #[serde(default)]
    pub service: Option<String>,
    /// The version of the service's template it runs (0 outside services).
    #[serde(default)]
    pub version: u64,
    /// Its slot in a replicated service, 1..=replicas, kept by a replacement (0 otherwise).
    #[serde(default)]
    pub slot: u32,
    pub state: State,
    /// Placement number: every placement (start, restart, move) gets the next one. Containers
    /// carry it as a label so reports about an older attempt can be recognised and ignored.
    #[serde(default)]
    pub attempt: u32,
    pub image: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Cores reserved; 0 means no reservation.
    #[serde(default)]
    pub cpu: f64,
    /// Bytes of memory reserved (and the container's limit); 0 means none.
    #[serde(default)]
    pub memory: u64,
    /// Bytes of disk reserved; 0 means none.
    #[serde(default)]
    pub disk: u64,
    /// Container ports, `"8080/tcp"`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Container port → the host port asked for.
    #[serde(default)]
    pub port_bindings: BTreeMap<String, String>,
    /// Container port → the host port actually bound, while it runs.
    #[serde(default)]
    pub host_ports: BTreeMap<String, String>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Restarts made under the restart policy (moves after a node loss do not count).
    #[serde(default)]
    pub restart_count: u32,
    /// HTTP path checked on the first exposed port.
    #[serde(default)]
    pub health_check: Option<String>,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_s: u64,
    /// Most processes the container may run at once.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: u64,
    /// Node labels a node must have (`zone==a`) or lack (`zone!=b`) to run it.
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["zone==a"]))]
    pub constraints: Vec<Constraint>,
    /// Spread a service's tasks evenly over the values of this node label.
    #[serde(default)]
    pub spread_by: Option<String>,
    /// Volumes to mount: named Docker volumes, or host paths a worker allows.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// What the user wants: `running` until a stop is asked for, then `stopped`. A task whose
    /// stop is not carried out yet is still `Running` with `desired: "stopped"`.
    #[serde(default)]
    pub desired: Goal,
    /// Name of the worker the current attempt is placed on.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why the task is not running as asked: a failed start, an exit, no room anywhere.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(with = "stamp")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "stamp::optional")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, with = "stamp::optional")]
    pub finish_time: Option<DateTime<Utc>>,
    /// The attempts before the current one, oldest first: the last 10 (`MAX_ATTEMPTS_KEPT`) the
    /// manager gave up (ended and restarted, or moved off a lost or draining node). The current
    /// attempt is the task's own fields. A worker's copy has none.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// An earlier attempt of a task, as it was when the manager gave it up for a restart or a move:
/// the task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// Its placement number.
    pub attempt: u32,
    /// The worker it was placed on.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// How it ended: Completed or Failed, or Scheduled or Running when it was given up (its
    /// node was lost or drained).
    pub state: State,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default, with = "stamp::optional")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, with = "stamp::optional")]
    pub finish_time: Option<DateTime<Utc>>,
    /// When the manager gave it up: a restart or move began, or its node was lost or drained.
    #[serde(with = "stamp")]
    pub ended_at: DateTime<Utc>,
}

impl Attempt {
    /// The task's current attempt, given up at `ended_at`; none before its first placement.
    pub fn of(task: &Task, ended_at: DateTime<Utc>) -> Option<Attempt> {
        if task.attempt == 0 {
            return None;
        }
        let state = match task.state {
            // Completed is final, so an `always` task whose container exited 0 waits for its
            // restart in Pending: the attempt itself completed.
            State::Pending if task.finish_time.is_some() => State::Completed,
            state => state,
        };
        Some(Attempt {
            attempt: task.attempt,
            worker: task.worker.clone(),
            container_id: task.container_id.clone(),
            state,
            exit_code: task.exit_code,
            error: task.error.clone(),
            start_time: task.start_time,
            finish_time: task.finish_time,
            ended_at,
        })
    }
}

/// A task's times: RFC 3339 text in JSON, and seconds and nanoseconds since the epoch in binary
/// forms (the store's records), where parsing a million dates' text was a fifth of a restart.
pub(crate) mod stamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

    fn parts(t: &DateTime<Utc>) -> (i64, u32) {
        (t.timestamp(), t.timestamp_subsec_nanos())
    }

    fn from_parts<E: de::Error>((secs, nanos): (i64, u32)) -> Result<DateTime<Utc>, E> {
        DateTime::from_timestamp(secs, nanos)
            .ok_or_else(|| E::custom(format!("no such time: {secs} s and {nanos} ns")))
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            t.serialize(s)
        } else {
            parts(t).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::deserialize(d)
        } else {
            from_parts(Deserialize::deserialize(d)?)
        }
    }

    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                t.serialize(s)
            } else {
                t.as_ref().map(parts).serialize(s)
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            if d.is_human_readable() {
                Option::deserialize(d)
            } else {
                Option::<(i64, u32)>::deserialize(d)?
                    .map(from_parts)
                    .transpose()
            }
        }
    }
}

/// The record the manager's and the workers' stores keep of a task. Versions 2 to 4 are binary
/// (a store holds millions of them: a third of the JSON's bytes, and recovery decodes them
/// several times faster); versions 0 and 1 were the API's JSON. Version 3 added the service
/// fields, constraints, `spread_by` and volumes; version 4 the history of earlier attempts
/// (`attempts`, empty when read from an older version). Adding, removing or reordering a field of
/// [`Task`], or a variant of [`State`] or [`Goal`] (written by index; [`RestartPolicy`] is
/// written by name), changes the binary shape: give it a new version and read the old one in
/// `upgrade` (the pinned layout test says so).
impl crate::db::Record for Task {
    const VERSION: u8 = 4;
    const ENCODING: crate::db::Encoding = crate::db::Encoding::Binary;

    fn upgrade(version: u8, bytes: &[u8]) -> Result<Task, String> {
        match version {
            0 | 1 => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            2 => postcard::from_bytes::<TaskV2>(bytes)
                .map(Task::from)
                .map_err(|e| format!("not a version 2 task record ({e})")),
            3 => postcard::from_bytes::<TaskV3>(bytes)
                .map(Task::from)
                .map_err(|e| format!("not a version 3 task record ({e})")),
            v => Err(format!(
                "schema version {v} is not one this build reads (it writes {})",
                Self::VERSION
            )),
        }
    }
}

/// The binary shape of a version 2 task record: [`Task`] before services, constraints and
/// volumes. Kept only to read old stores.
#[derive(Deserialize)]
struct TaskV2 {
    id: Uuid,
    name: String,
    state: State,
    attempt: u32,
    image: String,
    cmd: Vec<String>,
    env: Vec<String>,
    cpu: f64,
    memory: u64,
    disk: u64,
    exposed_ports: Vec<String>,
    port_bindings: BTreeMap<String, String>,
    host_ports: BTreeMap<String, String>,
    restart_policy: RestartPolicy,
    max_restarts: u32,
    restart_count: u32,
    health_check: Option<String>,
    stop_timeout_s: u64,
    pids_limit: u64,
    desired: Goal,
    worker: Option<String>,
    container_id: Option<String>,
    exit_code: Option<i64>,
    error: Option<String>,
    #[serde(with = "stamp")]
    created_at: DateTime<Utc>,
    #[serde(with = "stamp::optional")]
    start_time: Option<DateTime<Utc>>,
    #[serde(with = "stamp::optional")]
    finish_time: Option<DateTime<Utc>>,
}

impl From<TaskV2> for Task {
    fn from(t: TaskV2) -> Task {
        Task {
            id: t.id,
            name: t.name,
            service: None,
            version: 0,
            slot: 0,
            state: t.state,
            attempt: t.attempt,
            image: t.image,
            cmd: t.cmd,
            env: t.env,
            cpu: t.cpu,
            memory: t.memory,
            disk: t.disk,
            exposed_ports: t.exposed_ports,
            port_bindings: t.port_bindings,
            host_ports: t.host_ports,
            restart_policy: t.restart_policy,
            max_restarts: t.max_restarts,
            restart_count: t.restart_count,
            health_check: t.health_check,
            stop_timeout_s: t.stop_timeout_s,
            pids_limit: t.pids_limit,
            constraints: Vec::new(),
            spread_by: None,
            volumes: Vec::new(),
            desired: t.desired,
            worker: t.worker,
            container_id: t.container_id,
            exit_code: t.exit_code,
            error: t.error,
            created_at: t.created_at,
            start_time: t.start_time,
            finish_time: t.finish_time,
            attempts: Vec::new(),
        }
    }
}

/// The binary shape of a version 3 task record: [`Task`] before its history of attempts. Kept
/// only to read old stores.
#[derive(Deserialize)]
struct TaskV3 {
    id: Uuid,
    name: String,
    service: Option<String>,
    version: u64,
    slot: u32,
    state: State,
    attempt: u32,
    image: String,
    cmd: Vec<String>,
    env: Vec<String>,
    cpu: f64,
    memory: u64,
    disk: u64,
    exposed_ports: Vec<String>,
    port_bindings: BTreeMap<String, String>,
    host_ports: BTreeMap<String, String>,
    restart_policy: RestartPolicy,
    max_restarts: u32,
    restart_count: u32,
    health_check: Option<String>,
    stop_timeout_s: u64,
    pids_limit: u64,
    constraints: Vec<Constraint>,
    spread_by: Option<String>,
    volumes: Vec<Volume>,
    desired: Goal,
    worker: Option<String>,
    container_id: Option<String>,
    exit_code: Option<i64>,
    error: Option<String>,
    #[serde(with = "stamp")]
    created_at: DateTime<Utc>,
    #[serde(with = "stamp::optional")]
    start_time: Option<DateTime<Utc>>,
    #[serde(with = "stamp::optional")]
    finish_time: Option<DateTime<Utc>>,
}

impl From<TaskV3> for Task {
    fn from(t: TaskV3) -> Task {
        Task {
            id: t.id,
            name: t.name,
            service: t.service,
            version: t.version,
            slot: t.slot,
            state: t.state,
            attempt: t.attempt,
            image: t.image,
            cmd: t.cmd,
            env: t.env,
            cpu: t.cpu,
            memory: t.memory,
            disk: t.disk,
            exposed_ports: t.exposed_ports,
            port_bindings: t.port_bindings,
            host_ports: t.host_ports,
            restart_policy: t.restart_policy,
            max_restarts: t.max_restarts,
            restart_count: t.restart_count,
            health_check: t.health_check,
            stop_timeout_s: t.stop_timeout_s,
            pids_limit: t.pids_limit,
            constraints: t.constraints,
            spread_by: t.spread_by,
            volumes: t.volumes,
            desired: t.desired,
            worker: t.worker,
            container_id: t.container_id,
            exit_code: t.exit_code,
            error: t.error,
            created_at: t.created_at,
            start_time: t.start_time,
            finish_time: t.finish_time,
            attempts: Vec::new(),
        }
    }
}

fn default_max_restarts() -> u32 {
    DEFAULT_MAX_RESTARTS
}

fn default_stop_timeout() -> u64 {
    DEFAULT_STOP_TIMEOUT_S
}

fn default_pids_limit() -> u64 {
    DEFAULT_PIDS_LIMIT
}

impl Task {
    /// A new Pending task for `image` with every other field at its default.
    pub fn new(image: impl Into<String>) -> Task {
        let id = Uuid::new_v4();
        let image = image.into();
        Task {
            id,
            name: default_name(&image, id),
            service: None,
            version: 0,
            slot: 0,
            state: State::Pending,
            attempt: 0,
            image,
            cmd: Vec::new(),
            env: Vec::new(),
            cpu: 0.0,
            memory: 0,
            disk: 0,
            exposed_ports: Vec::new(),
            port_bindings: BTreeMap::new(),
            host_ports: BTreeMap::new(),
            restart_policy: RestartPolicy::default(),
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_count: 0,
            health_check: None,
            stop_timeout_s: DEFAULT_STOP_TIMEOUT_S,
            pids_limit: DEFAULT_PIDS_LIMIT,
            constraints: Vec::new(),
            spread_by: None,
            volumes: Vec::new(),
            desired: Goal::Running,
            worker: None,
            container_id: None,
            exit_code: None,
            error: None,
            created_at: Utc::now(),
            start_time: None,
            finish_time: None,
            attempts: Vec::new(),
        }
    }

    /// Move to `to` if the table allows it, stamping the start or finish time with `at` (the
    /// caller's clock: the decision cores never read one). Staying in the same state is allowed
    /// and changes nothing.
    pub fn transition(&mut self, to: State, at: DateTime<Utc>) -> Result<(), TransitionError> {
        if self.state == to {
            return Ok(());
        }
        check_transition(self.state, to)?;
        self.state = to;
        match to {
            State::Running => {
                self.start_time = Some(at);
                self.finish_time = None;
            }
            State::Completed | State::Failed => self.finish_time = Some(at),
            State::Pending | State::Scheduled => {}
        }
        Ok(())
    }

    /// True when both ask for the same thing: everything a user specifies, nothing Cube fills in.
    /// A repeated submission with the same id is idempotent only when this holds.
    pub fn same_spec(&self, other: &Task) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.image == other.image
            && self.cmd == other.cmd
            && self.env == other.env
            && self.cpu == other.cpu
            && self.memory == other.memory
            && self.disk == other.disk
            && self.exposed_ports == other.exposed_ports
            && self.port_bindings == other.port_bindings
            && self.restart_policy == other.restart_policy
            && self.max_restarts == other.max_restarts
            && self.health_check == other.health_check
            && self.stop_timeout_s == other.stop_timeout_s
            && self.pids_limit == other.pids_limit
            && self.constraints == other.constraints
            && self.spread_by == other.spread_by
            && self.volumes == other.volumes
            && self.service == other.service
            && self.version == other.version
            && self.slot == other.slot
    }

    /// Add `ended`, an attempt the task gives up, to its history: once (an attempt given up
    /// when its node was lost is not added again when the next one is placed), dropping the
    /// oldest beyond [`MAX_ATTEMPTS_KEPT`].
    pub fn keep_attempt(&mut self, ended: Attempt) {
        if self
            .attempts
            .last()
            .is_some_and(|last| last.attempt >= ended.attempt)
        {
            return;
        }
        let excess = (self.attempts.len() + 1).saturating_sub(MAX_ATTEMPTS_KEPT);
        self.attempts.drain(..excess);
        self.attempts.push(ended);
    }

    /// The container port the health check is made on: the first exposed port.
    pub fn health_port(&self) -> Option<&str> {
        self.exposed_ports.first().map(String::as_str)
    }
}

/// A generated name: the image's last path segment without tag, and the id's first group.
fn default_name(image: &str, id: Uuid) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let short = id.simple().to_string();
    format!(
        "{}-{}",
        if base.is_empty() { "task" } else { base },
        &short[..8]
    )
}

/// What the user wants of a task, as its `desired` field shows it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Keep it running, under its restart policy.
    #[default]
    Running,
    /// A stop was asked for: no copy may run, whatever happens.
    Stopped,
}

/// What a submission asks for: run the task, or stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Running,
    Completed,
}

/// A request to change a task: the API's TaskEvent, after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub id: Uuid,
    /// Running (run it, the default) or Completed (stop it, as DELETE does).
    pub state: Desired,
    pub timestamp: DateTime<Utc>,
    pub task: Task,
}

/// Input that cannot be accepted; the message names the field and says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    pub(crate) fn at(field: &str, msg: impl fmt::Display) -> InputError {
        InputError(format!("{field}: {msg}"))
    }
}

/// Example shown when a body does not have the expected shape.
const EXPECTED_BODY: &str = r#"expected a TaskEvent like {"task": {"image": "cube-demo/busybox:latest", "cmd": ["sleep", "60"]}} or a bare task like {"image": "cube-demo/busybox:latest"}"#;

/// Longest repository name Docker's reference grammar allows (host and path together).
pub const MAX_IMAGE_NAME: usize = 255;
/// Longest tag Docker's reference grammar allows.
pub const MAX_IMAGE_TAG: usize = 128;

/// Check an image reference against Docker's grammar, as far as a mistake shows: a repository
/// name of at most 255 characters (lower case letters, digits, `.`, `_`, `-`, `/`, and a
/// registry's `host:port`), an optional tag of at most 128 (`[A-Za-z0-9_][A-Za-z0-9_.-]*`) and
/// an optional `@digest`. What Docker would refuse later is refused here, with the reason.
pub fn check_image(image: &str) -> Result<(), String> {
    let example = "expected an image reference like \"cube-demo/busybox:latest\"";
    let (reference, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry's port).
    let last_part = reference.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match reference[last_part..].rfind(':') {
        Some(i) => (
            &reference[..last_part + i],
            Some(&reference[last_part + i + 1..]),
        ),
        None => (reference, None),
    };
    if name.is_empty() {
        return Err(format!("{image:?} has no repository name; {example}"));
    }
    if name.len() > MAX_IMAGE_NAME {
        return Err(format!(
            "the repository name is {} characters long; Docker allows at most {MAX_IMAGE_NAME}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:".contains(*c)))
    {
        return Err(format!(
            "the repository name contains {bad:?}; expected letters, digits, '.', '_', '-', '/' and a registry's host:port"
        ));
    }
    // As Docker's grammar reads it: an optional registry (a first component with '.' or ':',
    // or "localhost"), then path components in lower case. A first component that is no
    // registry may still be a path component ("a.b/c").
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        let looks_like_registry = first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase());
        if looks_like_registry && registry_ok(first) {
            components.remove(0);
        } else if looks_like_registry && !path_component_ok(first) {
            return Err(format!(
                "the registry {first:?} is not valid; expected a host name or address with an optional :port"
            ));
        }
    }
    if let Some(bad) = components.iter().find(|c| !path_component_ok(c)) {
        return Err(format!(
            "the repository name component {bad:?} is not valid; expected lower-case letters and digits, separated by one '.', '_' or '__', or by dashes, e.g. \"cube-demo/busybox\""
        ));
    }
    if let Some(tag) = tag {
        let valid = tag
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphanumeric() || c == '_' || (i > 0 && ".-".contains(c)));
        if tag.is_empty() || tag.len() > MAX_IMAGE_TAG || !valid {
            return Err(format!(
                "the tag {:?} is not valid; expected up to {MAX_IMAGE_TAG} letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                tag.chars().take(40).collect::<String>()
            ));
        }
    }
    if let Some(digest) = digest
        && !digest_ok(digest)
    {
        return Err(format!(
            "the digest {:?} is not valid; expected algorithm:hex with at least 32 hex digits, e.g. sha256:…",
            digest.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

/// A path component of a repository name: `[a-z0-9]+` runs joined by `.`, `_`, `__` or dashes.
fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok || i == bytes.len() {
            return false;
        }
    }
}

/// A registry: host name labels (or an IPv4 address) and an optional numeric port.
fn registry_ok(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && host.split('.').all(label_ok)
}

/// A digest: `algorithm:hex`, the algorithm's parts joined by `+`, `.`, `_` or `-`, at least
/// 32 hex digits.
fn digest_ok(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|part| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    algorithm_ok && (32..=128).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parse a task id from a URL or a file.
pub fn parse_task_id(s: &str) -> Result<Uuid, InputError> {
    Uuid::parse_str(s.trim()).map_err(|_| {
        InputError(format!(
            "{s:?} is not a task id; expected a UUID like 1f0c3d6e-8a4b-4e0f-9a7c-2b5d8e1f4a6c"
        ))
    })
}

/// Parse a POST /tasks body: a TaskEvent (`{"task": {…}}`) or a bare task (`{"image": …}`), in
/// snake_case or the Go Cube's PascalCase. The task's own `state` is ignored: the event says what
/// to do. `attempt` is kept as given (the manager sets its own; a worker runs the one it is sent).
pub fn parse_submission(body: &[u8]) -> Result<TaskEvent, InputError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| InputError(format!("the body is not valid JSON ({e}); {EXPECTED_BODY}")))?;
    let Value::Object(map) = &value else {
        return Err(InputError(format!(
            "the body is a JSON {}; {EXPECTED_BODY}",
            json_kind(&value)
        )));
    };
    let task_key = ["task", "Task"].into_iter().find(|k| map.contains_key(*k));
    match task_key {
        Some(key) => {
            let task_value = &map[key];
            if !task_value.is_object() {
                return Err(InputError(format!(
                    "{key}: is a JSON {}, but it must be the task object; {EXPECTED_BODY}",
                    json_kind(task_value)
                )));
            }
            let input: EventInput = from_value(value)?;
            input.into_event()
        }
        None if map.contains_key("image") || map.contains_key("Image") => {
            let input: TaskInput = from_value(value)?;
            let task = input.into_task("")?;
            Ok(TaskEvent {
                id: Uuid::new_v4(),
                state: Desired::Running,
                timestamp: Utc::now(),
                task,
            })
        }
        None => Err(InputError(format!(
            "the body has neither \"task\" nor \"image\"; {EXPECTED_BODY}"
        ))),
    }
}

/// Parse a task as a service's template: the fields of a task (as `POST /tasks` takes them) at
/// `prefix` of the body. Errors name the field under `prefix`.
pub fn parse_template(value: Value, prefix: &str) -> Result<Task, InputError> {
    if !value.is_object() {
        return Err(InputError(format!(
            "{}: is a JSON {}; expected the task template, e.g. {{\"image\": \"cube-demo/busybox:latest\"}}",
            prefix.trim_end_matches('.'),
            json_kind(&value)
        )));
    }
    let input: TaskInput = from_value(value).map_err(|e| InputError(format!("{prefix}{}", e.0)))?;
    input.into_task(prefix)
}

/// The schema of a service's task template: a task as `POST /tasks` takes it.
pub fn template_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::Ref::from_schema_name(<TaskInput as utoipa::ToSchema>::name()).into()
}

/// The body of a worker's `POST /starts`, as [`parse_starts`] reads it: a batch of tasks, each
/// as a TaskEvent's `task`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Starts {
    /// The attempts to start, each with its `attempt`.
    #[schema(max_items = 5000)]
    tasks: Vec<TaskInput>,
}

/// Most starts one `POST /starts` body may carry on a worker.
pub const MAX_STARTS: usize = 5000;

/// Parse a worker's `POST /starts` body: `{"tasks": [{…}, …]}`, each element read as the `task`
/// of a TaskEvent is (attempt kept as given), so a batch accepts exactly what one `POST /tasks`
/// each would. An error names the element (`tasks[3].cpu: …`); nothing of a bad batch starts.
pub fn parse_starts(body: &[u8]) -> Result<Vec<Task>, InputError> {
    const EXPECTED: &str = r#"expected {"tasks": [{"image": …}, …]}"#;
    let input: Starts = from_value(batch_body(body, "tasks", MAX_STARTS, EXPECTED)?)?;
    input
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.into_task(&format!("tasks[{i}].")))
        .collect()
}

/// The body of a worker's `POST /stops`, as [`parse_stops`] reads it: a batch of stops, each as
/// `DELETE /tasks/{id}?attempt=N` asks for it.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Stops {
    /// The attempts to stop.
    #[schema(max_items = 5000)]
    stops: Vec<StopInput>,
}

/// One stop of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct StopInput {
    /// The task.
    #[schema(value_type = String, format = Uuid)]
    id: Uuid,
    /// Stop this attempt and fence every older one; without it, every attempt the worker has.
    #[schema(minimum = 1)]
    #[serde(default)]
    attempt: Option<u32>,
}

/// Most stops one `POST /stops` body may carry on a worker.
pub const MAX_STOPS: usize = 5000;

/// Parse a worker's `POST /stops` body: `{"stops": [{"id": …, "attempt": N}, …]}` into
/// `(task, attempt)` pairs, in order. Any bad element refuses the whole batch, naming it.
pub fn parse_stops(body: &[u8]) -> Result<Vec<(Uuid, Option<u32>)>, InputError> {
    const EXPECTED: &str = r#"expected {"stops": [{"id": "<task id>", "attempt": 1}, …]}"#;
    let input: Stops = from_value(batch_body(body, "stops", MAX_STOPS, EXPECTED)?)?;
    input
        .stops
        .into_iter()
        .enumerate()
        .map(|(i, stop)| match stop.attempt {
            Some(0) => Err(InputError::at(
                &format!("stops[{i}].attempt"),
                "is 0; expected an attempt of 1 or more (attempts count from 1)",
            )),
            attempt => Ok((stop.id, attempt)),
        })
        .collect()
}

/// A batch body, `{"<key>": [ … ]}` with at most `max` elements, checked before its elements
/// are read: a clear 400 for any other shape, or for too many.
fn batch_body(body: &[u8], key: &str, max: usize, expected: &str) -> Result<Value, InputError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| InputError(format!("the body is not valid JSON ({e}); {expected}")))?;
    let count = match &value {
        Value::Object(map) => match map.get(key) {
            Some(Value::Array(items)) => items.len(),
            Some(other) => {
                return Err(InputError::at(
                    key,
                    format!("is a JSON {}; {expected}", json_kind(other)),
                ));
            }
            None => return Err(InputError(format!("the body has no \"{key}\"; {expected}"))),
        },
        other => {
            return Err(InputError(format!(
                "the body is a JSON {}; {expected}",
                json_kind(other)
            )));
        }
    };
    if count > max {
        return Err(InputError::at(
            key,
            format!("holds {count} {key}; expected at most {max}"),
        ));
    }
    Ok(value)
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Deserialize with the path of the offending field in the error (`task.cpu: invalid type …`).
pub(crate) fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // The shapes a field may take, in place of serde's words for an untagged enum.
        let inner = match inner.strip_prefix("data did not match any variant of untagged enum ") {
            Some("PortList") => {
                "expected a list of ports like [\"8080/tcp\"], or an object with them as keys"
                    .into()
            }
            Some("HostPort") => "expected a host port: a number, or a string of digits".into(),
            Some(_) => "has a shape that is not accepted here".into(),
            None => inner,
        };
        if path == "." {
            InputError(inner)
        } else {
            InputError::at(&path, inner)
        }
    })
}

/// The TaskEvent as it may arrive: every field optional, both spellings accepted.
///
/// Its schema (`TaskEventInput` in the OpenAPI documents) describes the snake_case spelling;
/// fields it does not name are ignored, as the server ignores them.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TaskEventInput)]
struct EventInput {
    /// The event's id (a UUID); ignored, Cube makes its own.
    #[serde(default, alias = "ID")]
    id: Option<String>,
    /// What to do: run the task (the default) or stop it, as DELETE does.
    #[serde(default, alias = "State")]
    #[schema(schema_with = asked_state_schema)]
    state: Option<State>,
    /// Accepted for compatibility and ignored: Cube stamps its own time.
    #[serde(default, alias = "Timestamp")]
    #[allow(dead_code)] // accepted for compatibility; Cube stamps its own time
    #[schema(value_type = Option<Value>)]
    timestamp: Option<Value>,
    #[serde(alias = "Task")]
    task: TaskInput,
}

/// The `state` a TaskEvent may ask for: `Running` (run it; `Pending` and `Scheduled` of Go-Cube
/// files mean the same) or `Completed` (stop it), any case, or the Go Cube's integers 0 to 3.
/// `Failed` (4) cannot be asked for.
fn asked_state_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .examples(["Running", "Completed"]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(3)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Running (run the task, the default) or Completed (stop it, as DELETE does), in any case; Pending and Scheduled mean Running; the Go Cube's integers 0 to 3 are accepted too. Failed cannot be asked for.",
        ))
        .into()
}

impl EventInput {
    fn into_event(self) -> Result<TaskEvent, InputError> {
        let id = match optional_uuid(self.id.as_deref(), "id")? {
            Some(id) => id,
            None => Uuid::new_v4(),
        };
        // Pending and Scheduled come from Go-Cube files that meant "run it".
        let state = match self.state {
            None | Some(State::Pending | State::Scheduled | State::Running) => Desired::Running,
            Some(State::Completed) => Desired::Completed,
            Some(State::Failed) => {
                return Err(InputError::at(
                    "state",
                    "Failed cannot be asked for; expected Running (run the task) or Completed (stop it)",
                ));
            }
        };
        let task = self.task.into_task("task.")?;
        Ok(TaskEvent {
            id,
            state,
            timestamp: Utc::now(),
            task,
        })
    }
}

/// A task as it may arrive: every field optional, both spellings, Go's shapes for ports, maps
/// that may be `null`. Fields Cube fills in itself (state, times, container, host ports) are
/// accepted and ignored.
///
/// Its schema (`TaskInput` in the OpenAPI documents) describes the snake_case spelling, and is
/// never stricter than this parser: every field but `image` may be left out or `null`, and
/// fields it does not name are ignored, as the server ignores them. Limits it cannot state (a
/// valid image reference, port syntax) are checked by [`TaskInput::into_task`] with a 400.
#[derive(Deserialize, utoipa::ToSchema)]
struct TaskInput {
    /// A client-chosen task id (a UUID) makes the submission idempotent; without one (or with
    /// `""` or the nil UUID) Cube makes one.
    #[serde(default, alias = "ID")]
    id: Option<String>,
    /// Defaults to the image's name and the id's first digits.
    #[serde(default, alias = "Name")]
    name: Option<String>,
    /// The image to run, a Docker reference (at most 255 characters of repository name, 128 of
    /// tag), e.g. `cube-demo/busybox:latest`.
    #[serde(default, alias = "Image")]
    #[schema(required = true, value_type = String, min_length = 1, example = "cube-demo/busybox:latest")]
    image: Option<String>,
    #[serde(default, alias = "Cmd")]
    cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    #[serde(default, alias = "Env")]
    env: Option<Vec<String>>,
    /// Cores to reserve, `>= 0`.
    #[serde(default, alias = "Cpu", alias = "CPU")]
    #[schema(minimum = 0)]
    cpu: Option<f64>,
    /// Bytes of memory to reserve (and the container's limit).
    #[serde(default, alias = "Memory")]
    memory: Option<u64>,
    /// Bytes of disk to reserve.
    #[serde(default, alias = "Disk")]
    disk: Option<u64>,
    #[serde(default, alias = "ExposedPorts")]
    #[schema(schema_with = exposed_ports_schema)]
    exposed_ports: Option<PortList>,
    /// Container port → host port (a number from 1 to 65535, or `""` to let Docker choose);
    /// a binding exposes its port.
    #[serde(default, alias = "PortBindings")]
    #[schema(schema_with = port_bindings_schema)]
    port_bindings: Option<BTreeMap<String, Option<HostPort>>>,
    /// `never`, `on-failure` (the default) or `always`; Docker's `no`, `unless-stopped` and
    /// `on-failure:N` are accepted too.
    #[serde(default, alias = "RestartPolicy")]
    #[schema(example = "on-failure")]
    restart_policy: Option<String>,
    /// Restarts allowed (default 3).
    #[serde(default, alias = "MaxRestarts")]
    max_restarts: Option<u32>,
    /// An HTTP path checked on the first exposed port; needs an exposed port.
    #[serde(default, alias = "HealthCheck")]
    health_check: Option<String>,
    /// Seconds between SIGTERM and SIGKILL (default 5).
    #[serde(default, alias = "StopTimeout")]
    #[schema(maximum = 3600)]
    stop_timeout_s: Option<u64>,
    /// Most processes the container may run (default 4096).
    #[serde(default, alias = "PidsLimit")]
    #[schema(minimum = 1, maximum = 4194304)]
    pids_limit: Option<u64>,
    /// The attempt to run: a worker runs the one it is sent; the manager numbers its own.
    #[serde(default, alias = "Attempt")]
    attempt: Option<u32>,
    /// Node labels a node must have or lack: `"zone==a"`, `"disk!=hdd"` (`node==NAME` pins
    /// to one node).
    #[serde(default, alias = "Constraints")]
    #[schema(example = json!(["zone==a"]))]
    constraints: Option<Vec<String>>,
    /// A node label whose values a service's tasks are spread over evenly.
    #[serde(default, alias = "SpreadBy")]
    spread_by: Option<String>,
    /// Volumes: `"data:/var/lib/data"`, `"/srv/data:/data:ro"`, or objects.
    #[serde(default, alias = "Volumes")]
    #[schema(schema_with = volumes_schema)]
    volumes: Option<Vec<VolumeInput>>,
}

/// A volume as Docker's short form (`"data:/data:ro"`) or as an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum VolumeInput {
    Short(String),
    Long(Volume),
}

/// The schema of `volumes`.
fn volumes_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::PartialSchema;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let one = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(Volume::schema());
    OneOfBuilder::new()
        .item(
            ArrayBuilder::new()
                .items(one)
                .examples([serde_json::json!(["data:/var/lib/data", "/srv/data:/data:ro"])]),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Volumes to mount: \"SOURCE:TARGET[:ro]\" or {\"source\", \"target\", \"read_only\"}. SOURCE is a volume name (created on the worker when missing, kept after the task) or an absolute host path under a prefix the worker allows (--allow-host-path).",
        ))
        .into()
}

/// Exposed ports: Cube's list `["8080/tcp"]` or Go's set `{"8080/tcp": {}}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortList {
    List(Vec<String>),
    Set(BTreeMap<String, Value>),
}

/// A host port given as a string (`"18080"`) or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum HostPort {
    Text(String),
    Number(u64),
}

/// The schema of [`PortList`], or `null`.
fn exposed_ports_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .examples([serde_json::json!(["8080/tcp"])]),
        )
        .item(ObjectBuilder::new().schema_type(Type::Object))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Container ports, \"PORT/tcp\", \"PORT/udp\" or \"PORT/sctp\" with PORT from 1 to 65535 (a port without protocol is TCP): a list, or the Go Cube's set ({\"8080/tcp\": {}}).",
        ))
        .into()
}

/// The schema of `port_bindings`: container port → [`HostPort`] or `null`; or `null`.
fn port_bindings_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let host_port = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(u16::MAX)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null));
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(
                    utoipa::openapi::schema::Schema::OneOf(host_port.build()),
                ))
                .examples([serde_json::json!({"8080/tcp": "18080"})]),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Container port → the host port asked for: a number from 1 to 65535 (or the same as a string), or \"\" or null to let Docker choose. A binding exposes its port.",
        ))
        .into()
}

/// The body of `POST /tasks` on either API, for the OpenAPI documents: a TaskEvent
/// (`{"task": {…}}`) or a bare task (`{"image": …}`), as [`parse_submission`] reads it. The
/// Go Cube's PascalCase spellings (`Task`, `Image`, …) are accepted too and not described.
pub struct Submission;

impl utoipa::PartialSchema for Submission {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::ToSchema;
        use utoipa::openapi::schema::{AnyOfBuilder, Ref};
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(EventInput::name()))
            .item(Ref::from_schema_name(TaskInput::name()))
            .description(Some(
                "A TaskEvent ({\"task\": {…}}) or a bare task ({\"image\": …}).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Submission {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::{PartialSchema, ToSchema};
        schemas.push((EventInput::name().into(), EventInput::schema()));
        schemas.push((TaskInput::name().into(), TaskInput::schema()));
        <EventInput as ToSchema>::schemas(schemas);
        <TaskInput as ToSchema>::schemas(schemas);
    }
}

impl TaskInput {
    /// Validate and build a Pending task; `prefix` is the field path of the task in the body.
    fn into_task(self, prefix: &str) -> Result<Task, InputError> {
        let field = |name: &str| format!("{prefix}{name}");
        let image = match self.image.map(|s| s.trim().to_string()) {
            Some(image) if !image.is_empty() => image,
            _ => {
                return Err(InputError::at(
                    &field("image"),
                    "is missing; expected the image to run, e.g. \"cube-demo/busybox:latest\"",
                ));
            }
        };
        check_image(&image).map_err(|why| InputError::at(&field("image"), why))?;
        let mut task = Task::new(image);
        if let Some(id) = optional_uuid(self.id.as_deref(), &field("id"))? {
            task.id = id;
            task.name = default_name(&task.image, id);
        }
        if let Some(name) = self.name.map(|n| n.trim().to_string())
            && !name.is_empty()
        {
            task.name = name;
        }
        task.cmd = self.cmd.unwrap_or_default();
        task.env = self.env.unwrap_or_default();
        if let Some(bad) = task.env.iter().find(|e| e.is_empty() || e.starts_with('=')) {
            return Err(InputError::at(
                &field("env"),
                format!("{bad:?} is not a variable; expected \"KEY=VALUE\""),
            ));
        }
        if let Some(cpu) = self.cpu {
            if !cpu.is_finite() || cpu < 0.0 {
                return Err(InputError::at(
                    &field("cpu"),
                    format!(
                        "{cpu} is not a CPU reservation; expected a number of cores >= 0, e.g. 0.5"
                    ),
                ));
            }
            task.cpu = cpu;
        }
        task.memory = self.memory.unwrap_or(0);
        task.disk = self.disk.unwrap_or(0);

        let mut exposed = Vec::new();
        let listed: Vec<String> = match self.exposed_ports {
            None => Vec::new(),
            Some(PortList::List(l)) => l,
            Some(PortList::Set(s)) => s.into_keys().collect(),
        };
        for p in listed {
            let p = normalize_port(&p).map_err(|m| InputError::at(&field("exposed_ports"), m))?;
            if !exposed.contains(&p) {
                exposed.push(p);
            }
        }
        for (port, host) in self.port_bindings.unwrap_or_default() {
            let port =
                normalize_port(&port).map_err(|m| InputError::at(&field("port_bindings"), m))?;
            let host = match host {
                None => String::new(),
                Some(HostPort::Number(n)) => n.to_string(),
                Some(HostPort::Text(t)) => t.trim().to_string(),
            };
            let host = match host.parse::<u16>() {
                _ if host.is_empty() => host,
                // Digits only ("+8081" is refused, as Docker does), written back as the number.
                Ok(n @ 1..) if host.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
                _ => {
                    return Err(InputError::at(
                        &field("port_bindings"),
                        format!(
                            "host port {host:?} for {port} is not a port; expected a number from 1 to 65535, or \"\" to let Docker choose"
                        ),
                    ));
                }
            };
            // A binding implies the port is exposed, as with `docker run -p`.
            if !exposed.contains(&port) {
                exposed.push(port.clone());
            }
            if !host.is_empty() {
                task.port_bindings.insert(port, host);
            }
        }
        task.exposed_ports = exposed;

        if let Some(text) = self.restart_policy {
            let (policy, max) = RestartPolicy::parse(&text).ok_or_else(|| {
                InputError::at(
                    &field("restart_policy"),
                    format!(
                        "{text:?} is not a restart policy; expected never, on-failure or always"
                    ),
                )
            })?;
            task.restart_policy = policy;
            if let Some(max) = max {
                task.max_restarts = max;
            }
        }
        if let Some(max) = self.max_restarts {
            task.max_restarts = max;
        }
        if let Some(path) = self.health_check.map(|p| p.trim().to_string())
            && !path.is_empty()
        {
            if task.exposed_ports.is_empty() {
                return Err(InputError::at(
                    &field("health_check"),
                    "needs a port to check; expected exposed_ports with at least one port, e.g. [\"8080/tcp\"]",
                ));
            }
            task.health_check = Some(if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            });
        }
        if let Some(t) = self.stop_timeout_s {
            if t > MAX_STOP_TIMEOUT_S {
                return Err(InputError::at(
                    &field("stop_timeout_s"),
                    format!("{t} is too long; expected seconds from 0 to {MAX_STOP_TIMEOUT_S}"),
                ));
            }
            task.stop_timeout_s = t;
        }
        if let Some(n) = self.pids_limit {
            if !(1..=MAX_PIDS_LIMIT).contains(&n) {
                return Err(InputError::at(
                    &field("pids_limit"),
                    format!("{n} is not a process limit; expected 1 to {MAX_PIDS_LIMIT}"),
                ));
            }
            task.pids_limit = n;
        }
        for (i, c) in self.constraints.unwrap_or_default().iter().enumerate() {
            let c = c
                .parse::<Constraint>()
                .map_err(|m| InputError::at(&field(&format!("constraints[{i}]")), m))?;
            if !task.constraints.contains(&c) {
                task.constraints.push(c);
            }
        }
        if let Some(key) = self.spread_by.map(|k| k.trim().to_string())
            && !key.is_empty()
        {
            crate::constraint::check_label_key(&key)
                .map_err(|m| InputError::at(&field("spread_by"), m))?;
            task.spread_by = Some(key);
        }
        for (i, v) in self.volumes.unwrap_or_default().into_iter().enumerate() {
            let at = field(&format!("volumes[{i}]"));
            let v = match v {
                VolumeInput::Short(s) => Volume::parse(&s),
                VolumeInput::Long(v) => v.check().map(|()| v),
            }
            .map_err(|m| InputError::at(&at, m))?;
            if task.volumes.iter().any(|o| o.target == v.target) {
                return Err(InputError::at(
                    &at,
                    format!(
                        "{} is mounted twice; expected one volume per target",
                        v.target
                    ),
                ));
            }
            task.volumes.push(v);
        }
        task.attempt = self.attempt.unwrap_or(0);
        Ok(task)
    }
}

/// An optional UUID field; the Go zero UUID and `""` count as absent.
fn optional_uuid(s: Option<&str>, field: &str) -> Result<Option<Uuid>, InputError> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) if id.is_nil() => Ok(None),
            Ok(id) => Ok(Some(id)),
            Err(_) => Err(InputError::at(
                field,
                format!(
                    "{s:?} is not a UUID; expected one like 1f0c3d6e-8a4b-4e0f-9a7c-2b5d8e1f4a6c, or no id to have one generated"
                ),
            )),
        },
    }
}

/// `"8080"` → `"8080/tcp"`; checks the number and the protocol.
pub fn normalize_port(p: &str) -> Result<String, String> {
    let p = p.trim();
    let (num, proto) = match p.split_once('/') {
        Some((n, proto)) => (n, proto.to_ascii_lowercase()),
        None => (p, "tcp".to_string()),
    };
    // Digits only (Docker's parser refuses "+80"), written back as the number ("080" is 80).
    let number = match num.parse::<u16>() {
        Ok(n @ 1..) if num.bytes().all(|b| b.is_ascii_digit()) => Some(n),
        _ => None,
    };
    match number {
        Some(n) if matches!(proto.as_str(), "tcp" | "udp" | "sctp") => Ok(format!("{n}/{proto}")),
        _ => Err(format!(
            "{p:?} is not a container port; expected \"PORT/tcp\" or \"PORT/udp\" with PORT from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TaskEvent, InputError> {
        parse_submission(s.as_bytes())
    }

    #[test]
    fn a_batch_of_starts_reads_each_task_as_one_start_does() {
        let mut t = Task::new("cube-demo/busybox:latest");
        t.attempt = 3;
        t.cpu = 0.5;
        let one = serde_json::to_string(&t).unwrap();
        let body = format!(r#"{{"tasks": [{one}, {{"image": "i", "attempt": 1}}]}}"#);
        let tasks = parse_starts(body.as_bytes()).unwrap();
        assert_eq!(tasks.len(), 2);
        let single = parse(&format!(r#"{{"task": {one}}}"#)).unwrap().task;
        assert_eq!(
            (tasks[0].id, tasks[0].attempt, tasks[0].cpu),
            (t.id, 3, 0.5)
        );
        assert_eq!(
            (tasks[0].image.as_str(), tasks[0].attempt),
            (single.image.as_str(), single.attempt)
        );
        assert_eq!((tasks[1].image.as_str(), tasks[1].attempt), ("i", 1));
        assert_eq!(parse_starts(br#"{"tasks": []}"#).unwrap(), vec![]);
        for (body, says) in [
            ("[]".to_string(), "the body is a JSON array"),
            ("{}".to_string(), "the body has no \"tasks\""),
            (r#"{"tasks": {}}"#.to_string(), "tasks: is a JSON object"),
            (
                r#"{"tasks": [{"image": "i"}, {"image": "i", "cpu": -1}]}"#.to_string(),
                "tasks[1].cpu",
            ),
            (
                r#"{"tasks": [{"image": "i"}, {}]}"#.to_string(),
                "tasks[1].image: is missing",
            ),
            (r#"{"tasks": [{"image": "i"}, 5]}"#.to_string(), "tasks[1]"),
            (
                format!(
                    r#"{{"tasks": [{}]}}"#,
                    vec![r#"{"image": "i"}"#; MAX_STARTS + 1].join(",")
                ),
                "tasks: holds 5001 tasks; expected at most 5000",
            ),
        ] {
            let e = parse_starts(body.as_bytes()).unwrap_err().0;
            assert!(e.contains(says), "{body:.80}: {e}");
        }
    }

    #[test]
    fn transition_table_allows_exactly_the_documented_moves() {
        use State::*;
        let allowed = [
            (Pending, Scheduled),
            (Pending, Completed),
            (Pending, Failed),
            (Scheduled, Running),
            (Scheduled, Failed),
            (Scheduled, Pending),
            (Scheduled, Completed),
            (Running, Completed),
            (Running, Failed),
            (Running, Scheduled),
            (Failed, Scheduled),
            (Failed, Completed),
        ];
        for from in State::ALL {
            for to in State::ALL {
                if from == to {
                    continue;
                }
                let expected = allowed.contains(&(from, to));
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    expected,
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn completed_is_final() {
        let mut t = Task::new("img");
        t.transition(State::Completed, Utc::now()).unwrap();
        for to in [
            State::Pending,
            State::Scheduled,
            State::Running,
            State::Failed,
        ] {
            assert!(t.transition(to, Utc::now()).is_err());
        }
        assert_eq!(t.state, State::Completed);
    }

    #[test]
    fn refused_transition_leaves_the_task_unchanged() {
        let mut t = Task::new("img");
        let before = t.clone();
        let err = t.transition(State::Running, Utc::now()).unwrap_err();
        assert_eq!(err.to_string(), "a task cannot go from Pending to Running");
        assert_eq!(t, before);
    }

    #[test]
    fn transition_stamps_start_and_finish_times() {
        let mut t = Task::new("img");
        t.transition(State::Scheduled, Utc::now()).unwrap();
        assert!(t.start_time.is_none());
        t.transition(State::Running, Utc::now()).unwrap();
        assert!(t.start_time.is_some() && t.finish_time.is_none());
        t.transition(State::Failed, Utc::now()).unwrap();
        assert!(t.finish_time.is_some());
    }

    #[test]
    fn state_accepts_names_and_go_integers() {
        for (i, st) in State::ALL.into_iter().enumerate() {
            let from_int: State = serde_json::from_str(&i.to_string()).unwrap();
            assert_eq!(from_int, st);
            let from_name: State = serde_json::from_str(&format!("\"{st}\"")).unwrap();
            assert_eq!(from_name, st);
        }
        assert!(serde_json::from_str::<State>("5").is_err());
        assert!(serde_json::from_str::<State>("\"Sleeping\"").is_err());
        assert_eq!(
            serde_json::to_string(&State::Running).unwrap(),
            "\"Running\""
        );
    }

    #[test]
    fn image_references_follow_dockers_grammar() {
        for good in [
            "cube-demo/busybox:latest",
            "busybox",
            "registry.local:5000/team/app:1.2.3-rc_1",
            "busybox@sha256:0123456789abcdef0123456789abcdef01234567",
            "img",
            "localhost/app",
            "Registry.Example:443/a__b/c-d--e/f.g",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        let long_name = "a".repeat(MAX_IMAGE_NAME + 1);
        let long_tag = format!("busybox:{}", "t".repeat(MAX_IMAGE_TAG + 1));
        for (bad, says) in [
            (long_name.as_str(), "at most 255"),
            (long_tag.as_str(), "up to 128"),
            ("busy box", "contains ' '"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            (":latest", "no repository name"),
            ("busybox@nodigest", "digest"),
            ("busybox@sha256:zz", "digest"),
            ("BusyBox", "component \"BusyBox\""),
            ("a//b", "component \"\""),
            ("-a", "component \"-a\""),
            ("a/b.", "component \"b.\""),
            ("bad_host.:1/app", "registry"),
        ] {
            let err = check_image(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        let huge = format!("{{\"image\": \"{}\"}}", "x".repeat(300_000));
        let err = parse(&huge).unwrap_err().to_string();
        assert!(
            err.starts_with("image: the repository name is 300000"),
            "{err}"
        );
    }

    #[test]
    fn bare_task_needs_only_an_image() {
        let ev = parse(r#"{"image": "cube-demo/busybox:latest"}"#).unwrap();
        let t = ev.task;
        assert_eq!(ev.state, Desired::Running);
        assert_eq!(t.image, "cube-demo/busybox:latest");
        assert_eq!(t.state, State::Pending);
        assert_eq!(t.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(t.max_restarts, 3);
        assert_eq!(t.stop_timeout_s, 5);
        assert!(t.name.starts_with("busybox-"), "{}", t.name);
    }

    #[test]
    fn task_json_round_trips_in_snake_case() {
        let ev = parse(
            r#"{"task": {"name": "web", "image": "img", "cmd": ["httpd", "-f"], "env": ["K=V"],
                "cpu": 0.5, "memory": 67108864, "exposed_ports": ["8080/tcp"],
                "port_bindings": {"8080/tcp": "18080"}, "restart_policy": "always",
                "max_restarts": 7, "health_check": "/health", "stop_timeout_s": 2}}"#,
        )
        .unwrap();
        let json = serde_json::to_value(&ev.task).unwrap();
        for key in [
            "id",
            "name",
            "state",
            "attempt",
            "image",
            "cmd",
            "env",
            "cpu",
            "memory",
            "disk",
            "exposed_ports",
            "port_bindings",
            "host_ports",
            "restart_policy",
            "max_restarts",
            "restart_count",
            "health_check",
            "stop_timeout_s",
            "worker",
            "container_id",
            "exit_code",
            "error",
            "created_at",
            "start_time",
            "finish_time",
            "attempts",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["restart_policy"], "always");
        assert_eq!(json["state"], "Pending");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev.task);
    }

    #[test]
    fn go_cube_task_file_is_accepted_unchanged() {
        let body = r#"{
            "ID": "6be4bb6f-a3f5-4c2e-9b1c-0d5a1b2c3d4e",
            "State": 2,
            "Timestamp": "0001-01-01T00:00:00Z",
            "Task": {
                "ID": "21b23589-5d2d-4731-b5c9-a97e9832d021",
                "ContainerID": "",
                "Name": "test-chapter-9.1",
                "State": 1,
                "Image": "timboring/echo-server:latest",
                "Cpu": 0.1,
                "Memory": 0,
                "Disk": 0,
                "ExposedPorts": {"7777/tcp": {}},
                "HostPorts": null,
                "PortBindings": {"7777/tcp": "7777"},
                "RestartPolicy": "",
                "StartTime": "0001-01-01T00:00:00Z",
                "FinishTime": "0001-01-01T00:00:00Z",
                "HealthCheck": "/health",
                "RestartCount": 0
            }
        }"#;
        let ev = parse(body).unwrap();
        assert_eq!(ev.id.to_string(), "6be4bb6f-a3f5-4c2e-9b1c-0d5a1b2c3d4e");
        assert_eq!(ev.state, Desired::Running);
        let t = ev.task;
        assert_eq!(t.id.to_string(), "21b23589-5d2d-4731-b5c9-a97e9832d021");
        assert_eq!(t.name, "test-chapter-9.1");
        assert_eq!(
            t.state,
            State::Pending,
            "a submission's own state is ignored"
        );
        assert_eq!(t.image, "timboring/echo-server:latest");
        assert_eq!(t.cpu, 0.1);
        assert_eq!(t.exposed_ports, vec!["7777/tcp"]);
        assert_eq!(
            t.port_bindings.get("7777/tcp").map(String::as_str),
            Some("7777")
        );
        assert_eq!(t.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(t.health_check.as_deref(), Some("/health"));
        assert!(t.start_time.is_none());
    }

    #[test]
    fn go_restart_policies_map_to_cube_ones() {
        let policy = |p: &str| {
            parse(&format!(r#"{{"Image": "i", "RestartPolicy": "{p}"}}"#))
                .unwrap()
                .task
        };
        assert_eq!(policy("no").restart_policy, RestartPolicy::Never);
        assert_eq!(
            policy("unless-stopped").restart_policy,
            RestartPolicy::Always
        );
        assert_eq!(policy("always").restart_policy, RestartPolicy::Always);
        let t = policy("on-failure:5");
        assert_eq!(
            (t.restart_policy, t.max_restarts),
            (RestartPolicy::OnFailure, 5)
        );
    }

    #[test]
    fn completed_event_asks_for_a_stop() {
        let ev = parse(r#"{"state": "Completed", "task": {"image": "i"}}"#).unwrap();
        assert_eq!(ev.state, Desired::Completed);
        let ev = parse(r#"{"State": 3, "Task": {"Image": "i"}}"#).unwrap();
        assert_eq!(ev.state, Desired::Completed);
        let err = parse(r#"{"state": "Failed", "task": {"image": "i"}}"#).unwrap_err();
        assert!(err.0.starts_with("state:"), "{err}");
    }

    #[test]
    fn string_form_task_is_refused_with_the_expected_shape() {
        let err = parse(r#"{"task": "example"}"#).unwrap_err();
        assert!(err.0.contains("task:"), "{err}");
        assert!(err.0.contains(r#"{"task": {"image""#), "{err}");
    }

    #[test]
    fn bad_input_names_the_field_and_what_is_expected() {
        let cases = [
            (r#"{"task": {"cmd": ["sleep"]}}"#, "task.image: is missing"),
            (r#"{"task": {"image": ""}}"#, "task.image: is missing"),
            (r#"{"task": {"image": "i", "cpu": "lots"}}"#, "task.cpu"),
            (r#"{"task": {"image": "i", "cpu": -1}}"#, "task.cpu"),
            (r#"{"task": {"image": "i", "memory": -5}}"#, "task.memory"),
            (
                r#"{"task": {"image": "i", "id": "abc"}}"#,
                "task.id: \"abc\" is not a UUID",
            ),
            (
                r#"{"id": "abc", "task": {"image": "i"}}"#,
                "id: \"abc\" is not a UUID",
            ),
            (
                r#"{"task": {"image": "i", "exposed_ports": ["http"]}}"#,
                "task.exposed_ports",
            ),
            (
                r#"{"task": {"image": "i", "port_bindings": {"80/tcp": "x"}}}"#,
                "task.port_bindings",
            ),
            (
                r#"{"task": {"image": "i", "restart_policy": "sometimes"}}"#,
                "task.restart_policy",
            ),
            (
                r#"{"task": {"image": "i", "health_check": "/h"}}"#,
                "task.health_check",
            ),
            (r#"{"task": {"image": "i", "env": ["=x"]}}"#, "task.env"),
            (r#"{"task": {"image": "i", "cmd": "sleep 1"}}"#, "task.cmd"),
            (r#"{"name": "x"}"#, "neither \"task\" nor \"image\""),
            (r#"[1, 2]"#, "the body is a JSON array"),
            (r#"{"task": {"image": "i""#, "not valid JSON"),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(
                err.0.contains(expected),
                "body {body}: got {err:?}, wanted {expected:?}"
            );
        }
    }

    #[test]
    fn ports_are_normalized_and_bindings_imply_exposure() {
        let t = parse(r#"{"image": "i", "exposed_ports": ["8080", "53/UDP"], "port_bindings": {"9090": 19090}}"#)
            .unwrap()
            .task;
        assert_eq!(t.exposed_ports, vec!["8080/tcp", "53/udp", "9090/tcp"]);
        assert_eq!(
            t.port_bindings.get("9090/tcp").map(String::as_str),
            Some("19090")
        );
    }

    #[test]
    fn same_spec_ignores_what_cube_fills_in() {
        let a = parse(r#"{"image": "i", "id": "21b23589-5d2d-4731-b5c9-a97e9832d021"}"#)
            .unwrap()
            .task;
        let mut b = a.clone();
        b.state = State::Running;
        b.worker = Some("w1".into());
        b.created_at = Utc::now();
        let mut ran = a.clone();
        ran.attempt = 1;
        b.attempts = Attempt::of(&ran, Utc::now()).into_iter().collect();
        b.attempt = 2;
        assert!(
            !b.attempts.is_empty() && a.same_spec(&b),
            "history is not spec"
        );
        b.cmd = vec!["true".into()];
        assert!(!a.same_spec(&b));
    }

    #[test]
    fn the_history_keeps_each_attempt_once_and_only_the_newest() {
        let mut t = Task::new("img");
        assert_eq!(Attempt::of(&t, Utc::now()), None, "nothing ran yet");
        for n in 1..=MAX_ATTEMPTS_KEPT as u32 + 3 {
            t.attempt = n;
            t.state = State::Failed;
            t.exit_code = Some(n.into());
            let ended = Attempt::of(&t, Utc::now()).expect("an attempt");
            t.keep_attempt(ended.clone());
            t.keep_attempt(ended);
        }
        let kept: Vec<u32> = t.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(
            kept,
            (4..=13).collect::<Vec<_>>(),
            "the oldest go, once each"
        );
        assert_eq!(t.attempts[0].exit_code, Some(4));
        // An `always` task that exited 0 waits in Pending; its attempt completed.
        t.state = State::Pending;
        t.finish_time = Some(Utc::now());
        let ended = Attempt::of(&t, Utc::now()).expect("an attempt");
        assert_eq!(ended.state, State::Completed);
    }

    #[test]
    fn constraints_spread_and_volumes_parse_or_name_the_element() {
        let t = parse(r#"{"image": "i", "constraints": ["zone==a", "zone==a", "disk!=hdd"], "spread_by": "rack", "volumes": ["data:/data", {"source": "/srv/x", "target": "/x", "read_only": true}]}"#)
            .unwrap()
            .task;
        assert_eq!(t.constraints.len(), 2);
        assert_eq!(t.constraints[1].to_string(), "disk!=hdd");
        assert_eq!(t.spread_by.as_deref(), Some("rack"));
        assert_eq!(t.volumes[0].name(), Some("data"));
        assert!(t.volumes[1].is_host_path() && t.volumes[1].read_only);
        for (body, field) in [
            (
                r#"{"image": "i", "constraints": ["zone"]}"#,
                "constraints[0]",
            ),
            (r#"{"image": "i", "spread_by": "a b"}"#, "spread_by"),
            (
                r#"{"image": "i", "volumes": ["x:/a", "y:/a"]}"#,
                "volumes[1]",
            ),
            (r#"{"image": "i", "volumes": ["../x:/a"]}"#, "volumes[0]"),
        ] {
            let err = parse(body).unwrap_err().0;
            assert!(err.starts_with(field), "{body}: {err}");
        }
    }

    #[test]
    fn nil_uuid_from_go_means_generate_one() {
        let ev = parse(r#"{"ID": "00000000-0000-0000-0000-000000000000", "Task": {"ID": "00000000-0000-0000-0000-000000000000", "Image": "i"}}"#).unwrap();
        assert!(!ev.id.is_nil());
        assert!(!ev.task.id.is_nil());
    }

    #[test]
    fn task_ids_parse_or_explain() {
        assert!(parse_task_id("21b23589-5d2d-4731-b5c9-a97e9832d021").is_ok());
        let err = parse_task_id("nope").unwrap_err();
        assert!(err.0.contains("expected a UUID"));
    }
}
