//! ModelInfer for the models the front holds, with no Python on the way: the body is
//! decoded, the signature applied and the job queued in the model's batcher right here;
//! the runner thread predicts, and the answer is written back from this thread. Requests
//! the front cannot answer itself (a model it does not hold, a compressed message) go to
//! the backend unchanged.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;

use super::budget::{ByteBudget, OverBudget, Reservation};
use super::proxy::{forward, Body};
use super::wire::{self, Message, PREFIX_LEN};
use super::{ServedModel, Shared, RESOURCE_EXHAUSTED};
use crate::admit::job_for;
use crate::batch::{Batcher, Job};
use crate::decode::decode_request;
use crate::encode::EncodedResponse;
use crate::error::{Error, Result};

pub(super) const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Messages bigger than this are decoded off the front's thread.
const OFF_THREAD_BYTES: usize = 1 << 20;

/// A reset this close to the deadline the client sent is the client's deadline passing
/// (its clock started before the request reached us), not a cancellation.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

enum BodyError {
    /// The message declares more bytes than the server accepts.
    TooLarge(usize),
    /// Holding the message would pass the budget of request bytes in flight.
    OverBudget(OverBudget),
    /// The client reset the stream or the connection failed.
    Gone,
}

/// The message length a body's gRPC prefix declares, once the prefix is there.
fn declared_length(head: &[u8]) -> Option<usize> {
    let length: [u8; 4] = head.get(1..PREFIX_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(length) as usize)
}

/// The whole request body, and the budget it holds; one chunk is passed on as is, several
/// are joined once. The message's declared length is reserved as soon as its prefix
/// arrives, before the rest is read, and what arrives beyond it is reserved too.
async fn read_body(
    mut body: RecvStream,
    limit: usize,
    budget: &Arc<ByteBudget>,
) -> Result<(Bytes, Option<Reservation>), BodyError> {
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut reserved: Option<Reservation> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| BodyError::Gone)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            Some(earlier) => {
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
            None => joined.extend_from_slice(&chunk),
        }
        let head = first.as_deref().unwrap_or(&joined);
        if let Some(declared) = declared_length(head) {
            // What is held is bounded too, whatever the prefix claims.
            let buffered = head.len().saturating_sub(PREFIX_LEN);
            if declared > limit || buffered > limit {
                return Err(BodyError::TooLarge(declared.max(buffered)));
            }
            let wanted = declared.max(buffered);
            match reserved.as_mut() {
                None => reserved = Some(budget.reserve(wanted).map_err(BodyError::OverBudget)?),
                Some(reservation) if reservation.bytes() < wanted => reservation
                    .grow(wanted.saturating_sub(reservation.bytes()))
                    .map_err(BodyError::OverBudget)?,
                Some(_) => {}
            }
        }
    }
    Ok((first.unwrap_or_else(|| joined.freeze()), reserved))
}

