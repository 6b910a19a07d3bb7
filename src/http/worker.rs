//! The worker API (README "Contracts"): handlers that forward to the [`Worker`] actor.
//!
//! | route | answer |
//! |---|---|
//! | `POST /tasks` | start this attempt (201; 200 when the attempt is known already; 507 when its store has no room) |
//! | `POST /starts` | start a batch of attempts, one commit for all; answers each (the manager's way) |
//! | `POST /stops` | stop a batch of attempts, one commit for all; answers each (the manager's way) |
//! | `GET /tasks` | every task; with `?since=SEQ[&wait=S][&instance=ID][&acked=SEQ][&limit=N]` the change feed |
//! | `GET /tasks/{id}` | one task |
//! | `DELETE /tasks/{id}` | stop and remove its container, then Completed (202) |
//! | `GET /tasks/{id}/logs` | the container's output (`?tail=N`, `?follow=true`) |
//! | `GET /stats` | the machine's cpus, memory, disk, load and task count; its named volumes and allowed host paths |
//! | `GET /volumes` | the named volumes Cube created on its engine, each with the tasks that mount it |
//! | `GET /health` | `{"status":"ok","name":…}` |
//! | `GET /metrics` | Prometheus metrics, text format 0.0.4 ([`crate::metrics`]) |
//! | `GET /openapi.json` | this API's OpenAPI document ([`super::openapi`]) |
//!
//! Every query field is taken as text and parsed by the handler, so a bad value is a 400 naming
//! the field, the value and what is accepted (see [`super::integer`]); no input makes a handler
//! panic or overflow.

use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, MAX_BATCH_BODY_BYTES, boolean, endpoint, integer, path_task_id, read_body,
    read_body_up_to, shown,
};
use crate::actors::worker::{
    CountWorkerTasks, GetStats, MAX_WATCH_WAIT, ReadLogs, ReadTask, ReadTasks, ReadVolumes,
    StartAttempt, StartAttempts, StartOutcome, StartsAnswer, StopAttempt, StopAttempts,
    StopOutcome, StopsAnswer, WatchChanges, Worker, WorkerError,
};
use crate::task::{Desired, parse_starts, parse_stops, parse_submission};

/// The most log lines `?tail=` asks for; a larger tail is refused (400), not cut, so a client
/// never takes a short answer for the whole log. Without `tail` the whole log comes.
pub const MAX_LOG_TAIL: usize = 100_000;

