//! A sled flush that is durable: sled's flush followed by an `fdatasync` of its log file.
//!
//! sled 0.34 makes its log "stable" with `sync_file_range(2)`, which writes the dirty pages
//! of a range and waits for them, but neither flushes the disk's volatile write cache nor
//! writes the file's metadata (its size, as the log grows). Its manual page: "there are no
//! guarantees that the data will be available after a crash". A power loss or kernel crash
//! after `Db::flush` returned could therefore lose what the flush was to make durable
//! (spacejam/sled#1452, open). A process crash loses nothing either way: the pages are in
//! the kernel.
//!
//! [`LogSync`] holds a descriptor of its own on sled's log file (`<db dir>/db`) and
//! [`LogSync::flush`] follows sled's flush with `fdatasync` on it. A sync applies to the file,
//! not to the descriptor, so this writes what sled wrote through its own descriptor, the
//! file's size with it, and flushes the disk's write cache.
//!
//! Left out: values larger than a quarter of sled's segment (128 KiB) go to files of their
//! own under `blobs/`, which sled 0.34 never syncs. Nothing ketenpost stores in sled comes
//! near that size (metadata, audit records, queue blocks, registry records: a few KiB at
//! most); bodies are in the broker's spool and the agent's vault, which sync themselves.

use std::fs::File;
use std::path::Path;

/// sled's log file, opened for `fdatasync` (see the [module docs](self)).
#[derive(Debug)]
pub struct LogSync {
    log: File,
}

impl LogSync {
    /// The log file of the sled database in `db_dir` (the directory given to
    /// `sled::Config::path`), opened after the database (sled creates it).
    pub fn open(db_dir: &Path) -> std::io::Result<LogSync> {
        let log = File::open(db_dir.join("db"))?;
        Ok(LogSync { log })
    }

    /// `db.flush()`, then `fdatasync` of its log: when this returns `Ok`, everything written
    /// to `db` before the call is on stable storage. Blocking.
    pub fn flush(&self, db: &sled::Db) -> sled::Result<usize> {
        let n = self.write(db)?;
        self.sync()?;
        Ok(n)
    }

    /// The first half of [`LogSync::flush`]: sled's flush, which writes everything written
    /// to `db` before the call into its log file, not yet durable. Blocking.
    pub fn write(&self, db: &sled::Db) -> sled::Result<usize> {
        db.flush()
    }

