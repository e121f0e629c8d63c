//! The broker's state transitions after acceptance, as pure decisions returning
//! [`Effects`]: a delivery receipt, a first fetch, an undelivered message expiring, an
//! overdue answer, a case's retention ending, and a control record's registration.
//!
//! Each function takes what the store holds *now* (read inside the transaction that will
//! apply the result), the policy where it matters, and `now`. None of them does I/O; the
//! store applies the effects in one transaction ([`crate::effects`]). Running a decision
//! twice on the state its first run produced changes nothing, so a transition that a
//! crash interrupted is completed, never repeated, by the next start.

use chrono::{DateTime, Duration, Utc};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeadlineNotice, DeletionOrder, DeletionReason, DeliveryReceipt,
    ExpiryNotice, SignedRecord,
};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use sha2::{Digest, Sha256};

use crate::checks::ControlEffect;
use crate::deadlines::{self, AnswerClock};
use crate::effects::{DeletionState, Destroy, Effects, Notice, Write};
use crate::message::MessageMeta;
use crate::registry::Case;
use ketenpost_audit::{AuditEntry, AuditEvent};

/// How long a deletion order gives a party to delete.
pub const DELETE_WITHIN_DAYS: i64 = 7;

/// The audit entry about a queued message, with its case, purpose, kind and id.
fn about(entry: AuditEntry, m: &MessageMeta) -> AuditEntry {
    entry
        .case_ref(&m.case_ref)
        .purpose(&m.purpose)
        .kind(m.kind)
        .message_id(m.id)
}

/// The message is gone from the broker: metadata, expiry entry and (after the commit) body.
fn forget(fx: &mut Effects, m: &MessageMeta) {
    fx.writes.push(Write::RemoveMeta {
        id: m.id,
        expires_at: m.expires_at,
    });
    if let Some(at) = m.body_at {
        fx.destroy.push(Destroy { id: m.id, at });
    }
}

/// Write the clock, or forget it once every answer is in.
fn put_clock(fx: &mut Effects, clock: AnswerClock) {
    if clock.is_settled() {
        fx.writes.push(Write::RemoveClock(clock.message_id));
    } else {
        fx.writes.push(Write::Clock(clock));
    }
}

fn conflict(reason: String) -> Rejection {
    Rejection::new(RejectCode::Conflict, reason)
}

