//! `cube events` and `cube status -w`: the manager's event stream (`GET /events`, server-sent
//! events) followed as a client. An event is `id: <index>`, `event: task|service|node|reset`
//! and `data: {"index":N,"time":…,"type":…,"action":…,"object":{…}}`, ended by a blank line;
//! a dropped stream is picked up again with `?since=<last index>`. Parsing is the pure
//! [`SseParser`]; the rest moves bytes and prints.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

use super::{CliError, Client, Output, StatusArgs, error_message, status_table, status_tasks};

/// How long `cube events` waits before it connects again after the stream broke.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often `cube status -w` lists the tasks when the manager serves no events.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// How often `cube status -w` redraws with no event, so that the ages move on.
const WATCH_REFRESH: Duration = Duration::from_secs(10);
/// A stream is open for as long as it is followed; awc wants a deadline all the same.
const STREAM_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only the events of this task (its id).
    #[arg(long)]
    pub task: Option<String>,
    /// Only the events of this node (its name).
    #[arg(long)]
    pub node: Option<String>,
    /// Only events of this type: task, service or node.
    #[arg(long = "type", value_name = "TYPE", value_parser = ["task", "service", "node"])]
    pub kind: Option<String>,
    /// Only the events of this service (its name).
    #[arg(long)]
    pub service: Option<String>,
    /// Start after this event index (earlier events the manager still holds are sent first).
    #[arg(long, value_name = "N", conflicts_with = "tail")]
    pub since: Option<u64>,
    /// Print the last N events the manager holds first (up to 1000), then follow.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub tail: Option<u16>,
    /// `table` prints a line per event; `json` the event's JSON as the manager sent it.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, the event's index.
    pub id: Option<String>,
    /// `event:`, its type (`message` when none is given).
    pub event: String,
    /// `data:` lines, joined by newlines.
    pub data: String,
}

/// Server-sent events out of a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feed `bytes`; the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    events.push(SseEvent {
                        id: self.id.take(),
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: a keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.id = Some(value.to_string()),
                "event" => self.event = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        events
    }
}

/// `/events?…` for these filters, after event `since`.
pub fn events_path(args: &EventsArgs, since: Option<u64>) -> Result<String, String> {
    let mut query = Vec::new();
    if let Some(task) = &args.task {
        query.push(format!("task={}", super::task_id(task)?));
    }
    if let Some(node) = &args.node {
        crate::node::check_name(node).map_err(|e| format!("--node: {e}"))?;
        query.push(format!("node={node}"));
    }
    if let Some(kind) = &args.kind {
        query.push(format!("type={kind}"));
    }
    if let Some(service) = &args.service {
        crate::service::check_name(service).map_err(|e| format!("--service: {e}"))?;
        query.push(format!("service={service}"));
    }
    match (since, args.tail) {
        (Some(since), _) => query.push(format!("since={since}")),
        (None, Some(tail)) => query.push(format!("tail={tail}")),
        (None, None) => {}
    }
    Ok(if query.is_empty() {
        "/events".into()
    } else {
        format!("/events?{}", query.join("&"))
    })
}

/// The line `cube events` prints for an event: its time, type and action, and what it is
/// about (a task's id, name and state; a service's or a node's name).
pub fn event_line(event: &SseEvent) -> String {
    let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
        return format!("{} {}", event.event, event.data);
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let time = text(&data["time"]).unwrap_or_else(|| "-".into());
    let kind = text(&data["type"]).unwrap_or_else(|| event.event.clone());
    let action = text(&data["action"]).unwrap_or_else(|| "-".into());
    let object = &data["object"];
    let mut about: Vec<String> = ["id", "name", "state", "status", "worker"]
        .iter()
        .filter_map(|key| match &object[*key] {
            Value::String(s) => Some(format!("{key}={s}")),
            Value::Number(n) => Some(format!("{key}={n}")),
            _ => None,
        })
        .collect();
    if let Some(error) = text(&object["error"]) {
        about.push(format!("error={error:?}"));
    }
    format!("{time} {kind} {action} {}", about.join(" "))
        .trim_end()
        .to_string()
}

/// Open `path` as an event stream.
async fn open(client: &Client, path: &str) -> Result<Option<awc::ClientResponse>, CliError> {
    let req = client
        .http()?
        .get(format!("{}{path}", client.base))
        .insert_header(("Accept", "text/event-stream"))
        .timeout(STREAM_TIMEOUT);
    let mut res = req.send().await.map_err(|e| client.unreachable(e))?;
    let status = res.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if status >= 400 {
        let body = res.body().await.map_err(|e| e.to_string())?;
        return Err(error_message(&body).into());
    }
    Ok(Some(res))
}

