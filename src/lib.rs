//! Cube: a small container orchestrator.
//!
//! A **manager** takes tasks over HTTP, its **scheduler** picks a **worker** for each, the worker
//! runs it as a Docker container, and task state lives in an embedded LMDB store, so nothing
//! acknowledged is ever lost. Every moving part is an actix actor that owns its state and is
//! reached only by typed messages.
//!
//! The path of a task:
//!
//! ```text
//! HTTP (http::manager) → Manager actor ─ commit ─→ Store (db, LMDB)
//!                             │ Place
//!                             ▼
//!                        Scheduler actor (policies: round-robin, E-PVM, bin-pack, spread)
//!                             │ StartTask
//!                             ▼
//!                        WorkerProxy actor ── HTTP ──→ http::worker → Worker actor → Runtime
//!                             ▲                                          (docker | fake)
//!                             └──── change feed (long-poll) ──────────────────┘
//! ```
//!
//! Modules:
//! - [`task`]: the task model, its states and transitions, and the input formats (pure).
//! - [`node`]: what a worker reports about its machine.
//! - [`db`]: the LMDB store with group commit.
//! - [`runtime`]: the container runtimes, Docker and fake.
//! - [`actors`]: the actors and their messages.
//! - [`http`]: the HTTP APIs, thin handlers over the actors.
//! - [`server`]: starting a worker or a manager as a library call.
//! - [`sim`]: simulation of many in-process workers behind the real actors.
//! - [`cli`]: the `cube` command.

pub mod actors;
pub mod cli;
pub mod clock;
pub mod db;
pub mod http;
pub mod node;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod task;

/// Where a manager listens unless told otherwise.
pub const DEFAULT_MANAGER_PORT: u16 = 5555;
/// Where a worker listens unless told otherwise.
pub const DEFAULT_WORKER_PORT: u16 = 5556;
