//! Submissions: checks 1-7 (the core), the durable write with its audit records and
//! answer clock (the store's writer thread), the answer bookkeeping, the answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_core::checks::{self, Authorised, Submitted};
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::message::MessageMeta;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Rejection, Response};
use tracing::{debug, info};

use super::state::{storage_error, task_failed, Shared};
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::store::{PendingAnswer, PutTicket, StoreError};

/// What a submission staged in the store, to be committed and answered.
struct Staged {
    id: ketenpost_schemas::ids::MessageId,
    kind: ketenpost_schemas::kind::Kind,
    flags: Vec<AcceptFlag>,
    recipients: std::collections::BTreeSet<Oin>,
}

pub(super) async fn submit(bytes: Vec<u8>, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = shared.now();
    let guard = shared.registry_lock.read().await;
    // The checks and the start of the write (appending the body to the spool) run on a
    // blocking thread; the store's writer thread writes and flushes the message with the
    // rest of its batch, and the submission waits for that here without holding a thread.
    // The registry lock stays held until the message landed, so no consent withdrawal or
    // case change falls between its checks and its write.
    let (s, o) = (shared.clone(), oin.clone());
    let begun = tokio::task::spawn_blocking(move || {
        // One set of documents for the whole decision, whatever a reload does meanwhile.
        let docs = s.docs();
        let authorised = stage_check(&bytes, &s, &docs, &o, now)?;
        let queued = std::time::Instant::now();
        let ticket = stage_write(&authorised, &bytes, &s, &docs, &o, now)?;
        Ok((authorised, bytes, ticket, queued))
    })
    .await;
    let (authorised, bytes, ticket, queued) = match begun {
        Ok(Ok(begun)) => begun,
        Ok(Err(response)) => return response,
        Err(e) => return task_failed(&e),
    };
    // The rest runs in its own task, so that it completes (the answer bookkeeping, the
    // recipients' wake-up) even when the connection goes.
    let (s, o) = (shared.clone(), oin.clone());
    let finish = tokio::spawn(async move {
        let landed = match ticket.landed().await {
            Ok(landed) => landed,
            Err(e) => return Err(put_failed(e, &authorised, &s, &o, &bytes)),
        };
        s.counters.store_written(queued.elapsed());
        let mut staged = Staged::of(&authorised);
        // A late answer carries `late_answer` itself (the answered message's clock, in
        // the same transaction, decided it).
        if landed.late_answer {
            staged.flags.push(AcceptFlag::LateAnswer);
        }
        // Landed is durable: a recipient waiting in a fetch may have it now.
        for r in &staged.recipients {
            s.notify(r);
        }
        Ok(staged)
    });
    let staged = match finish.await {
        Ok(Ok(staged)) => staged,
        Ok(Err(response)) => return response,
        Err(e) => return task_failed(&e),
    };
    drop(guard);
    debug!(kind = %staged.kind, recipients = staged.recipients.len(), flags = ?staged.flags, "message accepted");
    Response::Accepted {
        message_id: staged.id,
        flags: staged.flags,
    }
}

