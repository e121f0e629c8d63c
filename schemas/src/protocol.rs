//! The broker protocol, version 1: framed requests and responses on QUIC streams.
//!
//! Every request opens its own bidirectional stream: the client writes one request frame
//! and finishes its side; the broker answers with one response frame and finishes. A
//! stream therefore needs no length prefix; both sides read to the end with a bound
//! ([`MAX_REQUEST`], [`MAX_RESPONSE`]). A fetch may wait (long poll) before answering.
//!
//! A frame is `version (u8) ‖ type (u8) ‖ body`. The body of a `Submit` is the raw
//! envelope ([`crate::envelope`]); every other body is JSON.
//!
//! | type | request | body | answered by |
//! |---|---|---|---|
//! | 0x01 | `Submit` | envelope bytes | `Accepted` or `Rejected` |
//! | 0x02 | `Fetch` | `{max, wait_ms}` | `Deliveries` |
//! | 0x03 | `Receipt` | signed `delivery_receipt` | `Done` or `Rejected` |
//! | 0x04 | `Control` | signed consent, withdrawal, case change, deletion confirmation | `Done` or `Rejected` |
//! | 0x05 | `Ack` | `{up_to}` of notices | `Done` |
//! | 0x06 | `GetDocuments` | `{}` | `Documents` |
//! | 0x07 | `GetCheckpoint` | `{}` | `Checkpoint` |
//! | 0x08 | `ProveExtends` | `{seq, hash}` | `Extends` |
//! | 0x09 | `FgRead` | `{report, format, filter}`: an FG's report, over an FG certificate only | `FgReport` or `Rejected` |
//! | 0x0a | `AccessFacts` | [`AccessQuery`]: the facts of a data subject's cases (AVG art. 15), recorded with the request's term | `AccessFacts` or `Rejected` |
//! | 0x0b | `Receipts` | `{receipts: [signed delivery_receipt]}`, 1 to [`MAX_RECEIPTS`] | `Receipted` |
//!
//! | type | response | body |
//! |---|---|---|
//! | 0x81 | `Accepted` | `{message_id, flags}` |
//! | 0x82 | `Rejected` | `{code, check, reason}` |
//! | 0x83 | `Deliveries` | `{items: [message or notice]}` |
//! | 0x84 | `Documents` | signed policy and directory |
//! | 0x85 | `Checkpoint` | the broker's latest signed audit checkpoint |
//! | 0x86 | `Done` | `{}` |
//! | 0x87 | `Extends` | `{extends}` |
//! | 0x88 | `FgReport` | `{content_type, body}`: the report as the FG asked for it |
//! | 0x89 | `AccessFacts` | [`AccessFacts`]: per case the parties, flows, categories, purpose, legal basis, retention |
//! | 0x8a | `Receipted` | `{outcomes: [done, {rejected: {code, check, reason}} or {error: {code, message}}]}`: one per receipt, in order |
//! | 0x8f | `Error` | `{code, message}`: a request the broker could not handle |
//!
//! `Receipts` carries the receipts of several delivered messages in one request: each is
//! checked and applied exactly as a lone `Receipt` would be, and answered on its own
//! ([`ReceiptOutcome`]); one refused receipt refuses none of the others.
//!
//! A breach notice (`datalek_melding`) is routed by the broker to exactly the parties that
//! exchanged messages about the affected cases in its window. The sender seals it to the
//! recipients it expects; when they are not that set, the broker answers `Rejected` with
//! code `breach_recipients` and the set in the reason, which
//! [`Rejection::expected_recipients`] reads back, and the agent reseals to it. No extra
//! frame is needed. A `correctie` is routed and resealed the same way, to the parties of
//! the messages it corrects.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::control::SignedRecord;
use crate::ids::{MessageId, Oin};
use crate::policy::Role;
use crate::rights::{AccessFacts, AccessQuery};
use crate::Error;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// The ALPN id negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"ketenpost/1";
/// Largest request frame (an envelope plus framing).
pub const MAX_REQUEST: usize = 17 * 1024 * 1024;

