//! The tamper-evident audit trail: records, entries, the chain and checkpoints (pure).
//!
//! Storing them is the broker's (`ketenpost_broker::audit::AuditTrail`, sled); reading and
//! checking them is shared by broker, agent and the FG tools.
//!
//! Every decision the broker takes about a message, a consent, a case, a deadline, a breach
//! notice or a deletion becomes one [`AuditRecord`], in the spirit of the Logboek
//! Dataverwerkingen and NEN 7513: what happened ([`AuditEvent`]), when, which organisation
//! acted, for which case reference, purpose and processing activity, with which
//! counterparties, and the outcome with a reason code.
//!
//! # What never enters a record
//! No payload content and no personal data. A record only carries OINs (organisation ids),
//! pseudonymous case references, message and trace ids, policy names (purpose, processing
//! activity, kind) and reason *codes*. The types enforce what they can: [`AuditEntry`] is
//! the only way to write a record, `AuditTrail::append` refuses an actor or counterparty
//! that is not a 20-digit OIN and identifiers that look like free text, and a reason can
//! only be a `&'static str` code (plus an optional fixed `&'static str` explanation), so
//! nothing read from the network can become a reason.
//!
//! # The chain
//! Records are numbered `seq = 1, 2, 3, ...` without gaps and stored in the sled tree
//! `audit` under the big-endian bytes of their `seq`, so sled's key order is seq order.
//! Each record holds `prev_hash`, the hash of the record before it (64 zeros for record 1),
//! and `hash`, its own hash:
//!
//! > **canonical bytes of a record** = the `serde_json` serialisation of the
//! > [`AuditRecord`] with its `hash` field set to the empty string `""` (fields in
//! > declaration order, optional fields omitted when absent, no whitespace);
//! > `hash` = lowercase hex of SHA-256 over those bytes.
//!
//! The value stored in sled is the `serde_json` serialisation of the complete record;
//! [`verify_chain`] also insists the stored bytes are exactly that (no extra fields, no
//! reformatting), so any byte-level edit is noticed.
//!
//! Record times never go backwards: a record is dated `max(now, time of the previous
//! record)`, which keeps the trail ordered by time as well as by seq even when concurrent
//! callers pass slightly different clocks (and lets `AuditTrail::records_between` use a
//! binary search).
//!
//! # Checkpoints
//! A hash chain alone does not stop whoever holds the database from rewriting all of it.
//! The broker therefore signs periodic [`Checkpoint`]s (`seq`, `head_hash`, `time`) with
//! its ed25519 key and hands them to agents. An agent that holds a checkpoint can later ask
//! the broker to prove the record at that seq still has that hash
//! (`AuditTrail::prove_extends`) and can compare checkpoints it holds
//! ([`Checkpoint::extends`]); `ketenpost-broker audit verify` ([`verify_chain`]) checks
//! every stored checkpoint against the records. Checkpoints live in the sled tree
//! `audit_checkpoints` under the big-endian bytes of their `seq`.
//!
//! > **signed bytes of a checkpoint** = the UTF-8 bytes of
//! > `format!("{seq}:{head_hash}:{time}")`, where `time` is RFC 3339 in UTC with a `Z`
//! > suffix and only as many fractional digits as needed (chrono
//! > `to_rfc3339_opts(SecondsFormat::AutoSi, true)`, see [`Checkpoint::time_text`]);
//! > the signature is `keys::sign(broker_key, Context::Checkpoint, bytes)`, so it is
//! > domain-separated from every other ketenpost signature. Checkpoint times are whole
//! > seconds, e.g. `42:ab12…:2025-03-01T09:30:00Z`.
//!
//! # Durability and concurrency
//! `AuditTrail::append` writes into sled but does not flush: the broker group-commits
//! with `db.flush_async()` before it answers `accepted`, so one fsync covers the queue
//! write and the audit record. `AuditTrail::checkpoint` does flush, because a checkpoint
//! handed to an agent must never cover records a crash could lose. Appends from many
//! threads are serialised by one mutex around the head of the chain, so seqs stay
//! contiguous and every `prev_hash` is right.
//!
//! Reading the trail is itself an event to audit ([`AuditEvent::AuditRead`]); that is the
//! reader's job (the FG report), not this module's.

