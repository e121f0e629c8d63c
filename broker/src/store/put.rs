//! The put pipeline: a message's body to the spool, the spool synced once for a batch, then
//! its metadata, queue and expiry entries and audit records in one sled transaction and
//! one flush, then the log's sync on the settling thread (see the [module docs](super)).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::{MessageId, Oin};
use sled::transaction::{TransactionError, Transactional};
use tokio::sync::oneshot;

use super::codec::{json, parse};
use super::reconcile::count_bodies;
use super::transition::{Applied, PendingTransition};
use super::{expiry, queue, Poison, Store, StoreError};
use crate::audit::{AuditEntry, AuditTrail, ChainCursor, ChainLock};
use crate::spool::Spool;
use ketenpost_core::checks::Authorised;
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::message::{BodyAt, MessageMeta};

/// See [`Store::users`].
#[derive(Debug)]
pub(super) struct Users(pub(super) Arc<PutCombiner>);

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
pub(super) struct PendingPut {
    /// Its answer bookkeeping, when it answers another message.
    pub(super) answer: Option<PendingAnswer>,
    pub(super) id: [u8; 16],
    /// Appended to the spool, not yet synced.
    pub(super) body_at: BodyAt,
    pub(super) meta: Vec<u8>,
    /// The metadata as written, for its expiry entry.
    pub(super) held: Arc<MessageMeta>,
    /// Per recipient: its queue block's key and the entry's sequence number.
    pub(super) queue: Vec<(Vec<u8>, u64)>,
    /// Its answer clock, if its kind has an answer deadline (written in the same
    /// transaction, so no receipt can come before it and no clock outlives a failed write).
    pub(super) clock: Option<Vec<u8>>,
    /// The audit records of accepting it (validated), dated `now`, for this trail.
    pub(super) audit: Vec<AuditEntry>,
    pub(super) trail: Arc<AuditTrail>,
    pub(super) now: DateTime<Utc>,
    /// Told by whoever applies it: written and flushed, or why not.
    pub(super) done: oneshot::Sender<Result<Landed, PutFailed>>,
}

/// The next round of queued writes, waiting for one; `None` once the store closes and the
/// queue is empty.
fn next_round(puts: &PutCombiner) -> Option<Round> {
    let mut queue = lock(&puts.queue);
    while queue.puts.is_empty() && queue.transitions.is_empty() && !queue.closing {
        queue.writer_waits = true;
        queue = puts
            .wake
            .wait(queue)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.writer_waits = false;
    }
    if queue.puts.is_empty() && queue.transitions.is_empty() {
        return None;
    }
    Some(Round {
        puts: std::mem::take(&mut queue.puts),
        transitions: std::mem::take(&mut queue.transitions),
    })
}

/// Nothing is queued for the writer.
fn queue_empty(puts: &PutCombiner) -> bool {
    let queue = lock(&puts.queue);
    queue.puts.is_empty() && queue.transitions.is_empty()
}

/// Sync the spool for a round's message writes (every body queued was appended before it
/// was queued), so that their metadata is never on disk without its body. A round of
/// decisions alone writes no bodies and needs no sync. `None` when the sync failed: the
/// store is poisoned and the round answered.
fn sync_bodies(
    round: Round,
    spool: &Spool,
    poison: &Poison,
    stats: &crate::metrics::CommitStats,
) -> Option<Round> {
    if round.puts.is_empty() {
        return Some(round);
    }
    let started = std::time::Instant::now();
    let synced = spool.sync();
    stats.record_spool_sync(started.elapsed());
    let Err(e) = synced else {
        return Some(round);
    };
    poison.set(&e);
    let why = PutFailed::Spool(e.to_string());
    forget_bodies(spool, &round.puts);
    for p in round.puts {
        let _ = p.done.send(Err(why.clone()));
    }
    for t in round.transitions {
        let _ = t.done.send(Err(why.clone().into_store_error()));
    }
    None
}

/// What a batch of message writes did: per message what landed (`None`: a duplicate), or
/// why the whole batch failed.
pub(super) type Written = Result<Vec<Option<Landed>>, PutFailed>;

/// `items` in runs that share one audit trail (a broker has one), in order.
pub(super) fn by_trail<T>(
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
pub(super) fn forget_bodies<'a>(spool: &Spool, puts: impl IntoIterator<Item = &'a PendingPut>) {
    for p in puts {
        if let Err(e) = spool.delete(&p.body_at, &p.id) {
            tracing::error!(cause = %e, "cannot delete the body of a message not accepted");
        }
    }
}

