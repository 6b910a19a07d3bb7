//! The EventHub actor: the manager's event stream (`GET /events`, ARCHITECTURE.md §14).
//!
//! The Manager hands it what each step committed, once the commit is durable ([`Publish`]):
//! the step's [`Writes`] themselves (moved, never copied or serialized on the Manager's
//! thread) and the few changes that are no record (a node Ready or Down, a service's view).
//! The hub runs on a thread of its own; it numbers each change with the next index, keeps the
//! last `capacity` of them in a [`Ring`], and sends each to the subscribers whose [`Filter`]
//! takes it, serialized once, only when someone listens.
//!
//! Indexes grow for the life of the process and start above the wall clock's microseconds at
//! its start, so an index from an earlier run is below every index of this one. A subscriber
//! that asks for events after an index the ring no longer holds (or one from another run) gets
//! a `reset` first: it must list again, for it missed something.
//!
//! A subscriber is a bounded channel. One that does not keep up is dropped (its stream ends)
//! rather than ever slowing the hub; it reconnects with `since` and is replayed what it missed.
//! The hub owns the ring and the subscribers and touches nothing else.

use std::collections::VecDeque;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::actors::manager::NodeRecord;
use crate::actors::manager::core::{Tombstone, Writes};
use crate::service::ServiceView;
use crate::task::{Attempt, Task};

/// Events kept for replay unless told otherwise (`--event-buffer`).
pub const DEFAULT_EVENT_BUFFER: usize = 100_000;
/// Frames queued for one subscriber before it counts as too slow and is dropped. A step after
/// a burst of submissions writes thousands of records at once, so this is generous; queued
/// frames are the only memory it takes.
pub const SUBSCRIBER_QUEUE: usize = 65_536;

/// The kinds of object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Task,
    Service,
    Node,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Task, Topic::Service, Topic::Node];

    /// Its name in the stream (`event:` and `type`) and in `?type=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Task => "task",
            Topic::Service => "service",
            Topic::Node => "node",
        }
    }

    pub fn parse(raw: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What changed, as the hub keeps it: the committed record itself, serialized only when sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A task record was written; `created` when it was its first.
    Task { task: Box<Task>, created: bool },
    /// A finished task was collected: its record went, this tombstone stays.
    Collected(Tombstone),
    /// A service record was written; its view as the manager had it then.
    Service {
        view: Box<ServiceView>,
        created: bool,
    },
    /// A service record was removed.
    ServiceRemoved(String),
    /// A node's record was written (its address, labels, availability).
    Node { name: String, record: NodeRecord },
    /// A node was forgotten.
    NodeForgotten(String),
    /// A node takes placements (`ready`), or no longer does (Down, or its name refused).
    NodeStatus { name: String, ready: bool },
}

impl Change {
    pub fn topic(&self) -> Topic {
        match self {
            Change::Task { .. } | Change::Collected(_) => Topic::Task,
            Change::Service { .. } | Change::ServiceRemoved(_) => Topic::Service,
            Change::Node { .. } | Change::NodeForgotten(_) | Change::NodeStatus { .. } => {
                Topic::Node
            }
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Change::Task { created: true, .. } | Change::Service { created: true, .. } => "created",
            Change::Task { .. } => "updated",
            Change::Collected(_) => "collected",
            Change::Service { .. } | Change::Node { .. } => "updated",
            Change::ServiceRemoved(_) | Change::NodeForgotten(_) => "deleted",
            Change::NodeStatus { ready: true, .. } => "ready",
            Change::NodeStatus { ready: false, .. } => "down",
        }
    }

    fn task_id(&self) -> Option<Uuid> {
        match self {
            Change::Task { task, .. } => Some(task.id),
            Change::Collected(t) => Some(t.id),
            _ => None,
        }
    }

    /// The service or node it names.
    fn name(&self) -> Option<&str> {
        match self {
            Change::Service { view, .. } => Some(&view.name),
            Change::ServiceRemoved(name)
            | Change::Node { name, .. }
            | Change::NodeForgotten(name)
            | Change::NodeStatus { name, .. } => Some(name),
            Change::Task { .. } | Change::Collected(_) => None,
        }
    }

    /// The node it concerns: a node's name, or the worker a task is placed on.
    fn node(&self) -> Option<&str> {
        match self {
            Change::Task { task, .. } => task.worker.as_deref(),
            _ if self.topic() == Topic::Node => self.name(),
            _ => None,
        }
    }