/// Most queue positions a fetch may name in its `skip`.
pub const MAX_FETCH_SKIP: usize = 4096;
/// Most receipts one `Receipts` request may carry (as many as one fetch may deliver).
pub const MAX_RECEIPTS: usize = 256;
/// Largest response frame (a batch of deliveries).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Why the broker refused a message or record. Each code belongs to one of the checks of
/// DESIGN.md, in order; [`RejectCode::check`] gives its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The frame or envelope could not be decoded, or is over a size limit.
    Malformed,
    /// The header sender is not the OIN of the connection's client certificate.
    TransportIdentity,
    /// The sender is not in the directory, or is revoked.
    UnknownSender,
    /// The header signature does not verify with the sender's directory key.
    BadSignature,
    /// A body does not match its digest in the header.
    DigestMismatch,
    /// The message id was seen before (replay or duplicate).
    Replay,
    /// The message is for another covenant.
    WrongCovenant,
    /// The purpose does not exist in the policy.
    UnknownPurpose,
    /// The purpose does not allow this kind.
    KindNotAllowed,
    /// The sender's role may not send this kind.
    SenderRoleNotAllowed,
    /// The case does not exist.
    UnknownCase,
    /// The case is closed.
    CaseClosed,
    /// The case's current phase does not allow this kind (e.g. an aanmelding during the
    /// waakvlam).
    KindNotInPhase,
    /// The message's purpose is not the purpose of its case (purpose binding).
    WrongPurpose,
    /// A recipient (or the sender) is not in the case team.
    NotInCaseTeam,
    /// A recipient's role may not receive this kind.
    RecipientRoleNotAllowed,
    /// A breach notice (datalek_melding) is not addressed to exactly the parties that
    /// exchanged messages about the affected cases in its window, or a correctie not to
    /// exactly the parties of the messages it corrects; the rejection carries the set it
    /// must go to ([`Rejection::expected_recipients`]).
    BreachRecipients,
    /// A body's view is not the recipient's role, or grants other categories.
    ViewMismatch,
    /// Consent is required and the message names none, or one the broker does not know.
    NoConsent,
    /// The named consent was withdrawn.
    ConsentWithdrawn,
    /// The named consent is not valid at this time.
    ConsentNotValid,
    /// The consent does not cover this sender, recipient, case or purpose.
    ConsentScope,
    /// The named ground is not allowed for this kind, or its justification code is not one
    /// the covenant allows with it.
    GroundNotAllowed,
    /// The kind's legal basis does not fit (e.g. a consent-free kind sent "under consent").
    LegalBasisMismatch,
    /// The message's answer request does not fit the policy: its kind carries none
    /// (`answer_request_max` unset), its due date is not after the message's creation or
    /// lies beyond the policy's bound, or it names a role no recipient receives in.
    AnswerRequestNotAllowed,
    /// The party may not perform this operation (case management, consent registration).
    NotPermitted,
    /// The record is inconsistent with the broker's registries.
    Conflict,
    /// The broker could not store the message; nothing was accepted.
    Storage,
    /// The sending party is over one of its limits at the broker (connections, requests in
    /// flight, buffered bytes); nothing was accepted. Try again later, with fewer at once.
    OverLimit,
}

impl RejectCode {
    /// The number of the check (1-8 of DESIGN.md) the code belongs to; 0 for decoding and
    /// operations that are not message submissions.
    pub fn check(self) -> u8 {
        use RejectCode::*;
        match self {
            Malformed | NotPermitted | Conflict | OverLimit => 0,
            TransportIdentity | UnknownSender => 1,
            BadSignature | DigestMismatch => 2,
            Replay => 3,
            WrongCovenant | UnknownPurpose | KindNotAllowed | SenderRoleNotAllowed => 4,
            UnknownCase
            | CaseClosed
            | KindNotInPhase
            | WrongPurpose
            | NotInCaseTeam
            | RecipientRoleNotAllowed
            | ViewMismatch
            | BreachRecipients => 5,
            NoConsent | ConsentWithdrawn | ConsentNotValid | ConsentScope | GroundNotAllowed
            | LegalBasisMismatch => 6,
            AnswerRequestNotAllowed => 7,
            Storage => 8,
        }
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        // The serde names; a test checks that they agree.
        use RejectCode::*;
        match self {
            Malformed => "malformed",
            TransportIdentity => "transport_identity",
            UnknownSender => "unknown_sender",
            BadSignature => "bad_signature",
            DigestMismatch => "digest_mismatch",
            Replay => "replay",
            WrongCovenant => "wrong_covenant",
            UnknownPurpose => "unknown_purpose",
            KindNotAllowed => "kind_not_allowed",
            SenderRoleNotAllowed => "sender_role_not_allowed",
            UnknownCase => "unknown_case",
            CaseClosed => "case_closed",
            KindNotInPhase => "kind_not_in_phase",
            WrongPurpose => "wrong_purpose",
            NotInCaseTeam => "not_in_case_team",
            RecipientRoleNotAllowed => "recipient_role_not_allowed",
            BreachRecipients => "breach_recipients",
            ViewMismatch => "view_mismatch",
            NoConsent => "no_consent",
            ConsentWithdrawn => "consent_withdrawn",
            ConsentNotValid => "consent_not_valid",
            ConsentScope => "consent_scope",
            GroundNotAllowed => "ground_not_allowed",
            LegalBasisMismatch => "legal_basis_mismatch",
            AnswerRequestNotAllowed => "answer_request_not_allowed",
            NotPermitted => "not_permitted",
            Conflict => "conflict",
            Storage => "storage",
            OverLimit => "over_limit",
        }
    }

