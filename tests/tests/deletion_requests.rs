//! A data subject's deletion rights and the handover, with real broker and agent
//! processes: the regievoerder orders the parties that hand over to delete, and later
//! orders every holder to erase; each order is carried out and confirmed, and the audit
//! trail shows every order with its reason and every confirmation.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ketenpost_broker::audit::AuditEvent;
use ketenpost_tests::agents::{seed_policy, AgentProcess, Outgoing, Region, WAIT};
use serde_json::{json, Value};

/// The deletion orders an agent has carried out and confirmed, waited for (at most `WAIT`).
async fn confirmed_orders(a: &AgentProcess, n: usize) -> Result<Vec<Value>> {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let v = a.call("GET", "/v1/deletion-orders", None).await?;
        let list: Vec<Value> = v["deletion_orders"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| !o["confirmed_at"].is_null())
            .collect();
        if list.len() >= n {
            return Ok(list);
        }
        ensure!(
            std::time::Instant::now() < until,
            "{}: {} of {n} deletion orders confirmed after {WAIT:?}: {v}",
            a.name,
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_deletes_at_the_parties_that_hand_over_and_an_erasure_at_every_holder(
) -> Result<()> {
    let region = Region::start(
        &seed_policy("flevoland")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let case = zorg.open_case("uitstroom", &[&corp.oin, &gem.oin]).await?;
    let consent = zorg
        .grant_consent(
            &case,
            &["zorgaanbieder", "woningcorporatie", "gemeente"],
            "toestemming uitstromer",
        )
        .await?;
    let signal = corp
        .send(&Outgoing::uitstroom_signaal(
            &case,
            "geluidsoverlast",
            &zorg.oin,
            &consent,
        )?)
        .await?;
    zorg.wait_for_message(&signal, WAIT).await?;

    // The handover: the corporation hands the case over and deletes its data now.
    let path = format!("/v1/cases/{case}/deletion-orders");
    zorg.call(
        "POST",
        &path,
        Some(json!({ "reason": "handover", "parties": [corp.oin] })),
    )
    .await?;
    let at_corp = confirmed_orders(corp, 1).await?;
    ensure!(at_corp[0]["reason"] == "handover", "{at_corp:?}");
    // The corporation no longer knows the case; the care provider still manages it.
    let (status, _, _) = corp
        .refusal("GET", &format!("/v1/cases/{case}"), None)
        .await?;
    ensure!(
        status == 404,
        "the corporation still knows the case ({status})"
    );
    zorg.call("GET", &format!("/v1/cases/{case}"), None).await?;
    // The regievoerder cannot hand itself over.
    let (status, code, _) = zorg
        .refusal(
            "POST",
            &path,
            Some(json!({ "reason": "handover", "parties": [zorg.oin] })),
        )
        .await?;
    ensure!(status == 422 && code == "conflict", "{status} {code}");

    // The data subject's erasure: every holder deletes, the case ends.
    zorg.call("POST", &path, Some(json!({ "reason": "erasure" })))
        .await?;
    for a in [zorg, gem, corp] {
        // The corporation deleted at the handover already: it is not ordered again.
        let orders = confirmed_orders(a, 1).await?;
        ensure!(orders.len() == 1, "{}: {orders:?}", a.name);
        ensure!(
            orders.iter().any(|o| o["reason"]
                == if a.oin == corp.oin {
                    "handover"
                } else {
                    "erasure"
                }),
            "{}: {orders:?}",
            a.name
        );
    }
    // Nothing can be ordered for the case any more: the broker refuses it.
    let (status, code, _) = zorg
        .refusal(
            "POST",
            &path,
            Some(json!({ "reason": "objection", "purpose": "uitstroom" })),
        )
        .await?;
    ensure!(
        status == 422 && code == "case_closed",
        "a second order was taken ({status} {code})"
    );

    let (zorg_oin, corp_oin, gem_oin) = (
        zorg.oin.to_string(),
        corp.oin.to_string(),
        gem.oin.to_string(),
    );
    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified);
    let ordered: Vec<(String, String)> = audit
        .of(AuditEvent::DeletionOrdered)
        .into_iter()
        .map(|r| {
            (
                r.counterparties.first().cloned().unwrap_or_default(),
                r.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    for want in [
        (corp_oin.clone(), "handover".to_owned()),
        (zorg_oin.clone(), "erasure".to_owned()),
        (gem_oin.clone(), "erasure".to_owned()),
    ] {
        ensure!(ordered.contains(&want), "no order {want:?} in {ordered:?}");
    }
    ensure!(
        !ordered.contains(&(corp_oin.clone(), "erasure".to_owned())),
        "the corporation, gone by handover, was ordered again: {ordered:?}"
    );
    let confirmed: Vec<String> = audit
        .of(AuditEvent::DeletionConfirmed)
        .into_iter()
        .filter_map(|r| r.actor.clone())
        .collect();
    for oin in [&zorg_oin, &gem_oin, &corp_oin] {
        ensure!(
            confirmed.contains(oin),
            "{oin} did not confirm: {confirmed:?}"
        );
    }
    // The FG's requests report: the handover and the erasure, each done within its term
    // once every party ordered confirmed.
    let requests = ketenpost_broker::requests::requests(&audit.records, chrono::Utc::now());
    let of = |reason: &str| requests.iter().find(|r| r.request == reason);
    let handover = of("handover").context("no handover in the requests report")?;
    ensure!(handover.parties == [corp_oin.clone()], "{handover:?}");
    let erasure = of("erasure").context("no erasure in the requests report")?;
    let mut parties = erasure.parties.clone();
    parties.sort();
    let mut want = vec![zorg_oin.clone(), gem_oin.clone()];
    want.sort();
    ensure!(parties == want, "{erasure:?}");
    for r in [handover, erasure] {
        ensure!(
            r.state == ketenpost_broker::requests::RequestState::Done && r.due_at.is_some(),
            "{r:?}"
        );
    }
    ensure!(requests.len() == 2, "{requests:?}");
    Ok(())
}
