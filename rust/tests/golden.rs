//! Requests as third-party clients put them on the wire (tests/data, made by tritonclient),
//! and the refusals every malformed request must get.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int16Type};
use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::{InferTensorContents, ModelInferRequest};
use arrowsmith_native::{decode_request, DataType, Error, ParamValue};
use bytes::Bytes;
use prost::Message;

fn golden(name: &str) -> Bytes {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(path).expect("golden file"))
}

#[test]
fn tritonclient_raw_request() {
    let request = decode_request(golden("tritonclient_raw.pb")).unwrap();
    assert_eq!(request.model_name, "golden");
    assert_eq!(request.id, "raw-1");
    let [floats, words, flags] = request.inputs.as_slice() else {
        panic!("three inputs")
    };
    assert_eq!(
        (floats.datatype, floats.shape.as_slice()),
        (DataType::Fp32, &[2, 3][..])
    );
    assert_eq!(
        floats
            .values
            .as_primitive::<Float32Type>()
            .values()
            .as_ref(),
        &[1.5, -2.0, 3.25, 0.0, 1e-3, 7.0]
    );
    let words: Vec<&[u8]> = words
        .values
        .as_binary::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(words, [&b"hello"[..], b"", "w\u{f6}rld".as_bytes()]);
    let flags: Vec<bool> = flags
        .values
        .as_boolean()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(flags, [true, false]);
}

#[test]
fn typed_request_with_parameters() {
    let request = decode_request(golden("typed_int16.pb")).unwrap();
    assert_eq!(request.id, "typed-1");
    assert_eq!(
        request.parameters.get("threshold"),
        Some(&ParamValue::Double(0.5))
    );
    assert_eq!(request.requested_outputs, ["output-0"]);
    let ints = &request.inputs[0];
    assert_eq!(
        ints.parameters.get("content_type"),
        Some(&ParamValue::String("np".into()))
    );
    assert_eq!(
        ints.values.as_primitive::<Int16Type>().values().as_ref(),
        &[-32768, 0, 1, 32767]
    );
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

/// Decodes a request that must be refused; returns the input named and the message.
fn refusal(request: &ModelInferRequest) -> (Option<String>, String) {
    match decode_request(Bytes::from(request.encode_to_vec())) {
        Err(Error::InvalidInput { input, message }) => (input, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bytes_that_are_not_protobuf() {
    let error = decode_request(Bytes::from_static(b"\xff\xff\xff\xff not a protobuf")).unwrap_err();
    assert!(
        error.to_string().contains("not a valid ModelInferRequest"),
        "{error}"
    );
}

#[test]
fn raw_size_must_match_shape() {
    let request = ModelInferRequest {
        inputs: vec![input("x", "FP32", &[2, 3])],
        raw_input_contents: vec![Bytes::from(vec![0u8; 20])],
        ..Default::default()
    };
    let (name, message) = refusal(&request);
    assert_eq!(name.as_deref(), Some("x"));
    assert!(
        message.contains("20 bytes") && message.contains("24 bytes"),
        "{message}"
    );
}

#[test]
fn typed_count_must_match_shape() {
    let mut x = input("x", "FP64", &[4]);
    x.contents = Some(InferTensorContents {
        fp64_contents: vec![1.0, 2.0],
        ..Default::default()
    });
    let (name, message) = refusal(&ModelInferRequest {
        inputs: vec![x],
        ..Default::default()
    });
    assert_eq!(name.as_deref(), Some("x"));
    assert!(
        message.contains("2 values in fp64_contents") && message.contains("needs 4"),
        "{message}"
    );
}

#[test]
fn typed_values_must_sit_in_their_field() {
    let mut x = input("x", "FP32", &[1]);
    x.contents = Some(InferTensorContents {
        fp64_contents: vec![1.0],
        ..Default::default()
    });
    let (_, message) = refusal(&ModelInferRequest {
        inputs: vec![x],
        ..Default::default()
    });
    assert!(
        message.contains("fp64_contents") && message.contains("fp32_contents"),
        "{message}"
    );
}

#[test]
fn narrow_ints_must_fit() {
    let mut x = input("x", "INT8", &[2]);
    x.contents = Some(InferTensorContents {
        int_contents: vec![1, 300],
        ..Default::default()
    });
    let (_, message) = refusal(&ModelInferRequest {
        inputs: vec![x],
        ..Default::default()
    });
    assert!(
        message.contains("300") && message.contains("INT8"),
        "{message}"
    );
}

#[test]
fn unknown_datatype_is_named() {
    let request = ModelInferRequest {
        inputs: vec![input("x", "FP99", &[1])],
        raw_input_contents: vec![Bytes::from(vec![0u8; 4])],
        ..Default::default()
    };
    let (name, message) = refusal(&request);
    assert_eq!(name.as_deref(), Some("x"));
    assert!(
        message.contains("FP99") && message.contains("FP32"),
        "{message}"
    );
}

#[test]
fn contents_and_raw_do_not_mix() {
    let mut a = input("a", "FP32", &[1]);
    a.contents = Some(InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    });
    let request = ModelInferRequest {
        inputs: vec![a, input("b", "FP32", &[1])],
        raw_input_contents: vec![Bytes::from(vec![0u8; 4]), Bytes::from(vec![0u8; 4])],
        ..Default::default()
    };
    let (name, message) = refusal(&request);
    assert_eq!(name.as_deref(), Some("a"));
    assert!(message.contains("raw_input_contents"), "{message}");
}

#[test]
fn raw_entries_match_inputs() {
    let request = ModelInferRequest {
        inputs: vec![input("a", "FP32", &[1]), input("b", "FP32", &[1])],
        raw_input_contents: vec![Bytes::from(vec![0u8; 4])],
        ..Default::default()
    };
    let (_, message) = refusal(&request);
    assert!(
        message.contains("2 inputs but 1 raw_input_contents"),
        "{message}"
    );
}

#[test]
fn raw_bytes_elements_are_checked() {
    // Declares 9 bytes, carries 3.
    let mut raw = 9u32.to_le_bytes().to_vec();
    raw.extend_from_slice(b"abc");
    let request = ModelInferRequest {
        inputs: vec![input("s", "BYTES", &[1])],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    };
    let (name, message) = refusal(&request);
    assert_eq!(name.as_deref(), Some("s"));
    assert!(message.contains("declares 9 bytes"), "{message}");
}

#[test]
fn negative_dimensions_and_missing_data() {
    let (_, message) = refusal(&ModelInferRequest {
        inputs: vec![input("x", "FP32", &[-1, 2])],
        ..Default::default()
    });
    assert!(message.contains("[-1, 2]"), "{message}");
    let (_, message) = refusal(&ModelInferRequest {
        inputs: vec![input("x", "FP32", &[2])],
        ..Default::default()
    });
    assert!(message.contains("carries no data"), "{message}");
}

#[test]
fn zero_row_tensors_decode() {
    let request = ModelInferRequest {
        inputs: vec![input("x", "FP32", &[0, 11])],
        ..Default::default()
    };
    let decoded = decode_request(Bytes::from(request.encode_to_vec())).unwrap();
    assert_eq!(decoded.inputs[0].values.len(), 0);
    assert_eq!(decoded.inputs[0].shape, [0, 11]);
}
