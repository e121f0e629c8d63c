//! Breach routing: who must receive a datalek-melding (breach notice), and a correctie.
//!
//! A correctie (AVG art. 16, 004:671-676) is routed the same way, by message instead of
//! by window: it names the messages whose content it corrects ([`Header::corrects`]), and
//! goes to every party of those messages but its sender: the sender and the recipients of
//! each ([`correction_involvement`]), in the first role the correctie rule lets receive
//! it. The sender must have sent or received every message it corrects. The refusal and
//! the reseal are those of a breach notice.
//!
//! A breach notice names the affected case references and a time window, or "every case
//! of this sender in this window" ([`BreachScope`]). The covenants want it to reach the
//! parties concerned (000:1772-1802, 001:627-643, 004:608-653) and no one else: every
//! party that sent or received a message about those cases in the window. The sender
//! need not know who they are, and cannot add parties that never got the data.
//!
//! # How the recipients are resolved
//! 1. The broker's audit trail is the memory of who exchanged what: every `accepted`
//!    record is a [`Flow`] (sender, recipients, case, time), and an `expired` record
//!    removes the recipient that never fetched the message ([`flows_from_records`]).
//! 2. The affected cases are the scope's case references, plus, with
//!    `all_cases_of_sender`, every case the sender sent or received a message about in
//!    the window ([`involvement`]). The window includes both ends.
//! 3. The recipients are every party of those flows except the sender, each in the first
//!    role the breach rule lets receive it: its role in the notice's case, else in an
//!    affected case, else in the directory. A party whose roles may not receive a breach
//!    notice under the policy is left out (in Enschede only the procesmanager receives
//!    them, 004:608-614); a revoked party too ([`expected_recipients`]).
//!
//! # How the sender learns them (protocol decision)
//! The sender seals the notice to the recipients it expects and the broker compares. When
//! they differ, the broker refuses with [`RejectCode::BreachRecipients`] and the resolved
//! set in machine-readable form ([`Rejection::breach_recipients`],
//! [`Rejection::expected_recipients`]); the agent reseals to exactly that set and submits
//! again. This needs no new request or response frame, so every existing client keeps
//! working, and the broker decides at the moment of acceptance, so a set that changed in
//! between cannot slip through. A sender that knows no one yet seals to its own case team
//! first. The sender must be (or have been) in the team of every case it names, so the
//! refusal cannot be used to learn who exchanged messages about someone else's case.
//!
//! # The FGs
//! FGs are not parties of the protocol; each party's FG is reached through the party's
//! own agent and the FG report. A datalek-melding is itself the FG's alert: the receiving
//! agent hands every datalek-melding to its organisation's FG (`fg_contact` in the
//! directory), and the broker writes one `breach_notice` audit record per affected case
//! naming every party concerned, so each FG finds it with `ketenpost-broker audit
//! breaches --as <OIN>` and the federation's FG sees all of them.
//!
//! [`RejectCode::BreachRecipients`]: ketenpost_schemas::protocol::RejectCode::BreachRecipients
//! [`Rejection::breach_recipients`]: ketenpost_schemas::protocol::Rejection::breach_recipients
//! [`Rejection::expected_recipients`]: ketenpost_schemas::protocol::Rejection::expected_recipients

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{BreachScope, Header};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{KindRule, Role};
use ketenpost_schemas::protocol::{RejectCode, Rejection};

use crate::registry::{Case, Registry};
use ketenpost_audit::{AuditEvent, AuditRecord, Outcome};

pub use crate::registry::{Flow, FlowHistory};

