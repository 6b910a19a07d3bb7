//! The scheduler's book, pure: every node's capacity, readiness, availability, labels and
//! volumes, what is booked on it, and the placement that reads it. No actix, no I/O: the
//! [`super::Scheduler`] actor is a shell around it, and the fault simulation drives it directly.
//!
//! A placement considers only nodes that are Ready, `active`, satisfy every constraint of the
//! task and allow every host path it mounts (ARCHITECTURE.md §8b). Among them a node already
//! holding a named volume the task mounts is preferred, and with `spread_by` the choice is
//! narrowed to the nodes whose label value has the fewest tasks of the task's group; the policy
//! chooses among what is left, so every policy respects all of this.

use std::collections::BTreeMap;

use log::debug;
use uuid::Uuid;

use crate::actors::FastMap;
use crate::actors::policy::{self, NodeView, Policy, PolicyKind, Resources};
use crate::constraint::{self, Constraint};
use crate::node::{Availability, Capacity};

/// No node can take the task now; the reason names what is short on each, or the constraint no
/// node satisfies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NoFit {
    pub reason: String,
    /// No node that takes tasks meets what it asks besides room (a constraint, a host path):
    /// room appearing cannot help, only a change of a node's facts, availability or
    /// readiness.
    pub unsatisfied: bool,
}

impl NoFit {
    /// Short of room.
    pub fn room(reason: impl Into<String>) -> NoFit {
        NoFit {
            reason: reason.into(),
            unsatisfied: false,
        }
    }

    /// No node meets what the task asks besides room.
    pub fn unsatisfied(reason: impl Into<String>) -> NoFit {
        NoFit {
            reason: reason.into(),
            unsatisfied: true,
        }
    }
}

/// One task to place: what it reserves, a node to try first (a restart goes back to the node
/// it ran on when that has room), and what it asks of a node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlaceRequest {
    pub id: Uuid,
    pub resources: Resources,
    pub prefer: Option<String>,
    /// Node labels a node must have or lack.
    pub constraints: Vec<Constraint>,
    /// Spread the tasks of `group` evenly over the values of this node label.
    pub spread_by: Option<String>,
    /// The group the task counts in for spreading (its service's name).
    pub group: Option<String>,
    /// Named volumes it mounts: a node that holds one of them is preferred.
    pub volumes: Vec<String>,
    /// Host paths it mounts: only a node that allows every one may take it.
    pub host_paths: Vec<String>,
}

impl PlaceRequest {
    /// A request with no constraints.
    pub fn new(id: Uuid, resources: Resources) -> PlaceRequest {
        PlaceRequest {
            id,
            resources,
            ..PlaceRequest::default()
        }
    }

    /// Asks nothing of a node but room: such requests share the "fits nowhere" answer.
    fn is_plain(&self) -> bool {
        self.constraints.is_empty()
            && self.spread_by.is_none()
            && self.volumes.is_empty()
            && self.host_paths.is_empty()
    }
}

/// Where each task of a [`Book::place`] went.
pub type Placements = Vec<(Uuid, Result<String, NoFit>)>;

/// What placement knows of a node besides its room, as the manager tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementFacts {
    /// Its effective labels: the worker's, overlaid by those the manager set.
    pub labels: BTreeMap<String, String>,
    /// Named volumes it holds.
    pub volumes: Vec<String>,
    /// Host paths under which it lets tasks mount.
    pub allowed_host_paths: Vec<String>,
    /// Only an `active` node takes new tasks.
    pub availability: Availability,
}

/// The free room of the ready nodes: in all (the most a set of tasks can take together) and on
/// the roomiest node in each dimension (the most one task can take). Necessary conditions for a
/// fit, never sufficient: the manager uses them to retry only the waiting tasks that might fit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Room {
    pub total: Resources,
    pub largest: Resources,
}

impl Room {
    /// Whether `task` might fit on some node, given what `taken` already asks of the total.
    pub fn might_take(&self, taken: &Resources, task: &Resources) -> bool {
        let within = |need: f64, have: f64| need <= 0.0 || need <= have + 1e-9;
        let within_u = |need: u64, have: u64| need == 0 || need <= have;
        within(task.cpu, self.largest.cpu)
            && within_u(task.memory, self.largest.memory)
            && within_u(task.disk, self.largest.disk)
            && within(taken.cpu + task.cpu, self.total.cpu)
            && within_u(taken.memory.saturating_add(task.memory), self.total.memory)
            && within_u(taken.disk.saturating_add(task.disk), self.total.disk)
    }
}

