//! `policy explain`: a policy as a table an FG can read and sign off. The kinds the
//! covenant declares itself, with every field and its data category; per purpose: its
//! processing activity, legal basis, case managers, consent recorders, case retention and
//! phases (with the kinds each allows and its terms); per kind: who may send to whom,
//! which fields and categories each recipient
//! role sees, the legal basis and the grounds a sender may name (and whether each alerts
//! the FGs), and the terms. The grounds and the covenant's justification codes come first,
//! and a purpose through which health or justice data travel without an art. 9 or art. 10
//! condition is pointed out.

use std::fmt::Write as _;

use crate::policy::{grounds::SPECIAL_CATEGORIES, Art6Basis, ConsentRule, Policy};

/// The plain-text explanation of `policy`.
pub fn explain(policy: &Policy) -> String {
    let mut out = String::new();
    let c = &policy.covenant;
    let _ = writeln!(out, "Covenant {} ({})", c.name, c.id);
    let _ = writeln!(out, "Source: {}", c.source);
    let _ = writeln!(out);
    let _ = writeln!(out, "Roles:");
    for (role, def) in &policy.roles {
        let _ = writeln!(out, "  {role}: {}", def.description);
    }
    if !policy.declared_kinds.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Kinds this covenant declares:");
        for schema in policy.declared_kinds.values() {
            let _ = writeln!(out, "  {}: {}", schema.kind(), schema.description());
            for f in schema.fields() {
                let _ = writeln!(out, "    {} ({})", f.name, f.category);
            }
        }
    }
    let used: std::collections::BTreeSet<_> = policy
        .purposes
        .values()
        .flat_map(|p| p.kinds.values())
        .flat_map(|r| r.grounds.iter())
        .collect();
    if !used.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Grounds a sender may name:");
        for g in used {
            let Some(def) = policy.grounds.get(g) else {
                continue;
            };
            let source = if def.source.is_empty() {
                String::new()
            } else {
                format!(" ({})", def.source)
            };
            let alert = if def.alert_fg {
                "each use alerts the FGs"
            } else {
                "recorded for the FGs' review, no alert"
            };
            let _ = writeln!(out, "  {g}: {}{source}; {alert}", def.description);
            if let Some(codes) = &def.justifications {
                let _ = writeln!(out, "    justifications: {}", join(codes));
            }
        }
    }
    if policy.grounds.justifications.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Justification codes: no closed list; a sender gives a code into its own file"
        );
    } else {
        let _ = writeln!(out);
        let _ = writeln!(out, "Justification codes (a sender names one of these):");
        for (code, text) in &policy.grounds.justifications {
            let _ = writeln!(out, "  {code}: {text}");
        }
    }
    for p in policy.purposes.values() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Purpose {} ({})", p.id, p.name);
        let _ = writeln!(out, "  processing activity: {}", p.processing_activity);
        let _ = writeln!(out, "  legal basis: {}", p.legal_basis);
        match p.basis {
            Some(b) => {
                let _ = writeln!(out, "  art. 6 basis: {b} ({})", b.article());
            }
            None => {
                let _ = writeln!(out, "  art. 6 basis: not declared (see the legal basis)");
            }
        }
        for (cat, article) in SPECIAL_CATEGORIES {
            let travels = p
                .kinds
                .values()
                .any(|r| r.views.values().any(|v| v.contains(&cat)));
            match p.special_data.get(&cat) {
                Some(sd) => {
                    let source = if sd.source.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", sd.source)
                    };
                    let _ = writeln!(
                        out,
                        "  {cat} data, {article}: {}{source}",
                        sd.condition.article()
                    );
                }
                None if travels => {
                    let _ = writeln!(
                        out,
                        "  {cat} data, {article}: travel, but NO CONDITION IS DECLARED \
                         (special_data.{cat})"
                    );
                }
                None => {}
            }
        }
        let _ = writeln!(out, "  case managers: {}", join(&p.case_managers));
        let _ = writeln!(out, "  consent recorders: {}", join(&p.consent_recorders));
        let _ = writeln!(out, "  case retention after closing: {}", p.case_retention);
        let _ = writeln!(
            out,
            "  a consent may be dated back at most: {}",
            p.consent_backdating
        );
        if p.phases.is_empty() {
            let _ = writeln!(out, "  phases: none (an open case allows every kind)");
        } else {
            let _ = writeln!(out, "  phases (a case opens in the first):");
            for ph in &p.phases {
                let mut terms = Vec::new();
                if let Some(t) = &ph.review_within {
                    terms.push(format!("review after {t}"));
                }
                if let Some(t) = &ph.close_after {
                    terms.push(format!("closed by the broker after {t}"));
                }
                let terms = if terms.is_empty() {
                    String::new()
                } else {
                    format!("; {}", terms.join("; "))
                };
                let _ = writeln!(out, "    {}: {}{terms}", ph.name, join(&ph.kinds));
            }
        }
        for (kind, rule) in &p.kinds {
            let _ = writeln!(out);
            let _ = writeln!(out, "  Kind {kind}");
            let _ = writeln!(
                out,
                "    from {} to {}",
                join(&rule.senders),
                join(&rule.recipients)
            );
            let consent = match (rule.consent, rule.basis) {
                (ConsentRule::Required, _) => "a valid consent of the client is required",
                (ConsentRule::NotRequired, Some(b)) if b != Art6Basis::Consent => b.article(),
                (ConsentRule::NotRequired, _) => "no consent: the covenant itself is the basis",
            };
            let _ = writeln!(out, "    basis: {consent}");
            if !rule.grounds.is_empty() {
                let grounds: Vec<String> = rule
                    .grounds
                    .iter()
                    .map(|g| {
                        if policy.grounds.alerts_fg(g) {
                            format!("{g} (alerts the FGs)")
                        } else {
                            format!("{g} (recorded)")
                        }
                    })
                    .collect();
                let lead = match (rule.consent, rule.ground_required) {
                    (ConsentRule::Required, _) => "without consent only on",
                    (ConsentRule::NotRequired, true) => "every message must name a ground",
                    (ConsentRule::NotRequired, false) => "a sender may name",
                };
                let _ = writeln!(out, "    {lead}: {}", grounds.join(", "));
            }
            if let Some(t) = &rule.send_within {
                if rule.event_time_from.is_empty() {
                    let _ = writeln!(out, "    send within: {t} of the event");
                } else {
                    let _ = writeln!(
                        out,
                        "    send within: {t} of the payload's {} (the first given){}",
                        rule.event_time_from.join(", else "),
                        if rule.term_needs_anchor {
                            "; a message without one has no term"
                        } else {
                            ""
                        }
                    );
                }
            }
            if let Some(t) = &rule.answer_within {
                let answers: Vec<String> =
                    rule.answer_kinds.iter().map(|k| k.to_string()).collect();
                let _ = writeln!(
                    out,
                    "    answer within: {t} of delivery (answers: {})",
                    answers.join(", ")
                );
            }
            if let Some(t) = &rule.answer_request_max {
                let _ = writeln!(
                    out,
                    "    a message may ask an answer due within: {t} of acceptance"
                );
            }
            let _ = writeln!(
                out,
                "    undelivered bodies expire after: {}",
                rule.undelivered_ttl
            );
            if rule.notify_case_managers {
                let _ = writeln!(out, "    case managers are told of every breach notice");
            }
            let fields = policy.kind_schema(*kind).map_or(&[][..], |s| s.fields());
            for (role, view) in &rule.views {
                let cats: Vec<String> = view.iter().map(|c| c.to_string()).collect();
                let seen: Vec<&str> = fields
                    .iter()
                    .filter(|f| view.contains(&f.category))
                    .map(|f| f.name.as_str())
                    .collect();
                let withheld: Vec<&str> = fields
                    .iter()
                    .filter(|f| !view.contains(&f.category))
                    .map(|f| f.name.as_str())
                    .collect();
                let _ = writeln!(out, "    {role} sees [{}]", cats.join(", "));
                let _ = writeln!(out, "      fields: {}", list(&seen));
                if !withheld.is_empty() {
                    let _ = writeln!(out, "      withheld: {}", list(&withheld));
                }
            }
        }
    }
    out
}

