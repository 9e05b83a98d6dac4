//! The spans of one request and of one batch. A request's server span starts when its
//! headers arrive, under the caller's W3C trace context when it sent one; its phases
//! (receive and decode, admit, queue wait, encode and send) are recorded as child spans once
//! their ends are known, from instants taken on the way, so that nothing is allocated for a
//! request that is not sampled. A batch's span starts a trace of its own, linked to the
//! server span of every request in it.

use std::borrow::Cow;
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Span;

use super::{tracer, Clock};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The two W3C headers, however the transport holds them.
struct W3cHeaders<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// A request's server span, open until `finish`.
#[derive(Debug)]
pub struct RequestTrace {
    span: Span,
    context: SpanContext,
    clock: Clock,
}

/// How a request ended, for its span.
pub struct Ending<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub request_id: &'a str,
    pub rows: Option<usize>,
    /// The status as the protocol says it ("OK", "INVALID_ARGUMENT", "200", ...).
    pub status: &'a str,
    /// The error's message, when the request failed.
    pub error: Option<&'a str>,
}

impl RequestTrace {
    /// The server span of a request that arrived at `arrived` with these W3C headers
    /// (either may be absent or malformed: a new trace starts then). None when tracing is
    /// off.
    pub fn start(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        name: Cow<'static, str>,
        protocol: &'static str,
        arrived: Instant,
    ) -> Option<RequestTrace> {
        let tracer = tracer()?;
        let clock = Clock::now();
        let parent = TraceContextPropagator::new().extract(&W3cHeaders {
            traceparent,
            tracestate,
        });
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(clock.wall(arrived))
            .with_attributes([KeyValue::new("arrowsmith.protocol", protocol)])
            .start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        Some(RequestTrace {
            span,
            context,
            clock,
        })
    }

    /// The server span's context: the parent of its phases, the target of batch links.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether this request's spans are recorded.
    pub fn sampled(&self) -> bool {
        self.context.is_sampled()
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.context.trace_id().to_string()
    }

    /// The W3C `traceparent` naming the server span, for the response and for calls made
    /// on the request's behalf.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.context.trace_id(),
            self.context.span_id(),
            self.context.trace_flags().to_u8()
        )
    }

    /// A phase of the request, from `from` to `to`, as a child span.
    pub fn phase(&self, name: &'static str, from: Instant, to: Instant) {
        let Some(tracer) = tracer().filter(|_| self.sampled()) else {
            return;
        };
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(self.clock.wall(from))
            .start_with_context(tracer, &parent);
        span.end_with_timestamp(self.clock.wall(to));
    }

    /// Ends the server span at `at` with what the request came to.
    pub fn finish(mut self, ending: &Ending<'_>, at: Instant) {
        if self.sampled() {
            let mut attributes = vec![
                KeyValue::new("arrowsmith.model.name", ending.model.to_owned()),
                KeyValue::new("arrowsmith.model.version", ending.version.to_owned()),
                KeyValue::new("arrowsmith.request.id", ending.request_id.to_owned()),
                KeyValue::new("arrowsmith.status", ending.status.to_owned()),
            ];
            if let Some(rows) = ending.rows.and_then(|rows| i64::try_from(rows).ok()) {
                attributes.push(KeyValue::new("arrowsmith.rows", rows));
            }
            if let Some(error) = ending.error {
                attributes.push(KeyValue::new("error.message", error.to_owned()));
                self.span.set_status(Status::error(error.to_owned()));
            }
            self.span.set_attributes(attributes);
        }
        self.span.end_with_timestamp(self.clock.wall(at));
    }
}

/// A batch's span: the model's predict for every request in it.
#[derive(Debug)]
pub struct BatchTrace {
    span: Span,
    clock: Clock,
}

impl BatchTrace {
    /// The span of a batch started at `started`, linked to `requests`' server spans. None
    /// when tracing is off or none of them is sampled.
    pub fn start<'a>(
        requests: impl Iterator<Item = &'a SpanContext>,
        model: &str,
        version: &str,
        rows: usize,
        started: Instant,
    ) -> Option<BatchTrace> {
        let tracer = tracer()?;
        let links: Vec<Link> = requests
            .filter(|context| context.is_sampled())
            .map(|context| Link::with_context(context.clone()))
            .collect();
        if links.is_empty() {
            return None;
        }
        let clock = Clock::now();
        let count = i64::try_from(links.len()).unwrap_or(i64::MAX);
        let span = tracer
            .span_builder("predict")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.wall(started))
            .with_links(links)
            .with_attributes([
                KeyValue::new("arrowsmith.model.name", model.to_owned()),
                KeyValue::new("arrowsmith.model.version", version.to_owned()),
                KeyValue::new(
                    "arrowsmith.batch.rows",
                    i64::try_from(rows).unwrap_or(i64::MAX),
                ),
                KeyValue::new("arrowsmith.batch.requests", count),
            ])
            .start_with_context(tracer, &Context::new());
        Some(BatchTrace { span, clock })
    }

    /// Ends the span at `at`; `error` is the model's failure, if it failed.
    pub fn end(mut self, error: Option<&str>, at: Instant) {
        if let Some(error) = error {
            self.span
                .set_attribute(KeyValue::new("error.message", error.to_owned()));
            self.span.set_status(Status::error(error.to_owned()));
        }
        self.span.end_with_timestamp(self.clock.wall(at));
    }
}
