//! Arrow record batches <-> the data path's tensors: a batch of feature columns becomes a
//! request's inputs (each column a tensor with rows along its first dimension), and a
//! request's predictions become a batch of output columns. Also the schemas a model's
//! signature and outputs imply, for clients that ask before they send.
//!
//! A column is one value per row, or a fixed-size list of `k` values per row (a tensor of
//! shape `[rows, k]`; a list of lists of `j` values is `[rows, k, j]`, and so on). Text
//! columns travel as BYTES, as V2 carries them. A column's nulls are refused (V2 has none),
//! except in floating-point columns, where pandas and pyarrow write NaN as null and NaN is
//! what the value was.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, FixedSizeListArray, PrimitiveArray, RecordBatch,
    RecordBatchOptions,
};
use arrow_schema::{DataType as ArrowType, Field, FieldRef, Schema, SchemaRef};

use crate::datatype::DataType;
use crate::encode::OutputTensor;
use crate::error::{Error, Result};
use crate::signature::{ColumnType, Signature, TensorType};
use crate::tensor::{shape_text, ParamValue, Parameters, Tensor};

/// A record batch's columns as tensors, in the batch's order.
pub fn tensors_of(batch: &RecordBatch) -> Result<Vec<Tensor>> {
    let rows = batch.num_rows();
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| tensor_of(field.name(), column, rows))
        .collect()
}

fn tensor_of(name: &str, column: &ArrayRef, rows: usize) -> Result<Tensor> {
    let mut shape = vec![rows];
    let mut values = Arc::clone(column);
    // A fixed-size list of fixed-size lists is a tensor of one more dimension.
    while let ArrowType::FixedSizeList(_, width) = values.data_type() {
        if values.null_count() > 0 {
            return Err(nulls_refused(name, values.null_count()));
        }
        // A list of no values would let a message of a few bytes claim any number of rows
        // (V2's decoder bounds an empty tensor's dimensions by the message's size for the
        // same reason): refused, as a negative size is.
        let width = usize::try_from(*width)
            .ok()
            .filter(|&width| width > 0)
            .ok_or_else(|| {
                Error::input(
                    name,
                    format!("column '{name}' is a list of {width} values per row; a list holds at least one"),
                )
            })?;
        let list = values.as_fixed_size_list();
        // The child's values of these rows only (the list may be a slice of a longer one).
        let start = list.offset().checked_mul(width);
        let len = list.len().checked_mul(width);
        let child = list.values();
        values = match (start, len) {
            (Some(start), Some(len))
                if start.checked_add(len).is_some_and(|end| end <= child.len()) =>
            {
                child.slice(start, len)
            }
            _ => {
                return Err(Error::input(
                    name,
                    format!("column '{name}' has fewer list values than its rows need"),
                ))
            }
        };
        shape.push(width);
    }
    let mut parameters = Parameters::new();
    if matches!(
        values.data_type(),
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
    ) {
        // Text, not bytes: the signature's rules tell them apart (as MLServer's codecs mark).
        parameters.insert(
            "content_type".to_owned(),
            ParamValue::String("str".to_owned()),
        );
    }
    let values = plain_values(name, values)?;
    let datatype = DataType::from_arrow(values.data_type()).ok_or_else(|| {
        Error::input(
            name,
            format!(
                "column '{name}' holds Arrow {} values; a column holds booleans, integers, \
                 floating-point numbers, strings or binary values, one per row or a fixed-size \
                 list of them (nested for more dimensions)",
                values.data_type()
            ),
        )
    })?;
    Ok(Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        values,
        parameters,
    })
}

