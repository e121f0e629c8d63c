//! The broker's decisions, as pure functions of (input, registries, policy, now).
//!
//! A submitted message goes through the checks of DESIGN.md in order. Its type records how
//! far it got: raw bytes from a connection are [`Submitted`]; once the envelope decodes,
//! the sender matches the transport identity and the signature and digests verify, it is a
//! [`VerifiedEnvelope`]; once purpose, need-to-know, legal basis and deadlines pass, it is
//! [`Authorised`]. Only an `Authorised` message can be stored (check 8, in the store).
//!
//! Control records (consent, case changes, deletion confirmations) and receipts are
//! decided here too. Nothing in this module does I/O or reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeletionConfirmation, DeletionReason, DeliveryReceipt, RecordParts,
    SignedRecord, Toestemming, ToestemmingIntrekking,
};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{
    AnswerRequest, Claimed, Envelope, Header, LegalBasis, Limits, VerifiedEnvelope,
};
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::keys::{self, VerifyingKey};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{phases, ConsentRule, Ground, Grounds, KindRule, Policy, Role};
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Rejection};
use ketenpost_schemas::Error as SchemaError;

use crate::breach::{self, Routing};
use crate::deadlines;
use crate::message::MessageMeta;
use crate::registry::{unknown, Case, Consent, Lookup, Registry};

/// What the checks need besides the registries.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// The covenant policy.
    pub policy: &'a Policy,
    /// The partner directory.
    pub directory: &'a Directory,
    /// Decoding limits.
    pub limits: &'a Limits,
    /// The parties' signing keys, parsed once ([`sender_keys`]); without it, or for a
    /// party missing from it, the key is parsed from the directory.
    pub keys: Option<&'a SenderKeys>,
    /// How far a header's `event_time` may lie ahead of `now` (the parties' clocks drift);
    /// a later one is refused as `malformed`. [`DEFAULT_CLOCK_SKEW`] unless configured.
    pub max_clock_skew: chrono::Duration,
    /// How check 2 verifies the header signature: [`keys::Strict`] one at a time, or a
    /// broker's batching verifier, with the same verdict.
    pub signatures: &'a dyn keys::SignatureCheck,
}

/// The default for [`Env::max_clock_skew`]: five minutes.
pub const DEFAULT_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// The verifying keys of the directory's parties, by OIN.
pub type SenderKeys = std::collections::HashMap<Oin, PartyKeys>;

/// A party's parsed keys: the current one, and the previous ones with the end of their
/// rotation overlap.
#[derive(Debug, Clone)]
pub struct PartyKeys {
    current: VerifyingKey,
    previous: Vec<(VerifyingKey, DateTime<Utc>)>,
}

impl PartyKeys {
    /// The keys a signature of the party may verify with at `now`, the current one first.
    pub fn valid_at(&self, now: DateTime<Utc>) -> Vec<VerifyingKey> {
        std::iter::once(self.current)
            .chain(
                self.previous
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(k, _)| *k),
            )
            .collect()
    }
}

/// Parse every party's signing keys once. A key that does not parse is left out (the
/// check then reports it for messages from that party).
pub fn sender_keys(directory: &Directory) -> SenderKeys {
    directory
        .parties
        .iter()
        .filter_map(|p| {
            let current = p.verifying_key().ok()?;
            let previous = p
                .previous_keys
                .iter()
                .filter_map(|k| {
                    let key = ketenpost_schemas::keys::verifying_key_from_text(&k.signing_key);
                    Some((key.ok()?, k.valid_until))
                })
                .collect();
            Some((p.oin.clone(), PartyKeys { current, previous }))
        })
        .collect()
}

/// A message as it arrived: the bytes and the OIN of the connection's certificate.
#[derive(Debug, Clone, Copy)]
pub struct Submitted<'a> {
    /// The OIN in the client certificate of the connection.
    pub transport: &'a Oin,
    /// The envelope bytes.
    pub bytes: &'a [u8],
}

/// A message that passed checks 1 to 7 and may be stored: the proof of those checks.
/// Only [`check_message`] makes one (its fields are private), so nothing can store a
/// message the checks did not pass.
#[derive(Debug, Clone)]
pub struct Authorised {
    verified: VerifiedEnvelope,
    decision: Decision,
}

impl Authorised {
    /// The verified header.
    pub fn header(&self) -> &Header {
        self.verified.header()
    }

    /// The verified envelope.
    pub fn verified(&self) -> &VerifiedEnvelope {
        &self.verified
    }

    /// The processing activity of its purpose (for the audit trail).
    pub fn processing_activity(&self) -> &str {
        &self.decision.processing_activity
    }

    /// The recipients with their role in the case.
    pub fn recipients(&self) -> &[(Oin, Role)] {
        &self.decision.recipients
    }

    /// What the broker noted: late, non-consent ground.
    pub fn flags(&self) -> &[AcceptFlag] {
        &self.decision.flags
    }

    /// The named ground the message was sent on, if any.
    pub fn ground(&self) -> Option<&Ground> {
        self.decision.ground.as_ref()
    }

    /// Whether the ground it was sent on alerts the FGs (the policy flags it); `false`
    /// without a ground.
    pub fn ground_alerts_fg(&self) -> bool {
        self.decision.ground_alerts_fg
    }

    /// The `send_within` deadline, if the kind has one.
    pub fn send_deadline(&self) -> Option<DateTime<Utc>> {
        self.decision.send_deadline
    }

    /// When an undelivered body expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.decision.expires_at
    }

    /// For a breach notice: the cases it concerns and the recipients the broker resolved
    /// from its flow history ([`crate::breach`]).
    pub fn breach(&self) -> Option<&Routing> {
        self.decision.breach.as_ref()
    }
}

