//! MLflow's signature rules on decoded tensors: matching by name, refusing what MLflow
//! refuses, converting what it converts.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, UInt32Array, UInt8Array,
};
use arrow_schema::DataType as ArrowType;
use arrowsmith_native::coerce::{coerce, ModelInput};
use arrowsmith_native::signature::{ColumnSpec, ColumnType, Signature, TensorSpec, TensorType};
use arrowsmith_native::{DataType, Error, Parameters, Tensor};

fn tensor(name: &str, datatype: DataType, shape: &[usize], values: ArrayRef) -> Tensor {
    Tensor {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
        values,
        parameters: Parameters::new(),
    }
}

fn column(name: &str, ty: &str) -> ColumnSpec {
    ColumnSpec {
        name: Some(name.into()),
        ty: ColumnType::parse(ty),
        required: true,
    }
}

fn columns(input: ModelInput) -> (Vec<String>, Vec<ArrayRef>, usize) {
    match input {
        ModelInput::Columns {
            names,
            columns,
            rows,
            ..
        } => (names, columns, rows),
        ModelInput::Tensors(_) => panic!("expected columns"),
    }
}

fn refusal(result: Result<ModelInput, Error>) -> String {
    match result {
        Err(error) => error.to_string(),
        Ok(input) => panic!("expected a refusal, got {input:?}"),
    }
}

#[test]
fn columns_are_matched_reordered_and_extras_dropped() {
    let signature = Signature::Columns(vec![column("a", "double"), column("b", "long")]);
    let inputs = [
        tensor(
            "extra",
            DataType::Fp32,
            &[2],
            Arc::new(Float32Array::from(vec![9.0, 9.0])),
        ),
        tensor(
            "b",
            DataType::Int32,
            &[2, 1],
            Arc::new(Int32Array::from(vec![1, 2])),
        ),
        tensor(
            "a",
            DataType::Fp32,
            &[2, 1],
            Arc::new(Float32Array::from(vec![0.5, 1.5])),
        ),
    ];
    let (names, columns, rows) = columns(coerce(&inputs, &signature).unwrap());
    assert_eq!(names, ["a", "b"]);
    assert_eq!(rows, 2);
    assert_eq!(
        columns[0].as_primitive::<Float64Type>().values().as_ref(),
        &[0.5, 1.5]
    );
    assert_eq!(
        columns[1].as_primitive::<Int64Type>().values().as_ref(),
        &[1, 2]
    );
}

#[test]
fn missing_required_columns_are_listed() {
    let signature = Signature::Columns(vec![column("a", "double"), column("b", "double")]);
    let inputs = [tensor(
        "c",
        DataType::Fp64,
        &[1],
        Arc::new(arrow_array::Float64Array::from(vec![1.0])),
    )];
    let message = refusal(coerce(&inputs, &signature));
    assert!(
        message.contains("missing inputs ['a', 'b']") && message.contains("'c'"),
        "{message}"
    );
}

#[test]
fn optional_columns_may_be_absent() {
    let mut optional = column("b", "double");
    optional.required = false;
    let signature = Signature::Columns(vec![column("a", "long"), optional]);
    let inputs = [tensor(
        "a",
        DataType::Int64,
        &[1],
        Arc::new(Int64Array::from(vec![7])),
    )];
    let (names, _, _) = columns(coerce(&inputs, &signature).unwrap());
    assert_eq!(names, ["a"]);
}

#[test]
fn unsafe_conversions_are_refused_as_mlflow_does() {
    let cases: [(&str, DataType, ArrayRef, &str); 4] = [
        (
            "double",
            DataType::Int64,
            Arc::new(Int64Array::from(vec![5])),
            "int64 to float64",
        ),
        (
            "float",
            DataType::Int32,
            Arc::new(Int32Array::from(vec![5])),
            "int32 to float32",
        ),
        (
            "integer",
            DataType::Uint32,
            Arc::new(UInt32Array::from(vec![5])),
            "uint32 to int32",
        ),
        (
            "long",
            DataType::Fp32,
            Arc::new(Float32Array::from(vec![5.0])),
            "float32 to int64",
        ),
    ];
    for (ty, datatype, values, words) in cases {
        let signature = Signature::Columns(vec![column("x", ty)]);
        let message = refusal(coerce(&[tensor("x", datatype, &[1], values)], &signature));
        assert!(
            message.contains(&format!("column x. Can not safely convert {words}")),
            "{message}"
        );
    }
}

#[test]
fn int64_zeros_and_ones_become_doubles() {
    let signature = Signature::Columns(vec![column("x", "double")]);
    let inputs = [tensor(
        "x",
        DataType::Int64,
        &[3],
        Arc::new(Int64Array::from(vec![0, 1, 1])),
    )];
    let (_, columns, _) = columns(coerce(&inputs, &signature).unwrap());
    assert_eq!(
        columns[0].as_primitive::<Float64Type>().values().as_ref(),
        &[0.0, 1.0, 1.0]
    );
}

#[test]
fn strings_must_be_utf8() {
    let signature = Signature::Columns(vec![column("s", "string")]);
    let good = BinaryArray::from_iter_values([&b"ok"[..], "\u{e9}".as_bytes()]);
    let (_, columns, _) = columns(
        coerce(
            &[tensor("s", DataType::Bytes, &[2], Arc::new(good))],
            &signature,
        )
        .unwrap(),
    );
    assert_eq!(columns[0].data_type(), &ArrowType::Utf8);
    let bad = BinaryArray::from_iter_values([&b"\xff"[..]]);
    let message = refusal(coerce(
        &[tensor("s", DataType::Bytes, &[1], Arc::new(bad))],
        &signature,
    ));
    assert!(message.contains("not UTF-8"), "{message}");
}

