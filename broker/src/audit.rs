//! The broker's tamper-evident audit trail: its newest records in the sled database, the
//! older ones in an append-only file ([`archive`]).
//!
//! The records, entries, checkpoints and the chain rule are
//! [`ketenpost_audit`] (pure, shared with the agent and the FG tools); this module
//! stores them: new records in the sled tree [`RECORDS_TREE`] (written in the transaction
//! of the change they record), moved by [`AuditTrail::archive`] into the archive file,
//! checkpoints in [`CHECKPOINTS_TREE`], appends serialised under one mutex around the
//! [`ChainHead`], and [`verify_chain`] over a whole trail.
//!
//! The records one transaction writes are stored a few at a time, as entries of
//! [`RECORDS_TREE`] of up to [`ROUND_BYTES`] each, [rounds](ketenpost_audit::round_records):
//! their JSON joined by newlines, under the [`seq_key`] of the first. A store's round of
//! message writes or decisions inserts one entry for about half a dozen records, and the
//! archiver removes one (each record its own key cost about a fifth of the broker's CPU
//! end to end). Every reader goes through [`Records`], which yields the records one by
//! one, as before.
//!
//! A round of several records is stored **packed** ([`pack_round`]): the byte [`PACKED`],
//! then the round LZ4-compressed (block format, its length in front), when that is
//! shorter. A round's records repeat each other's fields, and each its predecessor's hash,
//! so a round packs to about a quarter to a third: sled writes each node of the tree
//! whole, again and again, while records wait for the archiver, and the audit records were
//! over half the bytes it wrote (BENCHMARKS.md, "Audit rounds packed"). A record's JSON
//! starts with `{`, so a packed value is never mistaken for a plain one, and plain rounds
//! (all that older versions wrote) read as before. Every reader unpacks
//! ([`unpack_round`], [`round_holding`]); the archive file holds the records' JSON as ever.
//!
//! # Durability and concurrency
//! [`AuditTrail::append`] writes into sled but does not flush: the broker group-commits
//! before it answers, so one fsync covers the state change and its audit records.
//! [`AuditTrail::checkpoint`] does flush, because a checkpoint handed to an agent must
//! never cover records a crash could lose. Appends from many threads are serialised by one
//! mutex around the head of the chain, so seqs stay contiguous and every `prev_hash` is
//! right.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use ketenpost_schemas::keys::{self, SigningKey, VerifyingKey};

pub use ketenpost_audit::*;

pub mod archive;
pub use archive::{Archive, Mark, Records, ARCHIVE_FILE, ARCHIVE_TREE};

/// The archive's directory in a broker data directory.
pub fn archive_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("audit")
}

/// Name of the sled tree that holds the records.
pub const RECORDS_TREE: &str = "audit";
/// At most this many bytes of records in one entry of [`RECORDS_TREE`] (a longer record
/// is an entry of its own). sled 0.34 writes a page (a node of up to 17 entries, written
/// whole when it splits or is consolidated) whose serialised size passes a quarter of a
/// log segment (128 KiB) to a file of its own, a "blob", which it creates and unlinks for
/// every such write and never syncs: a power loss could then lose what the log says is
/// durable. 17 entries of 4 KiB stay well below that.
pub const ROUND_BYTES: usize = 4096;
/// The first byte of a packed round ([`pack_round`]); a plain round starts with a
/// record's `{`.
pub const PACKED: u8 = 0x01;
/// A packed round that says it unpacks to more than this is damaged: rounds are at most
/// [`ROUND_BYTES`], or one record.
pub const MAX_UNPACKED: usize = 16 << 20;

/// The value to store for a round (its records' JSON joined by newlines): packed
/// ([`PACKED`], then the LZ4 block with its length in front) when that is shorter and the
/// round holds more than one record, else the round as it is.
pub fn pack_round(round: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if round.len() > MAX_UNPACKED || !round.contains(&b'\n') {
        return Cow::Borrowed(round);
    }
    // The marker, the length (as `decompress_size_prepended` reads it), the block.
    let Ok(len) = u32::try_from(round.len()) else {
        return Cow::Borrowed(round);
    };
    let mut packed = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(round.len())];
    packed[0] = PACKED;
    packed[1..5].copy_from_slice(&len.to_le_bytes());
    match lz4_flex::block::compress_into(round, &mut packed[5..]) {
        Ok(n) if 5 + n < round.len() => {
            packed.truncate(5 + n);
            Cow::Owned(packed)
        }
        _ => Cow::Borrowed(round),
    }
}

/// The records of a stored round (key `first`) as [`round_records`] reads them: a packed
/// round ([`pack_round`]) unpacked, a plain one as it is. A packed round that does not
/// unpack is [`AuditError::Corrupt`].
pub fn unpack_round(first: u64, value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, AuditError> {
    use std::borrow::Cow;
    let Some((&PACKED, packed)) = value.split_first() else {
        return Ok(Cow::Borrowed(value));
    };
    let damaged = |what: &str| AuditError::Corrupt {
        seq: first,
        reason: format!("a packed round of records {what}"),
    };
    let size = packed
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or_else(|| damaged("is cut short"))?;
    if size > MAX_UNPACKED {
        return Err(damaged("says it is longer than any round"));
    }
    let round = lz4_flex::block::decompress_size_prepended(packed)
        .map_err(|_| damaged("does not unpack"))?;
    Ok(Cow::Owned(round))
}

/// Name of the sled tree that holds the signed checkpoints.
pub const CHECKPOINTS_TREE: &str = "audit_checkpoints";

/// The tree `name` of `db` if it exists; never creates it (the read-only paths).
pub fn existing_tree(db: &sled::Db, name: &str) -> Result<Option<sled::Tree>, AuditError> {
    if db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
    {
        db.open_tree(name).map(Some).map_err(storage)
    } else {
        Ok(None)
    }
}

/// A sled failure as an audit error.
pub fn storage(e: sled::Error) -> AuditError {
    AuditError::Storage(e.to_string())
}

/// The audit trail of one broker, over two trees of its sled database and its archive.
pub struct AuditTrail {
    records: sled::Tree,
    checkpoints: sled::Tree,
    archive: Archive,
    signer: SigningKey,
    /// The head of the chain. Invariant: it always describes the last record in
    /// `records`, because it is only updated after a successful write and nothing between
    /// the write and the update can panic.
    head: Mutex<ChainHead>,
}

impl fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // try_lock: formatting must not deadlock inside an append.
        let head = self.head.try_lock().ok().map(|h| (h.seq, h.hash.clone()));
        f.debug_struct("AuditTrail")
            .field("head", &head)
            .field(
                "broker_key",
                &keys::verifying_key_to_text(&self.signer.verifying_key()),
            )
            .finish_non_exhaustive()
    }
}

impl AuditTrail {
    /// Open the trail in `db` (trees [`RECORDS_TREE`] and [`CHECKPOINTS_TREE`]) with its
    /// archive in `archive_dir` ([`Archive::open`]), recovering the head from the last
    /// record. `signer` is the broker's checkpoint key.
    ///
    /// Refuses ([`AuditError::Corrupt`]) to continue a trail whose last record does not
    /// parse or does not hash right, or whose latest checkpoint covers a record that is no
    /// longer there or no longer has the checkpointed hash: extending it would bury the
    /// damage. Run `ketenpost-broker audit verify` to see what is wrong.
    pub fn open(db: &sled::Db, archive_dir: &Path, signer: SigningKey) -> Result<Self, AuditError> {
        let records = db.open_tree(RECORDS_TREE).map_err(storage)?;
        let checkpoints = db.open_tree(CHECKPOINTS_TREE).map_err(storage)?;
        let archive = Archive::open(db, archive_dir)?;
        let mark = archive.mark();
        // Records the archive holds already: a crash came between a move's mark and its
        // removals from sled.
        let mut leftovers = 0u64;
        for item in records.range(..=seq_key(mark.seq)) {
            let (k, v) = item.map_err(storage)?;
            // The archiver moves whole rounds; a round that runs past the mark (none
            // should) stays, and is read from sled beyond the mark.
            let first = key_seq(&k);
            let len = unpack_round(first.unwrap_or(0), &v).map_or(1, |r| round_len(&r));
            if first.is_some_and(|first| first.saturating_add(len - 1) > mark.seq) {
                continue;
            }
            records.remove(k).map_err(storage)?;
            leftovers += 1;
        }
        if leftovers > 0 {
            tracing::info!(
                records = leftovers,
                "audit records archived before a crash removed from the database"
            );
        }
        let head = match records.last().map_err(storage)? {
            Some((k, v)) => {
                let round = unpack_round(key_seq(&k).unwrap_or(0), &v)?;
                ChainHead::recover(Some((&k, &round)))?
            }
            None => match archive.last_line()? {
                Some(line) => ChainHead::recover(Some((&seq_key(mark.seq), &line)))?,
                None => ChainHead::genesis(),
            },
        };
        let trail = AuditTrail {
            records,
            checkpoints,
            archive,
            signer,
            head: Mutex::new(head),
        };
        trail.check_latest_checkpoint()?;
        Ok(trail)
    }

