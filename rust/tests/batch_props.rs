//! The batcher against random streams of requests: names holding separators, quotes, NUL,
//! unicode or nothing; every kind of datatype, rank and row count; parameters and requested
//! outputs; batches closing at random points while a stand-in model (it echoes its inputs)
//! runs on its own thread. Each request must get exactly one answer, built only from its own
//! inputs, and nothing may panic.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arrow_array::{ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int64Array};
use arrowsmith_native::batch::{BatchConfig, Batcher, Job};
use arrowsmith_native::encode::OutputTensor;
use arrowsmith_native::proto::ModelInferResponse;
use arrowsmith_native::{DataType, ParamValue, Parameters, Tensor};
use proptest::prelude::*;
use prost::Message;

/// Names a text key would have confused: separators of the old key, quotes, NUL, unicode.
/// `a`, `b` and a name spelling their key come up often, so colliding requests meet.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("a".to_owned()),
        3 => Just("b".to_owned()),
        3 => Just("a:Float64:[]:{}|b".to_owned()),
        1 => Just("a|b".to_owned()),
        1 => Just(String::new()),
        1 => Just("\0".to_owned()),
        1 => Just("\"q\"".to_owned()),
        1 => Just("é🦀".to_owned()),
        2 => "[ab|:\\[\\]{}\"\0é]{0,5}",
    ]
}

#[derive(Debug, Clone)]
struct InputPlan {
    name: String,
    datatype: DataType,
    /// Rows of this input; requests whose inputs disagree run alone.
    rows: usize,
    trailing: Vec<usize>,
    content_type: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct JobPlan {
    form: &'static str,
    inputs: Vec<InputPlan>,
    parameter: Option<ParamValue>,
    requested_outputs: Vec<String>,
}

fn input_plan(rows: usize) -> impl Strategy<Value = InputPlan> {
    (
        name(),
        prop_oneof![
            4 => Just(DataType::Fp64),
            1 => Just(DataType::Fp32),
            1 => Just(DataType::Int64),
            1 => Just(DataType::Bool),
            1 => Just(DataType::Bytes),
        ],
        prop_oneof![4 => Just(rows), 1 => 0usize..4],
        prop_oneof![2 => Just(vec![]), 1 => prop::collection::vec(1usize..3, 1..3)],
        prop_oneof![
            3 => Just(None),
            1 => prop::sample::select(vec!["np", "str", "a|b"]).prop_map(Some),
        ],
    )
        .prop_map(|(name, datatype, rows, trailing, content_type)| InputPlan {
            name,
            datatype,
            rows,
            trailing,
            content_type,
        })
}

fn job_plan() -> impl Strategy<Value = JobPlan> {
    (0usize..4)
        .prop_flat_map(|rows| {
            (
                prop_oneof![
                    3 => Just("pd"),
                    1 => prop::sample::select(vec!["columns", "tensors", "np", "dict"]),
                ],
                prop::collection::vec(input_plan(rows), 0..4),
                prop::option::weighted(
                    0.3,
                    prop_oneof![
                        Just(ParamValue::String("pd".to_owned())),
                        Just(ParamValue::String("a:Float64:[]:{}|b".to_owned())),
                        Just(ParamValue::Double(0.5)),
                        Just(ParamValue::Double(f64::NAN)),
                        Just(ParamValue::Int64(-1)),
                        Just(ParamValue::Bool(true)),
                    ],
                ),
                prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(name(), 1..2)],
            )
        })
        .prop_map(|(form, inputs, parameter, requested_outputs)| JobPlan {
            form,
            inputs,
            parameter,
            requested_outputs,
        })
}

