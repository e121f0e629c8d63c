//! Control records: what the broker reads and acts on itself.
//!
//! Consent grants and withdrawals, case lifecycle changes, delivery receipts and deletion
//! confirmations are signed by the party that makes them; deletion orders and notices are
//! signed by the broker. None holds personal data: cases are named by their pseudonymous
//! [`CaseRef`], a consent document by its SHA-256.
//!
//! On the wire a record travels as a [`SignedRecord`]: the record's exact JSON bytes, the
//! signer's OIN and an ed25519 signature ([`Context::Control`]) over those bytes. The
//! receiver verifies the bytes first and parses them after.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::ids::Role;
use crate::ids::{CaseRef, MessageId, Oin};
use crate::keys::{self, Context, SigningKey, VerifyingKey};
use crate::kind::Kind;
use crate::Error;

/// Largest control record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The OIN the broker signs its own notices with (expiry notices, deadline notices,
/// deletion orders). It is not a real organisation: agents verify such records with the
/// directory's broker key.
pub const BROKER_SIGNER: &str = "00000000000000000000";

/// A control record kind.
pub trait Record: Serialize + DeserializeOwned + JsonSchema {
    /// The kind of the record.
    const KIND: Kind;
}

/// A client's consent to share data about one case among the named parties or roles for one
/// purpose (000:289-297, the Welkom in de Wijk Overeenkomst).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toestemming {
    /// Id of this consent; messages sent under it name it in their legal basis.
    pub consent_id: uuid::Uuid,
    /// The covenant.
    pub covenant: String,
    /// The one purpose the consent is for (purpose binding, 000:297-301).
    pub purpose: String,
    /// The case it concerns.
    pub case_ref: CaseRef,
    /// Parties the client consented to sharing with, by OIN.
    #[serde(default)]
    pub parties: Vec<Oin>,
    /// Party types the client consented to sharing with (the consent text of 000:289-297
    /// names types: "gemeente, woningcorporatie, zorgaanbieder").
    #[serde(default)]
    pub roles: Vec<Role>,
    /// From when the consent holds.
    pub valid_from: DateTime<Utc>,
    /// Until when it holds; none means until withdrawn or the case closes.
    pub valid_until: Option<DateTime<Utc>>,
    /// SHA-256 (hex) of the signed consent document kept by the party that obtained it.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub document_sha256: String,
    /// The party that obtained the consent and keeps the signed document.
    pub obtained_by: Oin,
    /// When the client signed.
    pub obtained_at: DateTime<Utc>,
}

impl Record for Toestemming {
    const KIND: Kind = Kind::Toestemming;
}

/// Withdrawal of a consent (004:754-758). It takes effect immediately for every later message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToestemmingIntrekking {
    /// The consent withdrawn.
    pub consent_id: uuid::Uuid,
    /// The case it concerned.
    pub case_ref: CaseRef,
    /// When the client withdrew it.
    pub withdrawn_at: DateTime<Utc>,
    /// The party that records the withdrawal.
    pub recorded_by: Oin,
}

impl Record for ToestemmingIntrekking {
    const KIND: Kind = Kind::ToestemmingIntrekking;
}

/// One step in a case's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "op", deny_unknown_fields)]
pub enum CaseOp {
    /// Open the case under a purpose; the opener becomes its regievoerder and first member.
    Open {
        /// The opener's role in the case.
        role: Role,
    },
    /// Add a party to the case team ("direct betrokken bij de casus", 000:303-304).
    AddMember {
        /// The party.
        oin: Oin,
        /// The role it has in this case.
        role: Role,
    },
    /// Remove a party from the case team.
    RemoveMember {
        /// The party.
        oin: Oin,
    },
    /// Close the case; the case retention starts. The broker signs this itself when a
    /// phase's `close_after` passes, and tells the case team.
    Close,
    /// Move the open case to another phase of its purpose (e.g. from the active Team Thuis
    /// period to the "waakvlam", 000:1290-1303); the phase's kinds and terms apply from now.
    EnterPhase {
        /// The phase, as the policy names it.
        #[serde(deserialize_with = "crate::ids::identifier")]
        #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
        phase: String,
    },
    /// The broker's notice to the case managers that the case has been in `phase` for the
    /// phase's `review_within`: it is due for review (move it on or close it). Only the
    /// broker issues it; a party's record of this kind is refused.
    ReviewDue {
        /// The phase the case is in.
        #[serde(deserialize_with = "crate::ids::identifier")]
        #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
        phase: String,
        /// When the review was due.
        due: DateTime<Utc>,
    },
    /// Order parties to delete the case's data now, for a data subject's request or a
    /// handover, by the case's regievoerder. Each party gets a deletion order it confirms,
    /// as after retention. With no parties named, every party that holds the case's data
    /// (members and former members) is ordered and the case ends; named parties leave the
    /// case team.
    OrderDeletion {
        /// Why.
        reason: DeletionReason,
        /// The parties that must delete; empty: every holder.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parties: Vec<Oin>,
    },
}

