//! How a WorkerProxy (or a manager handler) reaches a worker: over HTTP for worker processes,
//! or straight to the actor for in-process workers. Both speak the same operations, so the
//! proxy has one code path whatever the transport.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use serde::Deserialize;
use uuid::Uuid;

use super::worker::{
    Changes, GetStats, ReadLogs, StartAttempt, StartAttempts, StartOutcome, StartsAnswer,
    StopAttempt, StopAttempts, StopOutcome, StopsAnswer, WatchChanges, Worker, WorkerError,
};
use crate::node::NodeStats;
use crate::task::{State, Task};

/// Time allowed for a call to a worker, beyond any wait the call asks for.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of task specs one batch of starts carries (`POST /starts` takes up to
/// [`crate::http::MAX_BATCH_BODY_BYTES`]: this much plus one more spec of any size).
pub const BATCH_BYTES: usize = 1 << 20;
/// Most starts one batch carries.
pub const BATCH_STARTS: usize = 1000;
/// Most stops one batch carries (`POST /stops`; each is about 70 bytes of JSON).
pub const BATCH_STOPS: usize = 1000;
/// Stops sent at once, one request each, to a worker of a release before `POST /stops`.
const STOPS_EACH_AT_ONCE: usize = 16;

/// Where a worker is.
#[derive(Clone)]
pub enum WorkerLink {
    /// A worker process: its base URL, `http://host:port` (or `https://`).
    Http(String),
    /// A worker actor in this process, and its name.
    Local(Addr<Worker>, String),
}

impl WorkerLink {
    /// The worker process at `address`: a URL as given, or `host:port` reached over HTTPS
    /// when `tls` (the manager has `--tls-ca`), over HTTP otherwise.
    pub fn http(address: &str, tls: bool) -> WorkerLink {
        if address.contains("://") {
            return WorkerLink::Http(address.trim_end_matches('/').to_string());
        }
        let scheme = if tls { "https" } else { "http" };
        WorkerLink::Http(format!("{scheme}://{address}"))
    }

    /// The address shown in `/nodes`: `host:port`, or `in-process/<name>` for a worker actor in
    /// this process (no colon: there is nothing to reach over the network).
    pub fn address(&self) -> String {
        match self {
            WorkerLink::Http(url) => url
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .to_string(),
            WorkerLink::Local(_, name) => format!("in-process/{name}"),
        }
    }
}

/// A start waiting for its batch: the task as the worker's API takes it, encoded once (or the
/// task itself, for a worker in this process).
pub struct StartCall {
    pub id: Uuid,
    pub attempt: u32,
    body: StartBody,
}

enum StartBody {
    /// The task's JSON.
    Json(Vec<u8>),
    Task(Box<Task>),
}

impl StartCall {
    /// Bytes it adds to a batch.
    pub fn size(&self) -> usize {
        match &self.body {
            StartBody::Json(json) => json.len() + 1,
            StartBody::Task(_) => 0,
        }
    }
}

/// What a worker has of an attempt it was asked to start or stop: its number and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptState {
    pub attempt: u32,
    pub state: State,
}

/// The answer to a batch of starts: the worker's name (empty if it did not say) and, in the
/// batch's order, what became of each start.
pub type BatchOutcome = (String, Vec<Result<AttemptState, CallError>>);

/// The answer to a batch of stops, as [`BatchOutcome`] is to starts: the attempt and state each
/// task was left in.
pub type StopsOutcome = (String, Vec<Result<AttemptState, CallError>>);

/// A failed call to a worker, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not reachable, timed out, a 5xx, or an answer that is not what was expected: the worker
    /// may answer next time.
    #[error("{0}")]
    Transport(String),
    /// 404: the worker does not know the task (or it has no container).
    #[error("{0}")]
    NotFound(String),
    /// 409: the attempt is fenced on the worker: stopped there, or older than the one it runs.
    #[error("{0}")]
    Stale(String),
    /// Another 4xx: the worker refuses the request as it is.
    #[error("the worker answered {status}: {message}")]
    Rejected { status: u16, message: String },
}

/// How a worker's 507 begins, as a [`CallError::Transport`].
pub const NO_ROOM: &str = "the worker's store has no room for new attempts";

