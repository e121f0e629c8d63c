//! Applying a decision: one sled transaction per decision, audit records included.
//!
//! [`Store::transition`] runs a decision of [`ketenpost_core`] over what the store holds
//! *inside* the transaction ([`TxView`]), so the decision and its writes see one state: a
//! receipt racing a fetch, another recipient's receipt or the expiry sweep is decided
//! again on the state the other left, never refused for having read an older one. Its
//! [`Effects`] are written in the same transaction: records, notices (signed here by the
//! broker), and the audit records, chained under the trail's lock. Nothing of a decision
//! is on disk without the rest.
//!
//! The transaction is not yet durable when `transition` returns: the caller makes it so
//! ([`Store::commit`], or [`Store::flush`] in the sweep) and only then calls
//! [`Store::finish`], which destroys the bodies the decision released. A crash before the
//! flush loses the whole decision (it is taken again); a crash after it leaves at most
//! bodies nothing refers to, which [`Store::reconcile`] destroys at the next start.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::effects::{DeletionState, Destroy, Effects, Notice, Write};
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Case;
use ketenpost_schemas::control::{DeliveryReceipt, SignedRecord};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::keys::SigningKey;
use ketenpost_schemas::protocol::Rejection;
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};
use tokio::sync::oneshot;

use super::codec::{json, key2, parse};
use super::meta_cache::{Id, MetaCache};
use super::{Store, StoreError};
use crate::audit::{AuditTrail, ChainLock};
use crate::failpoint;

/// Who signs the broker's own notices (expiry, deadline, deletion orders).
#[derive(Clone)]
pub struct NoticeSigner {
    /// The OIN the records name as signer ([`ketenpost_schemas::control::BROKER_SIGNER`]).
    pub oin: Oin,
    /// The broker's ed25519 key (the directory lists its public half).
    pub key: SigningKey,
}

impl std::fmt::Debug for NoticeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeSigner")
            .field("oin", &self.oin)
            .finish_non_exhaustive()
    }
}

/// What a decision may read, inside the transaction that applies it.
pub struct TxView<'a> {
    meta: &'a TransactionalTree,
    cases: &'a TransactionalTree,
    deletions: &'a TransactionalTree,
    deadlines: &'a TransactionalTree,
    /// The messages whose metadata this transaction wrote so far.
    wrote: &'a RefCell<HashSet<Id>>,
    /// The metadata as the last committed transactions wrote it.
    cache: &'a MetaCache,
}

impl std::fmt::Debug for TxView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxView").finish_non_exhaustive()
    }
}

/// What a read inside a transaction returns (sled may ask for a retry).
pub type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn read<T: for<'de> serde::Deserialize<'de>>(
    tree: &TransactionalTree,
    key: &[u8],
    what: &'static str,
) -> TxResult<Option<T>> {
    read_as(tree, key, |v| parse(v, what))
}

/// The value under `key`, decoded by `decode`.
fn read_as<T>(
    tree: &TransactionalTree,
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => decode(&v)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
    }
}

impl TxView<'_> {
    /// A message's metadata: as the last committed transaction wrote it ([`MetaCache`]),
    /// unless this one wrote it since; else read.
    pub fn meta(&self, id: &MessageId) -> TxResult<Option<MessageMeta>> {
        let key = id.0.as_bytes();
        // What this transaction wrote is in its own view of sled, not yet in the cache.
        if !self.wrote.borrow().contains(key) {
            if let Some(meta) = self.cache.get(key) {
                return Ok(Some(Arc::unwrap_or_clone(meta)));
            }
        }
        Ok(read_as(self.meta, key, super::meta_of)?.flatten())
    }

    /// A message's answer clock.
    pub fn clock(&self, id: &MessageId) -> TxResult<Option<AnswerClock>> {
        read(self.deadlines, id.0.as_bytes(), "answer clock")
    }

    /// A case.
    pub fn case(&self, case_ref: &CaseRef) -> TxResult<Option<Case>> {
        read(self.cases, case_ref.as_str().as_bytes(), "case")
    }

    /// The decision on `party`'s delivery receipt `receipt` (forwarded to the sender as
    /// `forwarded`; `digest` is the view digest the header lists for `party`,
    /// [`Store::view_digest`]), on the message's metadata and answer clock in this
    /// transaction: [`ketenpost_core::transitions::receipt`].
    pub fn receipt(
        &self,
        party: &Oin,
        receipt: &DeliveryReceipt,
        forwarded: &SignedRecord,
        digest: Option<&str>,
        now: DateTime<Utc>,
    ) -> TxResult<Result<Effects, Rejection>> {
        let id = receipt.message_id;
        Ok(ketenpost_core::transitions::receipt(
            party,
            receipt,
            forwarded,
            self.meta(&id)?,
            digest,
            self.clock(&id)?,
            now,
        ))
    }

    /// A deletion order's state for one party.
    pub fn deletion(&self, order: &uuid::Uuid, party: &Oin) -> TxResult<Option<DeletionState>> {
        read(
            self.deletions,
            &key2(order.as_bytes(), party.as_str().as_bytes()),
            "deletion order",
        )
    }
}

