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
//! A covenant may declare kinds of its own with their schemas (`[kinds.<name>]`, see
//! [`kinds`]).
//!
//! [`Policy::from_toml`] rejects a bad policy with the line and column of the problem.

mod kinds;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::calendar::Calendar;
use crate::duration::PolicyDuration;
use crate::kind::{Category, Kind};
use crate::Error;

pub use crate::ids::Role;
pub use kinds::DeclaredKinds;

pub mod anchors;
pub mod phases;
pub use phases::Phase;

/// A ground for sharing without the client's consent (e.g. 002:333-344, afspraak 8f).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NonConsentGround {
    /// Acute danger to life, serious harm to the client or another, or to public safety
    /// (002:333-340, 8f-i).
    AcuteDanger,
    /// Sharing is necessary to fulfil a legal obligation (002:341-342, 8f-ii).
    LegalDuty,
}

impl NonConsentGround {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NonConsentGround::AcuteDanger => "acute_danger",
            NonConsentGround::LegalDuty => "legal_duty",
        }
    }
}

impl fmt::Display for NonConsentGround {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a kind may be sent only under the client's consent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
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
    /// Whether consent is required.
    pub consent: ConsentRule,
    /// Grounds that may replace consent for this kind; using one alerts the FGs.
    pub non_consent_grounds: BTreeSet<NonConsentGround>,
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
}

impl Policy {
    /// Parse and check a policy. The error names the line and what is wrong (the first
    /// problem in the file; [`Policy::check_all`] gives every one).
    pub fn from_toml(text: &str) -> Result<Policy, Error> {
        Policy::check_all(text).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Parse and check a policy, reporting every problem found, in the order of the file
    /// (never an empty list). A syntax error stops the reading, so it comes alone; a
    /// problem in one kind rule or one purpose does not hide those in the others. A
    /// problem in a purpose's kind rules leaves its phases unchecked, so that no phase is
    /// blamed for a kind that was refused already.
    pub fn check_all(text: &str) -> Result<Policy, Vec<Error>> {
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
        let declared = kinds::declare(text, std::mem::take(&mut raw.kinds)).map_err(|e| vec![e])?;
        let checker = Checker {
            text,
            declared: &declared,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    covenant: RawCovenant,
    roles: BTreeMap<String, RawRole>,
    purposes: BTreeMap<String, RawPurpose>,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<kinds::RawKindDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCovenant {
    id: Spanned<String>,
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    extra_holidays: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    name: String,
    processing_activity: String,
    legal_basis: String,
    case_retention: Spanned<String>,
    case_managers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    consent_recorders: Vec<Spanned<String>>,
    consent_backdating: Option<Spanned<String>>,
    kinds: BTreeMap<String, Spanned<RawKind>>,
    #[serde(default)]
    phases: Vec<phases::RawPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    senders: Spanned<Vec<Spanned<String>>>,
    recipients: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    views: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    consent: Spanned<String>,
    #[serde(default)]
    non_consent_grounds: Vec<Spanned<String>>,
    send_within: Option<Spanned<String>>,
    answer_within: Option<Spanned<String>>,
    #[serde(default)]
    answer_kinds: Vec<Spanned<String>>,
    undelivered_ttl: Spanned<String>,
    #[serde(default)]
    notify_case_managers: Option<Spanned<bool>>,
    #[serde(default)]
    required_fields: Vec<Spanned<String>>,
    #[serde(default)]
    answer_by: Vec<Spanned<String>>,
    #[serde(default)]
    event_time_from: Vec<Spanned<String>>,
    answer_request_max: Option<Spanned<String>>,
}

struct Checker<'a> {
    text: &'a str,
    /// The kinds the policy declares, checked before the purposes that use them.
    declared: &'a DeclaredKinds,
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
            let rule = match self.kind(roles, kind, rk.into_inner()) {
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
        let consent = match rk.consent.get_ref().as_str() {
            "required" => ConsentRule::Required,
            "not_required" => ConsentRule::NotRequired,
            other => {
                return self.err(
                    rk.consent.span().start,
                    format!(
                        "{kind}: consent must be \"required\" or \"not_required\", not '{other}'"
                    ),
                )
            }
        };
        let mut grounds = BTreeSet::new();
        for g in &rk.non_consent_grounds {
            let ground = match g.get_ref().as_str() {
                "acute_danger" => NonConsentGround::AcuteDanger,
                "legal_duty" => NonConsentGround::LegalDuty,
                other => {
                    return self.err(
                        g.span().start,
                        format!(
                            "{kind}: unknown non-consent ground '{other}' (expected acute_danger \
                             or legal_duty)"
                        ),
                    )
                }
            };
            grounds.insert(ground);
        }
        if consent == ConsentRule::NotRequired && !grounds.is_empty() {
            return self.err(
                rk.consent.span().start,
                format!("{kind}: non_consent_grounds only make sense when consent is required"),
            );
        }
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
            non_consent_grounds: grounds,
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