use std::fmt;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use ketenpost_schemas::keys::{self, Context, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of record 1, and the head hash of an empty trail: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest identifier (case reference, message id, purpose, ...) a record accepts.
const MAX_ID_LEN: usize = 128;
/// Longest fixed explanation that may follow a reason code.
const MAX_EXPLANATION_LEN: usize = 200;

/// Everything that can go wrong with the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store under the trail failed: an I/O error, or the database found its own
    /// files corrupt.
    #[error("audit store: {0}")]
    Storage(String),
    /// A stored record or checkpoint cannot be used: it does not parse, or its key, seq
    /// and hash do not agree. The broker refuses to extend a trail whose head is corrupt;
    /// `ketenpost-broker audit verify` says what is wrong with the rest.
    #[error("audit record {seq} is corrupt: {reason}")]
    Corrupt {
        /// The seq of the record (or checkpoint) that is corrupt.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record or checkpoint could not be serialised to JSON.
    #[error("cannot serialise audit data: {0}")]
    Serialize(serde_json::Error),
    /// A checkpoint's signature is malformed or does not verify under the broker key.
    #[error("audit checkpoint at seq {seq} has a bad signature")]
    BadSignature {
        /// The seq the checkpoint covers.
        seq: u64,
    },
    /// An entry holds a value that may not enter the trail: an actor or counterparty that
    /// is not an OIN, or an identifier that looks like free text. The message names the
    /// field, never its value.
    #[error("audit entry field '{field}' {reason}")]
    InvalidEntry {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The trail holds `u64::MAX` records; no seq is left.
    #[error("the audit trail is full")]
    Full,
}

/// What happened. Serialised in snake_case (`body_deleted`, `non_consent_use`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A submitted message passed every check and was queued.
    Accepted,
    /// A submitted message failed a check; nothing was queued.
    Rejected,
    /// A party went over one of its limits at the broker (connections, requests in
    /// flight, buffered bytes); recorded once per episode, the reason names the limit.
    LimitExceeded,
    /// A message was handed to a recipient agent.
    Delivered,
    /// A recipient's signed receipt arrived.
    Receipt,
    /// An undelivered message passed its TTL; its body was dropped and the sender told.
    Expired,
    /// A body was deleted because every recipient receipted it (or it expired).
    BodyDeleted,
    /// A consent (toestemming) was recorded.
    ConsentGranted,
    /// A consent was withdrawn.
    ConsentWithdrawn,
    /// A case was opened.
    CaseOpened,
    /// A party joined a case team.
    CaseMemberAdded,
    /// A party left a case team.
    CaseMemberRemoved,
    /// A case was closed; its retention clock started. The reason is `close_after` when
    /// the broker closed it at the end of its phase.
    CaseClosed,
    /// A case moved to another phase of its purpose (the reason names the phase).
    CasePhaseChanged,
    /// A case's phase reached its review term; its case managers were told (the reason
    /// names the phase).
    CaseReviewDue,
    /// A message was sent on a non-consent ground; the FGs are alerted.
    NonConsentUse,
    /// A deadline was missed (a message late on arrival, or an answer overdue).
    DeadlineLate,
    /// A deadline reminder was sent.
    DeadlineNotice,
    /// A breach notice (datalek-melding) was routed.
    BreachNotice,
    /// A correction (correctie, AVG art. 16) was routed to the parties that received the
    /// data it corrects; one record per affected case.
    Correction,
    /// A case manager's agent registered a data subject's access request (AVG art. 15)
    /// and asked for the facts of its cases; one record per case, the request id in
    /// `message_id`, and in `due_at` the end of the one-month term (004:844-846).
    AccessRequested,
    /// The access request was answered to the person (`message_id`: the request id).
    AccessAnswered,
    /// A deletion order went to the parties holding a case's messages.
    DeletionOrdered,
    /// A party confirmed (signed) that it deleted a case's messages.
    DeletionConfirmed,
    /// A deletion order passed its term without the party's confirmation; the FGs are
    /// alerted.
    DeletionOverdue,
    /// Someone (an FG) read the audit trail.
    AuditRead,
    /// The broker signed a checkpoint of the trail.
    Checkpoint,
    /// The broker put a new version of the federation documents (policy, directory,
    /// CRL) in force without a restart, or refused one (older, badly signed, another
    /// covenant); `document_serial` names the version.
    DocumentsChanged,
    /// An operator took an online backup of the broker's data.
    BackupTaken,
    /// An FG alert was accepted by its receiver (reason: the event alerted about).
    AlertSent,
    /// The running broker verified its own trail and found damage (reason: the kind of
    /// damage; `broken_seq`: the first damaged record); the FGs are alerted.
    AuditVerificationFailed,
    /// The broker started.
    BrokerStarted,
    /// The broker stopped.
    BrokerStopped,
    /// The sending agent refused a message before it reached the broker (early check);
    /// written only to the agent's own trail, so the broker's trail never holds it.
    EarlyRefused,
    /// The receiving agent refused a delivery (bad signature, a field outside its view,
    /// ...); written only to the agent's own trail.
    DeliveryRefused,
}

impl AuditEvent {
    /// The snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Accepted => "accepted",
            AuditEvent::Rejected => "rejected",
            AuditEvent::LimitExceeded => "limit_exceeded",
            AuditEvent::Delivered => "delivered",
            AuditEvent::Receipt => "receipt",
            AuditEvent::Expired => "expired",
            AuditEvent::BodyDeleted => "body_deleted",
            AuditEvent::ConsentGranted => "consent_granted",
            AuditEvent::ConsentWithdrawn => "consent_withdrawn",
            AuditEvent::CaseOpened => "case_opened",
            AuditEvent::CaseMemberAdded => "case_member_added",
            AuditEvent::CaseMemberRemoved => "case_member_removed",
            AuditEvent::CaseClosed => "case_closed",
            AuditEvent::CasePhaseChanged => "case_phase_changed",
            AuditEvent::CaseReviewDue => "case_review_due",
            AuditEvent::NonConsentUse => "non_consent_use",
            AuditEvent::DeadlineLate => "deadline_late",
            AuditEvent::DeadlineNotice => "deadline_notice",
            AuditEvent::BreachNotice => "breach_notice",
            AuditEvent::Correction => "correction",
            AuditEvent::AccessRequested => "access_requested",
            AuditEvent::AccessAnswered => "access_answered",
            AuditEvent::DeletionOrdered => "deletion_ordered",
            AuditEvent::DeletionConfirmed => "deletion_confirmed",
            AuditEvent::DeletionOverdue => "deletion_overdue",
            AuditEvent::AuditRead => "audit_read",
            AuditEvent::Checkpoint => "checkpoint",
            AuditEvent::DocumentsChanged => "documents_changed",
            AuditEvent::BackupTaken => "backup_taken",
            AuditEvent::AlertSent => "alert_sent",
            AuditEvent::AuditVerificationFailed => "audit_verification_failed",
            AuditEvent::BrokerStarted => "broker_started",
            AuditEvent::BrokerStopped => "broker_stopped",
            AuditEvent::EarlyRefused => "early_refused",
            AuditEvent::DeliveryRefused => "delivery_refused",
        }
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// Refused; the reason says why.
    Refused,
    /// Done, but noted for the FGs (late, non-consent ground, ...); the reason says why.
    Flagged,
}

