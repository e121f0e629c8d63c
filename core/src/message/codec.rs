//! The stored form of [`MessageMeta`]: a compact binary encoding, one format byte first.
//!
//! The broker reads a message's metadata at every fetch, receipt and expiry and writes it
//! with every change, so its size is paid in every sled node that holds it, in sled's log
//! and in its page cache. JSON spelled every field name and every OIN three times (the
//! recipients, who still has to receipt, and the queue sequence numbers): some 600 bytes
//! for a message to two recipients. This encoding names each recipient once, with its
//! state beside it, and is about 40 % of that.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, [`FORMAT_V1`] |
//! | 16 | message id |
//! | str | sender OIN |
//! | str | case reference |
//! | str | purpose |
//! | str | kind |
//! | 12 | accepted at: seconds (i64) and nanoseconds (u32) since the epoch |
//! | 12 | expires at, the same |
//! | str | trace id |
//! | 1 (+16) | body location: `0`, or `1` and [`BodyAt::to_bytes`] |
//! | 2 | number of recipients |
//! | per recipient: str, 1 (+8) (+34) | the OIN, flags (`1` pending, `2` fetched, `4` has a queue sequence number, `8` has its view), the sequence number if it has one, and its view if it has one: the index of its body (u16) and that body's SHA-256 (32 bytes) |
//!
//! `str` is a length (u16) and that many bytes of UTF-8. Integers are big-endian.
//!
//! Metadata written before this encoding is JSON, whose first byte is `{`; it still reads,
//! and is written in this encoding at its next change. Metadata this encoding cannot hold
//! losslessly (a pending or fetched party, a queue entry or a view that is not a
//! recipient's; a string longer than 65,535 bytes; a view's SHA-256 that is not 64
//! lowercase hex digits) is written as JSON: decoding never guesses. A version before the
//! views refuses metadata with a view (its flag is unknown there) rather than misread it.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;

use super::{BodyAt, MessageMeta, View};

/// The first byte of the binary encoding (JSON begins with `{`).
pub const FORMAT_V1: u8 = 1;

const PENDING: u8 = 1;
const FETCHED: u8 = 2;
const HAS_SEQ: u8 = 4;
const HAS_VIEW: u8 = 8;

/// Why stored metadata does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaFormatError {
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// The first byte names no format this version knows.
    #[error("unknown format {0}")]
    UnknownFormat(u8),
    /// The value ends before its last field.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
    /// A field does not hold a valid value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Older JSON metadata that does not parse.
    #[error("JSON: {0}")]
    Json(String),
}

impl MessageMeta {
    /// The stored form: the binary encoding, or JSON for what it cannot hold (see the
    /// module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self).unwrap_or_else(|| {
            serde_json::to_vec(self).expect("message metadata always serialises")
        })
    }

    /// Read a stored form, either encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<MessageMeta, MetaFormatError> {
        match bytes.first() {
            None => Err(MetaFormatError::Empty),
            Some(b'{') => {
                serde_json::from_slice(bytes).map_err(|e| MetaFormatError::Json(e.to_string()))
            }
            Some(&FORMAT_V1) => decode(&bytes[1..]),
            Some(&other) => Err(MetaFormatError::UnknownFormat(other)),
        }
    }
}

/// `None` when the binary form cannot hold `m` losslessly.
fn encode(m: &MessageMeta) -> Option<Vec<u8>> {
    let subset = |s: &BTreeSet<Oin>| s.is_subset(&m.recipients);
    if !subset(&m.pending)
        || !subset(&m.fetched)
        || !m.queue_seqs.keys().all(|r| m.recipients.contains(r))
        || !m.views.keys().all(|r| m.recipients.contains(r))
        || m.recipients.len() > usize::from(u16::MAX)
    {
        return None;
    }
    let mut out = Vec::with_capacity(160 + 32 * m.recipients.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(m.id.0.as_bytes());
    put_str(&mut out, m.sender.as_str())?;
    put_str(&mut out, m.case_ref.as_str())?;
    put_str(&mut out, &m.purpose)?;
    put_str(&mut out, m.kind.as_str())?;
    put_time(&mut out, m.accepted_at);
    put_time(&mut out, m.expires_at);
    put_str(&mut out, &m.trace_id)?;
    match &m.body_at {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_bytes());
        }
    }
    out.extend_from_slice(&u16::try_from(m.recipients.len()).ok()?.to_be_bytes());
    for r in &m.recipients {
        put_str(&mut out, r.as_str())?;
        let seq = m.queue_seqs.get(r);
        let mut flags = 0;
        if m.pending.contains(r) {
            flags |= PENDING;
        }
        if m.fetched.contains(r) {
            flags |= FETCHED;
        }
        if seq.is_some() {
            flags |= HAS_SEQ;
        }
        let view = match m.views.get(r) {
            Some(v) => Some((v.index, sha256_bytes(&v.sha256)?)),
            None => None,
        };
        if view.is_some() {
            flags |= HAS_VIEW;
        }
        out.push(flags);
        if let Some(seq) = seq {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        if let Some((index, sha256)) = view {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&sha256);
        }
    }
    Some(out)
}