/// A change to a case, signed by the party that makes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseChange {
    /// The case.
    pub case_ref: CaseRef,
    /// The covenant.
    pub covenant: String,
    /// The case's one purpose.
    pub purpose: String,
    /// What changes.
    pub change: CaseOp,
    /// Who makes the change.
    pub by: Oin,
    /// When.
    pub at: DateTime<Utc>,
}

impl Record for CaseChange {
    const KIND: Kind = Kind::CaseChange;
}

/// Why the broker orders a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeletionReason {
    /// The case retention after closure has ended (002:330-332, 004:700-701).
    RetentionEnded,
    /// The case was handed over; data must be deleted "direct" (004:408-410).
    Handover,
    /// The data subject's right to erasure (AVG art. 17; 004:671-676, 004:862-924).
    Erasure,
    /// The data subject's objection was upheld (AVG art. 21; 000:1754-1757).
    Objection,
    /// The data subject withdrew consent and asked for deletion.
    ConsentWithdrawn,
}

impl DeletionReason {
    /// The reason code, as in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            DeletionReason::RetentionEnded => "retention_ended",
            DeletionReason::Handover => "handover",
            DeletionReason::Erasure => "erasure",
            DeletionReason::Objection => "objection",
            DeletionReason::ConsentWithdrawn => "consent_withdrawn",
        }
    }
}

/// The broker's order to delete a case's data (004:700-710).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletionOrder {
    /// Id of the order; the confirmation names it.
    pub order_id: uuid::Uuid,
    /// The case.
    pub case_ref: CaseRef,
    /// Why.
    pub reason: DeletionReason,
    /// The party ordered to delete.
    pub party: Oin,
    /// When the order was issued.
    pub issued_at: DateTime<Utc>,
    /// The latest moment the deletion must be done.
    pub delete_by: DateTime<Utc>,
}

impl Record for DeletionOrder {
    const KIND: Kind = Kind::DeletionOrder;
}

/// A party's confirmation that it deleted a case's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletionConfirmation {
    /// The order confirmed.
    pub order_id: uuid::Uuid,
    /// The case.
    pub case_ref: CaseRef,
    /// The party that deleted.
    pub party: Oin,
    /// How many messages it deleted.
    pub deleted_messages: u64,
    /// When.
    pub deleted_at: DateTime<Utc>,
}

impl Record for DeletionConfirmation {
    const KIND: Kind = Kind::DeletionConfirmation;
}

/// A recipient's receipt for a delivered message: it verified, decrypted and stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReceipt {
    /// The message.
    pub message_id: MessageId,
    /// The recipient.
    pub recipient: Oin,
    /// SHA-256 (hex) of the body ciphertext it received.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub body_sha256: String,
    /// When it stored the message.
    pub received_at: DateTime<Utc>,
}

impl Record for DeliveryReceipt {
    const KIND: Kind = Kind::DeliveryReceipt;
}

/// The broker's notice that an answer is overdue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadlineNotice {
    /// The message that waits for an answer.
    pub message_id: MessageId,
    /// Its case.
    pub case_ref: CaseRef,
    /// Its kind.
    pub kind: Kind,
    /// The party that owes the answer.
    pub owed_by: Oin,
    /// The deadline that passed.
    pub deadline: DateTime<Utc>,
    /// When the notice was made.
    pub issued_at: DateTime<Utc>,
}

impl Record for DeadlineNotice {
    const KIND: Kind = Kind::DeadlineNotice;
}

/// The broker's notice to a sender that a message expired before a recipient fetched it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiryNotice {
    /// The message.
    pub message_id: MessageId,
    /// The recipient that did not fetch it.
    pub recipient: Oin,
    /// When the body was deleted.
    pub expired_at: DateTime<Utc>,
}

impl Record for ExpiryNotice {
    const KIND: Kind = Kind::ExpiryNotice;
}

/// A control record with the exact bytes that were signed. The signature covers the
/// record's kind too ([`Context::Control`]): relabelling a record as another kind breaks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    /// The record's kind.
    pub kind: Kind,
    /// Who signed (a party's OIN, or the broker's pseudo-OIN for broker records).
    pub signer: Oin,
    /// The record's JSON bytes, base64.
    pub record: String,
    /// ed25519 signature (base64) over the record bytes.
    pub signature: String,
}

