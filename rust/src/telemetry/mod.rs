//! OpenTelemetry tracing: the process's tracer, made once by `init` from the settings the
//! server resolved (OTLP endpoint and protocol, service name, sampler). Until then, and in a
//! server that never calls it, `tracer()` is None and every request skips tracing at the
//! cost of one atomic load.
//!
//! Spans are handed to the SDK's batch processor, which exports them from its own thread:
//! a request never waits for an export, and a full queue drops spans, not requests.

#[cfg(feature = "otlp")]
mod export;
pub mod request;
#[cfg(feature = "otlp")]
mod sampler;

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use request::{BatchTrace, RequestTrace};

/// The standard samplers (OpenTelemetry's SDK configuration names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl SamplerChoice {
    /// The sampler named `name` (`always_on`, `parentbased_traceidratio`, ...).
    pub fn parse(name: &str) -> Option<SamplerChoice> {
        Some(match name {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::TraceIdRatio,
            "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerChoice::ParentBasedTraceIdRatio,
            _ => return None,
        })
    }
}

/// How spans are sent (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(name: &str) -> Option<Protocol> {
        match name {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// What `init` needs: resolved already (the `OTEL_*` variables and flags are read by the
/// server; OTLP headers and timeouts the exporter reads from the environment itself).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where spans go: the full `/v1/traces` URL for HTTP, the collector's URL for gRPC.
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: SamplerChoice,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub ratio: f64,
}

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Turns tracing on for the rest of the process. A second call changes nothing and says so.
#[cfg(feature = "otlp")]
pub fn init(settings: &Settings) -> Result<(), String> {
    use opentelemetry::trace::TracerProvider as _;

    if TRACING.get().is_some() {
        return Err("tracing is already set up in this process".to_owned());
    }
    let provider = export::provider(settings)?;
    let tracer = provider.tracer("arrowsmith");
    TRACING
        .set(Tracing { provider, tracer })
        .map_err(|_| "tracing is already set up in this process".to_owned())
}

/// Without the `otlp` feature there is nowhere to send spans.
#[cfg(not(feature = "otlp"))]
pub fn init(_settings: &Settings) -> Result<(), String> {
    Err("this build has no OTLP exporter (the `otlp` feature)".to_owned())
}

/// The tracer, once tracing is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACING.get().map(|tracing| &tracing.tracer)
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// Exports what is still queued (at most `timeout`), then stops the exporter: for the end
/// of the process.
pub fn shutdown(timeout: Duration) {
    if let Some(tracing) = TRACING.get() {
        // A collector that is down must not hold the process: the error is only reported.
        if let Err(error) = tracing.provider.shutdown_with_timeout(timeout) {
            eprintln!("arrowsmith: tracing: spans not exported at shutdown: {error}");
        }
    }
}

/// Monotonic instants as wall-clock times, for span timestamps: anchored once per request
/// so that its spans keep their exact order and durations.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    at: Instant,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }

    /// The wall-clock time of `instant`.
    pub fn wall(&self, instant: Instant) -> SystemTime {
        if instant >= self.at {
            self.wall
                .checked_add(instant.duration_since(self.at))
                .unwrap_or(self.wall)
        } else {
            self.wall
                .checked_sub(self.at.duration_since(instant))
                .unwrap_or(self.wall)
        }
    }
}
