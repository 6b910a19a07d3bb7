//! The OpenAPI 3.1 documents of both APIs, served at `GET /openapi.json` on each (open, like
//! `/health`).
//!
//! The schemas come from the types the handlers serve and read ([`Task`], [`NodeReport`],
//! [`NodeStats`], [`Changes`], the error body, the task input of [`crate::task`]), derived with
//! utoipa; the operations are declared below, one doc-only function each, with the bounds the
//! handlers enforce and every answer each can give. Two rules hold them to the server, and
//! `bench/fuzz_api.sh` checks both against a live manager and worker with schemathesis:
//!
//! - **Never stricter than the server.** Whatever a handler accepts is valid here (unknown body
//!   fields, `null` for an optional field, a state in any case), so data that breaks a schema is
//!   data the server refuses with a 4xx.
//! - **Answers exactly as sent.** Every field of an answer is always present (none is skipped
//!   when serializing), so every property of an answer's schema is required, `null` where the
//!   field is an `Option`; unsigned integers carry their range as `minimum`/`maximum`.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};

use super::error::ErrorBody;
use super::events::ServerSentEvent;
use super::manager::{JoinBody, ManagerHealth, NodeJoined, NodePatchBody};
use super::worker::WorkerHealth;
use crate::actors::manager::NodeReport;
use crate::actors::worker::{
    Changes, StartOutcome, StartsAnswer, StopOutcome, StopsAnswer, VolumeReport, VolumesAnswer,
};
use crate::node::{Availability, NodeStats, NodeStatus};
use crate::service::{
    Endpoint, Endpoints, FailureAction, Mode, Order, Rollout, RolloutState, ServiceInput,
    ServiceView, UpdateConfig, UpdateInput, VersionCount,
};
use crate::task::{
    Attempt, Goal, RestartPolicy, Starts, State, StopInput, Stops, Submission, Task,
};

/// `GET /openapi.json` on the manager API.
pub async fn manager() -> HttpResponse {
    static DOC: LazyLock<String> = LazyLock::new(|| manager_document().to_string());
    json(&DOC)
}

/// `GET /openapi.json` on the worker API.
pub async fn worker() -> HttpResponse {
    static DOC: LazyLock<String> = LazyLock::new(|| worker_document().to_string());
    json(&DOC)
}

fn json(doc: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc)
}

/// The manager API's document.
pub fn manager_document() -> Value {
    finish(ManagerDoc::openapi())
}

/// The worker API's document.
pub fn worker_document() -> Value {
    finish(WorkerDoc::openapi())
}

/// The schemas that describe input: only these may leave fields out.
const INPUT_SCHEMAS: &[&str] = &[
    "TaskInput",
    "TaskEventInput",
    "NodeJoin",
    "NodePatch",
    "StopInput",
    "ServiceInput",
    "UpdateInput",
    "ServicePatch",
];

/// The document as served: every property of an answer required, and each unsigned integer's
/// range stated as keywords (its `format` alone binds no JSON Schema validator).
fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document serializes");
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            if INPUT_SCHEMAS.contains(&name.as_str()) {
                continue;
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                let all: Vec<Value> = properties.keys().cloned().map(Value::String).collect();
                schema["required"] = Value::Array(all);
            }
        }
    }
    bound_unsigned(&mut doc);
    doc
}

/// Give every unsigned integer schema its `maximum`, and its format the usual name (utoipa 5.5
/// spells `u64` as `u-int64`).
fn bound_unsigned(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned: Option<(&str, u64)> = match map.get("format").and_then(Value::as_str) {
                Some("u-int8" | "uint8") => Some(("uint8", u8::MAX.into())),
                Some("u-int16" | "uint16") => Some(("uint16", u16::MAX.into())),
                Some("u-int32" | "uint32") => Some(("uint32", u32::MAX.into())),
                Some("u-int64" | "uint64") => Some(("uint64", u64::MAX)),
                _ => None,
            };
            if let Some((format, max)) = unsigned {
                map.insert("format".into(), format.into());
                map.entry("maximum").or_insert(Value::from(max));
                map.entry("minimum").or_insert(Value::from(0));
            }
            map.values_mut().for_each(bound_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// The `bearerAuth` scheme: `Authorization: Bearer <token>`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of the API: on the manager one of --token-file or CUBE_TOKEN (a read token may only GET), on a worker the cluster token. Needed only when the API has tokens; /health and /openapi.json never need one.",
                    ))
                    .build(),
            ),
        );
    }
}

/// An error answer: `{"error": "…"}` as JSON.
fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// Error answers shared by many operations, as named responses.
macro_rules! error_responses {
    ($($name:ident = $description:literal;)*) => {$(
        #[doc = $description]
        #[allow(dead_code)] // named in `responses(...)` only
        struct $name;

        impl<'s> utoipa::ToResponse<'s> for $name {
            fn response() -> (&'s str, RefOr<Response>) {
                (stringify!($name), error_response($description).into())
            }
        }
    )*};
}

error_responses! {
    BadRequest = "Malformed input: the error names the field or value and what is expected.";
    Unauthorized = "No valid `Authorization: Bearer` token (only on an API that has tokens).";
    Forbidden = "A read token asked to write: this needs a write token.";
    TaskNotFound = "No task has this id.";
    ServiceNotFound = "No service has this name.";
    RequestTimeout = "The body did not arrive within 10 s of the request's head.";
    PayloadTooLarge = "The body is larger than 1 MiB.";
    Unavailable = "Not now: the server is shutting down, or a worker it needs does not answer; try again.";
    InsufficientStorage = "The store has no room: new tasks (or attempts) are refused while the last part of the store is kept for stops, or a write found the store or its disk full. The error says where, how full, and what makes room (a larger --store-size, free disk, retention collecting finished tasks); stops are still accepted.";
}

