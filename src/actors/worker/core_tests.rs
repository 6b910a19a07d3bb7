//! Every rule of the worker's core, one test each.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;

const RETENTION: Duration = Duration::from_secs(3600);

struct Harness {
    core: Core,
    mono: Duration,
}

fn now_at(mono: Duration) -> Now {
    Now {
        mono,
        wall: Utc.timestamp_opt(1_800_000_000, 0).unwrap()
            + chrono::Duration::from_std(mono).unwrap(),
    }
}

fn task(attempt: u32) -> Task {
    let mut t = Task::new("img");
    t.attempt = attempt;
    t.stop_timeout_s = 2;
    t
}

fn status(t: &Task, attempt: u32, running: bool, exit: Option<i64>) -> ContainerStatus {
    ContainerStatus {
        container_id: format!("c-{}-{attempt}", t.id.simple()),
        task_id: t.id,
        attempt,
        image: t.image.clone(),
        running,
        exit_code: exit,
        oom_killed: false,
        error: None,
        host_ports: BTreeMap::new(),
        started_at: None,
        finished_at: None,
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::recover(Vec::new(), Vec::new())
    }

    fn recover(tasks: Vec<Task>, stops: Vec<(Uuid, Tombstone)>) -> Harness {
        Harness {
            core: Core::recover("w1".into(), RETENTION, now_at(Duration::ZERO), tasks, stops),
            mono: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        now_at(self.mono)
    }

    fn effects(&mut self) -> Vec<Effect> {
        self.core.take_effects()
    }

    fn advance(&mut self, d: Duration) {
        self.mono += d;
        let now = self.now();
        self.core.tick(now);
    }

    fn state(&self, id: Uuid) -> State {
        self.core.task(id).unwrap().state
    }

    /// Start attempt `attempt` of `t` and have its container run.
    fn running(&mut self, t: &Task) -> ContainerStatus {
        let now = self.now();
        self.core.start(now, t.clone()).unwrap();
        self.effects();
        let s = status(t, t.attempt, true, None);
        self.core.started(now, t.id, t.attempt, Ok(s.clone()));
        assert_eq!(self.state(t.id), State::Running);
        s
    }
}

fn stops_in(effects: &[Effect]) -> Vec<(u32, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stop {
                attempt, container, ..
            } => Some((*attempt, container.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_start_is_idempotent_by_attempt_and_an_older_one_is_refused() {
    let mut h = Harness::new();
    let t = task(2);
    let now = h.now();
    let (first, created) = h.core.start(now, t.clone()).unwrap();
    assert!(created);
    assert_eq!(first.state, State::Scheduled);
    assert!(matches!(h.effects()[..], [Effect::Run { .. }]));
    assert_eq!(
        h.core.take_writes().tasks.len(),
        1,
        "written before it is answered"
    );
    let (_, created) = h.core.start(now, t.clone()).unwrap();
    assert!(!created);
    assert!(h.effects().is_empty(), "never a second container");
    let mut older = t.clone();
    older.attempt = 1;
    assert!(matches!(
        h.core.start(now, older),
        Err(WorkerError::StaleAttempt { current: 2, .. })
    ));
}

#[test]
fn a_newer_attempt_replaces_the_older_container_first_and_fences_it() {
    let mut h = Harness::new();
    let t = task(1);
    let old = h.running(&t);
    let mut next = t.clone();
    next.attempt = 2;
    let now = h.now();
    h.core.start(now, next.clone()).unwrap();
    let effects = h.effects();
    let Some(Effect::Run { spec, replaces }) = effects.first() else {
        panic!("{effects:?}")
    };
    assert_eq!(spec.attempt, 2);
    assert_eq!(
        replaces.as_ref().map(|r| r.0.clone()),
        Some(old.container_id)
    );
    assert_eq!(h.core.tombstone(t.id), Some(1));
}

#[test]
fn a_stop_that_comes_before_its_start_is_remembered_and_the_start_refused() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    assert!(matches!(
        h.core.stop(now, t.id, Some(1)),
        Err(WorkerError::NotFound(_))
    ));
    let writes = h.core.take_writes();
    assert_eq!(
        writes.stops,
        vec![(
            t.id,
            Tombstone {
                attempt: 1,
                at: Some(now.wall)
            }
        )],
        "the tombstone is written, with when"
    );
    assert!(matches!(
        h.core.start(now, t.clone()),
        Err(WorkerError::Stopped { stopped: 1, .. })
    ));
    assert!(h.effects().is_empty());
    // It survives a restart of the worker.
    let mut h = Harness::recover(vec![], writes.stops);
    assert!(matches!(
        h.core.start(now, t),
        Err(WorkerError::Stopped { .. })
    ));
}

#[test]
fn a_stop_while_starting_stops_the_container_once_it_exists() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    h.effects();
    let answer = h.core.stop(now, t.id, Some(1)).unwrap();
    assert_eq!(answer.state, State::Scheduled);
    assert!(
        h.effects().is_empty(),
        "nothing to stop until the start returns"
    );
    let s = status(&t, 1, true, None);
    h.core.started(now, t.id, 1, Ok(s.clone()));
    assert_eq!(stops_in(&h.effects()), vec![(1, s.container_id.clone())]);
    h.core.stopped(now, t.id, 1, s.container_id, Ok(()));
    let done = h.core.task(t.id).unwrap();
    assert_eq!(
        (done.state, done.container_id.clone()),
        (State::Completed, None)
    );
}

#[test]
fn a_failed_runtime_stop_is_retried_with_backoff_until_it_succeeds() {
    let mut h = Harness::new();
    let t = task(1);
    let s = h.running(&t);
    let now = h.now();
    h.core.stop(now, t.id, Some(1)).unwrap();
    assert_eq!(stops_in(&h.effects()).len(), 1);
    let fail = || Err(RuntimeError::Backend("daemon busy".into()));
    h.core.stopped(now, t.id, 1, s.container_id.clone(), fail());
    assert_eq!(h.state(t.id), State::Running);
    assert!(
        h.core
            .task(t.id)
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("stop failed")
    );
    h.advance(stop_backoff(1) - Duration::from_millis(1));
    assert!(h.effects().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(stops_in(&h.effects()).len(), 1);
    let now = h.now();
    h.core.stopped(now, t.id, 1, s.container_id.clone(), fail());
    h.advance(stop_backoff(1));
    assert!(
        h.effects().is_empty(),
        "the second retry waits twice as long"
    );
    h.advance(stop_backoff(2));
    assert_eq!(stops_in(&h.effects()).len(), 1);
    let now = h.now();
    h.core.stopped(now, t.id, 1, s.container_id, Ok(()));
    let done = h.core.task(t.id).unwrap();
    assert_eq!((done.state, done.error.clone()), (State::Completed, None));
}

#[test]
fn a_worker_restarted_in_the_middle_of_a_stop_finishes_it() {
    let mut h = Harness::new();
    let t = task(1);
    let s = h.running(&t);
    let now = h.now();
    h.core.stop(now, t.id, Some(1)).unwrap();
    let writes = h.core.take_writes();
    let record = h.core.task(t.id).unwrap().clone();
    // The process dies; its store has the Running record and the tombstone.
    let mut h = Harness::recover(vec![record], writes.stops);
    let token = h.core.begin_reconcile();
    h.core.reconcile(h.now(), token, vec![s.clone()]);
    assert_eq!(stops_in(&h.effects()), vec![(1, s.container_id)]);
}

#[test]
fn a_start_that_fails_fails_the_attempt_and_removes_whatever_it_left() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    h.effects();
    h.core.started(
        now,
        t.id,
        1,
        Err(RuntimeError::Backend("inspect failed".into())),
    );
    let failed = h.core.task(t.id).unwrap();
    assert_eq!(failed.state, State::Failed);
    assert!(failed.error.as_deref().unwrap().contains("inspect failed"));
    assert_eq!(
        h.effects(),
        vec![Effect::Remove(ContainerSpec::container_name(t.id, 1))]
    );
}

#[test]
fn a_container_whose_start_was_recorded_failed_but_runs_is_removed() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    h.core
        .started(now, t.id, 1, Err(RuntimeError::Backend("timeout".into())));
    h.effects();
    let token = h.core.begin_reconcile();
    let s = status(&t, 1, true, None);
    h.core.reconcile(now, token, vec![s.clone()]);
    assert_eq!(stops_in(&h.effects()), vec![(1, s.container_id)]);
}

#[test]
fn exits_are_recorded_with_their_code_and_the_container_kept_for_its_logs() {
    let mut h = Harness::new();
    let ok = task(1);
    let bad = task(1);
    h.running(&ok);
    h.running(&bad);
    let now = h.now();
    h.core.exited(now, status(&ok, 1, false, Some(0)));
    h.core.exited(now, status(&bad, 1, false, Some(3)));
    let ok = h.core.task(ok.id).unwrap().clone();
    let bad = h.core.task(bad.id).unwrap().clone();
    assert_eq!((ok.state, ok.exit_code), (State::Completed, Some(0)));
    assert_eq!((bad.state, bad.exit_code), (State::Failed, Some(3)));
    assert_eq!(bad.error.as_deref(), Some("exited with code 3"));
    assert!(bad.container_id.is_some());
    h.advance(RETENTION);
    let removed = h
        .effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::Remove(_)))
        .count();
    assert_eq!(removed, 2);
    assert!(h.core.task(bad.id).unwrap().container_id.is_none());
}

