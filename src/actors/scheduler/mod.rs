//! The Scheduler actor: a shell around the [`Book`] of every node's capacity and of what is
//! booked on it, and the placement policy that reads it.
//!
//! It learns capacity from each WorkerProxy, readiness from the Manager, books a task's
//! reservation when it places the task and releases it when the Manager says so. It never talks
//! to workers and never touches task records: it answers "where", and the Manager does the rest.
//! Placements come in batches so a burst of submissions costs one message. Every message comes
//! from the Manager's thread or a proxy's, in order per sender, so the book follows the
//! Manager's decisions exactly.

pub mod book;

use actix::prelude::*;
use log::info;
use uuid::Uuid;

pub use book::{Book, NoFit, PlaceRequest, PlacementFacts, Placements, Restored, Room};

use super::policy::{NodeView, PolicyKind};
use crate::node::Capacity;

/// Sent to the listener when room may have appeared: a node became ready or grew, or a task
/// released its reservation. Waiting tasks that might fit in the room are worth another try.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CapacityAvailable(pub Room);

pub struct Scheduler {
    book: Book,
    listener: Option<Recipient<CapacityAvailable>>,
}

impl Scheduler {
    pub fn new(kind: PolicyKind) -> Scheduler {
        Scheduler {
            book: Book::new(kind),
            listener: None,
        }
    }

    fn announce(&self, room: bool) {
        if let Some(l) = self.listener.as_ref().filter(|_| room) {
            l.do_send(CapacityAvailable(self.book.room()));
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
        let room = self.book.set_capacity(&msg.name, msg.capacity);
        self.announce(room);
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
        let room = self.book.set_ready(&msg.name, msg.ready);
        if msg.ready {
            info!("scheduler: node {} takes placements", msg.name);
        } else {
            info!("scheduler: node {} takes no placements", msg.name);
        }
        self.announce(room);
    }
}

/// A node's labels, volumes, allowed host paths and availability, from the Manager (which
/// overlays the worker's labels with its own and owns availability).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeFacts {
    pub name: String,
    pub facts: PlacementFacts,
}

impl Handler<NodeFacts> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: NodeFacts, _: &mut Context<Self>) {
        info!(
            "scheduler: node {} is {} with labels {:?}",
            msg.name, msg.facts.availability, msg.facts.labels
        );
        let room = self.book.set_facts(&msg.name, msg.facts);
        self.announce(room);
    }
}

/// Choose a node for each task and book its reservation there. One message for a whole burst.
#[derive(Message)]
#[rtype(result = "(Placements, Room)")]
pub struct Place(pub Vec<PlaceRequest>);

impl Handler<Place> for Scheduler {
    type Result = MessageResult<Place>;

    /// The placements, and the room left after them.
    fn handle(&mut self, msg: Place, _: &mut Context<Self>) -> Self::Result {
        let placements = self.book.place(msg.0);
        MessageResult((placements, self.book.room()))
    }
}

/// Book reservations without choosing: the Manager rebuilding the book after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore(pub Vec<Restored>);

impl Handler<Restore> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Context<Self>) {
        self.book.restore(msg.0);
    }
}

/// These tasks ended (or moved): give their reservations back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub Vec<Uuid>);

impl Handler<Release> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        let room = self.book.release(&msg.0);
        self.announce(room);
    }
}

/// The scheduler's view of every node.
#[derive(Message)]
#[rtype(result = "Vec<NodeView>")]
pub struct ListBook;

impl Handler<ListBook> for Scheduler {
    type Result = MessageResult<ListBook>;

    fn handle(&mut self, _: ListBook, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.book.nodes().to_vec())
    }
}