impl MessageMeta {
    /// The metadata of an authorised message accepted at `now`, before anything fetched or
    /// receipted it.
    pub fn accepted(a: &Authorised, now: DateTime<Utc>) -> MessageMeta {
        let h = a.header();
        let recipients: std::collections::BTreeSet<Oin> =
            a.recipients().iter().map(|(o, _)| o.clone()).collect();
        // Each recipient's view is the first body that names it (`Header::body_for`).
        let mut views = std::collections::BTreeMap::new();
        for (i, body) in h.bodies.iter().enumerate() {
            let Ok(index) = u16::try_from(i) else { break };
            for r in body.recipients.iter().filter(|r| recipients.contains(*r)) {
                views
                    .entry(r.clone())
                    .or_insert_with(|| crate::message::View {
                        index,
                        sha256: body.sha256.clone(),
                    });
            }
        }
        MessageMeta {
            id: h.id,
            sender: h.sender.clone(),
            case_ref: h.case_ref.clone(),
            purpose: h.purpose.clone(),
            kind: h.kind,
            accepted_at: now,
            expires_at: a.expires_at(),
            pending: recipients.clone(),
            fetched: std::collections::BTreeSet::new(),
            recipients,
            trace_id: h.trace_id.to_string(),
            body_at: None,
            queue_seqs: std::collections::BTreeMap::new(),
            views,
        }
    }
}

fn reject(code: RejectCode, reason: impl Into<String>) -> Rejection {
    Rejection::new(code, reason)
}

fn from_schema(e: SchemaError) -> Rejection {
    match e {
        SchemaError::BadSignature(_) => reject(
            RejectCode::BadSignature,
            "the header signature does not verify with the sender's directory key",
        ),
        SchemaError::DigestMismatch { index } => reject(
            RejectCode::DigestMismatch,
            format!("body {index} does not match its digest in the header"),
        ),
        SchemaError::UnknownSender(oin) => reject(
            RejectCode::UnknownSender,
            format!("sender {oin} is not an active party in the directory"),
        ),
        SchemaError::TooLarge { what, size, limit } => reject(
            RejectCode::Malformed,
            format!("{what} is {size} bytes, over the limit of {limit}"),
        ),
        other => reject(RejectCode::Malformed, other.to_string()),
    }
}

