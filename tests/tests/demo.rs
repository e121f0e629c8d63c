//! The README's first command, `cargo run --bin ketenpost-demo`, must keep working: this
//! runs the same story and checks what it established and what it showed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use ketenpost_agent::RefusedBy;
use ketenpost_schemas::protocol::RejectCode;
use ketenpost_tests::demo::{self, Options};

#[test]
fn the_demo_plays_the_walcheren_case_from_opening_to_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let html = tmp.path().join("fg.html");
    let mut out = Vec::new();
    let summary = demo::run(
        &mut out,
        &Options {
            colour: false,
            html_report: Some(html.clone()),
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "the demo failed: {e:#}\n--- its story so far ---\n{}",
            String::from_utf8_lossy(&out)
        )
    });
    let story = String::from_utf8(out).unwrap();

    // The story is told in full, plainly, and says where it cheats on time.
    for act in 1..=6 {
        assert!(story.contains(&format!("ACT {act}  ")), "act {act} missing");
    }
    assert!(story.contains("SHORTENED CLOCK"));
    assert!(story.contains("Ik, <naam cliënt>, stem ermee in dat gemeente"));
    assert!(!story.contains('\x1b'), "colour without a terminal");

    // 1: the corporation got its housing view only; the municipality more.
    let s = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>();
    assert!(summary
        .corporation_fields
        .is_superset(&s(&["identiteit", "contact", "woonwens"])));
    for withheld in [
        "inkomen",
        "schulden",
        "ondersteuning",
        "motivatie",
        "justitie",
    ] {
        assert!(!summary.corporation_fields.contains(withheld), "{withheld}");
    }
    assert!(summary
        .municipality_fields
        .is_superset(&s(&["ondersteuning", "inkomen", "schulden"])));
    assert!(summary.corporation_fields.is_subset(&summary.full_fields));

    // 3: outside the team and after withdrawal, refused by the broker and by the agent.
    let refusals: Vec<(RefusedBy, RejectCode)> =
        summary.refusals.iter().map(|r| (r.by, r.code)).collect();
    assert_eq!(
        refusals,
        vec![
            (RefusedBy::Broker, RejectCode::NotInCaseTeam),
            (RefusedBy::Agent, RejectCode::NotInCaseTeam),
            (RefusedBy::Broker, RejectCode::ConsentWithdrawn),
            (RefusedBy::Agent, RejectCode::ConsentWithdrawn),
        ]
    );

    // 4: the broker widened the breach notice to everyone concerned.
    assert_eq!(summary.breach_addressed.len(), 1);
    assert_eq!(summary.breach_recipients.len(), 2);
    assert!(summary
        .breach_addressed
        .is_subset(&summary.breach_recipients));

    // 5 and 6: three confirmed deletions, an intact trail, a flow report.
    assert_eq!(summary.deletions_confirmed.len(), 3);
    assert!(summary.audit_records > 20 && summary.audit_checkpoints > 0);
    assert_eq!(summary.agent_checkpoints.len(), 3);
    assert!(summary
        .flows
        .iter()
        .any(|f| f.2 == "aanmelding" && f.3 == 1));
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(
        html.contains("<svg"),
        "the FG's HTML report has no flow graph"
    );

    // Nothing of the client's personal data reaches the screen.
    let personal = demo::personal_values().unwrap();
    assert!(
        personal.contains("111222333"),
        "the BSN is among the values checked"
    );
    for v in personal {
        assert!(
            !story.contains(&v),
            "the story shows a payload value: {v:?}"
        );
    }

    assert!(
        summary.elapsed < Duration::from_secs(30),
        "{:?}",
        summary.elapsed
    );
}
