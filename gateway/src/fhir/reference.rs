//! References across regions. Pure: no I/O.
//!
//! Every resource the gateway shows is addressed at the gateway itself, under an id that names
//! the region holding it: `{region}.{id}` (a region code has no `.`, so the first `.` splits
//! them, and the whole is still a FHIR id). `GET /fhir/{Type}/{region}.{id}` on the clinician
//! face asks that region for it, so every reference in every answer can be followed.

use serde_json::Value;

/// The types a reference may name and the gateway serves by id: the federated clinical types,
/// and what their items reference (who and where, and what).
pub const REFERENCE_TYPES: [&str; 8] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Medication",
    "Device",
    "Specimen",
];

/// Whether `GET /fhir/{rtype}/{id}` is served.
pub fn served_by_id(rtype: &str) -> bool {
    REFERENCE_TYPES.contains(&rtype) || super::types::ResourceType::parse(rtype).is_some()
}

/// Whether `id` is a FHIR id: 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(is_id_byte)
}

/// A byte a FHIR id may hold.
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// Whether `id` is a region's own id that may stand in a path: a FHIR id that is not `.` or
/// `..` (ids FHIR allows, but path segments every URL resolver removes).
pub fn is_local_id(id: &str) -> bool {
    is_fhir_id(id) && !id.bytes().all(|b| b == b'.')
}

/// The gateway's id for a region's resource, when it fits in a FHIR id.
pub fn federated_id(region: &str, local: &str) -> Option<String> {
    fits_federated_id(region, local).then(|| [region, ".", local].concat())
}

/// Whether `{region}.{local}` is a FHIR id (checked without writing it).
pub fn fits_federated_id(region: &str, local: &str) -> bool {
    region.len() + 1 + local.len() <= 64 && region.bytes().chain(local.bytes()).all(is_id_byte)
}

/// The address at `base` of a region's resource `{t}/{local}`: under its federated id
/// (`{base}/{t}/{region}.{local}`) when it fits, else `None`. Written once into a string of
/// its length: `format!` grows its string as it writes, which a profile of long records
/// found costing more than the writing.
pub fn federated_url(base: &str, t: &str, region: &str, local: &str) -> Option<String> {
    let mut url = String::with_capacity(base.len() + t.len() + region.len() + local.len() + 3);
    write_federated_url(&mut url, base, t, region, local).then_some(url)
}

/// [`federated_url`] appended to `out` (a buffer used again, for addresses copied on into
/// texts of their own); `false`, and nothing written, when the id does not fit.
pub fn write_federated_url(
    out: &mut String,
    base: &str,
    t: &str,
    region: &str,
    local: &str,
) -> bool {
    let fits = fits_federated_id(region, local);
    if fits {
        out.extend([base, "/", t, "/", region, ".", local]);
    }
    fits
}

/// Why a gateway id names no region's resource. Never says more than that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the id is not of the form {{region}}.{{id}}")]
    Shape,
}

/// Splits a gateway id into the region and the region's own id.
pub fn parse_federated_id(id: &str) -> Result<(&str, &str), IdError> {
    if !is_fhir_id(id) {
        return Err(IdError::Shape);
    }
    let (region, local) = id.split_once('.').ok_or(IdError::Shape)?;
    if !crate::tls::devca::valid_region_code(region) || !is_local_id(local) {
        return Err(IdError::Shape);
    }
    Ok((region, local))
}

/// The relative literal references (`Type/id`, optionally `/_history/v`) a resource makes, as
/// (type, id); absolute, contained (`#`) and `urn:` references are not a region's to resolve.
pub fn relative_references(resource: &Value) -> Vec<(&str, &str)> {
    references(resource)
        .into_iter()
        .filter_map(split_relative)
        .collect()
}

/// Every `reference` a resource (or any JSON) holds, at any depth, in order.
pub fn references(value: &Value) -> Vec<&str> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    match x {
                        Value::String(s) if k == "reference" => out.push(s),
                        other => walk(other, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// `Type/id` or `Type/id/_history/v` as (type, id).
pub fn split_relative(r: &str) -> Option<(&str, &str)> {
    let mut parts = r.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    let rest: Vec<&str> = parts.collect();
    (super::is_resource_type_name(t)
        && is_fhir_id(id)
        && (rest.is_empty() || (rest.len() == 2 && rest[0] == "_history")))
        .then_some((t, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The id and the address are checked without being written, and are what writing them
    /// and checking the result gives.
    #[test]
    fn an_id_is_checked_as_written() {
        for (region, local) in [
            ("dorset", "obs-1"),
            ("dorset", ""),
            ("dorset", "a/b"),
            ("dorset", "é"),
            ("dorset", &"x".repeat(57)),
            ("dorset", &"x".repeat(58)),
            ("wes sex", "o"),
        ] {
            let written = format!("{region}.{local}");
            let fits = is_fhir_id(&written);
            assert_eq!(federated_id(region, local), fits.then(|| written.clone()));
            assert_eq!(
                federated_url("https://gw/fhir", "Observation", region, local),
                fits.then(|| format!("https://gw/fhir/Observation/{written}"))
            );
            // Appended after what a buffer holds, or nothing appended.
            let mut out = String::from("kept:");
            let wrote =
                write_federated_url(&mut out, "https://gw/fhir", "Observation", region, local);
            assert_eq!(wrote, fits);
            let expected = match fits {
                true => format!("kept:https://gw/fhir/Observation/{written}"),
                false => "kept:".to_owned(),
            };
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn a_gateway_id_names_the_region_and_its_id() {
        let id = federated_id("dorset", "obs-1.v2").unwrap();
        assert_eq!(id, "dorset.obs-1.v2");
        assert_eq!(parse_federated_id(&id).unwrap(), ("dorset", "obs-1.v2"));
        assert!(
            federated_id("dorset", &"x".repeat(60)).is_none(),
            "too long for an id"
        );
        for crafted in [
            "",
            "dorset",
            "dorset.",
            ".obs",
            "Dorset.obs",
            "dorset..",
            "../etc",
            "dorset.obs/1",
            "dorset.obs%2F1",
            "dor set.obs",
            &"a".repeat(65),
        ] {
            assert!(parse_federated_id(crafted).is_err(), "{crafted:?}");
        }
    }

    #[test]
    fn only_relative_references_are_a_regions_to_resolve() {
        let r = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/pr-1"}, {"reference": "#contained"},
                          {"reference": "https://elsewhere.example/fhir/Practitioner/x"}],
            "basedOn": [{"reference": "ServiceRequest/sr-1/_history/2"}],
            "note": [{"text": "reference"}], "derivedFrom": [{"reference": "urn:uuid:1"}],
            "hasMember": [{"reference": "observation/lower"}, {"reference": "Observation/a/b"}]});
        assert_eq!(
            relative_references(&r),
            vec![
                ("Patient", "p1"),
                ("Practitioner", "pr-1"),
                ("ServiceRequest", "sr-1")
            ]
        );
    }

    #[test]
    fn referenced_types_and_clinical_types_are_served_by_id() {
        assert!(served_by_id("Practitioner"));
        assert!(served_by_id("Observation"));
        assert!(
            !served_by_id("Patient"),
            "the Patient is read by NHS number"
        );
        assert!(!served_by_id("Consent"));
        assert!(!served_by_id("AuditEvent"));
    }
}
