//! The clinician's one view: a page at `/view/` that a partner system (the GP system, the
//! hospital's record) opens in the patient's context by SMART App Launch (EHR launch), or a
//! clinician opens directly and searches by NHS number (standalone launch).
//!
//! The page is a public client of the region's identity provider (authorization code with
//! PKCE) and holds its token in memory only. It reads the record through the gateway's own FHIR
//! API, like any other client, so every view is decided by policy and audited exactly as any
//! other query is. The server side here only serves the files, the page's settings and a
//! strict Content-Security-Policy; it holds no patient data.
//!
//! Written by hand as plain ES modules (no framework, no build step), as the console is: the
//! pure part (`model.js`: check digits, outcomes, sections, the timeline) is tested by node's
//! own test runner, the rest (`view.js`) drives the DOM and is tested in a real browser.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::app::Gateway;
use crate::config::ConfigView;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("view.js");
const MODEL: &str = include_str!("model.js");
const STYLE: &str = include_str!("view.css");

/// The page's Content-Security-Policy: its own script, style and API, and the identity
/// provider's token endpoint (where the page exchanges its code). Nothing inline, nothing
/// remote, never framed. Pure.
pub fn content_security_policy(token_endpoint: Option<&str>) -> String {
    let idp = token_endpoint
        .and_then(|t| url::Url::parse(t).ok())
        .filter(|u| u.scheme() == "https")
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null");
    let connect = match idp {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// What the page needs to sign in: its client id and scopes, the region, and whether the
/// region's identity provider is known (else the page offers a pasted token, as the console
/// does, for the demo and for deployments without single sign-on). Pure.
pub fn page_settings(view: &ConfigView, region_code: &str, region_name: &str, idp: bool) -> Value {
    json!({
        "client_id": view.client_id,
        "ehr_scope": view.ehr_scope,
        "standalone_scope": view.standalone_scope,
        "region": {"code": region_code, "name": region_name},
        "identity_provider": idp,
    })
}

/// The launch id and the returning code are in the page's address: neither leaves by
/// Referer (no-referrer), and nothing is cached (no-store).
fn with_headers(r: Response, content_type: &'static str, csp: &str) -> Response {
    crate::console::page_headers(r, content_type, csp, "no-store")
}

fn csp_of(gateway: &Gateway) -> String {
    let endpoints = crate::api::smart::oauth_endpoints(gateway);
    content_security_policy(endpoints.as_ref().map(|e| e.token.as_str()))
}

async fn settings(State(gateway): State<Arc<Gateway>>) -> Response {
    let idp = crate::api::smart::oauth_endpoints(&gateway).is_some();
    let body = page_settings(
        &gateway.config.view,
        &gateway.region.code,
        &gateway.region.name,
        idp,
    );
    with_headers(
        axum::Json(body).into_response(),
        "application/json",
        &csp_of(&gateway),
    )
}

/// The page's files: path, type, text.
const FILES: [(&str, &str, &str); 4] = [
    ("/view/", "text/html; charset=utf-8", INDEX),
    ("/view/view.js", "text/javascript; charset=utf-8", SCRIPT),
    ("/view/model.js", "text/javascript; charset=utf-8", MODEL),
    ("/view/view.css", "text/css; charset=utf-8", STYLE),
];

/// The page's routes (no authentication: they carry no data).
pub fn router() -> Router<Arc<Gateway>> {
    let mut router = Router::new()
        .route("/view", get(|| async { Redirect::permanent("/view/") }))
        .route("/view/settings", get(settings));
    for (path, content_type, body) in FILES {
        router = router.route(
            path,
            get(move |State(g): State<Arc<Gateway>>| async move {
                with_headers(body.into_response(), content_type, &csp_of(&g))
            }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_the_gateway_and_the_token_endpoint() {
        let csp = content_security_policy(Some("https://idp.example:8443/oauth/token"));
        assert!(
            csp.contains("connect-src 'self' https://idp.example:8443;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
        // A token endpoint that is not HTTPS is not trusted with a code.
        let plain = content_security_policy(Some("http://idp.example/token"));
        assert!(plain.contains("connect-src 'self';"), "{plain}");
        assert!(content_security_policy(None).contains("connect-src 'self';"));
        assert!(content_security_policy(Some("not a url")).contains("connect-src 'self';"));
    }

    #[test]
    fn the_settings_say_how_to_sign_in_and_nothing_else() {
        let s = page_settings(&ConfigView::default(), "dorset", "Dorset", true);
        assert_eq!(s["client_id"], "one-view");
        assert!(s["ehr_scope"].as_str().unwrap().contains("launch"));
        assert!(!s["standalone_scope"].as_str().unwrap().contains("launch"));
        assert_eq!(s["identity_provider"], true);
        assert_eq!(s["region"]["code"], "dorset");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_writes_only_text() {
        for text in [INDEX, SCRIPT, MODEL, STYLE] {
            // Code systems are named by URL; nothing is loaded from one.
            for remote in [
                "src=\"http",
                "href=\"http",
                "url(http",
                "url('http",
                "from 'http",
                "import('http",
                "@import",
                "fetch('http",
                "fetch(`http",
            ] {
                assert!(!text.contains(remote), "no remote assets: {remote}");
            }
            for forbidden in ["innerHTML", "outerHTML", "insertAdjacentHTML", "eval("] {
                assert!(
                    !text.contains(forbidden),
                    "server text goes in as text only"
                );
            }
            // Tokens and patient data stay in memory: the only storage is the sign-in round
            // trip's state and PKCE verifier, in sessionStorage, removed on return.
            assert!(!text.contains("localStorage"), "no local storage");
            assert!(!text.contains("document.cookie"), "no cookies");
        }
        assert!(INDEX.contains(r#"src="/view/view.js""#));
        assert!(INDEX.contains(r#"href="/view/view.css""#));
        assert!(SCRIPT.contains(r#"from './model.js'"#));
    }

    #[test]
    fn every_form_control_has_a_label() {
        let unlabelled = crate::console::unlabelled_controls(INDEX);
        assert!(unlabelled.is_empty(), "unlabelled controls: {unlabelled:?}");
    }
}