/// Answers one ModelInfer call.
pub(super) async fn model_infer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
) {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    // A deadline too far to represent is no deadline.
    let deadline = wire::timeout(&parts.headers).and_then(|t| arrived.checked_add(t));
    let limits = &shared.limits;
    // Held until the call is over: its bytes count against the budget until then.
    let (body, _reserved) = match read_body(body, limits.max_message_size, &shared.inflight).await {
        Ok(read) => read,
        Err(BodyError::TooLarge(declared)) => {
            let max = limits.max_message_size;
            let message = format!("Received message larger than max ({declared} vs. {max})");
            shared.stats.count("", RESOURCE_EXHAUSTED);
            wire::send_status(&mut respond, wire::RESOURCE_EXHAUSTED, &message);
            return;
        }
        Err(BodyError::OverBudget(over)) => {
            let message = format!(
                "the server is holding {} bytes of requests in flight; {} more would pass its \
                 budget of {} (--max-inflight-bytes): try again later",
                over.held, over.wanted, over.limit
            );
            shared.stats.count("", RESOURCE_EXHAUSTED);
            wire::send_status(&mut respond, wire::RESOURCE_EXHAUSTED, &message);
            return;
        }
        Err(BodyError::Gone) => return,
    };
    let message = match wire::unary_message(body.clone()) {
        Ok(Message::Plain(message)) => message,
        Ok(Message::Compressed) => {
            forward(parts, Body::Buffered(body), respond, &shared.backend).await;
            return;
        }
        Err(problem) => {
            wire::send_status(&mut respond, wire::INTERNAL, &problem);
            return;
        }
    };
    // A big body is decoded and checked on the blocking pool, so that other calls on this
    // thread keep moving meanwhile.
    let admission = if message.len() > OFF_THREAD_BYTES {
        let admitting = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || admit(&admitting, message, deadline))
            .await
            .unwrap_or_else(|_| {
                Admission::Refused(String::new(), Error::Internal("decoding failed".into()))
            })
    } else {
        admit(&shared, message, deadline)
    };
    let (model, job) = match admission {
        Admission::Queued(model, job) => (model, job),
        Admission::NotHere => {
            // Unknown, loading or another version: the backend says which, in its words.
            forward(parts, Body::Buffered(body), respond, &shared.backend).await;
            return;
        }
        Admission::Refused(model, error) => {
            return answer_error(&shared, &mut respond, &model, &error)
        }
    };
    match answer(&model.batcher, &job, &mut respond).await {
        Some(Ok(encoded)) => {
            // Counted first, so whoever has the answer finds it counted.
            shared.stats.count(&model.name, "OK");
            wire::send_message(&mut respond, &encoded);
        }
        Some(Err(error)) => answer_error(&shared, &mut respond, &model.name, &error),
        None => shared.stats.count(&model.name, "CANCELLED"),
    }
}

/// What became of a request's message.
enum Admission {
    /// Decoded, checked and queued in its model's batcher.
    Queued(Arc<ServedModel>, Arc<Job>),
    /// It names a model (or version) this front does not serve.
    NotHere,
    /// Refused; the served model's name, or empty when none was found.
    Refused(String, Error),
}

/// Decodes the message, finds its model, applies the signature and queues the job.
fn admit(shared: &Shared, message: Bytes, deadline: Option<Instant>) -> Admission {
    let started = Instant::now();
    let request = match decode_request(message) {
        Ok(request) => request,
        Err(error) => return Admission::Refused(String::new(), error),
    };
    let Some(model) = shared.model(&request.model_name, &request.model_version) else {
        return Admission::NotHere;
    };
    let job = match job_for(request, model.signature.as_ref(), deadline) {
        Ok(job) => Arc::new(job),
        Err(error) => return Admission::Refused(model.name.clone(), error),
    };
    shared
        .stats
        .observe_decode(&model.name, started.elapsed().as_secs_f64());
    if let Err(error) = model.batcher.submit(&job) {
        return Admission::Refused(model.name.clone(), error);
    }
    Admission::Queued(model, job)
}

fn answer_error(shared: &Shared, respond: &mut SendResponse<Bytes>, model: &str, error: &Error) {
    shared.stats.count(model, error.code_name());
    wire::send_status(respond, wire::status_of(error), &error.to_string());
}

/// The job's answer, or its deadline's error; None when the client cancelled the call
/// (the job then leaves the queue).
async fn answer(
    batcher: &Batcher,
    job: &Job,
    respond: &mut SendResponse<Bytes>,
) -> Option<Result<EncodedResponse>> {
    let mut expiry = job
        .deadline()
        .map(|deadline| Box::pin(tokio::time::sleep_until(deadline.into())));
    poll_fn(|cx| {
        if let Poll::Ready(answer) = batcher.poll_answer(job, cx) {
            return Poll::Ready(Some(answer));
        }
        if respond.poll_reset(cx).is_ready() {
            // A client resets the call at its deadline too; that is the deadline's doing.
            let now = Instant::now();
            if job
                .deadline()
                .is_some_and(|d| now.checked_add(DEADLINE_SLACK).is_none_or(|near| d <= near))
            {
                return Poll::Ready(Some(Err(batcher.expire(job))));
            }
            job.abandon();
            return Poll::Ready(None);
        }
        if let Some(sleep) = expiry.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(batcher.expire(job))));
            }
        }
        Poll::Pending
    })
    .await
}
