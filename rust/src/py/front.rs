//! The gRPC front as Python sees it: started on a host and port and/or a Unix socket, told
//! which models (and versions of them) it serves and how ready they are, given the handler
//! of the model repository methods, asked for its counts, stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyKeyError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use prost::Message;

use crate::error::Error;
use crate::front::tls::TlsFiles;
use crate::front::{
    listen, listen_unix, Front, Limits, Listeners, RepositoryHandler, RepositoryMethod,
    ServedModel, ServerInfo,
};
use crate::proto::{ModelConfigResponse, ModelMetadataResponse};

use super::batching::Batcher;
use super::errors::error_from_exception;
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

/// A Python callable `handler(method, request) -> response` answering the model repository
/// methods with serialized messages; called on tokio's blocking pool, holding the
/// interpreter only while it runs.
struct PyRepositoryHandler(Py<PyAny>);

impl RepositoryHandler for PyRepositoryHandler {
    fn call(&self, method: RepositoryMethod, request: Bytes) -> Result<Vec<u8>, Error> {
        let answered = Python::try_attach(|py| {
            let request = PyBytes::new(py, &request);
            match self.0.bind(py).call1((method.name(), request)) {
                Ok(answer) => match answer.cast::<PyBytes>() {
                    Ok(bytes) => Ok(bytes.as_bytes().to_vec()),
                    Err(_) => Err(Error::Internal(format!(
                        "the repository handler answered {} with {}, not bytes",
                        method.name(),
                        answer
                            .get_type()
                            .name()
                            .map_or_else(|_| "an object".to_owned(), |name| name.to_string())
                    ))),
                },
                Err(exception) => Err(error_from_exception(py, &exception)),
            }
        });
        answered.unwrap_or_else(|| {
            Err(Error::Unavailable(format!(
                "{} cannot be answered: the server is stopping",
                method.name()
            )))
        })
    }
}

#[pyclass(name = "GrpcFront", module = "arrowsmith._native", frozen)]
pub struct GrpcFront {
    front: Front,
    port: Option<u16>,
    flight_port: Option<u16>,
}

fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> PyResult<Option<TlsFiles>> {
    match (cert, key, client_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        _ => Err(PyValueError::new_err(
            "TLS needs a certificate and its key (a client CA only with them)",
        )),
    }
}

