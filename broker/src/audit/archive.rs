//! The audit archive: the older part of the trail in an append-only file beside the sled
//! database, so that the trail's records do not stay in sled for years.
//!
//! A record is first written into sled, in the same transaction as the state change it
//! records (see [the module docs](super)). The archiver ([`AuditTrail::archive`]) later
//! moves the oldest records, in order, into `<data dir>/audit/trail.jsonl`:
//!
//! 1. it appends them to the file, one record's JSON (byte for byte as sled held it) per
//!    line, and syncs the file;
//! 2. it moves the archive's **mark** (tree [`ARCHIVE_TREE`]: the last archived seq and
//!    the file's length after it), one insert;
//! 3. it removes the records from sled, one by one.
//!
//! No sled transaction or batch: in sled 0.34 either stalls every reader and the store's
//! writer while it runs, which at 1,000 messages a second showed in every percentile. Each
//! step is ordered after the one before in sled's log, and sled recovers a prefix of its
//! log, so a crash leaves one of two states the next start completes: lines in the file
//! past the mark (cut back to the mark; the records are still in sled and move again), or
//! records in sled that the file holds too (removed from sled). The mark's insert is ordered
//! after the transactions that wrote the records, so a mark that survives a crash never
//! names a record whose transaction did not; it need not be flushed at once (the store's
//! next group commit does). A file shorter than its mark (lines the mark says were synced
//! are gone) is refused at start.
//!
//! Readers ([`Records`]) take records up to the mark from the file and the rest from
//! sled. A record is in the file before it leaves sled, so a reader that misses a record
//! in sled because the archiver just moved it finds it in the file on a second look.
//! Reading the file goes around sled's page cache: a walk over the whole trail (the
//! verification at start, an FG's export) no longer leaves the trail's pages in the
//! broker's memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::{key_seq, round_records, seq_key, storage, AuditError};
use crate::direct::{Appended, DirectAppend};

/// Name of the sled tree that holds the archive's mark.
pub const ARCHIVE_TREE: &str = "audit_archive";
/// The archive file, in the archive directory (`<data dir>/audit`).
pub const ARCHIVE_FILE: &str = "trail.jsonl";
/// The key of the mark in [`ARCHIVE_TREE`].
const MARK_KEY: &[u8] = b"mark";
/// At most this much is cut off the file at start: more than one move can leave past the
/// mark (4,096 records of a few KiB at most) means the file belongs to another database.
const MAX_CUT_BACK: u64 = 64 << 20;
/// Records read at a time by [`Records`].
pub(crate) const CHUNK: usize = 512;

/// How far the trail is archived: records `1..=seq` are the file's first `len` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The last archived seq (0: nothing archived).
    pub seq: u64,
    /// The file's length after that record's line.
    pub len: u64,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    move |e| AuditError::Storage(format!("audit archive: {what}: {e}"))
}