/// A decision applied (not yet durable): what to do once it is.
#[derive(Debug, Default)]
#[must_use = "make the transaction durable, then pass this to Store::finish"]
pub struct Applied {
    /// Bodies the decision released.
    pub destroy: Vec<Destroy>,
    /// Parties to wake.
    pub wake: BTreeSet<Oin>,
    /// How many audit records it wrote.
    pub audited: usize,
    /// Whether it changed anything.
    pub changed: bool,
}

/// A decision with its refusal left in the caller's hands: `Err(())` means refused.
pub(super) type Decide<'a> = dyn Fn(&TxView<'_>) -> TxResult<Result<Effects, ()>> + 'a;

/// A queued [`Decide`], which crosses to the writer thread.
type QueuedDecide = Box<dyn Fn(&TxView<'_>) -> TxResult<Result<Effects, ()>> + Send>;

/// One decision of a combined transaction.
struct Job<'a> {
    now: DateTime<Utc>,
    signer: &'a NoticeSigner,
    decide: &'a Decide<'a>,
}

/// A decision queued for the writer thread ([`Store::begin_transition`]).
pub(super) struct PendingTransition {
    pub(super) op: &'static str,
    now: DateTime<Utc>,
    /// The caller needs it durable before it answers (a decision that releases bodies is
    /// made durable anyway).
    pub(super) durable: bool,
    decide: QueuedDecide,
    signer: NoticeSigner,
    pub(super) trail: Arc<AuditTrail>,
    /// Applied (durable as asked, bodies destroyed), refused (`None`), or why not.
    pub(super) done: oneshot::Sender<Result<Option<Applied>, StoreError>>,
}

/// A queued decision on its way; [`TransitionTicket::done`] says how it ended.
#[must_use = "a decision has not been applied until its ticket says so"]
pub struct TransitionTicket<E> {
    rx: oneshot::Receiver<Result<Option<Applied>, StoreError>>,
    refused: Refused<E>,
}

/// Where a decision leaves its refusal, so that the store's transaction code needs no
/// refusal type: the decision it runs answers `Err(())`, and the caller takes the reason.
struct Refused<E>(Arc<std::sync::Mutex<Option<E>>>);

impl<E> Refused<E> {
    fn new() -> Refused<E> {
        Refused(Arc::new(std::sync::Mutex::new(None)))
    }

    /// `decide` with its refusal kept here.
    fn erase(
        &self,
        decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>>,
    ) -> impl Fn(&TxView<'_>) -> TxResult<Result<Effects, ()>> {
        let slot = self.0.clone();
        move |v| decide(v).map(|r| r.map_err(|e| *super::lock(&slot) = Some(e)))
    }

    /// What the decision refused with, once it answered `Err(())`.
    fn take(&self) -> Result<E, StoreError> {
        super::lock(&self.0)
            .take()
            .ok_or_else(|| StoreError::Corrupt {
                what: "decision",
                reason: "refused without a reason".to_owned(),
            })
    }
}

impl<E> std::fmt::Debug for TransitionTicket<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitionTicket").finish_non_exhaustive()
    }
}