#[test]
fn a_stop_of_an_ended_attempt_removes_its_kept_container_and_completes_it() {
    let mut h = Harness::new();
    let t = task(1);
    h.running(&t);
    let now = h.now();
    let ended = status(&t, 1, false, Some(3));
    h.core.exited(now, ended.clone());
    h.core.stop(now, t.id, Some(1)).unwrap();
    assert_eq!(h.effects(), vec![Effect::Remove(ended.container_id)]);
    assert_eq!(h.state(t.id), State::Completed);
}

#[test]
fn reconciliation_starts_what_was_accepted_adopts_what_runs_and_removes_the_rest() {
    let accepted = {
        let mut t = task(1);
        t.state = State::Scheduled;
        t
    };
    let vanished = {
        let mut t = task(1);
        t.state = State::Running;
        t.container_id = Some("gone".into());
        t
    };
    let superseded = {
        let mut t = task(2);
        t.state = State::Running;
        t.container_id = Some(format!("c-{}-2", t.id.simple()));
        t
    };
    let mut h = Harness::recover(
        vec![accepted.clone(), vanished.clone(), superseded.clone()],
        vec![],
    );
    let stranger = task(3);
    let token = h.core.begin_reconcile();
    let now = h.now();
    h.core.reconcile(
        now,
        token,
        vec![
            status(&superseded, 2, true, None),
            status(&superseded, 1, true, None),
            status(&stranger, 3, true, None),
        ],
    );
    let effects = h.effects();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Run { spec, .. } if spec.task_id == accepted.id))
    );
    assert_eq!(
        stops_in(&effects),
        vec![(1, format!("c-{}-1", superseded.id.simple()))]
    );
    assert_eq!(h.state(vanished.id), State::Failed);
    assert_eq!(h.state(stranger.id), State::Running, "adopted");
    assert_eq!(h.core.task(stranger.id).unwrap().attempt, 3);
}

