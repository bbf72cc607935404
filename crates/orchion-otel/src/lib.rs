//! Tracing export and trace context.
//!
//! [`exporter`] turns `tracing` spans into OpenTelemetry spans sent over OTLP/HTTP (protobuf,
//! batched) when an endpoint is configured; without one nothing is installed and nothing is
//! sent. [`traceparent`] and [`continue_trace`] carry a trace across processes in the W3C
//! `traceparent` form: the API records the request's context with each job, the agent
//! continues it in the task's span, and the task's process gets it as `TRACEPARENT`.

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where and as what spans are exported.
#[derive(Debug, Clone)]
pub struct Export {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`), or its full traces URL.
    pub endpoint: String,
    pub service_name: String,
    /// `deployment.environment`.
    pub environment: Option<String>,
}

/// The installed exporter; [`Exporter::shutdown`] flushes what is buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends the spans still buffered.
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: flushing traces failed: {e}"),
            Err(e) => eprintln!("warning: flushing traces failed: {e}"),
        }
    }
}

/// The full traces URL of an OTLP/HTTP endpoint: a base URL gets `/v1/traces`, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is defined.
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// The exporter and the `tracing` layer that feeds it; call inside a Tokio runtime.
pub fn exporter<S>(export: &Export) -> Result<(Exporter, impl tracing_subscriber::Layer<S>), String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let url = traces_url(&export.endpoint);
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot export traces to {url}: {e}"))?;
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(environment) = &export.environment {
        attributes.push(KeyValue::new("deployment.environment", environment.clone()));
    }
    let resource = Resource::builder()
        .with_service_name(export.service_name.clone())
        .with_attributes(attributes)
        .build();
    // Exported from the Tokio runtime, where the HTTP client lives.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            spans,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("orchion");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((Exporter { provider }, layer))
}

struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.0.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The current span's trace context as a W3C `traceparent`, when it belongs to a trace (an
/// exporter is installed, or the span continues a trace from elsewhere).
pub fn traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier(None);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// Makes `span` a child of the span `traceparent` names; a malformed value is ignored.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let parent: Context =
        TraceContextPropagator::new().extract(&Carrier(Some(traceparent.to_owned())));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }
}
