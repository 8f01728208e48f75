//! The governance console: one page, its script and its style sheet, embedded in the binary
//! (no CDN, works offline) and served at `/admin/` on the clinician face. The page holds no
//! data: it signs in with a bearer token and calls the governance API
//! ([`crate::api::governance`]) like any other client, so the API's checks and audit apply.
//!
//! Written by hand (plain HTML, CSS and JavaScript, no framework or build step): the page is
//! small, and a bundler would add a Node build to every `cargo build`.

use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, header};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Only this gateway's own script, style and API; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    page_headers(body.into_response(), content_type, CSP, "no-cache")
}

/// The headers every page of the gateway's (the console, the one view) is served with: its
/// type, its Content-Security-Policy, no sniffing, no referrer, never framed.
pub(crate) fn page_headers(
    mut r: Response,
    content_type: &'static str,
    csp: &str,
    cache: &'static str,
) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// The ids of a page's form controls (input, select, textarea) that no `<label for=...>`
/// names, and the start of any control without an id (accessibility).
#[cfg(test)]
pub(crate) fn unlabelled_controls(html: &str) -> Vec<String> {
    let mut unlabelled = Vec::new();
    for part in html.split('<').skip(1) {
        let tag = part.split_whitespace().next().unwrap_or("");
        if !["input", "select", "textarea"].contains(&tag) {
            continue;
        }
        let Some(id) = part.split("id=\"").nth(1).and_then(|r| r.split('"').next()) else {
            unlabelled.push(part.chars().take(40).collect::<String>());
            continue;
        };
        if !html.contains(&format!("for=\"{id}\"")) {
            unlabelled.push(id.to_owned());
        }
    }
    unlabelled
}

/// The console's routes (no authentication: they carry no data).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/admin/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/admin/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "no remote assets"
            );
            assert!(
                !text.contains("innerHTML"),
                "server text goes in as text only"
            );
        }
        // Every asset the page names is served.
        for (tag, path) in [("src", "/admin/console.js"), ("href", "/admin/console.css")] {
            assert!(INDEX.contains(&format!("{tag}=\"{path}\"")));
        }
    }

    #[test]
    fn every_form_control_has_a_label() {
        let unlabelled = unlabelled_controls(INDEX);
        assert!(unlabelled.is_empty(), "unlabelled controls: {unlabelled:?}");
    }
}