/// Checks 1-7 for a submitted message. The caller does check 8 (durable write, audit).
///
/// [`check_message_facts`] also says what of the refused message is verified.
pub fn check_message(
    sub: Submitted<'_>,
    env: Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Authorised, Rejection> {
    check_message_facts(sub, env, reg, now).map_err(|r| r.rejection)
}

/// Why a message was refused, and its header when its signature verified (checks 1-2
/// passed). Only then may an audit record name what the header says: before that, case,
/// kind and recipients are the unsigned claims of whoever holds a connection.
#[derive(Debug)]
pub struct Refusal {
    /// The refusal.
    pub rejection: Rejection,
    /// The verified header; `None` when the message failed before its signature verified.
    pub verified: Option<Box<Header>>,
}

/// [`check_message`], keeping the verified header of a refused message.
pub fn check_message_facts(
    sub: Submitted<'_>,
    env: Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Authorised, Refusal> {
    let verified = authenticate(sub, &env, now).map_err(|rejection| Refusal {
        rejection,
        verified: None,
    })?;
    finish(verified, &env, reg, now)
}

/// Checks 3-7 over an authenticated message, keeping its header when refused.
fn finish(
    verified: VerifiedEnvelope,
    env: &Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Authorised, Refusal> {
    match decide(verified.header(), env, reg, now) {
        Ok(decision) => Ok(Authorised { verified, decision }),
        Err(rejection) => Err(Refusal {
            rejection,
            verified: Some(Box::new(verified.header().clone())),
        }),
    }
}

/// What checks 3-7 decided about an authenticated message.
#[derive(Debug, Clone)]
struct Decision {
    processing_activity: String,
    recipients: Vec<(Oin, Role)>,
    flags: Vec<AcceptFlag>,
    ground: Option<Ground>,
    ground_alerts_fg: bool,
    send_deadline: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    breach: Option<Routing>,
}

/// A submission past check 1: it decodes, the connection's party is the header's sender
/// and an active party. What check 2 must verify is in it ([`Claim::signed`]); a caller
/// may verify many claims' signatures at once and then finish each with
/// [`check_claim`], its verdicts given as `env.signatures`.
#[derive(Debug, Clone)]
pub struct Claim {
    envelope: Claimed,
    keys: Vec<VerifyingKey>,
}

impl Claim {
    /// The signature check 2 verifies: the header bytes framed as signed, the signature,
    /// and the sender's keys valid now (any one of them must verify it).
    pub fn signed(&self) -> (Vec<u8>, keys::Signature, &[VerifyingKey]) {
        let (bytes, signature) = self.envelope.signed();
        (
            keys::framed(keys::Context::Header, bytes),
            signature,
            &self.keys,
        )
    }
}

/// Check 1 of a submission (see [`Claim`]).
pub fn claim(sub: Submitted<'_>, env: &Env<'_>, now: DateTime<Utc>) -> Result<Claim, Rejection> {
    // 1. Transport identity = header sender; sender known and not revoked.
    let envelope = Envelope::decode(sub.bytes, env.limits).map_err(from_schema)?;
    let envelope = envelope.into_claimed().map_err(from_schema)?;
    let claimed = envelope.unverified_header();
    if &claimed.sender != sub.transport {
        return Err(reject(
            RejectCode::TransportIdentity,
            format!(
                "the header names sender {}, the connection's certificate is {}",
                claimed.sender, sub.transport
            ),
        ));
    }
    let sender = active_sender(env.directory, &claimed.sender)?;
    let keys = party_keys(sender, *env, now)?;
    Ok(Claim { envelope, keys })
}

/// Checks 2-7 of a claimed submission: [`check_message_facts`] after [`claim`].
pub fn check_claim(
    claim: Claim,
    env: Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Authorised, Refusal> {
    let verified = verify_claim(claim, &env).map_err(|rejection| Refusal {
        rejection,
        verified: None,
    })?;
    finish(verified, &env, reg, now)
}

/// Check 2: the signature over the header bytes (with the sender's current key, or a
/// previous one inside its rotation overlap); body digests; header structure.
fn verify_claim(claim: Claim, env: &Env<'_>) -> Result<VerifiedEnvelope, Rejection> {
    claim
        .envelope
        .verify_any_with(env.limits, &claim.keys, env.signatures)
        .map_err(from_schema)
}

/// Checks 1-2: the envelope decodes, the connection's party is the header's sender and
/// an active party, and the header's signature verifies with its key.
fn authenticate(
    sub: Submitted<'_>,
    env: &Env<'_>,
    now: DateTime<Utc>,
) -> Result<VerifiedEnvelope, Rejection> {
    verify_claim(claim(sub, env, now)?, env)
}

/// Checks 3-7 over a verified header.
fn decide(
    h: &Header,
    env: &Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    // 3. Replay and duplicate protection.
    if reg.seen(&h.id).map_err(unknown)? {
        return Err(reject(
            RejectCode::Replay,
            format!("message id {} was accepted before", h.id),
        ));
    }

    // 4. Covenant, purpose and kind exist; the sender's role may send it.
    if h.covenant != env.policy.covenant.id {
        return Err(reject(
            RejectCode::WrongCovenant,
            format!(
                "the message is for covenant '{}', this broker serves '{}'",
                h.covenant, env.policy.covenant.id
            ),
        ));
    }
    let (purpose, rule) = kind_rule(env.policy, &h.purpose, h.kind)?;

    // 5. Need-to-know: the case exists under this purpose, sender and every recipient are
    // in its team, and each recipient's role may receive this kind, in its own view.
    let case = reg.case(&h.case_ref).map_err(unknown)?.ok_or_else(|| {
        reject(
            RejectCode::UnknownCase,
            format!("case {} is not registered", h.case_ref),
        )
    })?;
    check_case_purpose(&h.case_ref, &case.purpose, &h.purpose)?;
    check_case_state(
        &h.case_ref,
        !case.is_open(),
        case.phase.as_deref(),
        purpose,
        h.kind,
    )?;
    let sender_role = check_sender_role(
        (h.kind, &h.purpose, rule),
        &h.case_ref,
        &h.sender,
        case.role_of(&h.sender),
    )?;
    // A breach notice goes to exactly the parties that exchanged messages about the
    // affected cases in its window, a correction to the parties of the messages it
    // corrects: they need not all be in this case's team.
    let breach = if h.kind.routed_by_audit() {
        breach::route(h, rule, &purpose.case_managers, &case, reg, env.directory)?
    } else {
        None
    };
    let recipients = match &breach {
        Some(routing) => routing.recipients.clone(),
        None => check_recipients(h, rule, &case)?,
    };

    // 6. Legal basis.
    let ground = check_legal_basis(
        &Sharing::of(h, sender_role, &recipients),
        rule,
        &env.policy.grounds,
        reg,
        now,
    )?;
    let ground_alerts_fg = ground
        .as_ref()
        .is_some_and(|g| env.policy.grounds.alerts_fg(g));

    // 7. Deadline bookkeeping: late is accepted and flagged, never dropped. An event in
    // the future (beyond clock drift) would move every deadline out: refused.
    if let Some(event) = h.event_time {
        if event > now + env.max_clock_skew {
            return Err(reject(
                RejectCode::Malformed,
                format!(
                    "the header's event_time lies {} s ahead of the receiver's clock (at most \
                     {} s of clock drift is allowed): an event cannot be in the future",
                    (event - now).num_seconds(),
                    env.max_clock_skew.num_seconds()
                ),
            ));
        }
    }
    let mut flags = Vec::new();
    let send_deadline = match (rule.send_within, h.event_time) {
        (Some(within), Some(event)) => Some(within.deadline(event, &env.policy.calendar)),
        // A term anchored only on optional payload facts binds only the messages that
        // carry one (the receiving agent checks the header against the payload).
        (Some(_), None) if rule.term_needs_anchor => None,
        (Some(_), None) => {
            return Err(reject(
                RejectCode::Malformed,
                format!(
                    "{} has a send_within deadline, so the header needs its event_time",
                    h.kind
                ),
            ))
        }
        (None, _) => None,
    };
    if send_deadline.is_some_and(|d| deadlines::is_late(d, now)) {
        flags.push(AcceptFlag::Late);
    }
    if ground.is_some() {
        flags.push(AcceptFlag::NonConsentGround);
    }
    if let Some(request) = &h.answer_request {
        check_answer_request(
            (h.kind, &h.purpose),
            request,
            rule,
            &recipients,
            env.policy,
            now,
        )?;
    }
    let expires_at = rule.undelivered_ttl.deadline(now, &env.policy.calendar);

    Ok(Decision {
        processing_activity: purpose.processing_activity.clone(),
        recipients,
        flags,
        ground,
        ground_alerts_fg,
        send_deadline,
        expires_at,
        breach,
    })
}

/// Check 1's directory part: `oin` is an active party. The sending agent runs it on itself
/// before it resolves a request.
pub fn active_sender<'d>(
    directory: &'d Directory,
    oin: &Oin,
) -> Result<&'d ketenpost_schemas::directory::Party, Rejection> {
    directory.active_party(oin).ok_or_else(|| {
        reject(
            RejectCode::UnknownSender,
            format!("sender {oin} is not an active party in the directory"),
        )
    })
}

/// Check 4's policy part: the purpose exists and allows `kind`, a content kind; its rule.
/// The sending agent resolves a request with it (the rule names senders, recipients, the
/// legal basis and the terms).
pub fn kind_rule<'p>(
    policy: &'p Policy,
    purpose: &str,
    kind: Kind,
) -> Result<(&'p ketenpost_schemas::policy::Purpose, &'p KindRule), Rejection> {
    let p = policy.purposes.get(purpose).ok_or_else(|| {
        reject(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{purpose}'"),
        )
    })?;
    if !kind.is_content() {
        return Err(reject(
            RejectCode::KindNotAllowed,
            format!("{kind} is a control record, not a message"),
        ));
    }
    let rule = p.kinds.get(&kind).ok_or_else(|| {
        reject(
            RejectCode::KindNotAllowed,
            format!("purpose '{purpose}' does not allow {kind}"),
        )
    })?;
    Ok((p, rule))
}

/// Part of check 5: a message names the purpose of its case.
pub fn check_case_purpose(
    case_ref: &CaseRef,
    case_purpose: &str,
    purpose: &str,
) -> Result<(), Rejection> {
    if case_purpose != purpose {
        return Err(reject(
            RejectCode::WrongPurpose,
            format!(
                "case {case_ref} belongs to purpose '{case_purpose}', the message names \
                 '{purpose}'"
            ),
        ));
    }
    Ok(())
}

/// Part of check 5: the sender has `role` in the case (`None`: not in its team), and that
/// role may send the kind under the purpose (`(kind, purpose, rule)`).
pub fn check_sender_role<'r>(
    (kind, purpose, rule): (Kind, &str, &KindRule),
    case_ref: &CaseRef,
    sender: &Oin,
    role: Option<&'r Role>,
) -> Result<&'r Role, Rejection> {
    let role = role.ok_or_else(|| {
        reject(
            RejectCode::NotInCaseTeam,
            format!("sender {sender} is not in the team of case {case_ref}"),
        )
    })?;
    if !rule.senders.contains(role) {
        return Err(reject(
            RejectCode::SenderRoleNotAllowed,
            format!("role '{role}' may not send {kind} under purpose '{purpose}'"),
        ));
    }
    Ok(role)
}