/// What a policy leaves for its FG to decide, though it loads: a purpose without an
/// art. 6 basis, or through which health or justice data travel without the art. 9 or
/// art. 10 condition. `policy check` prints these as notes.
pub fn gaps(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for p in policy.purposes.values() {
        if p.basis.is_none() {
            out.push(format!(
                "purpose '{}' names no art. 6 basis (basis = \"consent\", \"public_task\", ...)",
                p.id
            ));
        }
        for (cat, article) in SPECIAL_CATEGORIES {
            let travels = p
                .kinds
                .values()
                .any(|r| r.views.values().any(|v| v.contains(&cat)));
            if travels && !p.special_data.contains_key(&cat) {
                out.push(format!(
                    "purpose '{}': {cat} data travel, but it names no {article} condition \
                     (special_data.{cat})",
                    p.id
                ));
            }
        }
    }
    out
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_purpose_kind_and_view_is_explained() {
        let policy = Policy::from_toml(crate::testdata::TEST_POLICY).unwrap();
        let text = explain(&policy);
        for p in policy.purposes.values() {
            assert!(text.contains(&format!("Purpose {}", p.id)), "{text}");
            for (kind, rule) in &p.kinds {
                assert!(text.contains(&format!("Kind {kind}")), "{text}");
                for role in rule.views.keys() {
                    assert!(text.contains(&format!("{role} sees")), "{text}");
                }
            }
        }
        assert!(text.contains("legal basis: consent"), "{text}");
        assert!(
            text.contains("without consent only on: acute_danger (alerts the FGs)"),
            "{text}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod seed_readme_tests {
    use super::*;
    use crate::kind::Kind;

    const README: &str = include_str!("../policies/README.md");
    const SEEDS: [(&str, &str); 5] = [
        ("walcheren.toml", include_str!("../policies/walcheren.toml")),
        ("flevoland.toml", include_str!("../policies/flevoland.toml")),
        ("friesland.toml", include_str!("../policies/friesland.toml")),
        (
            "kennemerland.toml",
            include_str!("../policies/kennemerland.toml"),
        ),
        ("enschede.toml", include_str!("../policies/enschede.toml")),
    ];

    /// The README's table row of a seed file: its cells.
    fn row(file: &str) -> Vec<&'static str> {
        let line = README
            .lines()
            .find(|l| l.starts_with(&format!("| `{file}` |")))
            .unwrap_or_else(|| panic!("schemas/policies/README.md has no row for {file}"));
        line.trim_matches('|').split(" | ").map(str::trim).collect()
    }

    /// Each seed's row in `schemas/policies/README.md` names exactly the purposes and
    /// kinds `policy explain` prints for it, and every phase it declares.
    #[test]
    fn policy_explain_on_each_seed_matches_its_readme_row() {
        for (file, text) in SEEDS {
            let policy = Policy::from_toml(text).unwrap();
            let explained = explain(&policy);
            let cells = row(file);
            let [_, _, purposes, kinds, notable] = cells[..] else {
                panic!("{file}: the row has {} cells, not 5", cells.len())
            };
            // Purposes: the backticked names of the third column.
            let named: std::collections::BTreeSet<&str> =
                purposes.split('`').skip(1).step_by(2).collect();
            let explained_purposes: std::collections::BTreeSet<&str> = explained
                .lines()
                .filter_map(|l| l.strip_prefix("Purpose "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            assert_eq!(named, explained_purposes, "{file}: purposes");
            // Kinds: the kind names in the fourth column, against every kind explained.
            let in_readme: std::collections::BTreeSet<Kind> = kinds
                .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .filter_map(|w| w.parse::<Kind>().ok())
                // Any word is a well-formed covenant kind name; count only the kinds the
                // policy knows.
                .filter(|k| k.is_builtin() || policy.kind_schema(*k).is_some())
                .collect();
            let in_explain: std::collections::BTreeSet<Kind> = explained
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Kind "))
                .filter_map(|k| k.parse::<Kind>().ok())
                .collect();
            assert_eq!(in_readme, in_explain, "{file}: kinds");
            // Phases: each one explain prints is named in the notable rules.
            for p in policy.purposes.values() {
                for ph in &p.phases {
                    assert!(
                        explained.contains(&format!("    {}: ", ph.name)),
                        "{file}: explain does not show phase {}",
                        ph.name
                    );
                    assert!(
                        notable.contains(&ph.name),
                        "{file}: the README row does not name phase '{}'",
                        ph.name
                    );
                }
                if p.phases.is_empty() {
                    assert!(
                        !notable.contains("phases"),
                        "{file}: the README names phases"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod gap_tests {
    use super::*;

    /// The seeds declare every basis and condition; the test covenant, written before the
    /// legal-basis model, declares none, and each gap is named.
    #[test]
    fn gaps_name_a_missing_basis_and_special_data_condition() {
        for seed in [
            include_str!("../policies/walcheren.toml"),
            include_str!("../policies/flevoland.toml"),
            include_str!("../policies/friesland.toml"),
            include_str!("../policies/kennemerland.toml"),
            include_str!("../policies/enschede.toml"),
        ] {
            let p = Policy::from_toml(seed).unwrap();
            assert_eq!(gaps(&p), Vec::<String>::new(), "{}", p.covenant.id);
        }
        let p = Policy::from_toml(crate::testdata::TEST_POLICY).unwrap();
        let gaps = gaps(&p);
        assert!(
            gaps.iter()
                .any(|g| g.contains("purpose 'uitstroom' names no art. 6 basis")),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().any(|g| g.contains("support data travel")),
            "{gaps:?}"
        );
    }
}
