//! The client's half of the V2 wire format: named Arrow tensors -> `ModelInferRequest` bytes,
//! and `ModelInferResponse` bytes -> named Arrow tensors, for `arrowsmith.client`.
//!
//! A request carries every input in `raw_input_contents`, written straight from the Arrow
//! buffers after the rest of the message (one copy). A response's fixed-width raw outputs
//! become Arrow arrays over the response bytes (no copy when aligned). Every size in a
//! response comes from the server: it is checked with checked arithmetic before anything
//! is allocated, nothing indexes by it, and the compiler holds the module to that.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray};
use arrow_buffer::{ArrowNativeType, ScalarBuffer};
use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::{
    model_metadata_response, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse,
};
use crate::raw::{self, BytesFault, FixedFault, RawValues};
use crate::tensor::{params_from_proto, params_to_proto, shape_text, Parameters, Tensor};

/// `raw_input_contents` is field 7 of `ModelInferRequest`.
const RAW_INPUT_CONTENTS_TAG: u32 = 7;

/// A request checked and laid out: the message without its raw contents, which are written
/// straight from the Arrow buffers after it.
#[derive(Debug)]
pub struct EncodedRequest {
    header: ModelInferRequest,
    raw: Vec<RawValues>,
    len: usize,
}

/// Checks the inputs and lays out the request. Each tensor's values must be of its
/// datatype's Arrow type (BYTES: any binary or text type), as many as its shape holds, with
/// no nulls.
pub fn prepare_request(
    model_name: &str,
    model_version: &str,
    id: &str,
    parameters: &Parameters,
    inputs: &[Tensor],
    requested_outputs: &[String],
) -> Result<EncodedRequest> {
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raw = Vec::with_capacity(inputs.len());
    for tensor in inputs {
        raw.push(raw_input(tensor)?);
        let shape = tensor
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::input(
                    &tensor.name,
                    format!("input '{}' has a dimension too large to send", tensor.name),
                )
            })?;
        tensors.push(InferInputTensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype.name().to_owned(),
            shape,
            parameters: params_to_proto(&tensor.parameters),
            contents: None,
        });
    }
    let header = ModelInferRequest {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id: id.to_owned(),
        parameters: params_to_proto(parameters),
        inputs: tensors,
        outputs: requested_outputs
            .iter()
            .map(|name| InferRequestedOutputTensor {
                name: name.clone(),
                parameters: HashMap::new(),
            })
            .collect(),
        raw_input_contents: Vec::new(),
    };
    let too_large = || Error::request("the request is too large to encode");
    let len = raw
        .iter()
        .try_fold(header.encoded_len(), |total, contents| {
            let len = contents.len();
            key_len(RAW_INPUT_CONTENTS_TAG)
                .checked_add(encoded_len_varint(len as u64))?
                .checked_add(len)?
                .checked_add(total)
        });
    Ok(EncodedRequest {
        header,
        raw,
        len: len.ok_or_else(too_large)?,
    })
}

/// One tensor's raw contents, after checking its values against its datatype and shape.
fn raw_input(tensor: &Tensor) -> Result<RawValues> {
    let Tensor {
        name,
        datatype,
        shape,
        values,
        ..
    } = tensor;
    let holds = DataType::from_arrow(values.data_type());
    if holds != Some(*datatype) {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' is {} but holds Arrow {} values",
                datatype.name(),
                values.data_type()
            ),
        ));
    }
    let count = element_count(shape);
    if count != Some(values.len()) {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' has shape {} but {} values",
                shape_text(shape),
                values.len()
            ),
        ));
    }
    if values.null_count() > 0 {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' has {} missing (null) values, which V2 tensors cannot carry",
                values.null_count()
            ),
        ));
    }
    match datatype.element_size() {
        None => bytes_input(name, values),
        Some(_) if *datatype == DataType::Bool => Ok(RawValues::Bools(values.as_boolean().clone())),
        Some(size) => fixed_input(name, values, size),
    }
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The bytes of a fixed-width array's values, sliced from its buffer without a copy.
fn fixed_input(name: &str, values: &ArrayRef, size: usize) -> Result<RawValues> {
    let data = values.to_data();
    let start = data.offset().checked_mul(size);
    let len = data.len().checked_mul(size);
    match (data.buffers().first(), start, len) {
        (Some(buffer), Some(start), Some(len))
            if start
                .checked_add(len)
                .is_some_and(|end| end <= buffer.len()) =>
        {
            Ok(RawValues::Fixed(buffer.slice_with_length(start, len)))
        }
        _ => Err(Error::input(
            name,
            format!("input '{name}' has fewer bytes than its values need"),
        )),
    }
}

