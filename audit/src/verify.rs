//! Verifying a trail given as its stored records.

use std::fmt;

use chrono::{DateTime, Utc};
use ketenpost_schemas::keys::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::chain::{key_seq, parse_record, ChainHead};
use crate::checkpoint::Checkpoint;
use crate::record::{AuditError, AuditRecord, GENESIS_HASH};

/// What [`verify_exported`] found in a sequence of records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainVerdict {
    /// How many records were read.
    pub records: u64,
    /// Whether every record is in place, unaltered and linked to the one before it.
    pub intact: bool,
    /// The seq (position, 1-based) of the first broken record, if any.
    pub first_broken: Option<u64>,
    /// What is wrong with it (never record content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Check a whole trail given as its stored records, in seq order: each one the exact
/// bytes of a record as stored (an agent's trail, or an export of it as JSON lines).
///
/// The trail must start at record 1 and run without gaps; every record must parse, be
/// stored canonically, hash to its `hash`, carry the previous record's hash as
/// `prev_hash` ([`GENESIS_HASH`] for record 1), and not be dated before the record
/// before it. Stops at the first broken record. Pure; never panics on damaged input.
pub fn verify_exported<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> ChainVerdict {
    let mut head = ChainHead::genesis();
    let mut count = 0u64;
    for bytes in records {
        count += 1;
        let expected = head.seq.saturating_add(1);
        let broken = |why: String| ChainVerdict {
            records: count,
            intact: false,
            first_broken: Some(expected),
            problem: Some(why),
        };
        let record = match parse_record(expected, bytes) {
            Ok(r) => r,
            Err(AuditError::Corrupt { reason, .. }) => {
                return broken(format!("record {expected}: {reason}"))
            }
            Err(e) => return broken(format!("record {expected}: {e}")),
        };
        let canonical = serde_json::to_vec(&record).ok();
        if canonical.as_deref() != Some(bytes) || !record.hash_is_valid().unwrap_or(false) {
            return broken(format!("record {expected} was altered"));
        }
        if record.prev_hash != head.hash {
            return broken(format!(
                "record {expected} does not follow record {}",
                head.seq
            ));
        }
        if head.time.is_some_and(|t| record.time < t) {
            return broken(format!(
                "record {expected} is dated before the record before it"
            ));
        }
        head.advance(&record);
    }
    ChainVerdict {
        records: count,
        intact: true,
        first_broken: None,
        problem: None,
    }
}

/// What kind of damage [`verify_trail`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A record is not there: a gap in the seqs, or records a checkpoint covers are gone.
    Missing,
    /// A stored entry does not parse as a record (or has a malformed key).
    Unreadable,
    /// The entry under key N holds a record with another seq (values swapped or moved).
    Misplaced,
    /// A record's content no longer matches its hash, or it is not stored canonically.
    Altered,
    /// A record's `prev_hash` is not the hash of the record before it: a record before it
    /// was replaced, inserted or reordered.
    Unlinked,
    /// A record is dated before the record before it.
    OutOfOrder,
    /// A stored checkpoint does not parse.
    CheckpointUnreadable,
    /// A checkpoint's signature does not verify under the broker key.
    CheckpointBadSignature,
    /// The record a checkpoint covers no longer has the checkpointed hash: history was
    /// rewritten after the checkpoint was handed out.
    CheckpointMismatch,
}

impl ProblemKind {
    /// The snake_case code, as an audit reason.
    pub fn code(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::Misplaced => "misplaced",
            ProblemKind::Altered => "altered",
            ProblemKind::Unlinked => "unlinked",
            ProblemKind::OutOfOrder => "out_of_order",
            ProblemKind::CheckpointUnreadable => "checkpoint_unreadable",
            ProblemKind::CheckpointBadSignature => "checkpoint_bad_signature",
            ProblemKind::CheckpointMismatch => "checkpoint_mismatch",
        }
    }
}

