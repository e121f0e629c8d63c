//! How the FG's reports ([`crate::report`], [`crate::requests`]) write a time and a record's
//! reason code in their cells.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::record::AuditRecord;

pub(crate) fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The reason code of a record (the part before `": "`).
pub(crate) fn reason_code(r: &AuditRecord) -> String {
    r.reason
        .as_deref()
        .map(|s| s.split(": ").next().unwrap_or(s).to_owned())
        .unwrap_or_else(|| "-".to_owned())
}