/// The archive of one trail: the file and its mark.
pub struct Archive {
    path: PathBuf,
    /// `None`: opened read-only on a directory without an archive (nothing is archived).
    file: Option<Arc<File>>,
    /// `None`: opened read-only on a database without the tree.
    tree: Option<sled::Tree>,
    mark: RwLock<Mark>,
    /// Held by the archiver while it moves records (one move at a time), with the buffer
    /// it gathers their lines in.
    pub(super) moving: Mutex<Vec<u8>>,
    /// Appends around the page cache ([`crate::direct`]); `None`: through it (read-only,
    /// or a file system without direct writes).
    direct: Mutex<Option<DirectAppend>>,
    writable: bool,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("path", &self.path)
            .field("mark", &self.mark())
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Open the archive of the trail in `db`, in `dir` (created if missing). A file longer
    /// than its mark (a crash between the archiver's steps) is cut back to the mark; one
    /// shorter than its mark is refused ([`AuditError::Corrupt`]), and so is one with more
    /// past its mark than a move leaves, or with content while the database has no mark
    /// (the database is not the archive's).
    pub fn open(db: &sled::Db, dir: &Path) -> Result<Archive, AuditError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("create the directory"))?;
            // The new directory's entry must survive a crash too.
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync the data directory"))?;
            }
        }
        let tree = db.open_tree(ARCHIVE_TREE).map_err(storage)?;
        let marked = tree.contains_key(MARK_KEY).map_err(storage)?;
        let mark = read_mark(&tree)?;
        let path = dir.join(ARCHIVE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open the file"))?;
        let len = file.metadata().map_err(io("read the file's length"))?.len();
        check_length(&mark, len)?;
        if !marked {
            if len > 0 {
                return Err(AuditError::Corrupt {
                    seq: 0,
                    reason: format!(
                        "the database holds no audit archive mark, but the archive holds {len} \
                         bytes (was the database replaced?); nothing was cut off"
                    ),
                });
            }
            // The first start with an archive: from now on the mark tells what a crash
            // left past it from an archive that belongs to another database.
            Archive::write_mark(&tree, &mark)?;
            tree.flush().map_err(storage)?;
        }
        if len - mark.len > MAX_CUT_BACK {
            return Err(AuditError::Corrupt {
                seq: mark.seq,
                reason: format!(
                    "the audit archive holds {} bytes past its mark, more than a move leaves \
                     (was the database replaced?); nothing was cut off",
                    len - mark.len
                ),
            });
        }
        if len > mark.len {
            file.set_len(mark.len).map_err(io("cut back the file"))?;
            file.sync_all().map_err(io("sync the file"))?;
            tracing::info!(
                bytes = len - mark.len,
                "audit archive: cut back what a crash left past its mark"
            );
        }
        if len == 0 {
            // A new file's directory entry must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync the directory"))?;
        }
        Ok(Archive {
            direct: Mutex::new(DirectAppend::open(&path)),
            path,
            file: Some(Arc::new(file)),
            tree: Some(tree),
            mark: RwLock::new(mark),
            moving: Mutex::new(Vec::new()),
            writable: true,
        })
    }

    /// Open the archive to read only (`audit verify` of a stopped broker or a backup):
    /// nothing is created or cut back; reads stop at the mark.
    pub fn open_read_only(db: &sled::Db, dir: &Path) -> Result<Archive, AuditError> {
        let tree = super::existing_tree(db, ARCHIVE_TREE)?;
        let mark = match &tree {
            Some(t) => read_mark(t)?,
            None => Mark::default(),
        };
        let path = dir.join(ARCHIVE_FILE);
        let file = match File::open(&path) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && mark.len == 0 => None,
            Err(e) => return Err(io("open the file")(e)),
        };
        if let Some(f) = &file {
            check_length(
                &mark,
                f.metadata().map_err(io("read the file's length"))?.len(),
            )?;
        }
        Ok(Archive {
            path,
            file,
            tree,
            mark: RwLock::new(mark),
            moving: Mutex::new(Vec::new()),
            direct: Mutex::new(None),
            writable: false,
        })
    }

    /// The archive's mark now.
    pub fn mark(&self) -> Mark {
        *self
            .mark
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether appends go around the page cache ([`crate::direct`]): on a file system with
    /// direct writes, until one is refused.
    pub fn writes_direct(&self) -> bool {
        self.direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Append through the page cache from now on (as on a file system without direct
    /// writes): for the tests of that path.
    #[cfg(test)]
    pub(crate) fn write_buffered(&self) {
        *self
            .direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The archive file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last archived record's line (for the chain's head when sled holds no record).
    pub(super) fn last_line(&self) -> Result<Option<Vec<u8>>, AuditError> {
        let mark = self.mark();
        let Some(file) = self.file.as_ref().filter(|_| mark.len > 0) else {
            return Ok(None);
        };
        // The line before the final newline.
        let mut start = mark.len - 1;
        let mut tail = Vec::new();
        while start > 0 {
            let from = start.saturating_sub(4096);
            let mut chunk = vec![0u8; usize::try_from(start - from).unwrap_or(0)];
            file.read_exact_at(&mut chunk, from)
                .map_err(io("read the file"))?;
            if let Some(nl) = chunk.iter().rposition(|b| *b == b'\n') {
                chunk.drain(..=nl);
                chunk.extend(tail);
                return Ok(Some(chunk));
            }
            chunk.extend(tail);
            tail = chunk;
            start = from;
        }
        Ok(Some(tail))
    }

    /// Append `lines` (records' JSON, each ending in a newline) after the mark and sync
    /// the file: step 1 of a move. Returns the mark the move will set.
    pub(super) fn append(&self, lines: &[u8], last_seq: u64) -> Result<Mark, AuditError> {
        let (Some(file), true) = (&self.file, self.writable) else {
            return Err(AuditError::Storage(
                "audit archive: opened read-only".into(),
            ));
        };
        let mark = self.mark();
        let mut direct = self
            .direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = match direct.as_mut() {
            None => false,
            Some(d) => match d
                .append(file, mark.len, lines)
                .map_err(io("append to the file"))?
            {
                Appended::Written => true,
                Appended::Refused(e) => {
                    tracing::warn!(cause = %e, "audit archive: direct writes refused; writing through the page cache from now on");
                    *direct = None;
                    false
                }
            },
        };
        if !written {
            file.write_all_at(lines, mark.len)
                .map_err(io("append to the file"))?;
        }
        file.sync_data().map_err(io("sync the file"))?;
        Ok(Mark {
            seq: last_seq,
            len: mark.len + lines.len() as u64,
        })
    }

    /// Step 2 of a move: set the mark (one insert, not flushed: the store's next group
    /// commit makes it durable, and until then a crash only repeats the move).
    pub(super) fn write_mark(tree: &sled::Tree, mark: &Mark) -> Result<(), AuditError> {
        let bytes = serde_json::to_vec(mark).map_err(AuditError::Serialize)?;
        tree.insert(MARK_KEY, bytes).map_err(storage)?;
        Ok(())
    }

    /// The mark's tree.
    pub(super) fn tree(&self) -> Option<&sled::Tree> {
        self.tree.as_ref()
    }

    /// The move's transaction committed: readers go by the new mark.
    pub(super) fn set_mark(&self, mark: Mark) {
        *self
            .mark
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mark;
    }

    /// Copy the archived part (the file up to the mark) to `dest` and sync it (a backup,
    /// taken while the mark cannot move). Returns the bytes copied.
    pub fn copy_to(&self, dest_dir: &Path) -> Result<u64, AuditError> {
        std::fs::create_dir_all(dest_dir).map_err(io("create the backup directory"))?;
        let mark = self.mark();
        let mut out = File::create(dest_dir.join(ARCHIVE_FILE)).map_err(io("create the copy"))?;
        if let Some(file) = &self.file {
            let mut pos = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            while pos < mark.len {
                let n = usize::try_from((mark.len - pos).min(buf.len() as u64)).unwrap_or(0);
                file.read_exact_at(&mut buf[..n], pos)
                    .map_err(io("read the file"))?;
                std::io::Write::write_all(&mut out, &buf[..n]).map_err(io("write the copy"))?;
                pos += n as u64;
            }
        }
        out.sync_all().map_err(io("sync the copy"))?;
        File::open(dest_dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the backup directory"))?;
        Ok(mark.len)
    }

    /// The offset of the first line whose record's seq is at least `seq`, within the
    /// first `len` bytes (`len` when there is none): a binary search over
    /// the lines (seqs only grow along the file).
    fn offset_of(&self, file: &File, seq: u64, len: u64) -> Result<u64, AuditError> {
        if len == 0 || line_seq(file, 0, len)? >= seq {
            return Ok(0);
        }
        // The line at `lo` holds a smaller seq; `hi` is a line start (or `len`) whose seq
        // is at least `seq`.
        let (mut lo, mut hi) = (0u64, len);
        loop {
            // The first line starting after `lo`, at or after the middle (a line that
            // starts right at the middle counts).
            let mid = lo + (hi - lo) / 2;
            let mut next = next_line(file, mid.saturating_sub(1).max(lo), hi)?;
            if next >= hi {
                // The line holding the middle runs to `hi`, and lines between `lo` and it
                // are not yet looked at: look at the one right after `lo`.
                next = next_line(file, lo, hi)?;
                if next >= hi {
                    return Ok(hi);
                }
            }
            if line_seq(file, next, len)? < seq {
                lo = next;
            } else {
                hi = next;
            }
        }
    }
}

fn read_mark(tree: &sled::Tree) -> Result<Mark, AuditError> {
    match tree.get(MARK_KEY).map_err(storage)? {
        None => Ok(Mark::default()),
        Some(v) => serde_json::from_slice(&v).map_err(|_| AuditError::Corrupt {
            seq: 0,
            reason: "the audit archive's mark does not parse".into(),
        }),
    }
}

fn check_length(mark: &Mark, len: u64) -> Result<(), AuditError> {
    if mark.seq > 0 && mark.len == 0 {
        return Err(AuditError::Corrupt {
            seq: mark.seq,
            reason: "the audit archive's mark names records but no bytes".into(),
        });
    }
    if len < mark.len {
        return Err(AuditError::Corrupt {
            seq: mark.seq,
            reason: format!(
                "the audit archive holds {len} bytes, but records up to {} were archived in {} \
                 bytes: archived records are missing",
                mark.seq, mark.len
            ),
        });
    }
    Ok(())
}

/// The start of the line after the one holding byte `at` (`limit` when that line runs to
/// `limit`).
fn next_line(file: &File, at: u64, limit: u64) -> Result<u64, AuditError> {
    let mut pos = at;
    let mut buf = [0u8; 4096];
    while pos < limit {
        let n = usize::try_from((limit - pos).min(buf.len() as u64)).unwrap_or(0);
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io("read the file"))?;
        if let Some(nl) = buf[..n].iter().position(|b| *b == b'\n') {
            return Ok(pos + nl as u64 + 1);
        }
        pos += n as u64;
    }
    Ok(limit)
}

/// The seq of the record on the line at `at`.
fn line_seq(file: &File, at: u64, limit: u64) -> Result<u64, AuditError> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let end = next_line(file, at, limit)?;
    let mut line = vec![0u8; usize::try_from(end - at).unwrap_or(0)];
    file.read_exact_at(&mut line, at)
        .map_err(io("read the file"))?;
    serde_json::from_slice::<SeqOnly>(line.trim_ascii_end())
        .map(|s| s.seq)
        .map_err(|_| AuditError::Corrupt {
            seq: 0,
            reason: format!("the audit archive's line at byte {at} does not parse"),
        })
}

/// The trail's stored records in seq order, as `(key, value)` entries: from the archive
/// file up to its mark (each line keyed by its position: the `n`th line is record `n`),
/// then from sled, each round's records keyed by their position in it (the round's key,
/// then one more a line; an entry whose key is no seq as it is). What the verification
/// walks and every reader parses.
#[derive(Debug)]
pub struct Records<'a> {
    archive: &'a Archive,
    records: Option<&'a sled::Tree>,
    /// The next seq to read.
    next: u64,
    /// The last seq to read.
    to: u64,
    /// Where the line of `next` starts in the file, when known.
    offset: Option<u64>,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl<'a> Records<'a> {
    /// Records `from..=to` (`to`: `u64::MAX` for all).
    pub fn new(
        archive: &'a Archive,
        records: Option<&'a sled::Tree>,
        from: u64,
        to: u64,
    ) -> Records<'a> {
        Records {
            archive,
            records,
            next: from.max(1),
            to,
            offset: None,
            buf: VecDeque::new(),
            done: from > to,
        }
    }

    fn refill(&mut self) -> Result<(), AuditError> {
        let mark = self.archive.mark();
        if self.next <= mark.seq {
            let Some(file) = &self.archive.file else {
                // A mark without a file (only a damaged database says so): the records
                // it names show as a gap.
                self.next = mark.seq + 1;
                self.offset = None;
                return Ok(());
            };
            let upto = self.to.min(mark.seq);
            let mut pos = match self.offset {
                Some(p) => p,
                None => self.archive.offset_of(file, self.next, mark.len)?,
            };
            let mut reader = LineReader::new(file, pos, mark.len);
            while self.buf.len() < CHUNK && self.next <= upto {
                let Some(line) = reader.next_line()? else {
                    break;
                };
                pos += line.len() as u64 + 1;
                self.buf.push_back((seq_key(self.next).to_vec(), line));
                self.next += 1;
            }
            if self.buf.is_empty() {
                // The file holds fewer lines than the mark says: what is missing shows
                // as a gap to whoever checks the seqs.
                self.next = mark.seq + 1;
                self.offset = None;
            } else {
                self.offset = Some(pos);
            }
            return Ok(());
        }
        // From sled. Whatever this reads, the file position no longer follows `next`.
        self.offset = None;
        let Some(tree) = self.records else {
            self.done = true;
            return Ok(());
        };
        let mut expected = self.next;
        let mut items = Vec::with_capacity(CHUNK);
        // The round that holds `next` may start before it.
        let before = super::stored_round_holding(tree, self.next - 1)?
            .map(|(first, v)| Ok((sled::IVec::from(&seq_key(first)), v)));
        let from = tree.range(seq_key(self.next)..=seq_key(self.to));
        for item in before.into_iter().chain(from) {
            let (k, v) = item.map_err(storage)?;
            let Some(first) = key_seq(&k) else {
                items.push((k.to_vec(), v.to_vec()));
                if items.len() >= CHUNK {
                    break;
                }
                continue;
            };
            // A packed round that does not unpack is read as it is stored: one damaged
            // record, which the checks report (and the rest of its seqs as a gap).
            let v = super::unpacked(first, v.clone()).unwrap_or(v);
            if first > expected && self.archive.mark().seq >= expected {
                // Moved to the file meanwhile: the rest is read there.
                break;
            }
            for (seq, line) in round_records(first, &v) {
                if seq >= self.next && seq <= self.to {
                    items.push((seq_key(seq).to_vec(), line.to_vec()));
                }
                expected = expected.max(seq.saturating_add(1));
            }
            if items.len() >= CHUNK {
                break;
            }
        }
        self.buf.extend(items);
        let full = self.buf.len() >= CHUNK;
        if expected > self.to || expected == self.next && full {
            // Read to the end; or a chunk that did not get past `next` (only damaged
            // entries: keys that are no seq, or records past the last seq), which would
            // be read again and again: what is read is reported, the rest is not.
            self.done = true;
        } else if full || self.archive.mark().seq >= expected {
            // More to read: in sled, or moved to the file while this read (sled's range
            // is no snapshot).
            self.next = expected;
        } else {
            self.done = true;
        }
        Ok(())
    }
}

