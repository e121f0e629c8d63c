//! The outbox: messages sealed and stored before the caller gets their id, then submitted
//! until the broker accepts or rejects them, then followed per recipient through the
//! receipts and expiry notices the broker forwards.
//!
//! Only the sealed envelope is stored (ciphertext per view and the signed header), never
//! the plaintext payload; it is dropped once the broker answered. A resubmission of the
//! same bytes is idempotent: the broker answers `replay` for an id it accepted before, which
//! for the agent's own message means "accepted earlier" (the first answer was lost).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ketenpost_schemas::envelope::{BreachScope, Header, LegalBasis};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin, TraceId};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Rejection};
use serde::{Deserialize, Serialize};

use crate::store::{Sealed, Store};
use crate::Error;

impl Sealed for OutboxEntry {
    const SECRET: &'static [&'static str] = &["reseal"];
    const WHAT: &'static str = "outbox entry";
}

/// Where the submission stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Submission {
    /// Stored, not yet accepted or rejected by the broker.
    Queued,
    /// The broker stored it durably and will deliver it.
    Accepted {
        /// When the agent heard so.
        at: DateTime<Utc>,
        /// What the broker noted (late, non-consent ground, duplicate).
        flags: Vec<AcceptFlag>,
    },
    /// The broker refused it; nothing was delivered.
    Rejected {
        /// When.
        at: DateTime<Utc>,
        /// The broker's code, check and reason.
        rejection: Rejection,
    },
}

/// One recipient of a message and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The recipient.
    pub oin: Oin,
    /// The view (case role) it receives.
    pub role: Role,
    /// SHA-256 of its body, which its receipt must name.
    pub body_sha256: String,
    /// When it stored the message, from its signed receipt.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the broker let the message expire for it, undelivered.
    pub expired_at: Option<DateTime<Utc>>,
}

/// A deadline the broker reported as passed for this message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overdue {
    /// The party that owes the answer.
    pub owed_by: Oin,
    /// The deadline.
    pub deadline: DateTime<Utc>,
}

/// A message in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The message id.
    pub message_id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its case.
    pub case_ref: CaseRef,
    /// Its purpose.
    pub purpose: String,
    /// When it was sealed.
    pub created_at: DateTime<Utc>,
    /// Submission state.
    #[serde(flatten)]
    pub submission: Submission,
    /// Per recipient.
    pub recipients: Vec<RecipientState>,
    /// Submission attempts so far.
    pub attempts: u32,
    /// The last transport problem, while still queued.
    pub last_error: Option<String>,
    /// Deadlines passed, from the broker's notices.
    #[serde(default)]
    pub overdue: Vec<Overdue>,
    /// The sealed envelope (base64) until the broker answered.
    pub envelope: Option<String>,
    /// For a breach notice or a correctie only, until the broker answered: what is needed
    /// to seal it again to the recipients the broker resolves (see [`Reseal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseal: Option<Reseal>,
}

/// A breach notice goes to exactly the parties that exchanged messages about the affected
/// cases; only the broker knows them. It refuses a notice sealed to another set with
/// `breach_recipients` and the set it must go to, and the agent seals it again, under the
/// same message id, to exactly that set. For that the agent keeps the notice's payload
/// (and only a breach notice's or a correctie's, which is routed the same way to the
/// parties that received the data it corrects) until the broker answered; it is dropped
/// then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reseal {
    /// The purpose.
    pub purpose: String,
    /// The legal basis (covenant).
    pub legal_basis: LegalBasis,
    /// The discovery time.
    pub event_time: Option<DateTime<Utc>>,
    /// The message it answers.
    pub in_reply_to: Option<MessageId>,
    /// The trace id, kept across reseals.
    pub trace_id: TraceId,
    /// The affected cases and window.
    pub breach_scope: Option<BreachScope>,
    /// The messages a correctie corrects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrects: Vec<MessageId>,
    /// The message's request for an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_request: Option<ketenpost_schemas::envelope::AnswerRequest>,
    /// The full payload.
    pub payload: serde_json::Value,
    /// How often it was sealed again (bounded by [`MAX_RESEALS`]).
    pub reseals: u32,
}

/// How often a breach notice is sealed again before its refusal stands.
pub const MAX_RESEALS: u32 = 3;

/// The overall status the API reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored, waiting for the broker.
    Queued,
    /// Accepted; not every recipient has receipted it yet.
    Accepted,
    /// Rejected by the broker.
    Rejected,
    /// Every recipient receipted it.
    Delivered,
    /// Every recipient that did not receipt it let it expire.
    Expired,
}

/// The status of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not receipted yet.
    Pending,
    /// Receipted.
    Delivered,
    /// Expired at the broker, undelivered.
    Expired,
}

