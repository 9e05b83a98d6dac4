//! What the fuzz targets (rust/fuzz, `make fuzz`) found, kept as tests: each input replays
//! through the same harness the fuzzer ran (`rust/fuzz/src/harness.rs`), so a fixed bug that
//! comes back fails here. The committed seed corpora replay too.

#[allow(dead_code)]
#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, Int8Array};
use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::ModelInferRequest;
use arrowsmith_native::{decode_request, Parameters};
use bytes::Bytes;
use harness::{batch_assembly_case, tensor, Answer, JobSpec, Scenario};
use prost::Message;

fn files(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("a readable input");
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn seed_corpora_and_crash_inputs_replay() {
    let mut replayed = 0;
    for dir in [
        "fuzz/corpus/decode_request",
        "tests/data/fuzz/decode_request",
    ] {
        for (path, bytes) in files(dir) {
            println!("{}", path.display());
            harness::decode_request_case(&bytes);
            replayed += 1;
        }
    }
    for dir in ["fuzz/corpus/grpc_wire", "tests/data/fuzz/grpc_wire"] {
        for (path, bytes) in files(dir) {
            println!("{}", path.display());
            harness::grpc_wire_case(&bytes);
            replayed += 1;
        }
    }
    for dir in [
        "fuzz/corpus/flight_exchange",
        "tests/data/fuzz/flight_exchange",
    ] {
        for (path, bytes) in files(dir) {
            println!("{}", path.display());
            let decoded = harness::flight_exchange_case(&bytes);
            if dir.starts_with("fuzz/corpus") {
                assert!(decoded > 0, "{} decodes to no record batch", path.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed >= 10, "the seed corpora are where they were");
}

fn job(id: &str, tensors: Vec<arrowsmith_native::Tensor>) -> JobSpec {
    JobSpec {
        id: id.to_owned(),
        form: "np".to_owned(),
        parameters: Parameters::new(),
        requested_outputs: Vec::new(),
        tensors,
        expired: false,
        abandoned: false,
    }
}

fn int64(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

/// batch_assembly's first target: with the batch key as text (`|name:type:[dims]:{params}`
/// per input), one input named `a:Int64:[]:{}|b` spelled the same key as two inputs `a` and
/// `b`, so the two requests shared a batch: building it indexed the second input of the
/// request that has one (a panic), or, in the other order, handed one request's rows to
/// the other. The typed batch key keeps them apart.
#[test]
fn a_name_holding_key_separators_does_not_join_another_batch() {
    for order in [[0, 1], [1, 0]] {
        let jobs = [
            job(
                "one-input",
                vec![tensor("a:Int64:[]:{}|b", &[1], int64(&[7]))],
            ),
            job(
                "two-inputs",
                vec![
                    tensor("a", &[1], int64(&[1])),
                    tensor("b", &[1], int64(&[2])),
                ],
            ),
        ];
        for answer in [Answer::Echo, Answer::RetrySingles, Answer::WrongRows] {
            batch_assembly_case(&Scenario {
                max_batch_rows: 16,
                max_queue: 8,
                jobs: order.iter().map(|&i| jobs[i].clone()).collect(),
                answers: vec![answer],
            });
        }
    }
}

/// batch_assembly: a request whose only tensor has rows of nothing with huge dimensions
/// (`[2^62, 2, 0]`, INT8) could not be answered: the response's element count overflowed
/// i64 before reaching the 0, so its echo was refused as INTERNAL. Decoding now bounds the
/// dimensions of an empty tensor by the message's size, so such a request is refused as
/// bad input and never reaches a model.
#[test]
fn an_empty_tensor_with_overflowing_dimensions_is_refused_at_decode() {
    let request = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![InferInputTensor {
            name: "a".into(),
            datatype: "INT8".into(),
            shape: vec![1 << 62, 2, 0],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::new()],
        ..Default::default()
    };
    let bytes = request.encode_to_vec();
    assert!(decode_request(Bytes::from(bytes.clone())).is_err());
    harness::decode_request_case(&bytes);
    // Rows of nothing within the bound are answered.
    batch_assembly_case(&Scenario {
        max_batch_rows: 16,
        max_queue: 8,
        jobs: vec![job(
            "empty",
            vec![tensor(
                "a",
                &[1 << 20, 2, 0],
                Arc::new(Int8Array::from(Vec::<i8>::new())),
            )],
        )],
        answers: vec![Answer::Echo],
    });
}
