//! The manager's service routes: thin handlers over the Manager's service messages.
//!
//! | route | answer |
//! |---|---|
//! | `POST /services` | 201 + `Location` once committed; the same spec again: 200; another: 409 |
//! | `GET /services` | every service, with its counts and rollout |
//! | `GET /services/{name}` | one service: desired, running, tasks by version, the rollout |
//! | `PUT /services/{name}` | the whole spec (201 when it creates the service) |
//! | `PATCH /services/{name}` | a JSON merge patch of the spec: `{"replicas": 5}` scales |
//! | `DELETE /services/{name}` | 202: every task stops, then the service goes |
//! | `POST /services/{name}/rollback` | 202: the previous template rolls out again |
//! | `GET /services/{name}/endpoints` | `host:port` of each Running (healthy) task; `?index=N` waits for a change |

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::manager::ManagerApi;
use super::{ApiError, endpoint, integer, read_body, shown};
use crate::actors::manager::{
    CreateService, DeleteService, GetService, ListServices, MAX_ENDPOINTS_WAIT, PatchService,
    ReplaceService, RollbackService, WatchEndpoints,
};
use crate::service::{check_name, parse_service};

/// How long an endpoints long-poll waits for a change unless told.
pub const DEFAULT_ENDPOINTS_WAIT: Duration = Duration::from_secs(60);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        endpoint("/services")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        endpoint("/services/{name}")
            .route(web::get().to(get))
            .route(web::put().to(replace))
            .route(web::patch().to(patch))
            .route(web::delete().to(delete)),
    )
    .service(endpoint("/services/{name}/rollback").route(web::post().to(rollback)))
    .service(endpoint("/services/{name}/endpoints").route(web::get().to(endpoints)));
}

/// The service name of a path, checked.
fn path_name(raw: &str) -> Result<String, ApiError> {
    check_name(raw).map_err(|e| {
        ApiError::bad_request(format!("the service name {} in the path: {e}", shown(raw)))
    })?;
    Ok(raw.to_string())
}

/// The service as `GET /services/{name}` shows it, with `status`.
async fn view(
    api: &ManagerApi,
    name: String,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, ApiError> {
    let view = api.manager.send(GetService(name.clone())).await??;
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/services/{name}")))
        .json(view))
}

/// 201 when a service was created, 200 when it was there already.
fn created_or_ok(created: bool) -> actix_web::http::StatusCode {
    if created {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    }
}

async fn create(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let spec = parse_service(&body, None)?;
    let (svc, created) = api.manager.send(CreateService(spec)).await??;
    view(&api, svc.name, created_or_ok(created)).await
}

async fn list(api: web::Data<ManagerApi>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(api.manager.send(ListServices).await?))
}

async fn get(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    view(&api, name, actix_web::http::StatusCode::OK).await
}

async fn replace(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    let body = read_body(&req, payload).await?;
    let spec = parse_service(&body, Some(&name))?;
    let (svc, created) = api.manager.send(ReplaceService(spec)).await??;
    view(&api, svc.name, created_or_ok(created)).await
}

async fn patch(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    let body = read_body(&req, payload).await?;
    let svc = api
        .manager
        .send(PatchService {
            name,
            body: body.to_vec(),
        })
        .await??;
    view(&api, svc.name, actix_web::http::StatusCode::OK).await
}

async fn delete(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    api.manager.send(DeleteService(name.clone())).await??;
    // It is gone at once when none of its tasks ran.
    match api.manager.send(GetService(name)).await? {
        Ok(view) => Ok(HttpResponse::Accepted().json(view)),
        Err(_) => Ok(HttpResponse::NoContent().finish()),
    }
}

async fn rollback(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    let svc = api.manager.send(RollbackService(name)).await??;
    view(&api, svc.name, actix_web::http::StatusCode::ACCEPTED).await
}

/// `?index=N` (wait for a change from that index) and `?wait=` (seconds, at most 300).
#[derive(Deserialize)]
struct EndpointsQuery {
    index: Option<String>,
    wait: Option<String>,
}

async fn endpoints(
    api: web::Data<ManagerApi>,
    name: web::Path<String>,
    query: web::Query<EndpointsQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&name)?;
    let query = query.into_inner();
    let index = query
        .index
        .map(|i| integer("index", &i, 0..=u64::MAX, " (the index of the last answer)"))
        .transpose()?;
    let wait = match query.wait {
        None => DEFAULT_ENDPOINTS_WAIT,
        Some(w) => {
            let secs = w.strip_suffix('s').unwrap_or(&w);
            Duration::from_secs(integer(
                "wait",
                secs,
                0..=MAX_ENDPOINTS_WAIT.as_secs(),
                " seconds (\"30\" or \"30s\")",
            )?)
        }
    };
    let answer = api
        .manager
        .send(WatchEndpoints { name, index, wait })
        .await??;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Cube-Index", answer.index.to_string()))
        .json(answer))
}
