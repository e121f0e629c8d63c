//! Case phases: the stages an open case of a purpose goes through, and which kinds each
//! allows (e.g. Walcheren's active Team Thuis period and the "waakvlam" after it, in which
//! rent-arrears and nuisance signals still reach the gemeente: 000:1150-1154,
//! 000:1290-1303, 001:236-248).
//!
//! ```toml
//! [[purposes.uitstroom.phases]]
//! name = "actief"                      # the first phase is the one a case opens in
//! review_within = "6 months"           # the case managers are told when it is due
//!
//! [[purposes.uitstroom.phases]]
//! name = "waakvlam"
//! kinds = ["signaal", "reactie", "datalek_melding"]
//! close_after = "12 months"            # the broker closes the case; retention starts
//! ```
//!
//! A purpose without phases has one implicit phase that allows every kind of the purpose.
//! "closed" is not a phase: closing (by a case manager or by `close_after`) ends every
//! phase. A case manager moves an open case to any declared phase with a case change
//! (`CaseOp::EnterPhase`); the phase's terms count from the moment it was entered.

use std::collections::BTreeSet;

use serde::Deserialize;
use toml::Spanned;

use crate::duration::PolicyDuration;
use crate::kind::Kind;

/// One phase of a purpose's cases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    /// The phase's name (an identifier: it travels in case-change records and the audit
    /// trail).
    pub name: String,
    /// The kinds a message may have while a case is in this phase. Always a subset of the
    /// purpose's kinds; a breach notice is allowed in every phase (its data are held).
    pub kinds: BTreeSet<Kind>,
    /// After this long in the phase, the case managers get a notice that the case is due
    /// for review (once per time the phase is entered).
    pub review_within: Option<PolicyDuration>,
    /// After this long in the phase, the broker closes the case (and its retention starts).
    pub close_after: Option<PolicyDuration>,
}

/// One phase of a purpose's cases, as written.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Phase")]
pub(super) struct RawPhase {
    /// The phase's name (an identifier; not "closed").
    #[schemars(with = "super::file_schema::Identifier")]
    pub(super) name: Spanned<String>,
    /// The kinds a message may have while a case is in the phase (default: every kind of
    /// the purpose); datalek_melding and correctie travel in every phase.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Kind>>")]
    pub(super) kinds: Option<Vec<Spanned<String>>>,
    /// After this long in the phase the case managers are told the case is due for
    /// review (once per time the phase is entered).
    #[schemars(with = "Option<PolicyDuration>")]
    pub(super) review_within: Option<Spanned<String>>,
    /// After this long in the phase the broker closes the case (its retention starts).
    #[schemars(with = "Option<PolicyDuration>")]
    pub(super) close_after: Option<Spanned<String>>,
}

/// The phases of a purpose, in the order declared. Empty: one implicit phase with every
/// kind.
pub fn first(phases: &[Phase]) -> Option<&Phase> {
    phases.first()
}

/// The phase called `name`, or the first one when the case has none recorded (it opened
/// before the phase was declared, or entered no phase yet).
pub fn find<'a>(phases: &'a [Phase], name: Option<&str>) -> Option<&'a Phase> {
    match name {
        Some(n) => phases.iter().find(|p| p.name == n),
        None => first(phases),
    }
}

/// Whether a message of `kind` may be sent while a case is in phase `name` (`None`: the
/// phase it opened in). Without phases, every kind of the purpose is allowed; a breach
/// notice and a correction always are (they concern data already shared, whatever the
/// case's phase: [`Kind::routed_by_audit`]). A phase the policy no longer declares allows
/// nothing but those, until a case manager moves the case on.
pub fn allows(phases: &[Phase], name: Option<&str>, kind: Kind) -> bool {
    if phases.is_empty() || kind.routed_by_audit() {
        return true;
    }
    find(phases, name).is_some_and(|p| p.kinds.contains(&kind))
}

impl super::Checker<'_> {
    /// Check a purpose's phases against its kinds.
    pub(super) fn phases(
        &self,
        purpose: &str,
        kinds: &BTreeSet<Kind>,
        raw: Vec<RawPhase>,
    ) -> Result<Vec<Phase>, crate::Error> {
        let mut out: Vec<Phase> = Vec::new();
        for rp in raw {
            let at = rp.name.span().start;
            let name = rp.name.into_inner();
            if !crate::ids::is_identifier(&name) {
                return self.err(
                    at,
                    format!(
                        "phase '{name}' of purpose '{purpose}' is not a valid name: 1-64 \
                         letters, digits, '_', '.', ':' or '-'"
                    ),
                );
            }
            if name == "closed" {
                return self.err(
                    at,
                    format!(
                        "purpose '{purpose}': 'closed' is not a phase; a case closes by a case \
                         change or by a phase's close_after"
                    ),
                );
            }
            if out.iter().any(|p| p.name == name) {
                return self.err(
                    at,
                    format!("purpose '{purpose}' declares phase '{name}' twice"),
                );
            }
            let phase_kinds = match rp.kinds {
                None => kinds.clone(),
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for k in list {
                        match k.get_ref().parse::<Kind>() {
                            Ok(kind) if kinds.contains(&kind) => {
                                set.insert(kind);
                            }
                            _ => {
                                return self.err(
                                    k.span().start,
                                    format!(
                                        "phase '{name}': '{}' is not a kind of purpose \
                                         '{purpose}'",
                                        k.get_ref()
                                    ),
                                )
                            }
                        }
                    }
                    set
                }
            };
            let review_within = rp
                .review_within
                .as_ref()
                .map(|d| self.duration(d))
                .transpose()?;
            let close_after = rp
                .close_after
                .as_ref()
                .map(|d| self.duration(d))
                .transpose()?;
            out.push(Phase {
                name,
                kinds: phase_kinds,
                review_within,
                close_after,
            });
        }
        Ok(out)
    }
}
