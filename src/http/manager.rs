//! The manager API (README "Contracts"): handlers that forward each request to the [`Manager`] actor
//! and map its errors to the JSON error shape.
//!
//! | route | answer |
//! |---|---|
//! | `POST /tasks` | 201 + `Location` once committed; same id and spec: 200; other spec: 409; no room in the store: 507 |
//! | `GET /tasks` | a page of tasks ordered by id (500; `?limit=` up to 5000), `?state=`, `?worker=`, `?service=`, `?q=` (name, id or image holds it), `?after=ID`; `Link` names the next page |
//! | `GET /tasks/{id}` | one task |
//! | `DELETE /tasks/{id}` | 202; stopped and removed, then Completed |
//! | `GET /tasks/{id}/logs` | the container's output (`?tail=N`, `?follow=true`) |
//! | `GET /nodes` | every worker with capacity, allocation and status |
//! | `POST /nodes` | a worker joins: `{name, address}` or `{name, port}`; 201 once committed |
//! | `POST /snapshot` | a consistent, compacted copy of the store (`cube snapshot save`) |
//! | `GET /nodes/{name}` | one worker, as `GET /nodes` shows it |
//! | `PATCH /nodes/{name}` | `{availability, deadline_s, labels, remove_labels}` (any of them): the node once committed |
//! | `DELETE /nodes/{name}` | forget a node with no tasks: 204; 409 naming its tasks |
//! | `GET /events` | server-sent events of every task, service and node change ([`super::events`]) |
//! | `GET /health` | 200 once recovery is complete, 503 before |
//! | `GET /metrics` | Prometheus metrics, text format 0.0.4 ([`crate::metrics`]) |
//! | `GET /openapi.json` | this API's OpenAPI document ([`super::openapi`]) |
//!
//! Every query field is taken as text and parsed by the handler, so a bad value is a 400 naming
//! the field, the value and what is accepted (see [`super::integer`]); no input makes a handler
//! panic or overflow.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::worker::LogsQuery;
use super::{ApiError, endpoint, integer, path_task_id, read_body, shown};
use crate::actors::client::CallError;
use crate::actors::client::WorkerClient;
use crate::actors::manager::core::NodeRefusal;
use crate::actors::manager::core::{MAX_DRAIN_DEADLINE, NodeChange};
use crate::actors::manager::{
    ChangeNode, ForgetNode, GetNode, GetTask, GetVitals, JoinNode, ListNodes, ListServices,
    ListTasks, LogsOf, Manager, ManagerError, ScrapeManager, Snapshot, StopTask, Submit,
};
use crate::node::Availability;
use crate::task::{Desired, State, parse_submission};

/// The most tasks one page of `GET /tasks` holds: a larger `limit` is cut to it. Whether more
/// follow is said by the `Link: <…>; rel="next"` header, never by the page's length.
pub const MAX_LIST_LIMIT: usize = 5000;
/// The page `GET /tasks` gives without `limit`: a listing never copies the whole table on the
/// thread the Manager shares with the Scheduler.
pub const DEFAULT_LIST_LIMIT: usize = 500;

/// Longest `q` `GET /tasks` takes, in characters.
pub const MAX_SEARCH: usize = 256;

