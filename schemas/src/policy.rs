//! The covenant as code.
//!
//! A policy is one TOML file per covenant, signed by the federation key (see
//! [`crate::directory`]) and read by broker and agents alike. It names the roles, the
//! purposes (each a processing activity with its legal basis and case retention), and for
//! each purpose the message kinds it allows: who may send them, who may receive them, which
//! data categories each recipient role sees, whether consent is required and which
//! non-consent grounds may be used instead, the deadlines and the undelivered TTL.
//!
//! ```toml
//! [covenant]
//! id = "walcheren"
//! name = "Weer Thuis op Walcheren"
//! source = "000_38e0c0e0898840a1.txt"
//!
//! [roles.gemeente]
//! description = "municipality; regievoerder of the case"
//! [roles.zorgaanbieder]
//! description = "care provider"
//!
//! [purposes.uitstroom]
//! name = "Uitstroom uit BW/MO naar een zelfstandige woning"
//! processing_activity = "walcheren-uitstroom"
//! legal_basis = "AVG art. 6(1)(a): toestemming (000:289-297)"
//! case_retention = "7 years"
//! case_managers = ["gemeente"]
//! consent_recorders = ["zorgaanbieder"]
//! # consent_backdating = "30 days"   # a consent may date from this long before its case
//!
//! [purposes.uitstroom.kinds.aanmelding]
//! senders = ["zorgaanbieder"]
//! recipients = ["gemeente"]
//! consent = "required"
//! non_consent_grounds = ["acute_danger"]
//! undelivered_ttl = "14 days"
//! views.gemeente = ["identity", "contact", "housing", "support"]
//! # notify_case_managers = true   # datalek_melding only: always tell the case's managers
//! # required_fields = ["oorzaak"]  # payload fields the covenant requires for this kind
//! # answer_by = ["zorgaanbieder"]  # the recipient roles that owe the answer (default: all)
//! # answer_request_max = "10 workdays"  # a message may ask for an answer due within this
//! # event_time_from = ["waargenomen_op"]  # payload fields the term runs from ([`anchors`])
//!
//! # [[purposes.uitstroom.phases]]   # the phases of its cases, in order ([`phases`])
//! # name = "waakvlam"
//! # kinds = ["signaal"]
//! # review_within = "3 months"
//! # close_after = "12 months"
//! ```
//!
//! A covenant may declare kinds of its own with their schemas (`[kinds.<name>]`, inline
//! or in a file, see [`kinds`]).
//!
//! [`Policy::from_toml`] rejects a bad policy with the line and column of the problem.
//! [`json_schema`] is the JSON Schema of the policy file itself, generated from the raw
//! structs a policy is read into (`schemas/json/policy.schema.json`).

mod kinds;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::calendar::Calendar;
use crate::duration::PolicyDuration;
use crate::kind::{Category, Kind};
use crate::Error;

pub use crate::ids::Role;
pub use kinds::{DeclaredKinds, SchemaFiles};

pub mod anchors;
mod file_schema;
pub mod grounds;
pub use file_schema::json_schema;
pub mod phases;
pub use grounds::{Art6Basis, Ground, GroundDef, Grounds, SpecialCondition, SpecialData};
pub use phases::Phase;

/// Whether a kind may be sent only under the client's consent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentRule {
    /// A valid, unwithdrawn consent covering sender, recipients and purpose is needed,
    /// unless one of the kind's non-consent grounds is invoked.
    Required,
    /// The kind rests on the covenant itself (e.g. a breach notice under AVG art. 33).
    NotRequired,
}

/// The covenant a policy belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Covenant {
    /// Short stable id, used in envelope headers.
    pub id: String,
    /// The covenant's own name.
    pub name: String,
    /// The source document the rules are taken from.
    pub source: String,
}

/// A role parties can have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDef {
    /// What the role is, in words.
    pub description: String,
}

/// One processing purpose of the covenant. A case belongs to exactly one purpose, and a
/// message is tied to the purpose of its case (purpose binding, 000:297-301).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purpose {
    /// Id of the purpose within the policy.
    pub id: String,
    /// Human name of the purpose.
    pub name: String,
    /// The processing activity id, as in the parties' registers (Logboek Dataverwerkingen).
    pub processing_activity: String,
    /// The legal basis of the processing, in words with its source.
    pub legal_basis: String,
    /// The AVG art. 6(1) basis (`basis`); `None` in an older policy that names it in
    /// words only. Each kind may name its own ([`KindRule::basis`]).
    pub basis: Option<Art6Basis>,
    /// The art. 9(2) or art. 10 condition under which each special category (`support`,
    /// `justice`) is processed for this purpose ([`grounds::SPECIAL_CATEGORIES`]).
    pub special_data: BTreeMap<Category, SpecialData>,
    /// How long after a case closes its data must be deleted everywhere.
    pub case_retention: PolicyDuration,
    /// Roles that may open and close a case and manage its team.
    pub case_managers: BTreeSet<Role>,
    /// Roles that may register (and withdraw) a client's consent.
    pub consent_recorders: BTreeSet<Role>,
    /// How long before its case was opened a consent may have been obtained or take
    /// effect (`consent_backdating`, default [`DEFAULT_CONSENT_BACKDATING`]): a consent
    /// cannot be backdated without limit to cover earlier sharing.
    pub consent_backdating: PolicyDuration,
    /// The kinds this purpose allows, with their rules.
    pub kinds: BTreeMap<Kind, KindRule>,
    /// The phases of its cases, in order; empty: one implicit phase with every kind
    /// (see [`phases`]).
    pub phases: Vec<Phase>,
}

