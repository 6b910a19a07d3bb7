//! Every rule of the manager's core, one test each: inputs in, effects and records out, with a
//! clock the test moves by hand.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::placement::ROOM_DEBOUNCE;
use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A core and a hand-moved clock.
struct Harness {
    core: Core,
    mono: Duration,
    /// Effects taken out so far and not yet looked at.
    effects: Vec<Effect>,
}

fn task(cmd: &str) -> Task {
    let mut t = Task::new("img");
    t.cmd = vec![cmd.to_string()];
    t
}

impl Harness {
    fn new() -> Harness {
        Harness::recover(Vec::new(), Vec::new())
    }

    fn recover(records: Vec<(u64, Task)>, nodes: Vec<(String, String)>) -> Harness {
        Harness::recover_with(Config::new(TIMEOUT), records, nodes)
    }

    fn recover_with(
        config: Config,
        records: Vec<(u64, Task)>,
        nodes: Vec<(String, String)>,
    ) -> Harness {
        let mut h = Harness {
            core: Core::recover(
                config,
                Now {
                    mono: Duration::ZERO,
                    wall: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                },
                records,
                nodes
                    .into_iter()
                    .map(|(name, address)| (name, NodeRecord::at(address)))
                    .collect(),
            ),
            mono: Duration::ZERO,
            effects: Vec::new(),
        };
        h.drain();
        h
    }

    fn now(&self) -> Now {
        Now {
            mono: self.mono,
            wall: Utc.timestamp_opt(1_800_000_000, 0).unwrap()
                + chrono::Duration::from_std(self.mono).unwrap(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.mono += d;
        let now = self.now();
        self.core.tick(now);
        self.drain();
    }

    fn drain(&mut self) {
        let _ = self.core.take_writes();
        self.effects.extend(self.core.take_effects());
    }

    fn take(&mut self) -> Vec<Effect> {
        self.drain();
        std::mem::take(&mut self.effects)
    }

    /// A worker at `address` that answers as `name`.
    fn worker(&mut self, address: &str, name: &str) -> EndpointId {
        let ep = self.core.add_endpoint(address);
        let now = self.now();
        self.core.node_up(now, ep, name);
        self.drain();
        ep
    }

    fn submit(&mut self, t: Task) -> Uuid {
        let id = t.id;
        let now = self.now();
        assert!(matches!(
            self.core.submit(now, t),
            Ok(Submitted::Created(_))
        ));
        self.core.submit_committed(&[id], true);
        self.drain();
        id
    }

    /// Answer the scheduler's pending request: every task goes to `node`.
    fn place_on(&mut self, node: &str) -> Vec<Uuid> {
        let effects = self.take();
        let mut placed = Vec::new();
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Place(batch) => placed.extend(batch.into_iter().map(|r| r.id)),
                other => rest.push(other),
            }
        }
        self.effects = rest;
        let now = self.now();
        self.core.placed(
            now,
            placed
                .iter()
                .map(|id| (*id, Ok(node.to_string())))
                .collect(),
        );
        self.drain();
        placed
    }

    fn report(&mut self, ep: EndpointId, full: bool, tasks: Vec<Task>) {
        let now = self.now();
        self.core.report(now, ep, full, false, tasks);
        self.drain();
    }

    fn state(&self, id: Uuid) -> State {
        self.core.task(id).unwrap().state
    }

    fn task(&self, id: Uuid) -> Task {
        self.core.task(id).unwrap().clone()
    }

    /// The starts among the effects taken now: (node, id, attempt).
    fn starts(&mut self) -> Vec<(String, Uuid, u32)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Start { node, task, .. } => Some((node, task.id, task.attempt)),
                _ => None,
            })
            .collect()
    }

    /// The stops among the effects taken now: (node, id, attempt).
    fn stops(&mut self) -> Vec<(String, Uuid, u32)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Stop {
                    node, id, attempt, ..
                } => Some((node, id, attempt)),
                _ => None,
            })
            .collect()
    }

    fn start_ok(&mut self, node: &str, id: Uuid, attempt: u32) {
        let mut t = self.task(id);
        t.attempt = attempt;
        t.state = State::Scheduled;
        let now = self.now();
        self.core.call_done(
            now,
            node,
            (id, attempt, CallKind::Start),
            Ok(Seen::from(&t)),
        );
        self.drain();
    }

    fn stop_result(&mut self, node: &str, id: Uuid, attempt: u32, r: Result<Task, CallError>) {
        let r = r.map(|t| Seen::from(&t));
        let now = self.now();
        self.core
            .call_done(now, node, (id, attempt, CallKind::Stop), r);
        self.drain();
    }

    /// A running task on `node`, started and reported Running.
    fn running_on(&mut self, ep: EndpointId, node: &str, t: Task) -> Uuid {
        let id = self.submit(t);
        self.place_on(node);
        let starts = self.starts();
        assert_eq!(starts, vec![(node.to_string(), id, 1)]);
        self.start_ok(node, id, 1);
        self.report(ep, false, vec![seen(&self.task(id), 1, State::Running)]);
        assert_eq!(self.state(id), State::Running);
        id
    }
}

/// A worker's record of attempt `attempt` of `t` in `state`.
fn seen(t: &Task, attempt: u32, state: State) -> Task {
    let mut r = t.clone();
    r.attempt = attempt;
    r.state = state;
    r.container_id = Some(format!("c-{}-{attempt}", t.id.simple()));
    r
}

#[test]
fn a_submission_is_placed_once_committed_then_started_where_it_was_placed() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let t = task("sleep");
    let id = t.id;
    let now = h.now();
    h.core.submit(now, t).unwrap();
    assert!(
        !h.take().iter().any(|e| matches!(e, Effect::Place(_))),
        "nothing is placed before the submission is durable"
    );
    h.core.submit_committed(&[id], true);
    assert_eq!(h.place_on("w1"), vec![id]);
    let t = h.task(id);
    assert_eq!(
        (t.state, t.attempt, t.worker.as_deref()),
        (State::Scheduled, 1, Some("w1"))
    );
    assert_eq!(h.starts(), vec![("w1".into(), id, 1)]);
    assert_eq!(h.core.reservation(id), Some("w1"));
}

#[test]
fn a_failed_commit_forgets_the_submission() {
    let mut h = Harness::new();
    let t = task("sleep");
    let id = t.id;
    let now = h.now();
    h.core.submit(now, t).unwrap();
    h.core.submit_committed(&[id], false);
    assert!(h.core.task(id).is_none());
}

#[test]
fn the_same_id_is_idempotent_with_the_same_spec_and_a_conflict_otherwise() {
    let mut h = Harness::new();
    let t = task("sleep");
    h.submit(t.clone());
    let now = h.now();
    assert!(matches!(
        h.core.submit(now, t.clone()),
        Ok(Submitted::Existing(_))
    ));
    let mut other = t.clone();
    other.image = "other".into();
    assert_eq!(h.core.submit(now, other), Err(Refusal::Conflict(t.id)));
}

#[test]
fn a_stop_while_the_scheduler_chooses_gives_the_booking_back_and_starts_nothing() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    // The Place request is out; the user stops the task before the answer.
    let effects = h.take();
    assert!(effects.iter().any(|e| matches!(e, Effect::Place(_))));
    let now = h.now();
    h.core.stop(now, id).unwrap();
    assert_eq!(h.state(id), State::Completed);
    h.core.placed(now, vec![(id, Ok("w1".into()))]);
    let effects = h.take();
    assert!(effects.contains(&Effect::Release(vec![id])), "{effects:?}");
    assert!(!effects.iter().any(|e| matches!(e, Effect::Start { .. })));
    assert_eq!(h.core.reservation(id), None);
}

#[test]
fn a_stop_of_a_task_being_started_is_sent_and_done_only_when_the_worker_reports_it_gone() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    assert_eq!(h.starts().len(), 1);
    let now = h.now();
    let t = h.core.stop(now, id).unwrap();
    assert_eq!(t.desired, Goal::Stopped);
    assert_eq!(
        t.state,
        State::Scheduled,
        "not done until the worker says so"
    );
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    // The start reaches the worker after the stop: refused (tombstone); the feed says Completed.
    let now = h.now();
    h.core.call_done(
        now,
        "w1",
        (id, 1, CallKind::Start),
        Err(CallError::Stale("stopped".into())),
    );
    h.stop_result("w1", id, 1, Err(CallError::NotFound("unknown".into())));
    assert_eq!(h.state(id), State::Completed);
    assert_eq!(h.core.reservation(id), None);
    let _ = ep;
}

