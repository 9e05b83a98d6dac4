//! The gRPC front as Python sees it: started on a host and port with the grpcio server's
//! Unix socket behind it, told which models to answer, asked for its counts, stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::front::{listen, Front, ServedModel};

use super::batching::Batcher;
use super::Signature;

/// `(model, status, requests)` and `(model, decode seconds of each request)`.
type Collected = (Vec<(String, &'static str, u64)>, Vec<(String, Vec<f64>)>);

#[pyclass(name = "GrpcFront", module = "arrowsmith._native", frozen)]
pub struct GrpcFront {
    front: Front,
    port: u16,
}

#[pymethods]
impl GrpcFront {
    #[new]
    #[pyo3(signature = (host, port, backend_socket, max_message_size, reuse_port))]
    fn new(
        host: &str,
        port: u16,
        backend_socket: PathBuf,
        max_message_size: usize,
        reuse_port: bool,
    ) -> PyResult<Self> {
        let listener = listen(host, port, reuse_port)
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {host}:{port}: {e}")))?;
        let port = listener.local_addr()?.port();
        let front = Front::start(listener, backend_socket, max_message_size)?;
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

    /// Stops listening and gives calls in flight up to `grace_seconds` to finish.
    fn stop(&self, py: Python<'_>, grace_seconds: f64) -> PyResult<()> {
        let grace = Duration::try_from_secs_f64(grace_seconds)
            .map_err(|e| PyValueError::new_err(format!("grace_seconds: {e}")))?;
        py.detach(|| self.front.stop(grace));
        Ok(())
    }
}
