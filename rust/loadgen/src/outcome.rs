//! What one request ended with, and the checks every V2 answer goes through: its shape, and
//! (with `--expect-version`) its first output's values against those of the model version
//! it names.

use std::cell::RefCell;

use bytes::Bytes;

use arrowsmith_native::proto::model_infer_response::InferOutputTensor;
use arrowsmith_native::proto::ModelInferResponse;
use arrowsmith_native::DataType;

/// What one request ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A gRPC status other than OK (its number).
    Status(u32),
    /// A streamed answer that reports an error in its `error_message` (--stream).
    StreamError(String),
    /// An OK status whose answer is not a valid response of the expected shape.
    BadAnswer(String),
    /// A valid answer whose values are not those of the model version it names, or that
    /// names a version with no expectation (--expect-version).
    WrongAnswer(String),
    /// The connection or stream failed.
    Transport(String),
    /// An HTTP answer (--http), whatever its status: 2xx is OK, any other an error.
    Http(u16),
}

/// What one request ended with, and the model version its answer names (empty if it names
/// none; `None` when there was no ModelInferResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub version: Option<String>,
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Answer {
            outcome,
            version: None,
        }
    }
}

/// The last answer's bytes and what checking them gave. A server answers the same request
/// with the same bytes, most of the time: those are not decoded and checked again.
#[derive(Default)]
pub struct LastAnswer(RefCell<Option<(Bytes, Answer)>>);

impl LastAnswer {
    /// What `check` gives for `message`, or gave for the same bytes last time.
    pub fn check(&self, message: Bytes, check: impl FnOnce(&Bytes) -> Answer) -> Answer {
        if let Some((last, answer)) = &*self.0.borrow() {
            if *last == message {
                return answer.clone();
            }
        }
        let answer = check(&message);
        *self.0.borrow_mut() = Some((message, answer.clone()));
        answer
    }
}

/// The expected values of the first output, for the answers of one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub version: String,
    pub values: Vec<f64>,
}

/// What every answer is checked against.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Every output has this many rows.
    pub rows: Option<i64>,
    /// When not empty, every answer names one of these versions and its first output holds
    /// that version's values.
    pub versions: Vec<Expected>,
    /// The relative tolerance of the values' comparison.
    pub rtol: f64,
}

/// Expected values as text: decimal numbers separated by newlines, spaces, tabs or commas
/// (`nan` and `inf` too), in the order of the output's raw contents.
pub fn parse_values(text: &str) -> Result<Vec<f64>, String> {
    let mut values = Vec::new();
    for (number, line) in text.lines().enumerate() {
        for token in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            let value = token
                .parse()
                .map_err(|_| format!("line {}: '{token}' is not a number", number + 1))?;
            values.push(value);
        }
    }
    Ok(values)
}

/// A ModelInferResponse is OK when it has outputs, each with `checks.rows` rows if given,
/// and raw contents (where it has them) that fill their shapes; with expectations, when the
/// version it names has one and its first output's values match it.
pub fn check(response: &ModelInferResponse, checks: &Checks) -> Outcome {
    if response.outputs.is_empty() {
        return Outcome::BadAnswer("no outputs".into());
    }
    for (i, output) in response.outputs.iter().enumerate() {
        if let Some(rows) = checks.rows {
            if output.shape.first() != Some(&rows) {
                return Outcome::BadAnswer(format!(
                    "output {} has shape {:?}, expected {rows} rows",
                    output.name, output.shape
                ));
            }
        }
        // The server's numbers: a product that overflows is a bad answer, not a panic.
        let elements = output
            .shape
            .iter()
            .try_fold(1_i64, |count, &dim| count.checked_mul(dim));
        let size = DataType::parse(&output.datatype).and_then(DataType::element_size);
        if let (Some(size), Some(raw)) = (size, response.raw_output_contents.get(i)) {
            if elements
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| n.checked_mul(size))
                != Some(raw.len())
            {
                return Outcome::BadAnswer(format!(
                    "output {} holds {} bytes for shape {:?}",
                    output.name,
                    raw.len(),
                    output.shape
                ));
            }
        }
    }
    if checks.versions.is_empty() {
        return Outcome::Ok;
    }
    let version = &response.model_version;
    let Some(expected) = checks.versions.iter().find(|e| e.version == *version) else {
        return Outcome::WrongAnswer(format!("model_version '{version}' has no expectation"));
    };
    let output = &response.outputs[0];
    let raw = response
        .raw_output_contents
        .first()
        .filter(|raw| !raw.is_empty());
    let values = match raw {
        Some(raw) => raw_values(output, raw),
        None => typed_values(output),
    };
    let values = match values {
        Ok(values) => values,
        Err(e) => return Outcome::WrongAnswer(format!("model_version '{version}': {e}")),
    };
    match mismatch(&values, &expected.values, checks.rtol) {
        None => Outcome::Ok,
        Some(e) => Outcome::WrongAnswer(format!("model_version '{version}': {e}")),
    }
}

