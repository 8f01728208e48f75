//! FHIR dates as time intervals, and the comparison prefixes of date search.
//!
//! A FHIR `date`/`dateTime`/`instant` has a precision (year, month, day, second); it stands for
//! the whole interval it names. `2023-05` is all of May 2023. Search compares intervals as the
//! FHIR R4 search specification says (section 3.1.1.4.2). Written by hand: the `time` crate
//! parses complete timestamps, but not FHIR's partial dates nor their implicit intervals.

use serde_json::Value;
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// A half-open interval `[start, end)` in Unix seconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval {
    pub start: i64,
    pub end: i64,
}

/// The comparison prefixes of FHIR R4 search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

impl Prefix {
    pub fn as_str(self) -> &'static str {
        match self {
            Prefix::Eq => "eq",
            Prefix::Ne => "ne",
            Prefix::Gt => "gt",
            Prefix::Lt => "lt",
            Prefix::Ge => "ge",
            Prefix::Le => "le",
            Prefix::Sa => "sa",
            Prefix::Eb => "eb",
        }
    }

    /// Splits a prefix off a search value (`ge2020-01-01`); no prefix means `eq`.
    pub fn split(value: &str) -> (Prefix, &str) {
        let table = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
        ];
        for (text, prefix) in table {
            if let Some(rest) = value.strip_prefix(text) {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }

    /// Does a resource's interval `target` satisfy `self` against the search interval `param`?
    pub fn matches(self, param: Interval, target: Interval) -> bool {
        match self {
            Prefix::Eq => param.start <= target.start && target.end <= param.end,
            Prefix::Ne => !(param.start <= target.start && target.end <= param.end),
            Prefix::Gt => target.end > param.end,
            Prefix::Lt => target.start < param.start,
            Prefix::Ge => target.end > param.start,
            Prefix::Le => target.start < param.end,
            Prefix::Sa => target.start >= param.end,
            Prefix::Eb => target.end <= param.start,
        }
    }
}

/// Why a date is not a FHIR date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][.fff](Z|+hh:mm))"
)]
pub struct DateError(pub String);

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses a FHIR date, dateTime or instant into the interval it denotes. A time without a zone
/// is read as UTC (FHIR leaves it to the server; this gateway documents UTC).
pub fn parse_interval(s: &str) -> Result<Interval, DateError> {
    parse_inner(s).ok_or_else(|| DateError(super::echo(s, 40)))
}

fn parse_inner(s: &str) -> Option<Interval> {
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut fields = date_part.split('-');
    let year: i32 = num(fields.next()?, 4)?;
    let month: Option<u8> = fields
        .next()
        .map(|m| num(m, 2))
        .map_or(Some(None), |m| m.map(Some))?;
    let day: Option<u8> = fields
        .next()
        .map(|d| num(d, 2))
        .map_or(Some(None), |d| d.map(Some))?;
    if fields.next().is_some() {
        return None;
    }
    let first_day = |y: i32, m: u8| Date::from_calendar_date(y, Month::try_from(m).ok()?, 1).ok();
    let ts = |d: Date| {
        PrimitiveDateTime::new(d, Time::MIDNIGHT)
            .assume_utc()
            .unix_timestamp()
    };
    match (month, day, time_part) {
        (None, None, None) => {
            let start = first_day(year, 1)?;
            let end = first_day(year + 1, 1)?;
            Some(Interval {
                start: ts(start),
                end: ts(end),
            })
        }
        (Some(m), None, None) => {
            let start = first_day(year, m)?;
            let end = if m == 12 {
                first_day(year + 1, 1)?
            } else {
                first_day(year, m + 1)?
            };
            Some(Interval {
                start: ts(start),
                end: ts(end),
            })
        }
        (Some(m), Some(d), None) => {
            let date = Date::from_calendar_date(year, Month::try_from(m).ok()?, d).ok()?;
            let start = ts(date);
            Some(Interval {
                start,
                end: start + 86_400,
            })
        }
        (Some(m), Some(d), Some(t)) => {
            let date = Date::from_calendar_date(year, Month::try_from(m).ok()?, d).ok()?;
            parse_time(date, t)
        }
        _ => None,
    }
}

