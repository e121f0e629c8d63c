//! Durations as written in the covenant policy: answer periods, retention periods and
//! the like.
//!
//! A policy says "48 hours", "5 werkdagen" or "7 jaar"; the covenants mix English and
//! Dutch, so both are accepted, in one strict grammar (see [`PolicyDuration::from_str`]):
//! a number, one space, and the unit word that agrees with the number, at most
//! [`MAX_YEARS`] years. Each unit keeps its own meaning when it is turned into a
//! deadline, because "1 month" is not 30 days and "5 workdays" is not 5 days:
//!
//! | unit | deadline |
//! |---|---|
//! | hours, days, weeks | exact elapsed time (a day is 24 hours) |
//! | months, years | calendar months in Amsterdam local time, same time of day |
//! | workdays | end of the n-th Dutch workday, see [`Calendar::add_workdays`] |
//!
//! Durations serialise as their canonical English text ("48 hours", "1 workday"), so a
//! policy written back out reads the same as one written by hand.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Months, TimeDelta, Utc};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::calendar::{amsterdam_local, amsterdam_to_utc, Calendar};
use crate::Error;

/// The reason given for a unit that is not recognised.
const UNKNOWN_UNIT: &str = "unknown unit, expected hours, days, weeks, months, years or workdays (uur, dagen, weken, maanden, jaar, werkdagen), written out in lower case";

/// A duration in a policy: a positive whole number of one unit.
///
/// Parsed from text with [`FromStr`] and written back with [`Display`](fmt::Display) in
/// canonical English. The count is never zero in a parsed duration ("0 days" is rejected
/// as a policy error, since a period of nothing is always a mistake), but a zero value can
/// be constructed in code; its deadline is then the instant itself (or, for workdays, the
/// end of that local day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyDuration {
    /// Exact hours: "48 hours", "48h", "24 uur".
    Hours(u32),
    /// Days of exactly 24 hours: "3 days", "3d", "3 dagen".
    Days(u32),
    /// Weeks of exactly 7 × 24 hours: "2 weeks", "2w", "2 weken".
    Weeks(u32),
    /// Calendar months in Amsterdam local time: "3 months", "3 maanden".
    Months(u32),
    /// Calendar years (12 months) in Amsterdam local time: "7 years", "7y", "7 jaar".
    Years(u32),
    /// Dutch workdays: "5 workdays", "5 werkdagen". See [`Calendar`].
    Workdays(u32),
}