/// How often the writer prepares a batch again when the state it read changed before its
/// transaction (which the chain lock it holds rules out; the check is a safety net).
pub(super) const MAX_PUT_ATTEMPTS: u32 = 8;

/// The transaction of a prepared batch found the state it was prepared against changed.
#[derive(Debug)]
pub(super) struct Stale;

/// One message of a batch as decided before its transaction.
pub(super) struct Prepared {
    /// For an answer: the answered message's clock.
    pub(super) answer: Option<AnsweredClock>,
    pub(super) landed: Landed,
}

/// The answered message's clock: what the decision read (the transaction checks that it
/// still reads so) and what it writes in its place (`Some(None)`: remove it).
pub(super) struct AnsweredClock {
    pub(super) key: [u8; 16],
    pub(super) read: Option<Vec<u8>>,
    pub(super) write: Option<Option<Vec<u8>>>,
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

pub(super) fn put_outcome(
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
    pub(super) fn into_store_error(self) -> StoreError {
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
            PutFailed::Contended => StoreError::Contended,
        }
    }
}

/// Why a combined message write did not land.
#[derive(Clone, Debug)]
pub(super) enum PutFailed {
    /// The id is in the dedup set (or twice in the batch): only this message fails.
    Duplicate,
    /// sled failed the transaction or the flush: the whole batch fails.
    Sled(sled::Error),
    /// An audit record could not be made: the whole batch fails.
    Audit(String),
    /// The spool could not make the batch's bodies durable: the whole batch fails.
    Spool(String),
    /// What the batch was prepared against kept changing: the whole batch fails.
    Contended,
}

