//! Optional export of spans over OTLP/HTTP, with the OpenTelemetry crates. Off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; when off, each
//! place that would make a span checks one `OnceLock` and does nothing else.
//!
//! Ferry's spans carry the ids it already passes on in `traceparent` ([`crate::trace`]), so a
//! collector joins them with the caller's spans and the guest's: `ferry.invoke` (a call a caller
//! waits for), `ferry.attempt` (an asynchronous attempt), `ferry.callback` and `ferry.receive`
//! (a trigger accepting an asynchronous invocation).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

use crate::trace::TraceContext;

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Starts the exporter when the environment asks for one; returns the endpoint it exports to.
/// Call it outside the async runtime (the exporter's HTTP client is a blocking one, on the
/// exporter's own thread).
pub fn init_from_env() -> anyhow::Result<Option<String>> {
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: Ferry exports spans over \
             OTLP/HTTP, as http/protobuf (the default) or http/json"
        ),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export spans to {endpoint}: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("ferry");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        // Exporting is the operator's choice: every span is kept, whatever the caller's flag.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("ferry");
    let _ = EXPORTER.set(Exporter { provider, tracer });
    crate::trace::set_sampled(true);
    Ok(Some(endpoint))
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Exports what is left and stops the exporter (at the end of `serve`, outside the runtime).
pub fn shutdown() {
    if let Some(e) = EXPORTER.get() {
        if let Err(err) = e.provider.shutdown() {
            tracing::warn!(error = %err, "exporting the last spans failed");
        }
    }
}

/// What kind of span.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A request a caller waits for.
    Server,
    /// A message or queued work taken.
    Consumer,
    /// A request Ferry sends.
    Client,
}

/// Exports one finished span of `trace` (its own span id; its parent the caller's) that began
/// `took` ago. Does nothing when export is off.
pub fn span(
    name: &'static str,
    kind: Kind,
    trace: &TraceContext,
    took: Duration,
    attributes: Vec<KeyValue>,
    error: Option<String>,
) {
    let Some(e) = EXPORTER.get() else {
        return;
    };
    let end = SystemTime::now();
    let start = end.checked_sub(took).unwrap_or(end);
    let mut builder = e
        .tracer
        .span_builder(name)
        .with_kind(match kind {
            Kind::Server => SpanKind::Server,
            Kind::Consumer => SpanKind::Consumer,
            Kind::Client => SpanKind::Client,
        })
        .with_span_id(SpanId::from_bytes(trace.span_id.to_be_bytes()))
        .with_start_time(start)
        .with_attributes(attributes);
    let trace_id = TraceId::from_bytes(trace.trace_id.to_be_bytes());
    let parent = match trace.parent_id {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(parent.to_be_bytes()),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        )),
        None => {
            builder = builder.with_trace_id(trace_id);
            Context::new()
        }
    };
    let mut span = builder.start_with_context(&e.tracer, &parent);
    match error {
        Some(message) => span.set_status(Status::error(message)),
        None => span.set_status(Status::Ok),
    }
    span.end_with_timestamp(end);
}

/// When a span began, for [`span`]: `Some` only while export is on (so nothing is measured
/// otherwise).
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}
