//! What leaves the store: a party's deliveries and notices, and the messages due to expire.

use chrono::{DateTime, Utc};
use ketenpost_schemas::envelope::Envelope;
use ketenpost_schemas::ids::{MessageId, Oin};
use ketenpost_schemas::protocol::{envelope_to_b64, Delivery};

use super::codec::{parse, seq_of, SETTLED};
use super::{expiry, queue, Store, StoreError};
use ketenpost_core::message::MessageMeta;

/// What a fetch read ([`Store::fetch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The deliveries: messages first, then notices.
    pub items: Vec<Delivery>,
    /// The messages fetched for the first time, whose fetch the caller records.
    pub first: Vec<MessageId>,
    /// Everything up to this watermark number must be durable before the items go out
    /// ([`Store::commit_covering`]): for messages alone, the highest number of the
    /// transactions that wrote them, 0 when those are durable; with a notice, everything
    /// the read may have seen.
    pub mark: u64,
}

/// The digest of a recipient's view as [`Store::view_digest_upto`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewDigest {
    /// What [`Store::view_digest`] gives.
    Read(Option<String>),
    /// Not read: the body is longer than the caller's limit.
    Larger,
}

impl Store {
    /// The body of a held message, or `None` (logged) when the spool cannot give it.
    pub(super) fn body(&self, meta: &MessageMeta) -> Option<Vec<u8>> {
        let at = meta.body_at.as_ref()?;
        match self.spool.read(at, meta.id.0.as_bytes()) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::error!(message_id = %meta.id, cause = %e, "cannot read a message body");
                None
            }
        }
    }

    /// Up to `max` deliveries for `party` (each envelope with only `party`'s own view,
    /// [`Envelope::delivery`]): queued messages first, leaving out those at the queue
    /// positions in `skip` (the party holds them already), then notices. Also
    /// returns the messages `party` fetches for the first time, whose fetch the caller
    /// records ([`ketenpost_core::transitions::fetched`]), and the mark to make durable
    /// before any of it goes out ([`Fetched::mark`]). Reads only.
    pub fn fetch(
        &self,
        party: &Oin,
        max: usize,
        skip: &std::collections::HashSet<u64>,
    ) -> Result<Fetched, StoreError> {
        let prefix = party.as_str().as_bytes();
        let mut out = Vec::new();
        let mut first_time = Vec::new();
        let mut delivered = Vec::new();
        // Entries that cannot be delivered, and those the party asked to leave out, do not
        // count against `max`, but the scan is bounded.
        let mut scanned = 0usize;
        let bound = max.saturating_mul(4).saturating_add(skip.len());
        'blocks: for item in self.queue.scan_prefix(prefix) {
            let (_, block) = item?;
            let Some(entries) = queue_entries(&block) else {
                continue;
            };
            for (seq, id) in entries {
                if out.len() >= max || scanned >= bound {
                    break 'blocks;
                }
                scanned += 1;
                if skip.contains(&seq) {
                    continue;
                }
                if let Some(delivery) = self.deliverable(party, seq, &id, &mut first_time)? {
                    out.push(delivery);
                    delivered.push(id);
                }
            }
        }
        let mut notices = false;
        if out.len() < max {
            for item in self.notices.scan_prefix(prefix).take(max - out.len()) {
                let (k, v) = item?;
                out.push(Delivery::Notice {
                    seq: seq_of(&k),
                    record: parse(&v, "notice")?,
                });
                notices = true;
            }
        }
        // After the read (see the watermark's docs): the messages need only their own
        // writes durable; a notice, everything the read may have seen.
        let mark = if notices {
            self.watermark.started()
        } else {
            self.watermark.put_mark(&delivered)
        };
        Ok(Fetched {
            items: out,
            first: first_time,
            mark,
        })
    }

    /// Queue entry `seq` of message `id` as delivered to `party`; `None` when the message
    /// is gone (receipted or expired meanwhile) or its body cannot be read. Notes a
    /// first delivery in `first_time`.
    pub(super) fn deliverable(
        &self,
        party: &Oin,
        seq: u64,
        id: &[u8; 16],
        first_time: &mut Vec<MessageId>,
    ) -> Result<Option<Delivery>, StoreError> {
        let Some(meta) = self.held(id)? else {
            return Ok(None);
        };
        let Some(body) = self.body(&meta) else {
            return Ok(None);
        };
        let Some(delivery) = delivery_for(&body, party, &meta) else {
            return Ok(None);
        };
        if !meta.fetched.contains(party) {
            first_time.push(meta.id);
        }
        Ok(Some(Delivery::Message {
            seq,
            envelope: envelope_to_b64(&delivery),
        }))
    }

    /// The SHA-256 the header of a held message lists for `recipient`'s view: what that
    /// recipient's receipt must name. `None` when the broker holds no such message or the
    /// recipient has no view in it, and for metadata written before views were kept with
    /// it ([`MessageMeta::views`]), when its body cannot be read; also when `recipient` is
    /// not waiting for it (not a recipient, or receipted already), whose receipt the
    /// transition decides without a digest (`transitions::receipt`), so no body is read
    /// for it. A body never changes and a recipient never waits again, so this may be read
    /// outside the transaction that applies the receipt.
    pub fn view_digest(
        &self,
        id: &MessageId,
        recipient: &Oin,
    ) -> Result<Option<String>, StoreError> {
        match self.view_digest_upto(id, recipient, u32::MAX)? {
            ViewDigest::Read(digest) => Ok(digest),
            ViewDigest::Larger => Ok(None),
        }
    }

    /// [`Store::view_digest`], from the metadata; for metadata from before views were kept
    /// with it, when the body is at most `max_body` bytes long: a longer body is not read
    /// ([`ViewDigest::Larger`]), and a caller that must not wait on a long read (the check
    /// stage) leaves it to one that may.
    pub fn view_digest_upto(
        &self,
        id: &MessageId,
        recipient: &Oin,
        max_body: u32,
    ) -> Result<ViewDigest, StoreError> {
        let Some(meta) = self.held(id.0.as_bytes())? else {
            return Ok(ViewDigest::Read(None));
        };
        if !meta.pending.contains(recipient) {
            return Ok(ViewDigest::Read(None));
        }
        // Kept with the metadata since it was accepted; metadata from before has it only in
        // the body's header.
        if let Some(view) = meta.views.get(recipient) {
            return Ok(ViewDigest::Read(Some(view.sha256.clone())));
        }
        if meta.body_at.as_ref().is_some_and(|at| at.len > max_body) {
            return Ok(ViewDigest::Larger);
        }
        let Some(body) = self.body(&meta) else {
            return Ok(ViewDigest::Read(None));
        };
        Ok(ViewDigest::Read(
            ketenpost_schemas::envelope::Envelope::view_digest(&body, recipient)
                .ok()
                .flatten(),
        ))
    }

    /// The messages whose undelivered TTL has passed at `now` (by the expiry index, so
    /// only what is due is read). An index entry whose message is gone is removed.
    pub fn due(&self, now: DateTime<Utc>) -> Result<Vec<MessageId>, StoreError> {
        let mut due = Vec::new();
        let mut gone = Vec::new();
        // The buckets up to the one `now` falls in; of that one, only what is due.
        for item in self.expiry.range(..=expiry::last_due_key(now)) {
            let (key, block) = item?;
            // A damaged block is logged and passed over: it must not stop every other
            // message's expiry.
            let entries = match expiry::entries(&block) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(cause = %e, "an expiry block that does not parse, passed over");
                    continue;
                }
            };
            for (ms, id) in entries {
                if !expiry::is_due(ms, now) {
                    break;
                }
                // Held or not, without decoding: metadata that does not decode fails its
                // own expiry, not the sweep.
                match self.meta.get(id)? {
                    Some(v) if v != SETTLED => due.push(MessageId(uuid::Uuid::from_bytes(id))),
                    _ => gone.push((key.clone(), ms, id)),
                }
            }
        }
        for (key, ms, id) in gone {
            expiry::remove(&self.expiry, &key, ms, &id)?;
        }
        Ok(due)
    }

    /// Remove the party's notices up to and including `up_to`.
    pub fn ack_notices(&self, party: &Oin, up_to: u64) -> Result<usize, StoreError> {
        let prefix = party.as_str().as_bytes();
        let mut n = 0;
        for item in self.notices.scan_prefix(prefix) {
            let (k, _) = item?;
            if seq_of(&k) > up_to {
                break;
            }
            self.notices.remove(k)?;
            n += 1;
        }
        Ok(n)
    }
}

