//! The actors of Cube and the messages between them.
//!
//! | actor | owns | receives |
//! |---|---|---|
//! | [`worker::Worker`] | the tasks placed on one node, their containers, the change feed | StartTask, StopTask, GetTask, ListTasks, WatchTasks, ContainerOf, GetStats |
//!
//! Actors own their state and are reached only through `Addr`/`Recipient`; blocking work
//! (LMDB commits, /proc reads) runs on threads of its own.

pub mod client;
pub mod health;
pub mod manager;
pub mod policy;
pub mod scheduler;
pub mod worker;
pub mod worker_proxy;

/// Messages an actor's mailbox holds before `send` makes callers wait. Bursts of submissions
/// and reports are normal for Cube's actors; actix's default of 16 would serialise them.
pub const MAILBOX_CAPACITY: usize = 1 << 16;
