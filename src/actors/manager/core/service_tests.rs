//! Services in the core: a small world of workers that answer every call at once (a start
//! runs, or fails when its image says so; a stop ends the copy), a scheduler that deals tasks
//! round-robin, and a clock moved by hand. Each test checks what a user of services relies on.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;
use crate::node::Availability;
use crate::service::{FailureAction, Mode, Order, RolloutState, ServiceSpec, UpdateConfig};

struct World {
    core: Core,
    mono: Duration,
    /// (endpoint, name, up).
    nodes: Vec<(EndpointId, String, bool)>,
    next: usize,
    /// What runs on each node: task → attempt.
    running: BTreeMap<String, BTreeMap<Uuid, u32>>,
    /// Health checks asked for: task → attempt.
    watched: BTreeMap<Uuid, u32>,
}

fn now_at(mono: Duration) -> Now {
    Now {
        mono,
        wall: Utc.timestamp_opt(1_800_000_000, 0).unwrap()
            + chrono::Duration::from_std(mono).unwrap(),
    }
}

impl World {
    fn new(nodes: usize) -> World {
        let core = Core::recover(
            Config::new(Duration::from_secs(5)),
            now_at(Duration::ZERO),
            Vec::new(),
            Vec::new(),
        );
        let mut w = World {
            core,
            mono: Duration::ZERO,
            nodes: Vec::new(),
            next: 0,
            running: BTreeMap::new(),
            watched: BTreeMap::new(),
        };
        for i in 1..=nodes {
            let name = format!("w{i}");
            let ep = w.core.add_endpoint(&format!("10.0.0.{i}:5556"));
            w.core.node_up(w.now(), ep, &name);
            w.core.report(w.now(), ep, true, false, Vec::new());
            w.nodes.push((ep, name, true));
        }
        w.pump();
        w
    }

    fn now(&self) -> Now {
        now_at(self.mono)
    }

    fn ep(&self, node: &str) -> EndpointId {
        self.nodes.iter().find(|n| n.1 == node).unwrap().0
    }