impl SignedRecord {
    /// Serialise and sign a record.
    pub fn sign<R: Record>(record: &R, signer: Oin, key: &SigningKey) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Decode(e.to_string()))?;
        let sig = keys::sign(key, Context::Control(R::KIND), &bytes);
        Ok(SignedRecord {
            kind: R::KIND,
            signer,
            record: B64.encode(&bytes),
            signature: keys::signature_to_text(&sig),
        })
    }

    /// Verify the signature with the signer's key, then parse the record.
    pub fn verify<R: Record>(&self, key: &VerifyingKey) -> Result<R, Error> {
        self.verify_any(std::slice::from_ref(key))
    }

    /// [`SignedRecord::verify`] with any of the signer's valid keys (a rotation's overlap).
    pub fn verify_any<R: Record>(&self, keys: &[VerifyingKey]) -> Result<R, Error> {
        self.verify_any_with(&keys::Strict, keys)
    }

    /// [`SignedRecord::verify_any`] with the signature checked by `check` (a broker's
    /// verdicts from a batch; always `verify_strict`'s verdict).
    pub fn verify_any_with<R: Record>(
        &self,
        check: &dyn keys::SignatureCheck,
        keys: &[VerifyingKey],
    ) -> Result<R, Error> {
        expect_kind::<R>(self.kind)?;
        self.parts()?.verify_any_with(check, keys)
    }

    /// The record decoded from its text: its bytes and signature ([`RecordParts`]). The
    /// errors of [`SignedRecord::verify_any`] for bytes or a signature that do not decode.
    pub fn parts(&self) -> Result<RecordParts, Error> {
        let bytes = self.bytes()?;
        let signature = keys::signature_from_text(&self.signature)
            .map_err(|_| Error::BadSignature("record"))?;
        Ok(RecordParts {
            kind: self.kind,
            bytes,
            signature,
        })
    }

    fn bytes(&self) -> Result<Vec<u8>, Error> {
        if self.record.len() > MAX_RECORD_BYTES * 4 / 3 + 4 {
            return Err(Error::TooLarge {
                what: "control record",
                size: self.record.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        B64.decode(&self.record)
            .map_err(|_| Error::Decode("record is not base64".into()))
    }
}

/// A record labelled `kind` read as an `R`: the kinds must match.
fn expect_kind<R: Record>(kind: Kind) -> Result<(), Error> {
    if kind == R::KIND {
        Ok(())
    } else {
        Err(Error::Decode(format!(
            "record is a {kind}, expected a {}",
            R::KIND
        )))
    }
}

/// A [`SignedRecord`] decoded once ([`SignedRecord::parts`]): its kind, the bytes its
/// signature covers and the signature. What a verifier that checks many signatures at once
/// needs ([`RecordParts::framed`], [`RecordParts::signature`]), and the record's check and
/// parse with that verifier's verdict ([`RecordParts::verify_any_with`]).
#[derive(Clone, Debug)]
pub struct RecordParts {
    kind: Kind,
    bytes: Vec<u8>,
    signature: keys::Signature,
}

impl RecordParts {
    /// The bytes as signed ([`keys::framed`] for the record's kind).
    pub fn framed(&self) -> Vec<u8> {
        keys::framed(Context::Control(self.kind), &self.bytes)
    }

    /// The signature.
    pub fn signature(&self) -> keys::Signature {
        self.signature
    }

    /// [`SignedRecord::verify_any_with`] of the record these parts came from.
    pub fn verify_any_with<R: Record>(
        &self,
        check: &dyn keys::SignatureCheck,
        keys: &[VerifyingKey],
    ) -> Result<R, Error> {
        expect_kind::<R>(self.kind)?;
        keys::verify_any_with(
            check,
            keys,
            Context::Control(self.kind),
            &self.bytes,
            &self.signature,
            "record",
        )?;
        serde_json::from_slice(&self.bytes).map_err(|e| Error::Decode(format!("{}: {e}", R::KIND)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn oin(n: u8) -> Oin {
        format!("{:020}", n).parse().unwrap()
    }

    #[test]
    fn records_verify_and_reject_tampering() {
        let key = keys::generate_signing_key();
        let receipt = DeliveryReceipt {
            message_id: MessageId::new(),
            recipient: oin(2),
            body_sha256: "ab".repeat(32),
            received_at: Utc::now(),
        };
        let signed = SignedRecord::sign(&receipt, oin(2), &key).unwrap();
        let back: DeliveryReceipt = signed.verify(&key.verifying_key()).unwrap();
        assert_eq!(back, receipt);

        // Another kind is refused before parsing.
        assert!(signed
            .verify::<DeletionConfirmation>(&key.verifying_key())
            .is_err());
        // Relabelled as another kind, the signature no longer verifies: the kind is signed.
        let mut relabelled = signed.clone();
        relabelled.kind = DeletionConfirmation::KIND;
        assert_eq!(
            relabelled.verify::<DeletionConfirmation>(&key.verifying_key()),
            Err(Error::BadSignature("record"))
        );
        // Another key is refused.
        let other = keys::generate_signing_key();
        assert!(signed
            .verify::<DeliveryReceipt>(&other.verifying_key())
            .is_err());
        // An edited record is refused.
        let mut edited = signed.clone();
        let mut json: serde_json::Value =
            serde_json::from_slice(&B64.decode(&edited.record).unwrap()).unwrap();
        json["recipient"] = serde_json::json!(oin(3).to_string());
        edited.record = B64.encode(serde_json::to_vec(&json).unwrap());
        assert_eq!(
            edited.verify::<DeliveryReceipt>(&key.verifying_key()),
            Err(Error::BadSignature("record"))
        );
    }
}
