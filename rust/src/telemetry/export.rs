//! The OTLP exporter (opentelemetry-otlp: tonic for gRPC, hyper for HTTP/protobuf), driven
//! on a small runtime of its own. The SDK's batch processor exports from its own thread and
//! polls without a reactor; both clients need tokio's, so each export runs to completion on
//! this runtime, off every thread that serves requests.

use std::fmt;
use std::time::Duration;

use opentelemetry_otlp::{SpanExporter as OtlpExporter, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tokio::runtime::Runtime;

use super::{sampler, Protocol, Settings};

/// Spans at most waiting for export; past it, new ones are dropped (and counted by the SDK).
const MAX_QUEUED_SPANS: usize = 65_536;
const MAX_EXPORT_BATCH: usize = 2_048;
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// The tracer provider: the settings' sampler and service name, spans exported in batches
/// from the SDK's own thread.
pub(super) fn provider(settings: &Settings) -> Result<SdkTracerProvider, String> {
    let processor = BatchSpanProcessor::builder(exporter(settings)?)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_max_export_batch_size(MAX_EXPORT_BATCH)
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler::sampler(settings.sampler, settings.ratio))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
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

fn exporter(settings: &Settings) -> Result<OnRuntime, String> {
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
