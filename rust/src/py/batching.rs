//! The batcher as Python sees it. Request threads block in `Batcher.submit` with the
//! interpreter released; the model's runner thread loops on `Batcher.next_batch`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::batch::{
    Batch as CoreBatch, BatchConfig, Batcher as CoreBatcher, Job as CoreJob, Notify,
};
use crate::encode::{EncodedResponse, OutputTensor};
use crate::error::Error;
use crate::tensor::{ParamValue, Parameters};

use super::buffers::{import_array, rust_owned, ArrowArray};
use super::errors::error_from_code;
use super::{params_dict, record_batch, tensor_view, TensorView};

/// A response written straight into a new Python `bytes` object.
fn response_bytes<'py>(
    py: Python<'py>,
    encoded: &EncodedResponse,
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, encoded.encoded_len(), |mut out| {
        py.detach(|| encoded.write_to(&mut out));
        Ok(())
    })
}

/// One request, ready to join a batch.
#[pyclass(name = "Job", module = "arrowsmith._native", frozen)]
pub struct Job(pub Arc<CoreJob>);

/// The deadline `timeout` seconds from now; None without a timeout or when it lies beyond
/// what the clock can represent (no deadline then, as gRPC treats an unreadable one).
pub fn deadline_after(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(seconds) = timeout else {
        return Ok(None);
    };
    if seconds.is_nan() {
        return Err(PyValueError::new_err(format!(
            "timeout {seconds} is not a number"
        )));
    }
    Ok(Duration::try_from_secs_f64(seconds.max(0.0))
        .ok()
        .and_then(|d| Instant::now().checked_add(d)))
}

#[pymethods]
impl Job {
    /// The job as a batch of its own, outside any queue.
    fn as_batch(&self) -> Batch {
        Batch(CoreBatch::of(Arc::clone(&self.0)))
    }

    /// The client went away: the job leaves the queue and its waiter returns.
    fn cancel(&self) {
        self.0.abandon();
    }

    /// The settled job's response bytes (or its error), without waiting.
    fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let Some(answer) = self.0.try_answer() else {
            return Err(
                Error::Internal(format!("request '{}' has no answer yet", self.0.id)).into(),
            );
        };
        response_bytes(py, &answer?)
    }
}

/// One model's queue and batch former.
#[pyclass(name = "Batcher", module = "arrowsmith._native", frozen)]
pub struct Batcher(pub Arc<CoreBatcher>);

#[pymethods]
impl Batcher {
    #[new]
    #[pyo3(signature = (model_name, model_version, max_batch_size, max_batch_delay_ms, max_queue_size))]
    fn new(
        model_name: String,
        model_version: String,
        max_batch_size: usize,
        max_batch_delay_ms: f64,
        max_queue_size: usize,
    ) -> PyResult<Self> {
        if max_batch_size == 0 || max_queue_size == 0 {
            return Err(PyValueError::new_err(
                "max_batch_size and max_queue_size must be positive",
            ));
        }
        let max_delay = Duration::try_from_secs_f64(max_batch_delay_ms / 1000.0)
            .map_err(|e| PyValueError::new_err(format!("max_batch_delay_ms: {e}")))?;
        let config = BatchConfig {
            max_batch_rows: max_batch_size,
            max_delay,
            max_queue: max_queue_size,
        };
        Ok(Self(Arc::new(CoreBatcher::new(
            config,
            model_name,
            model_version,
        ))))
    }

    /// Queues the job and blocks, without the interpreter lock, until its response bytes.
    fn submit<'py>(&self, py: Python<'py>, job: &Job) -> PyResult<Bound<'py, PyBytes>> {
        let job = Arc::clone(&job.0);
        let batcher = Arc::clone(&self.0);
        let encoded = py.detach(move || {
            batcher.submit(&job)?;
            batcher.wait(&job)
        })?;
        response_bytes(py, &encoded)
    }

    /// The next batch, waiting for one without the interpreter lock; None once closed and
    /// drained.
    fn next_batch(&self, py: Python<'_>) -> Option<Batch> {
        let batcher = Arc::clone(&self.0);
        py.detach(move || batcher.next_batch()).map(Batch)
    }

    /// Refuses new requests; the runner drains the queue, then `next_batch` returns None.
    fn close(&self) {
        self.0.close();
    }

    /// Closes the batcher and answers every queued request with one error, given by its
    /// `arrowsmith.errors.ErrorCode` name; returns how many were answered.
    fn abort(&self, code: &str, message: String) -> usize {
        self.0.abort(&error_from_code(code, message))
    }

    /// A reason: new requests are refused UNAVAILABLE with it (queued ones stay); None: taken
    /// again.
    #[pyo3(signature = (reason))]
    fn set_unavailable(&self, reason: Option<String>) {
        self.0.set_unavailable(reason);
    }

    #[getter]
    fn depth(&self) -> usize {
        self.0.depth()
    }
}