    /// Carry out every effect, and what follows, until nothing is left.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let _ = self.core.take_writes();
            let effects = self.core.take_effects();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                self.carry_out(e);
            }
        }
        panic!("the core never settles");
    }

    fn carry_out(&mut self, effect: Effect) {
        let now = self.now();
        match effect {
            Effect::Place(batch) => {
                let mut placed = Vec::new();
                for r in batch {
                    let pin = self
                        .core
                        .task(r.id)
                        .and_then(|t| t.constraints.iter().find(|c| c.key == "node").cloned());
                    let up: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|n| n.2)
                        .map(|n| n.1.clone())
                        .filter(|n| {
                            self.core.node_named(n).is_none_or(|nid| {
                                self.core.availability(nid) == Availability::Active
                            })
                        })
                        .filter(|n| pin.as_ref().is_none_or(|c| &c.value == n))
                        .collect();
                    let choice = if up.is_empty() {
                        Err(crate::actors::scheduler::NoFit::room("no node"))
                    } else {
                        self.next += 1;
                        Ok(up[self.next % up.len()].clone())
                    };
                    placed.push((r.id, choice));
                }
                self.core.placed(now, placed);
            }
            Effect::Start { node, task, .. } => {
                let up = self.nodes.iter().any(|n| n.1 == node && n.2);
                if !up {
                    return;
                }
                let ep = self.ep(&node);
                let mut t = *task;
                let key = (t.id, t.attempt, CallKind::Start);
                t.state = State::Scheduled;
                self.core.call_done(now, &node, key, Ok(Seen::from(&t)));
                t.worker = Some(node.clone());
                if t.image.contains("bad") {
                    t.state = State::Failed;
                    t.exit_code = Some(1);
                    t.error = Some("exited with code 1".into());
                } else {
                    t.state = State::Running;
                    t.host_ports
                        .insert("80/tcp".into(), format!("{}", 30000 + t.slot));
                    self.running
                        .entry(node.clone())
                        .or_default()
                        .insert(t.id, t.attempt);
                }
                self.core.report(now, ep, false, false, vec![t]);
            }
            Effect::Stop {
                node, id, attempt, ..
            } => {
                let up = self.nodes.iter().any(|n| n.1 == node && n.2);
                if !up {
                    return;
                }
                let ep = self.ep(&node);
                let mut t = self
                    .core
                    .task(id)
                    .cloned()
                    .unwrap_or_else(|| Task::new("x"));
                t.id = id;
                t.attempt = attempt;
                t.state = State::Completed;
                self.core.call_done(
                    now,
                    &node,
                    (id, attempt, CallKind::Stop),
                    Ok(Seen::from(&t)),
                );
                if let Some(on) = self.running.get_mut(&node) {
                    on.remove(&id);
                }
                self.core.report(now, ep, false, false, vec![t]);
            }
            Effect::Watch { id, attempt, .. } => {
                self.watched.insert(id, attempt);
            }
            Effect::Unwatch(id) => {
                self.watched.remove(&id);
            }
            _ => {}
        }
    }

    /// Move the clock by steps of `step`, answering health checks, `n` times; calls `check`
    /// after each step.
    fn run(&mut self, n: usize, step: Duration, mut check: impl FnMut(&World)) {
        for _ in 0..n {
            self.mono += step;
            let now = self.now();
            let checks: Vec<(Uuid, u32)> = self.watched.iter().map(|(i, a)| (*i, *a)).collect();
            for (id, attempt) in checks {
                let unhealthy = self.core.task(id).is_some_and(|t| t.image.contains("sick"));
                let result = if unhealthy {
                    Err("503".to_string())
                } else {
                    Ok(())
                };
                self.core.health_checked(now, id, attempt, result);
            }
            self.core.tick(now);
            self.pump();
            check(self);
        }
    }

    /// Tasks of the service that really run (on a worker, as the manager's current attempt).
    fn running_of(&self, service: &str) -> Vec<Task> {
        let mut out = Vec::new();
        for on in self.running.values() {
            for (id, attempt) in on {
                if let Some(t) = self.core.task(*id)
                    && t.service.as_deref() == Some(service)
                    && t.attempt == *attempt
                    && t.state == State::Running
                {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    fn create(&mut self, spec: ServiceSpec) {
        let now = self.now();
        self.core.create_service(now, spec).unwrap();
        self.pump();
    }

    fn update(&mut self, f: impl FnOnce(&mut ServiceSpec)) {
        let name = self.core.service_names().next().unwrap().clone();
        let mut spec = self.core.service(&name).unwrap().spec();
        f(&mut spec);
        let now = self.now();
        self.core.update_service(now, spec).unwrap();
        self.pump();
    }

    fn view(&self, name: &str) -> crate::service::ServiceView {
        self.core.service_view(name).unwrap()
    }
}

fn web(replicas: u32, update: UpdateConfig) -> ServiceSpec {
    let mut task = Task::new("web:1");
    task.exposed_ports = vec!["80/tcp".into()];
    ServiceSpec {
        name: "web".into(),
        mode: Mode::Replicated,
        replicas,
        task,
        update,
    }
}

fn quick() -> UpdateConfig {
    UpdateConfig {
        min_healthy_s: 1,
        ..UpdateConfig::default()
    }
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_service_runs_its_replicas_in_named_slots_spread_over_the_nodes() {
    let mut w = World::new(3);
    w.create(web(4, quick()));
    let running = w.running_of("web");
    assert_eq!(running.len(), 4);
    let mut names: Vec<&str> = running.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["web.1", "web.2", "web.3", "web.4"]);
    let nodes: BTreeSet<_> = running.iter().map(|t| t.worker.clone()).collect();
    assert_eq!(nodes.len(), 3);
    assert!(running.iter().all(|t| t.version == 1));
    let v = w.view("web");
    assert_eq!((v.desired, v.running), (4, 4));
}

#[test]
fn scaling_adds_and_removes_the_highest_slots() {
    let mut w = World::new(2);
    w.create(web(2, quick()));
    w.update(|s| s.replicas = 5);
    assert_eq!(w.running_of("web").len(), 5);
    w.update(|s| s.replicas = 1);
    let running = w.running_of("web");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].name, "web.1");
}

#[test]
fn a_lost_node_s_tasks_run_elsewhere_and_the_count_comes_back() {
    let mut w = World::new(3);
    w.create(web(4, quick()));
    w.nodes[0].2 = false;
    w.running.remove("w1");
    let ep = w.nodes[0].0;
    let now = w.now();
    w.core.node_down(now, ep);
    w.pump();
    w.run(5, SEC, |_| {});
    let running = w.running_of("web");
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t.worker.as_deref() != Some("w1")));
}

