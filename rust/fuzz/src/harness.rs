//! What each fuzz target does with one input, and the properties it checks. Shared by the
//! fuzz targets (`fuzz_targets/`) and by the regression tests that replay the inputs the
//! fuzzers found (`rust/tests/fuzz_regressions.rs`), so a crash replays through exactly the
//! code that found it. A panic anywhere here is a bug; refusals (`Err`) are fine.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, ArrayRef};
use arrowsmith_native::admit::job_for;
use arrowsmith_native::batch::{Batch, BatchConfig, Batcher, Job};
use arrowsmith_native::encode::{encode_response, InferResponse, OutputTensor};
use arrowsmith_native::front::deadline::{self, Deadline};
use arrowsmith_native::front::metered::MessageMeter;
use arrowsmith_native::proto::ModelInferResponse;
use arrowsmith_native::signature::{ColumnSpec, ColumnType, Signature, TensorSpec, TensorType};
use arrowsmith_native::{decode_request, DataType, Error, Parameters, Tensor};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use prost::Message as _;

/// The batcher's model name and version in the responses the batch-assembly case checks.
const MODEL: &str = "m";
const VERSION: &str = "1";

fn column(name: Option<&str>, ty: &str, required: bool) -> ColumnSpec {
    ColumnSpec {
        name: name.map(str::to_owned),
        ty: ColumnType::parse(ty),
        required,
    }
}

fn spec(name: Option<&str>, ty: TensorType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.map(str::to_owned),
        ty,
        shape: shape.to_vec(),
    }
}

/// The signatures a decoded request is admitted against: named and unnamed columns of every
/// MLflow type (one of them optional, one without a V2 mapping), named and unnamed tensors
/// (fixed, text, bytes and ragged object specs). Short names, so random bytes hit them.
pub fn signatures() -> Vec<Signature> {
    vec![
        Signature::Columns(vec![
            column(Some("a"), "double", true),
            column(Some("b"), "long", true),
            column(Some("c"), "string", false),
            column(Some("d"), "boolean", false),
            column(Some("e"), "integer", false),
            column(Some("f"), "float", false),
            column(Some("g"), "binary", false),
            column(Some("h"), "datetime", false),
        ]),
        Signature::Columns(vec![
            column(None, "double", true),
            column(None, "float", true),
        ]),
        Signature::Columns(vec![
            column(Some("a"), "double", true),
            column(Some("z"), "array", false),
        ]),
        Signature::Tensors(vec![
            spec(Some("x"), TensorType::Fixed(DataType::Fp32), &[-1, 3]),
            spec(Some("s"), TensorType::Str, &[-1]),
            spec(Some("o"), TensorType::Object, &[-1, -1]),
        ]),
        Signature::Tensors(vec![
            spec(None, TensorType::Fixed(DataType::Uint8), &[-1, 4]),
            spec(None, TensorType::Bytes, &[-1]),
        ]),
        Signature::Tensors(vec![spec(Some("r"), TensorType::Object, &[-1])]),
    ]
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

fn shape_i64(shape: &[usize]) -> Vec<i64> {
    shape
        .iter()
        .map(|&d| i64::try_from(d).expect("a decoded dimension fits i64"))
        .collect()
}

/// Every tensor holds exactly the elements its shape says: what decoding and batching
/// promise to everything downstream.
fn assert_filled(tensors: &[Tensor], what: &str) {
    for t in tensors {
        assert_eq!(
            Some(t.values.len()),
            elements(&t.shape),
            "{what}: tensor '{}' of shape {:?} holds {} values",
            t.name,
            t.shape,
            t.values.len()
        );
        assert_eq!(
            DataType::from_arrow(t.values.data_type()),
            Some(t.datatype),
            "{what}: tensor '{}' is {:?} but holds {} values",
            t.name,
            t.datatype,
            t.values.data_type()
        );
    }
}

/// An echo model's answer to these inputs: each one back, as it came.
fn echo_all(inputs: &[Tensor]) -> Vec<OutputTensor> {
    inputs
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            shape: shape_i64(&t.shape),
            values: Arc::clone(&t.values),
        })
        .collect()
}

/// A job's answer, serialized and parsed back as a client would.
fn parsed(encoded: &arrowsmith_native::encode::EncodedResponse) -> ModelInferResponse {
    let len = encoded.encoded_len();
    let mut bytes = Vec::with_capacity(len);
    encoded.write_to(&mut bytes);
    assert_eq!(
        bytes.len(),
        len,
        "encoded_len() disagrees with what write_to wrote"
    );
    ModelInferResponse::decode(bytes.as_slice()).expect("a response parses back")
}

