//! Tracing and the access log as Python sees them: set up once per process from the
//! server's settings, and `Observation`, the HTTP front's handle on one request (the
//! native gRPC front observes its calls itself).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::batching::Job;
use crate::access_log::{self, Format};
use crate::batch::Job as CoreJob;
use crate::observe::{self, Arrival, Observed, Outcome};
use crate::telemetry::{self, Protocol, SamplerChoice, Settings};

/// Turns tracing on for this process: spans of every request go to `endpoint`.
#[pyfunction]
pub fn configure_tracing(
    endpoint: String,
    protocol: &str,
    service_name: String,
    sampler: &str,
    ratio: f64,
) -> PyResult<()> {
    let settings = Settings {
        endpoint,
        protocol: Protocol::parse(protocol)
            .ok_or_else(|| PyValueError::new_err(format!("unknown OTLP protocol {protocol:?}")))?,
        service_name,
        sampler: SamplerChoice::parse(sampler)
            .ok_or_else(|| PyValueError::new_err(format!("unknown trace sampler {sampler:?}")))?,
        ratio,
    };
    telemetry::init(&settings).map_err(PyValueError::new_err)
}

/// Exports the spans still queued, waiting at most `timeout` seconds.
#[pyfunction]
pub fn shutdown_tracing(py: Python<'_>, timeout: f64) {
    let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    py.detach(|| telemetry::shutdown(timeout));
}

/// Turns the access log on for this process (`json` or `text`).
#[pyfunction]
pub fn configure_access_log(format: &str) -> PyResult<()> {
    let format = Format::parse(format)
        .ok_or_else(|| PyValueError::new_err(format!("unknown access-log format {format:?}")))?;
    access_log::init(format).map_err(PyValueError::new_err)
}

/// Writes the access-log lines still buffered (at the end of the process), waiting at
/// most `timeout` seconds; whether they were written.
#[pyfunction]
pub fn flush_access_log(py: Python<'_>, timeout: f64) -> bool {
    let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    py.detach(|| access_log::flush(timeout))
}

/// Whether requests are observed (the access log or tracing is on).
#[pyfunction]
pub fn observing() -> bool {
    observe::observing()
}

fn protocol_name(protocol: &str) -> PyResult<&'static str> {
    match protocol {
        "grpc" => Ok("grpc"),
        "rest" => Ok("rest"),
        "mlflow" => Ok("mlflow"),
        _ => Err(PyValueError::new_err(format!(
            "unknown protocol {protocol:?}"
        ))),
    }
}

/// One HTTP request, from its arrival to its answer: its spans and its access-log line.
#[pyclass(name = "Observation", module = "arrowsmith._native", frozen)]
pub struct Observation {
    observed: Mutex<Option<Observed>>,
    job: Mutex<Option<Arc<CoreJob>>>,
}

#[pymethods]
impl Observation {
    /// The observation of a request that arrived `elapsed` seconds ago, or None when
    /// requests are not observed. `span`: its server span's name (None: logged only).
    #[staticmethod]
    #[pyo3(signature = (protocol, call, elapsed, span=None, traceparent=None, tracestate=None))]
    fn start(
        protocol: &str,
        call: String,
        elapsed: f64,
        span: Option<String>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> PyResult<Option<Observation>> {
        let now = Instant::now();
        let ago = Duration::try_from_secs_f64(elapsed).unwrap_or(Duration::ZERO);
        let observed = Observed::start(Arrival {
            traceparent,
            tracestate,
            span: span.map(Cow::Owned),
            protocol: protocol_name(protocol)?,
            call: Cow::Owned(call),
            arrived: now.checked_sub(ago).unwrap_or(now),
        });
        Ok(observed.map(|observed| Observation {
            observed: Mutex::new(Some(observed)),
            job: Mutex::new(None),
        }))
    }

    /// The W3C `traceparent` of the request's server span, when it is traced.
    #[getter]
    fn traceparent(&self) -> Option<String> {
        self.lock().as_ref().and_then(Observed::traceparent)
    }

    /// Notes that the request was decoded, now.
    fn decoded(&self) {
        if let Some(observed) = self.lock().as_mut() {
            observed.decoded(Instant::now());
        }
    }

    /// Follows `job`, before it is queued: its batch links to the request's span, and its
    /// queue wait and batch times go into the log.
    fn queued(&self, job: &Job) {
        if let Some(context) = self.lock().as_ref().and_then(Observed::trace_context) {
            job.0.set_trace(context);
        }
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&job.0));
    }

    /// Ends the request's spans and writes its line (once; later calls do nothing).
    #[pyo3(signature = (status, model="", version="", error=None))]
    fn finish(&self, status: &str, model: &str, version: &str, error: Option<&str>) {
        let Some(observed) = self.lock().take() else {
            return;
        };
        let job = self
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        observed.finish(&Outcome {
            model,
            version,
            job: job.as_deref(),
            status,
            error,
        });
    }
}

impl Observation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Observed>> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
