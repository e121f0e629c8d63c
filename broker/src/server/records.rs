//! Fetches, receipts and control records: each a decision of the core applied in one
//! transaction of the store's writer thread. Receipts and control records are answered
//! once durable ([`transition`]); a fetch once what it read is durable, with the record
//! of a first fetch queued beside it ([`record_first_fetch`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ketenpost_core::checks::{self, ControlEffect};
use ketenpost_core::effects::Effects;
use ketenpost_core::transitions;
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use ketenpost_schemas::protocol::Response;
use tracing::{error, info};

use super::state::{storage_error, task_failed, Shared};
use super::submit::{Job, Receipt};
use crate::audit::{AuditEntry, AuditEvent};
use crate::store::{StoreError, TransitionTicket, TxResult, TxView, ViewDigest};

/// A fetch: up to `max` deliveries for `oin`, leaving out the messages at the queue
/// positions in `skip` (the caller holds them and is receipting them), waiting up to
/// `wait_ms` for the first.
pub(super) async fn fetch(
    shared: &Arc<Shared>,
    oin: &Oin,
    max: u16,
    wait_ms: u32,
    skip: &[u64],
) -> Response {
    let max = usize::from(max.clamp(1, shared.config.limits.max_fetch));
    let wait = Duration::from_millis(u64::from(wait_ms).min(30_000));
    let deadline = tokio::time::Instant::now() + wait;
    let skip: Arc<std::collections::HashSet<u64>> = Arc::new(skip.iter().copied().collect());
    loop {
        let notify = shared.waiter(oin);
        let notified = notify.notified();
        // The read runs on a blocking thread: every sled read waits while the writer
        // thread's transaction runs, and an async worker that waits stalls every
        // connection it drives.
        let (s, o, k) = (shared.clone(), oin.clone(), skip.clone());
        let read = match tokio::task::spawn_blocking(move || s.store.fetch(&o, max, &k)).await {
            Ok(read) => read,
            Err(e) => return task_failed(&e),
        };
        match read {
            Ok(crate::store::Fetched { items, first, mark }) => {
                if !items.is_empty() {
                    // Deliver only what is durable: what was read here may come from a
                    // transaction whose flush is still to come. The mark, read after the
                    // read, covers the writes of the messages delivered (or, with a
                    // notice, every transaction the read saw); almost always the writer's
                    // flush that answered the sender made them durable already.
                    if !first.is_empty() {
                        record_first_fetch(shared, oin, first);
                    }
                    if let Err(e) = shared.store.commit_covering(mark).await {
                        return storage_error(e);
                    }
                    return Response::Deliveries(items);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Response::Deliveries(items);
                }
            }
            Err(e) => return storage_error(e),
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Response::Deliveries(Vec::new());
        }
    }
}

/// Record the first fetch of each of `first` by `party` (the fetched flag and the
/// `delivered` record, in one transaction of the writer's next round), without waiting
/// for it and without a flush of its own. It need not be durable before the delivery:
/// the receipt, queued after it, finds it applied; and when a crash lost it, the next
/// fetch writes it again, or the receipt does ([`transitions::receipt`] records the
/// delivery of a message it finds not fetched). Every receipt has its `delivered` record.
fn record_first_fetch(
    shared: &Arc<Shared>,
    party: &Oin,
    first: Vec<ketenpost_schemas::ids::MessageId>,
) {
    let (who, now) = (party.clone(), shared.now());
    let ticket = shared.store.begin_transition(
        "fetch",
        &shared.audit,
        &shared.notice_signer,
        now,
        false,
        move |v| {
            let mut fx = Effects::default();
            for id in &first {
                fx.extend(transitions::fetched(&who, v.meta(id)?));
            }
            Ok(Ok::<_, std::convert::Infallible>(fx))
        },
    );
    let s = shared.clone();
    match ticket {
        Ok(ticket) => {
            tokio::spawn(async move {
                match ticket.done().await {
                    Ok(Ok(applied)) => {
                        for p in &applied.wake {
                            s.notify(p);
                        }
                    }
                    Ok(Err(never)) => match never {},
                    Err(e) => {
                        error!(cause = %e, "the record of a first fetch was not written; the next fetch or the receipt writes it")
                    }
                }
            });
        }
        Err(e) => {
            error!(cause = %e, "the record of a first fetch was not queued; the next fetch or the receipt writes it")
        }
    }
}

