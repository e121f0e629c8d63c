//! The FG's report of data subjects' requests: access requests (AVG art. 15), ad-hoc
//! deletion orders by reason (erasure, objection, consent withdrawn, handover; art. 17
//! and 21, 004:408-410) with their confirmations, and corrections (art. 16) with their
//! receipts; each with its state, its term and whether it is late.
//!
//! Built from the audit records alone (scoped to the FG like every report), so it reads
//! the same live and offline:
//!
//! | request | opened by | term | done when |
//! |---|---|---|---|
//! | `access` | `access_requested` (one per case, `due_at`) | one calendar month from receipt | `access_answered` |
//! | `erasure`, `objection`, `consent_withdrawn`, `handover` | `deletion_ordered` (one per party, `due_at`) | the order's `delete_by` | every party's `deletion_confirmed` |
//! | `correction` | the `accepted` correctie and its `correction` records | none | every recipient's `receipt` |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::record::{AuditEvent, AuditRecord, Outcome};
use crate::text::{reason_code, time_text};

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Not done, within its term (or without one).
    Open,
    /// Not done, past its term.
    Late,
    /// Done within its term.
    Done,
    /// Done after its term.
    DoneLate,
}

impl RequestState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Open => "open",
            RequestState::Late => "late",
            RequestState::Done => "done",
            RequestState::DoneLate => "done_late",
        }
    }
}

/// One data subject's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestRow {
    /// `access`, `erasure`, `objection`, `consent_withdrawn`, `handover` or `correction`.
    pub request: String,
    /// The request id, deletion order id or correctie message id.
    pub id: String,
    /// The party that made it (the case manager, the corrector).
    pub by: String,
    /// The cases it concerns.
    pub cases: Vec<String>,
    /// When the broker recorded it.
    pub registered_at: String,
    /// When it is due; `None`: no term.
    pub due_at: Option<String>,
    /// The parties that must act on it (ordered to delete, sent the correction).
    pub parties: Vec<String>,
    /// Those that did (confirmed the deletion, receipted the correction).
    pub done_by: Vec<String>,
    /// When it was done: answered, or the last confirmation or receipt.
    pub done_at: Option<String>,
    /// Its state now.
    pub state: RequestState,
}

struct Building {
    row: RequestRow,
    due: Option<DateTime<Utc>>,
    done: Option<DateTime<Utc>>,
}