impl PolicyDuration {
    /// The deadline this duration sets for an event at `from`.
    ///
    /// - Hours, days and weeks add exact elapsed time, so "48 hours" is always 48 hours
    ///   later, even across a change to or from daylight saving time (the local time of
    ///   day then shifts by an hour).
    /// - Months and years add calendar months in Europe/Amsterdam local time and keep the
    ///   local time of day, so a retention period of "7 years" ends on the same local date
    ///   and time. A day that does not exist in the target month is clamped to its last
    ///   day (31 January + 1 month = 28 or 29 February), as chrono does. A local time that
    ///   falls in a daylight saving gap moves forward by the length of the gap; one that
    ///   occurs twice takes the earlier instant.
    /// - Workdays delegate to [`Calendar::add_workdays`]: the end of the n-th workday after
    ///   the local date of `from`, as an exclusive bound.
    ///
    /// A deadline beyond chrono's range saturates to [`DateTime::<Utc>::MAX_UTC`] rather
    /// than panicking, so an absurd policy value means "never expires", not a crash.
    pub fn deadline(&self, from: DateTime<Utc>, calendar: &Calendar) -> DateTime<Utc> {
        let exact = |delta: Option<TimeDelta>| delta.and_then(|d| from.checked_add_signed(d));
        let deadline = match *self {
            Self::Hours(n) => exact(TimeDelta::try_hours(i64::from(n))),
            Self::Days(n) => exact(TimeDelta::try_days(i64::from(n))),
            Self::Weeks(n) => exact(TimeDelta::try_weeks(i64::from(n))),
            Self::Months(n) => add_local_months(from, n),
            Self::Years(n) => n
                .checked_mul(12)
                .and_then(|months| add_local_months(from, months)),
            Self::Workdays(n) => Some(calendar.add_workdays(from, n)),
        };
        deadline.unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// `from` plus a number of calendar months in Amsterdam local time, keeping the local time
/// of day; `None` beyond chrono's range.
fn add_local_months(from: DateTime<Utc>, months: u32) -> Option<DateTime<Utc>> {
    let local = amsterdam_local(from)?;
    amsterdam_to_utc(local.checked_add_months(Months::new(months))?)
}

/// The longest period a policy may set: 100 years, in each unit. Retention periods in
/// the covenants run to 20 years; anything longer is a typing error, and a deadline past
/// the year 9999 could not be written as an RFC 3339 date.
pub const MAX_YEARS: u32 = 100;

/// One unit: (variant, singular English, plural English, singular Dutch, plural Dutch, the
/// most of that unit in [`MAX_YEARS`]).
type UnitWords = (
    fn(u32) -> PolicyDuration,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u32,
);

/// The unit words.
const UNITS: [UnitWords; 6] = [
    (
        PolicyDuration::Hours,
        "hour",
        "hours",
        "uur",
        "uur",
        MAX_YEARS * 8_760,
    ),
    (
        PolicyDuration::Days,
        "day",
        "days",
        "dag",
        "dagen",
        MAX_YEARS * 365,
    ),
    (
        PolicyDuration::Weeks,
        "week",
        "weeks",
        "week",
        "weken",
        MAX_YEARS * 52,
    ),
    (
        PolicyDuration::Months,
        "month",
        "months",
        "maand",
        "maanden",
        MAX_YEARS * 12,
    ),
    (
        PolicyDuration::Years,
        "year",
        "years",
        "jaar",
        "jaar",
        MAX_YEARS,
    ),
    (
        PolicyDuration::Workdays,
        "workday",
        "workdays",
        "werkdag",
        "werkdagen",
        MAX_YEARS * 260,
    ),
];

impl FromStr for PolicyDuration {
    type Err = Error;

    /// Parses the strict grammar
    ///
    /// ```text
    /// duration = count " " unit          ; exactly one space, nothing around it
    /// count    = "1" / nonzero *DIGIT    ; no leading zeros, no sign, no fraction
    /// unit     = the singular word when count is 1, the plural word otherwise:
    ///            hour/hours      uur/uur
    ///            day/days        dag/dagen
    ///            week/weeks      week/weken
    ///            month/months    maand/maanden
    ///            year/years      jaar/jaar
    ///            workday/workdays werkdag/werkdagen
    /// ```
    ///
    /// in lower case, with at most [`MAX_YEARS`] years in each unit (876,000 hours,
    /// 36,500 days, 5,200 weeks, 1,200 months, 100 years, 26,000 workdays). Abbreviations
    /// ("48h"), other units (minutes, fortnights) and combinations ("1 day 4 hours") are
    /// refused: a covenant period is written out once, the way the covenant says it.
    fn from_str(text: &str) -> Result<Self, Error> {
        let fail = |reason: &'static str| Error::InvalidDuration {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("is empty"));
        }
        let Some((digits, word)) = text.split_once(' ') else {
            return Err(fail(
                "must be a number, one space and a unit, e.g. \"48 hours\" or \"5 werkdagen\"",
            ));
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(
                "must start with a whole number (no sign, no fraction)",
            ));
        }
        if digits.starts_with('0') {
            return Err(fail("must be at least 1, written without leading zeros"));
        }
        let count: u32 = digits
            .parse()
            .map_err(|_| fail("is longer than 100 years"))?;
        let Some(&(make, one, many, een, meer, max)) =
            UNITS.iter().find(|u| [u.1, u.2, u.3, u.4].contains(&word))
        else {
            return Err(fail(UNKNOWN_UNIT));
        };
        let agrees = if count == 1 {
            word == one || word == een
        } else {
            word == many || word == meer
        };
        if !agrees {
            return Err(fail(
                "the unit must agree with the number: \"1 day\", \"2 days\", \"1 werkdag\", \"2 werkdagen\"",
            ));
        }
        if count > max {
            return Err(fail("is longer than 100 years"));
        }
        Ok(make(count))
    }
}

impl fmt::Display for PolicyDuration {
    /// Writes the canonical English form, e.g. "48 hours", "1 hour", "5 workdays", which
    /// [`FromStr`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (count, one, many) = match *self {
            Self::Hours(n) => (n, "hour", "hours"),
            Self::Days(n) => (n, "day", "days"),
            Self::Weeks(n) => (n, "week", "weeks"),
            Self::Months(n) => (n, "month", "months"),
            Self::Years(n) => (n, "year", "years"),
            Self::Workdays(n) => (n, "workday", "workdays"),
        };
        write!(f, "{count} {}", if count == 1 { one } else { many })
    }
}