    /// Whether the refusal says nothing about the message itself, so that the same
    /// submission may succeed later (the broker's storage failed, or the sender was over
    /// a limit). Every other code is final for that message.
    pub fn is_transient(self) -> bool {
        matches!(self, RejectCode::Storage | RejectCode::OverLimit)
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the code, the check it failed and a readable reason (no personal data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    /// The code.
    pub code: RejectCode,
    /// The check (1-8) it failed.
    pub check: u8,
    /// What was wrong or missing, in words.
    pub reason: String,
}

impl Rejection {
    /// A rejection with its check number filled in.
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            check: code.check(),
            reason: reason.into(),
        }
    }
}

/// Where the machine-readable recipient list starts in a `breach_recipients` reason.
const EXPECTED_MARKER: &str = "expected=";

impl Rejection {
    /// The refusal of a breach notice that is not addressed to `expected`, the recipients
    /// the broker resolved (OIN and the role each receives in). The reason ends in
    /// `expected=` and a JSON list of `[oin, role]` pairs, which
    /// [`expected_recipients`](Self::expected_recipients) reads back, so the agent can
    /// reseal to exactly that set.
    pub fn breach_recipients(expected: &[(Oin, Role)]) -> Self {
        let list = serde_json::to_string(expected).unwrap_or_else(|_| "[]".into());
        let lead = if expected.is_empty() {
            "no party other than the sender exchanged messages about the affected cases in \
             the breach window, so there is nobody to route this breach notice to"
        } else {
            "a breach notice goes to exactly the parties that exchanged messages about the \
             affected cases in its window; seal it to these recipients"
        };
        Rejection::new(
            RejectCode::BreachRecipients,
            format!("{lead}; {EXPECTED_MARKER}{list}"),
        )
    }

    /// The recipients a `breach_recipients` refusal asks for; `None` for any other
    /// rejection.
    pub fn expected_recipients(&self) -> Option<Vec<(Oin, Role)>> {
        if self.code != RejectCode::BreachRecipients {
            return None;
        }
        let (_, list) = self.reason.rsplit_once(EXPECTED_MARKER)?;
        serde_json::from_str(list).ok()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (check {}): {}", self.code, self.check, self.reason)
    }
}

/// Something the broker noted about an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AcceptFlag {
    /// It arrived after its `send_within` deadline.
    Late,
    /// It was sent under a named ground (instead of consent, or outside the ordinary
    /// course of its basis); a flagged ground alerts the FGs.
    NonConsentGround,
    /// It was already accepted before (an idempotent resubmission).
    Duplicate,
    /// It answers a message (`in_reply_to`, an answer kind, from a party that owed the
    /// answer) after that party's answer deadline; the FG's deadline report shows it as
    /// `answer_late`.
    LateAnswer,
}

/// One item of a fetch: a message for me, or a notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Delivery {
    /// A message addressed to me: the whole envelope, base64.
    Message {
        /// Queue position; the receipt removes it.
        seq: u64,
        /// The envelope, base64.
        envelope: String,
    },
    /// A notice: a receipt forwarded from a recipient of mine, an expiry or deadline
    /// notice, or a deletion order. Acknowledged with `Ack { up_to: seq }`.
    Notice {
        /// Queue position.
        seq: u64,
        /// The signed record.
        record: SignedRecord,
    },
}

/// The signed documents of the federation, as the broker serves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Documents {
    /// The policy TOML, exact bytes.
    pub policy: String,
    /// Its federation signature.
    pub policy_sig: String,
    /// The directory JSON, exact bytes.
    pub directory: String,
    /// Its federation signature.
    pub directory_sig: String,
}