/// Every data subject's request in `records`, in the order they were made, with its
/// state at `now`.
pub fn requests(records: &[AuditRecord], now: DateTime<Utc>) -> Vec<RequestRow> {
    let mut rows: BTreeMap<String, Building> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut open = |id: &str, request: &str, r: &AuditRecord| -> String {
        if !rows.contains_key(id) {
            order.push(id.to_owned());
            rows.insert(
                id.to_owned(),
                Building {
                    row: RequestRow {
                        request: request.to_owned(),
                        id: id.to_owned(),
                        by: r.actor.clone().unwrap_or_else(|| "-".into()),
                        cases: Vec::new(),
                        registered_at: time_text(&r.time),
                        due_at: None,
                        parties: Vec::new(),
                        done_by: Vec::new(),
                        done_at: None,
                        state: RequestState::Open,
                    },
                    due: r.due_at,
                    done: None,
                },
            );
        }
        id.to_owned()
    };
    let mut opened: Vec<(String, &AuditRecord)> = Vec::new();
    for r in records.iter().filter(|r| r.outcome != Outcome::Refused) {
        let Some(id) = r.message_id.as_deref() else {
            continue;
        };
        match r.event {
            AuditEvent::AccessRequested => opened.push((open(id, "access", r), r)),
            AuditEvent::DeletionOrdered if reason_code(r) != "retention_ended" => {
                opened.push((open(id, &reason_code(r), r), r))
            }
            AuditEvent::Accepted if r.kind.as_deref() == Some("correctie") => {
                opened.push((open(id, "correction", r), r))
            }
            _ => {}
        }
    }
    for (id, r) in opened {
        let Some(b) = rows.get_mut(&id) else { continue };
        if let Some(c) = &r.case_ref {
            if !b.row.cases.contains(c) {
                b.row.cases.push(c.clone());
            }
        }
        for p in &r.counterparties {
            if !b.row.parties.contains(p) {
                b.row.parties.push(p.clone());
            }
        }
        if b.due.is_none() {
            b.due = r.due_at;
        }
    }
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        let Some(b) = r.message_id.as_deref().and_then(|id| rows.get_mut(id)) else {
            continue;
        };
        let actor = r.actor.clone().unwrap_or_default();
        match (r.event, b.row.request.as_str()) {
            (AuditEvent::AccessAnswered, "access") => {
                b.done.get_or_insert(r.time);
            }
            (AuditEvent::Correction, "correction") => {
                if let Some(c) = &r.case_ref {
                    if !b.row.cases.contains(c) {
                        b.row.cases.push(c.clone());
                    }
                }
            }
            (AuditEvent::Receipt, "correction") | (AuditEvent::DeletionConfirmed, _)
                if b.row.parties.contains(&actor) && !b.row.done_by.contains(&actor) =>
            {
                b.row.done_by.push(actor);
                if b.row.done_by.len() == b.row.parties.len() {
                    b.done = Some(r.time);
                }
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| rows.remove(&id))
        .map(|mut b| {
            let late = b.due.is_some_and(|due| b.done.unwrap_or(now) > due);
            b.row.state = match (b.done.is_some(), late) {
                (false, false) => RequestState::Open,
                (false, true) => RequestState::Late,
                (true, false) => RequestState::Done,
                (true, true) => RequestState::DoneLate,
            };
            b.row.due_at = b.due.as_ref().map(time_text);
            b.row.done_at = b.done.as_ref().map(time_text);
            b.row
        })
        .collect()
}

/// Header and cells of [`requests`], for text, CSV and HTML.
pub fn cells(rows: &[RequestRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(" ")
        }
    };
    (
        vec![
            "request",
            "id",
            "by",
            "cases",
            "registered_at",
            "due_at",
            "parties",
            "done_by",
            "done_at",
            "state",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.request.clone(),
                    r.id.clone(),
                    r.by.clone(),
                    list(&r.cases),
                    r.registered_at.clone(),
                    or_dash(&r.due_at),
                    list(&r.parties),
                    list(&r.done_by),
                    or_dash(&r.done_at),
                    r.state.as_str().to_owned(),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn oin(n: u64) -> String {
        format!("{n:020}")
    }

    fn rec(event: AuditEvent, at: DateTime<Utc>, actor: u64, id: &str) -> AuditRecord {
        AuditRecord {
            actor: Some(oin(actor)),
            case_ref: Some("case-a".into()),
            message_id: Some(id.into()),
            ..crate::record::bare_record(event, at)
        }
    }

    #[test]
    fn each_request_has_its_state_and_term() {
        let t = Utc::now() - Duration::days(60);
        let mut access = rec(AuditEvent::AccessRequested, t, 1, "r1");
        access.due_at = Some(t + Duration::days(30));
        let mut late_access = rec(AuditEvent::AccessRequested, t, 1, "r2");
        late_access.due_at = Some(t + Duration::days(30));
        let answered = rec(AuditEvent::AccessAnswered, t + Duration::days(3), 1, "r1");
        let mut erasure = rec(AuditEvent::DeletionOrdered, t, 1, "o1");
        erasure.reason = Some("erasure".into());
        erasure.counterparties = vec![oin(2)];
        erasure.due_at = Some(t + Duration::days(14));
        let mut erasure3 = erasure.clone();
        erasure3.counterparties = vec![oin(3)];
        let confirmed = rec(
            AuditEvent::DeletionConfirmed,
            t + Duration::days(1),
            2,
            "o1",
        );
        let mut retention = rec(AuditEvent::DeletionOrdered, t, 1, "o2");
        retention.reason = Some("retention_ended".into());
        let mut correction = rec(AuditEvent::Accepted, t, 1, "m1");
        correction.kind = Some("correctie".into());
        correction.counterparties = vec![oin(2)];
        let receipt = rec(AuditEvent::Receipt, t + Duration::hours(1), 2, "m1");
        let records = vec![
            access,
            late_access,
            answered,
            erasure,
            erasure3,
            confirmed,
            retention,
            correction,
            receipt,
        ];
        let rows = requests(&records, Utc::now());
        let state = |id: &str| rows.iter().find(|r| r.id == id).unwrap().state;
        assert_eq!(
            rows.len(),
            4,
            "the retention order is no data subject's request"
        );
        assert_eq!(state("r1"), RequestState::Done);
        assert_eq!(state("r2"), RequestState::Late);
        // One of two holders confirmed, past the term.
        assert_eq!(state("o1"), RequestState::Late);
        let o1 = rows.iter().find(|r| r.id == "o1").unwrap();
        assert_eq!(o1.request, "erasure");
        assert_eq!(o1.parties, vec![oin(2), oin(3)]);
        assert_eq!(o1.done_by, vec![oin(2)]);
        assert_eq!(state("m1"), RequestState::Done);
        let (head, cells) = cells(&rows);
        assert_eq!(head.len(), cells[0].len());
    }
}
