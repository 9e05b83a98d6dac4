//! MLflow's signature rules applied to decoded tensors: names matched and reordered, missing
//! inputs refused, extras dropped, column values converted only where MLflow converts them
//! (`_enforce_mlflow_datatype`), tensor specs matched strictly. No I/O, no batching.
//! Shapes and values come from clients: the compiler holds the module to no indexing,
//! unchecked arithmetic or panics.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, StringArray};
use arrow_buffer::ScalarBuffer;

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::signature::{ColumnSpec, ColumnType, Signature, TensorSpec, TensorType};
use crate::tensor::{shape_text, ParamValue, Tensor};

/// What the model receives once its signature has been applied.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Columns in signature order, each one value per row (a DataFrame).
    Columns {
        names: Vec<String>,
        columns: Vec<ArrayRef>,
        rows: usize,
        /// The columns laid end to end in one array (columns x rows), when the cast to
        /// double wrote them there in one pass (`columns` are views of it): a request
        /// batched alone hands the model this block without another copy.
        block: Option<ArrayRef>,
    },
    /// Tensors in signature order.
    Tensors(Vec<Tensor>),
}

impl ModelInput {
    /// The input as tensors with rows along the first dimension (a column becomes a
    /// tensor of shape `[rows]`), the form batching works on.
    pub fn into_tensors(self) -> Vec<Tensor> {
        match self {
            ModelInput::Tensors(tensors) => tensors,
            ModelInput::Columns {
                names,
                columns,
                rows,
                ..
            } => names
                .into_iter()
                .zip(columns)
                .map(|(name, values)| Tensor {
                    name,
                    datatype: DataType::from_arrow(values.data_type()).unwrap_or(DataType::Bytes),
                    shape: vec![rows],
                    values,
                    parameters: crate::tensor::Parameters::new(),
                })
                .collect(),
        }
    }

    /// The columns' block, when the conversion built one.
    pub fn block(&self) -> Option<ArrayRef> {
        match self {
            ModelInput::Columns { block, .. } => block.clone(),
            ModelInput::Tensors(_) => None,
        }
    }
}

/// Applies `signature` to the request's inputs.
pub fn coerce(inputs: &[Tensor], signature: &Signature) -> Result<ModelInput> {
    match signature {
        Signature::Columns(specs) => coerce_columns(inputs, specs),
        Signature::Tensors(specs) => coerce_tensors(inputs, specs).map(ModelInput::Tensors),
    }
}

fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = names.into_iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// What matching needs to know of a column or tensor spec.
trait InputSpec {
    fn spec_name(&self) -> Option<&str>;
    fn required(&self) -> bool;
}

impl InputSpec for ColumnSpec {
    fn spec_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn required(&self) -> bool {
        self.required
    }
}

impl InputSpec for TensorSpec {
    fn spec_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn required(&self) -> bool {
        true
    }
}

/// Pairs each spec with the input that feeds it: by name when the signature has names,
/// else by position.
fn match_inputs<'a, S: InputSpec>(
    inputs: &'a [Tensor],
    specs: &'a [S],
) -> Result<Vec<(&'a S, Option<&'a Tensor>)>> {
    let named = specs.iter().any(|s| s.spec_name().is_some());
    if !named {
        if inputs.len() < specs.len() {
            return Err(Error::request(format!(
                "Model inference is missing inputs. The model signature declares {} inputs but \
                 the request has {}.",
                specs.len(),
                inputs.len()
            )));
        }
        return Ok(specs.iter().zip(inputs.iter().map(Some)).collect());
    }
    let pairs: Vec<_> = specs
        .iter()
        .map(|s| {
            (
                s,
                inputs
                    .iter()
                    .find(|t| Some(t.name.as_str()) == s.spec_name()),
            )
        })
        .collect();
    let missing: Vec<&str> = pairs
        .iter()
        .filter(|(s, t)| t.is_none() && s.required())
        .filter_map(|(s, _)| s.spec_name())
        .collect();
    if !missing.is_empty() {
        let extra: Vec<&str> = inputs
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !specs.iter().any(|s| s.spec_name() == Some(*n)))
            .collect();
        let mut message = format!(
            "Model is missing inputs {}.",
            quoted_list(missing.iter().copied())
        );
        if !extra.is_empty() {
            let _ = write!(
                message,
                " Note that there were extra inputs: {}.",
                quoted_list(extra)
            );
        }
        return Err(Error::InvalidInput {
            input: missing.first().map(|n| (*n).to_owned()),
            message,
        });
    }
    Ok(pairs)
}