/// The default consent backdating window of a purpose: 30 days.
pub const DEFAULT_CONSENT_BACKDATING: PolicyDuration = PolicyDuration::Days(30);

/// The rules for one kind within one purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindRule {
    /// Roles that may send this kind.
    pub senders: BTreeSet<Role>,
    /// Roles that may receive this kind.
    pub recipients: BTreeSet<Role>,
    /// The categories each recipient role sees (its view). Every recipient role has one.
    pub views: BTreeMap<Role, BTreeSet<Category>>,
    /// Whether consent is required: its basis is consent ([`grounds`]).
    pub consent: ConsentRule,
    /// The AVG art. 6(1) basis the kind is sent under: its own `basis`, else the
    /// purpose's; `None` for an older policy's `consent = "not_required"` without one.
    pub basis: Option<Art6Basis>,
    /// The named grounds a sender may invoke for this kind: instead of consent, or (with
    /// a non-consent basis) to share outside its ordinary course. A flagged ground alerts
    /// the FGs ([`GroundDef::alert_fg`]).
    pub grounds: BTreeSet<Ground>,
    /// Every message must invoke one of `grounds` (a basis whose sharing the FGs review
    /// case by case).
    pub ground_required: bool,
    /// Deadline from the event time (observed-at, discovered-at) to acceptance.
    pub send_within: Option<PolicyDuration>,
    /// Deadline from delivery to the answer that refers to the message.
    pub answer_within: Option<PolicyDuration>,
    /// The kinds that count as an answer (default: `reactie`).
    pub answer_kinds: BTreeSet<Kind>,
    /// How long the broker keeps an undelivered body before it expires.
    pub undelivered_ttl: PolicyDuration,
    /// For a datalek_melding: the members of the affected cases who manage them (a role
    /// in the purpose's `case_managers`, e.g. Enschede's procesmanager, 004:608-614) are
    /// told of every breach, whether or not they exchanged messages about the case.
    pub notify_case_managers: bool,
    /// Payload fields this covenant requires for the kind beyond its schema (e.g. the
    /// breach items a covenant lists): a message without one is refused by the sending
    /// agent, naming the field.
    pub required_fields: BTreeSet<String>,
    /// The recipient roles that owe an answer within `answer_within`; empty: every
    /// recipient does. Overdue notices go only to those that owe one.
    pub answer_by: BTreeSet<Role>,
    /// The payload fields the `send_within` term runs from, in order: the first present
    /// gives the header's `event_time` ([`anchors`]); empty: the kind's own event field.
    pub event_time_from: Vec<String>,
    /// The term applies only to a message whose payload carries one of its anchors: every
    /// field of `event_time_from` is optional in the kind's schema, so a message without
    /// one (e.g. a form of a phase the term does not bind) has no `event_time` and no term.
    pub term_needs_anchor: bool,
    /// The longest term, from the broker's acceptance, a sender may ask an answer in with
    /// a single message's answer request ([`crate::envelope::AnswerRequest`]); `None`: the
    /// kind carries no request.
    pub answer_request_max: Option<PolicyDuration>,
}

/// A parsed and checked covenant policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The covenant.
    pub covenant: Covenant,
    /// The roles, by name.
    pub roles: BTreeMap<Role, RoleDef>,
    /// The purposes, by id.
    pub purposes: BTreeMap<String, Purpose>,
    /// The workday calendar (national holidays plus the policy's extra ones).
    pub calendar: Calendar,
    /// The content kinds the covenant declares itself (`[kinds.<name>]`), with their
    /// schemas; see [`Policy::kind_schema`].
    pub declared_kinds: DeclaredKinds,
    /// The grounds senders may invoke and the covenant's justification codes.
    pub grounds: Grounds,
}

impl Policy {
    /// Parse and check a self-contained policy (as signed: every declared kind's schema
    /// inline). The error names the line and what is wrong (the first problem in the
    /// file; [`Policy::check_all`] gives every one).
    pub fn from_toml(text: &str) -> Result<Policy, Error> {
        Policy::from_toml_with(text, &kinds::no_files)
    }