/// One problem [`verify_trail`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The seq of the record (or checkpoint) where the damage shows.
    pub seq: u64,
    /// What kind of damage.
    pub what: ProblemKind,
    /// A sentence for the operator, e.g. "record 7 is missing".
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of [`verify_trail`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// How many record entries were read.
    pub records: u64,
    /// How many checkpoint entries were read.
    pub checkpoints: u64,
    /// Every problem found, ordered by seq (so the first is the first broken record).
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No problems found.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first seq where the trail is broken, if it is.
    pub fn first_broken(&self) -> Option<u64> {
        self.problems.first().map(|p| p.seq)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} checkpoints: ",
            self.records, self.checkpoints
        )?;
        match self.first_broken() {
            None => write!(f, "intact"),
            Some(seq) => {
                write!(
                    f,
                    "{} problem(s), first at record {seq}",
                    self.problems.len()
                )?;
                for p in &self.problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Check a whole audit trail given as its stored entries: the checkpoints, then the
/// records, each as (key, value) in key order ([`seq_key`] keys), as a store iterates them.
///
/// Checks that the seqs run from 1 without gaps, that each entry's key is its record's
/// seq, that each record parses, is stored canonically and hashes to its `hash`, that each
/// `prev_hash` is the previous record's `hash`, and that times do not go backwards. Then
/// checks that every checkpoint's signature verifies under `broker_key` and that its
/// `head_hash` is the hash of the record at its seq.
///
/// Reports every problem (one per record and kind), sorted by seq; never panics on damaged
/// data. Errors only when reading an entry fails (the store's error `E`).
pub fn verify_trail<K, V, E>(
    stored_checkpoints: impl IntoIterator<Item = Result<(K, V), E>>,
    stored_records: impl IntoIterator<Item = Result<(K, V), E>>,
    broker_key: &VerifyingKey,
) -> Result<VerifyReport, E>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
    E: From<AuditError>,
{
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();

    // Checkpoints first: few, and the walk over the records needs their seqs.
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for item in stored_checkpoints {
        let (key, value) = item?;
        let (key, value) = (key.as_ref(), value.as_ref());
        report.checkpoints += 1;
        let key_seq = key_seq(key);
        let at = key_seq.unwrap_or(0);
        let cp: Checkpoint = match serde_json::from_slice(value) {
            Ok(cp) => cp,
            Err(_) => {
                problems.push(problem(
                    at,
                    ProblemKind::CheckpointUnreadable,
                    format!("the checkpoint at record {at} does not parse"),
                ));
                continue;
            }
        };
        if key_seq != Some(cp.seq) {
            problems.push(problem(
                cp.seq,
                ProblemKind::Misplaced,
                format!(
                    "the checkpoint for record {} is stored under another record",
                    cp.seq
                ),
            ));
        }
        if cp.verify(broker_key).is_err() {
            problems.push(problem(
                cp.seq,
                ProblemKind::CheckpointBadSignature,
                format!(
                    "the checkpoint at record {} is not signed by the broker key",
                    cp.seq
                ),
            ));
        }
        checkpoints.push(cp);
    }
    // seq -> hash of the record at that seq, for the seqs checkpoints cover.
    let mut covered: std::collections::BTreeMap<u64, Option<String>> =
        checkpoints.iter().map(|cp| (cp.seq, None)).collect();
    covered.insert(0, Some(GENESIS_HASH.to_owned()));

    let mut expected: u64 = 1;
    // The stored hash and time of the entry just before, if it could be read.
    let mut prev: Option<(String, DateTime<Utc>)> = None;
    let mut last_seq: u64 = 0;
    for item in stored_records {
        let (key, value) = item?;
        let (key, value) = (key.as_ref(), value.as_ref());
        report.records += 1;
        let Some(pos) = key_seq(key).filter(|&s| s >= expected) else {
            // Keys are sorted, so only a malformed key (or key 0) can land here.
            problems.push(problem(
                expected,
                ProblemKind::Unreadable,
                format!("an entry near record {expected} has a malformed key"),
            ));
            continue;
        };
        let follows_directly = pos == expected;
        if !follows_directly {
            problems.push(missing(expected, pos - 1, None));
        }
        expected = pos.saturating_add(1);
        last_seq = pos;

        let record: AuditRecord = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(_) => {
                problems.push(problem(
                    pos,
                    ProblemKind::Unreadable,
                    format!("record {pos} does not parse"),
                ));
                prev = None;
                continue;
            }
        };
        if record.seq != pos {
            problems.push(problem(
                pos,
                ProblemKind::Misplaced,
                format!("the entry for record {pos} holds record {}", record.seq),
            ));
        }
        let computed = record.compute_hash().map_err(E::from)?;
        let canonical =
            serde_json::to_vec(&record).map_err(|e| E::from(AuditError::Serialize(e)))?;
        if computed != record.hash || canonical != value {
            problems.push(problem(
                pos,
                ProblemKind::Altered,
                format!("record {pos} was altered"),
            ));
        }
        let expected_prev = if pos == 1 {
            Some(GENESIS_HASH)
        } else if follows_directly {
            prev.as_ref().map(|(h, _)| h.as_str())
        } else {
            None // the record before is missing; already reported
        };
        if let Some(expected_prev) = expected_prev {
            if record.prev_hash != expected_prev {
                problems.push(problem(
                    pos,
                    ProblemKind::Unlinked,
                    format!("record {pos} does not follow record {}", pos - 1),
                ));
            }
        }
        if let Some((_, prev_time)) = &prev {
            if record.time < *prev_time {
                problems.push(problem(
                    pos,
                    ProblemKind::OutOfOrder,
                    format!("record {pos} is dated before the record before it"),
                ));
            }
        }
        if let Some(slot) = covered.get_mut(&pos) {
            *slot = Some(computed);
        }
        prev = Some((record.hash, record.time));
    }

    for cp in &checkpoints {
        if cp.seq > last_seq {
            // The records a checkpoint covers were cut off the end of the trail.
            let p = missing(last_seq + 1, cp.seq, Some(cp.seq));
            if !problems.contains(&p) {
                problems.push(p);
            }
            continue;
        }
        match covered.get(&cp.seq) {
            Some(Some(hash)) if *hash == cp.head_hash => {}
            Some(Some(_)) => problems.push(problem(
                cp.seq,
                ProblemKind::CheckpointMismatch,
                format!(
                    "record {} no longer matches the checkpoint of {}",
                    cp.seq,
                    cp.time_text()
                ),
            )),
            // Missing or unreadable record: already reported by the walk.
            _ => {}
        }
    }

    problems.sort_by_key(|p| p.seq);
    report.problems = problems;
    Ok(report)
}

fn problem(seq: u64, what: ProblemKind, message: String) -> Problem {
    Problem { seq, what, message }
}

fn missing(from: u64, to: u64, checkpoint: Option<u64>) -> Problem {
    let mut message = if from == to {
        format!("record {from} is missing")
    } else {
        format!("records {from} to {to} are missing")
    };
    if let Some(cp) = checkpoint {
        message.push_str(&format!(" (the checkpoint at record {cp} covers them)"));
    }
    Problem {
        seq: from,
        what: ProblemKind::Missing,
        message,
    }
}
