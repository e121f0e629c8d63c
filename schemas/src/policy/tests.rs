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
        .grounds
        .contains(&Ground::new(Ground::ACUTE_DANGER).unwrap()));
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
        ("\"acute_danger\"", "\"vibes\"", "unknown ground 'vibes'"),
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

/// A Zorg- en Veiligheidshuis-like purpose on a public task: no consent recorders, a
/// signal that may only travel on a flagged legal duty, an unflagged meldrecht with its own
/// justification codes, art. 9 and art. 10 conditions.
const PUBLIC_TASK: &str = r#"
[covenant]
id = "zvh"
name = "Zorg- en Veiligheidshuis"

[justifications]
wettelijke-taak = "a statutory task of the receiving party"
meldcode-stap-5 = "step 5 of the meldcode: reporting to Veilig Thuis"

[grounds.meldrecht]
alert_fg = false
justifications = ["meldcode-stap-5"]

[grounds.politiewet_art_16]
description = "Politie: verstrekking aan derden op grond van de Wet politiegegevens"
source = "Wpg art. 16 lid 1"

[roles.gemeente]
[roles.politie]
[roles.ggz]

[purposes.zvh]
name = "Persoonsgerichte aanpak"
processing_activity = "zvh-pga"
legal_basis = "Gemeentewet art. 160; Wpg art. 16 (convenant 3.1)"
basis = "public_task"
special_data.support = { condition = "substantial_public_interest", source = "UAVG art. 30(3)" }
special_data.justice = { condition = "member_state_law", source = "UAVG art. 33(1)" }
case_retention = "2 years"
case_managers = ["gemeente"]

[purposes.zvh.kinds.signaal]
senders = ["politie"]
recipients = ["gemeente", "ggz"]
grounds = ["legal_duty", "politiewet_art_16"]
ground_required = true
undelivered_ttl = "7 days"
views.gemeente = ["case", "justice"]
views.ggz = ["case", "support"]

[purposes.zvh.kinds.reactie]
senders = ["ggz", "gemeente"]
recipients = ["gemeente", "politie"]
grounds = ["meldrecht"]
undelivered_ttl = "7 days"
views.gemeente = ["case"]
views.politie = ["case"]
"#;

#[test]
fn a_public_task_purpose_needs_no_consent_recorders_and_names_its_grounds() {
    let p = Policy::from_toml(PUBLIC_TASK).unwrap();
    let zvh = &p.purposes["zvh"];
    assert_eq!(zvh.basis, Some(Art6Basis::PublicTask));
    assert!(zvh.consent_recorders.is_empty());
    assert_eq!(
        zvh.special_data[&Category::Justice].condition,
        SpecialCondition::MemberStateLaw
    );
    let signaal = p.rule("zvh", Kind::Signaal).unwrap();
    assert_eq!(signaal.consent, ConsentRule::NotRequired);
    assert_eq!(signaal.basis, Some(Art6Basis::PublicTask));
    assert!(signaal.ground_required);
    let legal_duty = Ground::new(Ground::LEGAL_DUTY).unwrap();
    let meldrecht = Ground::new(Ground::MELDRECHT).unwrap();
    let own = Ground::new("politiewet_art_16").unwrap();
    assert!(signaal.grounds.contains(&legal_duty) && signaal.grounds.contains(&own));
    // Built-in grounds alert unless the policy says otherwise; declared ones too.
    assert!(p.grounds.alerts_fg(&legal_duty));
    assert!(p.grounds.alerts_fg(&own));
    assert!(!p.grounds.alerts_fg(&meldrecht));
    // The closed list of justification codes, narrowed per ground.
    assert_eq!(
        p.grounds
            .refuse_justification(&legal_duty, "wettelijke-taak"),
        None
    );
    assert!(p
        .grounds
        .refuse_justification(&legal_duty, "dossier-17")
        .is_some_and(|m| m.contains("not in the covenant's list")));
    assert!(p
        .grounds
        .refuse_justification(&meldrecht, "wettelijke-taak")
        .is_some_and(|m| m.contains("meldcode-stap-5")));
    let explained = crate::explain::explain(&p);
    for expect in [
        "art. 6 basis: public_task (AVG art. 6(1)(e), public task)",
        "justice data, art. 10 (criminal-law data): AVG art. 10, authorised by law",
        "every message must name a ground: legal_duty (alerts the FGs), politiewet_art_16 (alerts the FGs)",
        "a sender may name: meldrecht (recorded)",
        "meldcode-stap-5: step 5 of the meldcode",
    ] {
        assert!(explained.contains(expect), "'{expect}' not in:\n{explained}");
    }
}

