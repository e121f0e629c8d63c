//! Deadlines anchored on payload facts, through real processes: Walcheren's rent-arrears
//! term runs from the day the arrears arose (`huurachterstand_ontstaan_op`,
//! 000:1150-1154), not from the day the corporation observed them.

use anyhow::{ensure, Result};
use chrono::{Duration, Utc};
use ketenpost_tests::agents::{seed_policy, signaal_payload, Outgoing, Region, WAIT};
use serde_json::{json, Value};

fn flags(status: &Value) -> Vec<&str> {
    status["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rent_arrears_term_runs_from_the_day_the_arrears_arose() -> Result<()> {
    let region = Region::start(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let (case, consent) = region
        .uitstroom_team("Welkom in de Wijk Overeenkomst (000:293-297), test")
        .await?;
    // Observed an hour ago either way.
    let arrears = |arose_days_ago: i64| -> Result<Outgoing> {
        let mut p = signaal_payload("huurachterstand", Utc::now() - Duration::hours(1))?;
        p["huurachterstand_ontstaan_op"] =
            json!((Utc::now() - Duration::days(arose_days_ago)).date_naive());
        Ok(Outgoing::new("signaal", &case, p)
            .to(&gem.oin)
            .consent(&consent))
    };

    // Arrears that arose 40 days ago are reported too late ("binnen maximaal 1 maand"),
    // although they were observed an hour ago: accepted and flagged late.
    let late = corp.send(&arrears(40)?).await?;
    let status = corp.wait_for_status(&late, "delivered", WAIT).await?;
    ensure!(flags(&status).contains(&"late"), "{status}");
    // The header's event time is the start of the day the arrears arose, in Amsterdam.
    let at_gem = gem.wait_for_message(&late, WAIT).await?;
    let event: chrono::DateTime<Utc> = serde_json::from_value(at_gem["event_time"].clone())?;
    let arose = (Utc::now() - Duration::days(40)).date_naive();
    ensure!(
        event == ketenpost_schemas::calendar::start_of_local_day(arose),
        "{at_gem}"
    );

    // Arrears of 5 days ago are in time.
    let in_time = corp.send(&arrears(5)?).await?;
    let status = corp.wait_for_status(&in_time, "delivered", WAIT).await?;
    ensure!(flags(&status).is_empty(), "{status}");

    // The event time is not given by hand: another time than the anchor's is refused by
    // the sending agent, naming the field.
    let mut by_hand = arrears(40)?.json();
    by_hand["event_time"] = json!(Utc::now() - Duration::hours(1));
    let (status, code, message) = corp.refusal("POST", "/v1/messages", Some(by_hand)).await?;
    ensure!(status == 400 || status == 422, "{status} {code} {message}");
    ensure!(
        message.contains("huurachterstand_ontstaan_op"),
        "{code}: {message}"
    );

    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    Ok(())
}
