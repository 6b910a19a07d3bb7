//! The worker's change feed, pure: a sequence number per change, and what changed after any
//! point. The manager's proxy long-polls it (`GET /tasks?since=SEQ&wait=S&instance=ID`); a
//! watcher whose `instance` is not this process's, or whose `since` is 0, gets everything the
//! worker has: a *full* report, which the manager takes as the whole truth about this worker.
//!
//! A watcher that asks for pages (`limit`) gets at most a [`Page`] per answer, in the order of
//! the changes: the answer's `seq` is then the position of the last change it holds, and `more`
//! says the next read (from that `seq`) goes on. A full report read in pages is the first page,
//! marked `full`, and the ones that follow it until `more` is false; together they hold every
//! task the worker has (a task that changed meanwhile appears again, later), so any one answer
//! stays small however many tasks the worker has.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::Task;

/// An answer of the change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Changes {
    /// The worker's name, so every answer says who it comes from.
    #[serde(default)]
    pub name: String,
    /// The worker process the sequence belongs to.
    pub instance: Uuid,
    /// Pass this as `since` next time.
    pub seq: u64,
    /// Every task the worker has (true), or those changed after `since` (false). In pages, the
    /// first page of a full report, which the pages after it complete.
    #[serde(default)]
    pub full: bool,
    /// The answer stopped at its page's size: read again from `seq` at once for the rest.
    #[serde(default)]
    pub more: bool,
    /// The latest record of each task, in the order of their last change.
    pub tasks: Vec<Task>,
}

/// How much one answer may hold for a watcher that asks for pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub tasks: usize,
    /// Of tasks as JSON, counted by [`json_size_bound`] (never less than the real size); an
    /// answer holds at least one task whatever its size.
    pub bytes: usize,
}

/// Positions of the latest change of each task.
#[derive(Debug)]
pub struct Feed {
    instance: Uuid,
    seq: u64,
    /// seq → task id of its latest change, in order.
    changes: BTreeMap<u64, Uuid>,
    position: HashMap<Uuid, u64>,
}

impl Feed {
    pub fn new(instance: Uuid) -> Feed {
        Feed {
            instance,
            // Position 0 means "everything": a watcher that read everything continues from 1
            // and waits, even when there was nothing yet.
            seq: 1,
            changes: BTreeMap::new(),
            position: HashMap::new(),
        }
    }

    pub fn instance(&self) -> Uuid {
        self.instance
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The task changed: it moves to the end of the feed. Its new position.
    pub fn changed(&mut self, id: Uuid) -> u64 {
        self.seq += 1;
        if let Some(old) = self.position.insert(id, self.seq) {
            self.changes.remove(&old);
        }
        self.changes.insert(self.seq, id);
        self.seq
    }

    /// The task is gone from the worker (dropped): it leaves the feed. The sequence goes on.
    pub fn forget(&mut self, id: Uuid) {
        if let Some(old) = self.position.remove(&id) {
            self.changes.remove(&old);
        }
    }

    /// Where a watcher really starts: 0 (everything) for another process's sequence, one from
    /// the future, or 0 itself.
    pub fn start_of(&self, since: u64, instance: Option<Uuid>) -> u64 {
        match instance {
            Some(i) if i != self.instance => 0,
            _ if since > self.seq => 0,
            _ => since,
        }
    }

    /// The position a watcher says the manager has recorded, when it is one of this process's
    /// (another instance's, or one from the future, says nothing about this feed).
    pub fn acked(&self, acked: u64, instance: Option<Uuid>) -> Option<u64> {
        (instance == Some(self.instance) && acked <= self.seq).then_some(acked)
    }

    /// Whether a watcher starting at `since` (as [`Feed::start_of`] says) has something to read.
    pub fn has_news(&self, since: u64) -> bool {
        since == 0 || since < self.seq
    }

    /// The answer for a watcher starting at `since`, with each task's record from `lookup`.
    pub fn read<'a>(
        &self,
        name: &str,
        since: u64,
        lookup: impl Fn(Uuid) -> Option<&'a Task>,
    ) -> Changes {
        let tasks = self
            .changes
            .range(since + 1..)
            .filter_map(|(_, id)| lookup(*id).cloned())
            .collect();
        Changes {
            name: name.to_string(),
            instance: self.instance,
            seq: self.seq,
            full: since == 0,
            more: false,
            tasks,
        }
    }

