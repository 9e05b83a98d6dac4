//! `ModelInferRequest` bytes -> named Arrow tensors, checked against their shapes before
//! anything else looks at them. Knows the V2 wire format, nothing about MLflow.
//!
//! Every number here comes from the client: sizes are checked with checked arithmetic
//! before anything is allocated, nothing indexes by them, and the compiler holds the module
//! to that.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;

use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray};
use arrow_buffer::ScalarBuffer;
use bytes::Bytes;
use prost::Message;

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::proto::{model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest};
use crate::raw::{self, BytesFault, FixedFault};
use crate::shm::OutputRegion;
use crate::tensor::{params_from_proto, shape_text, Parameters, Tensor};

/// A decoded inference request.
#[derive(Debug, Clone)]
pub struct InferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Names of the outputs the client asked for; empty means all of them.
    pub requested_outputs: Vec<String>,
    /// The requested outputs to be written into shared memory regions.
    pub output_regions: Vec<OutputRegion>,
}

/// Decodes a serialized `ModelInferRequest`. `raw_input_contents` are borrowed from `buf`
/// (no copy) wherever their alignment suits Arrow.
pub fn decode_request(buf: Bytes) -> Result<InferRequest> {
    let message_len = buf.len();
    let message = ModelInferRequest::decode(buf).map_err(|e| {
        Error::request(format!("the request is not a valid ModelInferRequest: {e}"))
    })?;
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
    } = message;

    let regions = crate::shm::regions();
    // Inputs whose values lie in shared memory take no raw_input_contents entry.
    let mut placed = Vec::with_capacity(inputs.len());
    let mut inputs = inputs;
    for input in &mut inputs {
        let mut parameters = params_from_proto(std::mem::take(&mut input.parameters));
        let shared = regions.input_values(&input.name, &mut parameters)?;
        if shared.is_some() && input.contents.is_some() {
            return Err(Error::input(
                &input.name,
                format!(
                    "input '{}' carries `contents` and names a shared memory region; its \
                     values come from one or the other",
                    input.name
                ),
            ));
        }
        placed.push((shared, parameters));
    }
    let in_message = placed.iter().filter(|(shared, _)| shared.is_none()).count();
    let uses_raw = !raw_input_contents.is_empty();
    if uses_raw && raw_input_contents.len() != in_message {
        let elsewhere = inputs.len().saturating_sub(in_message);
        let shared = if elsewhere > 0 {
            format!(" (and {elsewhere} in shared memory)")
        } else {
            String::new()
        };
        return Err(Error::request(format!(
            "the request has {in_message} inputs{shared} but {} raw_input_contents entries; \
             raw_input_contents needs one entry per input, in the order of the inputs",
            raw_input_contents.len()
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(inputs.len());
    for (input, (shared, parameters)) in inputs.into_iter().zip(placed) {
        if let Some(values) = shared {
            tensors.push(decode_input(input, Some(values), message_len, parameters)?);
            continue;
        }
        if uses_raw && input.contents.is_some() {
            return Err(Error::input(
                &input.name,
                format!(
                    "input '{}' carries `contents` while the request uses raw_input_contents; \
                     a request puts all of its inputs in one or the other",
                    input.name
                ),
            ));
        }
        tensors.push(decode_input(input, raw.next(), message_len, parameters)?);
    }
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    if let Some(twice) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(Error::input(
            &twice.name,
            format!(
                "input '{}' appears more than once in the request",
                twice.name
            ),
        ));
    }
    let mut requested_outputs = Vec::with_capacity(outputs.len());
    let mut output_regions = Vec::new();
    for output in outputs {
        let mut parameters = params_from_proto(output.parameters);
        if let Some(place) = regions.output_place(&output.name, &mut parameters)? {
            output_regions.push(place);
        }
        requested_outputs.push(output.name);
    }
    Ok(InferRequest {
        model_name,
        model_version,
        id,
        parameters: params_from_proto(parameters),
        inputs: tensors,
        requested_outputs,
        output_regions,
    })
}

/// One input, its values in `raw` (raw contents, or a shared memory region) or its
/// contents; `message_len` (the request's size) bounds the dimensions of an empty tensor.
fn decode_input(
    input: InferInputTensor,
    raw: Option<Bytes>,
    message_len: usize,
    parameters: Parameters,
) -> Result<Tensor> {
    let InferInputTensor {
        name,
        datatype,
        shape,
        contents,
        ..
    } = input;
    let datatype = DataType::parse(&datatype).ok_or_else(|| {
        Error::input(
            &name,
            format!(
                "input '{name}' has datatype '{datatype}', which is not a V2 datatype; expected \
                 one of {}",
                DataType::all_names()
            ),
        )
    })?;
    let shape = checked_shape(&name, &shape)?;
    let count = element_count(&name, &shape)?;
    if count == 0 {
        check_empty_shape(&name, &shape, message_len)?;
    }
    let values = match (raw, contents) {
        (Some(raw), _) => array_from_raw(&name, datatype, &shape, count, raw)?,
        (None, Some(contents)) => array_from_contents(&name, datatype, &shape, count, contents)?,
        (None, None) if count == 0 => {
            array_from_contents(&name, datatype, &shape, 0, InferTensorContents::default())?
        }
        (None, None) => {
            return Err(Error::input(
                &name,
                format!(
                    "input '{name}' carries no data (neither contents nor raw_input_contents) \
                     but its shape {} needs {count} elements",
                    shape_text(&shape)
                ),
            ))
        }
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        values,
        parameters,
    })
}

fn checked_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            Error::input(
                name,
                format!(
                    "input '{name}' has shape {}; dimensions must be zero or more",
                    shape_text(shape)
                ),
            )
        })
}

