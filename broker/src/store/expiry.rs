//! The expiry index, in [blocks](super::blocks): which messages expire when, so that the
//! sweep reads only what is due.
//!
//! An entry is a message's expiry time (milliseconds since the epoch, clamped at zero) and
//! its id. A block's key is the expiry time shifted right by [`BUCKET_BITS`] (a run of
//! about a second), then the message's slot ([`slot_of`]: its first queue sequence number
//! shifted right by 4), both big-endian, so keys sort by time. A block holds the entries
//! that share both: at most 16 messages, as 16 sequence numbers make a slot and every
//! message takes at least one. So a block stays small however many messages expire at the
//! same moment (a TTL in workdays ends at midnight for every message of a day), and
//! messages accepted one after the other, which expire one after the other, share it.

use chrono::{DateTime, Utc};
use ketenpost_core::message::MessageMeta;

use super::blocks;

/// 2^10 milliseconds (about a second) make a bucket of expiry time.
pub(super) const BUCKET_BITS: u32 = 10;

/// The tree the blocks live in. A store an older version wrote kept one key per entry in
/// the tree [`LEGACY_TREE`]; [`super::Store::open`] moves them over ([`migrate`]).
pub(super) const TREE: &str = "expiry_blocks";

/// The tree of an older version: expiry time (ms, big-endian) ‖ message id → where its
/// body is in the spool.
pub(super) const LEGACY_TREE: &str = "expiry";

/// What a corrupt block is called in an error.
const WHAT: &str = "expiry block";

/// Milliseconds since the epoch, clamped at zero.
fn millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The key of the block of an entry at `ms` of a message in `slot`.
pub(super) fn block_key(ms: u64, slot: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(ms >> BUCKET_BITS).to_be_bytes());
    k[8..].copy_from_slice(&slot.to_be_bytes());
    k
}

/// The slot of a message: its first queue sequence number shifted right by 4, so that at
/// most 16 messages share one. A message queued for nobody (none is accepted so) gets a
/// slot of its own from its id.
pub(super) fn slot_of(meta: &MessageMeta) -> u64 {
    match meta.queue_seqs.values().min() {
        Some(seq) => seq >> 4,
        None => {
            let id = meta.id.0.as_bytes();
            u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
        }
    }
}

/// The entries of a stored block, in order, as (expiry ms, message id).
pub(super) fn entries(
    block: &[u8],
) -> Result<impl Iterator<Item = (u64, [u8; 16])> + '_, super::StoreError> {
    blocks::entries(block, WHAT)
}

/// The last key the sweep reads at `now`: every block of the bucket `now` falls in (of
/// those, only the entries [due](is_due) count) and everything before it.
pub(super) fn last_due_key(now: DateTime<Utc>) -> [u8; 16] {
    block_key(millis(now), u64::MAX)
}

/// Whether an entry at `ms` is due at `now`.
pub(super) fn is_due(ms: u64, now: DateTime<Utc>) -> bool {
    ms <= millis(now)
}

/// Index message `meta` as expiring at its `expires_at`, inside a transaction.
pub(super) fn add_in(
    expiry: &sled::transaction::TransactionalTree,
    meta: &MessageMeta,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let ms = millis(meta.expires_at);
    let new = blocks::entry(ms, meta.id.0.as_bytes());
    blocks::add_in(expiry, &block_key(ms, slot_of(meta)), &new, blocks::ENTRY)
}

/// Remove message `meta` from the index, inside a transaction.
pub(super) fn remove_in(
    expiry: &sled::transaction::TransactionalTree,
    meta: &MessageMeta,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let ms = millis(meta.expires_at);
    let gone = blocks::entry(ms, meta.id.0.as_bytes());
    blocks::remove_in(expiry, &block_key(ms, slot_of(meta)), &gone)
}

/// Remove the entry (`ms`, `id`) from the block under `key`, outside a transaction (the
/// sweep's clean-up of an entry whose message is gone): an atomic update of the one key,
/// so an entry a transaction adds to it meanwhile is kept.
pub(super) fn remove(
    expiry: &sled::Tree,
    key: &[u8],
    ms: u64,
    id: &[u8; 16],
) -> Result<(), super::StoreError> {
    let gone = blocks::entry(ms, id);
    expiry.update_and_fetch(key, |old| old.and_then(|b| blocks::without(b, &gone)))?;
    Ok(())
}

/// Move the entries of an older version's tree [`LEGACY_TREE`] into blocks and drop it. An
/// entry whose message is no longer held is left out. Run at every start until the tree
/// is gone (after the start's reconciliation, which reads it in a store that keeps no
/// body counts); a crash halfway leaves it in place and the next start moves its entries
/// again (an entry already in its block is replaced by itself).
pub(super) fn migrate(
    db: &sled::Db,
    meta: &sled::Tree,
    expiry: &sled::Tree,
) -> Result<(), super::StoreError> {
    super::migrate_legacy(
        db,
        LEGACY_TREE,
        "expiry entries",
        |k, _| {
            let Some(id) = k.get(8..).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                return Ok(super::Legacy::Unreadable);
            };
            Ok(match super::held_meta(meta, &id)? {
                Some(m) => {
                    let ms = millis(m.expires_at);
                    super::Legacy::Move(
                        block_key(ms, slot_of(&m)).to_vec(),
                        blocks::entry(ms, &id),
                        blocks::ENTRY,
                    )
                }
                None => super::Legacy::Stale,
            })
        },
        expiry,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blocks_sort_by_time_then_slot_and_the_last_bucket_is_read_whole() {
        let t = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        assert_eq!(block_key(1024, 3), block_key(2047, 3));
        assert_ne!(block_key(1024, 3), block_key(1024, 4));
        assert!(block_key(1023, 9) < block_key(1024, 0));
        assert!(block_key(2047, 9) <= last_due_key(t(1500)));
        assert!(block_key(2048, 0) > last_due_key(t(1500)));
        assert!(is_due(20, t(20)) && !is_due(21, t(20)));
        assert_eq!(millis(t(-5)), 0);
    }
}