    /// The service it concerns: a service's name, or the service a task belongs to.
    fn service(&self) -> Option<&str> {
        match self {
            Change::Task { task, .. } => task.service.as_deref(),
            _ if self.topic() == Topic::Service => self.name(),
            _ => None,
        }
    }
}

/// A numbered change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub index: u64,
    pub time: DateTime<Utc>,
    pub change: Change,
}

/// The `object` of an event on the wire.
#[derive(Serialize)]
#[serde(untagged)]
enum Object<'a> {
    Task(&'a Task),
    Collected(&'a Tombstone),
    Service(&'a ServiceView),
    Node {
        name: &'a str,
        #[serde(flatten)]
        record: &'a NodeRecord,
    },
    Status {
        name: &'a str,
        status: crate::node::NodeStatus,
    },
    Name {
        name: &'a str,
    },
}

/// An event's `data:` JSON.
#[derive(Serialize)]
struct Wire<'a> {
    index: u64,
    time: &'a DateTime<Utc>,
    #[serde(rename = "type")]
    topic: &'static str,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    object: Object<'a>,
}

impl Event {
    /// The event's `data:` JSON: `{index, time, type, action, id | name, object}`.
    pub fn to_json(&self) -> String {
        let object = match &self.change {
            Change::Task { task, .. } => Object::Task(task),
            Change::Collected(t) => Object::Collected(t),
            Change::Service { view, .. } => Object::Service(view),
            Change::Node { name, record } => Object::Node { name, record },
            Change::NodeStatus { name, ready } => Object::Status {
                name,
                status: if *ready {
                    crate::node::NodeStatus::Ready
                } else {
                    crate::node::NodeStatus::Down
                },
            },
            Change::ServiceRemoved(name) | Change::NodeForgotten(name) => Object::Name { name },
        };
        let wire = Wire {
            index: self.index,
            time: &self.time,
            topic: self.change.topic().as_str(),
            action: self.change.action(),
            id: self.change.task_id(),
            name: self.change.name(),
            object,
        };
        // Records that the store could encode always serialize; should one ever not, the
        // client still gets the event's index and kind.
        serde_json::to_string(&wire).unwrap_or_else(|e| {
            serde_json::json!({
                "index": self.index,
                "time": self.time,
                "type": wire.topic,
                "action": wire.action,
                "object": {"error": format!("cannot be shown: {e}")},
            })
            .to_string()
        })
    }

    /// The event as one server-sent event: `id:`, `event:` and `data:` lines.
    pub fn frame(&self) -> Bytes {
        frame(self.index, self.change.topic().as_str(), &self.to_json())
    }
}

fn frame(id: u64, event: &str, data: &str) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}

/// Which events a subscriber wants; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The types wanted; none given: all of them.
    pub topics: Vec<Topic>,
    /// Events of this task only.
    pub task: Option<Uuid>,
    /// Events of this node, and of tasks placed on it.
    pub node: Option<String>,
    /// Events of this service, and of its tasks.
    pub service: Option<String>,
}

impl Filter {
    pub fn matches(&self, change: &Change) -> bool {
        let topics = self.topics.iter().fold(0u8, |m, t| m | t.bit());
        (topics == 0 || topics & change.topic().bit() != 0)
            && self.task.is_none_or(|id| change.task_id() == Some(id))
            && self
                .node
                .as_deref()
                .is_none_or(|n| change.node() == Some(n))
            && self
                .service
                .as_deref()
                .is_none_or(|s| change.service() == Some(s))
    }
}

/// What a subscriber asking for the events after `since` gets first.
#[derive(Debug, PartialEq)]
pub enum Replay<'a> {
    /// The retained events after `since`, oldest first.
    Events(Vec<&'a Event>),
    /// Events after `since` are gone (or `since` is from another run): list again.
    Reset {
        /// The oldest index still held, if any.
        oldest: Option<u64>,
        /// The newest index given out (the start of this run's numbering if none).
        latest: u64,
    },
}

/// Most bytes the retained events may take, whatever their count: a burst of tasks with large
/// specs (long commands, many variables) must not hold gigabytes. About 64 MiB.
pub const MAX_RING_BYTES: usize = 64 << 20;

