//! The spool: message bodies (the sealed envelopes) in append-only segment files beside
//! the sled database.
//!
//! A body is written once, read at each fetch and at its receipt, and deleted when every
//! recipient has receipted it or its TTL has passed. In sled each body was rewritten with
//! every change to its tree's node and kept in sled's in-memory bookkeeping until sled
//! cleaned its log; in a segment file it is written once, in a batch with the bodies
//! accepted with it, and made durable with one `fdatasync`.
//!
//! # Layout
//!
//! `<data dir>/spool/<segment, 8 hex digits>.seg`. A segment is a sequence of records:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `KPS1` |
//! | 4 | body length, u32 big-endian |
//! | 16 | message id |
//! | 4 | CRC-32 of the message id and the body |
//! | n | the body |
//!
//! Every start of the broker begins a new segment, and a segment is closed when it passes
//! [`SEGMENT_BYTES`]. The active segment is written with zeros ahead of its appends
//! ([`PREWRITE_BYTES`]), so a segment ends in zeros where its records end: a walk of it
//! stops at the first header without a magic. Where a body is ([`BodyAt`]) is kept in the
//! message's metadata in sled, which is written after the body is on disk; a body whose
//! metadata never landed is not referenced and goes with its segment.
//!
//! # Deletion
//!
//! Deleting a body overwrites its bytes and checksum with zeros in place and its magic
//! with `KPS0`; its length and id (no content) stay, so the segment can still be walked. The overwrite is
//! made durable by the next [`Spool::sync`] (the store's group commit). A closed segment
//! whose bodies are all deleted is removed. Which bodies a segment still holds is counted
//! in memory and counted again from the metadata at every start.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

pub use ketenpost_core::message::BodyAt;

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// How far the active segment is written with zeros ahead of its appends (see
/// [`Spool::sync`]): an append then overwrites bytes the file already has, and the
/// `fdatasync` that makes it durable writes data only. An append that grows the file
/// makes that `fdatasync` commit the file system's journal too (the file's new size):
/// about half again as long at the median (`cargo bench -p ketenpost-broker --bench
/// spool`).
///
/// The zeros are written by the sync after the appends that used up half the stretch, so
/// that sync writes them to the disk too: it takes as much longer as the stretch is long.
/// 64 KiB adds about 0.15 ms to one sync in some 25 at a low rate; 1 MiB (before) added
/// about 3 ms to one in some 400: at 1,000 messages a second a 3 ms sync twice a second
/// (BENCHMARKS.md, "The archiver's moves bounded, zeros written ahead in short
/// stretches").
pub const PREWRITE_BYTES: u64 = 64 * 1024;

/// [`Spool::append_all`] writes at most this much at a time (more when one body is
/// longer): a batch of large bodies is not copied into one buffer whole.
pub const APPEND_WRITE_BYTES: usize = 1 << 20;

const MAGIC: &[u8; 4] = b"KPS1";
/// The magic of a deleted record.
pub const DELETED: &[u8; 4] = b"KPS0";
/// Magic, length, id, checksum.
const HEADER: u64 = 4 + 4 + 16 + 4;

/// What can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file system failed.
    #[error("spool {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A record does not hold what its metadata says (corruption, or deleted already).
    #[error("spool record at segment {segment} offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        segment: u32,
        /// The offset.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body is larger than a record can say.
    #[error("a body of {0} bytes is larger than the spool takes")]
    TooLarge(usize),
    /// An fsync of the spool failed earlier: the kernel may have dropped what it had not
    /// written, so the spool takes no more bodies (the store is poisoned too).
    #[error("the spool is unusable after a failed fsync: {0}")]
    Failed(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError {
    move |source| SpoolError::Io { what, source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of the guarded state is a single assignment or map operation: a panic
    // elsewhere cannot leave it half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    segment: u32,
    file: Arc<File>,
    /// Where the next record goes.
    len: u64,
    /// How much of the file is written (records, then zeros): never less than `len`.
    written: u64,
}

/// The spool of one broker. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    active: Mutex<Active>,
    files: RwLock<HashMap<u32, Arc<File>>>,
    /// Bodies still held per segment.
    live: Mutex<HashMap<u32, u64>>,
    /// The segments deletions were written to since the last sync: a sync makes those
    /// durable and leaves the other closed segments alone (a deletion-free segment's
    /// `fdatasync` still costs the disk a cache flush).
    dirty: Mutex<BTreeSet<u32>>,
    /// Held while a body is deleted.
    deleting: Mutex<()>,
    /// Set when an fsync failed; then no more appends or syncs succeed.
    failed: std::sync::OnceLock<String>,
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08x}.seg"))
}

