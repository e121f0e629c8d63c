//! The durable store: sled trees for message metadata, queues, registries and the dedup
//! set, and the [spool](crate::spool) for message bodies.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | message id | while the broker holds the message, its [`MessageMeta`] (binary, [`MessageMeta::to_bytes`]; JSON when an older version wrote it): where its body is in the spool, its queue entries, who still has to receipt it, when it expires. Once it is receipted or expired, the one byte [`SETTLED`]. Every id ever accepted stays: this tree is the dedup set too, kept for as long as the audit trail |
//! | `queue_blocks` | recipient OIN ‖ (seq >> 4) | the recipient's queue entries within that run of 16 sequence numbers: (seq, message id), sorted ([`queue`]) |
//! | `notices` | party OIN ‖ seq | a signed notice for the party (receipt, expiry, deletion order) |
//! | `expiry_blocks` | expires-at (ms) >> 10 ‖ slot (first queue seq >> 4), big-endian | the messages of that slot expiring within that run of about a second, at most 16: (expires-at ms, message id), sorted ([`expiry`]): the sweep reads only what is due |
//! | `cases` | case ref | [`Case`] (JSON) |
//! | `consents` | consent id | [`Consent`] (JSON) |
//! | `deletions` | order id ‖ party OIN | [`DeletionState`] (JSON) |
//! | `deadlines` | message id | [`AnswerClock`] (JSON): answer deadlines, kept after the body is gone, until every answer is in or the case's deletion is ordered |
//! | `segments` | spool segment (u32, big-endian) | how many bodies in that segment the metadata refers to (u64, big-endian), written in the transactions that write and remove metadata; and the key `counted` once the counts are kept, so that a start need not read every message ([`Store::open`]) |
//!
//! A message is written in three steps, and is on disk when its [`PutTicket`] says it
//! landed ([`Store::put_message`] waits for that):
//!
//! 1. the submitting thread appends its body to the spool and queues the rest;
//! 2. the spool stage (thread `ketenpost-spool`) takes everything queued and syncs the spool
//!    once for all of it, so no metadata is ever on disk without its body;
//! 3. the writer thread (`ketenpost-writer`) writes everything the spool stage passed on in
//!    one sled transaction (metadata, which is the dedup entry too, expiry entry, a queue entry
//!    per recipient in its block, the audit records, and the body counts of the spool segments), flushes
//!    it, and tells every waiting submission.
//!
//! While the writer writes and flushes one batch, the spool stage syncs the next and more
//! submissions queue up, so the batches grow with the load (about 40-60 messages each at
//! 5,000 per second on two cores). A submission waits without holding a thread. sled 0.34
//! writes out its IO buffer around every transaction and a transaction cannot run during a
//! flush, so one transaction and one fsync per message would cost more than everything
//! else the broker does for it. Other writes (receipts, registries) are made durable with
//! [`Store::commit`], a group commit that lets concurrent writers share one fsync.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_schemas::envelope::{Envelope, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::protocol::{envelope_to_b64, Delivery};
use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{AuditEntry, AuditTrail, ChainCursor, ChainLock};
use crate::spool::{Spool, SpoolError};
use ketenpost_core::checks::Authorised;
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::message::{BodyAt, MessageMeta};

pub mod alerts;
mod backup;
mod blocks;
mod cache;
mod expiry;
mod queue;
mod transition;
pub use backup::{manifest, restore, BackupError, BackupManifest, BACKUP_MANIFEST};
use ketenpost_core::registry::{Case, Consent, Lookup, Registry, Unknown};
use transition::PendingTransition;
pub use transition::{Applied, NoticeSigner, TransitionTicket, TxResult, TxView};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// The spool of message bodies failed.
    #[error("storage: {0}")]
    Spool(#[from] SpoolError),
    /// A stored value does not parse (corruption or an incompatible version).
    #[error("stored {what} does not parse: {reason}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The message id is in the dedup set already.
    #[error("message id was accepted before")]
    Duplicate,
    /// The group committer is gone (the broker is shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// A write was prepared against a state that kept changing before it could be applied;
    /// nothing was written.
    #[error("storage: the write met concurrent changes; nothing was written, try again")]
    Contended,
    /// The writer thread could not be started.
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
    /// An audit record could not be written; the operation it records did not happen.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// An fsync failed earlier: the kernel may have dropped the dirty pages, so nothing
    /// written since can be promised durable. The store takes no more writes; the broker
    /// stops and exits non-zero, and the next start recovers from what is on disk.
    #[error("the store is poisoned by a failed fsync ({0}); restart the broker")]
    Poisoned(String),
}

/// The checks' read cache of the registries ([`cache`]).
#[derive(Debug, Default)]
struct RegistryCache {
    cases: cache::Cached<CaseRef, Case>,
    consents: cache::Cached<uuid::Uuid, Consent>,
}

/// Set once an fsync fails (see [`StoreError::Poisoned`]).
#[derive(Debug, Default)]
pub struct Poison {
    cause: std::sync::OnceLock<String>,
    notify: tokio::sync::Notify,
}

impl Poison {
    /// Poison the store: every later write fails, and [`Poison::wait`] returns.
    pub fn set(&self, cause: impl std::fmt::Display) {
        if self.cause.set(cause.to_string()).is_ok() {
            tracing::error!(cause = %self.cause.get().map(String::as_str).unwrap_or(""), "fsync failed: the store is poisoned and takes no more writes");
            self.notify.notify_waiters();
        }
    }

    /// `Err(Poisoned)` once poisoned.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.cause.get() {
            Some(c) => Err(StoreError::Poisoned(c.clone())),
            None => Ok(()),
        }
    }

    /// Wait until the store is poisoned; the cause.
    pub async fn wait(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(c) = self.cause.get() {
                return c.clone();
            }
            notified.await;
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub use ketenpost_core::effects::DeletionState;

/// The outcome of a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptOutcome {
    /// The message's metadata after the receipt.
    pub meta: MessageMeta,
    /// Whether the body was deleted (every recipient receipted).
    pub body_deleted: bool,
}

/// The durable store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    spool: Arc<Spool>,
    meta: sled::Tree,
    expiry: sled::Tree,
    queue: sled::Tree,
    notices: sled::Tree,
    cases: sled::Tree,
    consents: sled::Tree,
    deletions: sled::Tree,
    deadlines: sled::Tree,
    segments: sled::Tree,
    /// The checks' read cache of `cases` and `consents`.
    registry_cache: Arc<RegistryCache>,
    alerts: sled::Tree,
    alerts_state: sled::Tree,
    committer: mpsc::UnboundedSender<CommitMsg>,
    committer_task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    flushes: Arc<std::sync::atomic::AtomicU64>,
    /// Sizes and fsync times of the group commits (for the metrics).
    commit_stats: Arc<crate::metrics::CommitStats>,
    /// Set when an fsync failed; then no more writes.
    poison: Arc<Poison>,
    puts: Arc<PutCombiner>,
    /// Held by every handle but the writer thread's own: when the last one goes, the
    /// writer finishes what is queued and stops, releasing the database.
    #[allow(dead_code)] // held for its `Drop`
    users: Option<Arc<Users>>,
}

/// See [`Store::users`].
#[derive(Debug)]
struct Users(Arc<PutCombiner>);

impl Drop for Users {
    fn drop(&mut self) {
        // The database is released when the last handle is gone, and can be opened again
        // at once.
        self.0.stop();
    }
}

/// An accepted message that answers another (`in_reply_to`): its bookkeeping is decided
/// ([`ketenpost_core::transitions::answered`]) and written in the message's own
/// transaction, so an accepted answer is never lost from the answered message's clock.
#[derive(Debug, Clone)]
pub struct PendingAnswer {
    /// The message answered.
    pub answered: MessageId,
    /// The answer's sender.
    pub sender: Oin,
    /// The answer's kind.
    pub kind: ketenpost_schemas::kind::Kind,
    /// The audit entry about the answer, for a late one (message id and counterparty are
    /// filled in by the decision).
    pub late_entry: AuditEntry,
    /// The covenant's calendar (workday deadlines).
    pub calendar: ketenpost_schemas::calendar::Calendar,
}

/// One message's writes, queued for the next combined transaction (see
/// [`Store::put_message`]).
struct PendingPut {
    /// Its answer bookkeeping, when it answers another message.
    answer: Option<PendingAnswer>,
    id: [u8; 16],
    /// Appended to the spool, not yet synced.
    body_at: BodyAt,
    meta: Vec<u8>,
    /// The metadata as written, for its expiry entry.
    held: MessageMeta,
    /// Per recipient: its queue block's key and the entry's sequence number.
    queue: Vec<(Vec<u8>, u64)>,
    /// Its answer clock, if its kind has an answer deadline (written in the same
    /// transaction, so no receipt can come before it and no clock outlives a failed write).
    clock: Option<Vec<u8>>,
    /// The audit records of accepting it (validated), dated `now`, for this trail.
    audit: Vec<AuditEntry>,
    trail: Arc<AuditTrail>,
    now: DateTime<Utc>,
    /// Told by whoever applies it: written and flushed, or why not.
    done: oneshot::Sender<Result<Landed, PutFailed>>,
}

/// The spool stage of message writes: take what is queued, sync the spool (every body
/// queued was appended before it was queued), and pass it on to the writer thread, so the
/// metadata is never on disk without its body. Stops when the store closes and the queue
/// is empty.
fn sync_loop(
    puts: &PutCombiner,
    spool: &Spool,
    poison: &Poison,
    synced: &std::sync::mpsc::Sender<Round>,
) {
    loop {
        let round = {
            let mut queue = lock(&puts.queue);
            while queue.puts.is_empty() && queue.transitions.is_empty() && !queue.closing {
                queue = puts
                    .wake
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if queue.puts.is_empty() && queue.transitions.is_empty() {
                return;
            }
            Round {
                puts: std::mem::take(&mut queue.puts),
                transitions: std::mem::take(&mut queue.transitions),
            }
        };
        // Decisions write no bodies: a round of decisions alone needs no sync.
        let spooled = if round.puts.is_empty() {
            Ok(())
        } else {
            spool.sync()
        };
        let failed = match spooled {
            Ok(()) => match synced.send(round) {
                Ok(()) => continue,
                Err(back) => (back.0, PutFailed::Closed),
            },
            Err(e) => {
                poison.set(&e);
                (round, PutFailed::Spool(e.to_string()))
            }
        };
        let (round, why) = failed;
        forget_bodies(spool, &round.puts);
        for p in round.puts {
            let _ = p.done.send(Err(why.clone()));
        }
        for t in round.transitions {
            let _ = t.done.send(Err(why.clone().into_store_error()));
        }
    }
}

/// What a batch of message writes did: per message what landed (`None`: a duplicate), or
/// why the whole batch failed.
type Written = Result<Vec<Option<Landed>>, PutFailed>;

/// `items` in runs that share one audit trail (a broker has one), in order.
fn by_trail<T>(
    items: Vec<T>,
    trail: impl Fn(&T) -> &Arc<AuditTrail>,
) -> Vec<(Arc<AuditTrail>, Vec<T>)> {
    let mut runs: Vec<(Arc<AuditTrail>, Vec<T>)> = Vec::new();
    for item in items {
        match runs.last_mut() {
            Some((t, run)) if Arc::ptr_eq(t, trail(&item)) => run.push(item),
            _ => runs.push((trail(&item).clone(), vec![item])),
        }
    }
    runs
}

/// Delete the spooled bodies of writes that did not land.
fn forget_bodies<'a>(spool: &Spool, puts: impl IntoIterator<Item = &'a PendingPut>) {
    for p in puts {
        if let Err(e) = spool.delete(&p.body_at, &p.id) {
            tracing::error!(cause = %e, "cannot delete the body of a message not accepted");
        }
    }
}

