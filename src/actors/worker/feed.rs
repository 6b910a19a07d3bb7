//! The worker's change feed, pure: a sequence number per change, and what changed after any
//! point. The manager's proxy long-polls it (`GET /tasks?since=SEQ&wait=S&instance=ID`); a
//! watcher whose `instance` is not this process's, or whose `since` is 0, gets everything the
//! worker has: a *full* report, which the manager takes as the whole truth about this worker.

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
    /// Every task the worker has (true), or those changed after `since` (false).
    #[serde(default)]
    pub full: bool,
    /// The latest record of each task, in the order of their last change.
    pub tasks: Vec<Task>,
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
            tasks,
        }
    }
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
}