#[test]
fn a_stop_is_repeated_until_the_copy_is_reported_gone() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("sleep"));
    let now = h.now();
    h.core.stop(now, id).unwrap();
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    // The call fails in transport: sent again after the retry delay, not before.
    h.stop_result("w1", id, 1, Err(CallError::Transport("refused".into())));
    assert!(h.stops().is_empty());
    h.advance(DEFAULT_CALL_RETRY);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    // Taken; the worker still reports it Running while its container stops.
    let mut running = seen(&h.task(id), 1, State::Running);
    h.stop_result("w1", id, 1, Ok(running.clone()));
    h.report(ep, false, vec![running.clone()]);
    assert!(h.stops().is_empty(), "a taken stop is not repeated");
    assert_eq!(h.state(id), State::Running);
    // Full reports that still show it running: the first may predate the stop; the next one,
    // asked for after it, means the worker may have lost it: asked again.
    h.advance(Duration::from_secs(1));
    h.report(ep, true, vec![running.clone()]);
    assert!(h.stops().is_empty());
    h.advance(DEFAULT_RESYNC_INTERVAL);
    h.report(ep, true, vec![running.clone()]);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    running.state = State::Completed;
    h.report(ep, false, vec![running]);
    assert_eq!(h.state(id), State::Completed);
}

#[test]
fn a_stop_while_the_worker_is_away_is_carried_out_when_it_returns() {
    // The manager restarted; the task's worker has not answered yet.
    let mut t = task("sleep");
    t.state = State::Running;
    t.attempt = 1;
    t.worker = Some("w1".into());
    let id = t.id;
    let mut h = Harness::recover(vec![(0, t)], vec![("w1".into(), "10.0.0.1:5556".into())]);
    let ep = h.core.add_endpoint("10.0.0.1:5556");
    let now = h.now();
    let t = h.core.stop(now, id).unwrap();
    assert_eq!((t.state, t.desired), (State::Running, Goal::Stopped));
    assert!(h.stops().is_empty(), "nobody to send it to yet");
    let now = h.now();
    h.core.node_up(now, ep, "w1");
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    let mut gone = seen(&h.task(id), 1, State::Completed);
    gone.container_id = None;
    h.report(ep, false, vec![gone]);
    assert_eq!(h.state(id), State::Completed);
}

#[test]
fn a_stop_on_a_down_worker_completes_and_its_copy_is_stopped_when_it_returns() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("sleep"));
    let now = h.now();
    h.core.node_down(now, ep);
    // Moved: Pending, no worker.
    assert_eq!(h.state(id), State::Pending);
    let now = h.now();
    h.core.stop(now, id).unwrap();
    assert_eq!(h.state(id), State::Completed);
    h.take();
    let now = h.now();
    h.core.node_up(now, ep, "w1");
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
}

#[test]
fn a_lost_worker_s_tasks_move_as_new_attempts_without_counting_a_restart() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    h.worker("10.0.0.2:5556", "w2");
    let id = h.running_on(ep1, "w1", task("sleep"));
    let now = h.now();
    h.core.node_down(now, ep1);
    let effects = h.take();
    assert!(effects.contains(&Effect::NodeReady {
        name: "w1".into(),
        ready: false
    }));
    assert!(effects.contains(&Effect::Release(vec![id])));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Place(b) if b[0].id == id))
    );
    let t = h.task(id);
    assert_eq!((t.state, t.worker), (State::Pending, None));
    let now = h.now();
    h.core.placed(now, vec![(id, Ok("w2".into()))]);
    let t = h.task(id);
    assert_eq!((t.attempt, t.restart_count), (2, 0));
    assert_eq!(h.starts(), vec![("w2".into(), id, 2)]);
}

/// The starts among the effects taken now, whole: what a worker is sent.
fn started_tasks(h: &mut Harness) -> Vec<Task> {
    h.take()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Start { task, .. } => Some(*task),
            _ => None,
        })
        .collect()
}

/// Attempt `attempt` of the task started on `node`, reported Running, then Failed with `code`.
fn run_and_end(h: &mut Harness, ep: EndpointId, node: &str, id: Uuid, attempt: u32, code: i64) {
    h.start_ok(node, id, attempt);
    h.report(ep, false, vec![seen(&h.task(id), attempt, State::Running)]);
    let mut failed = seen(&h.task(id), attempt, State::Failed);
    failed.exit_code = Some(code);
    failed.error = Some(format!("exited with code {code}"));
    h.report(ep, false, vec![failed]);
    assert_eq!(h.state(id), State::Failed);
}

#[test]
fn a_task_restarted_twice_shows_both_earlier_attempts_in_order() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    let ep2 = h.worker("10.0.0.2:5556", "w2");
    let t = task("fail");
    let id = t.id;
    h.submit(t);
    h.place_on("w1");
    assert_eq!(h.starts(), vec![("w1".into(), id, 1)]);
    run_and_end(&mut h, ep1, "w1", id, 1, 3);
    let first_ended = h.task(id);
    assert!(
        first_ended.attempts.is_empty(),
        "attempt 1 is still current"
    );
    h.advance(MAX_RESTART_BACKOFF);
    let replaced_at = h.now().wall;
    h.place_on("w2");
    let sent = started_tasks(&mut h);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].attempts.is_empty(),
        "a worker is not sent the history"
    );
    run_and_end(&mut h, ep2, "w2", id, 2, 4);
    h.advance(MAX_RESTART_BACKOFF);
    h.place_on("w1");
    let t = h.task(id);
    assert_eq!(
        (t.attempt, t.restart_count, t.worker.as_deref(), t.exit_code),
        (3, 2, Some("w1"), None)
    );
    let history: Vec<_> = t
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.worker.as_deref(),
                a.state,
                a.exit_code,
                a.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        history,
        vec![
            (
                1,
                Some("w1"),
                State::Failed,
                Some(3),
                Some("exited with code 3")
            ),
            (
                2,
                Some("w2"),
                State::Failed,
                Some(4),
                Some("exited with code 4")
            ),
        ]
    );
    let first = &t.attempts[0];
    assert_eq!(
        (
            first.start_time,
            first.finish_time,
            first.container_id.clone()
        ),
        (
            first_ended.start_time,
            first_ended.finish_time,
            first_ended.container_id
        )
    );
    assert!(first.finish_time.is_some());
    assert_eq!(first.ended_at, replaced_at);
}

#[test]
fn a_task_moved_off_a_lost_node_shows_the_lost_attempt() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    h.worker("10.0.0.2:5556", "w2");
    let id = h.running_on(ep1, "w1", task("sleep"));
    let running = h.task(id);
    let now = h.now();
    h.core.node_down(now, ep1);
    let lost = h.task(id);
    assert_eq!((lost.state, lost.worker.as_deref()), (State::Pending, None));
    let kept = |t: &Task| {
        t.attempts
            .iter()
            .map(|a| (a.attempt, a.worker.clone(), a.state, a.container_id.clone()))
            .collect::<Vec<_>>()
    };
    let want = vec![(
        1,
        Some("w1".to_string()),
        State::Running,
        running.container_id.clone(),
    )];
    assert!(running.container_id.is_some());
    assert_eq!(kept(&lost), want, "kept when it is lost, naming its worker");
    assert_eq!(lost.attempts[0].start_time, running.start_time);
    assert_eq!(lost.attempts[0].ended_at, now.wall);
    h.advance(Duration::from_secs(1));
    h.place_on("w2");
    let moved = h.task(id);
    assert_eq!((moved.attempt, moved.worker.as_deref()), (2, Some("w2")));
    assert_eq!(kept(&moved), want, "kept once");
    assert_eq!(moved.attempts[0].ended_at, now.wall, "as it was when lost");
}