/// How often the writer prepares a batch again when the state it read changed before its
/// transaction (which the chain lock it holds rules out; the check is a safety net).
const MAX_PUT_ATTEMPTS: u32 = 8;

/// The transaction of a prepared batch found the state it was prepared against changed.
#[derive(Debug)]
struct Stale;

/// One message of a batch as decided before its transaction.
struct Prepared {
    /// Its audit records, chained: keys and values.
    records: Vec<([u8; 8], Vec<u8>)>,
    /// For an answer: the answered message's clock.
    answer: Option<AnsweredClock>,
    landed: Landed,
}

/// The answered message's clock: what the decision read (the transaction checks that it
/// still reads so) and what it writes in its place (`Some(None)`: remove it).
struct AnsweredClock {
    key: [u8; 16],
    read: Option<Vec<u8>>,
    write: Option<Option<Vec<u8>>>,
}

/// A message write on its way: it landed (on disk, with its audit records) when the
/// ticket says so.
#[derive(Debug)]
#[must_use = "a write has not landed until its ticket says so"]
pub struct PutTicket(oneshot::Receiver<Result<Landed, PutFailed>>);

/// What the transaction that wrote a message decided beside the write itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Landed {
    /// The message answers another after the answer deadline of its sender (decided
    /// against the answered message's clock in the same transaction).
    pub late_answer: bool,
}

impl PutTicket {
    /// Wait for the outcome.
    pub async fn landed(self) -> Result<Landed, StoreError> {
        put_outcome(self.0.await)
    }

    /// Wait for the outcome, blocking the thread (never on an async worker).
    pub fn wait(self) -> Result<Landed, StoreError> {
        put_outcome(self.0.blocking_recv())
    }
}

fn put_outcome(
    r: Result<Result<Landed, PutFailed>, oneshot::error::RecvError>,
) -> Result<Landed, StoreError> {
    match r {
        Ok(Ok(landed)) => Ok(landed),
        Ok(Err(failed)) => Err(failed.into_store_error()),
        Err(_) => Err(StoreError::Corrupt {
            what: "message write",
            reason: "the combined transaction that held it did not finish".to_owned(),
        }),
    }
}

impl PutFailed {
    fn into_store_error(self) -> StoreError {
        match self {
            PutFailed::Duplicate => StoreError::Duplicate,
            PutFailed::Sled(e) => StoreError::Sled(e),
            PutFailed::Audit(reason) => StoreError::Corrupt {
                what: "audit record",
                reason,
            },
            PutFailed::Spool(reason) => StoreError::Corrupt {
                what: "message body",
                reason,
            },
            PutFailed::Closed => StoreError::Closed,
            PutFailed::Contended => StoreError::Contended,
        }
    }
}

/// Why a combined message write did not land.
#[derive(Clone, Debug)]
enum PutFailed {
    /// The id is in the dedup set (or twice in the batch): only this message fails.
    Duplicate,
    /// sled failed the transaction or the flush: the whole batch fails.
    Sled(sled::Error),
    /// An audit record could not be made: the whole batch fails.
    Audit(String),
    /// The spool could not make the batch's bodies durable: the whole batch fails.
    Spool(String),
    /// The writer thread is gone (the store is closing).
    Closed,
    /// What the batch was prepared against kept changing: the whole batch fails.
    Contended,
}

