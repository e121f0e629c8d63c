//! The early policy check: refuse before storing or sending what the broker would refuse.
//!
//! Two steps, both pure functions of the request, the policy, the directory, the agent's
//! local [mirror](crate::mirror) and `now`:
//!
//! 1. [`check_send`] *resolves* a request into a message: its purpose, its recipients and
//!    the view (role) each gets, its legal basis (the consent on file that covers it, with
//!    the core's own [`check_consent`](ketenpost_core::checks::check_consent)), its event
//!    time and breach scope. It refuses, with the broker's codes, only where a request
//!    cannot be resolved (no role of ours may send it, no recipient with that role, no
//!    consent on file).
//! 2. [`check_sealed`] runs the broker's own checks
//!    ([`check_message`](ketenpost_core::checks::check_message)) over the sealed envelope,
//!    with the mirror as the registry: one policy engine for broker and agent.
//!
//! The rule is **refuse only when sure**: the mirror is a partial copy of the broker's
//! registries, so where it does not know (a case the agent never heard of, a consent
//! another party registered, a team it did not manage) the check lets the message through
//! and the broker decides. A refusal here is never one the broker would not also give on
//! the same facts; a pass here is no promise the broker accepts.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::{CaseOp, Toestemming};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{AnswerRequest, BreachScope, LegalBasis, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin, TraceId};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload;
use ketenpost_schemas::policy::{ConsentRule, KindRule, Policy, Purpose, Role};
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ketenpost_core::checks::{self, Sharing};

use crate::mirror::{KnownCase, KnownConsent, MirrorRegistry};
use crate::Error;

/// A recipient as the partner system names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum To {
    /// A party, by OIN.
    Oin(Oin),
    /// Every member of the case team with this role ("the corporation in this case").
    Role(Role),
}

/// A message the partner system wants to send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The kind (a content kind).
    pub kind: Kind,
    /// The case.
    pub case_ref: CaseRef,
    /// The purpose; by default the purpose of the case, when the agent knows the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The recipients.
    pub to: Vec<To>,
    /// The legal basis. By default: `covenant` for kinds that need no consent, otherwise a
    /// valid consent on file at this agent that covers the sender and every recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<LegalBasis>,
    /// The event time; by default taken from the payload (a signal's `waargenomen_op`, a
    /// breach's `ontdekt_op`, the day a disclosure obligation was received).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// The message this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<MessageId>,
    /// Ask the recipients in some roles (all when `by` is empty) for an answer by `due`;
    /// the policy bounds it per kind (`answer_request_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_request: Option<AnswerRequest>,
    /// A W3C trace id to carry; a fresh one by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// The full payload; every recipient role gets its own view of it.
    pub payload: Value,
}

/// What the check needs to know.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// This agent's OIN.
    pub me: &'a Oin,
    /// The verified policy.
    pub policy: &'a Policy,
    /// The verified directory.
    pub directory: &'a Directory,
    /// The case, when the agent knows it.
    pub case: Option<&'a KnownCase>,
    /// The consents the agent knows for this case.
    pub consents: &'a [KnownConsent],
}

/// A request that passed the early check, with everything resolved for sealing.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The purpose.
    pub purpose: String,
    /// The sender's role, as well as the agent knows it.
    pub sender_role: Role,
    /// Recipients with the role (view) each receives in.
    pub recipients: Vec<(Oin, Role)>,
    /// The legal basis to put in the header.
    pub legal_basis: LegalBasis,
    /// The event time.
    pub event_time: Option<DateTime<Utc>>,
    /// The breach scope of a datalek_melding, from its payload.
    pub breach_scope: Option<BreachScope>,
    /// The messages a correctie corrects, from its payload.
    pub corrects: Vec<MessageId>,
}

fn refuse(code: RejectCode, reason: impl Into<String>) -> Error {
    Error::refused_early(Rejection::new(code, reason))
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid(reason.into())
}