#[test]
fn the_legal_basis_model_refuses_what_cannot_hold() {
    let cases = [
        (
            "basis = \"public_task\"",
            "basis = \"public_interest\"",
            "unknown legal basis 'public_interest'",
        ),
        (
            "condition = \"member_state_law\"",
            "condition = \"care\"",
            "is an art. 9(2) condition, but justice data fall under art. 10",
        ),
        (
            "special_data.support",
            "special_data.housing",
            "only support (art. 9) and justice (art. 10)",
        ),
        (
            "grounds = [\"meldrecht\"]",
            "grounds = [\"noodweer\"]",
            "unknown ground 'noodweer'",
        ),
        (
            "justifications = [\"meldcode-stap-5\"]",
            "justifications = [\"stap-6\"]",
            "justification 'stap-6' is not in [justifications]",
        ),
        (
            "description = \"Politie: verstrekking",
            "source = \"Politie: verstrekking",
            "duplicate key",
        ),
        (
            "grounds = [\"meldrecht\"]",
            "consent = \"required\"\ngrounds = [\"meldrecht\"]",
            "names no consent_recorders",
        ),
        (
            "ground_required = true",
            "ground_required = true\nbasis = \"consent\"",
            "ground_required is for a kind whose basis is not consent",
        ),
        (
            "grounds = [\"meldrecht\"]",
            "basis = \"public_task\"\nconsent = \"required\"\ngrounds = [\"meldrecht\"]",
            "basis 'public_task' and consent = \"required\" disagree",
        ),
    ];
    for (from, to, expect) in cases {
        let bad = PUBLIC_TASK.replacen(from, to, 1);
        assert_ne!(bad, PUBLIC_TASK, "replacement of {from} did nothing");
        let (line, msg) = error_of(&bad);
        assert!(msg.contains(expect), "expected '{expect}' in '{msg}'");
        assert!(line.is_some(), "no line for '{expect}'");
    }
    // A declared ground without a description: nobody could tell what it means.
    let bad = PUBLIC_TASK.replace(
        "description = \"Politie: verstrekking aan derden op grond van de Wet politiegegevens\"\n",
        "",
    );
    assert!(error_of(&bad).1.contains("needs a description"));
    // Without any basis the kind cannot be sent at all.
    let bad = PUBLIC_TASK.replace("basis = \"public_task\"\n", "");
    assert!(error_of(&bad).1.contains("no legal basis"), "{bad}");
}

/// A policy file as JSON, the way an editor's TOML tooling hands it to the schema.
fn as_json(text: &str) -> serde_json::Value {
    toml::from_str(text).unwrap()
}

/// The shipped JSON Schema of the policy file accepts every seed policy (and the test
/// covenant), and refuses a misspelled key, a wrong category and a loose duration, each
/// of which `Policy::from_toml` refuses too.
#[test]
fn the_policy_file_schema_accepts_the_seeds_and_refuses_mistakes() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("json/policy.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, super::json_schema(), "bless schemas/json");
    let validator = jsonschema::validator_for(&shipped).unwrap();
    let mut seeds = vec![crate::testdata::TEST_POLICY.to_owned()];
    for entry in std::fs::read_dir(dir.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            seeds.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    assert_eq!(seeds.len(), 6);
    for text in &seeds {
        let errors: Vec<String> = validator
            .iter_errors(&as_json(text))
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    let walcheren = std::fs::read_to_string(dir.join("policies/walcheren.toml")).unwrap();
    let mistakes = [
        ("undelivered_ttl = ", "undelivred_ttl = ", "undelivred_ttl"),
        (
            "views.gemeente = [\"case\"",
            "views.gemeente = [\"helth\"",
            "helth",
        ),
        ("\"48 hours\"", "\"48h\"", "48h"),
        (
            "case_retention = \"",
            "case_retension = \"",
            "case_retension",
        ),
    ];
    for (from, to, named) in mistakes {
        assert!(walcheren.contains(from), "{from}");
        let bad = walcheren.replacen(from, to, 1);
        assert!(Policy::from_toml(&bad).is_err(), "{to}");
        let errors: Vec<String> = validator
            .iter_errors(&as_json(&bad))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.iter().any(|e| e.contains(named)), "{to}: {errors:?}");
    }
    // A schema in a file needs its digest; both inline and file is refused.
    let kind = |decl: &str| {
        as_json(&format!(
            "{}\n[kinds.risicotaxatie]\n{decl}\n",
            crate::testdata::TEST_POLICY
        ))
    };
    let sha = format!("schema_sha256 = \"{}\"", "0".repeat(64));
    assert!(validator.is_valid(&kind(&format!("schema_file = \"kinds/r.json\"\n{sha}"))));
    assert!(!validator.is_valid(&kind("schema_file = \"kinds/r.json\"")));
    assert!(!validator.is_valid(&kind(&format!(
        "schema = '{{}}'\nschema_file = \"kinds/r.json\"\n{sha}"
    ))));
    assert!(!validator.is_valid(&kind(&format!("schema_file = \"../r.json\"\n{sha}"))));
}

/// The README's "Every key" table names every key of the policy file (every property in
/// its JSON Schema), so a key added to a raw struct cannot go undocumented.
#[test]
fn the_readme_documents_every_policy_key() {
    fn keys(schema: &serde_json::Value, out: &mut BTreeSet<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                map.values().for_each(|v| keys(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut all = BTreeSet::new();
    keys(&super::json_schema(), &mut all);
    assert!(all.len() > 30, "{all:?}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("### Every key").unwrap();
    let end = start + readme[start + 1..].find("\n### ").unwrap();
    let table = &readme[start..end];
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| {
            // A key, `views.<role>`, or a table such as `[roles.<role>]`.
            [format!("`{k}`"), format!("`{k}.<"), format!("`[{k}")]
                .iter()
                .all(|written| !table.contains(written.as_str()))
        })
        .collect();
    assert!(missing.is_empty(), "README's 'Every key' lacks {missing:?}");
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
