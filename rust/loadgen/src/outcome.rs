//! What one request ended with, and the check every V2 answer goes through.

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
    /// The connection or stream failed.
    Transport(String),
    /// An HTTP answer (--http), whatever its status: 2xx is OK, any other an error.
    Http(u16),
}

/// A ModelInferResponse is OK when it has outputs, each with `expect_rows` rows if given,
/// and raw contents (where it has them) that fill their shapes.
pub fn check(response: &ModelInferResponse, expect_rows: Option<i64>) -> Outcome {
    if response.outputs.is_empty() {
        return Outcome::BadAnswer("no outputs".into());
    }
    for (i, output) in response.outputs.iter().enumerate() {
        if let Some(rows) = expect_rows {
            if output.shape.first() != Some(&rows) {
                return Outcome::BadAnswer(format!(
                    "output {} has shape {:?}, expected {rows} rows",
                    output.name, output.shape
                ));
            }
        }
        let elements: i64 = output.shape.iter().product();
        let size = DataType::parse(&output.datatype).and_then(DataType::element_size);
        if let (Some(size), Some(raw)) = (size, response.raw_output_contents.get(i)) {
            if usize::try_from(elements)
                .ok()
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
    Outcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrowsmith_native::proto::model_infer_response::InferOutputTensor;

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

    #[test]
    fn answers_are_checked() {
        assert_eq!(check(&response(vec![2], 16), Some(2)), Outcome::Ok);
        assert_eq!(check(&response(vec![2], 16), None), Outcome::Ok);
        assert!(matches!(
            check(&response(vec![2], 16), Some(1)),
            Outcome::BadAnswer(e) if e.contains("expected 1 rows")
        ));
        assert!(matches!(
            check(&response(vec![2], 8), None),
            Outcome::BadAnswer(e) if e.contains("holds 8 bytes")
        ));
        assert_eq!(
            check(&ModelInferResponse::default(), None),
            Outcome::BadAnswer("no outputs".into())
        );
    }
}
