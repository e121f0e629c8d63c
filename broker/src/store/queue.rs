//! The recipients' queues, in [blocks](super::blocks).
//!
//! A queue entry says that a message waits for a recipient: its queue sequence number
//! (from [`sled::Db::generate_id`], increasing in the order messages are accepted) and the
//! message id. The entries are kept in blocks, one sled key per block: the recipient's OIN,
//! then the sequence number shifted right by [`BLOCK_BITS`]. A block holds every entry of
//! that recipient within one run of 2^[`BLOCK_BITS`] sequence numbers.
//!
//! A recipient that receives most of the traffic (the one a long queue belongs to) gets
//! most of each run's numbers, so its entries share keys; a recipient that receives little
//! gets one entry per block, as it had one key per entry before. The key of an entry's
//! block follows from its sequence number, so a transaction finds it with one read (sled's
//! transactions cannot scan).

use ketenpost_schemas::ids::Oin;

use super::blocks;

/// 2^4 = 16 consecutive sequence numbers share a block.
pub(super) const BLOCK_BITS: u32 = 4;

/// The tree the blocks live in. A store an older version wrote kept one key per entry in
/// the tree [`LEGACY_TREE`]; [`super::Store::open`] moves them over ([`migrate`]).
pub(super) const TREE: &str = "queue_blocks";

/// The tree of an older version: recipient OIN ‖ sequence number → message id.
pub(super) const LEGACY_TREE: &str = "queue";

/// What a corrupt block is called in an error.
const WHAT: &str = "queue block";

/// The key of the block that holds `party`'s entry `seq`.
pub(super) fn block_key(party: &Oin, seq: u64) -> Vec<u8> {
    super::key2(
        party.as_str().as_bytes(),
        &(seq >> BLOCK_BITS).to_be_bytes(),
    )
}

/// The entries of a stored block, in order, as (sequence number, message id).
pub(super) fn entries(
    block: &[u8],
) -> Result<impl Iterator<Item = (u64, [u8; 16])> + '_, super::StoreError> {
    blocks::entries(block, WHAT)
}

/// Queue message `id` for `party` under `seq`, inside a transaction.
pub(super) fn add_in(
    queue: &sled::transaction::TransactionalTree,
    party_block: &[u8],
    seq: u64,
    id: &[u8; 16],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    // A sequence number is one entry: the same number again replaces it.
    blocks::add_in(queue, party_block, &blocks::entry(seq, id), 8)
}

/// Remove `party`'s entry `seq`, inside a transaction.
pub(super) fn remove_in(
    queue: &sled::transaction::TransactionalTree,
    party: &Oin,
    seq: u64,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    blocks::remove_in(queue, &block_key(party, seq), &seq.to_be_bytes())
}

/// Move the entries of an older version's tree [`LEGACY_TREE`] into blocks and drop it. Run
/// at every start until it is gone; a crash halfway leaves it in place and the next start
/// moves its entries again (an entry already in its block is replaced by itself).
pub(super) fn migrate(db: &sled::Db, queue: &sled::Tree) -> Result<(), super::StoreError> {
    super::migrate_legacy(
        db,
        LEGACY_TREE,
        "queue entries",
        |k, v| {
            let parsed = k.len().checked_sub(8).and_then(|cut| {
                let id = <[u8; 16]>::try_from(v).ok()?;
                let (party, seq) = k.split_at(cut);
                let seq = u64::from_be_bytes(seq.try_into().ok()?);
                let key = super::key2(party, &(seq >> BLOCK_BITS).to_be_bytes());
                Some(super::Legacy::Move(key, blocks::entry(seq, &id), 8))
            });
            Ok(parsed.unwrap_or(super::Legacy::Unreadable))
        },
        queue,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_block_key_groups_a_run_of_sequence_numbers() {
        let party: Oin = "00000001234567890000".parse().unwrap();
        assert_eq!(block_key(&party, 16), block_key(&party, 31));
        assert_ne!(block_key(&party, 15), block_key(&party, 16));
        assert!(block_key(&party, 15) < block_key(&party, 16));
        assert!(block_key(&party, u64::MAX).starts_with(party.as_str().as_bytes()));
    }
}
