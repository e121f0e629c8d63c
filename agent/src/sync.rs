//! The background loops that keep the agent in step with the broker.
//!
//! | loop | what it does |
//! |---|---|
//! | outbox | submits queued messages (up to 32 at once) until the broker accepts or rejects each |
//! | fetch | long-polls for deliveries: messages are opened, stored and receipted; notices (forwarded receipts, expiry and deadline notices, deletion orders) are applied and acknowledged |
//! | checkpoints | fetches the broker's signed audit checkpoint and checks it extends the ones seen |
//! | documents | fetches the signed documents again, for a new directory serial |
//! | sweep | local retention, and deletion confirmations that have not reached the broker yet |
//!
//! Every loop backs off (doubling, with jitter, up to `timing.retry_max_ms`) while the
//! broker is away and stops at the step it is in when the agent shuts down. Nothing a loop
//! is asked to send is lost while the broker is away: it is on disk first.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ketenpost_audit::{AuditEntry, AuditEvent, Checkpoint};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeadlineNotice, DeletionOrder, DeliveryReceipt, ExpiryNotice, Record,
    SignedRecord,
};
use ketenpost_schemas::digest::sha256_hex;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::protocol::{
    envelope_from_b64, Delivery, ReceiptOutcome, RejectCode, Request, Response, MAX_RECEIPTS,
};
use ketenpost_transport::failpoint;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::checkpoints::{self, AuditWarning, Verdict};
use crate::inbox::{self, Receipted};
use crate::mirror::KnownCase;
use crate::ops::Core;
use crate::outbox::{Overdue, SubmitAnswer};
use crate::{deletion, documents, retention, Error};

pub use ketenpost_schemas::control::BROKER_SIGNER;

/// Most messages submitted at once.
const SUBMIT_CONCURRENCY: usize = 32;
/// Most deliveries per fetch.
const FETCH_MAX: u16 = 64;

pub use crate::backoff::Backoff;

/// Sleep for `d`, or less when the agent stops; returns whether it stops.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => *stop.borrow(),
    }
}

/// Spawn every loop.
pub(crate) fn spawn_all(tasks: &mut JoinSet<()>, core: &Arc<Core>, stop: &watch::Receiver<bool>) {
    tasks.spawn(outbox_loop(core.clone(), stop.clone()));
    tasks.spawn(fetch_loop(core.clone(), stop.clone()));
    tasks.spawn(checkpoint_loop(core.clone(), stop.clone()));
    tasks.spawn(documents_loop(core.clone(), stop.clone()));
    tasks.spawn(sweep_loop(core.clone(), stop.clone()));
}

// ---- outbox ------------------------------------------------------------------------------

