//! Consent directives through the clinician face: record (`POST /fhir/Consent`), read
//! (`GET /fhir/Consent/{id}`, `GET /fhir/Consent?patient.identifier=…`) and withdraw or amend
//! (`PUT /fhir/Consent/{id}`, typically with status `inactive`). Only users the policy allows
//! to `manage-consent` may; a change applies from the next query.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode};
use policy::DecisionPoint;
use serde_json::Value;

use super::clinician::{Ask, ask};
use super::query_pairs;
use crate::access::Gatekeeper;
use crate::app::Gateway;
use crate::consent::validate_directive;
use crate::error::{ApiError, fhir_response};
use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};
use crate::fhir::{self, SearchMode};
use crate::store::StoredConsent;

/// The largest directive accepted.
pub const MAX_CONSENT_BYTES: usize = 64 * 1024;

/// The request's user, if the policy lets them manage consent directives here (Cedar action
/// `manage-consent`, decided like every other request-level action by the Gatekeeper).
fn consent_ask(
    gateway: &Gateway,
    parts: &http::request::Parts,
    raw: Option<&str>,
) -> Result<Ask, ApiError> {
    let ask = ask(gateway, parts, raw)?;
    use crate::auth::scopes::Interaction;
    let interaction = match parts.method {
        http::Method::POST => Interaction::Create,
        http::Method::PUT => Interaction::Update,
        _ => ask.interaction(),
    };
    if !ask.user.may("Consent", interaction) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token's scopes do not grant this on Consent ({interaction:?})"),
        ));
    }
    let policies = gateway.policies.load_full();
    let region = &gateway.region.code;
    let d = Gatekeeper::new(&policies, &ask.user, region, DecisionPoint::View, region)
        .request_decision("manage-consent", "Consent", region);
    if d.allowed {
        Ok(ask)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your role may not manage consent directives",
        )
        .internal(format!("manage-consent refused ({:?})", d.policies)))
    }
}

/// Reads a directive body: FHIR JSON, at most [`MAX_CONSENT_BYTES`] (read no further).
async fn read_body(headers: &http::HeaderMap, body: axum::body::Body) -> Result<Value, ApiError> {
    let media = crate::fhir::media_type(headers);
    if media != "application/fhir+json" && media != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "send the Consent as application/fhir+json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            format!("a Consent may be at most {MAX_CONSENT_BYTES} bytes"),
        )
    };
    let body = axum::body::to_bytes(body, MAX_CONSENT_BYTES)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the consent store is unavailable; nothing was changed",
    )
    .internal(e.to_string())
}

async fn save(
    gateway: &Gateway,
    ask: &Ask,
    id: String,
    version: i64,
    nhs: &NhsNumber,
    mut resource: Value,
) -> Result<Value, ApiError> {
    ask.within_launch(nhs.as_str())?;
    let now = fhir::instant(time::OffsetDateTime::now_utc());
    resource["id"] = Value::String(id.clone());
    resource["meta"] = serde_json::json!({"versionId": version.to_string(), "lastUpdated": now});
    ask.note(|e| {
        e.patient = Some(nhs.as_str().to_owned());
        e.detail["consent_id"] = Value::String(id.clone());
        e.detail["consent_version"] = Value::from(version);
        e.detail["consent_status"] = resource["status"].clone();
    });
    // The change is recorded before it is made: no directive changes without its record.
    let status = if version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ask.write_audit_ahead(gateway, status).await?;
    let stored = StoredConsent {
        id,
        nhs: nhs.to_string(),
        version,
        resource: resource.clone(),
        recorded_by: ask.user.user_id.clone(),
        recorded_at: now,
    };
    gateway.consents.put(stored).await.map_err(store_error)?;
    super::federation::announce_consent_change(gateway, nhs).await;
    tracing::info!(request_id = %ask.request_id, version, "consent directive recorded");
    Ok(resource)
}

pub async fn create(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let ask = consent_ask(&gateway, &parts, None)?;
    let resource = read_body(&parts.headers, body).await?;
    let nhs = validate_directive(&resource)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invariant", e.to_string()))?;
    let id = uuid::Uuid::new_v4().to_string();
    let saved = save(&gateway, &ask, id.clone(), 1, &nhs, resource).await?;
    let mut response = fhir_response(StatusCode::CREATED, &saved);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}/Consent/{id}/_history/1",
        gateway.region.base_url
    )) {
        response.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(response)
}

pub async fn update(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let ask = consent_ask(&gateway, &parts, None)?;
    let resource = read_body(&parts.headers, body).await?;
    if resource
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|body_id| body_id != id)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the resource id does not match the URL",
        ));
    }
    let nhs = validate_directive(&resource)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invariant", e.to_string()))?;
    let existing = gateway
        .consents
        .get(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no consent directive with this id"))?;
    if existing.nhs != nhs.as_str() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invariant",
            "a directive cannot be moved to another patient",
        ));
    }
    let saved = save(&gateway, &ask, id, existing.version + 1, &nhs, resource).await?;
    Ok(fhir_response(StatusCode::OK, &saved))
}

pub async fn read(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = consent_ask(&gateway, &parts, None)?;
    let found = gateway
        .consents
        .get(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no consent directive with this id"))?;
    ask.note(|e| e.patient = Some(found.nhs.clone()));
    if !ask.user.may_ask_about(&found.nhs) {
        return Err(ApiError::not_found("no consent directive with this id"));
    }
    Ok(fhir_response(StatusCode::OK, &found.resource))
}

/// The patient's directives: those recorded here, then those in the regional record.
pub async fn search(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = consent_ask(&gateway, &parts, raw.as_deref())?;
    let pairs = query_pairs(raw.as_deref())?;
    let mut nhs = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "patient.identifier" => {
                let number = v
                    .strip_prefix(&format!("{NHS_NUMBER_SYSTEM}|"))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid",
                            "patient.identifier must use the NHS number system",
                        )
                        .internal("bad consent search")
                    })?;
                nhs = Some(NhsNumber::parse(number).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        format!("patient.identifier: {e}"),
                    )
                })?);
            }
            "_format" => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!(
                        "unknown search parameter '{}' for Consent",
                        crate::fhir::echo(other, 64)
                    ),
                ));
            }
        }
    }
    let nhs = nhs.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "name the patient: patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS number}",
        )
    })?;
    ask.note(|e| e.patient = Some(nhs.as_str().to_owned()));
    ask.within_launch(nhs.as_str())?;
    let stored = gateway
        .consents
        .for_patient(nhs.as_str())
        .await
        .map_err(store_error)?;
    let in_record = gateway
        .local
        .consents(&nhs)
        .await
        .map_err(super::record_unreadable)?;
    let base = &gateway.region.base_url;
    let mut entries: Vec<Value> = stored
        .into_iter()
        .map(|c| {
            fhir::entry(
                &format!("{base}/Consent/{}", c.id),
                c.resource,
                SearchMode::Match,
            )
        })
        .collect();
    entries.extend(in_record.into_iter().map(|c| {
        let url = format!("{base}/Consent/{}", c["id"].as_str().unwrap_or(""));
        fhir::entry(&url, c, SearchMode::Match)
    }));
    let now = fhir::instant(time::OffsetDateTime::now_utc());
    let total = entries.len();
    Ok(fhir_response(
        StatusCode::OK,
        &fhir::searchset(
            &ask.request_id,
            &now,
            &format!("{base}/Consent"),
            total,
            entries,
        ),
    ))
}