#[test]
fn a_container_list_older_than_a_start_s_outcome_changes_nothing() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    // The list is asked for while the start is under way, and answers after it returned.
    let token = h.core.begin_reconcile();
    h.core.started(now, t.id, 1, Ok(status(&t, 1, true, None)));
    h.effects();
    h.core.reconcile(now, token, vec![]);
    assert_eq!(h.state(t.id), State::Running);
    assert!(h.effects().is_empty());
}

#[test]
fn an_exit_that_arrives_before_the_start_returns_is_kept() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    h.core.exited(now, status(&t, 1, false, Some(0)));
    h.core.started(now, t.id, 1, Ok(status(&t, 1, true, None)));
    assert_eq!(h.state(t.id), State::Completed);
}

#[test]
fn a_start_of_an_attempt_replaced_meanwhile_has_its_container_removed() {
    let mut h = Harness::new();
    let t = task(1);
    let now = h.now();
    h.core.start(now, t.clone()).unwrap();
    let mut next = t.clone();
    next.attempt = 2;
    h.core.start(now, next).unwrap();
    h.effects();
    let late = status(&t, 1, true, None);
    h.core.started(now, t.id, 1, Ok(late.clone()));
    assert_eq!(stops_in(&h.effects()), vec![(1, late.container_id)]);
    assert_eq!(h.core.task(t.id).unwrap().attempt, 2);
}

