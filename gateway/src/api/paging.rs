//! `GET /fhir/_page`: a further page of a merged result kept under a cursor (see
//! [`crate::pipeline::paging`]). A cursor is only good for the user who made the query (else
//! 404, as if it did not exist), and reading a page is audited like the query.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::json;

use super::clinician::ask;
use crate::app::Gateway;
use crate::error::{ApiError, fhir_bundle_response};

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
    if !paged.owned_by(&ask.user) || offset >= paged.len() {
        return Err(gone());
    }
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let body = crate::pipeline::paging::page(&gateway, &paged, offset, &now);
    super::audit::note(&parts, |e| {
        e.patient = Some(paged.nhs.clone());
        e.released = paged.shown(offset);
        e.detail["page_of"] = json!(paged.bundle_id);
    });
    Ok(fhir_bundle_response(StatusCode::OK, body))
}
