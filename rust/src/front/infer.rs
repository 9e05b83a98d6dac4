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
use tokio::time::Sleep;
use tonic::Status;
use tower_service::Service;

use super::codec::WireMessage;
use super::deadline::Deadline;
use super::models::Entry;
use super::service::status_of;
use super::Shared;
use crate::admit::job_for;
use crate::batch::Job;
use crate::decode::decode_request;
use crate::encode::EncodedResponse;
use crate::error::{Error, Result};

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
}

impl Pending {
    fn new(shared: Arc<Shared>, model: Arc<Entry>, job: Arc<Job>) -> Pending {
        let expiry = job
            .deadline()
            .map(|deadline| Box::pin(tokio::time::sleep_until(deadline.into())));
        Pending {
            shared,
            model,
            job,
            expiry,
            settled: false,
        }
    }

    fn settle(&mut self, answer: Result<EncodedResponse>) -> Result<EncodedResponse> {
        self.settled = true;
        let status = match &answer {
            Ok(_) => "OK",
            Err(error) => error.code_name(),
        };
        self.shared.stats.count(&self.model.model.name, status);
        answer
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
        let status = if at_deadline {
            self.model.model.batcher.expire(&self.job).code_name()
        } else {
            self.job.abandon();
            "CANCELLED"
        };
        self.shared.stats.count(&self.model.model.name, status);
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
pub(super) async fn admit(
    shared: &Arc<Shared>,
    message: Bytes,
    deadline: Option<Instant>,
) -> Result<Answering, Status> {
    if let Some(remote) = shared.routes.remote_for(&message) {
        let forwarding = remote.unary(MODEL_INFER_PATH, message, deadline);
        return Ok(Answering::Forwarded(Box::pin(forwarding)));
    }
    let admitted = if message.len() > OFF_THREAD_BYTES {
        // A big body is decoded and checked on the blocking pool, so that other calls on
        // this thread keep moving meanwhile.
        let admitting = Arc::clone(shared);
        tokio::task::spawn_blocking(move || queue(&admitting, message, deadline))
            .await
            .unwrap_or_else(|_| Err((String::new(), Error::Internal("decoding failed".into()))))
    } else {
        queue(shared, message, deadline)
    };
    match admitted {
        Ok((model, job)) => Ok(Answering::Queued(Pending::new(
            Arc::clone(shared),
            model,
            job,
        ))),
        Err((model, error)) => {
            shared.stats.count(&model, error.code_name());
            Err(status_of(&error))
        }
    }
}

/// The queued job and its model, or the refusal and the model's name ("" when unknown).
fn queue(
    shared: &Shared,
    message: Bytes,
    deadline: Option<Instant>,
) -> Result<(Arc<Entry>, Arc<Job>), (String, Error)> {
    let started = Instant::now();
    let request = decode_request(message).map_err(|error| (String::new(), error))?;
    let model = shared
        .models
        .find(&request.model_name, &request.model_version)
        .map_err(|error| (String::new(), error))?;
    let name = &model.model.name;
    let job = job_for(request, model.model.signature.as_ref(), deadline)
        .map(Arc::new)
        .map_err(|error| (name.clone(), error))?;
    shared
        .stats
        .observe_decode(name, started.elapsed().as_secs_f64());
    model
        .model
        .batcher
        .submit(&job)
        .map_err(|error| (name.clone(), error))?;
    Ok((model, job))
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
            let answering = admit(&shared, request.into_inner(), deadline).await?;
            answering.await.map(tonic::Response::new)
        })
    }
}
