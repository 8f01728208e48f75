//! SMART on FHIR's discovery for clients: `GET /fhir/.well-known/smart-configuration`, what
//! the CapabilityStatement's `rest.security` says in short, from the identity provider's own
//! discovery document (or the configured endpoints when its keys come from files).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::app::Gateway;
use crate::error::ApiError;
use crate::fhir::OAuthEndpoints;

/// The identity provider's authorize and token endpoints, when known.
pub fn oauth_endpoints(gateway: &Gateway) -> Option<OAuthEndpoints> {
    let auth = &gateway.config.auth;
    let meta = gateway.key_fetcher.as_ref().and_then(|f| f.metadata());
    let authorize = auth
        .authorization_endpoint
        .clone()
        .or_else(|| meta.as_ref().and_then(|m| m.authorization_endpoint.clone()))?;
    let token = auth
        .token_endpoint
        .clone()
        .or_else(|| meta.as_ref().and_then(|m| m.token_endpoint.clone()))?;
    Some(OAuthEndpoints { authorize, token })
}

/// The SMART configuration document. Pure.
pub fn configuration(
    issuer: &str,
    endpoints: &OAuthEndpoints,
    provider: Option<&crate::auth::discovery::ProviderMetadata>,
) -> Value {
    let auth_methods: Vec<String> = provider
        .map(|p| p.token_endpoint_auth_methods_supported.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["private_key_jwt".into()]);
    let grants: Vec<String> = provider
        .map(|p| p.grant_types_supported.clone())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| vec!["authorization_code".into(), "client_credentials".into()]);
    let mut capabilities = vec![
        "launch-ehr",
        "launch-standalone",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "client-public",
    ];
    if auth_methods.iter().any(|m| m == "private_key_jwt") {
        capabilities.push("client-confidential-asymmetric");
    }
    if auth_methods.iter().any(|m| m.starts_with("client_secret")) {
        capabilities.push("client-confidential-symmetric");
    }
    if provider.is_some() {
        capabilities.push("sso-openid-connect");
    }
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "token_endpoint_auth_methods_supported": auth_methods,
        "grant_types_supported": grants,
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "offline_access",
            "user/*.rs", "user/*.cruds", "patient/*.rs", "system/*.rs",
            "user/*.read", "patient/*.read",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    });
    if let Some(p) = provider {
        doc["jwks_uri"] = json!(p.jwks_uri);
        for (key, value) in [
            ("introspection_endpoint", &p.introspection_endpoint),
            ("revocation_endpoint", &p.revocation_endpoint),
            ("registration_endpoint", &p.registration_endpoint),
        ] {
            if let Some(v) = value {
                doc[key] = json!(v);
            }
        }
    }
    doc
}

/// `GET /fhir/.well-known/smart-configuration` (no token: it says how to get one).
pub async fn smart_configuration(State(gateway): State<Arc<Gateway>>) -> Response {
    let Some(endpoints) = oauth_endpoints(&gateway) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "this region's identity provider endpoints are not known yet (auth.discovery, or auth.authorization_endpoint and auth.token_endpoint)",
        )
        .into_response();
    };
    let provider = gateway.key_fetcher.as_ref().and_then(|f| f.metadata());
    let doc = configuration(&gateway.config.auth.issuer, &endpoints, provider.as_deref());
    let mut response = axum::Json(doc).into_response();
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_says_where_to_get_a_token_and_what_is_supported() {
        let endpoints = OAuthEndpoints {
            authorize: "https://idp/auth".into(),
            token: "https://idp/token".into(),
        };
        let provider: crate::auth::discovery::ProviderMetadata = serde_json::from_value(json!({
            "issuer": "https://idp",
            "jwks_uri": "https://idp/jwks",
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "introspection_endpoint": "https://idp/introspect",
        }))
        .unwrap();
        let doc = configuration("https://idp", &endpoints, Some(&provider));
        assert_eq!(doc["token_endpoint"], "https://idp/token");
        assert_eq!(doc["authorization_endpoint"], "https://idp/auth");
        assert_eq!(doc["jwks_uri"], "https://idp/jwks");
        assert_eq!(doc["introspection_endpoint"], "https://idp/introspect");
        let caps: Vec<&str> = doc["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for c in [
            "launch-ehr",
            "permission-v2",
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "sso-openid-connect",
        ] {
            assert!(caps.contains(&c), "{c}");
        }
        let files_only = configuration("https://idp", &endpoints, None);
        assert!(files_only.get("jwks_uri").is_none());
        assert!(!files_only.to_string().contains("sso-openid-connect"));
    }
}