/// About what an event holds in memory: the event itself and the text of its object.
fn event_bytes(change: &Change) -> usize {
    let object = match change {
        Change::Task { task, .. } => task_bytes(task),
        // A view holds its service's template; a few of these are ever retained at once.
        Change::Service { view, .. } => {
            serde_json::to_string(view.as_ref()).map_or(1024, |json| json.len())
        }
        Change::Node { record, .. } => {
            256 + record
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
        }
        Change::Collected(_) | Change::ServiceRemoved(_) | Change::NodeForgotten(_) => 128,
        Change::NodeStatus { .. } => 64,
    };
    object + std::mem::size_of::<Event>()
}

/// About what a task holds in memory beyond its fixed part: its text.
fn task_bytes(t: &Task) -> usize {
    let list = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>()
    };
    std::mem::size_of::<Task>()
        + t.name.len()
        + t.image.len()
        + list(&t.cmd)
        + list(&t.env)
        + list(&t.exposed_ports)
        + map(&t.port_bindings)
        + map(&t.host_ports)
        + t.error.as_ref().map_or(0, String::len)
        + t.health_check.as_ref().map_or(0, String::len)
        + t.worker.as_ref().map_or(0, String::len)
        + t.container_id.as_ref().map_or(0, String::len)
        + t.service.as_ref().map_or(0, String::len)
        + t.volumes
            .iter()
            .map(|v| v.source.len() + v.target.len() + 56)
            .sum::<usize>()
        + t.constraints.len() * 72
        + t.attempts
            .iter()
            .map(|a| {
                std::mem::size_of::<Attempt>()
                    + a.worker.as_ref().map_or(0, String::len)
                    + a.container_id.as_ref().map_or(0, String::len)
                    + a.error.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
}

/// The last `capacity` events (and at most [`MAX_RING_BYTES`] of them), numbered from
/// `start + 1` on.
#[derive(Debug)]
pub struct Ring {
    events: VecDeque<(Event, usize)>,
    capacity: usize,
    /// Bytes the retained events hold, about.
    bytes: usize,
    max_bytes: usize,
    /// Every index up to this one is no longer held, or was never given out in this run.
    floor: u64,
    next: u64,
}

impl Ring {
    /// An empty ring whose first event is numbered `start + 1`.
    pub fn new(capacity: usize, start: u64) -> Ring {
        Ring::with_max_bytes(capacity, start, MAX_RING_BYTES)
    }

    /// [`Ring::new`] with another bound on the bytes held.
    pub fn with_max_bytes(capacity: usize, start: u64, max_bytes: usize) -> Ring {
        Ring {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
            floor: start,
            next: start.saturating_add(1),
        }
    }

    /// Number the change, keep it (dropping the oldest beyond the capacity or the bytes) and
    /// return it.
    pub fn push(&mut self, time: DateTime<Utc>, change: Change) -> &Event {
        let bytes = event_bytes(&change);
        while (self.events.len() >= self.capacity
            || (!self.events.is_empty() && self.bytes + bytes > self.max_bytes))
            && let Some((old, held)) = self.events.pop_front()
        {
            self.floor = old.index;
            self.bytes -= held;
        }
        let index = self.next;
        self.next = self.next.saturating_add(1);
        self.bytes += bytes;
        self.events.push_back((
            Event {
                index,
                time,
                change,
            },
            bytes,
        ));
        let last = self.events.len() - 1;
        &self.events[last].0
    }

    /// Bytes the retained events hold, about.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest index given out, or the start of the numbering.
    pub fn latest(&self) -> u64 {
        self.next - 1
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The last `n` retained events that `filter` takes, oldest first.
    pub fn last(&self, n: usize, filter: &Filter) -> Vec<&Event> {
        let mut last: Vec<&Event> = self
            .events
            .iter()
            .rev()
            .map(|(e, _)| e)
            .filter(|e| filter.matches(&e.change))
            .take(n)
            .collect();
        last.reverse();
        last
    }

    /// What follows `since` that `filter` takes. `since = 0` means everything held: a client
    /// that never saw an index misses nothing it could be told.
    pub fn since(&self, since: u64, filter: &Filter) -> Replay<'_> {
        if since != 0 && (since < self.floor || since > self.latest()) {
            return Replay::Reset {
                oldest: self.events.front().map(|(e, _)| e.index),
                latest: self.latest(),
            };
        }
        // Indexes are consecutive: the first event after `since` is at a known position.
        let skip = usize::try_from(since.saturating_sub(self.floor)).unwrap_or(usize::MAX);
        Replay::Events(
            self.events
                .iter()
                .skip(if since == 0 { 0 } else { skip })
                .map(|(e, _)| e)
                .filter(|e| filter.matches(&e.change))
                .collect(),
        )
    }
}

/// The start of this run's numbering: the wall clock in microseconds, above every index an
/// earlier run could have given out unless it numbered a million events a second.
pub fn start_index() -> u64 {
    u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0)
}

