//! Refusals without a flood: a refused token, certificate or rate-limited request is recorded
//! in the audit trail, but a flood of them costs a bounded number of rows. Per kind, source
//! address and outcome (`401: the token has expired`: a fixed set of reasons), the first
//! refusal of an interval is recorded at once, with everything known of it; the rest of the
//! interval are counted, and written when it ends as one record with the exact count. Nothing
//! is lost: the rows' counts add up to the refusals made.
//!
//! Pure: the ledger decides and counts; the caller writes the rows.

use std::collections::HashMap;
use std::sync::Mutex;

use super::EventKind;

/// Sources followed one by one; beyond it, refusals from new sources are counted together
/// under the source `*` (a flood from many addresses still costs a bounded number of rows).
pub const MAX_SOURCES: usize = 10_000;

/// What to do with a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The first of its interval: record it now.
    First,
    /// Counted, to be recorded with the others of its interval.
    Counted,
}

/// The refusals of one kind, source and outcome in the current interval, after the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    /// The HTTP status the refusals were answered with (0 for a handshake).
    pub status: u16,
    /// When the interval's first refusal came, and the last counted one.
    pub first_at: String,
    pub last_at: String,
}

/// One record to write for an interval: its kind, source, outcome and tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub kind: EventKind,
    pub source: String,
    pub outcome: String,
    pub tally: Tally,
}

type Key = (EventKind, String, String);

#[derive(Default)]
pub struct RefusalLedger {
    open: Mutex<HashMap<Key, Tally>>,
}

impl RefusalLedger {
    /// Notes a refusal of `kind` from `source` at `now`, answered `status` with `outcome`.
    pub fn note(
        &self,
        kind: EventKind,
        source: &str,
        (status, outcome): (u16, &str),
        now: &str,
    ) -> Noted {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (kind, source.to_owned(), outcome.to_owned());
        if !open.contains_key(&key) && open.len() >= MAX_SOURCES {
            key.1 = "*".to_owned();
        }
        match open.get_mut(&key) {
            None => {
                open.insert(
                    key,
                    Tally {
                        status,
                        first_at: now.to_owned(),
                        ..Tally::default()
                    },
                );
                Noted::First
            }
            Some(t) => {
                t.count += 1;
                t.last_at = now.to_owned();
                Noted::Counted
            }
        }
    }

    /// Ends the interval: the tallies with refusals counted, to record; every source starts
    /// afresh (its next refusal is recorded at once).
    pub fn close_interval(&self) -> Vec<Summary> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Summary> = open
            .drain()
            .filter(|(_, t)| t.count > 0)
            .map(|((kind, source, outcome), tally)| Summary {
                kind,
                source,
                outcome,
                tally,
            })
            .collect();
        out.sort_by(|a, b| {
            (a.kind.as_str(), &a.source, &a.outcome).cmp(&(b.kind.as_str(), &b.source, &b.outcome))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_two_rows_per_source_outcome_and_interval_and_the_counts_add_up() {
        let ledger = RefusalLedger::default();
        let mut rows = 0u64;
        let mut refused = 0u64;
        for interval in 0..3 {
            for i in 0..1000 {
                let outcome = if i % 3 == 0 {
                    "401: expired"
                } else {
                    "401: forged"
                };
                refused += 1;
                if ledger.note(EventKind::RefusedToken, "10.0.0.1", (401, outcome), "t")
                    == Noted::First
                {
                    rows += 1;
                }
            }
            let summaries = ledger.close_interval();
            assert_eq!(summaries.len(), 2, "interval {interval}: one per outcome");
            let counts: Vec<(&str, u64)> = summaries
                .iter()
                .map(|s| (s.outcome.as_str(), s.tally.count))
                .collect();
            assert_eq!(counts, vec![("401: expired", 333), ("401: forged", 665)]);
            rows += 2;
            refused -= 2 + 333 + 665;
        }
        assert_eq!(refused, 0, "every refusal is in a row");
        assert_eq!(rows, 12);
    }

    #[test]
    fn kinds_and_sources_are_counted_apart_and_a_lone_refusal_is_one_row() {
        let ledger = RefusalLedger::default();
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "a", (401, "x"), "t"),
            Noted::First
        );
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "b", (401, "x"), "t"),
            Noted::First
        );
        assert_eq!(
            ledger.note(EventKind::RefusedCertificate, "a", (401, "x"), "t"),
            Noted::First
        );
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "a", (401, "x"), "t2"),
            Noted::Counted
        );
        let s = ledger.close_interval();
        assert_eq!(s.len(), 1, "only the source with more than one: {s:?}");
        assert_eq!((s[0].source.as_str(), s[0].tally.count), ("a", 1));
        assert_eq!(s[0].tally.last_at, "t2");
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "a", (401, "x"), "t"),
            Noted::First
        );
    }

    #[test]
    fn beyond_the_sources_followed_new_ones_are_counted_together() {
        let ledger = RefusalLedger::default();
        for i in 0..MAX_SOURCES {
            ledger.note(EventKind::RefusedToken, &format!("s{i}"), (401, "x"), "t");
        }
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "new-1", (401, "x"), "t"),
            Noted::First
        );
        assert_eq!(
            ledger.note(EventKind::RefusedToken, "new-2", (401, "x"), "t"),
            Noted::Counted
        );
        let s = ledger.close_interval();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].source.as_str(), s[0].tally.count), ("*", 1));
    }
}
