//! The operations listener: Prometheus metrics, liveness and readiness.

use http::StatusCode;

use crate::common::*;

async fn get_text(url: String) -> (StatusCode, String) {
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

pub fn ops_url(fed: &TestFederation, region: usize, path: &str) -> String {
    format!("http://{}{path}", fed.regions[region].operations)
}

#[tokio::test]
async fn metrics_show_peers_cache_policy_audit_and_certificates_without_patient_data() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    for _ in 0..2 {
        assert_eq!(
            fed.search_as_clinician("Condition").await.status,
            StatusCode::OK
        );
    }
    let (status, text) = get_text(ops_url(&fed, 0, "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "gateway_peer_request_duration_seconds_bucket{peer=\"hampshire\",outcome=\"answered\"",
        "gateway_peer_circuit_state{peer=\"wiltshire\"} 0",
        "gateway_cache_hits_total 2",
        "gateway_cache_misses_total 2",
        // The repeat was shown the view kept from the first.
        "gateway_cache_views_served_total 1",
        "gateway_cache_views 1",
        "gateway_cache_bytes",
        "gateway_policy_items_total{decision_point=\"view\",decision=\"released\"}",
        "gateway_audit_write_duration_seconds_count{outcome=\"written\"} 2",
        "gateway_certificate_expiry_seconds{certificate=\"server\"}",
        "gateway_requests_in_flight",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(
        !text.contains(&fed.everywhere()),
        "no NHS number in metrics"
    );
    // The answering region counts what it released.
    let (_, text) = get_text(ops_url(&fed, 1, "/metrics")).await;
    assert!(
        text.contains("gateway_policy_items_total{decision_point=\"release\""),
        "{text}"
    );

    assert_eq!(
        get_text(ops_url(&fed, 0, "/healthz")).await.0,
        StatusCode::OK
    );
    let (status, text) = get_text(ops_url(&fed, 0, "/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("store: answering"));
}