fn bytes_input(name: &str, values: &ArrayRef) -> Result<RawValues> {
    if raw::byte_elements(values).is_none() {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' holds Arrow {} values, not bytes",
                values.data_type()
            ),
        ));
    }
    RawValues::bytes(values).ok_or_else(|| {
        Error::input(
            name,
            format!("input '{name}' has an element of 4 GiB or more, which V2 cannot carry"),
        )
    })
}

impl EncodedRequest {
    /// The serialized size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.len
    }

    /// Serializes into `out`, which needs `encoded_len()` bytes of room. Repeated fields may
    /// follow the rest of the message on the wire, so the raw contents go after the header,
    /// each written once, straight from its Arrow buffer.
    pub fn write_to(&self, out: &mut impl BufMut) -> Result<()> {
        if out.remaining_mut() < self.len {
            return Err(Error::Internal(format!(
                "a request of {} bytes does not fit in {} bytes",
                self.len,
                out.remaining_mut()
            )));
        }
        self.header
            .encode(out)
            .map_err(|e| Error::Internal(format!("the request header did not encode: {e}")))?;
        for contents in &self.raw {
            encode_key(RAW_INPUT_CONTENTS_TAG, WireType::LengthDelimited, out);
            encode_varint(contents.len() as u64, out);
            contents.write(out);
        }
        Ok(())
    }

    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len);
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Lays out and serializes a request in one step.
pub fn encode_request(
    model_name: &str,
    model_version: &str,
    id: &str,
    parameters: &Parameters,
    inputs: &[Tensor],
    requested_outputs: &[String],
) -> Result<Vec<u8>> {
    prepare_request(
        model_name,
        model_version,
        id,
        parameters,
        inputs,
        requested_outputs,
    )?
    .to_vec()
}

/// A decoded inference response.
#[derive(Debug, Clone)]
pub struct DecodedResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Parameters,
    /// The outputs in answer order, each flat in row-major order with its shape.
    pub outputs: Vec<Tensor>,
}

/// A response the server should not have sent.
fn malformed(message: impl Into<String>) -> Error {
    Error::Internal(message.into())
}

/// Decodes `ModelInferResponse` bytes. Raw fixed-width outputs borrow `buf` (no copy)
/// wherever their alignment suits Arrow; BOOL and BYTES are copied into Arrow's layout.
pub fn decode_response(buf: Bytes) -> Result<DecodedResponse> {
    let message_len = buf.len();
    let message = ModelInferResponse::decode(buf).map_err(|e| {
        malformed(format!(
            "the response is not a valid ModelInferResponse: {e}"
        ))
    })?;
    let ModelInferResponse {
        model_name,
        model_version,
        id,
        parameters,
        outputs,
        raw_output_contents,
    } = message;
    let uses_raw = !raw_output_contents.is_empty();
    if uses_raw && raw_output_contents.len() != outputs.len() {
        return Err(malformed(format!(
            "the response has {} outputs but {} raw_output_contents entries",
            outputs.len(),
            raw_output_contents.len()
        )));
    }
    let mut raw = raw_output_contents.into_iter();
    let outputs = outputs
        .into_iter()
        .map(|output| decode_output(output, raw.next(), message_len))
        .collect::<Result<Vec<_>>>()?;
    Ok(DecodedResponse {
        model_name,
        model_version,
        id,
        parameters: params_from_proto(parameters),
        outputs,
    })
}

