//! Appends that go around the page cache (`O_DIRECT`), for a file written once at its end
//! and seldom read back soon: the audit archive ([`crate::audit::archive`]).
//!
//! A buffered write of a page the file never had costs the kernel a new page-cache page,
//! and on the virtual machines this was measured on that costs 3-7 ns a byte of CPU
//! (`dd` of 100 MiB into a new file: 0.3-0.66 s of system time buffered, 0.01 s with
//! `O_DIRECT`; BENCHMARKS.md, "The audit archive written around the page cache"). With
//! `O_DIRECT` the device reads the bytes from our own buffer, which is reused from write to
//! write.
//!
//! `O_DIRECT` wants the offset, the length and the buffer's address aligned to the
//! device's block. [`DirectAppend`] therefore writes from the last whole block before the
//! file's end: the bytes of that block already in the file (held from the write before,
//! read back once otherwise), then the new bytes, then zeros up to the next block, and cuts
//! the file back to its true length after the write. A file system that refuses `O_DIRECT`
//! (tmpfs, for one) gets no [`DirectAppend`], and a write it refuses as misaligned turns
//! the caller back to buffered writes ([`Appended::Refused`]); either way nothing
//! already written is lost or changed, as every byte before the old end is written with
//! the value it had.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The alignment of offsets, lengths and the buffer: a page, which every Linux block
/// device's logical block divides.
pub const ALIGN: usize = 4096;

/// What [`DirectAppend::append`] did.
#[derive(Debug)]
pub enum Appended {
    /// The bytes are written (not yet synced) and the file ends right after them.
    Written,
    /// The file system refused the direct write as such (`EINVAL`, as it does at once):
    /// the caller writes the same bytes through the page cache, and from now on. Whatever
    /// it took of them before refusing is the same bytes, or zeros past the end.
    Refused(io::Error),
}

/// A second handle on a file, opened with `O_DIRECT`, and the buffer it writes from.
#[derive(Debug)]
pub struct DirectAppend {
    file: File,
    /// Over-allocated by [`ALIGN`] so that an aligned window of the wanted length fits.
    buf: Vec<u8>,
    /// The file's bytes from the last block boundary before `tail_end` up to it.
    tail: Vec<u8>,
    /// The file length that `tail` ends at (`u64::MAX`: not known, read it back).
    tail_end: u64,
}

impl DirectAppend {
    /// Open `path` (an existing file) for direct writes; `None` where the platform or the
    /// file system has no `O_DIRECT`.
    pub fn open(path: &Path) -> Option<DirectAppend> {
        let file = open_direct(path)?;
        Some(DirectAppend {
            file,
            buf: Vec::new(),
            tail: Vec::new(),
            tail_end: u64::MAX,
        })
    }

    /// Write `bytes` at `len`, the file's current length (read through `file`, a buffered
    /// handle on the same file, when the last block's bytes are not held), and leave the
    /// file `len + bytes.len()` long. Not synced: the caller syncs `file`.
    pub fn append(&mut self, file: &File, len: u64, bytes: &[u8]) -> io::Result<Appended> {
        let align = ALIGN as u64;
        let base = len - len % align;
        let keep = usize::try_from(len - base).unwrap_or(0);
        if self.tail_end != len || self.tail.len() != keep {
            self.tail.resize(keep, 0);
            file.read_exact_at(&mut self.tail, base)?;
            self.tail_end = len;
        }
        let total = keep + bytes.len();
        let padded = total.div_ceil(ALIGN) * ALIGN;
        if self.buf.len() < padded + ALIGN {
            self.buf = vec![0; padded + ALIGN];
        }
        let start = (ALIGN - self.buf.as_ptr().addr() % ALIGN) % ALIGN;
        let window = &mut self.buf[start..start + padded];
        window[..keep].copy_from_slice(&self.tail);
        window[keep..total].copy_from_slice(bytes);
        window[total..].fill(0);
        if let Err(e) = self.file.write_all_at(window, base) {
            // Where the file was, it still is: nothing before `len` changed value.
            self.tail_end = u64::MAX;
            return if e.kind() == io::ErrorKind::InvalidInput {
                Ok(Appended::Refused(e))
            } else {
                Err(e)
            };
        }
        crate::failpoint::hit("direct", "written");
        let end = len + bytes.len() as u64;
        if padded > total {
            // The zeros past the end go again.
            if let Err(e) = self.file.set_len(end) {
                self.tail_end = u64::MAX;
                return Err(e);
            }
        }
        let new_base = usize::try_from(end - end % align - base).unwrap_or(0);
        self.tail.clear();
        self.tail.extend_from_slice(&window[new_base..total]);
        self.tail_end = end;
        if self.buf.len() > 16 << 20 {
            // An unusually long write: do not keep that much.
            self.buf = Vec::new();
        }
        Ok(Appended::Written)
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .inspect_err(|e| {
            tracing::info!(cause = %e, "no direct writes on this file system; writes go through the page cache");
        })
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Appends of every size around a block's edges leave exactly the bytes written, the
    /// file exactly as long, whether the tail is held or read back.
    #[test]
    fn appends_leave_exactly_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let Some(mut direct) = DirectAppend::open(&path) else {
            eprintln!("skipped: this file system has no direct writes (callers write buffered)");
            return;
        };
        let mut expected = Vec::new();
        let sizes = [
            1,
            ALIGN - 1,
            1,
            ALIGN,
            3 * ALIGN + 7,
            0,
            5000,
            2 * ALIGN,
            17,
        ];
        for (i, n) in sizes.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8 | 1).collect();
            if i == 5 {
                // Forget the tail: it is read back.
                direct.tail_end = u64::MAX;
            }
            let len = expected.len() as u64;
            match direct.append(&file, len, &bytes).unwrap() {
                Appended::Written => {}
                Appended::Refused(_) => return,
            }
            expected.extend_from_slice(&bytes);
            assert_eq!(std::fs::read(&path).unwrap(), expected, "after append {i}");
        }
        // A buffered write in between (the caller fell back, then came back).
        file.write_all_at(b"between\n", expected.len() as u64)
            .unwrap();
        expected.extend_from_slice(b"between\n");
        let len = expected.len() as u64;
        direct.append(&file, len, b"after\n").unwrap();
        expected.extend_from_slice(b"after\n");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
