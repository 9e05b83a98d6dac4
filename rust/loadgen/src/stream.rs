//! Streaming ModelStreamInfer calls: one long-lived bidirectional stream per connection, each
//! request one message on it. A stream's answers come back in the order its messages went
//! out, so each answer belongs to the message that has waited longest, and a message's
//! latency runs from its send to its answer. A stream that ends fails the messages waiting on
//! it and every later one: it is not reopened.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::SendStream;
use http::{StatusCode, Uri};
use prost::Message;
use tokio::sync::oneshot;

use arrowsmith_native::proto::ModelStreamInferResponse;

use crate::connect::Http2;
use crate::grpc::{self, Messages};
use crate::outcome::{self, Answer, Checks, LastAnswer, Outcome};

pub const PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// The callers waiting on one stream for their answers, longest first; once the stream has
/// ended, why.
#[derive(Default)]
struct Waiting {
    callers: VecDeque<oneshot::Sender<Answer>>,
    ended: Option<Outcome>,
}

struct Stream {
    /// Holds the connection open: h2 ends it once every sender is gone.
    _connection: Http2,
    /// The stream's request body, where each message is queued; `None` if the stream
    /// could not be opened.
    outgoing: RefCell<Option<SendStream<Bytes>>>,
    waiting: Rc<RefCell<Waiting>>,
}

/// The streaming side of a run: a stream on each connection, and the one request.
pub struct Streams {
    streams: Vec<Stream>,
    /// The request, framed.
    body: Bytes,
}

impl Streams {
    /// Opens a stream on each connection, and a task per stream that reads its answers.
    /// Needs a `LocalSet`, where the readers run.
    pub fn open(connections: Vec<Http2>, uri: &Uri, body: Bytes, checks: &Rc<Checks>) -> Self {
        let streams = connections
            .into_iter()
            .map(|mut connection| {
                let waiting: Rc<RefCell<Waiting>> = Rc::default();
                let opened = connection.sender.send_request(grpc::request(uri), false);
                let outgoing = match opened {
                    Ok((response, outgoing)) => {
                        let reader = read(response, Rc::clone(&waiting), Rc::clone(checks));
                        tokio::task::spawn_local(reader);
                        Some(outgoing)
                    }
                    Err(e) => {
                        waiting.borrow_mut().ended = Some(Outcome::Transport(e.to_string()));
                        None
                    }
                };
                Stream {
                    _connection: connection,
                    outgoing: RefCell::new(outgoing),
                    waiting,
                }
            })
            .collect();
        Streams { streams, body }
    }

    /// One message on stream `slot` (modulo their number), answered.
    pub async fn call(&self, slot: usize) -> Answer {
        let stream = &self.streams[slot % self.streams.len()];
        let ended = stream.waiting.borrow().ended.clone();
        if let Some(end) = ended {
            // Failing at once, without this, would keep the thread from the other streams.
            tokio::task::yield_now().await;
            return end.into();
        }
        let (caller, answer) = oneshot::channel();
        {
            let mut waiting = stream.waiting.borrow_mut();
            // Sent and queued at once, with no await between: the queue's order is the
            // stream's.
            let mut outgoing = stream.outgoing.borrow_mut();
            let sent = outgoing
                .as_mut()
                .map(|outgoing| outgoing.send_data(self.body.clone(), false));
            if !matches!(sent, Some(Ok(()))) {
                return Outcome::Transport("the stream no longer sends".into()).into();
            }
            waiting.callers.push_back(caller);
        }
        answer
            .await
            .unwrap_or_else(|_| Outcome::Transport("the stream's reader is gone".into()).into())
    }
}

/// Reads a stream's answers until it ends, then fails whoever still waits with why.
async fn read(response: ResponseFuture, waiting: Rc<RefCell<Waiting>>, checks: Rc<Checks>) {
    let end = answer_all(response, &waiting, &checks).await;
    let mut waiting = waiting.borrow_mut();
    for caller in waiting.callers.drain(..) {
        let _ = caller.send(end.clone().into());
    }
    waiting.ended = Some(end);
}

