//! The agent's own audit trail: what this organisation's agent decided, for its FG.
//!
//! The broker's trail cannot show what never reached the broker: a message the agent
//! refused early, a delivery the agent refused, a case it deleted. This trail records
//! those, and the broker's answers to our submissions, in the broker's own format and with
//! the broker's chain rule ([`ketenpost_audit`]): one [`AuditRecord`] per event,
//! numbered from 1, each carrying the hash of the one before. It lives in the sled tree
//! [`RECORDS_TREE`] of the agent's database, keyed by [`seq_key`], and is appended under
//! one mutex around the [`ChainHead`], so seqs stay contiguous.
//!
//! | event | when | reason |
//! |---|---|---|
//! | `early_refused` | the early check refused a send (HTTP 422, `refused_by: agent`) | the rejection code: refused by the sending agent |
//! | `accepted` | the broker accepted a submission | — |
//! | `rejected` | the broker rejected a submission for good | the rejection code: refused by the broker |
//! | `receipt` | a delivery was verified, stored and is being receipted | — |
//! | `delivery_refused` | a delivery was refused (`GET /v1/refused`) | the refusal code: refused by the receiving agent |
//! | `deletion_confirmed` | a deletion order was carried out and its confirmation signed | — |
//!
//! What a record holds is what this agent knows as fact: the ids, kind, purpose and
//! recipients of a message it built itself; of a delivery, only after the sender's
//! signature verified. A delivery refused before that (`malformed`, `unknown_sender`,
//! `bad_signature`) is recorded with our OIN, the code and the SHA-256 of the delivered
//! bytes (`request_digest`), as the broker records a refusal before verification.
//!
//! # Durability, and why an append never fails a request
//! An append writes into sled without flushing; the store's next flush (at the latest
//! sled's own, every second) makes it durable, together with the write it belongs to
//! where there is one (an inbox entry, a deletion). When an append fails, the agent logs
//! an error (the event and the code, no personal data) and carries on: the fact it was
//! about (a refusal, a receipt, a deletion) has already happened or been decided, and
//! failing the partner's request or the broker's receipt over it would lose or repeat that
//! fact rather than its record. `GET /v1/audit/verify` shows a trail the agent could not
//! extend only as far as its chain goes; the error log names the missing event.

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use ketenpost_audit::{
    key_seq, parse_record, seq_key, verify_exported, AuditEntry, AuditError, AuditRecord,
    ChainHead, ChainVerdict,
};

/// Name of the sled tree that holds the records (the broker's is named the same).
pub const RECORDS_TREE: &str = "audit";

fn storage(e: sled::Error) -> AuditError {
    AuditError::Storage(e.to_string())
}

/// The agent's trail over one tree of its sled database.
#[derive(Debug)]
pub struct AuditTrail {
    records: sled::Tree,
    /// The head of the chain. Invariant: it describes the last record in `records`: it is
    /// moved only after that record was written.
    head: Mutex<ChainHead>,
}