    /// Parse and check a policy whose kinds may name their schema in a file
    /// (`schema_file`), read with `files` (normally relative to the policy file's
    /// directory).
    pub fn from_toml_with(text: &str, files: SchemaFiles<'_>) -> Result<Policy, Error> {
        Policy::check_all_with(text, files).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Parse and check a self-contained policy, reporting every problem found; see
    /// [`Policy::check_all_with`].
    pub fn check_all(text: &str) -> Result<Policy, Vec<Error>> {
        Policy::check_all_with(text, &kinds::no_files)
    }

    /// The policy `text` made self-contained for signing: every kind's `schema_file` is
    /// read with `files`, checked against its `schema_sha256` and put inline, so that the
    /// signed text broker and agents receive holds the schema itself. Returns the new text
    /// and its policy (the same as `text` checked with `files`); a policy without
    /// `schema_file`s comes back unchanged.
    pub fn self_contained(
        text: &str,
        files: SchemaFiles<'_>,
    ) -> Result<(String, Policy), Vec<Error>> {
        let policy = Policy::check_all_with(text, files)?;
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            vec![Error::Policy {
                line: None,
                column: None,
                message: e.message().to_owned(),
            }]
        })?;
        let inlined = kinds::inline_files(text, &raw.kinds, files).map_err(|e| vec![e])?;
        let again = Policy::check_all(&inlined)?;
        if again != policy {
            return Err(vec![Error::Policy {
                line: None,
                column: None,
                message: "the policy with its schema files put inline differs from the policy \
                          as written"
                    .into(),
            }]);
        }
        Ok((inlined, again))
    }

    /// Parse and check a policy, reporting every problem found, in the order of the file
    /// (never an empty list). A syntax error stops the reading, so it comes alone; a
    /// problem in one kind rule or one purpose does not hide those in the others. A
    /// problem in a purpose's kind rules leaves its phases unchecked, so that no phase is
    /// blamed for a kind that was refused already. `schema_file`s are read with `files`.
    pub fn check_all_with(text: &str, files: SchemaFiles<'_>) -> Result<Policy, Vec<Error>> {
        let mut raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => line_col(text, span.start),
                None => (None, None),
            };
            vec![Error::Policy {
                line,
                column,
                message: e.message().to_owned(),
            }]
        })?;
        let declared =
            kinds::declare(text, std::mem::take(&mut raw.kinds), files).map_err(|e| vec![e])?;
        let grounds = grounds::grounds(
            std::mem::take(&mut raw.grounds),
            std::mem::take(&mut raw.justifications),
        )
        .map_err(|(at, message)| {
            let (line, column) = line_col(text, at);
            vec![Error::Policy {
                line,
                column,
                message,
            }]
        })?;
        let checker = Checker {
            text,
            declared: &declared,
            grounds: &grounds,
            more: std::cell::RefCell::default(),
        };
        let result = checker.check(raw);
        let mut errors = checker.more.into_inner();
        let policy = match result {
            Ok(policy) if errors.is_empty() => return Ok(policy),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        errors.extend(policy);
        let at = |e: &Error| match e {
            Error::Policy { line, column, .. } => (line.unwrap_or(0), column.unwrap_or(0)),
            _ => (0, 0),
        };
        errors.sort_by_key(at);
        Err(errors)
    }

    /// The rule for a kind within a purpose, if the purpose allows the kind.
    pub fn rule(&self, purpose: &str, kind: Kind) -> Option<&KindRule> {
        self.purposes.get(purpose)?.kinds.get(&kind)
    }

    /// Whether `role` is defined.
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains_key(role)
    }
}

impl KindRule {
    /// The categories `role` sees of this kind; empty when it is no recipient.
    pub fn view(&self, role: &Role) -> BTreeSet<Category> {
        self.views.get(role).cloned().unwrap_or_default()
    }
}

// ---- raw form, as written -------------------------------------------------------------
//
// These structs are what a policy file is read into, and the JSON Schema of the policy
// file is generated from them ([`file_schema`]): every field's doc comment is its
// description there. A new key is a field with a doc comment; a `Spanned<T>` field adds
// `#[schemars(with = "T")]` (a name type of `file_schema` where the text has a pattern).