/// What the handlers reach.
#[derive(Clone)]
pub struct ManagerApi {
    pub manager: Addr<Manager>,
    /// Bumped by the handlers (submissions), shown by `GET /metrics`.
    pub metrics: crate::metrics::ManagerMetrics,
    pub store_metrics: crate::metrics::StoreMetrics,
    /// The event stream's hub (`GET /events`).
    pub events: Addr<crate::actors::events::EventHub>,
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        let status = match &e {
            // Refused before anything was written, or a commit that found no room: 507.
            ManagerError::Store(store) if store.is_full() => {
                return ApiError::insufficient_storage("manager", store);
            }
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) => StatusCode::CONFLICT,
            // Reading or stopping a collected task: it is not there (a submission reusing its
            // id is a conflict, see `submit`).
            ManagerError::Collected(_) => StatusCode::NOT_FOUND,
            ManagerError::NotPlaced(_) => StatusCode::CONFLICT,
            ManagerError::WorkerGone(_) => StatusCode::SERVICE_UNAVAILABLE,
            ManagerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ManagerError::Gone => StatusCode::SERVICE_UNAVAILABLE,
            ManagerError::Node(NodeRefusal::NotFound(_)) => StatusCode::NOT_FOUND,
            ManagerError::Node(NodeRefusal::BadChange(_)) => StatusCode::BAD_REQUEST,
            ManagerError::Unplaceable(_) => StatusCode::BAD_REQUEST,
            ManagerError::Node(_) => StatusCode::CONFLICT,
            ManagerError::ServiceNotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Service(_) => StatusCode::CONFLICT,
            ManagerError::Input(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Mount the manager API on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(super::query_config())
        .service(
            endpoint("/tasks")
                .route(web::get().to(list_tasks))
                .route(web::post().to(submit)),
        )
        .service(
            endpoint("/tasks/{id}")
                .route(web::get().to(get_task))
                .route(web::delete().to(stop_task)),
        )
        .service(endpoint("/tasks/{id}/logs").route(web::get().to(task_logs)))
        .service(
            endpoint("/nodes")
                .route(web::get().to(nodes))
                .route(web::post().to(join_node)),
        )
        .service(
            endpoint("/nodes/{name}")
                .route(web::get().to(get_node))
                .route(web::patch().to(change_node))
                .route(web::delete().to(forget_node)),
        )
        .configure(super::services::configure)
        .service(endpoint("/events").route(web::get().to(super::events::events)))
        .service(endpoint("/snapshot").route(web::post().to(snapshot)))
        .service(endpoint("/health").route(web::get().to(health)))
        .service(endpoint("/metrics").route(web::get().to(metrics)))
        .service(endpoint("/openapi.json").route(web::get().to(super::openapi::manager)));
}

async fn submit(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let received = std::time::Instant::now();
    let body = read_body(&req, payload).await?;
    let event = parse_submission(&body)?;
    if event.state == Desired::Completed {
        // The Go Cube's way of asking for a stop: the same as DELETE.
        let task = api.manager.send(StopTask(event.task.id)).await??;
        return Ok(HttpResponse::Accepted()
            .insert_header(("Location", format!("/tasks/{}", task.id)))
            .json(task));
    }
    let submitted = match api.manager.send(Submit(event.task)).await? {
        Err(e @ ManagerError::Collected(_)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, e.to_string()));
        }
        other => other?,
    };
    api.metrics
        .submit_commit_seconds
        .observe_duration(received.elapsed());
    let status = if submitted.created {
        api.metrics.submissions.inc();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/tasks/{}", submitted.task.id)))
        .json(submitted.task))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    worker: Option<String>,
    service: Option<String>,
    q: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

/// The filters of `GET /tasks`, checked: `state` one of the five states; `worker` any name
/// (one no node has matches nothing); `limit` a positive integer, cut to [`MAX_LIST_LIMIT`]
/// ([`DEFAULT_LIST_LIMIT`] without it); `order` `id` (the default) or `newest`; `q` up to
/// [`MAX_SEARCH`] characters; `after` a task id (it need not exist, except newest first, where
/// it must be a task the manager holds: 404 otherwise); `before` (newest first only, not with
/// `after`) a submission number, the cursor newest-first pages' links carry. The request to
/// the Manager asks for one more than the page, to know whether a next page follows.
fn list_filters(query: ListQuery) -> Result<ListTasks, ApiError> {
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state={} is not a state; expected Pending, Scheduled, Running, Completed or Failed",
                shown(s)
            ))
        })?),
    };
    let limit = match query.limit {
        None => DEFAULT_LIST_LIMIT,
        Some(l) => {
            let digits = l.strip_prefix('+').unwrap_or(&l);
            let positive = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.bytes().any(|b| b != b'0');
            if positive {
                // Any positive integer, however large, asks for a full page.
                digits
                    .parse::<usize>()
                    .map_or(MAX_LIST_LIMIT, |n| n.min(MAX_LIST_LIMIT))
            } else {
                integer(
                    "limit",
                    &l,
                    1..=MAX_LIST_LIMIT,
                    " (a larger limit is cut to 5000; the Link header names the next page)",
                )?
            }
        }
    };
    let after = query
        .after
        .map(|a| super::uuid("after", &a, "a task id"))
        .transpose()?;
    let search = match query.q {
        Some(q) if q.chars().count() > MAX_SEARCH => {
            return Err(ApiError::bad_request(format!(
                "q={} is {} characters; expected at most {MAX_SEARCH}",
                shown(&q),
                q.chars().count()
            )));
        }
        Some(q) if !q.trim().is_empty() => Some(q.trim().to_lowercase()),
        _ => None,
    };
    let newest = match query.order.as_deref() {
        None | Some("id") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order={} is not an order; expected id (the default) or newest",
                shown(other)
            )));
        }
    };
    let before = query
        .before
        .map(|b| {
            integer(
                "before",
                &b,
                0..=u64::MAX,
                " (a submission number, from a Link header)",
            )
        })
        .transpose()?;
    if before.is_some() && !newest {
        return Err(ApiError::bad_request(
            "before= pages a newest-first listing; expected order=newest with it, or after=ID to page by id",
        ));
    }
    if before.is_some() && after.is_some() {
        return Err(ApiError::bad_request(
            "after and before both given; expected one: the Link header's next page carries the right one",
        ));
    }
    Ok(ListTasks {
        newest,
        before,
        state,
        worker: query.worker,
        service: query.service,
        search,
        after,
        // One more than the page, to know whether another follows.
        limit: Some(limit + 1),
    })
}

