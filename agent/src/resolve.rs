//! Resolve a send request into a message; the checks are core's.
//!
//! The agent refuses early, before it stores or sends, what the broker would refuse, and it
//! does so with the broker's own engine (`ketenpost_core::checks`) over its local
//! [mirror](crate::mirror) as the registry. All pure functions of the request, the policy,
//! the directory, the mirror and `now`:
//!
//! 1. [`resolve`] turns a [`SendRequest`] into what a sealed message needs: its purpose,
//!    its recipients and the view (role) each gets, its legal basis (the newest consent on
//!    file that covers it), its event time, breach scope and the messages a correctie
//!    corrects. It states no rule of its own: where a request cannot be resolved without
//!    one (no such purpose or kind, no role of ours that may send it, a recipient outside a
//!    team the agent knows whole, no consent that covers it) the refusal is core's
//!    ([`checks::kind_rule`], [`checks::check_sender_role`], [`checks::check_recipient_role`],
//!    [`checks::check_legal_basis`], ...), in the broker's order. It also runs the checks
//!    only an agent can run, over the payload the broker never sees
//!    ([`checks::check_payload`]).
//! 2. [`check_sealed`] runs the broker's checks of a message
//!    ([`check_message`](checks::check_message)) over the sealed envelope.
//! 3. [`check_control`] runs the broker's checks of a control record
//!    ([`check_control`](checks::check_control): opening or changing a case, registering
//!    or withdrawing a consent) over the signed record, before it is submitted.
//!
//! The rule is **refuse only when sure**: the mirror is a partial copy of the broker's
//! registries and answers "unknown" where it cannot tell (a case the agent never heard of
//! or whose team it does not know whole, a consent another party registered); a check
//! that meets "unknown" lets the message or record through and the broker decides. A
//! refusal here is never one the broker would not also give on the same facts; a pass
//! here is no promise the broker accepts.

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{AnswerRequest, BreachScope, LegalBasis, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin, TraceId};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload;
use ketenpost_schemas::policy::{ConsentRule, KindRule, Policy, Role};
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ketenpost_core::checks::{self, Sharing};
use ketenpost_core::registry::Unknown;

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

impl<'a> Context<'a> {
    /// The mirror as the registry core's checks read.
    pub fn registry(&self) -> MirrorRegistry<'a> {
        MirrorRegistry {
            case: self.case,
            consents: self.consents,
        }
    }

    fn env<'l>(&self, limits: &'l Limits) -> checks::Env<'l>
    where
        'a: 'l,
    {
        checks::Env {
            policy: self.policy,
            directory: self.directory,
            limits,
            keys: None,
            max_clock_skew: checks::DEFAULT_CLOCK_SKEW,
            signatures: &ketenpost_schemas::keys::Strict,
        }
    }
}

/// A request resolved for sealing.
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

/// What a kind's rule is checked against: the kind, the purpose and its rule.
type What<'a> = (Kind, &'a str, &'a KindRule);