fn decode_output(
    output: InferOutputTensor,
    raw: Option<Bytes>,
    message_len: usize,
) -> Result<Tensor> {
    let InferOutputTensor {
        name,
        datatype,
        shape,
        parameters,
        contents,
    } = output;
    let datatype = DataType::parse(&datatype).ok_or_else(|| {
        malformed(format!(
            "output '{name}' has datatype '{datatype}', which is not a V2 datatype"
        ))
    })?;
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            malformed(format!(
                "output '{name}' has shape {}; dimensions must be zero or more",
                shape_text(&shape)
            ))
        })?;
    // An empty tensor's other dimensions may not describe more than the response could
    // have carried: whoever reads them lays out rows by them.
    let described = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let count = match (element_count(&shape), described) {
        (Some(count), Some(described)) if count > 0 || described <= message_len.max(1) => count,
        _ => {
            return Err(malformed(format!(
                "output '{name}' has shape {}, larger than a response of {message_len} bytes \
                 can describe",
                shape_text(&shape)
            )))
        }
    };
    let values = match (raw, contents) {
        (Some(_), Some(_)) => {
            return Err(malformed(format!(
                "output '{name}' carries `contents` while the response uses raw_output_contents"
            )))
        }
        (Some(raw), None) => array_from_raw(&name, datatype, count, raw)?,
        (None, contents) => {
            array_from_contents(&name, datatype, count, contents.unwrap_or_default())?
        }
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        values,
        parameters: params_from_proto(parameters),
    })
}

fn array_from_raw(name: &str, datatype: DataType, count: usize, raw: Bytes) -> Result<ArrayRef> {
    let Some(size) = datatype.element_size() else {
        return bytes_from_raw(name, count, &raw);
    };
    if count.checked_mul(size) != Some(raw.len()) {
        return Err(malformed(format!(
            "output '{name}' has {} bytes in raw_output_contents but {count} {} elements \
             need {count} x {size}",
            raw.len(),
            datatype.name()
        )));
    }
    raw::fixed_array(datatype, raw).map_err(|fault| match fault {
        FixedFault::NotBool { .. } => malformed(format!(
            "output '{name}' has a BOOL element that is neither 0 nor 1"
        )),
        FixedFault::NotFixed => malformed(format!("output '{name}': BYTES are not fixed-width")),
    })
}

/// BYTES in raw form as a BinaryArray.
fn bytes_from_raw(name: &str, count: usize, raw: &[u8]) -> Result<ArrayRef> {
    raw::bytes_array(count, raw).map_err(|fault| match fault {
        BytesFault::CannotHold => malformed(format!(
            "output '{name}' needs {count} BYTES elements but its {} bytes of \
             raw_output_contents cannot hold them",
            raw.len()
        )),
        BytesFault::EndsAfter(found) => malformed(format!(
            "output '{name}' ends after {found} of its {count} BYTES elements"
        )),
        BytesFault::Overrun { index, len, remain } => malformed(format!(
            "output '{name}': BYTES element {index} declares {len} bytes but only {remain} remain"
        )),
        BytesFault::Trailing(left) => malformed(format!(
            "output '{name}' has {left} bytes left in raw_output_contents after its {count} BYTES \
             elements"
        )),
        BytesFault::TooLarge => too_large(name),
    })
}

fn too_large(name: &str) -> Error {
    malformed(format!("output '{name}' holds 2 GiB or more of BYTES data"))
}

fn offset_i32(name: &str, len: usize) -> Result<i32> {
    i32::try_from(len).map_err(|_| too_large(name))
}

