//! Requests a hostile client would send: shapes whose element counts or byte sizes overflow,
//! dimensions an empty tensor cannot back, BYTES counts the data cannot hold. Each is
//! refused as invalid input naming the input; none panics, none allocates what it claims.

use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::{InferTensorContents, ModelInferRequest};
use arrowsmith_native::{decode_request, Error};
use bytes::Bytes;
use prost::Message;

fn request(name: &str, datatype: &str, shape: Vec<i64>, raw: Option<Vec<u8>>) -> Bytes {
    let message = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    };
    Bytes::from(message.encode_to_vec())
}

/// The refusal's input name and message.
fn refusal(bytes: Bytes) -> (Option<String>, String) {
    match decode_request(bytes) {
        Err(Error::InvalidInput { input, message }) => (input, message),
        other => panic!("expected an invalid-input refusal, got {other:?}"),
    }
}

#[test]
fn byte_size_that_wraps_is_refused() {
    // 2**61 + 1 elements of 8 bytes wrap to 8 bytes in unchecked arithmetic.
    let (input, message) = refusal(request("x", "FP64", vec![(1 << 61) + 1], Some(vec![0; 8])));
    assert_eq!(input.as_deref(), Some("x"));
    assert!(message.contains("more than can be held"), "{message}");
}

#[test]
fn element_count_that_overflows_is_refused() {
    let (input, message) = refusal(request(
        "x",
        "FP32",
        vec![1 << 40, 1 << 40],
        Some(vec![0; 4]),
    ));
    assert_eq!(input.as_deref(), Some("x"));
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn empty_tensor_with_huge_rows_is_refused() {
    for shape in [
        vec![i64::MAX, 0],
        vec![0, i64::MAX],
        vec![1 << 20, 0, 1 << 20],
    ] {
        let (input, message) = refusal(request("e", "FP64", shape.clone(), None));
        assert_eq!(input.as_deref(), Some("e"), "{shape:?}");
        assert!(message.contains("no elements"), "{message}");
    }
}

#[test]
fn small_empty_tensors_still_decode() {
    for shape in [vec![0], vec![0, 11], vec![3, 0], vec![0, 0]] {
        let decoded = decode_request(request("e", "FP32", shape.clone(), None));
        assert!(decoded.is_ok(), "{shape:?}: {decoded:?}");
    }
}

#[test]
fn bytes_count_beyond_the_data_is_refused_before_allocating() {
    // 2**40 BYTES elements would need at least 4 TiB of prefixes; 12 bytes are sent.
    let (input, message) = refusal(request("s", "BYTES", vec![1 << 40], Some(vec![0; 12])));
    assert_eq!(input.as_deref(), Some("s"));
    assert!(message.contains("BYTES elements"), "{message}");
}

#[test]
fn bytes_element_longer_than_the_rest_is_refused() {
    let mut raw = u32::MAX.to_le_bytes().to_vec();
    raw.extend_from_slice(b"abc");
    let (input, message) = refusal(request("s", "BYTES", vec![1], Some(raw)));
    assert_eq!(input.as_deref(), Some("s"));
    assert!(message.contains("declares"), "{message}");
}

#[test]
fn negative_dimensions_are_refused() {
    let (input, _) = refusal(request("n", "INT32", vec![-1, 2], Some(vec![0; 8])));
    assert_eq!(input.as_deref(), Some("n"));
}

#[test]
fn typed_contents_count_must_match_the_shape() {
    let message = ModelInferRequest {
        inputs: vec![InferInputTensor {
            name: "t".into(),
            datatype: "INT64".into(),
            shape: vec![(1 << 62) + 1],
            contents: Some(InferTensorContents {
                int64_contents: vec![1],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (input, _) = refusal(Bytes::from(message.encode_to_vec()));
    assert_eq!(input.as_deref(), Some("t"));
}

#[test]
fn a_name_twice_is_refused_whatever_it_holds() {
    let twice = InferInputTensor {
        name: "a\0|:b".into(),
        datatype: "FP32".into(),
        shape: vec![1],
        ..Default::default()
    };
    let message = ModelInferRequest {
        inputs: vec![twice.clone(), twice],
        raw_input_contents: vec![Bytes::from(vec![0; 4]), Bytes::from(vec![0; 4])],
        ..Default::default()
    };
    let (input, message) = refusal(Bytes::from(message.encode_to_vec()));
    assert_eq!(input.as_deref(), Some("a\0|:b"));
    assert!(message.contains("more than once"), "{message}");
}