/// Group commit of message writes (see the module docs): a submission queues its writes
/// and waits for its [`PutTicket`] without holding a thread; the spool stage takes
/// everything queued and syncs the spool, and the writer thread applies it in one
/// transaction and flushes it. `io` is held by the group committer while it flushes and
/// by a combined write: a sled transaction that
/// starts during a flush waits for it holding sled's internal lock exclusively, which
/// stalls every read (the checks) until the flush ends.
#[derive(Default)]
struct PutCombiner {
    queue: std::sync::Mutex<PutQueue>,
    wake: std::sync::Condvar,
    io: std::sync::Mutex<()>,
    /// The spool stage and the writer thread.
    writer: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct PutQueue {
    puts: Vec<PendingPut>,
    transitions: Vec<PendingTransition>,
    closing: bool,
}

/// What the spool stage passes on to the writer thread: message writes whose bodies are
/// synced, and queued decisions ([`Store::begin_transition`]).
#[derive(Default)]
struct Round {
    puts: Vec<PendingPut>,
    transitions: Vec<PendingTransition>,
}

impl Round {
    fn extend(&mut self, more: Round) {
        self.puts.extend(more.puts);
        self.transitions.extend(more.transitions);
    }
}

impl PutCombiner {
    /// Stop the spool stage and the writer thread once everything queued is written,
    /// and wait for them. Blocking.
    fn stop(&self) {
        lock(&self.queue).closing = true;
        self.wake.notify_all();
        let threads = std::mem::take(&mut *lock(&self.writer));
        for t in threads {
            // Neither thread ever holds the last handle, but never join oneself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Debug for PutCombiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutCombiner").finish_non_exhaustive()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue, the IO token and the thread handles hold no invariant a panic could break.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A message to the group committer.
#[derive(Debug)]
enum CommitMsg {
    /// Flush this database, then answer. The committer holds the database only while it
    /// flushes, so dropping every store handle closes it.
    Commit(oneshot::Sender<Result<(), String>>, sled::Db),
    /// Flush and stop, releasing the committer's handle on the database.
    Close,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own plain data types always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// What `meta` holds for a message that was accepted and is no longer held (every
/// recipient receipted it, or it expired): the id stays as the dedup entry, its metadata
/// goes. One byte, which neither encoding of [`MessageMeta`] starts with.
pub(crate) const SETTLED: &[u8] = &[0];

/// A message's stored metadata ([`MessageMeta::from_bytes`]: binary, or JSON written by
/// an older version); `None` for a [`SETTLED`] message, which the broker no longer holds.
fn meta_of(bytes: &[u8]) -> Result<Option<MessageMeta>, StoreError> {
    if bytes == SETTLED {
        return Ok(None);
    }
    MessageMeta::from_bytes(bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            what: "message metadata",
            reason: e.to_string(),
        })
}

/// The metadata under `id` in `meta`, if the broker holds that message.
fn held_meta(meta: &sled::Tree, id: &[u8]) -> Result<Option<MessageMeta>, StoreError> {
    match meta.get(id)? {
        Some(v) => meta_of(&v),
        None => Ok(None),
    }
}

fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

/// The `expiry` key of a message: milliseconds since the epoch (clamped at zero), then the id,
/// so keys sort by expiry time.
fn expiry_key(at: DateTime<Utc>, id: &[u8; 16]) -> Vec<u8> {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    key2(&ms.to_be_bytes(), id)
}

fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|i| key.get(i..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Start-up reconciliation of the spool with the metadata, for a store an older version
/// wrote without body counts ([`reconcile_by_walk`]; `expiry` is that version's tree).
///
/// - A live body that no expiry entry points at is looked up in the metadata: if its
///   message still refers to it (an expiry entry lost by an older version), the body is
///   kept and its expiry entry written again; otherwise (its message was receipted or
///   expired, and a crash came after that decision was durable but before the body was
///   destroyed) it is destroyed now.
/// - Metadata whose body is not in the spool (damage: the spool syncs every body before its
///   metadata is written) is counted, uncounted from the live bodies, and logged; such a
///   message is never delivered and expires as usual.
fn reconcile(
    spool: &Spool,
    meta: &sled::Tree,
    expiry: &sled::Tree,
    referenced: &[BodyAt],
) -> Result<(), StoreError> {
    // `referenced` is sorted by position; `live[i]` says whether the spool holds
    // `referenced[i]`. One byte per message, instead of a set of positions.
    let mut live = vec![false; referenced.len()];
    let mut bodies = 0usize;
    let (mut orphans, mut restored) = (0usize, 0usize);
    spool.visit_live_records(|at, id| {
        if let Ok(i) =
            referenced.binary_search_by_key(&(at.segment, at.offset), |r| (r.segment, r.offset))
        {
            live[i] = true;
            bodies += 1;
            return Ok(());
        }
        match owner_of(meta, at, &id)? {
            Some(m) => {
                expiry.insert(expiry_key(m.expires_at, &id), &at.to_bytes())?;
                spool.register(&at);
                bodies += 1;
                restored += 1;
            }
            None => {
                if spool.destroy_unreferenced(&at, &id)? {
                    orphans += 1;
                }
            }
        }
        Ok::<(), StoreError>(())
    })?;
    let mut dangling = 0usize;
    for (at, held) in referenced.iter().zip(&live) {
        if !held {
            spool.unregister(at);
            dangling += 1;
        }
    }
    spool.sync()?;
    tracing::info!(
        bodies,
        orphan_bodies_destroyed = orphans,
        expiry_entries_restored = restored,
        metadata_without_body = dangling,
        "spool reconciled with the metadata"
    );
    report_dangling(dangling as u64);
    Ok(())
}

/// The metadata that refers to the spool record `at` of message `id`, if any.
fn owner_of(
    meta: &sled::Tree,
    at: BodyAt,
    id: &[u8; 16],
) -> Result<Option<MessageMeta>, StoreError> {
    Ok(held_meta(meta, id)?.filter(|m| m.body_at == Some(at)))
}

/// Log metadata whose body the spool does not hold (damage: the spool syncs every body
/// before its metadata is written).
fn report_dangling(dangling: u64) {
    if dangling > 0 {
        tracing::error!(
            metadata_without_body = dangling,
            "messages whose body is missing from the spool: they cannot be delivered"
        );
    }
}

/// The key in `segments` that says the counts are kept.
const COUNTED: &[u8] = b"counted";

/// A count in `segments`; anything but 8 bytes counts as 0, which the next start finds
/// does not match the spool, and counts again.
fn count_of(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Add `delta` to the bodies `segment` holds, inside a transaction (a count of 0 is
/// removed, as the segment is).
fn count_bodies(
    segments: &sled::transaction::TransactionalTree,
    segment: u32,
    delta: i64,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let key = segment.to_be_bytes();
    let now = count_of(segments.get(key)?.as_deref()).saturating_add_signed(delta);
    if now == 0 {
        segments.remove(&key)?;
    } else {
        segments.insert(&key, &now.to_be_bytes())?;
    }
    Ok(())
}

/// Replace the counts with `held` and mark them kept, in one batch.
fn write_counts(
    segments: &sled::Tree,
    held: &std::collections::HashMap<u32, u64>,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for item in segments.iter().keys() {
        batch.remove(item?);
    }
    for (segment, n) in held {
        batch.insert(&segment.to_be_bytes(), &n.to_be_bytes());
    }
    batch.insert(COUNTED, &[1]);
    segments.apply_batch(batch)?;
    Ok(())
}

/// The start of a store that keeps counts: the spool's live records are counted per
/// segment (record headers only, nothing of sled), and only a segment whose count differs
/// from what the metadata counted is read record by record: each record is looked up in
/// the metadata, and one no metadata refers to is destroyed. That is where a crash leaves
/// its traces: bodies appended whose metadata never landed, and bodies released by a
/// durable decision before they were destroyed. A segment that holds fewer bodies than
/// the metadata counted has lost some (damage); they are logged, as in
/// [`reconcile`]. An orphan and a lost body in the same segment cancel out; a full
/// check of every message is what a store without counts gets ([`reconcile_by_walk`]).
fn reconcile_counted(
    spool: &Spool,
    meta: &sled::Tree,
    segments: &sled::Tree,
) -> Result<(), StoreError> {
    use std::collections::{BTreeSet, HashMap};
    let mut counted: HashMap<u32, u64> = HashMap::new();
    for item in segments.iter() {
        let (k, v) = item?;
        if let Ok(segment) = <[u8; 4]>::try_from(k.as_ref()) {
            counted.insert(u32::from_be_bytes(segment), count_of(Some(&v)));
        }
    }
    let mut live: HashMap<u32, u64> = HashMap::new();
    spool.visit_live_records(|at, _| {
        *live.entry(at.segment).or_insert(0) += 1;
        Ok::<(), StoreError>(())
    })?;
    let all: BTreeSet<u32> = counted.keys().chain(live.keys()).copied().collect();
    let get = |m: &HashMap<u32, u64>, s: &u32| m.get(s).copied().unwrap_or(0);
    let unsure: BTreeSet<u32> = all
        .iter()
        .filter(|s| get(&counted, s) != get(&live, s))
        .copied()
        .collect();
    let mut kept: HashMap<u32, u64> = HashMap::new();
    let mut orphans = 0usize;
    spool.visit_live_records_in(
        |s| unsure.contains(&s),
        |at, id| {
            if owner_of(meta, at, &id)?.is_some() {
                *kept.entry(at.segment).or_insert(0) += 1;
            } else if spool.destroy_unreferenced(&at, &id)? {
                orphans += 1;
            }
            Ok::<(), StoreError>(())
        },
    )?;
    let (mut bodies, mut dangling) = (0u64, 0u64);
    for s in &all {
        let held = if unsure.contains(s) {
            get(&kept, s)
        } else {
            get(&live, s)
        };
        dangling += get(&counted, s).saturating_sub(held);
        spool.register_count(*s, held);
        bodies += held;
    }
    spool.sync()?;
    tracing::info!(
        bodies,
        segments = all.len(),
        segments_checked = unsure.len(),
        orphan_bodies_destroyed = orphans,
        metadata_without_body = dangling,
        "spool reconciled with the metadata's counts"
    );
    report_dangling(dangling);
    Ok(())
}

/// The start of a store without counts (an older version's): every body location is read
/// from that version's expiry tree ([`expiry::LEGACY_TREE`], one key per message, its body
/// location as the value; 16 bytes a message while the store opens, 16 MB for a million
/// queued, sorted by position and given back before the broker serves), then
/// [`reconcile`], which writes lost entries back into that tree; [`expiry::migrate`] moves
/// it into blocks afterwards.
fn reconcile_by_walk(
    spool: &Spool,
    meta: &sled::Tree,
    expiry: &sled::Tree,
) -> Result<(), StoreError> {
    let mut referenced = Vec::new();
    for item in expiry.iter() {
        let (_, v) = item?;
        if let Some(at) = BodyAt::from_bytes(&v) {
            spool.register(&at);
            referenced.push(at);
        }
    }
    referenced.sort_unstable_by_key(|a| (a.segment, a.offset));
    referenced.dedup_by_key(|a| (a.segment, a.offset));
    reconcile(spool, meta, expiry, &referenced)
}

/// Whether `db` holds a tree `name` (without creating it, as opening it would).
fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
}

/// What becomes of an entry of an older version's index ([`migrate_legacy`]).
enum Legacy {
    /// Into the block under this key, as this entry, the same as an entry there whose
    /// first so many bytes are equal.
    Move(Vec<u8>, [u8; blocks::ENTRY], usize),
    /// Nothing: it names a message no longer held.
    Stale,
    /// Nothing, and logged: it does not parse.
    Unreadable,
}

/// Move the entries of an older version's tree `legacy` (one key per entry) into the
/// blocks of `to`, then drop `legacy`: `parse` gives an entry's block key, the entry and
/// how many of its first bytes make it the same entry ([`blocks::with`]). Run at every
/// start until `legacy` is gone; a crash halfway leaves it in place and the next start
/// moves its entries again, each replacing itself.
fn migrate_legacy(
    db: &sled::Db,
    legacy: &str,
    what: &'static str,
    parse: impl Fn(&[u8], &[u8]) -> Result<Legacy, StoreError>,
    to: &sled::Tree,
) -> Result<(), StoreError> {
    if !has_tree(db, legacy) {
        return Ok(());
    }
    let old = db.open_tree(legacy)?;
    let (mut moved, mut unreadable) = (0u64, 0u64);
    for item in old.iter() {
        let (k, v) = item?;
        let (key, entry, same) = match parse(&k, &v)? {
            Legacy::Move(key, entry, same) => (key, entry, same),
            Legacy::Stale => continue,
            Legacy::Unreadable => {
                unreadable += 1;
                continue;
            }
        };
        let block = to.get(&key)?;
        to.insert(key, blocks::with(block.as_deref(), &entry, same))?;
        moved += 1;
    }
    db.flush()?;
    drop(old);
    db.drop_tree(legacy)?;
    db.flush()?;
    if moved > 0 || unreadable > 0 {
        tracing::info!(what, moved, "an older version's index moved into blocks");
    }
    if unreadable > 0 {
        tracing::error!(
            what,
            unreadable,
            "entries of an older version's index that do not parse, left out"
        );
    }
    Ok(())
}

/// A store an older version wrote kept its dedup set in a tree of its own, `seen`: each
/// id there without a key in `meta` (its message no longer held) gets the [`SETTLED`]
/// marker, and `seen` is dropped. Run at every start until it is gone; a crash halfway
/// leaves `seen` in place, and the next start does it again (an id already in `meta` is
/// left as it is).
fn settle_legacy_dedup(db: &sled::Db, meta: &sled::Tree) -> Result<(), StoreError> {
    const LEGACY: &str = "seen";
    if !has_tree(db, LEGACY) {
        return Ok(());
    }
    let seen = db.open_tree(LEGACY)?;
    let mut settled = 0u64;
    for item in seen.iter().keys() {
        let id = item?;
        if meta
            .compare_and_swap(&id, None::<&[u8]>, Some(SETTLED))?
            .is_ok()
        {
            settled += 1;
        }
    }
    db.flush()?;
    drop(seen);
    db.drop_tree(LEGACY)?;
    db.flush()?;
    tracing::info!(
        settled,
        "the dedup set of an older version moved into the message metadata"
    );
    Ok(())
}

impl Store {
    /// Open the store in `db`, with the bodies' spool in `spool_dir`, and start its group
    /// committer. Must run inside a tokio runtime.
    ///
    /// Reconciles the spool with the metadata ([`reconcile_counted`]: per segment, from
    /// the counts in `segments`; a store an older version wrote is read message by message
    /// once, [`reconcile_by_walk`]), and removes the segments no message needs.
    pub fn open(db: sled::Db, spool_dir: &std::path::Path) -> Result<Store, StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<CommitMsg>();
        let flushes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let commit_stats = Arc::new(crate::metrics::CommitStats::default());
        let poison = Arc::new(Poison::default());
        let committer_task = Arc::new(std::sync::Mutex::new(None));
        let spool = Arc::new(Spool::open(spool_dir)?);
        let expiry = db.open_tree(expiry::TREE)?;
        let meta = db.open_tree("meta")?;
        let segments = db.open_tree("segments")?;
        // What sled recovered after a crash may still be in the page cache only: make it
        // durable before bodies are destroyed on its word.
        db.flush()?;
        if segments.contains_key(COUNTED)? {
            reconcile_counted(&spool, &meta, &segments)?;
        } else {
            // Written by a version that kept no counts: read every message's body location
            // once, and keep the counts from now on.
            reconcile_by_walk(&spool, &meta, &db.open_tree(expiry::LEGACY_TREE)?)?;
            write_counts(&segments, &spool.held())?;
            db.flush()?;
        }
        settle_legacy_dedup(&db, &meta)?;
        expiry::migrate(&db, &meta, &expiry)?;
        let queue = db.open_tree(queue::TREE)?;
        queue::migrate(&db, &queue)?;
        let removed = spool.remove_empty()?;
        if removed > 0 {
            tracing::info!(removed, "spool segments without bodies removed");
        }
        let store = Store {
            spool: spool.clone(),
            meta,
            expiry,
            queue,
            notices: db.open_tree("notices")?,
            cases: db.open_tree("cases")?,
            consents: db.open_tree("consents")?,
            deletions: db.open_tree("deletions")?,
            deadlines: db.open_tree("deadlines")?,
            segments,
            registry_cache: Arc::default(),
            alerts: db.open_tree("alerts")?,
            alerts_state: db.open_tree("alerts_state")?,
            committer: tx,
            committer_task: committer_task.clone(),
            flushes: flushes.clone(),
            commit_stats: commit_stats.clone(),
            poison: poison.clone(),
            puts: Arc::new(PutCombiner::default()),
            users: None,
            db: db.clone(),
        };
        // Two stages, so that the bodies of one batch are synced while the batch before
        // is written and flushed.
        let (synced_tx, synced_rx) = std::sync::mpsc::channel();
        let (puts, spooled, poisoned) = (
            store.puts.clone(),
            store.spool.clone(),
            store.poison.clone(),
        );
        let syncer = std::thread::Builder::new()
            .name("ketenpost-spool".into())
            .spawn(move || sync_loop(&puts, &spooled, &poisoned, &synced_tx))
            .map_err(StoreError::Thread)?;
        let writer = store.clone();
        let written = std::thread::Builder::new()
            .name("ketenpost-writer".into())
            .spawn(move || writer.write_loop(&synced_rx))
            .map_err(StoreError::Thread)?;
        lock(&store.puts.writer).extend([syncer, written]);
        let store = Store {
            users: Some(Arc::new(Users(store.puts.clone()))),
            ..store
        };
        // The group committer: every waiter that arrives while a flush runs shares the next
        // flush. One fsync serves many submits.
        let puts = store.puts.clone();
        let poison = store.poison.clone();
        let handle = tokio::spawn(async move {
            let mut closing = false;
            while let Some(first) = rx.recv().await {
                let mut waiters = Vec::new();
                let mut db = None;
                let mut next = Some(first);
                while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                    match msg {
                        CommitMsg::Commit(w, d) => {
                            waiters.push(w);
                            db = Some(d);
                        }
                        CommitMsg::Close => closing = true,
                    }
                }
                let (puts, spool) = (puts.clone(), spool.clone());
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || {
                    let _io = lock(&puts.io);
                    spool.sync().map_err(|e| e.to_string())?;
                    match db {
                        Some(db) => db.flush().map(|_| ()).map_err(|e| e.to_string()),
                        None => Ok(()),
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(e) = &result {
                    poison.set(e);
                }
                flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                commit_stats.record(waiters.len(), started.elapsed());
                for w in waiters {
                    let _ = w.send(result.clone());
                }
                if closing {
                    break;
                }
            }
        });
        if let Ok(mut slot) = committer_task.lock() {
            *slot = Some(handle);
        }
        Ok(store)
    }

    /// The underlying database (the audit trail lives in it too).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The group commits' sizes and fsync times.
    pub fn commit_stats(&self) -> &Arc<crate::metrics::CommitStats> {
        &self.commit_stats
    }

    /// For the metrics: how many messages are queued for `party`, when the oldest was
    /// accepted, and how many notices wait for it. Reads the party's queue (its length).
    pub fn queue_gauges(
        &self,
        party: &Oin,
    ) -> Result<(u64, Option<DateTime<Utc>>, u64), StoreError> {
        let prefix = party.as_str().as_bytes();
        let mut depth = 0u64;
        let mut oldest = None;
        for item in self.queue.scan_prefix(prefix) {
            let (_, block) = item?;
            let Some(entries) = queue_entries(&block) else {
                continue;
            };
            for (_, id) in entries {
                if oldest.is_none() {
                    if let Some(meta) = held_meta(&self.meta, &id)? {
                        oldest = Some(meta.accepted_at);
                    }
                }
                depth += 1;
            }
        }
        let notices = self.notices.scan_prefix(prefix).count() as u64;
        Ok((depth, oldest, notices))
    }

    /// How many group flushes ran (for benchmarks).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store's poison flag (see [`StoreError::Poisoned`]).
    pub fn poison(&self) -> &Arc<Poison> {
        &self.poison
    }

    /// Wait until everything written so far is on disk (group commit). A failed flush
    /// poisons the store.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.poison.check()?;
        let (tx, rx) = oneshot::channel();
        self.committer
            .send(CommitMsg::Commit(tx, self.db.clone()))
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Poisoned(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Stop the group committer after a last flush, so that once every clone of the store
    /// is dropped the database is closed and its lock released.
    pub async fn close(&self) {
        let puts = self.puts.clone();
        let _ = tokio::task::spawn_blocking(move || puts.stop()).await;
        let _ = self.committer.send(CommitMsg::Close);
        let handle = self.committer_task.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    /// Flush synchronously (the sweep, shutdown). A failed flush poisons the store.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.poison.check()?;
        let result = self
            .spool
            .sync()
            .map_err(StoreError::from)
            .and_then(|()| self.db.flush().map(|_| ()).map_err(StoreError::from));
        if let Err(e) = &result {
            self.poison.set(e);
            return Err(StoreError::Poisoned(e.to_string()));
        }
        Ok(())
    }

    /// Write an authorised message with its `meta` ([`MessageMeta::accepted`], which also
    /// dates it): dedup entry, body, metadata, expiry entry, one queue
    /// entry per recipient and the `audit` records of accepting it (appended to `trail`),
    /// in one transaction, and flush it: when this returns `Ok` the message and its audit
    /// records are on disk. Fails with [`StoreError::Duplicate`] when the id was accepted
    /// before; then nothing of it is written.
    ///
    /// Concurrent calls are combined: the store's writer thread applies everything queued
    /// in a single transaction and a single flush (see the module docs). Each message is
    /// still all-or-nothing, and a duplicate only fails its own call.
    /// An audit entry that does not validate is left out and logged (it cannot happen for
    /// the entries the server builds).
    ///
    /// Blocks until the write landed; [`Store::begin_put`] is the same without the wait.
    pub fn put_message(
        &self,
        a: &Authorised,
        meta: &MessageMeta,
        trail: &Arc<AuditTrail>,
        audit: Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.begin_put(a, meta, trail, audit, None, None)?
            .wait()
            .map(|_| ())
    }

    /// [`Store::put_message`] without waiting: the body is appended to the spool and the
    /// rest queued for the writer thread's next combined transaction. The ticket says
    /// when it landed.
    pub fn begin_put(
        &self,
        a: &Authorised,
        meta: &MessageMeta,
        trail: &Arc<AuditTrail>,
        audit: Vec<AuditEntry>,
        clock: Option<&AnswerClock>,
        answer: Option<PendingAnswer>,
    ) -> Result<PutTicket, StoreError> {
        self.poison.check()?;
        let id = *meta.id.0.as_bytes();
        let now = meta.accepted_at;
        let mut meta = meta.clone();
        for r in &meta.recipients {
            meta.queue_seqs.insert(r.clone(), self.db.generate_id()?);
        }
        // Appended now; the spool stage syncs the spool before the writer writes the
        // metadata that refers to it (everything queued was appended before the stage
        // took it), so the metadata is never on disk without its body.
        let body_at = self.spool.append(&id, &a.verified().envelope().encode())?;
        meta.body_at = Some(body_at);
        let (done, landed) = oneshot::channel();
        let pending = PendingPut {
            answer,
            id,
            body_at,
            meta: meta.to_bytes(),
            held: meta.clone(),
            clock: clock.map(json),
            queue: meta
                .queue_seqs
                .iter()
                .map(|(r, seq)| (queue::block_key(r, *seq), *seq))
                .collect(),
            audit: audit
                .into_iter()
                .filter(|e| match e.validate() {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::error!(cause = %err, "audit entry left out");
                        false
                    }
                })
                .collect(),
            now,
            trail: trail.clone(),
            done,
        };
        {
            let mut queue = lock(&self.puts.queue);
            if queue.closing {
                drop(queue);
                forget_bodies(&self.spool, [&pending]);
                return Err(StoreError::Closed);
            }
            queue.puts.push(pending);
        }
        self.puts.wake.notify_one();
        Ok(PutTicket(landed))
    }

    /// The writer thread: per round of what the spool stage passes on, one transaction of
    /// message writes and one of decisions (each per trail; a broker has one), then one
    /// flush for both, until the spool stage stops.
    fn write_loop(self, synced: &std::sync::mpsc::Receiver<Round>) {
        while let Ok(mut round) = synced.recv() {
            // Whatever else was synced meanwhile goes in the same transactions.
            while let Ok(more) = synced.try_recv() {
                round.extend(more);
            }
            // Not during a group committer's flush.
            let _io = lock(&self.puts.io);
            let puts: Vec<_> = by_trail(round.puts, |p| &p.trail)
                .into_iter()
                .map(|(trail, batch)| {
                    let written = self.apply_puts(&batch, &trail);
                    (batch, written)
                })
                .collect();
            let decided: Vec<_> = by_trail(round.transitions, |t| &t.trail)
                .into_iter()
                .flat_map(|(trail, batch)| self.apply_transitions(batch, &trail))
                .collect();
            self.settle(puts, decided);
        }
    }

    /// Make a round durable and answer it: flush once (if anything in it needs to be
    /// durable), then tell every message write its outcome and finish every decision
    /// (destroy the bodies it released) before telling it.
    fn settle(
        &self,
        puts: Vec<(Vec<PendingPut>, Written)>,
        decided: Vec<(PendingTransition, Result<Option<Applied>, StoreError>)>,
    ) {
        let landed = |w: &Written| w.as_ref().is_ok_and(|w| w.iter().any(Option::is_some));
        let written = puts.iter().any(|(_, w)| landed(w));
        let answers = puts.iter().any(|(batch, w)| {
            w.as_ref().is_ok_and(|w| {
                batch
                    .iter()
                    .zip(w)
                    .any(|(p, w)| w.is_some() && p.answer.is_some())
            })
        });
        let must_flush = written
            || decided
                .iter()
                .any(|(t, r)| matches!(r, Ok(Some(a)) if t.durable || !a.destroy.is_empty()));
        if written {
            crate::failpoint::hit("submit", "applied");
        }
        if answers {
            crate::failpoint::hit("answer", "applied");
        }
        for (t, r) in &decided {
            if matches!(r, Ok(Some(_))) {
                crate::failpoint::hit(t.op, "applied");
            }
        }
        if must_flush {
            let started = std::time::Instant::now();
            if let Err(e) = self.db.flush() {
                // The transactions are in sled and may reach the disk later: their bodies
                // stay. Everyone hears an error; the store is poisoned (the kernel may have
                // dropped the pages) and the broker stops.
                self.poison.set(&e);
                for (batch, _) in puts {
                    for p in batch {
                        let _ = p.done.send(Err(PutFailed::Sled(e.clone())));
                    }
                }
                for (t, r) in decided {
                    let r = match r {
                        Ok(Some(_)) => Err(StoreError::Sled(e.clone())),
                        other => other,
                    };
                    let _ = t.done.send(r);
                }
                return;
            }
            let size = puts.iter().map(|(b, _)| b.len()).sum::<usize>() + decided.len();
            self.commit_stats.record(size, started.elapsed());
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if written {
            crate::failpoint::hit("submit", "durable");
        }
        if answers {
            crate::failpoint::hit("answer", "durable");
        }
        // A writer that stopped waiting (its connection went) no longer hears the outcome.
        for (batch, written) in puts {
            match written {
                Ok(written) => {
                    forget_bodies(
                        &self.spool,
                        batch
                            .iter()
                            .zip(&written)
                            .filter(|(_, w)| w.is_none())
                            .map(|(p, _)| p),
                    );
                    for (p, w) in batch.into_iter().zip(written) {
                        let _ = p.done.send(w.ok_or(PutFailed::Duplicate));
                    }
                }
                Err(e) => {
                    forget_bodies(&self.spool, &batch);
                    for p in batch {
                        let _ = p.done.send(Err(e.clone()));
                    }
                }
            }
        }
        for (t, r) in decided {
            if let Ok(Some(applied)) = &r {
                self.finish(t.op, applied);
            }
            let _ = t.done.send(r);
        }
    }

    /// Decide, for each message of a batch, everything its transaction will write: whether
    /// it is a duplicate, its audit records (chained after `chain`'s head, serialised and
    /// hashed), and for an answer the answered message's clock. Reads only; the caller
    /// holds the chain lock, and the writer thread is the only writer of new `meta` keys.
    fn prepare_puts(
        &self,
        batch: &[PendingPut],
        chain: &ChainLock<'_>,
    ) -> Result<(Vec<Option<Prepared>>, ChainCursor), PutFailed> {
        let audit_failed = |e: crate::audit::AuditError| PutFailed::Audit(e.to_string());
        let mut cursor = chain.cursor();
        let mut ids = std::collections::HashSet::with_capacity(batch.len());
        // The clocks the batch writes so far, as a later answer in it must see them.
        let mut clocks: std::collections::HashMap<[u8; 16], Option<Vec<u8>>> =
            std::collections::HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        for p in batch {
            if !ids.insert(p.id) || self.meta.contains_key(p.id).map_err(PutFailed::Sled)? {
                out.push(None);
                continue;
            }
            if let Some(clock) = &p.clock {
                clocks.insert(p.id, Some(clock.clone()));
            }
            let mut records = Vec::with_capacity(p.audit.len() + 1);
            for entry in &p.audit {
                records.push(
                    chain
                        .prepare(&mut cursor, entry.clone(), p.now)
                        .map_err(audit_failed)?,
                );
            }
            let mut landed = Landed::default();
            let answer = match &p.answer {
                None => None,
                Some(a) => {
                    let key = *a.answered.0.as_bytes();
                    let read = match clocks.get(&key) {
                        Some(v) => v.clone(),
                        None => self
                            .deadlines
                            .get(key)
                            .map_err(PutFailed::Sled)?
                            .map(|v| v.to_vec()),
                    };
                    // A clock that does not parse is logged, never a reason to lose the
                    // answer itself.
                    let clock = read.as_deref().and_then(|v| {
                        parse::<AnswerClock>(v, "answer clock")
                            .inspect_err(|e| tracing::error!(cause = %e, "answer clock unreadable"))
                            .ok()
                    });
                    let reply = ketenpost_core::deadlines::Reply {
                        id: MessageId(uuid::Uuid::from_bytes(p.id)),
                        sender: &a.sender,
                        kind: a.kind,
                        in_reply_to: Some(a.answered),
                    };
                    let (fx, answer) = ketenpost_core::transitions::answered(
                        reply,
                        clock,
                        a.late_entry.clone(),
                        &a.calendar,
                        p.now,
                    );
                    landed.late_answer = answer.is_some_and(|a| a.late);
                    let mut write = None;
                    for w in &fx.writes {
                        match w {
                            ketenpost_core::effects::Write::Clock(c) => write = Some(Some(json(c))),
                            ketenpost_core::effects::Write::RemoveClock(_) => write = Some(None),
                            _ => {}
                        }
                    }
                    for entry in fx.audit {
                        records.push(
                            chain
                                .prepare(&mut cursor, entry, p.now)
                                .map_err(audit_failed)?,
                        );
                    }
                    if let Some(w) = &write {
                        clocks.insert(key, w.clone());
                    }
                    Some(AnsweredClock { key, read, write })
                }
            };
            out.push(Some(Prepared {
                records,
                answer,
                landed,
            }));
        }
        Ok((out, cursor))
    }

    /// Apply queued message writes in one transaction (not yet durable: the writer flushes
    /// the round, [`Store::settle`]); per message, what landed, or `None` for a duplicate. Everything is decided before the transaction ([`Store::prepare_puts`]):
    /// while a sled transaction runs, every reader waits (the checks of the next
    /// submissions among them), so the transaction itself only writes.
    fn apply_puts(&self, batch: &[PendingPut], trail: &AuditTrail) -> Written {
        let chain = trail.lock_chain();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let (prepared, cursor) = match self.prepare_puts(batch, &chain) {
                Ok(prepared) => prepared,
                Err(e) => break Err(e),
            };
            let tx = (
                &self.meta,
                &self.queue,
                &self.expiry,
                &self.deadlines,
                &self.segments,
                trail.records_tree(),
            )
                .transaction(
                    |(meta_t, queue, expiry, deadlines, segments, records)| {
                        use sled::transaction::ConflictableTransactionError::Abort;
                        let mut held = std::collections::BTreeMap::<u32, i64>::new();
                        for (p, prep) in batch.iter().zip(&prepared) {
                            let Some(prep) = prep else { continue };
                            // What was read before the transaction still holds (only the
                            // writer adds ids to `meta`; every other writer of a clock holds
                            // the chain lock, as this one does); checked all the same.
                            if meta_t.get(p.id)?.is_some() {
                                return Err(Abort(Stale));
                            }
                            meta_t.insert(&p.id, p.meta.as_slice())?;
                            expiry::add_in(expiry, &p.held)?;
                            for (block, seq) in &p.queue {
                                queue::add_in(queue, block, *seq, &p.id)?;
                            }
                            if let Some(clock) = &p.clock {
                                deadlines.insert(&p.id, clock.as_slice())?;
                            }
                            if let Some(a) = &prep.answer {
                                if deadlines.get(a.key)?.as_deref() != a.read.as_deref() {
                                    return Err(Abort(Stale));
                                }
                                match &a.write {
                                    Some(Some(clock)) => {
                                        deadlines.insert(&a.key, clock.as_slice())?;
                                    }
                                    Some(None) => {
                                        deadlines.remove(&a.key)?;
                                    }
                                    None => {}
                                }
                            }
                            for (key, record) in &prep.records {
                                records.insert(key, record.as_slice())?;
                            }
                            *held.entry(p.body_at.segment).or_insert(0) += 1;
                        }
                        for (segment, n) in held {
                            count_bodies(segments, segment, n)?;
                        }
                        Ok(())
                    },
                );
            match tx {
                Ok(()) => break Ok((prepared, cursor)),
                Err(TransactionError::Abort(Stale)) if attempts < MAX_PUT_ATTEMPTS => {}
                Err(TransactionError::Abort(Stale)) => break Err(PutFailed::Contended),
                Err(TransactionError::Storage(e)) => break Err(PutFailed::Sled(e)),
            }
        };
        let (prepared, cursor) = result?;
        chain.advance(cursor);
        Ok(prepared.into_iter().map(|p| p.map(|p| p.landed)).collect())
    }

    /// The body of a held message, or `None` (logged) when the spool cannot give it.
    fn body(&self, meta: &MessageMeta) -> Option<Vec<u8>> {
        let at = meta.body_at.as_ref()?;
        match self.spool.read(at, meta.id.0.as_bytes()) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::error!(message_id = %meta.id, cause = %e, "cannot read a message body");
                None
            }
        }
    }

    /// Up to `max` deliveries for `party` (each envelope with only `party`'s own view,
    /// [`Envelope::delivery`]): queued messages first, then notices. Also
    /// returns the messages `party` fetches for the first time, whose fetch the caller
    /// records ([`ketenpost_core::transitions::fetched`]). Reads only.
    pub fn fetch(
        &self,
        party: &Oin,
        max: usize,
    ) -> Result<(Vec<Delivery>, Vec<MessageId>), StoreError> {
        let prefix = party.as_str().as_bytes();
        let mut out = Vec::new();
        let mut first_time = Vec::new();
        // Entries that cannot be delivered are skipped and do not count against `max`,
        // but the scan is bounded.
        let mut scanned = 0usize;
        'blocks: for item in self.queue.scan_prefix(prefix) {
            let (_, block) = item?;
            let Some(entries) = queue_entries(&block) else {
                continue;
            };
            for (seq, id) in entries {
                if out.len() >= max || scanned >= max.saturating_mul(4) {
                    break 'blocks;
                }
                scanned += 1;
                if let Some(delivery) = self.deliverable(party, seq, &id, &mut first_time)? {
                    out.push(delivery);
                }
            }
        }
        if out.len() < max {
            for item in self.notices.scan_prefix(prefix).take(max - out.len()) {
                let (k, v) = item?;
                out.push(Delivery::Notice {
                    seq: seq_of(&k),
                    record: parse(&v, "notice")?,
                });
            }
        }
        Ok((out, first_time))
    }

    /// Queue entry `seq` of message `id` as delivered to `party`; `None` when the message
    /// is gone (receipted or expired meanwhile) or its body cannot be read. Notes a
    /// first delivery in `first_time`.
    fn deliverable(
        &self,
        party: &Oin,
        seq: u64,
        id: &[u8; 16],
        first_time: &mut Vec<MessageId>,
    ) -> Result<Option<Delivery>, StoreError> {
        let Some(meta) = held_meta(&self.meta, id)? else {
            return Ok(None);
        };
        let Some(body) = self.body(&meta) else {
            return Ok(None);
        };
        let Some(delivery) = delivery_for(&body, party, &meta) else {
            return Ok(None);
        };
        if !meta.fetched.contains(party) {
            first_time.push(meta.id);
        }
        Ok(Some(Delivery::Message {
            seq,
            envelope: envelope_to_b64(&delivery),
        }))
    }

    /// The SHA-256 the header of a held message lists for `recipient`'s view: what that
    /// recipient's receipt must name. `None` when the broker holds no such message, its
    /// body cannot be read, or the recipient has no view in it. A body never changes, so
    /// this may be read outside the transaction that applies the receipt.
    pub fn view_digest(
        &self,
        id: &MessageId,
        recipient: &Oin,
    ) -> Result<Option<String>, StoreError> {
        let Some(meta) = held_meta(&self.meta, id.0.as_bytes())? else {
            return Ok(None);
        };
        let Some(body) = self.body(&meta) else {
            return Ok(None);
        };
        Ok(ketenpost_schemas::envelope::Envelope::decode(
            &body,
            &ketenpost_schemas::envelope::Limits::default(),
        )
        .ok()
        .and_then(|e| e.unverified_header().ok())
        .and_then(|h| h.body_for(recipient).map(|(_, b)| b.sha256.clone())))
    }

    /// The messages whose undelivered TTL has passed at `now` (by the expiry index, so
    /// only what is due is read). An index entry whose message is gone is removed.
    pub fn due(&self, now: DateTime<Utc>) -> Result<Vec<MessageId>, StoreError> {
        let mut due = Vec::new();
        let mut gone = Vec::new();
        // The buckets up to the one `now` falls in; of that one, only what is due.
        for item in self.expiry.range(..=expiry::last_due_key(now)) {
            let (key, block) = item?;
            // A damaged block is logged and passed over: it must not stop every other
            // message's expiry.
            let entries = match expiry::entries(&block) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(cause = %e, "an expiry block that does not parse, passed over");
                    continue;
                }
            };
            for (ms, id) in entries {
                if !expiry::is_due(ms, now) {
                    break;
                }
                // Held or not, without decoding: metadata that does not decode fails its
                // own expiry, not the sweep.
                match self.meta.get(id)? {
                    Some(v) if v != SETTLED => due.push(MessageId(uuid::Uuid::from_bytes(id))),
                    _ => gone.push((key.clone(), ms, id)),
                }
            }
        }
        for (key, ms, id) in gone {
            expiry::remove(&self.expiry, &key, ms, &id)?;
        }
        Ok(due)
    }

