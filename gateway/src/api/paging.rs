//! `GET /fhir/_page`: a further page of a merged result under a cursor (see
//! [`crate::pipeline::paging`]): any replica serves it, under the rules in force now. A cursor
//! is only good for the user who made the query (else 404, as if it did not exist), and
//! reading a page is audited like the query.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use http::StatusCode;

use super::clinician::ask;
use crate::app::Gateway;
use crate::error::{ApiError, fhir_bundle_response};
use crate::query::Parsed;
use crate::store::cursors::StoredCursor;

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
    let body =
        crate::pipeline::paging::next_page(&gateway, &ask, &cursor, offset, parse_again).await?;
    Ok(fhir_bundle_response(StatusCode::OK, body))
}

/// The query a cursor was made for, parsed again as its route parsed it.
fn parse_again(c: &StoredCursor) -> Result<Parsed, ApiError> {
    let pairs = super::query_pairs(Some(&c.query))?;
    let everything = c
        .path
        .strip_prefix("/Patient/")
        .and_then(|p| p.strip_suffix("/$everything"));
    let parsed = match everything {
        Some(id) => crate::query::parse_everything(id, &pairs, c.lenient)?,
        None => {
            let type_name = c.path.strip_prefix('/').unwrap_or(&c.path);
            crate::query::parse_search(type_name, &pairs, c.lenient)?
        }
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(path: &str, query: &str) -> StoredCursor {
        StoredCursor {
            id: "0".repeat(32),
            user_id: "u".into(),
            role: "R8000".into(),
            organisation: "RBD".into(),
            purpose: "TREAT".into(),
            nhs: "9000000009".into(),
            path: path.into(),
            query: query.into(),
            lenient: false,
            count: 5,
            bundle_id: "b".into(),
            members: Vec::new(),
            expires_at: 0,
        }
    }

    #[test]
    fn a_cursor_s_request_parses_as_its_route_did() {
        let e = parse_again(&cursor(
            "/Patient/9000000009/$everything",
            "_count=5&_type=Observation",
        ))
        .unwrap();
        assert_eq!(e.query.nhs_number.as_str(), "9000000009");
        assert!(matches!(
            e.query.operation,
            crate::query::Operation::Everything { .. }
        ));
        let s = parse_again(&cursor(
            "/Observation",
            "patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000009&_count=5",
        ))
        .unwrap();
        assert_eq!(s.query.nhs_number.as_str(), "9000000009");
        assert!(parse_again(&cursor("/Nonsense", "x=1")).is_err());
    }
}