#[pymethods]
impl GrpcFront {
    #[new]
    #[pyo3(signature = (
        host,
        port,
        max_message_size,
        reuse_port,
        *,
        uds = None,
        server_name = String::new(),
        server_version = String::new(),
        expected_models = Vec::new(),
        tls_cert = None,
        tls_key = None,
        tls_client_ca = None,
        max_inflight_bytes = None,
        max_concurrent_streams = 128,
        max_connections = 1024,
        keepalive_interval = 60.0,
        keepalive_timeout = 20.0,
        idle_timeout = 300.0,
        flight_port = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: Option<u16>,
        max_message_size: usize,
        reuse_port: bool,
        uds: Option<PathBuf>,
        server_name: String,
        server_version: String,
        expected_models: Vec<String>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_client_ca: Option<PathBuf>,
        max_inflight_bytes: Option<usize>,
        max_concurrent_streams: u32,
        max_connections: usize,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        idle_timeout: f64,
        flight_port: Option<u16>,
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
        let tls = tls_files(tls_cert, tls_key, tls_client_ca)?;
        let mut listeners = Listeners::default();
        if let Some(port) = port {
            let listener = listen(host, port, reuse_port)
                .map_err(|e| PyOSError::new_err(format!("cannot listen on {host}:{port}: {e}")))?;
            listeners.tcp = Some(listener);
        }
        if let Some(path) = uds {
            let listener = listen_unix(&path).map_err(|e| {
                PyOSError::new_err(format!("cannot listen on {}: {e}", path.display()))
            })?;
            listeners.unix = Some((listener, path));
        }
        if let Some(port) = flight_port {
            let listener = listen(host, port, reuse_port).map_err(|e| {
                PyOSError::new_err(format!("cannot listen for Flight on {host}:{port}: {e}"))
            })?;
            listeners.flight = Some(listener);
        }
        let local_port = |listener: &Option<std::net::TcpListener>| -> PyResult<Option<u16>> {
            Ok(match listener {
                Some(listener) => Some(listener.local_addr()?.port()),
                None => None,
            })
        };
        let port = local_port(&listeners.tcp)?;
        let flight_port = local_port(&listeners.flight)?;
        let server = ServerInfo {
            name: server_name,
            version: server_version,
            extensions: Vec::new(),
        };
        let front = Front::start(listeners, limits, tls, server, expected_models)
            .map_err(|e| PyOSError::new_err(format!("the gRPC front cannot start: {e}")))?;
        Ok(GrpcFront {
            front,
            port,
            flight_port,
        })
    }

    /// The TCP port it listens on; None when it listens only on a Unix socket.
    #[getter]
    fn port(&self) -> Option<u16> {
        self.port
    }

    /// The Arrow Flight port it listens on; None without one.
    #[getter]
    fn flight_port(&self) -> Option<u16> {
        self.flight_port
    }

    /// Serves this version of the model from now on, ready: ModelInfer through its
    /// batcher, ModelMetadata and ModelConfig with the given serialized
    /// `ModelMetadataResponse` and `ModelConfigResponse`. It replaces a version of the same
    /// name and version served before (whose requests in flight still finish), and becomes
    /// the model's default version (what requests without a version get) when the model has
    /// none.
    #[pyo3(signature = (name, version, batcher, metadata, config, signature = None))]
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        py: Python<'_>,
        name: String,
        version: String,
        batcher: &Batcher,
        metadata: &[u8],
        config: &[u8],
        signature: Option<&Signature>,
    ) -> PyResult<()> {
        let invalid = |what: &str, e: prost::DecodeError| {
            PyValueError::new_err(format!("{what} is not a serialized message: {e}"))
        };
        let model = ServedModel {
            name,
            version,
            batcher: Arc::clone(&batcher.0),
            signature: signature.map(|s| s.0.clone()),
            metadata: ModelMetadataResponse::decode(metadata)
                .map_err(|e| invalid("metadata", e))?,
            config: ModelConfigResponse::decode(config).map_err(|e| invalid("config", e))?,
        };
        py.detach(|| self.front.serve(model));
        Ok(())
    }

    /// Makes `version` (which must be served) the version of the model that requests
    /// without a version get, from the next request on; KeyError when it is not served.
    fn set_default_version(&self, py: Python<'_>, name: &str, version: &str) -> PyResult<()> {
        py.detach(|| self.front.set_default_version(name, version))
            .map_err(|error| PyKeyError::new_err(error.to_string()))
    }

    /// Stops serving this version: requests naming it are NOT_FOUND from now on, those it
    /// already took still finish (its batcher is left to the caller to close once drained).
    /// When it was the default version, requests without a version are UNAVAILABLE until
    /// `set_default_version` or `serve` gives the model another. False when that version
    /// was not served.
    fn unserve(&self, py: Python<'_>, name: &str, version: &str) -> bool {
        py.detach(|| self.front.unserve(name, version))
    }

    /// A served version's readiness: ModelReady; ServerReady and the model's health service
    /// when it is the model's default version. A version not served is ignored.
    fn set_model_ready(&self, py: Python<'_>, name: &str, version: &str, ready: bool) {
        py.detach(|| self.front.set_model_ready(name, version, ready));
    }

    /// Replaces the names of the models the server must serve to be ready (ServerReady). A
    /// name expected but not served is UNAVAILABLE, as loading; one neither expected nor
    /// served is NOT_FOUND.
    fn set_expected(&self, py: Python<'_>, names: Vec<String>) {
        py.detach(|| self.front.set_expected(names));
    }

    /// Forwards every call naming model `name` (ModelInfer, ModelStreamInfer's messages,
    /// ModelMetadata, ModelReady, ModelConfig) to the gRPC server on the Unix socket
    /// `socket` (another process of this server), not ready until `set_remote_ready`;
    /// None stops routing it.
    #[pyo3(signature = (name, socket))]
    fn route_to(&self, py: Python<'_>, name: &str, socket: Option<PathBuf>) {
        py.detach(|| self.front.route_to(name, socket));
    }

    /// Whether routed model `name` is ready (its health service; ServerReady waits for
    /// every routed model). A name not routed is ignored.
    fn set_remote_ready(&self, py: Python<'_>, name: &str, ready: bool) {
        py.detach(|| self.front.set_remote_ready(name, ready));
    }

    /// What answers RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload from now
    /// on: `handler(method, request) -> response`, `method` the method's name, `request`
    /// and `response` serialized messages. It runs on a thread of its own, never on the
    /// front's; an `arrowsmith.errors.ArrowsmithError` it raises answers with its code's
    /// status and its message, any other exception INTERNAL. None: those methods are
    /// UNIMPLEMENTED.
    fn set_repository_handler(&self, handler: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let handler = match handler {
            Some(handler) if !handler.is_callable() => {
                return Err(PyTypeError::new_err(
                    "the repository handler must be callable",
                ));
            }
            Some(handler) => {
                Some(Arc::new(PyRepositoryHandler(handler.unbind())) as Arc<dyn RepositoryHandler>)
            }
            None => None,
        };
        self.front.set_repository_handler(handler);
        Ok(())
    }

    /// The health of the server as a whole ("" and the inference service).
    fn set_serving(&self, py: Python<'_>, serving: bool) {
        py.detach(|| self.front.set_serving(serving));
    }

    /// Reads the TLS certificate, key and client CA files again; connections made from now
    /// on use them, open ones are not touched. False without TLS. An error leaves the
    /// files in use as they were.
    fn reload_tls(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| self.front.reload_tls())
            .map_err(|e| PyOSError::new_err(format!("TLS files not reloaded: {e}")))
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