fn datatype(output: &InferOutputTensor) -> Result<DataType, String> {
    match DataType::parse(&output.datatype) {
        Some(DataType::Bool | DataType::Fp16 | DataType::Bytes) | None => Err(format!(
            "output {} is {}, whose values are not compared",
            output.name, output.datatype
        )),
        Some(datatype) => Ok(datatype),
    }
}

/// An output's raw contents (little-endian), widened to f64.
fn raw_values(output: &InferOutputTensor, raw: &[u8]) -> Result<Vec<f64>, String> {
    fn each<const N: usize>(raw: &[u8], widen: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        raw.chunks_exact(N)
            .filter_map(|chunk| chunk.try_into().ok())
            .map(widen)
            .collect()
    }
    let datatype = datatype(output)?;
    if datatype
        .element_size()
        .is_some_and(|size| raw.len() % size != 0)
    {
        return Err(format!(
            "output {} holds {} bytes, not whole {} values",
            output.name,
            raw.len(),
            output.datatype
        ));
    }
    Ok(match datatype {
        DataType::Fp64 => each(raw, f64::from_le_bytes),
        DataType::Fp32 => each(raw, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Int64 => each(raw, |b| i64::from_le_bytes(b) as f64),
        DataType::Int32 => each(raw, |b| f64::from(i32::from_le_bytes(b))),
        DataType::Int16 => each(raw, |b| f64::from(i16::from_le_bytes(b))),
        DataType::Int8 => each(raw, |b| f64::from(i8::from_le_bytes(b))),
        DataType::Uint64 => each(raw, |b| u64::from_le_bytes(b) as f64),
        DataType::Uint32 => each(raw, |b| f64::from(u32::from_le_bytes(b))),
        DataType::Uint16 => each(raw, |b| f64::from(u16::from_le_bytes(b))),
        DataType::Uint8 => each(raw, |b| f64::from(u8::from_le_bytes(b))),
        DataType::Bool | DataType::Fp16 | DataType::Bytes => Vec::new(),
    })
}

/// An output's typed contents, widened to f64.
fn typed_values(output: &InferOutputTensor) -> Result<Vec<f64>, String> {
    let datatype = datatype(output)?;
    let Some(contents) = &output.contents else {
        return Ok(Vec::new());
    };
    Ok(match datatype {
        DataType::Fp64 => contents.fp64_contents.clone(),
        DataType::Fp32 => contents
            .fp32_contents
            .iter()
            .copied()
            .map(f64::from)
            .collect(),
        DataType::Int64 => contents.int64_contents.iter().map(|&v| v as f64).collect(),
        DataType::Int32 | DataType::Int16 | DataType::Int8 => contents
            .int_contents
            .iter()
            .copied()
            .map(f64::from)
            .collect(),
        DataType::Uint64 => contents.uint64_contents.iter().map(|&v| v as f64).collect(),
        DataType::Uint32 | DataType::Uint16 | DataType::Uint8 => contents
            .uint_contents
            .iter()
            .copied()
            .map(f64::from)
            .collect(),
        DataType::Bool | DataType::Fp16 | DataType::Bytes => Vec::new(),
    })
}

/// Why `got` is not `want`, if it is not: a different count, or the first value that
/// differs by more than `rtol` of the larger magnitude (NaN matches NaN only).
fn mismatch(got: &[f64], want: &[f64], rtol: f64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values, expected {}", got.len(), want.len()));
    }
    let close = |g: f64, w: f64| {
        // Equal infinities too, whose difference is NaN.
        g.total_cmp(&w).is_eq()
            || (g.is_nan() && w.is_nan())
            || (g - w).abs() <= rtol * g.abs().max(w.abs())
    };
    let (i, (g, w)) = got
        .iter()
        .zip(want)
        .enumerate()
        .find(|(_, (&g, &w))| !close(g, w))?;
    Some(format!("value {i} is {g:e}, expected {w:e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrowsmith_native::proto::InferTensorContents;

    fn response(shape: Vec<i64>, raw: usize) -> ModelInferResponse {
        ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "output-0".into(),
                datatype: "FP64".into(),
                shape,
                ..Default::default()
            }],
            raw_output_contents: vec![vec![0; raw].into()],
            ..Default::default()
        }
    }

    fn rows(rows: Option<i64>) -> Checks {
        Checks {
            rows,
            ..Checks::default()
        }
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(check(&response(vec![2], 16), &rows(Some(2))), Outcome::Ok);
        assert_eq!(check(&response(vec![2], 16), &rows(None)), Outcome::Ok);
        assert!(matches!(
            check(&response(vec![2], 16), &rows(Some(1))),
            Outcome::BadAnswer(e) if e.contains("expected 1 rows")
        ));
        assert!(matches!(
            check(&response(vec![2], 8), &rows(None)),
            Outcome::BadAnswer(e) if e.contains("holds 8 bytes")
        ));
        assert_eq!(
            check(&ModelInferResponse::default(), &rows(None)),
            Outcome::BadAnswer("no outputs".into())
        );
    }

    /// Version "1" answers 0.5, 1.5; version "2" answers 10, -20.
    fn versions() -> Checks {
        Checks {
            rows: None,
            versions: vec![
                Expected {
                    version: "1".into(),
                    values: vec![0.5, 1.5],
                },
                Expected {
                    version: "2".into(),
                    values: vec![10.0, -20.0],
                },
            ],
            rtol: 1e-9,
        }
    }

    fn raw(version: &str, datatype: &str, bytes: Vec<u8>, count: i64) -> ModelInferResponse {
        ModelInferResponse {
            model_version: version.into(),
            outputs: vec![InferOutputTensor {
                name: "output-0".into(),
                datatype: datatype.into(),
                shape: vec![count],
                ..Default::default()
            }],
            raw_output_contents: vec![bytes.into()],
            ..Default::default()
        }
    }

    fn fp64(version: &str, values: &[f64]) -> ModelInferResponse {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw(version, "FP64", bytes, i64::try_from(values.len()).unwrap())
    }

    fn fp32(version: &str, values: &[f32]) -> ModelInferResponse {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw(version, "FP32", bytes, i64::try_from(values.len()).unwrap())
    }

    fn typed(version: &str, datatype: &str, contents: InferTensorContents) -> ModelInferResponse {
        ModelInferResponse {
            model_version: version.into(),
            outputs: vec![InferOutputTensor {
                name: "output-0".into(),
                datatype: datatype.into(),
                shape: vec![2],
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn wrong(outcome: Outcome, text: &str) -> bool {
        matches!(outcome, Outcome::WrongAnswer(e) if e.contains(text))
    }

    #[test]
    fn each_version_answers_its_own_values() {
        let checks = versions();
        assert_eq!(check(&fp64("1", &[0.5, 1.5]), &checks), Outcome::Ok);
        assert_eq!(check(&fp64("2", &[10.0, -20.0]), &checks), Outcome::Ok);
        // Within the tolerance, relative to the larger magnitude.
        assert_eq!(
            check(&fp64("2", &[10.0 + 1e-9, -20.0]), &checks),
            Outcome::Ok
        );
        // The other version's values.
        let swapped = check(&fp64("1", &[10.0, -20.0]), &checks);
        assert!(wrong(
            swapped,
            "model_version '1': value 0 is 1e1, expected 5e-1"
        ));
        assert!(wrong(check(&fp64("2", &[10.0, -20.1]), &checks), "value 1"));
        assert!(wrong(
            check(&fp64("2", &[10.0]), &checks),
            "1 values, expected 2"
        ));
        assert!(wrong(
            check(&fp64("2", &[10.0, -20.0, 0.0]), &checks),
            "3 values"
        ));
    }

    #[test]
    fn a_version_without_an_expectation_is_a_wrong_answer() {
        let checks = versions();
        let unknown = check(&fp64("3", &[0.5, 1.5]), &checks);
        assert!(wrong(unknown, "model_version '3' has no expectation"));
        let unnamed = check(&fp64("", &[0.5, 1.5]), &checks);
        assert!(wrong(unnamed, "model_version '' has no expectation"));
        // Without expectations, any version is fine.
        assert_eq!(check(&fp64("3", &[0.5, 1.5]), &rows(None)), Outcome::Ok);
    }

    #[test]
    fn fp32_values_are_compared_widened() {
        let checks = versions();
        assert_eq!(check(&fp32("1", &[0.5, 1.5]), &checks), Outcome::Ok);
        assert!(wrong(check(&fp32("1", &[0.5, 1.25]), &checks), "value 1"));
        // 0.1 is not an f32: its widened value, not the decimal, is what FP32 answers hold.
        let tenth = Checks {
            versions: vec![Expected {
                version: "1".into(),
                values: vec![0.1],
            }],
            ..versions()
        };
        assert!(wrong(check(&fp32("1", &[0.1]), &tenth), "value 0"));
        let loose = Checks {
            rtol: 1e-6,
            ..tenth
        };
        assert_eq!(check(&fp32("1", &[0.1]), &loose), Outcome::Ok);
    }

    #[test]
    fn typed_contents_are_read_when_there_are_no_raw_ones() {
        let checks = versions();
        let fp64_contents = |values: Vec<f64>| InferTensorContents {
            fp64_contents: values,
            ..Default::default()
        };
        let fp32_contents = |values: Vec<f32>| InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        };
        let right = typed("2", "FP64", fp64_contents(vec![10.0, -20.0]));
        assert_eq!(check(&right, &checks), Outcome::Ok);
        let other = typed("2", "FP64", fp64_contents(vec![0.5, 1.5]));
        assert!(wrong(check(&other, &checks), "value 0"));
        let right = typed("1", "FP32", fp32_contents(vec![0.5, 1.5]));
        assert_eq!(check(&right, &checks), Outcome::Ok);
        // FP32 values are read from fp32_contents, not another field.
        let misplaced = typed("1", "FP32", fp64_contents(vec![0.5, 1.5]));
        assert!(wrong(check(&misplaced, &checks), "0 values, expected 2"));
        let none = ModelInferResponse {
            model_version: "1".into(),
            outputs: vec![InferOutputTensor {
                datatype: "FP64".into(),
                shape: vec![2],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(wrong(check(&none, &checks), "0 values, expected 2"));
    }

    #[test]
    fn integer_outputs_are_compared_and_others_refused() {
        let checks = versions();
        let int64 = [10i64, -20].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(check(&raw("2", "INT64", int64, 2), &checks), Outcome::Ok);
        let int32 = InferTensorContents {
            int_contents: vec![10, -20],
            ..Default::default()
        };
        assert_eq!(check(&typed("2", "INT32", int32), &checks), Outcome::Ok);
        let strings = raw("2", "BYTES", vec![0; 8], 2);
        assert!(wrong(check(&strings, &checks), "is BYTES"));
    }

    #[test]
    fn the_same_bytes_are_checked_once() {
        let last = LastAnswer::default();
        let checked = std::cell::Cell::new(0);
        let check = |bytes: &Bytes| {
            checked.set(checked.get() + 1);
            Answer {
                outcome: Outcome::Ok,
                version: Some(format!("{}", bytes.len())),
            }
        };
        let answers = ["ab", "ab", "abc", "ab", "ab"].map(|m| last.check(Bytes::from(m), check));
        assert_eq!(checked.get(), 3);
        let versions = answers.map(|a| a.version.unwrap());
        assert_eq!(versions, ["2", "2", "3", "2", "2"]);
    }

    #[test]
    fn nan_matches_nan_only() {
        assert_eq!(mismatch(&[f64::NAN], &[f64::NAN], 1e-9), None);
        assert!(mismatch(&[f64::NAN], &[1.0], 1e-9).is_some());
        assert!(mismatch(&[1.0], &[f64::NAN], 1e-9).is_some());
        assert_eq!(mismatch(&[f64::INFINITY], &[f64::INFINITY], 1e-9), None);
        assert_eq!(mismatch(&[0.0], &[-0.0], 0.0), None);
    }

    #[test]
    fn expected_values_are_read_as_text() {
        let values = parse_values("0.5\n-1e3\n\n  2 ,3\r\nnan\n").unwrap();
        assert_eq!(values[..4], [0.5, -1000.0, 2.0, 3.0]);
        assert!(values[4].is_nan() && values.len() == 5);
        assert_eq!(parse_values(""), Ok(Vec::new()));
        assert_eq!(
            parse_values("1\n2\nx"),
            Err("line 3: 'x' is not a number".into())
        );
    }
}
