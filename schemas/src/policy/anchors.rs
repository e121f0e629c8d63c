//! Deadlines anchored on payload facts: a kind may name the payload fields its
//! `send_within` term runs from (`event_time_from`), e.g. the day rent arrears arose
//! (`huurachterstand_ontstaan_op`, 000:1150-1154, 001:246-248) rather than the day they were
//! observed. The first field present in the payload gives the header's `event_time`: the
//! sending agent sets it from there, the receiving agent refuses a delivery whose header
//! disagrees with its own view of the payload.
//!
//! ```toml
//! [purposes.uitstroom.kinds.signaal]
//! event_time_from = ["huurachterstand_ontstaan_op", "waargenomen_op"]
//! ```
//!
//! A field holds an RFC 3339 date-time, or a `YYYY-MM-DD` date, which counts from the start
//! of that day in Europe/Amsterdam, the covenants' local time (00:00 local is 23:00 UTC the
//! day before in winter, 22:00 in summer): a term of "1 month after the arrears arose" on
//! 1 March begins when that day begins where the covenant's parties are.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use toml::Spanned;

use crate::kind::Kind;

/// The event time `payload` gives by the anchor fields `fields`, in order: the field that
/// gave it and the instant. `None` when no field is present; a present field that is no
/// date or date-time is `Err` with its name (never its value).
pub fn event_time<'a>(
    fields: &'a [String],
    payload: &Value,
) -> Result<Option<(&'a str, DateTime<Utc>)>, String> {
    for f in fields {
        let Some(v) = payload.get(f.as_str()).filter(|v| !v.is_null()) else {
            continue;
        };
        let text = v.as_str().unwrap_or_default();
        if let Ok(t) = text.parse::<DateTime<Utc>>() {
            return Ok(Some((f, t)));
        }
        if let Ok(d) = text.parse::<NaiveDate>() {
            return Ok(Some((f, crate::calendar::start_of_local_day(d))));
        }
        return Err(format!(
            "'{f}' is the anchor of the kind's deadline and must be a date or an RFC 3339 \
             date-time"
        ));
    }
    Ok(None)
}

impl super::Checker<'_> {
    /// Check a kind's `event_time_from`: fields of its payload, each named once.
    pub(super) fn anchors(
        &self,
        kind: Kind,
        raw: &[Spanned<String>],
    ) -> Result<Vec<String>, crate::Error> {
        let fields = self
            .kind_schema(kind)
            .map(crate::payload::KindSchema::fields)
            .unwrap_or(&[]);
        let mut out: Vec<String> = Vec::new();
        for f in raw {
            if !fields.iter().any(|field| &field.name == f.get_ref()) {
                return self.err(
                    f.span().start,
                    format!(
                        "{kind}: event_time_from names '{}', which is not a field of its payload",
                        f.get_ref()
                    ),
                );
            }
            if out.contains(f.get_ref()) {
                return self.err(
                    f.span().start,
                    format!("{kind}: event_time_from names '{}' twice", f.get_ref()),
                );
            }
            out.push(f.get_ref().clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_present_anchor_gives_the_event_time() {
        let fields = vec![
            "huurachterstand_ontstaan_op".to_owned(),
            "waargenomen_op".to_owned(),
        ];
        let both = json!({
            "huurachterstand_ontstaan_op": "2025-03-01",
            "waargenomen_op": "2025-04-02T10:00:00Z",
        });
        let (f, t) = event_time(&fields, &both).unwrap().unwrap();
        assert_eq!(f, "huurachterstand_ontstaan_op");
        // The start of 1 March in Amsterdam (winter time, UTC+1).
        assert_eq!(t.to_rfc3339(), "2025-02-28T23:00:00+00:00");
        let observed = json!({ "huurachterstand_ontstaan_op": null, "waargenomen_op": "2025-04-02T10:00:00Z" });
        let (f, _) = event_time(&fields, &observed).unwrap().unwrap();
        assert_eq!(f, "waargenomen_op");
        assert_eq!(event_time(&fields, &json!({})).unwrap(), None);
        let bad = json!({ "huurachterstand_ontstaan_op": "gisteren" });
        let e = event_time(&fields, &bad).unwrap_err();
        assert!(
            e.contains("huurachterstand_ontstaan_op") && !e.contains("gisteren"),
            "{e}"
        );
    }

    #[test]
    fn a_date_counts_from_the_start_of_that_day_in_amsterdam_across_a_dst_change() {
        let fields = vec!["op".to_owned()];
        let at = |d: &str| event_time(&fields, &json!({ "op": d })).unwrap().unwrap().1;
        // Summer time began on Sunday 30 March 2025 at 02:00 local (01:00 UTC): the day
        // before starts at 23:00 UTC, that day itself still at 23:00 UTC (midnight came
        // before the jump), the day after at 22:00 UTC.
        assert_eq!(at("2025-03-29").to_rfc3339(), "2025-03-28T23:00:00+00:00");
        assert_eq!(at("2025-03-30").to_rfc3339(), "2025-03-29T23:00:00+00:00");
        assert_eq!(at("2025-03-31").to_rfc3339(), "2025-03-30T22:00:00+00:00");
        // Winter time came back on Sunday 26 October 2025 at 03:00 local (01:00 UTC).
        assert_eq!(at("2025-10-26").to_rfc3339(), "2025-10-25T22:00:00+00:00");
        assert_eq!(at("2025-10-27").to_rfc3339(), "2025-10-26T23:00:00+00:00");
        // The day across the change is 23 hours long in spring and 25 in autumn, so a
        // one-day term from a date ends at the next local midnight.
        assert_eq!((at("2025-03-31") - at("2025-03-30")).num_hours(), 23);
        assert_eq!((at("2025-10-27") - at("2025-10-26")).num_hours(), 25);
        // A date-time keeps its own instant.
        assert_eq!(
            at("2025-03-30T12:00:00+02:00").to_rfc3339(),
            "2025-03-30T10:00:00+00:00"
        );
    }
}