impl CallError {
    /// True for a worker's 507: its store has no room for new attempts.
    pub fn is_no_room(&self) -> bool {
        matches!(self, CallError::Transport(m) if m.starts_with(NO_ROOM))
    }

    /// The error for an HTTP status and the worker's message.
    pub fn from_status(status: u16, message: String) -> CallError {
        match status {
            404 => CallError::NotFound(message),
            409 => CallError::Stale(message),
            400..=499 => CallError::Rejected { status, message },
            // The worker's store has no room for a new attempt: nothing was recorded there,
            // the worker is otherwise sound (its tasks run, its stops go through), and the
            // condition clears without the task's help (its operator raises --store-size or
            // frees disk, retention collects). So the start is retried like a transport
            // failure, rather than failing the attempt (which a 4xx does) and making a user's
            // task Failed for a node's want of room.
            507 => CallError::Transport(format!("{NO_ROOM} (507): {message}")),
            _ => CallError::Transport(format!("the worker answered {status}: {message}")),
        }
    }
}

impl From<WorkerError> for CallError {
    fn from(e: WorkerError) -> CallError {
        let message = e.to_string();
        match e {
            WorkerError::NotFound(_) | WorkerError::NoContainer(_) => CallError::NotFound(message),
            WorkerError::StaleAttempt { .. } | WorkerError::Stopped { .. } => {
                CallError::Stale(message)
            }
            // As its HTTP API's 507 (`from_status`).
            WorkerError::Store(store) if store.is_full() => {
                CallError::Transport(format!("{NO_ROOM}: {message}"))
            }
            WorkerError::Gone | WorkerError::Store(_) | WorkerError::Runtime(_) => {
                CallError::Transport(message)
            }
        }
    }
}

fn mailbox(e: actix::MailboxError) -> CallError {
    CallError::Transport(format!("the worker actor is gone: {e}"))
}

/// The body of a start, `{"task": …}`, encoded without an intermediate JSON value.
#[derive(serde::Serialize)]
struct StartBodyRef<'a> {
    task: &'a Task,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Where a worker is and the token that lets its caller in: what a [`WorkerClient`] is made
/// from, on any thread (a client itself stays on the thread that made it).
#[derive(Clone)]
pub struct WorkerTarget {
    pub link: WorkerLink,
    /// The cluster token, presented on every call.
    pub token: Option<String>,
    /// For `https://` links: whom to trust, and the client certificate to present.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A connection to one worker.
#[derive(Clone)]
pub struct WorkerClient {
    target: WorkerTarget,
    http: awc::Client,
    /// The worker answered that it has no `POST /starts` (a release before it): starts go one
    /// request each.
    no_batches: Rc<Cell<bool>>,
    /// Likewise for `POST /stops`.
    no_stop_batches: Rc<Cell<bool>>,
}

impl WorkerClient {
    pub fn new(target: WorkerTarget) -> WorkerClient {
        let connector = match &target.tls {
            Some(c) => awc::Connector::new().rustls_0_23(c.clone()),
            None => awc::Connector::new(),
        };
        let mut http = awc::Client::builder()
            .connector(connector)
            .timeout(CALL_TIMEOUT)
            .disable_redirects();
        if let Some(token) = &target.token {
            http = http.bearer_auth(token);
        }
        WorkerClient {
            target,
            http: http.finish(),
            no_batches: Rc::new(Cell::new(false)),
            no_stop_batches: Rc::new(Cell::new(false)),
        }
    }

    pub fn target(&self) -> &WorkerTarget {
        &self.target
    }

