//! The audit trail's pure core: what a record holds, its canonical form, and the hash chain
//! that makes tampering visible. Each record's hash is SHA-256 over the RFC 8785 (JSON
//! Canonicalization Scheme) form of `{"event": ..., "prev_hash": ..., "seq": ...}`, so anyone
//! can check the chain with another language's JCS library, and changing, deleting,
//! reordering or inserting a record breaks the chain at that point; [`verify`] names it.
//! Stores and the request path use this module; it does no I/O.

pub mod fhir;
pub mod refusals;
pub mod slot;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    ClinicianQuery,
    FederationQuery,
    ConsentChange,
    PolicyChange,
    PolicyActivation,
    RefusedToken,
    RefusedCertificate,
    /// A request from a source address over its rate, refused before authentication.
    RefusedRateLimit,
    /// Governance staff reading the trail itself.
    AuditRead,
    /// Governance staff emptying the response cache.
    CachePurge,
    /// Governance staff reading policy versions, simulating, or looking up consent.
    GovernanceRead,
    /// Governance staff marking a break-glass access reviewed.
    BreakGlassReview,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::ClinicianQuery,
        EventKind::FederationQuery,
        EventKind::ConsentChange,
        EventKind::PolicyChange,
        EventKind::PolicyActivation,
        EventKind::RefusedToken,
        EventKind::RefusedCertificate,
        EventKind::RefusedRateLimit,
        EventKind::AuditRead,
        EventKind::CachePurge,
        EventKind::GovernanceRead,
        EventKind::BreakGlassReview,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClinicianQuery => "clinician-query",
            EventKind::FederationQuery => "federation-query",
            EventKind::ConsentChange => "consent-change",
            EventKind::PolicyChange => "policy-change",
            EventKind::PolicyActivation => "policy-activation",
            EventKind::RefusedToken => "refused-token",
            EventKind::RefusedCertificate => "refused-certificate",
            EventKind::RefusedRateLimit => "refused-rate-limit",
            EventKind::AuditRead => "audit-read",
            EventKind::CachePurge => "cache-purge",
            EventKind::GovernanceRead => "governance-read",
            EventKind::BreakGlassReview => "break-glass-review",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
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
    /// The HTTP status answered (0 for events that answer no request, such as a reload).
    pub status: u16,
    /// "success", or the refusal or failure.
    pub outcome: String,
    /// Anything else the event needs (the consent directive's id, a policy version, ...).
    pub detail: Value,
}

impl AuditEvent {
    /// An event of `kind` at `time` with everything else empty, to fill in.
    pub fn new(kind: EventKind, time: String, request_id: &str) -> Self {
        AuditEvent {
            time,
            kind,
            request_id: request_id.to_owned(),
            user_id: String::new(),
            role: String::new(),
            organisation: String::new(),
            purpose_of_use: String::new(),
            patient: None,
            regions: Vec::new(),
            released: 0,
            withheld: 0,
            policies: Vec::new(),
            break_glass_reason: None,
            status: 0,
            outcome: "success".into(),
            detail: Value::Null,
        }
    }

    /// The IHE/FHIR outcome code: 0 success, 4 minor failure (a refusal, a bad request),
    /// 8 serious failure (this gateway or a region could not answer).
    pub fn outcome_code(&self) -> u8 {
        if self.outcome == "success" {
            0
        } else if self.status >= 500 {
            8
        } else {
            4
        }
    }

    /// The FHIR RESTful interaction the event records (its BALP `subtype`, a code of
    /// `http://hl7.org/fhir/restful-interaction`) and its action code (C, R, U, D, E).
    pub fn interaction(&self) -> (&'static str, &'static str) {
        let method = self.detail["method"].as_str().unwrap_or("GET");
        let query = self.detail["query"].as_str().unwrap_or("");
        match self.kind {
            EventKind::ConsentChange if method == "POST" => ("create", "C"),
            EventKind::ConsentChange => ("update", "U"),
            EventKind::PolicyChange => ("create", "C"),
            EventKind::PolicyActivation | EventKind::BreakGlassReview => ("update", "U"),
            EventKind::CachePurge => ("delete", "D"),
            _ if query.contains("$everything") => ("operation", "E"),
            _ if method == "GET" && !query.contains('?') && query.matches('/').count() >= 2 => {
                ("read", "R")
            }
            _ => ("search", "E"),
        }
    }