/// Typed contents (the form some V2 servers answer with): the field of the datatype must
/// hold exactly `count` values, and no other field any.
fn array_from_contents(
    name: &str,
    datatype: DataType,
    count: usize,
    contents: InferTensorContents,
) -> Result<ArrayRef> {
    let InferTensorContents {
        bool_contents,
        int_contents,
        int64_contents,
        uint_contents,
        uint64_contents,
        fp32_contents,
        fp64_contents,
        bytes_contents,
    } = contents;
    let lengths = [
        (DataType::Bool, bool_contents.len()),
        (DataType::Int32, int_contents.len()),
        (DataType::Int64, int64_contents.len()),
        (DataType::Uint32, uint_contents.len()),
        (DataType::Uint64, uint64_contents.len()),
        (DataType::Fp32, fp32_contents.len()),
        (DataType::Fp64, fp64_contents.len()),
        (DataType::Bytes, bytes_contents.len()),
    ];
    let field = match datatype {
        DataType::Int8 | DataType::Int16 => DataType::Int32,
        DataType::Uint8 | DataType::Uint16 => DataType::Uint32,
        other => other,
    };
    let found: usize = lengths
        .iter()
        .filter(|(f, _)| *f == field)
        .map(|(_, n)| *n)
        .sum();
    let stray = lengths.iter().any(|(f, n)| *f != field && *n > 0);
    if stray || found != count {
        return Err(malformed(format!(
            "output '{name}' is {} of {count} elements but its contents do not hold them",
            datatype.name()
        )));
    }
    let narrowing = |what: &str| {
        malformed(format!(
            "output '{name}' has a value outside the range of {what}"
        ))
    };
    Ok(match datatype {
        DataType::Bool => Arc::new(BooleanArray::from(bool_contents)),
        DataType::Int8 => {
            narrowed::<Int8Type, i32>(&int_contents).ok_or_else(|| narrowing("INT8"))?
        }
        DataType::Int16 => {
            narrowed::<Int16Type, i32>(&int_contents).ok_or_else(|| narrowing("INT16"))?
        }
        DataType::Int32 => moved::<Int32Type>(int_contents),
        DataType::Int64 => moved::<Int64Type>(int64_contents),
        DataType::Uint8 => {
            narrowed::<UInt8Type, u32>(&uint_contents).ok_or_else(|| narrowing("UINT8"))?
        }
        DataType::Uint16 => {
            narrowed::<UInt16Type, u32>(&uint_contents).ok_or_else(|| narrowing("UINT16"))?
        }
        DataType::Uint32 => moved::<UInt32Type>(uint_contents),
        DataType::Uint64 => moved::<UInt64Type>(uint64_contents),
        // FP16 has no typed field: only an empty FP16 tensor gets here.
        DataType::Fp16 => moved::<Float16Type>(Vec::new()),
        DataType::Fp32 => moved::<Float32Type>(fp32_contents),
        DataType::Fp64 => moved::<Float64Type>(fp64_contents),
        DataType::Bytes => {
            let total = bytes_contents
                .iter()
                .try_fold(0usize, |acc, element| acc.checked_add(element.len()))
                .unwrap_or(usize::MAX);
            let mut offsets = Vec::with_capacity(count.saturating_add(1));
            offsets.push(0i32);
            let mut values = Vec::with_capacity(total.min(i32::MAX as usize));
            for element in &bytes_contents {
                values.extend_from_slice(element);
                offsets.push(offset_i32(name, values.len())?);
            }
            raw::binary_array(offsets, values)
        }
    })
}

/// Typed contents whose protobuf type is the tensor's own: the vector becomes the buffer.
fn moved<T: ArrowPrimitiveType>(values: Vec<T::Native>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(values), None))
}

/// INT8/16 and UINT8/16 travel widened to 32 bits; None when a value does not fit back.
fn narrowed<T, W>(values: &[W]) -> Option<ArrayRef>
where
    T: ArrowPrimitiveType,
    T::Native: TryFrom<W> + ArrowNativeType,
    W: Copy,
{
    let narrow = values
        .iter()
        .map(|&v| T::Native::try_from(v).ok())
        .collect::<Option<Vec<T::Native>>>()?;
    Some(Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::from(narrow),
        None,
    )))
}

/// A tensor as a model's metadata describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 marks a dimension of variable size.
    pub shape: Vec<i64>,
    pub parameters: Parameters,
}

/// A decoded `ModelMetadataResponse`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `ModelMetadataRequest` bytes for `version` of model `name` (empty: its default).
pub fn encode_metadata_request(name: &str, version: &str) -> Vec<u8> {
    ModelMetadataRequest {
        name: name.to_owned(),
        version: version.to_owned(),
    }
    .encode_to_vec()
}

