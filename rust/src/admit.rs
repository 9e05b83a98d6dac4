//! A decoded request -> a job for its model's batcher. With a signature, and no content type
//! that asks otherwise, the signature is applied here (the native enforcement), so bad input
//! is refused before it can join a batch.
//!
//! A request-level `content_type` of `np`, `pd` or `dict` asks for the inputs as sent, in
//! that form (as MLServer's codecs hand them to MLflow): BYTES as bytes objects, or as text
//! where an input says `content_type: str`. MLflow's own enforcement then judges them, in
//! Python, on every batch. Where that value is the very one the differential oracle builds
//! (tests/differential/test_enforcement.py), MLflow's verdict on it is the native
//! enforcement's, so the request takes the native enforcement instead, exactly as if it had
//! no content type (tests/differential/test_content_types.py holds the two to that). That is
//! so when the request has inputs, the form is the one the signature produces anyway, and
//!
//! - no input says `content_type: str`: as sent, such BYTES are str objects (in a frame a
//!   pandas `str` column, which MLflow keeps for a string or binary column) where the oracle
//!   holds bytes or numpy text, and the native enforcement refuses a marked input for any
//!   column but a string or binary one;
//! - `pd` for a column signature: every input has shape `[n]` or `[n, 1]` with one `n` for
//!   all (anything else builds another DataFrame, or none), no input feeds an Array, Object,
//!   Map or AnyType column (which only MLflow's enforcement reads), and no BYTES input feeds
//!   a string or datetime column (the oracle reads those as text; MLflow, given bytes,
//!   keeps or parses them otherwise);
//! - `np` for an unnamed tensor signature, `dict` for a named one: no BYTES input feeds a
//!   `str` or `bytes` spec (the oracle's numpy text or bytes array, an object array as
//!   sent).
//!
//! Every other request with a content type keeps the Python path.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::Instant;

use crate::batch::Job;
use crate::coerce::{coerce, ModelInput};
use crate::datatype::DataType;
use crate::decode::InferRequest;
use crate::error::{Error, Result};
use crate::signature::{ColumnSpec, ColumnType, Signature, TensorSpec, TensorType};
use crate::tensor::{ParamValue, Tensor};

/// The request-level content types that ask for the inputs as sent.
pub const CONTENT_TYPES: [&str; 3] = ["np", "pd", "dict"];

/// The request as a job: coerced to `signature` when there is one and the request's
/// content type, if it has one, allows it; else as sent.
pub fn job_for(
    request: InferRequest,
    signature: Option<&Signature>,
    deadline: Option<Instant>,
) -> Result<Job> {
    let content_type = match request.parameters.get("content_type") {
        None => None,
        Some(ParamValue::String(text)) if CONTENT_TYPES.contains(&text.as_str()) => {
            Some(text.clone())
        }
        Some(other) => {
            return Err(Error::request(format!(
                "request content_type '{}' is not one of {}",
                param_text(other),
                CONTENT_TYPES.join(", ")
            )))
        }
    };
    let enforced_natively = signature.filter(|signature| match content_type.as_deref() {
        None => true,
        Some(form) => native_equals_as_sent(form, &request.inputs, signature),
    });
    let (form, tensors, block) = match enforced_natively {
        Some(signature) => {
            let input = coerce(&request.inputs, signature)?;
            let form = match input {
                ModelInput::Columns { .. } => "columns",
                ModelInput::Tensors(_) => "tensors",
            };
            let block = input.block();
            (form.to_owned(), input.into_tensors(), block)
        }
        None => (
            as_sent_form(&request.inputs, content_type)?,
            request.inputs,
            None,
        ),
    };
    Ok(Job::new(
        request.id,
        form,
        request.parameters,
        request.requested_outputs,
        tensors,
        deadline,
    )
    .with_block(block)
    .with_output_regions(request.output_regions))
}