#[test]
fn the_history_keeps_only_the_newest_attempts() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("fail");
    let placements = crate::task::MAX_ATTEMPTS_KEPT as u32 + 3;
    t.max_restarts = placements;
    let id = t.id;
    h.submit(t);
    for attempt in 1..=placements {
        assert_eq!(h.place_on("w1"), vec![id], "attempt {attempt}");
        run_and_end(&mut h, ep, "w1", id, attempt, attempt.into());
        h.advance(MAX_RESTART_BACKOFF);
    }
    h.place_on("w1");
    let t = h.task(id);
    assert_eq!(t.attempt, placements + 1);
    let kept: Vec<(u32, Option<i64>)> = t
        .attempts
        .iter()
        .map(|a| (a.attempt, a.exit_code))
        .collect();
    let newest = placements + 1 - crate::task::MAX_ATTEMPTS_KEPT as u32..=placements;
    assert_eq!(
        kept,
        newest.map(|a| (a, Some(a.into()))).collect::<Vec<_>>()
    );
}

#[test]
fn a_resubmission_with_the_same_spec_is_not_refused_for_its_history() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let t = task("fail");
    let again = t.clone();
    let id = t.id;
    h.submit(t);
    h.place_on("w1");
    run_and_end(&mut h, ep, "w1", id, 1, 1);
    h.advance(MAX_RESTART_BACKOFF);
    h.place_on("w1");
    assert_eq!(h.task(id).attempts.len(), 1);
    let now = h.now();
    match h.core.submit(now, again) {
        Ok(Submitted::Existing(t)) => assert_eq!(t.attempts.len(), 1),
        other => panic!("expected the existing task, got {other:?}"),
    }
}

#[test]
fn a_placement_on_a_worker_that_just_went_down_is_placed_again() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.take(); // the Place request is out
    let now = h.now();
    h.core.node_down(now, ep1);
    h.core.placed(now, vec![(id, Ok("w1".into()))]);
    let effects = h.take();
    assert!(effects.contains(&Effect::Release(vec![id])));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Place(b) if b[0].id == id))
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Start { .. })));
    assert_eq!(h.state(id), State::Pending);
}

#[test]
fn a_returning_worker_s_old_copy_is_stopped_even_while_the_task_waits_for_a_new_place() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("sleep"));
    let now = h.now();
    h.core.node_down(now, ep);
    h.take(); // Place is out; nothing else fits meanwhile
    let now = h.now();
    h.core.node_up(now, ep, "w1");
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(
        h.state(id),
        State::Pending,
        "a report of the old attempt is not current"
    );
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
}

#[test]
fn a_report_of_an_older_attempt_stops_that_copy_and_changes_nothing_else() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    let ep2 = h.worker("10.0.0.2:5556", "w2");
    let id = h.running_on(ep1, "w1", task("sleep"));
    let now = h.now();
    h.core.node_down(now, ep1);
    h.place_on("w2");
    h.start_ok("w2", id, 2);
    h.report(ep2, false, vec![seen(&h.task(id), 2, State::Running)]);
    h.take();
    let now = h.now();
    h.core.node_up(now, ep1, "w1");
    h.report(ep1, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    let t = h.task(id);
    assert_eq!(
        (t.state, t.attempt, t.worker.as_deref()),
        (State::Running, 2, Some("w2"))
    );
}

#[test]
fn a_copy_run_again_after_it_finished_is_stopped_at_the_next_full_report() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("false");
    t.restart_policy = RestartPolicy::Never;
    let id = finished_on(&mut h, ep, "w1", t, 1);
    assert_eq!(h.state(id), State::Failed);
    h.take();
    // The worker dropped the attempt and its tombstone expired; a late start of it ran it
    // again. Its full report is the whole truth: that copy runs, and must not.
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    let t = h.task(id);
    assert_eq!(
        (t.state, t.attempt),
        (State::Failed, 1),
        "the record is final"
    );
    // Stopped, it is reported finished again, and nothing more is asked.
    h.stop_result("w1", id, 1, Ok(seen(&t, 1, State::Completed)));
    h.report(ep, true, vec![seen(&t, 1, State::Completed)]);
    assert!(h.stops().is_empty());
    assert_eq!(h.state(id), State::Failed);
}

#[test]
fn a_copy_of_an_older_attempt_run_again_is_stopped_at_the_next_full_report() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("fail");
    t.restart_policy = RestartPolicy::OnFailure;
    t.max_restarts = 1;
    let id = finished_on(&mut h, ep, "w1", t, 3);
    h.advance(MAX_RESTART_BACKOFF);
    assert_eq!(h.place_on("w1"), vec![id]);
    h.start_ok("w1", id, 2);
    let mut done = seen(&h.task(id), 2, State::Completed);
    done.exit_code = Some(0);
    h.report(ep, false, vec![done]);
    assert_eq!(h.state(id), State::Completed);
    h.take();
    // The worker dropped attempt 2 and its tombstone expired; a start of attempt 1, long
    // delayed, ran. Its full report lists that copy, older than what the worker last said.
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    assert_eq!(h.state(id), State::Completed, "Completed is final");
}

#[test]
fn a_start_the_worker_lost_is_sent_again_after_a_full_report_without_it() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    assert_eq!(h.starts().len(), 1);
    h.start_ok("w1", id, 1);
    assert!(h.starts().is_empty());
    // A full report without it may have left the worker before the start arrived: it proves
    // nothing. The one asked for after it does.
    h.advance(Duration::from_secs(1));
    h.report(ep, true, vec![]);
    assert!(h.starts().is_empty());
    h.advance(DEFAULT_RESYNC_INTERVAL);
    h.report(ep, true, vec![]);
    assert_eq!(h.starts(), vec![("w1".into(), id, 1)]);
}

#[test]
fn a_start_a_restarted_worker_lost_is_sent_again_at_its_first_report() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    h.starts();
    h.start_ok("w1", id, 1);
    // A new process of the worker, whose store lost the start, reports everything it has.
    h.advance(Duration::from_secs(1));
    let now = h.now();
    h.core.report(now, ep, true, true, vec![]);
    assert_eq!(h.starts(), vec![("w1".into(), id, 1)]);
}

#[test]
fn a_start_failed_in_transport_is_retried_and_a_refused_one_fails_the_attempt() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    h.starts();
    let now = h.now();
    h.core.call_done(
        now,
        "w1",
        (id, 1, CallKind::Start),
        Err(CallError::Transport("timeout".into())),
    );
    assert!(h.starts().is_empty());
    h.advance(DEFAULT_CALL_RETRY);
    assert_eq!(h.starts(), vec![("w1".into(), id, 1)]);
    let now = h.now();
    h.core.call_done(
        now,
        "w1",
        (id, 1, CallKind::Start),
        Err(CallError::Rejected {
            status: 400,
            message: "bad image".into(),
        }),
    );
    let t = h.task(id);
    assert_eq!(t.state, State::Failed);
    assert!(t.error.unwrap().contains("bad image"));
}

#[test]
fn on_failure_restarts_after_backoff_and_counts_only_restarts() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("fail");
    t.max_restarts = 1;
    let id = h.running_on(ep, "w1", t);
    let mut failed = seen(&h.task(id), 1, State::Failed);
    failed.exit_code = Some(3);
    h.report(ep, false, vec![failed]);
    let t = h.task(id);
    assert_eq!(
        (t.state, t.exit_code, t.restart_count),
        (State::Failed, Some(3), 0)
    );
    assert!(h.take().contains(&Effect::Release(vec![id])));
    h.advance(MIN_RESTART_BACKOFF - Duration::from_millis(1));
    assert!(!h.take().iter().any(|e| matches!(e, Effect::Place(_))));
    h.advance(Duration::from_millis(1));
    let placed = h.place_on("w1");
    assert_eq!(placed, vec![id]);
    let t = h.task(id);
    assert_eq!(
        (t.state, t.attempt, t.restart_count),
        (State::Scheduled, 2, 1)
    );
    h.start_ok("w1", id, 2);
    let mut failed = seen(&h.task(id), 2, State::Failed);
    failed.exit_code = Some(3);
    h.report(ep, false, vec![failed]);
    h.advance(MAX_RESTART_BACKOFF);
    assert!(
        !h.take().iter().any(|e| matches!(e, Effect::Place(_))),
        "no restarts left"
    );
    assert_eq!(h.task(id).state, State::Failed);
}