    /// The same, at most `page`: when the page is full before the feed's end, `seq` is the
    /// position of its last change and `more` is set.
    pub fn read_page<'a>(
        &self,
        name: &str,
        since: u64,
        page: Page,
        lookup: impl Fn(Uuid) -> Option<&'a Task>,
    ) -> Changes {
        let mut tasks = Vec::new();
        let mut bytes = 0;
        let mut seq = self.seq;
        let mut more = false;
        for (&pos, id) in self.changes.range(since + 1..) {
            let Some(task) = lookup(*id) else {
                continue;
            };
            let size = json_size_bound(task);
            if !tasks.is_empty() && (tasks.len() >= page.tasks || bytes + size > page.bytes) {
                more = true;
                break;
            }
            tasks.push(task.clone());
            bytes += size;
            seq = pos;
        }
        Changes {
            name: name.to_string(),
            instance: self.instance,
            seq: if more { seq } else { self.seq },
            full: since == 0,
            more,
            tasks,
        }
    }
}

/// Room every task's JSON takes besides its text: the field names, quotes, commas and colons,
/// the id, the numbers at their widest and the three dates. A default task takes about 450.
const JSON_FRAME: usize = 1024;
/// Room an earlier attempt's JSON takes besides its text (a worker's tasks have none, but the
/// bound holds for any task): field names, numbers at their widest, three dates.
const JSON_ATTEMPT_FRAME: usize = 512;
/// The most bytes a string's own quotes, comma and colon add.
const JSON_PER_STRING: usize = 4;
/// JSON's widest escape of one byte of text (`\u001f`).
const JSON_WIDEST_ESCAPE: usize = 6;