    /// The event's time in Unix seconds (0 when unreadable), for range filters.
    pub fn unix_time(&self) -> i64 {
        time::OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339)
            .map_or(0, |t| t.unix_timestamp())
    }

    /// The regions named by the event, for filters: those asked, and the calling region of a
    /// federation query.
    pub fn region_codes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.regions.iter().map(|r| r.region.clone()).collect();
        if let Some(r) = self.detail.get("calling_region").and_then(Value::as_str) {
            out.push(r.to_owned());
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A chained record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event: AuditEvent,
}

/// The canonical bytes hashed for a record: RFC 8785 JSON of its sequence number, the previous
/// hash and the event.
pub fn canonical(seq: u64, prev_hash: &str, event: &AuditEvent) -> String {
    canonical_with(seq, prev_hash, &canonical_event(event))
}

/// The RFC 8785 JSON of an event alone (serde_json_canonicalizer: keys in UTF-16 order, the
/// ECMAScript number form, the minimal string escapes). Writers compute it before taking
/// their turn in the chain, so that the serialisation runs in parallel and only the hashing
/// is serial.
///
/// The event's own shape is fixed, so its members are written here in RFC 8785 order, each
/// string with serde_json's escapes (which are RFC 8785's: `\"`, `\\`, the five short forms
/// and `\u00xx` in lower case for other control characters, nothing else escaped); only
/// `detail`, which may hold anything, goes through the library. A profile of a kept view's
/// repeat put the library's pass over the whole event at 9 % of the request's CPU. The test
/// `the_canonical_form_is_the_library_s_for_any_event` holds the two to the same bytes.
pub fn canonical_event(event: &AuditEvent) -> String {
    use Member::*;
    // Keys in UTF-16 code unit order (all ASCII here, so byte order).
    let members = [
        (
            "break_glass_reason",
            Text(event.break_glass_reason.as_deref()),
        ),
        ("detail", Json(&event.detail)),
        ("kind", Text(Some(event.kind.as_str()))),
        ("organisation", Text(Some(&event.organisation))),
        ("outcome", Text(Some(&event.outcome))),
        ("patient", Text(event.patient.as_deref())),
        ("policies", Texts(&event.policies)),
        ("purpose_of_use", Text(Some(&event.purpose_of_use))),
        ("regions", Regions(&event.regions)),
        ("released", Number(event.released as u64)),
        ("request_id", Text(Some(&event.request_id))),
        ("role", Text(Some(&event.role))),
        ("status", Number(u64::from(event.status))),
        ("time", Text(Some(&event.time))),
        ("user_id", Text(Some(&event.user_id))),
        ("withheld", Number(event.withheld as u64)),
    ];
    let mut out = Vec::with_capacity(384 + 64 * event.regions.len());
    for (i, (key, value)) in members.iter().enumerate() {
        out.push(if i == 0 { b'{' } else { b',' });
        write_text(&mut out, key);
        out.push(b':');
        value.write(&mut out);
    }
    out.push(b'}');
    // Only whole strings and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_else(|_| "null".to_owned())
}