#[test]
fn an_always_task_that_exits_zero_waits_pending_with_the_reason_then_restarts() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("true");
    t.restart_policy = RestartPolicy::Always;
    let id = h.running_on(ep, "w1", t);
    let mut done = seen(&h.task(id), 1, State::Completed);
    done.exit_code = Some(0);
    h.report(ep, false, vec![done]);
    let t = h.task(id);
    assert_eq!(t.state, State::Pending);
    assert!(t.error.unwrap().contains("restart 1 of 3"));
    h.advance(MIN_RESTART_BACKOFF);
    assert_eq!(h.place_on("w1"), vec![id]);
    assert_eq!(h.task(id).restart_count, 1);
}

#[test]
fn a_users_stop_ends_a_pending_restart() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("fail"));
    h.report(ep, false, vec![seen(&h.task(id), 1, State::Failed)]);
    let now = h.now();
    h.core.stop(now, id).unwrap();
    assert_eq!(h.state(id), State::Completed);
    h.advance(MAX_RESTART_BACKOFF);
    assert!(!h.take().iter().any(|e| matches!(e, Effect::Place(_))));
}

#[test]
fn three_failed_health_checks_fail_the_attempt_stop_its_copy_and_restart_it() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("httpd");
    t.exposed_ports = vec!["8080/tcp".into()];
    t.health_check = Some("/health".into());
    let id = t.id;
    h.submit(t);
    h.place_on("w1");
    h.start_ok("w1", id, 1);
    let mut running = seen(&h.task(id), 1, State::Running);
    running.host_ports.insert("8080/tcp".into(), "40001".into());
    h.report(ep, false, vec![running]);
    let effects = h.take();
    assert!(effects.contains(&Effect::Watch {
        id,
        attempt: 1,
        url: "http://10.0.0.1:40001/health".into()
    }));
    let now = h.now();
    h.core.health_checked(now, id, 1, Err("503".into()));
    h.core.health_checked(now, id, 1, Ok(()));
    h.core.health_checked(now, id, 1, Err("503".into()));
    h.core.health_checked(now, id, 1, Err("503".into()));
    assert_eq!(h.state(id), State::Running, "failures must be in a row");
    h.core.health_checked(now, id, 1, Err("503".into()));
    let t = h.task(id);
    assert_eq!(t.state, State::Failed);
    assert!(t.error.unwrap().contains("health check failed 3 times"));
    assert_eq!(h.stops(), vec![("w1".into(), id, 1)]);
    h.advance(MIN_RESTART_BACKOFF);
    assert_eq!(h.place_on("w1"), vec![id]);
}

#[test]
fn a_running_copy_of_a_task_unknown_here_is_stopped() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let stranger = seen(&task("sleep"), 4, State::Running);
    h.report(ep, true, vec![stranger.clone()]);
    assert_eq!(h.stops(), vec![("w1".into(), stranger.id, 4)]);
}

#[test]
fn a_name_is_bound_to_its_address_and_a_second_one_is_refused_while_the_first_answers() {
    let mut h = Harness::new();
    let ep1 = h.worker("10.0.0.1:5556", "w1");
    let ep2 = h.core.add_endpoint("10.0.0.9:5556");
    let now = h.now();
    h.core.node_up(now, ep2, "w1");
    let effects = h.take();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Refused { endpoint, .. } if *endpoint == ep2))
    );
    let views = h.core.endpoints();
    assert_eq!(views[ep2].status, NodeStatus::Refused);
    assert_eq!(views[ep1].status, NodeStatus::Ready);
    // Reports from the refused address count for nothing.
    let stranger = seen(&task("x"), 1, State::Running);
    h.report(ep2, true, vec![stranger]);
    assert!(h.stops().is_empty());
    // The owner goes silent: the live claimant takes the name.
    let now = h.now();
    h.core.node_down(now, ep1);
    let views = h.core.endpoints();
    assert_eq!(views[ep2].status, NodeStatus::Ready);
    assert_eq!(
        h.core.bound_addresses(),
        vec![("w1".into(), "10.0.0.9:5556".into())]
    );
}

#[test]
fn a_worker_known_from_the_store_that_never_answers_is_down_after_the_timeout() {
    let mut t = task("sleep");
    t.state = State::Running;
    t.attempt = 1;
    t.worker = Some("w1".into());
    let id = t.id;
    let mut h = Harness::recover(vec![(0, t)], vec![("w1".into(), "in-process/w1".into())]);
    assert_eq!(h.core.node_status("w1"), Some(NodeStatus::Connecting));
    h.advance(TIMEOUT);
    assert_eq!(h.core.node_status("w1"), Some(NodeStatus::Down));
    assert_eq!(h.state(id), State::Pending);
}

#[test]
fn recovery_books_placed_tasks_again_and_carries_on_with_the_rest() {
    let mut placed = task("sleep");
    placed.state = State::Running;
    placed.attempt = 2;
    placed.worker = Some("w1".into());
    let mut pending = task("sleep");
    pending.state = State::Pending;
    let mut failed = task("fail");
    failed.state = State::Failed;
    failed.attempt = 1;
    failed.restart_count = 1;
    failed.worker = Some("w1".into());
    let mut stopped = task("sleep");
    stopped.state = State::Pending;
    stopped.desired = Goal::Stopped;
    let ids = (placed.id, pending.id, failed.id, stopped.id);
    let core = Core::recover(
        Config::new(TIMEOUT),
        Now {
            mono: Duration::ZERO,
            wall: Utc::now(),
        },
        vec![(0, placed), (1, pending), (2, failed), (3, stopped)],
        vec![],
    );
    let mut h = Harness {
        core,
        mono: Duration::ZERO,
        effects: Vec::new(),
    };
    let effects = h.take();
    let Some(Effect::Restore(books)) = effects.first() else {
        panic!("{effects:?}")
    };
    assert_eq!(books.len(), 1);
    assert_eq!(books[0].0, ids.0);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Place(b) if b.len() == 1 && b[0].id == ids.1))
    );
    assert_eq!(h.state(ids.3), State::Completed);
    // The failed task restarts after its backoff, counted once, at its placement.
    h.worker("10.0.0.1:5556", "w1");
    h.place_on("w1");
    h.advance(restart_backoff(1));
    let mut placed_now = h.place_on("w1");
    placed_now.sort();
    assert_eq!(placed_now, vec![ids.2]);
    assert_eq!(h.task(ids.2).restart_count, 2);
}

#[test]
fn a_task_that_fits_nowhere_waits_with_the_reason_and_is_placed_when_room_appears() {
    let mut h = Harness::new();
    let id = h.submit(task("sleep"));
    let effects = h.take();
    assert!(effects.iter().any(|e| matches!(e, Effect::Place(_))));
    let now = h.now();
    h.core
        .placed(now, vec![(id, Err(NoFit::room("no worker has room")))]);
    let t = h.task(id);
    assert_eq!(t.state, State::Pending);
    assert_eq!(t.error.as_deref(), Some("no worker has room"));
    assert!(!h.take().iter().any(|e| matches!(e, Effect::Place(_))));
    h.worker("10.0.0.1:5556", "w1");
    let now = h.now();
    h.core.capacity_available(now, room(4.0, 4.0));
    assert!(
        !h.take().iter().any(|e| matches!(e, Effect::Place(_))),
        "announcements a moment apart make one retry"
    );
    h.advance(ROOM_DEBOUNCE);
    assert_eq!(h.place_on("w1"), vec![id]);
}

/// Room of `total` cores in all, `largest` on the roomiest node.
fn room(total: f64, largest: f64) -> Room {
    let r = |cpu| Resources {
        cpu,
        memory: 1 << 40,
        disk: 1 << 40,
    };
    Room {
        total: r(total),
        largest: r(largest),
    }
}