    /// Remove the party's notices up to and including `up_to`.
    pub fn ack_notices(&self, party: &Oin, up_to: u64) -> Result<usize, StoreError> {
        let prefix = party.as_str().as_bytes();
        let mut n = 0;
        for item in self.notices.scan_prefix(prefix) {
            let (k, _) = item?;
            if seq_of(&k) > up_to {
                break;
            }
            self.notices.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// Store a case outside any transition: for tools and tests working on a stopped
    /// broker's data. The running broker changes cases only through
    /// [`Store::transition`].
    pub fn put_case(&self, case: &Case) -> Result<(), StoreError> {
        self.cases.insert(case.case_ref.as_str(), json(case))?;
        self.registry_cache.cases.invalidate();
        Ok(())
    }

    /// A case by reference; an error when it cannot be read or does not parse.
    pub fn get_case(&self, case_ref: &CaseRef) -> Result<Option<Case>, StoreError> {
        self.registry_cache.cases.get(case_ref, || {
            self.cases
                .get(case_ref.as_str())?
                .map(|v| parse(&v, "case"))
                .transpose()
        })
    }

    /// A consent by id; an error when it cannot be read or does not parse.
    pub fn get_consent(&self, id: &uuid::Uuid) -> Result<Option<Consent>, StoreError> {
        self.registry_cache.consents.get(id, || {
            self.consents
                .get(id.as_bytes())?
                .map(|v| parse(&v, "consent"))
                .transpose()
        })
    }

    /// Every case.
    pub fn cases(&self) -> Result<Vec<Case>, StoreError> {
        self.cases
            .iter()
            .map(|r| {
                let (_, v) = r?;
                parse(&v, "case")
            })
            .collect()
    }

    /// A deletion order for a party.
    pub fn deletion(
        &self,
        order: &uuid::Uuid,
        party: &Oin,
    ) -> Result<Option<DeletionState>, StoreError> {
        self.deletions
            .get(key2(order.as_bytes(), party.as_str().as_bytes()))?
            .map(|v| parse(&v, "deletion order"))
            .transpose()
    }

    /// Every deletion order.
    pub fn deletions(&self) -> Result<Vec<DeletionState>, StoreError> {
        self.deletions
            .iter()
            .map(|r| {
                let (_, v) = r?;
                parse(&v, "deletion order")
            })
            .collect()
    }

    /// Number of queued (recipient, message) pairs (reads every queue block).
    pub fn queued(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.queue.iter() {
            let (_, block) = item?;
            n += queue::entries(&block)?.count();
        }
        Ok(n)
    }

    /// Number of messages (and bodies) held: the sum of the spool segments' counts,
    /// which the same transactions keep as the metadata.
    pub fn bodies_held(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.segments.iter() {
            let (k, v) = item?;
            if k.len() == 4 {
                n = n.saturating_add(count_of(Some(&v)));
            }
        }
        Ok(n)
    }

    /// Metadata of a message still held.
    pub fn meta(&self, id: &MessageId) -> Result<Option<MessageMeta>, StoreError> {
        held_meta(&self.meta, id.0.as_bytes())
    }
}

/// Answer clocks ([`ketenpost_core::deadlines`]): one per accepted message whose kind has an
/// `answer_within`, under the message id, kept after the body is deleted. A clock is
/// written with its message, and changed only by the transitions of the core (a receipt,
/// an answer, a deadline notice, an expiry, a deletion order) inside
/// [`Store::transition`], so concurrent changes never lose each other's update.
impl Store {
    /// A clock, if the message has one.
    pub fn clock(&self, id: &MessageId) -> Result<Option<AnswerClock>, StoreError> {
        self.deadlines
            .get(id.0.as_bytes())?
            .map(|v| parse(&v, "answer clock"))
            .transpose()
    }

    /// The ids of the answer clocks with a term overdue at `now` that no notice covers yet
    /// ([`AnswerClock::overdue`]), read one clock at a time: the sweep holds the overdue
    /// ones only, however many clocks run.
    pub fn overdue_clocks(
        &self,
        calendar: &ketenpost_schemas::calendar::Calendar,
        now: DateTime<Utc>,
    ) -> Result<Vec<MessageId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.deadlines.iter() {
            let (_, v) = item?;
            let clock: AnswerClock = parse(&v, "answer clock")?;
            if !clock.overdue(calendar, now).is_empty() {
                ids.push(clock.message_id);
            }
        }
        Ok(ids)
    }

    /// The ids of the answer clocks of a case.
    pub fn clock_ids_of_case(&self, case_ref: &CaseRef) -> Result<Vec<MessageId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.deadlines.iter() {
            let (_, v) = item?;
            let clock: AnswerClock = parse(&v, "answer clock")?;
            if &clock.case_ref == case_ref {
                ids.push(clock.message_id);
            }
        }
        Ok(ids)
    }
}

impl Registry for Store {
    fn case(&self, case_ref: &CaseRef) -> Lookup<Case> {
        self.get_case(case_ref).map_err(unknown)
    }

    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent> {
        self.get_consent(id).map_err(unknown)
    }

