//! The agent's local mirror of the cases and consents it knows about.
//!
//! The broker's registries are authoritative; the broker does not tell agents about case
//! changes made by others. The mirror holds what this agent *can* know:
//!
//! - cases it opened itself, and every change it made to them ([`Knowledge::Managed`]);
//! - cases the partner system registered because the regievoerder told it that this
//!   organisation was added ([`Knowledge::Registered`]);
//! - cases learned from messages received: the header names the case, its purpose, the
//!   sender and every recipient with the view (= case role) it got ([`Knowledge::Learned`]);
//! - consents it registered, and withdrawals it recorded.
//!
//! A case's team is *complete* only when every change to it went through this agent: it
//! opened the case and added no other case manager (who could change the team too). Only
//! then may core's checks over it say "not in the case team"; otherwise they leave that to the
//! broker. Everything here is plain data with pure updates.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_core::breach::FlowHistory;
use ketenpost_core::registry::{Case, Consent, Lookup, Registry, Unknown};
use ketenpost_schemas::control::{CaseOp, Toestemming};
use ketenpost_schemas::envelope::Header;
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::policy::{Purpose, Role};
use serde::{Deserialize, Serialize};

/// How the agent came to know a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knowledge {
    /// This agent opened it and made its changes.
    Managed,
    /// The partner system registered it (this organisation was added by another party).
    Registered,
    /// Learned from a received message.
    Learned,
}

/// What the agent knows about one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownCase {
    /// The case.
    pub case_ref: CaseRef,
    /// Its one purpose.
    pub purpose: String,
    /// Team members known, with their role in the case.
    pub members: BTreeMap<Oin, Role>,
    /// The regievoerder, when known.
    pub regievoerder: Option<Oin>,
    /// Members this agent removed from the team: they may still hold the case's data (and
    /// a deletion order may name them), as the broker's `Case::former_members` says.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub former_members: BTreeSet<Oin>,
    /// Whether `former_members` is kept for this entry: an entry an older version wrote
    /// lacks it, and its removed members are not known, so the case is not known
    /// completely (a deletion order may name a member removed back then).
    #[serde(default)]
    pub former_known: bool,
    /// Whether `members` is the whole team (see the module docs).
    pub complete: bool,
    /// How the agent knows the case.
    pub knowledge: Knowledge,
    /// When it was closed: by this agent, or as the broker told it (a case manager closed
    /// it, or the broker did at the end of its phase); local retention counts from here.
    pub closed_at: Option<DateTime<Utc>>,
    /// The phase the case is in, when this agent moved it there or the broker told it of
    /// a case manager's move (`None`: the purpose's first phase, or not known here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the broker told this agent (a case manager) that the case's phase was due for
    /// review; cleared when the case moves to another phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_due: Option<DateTime<Utc>>,
    /// Last change of this entry.
    pub updated_at: DateTime<Utc>,
}

impl KnownCase {
    /// A case this agent just opened as `role`.
    pub fn opened(
        case_ref: CaseRef,
        purpose: String,
        me: Oin,
        role: Role,
        now: DateTime<Utc>,
    ) -> Self {
        KnownCase {
            case_ref,
            purpose,
            members: [(me.clone(), role)].into(),
            regievoerder: Some(me),
            former_members: BTreeSet::new(),
            former_known: true,
            complete: true,
            knowledge: Knowledge::Managed,
            closed_at: None,
            phase: None,
            review_due: None,
            updated_at: now,
        }
    }

    /// Apply a change the broker accepted from this agent.
    pub fn apply(&mut self, op: &CaseOp, purpose: Option<&Purpose>, now: DateTime<Utc>) {
        match op {
            CaseOp::Open { .. } => {}
            CaseOp::AddMember { oin, role } => {
                // Another case manager could change the team without this agent seeing it.
                if purpose.is_none_or(|p| p.case_managers.contains(role)) {
                    self.complete = false;
                }
                self.members.insert(oin.clone(), role.clone());
            }
            CaseOp::RemoveMember { oin } => {
                if self.members.remove(oin).is_some() {
                    self.former_members.insert(oin.clone());
                }
            }
            CaseOp::Close => {
                self.closed_at.get_or_insert(now);
            }
            CaseOp::EnterPhase { phase } => {
                self.phase = Some(phase.clone());
                self.review_due = None;
            }
            CaseOp::ReviewDue { due, .. } => self.review_due = Some(*due),
            CaseOp::OrderDeletion { parties, .. } => {
                if parties.is_empty() {
                    // Every holder deletes: the case ends.
                    self.closed_at.get_or_insert(now);
                } else {
                    for p in parties {
                        self.members.remove(p);
                    }
                }
            }
        }
        self.updated_at = now;
    }

