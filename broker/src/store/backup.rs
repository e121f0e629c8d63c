//! An online backup: a consistent snapshot of a running broker's data directory.
//!
//! Every change of the broker's state (a batch of accepted messages, a receipt, an
//! expiry, a case or consent change, an audit record, a checkpoint) is written while it
//! holds the audit chain's lock. [`Store::backup`] takes that lock, so nothing changes
//! while it copies: it flushes, copies every sled tree into a new database, every spool
//! segment and the audit archive up to its mark into the backup, writes
//! [`BACKUP_MANIFEST`] last, and lets go. Submissions
//! and receipts wait meanwhile (the copy of a broker holding 100,000 messages takes about
//! a second). Fetches are answered.
//!
//! Two things may differ from the moment of the snapshot, both harmless: an acknowledged
//! notice may still be listed (agents apply notices idempotently), and a body appended for
//! a submission that was not yet written is in the spool copy without metadata; the
//! restored broker's start destroys it as an orphan. A submission is in the backup exactly
//! when its `accepted` answer came before the backup began.
//!
//! A backup folder is a broker data directory: `broker.sled`, `spool/`, `audit/` and the
//! manifest.
//! Restoring is copying it to an empty data directory (`ketenpost-broker restore`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::audit::AuditTrail;

/// The manifest file of a backup, written last: a folder without it is not a backup.
pub const BACKUP_MANIFEST: &str = "BACKUP.json";

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    /// Format of the backup folder.
    pub format: u32,
    /// When it was taken (the broker's clock).
    pub taken_at: DateTime<Utc>,
    /// The audit trail's head at the snapshot: `audit verify` of the restored data ends
    /// here, and every record up to it is in the backup.
    pub audit_seq: u64,
    /// The hash of that record.
    pub audit_head_hash: String,
    /// Messages held (the spool segments' body counts; `meta` also keeps the ids of
    /// settled messages, as the dedup set).
    pub messages: u64,
    /// Bytes of spool segments copied.
    pub spool_bytes: u64,
}

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The destination exists and is not an empty folder.
    #[error("{0} exists and is not empty; a backup goes to a new folder")]
    NotEmpty(PathBuf),
    /// The file system failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed (a failed flush poisons it, as any other).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The folder is not a complete backup.
    #[error("{0} is not a complete backup (no {BACKUP_MANIFEST}, or it does not parse)")]
    NotABackup(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { what, path, source }
}

/// Create `dir`, refusing an existing folder with anything in it.
fn fresh_dir(dir: &Path) -> Result<(), BackupError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io("read", dir))?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(dir.to_owned()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

impl Store {
    /// Take a consistent snapshot of the store and the audit trail into `dest` (a new or
    /// empty folder); see the module docs.
    pub fn backup(
        &self,
        trail: &AuditTrail,
        dest: &Path,
        now: DateTime<Utc>,
    ) -> Result<BackupManifest, BackupError> {
        fresh_dir(dest)?;
        let spool_dest = dest.join("spool");
        std::fs::create_dir_all(&spool_dest).map_err(io("create", &spool_dest))?;
        // Nothing is written while this is held (see the module docs).
        let chain = trail.lock_chain();
        self.flush()?;
        let copy_dir = dest.join("broker.sled");
        let copy = sled::Config::new()
            .path(&copy_dir)
            .flush_every_ms(None)
            .open()
            .map_err(StoreError::from)?;
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name).map_err(StoreError::from)?;
            let to = copy.open_tree(&name).map_err(StoreError::from)?;
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            for item in from.iter() {
                let (k, v) = item.map_err(StoreError::from)?;
                batch.insert(k, v);
                n += 1;
                if n % 10_000 == 0 {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(StoreError::from)?;
                }
            }
            to.apply_batch(batch).map_err(StoreError::from)?;
        }
        ketenpost_transport::durable::LogSync::open(&copy_dir)
            .map_err(|e| StoreError::Sled(e.into()))?
            .flush(&copy)
            .map_err(StoreError::from)?;
        drop(copy);
        let spool_bytes = self.spool.copy_to(&spool_dest).map_err(StoreError::from)?;
        // The archived part of the trail, up to the mark copied above (it cannot move
        // while the chain lock is held).
        trail
            .archive_of()
            .copy_to(&crate::audit::archive_dir(dest))
            .map_err(StoreError::from)?;
        let head = chain.head();
        let messages = self.bodies_held()?;
        drop(chain);
        let manifest = BackupManifest {
            format: 1,
            taken_at: now,
            audit_seq: head.seq,
            audit_head_hash: head.hash,
            messages,
            spool_bytes,
        };
        let path = dest.join(BACKUP_MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let mut f = std::fs::File::create(&path).map_err(io("create", &path))?;
        std::io::Write::write_all(&mut f, &text)
            .and_then(|()| f.sync_all())
            .map_err(io("write", &path))?;
        sync_dir(dest)?;
        Ok(manifest)
    }
}

/// Read a backup's manifest.
pub fn manifest(backup: &Path) -> Result<BackupManifest, BackupError> {
    let text = std::fs::read(backup.join(BACKUP_MANIFEST))
        .map_err(|_| BackupError::NotABackup(backup.to_owned()))?;
    serde_json::from_slice(&text).map_err(|_| BackupError::NotABackup(backup.to_owned()))
}

/// Restore a backup into `data_dir` (new or empty): copy its database, spool and audit
/// archive (a backup of a version without an archive has none). Returns
/// the manifest. The broker started on `data_dir` reconciles the spool with the metadata.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<BackupManifest, BackupError> {
    let m = manifest(backup)?;
    fresh_dir(data_dir)?;
    copy_tree(&backup.join("broker.sled"), &data_dir.join("broker.sled"))?;
    copy_tree(&backup.join("spool"), &data_dir.join("spool"))?;
    let archive = crate::audit::archive_dir(backup);
    if archive.exists() {
        copy_tree(&archive, &crate::audit::archive_dir(data_dir))?;
    }
    sync_dir(data_dir)?;
    Ok(m)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for entry in std::fs::read_dir(from).map_err(io("read", from))? {
        let entry = entry.map_err(io("read", from))?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io("read", from))?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(io("copy", &target))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &target))?;
        }
    }
    sync_dir(to)
}
