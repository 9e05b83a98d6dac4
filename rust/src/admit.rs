//! A decoded request -> a job for its model's batcher. With a signature (and no explicit
//! content type) the signature is applied here, so bad input is refused before it can join
//! a batch. A request-level `content_type` of `np`, `pd` or `dict` asks for the inputs as
//! sent, in that form (as MLServer reads it); MLflow's own enforcement then judges them.
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
use crate::decode::InferRequest;
use crate::error::{Error, Result};
use crate::signature::Signature;
use crate::tensor::{ParamValue, Tensor};

/// The request-level content types that ask for the inputs as sent.
pub const CONTENT_TYPES: [&str; 3] = ["np", "pd", "dict"];

/// The request as a job: coerced to `signature` when there is one, else as sent.
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
    let (form, tensors) = match (signature, content_type) {
        (Some(signature), None) => {
            let input = coerce(&request.inputs, signature)?;
            let form = match input {
                ModelInput::Columns { .. } => "columns",
                ModelInput::Tensors(_) => "tensors",
            };
            (form.to_owned(), input.into_tensors())
        }
        (_, content_type) => (as_sent_form(&request.inputs, content_type)?, request.inputs),
    };
    Ok(Job::new(
        request.id,
        form,
        request.parameters,
        request.requested_outputs,
        tensors,
        deadline,
    )
    .with_output_regions(request.output_regions))
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