/// A signed audit checkpoint as served to agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointWire {
    /// Sequence number of the last record covered.
    pub seq: u64,
    /// Hash of that record.
    pub head_hash: String,
    /// When the checkpoint was made (RFC 3339).
    pub time: String,
    /// Broker signature (base64).
    pub signature: String,
}

/// A request from an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Submit a sealed envelope.
    Submit(Vec<u8>),
    /// Fetch deliveries, waiting up to `wait_ms` when there are none.
    Fetch {
        /// Most items to return.
        max: u16,
        /// How long to wait for the first item.
        wait_ms: u32,
        /// Queue positions (`Delivery::Message::seq`) of messages the caller holds already
        /// and is still receipting: they are left out, so a recipient can long-poll for new
        /// messages while its receipts for the last ones are on their way. A message left
        /// out stays queued until receipted; a fetch that does not name it delivers it
        /// again. At most [`MAX_FETCH_SKIP`]; empty on the wire is the same as absent.
        skip: Vec<u64>,
    },
    /// A signed delivery receipt.
    Receipt(SignedRecord),
    /// The signed delivery receipts of several messages (1 to [`MAX_RECEIPTS`]), each
    /// checked and answered as a lone `Receipt` would be.
    Receipts(Vec<SignedRecord>),
    /// A signed control record.
    Control(SignedRecord),
    /// Acknowledge notices up to and including `up_to`.
    Ack {
        /// Last notice sequence number handled.
        up_to: u64,
    },
    /// Ask for the signed policy and directory.
    GetDocuments,
    /// Ask for the latest audit checkpoint.
    GetCheckpoint,
    /// Ask whether the audit record `seq` still has `hash`.
    ProveExtends {
        /// Sequence number of an earlier checkpoint.
        seq: u64,
        /// Its head hash.
        hash: String,
    },
    /// An FG reads a report of the running broker. Only a connection with an FG
    /// certificate the directory lists is answered; the report is scoped to that FG.
    FgRead(FgQuery),
    /// A case manager's agent asks for the facts of a data subject's cases (AVG art. 15);
    /// answered only for cases the party is or was a member of.
    AccessFacts(AccessQuery),
}

/// What an FG asks the broker for: a report, its format, and filters over the trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgQuery {
    /// The report: `flows`, `refusals`, `grounds`, `deadlines`, `breaches`, `consents`,
    /// `deletions`, `access`, `records` or `html`.
    pub report: String,
    /// `text`, `json`, `csv`, `jsonl` (records) or `html`; the report's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Only records from this time on (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Only records before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only records naming this party (OIN) as actor or counterparty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party: Option<String>,
    /// Only records about this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<String>,
    /// Only records under this purpose or processing activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Only records of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only records with this outcome: `ok`, `refused` or `flagged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Agents' exported trails (`ketenpost-agent audit export`, JSON lines) to merge into
    /// the report: the broker verifies each hash chain whole and adds only what its own
    /// trail cannot hold (early and delivery refusals), for an organisation's FG only its
    /// own organisation's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_trails: Vec<String>,
}

/// An FG's report as the broker rendered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgReport {
    /// `text/plain`, `application/json`, `text/csv`, `application/jsonl` or `text/html`.
    pub content_type: String,
    /// The report.
    pub body: String,
}