/// `Link: </tasks?…&after=ID>; rel="next"` for the page after `last` (id order), or
/// `…&before=N` below its submission number `last_submission` (newest first, which stays good
/// when that task is collected), with the same filters.
fn next_link(filters: &ListTasks, limit: usize, last: uuid::Uuid, last_submission: u64) -> String {
    let mut query = Vec::new();
    if filters.newest {
        query.push("order=newest".to_string());
    }
    if let Some(state) = filters.state {
        query.push(format!("state={}", state.as_str()));
    }
    if let Some(worker) = &filters.worker {
        query.push(format!("worker={}", percent_encode(worker)));
    }
    if let Some(service) = &filters.service {
        query.push(format!("service={}", percent_encode(service)));
    }
    if let Some(search) = &filters.search {
        query.push(format!("q={}", percent_encode(search)));
    }
    query.push(format!("limit={limit}"));
    if filters.newest {
        query.push(format!("before={last_submission}"));
    } else {
        query.push(format!("after={last}"));
    }
    format!("</tasks?{}>; rel=\"next\"", query.join("&"))
}

/// A query value with everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Tasks ordered by id; see [`list_filters`] for the query.
async fn list_tasks(
    api: web::Data<ManagerApi>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let filters = list_filters(query.into_inner())?;
    let limit = filters.limit.unwrap_or(DEFAULT_LIST_LIMIT + 1) - 1;
    let link_filters = ListTasks {
        newest: filters.newest,
        state: filters.state,
        worker: filters.worker.clone(),
        service: filters.service.clone(),
        search: filters.search.clone(),
        ..ListTasks::default()
    };
    let after = filters.after;
    let listing = api.manager.send(filters).await?.map_err(|e| match e {
        ManagerError::NotFound(_) => ApiError::not_found(format!(
            "after={}: no such task here (it was collected, or never was); a newest-first listing continues after a task the manager holds, so list from the start",
            after.unwrap_or_default()
        )),
        other => other.into(),
    })?;
    let mut tasks = listing.tasks;
    let mut response = HttpResponse::Ok();
    if tasks.len() > limit {
        tasks.truncate(limit);
        if let (Some(last), Some(submission)) = (tasks.last(), listing.submissions.get(limit - 1)) {
            response.insert_header((
                actix_web::http::header::LINK,
                next_link(&link_filters, limit, last.id, *submission),
            ));
        }
    }
    Ok(response.json(tasks))
}

async fn get_task(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let task = api.manager.send(GetTask(id)).await??;
    Ok(HttpResponse::Ok().json(task))
}

async fn stop_task(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let task = api.manager.send(StopTask(id)).await??;
    Ok(HttpResponse::Accepted().json(task))
}

/// The container's output, read from its worker; `tail` (0 to
/// [`super::worker::MAX_LOG_TAIL`] lines) and `follow` are checked here, before any worker is
/// asked (see [`LogsQuery::checked`]).
async fn task_logs(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let (tail, follow) = query.into_inner().checked()?;
    let target = api.manager.send(LogsOf(id)).await??;
    let stream = WorkerClient::new(target)
        .logs(id, tail, follow)
        .await
        .map_err(|e| match e {
            CallError::NotFound(_) => ApiError::not_found(format!(
                "task {id} has no container to read logs from (it never started, or its container was removed)"
            )),
            _ => ApiError::unavailable(format!("cannot read the logs of task {id}: {e}")),
        })?;
    let stream = stream.map(|chunk| chunk.map_err(|e| ApiError::unavailable(e.to_string())));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream))
}

