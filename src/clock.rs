//! Time as the decision cores see it: always passed in, never read.
//!
//! The cores ([`crate::actors::manager::core`], [`crate::actors::worker::core`],
//! [`crate::node::Liveness`]) take a [`Now`] with every input, so the same code runs on the real
//! clock in the actors and on a simulated one in the seeded fault simulation, where a seed fixes
//! every instant. Only the shells make a [`Clock`].

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// One instant, in the two forms the cores need: monotonic time for deadlines (timeouts,
/// backoffs, retries), and wall time for what users read (`start_time`, `finish_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Time since an arbitrary origin fixed by the clock; only differences mean anything.
    pub mono: Duration,
    pub wall: DateTime<Utc>,
}

impl Now {
    /// The instant `d` after this one.
    pub fn after(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            wall: self.wall + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// The real clock of a process: monotonic time counted from when it was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        Now {
            mono: self.origin.elapsed(),
            wall: Utc::now(),
        }
    }

    /// How long from now until `deadline` (zero when it has passed).
    pub fn until(&self, deadline: Duration) -> Duration {
        deadline.saturating_sub(self.origin.elapsed())
    }
}