/// The broker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The message is stored durably and will be delivered.
    Accepted {
        /// Its id.
        message_id: MessageId,
        /// What the broker noted.
        flags: Vec<AcceptFlag>,
    },
    /// Refused; nothing was queued.
    Rejected(Rejection),
    /// Deliveries, possibly none.
    Deliveries(Vec<Delivery>),
    /// The signed documents.
    Documents(Documents),
    /// The latest checkpoint, if any.
    Checkpoint(Option<CheckpointWire>),
    /// An FG's report.
    FgReport(FgReport),
    /// The facts of a data subject's cases.
    AccessFacts(AccessFacts),
    /// Done.
    Done,
    /// Whether the trail still extends the given checkpoint.
    Extends(bool),
    /// The outcome of each receipt of a `Receipts` request, in its order.
    Receipted(Vec<ReceiptOutcome>),
    /// The request could not be handled.
    Error {
        /// A short code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

/// What became of one receipt of a `Receipts` request: what a lone `Receipt` would have
/// been answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// Taken and durable (`Done`): the message is no longer queued for the recipient.
    Done,
    /// Refused (`Rejected`); nothing changed for that message.
    Rejected(Rejection),
    /// The broker could not handle it (`Error`, e.g. storage); sending it again is safe.
    Error {
        /// A short code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

impl ReceiptOutcome {
    /// The outcome a lone `Receipt`'s answer stands for; any answer a receipt cannot
    /// have is an error.
    pub fn of(answer: Response) -> ReceiptOutcome {
        match answer {
            Response::Done => ReceiptOutcome::Done,
            Response::Rejected(r) => ReceiptOutcome::Rejected(r),
            Response::Error { code, message } => ReceiptOutcome::Error { code, message },
            other => ReceiptOutcome::Error {
                code: "internal".into(),
                message: format!("a receipt was answered {}", other.name()),
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ReceiptsBody {
    receipts: Vec<SignedRecord>,
}

#[derive(Serialize, Deserialize)]
struct ReceiptedBody {
    outcomes: Vec<ReceiptOutcome>,
}

#[derive(Serialize, Deserialize)]
struct FetchBody {
    max: u16,
    wait_ms: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skip: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct AckBody {
    up_to: u64,
}

#[derive(Serialize, Deserialize)]
struct ProveBody {
    seq: u64,
    hash: String,
}

#[derive(Serialize, Deserialize)]
struct AcceptedBody {
    message_id: MessageId,
    flags: Vec<AcceptFlag>,
}

#[derive(Serialize, Deserialize)]
struct DeliveriesBody {
    items: Vec<Delivery>,
}

#[derive(Serialize, Deserialize)]
struct ExtendsBody {
    extends: bool,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.push(PROTOCOL_VERSION);
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn json_frame<T: Serialize>(kind: u8, body: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail; an empty body would be refused by the
    // peer, which is the safe outcome.
    frame(kind, &serde_json::to_vec(body).unwrap_or_default())
}

/// The head of every frame: the protocol version and the frame kind.
pub const FRAME_HEAD: usize = 2;

/// The largest `FgRead` frame: room for the agents' trails an FG brings.
pub const FG_READ_MAX: usize = 16 * 1024 * 1024;

/// The largest frame of one signed receipt.
const RECEIPT_BOUND: usize = 8 * 1024;

/// The largest frame a request of kind byte `kind` may be, when envelopes may be
/// `max_envelope` bytes; `None` for a kind that does not exist. Only a submission carries
/// an envelope, and an FG's read the trails it brings; every other request is a small JSON
/// body, and the broker reads no more of it than this.
pub fn request_bound(kind: u8, max_envelope: usize) -> Option<usize> {
    Some(match kind {
        0x01 => FRAME_HEAD.saturating_add(max_envelope),
        // A signed control record: a consent names a few parties and purposes.
        0x04 => 64 * 1024,
        // A signed receipt: ids, digests and a signature.
        0x03 => RECEIPT_BOUND,
        // Up to MAX_RECEIPTS of them.
        0x0b => 1024 + MAX_RECEIPTS * (RECEIPT_BOUND + 16),
        // A fetch: two numbers, and the queue positions it skips (each at most 20 digits
        // and a comma).
        0x02 => 1024 + MAX_FETCH_SKIP * 21,
        0x05..=0x08 => 1024,
        // An FG's report request: a report name, a format, a few filter values and the
        // agents' trails the FG brings to merge.
        0x09 => FG_READ_MAX,
        // An access query: a request id, a day and at most MAX_ACCESS_CASES case refs.
        0x0a => 64 * 1024,
        _ => return None,
    })
}

fn split(bytes: &[u8], limit: usize) -> Result<(u8, &[u8]), Error> {
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            what: "frame",
            size: bytes.len(),
            limit,
        });
    }
    match bytes {
        [v, kind, body @ ..] if *v == PROTOCOL_VERSION => Ok((*kind, body)),
        [v, ..] => Err(Error::Decode(format!(
            "protocol version {v} is not supported (expected {PROTOCOL_VERSION})"
        ))),
        _ => Err(Error::Decode(
            "frame is shorter than its 2-byte head".into(),
        )),
    }
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

impl Request {
    /// Encode as a frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Submit(env) => frame(0x01, env),
            Request::Fetch { max, wait_ms, skip } => json_frame(
                0x02,
                &FetchBody {
                    max: *max,
                    wait_ms: *wait_ms,
                    skip: skip.clone(),
                },
            ),
            Request::Receipt(r) => json_frame(0x03, r),
            Request::Receipts(rs) => json_frame(
                0x0b,
                &ReceiptsBody {
                    receipts: rs.clone(),
                },
            ),
            Request::Control(r) => json_frame(0x04, r),
            Request::Ack { up_to } => json_frame(0x05, &AckBody { up_to: *up_to }),
            Request::GetDocuments => frame(0x06, b"{}"),
            Request::FgRead(q) => json_frame(0x09, q),
            Request::AccessFacts(q) => json_frame(0x0a, q),
            Request::GetCheckpoint => frame(0x07, b"{}"),
            Request::ProveExtends { seq, hash } => json_frame(
                0x08,
                &ProveBody {
                    seq: *seq,
                    hash: hash.clone(),
                },
            ),
        }
    }

    /// Decode a frame. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Request, Error> {
        let (kind, body) = split(bytes, MAX_REQUEST)?;
        Ok(match kind {
            0x01 => Request::Submit(body.to_vec()),
            0x02 => {
                let b: FetchBody = json(body, "fetch")?;
                if b.skip.len() > MAX_FETCH_SKIP {
                    return Err(Error::Decode(format!(
                        "fetch: skip names {} queue positions, at most {MAX_FETCH_SKIP} are allowed",
                        b.skip.len()
                    )));
                }
                Request::Fetch {
                    max: b.max,
                    wait_ms: b.wait_ms,
                    skip: b.skip,
                }
            }
            0x03 => Request::Receipt(json(body, "receipt")?),
            0x0b => {
                let b: ReceiptsBody = json(body, "receipts")?;
                if b.receipts.is_empty() || b.receipts.len() > MAX_RECEIPTS {
                    return Err(Error::Decode(format!(
                        "receipts: {} receipts, 1 to {MAX_RECEIPTS} are allowed",
                        b.receipts.len()
                    )));
                }
                Request::Receipts(b.receipts)
            }
            0x04 => Request::Control(json(body, "control record")?),
            0x05 => Request::Ack {
                up_to: json::<AckBody>(body, "ack")?.up_to,
            },
            0x06 => Request::GetDocuments,
            0x09 => Request::FgRead(json(body, "fg read")?),
            0x0a => Request::AccessFacts(json(body, "access query")?),
            0x07 => Request::GetCheckpoint,
            0x08 => {
                let b: ProveBody = json(body, "prove")?;
                Request::ProveExtends {
                    seq: b.seq,
                    hash: b.hash,
                }
            }
            other => return Err(Error::Decode(format!("unknown request type 0x{other:02x}"))),
        })
    }
}

impl Response {
    /// The answer's name (snake_case), for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Accepted { .. } => "accepted",
            Response::Rejected(_) => "rejected",
            Response::Deliveries(_) => "deliveries",
            Response::Documents(_) => "documents",
            Response::Checkpoint(_) => "checkpoint",
            Response::Done => "done",
            Response::Extends(_) => "extends",
            Response::Receipted(_) => "receipted",
            Response::FgReport(_) => "fg_report",
            Response::AccessFacts(_) => "access_facts",
            Response::Error { .. } => "error",
        }
    }

    /// Encode as a frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Accepted { message_id, flags } => json_frame(
                0x81,
                &AcceptedBody {
                    message_id: *message_id,
                    flags: flags.clone(),
                },
            ),
            Response::Rejected(r) => json_frame(0x82, r),
            Response::Deliveries(items) => json_frame(
                0x83,
                &DeliveriesBody {
                    items: items.clone(),
                },
            ),
            Response::Documents(d) => json_frame(0x84, d),
            Response::Checkpoint(c) => json_frame(0x85, c),
            Response::Done => frame(0x86, b"{}"),
            Response::Extends(e) => json_frame(0x87, &ExtendsBody { extends: *e }),
            Response::Receipted(o) => json_frame(
                0x8a,
                &ReceiptedBody {
                    outcomes: o.clone(),
                },
            ),
            Response::FgReport(r) => json_frame(0x88, r),
            Response::AccessFacts(f) => json_frame(0x89, f),
            Response::Error { code, message } => json_frame(
                0x8f,
                &ErrorBody {
                    code: code.clone(),
                    message: message.clone(),
                },
            ),
        }
    }

    /// Decode a frame. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Response, Error> {
        let (kind, body) = split(bytes, MAX_RESPONSE)?;
        Ok(match kind {
            0x81 => {
                let b: AcceptedBody = json(body, "accepted")?;
                Response::Accepted {
                    message_id: b.message_id,
                    flags: b.flags,
                }
            }
            0x82 => Response::Rejected(json(body, "rejected")?),
            0x83 => Response::Deliveries(json::<DeliveriesBody>(body, "deliveries")?.items),
            0x84 => Response::Documents(json(body, "documents")?),
            0x85 => Response::Checkpoint(json(body, "checkpoint")?),
            0x86 => Response::Done,
            0x87 => Response::Extends(json::<ExtendsBody>(body, "extends")?.extends),
            0x8a => Response::Receipted(json::<ReceiptedBody>(body, "receipted")?.outcomes),
            0x88 => Response::FgReport(json(body, "fg report")?),
            0x89 => Response::AccessFacts(json(body, "access facts")?),
            0x8f => {
                let b: ErrorBody = json(body, "error")?;
                Response::Error {
                    code: b.code,
                    message: b.message,
                }
            }
            other => {
                return Err(Error::Decode(format!(
                    "unknown response type 0x{other:02x}"
                )))
            }
        })
    }
}

