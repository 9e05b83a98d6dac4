//! A random mix of compatible and incompatible jobs through one batcher: names full of the
//! characters a text key could confuse, every datatype, ranks 0 to 3, zero rows, parameters,
//! requested outputs, the five forms; then every batch answered (echo, retry one by one,
//! failure, wrong row count) and every job's answer checked against its own input.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{ArrayRef, BinaryArray, BooleanArray, PrimitiveArray, StringArray};
use arrowsmith_fuzz::harness::{batch_assembly_case, Answer, JobSpec, Scenario};
use arrowsmith_native::{DataType, ParamValue, Parameters, Tensor};
use libfuzzer_sys::fuzz_target;

/// Names a text key could confuse: its separators, quotes, NUL, unicode, empty, and names
/// that spell out another tensor's part of a key.
const NAMES: &[&str] = &[
    "a",
    "b",
    "x",
    "",
    "|",
    ":",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    "\0",
    "é",
    "名",
    "a|b",
    "a:b",
    "[1]",
    "{}",
    "a:Int64:[]:{}|b",
    "a:Int64:[1]:{}|b",
    "a:Float32:[]:{}|b",
    "a:Binary:[]:{}|b",
    "Int64",
    "{}|[]",
    "|{}|[\"a\"]",
];

const FORMS: &[&str] = &["columns", "tensors", "np", "pd", "dict"];

#[derive(Arbitrary, Debug)]
enum Name {
    Pick(u8),
    Text(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Pick(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Name::Text(text) => text.chars().take(24).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Form {
    Pick(u8),
    Text(Name),
}

#[derive(Arbitrary, Debug)]
enum Param {
    Bool(bool),
    Int64(i64),
    String(Name),
    Double(f64),
    Uint64(u64),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    /// BYTES as the decoder holds them (Arrow Binary).
    Bytes,
    /// BYTES as a string column or `str` tensor holds them once coerced (Arrow Utf8).
    Text,
}

#[derive(Arbitrary, Debug)]
struct TensorPlan {
    name: Name,
    kind: Kind,
    /// 0 to 3; rank 0 has no rows, so its job runs alone.
    rank: u8,
    /// Rows when the tensor does not take its job's.
    own_rows: Option<u8>,
    inner: [u8; 2],
    seed: u64,
    parameters: Vec<(Name, Param)>,
}

#[derive(Arbitrary, Debug)]
struct JobPlan {
    form: Form,
    rows: u8,
    /// Rows of 2^28 (valid on the wire when another dimension is 0).
    huge_rows: bool,
    parameters: Vec<(Name, Param)>,
    requested_outputs: Vec<Name>,
    tensors: Vec<TensorPlan>,
    expired: bool,
    abandoned: bool,
}

#[derive(Arbitrary, Debug)]
enum AnswerPlan {
    Echo,
    RetrySingles,
    Fail,
    WrongRows,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    max_batch_rows: u8,
    max_queue: u8,
    jobs: Vec<JobPlan>,
    answers: Vec<AnswerPlan>,
}

/// A small deterministic value stream (xorshift), so a tensor's values cost 8 input bytes.
struct Values(u64);

impl Values {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn float(&mut self) -> f64 {
        const SPECIAL: [f64; 6] = [0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0];
        let x = self.next();
        if x % 4 == 0 {
            SPECIAL[(x >> 8) as usize % SPECIAL.len()]
        } else {
            (x as i64 as f64) / 1e9
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let x = self.next();
        let len = (x % 5) as usize;
        x.to_le_bytes()[..len].to_vec()
    }

    fn text(&mut self) -> String {
        let x = self.next();
        let len = (x % 4) as usize;
        ["a", "é", "|", "\0", "名"]
            .iter()
            .cycle()
            .skip((x >> 8) as usize % 5)
            .take(len)
            .copied()
            .collect()
    }
}

fn primitive<T: arrow_array::ArrowPrimitiveType>(
    n: usize,
    values: &mut Values,
    f: impl Fn(&mut Values) -> T::Native,
) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::from_iter_values(
        (0..n).map(|_| f(values)),
    ))
}

fn values(kind: &Kind, n: usize, seed: u64) -> (DataType, ArrayRef) {
    let mut v = Values(seed);
    let v = &mut v;
    match kind {
        Kind::Bool => (
            DataType::Bool,
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|_| Some(v.next() % 2 == 1)),
            )),
        ),
        Kind::Uint8 => (
            DataType::Uint8,
            primitive::<UInt8Type>(n, v, |v| v.next() as u8),
        ),
        Kind::Uint16 => (
            DataType::Uint16,
            primitive::<UInt16Type>(n, v, |v| v.next() as u16),
        ),
        Kind::Uint32 => (
            DataType::Uint32,
            primitive::<UInt32Type>(n, v, |v| v.next() as u32),
        ),
        Kind::Uint64 => (
            DataType::Uint64,
            primitive::<UInt64Type>(n, v, Values::next),
        ),
        Kind::Int8 => (
            DataType::Int8,
            primitive::<Int8Type>(n, v, |v| v.next() as i8),
        ),
        Kind::Int16 => (
            DataType::Int16,
            primitive::<Int16Type>(n, v, |v| v.next() as i16),
        ),
        Kind::Int32 => (
            DataType::Int32,
            primitive::<Int32Type>(n, v, |v| v.next() as i32),
        ),
        Kind::Int64 => (
            DataType::Int64,
            primitive::<Int64Type>(n, v, |v| v.next() as i64),
        ),
        Kind::Fp16 => (
            DataType::Fp16,
            primitive::<Float16Type>(n, v, |v| half_of(v.float())),
        ),
        Kind::Fp32 => (
            DataType::Fp32,
            primitive::<Float32Type>(n, v, |v| v.float() as f32),
        ),
        Kind::Fp64 => (
            DataType::Fp64,
            primitive::<Float64Type>(n, v, Values::float),
        ),
        Kind::Bytes => {
            let items: Vec<Vec<u8>> = (0..n).map(|_| v.bytes()).collect();
            (
                DataType::Bytes,
                Arc::new(BinaryArray::from_iter_values(items.iter())),
            )
        }
        Kind::Text => {
            let items: Vec<String> = (0..n).map(|_| v.text()).collect();
            (
                DataType::Bytes,
                Arc::new(StringArray::from_iter_values(items.iter())),
            )
        }
    }
}