fn segment_number(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

fn crc(id: &[u8; 16], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(id);
    h.update(body);
    h.finalize()
}

/// Create segment `segment`, written with zeros ahead (see [`Spool::prewrite_ahead`]):
/// the file and how much of it is written.
fn create_segment(dir: &Path, segment: u32) -> Result<(File, u64), SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, segment))
        .map_err(io("create segment"))?;
    // Made durable by the spool's next sync, with the first records. Without them (a full
    // disk) the segment works as well, only its syncs cost more: a broker on a full disk
    // still starts, delivers and deletes.
    let written = match prewrite(&file, 0) {
        Ok(()) => PREWRITE_BYTES,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot write a new spool segment ahead");
            0
        }
    };
    // The new file's directory entry must survive a crash as well as its contents.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync spool directory"))?;
    Ok((file, written))
}

/// Write [`PREWRITE_BYTES`] zeros into `file` at `at`, where no record is yet.
fn prewrite(file: &File, at: u64) -> Result<(), SpoolError> {
    write_zeros(file, at, PREWRITE_BYTES).map_err(io("prewrite segment"))
}

/// Zeros to write from, never written to: the kernel reads them as the shared zero page.
/// (A fresh `vec![0; len]` for each write cost twice: the allocator hands out a large
/// zeroed block as untouched pages, the write maps them to the zero page, and whatever
/// reuses the block next takes a copy-on-write fault, with a TLB flush on every core, on
/// each of its pages. At saturation that was some 4 % of the broker's time.)
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Write `len` zeros into `file` at `at`.
fn write_zeros(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at + done)?;
        done += n;
    }
    Ok(())
}