/// What the handlers reach.
#[derive(Clone)]
pub struct WorkerApi {
    pub name: String,
    pub worker: Addr<Worker>,
    /// Timed runtime calls and store commits, shown by `GET /metrics`.
    pub runtime_metrics: crate::metrics::RuntimeMetrics,
    pub store_metrics: crate::metrics::StoreMetrics,
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> ApiError {
        let status = match &e {
            // A new attempt refused before anything was written, or a commit that found no
            // room: 507, which the manager retries (`CallError::from_status`).
            WorkerError::Store(store) if store.is_full() => {
                return ApiError::insufficient_storage("worker", store);
            }
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
        .service(endpoint("/starts").route(web::post().to(start_tasks)))
        .service(endpoint("/stops").route(web::post().to(stop_tasks)))
        .service(endpoint("/stats").route(web::get().to(stats)))
        .service(endpoint("/volumes").route(web::get().to(volumes)))
        .service(endpoint("/health").route(web::get().to(health)))
        .service(endpoint("/metrics").route(web::get().to(metrics)))
        .service(endpoint("/openapi.json").route(web::get().to(super::openapi::worker)));
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

/// Start a batch of attempts (`{"tasks": [...]}`, each as `POST /tasks` takes it): one step and
/// one commit on the worker for all of them, then one answer saying what became of each.
async fn start_tasks(
    api: web::Data<WorkerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body =
        read_body_up_to(&req, payload, MAX_BATCH_BODY_BYTES, "a batch of task specs").await?;
    let tasks = parse_starts(&body)?;
    let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    let outcomes = api.worker.send(StartAttempts(tasks)).await??;
    let starts = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| match outcome {
            Ok(started) => StartOutcome::Started {
                id,
                attempt: started.task.attempt,
                state: started.task.state,
                created: started.created,
            },
            Err(e) => {
                let e = ApiError::from(e);
                StartOutcome::Refused {
                    id,
                    status: e.status.as_u16(),
                    error: e.message,
                }
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(StartsAnswer {
        name: api.name.clone(),
        starts,
    }))
}

/// Stop a batch of attempts (`{"stops": [{"id": …, "attempt": N}, …]}`, each as `DELETE
/// /tasks/{id}?attempt=N`): one step and one commit on the worker for all of them, then one
/// answer saying what became of each.
async fn stop_tasks(
    api: web::Data<WorkerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body_up_to(&req, payload, MAX_BATCH_BODY_BYTES, "a batch of stops").await?;
    let stops: Vec<StopAttempt> = parse_stops(&body)?
        .into_iter()
        .map(|(id, attempt)| StopAttempt { id, attempt })
        .collect();
    let ids: Vec<_> = stops.iter().map(|s| s.id).collect();
    let outcomes = api.worker.send(StopAttempts(stops)).await??;
    let stops = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| match outcome {
            Ok(task) => StopOutcome::Stopped {
                id,
                attempt: task.attempt,
                state: task.state,
            },
            Err(e) => {
                let e = ApiError::from(e);
                StopOutcome::Refused {
                    id,
                    status: e.status.as_u16(),
                    error: e.message,
                }
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(StopsAnswer {
        name: api.name.clone(),
        stops,
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    since: Option<String>,
    /// Seconds to wait for a change.
    wait: Option<String>,
    instance: Option<String>,
    /// The feed position of `instance` the manager has recorded.
    acked: Option<String>,
    /// Answer in pages of at most this many tasks.
    limit: Option<String>,
}

/// The change feed's parameters, checked: `since` any `u64` (a sequence number ahead of the
/// worker's, or of another instance, reads from the start); `wait` seconds `>= 0`, cut to
/// [`MAX_WATCH_WAIT`] before it becomes a `Duration` (so `1e20` is no overflow), NaN, infinite
/// or negative a 400; `instance` a UUID; `acked` any `u64` (one of another instance or ahead of
/// the feed says nothing); `limit` 1 or more, cut to the worker's page size. Bad values are
/// refused even without `since`.
fn feed_params(query: ListQuery) -> Result<Option<WatchChanges>, ApiError> {
    let since = query
        .since
        .map(|s| {
            integer(
                "since",
                &s,
                0..=u64::MAX,
                " (a sequence number from an earlier answer, or 0)",
            )
        })
        .transpose()?;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(raw) => {
            let max = MAX_WATCH_WAIT.as_secs_f64();
            let refuse = |problem: &str| {
                ApiError::bad_request(format!(
                    "wait={} {problem}; expected seconds >= 0 (a wait over {max} is cut to {max})",
                    shown(raw)
                ))
            };
            match raw.parse::<f64>() {
                Ok(w) if w.is_finite() && w >= 0.0 => Duration::from_secs_f64(w.min(max)),
                Ok(_) => return Err(refuse("is out of range")),
                Err(_) => return Err(refuse("is not a number")),
            }
        }
    };
    let instance = query
        .instance
        .map(|i| super::uuid("instance", &i, "a worker instance id"))
        .transpose()?;
    let acked = query
        .acked
        .map(|a| {
            integer(
                "acked",
                &a,
                0..=u64::MAX,
                " (a sequence number of this instance's feed)",
            )
        })
        .transpose()?;
    let limit = query
        .limit
        .map(|l| {
            integer(
                "limit",
                &l,
                1..=usize::MAX,
                " (tasks per answer; more is cut to the worker's page size)",
            )
        })
        .transpose()?;
    Ok(since.map(|since| WatchChanges {
        since,
        instance,
        wait,
        acked,
        limit,
    }))
}

/// Every task, or with `?since=` the change feed (see [`feed_params`] for the bounds).
async fn list_tasks(
    api: web::Data<WorkerApi>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(watch) = feed_params(query.into_inner())? else {
        let tasks = api.worker.send(ReadTasks).await?;
        return Ok(HttpResponse::Ok().json(tasks));
    };
    let changes = api.worker.send(watch).await?;
    Ok(HttpResponse::Ok().json(changes))
}

async fn get_task(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let task = api
        .worker
        .send(ReadTask(id))
        .await?
        .ok_or(WorkerError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(task))
}

#[derive(Deserialize)]
struct StopQuery {
    attempt: Option<String>,
}

/// Stop the task; with `?attempt=N` (1 to `u32::MAX`: a worker numbers attempts from 1, so 0
/// is a 400) only if N is the attempt it runs, fencing every attempt up to N.
async fn stop_task(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
    query: web::Query<StopQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let attempt = query
        .into_inner()
        .attempt
        .map(|a| integer("attempt", &a, 1..=u32::MAX, ""))
        .transpose()?;
    let task = api.worker.send(StopAttempt { id, attempt }).await??;
    Ok(HttpResponse::Accepted().json(task))
}

/// The query of `GET /tasks/{id}/logs`, on the manager and the worker alike.
#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    tail: Option<String>,
    follow: Option<String>,
}

impl LogsQuery {
    /// `(tail, follow)`, checked: `tail` 0 to [`MAX_LOG_TAIL`] lines (more is a 400, not cut;
    /// without it the whole log), `follow` `true` or `false` (default `false`).
    pub(crate) fn checked(self) -> Result<(Option<usize>, bool), ApiError> {
        let tail = self
            .tail
            .map(|t| {
                integer(
                    "tail",
                    &t,
                    0..=MAX_LOG_TAIL,
                    " (lines; leave tail out for the whole log)",
                )
            })
            .transpose()?;
        let follow = match self.follow {
            None => false,
            Some(f) => boolean("follow", &f)?,
        };
        Ok((tail, follow))
    }
}

/// The container's output; see [`LogsQuery::checked`] for `tail` and `follow`.
async fn task_logs(
    api: web::Data<WorkerApi>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path_task_id(&id)?;
    let (tail, follow) = query.into_inner().checked()?;
    let stream = api
        .worker
        .send(ReadLogs { id, tail, follow })
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

/// The named volumes, listed by the runtime now (a read: any token of the API may ask).
async fn volumes(api: web::Data<WorkerApi>) -> Result<HttpResponse, ApiError> {
    let volumes = api.worker.send(ReadVolumes).await??;
    Ok(HttpResponse::Ok().json(volumes))
}

/// The answer of `GET /health`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WorkerHealth<'a> {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'a str,
    /// The worker's name.
    name: &'a str,
}

/// Prometheus metrics: this worker's tasks by state, its runtime calls, its store's commits.
async fn metrics(api: web::Data<WorkerApi>) -> Result<HttpResponse, ApiError> {
    let counts = api.worker.send(CountWorkerTasks).await?;
    let registry =
        crate::metrics::worker_registry(&api.runtime_metrics, Some(&api.store_metrics), &counts);
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::encode(&registry)))
}

async fn health(api: web::Data<WorkerApi>) -> HttpResponse {
    HttpResponse::Ok().json(WorkerHealth {
        status: "ok",
        name: &api.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(since: Option<&str>, wait: Option<&str>) -> Result<Option<WatchChanges>, String> {
        feed_params(ListQuery {
            since: since.map(str::to_string),
            wait: wait.map(str::to_string),
            instance: None,
            acked: None,
            limit: None,
        })
        .map_err(|e| e.message)
    }

    #[test]
    fn acks_and_pages_are_checked_numbers() {
        let q = |acked: Option<&str>, limit: Option<&str>| {
            feed_params(ListQuery {
                since: Some("3".into()),
                wait: None,
                instance: None,
                acked: acked.map(str::to_string),
                limit: limit.map(str::to_string),
            })
            .map(|w| w.map(|w| (w.acked, w.limit)))
            .map_err(|e| e.message)
        };
        assert_eq!(q(None, None), Ok(Some((None, None))));
        assert_eq!(
            q(Some("18446744073709551615"), Some("99999999")),
            Ok(Some((Some(u64::MAX), Some(99_999_999))))
        );
        for (acked, limit, says) in [
            (Some("-1"), None, "acked=-1 is out of range"),
            (Some("x"), None, "acked=x is not a number"),
            (None, Some("0"), "limit=0 is out of range"),
            (None, Some("1.5"), "limit=1.5 is not an integer"),
        ] {
            let m = q(acked, limit).unwrap_err();
            assert!(m.contains(says), "{m}");
        }
    }

    #[test]
    fn the_feed_takes_any_since_and_cuts_the_wait_before_it_is_a_duration() {
        let w = feed(Some("18446744073709551615"), Some("1e300"))
            .unwrap()
            .unwrap();
        assert_eq!((w.since, w.wait), (u64::MAX, MAX_WATCH_WAIT));
        assert!(feed(None, None).unwrap().is_none());
        for (since, wait, says) in [
            (
                Some("-5"),
                None,
                "since=-5 is out of range; expected an integer from 0 to 18446744073709551615",
            ),
            (
                Some("18446744073709551616"),
                None,
                "since=18446744073709551616 is out of range",
            ),
            (Some("abc"), None, "since=abc is not a number"),
            (
                Some("0"),
                Some("NaN"),
                "wait=NaN is out of range; expected seconds >= 0",
            ),
            (Some("0"), Some("-1"), "wait=-1 is out of range"),
            (Some("0"), Some("inf"), "wait=inf is out of range"),
            (Some("0"), Some("soon"), "wait=soon is not a number"),
            // A bad wait is refused even without since.
            (None, Some("-1"), "wait=-1"),
        ] {
            let Err(m) = feed(since, wait) else {
                panic!("{since:?} {wait:?} was taken");
            };
            assert!(m.contains(says), "{m}");
        }
    }

    #[test]
    fn logs_take_a_bounded_tail_and_a_boolean_follow() {
        let q = |tail: Option<&str>, follow: Option<&str>| {
            LogsQuery {
                tail: tail.map(str::to_string),
                follow: follow.map(str::to_string),
            }
            .checked()
            .map_err(|e| e.message)
        };
        assert_eq!(q(None, None), Ok((None, false)));
        assert_eq!(q(Some("0"), Some("true")), Ok((Some(0), true)));
        assert_eq!(q(Some("100000"), None), Ok((Some(MAX_LOG_TAIL), false)));
        for (tail, follow, says) in [
            (
                Some("abc"),
                None,
                "tail=abc is not a number; expected an integer from 0 to 100000",
            ),
            (Some("100001"), None, "tail=100001 is out of range"),
            (Some("-1"), None, "tail=-1 is out of range"),
            (
                None,
                Some("maybe"),
                "follow=maybe is not a boolean; expected true or false",
            ),
            (None, Some(""), "follow= is not a boolean"),
        ] {
            let m = q(tail, follow).unwrap_err();
            assert!(m.contains(says), "{m}");
        }
    }
}