// ---- retention ---------------------------------------------------------------------------

impl Harness {
    /// Commit what the core wrote, putting its tasks on the feed from `*seq` on.
    fn commit(&mut self, seq: &mut u64) -> Writes {
        let writes = self.core.take_writes();
        let positions: Vec<(Uuid, u64)> = writes
            .tasks
            .iter()
            .map(|t| {
                *seq += 1;
                (t.id, *seq)
            })
            .collect();
        let now = self.now();
        self.core.written(now, &positions);
        writes
    }

    /// A task that ran and exited 0, its records committed.
    fn completed(&mut self, seq: &mut u64) -> Task {
        self.ended(seq, 0)
    }

    /// A task that ran and exited with `code`, its records committed.
    fn ended(&mut self, seq: &mut u64, code: i64) -> Task {
        let t = task(1);
        self.running(&t);
        let now = self.now();
        self.core.exited(now, status(&t, 1, false, Some(code)));
        self.commit(seq);
        self.effects();
        t
    }
}

/// A finished task as a store from long ago holds it: no container, finished a day back.
fn finished_long_ago(attempt: u32) -> Task {
    let mut t = task(attempt);
    t.state = State::Completed;
    t.exit_code = Some(0);
    t.worker = Some("w1".into());
    t.finish_time = Some(now_at(Duration::ZERO).wall - chrono::Duration::days(1));
    t
}

#[test]
fn a_finished_task_is_dropped_only_once_its_retention_passed_and_the_manager_acked_it() {
    let mut h = Harness::new();
    let mut seq = 1;
    let t = h.completed(&mut seq);
    let now = h.now();
    h.core.acked(now, seq);
    assert!(
        h.core.task(t.id).is_some(),
        "acknowledged, but kept for its retention"
    );
    // The retention passes: the kept container goes, which is a change of the record...
    h.advance(RETENTION);
    assert!(matches!(h.effects()[..], [Effect::Remove(_)]));
    let writes = h.commit(&mut seq);
    assert_eq!(writes.tasks.len(), 1);
    assert!(writes.dropped.is_empty());
    // ...that the manager has not recorded yet.
    h.advance(10 * RETENTION);
    assert!(
        h.core.task(t.id).is_some(),
        "not before the manager recorded it"
    );
    assert!(h.core.take_writes().is_empty());
    let now = h.now();
    h.core.acked(now, seq - 1);
    assert!(
        h.core.task(t.id).is_some(),
        "an older position is not enough"
    );
    h.core.acked(now, seq);
    assert!(h.core.task(t.id).is_none(), "dropped");
    let writes = h.core.take_writes();
    assert_eq!(writes.dropped, vec![t.id]);
    assert_eq!(
        writes.stops,
        vec![(
            t.id,
            Tombstone {
                attempt: 1,
                at: Some(now.wall)
            }
        )],
        "a tombstone of its attempt stays"
    );
    assert!(h.effects().is_empty());
}

#[test]
fn a_task_whose_change_is_not_yet_durable_is_not_dropped() {
    let mut h = Harness::new();
    let mut seq = 1;
    let t = h.ended(&mut seq, 3);
    h.advance(RETENTION);
    h.commit(&mut seq);
    // A stop of the failed attempt ends it for good, a change of the record whose write is
    // under way.
    let now = h.now();
    h.core.stop(now, t.id, Some(1)).unwrap();
    let writes = h.core.take_writes();
    h.core.acked(now, seq);
    assert!(
        h.core.task(t.id).is_some(),
        "its latest record is not told yet"
    );
    // The write failed: written again, then durable at a new position.
    h.core.unwritten(writes);
    h.commit(&mut seq);
    assert!(h.core.task(t.id).is_some());
    h.core.acked(now, seq);
    assert!(h.core.task(t.id).is_none());
}

