//! The legal-basis model, played by real processes: a broker and three agents on
//! loopback, driven through the agents' HTTP API.
//!
//! The covenant is a Zorg- en Veiligheidshuis of our own (not a seed) whose purpose rests
//! on a public task (AVG art. 6(1)(e)) and names no consent recorders. A police signal may
//! travel only on a named ground: the flagged `legal_duty` (each use alerts the FGs) or
//! `meldrecht`, which this covenant records for review without an alert. Justification
//! codes come from the covenant's closed list.

use anyhow::{ensure, Result};
use chrono::Utc;
use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_tests::agents::{signaal_payload, Outgoing, Region, WAIT};

const POLICY: &str = r#"
[covenant]
id = "zvh-grounds"
name = "Zorg- en Veiligheidshuis (legal bases, test)"

[justifications]
wettelijke-plicht = "a statutory duty of the police to inform the partners"
meldcode-stap-5 = "step 5 of the meldcode: reporting"

[grounds.meldrecht]
alert_fg = false
justifications = ["meldcode-stap-5"]

[roles.procesregisseur]
description = "directs the case for the Zorg- en Veiligheidshuis"
[roles.politie]
description = "police"
[roles.ggz]
description = "mental-health care"

[purposes.pga]
name = "Persoonsgerichte aanpak"
processing_activity = "zvh-grounds-pga"
legal_basis = "Gemeentewet art. 160; Wpg art. 16 (test)"
basis = "public_task"
special_data.support = { condition = "substantial_public_interest", source = "UAVG art. 30(3) (test)" }
special_data.justice = { condition = "member_state_law", source = "UAVG art. 33 (test)" }
case_retention = "1 year"
case_managers = ["procesregisseur"]

[purposes.pga.kinds.signaal]
senders = ["politie"]
recipients = ["procesregisseur", "ggz"]
grounds = ["legal_duty", "meldrecht"]
ground_required = true
undelivered_ttl = "7 days"
views.procesregisseur = ["case", "justice"]
views.ggz = ["case", "support"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_task_purpose_with_a_flagged_legal_duty_works_without_consent_recorders(
) -> Result<()> {
    let region = Region::start(POLICY, None, &["procesregisseur", "politie", "ggz"])?;
    let regie = region.agent("procesregisseur")?;
    let politie = region.agent("politie")?;
    let ggz = region.agent("ggz")?;

    let case = regie.open_case("pga", &[&politie.oin, &ggz.oin]).await?;
    politie.register_case_from(regie, &case).await?;
    let signaal = || -> Result<Outgoing> {
        Ok(Outgoing::new(
            "signaal",
            &case,
            signaal_payload("bedreiging", Utc::now() - chrono::Duration::hours(1))?,
        )
        .to_role("procesregisseur")
        .to_role("ggz"))
    };

    // On the flagged legal duty, with a code from the covenant's list: delivered to both.
    let on_duty = politie
        .send(&signaal()?.ground("legal_duty", "wettelijke-plicht"))
        .await?;
    politie.wait_for_status(&on_duty, "delivered", WAIT).await?;
    regie.wait_for_message(&on_duty, WAIT).await?;
    ggz.wait_for_message(&on_duty, WAIT).await?;

    // On meldrecht, which this covenant does not flag: delivered as well.
    let on_meldrecht = politie
        .send(&signaal()?.ground("meldrecht", "meldcode-stap-5"))
        .await?;
    politie
        .wait_for_status(&on_meldrecht, "delivered", WAIT)
        .await?;

    // Refused by the sending agent, before anything leaves it: no ground at all (the
    // public task alone does not carry this kind), a code outside the list, a code the
    // ground does not allow, and a ground the kind does not name.
    for (message, expect) in [
        (signaal()?, "legal_basis_mismatch"),
        (
            signaal()?.ground("legal_duty", "dossier-2026-17"),
            "ground_not_allowed",
        ),
        (
            signaal()?.ground("meldrecht", "wettelijke-plicht"),
            "ground_not_allowed",
        ),
        (
            signaal()?.ground("acute_danger", "wettelijke-plicht"),
            "ground_not_allowed",
        ),
    ] {
        let code = politie.send_refused(&message, WAIT).await?;
        ensure!(code == expect, "expected {expect}, got {code}");
    }

    // The trail: the legal duty is flagged (and so alerted), meldrecht only recorded.
    let log = region.finish()?;
    let duty = log.expect(AuditEvent::NonConsentUse, &on_duty)?;
    ensure!(
        duty.outcome == Outcome::Flagged && duty.reason.as_deref() == Some("legal_duty"),
        "{duty:?}"
    );
    let meld = log.expect(AuditEvent::NonConsentUse, &on_meldrecht)?;
    ensure!(
        meld.outcome == Outcome::Ok && meld.reason.as_deref() == Some("meldrecht"),
        "{meld:?}"
    );
    ensure!(
        log.of(AuditEvent::Rejected).is_empty(),
        "the broker saw a refused message: the agents refused them first"
    );
    Ok(())
}