/// Check a message before it is stored, and resolve its recipients and legal basis.
pub fn check_send(
    req: &SendRequest,
    cx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Resolved, Error> {
    let me = cx.me;
    // 1. The sender must be an active party.
    let my_party = cx.directory.active_party(me).ok_or_else(|| {
        refuse(
            RejectCode::UnknownSender,
            format!("{me} is not an active party in the directory"),
        )
    })?;

    // 4. Purpose and kind exist; (5) the purpose is the case's.
    let purpose_id = match (&req.purpose, cx.case) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.purpose.clone(),
        (None, None) => {
            return Err(invalid(format!(
                "case {} is not known to this agent, so its purpose is not either: give 'purpose'",
                req.case_ref
            )))
        }
    };
    let purpose = cx.policy.purposes.get(&purpose_id).ok_or_else(|| {
        refuse(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{purpose_id}'"),
        )
    })?;
    if !req.kind.is_content() {
        return Err(refuse(
            RejectCode::KindNotAllowed,
            format!("{} is a control record, not a message", req.kind),
        ));
    }
    let rule = purpose.kinds.get(&req.kind).ok_or_else(|| {
        refuse(
            RejectCode::KindNotAllowed,
            format!("purpose '{purpose_id}' does not allow {}", req.kind),
        )
    })?;

    // (5) The case's state as far as this agent knows it for certain: a close or a phase
    // move it made or the broker told it of. Not knowing the phase is the broker's to
    // decide.
    if let Some(c) = cx
        .case
        .filter(|c| c.purpose == purpose_id && (c.closed_at.is_some() || c.phase.is_some()))
    {
        checks::check_case_state(
            &req.case_ref,
            c.closed_at.is_some(),
            c.phase.as_deref(),
            purpose,
            req.kind,
        )
        .map_err(Error::refused_early)?;
    }

    // The covenant's own required items for this kind (e.g. a breach notice's items a-e).
    let missing = ketenpost_schemas::payload::missing_fields(&rule.required_fields, &req.payload);
    if !missing.is_empty() {
        return Err(refuse(
            RejectCode::Malformed,
            format!(
                "the covenant requires {} in a {} under purpose '{purpose_id}'",
                missing.join(", "),
                req.kind
            ),
        ));
    }

    // 5. Need-to-know, as far as the mirror can tell.
    if let Some(case) = cx.case {
        if case.purpose != purpose_id {
            return Err(refuse(
                RejectCode::WrongPurpose,
                format!(
                    "case {} belongs to purpose '{}', the message names '{purpose_id}'",
                    case.case_ref, case.purpose
                ),
            ));
        }
    }
    let sender_role = sender_role(me, &my_party.roles, cx.case, rule, req, &purpose_id)?;
    let recipients = resolve_recipients(req, cx, rule, &purpose_id)?;

    // 6. Legal basis.
    let legal_basis = legal_basis(req, cx, rule, &purpose_id, &sender_role, &recipients, now)?;

    // 7. What the broker's deadline bookkeeping needs.
    // A kind whose term runs from a payload fact (`event_time_from`) takes its event time
    // from that fact, never by hand.
    let anchored =
        ketenpost_schemas::policy::anchors::event_time(&rule.event_time_from, &req.payload)
            .map_err(invalid)?;
    let event_time = match anchored {
        Some((field, at)) => {
            if req.event_time.is_some_and(|t| t != at) {
                return Err(invalid(format!(
                    "the event_time of a {} comes from its payload field '{field}'; leave it \
                     out or give the same time",
                    req.kind
                )));
            }
            Some(at)
        }
        None => req
            .event_time
            .or_else(|| event_time_from_payload(req.kind, &req.payload)),
    };
    // A term anchored only on optional payload facts binds only a message that carries
    // one.
    if rule.send_within.is_some() && event_time.is_none() && !rule.term_needs_anchor {
        return Err(invalid(format!(
            "{} has a send_within deadline, so it needs an event_time",
            req.kind
        )));
    }
    let breach_scope = if req.kind == Kind::DatalekMelding {
        let scope = breach_scope_from_payload(&req.payload).ok_or_else(|| {
            invalid("a datalek_melding payload needs tijdvak_van and tijdvak_tot")
        })?;
        if !scope.case_refs.is_empty() && !scope.case_refs.contains(&req.case_ref) {
            return Err(invalid(format!(
                "the notice's case {} is not one of its betrokken_casussen",
                req.case_ref
            )));
        }
        if scope.case_refs.is_empty() && !scope.all_cases_of_sender {
            return Err(invalid(
                "a datalek_melding names betrokken_casussen or alle_casussen_van_afzender",
            ));
        }
        Some(scope)
    } else {
        None
    };
    if let Some(request) = &req.answer_request {
        checks::check_answer_request(
            (req.kind, &purpose_id),
            request,
            rule,
            &recipients,
            cx.policy,
            now,
        )
        .map_err(Error::refused_early)?;
    }
    let corrects = if req.kind == Kind::Correctie {
        corrects_from_payload(&req.payload)?
    } else {
        Vec::new()
    };
    Ok(Resolved {
        purpose: purpose_id,
        sender_role,
        recipients,
        legal_basis,
        event_time,
        breach_scope,
        corrects,
    })
}

