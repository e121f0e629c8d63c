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
//! 2. the writer thread (`ketenpost-writer`) takes everything queued, syncs the spool once
//!    for all of it, so no metadata is ever on disk without its body, then writes it in one
//!    sled transaction (metadata, which is the dedup entry too, expiry entry, a queue entry
//!    per recipient in its block, the audit records, and the body counts of the spool
//!    segments) and has sled flush it into its log file;
//! 3. the log is synced (`fdatasync`, one for every round waiting) and every waiting
//!    submission told, round by round: by the settling thread (`ketenpost-settle`) while
//!    the writer goes on with the next round, or by the writer itself when nothing else
//!    waits (at a low rate a round is one message, and a hand-off to another thread would
//!    only add a wake-up).
//!
//! While the settling thread syncs one round, the writer syncs the bodies of the next and
//! writes it, and more submissions queue up, so the batches grow with the load (about
//! 40-60 messages each at 5,000 per second on two cores). A submission waits without
//! holding a thread. sled 0.34
//! writes out its IO buffer around every transaction and a transaction cannot run during a
//! flush, so one transaction and one fsync per message would cost more than everything
//! else the broker does for it. Decisions (receipts, fetches, control records) go through
//! the writer too ([`Store::begin_transition`]); other writes are made durable with
//! [`Store::commit`], a group commit that lets concurrent writers share one fsync, and a
//! fetch waits only until what it read is durable ([`watermark`],
//! [`Store::commit_covering`]).
//!
//! The modules, along the seams of a message's life:
//!
//! | module | what |
//! |---|---|
//! | `put` | the put pipeline: writer thread (the spool's sync, one transaction per batch), settling thread (one sync for the rounds waiting) |
//! | `watermark` | which transactions a flush made durable, for the fetches |
//! | `delivery` | a party's deliveries and notices, and the messages due to expire |
//! | `transition` | a core decision's effects applied in one transaction (receipts, expiry, control records, deletion orders) |
//! | `queue`, `expiry`, `blocks` | the queue and expiry entries, in blocks |
//! | `registry`, `cache` | cases, consents, deletion orders, and the core's registry view |
//! | `clocks` | answer clocks |
//! | `reconcile` | at start: spool against metadata, body counts, moves of older trees |
//! | `alerts`, `backup` | the FG alert queue; online backup and restore |
//! | `codec` | value and key encodings, the settled marker |

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use sled::transaction::TransactionError;
use tokio::sync::{mpsc, oneshot};

use crate::spool::{Spool, SpoolError};
use ketenpost_core::message::MessageMeta;
use ketenpost_transport::durable::LogSync;

pub mod alerts;
mod backup;
mod blocks;
mod cache;
mod clocks;
mod codec;
mod delivery;
mod expiry;
mod meta_cache;
mod put;
mod queue;
mod reconcile;
mod registry;
mod transition;
mod watermark;
pub use backup::{manifest, restore, BackupError, BackupManifest, BACKUP_MANIFEST};
pub(crate) use codec::SETTLED;
use codec::{held_meta, key2, meta_of};
use delivery::queue_entries;
pub use delivery::{Fetched, ViewDigest};
use ketenpost_core::registry::{Case, Consent};
use put::{lock, CommitMsg, PutCombiner, Users};
pub use put::{Landed, PendingAnswer, PutTicket};
use reconcile::{
    count_bodies, count_of, migrate_legacy, reconcile_by_walk, reconcile_counted,
    settle_legacy_dedup, write_counts, Legacy, COUNTED,
};
pub use transition::{Applied, NoticeSigner, TransitionTicket, TxResult, TxView};

/// How long a group commit waits for the writer's settling thread to sync what it needs
/// before it flushes itself (a sync takes a millisecond or so; this is for a stuck one).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Audit records moved to the archive with one sync of its file, at most (and at most
/// [`crate::audit::ARCHIVE_MOVE_BYTES`] of them).
const ARCHIVE_BATCH: usize = 4096;
/// The longest pause between two moves of one archiver pass (see [`Store::archive_audit`]).
const ARCHIVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// About this many records at most are archived in one [`Store::archive_audit`] (its last
/// batch may pass it by up to [`ARCHIVE_BATCH`]).
pub const ARCHIVE_PASS: usize = 32 * ARCHIVE_BATCH;

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
    /// sled's log, synced after every flush: sled's own flush is not durable
    /// ([`ketenpost_transport::durable`]).
    log: Arc<LogSync>,
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
    /// The decoded metadata of recently written messages ([`meta_cache`]).
    meta_cache: Arc<meta_cache::MetaCache>,
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
    /// Which transactions are durable ([`watermark`]).
    watermark: Arc<watermark::Watermark>,
    /// Held by every handle but the writer thread's own: when the last one goes, the
    /// writer finishes what is queued and stops, releasing the database.
    #[allow(dead_code)] // held for its `Drop`
    users: Option<Arc<Users>>,
}