/// `decode_request`: the bytes as a ModelInfer message; when they decode, the request is
/// admitted against every signature (and none), and each job is built into its batch, handed
/// to an echo model and answered.
pub fn decode_request_case(data: &[u8]) {
    let Ok(request) = decode_request(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_filled(&request.inputs, "decoded request");
    let signatures = signatures();
    let choices = signatures.iter().map(Some).chain([None]);
    for signature in choices {
        let Ok(job) = job_for(request.clone(), signature, None) else {
            continue;
        };
        assert_filled(&job.tensors, "admitted job");
        let job = Arc::new(job);
        let batch = Batch::of(Arc::clone(&job));
        let inputs = batch
            .inputs()
            .expect("a batch of one job builds its inputs");
        assert_filled(&inputs, "batch of one");
        if let Some(block) = batch
            .column_block()
            .expect("a batch of one job builds its block")
        {
            assert_eq!(
                block.len(),
                inputs.iter().map(|t| t.values.len()).sum::<usize>()
            );
        }
        batch.complete(echo_all(&inputs), &Parameters::new());
        let answer = job.try_answer().expect("a completed job has its answer");
        if let Ok(encoded) = answer {
            let response = parsed(&encoded);
            assert_eq!(response.outputs.len(), inputs.len());
            assert_eq!(response.raw_output_contents.len(), inputs.len());
        }
    }
}

/// `flight_exchange`: the bytes as the messages of a DoExchange call (length-delimited
/// `FlightData`), decoded as the Flight service decodes them; each record batch becomes a
/// request's tensors, admitted against every signature, answered by an echo model, and the
/// answer turned back into a record batch of the batch's rows. The record batches decoded.
pub fn flight_exchange_case(data: &[u8]) -> usize {
    use std::task::{Context, Poll, Waker};

    use arrow_flight::FlightData;
    use futures::StreamExt as _;

    let mut rest = data;
    let mut messages = Vec::new();
    while !rest.is_empty() {
        match FlightData::decode_length_delimited(&mut rest) {
            Ok(message) => messages.push(Ok(message)),
            Err(_) => break,
        }
    }
    // As the Flight service reads them.
    let batches = arrowsmith_native::flight_data::record_batches(futures::stream::iter(messages));
    let mut batches = std::pin::pin!(batches);
    // Every message is already here: the decoder is never pending.
    let mut cx = Context::from_waker(Waker::noop());
    let signatures = signatures();
    let mut decoded = 0;
    while let Poll::Ready(Some(Ok(batch))) = batches.poll_next_unpin(&mut cx) {
        decoded += 1;
        let Ok(inputs) = arrowsmith_native::table::tensors_of(&batch) else {
            continue;
        };
        assert_filled(&inputs, "record batch");
        let request = arrowsmith_native::InferRequest {
            model_name: MODEL.to_owned(),
            model_version: String::new(),
            id: String::new(),
            parameters: Parameters::new(),
            inputs,
            requested_outputs: Vec::new(),
            output_regions: Vec::new(),
        };
        for signature in signatures.iter().map(Some).chain([None]) {
            let Ok(job) = job_for(request.clone(), signature, None) else {
                continue;
            };
            let job = Arc::new(job);
            let rows = job.rows;
            let batch_of_one = Batch::of(Arc::clone(&job));
            let Ok(inputs) = batch_of_one.inputs() else {
                continue;
            };
            batch_of_one.complete(echo_all(&inputs), &Parameters::new());
            let Some(Ok(answer)) = job.try_answer() else {
                continue;
            };
            let outputs = answer.outputs().expect("an encoded answer has its outputs");
            if let Some(rows) = rows {
                if let Ok(answered) = arrowsmith_native::table::batch_of(outputs, rows, &[]) {
                    assert_eq!(answered.num_rows(), rows);
                }
            }
        }
    }
    decoded
}

/// `grpc_wire`: the bytes as a unary request body (the 5-byte prefix and one message), and as
/// the value of a `grpc-timeout` header.
pub fn grpc_wire_case(data: &[u8]) {
    // As a request body: the lengths the front's meter reports are those of a straight walk
    // of the prefixes, however the body is cut into chunks.
    let expected = declared_lengths(data);
    assert_eq!(metered_lengths(data, data.len().max(1)), expected);
    let piece = data.first().map_or(1, |&b| usize::from(b % 7) + 1);
    assert_eq!(
        metered_lengths(data, piece),
        expected,
        "cut every {piece} bytes"
    );
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value);
        let parsed = deadline::timeout(&headers);
        // The front adds it to the request's arrival time, never overflowing.
        let _ = Deadline::of(&headers, Instant::now());
        if let Some(expected) = strict_timeout(data) {
            assert_eq!(
                parsed,
                Some(expected),
                "a valid grpc-timeout is read as it says"
            );
        }
    }
}

