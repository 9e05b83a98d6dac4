//! What requests must share to ride in one batch, as a typed value: the form the model
//! takes, each input's name, types and trailing dimensions, the parameters and the outputs
//! asked for. Names are compared as whole values, so no name can imitate another request's
//! inputs by holding the characters a text key would have used as separators.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::Array;
use arrow_schema::DataType as ArrowType;

use crate::datatype::DataType;
use crate::tensor::{ParamValue, Parameters, Tensor};

/// A parameter value that can be compared and hashed: doubles by their bits, so two
/// requests share a batch only when their parameters are the same bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ParamKey {
    Bool(bool),
    Int64(i64),
    String(String),
    Double(u64),
    Uint64(u64),
}

impl From<&ParamValue> for ParamKey {
    fn from(value: &ParamValue) -> Self {
        match value {
            ParamValue::Bool(v) => ParamKey::Bool(*v),
            ParamValue::Int64(v) => ParamKey::Int64(*v),
            ParamValue::String(v) => ParamKey::String(v.clone()),
            ParamValue::Double(v) => ParamKey::Double(v.to_bits()),
            ParamValue::Uint64(v) => ParamKey::Uint64(*v),
        }
    }
}

fn param_keys(parameters: &Parameters) -> Vec<(String, ParamKey)> {
    parameters
        .iter()
        .map(|(name, value)| (name.clone(), ParamKey::from(value)))
        .collect()
}

/// One input as the batch sees it: everything but its rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct InputKey {
    name: String,
    datatype: DataType,
    values: ArrowType,
    /// The dimensions after the first (the rows), so the rank too.
    trailing: Vec<usize>,
    parameters: Vec<(String, ParamKey)>,
}

impl InputKey {
    fn of(tensor: &Tensor) -> Self {
        InputKey {
            name: tensor.name.clone(),
            datatype: tensor.datatype,
            values: tensor.values.data_type().clone(),
            trailing: tensor.shape.get(1..).unwrap_or_default().to_vec(),
            parameters: param_keys(&tensor.parameters),
        }
    }
}

/// Requests share a batch only when their keys are equal.
#[derive(Debug, Clone)]
pub struct BatchKey {
    form: String,
    inputs: Vec<InputKey>,
    parameters: Vec<(String, ParamKey)>,
    requested_outputs: Vec<String>,
    /// A request whose tensors share no row dimension runs alone: a number no other key has.
    alone: Option<u64>,
    /// A hash of the fields above, so that most unequal keys differ at the first compare.
    hash: u64,
}

impl BatchKey {
    /// The key of a request; `batchable`: its tensors share a first (row) dimension.
    pub fn new(
        form: &str,
        parameters: &Parameters,
        requested_outputs: &[String],
        tensors: &[Tensor],
        batchable: bool,
    ) -> Self {
        static ALONE: AtomicU64 = AtomicU64::new(0);
        let mut key = BatchKey {
            form: form.to_owned(),
            inputs: tensors.iter().map(InputKey::of).collect(),
            parameters: param_keys(parameters),
            requested_outputs: requested_outputs.to_vec(),
            alone: (!batchable).then(|| ALONE.fetch_add(1, Ordering::Relaxed)),
            hash: 0,
        };
        let mut hasher = DefaultHasher::new();
        (
            &key.form,
            &key.inputs,
            &key.parameters,
            &key.requested_outputs,
            key.alone,
        )
            .hash(&mut hasher);
        key.hash = hasher.finish();
        key
    }

    /// How many inputs a request of this key has.
    pub fn input_count(&self) -> usize {
        self.inputs.len()
    }
}

impl PartialEq for BatchKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.alone == other.alone
            && self.form == other.form
            && self.inputs == other.inputs
            && self.parameters == other.parameters
            && self.requested_outputs == other.requested_outputs
    }
}

impl Eq for BatchKey {}

impl Hash for BatchKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Float64Array;

    use super::*;

    fn column(name: &str) -> Tensor {
        Tensor {
            name: name.to_owned(),
            datatype: DataType::Fp64,
            shape: vec![1],
            values: Arc::new(Float64Array::from(vec![1.0])),
            parameters: Parameters::new(),
        }
    }

    fn key(tensors: &[Tensor]) -> BatchKey {
        BatchKey::new("pd", &Parameters::new(), &[], tensors, true)
    }

    #[test]
    fn a_name_holding_separators_is_not_two_inputs() {
        let crafted = key(&[column("a:Float64:[]:{}|b")]);
        let honest = key(&[column("a"), column("b")]);
        assert_ne!(crafted, honest);
    }

    #[test]
    fn equal_requests_have_equal_keys() {
        assert_eq!(
            key(&[column("a"), column("b")]),
            key(&[column("a"), column("b")])
        );
        assert_ne!(
            key(&[column("a"), column("b")]),
            key(&[column("b"), column("a")])
        );
    }

    #[test]
    fn a_request_alone_matches_nobody() {
        let alone = BatchKey::new("np", &Parameters::new(), &[], &[column("a")], false);
        let again = BatchKey::new("np", &Parameters::new(), &[], &[column("a")], false);
        assert_ne!(alone, again);
        assert_eq!(alone, alone.clone());
    }

    #[test]
    fn doubles_compare_by_bits() {
        let with = |v: f64| {
            let params = Parameters::from([("p".to_owned(), ParamValue::Double(v))]);
            BatchKey::new("pd", &params, &[], &[column("a")], true)
        };
        assert_eq!(with(f64::NAN), with(f64::NAN));
        assert_ne!(with(0.0), with(-0.0));
    }
}
