//! Sorted blocks of fixed-size entries under one sled key: what the queues
//! ([`super::queue`]) and the expiry index ([`super::expiry`]) keep instead of one key per
//! entry.
//!
//! sled keeps some 100 bytes of bookkeeping in memory for every page of every tree, loaded
//! or not, and a page holds at most 16 keys (9 when keys only grow, as queue and expiry
//! keys do). With one key per entry those two indexes were the largest share of the
//! broker's memory with a long queue.
//!
//! An entry is a number (big-endian) and a message id, 24 bytes; a block keeps its entries
//! sorted by their bytes. A state change of a block is a read and a write inside the
//! transaction that makes it ([`add_in`], [`remove_in`]): sled runs one transaction at a
//! time, so no two changes of a block can lose each other. The two changes outside a
//! transaction are safe too: the sweep's clean-up of an expiry entry whose message is gone
//! is an atomic compare-and-swap update of the one key, retried when a transaction changed
//! it meanwhile, and the move of an older version's index runs at start, before anything
//! else writes.

use super::StoreError;

/// The bytes of one entry: a number, then a message id.
pub(super) const ENTRY: usize = 8 + 16;

/// The entry of number `n` and message `id`.
pub(super) fn entry(n: u64, id: &[u8; 16]) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..8].copy_from_slice(&n.to_be_bytes());
    e[8..].copy_from_slice(id);
    e
}

/// The entries of a stored block, in order, as (number, id); an error for a value that is
/// not a whole number of entries.
pub(super) fn entries<'a>(
    block: &'a [u8],
    what: &'static str,
) -> Result<impl Iterator<Item = (u64, [u8; 16])> + 'a, StoreError> {
    if block.len() % ENTRY != 0 {
        return Err(StoreError::Corrupt {
            what,
            reason: format!("{} bytes, not a multiple of {ENTRY}", block.len()),
        });
    }
    Ok(block.chunks_exact(ENTRY).map(|e| {
        let (n, id) = e.split_at(8);
        (
            u64::from_be_bytes(n.try_into().unwrap_or([0; 8])),
            id.try_into().unwrap_or([0; 16]),
        )
    }))
}

/// `block` (absent: empty) with `new` in its place; an entry whose first `same` bytes
/// equal `new`'s is replaced by it.
pub(super) fn with(block: Option<&[u8]>, new: &[u8; ENTRY], same: usize) -> Vec<u8> {
    let old = block.unwrap_or_default();
    let mut out = Vec::with_capacity(old.len() + ENTRY);
    let mut placed = false;
    for e in old.chunks_exact(ENTRY) {
        if e[..same] == new[..same] {
            continue;
        }
        if !placed && e > &new[..] {
            out.extend_from_slice(new);
            placed = true;
        }
        out.extend_from_slice(e);
    }
    if !placed {
        out.extend_from_slice(new);
    }
    out
}

/// `block` without the entries that start with `prefix`; `None` when nothing is left (the
/// key goes).
pub(super) fn without(block: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
    let out: Vec<u8> = block
        .chunks_exact(ENTRY)
        .filter(|e| !e.starts_with(prefix))
        .flatten()
        .copied()
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Add `new` to the block under `key` of the transaction's `tree` (see [`with`]).
pub(super) fn add_in(
    tree: &sled::transaction::TransactionalTree,
    key: &[u8],
    new: &[u8; ENTRY],
    same: usize,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let old = tree.get(key)?;
    tree.insert(key, with(old.as_deref(), new, same))?;
    Ok(())
}

/// Remove the entries that start with `prefix` from the block under `key` of the
/// transaction's `tree` (see [`without`]).
pub(super) fn remove_in(
    tree: &sled::transaction::TransactionalTree,
    key: &[u8],
    prefix: &[u8],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    if let Some(old) = tree.get(key)? {
        match without(&old, prefix) {
            Some(rest) => tree.insert(key, rest)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn list(block: &[u8]) -> Vec<(u64, [u8; 16])> {
        entries(block, "test block").unwrap().collect()
    }

    #[test]
    fn entries_stay_sorted_and_an_entry_is_replaced_by_its_key() {
        let b = with(None, &entry(5, &id(5)), 8);
        let b = with(Some(&b), &entry(2, &id(2)), 8);
        let b = with(Some(&b), &entry(9, &id(9)), 8);
        // Same number, by the first 8 bytes: replaced.
        let b = with(Some(&b), &entry(5, &id(6)), 8);
        assert_eq!(list(&b), vec![(2, id(2)), (5, id(6)), (9, id(9))]);
        // Same number, by all 24 bytes: both kept, in order.
        let b = with(Some(&b), &entry(5, &id(1)), ENTRY);
        assert_eq!(
            list(&b),
            vec![(2, id(2)), (5, id(1)), (5, id(6)), (9, id(9))]
        );
        let b = without(&b, &5u64.to_be_bytes()).unwrap();
        assert_eq!(list(&b), vec![(2, id(2)), (9, id(9))]);
        assert_eq!(
            without(&b, &7u64.to_be_bytes()).as_deref(),
            Some(b.as_slice())
        );
        let b = without(&b, &entry(2, &id(2))).unwrap();
        assert_eq!(without(&b, &entry(9, &id(9))), None);
        // Adding an entry that is there already changes nothing.
        assert_eq!(with(Some(&b), &entry(9, &id(9)), ENTRY), b);
    }

    #[test]
    fn a_block_of_a_wrong_length_is_an_error() {
        assert!(entries(&[0; 25], "test block").is_err());
        assert_eq!(list(&[]), vec![]);
    }
}