/// Values unique to job `j` and input `i`, and their raw wire form as the response carries it.
fn values(plan: &InputPlan, j: usize, i: usize) -> (ArrayRef, Vec<u8>, Vec<usize>) {
    let mut shape = vec![plan.rows];
    shape.extend(&plan.trailing);
    let count: usize = shape.iter().product();
    let base = (j * 10 + i) * 1000;
    let mut raw = Vec::new();
    let array: ArrayRef = match plan.datatype {
        DataType::Fp64 => {
            let v: Vec<f64> = (0..count).map(|k| (base + k) as f64).collect();
            for x in &v {
                raw.extend(x.to_le_bytes());
            }
            Arc::new(Float64Array::from(v))
        }
        DataType::Fp32 => {
            let v: Vec<f32> = (0..count).map(|k| (base + k) as f32).collect();
            for x in &v {
                raw.extend(x.to_le_bytes());
            }
            Arc::new(Float32Array::from(v))
        }
        DataType::Int64 => {
            let v: Vec<i64> = (0..count).map(|k| (base + k) as i64).collect();
            for x in &v {
                raw.extend(x.to_le_bytes());
            }
            Arc::new(Int64Array::from(v))
        }
        DataType::Bool => {
            let v: Vec<bool> = (0..count).map(|k| (j + i + k).is_multiple_of(3)).collect();
            raw.extend(v.iter().map(|&b| u8::from(b)));
            Arc::new(BooleanArray::from(v))
        }
        _ => {
            let v: Vec<String> = (0..count).map(|k| format!("{j}/{i}/{k}")).collect();
            for s in &v {
                raw.extend((s.len() as u32).to_le_bytes());
                raw.extend(s.as_bytes());
            }
            Arc::new(BinaryArray::from_iter_values(
                v.iter().map(String::as_bytes),
            ))
        }
    };
    (array, raw, shape)
}

/// What a request's answer must hold: per input, its name, shape and raw bytes.
type Expected = Vec<(String, Vec<i64>, Vec<u8>)>;

fn job(plan: &JobPlan, j: usize) -> (Arc<Job>, Expected) {
    let mut tensors = Vec::new();
    let mut expected = Vec::new();
    for (i, input) in plan.inputs.iter().enumerate() {
        let (array, raw, shape) = values(input, j, i);
        let parameters: Parameters = input
            .content_type
            .map(|c| ("content_type".to_owned(), ParamValue::String(c.to_owned())))
            .into_iter()
            .collect();
        expected.push((
            input.name.clone(),
            shape.iter().map(|&d| d as i64).collect(),
            raw,
        ));
        tensors.push(Tensor {
            name: input.name.clone(),
            datatype: input.datatype,
            shape,
            values: array,
            parameters,
        });
    }
    let parameters: Parameters = plan
        .parameter
        .clone()
        .map(|p| ("p".to_owned(), p))
        .into_iter()
        .collect();
    let job = Job::new(
        format!("job-{j}"),
        plan.form.to_owned(),
        parameters,
        plan.requested_outputs.clone(),
        tensors,
        None,
    );
    (Arc::new(job), expected)
}

/// The stand-in model: each batch answered with its own inputs, as outputs of the same names.
fn echo_runner(batcher: Arc<Batcher>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut taken = 0;
        while let Some(batch) = batcher.next_batch() {
            taken += 1;
            match batch.inputs() {
                Ok(inputs) => {
                    let outputs = inputs
                        .into_iter()
                        .map(|t| OutputTensor {
                            name: t.name,
                            shape: t.shape.iter().map(|&d| d as i64).collect(),
                            values: t.values,
                        })
                        .collect();
                    batch.complete(outputs, &Parameters::new());
                }
                Err(error) => batch.fail(&error),
            }
        }
        taken
    })
}

fn check_answer(job: &Job, expected: &Expected) -> Result<(), TestCaseError> {
    let answer = job.try_answer();
    let Some(answer) = answer else {
        return Err(TestCaseError::fail(format!("{} has no answer", job.id)));
    };
    let encoded = answer.map_err(|e| TestCaseError::fail(format!("{}: {e}", job.id)))?;
    let response = ModelInferResponse::decode(encoded.to_vec().as_slice())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&response.id, &job.id);
    prop_assert_eq!(response.outputs.len(), expected.len());
    for ((output, raw), (name, shape, bytes)) in response
        .outputs
        .iter()
        .zip(&response.raw_output_contents)
        .zip(expected)
    {
        prop_assert_eq!(&output.name, name);
        prop_assert_eq!(&output.shape, shape);
        prop_assert_eq!(raw.as_ref(), bytes.as_slice(), "{} got other rows", job.id);
    }
    // A settled job answers once: the answer has been taken.
    prop_assert!(job.try_answer().is_some_and(|a| a.is_err()));
    Ok(())
}

