#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
[covenant]
id = "test"
name = "Test covenant"

[roles.gemeente]
description = "municipality"
[roles.zorgaanbieder]
description = "care provider"
[roles.woningcorporatie]
description = "housing corporation"

[purposes.uitstroom]
name = "Uitstroom"
processing_activity = "test-uitstroom"
legal_basis = "consent"
case_retention = "7 years"
case_managers = ["gemeente"]
consent_recorders = ["zorgaanbieder"]

[purposes.uitstroom.kinds.aanmelding]
senders = ["zorgaanbieder"]
recipients = ["gemeente", "woningcorporatie"]
consent = "required"
non_consent_grounds = ["acute_danger"]
undelivered_ttl = "14 days"
answer_within = "5 workdays"
views.gemeente = ["identity", "contact", "housing", "support"]
views.woningcorporatie = ["identity", "contact", "housing"]

[purposes.uitstroom.kinds.signaal]
senders = ["woningcorporatie"]
recipients = ["zorgaanbieder", "gemeente"]
consent = "required"
send_within = "48 hours"
answer_within = "24 hours"
undelivered_ttl = "7 days"
views.zorgaanbieder = ["case"]
views.gemeente = ["case"]
"#;

fn error_of(text: &str) -> (Option<usize>, String) {
    match Policy::from_toml(text) {
        Err(Error::Policy { line, message, .. }) => (line, message),
        other => panic!("expected a policy error, got {other:?}"),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn a_good_policy_loads() {
    let p = Policy::from_toml(GOOD).unwrap();
    assert_eq!(p.covenant.id, "test");
    let rule = p.rule("uitstroom", Kind::Aanmelding).unwrap();
    assert_eq!(rule.consent, ConsentRule::Required);
    assert!(rule
        .non_consent_grounds
        .contains(&NonConsentGround::AcuteDanger));
    assert_eq!(
        rule.view(&Role::new("woningcorporatie")),
        [Category::Identity, Category::Contact, Category::Housing].into()
    );
    assert_eq!(rule.answer_kinds, [Kind::Reactie].into());
    assert!(p.rule("uitstroom", Kind::DatalekMelding).is_none());
    assert!(p.rule("other", Kind::Aanmelding).is_none());
}

#[test]
fn unknown_role_names_its_line() {
    let bad = GOOD.replace(
        "senders = [\"woningcorporatie\"]",
        "senders = [\"woningbouw\"]",
    );
    let (line, msg) = error_of(&bad);
    assert_eq!(line, Some(line_of(&bad, "woningbouw")));
    assert!(msg.contains("unknown role 'woningbouw'"), "{msg}");
}

#[test]
fn a_recipient_role_without_a_view_is_refused() {
    let bad = GOOD.replace("views.gemeente = [\"case\"]\n", "");
    let (line, msg) = error_of(&bad);
    assert!(msg.contains("'gemeente' has no view"), "{msg}");
    assert_eq!(
        line,
        Some(line_of(
            &bad,
            "recipients = [\"zorgaanbieder\", \"gemeente\"]"
        ))
    );
}

#[test]
fn a_view_for_a_non_recipient_is_refused() {
    let bad = GOOD.replace(
        "views.zorgaanbieder = [\"case\"]",
        "views.zorgaanbieder = [\"case\"]\nviews.woningcorporatie = [\"case\"]",
    );
    let (_, msg) = error_of(&bad);
    assert!(msg.contains("not a recipient"), "{msg}");
}

#[test]
fn a_deadline_that_does_not_parse_names_its_line() {
    let bad = GOOD.replace("\"48 hours\"", "\"48 fortnights\"");
    let (line, msg) = error_of(&bad);
    assert_eq!(line, Some(line_of(&bad, "fortnights")));
    assert!(msg.contains("48 fortnights"), "{msg}");
}

#[test]
fn unknown_kind_category_ground_and_consent_are_refused() {
    let cases = [
        (
            "kinds.signaal]",
            "kinds.briefje]",
            "unknown message kind 'briefje'",
        ),
        (
            "[\"case\"]",
            "[\"medisch\"]",
            "unknown data category 'medisch'",
        ),
        (
            "\"acute_danger\"",
            "\"vibes\"",
            "unknown non-consent ground 'vibes'",
        ),
        (
            "consent = \"required\"\nnon",
            "consent = \"maybe\"\nnon",
            "consent must be",
        ),
        (
            "views.zorgaanbieder = [\"case\"]",
            "views.zorgaanbieder = [\"identity\"]",
            "category 'identity' does not occur in this kind",
        ),
        (
            "case_managers = [\"gemeente\"]",
            "case_managers = []",
            "no case_managers",
        ),
        (
            "kinds.signaal]",
            "kinds.delivery_receipt]",
            "control record",
        ),
    ];
    for (from, to, expect) in cases {
        let bad = GOOD.replacen(from, to, 1);
        assert_ne!(bad, GOOD, "replacement of {from} did nothing");
        let (line, msg) = error_of(&bad);
        assert!(msg.contains(expect), "expected '{expect}' in '{msg}'");
        assert!(line.is_some(), "no line for '{expect}'");
    }
}

#[test]
fn toml_syntax_and_unknown_keys_name_the_line() {
    let bad = GOOD.replace("name = \"Uitstroom\"", "name = \"Uitstroom");
    let (line, _) = error_of(&bad);
    assert_eq!(line, Some(line_of(&bad, "name = \"Uitstroom")));

    let bad = GOOD.replace(
        "undelivered_ttl = \"7 days\"",
        "undelivered_ttl = \"7 days\"\nspeed = 3",
    );
    let (line, msg) = error_of(&bad);
    assert!(msg.contains("speed"), "{msg}");
    assert!(line.is_some());
}

#[test]
fn consent_required_without_recorders_is_refused() {
    let bad = GOOD.replace("consent_recorders = [\"zorgaanbieder\"]\n", "");
    let (_, msg) = error_of(&bad);
    assert!(msg.contains("consent_recorders"), "{msg}");
}

/// Every seed covenant's policy in `schemas/policies/` loads.
#[test]
fn every_seed_policy_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let p = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            loaded.push(p.covenant.id);
        }
    }
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "enschede",
            "flevoland",
            "friesland",
            "kennemerland",
            "walcheren"
        ]
    );
}