/// Resolve a request into what its sealed message needs; refuse, with core's refusal, only
/// where it cannot be resolved or core's payload checks refuse it.
pub fn resolve(req: &SendRequest, cx: &Context<'_>, now: DateTime<Utc>) -> Result<Resolved, Error> {
    let me = cx.me;
    let early = Error::refused_early;
    // 1. Our own roles, from the directory.
    let my_party = checks::active_sender(cx.directory, me).map_err(early)?;

    // 4. The purpose (by default the case's) and the kind's rule under it.
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
    let (purpose, rule) = checks::kind_rule(cx.policy, &purpose_id, req.kind).map_err(early)?;
    let what: What<'_> = (req.kind, &purpose_id, rule);

    // 5. What the agent knows for certain of the case: its purpose, and a close or a phase
    // move it made or the broker told it of. Not knowing the phase is the broker's to
    // decide.
    if let Some(c) = cx.case {
        checks::check_case_purpose(&req.case_ref, &c.purpose, &purpose_id).map_err(early)?;
        if c.closed_at.is_some() || c.phase.is_some() {
            checks::check_case_state(
                &req.case_ref,
                c.closed_at.is_some(),
                c.phase.as_deref(),
                purpose,
                req.kind,
            )
            .map_err(early)?;
        }
    }

    // What only the sender can check: the payload (the covenant's required fields, a
    // correctie that corrects something).
    checks::check_payload(what, &req.payload).map_err(early)?;

    // 5. The roles of sender and recipients.
    let sender_role = sender_role(me, &my_party.roles, cx.case, what, &req.case_ref)?;
    let recipients = resolve_recipients(req, cx, what)?;

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
    let breach_scope = if req.kind == Kind::DatalekMelding {
        Some(breach_scope_from_payload(&req.payload).ok_or_else(|| {
            invalid("a datalek_melding payload needs tijdvak_van and tijdvak_tot")
        })?)
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
        .map_err(early)?;
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

/// Our role in the case: the one the mirror knows, else the first of our directory roles
/// that may send the kind (a case role is always one of the party's directory roles).
fn sender_role(
    me: &Oin,
    my_roles: &[Role],
    case: Option<&KnownCase>,
    what: What<'_>,
    case_ref: &CaseRef,
) -> Result<Role, Error> {
    let known = case.and_then(|c| c.members.get(me));
    // Not in a team the agent knows whole: core's refusal, in the broker's order (check 5
    // before the legal basis of check 6, which is resolved next).
    let role = if known.is_some() || case.is_some_and(|c| c.complete) {
        known
    } else {
        let may_send = my_roles.iter().find(|r| what.2.senders.contains(*r));
        match may_send.or(my_roles.first()) {
            Some(r) => Some(r),
            None => return Err(invalid(format!("{me} has no role in the directory"))),
        }
    };
    checks::check_sender_role(what, case_ref, me, role)
        .cloned()
        .map_err(Error::refused_early)
}

fn resolve_recipients(
    req: &SendRequest,
    cx: &Context<'_>,
    what: What<'_>,
) -> Result<Vec<(Oin, Role)>, Error> {
    let rule = what.2;
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
    let check = |oin: &Oin, role: Option<&Role>| {
        checks::check_recipient_role(what, &req.case_ref, oin, role)
            .cloned()
            .map_err(Error::refused_early)
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
                    // Nobody to address: in a team the agent knows whole there is none.
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
                    push(oin.clone(), check(oin, Some(role))?);
                }
            }
            To::Oin(oin) => {
                if oin == cx.me {
                    return Err(invalid("the sender cannot be a recipient"));
                }
                let known = cx.case.and_then(|c| c.members.get(oin));
                if known.is_none() && complete {
                    check(oin, None)?;
                }
                let party = cx.directory.active_party(oin).ok_or_else(|| {
                    invalid(format!(
                        "{oin} is not an active party in the directory; nothing can be \
                         encrypted to it"
                    ))
                })?;
                // The role the mirror knows, else the first of its directory roles that may
                // receive the kind (a case role is always one of the party's directory roles).
                let role = match known {
                    Some(role) => role,
                    None => {
                        let may = party.roles.iter().find(|r| rule.recipients.contains(*r));
                        may.or(party.roles.first())
                            .ok_or_else(|| invalid(format!("{oin} has no role in the directory")))?
                    }
                };
                let role = check(oin, Some(role))?;
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
    let registry = cx.registry();
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
        // The consent to use: the newest one on file that covers this message. With
        // none, the first reason core gave against one on file; with none on file, the
        // covenant, which core refuses for a kind that needs consent.
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
            match (best, first_refusal) {
                (Some(c), _) => LegalBasis::Consent {
                    consent_id: c.record.consent_id,
                },
                (None, Some(refusal)) => return Err(Error::refused_early(refusal)),
                (None, None) => LegalBasis::Covenant,
            }
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
/// `storage` answer), the broker decides.
pub fn check_sealed(envelope: &[u8], cx: &Context<'_>, now: DateTime<Utc>) -> Result<(), Error> {
    let sealed = checks::Submitted {
        transport: cx.me,
        bytes: envelope,
    };
    let limits = Limits::default();
    unless_unknown(checks::check_message(
        sealed,
        cx.env(&limits),
        &cx.registry(),
        now,
    ))
}

/// Before submitting: the broker's own check of a control record
/// ([`checks::check_control`]: opening or changing a case, registering or withdrawing a
/// consent), signed as it will be sent, with this agent's mirror as the registry. `cx`
/// holds the record's case and its consents as far as the agent knows them. Where the
/// mirror cannot tell, the broker decides.
pub fn check_control(
    rec: &SignedRecord,
    cx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    // Deletion orders are the broker's to know.
    let order = |_: &uuid::Uuid, _: &Oin| Err(Unknown("deletion orders are the broker's".into()));
    let limits = Limits::default();
    unless_unknown(checks::check_control(
        cx.me,
        rec,
        cx.env(&limits),
        &cx.registry(),
        order,
        now,
    ))
}

/// A verdict of core's over the mirror: a refusal is the agent's early refusal; where the
/// mirror could not tell (a transient `storage` answer), the broker decides.
fn unless_unknown<T>(verdict: Result<T, Rejection>) -> Result<(), Error> {
    match verdict {
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

/// The messages a correctie payload corrects (`berichten`); [`checks::check_payload`]
/// refuses one that corrects nothing.
pub fn corrects_from_payload(payload: &Value) -> Result<Vec<MessageId>, Error> {
    let correctie: payload::Correctie = serde_json::from_value(payload.clone())
        .map_err(|_| invalid("the correctie payload does not parse"))?;
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

/// The role to open a case under `purpose` as: the one given, else the first of our
/// directory roles that may manage its cases, else our first (core refuses it).
pub fn open_role(
    me: &Oin,
    purpose: &str,
    role: Option<&Role>,
    policy: &Policy,
    directory: &Directory,
) -> Result<Role, Error> {
    if let Some(r) = role {
        return Ok(r.clone());
    }
    let roles = directory
        .party(me)
        .map(|p| p.roles.as_slice())
        .unwrap_or_default();
    let managers = policy.purposes.get(purpose).map(|p| &p.case_managers);
    roles
        .iter()
        .find(|r| managers.is_some_and(|m| m.contains(*r)))
        .or(roles.first())
        .cloned()
        .ok_or_else(|| invalid(format!("{me} has no role in the directory")))
}

#[cfg(test)]
mod tests;