/// Each message's declared length, walking the body's 5-byte prefixes one after another;
/// a message is counted once its prefix is whole, even if its body is cut short.
fn declared_lengths(body: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut rest = body;
    while let Some((prefix, after)) = rest.split_first_chunk::<5>() {
        let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        lengths.push(declared);
        rest = after.get(declared..).unwrap_or(&[]);
    }
    lengths
}

/// The lengths `MessageMeter` reports when fed `body` in chunks of `piece` bytes.
fn metered_lengths(body: &[u8], piece: usize) -> Vec<usize> {
    let mut meter = MessageMeter::default();
    let mut lengths = Vec::new();
    for chunk in body.chunks(piece) {
        let fed: Result<(), ()> = meter.feed(chunk, |declared| {
            lengths.push(declared);
            Ok(())
        });
        assert!(fed.is_ok());
    }
    lengths
}

/// gRPC's grammar for `grpc-timeout`: 1 to 8 ASCII digits, then one of `HMSmun`.
fn strict_timeout(text: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (&unit, digits) = text.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// One request of a batch-assembly case, as `Job::new` takes it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: String,
    pub form: String,
    pub parameters: Parameters,
    pub requested_outputs: Vec<String>,
    pub tensors: Vec<Tensor>,
    /// Its deadline has passed by the time the runner looks.
    pub expired: bool,
    /// Its client leaves before the runner looks.
    pub abandoned: bool,
}

/// How the model answers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Each input back (the batch's first input as the output).
    Echo,
    /// It raises on the batch, and the runner retries request by request, which echo.
    RetrySingles,
    /// It raises.
    Fail,
    /// One row too many: no request may get any of it.
    WrongRows,
}

/// A sequence of jobs for one batcher, and how its model answers each batch in turn.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub max_batch_rows: usize,
    pub max_queue: usize,
    pub jobs: Vec<JobSpec>,
    /// The answer to the n-th batch is `answers[n % len]` (Echo when empty).
    pub answers: Vec<Answer>,
}

/// An echo model's output for a batch: its first input, with its shape.
fn echo_first(batch: &Batch) -> Result<Vec<OutputTensor>, Error> {
    let inputs = batch.inputs()?;
    assert_filled(&inputs, "batch inputs");
    let rows: usize = batch.rows().iter().sum();
    if batch.len() > 1 {
        for t in &inputs {
            assert_eq!(
                t.shape.first(),
                Some(&rows),
                "a batched input has the batch's rows"
            );
        }
    }
    if let Some(block) = batch.column_block()? {
        assert_eq!(
            block.len(),
            inputs.iter().map(|t| t.values.len()).sum::<usize>()
        );
    }
    Ok(echo_all(&inputs[..inputs.len().min(1)]))
}

/// Answers one batch as `answer` says; returns how many of its jobs should now hold an OK
/// answer and how many an error.
fn run_batch(batch: &Batch, answer: Answer) -> (usize, usize) {
    match answer {
        Answer::Echo => match echo_first(batch) {
            Ok(outputs) => {
                batch.complete(outputs, &Parameters::new());
                (batch.len(), 0)
            }
            Err(error) => {
                batch.fail(&error);
                (0, batch.len())
            }
        },
        Answer::RetrySingles => batch
            .singles()
            .iter()
            .map(|single| run_batch(single, Answer::Echo))
            .fold((0, 0), |(ok, err), (o, e)| (ok + o, err + e)),
        Answer::Fail => {
            batch.fail(&Error::Model("the model raised".into()));
            (0, batch.len())
        }
        // A batch of one is answered as it is: the rows only matter to a split.
        Answer::WrongRows if batch.len() == 1 => run_batch(batch, Answer::Echo),
        Answer::WrongRows => match echo_first(batch) {
            Ok(mut outputs) => {
                for output in &mut outputs {
                    match output.shape.first_mut() {
                        Some(rows) => *rows += 1,
                        None => output.shape.push(2),
                    }
                }
                // Without outputs there is nothing to split, so nothing can be wrong.
                let ok = if outputs.is_empty() { batch.len() } else { 0 };
                batch.complete(outputs, &Parameters::new());
                (ok, batch.len() - ok)
            }
            Err(error) => {
                batch.fail(&error);
                (0, batch.len())
            }
        },
    }
}