    fn seen(&self, id: &MessageId) -> Result<bool, Unknown> {
        // Held or settled: every id ever accepted has its key in `meta`.
        self.meta
            .contains_key(id.0.as_bytes())
            .map_err(|e| unknown(e.into()))
    }
}

/// The entries of a queue block; `None`, logged, for a damaged one, which is passed over
/// so that it stops no other delivery.
fn queue_entries(block: &[u8]) -> Option<impl Iterator<Item = (u64, [u8; 16])> + '_> {
    queue::entries(block)
        .inspect_err(
            |e| tracing::error!(cause = %e, "a queue block that does not parse, passed over"),
        )
        .ok()
}

/// A store error as the registry's "cannot tell", logged here with its cause (the check
/// answers `storage` without one).
fn unknown(e: StoreError) -> Unknown {
    tracing::error!(cause = %e, "cannot read the registry");
    Unknown(e.to_string())
}

/// A stored envelope as delivered to `party`: its own view only. `None` (logged) when the
/// stored envelope does not decode or names no body for `party`, which an accepted message
/// always does.
fn delivery_for(stored: &[u8], party: &Oin, meta: &MessageMeta) -> Option<Vec<u8>> {
    // Decoded without size limits: it passed the submission's limits when it was accepted.
    let unbounded = Limits {
        max_header: usize::MAX,
        max_body: usize::MAX,
        max_bodies: usize::MAX,
        max_envelope: usize::MAX,
        max_recipients: usize::MAX,
    };
    let delivery = Envelope::decode(stored, &unbounded).and_then(|env| {
        let header = env.unverified_header()?;
        let (index, _) = header
            .body_for(party)
            .ok_or_else(|| ketenpost_schemas::Error::NotARecipient(party.to_string()))?;
        Ok(env.delivery(index).encode())
    });
    match delivery {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(message_id = %meta.id, cause = %e, "cannot make a delivery of a held message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Barrier;

    use chrono::Duration;
    use ketenpost_schemas::keys::SigningKey;

    use std::collections::BTreeSet;

    use super::*;
    use ketenpost_core::effects::Effects;
    use ketenpost_schemas::control::SignedRecord;
    use ketenpost_schemas::kind::Kind;
    use ketenpost_schemas::protocol::RejectCode;
    use sled::transaction::ConflictableTransactionError;

    /// `n` authorised signalen from a corporation to a zorgaanbieder, and the
    /// zorgaanbieder.
    fn authorised(n: usize) -> (Vec<Authorised>, Oin) {
        let fx = ketenpost_core::testing::Fx::new();
        let messages = (0..n)
            .map(|_| {
                let draft = fx.draft(Kind::Signaal, &[(&fx.zorg, "zorgaanbieder")]);
                fx.check_as(&fx.corp, &fx.seal(&fx.corp, draft)).unwrap()
            })
            .collect();
        (messages, fx.zorg.oin.clone())
    }

    /// Whether `needle` occurs in any file under `dir`.
    fn on_disk(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                return on_disk(&path, needle);
            }
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    /// The store and audit trail in `dir`, as the broker opens them.
    fn open_in(dir: &std::path::Path) -> (Store, Arc<AuditTrail>) {
        // sled releases its file lock when its own IO threads let go of the database
        // dropped just before, which can be a moment after the last handle: a bounded
        // wait for that, nothing else.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new()
                .path(dir.join("db"))
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("cannot open the test database: {e}"),
            }
        };
        let store = Store::open(db.clone(), &dir.join("spool")).unwrap();
        let trail = Arc::new(
            crate::audit::AuditTrail::open(&db, SigningKey::from_bytes(&[7u8; 32])).unwrap(),
        );
        (store, trail)
    }

    /// The sealed envelopes of `messages`.
    fn envelopes_of(messages: &[Authorised]) -> Vec<Vec<u8>> {
        messages
            .iter()
            .map(|a| a.verified().envelope().encode())
            .collect()
    }

    /// Write every message, as accepted now.
    fn put_all(store: &Store, trail: &Arc<AuditTrail>, messages: &[Authorised]) {
        for a in messages {
            let meta = MessageMeta::accepted(a, Utc::now());
            store.put_message(a, &meta, trail, vec![]).unwrap();
        }
    }

    fn signer() -> NoticeSigner {
        NoticeSigner {
            oin: ketenpost_schemas::control::BROKER_SIGNER.parse().unwrap(),
            key: SigningKey::from_bytes(&[7u8; 32]),
        }
    }

    /// A signaal from the corporation to the zorgaanbieder and the gemeente, stored.
    fn put_signaal(
        fx: &ketenpost_core::testing::Fx,
        store: &Store,
        trail: &Arc<AuditTrail>,
    ) -> Authorised {
        let draft = fx.draft(
            Kind::Signaal,
            &[(&fx.zorg, "zorgaanbieder"), (&fx.gem, "gemeente")],
        );
        let a = fx.check_as(&fx.corp, &fx.seal(&fx.corp, draft)).unwrap();
        let meta = MessageMeta::accepted(&a, Utc::now());
        store.put_message(&a, &meta, trail, vec![]).unwrap();
        a
    }

    /// The decision of `recipient`'s receipt of message `id`, as the server makes it.
    fn receipt_decision(
        store: &Store,
        recipient: &Oin,
        id: &MessageId,
        sha: &str,
        forwarded: &SignedRecord,
        now: DateTime<Utc>,
    ) -> impl Fn(&TxView<'_>) -> TxResult<Result<Effects, ketenpost_schemas::protocol::Rejection>>
           + Send
           + 'static {
        let r = ketenpost_schemas::control::DeliveryReceipt {
            message_id: *id,
            recipient: recipient.clone(),
            body_sha256: sha.into(),
            received_at: now,
        };
        let digest = store.view_digest(id, recipient).unwrap();
        let (recipient, forwarded, id) = (recipient.clone(), forwarded.clone(), *id);
        move |v| {
            Ok(ketenpost_core::transitions::receipt(
                &recipient,
                &r,
                &forwarded,
                v.meta(&id)?,
                digest.as_deref(),
                v.clock(&id)?,
                now,
            ))
        }
    }

    /// A receipt applied as the server applies it: one transition, flush, then finish.
    fn receipt(
        store: &Store,
        trail: &AuditTrail,
        recipient: &Oin,
        id: &MessageId,
        sha: &str,
        forwarded: &SignedRecord,
    ) -> Result<Applied, ketenpost_schemas::protocol::Rejection> {
        let now = Utc::now();
        let decide = receipt_decision(store, recipient, id, sha, forwarded, now);
        let out = store
            .transition("receipt", trail, &signer(), now, decide)
            .unwrap();
        if let Ok(a) = &out {
            store.flush().unwrap();
            store.finish("receipt", a);
        }
        out
    }

    /// The expiry sweep at `now`: how many messages expired.
    fn expire(store: &Store, trail: &AuditTrail, now: DateTime<Utc>) -> Vec<MessageId> {
        let mut expired = Vec::new();
        let mut done = Vec::new();
        for id in store.due(now).unwrap() {
            let a = store
                .transition("expire", trail, &signer(), now, |v| {
                    Ok(Ok::<_, std::convert::Infallible>(
                        ketenpost_core::transitions::expire(v.meta(&id)?, v.clock(&id)?, now),
                    ))
                })
                .unwrap()
                .unwrap();
            if a.changed {
                expired.push(id);
            }
            done.push(a);
        }
        store.flush().unwrap();
        for a in &done {
            store.finish("expire", a);
        }
        expired
    }

    #[test]
    fn a_body_is_spooled_until_receipted_or_expired_and_survives_a_restart() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let open = || open_in(dir.path());
        let (messages, zorg) = authorised(2);
        let envelopes = envelopes_of(&messages);
        {
            let (store, trail) = open();
            put_all(&store, &trail, &messages);
            rt.block_on(store.close());
        }
        // After a restart both are still delivered, byte for byte.
        let (store, trail) = open();
        let (deliveries, first) = store.fetch(&zorg, 10).unwrap();
        assert_eq!(first.len(), 2);
        let fetched: Vec<Vec<u8>> = deliveries
            .iter()
            .map(|d| match d {
                Delivery::Message { envelope, .. } => {
                    ketenpost_schemas::protocol::envelope_from_b64(envelope).unwrap()
                }
                other => panic!("not a message: {other:?}"),
            })
            .collect();
        assert_eq!(
            fetched.iter().collect::<BTreeSet<_>>(),
            envelopes.iter().collect::<BTreeSet<_>>()
        );
        let forwarded = SignedRecord {
            kind: Kind::DeliveryReceipt,
            signer: zorg.clone(),
            record: String::new(),
            signature: String::new(),
        };
        let first_id = messages[0].header().id;
        let sha = messages[0]
            .header()
            .body_for(&zorg)
            .unwrap()
            .1
            .sha256
            .clone();
        // A receipt for another body is not one for this message.
        let wrong = receipt(
            &store,
            &trail,
            &zorg,
            &first_id,
            &"00".repeat(32),
            &forwarded,
        );
        assert_eq!(wrong.unwrap_err().code, RejectCode::Conflict);
        let outcome = receipt(&store, &trail, &zorg, &first_id, &sha, &forwarded).unwrap();
        assert_eq!(
            outcome.destroy.len(),
            1,
            "the last receipt releases the body"
        );
        store.flush().unwrap();
        assert!(!on_disk(&spool_dir, &envelopes[0]), "receipted body gone");
        assert!(on_disk(&spool_dir, &envelopes[1]), "the other is kept");
        // The same receipt again: the message is gone, so it is not queued any more.
        let again = receipt(&store, &trail, &zorg, &first_id, &sha, &forwarded);
        assert_eq!(again.unwrap_err().code, RejectCode::Conflict);
        // The second expires unreceipted.
        let expired = expire(&store, &trail, Utc::now() + Duration::days(400));
        assert_eq!(expired, vec![messages[1].header().id]);
        store.flush().unwrap();
        assert!(!on_disk(&spool_dir, &envelopes[1]), "expired body gone");
        assert_eq!(
            (store.bodies_held().unwrap(), store.queued().unwrap()),
            (0, 0)
        );
        assert!(store
            .fetch(&zorg, 10)
            .unwrap()
            .0
            .iter()
            .all(|d| !matches!(d, Delivery::Message { .. })));
        rt.block_on(store.close());
    }

    #[test]
    fn metadata_an_older_version_wrote_as_json_is_delivered_receipted_and_rewritten() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, zorg) = authorised(1);
        let id = messages[0].header().id;
        {
            let (store, trail) = open_in(dir.path());
            put_all(&store, &trail, &messages);
            let stored = store.meta.get(id.0.as_bytes()).unwrap().unwrap();
            assert_eq!(stored[0], ketenpost_core::message::FORMAT_V1);
            let meta = meta_of(&stored).unwrap();
            store.meta.insert(id.0.as_bytes(), json(&meta)).unwrap();
            store.flush().unwrap();
            rt.block_on(store.close());
        }
        let (store, trail) = open_in(dir.path());
        let (deliveries, first) = store.fetch(&zorg, 10).unwrap();
        assert_eq!((deliveries.len(), first), (1, vec![id]));
        // A change writes it in the binary form.
        let fetched = store
            .transition("fetch", &trail, &signer(), Utc::now(), |v| {
                Ok(Ok::<_, ()>(ketenpost_core::transitions::fetched(
                    &zorg,
                    v.meta(&id)?,
                )))
            })
            .unwrap();
        assert!(fetched.is_ok());
        store.flush().unwrap();
        let stored = store.meta.get(id.0.as_bytes()).unwrap().unwrap();
        assert_eq!(stored[0], ketenpost_core::message::FORMAT_V1);
        assert!(meta_of(&stored).unwrap().unwrap().fetched.contains(&zorg));
        let sha = messages[0]
            .header()
            .body_for(&zorg)
            .unwrap()
            .1
            .sha256
            .clone();
        let forwarded = SignedRecord {
            kind: Kind::DeliveryReceipt,
            signer: zorg.clone(),
            record: String::new(),
            signature: String::new(),
        };
        let outcome = receipt(&store, &trail, &zorg, &id, &sha, &forwarded).unwrap();
        assert_eq!(outcome.destroy.len(), 1);
        rt.block_on(store.close());
    }

    #[test]
    fn a_settled_message_keeps_its_id_as_the_dedup_entry_and_nothing_else() {
        use ketenpost_core::registry::Registry;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, zorg) = authorised(2);
        let (store, trail) = open_in(dir.path());
        put_all(&store, &trail, &messages);
        assert_eq!(store.bodies_held().unwrap(), 2);
        let later = Utc::now() + Duration::days(400);
        assert_eq!(expire(&store, &trail, later).len(), 2);
        for a in &messages {
            let id = a.header().id;
            assert_eq!(store.meta(&id).unwrap(), None);
            assert_eq!(
                store.meta.get(id.0.as_bytes()).unwrap().as_deref(),
                Some(SETTLED)
            );
            assert!(Registry::seen(&store, &id).unwrap());
            assert_eq!(store.view_digest(&id, &zorg).unwrap(), None);
        }
        assert_eq!(store.bodies_held().unwrap(), 0);
        assert!(store.due(later).unwrap().is_empty());
        assert!(store.fetch(&zorg, 10).unwrap().0.is_empty());
        // Accepting one of them again is a duplicate, and changes nothing.
        let meta = MessageMeta::accepted(&messages[0], Utc::now());
        assert!(matches!(
            store.put_message(&messages[0], &meta, &trail, vec![]),
            Err(StoreError::Duplicate)
        ));
        assert_eq!(store.bodies_held().unwrap(), 0);
        let (fresh, _) = authorised(1);
        assert!(!Registry::seen(&store, &fresh[0].header().id).unwrap());
        rt.block_on(store.close());
    }

    #[test]
    fn the_dedup_set_an_older_version_kept_apart_moves_into_the_metadata() {
        use ketenpost_core::registry::Registry;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, zorg) = authorised(3);
        let ids: Vec<MessageId> = messages.iter().map(|a| a.header().id).collect();
        {
            let (store, trail) = open_in(dir.path());
            put_all(&store, &trail, &messages[..1]);
            let later = Utc::now() + Duration::days(400);
            assert_eq!(expire(&store, &trail, later), ids[..1]);
            put_all(&store, &trail, &messages[1..]);
            // As an older version left it: every accepted id in `seen`, and no key in
            // `meta` for a message no longer held (the first, expired).
            let seen = store.db.open_tree("seen").unwrap();
            for id in &ids {
                seen.insert(id.0.as_bytes(), Utc::now().to_rfc3339().as_bytes())
                    .unwrap();
            }
            store.meta.remove(ids[0].0.as_bytes()).unwrap();
            store.flush().unwrap();
            rt.block_on(store.close());
        }
        let (store, trail) = open_in(dir.path());
        assert!(!has_tree(&store.db, "seen"));
        assert_eq!(
            store.meta.get(ids[0].0.as_bytes()).unwrap().as_deref(),
            Some(SETTLED)
        );
        for id in &ids {
            assert!(Registry::seen(&store, id).unwrap());
        }
        // The messages still held are untouched, and delivered.
        assert_eq!(store.bodies_held().unwrap(), 2);
        let (deliveries, _) = store.fetch(&zorg, 10).unwrap();
        assert_eq!(deliveries.len(), 2);
        let meta = MessageMeta::accepted(&messages[0], Utc::now());
        assert!(matches!(
            store.put_message(&messages[0], &meta, &trail, vec![]),
            Err(StoreError::Duplicate)
        ));
        rt.block_on(store.close());
    }

    #[test]
    fn queue_entries_an_older_version_kept_one_key_each_move_into_blocks() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, zorg) = authorised(40);
        let before;
        {
            let (store, trail) = open_in(dir.path());
            put_all(&store, &trail, &messages);
            before = store.fetch(&zorg, 100).unwrap();
            assert_eq!(before.0.len(), 40);
            // As an older version left them: one key per entry in `queue`. The first
            // block stays, as a start that moved it and crashed before dropping `queue`
            // leaves it.
            let legacy = store.db.open_tree(queue::LEGACY_TREE).unwrap();
            for (i, item) in store.queue.iter().enumerate() {
                let (block, entries) = item.unwrap();
                let party = &block[..block.len() - 8];
                for (seq, id) in queue::entries(&entries).unwrap() {
                    legacy.insert(key2(party, &seq.to_be_bytes()), &id).unwrap();
                }
                if i > 0 {
                    store.queue.remove(block).unwrap();
                }
            }
            assert_eq!(legacy.len(), 40);
            store.flush().unwrap();
            rt.block_on(store.close());
        }
        let (store, _trail) = open_in(dir.path());
        assert!(!has_tree(&store.db, queue::LEGACY_TREE));
        // Each entry once, the ones moved before included.
        assert_eq!(store.queued().unwrap(), 40);
        // Fewer keys than entries, and the same deliveries in the same order.
        assert!(store.queue.len() < 40);
        assert_eq!(store.fetch(&zorg, 100).unwrap(), before);
        rt.block_on(store.close());
    }

    #[test]
    fn expiry_entries_an_older_version_kept_one_key_each_move_into_blocks() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, _) = authorised(30);
        let mut ids: Vec<MessageId> = messages.iter().map(|a| a.header().id).collect();
        ids.sort();
        {
            let (store, trail) = open_in(dir.path());
            put_all(&store, &trail, &messages);
            // As an older version left them: expires-at ‖ id → body, one key each.
            let legacy = store.db.open_tree(expiry::LEGACY_TREE).unwrap();
            // The first block stays, as a move cut short by a crash leaves it.
            for (i, item) in store.expiry.iter().enumerate() {
                let (block, entries) = item.unwrap();
                for (_, id) in expiry::entries(&entries).unwrap() {
                    let meta = store.meta(&MessageId(uuid::Uuid::from_bytes(id))).unwrap();
                    let meta = meta.unwrap();
                    legacy
                        .insert(
                            expiry_key(meta.expires_at, &id),
                            &meta.body_at.unwrap().to_bytes(),
                        )
                        .unwrap();
                }
                if i > 0 {
                    store.expiry.remove(block).unwrap();
                }
            }
            assert_eq!(legacy.len(), 30);
            store.flush().unwrap();
            rt.block_on(store.close());
        }
        let (store, _trail) = open_in(dir.path());
        assert!(!has_tree(&store.db, expiry::LEGACY_TREE));
        assert!(store.expiry.len() < 30);
        assert!(store.due(Utc::now()).unwrap().is_empty());
        let mut due = store.due(Utc::now() + Duration::days(400)).unwrap();
        due.sort();
        assert_eq!(due, ids);
        rt.block_on(store.close());
    }

    #[test]
    fn messages_that_expire_at_one_moment_share_blocks_of_at_most_sixteen() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, _) = authorised(50);
        let (store, trail) = open_in(dir.path());
        // As a TTL in workdays gives: every message of a day expires at one midnight.
        let midnight = Utc::now() + Duration::days(3);
        for a in &messages {
            let mut meta = MessageMeta::accepted(a, Utc::now());
            meta.expires_at = midnight;
            store.put_message(a, &meta, &trail, vec![]).unwrap();
        }
        let sizes: Vec<usize> = store
            .expiry
            .iter()
            .map(|item| expiry::entries(&item.unwrap().1).unwrap().count())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
        assert!(sizes.len() < 50, "{sizes:?}");
        assert!(store
            .due(midnight - Duration::milliseconds(1))
            .unwrap()
            .is_empty());
        assert_eq!(store.due(midnight).unwrap().len(), 50);
        // Expired, every entry is gone with its message.
        assert_eq!(expire(&store, &trail, midnight).len(), 50);
        assert_eq!(store.expiry.len(), 0);
        rt.block_on(store.close());
    }

    #[test]
    fn a_damaged_queue_or_expiry_block_is_passed_over_and_stops_nothing_else() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (messages, zorg) = authorised(2);
        let (store, trail) = open_in(dir.path());
        // Sequence numbers from 32 on, so that the damaged block 0 comes first.
        for _ in 0..32 {
            store.db.generate_id().unwrap();
        }
        put_all(&store, &trail, &messages);
        // A block of the wrong length, before every other one, in both indexes.
        let mut early = zorg.as_str().as_bytes().to_vec();
        early.extend_from_slice(&[0; 8]);
        store.queue.insert(early, &[1u8; 5][..]).unwrap();
        store.expiry.insert([0u8; 16], &[1u8; 5][..]).unwrap();
        assert_eq!(store.fetch(&zorg, 10).unwrap().0.len(), 2);
        let later = Utc::now() + Duration::days(400);
        assert_eq!(store.due(later).unwrap().len(), 2);
        rt.block_on(store.close());
    }

    #[test]
    fn a_damaged_body_is_neither_delivered_nor_receipted_and_blocks_nothing() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let (store, trail) = open_in(dir.path());
        let (messages, zorg) = authorised(2);
        for a in &messages {
            let meta = MessageMeta::accepted(a, Utc::now());
            store.put_message(a, &meta, &trail, vec![]).unwrap();
        }
        // Flip one byte of the first message's body in its segment file.
        let damaged = messages[0].verified().envelope().encode();
        let segment = std::fs::read_dir(&spool_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let bytes = std::fs::read(p).unwrap();
                bytes.windows(damaged.len()).any(|w| w == damaged)
            })
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = bytes
            .windows(damaged.len())
            .position(|w| w == damaged)
            .unwrap();
        bytes[at + damaged.len() / 2] ^= 0x01;
        std::fs::write(&segment, bytes).unwrap();

        // The damaged one is skipped without taking the place of the intact one.
        let (deliveries, _) = store.fetch(&zorg, 1).unwrap();
        let intact = messages[1].verified().envelope().encode();
        match deliveries.as_slice() {
            [Delivery::Message { envelope, .. }] => assert_eq!(
                ketenpost_schemas::protocol::envelope_from_b64(envelope).unwrap(),
                intact
            ),
            other => panic!("expected the intact message alone: {other:?}"),
        }
        // A receipt cannot be checked against a body that does not read: refused, kept.
        let forwarded = SignedRecord {
            kind: Kind::DeliveryReceipt,
            signer: zorg.clone(),
            record: String::new(),
            signature: String::new(),
        };
        let first = messages[0].header();
        let sha = first.body_for(&zorg).unwrap().1.sha256.clone();
        let refused = receipt(&store, &trail, &zorg, &first.id, &sha, &forwarded);
        assert_eq!(refused.unwrap_err().code, RejectCode::Conflict);
        assert_eq!(store.bodies_held().unwrap(), 2);
        rt.block_on(store.close());
    }

    /// Two recipients receipt the same message at the same moment while a third fetch
    /// changes its metadata: neither receipt is refused (the receipt race), and the body
    /// goes with the last one.
    #[test]
    fn concurrent_receipts_of_one_message_are_all_accepted() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (store, trail) = open_in(dir.path());
        let fx = ketenpost_core::testing::Fx::new();
        let (zorg, gem) = (fx.zorg.oin.clone(), fx.gem.oin.clone());
        for _ in 0..20 {
            let a = put_signaal(&fx, &store, &trail);
            let id = a.header().id;
            let forwarded = SignedRecord {
                kind: Kind::DeliveryReceipt,
                signer: zorg.clone(),
                record: String::new(),
                signature: String::new(),
            };
            let barrier = Barrier::new(3);
            let outcomes = std::thread::scope(|s| {
                let fetcher = s.spawn(|| {
                    barrier.wait();
                    let (_, first) = store.fetch(&gem, 10).unwrap();
                    let _applied = store
                        .transition("fetch", &trail, &signer(), Utc::now(), |v| {
                            let mut fx = ketenpost_core::effects::Effects::default();
                            for id in &first {
                                fx.extend(ketenpost_core::transitions::fetched(&gem, v.meta(id)?));
                            }
                            Ok(Ok::<_, std::convert::Infallible>(fx))
                        })
                        .unwrap()
                        .unwrap();
                });
                let receipts: Vec<_> = [&zorg, &gem]
                    .map(|who| {
                        let sha = a.header().body_for(who).unwrap().1.sha256.clone();
                        let (store, trail, forwarded, barrier) =
                            (&store, &trail, &forwarded, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            receipt(store, trail, who, &id, &sha, forwarded)
                        })
                    })
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect();
                fetcher.join().unwrap();
                receipts
            });
            for o in &outcomes {
                assert!(o.is_ok(), "a legitimate receipt was refused: {o:?}");
            }
            let destroyed: usize = outcomes
                .iter()
                .map(|o| o.as_ref().unwrap().destroy.len())
                .sum();
            assert_eq!(destroyed, 1, "the body goes with the last receipt, once");
        }
        assert_eq!(
            (store.bodies_held().unwrap(), store.queued().unwrap()),
            (0, 0)
        );
        rt.block_on(store.close());
    }

    /// Decisions queued for the writer thread together: each sees what the ones before it
    /// wrote (the second receipt releases the body, once), a refusal and a decision that
    /// fails take nothing down with them, and every applied one is durable and finished
    /// (its body destroyed) when its ticket says done.
    #[test]
    fn queued_decisions_are_applied_together_and_fail_alone() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let (store, trail) = open_in(dir.path());
        let fx = ketenpost_core::testing::Fx::new();
        let a = put_signaal(&fx, &store, &trail);
        let id = a.header().id;
        let now = Utc::now();
        let queue_receipt = |who: &Oin| {
            let sha = a.header().body_for(who).unwrap().1.sha256.clone();
            let forwarded = SignedRecord {
                kind: Kind::DeliveryReceipt,
                signer: who.clone(),
                record: String::new(),
                signature: String::new(),
            };
            let decide = receipt_decision(&store, who, &id, &sha, &forwarded, now);
            store
                .begin_transition("receipt", &trail, &signer(), now, true, decide)
                .unwrap()
        };
        let records_before = trail.head().seq;
        let first = queue_receipt(&fx.zorg.oin);
        let failing = store
            .begin_transition("receipt", &trail, &signer(), now, true, |_v| {
                Err::<Result<Effects, ()>, _>(ConflictableTransactionError::Abort(
                    StoreError::Corrupt {
                        what: "message metadata",
                        reason: "test".into(),
                    },
                ))
            })
            .unwrap();
        let refused = store
            .begin_transition("receipt", &trail, &signer(), now, true, |_v| {
                Ok(Err::<Effects, _>("refused"))
            })
            .unwrap();
        let second = queue_receipt(&fx.gem.oin);
        let (first, failing, refused, second) = rt.block_on(async {
            (
                first.done().await,
                failing.done().await,
                refused.done().await,
                second.done().await,
            )
        });
        let (first, second) = (first.unwrap().unwrap(), second.unwrap().unwrap());
        assert!(
            matches!(failing, Err(StoreError::Corrupt { .. })),
            "{failing:?}"
        );
        assert!(matches!(refused, Ok(Err("refused"))), "{refused:?}");
        assert_eq!(first.destroy.len() + second.destroy.len(), 1);
        assert_eq!(
            (store.bodies_held().unwrap(), store.queued().unwrap()),
            (0, 0)
        );
        assert!(store.meta(&id).unwrap().is_none());
        // Both receipts audited, nothing of the others.
        assert_eq!(
            trail.head().seq - records_before,
            (first.audited + second.audited) as u64
        );
        rt.block_on(store.close());
    }

    #[test]
    fn a_start_destroys_bodies_that_no_metadata_refers_to() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let open = || open_in(dir.path());
        let (messages, _) = authorised(2);
        let envelopes = envelopes_of(&messages);
        let unlanded = b"a body appended by a submission that never landed".to_vec();
        {
            let (store, trail) = open();
            put_all(&store, &trail, &messages);
            // What a crash after a durable expiry and before the body was destroyed
            // leaves: the first message's metadata is gone, its body is not.
            let id = messages[0].header().id;
            let later = Utc::now() + Duration::days(400);
            let applied = store
                .transition("expire", &trail, &signer(), later, |v| {
                    Ok(Ok::<_, std::convert::Infallible>(
                        ketenpost_core::transitions::expire(v.meta(&id)?, v.clock(&id)?, later),
                    ))
                })
                .unwrap()
                .unwrap();
            assert_eq!(applied.destroy.len(), 1);
            // And a crash between a body's append and its metadata's transaction.
            store.spool.append(&[7; 16], &unlanded).unwrap();
            store.flush().unwrap();
            rt.block_on(store.close());
        }
        assert!(on_disk(&spool_dir, &envelopes[0]));
        assert!(on_disk(&spool_dir, &unlanded));
        let (store, _trail) = open();
        assert!(
            !on_disk(&spool_dir, &envelopes[0]),
            "the released body is destroyed"
        );
        assert!(
            !on_disk(&spool_dir, &unlanded),
            "the unlanded body is destroyed"
        );
        assert!(
            on_disk(&spool_dir, &envelopes[1]),
            "the referenced body stays"
        );
        assert_eq!(store.bodies_held().unwrap(), 1);
        rt.block_on(store.close());
    }

    #[test]
    fn a_store_without_body_counts_is_counted_once_at_its_first_start() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let open = || open_in(dir.path());
        let (messages, zorg) = authorised(3);
        let counts = |store: &Store| -> Vec<(Vec<u8>, Vec<u8>)> {
            store
                .segments
                .iter()
                .map(|i| {
                    let (k, v) = i.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect()
        };
        let kept = {
            let (store, trail) = open();
            put_all(&store, &trail, &messages);
            let kept = counts(&store);
            assert!(kept.contains(&(COUNTED.to_vec(), vec![1])));
            assert!(kept.contains(&(1u32.to_be_bytes().to_vec(), 3u64.to_be_bytes().to_vec())));
            // As an older version left it: no counts.
            store.segments.clear().unwrap();
            store.flush().unwrap();
            rt.block_on(store.close());
            kept
        };
        for _ in 0..2 {
            let (store, _trail) = open();
            assert_eq!(counts(&store), kept, "counted from the metadata, then kept");
            assert_eq!(store.bodies_held().unwrap(), 3);
            assert_eq!(store.fetch(&zorg, 10).unwrap().0.len(), 3);
            rt.block_on(store.close());
        }
    }

    #[test]
    fn dropping_every_handle_releases_the_database() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .expect("the previous store released the database");
            let store = Store::open(db, &dir.path().join("spool")).unwrap();
            let copy = store.clone();
            drop(store);
            assert_eq!(copy.bodies_held().unwrap(), 0);
            drop(copy);
        }
    }

    #[test]
    fn concurrent_puts_share_transactions_and_a_duplicate_fails_alone() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let store = Store::open(db.clone(), &dir.path().join("spool")).unwrap();
        let trail = Arc::new(
            crate::audit::AuditTrail::open(&db, SigningKey::from_bytes(&[7u8; 32])).unwrap(),
        );
        // Every message twice, so duplicates meet in one combined transaction as well as
        // across transactions.
        let (messages, _) = authorised(24);
        let threads = 8;
        let barrier = Barrier::new(threads);
        let outcomes: Vec<(MessageId, Result<(), StoreError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (store, messages, barrier, trail) = (&store, &messages, &barrier, &trail);
                    s.spawn(move || {
                        barrier.wait();
                        (0..messages.len() * 2)
                            .filter(|i| i % threads == t)
                            .map(|i| {
                                let a = &messages[i % messages.len()];
                                {
                                    let entry = AuditEntry::ok(crate::audit::AuditEvent::Accepted)
                                        .actor(&a.header().sender)
                                        .message_id(a.header().id);
                                    (
                                        a.header().id,
                                        store.put_message(
                                            a,
                                            &MessageMeta::accepted(a, Utc::now()),
                                            trail,
                                            vec![entry],
                                        ),
                                    )
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for a in &messages {
            let id = a.header().id;
            let mine: Vec<_> = outcomes.iter().filter(|(i, _)| *i == id).collect();
            assert_eq!(mine.len(), 2);
            let ok = mine.iter().filter(|(_, r)| r.is_ok()).count();
            let dup = mine
                .iter()
                .filter(|(_, r)| matches!(r, Err(StoreError::Duplicate)))
                .count();
            assert_eq!((ok, dup), (1, 1), "{id}: {mine:?}");
            assert!(store.seen(&id).unwrap());
        }
        assert_eq!(store.bodies_held().unwrap(), messages.len() as u64);
        assert_eq!(store.queued().unwrap(), messages.len());
        // One audit record per accepted message, none for a duplicate, chained.
        assert_eq!(trail.head().seq, messages.len() as u64);
        let report = crate::audit::verify_chain(&db, &trail.verifying_key()).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.records, messages.len() as u64);
        // Each combined write was flushed.
        assert!(store.flush_count() >= 1);
        assert!(store.flush_count() <= messages.len() as u64);
        rt.block_on(store.close());
    }
}