    /// The second half of [`LogSync::flush`]: `fdatasync` of the log, which makes durable
    /// what every [`LogSync::write`] that returned before the call wrote. Blocking. After
    /// a failed sync a later one proves nothing about what the failed one was to make
    /// durable (the kernel may have dropped those pages and cleared the error): the
    /// caller must stop trusting the database, not retry.
    pub fn sync(&self) -> sled::Result<()> {
        self.log.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A new database in a temporary directory, flushed only when asked, and its path.
    fn fresh_db() -> (tempfile::TempDir, std::path::PathBuf, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sled");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        (dir, path, db)
    }

    /// The database at `path` opened again once every handle to it is dropped. sled lets
    /// go of its file lock when the last of its I/O pool's tasks drops its handle, which
    /// can be a moment after the flush that waited for that task returned: a bounded wait
    /// (2 s) for that, and any other error at once.
    fn reopen(path: &std::path::Path) -> sled::Db {
        for _ in 0..200 {
            match sled::Config::new().path(path).open() {
                Ok(db) => return db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("cannot open the database again: {e}"),
            }
        }
        panic!("the database stayed locked for 2 s after every handle was dropped")
    }

    #[test]
    fn the_log_of_a_database_is_synced_after_its_flush() {
        let (_dir, path, db) = fresh_db();
        let log = LogSync::open(&path).unwrap();
        db.insert(b"k", b"v").unwrap();
        assert!(log.flush(&db).unwrap() > 0);
        // The two halves, as the broker's writer and its settling thread call them.
        db.insert(b"k2", b"v2").unwrap();
        assert!(log.write(&db).unwrap() > 0);
        log.sync().unwrap();
        drop(db);
        let db = reopen(&path);
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(db.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
    }

    /// The paths the vendored sled patches (vendor/README.md): log buffers written by the
    /// pool (sealed by transactions, one task waking one thread) and by the flushing
    /// thread itself, from several threads at once. A lost wake-up would leave a flush
    /// waiting for a write nobody makes; a write out of step would lose data on reopen.
    #[test]
    fn concurrent_transactions_and_flushes_all_land_and_none_hangs() {
        use sled::Transactional as _;
        const THREADS: u32 = 4;
        const ROUNDS: u32 = 150;
        let (_dir, path, db) = fresh_db();
        let log = std::sync::Arc::new(LogSync::open(&path).unwrap());
        let (a, b) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let mut writers = Vec::new();
        for t in 0..THREADS {
            let (db, log, a, b, done) =
                (db.clone(), log.clone(), a.clone(), b.clone(), done.clone());
            writers.push(std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let key = format!("{t}-{r}");
                    if r % 2 == 0 {
                        (&a, &b)
                            .transaction(|(a, b)| {
                                a.insert(key.as_bytes(), &b"one"[..])?;
                                b.insert(key.as_bytes(), &b"two"[..])?;
                                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                            })
                            .unwrap();
                    } else {
                        a.insert(key.as_bytes(), &b"one"[..]).unwrap();
                        b.insert(key.as_bytes(), &b"two"[..]).unwrap();
                    }
                    // Every thread flushes, so flushes overlap with the others' writes.
                    log.flush(&db).unwrap();
                }
                done.send(t).unwrap();
            }));
        }
        for _ in 0..THREADS {
            finished
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("a writer hung: a flush waited for a log write that never came");
        }
        // Each has sent its last word: joining waits only for it to drop its handles, so
        // the database is closed before it is opened again.
        for w in writers {
            w.join().unwrap();
        }
        drop((a, b, db));
        let db = reopen(&path);
        let (a, b) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap());
        for t in 0..THREADS {
            for r in 0..ROUNDS {
                let key = format!("{t}-{r}");
                assert_eq!(a.get(&key).unwrap().as_deref(), Some(&b"one"[..]), "{key}");
                assert_eq!(b.get(&key).unwrap().as_deref(), Some(&b"two"[..]), "{key}");
            }
        }
    }

    /// The vendored sled writes a new segment of its log whole (with zeros) before it
    /// writes into it, so the log file grows a segment at a time, not with every flush
    /// (whose sync would then commit the file system's journal too). What was written
    /// across many segments reads back after a restart, and after a second one: a start
    /// finds the zeros after the last write of a segment, as after a crash.
    #[test]
    fn the_log_grows_a_whole_segment_at_a_time_and_reads_back_after_restarts() {
        const SEGMENT: u64 = 512 * 1024;
        let (_dir, path, db) = fresh_db();
        let log = LogSync::open(&path).unwrap();
        let value = vec![7u8; 1024];
        let mut sizes = std::collections::BTreeSet::new();
        for i in 0..3_000u32 {
            db.insert(i.to_be_bytes(), &value[..]).unwrap();
            if i % 50 == 49 {
                log.flush(&db).unwrap();
                let len = std::fs::metadata(path.join("db")).unwrap().len();
                assert_eq!(len % SEGMENT, 0, "the log is {len} bytes after a flush");
                sizes.insert(len);
            }
        }
        assert!(
            sizes.len() > 2,
            "the log grew past a few segments: {sizes:?}"
        );
        drop(db);
        for round in 0..2u32 {
            let db = reopen(&path);
            for i in 0..3_000u32 {
                assert_eq!(
                    db.get(i.to_be_bytes()).unwrap().as_deref(),
                    Some(&value[..]),
                    "{i} after restart {round}"
                );
            }
            for i in 0..3_000u32 {
                let key = [round.to_be_bytes(), i.to_be_bytes()].concat();
                db.insert(key, &value[..64]).unwrap();
            }
            log.flush(&db).unwrap();
        }
        let db = reopen(&path);
        for round in 0..2u32 {
            for i in (0..3_000u32).step_by(97) {
                let key = [round.to_be_bytes(), i.to_be_bytes()].concat();
                assert_eq!(db.get(key).unwrap().as_deref(), Some(&value[..64]));
            }
        }
    }

    /// Where the child of [`a_writer_killed_while_its_log_grows_loses_nothing_it_flushed`]
    /// writes; set only in that child.
    const CHILD_DB: &str = "KETENPOST_TEST_SLED_CHILD_DB";
    /// The first key the child writes.
    const CHILD_FROM: &str = "KETENPOST_TEST_SLED_CHILD_FROM";

    /// The child's side: write 1 KiB values under consecutive keys from `from`, flush and
    /// sync every 16, and print the last key flushed, until killed (or 40,000 keys).
    fn child_writes(path: &Path, from: u32) {
        use std::io::Write as _;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let log = LogSync::open(path).unwrap();
        let mut out = std::io::stdout().lock();
        for i in from..from + 40_000 {
            db.insert(i.to_be_bytes(), &[(i % 251) as u8; 1024][..])
                .unwrap();
            if i % 16 == 15 {
                log.flush(&db).unwrap();
                writeln!(out, "flushed {i}").unwrap();
                out.flush().unwrap();
            }
        }
    }

    /// The vendored sled's fourth patch under SIGKILL: a process writing and flushing while
    /// its log grows segment after segment (each written with zeros before use) is killed
    /// five times at whatever point it has reached; after each kill every value it said
    /// was flushed reads back whole, and the next writer goes on in the same log.
    #[test]
    fn a_writer_killed_while_its_log_grows_loses_nothing_it_flushed() {
        use std::io::BufRead as _;
        if let Ok(path) = std::env::var(CHILD_DB) {
            let from = std::env::var(CHILD_FROM).unwrap().parse().unwrap();
            child_writes(Path::new(&path), from);
            return;
        }
        const SEGMENT: u64 = 512 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("killed.sled");
        let mut from = 0u32;
        for kill in 0..5u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "durable::tests::a_writer_killed_while_its_log_grows_loses_nothing_it_flushed",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &path)
                .env(CHILD_FROM, from.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            // Killed once the log has grown past two more segments, and a few flushes
            // later each time, so that the kills fall at different points of a segment.
            let grown = (kill + 3) * SEGMENT;
            let mut flushed = None;
            let mut after = 0u64;
            for line in lines {
                let line = line.unwrap();
                let Some(n) = line.strip_prefix("flushed ") else {
                    continue;
                };
                flushed = Some(n.parse::<u32>().unwrap());
                let len = std::fs::metadata(path.join("db")).map_or(0, |m| m.len());
                if len >= grown {
                    after += 1;
                    if after > kill * 7 {
                        break;
                    }
                }
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let flushed = flushed.expect("the child flushed something before the kill");
            let db = reopen(&path);
            for i in 0..=flushed {
                assert_eq!(
                    db.get(i.to_be_bytes()).unwrap().as_deref(),
                    Some(&[(i % 251) as u8; 1024][..]),
                    "key {i} after kill {kill} (flushed up to {flushed})"
                );
            }
            from = flushed + 1;
        }
    }

    #[test]
    fn a_directory_without_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LogSync::open(dir.path()).is_err());
    }
}