impl Serialize for PolicyDuration {
    /// Serialises as the canonical text, e.g. `"5 workdays"`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyDuration {
    /// Deserialises from any text [`FromStr`] accepts.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for PolicyDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "PolicyDuration".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "ketenpost_schemas::duration::PolicyDuration".into()
    }

    /// A string in the strict grammar: [`PolicyDuration::pattern`], which also holds the
    /// agreement of unit and number; the upper bound of 100 years is checked when the
    /// policy is parsed.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PolicyDuration::pattern(),
            "description": "A whole number from 1, one space and a unit that agrees with it: hour(s) or uur, day(s) or dag/dagen, week(s) or week/weken, month(s) or maand/maanden, year(s) or jaar, workday(s) or werkdag/werkdagen; at most 100 years. E.g. \"48 hours\", \"1 werkdag\", \"5 werkdagen\".",
            "examples": ["48 hours", "5 workdays", "7 years"]
        })
    }
}

impl PolicyDuration {
    /// A regular expression (ECMA 262, as JSON Schema uses) for the grammar of
    /// [`PolicyDuration::from_str`]: no leading zero, one space, a unit word that agrees
    /// with the number, and no more digits than the unit's bound has. Only the exact bound
    /// (e.g. 876000 hours, 100 years) is left to the parser.
    pub fn pattern() -> String {
        let mut alternatives = Vec::new();
        for (_, one, many, een, meer, max) in UNITS {
            let words = |a: &str, b: &str| {
                if a == b {
                    a.to_owned()
                } else {
                    format!("{a}|{b}")
                }
            };
            alternatives.push(format!("1 (?:{})", words(one, een)));
            let digits = max.to_string().len();
            alternatives.push(format!(
                "(?:[2-9]|[1-9][0-9]{{1,{}}}) (?:{})",
                digits - 1,
                words(many, meer)
            ));
        }
        format!("^(?:{})$", alternatives.join("|"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn parse(text: &str) -> PolicyDuration {
        text.parse().unwrap()
    }

    fn reason(text: &str) -> &'static str {
        match text.parse::<PolicyDuration>() {
            Err(Error::InvalidDuration { text: t, reason }) => {
                assert_eq!(t, text);
                reason
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn parses_every_form() {
        use PolicyDuration::*;
        let cases = [
            ("48 hours", Hours(48)),
            ("1 hour", Hours(1)),
            ("24 uur", Hours(24)),
            ("1 uur", Hours(1)),
            ("3 days", Days(3)),
            ("1 day", Days(1)),
            ("3 dagen", Days(3)),
            ("1 dag", Days(1)),
            ("2 weeks", Weeks(2)),
            ("1 week", Weeks(1)),
            ("2 weken", Weeks(2)),
            ("3 months", Months(3)),
            ("1 month", Months(1)),
            ("3 maanden", Months(3)),
            ("1 maand", Months(1)),
            ("7 years", Years(7)),
            ("1 year", Years(1)),
            ("7 jaar", Years(7)),
            ("1 jaar", Years(1)),
            ("5 workdays", Workdays(5)),
            ("1 workday", Workdays(1)),
            ("5 werkdagen", Workdays(5)),
            ("1 werkdag", Workdays(1)),
            ("100 years", Years(100)),
            ("876000 hours", Hours(876_000)),
            ("26000 workdays", Workdays(26_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn rejects() {
        let shape = "must be a number, one space and a unit, e.g. \"48 hours\" or \"5 werkdagen\"";
        let number = "must start with a whole number (no sign, no fraction)";
        let agree = "the unit must agree with the number: \"1 day\", \"2 days\", \"1 werkdag\", \"2 werkdagen\"";
        let long = "is longer than 100 years";
        let cases = [
            ("", "is empty"),
            ("48h", shape),
            ("3d", shape),
            ("3", shape),
            ("48  hours", UNKNOWN_UNIT),
            (" 48 hours", number),
            ("48 hours ", UNKNOWN_UNIT),
            ("48 Hours", UNKNOWN_UNIT),
            ("5 working days", UNKNOWN_UNIT),
            ("3 uren", UNKNOWN_UNIT),
            ("days 3", number),
            ("+3 days", number),
            ("-3 days", number),
            ("1.5 days", number),
            (
                "0 days",
                "must be at least 1, written without leading zeros",
            ),
            (
                "007 years",
                "must be at least 1, written without leading zeros",
            ),
            ("2 werkdag", agree),
            ("1 days", agree),
            ("2 day", agree),
            ("1 dagen", agree),
            ("101 years", long),
            ("100000 years", long),
            ("876001 hours", long),
            ("4294967296 hours", long),
            ("3 fortnights", UNKNOWN_UNIT),
            ("3 minutes", UNKNOWN_UNIT),
            ("3 days later", UNKNOWN_UNIT),
            ("3 days 4 hours", UNKNOWN_UNIT),
        ];
        for (text, expected) in cases {
            assert_eq!(reason(text), expected, "{text:?}");
        }
    }

    #[test]
    fn error_message() {
        let err = "3 fortnights".parse::<PolicyDuration>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid duration '3 fortnights': {UNKNOWN_UNIT}")
        );
    }

    #[test]
    fn display_round_trips() {
        use PolicyDuration::*;
        let cases = [
            (Hours(48), "48 hours"),
            (Hours(1), "1 hour"),
            (Days(3), "3 days"),
            (Days(1), "1 day"),
            (Weeks(2), "2 weeks"),
            (Weeks(1), "1 week"),
            (Months(3), "3 months"),
            (Months(1), "1 month"),
            (Years(7), "7 years"),
            (Years(1), "1 year"),
            (Workdays(5), "5 workdays"),
            (Workdays(1), "1 workday"),
        ];
        for (duration, text) in cases {
            assert_eq!(duration.to_string(), text);
            assert_eq!(parse(text), duration);
        }
        assert_eq!(Hours(0).to_string(), "0 hours");
    }

    #[test]
    fn serde_as_text() {
        let json = serde_json::to_string(&PolicyDuration::Workdays(5)).unwrap();
        assert_eq!(json, "\"5 workdays\"");
        let back: PolicyDuration = serde_json::from_str("\"5 werkdagen\"").unwrap();
        assert_eq!(back, PolicyDuration::Workdays(5));
        let err = serde_json::from_str::<PolicyDuration>("\"0 days\"").unwrap_err();
        assert!(err.to_string().contains("must be at least 1"), "{err}");
        assert!(serde_json::from_str::<PolicyDuration>("\"100000 years\"").is_err());
        assert!(serde_json::from_str::<PolicyDuration>("48").is_err());
    }

    #[test]
    fn json_schema_is_a_string() {
        let schema = schemars::schema_for!(PolicyDuration);
        let value = serde_json::to_value(&schema).unwrap();
        assert_eq!(value["type"], "string");
        assert_eq!(value["pattern"], PolicyDuration::pattern());
    }

    /// The JSON Schema pattern and the parser agree on the grammar; only the exact upper
    /// bounds, beyond the pattern's digit counts, are the parser's alone.
    #[test]
    fn the_pattern_follows_the_grammar() {
        let re = regex_lite(&PolicyDuration::pattern());
        let samples = [
            "1 hour",
            "48 hours",
            "1 uur",
            "24 uur",
            "1 day",
            "3 days",
            "1 dag",
            "3 dagen",
            "1 week",
            "2 weeks",
            "2 weken",
            "1 month",
            "3 months",
            "1 maand",
            "3 maanden",
            "1 year",
            "7 years",
            "1 jaar",
            "7 jaar",
            "1 workday",
            "5 workdays",
            "1 werkdag",
            "5 werkdagen",
            "876000 hours",
            "36500 days",
            "100 years",
            "26000 workdays",
            "0 days",
            "01 day",
            "1 days",
            "2 day",
            "2 werkdag",
            "1 werkdagen",
            "48h",
            "48  hours",
            "48 Hours",
            " 48 hours",
            "48 hours ",
            "1 day 4 hours",
            "-1 day",
            "1.5 days",
            "",
            "3 minutes",
            "2 fortnights",
            "1000000 hours",
            "1000 years",
            "123456 days",
        ];
        for text in samples {
            assert_eq!(
                re(text),
                text.parse::<PolicyDuration>().is_ok(),
                "{text:?} under {}",
                PolicyDuration::pattern()
            );
        }
        // Within the digits of the bound but over it: the parser refuses what the pattern
        // lets through.
        assert!(re("876001 hours") && "876001 hours".parse::<PolicyDuration>().is_err());
        assert!(re("101 years") && "101 years".parse::<PolicyDuration>().is_err());
    }

    /// Whether `text` matches `pattern`, by the JSON Schema validator the crate uses.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let validator =
            jsonschema::validator_for(&serde_json::json!({ "type": "string", "pattern": pattern }))
                .unwrap();
        move |text| validator.is_valid(&serde_json::json!(text))
    }

    #[test]
    fn exact_durations() {
        let cal = Calendar::dutch();
        let from = utc("2026-03-28T12:00:00Z");
        // Across the start of summer time: still exactly 48 hours.
        assert_eq!(
            PolicyDuration::Hours(48).deadline(from, &cal),
            utc("2026-03-30T12:00:00Z")
        );
        assert_eq!(
            PolicyDuration::Days(2).deadline(from, &cal),
            utc("2026-03-30T12:00:00Z")
        );
        assert_eq!(
            PolicyDuration::Weeks(2).deadline(from, &cal),
            utc("2026-04-11T12:00:00Z")
        );
        assert_eq!(
            PolicyDuration::Hours(1).deadline(from, &cal),
            utc("2026-03-28T13:00:00Z")
        );
    }

    #[test]
    fn calendar_months() {
        let cal = Calendar::dutch();
        // 31 January 10:00 CET + 1 month = 28 February 10:00 CET.
        let from = utc("2026-01-31T09:00:00Z");
        assert_eq!(
            PolicyDuration::Months(1).deadline(from, &cal),
            utc("2026-02-28T09:00:00Z")
        );
        // Leap year: 29 February.
        assert_eq!(
            PolicyDuration::Months(1).deadline(utc("2028-01-31T09:00:00Z"), &cal),
            utc("2028-02-29T09:00:00Z")
        );
        // Into summer time: 12:00 local stays 12:00 local.
        assert_eq!(
            PolicyDuration::Months(1).deadline(utc("2026-03-15T11:00:00Z"), &cal),
            utc("2026-04-15T10:00:00Z")
        );
        // The local date counts: 23:30Z on 30 January is 00:30 on 31 January in
        // Amsterdam, so one month later is 28 February 00:30 local, not 28 February 23:30Z.
        assert_eq!(
            PolicyDuration::Months(1).deadline(utc("2026-01-30T23:30:00Z"), &cal),
            utc("2026-02-27T23:30:00Z")
        );
        // 02:30 local on 29 March 2026 falls in the gap and moves forward by an hour.
        assert_eq!(
            PolicyDuration::Months(2).deadline(utc("2026-01-29T01:30:00Z"), &cal),
            utc("2026-03-29T01:30:00Z")
        );
    }

    #[test]
    fn calendar_years() {
        let cal = Calendar::dutch();
        assert_eq!(
            PolicyDuration::Years(7).deadline(utc("2026-06-15T10:00:00Z"), &cal),
            utc("2033-06-15T10:00:00Z")
        );
        // 29 February 2024 + 1 year = 28 February 2025.
        assert_eq!(
            PolicyDuration::Years(1).deadline(utc("2024-02-29T11:00:00Z"), &cal),
            utc("2025-02-28T11:00:00Z")
        );
        // Summer to winter time: 12:00 local stays 12:00 local.
        assert_eq!(
            PolicyDuration::Months(6).deadline(utc("2026-06-15T10:00:00Z"), &cal),
            utc("2026-12-15T11:00:00Z")
        );
    }

    #[test]
    fn workdays() {
        let cal = Calendar::dutch();
        // Friday 9 January 2026, 10:00 CET; 1 workday is Monday 12 January.
        let from = utc("2026-01-09T09:00:00Z");
        assert_eq!(
            PolicyDuration::Workdays(1).deadline(from, &cal),
            utc("2026-01-12T23:00:00Z")
        );
        let extra = Calendar::with_extra_holidays([NaiveDate::from_ymd_opt(2026, 1, 12).unwrap()]);
        assert_eq!(
            PolicyDuration::Workdays(1).deadline(from, &extra),
            utc("2026-01-13T23:00:00Z")
        );
        assert_eq!(
            PolicyDuration::Workdays(2).deadline(utc("2026-04-02T08:00:00Z"), &cal),
            utc("2026-04-08T22:00:00Z")
        );
    }

    #[test]
    fn saturates_instead_of_panicking() {
        let cal = Calendar::dutch();
        let max = DateTime::<Utc>::MAX_UTC;
        let now = utc("2026-01-01T00:00:00Z");
        assert_eq!(PolicyDuration::Years(u32::MAX).deadline(now, &cal), max);
        assert_eq!(PolicyDuration::Months(u32::MAX).deadline(now, &cal), max);
        assert_eq!(PolicyDuration::Hours(1).deadline(max, &cal), max);
        assert_eq!(PolicyDuration::Weeks(u32::MAX).deadline(now, &cal), max);
        assert_eq!(PolicyDuration::Years(1).deadline(max, &cal), max);
        assert_eq!(PolicyDuration::Workdays(u32::MAX).deadline(now, &cal), max);
        // Large but representable.
        assert_eq!(
            PolicyDuration::Days(1_000_000).deadline(now, &cal),
            utc("4763-11-29T00:00:00Z")
        );
    }
}
