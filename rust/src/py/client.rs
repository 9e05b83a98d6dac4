//! The client codec for `arrowsmith.client`: pyarrow arrays in, `ModelInferRequest` bytes
//! out; `ModelInferResponse` bytes in, Arrow arrays out (both through the Arrow PyCapsule
//! interface).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::client_codec::{
    decode_metadata_response as decode_metadata, decode_response as decode,
    encode_metadata_request as encode_metadata, prepare_request, TensorMetadata,
};
use crate::datatype::DataType;
use crate::error::Error;
use crate::tensor::{ParamValue, Parameters, Tensor};

use super::buffers::{borrow_bytes, import_array};
use super::{params_dict, tensor_view, TensorView};

/// One input as Python hands it over: name, shape, values (any `__arrow_c_array__`
/// exporter) and the tensor's parameters.
type InputSpec<'py> = (
    String,
    Vec<usize>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyDict>>,
);

/// A decoded response as Python sees it: model name, version, id, parameters, outputs.
type ResponseView<'py> = (String, String, String, Bound<'py, PyDict>, Vec<TensorView>);

/// A tensor of a model's metadata as Python sees it: name, datatype, shape, parameters.
type TensorMetadataView<'py> = (String, String, Vec<i64>, Bound<'py, PyDict>);

/// A model's metadata as Python sees it: name, versions, platform, inputs, outputs.
type MetadataView<'py> = (
    String,
    Vec<String>,
    String,
    Vec<TensorMetadataView<'py>>,
    Vec<TensorMetadataView<'py>>,
);

/// V2 parameters from a dict of bool, int, float or str values.
fn parameters_of(dict: Option<&Bound<'_, PyDict>>) -> PyResult<Parameters> {
    let mut parameters = Parameters::new();
    let Some(dict) = dict else {
        return Ok(parameters);
    };
    for (key, value) in dict {
        let name: String = key.extract()?;
        let value = if value.is_instance_of::<PyBool>() {
            ParamValue::Bool(value.extract()?)
        } else if value.is_instance_of::<PyInt>() {
            match value.extract::<i64>() {
                Ok(v) => ParamValue::Int64(v),
                Err(_) => ParamValue::Uint64(value.extract().map_err(|_| {
                    PyValueError::new_err(format!(
                        "parameter '{name}' is {value}, outside int64 and uint64"
                    ))
                })?),
            }
        } else if value.is_instance_of::<PyFloat>() {
            ParamValue::Double(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            ParamValue::String(value.extract()?)
        } else {
            return Err(PyTypeError::new_err(format!(
                "parameter '{name}' is a {}; parameters are bool, int, float or str",
                value.get_type().name()?
            )));
        };
        parameters.insert(name, value);
    }
    Ok(parameters)
}

/// `ModelInferRequest` bytes with every input in `raw_input_contents`, written straight
/// from the Arrow buffers into the new `bytes` object (the one copy). Each input's V2
/// datatype follows its Arrow type (text and binary are BYTES).
#[pyfunction]
#[allow(clippy::needless_pass_by_value)] // PyO3 hands the outputs' names over owned
#[pyo3(signature = (model_name, model_version, id, parameters, inputs, outputs))]
pub fn encode_request<'py>(
    py: Python<'py>,
    model_name: &str,
    model_version: &str,
    id: &str,
    parameters: Option<&Bound<'py, PyDict>>,
    inputs: Vec<InputSpec<'py>>,
    outputs: Vec<String>,
) -> PyResult<Bound<'py, PyBytes>> {
    let parameters = parameters_of(parameters)?;
    let tensors = inputs
        .into_iter()
        .map(|(name, shape, values, params)| {
            let values = import_array(&values)?;
            let datatype = DataType::from_arrow(values.data_type()).ok_or_else(|| {
                Error::input(
                    &name,
                    format!(
                        "input '{name}' holds Arrow {} values, which no V2 datatype carries",
                        values.data_type()
                    ),
                )
            })?;
            Ok(Tensor {
                parameters: parameters_of(params.as_ref())?,
                name,
                datatype,
                shape,
                values,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    // The arrays stay owned here, outside the detached closures, so they are released with
    // the interpreter attached: their memory is pyarrow's.
    let encoded = py.detach(|| {
        prepare_request(
            model_name,
            model_version,
            id,
            &parameters,
            &tensors,
            &outputs,
        )
    })?;
    PyBytes::new_with(py, encoded.encoded_len(), |mut out| {
        py.detach(|| encoded.write_to(&mut out))?;
        Ok(())
    })
}

/// Decodes `ModelInferResponse` bytes: `(model_name, model_version, id, parameters,
/// outputs)`, each output `(name, datatype, shape, values)`. Fixed-width values stay in
/// `data` where alignment allows.
#[pyfunction]
pub fn decode_response<'py>(
    py: Python<'py>,
    data: Bound<'py, PyBytes>,
) -> PyResult<ResponseView<'py>> {
    let buf = borrow_bytes(data);
    let response = py.detach(|| decode(buf))?;
    Ok((
        response.model_name,
        response.model_version,
        response.id,
        params_dict(py, &response.parameters)?,
        response.outputs.iter().map(tensor_view).collect(),
    ))
}

/// `ModelMetadataRequest` bytes for `version` of model `name` (empty: its default).
#[pyfunction]
pub fn encode_metadata_request<'py>(
    py: Python<'py>,
    name: &str,
    version: &str,
) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &encode_metadata(name, version))
}

/// Decodes `ModelMetadataResponse` bytes: `(name, versions, platform, inputs, outputs)`,
/// each tensor `(name, datatype, shape, parameters)`.
#[pyfunction]
pub fn decode_metadata_response<'py>(
    py: Python<'py>,
    data: Bound<'py, PyBytes>,
) -> PyResult<MetadataView<'py>> {
    let metadata = decode_metadata(borrow_bytes(data))?;
    let views = |tensors: Vec<TensorMetadata>| {
        tensors
            .into_iter()
            .map(|t| Ok((t.name, t.datatype, t.shape, params_dict(py, &t.parameters)?)))
            .collect::<PyResult<Vec<_>>>()
    };
    Ok((
        metadata.name,
        metadata.versions,
        metadata.platform,
        views(metadata.inputs)?,
        views(metadata.outputs)?,
    ))
}