async fn nodes(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    let nodes = api.manager.send(ListNodes).await?;
    Ok(HttpResponse::Ok().json(nodes))
}

/// What a joining worker sends: its name and either its `address` or its `port`, nothing else.
// Read by `parse_join`, field by field; the derive gives its schema only.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NodeJoin)]
pub(crate) struct JoinBody {
    /// The worker's name: 1 to 63 letters, digits, `.`, `_` or `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$", example = "w1")]
    name: String,
    /// `host:port` the manager reaches the worker at; or only its `port`, at the address the
    /// request came from.
    #[schema(
        pattern = r"^[\[\]A-Za-z0-9.:_-]+:\+?[0-9]+$",
        example = "10.0.0.2:5556"
    )]
    address: Option<String>,
    /// The worker's port, at the address the request comes from.
    #[schema(minimum = 1)]
    port: Option<u16>,
}

/// The answer to a join.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NodeJoined {
    /// The worker's name.
    name: String,
    /// `host:port` the manager reaches it at.
    address: String,
    /// The token the manager presents to its workers, for the worker to require; `null` when
    /// the manager has none.
    cluster_token: Option<String>,
}

/// The answer of `GET /health`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ManagerHealth {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
    /// Tasks the manager knows, in every state.
    tasks: usize,
    /// Tasks by state.
    states: std::collections::BTreeMap<String, usize>,
    /// Finished tasks collected after the retention whose ids stay reserved (tombstones).
    collected: usize,
    store: StoreHealth,
}

/// How full the manager's store is.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StoreHealth {
    /// Bytes of the pages holding data (freed pages are reused, so not counted).
    in_use_bytes: u64,
    /// The data file's size (its high-water mark).
    file_bytes: u64,
    /// The most it may hold (`--store-size`).
    size_bytes: u64,
    /// New tasks are accepted (false: `POST /tasks` answers 507).
    has_room: bool,
}

const JOIN_EXPECTED: &str =
    "expected {\"name\": \"w1\", \"address\": \"host:port\"} or {\"name\": \"w1\", \"port\": 5556}";

/// Read a join, field by field, so every refusal names its field: `name` a string, `address` a
/// string (or null), `port` an integer from 1 to 65535 (or null), nothing else.
fn parse_join(body: &[u8]) -> Result<JoinBody, ApiError> {
    use serde_json::Value;
    let bad = |what: String| ApiError::bad_request(format!("{what}; {JOIN_EXPECTED}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not a join: it is not valid JSON ({e})"
        ))
    })?;
    let Value::Object(mut map) = value else {
        return Err(bad("the body is not a join: it is not a JSON object".into()));
    };
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "address" | "port"))
    {
        return Err(bad(format!("{} is not a field of a join", shown(key))));
    }
    let name = match map.remove("name") {
        Some(Value::String(name)) => name,
        None | Some(Value::Null) => return Err(bad("name is missing".into())),
        Some(other) => {
            return Err(bad(format!(
                "name is {}, not a string",
                shown(&other.to_string())
            )));
        }
    };
    let address = match map.remove("address") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(a),
        Some(other) => {
            return Err(bad(format!(
                "address is {}, not a string",
                shown(&other.to_string())
            )));
        }
    };
    let port = match map.remove("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(integer("port", &n.to_string(), 1..=u16::MAX, "")?),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "port is {}, not a number; expected an integer from 1 to 65535",
                shown(&other.to_string())
            )));
        }
    };
    Ok(JoinBody {
        name,
        address,
        port,
    })
}

async fn join_node(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let join = parse_join(&body)?;
    crate::node::check_name(&join.name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let address = match (join.address, join.port) {
        (Some(a), None) => {
            crate::node::check_address(&a)
                .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
            a
        }
        (None, Some(port)) => {
            let peer = req.peer_addr().ok_or_else(|| {
                ApiError::bad_request(
                    "the request's address is unknown; give address: \"host:port\"",
                )
            })?;
            std::net::SocketAddr::new(peer.ip(), port).to_string()
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either address (\"host:port\") or port (1-65535), not both",
            ));
        }
    };
    let joined = api
        .manager
        .send(JoinNode {
            name: join.name.clone(),
            address: address.clone(),
        })
        .await??;
    let status = if joined.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/nodes/{}", join.name)))
        .json(NodeJoined {
            name: join.name,
            address,
            cluster_token: joined.cluster_token,
        }))
}