    /// Whether the case is closed, as far as this agent knows.
    pub fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// Merge what a verified received message says about its case: the purpose, and the
    /// recipients with the role (view) the broker checked they have in the case. The
    /// sender's role is taken when the caller could tell it (a sender with one role).
    pub fn learn(
        existing: Option<KnownCase>,
        header: &Header,
        sender_role: Option<Role>,
        now: DateTime<Utc>,
    ) -> KnownCase {
        let mut case = existing.unwrap_or_else(|| KnownCase {
            case_ref: header.case_ref.clone(),
            purpose: header.purpose.clone(),
            members: BTreeMap::new(),
            regievoerder: None,
            former_members: BTreeSet::new(),
            former_known: true,
            complete: false,
            knowledge: Knowledge::Learned,
            closed_at: None,
            phase: None,
            review_due: None,
            updated_at: now,
        });
        if case.purpose != header.purpose {
            // The broker checked the message against the case's purpose, so the broker's
            // view wins over what was registered locally.
            case.purpose = header.purpose.clone();
        }
        // A member this agent did not add means another manager changed the team: the
        // agent no longer knows the whole team.
        let known = |o: &Oin| case.members.contains_key(o);
        if !(header.recipients.iter().all(known) && known(&header.sender)) {
            case.complete = false;
        }
        for body in &header.bodies {
            for r in &body.recipients {
                case.members
                    .entry(r.clone())
                    .or_insert_with(|| body.view.clone());
            }
        }
        if let Some(role) = sender_role {
            case.members.entry(header.sender.clone()).or_insert(role);
        }
        case.updated_at = now;
        case
    }
}

/// A consent this agent registered (or learned the withdrawal of).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownConsent {
    /// The grant as registered.
    pub record: Toestemming,
    /// When the withdrawal was recorded.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl KnownConsent {
    /// Whether `party` with `role` is covered (by OIN or by role), as the broker decides.
    pub fn covers(&self, party: &Oin, role: &Role) -> bool {
        self.record.parties.contains(party) || self.record.roles.contains(role)
    }

    /// Whether it is withdrawn at `now`.
    pub fn is_withdrawn(&self, now: DateTime<Utc>) -> bool {
        self.withdrawn_at.is_some_and(|at| at <= now)
    }

    /// Whether it is within its validity at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        now >= self.record.valid_from && self.record.valid_until.is_none_or(|u| now < u)
    }
}

impl From<&KnownConsent> for Consent {
    fn from(c: &KnownConsent) -> Consent {
        Consent {
            record: c.record.clone(),
            withdrawn_at: c.withdrawn_at,
        }
    }
}

/// The mirror as the registry the core's checks read: what the agent knows for certain,
/// and "unknown" for everything else, so the same checks the broker runs refuse here
/// only what the broker would refuse on the same facts.
///
/// - a case is known only when its team is complete (this agent made every change to it);
///   any other case is unknown (the agent may not know every member);
/// - a consent is known when this agent registered it; others are unknown (another party
///   may have registered them);
/// - a message id is never seen: the agent minted it;
/// - the flow history for breach routing is the broker's alone;
/// - a case's `opened_at` is not kept here: it reads as the earliest time, so the consent
///   backdating check (the one check that reads it) never refuses here.
///
/// The same view serves messages (`check_message`) and control records (`check_control`).
#[derive(Clone, Copy, Debug)]
pub struct MirrorRegistry<'a> {
    /// The case of the message or record, when the agent knows it.
    pub case: Option<&'a KnownCase>,
    /// The consents the agent knows for that case.
    pub consents: &'a [KnownConsent],
}

