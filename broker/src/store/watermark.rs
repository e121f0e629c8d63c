//! The durability watermark: which of the store's transactions a flush has made durable,
//! so that a reader can tell whether what it read may be handed out without a flush of
//! its own.
//!
//! Every transaction that writes what a delivery reads (message writes and decisions:
//! metadata, queue entries, notices) takes a number before it starts ([`Watermark::begin`])
//! and gives it back when it ended, committed or not (dropping its [`Running`]). A round
//! of the writer's that holds only decisions queued as not needing durability (the
//! record of a first fetch) takes none: what they write may be read before it is
//! durable. A flush reads,
//! before it starts, the highest number below which every transaction has ended
//! ([`Watermark::covered`]); once it succeeded, everything up to that number is durable
//! ([`Watermark::durable_up_to`]). A reader reads [`Watermark::started`] *after* its read:
//! every transaction whose writes it saw had taken its number before, so once the durable
//! mark reaches that value, all it read is on disk.
//!
//! A fetch waits for this instead of queueing a flush of its own
//! ([`super::Store::commit_covering`]): the message it delivers was made durable by the
//! writer's flush that answered its sender, almost always before the recipient was woken.
//!
//! A fetch that hands out messages alone need not wait for everything it may have seen,
//! only for the transactions that wrote those messages: only a message write makes a
//! message deliverable (a decision only takes deliverability away, or writes what the
//! delivery does not depend on: the fetched flag, other recipients' receipts), and a
//! message whose write is durable survives a crash whatever a later transaction did to
//! its queue block. So every message write notes its messages with its number *before*
//! its transaction can be seen ([`Watermark::note_puts`]); a flush forgets the notes it
//! made durable; and a fetch reads, after its read, the highest number noted for the
//! messages it delivers ([`Watermark::put_mark`]), none when all are durable. The writer
//! is usually busy with the next round when a recipient fetches; without this, two
//! fetches in three at 1,000 msg/s waited for that round's flush (about 1.2 ms each).
//! Notices keep the whole mark ([`Watermark::started`]).
//!
//! The writer flushes a round into sled's log and its settling thread syncs the log
//! while the writer goes on; the flush's covered number is noted as *written*
//! ([`Watermark::written_up_to`]) until the sync makes it durable. A group commit that
//! finds what it needs written waits for that sync ([`Watermark::wait_durable`]) instead
//! of flushing again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Numbers {
    /// The last number handed out.
    started: u64,
    /// Numbers handed out whose transactions have not ended.
    running: BTreeSet<u64>,
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Watermark {
    numbers: Mutex<Numbers>,
    durable: AtomicU64,
    /// Up to here sled has flushed into its log; durable after the sync that follows.
    written: AtomicU64,
    /// Told when `durable` moves (held only to wait and to notify).
    moved: (Mutex<()>, Condvar),
    /// Messages whose write may not be durable yet: id → its transaction's number.
    puts: Mutex<HashMap<[u8; 16], u64>>,
}

/// A transaction's number; ends it when dropped, so that no early return or error path
/// leaves it running (which would hold the watermark back for good).
#[derive(Debug)]
#[must_use = "the number is given back when this is dropped"]
pub(super) struct Running<'a> {
    mark: &'a Watermark,
    n: u64,
}

impl Running<'_> {
    /// The transaction's number.
    pub(super) fn number(&self) -> u64 {
        self.n
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        super::lock(&self.mark.numbers).running.remove(&self.n);
    }
}

