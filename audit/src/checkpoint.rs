//! Checkpoints: the broker's signed statements about the head of its trail.

use crate::record::{json_error_class, AuditError};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use ketenpost_schemas::keys::{self, Context, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A signed statement by the broker: "record `seq` of my audit trail has hash
/// `head_hash`". Agents keep the checkpoints they are given; see the module docs for the
/// signed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Seq of the last record covered (0 for an empty trail).
    pub seq: u64,
    /// Hash of that record ([`GENESIS_HASH`] for seq 0).
    pub head_hash: String,
    /// When the checkpoint was made, in whole seconds.
    pub time: DateTime<Utc>,
    /// The broker's ed25519 signature over [`signed_bytes`](Self::signed_bytes), base64.
    pub signature: String,
}

impl Checkpoint {
    /// Make and sign a checkpoint. `time` is truncated to whole seconds.
    pub fn sign(key: &SigningKey, seq: u64, head_hash: String, time: DateTime<Utc>) -> Self {
        let time = time.trunc_subsecs(0);
        let bytes = signed_bytes(seq, &head_hash, &time_text(&time));
        let signature = keys::signature_to_text(&keys::sign(key, Context::Checkpoint, &bytes));
        Checkpoint {
            seq,
            head_hash,
            time,
            signature,
        }
    }

    /// Rebuild a checkpoint from its wire parts (the time as RFC 3339 text), e.g. from the
    /// protocol's `CheckpointWire`. Call [`verify`](Self::verify) afterwards.
    pub fn from_parts(
        seq: u64,
        head_hash: impl Into<String>,
        time: &str,
        signature: impl Into<String>,
    ) -> Result<Self, AuditError> {
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|_| AuditError::Corrupt {
                seq,
                reason: "checkpoint time is not RFC 3339".into(),
            })?
            .with_timezone(&Utc);
        Ok(Checkpoint {
            seq,
            head_hash: head_hash.into(),
            time,
            signature: signature.into(),
        })
    }

    /// The checkpoint time exactly as signed: RFC 3339, UTC, `Z` suffix, only as many
    /// fractional digits as needed (none for checkpoints made by this broker).
    pub fn time_text(&self) -> String {
        time_text(&self.time)
    }

    /// The bytes the signature is over: `"{seq}:{head_hash}:{time_text}"`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(self.seq, &self.head_hash, &self.time_text())
    }

    /// Check the signature against the broker's public key (strict ed25519 verification,
    /// `Context::Checkpoint`).
    pub fn verify(&self, broker_key: &VerifyingKey) -> Result<(), AuditError> {
        let bad = AuditError::BadSignature { seq: self.seq };
        let sig = keys::signature_from_text(&self.signature).map_err(|_| bad)?;
        keys::verify(
            broker_key,
            Context::Checkpoint,
            &self.signed_bytes(),
            &sig,
            "audit checkpoint",
        )
        .map_err(|_| AuditError::BadSignature { seq: self.seq })
    }

    /// Whether `self` can be a later checkpoint of the same history as `earlier`, as far
    /// as the two checkpoints alone can tell: it covers at least as many records, is not
    /// dated before it, and if both cover the same seq they name the same hash.
    ///
    /// This cannot see the records in between; ask the broker to
    /// `AuditTrail::prove_extends` `earlier` for that.
    pub fn extends(&self, earlier: &Checkpoint) -> bool {
        self.seq >= earlier.seq
            && self.time >= earlier.time
            && (self.seq != earlier.seq || self.head_hash == earlier.head_hash)
    }
}

fn time_text(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn signed_bytes(seq: u64, head_hash: &str, time_text: &str) -> Vec<u8> {
    format!("{seq}:{head_hash}:{time_text}").into_bytes()
}

/// Parse the checkpoint stored under `seq`.
pub fn parse_checkpoint(seq: u64, bytes: &[u8]) -> Result<Checkpoint, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
        seq,
        reason: format!("checkpoint does not parse ({})", json_error_class(&e)),
    })
}
