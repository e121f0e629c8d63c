//! At start: the spool reconciled with the metadata (orphan bodies destroyed, dangling
//! metadata counted), the body counts per segment, and the moves of an older version's trees.

use super::codec::{expiry_key, held_meta, SETTLED};
use super::{blocks, StoreError};
use crate::spool::Spool;
use ketenpost_core::message::{BodyAt, MessageMeta};

/// Start-up reconciliation of the spool with the metadata, for a store an older version
/// wrote without body counts ([`reconcile_by_walk`]; `expiry` is that version's tree).
///
/// - A live body that no expiry entry points at is looked up in the metadata: if its
///   message still refers to it (an expiry entry lost by an older version), the body is
///   kept and its expiry entry written again; otherwise (its message was receipted or
///   expired, and a crash came after that decision was durable but before the body was
///   destroyed) it is destroyed now.
/// - Metadata whose body is not in the spool (damage: the spool syncs every body before its
///   metadata is written) is counted, uncounted from the live bodies, and logged; such a
///   message is never delivered and expires as usual.
pub(super) fn reconcile(
    spool: &Spool,
    meta: &sled::Tree,
    expiry: &sled::Tree,
    referenced: &[BodyAt],
) -> Result<(), StoreError> {
    // `referenced` is sorted by position; `live[i]` says whether the spool holds
    // `referenced[i]`. One byte per message, instead of a set of positions.
    let mut live = vec![false; referenced.len()];
    let mut bodies = 0usize;
    let (mut orphans, mut restored) = (0usize, 0usize);
    spool.visit_live_records(|at, id| {
        if let Ok(i) =
            referenced.binary_search_by_key(&(at.segment, at.offset), |r| (r.segment, r.offset))
        {
            live[i] = true;
            bodies += 1;
            return Ok(());
        }
        match owner_of(meta, at, &id)? {
            Some(m) => {
                expiry.insert(expiry_key(m.expires_at, &id), &at.to_bytes())?;
                spool.register(&at);
                bodies += 1;
                restored += 1;
            }
            None => {
                if spool.destroy_unreferenced(&at, &id)? {
                    orphans += 1;
                }
            }
        }
        Ok::<(), StoreError>(())
    })?;
    let mut dangling = 0usize;
    for (at, held) in referenced.iter().zip(&live) {
        if !held {
            spool.unregister(at);
            dangling += 1;
        }
    }
    spool.sync()?;
    tracing::info!(
        bodies,
        orphan_bodies_destroyed = orphans,
        expiry_entries_restored = restored,
        metadata_without_body = dangling,
        "spool reconciled with the metadata"
    );
    report_dangling(dangling as u64);
    Ok(())
}

/// The metadata that refers to the spool record `at` of message `id`, if any.
pub(super) fn owner_of(
    meta: &sled::Tree,
    at: BodyAt,
    id: &[u8; 16],
) -> Result<Option<MessageMeta>, StoreError> {
    Ok(held_meta(meta, id)?.filter(|m| m.body_at == Some(at)))
}

/// Log metadata whose body the spool does not hold (damage: the spool syncs every body
/// before its metadata is written).
pub(super) fn report_dangling(dangling: u64) {
    if dangling > 0 {
        tracing::error!(
            metadata_without_body = dangling,
            "messages whose body is missing from the spool: they cannot be delivered"
        );
    }
}

/// The key in `segments` that says the counts are kept.
pub(super) const COUNTED: &[u8] = b"counted";