impl Watermark {
    /// A number for a transaction about to start.
    pub(super) fn begin(&self) -> Running<'_> {
        let mut numbers = super::lock(&self.numbers);
        numbers.started += 1;
        let n = numbers.started;
        numbers.running.insert(n);
        Running { mark: self, n }
    }

    /// The last number handed out: read it after a read, and everything the read saw is
    /// durable once [`Watermark::durable`] reaches it.
    pub(super) fn started(&self) -> u64 {
        super::lock(&self.numbers).started
    }

    /// The highest number at and below which every transaction has ended: what a flush
    /// that starts now makes durable.
    pub(super) fn covered(&self) -> u64 {
        let numbers = super::lock(&self.numbers);
        match numbers.running.first() {
            Some(first) => first - 1,
            None => numbers.started,
        }
    }

    /// A flush that started when [`Watermark::covered`] said `n` succeeded.
    pub(super) fn durable_up_to(&self, n: u64) {
        self.durable.fetch_max(n, Ordering::SeqCst);
        let durable = self.durable();
        super::lock(&self.puts).retain(|_, noted| *noted > durable);
        let _held = super::lock(&self.moved.0);
        self.moved.1.notify_all();
    }

    /// A flush that started when [`Watermark::covered`] said `n` wrote into sled's log;
    /// the sync that follows will make it durable.
    pub(super) fn written_up_to(&self, n: u64) {
        self.written.fetch_max(n, Ordering::SeqCst);
    }

    /// Up to here a flush wrote into sled's log (durable once its sync succeeds).
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Wait until everything up to `n` is durable, at most `limit`; whether it is. Returns
    /// early, `false`, when `stop` says so (a poisoned store).
    pub(super) fn wait_durable(&self, n: u64, limit: Duration, stop: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut held = super::lock(&self.moved.0);
        loop {
            if self.durable() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || stop() {
                return false;
            }
            // Bounded, so that a poisoned store (which tells no one here) is seen soon.
            let slice = (deadline - now).min(Duration::from_millis(10));
            held = self
                .moved
                .1
                .wait_timeout(held, slice)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The messages `ids` are written by the transaction numbered `n`: called before that
    /// transaction can be seen (see the [module docs](self)).
    pub(super) fn note_puts(&self, ids: impl IntoIterator<Item = [u8; 16]>, n: u64) {
        super::lock(&self.puts).extend(ids.into_iter().map(|id| (id, n)));
    }

    /// Read after a read that saw the messages `ids`: the number up to which everything
    /// must be durable before they go out (0 when their writes are durable).
    pub(super) fn put_mark<'a>(&self, ids: impl IntoIterator<Item = &'a [u8; 16]>) -> u64 {
        let puts = super::lock(&self.puts);
        ids.into_iter()
            .filter_map(|id| puts.get(id).copied())
            .max()
            .unwrap_or(0)
    }

    /// Everything up to this number is durable.
    pub(super) fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_for_durability_ends_with_the_sync_or_at_its_limit() {
        let mark = std::sync::Arc::new(Watermark::default());
        let n = {
            let t = mark.begin();
            t.number()
        };
        let covered = mark.covered();
        assert_eq!(covered, n);
        mark.written_up_to(covered);
        assert_eq!(mark.written(), n);
        // Nobody syncs: the wait gives up at its limit, or at once when told to stop.
        assert!(!mark.wait_durable(n, Duration::from_millis(30), || false));
        assert!(!mark.wait_durable(n, Duration::from_secs(60), || true));
        let syncer = {
            let mark = mark.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mark.durable_up_to(covered);
            })
        };
        assert!(mark.wait_durable(n, Duration::from_secs(60), || false));
        syncer.join().expect("the stand-in syncer ran");
        assert!(mark.wait_durable(n, Duration::ZERO, || true));
    }

    #[test]
    fn a_flush_covers_only_what_ended_before_it_started() {
        let w = Watermark::default();
        let one = w.begin();
        let two = w.begin();
        assert_eq!(w.started(), 2);
        // The first is still running: a flush now covers nothing.
        drop(two);
        assert_eq!(w.covered(), 0);
        drop(one);
        assert_eq!(w.covered(), 2);
        w.durable_up_to(2);
        assert_eq!(w.durable(), 2);
        // A later, older flush never lowers it.
        w.durable_up_to(1);
        assert_eq!(w.durable(), 2);
        let _three = w.begin();
        assert_eq!(w.covered(), 2);
        assert_eq!(w.started(), 3);
    }

    #[test]
    fn a_message_needs_only_its_own_write_durable() {
        let w = Watermark::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let first = w.begin();
        w.note_puts([a], first.number());
        let second = w.begin();
        w.note_puts([b], second.number());
        assert_eq!(w.put_mark([&a]), 1);
        assert_eq!(w.put_mark([&a, &b]), 2);
        // Never noted (written before this process, or durable and forgotten): nothing
        // to wait for.
        assert_eq!(w.put_mark([&[3u8; 16]]), 0);
        drop(first);
        // A flush covering the first forgets its note; the second, still running, stays.
        w.durable_up_to(w.covered());
        assert_eq!(w.put_mark([&a]), 0);
        assert_eq!(w.put_mark([&a, &b]), 2);
        assert!(w.durable() < w.put_mark([&b]));
        drop(second);
        w.durable_up_to(w.covered());
        assert_eq!(w.put_mark([&b]), 0);
    }
}
