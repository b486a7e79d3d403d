//! Logging and trace export.
//!
//! `RUST_LOG` filters as usual (default `info`); the audit trail is target `audit` and reaches the JSON logs
//! like everything else (`log.format = "json"`). With `--features otel` and `tracing.otlp_endpoint` set,
//! spans are exported over OTLP/HTTP, and an event's trace continues from the producer's `traceparent`
//! through the router to the edge. Without the feature none of that code is built, and `traceparent` is
//! passed along untouched.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TracingConfig};

/// Flushes exported spans when dropped; keep it for the life of the process.
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

pub fn init(log: &LogConfig, tracing_config: &TracingConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what a command prints for the user (a token, the listen line).
    let fmt = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The log filter applies to log output only: exported spans follow their own filter, so quieting the
    // logs (`RUST_LOG=warn`) does not silence traces.
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));

    #[cfg(feature = "otel")]
    {
        let provider = tracing_config.otlp_endpoint.as_deref().and_then(|endpoint| {
            otel::provider(tracing_config, endpoint)
                .map_err(|error| eprintln!("hubcast: trace export is off: {error:#}"))
                .ok()
        });
        let layer = provider.as_ref().map(|provider| {
            use opentelemetry::trace::TracerProvider;
            // hubcast's own spans only: not every span of the HTTP and AMQP libraries beneath.
            let spans =
                tracing_subscriber::filter::Targets::new().with_target("hubcast", tracing::Level::INFO);
            tracing_opentelemetry::layer().with_tracer(provider.tracer("hubcast")).with_filter(spans)
        });
        let _ = registry.with(layer).try_init();
        TelemetryGuard { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = registry.try_init();
        if tracing_config.otlp_endpoint.is_some() {
            tracing::warn!("tracing.otlp_endpoint is set, but this build has no OpenTelemetry (build with --features otel)");
        }
        TelemetryGuard {}
    }
}

/// Makes `span` continue the trace of a producer's `traceparent`.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(traceparent) = traceparent {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(otel::extract(traceparent));
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// The `traceparent` to pass on: `span`'s own when spans are exported, else the incoming one unchanged.
pub fn traceparent_for(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    #[cfg(feature = "otel")]
    if let Some(traceparent) = otel::inject(span) {
        return Some(traceparent);
    }
    let _ = span;
    incoming.map(str::to_owned)
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;

    use anyhow::Context as _;
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::config::TracingConfig;

    pub fn provider(config: &TracingConfig, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
        let protocol = match config.otlp_protocol.as_str() {
            "http/protobuf" => Protocol::HttpBinary,
            "http/json" => Protocol::HttpJson,
            other => anyhow::bail!("tracing.otlp_protocol must be http/protobuf or http/json, not {other:?}"),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .context("building the OTLP exporter")?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
            .build())
    }

    struct Traceparent<'a>(&'a str);

    impl Extractor for Traceparent<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }

    pub fn extract(traceparent: &str) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(&Traceparent(traceparent))
    }

    pub fn inject(span: &tracing::Span) -> Option<String> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove("traceparent")
    }
}
