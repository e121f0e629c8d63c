//! How the store encodes its values and keys: JSON for registries, the settled marker,
//! big-endian compound keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use ketenpost_core::message::MessageMeta;

pub(super) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own plain data types always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(super) fn parse<T: for<'a> Deserialize<'a>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// What `meta` holds for a message that was accepted and is no longer held (every
/// recipient receipted it, or it expired): the id stays as the dedup entry, its metadata
/// goes. One byte, which neither encoding of [`MessageMeta`] starts with.
pub(crate) const SETTLED: &[u8] = &[0];

/// A message's stored metadata ([`MessageMeta::from_bytes`]: binary, or JSON written by
/// an older version); `None` for a [`SETTLED`] message, which the broker no longer holds.
pub(super) fn meta_of(bytes: &[u8]) -> Result<Option<MessageMeta>, StoreError> {
    if bytes == SETTLED {
        return Ok(None);
    }
    MessageMeta::from_bytes(bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            what: "message metadata",
            reason: e.to_string(),
        })
}

/// The metadata under `id` in `meta`, if the broker holds that message.
pub(super) fn held_meta(meta: &sled::Tree, id: &[u8]) -> Result<Option<MessageMeta>, StoreError> {
    match meta.get(id)? {
        Some(v) => meta_of(&v),
        None => Ok(None),
    }
}

pub(super) fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

/// The `expiry` key of a message: milliseconds since the epoch (clamped at zero), then the id,
/// so keys sort by expiry time.
pub(super) fn expiry_key(at: DateTime<Utc>, id: &[u8; 16]) -> Vec<u8> {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    key2(&ms.to_be_bytes(), id)
}

pub(super) fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|i| key.get(i..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}