    pub fn link(&self) -> &WorkerLink {
        &self.target.link
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let mut res = self
            .http
            .get(format!("{base}{path}"))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("GET {base}{path}: {e}")))?;
        read_json(&mut res, base, path).await
    }

    /// The change feed: everything changed after `since`, waiting up to `wait` for a change
    /// (see [`WatchChanges`] for acknowledgements and pages).
    pub async fn watch(&self, query: WatchChanges) -> Result<Changes, CallError> {
        match &self.target.link {
            WorkerLink::Http(base) => {
                let path = feed_path(&query);
                self.get_json(base, &path, query.wait + CALL_TIMEOUT).await
            }
            WorkerLink::Local(addr, _) => addr.send(query).await.map_err(mailbox),
        }
    }

    /// The worker's machine.
    pub async fn stats(&self) -> Result<NodeStats, CallError> {
        match &self.target.link {
            WorkerLink::Http(base) => self.get_json(base, "/stats", CALL_TIMEOUT).await,
            WorkerLink::Local(addr, _) => Ok(addr.send(GetStats).await.map_err(mailbox)??),
        }
    }

    /// Start this attempt of the task (idempotent on the worker).
    pub async fn start(&self, task: &Task) -> Result<Task, CallError> {
        match &self.target.link {
            WorkerLink::Http(base) => {
                let body = serde_json::to_vec(&StartBodyRef { task })
                    .map_err(|e| CallError::Transport(format!("encoding a start: {e}")))?;
                self.post_start(base, body).await
            }
            WorkerLink::Local(addr, _) => {
                let started = addr
                    .send(StartAttempt(task.clone()))
                    .await
                    .map_err(mailbox)??;
                Ok(started.task)
            }
        }
    }

    async fn post_start(&self, base: &str, body: Vec<u8>) -> Result<Task, CallError> {
        let mut res = self
            .http
            .post(format!("{base}/tasks"))
            .content_type("application/json")
            .send_body(body)
            .await
            .map_err(|e| CallError::Transport(format!("POST {base}/tasks: {e}")))?;
        read_json(&mut res, base, "/tasks").await
    }

    /// A start of this attempt, ready to go in a batch ([`WorkerClient::start_batch`]).
    pub fn prepare_start(&self, task: Box<Task>) -> StartCall {
        let (id, attempt) = (task.id, task.attempt);
        let body = match &self.target.link {
            // A Task always encodes; should it not, the worker's refusal of the batch says so.
            WorkerLink::Http(_) => StartBody::Json(serde_json::to_vec(&*task).unwrap_or_default()),
            WorkerLink::Local(..) => StartBody::Task(task),
        };
        StartCall { id, attempt, body }
    }

    /// Start these attempts in one request (`POST /starts`: one commit on the worker for all).
    /// `Err` when the batch as a whole failed: none of its starts is known to be done. A worker
    /// of a release without batches gets one `POST /tasks` each, from then on.
    pub async fn start_batch(&self, calls: Vec<StartCall>) -> Result<BatchOutcome, CallError> {
        let base = match &self.target.link {
            WorkerLink::Http(base) => base,
            WorkerLink::Local(addr, _) => {
                let tasks = calls
                    .into_iter()
                    .filter_map(|c| match c.body {
                        StartBody::Task(t) => Some(*t),
                        StartBody::Json(_) => None,
                    })
                    .collect();
                let outcomes = addr.send(StartAttempts(tasks)).await.map_err(mailbox)??;
                let mut name = String::new();
                let outcomes = outcomes
                    .into_iter()
                    .map(|o| match o {
                        Ok(started) => {
                            if name.is_empty() {
                                name = started.task.worker.clone().unwrap_or_default();
                            }
                            Ok(AttemptState {
                                attempt: started.task.attempt,
                                state: started.task.state,
                            })
                        }
                        Err(e) => Err(CallError::from(e)),
                    })
                    .collect();
                return Ok((name, outcomes));
            }
        };
        if self.no_batches.get() {
            return Ok(self.start_each(base, calls).await);
        }
        let mut body = Vec::with_capacity(calls.iter().map(StartCall::size).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"tasks\":[");
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            if let StartBody::Json(json) = &call.body {
                body.extend_from_slice(json);
            }
        }
        body.extend_from_slice(b"]}");
        let mut res = self
            .http
            .post(format!("{base}/starts"))
            .content_type("application/json")
            .send_body(body)
            .await
            .map_err(|e| CallError::Transport(format!("POST {base}/starts: {e}")))?;
        if matches!(res.status().as_u16(), 404 | 405) {
            // A worker of a release before batches: no such route.
            log::info!(
                "worker at {} takes no batches of starts: one request per start",
                self.target.link.address()
            );
            self.no_batches.set(true);
            return Ok(self.start_each(base, calls).await);
        }
        let answer: StartsAnswer = read_json(&mut res, base, "/starts").await?;
        if answer.starts.len() != calls.len() {
            return Err(CallError::Transport(format!(
                "{base}/starts answered {} outcomes for {} starts",
                answer.starts.len(),
                calls.len()
            )));
        }
        let outcomes = calls
            .iter()
            .zip(answer.starts)
            .map(|(call, outcome)| match outcome {
                StartOutcome::Started {
                    id, attempt, state, ..
                } if id == call.id => Ok(AttemptState { attempt, state }),
                StartOutcome::Refused { id, status, error } if id == call.id => {
                    Err(CallError::from_status(status, error))
                }
                _ => Err(CallError::Transport(format!(
                    "{base}/starts answered out of order"
                ))),
            })
            .collect();
        Ok((answer.name, outcomes))
    }

    /// The starts of a batch, one `POST /tasks` each.
    async fn start_each(&self, base: &str, calls: Vec<StartCall>) -> BatchOutcome {
        let answers = futures_util::future::join_all(calls.into_iter().map(|call| async move {
            let mut body = Vec::with_capacity(call.size() + 10);
            body.extend_from_slice(b"{\"task\":");
            if let StartBody::Json(json) = call.body {
                body.extend_from_slice(&json);
            }
            body.push(b'}');
            self.post_start(base, body).await
        }))
        .await;
        let mut name = String::new();
        let outcomes = answers
            .into_iter()
            .map(|answer| {
                answer.map(|task| {
                    if name.is_empty() {
                        name = task.worker.unwrap_or_default();
                    }
                    AttemptState {
                        attempt: task.attempt,
                        state: task.state,
                    }
                })
            })
            .collect();
        (name, outcomes)
    }

    /// Stop a batch of attempts in one request (`POST /stops`) and one commit on the worker;
    /// one `DELETE` each, a few at a time, to a worker of a release before batches.
    pub async fn stop_batch(&self, stops: Vec<(Uuid, u32)>) -> Result<StopsOutcome, CallError> {
        let left = |task: Task| AttemptState {
            attempt: task.attempt,
            state: task.state,
        };
        let base = match &self.target.link {
            WorkerLink::Http(base) => base,
            WorkerLink::Local(addr, name) => {
                let batch = stops
                    .into_iter()
                    .map(|(id, attempt)| StopAttempt {
                        id,
                        attempt: Some(attempt),
                    })
                    .collect();
                let outcomes = addr.send(StopAttempts(batch)).await.map_err(mailbox)??;
                let outcomes = outcomes
                    .into_iter()
                    .map(|o| o.map(left).map_err(CallError::from))
                    .collect();
                return Ok((name.clone(), outcomes));
            }
        };
        if self.no_stop_batches.get() {
            return Ok(self.stop_each(stops).await);
        }
        let body = serde_json::json!({
            "stops": stops
                .iter()
                .map(|(id, attempt)| serde_json::json!({"id": id, "attempt": attempt}))
                .collect::<Vec<_>>()
        });
        let mut res = self
            .http
            .post(format!("{base}/stops"))
            .send_json(&body)
            .await
            .map_err(|e| CallError::Transport(format!("POST {base}/stops: {e}")))?;
        if matches!(res.status().as_u16(), 404 | 405) {
            log::info!(
                "worker at {} takes no batches of stops: one request per stop",
                self.target.link.address()
            );
            self.no_stop_batches.set(true);
            return Ok(self.stop_each(stops).await);
        }
        let answer: StopsAnswer = read_json(&mut res, base, "/stops").await?;
        if answer.stops.len() != stops.len() {
            return Err(CallError::Transport(format!(
                "{base}/stops answered {} outcomes for {} stops",
                answer.stops.len(),
                stops.len()
            )));
        }
        let outcomes = stops
            .iter()
            .zip(answer.stops)
            .map(|(&(asked, _), outcome)| match outcome {
                StopOutcome::Stopped { id, attempt, state } if id == asked => {
                    Ok(AttemptState { attempt, state })
                }
                StopOutcome::Refused { id, status, error } if id == asked => {
                    Err(CallError::from_status(status, error))
                }
                _ => Err(CallError::Transport(format!(
                    "{base}/stops answered out of order"
                ))),
            })
            .collect();
        Ok((answer.name, outcomes))
    }

    /// The stops of a batch, one `DELETE` each, [`STOPS_EACH_AT_ONCE`] at a time. The first
    /// that finds the worker unreachable fails the rest with it at once, rather than each
    /// waiting for its own timeout. The name is left empty: a stopped task names the worker it
    /// was placed on, which may not be the name the worker has now.
    async fn stop_each(&self, stops: Vec<(Uuid, u32)>) -> StopsOutcome {
        let total = stops.len();
        let mut answers = futures_util::stream::iter(stops)
            .map(|(id, attempt)| self.stop(id, Some(attempt)))
            .buffered(STOPS_EACH_AT_ONCE);
        let mut outcomes = Vec::with_capacity(total);
        while let Some(answer) = answers.next().await {
            let unreachable = matches!(answer, Err(CallError::Transport(_)));
            outcomes.push(answer.map(|task| AttemptState {
                attempt: task.attempt,
                state: task.state,
            }));
            if unreachable {
                break;
            }
        }
        if let Some(Err(e)) = outcomes.last().cloned() {
            outcomes.resize(total, Err(e));
        }
        (String::new(), outcomes)
    }

    /// Stop the task, only if `attempt` is (still) the one the worker runs.
    pub async fn stop(&self, id: Uuid, attempt: Option<u32>) -> Result<Task, CallError> {
        match &self.target.link {
            WorkerLink::Http(base) => {
                let path = match attempt {
                    Some(a) => format!("/tasks/{id}?attempt={a}"),
                    None => format!("/tasks/{id}"),
                };
                let mut res = self
                    .http
                    .delete(format!("{base}{path}"))
                    .send()
                    .await
                    .map_err(|e| CallError::Transport(format!("DELETE {base}{path}: {e}")))?;
                read_json(&mut res, base, &path).await
            }
            WorkerLink::Local(addr, _) => Ok(addr
                .send(StopAttempt { id, attempt })
                .await
                .map_err(mailbox)??),
        }
    }

    /// The container's output as a stream of chunks.
    pub async fn logs(
        &self,
        id: Uuid,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LocalBoxStream<'static, Result<Bytes, CallError>>, CallError> {
        match &self.target.link {
            WorkerLink::Http(base) => {
                let mut path = format!("/tasks/{id}/logs?follow={follow}");
                if let Some(t) = tail {
                    path.push_str(&format!("&tail={t}"));
                }
                let req = self.http.get(format!("{base}{path}"));
                // A followed log may stay open as long as the container runs.
                let req = if follow {
                    req.timeout(Duration::from_secs(24 * 3600))
                } else {
                    req
                };
                let mut res = req
                    .send()
                    .await
                    .map_err(|e| CallError::Transport(format!("GET {base}{path}: {e}")))?;
                if !res.status().is_success() {
                    return Err(error_from(&mut res).await);
                }
                Ok(res
                    .map(|chunk| chunk.map_err(|e| CallError::Transport(e.to_string())))
                    .boxed_local())
            }
            WorkerLink::Local(addr, _) => {
                let stream = addr
                    .send(ReadLogs { id, tail, follow })
                    .await
                    .map_err(mailbox)??;
                Ok(stream
                    .map(|chunk| chunk.map_err(|e| CallError::Transport(e.to_string())))
                    .boxed_local())
            }
        }
    }
}