    /// Refuse a trail whose latest checkpoint covers a record that is gone or changed.
    fn check_latest_checkpoint(&self) -> Result<(), AuditError> {
        let head = self.head();
        let checkpoints = &self.checkpoints;
        if let Some((key, value)) = checkpoints.last().map_err(storage)? {
            let cp_seq = key_seq(&key).unwrap_or(0);
            let cp: Checkpoint =
                serde_json::from_slice(&value).map_err(|_| AuditError::Corrupt {
                    seq: cp_seq,
                    reason: "the latest checkpoint does not parse".into(),
                })?;
            if cp.seq > head.seq {
                return Err(AuditError::Corrupt {
                    seq: cp.seq,
                    reason: format!(
                        "the latest checkpoint covers record {} but the trail ends at record {}",
                        cp.seq, head.seq
                    ),
                });
            }
            if cp.seq > 0 {
                let hash = match self.get(cp.seq)? {
                    Some(r) => r.compute_hash()?,
                    None => {
                        return Err(AuditError::Corrupt {
                            seq: cp.seq,
                            reason: "the record of the latest checkpoint is missing".into(),
                        })
                    }
                };
                if hash != cp.head_hash {
                    return Err(AuditError::Corrupt {
                        seq: cp.seq,
                        reason: "the record no longer matches the latest checkpoint".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The broker's public checkpoint key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signer.verifying_key()
    }

    /// The current head of the chain.
    pub fn head(&self) -> Head {
        let head = self.lock();
        Head {
            seq: head.seq,
            hash: head.hash.clone(),
        }
    }

    /// Append one record and return it. Thread-safe; does not flush (see the module docs).
    /// The record is dated `max(now, time of the previous record)`.
    pub fn append(&self, entry: AuditEntry, now: DateTime<Utc>) -> Result<AuditRecord, AuditError> {
        entry.validate()?;
        let mut head = self.lock();
        let (record, bytes) = head.next(entry, now)?;
        self.records
            .insert(seq_key(record.seq), bytes)
            .map_err(storage)?;
        head.advance(&record);
        Ok(record)
    }

    /// Lock the chain to append records inside a caller's sled transaction (the store's
    /// combined message writes, [`crate::store::Store::put_message`]): records go into
    /// [`AuditTrail::records_tree`] in that transaction through [`ChainLock::stage`], and
    /// [`ChainLock::advance`] moves the head once the transaction committed. Other appends
    /// wait while the lock is held.
    pub fn lock_chain(&self) -> ChainLock<'_> {
        let head = self.lock();
        ChainLock { head }
    }

    /// The tree that holds the records, for a transaction under [`AuditTrail::lock_chain`].
    pub fn records_tree(&self) -> &sled::Tree {
        &self.records
    }

    /// Append several records under one lock, in rounds of up to [`ROUND_BYTES`] (one
    /// insert, or one sled batch for more): either all of them are written, contiguous
    /// and chained, or none is. Does not flush.
    pub fn append_batch(
        &self,
        entries: impl IntoIterator<Item = AuditEntry>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let entries: Vec<AuditEntry> = entries.into_iter().collect();
        for e in &entries {
            e.validate()?;
        }
        let mut head = self.lock();
        let mut pending = ChainHead {
            seq: head.seq,
            hash: head.hash.clone(),
            time: head.time,
        };
        let mut rounds = Rounds::new(ROUND_BYTES);
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let (record, bytes) = pending.next(entry, now)?;
            rounds.push(record.seq, &bytes);
            pending.advance(&record);
            out.push(record);
        }
        // One round is one insert, atomic by itself (a sled batch, like a transaction,
        // makes sled 0.34 write out and sync its IO buffer before and after it).
        let mut entries = rounds.entries();
        match (entries.next(), entries.next()) {
            (None, _) => {}
            (Some((key, bytes)), None) => {
                self.records
                    .insert(key, pack_round(bytes).as_ref())
                    .map_err(storage)?;
            }
            (Some(first), Some(second)) => {
                let mut batch = sled::Batch::default();
                for (key, bytes) in [first, second].into_iter().chain(entries) {
                    batch.insert(&key, pack_round(bytes).as_ref());
                }
                self.records.apply_batch(batch).map_err(storage)?;
            }
        }
        *head = pending;
        Ok(out)
    }

    /// Sign a checkpoint of the trail as it is now, store it and flush the database.
    ///
    /// Unless the trail already ends in a checkpoint, this first appends an
    /// [`AuditEvent::Checkpoint`] record (so the trail shows when checkpoints were made) and
    /// the checkpoint covers that record. When nothing was appended since the latest
    /// checkpoint, that checkpoint is returned again instead of a new one. Blocking I/O: in
    /// async code, call it from `spawn_blocking`.
    pub fn checkpoint(&self, now: DateTime<Utc>) -> Result<Checkpoint, AuditError> {
        let mut head = self.lock();
        if let Some(latest) = self.latest_checkpoint()? {
            if latest.seq == head.seq && latest.head_hash == head.hash {
                return Ok(latest);
            }
        }
        let (record, bytes) = head.next(AuditEntry::ok(AuditEvent::Checkpoint), now)?;
        self.records
            .insert(seq_key(record.seq), bytes)
            .map_err(storage)?;
        head.advance(&record);
        let cp = Checkpoint::sign(&self.signer, record.seq, record.hash, record.time);
        let cp_bytes = serde_json::to_vec(&cp).map_err(AuditError::Serialize)?;
        self.checkpoints
            .insert(seq_key(cp.seq), cp_bytes)
            .map_err(storage)?;
        drop(head);
        crate::failpoint::hit("checkpoint", "applied");
        // Tree::flush flushes the whole database, records included.
        self.checkpoints.flush().map_err(storage)?;
        crate::failpoint::hit("checkpoint", "durable");
        tracing::info!(seq = cp.seq, head_hash = %cp.head_hash, "audit checkpoint");
        Ok(cp)
    }

    /// The most recent checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        match self.checkpoints.last().map_err(storage)? {
            None => Ok(None),
            Some((key, value)) => parse_checkpoint(key_seq(&key).unwrap_or(0), &value).map(Some),
        }
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        self.checkpoints
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(storage)?;
                parse_checkpoint(key_seq(&key).unwrap_or(0), &value)
            })
            .collect()
    }

    /// Whether the record at `earlier_seq` still has hash `earlier_hash`: the answer to an
    /// agent that holds a checkpoint `(earlier_seq, earlier_hash)`. The record's stored hash
    /// must match and its content must still hash to it. `false` for a seq beyond the head,
    /// a missing record or one that no longer parses (those are logged).
    pub fn prove_extends(&self, earlier_seq: u64, earlier_hash: &str) -> Result<bool, AuditError> {
        if earlier_seq == 0 {
            return Ok(earlier_hash == GENESIS_HASH);
        }
        if earlier_seq > self.lock().seq {
            return Ok(false);
        }
        let record = match self.get(earlier_seq) {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(seq = earlier_seq, "audit record of a checkpoint is missing");
                return Ok(false);
            }
            Err(err) => {
                let seq = earlier_seq;
                tracing::warn!(seq, cause = %err, "audit record of a checkpoint is corrupt");
                return Ok(false);
            }
        };
        Ok(record.hash == earlier_hash && record.compute_hash()? == earlier_hash)
    }

    /// The record with this seq, if there is one (in sled or in the archive).
    pub fn get(&self, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
        if seq > self.archive.mark().seq {
            if let Some((first, v)) = round_holding(&self.records, seq)? {
                if let Some((_, line)) = round_records(first, &v).find(|(s, _)| *s == seq) {
                    return parse_record(seq, line).map(Some);
                }
            }
        }
        // Archived (perhaps just now, between the look at the mark and the read).
        self.iter_range(seq, seq).next().transpose()
    }

    /// Records `from_seq..=to_seq` (both inclusive), in seq order, from the archive and
    /// sled. A record that does not parse, or is stored under another seq, yields
    /// [`AuditError::Corrupt`].
    pub fn iter_range(
        &self,
        from_seq: u64,
        to_seq: u64,
    ) -> impl Iterator<Item = Result<AuditRecord, AuditError>> + '_ {
        Records::new(&self.archive, Some(&self.records), from_seq, to_seq).map(|item| {
            let (key, value) = item?;
            let seq = key_seq(&key).ok_or_else(|| AuditError::Corrupt {
                seq: 0,
                reason: "an entry has a malformed key".into(),
            })?;
            parse_record(seq, &value)
        })
    }

    /// Records dated in `[from, until)`, in order. Finds the first one by binary search
    /// (record times never go backwards), so a report over a recent window does not read
    /// the whole trail.
    pub fn records_between(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let head = self.lock().seq;
        if from >= until || head == 0 {
            return Ok(Vec::new());
        }
        // The first seq in 1..=head whose time is >= from (head + 1 when there is none).
        let (mut lo, mut hi) = (1u64, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let record = self.get(mid)?.ok_or_else(|| AuditError::Corrupt {
                seq: mid,
                reason: "the record is missing".into(),
            })?;
            if record.time < from {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        for record in self.iter_range(lo, head) {
            let record = record?;
            if record.time >= until {
                break;
            }
            out.push(record);
        }
        Ok(out)
    }

    /// The archive of the trail.
    pub fn archive_of(&self) -> &Archive {
        &self.archive
    }

    /// Move the oldest records from sled into the archive file, whole rounds, up to `max`
    /// records (at least one round) (see [`archive`]); returns how many moved. Blocking
    /// I/O. The move stops at a gap (a round that does not start right after the one
    /// before) and at a round with a newline inside a record: those stay in sled, where
    /// `audit verify` reports them.
    ///
    /// No transaction: the file is synced first, then the mark moves (one insert), then
    /// the records leave sled one by one. Each step is ordered after the one before it in
    /// sled's log, so a crash leaves either lines past the mark (cut off at the next
    /// start) or records in sled the file holds too (removed at the next start,
    /// [`AuditTrail::open`]). A sled transaction or batch would stall every reader and the
    /// store's writer while it runs.
    pub fn archive(&self, max: usize) -> Result<usize, AuditError> {
        self.archive_upto(max, ARCHIVE_MOVE_BYTES)
            .map(|moved| moved.records)
    }

    /// [`AuditTrail::archive`], up to `max` records and `max_bytes` of them (at least one
    /// round either way), saying too whether the move stopped at a limit (more entries
    /// could move right away) or at the end of what can move.
    pub fn archive_upto(&self, max: usize, max_bytes: usize) -> Result<Moved, AuditError> {
        let none = Moved {
            records: 0,
            at_limit: false,
        };
        let Some(tree) = self.archive.tree() else {
            return Ok(none);
        };
        // The mover's lock guards its buffer, reused from move to move.
        let mut lines = self
            .archive
            .moving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lines.clear();
        let mark = self.archive.mark();
        let mut keys = Vec::new();
        let mut at_limit = false;
        let Some(mut expected) = mark.seq.checked_add(1) else {
            return Ok(none);
        };
        for item in self.records.range(seq_key(expected)..) {
            let (k, v) = item.map_err(storage)?;
            // A packed round that does not unpack stays in sled, where `audit verify`
            // reports it.
            let Ok(v) = unpack_round(key_seq(&k).unwrap_or(expected), &v) else {
                break;
            };
            let n = round_len(&v);
            let moved = expected - mark.seq - 1;
            let full = moved + n > max as u64 || lines.len() + v.len() + 1 > max_bytes;
            if moved > 0 && full {
                at_limit = true;
                break;
            }
            let next = expected.checked_add(n);
            if key_seq(&k) != Some(expected) || !round_is_lines(&v) || next.is_none() {
                break;
            }
            // A round's records are lines already.
            lines.extend_from_slice(&v);
            lines.push(b'\n');
            keys.push(k);
            expected = next.unwrap_or(expected);
        }
        if keys.is_empty() {
            return Ok(none);
        }
        let next = self.archive.append(&lines, expected - 1)?;
        if lines.capacity() > 8 << 20 {
            // A move of unusually long records: do not keep that much.
            *lines = Vec::new();
        }
        crate::failpoint::hit("archive", "appended");
        {
            // A backup holds the chain lock to copy a consistent trail: the mark must not
            // move under it.
            let _head = self.lock();
            Archive::write_mark(tree, &next)?;
            self.archive.set_mark(next);
        }
        crate::failpoint::hit("archive", "applied");
        for k in &keys {
            self.records.remove(k).map_err(storage)?;
        }
        let records = usize::try_from(next.seq - mark.seq).unwrap_or(usize::MAX);
        tracing::debug!(
            records,
            entries = keys.len(),
            up_to = next.seq,
            "audit records archived"
        );
        Ok(Moved { records, at_limit })
    }

    fn lock(&self) -> MutexGuard<'_, ChainHead> {
        // A panic while the lock was held cannot have left the head inconsistent with the
        // tree (see the field's invariant), so a poisoned lock is still usable.
        self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// At most this many bytes of records move with one sync of the archive file
/// ([`AuditTrail::archive`]; a move takes at least one round). The sync writes them all to
/// the disk at once, and the store's syncs wait behind it: at 1,000 messages a second a
/// second's records (about 2.8 MB) in one move held every submission up for 7-11 ms, once
/// a second, most of the paced p99 (BENCHMARKS.md, "The archiver's moves bounded, zeros
/// written ahead in short stretches").
pub const ARCHIVE_MOVE_BYTES: usize = 256 * 1024;

/// What one move of the archiver did ([`AuditTrail::archive_upto`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Records moved.
    pub records: usize,
    /// The move stopped at its limit: more entries could move right away.
    pub at_limit: bool,
}

/// The audit chain locked for a transaction (see [`AuditTrail::lock_chain`]).
#[derive(Debug)]
pub struct ChainLock<'a> {
    head: MutexGuard<'a, ChainHead>,
}

