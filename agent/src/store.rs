//! The agent's sled database: one tree per kind of record, JSON values.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `outbox` | message id (16 bytes, time-ordered) | [`OutboxEntry`](crate::outbox::OutboxEntry) |
//! | `outbox_queue` | message id | empty: the entries still to submit |
//! | `inbox` | message id | [`InboxEntry`](crate::inbox::InboxEntry), its payload sealed ([`crate::vault`]) |
//! | `receipted` | message id | [`Receipted`](crate::inbox::Receipted): the signed receipt, kept after the payload goes so a re-delivery is receipted again, not stored again |
//! | `refused` | message id | [`RefusedMessage`](crate::inbox::RefusedMessage): deliveries the agent would not accept |
//! | `cases` | case reference | [`KnownCase`] |
//! | `consents` | consent id | [`KnownConsent`] |
//! | `deletions` | order id | [`DeletionEntry`](crate::deletion::DeletionEntry) |
//! | `checkpoints` | seq (big-endian) | the broker's checkpoints seen |
//! | `identifiers` | blind index key (32 bytes) ‖ case reference | empty: the keyed blind index of identifiers in payloads ([`crate::rights`]) |
//! | `access_requests` | request id | [`AccessRequest`](crate::rights::AccessRequest): a data subject's access request, without the identifier |
//! | `meta` | name | the cached signed documents, audit warnings |
//! | `audit` | seq (big-endian) | the agent's own audit trail ([`crate::audit`]): hash-chained [`AuditRecord`](ketenpost_audit::AuditRecord)s |
//!
//! No personal data is stored in the clear: the fields of a record that can hold payload
//! are sealed under a data key of their message, kept apart in the [`Vault`], and
//! destroyed before the record is removed (see [`Sealed`]).
//!
//! Writes that the partner system or the broker is told about are flushed (fsync) first:
//! a message is on disk before its id is returned, an inbox entry before its receipt goes
//! out, a deletion before its confirmation.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ketenpost_audit::AuditEntry;
use serde::de::DeserializeOwned;
use serde::Serialize;

use ketenpost_schemas::ids::{CaseRef, MessageId};
use ketenpost_transport::durable::LogSync;

use crate::audit::AuditTrail;
use crate::mirror::{KnownCase, KnownConsent};
use crate::vault::Vault;
use crate::Error;

/// A record whose fields [`Sealed::SECRET`] may hold personal data: stored with those
/// fields sealed under its message's data key ([`Vault::seal`]), as one `sealed` field.
pub(crate) trait Sealed: Serialize + DeserializeOwned {
    /// The JSON names of the fields to seal.
    const SECRET: &'static [&'static str];
    /// What the record is, for errors.
    const WHAT: &'static str;
}

/// The name of the field that holds the sealed fields.
const SEALED_FIELD: &str = "sealed";

/// The identity every sealed record carries in the clear: its message and case.
#[derive(serde::Deserialize)]
struct SealedIds {
    message_id: MessageId,
    case_ref: CaseRef,
}

/// The database and its trees.
#[derive(Debug)]
pub struct Store {
    pub(crate) db: sled::Db,
    /// sled's log, synced after every flush: sled's own flush is not durable
    /// ([`ketenpost_transport::durable`]).
    log: Arc<LogSync>,
    pub(crate) outbox: sled::Tree,
    pub(crate) outbox_queue: sled::Tree,
    pub(crate) inbox: sled::Tree,
    pub(crate) receipted: sled::Tree,
    pub(crate) refused: sled::Tree,
    pub(crate) cases: sled::Tree,
    pub(crate) consents: sled::Tree,
    pub(crate) deletions: sled::Tree,
    pub(crate) checkpoints: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) identifiers: sled::Tree,
    pub(crate) access_requests: sled::Tree,
    /// The agent's own audit trail, for its FG.
    pub(crate) audit: AuditTrail,
    /// The data keys of the sealed fields.
    pub(crate) vault: Vault,
    /// Data keys whose records no longer hold a secret field: destroyed once a flush made
    /// those records durable (see [`Store::put_sealed`]).
    shred_after_flush: Mutex<Vec<(CaseRef, MessageId)>>,
    /// Serialises read-modify-write cycles (never held across an await).
    pub(crate) write: Mutex<()>,
    /// Group commit, see [`Store::flush`].
    flushes: Flushes,
}