#[test]
fn a_task_that_fails_for_good_is_replaced_in_its_slot() {
    let mut w = World::new(2);
    let mut spec = web(2, quick());
    spec.task.restart_policy = RestartPolicy::Never;
    w.create(spec);
    let victim = w.running_of("web")[0].clone();
    // Its container exits with an error: no restart left, so the service replaces it.
    let node = victim.worker.clone().unwrap();
    let ep = w.ep(&node);
    let mut t = victim.clone();
    t.state = State::Failed;
    t.exit_code = Some(2);
    w.running.get_mut(&node).unwrap().remove(&t.id);
    let now = w.now();
    w.core.report(now, ep, false, false, vec![t]);
    w.pump();
    w.run(3, SEC, |_| {});
    let running = w.running_of("web");
    assert_eq!(running.len(), 2);
    let replacement = running.iter().find(|t| t.slot == victim.slot).unwrap();
    assert_ne!(replacement.id, victim.id);
    assert_eq!(replacement.name, victim.name);
    assert_eq!(w.core.task(victim.id).unwrap().state, State::Failed);
}

#[test]
fn a_stop_first_rollout_replaces_one_slot_at_a_time_and_never_drops_below_replicas_minus_one() {
    let mut w = World::new(3);
    w.create(web(4, quick()));
    w.run(2, SEC, |_| {});
    w.update(|s| s.task.image = "web:2".into());
    assert_eq!(w.view("web").rollout.state, RolloutState::Updating);
    let mut low = usize::MAX;
    w.run(30, SEC, |w| low = low.min(w.running_of("web").len()));
    assert!(low >= 3, "dropped to {low} running");
    let running = w.running_of("web");
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t.image == "web:2" && t.version == 2));
    let v = w.view("web");
    assert_eq!(v.rollout.state, RolloutState::Completed);
    assert_eq!(v.previous_version, Some(1));
}

#[test]
fn a_start_first_rollout_never_drops_below_replicas() {
    let mut w = World::new(3);
    let update = UpdateConfig {
        order: Order::StartFirst,
        parallelism: 2,
        ..quick()
    };
    w.create(web(4, update));
    w.run(2, SEC, |_| {});
    w.update(|s| s.task.image = "web:2".into());
    let mut low = usize::MAX;
    w.run(30, SEC, |w| low = low.min(w.running_of("web").len()));
    assert!(low >= 4, "dropped to {low} running");
    assert!(w.running_of("web").iter().all(|t| t.version == 2));
}

#[test]
fn a_failing_image_rolls_back_by_itself_to_the_old_version_everywhere() {
    let mut w = World::new(3);
    let update = UpdateConfig {
        failure_action: FailureAction::Rollback,
        ..quick()
    };
    w.create(web(4, update));
    w.run(2, SEC, |_| {});
    w.update(|s| s.task.image = "web:bad".into());
    w.run(60, SEC, |_| {});
    let v = w.view("web");
    assert_eq!(v.rollout.state, RolloutState::RolledBack, "{:?}", v.rollout);
    assert!(
        v.rollout
            .message
            .as_deref()
            .unwrap_or("")
            .contains("failed")
    );
    assert_eq!(v.version, 1);
    let running = w.running_of("web");
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t.image == "web:1" && t.version == 1));
}

#[test]
fn an_unhealthy_image_pauses_the_rollout_by_default() {
    let mut w = World::new(2);
    let mut spec = web(3, quick());
    spec.task.health_check = Some("/".into());
    w.create(spec);
    w.run(3, SEC, |_| {});
    w.update(|s| s.task.image = "web:sick".into());
    w.run(60, SEC, |_| {});
    let v = w.view("web");
    assert_eq!(v.rollout.state, RolloutState::Paused, "{:?}", v.rollout);
    // Paused after the first slot: the others still run version 1.
    let old = w
        .running_of("web")
        .iter()
        .filter(|t| t.version == 1)
        .count();
    assert!(old >= 2, "{old} old tasks left");
}

#[test]
fn a_rollback_on_demand_returns_to_the_previous_template() {
    let mut w = World::new(2);
    w.create(web(2, quick()));
    w.update(|s| s.task.image = "web:2".into());
    w.run(20, SEC, |_| {});
    let now = w.now();
    w.core.rollback_service(now, "web").unwrap();
    w.pump();
    w.run(20, SEC, |_| {});
    let v = w.view("web");
    assert_eq!(v.rollout.state, RolloutState::RolledBack);
    assert!(w.running_of("web").iter().all(|t| t.image == "web:1"));
}

