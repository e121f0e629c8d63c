//! Case phases through real processes: a broker and agents on loopback, driven through the
//! agents' HTTP API.
//!
//! - Walcheren's waakvlam (000:1150-1154, 000:1290-1303; Flevoland 001:236-248): after
//!   Team Thuis the gemeente moves the case to the waakvlam; a rent-arrears signal is still
//!   accepted there, a new aanmelding is not, and after the case closes a signal is refused.
//! - A phase's terms on a test clock: the case managers are told when a phase is due for
//!   review, and the broker closes a case whose phase's `close_after` passed, tells the
//!   team, and starts its retention.

use anyhow::{ensure, Result};
use chrono::Utc;
use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_schemas::payload::Aanmelding;
use ketenpost_tests::agents::{seed_policy, AgentProcess, Outgoing, Region, WAIT};
use serde_json::{json, Value};

/// One scenario at a time: each starts four processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONSENT_DOCUMENT: &str = "Welkom in de Wijk Overeenkomst (000:293-297), test";

/// A rent-arrears signal from the corporation to the gemeente under `consent`.
fn huurachterstand(case: &str, gem: &AgentProcess, consent: &str) -> Result<Outgoing> {
    Outgoing::uitstroom_signaal(case, "huurachterstand", &gem.oin, consent)
}

async fn enter_phase(gem: &AgentProcess, case: &str, phase: &str) -> Result<Value> {
    gem.call(
        "POST",
        &format!("/v1/cases/{case}/phase"),
        Some(json!({ "phase": phase })),
    )
    .await
}

/// Wait (bounded) until `agent`'s view of `case` (`GET /v1/cases/{case}`) satisfies `ok`.
async fn wait_for_case(
    agent: &AgentProcess,
    case: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let seen = agent
            .call("GET", &format!("/v1/cases/{case}"), None)
            .await?;
        if ok(&seen) {
            return Ok(seen);
        }
        ensure!(
            std::time::Instant::now() < until,
            "{}'s agent never saw the change: {seen}",
            agent.name
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waakvlam_signal_is_accepted_after_team_thuis_and_refused_after_the_case_closes(
) -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let (case, consent) = region.uitstroom_team(CONSENT_DOCUMENT).await?;

    // Team Thuis (the first phase): a signal travels.
    let first = corp.send(&huurachterstand(&case, gem, &consent)?).await?;
    corp.wait_for_status(&first, "delivered", WAIT).await?;

    // Only a case manager moves the case: the corporation may not.
    let (status, code, _) = corp
        .refusal(
            "POST",
            &format!("/v1/cases/{case}/phase"),
            Some(json!({ "phase": "waakvlam", "purpose": "uitstroom" })),
        )
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "not_permitted"),
        "{status} {code}"
    );
    // A phase the policy does not declare is refused by the gemeente's own agent.
    let (status, code, _) = gem
        .refusal(
            "POST",
            &format!("/v1/cases/{case}/phase"),
            Some(json!({ "phase": "nazorg" })),
        )
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "conflict"),
        "{status} {code}"
    );

    // 000:1290-1301: Team Thuis ends, the waakvlamafspraak begins.
    let moved = enter_phase(gem, &case, "waakvlam").await?;
    ensure!(moved["phase"] == "waakvlam", "{moved}");

    // 000:1150-1154: rent arrears still reach the gemeente during the waakvlam.
    let waakvlam = corp.send(&huurachterstand(&case, gem, &consent)?).await?;
    corp.wait_for_status(&waakvlam, "delivered", WAIT).await?;
    gem.wait_for_message(&waakvlam, WAIT).await?;

    // The waakvlam allows no new aanmelding. The broker told the care provider's agent of
    // the move, so that agent refuses it itself, before anything leaves it.
    wait_for_case(zorg, &case, |c| c["phase"] == "waakvlam").await?;
    let aanmelding = Outgoing::new(
        "aanmelding",
        &case,
        serde_json::to_value(Aanmelding::example())?,
    )
    .to_role("gemeente")
    .consent(&consent);
    let (status, code, _) = zorg
        .refusal("POST", "/v1/messages", Some(aanmelding.json()))
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "kind_not_in_phase"),
        "{status} {code}"
    );

    // The gemeente closes the case: the corporation's agent learns it from the broker and
    // refuses the next signal itself.
    gem.call("POST", &format!("/v1/cases/{case}/close"), Some(json!({})))
        .await?;
    wait_for_case(corp, &case, |c| c["closed_at"].is_string()).await?;
    let (status, code, _) = corp
        .refusal(
            "POST",
            "/v1/messages",
            Some(huurachterstand(&case, gem, &consent)?.json()),
        )
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "case_closed"),
        "{status} {code}"
    );

    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    let count = |event: AuditEvent, outcome: Outcome| {
        audit
            .records
            .iter()
            .filter(|r| r.event == event && r.outcome == outcome)
            .count()
    };
    ensure!(count(AuditEvent::CasePhaseChanged, Outcome::Ok) == 1);
    ensure!(
        !audit
            .records
            .iter()
            .any(|r| r.event == AuditEvent::Rejected),
        "a message the members' agents should have refused reached the broker"
    );
    Ok(())
}

