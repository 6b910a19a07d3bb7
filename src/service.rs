//! The service model: "keep N copies of this task running, and replace them a few at a time
//! when the template changes". Pure: the record, its rollout's state, and the input formats of
//! `POST /services`, `PUT` and `PATCH` with errors that name the field.
//!
//! A service's tasks are ordinary tasks that carry `service`, `version` (of the template they
//! run) and `slot`; the manager's core keeps their number and versions in line with the service
//! (`actors::manager::core::services`), level-triggered like everything else it does.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::task::{InputError, Task, from_value, json_kind, parse_template};

/// Longest service name: its tasks are called `<service>.<slot>`.
pub const MAX_SERVICE_NAME: usize = 63;
/// Most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 100_000;
/// Longest wait between batches or of a task's monitoring that may be asked for.
pub const MAX_UPDATE_SECONDS: u64 = 24 * 3600;

/// Replicated: `replicas` tasks wherever they fit. Global: one task on each Ready node that
/// takes tasks and satisfies the constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Replicated,
    Global,
}

/// Whether a slot's old task stops before its new one starts, or after it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    StopFirst,
    StartFirst,
}

/// What a rollout does when too many of its new tasks fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
}

/// How a changed template rolls out; the defaults are Swarm's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateConfig {
    /// Slots replaced at a time; 0 means all at once.
    pub parallelism: u32,
    /// Seconds to wait between batches.
    pub delay_s: u64,
    pub order: Order,
    pub failure_action: FailureAction,
    /// Share of new tasks that may fail before the failure action, 0.0 to 1.0.
    pub max_failure_ratio: f64,
    /// Seconds a new task must run (passing its health check, when it has one) to count as
    /// updated.
    pub min_healthy_s: u64,
}

impl Default for UpdateConfig {
    fn default() -> UpdateConfig {
        UpdateConfig {
            parallelism: 1,
            delay_s: 0,
            order: Order::StopFirst,
            failure_action: FailureAction::Pause,
            max_failure_ratio: 0.0,
            min_healthy_s: 5,
        }
    }
}

/// Where a service's rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Every task runs the current version (or is on its way after a loss): nothing to roll.
    #[default]
    Completed,
    /// Slots are being moved to the current version.
    Updating,
    /// Stopped by the failure action (or a failed rollback); a new change resumes it.
    Paused,
    /// Going back to the previous version after failures, or on demand.
    RollingBack,
    /// The rollback finished: every task runs the previous version again.
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Completed => "completed",
            RolloutState::Updating => "updating",
            RolloutState::Paused => "paused",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    /// A rollout is moving slots.
    pub fn is_moving(self) -> bool {
        matches!(self, RolloutState::Updating | RolloutState::RollingBack)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service's last rollout.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub state: RolloutState,
    /// The version it moves from (0: none, the service's first version).
    pub from_version: u64,
    /// The version it moves to.
    pub to_version: u64,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it paused or rolled back.
    #[serde(default)]
    pub message: Option<String>,
}

/// A template a service had, kept to roll back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Previous {
    pub version: u64,
    #[schema(value_type = Object)]
    pub task: Task,
}

/// A service as the manager keeps it (the `services` table) and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub mode: Mode,
    /// Tasks to keep running (replicated mode).
    pub replicas: u32,
    /// The template of the current version.
    pub task: Task,
    pub update: UpdateConfig,
    /// The current version of the template.
    pub version: u64,
    /// The template before the last change, to roll back to.
    pub previous: Option<Previous>,
    /// The highest version given so far: a change gets the next one.
    pub last_version: u64,
    pub rollout: Rollout,
    /// Tasks created for it so far (their ids derive from it).
    pub created_tasks: u64,
    /// Deleted: its tasks are stopping; the record goes once none runs.
    pub removing: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl crate::db::Record for Service {
    const VERSION: u8 = 1;
}

/// What a user asks for in `POST /services` and `PUT /services/{name}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: Mode,
    pub replicas: u32,
    pub task: Task,
    pub update: UpdateConfig,
}

impl Service {
    /// The spec a user gave.
    pub fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            name: self.name.clone(),
            mode: self.mode,
            replicas: self.replicas,
            task: self.task.clone(),
            update: self.update.clone(),
        }
    }

    /// The spec as JSON, in the shape `POST /services` takes (what `PATCH` merges into).
    pub fn spec_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "mode": self.mode,
            "replicas": self.replicas,
            "task": template_json(&self.task),
            "update": self.update,
        })
    }
}

