//! The audit trail's pure core: what a record holds, its canonical form, and the hash chain
//! that makes tampering visible. Each record's hash is SHA-256 over the previous record's hash
//! and the record's canonical JSON (keys sorted, no whitespace), so changing, deleting,
//! reordering or inserting a record breaks the chain at that point, and [`verify`] names it.
//! Stores and the request path use this module; it does no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    ClinicianQuery,
    FederationQuery,
    ConsentChange,
    PolicyChange,
    PolicyActivation,
    RefusedToken,
    RefusedCertificate,
}

/// What one region did for a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionOutcome {
    pub region: String,
    /// "answered", or the failure: "timed out", "unreachable", "refused", ...
    pub outcome: String,
    pub items: usize,
}

/// One audit event, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub time: String,
    pub kind: EventKind,
    pub request_id: String,
    pub user_id: String,
    pub role: String,
    pub organisation: String,
    pub purpose_of_use: String,
    /// The patient's NHS number: the audit store is the one place it is recorded.
    pub patient: Option<String>,
    pub regions: Vec<RegionOutcome>,
    pub released: usize,
    pub withheld: usize,
    pub policies: Vec<String>,
    pub break_glass_reason: Option<String>,
    /// "success", or the refusal or failure.
    pub outcome: String,
    /// Anything else the event needs (the consent directive's id, a policy version, ...).
    pub detail: Value,
}

/// A chained record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event: AuditEvent,
}

/// The canonical bytes hashed for a record: its sequence number, the previous hash and the
/// event, as JSON with sorted keys (serde_json's map is ordered) and no whitespace.
pub fn canonical(seq: u64, prev_hash: &str, event: &AuditEvent) -> String {
    let value = serde_json::json!({"seq": seq, "prev_hash": prev_hash, "event": event});
    crate::fhir::canonical_json(&value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of a record.
pub fn hash(seq: u64, prev_hash: &str, event: &AuditEvent) -> String {
    hex(&Sha256::digest(canonical(seq, prev_hash, event).as_bytes()))
}

/// Chains an event after the record `last` (or first, after [`GENESIS`]).
pub fn chain(last: Option<&AuditRecord>, event: AuditEvent) -> AuditRecord {
    let (seq, prev_hash) = match last {
        Some(r) => (r.seq + 1, r.hash.clone()),
        None => (1, GENESIS.to_owned()),
    };
    let hash = hash(seq, &prev_hash, &event);
    AuditRecord {
        seq,
        prev_hash,
        hash,
        event,
    }
}

/// What is wrong with a trail, at the first place it goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The record's content no longer matches its hash.
    Modified { seq: u64 },
    /// Records are missing before this one (the sequence jumps).
    Deleted { after: u64, missing_from: u64 },
    /// The record is out of order (its sequence number goes backwards or repeats).
    Reordered { seq: u64 },
    /// The record does not follow the one before it (its previous hash is another record's).
    Unlinked { seq: u64 },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Modified { seq } => write!(
                f,
                "record {seq} was modified (its content does not match its hash)"
            ),
            Tamper::Deleted {
                after,
                missing_from,
            } => write!(
                f,
                "records from {missing_from} were deleted (the trail jumps after record {after})"
            ),
            Tamper::Reordered { seq } => write!(f, "record {seq} is out of order"),
            Tamper::Unlinked { seq } => write!(
                f,
                "record {seq} does not follow the record before it (inserted, or its predecessor replaced)"
            ),
        }
    }
}

/// Checks a trail in stored order. `Ok(n)` is the number of records checked.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Result<u64, Tamper> {
    let mut prev_hash = GENESIS.to_owned();
    let mut count = 0;
    for (expected_seq, r) in (1u64..).zip(records) {
        if r.seq < expected_seq {
            return Err(Tamper::Reordered { seq: r.seq });
        }
        if r.seq > expected_seq {
            return Err(Tamper::Deleted {
                after: expected_seq - 1,
                missing_from: expected_seq,
            });
        }
        if hash(r.seq, &r.prev_hash, &r.event) != r.hash {
            return Err(Tamper::Modified { seq: r.seq });
        }
        if r.prev_hash != prev_hash {
            return Err(Tamper::Unlinked { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        count = expected_seq;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            time: format!("2026-01-01T00:00:{:02}Z", n % 60),
            kind: EventKind::ClinicianQuery,
            request_id: format!("req-{n}"),
            user_id: "u1".into(),
            role: "R8000".into(),
            organisation: "RBD".into(),
            purpose_of_use: "TREAT".into(),
            patient: Some("9000000009".into()),
            regions: vec![RegionOutcome {
                region: "dorset".into(),
                outcome: "answered".into(),
                items: n,
            }],
            released: n,
            withheld: 0,
            policies: vec!["direct-care-clinicians".into()],
            break_glass_reason: None,
            outcome: "success".into(),
            detail: json!({"b": 2, "a": {"z": 1, "y": [3, 2]}}),
        }
    }

    fn trail(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let r = chain(out.last(), event(i));
            out.push(r);
        }
        out
    }

    #[test]
    fn an_intact_trail_verifies() {
        assert_eq!(verify(&trail(50)), Ok(50));
        assert_eq!(verify(&Vec::new()), Ok(0));
    }

    #[test]
    fn canonical_form_is_stable_and_sorted() {
        let e = event(1);
        assert_eq!(canonical(1, GENESIS, &e), canonical(1, GENESIS, &e.clone()));
        let text = canonical(1, GENESIS, &e);
        assert!(
            text.contains(r#""detail":{"a":{"y":[3,2],"z":1},"b":2}"#),
            "nested keys sorted: {text}"
        );
        assert!(
            text.starts_with(r#"{"event":"#),
            "top-level keys sorted: {text}"
        );
    }

    #[test]
    fn a_modified_record_is_named() {
        let mut t = trail(10);
        t[4].event.released = 999;
        assert_eq!(verify(&t), Err(Tamper::Modified { seq: 5 }));
    }

    #[test]
    fn a_modified_record_with_a_recomputed_hash_breaks_the_next_link() {
        let mut t = trail(10);
        t[4].event.patient = Some("9434765919".into());
        t[4].hash = hash(t[4].seq, &t[4].prev_hash, &t[4].event);
        assert_eq!(verify(&t), Err(Tamper::Unlinked { seq: 6 }));
    }

    #[test]
    fn deleted_reordered_and_inserted_records_are_named() {
        let mut t = trail(10);
        t.remove(3);
        assert_eq!(
            verify(&t),
            Err(Tamper::Deleted {
                after: 3,
                missing_from: 4
            })
        );

        let mut t = trail(10);
        t.swap(6, 7);
        assert_eq!(
            verify(&t),
            Err(Tamper::Deleted {
                after: 6,
                missing_from: 7
            })
        );

        let mut t = trail(10);
        let dup = t[2].clone();
        t.insert(3, dup);
        assert_eq!(verify(&t), Err(Tamper::Reordered { seq: 3 }));

        // A forged record spliced in with the right sequence numbers still fails its link.
        let mut t = trail(10);
        let forged = chain(None, event(99));
        let mut forged = AuditRecord { seq: 5, ..forged };
        forged.hash = hash(5, &forged.prev_hash, &forged.event);
        t[4] = forged;
        assert_eq!(verify(&t), Err(Tamper::Unlinked { seq: 5 }));
    }

    #[test]
    fn truncation_at_the_end_is_not_visible_from_the_chain_alone() {
        // Why signed checkpoints exist: a trail cut short still verifies by itself.
        let mut t = trail(10);
        t.truncate(7);
        assert_eq!(verify(&t), Ok(7));
    }
}
