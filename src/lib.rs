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
//! - [`constraint`] and [`volume`]: where a task may run and what it mounts (pure).
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
pub mod constraint;
pub mod db;
pub mod fsutil;
pub mod http;
pub mod metrics;
pub mod node;
pub mod runtime;
pub mod server;
pub mod service;
pub mod sim;
pub mod task;
pub mod tls;
pub mod volume;

/// The address the APIs bind unless told otherwise: loopback.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Where a manager listens unless told otherwise.
pub const DEFAULT_MANAGER_PORT: u16 = 5555;
/// The manager the client commands talk to unless told otherwise.
pub const DEFAULT_MANAGER_URL: &str = "http://127.0.0.1:5555";
/// Where a worker listens unless told otherwise.
pub const DEFAULT_WORKER_PORT: u16 = 5556;

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_manager_url_is_the_default_host_and_port() {
        assert_eq!(
            super::DEFAULT_MANAGER_URL,
            format!(
                "http://{}:{}",
                super::DEFAULT_HOST,
                super::DEFAULT_MANAGER_PORT
            )
        );
    }
}