/// A member's value in an event's canonical form.
enum Member<'a> {
    /// A string, or `null`.
    Text(Option<&'a str>),
    Texts(&'a [String]),
    Number(u64),
    Regions(&'a [RegionOutcome]),
    /// Anything: the library's form.
    Json(&'a Value),
}

impl Member<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Member::Text(Some(s)) => write_text(out, s),
            Member::Text(None) => out.extend_from_slice(b"null"),
            Member::Texts(list) => write_array(out, list, |out, s| write_text(out, s)),
            Member::Number(n) => write_number(out, *n),
            Member::Regions(list) => write_array(out, list, |out, r| {
                out.extend_from_slice(br#"{"items":"#);
                write_number(out, r.items as u64);
                out.extend_from_slice(br#","outcome":"#);
                write_text(out, &r.outcome);
                out.extend_from_slice(br#","region":"#);
                write_text(out, &r.region);
                out.push(b'}');
            }),
            Member::Json(v) => match serde_json_canonicalizer::to_vec(v) {
                Ok(text) => out.extend_from_slice(&text),
                Err(_) => out.extend_from_slice(b"null"),
            },
        }
    }
}

/// A string with serde_json's escapes, which are RFC 8785's.
fn write_text(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// RFC 8785 writes numbers as ECMAScript doubles: an integer is its digits up to 2^53, and past
/// it (no count reaches it) takes the library's double form.
fn write_number(out: &mut Vec<u8>, n: u64) {
    let double = (n > 1 << 53)
        .then(|| serde_json_canonicalizer::to_vec(&n).ok())
        .flatten();
    match double {
        Some(text) => out.extend_from_slice(&text),
        None => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

/// A JSON array of `items`, each written by `each`.
fn write_array<T>(out: &mut Vec<u8>, items: &[T], each: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

/// [`canonical`] from an event's canonical JSON: the keys `event`, `prev_hash`, `seq` are
/// already in RFC 8785 order, a hash is plain hex and a sequence number an integer, so the
/// whole is RFC 8785 JSON too.
pub fn canonical_with(seq: u64, prev_hash: &str, canonical_event: &str) -> String {
    format!(r#"{{"event":{canonical_event},"prev_hash":"{prev_hash}","seq":{seq}}}"#)
}

/// [`hash`] from an event's canonical JSON.
pub fn hash_with(seq: u64, prev_hash: &str, canonical_event: &str) -> String {
    hex(&Sha256::digest(
        canonical_with(seq, prev_hash, canonical_event).as_bytes(),
    ))
}

/// The form records were hashed in before RFC 8785: keys sorted by their UTF-8 bytes and
/// serde_json's numbers and escapes. It agrees with RFC 8785 for every record this gateway
/// writes unless a detail holds a fraction or a key outside the Basic Multilingual Plane;
/// [`Verifier`] accepts it so that a trail begun before the change still verifies.
fn legacy_hash(seq: u64, prev_hash: &str, event: &AuditEvent) -> String {
    let event = crate::fhir::canonical_json(&serde_json::to_value(event).unwrap_or(Value::Null));
    hash_with(seq, prev_hash, &event)
}

/// Lower-case hex of bytes (hashes in the trail, digests elsewhere).
pub fn hex(bytes: &[u8]) -> String {
    // Not a `format!` a byte: every audit record writes two hashes, on the request's path.
    hex::encode(bytes)
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
    let mut v = Verifier::default();
    for r in records {
        v.push(r)?;
    }
    Ok(v.checked())
}

/// Checks a trail a page at a time, so a long trail need not fit in memory.
#[derive(Debug, Clone)]
pub struct Verifier {
    prev_hash: String,
    next_seq: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev_hash: GENESIS.to_owned(),
            next_seq: 1,
        }
    }
}

impl Verifier {
    /// Checks the next record in stored order.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Tamper> {
        if r.seq < self.next_seq {
            return Err(Tamper::Reordered { seq: r.seq });
        }
        if r.seq > self.next_seq {
            return Err(Tamper::Deleted {
                after: self.next_seq - 1,
                missing_from: self.next_seq,
            });
        }
        if hash(r.seq, &r.prev_hash, &r.event) != r.hash
            && legacy_hash(r.seq, &r.prev_hash, &r.event) != r.hash
        {
            return Err(Tamper::Modified { seq: r.seq });
        }
        if r.prev_hash != self.prev_hash {
            return Err(Tamper::Unlinked { seq: r.seq });
        }
        self.prev_hash.clone_from(&r.hash);
        self.next_seq += 1;
        Ok(())
    }

    /// How many records were checked.
    pub fn checked(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last record checked.
    pub fn head(&self) -> &str {
        &self.prev_hash
    }
}

/// A signed statement that the trail held `seq` records, the last with hash `hash`, at `time`.
/// Signed (JWS) with the region's client-certificate key, so a party holding the region's
/// certificate can check it; kept outside the trail too, it shows a trail cut short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// The region's identity (`urn:gateway:region:{code}`).
    pub iss: String,
    pub seq: u64,
    pub hash: String,
    /// Unix seconds.
    pub iat: i64,
}

/// What a checkpoint says about a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointProblem {
    /// The trail has fewer records than the checkpoint vouched for.
    Truncated { checkpoint_seq: u64, trail_len: u64 },
    /// The record at the checkpoint's sequence number has another hash.
    Diverged { seq: u64 },
}

impl std::fmt::Display for CheckpointProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointProblem::Truncated {
                checkpoint_seq,
                trail_len,
            } => write!(
                f,
                "the trail was truncated: a signed checkpoint vouches for {checkpoint_seq} records, the trail holds {trail_len}"
            ),
            CheckpointProblem::Diverged { seq } => write!(
                f,
                "record {seq} is not the record a signed checkpoint vouches for"
            ),
        }
    }
}

/// Checks a checkpoint against the hash of every record (`hash_at(seq)`, None past the end).
pub fn check_checkpoint(
    c: &CheckpointClaims,
    trail_len: u64,
    hash_at: impl Fn(u64) -> Option<String>,
) -> Result<(), CheckpointProblem> {
    if c.seq > trail_len {
        return Err(CheckpointProblem::Truncated {
            checkpoint_seq: c.seq,
            trail_len,
        });
    }
    if c.seq == 0 {
        return Ok(());
    }
    match hash_at(c.seq) {
        Some(h) if h == c.hash => Ok(()),
        _ => Err(CheckpointProblem::Diverged { seq: c.seq }),
    }
}

/// Which records a reader wants, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub patient: Option<String>,
    pub user: Option<String>,
    pub region: Option<String>,
    pub kind: Option<EventKind>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
    pub break_glass_only: bool,
    /// 0, 4 or 8 (see [`AuditEvent::outcome_code`]).
    pub outcome: Option<u8>,
    pub request_id: Option<String>,
    /// The RESTful interaction ([`AuditEvent::interaction`]): search, read, operation, ...
    pub subtype: Option<String>,
    /// Only records before this sequence number (the next page).
    pub before_seq: Option<u64>,
    /// Page size.
    pub count: usize,
}

