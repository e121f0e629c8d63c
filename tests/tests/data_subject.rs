//! The data subject's rights with real broker and agent processes (Walcheren, 000):
//! a correctie reaches exactly the parties that received the corrected data (a member of
//! the case that did not receive it gets nothing); a person's access request at the
//! municipality covers both of the person's cases, naming organisations and data
//! categories; and the FG's `requests` report shows the request with its term, live and
//! offline.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use anyhow::{ensure, Context, Result};
use ketenpost_broker::audit::AuditEvent;
use ketenpost_schemas::payload::Aanmelding;
use ketenpost_tests::agents::{seed_policy, AgentProcess, Outgoing, Region, WAIT};
use ketenpost_tests::binary;
use serde_json::{json, Value};

/// The consent text the client signs (000:289-297, shortened).
const CONSENT: &str = "Welkom in de Wijk Overeenkomst";

/// `ketenpost-broker audit <args>`: stdout, or the failure with stderr.
fn broker_audit(args: &[&str]) -> Result<String> {
    let out = Command::new(binary("ketenpost-broker")?)
        .arg("audit")
        .args(args)
        .output()
        .context("ketenpost-broker audit")?;
    ensure!(
        out.status.success(),
        "ketenpost-broker audit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A case opened by the gemeente with `members`, registered at the care provider, with
/// the client's consent for the three roles; then the care provider's aanmelding of the
/// client (BSN 111222333) to the gemeente only. Returns the case and the aanmelding's id.
async fn case_with_aanmelding(
    gem: &AgentProcess,
    zorg: &AgentProcess,
    members: &[&AgentProcess],
) -> Result<(String, String)> {
    let oins: Vec<_> = members.iter().map(|a| &a.oin).collect();
    let case = gem.open_case("uitstroom", &oins).await?;
    zorg.register_case_from(gem, &case).await?;
    zorg.grant_consent(
        &case,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
        CONSENT,
    )
    .await?;
    let full = serde_json::to_value(Aanmelding::example())?;
    let id = zorg
        .send(&Outgoing::new("aanmelding", &case, full).to_role("gemeente"))
        .await?;
    gem.wait_for_message(&id, WAIT).await?;
    Ok((case, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctie_reaches_exactly_the_recipients_and_an_access_answer_covers_both_cases(
) -> Result<()> {
    let mut region = Region::start(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;

    // Case one: the corporation is in the team, but the aanmelding went to the gemeente.
    let (case1, aanmelding1) = case_with_aanmelding(gem, zorg, &[corp, zorg]).await?;

    // The client's surname was wrong (000:1754-1757, art. 16 AVG). The care provider names
    // no recipients: its agent seals to the case team it knows, the broker answers with
    // exactly the parties that received the aanmelding, and the agent seals again.
    let correctie = json!({
        "berichten": [aanmelding1],
        "aanleiding": "verzoek_betrokkene",
        "identiteit": [{ "veld": "achternaam", "juist": "Voorbeeld-de Vries" }],
        "ondersteuning": [{ "veld": "ondersteuningsprofiel", "juist": "Ambulant, wekelijks" }],
    });
    let corrected = zorg
        .send(&Outgoing::new("correctie", &case1, correctie))
        .await?;
    let done = zorg.wait_for_status(&corrected, "delivered", WAIT).await?;
    let recipients: Vec<&str> = done["recipients"]
        .as_array()
        .context("recipients")?
        .iter()
        .filter_map(|r| r["oin"].as_str())
        .collect();
    ensure!(
        recipients == [gem.oin.as_str()],
        "the correctie went to {recipients:?}: {done}"
    );
    let at_gem = gem.wait_for_message(&corrected, WAIT).await?;
    ensure!(at_gem["kind"] == "correctie", "{at_gem}");
    ensure!(
        at_gem["payload"]["identiteit"][0]["juist"] == "Voorbeeld-de Vries",
        "{at_gem}"
    );
    // The corporation, in the team but never given the aanmelding, gets nothing: the
    // recipients, fixed when the broker accepted the correctie, are the gemeente alone,
    // and its own inbox holds nothing of it.
    ensure!(
        !corp.has_received(&corrected).await?,
        "the corporation received a correction of data it never had"
    );

    // Case two, the same client (the same BSN in the aanmelding), without the corporation.
    let (case2, _) = case_with_aanmelding(gem, zorg, &[zorg]).await?;

    // The client asks the gemeente for an overview (art. 15, 004:825-853). The gemeente's
    // agent finds both cases by the BSN, written another way.
    let today = chrono::Utc::now().date_naive();
    let answer = gem
        .call(
            "POST",
            "/v1/access-requests",
            Some(json!({ "identifier": "111 222 333", "received_on": today })),
        )
        .await?;
    let request_id = answer["id"].as_str().context("id")?.to_owned();
    let mut found: Vec<&str> = answer["case_refs"]
        .as_array()
        .context("case_refs")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    found.sort();
    let mut want = vec![case1.as_str(), case2.as_str()];
    want.sort();
    ensure!(found == want, "found {found:?}, want {want:?}");
    ensure!(answer["state"] == "open", "{answer}");
    let cases = answer["facts"]["cases"].as_array().context("facts")?;
    ensure!(cases.len() == 2, "{answer}");
    let name = |a: &AgentProcess| -> Result<String> {
        Ok(region
            .fed
            .directory
            .party(&a.oin)
            .context("in the directory")?
            .name
            .clone())
    };
    let (gem_name, zorg_name, corp_name) = (name(gem)?, name(zorg)?, name(corp)?);
    for c in cases {
        ensure!(
            c["legal_basis"].as_str().is_some_and(|s| !s.is_empty())
                && c["retention"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("after the case ends")),
            "{c}"
        );
        let aanmelding = c["flows"]
            .as_array()
            .context("flows")?
            .iter()
            .find(|f| f["kind"] == "aanmelding")
            .context("the aanmelding")?;
        ensure!(
            aanmelding["sender"]["name"] == zorg_name.as_str()
                && aanmelding["recipient"]["name"] == gem_name.as_str(),
            "{aanmelding}"
        );
        let categories: Vec<&str> = aanmelding["categories"]
            .as_array()
            .context("categories")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            categories.contains(&"identity") && categories.contains(&"support"),
            "{categories:?}"
        );
    }
    let html = gem
        .api
        .get_bytes(&format!("/v1/access-requests/{request_id}/answer.html"))
        .await?;
    let html = String::from_utf8(html.to_vec())?;
    for n in [&gem_name, &zorg_name, &corp_name] {
        ensure!(html.contains(n.as_str()), "{n} is not named in the answer");
    }
    for a in [gem, zorg, corp] {
        ensure!(
            !html.contains(a.oin.as_str()),
            "the answer for the person shows an OIN"
        );
    }
    ensure!(
        !html.contains("111222333"),
        "the answer repeats the identifier"
    );

    // The FG's requests report, live: the municipality's FG sees the request and its term.
    let fed_dir = region.fed.files.dir.to_string_lossy().into_owned();
    let addr = region.broker_addr()?.to_string();
    let live = broker_audit(&[
        "requests",
        "--broker",
        &addr,
        "--federation",
        &fed_dir,
        "--as",
        gem.oin.as_str(),
        "--format",
        "json",
    ])?;
    let rows: Value = serde_json::from_str(&live)?;
    let access = rows
        .as_array()
        .context("rows")?
        .iter()
        .find(|r| r["id"] == request_id.as_str())
        .with_context(|| format!("the access request is not in {live}"))?;
    ensure!(
        access["request"] == "access" && access["state"] == "open",
        "{access}"
    );
    ensure!(
        access["due_at"]
            .as_str()
            .is_some_and(|d| d.starts_with(&answer["due_at"].as_str().unwrap_or("-")[..10])),
        "{access} vs {answer}"
    );
    ensure!(
        access["cases"].as_array().map(Vec::len) == Some(2),
        "{access}"
    );
    // The correction is in it too, done once its one recipient receipted it.
    ensure!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == corrected.as_str() && r["request"] == "correction"),
        "{live}"
    );
    // The corporation's FG does not see the gemeente's access request.
    let corp_view = broker_audit(&[
        "requests",
        "--broker",
        &addr,
        "--federation",
        &fed_dir,
        "--as",
        corp.oin.as_str(),
        "--format",
        "csv",
    ])?;
    ensure!(!corp_view.contains(&request_id), "{corp_view}");

    // Answered: the state follows, at the agent and at the broker.
    let answered = gem
        .call(
            "POST",
            &format!("/v1/access-requests/{request_id}/answered"),
            None,
        )
        .await?;
    ensure!(answered["state"] == "answered", "{answered}");

    region.stop()?;
    let offline = broker_audit(&[
        "requests",
        "--federation",
        &fed_dir,
        "--data",
        &region.data_dir().to_string_lossy(),
        "--federation-fg",
    ])?;
    let line = offline
        .lines()
        .find(|l| l.contains(&request_id))
        .with_context(|| format!("no request in\n{offline}"))?;
    ensure!(line.contains("access") && line.contains("done"), "{line}");
    let audit = ketenpost_tests::agents::AuditLog::read(&region.fed, region.data_dir())?;
    ensure!(
        audit.of(AuditEvent::Correction).len() == 1,
        "one correction record for the one affected case"
    );
    ensure!(
        audit.of(AuditEvent::AccessRequested).len() == 2,
        "one access record per case"
    );
    Ok(())
}