impl Spool {
    /// Open the spool in `dir` (created if missing) and begin a new segment.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io("create spool directory"))?;
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io("list spool directory"))? {
            let entry = entry.map_err(io("list spool directory"))?;
            let Some(segment) = entry.file_name().to_str().and_then(segment_number) else {
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .map_err(io("open segment"))?;
            files.insert(segment, Arc::new(file));
        }
        let segment = files.keys().max().map_or(1, |m| m.saturating_add(1));
        let (file, written) = create_segment(dir, segment)?;
        let file = Arc::new(file);
        files.insert(segment, file.clone());
        Ok(Spool {
            dir: dir.to_owned(),
            active: Mutex::new(Active {
                segment,
                file,
                len: 0,
                written,
            }),
            files: RwLock::new(files),
            live: Mutex::new(HashMap::new()),
            dirty: Mutex::new(BTreeSet::new()),
            deleting: Mutex::new(()),
            failed: std::sync::OnceLock::new(),
        })
    }

    /// `Err(Failed)` once an fsync failed.
    fn usable(&self) -> Result<(), SpoolError> {
        match self.failed.get() {
            Some(why) => Err(SpoolError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Make the spool unusable as a failed fsync does (for tests of what follows one).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, why: &str) {
        let _ = self.failed.set(why.to_owned());
    }

    /// An fsync failed: remember it, so no later sync can report success for pages the
    /// kernel may have dropped.
    fn sync_failed(&self, what: &'static str, e: std::io::Error) -> SpoolError {
        let _ = self.failed.set(format!("{what}: {e}"));
        SpoolError::Io { what, source: e }
    }

    /// Count a body found in the metadata at start-up (see [`Spool::remove_empty`]).
    pub fn register(&self, at: &BodyAt) {
        self.register_count(at.segment, 1);
    }

    /// Count `n` bodies of `segment` found in the metadata at start-up.
    pub fn register_count(&self, segment: u32, n: u64) {
        if n > 0 {
            *lock(&self.live).entry(segment).or_insert(0) += n;
        }
    }

    /// How many bodies each segment holds now, by segment.
    pub fn held(&self) -> HashMap<u32, u64> {
        lock(&self.live).clone()
    }

    /// Uncount a body found in the metadata that the spool does not hold (see
    /// [`Spool::register`]).
    pub fn unregister(&self, at: &BodyAt) {
        let mut live = lock(&self.live);
        if let Some(n) = live.get_mut(&at.segment) {
            *n = n.saturating_sub(1);
        }
    }

    /// Remove every closed segment that holds no body: run once after every body in the
    /// metadata was [registered](Spool::register). Returns how many were removed.
    pub fn remove_empty(&self) -> Result<usize, SpoolError> {
        let active = lock(&self.active).segment;
        let segments: Vec<u32> = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        let live = lock(&self.live).clone();
        let mut removed = 0;
        for segment in segments {
            if segment != active && live.get(&segment).copied().unwrap_or(0) == 0 {
                self.remove_segment(segment)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Append a body. It is durable after the next [`Spool::sync`] (the store's spool
    /// stage syncs once for every batch of appends).
    pub fn append(&self, id: &[u8; 16], body: &[u8]) -> Result<BodyAt, SpoolError> {
        // One place for each body given.
        let mut at = self.append_all(&[(id, body)])?;
        at.pop().ok_or(SpoolError::Io {
            what: "append body",
            source: std::io::Error::other("no place given for the body"),
        })
    }

    /// Append bodies, in order, into the active segment with one write (one per
    /// [`APPEND_WRITE_BYTES`]): where each is, in the same order. As with [`Spool::append`]
    /// the segment is closed first when it has passed [`SEGMENT_BYTES`], and a segment may
    /// pass it by the last append (here, the last batch). A failed write fails them all:
    /// what was written is referenced by nothing, and the next appends write over it.
    pub fn append_all(&self, bodies: &[(&[u8; 16], &[u8])]) -> Result<Vec<BodyAt>, SpoolError> {
        self.usable()?;
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let mut lens = Vec::with_capacity(bodies.len());
        for (_, body) in bodies {
            lens.push(u32::try_from(body.len()).map_err(|_| SpoolError::TooLarge(body.len()))?);
        }
        let total: usize = bodies.iter().map(|(_, b)| b.len() + HEADER as usize).sum();
        let mut records = Vec::with_capacity(total.min(APPEND_WRITE_BYTES));
        let mut out = Vec::with_capacity(bodies.len());
        let mut active = lock(&self.active);
        if active.len >= SEGMENT_BYTES {
            self.rotate(&mut active)?;
        }
        let start = active.len;
        let written = (|| {
            // Where `records` go: the records gathered since.
            let mut from = active.len;
            for ((id, body), len) in bodies.iter().zip(lens) {
                let record = HEADER + u64::from(len);
                if !records.is_empty() && records.len() as u64 + record > APPEND_WRITE_BYTES as u64
                {
                    active.file.write_all_at(&records, from)?;
                    records.clear();
                    from = active.len;
                }
                out.push(BodyAt {
                    segment: active.segment,
                    offset: active.len,
                    len,
                });
                records.extend_from_slice(MAGIC);
                records.extend_from_slice(&len.to_be_bytes());
                records.extend_from_slice(id.as_slice());
                records.extend_from_slice(&crc(id, body).to_be_bytes());
                records.extend_from_slice(body);
                active.len += record;
            }
            active.file.write_all_at(&records, from)?;
            // A write that fails after its bytes reached the file, as a full disk can.
            if crate::failpoint::fault("spool", "append") {
                return Err(std::io::Error::other("injected fault"));
            }
            Ok(())
        })();
        if let Err(e) = written {
            // What the failed write may have put there goes, so the segment still ends in
            // zeros where its records end; should this write fail too, the next append
            // overwrites from `start`, and the segment goes once its bodies are gone.
            if let Err(z) = write_zeros(&active.file, start, active.len - start) {
                tracing::error!(cause = %z, "cannot zero what a failed append wrote");
            }
            active.len = start;
            return Err(io("append body")(e));
        }
        active.written = active.written.max(active.len);
        // Counted before the active segment can change, so a rotation never removes them.
        let mut live = lock(&self.live);
        for at in &out {
            *live.entry(at.segment).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Close the active segment and begin the next. The closed one is synced first, so
    /// that [`Spool::sync`] only ever needs the active segment for appends.
    fn rotate(&self, active: &mut Active) -> Result<(), SpoolError> {
        active
            .file
            .sync_data()
            .map_err(|e| self.sync_failed("sync segment", e))?;
        let segment = active.segment.saturating_add(1);
        let (file, written) = create_segment(&self.dir, segment)?;
        let file = Arc::new(file);
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment, file.clone());
        let closed = std::mem::replace(
            active,
            Active {
                segment,
                file,
                len: 0,
                written,
            },
        );
        if lock(&self.live).get(&closed.segment).copied().unwrap_or(0) == 0 {
            self.remove_segment(closed.segment)?;
        }
        Ok(())
    }

    /// Copy every segment into `dest` (an existing, empty folder) as it is now, for a
    /// backup: appends and deletions wait while the copy runs, so no segment is copied
    /// half-written. Each copy is synced. Returns the bytes copied.
    pub fn copy_to(&self, dest: &Path) -> Result<u64, SpoolError> {
        self.usable()?;
        let _appends = lock(&self.active);
        let _deletions = lock(&self.deleting);
        let segments: Vec<u32> = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        let mut bytes = 0;
        for segment in segments {
            let from = segment_path(&self.dir, segment);
            let to = segment_path(dest, segment);
            bytes += std::fs::copy(&from, &to).map_err(io("copy segment"))?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io("sync copied segment"))?;
        }
        File::open(dest)
            .and_then(|d| d.sync_all())
            .map_err(io("sync backup spool directory"))?;
        Ok(bytes)
    }

    /// Make every append and deletion so far durable.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.usable()?;
        // Taken before the active segment is synced: a deletion written after this is
        // noted for the next sync, one written before is synced below or with the active
        // segment.
        let mut dirty = std::mem::take(&mut *lock(&self.dirty));
        let (segment, file) = {
            let active = lock(&self.active);
            (active.segment, active.file.clone())
        };
        if let Err(e) = file.sync_data() {
            // The deletions are not durable: they stay to sync (and the spool is unusable
            // from now on anyway).
            lock(&self.dirty).append(&mut dirty);
            return Err(self.sync_failed("sync segment", e));
        }
        dirty.remove(&segment);
        self.prewrite_ahead();
        while let Some(s) = dirty.pop_first() {
            // A segment removed meanwhile has nothing left to sync.
            let Some(f) = self.file(s) else { continue };
            if let Err(e) = f.sync_data() {
                dirty.insert(s);
                lock(&self.dirty).append(&mut dirty);
                return Err(self.sync_failed("sync deletion", e));
            }
        }
        Ok(())
    }

    /// Keep the active segment written with zeros at least half of [`PREWRITE_BYTES`]
    /// ahead of its appends: the zeros are made durable by the next sync, once for that
    /// stretch of appends. A failure here (a full disk) costs only speed: the next append
    /// grows the file, or fails on its own account.
    fn prewrite_ahead(&self) {
        let mut active = lock(&self.active);
        if active.written - active.len >= PREWRITE_BYTES / 2 {
            return;
        }
        // Under the lock: no append writes here meanwhile.
        match prewrite(&active.file, active.written) {
            Ok(()) => active.written += PREWRITE_BYTES,
            Err(e) => tracing::warn!(cause = %e, "cannot write the spool segment ahead"),
        }
    }

    fn file(&self, segment: u32) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&segment)
            .cloned()
    }

    /// Read the body of message `id` at `at`, checking that the record is that message's
    /// and intact.
    pub fn read(&self, at: &BodyAt, id: &[u8; 16]) -> Result<Vec<u8>, SpoolError> {
        let corrupt = |reason| SpoolError::Corrupt {
            segment: at.segment,
            offset: at.offset,
            reason,
        };
        let file = self.file(at.segment).ok_or(corrupt("no such segment"))?;
        let mut buf = vec![0u8; HEADER as usize + at.len as usize];
        file.read_exact_at(&mut buf, at.offset)
            .map_err(io("read body"))?;
        let (header, body) = buf.split_at(HEADER as usize);
        if header.get(..4) != Some(MAGIC.as_slice())
            || header.get(4..8) != Some(at.len.to_be_bytes().as_slice())
            || header.get(8..24) != Some(id.as_slice())
        {
            return Err(corrupt("the record is not this message's"));
        }
        if header.get(24..28) != Some(crc(id, body).to_be_bytes().as_slice()) {
            return Err(corrupt("checksum mismatch (deleted or damaged)"));
        }
        Ok(body.to_vec())
    }

    /// Delete the body at `at`: its bytes and checksum are overwritten with zeros, and its
    /// segment is removed once it is closed and holds no other body.
    ///
    /// Deleting is idempotent: the record's magic becomes [`DELETED`], and a record that
    /// is not a live record of message `id` is left alone, so a body deleted twice (a
    /// receipt racing the expiry sweep) is counted once.
    pub fn delete(&self, at: &BodyAt, id: &[u8; 16]) -> Result<(), SpoolError> {
        let _one_at_a_time = lock(&self.deleting);
        if !self.zero(at, id)? {
            return Ok(());
        }
        // Under `active` (the order `append` takes them in), so no append can land in the
        // segment between counting it empty and removing it.
        let active = lock(&self.active);
        let empty = {
            let mut live = lock(&self.live);
            let n = live.entry(at.segment).or_insert(0);
            *n = n.saturating_sub(1);
            *n == 0
        };
        let remove = empty && active.segment != at.segment;
        drop(active);
        if remove {
            self.remove_segment(at.segment)?;
        }
        Ok(())
    }

    /// Overwrite a live record of message `id` at `at` with zeros (magic [`DELETED`]);
    /// `false` when there is no such live record.
    fn zero(&self, at: &BodyAt, id: &[u8; 16]) -> Result<bool, SpoolError> {
        let Some(file) = self.file(at.segment) else {
            return Ok(false);
        };
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, at.offset)
            .map_err(io("read body header"))?;
        if header.get(..4) != Some(MAGIC.as_slice()) || header.get(8..24) != Some(id.as_slice()) {
            return Ok(false);
        }
        write_zeros(&file, at.offset + HEADER - 4, 4 + u64::from(at.len))
            .map_err(io("delete body"))?;
        file.write_all_at(DELETED, at.offset)
            .map_err(io("delete body"))?;
        lock(&self.dirty).insert(at.segment);
        Ok(true)
    }

    /// Call `visit` with every live (not deleted) record in the closed segments that are
    /// kept, in order: where it is and whose it is. Nothing is collected, so a spool with
    /// a million bodies costs no memory here. The zeros written ahead of the appends end
    /// the walk of a segment, as does a record cut short at its end. An append that a
    /// crash interrupted (its metadata therefore never landed) may read as a whole record
    /// ending in the zeros: it is visited like any other record no metadata refers to.
    /// `visit` may destroy the record it is given ([`Spool::destroy_unreferenced`]).
    /// Start-up only.
    pub fn visit_live_records<E: From<SpoolError>>(
        &self,
        visit: impl FnMut(BodyAt, [u8; 16]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.visit_live_records_in(|_| true, visit)
    }

    /// [`Spool::visit_live_records`] in the closed segments `which` selects.
    pub fn visit_live_records_in<E: From<SpoolError>>(
        &self,
        which: impl Fn(u32) -> bool,
        mut visit: impl FnMut(BodyAt, [u8; 16]) -> Result<(), E>,
    ) -> Result<(), E> {
        let active = lock(&self.active).segment;
        let mut files: Vec<(u32, Arc<File>)> = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(s, _)| **s != active && which(**s))
            .map(|(s, f)| (*s, f.clone()))
            .collect();
        files.sort_by_key(|(s, _)| *s);
        for (segment, file) in files {
            let size = file.metadata().map_err(io("read segment size"))?.len();
            let mut offset = 0u64;
            let mut header = [0u8; HEADER as usize];
            while offset + HEADER <= size {
                file.read_exact_at(&mut header, offset)
                    .map_err(io("read body header"))?;
                let (magic, rest) = header.split_at(4);
                let (len, rest) = rest.split_at(4);
                let len = u32::from_be_bytes(<[u8; 4]>::try_from(len).unwrap_or_default());
                let Some(id) = rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                    break;
                };
                if magic != MAGIC.as_slice() && magic != DELETED.as_slice() {
                    break;
                }
                if offset + HEADER + u64::from(len) > size {
                    break;
                }
                let live = magic == MAGIC.as_slice();
                let at = BodyAt {
                    segment,
                    offset,
                    len,
                };
                offset += HEADER + u64::from(len);
                if live {
                    visit(at, id)?;
                }
            }
        }
        Ok(())
    }

    /// Destroy a live record that no metadata refers to (found by [`Spool::visit_live_records`]
    /// at start-up): zeroed like a deleted body, without counting it, since it never was.
    pub fn destroy_unreferenced(&self, at: &BodyAt, id: &[u8; 16]) -> Result<bool, SpoolError> {
        let _one_at_a_time = lock(&self.deleting);
        self.zero(at, id)
    }

    fn remove_segment(&self, segment: u32) -> Result<(), SpoolError> {
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&segment);
        lock(&self.live).remove(&segment);
        match std::fs::remove_file(segment_path(&self.dir, segment)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::Io {
                what: "remove segment",
                source: e,
            }),
        }
    }

    /// Number of bodies held.
    pub fn bodies(&self) -> u64 {
        lock(&self.live).values().sum()
    }

    /// Number of segment files.
    pub fn segments(&self) -> usize {
        self.files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// Whether `needle` occurs in any file of `dir`.
    fn on_disk(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    /// Every live record a start-up walk visits, in order.
    fn walk(spool: &Spool) -> Vec<(BodyAt, [u8; 16])> {
        let mut walked = Vec::new();
        spool
            .visit_live_records(|a, i| {
                walked.push((a, i));
                Ok::<(), SpoolError>(())
            })
            .unwrap();
        walked
    }

    #[test]
    fn a_body_reads_back_and_only_under_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = spool.append(&id(1), b"first body").unwrap();
        let b = spool.append(&id(2), b"second, longer body").unwrap();
        spool.sync().unwrap();
        assert_eq!(spool.read(&a, &id(1)).unwrap(), b"first body");
        assert_eq!(spool.read(&b, &id(2)).unwrap(), b"second, longer body");
        assert!(matches!(
            spool.read(&a, &id(2)),
            Err(SpoolError::Corrupt { .. })
        ));
        let shifted = BodyAt {
            offset: a.offset + 1,
            ..a
        };
        assert!(spool.read(&shifted, &id(1)).is_err());
        assert_eq!(spool.bodies(), 2);
    }

    #[test]
    fn a_location_round_trips_through_its_bytes() {
        let at = BodyAt {
            segment: 0x0102_0304,
            offset: 0x0506_0708_090a_0b0c,
            len: 0x0d0e_0f10,
        };
        assert_eq!(BodyAt::from_bytes(&at.to_bytes()), Some(at));
        assert_eq!(BodyAt::from_bytes(&[0u8; 15]), None);
        assert_eq!(BodyAt::from_bytes(&[]), None);
    }

    #[test]
    fn a_damaged_body_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let at = spool.append(&id(1), b"intact body").unwrap();
        spool.sync().unwrap();
        let file = segment_path(dir.path(), at.segment);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = (at.offset + HEADER) as usize + at.len as usize - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
        let err = spool.read(&at, &id(1)).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_deleted_body_is_zeroed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let keep = spool.append(&id(1), b"kept ciphertext").unwrap();
        let gone = spool.append(&id(2), b"deleted ciphertext").unwrap();
        spool.sync().unwrap();
        assert!(on_disk(dir.path(), b"deleted ciphertext"));
        spool.delete(&gone, &id(2)).unwrap();
        // A second delete of the same body changes nothing.
        spool.delete(&gone, &id(2)).unwrap();
        spool.sync().unwrap();
        assert!(!on_disk(dir.path(), b"deleted ciphertext"));
        assert!(spool.read(&gone, &id(2)).is_err());
        assert_eq!(spool.read(&keep, &id(1)).unwrap(), b"kept ciphertext");
        assert_eq!(spool.bodies(), 1);
    }

    #[test]
    fn a_body_longer_than_the_zero_buffer_is_zeroed_whole_and_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // Not a whole number of `ZEROS`, so the last write is a partial one.
        let body = vec![0x5a; 3 * ZEROS.len() + 1234];
        let before = spool.append(&id(1), b"before").unwrap();
        let gone = spool.append(&id(2), &body).unwrap();
        let after = spool.append(&id(3), b"after").unwrap();
        spool.sync().unwrap();
        spool.delete(&gone, &id(2)).unwrap();
        spool.sync().unwrap();
        let file = std::fs::read(segment_path(dir.path(), gone.segment)).unwrap();
        let from = (gone.offset + HEADER - 4) as usize;
        let to = (gone.offset + HEADER) as usize + body.len();
        assert!(file[from..to].iter().all(|b| *b == 0), "the body is zeroed");
        assert_eq!(&file[gone.offset as usize..][..4], DELETED);
        assert_eq!(spool.read(&before, &id(1)).unwrap(), b"before");
        assert_eq!(spool.read(&after, &id(3)).unwrap(), b"after");
        // The zeros written ahead of the records are zeros too.
        let end = (after.offset + HEADER) as usize + b"after".len();
        assert!(file.len() > end);
        assert!(file[end..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_sync_syncs_the_segments_deletions_were_written_to_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        // Three closed segments (each run of the spool begins a new one), two bodies each.
        let mut at = Vec::new();
        for n in 1..=3u8 {
            let spool = Spool::open(dir.path()).unwrap();
            at.push(spool.append(&id(n), b"queued body").unwrap());
            at.push(spool.append(&id(n + 10), b"second body").unwrap());
            spool.sync().unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        for a in &at {
            spool.register(a);
        }
        let active = spool.append(&id(20), b"in the active segment").unwrap();
        spool.delete(&at[2], &id(2)).unwrap();
        spool.delete(&active, &id(20)).unwrap();
        let pending = |s: &Spool| lock(&s.dirty).iter().copied().collect::<Vec<_>>();
        assert_eq!(pending(&spool), [at[2].segment, active.segment]);
        spool.sync().unwrap();
        assert!(pending(&spool).is_empty());
        assert!(!on_disk(dir.path(), b"in the active segment"));
        // A deletion that empties its segment removes it: nothing is left to sync there.
        spool.delete(&at[4], &id(3)).unwrap();
        spool.delete(&at[5], &id(13)).unwrap();
        assert!(!segment_path(dir.path(), at[4].segment).exists());
        spool.sync().unwrap();
        assert!(pending(&spool).is_empty());
        assert_eq!(spool.read(&at[0], &id(1)).unwrap(), b"queued body");
    }

    /// Bodies appended together (in writes of up to `APPEND_WRITE_BYTES`) lie exactly as
    /// when appended one by one: the same places, the same segment bytes, each read back;
    /// and they count as held.
    #[test]
    fn appends_together_lie_as_appends_one_by_one() {
        let (one, together) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bodies: Vec<Vec<u8>> = [5, 300_000, 17, 400_000, 500_000, 1, 1 << 20, 3]
            .iter()
            .enumerate()
            .map(|(i, n)| vec![i as u8 + 1; *n])
            .collect();
        let ids: Vec<[u8; 16]> = (1..=bodies.len() as u8).map(id).collect();
        let a = Spool::open(one.path()).unwrap();
        a.append(&id(99), b"before").unwrap();
        let one_by_one: Vec<BodyAt> = ids
            .iter()
            .zip(&bodies)
            .map(|(i, b)| a.append(i, b).unwrap())
            .collect();
        let b = Spool::open(together.path()).unwrap();
        b.append_all(&[(&id(99), b"before".as_slice())]).unwrap();
        assert!(b.append_all(&[]).unwrap().is_empty());
        let pairs: Vec<(&[u8; 16], &[u8])> = ids
            .iter()
            .zip(&bodies)
            .map(|(i, b)| (i, b.as_slice()))
            .collect();
        let at = b.append_all(&pairs).unwrap();
        assert_eq!(at, one_by_one);
        for ((place, i), body) in at.iter().zip(&ids).zip(&bodies) {
            assert_eq!(&b.read(place, i).unwrap(), body);
        }
        a.sync().unwrap();
        b.sync().unwrap();
        let segment = at[0].segment;
        assert_eq!(
            std::fs::read(segment_path(one.path(), segment)).unwrap(),
            std::fs::read(segment_path(together.path(), segment)).unwrap()
        );
        assert_eq!(
            lock(&b.live).get(&segment).copied(),
            Some(bodies.len() as u64 + 1)
        );
    }

    #[test]
    fn appends_overwrite_zeros_written_ahead_and_a_walk_stops_at_them() {
        let dir = tempfile::tempdir().unwrap();
        let size = |s: u32| {
            std::fs::metadata(segment_path(dir.path(), s))
                .unwrap()
                .len()
        };
        let body = vec![0x5a; (PREWRITE_BYTES / 8) as usize];
        let mut at = Vec::new();
        {
            let spool = Spool::open(dir.path()).unwrap();
            at.push(spool.append(&id(1), b"small").unwrap());
            spool.sync().unwrap();
            // The appends went into the zeros: the file did not grow.
            assert_eq!(size(at[0].segment), PREWRITE_BYTES);
            // Past half of the stretch, a sync writes the next stretch ahead.
            while lock(&spool.active).len < PREWRITE_BYTES / 2 + 1 {
                let n = at.len() as u8 + 1;
                at.push(spool.append(&id(n), &body).unwrap());
            }
            spool.sync().unwrap();
            assert_eq!(size(at[0].segment), 2 * PREWRITE_BYTES);
            // Appends that outrun the zeros grow the file, and the next sync catches up.
            while lock(&spool.active).len < 2 * PREWRITE_BYTES + 1 {
                let n = at.len() as u8 + 1;
                at.push(spool.append(&id(n), &body).unwrap());
            }
            let len = lock(&spool.active).len;
            assert_eq!(size(at[0].segment), len);
            spool.sync().unwrap();
            assert_eq!(size(at[0].segment), len + PREWRITE_BYTES);
        }
        // After a restart the segment is closed: its walk finds every record and stops at
        // the zeros after the last.
        let spool = Spool::open(dir.path()).unwrap();
        let walked = walk(&spool);
        let expected: Vec<_> = at
            .iter()
            .enumerate()
            .map(|(n, a)| (*a, id(n as u8 + 1)))
            .collect();
        assert_eq!(walked, expected);
        assert_eq!(spool.read(&at[0], &id(1)).unwrap(), b"small");
    }

    #[test]
    fn an_append_cut_short_by_a_crash_is_walked_as_a_record_and_destroyed_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, segment) = {
            let spool = Spool::open(dir.path()).unwrap();
            let kept = spool.append(&id(1), b"synced body").unwrap();
            spool.sync().unwrap();
            (kept, kept.segment)
        };
        // What a power loss may leave of an append that was never synced: its header and
        // the first bytes of its body, then the zeros written ahead.
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), segment))
            .unwrap();
        let at = kept.offset + HEADER + u64::from(kept.len);
        let mut torn = Vec::new();
        torn.extend_from_slice(MAGIC);
        torn.extend_from_slice(&100u32.to_be_bytes());
        torn.extend_from_slice(&id(2));
        torn.extend_from_slice(&[0xee; 4]);
        torn.extend_from_slice(b"cut short");
        file.write_all_at(&torn, at).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let walked = walk(&spool);
        let cut = BodyAt {
            segment,
            offset: at,
            len: 100,
        };
        assert_eq!(walked, [(kept, id(1)), (cut, id(2))]);
        // Its checksum fails, and no metadata refers to it: start-up destroys it.
        assert!(spool.read(&cut, &id(2)).is_err());
        assert!(spool.destroy_unreferenced(&cut, &id(2)).unwrap());
        spool.sync().unwrap();
        assert!(!on_disk(dir.path(), b"cut short"));
        assert_eq!(spool.read(&kept, &id(1)).unwrap(), b"synced body");
    }

    #[test]
    fn a_restart_begins_a_new_segment_and_removes_the_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, dropped) = {
            let spool = Spool::open(dir.path()).unwrap();
            let kept = spool.append(&id(1), b"still queued").unwrap();
            spool.sync().unwrap();
            drop(spool);
            // A second run whose one body never made it into the metadata.
            let spool = Spool::open(dir.path()).unwrap();
            let dropped = spool.append(&id(2), b"never referenced").unwrap();
            spool.sync().unwrap();
            (kept, dropped)
        };
        assert_ne!(kept.segment, dropped.segment);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.segments(), 3);
        // Only the first body is in the metadata.
        spool.register(&kept);
        assert_eq!(spool.remove_empty().unwrap(), 1);
        assert_eq!(spool.segments(), 2);
        assert!(!segment_path(dir.path(), dropped.segment).exists());
        assert_eq!(spool.read(&kept, &id(1)).unwrap(), b"still queued");
        // The last body of a closed segment takes the segment with it.
        spool.delete(&kept, &id(1)).unwrap();
        assert!(!segment_path(dir.path(), kept.segment).exists());
        assert_eq!(spool.segments(), 1);
    }

    #[test]
    fn a_full_segment_is_closed_and_removed_when_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = vec![0x5a; 1024 * 1024];
        let mut at = Vec::new();
        // Enough to pass SEGMENT_BYTES once.
        for n in 0..=(SEGMENT_BYTES / (1024 * 1024)) {
            at.push(spool.append(&id(n as u8), &body).unwrap());
        }
        let first = at[0].segment;
        let last = at.last().unwrap().segment;
        assert_ne!(first, last, "the spool moved on to a new segment");
        spool.sync().unwrap();
        for (n, a) in at.iter().enumerate().filter(|(_, a)| a.segment == first) {
            spool.delete(a, &id(n as u8)).unwrap();
        }
        assert!(!segment_path(dir.path(), first).exists());
        assert!(segment_path(dir.path(), last).exists());
        let n = (at.len() - 1) as u8;
        assert_eq!(spool.read(at.last().unwrap(), &id(n)).unwrap(), body);
    }
}