/// A covenant policy: the covenant, its roles, its purposes with the message kinds each
/// allows, and the kinds the covenant declares itself.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ketenpost covenant policy")]
struct RawPolicy {
    /// The covenant this policy belongs to.
    covenant: RawCovenant,
    /// The roles parties can have, by name (an identifier: it travels in headers).
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_.:-]{1,64}$" }))]
    roles: BTreeMap<String, RawRole>,
    /// The processing purposes, by id (an identifier). A case belongs to one purpose.
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_.:-]{1,64}$" }))]
    purposes: BTreeMap<String, RawPurpose>,
    /// Message kinds the covenant declares itself, by name (1-40 of a-z, 0-9, '_',
    /// starting with a letter; not a built-in kind's name), each with its payload schema.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, kinds::RawKindDecl>")]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z][a-z0-9_]{0,39}$" }))]
    kinds: BTreeMap<String, Spanned<kinds::RawKindDecl>>,
    /// Grounds a sender may name, by name: a built-in one adjusted (acute_danger,
    /// legal_duty, conflict_van_plichten, meldrecht) or one the covenant declares.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, grounds::RawGround>")]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9_]{1,64}$" }))]
    grounds: BTreeMap<Spanned<String>, grounds::RawGround>,
    /// The covenant's closed list of justification codes (an identifier each), with what
    /// each means: a message sent on a ground names one.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_.:-]{1,64}$" }))]
    justifications: BTreeMap<String, Spanned<String>>,
}

/// The covenant a policy belongs to.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Covenant")]
struct RawCovenant {
    /// Short stable id (lowercase letters, digits, '-'), carried in every envelope header.
    #[schemars(with = "file_schema::CovenantId")]
    id: Spanned<String>,
    /// The covenant's own name.
    name: String,
    /// The source document the rules are taken from (e.g. a seed file name).
    #[serde(default)]
    source: String,
    /// Days off (YYYY-MM-DD) beyond the Dutch national holidays, for workday terms.
    #[serde(default)]
    #[schemars(with = "Vec<file_schema::Date>")]
    extra_holidays: Vec<Spanned<String>>,
}

/// A role parties can have.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Role")]
struct RawRole {
    /// What the role is, in words.
    #[serde(default)]
    description: String,
}

/// One processing purpose: a processing activity with its legal basis, retention, case
/// managers and the message kinds it allows.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Purpose")]
struct RawPurpose {
    /// Human name of the purpose.
    name: String,
    /// The processing activity id, as in the parties' registers (Logboek
    /// Dataverwerkingen); it is recorded in the audit trail.
    processing_activity: String,
    /// The legal basis of the processing, in words with its source (shown to the FG and
    /// in answers to access requests).
    legal_basis: String,
    /// The AVG art. 6(1) basis of the purpose: consent, contract, legal_obligation,
    /// vital_interest, public_task or legitimate_interest. Each kind may name its own.
    #[schemars(with = "Option<grounds::Art6Basis>")]
    basis: Option<Spanned<String>>,
    /// The condition under which special data travel for this purpose, per special
    /// category: `support` (AVG art. 9(2)) and `justice` (AVG art. 10).
    #[serde(default)]
    #[schemars(with = "grounds::RawSpecialDataTable")]
    special_data: BTreeMap<Spanned<String>, grounds::RawSpecialData>,
    /// How long after a case closes its data must be deleted everywhere (deletion
    /// orders follow).
    #[schemars(with = "PolicyDuration")]
    case_retention: Spanned<String>,
    /// Roles that may open and close a case, manage its team and move it between phases.
    #[schemars(with = "Vec<file_schema::Identifier>")]
    case_managers: Spanned<Vec<Spanned<String>>>,
    /// Roles that may register and withdraw a client's consent; needed when a kind
    /// requires consent.
    #[serde(default)]
    #[schemars(with = "Vec<file_schema::Identifier>")]
    consent_recorders: Vec<Spanned<String>>,
    /// How long before its case was opened a consent may have been obtained or take
    /// effect (default "30 days").
    #[schemars(with = "Option<PolicyDuration>")]
    consent_backdating: Option<Spanned<String>>,
    /// The message kinds this purpose allows, by kind name (a built-in kind or one
    /// declared under [kinds]), each with its rules.
    #[schemars(with = "BTreeMap<String, RawKind>")]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z][a-z0-9_]{0,39}$" }))]
    kinds: BTreeMap<String, Spanned<RawKind>>,
    /// The phases its cases go through, in order; a case opens in the first. Without
    /// phases every kind of the purpose is allowed while the case is open.
    #[serde(default)]
    phases: Vec<phases::RawPhase>,
}