#[test]
fn a_deleted_service_stops_every_task_then_goes() {
    let mut w = World::new(2);
    w.create(web(3, quick()));
    let now = w.now();
    w.core.delete_service(now, "web").unwrap();
    w.pump();
    w.run(2, SEC, |_| {});
    assert!(w.running_of("web").is_empty());
    assert!(w.core.service("web").is_none());
    let writes = w.core.take_writes();
    assert!(writes.services.is_empty());
}

#[test]
fn a_global_service_runs_one_task_per_node_and_follows_nodes() {
    let mut w = World::new(2);
    let mut spec = web(0, quick());
    spec.mode = Mode::Global;
    w.create(spec);
    let names: BTreeSet<String> = w.running_of("web").into_iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        BTreeSet::from(["web.w1".to_string(), "web.w2".to_string()])
    );
    let ep = w.core.add_endpoint("10.0.0.3:5556");
    let now = w.now();
    w.core.node_up(now, ep, "w3");
    w.core.report(now, ep, true, false, Vec::new());
    w.nodes.push((ep, "w3".into(), true));
    w.pump();
    let on: BTreeSet<Option<String>> = w.running_of("web").into_iter().map(|t| t.worker).collect();
    assert_eq!(on.len(), 3);
}

#[test]
fn endpoints_follow_the_running_tasks() {
    let mut w = World::new(2);
    w.create(web(1, quick()));
    let (i1, list) = w.core.service_endpoints("web").unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].address.starts_with("10.0.0."));
    w.update(|s| s.replicas = 3);
    let (i2, list) = w.core.service_endpoints("web").unwrap();
    assert_eq!(list.len(), 3);
    assert!(i2 > i1);
}

#[test]
fn services_and_their_tasks_come_back_after_a_restart_and_carry_on() {
    let mut w = World::new(2);
    w.create(web(2, quick()));
    let svc = w.core.service("web").unwrap().clone();
    let records: Vec<(u64, Task)> = w
        .core
        .tasks()
        .cloned()
        .enumerate()
        .map(|(i, t)| (i as u64, t))
        .collect();
    let mut core = Core::recover(
        Config::new(Duration::from_secs(5)),
        w.now(),
        records,
        vec![
            ("w1".into(), NodeRecord::at("10.0.0.1:5556")),
            ("w2".into(), NodeRecord::at("10.0.0.2:5556")),
        ],
    );
    core.restore_services(w.now(), vec![svc]);
    let _ = core.take_effects();
    // Nothing new is made for slots whose tasks are recorded.
    assert_eq!(core.tasks().count(), 2);
    assert_eq!(core.service_view("web").unwrap().desired, 2);
}

fn drain(w: &mut World, node: &str, deadline: Option<Duration>) {
    let now = w.now();
    let change = NodeChange {
        availability: Some(Availability::Drain),
        deadline,
        ..NodeChange::default()
    };
    w.core.change_node(now, node, change).unwrap();
    w.pump();
}

#[test]
fn a_drained_node_s_service_tasks_start_elsewhere_first_and_the_node_ends_empty() {
    let mut w = World::new(3);
    w.create(web(4, quick()));
    w.run(2, SEC, |_| {});
    let on_w1 = w
        .running_of("web")
        .iter()
        .filter(|t| t.worker.as_deref() == Some("w1"))
        .count();
    assert!(on_w1 > 0);
    drain(&mut w, "w1", None);
    let mut low = usize::MAX;
    w.run(10, SEC, |w| low = low.min(w.running_of("web").len()));
    assert!(low >= 4, "the drain dipped to {low} running");
    let running = w.running_of("web");
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t.worker.as_deref() != Some("w1")));
    assert!(w.running.get("w1").is_none_or(|on| on.is_empty()));
    let nid = w.core.node_named("w1").unwrap();
    assert_eq!(w.core.tasks_on(nid).count(), 0);
}

#[test]
fn a_drain_s_deadline_stops_what_could_not_move() {
    let mut w = World::new(2);
    w.create(web(2, quick()));
    // Nowhere else to go: w2 is paused.
    let now = w.now();
    let pause = NodeChange {
        availability: Some(Availability::Pause),
        ..NodeChange::default()
    };
    w.core.change_node(now, "w2", pause).unwrap();
    w.pump();
    drain(&mut w, "w1", Some(Duration::from_secs(5)));
    w.run(2, SEC, |_| {});
    assert!(
        w.running.get("w1").is_some_and(|on| !on.is_empty()),
        "kept until the deadline"
    );
    w.run(5, SEC, |_| {});
    assert!(
        w.running.get("w1").is_none_or(|on| on.is_empty()),
        "stopped at the deadline"
    );
}

