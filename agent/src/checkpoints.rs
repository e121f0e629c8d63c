//! The broker's audit checkpoints, as this agent saw them.
//!
//! Every checkpoint the broker hands out is verified with the broker key from the signed
//! directory and kept. A later checkpoint must extend the latest one kept: cover at least
//! as many records, not be dated earlier, name the same hash for the same seq, and, asked
//! with `ProveExtends`, the broker must confirm that the record at the earlier seq still
//! has the earlier hash. Anything else means the broker's history was rewritten (or the
//! agent is talking to another broker); the agent then warns loudly, in the log at error
//! level and in `GET /v1/health`, and keeps the earlier checkpoint as evidence.

use chrono::{DateTime, Utc};
use ketenpost_audit::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::Error;

/// How many checkpoints are kept (the oldest go first; the latest is what matters).
pub const KEEP: usize = 1000;

/// What a new checkpoint means next to the latest one kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first one this agent sees.
    First,
    /// The same checkpoint again.
    Same,
    /// Covers more records: ask the broker to prove it extends the kept one.
    NeedsProof,
    /// Covers fewer records than one seen before: history was cut back.
    Regressed,
    /// Same seq with another hash, or dated before the kept one: history was rewritten.
    Forked,
}

/// Compare a new (verified) checkpoint with the latest kept one.
pub fn judge(latest: Option<&Checkpoint>, new: &Checkpoint) -> Verdict {
    let Some(prev) = latest else {
        return Verdict::First;
    };
    if new.seq == prev.seq && new.head_hash == prev.head_hash {
        return Verdict::Same;
    }
    if new.seq < prev.seq {
        return Verdict::Regressed;
    }
    if new.extends(prev) {
        Verdict::NeedsProof
    } else {
        Verdict::Forked
    }
}

/// A loud warning about the broker's audit trail, kept for the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditWarning {
    /// When the agent noticed.
    pub at: DateTime<Utc>,
    /// The seq of the checkpoint kept before.
    pub earlier_seq: Option<u64>,
    /// The seq of the offending checkpoint.
    pub seq: u64,
    /// What is wrong.
    pub message: String,
}

const WARNINGS: &str = "audit_warnings";

impl Store {
    /// The latest checkpoint kept.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, Error> {
        match self.checkpoints.last()? {
            Some((_, v)) => Ok(Some(crate::store::from_json("checkpoint", &v)?)),
            None => Ok(None),
        }
    }

    /// Keep a checkpoint, dropping the oldest beyond [`KEEP`].
    pub fn keep_checkpoint(&self, cp: &Checkpoint) -> Result<(), Error> {
        Store::put(&self.checkpoints, &cp.seq.to_be_bytes(), cp)?;
        while self.checkpoints.len() > KEEP {
            if self.checkpoints.pop_min()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// How many checkpoints are kept.
    pub fn checkpoints_kept(&self) -> usize {
        self.checkpoints.len()
    }

    /// Record an audit warning.
    pub fn warn_audit(&self, w: AuditWarning) -> Result<(), Error> {
        let _guard = self.lock();
        let mut all: Vec<AuditWarning> = self.meta_get(WARNINGS)?.unwrap_or_default();
        all.push(w);
        self.meta_put(WARNINGS, &all)
    }

    /// Every audit warning.
    pub fn audit_warnings(&self) -> Result<Vec<AuditWarning>, Error> {
        Ok(self.meta_get(WARNINGS)?.unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cp(seq: u64, hash: &str, time: &str) -> Checkpoint {
        Checkpoint::from_parts(seq, hash, time, "sig").unwrap()
    }

    #[test]
    fn verdicts() {
        let a = cp(10, "aa", "2025-03-01T10:00:00Z");
        assert_eq!(judge(None, &a), Verdict::First);
        assert_eq!(judge(Some(&a), &a.clone()), Verdict::Same);
        assert_eq!(
            judge(Some(&a), &cp(12, "bb", "2025-03-01T10:01:00Z")),
            Verdict::NeedsProof
        );
        assert_eq!(
            judge(Some(&a), &cp(9, "cc", "2025-03-01T10:01:00Z")),
            Verdict::Regressed
        );
        assert_eq!(
            judge(Some(&a), &cp(10, "dd", "2025-03-01T10:01:00Z")),
            Verdict::Forked
        );
        assert_eq!(
            judge(Some(&a), &cp(11, "ee", "2025-03-01T09:00:00Z")),
            Verdict::Forked
        );
    }
}