impl Registry for MirrorRegistry<'_> {
    fn case(&self, case_ref: &CaseRef) -> Lookup<Case> {
        match self.case {
            Some(c) if &c.case_ref == case_ref && c.complete && c.former_known => {
                match &c.regievoerder {
                    Some(regievoerder) => Ok(Some(Case {
                        case_ref: c.case_ref.clone(),
                        covenant: String::new(),
                        purpose: c.purpose.clone(),
                        regievoerder: regievoerder.clone(),
                        members: c.members.clone(),
                        former_members: c.former_members.clone(),
                        opened_at: DateTime::<Utc>::MIN_UTC,
                        closed_at: c.closed_at,
                        deletion_ordered_at: None,
                        deleted_by: Default::default(),
                        phase: c.phase.clone(),
                        phase_since: None,
                        review_noticed_at: None,
                    })),
                    None => Err(Unknown("the case's regievoerder is not known here".into())),
                }
            }
            _ => Err(Unknown("the case team is not known completely here".into())),
        }
    }

    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent> {
        match self.consents.iter().find(|c| &c.record.consent_id == id) {
            Some(c) => Ok(Some(c.into())),
            None => Err(Unknown(
                "the consent was not registered by this agent".into(),
            )),
        }
    }

    fn seen(&self, _id: &ketenpost_schemas::ids::MessageId) -> Result<bool, Unknown> {
        Ok(false)
    }

    fn flows_since(&self, _from: DateTime<Utc>) -> FlowHistory {
        FlowHistory::Unavailable
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ketenpost_schemas::envelope::{BodyRef, LegalBasis};
    use ketenpost_schemas::ids::{MessageId, TraceId};
    use ketenpost_schemas::kind::Kind;

    fn oin(n: u8) -> Oin {
        format!("{n:020}").parse().unwrap()
    }

    fn header(case_ref: &CaseRef, sender: Oin, to: Vec<(Oin, &str)>) -> Header {
        Header {
            v: 1,
            id: MessageId::new(),
            covenant: "walcheren".into(),
            purpose: "uitstroom".into(),
            kind: Kind::Signaal,
            sender,
            recipients: to.iter().map(|(o, _)| o.clone()).collect(),
            case_ref: case_ref.clone(),
            legal_basis: LegalBasis::Covenant,
            created_at: Utc::now(),
            event_time: None,
            in_reply_to: None,
            trace_id: TraceId::random(),
            breach_scope: None,
            corrects: Vec::new(),
            answer_request: None,
            bodies: to
                .into_iter()
                .map(|(o, r)| BodyRef {
                    view: Role::new(r),
                    recipients: vec![o],
                    sha256: "a".repeat(64),
                    size: 1,
                })
                .collect(),
        }
    }

    /// A case in "uitstroom" the municipality (OIN 1) opened.
    fn opened_by_gemeente(case_ref: &CaseRef, now: chrono::DateTime<Utc>) -> KnownCase {
        KnownCase::opened(
            case_ref.clone(),
            "uitstroom".into(),
            oin(1),
            Role::new("gemeente"),
            now,
        )
    }

    #[test]
    fn a_managed_case_stays_complete_until_someone_unknown_shows_up() {
        let now = Utc::now();
        let case_ref = CaseRef::random();
        let mut case = opened_by_gemeente(&case_ref, now);
        case.apply(
            &CaseOp::AddMember {
                oin: oin(2),
                role: Role::new("woningcorporatie"),
            },
            None,
            now,
        );
        // Without the policy the agent cannot tell whether the new member manages cases.
        assert!(!case.complete);
        case.complete = true;
        let known = header(&case_ref, oin(2), vec![(oin(1), "gemeente")]);
        let case = KnownCase::learn(Some(case), &known, None, now);
        assert!(case.complete);
        let stranger = header(
            &case_ref,
            oin(2),
            vec![(oin(1), "gemeente"), (oin(3), "zorgaanbieder")],
        );
        let case = KnownCase::learn(Some(case), &stranger, None, now);
        assert!(!case.complete);
        assert_eq!(case.members.get(&oin(3)), Some(&Role::new("zorgaanbieder")));
    }

    /// An entry an older version wrote has no record of the members it removed: a
    /// deletion order may name one, so the case is unknown to the checks, not refused.
    #[test]
    fn an_entry_without_its_former_members_is_not_known_completely() {
        let now = Utc::now();
        let case_ref = CaseRef::random();
        let mut case = opened_by_gemeente(&case_ref, now);
        case.regievoerder = Some(oin(1));
        let registry = |c: &KnownCase| {
            MirrorRegistry {
                case: Some(c),
                consents: &[],
            }
            .case(&case_ref)
            .is_ok()
        };
        assert!(registry(&case));
        let mut old = serde_json::to_value(&case).unwrap();
        old.as_object_mut().unwrap().remove("former_known");
        let old: KnownCase = serde_json::from_value(old).unwrap();
        assert!(old.complete && !old.former_known);
        assert!(!registry(&old));
    }

    #[test]
    fn a_learned_case_records_views_as_roles() {
        let now = Utc::now();
        let case_ref = CaseRef::random();
        let h = header(&case_ref, oin(1), vec![(oin(2), "woningcorporatie")]);
        let case = KnownCase::learn(None, &h, Some(Role::new("gemeente")), now);
        assert_eq!(case.knowledge, Knowledge::Learned);
        assert!(!case.complete);
        assert_eq!(case.members.len(), 2);
        assert_eq!(case.members.get(&oin(1)), Some(&Role::new("gemeente")));
    }
}