/// The entries of a queue block; `None`, logged, for a damaged one, which is passed over
/// so that it stops no other delivery.
pub(super) fn queue_entries(block: &[u8]) -> Option<impl Iterator<Item = (u64, [u8; 16])> + '_> {
    queue::entries(block)
        .inspect_err(
            |e| tracing::error!(cause = %e, "a queue block that does not parse, passed over"),
        )
        .ok()
}

/// A stored envelope as delivered to `party`: its own view only, written straight from
/// the stored bytes with only the header's views parsed ([`Envelope::view_of`],
/// [`Envelope::delivery_bytes`]). `None` (logged) when the stored envelope does not decode
/// or names no body for `party`, which an accepted message always does.
pub(super) fn delivery_for(stored: &[u8], party: &Oin, meta: &MessageMeta) -> Option<Vec<u8>> {
    // Without size limits: it passed the submission's limits when it was accepted. The
    // view is kept with the metadata; metadata from before has it only in the header.
    let index = match meta.views.get(party) {
        Some(view) => Ok(usize::from(view.index)),
        None => Envelope::view_of(stored, party).and_then(|view| {
            view.map(|(index, _)| index)
                .ok_or_else(|| ketenpost_schemas::Error::NotARecipient(party.to_string()))
        }),
    };
    let delivery = index.and_then(|index| Envelope::delivery_bytes(stored, index));
    match delivery {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(message_id = %meta.id, cause = %e, "cannot make a delivery of a held message");
            None
        }
    }
}
