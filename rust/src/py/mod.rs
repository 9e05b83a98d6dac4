//! `arrowsmith._native`: a thin binding over the pure-Rust core. Each entry point owns its
//! inputs, then detaches from the interpreter while Rust works.

mod batching;
mod buffers;
mod client;
mod errors;
mod front;
mod observe;
mod shm;

use std::sync::Arc;

use arrow_array::{ArrayRef, StructArray};
use arrow_schema::{Field, Fields};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::admit::job_for;
use crate::decode::{decode_request as decode, InferRequest as CoreRequest};
use crate::signature::{
    ColumnSpec, ColumnType, Signature as CoreSignature, TensorSpec, TensorType,
};
use crate::tensor::{ParamValue, Parameters, Tensor};

use batching::Job;
use buffers::{borrow_bytes, ArrowArray};

/// A tensor as Python sees it: name, V2 datatype, shape, flat values.
pub(crate) type TensorView = (String, &'static str, Vec<usize>, ArrowArray);

pub(crate) fn tensor_view(tensor: &Tensor) -> TensorView {
    (
        tensor.name.clone(),
        tensor.datatype.name(),
        tensor.shape.clone(),
        ArrowArray::new(Arc::clone(&tensor.values)),
    )
}

/// Named columns as one Arrow struct array (a record batch), for pyarrow and pandas.
pub(crate) fn record_batch(
    (names, columns): (Vec<String>, Vec<ArrayRef>),
    rows: usize,
) -> PyResult<ArrowArray> {
    let fields: Fields = names
        .iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(name, c.data_type().clone(), false))
        .collect();
    let batch = StructArray::try_new_with_length(fields, columns, None, rows)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(ArrowArray::new(Arc::new(batch)))
}

pub(crate) fn params_dict<'py>(
    py: Python<'py>,
    params: &Parameters,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in params {
        match value {
            ParamValue::Bool(v) => dict.set_item(name, v)?,
            ParamValue::Int64(v) => dict.set_item(name, v)?,
            ParamValue::String(v) => dict.set_item(name, v)?,
            ParamValue::Double(v) => dict.set_item(name, v)?,
            ParamValue::Uint64(v) => dict.set_item(name, v)?,
        }
    }
    Ok(dict)
}

/// A model's input signature, converted once when the model loads.
#[pyclass(name = "Signature", module = "arrowsmith._native", frozen)]
pub(crate) struct Signature(CoreSignature);

#[pymethods]
impl Signature {
    /// A column-based signature from `(name or None, MLflow type name, required)` triples.
    #[staticmethod]
    fn columns(specs: Vec<(Option<String>, String, bool)>) -> Self {
        Self(CoreSignature::Columns(
            specs
                .into_iter()
                .map(|(name, ty, required)| ColumnSpec {
                    name,
                    ty: ColumnType::parse(&ty),
                    required,
                })
                .collect(),
        ))
    }

    /// A tensor-based signature from `(name or None, numpy dtype name, shape)` triples.
    #[staticmethod]
    fn tensors(specs: Vec<(Option<String>, String, Vec<i64>)>) -> PyResult<Self> {
        let specs = specs
            .into_iter()
            .map(|(name, dtype, shape)| {
                let ty = TensorType::parse(&dtype).ok_or_else(|| {
                    PyValueError::new_err(format!("unknown tensor dtype '{dtype}'"))
                })?;
                Ok(TensorSpec { name, ty, shape })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self(CoreSignature::Tensors(specs)))
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.0)
    }
}

/// A decoded `ModelInferRequest`.
#[pyclass(name = "InferRequest", module = "arrowsmith._native", frozen)]
struct InferRequest(CoreRequest);

#[pymethods]
impl InferRequest {
    #[getter]
    fn model_name(&self) -> &str {
        &self.0.model_name
    }

    #[getter]
    fn model_version(&self) -> &str {
        &self.0.model_version
    }

    #[getter]
    fn id(&self) -> &str {
        &self.0.id
    }

    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, &self.0.parameters)
    }

    #[getter]
    fn requested_outputs(&self) -> Vec<String> {
        self.0.requested_outputs.clone()
    }

    /// The inputs as sent: `(name, datatype, shape, values)`.
    fn inputs(&self) -> Vec<TensorView> {
        self.0.inputs.iter().map(tensor_view).collect()
    }

    /// Each input's own parameters (e.g. `content_type`), by input name.
    fn input_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for tensor in &self.0.inputs {
            dict.set_item(&tensor.name, params_dict(py, &tensor.parameters)?)?;
        }
        Ok(dict)
    }

    /// The request as a batchable job: with the model's `signature` applied (refusing bad
    /// input here, before any batching), or as sent when there is none or the request asks
    /// for a content type. `timeout`: seconds until the client's deadline.
    #[pyo3(signature = (signature = None, timeout = None))]
    fn job(
        &self,
        py: Python<'_>,
        signature: Option<&Signature>,
        timeout: Option<f64>,
    ) -> PyResult<Job> {
        let deadline = batching::deadline_after(timeout)?;
        let request = self.0.clone();
        let job = py.detach(|| job_for(request, signature.map(|s| &s.0), deadline))?;
        Ok(Job(Arc::new(job)))
    }
}

/// Decodes `ModelInferRequest` bytes; raw contents stay in `data` where alignment allows.
#[pyfunction]
fn decode_request(py: Python<'_>, data: Bound<'_, PyBytes>) -> PyResult<InferRequest> {
    let buf = borrow_bytes(data);
    Ok(InferRequest(py.detach(|| decode(buf))?))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ArrowArray>()?;
    m.add_class::<InferRequest>()?;
    m.add_class::<Signature>()?;
    m.add_class::<batching::Batch>()?;
    m.add_class::<batching::Batcher>()?;
    m.add_class::<batching::Job>()?;
    m.add_class::<batching::Completions>()?;
    m.add_class::<front::GrpcFront>()?;
    m.add_class::<observe::Observation>()?;
    m.add_function(wrap_pyfunction!(observe::configure_tracing, m)?)?;
    m.add_function(wrap_pyfunction!(observe::shutdown_tracing, m)?)?;
    m.add_function(wrap_pyfunction!(observe::configure_access_log, m)?)?;
    m.add_function(wrap_pyfunction!(observe::flush_access_log, m)?)?;
    m.add_function(wrap_pyfunction!(observe::observing, m)?)?;
    m.add_function(wrap_pyfunction!(decode_request, m)?)?;
    m.add_function(wrap_pyfunction!(client::encode_request, m)?)?;
    m.add_function(wrap_pyfunction!(client::decode_response, m)?)?;
    m.add_function(wrap_pyfunction!(client::encode_metadata_request, m)?)?;
    m.add_function(wrap_pyfunction!(client::decode_metadata_response, m)?)?;
    m.add_function(wrap_pyfunction!(shm::allow_shared_memory, m)?)?;
    m.add_function(wrap_pyfunction!(shm::register_shared_memory, m)?)?;
    m.add_function(wrap_pyfunction!(shm::shared_memory_status, m)?)?;
    m.add_function(wrap_pyfunction!(shm::unregister_shared_memory, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_statuses, m)?)?;
    m.add_function(wrap_pyfunction!(errors::native_error_code, m)?)?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}