/// A template's user fields as JSON (what `POST /tasks` takes).
pub fn template_json(t: &Task) -> Value {
    serde_json::json!({
        "image": t.image,
        "cmd": t.cmd,
        "env": t.env,
        "cpu": t.cpu,
        "memory": t.memory,
        "disk": t.disk,
        "exposed_ports": t.exposed_ports,
        "port_bindings": t.port_bindings,
        "restart_policy": t.restart_policy.as_str(),
        "max_restarts": t.max_restarts,
        "health_check": t.health_check,
        "stop_timeout_s": t.stop_timeout_s,
        "pids_limit": t.pids_limit,
        "constraints": t.constraints,
        "spread_by": t.spread_by,
        "volumes": t.volumes,
    })
}

/// Whether two templates ask for the same task (what a rollout would change).
pub fn same_template(a: &Task, b: &Task) -> bool {
    let mut b = b.clone();
    b.id = a.id;
    b.name = a.name.clone();
    b.service = a.service.clone();
    b.version = a.version;
    b.slot = a.slot;
    a.same_spec(&b)
}

/// The body of `POST /services` and `PUT /services/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ServiceInput {
    /// Lower-case letters, digits and `-`, at most 63, starting with a letter or digit; its
    /// tasks are called `<name>.<slot>`.
    #[schema(example = "web")]
    #[serde(default)]
    pub name: Option<String>,
    /// `replicated` (the default) or `global` (one task on each Ready node).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Tasks to keep running, 0 to 100000 (default 1); not for global services.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000)]
    pub replicas: Option<u32>,
    /// The task template, as `POST /tasks` takes a task (without `id` or `name`).
    #[schema(schema_with = crate::task::template_schema)]
    pub task: Value,
    #[serde(default)]
    pub update: Option<UpdateInput>,
}

/// How a changed template rolls out; every field optional (Swarm's defaults).
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct UpdateInput {
    /// Slots replaced at a time (default 1); 0 means all at once.
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// Seconds between batches (default 0).
    #[serde(default)]
    #[schema(maximum = 86400)]
    pub delay_s: Option<u64>,
    /// `stop-first` (default) or `start-first`.
    #[serde(default)]
    pub order: Option<Order>,
    /// `pause` (default) or `rollback`.
    #[serde(default)]
    pub failure_action: Option<FailureAction>,
    /// Share of new tasks that may fail, 0.0 to 1.0 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub max_failure_ratio: Option<f64>,
    /// Seconds a new task must run, and pass its health check, to count as updated (default 5).
    #[serde(default)]
    #[schema(maximum = 86400)]
    pub min_healthy_s: Option<u64>,
}

const EXPECTED_SERVICE: &str = r#"expected {"name": "web", "replicas": 3, "task": {"image": "cube-demo/busybox:latest", "cmd": ["httpd", "-f"]}}"#;

/// Check a service name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name; expected lower-case letters, digits and '-', at most {MAX_SERVICE_NAME}, starting with a letter or digit, e.g. \"web\""
        ))
    }
}

/// Parse a `POST /services` or `PUT /services/{name}` body. `name` is the name in the path of a
/// `PUT` (the body may leave it out, or must agree).
pub fn parse_service(body: &[u8], name: Option<&str>) -> Result<ServiceSpec, InputError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        InputError(format!(
            "the body is not valid JSON ({e}); {EXPECTED_SERVICE}"
        ))
    })?;
    spec_from_value(value, name)
}

