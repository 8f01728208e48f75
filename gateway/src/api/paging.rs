//! Paging a merged result: the first page answers the query; the rest are kept, for a few
//! minutes, under an opaque cursor, so that `next` links are stable while the clinician reads
//! (the regions are not asked again, and the pages do not shift). A cursor is only good for
//! the user who made the query (else 404, as if it did not exist), and reading a page is
//! audited like the query.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::clinician::ask;
use crate::app::Gateway;
use crate::error::{ApiError, fhir_response};

/// How long a merged result stays pageable.
pub const PAGE_TTL: Duration = Duration::from_secs(300);

/// A merged result kept for paging.
pub struct Paged {
    /// Who may read it: user id, role, organisation, purpose.
    owner: (String, String, String, String),
    nhs: String,
    matches: Vec<Value>,
    /// Provenance and the outcome, repeated on every page.
    others: Vec<Value>,
    count: usize,
    bundle_id: String,
}

pub type PageCache = moka::future::Cache<String, Arc<Paged>>;

pub fn new_cache() -> PageCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(PAGE_TTL)
        .build()
}

fn owner_of(user: &crate::auth::UserContext) -> (String, String, String, String) {
    (
        user.user_id.clone(),
        user.role.clone(),
        user.organisation.clone(),
        user.purpose_of_use.clone().unwrap_or_default(),
    )
}

fn page_bundle(gateway: &Gateway, cursor: &str, p: &Paged, offset: usize) -> Value {
    let base = &gateway.region.base_url;
    let end = (offset + p.count).min(p.matches.len());
    let page = &p.matches[offset.min(end)..end];
    let mut entries: Vec<Value> = page.to_vec();
    entries.extend(crate::merge::page_others(page, &p.others));
    let link = |o: usize| format!("{base}/_page?cursor={cursor}&offset={o}");
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let mut bundle = crate::fhir::searchset(
        &format!("{}-{offset}", p.bundle_id),
        &now,
        &link(offset),
        p.matches.len(),
        entries,
    );
    let mut links = vec![json!({"relation": "self", "url": link(offset)})];
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": link(offset.saturating_sub(p.count))}));
    }
    if end < p.matches.len() {
        links.push(json!({"relation": "next", "url": link(end)}));
    }
    bundle["link"] = Value::Array(links);
    bundle
}

/// Splits a merged Bundle into pages of `count` when it has more matches; returns the first.
pub async fn first_page(
    gateway: &Gateway,
    user: &crate::auth::UserContext,
    nhs: &str,
    mut bundle: Value,
    count: usize,
) -> Value {
    let entries = bundle["entry"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let (matches, others): (Vec<Value>, Vec<Value>) = entries
        .into_iter()
        .partition(|e| e["search"]["mode"] == "match");
    if matches.len() <= count {
        let mut all = matches;
        all.extend(others);
        if !all.is_empty() {
            bundle["entry"] = Value::Array(all);
        }
        return bundle;
    }
    let cursor = uuid::Uuid::new_v4().simple().to_string();
    let paged = Arc::new(Paged {
        owner: owner_of(user),
        nhs: nhs.to_owned(),
        matches,
        others,
        count: count.max(1),
        bundle_id: bundle["id"].as_str().unwrap_or("").to_owned(),
    });
    let first = page_bundle(gateway, &cursor, &paged, 0);
    gateway.pages.insert(cursor, paged).await;
    first
}

/// `GET /fhir/_page?cursor=…&offset=…`: a further page of a merged result.
pub async fn page(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    let gone =
        || ApiError::not_found("this page has expired or does not exist; run the search again");
    let (mut cursor, mut offset) = (None, 0usize);
    for (k, v) in &ask.pairs {
        match k.as_str() {
            "cursor" if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                cursor = Some(v.clone())
            }
            "offset" => offset = v.parse().map_err(|_| gone())?,
            _ => return Err(gone()),
        }
    }
    let cursor = cursor.ok_or_else(gone)?;
    let paged = gateway.pages.get(&cursor).await.ok_or_else(gone)?;
    if paged.owner != owner_of(&ask.user) || offset >= paged.matches.len() {
        return Err(gone());
    }
    let bundle = page_bundle(&gateway, &cursor, &paged, offset);
    let shown = bundle["entry"].as_array().map_or(0, |e| {
        e.iter().filter(|x| x["search"]["mode"] == "match").count()
    });
    super::audit::note(&parts, |e| {
        e.patient = Some(paged.nhs.clone());
        e.released = shown;
        e.detail["page_of"] = json!(paged.bundle_id);
    });
    Ok(fhir_response(StatusCode::OK, &bundle))
}