/// The `reset` frame: `{index, time, type: "reset", action: "resync", object}`.
pub fn reset_frame(since: u64, oldest: Option<u64>, latest: u64) -> Bytes {
    let data = serde_json::json!({
        "index": latest,
        "time": Utc::now(),
        "type": "reset",
        "action": "resync",
        "object": {
            "since": since,
            "oldest": oldest,
            "latest": latest,
            "reason": "events after this index are no longer retained, or it is from an earlier run of the manager; list tasks, services and nodes again, then follow this stream",
        },
    });
    frame(latest, "reset", &data.to_string())
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
}

/// The event hub: the ring and the subscribers.
pub struct EventHub {
    ring: Ring,
    subscribers: Vec<Subscriber>,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        EventHub {
            ring: Ring::new(capacity, start_index()),
            subscribers: Vec::new(),
        }
    }

    fn publish(&mut self, time: DateTime<Utc>, change: Change) {
        let event = self.ring.push(time, change);
        if self.subscribers.is_empty() {
            return;
        }
        let mut frame: Option<Bytes> = None;
        self.subscribers.retain(|s| {
            if !s.filter.matches(&event.change) {
                return !s.tx.is_closed();
            }
            let bytes = frame.get_or_insert_with(|| event.frame()).clone();
            match s.tx.try_send(bytes) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    log::info!(
                        "events: a subscriber fell {SUBSCRIBER_QUEUE} events behind and was dropped; it may reconnect with since={}",
                        event.index - 1
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Publications come with `do_send`, which no mailbox capacity holds back: a burst after a
/// group commit is never refused.
impl Actor for EventHub {
    type Context = Context<Self>;
}

/// What one durable step changed: its records, and the changes that are no record.
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct Publish {
    pub writes: Option<Writes>,
    /// Services' views (for the services in `writes`, in that order) and node status changes.
    pub changes: Vec<Change>,
}

impl Handler<Publish> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let time = Utc::now();
        let mut forgotten: Vec<String> = Vec::new();
        if let Some(writes) = msg.writes {
            // Only a step that created tasks pays for the look-up.
            let created: std::collections::HashSet<Uuid, foldhash::fast::RandomState> =
                writes.created.into_iter().collect();
            for (_, task) in writes.tasks {
                let created = !created.is_empty() && created.contains(&task.id);
                let task = Box::new(task);
                self.publish(time, Change::Task { task, created });
            }
            for (_, tomb) in writes.collected {
                self.publish(time, Change::Collected(tomb));
            }
            for name in writes.services_removed {
                self.publish(time, Change::ServiceRemoved(name));
            }
            for (name, record) in writes.nodes {
                self.publish(time, Change::Node { name, record });
            }
            for name in writes.forgotten {
                self.publish(time, Change::NodeForgotten(name.clone()));
                forgotten.push(name);
            }
        }
        for change in msg.changes {
            // A forgotten node is no longer Ready either; its `deleted` says it all.
            if let Change::NodeStatus { name, .. } = &change
                && forgotten.contains(name)
            {
                continue;
            }
            self.publish(time, change);
        }
    }
}

/// Subscribe: what is retained after `since`, or else the last `tail` events (nothing without
/// either), then every new event that `filter` takes, through the receiver.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub since: Option<u64>,
    pub tail: Option<usize>,
    pub filter: Filter,
}

/// The frames to send first, and the channel the new ones come through.
pub struct Subscription {
    pub replay: Vec<Bytes>,
    pub rx: mpsc::Receiver<Bytes>,
}

impl Handler<Subscribe> for EventHub {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let replay = match msg.since {
            None => self
                .ring
                .last(msg.tail.unwrap_or(0), &msg.filter)
                .into_iter()
                .map(Event::frame)
                .collect(),
            Some(since) => match self.ring.since(since, &msg.filter) {
                Replay::Events(events) => events.into_iter().map(Event::frame).collect(),
                Replay::Reset { oldest, latest } => vec![reset_frame(since, oldest, latest)],
            },
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subscribers.push(Subscriber {
            filter: msg.filter,
            tx,
        });
        MessageResult(Subscription { replay, rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(worker: Option<&str>, service: Option<&str>) -> Task {
        let mut t = Task::new("alpine");
        t.worker = worker.map(str::to_string);
        t.service = service.map(str::to_string);
        t
    }

    fn status(name: &str) -> Change {
        Change::NodeStatus {
            name: name.into(),
            ready: true,
        }
    }

    fn indexes(replay: Replay<'_>) -> Vec<u64> {
        match replay {
            Replay::Events(events) => events.iter().map(|e| e.index).collect(),
            Replay::Reset { .. } => panic!("expected events, got {replay:?}"),
        }
    }

    #[test]
    fn ring_numbers_events_after_its_start_and_replays_what_follows_an_index() {
        let mut ring = Ring::new(10, 1000);
        for _ in 0..5 {
            ring.push(Utc::now(), status("a"));
        }
        assert_eq!(ring.latest(), 1005);
        let all = Filter::default();
        assert_eq!(indexes(ring.since(1002, &all)), vec![1003, 1004, 1005]);
        assert_eq!(indexes(ring.since(1005, &all)), Vec::<u64>::new());
        assert_eq!(indexes(ring.since(1000, &all)).len(), 5);
        assert_eq!(indexes(ring.since(0, &all)).len(), 5);
    }

    #[test]
    fn ring_keeps_its_capacity_and_resets_a_client_that_missed_dropped_events() {
        let mut ring = Ring::new(3, 0);
        for _ in 0..5 {
            ring.push(Utc::now(), status("a"));
        }
        assert_eq!(ring.len(), 3);
        let all = Filter::default();
        // Events 1 and 2 are gone: a client that saw only 1 missed 2.
        assert_eq!(
            ring.since(1, &all),
            Replay::Reset {
                oldest: Some(3),
                latest: 5
            }
        );
        // One that saw 2 missed nothing that was dropped.
        assert_eq!(indexes(ring.since(2, &all)), vec![3, 4, 5]);
        // `since=0` is everything held, no reset.
        assert_eq!(indexes(ring.since(0, &all)), vec![3, 4, 5]);
    }

    #[test]
    fn ring_keeps_at_most_its_bytes_whatever_the_count() {
        let big = || {
            let mut t = task(Some("a"), None);
            t.env = vec![format!("BLOB={}", "x".repeat(10_000))];
            Change::Task {
                task: Box::new(t),
                created: false,
            }
        };
        let mut ring = Ring::with_max_bytes(1_000, 0, 100_000);
        for _ in 0..50 {
            ring.push(Utc::now(), big());
        }
        assert!(ring.bytes() <= 100_000, "{} bytes held", ring.bytes());
        assert!((5..10).contains(&ring.len()), "{} events held", ring.len());
        // What was dropped for room resets a client that had not seen it.
        let all = Filter::default();
        assert!(matches!(ring.since(1, &all), Replay::Reset { .. }));
        assert_eq!(indexes(ring.since(49, &all)), vec![50]);
        // One event larger than the whole bound is still held, alone.
        let mut tiny = Ring::with_max_bytes(1_000, 0, 10);
        tiny.push(Utc::now(), big());
        tiny.push(Utc::now(), big());
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn an_index_from_an_earlier_run_or_the_future_gets_a_reset() {
        let mut ring = Ring::new(10, 5000);
        ring.push(Utc::now(), status("a"));
        let all = Filter::default();
        assert!(matches!(ring.since(4000, &all), Replay::Reset { .. }));
        assert!(matches!(ring.since(9000, &all), Replay::Reset { .. }));
    }

    #[test]
    fn filters_take_types_tasks_nodes_and_services() {
        let on_a = Change::Task {
            task: Box::new(task(Some("a"), Some("web"))),
            created: false,
        };
        let id = on_a.task_id();
        let elsewhere = Change::Task {
            task: Box::new(task(Some("b"), None)),
            created: false,
        };
        let node_a = status("a");
        let removed = Change::ServiceRemoved("web".into());

        let f = |topics: &[Topic], task, node: Option<&str>, service: Option<&str>| Filter {
            topics: topics.to_vec(),
            task,
            node: node.map(str::to_string),
            service: service.map(str::to_string),
        };
        let all = Filter::default();
        assert!(
            [&on_a, &elsewhere, &node_a, &removed]
                .iter()
                .all(|c| all.matches(c))
        );

        let nodes = f(&[Topic::Node], None, None, None);
        assert!(nodes.matches(&node_a) && !nodes.matches(&on_a) && !nodes.matches(&removed));
        let tasks_services = f(&[Topic::Task, Topic::Service], None, None, None);
        assert!(tasks_services.matches(&on_a) && tasks_services.matches(&removed));
        assert!(!tasks_services.matches(&node_a));

        let one = f(&[], id, None, None);
        assert!(one.matches(&on_a) && !one.matches(&elsewhere) && !one.matches(&node_a));

        let on_node = f(&[], None, Some("a"), None);
        assert!(on_node.matches(&on_a) && on_node.matches(&node_a));
        assert!(!on_node.matches(&elsewhere) && !on_node.matches(&removed));

        let web = f(&[], None, None, Some("web"));
        assert!(web.matches(&on_a) && web.matches(&removed));
        assert!(!web.matches(&elsewhere) && !web.matches(&node_a));

        // Conditions add up.
        assert!(!f(&[Topic::Node], None, None, Some("web")).matches(&on_a));
    }

    #[test]
    fn an_event_is_one_server_sent_event_with_its_index_type_and_json() {
        let mut ring = Ring::new(4, 41);
        let t = task(Some("a"), None);
        let id = t.id;
        let event = ring
            .push(
                Utc::now(),
                Change::Task {
                    task: Box::new(t),
                    created: false,
                },
            )
            .clone();
        let frame = String::from_utf8(event.frame().to_vec()).expect("utf-8");
        let mut lines = frame.lines();
        assert_eq!(lines.next(), Some("id: 42"));
        assert_eq!(lines.next(), Some("event: task"));
        let data = lines
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .expect("a data line");
        let json: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(json["index"], 42);
        assert_eq!(json["type"], "task");
        assert_eq!(json["action"], "updated");
        assert_eq!(json["id"], id.to_string());
        assert_eq!(json["object"]["worker"], "a");
        assert!(json["time"].as_str().is_some_and(|t| t.contains('T')));
        assert!(frame.ends_with("\n\n"));
    }

    #[actix_rt::test]
    async fn a_step_s_records_become_events_and_a_forgotten_node_is_deleted_not_down() {
        let hub = EventHub::new(100).start();
        let mut writes = Writes::default();
        let created = task(None, None);
        writes.created.push(created.id);
        writes.tasks.push((1, created));
        writes.tasks.push((2, task(Some("a"), None)));
        writes.forgotten.push("b".into());
        hub.do_send(Publish {
            writes: Some(writes),
            changes: vec![
                Change::NodeStatus {
                    name: "b".into(),
                    ready: false,
                },
                status("a"),
            ],
        });
        let sub = hub
            .send(Subscribe {
                since: Some(0),
                tail: None,
                filter: Filter::default(),
            })
            .await
            .expect("the hub answers");
        let kinds: Vec<(String, String)> = sub
            .replay
            .iter()
            .map(|frame| {
                let text = String::from_utf8_lossy(frame);
                let data = text
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("a data line");
                let json: serde_json::Value = serde_json::from_str(data).expect("JSON");
                (
                    json["type"].as_str().unwrap_or_default().to_string(),
                    json["action"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let expected = [
            ("task", "created"),
            ("task", "updated"),
            ("node", "deleted"),
            ("node", "ready"),
        ];
        assert_eq!(
            kinds,
            expected
                .map(|(t, a)| (t.to_string(), a.to_string()))
                .to_vec()
        );
    }

    #[actix_rt::test]
    async fn a_subscriber_that_falls_behind_is_dropped_not_waited_for() {
        let mut hub = EventHub::new(10);
        let (tx, mut rx) = mpsc::channel(2);
        hub.subscribers.push(Subscriber {
            filter: Filter::default(),
            tx,
        });
        for _ in 0..3 {
            hub.publish(Utc::now(), status("a"));
        }
        assert!(hub.subscribers.is_empty());
        // What it was sent before it fell behind, then the end of its stream.
        assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
        assert_eq!(hub.ring.len(), 3);
    }
}
