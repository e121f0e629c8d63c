//! The expiry index, in [blocks](super::blocks): which messages expire when, so that the
//! sweep reads only what is due.
//!
//! An entry is a message's expiry time (milliseconds since the epoch, clamped at zero) and
//! its id. The entries are kept in blocks, one sled key per run of 2^[`BUCKET_BITS`]
//! milliseconds (the time shifted right, big-endian, so keys sort by time). Messages
//! accepted together, which expire together, share a block: at 5,000 a second some 80 to a
//! block of 16 ms.

use chrono::{DateTime, Utc};

use super::blocks;

/// 2^4 = 16 milliseconds share a block.
pub(super) const BUCKET_BITS: u32 = 4;

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

/// The key of the block of time `ms`.
fn block_key(ms: u64) -> [u8; 8] {
    (ms >> BUCKET_BITS).to_be_bytes()
}

/// The entries of a stored block, in order, as (expiry ms, message id).
pub(super) fn entries(
    block: &[u8],
) -> Result<impl Iterator<Item = (u64, [u8; 16])> + '_, super::StoreError> {
    blocks::entries(block, WHAT)
}

/// The key below which every block holds only entries at or before `now`, and the key of
/// the block that may hold some of both: the sweep reads `..=last` and filters the last.
pub(super) fn due_keys(now: DateTime<Utc>) -> [u8; 8] {
    block_key(millis(now))
}

/// Whether an entry at `ms` is due at `now`.
pub(super) fn is_due(ms: u64, now: DateTime<Utc>) -> bool {
    ms <= millis(now)
}

/// Index message `id` as expiring at `at`, inside a transaction.
pub(super) fn add_in(
    expiry: &sled::transaction::TransactionalTree,
    at: DateTime<Utc>,
    id: &[u8; 16],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let ms = millis(at);
    blocks::add_in(
        expiry,
        &block_key(ms),
        &blocks::entry(ms, id),
        blocks::ENTRY,
    )
}

/// Remove message `id`, expiring at `at`, from the index, inside a transaction.
pub(super) fn remove_in(
    expiry: &sled::transaction::TransactionalTree,
    at: DateTime<Utc>,
    id: &[u8; 16],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let ms = millis(at);
    blocks::remove_in(expiry, &block_key(ms), &blocks::entry(ms, id))
}

/// Remove message `id`, expiring at `ms`, from the index, outside a transaction (the
/// sweep's clean-up of an entry whose message is gone). An atomic update of the one key,
/// so an entry a transaction adds meanwhile is kept.
pub(super) fn remove(expiry: &sled::Tree, ms: u64, id: &[u8; 16]) -> Result<(), super::StoreError> {
    let gone = blocks::entry(ms, id);
    expiry.update_and_fetch(block_key(ms), |old| {
        old.and_then(|b| blocks::without(b, &gone))
    })?;
    Ok(())
}

/// Move the entries of an older version's tree [`LEGACY_TREE`] into blocks and drop it. Run
/// at every start until it is gone (after the start's reconciliation, which reads it in a
/// store that keeps no body counts); a crash halfway leaves it in place and the next start
/// moves its entries again (an entry already in its block is replaced by itself).
pub(super) fn migrate(db: &sled::Db, expiry: &sled::Tree) -> Result<(), super::StoreError> {
    super::migrate_legacy(
        db,
        LEGACY_TREE,
        "expiry entries",
        |k, _| {
            let ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
            let id = <[u8; 16]>::try_from(k.get(8..)?).ok()?;
            Some((
                block_key(ms).to_vec(),
                blocks::entry(ms, &id),
                blocks::ENTRY,
            ))
        },
        expiry,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blocks_sort_by_time_and_the_last_due_block_is_filtered() {
        let t = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        assert_eq!(block_key(millis(t(16))), block_key(millis(t(31))));
        assert!(block_key(millis(t(15))) < block_key(millis(t(16))));
        assert_eq!(due_keys(t(20)), block_key(16));
        assert!(is_due(20, t(20)) && !is_due(21, t(20)));
        assert_eq!(millis(t(-5)), 0);
    }
}