impl RecipientState {
    /// This recipient's status.
    pub fn status(&self) -> RecipientStatus {
        match (self.delivered_at, self.expired_at) {
            (Some(_), _) => RecipientStatus::Delivered,
            (None, Some(_)) => RecipientStatus::Expired,
            (None, None) => RecipientStatus::Pending,
        }
    }
}

impl OutboxEntry {
    /// A new entry for a sealed message.
    pub fn sealed(header: &Header, envelope: &[u8], roles: &[(Oin, Role)]) -> OutboxEntry {
        let recipients = header
            .bodies
            .iter()
            .flat_map(|b| {
                b.recipients.iter().map(move |oin| RecipientState {
                    oin: oin.clone(),
                    role: roles
                        .iter()
                        .find(|(o, _)| o == oin)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| b.view.clone()),
                    body_sha256: b.sha256.clone(),
                    delivered_at: None,
                    expired_at: None,
                })
            })
            .collect();
        OutboxEntry {
            message_id: header.id,
            kind: header.kind,
            case_ref: header.case_ref.clone(),
            purpose: header.purpose.clone(),
            created_at: header.created_at,
            submission: Submission::Queued,
            recipients,
            attempts: 0,
            last_error: None,
            overdue: Vec::new(),
            envelope: Some(B64.encode(envelope)),
            reseal: None,
        }
    }

    /// Replace the envelope after sealing again to other recipients (breach routing).
    pub fn resealed(&mut self, header: &Header, envelope: &[u8], roles: &[(Oin, Role)]) {
        let fresh = OutboxEntry::sealed(header, envelope, roles);
        self.recipients = fresh.recipients;
        self.envelope = fresh.envelope;
        self.created_at = header.created_at;
        self.attempts = self.attempts.saturating_add(1);
        if let Some(r) = self.reseal.as_mut() {
            r.reseals = r.reseals.saturating_add(1);
        }
        self.last_error = Some(format!(
            "sealed again to the {} recipient(s) the broker's breach routing named",
            self.recipients.len()
        ));
    }

    /// The recipients to seal again to, when the broker's answer asks for it and the
    /// agent may still do so.
    pub fn reseal_to(&self, answer: &SubmitAnswer) -> Option<Vec<(Oin, Role)>> {
        let SubmitAnswer::Rejected(r) = answer else {
            return None;
        };
        let expected = r.expected_recipients()?;
        let state = self.reseal.as_ref()?;
        (state.reseals < MAX_RESEALS && !expected.is_empty()).then_some(expected)
    }

    /// The overall status.
    pub fn status(&self) -> Status {
        match &self.submission {
            Submission::Queued => Status::Queued,
            Submission::Rejected { .. } => Status::Rejected,
            Submission::Accepted { .. } => {
                let s: Vec<RecipientStatus> = self.recipients.iter().map(|r| r.status()).collect();
                if s.iter().all(|s| *s == RecipientStatus::Delivered) {
                    Status::Delivered
                } else if s.contains(&RecipientStatus::Pending) {
                    Status::Accepted
                } else {
                    Status::Expired
                }
            }
        }
    }

    /// The envelope bytes, while queued.
    pub fn envelope_bytes(&self) -> Option<Vec<u8>> {
        self.envelope.as_ref().and_then(|b| B64.decode(b).ok())
    }

    /// Apply the broker's answer to a submission: returns whether the answer was final.
    /// `replay` for our own id means an earlier submission was accepted and its answer lost.
    pub fn answered(&mut self, answer: SubmitAnswer, now: DateTime<Utc>) -> bool {
        self.attempts = self.attempts.saturating_add(1);
        match answer {
            SubmitAnswer::Accepted(flags) => {
                self.submission = Submission::Accepted { at: now, flags };
            }
            SubmitAnswer::Rejected(r) if r.code == RejectCode::Replay => {
                self.submission = Submission::Accepted {
                    at: now,
                    flags: vec![AcceptFlag::Duplicate],
                };
            }
            SubmitAnswer::Rejected(r) if r.code.is_transient() => {
                self.last_error = Some(format!("broker storage: {}", r.reason));
                return false;
            }
            SubmitAnswer::Rejected(rejection) => {
                self.submission = Submission::Rejected { at: now, rejection };
            }
            SubmitAnswer::Failed(why) => {
                self.last_error = Some(why);
                return false;
            }
        }
        self.last_error = None;
        self.envelope = None;
        self.reseal = None;
        true
    }
}

/// What came of one submission attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitAnswer {
    /// Accepted, with the broker's flags.
    Accepted(Vec<AcceptFlag>),
    /// Rejected.
    Rejected(Rejection),
    /// No answer (transport) or an answer that does not settle it.
    Failed(String),
}