/// Base64 of an envelope for a [`Delivery::Message`].
pub fn envelope_to_b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The envelope bytes of a [`Delivery::Message`].
pub fn envelope_from_b64(text: &str) -> Result<Vec<u8>, Error> {
    B64.decode(text)
        .map_err(|_| Error::Decode("delivery envelope is not base64".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let reqs = [
            Request::Submit(vec![1, 2, 3]),
            Request::Fetch {
                max: 10,
                wait_ms: 500,
                skip: Vec::new(),
            },
            Request::Fetch {
                max: 1,
                wait_ms: 0,
                skip: vec![3, 17, u64::MAX],
            },
            Request::Ack { up_to: 7 },
            Request::GetDocuments,
            Request::GetCheckpoint,
            Request::ProveExtends {
                seq: 3,
                hash: "ab".into(),
            },
            Request::AccessFacts(AccessQuery {
                request_id: uuid::Uuid::from_u128(7),
                received_on: chrono::NaiveDate::from_ymd_opt(2026, 1, 31).unwrap(),
                case_refs: (0..crate::rights::MAX_ACCESS_CASES)
                    .map(|_| crate::ids::CaseRef::random())
                    .collect(),
                answered_at: None,
            }),
        ];
        for r in reqs {
            let bytes = r.encode();
            assert_eq!(Request::decode(&bytes).unwrap(), r);
            let bound = request_bound(bytes[1], 1 << 20).expect("a known kind");
            assert!(bytes.len() <= bound, "{r:?} is over its frame bound");
        }
        assert_eq!(request_bound(0x99, 1 << 20), None);
        let resps = [
            Response::Accepted {
                message_id: MessageId::new(),
                flags: vec![AcceptFlag::Late],
            },
            Response::Rejected(Rejection::new(RejectCode::NotInCaseTeam, "x")),
            Response::Deliveries(vec![Delivery::Message {
                seq: 1,
                envelope: "AAAA".into(),
            }]),
            Response::Checkpoint(None),
            Response::Done,
            Response::Extends(true),
            Response::Receipted(vec![ReceiptOutcome::Done]),
            Response::Error {
                code: "busy".into(),
                message: "later".into(),
            },
        ];
        for r in resps {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn a_fetch_without_skip_is_the_older_frame_and_too_long_a_skip_is_refused() {
        // An older agent's fetch (no `skip`) decodes as skipping nothing, and a fetch that
        // skips nothing encodes as that frame.
        let old = json_frame(0x02, &serde_json::json!({"max": 5, "wait_ms": 100}));
        let fetch = Request::Fetch {
            max: 5,
            wait_ms: 100,
            skip: Vec::new(),
        };
        assert_eq!(Request::decode(&old).unwrap(), fetch);
        assert_eq!(fetch.encode(), old);
        let long = Request::Fetch {
            max: 5,
            wait_ms: 100,
            skip: (0..=MAX_FETCH_SKIP as u64).collect(),
        };
        // The longest fetch allowed fits its frame kind's bound.
        let full = Request::Fetch {
            max: u16::MAX,
            wait_ms: u32::MAX,
            skip: vec![u64::MAX; MAX_FETCH_SKIP],
        };
        assert!(full.encode().len() <= request_bound(0x02, 0).unwrap());
        assert_eq!(Request::decode(&full.encode()).unwrap(), full);
        match Request::decode(&long.encode()) {
            Err(Error::Decode(why)) => assert!(why.contains("at most 4096"), "{why}"),
            other => panic!(
                "a skip of {} positions was taken: {other:?}",
                MAX_FETCH_SKIP + 1
            ),
        }
    }

    fn receipt(i: u8) -> SignedRecord {
        let key = crate::keys::SigningKey::from_bytes(&[i; 32]);
        let receipt = crate::control::DeliveryReceipt {
            message_id: MessageId::new(),
            recipient: "00000001234567890000".parse().unwrap(),
            body_sha256: "ab".repeat(32),
            received_at: chrono::Utc::now(),
        };
        SignedRecord::sign(&receipt, receipt.recipient.clone(), &key).unwrap()
    }

    #[test]
    fn receipts_travel_together_within_their_bound_and_each_gets_its_outcome() {
        let full = Request::Receipts((0..MAX_RECEIPTS).map(|i| receipt(i as u8)).collect());
        let bytes = full.encode();
        assert_eq!(bytes[1], 0x0b);
        assert!(bytes.len() <= request_bound(0x0b, 0).unwrap());
        assert_eq!(Request::decode(&bytes).unwrap(), full);
        // None, or one too many, is refused with the reason.
        for n in [0, MAX_RECEIPTS + 1] {
            let frame = Request::Receipts((0..n).map(|i| receipt(i as u8)).collect()).encode();
            match Request::decode(&frame) {
                Err(Error::Decode(why)) => {
                    assert!(why.contains(&format!("{n} receipts, 1 to 256")), "{why}")
                }
                other => panic!("{n} receipts were taken: {other:?}"),
            }
        }
        let outcomes = vec![
            ReceiptOutcome::Done,
            ReceiptOutcome::Rejected(Rejection::new(RejectCode::Conflict, "taken before")),
            ReceiptOutcome::Error {
                code: "storage".into(),
                message: "later".into(),
            },
        ];
        let answer = Response::Receipted(outcomes.clone());
        let bytes = answer.encode();
        assert_eq!(Response::decode(&bytes).unwrap(), answer);
        // The wire shape the module's table documents.
        let body: serde_json::Value = serde_json::from_slice(&bytes[2..]).unwrap();
        assert_eq!(body["outcomes"][0], serde_json::json!("done"));
        assert_eq!(body["outcomes"][1]["rejected"]["code"], "conflict");
        assert_eq!(body["outcomes"][2]["error"]["code"], "storage");
        // Each outcome is what a lone receipt would have been answered.
        assert_eq!(ReceiptOutcome::of(Response::Done), outcomes[0]);
        assert_eq!(
            ReceiptOutcome::of(Response::Rejected(Rejection::new(
                RejectCode::Conflict,
                "taken before"
            ))),
            outcomes[1]
        );
        assert_eq!(
            ReceiptOutcome::of(Response::Error {
                code: "storage".into(),
                message: "later".into()
            }),
            outcomes[2]
        );
        assert!(matches!(
            ReceiptOutcome::of(Response::Extends(true)),
            ReceiptOutcome::Error { .. }
        ));
    }

    #[test]
    fn every_code_names_its_check() {
        assert_eq!(RejectCode::TransportIdentity.check(), 1);
        assert_eq!(RejectCode::BadSignature.check(), 2);
        assert_eq!(RejectCode::Replay.check(), 3);
        assert_eq!(RejectCode::SenderRoleNotAllowed.check(), 4);
        assert_eq!(RejectCode::NotInCaseTeam.check(), 5);
        assert_eq!(RejectCode::BreachRecipients.check(), 5);
        assert_eq!(
            serde_json::to_value(RejectCode::BreachRecipients).unwrap(),
            serde_json::json!(RejectCode::BreachRecipients.as_str())
        );
        assert_eq!(RejectCode::ConsentWithdrawn.check(), 6);
        assert_eq!(
            serde_json::to_value(RejectCode::WrongPurpose).unwrap(),
            serde_json::json!(RejectCode::WrongPurpose.as_str())
        );
        assert_eq!(RejectCode::AnswerRequestNotAllowed.check(), 7);
        assert_eq!(
            serde_json::to_value(RejectCode::AnswerRequestNotAllowed).unwrap(),
            serde_json::json!(RejectCode::AnswerRequestNotAllowed.as_str())
        );
        assert_eq!(
            serde_json::to_value(AcceptFlag::LateAnswer).unwrap(),
            serde_json::json!("late_answer")
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