async fn outbox_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut backoff = core.config.backoff();
    loop {
        if *stop.borrow() {
            break;
        }
        let batch = match core.store.outbox_queued(SUBMIT_CONCURRENCY) {
            Ok(b) => b,
            Err(e) => {
                error!(cause = %e, "cannot read the outbox");
                if pause(&mut stop, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = stop.changed() => break,
                _ = core.outbox_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            continue;
        }
        let mut set = JoinSet::new();
        for entry in batch {
            let core = core.clone();
            set.spawn(async move { submit_one(&core, entry).await });
        }
        let mut all_settled = true;
        while let Some(r) = set.join_next().await {
            all_settled &= r.unwrap_or(false);
        }
        if all_settled {
            backoff.reset();
        } else if pause(&mut stop, backoff.next_delay()).await {
            break;
        }
    }
}

/// Submit one message; returns whether the broker settled it (accepted or rejected).
async fn submit_one(core: &Core, entry: crate::outbox::OutboxEntry) -> bool {
    let id = entry.message_id;
    let answer = match entry.envelope_bytes() {
        None => SubmitAnswer::Failed("the sealed envelope is missing".into()),
        Some(bytes) => match core
            .link
            .request(&Request::Submit(bytes), core.config.request_timeout())
            .await
        {
            Ok(Response::Accepted { message_id, flags }) if message_id == id => {
                failpoint::hit("agent-submit", "answered");
                SubmitAnswer::Accepted(flags)
            }
            Ok(Response::Rejected(r)) => SubmitAnswer::Rejected(r),
            Ok(Response::Error { code, message }) => {
                SubmitAnswer::Failed(format!("broker error {code}: {message}"))
            }
            Ok(other) => SubmitAnswer::Failed(format!("unexpected answer '{}'", other.name())),
            Err(e) => SubmitAnswer::Failed(e.to_string()),
        },
    };
    if let Some(expected) = entry.reseal_to(&answer) {
        let sealed = match entry.reseal.clone() {
            Some(p) => core
                .seal_parts(id, entry.kind, &entry.case_ref, expected.clone(), &p)
                .await
                .map(Some),
            None => Ok(None),
        };
        match sealed {
            Ok(Some((bytes, header))) => {
                let updated = core.store.outbox_update(&id, |e| {
                    e.resealed(&header, &bytes, &expected);
                    true
                });
                match updated {
                    Ok(_) => {
                        info!(message = %id, recipients = expected.len(), "breach notice sealed again to the broker's routing");
                        return true;
                    }
                    Err(e) => {
                        error!(message = %id, cause = %e, "cannot store the resealed breach notice")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => warn!(message = %id, cause = %e, "cannot seal the breach notice again"),
        }
    }
    let mut settled = false;
    let now = core.clock.now();
    let result = core.store.outbox_update(&id, |e| {
        settled = e.answered(answer.clone(), now);
        true
    });
    if settled && result.is_ok() {
        if let Some(audit) = broker_answer_entry(core, &entry, &answer) {
            core.store.audit(audit, now);
        }
    }
    match (&answer, result) {
        (_, Err(e)) => error!(message = %id, cause = %e, "cannot record the broker's answer"),
        (SubmitAnswer::Accepted(flags), _) => {
            info!(message = %id, flags = ?flags, "message accepted by the broker")
        }
        (SubmitAnswer::Rejected(r), _) if settled => {
            if r.code == RejectCode::Replay {
                info!(message = %id, "message was accepted earlier (replay of our own id)")
            } else {
                warn!(message = %id, code = %r.code, check = r.check, "message rejected by the broker")
            }
        }
        (SubmitAnswer::Rejected(r), _) => {
            debug!(message = %id, code = %r.code, "broker could not store the message; retrying")
        }
        (SubmitAnswer::Failed(why), _) => {
            debug!(message = %id, cause = %why, "submission failed; retrying")
        }
    }
    settled
}

/// The agent's audit record of the broker's final answer to one of our submissions.
fn broker_answer_entry(
    core: &Core,
    entry: &crate::outbox::OutboxEntry,
    answer: &SubmitAnswer,
) -> Option<AuditEntry> {
    let audit = match answer {
        SubmitAnswer::Accepted(_) => AuditEntry::ok(AuditEvent::Accepted),
        // Our own id again: the broker accepted it before and its answer was lost.
        SubmitAnswer::Rejected(r) if r.code == RejectCode::Replay => {
            AuditEntry::ok(AuditEvent::Accepted)
                .reason_explained("replay", "accepted earlier; its first answer was lost")
        }
        SubmitAnswer::Rejected(r) => {
            let code = r.code.as_str();
            AuditEntry::refused(AuditEvent::Rejected, code)
                .reason_explained(code, "refused by the broker")
        }
        SubmitAnswer::Failed(_) => return None,
    };
    let docs = core.docs();
    let mut audit = audit
        .actor(&core.me)
        .kind(entry.kind)
        .case_ref(&entry.case_ref)
        .message_id(entry.message_id)
        .purpose(&entry.purpose)
        .counterparties(entry.recipients.iter().map(|r| &r.oin));
    if let Some(p) = docs.policy.purposes.get(&entry.purpose) {
        audit = audit.processing_activity(&p.processing_activity);
    }
    Some(audit)
}

// ---- fetch -------------------------------------------------------------------------------

/// The fetch loop: long-poll the broker and handle what it delivers. Two batches overlap:
/// while one is handled (each message opened, stored durably and receipted; the notices
/// applied, flushed and acknowledged), the next fetch is already waiting, naming the
/// handled batch's messages in `skip` so it is not given them again. A batch is handled
/// only after the one before it is done, so notices are applied in order.
async fn fetch_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut backoff = core.config.backoff();
    // Grows while fetches bring only deliveries the agent refuses (they stay queued at the
    // broker until it expires them), so a stuck delivery does not make the agent spin.
    let mut idle = core.config.backoff();
    let wait = core.config.fetch_wait();
    let timeout = core.config.request_timeout() + wait;
    let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
    let mut handling: Option<Handling> = None;
    loop {
        let req = Request::Fetch {
            max: FETCH_MAX,
            wait_ms,
            skip: handling
                .as_ref()
                .map(|h| h.seqs.clone())
                .unwrap_or_default(),
        };
        let answer = tokio::select! {
            _ = stop.changed() => break,
            a = core.link.request(&req, timeout) => a,
        };
        // Up to which notice the batch handled while this fetch ran acknowledged: this
        // fetch may bring those again. Only this one: a later fetch starts after the ack,
        // and the broker has dropped them (a restored broker may even number new notices
        // lower, which a lasting filter would then drop for good).
        let mut acked = None;
        if let Some(h) = handling.take() {
            let done = h.finish().await;
            acked = done.acked;
            if done.progress || done.items == 0 {
                idle.reset();
            } else if pause(&mut stop, idle.next_delay()).await {
                break;
            }
        }
        match answer {
            Ok(Response::Deliveries(items)) => {
                backoff.reset();
                let items: Vec<Delivery> = items
                    .into_iter()
                    .filter(|d| match d {
                        Delivery::Notice { seq, .. } => acked.is_none_or(|a| *seq > a),
                        Delivery::Message { .. } => true,
                    })
                    .collect();
                handling = Some(Handling::start(&core, items));
            }
            Ok(other) => {
                warn!(answer = other.name(), "unexpected answer to a fetch");
                if pause(&mut stop, backoff.next_delay()).await {
                    break;
                }
            }
            Err(e) => {
                debug!(cause = %e, "fetch failed; backing off");
                if pause(&mut stop, backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
    if let Some(h) = handling {
        h.finish().await;
    }
}

/// A batch of deliveries being handled while the next fetch waits.
struct Handling {
    task: tokio::task::JoinHandle<Handled>,
    /// The queue positions of its messages: the next fetch skips them.
    seqs: Vec<u64>,
    items: usize,
}

/// What handling a batch did.
#[derive(Clone, Copy, Debug, Default)]
struct Handled {
    /// Anything moved forward.
    progress: bool,
    /// The notices acknowledged up to here.
    acked: Option<u64>,
    items: usize,
}

impl Handling {
    fn start(core: &Arc<Core>, items: Vec<Delivery>) -> Handling {
        let seqs = items
            .iter()
            .filter_map(|d| match d {
                Delivery::Message { seq, .. } => Some(*seq),
                Delivery::Notice { .. } => None,
            })
            .collect();
        let n = items.len();
        let core = core.clone();
        Handling {
            task: tokio::spawn(async move {
                let (progress, acked) = handle_items(&core, items).await;
                Handled {
                    progress,
                    acked,
                    items: n,
                }
            }),
            seqs,
            items: n,
        }
    }

    async fn finish(self) -> Handled {
        match self.task.await {
            Ok(done) => done,
            Err(e) => {
                error!(cause = %e, "handling a batch of deliveries failed; what it did not settle comes again");
                Handled {
                    items: self.items,
                    ..Handled::default()
                }
            }
        }
    }
}

/// Handle one batch; returns whether anything moved forward, and up to which notice the
/// broker took the acknowledgement.
async fn handle_items(core: &Core, items: Vec<Delivery>) -> (bool, Option<u64>) {
    let mut progress = false;
    let mut ack_up_to = None;
    let mut blocked = false;
    // The receipts of the batch's messages, each stored durably first: sent together.
    let mut receipts = Vec::new();
    for item in items {
        match item {
            Delivery::Message { envelope, .. } => {
                receipts.extend(handle_message(core, &envelope).await);
            }
            Delivery::Notice { seq, record } => {
                if blocked {
                    continue;
                }
                match handle_notice(core, &record).await {
                    Ok(()) => {
                        ack_up_to = Some(seq);
                        progress = true;
                    }
                    Err(e) => {
                        // A local failure: keep this and later notices for the next fetch.
                        error!(cause = %e, kind = %record.kind, "cannot apply a notice; it stays queued");
                        blocked = true;
                    }
                }
            }
        }
    }
    progress |= send_receipts(core, &receipts).await;
    let mut acked = None;
    if let Some(up_to) = ack_up_to {
        // What the notices changed must be on disk before the broker forgets them: an ack
        // before the flush, and a crash after it, would lose a receipt or an order for good.
        if let Err(e) = core.store.flush().await {
            error!(cause = %e, "cannot make the applied notices durable; they are not acknowledged and come again");
            return (progress, None);
        }
        match core
            .link
            .request(&Request::Ack { up_to }, core.config.request_timeout())
            .await
        {
            Ok(Response::Done) => {
                failpoint::hit("agent-notice", "acked");
                acked = Some(up_to);
            }
            Ok(other) => warn!(answer = other.name(), "unexpected answer to an ack"),
            Err(e) => {
                debug!(cause = %e, "ack failed; the notices come again and are applied idempotently")
            }
        }
    }
    (progress, acked)
}

/// Open and store one delivered message, and sign its receipt: the receipt to send once
/// the message is durable (now or before), or `None` when it was refused or not stored
/// (it stays queued at the broker and comes again).
async fn handle_message(core: &Core, envelope_b64: &str) -> Option<Receipted> {
    let now = core.clock.now();
    let bytes = match envelope_from_b64(envelope_b64) {
        Ok(b) => b,
        Err(e) => {
            let key = sha256_hex(envelope_b64.as_bytes());
            let refusal = inbox::Refusal {
                claimed: None,
                code: "malformed",
                reason: e.to_string(),
            };
            note_refusal(core, key.as_bytes(), envelope_b64.as_bytes(), &refusal, now);
            return None;
        }
    };
    let docs = core.docs();
    let me = core.me.clone();
    let identities = core.identities.clone();
    let d = docs.clone();
    let opened = tokio::task::spawn_blocking(move || {
        inbox::open_delivery(&bytes, &me, &identities, &d.policy, &d.directory, now)
    })
    .await;
    let opened = match opened {
        Ok(Ok(o)) => o,
        Ok(Err(refusal)) => {
            let key = match &refusal.claimed {
                Some(h) => h.id.0.as_bytes().to_vec(),
                None => sha256_hex(envelope_b64.as_bytes()).into_bytes(),
            };
            note_refusal(core, &key, envelope_b64.as_bytes(), &refusal, now);
            return None;
        }
        Err(e) => {
            error!(cause = %e, "opening a delivery was interrupted");
            return None;
        }
    };
    let id = opened.header.id;
    // Delivered again (the first receipt was lost): receipt again, do not store again.
    match core.store.receipted(&id) {
        Ok(Some(r)) => return Some(r),
        Ok(None) => {}
        Err(e) => {
            error!(message = %id, cause = %e, "cannot read the receipts");
            return None;
        }
    }
    let sender_role = inbox::sender_role(&opened.header, &docs.policy, &docs.directory);
    let header = opened.header.clone();
    let entry = inbox::entry(opened, &docs.policy, now);
    let receipt = match inbox::receipt(&entry, &core.me, &core.signing) {
        Ok(r) => r,
        Err(e) => {
            error!(message = %id, cause = %e, "cannot sign a receipt");
            return None;
        }
    };
    let receipted = Receipted {
        message_id: id,
        case_ref: entry.case_ref.clone(),
        receipt,
        confirmed: false,
    };
    // A breach notice's or correction's recipients are everyone concerned, not the case
    // team: it teaches nothing about the team.
    if !header.kind.routed_by_audit() {
        let learned = core.store.update_case(&entry.case_ref, |existing| {
            Some(KnownCase::learn(existing, &header, sender_role, now))
        });
        if let Err(e) = learned {
            warn!(message = %id, cause = %e, "cannot update the case mirror");
        }
    }
    let mut audit = AuditEntry::ok(AuditEvent::Receipt)
        .actor(&core.me)
        .counterparty(&entry.sender)
        .kind(entry.kind)
        .case_ref(&entry.case_ref)
        .message_id(id)
        .trace_id(entry.trace_id);
    if let Some(p) = docs.policy.purposes.get(&entry.purpose) {
        audit = audit
            .purpose(&entry.purpose)
            .processing_activity(&p.processing_activity);
    }
    if let Err(e) = core
        .store
        .inbox_insert(
            &entry,
            &receipted,
            audit,
            docs.policy.kind_schema(entry.kind),
        )
        .await
    {
        error!(message = %id, cause = %e, "cannot store a received message; not receipted");
        return None;
    }
    failpoint::hit("agent-inbox", "durable");
    info!(
        message = %id,
        kind = %entry.kind,
        case = %entry.case_ref,
        sender = %entry.sender,
        view = %entry.view,
        "message received"
    );
    if entry.kind == Kind::DatalekMelding {
        let fg = docs
            .directory
            .party(&core.me)
            .map(|p| p.fg_contact.clone())
            .unwrap_or_default();
        warn!(
            message = %id,
            case = %entry.case_ref,
            sender = %entry.sender,
            fg_contact = %fg,
            "breach notice received: hand it to the FG"
        );
    }
    Some(receipted)
}

fn note_refusal(
    core: &Core,
    key: &[u8],
    delivered: &[u8],
    refusal: &inbox::Refusal,
    now: chrono::DateTime<Utc>,
) {
    let record = refusal.to_record(now);
    let noted = core.store.refused_note(key, record);
    if let Ok(true) = noted {
        core.store
            .audit(delivery_refused_entry(core, delivered, refusal), now);
    }
    match noted {
        Ok(true) => warn!(
            code = refusal.code,
            message = ?refusal.claimed.as_ref().map(|h| h.id),
            sender = ?refusal.claimed.as_ref().map(|h| h.sender.to_string()),
            reason = %refusal.reason,
            "delivery refused: not stored, not receipted"
        ),
        Ok(false) => debug!(code = refusal.code, "refused delivery came again"),
        Err(e) => error!(cause = %e, "cannot record a refused delivery"),
    }
}

/// The agent's audit record of a delivery it refused. Before the sender's signature
/// verified, nothing the header claims is a fact: the record names our OIN, the code and
/// the SHA-256 of the delivered bytes only. After it, the verified ids, kind and sender.
fn delivery_refused_entry(core: &Core, delivered: &[u8], refusal: &inbox::Refusal) -> AuditEntry {
    let code = refusal.code;
    let audit = AuditEntry::refused(AuditEvent::DeliveryRefused, code)
        .reason_explained(code, "refused by the receiving agent")
        .actor(&core.me);
    match refusal.verified_header() {
        None => audit.request_digest(delivered),
        Some(h) => {
            let mut audit = audit
                .kind(h.kind)
                .case_ref(&h.case_ref)
                .message_id(h.id)
                .trace_id(h.trace_id)
                .counterparty(&h.sender);
            let docs = core.docs();
            if let Some(p) = docs.policy.purposes.get(&h.purpose) {
                audit = audit
                    .purpose(&h.purpose)
                    .processing_activity(&p.processing_activity);
            }
            audit
        }
    }
}

/// Send the receipts of a batch of messages, up to [`MAX_RECEIPTS`] in one `Receipts`
/// request (each alone to a broker that does not know it); returns whether the broker
/// took any. A receipt not taken is sent again when its message comes again. A broker that
/// refused `Receipts` gets each receipt alone for as long as the agent stays connected to
/// it ([`BrokerLink::note_receipts_refused`](crate::link::BrokerLink::note_receipts_refused)):
/// a reconnect may reach an upgraded broker, which is asked again.
async fn send_receipts(core: &Core, receipted: &[Receipted]) -> bool {
    let timeout = core.config.request_timeout();
    let together = !core.link.receipts_refused();
    let sent = send_receipts_by(
        receipted,
        together,
        |req| async move { core.link.request(&req, timeout).await },
        |r, outcome| receipt_answered(core, r, outcome),
    )
    .await;
    if sent.refused_together {
        core.link.note_receipts_refused();
    }
    sent.took
}

/// How a batch's receipts went ([`send_receipts_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// The broker took at least one.
    took: bool,
    /// The broker refused a `Receipts` request as a request it does not know.
    refused_together: bool,
}

/// [`send_receipts`] over `request` (one request, its answer or why none came), each
/// outcome handed to `answered`, which says whether the broker took that receipt. Without
/// `together`, or once the broker refused a `Receipts` request, each receipt goes alone.
async fn send_receipts_by<F, Fut, E>(
    receipted: &[Receipted],
    mut together: bool,
    request: F,
    mut answered: impl FnMut(&Receipted, ReceiptOutcome) -> bool,
) -> Sent
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response, E>>,
    E: std::fmt::Display,
{
    let mut sent = Sent {
        took: false,
        refused_together: false,
    };
    for chunk in receipted.chunks(MAX_RECEIPTS) {
        if together {
            let req = Request::Receipts(chunk.iter().map(|r| r.receipt.clone()).collect());
            match request(req).await {
                Ok(Response::Receipted(outcomes)) if outcomes.len() == chunk.len() => {
                    for (r, outcome) in chunk.iter().zip(outcomes) {
                        sent.took |= answered(r, outcome);
                    }
                    continue;
                }
                Ok(Response::Rejected(rej)) if rej.code == RejectCode::Malformed => {
                    // A broker from before `Receipts` does not know the request.
                    debug!(reason = %rej.reason, "receipts refused together; sending each alone");
                    sent.refused_together = true;
                    together = false;
                }
                Ok(other) => {
                    warn!(
                        answer = other.name(),
                        receipts = chunk.len(),
                        "unexpected answer to receipts; the broker delivers their messages again"
                    );
                    continue;
                }
                Err(e) => {
                    debug!(cause = %e, receipts = chunk.len(), "receipts not sent; the broker delivers again");
                    continue;
                }
            }
        }
        for r in chunk {
            match request(Request::Receipt(r.receipt.clone())).await {
                Ok(answer) => {
                    sent.took |= answered(r, ReceiptOutcome::of(answer));
                }
                Err(e) => {
                    debug!(message = %r.message_id, cause = %e, "receipt not sent; the broker delivers again");
                }
            }
        }
    }
    sent
}

/// What the broker answered to one receipt; returns whether it took it (or had taken it
/// before).
fn receipt_answered(core: &Core, r: &Receipted, outcome: ReceiptOutcome) -> bool {
    match outcome {
        ReceiptOutcome::Done => {
            failpoint::hit("agent-receipt", "answered");
            if let Err(e) = core.store.receipt_confirmed(&r.message_id) {
                warn!(message = %r.message_id, cause = %e, "cannot mark the receipt as taken");
            }
            true
        }
        ReceiptOutcome::Rejected(rej) if rej.code == RejectCode::Conflict && r.confirmed => {
            // Taken before: the message is no longer queued for us.
            true
        }
        ReceiptOutcome::Rejected(rej) => {
            warn!(message = %r.message_id, code = %rej.code, reason = %rej.reason, "broker refused our receipt");
            false
        }
        ReceiptOutcome::Error { code, message } => {
            warn!(message = %r.message_id, code = %code, cause = %message, "broker could not take our receipt; it delivers again");
            false
        }
    }
}

/// Verify a record signed by the broker with the directory's broker key.
fn broker_record<R: Record>(core: &Core, rec: &SignedRecord) -> Option<R> {
    if rec.signer.as_str() != BROKER_SIGNER {
        error!(kind = %rec.kind, signer = %rec.signer, "notice claims to be from another signer than the broker; ignored");
        return None;
    }
    let docs = core.docs();
    let verified = docs
        .directory
        .broker_key()
        .and_then(|key| rec.verify::<R>(&key));
    match verified {
        Ok(r) => Some(r),
        Err(e) => {
            error!(kind = %rec.kind, cause = %e, "broker notice does not verify with the directory's broker key; ignored");
            None
        }
    }
}

/// Apply one notice. Bad records are logged and dropped (returning `Ok`, so they are
/// acknowledged and do not block the queue); only local failures return an error.
async fn handle_notice(core: &Core, rec: &SignedRecord) -> Result<(), Error> {
    match rec.kind {
        Kind::DeliveryReceipt => {
            let docs = core.docs();
            let now = core.clock.now();
            let keys = docs
                .directory
                .party(&rec.signer)
                .map(|p| p.verifying_keys_at(now));
            let receipt: DeliveryReceipt = match keys {
                Some(k) if !k.is_empty() => match rec.verify_any(&k) {
                    Ok(r) => r,
                    Err(e) => {
                        error!(signer = %rec.signer, cause = %e, "forwarded receipt does not verify; ignored");
                        return Ok(());
                    }
                },
                _ => {
                    error!(signer = %rec.signer, "forwarded receipt from a party not in the directory; ignored");
                    return Ok(());
                }
            };
            if receipt.recipient != rec.signer {
                error!(signer = %rec.signer, "forwarded receipt names another recipient than its signer; ignored");
                return Ok(());
            }
            let mut matched = false;
            core.store.outbox_update(&receipt.message_id, |e| {
                if let Some(r) = e
                    .recipients
                    .iter_mut()
                    .find(|r| r.oin == receipt.recipient && r.body_sha256 == receipt.body_sha256)
                {
                    matched = true;
                    r.delivered_at.get_or_insert(receipt.received_at);
                }
                matched
            })?;
            if matched {
                info!(message = %receipt.message_id, recipient = %receipt.recipient, "delivered");
            } else {
                debug!(message = %receipt.message_id, "receipt for a message not in the outbox (any more)");
            }
            Ok(())
        }
        Kind::ExpiryNotice => {
            if let Some(n) = broker_record::<ExpiryNotice>(core, rec) {
                core.store.outbox_update(&n.message_id, |e| {
                    match e.recipients.iter_mut().find(|r| r.oin == n.recipient) {
                        Some(r) if r.delivered_at.is_none() => {
                            r.expired_at.get_or_insert(n.expired_at);
                            true
                        }
                        _ => false,
                    }
                })?;
                warn!(message = %n.message_id, recipient = %n.recipient, "message expired undelivered");
            }
            Ok(())
        }
        Kind::DeadlineNotice => {
            if let Some(n) = broker_record::<DeadlineNotice>(core, rec) {
                core.store.outbox_update(&n.message_id, |e| {
                    e.overdue.push(Overdue {
                        owed_by: n.owed_by.clone(),
                        deadline: n.deadline,
                    });
                    true
                })?;
                if n.owed_by == core.me {
                    core.store.inbox_overdue(&n.message_id, n.deadline)?;
                }
                warn!(message = %n.message_id, owed_by = %n.owed_by, deadline = %n.deadline, "answer overdue");
            }
            Ok(())
        }
        Kind::CaseChange => {
            // Case changes the broker passes on: a case it closed at the end of its phase,
            // its notice that a case is due for review, and a case manager's phase move
            // or close (so this agent's early checks know what the case allows).
            let Some(change) = broker_record::<CaseChange>(core, rec) else {
                return Ok(());
            };
            if !matches!(
                change.change,
                CaseOp::Close | CaseOp::ReviewDue { .. } | CaseOp::EnterPhase { .. }
            ) {
                error!(case = %change.case_ref, "broker case change of a kind it does not make; ignored");
                return Ok(());
            }
            let now = core.clock.now();
            let docs = core.docs();
            let purpose = docs.policy.purposes.get(&change.purpose);
            let known = core.store.update_case(&change.case_ref, |c| {
                c.map(|mut c| {
                    c.apply(&change.change, purpose, now);
                    c
                })
            })?;
            core.store.flush().await?;
            match &change.change {
                CaseOp::EnterPhase { phase } => {
                    info!(case = %change.case_ref, known = known.is_some(), phase = %phase, "the case moved to another phase")
                }
                CaseOp::Close => {
                    warn!(case = %change.case_ref, known = known.is_some(), by = %change.by, "the case was closed")
                }
                _ => {
                    warn!(case = %change.case_ref, known = known.is_some(), "the case is due for review")
                }
            }
            Ok(())
        }
        Kind::DeletionOrder => {
            let Some(order) = broker_record::<DeletionOrder>(core, rec) else {
                return Ok(());
            };
            carry_out_deletion(core, &order).await
        }
        other => {
            warn!(kind = %other, "notice of a kind this agent does not handle; acknowledged");
            Ok(())
        }
    }
}

async fn carry_out_deletion(core: &Core, order: &DeletionOrder) -> Result<(), Error> {
    if order.party != core.me {
        error!(order = %order.order_id, party = %order.party, "deletion order for another party; ignored");
        return Ok(());
    }
    if core.store.deletion(&order.order_id)?.is_some() {
        return Ok(());
    }
    let now = core.clock.now();
    let entry = core
        .store
        .carry_out(order, |n| {
            deletion::confirm(order, &core.me, &core.signing, n, now)
        })
        .await?;
    warn!(
        order = %order.order_id,
        case = %order.case_ref,
        reason = ?order.reason,
        deleted_messages = entry.deleted_messages,
        "case data deleted on the broker's order; the partner system must delete its copies"
    );
    failpoint::hit("agent-deletion", "durable");
    confirm_deletion(core, &entry).await;
    Ok(())
}

async fn confirm_deletion(core: &Core, entry: &deletion::DeletionEntry) {
    let answer = core
        .link
        .request(
            &Request::Control(entry.confirmation.clone()),
            core.config.request_timeout(),
        )
        .await;
    let now = core.clock.now();
    let update = match answer {
        Ok(Response::Done) => {
            failpoint::hit("agent-confirmation", "answered");
            info!(order = %entry.order_id, "deletion confirmation recorded by the broker");
            core.store.deletion_update(&entry.order_id, |e| {
                e.confirmed_at = Some(now);
            })
        }
        Ok(Response::Rejected(r)) => {
            warn!(order = %entry.order_id, code = %r.code, reason = %r.reason, "broker refused the deletion confirmation");
            core.store.deletion_update(&entry.order_id, |e| {
                e.confirmation_refused = Some(r);
            })
        }
        Ok(other) => {
            warn!(
                answer = other.name(),
                "unexpected answer to a deletion confirmation"
            );
            return;
        }
        Err(e) => {
            debug!(order = %entry.order_id, cause = %e, "deletion confirmation not sent yet");
            return;
        }
    };
    if let Err(e) = update {
        error!(order = %entry.order_id, cause = %e, "cannot record the confirmation's fate");
    }
}

// ---- checkpoints -------------------------------------------------------------------------

async fn checkpoint_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(core.config.timing.checkpoint_interval_secs);
    loop {
        if let Err(e) = check_checkpoint(&core).await {
            debug!(cause = %e, "checkpoint check did not complete");
        }
        if pause(&mut stop, every).await {
            break;
        }
    }
}

fn loud(core: &Core, earlier: Option<&Checkpoint>, new: &Checkpoint, message: String) {
    error!(
        seq = new.seq,
        earlier_seq = earlier.map(|c| c.seq),
        "AUDIT TRAIL WARNING: {message}"
    );
    let w = AuditWarning {
        at: core.clock.now(),
        earlier_seq: earlier.map(|c| c.seq),
        seq: new.seq,
        message,
    };
    if let Err(e) = core.store.warn_audit(w) {
        error!(cause = %e, "cannot record the audit warning");
    }
}

/// Fetch, verify and judge the broker's latest checkpoint.
pub(crate) async fn check_checkpoint(core: &Core) -> Result<(), Error> {
    let timeout = core.config.request_timeout();
    let wire = match core.link.request(&Request::GetCheckpoint, timeout).await? {
        Response::Checkpoint(Some(w)) => w,
        Response::Checkpoint(None) => return Ok(()),
        other => return Err(Error::Unexpected(other.name().into())),
    };
    let new = Checkpoint::from_parts(wire.seq, wire.head_hash, &wire.time, wire.signature)
        .map_err(|e| Error::Unexpected(format!("checkpoint: {e}")))?;
    let latest = core.store.latest_checkpoint()?;
    let docs = core.docs();
    let verified = docs
        .directory
        .broker_key()
        .map_err(Error::from)
        .and_then(|k| new.verify(&k).map_err(|e| Error::Unexpected(e.to_string())));
    if verified.is_err() {
        loud(
            core,
            latest.as_ref(),
            &new,
            "the broker served a checkpoint whose signature does not verify with the directory's broker key".into(),
        );
        return Ok(());
    }
    match checkpoints::judge(latest.as_ref(), &new) {
        Verdict::First => core.store.keep_checkpoint(&new)?,
        Verdict::Same => {}
        Verdict::NeedsProof => {
            // Checked by `judge`: `latest` is there.
            let Some(prev) = latest.as_ref() else {
                return Ok(());
            };
            let req = Request::ProveExtends {
                seq: prev.seq,
                hash: prev.head_hash.clone(),
            };
            match core.link.request(&req, timeout).await? {
                Response::Extends(true) => core.store.keep_checkpoint(&new)?,
                Response::Extends(false) => loud(
                    core,
                    Some(prev),
                    &new,
                    format!(
                        "the broker says its record {} no longer has the hash of the checkpoint \
                         this agent kept: the audit trail was rewritten",
                        prev.seq
                    ),
                ),
                other => return Err(Error::Unexpected(other.name().into())),
            }
        }
        Verdict::Regressed => loud(
            core,
            latest.as_ref(),
            &new,
            "the broker's checkpoint covers fewer records than one seen before: the audit trail was cut back".into(),
        ),
        Verdict::Forked => loud(
            core,
            latest.as_ref(),
            &new,
            "the broker's checkpoint does not extend the one seen before (other hash for the same record, or dated earlier)".into(),
        ),
    }
    Ok(())
}

// ---- documents ---------------------------------------------------------------------------

async fn documents_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(core.config.timing.documents_refresh_secs);
    // The first refresh right away: the agent may have started on its cache.
    loop {
        match core
            .link
            .request(&Request::GetDocuments, core.config.request_timeout())
            .await
        {
            Ok(Response::Documents(d)) => refresh_documents(&core, &d),
            Ok(other) => warn!(answer = other.name(), "unexpected answer to GetDocuments"),
            Err(e) => debug!(cause = %e, "documents not refreshed"),
        }
        if pause(&mut stop, every).await {
            break;
        }
    }
}

fn refresh_documents(core: &Core, d: &ketenpost_schemas::protocol::Documents) {
    let current = core.docs();
    if d == &current.raw {
        return;
    }
    let new = match documents::verify(&core.federation, d, &core.me_keys) {
        Ok(n) => n,
        Err(e) => {
            error!(cause = %e, serial = current.serial(), "the broker serves documents that do not verify; keeping the verified ones");
            return;
        }
    };
    if let Err(e) = documents::may_replace(&current, &new) {
        error!(cause = %e, "refusing the broker's documents; keeping the verified ones");
        return;
    }
    let serial = new.serial();
    match core.set_docs(new) {
        Ok(()) => info!(serial, "new federation documents verified and in force"),
        Err(e) => error!(cause = %e, "cannot store the new documents"),
    }
}

// ---- retention ---------------------------------------------------------------------------

async fn sweep_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(core.config.timing.sweep_interval_secs);
    loop {
        if let Err(e) = sweep(&core).await {
            error!(cause = %e, "retention sweep failed");
        }
        if pause(&mut stop, every).await {
            break;
        }
    }
}

/// One retention pass and a retry of unconfirmed deletions.
pub(crate) async fn sweep(core: &Core) -> Result<(), Error> {
    let now = core.clock.now();
    let docs = core.docs();
    let cases = core.store.cases()?;
    let case_deadline = |case_ref: &ketenpost_schemas::ids::CaseRef| {
        let case = cases.iter().find(|c| &c.case_ref == case_ref)?;
        let purpose = docs.policy.purposes.get(&case.purpose)?;
        retention::case_deadline(
            case.closed_at,
            &purpose.case_retention,
            &docs.policy.calendar,
        )
    };
    let mut removed = 0usize;
    for e in core.store.inbox_all()? {
        let deadline = retention::payload_deadline(
            e.acknowledged_at,
            core.config.inbox.keep_acknowledged_hours,
            case_deadline(&e.case_ref),
        );
        if retention::due(deadline, now) {
            core.store.inbox_remove(&e.message_id)?;
            removed += 1;
        }
    }
    for c in &cases {
        if retention::due(case_deadline(&c.case_ref), now) {
            let n = core.store.delete_case(&c.case_ref)?;
            info!(case = %c.case_ref, deleted_messages = n, "case retention ended: local data deleted");
        }
    }
    if removed > 0 {
        core.store.flush().await?;
        debug!(removed, "inbox payloads past retention deleted");
    }
    for d in core.store.deletions()? {
        if d.confirmation_pending() {
            confirm_deletion(core, &d).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ketenpost_schemas::control::DeliveryReceipt;
    use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
    use ketenpost_schemas::protocol::Rejection;
    use std::sync::Mutex;

    fn receipted(n: usize) -> Vec<Receipted> {
        let key = ketenpost_schemas::keys::generate_signing_key();
        let me: Oin = "00000001234567890000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        (0..n)
            .map(|i| {
                let record = DeliveryReceipt {
                    message_id: MessageId::new(),
                    recipient: me.clone(),
                    body_sha256: format!("{i:064x}"),
                    received_at: Utc::now(),
                };
                Receipted {
                    message_id: record.message_id,
                    case_ref: CaseRef::random(),
                    receipt: SignedRecord::sign(&record, me.clone(), &key)
                        .unwrap_or_else(|e| panic!("{e}")),
                    confirmed: false,
                }
            })
            .collect()
    }

    /// A broker from before `Receipts`: it refuses the unknown request as malformed, as the
    /// frame decoder of those versions did, and answers lone receipts: this stand-in takes
    /// every one but the second.
    fn older_broker(
        seen: &Mutex<Vec<Request>>,
    ) -> impl Fn(Request) -> std::future::Ready<Result<Response, String>> + '_ {
        move |req| {
            let answer = match &req {
                Request::Receipts(_) => Response::Rejected(Rejection::new(
                    RejectCode::Malformed,
                    "unknown request kind 0x0b".to_owned(),
                )),
                Request::Receipt(_) if seen.lock().map_or(0, |s| s.len()) == 2 => {
                    Response::Rejected(Rejection::new(RejectCode::Conflict, "not queued"))
                }
                Request::Receipt(_) => Response::Done,
                _ => Response::Error {
                    code: "unexpected".to_owned(),
                    message: "not a receipt".to_owned(),
                },
            };
            if let Ok(mut s) = seen.lock() {
                s.push(req);
            }
            std::future::ready(Ok(answer))
        }
    }

    #[tokio::test]
    async fn an_older_broker_gets_each_receipt_alone_and_each_outcome_counts() {
        let items = receipted(3);
        let seen = Mutex::new(Vec::new());
        let mut outcomes = Vec::new();
        let sent = send_receipts_by(&items, true, older_broker(&seen), |r, outcome| {
            let done = outcome == ReceiptOutcome::Done;
            outcomes.push((r.message_id, outcome));
            done
        })
        .await;
        assert_eq!(
            sent,
            Sent {
                took: true,
                refused_together: true
            }
        );
        let seen = seen.into_inner().unwrap_or_default();
        // Together first, then each alone, in order.
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(&seen[0], Request::Receipts(all) if all.len() == 3));
        for (req, r) in seen[1..].iter().zip(&items) {
            assert_eq!(req, &Request::Receipt(r.receipt.clone()));
        }
        let ids: Vec<MessageId> = outcomes.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, items.iter().map(|r| r.message_id).collect::<Vec<_>>());
        assert_eq!(outcomes[0].1, ReceiptOutcome::Done);
        assert!(
            matches!(&outcomes[1].1, ReceiptOutcome::Rejected(r) if r.code == RejectCode::Conflict)
        );
        assert_eq!(outcomes[2].1, ReceiptOutcome::Done);
    }

    #[tokio::test]
    async fn a_current_broker_gets_them_together_a_request_per_bound() {
        let items = receipted(MAX_RECEIPTS + 1);
        let seen = Mutex::new(Vec::new());
        let broker = |req: Request| {
            let answer = match &req {
                Request::Receipts(all) => {
                    Response::Receipted(all.iter().map(|_| ReceiptOutcome::Done).collect())
                }
                _ => Response::Error {
                    code: "unexpected".to_owned(),
                    message: "sent alone".to_owned(),
                },
            };
            if let Ok(mut s) = seen.lock() {
                s.push(req);
            }
            std::future::ready(Ok::<_, String>(answer))
        };
        let mut answered = 0;
        assert_eq!(
            send_receipts_by(&items, true, broker, |_, o| {
                answered += 1;
                o == ReceiptOutcome::Done
            })
            .await,
            Sent {
                took: true,
                refused_together: false
            }
        );
        assert_eq!(answered, MAX_RECEIPTS + 1);
        let sizes: Vec<usize> = seen
            .into_inner()
            .unwrap_or_default()
            .iter()
            .map(|r| match r {
                Request::Receipts(all) => all.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [MAX_RECEIPTS, 1]);
    }

    /// An answer that does not fit (another count of outcomes, another kind) or none at
    /// all: nothing counts as taken, so the broker's next delivery brings the receipts
    /// back.
    #[tokio::test]
    async fn no_fitting_answer_takes_nothing() {
        let items = receipted(2);
        for answer in [
            Ok(Response::Receipted(vec![ReceiptOutcome::Done])),
            Ok(Response::Done),
            Err("connection lost".to_owned()),
        ] {
            let broker = |_req: Request| std::future::ready(answer.clone());
            let mut answered = 0;
            let sent = send_receipts_by(&items, true, broker, |_, _| {
                answered += 1;
                true
            })
            .await;
            assert!(!sent.took && !sent.refused_together);
            assert_eq!(answered, 0);
        }
    }

    /// Once a broker refused `Receipts`, the rest of the batch goes alone without asking
    /// again; and a broker known to refuse it is not asked at all.
    #[tokio::test]
    async fn a_broker_that_refused_receipts_together_is_not_asked_again() {
        let items = receipted(MAX_RECEIPTS + 2);
        let seen = Mutex::new(Vec::new());
        let sent = send_receipts_by(&items, true, older_broker(&seen), |_, o| {
            o == ReceiptOutcome::Done
        })
        .await;
        assert!(sent.took && sent.refused_together);
        let seen = seen.into_inner().unwrap_or_default();
        assert_eq!(
            seen.len(),
            1 + MAX_RECEIPTS + 2,
            "one Receipts, then each alone"
        );
        assert!(matches!(&seen[0], Request::Receipts(all) if all.len() == MAX_RECEIPTS));
        for (req, r) in seen[1..].iter().zip(&items) {
            assert_eq!(req, &Request::Receipt(r.receipt.clone()));
        }
        let seen = Mutex::new(Vec::new());
        let sent = send_receipts_by(&items[..3], false, older_broker(&seen), |_, o| {
            o == ReceiptOutcome::Done
        })
        .await;
        assert!(sent.took && !sent.refused_together);
        let seen = seen.into_inner().unwrap_or_default();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| matches!(r, Request::Receipt(_))));
    }
}
