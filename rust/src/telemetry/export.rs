//! The OTLP exporter (opentelemetry-otlp: tonic for gRPC, hyper for HTTP/protobuf), driven
//! on a small runtime of its own. The SDK's batch processor exports from its own thread and
//! polls without a reactor; both clients need tokio's, so each export runs to completion on
//! this runtime, off every thread that serves requests.

use std::fmt;
use std::time::Duration;

use opentelemetry_otlp::{SpanExporter as OtlpExporter, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::runtime::Runtime;

use super::Settings;

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

/// The OTLP exporter and the runtime its exports run on.
pub(super) struct OnRuntime {
    exporter: OtlpExporter,
    runtime: Runtime,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime")
            .field("exporter", &self.exporter)
            .finish_non_exhaustive()
    }
}

pub(super) fn exporter(settings: &Settings) -> Result<OnRuntime, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("arrowsmith-otlp")
        .build()
        .map_err(|error| format!("tracing: cannot start the exporter's runtime: {error}"))?;
    // tonic's channel is made inside the runtime, which then drives its connection.
    let built = {
        let _inside = runtime.enter();
        match settings.protocol {
            Protocol::Grpc => OtlpExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .build(),
            Protocol::HttpProtobuf => OtlpExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .build(),
        }
    };
    let exporter = built.map_err(|error| {
        format!(
            "tracing: cannot export to {} ({:?}): {error}",
            settings.endpoint, settings.protocol
        )
    })?;
    Ok(OnRuntime { exporter, runtime })
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = self.runtime.block_on(self.exporter.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}