/// Where a transaction's records continue the chain, and the round of records staged so
/// far; start one per transaction attempt with [`ChainLock::cursor`], since sled may run
/// the transaction closure more than once.
#[derive(Debug)]
pub struct ChainCursor {
    head: ChainHead,
    rounds: Rounds,
    /// The rounds' entries packed ([`ChainCursor::pack`]); `None` until then, and again
    /// once another record is staged.
    packed: Option<Vec<([u8; 8], Vec<u8>)>>,
}

impl ChainCursor {
    /// Pack the rounds staged so far ([`pack_round`]) ahead of the transaction, which then
    /// only inserts them: while a sled transaction runs, every reader of its trees waits.
    /// For a caller that stages its records before the transaction (the message writes).
    pub fn pack(&mut self) {
        let packed = self
            .rounds
            .entries()
            .map(|(key, bytes)| (key, pack_round(bytes).into_owned()))
            .collect();
        self.packed = Some(packed);
    }

    /// Write the records staged ([`ChainLock::stage`]) into `records` (the transactional
    /// view of [`AuditTrail::records_tree`]) in rounds, packed: one insert for up to
    /// [`ROUND_BYTES`] of records; nothing when none was staged. Call it once, at the end
    /// of the transaction.
    pub fn write<E>(
        &self,
        records: &sled::transaction::TransactionalTree,
    ) -> Result<(), sled::transaction::ConflictableTransactionError<E>> {
        match &self.packed {
            Some(packed) => {
                for (key, value) in packed {
                    records.insert(key, value.as_slice())?;
                }
            }
            None => {
                for (key, bytes) in self.rounds.entries() {
                    records.insert(&key, pack_round(bytes).as_ref())?;
                }
            }
        }
        Ok(())
    }
}

impl ChainLock<'_> {
    /// The head of the chain while it is locked.
    pub fn head(&self) -> Head {
        Head {
            seq: self.head.seq,
            hash: self.head.hash.clone(),
        }
    }

    /// A cursor at the current head.
    pub fn cursor(&self) -> ChainCursor {
        ChainCursor {
            head: ChainHead {
                seq: self.head.seq,
                hash: self.head.hash.clone(),
                time: self.head.time,
            },
            rounds: Rounds::new(ROUND_BYTES),
            packed: None,
        }
    }

    /// Chain the record for `entry` after `cursor`, add it to the cursor's rounds and move
    /// the cursor to it; [`ChainCursor::write`] writes the round. Serialises and hashes
    /// only, so it may run before the transaction (sled keeps every reader waiting while
    /// a transaction runs). The entry must have passed `AuditEntry::validate`.
    pub fn stage(
        &self,
        cursor: &mut ChainCursor,
        entry: AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<(), AuditError> {
        let (record, bytes) = cursor.head.next(entry, now)?;
        cursor.rounds.push(record.seq, &bytes);
        cursor.head.advance(&record);
        cursor.packed = None;
        Ok(())
    }

    /// The transaction committed: the head is where `cursor` ended.
    pub fn advance(mut self, cursor: ChainCursor) {
        *self.head = cursor.head;
    }
}

/// The entry of the records tree (a trail's [`RECORDS_TREE`]) whose round may hold record
/// `seq`: the last one whose key is at most `seq`, as its first seq and its records
/// (unpacked, [`unpack_round`]). Whether the round reaches `seq` is [`round_records`]' to
/// say. For readers of a trail and for tools that look at a stopped broker's database.
pub fn round_holding(tree: &sled::Tree, seq: u64) -> Result<Option<(u64, sled::IVec)>, AuditError> {
    match stored_round_holding(tree, seq)? {
        Some((first, v)) => Ok(Some((first, unpacked(first, v)?))),
        None => Ok(None),
    }
}

/// [`round_holding`] as stored (perhaps packed).
pub(crate) fn stored_round_holding(
    tree: &sled::Tree,
    seq: u64,
) -> Result<Option<(u64, sled::IVec)>, AuditError> {
    for item in tree.range(..=seq_key(seq)).rev() {
        let (k, v) = item.map_err(storage)?;
        if let Some(first) = key_seq(&k) {
            return Ok(Some((first, v)));
        }
    }
    Ok(None)
}

/// A stored round's value unpacked ([`unpack_round`]), without a copy when it is plain.
pub(crate) fn unpacked(first: u64, value: sled::IVec) -> Result<sled::IVec, AuditError> {
    Ok(match unpack_round(first, &value)? {
        std::borrow::Cow::Borrowed(_) => value,
        std::borrow::Cow::Owned(round) => sled::IVec::from(round),
    })
}

/// Check the whole audit trail in `db` and its archive in `archive_dir` (opened read-only:
/// [`Archive::open_read_only`]): the function behind `ketenpost-broker audit verify
/// <data-dir>`, and the broker's own check at start (then with the running broker's
/// archive, [`verify_trail_of`]).
///
/// Walks every record in key order and checks that the seqs run from 1 without gaps, that
/// each entry's key is its record's seq, that each record parses, is stored canonically
/// and hashes to its `hash`, that each `prev_hash` is the previous record's `hash`, and
/// that times do not go backwards. Then checks that every checkpoint's signature verifies
/// under `broker_key` and that its `head_hash` is the hash of the record at its seq.
///
/// Reports every problem (one per record and kind), sorted by seq; never panics on
/// damaged data. Errors only when sled itself fails. Does not modify `db` (a missing tree
/// counts as empty).
pub fn verify_chain(
    db: &sled::Db,
    archive_dir: &Path,
    broker_key: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    let archive = Archive::open_read_only(db, archive_dir)?;
    verify_with(db, &archive, broker_key)
}

/// [`verify_chain`] of a running broker's trail (its own archive handle, whose mark moves
/// while the walk runs).
pub fn verify_trail_of(
    db: &sled::Db,
    trail: &AuditTrail,
    broker_key: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    verify_with(db, &trail.archive, broker_key)
}

fn verify_with(
    db: &sled::Db,
    archive: &Archive,
    broker_key: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    let tree = |name: &str| existing_tree(db, name);
    let entries = |t: Option<sled::Tree>| {
        t.into_iter()
            .flat_map(|t| t.iter())
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage))
    };
    let records = tree(RECORDS_TREE)?;
    verify_trail(
        entries(tree(CHECKPOINTS_TREE)?),
        Records::new(archive, records.as_ref(), 1, u64::MAX),
        broker_key,
    )
}

/// Every record of a stopped broker's trail in `db` and `archive_dir`, in order, read
/// without changing anything (tests and tools).
pub fn stored_records(db: &sled::Db, archive_dir: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let archive = Archive::open_read_only(db, archive_dir)?;
    let records = existing_tree(db, RECORDS_TREE)?;
    Records::new(&archive, records.as_ref(), 1, u64::MAX)
        .map(|item| {
            let (key, value) = item?;
            parse_record(key_seq(&key).unwrap_or(0), &value)
        })
        .collect()
}