#[test]
fn a_burst_of_room_retries_only_the_waiting_tasks_that_might_fit_and_then_the_rest() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let ids: Vec<Uuid> = (0..4)
        .map(|_| {
            let mut t = task("sleep");
            t.cpu = 1.0;
            h.submit(t)
        })
        .collect();
    let mut big = task("sleep");
    big.cpu = 8.0;
    let big = h.submit(big);
    // The cluster is full: every request is answered "fits nowhere".
    loop {
        let asked: Vec<Uuid> = h
            .take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Place(batch) => Some(batch.into_iter().map(|r| r.id)),
                _ => None,
            })
            .flatten()
            .collect();
        if asked.is_empty() {
            break;
        }
        let now = h.now();
        let full = asked
            .into_iter()
            .map(|id| (id, Err(NoFit::room("no worker has room"))))
            .collect();
        h.core.placed(now, full);
    }
    let now = h.now();
    // Many releases in a burst: one retry, of the two tasks that fit in two free cores.
    for _ in 0..100 {
        h.core.capacity_available(now, room(2.0, 2.0));
    }
    h.advance(ROOM_DEBOUNCE);
    let first = h.place_on("w1");
    assert_eq!(first, ids[..2].to_vec());
    // The answer shows room left: the held-back tasks that might fit follow; the big one
    // fits on no node and keeps waiting.
    h.core.room_left(room(2.0, 1.0));
    let now = h.now();
    h.core.placed(
        now,
        first.iter().map(|id| (*id, Ok("w1".to_string()))).collect(),
    );
    let effects = h.take();
    let asked: Vec<Uuid> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Place(batch) => Some(batch.iter().map(|r| r.id).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(asked, ids[2..].to_vec());
    assert_eq!(h.state(big), State::Pending);
}

#[test]
fn room_announced_while_the_scheduler_chose_outlives_its_older_answer() {
    let mut h = Harness::new();
    let mut t = task("sleep");
    t.cpu = 1.0;
    let id = h.submit(t);
    assert!(h.take().iter().any(|e| matches!(e, Effect::Place(_))));
    // A worker comes up while the scheduler chooses: its room is announced, and arrives
    // before the answer the scheduler made without it (they travel apart).
    h.worker("10.0.0.1:5556", "w1");
    let now = h.now();
    h.core.capacity_available(now, room(4.0, 4.0));
    h.core.room_left(room(0.0, 0.0));
    let why = "no worker is registered yet; waiting for one";
    h.core.placed(now, vec![(id, Err(NoFit::room(why)))]);
    assert_eq!(
        h.place_on("w1"),
        vec![id],
        "asked again at once, in the room announced"
    );
    assert_eq!(h.state(id), State::Scheduled);
}

#[test]
fn records_are_written_for_every_change_a_user_can_see() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    let writes = h.core.take_writes();
    assert!(writes.tasks.is_empty(), "drained by the harness");
    h.start_ok("w1", id, 1);
    let now = h.now();
    h.core.report(
        now,
        ep,
        false,
        false,
        vec![seen(&h.task(id), 1, State::Running)],
    );
    let writes = h.core.take_writes();
    assert_eq!(writes.tasks.len(), 1);
    assert_eq!(writes.tasks[0].1.state, State::Running);
}

#[test]
fn a_task_s_first_record_is_its_creation_and_again_when_its_commit_failed() {
    let mut h = Harness::new();
    let t = task("sleep");
    let id = t.id;
    let now = h.now();
    assert!(matches!(h.core.submit(now, t), Ok(Submitted::Created(_))));
    let first = h.core.take_writes();
    assert_eq!(first.created, vec![id]);
    // The commit failed: the record, and its being the first, are written again.
    h.core.unwritten(first);
    assert_eq!(h.core.take_writes().created, vec![id]);
    h.core.submit_committed(&[id], true);
    h.core.stop(h.now(), id).expect("a known task stops");
    let later = h.core.take_writes();
    assert_eq!(later.tasks.len(), 1);
    assert!(
        later.created.is_empty(),
        "only the first record is a creation"
    );
}

#[test]
fn a_joining_worker_is_bound_durably_and_a_live_name_is_not_taken() {
    let mut h = Harness::new();
    assert_eq!(h.core.join(h.now(), "w1", "10.0.0.1:5556"), Ok(true));
    let writes = h.core.take_writes();
    assert_eq!(
        writes.nodes,
        vec![("w1".into(), NodeRecord::at("10.0.0.1:5556"))]
    );
    assert_eq!(
        h.core.join(h.now(), "w1", "10.0.0.1:5556"),
        Ok(false),
        "joining again is a no-op"
    );
    let ep = h.worker("10.0.0.1:5556", "w1");
    let view = h.core.endpoints();
    assert_eq!(view.len(), 1, "{view:?}");
    assert_eq!(view[0].status, NodeStatus::Ready);
    // Another address claims the live name: refused, naming the holder.
    assert_eq!(
        h.core.join(h.now(), "w1", "10.0.0.2:5556"),
        Err(NodeRefusal::NameTaken {
            name: "w1".into(),
            address: "10.0.0.1:5556".into()
        })
    );
    // Once the holder is Down the name moves.
    let now = h.now();
    h.core.node_down(now, ep);
    assert_eq!(h.core.join(h.now(), "w1", "10.0.0.2:5556"), Ok(true));
    let ep2 = h.worker("10.0.0.2:5556", "w1");
    let view = h.core.endpoints();
    let bound: Vec<_> = view.iter().filter(|v| v.endpoint == ep2).collect();
    assert_eq!(bound[0].status, NodeStatus::Ready, "{view:?}");
}

#[test]
fn a_node_is_forgotten_only_without_tasks_and_then_for_good() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    h.worker("10.0.0.2:5556", "w2");
    let id = h.running_on(ep, "w1", task("sleep"));
    assert_eq!(
        h.core.forget("w1"),
        Err(NodeRefusal::HasTasks {
            name: "w1".into(),
            tasks: vec![id]
        })
    );
    assert!(
        NodeRefusal::HasTasks {
            name: "w1".into(),
            tasks: vec![id]
        }
        .to_string()
        .contains(&id.to_string())
    );
    assert_eq!(h.core.forget("w9"), Err(NodeRefusal::NotFound("w9".into())));
    // Once the task is done the node goes: out of the store, the view and the scheduler.
    let now = h.now();
    h.core.stop(now, id).unwrap();
    let mut done = seen(&h.task(id), 1, State::Completed);
    done.desired = Goal::Stopped;
    h.stop_result("w1", id, 1, Ok(done.clone()));
    h.report(ep, false, vec![done]);
    assert_eq!(h.state(id), State::Completed);
    h.take();
    assert_eq!(h.core.forget("w1"), Ok(()));
    assert_eq!(h.core.take_writes().forgotten, vec!["w1".to_string()]);
    let effects = h.take();
    assert!(effects.contains(&Effect::Disconnect(ep)), "{effects:?}");
    assert!(effects.contains(&Effect::NodeReady {
        name: "w1".into(),
        ready: false
    }));
    let names: Vec<_> = h.core.endpoints().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec![Some("w2".to_string())]);
    // What the old proxy still says counts for nothing.
    let now = h.now();
    h.core.node_up(now, ep, "w1");
    assert_eq!(h.core.endpoints().len(), 1);
    assert!(h.core.bound_addresses().iter().all(|(n, _)| n != "w1"));
    // The name can join again, as a new node.
    assert_eq!(h.core.join(h.now(), "w1", "10.0.0.1:5556"), Ok(true));
    h.worker("10.0.0.1:5556", "w1");
    assert_eq!(h.core.endpoints().len(), 2);
}

#[test]
fn a_join_at_an_address_held_by_another_live_name_is_refused_and_nothing_stays_connecting() {
    let mut h = Harness::new();
    // a joins at an address where nothing answers yet; the shell watches it.
    assert_eq!(h.core.join(h.now(), "a", "10.0.0.1:5556"), Ok(true));
    let ep = h.core.add_endpoint("10.0.0.1:5556");
    assert!(matches!(
        h.core.join(h.now(), "b", "10.0.0.1:5556"),
        Err(NodeRefusal::AddressTaken { .. })
    ));
    // Nothing answers: a is Down after the node timeout (its proxy says so).
    h.advance(TIMEOUT);
    let now = h.now();
    h.core.node_down(now, ep);
    assert_eq!(h.core.join(h.now(), "b", "10.0.0.1:5556"), Ok(true));
    h.advance(TIMEOUT);
    let statuses: Vec<_> = h
        .core
        .endpoints()
        .into_iter()
        .map(|v| (v.name.unwrap_or_default(), v.status))
        .collect();
    assert!(
        statuses.iter().all(|(_, s)| *s == NodeStatus::Down),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|(n, _)| n == "b"), "{statuses:?}");
}