/// Read a service spec from JSON.
pub fn spec_from_value(value: Value, name: Option<&str>) -> Result<ServiceSpec, InputError> {
    let Value::Object(map) = &value else {
        return Err(InputError(format!(
            "the body is a JSON {}; {EXPECTED_SERVICE}",
            json_kind(&value)
        )));
    };
    if !map.contains_key("task") {
        return Err(InputError(format!(
            "the body has no \"task\"; {EXPECTED_SERVICE}"
        )));
    }
    // serde would read a struct from an array too (`"update": [1, 0]`): only an object is one.
    if let Some(update) = map.get("update")
        && !(update.is_object() || update.is_null())
    {
        return Err(InputError::at(
            "update",
            format!(
                "is a JSON {}; expected an object, e.g. {{\"parallelism\": 2, \"order\": \"start-first\"}}",
                json_kind(update)
            ),
        ));
    }
    let input: ServiceInput = from_value(value)?;
    let name = match (input.name.map(|n| n.trim().to_string()), name) {
        (Some(given), Some(path)) if given != path => {
            return Err(InputError::at(
                "name",
                format!(
                    "{given:?} differs from the service in the path, {path:?}; leave it out or give the same"
                ),
            ));
        }
        (Some(given), _) => given,
        (None, Some(path)) => path.to_string(),
        (None, None) => {
            return Err(InputError::at(
                "name",
                "is missing; expected the service's name, e.g. \"web\"",
            ));
        }
    };
    check_name(&name).map_err(|m| InputError::at("name", m))?;
    let mode = input.mode.unwrap_or_default();
    let replicas = match (mode, input.replicas) {
        (Mode::Global, Some(_)) => {
            return Err(InputError::at(
                "replicas",
                "a global service runs one task on each node; expected no replicas with mode global",
            ));
        }
        (Mode::Global, None) => 0,
        (Mode::Replicated, r) => r.unwrap_or(1),
    };
    if replicas > MAX_REPLICAS {
        return Err(InputError::at(
            "replicas",
            format!("{replicas} is too many; expected 0 to {MAX_REPLICAS}"),
        ));
    }
    if let Value::Object(t) = &input.task {
        for key in ["id", "ID", "name", "Name"] {
            if t.get(key).is_some_and(|v| !v.is_null()) {
                return Err(InputError::at(
                    &format!("task.{key}"),
                    "is set by Cube for each of a service's tasks (<service>.<slot>); expected the template without it",
                ));
            }
        }
    }
    let mut task = parse_template(input.task, "task.")?;
    task.name = String::new();
    task.id = uuid::Uuid::nil();
    let update = update_config(input.update.unwrap_or_default(), UpdateConfig::default())?;
    Ok(ServiceSpec {
        name,
        mode,
        replicas,
        task,
        update,
    })
}

/// Apply what an `update` object gives over `base`.
fn update_config(input: UpdateInput, base: UpdateConfig) -> Result<UpdateConfig, InputError> {
    let mut u = base;
    if let Some(p) = input.parallelism {
        u.parallelism = p;
    }
    if let Some(d) = input.delay_s {
        if d > MAX_UPDATE_SECONDS {
            return Err(InputError::at(
                "update.delay_s",
                format!("{d} is too long; expected seconds from 0 to {MAX_UPDATE_SECONDS}"),
            ));
        }
        u.delay_s = d;
    }
    if let Some(o) = input.order {
        u.order = o;
    }
    if let Some(a) = input.failure_action {
        u.failure_action = a;
    }
    if let Some(r) = input.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(InputError::at(
                "update.max_failure_ratio",
                format!("{r} is not a share; expected a number from 0.0 to 1.0"),
            ));
        }
        u.max_failure_ratio = r;
    }
    if let Some(m) = input.min_healthy_s {
        if m > MAX_UPDATE_SECONDS {
            return Err(InputError::at(
                "update.min_healthy_s",
                format!("{m} is too long; expected seconds from 0 to {MAX_UPDATE_SECONDS}"),
            ));
        }
        u.min_healthy_s = m;
    }
    Ok(u)
}

/// Apply a `PATCH /services/{name}` body (a JSON merge patch, RFC 7396, of the spec's JSON) to
/// a service's spec.
pub fn parse_patch(service: &Service, body: &[u8]) -> Result<ServiceSpec, InputError> {
    const EXPECTED: &str = r#"expected the fields to change, e.g. {"replicas": 5} or {"task": {"image": "cube-demo/busybox:2"}}"#;
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| InputError(format!("the body is not valid JSON ({e}); {EXPECTED}")))?;
    let Value::Object(fields) = &patch else {
        return Err(InputError(format!(
            "the body is a JSON {}; {EXPECTED}",
            json_kind(&patch)
        )));
    };
    if let Some(mode) = fields.get("mode")
        && *mode != serde_json::json!(service.mode)
    {
        return Err(InputError::at(
            "mode",
            format!(
                "a service's mode cannot change (it is {}); expected to delete it and create it again",
                serde_json::json!(service.mode)
            ),
        ));
    }
    let mut spec = service.spec_json();
    if service.mode == Mode::Global
        && let Value::Object(m) = &mut spec
    {
        m.remove("replicas");
    }
    merge_patch(&mut spec, &patch);
    spec_from_value(spec, Some(&service.name))
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// How many tasks of one version a service has, and how many run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionCount {
    pub version: u64,
    /// Tasks of this version that are not finished.
    pub tasks: usize,
    pub running: usize,
}

/// One address a service answers at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// `host:port`, the worker's host and the task's host port.
    pub address: String,
    /// The container port it maps, `80/tcp`.
    pub port: String,
    #[schema(value_type = String, format = Uuid)]
    pub task: uuid::Uuid,
    pub node: String,
    pub slot: u32,
    pub version: u64,
}