impl Outcome {
    /// The snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Flagged => "flagged",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record of the trail, as stored. See the module docs for how `hash` is computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the trail, 1-based and contiguous; a gap means a removed record.
    pub seq: u64,
    /// When it happened (never earlier than the previous record).
    pub time: DateTime<Utc>,
    /// What happened.
    pub event: AuditEvent,
    /// OIN of the organisation that acted (the sender, the recipient that fetched, the FG's
    /// organisation that read the trail); absent for the broker's own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The partner system's pseudonym for the user who acted, when the agent passed one
    /// (NEN 7513 asks for the person; the broker only ever sees a pseudonym).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The pseudonymous case reference (`case-...`), never a BSN or a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<String>,
    /// The policy purpose id the processing was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The processing activity id, as in the parties' registers (Logboek Dataverwerkingen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_activity: Option<String>,
    /// The message kind (`signaal`, `aanmelding`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The message id (UUIDv7) the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// OINs of the other organisations involved (the recipients, the sender of a receipt),
    /// so an FG can find every flow that involves its organisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counterparties: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// A reason code (`not_in_case_team`), optionally followed by `": "` and a fixed
    /// explanation; never payload content or personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// W3C trace id, to find the same message in the partners' own logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Lowercase hex SHA-256 of a refused request's bytes, for a refusal made before the
    /// sender's signature verified: nothing the request claims is recorded then, but its
    /// sender can still find its own message by this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// The directory serial of the federation documents a `documents_changed` record is
    /// about (the version now in force, or the one refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_serial: Option<u64>,
    /// For `audit_verification_failed`: the first record where the trail is damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<u64>,
    /// For an accepted message: the role (view) each recipient got it in, by OIN, from the
    /// verified header; with the policy it says which data categories each received.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub recipient_views: std::collections::BTreeMap<String, String>,
    /// For a record that starts a term owed to a data subject (an access request): when
    /// the answer is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// Hash of the previous record ([`GENESIS_HASH`] for record 1).
    pub prev_hash: String,
    /// Hash of this record's canonical bytes (which are computed with this field empty).
    pub hash: String,
}