/// Hands each answer to the caller that has waited longest; returns why the stream ended.
async fn answer_all(
    response: ResponseFuture,
    waiting: &RefCell<Waiting>,
    checks: &Checks,
) -> Outcome {
    let response = match response.await {
        Ok(response) => response,
        Err(e) => return Outcome::Transport(e.to_string()),
    };
    if response.status() != StatusCode::OK {
        return Outcome::Transport(format!("HTTP status {}", response.status()));
    }
    if let Some(status) = grpc::status(response.headers()) {
        return ended(Some(status));
    }
    let mut body = response.into_body();
    let mut messages = Messages::default();
    let last = LastAnswer::default();
    while let Some(data) = grpc::data(&mut body).await {
        let data = match data {
            Ok(data) => data,
            Err(e) => return Outcome::Transport(e.to_string()),
        };
        messages.push(&data);
        loop {
            let message = match messages.next() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => return Outcome::BadAnswer(e),
            };
            let Some(caller) = waiting.borrow_mut().callers.pop_front() else {
                return Outcome::BadAnswer("an answer to no message".into());
            };
            let _ = caller.send(last.check(message, |message| answer(message.clone(), checks)));
        }
    }
    match body.trailers().await {
        Ok(trailers) => ended(trailers.as_ref().and_then(grpc::status)),
        Err(e) => Outcome::Transport(e.to_string()),
    }
}

/// Why a stream ended, from its final status.
fn ended(status: Option<u32>) -> Outcome {
    match status {
        Some(0) => Outcome::Transport("the server ended the stream".into()),
        Some(code) => Outcome::Status(code),
        None => Outcome::Transport("the stream ended without a status".into()),
    }
}

/// One streamed answer: an in-band error, or a ModelInferResponse checked as a unary one is.
fn answer(message: Bytes, checks: &Checks) -> Answer {
    match ModelStreamInferResponse::decode(message) {
        Err(e) => Outcome::BadAnswer(format!("not a ModelStreamInferResponse: {e}")).into(),
        Ok(answer) if !answer.error_message.is_empty() => {
            Outcome::StreamError(answer.error_message).into()
        }
        Ok(ModelStreamInferResponse {
            infer_response: Some(response),
            ..
        }) => Answer {
            outcome: outcome::check(&response, checks),
            version: Some(response.model_version),
        },
        Ok(_) => Outcome::BadAnswer("neither an error_message nor an infer_response".into()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrowsmith_native::proto::model_infer_response::InferOutputTensor;
    use arrowsmith_native::proto::ModelInferResponse;

    fn encoded(answer: &ModelStreamInferResponse) -> Bytes {
        answer.encode_to_vec().into()
    }

    fn rows(rows: Option<i64>) -> Checks {
        Checks {
            rows,
            ..Checks::default()
        }
    }

    fn outcome(message: Bytes, checks: &Checks) -> Outcome {
        answer(message, checks).outcome
    }

    #[test]
    fn streamed_answers_are_errors_or_checked_responses() {
        let error = ModelStreamInferResponse {
            error_message: "model failed".into(),
            infer_response: None,
        };
        assert_eq!(
            answer(encoded(&error), &rows(None)),
            Outcome::StreamError("model failed".into()).into()
        );
        let response = ModelInferResponse {
            model_version: "7".into(),
            outputs: vec![InferOutputTensor {
                name: "output-0".into(),
                datatype: "FP64".into(),
                shape: vec![1],
                ..Default::default()
            }],
            raw_output_contents: vec![vec![0; 8].into()],
            ..Default::default()
        };
        let ok = ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(response),
        };
        assert_eq!(
            answer(encoded(&ok), &rows(Some(1))),
            Answer {
                outcome: Outcome::Ok,
                version: Some("7".into())
            }
        );
        assert!(matches!(
            outcome(encoded(&ok), &rows(Some(2))),
            Outcome::BadAnswer(e) if e.contains("expected 2 rows")
        ));
        assert!(matches!(
            outcome(encoded(&ModelStreamInferResponse::default()), &rows(None)),
            Outcome::BadAnswer(_)
        ));
        assert!(matches!(
            outcome(Bytes::from_static(&[0xff]), &rows(None)),
            Outcome::BadAnswer(e) if e.starts_with("not a ModelStreamInferResponse")
        ));
        // The values are those of the version the answer names.
        let expect = |values: Vec<f64>| Checks {
            versions: vec![outcome::Expected {
                version: "7".into(),
                values,
            }],
            rtol: 1e-9,
            ..Checks::default()
        };
        assert_eq!(outcome(encoded(&ok), &expect(vec![0.0])), Outcome::Ok);
        assert!(matches!(
            outcome(encoded(&ok), &expect(vec![1.0])),
            Outcome::WrongAnswer(e) if e.contains("model_version '7'")
        ));
    }

    #[test]
    fn a_stream_ends_with_its_status() {
        assert_eq!(ended(Some(14)), Outcome::Status(14));
        assert!(matches!(ended(Some(0)), Outcome::Transport(_)));
        assert!(matches!(ended(None), Outcome::Transport(_)));
    }
}
