//! Outbound HTTP: fetching a FHIR Bundle with a time limit and a size limit, and turning
//! failures into reasons fit to show a clinician. Errors never include the request URL, whose
//! query string holds an NHS number.

use std::time::Duration;

use serde_json::Value;

use crate::fhir::types::resource_type;
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
        let len = body.len();
        let value = parse_json(body).await?;
        Ok((value, len, directive))
    })
    .await
    .unwrap_or(Err(FetchError::Timeout(ms)))
}

/// Answers at least this large are parsed in a task of their own.
const PARSE_APART_BYTES: usize = 8 * 1024;

/// Parses a JSON body. A large one is parsed in a task of its own, so that the answers of
/// several regions, which arrive together, are parsed on every core at once rather than one
/// after another in the task that asked them all.
async fn parse_json(body: Vec<u8>) -> Result<Value, FetchError> {
    let apart = body.len() >= PARSE_APART_BYTES;
    let parse =
        move || serde_json::from_slice::<Value>(&body).map_err(|e| FetchError::Json(e.to_string()));
    if apart {
        tokio::spawn(async move { parse() })
            .await
            .unwrap_or_else(|e| Err(FetchError::Json(format!("the parser failed: {e}"))))
    } else {
        parse()
    }
}

/// Splits a searchset Bundle into the Patient resources and the other resources; outcome
/// entries are left out.
pub fn bundle_to_answer(mut bundle: Value) -> Result<RecordAnswer, FetchError> {
    if resource_type(&bundle) != Some("Bundle") {
        return Err(FetchError::NotABundle);
    }
    let mut answer = RecordAnswer::default();
    // The resources move out of the Bundle (it is dropped): no copy of a large answer.
    let entries = match bundle.get_mut("entry") {
        Some(Value::Array(entries)) => std::mem::take(entries),
        _ => Vec::new(),
    };
    for mut entry in entries {
        let mode = entry.pointer("/search/mode").and_then(Value::as_str);
        if mode == Some("outcome") {
            // A region says it withheld items (never which), or that its answer stopped short:
            // both reach the clinician's warnings.
            let issues = entry.pointer("/resource/issue").and_then(Value::as_array);
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
        let Some(resource) = entry.get_mut("resource").map(Value::take) else {
            continue;
        };
        match resource_type(&resource) {
            Some("Patient") => answer.patients.push(resource),
            Some("OperationOutcome") | None => {}
            // What the items reference, sent alongside them.
            Some(_) if include => answer.included.push(resource),
            Some(_) => answer.items.push(resource),
        }
    }
    Ok(answer)
}

/// The `next` link of a Bundle, if any.
pub fn next_link(bundle: &Value) -> Option<&str> {
    bundle
        .get("link")
        .and_then(Value::as_array)?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        .and_then(|l| l.get("url").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_large_answer_is_parsed_apart_and_its_errors_still_reported() {
        let items: Vec<_> = (0..400)
            .map(|i| json!({"resource": {"resourceType": "Condition", "id": format!("c{i}")}}))
            .collect();
        let body = serde_json::to_vec(&json!({"resourceType": "Bundle", "entry": items})).unwrap();
        assert!(body.len() >= PARSE_APART_BYTES);
        let parsed = parse_json(body.clone()).await.unwrap();
        assert_eq!(parsed["entry"].as_array().map(Vec::len), Some(400));
        // Cut short: not JSON, said as such, whichever task parsed it.
        let cut = body[..body.len() - 3].to_vec();
        assert!(matches!(parse_json(cut).await, Err(FetchError::Json(_))));
        assert!(matches!(
            parse_json(b"{\"a\": ".to_vec()).await,
            Err(FetchError::Json(_))
        ));
    }

    #[test]
    fn splits_patients_from_items_and_skips_outcomes() {
        let b = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Condition", "id": "c"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ], "link": [{"relation": "next", "url": "https://x/next"}]});
        let a = bundle_to_answer(b.clone()).unwrap();
        assert_eq!((a.patients.len(), a.items.len()), (1, 1));
        assert_eq!(next_link(&b), Some("https://x/next"));
        assert_eq!(
            bundle_to_answer(json!({"resourceType": "Patient"})),
            Err(FetchError::NotABundle)
        );
    }
}
