//! The actors of Cube and the messages between them. Each actor is a shell: the rules live in
//! pure cores beside it (`manager::core`, `worker::core`, `scheduler::book`, `policy`,
//! `crate::node::Liveness`), and the actor feeds them inputs and carries out their effects.
//!
//! | actor | owns | receives |
//! |---|---|---|
//! | [`manager::Manager`] | every task record and its lifecycle; the node table | Submit, StopTask, GetTask, ListTasks, CountTasks, ListNodes, LogsOf, Connect; NodeUp, NodeDown, Report, StartDone, StopDone (proxies); CapacityAvailable (scheduler); HealthChecked |
//! | [`scheduler::Scheduler`] | the book of capacity and reservations; the placement policy | Place, Release, Restore, NodeReady, NodeCapacity, ListBook |
//! | [`worker_proxy::WorkerProxy`] | the connection to one worker endpoint; its liveness | CallStart, CallStop, Resync, Registration, Info, Link |
//! | [`health::HealthChecker`] | HTTP health probes of running tasks | Watch, Unwatch |
//! | [`events::EventHub`] | the event stream: the last events in a ring, the subscribers | Publish (manager, after a commit), Subscribe (`GET /events`) |
//! | [`worker::Worker`] | the tasks placed on one node, their containers, the change feed | StartAttempt, StopAttempt, ReadTask, ReadTasks, WatchChanges, GetStats, ReadLogs |
//!
//! Actors own their state and are reached only through `Addr`/`Recipient`; blocking work
//! (LMDB commits, /proc reads) runs on threads of its own.

pub mod client;
pub mod events;
pub mod health;
pub mod manager;
pub mod policy;
pub mod scheduler;
pub mod worker;
pub mod worker_proxy;

/// Messages an actor's mailbox holds before `send` makes callers wait. Bursts of submissions
/// and reports are normal for Cube's actors; actix's default of 16 would serialise them.
pub const MAILBOX_CAPACITY: usize = 1 << 16;

/// The one timer a shell keeps armed for its core's next deadline: re-armed only when the
/// deadline changes, so a busy actor does not pile up timers.
#[derive(Debug, Default)]
pub struct CoreTimer {
    armed: Option<(std::time::Duration, actix::SpawnHandle)>,
}

impl CoreTimer {
    /// Arm for `next` (the core's deadline, on `clock`) unless armed for it already; `fire`
    /// runs then, and must call [`CoreTimer::fired`] before it feeds the core.
    pub fn arm<A>(
        &mut self,
        ctx: &mut actix::Context<A>,
        clock: &crate::clock::Clock,
        next: Option<std::time::Duration>,
        fire: fn(&mut A, &mut actix::Context<A>),
    ) where
        A: actix::Actor<Context = actix::Context<A>>,
    {
        use actix::AsyncContext;
        if self.armed.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let handle = ctx.run_later(clock.until(at), fire);
            self.armed = Some((at, handle));
        }
    }

    /// The armed timer fired.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

/// The maps keyed by task id or node name, a million entries at scale: foldhash is several
/// times faster than the standard SipHash on short keys and still seeded per process, so ids a
/// client chooses cannot be picked to collide.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