/// What `GET /services/{name}` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub mode: Mode,
    /// Replicas asked for (replicated mode).
    pub replicas: u32,
    /// Tasks it should run now: the replicas, or the eligible nodes of a global service.
    pub desired: usize,
    /// Its tasks that run now (Running, not being stopped).
    pub running: usize,
    /// Of those, the ones on the current version.
    pub running_current: usize,
    pub version: u64,
    #[serde(default)]
    pub previous_version: Option<u64>,
    /// The template, as `POST /tasks` takes it.
    #[schema(value_type = Object)]
    pub task: Value,
    pub update: UpdateConfig,
    pub rollout: Rollout,
    /// Slots on the current version and counted as updated, of all slots.
    pub updated: usize,
    /// Unfinished tasks by version.
    pub versions: Vec<VersionCount>,
    /// Deleted: its tasks are stopping.
    pub removing: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What `GET /services/{name}/endpoints` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoints {
    pub service: String,
    /// Changes whenever the list does; pass it as `?index=` to wait for the next change.
    pub index: u64,
    pub endpoints: Vec<Endpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: &str) -> Result<ServiceSpec, InputError> {
        parse_service(body.as_bytes(), None)
    }

    #[test]
    fn a_service_parses_with_swarms_defaults() {
        let s = spec(r#"{"name": "web", "replicas": 4, "task": {"image": "i", "cmd": ["httpd"]}}"#)
            .unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.replicas, 4);
        assert_eq!(s.task.cmd, vec!["httpd"]);
        assert_eq!(s.update, UpdateConfig::default());
        assert_eq!(s.update.parallelism, 1);
        assert_eq!(s.update.min_healthy_s, 5);
        let g = spec(r#"{"name": "agent", "mode": "global", "task": {"image": "i"}}"#).unwrap();
        assert_eq!((g.mode, g.replicas), (Mode::Global, 0));
    }

    #[test]
    fn bad_services_name_the_field() {
        for (body, field) in [
            (r#"{"name": "Web", "task": {"image": "i"}}"#, "name"),
            (r#"{"task": {"image": "i"}}"#, "name"),
            (
                r#"{"name": "w", "task": {"image": "i", "name": "x"}}"#,
                "task.name",
            ),
            (
                r#"{"name": "w", "task": {"image": "i", "cpu": -1}}"#,
                "task.cpu",
            ),
            (r#"{"name": "w", "task": {}}"#, "task.image"),
            (
                r#"{"name": "w", "replicas": -1, "task": {"image": "i"}}"#,
                "replicas",
            ),
            (
                r#"{"name": "w", "mode": "global", "replicas": 2, "task": {"image": "i"}}"#,
                "replicas",
            ),
            (
                r#"{"name": "w", "task": {"image": "i"}, "update": {"order": "sideways"}}"#,
                "update.order",
            ),
            (
                r#"{"name": "w", "task": {"image": "i"}, "update": {"max_failure_ratio": 2}}"#,
                "update.max_failure_ratio",
            ),
            (
                r#"{"name": "w", "task": {"image": "i"}, "update": [null, null]}"#,
                "update",
            ),
        ] {
            let err = spec(body).unwrap_err().0;
            assert!(err.starts_with(field), "{body}: {err}");
        }
        assert!(
            spec(r#"{"name": "w"}"#)
                .unwrap_err()
                .0
                .contains("no \"task\"")
        );
        assert!(parse_service(br#"{"name": "a", "task": {"image": "i"}}"#, Some("b")).is_err());
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let s = spec(r#"{"name": "web", "replicas": 2, "task": {"image": "i", "env": ["A=1"], "cmd": ["sleep", "9"]}, "update": {"parallelism": 2}}"#)
            .unwrap();
        let now = Utc::now();
        let svc = Service {
            name: s.name,
            mode: s.mode,
            replicas: s.replicas,
            task: s.task,
            update: s.update,
            version: 1,
            previous: None,
            last_version: 1,
            rollout: Rollout::default(),
            created_tasks: 0,
            removing: false,
            created_at: now,
            updated_at: now,
        };
        let p = parse_patch(&svc, br#"{"replicas": 5}"#).unwrap();
        assert_eq!(p.replicas, 5);
        assert!(same_template(&p.task, &svc.task));
        let p = parse_patch(&svc, br#"{"task": {"image": "j", "env": null}}"#).unwrap();
        assert_eq!(p.task.image, "j");
        assert!(p.task.env.is_empty());
        assert_eq!(p.task.cmd, vec!["sleep", "9"]);
        assert_eq!(p.update.parallelism, 2);
        assert!(!same_template(&p.task, &svc.task));
        assert!(parse_patch(&svc, br#"{"mode": "global"}"#).is_err());
        assert!(parse_patch(&svc, br#"[1]"#).is_err());
    }
}
