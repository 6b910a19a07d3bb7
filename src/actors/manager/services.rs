//! The Manager's messages for services, and their handlers: each feeds the core one input and
//! answers once what it changed is durable. `WatchEndpoints` is a long-poll: it answers when the
//! service's endpoints change (or its wait ends), from a list of waiters looked at after every
//! step.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::shell::Manager;
use super::{ManagerError, SERVICES};
use crate::db::{Batch, StoreError};
use crate::service::{Endpoints, Service, ServiceSpec, ServiceView, parse_patch};

/// Longest wait of one endpoints long-poll.
pub const MAX_ENDPOINTS_WAIT: Duration = Duration::from_secs(300);

/// `POST /services`: answers the service, and whether it is new (false: the same spec again).
#[derive(Message)]
#[rtype(result = "Result<(Service, bool), ManagerError>")]
pub struct CreateService(pub ServiceSpec);

/// `PUT /services/{name}`: the whole spec (a service that does not exist is created).
#[derive(Message)]
#[rtype(result = "Result<(Service, bool), ManagerError>")]
pub struct ReplaceService(pub ServiceSpec);

/// `PATCH /services/{name}`: a JSON merge patch of the spec.
#[derive(Message)]
#[rtype(result = "Result<Service, ManagerError>")]
pub struct PatchService {
    pub name: String,
    pub body: Vec<u8>,
}

/// `DELETE /services/{name}`.
#[derive(Message)]
#[rtype(result = "Result<Service, ManagerError>")]
pub struct DeleteService(pub String);

/// `POST /services/{name}/rollback`.
#[derive(Message)]
#[rtype(result = "Result<Service, ManagerError>")]
pub struct RollbackService(pub String);

/// `GET /services`.
#[derive(Message)]
#[rtype(result = "Vec<ServiceView>")]
pub struct ListServices;

/// `GET /services/{name}`.
#[derive(Message)]
#[rtype(result = "Result<ServiceView, ManagerError>")]
pub struct GetService(pub String);

/// `GET /services/{name}/endpoints`: at once without `index` (or when it is not the current
/// one); otherwise when the endpoints next change, or after `wait`.
#[derive(Message)]
#[rtype(result = "Result<Endpoints, ManagerError>")]
pub struct WatchEndpoints {
    pub name: String,
    pub index: Option<u64>,
    pub wait: Duration,
}

/// A long-poll waiting for a service's endpoints to change from `index`.
pub(super) struct Waiter {
    name: String,
    index: u64,
    tx: oneshot::Sender<Result<Endpoints, ManagerError>>,
}

impl Manager {
    fn endpoints_of(&self, name: &str) -> Result<Endpoints, ManagerError> {
        let (index, list) = self
            .core
            .service_endpoints(name)
            .ok_or_else(|| ManagerError::ServiceNotFound(name.to_string()))?;
        Ok(Endpoints {
            service: name.to_string(),
            index,
            endpoints: list.to_vec(),
        })
    }

    /// Answer the long-polls whose service's endpoints changed (or which is gone).
    pub(super) fn wake_endpoint_waiters(&mut self) {
        if self.endpoint_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.endpoint_waiters);
        for w in waiters {
            if w.tx.is_closed() {
                continue;
            }
            match self.core.service_endpoints(&w.name) {
                Some((index, _)) if index == w.index => self.endpoint_waiters.push(w),
                _ => {
                    let _ = w.tx.send(self.endpoints_of(&w.name));
                }
            }
        }
    }

    /// Carry out the step, and answer with `value` once its writes are durable.
    fn answer_after_commit<T: Send + 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        value: Result<T, ManagerError>,
    ) -> ResponseFuture<Result<T, ManagerError>> {
        let durable = self.carry_out(ctx, true);
        Box::pin(async move {
            let value = value?;
            if let Some(commit) = durable {
                commit.await?;
            }
            Ok(value)
        })
    }

    fn check_room(&self) -> Result<(), ManagerError> {
        self.store.check_room().map_err(ManagerError::Store)
    }
}

impl Handler<CreateService> for Manager {
    type Result = ResponseFuture<Result<(Service, bool), ManagerError>>;