/// One task's booking.
#[derive(Debug, Clone)]
struct Allocation {
    node: usize,
    resources: Resources,
    group: Option<String>,
}

pub struct Book {
    policy: Box<dyn Policy>,
    nodes: Vec<NodeView>,
    /// Labels, volumes and host paths of each node, by the same index as `nodes`.
    facts: Vec<PlacementFacts>,
    index: FastMap<String, usize>,
    /// task → its booking: released exactly once.
    allocations: FastMap<Uuid, Allocation>,
    /// group → node index → tasks of the group booked there (for `spread_by`).
    groups: FastMap<String, FastMap<usize, usize>>,
    /// Bumped by every change of the nodes' capacity, readiness or bookings.
    version: u64,
    /// The last "fits nowhere" answer, for the book version and request it was made for: when
    /// the cluster is full, a burst of tasks all get the same answer, worked out once.
    last_no_fit: Option<(u64, Resources, NoFit)>,
}

impl Book {
    pub fn new(kind: PolicyKind) -> Book {
        Book {
            policy: kind.build(),
            nodes: Vec::new(),
            facts: Vec::new(),
            index: FastMap::default(),
            allocations: FastMap::default(),
            groups: FastMap::default(),
            version: 0,
            last_no_fit: None,
        }
    }

    fn node_index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.nodes.push(NodeView {
            name: name.to_string(),
            capacity: None,
            allocated: Resources::default(),
            tasks: 0,
            ready: false,
            availability: Availability::Active,
            excluded: false,
        });
        self.facts.push(PlacementFacts::default());
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_string(), i);
        i
    }

    fn book(&mut self, id: Uuid, node: usize, resources: Resources, group: Option<String>) {
        self.release_one(id);
        self.version += 1;
        let n = &mut self.nodes[node];
        n.allocated.add(&resources);
        n.tasks += 1;
        if let Some(g) = &group {
            *self
                .groups
                .entry(g.clone())
                .or_default()
                .entry(node)
                .or_default() += 1;
        }
        self.allocations.insert(
            id,
            Allocation {
                node,
                resources,
                group,
            },
        );
    }

    fn release_one(&mut self, id: Uuid) -> bool {
        let Some(a) = self.allocations.remove(&id) else {
            return false;
        };
        self.version += 1;
        let n = &mut self.nodes[a.node];
        n.allocated.sub(&a.resources);
        n.tasks = n.tasks.saturating_sub(1);
        if let Some(g) = &a.group
            && let Some(counts) = self.groups.get_mut(g)
        {
            if let Some(c) = counts.get_mut(&a.node) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    counts.remove(&a.node);
                }
            }
            if counts.is_empty() {
                self.groups.remove(g);
            }
        }
        true
    }

    /// A node's capacity as its worker reports it. True when room may have appeared.
    pub fn set_capacity(&mut self, name: &str, capacity: Capacity) -> bool {
        let i = self.node_index(name);
        self.version += 1;
        let node = &mut self.nodes[i];
        let grew = node.capacity.is_none_or(|c| {
            capacity.cpus > c.cpus || capacity.memory > c.memory || capacity.disk > c.disk
        });
        node.capacity = Some(capacity);
        grew && node.takes_tasks()
    }

    /// A node can take placements, or no longer can. True when room may have appeared.
    pub fn set_ready(&mut self, name: &str, ready: bool) -> bool {
        let i = self.node_index(name);
        self.version += 1;
        let node = &mut self.nodes[i];
        let was = node.ready;
        node.ready = ready;
        ready && !was && node.takes_tasks()
    }

    /// A node's labels, volumes, allowed host paths and availability, as the manager knows
    /// them. True when room may have appeared (the node takes new tasks again).
    pub fn set_facts(&mut self, name: &str, facts: PlacementFacts) -> bool {
        let i = self.node_index(name);
        self.version += 1;
        let node = &mut self.nodes[i];
        let was = node.takes_tasks();
        node.availability = facts.availability;
        self.facts[i] = facts;
        !was && self.nodes[i].takes_tasks()
    }

    /// The facts placement knows of a node.
    pub fn facts(&self, name: &str) -> Option<&PlacementFacts> {
        self.index.get(name).map(|&i| &self.facts[i])
    }

    /// Tasks of `group` booked on the node.
    pub fn group_tasks(&self, group: &str, node: &str) -> usize {
        let (Some(counts), Some(i)) = (self.groups.get(group), self.index.get(node)) else {
            return 0;
        };
        counts.get(i).copied().unwrap_or(0)
    }

    /// Choose a node for each task and book its reservation there.
    pub fn place(&mut self, requests: Vec<PlaceRequest>) -> Placements {
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            // A task placed before gives its old reservation back first.
            self.release_one(req.id);
            let chosen = if req.is_plain() {
                self.choose_plain(&req)
            } else {
                self.choose_constrained(&req)
            };
            match chosen {
                Ok(i) => {
                    debug!("scheduler: task {} → {}", req.id, self.nodes[i].name);
                    self.book(req.id, i, req.resources, req.group);
                    out.push((req.id, Ok(self.nodes[i].name.clone())));
                }
                Err(no_fit) => out.push((req.id, Err(no_fit))),
            }
        }
        out
    }

    /// A task that asks nothing but room: its preferred node, or the policy's choice.
    fn choose_plain(&mut self, req: &PlaceRequest) -> Result<usize, NoFit> {
        let preferred = req
            .prefer
            .as_ref()
            .and_then(|p| self.index.get(p).copied())
            .filter(|&i| self.nodes[i].can_take(&req.resources));
        if let Some(i) = preferred {
            return Ok(i);
        }
        if let Some((version, res, no_fit)) = &self.last_no_fit
            && *version == self.version
            && *res == req.resources
        {
            return Err(no_fit.clone());
        }
        policy::place(self.policy.as_mut(), &req.resources, &self.nodes).map_err(|reason| {
            let no_fit = NoFit::room(reason);
            self.last_no_fit = Some((self.version, req.resources, no_fit.clone()));
            no_fit
        })
    }

    /// Whether node `i` meets what the task asks of it besides room.
    fn eligible(&self, i: usize, req: &PlaceRequest) -> bool {
        let (n, f) = (&self.nodes[i], &self.facts[i]);
        n.takes_tasks()
            && constraint::satisfies(&req.constraints, &n.name, &f.labels)
            && req
                .host_paths
                .iter()
                .all(|p| allowed(p, &f.allowed_host_paths))
    }

    /// A task with constraints, host paths, named volumes or a spread: narrow the nodes, then
    /// let the policy choose among them.
    fn choose_constrained(&mut self, req: &PlaceRequest) -> Result<usize, NoFit> {
        let eligible: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.eligible(i, req))
            .collect();
        if eligible.is_empty() {
            return Err(NoFit::unsatisfied(self.unsatisfied(req)));
        }
        let mut fitting: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].can_take(&req.resources))
            .collect();
        if fitting.is_empty() {
            let reasons: Vec<String> = eligible
                .iter()
                .filter_map(|&i| self.nodes[i].fits(&req.resources).err())
                .take(5)
                .collect();
            return Err(NoFit::room(format!(
                "no worker that meets its constraints can take it now (cpu {}, memory {} bytes, disk {} bytes): {}; waiting for room",
                req.resources.cpu,
                req.resources.memory,
                req.resources.disk,
                reasons.join("; ")
            )));
        }
        if let (Some(key), Some(group)) = (&req.spread_by, &req.group) {
            fitting = self.least_spread(key, group, fitting);
        }
        if let Some(i) = req
            .prefer
            .as_ref()
            .and_then(|p| self.index.get(p).copied())
            .filter(|i| fitting.contains(i))
        {
            return Ok(i);
        }
        let holding: Vec<usize> = fitting
            .iter()
            .copied()
            .filter(|&i| {
                req.volumes
                    .iter()
                    .any(|v| self.facts[i].volumes.iter().any(|h| h == v))
            })
            .collect();
        if !holding.is_empty() {
            fitting = holding;
        }
        // Every other node is left out of this one placement, so whichever policy runs
        // chooses among these.
        let mut keep = vec![false; self.nodes.len()];
        for &i in &fitting {
            keep[i] = true;
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.excluded = !keep[i];
        }
        let chosen = policy::place(self.policy.as_mut(), &req.resources, &self.nodes);
        for n in &mut self.nodes {
            n.excluded = false;
        }
        chosen.map_err(NoFit::room)
    }

    /// Of `candidates`, those whose value of label `key` has the fewest tasks of `group` over
    /// every node (a node without the label counts under "no value").
    fn least_spread(&self, key: &str, group: &str, candidates: Vec<usize>) -> Vec<usize> {
        let value = |i: usize| -> Option<&str> {
            if key == constraint::NODE_KEY {
                Some(self.nodes[i].name.as_str())
            } else {
                self.facts[i].labels.get(key).map(String::as_str)
            }
        };
        let mut per_value: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        if let Some(counts) = self.groups.get(group) {
            for (&i, &c) in counts {
                *per_value.entry(value(i)).or_default() += c;
            }
        }
        let count = |i: usize| per_value.get(&value(i)).copied().unwrap_or(0);
        let Some(fewest) = candidates.iter().map(|&i| count(i)).min() else {
            return candidates;
        };
        candidates
            .into_iter()
            .filter(|&i| count(i) == fewest)
            .collect()
    }

    /// Why no node meets what the task asks besides room: the first constraint no node that
    /// takes tasks satisfies, with what each has; or the host path none allows.
    fn unsatisfied(&self, req: &PlaceRequest) -> String {
        let open: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].takes_tasks())
            .collect();
        if open.is_empty() {
            if self.nodes.is_empty() {
                return "no worker is registered yet; waiting for one".into();
            }
            let why: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|n| n.fits(&Resources::default()).err())
                .take(5)
                .collect();
            return format!(
                "no worker takes new tasks now: {}; waiting for one",
                why.join("; ")
            );
        }
        const SHOWN: usize = 8;
        let show = |key: &str| -> String {
            let mut parts: Vec<String> = open
                .iter()
                .take(SHOWN)
                .map(|&i| {
                    let name = &self.nodes[i].name;
                    match self.facts[i].labels.get(key) {
                        _ if key == constraint::NODE_KEY => format!("{name}: {key}={name}"),
                        Some(v) => format!("{name}: {key}={v}"),
                        None => format!("{name}: no {key}"),
                    }
                })
                .collect();
            if open.len() > SHOWN {
                parts.push(format!("and {} more", open.len() - SHOWN));
            }
            parts.join(", ")
        };
        for c in &req.constraints {
            let any = open
                .iter()
                .any(|&i| c.matches(&self.nodes[i].name, &self.facts[i].labels));
            if !any {
                return format!(
                    "no Ready node satisfies {c} ({}); waiting for one that does (cube node label)",
                    show(&c.key)
                );
            }
        }
        let together = open.iter().any(|&i| {
            constraint::satisfies(&req.constraints, &self.nodes[i].name, &self.facts[i].labels)
        });
        if !together {
            let all: Vec<String> = req.constraints.iter().map(Constraint::to_string).collect();
            return format!(
                "no Ready node satisfies {} together; waiting for one that does (cube node label)",
                all.join(" and ")
            );
        }
        for p in &req.host_paths {
            if !open
                .iter()
                .any(|&i| allowed(p, &self.facts[i].allowed_host_paths))
            {
                let allows: Vec<String> = open
                    .iter()
                    .take(SHOWN)
                    .map(|&i| {
                        let a = &self.facts[i].allowed_host_paths;
                        if a.is_empty() {
                            format!("{} allows none", self.nodes[i].name)
                        } else {
                            format!("{} allows {}", self.nodes[i].name, a.join(", "))
                        }
                    })
                    .collect();
                return format!(
                    "no Ready node allows the host path {p} ({}); waiting for one that does (cube worker --allow-host-path)",
                    allows.join("; ")
                );
            }
        }
        "no Ready node satisfies its constraints and allows its host paths at once; waiting for one that does".into()
    }

    /// Book reservations without choosing: the manager rebuilding the book after a restart.
    pub fn restore(&mut self, allocations: Vec<Restored>) {
        for (id, node, res, group) in allocations {
            let i = self.node_index(&node);
            self.book(id, i, res, group);
        }
    }

    /// Give these tasks' reservations back. True when anything was released.
    pub fn release(&mut self, ids: &[Uuid]) -> bool {
        let mut any = false;
        for &id in ids {
            any |= self.release_one(id);
        }
        any
    }

    /// The free room of the nodes that take tasks, worked out now.
    pub fn room(&self) -> Room {
        let mut room = Room::default();
        for n in self.nodes.iter().filter(|n| n.takes_tasks()) {
            let Some(cap) = n.capacity else {
                continue;
            };
            let cpu = (cap.cpus - n.allocated.cpu).max(0.0);
            let memory = cap.memory.saturating_sub(n.allocated.memory);
            let disk = cap.disk.saturating_sub(n.allocated.disk);
            room.total.cpu += cpu;
            room.total.memory = room.total.memory.saturating_add(memory);
            room.total.disk = room.total.disk.saturating_add(disk);
            room.largest.cpu = room.largest.cpu.max(cpu);
            room.largest.memory = room.largest.memory.max(memory);
            room.largest.disk = room.largest.disk.max(disk);
        }
        room
    }

    /// Every node, in the order they became known.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// The node a task is booked on, and what it reserved there.
    pub fn booking(&self, id: Uuid) -> Option<(&str, Resources)> {
        self.allocations
            .get(&id)
            .map(|a| (self.nodes[a.node].name.as_str(), a.resources))
    }

    /// How many tasks hold a reservation.
    pub fn bookings(&self) -> usize {
        self.allocations.len()
    }
}