/// The checks of a submission; blocking (see [`submit`]). The caller holds the registry
/// lock shared.
fn stage_check(
    bytes: &[u8],
    shared: &Arc<Shared>,
    docs: &crate::documents::Documents,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<Authorised, Response> {
    match checks::check_message_facts(
        Submitted {
            transport: oin,
            bytes,
        },
        docs.env(&shared.limits, shared.max_clock_skew()),
        &shared.live(),
        now,
    ) {
        Ok(a) => Ok(a),
        Err(refusal) => {
            let r = refusal.rejection;
            info!(code = %r.code, check = r.check, "message rejected");
            shared.audit(rejected_entry(&r, oin, bytes, refusal.verified.as_deref()));
            Err(Response::Rejected(r))
        }
    }
}

impl Staged {
    fn of(authorised: &Authorised) -> Staged {
        let h = authorised.header();
        Staged {
            id: h.id,
            kind: h.kind,
            flags: authorised.flags().to_vec(),
            recipients: authorised
                .recipients()
                .iter()
                .map(|(o, _)| o.clone())
                .collect(),
        }
    }
}

/// Start the store write of an authorised submission with its audit records, its answer
/// clock and, for an answer, the answered message's clock; blocking (see [`submit`]). The
/// caller holds the registry lock shared.
fn stage_write(
    authorised: &Authorised,
    bytes: &[u8],
    shared: &Arc<Shared>,
    docs: &crate::documents::Documents,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<PutTicket, Response> {
    let meta = MessageMeta::accepted(authorised, now);
    // The answer clock (the kind's standing term and the message's own answer request,
    // checked in check 7) is written in the message's own transaction.
    let clock = docs
        .policy
        .rule(&authorised.header().purpose, authorised.header().kind)
        .and_then(|rule| {
            AnswerClock::start_with(
                &meta,
                rule,
                authorised.recipients(),
                authorised.header().answer_request.as_ref(),
            )
        });
    let entries = accepted_entries(authorised, &meta.recipients, oin);
    // An answer's bookkeeping (the answered message's clock) goes in the same transaction.
    let h = authorised.header();
    let answer = h.in_reply_to.map(|answered| PendingAnswer {
        answered,
        sender: oin.clone(),
        kind: h.kind,
        late_entry: about_message(
            AuditEntry::flagged(AuditEvent::DeadlineLate, "answer_late"),
            authorised,
            oin,
        ),
        calendar: docs.policy.calendar.clone(),
    });
    shared
        .store
        .begin_put(
            authorised,
            &meta,
            &shared.audit,
            entries,
            clock.as_ref(),
            answer,
        )
        .map_err(|e| put_failed(e, authorised, shared, oin, bytes))
}

fn put_failed(
    e: StoreError,
    authorised: &Authorised,
    shared: &Arc<Shared>,
    oin: &Oin,
    bytes: &[u8],
) -> Response {
    match e {
        StoreError::Duplicate => {
            let r = Rejection::new(
                RejectCode::Replay,
                format!("message id {} was accepted before", authorised.header().id),
            );
            shared.audit(rejected_entry(&r, oin, bytes, Some(authorised.header())));
            Response::Rejected(r)
        }
        e => storage_error(e),
    }
}

/// `entry` about a message `oin` sent: the sender, case, purpose, processing activity,
/// kind and trace id.
fn about_message(entry: AuditEntry, authorised: &Authorised, oin: &Oin) -> AuditEntry {
    let h = authorised.header();
    entry
        .actor(oin)
        .case_ref(&h.case_ref)
        .purpose(&h.purpose)
        .processing_activity(authorised.processing_activity())
        .kind(h.kind)
        .trace_id(h.trace_id)
}

/// The audit records of accepting a message, written with it.
fn accepted_entries(
    authorised: &Authorised,
    recipients: &std::collections::BTreeSet<Oin>,
    oin: &Oin,
) -> Vec<AuditEntry> {
    let h = authorised.header();
    let base = |entry: AuditEntry| {
        about_message(entry, authorised, oin)
            .message_id(h.id)
            .counterparties(recipients.iter())
    };
    let mut entries =
        vec![base(AuditEntry::ok(AuditEvent::Accepted)).recipient_views(authorised.recipients())];
    // A ground the policy flags is alerted (its record is `flagged`); an unflagged one is
    // recorded for the FGs' grounds report only.
    if let Some(ground) = authorised.ground() {
        let outcome = if authorised.ground_alerts_fg() {
            Outcome::Flagged
        } else {
            Outcome::Ok
        };
        entries.push(base(
            AuditEntry::new(AuditEvent::NonConsentUse, outcome).reason_ground(ground),
        ));
    }
    if authorised.flags().contains(&AcceptFlag::Late) {
        entries.push(base(AuditEntry::flagged(
            AuditEvent::DeadlineLate,
            "late_on_arrival",
        )));
    }
    if let Some(routing) = authorised.breach() {
        // One record per affected case, naming every party concerned, so the breach (or
        // the correction) shows in each case's access report and in the report of each
        // party's FG.
        let (event, reason) = if h.kind == ketenpost_schemas::kind::Kind::Correctie {
            (
                AuditEvent::Correction,
                "routed_to_recipients_of_corrected_data",
            )
        } else {
            (AuditEvent::BreachNotice, "routed_to_parties_concerned")
        };
        for case in &routing.cases {
            entries.push(
                AuditEntry::ok(event)
                    .actor(oin)
                    .case_ref(case)
                    .purpose(&h.purpose)
                    .processing_activity(authorised.processing_activity())
                    .kind(h.kind)
                    .message_id(h.id)
                    .trace_id(h.trace_id)
                    .counterparties(recipients.iter())
                    .reason(reason),
            );
        }
    }
    entries
}

/// The audit record of a refused submission. Before the sender's signature verified,
/// nothing the header claims is recorded (any party could name another's case or
/// partners): only the connection's OIN, the reason and a digest of the bytes. After it,
/// the verified header's typed values (ids, kind, recipients), never content.
fn rejected_entry(
    r: &Rejection,
    oin: &Oin,
    bytes: &[u8],
    verified: Option<&ketenpost_schemas::envelope::Header>,
) -> AuditEntry {
    let e = AuditEntry::refused(AuditEvent::Rejected, r.code.as_str()).actor(oin);
    let Some(h) = verified else {
        return e.request_digest(bytes);
    };
    let mut e = e
        .kind(h.kind)
        .case_ref(&h.case_ref)
        .message_id(h.id)
        .trace_id(h.trace_id)
        .counterparties(h.recipients.iter());
    if let Some(p) = shared_purpose(&h.purpose) {
        e = e.purpose(p);
    }
    e
}

/// A purpose id from a header is only recorded when it is a plain identifier.
fn shared_purpose(p: &str) -> Option<&str> {
    (p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(p)
}
