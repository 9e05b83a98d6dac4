//! ModelInfer with no Python on the way: the message is decoded, its model found, the
//! signature applied and the job queued in the model's batcher right here; the runner
//! thread predicts, and the answer is encoded into the response from this thread.
//! `Pending` is one queued job as a future; ModelStreamInfer uses it too. A model another
//! process serves is not decoded here: its message is forwarded (`forward`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::trace::SpanContext;
use tokio::time::Sleep;
use tonic::{Code, Status};
use tower_service::Service;

use super::codec::WireMessage;
use super::deadline::Deadline;
use super::models::Entry;
use super::observe::{code_name, observe_call, Arrived, TraceHeaders};
use super::service::{grpc_code, status_of};
use super::Shared;
use crate::admit::job_for;
use crate::batch::Job;
use crate::decode::{decode_request, InferRequest};
use crate::encode::EncodedResponse;
use crate::error::{Error, Result};
use crate::observe::{observing, Observed, Outcome};

/// Messages bigger than this are decoded off the front's thread.
const OFF_THREAD_BYTES: usize = 1 << 20;

/// A cancellation this close to the call's deadline is the client's deadline passing (its
/// clock started before the request reached us), not a cancellation.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// A job queued in its model's batcher, until answered. Its outcome is counted once: when
/// it is answered or expires, or, if dropped unanswered (the client went away), as
/// CANCELLED, and the job then leaves the queue unrun.
pub(super) struct Pending {
    shared: Arc<Shared>,
    model: Arc<Entry>,
    job: Arc<Job>,
    expiry: Option<Pin<Box<Sleep>>>,
    settled: bool,
    /// Boxed: most servers observe nothing, and a queued call stays small.
    observed: Option<Box<Observed>>,
}

impl Pending {
    pub(super) fn new(
        shared: Arc<Shared>,
        model: Arc<Entry>,
        job: Arc<Job>,
        observed: Option<Observed>,
    ) -> Pending {
        let expiry = job
            .deadline()
            .map(|deadline| Box::pin(tokio::time::sleep_until(deadline.into())));
        Pending {
            shared,
            model,
            job,
            expiry,
            settled: false,
            observed: observed.map(Box::new),
        }
    }

    fn settle(&mut self, answer: Result<EncodedResponse>) -> Result<EncodedResponse> {
        self.settled = true;
        let status = match &answer {
            Ok(_) => "OK",
            Err(error) => error.code_name(),
        };
        self.shared.stats.count(&self.model.model.name, status);
        match &answer {
            Ok(_) => self.observe(Code::Ok, None),
            Err(error) => self.observe(grpc_code(error), Some(error)),
        }
        answer
    }

    /// Ends the call's observation, if it has one (the error's words are made only then).
    fn observe(&mut self, code: Code, error: Option<&dyn std::fmt::Display>) {
        if let Some(observed) = self.observed.take() {
            let error = error.map(ToString::to_string);
            observed.finish(&Outcome {
                model: &self.model.model.name,
                version: &self.model.model.version,
                job: Some(&self.job),
                status: code_name(code),
                error: error.as_deref(),
            });
        }
    }
}

impl Future for Pending {
    type Output = Result<EncodedResponse>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let batcher = &self.model.model.batcher;
        if let Poll::Ready(answer) = batcher.poll_answer(&self.job, cx) {
            return Poll::Ready(self.settle(answer));
        }
        let expired = self
            .expiry
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            let error = self.model.model.batcher.expire(&self.job);
            return Poll::Ready(self.settle(Err(error)));
        }
        Poll::Pending
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // A client resets the call at its deadline too; that is the deadline's doing.
        let near = Instant::now().checked_add(DEADLINE_SLACK);
        let at_deadline = self
            .job
            .deadline()
            .is_some_and(|deadline| near.is_none_or(|near| deadline <= near));
        if at_deadline {
            let error = self.model.model.batcher.expire(&self.job);
            self.shared
                .stats
                .count(&self.model.model.name, error.code_name());
            self.observe(grpc_code(&error), Some(&error));
        } else {
            self.job.abandon();
            self.shared.stats.count(&self.model.model.name, "CANCELLED");
            self.observe(Code::Cancelled, Some(&"the client cancelled the call"));
        }
    }
}

/// The path of ModelInfer, as forwarded.
const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A call's answer: encoded here, or the message the process serving its model answered.
pub(super) enum InferAnswer {
    Encoded(EncodedResponse),
    Forwarded(Bytes),
}

impl WireMessage for InferAnswer {
    fn encoded_len(&self) -> usize {
        match self {
            InferAnswer::Encoded(encoded) => encoded.encoded_len(),
            InferAnswer::Forwarded(message) => message.len(),
        }
    }

    fn write_to(&self, out: &mut impl bytes::BufMut) {
        match self {
            InferAnswer::Encoded(encoded) => encoded.write_to(out),
            InferAnswer::Forwarded(message) => out.put_slice(message),
        }
    }
}

type Forwarding = Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send>>;

/// An admitted call until answered: queued here, or forwarded.
pub(super) enum Answering {
    Queued(Pending),
    Forwarded(Forwarding),
}

impl Future for Answering {
    type Output = Result<InferAnswer, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answering::Queued(pending) => Pin::new(pending).poll(cx).map(|answer| {
                answer
                    .map(InferAnswer::Encoded)
                    .map_err(|error| status_of(&error))
            }),
            Answering::Forwarded(forwarding) => forwarding
                .as_mut()
                .poll(cx)
                .map(|answer| answer.map(InferAnswer::Forwarded)),
        }
    }
}

