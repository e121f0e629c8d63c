//! Records and entries: what an audit record holds, and the rules an entry must meet.

use std::fmt;

use chrono::{DateTime, Utc};
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

    /// Fill in `hash` and return the record with its stored JSON (what
    /// `serde_json::to_vec` gives for the hashed record), serializing it once: the
    /// canonical bytes end in `"hash":""}` (`hash` is the last field), so the stored
    /// JSON is those bytes with the hash put between the quotes. Whatever `hash` held is
    /// replaced.
    pub fn seal(mut self) -> Result<(AuditRecord, Vec<u8>), AuditError> {
        self.hash.clear();
        let mut bytes = serde_json::to_vec(&self).map_err(AuditError::Serialize)?;
        self.hash = hex::encode(Sha256::digest(&bytes));
        const EMPTY_HASH_TAIL: &[u8] = b"\"hash\":\"\"}";
        if bytes.ends_with(EMPTY_HASH_TAIL) {
            // Drop `"}`, leaving `"hash":"`; the hex digest needs no escaping.
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(self.hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
        } else {
            // Not reached while `hash` is the last field; serialized again to be sure.
            bytes = serde_json::to_vec(&self).map_err(AuditError::Serialize)?;
        }
        Ok((self, bytes))
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
/// use ketenpost_audit::{AuditEntry, AuditEvent, Outcome};
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

    pub(crate) fn into_record(
        self,
        seq: u64,
        time: DateTime<Utc>,
        prev_hash: String,
    ) -> AuditRecord {
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

/// A short name for a serde_json error class (its message could quote stored data).
pub fn json_error_class(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "wrong fields",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// A bare record of `event`, for tests of what reads records (reports, alerts): seq 0, no
/// hash, nothing filled in beyond the event, its time and outcome `ok`. Never stored: a
/// trail only takes records its chain made from an [`AuditEntry`].
pub fn bare_record(event: AuditEvent, time: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time,
        event,
        actor: None,
        user: None,
        case_ref: None,
        purpose: None,
        processing_activity: None,
        kind: None,
        message_id: None,
        counterparties: Vec::new(),
        outcome: Outcome::Ok,
        reason: None,
        trace_id: None,
        request_digest: None,
        document_serial: None,
        recipient_views: Default::default(),
        due_at: None,
        broken_seq: None,
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    }
}