/// The rules for one message kind within a purpose.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "KindRule")]
struct RawKind {
    /// Roles that may send this kind.
    #[schemars(with = "Vec<file_schema::Identifier>")]
    senders: Spanned<Vec<Spanned<String>>>,
    /// Roles that may receive this kind (need-to-know); each needs a view.
    #[schemars(with = "Vec<file_schema::Identifier>")]
    recipients: Spanned<Vec<Spanned<String>>>,
    /// Per recipient role, the data categories of the payload it sees (its view); the
    /// fields of other categories never reach it. Only categories the kind's schema uses.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<Category>>")]
    views: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// Whether the client's consent is required to send this kind ("required" is
    /// basis "consent"; "not_required" rests on the purpose's other basis, or on the
    /// covenant itself). Optional when the kind or its purpose names a basis.
    #[schemars(with = "Option<ConsentRule>")]
    consent: Option<Spanned<String>>,
    /// The AVG art. 6(1) basis this kind is sent under (default: its purpose's).
    #[schemars(with = "Option<grounds::Art6Basis>")]
    basis: Option<Spanned<String>>,
    /// Named grounds a sender may invoke for this kind: instead of consent, or outside
    /// the ordinary course of a non-consent basis (built in: acute_danger, legal_duty,
    /// conflict_van_plichten, meldrecht; others declared under [grounds]). Also read as
    /// `non_consent_grounds`, its older name.
    #[serde(default, alias = "non_consent_grounds")]
    #[schemars(with = "Vec<Ground>")]
    grounds: Vec<Spanned<String>>,
    /// Every message of this kind must name one of its grounds (a kind whose basis is
    /// not consent).
    #[schemars(with = "Option<bool>")]
    ground_required: Option<Spanned<bool>>,
    /// Term from the event time to acceptance by the broker (a late message is accepted
    /// and flagged).
    #[schemars(with = "Option<PolicyDuration>")]
    send_within: Option<Spanned<String>>,
    /// Term from delivery to the answer that refers to the message (in_reply_to).
    #[schemars(with = "Option<PolicyDuration>")]
    answer_within: Option<Spanned<String>>,
    /// The kinds that count as an answer (default: reactie, when answer_within is set).
    #[serde(default)]
    #[schemars(with = "Vec<Kind>")]
    answer_kinds: Vec<Spanned<String>>,
    /// How long the broker keeps an undelivered body before it expires (the sender is
    /// told).
    #[schemars(with = "PolicyDuration")]
    undelivered_ttl: Spanned<String>,
    /// datalek_melding only: also tell the managers of the affected cases (default
    /// false).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    notify_case_managers: Option<Spanned<bool>>,
    /// Payload fields the covenant requires beyond the kind's schema; the sending agent
    /// refuses a message without one, naming the field.
    #[serde(default)]
    #[schemars(with = "Vec<file_schema::FieldName>")]
    required_fields: Vec<Spanned<String>>,
    /// The recipient roles that owe an answer within answer_within (default: every
    /// recipient); only they get an answer clock and overdue notices.
    #[serde(default)]
    #[schemars(with = "Vec<file_schema::Identifier>")]
    answer_by: Vec<Spanned<String>>,
    /// The payload fields (a date or date-time) the send_within term runs from, in
    /// order: the first present sets the header's event_time (default: the kind's own
    /// event field).
    #[serde(default)]
    #[schemars(with = "Vec<file_schema::FieldName>")]
    event_time_from: Vec<Spanned<String>>,
    /// The longest term after acceptance a sender may ask an answer within, in the
    /// message's own answer request (header answer_request); without it the kind carries
    /// no request.
    #[schemars(with = "Option<PolicyDuration>")]
    answer_request_max: Option<Spanned<String>>,
}

struct Checker<'a> {
    text: &'a str,
    /// The kinds the policy declares, checked before the purposes that use them.
    declared: &'a DeclaredKinds,
    /// The grounds the policy knows, checked before the kinds that name them.
    grounds: &'a Grounds,
    /// Problems found so far beside the one a check returns: each purpose and each kind
    /// rule is checked even when another one failed.
    more: std::cell::RefCell<Vec<Error>>,
}

