//! Logging and traces. Log a failure once, where it is handled; never put secrets or
//! payloads in a log line or a span; field names are dotted (`event.id`, `endpoint.id`).
//! An error is logged with its causes (`error = error_chain(&error)`, or `{:#}` of an
//! `anyhow::Error`): a typed error's own message names only the step that failed.
//!
//! Spans are `tracing` spans; when `telemetry.otlp_endpoint` is set they are also
//! exported as OpenTelemetry spans (OTLP/HTTP), and a span that continues a trace from
//! outside (an HTTP request's or a message's `traceparent`) is joined to it with
//! [`continue_trace`]. The [`TraceParent`] a process hands on (a message header, a
//! webhook request) names its own span then, so one trace covers the ATS, ingest, the
//! deliverer and the receiver; without export, it names a fresh id in the same trace.

use crate::domain::trace::TraceParent;
use crate::settings::{LogFormat, LogSettings, TelemetrySettings};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP span exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// What must outlive the process's work: the span exporter, flushed by [`Self::shutdown`].
#[derive(Debug, Default)]
#[must_use = "spans still buffered are lost unless shutdown() is called"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            // The SDK's shutdown blocks on its export thread.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(error = %error, "spans not exported at shutdown");
            }
        }
    }
}

/// Installs the global subscriber: logs as `log` says, and spans exported over OTLP when
/// `telemetry` names an endpoint (`service` is the exported `service.name`). Safe to
/// call more than once (tests): later calls keep the first subscriber.
pub fn init(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
    service: &'static str,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_target(false)
            .json()
            .flatten_event(true)
            .boxed(),
        // Colour only on a terminal: escape codes in a file or a log collector are noise.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .compact()
            .boxed(),
    };
    let tracer_provider = match telemetry.traces_url() {
        None => None,
        Some(url) => Some(tracer_provider(&url, telemetry.sample_ratio, service)?),
    };
    // The log filter applies to logs only: spans are exported whatever the log level.
    let spans = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hookline"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("hookline", tracing::Level::INFO),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init();
    match installed {
        Ok(()) => Ok(Telemetry { tracer_provider }),
        // Another subscriber is in place (a test process): it keeps the spans.
        Err(_) => Ok(Telemetry::default()),
    }
}

fn tracer_provider(
    url: &str,
    sample_ratio: f64,
    service: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// Joins `span` to the trace `parent` came from (an HTTP request's or a message's
/// `traceparent`; none starts a trace) and returns the `traceparent` naming `span` —
/// when spans are not exported, a fresh id in the same trace. Records the trace id in the
/// span's `trace_id` field, so the log lines inside carry it.
pub fn continue_trace(span: &Span, parent: Option<TraceParent>) -> TraceParent {
    if let Some(parent) = parent {
        // Fails only when spans are not exported (or the span is filtered out).
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(
            SpanContext::new(
                TraceId::from_bytes(parent.trace_id.to_be_bytes()),
                SpanId::from_bytes(parent.parent_id.to_be_bytes()),
                if parent.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            ),
        ));
    }
    let trace = traceparent_of(span).unwrap_or_else(|| match parent {
        Some(parent) => parent.child(rand::random()),
        None => TraceParent::root((rand::random(), rand::random())),
    });
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    trace
}

/// The `traceparent` naming `span`, a child of the trace its parents belong to, or of
/// `fallback` when spans are not exported.
pub fn child_trace(span: &Span, fallback: TraceParent) -> TraceParent {
    traceparent_of(span).unwrap_or_else(|| fallback.child(rand::random()))
}

/// The exported span's own context, if spans are exported.
fn traceparent_of(span: &Span) -> Option<TraceParent> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
        parent_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
        sampled: span_context.is_sampled(),
    })
}

/// An error and its causes, outermost first, joined with ": " — the form `{:#}` gives
/// an `anyhow::Error`, for errors that are borrowed or whose fields are still needed.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_outermost_first() {
        let error = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(error_chain(&error), "outer: middle: inner");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