/// What a job alone answered by an echo model gets: its first input, back.
fn expected_response(job: &Job) -> ModelInferResponse {
    let outputs = echo_all(&job.tensors[..job.tensors.len().min(1)]);
    let bytes = encode_response(InferResponse {
        model_name: MODEL.into(),
        model_version: VERSION.into(),
        id: job.id.clone(),
        parameters: Parameters::new(),
        outputs,
    })
    .expect("a job's own first input encodes");
    ModelInferResponse::decode(bytes.as_slice()).expect("a response parses back")
}

/// Submits the jobs, drains the batcher, answers every batch, and checks that every job got
/// exactly one answer and that every OK answer holds that job's own first input.
pub fn batch_assembly_case(scenario: &Scenario) {
    let batcher = Batcher::new(
        BatchConfig {
            max_batch_rows: scenario.max_batch_rows,
            max_delay: std::time::Duration::ZERO,
            max_queue: scenario.max_queue,
        },
        MODEL.into(),
        VERSION.into(),
    );
    let mut queued = Vec::new();
    for spec in &scenario.jobs {
        let deadline = spec.expired.then(Instant::now);
        let job = Arc::new(Job::new(
            spec.id.clone(),
            spec.form.clone(),
            spec.parameters.clone(),
            spec.requested_outputs.clone(),
            spec.tensors.clone(),
            deadline,
        ));
        match batcher.submit(&job) {
            Ok(()) => {
                if spec.abandoned {
                    job.abandon();
                }
                queued.push((job, spec));
            }
            Err(_) => assert!(job.try_answer().is_none(), "a refused job has no answer"),
        }
    }
    batcher.close();
    let live = queued
        .iter()
        .filter(|(_, spec)| !spec.abandoned && !spec.expired)
        .count();
    let (mut in_batches, mut ok, mut failed, mut n) = (0, 0, 0, 0);
    while let Some(batch) = batcher.next_batch() {
        assert!(!batch.is_empty());
        let rows: usize = batch.rows().iter().sum();
        assert!(
            batch.len() == 1 || rows <= scenario.max_batch_rows,
            "a batch of {} requests holds {rows} rows, over the limit of {}",
            batch.len(),
            scenario.max_batch_rows
        );
        in_batches += batch.len();
        let answer = if scenario.answers.is_empty() {
            Answer::Echo
        } else {
            scenario.answers[n % scenario.answers.len()]
        };
        n += 1;
        let (o, e) = run_batch(&batch, answer);
        ok += o;
        failed += e;
    }
    assert_eq!(in_batches, live, "every live job runs in exactly one batch");
    let (mut seen_ok, mut seen_failed) = (0, 0);
    for (job, spec) in &queued {
        let answer = job.try_answer().expect("every queued job is answered");
        match answer {
            Ok(encoded) => {
                assert!(
                    !spec.abandoned && !spec.expired,
                    "job '{}' answered OK",
                    spec.id
                );
                seen_ok += 1;
                let got = parsed(&encoded);
                let want = expected_response(job);
                assert_eq!(
                    got, want,
                    "job '{}' got another answer than its own input back",
                    spec.id
                );
            }
            Err(Error::Cancelled(_)) if spec.abandoned => {}
            Err(Error::DeadlineExceeded(_)) if spec.expired => {}
            Err(error) => {
                assert!(
                    !spec.abandoned && !spec.expired,
                    "job '{}': {error:?}",
                    spec.id
                );
                seen_failed += 1;
            }
        }
    }
    assert_eq!((seen_ok, seen_failed), (ok, failed), "answers by kind");
}

/// A tensor of `values` with `shape` (values must hold the shape's elements).
pub fn tensor(name: &str, shape: &[usize], values: ArrayRef) -> Tensor {
    let datatype = DataType::from_arrow(values.data_type()).expect("a V2 datatype");
    Tensor {
        name: name.to_owned(),
        datatype,
        shape: shape.to_vec(),
        values,
        parameters: Parameters::new(),
    }
}
