//! The Scheduler actor: the book of every node's capacity and of what is allocated on it, and
//! the placement policy that reads it.
//!
//! It learns capacity from each WorkerProxy's stats reports and readiness from the Manager, books
//! a task's reservation when it places the task and releases it when the Manager says the task
//! ended. It never talks to workers and never touches task records: it answers "where", and the
//! Manager does the rest. Placements come in batches so a burst of submissions costs one message.

use std::collections::HashMap;

use actix::prelude::*;
use log::{debug, info};
use uuid::Uuid;

use super::policy::{self, NodeView, Policy, PolicyKind, Resources};
use crate::node::Capacity;

/// Sent to the listener when room may have appeared: a node became ready or grew, or a task
/// released its reservation. Pending tasks are worth another try.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CapacityAvailable;

pub struct Scheduler {
    policy: Box<dyn Policy>,
    nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
    /// task → (node, what it reserved): released exactly once.
    allocations: HashMap<Uuid, (String, Resources)>,
    listener: Option<Recipient<CapacityAvailable>>,
}

impl Scheduler {
    pub fn new(kind: PolicyKind) -> Scheduler {
        Scheduler {
            policy: kind.build(),
            nodes: Vec::new(),
            index: HashMap::new(),
            allocations: HashMap::new(),
            listener: None,
        }
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeView {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeView {
                    name: name.to_string(),
                    capacity: None,
                    allocated: Resources::default(),
                    tasks: 0,
                    ready: false,
                });
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn book(&mut self, id: Uuid, node: &str, res: Resources) {
        self.release(id);
        let n = self.node_mut(node);
        n.allocated.add(&res);
        n.tasks += 1;
        self.allocations.insert(id, (node.to_string(), res));
    }

    fn release(&mut self, id: Uuid) -> bool {
        let Some((node, res)) = self.allocations.remove(&id) else {
            return false;
        };
        if let Some(&i) = self.index.get(&node) {
            let n = &mut self.nodes[i];
            n.allocated.sub(&res);
            n.tasks = n.tasks.saturating_sub(1);
        }
        true
    }

    fn announce(&self) {
        if let Some(l) = &self.listener {
            l.do_send(CapacityAvailable);
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
    }
}

/// Who to tell when room may have appeared.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetListener(pub Recipient<CapacityAvailable>);

impl Handler<SetListener> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: SetListener, _: &mut Context<Self>) {
        self.listener = Some(msg.0);
    }
}

/// A node's capacity as its worker reports it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeCapacity {
    pub name: String,
    pub capacity: Capacity,
}

impl Handler<NodeCapacity> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: NodeCapacity, _: &mut Context<Self>) {
        let node = self.node_mut(&msg.name);
        let grew = node.capacity.is_none_or(|c| {
            msg.capacity.cpus > c.cpus
                || msg.capacity.memory > c.memory
                || msg.capacity.disk > c.disk
        });
        node.capacity = Some(msg.capacity);
        if grew && node.ready {
            self.announce();
        }
    }
}

/// A node can take placements (or no longer can).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeReady {
    pub name: String,
    pub ready: bool,
}

impl Handler<NodeReady> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: NodeReady, _: &mut Context<Self>) {
        let node = self.node_mut(&msg.name);
        let was = node.ready;
        node.ready = msg.ready;
        if msg.ready && !was {
            info!("scheduler: node {} is ready", msg.name);
            self.announce();
        } else if !msg.ready && was {
            info!("scheduler: node {} takes no placements", msg.name);
        }
    }
}

/// Choose a node for each task and book its reservation there. One message for a whole burst.
#[derive(Message)]
#[rtype(result = "Vec<(Uuid, Result<String, String>)>")]
pub struct Place {
    /// Each task, what it reserves, and a node to prefer when it fits (a restart goes back to
    /// the same worker when it has room).
    pub tasks: Vec<(Uuid, Resources, Option<String>)>,
}

impl Handler<Place> for Scheduler {
    type Result = MessageResult<Place>;

    fn handle(&mut self, msg: Place, _: &mut Context<Self>) -> Self::Result {
        let mut out = Vec::with_capacity(msg.tasks.len());
        for (id, res, prefer) in msg.tasks {
            // A task placed before gives its old reservation back first.
            self.release(id);
            let preferred = prefer
                .and_then(|p| self.index.get(&p).copied())
                .filter(|&i| self.nodes[i].fits(&res).is_ok());
            let chosen = match preferred {
                Some(i) => Ok(i),
                None => policy::place(self.policy.as_mut(), &res, &self.nodes),
            };
            match chosen {
                Ok(i) => {
                    let name = self.nodes[i].name.clone();
                    debug!("scheduler: task {id} → {name}");
                    self.book(id, &name, res);
                    out.push((id, Ok(name)));
                }
                Err(reason) => out.push((id, Err(reason))),
            }
        }
        MessageResult(out)
    }
}

/// Book reservations without choosing: the Manager rebuilding its book after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    pub allocations: Vec<(Uuid, String, Resources)>,
}

impl Handler<Restore> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Context<Self>) {
        for (id, node, res) in msg.allocations {
            self.book(id, &node, res);
        }
    }
}

/// These tasks ended (or moved): give their reservations back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub Vec<Uuid>);

impl Handler<Release> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        let mut any = false;
        for id in msg.0 {
            any |= self.release(id);
        }
        if any {
            self.announce();
        }
    }
}

/// The scheduler's view of every node.
#[derive(Message)]
#[rtype(result = "Vec<NodeView>")]
pub struct Nodes;

impl Handler<Nodes> for Scheduler {
    type Result = MessageResult<Nodes>;

    fn handle(&mut self, _: Nodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.nodes.clone())
    }
}