fn coerce_columns(inputs: &[Tensor], specs: &[ColumnSpec]) -> Result<ModelInput> {
    let pairs = match_inputs(inputs, specs)?;
    let mut names = Vec::with_capacity(pairs.len());
    let mut columns = Vec::with_capacity(pairs.len());
    let mut rows: Option<(usize, &str)> = None;
    for (spec, tensor) in pairs {
        let Some(tensor) = tensor else { continue };
        let name = spec.name.clone().unwrap_or_else(|| tensor.name.clone());
        let n = column_rows(tensor)?;
        match rows {
            Some((expected, first)) if expected != n => {
                return Err(Error::input(
                    &tensor.name,
                    format!(
                        "input '{}' has {n} rows but input '{first}' has {expected}; every \
                         column needs the same number of rows",
                        tensor.name
                    ),
                ))
            }
            Some(_) => {}
            None => rows = Some((n, &tensor.name)),
        }
        columns.push(if for_double_block(tensor, &spec.ty) {
            Column::Double(tensor)
        } else {
            Column::Ready(convert_column(&name, tensor, &spec.ty)?)
        });
        names.push(name);
    }
    let rows = rows.map_or(0, |(n, _)| n);
    let (columns, block) = finish_columns(&names, columns, rows)?;
    Ok(ModelInput::Columns {
        names,
        columns,
        rows,
        block,
    })
}

/// A column converted, or one for a double column from FP32 or FP64 values, converted once
/// every column is known: together they may be cast into one block.
enum Column<'a> {
    Ready(ArrayRef),
    Double(&'a Tensor),
}

/// Whether a column goes to a double column from FP32 or FP64 values (the only conversions
/// that can meet there, neither of which can be refused).
fn for_double_block(tensor: &Tensor, target: &ColumnType) -> bool {
    matches!(target, ColumnType::Double)
        && matches!(tensor.datatype, DataType::Fp32 | DataType::Fp64)
        && !is_text(tensor)
        && tensor.values.null_count() == 0
}