/// The flows recorded in audit records (in trail order): every `accepted` record with a
/// sender, a case and a message id, minus the recipients of `expired` records.
pub fn flows_from_records<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Vec<Flow> {
    let mut flows: Vec<Flow> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        match (r.event, r.outcome) {
            (AuditEvent::Accepted, Outcome::Ok) => {
                let (Some(id), Some(case), Some(actor)) = (&r.message_id, &r.case_ref, &r.actor)
                else {
                    continue;
                };
                let (Ok(case_ref), Ok(sender)) = (case.parse::<CaseRef>(), actor.parse::<Oin>())
                else {
                    continue;
                };
                index.insert(id.clone(), flows.len());
                flows.push(Flow {
                    message_id: id.clone(),
                    case_ref,
                    sender,
                    recipients: r
                        .counterparties
                        .iter()
                        .filter_map(|c| c.parse().ok())
                        .collect(),
                    at: r.time,
                });
            }
            (AuditEvent::Expired, _) => {
                let Some(i) = r.message_id.as_ref().and_then(|id| index.get(id)) else {
                    continue;
                };
                if let Some(f) = flows.get_mut(*i) {
                    for c in &r.counterparties {
                        if let Ok(o) = c.parse::<Oin>() {
                            f.recipients.remove(&o);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    flows
}

/// The cases a breach concerns and the parties that exchanged messages about them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Involvement {
    /// The affected cases.
    pub cases: BTreeSet<CaseRef>,
    /// Every party that sent or received a message about an affected case in the window,
    /// with the cases it did so for.
    pub parties: BTreeMap<Oin, BTreeSet<CaseRef>>,
}

/// Who was involved in the cases of `scope` within its window (both ends included). For a
/// case where `member(case)` is false (the sender is no longer in its team), only the
/// flows the sender took part in count.
pub fn involvement(
    flows: &[Flow],
    scope: &BreachScope,
    sender: &Oin,
    member: impl Fn(&CaseRef) -> bool,
) -> Involvement {
    let in_window: Vec<&Flow> = flows
        .iter()
        .filter(|f| f.at >= scope.from && f.at <= scope.until)
        .collect();
    let mut cases: BTreeSet<CaseRef> = scope.case_refs.iter().cloned().collect();
    if scope.all_cases_of_sender {
        cases.extend(
            in_window
                .iter()
                .filter(|f| &f.sender == sender || f.recipients.contains(sender))
                .map(|f| f.case_ref.clone()),
        );
    }
    let mut parties: BTreeMap<Oin, BTreeSet<CaseRef>> = BTreeMap::new();
    let took_part = |f: &Flow| &f.sender == sender || f.recipients.contains(sender);
    for f in in_window
        .iter()
        .filter(|f| cases.contains(&f.case_ref))
        .filter(|f| member(&f.case_ref) || took_part(f))
    {
        for p in std::iter::once(&f.sender).chain(&f.recipients) {
            parties
                .entry(p.clone())
                .or_default()
                .insert(f.case_ref.clone());
        }
    }
    Involvement { cases, parties }
}

/// The recipients a breach notice from `sender` must have: every involved party but the
/// sender, in the first role the rule lets receive it (see the module docs), by OIN. With
/// the rule's `notify_case_managers`, also every current member of an affected case whose
/// role there is one of `case_managers` (the purpose's).
pub fn expected_recipients(
    inv: &Involvement,
    sender: &Oin,
    case_of: impl Fn(&CaseRef) -> Option<Case>,
    notice_case: &Case,
    rule: &KindRule,
    case_managers: &BTreeSet<Role>,
    directory: &Directory,
) -> Vec<(Oin, Role)> {
    let affected: Vec<Case> = inv.cases.iter().filter_map(&case_of).collect();
    let mut concerned: BTreeSet<&Oin> = inv.parties.keys().collect();
    if rule.notify_case_managers {
        for case in std::iter::once(notice_case).chain(&affected) {
            concerned.extend(
                case.members
                    .iter()
                    .filter(|(_, r)| case_managers.contains(*r))
                    .map(|(o, _)| o),
            );
        }
    }
    concerned
        .into_iter()
        .filter(|p| *p != sender)
        .filter_map(|p| {
            let party = directory.active_party(p)?;
            let role = std::iter::once(notice_case.role_of(p))
                .chain(affected.iter().map(|c| c.role_of(p)))
                .flatten()
                .chain(party.roles.iter())
                .find(|r| rule.recipients.contains(*r))?;
            Some((p.clone(), role.clone()))
        })
        .collect()
}

/// The result of routing a breach notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// Its recipients, with the role each receives it in.
    pub recipients: Vec<(Oin, Role)>,
    /// The cases it concerns.
    pub cases: BTreeSet<CaseRef>,
}

fn reject(code: RejectCode, reason: impl Into<String>) -> Rejection {
    Rejection::new(code, reason)
}

/// How far before a corrected message's id time (UUIDv7) its acceptance may lie in the
/// flow history: more than any clock drift the checks allow.
const ID_TIME_MARGIN: chrono::Duration = chrono::Duration::days(1);

/// Check 5 for a message routed by the audit trail ([`Kind::routed_by_audit`]): a
/// datalek_melding goes to the parties of its scope ([`BreachScope`]), a correctie to
/// the parties of the messages it corrects ([`Header::corrects`]). The scope is checked,
/// then the header's recipients and views must be exactly the resolved set. `Ok(None)`
/// when the registry keeps no flow history (then the caller checks the case team as for
/// any message).
///
/// [`Kind::routed_by_audit`]: ketenpost_schemas::kind::Kind::routed_by_audit
pub fn route(
    h: &Header,
    rule: &KindRule,
    case_managers: &BTreeSet<Role>,
    notice_case: &Case,
    reg: &impl Registry,
    directory: &Directory,
) -> Result<Option<Routing>, Rejection> {
    let (flows, inv, cases) = if h.kind == Kind::Correctie {
        let Some(flows) = corrected_flows(h, reg)? else {
            return Ok(None);
        };
        let inv = correction_involvement(&flows, &h.corrects, &h.sender)?;
        if !inv.cases.contains(&h.case_ref) {
            return Err(reject(
                RejectCode::Malformed,
                format!(
                    "the correctie's case {} is not the case of a message it corrects",
                    h.case_ref
                ),
            ));
        }
        let cases = read_cases(&inv.cases, reg)?;
        (flows, inv, cases)
    } else {
        let scope = check_scope(h, reg)?;
        let flows = match flow_history(reg, scope.from)? {
            Some(f) => f,
            None => return Ok(None),
        };
        let candidates = involvement(&flows, scope, &h.sender, |_| true);
        let cases = read_cases(&candidates.cases, reg)?;
        // Of a case the sender has left (found through all_cases_of_sender), only the
        // flows it took part in itself count: it learns nothing of the case's later
        // traffic.
        let inv = involvement(&flows, scope, &h.sender, |c| {
            cases.get(c).is_some_and(|k| k.role_of(&h.sender).is_some())
        });
        (flows, inv, cases)
    };
    drop(flows);
    let expected = expected_recipients(
        &inv,
        &h.sender,
        |c| cases.get(c).cloned(),
        notice_case,
        rule,
        case_managers,
        directory,
    );
    let addressed: BTreeMap<&Oin, &Role> = h
        .bodies
        .iter()
        .flat_map(|b| b.recipients.iter().map(move |r| (r, &b.view)))
        .collect();
    let wanted: BTreeMap<&Oin, &Role> = expected.iter().map(|(o, r)| (o, r)).collect();
    if expected.is_empty() || addressed != wanted || h.recipients.len() != expected.len() {
        return Err(Rejection::breach_recipients(&expected));
    }
    Ok(Some(Routing {
        recipients: expected,
        cases: inv.cases,
    }))
}

/// A breach notice's scope, checked: sound, and every case it names registered with the
/// sender in its team.
fn check_scope<'h>(h: &'h Header, reg: &impl Registry) -> Result<&'h BreachScope, Rejection> {
    let scope = h.breach_scope.as_ref().ok_or_else(|| {
        reject(
            RejectCode::Malformed,
            "a datalek_melding needs a breach scope",
        )
    })?;
    if scope.from > scope.until {
        return Err(reject(
            RejectCode::Malformed,
            "the breach window ends before it starts",
        ));
    }
    if scope.case_refs.is_empty() && !scope.all_cases_of_sender {
        return Err(reject(
            RejectCode::Malformed,
            "the breach scope names no case and not all_cases_of_sender",
        ));
    }
    if !scope.case_refs.is_empty() && !scope.case_refs.contains(&h.case_ref) {
        return Err(reject(
            RejectCode::Malformed,
            format!(
                "the notice's case {} is not one of the affected cases",
                h.case_ref
            ),
        ));
    }
    for c in &scope.case_refs {
        let case = reg
            .case(c)
            .map_err(crate::registry::unknown)?
            .ok_or_else(|| {
                reject(
                    RejectCode::UnknownCase,
                    format!("affected case {c} is not registered"),
                )
            })?;
        // A former member may not name the case: the refusal with the expected set would
        // tell it who exchanged messages about the case after it left.
        if case.role_of(&h.sender).is_none() {
            return Err(reject(
                RejectCode::NotInCaseTeam,
                format!(
                    "sender {} is not in the team of affected case {c}",
                    h.sender
                ),
            ));
        }
    }
    Ok(scope)
}

/// The flows accepted since `from`; `None` when the registry keeps no history.
fn flow_history(reg: &impl Registry, from: DateTime<Utc>) -> Result<Option<Vec<Flow>>, Rejection> {
    match reg.flows_since(from) {
        FlowHistory::NotKept => Ok(None),
        FlowHistory::Unavailable => Err(reject(
            RejectCode::Storage,
            "the broker could not read its flow history; nothing was accepted, try again",
        )),
        FlowHistory::Flows(f) => Ok(Some(f)),
    }
}

/// The flows from the time the oldest corrected message was made (its UUIDv7 time, less
/// [`ID_TIME_MARGIN`]): a message is accepted after it is made.
fn corrected_flows(h: &Header, reg: &impl Registry) -> Result<Option<Vec<Flow>>, Rejection> {
    let from = h
        .corrects
        .iter()
        .map(|id| {
            id.0.get_timestamp()
                .and_then(|t| {
                    let (secs, nanos) = t.to_unix();
                    DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
                })
                .map_or(DateTime::<Utc>::MIN_UTC, |t| t - ID_TIME_MARGIN)
        })
        .min()
        .ok_or_else(|| {
            reject(
                RejectCode::Malformed,
                "a correctie names the messages it corrects",
            )
        })?;
    flow_history(reg, from)
}

/// Who received the messages a correction from `sender` corrects: every party of each
/// message (its sender and its recipients that did not let it expire), with the message's
/// case. The sender must have sent or received each of them; a message it had no part
/// in is refused like one that does not exist, so the refusal tells nothing about it.
pub fn correction_involvement(
    flows: &[Flow],
    corrects: &[MessageId],
    sender: &Oin,
) -> Result<Involvement, Rejection> {
    let mut inv = Involvement::default();
    for id in corrects {
        let text = id.to_string();
        let flow = flows
            .iter()
            .find(|f| f.message_id == text)
            .filter(|f| &f.sender == sender || f.recipients.contains(sender))
            .ok_or_else(|| {
                reject(
                    RejectCode::NotPermitted,
                    format!("message {id} is not one this sender sent or received"),
                )
            })?;
        inv.cases.insert(flow.case_ref.clone());
        for p in std::iter::once(&flow.sender).chain(&flow.recipients) {
            inv.parties
                .entry(p.clone())
                .or_default()
                .insert(flow.case_ref.clone());
        }
    }
    Ok(inv)
}

/// Every case of `refs` the registry knows, each read before routing, so a case the
/// registry cannot read is a `storage` answer, never a silently shorter recipient list.
fn read_cases(
    refs: &BTreeSet<CaseRef>,
    reg: &impl Registry,
) -> Result<BTreeMap<CaseRef, Case>, Rejection> {
    let mut cases = BTreeMap::new();
    for c in refs {
        if let Some(case) = reg.case(c).map_err(crate::registry::unknown)? {
            cases.insert(c.clone(), case);
        }
    }
    Ok(cases)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Duration;

    use ketenpost_audit::GENESIS_HASH;

    fn oin(n: u64) -> Oin {
        format!("{n:020}").parse().unwrap()
    }

    fn record(
        seq: u64,
        event: AuditEvent,
        at: DateTime<Utc>,
        actor: u64,
        case: &CaseRef,
        to: &[u64],
        id: &str,
    ) -> AuditRecord {
        AuditRecord {
            seq,
            time: at,
            event,
            actor: Some(oin(actor).to_string()),
            user: None,
            case_ref: Some(case.to_string()),
            purpose: Some("uitstroom".into()),
            processing_activity: None,
            kind: Some("signaal".into()),
            message_id: Some(id.into()),
            counterparties: to.iter().map(|n| oin(*n).to_string()).collect(),
            outcome: Outcome::Ok,
            reason: None,
            trace_id: None,
            request_digest: None,
            document_serial: None,
            broken_seq: None,
            recipient_views: Default::default(),
            due_at: None,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn flows_come_from_accepted_records_minus_expired_recipients() {
        let t = Utc::now();
        let (a, b) = (CaseRef::random(), CaseRef::random());
        let mut rejected = record(3, AuditEvent::Accepted, t, 1, &a, &[4], "m3");
        rejected.outcome = Outcome::Refused;
        let records = vec![
            record(1, AuditEvent::Accepted, t, 1, &a, &[2, 3], "m1"),
            record(2, AuditEvent::Delivered, t, 2, &a, &[1], "m1"),
            rejected,
            record(4, AuditEvent::Accepted, t, 5, &b, &[6], "m4"),
            record(5, AuditEvent::Expired, t, 1, &a, &[3], "m1"),
        ];
        let flows = flows_from_records(&records);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].recipients, [oin(2)].into());
        assert_eq!(flows[1].sender, oin(5));
    }

    #[test]
    fn involvement_is_the_window_and_the_cases() {
        let t = Utc::now();
        let (a, b, c) = (CaseRef::random(), CaseRef::random(), CaseRef::random());
        let flow = |at, case: &CaseRef, from, to: &[u64]| Flow {
            message_id: "m".into(),
            case_ref: case.clone(),
            sender: oin(from),
            recipients: to.iter().map(|n| oin(*n)).collect(),
            at,
        };
        let flows = vec![
            flow(t - Duration::days(10), &a, 1, &[9]), // before the window
            flow(t - Duration::days(5), &a, 1, &[2]),  // the window's first instant
            flow(t - Duration::days(2), &b, 3, &[1]),  // another case of the sender
            flow(t - Duration::days(2), &c, 4, &[5]),  // nothing to do with the sender
            flow(t, &a, 2, &[6]),                      // the window's last instant
            flow(t + Duration::seconds(1), &a, 1, &[7]), // after it
        ];
        let scope = BreachScope {
            case_refs: vec![a.clone()],
            all_cases_of_sender: false,
            from: t - Duration::days(5),
            until: t,
        };
        let inv = involvement(&flows, &scope, &oin(1), |_| true);
        assert_eq!(inv.cases, [a.clone()].into());
        assert_eq!(
            inv.parties.keys().cloned().collect::<Vec<_>>(),
            vec![oin(1), oin(2), oin(6)]
        );
        let all = BreachScope {
            case_refs: vec![],
            all_cases_of_sender: true,
            ..scope
        };
        let inv = involvement(&flows, &all, &oin(1), |_| true);
        assert_eq!(inv.cases, [a.clone(), b].into());
        assert_eq!(
            inv.parties.keys().cloned().collect::<Vec<_>>(),
            vec![oin(1), oin(2), oin(3), oin(6)]
        );
        // Having left case a, the sender learns only of the flows it took part in: not
        // that 2 sent to 6.
        let inv = involvement(&flows, &all, &oin(1), |c| c != &a);
        assert_eq!(
            inv.parties.keys().cloned().collect::<Vec<_>>(),
            vec![oin(1), oin(2), oin(3)]
        );
    }

    #[test]
    fn the_expected_recipients_reason_round_trips() {
        let expected = vec![
            (oin(1), Role::new("gemeente")),
            (oin(2), Role::new("zorgaanbieder")),
        ];
        let r = Rejection::breach_recipients(&expected);
        assert_eq!(r.code, RejectCode::BreachRecipients);
        assert_eq!(r.expected_recipients(), Some(expected));
        let none = Rejection::breach_recipients(&[]);
        assert_eq!(none.expected_recipients(), Some(vec![]));
        assert_eq!(
            Rejection::new(RejectCode::NoConsent, "x").expected_recipients(),
            None
        );
    }
}