/// Group commit of message writes (see the module docs): a submission queues its writes
/// and waits for its [`PutTicket`] without holding a thread; the writer thread takes
/// everything queued, syncs the spool, applies it in one transaction and flushes it. `io`
/// is held by the group committer while it flushes and by a combined write: a sled
/// transaction that starts during a flush waits for it holding sled's internal lock
/// exclusively, which stalls every read (the checks) until the flush ends.
#[derive(Default)]
pub(super) struct PutCombiner {
    pub(super) queue: std::sync::Mutex<PutQueue>,
    pub(super) wake: std::sync::Condvar,
    pub(super) io: std::sync::Mutex<()>,
    /// Rounds handed to the settling thread and not yet answered.
    pub(super) settling: std::sync::atomic::AtomicUsize,
    /// The writer and settling threads.
    pub(super) writer: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
pub(super) struct PutQueue {
    pub(super) puts: Vec<PendingPut>,
    pub(super) transitions: Vec<PendingTransition>,
    pub(super) closing: bool,
    /// The writer waits for work and nobody woke it yet: the next queued write wakes it.
    /// A write queued while the writer works, or after another woke it, needs no wake-up
    /// (a notification costs a system call even when nobody waits).
    writer_waits: bool,
}

impl PutQueue {
    /// Whether the writer must be woken for a write just queued (at most once a wait).
    pub(super) fn wake_writer(&mut self) -> bool {
        std::mem::take(&mut self.writer_waits)
    }
}

/// A round the writer applied and wrote into sled's log, on its way to the settling
/// thread, which makes it durable and answers it.
pub(super) struct Settling {
    pub(super) puts: Vec<(Vec<PendingPut>, Written)>,
    pub(super) decided: Vec<(PendingTransition, Result<Option<Applied>, StoreError>)>,
    /// Set when the round needs to be durable: sled flushed it into its log.
    pub(super) flushed: Option<Flushed>,
    /// A message landed.
    pub(super) written: bool,
    /// An answer landed.
    pub(super) answers: bool,
}

/// A sled flush of the writer's: what the sync after it makes durable.
#[derive(Clone, Copy)]
pub(super) struct Flushed {
    /// The watermark's [`covered`](super::watermark::Watermark::covered) before it.
    pub(super) covered: u64,
    /// When it began.
    pub(super) started: std::time::Instant,
}

/// Crash point `stage` for what landed in a round: `submit` for its messages, `answer` for
/// its answers, each applied decision's own op.
fn hit_round(
    stage: &'static str,
    written: bool,
    answers: bool,
    decided: &[(PendingTransition, Result<Option<Applied>, StoreError>)],
) {
    if written {
        crate::failpoint::hit("submit", stage);
    }
    if answers {
        crate::failpoint::hit("answer", stage);
    }
    for (t, r) in decided {
        if matches!(r, Ok(Some(_))) {
            crate::failpoint::hit(t.op, stage);
        }
    }
}

/// Tell everyone in a round that it failed with `e` (a failed flush or sync). Their
/// bodies stay: the transactions are in sled and may reach the disk later.
fn fail_round(
    puts: Vec<(Vec<PendingPut>, Written)>,
    decided: Vec<(PendingTransition, Result<Option<Applied>, StoreError>)>,
    e: &sled::Error,
) {
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
}

/// What the writer takes from the queue at once: message writes and decisions
/// ([`Store::begin_transition`]).
#[derive(Default)]
pub(super) struct Round {
    pub(super) puts: Vec<PendingPut>,
    pub(super) transitions: Vec<PendingTransition>,
}

impl PutCombiner {
    /// Stop the writer and settling threads once everything queued is written and
    /// answered, and wait for them. Blocking.
    pub(super) fn stop(&self) {
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

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue, the IO token and the thread handles hold no invariant a panic could break.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A message to the group committer.
#[derive(Debug)]
pub(super) enum CommitMsg {
    /// Flush this database, then answer. The committer holds the database only while it
    /// flushes, so dropping every store handle closes it. With a mark, the flush is left
    /// out when the [watermark](super::watermark) is durable up to it by then.
    Commit(
        oneshot::Sender<Result<(), String>>,
        (sled::Db, Arc<ketenpost_transport::durable::LogSync>),
        Option<u64>,
    ),
    /// Flush and stop, releasing the committer's handle on the database.
    Close,
}

impl Store {
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
        self.begin_put(a, meta, trail, audit)?.wait().map(|_| ())
    }

    /// [`Store::put_message`] without waiting: the body is appended to the spool and the
    /// rest queued for the writer thread's next combined transaction. The ticket says
    /// when it landed. (The server appends a batch's bodies together and writes each
    /// with its answer clock: [`Store::append_bodies`], [`Store::begin_put_at`].)
    pub fn begin_put(
        &self,
        a: &Authorised,
        meta: &MessageMeta,
        trail: &Arc<AuditTrail>,
        audit: Vec<AuditEntry>,
    ) -> Result<PutTicket, StoreError> {
        // One place for each body given.
        let body_at = self.append_bodies(&[a])?.pop().ok_or(StoreError::Corrupt {
            what: "spool",
            reason: "an append gave no place for its body".into(),
        })?;
        self.begin_put_at(body_at, a, meta, trail, audit, None, None)
    }

    /// Append the bodies of authorised messages to the spool together, with one write
    /// ([`Spool::append_all`]): where each is, in order, for [`Store::begin_put_at`]. A
    /// body not handed to it is referenced by nothing; [`Store::forget_body`] deletes it.
    pub fn append_bodies(&self, authorised: &[&Authorised]) -> Result<Vec<BodyAt>, StoreError> {
        self.poison.check()?;
        let encoded: Vec<([u8; 16], Vec<u8>)> = authorised
            .iter()
            .map(|a| {
                (
                    a.header().id.0.into_bytes(),
                    a.verified().envelope().encode(),
                )
            })
            .collect();
        let bodies: Vec<(&[u8; 16], &[u8])> =
            encoded.iter().map(|(id, b)| (id, b.as_slice())).collect();
        Ok(self.spool.append_all(&bodies)?)
    }

    /// Delete a body [`Store::append_bodies`] appended for a message that is not written
    /// after all.
    pub fn forget_body(&self, a: &Authorised, body_at: &BodyAt) {
        if let Err(e) = self.spool.delete(body_at, &a.header().id.0.into_bytes()) {
            tracing::error!(cause = %e, "cannot delete the body of a message not accepted");
        }
    }

    /// [`Store::begin_put`] of a message whose body [`Store::append_bodies`] appended at
    /// `body_at`. When it fails the body is deleted.
    #[allow(clippy::too_many_arguments)]
    pub fn begin_put_at(
        &self,
        body_at: BodyAt,
        a: &Authorised,
        meta: &MessageMeta,
        trail: &Arc<AuditTrail>,
        audit: Vec<AuditEntry>,
        clock: Option<&AnswerClock>,
        answer: Option<PendingAnswer>,
    ) -> Result<PutTicket, StoreError> {
        let id = *meta.id.0.as_bytes();
        let now = meta.accepted_at;
        let mut meta = meta.clone();
        let seqs = self.poison.check().and_then(|()| {
            for r in &meta.recipients {
                meta.queue_seqs.insert(r.clone(), self.db.generate_id()?);
            }
            Ok(())
        });
        if let Err(e) = seqs {
            self.forget_body(a, &body_at);
            return Err(e);
        }
        // Appended before; the writer syncs the spool before it writes the metadata that
        // refers to it (everything queued was appended before the writer took it), so the
        // metadata is never on disk without its body.
        meta.body_at = Some(body_at);
        let (done, landed) = oneshot::channel();
        let queue = meta
            .queue_seqs
            .iter()
            .map(|(r, seq)| (queue::block_key(r, *seq), *seq))
            .collect();
        let pending = PendingPut {
            answer,
            id,
            body_at,
            meta: meta.to_bytes(),
            held: Arc::new(meta),
            clock: clock.map(json),
            queue,
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
        let wake = {
            let mut queue = lock(&self.puts.queue);
            if queue.closing {
                drop(queue);
                forget_bodies(&self.spool, [&pending]);
                return Err(StoreError::Closed);
            }
            queue.puts.push(pending);
            queue.wake_writer()
        };
        if wake {
            self.puts.wake.notify_one();
        }
        Ok(PutTicket(landed))
    }

    /// The writer thread: per round of what is queued, the spool's sync for its bodies, one
    /// transaction of message writes and one of decisions (each per trail; a broker has
    /// one), then sled's flush of both into its log, until the store closes and the queue
    /// is empty.
    ///
    /// The log's sync and the answers ([`Store::settle`]) go to the settling thread, which
    /// does them while the writer goes on with the next round, when there is a next round
    /// or the settling thread is still busy. Otherwise the writer settles the round itself:
    /// at a low rate a round is one message, and handing it to another thread would cost a
    /// wake-up and a context switch and win nothing.
    pub(super) fn write_loop(self, settling: &std::sync::mpsc::Sender<Settling>) {
        while let Some(round) = next_round(&self.puts) {
            let Some(round) = sync_bodies(round, &self.spool, &self.poison, &self.commit_stats)
            else {
                continue;
            };
            // Not during a group committer's flush.
            let io = lock(&self.puts.io);
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
            let Some(round) = self.write_out(puts, decided) else {
                continue;
            };
            drop(io);
            let busy = &self.puts.settling;
            let settle_here = |round: Settling| {
                self.commit_stats
                    .record_settled(usize::from(round.flushed.is_some()), true);
                self.settle(vec![round]);
            };
            // The settling thread answers rounds in order: the writer settles one itself
            // only when every round before it is answered.
            if busy.load(std::sync::atomic::Ordering::Acquire) == 0 && queue_empty(&self.puts) {
                settle_here(round);
                continue;
            }
            busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            // The settling thread ends only after this one: should it be gone anyway, the
            // round is settled here.
            if let Err(back) = settling.send(round) {
                busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                settle_here(back.0);
            }
        }
    }

    /// sled's flush of a round (if anything in it needs to be durable): its transactions
    /// are then in the log file, not yet durable. `None` when the flush failed: the store
    /// is poisoned and the round answered.
    fn write_out(
        &self,
        puts: Vec<(Vec<PendingPut>, Written)>,
        decided: Vec<(PendingTransition, Result<Option<Applied>, StoreError>)>,
    ) -> Option<Settling> {
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
        hit_round("applied", written, answers, &decided);
        let mut flushed = None;
        if must_flush {
            let started = std::time::Instant::now();
            let covered = self.watermark.covered();
            if let Err(e) = self.log.write(&self.db) {
                self.poison.set(&e);
                fail_round(puts, decided, &e);
                return None;
            }
            self.watermark.written_up_to(covered);
            flushed = Some(Flushed { covered, started });
            hit_round("written", written, answers, &decided);
        }
        Some(Settling {
            puts,
            decided,
            flushed,
            written,
            answers,
        })
    }

    /// The settling thread: the rounds the writer flushed into sled's log, made durable
    /// with one `fdatasync` for all that wait, then answered in order, until the writer
    /// stops.
    pub(super) fn settle_loop(self, settling: &std::sync::mpsc::Receiver<Settling>) {
        while let Ok(first) = settling.recv() {
            let mut rounds = vec![first];
            while let Ok(more) = settling.try_recv() {
                rounds.push(more);
            }
            let n = rounds.len();
            let flushed = rounds.iter().filter(|r| r.flushed.is_some()).count();
            self.commit_stats.record_settled(flushed, false);
            self.settle(rounds);
            // Only now may the writer settle a round itself: those before it are answered.
            self.puts
                .settling
                .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Make rounds durable and answer them: sync the log once (if any of them needs to be
    /// durable), then, round by round, tell every message write its outcome and finish
    /// every decision (destroy the bodies it released) before telling it.
    pub(super) fn settle(&self, mut rounds: Vec<Settling>) {
        let flushed = rounds
            .iter()
            .filter_map(|r| r.flushed)
            .reduce(|a, b| Flushed {
                covered: a.covered.max(b.covered),
                started: a.started.min(b.started),
            });
        if let Some(Flushed { covered, started }) = flushed {
            // Once the store is poisoned no sync proves anything: a failed fsync may have
            // dropped pages that a later one then reports as synced.
            let synced = self
                .poison
                .check()
                .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))
                .and_then(|()| self.log.sync());
            if let Err(e) = synced {
                // The transactions are in sled and may reach the disk later: their bodies
                // stay. Everyone waiting for durability hears an error; the store is
                // poisoned (the kernel may have dropped the pages) and the broker stops.
                self.poison.set(&e);
                let (failed, rest): (Vec<_>, Vec<_>) =
                    rounds.into_iter().partition(|r| r.flushed.is_some());
                for r in failed {
                    fail_round(r.puts, r.decided, &e);
                }
                rounds = rest;
            } else {
                self.watermark.durable_up_to(covered);
                let size = rounds
                    .iter()
                    .filter(|r| r.flushed.is_some())
                    .map(|r| r.puts.iter().map(|(b, _)| b.len()).sum::<usize>() + r.decided.len())
                    .sum();
                self.commit_stats.record(size, started.elapsed());
                self.flushes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for r in rounds {
            self.answer(r);
        }
    }

    /// Answer a round that is durable (or needed not be).
    fn answer(&self, round: Settling) {
        let Settling {
            puts,
            decided,
            flushed,
            written,
            answers,
        } = round;
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
            // A decision that released bodies made the round flush; one that did not and
            // asked for no durability is not durable yet, and has nothing to finish.
            if let (true, Ok(Some(applied))) = (flushed.is_some(), &r) {
                self.finish(t.op, applied);
            }
            let _ = t.done.send(r);
        }
    }

    /// Decide, for each message of a batch, everything its transaction will write: whether
    /// it is a duplicate, its audit records (chained after `chain`'s head, serialised and
    /// hashed), and for an answer the answered message's clock. Reads only; the caller
    /// holds the chain lock, and the writer thread is the only writer of new `meta` keys.
    pub(super) fn prepare_puts(
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
            for entry in &p.audit {
                chain
                    .stage(&mut cursor, entry.clone(), p.now)
                    .map_err(audit_failed)?;
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
                        chain
                            .stage(&mut cursor, entry, p.now)
                            .map_err(audit_failed)?;
                    }
                    if let Some(w) = &write {
                        clocks.insert(key, w.clone());
                    }
                    Some(AnsweredClock { key, read, write })
                }
            };
            out.push(Some(Prepared { answer, landed }));
        }
        Ok((out, cursor))
    }

    /// Apply queued message writes in one transaction (not yet durable: the writer flushes
    /// the round, [`Store::settle`]); per message, what landed, or `None` for a duplicate. Everything is decided before the transaction ([`Store::prepare_puts`]):
    /// while a sled transaction runs, every reader waits (the checks of the next
    /// submissions among them), so the transaction itself only writes.
    pub(super) fn apply_puts(&self, batch: &[PendingPut], trail: &AuditTrail) -> Written {
        let chain = trail.lock_chain();
        // Until the cache holds what the transaction wrote.
        let _writing = self.meta_cache.writing();
        let running = self.watermark.begin();
        // Before the transaction can be seen: a fetch that reads these messages waits for
        // this number to be durable.
        self.watermark
            .note_puts(batch.iter().map(|p| p.id), running.number());
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let (prepared, mut cursor) = match self.prepare_puts(batch, &chain) {
                Ok(prepared) => prepared,
                Err(e) => break Err(e),
            };
            // Packed before the transaction, which then only writes.
            cursor.pack();
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
                            *held.entry(p.body_at.segment).or_insert(0) += 1;
                        }
                        for (segment, n) in held {
                            count_bodies(segments, segment, n)?;
                        }
                        // The batch's audit records: a few to an insert.
                        cursor.write(records)?;
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
        self.meta_cache.committed(
            batch
                .iter()
                .zip(&prepared)
                .filter(|(_, prep)| prep.is_some())
                .map(|(p, _)| (p.id, Some(p.held.clone()))),
        );
        chain.advance(cursor);
        Ok(prepared.into_iter().map(|p| p.map(|p| p.landed)).collect())
    }
}