/// The values as the data path holds them: text and binary as `Binary`, nulls in
/// floating-point values as NaN, any other null refused.
fn plain_values(name: &str, values: ArrayRef) -> Result<ArrayRef> {
    let values = match values.data_type() {
        ArrowType::Utf8
        | ArrowType::LargeUtf8
        | ArrowType::Utf8View
        | ArrowType::LargeBinary
        | ArrowType::BinaryView => arrow_cast::cast(&values, &ArrowType::Binary).map_err(|e| {
            Error::input(
                name,
                format!("column '{name}' cannot be read as bytes: {e}"),
            )
        })?,
        _ => values,
    };
    if values.null_count() == 0 {
        return Ok(values);
    }
    match values.data_type() {
        ArrowType::Float64 => Ok(nan_for_null::<Float64Type>(&values)),
        ArrowType::Float32 => Ok(nan_for_null::<Float32Type>(&values)),
        ArrowType::Float16 => Ok(nan_for_null::<Float16Type>(&values)),
        _ => Err(nulls_refused(name, values.null_count())),
    }
}

fn nulls_refused(name: &str, count: usize) -> Error {
    Error::input(
        name,
        format!(
            "column '{name}' has {count} missing (null) values; only floating-point columns \
             may have them (as NaN)"
        ),
    )
}

/// Floating-point values with NaN where they were null.
fn nan_for_null<T: ArrowPrimitiveType>(values: &ArrayRef) -> ArrayRef
where
    T::Native: num_nan::Nan,
{
    let primitive = values.as_primitive::<T>();
    let filled: PrimitiveArray<T> = primitive
        .iter()
        .map(|v| Some(v.unwrap_or_else(<T::Native as num_nan::Nan>::nan)))
        .collect();
    Arc::new(filled)
}

/// NaN for each floating-point type a column may hold.
mod num_nan {
    pub trait Nan {
        fn nan() -> Self;
    }
    impl Nan for f64 {
        fn nan() -> Self {
            f64::NAN
        }
    }
    impl Nan for f32 {
        fn nan() -> Self {
            f32::NAN
        }
    }
    impl Nan for half::f16 {
        fn nan() -> Self {
            half::f16::NAN
        }
    }
}

/// A request's predictions as a record batch of `rows` rows: an output of shape `[rows]` or
/// `[rows, 1]` is a column, one of shape `[rows, d1, ...]` a fixed-size list of
/// `d1 * ...` values per row. Text stays `Binary` unless `text` names the output.
pub fn batch_of(outputs: Vec<OutputTensor>, rows: usize, text: &[String]) -> Result<RecordBatch> {
    let mut fields: Vec<FieldRef> = Vec::with_capacity(outputs.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let as_text = text.contains(&output.name);
        let (field, column) = output_column(output, rows, as_text)?;
        fields.push(field);
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
        .map_err(|e| Error::Internal(format!("the predictions do not form a record batch: {e}")))
}

fn output_column(output: OutputTensor, rows: usize, as_text: bool) -> Result<(FieldRef, ArrayRef)> {
    let OutputTensor {
        name,
        shape,
        values,
    } = output;
    let values = if as_text {
        arrow_cast::cast(&values, &ArrowType::Utf8)
            .map_err(|e| Error::Internal(format!("output '{name}' is not text: {e}")))?
    } else {
        values
    };
    let leading = shape.first().and_then(|&d| usize::try_from(d).ok());
    let width = shape
        .get(1..)
        .unwrap_or_default()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?));
    let fits =
        leading == Some(rows) && width.and_then(|w| w.checked_mul(rows)) == Some(values.len());
    let Some(width) = width.filter(|_| fits) else {
        return Err(Error::Internal(format!(
            "output '{name}' of shape {} ({} values) is not one row per input row ({rows} rows)",
            shape_text(&shape),
            values.len()
        )));
    };
    if shape.len() <= 1 || (shape.len() == 2 && width == 1) {
        let field = Arc::new(Field::new(&name, values.data_type().clone(), false));
        return Ok((field, values));
    }
    let item = Arc::new(Field::new("item", values.data_type().clone(), false));
    let size = i32::try_from(width)
        .map_err(|_| Error::Internal(format!("output '{name}' has too many values per row")))?;
    let list = FixedSizeListArray::try_new(Arc::clone(&item), size, values, None)
        .map_err(|e| Error::Internal(format!("output '{name}' cannot be listed by row: {e}")))?;
    let field = Arc::new(Field::new(&name, list.data_type().clone(), false));
    Ok((field, Arc::new(list)))
}