impl Checker<'_> {
    fn err<T>(&self, at: usize, message: String) -> Result<T, Error> {
        Err(self.problem(at, message))
    }

    fn problem(&self, at: usize, message: String) -> Error {
        let (line, column) = line_col(self.text, at);
        Error::Policy {
            line,
            column,
            message,
        }
    }

    /// The value of a check, or `None` with its problem noted.
    fn kept<T>(&self, checked: Result<T, Error>) -> Option<T> {
        checked.map_err(|e| self.note(e)).ok()
    }

    /// Keep a problem and go on checking.
    fn note(&self, e: Error) {
        self.more.borrow_mut().push(e);
    }

    /// If problems were noted since there were `before`, return the last one (the caller
    /// stops; [`Policy::check_all`] reports them all).
    fn stop_if_noted(&self, before: usize) -> Result<(), Error> {
        let mut more = self.more.borrow_mut();
        if more.len() > before {
            if let Some(e) = more.pop() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn check(&self, raw: RawPolicy) -> Result<Policy, Error> {
        let id = raw.covenant.id.get_ref();
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return self.err(
                raw.covenant.id.span().start,
                "covenant id must be lowercase letters, digits and '-'".into(),
            );
        }
        let mut extra = Vec::new();
        for d in &raw.covenant.extra_holidays {
            match chrono::NaiveDate::parse_from_str(d.get_ref(), "%Y-%m-%d") {
                Ok(date) => extra.push(date),
                Err(_) => {
                    return self.err(
                        d.span().start,
                        format!("extra holiday '{}' is not a YYYY-MM-DD date", d.get_ref()),
                    )
                }
            }
        }
        if raw.roles.is_empty() {
            return self.err(0, "the policy defines no roles".into());
        }
        // Role and purpose names travel in message headers, which carry identifiers only.
        for name in raw.roles.keys().chain(raw.purposes.keys()) {
            if !crate::ids::is_identifier(name) {
                return self.err(
                    0,
                    format!(
                        "'{name}' is not a valid role or purpose name: 1-64 letters, digits, \
                         '_', '.', ':' or '-'"
                    ),
                );
            }
        }
        let roles: BTreeMap<Role, RoleDef> = raw
            .roles
            .into_iter()
            .map(|(k, v)| {
                (
                    Role::new(k),
                    RoleDef {
                        description: v.description,
                    },
                )
            })
            .collect();
        if raw.purposes.is_empty() {
            return self.err(0, "the policy defines no purposes".into());
        }
        let mut purposes = BTreeMap::new();
        let before = self.more.borrow().len();
        for (pid, rp) in raw.purposes {
            match self.purpose(&roles, pid.clone(), rp) {
                Ok(purpose) => {
                    purposes.insert(pid, purpose);
                }
                Err(e) => self.note(e),
            }
        }
        self.stop_if_noted(before)?;
        Ok(Policy {
            covenant: Covenant {
                id: raw.covenant.id.into_inner(),
                name: raw.covenant.name,
                source: raw.covenant.source,
            },
            roles,
            purposes,
            calendar: Calendar::with_extra_holidays(extra),
            declared_kinds: self.declared.clone(),
            grounds: self.grounds.clone(),
        })
    }

    fn purpose(
        &self,
        roles: &BTreeMap<Role, RoleDef>,
        id: String,
        rp: RawPurpose,
    ) -> Result<Purpose, Error> {
        // Every problem of the purpose's own keys and of each kind rule is noted; the
        // purpose stops after them all.
        let before = self.more.borrow().len();
        let case_retention = self.kept(self.duration(&rp.case_retention));
        let case_managers = self
            .kept(self.roles(roles, rp.case_managers.get_ref()))
            .unwrap_or_default();
        if case_managers.is_empty() && self.more.borrow().len() == before {
            self.note(self.problem(
                rp.case_managers.span().start,
                format!("purpose '{id}' names no case_managers: nobody could open a case"),
            ));
        }
        let consent_recorders = self
            .kept(self.roles(roles, &rp.consent_recorders))
            .unwrap_or_default();
        let consent_backdating = match &rp.consent_backdating {
            Some(d) => self.kept(self.duration(d)),
            None => Some(DEFAULT_CONSENT_BACKDATING),
        };
        let basis = rp
            .basis
            .as_ref()
            .and_then(|b| self.kept(grounds::basis(b).or_else(|(at, m)| self.err(at, m))));
        let special_data = self
            .kept(grounds::special_data(rp.special_data).or_else(|(at, m)| self.err(at, m)))
            .unwrap_or_default();
        let mut kinds = BTreeMap::new();
        for (kname, rk) in rp.kinds {
            let at = rk.span().start;
            let kind = match kname.parse::<Kind>() {
                Ok(k) if k.is_builtin() || self.declared.contains_key(&k) => k,
                _ => {
                    self.note(self.problem(
                        at,
                        format!(
                            "unknown message kind '{kname}' (a covenant's own kind needs a \
                             [kinds.{kname}] table with its schema)"
                        ),
                    ));
                    continue;
                }
            };
            if !kind.is_content() {
                self.note(self.problem(
                    at,
                    format!(
                        "kind '{kname}' is a control record; only content kinds (the \
                         built-in aanmelding, aanmeldbericht, signaal, reactie, \
                         datalek_melding, verstrekking_derden, correctie, or a declared \
                         kind) are configured per purpose"
                    ),
                ));
                continue;
            }
            let rule = match self.kind(roles, kind, basis, rk.into_inner()) {
                Ok(rule) => rule,
                Err(e) => {
                    self.note(e);
                    continue;
                }
            };
            if rule.consent == ConsentRule::Required && consent_recorders.is_empty() {
                self.note(self.problem(
                    at,
                    format!(
                        "kind '{kname}' requires consent but purpose '{id}' names no \
                         consent_recorders"
                    ),
                ));
                continue;
            }
            kinds.insert(kind, rule);
        }
        self.stop_if_noted(before)?;
        let (Some(case_retention), Some(consent_backdating)) = (case_retention, consent_backdating)
        else {
            return self.err(0, format!("purpose '{id}' is incomplete"));
        };
        if kinds.is_empty() {
            return self.err(0, format!("purpose '{id}' allows no message kinds"));
        }
        let phases = self.phases(&id, &kinds.keys().copied().collect(), rp.phases)?;
        Ok(Purpose {
            id,
            name: rp.name,
            processing_activity: rp.processing_activity,
            legal_basis: rp.legal_basis,
            basis,
            special_data,
            case_retention,
            case_managers,
            consent_recorders,
            consent_backdating,
            kinds,
            phases,
        })
    }

    fn kind(
        &self,
        roles: &BTreeMap<Role, RoleDef>,
        kind: Kind,
        purpose_basis: Option<Art6Basis>,
        rk: RawKind,
    ) -> Result<KindRule, Error> {
        let senders = self.roles(roles, rk.senders.get_ref())?;
        if senders.is_empty() {
            return self.err(rk.senders.span().start, format!("{kind}: no senders"));
        }
        let recipients = self.roles(roles, rk.recipients.get_ref())?;
        if recipients.is_empty() {
            return self.err(rk.recipients.span().start, format!("{kind}: no recipients"));
        }
        let Some(schema) = self.kind_schema(kind) else {
            return self.err(0, format!("{kind}: no schema for this kind"));
        };
        let used = schema.categories();
        let mut views = BTreeMap::new();
        for (role, cats) in &rk.views {
            let r = Role::new(role.clone());
            if !roles.contains_key(&r) {
                return self.err(
                    cats.span().start,
                    format!("{kind}: view for unknown role '{role}'"),
                );
            }
            if !recipients.contains(&r) {
                return self.err(
                    cats.span().start,
                    format!("{kind}: view for '{role}', which is not a recipient of this kind"),
                );
            }
            let mut set = BTreeSet::new();
            for c in cats.get_ref() {
                let cat: Category = match c.get_ref().parse() {
                    Ok(cat) => cat,
                    Err(_) => {
                        return self.err(
                            c.span().start,
                            format!(
                                "{kind}: unknown data category '{}' (expected one of identity, \
                                 contact, housing, income, debt, support, justice, case)",
                                c.get_ref()
                            ),
                        )
                    }
                };
                if !used.contains(&cat) {
                    return self.err(
                        c.span().start,
                        format!("{kind}: category '{cat}' does not occur in this kind"),
                    );
                }
                set.insert(cat);
            }
            if set.is_empty() {
                return self.err(
                    cats.span().start,
                    format!("{kind}: view for '{role}' is empty"),
                );
            }
            views.insert(r, set);
        }
        if let Some(missing) = recipients.iter().find(|r| !views.contains_key(*r)) {
            return self.err(
                rk.recipients.span().start,
                format!(
                    "{kind}: recipient role '{missing}' has no view (add views.{missing} = [...])"
                ),
            );
        }
        let (consent, basis) = self.kind_basis(kind, purpose_basis, &rk)?;
        let mut grounds = BTreeSet::new();
        for g in &rk.grounds {
            match Ground::new(g.get_ref()).filter(|g| self.grounds.get(g).is_some()) {
                Some(ground) => {
                    grounds.insert(ground);
                }
                None => {
                    return self.err(
                        g.span().start,
                        format!(
                            "{kind}: unknown ground '{}' (known: {}; declare others in \
                             [grounds.<name>])",
                            g.get_ref(),
                            self.grounds
                                .defs
                                .keys()
                                .map(|g| g.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                }
            }
        }
        let ground_required = match &rk.ground_required {
            Some(flag) if *flag.get_ref() && consent == ConsentRule::Required => {
                return self.err(
                    flag.span().start,
                    format!(
                        "{kind}: ground_required is for a kind whose basis is not consent \
                         (under consent, grounds replace it only where needed)"
                    ),
                )
            }
            Some(flag) if *flag.get_ref() && grounds.is_empty() => {
                return self.err(
                    flag.span().start,
                    format!("{kind}: ground_required needs the grounds it may be sent on"),
                )
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        let send_within = rk
            .send_within
            .as_ref()
            .map(|d| self.duration(d))
            .transpose()?;
        let answer_within = rk
            .answer_within
            .as_ref()
            .map(|d| self.duration(d))
            .transpose()?;
        let mut answer_kinds = BTreeSet::new();
        for k in &rk.answer_kinds {
            match k.get_ref().parse::<Kind>() {
                Ok(k) if k.is_content() && self.kind_schema(k).is_some() => {
                    answer_kinds.insert(k);
                }
                _ => {
                    return self.err(
                        k.span().start,
                        format!(
                            "{kind}: answer kind '{}' is not a content kind",
                            k.get_ref()
                        ),
                    )
                }
            }
        }
        let answer_request_max = rk
            .answer_request_max
            .as_ref()
            .map(|d| self.duration(d))
            .transpose()?;
        if answer_kinds.is_empty() && (answer_within.is_some() || answer_request_max.is_some()) {
            answer_kinds.insert(Kind::Reactie);
        }
        let undelivered_ttl = self.duration(&rk.undelivered_ttl)?;
        let notify_case_managers = match &rk.notify_case_managers {
            Some(flag) if kind != Kind::DatalekMelding => {
                return self.err(
                    flag.span().start,
                    format!("{kind}: notify_case_managers is for datalek_melding only"),
                )
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        let mut required_fields = BTreeSet::new();
        for f in &rk.required_fields {
            if schema.category(f.get_ref()).is_none() {
                return self.err(
                    f.span().start,
                    format!("{kind}: '{}' is not a field of its payload", f.get_ref()),
                );
            }
            required_fields.insert(f.get_ref().clone());
        }
        let mut answer_by = BTreeSet::new();
        for r in &rk.answer_by {
            let role = Role::new(r.get_ref());
            if !recipients.contains(&role) {
                return self.err(
                    r.span().start,
                    format!(
                        "{kind}: answer_by role '{}' is not one of its recipients",
                        r.get_ref()
                    ),
                );
            }
            answer_by.insert(role);
        }
        if !answer_by.is_empty() && answer_within.is_none() {
            return self.err(
                rk.answer_by[0].span().start,
                format!("{kind}: answer_by needs answer_within"),
            );
        }
        let event_time_from = self.anchors(kind, &rk.event_time_from)?;
        let term_needs_anchor =
            !event_time_from.is_empty() && event_time_from.iter().all(|f| !schema.is_required(f));
        Ok(KindRule {
            senders,
            recipients,
            views,
            consent,
            basis,
            grounds,
            ground_required,
            send_within,
            answer_within,
            answer_kinds,
            undelivered_ttl,
            notify_case_managers,
            required_fields,
            answer_by,
            event_time_from,
            term_needs_anchor,
            answer_request_max,
        })
    }

    /// A kind's consent rule and art. 6 basis: its own `basis`, its `consent` key (older
    /// policies), or the purpose's basis, in that order; the two keys must agree.
    fn kind_basis(
        &self,
        kind: Kind,
        purpose_basis: Option<Art6Basis>,
        rk: &RawKind,
    ) -> Result<(ConsentRule, Option<Art6Basis>), Error> {
        let consent = match rk.consent.as_ref() {
            None => None,
            Some(c) => match c.get_ref().as_str() {
                "required" => Some(ConsentRule::Required),
                "not_required" => Some(ConsentRule::NotRequired),
                other => {
                    return self.err(
                        c.span().start,
                        format!(
                            "{kind}: consent must be \"required\" or \"not_required\", not \
                             '{other}'"
                        ),
                    )
                }
            },
        };
        let own = match &rk.basis {
            Some(b) => Some(grounds::basis(b).or_else(|(at, m)| self.err(at, m))?),
            None => None,
        };
        let rule_of = |b: Art6Basis| {
            if b == Art6Basis::Consent {
                ConsentRule::Required
            } else {
                ConsentRule::NotRequired
            }
        };
        match (own, consent) {
            (Some(b), Some(c)) if rule_of(b) != c => self.err(
                rk.consent.as_ref().map_or(0, |c| c.span().start),
                format!(
                    "{kind}: basis '{b}' and consent = \"{}\" disagree (the basis alone \
                     is enough)",
                    if c == ConsentRule::Required {
                        "required"
                    } else {
                        "not_required"
                    }
                ),
            ),
            (Some(b), _) => Ok((rule_of(b), Some(b))),
            (None, Some(ConsentRule::Required)) => {
                Ok((ConsentRule::Required, Some(Art6Basis::Consent)))
            }
            (None, Some(ConsentRule::NotRequired)) => Ok((
                ConsentRule::NotRequired,
                purpose_basis.filter(|b| *b != Art6Basis::Consent),
            )),
            (None, None) => match purpose_basis {
                Some(b) => Ok((rule_of(b), Some(b))),
                None => self.err(
                    rk.senders.span().start,
                    format!(
                        "{kind}: no legal basis: give the kind a basis (or consent = \
                         \"required\" / \"not_required\"), or its purpose a basis"
                    ),
                ),
            },
        }
    }

    fn roles(
        &self,
        roles: &BTreeMap<Role, RoleDef>,
        names: &[Spanned<String>],
    ) -> Result<BTreeSet<Role>, Error> {
        let mut out = BTreeSet::new();
        for n in names {
            let r = Role::new(n.get_ref().clone());
            if !roles.contains_key(&r) {
                return self.err(
                    n.span().start,
                    format!(
                        "unknown role '{}' (defined roles: {})",
                        n.get_ref(),
                        roles
                            .keys()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            out.insert(r);
        }
        Ok(out)
    }

    fn duration(&self, d: &Spanned<String>) -> Result<PolicyDuration, Error> {
        d.get_ref()
            .parse::<PolicyDuration>()
            .or_else(|e| self.err(d.span().start, e.to_string()))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (Option<usize>, Option<usize>) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (Some(line), Some(column))
}

#[cfg(test)]
mod tests;
