//! Outbound HTTP: fetching a FHIR Bundle with a time limit and a size limit, and turning
//! failures into reasons fit to show a clinician. Errors never include the request URL, whose
//! query string holds an NHS number.

use std::time::Duration;

use serde_json::Value;

use crate::fhir::item::{BundleText, Item};
use crate::record::RecordAnswer;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the answer is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("the answer is not FHIR JSON (Content-Type '{0}')")]
    NotFhir(String),
    #[error("the answer is not valid JSON: {0}")]
    Json(String),
    #[error("the answer is not a FHIR Bundle")]
    NotABundle,
}

/// The error and its causes, without the URL.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// GETs `url` and reads a FHIR JSON body of at most `max_bytes`, all within `timeout`.
pub async fn get_fhir_json(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Value, FetchError> {
    get_fhir_json_with_meta(request, max_bytes, timeout)
        .await
        .map(|(v, _, _)| v)
}

/// [`get_fhir_json`], also giving the body's size and its `Cache-Control`.
pub async fn get_fhir_json_with_meta(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(Value, usize, crate::cache::CacheDirective), FetchError> {
    let (body, directive) = get_fhir_body(request, max_bytes, timeout).await?;
    let len = body.len();
    let value =
        serde_json::from_str::<Value>(&body).map_err(|e| FetchError::Json(e.to_string()))?;
    Ok((value, len, directive))
}

/// GETs `url` and reads a FHIR JSON body of at most `max_bytes`, all within `timeout`, as
/// text (checked to be UTF-8, not yet parsed), with its `Cache-Control`.
pub async fn get_fhir_body(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(String, crate::cache::CacheDirective), FetchError> {
    let ms = timeout.as_millis() as u64;
    tokio::time::timeout(timeout, async move {
        let mut response = request
            .header(http::header::ACCEPT, crate::fhir::FHIR_JSON)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    FetchError::Timeout(ms)
                } else {
                    FetchError::Connect(describe(e))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let directive = crate::cache::parse_cache_control(
            response
                .headers()
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let media = crate::fhir::media_type(response.headers());
        if media != "application/fhir+json" && media != "application/json" {
            return Err(FetchError::NotFhir(media.chars().take(64).collect()));
        }
        // Refuse a declared oversize answer before reading any of it, and stop reading an
        // undeclared one as soon as it passes the limit.
        if response
            .content_length()
            .is_some_and(|n| n > max_bytes as u64)
        {
            return Err(FetchError::TooLarge(max_bytes));
        }
        // Room for a declared length (already checked against the limit), so the body is
        // copied once.
        let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout(ms)
            } else {
                FetchError::Connect(describe(e))
            }
        })? {
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body)
            .map_err(|_| FetchError::Json("the answer is not UTF-8".into()))?;
        Ok((text, directive))
    })
    .await
    .unwrap_or(Err(FetchError::Timeout(ms)))
}

/// Splits a searchset Bundle's text into the Patient resources and the other resources, each
/// other resource kept as its text with its view ([`Item`]); outcome entries are read for
/// what they say of the answer (withheld items, cuts) and left out.
pub fn bundle_to_answer(body: &crate::fhir::item::Source) -> Result<RecordAnswer, FetchError> {
    let bundle = BundleText::parse(body).map_err(|e| FetchError::Json(e.to_string()))?;
    if bundle.resource_type.as_deref() != Some("Bundle") {
        return Err(FetchError::NotABundle);
    }
    let mut answer = RecordAnswer::default();
    for entry in &bundle.entries {
        let Some(resource) = &entry.resource else {
            continue;
        };
        let mode = entry.mode.as_deref();
        if mode == Some("outcome") {
            // A region says it withheld items (never which), or that its answer stopped short:
            // both reach the clinician's warnings.
            let outcome: Value = serde_json::from_str(resource.get()).unwrap_or(Value::Null);
            let issues = outcome.get("issue").and_then(Value::as_array);
            for issue in issues.into_iter().flatten() {
                if issue.get("code").and_then(Value::as_str) == Some("suppressed") {
                    answer.withheld += 1;
                } else if let Some(cut) = crate::record::pages::Cut::from_issue(issue) {
                    crate::record::pages::add_cut(&mut answer.cuts, cut);
                }
            }
            continue;
        }
        let include = mode == Some("include");
        // Each item keeps its place in the one body rather than a copy.
        let item =
            Item::parse_entry(body, resource).map_err(|e| FetchError::Json(e.to_string()))?;
        match item.rtype() {
            "Patient" => answer.patients.push(item.to_value()),
            "OperationOutcome" | "" => {}
            // What the items reference, sent alongside them.
            _ if include => answer.included.push(item),
            _ => answer.items.push(item),
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_patients_from_items_and_skips_outcomes() {
        let b = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Condition", "id": "c"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ], "link": [{"relation": "next", "url": "https://x/next"}]});
        let a = bundle_to_answer(&b.to_string().into()).unwrap();
        assert_eq!((a.patients.len(), a.items.len()), (1, 1));
        assert_eq!(
            bundle_to_answer(&json!({"resourceType": "Patient"}).to_string().into()),
            Err(FetchError::NotABundle)
        );
    }
}
