//! Access queries (AVG art. 15): a case manager's agent asks for the facts of a data
//! subject's cases. `core::rights::check_access` decides whether it may (only cases the
//! party is or was a member of); the request is recorded first, one `access_requested`
//! record per case with the request id and the answer's term (`due_at`), or, once the
//! agent says the person has the answer, one `access_answered` record per case. If the
//! records cannot be made durable, nothing is answered. The records hold the request id
//! and case references only: the person's identifier never leaves the agent.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_core::rights;
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol::{RejectCode, Rejection, Response};
use ketenpost_schemas::rights::{AccessFacts, AccessQuery, CaseFacts, DataFlow, Organisation};
use tracing::{error, info};

use super::state::{task_failed, Shared};
use crate::audit::{AuditEntry, AuditEvent, AuditRecord};
use crate::report;
use ketenpost_core::registry::Case;

/// Answer an access query of the party `oin`.
pub(super) async fn facts(q: AccessQuery, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let docs = shared.docs();
    let now = shared.now();
    // The check (registry reads) and the records (sled writes under the chain's lock)
    // run on a blocking thread: the writer thread holds both locks while its round runs.
    let (s, o) = (shared.clone(), oin.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        let cases = match rights::check_access(&q, &o, &s.live()) {
            Ok(c) => c,
            Err(r) => {
                s.audit(
                    AuditEntry::refused(AuditEvent::AccessRequested, r.code.as_str())
                        .actor(&o)
                        .message_id(q.request_id),
                );
                return Err(Response::Rejected(r));
            }
        };
        let due = rights::access_due(q.received_on);
        for case in &cases {
            let entry = match q.answered_at {
                None => AuditEntry::ok(AuditEvent::AccessRequested).due_at(due),
                Some(_) => AuditEntry::ok(AuditEvent::AccessAnswered),
            }
            .actor(&o)
            .case_ref(&case.case_ref)
            .purpose(&case.purpose)
            .message_id(q.request_id);
            if let Err(e) = s.audit.append(entry, now) {
                error!(cause = %e, "cannot record an access request; nothing is answered");
                return Err(storage());
            }
        }
        Ok((q, cases, due))
    })
    .await;
    let (q, cases, due) = match recorded {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(response)) => return response,
        Err(e) => return task_failed(&e),
    };
    if let Err(e) = shared.store.commit().await {
        error!(cause = %e, "cannot make an access request's records durable");
        return storage();
    }
    let s = shared.clone();
    let request_id = q.request_id;
    let built = tokio::task::spawn_blocking(move || {
        let records = s
            .audit
            .records_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)?;
        Ok::<_, crate::audit::AuditError>(
            cases
                .iter()
                .map(|c| case_facts(c, &records, &docs.policy, &docs.directory))
                .collect::<Vec<_>>(),
        )
    })
    .await;
    match built {
        Ok(Ok(cases)) => {
            info!(party = %oin, request = %request_id, cases = cases.len(), "access facts answered");
            Response::AccessFacts(AccessFacts {
                request_id,
                due_at: due,
                cases,
            })
        }
        Ok(Err(e)) => {
            error!(cause = %e, "cannot read the audit trail for an access request");
            storage()
        }
        Err(e) => {
            error!(cause = %e, "an access request task failed");
            storage()
        }
    }
}

/// An organisation with its directory name.
pub fn organisation(oin: &Oin, directory: &Directory) -> Organisation {
    Organisation {
        oin: oin.clone(),
        name: directory
            .party(oin)
            .map_or_else(|| oin.to_string(), |p| p.name.clone()),
    }
}

/// The facts of one case: its purpose under the policy and every flow of data about it
/// (the rows of the FG's access report, `report::access`), with names.
fn case_facts(
    case: &Case,
    records: &[AuditRecord],
    policy: &Policy,
    directory: &Directory,
) -> CaseFacts {
    let purpose = policy.purposes.get(&case.purpose);
    let named = |text: &str| -> Option<Organisation> {
        text.parse::<Oin>()
            .ok()
            .map(|o| organisation(&o, directory))
    };
    let flows = report::access(records, case.case_ref.as_str(), policy)
        .into_iter()
        .filter_map(|row| {
            Some(DataFlow {
                at: row.time.parse().ok()?,
                kind: row.kind,
                sender: named(&row.sender)?,
                recipient: named(&row.recipient)?,
                categories: row
                    .categories
                    .split_whitespace()
                    .filter(|c| *c != "-")
                    .map(str::to_owned)
                    .collect(),
                ground: row.ground,
                received_at: row.received_at,
            })
        })
        .collect();
    let mut parties: Vec<Organisation> = case
        .members
        .keys()
        .chain(&case.former_members)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|o| organisation(o, directory))
        .collect();
    parties.sort_by(|a, b| a.name.cmp(&b.name));
    CaseFacts {
        case_ref: case.case_ref.clone(),
        purpose: case.purpose.clone(),
        purpose_name: purpose.map_or_else(|| case.purpose.clone(), |p| p.name.clone()),
        processing_activity: purpose
            .map(|p| p.processing_activity.clone())
            .unwrap_or_default(),
        legal_basis: purpose.map(|p| p.legal_basis.clone()).unwrap_or_default(),
        retention: purpose
            .map(|p| format!("{} after the case ends", p.case_retention))
            .unwrap_or_default(),
        opened_at: case.opened_at,
        closed_at: case.closed_at,
        parties,
        flows,
    }
}

fn storage() -> Response {
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not read or record this access request; try again",
    ))
}