#[test]
fn a_down_name_that_joins_at_a_new_address_moves_there() {
    let mut h = Harness::new();
    let old = h.worker("10.0.0.1:5556", "w1");
    let now = h.now();
    h.core.node_down(now, old);
    h.take();
    assert_eq!(h.core.join(h.now(), "w1", "10.0.0.9:5556"), Ok(true));
    assert!(h.take().contains(&Effect::Disconnect(old)));
    let new = h.core.add_endpoint("10.0.0.9:5556");
    let views = h.core.endpoints();
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0].name.as_deref(), Some("w1"));
    assert_eq!(views[0].address, "10.0.0.9:5556");
    let now = h.now();
    h.core.node_up(now, new, "w1");
    assert_eq!(h.core.endpoints()[0].status, NodeStatus::Ready);
}

// ---- retention ---------------------------------------------------------------------------

const RETENTION: Duration = Duration::from_secs(60);

fn retaining(count: usize) -> Harness {
    Harness::recover_with(
        Config::new(TIMEOUT).with_retention(RETENTION, count),
        Vec::new(),
        Vec::new(),
    )
}

/// A task run on `node` until it exits with `code`, as the worker reports it.
fn finished_on(h: &mut Harness, ep: EndpointId, node: &str, t: Task, code: i64) -> Uuid {
    let id = h.running_on(ep, node, t);
    let mut r = seen(
        &h.task(id),
        1,
        if code == 0 {
            State::Completed
        } else {
            State::Failed
        },
    );
    r.exit_code = Some(code);
    h.report(ep, false, vec![r]);
    id
}

#[test]
fn a_finished_task_is_collected_after_the_retention_and_leaves_a_tombstone() {
    let mut h = retaining(1000);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = finished_on(&mut h, ep, "w1", task("true"), 0);
    assert_eq!(h.state(id), State::Completed);
    h.advance(RETENTION / 2);
    assert!(h.core.task(id).is_some(), "kept during the retention");
    h.advance(RETENTION);
    assert!(h.core.task(id).is_none(), "collected after it");
    let tomb = h.core.collected(id).expect("a tombstone").clone();
    assert_eq!((tomb.id, tomb.state), (id, State::Completed));
    assert_eq!(h.core.counts()[State::Completed.index()], 0);
    // The id stays reserved, and reads and stops say it was collected.
    let mut again = task("true");
    again.id = id;
    let now = h.now();
    assert!(matches!(
        h.core.submit(now, again),
        Err(Refusal::Collected(_))
    ));
    assert!(matches!(h.core.stop(now, id), Err(Refusal::Collected(_))));
    // The tombstone lives its time, then the id is free.
    h.advance(RETENTION * TOMBSTONE_LIFE_FACTOR);
    assert!(h.core.collected(id).is_none());
}

#[test]
fn the_collection_is_written_as_a_removal_and_a_tombstone() {
    let mut h = retaining(1000);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = finished_on(&mut h, ep, "w1", task("true"), 0);
    let key = h.core.tasks[&id].key;
    h.mono += RETENTION * 2;
    let now = h.now();
    h.core.tick(now);
    let writes = h.core.take_writes();
    assert_eq!(writes.collected.len(), 1);
    assert_eq!(writes.collected[0].0, key);
    assert_eq!(writes.collected[0].1.id, id);
    // Not written: written again with the next step.
    h.core.unwritten(writes);
    assert_eq!(h.core.take_writes().collected.len(), 1);
}

#[test]
fn a_task_with_restarts_left_or_running_is_never_collected() {
    let mut h = retaining(0);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut retried = task("false");
    retried.restart_policy = RestartPolicy::OnFailure;
    retried.max_restarts = 3;
    let failing = finished_on(&mut h, ep, "w1", retried, 1);
    assert_eq!(h.state(failing), State::Failed);
    let running = h.running_on(ep, "w1", task("sleep"));
    h.advance(Duration::from_millis(500));
    assert!(h.core.task(failing).is_some(), "a restart is due");
    assert!(h.core.task(running).is_some());
    let mut once = task("false");
    once.restart_policy = RestartPolicy::Never;
    let gone = finished_on(&mut h, ep, "w1", once, 1);
    h.advance(Duration::from_secs(1));
    assert!(
        h.core.task(gone).is_none(),
        "failed for good, and over the count"
    );
}

#[test]
fn the_count_keeps_the_newest_finished_tasks() {
    let mut h = retaining(2);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(finished_on(&mut h, ep, "w1", task("true"), 0));
        h.mono += Duration::from_millis(10);
    }
    h.advance(Duration::from_secs(1));
    let kept: Vec<bool> = ids.iter().map(|id| h.core.task(*id).is_some()).collect();
    assert_eq!(kept, vec![false, false, false, true, true]);
    assert_eq!(h.core.counts()[State::Completed.index()], 2);
    assert_eq!(h.core.tombstone_count(), 3);
}

#[test]
fn a_finished_task_whose_stray_copy_still_runs_waits_for_it() {
    let mut h = retaining(1000);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("sleep"));
    // The worker is lost while the task runs there; the user stops the task meanwhile.
    let now = h.now();
    h.core.node_down(now, ep);
    h.core.stop(now, id).unwrap();
    h.take();
    assert_eq!(h.state(id), State::Completed);
    h.advance(RETENTION * 2);
    assert!(
        h.core.task(id).is_some(),
        "a copy was last seen running on w1: kept until it is gone"
    );
    // The worker comes back with the copy, which is stopped, then gone.
    let now = h.now();
    h.core.node_up(now, ep, "w1");
    assert_eq!(h.stops(), vec![("w1".to_string(), id, 1)]);
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    h.stop_result("w1", id, 1, Ok(seen(&h.task(id), 1, State::Completed)));
    h.advance(Duration::from_secs(1));
    assert!(h.core.task(id).is_none(), "collected once its copy ended");
    // A copy of the collected task reported running is stopped like any unknown task's.
    h.report(
        ep,
        false,
        vec![seen(
            &Task {
                id,
                ..task("sleep")
            },
            1,
            State::Running,
        )],
    );
    assert_eq!(h.stops(), vec![("w1".to_string(), id, 1)]);
}

#[test]
fn collection_goes_in_batches() {
    let mut config = Config::new(TIMEOUT).with_retention(RETENTION, 1_000_000);
    config.collect_batch = 3;
    let mut h = Harness::recover_with(config, Vec::new(), Vec::new());
    let ep = h.worker("10.0.0.1:5556", "w1");
    let ids: Vec<Uuid> = (0..7)
        .map(|_| finished_on(&mut h, ep, "w1", task("true"), 0))
        .collect();
    h.mono += RETENTION * 2;
    let now = h.now();
    h.core.tick(now);
    assert_eq!(h.core.take_writes().collected.len(), 3);
    h.advance(Duration::from_millis(5));
    assert_eq!(
        ids.iter().filter(|id| h.core.task(**id).is_none()).count(),
        6
    );
    h.advance(Duration::from_millis(5));
    assert!(ids.iter().all(|id| h.core.task(*id).is_none()));
}

#[test]
fn recovered_tombstones_keep_ids_reserved_and_expired_ones_go() {
    let mut h = retaining(1000);
    let now = h.now();
    let fresh = Tombstone {
        id: Uuid::new_v4(),
        state: State::Completed,
        finished_at: now.wall,
        collected_at: now.wall,
    };
    let old = Tombstone {
        collected_at: now.wall - chrono::Duration::days(30),
        id: Uuid::new_v4(),
        ..fresh.clone()
    };
    h.core
        .restore_tombstones(now, vec![fresh.clone(), old.clone()]);
    assert!(h.core.collected(fresh.id).is_some());
    assert!(h.core.collected(old.id).is_none());
    assert_eq!(h.core.take_writes().expired, vec![old.id]);
}