impl<E> TransitionTicket<E> {
    /// Wait until the decision is applied (made durable when asked, its bodies destroyed)
    /// or refused.
    pub async fn done(self) -> Result<Result<Applied, E>, StoreError> {
        match self.rx.await {
            Ok(Ok(Some(applied))) => Ok(Ok(applied)),
            Ok(Ok(None)) => self.refused.take().map(Err),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Store {
    /// Run `decide` over the store's state and apply its effects, in one transaction.
    ///
    /// `decide` may run more than once (sled retries a transaction that conflicted), so it
    /// must be a pure function of what it reads: the decisions of [`ketenpost_core`] are.
    /// When it refuses (`Err(e)`), nothing is written and `Ok(Err(e))` is returned. `op`
    /// names the transition for the crash-point tests (see [`crate::failpoint`]).
    pub fn transition<E>(
        &self,
        op: &'static str,
        trail: &AuditTrail,
        signer: &NoticeSigner,
        now: DateTime<Utc>,
        decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>>,
    ) -> Result<Result<Applied, E>, StoreError> {
        self.poison.check()?;
        let refused = Refused::new();
        let erased = refused.erase(decide);
        let job = Job {
            now,
            signer,
            decide: &erased,
        };
        let applied = self
            .apply_decisions(trail, &[job], true)?
            .pop()
            .unwrap_or(Err(StoreError::Closed))?;
        match applied {
            Some(applied) => {
                failpoint::hit(op, "applied");
                Ok(Ok(applied))
            }
            None => refused.take().map(Err),
        }
    }

    /// Decisions `decides` applied in order in ONE transaction, as the writer thread applies
    /// a round's (for tests): per decision, applied, refused (`None`), or failed.
    #[cfg(test)]
    pub(super) fn transitions_together(
        &self,
        trail: &AuditTrail,
        signer: &NoticeSigner,
        now: DateTime<Utc>,
        decides: &[&Decide<'_>],
    ) -> Result<Vec<Result<Option<Applied>, StoreError>>, StoreError> {
        let jobs: Vec<Job<'_>> = decides
            .iter()
            .map(|decide| Job {
                now,
                signer,
                decide: *decide,
            })
            .collect();
        self.apply_decisions(trail, &jobs, true)
    }

    /// [`Store::transition`] by the writer thread: queued, applied in one transaction with
    /// the other decisions queued beside it, and flushed with them (and with the message
    /// writes of the same round) when `durable` or when it releases bodies, which are then
    /// destroyed. The ticket says when it is done.
    ///
    /// `durable: false` is for a decision whose writes may be read, and handed out by a
    /// fetch, before they are durable (the record of a first fetch): a round of such
    /// decisions alone takes no number from the [watermark](super::watermark).
    pub fn begin_transition<E: Send + 'static>(
        &self,
        op: &'static str,
        trail: &Arc<AuditTrail>,
        signer: &NoticeSigner,
        now: DateTime<Utc>,
        durable: bool,
        decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>> + Send + 'static,
    ) -> Result<TransitionTicket<E>, StoreError> {
        self.poison.check()?;
        let refused = Refused::new();
        let decide = refused.erase(decide);
        let (done, rx) = oneshot::channel();
        let pending = PendingTransition {
            op,
            now,
            durable,
            decide: Box::new(decide),
            signer: signer.clone(),
            trail: trail.clone(),
            done,
        };
        let wake = {
            let mut queue = super::lock(&self.puts.queue);
            if queue.closing {
                return Err(StoreError::Closed);
            }
            queue.transitions.push(pending);
            queue.wake_writer()
        };
        if wake {
            self.puts.wake.notify_one();
        }
        Ok(TransitionTicket { rx, refused })
    }

    /// The writer thread's part of [`Store::begin_transition`]: apply `batch` in one
    /// transaction (not yet durable).
    pub(super) fn apply_transitions(
        &self,
        batch: Vec<PendingTransition>,
        trail: &AuditTrail,
    ) -> Vec<(PendingTransition, Result<Option<Applied>, StoreError>)> {
        let jobs: Vec<Job<'_>> = batch
            .iter()
            .map(|t| Job {
                now: t.now,
                signer: &t.signer,
                decide: t.decide.as_ref(),
            })
            .collect();
        let outcome = self.poison.check().and_then(|()| {
            // Decisions that asked for no durability write only what may be handed
            // out before it is durable (the record of a first fetch): alone, they
            // take no number from the watermark.
            let numbered = batch.iter().any(|t| t.durable);
            self.apply_decisions(trail, &jobs, numbered)
        });
        drop(jobs);
        match outcome {
            Ok(results) => batch.into_iter().zip(results).collect(),
            Err(e) => batch
                .into_iter()
                .map(|t| {
                    let again = match &e {
                        StoreError::Sled(e) => StoreError::Sled(e.clone()),
                        StoreError::Poisoned(cause) => StoreError::Poisoned(cause.clone()),
                        other => StoreError::Corrupt {
                            what: "decision",
                            reason: other.to_string(),
                        },
                    };
                    (t, Err(again))
                })
                .collect(),
        }
    }

    /// Run `jobs` in order over the store's state, each seeing what those before it wrote,
    /// and write their effects in ONE transaction, audit records included. Per job:
    /// applied (not yet durable), refused (`None`: nothing of it written), or failed (a
    /// record it read does not parse: it is left out and the others run again without
    /// it). A storage error fails them all. When `numbered`, the transaction takes a
    /// number from the [watermark](super::watermark), so that a fetch that read its writes
    /// waits for their flush.
    fn apply_decisions(
        &self,
        trail: &AuditTrail,
        jobs: &[Job<'_>],
        numbered: bool,
    ) -> Result<Vec<Result<Option<Applied>, StoreError>>, StoreError> {
        use ConflictableTransactionError::{Abort, Conflict, Storage};
        let chain: ChainLock<'_> = trail.lock_chain();
        // Until the cache holds what the transaction wrote.
        let _writing = self.meta_cache.writing();
        let _running = numbered.then(|| self.watermark.begin());
        let mut left_out: Vec<Option<StoreError>> = jobs.iter().map(|_| None).collect();
        // Each attempt either commits or leaves one more job out: at most `jobs.len() + 1`.
        let (decided, cursor) = loop {
            let attempt = [
                &self.meta,
                &self.expiry,
                &self.queue,
                &self.notices,
                &self.cases,
                &self.consents,
                &self.deletions,
                &self.deadlines,
                &self.segments,
                trail.records_tree(),
            ]
            .as_slice()
            .transaction(|views| {
                let trees = Trees::of(views, &self.meta_cache).map_err(Storage)?;
                let view = trees.view();
                // Rerun from scratch if sled retries the transaction.
                let mut cursor = chain.cursor();
                let mut decided = Vec::with_capacity(jobs.len());
                for (i, job) in jobs.iter().enumerate() {
                    if left_out[i].is_some() {
                        decided.push(None);
                        continue;
                    }
                    let failed = |e: ConflictableTransactionError<StoreError>| match e {
                        Abort(e) => Abort((i, e)),
                        Conflict => Conflict,
                        Storage(e) => Storage(e),
                    };
                    let fx = match (job.decide)(&view).map_err(failed)? {
                        Ok(fx) => fx,
                        Err(()) => {
                            decided.push(None);
                            continue;
                        }
                    };
                    trees.write(&fx, job, &chain, &mut cursor).map_err(failed)?;
                    decided.push(Some(fx));
                }
                // The decisions' audit records: a few to an insert.
                cursor.write(trees.records)?;
                Ok((decided, cursor))
            });
            match attempt {
                Ok(done) => break done,
                Err(sled::transaction::TransactionError::Abort((i, e))) => left_out[i] = Some(e),
                Err(sled::transaction::TransactionError::Storage(e)) => {
                    return Err(StoreError::Sled(e))
                }
            }
        };
        chain.advance(cursor);
        let wrote =
            |f: fn(&Write) -> bool| decided.iter().flatten().any(|fx| fx.writes.iter().any(f));
        if wrote(|w| matches!(w, Write::Case(_))) {
            self.registry_cache.cases.invalidate();
        }
        if wrote(|w| matches!(w, Write::Consent(_))) {
            self.registry_cache.consents.invalidate();
        }
        // What the committed decisions wrote of the metadata, in their order, moved into
        // the cache (see `meta_cache`'s coherence).
        let mut written = Vec::new();
        let outcomes = decided
            .into_iter()
            .zip(left_out)
            .map(|(fx, failed)| match (fx, failed) {
                (_, Some(e)) => Err(e),
                (None, None) => Ok(None),
                (Some(fx), None) => {
                    let applied = Applied {
                        audited: fx.audit.len(),
                        changed: !fx.is_empty(),
                        destroy: fx.destroy,
                        wake: fx.wake,
                    };
                    for w in fx.writes {
                        match w {
                            Write::Meta(m) => {
                                written.push((m.id.0.into_bytes(), Some(Arc::new(m))))
                            }
                            Write::RemoveMeta { id, .. } => written.push((id.0.into_bytes(), None)),
                            _ => {}
                        }
                    }
                    Ok(Some(applied))
                }
            })
            .collect();
        self.meta_cache.committed(written);
        Ok(outcomes)
    }

    /// After the transaction of `applied` is durable: destroy the bodies it released.
    /// A body that cannot be destroyed now stays unreferenced, and the next start's
    /// [`Store::reconcile`] destroys it.
    pub fn finish(&self, op: &'static str, applied: &Applied) {
        failpoint::hit(op, "durable");
        for d in &applied.destroy {
            if let Err(e) = self.spool.delete(&d.at, d.id.0.as_bytes()) {
                tracing::error!(message_id = %d.id, cause = %e, "cannot destroy a released body");
            }
        }
    }
}

/// The trees a decision writes, inside its transaction.
struct Trees<'a> {
    /// The messages whose metadata this transaction wrote so far: its later decisions
    /// read theirs from the transaction, not from the cache.
    wrote: RefCell<HashSet<Id>>,
    cache: &'a MetaCache,
    meta: &'a TransactionalTree,
    expiry: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    notices: &'a TransactionalTree,
    cases: &'a TransactionalTree,
    consents: &'a TransactionalTree,
    deletions: &'a TransactionalTree,
    deadlines: &'a TransactionalTree,
    segments: &'a TransactionalTree,
    records: &'a TransactionalTree,
}

impl<'a> Trees<'a> {
    /// The trees of a decisions' transaction, opened over (meta, expiry, queue, notices,
    /// cases, consents, deletions, deadlines, segments, records) in
    /// [`Store::apply_decisions`].
    fn of(v: &'a [TransactionalTree], cache: &'a MetaCache) -> Result<Trees<'a>, sled::Error> {
        let [meta, expiry, queue, notices, cases, consents, deletions, deadlines, segments, records] =
            v
        else {
            return Err(sled::Error::Unsupported(format!(
                "a decision's transaction opened {} trees, not 10",
                v.len()
            )));
        };
        Ok(Trees {
            wrote: RefCell::default(),
            cache,
            meta,
            expiry,
            queue,
            notices,
            cases,
            consents,
            deletions,
            deadlines,
            segments,
            records,
        })
    }

    /// What a decision may read.
    fn view(&self) -> TxView<'_> {
        TxView {
            meta: self.meta,
            cases: self.cases,
            deletions: self.deletions,
            deadlines: self.deadlines,
            wrote: &self.wrote,
            cache: self.cache,
        }
    }

    /// Write one decision's effects: its records, its notices (signed by the broker) and
    /// its audit records, chained after `cursor`.
    fn write(
        &self,
        fx: &Effects,
        job: &Job<'_>,
        chain: &ChainLock<'_>,
        cursor: &mut crate::audit::ChainCursor,
    ) -> TxResult<()> {
        for w in &fx.writes {
            match w {
                Write::Meta(m) => {
                    self.meta.insert(m.id.0.as_bytes(), m.to_bytes())?;
                    self.wrote.borrow_mut().insert(m.id.0.into_bytes());
                }
                Write::RemoveMeta { id, .. } => {
                    // Its expiry entry's block follows from the metadata (expiry time and
                    // queue sequence numbers), read before it goes.
                    if let Some(held) = self.view().meta(id)? {
                        super::expiry::remove_in(self.expiry, &held)?;
                    }
                    // The id stays, as the dedup entry.
                    self.meta.insert(id.0.as_bytes(), super::SETTLED)?;
                    self.wrote.borrow_mut().insert(id.0.into_bytes());
                }
                Write::RemoveQueued { party, seq } => {
                    super::queue::remove_in(self.queue, party, *seq)?;
                }
                Write::Case(c) => {
                    self.cases.insert(c.case_ref.as_str(), json(c))?;
                }
                Write::Consent(c) => {
                    self.consents
                        .insert(c.record.consent_id.as_bytes(), json(c))?;
                }
                Write::Deletion(d) => {
                    self.deletions.insert(
                        key2(
                            d.order.order_id.as_bytes(),
                            d.order.party.as_str().as_bytes(),
                        ),
                        json(d),
                    )?;
                }
                Write::Clock(c) => {
                    self.deadlines.insert(c.message_id.0.as_bytes(), json(c))?;
                }
                Write::RemoveClock(id) => {
                    self.deadlines.remove(id.0.as_bytes())?;
                }
            }
        }
        for d in &fx.destroy {
            super::count_bodies(self.segments, d.at.segment, -1)?;
        }
        for (party, notice) in &fx.notices {
            let record = sign(notice, job.signer).map_err(ConflictableTransactionError::Abort)?;
            let seq = self.notices.generate_id()?;
            self.notices.insert(
                key2(party.as_str().as_bytes(), &seq.to_be_bytes()),
                json(&record),
            )?;
        }
        for entry in &fx.audit {
            chain
                .stage(cursor, entry.clone(), job.now)
                .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
        }
        Ok(())
    }
}

/// The record a notice becomes: a forwarded record as it is, the broker's own signed.
fn sign(notice: &Notice, signer: &NoticeSigner) -> Result<SignedRecord, StoreError> {
    let signed = match notice {
        Notice::Forward(r) => return Ok(r.clone()),
        Notice::Expiry(n) => SignedRecord::sign(n, signer.oin.clone(), &signer.key),
        Notice::Deadline(n) => SignedRecord::sign(n, signer.oin.clone(), &signer.key),
        Notice::DeletionOrder(n) => SignedRecord::sign(n, signer.oin.clone(), &signer.key),
        Notice::Case(n) => SignedRecord::sign(n, signer.oin.clone(), &signer.key),
    };
    signed.map_err(|e| StoreError::Corrupt {
        what: "notice",
        reason: e.to_string(),
    })
}