/// A bound on the task's size as JSON, worked out from its text alone: serializing every task
/// of a page only to count its bytes took a tenth of a worker's time at scale. Never less than
/// the real size, so a page stays within its bytes; a page of tasks with little text (most) is
/// still cut by its number of tasks first.
pub fn json_size_bound(task: &Task) -> usize {
    let mut strings = 0;
    let mut text = 0;
    let mut add = |s: &str| {
        strings += 1;
        text += s.len();
    };
    add(&task.name);
    add(&task.image);
    task.cmd
        .iter()
        .chain(&task.env)
        .chain(&task.exposed_ports)
        .for_each(|s| add(s));
    for (k, v) in task.port_bindings.iter().chain(&task.host_ports) {
        add(k);
        add(v);
    }
    let history = task
        .attempts
        .iter()
        .flat_map(|a| [&a.worker, &a.container_id, &a.error]);
    for s in [
        &task.health_check,
        &task.worker,
        &task.container_id,
        &task.error,
    ]
    .into_iter()
    .chain(history)
    .flatten()
    {
        add(s);
    }
    JSON_FRAME
        + task.attempts.len() * JSON_ATTEMPT_FRAME
        + strings * JSON_PER_STRING
        + text * JSON_WIDEST_ESCAPE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_appears_once_at_its_latest_change() {
        let mut feed = Feed::new(Uuid::new_v4());
        let (a, b) = (Task::new("a"), Task::new("b"));
        feed.changed(a.id);
        feed.changed(b.id);
        feed.changed(a.id);
        let all = [a.clone(), b.clone()];
        let lookup = |id| all.iter().find(|t| t.id == id);
        let changes = feed.read("w", 0, lookup);
        assert!(changes.full);
        assert_eq!(
            changes.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![b.id, a.id]
        );
        let later = feed.read("w", 3, lookup);
        assert!(!later.full);
        assert_eq!(later.tasks.len(), 1);
        assert_eq!(later.seq, 4);
    }

    #[test]
    fn another_instance_or_a_future_position_starts_over() {
        let mut feed = Feed::new(Uuid::new_v4());
        feed.changed(Uuid::new_v4());
        assert_eq!(feed.start_of(2, Some(Uuid::new_v4())), 0);
        assert_eq!(feed.start_of(7, Some(feed.instance())), 0);
        assert_eq!(feed.start_of(2, Some(feed.instance())), 2);
        assert!(!feed.has_news(2));
        assert!(feed.has_news(0), "a full report is always news");
    }

    #[test]
    fn pages_cut_the_feed_and_together_hold_every_task() {
        let mut feed = Feed::new(Uuid::new_v4());
        let tasks: Vec<Task> = (0..7).map(|i| Task::new(format!("img{i}"))).collect();
        for t in &tasks {
            feed.changed(t.id);
        }
        let lookup = |id| tasks.iter().find(|t: &&Task| t.id == id);
        let page = Page {
            tasks: 3,
            bytes: usize::MAX,
        };
        let first = feed.read_page("w", 0, page, lookup);
        assert!(first.full && first.more);
        assert_eq!(first.tasks.len(), 3);
        assert_eq!(first.seq, 4, "the position of its last change");
        // The first task changes meanwhile: it shows again, in a later page.
        feed.changed(tasks[0].id);
        let mut seen: Vec<Uuid> = first.tasks.iter().map(|t| t.id).collect();
        let mut since = first.seq;
        let mut pages = 1;
        loop {
            let next = feed.read_page("w", since, page, lookup);
            assert!(!next.full);
            assert!(next.tasks.len() <= 3);
            seen.extend(next.tasks.iter().map(|t| t.id));
            since = next.seq;
            pages += 1;
            if !next.more {
                break;
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(since, feed.seq(), "the last page goes on from the head");
        assert_eq!(seen.len(), 8);
        for t in &tasks {
            assert!(seen.contains(&t.id));
        }
        assert!(!feed.has_news(since));
    }

    #[test]
    fn a_page_holds_at_least_one_task_and_stays_within_its_bytes() {
        let mut feed = Feed::new(Uuid::new_v4());
        let tasks: Vec<Task> = (0..4).map(|i| Task::new(format!("img{i}"))).collect();
        for t in &tasks {
            feed.changed(t.id);
        }
        let lookup = |id| tasks.iter().find(|t: &&Task| t.id == id);
        let one = json_size_bound(&tasks[0]);
        assert!(one > 50, "{one}");
        let tiny = Page {
            tasks: 100,
            bytes: 1,
        };
        let first = feed.read_page("w", 0, tiny, lookup);
        assert_eq!((first.tasks.len(), first.more), (1, true));
        let two = Page {
            tasks: 100,
            bytes: 2 * one + one / 2,
        };
        let page = feed.read_page("w", 0, two, lookup);
        assert_eq!((page.tasks.len(), page.more), (2, true));
    }

    #[test]
    fn a_forgotten_task_leaves_the_feed_and_acks_are_this_instance_s_only() {
        let mut feed = Feed::new(Uuid::new_v4());
        let (a, b) = (Task::new("a"), Task::new("b"));
        assert_eq!(feed.changed(a.id), 2);
        assert_eq!(feed.changed(b.id), 3);
        feed.forget(a.id);
        let all = [a.clone(), b.clone()];
        let changes = feed.read("w", 0, |id| all.iter().find(|t| t.id == id));
        assert_eq!(changes.tasks.len(), 1);
        assert_eq!(changes.tasks[0].id, b.id);
        let me = Some(feed.instance());
        assert_eq!(feed.acked(3, me), Some(3));
        assert_eq!(feed.acked(4, me), None, "from the future");
        assert_eq!(
            feed.acked(2, Some(Uuid::new_v4())),
            None,
            "another instance"
        );
        assert_eq!(feed.acked(2, None), None);
    }

    /// A task with every field at its widest, text made of the given strings.
    fn widest(text: &[String]) -> Task {
        let one = |i: usize| text.get(i % text.len().max(1)).cloned().unwrap_or_default();
        let mut task = Task::new(one(0));
        task.name = one(1);
        task.cmd = text.to_vec();
        task.env = text.to_vec();
        task.exposed_ports = text.to_vec();
        task.port_bindings = text.iter().map(|s| (s.clone(), one(2))).collect();
        task.host_ports = task.port_bindings.clone();
        task.health_check = Some(one(3));
        task.worker = Some(one(4));
        task.container_id = Some(one(5));
        task.error = Some(one(6));
        task.cpu = -1.234_567_890_123_456_7e-300;
        task.memory = u64::MAX;
        task.disk = u64::MAX;
        task.attempt = u32::MAX;
        task.max_restarts = u32::MAX;
        task.restart_count = u32::MAX;
        task.stop_timeout_s = u64::MAX;
        task.pids_limit = u64::MAX;
        task.exit_code = Some(i64::MIN);
        task.start_time = Some(task.created_at);
        task.finish_time = Some(task.created_at);
        let ended = crate::task::Attempt::of(&task, task.created_at).expect("an attempt");
        task.attempts = vec![ended; crate::task::MAX_ATTEMPTS_KEPT];
        task
    }

    #[test]
    fn the_json_size_bound_is_never_below_the_real_size() {
        let nasty = vec![
            String::new(),
            "\u{1f}\u{0}\"\\".repeat(10),
            "é✓🚀".repeat(5),
            "plain".into(),
        ];
        for task in [Task::new(""), widest(&[]), widest(&nasty)] {
            let real = serde_json::to_vec(&task).expect("a task serializes").len();
            assert!(
                json_size_bound(&task) >= real,
                "{} < {real}",
                json_size_bound(&task)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_json_size_bound_holds_for_any_text(text in proptest::collection::vec(".{0,40}", 0..6)) {
            let task = widest(&text);
            let real = serde_json::to_vec(&task).expect("a task serializes").len();
            proptest::prop_assert!(json_size_bound(&task) >= real);
        }
    }
}
