//! The gRPC front as Python sees it: started on a host and port with the grpcio server's
//! Unix socket behind it, told which models to answer, asked for its counts, stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::front::{listen, Front, Limits, ServedModel};

use super::batching::Batcher;
use super::Signature;

/// `(model, status, requests)` and `(model, decode seconds of each request)`.
type Collected = (Vec<(String, &'static str, u64)>, Vec<(String, Vec<f64>)>);

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// A period in seconds; 0 turns it off.
fn seconds_or_never(name: &str, value: f64) -> PyResult<Option<Duration>> {
    Ok(Some(seconds(name, value)?).filter(|d| !d.is_zero()))
}

#[pyclass(name = "GrpcFront", module = "arrowsmith._native", frozen)]
pub struct GrpcFront {
    front: Front,
    port: u16,
}

#[pymethods]
impl GrpcFront {
    #[new]
    #[pyo3(signature = (
        host,
        port,
        backend_socket,
        max_message_size,
        reuse_port,
        *,
        max_inflight_bytes = None,
        max_concurrent_streams = 128,
        max_connections = 1024,
        keepalive_interval = 60.0,
        keepalive_timeout = 20.0,
        idle_timeout = 300.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        backend_socket: PathBuf,
        max_message_size: usize,
        reuse_port: bool,
        max_inflight_bytes: Option<usize>,
        max_concurrent_streams: u32,
        max_connections: usize,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        idle_timeout: f64,
    ) -> PyResult<Self> {
        let limits = Limits {
            max_message_size,
            max_inflight_bytes: max_inflight_bytes
                .unwrap_or_else(|| Limits::default().max_inflight_bytes.max(max_message_size)),
            max_concurrent_streams,
            max_connections,
            keepalive_interval: seconds_or_never("keepalive_interval", keepalive_interval)?,
            keepalive_timeout: seconds("keepalive_timeout", keepalive_timeout)?,
            idle_timeout: seconds_or_never("idle_timeout", idle_timeout)?,
        };
        limits.check().map_err(PyValueError::new_err)?;
        let listener = listen(host, port, reuse_port)
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {host}:{port}: {e}")))?;
        let port = listener.local_addr()?.port();
        let front = Front::start(listener, backend_socket, limits)?;
        Ok(GrpcFront { front, port })
    }

    /// The port it listens on.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Answers ModelInfer for this model natively from now on.
    #[pyo3(signature = (name, version, batcher, signature = None))]
    fn serve(
        &self,
        name: String,
        version: String,
        batcher: &Batcher,
        signature: Option<&Signature>,
    ) {
        self.front.serve(ServedModel {
            name,
            version,
            batcher: Arc::clone(&batcher.0),
            signature: signature.map(|s| s.0.clone()),
        });
    }

    /// Requests answered and decode times since the last call.
    fn take_stats(&self) -> Collected {
        let collected = self.front.stats().take();
        (
            collected
                .requests
                .into_iter()
                .map(|((model, status), n)| (model, status, n))
                .collect(),
            collected.decode_seconds.into_iter().collect(),
        )
    }

    /// Whether the front still serves: False once its thread has ended.
    #[getter]
    fn running(&self) -> bool {
        self.front.is_running()
    }

    /// Request bytes held by calls in flight now.
    #[getter]
    fn inflight_bytes(&self) -> usize {
        self.front.inflight_bytes()
    }

    /// Takes `bytes` from the process's budget of request bytes in flight, which the HTTP
    /// front shares; False when that would pass the limit. `release_inflight` gives them back.
    fn reserve_inflight(&self, bytes: usize) -> bool {
        self.front.budget().take(bytes).is_ok()
    }

    /// Gives back bytes taken with `reserve_inflight`.
    fn release_inflight(&self, bytes: usize) {
        self.front.budget().give_back(bytes);
    }

    /// Stops listening and gives calls in flight up to `grace_seconds` to finish.
    fn stop(&self, py: Python<'_>, grace_seconds: f64) -> PyResult<()> {
        let grace = seconds("grace_seconds", grace_seconds)?;
        py.detach(|| self.front.stop(grace));
        Ok(())
    }
}