/// Forget a node; its name is checked as a join checks it (1 to 63 letters, digits, `.`, `_`
/// or `-`), so a name no node can have is a 400, not a 404.
/// A consistent, compacted copy of the store (`cube snapshot save`), streamed as it is read.
async fn snapshot(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    let (file, size) = api.manager.send(Snapshot).await??;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = web::block(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let n = std::io::Read::read(&mut file, &mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await;
        let failed = |e: String| ApiError::unavailable(format!("reading the snapshot: {e}"));
        match read {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((file, buf))) => Some((Ok(web::Bytes::from(buf)), Some(file))),
            Ok(Err(e)) => Some((Err(failed(e.to_string())), None)),
            Err(e) => Some((Err(failed(e.to_string())), None)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"cube-manager.snapshot\"",
        ))
        .no_chunking(size)
        .streaming(chunks))
}

/// A node's name in the path, checked as a join checks it, so a name no node can have is a
/// 400, not a 404.
fn path_node_name(name: web::Path<String>) -> Result<String, ApiError> {
    let name = name.into_inner();
    crate::node::check_name(&name).map_err(|e| {
        ApiError::bad_request(format!("the node name {} in the path: {e}", shown(&name)))
    })?;
    Ok(name)
}

async fn get_node(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_node_name(name)?;
    let node = api.manager.send(GetNode(name)).await??;
    Ok(HttpResponse::Ok().json(node))
}

/// What `PATCH /nodes/{name}` takes; every field may be left out.
// Read by `parse_node_patch`, field by field; the derive gives its schema only.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NodePatch)]
#[allow(dead_code)] // never built: it only describes the body
pub(crate) struct NodePatchBody {
    /// `active` takes new tasks; `pause` takes none and keeps what runs; `drain` takes none
    /// and moves every task elsewhere.
    availability: Option<Availability>,
    /// With `drain`: seconds a service's tasks have to be replaced elsewhere.
    #[schema(minimum = 0, maximum = 2592000)]
    deadline_s: Option<u64>,
    /// Labels to set on the node, over the worker's own (merged with those set before).
    #[schema(example = json!({"zone": "a"}))]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// Labels set on the manager to remove.
    #[schema(example = json!(["rack"]))]
    remove_labels: Option<Vec<String>>,
}

const PATCH_EXPECTED: &str = "expected {\"availability\": \"active\"|\"pause\"|\"drain\", \"deadline_s\": SECONDS, \"labels\": {\"KEY\": \"VALUE\"}, \"remove_labels\": [\"KEY\"]}, any of them";

/// Read a node change field by field, so every refusal names its field.
fn parse_node_patch(body: &[u8]) -> Result<NodeChange, ApiError> {
    use serde_json::Value;
    let bad = |what: String| ApiError::bad_request(format!("{what}; {PATCH_EXPECTED}"));
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not valid JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(bad("the body is not a JSON object".into()));
    };
    let mut change = NodeChange::default();
    for (key, value) in map {
        if !matches!(
            key.as_str(),
            "availability" | "deadline_s" | "labels" | "remove_labels"
        ) {
            return Err(bad(format!(
                "{} is not a field of a node change",
                shown(&key)
            )));
        }
        match (key.as_str(), value) {
            (_, Value::Null) => {}
            ("availability", Value::String(a)) => {
                change.availability = Some(
                    a.parse::<Availability>()
                        .map_err(|e| ApiError::bad_request(format!("availability: {e}")))?,
                );
            }
            ("deadline_s", Value::Number(n)) => {
                let max = MAX_DRAIN_DEADLINE.as_secs();
                let secs: u64 = integer("deadline_s", &n.to_string(), 0..=max, "")?;
                change.deadline = Some(std::time::Duration::from_secs(secs));
            }
            ("labels", Value::Object(labels)) => {
                for (k, v) in labels {
                    let Value::String(v) = v else {
                        return Err(bad(format!(
                            "labels.{k} is {}, not a string",
                            shown(&v.to_string())
                        )));
                    };
                    change.labels.insert(k, v);
                }
            }
            ("remove_labels", Value::Array(keys)) => {
                for k in keys {
                    let Value::String(k) = k else {
                        return Err(bad(format!(
                            "remove_labels holds {}, not a string",
                            shown(&k.to_string())
                        )));
                    };
                    change.remove_labels.push(k);
                }
            }
            (_, other) => {
                return Err(bad(format!(
                    "{key} is {}, which is not what it takes",
                    shown(&other.to_string())
                )));
            }
        }
    }
    Ok(change)
}