impl AuditTrail {
    /// Open the trail in `db`, recovering the head from the last record. Refuses
    /// ([`AuditError::Corrupt`]) to extend a trail whose last record does not parse or
    /// does not hash right: extending it would bury the damage.
    pub fn open(db: &sled::Db) -> Result<AuditTrail, AuditError> {
        let records = db.open_tree(RECORDS_TREE).map_err(storage)?;
        let last = records.last().map_err(storage)?;
        let head = ChainHead::recover(last.as_ref().map(|(k, v)| (k.as_ref(), v.as_ref())))?;
        Ok(AuditTrail {
            records,
            head: Mutex::new(head),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ChainHead> {
        // The head is only moved after a successful write, with nothing in between that
        // can panic, so a poisoned lock still holds the right head.
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append one record (not flushed; see the module docs) and return it.
    pub fn append(&self, entry: AuditEntry, now: DateTime<Utc>) -> Result<AuditRecord, AuditError> {
        let mut head = self.lock();
        let (record, bytes) = head.next(entry, now)?;
        self.records
            .insert(seq_key(record.seq), bytes)
            .map_err(storage)?;
        head.advance(&record);
        Ok(record)
    }

    /// Seq of the last record (0 for an empty trail).
    pub fn head_seq(&self) -> u64 {
        self.lock().seq
    }

    /// The stored bytes of every record dated in `[from, until)`, in seq order: exactly
    /// what is stored, so an export verifies as the trail does.
    pub fn export(
        &self,
        from: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<Vec<u8>>, AuditError> {
        let mut out = Vec::new();
        for item in self.records.iter() {
            let (key, value) = item.map_err(storage)?;
            if from.is_some() || until.is_some() {
                let seq = key_seq(&key).unwrap_or(0);
                // An unreadable record is exported as it is: the verifier names it.
                if let Ok(r) = parse_record(seq, &value) {
                    if from.is_some_and(|f| r.time < f) {
                        continue;
                    }
                    if until.is_some_and(|u| r.time >= u) {
                        break;
                    }
                }
            }
            out.push(value.to_vec());
        }
        Ok(out)
    }

    /// Check the whole chain (see [`verify_exported`]).
    pub fn verify(&self) -> Result<ChainVerdict, AuditError> {
        let all = self.export(None, None)?;
        Ok(verify_exported(all.iter().map(Vec::as_slice)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ketenpost_audit::{AuditEvent, GENESIS_HASH};

    const ME: &str = "00000001000001000001";

    fn open() -> (tempfile::TempDir, sled::Db, AuditTrail) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let trail = AuditTrail::open(&db).unwrap();
        (dir, db, trail)
    }

    fn refusal() -> AuditEntry {
        AuditEntry::refused(AuditEvent::EarlyRefused, "no_consent")
            .actor(ME)
            .kind("signaal")
            .reason_explained("no_consent", "refused by the sending agent")
    }

    #[test]
    fn appends_chain_and_verify() {
        let (_dir, db, trail) = open();
        let now = Utc::now();
        let first = trail.append(refusal(), now).unwrap();
        let second = trail.append(refusal(), now).unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(first.prev_hash, GENESIS_HASH);
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(
            first.reason.as_deref(),
            Some("no_consent: refused by the sending agent")
        );
        let verdict = trail.verify().unwrap();
        assert!(verdict.intact);
        assert_eq!(verdict.records, 2);
        // Reopened, the trail continues where it was.
        drop(trail);
        let trail = AuditTrail::open(&db).unwrap();
        assert_eq!(trail.append(refusal(), now).unwrap().prev_hash, second.hash);
        assert!(trail.verify().unwrap().intact);
    }

    #[test]
    fn a_tampered_record_is_found() {
        let (_dir, db, trail) = open();
        let now = Utc::now();
        for _ in 0..3 {
            trail.append(refusal(), now).unwrap();
        }
        let tree = db.open_tree(RECORDS_TREE).unwrap();
        let mut r = parse_record(2, &tree.get(seq_key(2)).unwrap().unwrap()).unwrap();
        r.reason = Some("consent_scope".into());
        tree.insert(seq_key(2), serde_json::to_vec(&r).unwrap())
            .unwrap();
        let verdict = trail.verify().unwrap();
        assert!(!verdict.intact);
        assert_eq!(verdict.first_broken, Some(2));
        // A removed record breaks the chain too.
        tree.remove(seq_key(2)).unwrap();
        assert_eq!(trail.verify().unwrap().first_broken, Some(2));
    }

    #[test]
    fn export_is_filtered_by_time_and_verifies_whole() {
        let (_dir, _db, trail) = open();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(10);
        trail.append(refusal(), t0).unwrap();
        trail.append(refusal(), t1).unwrap();
        assert_eq!(trail.export(Some(t1), None).unwrap().len(), 1);
        assert_eq!(trail.export(None, Some(t1)).unwrap().len(), 1);
        let all = trail.export(None, None).unwrap();
        assert!(verify_exported(all.iter().map(Vec::as_slice)).intact);
        // An export that lacks its first record does not verify.
        let verdict = verify_exported(all[1..].iter().map(Vec::as_slice));
        assert_eq!(verdict.first_broken, Some(1));
    }

    #[test]
    fn free_text_never_enters() {
        let (_dir, _db, trail) = open();
        let bad = AuditEntry::refused(AuditEvent::EarlyRefused, "no_consent")
            .actor("Jan Jansen, Dorpsstraat 1");
        assert!(matches!(
            trail.append(bad, Utc::now()),
            Err(AuditError::InvalidEntry { field: "actor", .. })
        ));
        assert_eq!(trail.head_seq(), 0);
    }
}