/// Part of check 5: a recipient has `role` in the case (`None`: not in its team), and that
/// role may receive the kind under the purpose (`(kind, purpose, rule)`).
pub fn check_recipient_role<'r>(
    (kind, purpose, rule): (Kind, &str, &KindRule),
    case_ref: &CaseRef,
    recipient: &Oin,
    role: Option<&'r Role>,
) -> Result<&'r Role, Rejection> {
    let role = role.ok_or_else(|| {
        reject(
            RejectCode::NotInCaseTeam,
            format!("recipient {recipient} is not in the team of case {case_ref}"),
        )
    })?;
    if !rule.recipients.contains(role) {
        return Err(reject(
            RejectCode::RecipientRoleNotAllowed,
            format!(
                "recipient {recipient} has role '{role}', which may not receive {kind} under \
                 purpose '{purpose}'"
            ),
        ));
    }
    Ok(role)
}

/// Part of check 5: whether a message of `kind` may be sent in a case that is `closed` or
/// in `phase` (`None`: the purpose's first phase). A breach notice or a correction may still
/// concern a closed case (its data are still held) and passes every phase. The agent runs
/// it on what it knows for certain (a close or a phase move the broker told it of).
pub fn check_case_state(
    case_ref: &CaseRef,
    closed: bool,
    phase: Option<&str>,
    purpose: &ketenpost_schemas::policy::Purpose,
    kind: Kind,
) -> Result<(), Rejection> {
    if closed && !kind.routed_by_audit() {
        return Err(reject(
            RejectCode::CaseClosed,
            format!("case {case_ref} is closed"),
        ));
    }
    if !phases::allows(&purpose.phases, phase, kind) {
        return Err(reject(
            RejectCode::KindNotInPhase,
            format!(
                "case {case_ref} is in phase '{}', which does not allow {kind}",
                phase
                    .or(purpose.phases.first().map(|p| p.name.as_str()))
                    .unwrap_or_default(),
            ),
        ));
    }
    Ok(())
}

