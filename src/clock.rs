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

/// A core's pending deadlines: what is due when. Timers are never cancelled, only found stale
/// when they fire (each core checks that what it armed still holds), which keeps arming cheap.
#[derive(Debug)]
pub struct Timers<T: Ord> {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Duration, T)>>,
}

impl<T: Ord> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: std::collections::BinaryHeap::new(),
        }
    }
}

impl<T: Ord> Timers<T> {
    /// `timer` is due at `at` (monotonic).
    pub fn arm(&mut self, at: Duration, timer: T) {
        self.heap.push(std::cmp::Reverse((at, timer)));
    }

    /// When the earliest timer is due.
    pub fn next(&self) -> Option<Duration> {
        self.heap.peek().map(|std::cmp::Reverse((at, _))| *at)
    }

    /// The earliest timer, if it is due by `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<T> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|std::cmp::Reverse((_, timer))| timer)
    }
}

/// `min` doubled `n` times, never more than `max`: the wait before retry number `n + 1`.
pub fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    min.saturating_mul(1 << n.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_and_stops_at_max() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (0..8).map(|n| backoff(min, max, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }
}
