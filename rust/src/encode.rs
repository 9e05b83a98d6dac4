//! Predictions (Arrow arrays with shapes) -> `ModelInferResponse` bytes. Every output goes in
//! `raw_output_contents`, the form tritonclient reads for numeric tensors: fixed-width values
//! little-endian, BOOL one byte each, BYTES as 4-byte little-endian length + bytes.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_buffer::Buffer;
use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::proto::{model_infer_response::InferOutputTensor, ModelInferResponse};
use crate::raw::RawValues;
use crate::shm::{self, OutputRegion};
use crate::tensor::{params_to_proto, shape_text, ParamValue, Parameters};

/// `raw_output_contents` is field 6 of `ModelInferResponse`.
const RAW_OUTPUT_CONTENTS_TAG: u32 = 6;

/// One output tensor: values flattened in row-major order, and the shape they fill.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub values: ArrayRef,
}

/// Everything a response carries.
#[derive(Debug, Clone, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Parameters,
    pub outputs: Vec<OutputTensor>,
}

/// A response checked and ready to be written: the message without its raw contents, which
/// are appended straight from the Arrow buffers when writing.
#[derive(Debug)]
pub struct EncodedResponse {
    header: ModelInferResponse,
    raw: Vec<RawValues>,
}

/// Checks the outputs and lays out the response.
pub fn prepare_response(response: InferResponse) -> Result<EncodedResponse> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let (datatype, contents) = raw_contents(&output)?;
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: datatype.name().to_owned(),
            shape: output.shape,
            parameters: std::collections::HashMap::new(),
            contents: None,
        });
        raw.push(contents);
    }
    let header = ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: params_to_proto(&response.parameters),
        outputs,
        raw_output_contents: Vec::new(),
    };
    Ok(EncodedResponse { header, raw })
}

fn raw_contents(output: &OutputTensor) -> Result<(DataType, RawValues)> {
    let values = &output.values;
    let datatype = DataType::from_arrow(values.data_type()).ok_or_else(|| {
        Error::Internal(format!(
            "output '{}' holds {} values, which have no V2 datatype",
            output.name,
            values.data_type()
        ))
    })?;
    let elements =
        output.shape.iter().try_fold(
            1i64,
            |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
        );
    if elements != i64::try_from(values.len()).ok() {
        return Err(Error::Internal(format!(
            "output '{}' has shape {} but {} values",
            output.name,
            shape_text(&output.shape),
            values.len()
        )));
    }
    if values.null_count() > 0 {
        return Err(Error::Internal(format!(
            "output '{}' has {} missing (null) values, which V2 tensors cannot carry",
            output.name,
            values.null_count()
        )));
    }
    let contents = match datatype.element_size() {
        None => RawValues::bytes(values).ok_or_else(|| {
            Error::Internal(format!(
                "output '{}' has an element of 4 GiB or more, which V2 cannot carry",
                output.name
            ))
        })?,
        Some(_) if datatype == DataType::Bool => RawValues::Bools(values.as_boolean().clone()),
        Some(size) => {
            let data = values.to_data();
            RawValues::Fixed(
                data.buffers()[0].slice_with_length(data.offset() * size, data.len() * size),
            )
        }
    };
    Ok((datatype, contents))
}

impl EncodedResponse {
    /// The serialized size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.header.encoded_len()
            + self
                .raw
                .iter()
                .map(|r| {
                    let len = r.len();
                    key_len(RAW_OUTPUT_CONTENTS_TAG) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
    }

    /// Serializes into `out`, which must have `encoded_len()` bytes of room. Repeated fields
    /// may follow the rest of the message on the wire, so the raw contents are appended
    /// after the header without building a second copy of them.
    pub fn write_to(&self, out: &mut impl BufMut) {
        self.header
            .encode(out)
            .expect("the caller provides encoded_len() bytes of room");
        for contents in &self.raw {
            encode_key(RAW_OUTPUT_CONTENTS_TAG, WireType::LengthDelimited, out);
            encode_varint(contents.len() as u64, out);
            contents.write(out);
        }
    }

    /// The response with each output `places` names written into its shared memory region
    /// instead: its raw contents become empty (so that the others keep their positions),
    /// and its parameters say where it went and how many bytes it took.
    pub fn into_regions(mut self, places: &[OutputRegion]) -> Result<EncodedResponse> {
        for place in places {
            let Some(index) = self
                .header
                .outputs
                .iter()
                .position(|output| output.name == place.output)
            else {
                continue;
            };
            let (Some(output), Some(contents)) =
                (self.header.outputs.get_mut(index), self.raw.get_mut(index))
            else {
                continue;
            };
            let len = contents.len();
            place.write(len, |mut target: &mut [u8]| contents.write(&mut target))?;
            *contents = RawValues::Fixed(Buffer::from_vec(Vec::<u8>::new()));
            let mut parameters = crate::tensor::Parameters::new();
            parameters.insert(
                shm::REGION.to_owned(),
                ParamValue::String(place.region_name().to_owned()),
            );
            parameters.insert(
                shm::BYTE_SIZE.to_owned(),
                ParamValue::Int64(i64::try_from(len).unwrap_or(i64::MAX)),
            );
            if place.offset() > 0 {
                parameters.insert(
                    shm::OFFSET.to_owned(),
                    ParamValue::Int64(i64::try_from(place.offset()).unwrap_or(i64::MAX)),
                );
            }
            output.parameters = params_to_proto(&parameters);
        }
        Ok(self)
    }

    /// The outputs as Arrow arrays again, sharing the buffers (no copy), for a front that
    /// answers in Arrow rather than in V2 bytes.
    pub fn outputs(&self) -> Result<Vec<OutputTensor>> {
        self.header
            .outputs
            .iter()
            .zip(&self.raw)
            .map(|(output, contents)| {
                let values = match contents {
                    RawValues::Bytes { values, .. } => values.clone(),
                    RawValues::Bools(values) => std::sync::Arc::new(values.clone()),
                    RawValues::Fixed(buffer) => fixed_array(&output.datatype, buffer)?,
                };
                Ok(OutputTensor {
                    name: output.name.clone(),
                    shape: output.shape.clone(),
                    values,
                })
            })
            .collect()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }
}

/// Fixed-width values of V2 `datatype` over `buffer`.
fn fixed_array(datatype: &str, buffer: &Buffer) -> Result<ArrayRef> {
    let datatype = DataType::parse(datatype)
        .ok_or_else(|| Error::Internal(format!("output datatype {datatype} is not known")))?;
    let size = datatype.element_size().unwrap_or(1);
    let data = arrow_data::ArrayData::builder(datatype.arrow_type())
        .len(buffer.len() / size)
        .add_buffer(buffer.clone())
        .build()
        .map_err(|e| Error::Internal(format!("output values do not form an array: {e}")))?;
    Ok(arrow_array::make_array(data))
}

/// Prepares and serializes a response in one step.
pub fn encode_response(response: InferResponse) -> Result<Vec<u8>> {
    prepare_response(response).map(|r| r.to_vec())
}