const PHASES: &str = r#"
[[purposes.uitstroom.phases]]
name = "actief"
review_within = "3 months"

[[purposes.uitstroom.phases]]
name = "waakvlam"
kinds = ["signaal"]
close_after = "12 months"
"#;

#[test]
fn phases_are_declared_in_order_with_their_kinds_and_terms() {
    let p = Policy::from_toml(&format!("{GOOD}{PHASES}")).unwrap();
    let purpose = &p.purposes["uitstroom"];
    let names: Vec<&str> = purpose.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["actief", "waakvlam"]);
    // Without `kinds`, a phase allows every kind of its purpose.
    assert_eq!(
        purpose.phases[0].kinds,
        purpose.kinds.keys().copied().collect()
    );
    assert_eq!(
        purpose.phases[0].review_within,
        Some(PolicyDuration::Months(3))
    );
    assert_eq!(
        purpose.phases[1].close_after,
        Some(PolicyDuration::Months(12))
    );
    // The case opens in the first phase; the waakvlam allows only signals (and a breach
    // notice always travels).
    assert!(phases::allows(&purpose.phases, None, Kind::Aanmelding));
    assert!(!phases::allows(
        &purpose.phases,
        Some("waakvlam"),
        Kind::Aanmelding
    ));
    assert!(phases::allows(
        &purpose.phases,
        Some("waakvlam"),
        Kind::Signaal
    ));
    assert!(phases::allows(
        &purpose.phases,
        Some("waakvlam"),
        Kind::DatalekMelding
    ));
    // A phase the policy no longer declares allows nothing but breach notices.
    assert!(!phases::allows(
        &purpose.phases,
        Some("gone"),
        Kind::Signaal
    ));
    // A purpose without phases allows every kind.
    assert!(phases::allows(&[], Some("anything"), Kind::Aanmelding));
}

#[test]
fn bad_phases_are_refused_with_their_line() {
    let bad = |phases: &str, want: &str| {
        let text = format!("{GOOD}{phases}");
        match Policy::from_toml(&text) {
            Err(Error::Policy {
                line: Some(line),
                message,
                ..
            }) => {
                assert!(message.contains(want), "{message}");
                assert!(line > GOOD.lines().count(), "line {line}: {message}");
            }
            other => panic!("{phases}: {other:?}"),
        }
    };
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"waakvlam\"\nkinds = [\"reactie\"]\n",
        "'reactie' is not a kind of purpose 'uitstroom'",
    );
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"closed\"\n",
        "'closed' is not a phase",
    );
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"a\"\n[[purposes.uitstroom.phases]]\nname = \"a\"\n",
        "declares phase 'a' twice",
    );
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"na zorg\"\n",
        "not a valid name",
    );
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"a\"\nclose_after = \"48h\"\n",
        "",
    );
    bad(
        "[[purposes.uitstroom.phases]]\nname = \"a\"\nreview = \"3 months\"\n",
        "unknown field",
    );
}