#[test]
fn counts_follow_every_change() {
    let mut h = retaining(1000);
    let ep = h.worker("10.0.0.1:5556", "w1");
    let running = h.running_on(ep, "w1", task("sleep"));
    let done = finished_on(&mut h, ep, "w1", task("true"), 0);
    h.submit(task("waits"));
    let c = h.core.counts();
    assert_eq!(
        (
            c[State::Pending.index()],
            c[State::Running.index()],
            c[State::Completed.index()]
        ),
        (1, 1, 1)
    );
    let _ = (running, done);
    let mut recount = [0; State::COUNT];
    for t in h.core.tasks() {
        recount[t.state.index()] += 1;
    }
    assert_eq!(h.core.counts(), recount);
}

// ---- node facts, availability and constraints (facts.rs) ----------------------------------

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn told_facts(effects: &[Effect], node: &str) -> Option<PlacementFacts> {
    effects.iter().rev().find_map(|e| match e {
        Effect::NodeFacts { name, facts } if name == node => Some(facts.clone()),
        _ => None,
    })
}

impl Harness {
    fn change(&mut self, node: &str, change: NodeChange) -> Result<NodeInfo, NodeRefusal> {
        let now = self.now();
        let out = self.core.change_node(now, node, change);
        self.effects.extend(self.core.take_effects());
        out
    }

    fn set_availability(&mut self, node: &str, a: Availability, deadline: Option<Duration>) {
        let change = NodeChange {
            availability: Some(a),
            deadline,
            ..NodeChange::default()
        };
        self.change(node, change).expect("a known node");
    }

    /// Answer the scheduler's pending request with "fits nowhere" and this reason.
    fn no_fit(&mut self, reason: &str) -> Vec<Uuid> {
        let effects = self.take();
        let mut asked = Vec::new();
        for e in effects {
            if let Effect::Place(batch) = e {
                asked.extend(batch.into_iter().map(|r| r.id));
            }
        }
        let now = self.now();
        self.core.placed(
            now,
            asked
                .iter()
                .map(|id| (*id, Err(NoFit::unsatisfied(reason))))
                .collect(),
        );
        self.drain();
        asked
    }
}

#[test]
fn worker_facts_and_the_operators_labels_reach_the_scheduler_and_the_operators_win() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let now = h.now();
    let facts = NodeFacts {
        labels: labels(&[("zone", "a"), ("disk", "ssd")]),
        volumes: vec!["db".into()],
        allowed_host_paths: vec!["/srv/data".into()],
    };
    h.core.node_facts(now, ep, facts.clone());
    let effects = h.take();
    let told = told_facts(&effects, "w1").expect("the scheduler is told");
    assert_eq!(told.labels, facts.labels);
    assert_eq!(told.volumes, vec!["db".to_string()]);
    assert_eq!(told.allowed_host_paths, vec!["/srv/data".to_string()]);
    // The same facts again tell nobody anything.
    h.core.node_facts(now, ep, facts);
    assert_eq!(told_facts(&h.take(), "w1"), None);
    let info = h
        .change(
            "w1",
            NodeChange {
                labels: labels(&[("zone", "b")]),
                remove_labels: vec!["rack".into()],
                ..NodeChange::default()
            },
        )
        .expect("w1 is known");
    assert_eq!(info.labels, labels(&[("zone", "b"), ("disk", "ssd")]));
    assert_eq!(
        info.worker_labels,
        labels(&[("zone", "a"), ("disk", "ssd")])
    );
    assert_eq!(info.manager_labels, labels(&[("zone", "b")]));
    let writes = h.core.take_writes();
    assert_eq!(writes.nodes[0].1.labels, labels(&[("zone", "b")]));
    let told = told_facts(&h.take(), "w1").expect("told again");
    assert_eq!(told.labels.get("zone").map(String::as_str), Some("b"));
    // Bad labels and unknown nodes are refused, naming what is wrong.
    let bad = h.change(
        "w1",
        NodeChange {
            labels: labels(&[("node", "x")]),
            ..NodeChange::default()
        },
    );
    assert!(matches!(bad, Err(NodeRefusal::BadChange(m)) if m.contains("reserved")));
    let bad = h.change(
        "w1",
        NodeChange {
            labels: labels(&[("zone", "a b")]),
            ..NodeChange::default()
        },
    );
    assert!(matches!(bad, Err(NodeRefusal::BadChange(m)) if m.contains("spaces")));
    assert_eq!(
        h.change("w9", NodeChange::default()).unwrap_err(),
        NodeRefusal::NotFound("w9".into())
    );
}

#[test]
fn a_task_waiting_for_a_constraint_is_asked_again_when_a_label_changes() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let mut t = task("sleep");
    t.constraints = vec!["zone==a".parse().expect("a constraint")];
    let id = h.submit(t);
    let reason = "no Ready node satisfies zone==a (w1: no zone)";
    assert_eq!(h.no_fit(reason), vec![id]);
    assert_eq!(h.task(id).state, State::Pending);
    assert_eq!(h.task(id).error.as_deref(), Some(reason));
    assert!(!h.take().iter().any(|e| matches!(e, Effect::Place(_))));
    h.change(
        "w1",
        NodeChange {
            labels: labels(&[("zone", "a")]),
            ..NodeChange::default()
        },
    )
    .expect("w1 is known");
    let effects = h.take();
    let facts_at = effects
        .iter()
        .position(|e| matches!(e, Effect::NodeFacts { .. }));
    let place_at = effects.iter().position(
        |e| matches!(e, Effect::Place(b) if b.iter().any(|r| r.id == id && r.constraints.len() == 1)),
    );
    assert!(
        facts_at.is_some() && place_at.is_some() && facts_at < place_at,
        "the scheduler hears the label before the task is asked again: {effects:?}"
    );
}

#[test]
fn a_paused_node_keeps_what_runs_and_a_placement_there_is_asked_again() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let running = h.running_on(ep, "w1", task("sleep"));
    h.set_availability("w1", Availability::Pause, None);
    let effects = h.take();
    assert_eq!(
        told_facts(&effects, "w1").map(|f| f.availability),
        Some(Availability::Pause)
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Stop { .. })));
    assert_eq!(h.state(running), State::Running);
    // The scheduler chose w1 before it heard of the pause: the task is asked again.
    let id = h.submit(task("sleep"));
    h.place_on("w1");
    assert_eq!(h.state(id), State::Pending);
    let effects = h.take();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Release(ids) if ids.contains(&id)))
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Place(b) if b.iter().any(|r| r.id == id)))
    );
    h.set_availability("w1", Availability::Active, None);
    assert_eq!(
        told_facts(&h.take(), "w1").map(|f| f.availability),
        Some(Availability::Active)
    );
}

#[test]
fn a_drain_moves_tasks_of_no_service_stops_their_copies_and_leaves_service_tasks() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    h.worker("10.0.0.2:5556", "w2");
    let plain = h.running_on(ep, "w1", task("sleep"));
    let mut web = task("serve");
    web.service = Some("web".into());
    let web = h.running_on(ep, "w1", web);
    h.set_availability("w1", Availability::Drain, Some(Duration::from_secs(60)));
    let t = h.task(plain);
    assert_eq!(t.state, State::Pending);
    assert_eq!(t.worker, None);
    assert_eq!(t.restart_count, 0, "a move is not a restart");
    assert!(
        t.error
            .as_deref()
            .is_some_and(|e| e.contains("w1 is draining")),
        "{t:?}"
    );
    assert_eq!(
        h.state(web),
        State::Running,
        "a service's task is the services' to move"
    );
    let nid = h.core.node_named("w1").expect("w1 is known");
    assert_eq!(h.core.availability(nid), Availability::Drain);
    assert_eq!(
        h.core.drain_deadline(nid),
        Some(h.mono + Duration::from_secs(60))
    );
    assert_eq!(h.core.tasks_on(nid).collect::<Vec<_>>(), vec![web]);
    let effects = h.take();
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Stop { node, id, attempt: 1, .. } if node == "w1" && *id == plain)));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Place(b) if b.iter().any(|r| r.id == plain)))
    );
    h.effects = effects
        .into_iter()
        .filter(|e| matches!(e, Effect::Place(_)))
        .collect();
    h.place_on("w2");
    let t = h.task(plain);
    assert_eq!((t.state, t.attempt), (State::Scheduled, 2));
    assert_eq!(t.worker.as_deref(), Some("w2"));
    // The node stays up and in the records.
    assert_eq!(h.core.node_status("w1"), Some(NodeStatus::Ready));
    // Activated again, the deadline goes.
    h.set_availability("w1", Availability::Active, None);
    assert_eq!(h.core.drain_deadline(nid), None);
}

