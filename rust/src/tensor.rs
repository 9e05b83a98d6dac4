//! A decoded tensor (a flat Arrow array plus its shape) and V2 parameters.

use std::collections::BTreeMap;

use arrow_array::ArrayRef;

use crate::datatype::DataType;
use crate::proto::{infer_parameter::ParameterChoice, InferParameter};

/// A tensor as Arrowsmith holds it: the values flattened in row-major order.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub values: ArrayRef,
    pub parameters: Parameters,
}

/// One V2 parameter value (`InferParameter`'s five choices).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int64(i64),
    String(String),
    Double(f64),
    Uint64(u64),
}

/// Parameters by name, ordered so their encoding is deterministic.
pub type Parameters = BTreeMap<String, ParamValue>;

pub(crate) fn params_from_proto(
    raw: std::collections::HashMap<String, InferParameter>,
) -> Parameters {
    raw.into_iter()
        .filter_map(|(name, p)| {
            let value = match p.parameter_choice? {
                ParameterChoice::BoolParam(v) => ParamValue::Bool(v),
                ParameterChoice::Int64Param(v) => ParamValue::Int64(v),
                ParameterChoice::StringParam(v) => ParamValue::String(v),
                ParameterChoice::DoubleParam(v) => ParamValue::Double(v),
                ParameterChoice::Uint64Param(v) => ParamValue::Uint64(v),
            };
            Some((name, value))
        })
        .collect()
}

pub(crate) fn params_to_proto(
    params: &Parameters,
) -> std::collections::HashMap<String, InferParameter> {
    params
        .iter()
        .map(|(name, value)| {
            let choice = match value {
                ParamValue::Bool(v) => ParameterChoice::BoolParam(*v),
                ParamValue::Int64(v) => ParameterChoice::Int64Param(*v),
                ParamValue::String(v) => ParameterChoice::StringParam(v.clone()),
                ParamValue::Double(v) => ParameterChoice::DoubleParam(*v),
                ParamValue::Uint64(v) => ParameterChoice::Uint64Param(*v),
            };
            (
                name.clone(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect()
}

/// `[2, 3]`, as shapes appear in messages.
pub(crate) fn shape_text<T: std::fmt::Display>(shape: &[T]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}