/// `hh:mm[:ss[.fff]](Z|+hh:mm|-hh:mm)?`; the interval is one minute or one second wide,
/// or the fraction's precision.
fn parse_time(date: Date, t: &str) -> Option<Interval> {
    let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if let Some(pos) = t.rfind(['+', '-']).filter(|p| *p >= 5) {
        let (c, o) = t.split_at(pos);
        let sign: i8 = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':')?;
        let off =
            UtcOffset::from_hms(sign * num::<i8>(oh, 2)?, sign * num::<i8>(om, 2)?, 0).ok()?;
        (c, off)
    } else {
        (t, UtcOffset::UTC)
    };
    let mut parts = clock.split(':');
    let h: u8 = num(parts.next()?, 2)?;
    let m: u8 = num(parts.next()?, 2)?;
    let (sec, width) = match parts.next() {
        None => (0u8, 60),
        Some(sf) => {
            let (s, frac) = sf.split_once('.').unwrap_or((sf, ""));
            if !frac.is_empty() && !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (num(s, 2)?, 1)
        }
    };
    if parts.next().is_some() {
        return None;
    }
    let time = Time::from_hms(h, m, sec).ok()?;
    let start = PrimitiveDateTime::new(date, time)
        .assume_offset(offset)
        .unix_timestamp();
    Some(Interval {
        start,
        end: start + width,
    })
}

/// The interval of a date-ish element: a date/dateTime/instant string, or a Period.
/// An open-ended Period extends to the far past or future.
pub fn element_interval(v: &Value) -> Option<Interval> {
    match v {
        Value::String(s) => parse_interval(s).ok(),
        Value::Object(o) => {
            let start = o
                .get("start")
                .and_then(Value::as_str)
                .and_then(|s| parse_interval(s).ok());
            let end = o
                .get("end")
                .and_then(Value::as_str)
                .and_then(|s| parse_interval(s).ok());
            match (start, end) {
                (None, None) => None,
                (s, e) => Some(Interval {
                    start: s.map_or(i64::MIN / 2, |i| i.start),
                    end: e.map_or(i64::MAX / 2, |i| i.end),
                }),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(s: &str) -> Interval {
        parse_interval(s).unwrap()
    }

    #[test]
    fn precisions_give_their_whole_interval() {
        assert_eq!(iv("2023").end - iv("2023").start, 365 * 86_400);
        assert_eq!(iv("2024-02").end - iv("2024-02").start, 29 * 86_400);
        assert_eq!(iv("2023-12").end, iv("2024").start);
        assert_eq!(iv("2023-05-01").end - iv("2023-05-01").start, 86_400);
        assert_eq!(
            iv("2023-05-01T10:00").end - iv("2023-05-01T10:00").start,
            60
        );
        assert_eq!(
            iv("2023-05-01T10:00:00Z").end - iv("2023-05-01T10:00:00Z").start,
            1
        );
    }

    #[test]
    fn offsets_are_applied() {
        assert_eq!(
            iv("2023-05-01T10:00:00+01:00").start,
            iv("2023-05-01T09:00:00Z").start
        );
        assert_eq!(
            iv("2023-05-01T10:00:00.123-02:00").start,
            iv("2023-05-01T12:00:00Z").start
        );
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "23",
            "2023-13",
            "2023-02-30",
            "2023-1-01",
            "2023-01-01T25:00",
            "yesterday",
            "2023-01-01T10",
            "",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn prefixes_follow_the_specification() {
        let day = iv("2023-05-01");
        let inside = iv("2023-05-01T12:00:00Z");
        let before = iv("2023-04-30");
        let after = iv("2023-05-02");
        assert!(Prefix::Eq.matches(day, inside));
        assert!(!Prefix::Eq.matches(day, after));
        assert!(Prefix::Ne.matches(day, after));
        assert!(Prefix::Ge.matches(day, inside) && Prefix::Ge.matches(day, after));
        assert!(!Prefix::Ge.matches(day, before));
        assert!(Prefix::Le.matches(day, before) && Prefix::Le.matches(day, inside));
        assert!(!Prefix::Le.matches(day, after));
        assert!(Prefix::Gt.matches(day, after) && !Prefix::Gt.matches(day, inside));
        assert!(Prefix::Lt.matches(day, before) && !Prefix::Lt.matches(day, inside));
        assert!(Prefix::Sa.matches(day, after) && Prefix::Eb.matches(day, before));
    }

    #[test]
    fn prefix_split() {
        assert_eq!(Prefix::split("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(Prefix::split("2020"), (Prefix::Eq, "2020"));
    }

    #[test]
    fn periods_may_be_open() {
        let p = serde_json::json!({"start": "2020-01-01"});
        let i = element_interval(&p).unwrap();
        assert!(Prefix::Ge.matches(iv("2030"), i));
    }
}
