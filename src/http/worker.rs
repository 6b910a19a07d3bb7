//! The worker API (README "Contracts"): handlers that forward to the [`Worker`] actor.
//!
//! | route | answer |
//! |---|---|
//! | `POST /tasks` | start this attempt (201; 200 when the attempt is known already) |
//! | `GET /tasks` | every task; with `?since=SEQ[&wait=S][&instance=ID]` the change feed |
//! | `GET /tasks/{id}` | one task |
//! | `DELETE /tasks/{id}` | stop and remove its container, then Completed (202) |
//! | `GET /tasks/{id}/logs` | the container's output (`?tail=N`, `?follow=true`) |
//! | `GET /stats` | the machine's cpus, memory, disk, load and task count |
//! | `GET /health` | `{"status":"ok","name":…}` |

use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::{ApiError, endpoint, read_body};
use crate::actors::worker::{
    GetStats, MAX_WATCH_WAIT, ReadLogs, ReadTask, ReadTasks, StartAttempt, StopAttempt,
    WatchChanges, Worker, WorkerError,
};
use crate::task::{Desired, parse_submission, parse_task_id};

/// What the handlers reach.
#[derive(Clone)]
pub struct WorkerApi {
    pub name: String,
    pub worker: Addr<Worker>,
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> ApiError {
        let status = match &e {
            WorkerError::NotFound(_) => StatusCode::NOT_FOUND,
            WorkerError::StaleAttempt { .. } | WorkerError::Stopped { .. } => StatusCode::CONFLICT,
            WorkerError::NoContainer(_) => StatusCode::NOT_FOUND,
            WorkerError::Gone => StatusCode::SERVICE_UNAVAILABLE,
            WorkerError::Store(_) | WorkerError::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Mount the worker API on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(super::query_config())
        .service(
            endpoint("/tasks")
                .route(web::get().to(list_tasks))
                .route(web::post().to(start_task)),
        )
        .service(
            endpoint("/tasks/{id}")
                .route(web::get().to(get_task))
                .route(web::delete().to(stop_task)),
        )
        .service(endpoint("/tasks/{id}/logs").route(web::get().to(task_logs)))
        .service(endpoint("/stats").route(web::get().to(stats)))
        .service(endpoint("/health").route(web::get().to(health)));
}

async fn start_task(
    api: web::Data<WorkerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let event = parse_submission(&body)?;
    if event.state == Desired::Completed {
        let task = api
            .worker
            .send(StopAttempt {
                id: event.task.id,
                attempt: None,
            })
            .await??;
        return Ok(HttpResponse::Accepted().json(task));
    }
    let started = api.worker.send(StartAttempt(event.task)).await??;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/tasks/{}", started.task.id)))
        .json(started.task))
}

#[derive(Deserialize)]
struct ListQuery {
    since: Option<u64>,
    /// Seconds to wait for a change.
    wait: Option<f64>,
    instance: Option<Uuid>,
}

async fn list_tasks(
    api: web::Data<WorkerApi>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(since) = query.since else {
        let tasks = api.worker.send(ReadTasks).await?;
        return Ok(HttpResponse::Ok().json(tasks));
    };
    let wait = match query.wait {
        None => Duration::ZERO,
        // Any wait is cut to the longest the worker holds a long-poll, so an absurd one (1e20
        // seconds) is not an overflow.
        Some(w) if w.is_finite() && w >= 0.0 => {
            Duration::from_secs_f64(w.min(MAX_WATCH_WAIT.as_secs_f64()))
        }
        Some(w) => {
            return Err(ApiError::bad_request(format!(
                "wait={w} is not a duration; expected seconds >= 0"
            )));
        }
    };
    let changes = api
        .worker
        .send(WatchChanges {
            since,
            instance: query.instance,
            wait,
        })
        .await?;
    Ok(HttpResponse::Ok().json(changes))
}

async fn get_task(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let task = api
        .worker
        .send(ReadTask(id))
        .await?
        .ok_or(WorkerError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(task))
}

#[derive(Deserialize)]
struct StopQuery {
    attempt: Option<u32>,
}

async fn stop_task(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
    query: web::Query<StopQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let task = api
        .worker
        .send(StopAttempt {
            id,
            attempt: query.attempt,
        })
        .await??;
    Ok(HttpResponse::Accepted().json(task))
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    pub tail: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

async fn task_logs(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let stream = api
        .worker
        .send(ReadLogs {
            id,
            tail: query.tail,
            follow: query.follow,
        })
        .await??
        .map(|chunk| chunk.map_err(|e| ApiError::internal(e.to_string())));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream))
}

async fn stats(api: web::Data<WorkerApi>) -> Result<HttpResponse, ApiError> {
    let stats = api.worker.send(GetStats).await??;
    Ok(HttpResponse::Ok().json(stats))
}

async fn health(api: web::Data<WorkerApi>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "name": api.name}))
}