/// A count in `segments`; anything but 8 bytes counts as 0, which the next start finds
/// does not match the spool, and counts again.
pub(super) fn count_of(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Add `delta` to the bodies `segment` holds, inside a transaction (a count of 0 is
/// removed, as the segment is).
pub(super) fn count_bodies(
    segments: &sled::transaction::TransactionalTree,
    segment: u32,
    delta: i64,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let key = segment.to_be_bytes();
    let now = count_of(segments.get(key)?.as_deref()).saturating_add_signed(delta);
    if now == 0 {
        segments.remove(&key)?;
    } else {
        segments.insert(&key, &now.to_be_bytes())?;
    }
    Ok(())
}

/// Replace the counts with `held` and mark them kept, in one batch.
pub(super) fn write_counts(
    segments: &sled::Tree,
    held: &std::collections::HashMap<u32, u64>,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for item in segments.iter().keys() {
        batch.remove(item?);
    }
    for (segment, n) in held {
        batch.insert(&segment.to_be_bytes(), &n.to_be_bytes());
    }
    batch.insert(COUNTED, &[1]);
    segments.apply_batch(batch)?;
    Ok(())
}

/// The start of a store that keeps counts: the spool's live records are counted per
/// segment (record headers only, nothing of sled), and only a segment whose count differs
/// from what the metadata counted is read record by record: each record is looked up in
/// the metadata, and one no metadata refers to is destroyed. That is where a crash leaves
/// its traces: bodies appended whose metadata never landed, and bodies released by a
/// durable decision before they were destroyed. A segment that holds fewer bodies than
/// the metadata counted has lost some (damage); they are logged, as in
/// [`reconcile`]. An orphan and a lost body in the same segment cancel out; a full
/// check of every message is what a store without counts gets ([`reconcile_by_walk`]).
pub(super) fn reconcile_counted(
    spool: &Spool,
    meta: &sled::Tree,
    segments: &sled::Tree,
) -> Result<(), StoreError> {
    use std::collections::{BTreeSet, HashMap};
    let mut counted: HashMap<u32, u64> = HashMap::new();
    for item in segments.iter() {
        let (k, v) = item?;
        if let Ok(segment) = <[u8; 4]>::try_from(k.as_ref()) {
            counted.insert(u32::from_be_bytes(segment), count_of(Some(&v)));
        }
    }
    let mut live: HashMap<u32, u64> = HashMap::new();
    spool.visit_live_records(|at, _| {
        *live.entry(at.segment).or_insert(0) += 1;
        Ok::<(), StoreError>(())
    })?;
    let all: BTreeSet<u32> = counted.keys().chain(live.keys()).copied().collect();
    let get = |m: &HashMap<u32, u64>, s: &u32| m.get(s).copied().unwrap_or(0);
    let unsure: BTreeSet<u32> = all
        .iter()
        .filter(|s| get(&counted, s) != get(&live, s))
        .copied()
        .collect();
    let mut kept: HashMap<u32, u64> = HashMap::new();
    let mut orphans = 0usize;
    spool.visit_live_records_in(
        |s| unsure.contains(&s),
        |at, id| {
            if owner_of(meta, at, &id)?.is_some() {
                *kept.entry(at.segment).or_insert(0) += 1;
            } else if spool.destroy_unreferenced(&at, &id)? {
                orphans += 1;
            }
            Ok::<(), StoreError>(())
        },
    )?;
    let (mut bodies, mut dangling) = (0u64, 0u64);
    for s in &all {
        let held = if unsure.contains(s) {
            get(&kept, s)
        } else {
            get(&live, s)
        };
        dangling += get(&counted, s).saturating_sub(held);
        spool.register_count(*s, held);
        bodies += held;
    }
    spool.sync()?;
    tracing::info!(
        bodies,
        segments = all.len(),
        segments_checked = unsure.len(),
        orphan_bodies_destroyed = orphans,
        metadata_without_body = dangling,
        "spool reconciled with the metadata's counts"
    );
    report_dangling(dangling);
    Ok(())
}

/// The start of a store without counts (an older version's): every body location is read
/// from that version's expiry tree ([`expiry::LEGACY_TREE`], one key per message, its body
/// location as the value; 16 bytes a message while the store opens, 16 MB for a million
/// queued, sorted by position and given back before the broker serves), then
/// [`reconcile`], which writes lost entries back into that tree; [`expiry::migrate`] moves
/// it into blocks afterwards.
pub(super) fn reconcile_by_walk(
    spool: &Spool,
    meta: &sled::Tree,
    expiry: &sled::Tree,
) -> Result<(), StoreError> {
    let mut referenced = Vec::new();
    for item in expiry.iter() {
        let (_, v) = item?;
        if let Some(at) = BodyAt::from_bytes(&v) {
            spool.register(&at);
            referenced.push(at);
        }
    }
    referenced.sort_unstable_by_key(|a| (a.segment, a.offset));
    referenced.dedup_by_key(|a| (a.segment, a.offset));
    reconcile(spool, meta, expiry, &referenced)
}

/// Whether `db` holds a tree `name` (without creating it, as opening it would).
pub(super) fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
}

/// What becomes of an entry of an older version's index ([`migrate_legacy`]).
pub(super) enum Legacy {
    /// Into the block under this key, as this entry, the same as an entry there whose
    /// first so many bytes are equal.
    Move(Vec<u8>, [u8; blocks::ENTRY], usize),
    /// Nothing: it names a message no longer held.
    Stale,
    /// Nothing, and logged: it does not parse.
    Unreadable,
}

/// Move the entries of an older version's tree `legacy` (one key per entry) into the
/// blocks of `to`, then drop `legacy`: `parse` gives an entry's block key, the entry and
/// how many of its first bytes make it the same entry ([`blocks::with`]). Run at every
/// start until `legacy` is gone; a crash halfway leaves it in place and the next start
/// moves its entries again, each replacing itself.
pub(super) fn migrate_legacy(
    db: &sled::Db,
    legacy: &str,
    what: &'static str,
    parse: impl Fn(&[u8], &[u8]) -> Result<Legacy, StoreError>,
    to: &sled::Tree,
) -> Result<(), StoreError> {
    if !has_tree(db, legacy) {
        return Ok(());
    }
    let old = db.open_tree(legacy)?;
    let (mut moved, mut unreadable) = (0u64, 0u64);
    for item in old.iter() {
        let (k, v) = item?;
        let (key, entry, same) = match parse(&k, &v)? {
            Legacy::Move(key, entry, same) => (key, entry, same),
            Legacy::Stale => continue,
            Legacy::Unreadable => {
                unreadable += 1;
                continue;
            }
        };
        let block = to.get(&key)?;
        to.insert(key, blocks::with(block.as_deref(), &entry, same))?;
        moved += 1;
    }
    db.flush()?;
    drop(old);
    db.drop_tree(legacy)?;
    db.flush()?;
    if moved > 0 || unreadable > 0 {
        tracing::info!(what, moved, "an older version's index moved into blocks");
    }
    if unreadable > 0 {
        tracing::error!(
            what,
            unreadable,
            "entries of an older version's index that do not parse, left out"
        );
    }
    Ok(())
}

/// A store an older version wrote kept its dedup set in a tree of its own, `seen`: each
/// id there without a key in `meta` (its message no longer held) gets the [`SETTLED`]
/// marker, and `seen` is dropped. Run at every start until it is gone; a crash halfway
/// leaves `seen` in place, and the next start does it again (an id already in `meta` is
/// left as it is).
pub(super) fn settle_legacy_dedup(db: &sled::Db, meta: &sled::Tree) -> Result<(), StoreError> {
    const LEGACY: &str = "seen";
    if !has_tree(db, LEGACY) {
        return Ok(());
    }
    let seen = db.open_tree(LEGACY)?;
    let mut settled = 0u64;
    for item in seen.iter().keys() {
        let id = item?;
        if meta
            .compare_and_swap(&id, None::<&[u8]>, Some(SETTLED))?
            .is_ok()
        {
            settled += 1;
        }
    }
    db.flush()?;
    drop(seen);
    db.drop_tree(LEGACY)?;
    db.flush()?;
    tracing::info!(
        settled,
        "the dedup set of an older version moved into the message metadata"
    );
    Ok(())
}