impl AuditRecord {
    /// The bytes the hash is computed over: the JSON of this record with `hash` set to
    /// `""` (see the module docs).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, AuditError> {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        serde_json::to_vec(&unhashed).map_err(AuditError::Serialize)
    }

    /// Lowercase hex SHA-256 of [`canonical_bytes`](Self::canonical_bytes): what `hash`
    /// should be.
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        Ok(hex::encode(Sha256::digest(self.canonical_bytes()?)))
    }

    /// Whether the stored `hash` matches the record's content.
    pub fn hash_is_valid(&self) -> Result<bool, AuditError> {
        Ok(self.compute_hash()? == self.hash)
    }
}

/// What a caller fills in for one record: everything except the seq, the time and the
/// hashes, which `AuditTrail::append` adds.
///
/// ```
/// use ketenpost_core::audit::{AuditEntry, AuditEvent, Outcome};
/// let entry = AuditEntry::new(AuditEvent::Rejected, Outcome::Refused)
///     .actor("00000001234567890000")
///     .case_ref("case-0123456789abcdefghijklmnop")
///     .purpose("walcheren-uitstroom")
///     .kind("signaal")
///     .counterparty("00000009876543210000")
///     .reason("not_in_case_team");
/// # let _ = entry;
/// ```
///
/// Identifiers are taken as anything that displays (`&str`, `String`, the `schemas` id
/// types); `append` checks their shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    event: AuditEvent,
    outcome: Outcome,
    actor: Option<String>,
    user: Option<String>,
    case_ref: Option<String>,
    purpose: Option<String>,
    processing_activity: Option<String>,
    kind: Option<String>,
    message_id: Option<String>,
    counterparties: Vec<String>,
    reason_code: Option<std::borrow::Cow<'static, str>>,
    explanation: Option<&'static str>,
    trace_id: Option<String>,
    request_digest: Option<String>,
    document_serial: Option<u64>,
    broken_seq: Option<u64>,
    recipient_views: std::collections::BTreeMap<String, String>,
    due_at: Option<DateTime<Utc>>,
}

impl AuditEntry {
    /// An entry for `event` with `outcome` and nothing else filled in.
    pub fn new(event: AuditEvent, outcome: Outcome) -> Self {
        AuditEntry {
            event,
            outcome,
            actor: None,
            user: None,
            case_ref: None,
            purpose: None,
            processing_activity: None,
            kind: None,
            message_id: None,
            counterparties: Vec::new(),
            reason_code: None,
            explanation: None,
            trace_id: None,
            request_digest: None,
            document_serial: None,
            broken_seq: None,
            recipient_views: Default::default(),
            due_at: None,
        }
    }

    /// The event of this entry.
    pub fn event(&self) -> AuditEvent {
        self.event
    }

    /// An entry for `event` that went as asked.
    pub fn ok(event: AuditEvent) -> Self {
        Self::new(event, Outcome::Ok)
    }

    /// An entry for `event` that was refused for reason `code`.
    pub fn refused(event: AuditEvent, code: &'static str) -> Self {
        Self::new(event, Outcome::Refused).reason(code)
    }

    /// An entry for `event` that went through but is flagged for reason `code`.
    pub fn flagged(event: AuditEvent, code: &'static str) -> Self {
        Self::new(event, Outcome::Flagged).reason(code)
    }

    /// The OIN of the acting organisation.
    pub fn actor(mut self, oin: impl fmt::Display) -> Self {
        self.actor = Some(oin.to_string());
        self
    }

    /// The partner system's pseudonym for the acting user.
    pub fn user(mut self, pseudonym: impl fmt::Display) -> Self {
        self.user = Some(pseudonym.to_string());
        self
    }

    /// The pseudonymous case reference.
    pub fn case_ref(mut self, case_ref: impl fmt::Display) -> Self {
        self.case_ref = Some(case_ref.to_string());
        self
    }

    /// The policy purpose id.
    pub fn purpose(mut self, purpose: impl fmt::Display) -> Self {
        self.purpose = Some(purpose.to_string());
        self
    }