/// The 32 bytes of a SHA-256 written as 64 lowercase hex digits; `None` for anything else
/// (which would not be read back as written).
fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// 64 lowercase hex digits.
fn sha256_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

fn put_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    out.extend_from_slice(&t.timestamp().to_be_bytes());
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
}

/// A cursor over the encoded fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], MetaFormatError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(MetaFormatError::Truncated(what))?;
        self.0 = rest;
        Ok(*head)
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MetaFormatError> {
        if self.0.len() < n {
            return Err(MetaFormatError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, MetaFormatError> {
        let len = u16::from_be_bytes(self.take(what)?);
        let bytes = self.bytes(usize::from(len), what)?;
        std::str::from_utf8(bytes).map_err(|_| MetaFormatError::Invalid(what))
    }

    fn parsed<T: FromStr>(&mut self, what: &'static str) -> Result<T, MetaFormatError> {
        self.str(what)?
            .parse()
            .map_err(|_| MetaFormatError::Invalid(what))
    }

    fn time(&mut self, what: &'static str) -> Result<DateTime<Utc>, MetaFormatError> {
        let secs = i64::from_be_bytes(self.take(what)?);
        let nanos = u32::from_be_bytes(self.take(what)?);
        DateTime::from_timestamp(secs, nanos).ok_or(MetaFormatError::Invalid(what))
    }
}

fn decode(bytes: &[u8]) -> Result<MessageMeta, MetaFormatError> {
    let mut r = Reader(bytes);
    let id = MessageId(uuid::Uuid::from_bytes(r.take("message id")?));
    let sender: Oin = r.parsed("sender")?;
    let case_ref: CaseRef = r.parsed("case reference")?;
    let purpose = r.str("purpose")?.to_owned();
    let kind: Kind = r.parsed("kind")?;
    let accepted_at = r.time("accepted at")?;
    let expires_at = r.time("expires at")?;
    let trace_id = r.str("trace id")?.to_owned();
    let body_at = match r.take::<1>("body location")? {
        [0] => None,
        [1] => Some(
            BodyAt::from_bytes(&r.take::<16>("body location")?)
                .ok_or(MetaFormatError::Invalid("body location"))?,
        ),
        _ => return Err(MetaFormatError::Invalid("body location")),
    };
    let count = u16::from_be_bytes(r.take("recipients")?);
    let (mut recipients, mut pending, mut fetched) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut queue_seqs = BTreeMap::new();
    let mut views = BTreeMap::new();
    for _ in 0..count {
        let oin: Oin = r.parsed("recipient")?;
        let [flags] = r.take::<1>("recipient flags")?;
        if flags & !(PENDING | FETCHED | HAS_SEQ | HAS_VIEW) != 0 {
            return Err(MetaFormatError::Invalid("recipient flags"));
        }
        if flags & HAS_SEQ != 0 {
            queue_seqs.insert(oin.clone(), u64::from_be_bytes(r.take("queue sequence")?));
        }
        if flags & HAS_VIEW != 0 {
            let index = u16::from_be_bytes(r.take("view index")?);
            let sha256 = sha256_hex(&r.take::<32>("view digest")?);
            views.insert(oin.clone(), View { index, sha256 });
        }
        if flags & PENDING != 0 {
            pending.insert(oin.clone());
        }
        if flags & FETCHED != 0 {
            fetched.insert(oin.clone());
        }
        // Written in ascending order, each once: anything else is not this encoding.
        if recipients.last().is_some_and(|last| *last >= oin) {
            return Err(MetaFormatError::Invalid("recipient order"));
        }
        recipients.insert(oin);
    }
    if !r.0.is_empty() {
        return Err(MetaFormatError::Trailing(r.0.len()));
    }
    Ok(MessageMeta {
        id,
        sender,
        case_ref,
        purpose,
        kind,
        accepted_at,
        expires_at,
        pending,
        fetched,
        recipients,
        trace_id,
        body_at,
        queue_seqs,
        views,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oin(n: u64) -> Oin {
        format!("{n:020}").parse().expect("valid OIN")
    }

    fn meta() -> MessageMeta {
        let at = DateTime::from_timestamp(1_764_600_000, 123_456_789).expect("valid time");
        let (a, b, c) = (oin(1), oin(2), oin(3));
        MessageMeta {
            id: MessageId(uuid::Uuid::from_u128(
                0x0193_0000_0000_7000_8000_0000_0000_0042,
            )),
            sender: oin(9),
            case_ref: "case-abcdefghijklmnopqrstuvwxyz"
                .parse()
                .expect("valid case ref"),
            purpose: "overlast-aanpak".to_owned(),
            kind: Kind::Signaal,
            accepted_at: at,
            expires_at: at + chrono::Duration::hours(48),
            pending: [a.clone(), c.clone()].into(),
            fetched: [a.clone()].into(),
            recipients: [a.clone(), b.clone(), c.clone()].into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            body_at: Some(BodyAt {
                segment: 3,
                offset: 1 << 33,
                len: 1234,
            }),
            queue_seqs: [(a.clone(), 7), (c.clone(), u64::MAX)].into(),
            views: [
                (
                    a,
                    View {
                        index: 0,
                        sha256: "0f".repeat(32),
                    },
                ),
                (
                    c,
                    View {
                        index: 2,
                        sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                            .to_owned(),
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn metadata_round_trips_in_the_binary_form_at_well_under_the_json_size() {
        let m = meta();
        let bytes = m.to_bytes();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(MessageMeta::from_bytes(&bytes), Ok(m.clone()));
        let json = serde_json::to_vec(&m).expect("serialises");
        assert!(
            bytes.len() * 2 < json.len(),
            "binary {} bytes, JSON {}",
            bytes.len(),
            json.len()
        );
        // Without a body location, queue entries, or anyone fetched.
        let bare = MessageMeta {
            body_at: None,
            queue_seqs: BTreeMap::new(),
            views: BTreeMap::new(),
            fetched: BTreeSet::new(),
            kind: Kind::Covenant(
                ketenpost_schemas::kind::KindName::new("risicotaxatie").expect("valid name"),
            ),
            ..m
        };
        assert_eq!(MessageMeta::from_bytes(&bare.to_bytes()), Ok(bare));
    }

    #[test]
    fn a_view_the_binary_form_cannot_hold_goes_to_json() {
        for sha256 in ["0F".repeat(32), "0f".repeat(31), "0g".repeat(32)] {
            let mut m = meta();
            m.views.insert(oin(2), View { index: 1, sha256 });
            let bytes = m.to_bytes();
            assert_eq!(bytes[0], b'{');
            assert_eq!(MessageMeta::from_bytes(&bytes), Ok(m));
        }
        let mut m = meta();
        m.views.insert(
            oin(5),
            View {
                index: 1,
                sha256: "00".repeat(32),
            },
        );
        assert_eq!(m.to_bytes()[0], b'{');
    }

    #[test]
    fn json_metadata_from_before_still_reads() {
        let m = meta();
        let json = serde_json::to_vec(&m).expect("serialises");
        assert_eq!(MessageMeta::from_bytes(&json), Ok(m));
    }

    #[test]
    fn metadata_the_binary_form_cannot_hold_is_written_as_json() {
        let m = MessageMeta {
            pending: [oin(1), oin(4)].into(),
            ..meta()
        };
        let bytes = m.to_bytes();
        assert_eq!(bytes[0], b'{');
        assert_eq!(MessageMeta::from_bytes(&bytes), Ok(m));
    }

    #[test]
    fn damaged_metadata_is_an_error_never_a_panic_or_a_guess() {
        let bytes = meta().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                MessageMeta::from_bytes(&bytes[..cut]).is_err(),
                "a value cut at {cut} decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            MessageMeta::from_bytes(&longer),
            Err(MetaFormatError::Trailing(1))
        );
        assert_eq!(
            MessageMeta::from_bytes(&[7, 0, 0]),
            Err(MetaFormatError::UnknownFormat(7))
        );
        // Every single-byte change either fails or decodes to a value that encodes back to
        // exactly those bytes: nothing is read that the bytes do not say.
        for i in 1..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                if let Ok(m) = MessageMeta::from_bytes(&damaged) {
                    assert_eq!(m.to_bytes(), damaged, "byte {i} ^ {flip:#x}");
                }
            }
        }
    }
}