#[test]
fn a_start_of_a_dropped_attempt_is_refused_and_a_newer_one_runs() {
    let mut h = Harness::new();
    let mut seq = 1;
    let t = h.completed(&mut seq);
    h.advance(RETENTION);
    h.commit(&mut seq);
    h.effects();
    let now = h.now();
    h.core.acked(now, seq);
    h.core.take_writes();
    assert!(h.core.task(t.id).is_none());
    // A start of that attempt, delayed in the network, comes after the drop.
    assert!(matches!(
        h.core.start(now, t.clone()),
        Err(WorkerError::Stopped {
            attempt: 1,
            stopped: 1,
            ..
        })
    ));
    assert!(h.effects().is_empty(), "no container for it");
    // A stop of it is answered as for a task never seen, and keeps the fence.
    assert!(matches!(
        h.core.stop(now, t.id, Some(1)),
        Err(WorkerError::NotFound(_))
    ));
    assert_eq!(h.core.tombstone(t.id), Some(1));
    let mut next = t.clone();
    next.attempt = 2;
    let (started, created) = h.core.start(now, next).unwrap();
    assert!(created);
    assert_eq!(started.attempt, 2);
}

#[test]
fn tombstones_of_tasks_gone_expire_after_the_retention_and_others_stay() {
    let mut h = Harness::new();
    let mut seq = 1;
    let t = h.completed(&mut seq);
    h.advance(RETENTION);
    h.commit(&mut seq);
    let now = h.now();
    h.core.acked(now, seq);
    h.core.take_writes();
    // A stop before its start (a task this worker never has) and a stop of a task it keeps.
    let early = task(4);
    assert!(h.core.stop(now, early.id, Some(4)).is_err());
    let kept = task(1);
    h.running(&kept);
    let now = h.now();
    h.core.stop(now, kept.id, Some(1)).unwrap();
    let s = status(&kept, 1, false, Some(137));
    h.core.stopped(now, kept.id, 1, s.container_id, Ok(()));
    h.core.take_writes();
    assert_eq!(h.core.tombstones(), 3);

    h.advance(RETENTION - Duration::from_secs(1));
    assert!(
        h.core.take_writes().expired.is_empty(),
        "not before the retention"
    );
    assert_eq!(h.core.tombstone(t.id), Some(1));
    h.advance(Duration::from_secs(1));
    let mut expired = h.core.take_writes().expired;
    expired.sort();
    let mut gone = vec![t.id, early.id];
    gone.sort();
    assert_eq!(expired, gone, "deleted from the store");
    assert_eq!(h.core.tombstone(t.id), None);
    assert_eq!(
        h.core.tombstone(kept.id),
        Some(1),
        "the worker still has the task: its tombstone stays"
    );
    assert!(h.core.next_timer().is_none_or(|at| at > h.mono));
}