    fn handle(&mut self, msg: CreateService, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = match self.check_room() {
            Ok(()) => {
                let now = self.clock.now();
                self.core
                    .create_service(now, msg.0)
                    .map_err(ManagerError::from)
            }
            Err(e) => Err(e),
        };
        self.answer_after_commit(ctx, outcome)
    }
}

impl Handler<ReplaceService> for Manager {
    type Result = ResponseFuture<Result<(Service, bool), ManagerError>>;

    fn handle(&mut self, msg: ReplaceService, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let spec = msg.0;
        let outcome = match self.core.service(&spec.name) {
            None => self
                .check_room()
                .and_then(|()| Ok(self.core.create_service(now, spec)?)),
            Some(svc) if svc.mode != spec.mode => Err(ManagerError::Input(format!(
                "mode: a service's mode cannot change (it is {}); expected to delete it and create it again",
                serde_json::json!(svc.mode)
            ))),
            Some(_) => self
                .core
                .update_service(now, spec)
                .map(|s| (s, false))
                .map_err(ManagerError::from),
        };
        self.answer_after_commit(ctx, outcome)
    }
}

impl Handler<PatchService> for Manager {
    type Result = ResponseFuture<Result<Service, ManagerError>>;

    fn handle(&mut self, msg: PatchService, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = match self.core.service(&msg.name) {
            None => Err(ManagerError::ServiceNotFound(msg.name)),
            Some(svc) => parse_patch(svc, &msg.body)
                .map_err(|e| ManagerError::Input(e.0))
                .and_then(|spec| Ok(self.core.update_service(now, spec)?)),
        };
        self.answer_after_commit(ctx, outcome)
    }
}

impl Handler<DeleteService> for Manager {
    type Result = ResponseFuture<Result<Service, ManagerError>>;

    fn handle(&mut self, msg: DeleteService, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self
            .core
            .delete_service(now, &msg.0)
            .map_err(ManagerError::from);
        self.answer_after_commit(ctx, outcome)
    }
}

impl Handler<RollbackService> for Manager {
    type Result = ResponseFuture<Result<Service, ManagerError>>;

    fn handle(&mut self, msg: RollbackService, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let outcome = self
            .core
            .rollback_service(now, &msg.0)
            .map_err(ManagerError::from);
        self.answer_after_commit(ctx, outcome)
    }
}

impl Handler<ListServices> for Manager {
    type Result = Vec<ServiceView>;

    fn handle(&mut self, _: ListServices, _: &mut Context<Self>) -> Self::Result {
        self.core
            .service_names()
            .filter_map(|name| self.core.service_view(name))
            .collect()
    }
}

impl Handler<GetService> for Manager {
    type Result = Result<ServiceView, ManagerError>;

    fn handle(&mut self, msg: GetService, _: &mut Context<Self>) -> Self::Result {
        self.core
            .service_view(&msg.0)
            .ok_or(ManagerError::ServiceNotFound(msg.0))
    }
}

impl Handler<WatchEndpoints> for Manager {
    type Result = ResponseFuture<Result<Endpoints, ManagerError>>;

    fn handle(&mut self, msg: WatchEndpoints, ctx: &mut Context<Self>) -> Self::Result {
        let current = self.endpoints_of(&msg.name);
        let waits = match (&current, msg.index) {
            (Ok(now), Some(index)) => now.index == index,
            _ => false,
        };
        if !waits {
            return Box::pin(async move { current });
        }
        let (tx, rx) = oneshot::channel();
        self.endpoint_waiters.push(Waiter {
            name: msg.name.clone(),
            index: msg.index.unwrap_or_default(),
            tx,
        });
        let me = ctx.address();
        let wait = msg.wait.min(MAX_ENDPOINTS_WAIT);
        Box::pin(async move {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(answer)) => answer,
                // The wait ended with no change: the endpoints as they are.
                _ => me
                    .send(WatchEndpoints {
                        name: msg.name,
                        index: None,
                        wait: Duration::ZERO,
                    })
                    .await
                    .map_err(|_| ManagerError::Gone)?,
            }
        })
    }
}

/// Write the services a step changed, and delete those removed.
pub(super) fn put_services(
    batch: &mut Batch,
    services: &[Service],
    removed: &[String],
) -> Result<(), StoreError> {
    for svc in services {
        SERVICES.put(batch, &svc.name, svc)?;
    }
    for name in removed {
        SERVICES.delete(batch, name);
    }
    Ok(())
}
