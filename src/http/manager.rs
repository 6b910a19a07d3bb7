//! The manager API (README "Contracts"): handlers that forward each request to the [`Manager`] actor
//! and map its errors to the JSON error shape.
//!
//! | route | answer |
//! |---|---|
//! | `POST /tasks` | 201 + `Location` once committed; same id and spec: 200; other spec: 409 |
//! | `GET /tasks` | tasks ordered by id; `?state=`, `?worker=`, `?limit=N&after=ID` |
//! | `GET /tasks/{id}` | one task |
//! | `DELETE /tasks/{id}` | 202; stopped and removed, then Completed |
//! | `GET /tasks/{id}/logs` | the container's output (`?tail=N`, `?follow=true`) |
//! | `GET /nodes` | every worker with capacity, allocation and status |
//! | `POST /nodes` | a worker joins: `{name, address}` or `{name, port}`; 201 once committed |
//! | `DELETE /nodes/{name}` | forget a node with no tasks: 204; 409 naming its tasks |
//! | `GET /health` | 200 once recovery is complete, 503 before |

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;

use super::worker::LogsQuery;
use super::{ApiError, endpoint, read_body};
use crate::actors::client::CallError;
use crate::actors::client::WorkerClient;
use crate::actors::manager::core::NodeRefusal;
use crate::actors::manager::{
    CountTasks, ForgetNode, GetTask, JoinNode, ListNodes, ListTasks, LogsOf, Manager, ManagerError,
    StopTask, Submit,
};
use crate::task::{Desired, State, parse_submission, parse_task_id};

/// What the handlers reach.
#[derive(Clone)]
pub struct ManagerApi {
    pub manager: Addr<Manager>,
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        let status = match &e {
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) => StatusCode::CONFLICT,
            ManagerError::NotPlaced(_) => StatusCode::CONFLICT,
            ManagerError::WorkerGone(_) => StatusCode::SERVICE_UNAVAILABLE,
            ManagerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ManagerError::Gone => StatusCode::SERVICE_UNAVAILABLE,
            ManagerError::Node(NodeRefusal::NotFound(_)) => StatusCode::NOT_FOUND,
            ManagerError::Node(_) => StatusCode::CONFLICT,
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
        .service(endpoint("/nodes/{name}").route(web::delete().to(forget_node)))
        .service(endpoint("/health").route(web::get().to(health)));
}

async fn submit(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let event = parse_submission(&body)?;
    if event.state == Desired::Completed {
        // The Go Cube's way of asking for a stop: the same as DELETE.
        let task = api.manager.send(StopTask(event.task.id)).await??;
        return Ok(HttpResponse::Accepted()
            .insert_header(("Location", format!("/tasks/{}", task.id)))
            .json(task));
    }
    let submitted = api.manager.send(Submit(event.task)).await??;
    let status = if submitted.created {
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
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_tasks(
    api: web::Data<ManagerApi>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state={s:?} is not a state; expected Pending, Scheduled, Running, Completed or Failed"
            ))
        })?),
    };
    let after = match query.after.as_deref() {
        None => None,
        Some(a) => {
            Some(parse_task_id(a).map_err(|e| ApiError::bad_request(format!("after: {e}")))?)
        }
    };
    let tasks = api
        .manager
        .send(ListTasks {
            state,
            worker: query.worker,
            after,
            limit: query.limit,
        })
        .await?;
    Ok(HttpResponse::Ok().json(tasks))
}

async fn get_task(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let task = api
        .manager
        .send(GetTask(id))
        .await?
        .ok_or(ManagerError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(task))
}

async fn stop_task(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let task = api.manager.send(StopTask(id)).await??;
    Ok(HttpResponse::Accepted().json(task))
}

async fn task_logs(
    api: web::Data<ManagerApi>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let target = api.manager.send(LogsOf(id)).await??;
    let stream = WorkerClient::new(target)
        .logs(id, query.tail, query.follow)
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

/// What a joining worker sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    name: String,
    /// `host:port` the manager reaches the worker at; or only its `port`, at the address the
    /// request came from.
    address: Option<String>,
    port: Option<u16>,
}

async fn join_node(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let join: JoinBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a join: {e}; expected {{\"name\": \"w1\", \"address\": \"host:port\"}} or {{\"name\": \"w1\", \"port\": 5556}}"
        ))
    })?;
    crate::node::check_name(&join.name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let address = match (join.address, join.port) {
        (Some(a), None) => {
            crate::node::check_address(&a)
                .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
            a
        }
        (None, Some(port)) if port > 0 => {
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
        .json(serde_json::json!({
            "name": join.name,
            "address": address,
            "cluster_token": joined.cluster_token,
        })))
}

async fn forget_node(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    api.manager.send(ForgetNode(name.into_inner())).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// 200 once the Manager answers: it recovers everything from its store before its actor
/// starts, so an answer means recovery is complete.
async fn health(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    let counts = api.manager.send(CountTasks).await?;
    let tasks: usize = counts.values().sum();
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok", "tasks": tasks})))
}
