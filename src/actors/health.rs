//! The HealthChecker actor: HTTP health checks of running tasks, and nothing else.
//!
//! The Manager tells it which attempt of which task to [`Watch`], at which URL (the task's
//! `health_check` path on the host port of its first exposed port, at its worker's address).
//! The first check comes [`FIRST_CHECK`] after the start (or one interval, if shorter), so a
//! healthy task is known to be healthy, and is listed among its service's endpoints, within a
//! second; the next ones every interval. A check fails on a non-2xx answer, a refused
//! connection or a timeout. Every result goes back to the Manager as [`HealthChecked`]: how many
//! failures make an attempt Failed is a rule of the task's life, so it lives in the Manager's
//! core. The checker never changes a task itself.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use uuid::Uuid;

/// Longest a single check may take, whatever the interval.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The first check of an attempt comes this soon after the watch begins.
pub const FIRST_CHECK: Duration = Duration::from_secs(1);

/// The result of one check of an attempt: `Err` says what failed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct HealthChecked {
    pub id: Uuid,
    pub attempt: u32,
    pub result: Result<(), String>,
}

struct Watched {
    attempt: u32,
    url: String,
    timer: SpawnHandle,
}

pub struct HealthChecker {
    interval: Duration,
    manager: Recipient<HealthChecked>,
    http: awc::Client,
    watched: HashMap<Uuid, Watched>,
}

impl HealthChecker {
    pub fn new(interval: Duration, manager: Recipient<HealthChecked>) -> HealthChecker {
        let timeout = interval.min(MAX_CHECK_TIMEOUT);
        HealthChecker {
            interval,
            manager,
            http: awc::Client::builder()
                .timeout(timeout)
                .disable_redirects()
                .finish(),
            watched: HashMap::new(),
        }
    }

    fn schedule(
        &mut self,
        id: Uuid,
        attempt: u32,
        after: Duration,
        ctx: &mut Context<Self>,
    ) -> SpawnHandle {
        ctx.run_later(after, move |act, ctx| act.check(id, attempt, ctx))
    }

    fn check(&mut self, id: Uuid, attempt: u32, ctx: &mut Context<Self>) {
        let Some(w) = self.watched.get(&id).filter(|w| w.attempt == attempt) else {
            return;
        };
        let request = self.http.get(&w.url).send();
        let url = w.url.clone();
        ctx.spawn(
            async move { request.await.map(|res| res.status()) }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if act.watched.get(&id).is_none_or(|w| w.attempt != attempt) {
                        return;
                    }
                    let result = match res {
                        Ok(status) if status.is_success() => Ok(()),
                        Ok(status) => Err(format!("{url} answered {status}")),
                        Err(e) => Err(format!("{url}: {e}")),
                    };
                    act.manager.do_send(HealthChecked {
                        id,
                        attempt,
                        result,
                    });
                    let timer = act.schedule(id, attempt, act.interval, ctx);
                    if let Some(w) = act.watched.get_mut(&id) {
                        w.timer = timer;
                    }
                }),
        );
    }
}

impl Actor for HealthChecker {
    type Context = Context<Self>;
}

/// Check this attempt of a task at `url`: soon ([`FIRST_CHECK`]), then every interval.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub id: Uuid,
    pub attempt: u32,
    pub url: String,
}

impl Handler<Watch> for HealthChecker {
    type Result = ();

    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) {
        if let Some(w) = self.watched.get(&msg.id)
            && w.attempt == msg.attempt
            && w.url == msg.url
        {
            return;
        }
        if let Some(old) = self.watched.remove(&msg.id) {
            ctx.cancel_future(old.timer);
        }
        let first = self.interval.min(FIRST_CHECK);
        let timer = self.schedule(msg.id, msg.attempt, first, ctx);
        self.watched.insert(
            msg.id,
            Watched {
                attempt: msg.attempt,
                url: msg.url,
                timer,
            },
        );
    }
}

/// Stop checking a task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unwatch(pub Uuid);

impl Handler<Unwatch> for HealthChecker {
    type Result = ();

    fn handle(&mut self, msg: Unwatch, ctx: &mut Context<Self>) {
        if let Some(old) = self.watched.remove(&msg.0) {
            ctx.cancel_future(old.timer);
        }
    }
}
