//! A malformed payload through a real agent process: refused by the agent's API with the
//! field path (and never the value), nothing stored or sent; the agent keeps working.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{ensure, Result};
use ketenpost_tests::agents::{seed_policy, signaal_payload, Outgoing, Region};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_payload_is_refused_with_its_field_path() -> Result<()> {
    let region = Region::start(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let (case, consent) = region.uitstroom_team("consent").await?;

    // A signal whose category is not one of the covenant's, with a secret-looking value.
    let mut payload = signaal_payload("geluidsoverlast", chrono::Utc::now())?;
    payload["categorie"] = json!("GEHEIM-1234567");
    let bad = Outgoing::new("signaal", &case, payload)
        .to(&zorg.oin)
        .consent(&consent);
    let (status, code, message) = corp
        .refusal("POST", "/v1/messages", Some(bad.json()))
        .await?;
    ensure!(status == 400 || status == 422, "status {status}");
    ensure!(message.contains("/categorie"), "{code}: {message}");
    ensure!(
        !message.contains("GEHEIM-1234567"),
        "the value leaked: {message}"
    );

    // Not JSON at all is a clear error too, not a crash.
    let (status, _, _) = corp
        .refusal("POST", "/v1/messages", Some(json!("not an object")))
        .await?;
    ensure!((400..500).contains(&status), "status {status}");

    // The agent still sends a good message afterwards.
    let good = Outgoing::new(
        "signaal",
        &case,
        signaal_payload("geluidsoverlast", chrono::Utc::now())?,
    )
    .to(&zorg.oin)
    .consent(&consent);
    let id = corp.send(&good).await?;
    corp.wait_for_status(&id, "delivered", Duration::from_secs(30))
        .await?;
    region.finish()?;
    Ok(())
}
