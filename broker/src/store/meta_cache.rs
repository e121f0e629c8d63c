//! The decoded metadata of recently written messages, for the reads of every fetch,
//! receipt check and decision.
//!
//! A message's metadata is read four times on its way (its fetch, its receipt's check, and
//! the decisions of its first fetch and its receipt), each time a sled read (which waits
//! while the writer's transaction holds sled's lock) and a decode. The writers of the
//! metadata keep what they wrote here, decoded, so those reads find it.
//!
//! Coherence: only the writers of `meta` fill or change the cache (a message write puts the
//! metadata it wrote, a decision what it wrote or that it settled the message), and each
//! does so after its transaction committed and before it lets go of [`MetaCache::writing`],
//! which it takes before its transaction: the cache changes in the order the transactions
//! committed, and an entry always holds what the last committed transaction wrote for its
//! message. A reader that misses reads sled and does not fill: a fill could land after a
//! newer commit's change and bring back the older value. A decision reads the metadata its
//! own transaction wrote from that transaction, not from the cache
//! ([`super::transition::TxView::meta`]); the cache takes it once the transaction committed.
//! The oldest entries go when the bound is reached; a read of one then goes to sled.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ketenpost_core::message::MessageMeta;

/// At most this many messages' metadata is kept: about 5 MiB (a message's decoded metadata
/// takes about 2 KiB with its sets and maps; 8,192 added 18 MiB to the broker's peak with a
/// million queued). At 13,000 messages a second end to end, a message waits some 40 ms
/// from its acceptance to its receipt at the 99th percentile: about 500 messages are on
/// their way at once.
pub(super) const BOUND: usize = 2048;

/// A message id's 16 bytes.
pub(super) type Id = [u8; 16];

/// What a committed transaction wrote for one message: its metadata, or `None` when it
/// settled the message (receipted by all, or expired).
pub(super) type Wrote = Option<Arc<MessageMeta>>;

/// The cache ([`self`]).
#[derive(Debug, Default)]
pub(super) struct MetaCache {
    entries: Mutex<Entries>,
    /// Held by a writer of `meta` from before its transaction until the cache holds what it
    /// committed.
    writing: Mutex<()>,
}

#[derive(Debug, Default)]
struct Entries {
    held: HashMap<Id, Arc<MessageMeta>>,
    /// The order the ids were put in, oldest first; ids already gone may remain.
    order: VecDeque<Id>,
}

impl MetaCache {
    /// Taken by a writer of `meta` before its transaction and held until it called
    /// [`MetaCache::committed`] (or its transaction failed).
    pub(super) fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The metadata of `id` as the last committed transaction wrote it, if it is kept.
    pub(super) fn get(&self, id: &Id) -> Option<Arc<MessageMeta>> {
        self.lock().held.get(id).cloned()
    }

    /// What a committed transaction wrote, per message; the caller holds
    /// [`MetaCache::writing`] since before that transaction.
    pub(super) fn committed(&self, wrote: impl IntoIterator<Item = (Id, Wrote)>) {
        // What the entries held before, freed after the lock is let go.
        let mut replaced = Vec::new();
        let mut e = self.lock();
        for (id, meta) in wrote {
            match meta {
                Some(meta) => match e.held.insert(id, meta) {
                    Some(before) => replaced.push(before),
                    None => e.order.push_back(id),
                },
                None => replaced.extend(e.held.remove(&id)),
            }
        }
        while e.held.len() > BOUND {
            let Some(oldest) = e.order.pop_front() else {
                break;
            };
            replaced.extend(e.held.remove(&oldest));
        }
        // Ids settled since they were put stay in `order` until their turn; keep it
        // within twice the bound all the same.
        if e.order.len() > 2 * BOUND {
            let Entries { held, order } = &mut *e;
            order.retain(|id| held.contains_key(id));
        }
        drop(e);
        drop(replaced);
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u8) -> Arc<MessageMeta> {
        let at = chrono::DateTime::from_timestamp(1_764_600_000, 0).expect("valid time");
        Arc::new(MessageMeta {
            id: ketenpost_schemas::ids::MessageId(uuid::Uuid::from_bytes([n; 16])),
            sender: "00000000000000000009".parse().expect("valid OIN"),
            case_ref: "case-abcdefghijklmnopqrstuvwxyz"
                .parse()
                .expect("valid case ref"),
            purpose: "uitstroom".to_owned(),
            kind: ketenpost_schemas::kind::Kind::Signaal,
            accepted_at: at,
            expires_at: at,
            pending: Default::default(),
            fetched: Default::default(),
            recipients: Default::default(),
            trace_id: format!("{n:032x}"),
            body_at: None,
            queue_seqs: Default::default(),
            views: Default::default(),
        })
    }

    fn id(n: usize) -> Id {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(n as u64).to_be_bytes());
        id
    }

    #[test]
    fn an_entry_holds_the_last_committed_write_and_goes_when_settled() {
        let cache = MetaCache::default();
        let _writing = cache.writing();
        assert!(cache.get(&[1; 16]).is_none());
        cache.committed([([1; 16], Some(meta(1)))]);
        assert_eq!(cache.get(&[1; 16]), Some(meta(1)));
        // A later transaction's change, then within one transaction a change and a settle:
        // the last one counts.
        cache.committed([([1; 16], Some(meta(2)))]);
        assert_eq!(cache.get(&[1; 16]), Some(meta(2)));
        cache.committed([([1; 16], Some(meta(3))), ([1; 16], None)]);
        assert!(cache.get(&[1; 16]).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_bound_and_drops_the_oldest() {
        let cache = MetaCache::default();
        let m = meta(7);
        for n in 0..BOUND * 3 {
            cache.committed([(id(n), Some(m.clone()))]);
            // Every other one settled at once: `order` keeps their ids for a while.
            if n % 2 == 0 {
                cache.committed([(id(n), None)]);
            }
        }
        let e = cache.lock();
        assert!(e.held.len() <= BOUND, "{} kept", e.held.len());
        assert!(
            e.order.len() <= 2 * BOUND + 1,
            "{} ids in order",
            e.order.len()
        );
        drop(e);
        assert!(
            cache.get(&id(BOUND * 3 - 1)).is_some(),
            "the newest is kept"
        );
        assert!(cache.get(&id(1)).is_none(), "the oldest went");
    }
}