/// Apply one decision of the core ([`Store::begin_transition`]: in the writer thread's
/// next transaction), make it durable before the answer (the writer's flush of its round),
/// then destroy the bodies it released and wake the parties it notified: [`begin`], then
/// [`landed`].
pub(super) async fn transition<E: Send + 'static>(
    shared: &Arc<Shared>,
    op: &'static str,
    decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>> + Send + 'static,
    now: DateTime<Utc>,
) -> Result<Result<(), E>, StoreError> {
    landed(shared, begin(shared, op, decide, now)?).await
}

/// The first half of [`transition`]: the decision queued for the store's writer thread,
/// applied with the other decisions and message writes of its round, flushed with them
/// (it must be durable before its answer; bodies it releases are destroyed once it is).
fn begin<E: Send + 'static>(
    shared: &Arc<Shared>,
    op: &'static str,
    decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>> + Send + 'static,
    now: DateTime<Utc>,
) -> Result<TransitionTicket<E>, StoreError> {
    shared
        .store
        .begin_transition(op, &shared.audit, &shared.notice_signer, now, true, decide)
}

/// The second half of [`transition`]: wait until the decision is durable (or refused),
/// then wake the parties it notified.
async fn landed<E>(
    shared: &Arc<Shared>,
    ticket: TransitionTicket<E>,
) -> Result<Result<(), E>, StoreError> {
    let applied = match ticket.done().await? {
        Ok(a) => a,
        Err(refused) => return Ok(Err(refused)),
    };
    for p in &applied.wake {
        shared.notify(p);
    }
    Ok(Ok(()))
}

/// How many receipts of one `Receipts` request wait in the check stage at a time: a
/// request of [`MAX_RECEIPTS`](ketenpost_schemas::protocol::MAX_RECEIPTS) queues its
/// checks in runs of this many, so that one party's requests in flight
/// (`limits.max_streams_per_party`) hold at most this many times as many checks as its
/// lone requests could, and the others' submissions do not wait behind a whole batch.
pub(super) const RECEIPT_CHECKS_AT_ONCE: usize = 32;

/// A lone delivery receipt ([`receipts`] of one).
pub(super) async fn receipt(rec: SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    receipts(vec![rec], shared, oin)
        .await
        .pop()
        .unwrap_or_else(|| task_failed(&"a receipt went unanswered"))
}

/// The delivery receipts of one request, each answered as a lone `Receipt` is (`Done`,
/// `Rejected` or `Error`), in their order.
///
/// The checks run on the check stage's threads, each receipt's signature verified with the
/// other signatures waiting there (submissions' and receipts'); the digest of the
/// recipient's view (a sled read, which waits while the writer thread's transaction runs,
/// and the body) is read there too, not on the async worker that drives the connections,
/// unless the body is long (`DIGEST_IN_STAGE`). Each receipt that passes is one decision
/// of the core, queued for the writer's next round like a lone receipt's; the answers come
/// once every decision is durable (or refused). One refused receipt refuses none of the
/// others.
pub(super) async fn receipts(
    recs: Vec<SignedRecord>,
    shared: &Arc<Shared>,
    oin: &Oin,
) -> Vec<Response> {
    let mut answers: Vec<Option<Response>> = vec![None; recs.len()];
    let mut decided = Vec::with_capacity(recs.len());
    let mut recs = recs.into_iter().enumerate().peekable();
    while recs.peek().is_some() {
        let mut checking = Vec::with_capacity(RECEIPT_CHECKS_AT_ONCE);
        for (i, rec) in recs.by_ref().take(RECEIPT_CHECKS_AT_ONCE) {
            let (reply, checked) = tokio::sync::oneshot::channel();
            let job = Job::Receipt(Receipt {
                rec,
                oin: oin.clone(),
                now: shared.now(),
                reply,
            });
            if shared.checks.send(job).is_err() {
                answers[i] = Some(task_failed(&"the check stage has stopped"));
                continue;
            }
            checking.push((i, checked));
        }
        for (i, checked) in checking {
            match decide_receipt(checked.await, shared, oin).await {
                Ok(ticket) => decided.push((i, ticket)),
                Err(answer) => answers[i] = Some(answer),
            }
        }
    }
    for (i, (id, ticket)) in decided {
        answers[i] = Some(receipt_applied(ticket, id, shared, oin).await);
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| task_failed(&"a receipt went unanswered")))
        .collect()
}

/// A receipt's checks done: its decision queued for the writer thread (with the message
/// it receipts), or its answer.
async fn decide_receipt(
    checked: Result<super::submit::ReceiptChecked, tokio::sync::oneshot::error::RecvError>,
    shared: &Arc<Shared>,
    oin: &Oin,
) -> Result<
    (
        ketenpost_schemas::ids::MessageId,
        TransitionTicket<ketenpost_schemas::protocol::Rejection>,
    ),
    Response,
