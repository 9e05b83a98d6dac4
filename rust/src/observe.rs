//! What the access log and the trace learn of one request, from either front (a ModelInfer
//! call, one message of a ModelStreamInfer stream, an HTTP request): when it arrived, when
//! it was decoded and queued, how its batch ran, and how it ended. Nothing is made for a
//! request while both the access log and tracing are off.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use opentelemetry::trace::SpanContext;

use crate::access_log;
use crate::batch::{Job, JobTiming};
use crate::telemetry::{self, request::Ending, RequestTrace};

/// What a client sends is logged and traced up to these many bytes: its request id, the
/// HTTP method and path, and an error's message (which may quote its input names).
const MAX_ID_BYTES: usize = 256;
const MAX_CALL_BYTES: usize = 1024;
const MAX_ERROR_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes, at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or("")
}

/// One request, observed until it ends.
#[derive(Debug)]
pub struct Observed {
    arrived: Instant,
    time: SystemTime,
    protocol: &'static str,
    call: Cow<'static, str>,
    trace: Option<RequestTrace>,
    decoded: Option<Instant>,
}

/// How a request ended.
pub struct Outcome<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// Its queued job, once it had one.
    pub job: Option<&'a Job>,
    /// The status as its protocol names it ("OK", "INVALID_ARGUMENT", "400", ...).
    pub status: &'a str,
    /// The error's message, when it failed.
    pub error: Option<&'a str>,
}

/// Whether requests are observed at all (the access log or tracing is on).
pub fn observing() -> bool {
    access_log::enabled() || telemetry::enabled()
}

/// Where a request came from, for its observation.
pub struct Arrival<'a> {
    /// The caller's W3C headers, as sent (absent or malformed: a new trace).
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// The server span's name; None: the request is logged, not traced.
    pub span: Option<Cow<'static, str>>,
    /// `grpc`, `rest`, `mlflow` or `flight`.
    pub protocol: &'static str,
    /// The method, or the HTTP method and path, for the log.
    pub call: Cow<'static, str>,
    pub arrived: Instant,
}

impl Observed {
    /// The observation of a request; None while there is nothing to observe for.
    pub fn start(arrival: Arrival<'_>) -> Option<Observed> {
        if !observing() {
            return None;
        }
        let trace = arrival.span.and_then(|span| {
            RequestTrace::start(
                arrival.traceparent,
                arrival.tracestate,
                span,
                arrival.protocol,
                arrival.arrived,
            )
        });
        Some(Observed {
            arrived: arrival.arrived,
            time: SystemTime::now()
                .checked_sub(arrival.arrived.elapsed())
                .unwrap_or_else(SystemTime::now),
            protocol: arrival.protocol,
            call: arrival.call,
            trace,
            decoded: None,
        })
    }

    /// The server span, for the job's batch to link to.
    pub fn trace_context(&self) -> Option<SpanContext> {
        self.trace.as_ref().map(|trace| trace.context().clone())
    }

    /// The W3C `traceparent` of the request's server span, for its response.
    pub fn traceparent(&self) -> Option<String> {
        self.trace.as_ref().map(RequestTrace::traceparent)
    }

    /// Notes that the request was decoded (at `at`).
    pub fn decoded(&mut self, at: Instant) {
        self.decoded = Some(at);
    }

    /// Ends the request's spans and writes its access-log line.
    pub fn finish(self, outcome: &Outcome<'_>) {
        let now = Instant::now();
        let timing = outcome.job.and_then(Job::timing);
        let status = outcome.status;
        let request_id = clip(outcome.job.map_or("", |job| job.id.as_str()), MAX_ID_BYTES);
        let error = outcome.error.map(|error| clip(error, MAX_ERROR_BYTES));
        let rows = outcome.job.and_then(|job| job.rows);
        let mut trace_id = None;
        if let Some(trace) = self.trace {
            if trace.sampled() {
                let queued = outcome.job.and_then(Job::enqueued_at);
                phases(&trace, self.arrived, self.decoded, queued, timing, now);
            }
            if access_log::enabled() {
                trace_id = Some(trace.trace_id());
            }
            trace.finish(
                &Ending {
                    model: outcome.model,
                    version: outcome.version,
                    request_id,
                    rows,
                    status,
                    error,
                },
                now,
            );
        }
        access_log::write(&access_log::Entry {
            time: Some(self.time),
            request_id,
            trace_id: trace_id.as_deref(),
            model: outcome.model,
            version: outcome.version,
            protocol: self.protocol,
            call: clip(&self.call, MAX_CALL_BYTES),
            status,
            rows,
            queue_wait: timing.map(|t| t.queue_wait),
            predict: timing.map(|t| t.predict),
            total: now.saturating_duration_since(self.arrived),
        });
    }
}

/// The call's phases as child spans, as far as it got: decoded, queued, and its batch's
/// run (`timing`) once a batch answered it.
fn phases(
    trace: &RequestTrace,
    arrived: Instant,
    decoded: Option<Instant>,
    queued: Option<Instant>,
    timing: Option<JobTiming>,
    now: Instant,
) {
    let Some(decoded) = decoded else {
        return;
    };
    trace.phase("receive and decode", arrived, decoded);
    let Some(queued) = queued else {
        return;
    };
    trace.phase("admit", decoded, queued);
    if let Some(timing) = timing {
        trace.phase("queue wait", queued, timing.batch_started);
        trace.phase("encode and send", timing.batch_ended, now);
    } else {
        trace.phase("queue wait", queued, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_clipped_at_a_character_boundary() {
        let id = "é".repeat(200);
        let clipped = clip(&id, MAX_ID_BYTES);
        assert!(clipped.len() <= MAX_ID_BYTES);
        assert!(id.starts_with(clipped));
    }
}