/// Why `audit verify` of a data directory could not run (a broken chain is not an error:
/// it is in the [`VerifyReport`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyDirError {
    /// The key file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    KeyUnreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds neither a signing key nor a public key.
    #[error("{0}")]
    BadKey(ketenpost_schemas::Error),
    /// The data directory holds no broker database.
    #[error("no broker database at {}", .0.display())]
    NoDatabase(std::path::PathBuf),
    /// sled cannot open the database (e.g. the broker is running).
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The database.
        path: std::path::PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// Reading the trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl VerifyDirError {
    /// Whether the error is the caller's (a wrong key file or directory) rather than the
    /// system's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            VerifyDirError::KeyUnreadable { .. }
                | VerifyDirError::BadKey(_)
                | VerifyDirError::NoDatabase(_)
        )
    }
}

/// Read the broker's checkpoint key from a file: its public key (base64) or its signing
/// key file.
pub fn read_verifying_key(path: &std::path::Path) -> Result<VerifyingKey, VerifyDirError> {
    let text = std::fs::read_to_string(path).map_err(|source| VerifyDirError::KeyUnreadable {
        path: path.to_owned(),
        source,
    })?;
    match keys::signing_key_from_text(&text) {
        Ok(k) => Ok(k.verifying_key()),
        Err(_) => keys::verifying_key_from_text(&text).map_err(VerifyDirError::BadKey),
    }
}

