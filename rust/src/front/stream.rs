//! ModelStreamInfer, as Triton answers it for models that are not decoupled: each request
//! on the stream is queued in its model's batcher the moment it arrives (so a stream's
//! requests batch with each other and with unary calls), and answered by one response, in
//! the order the requests came. A request that fails is answered in-band, its
//! `error_message` set, and the stream goes on. A stream holds at most
//! `max_concurrent_streams` requests in flight; past that it reads no more until the
//! oldest is answered. The call's deadline applies to each of its requests; when the
//! client cancels the stream, its queued requests leave the queue unrun.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Status, Streaming};
use tower_service::Service;

use super::codec::WireMessage;
use super::infer::{admit, deadline_of, Answering, InferAnswer};
use super::metered::CallBudget;
use super::observe::{observe_call, TraceHeaders};
use super::Shared;
use crate::proto::ModelStreamInferResponse;

const STREAM_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// `ModelStreamInferResponse`'s field numbers.
const ERROR_MESSAGE_FIELD: u32 = 1;
const INFER_RESPONSE_FIELD: u32 = 2;

/// One response on the stream: an answer, or why the request was not answered.
pub(super) enum StreamAnswer {
    Answer(InferAnswer),
    Error(String),
}

impl WireMessage for StreamAnswer {
    fn encoded_len(&self) -> usize {
        match self {
            StreamAnswer::Answer(encoded) => {
                let len = encoded.encoded_len();
                prost::encoding::key_len(INFER_RESPONSE_FIELD)
                    .saturating_add(prost::encoding::encoded_len_varint(len as u64))
                    .saturating_add(len)
            }
            StreamAnswer::Error(message) => {
                prost::encoding::string::encoded_len(ERROR_MESSAGE_FIELD, message)
            }
        }
    }

    fn write_to(&self, out: &mut impl BufMut) {
        match self {
            StreamAnswer::Answer(encoded) => {
                encode_key(INFER_RESPONSE_FIELD, WireType::LengthDelimited, out);
                encode_varint(encoded.encoded_len() as u64, out);
                encoded.write_to(out);
            }
            StreamAnswer::Error(message) => ModelStreamInferResponse {
                error_message: message.clone(),
                infer_response: None,
            }
            .encode_raw(out),
        }
    }
}

type Admitting = Pin<Box<dyn Future<Output = Result<Answering, Status>> + Send>>;

/// A request of the stream, in arrival order, until its response is sent.
enum Waiting {
    Admitting(Admitting),
    Queued(Answering),
    Refused(String),
}

/// The stream's responses.
pub(super) struct Answers {
    shared: Arc<Shared>,
    incoming: Streaming<Bytes>,
    call: Option<Arc<CallBudget>>,
    deadline: Option<Instant>,
    /// The caller's trace context: each message's trace continues it.
    trace: TraceHeaders,
    waiting: VecDeque<Waiting>,
    /// How far the request stream has got.
    requests: Requests,
}

/// The request side of a stream.
enum Requests {
    /// More may come.
    Open,
    /// It failed with this status, to end the responses once the requests read are answered.
    Failed(Status),
    /// It ended (or its failure was reported): nothing more is read.
    Ended,
}

impl Answers {
    /// Reads and queues requests while the stream may hold more.
    fn read(&mut self, cx: &mut Context<'_>) {
        let most = self.shared.limits.max_concurrent_streams as usize;
        while matches!(self.requests, Requests::Open) && self.waiting.len() < most {
            match Pin::new(&mut self.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    let shared = Arc::clone(&self.shared);
                    let deadline = self.deadline;
                    let observed = observe_call(&self.trace, Instant::now(), STREAM_PATH);
                    let trace = self.trace.clone();
                    let admitting = Box::pin(async move {
                        admit(&shared, message, deadline, &trace, observed).await
                    });
                    self.waiting.push_back(Waiting::Admitting(admitting));
                }
                Poll::Ready(Some(Err(status))) => self.requests = Requests::Failed(status),
                Poll::Ready(None) => self.requests = Requests::Ended,
                Poll::Pending => break,
            }
        }
    }

    /// Moves every request still being admitted along: each joins its model's queue as
    /// soon as it can, whatever is ahead of it on the stream.
    fn admit_all(&mut self, cx: &mut Context<'_>) {
        for waiting in &mut self.waiting {
            if let Waiting::Admitting(admitting) = waiting {
                match admitting.as_mut().poll(cx) {
                    Poll::Ready(Ok(pending)) => *waiting = Waiting::Queued(pending),
                    Poll::Ready(Err(status)) => {
                        *waiting = Waiting::Refused(status.message().to_owned());
                    }
                    Poll::Pending => {}
                }
            }
        }
    }

    /// The oldest request's response, once it has one.
    fn poll_oldest(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamAnswer>> {
        let Some(oldest) = self.waiting.front_mut() else {
            return Poll::Ready(None);
        };
        let answer = match oldest {
            Waiting::Admitting(_) => return Poll::Pending,
            Waiting::Queued(pending) => match Pin::new(pending).poll(cx) {
                Poll::Ready(Ok(answer)) => StreamAnswer::Answer(answer),
                Poll::Ready(Err(status)) => StreamAnswer::Error(status.message().to_owned()),
                Poll::Pending => return Poll::Pending,
            },
            Waiting::Refused(message) => StreamAnswer::Error(std::mem::take(message)),
        };
        self.waiting.pop_front();
        if let Some(call) = &self.call {
            call.message_done();
        }
        Poll::Ready(Some(answer))
    }
}

impl Stream for Answers {
    type Item = Result<StreamAnswer, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.read(cx);
        self.admit_all(cx);
        match self.poll_oldest(cx) {
            Poll::Ready(Some(answer)) => Poll::Ready(Some(Ok(answer))),
            Poll::Pending => Poll::Pending,
            // Every request read so far is answered: the stream ends as its requests did.
            Poll::Ready(None) => match std::mem::replace(&mut self.requests, Requests::Ended) {
                Requests::Failed(status) => Poll::Ready(Some(Err(status))),
                Requests::Ended => Poll::Ready(None),
                Requests::Open => {
                    self.requests = Requests::Open;
                    Poll::Pending
                }
            },
        }
    }
}

/// ModelStreamInfer as tonic's streaming service.
#[derive(Clone)]
pub(super) struct Handler(pub Arc<Shared>);

type Opened = Result<tonic::Response<Answers>, Status>;

impl Service<tonic::Request<Streaming<Bytes>>> for Handler {
    type Response = tonic::Response<Answers>;
    type Error = Status;
    type Future = std::future::Ready<Opened>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let deadline = deadline_of(&request);
        let call = request.extensions().get::<Arc<CallBudget>>().cloned();
        let trace = TraceHeaders::of(request.metadata().as_ref(), self.0.routes.any());
        std::future::ready(Ok(tonic::Response::new(Answers {
            shared: Arc::clone(&self.0),
            incoming: request.into_inner(),
            call,
            deadline,
            trace,
            waiting: VecDeque::new(),
            requests: Requests::Open,
        })))
    }
}
