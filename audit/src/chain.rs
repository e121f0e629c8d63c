//! The chain: its head, the next record chained to it, and the keys records are stored under.

use crate::record::{json_error_class, AuditEntry, AuditError, AuditRecord, GENESIS_HASH};

use chrono::{DateTime, Utc};

/// The head of the chain: the last record's seq and hash (0 and [`GENESIS_HASH`] when the
/// trail is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Seq of the last record; 0 for an empty trail.
    pub seq: u64,
    /// Hash of the last record.
    pub hash: String,
}

/// The head of the chain plus the last record's time: what the next record is chained
/// to. [`ChainHead::next`] builds that record; [`ChainHead::advance`] moves the head onto
/// it once it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Seq of the last record; 0 for an empty trail.
    pub seq: u64,
    /// Hash of the last record ([`GENESIS_HASH`] for an empty trail).
    pub hash: String,
    /// Time of the last record; record times never go backwards.
    pub time: Option<DateTime<Utc>>,
}

impl ChainHead {
    /// The head of a stored trail from its last entry (key and value as stored, one
    /// record or a [round](round_records) whose last record is the head; `None`: an empty
    /// trail). Refuses ([`AuditError::Corrupt`]) a last record that does not parse or
    /// does not hash right: extending it would bury the damage.
    pub fn recover(last: Option<(&[u8], &[u8])>) -> Result<ChainHead, AuditError> {
        let Some((key, value)) = last else {
            return Ok(ChainHead::genesis());
        };
        let first = key_seq(key).ok_or_else(|| AuditError::Corrupt {
            seq: 0,
            reason: "the last entry has a malformed key".into(),
        })?;
        let (seq, value) = round_records(first, value).last().unwrap_or((first, value));
        let record = parse_record(seq, value)?;
        if !record.hash_is_valid()? {
            return Err(AuditError::Corrupt {
                seq,
                reason: "its hash does not match its content".into(),
            });
        }
        Ok(ChainHead {
            seq,
            hash: record.hash,
            time: Some(record.time),
        })
    }

    /// The head of an empty trail.
    pub fn genesis() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            time: None,
        }
    }

    /// The record that follows this head, with its hash filled in, dated
    /// `max(now, time of the previous record)`, and its JSON as stored
    /// ([`AuditRecord::seal`]). The entry is validated first.
    pub fn next(
        &self,
        entry: AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<(AuditRecord, Vec<u8>), AuditError> {
        entry.validate()?;
        let seq = self.seq.checked_add(1).ok_or(AuditError::Full)?;
        let time = match self.time {
            Some(t) if t > now => t,
            _ => now,
        };
        entry.into_record(seq, time, self.hash.clone()).seal()
    }

    /// Move the head onto `record` (written after it).
    pub fn advance(&mut self, record: &AuditRecord) {
        self.seq = record.seq;
        self.hash.clone_from(&record.hash);
        self.time = Some(record.time);
    }

    /// The head without its time.
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// The key of a seq in the store: its big-endian bytes, so key order is seq order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a store key ([`seq_key`]'s inverse).
pub fn key_seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// The records of one stored entry, a **round**: a store may keep the records one
/// transaction wrote under one key, the seq of the first ([`seq_key`]), as their JSON
/// joined by newlines. A record's JSON is one object and never holds a raw newline (serde
/// escapes it), so records are split only where a newline stands between `}` and `{`: a
/// record damaged into several lines (pretty-printed, say) stays one record that fails
/// its checks, and does not shift the seqs of those after it. An entry with one record is
/// a round of one. Yields each record's seq (`first`, then one more a record) and its
/// bytes; a round that would pass the last seq ends in one piece holding the rest.
pub fn round_records(first: u64, value: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = Some(value);
    let mut seq = first;
    std::iter::from_fn(move || {
        let v = rest?;
        // The last seq there is takes the rest of the value, however damaged.
        let line = match separator(v).filter(|_| seq < u64::MAX) {
            Some(at) => {
                rest = Some(&v[at + 1..]);
                &v[..at]
            }
            None => {
                rest = None;
                v
            }
        };
        let out = (seq, line);
        seq = seq.saturating_add(1);
        Some(out)
    })
}

/// Whether the newline at `at` in `v` stands between two records (`}` before it, `{`
/// after it).
fn separates(v: &[u8], at: usize) -> bool {
    at > 0 && v[at - 1] == b'}' && v.get(at + 1) == Some(&b'{')
}

/// The first newline of `v` between two records.
fn separator(v: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &v[from..]) {
        let at = from + i;
        if separates(v, at) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// How many records a round holds ([`round_records`]).
pub fn round_len(value: &[u8]) -> u64 {
    round_records(0, value).count() as u64
}

/// Whether every newline of a round separates two of its records: its records can go one
/// a line into a file whose `n`th line is record `n`.
pub fn round_is_lines(value: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', value).all(|at| separates(value, at))
}

/// A round's value: records' JSON (as [`ChainHead::next`] returns it) joined by newlines.
/// Its `Debug` shows the first seq and the length, never the records.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Round {
    first: u64,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round")
            .field("first", &self.first)
            .field(
                "records",
                &if self.bytes.is_empty() {
                    0
                } else {
                    round_len(&self.bytes)
                },
            )
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Round {
    /// Add the record `seq` (the one after the round's last); its JSON holds no newline.
    pub fn push(&mut self, seq: u64, json: &[u8]) {
        if self.bytes.is_empty() {
            self.first = seq;
        } else {
            self.bytes.push(b'\n');
        }
        self.bytes.extend_from_slice(json);
    }

    /// The key and value to store, `None` for a round without records.
    pub fn entry(&self) -> Option<([u8; 8], &[u8])> {
        (!self.bytes.is_empty()).then(|| (seq_key(self.first), self.bytes.as_slice()))
    }
}

/// Records on their way into a store as rounds of at most `max` bytes each (a record
/// longer than that is a round of its own): one entry for many records, yet entries a
/// store keeps small. Its `Debug` shows the rounds' first seqs and lengths only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rounds {
    max: usize,
    rounds: Vec<Round>,
}

impl Rounds {
    /// No records yet; rounds of at most `max` bytes.
    pub fn new(max: usize) -> Rounds {
        Rounds {
            max,
            rounds: Vec::new(),
        }
    }

    /// Add the record `seq` (the one after the last added); its JSON holds no newline.
    pub fn push(&mut self, seq: u64, json: &[u8]) {
        match self.rounds.last_mut() {
            Some(r) if r.bytes.len() + 1 + json.len() <= self.max => r.push(seq, json),
            _ => {
                let mut r = Round::default();
                r.push(seq, json);
                self.rounds.push(r);
            }
        }
    }

    /// The keys and values to store, in seq order.
    pub fn entries(&self) -> impl Iterator<Item = ([u8; 8], &[u8])> {
        self.rounds.iter().filter_map(Round::entry)
    }
}

/// Parse the record stored under `seq`, checking it says it is record `seq`.
pub fn parse_record(seq: u64, bytes: &[u8]) -> Result<AuditRecord, AuditError> {
    let record: AuditRecord = serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
        seq,
        reason: format!("does not parse ({})", json_error_class(&e)),
    })?;
    if record.seq != seq {
        return Err(AuditError::Corrupt {
            seq,
            reason: format!("the entry for record {seq} holds record {}", record.seq),
        });
    }
    Ok(record)
}