/// `ketenpost-broker audit verify`: [`verify_chain`] over the database in a (stopped)
/// broker's data directory or a backup folder, with the key in `key_file` (see
/// [`read_verifying_key`]). The database is opened, never changed.
pub fn verify_data_dir(
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<VerifyReport, VerifyDirError> {
    let key = read_verifying_key(key_file)?;
    let path = data_dir.join("broker.sled");
    if !path.exists() {
        return Err(VerifyDirError::NoDatabase(path));
    }
    let db = sled::open(&path).map_err(|source| VerifyDirError::Open { path, source })?;
    Ok(verify_chain(&db, &archive_dir(data_dir), &key)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use chrono::TimeZone;

    const A: &str = "00000001000000000001";
    const B: &str = "00000001000000000002";
    const C: &str = "00000001000000000003";

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 9, 30, 0).unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn other_key() -> SigningKey {
        SigningKey::from_bytes(&[8u8; 32])
    }

    thread_local! {
        /// The archive directory of the test's database ([`db`]).
        static ARCHIVE: std::cell::RefCell<std::path::PathBuf> = std::cell::RefCell::default();
    }

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        ARCHIVE.with(|a| *a.borrow_mut() = dir.path().join("audit"));
        (dir, db)
    }

    /// Open the database at `path` again. sled's background flusher may hold the first
    /// handle's file lock for a moment after it is dropped: retry (bounded) rather than
    /// fail on that.
    fn reopen(path: &std::path::Path) -> sled::Db {
        let mut db = sled::open(path);
        for _ in 0..100 {
            if db.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            db = sled::open(path);
        }
        db.unwrap()
    }

    /// The archive directory of the database [`db`] made last on this thread.
    fn adir() -> std::path::PathBuf {
        ARCHIVE.with(|a| a.borrow().clone())
    }

    fn entry(i: u64) -> AuditEntry {
        AuditEntry::ok(AuditEvent::Accepted)
            .actor(A)
            .case_ref(format!("case-{i:026}"))
            .purpose("walcheren-uitstroom")
            .processing_activity("walcheren-uitstroom")
            .kind("signaal")
            .message_id(format!("0195-{i}"))
            .counterparties([B, C])
            .trace_id(format!("{i:032x}"))
    }

    /// A trail with records 1..=n, one second apart.
    fn filled(db: &sled::Db, n: u64) -> AuditTrail {
        let trail = AuditTrail::open(db, &adir(), key()).unwrap();
        for i in 1..=n {
            trail
                .append(entry(i), t0() + chrono::Duration::seconds(i as i64))
                .unwrap();
        }
        trail
    }

    fn tree(db: &sled::Db) -> sled::Tree {
        db.open_tree(RECORDS_TREE).unwrap()
    }

    fn stored(db: &sled::Db, seq: u64) -> AuditRecord {
        serde_json::from_slice(&tree(db).get(seq_key(seq)).unwrap().unwrap()).unwrap()
    }

    fn store(db: &sled::Db, record: &AuditRecord) {
        tree(db)
            .insert(seq_key(record.seq), serde_json::to_vec(record).unwrap())
            .unwrap();
    }

    fn verify(db: &sled::Db) -> VerifyReport {
        verify_chain(db, &adir(), &key().verifying_key()).unwrap()
    }

    /// The seqs of the records dated in `[from, until)`.
    fn seqs_between(trail: &AuditTrail, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<u64> {
        trail
            .records_between(from, until)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    /// The trail in `db` verifies and holds `records` records.
    fn assert_intact(db: &sled::Db, records: u64) {
        let report = verify(db);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.records, records);
    }

    fn kinds(report: &VerifyReport) -> Vec<(u64, ProblemKind)> {
        report.problems.iter().map(|p| (p.seq, p.what)).collect()
    }

    fn assert_chained(records: &[AuditRecord]) {
        let mut prev = GENESIS_HASH.to_owned();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.prev_hash, prev, "record {}", r.seq);
            assert_eq!(r.hash, r.compute_hash().unwrap());
            prev = r.hash.clone();
        }
    }

    #[test]
    fn appended_records_chain_from_genesis() {
        let (_dir, db) = db();
        let trail = filled(&db, 200);
        assert_eq!(trail.head().seq, 200);
        let all: Vec<_> = trail.iter_range(1, u64::MAX).map(Result::unwrap).collect();
        assert_eq!(all.len(), 200);
        assert_chained(&all);
        assert_eq!(trail.head().hash, all[199].hash);
        assert_intact(&db, 200);
    }

    #[test]
    fn record_json_is_snake_case_and_omits_absent_fields() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        let r = trail
            .append(
                AuditEntry::refused(AuditEvent::Rejected, "not_in_case_team").actor(A),
                t0(),
            )
            .unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["event"], "rejected");
        assert_eq!(json["outcome"], "refused");
        assert_eq!(json["reason"], "not_in_case_team");
        assert_eq!(json["prev_hash"], GENESIS_HASH);
        assert!(json.get("case_ref").is_none());
        assert!(json.get("counterparties").is_none());
        let r2 = trail
            .append(
                AuditEntry::flagged(AuditEvent::DeadlineLate, "late")
                    .reason_explained("late_on_arrival", "sent after send_within"),
                t0(),
            )
            .unwrap();
        assert_eq!(
            r2.reason.as_deref(),
            Some("late_on_arrival: sent after send_within")
        );
        assert_eq!(AuditEvent::BodyDeleted.to_string(), "body_deleted");
        assert_eq!(
            serde_json::to_value(AuditEvent::NonConsentUse).unwrap(),
            "non_consent_use"
        );
    }

    #[test]
    fn entries_that_could_carry_personal_data_are_refused() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        let bad = [
            AuditEntry::ok(AuditEvent::Accepted).actor("Gemeente Vlissingen"),
            AuditEntry::ok(AuditEvent::Accepted).counterparty("123"),
            AuditEntry::ok(AuditEvent::Accepted).case_ref("Jan Jansen"),
            AuditEntry::ok(AuditEvent::Accepted).message_id(""),
            AuditEntry::ok(AuditEvent::Accepted).purpose("a\nb"),
            AuditEntry::ok(AuditEvent::Accepted).reason("Not In Team"),
        ];
        for e in bad {
            assert!(matches!(
                trail.append(e, t0()),
                Err(AuditError::InvalidEntry { .. })
            ));
        }
        assert_eq!(trail.head().seq, 0, "nothing was written");
    }

    #[test]
    fn concurrent_appends_chain_and_stay_contiguous() {
        let (_dir, db) = db();
        let trail = Arc::new(AuditTrail::open(&db, &adir(), key()).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let trail = Arc::clone(&trail);
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        // Clocks that disagree a little between threads.
                        let now = t0() + chrono::Duration::milliseconds((i * 10 + t) as i64);
                        if i % 10 == 0 {
                            let batch = (0..5).map(|j| entry(t * 1000 + i * 10 + j));
                            trail.append_batch(batch, now).unwrap();
                        } else {
                            trail.append(entry(t * 1000 + i), now).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let expected = 8 * (45 + 5 * 5);
        assert_eq!(trail.head().seq, expected);
        let all: Vec<_> = trail.iter_range(1, u64::MAX).map(Result::unwrap).collect();
        assert_eq!(all.len() as u64, expected);
        assert_chained(&all);
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
        assert!(verify(&db).is_intact());
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        ARCHIVE.with(|a| *a.borrow_mut() = dir.path().join("audit"));
        let head = {
            let db = sled::open(&path).unwrap();
            let trail = filled(&db, 10);
            db.flush().unwrap();
            trail.head()
        };
        let db = reopen(&path);
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        assert_eq!(trail.head(), head);
        let r = trail.append(entry(11), t0()).unwrap();
        assert_eq!(r.seq, 11);
        assert_eq!(r.prev_hash, head.hash);
        // The clock went back: the record keeps the trail's time order.
        assert_eq!(r.time, t0() + chrono::Duration::seconds(10));
        assert!(verify(&db).is_intact());
    }

    #[test]
    fn open_refuses_a_trail_whose_head_is_corrupt() {
        let (_dir, db) = db();
        drop(filled(&db, 5));
        tree(&db).insert(seq_key(5), b"{not json".to_vec()).unwrap();
        assert!(matches!(
            AuditTrail::open(&db, &adir(), key()),
            Err(AuditError::Corrupt { seq: 5, .. })
        ));
    }

    #[test]
    fn checkpoint_verifies_and_fails_under_another_key() {
        let (_dir, db) = db();
        let trail = filled(&db, 9);
        let cp = trail
            .checkpoint(t0() + chrono::Duration::milliseconds(60_500))
            .unwrap();
        assert_eq!(cp.seq, 10, "the checkpoint record itself is covered");
        assert_eq!(
            trail.get(10).unwrap().unwrap().event,
            AuditEvent::Checkpoint
        );
        assert_eq!(cp.head_hash, trail.head().hash);
        assert_eq!(cp.time_text(), "2025-03-01T09:31:00Z");
        assert_eq!(
            cp.signed_bytes(),
            format!("10:{}:2025-03-01T09:31:00Z", cp.head_hash).into_bytes()
        );
        cp.verify(&key().verifying_key()).unwrap();
        assert!(matches!(
            cp.verify(&other_key().verifying_key()),
            Err(AuditError::BadSignature { seq: 10 })
        ));
        let mut forged = cp.clone();
        forged.seq = 11;
        assert!(forged.verify(&key().verifying_key()).is_err());

        // Round trip through JSON and through wire parts.
        let back: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
        back.verify(&key().verifying_key()).unwrap();
        let wire = Checkpoint::from_parts(
            cp.seq,
            cp.head_hash.clone(),
            &cp.time_text(),
            cp.signature.clone(),
        )
        .unwrap();
        assert_eq!(wire, cp);

        // Nothing new: the same checkpoint again.
        assert_eq!(
            trail.checkpoint(t0() + chrono::Duration::hours(1)).unwrap(),
            cp
        );
        assert_eq!(trail.latest_checkpoint().unwrap(), Some(cp.clone()));

        trail.append(entry(11), t0()).unwrap();
        let cp2 = trail.checkpoint(t0() + chrono::Duration::hours(2)).unwrap();
        assert_eq!(cp2.seq, 12);
        assert_eq!(trail.checkpoints().unwrap(), vec![cp.clone(), cp2.clone()]);
        assert!(cp2.extends(&cp));
        assert!(!cp.extends(&cp2));
        let mut fork = cp.clone();
        fork.head_hash = "ab".repeat(32);
        assert!(!cp.extends(&fork));

        assert!(trail.prove_extends(cp.seq, &cp.head_hash).unwrap());
        assert!(trail.prove_extends(0, GENESIS_HASH).unwrap());
        assert!(!trail.prove_extends(cp.seq, &fork.head_hash).unwrap());
        assert!(!trail.prove_extends(99, &cp.head_hash).unwrap());
        assert!(verify(&db).is_intact());
    }

    #[test]
    fn prove_extends_fails_once_the_record_is_rewritten() {
        let (_dir, db) = db();
        let trail = filled(&db, 3);
        let cp = trail.checkpoint(t0()).unwrap();
        let mut r = stored(&db, cp.seq);
        r.reason = Some("rewritten".into());
        store(&db, &r);
        assert!(!trail.prove_extends(cp.seq, &cp.head_hash).unwrap());
        r.hash = r.compute_hash().unwrap();
        store(&db, &r);
        assert!(!trail.prove_extends(cp.seq, &cp.head_hash).unwrap());
    }

    #[test]
    fn readers_get_ranges_in_order() {
        let (_dir, db) = db();
        let trail = filled(&db, 30);
        let seqs: Vec<u64> = trail.iter_range(5, 9).map(|r| r.unwrap().seq).collect();
        assert_eq!(seqs, vec![5, 6, 7, 8, 9]);
        assert_eq!(trail.iter_range(9, 5).count(), 0);
        assert_eq!(trail.iter_range(31, 40).count(), 0);
        let seqs: Vec<u64> = seqs_between(&trail, secs(10), secs(15));
        assert_eq!(seqs, vec![10, 11, 12, 13, 14]);
        let seqs: Vec<u64> = seqs_between(&trail, secs(-100), secs(3));
        assert_eq!(seqs, vec![1, 2]);
        assert!(trail
            .records_between(secs(31), secs(99))
            .unwrap()
            .is_empty());
        assert_eq!(trail.records_between(secs(0), secs(99)).unwrap().len(), 30);
    }

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(s)
    }

    fn archive_file() -> std::path::PathBuf {
        adir().join(ARCHIVE_FILE)
    }

    #[test]
    fn archived_records_read_and_verify_as_before() {
        archived_records_read_and_verify_as_before_written(true);
        archived_records_read_and_verify_as_before_written(false);
    }

    /// With `direct`, appends go around the page cache where the file system allows it
    /// (the default); without, through it (where it does not).
    fn archived_records_read_and_verify_as_before_written(direct: bool) {
        let (_dir, db) = db();
        let trail = filled(&db, 30);
        if !direct {
            trail.archive_of().write_buffered();
        }
        // Where the file system takes direct writes, the archive uses them, and keeps on.
        let available = crate::direct::DirectAppend::open(&archive_file()).is_some();
        assert_eq!(trail.archive_of().writes_direct(), direct && available);
        assert_eq!(trail.archive(12).unwrap(), 12);
        assert_eq!(trail.archive_of().mark().seq, 12);
        assert_eq!(tree(&db).len(), 18);
        let all: Vec<u64> = trail.iter_range(1, 30).map(|r| r.unwrap().seq).collect();
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
        let across: Vec<u64> = trail.iter_range(10, 14).map(|r| r.unwrap().seq).collect();
        assert_eq!(across, vec![10, 11, 12, 13, 14]);
        for seq in [1, 7, 12, 13, 30] {
            assert_eq!(trail.get(seq).unwrap().unwrap().seq, seq);
        }
        assert!(trail.get(31).unwrap().is_none());
        let between: Vec<u64> = seqs_between(&trail, secs(10), secs(15));
        assert_eq!(between, vec![10, 11, 12, 13, 14]);
        let five = trail.get(5).unwrap().unwrap();
        assert!(trail.prove_extends(5, &five.hash).unwrap());
        assert!(!trail
            .prove_extends(5, &trail.get(6).unwrap().unwrap().hash)
            .unwrap());
        assert_intact(&db, 30);
        // The rest, then nothing; appends go on chaining.
        assert_eq!(trail.archive(100).unwrap(), 18);
        assert_eq!(trail.archive(100).unwrap(), 0);
        assert!(tree(&db).is_empty());
        for seq in 1..=30 {
            assert_eq!(trail.get(seq).unwrap().unwrap().seq, seq);
        }
        let r = trail.append(entry(31), secs(31)).unwrap();
        assert_eq!(r.seq, 31);
        assert_eq!(r.prev_hash, trail.get(30).unwrap().unwrap().hash);
        assert_intact(&db, 31);
        // The file holds the records as sled held them, one per line.
        let text = std::fs::read_to_string(archive_file()).unwrap();
        assert_eq!(text.lines().count(), 30);
        assert_eq!(text.len() as u64, trail.archive_of().mark().len);
        assert_eq!(trail.archive_of().writes_direct(), direct && available);
    }

    /// Append rounds of the given sizes as the store's transactions write them (one
    /// entry each), record `i` dated `secs(i)`.
    fn rounds(db: &sled::Db, trail: &AuditTrail, sizes: &[u64]) {
        use sled::transaction::{ConflictableTransactionError, Transactional};
        let mut next = trail.head().seq + 1;
        for &n in sizes {
            let chain = trail.lock_chain();
            let cursor = [&tree(db)]
                .as_slice()
                .transaction(|views| {
                    let mut cursor = chain.cursor();
                    for i in next..next + n {
                        chain
                            .stage(&mut cursor, entry(i), secs(i as i64))
                            .map_err(ConflictableTransactionError::Abort)?;
                    }
                    cursor.write(&views[0])?;
                    Ok(cursor)
                })
                .unwrap();
            chain.advance(cursor);
            next += n;
        }
    }

    #[test]
    fn a_transactions_records_are_one_entry_and_read_one_by_one() {
        let (dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 1, 5]);
        // One entry a round, keyed by its first record.
        let keys: Vec<u64> = tree(&db)
            .iter()
            .map(|e| key_seq(&e.unwrap().0).unwrap())
            .collect();
        assert_eq!(keys, vec![1, 4, 5]);
        let all: Vec<AuditRecord> = trail.iter_range(1, 9).map(|r| r.unwrap()).collect();
        assert_chained(&all);
        assert_eq!(all.len(), 9);
        for seq in 1..=9 {
            assert_eq!(trail.get(seq).unwrap().unwrap().seq, seq);
        }
        assert!(trail.get(10).unwrap().is_none());
        // Ranges that start and end inside rounds.
        let inside: Vec<u64> = trail.iter_range(2, 7).map(|r| r.unwrap().seq).collect();
        assert_eq!(inside, vec![2, 3, 4, 5, 6, 7]);
        let one: Vec<u64> = trail.iter_range(6, 6).map(|r| r.unwrap().seq).collect();
        assert_eq!(one, vec![6]);
        assert_eq!(seqs_between(&trail, secs(2), secs(7)), vec![2, 3, 4, 5, 6]);
        let six = trail.get(6).unwrap().unwrap();
        assert!(trail.prove_extends(6, &six.hash).unwrap());
        assert_intact(&db, 9);
        // A batch is one round too.
        let batch = trail
            .append_batch([entry(10), entry(11)], secs(11))
            .unwrap();
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert_eq!(tree(&db).len(), 4);
        // A reopened trail goes on from the last record of the last round.
        drop(trail);
        drop(db);
        let db = reopen(&dir.path().join("db"));
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        assert_eq!(trail.head().seq, 11);
        let r = trail.append(entry(12), secs(12)).unwrap();
        assert_eq!(r.prev_hash, batch[1].hash);
        assert_intact(&db, 12);
    }

    #[test]
    fn a_transaction_with_many_records_writes_entries_of_bounded_size() {
        let (dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[40]);
        let entries: Vec<(u64, sled::IVec)> = tree(&db)
            .iter()
            .map(|e| e.unwrap())
            .map(|(k, v)| (key_seq(&k).unwrap(), v))
            .collect();
        assert!(entries.len() > 1, "{} entries", entries.len());
        let mut next = 1;
        for (first, stored) in &entries {
            // Stored packed, and shorter than the round.
            assert_eq!(stored.first(), Some(&PACKED));
            let v = unpack_round(*first, stored).unwrap();
            assert!(
                stored.len() < v.len() / 2,
                "{} of {}",
                stored.len(),
                v.len()
            );
            assert!(v.len() <= ROUND_BYTES);
            assert_eq!(*first, next);
            next += round_len(&v);
        }
        assert_eq!(next, 41);
        assert_intact(&db, 40);
        assert_eq!(trail.archive(100).unwrap(), 40);
        assert_intact(&db, 40);
        // Many such transactions: sled writes no page as a blob (a file it never syncs),
        // as it did for rounds of unbounded size once its nodes held 17 of them.
        rounds(&db, &trail, &[40; 60]);
        db.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join("db").join("blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0);
        assert_intact(&db, 2440);
    }

    /// Records `1..=n` chained from the start, as a round.
    fn chained_round(n: u64) -> Vec<u8> {
        let mut head = ChainHead::genesis();
        let mut lines = Vec::new();
        for i in 1..=n {
            let (record, bytes) = head.next(entry(i), secs(i as i64)).unwrap();
            head.advance(&record);
            lines.push(bytes);
        }
        lines.join(&b'\n')
    }

    /// Packing leaves single records and rounds that would not shrink as they are, and
    /// what it packs unpacks to the same bytes.
    #[test]
    fn rounds_pack_and_unpack_to_the_same_bytes() {
        let one = br#"{"seq":1,"event":"accepted"}"#;
        assert!(matches!(pack_round(one), std::borrow::Cow::Borrowed(_)));
        // Two short records that do not repeat each other: packed, they would be longer.
        let short = b"{\"a\":1}\n{\"b\":2}";
        assert!(matches!(pack_round(short), std::borrow::Cow::Borrowed(_)));
        for n in [2u64, 5, 9] {
            let round = chained_round(n);
            let packed = pack_round(&round);
            assert_eq!(packed.first(), Some(&PACKED));
            assert!(packed.len() < round.len());
            assert_eq!(unpack_round(1, &packed).unwrap().as_ref(), round.as_slice());
            // A plain round unpacks to itself, without a copy.
            assert!(matches!(
                unpack_round(1, &round).unwrap(),
                std::borrow::Cow::Borrowed(_)
            ));
        }
    }

    /// A packed round cut short, lying about its length or not unpacking is an error
    /// that names its first record, never a panic or a huge allocation.
    #[test]
    fn damaged_packed_rounds_are_errors() {
        let round = chained_round(3);
        let packed = pack_round(&round).into_owned();
        let mut lying = packed.clone();
        lying[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut flipped = packed.clone();
        let at = flipped.len() / 2;
        flipped.truncate(at);
        for damaged in [vec![PACKED], vec![PACKED, 7, 0], lying, flipped] {
            assert!(matches!(
                unpack_round(40, &damaged),
                Err(AuditError::Corrupt { seq: 40, .. })
            ));
        }
    }

    /// A packed round that does not unpack is reported by `audit verify` (its records
    /// unreadable or missing), read as an error by `get`, and left in sled by the
    /// archiver, which moves what comes before it.
    #[test]
    fn a_damaged_packed_round_is_reported_and_stays() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4, 2]);
        let stored = tree(&db).get(seq_key(4)).unwrap().unwrap();
        assert_eq!(stored.first(), Some(&PACKED));
        tree(&db)
            .insert(seq_key(4), &stored[..stored.len() / 2])
            .unwrap();
        let report = verify(&db);
        assert!(!report.is_intact());
        let found = kinds(&report);
        assert_eq!(
            found.first(),
            Some(&(4, ProblemKind::Unreadable)),
            "{report}"
        );
        assert!(matches!(trail.get(5), Err(AuditError::Corrupt { .. })));
        assert_eq!(trail.get(2).unwrap().unwrap().seq, 2);
        assert_eq!(trail.get(9).unwrap().unwrap().seq, 9);
        assert_eq!(trail.archive(100).unwrap(), 3);
        assert_eq!(trail.archive(100).unwrap(), 0);
        assert_eq!(tree(&db).len(), 2);
    }

    /// Rounds packed ahead of the transaction ([`ChainCursor::pack`]) are stored as
    /// packing them inside it stores them; a record staged after the packing is not lost.
    #[test]
    fn rounds_packed_ahead_are_written_as_packed_inside() {
        use sled::transaction::{ConflictableTransactionError, Transactional};
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[20]);
        let inside: Vec<(sled::IVec, sled::IVec)> = tree(&db).iter().map(|e| e.unwrap()).collect();
        assert!(inside.len() > 1);
        assert_intact(&db, 20);
        for pack_again in [true, false] {
            let (_dir2, db2) = self::db();
            let adir2 = _dir2.path().join("audit");
            let trail2 = AuditTrail::open(&db2, &adir2, key()).unwrap();
            let chain = trail2.lock_chain();
            let mut cursor = chain.cursor();
            for i in 1..=19 {
                chain.stage(&mut cursor, entry(i), secs(i as i64)).unwrap();
            }
            cursor.pack();
            // Staged after the packing: that packing no longer holds.
            chain.stage(&mut cursor, entry(20), secs(20)).unwrap();
            if pack_again {
                cursor.pack();
            }
            [&tree(&db2)]
                .as_slice()
                .transaction(|views| {
                    cursor.write::<()>(&views[0])?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .unwrap();
            chain.advance(cursor);
            let ahead: Vec<(sled::IVec, sled::IVec)> =
                tree(&db2).iter().map(|e| e.unwrap()).collect();
            assert_eq!(ahead, inside, "packed again: {pack_again}");
        }
    }

    /// A trail whose last entry is a packed round that does not unpack is refused at
    /// open, as one whose last record does not parse: extending it would bury the damage.
    #[test]
    fn open_refuses_a_trail_whose_packed_head_does_not_unpack() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4]);
        drop(trail);
        let stored = tree(&db).get(seq_key(4)).unwrap().unwrap();
        assert_eq!(stored.first(), Some(&PACKED));
        tree(&db).insert(seq_key(4), &stored[..9]).unwrap();
        assert!(matches!(
            AuditTrail::open(&db, &adir(), key()),
            Err(AuditError::Corrupt { seq: 4, .. })
        ));
    }

    /// The outcome of a move of `records` records that did or did not stop at a limit.
    fn moved(records: usize, at_limit: bool) -> Moved {
        Moved { records, at_limit }
    }

    #[test]
    fn a_move_stops_before_the_round_that_would_pass_its_byte_limit() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4, 2, 6]);
        // A round takes its bytes and a newline in the file.
        let sizes: Vec<usize> = tree(&db)
            .iter()
            .map(|e| e.unwrap())
            .map(|(k, v)| unpack_round(key_seq(&k).unwrap(), &v).unwrap().len() + 1)
            .collect();
        assert_eq!(sizes.len(), 4);
        // Room for the first two rounds, one byte short of the third.
        let limit = sizes[0] + sizes[1] + sizes[2] - 1;
        assert_eq!(trail.archive_upto(100, limit).unwrap(), moved(7, true));
        assert_eq!(
            std::fs::metadata(archive_file()).unwrap().len(),
            (sizes[0] + sizes[1]) as u64
        );
        // A round longer than the limit still moves, alone.
        assert_eq!(trail.archive_upto(100, 1).unwrap(), moved(2, true));
        assert_eq!(trail.archive_upto(100, sizes[3]).unwrap(), moved(6, false));
        assert!(tree(&db).is_empty());
        assert_intact(&db, 15);
    }

    #[test]
    fn the_archiver_moves_whole_rounds() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4, 2, 6]);
        // A round that would pass the limit waits for the next move...
        assert_eq!(
            trail.archive_upto(5, ARCHIVE_MOVE_BYTES).unwrap(),
            moved(3, true)
        );
        assert_eq!(trail.archive_of().mark().seq, 3);
        // ...unless it is the first: a move takes at least one round.
        assert_eq!(trail.archive(1).unwrap(), 4);
        assert_eq!(trail.archive_of().mark().seq, 7);
        assert_eq!(tree(&db).len(), 2);
        // Across the file and the rounds left in sled, record by record.
        let all: Vec<AuditRecord> = trail.iter_range(1, 15).map(|r| r.unwrap()).collect();
        assert_chained(&all);
        assert_eq!(all.len(), 15);
        let across: Vec<u64> = trail.iter_range(6, 10).map(|r| r.unwrap().seq).collect();
        assert_eq!(across, vec![6, 7, 8, 9, 10]);
        for seq in [1, 3, 4, 7, 8, 9, 10, 15] {
            assert_eq!(trail.get(seq).unwrap().unwrap().seq, seq);
        }
        assert_intact(&db, 15);
        assert_eq!(
            trail.archive_upto(100, ARCHIVE_MOVE_BYTES).unwrap(),
            moved(8, false)
        );
        assert!(tree(&db).is_empty());
        // The file's nth line is record n.
        let text = std::fs::read_to_string(archive_file()).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert_eq!(
                parse_record(i as u64 + 1, line.as_bytes()).unwrap().seq,
                i as u64 + 1
            );
        }
        assert_eq!(text.lines().count(), 15);
        assert_intact(&db, 15);
    }

    /// The round of `db` that holds record `seq`, as its first seq and its records' bytes.
    fn round_of(db: &sled::Db, seq: u64) -> (u64, Vec<Vec<u8>>) {
        let (first, v) = round_holding(&tree(db), seq).unwrap().unwrap();
        (
            first,
            round_records(first, &v).map(|(_, l)| l.to_vec()).collect(),
        )
    }

    fn put_round(db: &sled::Db, first: u64, lines: &[Vec<u8>]) {
        tree(db).insert(seq_key(first), lines.join(&b'\n')).unwrap();
    }

    /// Plain rounds, as a version before packing wrote them, beside packed ones: read,
    /// verified and archived as before, the file holding the same lines either way.
    #[test]
    fn plain_rounds_of_an_older_version_read_and_archive_as_before() {
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4, 2, 5]);
        let mut lines = Vec::new();
        for first in [1u64, 4, 8, 10] {
            let (at, round) = round_of(&db, first);
            assert_eq!(at, first);
            lines.extend(round.iter().cloned());
            if first % 2 == 0 {
                // Stored plain, as before packing.
                put_round(&db, first, &round);
                let stored = tree(&db).get(seq_key(first)).unwrap().unwrap();
                assert_eq!(stored.first(), Some(&b'{'));
            }
        }
        assert_intact(&db, 14);
        assert_eq!(trail.get(5).unwrap().unwrap().seq, 5);
        assert_eq!(trail.get(12).unwrap().unwrap().seq, 12);
        assert_eq!(trail.archive(100).unwrap(), 14);
        assert!(tree(&db).is_empty());
        let mut file = lines.join(&b'\n');
        file.push(b'\n');
        assert_eq!(std::fs::read(archive_file()).unwrap(), file);
        assert_intact(&db, 14);
    }

    #[test]
    fn verify_reports_damage_inside_a_round_record_by_record() {
        // A record inside a round edited: that record, nothing else.
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[2, 5, 3]);
        drop(trail);
        let (first, mut lines) = round_of(&db, 5);
        assert_eq!(first, 3);
        let mut five: AuditRecord = serde_json::from_slice(&lines[2]).unwrap();
        five.actor = Some(B.into());
        lines[2] = serde_json::to_vec(&five).unwrap();
        put_round(&db, first, &lines);
        assert_eq!(kinds(&verify(&db)), vec![(5, ProblemKind::Altered)]);

        // Pretty-printed (newlines inside the record): still that one record, and the
        // archiver leaves the round in sled.
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[2, 5, 3]);
        let (first, mut lines) = round_of(&db, 5);
        let five: AuditRecord = serde_json::from_slice(&lines[2]).unwrap();
        lines[2] = serde_json::to_vec_pretty(&five).unwrap();
        put_round(&db, first, &lines);
        assert_eq!(trail.archive(100).unwrap(), 2);
        assert_eq!(kinds(&verify(&db)), vec![(5, ProblemKind::Altered)]);
        assert_eq!(trail.get(6).unwrap().unwrap().seq, 6);
        drop(trail);

        // Two records of a round swapped.
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[2, 5, 3]);
        drop(trail);
        let (first, mut lines) = round_of(&db, 4);
        lines.swap(1, 2);
        put_round(&db, first, &lines);
        let report = verify(&db);
        assert!(!report.is_intact());
        assert_eq!(report.problems[0].seq, 4, "{report}");

        // A record taken out of a round: the chain breaks there.
        let (_dir, db) = self::db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[2, 5, 3]);
        drop(trail);
        let (first, mut lines) = round_of(&db, 4);
        lines.remove(1);
        put_round(&db, first, &lines);
        let report = verify(&db);
        assert!(!report.is_intact());
        assert_eq!(report.problems[0].seq, 4, "{report}");
    }

    #[test]
    fn a_reader_finds_records_the_archiver_moves_while_it_reads() {
        let (_dir, db) = db();
        let trail = filled(&db, 1300);
        for moved_meanwhile in [700usize, 1300] {
            let mut reader = trail.iter_range(1, 1300);
            // The reader has used up its first batch from the database ...
            let mut seqs: Vec<u64> = reader
                .by_ref()
                .take(archive::CHUNK)
                .map(|r| r.unwrap().seq)
                .collect();
            // ... when the archiver moves records it has not read yet.
            trail.archive(moved_meanwhile).unwrap();
            seqs.extend(reader.map(|r| r.unwrap().seq));
            assert_eq!(seqs, (1..=1300).collect::<Vec<_>>(), "{moved_meanwhile}");
        }
        assert!(verify(&db).is_intact());
    }

    #[test]
    fn a_reader_finds_entries_the_archiver_moves_while_it_reads() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        // Entries of one to seven records, so that chunks end inside them.
        let sizes: Vec<u64> = (0..330).map(|i| i % 7 + 1).collect();
        rounds(&db, &trail, &sizes);
        let n = sizes.iter().sum::<u64>();
        for (from, moved_meanwhile) in [(1, 700usize), (5, 300), (1, usize::MAX)] {
            let mut reader = trail.iter_range(from, n);
            let mut seqs: Vec<u64> = reader
                .by_ref()
                .take(archive::CHUNK + 3)
                .map(|r| r.unwrap().seq)
                .collect();
            trail.archive(moved_meanwhile).unwrap();
            seqs.extend(reader.map(|r| r.unwrap().seq));
            assert_eq!(seqs, (from..=n).collect::<Vec<_>>(), "{moved_meanwhile}");
        }
        assert_intact(&db, n);
    }

    #[test]
    fn entries_left_in_the_database_after_their_move_are_removed_at_start() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3, 4, 2, 5]);
        let saved: Vec<(sled::IVec, sled::IVec)> =
            tree(&db).iter().take(2).map(|e| e.unwrap()).collect();
        assert_eq!(trail.archive(7).unwrap(), 7);
        drop(trail);
        // The mark moved, then the crash came before the entries left the database.
        for (k, v) in &saved {
            tree(&db).insert(k, v).unwrap();
        }
        assert_leftovers_removed_at_start(&db, 8, 14);
    }

    /// The trail in `db`, reopened over what a crash left in the database after its
    /// move: the database starts at `first_left`, and records `1..=head` read and verify.
    fn assert_leftovers_removed_at_start(db: &sled::Db, first_left: u64, head: u64) {
        let trail = AuditTrail::open(db, &adir(), key()).unwrap();
        assert_eq!(
            tree(db).first().unwrap().map(|(k, _)| key_seq(&k)),
            Some(Some(first_left))
        );
        assert_eq!(trail.head().seq, head);
        let all: Vec<u64> = trail.iter_range(1, head).map(|r| r.unwrap().seq).collect();
        assert_eq!(all, (1..=head).collect::<Vec<_>>());
        assert_intact(db, head);
    }

    #[test]
    fn damaged_entries_end_a_read_instead_of_repeating_it() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        rounds(&db, &trail, &[3]);
        // The last seq there is, holding many records' worth; and many keys that are no
        // seq.
        let many = vec![b"{}".to_vec(); 2 * archive::CHUNK].join(&b'\n');
        tree(&db).insert(seq_key(u64::MAX), many).unwrap();
        for i in 0..2 * archive::CHUNK as u32 {
            let mut k = seq_key(10).to_vec();
            k.extend(i.to_be_bytes());
            tree(&db).insert(k, b"x".to_vec()).unwrap();
        }
        let report = verify(&db);
        assert!(!report.is_intact());
        assert!(
            report.problems.len() < 4 * archive::CHUNK,
            "{}",
            report.problems.len()
        );
        drop(trail);
    }

    #[test]
    fn every_archived_record_is_found_whatever_the_lengths_of_its_neighbours() {
        let (_dir, db) = db();
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        let parties = [B, C, "00000001000000000004", "00000001000000000005"];
        for i in 1..=300u64 {
            // Lines of four lengths, in an order that is not a cycle.
            let n = usize::try_from((i * 7 + i / 5) % 4).unwrap() + 1;
            let e = entry(i).counterparties(parties[..n].iter().copied());
            trail.append(e, secs(i as i64)).unwrap();
        }
        assert_eq!(trail.archive(1000).unwrap(), 300);
        for seq in 1..=300 {
            assert_eq!(trail.get(seq).unwrap().unwrap().seq, seq);
            let from: Vec<u64> = trail
                .iter_range(seq, (seq + 2).min(300))
                .map(|r| r.unwrap().seq)
                .collect();
            assert_eq!(from, (seq..=(seq + 2).min(300)).collect::<Vec<_>>());
        }
        assert!(verify(&db).is_intact());
    }

    #[test]
    fn a_reader_that_went_on_in_the_database_finds_what_moved_after() {
        let (_dir, db) = db();
        let trail = filled(&db, 2000);
        trail.archive(100).unwrap();
        let mut reader = trail.iter_range(1, 2000);
        // The archived hundred from the file, then a whole batch from the database ...
        let mut seqs: Vec<u64> = reader
            .by_ref()
            .take(100 + archive::CHUNK)
            .map(|r| r.unwrap().seq)
            .collect();
        // ... and then the archiver moves past where the reader is.
        trail.archive(1000).unwrap();
        seqs.extend(reader.map(|r| r.unwrap().seq));
        assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());
    }

    #[test]
    fn an_archive_beside_a_database_without_its_mark_is_refused() {
        let (dir, db) = db();
        let trail = filled(&db, 10);
        trail.archive(100).unwrap();
        drop((trail, db));
        // Another database beside the archive.
        let other = sled::open(dir.path().join("other")).unwrap();
        let refused = AuditTrail::open(&other, &adir(), key()).unwrap_err();
        assert!(
            matches!(&refused, AuditError::Corrupt { reason, .. } if reason.contains("no audit archive mark")),
            "{refused}"
        );
        assert_eq!(
            std::fs::read_to_string(archive_file())
                .unwrap()
                .lines()
                .count(),
            10
        );
    }

    #[test]
    fn a_trail_archived_whole_reopens_at_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let archive = dir.path().join("audit");
        let head = {
            let db = sled::open(&path).unwrap();
            let trail = AuditTrail::open(&db, &archive, key()).unwrap();
            for i in 1..=10 {
                trail.append(entry(i), secs(i as i64)).unwrap();
            }
            assert_eq!(trail.archive(100).unwrap(), 10);
            trail.checkpoint(secs(11)).unwrap();
            db.flush().unwrap();
            trail.head()
        };
        let db = reopen(&path);
        let trail = AuditTrail::open(&db, &archive, key()).unwrap();
        assert_eq!(trail.head(), head);
        assert_eq!(trail.archive(100).unwrap(), 1);
        drop(trail);
        // Head and checkpoint from the file alone.
        let trail = AuditTrail::open(&db, &archive, key()).unwrap();
        assert_eq!(trail.head(), head);
        let r = trail.append(entry(12), secs(12)).unwrap();
        assert_eq!((r.seq, r.prev_hash.as_str()), (12, head.hash.as_str()));
        let report = verify_chain(&db, &archive, &key().verifying_key()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!((report.records, report.checkpoints), (12, 1));
    }

    #[test]
    fn a_crash_between_the_archivers_two_steps_is_cut_back() {
        let (_dir, db) = db();
        let trail = filled(&db, 20);
        trail.archive(5).unwrap();
        let mark = trail.archive_of().mark();
        // Step 1 of the move of 6..=10 ran (the lines are in the file), step 2 did not.
        let mut lines = Vec::new();
        for seq in 6..=10 {
            lines.extend_from_slice(&tree(&db).get(seq_key(seq)).unwrap().unwrap());
            lines.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(archive_file())
            .unwrap();
        std::io::Write::write_all(&mut f, &lines).unwrap();
        drop((f, trail));
        // Readers stop at the mark; the start cuts the file back to it.
        assert_intact(&db, 20);
        let trail = AuditTrail::open(&db, &adir(), key()).unwrap();
        assert_eq!(std::fs::metadata(archive_file()).unwrap().len(), mark.len);
        assert_eq!(trail.archive(100).unwrap(), 15);
        assert_intact(&db, 20);
    }

    #[test]
    fn records_left_in_the_database_after_their_move_are_removed_at_start() {
        let (_dir, db) = db();
        let trail = filled(&db, 20);
        let saved: Vec<(u64, AuditRecord)> = (1..=8).map(|s| (s, stored(&db, s))).collect();
        trail.archive(8).unwrap();
        drop(trail);
        // The mark moved, then the crash came before the records left the database.
        for (_, record) in &saved {
            store(&db, record);
        }
        assert_leftovers_removed_at_start(&db, 9, 20);
    }

    #[test]
    fn a_mark_that_names_records_but_no_bytes_is_refused() {
        let (_dir, db) = db();
        drop(filled(&db, 3));
        let tree = db.open_tree(ARCHIVE_TREE).unwrap();
        Archive::write_mark(&tree, &Mark { seq: 3, len: 0 }).unwrap();
        let refused = AuditTrail::open(&db, &adir(), key()).unwrap_err();
        assert!(
            matches!(&refused, AuditError::Corrupt { seq: 3, reason } if reason.contains("no bytes")),
            "{refused}"
        );
        assert!(verify_chain(&db, &adir(), &key().verifying_key()).is_err());
    }

    #[test]
    fn an_archive_shorter_than_its_mark_is_refused() {
        let (_dir, db) = db();
        let trail = filled(&db, 10);
        trail.archive(100).unwrap();
        let len = trail.archive_of().mark().len;
        drop(trail);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(archive_file())
            .unwrap();
        f.set_len(len - 10).unwrap();
        let refused = |e: AuditError| matches!(e, AuditError::Corrupt { seq: 10, ref reason } if reason.contains("archived records are missing"));
        assert!(refused(AuditTrail::open(&db, &adir(), key()).unwrap_err()));
        assert!(refused(
            verify_chain(&db, &adir(), &key().verifying_key()).unwrap_err()
        ));
    }

    #[test]
    fn verify_detects_an_edited_archived_record() {
        let (_dir, db) = db();
        let trail = filled(&db, 10);
        trail.archive(100).unwrap();
        drop(trail);
        let text = std::fs::read_to_string(archive_file()).unwrap();
        let edited = text.replacen(B, C, 1);
        assert_eq!(edited.len(), text.len());
        std::fs::write(archive_file(), edited).unwrap();
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(1, ProblemKind::Altered)]);
    }

    #[test]
    fn verify_detects_an_edited_record() {
        let (_dir, db) = db();
        drop(filled(&db, 12));
        let mut raw: serde_json::Value =
            serde_json::from_slice(&tree(&db).get(seq_key(7)).unwrap().unwrap()).unwrap();
        raw["counterparties"] = serde_json::json!([B]);
        tree(&db)
            .insert(seq_key(7), serde_json::to_vec(&raw).unwrap())
            .unwrap();
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(7, ProblemKind::Altered)]);
        assert_eq!(report.problems[0].message, "record 7 was altered");
    }

    #[test]
    fn verify_detects_a_reformatted_record() {
        let (_dir, db) = db();
        drop(filled(&db, 4));
        // Same content, other bytes.
        tree(&db)
            .insert(
                seq_key(2),
                serde_json::to_vec_pretty(&stored(&db, 2)).unwrap(),
            )
            .unwrap();
        assert_eq!(kinds(&verify(&db)), vec![(2, ProblemKind::Altered)]);
    }

    #[test]
    fn verify_detects_a_removed_record() {
        let (_dir, db) = db();
        drop(filled(&db, 12));
        tree(&db).remove(seq_key(7)).unwrap();
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(7, ProblemKind::Missing)]);
        assert_eq!(report.problems[0].message, "record 7 is missing");
        assert_eq!(report.first_broken(), Some(7));
        assert_eq!(report.records, 11);
    }

    #[test]
    fn verify_detects_a_removed_first_record() {
        let (_dir, db) = db();
        drop(filled(&db, 3));
        tree(&db).remove(seq_key(1)).unwrap();
        assert_eq!(kinds(&verify(&db)), vec![(1, ProblemKind::Missing)]);
    }

    #[test]
    fn verify_detects_a_reordered_pair() {
        let (_dir, db) = db();
        drop(filled(&db, 12));
        let t = tree(&db);
        let five = t.get(seq_key(5)).unwrap().unwrap();
        let six = t.get(seq_key(6)).unwrap().unwrap();
        t.insert(seq_key(5), six).unwrap();
        t.insert(seq_key(6), five).unwrap();
        let report = verify(&db);
        assert_eq!(report.first_broken(), Some(5));
        let k = kinds(&report);
        assert!(k.contains(&(5, ProblemKind::Misplaced)), "{report}");
        assert!(k.contains(&(6, ProblemKind::Misplaced)), "{report}");
        assert!(k.iter().all(|(s, _)| (5..=7).contains(s)), "{report}");
    }

    #[test]
    fn verify_detects_an_edit_with_a_recomputed_hash() {
        let (_dir, db) = db();
        drop(filled(&db, 12));
        let mut r = stored(&db, 7);
        r.outcome = Outcome::Refused;
        r.hash = r.compute_hash().unwrap();
        store(&db, &r);
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(8, ProblemKind::Unlinked)]);
        assert_eq!(
            report.problems[0].message,
            "record 8 does not follow record 7"
        );
    }

    #[test]
    fn verify_detects_history_rewritten_after_a_checkpoint() {
        let (_dir, db) = db();
        let trail = filled(&db, 9);
        let cp = trail
            .checkpoint(t0() + chrono::Duration::minutes(1))
            .unwrap();
        assert_eq!(cp.seq, 10);
        for i in 11..=15 {
            trail
                .append(entry(i), t0() + chrono::Duration::minutes(2))
                .unwrap();
        }
        drop(trail);
        // Rewrite everything from record 4 on, keeping the chain itself consistent.
        let mut prev = stored(&db, 3).hash;
        for seq in 4..=15 {
            let mut r = stored(&db, seq);
            r.case_ref = Some("case-rewritten".into());
            r.prev_hash = prev;
            r.hash = r.compute_hash().unwrap();
            prev = r.hash.clone();
            store(&db, &r);
        }
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(10, ProblemKind::CheckpointMismatch)]);
        // And the broker will not extend it.
        assert!(matches!(
            AuditTrail::open(&db, &adir(), key()),
            Err(AuditError::Corrupt { seq: 10, .. })
        ));
    }

    #[test]
    fn verify_detects_a_forged_checkpoint() {
        let (_dir, db) = db();
        let trail = filled(&db, 4);
        let cp = trail.checkpoint(t0()).unwrap();
        drop(trail);
        let mut forged = cp.clone();
        forged.time = cp.time + chrono::Duration::days(1);
        db.open_tree(CHECKPOINTS_TREE)
            .unwrap()
            .insert(seq_key(cp.seq), serde_json::to_vec(&forged).unwrap())
            .unwrap();
        let report = verify(&db);
        assert_eq!(
            kinds(&report),
            vec![(5, ProblemKind::CheckpointBadSignature)]
        );
        // Under another broker key, every checkpoint is bad.
        let report = verify_chain(&db, &adir(), &other_key().verifying_key()).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(5, ProblemKind::CheckpointBadSignature)]
        );
    }

    #[test]
    fn verify_detects_a_truncated_tail_covered_by_a_checkpoint() {
        let (_dir, db) = db();
        let trail = filled(&db, 7);
        let cp = trail.checkpoint(t0()).unwrap();
        assert_eq!(cp.seq, 8);
        drop(trail);
        tree(&db).remove(seq_key(7)).unwrap();
        tree(&db).remove(seq_key(8)).unwrap();
        let report = verify(&db);
        assert_eq!(kinds(&report), vec![(7, ProblemKind::Missing)]);
        assert!(AuditTrail::open(&db, &adir(), key()).is_err());
    }

    #[test]
    fn verify_reports_garbage_without_panicking() {
        let (_dir, db) = db();
        drop(filled(&db, 6));
        let t = tree(&db);
        t.insert(seq_key(3), b"\xff\x00garbage".to_vec()).unwrap();
        t.insert(b"bad", b"{}".to_vec()).unwrap();
        db.open_tree(CHECKPOINTS_TREE)
            .unwrap()
            .insert(seq_key(2), b"[]".to_vec())
            .unwrap();
        let report = verify(&db);
        let k = kinds(&report);
        assert!(k.contains(&(3, ProblemKind::Unreadable)), "{report}");
        assert!(
            k.contains(&(2, ProblemKind::CheckpointUnreadable)),
            "{report}"
        );
        // Record 4 cannot be linked to an unreadable record 3, and is not blamed for it.
        assert!(!k.iter().any(|(s, _)| *s == 4), "{report}");
    }

    #[test]
    fn verify_of_an_empty_database_is_intact_and_read_only() {
        let (_dir, db) = db();
        let report = verify(&db);
        assert!(report.is_intact());
        assert_eq!(report.records, 0);
        assert_eq!(db.tree_names().len(), 1, "only sled's default tree");
    }
}