/// Decodes the message, finds its model, applies the signature and queues the job (or
/// forwards the message, when another process serves its model); a refusal is counted
/// (under the model's name once known) and returned as its status.
///
/// `observed` follows the call when the access log or tracing is on; a forwarded call is
/// observed by the process that answers it.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    message: Bytes,
    deadline: Option<Instant>,
    trace: &TraceHeaders,
    mut observed: Option<Observed>,
) -> Result<Answering, Status> {
    if let Some(remote) = shared.routes.remote_for(&message) {
        let forwarding = remote.unary(MODEL_INFER_PATH, message, deadline, trace.clone());
        return Ok(Answering::Forwarded(Box::pin(forwarding)));
    }
    let trace = observed.as_ref().and_then(Observed::trace_context);
    let admitted = if message.len() > OFF_THREAD_BYTES {
        // A big body is decoded and checked on the blocking pool, so that other calls on
        // this thread keep moving meanwhile.
        let admitting = Arc::clone(shared);
        tokio::task::spawn_blocking(move || queue(&admitting, message, deadline, trace))
            .await
            .unwrap_or_else(|_| Err((String::new(), Error::Internal("decoding failed".into()))))
    } else {
        queue(shared, message, deadline, trace)
    };
    match admitted {
        Ok(queued) => {
            if let Some(observed) = &mut observed {
                observed.decoded(queued.decoded);
            }
            Ok(Answering::Queued(Pending::new(
                Arc::clone(shared),
                queued.model,
                queued.job,
                observed,
            )))
        }
        Err((model, error)) => {
            shared.stats.count(&model, error.code_name());
            if let Some(observed) = observed {
                observed.finish(&Outcome {
                    model: &model,
                    version: "",
                    job: None,
                    status: code_name(grpc_code(&error)),
                    error: Some(&error.to_string()),
                });
            }
            Err(status_of(&error))
        }
    }
}

/// A job in its model's queue.
pub(super) struct Queued {
    pub(super) model: Arc<Entry>,
    pub(super) job: Arc<Job>,
    /// When the message was decoded (the signature was applied after).
    pub(super) decoded: Instant,
}

/// The queued job and its model, or the refusal and the model's name ("" when unknown).
/// `trace`: the call's server span, for the job's batch to link to.
fn queue(
    shared: &Shared,
    message: Bytes,
    deadline: Option<Instant>,
    trace: Option<SpanContext>,
) -> Result<Queued, (String, Error)> {
    let started = Instant::now();
    let request = decode_request(message).map_err(|error| (String::new(), error))?;
    queue_request(shared, request, started, deadline, trace)
}

/// Queues a decoded request (decoding began at `started`) in its model's batcher, once the
/// model's signature has been applied.
pub(super) fn queue_request(
    shared: &Shared,
    request: InferRequest,
    started: Instant,
    deadline: Option<Instant>,
    trace: Option<SpanContext>,
) -> Result<Queued, (String, Error)> {
    let decoded = Instant::now();
    let model = shared
        .models
        .find(&request.model_name, &request.model_version)
        .map_err(|error| (String::new(), error))?;
    let name = &model.model.name;
    let job = job_for(request, model.model.signature.as_ref(), deadline)
        .map_err(|error| (name.clone(), error))?;
    if let Some(trace) = trace {
        job.set_trace(trace);
    }
    let job = Arc::new(job);
    shared
        .stats
        .observe_decode(name, started.elapsed().as_secs_f64());
    model
        .model
        .batcher
        .submit(&job)
        .map_err(|error| (name.clone(), error))?;
    Ok(Queued {
        model,
        job,
        decoded,
    })
}

/// The call's observation, when the access log or tracing is on.
fn observe<T>(
    request: &tonic::Request<T>,
    trace: &TraceHeaders,
    path: &'static str,
) -> Option<Observed> {
    if !observing() {
        return None;
    }
    let arrived = request
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |arrived| arrived.0);
    observe_call(trace, arrived, path)
}

/// The deadline a call arrived with.
pub(super) fn deadline_of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    request.extensions().get::<Deadline>().map(|d| d.0)
}

/// ModelInfer as tonic's unary service.
#[derive(Clone)]
pub(super) struct Handler(pub Arc<Shared>);

type Answer = std::result::Result<tonic::Response<InferAnswer>, Status>;

impl Service<tonic::Request<Bytes>> for Handler {
    type Response = tonic::Response<InferAnswer>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let deadline = deadline_of(&request);
            let trace = TraceHeaders::of(request.metadata().as_ref(), shared.routes.any());
            let observed = observe(&request, &trace, MODEL_INFER_PATH);
            let traceparent = observed.as_ref().and_then(Observed::traceparent);
            let message = request.into_inner();
            let answered = match admit(&shared, message, deadline, &trace, observed).await {
                Ok(answering) => answering.await.map(tonic::Response::new),
                Err(status) => Err(status),
            };
            match traceparent.and_then(|value| value.parse().ok()) {
                Some(value) => with_traceparent(answered, value),
                None => answered,
            }
        })
    }
}

/// The answer (or its status) carrying the call's `traceparent`.
fn with_traceparent(
    answered: Answer,
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Answer {
    match answered {
        Ok(mut response) => {
            response.metadata_mut().insert("traceparent", value);
            Ok(response)
        }
        Err(mut status) => {
            status.metadata_mut().insert("traceparent", value);
            Err(status)
        }
    }
}