/// A verified delivery receipt from `recipient` (see
/// [`check_receipt`](crate::checks::check_receipt)), against the message as the store
/// holds it now.
///
/// - `meta`: the message's metadata, `None` when the broker holds no such message.
/// - `view_digest`: the SHA-256 the message's header lists for `recipient`'s view, as the
///   store keeps it with the metadata since acceptance (the header never changes, so the
///   store may read it before the transaction); `None` when it has none (for metadata
///   from before views were kept, when the body cannot be read).
/// - `clock`: the message's answer clock, if it has one; the recipient's answer deadline
///   starts now.
///
/// A second receipt from a recipient that already receipted changes nothing and is not a
/// refusal (its agent may not have seen the first answer). Refused: a message not queued
/// for `recipient`, or a receipt for another body than the one it was given.
pub fn receipt(
    recipient: &Oin,
    r: &DeliveryReceipt,
    forwarded: &SignedRecord,
    meta: Option<MessageMeta>,
    view_digest: Option<&str>,
    clock: Option<AnswerClock>,
    now: DateTime<Utc>,
) -> Result<Effects, Rejection> {
    let not_queued = || {
        conflict(format!(
            "message {} is not queued for {recipient}",
            r.message_id
        ))
    };
    let mut m = meta.ok_or_else(not_queued)?;
    if !m.recipients.contains(recipient) {
        return Err(not_queued());
    }
    if !m.pending.contains(recipient) {
        return Ok(Effects::default());
    }
    let seq = *m.queue_seqs.get(recipient).ok_or_else(not_queued)?;
    if view_digest != Some(r.body_sha256.as_str()) {
        return Err(conflict(format!(
            "the receipt for message {} names another body than the one {recipient} was given",
            r.message_id
        )));
    }
    let mut fx = Effects::default();
    m.pending.remove(recipient);
    fx.writes.push(Write::RemoveQueued {
        party: recipient.clone(),
        seq,
    });
    // A receipt proves the delivery. The record of the first fetch is not made durable
    // before the delivery goes out (the broker's fetch): when a crash lost it, it is
    // written here, before the receipt's, so every receipt has its `delivered` record.
    if m.fetched.insert(recipient.clone()) {
        fx.audit.push(
            about(AuditEntry::ok(AuditEvent::Delivered), &m)
                .actor(recipient)
                .counterparty(&m.sender)
                .reason("recorded_with_receipt"),
        );
    }
    fx.audit.push(
        about(AuditEntry::ok(AuditEvent::Receipt), &m)
            .actor(recipient)
            .counterparty(&m.sender),
    );
    if let Some(mut clock) = clock {
        // Delivered: the recipient's signed receipt says it stored the message. Its
        // answer clock starts here.
        if clock.delivered(recipient, now) {
            put_clock(&mut fx, clock);
        }
    }
    fx.notify(&m.sender.clone(), Notice::Forward(forwarded.clone()));
    if m.pending.is_empty() {
        fx.audit.push(
            AuditEntry::ok(AuditEvent::BodyDeleted)
                .case_ref(&m.case_ref)
                .kind(m.kind)
                .message_id(m.id)
                .reason("all_receipted"),
        );
        forget(&mut fx, &m);
    } else {
        fx.writes.push(Write::Meta(m));
    }
    Ok(fx)
}

/// `party` fetched the message: the first time, this is recorded (`delivered` in the
/// audit trail, which is not yet a receipt). Later fetches change nothing.
pub fn fetched(party: &Oin, meta: Option<MessageMeta>) -> Effects {
    let mut fx = Effects::default();
    let Some(mut m) = meta else {
        return fx;
    };
    if !m.pending.contains(party) || !m.fetched.insert(party.clone()) {
        return fx;
    }
    fx.audit.push(
        about(AuditEntry::ok(AuditEvent::Delivered), &m)
            .actor(party)
            .counterparty(&m.sender),
    );
    fx.writes.push(Write::Meta(m));
    fx
}

/// An undelivered message whose TTL may have passed. When it has, and some recipient
/// still has not receipted it: its queue entries, metadata and body go, the sender gets
/// one expiry notice per such recipient, and those recipients owe no answer. Otherwise
/// (receipted meanwhile, or not yet due) nothing happens.
pub fn expire(
    meta: Option<MessageMeta>,
    clock: Option<AnswerClock>,
    now: DateTime<Utc>,
) -> Effects {
    let mut fx = Effects::default();
    let Some(m) = meta else {
        return fx;
    };
    if m.expires_at > now || m.pending.is_empty() {
        return fx;
    }
    for r in &m.pending {
        if let Some(seq) = m.queue_seqs.get(r) {
            fx.writes.push(Write::RemoveQueued {
                party: r.clone(),
                seq: *seq,
            });
        }
        fx.audit.push(
            about(
                AuditEntry::flagged(AuditEvent::Expired, "undelivered_ttl"),
                &m,
            )
            .actor(&m.sender)
            .counterparty(r),
        );
        fx.notify(
            &m.sender,
            Notice::Expiry(ExpiryNotice {
                message_id: m.id,
                recipient: r.clone(),
                expired_at: now,
            }),
        );
    }
    fx.audit.push(
        AuditEntry::ok(AuditEvent::BodyDeleted)
            .case_ref(&m.case_ref)
            .kind(m.kind)
            .message_id(m.id)
            .reason("expired"),
    );
    if let Some(mut clock) = clock {
        clock.drop_undelivered(&m.pending);
        put_clock(&mut fx, clock);
    }
    forget(&mut fx, &m);
    fx
}

