//! Streaming ModelStreamInfer calls: one long-lived bidirectional stream per connection, each
//! request one message on it. A stream's answers come back in the order its messages went
//! out, so each answer belongs to the message that has waited longest, and a message's
//! latency runs from its send to its answer. A stream that ends fails the messages waiting on
//! it and every later one: it is not reopened.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use arrowsmith_native::proto::ModelStreamInferResponse;

use crate::grpc::{self, Messages};
use crate::outcome::{self, Answer, Checks, Outcome};

pub const PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// A stream's request body: the framed messages, in the order the callers send them.
pub struct Outgoing(mpsc::UnboundedReceiver<Bytes>);

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|message| message.map(|m| Ok(Frame::data(m))))
    }
}

/// The callers waiting on one stream for their answers, longest first; once the stream has
/// ended, why.
#[derive(Default)]
struct Waiting {
    callers: VecDeque<oneshot::Sender<Answer>>,
    ended: Option<Outcome>,
}

struct Stream {
    /// Holds the connection open: hyper ends it once every sender is gone.
    _connection: SendRequest<Outgoing>,
    outgoing: mpsc::UnboundedSender<Bytes>,
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
    pub fn open(
        connections: Vec<SendRequest<Outgoing>>,
        uri: &Uri,
        body: Bytes,
        checks: &Rc<Checks>,
    ) -> Self {
        let streams = connections
            .into_iter()
            .map(|mut connection| {
                let (outgoing, messages) = mpsc::unbounded_channel();
                let response = connection.send_request(grpc::request(uri, Outgoing(messages)));
                let waiting = Rc::default();
                tokio::task::spawn_local(read(response, Rc::clone(&waiting), Rc::clone(checks)));
                Stream {
                    _connection: connection,
                    outgoing,
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
            if stream.outgoing.send(self.body.clone()).is_err() {
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
async fn read(
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
    waiting: Rc<RefCell<Waiting>>,
    checks: Rc<Checks>,
) {
    let end = answer_all(response, &waiting, &checks).await;
    let mut waiting = waiting.borrow_mut();
    for caller in waiting.callers.drain(..) {
        let _ = caller.send(end.clone().into());
    }
    waiting.ended = Some(end);
}

/// Hands each answer to the caller that has waited longest; returns why the stream ended.
async fn answer_all(
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
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
    while let Some(frame) = body.frame().await {
        let data = match frame.map(Frame::into_data) {
            Ok(Ok(data)) => data,
            Ok(Err(trailers)) => {
                return ended(trailers.trailers_ref().and_then(grpc::status));
            }
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
            let _ = caller.send(answer(message, checks));
        }
    }
    ended(None)
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