/// The columns, and their block when every one of several is a double column from FP32 or
/// FP64 values and one at least needs the cast (which then writes the block: one pass, as a
/// column at a time would take). Otherwise each column as `convert_column` gives it.
fn finish_columns(
    names: &[String],
    columns: Vec<Column<'_>>,
    rows: usize,
) -> Result<(Vec<ArrayRef>, Option<ArrayRef>)> {
    let doubles: Vec<&Tensor> = columns
        .iter()
        .filter_map(|column| match column {
            Column::Double(tensor) => Some(*tensor),
            Column::Ready(_) => None,
        })
        .collect();
    let cast_needed = doubles.iter().any(|t| t.datatype == DataType::Fp32);
    if doubles.len() == columns.len() && doubles.len() > 1 && cast_needed {
        if let Some((views, block)) = double_block(&doubles, rows) {
            return Ok((views, Some(block)));
        }
    }
    let converted = names
        .iter()
        .zip(columns)
        .map(|(name, column)| match column {
            Column::Ready(values) => Ok(values),
            Column::Double(tensor) => convert_column(name, tensor, &ColumnType::Double),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((converted, None))
}

/// The columns cast (or copied) end to end into one double array, and a view of each;
/// None if a column's values are not `rows` FP32 or FP64 values.
fn double_block(tensors: &[&Tensor], rows: usize) -> Option<(Vec<ArrayRef>, ArrayRef)> {
    // Every column's values are counted before anything is allocated for them.
    if tensors.iter().any(|tensor| tensor.values.len() != rows) {
        return None;
    }
    let mut values: Vec<f64> = Vec::with_capacity(tensors.len().checked_mul(rows)?);
    for tensor in tensors {
        if let Some(singles) = tensor.values.as_primitive_opt::<Float32Type>() {
            values.extend(singles.values().iter().map(|&v| f64::from(v)));
        } else {
            values.extend_from_slice(tensor.values.as_primitive_opt::<Float64Type>()?.values());
        }
    }
    let buffer = ScalarBuffer::from(values);
    let views = (0..tensors.len())
        .map(|index| {
            let start = index.checked_mul(rows)?;
            Some(Arc::new(Float64Array::new(buffer.slice(start, rows), None)) as ArrayRef)
        })
        .collect::<Option<Vec<_>>>()?;
    Some((views, Arc::new(Float64Array::new(buffer, None))))
}

/// A column arrives as shape `[n]` or `[n, 1]`.
fn column_rows(tensor: &Tensor) -> Result<usize> {
    match tensor.shape.as_slice() {
        [n] | [n, 1] => Ok(*n),
        shape => Err(Error::input(
            &tensor.name,
            format!(
                "input '{}' has shape {}; a column of a column-based signature has shape [n] \
                 or [n, 1]",
                tensor.name,
                shape_text(shape)
            ),
        )),
    }
}

/// MLflow's allowed conversions for one column: upcasts within a kind, unsigned to a
/// strictly wider signed type, small integers to double, int64 to float only when every
/// value is 0 or 1; everything else is refused.
fn convert_column(name: &str, tensor: &Tensor, target: &ColumnType) -> Result<ArrayRef> {
    use DataType as D;
    let values = &tensor.values;
    let refuse = || {
        let mut message = format!(
            "Incompatible input types for column {name}. Can not safely convert {} to {} \
             (input '{}' is {}).",
            tensor.datatype.numpy_name(),
            target.numpy_name(),
            tensor.name,
            tensor.datatype.name()
        );
        if tensor.datatype == D::Fp64
            && matches!(target, ColumnType::Integer | ColumnType::Long)
            && has_nan_and_only_integers(values)
        {
            message.push_str(
                " Hint: the type mismatch is likely caused by missing values. Integer columns \
                 can not represent missing values; declare the column as double where values \
                 may be missing.",
            );
        }
        Err(Error::input(&tensor.name, message))
    };
    macro_rules! cast {
        ($from:ty, $to:ty, $native:ty) => {
            Ok(Arc::new(
                values
                    .as_primitive::<$from>()
                    .unary::<_, $to>(|v| v as $native),
            ) as ArrayRef)
        };
    }
    // Text (str objects, a pandas string column) is a string or binary column's only: MLflow
    // infers the column's dtype as str first, and str converts to nothing else.
    if is_text(tensor)
        && !matches!(
            target,
            ColumnType::String | ColumnType::Binary | ColumnType::Other(_)
        )
    {
        return Err(Error::input(
            &tensor.name,
            format!(
                "Incompatible input types for column {name}. Can not safely convert str to {} \
                 (input '{}' is text).",
                target.numpy_name(),
                tensor.name
            ),
        ));
    }
    match (target, tensor.datatype) {
        (ColumnType::Other(kind), _) => Err(Error::Unsupported(format!(
            "column '{name}' has MLflow type {kind}, which Arrowsmith does not accept over V2 yet"
        ))),
        // Text for the caller to parse as datetime64[ns], as MLflow parses object columns.
        (ColumnType::Datetime | ColumnType::String, D::Bytes) => utf8_column(name, tensor),
        // MLflow hands object columns to a boolean column unchanged (to keep None values),
        // and parses object columns for a double column as numbers (`pd.to_numeric`): the
        // caller applies that parse, MLflow's own, to the bytes passed through here.
        (ColumnType::Boolean, D::Bool | D::Bytes)
        | (ColumnType::Double, D::Bytes | D::Fp64)
        | (ColumnType::Integer, D::Int32)
        | (ColumnType::Long, D::Int64)
        | (ColumnType::Float, D::Fp32)
        | (ColumnType::Binary, D::Bytes) => Ok(Arc::clone(values)),
        (ColumnType::Integer, D::Int8) => cast!(Int8Type, Int32Type, i32),
        (ColumnType::Integer, D::Int16) => cast!(Int16Type, Int32Type, i32),
        (ColumnType::Integer, D::Uint8) => cast!(UInt8Type, Int32Type, i32),
        (ColumnType::Integer, D::Uint16) => cast!(UInt16Type, Int32Type, i32),
        (ColumnType::Long, D::Int8) => cast!(Int8Type, Int64Type, i64),
        (ColumnType::Long, D::Int16) => cast!(Int16Type, Int64Type, i64),
        (ColumnType::Long, D::Int32) => cast!(Int32Type, Int64Type, i64),
        (ColumnType::Long, D::Uint8) => cast!(UInt8Type, Int64Type, i64),
        (ColumnType::Long, D::Uint16) => cast!(UInt16Type, Int64Type, i64),
        (ColumnType::Long, D::Uint32) => cast!(UInt32Type, Int64Type, i64),
        (ColumnType::Float, D::Fp16) => Ok(Arc::new(
            values
                .as_primitive::<Float16Type>()
                .unary::<_, Float32Type>(half::f16::to_f32),
        )),
        (ColumnType::Double, D::Fp16) => Ok(Arc::new(
            values
                .as_primitive::<Float16Type>()
                .unary::<_, Float64Type>(half::f16::to_f64),
        )),
        (ColumnType::Double, D::Fp32) => cast!(Float32Type, Float64Type, f64),
        (ColumnType::Double, D::Int8) => cast!(Int8Type, Float64Type, f64),
        (ColumnType::Double, D::Int16) => cast!(Int16Type, Float64Type, f64),
        (ColumnType::Double, D::Int32) => cast!(Int32Type, Float64Type, f64),
        (ColumnType::Double, D::Uint8) => cast!(UInt8Type, Float64Type, f64),
        (ColumnType::Double, D::Uint16) => cast!(UInt16Type, Float64Type, f64),
        (ColumnType::Double, D::Uint32) => cast!(UInt32Type, Float64Type, f64),
        (ColumnType::Double, D::Int64) if zeros_and_ones(values) => {
            cast!(Int64Type, Float64Type, f64)
        }
        (ColumnType::Float, D::Int64) if zeros_and_ones(values) => {
            cast!(Int64Type, Float32Type, f32)
        }
        _ => refuse(),
    }
}

/// Whether a BYTES tensor holds text (`content_type: str`, as MLServer's codecs and Arrow
/// string columns mark it) rather than bytes.
fn is_text(tensor: &Tensor) -> bool {
    matches!(tensor.parameters.get("content_type"), Some(ParamValue::String(kind)) if kind == "str")
}

fn zeros_and_ones(values: &ArrayRef) -> bool {
    values
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .all(|v| *v == 0 || *v == 1)
}

fn has_nan_and_only_integers(values: &ArrayRef) -> bool {
    let values = values.as_primitive::<Float64Type>().values();
    values.iter().any(|v| v.is_nan()) && values.iter().all(|v| v.is_nan() || v.fract() == 0.0)
}

/// BYTES holding text: validated as UTF-8 once, sharing the buffers.
fn utf8_column(name: &str, tensor: &Tensor) -> Result<ArrayRef> {
    let binary = tensor.values.as_binary::<i32>();
    let (offsets, values, nulls) = binary.clone().into_parts();
    StringArray::try_new(offsets, values, nulls)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|_| {
            let bad = binary
                .iter()
                .position(|v| v.is_some_and(|b| std::str::from_utf8(b).is_err()));
            Error::input(
                &tensor.name,
                format!(
                    "input '{}' for string column {name} is not UTF-8 text (element {})",
                    tensor.name,
                    bad.unwrap_or_default()
                ),
            )
        })
}

fn coerce_tensors(inputs: &[Tensor], specs: &[TensorSpec]) -> Result<Vec<Tensor>> {
    // Without names MLflow checks the first input against the first spec only.
    let specs = if specs.iter().any(|s| s.name.is_some()) {
        specs
    } else {
        specs.get(..1).unwrap_or(specs)
    };
    let pairs = match_inputs(inputs, specs)?;
    pairs
        .into_iter()
        .filter_map(|(spec, tensor)| tensor.map(|t| (spec, t)))
        .map(|(spec, tensor)| check_tensor(spec, tensor))
        .collect()
}

fn check_tensor(spec: &TensorSpec, tensor: &Tensor) -> Result<Tensor> {
    // MLflow's ragged arrays: an object spec of shape [-1] takes anything, and a 1-D object
    // array passes any spec with a variable inner dimension unless it wants text or bytes.
    let ragged = spec.shape.len() > 1
        && spec.shape.get(1..).is_some_and(|inner| inner.contains(&-1))
        && tensor.shape.len() == 1
        && tensor.datatype == DataType::Bytes
        && !matches!(spec.ty, TensorType::Str | TensorType::Bytes);
    if (spec.ty == TensorType::Object && spec.shape == [-1]) || ragged {
        return Ok(named_as(spec, tensor.clone()));
    }
    let fits = spec.shape.len() == tensor.shape.len()
        && spec
            .shape
            .iter()
            .zip(&tensor.shape)
            .all(|(&want, &got)| want == -1 || usize::try_from(want) == Ok(got));
    if !fits {
        return Err(Error::input(
            &tensor.name,
            format!(
                "Shape of input '{}' {} does not match expected shape {}.",
                tensor.name,
                shape_text(&tensor.shape),
                shape_text(&spec.shape)
            ),
        ));
    }
    if !spec.ty.accepts(tensor.datatype) {
        return Err(Error::input(
            &tensor.name,
            format!(
                "dtype of input '{}' {} ({}) does not match expected dtype {}",
                tensor.name,
                tensor.datatype.numpy_name(),
                tensor.datatype.name(),
                spec.ty.numpy_name()
            ),
        ));
    }
    let mut checked = named_as(spec, tensor.clone());
    if spec.ty == TensorType::Str {
        checked.values = utf8_column(&checked.name, tensor)?;
    }
    Ok(checked)
}

fn named_as(spec: &TensorSpec, mut tensor: Tensor) -> Tensor {
    if let Some(name) = &spec.name {
        tensor.name.clone_from(name);
    }
    tensor
}