/// The nearest f16 (Arrow's FP16 native type).
fn half_of(x: f64) -> <Float16Type as arrow_array::ArrowPrimitiveType>::Native {
    <Float16Type as arrow_array::ArrowPrimitiveType>::Native::from_f64(x)
}

fn parameters(plan: &[(Name, Param)]) -> Parameters {
    plan.iter()
        .take(3)
        .map(|(name, p)| {
            let value = match p {
                Param::Bool(v) => ParamValue::Bool(*v),
                Param::Int64(v) => ParamValue::Int64(*v),
                Param::String(v) => ParamValue::String(v.text()),
                Param::Double(v) => ParamValue::Double(*v),
                Param::Uint64(v) => ParamValue::Uint64(*v),
            };
            (name.text(), value)
        })
        .collect()
}

/// Rows of nothing as big as a request of 256 MiB may describe (decode bounds the nonzero
/// dimensions of an empty tensor by the message size).
const HUGE_ROWS: usize = 1 << 28;

fn tensor(plan: &TensorPlan, job_rows: usize) -> Tensor {
    let rank = usize::from(plan.rank % 4);
    let rows = plan.own_rows.map_or(job_rows, |r| usize::from(r % 5));
    let mut shape = Vec::with_capacity(rank);
    if rank > 0 {
        shape.push(rows);
    }
    for &d in plan.inner.iter().take(rank.saturating_sub(1)) {
        shape.push(usize::from(d % 4));
    }
    let mut n = 1usize;
    for &d in &shape {
        n = n.saturating_mul(d);
    }
    if rows == HUGE_ROWS && rank > 0 && n != 0 {
        // 2^62 rows only when the tensor holds no elements.
        if rank == 1 {
            shape.push(0);
        } else {
            shape[1] = 0;
        }
        n = 0;
    }
    let (datatype, values) = values(&plan.kind, n, plan.seed);
    Tensor {
        name: plan.name.text(),
        datatype,
        shape,
        values,
        parameters: parameters(&plan.parameters),
    }
}

fn job(index: usize, plan: &JobPlan) -> JobSpec {
    let rows = if plan.huge_rows {
        HUGE_ROWS
    } else {
        usize::from(plan.rows % 5)
    };
    let form = match &plan.form {
        Form::Pick(i) => FORMS[usize::from(*i) % FORMS.len()].to_owned(),
        Form::Text(name) => name.text(),
    };
    JobSpec {
        id: format!("job-{index}"),
        form,
        parameters: parameters(&plan.parameters),
        requested_outputs: plan
            .requested_outputs
            .iter()
            .take(3)
            .map(Name::text)
            .collect(),
        tensors: plan
            .tensors
            .iter()
            .take(4)
            .map(|t| tensor(t, rows))
            .collect(),
        expired: plan.expired,
        abandoned: plan.abandoned,
    }
}

fuzz_target!(|plan: Plan| {
    let scenario = Scenario {
        max_batch_rows: usize::from(plan.max_batch_rows % 20),
        max_queue: usize::from(plan.max_queue % 24),
        jobs: plan
            .jobs
            .iter()
            .take(16)
            .enumerate()
            .map(|(i, j)| job(i, j))
            .collect(),
        answers: plan
            .answers
            .iter()
            .take(8)
            .map(|a| match a {
                AnswerPlan::Echo => Answer::Echo,
                AnswerPlan::RetrySingles => Answer::RetrySingles,
                AnswerPlan::Fail => Answer::Fail,
                AnswerPlan::WrongRows => Answer::WrongRows,
            })
            .collect(),
    };
    batch_assembly_case(&scenario);
});
