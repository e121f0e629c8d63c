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

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::effects::{DeletionState, Destroy, Effects, Notice, Write};
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Case;
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::keys::SigningKey;
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};

use super::{expiry_key, json, key2, parse, Store, StoreError};
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
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => parse(&v, what)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
    }
}

impl TxView<'_> {
    /// A message's metadata.
    pub fn meta(&self, id: &MessageId) -> TxResult<Option<MessageMeta>> {
        read(self.meta, id.0.as_bytes(), "message metadata")
    }

    /// A message's answer clock.
    pub fn clock(&self, id: &MessageId) -> TxResult<Option<AnswerClock>> {
        read(self.deadlines, id.0.as_bytes(), "answer clock")
    }

    /// A case.
    pub fn case(&self, case_ref: &CaseRef) -> TxResult<Option<Case>> {
        read(self.cases, case_ref.as_str().as_bytes(), "case")
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
        let chain: ChainLock<'_> = trail.lock_chain();
        let outcome = (
            &self.meta,
            &self.expiry,
            &self.queue,
            &self.notices,
            &self.cases,
            &self.consents,
            &self.deletions,
            &self.deadlines,
            trail.records_tree(),
        )
            .transaction(
                |(meta, expiry, queue, notices, cases, consents, deletions, deadlines, records)| {
                    let view = TxView {
                        meta,
                        cases,
                        deletions,
                        deadlines,
                    };
                    let fx = match decide(&view)? {
                        Ok(fx) => fx,
                        Err(refused) => return Ok(Err(refused)),
                    };
                    let changed = !fx.is_empty();
                    for w in &fx.writes {
                        match w {
                            Write::Meta(m) => {
                                meta.insert(m.id.0.as_bytes(), json(m))?;
                            }
                            Write::RemoveMeta { id, expires_at } => {
                                let id = id.0.as_bytes();
                                meta.remove(id)?;
                                expiry.remove(expiry_key(*expires_at, id))?;
                            }
                            Write::RemoveQueued { party, seq } => {
                                queue
                                    .remove(key2(party.as_str().as_bytes(), &seq.to_be_bytes()))?;
                            }
                            Write::Case(c) => {
                                cases.insert(c.case_ref.as_str(), json(c))?;
                            }
                            Write::Consent(c) => {
                                consents.insert(c.record.consent_id.as_bytes(), json(c))?;
                            }
                            Write::Deletion(d) => {
                                deletions.insert(
                                    key2(
                                        d.order.order_id.as_bytes(),
                                        d.order.party.as_str().as_bytes(),
                                    ),
                                    json(d),
                                )?;
                            }
                            Write::Clock(c) => {
                                deadlines.insert(c.message_id.0.as_bytes(), json(c))?;
                            }
                            Write::RemoveClock(id) => {
                                deadlines.remove(id.0.as_bytes())?;
                            }
                        }
                    }
                    for (party, notice) in &fx.notices {
                        let record =
                            sign(notice, signer).map_err(ConflictableTransactionError::Abort)?;
                        let seq = notices.generate_id()?;
                        notices.insert(
                            key2(party.as_str().as_bytes(), &seq.to_be_bytes()),
                            json(&record),
                        )?;
                    }
                    // Rerun from scratch if sled retries the transaction.
                    let mut cursor = chain.cursor();
                    for entry in &fx.audit {
                        chain
                            .stage(&mut cursor, entry.clone(), now, records)
                            .map_err(|e| match e {
                                ConflictableTransactionError::Abort(e) => {
                                    ConflictableTransactionError::Abort(StoreError::Audit(e))
                                }
                                ConflictableTransactionError::Conflict => {
                                    ConflictableTransactionError::Conflict
                                }
                                ConflictableTransactionError::Storage(e) => {
                                    ConflictableTransactionError::Storage(e)
                                }
                            })?;
                    }
                    Ok(Ok((fx, changed, cursor)))
                },
            )
            .map_err(StoreError::from)?;
        let (fx, changed, cursor) = match outcome {
            Ok(done) => done,
            Err(refused) => return Ok(Err(refused)),
        };
        chain.advance(cursor);
        failpoint::hit(op, "applied");
        Ok(Ok(Applied {
            audited: fx.audit.len(),
            destroy: fx.destroy,
            wake: fx.wake,
            changed,
        }))
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