/// `cube events`: follow the stream, printing each event; connect again after a break from
/// the last index seen.
pub async fn run(client: &Client, args: EventsArgs) -> Result<(), CliError> {
    events_path(&args, None).map_err(CliError::Usage)?;
    let mut since = args.since;
    let mut connected_once = false;
    loop {
        let path = events_path(&args, since).map_err(CliError::Usage)?;
        let res = match open(client, &path).await {
            Ok(Some(res)) => res,
            Ok(None) => {
                return Err(CliError::NotFound(format!(
                    "the manager at {} serves no events (GET /events answered 404)",
                    client.base
                )));
            }
            // A manager that restarts is waited for; one never reached is an error.
            Err(e) if connected_once => {
                log::warn!("{e}; connecting again");
                actix_web::rt::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        connected_once = true;
        let mut parser = SseParser::default();
        let mut stream = res;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            for event in parser.feed(&chunk) {
                if let Some(index) = event.id.as_deref().and_then(|i| i.trim().parse().ok()) {
                    since = Some(index);
                }
                let line = match args.output {
                    Output::Json => event.data.clone(),
                    Output::Table => event_line(&event),
                };
                println!("{line}");
            }
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
        }
        log::info!("the event stream ended; connecting again after event {since:?}");
        actix_web::rt::time::sleep(RECONNECT_DELAY).await;
    }
}

/// `cube status -w`: the table, redrawn when it changes. Changes come from the event stream
/// when the manager serves one; otherwise the tasks are listed every second.
pub async fn watch_status(client: &Client, args: StatusArgs) -> Result<(), CliError> {
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let events = open(client, "/events?type=task").await?;
    let streaming = events.is_some();
    if let Some(mut stream) = events {
        actix_web::rt::spawn(async move {
            let mut parser = SseParser::default();
            while let Some(Ok(chunk)) = stream.next().await {
                if !parser.feed(&chunk).is_empty() && changed_tx.send(()).is_err() {
                    return;
                }
            }
            // The stream broke: fall back to listing (the receiver sees it closed).
        });
    } else {
        drop(changed_tx);
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = String::new();
    let mut streaming = streaming;
    loop {
        let tasks = status_tasks(client, &args).await?;
        let table = status_table(&tasks, chrono::Utc::now()).to_string();
        if table != shown {
            if terminal {
                // Clear the screen and draw from the top, as `watch` does.
                print!("\x1b[2J\x1b[H");
            } else if !shown.is_empty() {
                println!();
            }
            println!("{table}");
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
            shown = table;
        }
        if streaming {
            match tokio::time::timeout(WATCH_REFRESH, changed.recv()).await {
                Ok(Some(())) => while changed.try_recv().is_ok() {},
                Ok(None) => streaming = false,
                Err(_) => {}
            }
        } else {
            actix_web::rt::time::sleep(WATCH_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_from_pieces_of_any_size() {
        let stream = b": keep-alive\nid: 7\nevent: task\ndata: {\"index\":7}\n\nid: 8\r\nevent: reset\r\ndata: {}\r\n\r\n";
        for piece in [1, 3, 10, stream.len()] {
            let mut parser = SseParser::default();
            let events: Vec<SseEvent> = stream.chunks(piece).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(
                events,
                [
                    SseEvent {
                        id: Some("7".into()),
                        event: "task".into(),
                        data: "{\"index\":7}".into()
                    },
                    SseEvent {
                        id: Some("8".into()),
                        event: "reset".into(),
                        data: "{}".into()
                    }
                ],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn an_event_line_says_when_what_and_which() {
        let event = SseEvent {
            id: Some("3".into()),
            event: "task".into(),
            data: r#"{"index":3,"time":"2026-11-27T10:00:00Z","type":"task","action":"updated","object":{"id":"abc","name":"web","state":"Running"}}"#.into(),
        };
        assert_eq!(
            event_line(&event),
            "2026-11-27T10:00:00Z task updated id=abc name=web state=Running"
        );
    }

    #[test]
    fn filters_become_the_query() {
        let args = EventsArgs {
            task: None,
            node: Some("w1".into()),
            kind: Some("node".into()),
            service: None,
            since: None,
            tail: Some(5),
            output: Output::Table,
        };
        assert_eq!(
            events_path(&args, Some(42)).as_deref(),
            Ok("/events?node=w1&type=node&since=42"),
            "a reconnect continues after the last event seen, not from a tail"
        );
        assert_eq!(
            events_path(&args, None).as_deref(),
            Ok("/events?node=w1&type=node&tail=5")
        );
        let bad = EventsArgs {
            task: Some("not-an-id".into()),
            ..args
        };
        assert!(events_path(&bad, None).is_err());
    }
}