fn element_count(name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::input(
                name,
                format!(
                    "input '{name}' has shape {}, too large to hold",
                    shape_text(shape)
                ),
            )
        })
}

/// A tensor with no elements still has dimensions the model's input is built with (rows
/// of nothing, say): they may not describe more than the request could have carried, so
/// the product of the nonzero dimensions is bounded by the request's size in bytes.
fn check_empty_shape(name: &str, shape: &[usize], message_len: usize) -> Result<()> {
    let described = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match described {
        Some(n) if n <= message_len.max(1) => Ok(()),
        _ => Err(Error::input(
            name,
            format!(
                "input '{name}' has shape {}: no elements, but dimensions larger than a \
                 request of {message_len} bytes can describe",
                shape_text(shape)
            ),
        )),
    }
}

fn array_from_raw(
    name: &str,
    datatype: DataType,
    shape: &[usize],
    count: usize,
    raw: Bytes,
) -> Result<ArrayRef> {
    let Some(size) = datatype.element_size() else {
        return bytes_from_raw(name, shape, count, &raw);
    };
    let expected = count.checked_mul(size);
    if expected != Some(raw.len()) {
        let needs = expected.map_or_else(|| "more than can be held".to_owned(), |n| n.to_string());
        return Err(Error::input(
            name,
            format!(
                "input '{name}' has {} bytes in raw_input_contents but shape {} of {} needs \
                 {count} x {size} = {needs} bytes",
                raw.len(),
                shape_text(shape),
                datatype.name()
            ),
        ));
    }
    raw::fixed_array(datatype, raw).map_err(|fault| match fault {
        FixedFault::NotBool { position, byte } => Error::input(
            name,
            format!(
                "input '{name}' has byte {byte} at element {position} of its BOOL data; BOOL \
                 elements are one byte, 0 or 1"
            ),
        ),
        FixedFault::NotFixed => {
            Error::Internal(format!("input '{name}': BYTES are not fixed-width"))
        }
    })
}

/// BYTES in raw form: each element a 4-byte little-endian length, then that many bytes.
fn bytes_from_raw(name: &str, shape: &[usize], count: usize, raw: &[u8]) -> Result<ArrayRef> {
    let too_short = |found: usize| {
        Error::input(
            name,
            format!(
                "input '{name}' has {found} BYTES elements in raw_input_contents but shape {} \
                 needs {count}",
                shape_text(shape)
            ),
        )
    };
    raw::bytes_array(count, raw).map_err(|fault| match fault {
        BytesFault::CannotHold => too_short(raw.len() / raw::LENGTH_PREFIX),
        BytesFault::EndsAfter(found) => too_short(found),
        BytesFault::Overrun { index, len, remain } => Error::input(
            name,
            format!(
                "input '{name}': BYTES element {index} declares {len} bytes but only {remain} \
                 remain in raw_input_contents"
            ),
        ),
        BytesFault::Trailing(left) => Error::input(
            name,
            format!(
                "input '{name}' has {left} bytes left in raw_input_contents after the {count} \
                 BYTES elements its shape {} holds",
                shape_text(shape)
            ),
        ),
        BytesFault::TooLarge => too_large(name),
    })
}