> {
    let (r, digest, forwarded) = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err(rej)) => {
            shared
                .audit_async(AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str()).actor(oin))
                .await;
            return Err(Response::Rejected(rej));
        }
        Err(_) => return Err(task_failed(&"a receipt's checks ended without an answer")),
    };
    let digest = match digest {
        Ok(ViewDigest::Read(d)) => d,
        Ok(ViewDigest::Larger) => {
            // A long body: read here, on the blocking pool, not on a check thread.
            let (s, id, party) = (shared.clone(), r.message_id, oin.clone());
            match tokio::task::spawn_blocking(move || s.store.view_digest(&id, &party)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return Err(storage_error(e)),
                Err(e) => return Err(task_failed(&e)),
            }
        }
        Err(e) => return Err(storage_error(e)),
    };
    let (party, id, now) = (oin.clone(), r.message_id, shared.now());
    let ticket = begin(
        shared,
        "receipt",
        move |v| v.receipt(&party, &r, &forwarded, digest.as_deref(), now),
        now,
    )
    .map_err(storage_error)?;
    Ok((id, ticket))
}

/// A receipt's decision applied and durable (its body destroyed, the parties it notified
/// woken), or refused: the answer.
async fn receipt_applied(
    ticket: TransitionTicket<ketenpost_schemas::protocol::Rejection>,
    id: ketenpost_schemas::ids::MessageId,
    shared: &Arc<Shared>,
    oin: &Oin,
) -> Response {
    match landed(shared, ticket).await {
        Ok(Ok(())) => Response::Done,
        Ok(Err(rej)) => {
            shared
                .audit_async(
                    AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str())
                        .actor(oin)
                        .message_id(id),
                )
                .await;
            Response::Rejected(rej)
        }
        Err(e) => storage_error(e),
    }
}

pub(super) async fn control(rec: SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = shared.now();
    let _guard = shared.registry_lock.write().await;
    // One set of documents for the check and the decision, whatever a reload does. The
    // check (a signature, registry reads in sled) runs on a blocking thread, not on the
    // async worker that drives the connections.
    let docs = shared.docs();
    let kind = rec.kind;
    let (s, o, documents) = (shared.clone(), oin.clone(), docs.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let store = &s.store;
        let order = |order: &uuid::Uuid, party: &Oin| match store.deletion(order, party) {
            Ok(d) => Ok(d.map(|d| d.confirmed_at.is_some())),
            Err(e) => {
                error!(cause = %e, "cannot read a deletion order");
                Err(ketenpost_core::registry::Unknown(e.to_string()))
            }
        };
        let env = documents.env(&s.limits, s.max_clock_skew(), &keys::Strict);
        checks::check_control(&o, &rec, env, store, order, now)
    })
    .await;
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => return task_failed(&e),
    };
    let effect = match checked {
        Ok(e) => e,
        Err(r) => {
            info!(code = %r.code, kind = %kind, "control record refused");
            let event = match kind {
                ketenpost_schemas::kind::Kind::Toestemming => AuditEvent::ConsentGranted,
                ketenpost_schemas::kind::Kind::ToestemmingIntrekking => {
                    AuditEvent::ConsentWithdrawn
                }
                ketenpost_schemas::kind::Kind::DeletionConfirmation => {
                    AuditEvent::DeletionConfirmed
                }
                _ => AuditEvent::CaseOpened,
            };
            shared
                .audit_async(
                    AuditEntry::refused(event, r.code.as_str())
                        .actor(oin)
                        .kind(kind),
                )
                .await;
            return Response::Rejected(r);
        }
    };
    // Named per kind of record, for the crash points.
    let op = match &effect {
        ControlEffect::CaseOpened(_) | ControlEffect::CaseChanged { .. } => "case",
        ControlEffect::ConsentGranted(_) | ControlEffect::ConsentWithdrawn(_) => "consent",
        ControlEffect::DeletionConfirmed(_) => "confirmation",
        ControlEffect::DeletionRequested { .. } => "deletion",
    };
    let actor = oin.clone();
    let outcome = transition(
        shared,
        op,
        move |v| {
            let deletion = match &effect {
                ControlEffect::DeletionConfirmed(c) => v.deletion(&c.order_id, &c.party)?,
                _ => None,
            };
            Ok(Ok::<_, std::convert::Infallible>(transitions::control(
                effect.clone(),
                &actor,
                deletion,
                &docs.policy,
                now,
            )))
        },
        now,
    )
    .await;
    match outcome {
        Ok(Ok(())) => Response::Done,
        Ok(Err(never)) => match never {},
        Err(e) => storage_error(e),
    }
}