/// A request whose first input's name spells `plan`'s first two inputs as a text key would
/// (`name:type:[dims]:{params}|name`), taking the second input's type, dimensions and
/// parameters: to a text key the two requests look the same.
fn spelled(plan: &JobPlan) -> Option<JobPlan> {
    let [first, second, rest @ ..] = plan.inputs.as_slice() else {
        return None;
    };
    let arrow = first.datatype.arrow_type();
    let dims: Vec<String> = first.trailing.iter().map(ToString::to_string).collect();
    let params = first.content_type.map_or_else(
        || "{}".to_owned(),
        |c| format!("{{\"content_type\": String(\"{c}\")}}"),
    );
    let merged = InputPlan {
        name: format!(
            "{}:{arrow}:[{}]:{params}|{}",
            first.name,
            dims.join(", "),
            second.name
        ),
        ..second.clone()
    };
    let mut inputs = vec![merged];
    inputs.extend(rest.iter().cloned());
    Some(JobPlan {
        inputs,
        ..plan.clone()
    })
}

/// A few kinds of request, each with its spelled twin where it has one: the stream draws
/// from them, so requests that must not meet arrive often.
fn templates() -> impl Strategy<Value = Vec<JobPlan>> {
    prop::collection::vec(job_plan(), 1..4).prop_map(|plans| {
        let twins: Vec<JobPlan> = plans.iter().filter_map(spelled).collect();
        plans.into_iter().chain(twins).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_request_gets_its_own_answer(
        templates in templates(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..24),
        max_batch_rows in 1usize..12,
        delay_us in prop_oneof![Just(0u64), 1u64..300],
        pauses in prop::collection::vec(any::<bool>(), 24),
    ) {
        let config = BatchConfig {
            max_batch_rows,
            max_delay: Duration::from_micros(delay_us),
            max_queue: 64,
        };
        let batcher = Arc::new(Batcher::new(config, "echo".into(), "1".into()));
        let runner = echo_runner(Arc::clone(&batcher));
        let mut jobs = Vec::new();
        let plans = picks.iter().map(|pick| pick.get(&templates));
        for (j, plan) in plans.enumerate() {
            let (job, expected) = job(plan, j);
            batcher.submit(&job).map_err(|e| TestCaseError::fail(e.to_string()))?;
            jobs.push((job, expected));
            if pauses.get(j).copied().unwrap_or(false) {
                thread::sleep(Duration::from_micros(50));
            }
        }
        batcher.close();
        let batches = runner.join().map_err(|_| TestCaseError::fail("the runner panicked"))?;
        prop_assert!(batches >= 1 && batches <= jobs.len());
        for (job, expected) in &jobs {
            check_answer(job, expected)?;
        }
    }
}

/// The case the text key got wrong, in both arrival orders and many rounds: one request
/// with an input named like a whole other request's key, and one with inputs `a` and `b`.
#[test]
fn a_crafted_name_never_shares_a_batch() {
    let crafted = JobPlan {
        form: "pd",
        inputs: vec![plan_input("a:Float64:[]:{}|b")],
        parameter: Some(ParamValue::String("pd".to_owned())),
        requested_outputs: vec![],
    };
    let honest = JobPlan {
        inputs: vec![plan_input("a"), plan_input("b")],
        ..crafted.clone()
    };
    for round in 0..200 {
        let config = BatchConfig {
            max_batch_rows: 64,
            max_delay: Duration::from_millis(1),
            max_queue: 64,
        };
        let batcher = Arc::new(Batcher::new(config, "echo".into(), "1".into()));
        let order = if round % 2 == 0 {
            [&crafted, &honest]
        } else {
            [&honest, &crafted]
        };
        let jobs: Vec<_> = order
            .iter()
            .enumerate()
            .map(|(j, plan)| job(plan, round * 2 + j))
            .collect();
        for (job, _) in &jobs {
            batcher.submit(job).unwrap();
        }
        batcher.close();
        let runner = echo_runner(Arc::clone(&batcher));
        assert_eq!(
            runner.join().unwrap(),
            2,
            "round {round}: they shared a batch"
        );
        for (job, expected) in &jobs {
            check_answer(job, expected).unwrap();
        }
    }
}

fn plan_input(name: &str) -> InputPlan {
    InputPlan {
        name: name.to_owned(),
        datatype: DataType::Fp64,
        rows: 1,
        trailing: vec![],
        content_type: None,
    }
}