#[test]
fn columns_need_one_value_per_row() {
    let signature = Signature::Columns(vec![column("x", "double"), column("y", "double")]);
    let wide = tensor(
        "x",
        DataType::Fp32,
        &[1, 2],
        Arc::new(Float32Array::from(vec![1.0, 2.0])),
    );
    let y = tensor(
        "y",
        DataType::Fp32,
        &[1],
        Arc::new(Float32Array::from(vec![1.0])),
    );
    assert!(refusal(coerce(&[wide, y], &signature)).contains("[n] or [n, 1]"));
    let inputs = [
        tensor(
            "x",
            DataType::Fp32,
            &[1],
            Arc::new(Float32Array::from(vec![1.0])),
        ),
        tensor(
            "y",
            DataType::Fp32,
            &[2],
            Arc::new(Float32Array::from(vec![1.0, 2.0])),
        ),
    ];
    assert!(refusal(coerce(&inputs, &signature)).contains("same number of rows"));
}

#[test]
fn unsupported_column_types_are_named() {
    let signature = Signature::Columns(vec![column("tags", "array")]);
    let values = BinaryArray::from_iter_values([&b"x"[..]]);
    let error = coerce(
        &[tensor("tags", DataType::Bytes, &[1], Arc::new(values))],
        &signature,
    )
    .unwrap_err();
    assert!(
        matches!(error, Error::Unsupported(ref m) if m.contains("'tags'") && m.contains("array"))
    );
}

#[test]
fn tensor_specs_are_strict() {
    let spec = TensorSpec {
        name: None,
        ty: TensorType::parse("uint8").unwrap(),
        shape: vec![-1, 2, 2],
    };
    let signature = Signature::Tensors(vec![spec]);
    let images = tensor(
        "img",
        DataType::Uint8,
        &[1, 2, 2],
        Arc::new(UInt8Array::from(vec![1, 2, 3, 4])),
    );
    match coerce(&[images], &signature).unwrap() {
        ModelInput::Tensors(t) => assert_eq!(t[0].shape, [1, 2, 2]),
        ModelInput::Columns { .. } => panic!("expected tensors"),
    }
    let floats = tensor(
        "img",
        DataType::Fp32,
        &[1, 2, 2],
        Arc::new(Float32Array::from(vec![0.0; 4])),
    );
    assert!(refusal(coerce(&[floats], &signature)).contains("does not match expected dtype uint8"));
    let wrong = tensor(
        "img",
        DataType::Uint8,
        &[1, 4],
        Arc::new(UInt8Array::from(vec![0; 4])),
    );
    assert!(
        refusal(coerce(&[wrong], &signature)).contains("does not match expected shape [-1, 2, 2]")
    );
}

#[test]
fn fp32_columns_for_double_are_cast_into_one_block_and_seen_through_it() {
    let signature = Signature::Columns(vec![column("a", "double"), column("b", "double")]);
    let inputs = [
        tensor(
            "b",
            DataType::Fp64,
            &[2, 1],
            Arc::new(arrow_array::Float64Array::from(vec![3.25, 4.5])),
        ),
        tensor(
            "a",
            DataType::Fp32,
            &[2],
            Arc::new(Float32Array::from(vec![1.5, 0.1])),
        ),
    ];
    let input = coerce(&inputs, &signature).unwrap();
    let block = input.block().expect("a block for double columns from FP32");
    let block = block.as_primitive::<Float64Type>().values().to_vec();
    assert_eq!(block, vec![1.5, f64::from(0.1f32), 3.25, 4.5]);
    let (names, columns, rows) = columns(input);
    assert_eq!((names, rows), (vec!["a".to_owned(), "b".to_owned()], 2));
    let seen: Vec<Vec<f64>> = columns
        .iter()
        .map(|c| c.as_primitive::<Float64Type>().values().to_vec())
        .collect();
    assert_eq!(seen, vec![vec![1.5, f64::from(0.1f32)], vec![3.25, 4.5]]);
}

#[test]
fn columns_that_need_no_cast_or_are_not_all_doubles_build_no_block() {
    let doubles = Signature::Columns(vec![column("a", "double"), column("b", "double")]);
    let fp64 = |name: &str| {
        tensor(
            name,
            DataType::Fp64,
            &[1],
            Arc::new(arrow_array::Float64Array::from(vec![2.0])),
        )
    };
    let borrowed = coerce(&[fp64("a"), fp64("b")], &doubles).unwrap();
    assert!(
        borrowed.block().is_none(),
        "FP64 columns stay where they are"
    );
    let mixed = Signature::Columns(vec![column("a", "double"), column("b", "long")]);
    let inputs = [
        tensor(
            "a",
            DataType::Fp32,
            &[1],
            Arc::new(Float32Array::from(vec![1.0])),
        ),
        tensor(
            "b",
            DataType::Int64,
            &[1],
            Arc::new(Int64Array::from(vec![7])),
        ),
    ];
    assert!(coerce(&inputs, &mixed).unwrap().block().is_none());
}
