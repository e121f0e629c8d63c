//! Submissions: checks 1-7 (the core), the durable write with its audit records and
//! answer clock (the store's writer thread), the answer bookkeeping, the answer.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use chrono::{DateTime, Utc};
use ketenpost_core::checks::{self, Authorised, Submitted};
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::message::{BodyAt, MessageMeta};
use ketenpost_schemas::control::{DeliveryReceipt, SignedRecord};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Rejection, Response};
use tracing::{debug, error, info};

use super::state::{storage_error, task_failed, Shared};
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::store::{PendingAnswer, PutTicket, StoreError, ViewDigest};
use crate::verify;

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
    // thread of the check stage, with the checks of the submissions that arrived at the
    // same time; the store's writer thread writes and flushes the message with the rest
    // of its batch, and the submission waits for that here without holding a thread.
    // The registry lock stays held until the message landed, so no consent withdrawal or
    // case change falls between its checks and its write.
    let (reply, begun) = tokio::sync::oneshot::channel();
    let job = Job::Submission(Submission {
        bytes,
        oin: oin.clone(),
        now,
        reply,
    });
    if shared.checks.send(job).is_err() {
        return task_failed(&"the check stage has stopped");
    }
    let (authorised, bytes, ticket, queued) = match begun.await {
        Ok(Ok(begun)) => begun,
        Ok(Err(response)) => return response,
        Err(_) => return task_failed(&"a submission's checks ended without an answer"),
    };
    // The rest runs in its own task, so that it completes (the answer bookkeeping, the
    // recipients' wake-up) even when the connection goes.
    let (s, o) = (shared.clone(), oin.clone());
    let finish = tokio::spawn(async move {
        let landed = match ticket.landed().await {
            Ok(landed) => landed,
            Err(e) => {
                let (response, entry) = put_refusal(e, &authorised, &o, &bytes);
                if let Some(entry) = entry {
                    s.audit_async(entry).await;
                }
                return Err(response);
            }
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

/// Work for the check stage: a submission or a delivery receipt.
pub(super) enum Job {
    /// Checks 1-7 of a submission and the start of its write.
    Submission(Submission),
    /// The checks of a delivery receipt and the digest of the receipting party's view.
    Receipt(Receipt),
}

/// The check stage takes no work: it has stopped, or not started yet.
#[derive(Debug)]
pub(super) struct Stopped;

/// A submission for the check stage, and where its outcome goes.
pub(super) struct Submission {
    bytes: Vec<u8>,
    oin: Oin,
    now: DateTime<Utc>,
    reply: tokio::sync::oneshot::Sender<Begun>,
}

/// A submission checked and its write begun (with the instant it was queued), or its
/// answer.
type Begun = Result<(Authorised, Vec<u8>, PutTicket, std::time::Instant), Response>;

/// A delivery receipt for the check stage (`records::receipt`), and where its outcome
/// goes.
pub(super) struct Receipt {
    /// The record as it came.
    pub(super) rec: SignedRecord,
    /// The connection's party.
    pub(super) oin: Oin,
    /// The instant its checks run at.
    pub(super) now: DateTime<Utc>,
    /// Where the outcome goes.
    pub(super) reply: tokio::sync::oneshot::Sender<ReceiptChecked>,
}

/// A receipt that passed its checks, with the digest of the receipting party's view of
/// the message (`Store::view_digest_upto`, read once the checks passed: from the
/// metadata, or for metadata from before views were kept with it, from a body of at most
/// [`DIGEST_IN_STAGE`] bytes) and the record itself; or why it was refused.
pub(super) type ReceiptChecked = Result<
    (
        DeliveryReceipt,
        Result<ViewDigest, StoreError>,
        SignedRecord,
    ),
    Rejection,
>;

/// Longest body whose view digest the check stage reads itself, for metadata without the
/// views (written by an older version). A longer one (up to
/// `limits.max_envelope_bytes`) is read by the receipt's own task on the blocking pool,
/// so that no check thread, and no submission waiting for one, waits on a long read.
pub(super) const DIGEST_IN_STAGE: u32 = 256 * 1024;

/// The check stage: `limits.check_threads` threads that take the waiting submissions and
/// delivery receipts (up to `limits.check_batch`) together, run the checks before each
/// one's signature (check 1 of a submission, `checks::claim_receipt` of a receipt), verify
/// the signatures of all in one batch (`verify::verify_many`), then finish each one's
/// checks with its verdicts: a submission's write begins, a receipt's view digest is read.
/// Under load what arrives while a thread works is the next batch; a lone submission or
/// receipt is a batch of one, verified at once.
#[derive(Default)]
pub(super) struct CheckStage {
    queue: Arc<JobQueue<Job>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The jobs (submissions and receipts) waiting for a check thread. A job wakes an idle
/// thread only when no thread is checking a batch and none is on its way already, or when
/// [`WAKE_ANOTHER_AT`] jobs wait: otherwise the thread that comes back for more (or the
/// one on its way) takes them as its next batch, verified together. When each job woke a
/// thread of its own, a batch at saturation was one or two jobs (a fifth of the signatures
/// verified alone, below `verify::MIN_BATCH`), and every job cost a wake-up, a context
/// switch and a system call. (Before that, the stage shared one `mpsc` receiver under a
/// mutex: a submission woke the thread blocked in `recv`, and, once that thread let go of
/// the mutex, the next one, only for it to block in `recv` again.)
struct JobQueue<T> {
    state: Mutex<Waiting<T>>,
    ready: Condvar,
}

impl<T> Default for JobQueue<T> {
    fn default() -> Self {
        JobQueue {
            state: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                open: false,
                idle: 0,
                waking: false,
                out: 0,
            }),
            ready: Condvar::new(),
        }
    }
}

/// What [`JobQueue`] guards: the jobs in order, whether it takes more (closed until the
/// stage starts, and again once it stops), and its threads' wake-ups.
struct Waiting<T> {
    jobs: VecDeque<T>,
    open: bool,
    /// Threads waiting for jobs (counted under the lock, so each is in the condition
    /// variable's wait, or woken and not yet holding the lock again).
    idle: usize,
    /// A thread was woken and has not yet taken the lock again: it will take what is
    /// queued, so a new job need not wake another.
    waking: bool,
    /// Batches taken and still being checked (their threads come back for more).
    out: usize,
}

/// Jobs waiting that wake another thread while a batch is being checked: enough for a
/// batch verification of their own (`verify::MIN_BATCH`). Fewer wait for the next thread
/// free, at most one batch's checks (about 0.1-2 ms).
pub(super) const WAKE_ANOTHER_AT: usize = verify::MIN_BATCH;

impl<T> Waiting<T> {
    /// Whether a thread must be woken for the queued jobs: there are some, a thread
    /// waits, none is on its way already, and no batch is being checked or enough jobs
    /// wait for another. Marks one on its way.
    fn wake_one(&mut self) -> bool {
        let wake = !self.jobs.is_empty()
            && self.idle > 0
            && !self.waking
            && (self.out == 0 || self.jobs.len() >= WAKE_ANOTHER_AT);
        self.waking |= wake;
        wake
    }
}

impl<T> JobQueue<T> {
    /// Queue a job and wake an idle thread; the job back if the stage is not running.
    fn push(&self, job: T) -> Result<(), T> {
        let mut w = lock(&self.state);
        if !w.open {
            return Err(job);
        }
        w.jobs.push_back(job);
        let wake = w.wake_one();
        drop(w);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The waiting jobs, at most `max`, waiting for one if there are none; `None` once the
    /// queue is closed and empty (what was queued before it closed is taken). `returning`:
    /// the caller has finished the batch it took last.
    fn take(&self, max: usize, returning: bool) -> Option<Vec<T>> {
        let mut w = lock(&self.state);
        if returning {
            w.out = w.out.saturating_sub(1);
        }
        while w.jobs.is_empty() {
            if !w.open {
                return None;
            }
            w.idle += 1;
            w = self
                .ready
                .wait(w)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.idle -= 1;
            // Woken (or spuriously awake): this thread takes what is queued now, so the
            // next job may wake another.
            w.waking = false;
        }
        let n = w.jobs.len().min(max);
        let jobs: Vec<T> = w.jobs.drain(..n).collect();
        w.out += 1;
        // More than a batch waits: another idle thread may take the rest.
        let wake = w.wake_one();
        drop(w);
        if wake {
            self.ready.notify_one();
        }
        Some(jobs)
    }

    fn set_open(&self, open: bool) {
        lock(&self.state).open = open;
        self.ready.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CheckStage {
    /// Start the threads; submissions are refused until this ran.
    pub(super) fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
        let limits = &shared.config.limits;
        let (count, batch) = (limits.check_threads, limits.check_batch);
        // The keys signatures failed under lately, shared by the threads.
        let suspects = Arc::new(verify::Suspects::new(verify::SUSPECT_FOR));
        // Open before the threads start: a thread that finds the queue closed and empty
        // ends.
        shared.checks.queue.set_open(true);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            // A weak handle: the stage lives in `Shared`, so a strong one would keep both
            // alive for ever should the broker be dropped without `stop`.
            let (s, queue) = (Arc::downgrade(shared), shared.checks.queue.clone());
            let memory = verify::KeyMemory::new(suspects.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ketenpost-check-{i}"))
                .spawn(move || check_loop(&s, &queue, batch, memory));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Closing the queue ends the threads started so far, once they
                    // took what was queued.
                    *lock(&shared.checks.threads) = threads;
                    shared.checks.stop();
                    return Err(e);
                }
            }
        }
        *lock(&shared.checks.threads) = threads;
        Ok(())
    }

    /// Queue `job` for a check thread; an error once the stage has stopped (or before it
    /// started), the job dropped (its reply channel closes).
    pub(super) fn send(&self, job: Job) -> Result<(), Stopped> {
        self.queue.push(job).map_err(|_| Stopped)
    }

    /// Take no more submissions and wait for the threads to finish what they hold and
    /// what was queued.
    pub(super) fn stop(&self) {
        self.queue.set_open(false);
        for t in std::mem::take(&mut *lock(&self.threads)) {
            if t.join().is_err() {
                error!("a check thread panicked");
            }
        }
    }
}

/// One check thread: `memory` holds whether a batch may vouch for a key, and the keys
/// signatures failed under lately (shared with the other threads).
fn check_loop(
    shared: &Weak<Shared>,
    queue: &JobQueue<Job>,
    batch: usize,
    mut memory: verify::KeyMemory,
) {
    let mut returning = false;
    while let Some(jobs) = queue.take(batch, returning) {
        returning = true;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // A panic answers the batch's remaining submissions and receipts with a storage
        // error (their reply channels close) and leaves the thread serving.
        let run = std::panic::AssertUnwindSafe(|| check_batch(&shared, jobs, &mut memory));
        if std::panic::catch_unwind(run).is_err() {
            error!(
                "a batch of checks panicked; its unanswered submissions and receipts were \
                 answered with a storage error"
            );
        }
    }
}

/// The checks of a batch of submissions and receipts, and the start of the submissions'
/// writes; blocking.
fn check_batch(shared: &Arc<Shared>, jobs: Vec<Job>, memory: &mut verify::KeyMemory) {
    // One set of documents for the whole decision, whatever a reload does meanwhile.
    let docs = shared.docs();
    let env = docs.env(&shared.limits, shared.max_clock_skew(), &keys::Strict);
    let mut claimed = Vec::with_capacity(jobs.len());
    let mut receipts = Vec::new();
    for job in jobs {
        match job {
            Job::Submission(job) => {
                let sub = Submitted {
                    transport: &job.oin,
                    bytes: &job.bytes,
                };
                match checks::claim(sub, &env, job.now) {
                    Ok(claim) => claimed.push((job, claim)),
                    Err(rejection) => {
                        let refused = refuse(&rejection, None, shared, &job.oin, &job.bytes);
                        let _ = job.reply.send(Err(refused));
                    }
                }
            }
            Job::Receipt(job) => match checks::claim_receipt(&job.oin, &job.rec, env, job.now) {
                Ok(claim) => receipts.push((job, claim)),
                Err(rejection) => {
                    let _ = job.reply.send(Err(rejection));
                }
            },
        }
    }
    // Every signature of the batch at once: the submissions' headers (check 2), then the
    // receipts'.
    let signed: Vec<_> = claimed
        .iter()
        .map(|(_, claim)| claim.signed())
        .chain(receipts.iter().map(|(_, claim)| claim.signed()))
        .collect();
    let signatures = signed.len();
    let verdicts = verify_together(&shared.counters, signed, memory);
    // One for each, in the order given: the submissions' then the receipts'.
    debug_assert_eq!(verdicts.len(), signatures);
    let mut verdicts = verdicts.into_iter();
    let live = shared.live();
    let mut authorised = Vec::with_capacity(claimed.len());
    for ((job, claim), verdicts) in claimed.into_iter().zip(&mut verdicts) {
        let env = docs.env(&shared.limits, shared.max_clock_skew(), &verdicts);
        match checks::check_claim(claim, env, &live, job.now) {
            Ok(a) => authorised.push((job, a)),
            Err(refusal) => {
                let refused = refuse(
                    &refusal.rejection,
                    refusal.verified.as_deref(),
                    shared,
                    &job.oin,
                    &job.bytes,
                );
                let _ = job.reply.send(Err(refused));
            }
        }
    }
    // The bodies of the batch's authorised submissions in one write to the spool.
    let all: Vec<&Authorised> = authorised.iter().map(|(_, a)| a).collect();
    match shared.store.append_bodies(&all) {
        Ok(appended) => {
            for ((job, a), at) in authorised.into_iter().zip(appended) {
                let queued = std::time::Instant::now();
                let begun = stage_write(&a, at, &job.bytes, shared, &docs, &job.oin, job.now)
                    .map(|ticket| (a, job.bytes, ticket, queued));
                let _ = job.reply.send(begun);
            }
        }
        Err(e) => {
            // Nothing of them is written: each gets the storage error.
            let failed = storage_error(e);
            for (job, _) in authorised {
                let _ = job.reply.send(Err(failed.clone()));
            }
        }
    }
    for ((job, claim), verdicts) in receipts.into_iter().zip(verdicts) {
        let env = docs.env(&shared.limits, shared.max_clock_skew(), &verdicts);
        let checked = checks::check_receipt_claim(claim, &job.oin, env).map(|r| {
            // The body never changes, so the digest of the recipient's view is read
            // before the receipt's transaction; everything that does change is read
            // inside it.
            let digest = shared
                .store
                .view_digest_upto(&r.message_id, &job.oin, DIGEST_IN_STAGE);
            (r, digest, job.rec)
        });
        let _ = job.reply.send(checked);
    }
}

/// Verify `signed` (the framed bytes, the signature, the signer's keys valid now, the
/// current one first) together: each against its signer's current key in one batch
/// (`verify::verify_many`), and those that fail it against the signer's previous keys,
/// one at a time. One [`verify::Verdicts`] for each, in order: what its check runs with.
/// (One item per valid key would put a failing item in every batch during a key
/// rotation's overlap, and a failing batch verifies all of its items again.)
fn verify_together(
    counters: &crate::metrics::Counters,
    signed: Vec<(Vec<u8>, keys::Signature, &[keys::VerifyingKey])>,
    memory: &mut verify::KeyMemory,
) -> Vec<verify::Verdicts> {
    let mut batch = Vec::with_capacity(signed.len());
    // For each, its signer's previous keys; `None` when it has no key at all.
    let mut previous = Vec::with_capacity(signed.len());
    for (framed, signature, keys) in signed {
        match keys.split_first() {
            Some((current, before)) => {
                previous.push(Some(before));
                batch.push(verify::Item {
                    key: *current,
                    message: framed,
                    signature,
                });
            }
            None => previous.push(None),
        }
    }
    let verified = verify::verify_many(&batch, memory);
    counters.signatures_verified(verified.batched, true);
    counters.signatures_verified(verified.alone(), false);
    // Each verified item, with its verdict, goes to its own check's `Verdicts`.
    let mut checked = batch.into_iter().zip(verified.verdicts);
    previous
        .into_iter()
        .map(|before| {
            let mut v = verify::Verdicts::default();
            // Without a key nothing verifies: no verdicts, refused by its check.
            let Some((item, ok)) = before.and_then(|_| checked.next()) else {
                return v;
            };
            if !ok {
                // Signed with a previous key, inside its overlap: those one at a time.
                for key in before.unwrap_or_default() {
                    let ok = key.verify_strict(&item.message, &item.signature).is_ok();
                    counters.signatures_verified(1, false);
                    let other = verify::Item {
                        key: *key,
                        message: item.message.clone(),
                        signature: item.signature,
                    };
                    v.0.push((other, ok));
                }
            }
            v.0.push((item, ok));
            v
        })
        .collect()
}

/// A refused submission: logged, audited, answered.
fn refuse(
    r: &Rejection,
    verified: Option<&ketenpost_schemas::envelope::Header>,
    shared: &Arc<Shared>,
    oin: &Oin,
    bytes: &[u8],
) -> Response {
    info!(code = %r.code, check = r.check, "message rejected");
    shared.audit(rejected_entry(r, oin, bytes, verified));
    Response::Rejected(r.clone())
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

/// Start the store write of an authorised submission, whose body the spool holds at
/// `body_at` ([`crate::store::Store::append_bodies`]), with its audit records, its answer
/// clock and, for an answer, the answered message's clock; blocking (see [`submit`]). The
/// caller holds the registry lock shared.
fn stage_write(
    authorised: &Authorised,
    body_at: BodyAt,
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
        .begin_put_at(
            body_at,
            authorised,
            &meta,
            &shared.audit,
            entries,
            clock.as_ref(),
            answer,
        )
        .map_err(|e| put_failed(e, authorised, shared, oin, bytes))
}

/// A write that did not land, on a check thread: answered, and audited at once when it
/// was a replay.
fn put_failed(
    e: StoreError,
    authorised: &Authorised,
    shared: &Arc<Shared>,
    oin: &Oin,
    bytes: &[u8],
) -> Response {
    let (response, entry) = put_refusal(e, authorised, oin, bytes);
    if let Some(entry) = entry {
        shared.audit(entry);
    }
    response
}

/// The answer to a write that did not land, and the audit record to append for it (a
/// replay: the id was accepted before, found by the write itself).
fn put_refusal(
    e: StoreError,
    authorised: &Authorised,
    oin: &Oin,
    bytes: &[u8],
) -> (Response, Option<AuditEntry>) {
    match e {
        StoreError::Duplicate => {
            let r = Rejection::new(
                RejectCode::Replay,
                format!("message id {} was accepted before", authorised.header().id),
            );
            let entry = rejected_entry(&r, oin, bytes, Some(authorised.header()));
            (Response::Rejected(r), Some(entry))
        }
        e => (storage_error(e), None),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{verify_together, JobQueue, WAKE_ANOTHER_AT};
    use crate::metrics::Counters;
    use crate::verify::KeyMemory;
    use ketenpost_schemas::keys::{self, generate_signing_key, Context, SignatureCheck};
    use ketenpost_schemas::kind::Kind;
    use std::sync::Arc;
    use std::time::Duration;

    /// Headers and receipts verified together, each with its signer's keys valid now:
    /// signed with the current key (the batch's verdict), with a previous one inside its
    /// overlap (verified alone after the current key failed it), with neither (refused),
    /// and a signer without keys (no verdict, so refused). Each check finds exactly the
    /// verdict `verify_strict` gives with any of its keys, below and above the batch size.
    #[test]
    fn each_signature_gets_verify_stricts_verdict_under_current_and_previous_keys() {
        let (current, previous, stranger) = (
            generate_signing_key(),
            generate_signing_key(),
            generate_signing_key(),
        );
        let valid = [current.verifying_key(), previous.verifying_key()];
        for n in [4, 16] {
            let items: Vec<(Vec<u8>, keys::Signature, &[keys::VerifyingKey], bool)> = (0..n)
                .map(|i| {
                    let context = if i % 2 == 0 {
                        Context::Header
                    } else {
                        Context::Control(Kind::DeliveryReceipt)
                    };
                    let framed = keys::framed(context, format!("item {i}").as_bytes());
                    let by = [&current, &previous, &stranger, &current][i % 4];
                    let signature = ed25519_dalek::Signer::sign(by, &framed);
                    let keys: &[keys::VerifyingKey] = if i % 4 == 3 { &[] } else { &valid };
                    (framed, signature, keys, i % 4 < 2)
                })
                .collect();
            let counters = Counters::default();
            let signed = items
                .iter()
                .map(|(f, s, k, _)| (f.clone(), *s, *k))
                .collect();
            let verdicts = verify_together(&counters, signed, &mut KeyMemory::default());
            assert_eq!(verdicts.len(), n);
            for (i, ((framed, signature, keys, want), v)) in items.iter().zip(&verdicts).enumerate()
            {
                let got = keys.iter().any(|k| v.verifies(k, framed, signature));
                assert_eq!(got, *want, "item {i} of {n}");
                let strict = keys
                    .iter()
                    .any(|k| k.verify_strict(framed, signature).is_ok());
                assert_eq!(got, strict, "item {i} of {n}");
            }
            // Every keyed item against the current key, and the ones that failed it
            // against the previous key: three quarters, plus two quarters.
            let (alone, batched) = counters.signatures();
            assert_eq!(alone + batched, (n / 4 * 5) as u64, "{n} items");
        }
    }

    #[test]
    fn a_closed_queue_refuses_and_an_open_one_gives_batches_in_order() {
        let q = JobQueue::<u32>::default();
        assert_eq!(q.push(1), Err(1), "closed until the stage starts");
        assert_eq!(q.take(4, false), None);
        q.set_open(true);
        for n in 0..5 {
            q.push(n).unwrap();
        }
        assert_eq!(q.take(3, false), Some(vec![0, 1, 2]));
        assert_eq!(q.take(3, true), Some(vec![3, 4]));
        // What was queued before the queue closed is still taken; then it ends.
        q.push(5).unwrap();
        q.set_open(false);
        assert_eq!(q.push(6), Err(6));
        assert_eq!(q.take(3, true), Some(vec![5]));
        assert_eq!(q.take(3, true), None);
    }

    /// Whether a thread was woken and has not yet come for the jobs.
    fn waking<T>(q: &JobQueue<T>) -> bool {
        super::lock(&q.state).waking
    }

    /// A lone job wakes a waiting thread; while that thread is on its way, and while a
    /// batch is being checked, further jobs wake nobody until `WAKE_ANOTHER_AT` wait.
    #[test]
    fn a_job_wakes_a_thread_only_when_none_checks_or_enough_wait() {
        let q = Arc::new(JobQueue::<usize>::default());
        q.set_open(true);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let (q, tx) = (q.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut returning = false;
                while let Some(jobs) = q.take(64, returning) {
                    returning = true;
                    tx.send(jobs).unwrap();
                }
            })
        };
        let idle = |n: usize| {
            for _ in 0..2_000 {
                if super::lock(&q.state).idle == n {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("no thread came to wait");
        };
        idle(1);
        // Nothing is being checked: the first job wakes the waiting thread.
        q.push(0).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), vec![0]);
        idle(1);
        assert!(!waking(&q));
        // This thread takes a batch (queued without a wake-up) and checks it: fewer than
        // `WAKE_ANOTHER_AT` jobs wake nobody, that many wake the waiting thread.
        super::lock(&q.state).jobs.push_back(1);
        assert_eq!(q.take(1, false), Some(vec![1]));
        for n in 0..WAKE_ANOTHER_AT - 1 {
            q.push(n).unwrap();
            assert!(
                !waking(&q),
                "woken with {n} waiting while a batch is checked"
            );
        }
        assert!(rx.try_recv().is_err());
        q.push(99).unwrap();
        let taken = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(taken.len(), WAKE_ANOTHER_AT);
        q.set_open(false);
        waiter.join().unwrap();
    }

    #[test]
    fn every_job_is_taken_once_by_threads_waiting_and_all_end_when_closed() {
        const JOBS: u32 = 2_000;
        let q = Arc::new(JobQueue::<u32>::default());
        q.set_open(true);
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut returning = false;
                    while let Some(jobs) = q.take(16, returning) {
                        returning = true;
                        assert!(!jobs.is_empty() && jobs.len() <= 16);
                        for j in jobs {
                            tx.send(Some(j)).unwrap();
                        }
                    }
                    tx.send(None).unwrap();
                })
            })
            .collect();
        for n in 0..JOBS {
            q.push(n).unwrap();
            if n % 100 == 0 {
                std::thread::yield_now();
            }
        }
        let mut seen = vec![false; JOBS as usize];
        for _ in 0..JOBS {
            let j = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a queued job was never taken")
                .expect("a thread ended while jobs were queued");
            assert!(!std::mem::replace(&mut seen[j as usize], true), "{j} twice");
        }
        q.set_open(false);
        for _ in &threads {
            let ended = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a thread kept waiting");
            assert_eq!(ended, None);
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
