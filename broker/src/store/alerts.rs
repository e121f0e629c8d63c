//! The alert queue in the store: which audit records were turned into alerts (a cursor),
//! and the alerts not yet accepted by their receivers.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `alerts` | receiver index (u32, big-endian) ‖ audit seq (u64, big-endian) | the alert (JSON) |
//! | `alerts_state` | `cursor` | the last audit seq turned into alerts (u64, big-endian) |
//!
//! Staging a scan's alerts and moving the cursor is one transaction, so a record becomes
//! its alerts exactly once; removing a delivered alert and recording `alert_sent` in the
//! trail is another.

use chrono::{DateTime, Utc};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::{Store, StoreError};
use crate::audit::{AuditEntry, AuditTrail};

const CURSOR: &[u8] = b"cursor";

/// An alert as queued: its key ([`alert_key`]) and its JSON body.
pub type QueuedAlert = (Vec<u8>, Vec<u8>);

/// The key of an alert for receiver `receiver` about audit record `seq`.
pub fn alert_key(receiver: u32, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&receiver.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The receiver and seq of an alert key.
pub fn split_alert_key(key: &[u8]) -> Option<(u32, u64)> {
    let r = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let s = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    Some((r, s))
}

impl Store {
    /// Whether alerts ran on this data before (a cursor is stored).
    pub fn has_alert_cursor(&self) -> Result<bool, StoreError> {
        Ok(self.alerts_state.contains_key(CURSOR)?)
    }

    /// The last audit seq whose alerts were staged (0: none yet).
    pub fn alert_cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .alerts_state
            .get(CURSOR)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Stage `alerts` (key, JSON) and move the cursor to `cursor`, in one transaction.
    pub fn stage_alerts(&self, cursor: u64, alerts: &[QueuedAlert]) -> Result<(), StoreError> {
        self.poison.check()?;
        (&self.alerts, &self.alerts_state)
            .transaction(|(queue, state)| {
                for (k, v) in alerts {
                    queue.insert(k.as_slice(), v.as_slice())?;
                }
                state.insert(CURSOR, &cursor.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)
    }

    /// Every alert waiting for its receiver, in key order (per receiver, oldest first).
    pub fn pending_alerts(&self) -> Result<Vec<QueuedAlert>, StoreError> {
        self.alerts
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// The receiver accepted the alert under `key`: remove it and append `entry` (its
    /// `alert_sent` record) to the trail, in one transaction.
    pub fn alert_delivered(
        &self,
        trail: &AuditTrail,
        key: &[u8],
        entry: AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.poison.check()?;
        entry.validate()?;
        let chain = trail.lock_chain();
        let cursor = (&self.alerts, trail.records_tree())
            .transaction(|(queue, records)| {
                queue.remove(key)?;
                let mut cursor = chain.cursor();
                chain
                    .stage(&mut cursor, entry.clone(), now)
                    .map_err(|e| ConflictableTransactionError::Abort(StoreError::from(e)))?;
                cursor.write(records)?;
                Ok(cursor)
            })
            .map_err(StoreError::from)?;
        chain.advance(cursor);
        Ok(())
    }
}