    /// The processing activity id.
    pub fn processing_activity(mut self, id: impl fmt::Display) -> Self {
        self.processing_activity = Some(id.to_string());
        self
    }

    /// The message kind.
    pub fn kind(mut self, kind: impl fmt::Display) -> Self {
        self.kind = Some(kind.to_string());
        self
    }

    /// The message id.
    pub fn message_id(mut self, id: impl fmt::Display) -> Self {
        self.message_id = Some(id.to_string());
        self
    }

    /// Add one counterparty OIN.
    pub fn counterparty(mut self, oin: impl fmt::Display) -> Self {
        self.counterparties.push(oin.to_string());
        self
    }

    /// Add several counterparty OINs.
    pub fn counterparties<I>(mut self, oins: I) -> Self
    where
        I: IntoIterator,
        I::Item: fmt::Display,
    {
        self.counterparties
            .extend(oins.into_iter().map(|o| o.to_string()));
        self
    }

    /// The reason code (lowercase letters, digits, `_`, `-` and `.`, e.g.
    /// `not_in_case_team`). Only a `&'static str` is accepted so that nothing read from
    /// the network can end up here.
    pub fn reason(mut self, code: &'static str) -> Self {
        self.reason_code = Some(code.into());
        self.explanation = None;
        self
    }

    /// The name of the ground a message was sent on as the reason code. It comes from a
    /// header, but only once the checks found it among the policy's grounds (a policy
    /// identifier, never free text).
    pub fn reason_ground(mut self, ground: &ketenpost_schemas::policy::Ground) -> Self {
        self.reason_code = Some(ground.as_str().to_owned().into());
        self.explanation = None;
        self
    }

    /// A reason code with a short fixed explanation; stored as `"code: explanation"`.
    pub fn reason_explained(mut self, code: &'static str, explanation: &'static str) -> Self {
        self.reason_code = Some(code.into());
        self.explanation = Some(explanation);
        self
    }

    /// The role each recipient got the message in (see [`AuditRecord::recipient_views`]).
    pub fn recipient_views<'a, O: fmt::Display + 'a, R: fmt::Display + 'a>(
        mut self,
        views: impl IntoIterator<Item = &'a (O, R)>,
    ) -> Self {
        self.recipient_views = views
            .into_iter()
            .map(|(o, r)| (o.to_string(), r.to_string()))
            .collect();
        self
    }

    /// When the term the record starts ends (see [`AuditRecord::due_at`]).
    pub fn due_at(mut self, due: DateTime<Utc>) -> Self {
        self.due_at = Some(due);
        self
    }

    /// The directory serial of the federation documents (see
    /// [`AuditRecord::document_serial`]).
    pub fn document_serial(mut self, serial: u64) -> Self {
        self.document_serial = Some(serial);
        self
    }

    /// The first damaged record (for `audit_verification_failed`).
    pub fn broken_seq(mut self, seq: u64) -> Self {
        self.broken_seq = Some(seq);
        self
    }

    /// The SHA-256 of a refused request's bytes (see [`AuditRecord::request_digest`]).
    pub fn request_digest(mut self, bytes: &[u8]) -> Self {
        self.request_digest = Some(hex::encode(Sha256::digest(bytes)));
        self
    }

    /// The W3C trace id.
    pub fn trace_id(mut self, trace_id: impl fmt::Display) -> Self {
        self.trace_id = Some(trace_id.to_string());
        self
    }

    /// Check the shape of every field, so nothing that looks like free text or personal
    /// data enters the trail.
    pub fn validate(&self) -> Result<(), AuditError> {
        if let Some(a) = &self.actor {
            check_oin("actor", a)?;
        }
        for c in &self.counterparties {
            check_oin("counterparties", c)?;
        }
        for (o, role) in &self.recipient_views {
            check_oin("recipient_views", o)?;
            check_name("recipient_views", Some(role))?;
        }
        check_token("user", self.user.as_deref(), 64)?;
        check_token("case_ref", self.case_ref.as_deref(), MAX_ID_LEN)?;
        check_token("kind", self.kind.as_deref(), MAX_ID_LEN)?;
        check_token("message_id", self.message_id.as_deref(), MAX_ID_LEN)?;
        check_token("trace_id", self.trace_id.as_deref(), MAX_ID_LEN)?;
        check_name("purpose", self.purpose.as_deref())?;
        check_name("processing_activity", self.processing_activity.as_deref())?;
        if let Some(code) = self.reason_code.as_deref() {
            let ok = !code.is_empty()
                && code.len() <= MAX_ID_LEN
                && code.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
                });
            if !ok {
                return Err(AuditError::InvalidEntry {
                    field: "reason",
                    reason: "must be a code of lowercase letters, digits, '_', '-' and '.'",
                });
            }
        }
        if let Some(e) = self.explanation {
            if e.len() > MAX_EXPLANATION_LEN || e.chars().any(char::is_control) {
                return Err(AuditError::InvalidEntry {
                    field: "reason",
                    reason: "explanation must be one short line",
                });
            }
        }
        Ok(())
    }

    fn reason_text(&self) -> Option<String> {
        match (self.reason_code.as_deref(), self.explanation) {
            (Some(c), Some(e)) => Some(format!("{c}: {e}")),
            (Some(c), None) => Some(c.to_owned()),
            (None, Some(e)) => Some(e.to_owned()),
            (None, None) => None,
        }
    }

    fn into_record(self, seq: u64, time: DateTime<Utc>, prev_hash: String) -> AuditRecord {
        let reason = self.reason_text();
        AuditRecord {
            seq,
            time,
            event: self.event,
            actor: self.actor,
            user: self.user,
            case_ref: self.case_ref,
            purpose: self.purpose,
            processing_activity: self.processing_activity,
            kind: self.kind,
            message_id: self.message_id,
            counterparties: self.counterparties,
            outcome: self.outcome,
            reason,
            trace_id: self.trace_id,
            request_digest: self.request_digest,
            document_serial: self.document_serial,
            broken_seq: self.broken_seq,
            recipient_views: self.recipient_views,
            due_at: self.due_at,
            prev_hash,
            hash: String::new(),
        }
    }
}