/// A booking to restore: task, node, what it reserved, and its group.
pub type Restored = (Uuid, String, Resources, Option<String>);

/// Whether a host path lies under one of the allowed prefixes.
fn allowed(path: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| crate::volume::under(path, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cap(cpus: f64) -> Capacity {
        Capacity {
            cpus,
            memory: 4 * GIB,
            disk: 0,
        }
    }

    fn req(cpu: f64, prefer: Option<&str>) -> PlaceRequest {
        PlaceRequest {
            id: Uuid::new_v4(),
            resources: Resources {
                cpu,
                memory: 0,
                disk: 0,
            },
            prefer: prefer.map(str::to_string),
            ..PlaceRequest::default()
        }
    }

    fn constrained(constraints: &[&str]) -> PlaceRequest {
        PlaceRequest {
            constraints: constraints
                .iter()
                .map(|c| c.parse().expect("a constraint"))
                .collect(),
            ..req(0.1, None)
        }
    }

    fn label(book: &mut Book, node: &str, pairs: &[(&str, &str)]) {
        let mut facts = book.facts(node).cloned().unwrap_or_default();
        facts.labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        book.set_facts(node, facts);
    }

    fn placed_on(book: &mut Book, r: PlaceRequest) -> Result<String, NoFit> {
        book.place(vec![r]).remove(0).1
    }

    fn ready_book(nodes: &[(&str, f64)]) -> Book {
        let mut book = Book::new(PolicyKind::Spread);
        for (name, cpus) in nodes {
            book.set_capacity(name, cap(*cpus));
            book.set_ready(name, true);
        }
        book
    }

    #[test]
    fn a_placement_books_and_a_release_gives_back_exactly_once() {
        let mut book = ready_book(&[("a", 2.0)]);
        let r = req(1.5, None);
        let id = r.id;
        let placed = book.place(vec![r]);
        assert_eq!(placed[0].1, Ok("a".to_string()));
        assert_eq!(book.nodes()[0].allocated.cpu, 1.5);
        assert!(book.release(&[id]));
        assert!(!book.release(&[id]), "a second release changes nothing");
        assert_eq!(book.nodes()[0].allocated.cpu, 0.0);
        assert_eq!(book.nodes()[0].tasks, 0);
    }

    #[test]
    fn a_node_not_ready_takes_nothing_and_says_why() {
        let mut book = ready_book(&[("a", 2.0)]);
        book.set_ready("a", false);
        let placed = book.place(vec![req(0.5, None)]);
        let err = placed[0].1.clone().unwrap_err();
        assert!(err.reason.contains("a is not ready"), "{err}");
    }

    #[test]
    fn a_preferred_node_wins_when_it_has_room_and_not_otherwise() {
        let mut book = ready_book(&[("a", 2.0), ("b", 2.0)]);
        let placed = book.place(vec![req(0.5, Some("b")), req(0.5, Some("b"))]);
        assert!(placed.iter().all(|(_, r)| r.as_deref() == Ok("b")));
        let placed = book.place(vec![req(1.5, Some("b"))]);
        assert_eq!(placed[0].1.as_deref(), Ok("a"), "b has 1.0 core left");
    }

    #[test]
    fn placing_a_task_again_moves_its_booking() {
        let mut book = ready_book(&[("a", 2.0), ("b", 2.0)]);
        let r = req(1.0, Some("a"));
        let id = r.id;
        book.place(vec![r.clone()]);
        book.place(vec![PlaceRequest {
            prefer: Some("b".into()),
            ..r
        }]);
        assert_eq!(book.booking(id).map(|(n, _)| n), Some("b"));
        assert_eq!(book.nodes()[0].allocated.cpu, 0.0);
        assert_eq!(book.bookings(), 1);
    }

    #[test]
    fn restore_books_without_choosing_even_on_unknown_nodes() {
        let mut book = Book::new(PolicyKind::Epvm);
        let id = Uuid::new_v4();
        book.restore(vec![(
            id,
            "gone".into(),
            Resources {
                cpu: 1.0,
                memory: 0,
                disk: 0,
            },
            Some("web".into()),
        )]);
        assert_eq!(book.group_tasks("web", "gone"), 1);
        assert_eq!(book.booking(id).map(|(n, _)| n), Some("gone"));
        assert!(!book.nodes()[0].ready);
    }

    #[test]
    fn a_burst_that_fits_nowhere_gets_one_answer_until_the_book_changes() {
        let mut book = ready_book(&[("a", 1.0)]);
        let placed = book.place(vec![req(2.0, None), req(2.0, None)]);
        assert!(placed.iter().all(|(_, r)| r.is_err()));
        assert_eq!(placed[0].1, placed[1].1);
        book.set_capacity("a", cap(4.0));
        let placed = book.place(vec![req(2.0, None)]);
        assert!(placed[0].1.is_ok(), "a changed book is asked again");
    }

    #[test]
    fn growth_or_readiness_is_announced_as_room() {
        let mut book = Book::new(PolicyKind::Spread);
        assert!(!book.set_capacity("a", cap(1.0)), "not ready yet");
        assert!(book.set_ready("a", true));
        assert!(!book.set_ready("a", true), "already ready");
        assert!(book.set_capacity("a", cap(2.0)));
        assert!(!book.set_capacity("a", cap(2.0)));
    }

    #[test]
    fn a_constraint_pins_tasks_to_the_nodes_that_satisfy_it_under_every_policy() {
        for kind in [
            PolicyKind::RoundRobin,
            PolicyKind::Epvm,
            PolicyKind::BinPack,
            PolicyKind::Spread,
        ] {
            let mut book = Book::new(kind);
            for n in ["w1", "w2", "w3"] {
                book.set_capacity(n, cap(4.0));
                book.set_ready(n, true);
            }
            label(&mut book, "w1", &[("zone", "a")]);
            label(&mut book, "w2", &[("zone", "b")]);
            for _ in 0..6 {
                assert_eq!(
                    placed_on(&mut book, constrained(&["zone==a"])).as_deref(),
                    Ok("w1"),
                    "{kind}"
                );
                let ne = placed_on(&mut book, constrained(&["zone!=a"])).expect("a node");
                assert_ne!(ne, "w1", "{kind}: zone!=a never lands on w1");
                assert_eq!(
                    placed_on(&mut book, constrained(&["node==w3"])).as_deref(),
                    Ok("w3"),
                    "{kind}"
                );
            }
        }
    }

    #[test]
    fn a_constraint_no_node_satisfies_is_named_with_what_each_node_has() {
        let mut book = ready_book(&[("w1", 4.0), ("w2", 4.0)]);
        label(&mut book, "w1", &[("zone", "b")]);
        let err = placed_on(&mut book, constrained(&["zone==a"])).unwrap_err();
        assert!(
            err.reason
                .starts_with("no Ready node satisfies zone==a (w1: zone=b, w2: no zone)"),
            "{err}"
        );
        label(&mut book, "w2", &[("zone", "a"), ("disk", "hdd")]);
        let err = placed_on(&mut book, constrained(&["zone==b", "disk==hdd"])).unwrap_err();
        assert!(
            err.reason.contains("zone==b and disk==hdd together"),
            "{err}"
        );
        assert_eq!(
            placed_on(&mut book, constrained(&["zone==a"])).as_deref(),
            Ok("w2")
        );
    }

    #[test]
    fn paused_and_draining_nodes_take_nothing_new_and_say_so() {
        let mut book = ready_book(&[("w1", 4.0), ("w2", 4.0)]);
        let pause = PlacementFacts {
            availability: Availability::Pause,
            ..PlacementFacts::default()
        };
        book.set_facts("w1", pause.clone());
        for _ in 0..4 {
            assert_eq!(
                placed_on(&mut book, req(0.1, Some("w1"))).as_deref(),
                Ok("w2")
            );
            assert_eq!(
                placed_on(&mut book, constrained(&["zone!=x"])).as_deref(),
                Ok("w2")
            );
        }
        book.set_facts(
            "w2",
            PlacementFacts {
                availability: Availability::Drain,
                ..PlacementFacts::default()
            },
        );
        let err = placed_on(&mut book, constrained(&["zone!=x"])).unwrap_err();
        assert!(
            err.reason.contains("w1 is paused") && err.reason.contains("w2 is draining"),
            "{err}"
        );
        assert!(
            book.room().total.cpu == 0.0,
            "no room on nodes that take nothing"
        );
        assert!(
            book.set_facts("w1", PlacementFacts::default()),
            "activating a node is room"
        );
        assert_eq!(placed_on(&mut book, req(0.1, None)).as_deref(), Ok("w1"));
    }

    #[test]
    fn spread_by_keeps_a_group_even_over_a_labels_values() {
        for kind in [
            PolicyKind::BinPack,
            PolicyKind::Epvm,
            PolicyKind::RoundRobin,
        ] {
            let mut book = Book::new(kind);
            // Zone a has three nodes, zone b one: spreading over zones still halves the group.
            for (n, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
                book.set_capacity(n, cap(16.0));
                book.set_ready(n, true);
                label(&mut book, n, &[("zone", zone)]);
            }
            let mut zones = BTreeMap::<String, usize>::new();
            for _ in 0..8 {
                let r = PlaceRequest {
                    spread_by: Some("zone".into()),
                    group: Some("web".into()),
                    ..req(1.0, None)
                };
                let node = placed_on(&mut book, r).expect("room");
                *zones.entry(node[..1].to_string()).or_default() += 1;
            }
            assert_eq!(zones.get("a"), Some(&4), "{kind}: {zones:?}");
            assert_eq!(zones.get("b"), Some(&4), "{kind}: {zones:?}");
            assert_eq!(book.group_tasks("web", "b1"), 4);
            assert_eq!(book.group_tasks("other", "b1"), 0);
        }
    }

    #[test]
    fn host_paths_need_a_node_that_allows_them_and_named_volumes_stay_put() {
        let mut book = ready_book(&[("w1", 4.0), ("w2", 4.0), ("w3", 4.0)]);
        let mut facts = PlacementFacts {
            allowed_host_paths: vec!["/srv/data".into()],
            ..PlacementFacts::default()
        };
        book.set_facts("w2", facts.clone());
        let mounts = |path: &str| PlaceRequest {
            host_paths: vec![path.into()],
            ..req(0.1, None)
        };
        for _ in 0..3 {
            assert_eq!(
                placed_on(&mut book, mounts("/srv/data/web")).as_deref(),
                Ok("w2")
            );
        }
        let err = placed_on(&mut book, mounts("/etc")).unwrap_err();
        assert!(
            err.reason.contains("allows the host path /etc")
                && err.reason.contains("w1 allows none")
                && err.reason.contains("w2 allows /srv/data"),
            "{err}"
        );
        facts.allowed_host_paths.clear();
        facts.volumes = vec!["db".into()];
        book.set_facts("w3", facts);
        for _ in 0..3 {
            let r = PlaceRequest {
                volumes: vec!["db".into()],
                ..req(0.1, None)
            };
            assert_eq!(placed_on(&mut book, r).as_deref(), Ok("w3"));
        }
    }
}