/// Whether MLflow's enforcement of `inputs` sent in `form` (`np`, `pd` or `dict`) is
/// provably the native enforcement's result (the module's documentation says why).
fn native_equals_as_sent(form: &str, inputs: &[Tensor], signature: &Signature) -> bool {
    if inputs.is_empty() || inputs.iter().any(marked_as_text) {
        return false;
    }
    match (form, signature) {
        ("pd", Signature::Columns(specs)) => frame_as_sent_is_oracles(inputs, specs),
        ("np", Signature::Tensors(specs)) if !named_tensors(specs) => {
            arrays_as_sent_are_oracles(inputs, specs)
        }
        ("dict", Signature::Tensors(specs)) if named_tensors(specs) => {
            arrays_as_sent_are_oracles(inputs, specs)
        }
        _ => false,
    }
}

/// Whether an input says `content_type: str`: the form as sent then holds it as text.
fn marked_as_text(input: &Tensor) -> bool {
    matches!(input.parameters.get("content_type"), Some(ParamValue::String(kind)) if kind == "str")
}

/// Whether a tensor signature names its inputs (MLflow names all of them or none).
fn named_tensors(specs: &[TensorSpec]) -> bool {
    specs.iter().any(|s| s.name.is_some())
}

/// The spec the input at `position` feeds: by name when the signature has names, else by
/// position (an unnamed tensor signature has one spec, which the first input feeds).
fn fed_spec<'a, S>(
    specs: &'a [S],
    name_of: impl Fn(&S) -> Option<&str>,
    position: usize,
    input: &Tensor,
) -> Option<&'a S> {
    if specs.iter().any(|s| name_of(s).is_some()) {
        specs
            .iter()
            .find(|s| name_of(s) == Some(input.name.as_str()))
    } else {
        specs.get(position)
    }
}

/// `pd`: one column per input, each flattened from `[n]` or `[n, 1]`, is the oracle's frame
/// unless a BYTES input feeds a column the oracle reads as text; columns of MLflow's
/// Array, Object, Map and AnyType types are MLflow's alone to read.
fn frame_as_sent_is_oracles(inputs: &[Tensor], specs: &[ColumnSpec]) -> bool {
    same_rows_as_columns(inputs)
        && inputs.iter().enumerate().all(|(position, input)| {
            let spec = fed_spec(specs, |s| s.name.as_deref(), position, input);
            match spec.map(|s| &s.ty) {
                Some(ColumnType::Other(_)) => false,
                Some(ColumnType::String | ColumnType::Datetime) => {
                    input.datatype != DataType::Bytes
                }
                _ => true,
            }
        })
}

/// Whether every input is a column (`[n]` or `[n, 1]`) of the same `n`.
fn same_rows_as_columns(inputs: &[Tensor]) -> bool {
    let rows = |input: &Tensor| match input.shape.as_slice() {
        [n] | [n, 1] => Some(*n),
        _ => None,
    };
    let first = inputs.first().and_then(rows);
    first.is_some() && inputs.iter().all(|input| rows(input) == first)
}

/// `np` and `dict`: arrays of the inputs' own shapes and dtypes are the oracle's unless a
/// BYTES input feeds a `str` or `bytes` spec (numpy text for the oracle, bytes objects as
/// sent).
fn arrays_as_sent_are_oracles(inputs: &[Tensor], specs: &[TensorSpec]) -> bool {
    inputs.iter().enumerate().all(|(position, input)| {
        let spec = fed_spec(specs, |s| s.name.as_deref(), position, input);
        input.datatype != DataType::Bytes
            || !matches!(
                spec.map(|s| s.ty),
                Some(TensorType::Str | TensorType::Bytes)
            )
    })
}

/// The form inputs sent as they are take: the content type asked for, else `np` for one
/// input, `pd` when every input is a column, `dict` otherwise.
fn as_sent_form(inputs: &[Tensor], content_type: Option<String>) -> Result<String> {
    if inputs.is_empty() {
        return Err(Error::request("the request has no inputs"));
    }
    if let Some(content_type) = content_type {
        return Ok(content_type);
    }
    let form = if inputs.len() == 1 {
        "np"
    } else if inputs
        .iter()
        .all(|t| t.shape.len() == 1 || t.shape.get(1..) == Some(&[1]))
    {
        "pd"
    } else {
        "dict"
    };
    Ok(form.to_owned())
}