fn check_oin(field: &'static str, v: &str) -> Result<(), AuditError> {
    if v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(AuditError::InvalidEntry {
            field,
            reason: "must be an OIN (20 digits)",
        })
    }
}

/// An identifier: printable ASCII without spaces.
fn check_token(field: &'static str, v: Option<&str>, max: usize) -> Result<(), AuditError> {
    match v {
        Some(v) if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(AuditError::InvalidEntry {
                field,
                reason: "must be a short identifier of printable ASCII without spaces",
            })
        }
        _ => Ok(()),
    }
}

/// A policy name: one short line (policy authors may use spaces in these).
fn check_name(field: &'static str, v: Option<&str>) -> Result<(), AuditError> {
    match v {
        Some(v)
            if v.trim().is_empty() || v.len() > MAX_ID_LEN || v.chars().any(char::is_control) =>
        {
            Err(AuditError::InvalidEntry {
                field,
                reason: "must be a short name on one line",
            })
        }
        _ => Ok(()),
    }
}

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
    /// The head of a stored trail from its last entry (key and value as stored; `None`:
    /// an empty trail). Refuses ([`AuditError::Corrupt`]) a last record that does not
    /// parse or does not hash right: extending it would bury the damage.
    pub fn recover(last: Option<(&[u8], &[u8])>) -> Result<ChainHead, AuditError> {
        let Some((key, value)) = last else {
            return Ok(ChainHead::genesis());
        };
        let seq = key_seq(key).ok_or_else(|| AuditError::Corrupt {
            seq: 0,
            reason: "the last entry has a malformed key".into(),
        })?;
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
    /// `max(now, time of the previous record)`. The entry is validated first.
    pub fn next(&self, entry: AuditEntry, now: DateTime<Utc>) -> Result<AuditRecord, AuditError> {
        entry.validate()?;
        let seq = self.seq.checked_add(1).ok_or(AuditError::Full)?;
        let time = match self.time {
            Some(t) if t > now => t,
            _ => now,
        };
        let mut record = entry.into_record(seq, time, self.hash.clone());
        record.hash = record.compute_hash()?;
        Ok(record)
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

/// The key of a seq in the store: its big-endian bytes, so key order is seq order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a store key ([`seq_key`]'s inverse).
pub fn key_seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
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

/// Parse the checkpoint stored under `seq`.
pub fn parse_checkpoint(seq: u64, bytes: &[u8]) -> Result<Checkpoint, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
        seq,
        reason: format!("checkpoint does not parse ({})", json_error_class(&e)),
    })
}

/// A short name for a serde_json error class (its message could quote stored data).
pub fn json_error_class(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "wrong fields",
        serde_json::error::Category::Eof => "truncated",
    }
}