fn too_large(name: &str) -> Error {
    Error::input(
        name,
        format!("input '{name}' holds over 2 GiB of BYTES data"),
    )
}

fn offset_i32(name: &str, len: usize) -> Result<i32> {
    i32::try_from(len).map_err(|_| too_large(name))
}

/// The `InferTensorContents` field that carries each datatype.
fn contents_field(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp16 => "(none: FP16 travels in raw_input_contents only)",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
    }
}

fn filled_fields(c: &InferTensorContents) -> Vec<(&'static str, usize)> {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn array_from_contents(
    name: &str,
    datatype: DataType,
    shape: &[usize],
    count: usize,
    contents: InferTensorContents,
) -> Result<ArrayRef> {
    let field = contents_field(datatype);
    if datatype == DataType::Fp16 && count > 0 {
        return Err(Error::input(
            name,
            format!("input '{name}' is FP16, which has no typed contents field; send it in raw_input_contents"),
        ));
    }
    let filled = filled_fields(&contents);
    if let Some((other, _)) = filled.iter().find(|(f, _)| *f != field) {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' has datatype {} but carries values in {other}; {} values go in {field}",
                datatype.name(),
                datatype.name()
            ),
        ));
    }
    let found = filled.first().map_or(0, |(_, n)| *n);
    if found != count {
        return Err(Error::input(
            name,
            format!(
                "input '{name}' has {found} values in {field} but shape {} needs {count}",
                shape_text(shape)
            ),
        ));
    }
    Ok(match datatype {
        DataType::Bool => Arc::new(BooleanArray::from(contents.bool_contents)),
        DataType::Int8 => narrowed::<Int8Type, i32>(name, "INT8", &contents.int_contents)?,
        DataType::Int16 => narrowed::<Int16Type, i32>(name, "INT16", &contents.int_contents)?,
        DataType::Int32 => moved::<Int32Type>(contents.int_contents),
        DataType::Int64 => moved::<Int64Type>(contents.int64_contents),
        DataType::Uint8 => narrowed::<UInt8Type, u32>(name, "UINT8", &contents.uint_contents)?,
        DataType::Uint16 => narrowed::<UInt16Type, u32>(name, "UINT16", &contents.uint_contents)?,
        DataType::Uint32 => moved::<UInt32Type>(contents.uint_contents),
        DataType::Uint64 => moved::<UInt64Type>(contents.uint64_contents),
        DataType::Fp16 => moved::<Float16Type>(Vec::new()),
        DataType::Fp32 => moved::<Float32Type>(contents.fp32_contents),
        DataType::Fp64 => moved::<Float64Type>(contents.fp64_contents),
        DataType::Bytes => {
            let mut offsets = Vec::with_capacity(count.saturating_add(1));
            offsets.push(0i32);
            let total: usize = contents.bytes_contents.iter().map(Bytes::len).sum();
            // Arrow keeps the elements in one contiguous buffer: a copy.
            let mut values = Vec::with_capacity(total);
            for element in &contents.bytes_contents {
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

/// INT8/16 and UINT8/16 travel widened to 32 bits; narrow them back, refusing values that
/// do not fit.
fn narrowed<T, W>(name: &str, datatype: &str, values: &[W]) -> Result<ArrayRef>
where
    T: ArrowPrimitiveType,
    T::Native: TryFrom<W>,
    W: Copy + std::fmt::Display,
{
    let narrow: Result<Vec<T::Native>> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            T::Native::try_from(v).map_err(|_| {
                Error::input(
                    name,
                    format!("input '{name}' has value {v} at element {i}, outside the range of {datatype}"),
                )
            })
        })
        .collect();
    Ok(Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::from(narrow?),
        None,
    )))
}
