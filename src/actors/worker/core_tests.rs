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

    fn recover(tasks: Vec<Task>, stops: Vec<(Uuid, u32)>) -> Harness {
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
    assert_eq!(writes.stops, vec![(t.id, 1)], "the tombstone is written");
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
