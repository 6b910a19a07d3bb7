//! The scheduler's book, pure: every node's capacity, readiness and what is booked on it, and
//! the placement that reads it. No actix, no I/O: the [`super::Scheduler`] actor is a shell
//! around it, and the fault simulation drives it directly.

use log::debug;
use uuid::Uuid;

use crate::actors::FastMap;
use crate::actors::policy::{self, NodeView, Policy, PolicyKind, Resources};
use crate::node::Capacity;

/// No node can take the task now; the reason names what is short on each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoFit(pub String);

/// One task to place: what it reserves, and a node to try first (a restart goes back to the
/// node it ran on when that has room).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceRequest {
    pub id: Uuid,
    pub resources: Resources,
    pub prefer: Option<String>,
}

/// Where each task of a [`Book::place`] went.
pub type Placements = Vec<(Uuid, Result<String, NoFit>)>;

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

pub struct Book {
    policy: Box<dyn Policy>,
    nodes: Vec<NodeView>,
    index: FastMap<String, usize>,
    /// task → (node index, what it reserved): released exactly once.
    allocations: FastMap<Uuid, (usize, Resources)>,
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
            index: FastMap::default(),
            allocations: FastMap::default(),
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
        });
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_string(), i);
        i
    }

    fn book(&mut self, id: Uuid, node: usize, res: Resources) {
        self.release_one(id);
        self.version += 1;
        let n = &mut self.nodes[node];
        n.allocated.add(&res);
        n.tasks += 1;
        self.allocations.insert(id, (node, res));
    }

    fn release_one(&mut self, id: Uuid) -> bool {
        let Some((node, res)) = self.allocations.remove(&id) else {
            return false;
        };
        self.version += 1;
        let n = &mut self.nodes[node];
        n.allocated.sub(&res);
        n.tasks = n.tasks.saturating_sub(1);
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
        grew && node.ready
    }

    /// A node can take placements, or no longer can. True when room may have appeared.
    pub fn set_ready(&mut self, name: &str, ready: bool) -> bool {
        let i = self.node_index(name);
        self.version += 1;
        let node = &mut self.nodes[i];
        let was = node.ready;
        node.ready = ready;
        ready && !was
    }

    /// Choose a node for each task and book its reservation there.
    pub fn place(&mut self, requests: Vec<PlaceRequest>) -> Placements {
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            // A task placed before gives its old reservation back first.
            self.release_one(req.id);
            let preferred = req
                .prefer
                .and_then(|p| self.index.get(&p).copied())
                .filter(|&i| self.nodes[i].can_take(&req.resources));
            if preferred.is_none()
                && let Some((version, res, no_fit)) = &self.last_no_fit
                && *version == self.version
                && *res == req.resources
            {
                out.push((req.id, Err(no_fit.clone())));
                continue;
            }
            let chosen = match preferred {
                Some(i) => Ok(i),
                None => policy::place(self.policy.as_mut(), &req.resources, &self.nodes),
            };
            match chosen {
                Ok(i) => {
                    debug!("scheduler: task {} → {}", req.id, self.nodes[i].name);
                    self.book(req.id, i, req.resources);
                    out.push((req.id, Ok(self.nodes[i].name.clone())));
                }
                Err(reason) => {
                    let no_fit = NoFit(reason);
                    self.last_no_fit = Some((self.version, req.resources, no_fit.clone()));
                    out.push((req.id, Err(no_fit)));
                }
            }
        }
        out
    }

    /// Book reservations without choosing: the manager rebuilding the book after a restart.
    pub fn restore(&mut self, allocations: Vec<(Uuid, String, Resources)>) {
        for (id, node, res) in allocations {
            let i = self.node_index(&node);
            self.book(id, i, res);
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

    /// The free room of the ready nodes, worked out now.
    pub fn room(&self) -> Room {
        let mut room = Room::default();
        for n in self.nodes.iter().filter(|n| n.ready) {
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
            .map(|&(i, res)| (self.nodes[i].name.as_str(), res))
    }

    /// How many tasks hold a reservation.
    pub fn bookings(&self) -> usize {
        self.allocations.len()
    }
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
        }
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
        assert!(err.0.contains("a is not ready"), "{err}");
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
        )]);
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
}
