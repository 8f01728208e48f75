//! Operational metrics in the Prometheus text format, served on the operations listener
//! (`/metrics`), with `/healthz` and `/readyz`.
//!
//! Each gateway has its own recorder (metrics-exporter-prometheus), not the process-global
//! one, so that several gateways in one process (the demo, the tests) keep their figures
//! apart. No metric carries patient data: labels are region codes, outcomes and names.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::app::Gateway;

static METADATA: Metadata<'static> =
    Metadata::new("gateway", metrics::Level::INFO, Some(module_path!()));

/// Seconds buckets for latencies, from a millisecond to the longest deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        Metrics { recorder }
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// A peer's answer: its latency, and its failure reason if any.
    pub fn peer_answer(&self, peer: &str, elapsed: Duration, failure: Option<&str>) {
        let outcome = failure.unwrap_or("answered");
        self.histogram(
            "gateway_peer_request_duration_seconds",
            &[("peer", peer), ("outcome", outcome)],
        )
        .record(elapsed.as_secs_f64());
        if let Some(reason) = failure {
            self.counter(
                "gateway_peer_failures_total",
                &[("peer", peer), ("reason", reason)],
            )
            .increment(1);
        }
    }

    /// Items a decision point released and withheld (`view` or `release`).
    pub fn policy_items(&self, decision_point: &str, released: usize, withheld: usize) {
        for (decision, n) in [("released", released), ("withheld", withheld)] {
            self.counter(
                "gateway_policy_items_total",
                &[("decision_point", decision_point), ("decision", decision)],
            )
            .increment(n as u64);
        }
    }

    /// The text exposition, with the gauges read at this moment set first.
    pub async fn render(&self, gateway: &Gateway) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        for (face, stats) in [
            ("clinician", &gateway.connections.clinician),
            ("federation", &gateway.connections.federation),
        ] {
            self.gauge("gateway_connections_open", &[("face", face)])
                .set(stats.open.load(Relaxed) as f64);
            self.counter("gateway_connections_refused_total", &[("face", face)])
                .absolute(stats.refused.load(Relaxed));
            self.counter("gateway_connections_idle_closed_total", &[("face", face)])
                .absolute(stats.idle_closed.load(Relaxed));
        }
        for p in &gateway.peers {
            self.gauge("gateway_peer_circuit_state", &[("peer", &p.info.code)])
                .set(f64::from(p.breaker.state().level()));
        }
        if let Some(cache) = &gateway.cache {
            let c = &cache.counters;
            use std::sync::atomic::Ordering::Relaxed;
            self.gauge("gateway_cache_bytes", &[])
                .set(cache.weighted_size().await as f64);
            self.gauge("gateway_cache_entries", &[])
                .set(cache.entry_count() as f64);
            // Counters kept by the cache itself, exposed as their current totals.
            self.counter("gateway_cache_hits_total", &[])
                .absolute(c.hits.load(Relaxed));
            self.counter("gateway_cache_misses_total", &[])
                .absolute(c.misses.load(Relaxed));
            self.counter("gateway_cache_stale_served_total", &[])
                .absolute(c.stale_served.load(Relaxed));
            self.counter("gateway_cache_views_served_total", &[])
                .absolute(c.views_served.load(Relaxed));
            self.gauge("gateway_cache_views", &[])
                .set(cache.views.entry_count() as f64);
        }
        let now = time::OffsetDateTime::now_utc();
        for (name, not_after) in &gateway.tls.load().expiry {
            self.gauge(
                "gateway_certificate_expiry_seconds",
                &[("certificate", name)],
            )
            .set((*not_after - now).whole_seconds() as f64);
        }
        self.gauge("gateway_requests_in_flight", &[])
            .set(gateway.in_flight.load(std::sync::atomic::Ordering::Relaxed) as f64);
        self.recorder.handle().render()
    }

    /// Drains the samples histograms hold until they are folded into buckets. The recorder
    /// keeps every sample until then, and without this a gateway nobody scrapes grows by
    /// every request (found by the memory soak of `bench/run`).
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

/// Runs [`Metrics::upkeep`] every five seconds until `stop` turns true.
pub async fn upkeep_periodically(
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => gateway.metrics.upkeep(),
        }
    }
}

/// The operations listener's router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(gateway)
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let text = gateway.metrics.render(&gateway).await;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Ready when a policy set is loaded and the store answers within a second.
async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let policies = !gateway.policies.load().policy_ids().is_empty();
    let store = matches!(
        tokio::time::timeout(Duration::from_secs(1), gateway.audit.head()).await,
        Ok(Ok(_))
    );
    let body = format!(
        "policies: {}\nstore: {}\n",
        if policies { "loaded" } else { "missing" },
        if store { "answering" } else { "not answering" }
    );
    let status = if policies && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}
