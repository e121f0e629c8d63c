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
//! of that day in UTC.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
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
            return Ok(Some((f, d.and_time(NaiveTime::MIN).and_utc())));
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
        assert_eq!(t.to_rfc3339(), "2025-03-01T00:00:00+00:00");
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
}