/// What the worker's `GET /tasks` answers: every task, or with `since` the change feed.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
#[serde(untagged)]
enum WorkerTasks {
    All(Vec<Task>),
    Feed(Changes),
}

/// The body of `PATCH /services/{name}`: a JSON merge patch (RFC 7396) of the spec as
/// `POST /services` takes it. Each field given replaces the spec's (objects merge key by key);
/// `null` removes a field, which then takes its default. The spec that results is checked as
/// a `POST /services` body is.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
struct ServicePatch {
    /// The same name as in the path, or `null`.
    name: Option<String>,
    /// A service's mode cannot change: only its current mode is accepted.
    mode: Option<Mode>,
    /// Tasks to keep running, 0 to 100000; `{"replicas": 5}` scales. Not for global services.
    #[schema(minimum = 0, maximum = 100000)]
    replicas: Option<u32>,
    /// A merge patch of the task template (`{"image": "cube-demo/busybox:2"}` changes the
    /// image and rolls it out); the template that results is checked as `POST /tasks` checks
    /// a task.
    #[schema(value_type = Option<Object>)]
    task: Option<Value>,
    update: Option<UpdateInput>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cube manager API",
        description = "Submit, list, stop and read tasks; run services (N copies of a task, rolled out a few at a time); join and forget workers. README.md (Contracts) describes each answer; every error is {\"error\": \"…\"}.",
        license(name = "MIT"),
    ),
    paths(
        manager_api::submit,
        manager_api::list_tasks,
        manager_api::get_task,
        manager_api::stop_task,
        manager_api::task_logs,
        manager_api::nodes,
        manager_api::join_node,
        manager_api::get_node,
        manager_api::change_node,
        manager_api::forget_node,
        manager_api::create_service,
        manager_api::list_services,
        manager_api::get_service,
        manager_api::replace_service,
        manager_api::patch_service,
        manager_api::delete_service,
        manager_api::rollback_service,
        manager_api::service_endpoints,
        manager_api::events,
        manager_api::snapshot,
        manager_api::health,
        manager_api::metrics,
        manager_api::openapi,
    ),
    components(
        schemas(
            ErrorBody,
            ServerSentEvent,
            Task,
            Attempt,
            State,
            Goal,
            RestartPolicy,
            NodeReport,
            NodeStatus,
            Availability,
            ServiceInput,
            UpdateInput,
            ServicePatch,
            ServiceView,
            Mode,
            Order,
            FailureAction,
            UpdateConfig,
            Rollout,
            RolloutState,
            VersionCount,
            Endpoints,
            Endpoint
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            TaskNotFound,
            ServiceNotFound,
            RequestTimeout,
            PayloadTooLarge,
            Unavailable,
            InsufficientStorage
        ),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "What runs where"),
        (name = "nodes", description = "The workers"),
        (name = "services", description = "Replicated tasks and their rollouts"),
        (name = "events", description = "Every change, as it is committed"),
        (name = "meta", description = "Liveness and this document; no token needed"),
    ),
)]
struct ManagerDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cube worker API",
        description = "What the manager asks of a worker: start and stop attempts, the change feed, logs and the machine's capacity. Every error is {\"error\": \"…\"}.",
        license(name = "MIT"),
    ),
    paths(
        worker_api::start_task,
        worker_api::start_tasks,
        worker_api::stop_tasks,
        worker_api::list_tasks,
        worker_api::get_task,
        worker_api::stop_task,
        worker_api::task_logs,
        worker_api::stats,
        worker_api::volumes,
        worker_api::health,
        worker_api::metrics,
        worker_api::openapi,
    ),
    components(
        schemas(
            ErrorBody,
            Task,
            Attempt,
            State,
            Goal,
            RestartPolicy,
            Changes,
            NodeStats,
            StartsAnswer,
            StartOutcome,
            Stops,
            StopInput,
            StopsAnswer,
            StopOutcome,
            VolumesAnswer,
            VolumeReport
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            TaskNotFound,
            RequestTimeout,
            PayloadTooLarge,
            Unavailable,
            InsufficientStorage
        ),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "Attempts this worker runs"),
        (name = "meta", description = "Liveness and this document; no token needed"),
    ),
)]
struct WorkerDoc;

/// The manager's operations (`super::manager::configure` mounts their handlers); each
/// function exists for its `#[utoipa::path]` only.
#[allow(dead_code)]
mod manager_api {
    use super::*;

