//! Spans over OTLP: when `telemetry.otlp_endpoint` is set, each request is a span (the one
//! [`crate::trace`] names in its `traceparent`), with children for the fan-out, each peer call,
//! the local record, the policy decisions, the merge and the audit write, exported in batches
//! (OTLP over HTTP, JSON) by the `opentelemetry` crates. Without an endpoint every span here is
//! `None`: a branch, no allocation, nothing sent.
//!
//! The gateway's own trace context decides the ids: a request's span has the id its peers are
//! told as their parent, so the spans of every region a query reaches join in one trace.

use std::cell::Cell;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};

use crate::trace::TraceContext;

thread_local! {
    /// The ids the next span built on this thread takes (set just before building it).
    static CHOSEN: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Gives a span the ids the gateway chose for it, else random ones.
#[derive(Debug)]
struct ChosenIds;

impl opentelemetry_sdk::trace::IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN.with(Cell::get).map(|(t, _)| t).unwrap_or_else(|| {
            opentelemetry_sdk::trace::RandomIdGenerator::default().new_trace_id()
        })
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN
            .with(Cell::take)
            .map(|(_, s)| s)
            .unwrap_or_else(|| opentelemetry_sdk::trace::RandomIdGenerator::default().new_span_id())
    }
}

/// The exporter, when one is configured.
pub struct Telemetry {
    tracer: Option<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        opentelemetry_sdk::trace::SdkTracer,
    )>,
}

/// One span; ends when dropped. `None` when nothing is exported.
pub struct Span(Option<opentelemetry_sdk::trace::Span>);

impl Span {
    pub fn none() -> Span {
        Span(None)
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, why: &str) {
        if let Some(s) = &mut self.0 {
            s.set_status(opentelemetry::trace::Status::error(why.to_owned()));
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: {0}")]
pub struct TelemetryError(String);

fn remote(trace_id: [u8; 16], span_id: [u8; 8]) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

impl Telemetry {
    /// Nothing exported.
    pub fn off() -> Telemetry {
        Telemetry { tracer: None }
    }

    /// Exports to `endpoint` (an OTLP/HTTP traces address, e.g.
    /// `http://collector:4318/v1/traces`) every `every`, as `service`.
    pub fn otlp(
        endpoint: &str,
        service: &str,
        every: Duration,
    ) -> Result<Telemetry, TelemetryError> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_scheduled_delay(every)
                    .build(),
            )
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_id_generator(ChosenIds)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "federation-gateway");
        Ok(Telemetry {
            tracer: Some((provider, tracer)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// The span of a request: its ids are `own`'s, its parent `parent` (the caller's span).
    pub fn request(&self, name: String, own: &TraceContext, parent: Option<[u8; 8]>) -> Span {
        let Some((_, tracer)) = &self.tracer else {
            return Span::none();
        };
        let cx = match parent {
            Some(p) => remote(own.trace_id, p),
            None => Context::new(),
        };
        CHOSEN.with(|c| {
            c.set(Some((
                TraceId::from_bytes(own.trace_id),
                SpanId::from_bytes(own.span_id),
            )))
        });
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &cx);
        CHOSEN.with(|c| c.set(None));
        Span(Some(span))
    }

    /// A span of the request whose span `traceparent` names (its child), with ids of its own;
    /// `own` gives them when the span's id must be known (a peer call, whose peer is told it).
    pub fn child(&self, name: &'static str, traceparent: &str, own: Option<&TraceContext>) -> Span {
        let Some((_, tracer)) = &self.tracer else {
            return Span::none();
        };
        let Some(parent) = TraceContext::parse(traceparent) else {
            return Span::none();
        };
        if let Some(own) = own {
            CHOSEN.with(|c| {
                c.set(Some((
                    TraceId::from_bytes(own.trace_id),
                    SpanId::from_bytes(own.span_id),
                )))
            });
        }
        let kind = if own.is_some() {
            SpanKind::Client
        } else {
            SpanKind::Internal
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, &remote(parent.trace_id, parent.span_id));
        CHOSEN.with(|c| c.set(None));
        Span(Some(span))
    }

    /// Sends what is waiting and stops the exporter.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.tracer {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "the last spans could not be exported");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_endpoint_no_span_is_made() {
        let t = Telemetry::off();
        let own = TraceContext::start(crate::trace::random_ids());
        assert!(t.request("GET /fhir".into(), &own, None).0.is_none());
        assert!(t.child("merge", &own.header(), None).0.is_none());
        assert!(!t.enabled());
    }
}
