//! Retention: finished tasks are kept for a while, then collected, leaving a tombstone that
//! keeps their id reserved (ARCHITECTURE.md §12). Also the counts of tasks by state, kept as
//! records change rather than counted on demand.
//!
//! A task is *final* when nothing more will happen to it by itself: Completed, or Failed with
//! no restart left. Final tasks sit in an index ordered by when they finished; every
//! [`Config::collect_interval`] the oldest are collected, at most [`Config::collect_batch`] a
//! step (another step follows at once while more are due), when they finished more than
//! [`Config::retention`] ago or more than [`Config::retention_count`] final tasks are kept.
//! A task a worker still runs a copy of waits until the copy is gone; a task with a write
//! under way waits until it is written.

use super::*;

/// Wait before the next collection step while more is due: long enough to let the inputs
/// queued behind a step through.
const COLLECT_AGAIN: Duration = Duration::from_millis(5);

impl Core {
    /// Tombstones read from the store at start-up, oldest first. Those past their life are
    /// dropped (and deleted by the next write).
    pub fn restore_tombstones(&mut self, now: Now, mut tombs: Vec<Tombstone>) {
        tombs.sort_by_key(|t| t.collected_at);
        for t in tombs {
            if self.tasks.contains_key(&t.id) {
                // The collection was not written in full: the record is back, and is collected
                // again in its time.
                self.expired.push(t.id);
                continue;
            }
            self.tomb_order.push_back(t.id);
            self.tombstones.insert(t.id, t);
        }
        self.expire_tombstones(now, usize::MAX);
    }

    /// The tombstone of a collected task.
    pub fn collected(&self, id: Uuid) -> Option<&Tombstone> {
        self.tombstones.get(&id)
    }

    /// How many tasks are in each state, indexed by [`State::index`].
    pub fn counts(&self) -> [usize; State::COUNT] {
        self.counts
    }

    /// How many collected tasks keep their ids reserved.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// A new entry: count it.
    pub(super) fn count_in(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        e.counted = e.task.state;
        self.counts[e.counted.index()] += 1;
        self.index_ended(id);
    }

    /// An entry about to leave: uncount it and take it out of the index.
    pub(super) fn count_out(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        self.counts[e.counted.index()] -= 1;
        if let Some(at) = e.ended.take() {
            self.ended.remove(&(at, id));
        }
    }

    /// The record changed: keep its count and its place in the index of final tasks in step.
    pub(super) fn recount(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.counted != e.task.state {
            self.counts[e.counted.index()] -= 1;
            e.counted = e.task.state;
            self.counts[e.counted.index()] += 1;
        }
        self.index_ended(id);
    }

    fn index_ended(&mut self, id: Uuid) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = ended_key(&e.task);
        if key != e.ended {
            if let Some(old) = e.ended.take() {
                self.ended.remove(&(old, id));
            }
            if let Some(at) = key {
                self.ended.insert((at, id));
            }
            e.ended = key;
        }
    }

    /// A collection step: collect what is due, drop tombstones past their life.
    pub(super) fn collect(&mut self, now: Now) {
        let batch = self.config.collect_batch.max(1);
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        let mut done = 0;
        let mut blocked = 0;
        let mut more = false;
        // Oldest first; skip (and keep) those that cannot go yet.
        let candidates: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> =
            self.ended.iter().take(batch * 2).copied().collect();
        for (finished, id) in candidates {
            let over_count = self.ended.len() > self.config.retention_count;
            let expired = now.wall.signed_duration_since(finished) >= retention;
            if !over_count && !expired {
                break;
            }
            if done == batch {
                more = true;
                break;
            }
            if self.collectable(id) {
                self.collect_one(now, id, finished);
                done += 1;
            } else {
                blocked += 1;
            }
        }
        if done > 0 {
            debug!(
                "retention: collected {done} finished task(s); {} kept, {blocked} waiting for their copies to end",
                self.ended.len()
            );
        }
        more |= self.expire_tombstones(now, batch);
        let next = if more {
            COLLECT_AGAIN
        } else {
            self.config.collect_interval
        };
        self.timers.arm(now.mono + next, Timer::Collect);
    }

    /// Whether the task can go now: no copy still runs anywhere, nothing of it is unwritten
    /// or under way.
    fn collectable(&self, id: Uuid) -> bool {
        let Some(e) = self.tasks.get(&id) else {
            return false;
        };
        e.acked
            && !e.dirty
            && e.node.is_none()
            && e.placing == Placing::No
            && e.copies.iter().all(|(_, s)| !s.state.is_active())
            && e.copies.iter().all(|(n, _)| {
                self.nodes[*n]
                    .calls
                    .range((id, 0, CallKind::Start)..=(id, u32::MAX, CallKind::Stop))
                    .all(|(_, c)| *c != Call::InFlight)
            })
    }

    fn collect_one(&mut self, now: Now, id: Uuid, finished: chrono::DateTime<chrono::Utc>) {
        self.count_out(id);
        let Some(e) = self.tasks.remove(&id) else {
            return;
        };
        self.order.remove(id, e.key);
        self.forget_service_task(&e.task);
        for (nid, _) in &e.copies {
            let node = &mut self.nodes[*nid];
            node.seen.remove(&id);
            let keys: Vec<_> = node
                .calls
                .range((id, 0, CallKind::Start)..=(id, u32::MAX, CallKind::Stop))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                node.calls.remove(&k);
            }
        }
        if e.watched {
            self.effects.push(Effect::Unwatch(id));
        }
        let tomb = Tombstone {
            id,
            state: e.task.state,
            finished_at: finished,
            collected_at: now.wall,
        };
        self.collected.push((e.key, tomb.clone()));
        self.tomb_order.push_back(id);
        self.tombstones.insert(id, tomb);
    }

    /// Drop up to `batch` tombstones past their life or beyond the most kept; true when more
    /// are due.
    fn expire_tombstones(&mut self, now: Now, batch: usize) -> bool {
        let life =
            chrono::Duration::from_std(self.config.tombstone_life).unwrap_or(chrono::Duration::MAX);
        let mut dropped = 0;
        while let Some(&id) = self.tomb_order.front() {
            let Some(tomb) = self.tombstones.get(&id) else {
                self.tomb_order.pop_front();
                continue;
            };
            let over = self.tombstones.len() > self.config.tombstone_count;
            if !over && now.wall.signed_duration_since(tomb.collected_at) < life {
                return false;
            }
            if dropped == batch {
                return true;
            }
            self.tomb_order.pop_front();
            self.tombstones.remove(&id);
            self.expired.push(id);
            dropped += 1;
        }
        false
    }
}

/// Nothing more happens to the task by itself: Completed, or Failed with no restart left.
pub fn is_final(task: &Task) -> bool {
    match task.state {
        State::Completed => true,
        State::Failed => {
            task.desired == Goal::Stopped
                || match task.restart_policy {
                    RestartPolicy::Never => true,
                    RestartPolicy::OnFailure | RestartPolicy::Always => {
                        task.restart_count >= task.max_restarts
                    }
                }
        }
        _ => false,
    }
}

/// A task's key in the index of final tasks: when it finished (its creation, if it never ran).
pub(super) fn ended_key(task: &Task) -> Option<chrono::DateTime<chrono::Utc>> {
    is_final(task).then(|| task.finish_time.unwrap_or(task.created_at))
}