/// A parameter value as a message shows it.
fn param_text(value: &ParamValue) -> String {
    match value {
        ParamValue::Bool(v) => if *v { "True" } else { "False" }.to_owned(),
        ParamValue::Int64(v) => v.to_string(),
        ParamValue::String(v) => v.clone(),
        ParamValue::Double(v) => format!("{v:?}"),
        ParamValue::Uint64(v) => v.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BinaryArray, Float32Array, Float64Array, Int64Array};

    use super::*;
    use crate::tensor::Parameters;

    fn doubles(name: &str, shape: &[usize]) -> Tensor {
        let count = shape.iter().product::<usize>();
        tensor(
            name,
            DataType::Fp64,
            shape,
            Arc::new(Float64Array::from(vec![0.5; count])),
        )
    }

    fn longs(name: &str, values: Vec<i64>) -> Tensor {
        let shape = [values.len()];
        tensor(
            name,
            DataType::Int64,
            &shape,
            Arc::new(Int64Array::from(values)),
        )
    }

    fn floats(name: &str, shape: &[usize]) -> Tensor {
        let count = shape.iter().product::<usize>();
        tensor(
            name,
            DataType::Fp32,
            shape,
            Arc::new(Float32Array::from(vec![1.5; count])),
        )
    }

    fn bytes(name: &str, shape: &[usize]) -> Tensor {
        let count = shape.iter().product::<usize>();
        let values = BinaryArray::from_vec(vec![b"ab".as_slice(); count]);
        tensor(name, DataType::Bytes, shape, Arc::new(values))
    }

    fn tensor(name: &str, datatype: DataType, shape: &[usize], values: ArrayRef) -> Tensor {
        Tensor {
            name: name.to_owned(),
            datatype,
            shape: shape.to_vec(),
            values,
            parameters: Parameters::new(),
        }
    }

    fn marked_str(mut input: Tensor) -> Tensor {
        input.parameters.insert(
            "content_type".to_owned(),
            ParamValue::String("str".to_owned()),
        );
        input
    }

    fn columns(specs: &[(&str, &str)]) -> Signature {
        Signature::Columns(
            specs
                .iter()
                .map(|(name, ty)| ColumnSpec {
                    name: Some((*name).to_owned()),
                    ty: ColumnType::parse(ty),
                    required: true,
                })
                .collect(),
        )
    }

    fn tensors(specs: &[(Option<&str>, &str)]) -> Signature {
        Signature::Tensors(
            specs
                .iter()
                .map(|(name, ty)| TensorSpec {
                    name: name.map(str::to_owned),
                    ty: TensorType::parse(ty).unwrap(),
                    shape: vec![-1],
                })
                .collect(),
        )
    }

    fn request(content_type: Option<&str>, inputs: Vec<Tensor>) -> InferRequest {
        let parameters = content_type
            .map(|form| {
                (
                    "content_type".to_owned(),
                    ParamValue::String(form.to_owned()),
                )
            })
            .into_iter()
            .collect();
        InferRequest {
            model_name: "m".to_owned(),
            model_version: String::new(),
            id: String::new(),
            parameters,
            inputs,
            requested_outputs: Vec::new(),
            output_regions: Vec::new(),
        }
    }

    /// The form the job takes (`columns` or `tensors` when the native enforcement ran), or
    /// `refused` (only the native enforcement refuses a request with inputs at admission).
    fn form(content_type: Option<&str>, inputs: Vec<Tensor>, signature: &Signature) -> String {
        match job_for(request(content_type, inputs), Some(signature), None) {
            Ok(job) => job.form.clone(),
            Err(_) => "refused".to_owned(),
        }
    }

    #[test]
    fn numeric_columns_sent_as_pd_take_the_native_enforcement() {
        let signature = columns(&[("a", "double"), ("b", "double")]);
        let inputs = vec![
            floats("b", &[2, 1]),
            doubles("a", &[2]),
            doubles("extra", &[2]),
        ];
        assert_eq!(form(Some("pd"), inputs, &signature), "columns");
    }

    #[test]
    fn pd_that_the_native_enforcement_refuses_is_refused_at_admission() {
        let signature = columns(&[("a", "double")]);
        let refused = job_for(
            request(Some("pd"), vec![longs("a", vec![2, 3])]),
            Some(&signature),
            None,
        );
        assert!(refused.is_err());
        let zeros_and_ones = vec![longs("a", vec![0, 1])];
        assert_eq!(form(Some("pd"), zeros_and_ones, &signature), "columns");
    }

    #[test]
    fn bytes_for_binary_and_numeric_columns_take_the_native_enforcement() {
        let signature = columns(&[("a", "binary"), ("b", "double"), ("c", "boolean")]);
        let inputs = vec![bytes("a", &[3]), bytes("b", &[3, 1]), bytes("c", &[3])];
        assert_eq!(form(Some("pd"), inputs, &signature), "columns");
    }

    #[test]
    fn bytes_for_text_columns_keep_the_python_path() {
        for ty in ["string", "datetime"] {
            let signature = columns(&[("a", "double"), ("t", ty)]);
            let inputs = vec![doubles("a", &[1]), bytes("t", &[1])];
            assert_eq!(form(Some("pd"), inputs, &signature), "pd", "{ty}");
            let numbers = vec![doubles("a", &[1]), doubles("t", &[1])];
            assert_eq!(form(Some("pd"), numbers, &signature), "refused", "{ty}");
        }
    }

    #[test]
    fn an_input_marked_as_text_keeps_the_python_path() {
        let signature = columns(&[("a", "double"), ("s", "string")]);
        let inputs = vec![doubles("a", &[2]), marked_str(bytes("s", &[2]))];
        assert_eq!(form(Some("pd"), inputs, &signature), "pd");
        let marked_number = vec![marked_str(doubles("a", &[2]))];
        assert_eq!(form(Some("pd"), marked_number, &signature), "pd");
        let unnamed = tensors(&[(None, "object")]);
        assert_eq!(
            form(Some("np"), vec![marked_str(bytes("x", &[2]))], &unnamed),
            "np"
        );
    }

    #[test]
    fn pd_whose_inputs_are_not_columns_of_one_length_keeps_the_python_path() {
        let signature = columns(&[("a", "double")]);
        let wide = vec![doubles("a", &[2]), doubles("extra", &[2, 3])];
        assert_eq!(form(Some("pd"), wide, &signature), "pd");
        let longer = vec![doubles("a", &[2]), doubles("extra", &[3])];
        assert_eq!(form(Some("pd"), longer, &signature), "pd");
        let scalar = vec![doubles("a", &[])];
        assert_eq!(form(Some("pd"), scalar, &signature), "pd");
        assert_eq!(
            form(Some("pd"), vec![doubles("a", &[0, 1])], &signature),
            "columns"
        );
    }

    #[test]
    fn columns_only_mlflow_reads_keep_the_python_path() {
        let signature = columns(&[("a", "double"), ("j", "array")]);
        let fed = vec![doubles("a", &[1]), bytes("j", &[1])];
        assert_eq!(form(Some("pd"), fed, &signature), "pd");
        let unnamed = Signature::Columns(vec![ColumnSpec {
            name: None,
            ty: ColumnType::parse("map"),
            required: true,
        }]);
        assert_eq!(form(Some("pd"), vec![bytes("j", &[1])], &unnamed), "pd");
    }

    #[test]
    fn unnamed_columns_are_fed_by_position() {
        let signature = Signature::Columns(vec![
            ColumnSpec {
                name: None,
                ty: ColumnType::Double,
                required: true,
            },
            ColumnSpec {
                name: None,
                ty: ColumnType::String,
                required: true,
            },
        ]);
        let text_second = vec![doubles("s", &[1]), bytes("a", &[1])];
        assert_eq!(form(Some("pd"), text_second, &signature), "pd");
        let text_extra = vec![doubles("s", &[1]), doubles("a", &[1]), bytes("x", &[1])];
        assert_eq!(form(Some("pd"), text_extra, &signature), "refused");
    }

    #[test]
    fn np_for_an_unnamed_tensor_takes_the_native_enforcement() {
        let signature = tensors(&[(None, "float32")]);
        let inputs = vec![floats("x", &[3]), bytes("ignored", &[1])];
        assert_eq!(form(Some("np"), inputs, &signature), "tensors");
        let object = tensors(&[(None, "object")]);
        assert_eq!(form(Some("np"), vec![bytes("x", &[2])], &object), "tensors");
    }

    #[test]
    fn dict_for_named_tensors_takes_the_native_enforcement() {
        let signature = tensors(&[(Some("x"), "float32"), (Some("o"), "object")]);
        let inputs = vec![bytes("o", &[1]), floats("x", &[2]), bytes("extra", &[2, 2])];
        assert_eq!(form(Some("dict"), inputs, &signature), "tensors");
    }

    #[test]
    fn bytes_for_numpy_text_specs_keep_the_python_path() {
        for ty in ["str", "bytes"] {
            let unnamed = tensors(&[(None, ty)]);
            assert_eq!(
                form(Some("np"), vec![bytes("x", &[2])], &unnamed),
                "np",
                "{ty}"
            );
            let named = tensors(&[(Some("x"), "float32"), (Some("t"), ty)]);
            let inputs = vec![floats("x", &[1]), bytes("t", &[1])];
            assert_eq!(form(Some("dict"), inputs, &named), "dict", "{ty}");
        }
    }

    #[test]
    fn a_form_the_signature_does_not_produce_keeps_the_python_path() {
        let named = tensors(&[(Some("x"), "float32")]);
        let unnamed = tensors(&[(None, "float32")]);
        let frame = columns(&[("x", "float")]);
        for (content_type, signature) in [
            ("np", &named),
            ("pd", &named),
            ("dict", &unnamed),
            ("pd", &unnamed),
            ("np", &frame),
            ("dict", &frame),
        ] {
            let inputs = vec![floats("x", &[2])];
            assert_eq!(form(Some(content_type), inputs, signature), content_type);
        }
    }

    #[test]
    fn without_a_content_type_or_a_signature_nothing_changes() {
        let signature = columns(&[("a", "string")]);
        assert_eq!(form(None, vec![bytes("a", &[1])], &signature), "columns");
        let job = job_for(request(Some("pd"), vec![doubles("a", &[1])]), None, None).unwrap();
        assert_eq!(job.form, "pd");
        let empty = job_for(request(Some("pd"), Vec::new()), Some(&signature), None);
        assert!(empty.is_err());
    }

    /// A batch of one request that admission cast into a block is that very block; two
    /// such requests are gathered column by column as before.
    #[test]
    fn a_request_batched_alone_hands_over_its_cast_block() {
        use crate::batch::{BatchConfig, Batcher};
        use arrow_array::cast::AsArray;
        use arrow_array::types::Float64Type;

        let signature = columns(&[("a", "double"), ("b", "double")]);
        let config = BatchConfig {
            max_batch_rows: 1024,
            max_delay: std::time::Duration::ZERO,
            max_queue: 8,
        };
        let batcher = Batcher::new(config, "m".to_owned(), String::new());
        let admit = || {
            let inputs = vec![floats("b", &[2, 1]), doubles("a", &[2])];
            Arc::new(job_for(request(None, inputs), Some(&signature), None).unwrap())
        };
        let alone = admit();
        batcher.submit(&alone).unwrap();
        let block = batcher
            .next_batch()
            .unwrap()
            .column_block()
            .unwrap()
            .unwrap();
        assert_eq!(
            block.as_primitive::<Float64Type>().values(),
            &[0.5, 0.5, 1.5, 1.5]
        );
        let kept = alone.block.clone().unwrap();
        assert!(Arc::ptr_eq(&block, &kept), "the batch copied the block");

        let (first, second) = (admit(), admit());
        batcher.submit(&first).unwrap();
        batcher.submit(&second).unwrap();
        let gathered = batcher
            .next_batch()
            .unwrap()
            .column_block()
            .unwrap()
            .unwrap();
        let expected = [0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 1.5, 1.5];
        assert_eq!(gathered.as_primitive::<Float64Type>().values(), &expected);
    }
}