/// The worker API's path for a read of the change feed.
fn feed_path(query: &WatchChanges) -> String {
    let mut path = format!(
        "/tasks?since={}&wait={}",
        query.since,
        query.wait.as_secs_f64()
    );
    if let Some(i) = query.instance {
        path.push_str(&format!("&instance={i}"));
    }
    if let Some(a) = query.acked {
        path.push_str(&format!("&acked={a}"));
    }
    if let Some(l) = query.limit {
        path.push_str(&format!("&limit={l}"));
    }
    path
}

async fn error_from<S>(res: &mut awc::ClientResponse<S>) -> CallError
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = res.status().as_u16();
    let message = match res.body().limit(64 * 1024).await {
        Ok(body) => serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
        Err(e) => e.to_string(),
    };
    CallError::from_status(status, message)
}

async fn read_json<S, T>(
    res: &mut awc::ClientResponse<S>,
    base: &str,
    path: &str,
) -> Result<T, CallError>
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    T: serde::de::DeserializeOwned,
{
    if !res.status().is_success() {
        return Err(error_from(res).await);
    }
    let body = res
        .body()
        .limit(256 << 20)
        .await
        .map_err(|e| CallError::Transport(format!("{base}{path}: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| CallError::Transport(format!("{base}{path} answered unexpected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_web::{App, HttpResponse, HttpServer, web};

    use super::*;
    use crate::db::{StoreError, Usage};

    /// A worker of a release before batches: it has `POST /tasks` and no `POST /starts`. The
    /// client tries a batch once, then sends one start per request, and the outcomes are the
    /// same either way.
    #[actix_web::test]
    async fn a_worker_without_batches_gets_one_request_per_start_from_then_on() {
        let (batches, singles) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (b, s) = (batches.clone(), singles.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = HttpServer::new(move || {
            let (b, s) = (b.clone(), s.clone());
            App::new()
                .route(
                    "/tasks",
                    web::post().to(move |body: web::Json<serde_json::Value>| {
                        s.fetch_add(1, Ordering::SeqCst);
                        let mut task = body.into_inner()["task"].clone();
                        task["worker"] = "old".into();
                        task["state"] = "Scheduled".into();
                        async move { HttpResponse::Created().json(task) }
                    }),
                )
                .default_service(web::to(move || {
                    b.fetch_add(1, Ordering::SeqCst);
                    async { HttpResponse::NotFound().json(serde_json::json!({"error": "no"})) }
                }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);

        let client = WorkerClient::new(WorkerTarget {
            link: WorkerLink::http(&address, false),
            token: None,
            tls: None,
        });
        let batch = || {
            (0..3)
                .map(|_| {
                    let mut task = Task::new("cube-demo/busybox:latest");
                    task.attempt = 2;
                    client.prepare_start(Box::new(task))
                })
                .collect::<Vec<_>>()
        };
        let started = Ok(AttemptState {
            attempt: 2,
            state: State::Scheduled,
        });
        for _ in 0..2 {
            let (name, outcomes) = client.start_batch(batch()).await.expect("answered");
            assert_eq!(name, "old");
            assert_eq!(outcomes, vec![started.clone(); 3]);
        }
        assert_eq!(
            batches.load(Ordering::SeqCst),
            1,
            "asked for a batch only once"
        );
        assert_eq!(singles.load(Ordering::SeqCst), 6);
        handle.stop(true).await;
    }

    fn no_room() -> StoreError {
        StoreError::NoRoom {
            path: "/data/w1".into(),
            usage: Usage {
                in_use: 1 << 20,
                queued: 0,
                map_size: 2 << 20,
                file_size: 2 << 20,
                disk_free: u64::MAX,
            },
        }
    }

    #[test]
    fn a_workers_507_is_retried_as_a_transport_failure_not_a_refusal() {
        let full = CallError::from_status(507, "the worker's store is full".into());
        assert!(matches!(&full, CallError::Transport(_)), "{full:?}");
        assert!(full.is_no_room(), "{full}");
        // In process, the same.
        let local = CallError::from(WorkerError::Store(no_room()));
        assert!(local.is_no_room(), "{local}");
        assert!(local.to_string().contains("/data/w1"), "{local}");
        for other in [
            CallError::from_status(500, "boom".into()),
            CallError::from_status(503, "later".into()),
            CallError::from(WorkerError::Store(StoreError::Closed)),
        ] {
            assert!(matches!(other, CallError::Transport(_)) && !other.is_no_room());
        }
        assert!(matches!(
            CallError::from_status(413, "too big".into()),
            CallError::Rejected { status: 413, .. }
        ));
    }

    #[test]
    fn a_feed_read_names_every_parameter_it_has() {
        let instance = Uuid::nil();
        let mut query = WatchChanges {
            since: 7,
            instance: None,
            wait: Duration::from_millis(1500),
            acked: None,
            limit: None,
        };
        assert_eq!(feed_path(&query), "/tasks?since=7&wait=1.5");
        query.instance = Some(instance);
        query.acked = Some(5);
        query.limit = Some(5000);
        assert_eq!(
            feed_path(&query),
            format!("/tasks?since=7&wait=1.5&instance={instance}&acked=5&limit=5000")
        );
    }
}