impl Iterator for Records<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.buf.pop_front() {
                return Some(Ok(entry));
            }
            if self.done || self.next > self.to {
                return None;
            }
            if let Err(e) = self.refill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

/// Lines of the file from `pos` up to `end`, read in large chunks.
struct LineReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    start: usize,
}

impl<'a> LineReader<'a> {
    fn new(file: &'a File, pos: u64, end: u64) -> LineReader<'a> {
        LineReader {
            file,
            pos,
            end,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The next line without its newline; `None` at the end (a last line without a
    /// newline is returned as it is).
    fn next_line(&mut self) -> Result<Option<Vec<u8>>, AuditError> {
        loop {
            if let Some(nl) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let line = self.buf[self.start..self.start + nl].to_vec();
                self.start += nl + 1;
                return Ok(Some(line));
            }
            if self.pos >= self.end {
                if self.start < self.buf.len() {
                    let line = self.buf[self.start..].to_vec();
                    self.start = self.buf.len();
                    return Ok(Some(line));
                }
                return Ok(None);
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let n = usize::try_from((self.end - self.pos).min(64 * 1024)).unwrap_or(0);
            let old = self.buf.len();
            self.buf.resize(old + n, 0);
            self.file
                .read_exact_at(&mut self.buf[old..], self.pos)
                .map_err(io("read the file"))?;
            self.pos += n as u64;
        }
    }
}