impl Store {
    /// Store a new sealed message and flush, before its id is handed out.
    pub async fn outbox_insert(
        &self,
        entry: &OutboxEntry,
        identifiers: &[[u8; 32]],
    ) -> Result<(), Error> {
        let key = entry.message_id.0.as_bytes();
        {
            let _guard = self.lock();
            self.put_sealed(&self.outbox, key, entry)?;
            self.outbox_queue.insert(key, &[])?;
            self.index_identifiers(&entry.case_ref, identifiers)?;
        }
        self.flush().await
    }

    /// An outbox entry.
    pub fn outbox_get(&self, id: &MessageId) -> Result<Option<OutboxEntry>, Error> {
        self.get_sealed(&self.outbox, id.0.as_bytes())
    }

    /// Every outbox entry, oldest first.
    pub fn outbox_all(&self) -> Result<Vec<OutboxEntry>, Error> {
        self.all_sealed(&self.outbox)
    }

    /// The entries still to submit, oldest first, at most `max`.
    pub fn outbox_queued(&self, max: usize) -> Result<Vec<OutboxEntry>, Error> {
        let mut out = Vec::new();
        for k in self.outbox_queue.iter().keys().take(max) {
            let k = k?;
            match self.get_sealed::<OutboxEntry>(&self.outbox, &k)? {
                Some(e) => out.push(e),
                None => {
                    self.outbox_queue.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// How many entries wait for submission.
    pub fn outbox_queued_len(&self) -> usize {
        self.outbox_queue.len()
    }

    /// Change an entry under the write lock; keeps the submission queue in step.
    pub fn outbox_update(
        &self,
        id: &MessageId,
        f: impl FnOnce(&mut OutboxEntry) -> bool,
    ) -> Result<Option<OutboxEntry>, Error> {
        let _guard = self.lock();
        let key = id.0.as_bytes();
        let Some(mut entry) = self.get_sealed::<OutboxEntry>(&self.outbox, key)? else {
            return Ok(None);
        };
        if !f(&mut entry) {
            return Ok(Some(entry));
        }
        self.put_sealed(&self.outbox, key, &entry)?;
        if entry.submission != Submission::Queued {
            self.outbox_queue.remove(key)?;
        }
        Ok(Some(entry))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry() -> OutboxEntry {
        OutboxEntry {
            message_id: MessageId::new(),
            kind: Kind::Signaal,
            case_ref: CaseRef::random(),
            purpose: "uitstroom".into(),
            created_at: Utc::now(),
            submission: Submission::Queued,
            recipients: vec![
                RecipientState {
                    oin: "00000001000000000001".parse().unwrap(),
                    role: Role::new("gemeente"),
                    body_sha256: "a".repeat(64),
                    delivered_at: None,
                    expired_at: None,
                },
                RecipientState {
                    oin: "00000001000000000002".parse().unwrap(),
                    role: Role::new("woningcorporatie"),
                    body_sha256: "b".repeat(64),
                    delivered_at: None,
                    expired_at: None,
                },
            ],
            attempts: 0,
            last_error: None,
            overdue: vec![],
            envelope: Some("AAAA".into()),
            reseal: None,
        }
    }

    #[test]
    fn status_follows_submission_and_recipients() {
        let now = Utc::now();
        let mut e = entry();
        assert_eq!(e.status(), Status::Queued);
        assert!(!e.answered(SubmitAnswer::Failed("down".into()), now));
        assert_eq!(e.status(), Status::Queued);
        assert!(e.envelope.is_some());
        assert!(e.answered(SubmitAnswer::Accepted(vec![]), now));
        assert_eq!(e.status(), Status::Accepted);
        assert!(e.envelope.is_none());
        e.recipients[0].delivered_at = Some(now);
        assert_eq!(e.status(), Status::Accepted);
        e.recipients[1].expired_at = Some(now);
        assert_eq!(e.status(), Status::Expired);
        e.recipients[1].delivered_at = Some(now);
        assert_eq!(e.status(), Status::Delivered);
    }

    #[test]
    fn replay_of_our_own_id_means_accepted_earlier() {
        let mut e = entry();
        assert!(e.answered(
            SubmitAnswer::Rejected(Rejection::new(RejectCode::Replay, "seen")),
            Utc::now()
        ));
        assert!(matches!(
            &e.submission,
            Submission::Accepted { flags, .. } if flags == &vec![AcceptFlag::Duplicate]
        ));
        let mut e = entry();
        assert!(!e.answered(
            SubmitAnswer::Rejected(Rejection::new(RejectCode::Storage, "disk")),
            Utc::now()
        ));
        assert_eq!(e.status(), Status::Queued);
        assert!(e.answered(
            SubmitAnswer::Rejected(Rejection::new(RejectCode::NoConsent, "none")),
            Utc::now()
        ));
        assert_eq!(e.status(), Status::Rejected);
    }
}
