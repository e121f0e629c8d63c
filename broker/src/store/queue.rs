//! The recipients' queues, in blocks.
//!
//! A queue entry says that a message waits for a recipient: its queue sequence number
//! (from [`sled::Db::generate_id`], increasing in the order messages are accepted) and the
//! message id. Entries are kept in blocks, one sled key per block: the recipient's OIN,
//! then the sequence number shifted right by [`BLOCK_BITS`]. A block holds every entry of
//! that recipient within one run of 2^[`BLOCK_BITS`] sequence numbers, sorted, 24 bytes
//! each (sequence number, big-endian, then the id).
//!
//! Why blocks: sled keeps some 100 bytes of bookkeeping in memory for every page of every
//! tree, loaded or not, and a page holds at most 16 keys (9 when keys only grow, as queue
//! keys do). One key per entry made the queues the largest share of the broker's memory
//! with a long queue. A recipient that receives most of the traffic (the one a long queue
//! belongs to) gets most of each run's numbers, so its entries share keys; a recipient that
//! receives little gets one entry per block, as it had one key per entry before.
//!
//! The key of an entry's block follows from its sequence number, so a transaction finds it
//! with one read (sled's transactions cannot scan). Every change of a block is a read and a
//! write inside the transaction that makes it: sled runs one transaction at a time, so no
//! two changes of a block can lose each other.

use ketenpost_schemas::ids::Oin;

/// 2^4 = 16 consecutive sequence numbers share a block.
pub(super) const BLOCK_BITS: u32 = 4;

/// The bytes of one entry: the sequence number, then the message id.
const ENTRY: usize = 8 + 16;

/// The tree the blocks live in. A store an older version wrote kept one key per entry in
/// the tree `queue`; [`super::Store::open`] moves them over ([`migrate`]).
pub(super) const TREE: &str = "queue_blocks";

/// The tree of an older version: recipient OIN ‖ sequence number → message id.
pub(super) const LEGACY_TREE: &str = "queue";

/// The key of the block that holds `party`'s entry `seq`.
pub(super) fn block_key(party: &Oin, seq: u64) -> Vec<u8> {
    super::key2(
        party.as_str().as_bytes(),
        &(seq >> BLOCK_BITS).to_be_bytes(),
    )
}

/// The entries of a stored block, in order; an error for a value that is not a whole
/// number of entries.
pub(super) fn entries(
    block: &[u8],
) -> Result<impl Iterator<Item = (u64, [u8; 16])> + '_, super::StoreError> {
    if block.len() % ENTRY != 0 {
        return Err(super::StoreError::Corrupt {
            what: "queue block",
            reason: format!("{} bytes, not a multiple of {ENTRY}", block.len()),
        });
    }
    Ok(block.chunks_exact(ENTRY).map(|e| {
        let (seq, id) = e.split_at(8);
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]));
        (seq, id.try_into().unwrap_or([0; 16]))
    }))
}

/// `block` (absent: empty) with the entry `seq` → `id` added, in order; an entry already
/// there under `seq` is replaced.
pub(super) fn with_entry(block: Option<&[u8]>, seq: u64, id: &[u8; 16]) -> Vec<u8> {
    let old = block.unwrap_or_default();
    let mut out = Vec::with_capacity(old.len() + ENTRY);
    let mut placed = false;
    for e in old.chunks_exact(ENTRY) {
        let s = u64::from_be_bytes(e[..8].try_into().unwrap_or([0; 8]));
        if !placed && s >= seq {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(id);
            placed = true;
            if s == seq {
                continue;
            }
        }
        out.extend_from_slice(e);
    }
    if !placed {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(id);
    }
    out
}

/// `block` without the entry `seq`; `None` when nothing is left (the key goes).
pub(super) fn without_entry(block: &[u8], seq: u64) -> Option<Vec<u8>> {
    let out: Vec<u8> = block
        .chunks_exact(ENTRY)
        .filter(|e| e[..8] != seq.to_be_bytes())
        .flatten()
        .copied()
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Move the entries of an older version's tree `queue` into blocks and drop it. Run at
/// every start until it is gone; a crash halfway leaves `queue` in place and the next
/// start moves its entries again (an entry already in its block is replaced by itself).
pub(super) fn migrate(db: &sled::Db, blocks: &sled::Tree) -> Result<(), super::StoreError> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == LEGACY_TREE.as_bytes())
    {
        return Ok(());
    }
    let legacy = db.open_tree(LEGACY_TREE)?;
    let mut moved = 0u64;
    for item in legacy.iter() {
        let (k, id) = item?;
        let (Some(cut), Ok(id)) = (k.len().checked_sub(8), <[u8; 16]>::try_from(id.as_ref()))
        else {
            tracing::error!("a queue entry of an older version that does not parse, left out");
            continue;
        };
        let (party, seq) = k.split_at(cut);
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]));
        let key = super::key2(party, &(seq >> BLOCK_BITS).to_be_bytes());
        let block = blocks.get(&key)?;
        blocks.insert(key, with_entry(block.as_deref(), seq, &id))?;
        moved += 1;
    }
    db.flush()?;
    drop(legacy);
    db.drop_tree(LEGACY_TREE)?;
    db.flush()?;
    tracing::info!(moved, "queue entries of an older version moved into blocks");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn list(block: &[u8]) -> Vec<(u64, [u8; 16])> {
        entries(block).unwrap().collect()
    }

    #[test]
    fn entries_stay_sorted_and_a_sequence_number_is_there_once() {
        let b = with_entry(None, 5, &id(5));
        let b = with_entry(Some(&b), 2, &id(2));
        let b = with_entry(Some(&b), 9, &id(9));
        let b = with_entry(Some(&b), 5, &id(6));
        assert_eq!(list(&b), vec![(2, id(2)), (5, id(6)), (9, id(9))]);
        let b = without_entry(&b, 5).unwrap();
        assert_eq!(list(&b), vec![(2, id(2)), (9, id(9))]);
        assert_eq!(without_entry(&b, 7).as_deref(), Some(b.as_slice()));
        let b = without_entry(&b, 2).unwrap();
        assert_eq!(without_entry(&b, 9), None);
    }

    #[test]
    fn a_block_key_groups_a_run_of_sequence_numbers() {
        let party: Oin = "00000001234567890000".parse().unwrap();
        assert_eq!(block_key(&party, 16), block_key(&party, 31));
        assert_ne!(block_key(&party, 15), block_key(&party, 16));
        assert!(block_key(&party, 15) < block_key(&party, 16));
        assert!(block_key(&party, u64::MAX).starts_with(party.as_str().as_bytes()));
    }

    #[test]
    fn a_block_of_a_wrong_length_is_an_error() {
        assert!(entries(&[0; 25]).is_err());
        assert_eq!(list(&[]), vec![]);
    }
}
