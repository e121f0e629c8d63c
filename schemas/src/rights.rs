//! The data subject's access request (AVG art. 15) on the wire.
//!
//! A person asks the case manager for an overview of what the partners did with their
//! data; the answer lists purposes, categories, recipients, retention and source, within
//! one month (004:825-853). The case manager's agent finds the person's cases itself
//! (a keyed blind index over identifiers in the payloads it holds; the identifier never
//! leaves the agent) and asks the broker, with an [`AccessQuery`], for the facts of those
//! cases ([`AccessFacts`]): the broker answers only for cases the asking party is or was a
//! member of, and records the request and its term in its audit trail so the FGs see it.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CaseRef, Oin};

/// Most cases one access query may name.
pub const MAX_ACCESS_CASES: usize = 1000;

/// A case manager's agent asks for the facts of a person's cases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessQuery {
    /// The agent's id of the request: names the request, never the person.
    pub request_id: uuid::Uuid,
    /// The day the person's request was received; the term runs from it.
    pub received_on: NaiveDate,
    /// The person's cases, as the agent found them (at most [`MAX_ACCESS_CASES`]).
    pub case_refs: Vec<CaseRef>,
    /// Set when the answer went to the person: the broker records the request answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<DateTime<Utc>>,
}

/// An organisation, by OIN and by its name in the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    /// Its OIN.
    pub oin: Oin,
    /// Its name in the directory (the OIN when the directory no longer lists it).
    pub name: String,
}

/// One message about a case as far as the access answer goes: who gave which data to whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFlow {
    /// When the broker accepted it.
    pub at: DateTime<Utc>,
    /// The message kind (`aanmelding`, `signaal`, ...).
    pub kind: String,
    /// The party that gave the data (the source).
    pub sender: Organisation,
    /// The party that received them.
    pub recipient: Organisation,
    /// The data categories the recipient received (its view under the policy).
    pub categories: Vec<String>,
    /// The legal basis: `consent`, the kind's art. 6 basis (`public_task`, ...),
    /// `covenant` (an older policy naming none), or `non_consent:<ground>`.
    pub ground: String,
    /// When the recipient receipted it; `None`: not (yet) received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
}

/// The facts of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFacts {
    /// The case.
    pub case_ref: CaseRef,
    /// The purpose id, and its name in the policy.
    pub purpose: String,
    /// The purpose's name in the policy.
    pub purpose_name: String,
    /// The processing activity.
    pub processing_activity: String,
    /// The purpose's legal basis, as the policy states it.
    pub legal_basis: String,
    /// How long the data are kept after the case ends (the policy's case retention).
    pub retention: String,
    /// When the case was opened and closed.
    pub opened_at: DateTime<Utc>,
    /// When it was closed; `None` while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// Every party that is or was in the case team.
    pub parties: Vec<Organisation>,
    /// Every flow of data about the case, oldest first.
    pub flows: Vec<DataFlow>,
}

/// The broker's answer to an [`AccessQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessFacts {
    /// The request it answers.
    pub request_id: uuid::Uuid,
    /// When the answer is due (one calendar month after receipt, 004:844-846).
    pub due_at: DateTime<Utc>,
    /// The facts of each case asked about.
    pub cases: Vec<CaseFacts>,
}