impl Filter {
    /// Does `r` pass the filter (page bounds aside)? Stores filter in SQL; this is the
    /// reference their shared test suite compares against.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        let t = e.unix_time();
        self.patient
            .as_ref()
            .is_none_or(|p| e.patient.as_ref() == Some(p))
            && self.user.as_ref().is_none_or(|u| &e.user_id == u)
            && self
                .region
                .as_ref()
                .is_none_or(|g| e.region_codes().contains(g))
            && self.kind.is_none_or(|k| e.kind == k)
            && self.from.is_none_or(|f| t >= f)
            && self.until.is_none_or(|u| t < u)
            && (!self.break_glass_only || e.break_glass_reason.is_some())
            && self.outcome.is_none_or(|o| e.outcome_code() == o)
            && self.request_id.as_ref().is_none_or(|q| &e.request_id == q)
            && self.subtype.as_ref().is_none_or(|s| {
                let own = e.interaction().0;
                own == s || (s == "search" && own == "operation")
            })
            && self.before_seq.is_none_or(|b| r.seq < b)
    }
}

/// One page of a filtered trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<AuditRecord>,
    /// How many records match the filter in all (ignoring paging).
    pub total: u64,
    /// The `before_seq` of the next page, when there is one.
    pub next_before: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    mod canonical_form {
        use super::*;
        use proptest::prelude::*;

        /// Any text: control characters, quotes, backslashes, characters outside the BMP.
        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    any::<char>(),
                    Just('"'),
                    Just('\\'),
                    (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('x')),
                    Just('\u{7f}'),
                    Just('\u{1F600}'),
                ],
                0..10,
            )
            .prop_map(|cs| cs.into_iter().collect())
        }

        /// Any JSON value a detail may hold: nested objects whose keys need UTF-16 ordering,
        /// fractions and large numbers.
        fn detail() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e12f64..1e12).prop_map(Value::from),
                text().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 5, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    proptest::collection::btree_map(text(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn event() -> impl Strategy<Value = AuditEvent> {
            (
                (
                    proptest::sample::select(EventKind::ALL.to_vec()),
                    text(),
                    text(),
                    text(),
                    proptest::option::of(text()),
                    proptest::option::of(text()),
                ),
                (
                    proptest::collection::vec((text(), text(), any::<usize>()), 0..4),
                    any::<usize>(),
                    any::<usize>(),
                    proptest::collection::vec(text(), 0..4),
                    any::<u16>(),
                    detail(),
                ),
            )
                .prop_map(
                    |(
                        (kind, time, user, outcome, patient, reason),
                        (regions, released, withheld, policies, status, detail),
                    )| {
                        let mut e =
                            AuditEvent::new(kind, time, "0192f5c6-aaaa-7bbb-8ccc-ddddeeeeffff");
                        e.user_id = user.clone();
                        e.role = user.chars().rev().collect();
                        e.organisation = outcome.to_uppercase();
                        e.purpose_of_use = outcome.clone();
                        e.outcome = outcome;
                        e.patient = patient;
                        e.break_glass_reason = reason;
                        e.regions = regions
                            .into_iter()
                            .map(|(region, outcome, items)| RegionOutcome {
                                region,
                                outcome,
                                items,
                            })
                            .collect();
                        e.released = released;
                        e.withheld = withheld;
                        e.policies = policies;
                        e.status = status;
                        e.detail = detail;
                        e
                    },
                )
        }

        proptest! {
            #[test]
            fn the_canonical_form_is_the_library_s_for_any_event(e in event()) {
                let library = serde_json_canonicalizer::to_string(&e).expect("an event serialises");
                prop_assert_eq!(canonical_event(&e), library);
            }
        }

        #[test]
        fn a_query_s_event_is_written_as_the_library_writes_it() {
            let mut e = AuditEvent::new(
                EventKind::ClinicianQuery,
                "2026-12-07T05:00:00Z".into(),
                "r",
            );
            e.patient = Some("9434765919".into());
            e.regions = vec![RegionOutcome {
                region: "wessex".into(),
                outcome: "answered".into(),
                items: 12,
            }];
            e.detail =
                json!({"trace_id": "4bf9", "deduplicated": 2, "z": [1.5, {"b": 1, "a": null}]});
            assert_eq!(
                canonical_event(&e),
                serde_json_canonicalizer::to_string(&e).unwrap()
            );
            assert!(
                canonical_event(&e)
                    .starts_with(r#"{"break_glass_reason":null,"detail":{"deduplicated":2,"#)
            );
        }
    }

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
            status: 200,
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
    fn the_fast_canonical_form_is_the_general_one() {
        let e = event(7);
        let general = serde_json_canonicalizer::to_string(
            &json!({"seq": 12, "prev_hash": GENESIS, "event": e.clone()}),
        )
        .unwrap();
        assert_eq!(canonical(12, GENESIS, &e), general);
    }

    #[test]
    fn the_canonical_form_is_rfc_8785() {
        // RFC 8785's own cases where JCS and a sorted serde_json differ: numbers in the
        // ECMAScript form, keys in UTF-16 order (U+1F600 before U+FB33, unlike UTF-8), and
        // only the escapes JSON requires.
        let mut e = event(3);
        e.detail = json!({"\u{fb33}": 1, "\u{1f600}": 2, "n": [1e21, 0.000001, -0.0, 3.5], "s": "\u{7f}/\u{1f}é"});
        let text = canonical_event(&e);
        let want = "\"detail\":{\"n\":[1e+21,0.000001,0,3.5],\"s\":\"\u{7f}/\\u001fé\",\"\u{1f600}\":2,\"\u{fb33}\":1}";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn a_trail_hashed_before_rfc_8785_still_verifies_and_tampering_still_shows() {
        let mut e = event(1);
        e.detail = json!({"\u{fb33}": 1, "\u{1f600}": 2});
        let seq = 1;
        let legacy = legacy_hash(seq, GENESIS, &e);
        assert_ne!(legacy, hash(seq, GENESIS, &e), "the two forms differ here");
        let mut r = AuditRecord {
            seq,
            prev_hash: GENESIS.to_owned(),
            hash: legacy,
            event: e,
        };
        assert_eq!(verify([&r]), Ok(1));
        r.event.released += 1;
        assert_eq!(verify([&r]), Err(Tamper::Modified { seq: 1 }));
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