fn sender_role(
    me: &Oin,
    my_roles: &[Role],
    case: Option<&KnownCase>,
    rule: &KindRule,
    req: &SendRequest,
    purpose_id: &str,
) -> Result<Role, Error> {
    let not_allowed = |role: &str| {
        refuse(
            RejectCode::SenderRoleNotAllowed,
            format!(
                "role '{role}' may not send {} under purpose '{purpose_id}'",
                req.kind
            ),
        )
    };
    match case.and_then(|c| c.members.get(me)) {
        Some(role) if rule.senders.contains(role) => Ok(role.clone()),
        Some(role) => Err(not_allowed(role.as_str())),
        // Refused here, in the broker's order (check 5 before the legal basis of check 6,
        // which this step resolves next).
        None if case.is_some_and(|c| c.complete) => Err(refuse(
            RejectCode::NotInCaseTeam,
            format!("sender {me} is not in the team of case {}", req.case_ref),
        )),
        None => match my_roles.iter().find(|r| rule.senders.contains(*r)) {
            Some(r) => Ok(r.clone()),
            None => Err(not_allowed(
                &my_roles
                    .iter()
                    .map(Role::as_str)
                    .collect::<Vec<_>>()
                    .join("/"),
            )),
        },
    }
}

fn resolve_recipients(
    req: &SendRequest,
    cx: &Context<'_>,
    rule: &KindRule,
    purpose_id: &str,
) -> Result<Vec<(Oin, Role)>, Error> {
    let breach = req.kind.routed_by_audit();
    if req.to.is_empty() {
        if !breach {
            return Err(invalid("name at least one recipient"));
        }
        // A breach notice or correction goes where the broker's routing says; the first
        // guess is the case team as far as the agent knows it.
        let team: Vec<(Oin, Role)> = cx
            .case
            .map(|c| {
                c.members
                    .iter()
                    .filter(|(o, r)| *o != cx.me && rule.recipients.contains(*r))
                    .map(|(o, r)| (o.clone(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if team.is_empty() {
            return Err(invalid(
                "this agent knows no one to send the breach notice to yet: name at least one \
                 recipient; the broker answers with the parties concerned and the agent seals \
                 it again to them",
            ));
        }
        return Ok(team);
    }
    let role_not_allowed = |who: &str, role: &Role| {
        refuse(
            RejectCode::RecipientRoleNotAllowed,
            format!(
                "{who}role '{role}' may not receive {} under purpose '{purpose_id}'",
                req.kind
            ),
        )
    };
    // A breach notice is routed by the broker to everyone who exchanged messages about
    // the affected cases, team or not: no team check for its recipients.
    let complete = cx.case.is_some_and(|c| c.complete) && !breach;
    let mut out: Vec<(Oin, Role)> = Vec::new();
    let mut push = |oin: Oin, role: Role| {
        if !out.iter().any(|(o, _)| o == &oin) {
            out.push((oin, role));
        }
    };
    for to in &req.to {
        match to {
            To::Role(role) => {
                if !cx.policy.has_role(role) {
                    return Err(invalid(format!("the policy has no role '{role}'")));
                }
                if !rule.recipients.contains(role) {
                    return Err(role_not_allowed("", role));
                }
                let case = cx.case.ok_or_else(|| {
                    invalid(format!(
                        "recipients by role need the case team, and case {} is not known to \
                         this agent: register the case or name recipients by OIN",
                        req.case_ref
                    ))
                })?;
                let found: Vec<&Oin> = case
                    .members
                    .iter()
                    .filter(|(o, r)| *r == role && *o != cx.me)
                    .map(|(o, _)| o)
                    .collect();
                if found.is_empty() {
                    return Err(if complete {
                        refuse(
                            RejectCode::NotInCaseTeam,
                            format!("no member of case {} has role '{role}'", req.case_ref),
                        )
                    } else {
                        invalid(format!(
                            "no member of case {} with role '{role}' is known to this agent: \
                             name the recipient by OIN or register the case team",
                            req.case_ref
                        ))
                    });
                }
                for oin in found {
                    push(oin.clone(), role.clone());
                }
            }
            To::Oin(oin) => {
                if oin == cx.me {
                    return Err(invalid("the sender cannot be a recipient"));
                }
                // Refused here, in the broker's order (check 5 before the legal basis).
                let known = cx.case.and_then(|c| c.members.get(oin));
                if known.is_none() && complete {
                    return Err(refuse(
                        RejectCode::NotInCaseTeam,
                        format!(
                            "recipient {oin} is not in the team of case {}",
                            req.case_ref
                        ),
                    ));
                }
                let party = cx.directory.active_party(oin).ok_or_else(|| {
                    invalid(format!(
                        "{oin} is not an active party in the directory; nothing can be \
                         encrypted to it"
                    ))
                })?;
                let role = match known {
                    Some(role) if rule.recipients.contains(role) => role.clone(),
                    Some(role) => {
                        return Err(role_not_allowed(&format!("recipient {oin} has "), role))
                    }
                    None => match party.roles.iter().find(|r| rule.recipients.contains(*r)) {
                        Some(r) => r.clone(),
                        None => {
                            // A case role is always one of the party's directory roles.
                            let roles = party
                                .roles
                                .iter()
                                .map(Role::as_str)
                                .collect::<Vec<_>>()
                                .join("/");
                            return Err(refuse(
                                RejectCode::RecipientRoleNotAllowed,
                                format!(
                                    "recipient {oin} has role '{roles}', which may not receive \
                                     {} under purpose '{purpose_id}'",
                                    req.kind
                                ),
                            ));
                        }
                    },
                };
                if !party.has_role(&role) {
                    return Err(invalid(format!(
                        "{oin} does not have role '{role}' in the directory"
                    )));
                }
                push(oin.clone(), role);
            }
        }
    }
    Ok(out)
}

fn legal_basis(
    req: &SendRequest,
    cx: &Context<'_>,
    rule: &KindRule,
    purpose_id: &str,
    sender_role: &Role,
    recipients: &[(Oin, Role)],
    now: DateTime<Utc>,
) -> Result<LegalBasis, Error> {
    let registry = MirrorRegistry {
        case: cx.case,
        consents: cx.consents,
        now,
    };
    let base = Sharing {
        covenant: &cx.policy.covenant.id,
        case_ref: &req.case_ref,
        purpose: purpose_id,
        kind: req.kind,
        sender: cx.me,
        sender_role,
        recipients,
        legal_basis: &LegalBasis::Covenant,
    };
    let basis = match (&req.legal_basis, rule.consent) {
        (Some(b), _) => b.clone(),
        (None, ConsentRule::NotRequired) => LegalBasis::Covenant,
        // The consent to use: the newest one on file that covers this message.
        (None, ConsentRule::Required) => {
            let mut first_refusal = None;
            let mut best: Option<&KnownConsent> = None;
            for c in cx
                .consents
                .iter()
                .filter(|c| c.record.case_ref == req.case_ref)
            {
                let basis = LegalBasis::Consent {
                    consent_id: c.record.consent_id,
                };
                let verdict = checks::check_consent(
                    &Sharing {
                        legal_basis: &basis,
                        ..base
                    },
                    &c.into(),
                    now,
                );
                match verdict {
                    Ok(()) => {
                        if best.is_none_or(|b| b.record.valid_from < c.record.valid_from) {
                            best = Some(c);
                        }
                    }
                    Err(e) => {
                        first_refusal.get_or_insert(e);
                    }
                }
            }
            return match (best, first_refusal) {
                (Some(c), _) => Ok(LegalBasis::Consent {
                    consent_id: c.record.consent_id,
                }),
                (None, Some(refusal)) => Err(Error::refused_early(refusal)),
                (None, None) => Err(refuse(
                    RejectCode::NoConsent,
                    format!(
                        "{} requires consent and no consent for case {} is on file at this \
                         agent: register one, or name the consent_id another party registered",
                        req.kind, req.case_ref
                    ),
                )),
            };
        }
    };
    // The broker's own check 6 over what this agent knows: a consent it does not know
    // (registered by another party) is the broker's to decide.
    let sharing = Sharing {
        legal_basis: &basis,
        ..base
    };
    match checks::check_legal_basis(&sharing, rule, &cx.policy.grounds, &registry, now) {
        Ok(_) => Ok(basis),
        Err(r) if r.code.is_transient() => Ok(basis),
        Err(r) => Err(Error::refused_early(r)),
    }
}

/// After sealing: the broker's own checks ([`checks::check_message`]) over the sealed
/// envelope, with this agent's mirror as the registry ([`MirrorRegistry`]). What they
/// refuse, the broker would refuse on the same facts; where the mirror cannot tell (a
/// `storage` answer), the broker decides. This is the one policy engine: the checks above
/// only resolve a request into a message (purpose, recipients and their views, legal
/// basis) and refuse where it cannot be resolved.
pub fn check_sealed(envelope: &[u8], cx: &Context<'_>, now: DateTime<Utc>) -> Result<(), Error> {
    let registry = MirrorRegistry {
        case: cx.case,
        consents: cx.consents,
        now,
    };
    let env = checks::Env {
        policy: cx.policy,
        directory: cx.directory,
        limits: &Limits::default(),
        keys: None,
        max_clock_skew: checks::DEFAULT_CLOCK_SKEW,
    };
    let sealed = checks::Submitted {
        transport: cx.me,
        bytes: envelope,
    };
    match checks::check_message(sealed, env, &registry, now) {
        Ok(_) => Ok(()),
        Err(r) if r.code.is_transient() => Ok(()),
        Err(r) => Err(Error::refused_early(r)),
    }
}

/// The event time a payload carries: a signal's `waargenomen_op`, a breach's `ontdekt_op`,
/// the day a disclosure obligation was received (`verplichting_ontvangen_op`, from the start
/// of that day in Amsterdam, as a date anchor counts: [`start_of_local_day`]).
///
/// [`start_of_local_day`]: ketenpost_schemas::calendar::start_of_local_day
pub fn event_time_from_payload(kind: Kind, payload: &Value) -> Option<DateTime<Utc>> {
    let field = |name: &str| payload.get(name).and_then(Value::as_str);
    match kind {
        Kind::Signaal => field("waargenomen_op")?.parse().ok(),
        Kind::DatalekMelding => field("ontdekt_op")?.parse().ok(),
        Kind::VerstrekkingDerden => {
            let day: chrono::NaiveDate = field("verplichting_ontvangen_op")?.parse().ok()?;
            Some(ketenpost_schemas::calendar::start_of_local_day(day))
        }
        _ => None,
    }
}

/// The messages a correctie payload corrects (`berichten`); a correctie that corrects no
/// field is refused here, as the payload schema cannot say "at least one list".
pub fn corrects_from_payload(payload: &Value) -> Result<Vec<MessageId>, Error> {
    let correctie: payload::Correctie = serde_json::from_value(payload.clone())
        .map_err(|_| invalid("the correctie payload does not parse"))?;
    if correctie.is_empty() {
        return Err(invalid(
            "a correctie corrects at least one field (identiteit, contact, wonen, inkomen, \
             schulden, ondersteuning, justitie or casus)",
        ));
    }
    Ok(correctie.berichten)
}

/// The breach scope a datalek_melding payload describes.
pub fn breach_scope_from_payload(payload: &Value) -> Option<BreachScope> {
    let time = |name: &str| -> Option<DateTime<Utc>> {
        payload.get(name).and_then(Value::as_str)?.parse().ok()
    };
    let case_refs = match payload.get("betrokken_casussen") {
        Some(v) => serde_json::from_value(v.clone()).ok()?,
        None => Vec::new(),
    };
    Some(BreachScope {
        case_refs,
        all_cases_of_sender: payload
            .get("alle_casussen_van_afzender")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        from: time("tijdvak_van")?,
        until: time("tijdvak_tot")?,
    })
}

/// Check opening a case; returns the role to open it as (the given one, or the first of
/// our roles that may manage cases under the purpose).
pub fn check_open(
    me: &Oin,
    purpose_id: &str,
    role: Option<&Role>,
    policy: &Policy,
    directory: &Directory,
) -> Result<Role, Error> {
    let purpose = policy.purposes.get(purpose_id).ok_or_else(|| {
        refuse(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{purpose_id}'"),
        )
    })?;
    let party = directory.active_party(me).ok_or_else(|| {
        refuse(
            RejectCode::UnknownSender,
            format!("{me} is not an active party in the directory"),
        )
    })?;
    let chosen = match role {
        Some(r) => Some(r.clone()),
        None => party
            .roles
            .iter()
            .find(|r| purpose.case_managers.contains(*r))
            .cloned(),
    };
    match chosen {
        Some(r) if party.has_role(&r) && purpose.case_managers.contains(&r) => Ok(r),
        _ => Err(refuse(
            RejectCode::NotPermitted,
            format!(
                "{me} may not open a case under purpose '{purpose_id}' (case managers: {})",
                join(&purpose.case_managers)
            ),
        )),
    }
}

fn join(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a change to a case this agent knows: only a case manager in the team may change
/// it, and only while it is open. With an unknown case the broker decides.
pub fn check_case_change(
    me: &Oin,
    case: Option<&KnownCase>,
    op: &CaseOp,
    policy: &Policy,
    directory: &Directory,
) -> Result<(), Error> {
    if let CaseOp::AddMember { oin, role } = op {
        let party = directory.active_party(oin).ok_or_else(|| {
            refuse(
                RejectCode::UnknownSender,
                format!("{oin} is not an active party"),
            )
        })?;
        if !party.has_role(role) {
            return Err(refuse(
                RejectCode::Conflict,
                format!("{oin} does not have role '{role}' in the directory"),
            ));
        }
    }
    if let CaseOp::ReviewDue { .. } = op {
        return Err(refuse(
            RejectCode::NotPermitted,
            "a review notice comes from the broker, not from a party",
        ));
    }
    let Some(case) = case else { return Ok(()) };
    let purpose: Option<&Purpose> = policy.purposes.get(&case.purpose);
    if let (CaseOp::EnterPhase { phase }, Some(p)) = (op, purpose) {
        if !p.phases.iter().any(|x| &x.name == phase) {
            return Err(refuse(
                RejectCode::Conflict,
                format!("purpose '{}' has no phase '{phase}'", case.purpose),
            ));
        }
    }
    // A data subject's deletion request may come after the case closed (the broker knows
    // whether its data is deleted already).
    if case.is_closed() && !matches!(op, CaseOp::OrderDeletion { .. }) {
        return Err(refuse(
            RejectCode::CaseClosed,
            format!("case {} is closed", case.case_ref),
        ));
    }
    let manager = case
        .members
        .get(me)
        .is_some_and(|r| purpose.is_some_and(|p| p.case_managers.contains(r)));
    if !manager && (case.complete || case.members.contains_key(me)) {
        return Err(refuse(
            RejectCode::NotPermitted,
            format!("{me} does not manage case {}", case.case_ref),
        ));
    }
    match op {
        CaseOp::AddMember { oin, .. } if case.members.contains_key(oin) => Err(refuse(
            RejectCode::Conflict,
            format!("{oin} is already in the team of case {}", case.case_ref),
        )),
        CaseOp::RemoveMember { oin } if case.regievoerder.as_ref() == Some(oin) => Err(refuse(
            RejectCode::Conflict,
            "the regievoerder cannot leave its own case; close it instead",
        )),
        CaseOp::RemoveMember { oin } if case.complete && !case.members.contains_key(oin) => {
            Err(refuse(
                RejectCode::Conflict,
                format!("{oin} is not in the team of case {}", case.case_ref),
            ))
        }
        _ => Ok(()),
    }
}

/// Check registering a consent this agent obtained.
pub fn check_consent_grant(
    me: &Oin,
    t: &Toestemming,
    case: Option<&KnownCase>,
    policy: &Policy,
) -> Result<(), Error> {
    let purpose = policy.purposes.get(&t.purpose).ok_or_else(|| {
        refuse(
            RejectCode::UnknownPurpose,
            format!("the policy has no purpose '{}'", t.purpose),
        )
    })?;
    if let Some(case) = case {
        if case.purpose != t.purpose {
            return Err(refuse(
                RejectCode::WrongPurpose,
                format!(
                    "case {} belongs to purpose '{}', the consent names '{}'",
                    t.case_ref, case.purpose, t.purpose
                ),
            ));
        }
        if case.is_closed() {
            return Err(refuse(
                RejectCode::CaseClosed,
                format!("case {} is closed", t.case_ref),
            ));
        }
        match case.members.get(me) {
            Some(role) if !purpose.consent_recorders.contains(role) => {
                return Err(refuse(
                    RejectCode::NotPermitted,
                    format!(
                        "role '{role}' may not register consent under purpose '{}'",
                        t.purpose
                    ),
                ))
            }
            None if case.complete => {
                return Err(refuse(
                    RejectCode::NotInCaseTeam,
                    format!("{me} is not in the team of case {}", t.case_ref),
                ))
            }
            _ => {}
        }
    }
    if t.parties.is_empty() && t.roles.is_empty() {
        return Err(refuse(
            RejectCode::Malformed,
            "the consent names no parties or roles",
        ));
    }
    if let Some(r) = t.roles.iter().find(|r| !policy.has_role(r)) {
        return Err(refuse(RejectCode::Malformed, format!("unknown role '{r}'")));
    }
    if t.valid_until.is_some_and(|u| u <= t.valid_from) {
        return Err(refuse(
            RejectCode::Malformed,
            "valid_until is not after valid_from",
        ));
    }
    Ok(())
}

/// Check withdrawing a consent this agent knows: not twice.
pub fn check_withdrawal(consent: Option<&KnownConsent>) -> Result<(), Error> {
    match consent {
        Some(c) if c.withdrawn_at.is_some() => Err(refuse(
            RejectCode::Conflict,
            format!("consent {} was already withdrawn", c.record.consent_id),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