/// Decodes `ModelMetadataResponse` bytes.
pub fn decode_metadata_response(buf: Bytes) -> Result<ModelMetadata> {
    let message = ModelMetadataResponse::decode(buf).map_err(|e| {
        malformed(format!(
            "the response is not a valid ModelMetadataResponse: {e}"
        ))
    })?;
    let tensors = |tensors: Vec<model_metadata_response::TensorMetadata>| {
        tensors
            .into_iter()
            .map(|t| TensorMetadata {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                parameters: params_from_proto(t.parameters),
            })
            .collect()
    };
    Ok(ModelMetadata {
        name: message.name,
        versions: message.versions,
        platform: message.platform,
        inputs: tensors(message.inputs),
        outputs: tensors(message.outputs),
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::decode::decode_request;
    use crate::encode::{encode_response, InferResponse, OutputTensor};
    use crate::tensor::ParamValue;
    use arrow_array::BinaryArray;
    use arrow_array::{
        BooleanArray, FixedSizeBinaryArray, Float16Array, Float32Array, Float64Array, Int8Array,
        LargeStringArray, StringArray, UInt64Array,
    };
    use arrow_schema::DataType as ArrowType;
    use proptest::prelude::*;

    fn tensor(name: &str, datatype: DataType, shape: Vec<usize>, values: ArrayRef) -> Tensor {
        Tensor {
            name: name.to_owned(),
            datatype,
            shape,
            values,
            parameters: Parameters::new(),
        }
    }

    fn text(name: &str, values: ArrayRef) -> Tensor {
        let mut t = tensor(name, DataType::Bytes, vec![values.len()], values);
        t.parameters
            .insert("content_type".into(), ParamValue::String("str".into()));
        t
    }

    fn binary(values: &ArrayRef) -> ArrayRef {
        arrow_cast::cast(values, &ArrowType::Binary).unwrap()
    }

    #[test]
    fn requests_decode_to_what_was_encoded() {
        // A slice, so the raw bytes must start at the array's offset.
        let all: ArrayRef = Arc::new(Float64Array::from(vec![9.0, 1.5, -2.25, 3.0]));
        let inputs = vec![
            tensor("fp64", DataType::Fp64, vec![3], all.slice(1, 3)),
            tensor(
                "fp32",
                DataType::Fp32,
                vec![2, 2],
                Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            ),
            tensor(
                "int8",
                DataType::Int8,
                vec![3, 1],
                Arc::new(Int8Array::from(vec![-128, 0, 127])),
            ),
            tensor(
                "uint64",
                DataType::Uint64,
                vec![1],
                Arc::new(UInt64Array::from(vec![u64::MAX])),
            ),
            tensor(
                "fp16",
                DataType::Fp16,
                vec![2],
                Arc::new(Float16Array::from(vec![
                    half::f16::from_f32(0.5),
                    half::f16::from_f32(-1.0),
                ])),
            ),
            tensor(
                "bool",
                DataType::Bool,
                vec![3],
                Arc::new(BooleanArray::from(vec![false, true, false, true]).slice(1, 3)),
            ),
            text("text", Arc::new(StringArray::from(vec!["a", "", "ünï"]))),
            text("large", Arc::new(LargeStringArray::from(vec!["x"]))),
            tensor(
                "bytes",
                DataType::Bytes,
                vec![2],
                Arc::new(BinaryArray::from(vec![&b"\x00\xff"[..], b"z"])),
            ),
            tensor(
                "empty",
                DataType::Fp64,
                vec![0, 4],
                Arc::new(Float64Array::from(Vec::<f64>::new())),
            ),
        ];
        let mut parameters = Parameters::new();
        parameters.insert("flag".into(), ParamValue::Bool(true));
        parameters.insert("n".into(), ParamValue::Int64(-3));
        let outputs = vec!["out".to_owned()];
        let prepared = prepare_request("m", "2", "id-1", &parameters, &inputs, &outputs).unwrap();
        let bytes = prepared.to_vec().unwrap();
        assert_eq!(bytes.len(), prepared.encoded_len());
        // The same message, its parameter map in whatever order it iterates.
        let again = encode_request("m", "2", "id-1", &parameters, &inputs, &outputs).unwrap();
        assert_eq!(again.len(), bytes.len());

        let decoded = decode_request(Bytes::from(bytes)).unwrap();
        assert_eq!(
            (
                decoded.model_name.as_str(),
                decoded.model_version.as_str(),
                decoded.id.as_str()
            ),
            ("m", "2", "id-1")
        );
        assert_eq!(decoded.parameters, parameters);
        assert_eq!(decoded.requested_outputs, outputs);
        assert_eq!(decoded.inputs.len(), inputs.len());
        for (got, sent) in decoded.inputs.iter().zip(&inputs) {
            assert_eq!(got.name, sent.name);
            assert_eq!(got.datatype, sent.datatype, "{}", sent.name);
            assert_eq!(got.shape, sent.shape, "{}", sent.name);
            assert_eq!(got.parameters, sent.parameters, "{}", sent.name);
            let expected = if sent.datatype == DataType::Bytes {
                binary(&sent.values)
            } else {
                Arc::clone(&sent.values)
            };
            assert_eq!(got.values.to_data(), expected.to_data(), "{}", sent.name);
        }
    }

    #[test]
    fn requests_with_inconsistent_tensors_are_refused_by_name() {
        let cases = [
            tensor(
                "short",
                DataType::Fp64,
                vec![3],
                Arc::new(Float64Array::from(vec![1.0])),
            ),
            tensor(
                "kind",
                DataType::Fp32,
                vec![1],
                Arc::new(Float64Array::from(vec![1.0])),
            ),
            tensor(
                "nulls",
                DataType::Fp64,
                vec![2],
                Arc::new(Float64Array::from(vec![Some(1.0), None])),
            ),
            tensor(
                "fixed",
                DataType::Bytes,
                vec![1],
                Arc::new(FixedSizeBinaryArray::try_from_iter([b"ab"].into_iter()).unwrap()),
            ),
            tensor(
                "overflow",
                DataType::Fp64,
                vec![usize::MAX, 2],
                Arc::new(Float64Array::from(vec![1.0])),
            ),
        ];
        for input in cases {
            let error = encode_request(
                "m",
                "",
                "",
                &Parameters::new(),
                std::slice::from_ref(&input),
                &[],
            )
            .unwrap_err();
            match error {
                Error::InvalidInput {
                    input: Some(name),
                    message,
                } => {
                    assert_eq!(name, input.name, "{message}");
                }
                other => panic!("{} gave {other:?}", input.name),
            }
        }
    }

    #[test]
    fn writing_into_too_little_room_is_an_error() {
        let input = tensor(
            "x",
            DataType::Fp64,
            vec![2],
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        );
        let prepared = prepare_request("m", "", "", &Parameters::new(), &[input], &[]).unwrap();
        let mut room = vec![0u8; prepared.encoded_len() - 1];
        assert!(prepared.write_to(&mut room.as_mut_slice()).is_err());
        let mut exact = vec![0u8; prepared.encoded_len()];
        prepared.write_to(&mut exact.as_mut_slice()).unwrap();
        assert_eq!(exact, prepared.to_vec().unwrap());
    }

    fn output(name: &str, shape: Vec<i64>, values: ArrayRef) -> OutputTensor {
        OutputTensor {
            name: name.to_owned(),
            shape,
            values,
        }
    }

    #[test]
    fn responses_decode_to_what_the_server_encoded() {
        let outputs = vec![
            output(
                "p",
                vec![3],
                Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5])),
            ),
            output(
                "probs",
                vec![2, 2],
                Arc::new(Float32Array::from(vec![0.1, 0.9, 0.2, 0.8])),
            ),
            output(
                "flags",
                vec![2, 1],
                Arc::new(BooleanArray::from(vec![false, true])),
            ),
            output(
                "words",
                vec![2],
                Arc::new(StringArray::from(vec!["héllo", ""])),
            ),
            output("none", vec![0], Arc::new(Int8Array::from(Vec::<i8>::new()))),
        ];
        let mut parameters = Parameters::new();
        parameters.insert("content_type".into(), ParamValue::String("pd".into()));
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "3".into(),
            id: "r".into(),
            parameters: parameters.clone(),
            outputs: outputs.clone(),
        };
        let decoded = decode_response(Bytes::from(encode_response(response).unwrap())).unwrap();
        assert_eq!(
            (
                decoded.model_name.as_str(),
                decoded.model_version.as_str(),
                decoded.id.as_str()
            ),
            ("m", "3", "r")
        );
        assert_eq!(decoded.parameters, parameters);
        assert_eq!(decoded.outputs.len(), outputs.len());
        for (got, sent) in decoded.outputs.iter().zip(&outputs) {
            assert_eq!(got.name, sent.name);
            let shape: Vec<i64> = got.shape.iter().map(|&d| d as i64).collect();
            assert_eq!(shape, sent.shape);
            let expected = match sent.values.data_type() {
                ArrowType::Utf8 => binary(&sent.values),
                _ => Arc::clone(&sent.values),
            };
            assert_eq!(got.values.to_data(), expected.to_data(), "{}", sent.name);
            assert_eq!(
                Some(got.datatype),
                DataType::from_arrow(sent.values.data_type())
            );
        }
    }

    #[test]
    fn aligned_raw_values_borrow_the_response_and_unaligned_ones_are_copied() {
        let values = [1.5f64, -2.0];
        let mut filled = vec![0u8; 48];
        // Bytes::from keeps the vector's allocation, so its alignment is known here.
        let start = filled.as_ptr().align_offset(8);
        for (i, v) in values.iter().enumerate() {
            let at = start + 8 * i;
            filled[at..at + 8].copy_from_slice(&v.to_le_bytes());
            filled[at + 17..at + 25].copy_from_slice(&v.to_le_bytes());
        }
        let raw = Bytes::from(filled);
        let aligned = raw.slice(start..start + 16);
        let array = raw::raw_array::<Float64Type>(aligned.clone());
        assert_eq!(array.to_data().buffers()[0].as_ptr(), aligned.as_ptr());
        assert_eq!(
            array.as_primitive::<Float64Type>().values().to_vec(),
            values
        );
        let unaligned = raw.slice(start + 17..start + 33);
        let array = raw::raw_array::<Float64Type>(unaligned.clone());
        assert_ne!(array.to_data().buffers()[0].as_ptr(), unaligned.as_ptr());
        assert_eq!(
            array.as_primitive::<Float64Type>().values().to_vec(),
            values
        );
    }

    fn response(outputs: Vec<InferOutputTensor>, raw: Vec<Vec<u8>>) -> Bytes {
        ModelInferResponse {
            outputs,
            raw_output_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    fn described(name: &str, datatype: &str, shape: Vec<i64>) -> InferOutputTensor {
        InferOutputTensor {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            ..Default::default()
        }
    }

    #[test]
    fn typed_contents_are_read_too() {
        let mut narrow = described("small", "INT8", vec![2]);
        narrow.contents = Some(InferTensorContents {
            int_contents: vec![-1, 5],
            ..Default::default()
        });
        let mut words = described("words", "BYTES", vec![2]);
        words.contents = Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
            ..Default::default()
        });
        let decoded = decode_response(response(vec![narrow, words], vec![])).unwrap();
        assert_eq!(
            decoded.outputs[0].values.to_data(),
            Int8Array::from(vec![-1, 5]).to_data()
        );
        assert_eq!(
            decoded.outputs[1].values.to_data(),
            BinaryArray::from(vec![&b"ab"[..], b""]).to_data()
        );
    }

    fn refused(bytes: Bytes, words: &str) {
        match decode_response(bytes) {
            Err(Error::Internal(message)) => assert!(message.contains(words), "{message}"),
            other => panic!("expected a refusal naming {words:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_responses_are_refused() {
        let fp64 = || described("y", "FP64", vec![3]);
        refused(
            Bytes::from_static(b"\xff\xff\xff"),
            "not a valid ModelInferResponse",
        );
        // The encoding of a valid response cut short, inside the raw contents.
        let whole = response(vec![fp64()], vec![vec![0; 24]]);
        refused(
            whole.slice(..whole.len() - 5),
            "not a valid ModelInferResponse",
        );
        refused(response(vec![fp64()], vec![vec![0; 16]]), "16 bytes");
        refused(
            response(vec![fp64(), fp64()], vec![vec![0; 24]]),
            "2 outputs but 1",
        );
        refused(
            response(vec![described("y", "FP128", vec![1])], vec![vec![0; 16]]),
            "FP128",
        );
        refused(
            response(vec![described("y", "FP64", vec![-1])], vec![vec![]]),
            "shape [-1]",
        );
        refused(
            response(
                vec![described("y", "FP64", vec![i64::MAX, i64::MAX])],
                vec![vec![]],
            ),
            "larger than",
        );
        refused(
            response(vec![described("y", "FP64", vec![0, 1 << 40])], vec![vec![]]),
            "larger than",
        );
        refused(
            response(vec![described("b", "BOOL", vec![2])], vec![vec![1, 2]]),
            "BOOL",
        );
        let bytes = |raw: Vec<u8>| response(vec![described("s", "BYTES", vec![2])], vec![raw]);
        refused(bytes(vec![1, 0, 0, 0, b'a']), "cannot hold");
        refused(
            bytes(vec![1, 0, 0, 0, b'a', 9, 0, 0, 0, b'b']),
            "declares 9 bytes",
        );
        refused(bytes(vec![1, 0, 0, 0, b'a', 0, 0, 0, 0, 7]), "1 bytes left");
        refused(
            bytes(vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            "declares 4294967295 bytes",
        );
        let mut typed = fp64();
        typed.contents = Some(InferTensorContents {
            fp64_contents: vec![1.0],
            ..Default::default()
        });
        refused(
            response(vec![typed.clone()], vec![]),
            "contents do not hold",
        );
        refused(
            response(vec![typed], vec![vec![0; 24]]),
            "carries `contents`",
        );
        let mut wide = described("w", "INT8", vec![1]);
        wide.contents = Some(InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        });
        refused(response(vec![wide], vec![]), "range of INT8");
    }

    #[test]
    fn metadata_round_trips() {
        let request = encode_metadata_request("m", "2");
        assert_eq!(
            ModelMetadataRequest::decode(request.as_slice()).unwrap(),
            ModelMetadataRequest {
                name: "m".into(),
                version: "2".into()
            }
        );
        let mut text = Parameters::new();
        text.insert("content_type".into(), ParamValue::String("str".into()));
        let described = model_metadata_response::TensorMetadata {
            name: "upper".into(),
            datatype: "BYTES".into(),
            shape: vec![-1, 1],
            parameters: params_to_proto(&text),
        };
        let response = ModelMetadataResponse {
            name: "m".into(),
            versions: vec!["2".into()],
            platform: "mlflow".into(),
            inputs: vec![described.clone()],
            outputs: vec![described],
            ..Default::default()
        };
        let decoded = decode_metadata_response(response.encode_to_vec().into()).unwrap();
        let expected = TensorMetadata {
            name: "upper".into(),
            datatype: "BYTES".into(),
            shape: vec![-1, 1],
            parameters: text,
        };
        assert_eq!(decoded.versions, vec!["2".to_owned()]);
        assert_eq!(decoded.inputs, vec![expected.clone()]);
        assert_eq!(decoded.outputs, vec![expected]);
        assert!(decode_metadata_response(Bytes::from_static(b"\x0a\xff")).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_response(Bytes::from(data));
        }

        #[test]
        fn damaged_responses_decode_or_are_refused(
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let outputs = vec![
                output("p", vec![2, 2], Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, 3.5]))),
                output("s", vec![2], Arc::new(StringArray::from(vec!["ab", "c"]))),
            ];
            let mut bytes = encode_response(InferResponse { outputs, ..Default::default() }).unwrap();
            let at = position.index(bytes.len());
            bytes[at] = byte;
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_response(Bytes::from(bytes));
        }
    }
}