impl Store {
    /// Open the store in `db` (opened from `db_dir`), with the bodies' spool in `spool_dir`,
    /// and start its group committer. Must run inside a tokio runtime.
    ///
    /// Reconciles the spool with the metadata ([`reconcile_counted`]: per segment, from
    /// the counts in `segments`; a store an older version wrote is read message by message
    /// once, [`reconcile_by_walk`]), and removes the segments no message needs.
    pub fn open(
        db: sled::Db,
        db_dir: &std::path::Path,
        spool_dir: &std::path::Path,
    ) -> Result<Store, StoreError> {
        let log = Arc::new(LogSync::open(db_dir).map_err(|e| StoreError::Sled(e.into()))?);
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
        log.flush(&db)?;
        if segments.contains_key(COUNTED)? {
            reconcile_counted(&spool, &meta, &segments)?;
        } else {
            // Written by a version that kept no counts: read every message's body location
            // once, and keep the counts from now on.
            reconcile_by_walk(&spool, &meta, &db.open_tree(expiry::LEGACY_TREE)?)?;
            write_counts(&segments, &spool.held())?;
            log.flush(&db)?;
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
            meta_cache: Arc::default(),
            alerts: db.open_tree("alerts")?,
            alerts_state: db.open_tree("alerts_state")?,
            committer: tx,
            committer_task: committer_task.clone(),
            flushes: flushes.clone(),
            commit_stats: commit_stats.clone(),
            poison: poison.clone(),
            puts: Arc::new(PutCombiner::default()),
            watermark: Arc::default(),
            users: None,
            db: db.clone(),
            log,
        };
        // Two stages: the log is synced for one round while the writer syncs the spool for,
        // writes and flushes the next.
        let (settling_tx, settling_rx) = std::sync::mpsc::channel();
        let writer = store.clone();
        let written = std::thread::Builder::new()
            .name("ketenpost-writer".into())
            .spawn(move || writer.write_loop(&settling_tx))
            .map_err(StoreError::Thread)?;
        let settler = store.clone();
        let settled = std::thread::Builder::new()
            .name("ketenpost-settle".into())
            .spawn(move || settler.settle_loop(&settling_rx))
            .map_err(StoreError::Thread)?;
        lock(&store.puts.writer).extend([written, settled]);
        let store = Store {
            users: Some(Arc::new(Users(store.puts.clone()))),
            ..store
        };
        // The group committer: every waiter that arrives while a flush runs shares the next
        // flush. One fsync serves many submits.
        let puts = store.puts.clone();
        let poison = store.poison.clone();
        let watermark = store.watermark.clone();
        let handle = tokio::spawn(async move {
            let mut closing = false;
            while let Some(first) = rx.recv().await {
                let mut waiters = Vec::new();
                let mut db = None;
                // The highest mark a waiter needs durable; `u64::MAX`: everything written.
                let mut need = 0;
                let mut next = Some(first);
                while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                    match msg {
                        CommitMsg::Commit(w, d, up_to) => {
                            waiters.push(w);
                            db = Some(d);
                            need = need.max(up_to.unwrap_or(u64::MAX));
                        }
                        CommitMsg::Close => {
                            closing = true;
                            need = u64::MAX;
                        }
                    }
                }
                let (puts, spool, watermark, poisoned) = (
                    puts.clone(),
                    spool.clone(),
                    watermark.clone(),
                    poison.clone(),
                );
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || {
                    let mut io = lock(&puts.io);
                    // The writer's round that held the IO token may have made it durable,
                    // or written it into sled's log for its settling thread to sync: then
                    // that sync is waited for (bounded), not a flush of our own made.
                    if watermark.durable() >= need {
                        return Ok(false);
                    }
                    if watermark.written() >= need {
                        drop(io);
                        let stop = || poisoned.check().is_err();
                        if watermark.wait_durable(need, SETTLE_WAIT, stop) {
                            return Ok(false);
                        }
                        io = lock(&puts.io);
                    }
                    // After a failed fsync no later one proves anything.
                    poisoned.check().map_err(|e| e.to_string())?;
                    let _io = io;
                    let covered = watermark.covered();
                    spool.sync().map_err(|e| e.to_string())?;
                    match db {
                        Some((db, log)) => log.flush(&db).map(|_| ()).map_err(|e| e.to_string())?,
                        None => return Ok(false),
                    }
                    watermark.durable_up_to(covered);
                    Ok(true)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(e) = &result {
                    poison.set(e);
                }
                if matches!(result, Ok(true)) {
                    flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    commit_stats.record(waiters.len(), started.elapsed());
                }
                let result = result.map(|_| ());
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
        self.group_commit(None).await
    }

    /// A mark to read after reading what is to be handed out (a delivery): once
    /// [`Store::commit_covering`] with it returns, everything the read saw is durable.
    pub fn read_mark(&self) -> u64 {
        self.watermark.started()
    }

    /// Wait until everything a read saw is durable, given the `mark` ([`Store::read_mark`])
    /// taken after it: at once when a flush made it so, else after the writer's round that
    /// is running now, or a group commit when that round did not flush it. (A flush that
    /// starts after the read covers it, even while an older transaction still runs.)
    pub async fn commit_covering(&self, mark: u64) -> Result<(), StoreError> {
        self.poison.check()?;
        if self.watermark.durable() >= mark {
            return Ok(());
        }
        self.group_commit(Some(mark)).await
    }

    async fn group_commit(&self, mark: Option<u64>) -> Result<(), StoreError> {
        self.poison.check()?;
        let (tx, rx) = oneshot::channel();
        self.committer
            .send(CommitMsg::Commit(
                tx,
                (self.db.clone(), self.log.clone()),
                mark,
            ))
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
        let covered = self.watermark.covered();
        let result = self.spool.sync().map_err(StoreError::from).and_then(|()| {
            self.log
                .flush(&self.db)
                .map(|_| ())
                .map_err(StoreError::from)
        });
        if let Err(e) = &result {
            self.poison.set(e);
            return Err(StoreError::Poisoned(e.to_string()));
        }
        self.watermark.durable_up_to(covered);
        Ok(())
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

    /// Move the oldest audit records of `trail` from the database into its archive file
    /// ([`AuditTrail::archive`]), in batches; returns how many moved. One call moves at
    /// most [`ARCHIVE_PASS`] records. Blocking.
    ///
    /// After each batch, when more is waiting, the pass pauses as long as the batch took
    /// (at most [`ARCHIVE_PAUSE`]): a batch's sync has the disk to itself while it writes,
    /// and the writer's syncs, which every submission waits for, get it between batches.
    pub fn archive_audit(&self, trail: &crate::audit::AuditTrail) -> Result<usize, StoreError> {
        self.archive_audit_while(trail, || true)
    }

    /// [`Store::archive_audit`], ending the pass after the move during which `go` turned
    /// false (the broker is stopping: a pass over a long backlog need not hold it up).
    pub fn archive_audit_while(
        &self,
        trail: &crate::audit::AuditTrail,
        go: impl Fn() -> bool,
    ) -> Result<usize, StoreError> {
        let mut moved = 0;
        while moved < ARCHIVE_PASS && go() {
            // Entries move whole: a batch that stopped at its limit may hold fewer records
            // than the limit with more to move. One that did not has moved everything
            // there was when it looked (what came in since waits for the next pass).
            let started = std::time::Instant::now();
            let batch = trail.archive_upto(ARCHIVE_BATCH, crate::audit::ARCHIVE_MOVE_BYTES)?;
            moved += batch.records;
            if !batch.at_limit {
                break;
            }
            std::thread::sleep(started.elapsed().min(ARCHIVE_PAUSE));
        }
        Ok(moved)
    }

    /// Metadata of a message still held.
    pub fn meta(&self, id: &MessageId) -> Result<Option<MessageMeta>, StoreError> {
        Ok(self.held(id.0.as_bytes())?.map(Arc::unwrap_or_clone))
    }

    /// Metadata of a message still held: from the [cache](meta_cache) of recent writes,
    /// else read and decoded.
    pub(super) fn held(&self, id: &[u8; 16]) -> Result<Option<Arc<MessageMeta>>, StoreError> {
        if let Some(meta) = self.meta_cache.get(id) {
            return Ok(Some(meta));
        }
        Ok(held_meta(&self.meta, id)?.map(Arc::new))
    }
}

#[cfg(test)]
mod tests;
