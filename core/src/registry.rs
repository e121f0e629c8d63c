//! The broker's registries as plain data: cases and consents.
//!
//! The decision logic ([`crate::checks`]) reads them through the [`Registry`] trait, so it
//! can be tested against an in-memory [`MemRegistry`] without a database; the durable
//! store implements the same trait over sled.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::Toestemming;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use serde::{Deserialize, Serialize};

/// A case: one purpose, a team of parties each with a role, open or closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The pseudonymous reference.
    pub case_ref: CaseRef,
    /// The covenant.
    pub covenant: String,
    /// The one purpose every message about the case is bound to.
    pub purpose: String,
    /// The party that opened it and directs it.
    pub regievoerder: Oin,
    /// The case team: parties "direct betrokken bij de casus" with their role in it.
    pub members: BTreeMap<Oin, Role>,
    /// Every party that was ever a member (they may hold data and get deletion orders).
    #[serde(default)]
    pub former_members: BTreeSet<Oin>,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When it was closed; the case retention counts from here.
    pub closed_at: Option<DateTime<Utc>>,
    /// When the deletion orders went out.
    #[serde(default)]
    pub deletion_ordered_at: Option<DateTime<Utc>>,
    /// Parties ordered to delete before the case ended (a handover, an objection upheld
    /// against them): they hold nothing more, and no later order names them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deleted_by: BTreeSet<Oin>,
    /// The phase of its purpose the case is in ([`Phase`](ketenpost_schemas::policy::Phase));
    /// `None`: the purpose's first phase, the one it opened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When it entered that phase; `None`: when it opened. The phase's terms count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    /// When the case managers were told this phase is due for review (once per phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_noticed_at: Option<DateTime<Utc>>,
}

impl Case {
    /// Whether the case is open.
    pub fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }

    /// When the current phase began.
    pub fn phase_started(&self) -> DateTime<Utc> {
        self.phase_since.unwrap_or(self.opened_at)
    }

    /// The role of a member.
    pub fn role_of(&self, oin: &Oin) -> Option<&Role> {
        self.members.get(oin)
    }

    /// Every party that holds or held the case's data.
    /// The parties that still hold the case's data and get its deletion orders: every
    /// member and former member, less those ordered to delete already.
    pub fn holders(&self) -> BTreeSet<Oin> {
        self.all_parties()
            .into_iter()
            .filter(|p| !self.deleted_by.contains(p))
            .collect()
    }

    /// Every party that was ever in the case team.
    pub fn all_parties(&self) -> BTreeSet<Oin> {
        self.members
            .keys()
            .cloned()
            .chain(self.former_members.iter().cloned())
            .collect()
    }
}

/// A registered consent and whether it was withdrawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The signed grant as registered.
    pub record: Toestemming,
    /// When it was withdrawn; every later message is refused under it.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl Consent {
    /// Whether `party` with `role` is covered (by OIN or by role).
    pub fn covers(&self, party: &Oin, role: &Role) -> bool {
        self.record.parties.contains(party) || self.record.roles.contains(role)
    }
}

/// The registry cannot tell: the broker could not read its store (a storage error or a
/// record that does not parse), or an agent's partial copy does not hold the answer.
/// A check that meets it decides nothing: the broker answers `storage` (never a verdict
/// such as `unknown_case` or `replay` that the facts may not support); an agent leaves the
/// verdict to the broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the registry cannot tell: {0}")]
pub struct Unknown(pub String);

/// The registry could not tell: no verdict, a `storage` answer (the cause is the store's
/// to log; the reason names no value).
pub(crate) fn unknown(_: Unknown) -> Rejection {
    Rejection::new(
        RejectCode::Storage,
        "the broker could not read its registry; nothing was decided, try again",
    )
}

/// A registry answer: known yes (`Ok(Some)`), known no (`Ok(None)`), or [`Unknown`].
pub type Lookup<T> = Result<Option<T>, Unknown>;

/// What the decision logic needs to know about the broker's state. Every answer is
/// known-yes, known-no or [`Unknown`].
pub trait Registry {
    /// A case by reference.
    fn case(&self, case_ref: &CaseRef) -> Lookup<Case>;
    /// A consent by id.
    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent>;
    /// Whether a message id was accepted before.
    fn seen(&self, id: &MessageId) -> Result<bool, Unknown>;
    /// Every message accepted since `from` (who sent it to whom about which case), for
    /// routing a breach notice ([`crate::breach`]). A registry that keeps no history says
    /// [`FlowHistory::NotKept`], the default.
    fn flows_since(&self, from: DateTime<Utc>) -> FlowHistory {
        let _ = from;
        FlowHistory::NotKept
    }
}

/// An in-memory registry, for tests and tools.
#[derive(Clone, Debug, Default)]
pub struct MemRegistry {
    /// Cases by reference.
    pub cases: BTreeMap<CaseRef, Case>,
    /// Consents by id.
    pub consents: BTreeMap<uuid::Uuid, Consent>,
    /// Accepted message ids.
    pub seen: BTreeSet<MessageId>,
    /// Past flows for breach routing; `None` keeps no history.
    pub flows: Option<Vec<Flow>>,
}

impl Registry for MemRegistry {
    fn case(&self, case_ref: &CaseRef) -> Lookup<Case> {
        Ok(self.cases.get(case_ref).cloned())
    }
    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent> {
        Ok(self.consents.get(id).cloned())
    }
    fn seen(&self, id: &MessageId) -> Result<bool, Unknown> {
        Ok(self.seen.contains(id))
    }
    fn flows_since(&self, from: DateTime<Utc>) -> FlowHistory {
        match &self.flows {
            None => FlowHistory::NotKept,
            Some(f) => FlowHistory::Flows(f.iter().filter(|f| f.at >= from).cloned().collect()),
        }
    }
}

/// One accepted message, as the audit trail remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The message id, as recorded.
    pub message_id: String,
    /// The case it was about.
    pub case_ref: CaseRef,
    /// Who sent it.
    pub sender: Oin,
    /// Who received it (minus those it expired for).
    pub recipients: BTreeSet<Oin>,
    /// When the broker accepted it.
    pub at: DateTime<Utc>,
}

/// What a registry can say about past flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowHistory {
    /// This registry keeps no flow history (an in-memory registry in unit tests): a breach
    /// notice is then checked like any other message, against the case team.
    NotKept,
    /// The history exists but could not be read; the notice is refused (storage).
    Unavailable,
    /// The flows since the requested time.
    Flows(Vec<Flow>),
}