#[test]
fn a_task_reported_on_a_draining_node_after_a_restart_moves_too() {
    let mut t = task("sleep");
    t.state = State::Running;
    t.attempt = 1;
    t.worker = Some("w1".into());
    let id = t.id;
    let record = NodeRecord {
        availability: Availability::Drain,
        ..NodeRecord::at("10.0.0.1:5556")
    };
    let mut h = Harness {
        core: Core::recover(
            Config::new(TIMEOUT),
            Now {
                mono: Duration::ZERO,
                wall: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            },
            vec![(0, t)],
            vec![("w1".into(), record)],
        ),
        mono: Duration::ZERO,
        effects: Vec::new(),
    };
    let effects = h.take();
    assert_eq!(
        told_facts(&effects, "w1").map(|f| f.availability),
        Some(Availability::Drain),
        "the scheduler hears the drain at start-up"
    );
    let ep = h.worker("10.0.0.1:5556", "w1");
    h.report(ep, true, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(h.state(id), State::Pending);
    assert!(h.stops().contains(&("w1".to_string(), id, 1)));
}

#[test]
fn labels_availability_and_a_drain_deadline_survive_recovery() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    h.change(
        "w1",
        NodeChange {
            availability: Some(Availability::Drain),
            deadline: Some(Duration::from_secs(90)),
            labels: labels(&[("zone", "a")]),
            ..NodeChange::default()
        },
    )
    .expect("w1 is known");
    let written = h.core.take_writes().nodes;
    assert_eq!(written.len(), 1);
    // Thirty seconds later the manager restarts from what was written.
    let wall = Utc.timestamp_opt(1_800_000_030, 0).unwrap();
    let mut core = Core::recover(
        Config::new(TIMEOUT),
        Now {
            mono: Duration::from_secs(1000),
            wall,
        },
        vec![],
        written,
    );
    let info = core.node_info("w1").expect("w1 is known");
    assert_eq!(info.availability, Availability::Drain);
    assert_eq!(info.manager_labels, labels(&[("zone", "a")]));
    assert_eq!(
        info.drain_deadline,
        Some(Utc.timestamp_opt(1_800_000_090, 0).unwrap())
    );
    let nid = core.node_named("w1").expect("w1 is known");
    assert_eq!(core.drain_deadline(nid), Some(Duration::from_secs(1060)));
    let facts = told_facts(&core.take_effects(), "w1").expect("told at start-up");
    assert_eq!(facts.labels, labels(&[("zone", "a")]));
    assert_eq!(facts.availability, Availability::Drain);
}

#[test]
fn a_host_path_no_known_worker_allows_is_refused_only_once_workers_are_known() {
    let mut h = Harness::new();
    let mut t = task("sleep");
    t.volumes = vec![crate::volume::Volume::parse("/etc:/x").expect("a volume")];
    assert_eq!(h.core.check_host_paths(&t), Ok(()), "nothing is known yet");
    let ep = h.worker("10.0.0.1:5556", "w1");
    let now = h.now();
    h.core.node_facts(
        now,
        ep,
        NodeFacts {
            allowed_host_paths: vec!["/srv/data".into()],
            ..NodeFacts::default()
        },
    );
    let err = h.core.check_host_paths(&t).unwrap_err();
    assert!(
        err.contains("volumes[0]") && err.contains("/etc") && err.contains("w1 allows /srv/data"),
        "{err}"
    );
    t.volumes = vec![crate::volume::Volume::parse("/srv/data/x:/x").expect("a volume")];
    assert_eq!(h.core.check_host_paths(&t), Ok(()));
}

#[test]
fn tasks_no_node_satisfies_wait_for_node_facts_and_never_hold_back_tasks_waiting_for_room() {
    let mut h = Harness::new();
    h.worker("10.0.0.1:5556", "w1");
    let mut constrained = Vec::new();
    for _ in 0..10 {
        let mut t = task("sleep");
        t.cpu = 1.0;
        t.constraints = vec!["zone==c".parse().expect("a constraint")];
        constrained.push(h.submit(t));
    }
    let mut plain = task("sleep");
    plain.cpu = 1.0;
    let plain = h.submit(plain);
    // Answer every request: the constrained tasks no node satisfies, the plain one no room.
    let asked_again = |h: &mut Harness| -> Vec<Uuid> {
        let mut asked = Vec::new();
        loop {
            let batch: Vec<Uuid> = h
                .take()
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Place(b) => Some(b.into_iter().map(|r| r.id)),
                    _ => None,
                })
                .flatten()
                .collect();
            if batch.is_empty() {
                return asked;
            }
            let now = h.now();
            let answers = batch
                .iter()
                .map(|&id| {
                    let no_fit = if id == plain {
                        NoFit::room("w1 has 0.00 of 1.00 cores free")
                    } else {
                        NoFit::unsatisfied("no Ready node satisfies zone==c (w1: no zone)")
                    };
                    (id, Err(no_fit))
                })
                .collect();
            h.core.placed(now, answers);
            asked.extend(batch);
        }
    };
    assert_eq!(asked_again(&mut h).len(), 11);
    // Room for one task: the task waiting for room is asked, not those no node satisfies.
    let now = h.now();
    h.core.capacity_available(now, room(1.0, 1.0));
    h.advance(ROOM_DEBOUNCE);
    assert_eq!(asked_again(&mut h), vec![plain]);
    // A node coming up may satisfy them: all are asked again.
    h.worker("10.0.0.2:5556", "w2");
    let mut again = asked_again(&mut h);
    again.sort();
    constrained.sort();
    assert_eq!(again, constrained);
}

#[test]
fn the_tally_counts_placements_and_restarts_and_only_a_first_run_has_a_latency() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let mut t = task("fail");
    t.max_restarts = 1;
    t.created_at = h.now().wall;
    let id = h.submit(t);
    h.place_on("w1");
    h.start_ok("w1", id, 1);
    h.advance(Duration::from_secs(3));
    h.report(ep, false, vec![seen(&h.task(id), 1, State::Running)]);
    assert_eq!(
        h.core.take_running_latencies(),
        vec![Duration::from_secs(3)]
    );
    assert_eq!(
        h.core.tally(),
        Tally {
            placements: 1,
            restarts: 0,
            health_check_failures: 0
        }
    );
    let mut failed = seen(&h.task(id), 1, State::Failed);
    failed.exit_code = Some(3);
    h.report(ep, false, vec![failed]);
    h.advance(MIN_RESTART_BACKOFF);
    assert_eq!(h.place_on("w1"), vec![id]);
    h.start_ok("w1", id, 2);
    h.report(ep, false, vec![seen(&h.task(id), 2, State::Running)]);
    assert_eq!(h.state(id), State::Running);
    assert!(
        h.core.take_running_latencies().is_empty(),
        "a restart is not a submission's latency"
    );
    assert_eq!((h.core.tally().placements, h.core.tally().restarts), (2, 1));
}

#[test]
fn the_tally_counts_every_failed_health_check_of_a_running_attempt() {
    let mut h = Harness::new();
    let ep = h.worker("10.0.0.1:5556", "w1");
    let id = h.running_on(ep, "w1", task("serve"));
    let now = h.now();
    h.core.health_checked(now, id, 1, Err("refused".into()));
    h.core.health_checked(now, id, 1, Ok(()));
    h.core.health_checked(now, id, 1, Err("refused".into()));
    // An older attempt's check is not about what runs: not counted.
    h.core.health_checked(now, id, 0, Err("refused".into()));
    assert_eq!(h.core.tally().health_check_failures, 2);
}