#[test]
fn a_global_service_leaves_a_drained_node() {
    let mut w = World::new(2);
    let mut spec = web(0, quick());
    spec.mode = Mode::Global;
    w.create(spec);
    assert_eq!(w.running_of("web").len(), 2);
    drain(&mut w, "w2", None);
    w.run(2, SEC, |_| {});
    let running = w.running_of("web");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].worker.as_deref(), Some("w1"));
    assert_eq!(w.view("web").desired, 1);
}

/// Found by the fault simulation (a livelock): a new task Running for `min_healthy_s` but not
/// yet passing its health check armed the service's timer at a time already past, so the
/// manager woke at once, again and again, until the check passed.
#[test]
fn a_task_waiting_for_its_health_check_arms_no_wake_up_in_the_past() {
    let mut w = World::new(2);
    let mut spec = web(2, quick());
    spec.task.health_check = Some("/".into());
    w.create(spec);
    // No health check answers yet: Running, long past min_healthy_s, not updated.
    w.mono += 5 * SEC;
    let now = w.now();
    w.core.tick(now);
    w.pump();
    assert!(!w.watched.is_empty());
    assert_eq!(w.view("web").updated, 0);
    if let Some(at) = w.core.next_timer() {
        assert!(at > now.mono, "a wake-up at {at:?}, now is {:?}", now.mono);
    }
    // The check passes: both count as updated, with no timer needed.
    w.run(1, SEC, |_| {});
    assert_eq!(w.view("web").updated, 2);
}

/// Found by the fault simulation: a start-first replacement overtaken by another change leaves
/// two old tasks in one slot; once the rollout paused, both ran for good (replicas + 1).
#[test]
fn a_paused_rollout_keeps_one_task_per_slot() {
    let mut w = World::new(2);
    let update = UpdateConfig {
        order: Order::StartFirst,
        min_healthy_s: 5,
        ..UpdateConfig::default()
    };
    w.create(web(2, update));
    w.run(6, SEC, |_| {});
    // Version 2 starts in slot 1 beside version 1, and before it counts as updated, version
    // 3 (which fails at once) overtakes it: slot 1 has two old tasks, and the rollout pauses.
    w.update(|s| s.task.image = "web:2".into());
    w.update(|s| s.task.image = "web:bad".into());
    w.run(10, SEC, |_| {});
    assert_eq!(w.view("web").rollout.state, RolloutState::Paused);
    let running = w.running_of("web");
    let slots: BTreeSet<u32> = running.iter().map(|t| t.slot).collect();
    assert_eq!(
        (running.len(), slots.len()),
        (2, 2),
        "{:?}",
        running
            .iter()
            .map(|t| (t.slot, t.version))
            .collect::<Vec<_>>()
    );
}

/// Found by the fault simulation: a global task on a node that was Down through a whole
/// rollout came back with the old version after the rollout completed, and stayed so.
#[test]
fn a_slot_that_was_away_through_a_rollout_is_updated_when_it_comes_back() {
    let mut w = World::new(2);
    let mut spec = web(0, quick());
    spec.mode = Mode::Global;
    w.create(spec);
    assert_eq!(w.running_of("web").len(), 2);
    // w2 is partitioned away: Down for the manager, its container runs on.
    let ep2 = w.ep("w2");
    w.nodes[1].2 = false;
    let now = w.now();
    w.core.node_down(now, ep2);
    w.pump();
    w.update(|s| s.task.image = "web:2".into());
    w.run(10, SEC, |_| {});
    assert_eq!(w.view("web").rollout.state, RolloutState::Completed);
    // Back: its full report shows the old version, which is replaced.
    w.nodes[1].2 = true;
    let now = w.now();
    w.core.node_up(now, ep2, "w2");
    let old: Vec<Task> = w
        .core
        .tasks()
        .filter(|t| t.worker.as_deref() == Some("w2") && t.state == State::Running)
        .cloned()
        .collect();
    w.core.report(now, ep2, true, false, old);
    w.pump();
    w.run(10, SEC, |_| {});
    let running = w.running_of("web");
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|t| t.image == "web:2"), "{running:?}");
}
