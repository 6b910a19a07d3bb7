//! Simulations of Cube, two kinds:
//!
//! - [`scale`]: the real actors, store and HTTP-less workers on the fake runtime, thousands of
//!   them in one process, to measure placement and throughput at scale
//!   (`examples/simulate.rs`).
//! - [`faults`]: a seeded, deterministic fault simulation of the decision cores (the manager's,
//!   the scheduler's book, every worker's, node liveness) with simulated workers, network, disks,
//!   Docker and time: one seed fixes every message's order and delay, every drop, crash and
//!   partition, and the invariants are checked after every step (`examples/faults.rs`).

pub mod faults;
pub mod planted;
pub mod scale;

pub use scale::*;
