//! decode(encode(x)) == x for every datatype: tensors are encoded as response outputs, the
//! response's wire bytes are re-read as a request (the two messages lay tensors out alike),
//! decoded, and compared with the originals. Typed `contents` get the same check.

use std::sync::Arc;

use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, PrimitiveArray};
use arrowsmith_native::encode::{encode_response, InferResponse, OutputTensor};
use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use arrowsmith_native::{decode_request, DataType};
use bytes::Bytes;
use half::f16;
use proptest::prelude::*;
use prost::Message;

/// Random values of one datatype, `len` of them.
fn values(datatype: DataType, len: usize) -> BoxedStrategy<ArrayRef> {
    fn prim<T: arrow_array::ArrowPrimitiveType>(
        s: impl Strategy<Value = T::Native> + 'static,
        len: usize,
    ) -> BoxedStrategy<ArrayRef>
    where
        T::Native: std::fmt::Debug,
    {
        prop::collection::vec(s, len)
            .prop_map(|v| Arc::new(PrimitiveArray::<T>::from_iter_values(v)) as ArrayRef)
            .boxed()
    }
    match datatype {
        DataType::Bool => prop::collection::vec(any::<bool>(), len)
            .prop_map(|v| Arc::new(BooleanArray::from(v)) as ArrayRef)
            .boxed(),
        DataType::Uint8 => prim::<UInt8Type>(any::<u8>(), len),
        DataType::Uint16 => prim::<UInt16Type>(any::<u16>(), len),
        DataType::Uint32 => prim::<UInt32Type>(any::<u32>(), len),
        DataType::Uint64 => prim::<UInt64Type>(any::<u64>(), len),
        DataType::Int8 => prim::<Int8Type>(any::<i8>(), len),
        DataType::Int16 => prim::<Int16Type>(any::<i16>(), len),
        DataType::Int32 => prim::<Int32Type>(any::<i32>(), len),
        DataType::Int64 => prim::<Int64Type>(any::<i64>(), len),
        DataType::Fp16 => prim::<Float16Type>(any::<u16>().prop_map(f16::from_bits), len),
        DataType::Fp32 => prim::<Float32Type>(any::<u32>().prop_map(f32::from_bits), len),
        DataType::Fp64 => prim::<Float64Type>(any::<u64>().prop_map(f64::from_bits), len),
        DataType::Bytes => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), len)
            .prop_map(|v| Arc::new(BinaryArray::from_iter_values(v)) as ArrayRef)
            .boxed(),
    }
}

/// A datatype, a shape of up to three dimensions (zero-size ones included) and values.
fn tensor() -> impl Strategy<Value = (DataType, Vec<usize>, ArrayRef)> {
    (
        prop::sample::select(DataType::ALL.to_vec()),
        prop::collection::vec(0usize..5, 0..=3),
    )
        .prop_flat_map(|(datatype, shape)| {
            let len = shape.iter().product();
            (Just(datatype), Just(shape), values(datatype, len))
        })
}

/// Arrow compares primitive values bytewise, so NaN payloads equal themselves.
fn same(a: &ArrayRef, b: &ArrayRef) -> bool {
    a.to_data() == b.to_data()
}

fn as_request(response_bytes: &[u8]) -> ModelInferRequest {
    let response = ModelInferResponse::decode(response_bytes).expect("our response parses");
    ModelInferRequest {
        model_name: response.model_name,
        id: response.id,
        inputs: response
            .outputs
            .into_iter()
            .map(|o| InferInputTensor {
                name: o.name,
                datatype: o.datatype,
                shape: o.shape,
                ..Default::default()
            })
            .collect(),
        raw_input_contents: response.raw_output_contents,
        ..Default::default()
    }
}

fn typed_contents(datatype: DataType, values: &ArrayRef) -> InferTensorContents {
    use arrow_array::cast::AsArray;
    use arrow_array::ArrowPrimitiveType;

    /// The values widened to the protobuf field's type.
    fn field<T: ArrowPrimitiveType, W: From<T::Native>>(values: &ArrayRef) -> Vec<W> {
        values
            .as_primitive::<T>()
            .values()
            .iter()
            .map(|&v| W::from(v))
            .collect()
    }
    let mut c = InferTensorContents::default();
    match datatype {
        DataType::Bool => c.bool_contents = values.as_boolean().iter().flatten().collect(),
        DataType::Int8 => c.int_contents = field::<Int8Type, i32>(values),
        DataType::Int16 => c.int_contents = field::<Int16Type, i32>(values),
        DataType::Int32 => c.int_contents = field::<Int32Type, i32>(values),
        DataType::Int64 => c.int64_contents = field::<Int64Type, i64>(values),
        DataType::Uint8 => c.uint_contents = field::<UInt8Type, u32>(values),
        DataType::Uint16 => c.uint_contents = field::<UInt16Type, u32>(values),
        DataType::Uint32 => c.uint_contents = field::<UInt32Type, u32>(values),
        DataType::Uint64 => c.uint64_contents = field::<UInt64Type, u64>(values),
        DataType::Fp32 => c.fp32_contents = field::<Float32Type, f32>(values),
        DataType::Fp64 => c.fp64_contents = field::<Float64Type, f64>(values),
        DataType::Bytes => {
            let elements = values.as_binary::<i32>().iter().flatten();
            c.bytes_contents = elements.map(Bytes::copy_from_slice).collect();
        }
        DataType::Fp16 => unreachable!("FP16 has no typed contents"),
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn raw_round_trip(tensors in prop::collection::vec(tensor(), 1..4), id in "[a-z0-9-]{0,8}") {
        let outputs: Vec<OutputTensor> = tensors
            .iter()
            .enumerate()
            .map(|(i, (_, shape, values))| OutputTensor {
                name: format!("t{i}"),
                shape: shape.iter().map(|&d| d as i64).collect(),
                values: Arc::clone(values),
            })
            .collect();
        let bytes = encode_response(InferResponse {
            model_name: "m".into(),
            id: id.clone(),
            outputs,
            ..Default::default()
        })
        .unwrap();
        let request = as_request(&bytes).encode_to_vec();
        let decoded = decode_request(Bytes::from(request)).unwrap();
        prop_assert_eq!(decoded.id, id);
        prop_assert_eq!(decoded.inputs.len(), tensors.len());
        for (tensor, (datatype, shape, values)) in decoded.inputs.iter().zip(&tensors) {
            prop_assert_eq!(tensor.datatype, *datatype);
            prop_assert_eq!(&tensor.shape, shape);
            prop_assert!(same(&tensor.values, values), "{:?} != {:?}", tensor.values, values);
        }
    }

    #[test]
    fn typed_contents_decode(
        (datatype, shape, values) in tensor().prop_filter("FP16 is raw only", |t| t.0 != DataType::Fp16)
    ) {
        let request = ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: datatype.name().into(),
                shape: shape.iter().map(|&d| d as i64).collect(),
                contents: Some(typed_contents(datatype, &values)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let decoded = decode_request(Bytes::from(request.encode_to_vec())).unwrap();
        prop_assert!(same(&decoded.inputs[0].values, &values));
        prop_assert_eq!(decoded.inputs[0].values.len(), values.len());
    }
}
