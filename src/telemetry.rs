//! Logs and traces. Logs: text or JSON, filtered by RUST_LOG (default `info`). Traces: `tracing`
//! spans, exported over OTLP/HTTP (protobuf) when the standard OpenTelemetry variables name an
//! endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the service
//! name and resource come from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`), off otherwise
//! or when `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none`. A broken exporter is reported
//! and tracing stays off; it never stops the process.

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Flushes pending spans when dropped (at the end of `main`).
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

fn otlp_wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    // The standard variables (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) are read by the
    // builder; the pod and namespace come from the downward API (POD_NAME, POD_NAMESPACE).
    let mut resource = Resource::builder().with_service_name(
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pod-graceful-drain".into()),
    );
    for (key, var) in [
        ("k8s.pod.name", "POD_NAME"),
        ("k8s.namespace.name", "POD_NAMESPACE"),
    ] {
        if let Ok(v) = std::env::var(var) {
            resource = resource.with_attribute(opentelemetry::KeyValue::new(key, v));
        }
    }
    let resource = resource.build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

pub fn init(format: LogFormat) -> Guard {
    // kube-leader-election reports every renewal at info; only its warnings matter here.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            "kube_leader_election=warn"
                .parse()
                .expect("static directive"),
        );
    let (provider, problem) = if otlp_wanted() {
        match provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("pod-graceful-drain")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false),
            )
            .try_init(),
    };
    match (&provider, problem) {
        (Some(_), _) => tracing::info!("exporting traces over OTLP"),
        (None, Some(e)) => tracing::warn!(error = %e, "OTLP exporter not built; tracing stays off"),
        (None, None) => {}
    }
    Guard(provider)
}

/// The span context a W3C `traceparent` names, if it is well-formed (anything else is no
/// context: a malformed header starts a trace of its own).
pub fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::TextMapPropagator as _;
    // The header's size is bounded by the server's header limits; a traceparent is 55 bytes.
    if traceparent.len() > 128 {
        return None;
    }
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the caller's trace (the API server propagates its own). Only before
/// the span is first entered: its OpenTelemetry span starts then, with the parent it has.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote_context)
        && let Err(e) = span.set_parent(cx)
    {
        tracing::debug!(error = %e, "the caller's trace context could not be set");
    }
}

/// Links the current span to the one a stored `traceparent` names (the request that scheduled
/// this work, minutes ago and maybe on another replica).
pub fn link_to(traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote_context) {
        tracing::Span::current().add_link(cx.span().span_context().clone());
    }
}

/// The W3C `traceparent` of the current span, when traces are exported (recorded in the drain
/// schedule, so the deferred delete can be found from the request that caused it).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_is_a_remote_parent_and_anything_else_is_none() {
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a valid traceparent");
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            &"0".repeat(10_000),
        ] {
            assert!(remote_context(bad).is_none(), "{bad:.40}");
        }
    }

    #[test]
    fn a_span_continues_the_callers_trace_only_when_told_before_it_starts() {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let trace_of = |span: &tracing::Span| {
                format!("{:032x}", span.context().span().span_context().trace_id())
            };
            let told_first = tracing::info_span!("admission");
            continue_trace(&told_first, Some(&traceparent));
            told_first.in_scope(|| assert_eq!(trace_of(&tracing::Span::current()), TRACE));
            // Told once started (what `#[instrument]` on the handler did): a trace of its own.
            let told_late = tracing::info_span!("admission");
            told_late.in_scope(|| {
                continue_trace(&tracing::Span::current(), Some(&traceparent));
                assert_ne!(trace_of(&tracing::Span::current()), TRACE);
            });
        });
    }
}
