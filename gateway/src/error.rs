//! The one place errors become HTTP statuses and FHIR `OperationOutcome`s. Each API error keeps
//! the message for the caller apart from the message for the log; patient data goes in neither.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::auth::AuthError;
use crate::fhir::FHIR_JSON;
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::query::QueryError;

/// Why a request was refused or failed, as a response extension for the audit record.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
    /// For the operational log only.
    pub internal: String,
    /// Adds `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750).
    pub bearer_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, external: impl Into<String>) -> Self {
        let external = external.into();
        ApiError {
            status,
            internal: external.clone(),
            issues: vec![Issue::new(Severity::Error, code, external)],
            bearer_challenge: false,
        }
    }

    pub fn internal(mut self, message: impl Into<String>) -> Self {
        self.internal = message.into();
        self
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", what)
    }

    /// A response whose issues come from a merge (no region answered).
    pub fn from_outcome(
        status: StatusCode,
        issues: Vec<Issue>,
        internal: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            issues,
            internal: internal.into(),
            bearer_challenge: false,
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = StatusCode::BAD_REQUEST;
        let mut issue = Issue::new(Severity::Error, e.issue_code(), e.to_string());
        if let Some(p) = e.parameter() {
            issue = issue.at(p.to_owned());
        }
        ApiError {
            status,
            issues: vec![issue],
            internal: e.to_string(),
            bearer_challenge: false,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Expired => "expired",
            AuthError::Missing => "login",
            _ => "security",
        };
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            issues: vec![Issue::new(Severity::Error, code, e.to_string())],
            internal: e.to_string(),
            bearer_challenge: true,
        }
    }
}

/// A FHIR JSON response.
pub fn fhir_response(status: StatusCode, body: &Value) -> Response {
    // to_vec writes straight into the buffer (to_string goes through fmt::Write, slower).
    fhir_bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

/// [`fhir_response`] for a body already written.
pub fn fhir_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// A FHIR response whose Bundle is sent in chunks as it is read out of its parts (its
/// entries shared, never joined into one buffer); its length is known and said.
pub fn fhir_bundle_response(status: StatusCode, bundle: crate::fhir::BundleBytes) -> Response {
    /// About what a TLS record holds: few writes, and little held beyond the entries.
    const CHUNK: usize = 64 * 1024;
    let len = bundle.len();
    let chunks = bundle
        .chunks(CHUNK)
        .map(|c| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(c)));
    let mut response = (
        status,
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), reason = %self.internal, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), reason = %self.internal, "request refused");
        }
        let mut response = fhir_response(self.status, &operation_outcome(&self.issues));
        // For the audit record of this request (never sent).
        let said = self
            .issues
            .first()
            .map_or_else(String::new, |i| i.diagnostics.clone());
        response
            .extensions_mut()
            .insert(Refusal(if said == self.internal {
                said
            } else {
                format!("{said} ({})", self.internal)
            }));
        if self.bearer_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A Bundle larger than a chunk leaves whole, in several frames, under its exact length.
    #[tokio::test]
    async fn a_bundle_response_sends_the_whole_bundle_under_its_length() {
        let entries: Vec<Value> = (0..2000)
            .map(|i| {
                crate::fhir::entry(
                    &format!("urn:e:{i}"),
                    serde_json::json!({"resourceType": "Basic", "n": i, "text": "x".repeat(100)}),
                    crate::fhir::SearchMode::Match,
                )
            })
            .collect();
        let first = crate::fhir::SerializedEntries::new(&entries);
        let bundle = crate::fhir::searchset_bytes(
            "b",
            "t",
            &[("self", "https://s".into())],
            2000,
            &first,
            &[] as &[serde_json::Value],
        );
        let want = bundle.clone().into_vec();
        assert!(want.len() > 3 * 64 * 1024, "several chunks: {}", want.len());
        let response = fhir_bundle_response(StatusCode::OK, bundle);
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            want.len().to_string().as_str()
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], FHIR_JSON);
        let mut body = response.into_body();
        let (mut frames, mut got) = (0, Vec::new());
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("a frame").into_data() {
                frames += 1;
                got.extend_from_slice(&data);
            }
        }
        assert!(frames > 3, "{frames} frames");
        assert_eq!(got, want);
    }
}