/// The deadline notices due for one answer clock: one per party that owes an overdue
/// answer, to that party, the sender and the case's regievoerder, each exactly once (the
/// clock remembers it).
pub fn deadline_notices(
    mut clock: AnswerClock,
    regievoerder: Option<&Oin>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Effects {
    let mut fx = Effects::default();
    let due = deadlines::take_due(&mut clock, &policy.calendar, now, regievoerder);
    if due.is_empty() {
        return fx;
    }
    let activity = policy
        .purposes
        .get(&clock.purpose)
        .map(|p| p.processing_activity.clone());
    let base = |e: AuditEntry| {
        let e = e
            .case_ref(&clock.case_ref)
            .purpose(&clock.purpose)
            .kind(clock.kind)
            .message_id(clock.message_id);
        match &activity {
            Some(a) => e.processing_activity(a),
            None => e,
        }
    };
    for d in due {
        fx.audit.push(
            base(AuditEntry::flagged(
                AuditEvent::DeadlineLate,
                "answer_overdue",
            ))
            .actor(&d.owed_by)
            .counterparty(&clock.sender),
        );
        fx.audit.push(
            base(AuditEntry::ok(AuditEvent::DeadlineNotice))
                .counterparties(d.to.iter())
                .reason("answer_overdue"),
        );
        let notice = DeadlineNotice {
            message_id: clock.message_id,
            case_ref: clock.case_ref.clone(),
            kind: clock.kind,
            owed_by: d.owed_by.clone(),
            deadline: d.deadline,
            issued_at: now,
        };
        for p in &d.to {
            fx.notify(p, Notice::Deadline(notice.clone()));
        }
    }
    fx.writes.push(Write::Clock(clock));
    fx
}

/// An accepted message that may answer another (`reply.in_reply_to`), against that
/// message's answer clock as the store holds it now: the first answer of each party that
/// owes one is recorded; a late one is audited as `deadline_late` / `answer_late` with
/// `late_entry` (the entry about the reply, without message id and counterparty), naming
/// the message answered and its sender. Anything else changes nothing. Besides the
/// effects, what was recorded: the caller flags a late answer on the reply's own
/// acceptance ([`AcceptFlag::LateAnswer`]).
///
/// [`AcceptFlag::LateAnswer`]: ketenpost_schemas::protocol::AcceptFlag::LateAnswer
pub fn answered(
    reply: crate::deadlines::Reply<'_>,
    clock: Option<AnswerClock>,
    late_entry: AuditEntry,
    calendar: &ketenpost_schemas::calendar::Calendar,
    now: DateTime<Utc>,
) -> (Effects, Option<deadlines::Answered>) {
    let mut fx = Effects::default();
    let Some(mut clock) = clock else {
        return (fx, None);
    };
    let Some(answer) = clock.answer(reply, now, calendar) else {
        return (fx, None);
    };
    if answer.late {
        fx.audit.push(
            late_entry
                .message_id(clock.message_id)
                .counterparty(&answer.owed_to),
        );
    }
    put_clock(&mut fx, clock);
    (fx, Some(answer))
}

/// The id of the deletion order for a case closed at `closed_at`: derived from both, so
/// a decision that is made again (after a crash, or by a second sweep) names the same
/// order, never a new one that would stay unconfirmed forever.
pub fn deletion_order_id(case: &Case, closed_at: DateTime<Utc>) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(b"ketenpost deletion order\0");
    h.update(case.case_ref.as_str().as_bytes());
    h.update(b"\0");
    h.update(closed_at.timestamp_micros().to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A deletion order past its `delete_by` without a confirmation: recorded once
/// (`deletion_overdue`, flagged, naming the party), which alerts the FGs.
pub fn deletion_overdue(state: Option<DeletionState>, now: DateTime<Utc>) -> Effects {
    let mut fx = Effects::default();
    let Some(mut d) = state else {
        return fx;
    };
    if d.confirmed_at.is_some() || d.overdue_at.is_some() || now <= d.order.delete_by {
        return fx;
    }
    fx.audit.push(
        AuditEntry::flagged(AuditEvent::DeletionOverdue, d.order.reason.as_str())
            .case_ref(&d.order.case_ref)
            .message_id(d.order.order_id)
            .counterparty(&d.order.party),
    );
    d.overdue_at = Some(now);
    fx.writes.push(Write::Deletion(d));
    fx
}

/// The id of an ad-hoc deletion order: derived from the case, the signed request's time
/// and reason, so the decision made again names the same order.
pub fn adhoc_order_id(
    case: &Case,
    change: &ketenpost_schemas::control::CaseChange,
    reason: DeletionReason,
) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(b"ketenpost ad-hoc deletion order\0");
    h.update(case.case_ref.as_str().as_bytes());
    h.update(b"\0");
    h.update(change.at.timestamp_micros().to_be_bytes());
    h.update(reason.as_str().as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A case whose retention may have ended: when it has (closed, retention counted from
/// the closure passed, no order yet), every party that holds or held its data gets a
/// deletion order, the case records that the orders went out, and its answer clocks
/// (`clocks`, the ids of those still kept) are forgotten.
pub fn order_deletion(
    case: Case,
    clocks: &[ketenpost_schemas::ids::MessageId],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Effects {
    let mut fx = Effects::default();
    let (Some(closed), None) = (case.closed_at, case.deletion_ordered_at) else {
        return fx;
    };
    let Some(purpose) = policy.purposes.get(&case.purpose) else {
        return fx;
    };
    if purpose.case_retention.deadline(closed, &policy.calendar) > now {
        return fx;
    }
    let order_id = deletion_order_id(&case, closed);
    for party in case.holders() {
        let order = DeletionOrder {
            order_id,
            case_ref: case.case_ref.clone(),
            reason: DeletionReason::RetentionEnded,
            party: party.clone(),
            issued_at: now,
            delete_by: now + Duration::days(DELETE_WITHIN_DAYS),
        };
        fx.writes.push(Write::Deletion(DeletionState {
            order: order.clone(),
            confirmed_at: None,
            overdue_at: None,
        }));
        fx.audit.push(
            AuditEntry::ok(AuditEvent::DeletionOrdered)
                .case_ref(&case.case_ref)
                .purpose(&case.purpose)
                .processing_activity(&purpose.processing_activity)
                .message_id(order_id)
                .counterparty(&party)
                .due_at(order.delete_by)
                .reason("retention_ended"),
        );
        fx.notify(&party, Notice::DeletionOrder(order));
    }
    for id in clocks {
        fx.writes.push(Write::RemoveClock(*id));
    }
    let mut case = case;
    case.deletion_ordered_at = Some(now);
    fx.writes.push(Write::Case(case));
    fx
}

/// Whether a term of `case`'s current phase is due at `now`, so that [`phase_terms`] would
/// change something: the sweep reads it outside a transaction to skip every other case.
pub fn phase_term_due(case: &Case, policy: &Policy, now: DateTime<Utc>) -> bool {
    if !case.is_open() {
        return false;
    }
    let Some(purpose) = policy.purposes.get(&case.purpose) else {
        return false;
    };
    let Some(phase) =
        ketenpost_schemas::policy::phases::find(&purpose.phases, case.phase.as_deref())
    else {
        return false;
    };
    let since = case.phase_started();
    let passed = |d: Option<ketenpost_schemas::duration::PolicyDuration>| {
        d.is_some_and(|d| d.deadline(since, &policy.calendar) <= now)
    };
    passed(phase.close_after) || (case.review_noticed_at.is_none() && passed(phase.review_within))
}

/// The terms of an open case's current phase at `now` (see
/// [`phases`](ketenpost_schemas::policy::phases)):
///
/// - `close_after` passed: the broker closes the case (its retention starts from now),
///   records `case_closed` / `close_after`, and tells every member with a case change
///   (`Close`) it signs itself.
/// - `review_within` passed and not yet told in this phase: each member that manages the
///   case gets a `ReviewDue` notice, once, recorded as `case_review_due`.
///
/// Anything else (closed, no phases, not yet due, told already) changes nothing, so the
/// decision made again on the state it produced does nothing.
///
/// `broker` is the OIN the broker signs its own records with (the changes name it as
/// their maker).
pub fn phase_terms(case: Case, policy: &Policy, broker: &Oin, now: DateTime<Utc>) -> Effects {
    let mut fx = Effects::default();
    if !case.is_open() {
        return fx;
    }
    let Some(purpose) = policy.purposes.get(&case.purpose) else {
        return fx;
    };
    let Some(phase) =
        ketenpost_schemas::policy::phases::find(&purpose.phases, case.phase.as_deref())
    else {
        return fx;
    };
    let since = case.phase_started();
    let cal = &policy.calendar;
    let entry = |e: AuditEntry| {
        e.case_ref(&case.case_ref)
            .purpose(&case.purpose)
            .processing_activity(&purpose.processing_activity)
    };
    let change = |op: CaseOp| CaseChange {
        case_ref: case.case_ref.clone(),
        covenant: case.covenant.clone(),
        purpose: case.purpose.clone(),
        change: op,
        by: broker.clone(),
        at: now,
    };
    if let Some(after) = phase.close_after {
        if after.deadline(since, cal) <= now {
            fx.audit
                .push(entry(AuditEntry::ok(AuditEvent::CaseClosed)).reason("close_after"));
            let notice = change(CaseOp::Close);
            for member in case.members.keys() {
                fx.notify(member, Notice::Case(notice.clone()));
            }
            let mut case = case;
            case.closed_at = Some(now);
            fx.writes.push(Write::Case(case));
            return fx;
        }
    }
    let Some(review) = phase.review_within else {
        return fx;
    };
    let due = review.deadline(since, cal);
    if due > now || case.review_noticed_at.is_some() {
        return fx;
    }
    let managers: Vec<&Oin> = case
        .members
        .iter()
        .filter(|(_, role)| purpose.case_managers.contains(*role))
        .map(|(oin, _)| oin)
        .collect();
    fx.audit.push(
        entry(AuditEntry::ok(AuditEvent::CaseReviewDue))
            .counterparties(managers.iter().copied())
            .reason("review_within"),
    );
    let notice = change(CaseOp::ReviewDue {
        phase: phase.name.clone(),
        due,
    });
    for m in managers {
        fx.notify(m, Notice::Case(notice.clone()));
    }
    let mut case = case;
    case.review_noticed_at = Some(now);
    fx.writes.push(Write::Case(case));
    fx
}

/// A control record the checks accepted ([`crate::checks::check_control`]) from `actor`:
/// what it writes and the audit entry that records it. `deletion` is the order's state
/// for a deletion confirmation, as the store holds it now; confirming an order that is
/// confirmed already changes and records nothing.
pub fn control(
    effect: ControlEffect,
    actor: &Oin,
    deletion: Option<DeletionState>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Effects {
    let activity = |p: &str| {
        policy
            .purposes
            .get(p)
            .map(|p| p.processing_activity.clone())
            .unwrap_or_default()
    };
    let mut fx = Effects::default();
    let entry = match effect {
        ControlEffect::CaseOpened(case) => {
            let e = AuditEntry::ok(AuditEvent::CaseOpened)
                .case_ref(&case.case_ref)
                .purpose(&case.purpose)
                .processing_activity(activity(&case.purpose));
            fx.writes.push(Write::Case(case));
            e
        }
        ControlEffect::CaseChanged { case, change } => {
            let (event, other) = match &change.change {
                CaseOp::AddMember { oin, .. } => (AuditEvent::CaseMemberAdded, Some(oin)),
                CaseOp::RemoveMember { oin } => (AuditEvent::CaseMemberRemoved, Some(oin)),
                CaseOp::EnterPhase { .. } => (AuditEvent::CasePhaseChanged, None),
                CaseOp::ReviewDue { .. } => (AuditEvent::CaseReviewDue, None),
                CaseOp::Close | CaseOp::Open { .. } | CaseOp::OrderDeletion { .. } => {
                    (AuditEvent::CaseClosed, None)
                }
            };
            let mut e = AuditEntry::ok(event)
                .case_ref(&case.case_ref)
                .purpose(&case.purpose)
                .processing_activity(activity(&case.purpose));
            if let Some(o) = other {
                e = e.counterparty(o);
            }
            // The other members' agents learn of a phase move or a close at once (the
            // broker signs the notice), so that their own early checks refuse what the
            // case no longer allows instead of sending it to be refused here.
            if matches!(change.change, CaseOp::EnterPhase { .. } | CaseOp::Close) {
                for member in case.members.keys().filter(|m| *m != actor) {
                    fx.notify(member, Notice::Case(change.clone()));
                }
            }
            fx.writes.push(Write::Case(case));
            e
        }
        ControlEffect::DeletionRequested {
            case,
            change,
            reason,
            ordered,
        } => {
            let order_id = adhoc_order_id(&case, &change, reason);
            let activity = activity(&case.purpose);
            for party in &ordered {
                let order = DeletionOrder {
                    order_id,
                    case_ref: case.case_ref.clone(),
                    reason,
                    party: party.clone(),
                    issued_at: now,
                    delete_by: now + Duration::days(DELETE_WITHIN_DAYS),
                };
                fx.writes.push(Write::Deletion(DeletionState {
                    order: order.clone(),
                    confirmed_at: None,
                    overdue_at: None,
                }));
                fx.audit.push(
                    AuditEntry::ok(AuditEvent::DeletionOrdered)
                        .actor(actor)
                        .case_ref(&case.case_ref)
                        .purpose(&case.purpose)
                        .processing_activity(&activity)
                        .message_id(order_id)
                        .counterparty(party)
                        .due_at(order.delete_by)
                        .reason(reason.as_str()),
                );
                fx.notify(party, Notice::DeletionOrder(order));
            }
            fx.writes.push(Write::Case(case));
            return fx;
        }
        ControlEffect::ConsentGranted(c) => {
            let e = AuditEntry::ok(AuditEvent::ConsentGranted)
                .case_ref(&c.record.case_ref)
                .purpose(&c.record.purpose)
                .processing_activity(activity(&c.record.purpose))
                .message_id(c.record.consent_id)
                .counterparties(c.record.parties.iter());
            fx.writes.push(Write::Consent(c));
            e
        }
        ControlEffect::ConsentWithdrawn(c) => {
            let e = AuditEntry::ok(AuditEvent::ConsentWithdrawn)
                .case_ref(&c.record.case_ref)
                .purpose(&c.record.purpose)
                .processing_activity(activity(&c.record.purpose))
                .message_id(c.record.consent_id);
            fx.writes.push(Write::Consent(c));
            e
        }
        ControlEffect::DeletionConfirmed(conf) => match deletion {
            Some(mut d) if d.confirmed_at.is_none() => {
                d.confirmed_at = Some(now);
                fx.writes.push(Write::Deletion(d));
                AuditEntry::ok(AuditEvent::DeletionConfirmed)
                    .case_ref(&conf.case_ref)
                    .message_id(conf.order_id)
            }
            // Confirmed before (a repeat whose first answer was lost), or gone: nothing
            // happens, so nothing is recorded.
            _ => return fx,
        },
    };
    fx.audit.push(entry.actor(actor));
    fx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod deletion_overdue_tests {
    use super::*;
    use ketenpost_schemas::control::DeletionReason;

    fn state(delete_by: DateTime<Utc>) -> DeletionState {
        DeletionState {
            order: DeletionOrder {
                order_id: uuid::Uuid::now_v7(),
                case_ref: "case-aaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
                reason: DeletionReason::Erasure,
                party: "00000001000002000001".parse().unwrap(),
                issued_at: delete_by - Duration::days(DELETE_WITHIN_DAYS),
                delete_by,
            },
            confirmed_at: None,
            overdue_at: None,
        }
    }

    #[test]
    fn an_unconfirmed_order_past_its_term_is_recorded_once_and_a_confirmed_one_never() {
        let now = Utc::now();
        let due = state(now - Duration::hours(1));
        let fx = deletion_overdue(Some(due.clone()), now);
        assert_eq!(fx.audit.len(), 1);
        let Some(Write::Deletion(noted)) = fx.writes.first() else {
            panic!("the order's state is not written: {:?}", fx.writes)
        };
        assert_eq!(noted.overdue_at, Some(now));
        // Decided again on the state it produced: nothing more.
        assert!(deletion_overdue(Some(noted.clone()), now).is_empty());
        // Not yet due, or confirmed: nothing.
        assert!(deletion_overdue(Some(state(now + Duration::hours(1))), now).is_empty());
        let mut confirmed = due;
        confirmed.confirmed_at = Some(now - Duration::days(1));
        assert!(deletion_overdue(Some(confirmed), now).is_empty());
        assert!(deletion_overdue(None, now).is_empty());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod phase_terms_tests {
    use super::*;
    use crate::testing::Fx;
    use ketenpost_schemas::duration::PolicyDuration;
    use ketenpost_schemas::policy::Phase;

    fn broker() -> Oin {
        ketenpost_schemas::control::BROKER_SIGNER.parse().unwrap()
    }

    fn phased() -> (Fx, Case) {
        let mut fx = Fx::new();
        let purpose = fx.strict.purposes.get_mut("uitstroom").unwrap();
        let all = purpose.kinds.keys().copied().collect();
        purpose.phases = vec![
            Phase {
                name: "actief".into(),
                kinds: all,
                review_within: Some(PolicyDuration::Weeks(2)),
                close_after: None,
            },
            Phase {
                name: "waakvlam".into(),
                kinds: [ketenpost_schemas::kind::Kind::Signaal].into(),
                review_within: Some(PolicyDuration::Weeks(1)),
                close_after: Some(PolicyDuration::Weeks(4)),
            },
        ];
        let case = fx.reg.cases[&fx.case].clone();
        (fx, case)
    }

    fn notices(fx: &Effects) -> Vec<(Oin, CaseOp)> {
        fx.notices
            .iter()
            .map(|(to, n)| match n {
                Notice::Case(c) => (to.clone(), c.change.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_phase_due_for_review_tells_the_case_managers_once() {
        let (fx, case) = phased();
        // Opened 10 days ago: the active phase's 2 weeks have not passed.
        assert!(!phase_term_due(&case, &fx.strict, fx.now));
        assert!(phase_terms(case.clone(), &fx.strict, &broker(), fx.now).is_empty());
        let later = fx.now + Duration::days(5);
        assert!(phase_term_due(&case, &fx.strict, later));
        let due = phase_terms(case.clone(), &fx.strict, &broker(), later);
        // The gemeente and the dual party (a gemeente in this case) manage it; nobody else
        // is told.
        let told: Vec<Oin> = notices(&due).into_iter().map(|(to, _)| to).collect();
        assert_eq!(told, vec![fx.gem.oin.clone(), fx.dual.oin.clone()]);
        assert!(matches!(
            &notices(&due)[0].1,
            CaseOp::ReviewDue { phase, due } if phase == "actief"
                && *due == case.opened_at + Duration::weeks(2)
        ));
        assert_eq!(due.audit.len(), 1);
        assert_eq!(due.audit[0].event(), AuditEvent::CaseReviewDue);
        let Some(Write::Case(noted)) = due.writes.first() else {
            panic!("{:?}", due.writes)
        };
        assert_eq!(noted.review_noticed_at, Some(later));
        assert!(noted.is_open());
        // Decided again on the state it produced: nothing more.
        assert!(!phase_term_due(noted, &fx.strict, later));
        assert!(phase_terms(noted.clone(), &fx.strict, &broker(), later).is_empty());
    }

    /// A case manager's phase move and close reach every other member; a member change
    /// does not (the new member's agent registers the case itself).
    #[test]
    fn a_managers_phase_move_and_close_are_passed_to_the_other_members() {
        let (fx, mut case) = phased();
        let change = |op: CaseOp| CaseChange {
            case_ref: case.case_ref.clone(),
            covenant: case.covenant.clone(),
            purpose: case.purpose.clone(),
            change: op,
            by: fx.gem.oin.clone(),
            at: fx.now,
        };
        let others: Vec<Oin> = case
            .members
            .keys()
            .filter(|m| **m != fx.gem.oin)
            .cloned()
            .collect();
        case.phase = Some("waakvlam".into());
        for op in [
            CaseOp::EnterPhase {
                phase: "waakvlam".into(),
            },
            CaseOp::Close,
        ] {
            let moved = control(
                ControlEffect::CaseChanged {
                    case: case.clone(),
                    change: change(op.clone()),
                },
                &fx.gem.oin,
                None,
                &fx.strict,
                fx.now,
            );
            let told = notices(&moved);
            assert_eq!(
                told.iter().map(|(to, _)| to.clone()).collect::<Vec<_>>(),
                others
            );
            assert!(told.iter().all(|(_, o)| *o == op));
        }
        let added = control(
            ControlEffect::CaseChanged {
                case: case.clone(),
                change: change(CaseOp::RemoveMember {
                    oin: fx.corp.oin.clone(),
                }),
            },
            &fx.gem.oin,
            None,
            &fx.strict,
            fx.now,
        );
        assert!(added.notices.is_empty());
    }

    #[test]
    fn the_end_of_a_phase_closes_the_case_and_tells_every_member() {
        let (fx, mut case) = phased();
        case.phase = Some("waakvlam".into());
        case.phase_since = Some(fx.now);
        case.review_noticed_at = Some(fx.now + Duration::weeks(1));
        assert!(phase_terms(
            case.clone(),
            &fx.strict,
            &broker(),
            fx.now + Duration::weeks(3)
        )
        .is_empty());
        let at = fx.now + Duration::weeks(4);
        assert!(phase_term_due(&case, &fx.strict, at));
        let closed = phase_terms(case.clone(), &fx.strict, &broker(), at);
        let told: Vec<Oin> = notices(&closed).iter().map(|(to, _)| to.clone()).collect();
        assert_eq!(told, case.members.keys().cloned().collect::<Vec<_>>());
        assert!(notices(&closed).iter().all(|(_, op)| *op == CaseOp::Close));
        assert_eq!(closed.audit.len(), 1);
        assert_eq!(closed.audit[0].event(), AuditEvent::CaseClosed);
        let Some(Write::Case(done)) = closed.writes.first() else {
            panic!("{:?}", closed.writes)
        };
        // Its retention counts from now.
        assert_eq!(done.closed_at, Some(at));
        assert!(phase_terms(done.clone(), &fx.strict, &broker(), at).is_empty());
        // Without phases nothing ever happens.
        let mut plain = fx.strict.clone();
        plain.purposes.get_mut("uitstroom").unwrap().phases.clear();
        assert!(phase_terms(case, &plain, &broker(), at + Duration::days(400)).is_empty());
    }
}
