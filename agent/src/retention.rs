//! Local retention, as pure functions of the facts and `now`.
//!
//! The agent is a mailbox, not an archive. A received payload stays until the partner
//! system acknowledged it (plus `keep_acknowledged_hours`), and never past the covenant's
//! case retention, counted from the case's closure when the agent knows it (it closed the
//! case itself). Beyond that the broker's deletion orders are authoritative: the broker
//! knows every closure and orders every party that held the case's data to delete it.

use chrono::{DateTime, TimeDelta, Utc};
use ketenpost_schemas::calendar::Calendar;
use ketenpost_schemas::duration::PolicyDuration;

/// When a received payload must be gone, if a deadline applies yet.
pub fn payload_deadline(
    acknowledged_at: Option<DateTime<Utc>>,
    keep_acknowledged_hours: u32,
    case_deadline: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let after_ack = acknowledged_at.map(|at| {
        at.checked_add_signed(TimeDelta::hours(i64::from(keep_acknowledged_hours)))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    });
    match (after_ack, case_deadline) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// When a closed case's data must be gone everywhere: closure plus the purpose's case
/// retention.
pub fn case_deadline(
    closed_at: Option<DateTime<Utc>>,
    case_retention: &PolicyDuration,
    calendar: &Calendar,
) -> Option<DateTime<Utc>> {
    closed_at.map(|closed| case_retention.deadline(closed, calendar))
}

/// Whether something with this deadline must be deleted at `now`.
pub fn due(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn unacknowledged_payloads_of_open_cases_stay() {
        assert_eq!(payload_deadline(None, 0, None), None);
        assert!(!due(
            payload_deadline(None, 0, None),
            t("2099-01-01T00:00:00Z")
        ));
    }

    #[test]
    fn acknowledged_payloads_go_after_the_grace_period() {
        let ack = t("2025-03-01T10:00:00Z");
        let d = payload_deadline(Some(ack), 24, None);
        assert_eq!(d, Some(t("2025-03-02T10:00:00Z")));
        assert!(!due(d, t("2025-03-02T09:59:59Z")));
        assert!(due(d, t("2025-03-02T10:00:00Z")));
        assert!(due(payload_deadline(Some(ack), 0, None), ack));
    }

    #[test]
    fn case_retention_caps_everything() {
        let cal = Calendar::dutch();
        let closed = t("2025-01-15T12:00:00Z");
        let case = case_deadline(Some(closed), &"12 months".parse().unwrap(), &cal);
        assert_eq!(case, Some(t("2026-01-15T12:00:00Z")));
        // Unacknowledged: the case retention alone.
        assert_eq!(payload_deadline(None, 0, case), case);
        // Acknowledged long after: the earlier of the two.
        let late_ack = t("2026-06-01T00:00:00Z");
        assert_eq!(payload_deadline(Some(late_ack), 0, case), case);
        assert_eq!(
            case_deadline(None, &"12 months".parse().unwrap(), &cal),
            None
        );
    }
}
