//! Known bugs of Cube's earlier lifecycle, put back on demand so a test can show that the fault
//! simulation finds each of them. Only test builds can turn one on: in every other build
//! [`planted`] is a constant `false` and the buggy branches compile away.

/// A bug the fault simulation must be able to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The manager takes a worker's report of an older attempt on the task's node as news about
    /// the current attempt (its end ends the current one, and is restarted again).
    StaleReportIsCurrent,
    /// A worker answers a stop for a task it has not started yet and forgets it, so the start
    /// that arrives after it runs a container of a stopped task.
    EarlyStopForgotten,
    /// A worker whose Docker stop fails believes the stop is still under way and never retries
    /// it, so the container runs on.
    FailedStopNotRetried,
    /// A worker that never answered since the manager started is never declared Down, so the
    /// tasks of a worker dead at the manager's start are never moved.
    SilentFromStartNeverDown,
    /// A worker drops a finished task once its retention passed, without waiting for the
    /// manager to acknowledge its final record.
    DropUnacknowledged,
}

#[cfg(test)]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is planted on this thread.
#[cfg(test)]
pub fn planted(bug: Bug) -> bool {
    PLANTED.with(|p| p.get() == Some(bug))
}

/// Whether `bug` is planted: never, outside tests.
#[cfg(not(test))]
#[inline(always)]
pub const fn planted(_: Bug) -> bool {
    false
}

/// Plant `bug` (or none) on this thread, for the simulation's own tests.
#[cfg(test)]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}