/// The test covenant with two phases: an active one the gemeente must review after 2
/// weeks, and a waakvlam the broker closes after 4 weeks.
fn phased_policy() -> String {
    format!(
        "{}\n\
         [[purposes.uitstroom.phases]]\n\
         name = \"actief\"\n\
         review_within = \"2 weeks\"\n\
         \n\
         [[purposes.uitstroom.phases]]\n\
         name = \"waakvlam\"\n\
         kinds = [\"signaal\", \"reactie\", \"datalek_melding\"]\n\
         close_after = \"4 weeks\"\n",
        ketenpost_schemas::testdata::TEST_POLICY
    )
}

/// Poll the gemeente's view of the case until `check` holds.
async fn case_until(
    gem: &AgentProcess,
    case: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let c = gem.call("GET", &format!("/v1/cases/{case}"), None).await?;
        if check(&c) {
            return Ok(c);
        }
        ensure!(
            std::time::Instant::now() < until,
            "{what}: not within {WAIT:?}: {c}\n{}",
            gem.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_notices_a_review_and_closes_a_case_at_the_end_of_its_phase() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start_clocked(
        &phased_policy(),
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let (case, consent) = region.uitstroom_team(CONSENT_DOCUMENT).await?;
    let day = 24 * 3600;

    // Two weeks and a day in the active phase: the gemeente is told to review the case.
    region.set_clock(15 * day)?;
    let reviewed = case_until(gem, &case, "review notice", |c| c["review_due"].is_string()).await?;
    ensure!(reviewed["closed_at"].is_null(), "{reviewed}");

    // The waakvlam: the review is settled, signals still travel.
    let moved = enter_phase(gem, &case, "waakvlam").await?;
    ensure!(moved["review_due"].is_null(), "{moved}");
    let signal = corp.send(&huurachterstand(&case, gem, &consent)?).await?;
    corp.wait_for_status(&signal, "delivered", WAIT).await?;

    // Four weeks and a day later the broker closes the case and tells the team.
    region.set_clock(15 * day + 29 * day)?;
    let closed = case_until(gem, &case, "automatic close", |c| {
        c["closed_at"].is_string()
    })
    .await?;
    let closed_at: chrono::DateTime<Utc> = serde_json::from_value(closed["closed_at"].clone())?;
    ensure!(
        closed_at > Utc::now() + chrono::Duration::days(43),
        "closed at {closed_at}, not on the test clock"
    );
    let code = corp
        .send_refused(&huurachterstand(&case, gem, &consent)?, WAIT)
        .await?;
    ensure!(code == "case_closed", "{code}");

    let gemeente = gem.oin.to_string();
    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    let of = |event: AuditEvent| {
        audit
            .records
            .iter()
            .filter(move |r| r.event == event)
            .collect::<Vec<_>>()
    };
    let reviews = of(AuditEvent::CaseReviewDue);
    ensure!(
        reviews.len() == 1,
        "review notices recorded: {}",
        reviews.len()
    );
    ensure!(
        reviews[0].counterparties == vec![gemeente],
        "the review notice went to {:?}, not the gemeente alone",
        reviews[0].counterparties
    );
    let closes = of(AuditEvent::CaseClosed);
    ensure!(
        closes.len() == 1 && closes[0].reason.as_deref() == Some("close_after"),
        "case_closed records: {closes:?}"
    );
    Ok(())
}
