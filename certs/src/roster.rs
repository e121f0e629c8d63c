//! The roster: which parties the dev federation has.
//!
//! By default there is one party per role of the policy, named after the role
//! ("Gemeente 1 (dev)") with a made-up OIN. A roster file overrides that:
//!
//! ```toml
//! [[party]]
//! name = "Gemeente Vlissingen (dev)"
//! oin = "00000001000001000001"
//! roles = ["gemeente"]
//! # fg_contact = "fg@vlissingen.example"   # optional, derived from the name otherwise
//! ```

use std::collections::BTreeSet;

use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::policy::{Policy, Role};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest organisation name accepted: X.520 `ub-common-name`, since the name becomes
/// the certificate's CN and O.
pub const MAX_NAME_CHARS: usize = 64;

/// The parties of a dev federation, in order. The first party is the one the negative
/// certificates (expired, revoked, foreign) impersonate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    /// The parties; `[[party]]` in TOML.
    #[serde(rename = "party", default)]
    pub parties: Vec<RosterParty>,
}

/// One party of the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterParty {
    /// Organisation name; becomes CN and O of its certificate and its directory name.
    pub name: String,
    /// The organisation's OIN; becomes the certificate's subject serialNumber.
    pub oin: Oin,
    /// Its roles under the policy.
    pub roles: Vec<Role>,
    /// The FG's office mailbox; `fg@<slug of name>.example` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fg_contact: Option<String>,
}

impl Roster {
    /// Parse a roster file. Call [`Roster::check`] before use.
    pub fn from_toml(text: &str) -> Result<Roster, Error> {
        toml::from_str(text).map_err(|e| Error::Roster {
            path: None,
            reason: e.to_string(),
        })
    }

    /// One party per role of the policy, in the policy's (sorted) role order: party `j` of
    /// role `i` (both counted from 1) gets OIN `00000001` + `i` and `j` as six digits each,
    /// so OINs are stable across runs and never collide.
    pub fn default_for(policy: &Policy) -> Result<Roster, Error> {
        let mut parties = Vec::with_capacity(policy.roles.len());
        for (i, role) in policy.roles.keys().enumerate() {
            let oin = dev_oin(i + 1, 1)?;
            parties.push(RosterParty {
                name: format!("{} 1 (dev)", title(role.as_str())),
                oin,
                roles: vec![role.clone()],
                fg_contact: None,
            });
        }
        Ok(Roster { parties })
    }

    /// Check the roster against the policy: at least one party, unique OINs, every party
    /// has roles and every role exists, names fit a certificate.
    pub fn check(&self, policy: &Policy) -> Result<(), Error> {
        let bad = |reason: String| Error::Roster { path: None, reason };
        if self.parties.is_empty() {
            return Err(bad("the roster names no parties".into()));
        }
        let mut seen = BTreeSet::new();
        for p in &self.parties {
            if !seen.insert(&p.oin) {
                return Err(bad(format!("OIN {} is listed twice", p.oin)));
            }
            let name = p.name.trim();
            if name.is_empty() || name.len() != p.name.len() {
                return Err(bad(format!(
                    "party {}: name must be non-empty without surrounding spaces",
                    p.oin
                )));
            }
            if p.name.chars().count() > MAX_NAME_CHARS || p.name.chars().any(char::is_control) {
                return Err(bad(format!(
                    "party {}: name must be at most {MAX_NAME_CHARS} characters, without \
                     control characters",
                    p.oin
                )));
            }
            if p.roles.is_empty() {
                return Err(bad(format!("party {} has no roles", p.oin)));
            }
            for r in &p.roles {
                if !policy.has_role(r) {
                    return Err(bad(format!(
                        "party {} has role '{r}', which the policy does not define \
                         (defined: {})",
                        p.oin,
                        policy
                            .roles
                            .keys()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            if let Some(fg) = &p.fg_contact {
                if fg.trim().is_empty() {
                    return Err(bad(format!("party {}: fg_contact is empty", p.oin)));
                }
            }
        }
        Ok(())
    }
}

impl RosterParty {
    /// The FG contact: the one given, or `fg@<slug>.example`, an office mailbox rather than
    /// a person.
    pub fn fg_contact(&self) -> String {
        match &self.fg_contact {
            Some(c) => c.clone(),
            None => {
                let slug = slug(&self.name);
                if slug.is_empty() {
                    format!("fg@{}.example", self.oin)
                } else {
                    format!("fg@{slug}.example")
                }
            }
        }
    }
}

/// A dev OIN: `00000001`, then `a` and `b` as six digits each.
pub(crate) fn dev_oin(a: usize, b: usize) -> Result<Oin, Error> {
    format!("00000001{a:06}{b:06}")
        .parse()
        .map_err(|_| Error::Roster {
            path: None,
            reason: "too many roles to number them in a dev OIN".into(),
        })
}

/// "zorg_aanbieder" -> "Zorg aanbieder".
fn title(role: &str) -> String {
    let spaced: String = role
        .chars()
        .map(|c| if c == '_' || c == '-' { ' ' } else { c })
        .collect();
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// Lowercase ASCII letters and digits, runs of anything else turned into one '-'.
fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_titles() {
        assert_eq!(slug("Gemeente 1 (dev)"), "gemeente-1-dev");
        assert_eq!(slug("  Stichting Één & Twee "), "stichting-n-twee");
        assert_eq!(slug("()"), "");
        assert_eq!(title("zorg_aanbieder"), "Zorg aanbieder");
        assert_eq!(title("gemeente"), "Gemeente");
    }

    #[test]
    fn dev_oins_are_twenty_digits_and_distinct() {
        let a = dev_oin(1, 1).map(|o| o.to_string()).ok();
        let b = dev_oin(2, 1).map(|o| o.to_string()).ok();
        assert_eq!(a.as_deref(), Some("00000001000001000001"));
        assert_eq!(b.as_deref(), Some("00000001000002000001"));
        assert!(dev_oin(1_000_000, 1).is_err());
    }
}
