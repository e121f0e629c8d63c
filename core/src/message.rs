//! What the broker keeps about an accepted message besides its body: the data every
//! decision about a queued message reads (receipts, expiry, answer clocks).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use serde::{Deserialize, Serialize};

/// Where a body is in the broker's spool: its segment, the offset of its record, and the body's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyAt {
    /// The segment number.
    pub segment: u32,
    /// The offset of the record (its header) in the segment.
    pub offset: u64,
    /// The body's length.
    pub len: u32,
}

impl BodyAt {
    /// 16 bytes: segment, offset and length, big-endian.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..12].copy_from_slice(&self.offset.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// The inverse of [`BodyAt::to_bytes`]; `None` for anything but 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<BodyAt> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (segment, rest) = b.split_first_chunk::<4>()?;
        let (offset, len) = rest.split_first_chunk::<8>()?;
        Some(BodyAt {
            segment: u32::from_be_bytes(*segment),
            offset: u64::from_be_bytes(*offset),
            len: u32::from_be_bytes(<[u8; 4]>::try_from(len).ok()?),
        })
    }
}

/// What the broker keeps about a message besides its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// The id.
    pub id: MessageId,
    /// The sender.
    pub sender: Oin,
    /// The case.
    pub case_ref: CaseRef,
    /// The purpose.
    pub purpose: String,
    /// The kind.
    pub kind: Kind,
    /// When it was accepted.
    pub accepted_at: DateTime<Utc>,
    /// When an undelivered body expires.
    pub expires_at: DateTime<Utc>,
    /// Recipients that have not receipted yet.
    pub pending: BTreeSet<Oin>,
    /// Recipients that fetched it at least once.
    #[serde(default)]
    pub fetched: BTreeSet<Oin>,
    /// Every recipient.
    pub recipients: BTreeSet<Oin>,
    /// Trace id.
    pub trace_id: String,
    /// Where the body is in the spool (set by the store when it writes the message).
    #[serde(default)]
    pub body_at: Option<BodyAt>,
    /// The sequence number of each recipient's queue entry (set by
    /// the store).
    #[serde(default)]
    pub queue_seqs: BTreeMap<Oin, u64>,
    /// Each recipient's view of the envelope, as its header lists them (set at acceptance),
    /// so that a fetch or a receipt needs no parse of the stored header. Empty in metadata
    /// written before: then they are read from the body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub views: BTreeMap<Oin, View>,
}

/// A recipient's view of an envelope: the index of its body among the header's bodies, and
/// that body's SHA-256 (lowercase hex, as the header lists it and a delivery receipt
/// names it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The index of its body in the header's `bodies`.
    pub index: u16,
    /// The SHA-256 of that body (64 lowercase hex digits).
    pub sha256: String,
}

mod codec;
pub use codec::{MetaFormatError, FORMAT_V1};