/// Requests predicted together.
#[pyclass(name = "Batch", module = "arrowsmith._native", frozen)]
pub struct Batch(CoreBatch);

#[pymethods]
impl Batch {
    /// How the runner builds the model input: "columns", "tensors", or a content type.
    #[getter]
    fn form(&self) -> &str {
        &self.0.first().form
    }

    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, &self.0.first().parameters)
    }

    #[getter]
    fn requested_outputs(&self) -> Vec<String> {
        self.0.first().requested_outputs.clone()
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// Rows of each request.
    fn rows(&self) -> Vec<usize> {
        self.0.rows()
    }

    /// Seconds each request waited in the queue.
    fn queue_waits(&self) -> Vec<f64> {
        self.0.queue_waits()
    }

    /// Each input's own parameters (e.g. `content_type`), by input name.
    fn input_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for tensor in &self.0.first().tensors {
            dict.set_item(&tensor.name, params_dict(py, &tensor.parameters)?)?;
        }
        Ok(dict)
    }

    /// The batch's tensors, concatenated along the rows.
    fn inputs(&self, py: Python<'_>) -> PyResult<Vec<TensorView>> {
        let tensors = py.detach(|| self.0.inputs())?;
        Ok(tensors.iter().map(tensor_view).collect())
    }

    /// The batch's columns as one Arrow record batch (struct array).
    fn frame(&self, py: Python<'_>) -> PyResult<ArrowArray> {
        let tensors = py.detach(|| self.0.inputs())?;
        let rows = self.0.rows().iter().sum();
        record_batch(
            tensors.into_iter().map(|t| (t.name, t.values)).unzip(),
            rows,
        )
    }

    /// Every column of the batch in one flat array, column after column, when they share one
    /// integer or float type; None otherwise.
    fn column_block(&self, py: Python<'_>) -> PyResult<Option<ArrowArray>> {
        let block = py.detach(|| self.0.column_block())?;
        Ok(block.map(ArrowArray::new))
    }

    /// The names of the batch's inputs, in order.
    fn input_names(&self) -> Vec<String> {
        self.0
            .first()
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Answers every request from the model's outputs `(name, shape, values)`, split by rows;
    /// `parameters` (text values) go into every response.
    #[pyo3(signature = (outputs, parameters = None))]
    fn complete(
        &self,
        py: Python<'_>,
        outputs: Vec<(String, Vec<i64>, Bound<'_, PyAny>)>,
        parameters: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<()> {
        let parameters: Parameters = parameters
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, ParamValue::String(v)))
            .collect();
        let imported = outputs
            .into_iter()
            .map(|(name, shape, values)| Ok((name, shape, import_array(&values)?)))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| {
            let outputs = imported
                .iter()
                .map(|(name, shape, values)| {
                    Ok(OutputTensor {
                        name: name.clone(),
                        shape: shape.clone(),
                        values: rust_owned(values)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>();
            match outputs {
                Ok(outputs) => self.0.complete(outputs, &parameters),
                Err(error) => self.0.fail(&error),
            }
        });
        Ok(())
    }

    /// Answers every request with one error, given by its `arrowsmith.errors.ErrorCode` name.
    fn fail(&self, code: &str, message: String) {
        self.0.fail(&error_from_code(code, message));
    }

    /// One batch per request, to retry a failed batch request by request.
    fn singles(&self) -> Vec<Batch> {
        self.0.singles().into_iter().map(Batch).collect()
    }
}

/// Jobs whose answers an event loop collects: each settled job's token is queued and a
/// byte written to a socket pair, whose reading end (`fileno`) the loop watches.
#[pyclass(name = "Completions", module = "arrowsmith._native", frozen)]
pub struct Completions {
    reader: UnixStream,
    writer: Arc<UnixStream>,
    settled: Arc<Mutex<Vec<u64>>>,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Completions {
            reader,
            writer: Arc::new(writer),
            settled: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The file descriptor that turns readable when jobs have settled.
    #[getter]
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Queues `job` in `batcher`; `token` comes back from `take` once the job settles.
    fn submit(&self, batcher: &Batcher, job: &Job, token: u64) -> PyResult<()> {
        let settled = Arc::clone(&self.settled);
        let writer = Arc::clone(&self.writer);
        job.0.notify_when_settled(Notify(Box::new(move || {
            settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(token);
            // A full socket already holds a wake-up for the reader: nothing is lost.
            let _ = (&*writer).write(&[1]);
        })));
        batcher.0.submit(&job.0)?;
        Ok(())
    }

    /// The tokens of the jobs settled since the last call.
    fn take(&self) -> Vec<u64> {
        let mut drained = [0u8; 512];
        while matches!((&self.reader).read(&mut drained), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.settled.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
