//! The observation of a gRPC inference call (`crate::observe`): its arrival, read from the
//! router's stamp and the call's W3C headers, and its status by gRPC's names.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use tonic::Code;

use crate::observe::{observing, Arrival, Observed};

/// When a call arrived (set by the router as its headers come in).
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrived(pub Instant);

/// A call's W3C trace context as it came: continued by its spans here, and passed on
/// with the call when another process answers it.
#[derive(Debug, Clone, Default)]
pub(super) struct TraceHeaders {
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
}

impl TraceHeaders {
    /// The W3C headers of a call, when something will use them: the call's own
    /// observation, or a forward to another process (`routed`: some model is routed);
    /// otherwise none are read.
    pub(super) fn of(headers: &HeaderMap, routed: bool) -> TraceHeaders {
        if !routed && !observing() {
            return TraceHeaders::default();
        }
        TraceHeaders {
            traceparent: headers.get("traceparent").cloned(),
            tracestate: headers.get("tracestate").cloned(),
        }
    }
}

fn text(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|value| value.to_str().ok())
}

/// The observation of a call to `path` that arrived at `arrived`, when requests are
/// observed.
pub(super) fn observe_call(
    trace: &TraceHeaders,
    arrived: Instant,
    path: &'static str,
) -> Option<Observed> {
    Observed::start(Arrival {
        traceparent: text(trace.traceparent.as_ref()),
        tracestate: text(trace.tracestate.as_ref()),
        span: Some(Cow::Borrowed(path.strip_prefix('/').unwrap_or(path))),
        protocol: "grpc",
        call: Cow::Borrowed(path.rsplit('/').next().unwrap_or(path)),
        arrived,
    })
}

/// gRPC's name for `code`.
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
