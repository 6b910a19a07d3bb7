//! `GET /events`: the manager's event stream as server-sent events (`text/event-stream`).
//!
//! Each event is `id: <index>`, `event: <type>` and `data: <JSON>` with `index`, `time`,
//! `type` (`task`, `service`, `node`), `action`, `id` (a task's) or `name` (a service's or a
//! node's) and `object`. `?since=N` (or the `Last-Event-ID` header a browser sends when it
//! reconnects) first replays what is retained after N, or sends an `event: reset` when
//! something after N is no longer retained; `?since=0` replays everything retained; without
//! it only new events come; `?tail=N` (without `since`) first replays the last N retained.
//! `?type=`, `?task=`, `?node=` and `?service=` filter on the server.
//! `?wait=S` ends the stream after S seconds (a bounded read; the fuzzer's). A comment line
//! every [`KEEP_ALIVE`] keeps proxies from closing an idle stream.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::manager::ManagerApi;
use super::{ApiError, integer, shown};
use crate::actors::events::{Filter, Subscribe, Topic};

/// Time between keep-alive comments on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest `wait` a stream may be given, in seconds (a day); without `wait` it has no end.
pub const MAX_EVENTS_WAIT: u64 = 86_400;
/// Most events `?tail=` replays.
pub const MAX_EVENTS_TAIL: usize = 1000;
/// Longest name `?node=` or `?service=` takes.
const MAX_NAME: usize = 253;

/// One server-sent event as a client's parser sees it (the OpenAPI document's schema of the
/// stream's items; the handler writes the lines itself).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServerSentEvent {
    /// The event's index, as in `data` (what `since` and `Last-Event-ID` take).
    pub id: String,
    /// `task`, `service`, `node`, or `reset`.
    pub event: String,
    /// JSON: `{index, time, type, action, id | name, object}`.
    pub data: String,
}

/// The query of `GET /events`, every field as text (see [`super::integer`]).
#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    since: Option<String>,
    #[serde(rename = "type")]
    topics: Option<String>,
    task: Option<String>,
    node: Option<String>,
    service: Option<String>,
    tail: Option<String>,
    wait: Option<String>,
}

/// What a request asks for: from where, which events, for how long.
#[derive(Debug, PartialEq)]
pub(crate) struct EventsRequest {
    pub since: Option<u64>,
    pub tail: Option<usize>,
    pub filter: Filter,
    pub wait: Option<Duration>,
}

