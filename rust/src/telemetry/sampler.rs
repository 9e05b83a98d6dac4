//! Which spans are recorded: the standard samplers by their `OTEL_TRACES_SAMPLER` names,
//! and one rule of our own for batch spans. A batch belongs to no single trace: it starts a
//! trace of its own with a link to each request that rode in it, and it is recorded exactly
//! when one of those requests is, so that a sampled request always finds its batch and an
//! unsampled load makes no batch spans.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use super::SamplerChoice;

pub(super) fn sampler(choice: SamplerChoice, ratio: f64) -> LinkAware {
    let standard = match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerChoice::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerChoice::ParentBasedTraceIdRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    };
    LinkAware { standard }
}

/// The standard sampler, except for a root span with links (a batch): recorded when any
/// linked span was.
#[derive(Debug, Clone)]
pub(super) struct LinkAware {
    standard: Sampler,
}

impl ShouldSample for LinkAware {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let root = parent_context.is_none_or(|cx| !cx.has_active_span());
        if root && !links.is_empty() {
            let sampled = links.iter().any(|link| link.span_context.is_sampled());
            return SamplingResult {
                decision: if sampled {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.standard
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}