#[test]
fn drops_and_expiries_go_a_batch_at_a_time() {
    let n = 2 * SWEEP_BATCH + 500;
    let tasks: Vec<Task> = (0..n).map(|_| finished_long_ago(1)).collect();
    let old = Tombstone {
        attempt: 1,
        at: Some(now_at(Duration::ZERO).wall - chrono::Duration::days(1)),
    };
    let stops: Vec<(Uuid, Tombstone)> = (0..n).map(|_| (Uuid::new_v4(), old)).collect();
    let mut h = Harness::recover(tasks, stops);
    let positions: Vec<(Uuid, u64)> = h.core.tasks().map(|t| t.id).zip(2..).collect::<Vec<_>>();
    let now = h.now();
    h.core.written(now, &positions);
    let writes = h.core.take_writes();
    assert!(writes.dropped.is_empty(), "nothing acknowledged yet");
    assert_eq!(writes.expired.len(), SWEEP_BATCH, "old tombstones: a batch");
    h.core.acked(now, n as u64 + 1);
    let writes = h.core.take_writes();
    let mut dropped = writes.dropped.len();
    assert_eq!(dropped, SWEEP_BATCH);
    let mut expired = SWEEP_BATCH + writes.expired.len();
    let mut steps = 1;
    while dropped < n || expired < n {
        assert_eq!(
            h.core.next_timer(),
            Some(h.mono),
            "the rest is due at once, a step later"
        );
        h.advance(Duration::ZERO);
        let writes = h.core.take_writes();
        assert!(writes.dropped.len() <= SWEEP_BATCH);
        assert!(writes.expired.len() <= SWEEP_BATCH);
        dropped += writes.dropped.len();
        expired += writes.expired.len();
        steps += 1;
        assert!(steps < 10);
    }
    assert_eq!((dropped, expired), (n, n));
    assert_eq!(h.core.tasks().count(), 0);
    // The dropped tasks' own tombstones are new: they stay for the retention.
    assert_eq!(h.core.tombstones(), n);
}

#[test]
fn a_recovered_task_counts_its_retention_from_its_finish_and_its_container_from_now() {
    let long_ago = finished_long_ago(1);
    let mut recent = finished_long_ago(1);
    recent.finish_time = Some(now_at(Duration::ZERO).wall - chrono::Duration::minutes(10));
    let mut kept = finished_long_ago(1);
    kept.container_id = Some("c-kept".into());
    let mut h = Harness::recover(vec![long_ago.clone(), recent.clone(), kept.clone()], vec![]);
    let positions: Vec<(Uuid, u64)> = [long_ago.id, recent.id, kept.id]
        .into_iter()
        .zip(2..)
        .collect();
    let now = h.now();
    h.core.written(now, &positions);
    h.core.acked(now, 4);
    assert!(h.core.task(long_ago.id).is_none());
    assert!(h.core.task(recent.id).is_some());
    h.advance(RETENTION - Duration::from_secs(600));
    assert!(h.core.task(recent.id).is_none());
    assert!(
        h.core.task(kept.id).is_some(),
        "its container is kept first"
    );
}

#[test]
fn a_stop_overtaken_by_reconciliation_does_not_keep_the_task_from_being_dropped() {
    // Two tasks being stopped whose containers died unseen (with the worker's machine, say):
    // `a`'s runtime stop is under way, `b`'s failed and waits for its retry, when
    // reconciliation finds both containers gone and completes both stops itself.
    let mut h = Harness::new();
    let mut seq = 1;
    let (a, b) = (task(1), task(1));
    let sa = h.running(&a);
    let sb = h.running(&b);
    h.commit(&mut seq);
    let now = h.now();
    h.core.stop(now, b.id, Some(1)).unwrap();
    assert_eq!(stops_in(&h.effects()), vec![(1, sb.container_id.clone())]);
    let failed = Err(RuntimeError::Backend("the daemon did not answer".into()));
    h.core.stopped(now, b.id, 1, sb.container_id, failed);
    h.core.stop(now, a.id, Some(1)).unwrap();
    assert_eq!(stops_in(&h.effects()), vec![(1, sa.container_id.clone())]);
    let token = h.core.begin_reconcile();
    h.core.reconcile(now, token, Vec::new());
    assert_eq!(
        (h.state(a.id), h.state(b.id)),
        (State::Completed, State::Completed)
    );
    h.commit(&mut seq);
    // `a`'s stop comes back (there was nothing left to stop); `b`'s retry comes due, with
    // nothing to stop either; their retention passes.
    h.core.stopped(now, a.id, 1, sa.container_id, Ok(()));
    h.advance(RETENTION);
    assert!(stops_in(&h.effects()).is_empty());
    h.commit(&mut seq);
    assert!(!h.core.busy(), "no runtime call is under way");
    let now = h.now();
    h.core.acked(now, seq);
    assert!(h.core.task(a.id).is_none(), "a is dropped");
    assert!(h.core.task(b.id).is_none(), "b is dropped");
}