/// Group commit: one flush at a time, and a caller whose writes a flush that started after
/// them already made durable does not flush again.
#[derive(Debug, Default)]
struct Flushes {
    /// Held while a flush runs.
    gate: tokio::sync::Mutex<()>,
    /// Number of flushes started.
    started: AtomicU64,
    /// Number of the last flush that completed without error.
    done: AtomicU64,
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::corrupt("record to write", e))
}

pub(crate) fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, e))
}

impl Store {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let db_dir = dir.join("agent.sled");
        let db = sled::Config::new()
            .path(&db_dir)
            .flush_every_ms(Some(1000))
            // The working set is small (queued envelopes, unacknowledged messages); a small
            // cache keeps an idle agent's memory low.
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let log = LogSync::open(&db_dir)
            .map_err(|e| Error::io(format!("cannot open {}", db_dir.display()), e))?;
        Ok(Store {
            log: Arc::new(log),
            outbox: db.open_tree("outbox")?,
            outbox_queue: db.open_tree("outbox_queue")?,
            inbox: db.open_tree("inbox")?,
            receipted: db.open_tree("receipted")?,
            refused: db.open_tree("refused")?,
            cases: db.open_tree("cases")?,
            consents: db.open_tree("consents")?,
            deletions: db.open_tree("deletions")?,
            checkpoints: db.open_tree("checkpoints")?,
            meta: db.open_tree("meta")?,
            identifiers: db.open_tree("identifiers")?,
            access_requests: db.open_tree("access_requests")?,
            audit: AuditTrail::open(&db)?,
            vault: Vault::open(dir)?,
            shred_after_flush: Mutex::new(Vec::new()),
            db,
            write: Mutex::new(()),
            flushes: Flushes::default(),
        })
    }

    /// Flush everything written so far to disk (fsync) before returning.
    ///
    /// A group commit: flushes run one at a time, and callers that arrive while one runs
    /// share the next, so concurrent senders cost one fsync per round rather than one each.
    /// The flush itself is sled's blocking `flush` on tokio's blocking pool: sled 0.34's
    /// `flush_async` runs on sled's own small I/O pool and deadlocks when several run at
    /// once (spacejam/sled#1308; seen with 16 concurrent sends).
    pub async fn flush(&self) -> Result<(), Error> {
        let f = &self.flushes;
        // Any flush numbered `need` or later starts after this point, so after our writes.
        let need = f.started.load(Ordering::SeqCst) + 1;
        let _gate = f.gate.lock().await;
        if f.done.load(Ordering::SeqCst) >= need {
            return Ok(());
        }
        let number = f.started.fetch_add(1, Ordering::SeqCst) + 1;
        // The keys whose records were rewritten before this flush started; this flush
        // makes those records durable, so the keys may go after it.
        let shred: Vec<(CaseRef, MessageId)> = std::mem::take(
            &mut *self
                .shred_after_flush
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let (db, log) = (self.db.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || log.flush(&db))
            .await
            .map_err(|e| Error::Unexpected(format!("the database flush was interrupted: {e}")))??;
        f.done.store(number, Ordering::SeqCst);
        for (case, id) in shred {
            if let Err(e) = self.vault.destroy_message(&case, &id) {
                // The write is durable either way; try the key again at the next flush.
                tracing::error!(message = %id, cause = %e, "cannot destroy a data key; will retry");
                self.shred_after_flush
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((case, id));
            }
        }
        Ok(())
    }

    /// The agent's own audit trail.
    pub fn audit_trail(&self) -> &AuditTrail {
        &self.audit
    }

    /// Append to the agent's audit trail; durable with the next flush. A failure is
    /// logged (event and reason code only) and otherwise ignored: the fact recorded has
    /// happened already, and failing its request would not undo it (see [`crate::audit`]).
    pub(crate) fn audit(&self, entry: AuditEntry, now: chrono::DateTime<chrono::Utc>) {
        let event = entry.event();
        if let Err(e) = self.audit.append(entry, now) {
            tracing::error!(event = %event, cause = %e, "cannot append to the agent's audit trail");
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means another thread panicked between a read and a write;
        // every write is a whole record, so the data is consistent and the lock usable.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get<T: DeserializeOwned>(
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        tree.get(key)?.map(|v| from_json(what, &v)).transpose()
    }

    pub(crate) fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), Error> {
        tree.insert(key, to_json(value)?)?;
        Ok(())
    }

    /// Store a record with its secret fields sealed. Without any secret field left (all
    /// null or absent), the message's data key is destroyed after the next flush (which
    /// makes this write durable): what was sealed under it before cannot be opened any
    /// more. Destroyed before, a crash could leave the older record, still naming its
    /// sealed fields, without their key.
    pub(crate) fn put_sealed<T: Sealed>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
    ) -> Result<(), Error> {
        let mut json =
            serde_json::to_value(value).map_err(|e| Error::corrupt("record to write", e))?;
        let ids: SealedIds =
            serde_json::from_value(json.clone()).map_err(|e| Error::corrupt(T::WHAT, e))?;
        let obj = json
            .as_object_mut()
            .ok_or_else(|| Error::Vault(format!("{} is not a JSON object", T::WHAT)))?;
        let mut secret = serde_json::Map::new();
        for name in T::SECRET {
            if let Some(v) = obj.remove(*name) {
                if !v.is_null() {
                    secret.insert((*name).to_owned(), v);
                }
            }
        }
        let shred = secret.is_empty() && self.vault.holds_message(&ids.case_ref, &ids.message_id);
        if !secret.is_empty() {
            let plain = to_json(&secret)?;
            let sealed = self.vault.seal(&ids.case_ref, &ids.message_id, &plain)?;
            obj.insert(SEALED_FIELD.to_owned(), serde_json::Value::String(sealed));
        }
        tree.insert(key, to_json(&json)?)?;
        // After the write: a flush that takes the list covers it.
        if shred {
            self.shred_after_flush
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((ids.case_ref, ids.message_id));
        }
        Ok(())
    }

    /// Read a record stored by [`Store::put_sealed`]. When its data key was destroyed,
    /// the record comes back without its secret fields (they are gone).
    pub(crate) fn get_sealed<T: Sealed>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        tree.get(key)?.map(|v| self.unseal::<T>(&v)).transpose()
    }

    fn unseal<T: Sealed>(&self, bytes: &[u8]) -> Result<T, Error> {
        let mut json: serde_json::Value = from_json(T::WHAT, bytes)?;
        let sealed = json.as_object_mut().and_then(|o| o.remove(SEALED_FIELD));
        if let Some(sealed) = sealed {
            let ids: SealedIds =
                serde_json::from_value(json.clone()).map_err(|e| Error::corrupt(T::WHAT, e))?;
            let text = sealed.as_str().ok_or_else(|| {
                Error::Vault(format!("{}: the sealed field is not text", T::WHAT))
            })?;
            if let Some(plain) = self
                .vault
                .open_sealed(&ids.case_ref, &ids.message_id, text)?
            {
                let secret: serde_json::Map<String, serde_json::Value> =
                    from_json(T::WHAT, &plain)?;
                if let Some(obj) = json.as_object_mut() {
                    obj.extend(secret);
                }
            }
        }
        serde_json::from_value(json).map_err(|e| Error::corrupt(T::WHAT, e))
    }

    /// Every record of a tree stored by [`Store::put_sealed`], in key order.
    pub(crate) fn all_sealed<T: Sealed>(&self, tree: &sled::Tree) -> Result<Vec<T>, Error> {
        tree.iter()
            .values()
            .map(|v| v.map_err(Error::from).and_then(|v| self.unseal::<T>(&v)))
            .collect()
    }

    pub(crate) fn all<T: DeserializeOwned>(
        tree: &sled::Tree,
        what: &'static str,
    ) -> Result<Vec<T>, Error> {
        tree.iter()
            .values()
            .map(|v| v.map_err(Error::from).and_then(|v| from_json(what, &v)))
            .collect()
    }

    // ---- mirror ------------------------------------------------------------------------

    /// A case, if known.
    pub fn case(&self, case_ref: &CaseRef) -> Result<Option<KnownCase>, Error> {
        Self::get(&self.cases, "case", case_ref.as_str().as_bytes())
    }

    /// Every known case.
    pub fn cases(&self) -> Result<Vec<KnownCase>, Error> {
        Self::all(&self.cases, "case")
    }

    /// Store a case.
    pub fn put_case(&self, case: &KnownCase) -> Result<(), Error> {
        Self::put(&self.cases, case.case_ref.as_str().as_bytes(), case)
    }

    /// Change a case under the write lock; `f` gets the current entry (if any) and returns
    /// the new one (or `None` to leave it).
    pub fn update_case(
        &self,
        case_ref: &CaseRef,
        f: impl FnOnce(Option<KnownCase>) -> Option<KnownCase>,
    ) -> Result<Option<KnownCase>, Error> {
        let _guard = self.lock();
        let next = f(self.case(case_ref)?);
        if let Some(c) = &next {
            self.put_case(c)?;
        }
        Ok(next)
    }

    /// A consent, if known.
    pub fn consent(&self, id: &uuid::Uuid) -> Result<Option<KnownConsent>, Error> {
        Self::get(&self.consents, "consent", id.as_bytes())
    }

    /// Store a consent.
    pub fn put_consent(&self, c: &KnownConsent) -> Result<(), Error> {
        Self::put(&self.consents, c.record.consent_id.as_bytes(), c)
    }

    /// The consents known for a case (all cases with `None`).
    pub fn consents(&self, case_ref: Option<&CaseRef>) -> Result<Vec<KnownConsent>, Error> {
        let all: Vec<KnownConsent> = Self::all(&self.consents, "consent")?;
        Ok(all
            .into_iter()
            .filter(|c| case_ref.is_none_or(|r| &c.record.case_ref == r))
            .collect())
    }

    // ---- meta --------------------------------------------------------------------------

    /// A value from the meta tree.
    pub fn meta_get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        Self::get(&self.meta, "meta record", name.as_bytes())
    }

    /// Store a value in the meta tree.
    pub fn meta_put<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        Self::put(&self.meta, name.as_bytes(), value)
    }

    // ---- deleting a case ---------------------------------------------------------------

    /// Delete everything the agent holds about a case: first the data keys of its sealed
    /// payloads (crypto-shredding, durable before anything else goes), then inbox entries,
    /// receipts kept for re-deliveries, refused deliveries, outbox entries, the mirror of
    /// the case and its consents. Returns how many messages (inbox and outbox) went.
    pub fn delete_case(&self, case_ref: &CaseRef) -> Result<u64, Error> {
        let _guard = self.lock();
        self.vault.destroy_case(case_ref)?;
        ketenpost_transport::failpoint::hit("agent-deletion", "shredded");
        let mut messages = 0u64;
        let matches = |v: &[u8]| -> bool {
            serde_json::from_slice::<CaseOnly>(v).is_ok_and(|c| &c.case_ref == case_ref)
        };
        for tree in [&self.inbox, &self.outbox] {
            for item in tree.iter() {
                let (k, v) = item?;
                if matches(&v) {
                    tree.remove(&k)?;
                    self.outbox_queue.remove(&k)?;
                    messages += 1;
                }
            }
        }
        for tree in [&self.receipted, &self.refused] {
            for item in tree.iter() {
                let (k, v) = item?;
                if matches(&v) {
                    tree.remove(&k)?;
                }
            }
        }
        for item in self.consents.iter() {
            let (k, v) = item?;
            if serde_json::from_slice::<KnownConsent>(&v)
                .is_ok_and(|c| &c.record.case_ref == case_ref)
            {
                self.consents.remove(&k)?;
            }
        }
        self.cases.remove(case_ref.as_str().as_bytes())?;
        self.unindex_case(case_ref)?;
        Ok(messages)
    }
}

