//! A read cache of the case and consent registries for the checks of every submission.
//!
//! Every submission's checks read its case and, under consent, its consent: a sled read
//! and a JSON parse each, and each sled read waits while the writer thread's transaction
//! holds sled's lock. Cases and consents change rarely (control records, the sweep), so the
//! checks read them from here.
//!
//! Coherence: a reader notes the generation before it reads sled and keeps what it read
//! only if the generation is unchanged (under the cache's lock); a writer bumps the
//! generation and then empties the cache, both after its write is committed. A value read
//! before a commit is therefore either refused (the generation moved) or removed by the
//! emptying that follows, so no read after a commit and its invalidation sees the older
//! value. Only values found are kept; the cache is emptied when it reaches its bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// At most this many entries of each registry are kept (a few hundred KiB of cases).
const BOUND: usize = 1024;

/// One registry's cache.
#[derive(Debug)]
pub(super) struct Cached<K, V> {
    generation: AtomicU64,
    entries: RwLock<HashMap<K, V>>,
}

impl<K, V> Default for Cached<K, V> {
    fn default() -> Self {
        Cached {
            generation: AtomicU64::new(0),
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Cached<K, V> {
    /// The value under `key`: from the cache, or as `read` gives it (and then kept).
    pub(super) fn get<E>(
        &self,
        key: &K,
        read: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(v) = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
        {
            return Ok(Some(v.clone()));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let value = read()?;
        if let Some(v) = &value {
            let mut entries = self
                .entries
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.generation.load(Ordering::SeqCst) == generation {
                if entries.len() >= BOUND {
                    entries.clear();
                }
                entries.insert(key.clone(), v.clone());
            }
        }
        Ok(value)
    }

    /// Forget everything: call after a committed write of this registry.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_read_before_an_invalidation_is_not_kept() {
        let cache: Cached<u8, &str> = Cached::default();
        // A reader reads the old value; a writer commits and invalidates before the
        // reader keeps it.
        let got = cache.get(&1, || {
            cache.invalidate();
            Ok::<_, ()>(Some("old"))
        });
        assert_eq!(got, Ok(Some("old")));
        assert_eq!(cache.get(&1, || Ok::<_, ()>(Some("new"))), Ok(Some("new")));
        // Kept now: no read.
        assert_eq!(
            cache.get(&1, || Err::<Option<&str>, _>("read")),
            Ok(Some("new"))
        );
        cache.invalidate();
        assert_eq!(cache.get(&1, || Ok::<_, ()>(None)), Ok(None));
        // Nothing found is nothing kept.
        assert_eq!(
            cache.get(&1, || Ok::<_, ()>(Some("later"))),
            Ok(Some("later"))
        );
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache: Cached<usize, usize> = Cached::default();
        for k in 0..BOUND * 3 {
            assert_eq!(cache.get(&k, || Ok::<_, ()>(Some(k))), Ok(Some(k)));
        }
        assert!(cache.entries.read().expect("not poisoned").len() <= BOUND);
    }
}