    /// Submit a task
    ///
    /// A TaskEvent or a bare task. Answered once the task is committed (fsync'd); a
    /// client-chosen id makes the submission idempotent. An event with `state: Completed` asks
    /// for a stop instead, as `DELETE /tasks/{id}` does.
    #[utoipa::path(
        post,
        path = "/tasks",
        tag = "tasks",
        request_body(content = Submission, content_type = "application/json"),
        responses(
            (status = 201, description = "The task is new, and committed.", body = Task,
                headers(("Location" = String, description = "The task's URL, /tasks/{id}."))),
            (status = 200, description = "A task with this id and the same spec exists.", body = Task,
                headers(("Location" = String, description = "The task's URL, /tasks/{id}."))),
            (status = 202, description = "The event asked for a stop: committed, as DELETE.", body = Task,
                headers(("Location" = String, description = "The task's URL, /tasks/{id}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, description = "A stop was asked for a task that does not exist.", body = ErrorBody),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "The id is taken by a task with another spec.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn submit() {}

    /// List tasks
    ///
    /// Tasks ordered by id (or newest first), filtered by `state`, `worker`, `service` and a search `q`; `limit` and `after` page
    /// through them.
    #[utoipa::path(
        get,
        path = "/tasks",
        tag = "tasks",
        params(
            ("state" = Option<String>, Query, pattern = "^(?:[Pp][Ee][Nn][Dd][Ii][Nn][Gg]|[Ss][Cc][Hh][Ee][Dd][Uu][Ll][Ee][Dd]|[Rr][Uu][Nn][Nn][Ii][Nn][Gg]|[Cc][Oo][Mm][Pp][Ll][Ee][Tt][Ee][Dd]|[Ff][Aa][Ii][Ll][Ee][Dd])$",
                example = "Running",
                description = "Only tasks in this state: Pending, Scheduled, Running, Completed or Failed, in any case."),
            ("worker" = Option<String>, Query, description = "Only tasks placed on this worker (a name no node has matches nothing)."),
            ("service" = Option<String>, Query, description = "Only the tasks of this service (a name no service has matches nothing)."),
            ("order" = Option<String>, Query, pattern = "^(?:id|newest)$",
                description = "`id` (the default): ordered by id. `newest`: newest first, by submission; `after` must then name a task the manager holds (404 otherwise)."),
            ("q" = Option<String>, Query, max_length = 256,
                description = "Only tasks whose name, id or image holds this text, in any case (surrounding white space is ignored)."),
            ("limit" = Option<usize>, Query, minimum = 1,
                description = "At most this many tasks: 500 without it, and a limit above 5000 is cut to 5000. When more follow, the Link header names the next page (rel=\"next\")."),
            ("after" = Option<uuid::Uuid>, Query, description = "Only tasks whose id sorts after this one (it need not exist). Newest first: only tasks submitted before this one, which must be a task the manager holds (404 otherwise)."),
            ("before" = Option<u64>, Query, minimum = 0,
                description = "Newest first only, not with `after`: only tasks submitted before this submission number. The next page's Link carries it; it stays good when the task it came from is collected."),
        ),
        responses(
            (status = 200, description = "The tasks, ordered by id or newest first.", body = [Task],
                headers(("Link" = String, description = "`</tasks?…&after=ID>; rel=\"next\"`: the next page, when there is one."))),
            (status = 400, response = BadRequest),
            (status = 404, description = "A newest-first page was asked for after a task the manager does not hold.", body = ErrorBody),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn list_tasks() {}

    /// Get a task
    #[utoipa::path(
        get,
        path = "/tasks/{id}",
        tag = "tasks",
        params(("id" = uuid::Uuid, Path, description = "The task's id.")),
        responses(
            (status = 200, description = "The task.", body = Task),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, response = TaskNotFound),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn get_task() {}

    /// Stop a task
    ///
    /// Answered once the stop is committed: the task shows `desired: stopped` at once and is
    /// Completed once its worker reports the container gone. Stopping a stopped task is
    /// answered the same.
    #[utoipa::path(
        delete,
        path = "/tasks/{id}",
        tag = "tasks",
        params(("id" = uuid::Uuid, Path, description = "The task's id.")),
        responses(
            (status = 202, description = "The stop is committed.", body = Task),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = TaskNotFound),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn stop_task() {}

    /// Read a task's output
    ///
    /// The container's output, read from its worker, as it comes (with `follow`, until the
    /// container ends).
    #[utoipa::path(
        get,
        path = "/tasks/{id}/logs",
        tag = "tasks",
        params(
            ("id" = uuid::Uuid, Path, description = "The task's id."),
            ("tail" = Option<usize>, Query, minimum = 0, maximum = 100000,
                description = "Only the last this many lines (without it, the whole log)."),
            ("follow" = Option<bool>, Query, description = "Keep streaming until the container ends (default false)."),
        ),
        responses(
            (status = 200, description = "The output, streamed.", body = String, content_type = "text/plain"),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, description = "No task has this id, or it has no container to read from.", body = ErrorBody),
            (status = 409, description = "The task is not placed on a worker (yet).", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn task_logs() {}

    /// List the workers
    #[utoipa::path(
        get,
        path = "/nodes",
        tag = "nodes",
        responses(
            (status = 200, description = "Every worker, with capacity, allocation and status.", body = [NodeReport]),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn nodes() {}

    /// A worker joins
    ///
    /// Binds the name to the address durably and watches the worker from then on. Give either
    /// `address` or `port`, not both.
    #[utoipa::path(
        post,
        path = "/nodes",
        tag = "nodes",
        request_body(content = JoinBody, content_type = "application/json"),
        responses(
            (status = 201, description = "The name is new (or moved to this address), and committed.", body = NodeJoined,
                headers(("Location" = String, description = "The node's URL, /nodes/{name}."))),
            (status = 200, description = "The name was bound to this address already.", body = NodeJoined,
                headers(("Location" = String, description = "The node's URL, /nodes/{name}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "The name is bound to another address that still answers.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn join_node() {}

    /// One worker
    #[utoipa::path(
        get,
        path = "/nodes/{name}",
        tag = "nodes",
        params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,63}$", description = "The worker's name.")),
        responses(
            (status = 200, description = "The worker, as GET /nodes shows it.", body = NodeReport),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, description = "No node has this name.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn get_node() {}

    /// Change a worker's availability or labels
    ///
    /// `availability`: `active` takes new tasks, `pause` takes none and keeps what runs,
    /// `drain` takes none and moves every task elsewhere (`deadline_s` with it: how long a
    /// service's tasks have to be replaced). `labels` are set on the manager over the
    /// worker's own (merged with those set before; they win on the same key);
    /// `remove_labels` removes some of them. Any subset of the fields; answered once
    /// committed.
    #[utoipa::path(
        patch,
        path = "/nodes/{name}",
        tag = "nodes",
        params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,63}$", description = "The worker's name.")),
        request_body(content = NodePatchBody, content_type = "application/json"),
        responses(
            (status = 200, description = "The worker after the change, which is committed.", body = NodeReport),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, description = "No node has this name.", body = ErrorBody),
            (status = 408, response = RequestTimeout),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn change_node() {}

    /// Forget a worker
    #[utoipa::path(
        delete,
        path = "/nodes/{name}",
        tag = "nodes",
        params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,63}$", description = "The worker's name.")),
        responses(
            (status = 204, description = "Forgotten, and committed."),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, description = "No node has this name.", body = ErrorBody),
            (status = 409, description = "Tasks are placed on the node (the error names them).", body = ErrorBody),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn forget_node() {}

    /// Create a service
    ///
    /// Keeps `replicas` copies of the task template running (or one on each eligible node, for
    /// a global service). Answered once the service is committed; its tasks are placed from
    /// then on. The same spec again answers the service as it is.
    #[utoipa::path(
        post,
        path = "/services",
        tag = "services",
        request_body(content = ServiceInput, content_type = "application/json"),
        responses(
            (status = 201, description = "The service is new, and committed.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 200, description = "A service with this name and the same spec exists.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "A service with this name has another spec (change it with PUT or PATCH), or is being deleted.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn create_service() {}

    /// List services
    #[utoipa::path(
        get,
        path = "/services",
        tag = "services",
        responses(
            (status = 200, description = "Every service, by name, with its counts and rollout.", body = [ServiceView]),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn list_services() {}

    /// Get a service
    ///
    /// Its spec, the tasks it should run and runs, its tasks by version and its rollout.
    #[utoipa::path(
        get,
        path = "/services/{name}",
        tag = "services",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name.")),
        responses(
            (status = 200, description = "The service.", body = ServiceView),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, response = ServiceNotFound),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn get_service() {}

    /// Replace a service's spec
    ///
    /// The whole spec, as `POST /services` takes it (`name` may be left out; given, it must be
    /// the path's). A service that does not exist is created. A changed template rolls out
    /// as `update` says.
    #[utoipa::path(
        put,
        path = "/services/{name}",
        tag = "services",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name.")),
        request_body(content = ServiceInput, content_type = "application/json"),
        responses(
            (status = 200, description = "The service's spec is replaced, and committed.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 201, description = "The service is new, and committed.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "The service is being deleted.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn replace_service() {}

    /// Change a service
    ///
    /// A JSON merge patch of the spec: `{"replicas": 5}` scales, `{"task": {"image": …}}`
    /// rolls a new template out.
    #[utoipa::path(
        patch,
        path = "/services/{name}",
        tag = "services",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name.")),
        request_body(content = ServicePatch, content_type = "application/json"),
        responses(
            (status = 200, description = "The change is committed.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = ServiceNotFound),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "The service is being deleted.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn patch_service() {}

    /// Delete a service
    ///
    /// Every task of it stops; the service goes once none runs (`removing` until then).
    #[utoipa::path(
        delete,
        path = "/services/{name}",
        tag = "services",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name.")),
        responses(
            (status = 202, description = "Committed: its tasks are stopping.", body = ServiceView),
            (status = 204, description = "Committed, and gone already: none of its tasks ran."),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = ServiceNotFound),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn delete_service() {}

    /// Roll a service back
    ///
    /// The previous template rolls out again, as `update` says; the rollout's state is
    /// `rolling_back`, then `rolled_back`.
    #[utoipa::path(
        post,
        path = "/services/{name}/rollback",
        tag = "services",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name.")),
        responses(
            (status = 202, description = "The rollback is committed and under way.", body = ServiceView,
                headers(("Location" = String, description = "The service's URL, /services/{name}."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = ServiceNotFound),
            (status = 409, description = "The service has no previous version, or is being deleted.", body = ErrorBody),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn rollback_service() {}

    /// A service's endpoints
    ///
    /// `host:port` of each Running task (passing its health check, when it has one) for each
    /// published port. With `index` (the `index` of an earlier answer), a long-poll: answered
    /// when the list changes from it, or after `wait` seconds with the list as it is.
    #[utoipa::path(
        get,
        path = "/services/{name}/endpoints",
        tag = "services",
        params(
            ("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "The service's name."),
            ("index" = Option<u64>, Query, description = "The index of an earlier answer: wait until the endpoints change from it. Another index (or none) answers at once."),
            ("wait" = Option<u64>, Query, minimum = 0, maximum = 300,
                description = "Seconds a long-poll waits at most (default 60; `30s` is taken too)."),
        ),
        responses(
            (status = 200, description = "The endpoints, and their index.", body = Endpoints,
                headers(("X-Cube-Index" = String, description = "The answer's index, as in its body."))),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, response = ServiceNotFound),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn service_endpoints() {}

    /// Follow every change
    ///
    /// Server-sent events: each change of a task, service or node as `id: <index>`,
    /// `event: <type>` and `data: <JSON>` lines, the JSON being `{index, time, type, action,
    /// id (a task's) or name, object}`; `type` is `task`, `service` or `node`; `action` is
    /// `updated`, `created`, `deleted` or `collected` (a task), or `ready`/`down` (a node's
    /// status). Indexes grow; a client that reconnects with `since` (or the `Last-Event-ID`
    /// header) first gets what it missed, or an `event: reset` when some of it is no longer
    /// retained (then it must list again). Comment lines (`: keep-alive`) come every 15 s.
    /// The stream has no end unless `wait` is given.
    #[utoipa::path(
        get,
        path = "/events",
        tag = "events",
        params(
            ("since" = Option<u64>, Query, minimum = 0,
                description = "Replay what is retained after this index first (0: everything retained). Without it, only new events."),
            ("tail" = Option<usize>, Query, minimum = 0, maximum = 1000,
                description = "Without since: replay the last this many retained events first (those the filters take). Not with since."),
            ("type" = Option<String>, Query, description = "Only these types, separated by commas: task, service, node.", example = "task,node"),
            ("task" = Option<uuid::Uuid>, Query, description = "Only this task's events."),
            ("node" = Option<String>, Query, description = "Only this node's events and those of the tasks placed on it."),
            ("service" = Option<String>, Query, description = "Only this service's events and those of its tasks."),
            ("wait" = Option<u64>, Query, minimum = 0, maximum = 86400,
                description = "End the stream after this many seconds (without it, the stream has no end)."),
        ),
        responses(
            (status = 200, description = "The events, streamed.", body = ServerSentEvent, content_type = "text/event-stream"),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn events() {}

    /// Snapshot the store
    ///
    /// A consistent, compacted copy of the manager's store while it serves (LMDB's copy with
    /// compaction), for `cube snapshot restore`.
    #[utoipa::path(
        post,
        path = "/snapshot",
        tag = "store",
        responses(
            (status = 200, description = "The snapshot: an LMDB data file.", content_type = "application/octet-stream", body = Vec<u8>),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 500, description = "The store could not be copied.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn snapshot() {}

    /// Liveness
    ///
    /// 200 once the manager has recovered every task and node from its store.
    #[utoipa::path(
        get,
        path = "/health",
        tag = "meta",
        responses(
            (status = 200, description = "Recovered, and answering.", body = ManagerHealth),
            (status = 503, response = Unavailable),
        ),
    )]
    fn health() {}

    /// Prometheus metrics
    ///
    /// Tasks by state, submissions, placements, restarts, failed health checks, latencies
    /// (submit to commit, submit to Running, store commits, long-polls), nodes with their
    /// capacity and bookings, services and their rollouts, the process's memory and CPU; in the
    /// Prometheus text format, version 0.0.4.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "meta",
        responses(
            (status = 200, description = "The metrics, one sample a line.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn metrics() {}

    /// This document
    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "meta",
        responses((status = 200, description = "The OpenAPI document of this API.", body = Object)),
    )]
    fn openapi() {}
}

/// A worker's operations (`super::worker::configure` mounts their handlers); each function
/// exists for its `#[utoipa::path]` only.
#[allow(dead_code)]
mod worker_api {
    use super::*;

    /// Start an attempt
    ///
    /// Runs the task's `attempt` here, at most once: a repeat answers the attempt it knows.
    /// An event with `state: Completed` stops the task instead.
    #[utoipa::path(
        post,
        path = "/tasks",
        tag = "tasks",
        request_body(content = Submission, content_type = "application/json"),
        responses(
            (status = 201, description = "A new attempt, accepted and committed.", body = Task,
                headers(("Location" = String, description = "The task's URL, /tasks/{id}."))),
            (status = 200, description = "This attempt is known already.", body = Task,
                headers(("Location" = String, description = "The task's URL, /tasks/{id}."))),
            (status = 202, description = "The event asked for a stop: committed.", body = Task),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, description = "A stop was asked for a task this worker never had (remembered all the same).", body = ErrorBody),
            (status = 408, response = RequestTimeout),
            (status = 409, description = "The attempt is older than the one this worker runs, or a stop fenced it.", body = ErrorBody),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn start_task() {}

    /// Start a batch of attempts
    ///
    /// Each task as `POST /tasks` would start it, in one step and one commit for the batch:
    /// how the manager sends its starts. The answer says, in the batch's order, which attempt
    /// the worker has of each (`created` false when it knew it already) or why it refused it
    /// (the status `POST /tasks` would have answered). A bad element refuses the whole batch.
    #[utoipa::path(
        post,
        path = "/starts",
        tag = "tasks",
        request_body(content = Starts, content_type = "application/json"),
        responses(
            (status = 200, description = "Every start of the batch committed or refused.", body = StartsAnswer),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 408, response = RequestTimeout),
            (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn start_tasks() {}

    /// Stop a batch of attempts
    ///
    /// Each stop as `DELETE /tasks/{id}?attempt=N` would carry it out, in one step and one
    /// commit for the batch: how the manager sends its stops. The answer says, in the batch's
    /// order, the attempt and state each task was left in, or why the stop was refused (the
    /// status `DELETE` would have answered). A bad element refuses the whole batch.
    #[utoipa::path(
        post,
        path = "/stops",
        tag = "tasks",
        request_body(content = Stops, content_type = "application/json"),
        responses(
            (status = 200, description = "Every stop of the batch committed or refused.", body = StopsAnswer),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 408, response = RequestTimeout),
            (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn stop_tasks() {}

    /// Every task, or the change feed
    ///
    /// Without `since`, every task the worker has written to its store (finished tasks leave
    /// once the manager has recorded them and the retention passed). With `since`, the change
    /// feed: the tasks changed after that sequence number (all of them, `full: true`, for
    /// `since=0` or another `instance`), waiting up to `wait` seconds for one. With `limit`,
    /// in pages: `more: true` says to read again from the answer's `seq` for the rest (the
    /// pages after a full one complete it).
    #[utoipa::path(
        get,
        path = "/tasks",
        tag = "tasks",
        params(
            ("since" = Option<u64>, Query, description = "A sequence number from an earlier answer, or 0: answer the change feed."),
            ("wait" = Option<f64>, Query, minimum = 0,
                description = "Seconds to wait for a change (a wait over 60 is cut to 60; default 0)."),
            ("instance" = Option<uuid::Uuid>, Query, description = "The worker instance `since` belongs to."),
            ("acked" = Option<u64>, Query,
                description = "The manager has recorded this instance's feed up to this sequence number: finished tasks written there may be dropped once their retention passed. One of another instance, or ahead of the feed, is ignored."),
            ("limit" = Option<u64>, Query, minimum = 1,
                description = "Answer the change feed in pages of at most this many tasks (cut to the worker's page size, 5000 by default, and 32 MiB of tasks, but at least one task). Without it, one answer holds every change."),
        ),
        responses(
            (status = 200, description = "Every task (an array), or with since the change feed (an object).", body = WorkerTasks),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn list_tasks() {}

    /// Get a task
    #[utoipa::path(
        get,
        path = "/tasks/{id}",
        tag = "tasks",
        params(("id" = uuid::Uuid, Path, description = "The task's id.")),
        responses(
            (status = 200, description = "The task as this worker last wrote it.", body = Task),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, description = "This worker never had the task, or dropped it: it finished, the manager recorded it and the retention passed.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn get_task() {}

    /// Stop a task
    ///
    /// With `attempt`, fences every attempt up to it for good and stops the current one if it
    /// is one of them.
    #[utoipa::path(
        delete,
        path = "/tasks/{id}",
        tag = "tasks",
        params(
            ("id" = uuid::Uuid, Path, description = "The task's id."),
            ("attempt" = Option<u32>, Query, minimum = 1, description = "Stop only this attempt (and fence every one up to it)."),
        ),
        responses(
            (status = 202, description = "The stop is committed.", body = Task),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, description = "This worker never had the task (the fence is remembered all the same).", body = ErrorBody),
            (status = 409, description = "The worker runs a newer attempt.", body = ErrorBody),
            (status = 503, response = Unavailable),
            (status = 507, response = InsufficientStorage),
        ),
        security(("bearerAuth" = [])),
    )]
    fn stop_task() {}

    /// Read a task's output
    #[utoipa::path(
        get,
        path = "/tasks/{id}/logs",
        tag = "tasks",
        params(
            ("id" = uuid::Uuid, Path, description = "The task's id."),
            ("tail" = Option<usize>, Query, minimum = 0, maximum = 100000,
                description = "Only the last this many lines (without it, the whole log)."),
            ("follow" = Option<bool>, Query, description = "Keep streaming until the container ends (default false)."),
        ),
        responses(
            (status = 200, description = "The output, streamed.", body = String, content_type = "text/plain"),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, description = "This worker never had the task, or it has no container.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn task_logs() {}

    /// The machine
    #[utoipa::path(
        get,
        path = "/stats",
        tag = "tasks",
        responses(
            (status = 200, description = "The machine's cpus, memory, disk, load and task count; its named volumes and the host paths it lets tasks mount.", body = NodeStats),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn stats() {}

    /// The named volumes
    ///
    /// Listed by the container runtime now: the volumes Cube created on the worker's engine
    /// (kept after the tasks that mounted them), each with the tasks on this worker that mount
    /// it.
    #[utoipa::path(
        get,
        path = "/volumes",
        tag = "tasks",
        responses(
            (status = 200, description = "The named volumes, by name.", body = VolumesAnswer),
            (status = 401, response = Unauthorized),
            (status = 500, description = "The container runtime could not list them.", body = ErrorBody),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn volumes() {}

    /// Liveness
    #[utoipa::path(
        get,
        path = "/health",
        tag = "meta",
        responses((status = 200, description = "The worker answers.", body = WorkerHealth)),
    )]
    fn health() {}

    /// Prometheus metrics
    ///
    /// This worker's tasks by state, its runtime (Docker) calls' latencies, its store's
    /// commits, the process's memory and CPU; in the Prometheus text format, version 0.0.4.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "meta",
        responses(
            (status = 200, description = "The metrics, one sample a line.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        ),
        security(("bearerAuth" = [])),
    )]
    fn metrics() {}

    /// This document
    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "meta",
        responses((status = 200, description = "The OpenAPI document of this API.", body = Object)),
    )]
    fn openapi() {}
}

#[cfg(test)]
mod tests {
    use actix_web::test as web_test;
    use actix_web::{App, http::Method};
    use chrono::Utc;

    use super::*;

    const METHODS: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];

    /// `(method, path)` of every operation of a document.
    fn operations(doc: &Value) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
        ops.sort();
        ops
    }

    /// The paths the `configure` functions of `sources` mount, read from their source: each is
    /// an `endpoint`.
    fn mounted_paths(sources: &[&str]) -> Vec<String> {
        let mut paths = Vec::new();
        for source in sources {
            let configure = source
                .split("pub fn configure")
                .nth(1)
                .and_then(|rest| rest.split("\n}\n").next())
                .expect("a configure function");
            paths.extend(
                configure
                    .split("endpoint(\"")
                    .skip(1)
                    .map(|s| s.split('"').next().unwrap().to_string()),
            );
        }
        paths.sort();
        paths
    }

    /// Every path `configure` mounts is documented, and each answers exactly the documented
    /// methods: any other is the endpoint's 405. (The handlers have no actors to reach here, so
    /// a mounted route answers 500 for want of its app data, or 200 for /openapi.json.)
    async fn documents_every_route(
        doc: &Value,
        sources: &[&str],
        configure: fn(&mut actix_web::web::ServiceConfig),
    ) {
        let documented = operations(doc);
        let mut paths: Vec<String> = documented.iter().map(|(_, p)| p.clone()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths, mounted_paths(sources));
        let app = web_test::init_service(App::new().configure(configure)).await;
        for path in &paths {
            let uri = path
                .replace("{id}", "1f0c3d6e-8a4b-4e0f-9a7c-2b5d8e1f4a6c")
                .replace("{name}", "w1");
            for method in METHODS {
                let req = web_test::TestRequest::default()
                    .method(method.clone())
                    .uri(&uri)
                    .to_request();
                let status = web_test::call_service(&app, req).await.status();
                let is_documented = documented.contains(&(method.to_string(), path.clone()));
                assert_eq!(
                    status != 405 && status != 404,
                    is_documented,
                    "{method} {path} answers {status}"
                );
            }
        }
    }

    #[actix_web::test]
    async fn the_manager_document_has_every_route_the_manager_mounts() {
        let doc = manager_document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(serde_json::to_string(&doc).unwrap().len() > 1000);
        documents_every_route(
            &doc,
            // The manager mounts the service routes of services.rs too.
            &[include_str!("manager.rs"), include_str!("services.rs")],
            super::super::manager::configure,
        )
        .await;
    }

    #[actix_web::test]
    async fn the_worker_document_has_every_route_the_worker_mounts() {
        let doc = worker_document();
        assert_eq!(doc["openapi"], "3.1.0");
        documents_every_route(
            &doc,
            &[include_str!("worker.rs")],
            super::super::worker::configure,
        )
        .await;
    }

    #[actix_web::test]
    async fn openapi_json_is_served() {
        let app =
            web_test::init_service(App::new().configure(super::super::worker::configure)).await;
        let req = web_test::TestRequest::get()
            .uri("/openapi.json")
            .to_request();
        let resp = web_test::call_service(&app, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/json"
        );
        let body: Value = serde_json::from_slice(&web_test::read_body(resp).await).unwrap();
        assert_eq!(body, worker_document());
    }

    /// Only /health and /openapi.json are open; every other operation needs the bearer token
    /// and says it may answer 401, and 403 when it writes.
    #[test]
    fn every_operation_but_the_open_ones_needs_a_token() {
        for doc in [manager_document(), worker_document()] {
            assert_eq!(
                doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
                "bearer"
            );
            for (method, path) in operations(&doc) {
                let op = &doc["paths"][&path][method.to_lowercase()];
                let open = super::super::auth::OPEN_PATHS.contains(&path.as_str());
                assert_eq!(op["security"].is_null(), open, "{method} {path}");
                assert_eq!(op["responses"]["401"].is_null(), open, "{method} {path}");
                assert_eq!(
                    op["responses"]["403"].is_null(),
                    open || method == "GET",
                    "{method} {path}"
                );
                for (status, response) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        let response = response
                            .get("$ref")
                            .and_then(Value::as_str)
                            .map(|r| &doc["components"]["responses"][&r[23..]])
                            .unwrap_or(response);
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    /// Every operation that writes to a store may answer 507 (no room), and nothing else does.
    #[test]
    fn writes_say_they_may_find_the_store_full() {
        for (doc, writes) in [
            (
                manager_document(),
                &[
                    ("POST", "/tasks"),
                    ("DELETE", "/tasks/{id}"),
                    ("POST", "/nodes"),
                    ("PATCH", "/nodes/{name}"),
                    ("DELETE", "/nodes/{name}"),
                    ("POST", "/services"),
                    ("PUT", "/services/{name}"),
                    ("PATCH", "/services/{name}"),
                    ("DELETE", "/services/{name}"),
                    ("POST", "/services/{name}/rollback"),
                ][..],
            ),
            (
                worker_document(),
                &[("POST", "/tasks"), ("DELETE", "/tasks/{id}")][..],
            ),
        ] {
            for (method, path) in operations(&doc) {
                let op = &doc["paths"][&path][method.to_lowercase()];
                let listed = !op["responses"]["507"].is_null();
                let writes = writes.contains(&(method.as_str(), path.as_str()));
                assert_eq!(listed, writes, "{method} {path}");
            }
        }
        let described = &manager_document()["components"]["responses"]["InsufficientStorage"];
        assert!(
            described["description"]
                .as_str()
                .is_some_and(|d| d.contains("--store-size")),
            "{described}"
        );
    }

    /// An answer's schema names exactly the fields the type serializes, all required.
    fn assert_answer_schema(doc: &Value, name: &str, sample: impl serde::Serialize) {
        let sample = serde_json::to_value(sample).unwrap();
        let schema = &doc["components"]["schemas"][name];
        let mut fields: Vec<&String> = sample.as_object().unwrap().keys().collect();
        let mut properties: Vec<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        fields.sort();
        properties.sort();
        required.sort();
        assert_eq!(fields, properties, "{name}");
        assert_eq!(
            required,
            fields.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "{name}"
        );
    }

    #[test]
    fn answers_are_described_field_for_field() {
        let (manager, worker) = (manager_document(), worker_document());
        let task = Task::new("cube-demo/busybox:latest");
        assert_answer_schema(&manager, "Task", &task);
        assert_answer_schema(&worker, "Task", &task);
        let mut ran = task.clone();
        ran.attempt = 1;
        let attempt = Attempt::of(&ran, Utc::now()).expect("attempt 1");
        assert_answer_schema(&manager, "Attempt", &attempt);
        assert_answer_schema(&worker, "Attempt", &attempt);
        let attempts = &manager["components"]["schemas"]["Task"]["properties"]["attempts"];
        assert_eq!(attempts["items"]["$ref"], "#/components/schemas/Attempt");
        let stats = NodeStats::simulated(
            "w1",
            crate::node::Capacity {
                cpus: 2.0,
                memory: 1 << 30,
                disk: 1 << 40,
            },
            0,
        );
        assert_answer_schema(&worker, "NodeStats", &stats);
        let volumes = VolumesAnswer {
            name: "w1".into(),
            volumes: vec![VolumeReport {
                name: "data".into(),
                created: None,
                tasks: vec![uuid::Uuid::new_v4()],
            }],
        };
        assert_answer_schema(&worker, "VolumesAnswer", &volumes);
        assert_answer_schema(&worker, "VolumeReport", &volumes.volumes[0]);
        let changes = Changes {
            name: "w1".into(),
            instance: uuid::Uuid::new_v4(),
            seq: 1,
            full: true,
            more: false,
            tasks: vec![task],
        };
        assert_answer_schema(&worker, "Changes", &changes);
        let node = NodeReport {
            name: "w1".into(),
            address: "127.0.0.1:5556".into(),
            status: NodeStatus::Ready,
            cpus: 2.0,
            cpu_allocated: 0.5,
            memory: 1,
            memory_allocated: 0,
            disk: 1,
            disk_allocated: 0,
            tasks: 1,
            last_seen: Some(Utc::now()),
            reason: None,
            availability: crate::node::Availability::Drain,
            drain_deadline: Some(Utc::now()),
            labels: [("zone".to_string(), "a".to_string())].into(),
            worker_labels: Default::default(),
            manager_labels: Default::default(),
            volumes: vec!["db".into()],
            allowed_host_paths: vec![],
        };
        assert_answer_schema(&manager, "NodeReport", &node);
        assert_answer_schema(&manager, "ErrorBody", ErrorBody { error: "no" });
        let rollout = crate::service::Rollout {
            started_at: Some(Utc::now()),
            ..Default::default()
        };
        assert_answer_schema(&manager, "Rollout", &rollout);
        let view = ServiceView {
            name: "web".into(),
            mode: Mode::Replicated,
            replicas: 2,
            desired: 2,
            running: 1,
            running_current: 1,
            version: 2,
            previous_version: Some(1),
            task: serde_json::json!({"image": "i"}),
            update: UpdateConfig::default(),
            rollout,
            updated: 1,
            versions: vec![VersionCount {
                version: 2,
                tasks: 1,
                running: 1,
            }],
            removing: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert_answer_schema(&manager, "ServiceView", &view);
        assert_answer_schema(&manager, "UpdateConfig", UpdateConfig::default());
        let endpoint = Endpoint {
            address: "127.0.0.1:20000".into(),
            port: "80/tcp".into(),
            task: uuid::Uuid::new_v4(),
            node: "w1".into(),
            slot: 1,
            version: 2,
        };
        assert_answer_schema(&manager, "Endpoint", &endpoint);
        let endpoints = Endpoints {
            service: "web".into(),
            index: 3,
            endpoints: vec![endpoint],
        };
        assert_answer_schema(&manager, "Endpoints", &endpoints);
        // What may be null in an answer is nullable in its schema.
        let schemas = &manager["components"]["schemas"];
        for (schema, field) in [
            ("ServiceView", "previous_version"),
            ("Rollout", "started_at"),
            ("Rollout", "finished_at"),
            ("Rollout", "message"),
        ] {
            let types = &schemas[schema]["properties"][field]["type"];
            assert!(
                types.as_array().is_some_and(|t| t.contains(&"null".into())),
                "{schema}.{field}: {types}"
            );
        }
        // A u64 may be as large as u64 allows; a u32 no larger than u32 does.
        let memory = &manager["components"]["schemas"]["Task"]["properties"]["memory"];
        assert_eq!(
            (&memory["minimum"], &memory["maximum"]),
            (&0.into(), &u64::MAX.into())
        );
        let attempt = &worker["paths"]["/tasks/{id}"]["delete"]["parameters"][1]["schema"];
        assert_eq!(
            (&attempt["minimum"], &attempt["maximum"]),
            (&1.into(), &u32::MAX.into())
        );
    }

    /// `state` of `GET /tasks` takes each state's name in any case, as [`State::parse`] does.
    #[test]
    fn the_state_filter_takes_any_case() {
        let any_case: Vec<String> = State::ALL
            .iter()
            .map(|s| {
                s.as_str()
                    .chars()
                    .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()))
                    .collect()
            })
            .collect();
        let pattern = format!("^(?:{})$", any_case.join("|"));
        let state = &manager_document()["paths"]["/tasks"]["get"]["parameters"][0];
        assert_eq!(state["name"], "state");
        assert_eq!(state["schema"]["pattern"], pattern.as_str());
    }

    #[test]
    fn the_node_patch_schema_takes_each_field_or_null() {
        let doc = manager_document();
        let patch = &doc["components"]["schemas"]["NodePatch"];
        let props = patch["properties"].as_object().expect("properties");
        let mut names: Vec<&String> = props.keys().collect();
        names.sort();
        assert_eq!(
            names,
            ["availability", "deadline_s", "labels", "remove_labels"],
            "{patch}"
        );
        assert!(
            patch["required"].is_null(),
            "every field may be left out: {patch}"
        );
        let availability = &doc["components"]["schemas"]["Availability"];
        assert_eq!(
            availability["enum"],
            serde_json::json!(["active", "pause", "drain"]),
            "{availability}"
        );
    }
}