/// The columns a model's signature takes, as Arrow fields (a model without a signature
/// takes any: no fields). A tensor spec of shape `[-1, k]` is a list of `k` values per row.
pub fn input_schema(signature: Option<&Signature>) -> SchemaRef {
    let fields: Vec<Field> = match signature {
        None => Vec::new(),
        Some(Signature::Columns(columns)) => columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let name = column.name.clone().unwrap_or_else(|| index.to_string());
                Field::new(name, column_arrow_type(&column.ty), !column.required)
            })
            .collect(),
        Some(Signature::Tensors(tensors)) => tensors
            .iter()
            .enumerate()
            .map(|(index, tensor)| {
                let name = tensor.name.clone().unwrap_or_else(|| index.to_string());
                let item = tensor_arrow_type(tensor.ty);
                Field::new(
                    name,
                    shaped(item, tensor.shape.get(1..).unwrap_or_default()),
                    false,
                )
            })
            .collect(),
    };
    Arc::new(Schema::new(fields))
}

/// The columns a model's outputs (V2 name, datatype and shape, as ModelMetadata says them)
/// come back as; `text` names outputs that hold strings.
pub fn output_schema(outputs: &[(String, String, Vec<i64>)], text: &[String]) -> SchemaRef {
    let fields: Vec<Field> = outputs
        .iter()
        .map(|(name, datatype, shape)| {
            let item = if text.contains(name) {
                ArrowType::Utf8
            } else {
                DataType::parse(datatype).map_or(ArrowType::Binary, DataType::arrow_type)
            };
            Field::new(
                name,
                shaped(item, shape.get(1..).unwrap_or_default()),
                false,
            )
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `item`, or a fixed-size list of it when the inner dimensions hold more than one value
/// (or an unknown number: then a variable list).
fn shaped(item: ArrowType, inner: &[i64]) -> ArrowType {
    let width = inner.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    match width {
        Some(1) => item,
        Some(width) => match i32::try_from(width) {
            Ok(width) => ArrowType::FixedSizeList(Arc::new(Field::new("item", item, false)), width),
            Err(_) => ArrowType::List(Arc::new(Field::new("item", item, false))),
        },
        None => ArrowType::List(Arc::new(Field::new("item", item, false))),
    }
}

fn column_arrow_type(ty: &ColumnType) -> ArrowType {
    match ty {
        ColumnType::Boolean => ArrowType::Boolean,
        ColumnType::Integer => ArrowType::Int32,
        ColumnType::Long => ArrowType::Int64,
        ColumnType::Float => ArrowType::Float32,
        ColumnType::Double => ArrowType::Float64,
        ColumnType::String => ArrowType::Utf8,
        ColumnType::Binary | ColumnType::Datetime | ColumnType::Other(_) => ArrowType::Binary,
    }
}

fn tensor_arrow_type(ty: TensorType) -> ArrowType {
    match ty {
        TensorType::Fixed(datatype) => datatype.arrow_type(),
        TensorType::Str => ArrowType::Utf8,
        TensorType::Bytes | TensorType::Object => ArrowType::Binary,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array, StringArray};

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn columns_become_tensors_of_their_rows() {
        let b = batch(vec![
            (
                "a",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
            ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ]);
        let tensors = tensors_of(&b).unwrap();
        assert_eq!(tensors[0].shape, vec![2]);
        assert_eq!(tensors[0].datatype, DataType::Fp64);
        assert_eq!(tensors[1].datatype, DataType::Bytes);
        assert_eq!(tensors[1].values.data_type(), &ArrowType::Binary);
    }

    #[test]
    fn a_float_null_is_nan_and_other_nulls_are_refused() {
        let b = batch(vec![(
            "a",
            Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef,
        )]);
        let tensors = tensors_of(&b).unwrap();
        assert!(tensors[0]
            .values
            .as_primitive::<Float64Type>()
            .value(1)
            .is_nan());
        assert_eq!(tensors[0].values.null_count(), 0);
        let b = batch(vec![(
            "n",
            Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
        )]);
        let error = tensors_of(&b).unwrap_err();
        assert!(
            error.to_string().contains("column 'n' has 1 missing"),
            "{error}"
        );
    }

    #[test]
    fn a_sliced_list_column_is_a_tensor_of_its_own_rows() {
        let values = Arc::new(Float64Array::from(
            (0..12).map(f64::from).collect::<Vec<_>>(),
        ));
        let item = Arc::new(Field::new("item", ArrowType::Float64, false));
        let list = FixedSizeListArray::try_new(item, 3, values, None).unwrap();
        let b = batch(vec![("t", Arc::new(list) as ArrayRef)]).slice(1, 2);
        let tensors = tensors_of(&b).unwrap();
        assert_eq!(tensors[0].shape, vec![2, 3]);
        let got = tensors[0].values.as_primitive::<Float64Type>();
        assert_eq!(got.values().to_vec(), vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn a_list_of_lists_is_a_tensor_of_three_dimensions() {
        let values = Arc::new(Float64Array::from(
            (0..8).map(f64::from).collect::<Vec<_>>(),
        ));
        let item = Arc::new(Field::new("item", ArrowType::Float64, false));
        let inner = FixedSizeListArray::try_new(Arc::clone(&item), 2, values, None).unwrap();
        let row = Arc::new(Field::new("item", inner.data_type().clone(), false));
        let outer = FixedSizeListArray::try_new(row, 2, Arc::new(inner), None).unwrap();
        let tensors = tensors_of(&batch(vec![("t", Arc::new(outer) as ArrayRef)])).unwrap();
        assert_eq!(tensors[0].shape, vec![2, 2, 2]);
        assert_eq!(tensors[0].values.len(), 8);
    }

    #[test]
    fn a_list_of_no_values_is_refused() {
        let item = Arc::new(Field::new("item", ArrowType::Float64, false));
        let empty = Arc::new(Float64Array::from(Vec::<f64>::new()));
        let list = FixedSizeListArray::try_new(item, 0, empty, None).unwrap();
        let error = tensors_of(&batch(vec![("z", Arc::new(list) as ArrayRef)])).unwrap_err();
        assert!(error.to_string().contains("list of 0 values"), "{error}");
    }

    #[test]
    fn nested_columns_are_refused_by_name() {
        let list = arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(
            vec![Some(vec![Some(1)])],
        );
        let error = tensors_of(&batch(vec![("l", Arc::new(list) as ArrayRef)])).unwrap_err();
        assert!(
            error.to_string().starts_with("column 'l' holds Arrow List"),
            "{error}"
        );
    }

    #[test]
    fn outputs_become_columns_or_lists_by_their_shape() {
        let outputs = vec![
            OutputTensor {
                name: "p".into(),
                shape: vec![2],
                values: Arc::new(Float64Array::from(vec![0.5, 1.5])),
            },
            OutputTensor {
                name: "probs".into(),
                shape: vec![2, 2],
                values: Arc::new(Float64Array::from(vec![0.1, 0.9, 0.2, 0.8])),
            },
        ];
        let b = batch_of(outputs, 2, &[]).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema().field(0).data_type(), &ArrowType::Float64);
        assert!(matches!(
            b.schema().field(1).data_type(),
            ArrowType::FixedSizeList(_, 2)
        ));
        let wrong = vec![OutputTensor {
            name: "p".into(),
            shape: vec![3],
            values: Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5])),
        }];
        assert!(batch_of(wrong, 2, &[]).is_err());
    }

    #[test]
    fn schemas_follow_the_signature_and_the_outputs() {
        let signature = Signature::Columns(vec![crate::signature::ColumnSpec {
            name: Some("x".into()),
            ty: ColumnType::Double,
            required: true,
        }]);
        let schema = input_schema(Some(&signature));
        assert_eq!(schema.field(0).name(), "x");
        assert_eq!(schema.field(0).data_type(), &ArrowType::Float64);
        assert!(input_schema(None).fields().is_empty());
        let outputs = output_schema(&[("y".into(), "FP64".into(), vec![-1])], &[]);
        assert_eq!(outputs.field(0).data_type(), &ArrowType::Float64);
    }
}