/// Check 7 for a message's answer request: its kind may carry one (`answer_request_max`),
/// its due date lies after `now` and at most `answer_request_max` after it, and each role
/// it names is the role of a recipient. The sending agent runs it too, before sealing.
pub fn check_answer_request(
    (kind, purpose): (Kind, &str),
    request: &AnswerRequest,
    rule: &KindRule,
    recipients: &[(Oin, Role)],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let refuse = |reason: String| Err(reject(RejectCode::AnswerRequestNotAllowed, reason));
    let Some(max) = rule.answer_request_max else {
        return refuse(format!(
            "{kind} under purpose '{purpose}' carries no answer request (the policy sets \
             no answer_request_max for it)"
        ));
    };
    if let Some(role) = request
        .by
        .iter()
        .find(|role| !recipients.iter().any(|(_, r)| r == *role))
    {
        return refuse(format!(
            "the answer request names role '{role}', which no recipient of the message has"
        ));
    }
    if request.due <= now {
        return refuse(format!(
            "the answer request is due {}, which is not after the broker's acceptance at {}",
            request.due.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    let bound = max.deadline(now, &policy.calendar);
    if deadlines::is_late(bound, request.due) {
        return refuse(format!(
            "the answer request is due {}, beyond the policy's bound for {kind}: at most \
             {max} after acceptance, so by {}",
            request.due.to_rfc3339(),
            bound.to_rfc3339()
        ));
    }
    Ok(())
}

fn check_recipients(
    h: &Header,
    rule: &KindRule,
    case: &Case,
) -> Result<Vec<(Oin, Role)>, Rejection> {
    let mut out = Vec::with_capacity(h.recipients.len());
    let views: BTreeMap<&Oin, &Role> = h
        .bodies
        .iter()
        .flat_map(|b| b.recipients.iter().map(move |r| (r, &b.view)))
        .collect();
    for r in &h.recipients {
        let role =
            check_recipient_role((h.kind, &h.purpose, rule), &h.case_ref, r, case.role_of(r))?;
        if views.get(r) != Some(&role) {
            return Err(reject(
                RejectCode::ViewMismatch,
                format!("the body for {r} is not the '{role}' view its case role gets"),
            ));
        }
        out.push((r.clone(), role.clone()));
    }
    Ok(out)
}

/// One act of sharing, as far as the legal basis is concerned: who shares which kind
/// about which case under which purpose, with whom, and on what basis. Built from a
/// verified header by the broker and from a send request by an agent, so both decide the
/// legal basis with the same functions.
#[derive(Clone, Copy, Debug)]
pub struct Sharing<'a> {
    /// The covenant.
    pub covenant: &'a str,
    /// The case.
    pub case_ref: &'a CaseRef,
    /// The purpose.
    pub purpose: &'a str,
    /// The kind.
    pub kind: Kind,
    /// The sender.
    pub sender: &'a Oin,
    /// The sender's role in the case.
    pub sender_role: &'a Role,
    /// The recipients with their roles.
    pub recipients: &'a [(Oin, Role)],
    /// The legal basis claimed.
    pub legal_basis: &'a LegalBasis,
}

impl<'a> Sharing<'a> {
    /// The sharing a verified header describes.
    pub fn of(h: &'a Header, sender_role: &'a Role, recipients: &'a [(Oin, Role)]) -> Self {
        Sharing {
            covenant: &h.covenant,
            case_ref: &h.case_ref,
            purpose: &h.purpose,
            kind: h.kind,
            sender: &h.sender,
            sender_role,
            recipients,
            legal_basis: &h.legal_basis,
        }
    }
}

/// Check 6: the legal basis of `s` under its kind's `rule`, with the policy's `grounds`.
/// Returns the named ground used, if any.
///
/// - Basis consent: a covering consent, or one of the kind's grounds instead.
/// - Any other basis: `covenant` in the header, or one of the kind's grounds; with
///   `ground_required` a ground is the only way.
///
/// A ground's justification code must be one the covenant allows with it. A consent the
/// registry cannot tell about is a `storage` answer (an agent: the broker decides).
pub fn check_legal_basis(
    s: &Sharing<'_>,
    rule: &KindRule,
    grounds: &Grounds,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<Option<Ground>, Rejection> {
    let named = |ground: &Ground| -> Result<String, Rejection> {
        let others = if rule.grounds.is_empty() {
            "none".to_owned()
        } else {
            rule.grounds
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(reject(
            RejectCode::GroundNotAllowed,
            format!(
                "the policy does not allow ground '{ground}' for {} under purpose '{}' \
                 (allowed: {others})",
                s.kind, s.purpose
            ),
        ))
    };
    match (s.legal_basis, rule.consent) {
        (LegalBasis::NonConsent { .. }, ConsentRule::NotRequired) if rule.grounds.is_empty() => {
            Err(reject(
                RejectCode::LegalBasisMismatch,
                format!(
                    "{} rests on {} and names no grounds; send it with legal basis 'covenant'",
                    s.kind,
                    rule.basis.map_or("the covenant itself", |b| b.article())
                ),
            ))
        }
        (
            LegalBasis::NonConsent {
                ground,
                justification,
            },
            _,
        ) => {
            if !rule.grounds.contains(ground) {
                named(ground)?;
            }
            if let Some(why) = grounds.refuse_justification(ground, justification) {
                return Err(reject(RejectCode::GroundNotAllowed, why));
            }
            Ok(Some(ground.clone()))
        }
        (LegalBasis::Covenant, ConsentRule::NotRequired) if rule.ground_required => Err(reject(
            RejectCode::LegalBasisMismatch,
            format!(
                "{} under purpose '{}' may be sent only on one of its grounds ({}), \
                     each reviewed by the FGs",
                s.kind,
                s.purpose,
                rule.grounds
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        (LegalBasis::Covenant, ConsentRule::NotRequired) => Ok(None),
        (LegalBasis::Consent { .. }, ConsentRule::NotRequired) => Err(reject(
            RejectCode::LegalBasisMismatch,
            format!(
                "{} does not rest on consent but on {}; send it with legal basis 'covenant'{}",
                s.kind,
                rule.basis.map_or("the covenant itself", |b| b.article()),
                if rule.ground_required {
                    " and one of its grounds"
                } else {
                    ""
                }
            ),
        )),
        (LegalBasis::Covenant, ConsentRule::Required) => Err(reject(
            RejectCode::NoConsent,
            format!(
                "{} requires the client's consent or an allowed non-consent ground",
                s.kind
            ),
        )),
        (LegalBasis::Consent { consent_id }, ConsentRule::Required) => {
            let consent = reg.consent(consent_id).map_err(unknown)?.ok_or_else(|| {
                reject(
                    RejectCode::NoConsent,
                    format!("consent {consent_id} is not registered"),
                )
            })?;
            check_consent(s, &consent, now)?;
            Ok(None)
        }
    }
}

/// Whether `consent` covers the sharing `s` at `now`: not withdrawn, valid, for its case,
/// purpose and covenant, covering the sender and every recipient.
pub fn check_consent(
    s: &Sharing<'_>,
    consent: &Consent,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let c = &consent.record;
    if let Some(at) = consent.withdrawn_at {
        if at <= now {
            return Err(reject(
                RejectCode::ConsentWithdrawn,
                format!(
                    "consent {} was withdrawn at {}",
                    c.consent_id,
                    at.to_rfc3339()
                ),
            ));
        }
    }
    if now < c.valid_from || c.valid_until.is_some_and(|u| now >= u) {
        return Err(reject(
            RejectCode::ConsentNotValid,
            format!("consent {} is not valid at this time", c.consent_id),
        ));
    }
    if &c.case_ref != s.case_ref || c.purpose != s.purpose || c.covenant != s.covenant {
        return Err(reject(
            RejectCode::ConsentScope,
            format!(
                "consent {} is for another case or purpose than this message",
                c.consent_id
            ),
        ));
    }
    if !consent.covers(s.sender, s.sender_role) {
        return Err(reject(
            RejectCode::ConsentScope,
            format!(
                "consent {} does not cover the sender {}",
                c.consent_id, s.sender
            ),
        ));
    }
    if let Some((oin, role)) = s.recipients.iter().find(|(o, r)| !consent.covers(o, r)) {
        return Err(reject(
            RejectCode::ConsentScope,
            format!(
                "consent {} does not cover recipient {oin} (role '{role}')",
                c.consent_id
            ),
        ));
    }
    Ok(())
}

/// What an accepted control record changes.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlEffect {
    /// A case was opened.
    CaseOpened(Case),
    /// A case changed (member added or removed, or closed); the new state.
    CaseChanged {
        /// The case after the change.
        case: Case,
        /// The change.
        change: CaseChange,
    },
    /// A consent was registered.
    ConsentGranted(Consent),
    /// A consent was withdrawn.
    ConsentWithdrawn(Consent),
    /// A party confirmed a deletion order.
    DeletionConfirmed(DeletionConfirmation),
    /// The regievoerder ordered parties to delete a case's data now.
    DeletionRequested {
        /// The case after the order (ordered parties out of the team, or ended).
        case: Case,
        /// The signed change.
        change: CaseChange,
        /// Why.
        reason: DeletionReason,
        /// Who must delete.
        ordered: BTreeSet<Oin>,
    },
}

fn signer_keys(
    rec: &SignedRecord,
    transport: &Oin,
    env: Env<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<VerifyingKey>, Rejection> {
    if &rec.signer != transport {
        return Err(reject(
            RejectCode::TransportIdentity,
            format!(
                "the record is signed by {}, the connection's certificate is {transport}",
                rec.signer
            ),
        ));
    }
    let party = env.directory.active_party(&rec.signer).ok_or_else(|| {
        reject(
            RejectCode::UnknownSender,
            format!("{} is not an active party in the directory", rec.signer),
        )
    })?;
    party_keys(party, env, now)
}

/// The keys a signature of `party` may verify with at `now` (the current one first):
/// parsed once per set of documents (`env.keys`) where the caller has them, else parsed
/// here; an error when the current key does not parse.
fn party_keys(
    party: &ketenpost_schemas::directory::Party,
    env: Env<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<VerifyingKey>, Rejection> {
    match env.keys.and_then(|k| k.get(&party.oin)) {
        Some(k) => Ok(k.valid_at(now)),
        None => {
            party.verifying_key().map_err(from_schema)?;
            Ok(party.verifying_keys_at(now))
        }
    }
}

/// Verify a signed record with `keys` (any one of them), its signature checked by
/// `signatures` (`Env::signatures`: `verify_strict`'s verdict, given one at a time or from
/// a batch), and parse it.
fn verify_record<R: ketenpost_schemas::control::Record>(
    rec: &SignedRecord,
    keys: &[VerifyingKey],
    signatures: &dyn keys::SignatureCheck,
) -> Result<R, Rejection> {
    rec.verify_any_with::<R>(signatures, keys)
        .map_err(record_error)
}

/// A signed record's schema error as the rejection the checks answer.
fn record_error(e: SchemaError) -> Rejection {
    match e {
        SchemaError::BadSignature(_) => reject(
            RejectCode::BadSignature,
            "the record's signature does not verify with the signer's directory key",
        ),
        other => reject(RejectCode::Malformed, other.to_string()),
    }
}

fn not_permitted(reason: String) -> Rejection {
    reject(RejectCode::NotPermitted, reason)
}

/// Decide a control record: consent, withdrawal, case change or deletion confirmation.
pub fn check_control(
    transport: &Oin,
    rec: &SignedRecord,
    env: Env<'_>,
    reg: &impl Registry,
    deletion_order: impl Fn(&uuid::Uuid, &Oin) -> Lookup<bool>,
    now: DateTime<Utc>,
) -> Result<ControlEffect, Rejection> {
    let key = signer_keys(rec, transport, env, now)?;
    match rec.kind {
        Kind::CaseChange => {
            let change: CaseChange = verify_record(rec, &key, env.signatures)?;
            check_case_change(change, rec, env, reg, now)
        }
        Kind::Toestemming => {
            let t: Toestemming = verify_record(rec, &key, env.signatures)?;
            check_consent_grant(t, rec, env, reg, now)
        }
        Kind::ToestemmingIntrekking => {
            let w: ToestemmingIntrekking = verify_record(rec, &key, env.signatures)?;
            if w.recorded_by != rec.signer {
                return Err(not_permitted("recorded_by must be the signer".into()));
            }
            let mut consent = reg
                .consent(&w.consent_id)
                .map_err(unknown)?
                .ok_or_else(|| {
                    reject(
                        RejectCode::NoConsent,
                        format!("consent {} is not registered", w.consent_id),
                    )
                })?;
            if consent.record.case_ref != w.case_ref {
                return Err(reject(
                    RejectCode::Conflict,
                    format!("consent {} belongs to another case", w.consent_id),
                ));
            }
            // The case is read only when the signer is not the consent's own recorder.
            let may = consent.record.obtained_by == rec.signer
                || reg.case(&w.case_ref).map_err(unknown)?.is_some_and(|c| {
                    c.role_of(&rec.signer).is_some_and(|r| {
                        env.policy
                            .purposes
                            .get(&c.purpose)
                            .is_some_and(|p| p.consent_recorders.contains(r))
                    })
                });
            if !may {
                return Err(not_permitted(format!(
                    "{} may not record a withdrawal of consent {}",
                    rec.signer, w.consent_id
                )));
            }
            if consent.withdrawn_at.is_some() {
                return Err(reject(
                    RejectCode::Conflict,
                    format!("consent {} was already withdrawn", w.consent_id),
                ));
            }
            // A withdrawal takes effect immediately: from the moment the broker records it,
            // whatever time the record claims.
            consent.withdrawn_at = Some(
                now.min(w.withdrawn_at.max(consent.record.valid_from))
                    .min(now),
            );
            Ok(ControlEffect::ConsentWithdrawn(consent))
        }
        Kind::DeletionConfirmation => {
            let c: DeletionConfirmation = verify_record(rec, &key, env.signatures)?;
            if c.party != rec.signer {
                return Err(not_permitted(
                    "the confirming party must be the signer".into(),
                ));
            }
            // A confirmation of an order that is confirmed already is its party's repeat
            // (the first answer was lost): accepted, and it changes nothing.
            if deletion_order(&c.order_id, &c.party)
                .map_err(unknown)?
                .is_none()
            {
                return Err(reject(
                    RejectCode::Conflict,
                    format!("no deletion order {} for {}", c.order_id, c.party),
                ));
            }
            Ok(ControlEffect::DeletionConfirmed(c))
        }
        other => Err(reject(
            RejectCode::Malformed,
            format!("{other} is not a control record an agent may submit"),
        )),
    }
}

fn check_case_change(
    change: CaseChange,
    rec: &SignedRecord,
    env: Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<ControlEffect, Rejection> {
    if change.by != rec.signer {
        return Err(not_permitted("'by' must be the signer".into()));
    }
    if change.covenant != env.policy.covenant.id {
        return Err(reject(
            RejectCode::WrongCovenant,
            format!("the change is for covenant '{}'", change.covenant),
        ));
    }
    let purpose = env.policy.purposes.get(&change.purpose).ok_or_else(|| {
        reject(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{}'", change.purpose),
        )
    })?;
    let signer = env
        .directory
        .active_party(&rec.signer)
        .ok_or_else(|| reject(RejectCode::UnknownSender, "signer is not active"))?;
    match &change.change {
        CaseOp::Open { role } => {
            // Who may open comes before whether the reference is taken: a party that may
            // not open cases learns nothing about the references in use, and the sending
            // agent, which cannot know them, refuses it too.
            if !signer.has_role(role) || !purpose.case_managers.contains(role) {
                return Err(not_permitted(format!(
                    "{} may not open a case under purpose '{}' as '{role}'",
                    rec.signer, change.purpose
                )));
            }
            if reg.case(&change.case_ref).map_err(unknown)?.is_some() {
                return Err(reject(
                    RejectCode::Conflict,
                    format!("case {} exists already", change.case_ref),
                ));
            }
            let case = Case {
                case_ref: change.case_ref.clone(),
                covenant: change.covenant.clone(),
                purpose: change.purpose.clone(),
                regievoerder: rec.signer.clone(),
                members: [(rec.signer.clone(), role.clone())].into(),
                former_members: Default::default(),
                opened_at: now,
                closed_at: None,
                deletion_ordered_at: None,
                deleted_by: Default::default(),
                phase: None,
                phase_since: None,
                review_noticed_at: None,
            };
            Ok(ControlEffect::CaseOpened(case))
        }
        op => {
            let mut case = reg
                .case(&change.case_ref)
                .map_err(unknown)?
                .ok_or_else(|| {
                    reject(
                        RejectCode::UnknownCase,
                        format!("case {} is not registered", change.case_ref),
                    )
                })?;
            if case.purpose != change.purpose {
                return Err(reject(
                    RejectCode::WrongPurpose,
                    format!(
                        "case {} belongs to purpose '{}'",
                        case.case_ref, case.purpose
                    ),
                ));
            }
            // A data subject's request may come after the case closed, until its data is
            // deleted; every other change needs an open case.
            let deletion = matches!(op, CaseOp::OrderDeletion { .. });
            if (!deletion && !case.is_open()) || case.deletion_ordered_at.is_some() {
                return Err(reject(
                    RejectCode::CaseClosed,
                    format!("case {} is closed", case.case_ref),
                ));
            }
            let manager = case
                .role_of(&rec.signer)
                .is_some_and(|r| purpose.case_managers.contains(r));
            if !manager {
                return Err(not_permitted(format!(
                    "{} does not manage case {}",
                    rec.signer, case.case_ref
                )));
            }
            match op {
                CaseOp::AddMember { oin, role } => {
                    let party = env.directory.active_party(oin).ok_or_else(|| {
                        reject(
                            RejectCode::UnknownSender,
                            format!("{oin} is not an active party"),
                        )
                    })?;
                    if !party.has_role(role) {
                        return Err(reject(
                            RejectCode::Conflict,
                            format!("{oin} does not have role '{role}' in the directory"),
                        ));
                    }
                    if case.members.contains_key(oin) {
                        return Err(reject(
                            RejectCode::Conflict,
                            format!("{oin} is already in the team of case {}", case.case_ref),
                        ));
                    }
                    case.members.insert(oin.clone(), role.clone());
                }
                CaseOp::RemoveMember { oin } => {
                    if oin == &case.regievoerder {
                        return Err(reject(
                            RejectCode::Conflict,
                            "the regievoerder cannot leave its own case; close it instead",
                        ));
                    }
                    if case.members.remove(oin).is_none() {
                        return Err(reject(
                            RejectCode::Conflict,
                            format!("{oin} is not in the team of case {}", case.case_ref),
                        ));
                    }
                    case.former_members.insert(oin.clone());
                }
                CaseOp::Close => case.closed_at = Some(now),
                CaseOp::EnterPhase { phase } => {
                    if !purpose.phases.iter().any(|p| &p.name == phase) {
                        return Err(reject(
                            RejectCode::Conflict,
                            format!("purpose '{}' has no phase '{phase}'", change.purpose),
                        ));
                    }
                    let current = phases::find(&purpose.phases, case.phase.as_deref());
                    if current.is_some_and(|p| &p.name == phase) {
                        return Err(reject(
                            RejectCode::Conflict,
                            format!("case {} is in phase '{phase}' already", case.case_ref),
                        ));
                    }
                    case.phase = Some(phase.clone());
                    case.phase_since = Some(now);
                    case.review_noticed_at = None;
                }
                CaseOp::ReviewDue { .. } => {
                    return Err(not_permitted(
                        "a review notice comes from the broker, not from a party".into(),
                    ));
                }
                CaseOp::OrderDeletion { reason, parties } => {
                    return order_deletion_now(case, change.clone(), *reason, parties, now);
                }
                CaseOp::Open { .. } => {
                    // Handled in the outer match.
                    return Err(reject(RejectCode::Conflict, "case exists already"));
                }
            }
            Ok(ControlEffect::CaseChanged { case, change })
        }
    }
}

/// An ad-hoc deletion order of the regievoerder (checked to be the signer's case above):
/// the parties named must hold the case's data; retention is not an ad-hoc reason; a
/// handover names who hands over, never the regievoerder itself.
fn order_deletion_now(
    mut case: Case,
    change: CaseChange,
    reason: DeletionReason,
    parties: &[Oin],
    now: DateTime<Utc>,
) -> Result<ControlEffect, Rejection> {
    if reason == DeletionReason::RetentionEnded {
        return Err(reject(
            RejectCode::Conflict,
            "retention deletion orders come from the broker when the retention ends",
        ));
    }
    let holders = case.holders();
    if let Some(p) = parties.iter().find(|p| !holders.contains(p)) {
        return Err(reject(
            RejectCode::Conflict,
            format!("{p} holds no data of case {}", case.case_ref),
        ));
    }
    if reason == DeletionReason::Handover
        && (parties.is_empty() || parties.contains(&case.regievoerder))
    {
        return Err(reject(
            RejectCode::Conflict,
            "a handover names the parties that hand over, and not the regievoerder",
        ));
    }
    let ordered: BTreeSet<Oin> = if parties.is_empty() {
        holders.clone()
    } else {
        parties.iter().cloned().collect()
    };
    if ordered == holders {
        // Every holder deletes: the case ends here, and retention orders nothing more.
        case.closed_at.get_or_insert(now);
        case.deletion_ordered_at = Some(now);
    } else {
        for p in &ordered {
            if case.members.remove(p).is_some() {
                case.former_members.insert(p.clone());
            }
            case.deleted_by.insert(p.clone());
        }
    }
    Ok(ControlEffect::DeletionRequested {
        case,
        change,
        reason,
        ordered,
    })
}

fn check_consent_grant(
    t: Toestemming,
    rec: &SignedRecord,
    env: Env<'_>,
    reg: &impl Registry,
    now: DateTime<Utc>,
) -> Result<ControlEffect, Rejection> {
    if t.obtained_by != rec.signer {
        return Err(not_permitted(
            "a consent is registered by the party that obtained it (obtained_by = signer)".into(),
        ));
    }
    if t.covenant != env.policy.covenant.id {
        return Err(reject(
            RejectCode::WrongCovenant,
            format!("the consent is for covenant '{}'", t.covenant),
        ));
    }
    let purpose = env.policy.purposes.get(&t.purpose).ok_or_else(|| {
        reject(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{}'", t.purpose),
        )
    })?;
    let case = reg.case(&t.case_ref).map_err(unknown)?.ok_or_else(|| {
        reject(
            RejectCode::UnknownCase,
            format!("case {} is not registered", t.case_ref),
        )
    })?;
    if case.purpose != t.purpose {
        return Err(reject(
            RejectCode::WrongPurpose,
            format!(
                "case {} belongs to purpose '{}', the consent names '{}'",
                t.case_ref, case.purpose, t.purpose
            ),
        ));
    }
    if !case.is_open() {
        return Err(reject(
            RejectCode::CaseClosed,
            format!("case {} is closed", t.case_ref),
        ));
    }
    let role = case.role_of(&rec.signer).ok_or_else(|| {
        reject(
            RejectCode::NotInCaseTeam,
            format!("{} is not in the team of case {}", rec.signer, t.case_ref),
        )
    })?;
    if !purpose.consent_recorders.contains(role) {
        return Err(not_permitted(format!(
            "role '{role}' may not register consent under purpose '{}'",
            t.purpose
        )));
    }
    if t.parties.is_empty() && t.roles.is_empty() {
        return Err(reject(
            RejectCode::Malformed,
            "the consent names no parties or roles",
        ));
    }
    if let Some(r) = t.roles.iter().find(|r| !env.policy.has_role(r)) {
        return Err(reject(RejectCode::Malformed, format!("unknown role '{r}'")));
    }
    if t.valid_until.is_some_and(|u| u <= t.valid_from) {
        return Err(reject(
            RejectCode::Malformed,
            "valid_until is not after valid_from",
        ));
    }
    // A consent is dated within reach of its case: no earlier than the case's opening
    // minus the purpose's consent_backdating window, and not obtained in the future.
    let window = purpose.consent_backdating;
    let cal = &env.policy.calendar;
    for (field, at) in [("valid_from", t.valid_from), ("obtained_at", t.obtained_at)] {
        if window.deadline(at, cal) < case.opened_at {
            return Err(reject(
                RejectCode::Malformed,
                format!(
                    "{field} lies more than {window} before case {} was opened (the purpose's \
                     consent_backdating)",
                    t.case_ref
                ),
            ));
        }
    }
    if t.obtained_at > now + env.max_clock_skew {
        return Err(reject(
            RejectCode::Malformed,
            "obtained_at lies in the future",
        ));
    }
    if reg.consent(&t.consent_id).map_err(unknown)?.is_some() {
        return Err(reject(
            RejectCode::Conflict,
            format!("consent {} is registered already", t.consent_id),
        ));
    }
    Ok(ControlEffect::ConsentGranted(Consent {
        record: t,
        withdrawn_at: None,
    }))
}

/// Decide a delivery receipt: signed by the transport party, which is its recipient.
/// [`claim_receipt`], then [`check_receipt_claim`].
pub fn check_receipt(
    transport: &Oin,
    rec: &SignedRecord,
    env: Env<'_>,
    now: DateTime<Utc>,
) -> Result<DeliveryReceipt, Rejection> {
    let claim = claim_receipt(transport, rec, env, now)?;
    check_receipt_claim(claim, transport, env)
}

/// A delivery receipt past the checks that come before its signature: signed by the
/// connection's party, an active party whose keys parse, and a `delivery_receipt` whose
/// bytes and signature decode. It holds what a verifier that checks many signatures at
/// once needs ([`ReceiptClaim::signed`]); [`check_receipt_claim`] decides the rest.
#[derive(Debug)]
pub struct ReceiptClaim {
    keys: Vec<VerifyingKey>,
    parts: RecordParts,
}

impl ReceiptClaim {
    /// The signature to verify: the record's bytes framed as signed, the signature, and
    /// the signer's keys valid now (any one of them must verify it).
    pub fn signed(&self) -> (Vec<u8>, keys::Signature, &[VerifyingKey]) {
        (self.parts.framed(), self.parts.signature(), &self.keys)
    }
}

/// The checks of a delivery receipt before its signature (see [`ReceiptClaim`]).
pub fn claim_receipt(
    transport: &Oin,
    rec: &SignedRecord,
    env: Env<'_>,
    now: DateTime<Utc>,
) -> Result<ReceiptClaim, Rejection> {
    let keys = signer_keys(rec, transport, env, now)?;
    if rec.kind != Kind::DeliveryReceipt {
        return Err(reject(RejectCode::Malformed, "expected a delivery_receipt"));
    }
    let parts = rec.parts().map_err(record_error)?;
    Ok(ReceiptClaim { keys, parts })
}

/// The rest of a receipt's checks, after [`claim_receipt`]: its signature (checked by
/// `env.signatures`), its bytes parse, and it names the connection's party as the
/// recipient.
pub fn check_receipt_claim(
    claim: ReceiptClaim,
    transport: &Oin,
    env: Env<'_>,
) -> Result<DeliveryReceipt, Rejection> {
    let r: DeliveryReceipt = claim
        .parts
        .verify_any_with(env.signatures, &claim.keys)
        .map_err(record_error)?;
    if &r.recipient != transport {
        return Err(not_permitted(format!(
            "a receipt for {} cannot come from {transport}",
            r.recipient
        )));
    }
    Ok(r)
}

mod payload;
pub use payload::check_payload;

#[cfg(test)]
mod tests;
