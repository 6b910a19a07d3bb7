//! A runtime that times every call of another into [`RuntimeMetrics`]
//! (`cube_docker_call_seconds{call}` on the worker's `GET /metrics`), whatever the runtime is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{ContainerSpec, ContainerStatus, Runtime, RuntimeError, RuntimeEvent, VolumeInfo};
use crate::metrics::RuntimeMetrics;

/// `inner`, its calls timed (answered or failed alike: a slow failure is as slow).
pub struct Timed {
    inner: Arc<dyn Runtime>,
    metrics: RuntimeMetrics,
}

impl Timed {
    pub fn new(inner: Arc<dyn Runtime>, metrics: RuntimeMetrics) -> Timed {
        Timed { inner, metrics }
    }

    fn time<T: Send + 'static>(
        &self,
        call: &'static str,
        future: BoxFuture<'static, T>,
    ) -> BoxFuture<'static, T> {
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let out = future.await;
            metrics.observe(call, started.elapsed());
            out
        })
    }
}

impl Runtime for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn reconcile_every(&self) -> Option<Duration> {
        self.inner.reconcile_every()
    }

    fn start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'static, Result<ContainerStatus, RuntimeError>> {
        self.time("start", self.inner.start(spec))
    }

    fn stop(
        &self,
        container_id: String,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.time("stop", self.inner.stop(container_id, timeout))
    }

    fn remove(&self, container_id: String) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.time("remove", self.inner.remove(container_id))
    }

    fn inspect(
        &self,
        container_id: String,
    ) -> BoxFuture<'static, Result<Option<ContainerStatus>, RuntimeError>> {
        self.time("inspect", self.inner.inspect(container_id))
    }

    fn list(
        &self,
        worker: String,
    ) -> BoxFuture<'static, Result<Vec<ContainerStatus>, RuntimeError>> {
        self.time("list", self.inner.list(worker))
    }

    fn logs(
        &self,
        container_id: String,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        // A stream that lasts as long as the client follows: not a call to time.
        self.inner.logs(container_id, tail, follow)
    }

    fn allowed_host_paths(&self, worker: &str) -> Vec<String> {
        self.inner.allowed_host_paths(worker)
    }

    fn volumes(&self, worker: String) -> BoxFuture<'static, Result<Vec<VolumeInfo>, RuntimeError>> {
        self.time("volumes", self.inner.volumes(worker))
    }

    fn events(&self, worker: String) -> BoxStream<'static, RuntimeEvent> {
        self.inner.events(worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[actix_rt::test]
    async fn every_call_of_the_inner_runtime_is_timed_by_its_name() {
        let metrics = RuntimeMetrics::default();
        let timed = Timed::new(Arc::new(FakeRuntime::new(Duration::ZERO)), metrics.clone());
        let _ = timed.list("w1".into()).await;
        let _ = timed.inspect("nothing".into()).await;
        let _ = timed.inspect("nothing".into()).await;
        let count = |call| metrics.call(call).map_or(0, |h| h.count());
        assert_eq!((count("list"), count("inspect"), count("start")), (1, 2, 0));
    }
}