async fn change_node(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path_node_name(name)?;
    let body = read_body(&req, payload).await?;
    let change = parse_node_patch(&body)?;
    let node = api.manager.send(ChangeNode { name, change }).await??;
    Ok(HttpResponse::Ok().json(node))
}

async fn forget_node(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    crate::node::check_name(&name).map_err(|e| {
        ApiError::bad_request(format!("the node name {} in the path: {e}", shown(&name)))
    })?;
    api.manager.send(ForgetNode(name)).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Prometheus metrics: the counters as they stand, and gauges from what the Manager (its
/// core, its proxies' views of the nodes, the scheduler's book, the services) answers now.
async fn metrics(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    let (scrape, nodes, services) = futures_util::join!(
        api.manager.send(ScrapeManager),
        api.manager.send(ListNodes),
        api.manager.send(ListServices),
    );
    let registry = crate::metrics::manager_registry(
        &api.metrics,
        &api.store_metrics,
        &scrape?,
        &nodes?,
        &services?,
        chrono::Utc::now(),
    );
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::encode(&registry)))
}

/// 200 once the Manager answers: it recovers everything from its store before its actor
/// starts, so an answer means recovery is complete.
async fn health(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    let vitals = api.manager.send(GetVitals).await?;
    Ok(HttpResponse::Ok().json(ManagerHealth {
        status: "ok",
        tasks: vitals.states.values().sum(),
        states: vitals
            .states
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect(),
        collected: vitals.collected,
        store: StoreHealth {
            in_use_bytes: vitals.store.in_use,
            file_bytes: vitals.store.file_size,
            size_bytes: vitals.store.map_size,
            has_room: vitals.store.has_room(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(
        limit: Option<&str>,
        after: Option<&str>,
        state: Option<&str>,
    ) -> Result<ListTasks, String> {
        list_filters(ListQuery {
            state: state.map(str::to_string),
            worker: None,
            service: None,
            q: None,
            order: None,
            before: None,
            limit: limit.map(str::to_string),
            after: after.map(str::to_string),
        })
        .map_err(|e| e.message)
    }

    #[test]
    fn a_store_without_room_is_a_507_that_says_what_to_do() {
        let usage = crate::db::Usage {
            in_use: 1 << 20,
            queued: 0,
            map_size: 2 << 20,
            file_size: 1 << 20,
            disk_free: u64::MAX,
        };
        let no_room = crate::db::StoreError::NoRoom {
            path: "/var/lib/cube/manager".into(),
            usage,
        };
        let e = ApiError::from(ManagerError::Store(no_room));
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        for says in [
            "the manager's store is full",
            "/var/lib/cube/manager",
            "1 MiB in use",
            "2 MiB it can hold",
            "larger --store-size",
            "free disk space",
            "retention",
            "Stops are still accepted",
        ] {
            assert!(e.message.contains(says), "{says}: {}", e.message);
        }
        let full = crate::db::StoreError::Full {
            path: "/var/lib/cube/manager".into(),
            map_size: 2 << 20,
            in_use: 1 << 20,
        };
        assert_eq!(
            ApiError::from(ManagerError::Store(full)).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        let disk = crate::db::StoreError::DiskFull {
            path: "/var/lib/cube/manager".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(
            ApiError::from(ManagerError::Store(disk)).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        // Any other store failure is still ours.
        assert_eq!(
            ApiError::from(ManagerError::Store(crate::db::StoreError::Closed)).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_page_holds_1_to_5000_tasks_500_by_default() {
        let page = |limit| list(limit, None, None).unwrap().limit.map(|n| n - 1);
        assert_eq!(page(Some("5000")), Some(MAX_LIST_LIMIT));
        assert_eq!(page(Some("5001")), Some(MAX_LIST_LIMIT), "cut, not refused");
        assert_eq!(page(Some("99999999999999999999999")), Some(MAX_LIST_LIMIT));
        assert_eq!(page(Some("1")), Some(1));
        assert_eq!(page(None), Some(DEFAULT_LIST_LIMIT));
        assert_eq!(
            next_link(
                &ListTasks {
                    state: Some(State::Running),
                    worker: Some("w 1/x".into()),
                    ..ListTasks::default()
                },
                10,
                uuid::Uuid::nil(),
                7
            ),
            "</tasks?state=Running&worker=w%201%2Fx&limit=10&after=00000000-0000-0000-0000-000000000000>; rel=\"next\""
        );
        for (limit, after, state, says) in [
            (
                Some("0"),
                None,
                None,
                "limit=0 is out of range; expected an integer from 1 to 5000",
            ),
            (Some("00"), None, None, "limit=00 is out of range"),
            (Some("-1"), None, None, "limit=-1 is out of range"),
            (Some("1e99"), None, None, "limit=1e99 is not an integer"),
            (Some("abc"), None, None, "limit=abc is not a number"),
            (None, Some("abc"), None, "after=abc is not a task id"),
            (
                None,
                None,
                Some("Sleeping"),
                "state=Sleeping is not a state",
            ),
        ] {
            let Err(m) = list(limit, after, state) else {
                panic!("{limit:?} {after:?} {state:?} was taken");
            };
            assert!(m.contains(says), "{m}");
        }
    }

    #[test]
    fn a_join_names_the_field_it_refuses() {
        let join = parse_join(br#"{"name": "w1", "port": 65535}"#).unwrap();
        assert_eq!((join.name.as_str(), join.port), ("w1", Some(65535)));
        let join = parse_join(br#"{"name": "w1", "address": "h:1", "port": null}"#).unwrap();
        assert_eq!(join.address.as_deref(), Some("h:1"));
        for (body, says) in [
            (
                r#"{"name": "w1", "port": 0}"#,
                "port=0 is out of range; expected an integer from 1 to 65535",
            ),
            (
                r#"{"name": "w1", "port": 65536}"#,
                "port=65536 is out of range",
            ),
            (r#"{"name": "w1", "port": -1}"#, "port=-1 is out of range"),
            (r#"{"name": "w1", "port": 1e99}"#, "is not an integer"),
            (
                r#"{"name": "w1", "port": 5.5}"#,
                "port=5.5 is not an integer",
            ),
            (
                r#"{"name": "w1", "port": "5556"}"#,
                "port is \"5556\", not a number",
            ),
            (r#"{"name": 7, "port": 1}"#, "name is 7, not a string"),
            (r#"{"port": 1}"#, "name is missing"),
            (
                r#"{"name": "w1", "address": 1}"#,
                "address is 1, not a string",
            ),
            (
                r#"{"name": "w1", "extra": 1}"#,
                "extra is not a field of a join",
            ),
            (r#"[1]"#, "not a JSON object"),
            (r#"{"#, "not valid JSON"),
        ] {
            let Err(e) = parse_join(body.as_bytes()) else {
                panic!("{body} was taken");
            };
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }

    #[test]
    fn a_node_change_names_the_field_it_refuses() {
        let ok = parse_node_patch(
            br#"{"availability": "drain", "deadline_s": 60, "labels": {"zone": "a"}, "remove_labels": ["rack"]}"#,
        )
        .expect("a change");
        assert_eq!(ok.availability, Some(Availability::Drain));
        assert_eq!(ok.deadline, Some(std::time::Duration::from_secs(60)));
        assert_eq!(ok.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(ok.remove_labels, vec!["rack".to_string()]);
        assert_eq!(
            parse_node_patch(b"{}").expect("nothing"),
            NodeChange::default()
        );
        for (body, names) in [
            (r#"{"availability": "off"}"#, "availability"),
            (r#"{"availability": 1}"#, "availability"),
            (r#"{"deadline_s": -1}"#, "deadline_s"),
            (r#"{"deadline_s": 99999999999}"#, "deadline_s"),
            (r#"{"labels": {"zone": 1}}"#, "labels.zone"),
            (r#"{"remove_labels": [1]}"#, "remove_labels"),
            (r#"{"drain": true}"#, "drain"),
            ("[]", "not a JSON object"),
        ] {
            let err = parse_node_patch(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(err.message.contains(names), "{body}: {}", err.message);
        }
    }
}