#[test]
fn check_all_reports_every_problem_in_the_order_of_the_file() {
    // Three problems: an unknown role in one kind, a bad duration in another, and a whole
    // second purpose with an unknown kind.
    let bad = GOOD
        .replace(
            "senders = [\"zorgaanbieder\"]",
            "senders = [\"zorgverlener\"]",
        )
        .replace("send_within = \"48 hours\"", "send_within = \"48h\"")
        + r#"
[purposes.tweede]
name = "Second"
processing_activity = "test-tweede"
legal_basis = "consent"
case_retention = "1 year"
case_managers = ["gemeente"]
consent_recorders = ["zorgaanbieder"]

[purposes.tweede.kinds.brief]
senders = ["gemeente"]
recipients = ["zorgaanbieder"]
consent = "required"
undelivered_ttl = "7 days"
views.zorgaanbieder = ["case"]
"#;
    let errors = Policy::check_all(&bad).unwrap_err();
    let found: Vec<(Option<usize>, String)> = errors
        .iter()
        .map(|e| match e {
            Error::Policy { line, message, .. } => (*line, message.clone()),
            other => panic!("not a policy error: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(
        found[0].0,
        Some(line_of(&bad, "zorgverlener")),
        "{found:#?}"
    );
    assert!(
        found[0].1.contains("unknown role 'zorgverlener'"),
        "{found:#?}"
    );
    assert_eq!(found[1].0, Some(line_of(&bad, "\"48h\"")), "{found:#?}");
    assert_eq!(
        found[2].0,
        Some(line_of(&bad, "kinds.brief]")),
        "{found:#?}"
    );
    assert!(
        found[2].1.contains("unknown message kind 'brief'"),
        "{found:#?}"
    );
    // The first of them is what from_toml reports.
    assert_eq!(error_of(&bad), found[0]);
    assert!(Policy::check_all(GOOD).is_ok());
}

#[test]
fn answer_request_max_bounds_a_kind_and_defaults_its_answer_kinds() {
    let text = GOOD.replace(
        "send_within = \"48 hours\"\nanswer_within = \"24 hours\"",
        "send_within = \"48 hours\"\nanswer_request_max = \"10 workdays\"",
    );
    assert_ne!(text, GOOD);
    let p = Policy::from_toml(&text).unwrap();
    let rule = p.rule("uitstroom", Kind::Signaal).unwrap();
    assert_eq!(rule.answer_within, None);
    assert_eq!(rule.answer_request_max, Some(PolicyDuration::Workdays(10)));
    // Something must count as the answer asked for.
    assert_eq!(rule.answer_kinds, [Kind::Reactie].into());
    // Absent: the kind carries no request.
    let p = Policy::from_toml(GOOD).unwrap();
    assert_eq!(
        p.rule("uitstroom", Kind::Aanmelding)
            .unwrap()
            .answer_request_max,
        None
    );
    // A bad term names its line.
    let bad = GOOD.replace(
        "answer_within = \"24 hours\"",
        "answer_within = \"24 hours\"\nanswer_request_max = \"soon\"",
    );
    let e = Policy::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("line"), "{e}");
}

/// Friesland's aanmelding (002:1438, 002:606-608): its two-week term runs from the
/// payload's registration or opvang date, both optional, so a form without either (vervolg
/// wonen, plaatsing) has no term; a kind whose anchor is required always has one.
#[test]
fn a_term_on_optional_anchors_binds_only_the_messages_that_carry_one() {
    let friesland = Policy::from_toml(include_str!("../../policies/friesland.toml")).unwrap();
    let rule = friesland.rule("uitstroom", Kind::Aanmelding).unwrap();
    assert_eq!(
        rule.event_time_from,
        ["instroom_opvang_op", "datum_aanmelding_transferpunt"]
    );
    assert!(rule.term_needs_anchor);
    assert_eq!(rule.send_within, Some(PolicyDuration::Weeks(2)));
    // The aanmeldformulier's term runs from its registration date, from the start of that
    // day in Amsterdam; an MO registratieformulier's from the day the opvang began; a
    // plaatsing form that names neither has no event time and so no term.
    let mut form = serde_json::to_value(crate::payload::Aanmelding::example()).unwrap();
    let (field, at) = anchors::event_time(&rule.event_time_from, &form)
        .unwrap()
        .unwrap();
    assert_eq!(field, "datum_aanmelding_transferpunt");
    assert_eq!(at.to_rfc3339(), "2025-03-03T23:00:00+00:00");
    form["formulier"] = serde_json::json!("registratie");
    form["instroom_opvang_op"] = serde_json::json!("2025-02-20");
    let (field, _) = anchors::event_time(&rule.event_time_from, &form)
        .unwrap()
        .unwrap();
    assert_eq!(field, "instroom_opvang_op");
    let plaatsing = form.as_object_mut().unwrap();
    plaatsing.remove("instroom_opvang_op");
    plaatsing.remove("datum_aanmelding_transferpunt");
    plaatsing.insert("formulier".into(), serde_json::json!("plaatsing"));
    assert_eq!(
        anchors::event_time(&rule.event_time_from, &form).unwrap(),
        None
    );
    let walcheren = Policy::from_toml(include_str!("../../policies/walcheren.toml")).unwrap();
    // Walcheren's signal falls back on waargenomen_op, which every signal has.
    assert!(
        !walcheren
            .rule("uitstroom", Kind::Signaal)
            .unwrap()
            .term_needs_anchor
    );
}