/// The one field every per-message record has, for scanning by case.
#[derive(serde::Deserialize)]
pub(crate) struct CaseOnly {
    pub(crate) case_ref: CaseRef,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        message_id: MessageId,
        case_ref: CaseRef,
        #[serde(default)]
        secret: Option<String>,
    }

    impl Sealed for Rec {
        const SECRET: &'static [&'static str] = &["secret"];
        const WHAT: &'static str = "test record";
    }

    #[tokio::test]
    async fn a_key_goes_only_after_the_flush_that_made_its_last_write_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.db.open_tree("test").unwrap();
        let mut rec = Rec {
            message_id: MessageId::new(),
            case_ref: CaseRef::random(),
            secret: Some("marker".into()),
        };
        store.put_sealed(&tree, b"k", &rec).unwrap();
        let raw = tree.get(b"k").unwrap().unwrap();
        assert!(!raw.windows(6).any(|w| w == b"marker"), "sealed at rest");
        assert_eq!(
            store.get_sealed::<Rec>(&tree, b"k").unwrap().as_ref(),
            Some(&rec)
        );

        // The secret goes: the key stays until a flush made that write durable.
        rec.secret = None;
        store.put_sealed(&tree, b"k", &rec).unwrap();
        assert!(store.vault.holds_message(&rec.case_ref, &rec.message_id));
        store.flush().await.unwrap();
        assert!(!store.vault.holds_message(&rec.case_ref, &rec.message_id));
        assert_eq!(store.get_sealed::<Rec>(&tree, b"k").unwrap(), Some(rec));
    }
}