impl EventsQuery {
    /// Checked; `last_event_id` is the header's value, taken when `since` is not given.
    pub(crate) fn checked(self, last_event_id: Option<&str>) -> Result<EventsRequest, ApiError> {
        let since_given = self.since.is_some();
        let since = match (self.since, last_event_id) {
            (Some(raw), _) => Some(integer("since", &raw, 0..=u64::MAX, "")?),
            (None, Some(raw)) => Some(integer(
                "Last-Event-ID",
                raw.trim(),
                0..=u64::MAX,
                " (an event's id)",
            )?),
            (None, None) => None,
        };
        let topics = match self.topics.as_deref() {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|t| {
                    Topic::parse(t.trim()).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "type={} is not known; expected task, service or node, or several separated by commas",
                            shown(raw)
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let task = self
            .task
            .map(|raw| super::uuid("task", &raw, "a task id"))
            .transpose()?;
        let name = |field: &str, raw: Option<String>| match raw {
            Some(n) if n.is_empty() || n.len() > MAX_NAME => Err(ApiError::bad_request(format!(
                "{field}={} is not a name; expected 1 to {MAX_NAME} characters",
                shown(&n)
            ))),
            other => Ok(other),
        };
        let tail = self
            .tail
            .map(|raw| integer("tail", &raw, 0..=MAX_EVENTS_TAIL, " (events)"))
            .transpose()?;
        if tail.is_some() && since_given {
            return Err(ApiError::bad_request(
                "since and tail both given; expected one: since replays what followed an event, tail the last events",
            ));
        }
        // A browser reconnecting sends Last-Event-ID: it continues from there, not from a tail.
        let tail = if since.is_some() { None } else { tail };
        let wait = self
            .wait
            .map(|raw| integer("wait", &raw, 0..=MAX_EVENTS_WAIT, " (seconds)"))
            .transpose()?
            .map(Duration::from_secs);
        Ok(EventsRequest {
            since,
            tail,
            filter: Filter {
                topics,
                task,
                node: name("node", self.node)?,
                service: name("service", self.service)?,
            },
            wait,
        })
    }
}

pub(crate) async fn events(
    api: web::Data<ManagerApi>,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let last_event_id = req
        .headers()
        .get("Last-Event-ID")
        .map(|v| v.to_str().unwrap_or("not text"));
    let asked = query.into_inner().checked(last_event_id)?;
    let subscription = api
        .events
        .send(Subscribe {
            since: asked.since,
            tail: asked.tail,
            filter: asked.filter,
        })
        .await
        .map_err(|_| ApiError::unavailable("the event stream is not running"))?;
    let deadline = asked.wait.map(|w| Instant::now() + w);
    let body = stream(subscription.replay, subscription.rx, deadline);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Proxies that buffer (nginx) would hold events back.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The body: a first comment (so a client knows it is subscribed), the replay, then each new
/// frame as it comes, a keep-alive comment when none came for [`KEEP_ALIVE`], until the hub
/// drops the subscriber or the deadline passes.
fn stream(
    replay: Vec<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    deadline: Option<Instant>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let first = std::iter::once(Bytes::from_static(b": subscribed\n\n"));
    let replay = futures_util::stream::iter(first.chain(replay).map(Ok));
    let live = futures_util::stream::unfold(rx, move |mut rx| async move {
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            return None;
        }
        let until = deadline.map_or(now + KEEP_ALIVE, |d| d.min(now + KEEP_ALIVE));
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(frame)) => Some((Ok(frame), rx)),
            Ok(None) => None,
            Err(_) if deadline.is_some_and(|d| d <= Instant::now()) => None,
            Err(_) => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), rx)),
        }
    });
    futures_util::StreamExt::chain(replay, live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> EventsQuery {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        };
        EventsQuery {
            since: get("since"),
            topics: get("type"),
            task: get("task"),
            node: get("node"),
            service: get("service"),
            tail: get("tail"),
            wait: get("wait"),
        }
    }

    #[test]
    fn since_comes_from_the_query_or_else_the_last_event_id() {
        let asked = query(&[("since", "7")]).checked(Some("9")).expect("valid");
        assert_eq!(asked.since, Some(7));
        let asked = query(&[]).checked(Some(" 9 ")).expect("valid");
        assert_eq!(asked.since, Some(9));
        assert_eq!(query(&[]).checked(None).expect("valid").since, None);
        assert!(query(&[]).checked(Some("x")).is_err());
        assert!(query(&[("since", "-1")]).checked(None).is_err());
    }

    #[test]
    fn filters_and_wait_are_checked() {
        let asked = query(&[("type", "task,node"), ("node", "w1"), ("wait", "2")])
            .checked(None)
            .expect("valid");
        assert_eq!(asked.filter.topics, vec![Topic::Task, Topic::Node]);
        assert_eq!(asked.filter.node.as_deref(), Some("w1"));
        assert_eq!(asked.wait, Some(Duration::from_secs(2)));
        for bad in [
            ("type", "tasks"),
            ("type", ""),
            ("task", "nope"),
            ("node", ""),
            ("wait", "86401"),
            ("wait", "1.5"),
        ] {
            assert!(query(&[bad]).checked(None).is_err(), "{bad:?} is refused");
        }
    }

    #[actix_rt::test]
    async fn a_stream_with_a_wait_ends_after_it() {
        use futures_util::StreamExt;
        let (_tx, rx) = mpsc::channel(1);
        let deadline = Some(Instant::now() + Duration::from_millis(50));
        let frames: Vec<_> = stream(vec![Bytes::from_static(b"x")], rx, deadline)
            .collect()
            .await;
        assert_eq!(
            frames.len(),
            2,
            "the first comment and the replay, then the end"
        );
    }
}
