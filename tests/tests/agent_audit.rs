//! The agent's own audit trail, with real processes on loopback: a message the sending
//! agent refuses early never reaches the broker, yet its FG finds it. The agent records the
//! refusal in its hash-chained trail; `ketenpost-agent audit export` and `audit verify` read
//! it over the agent's API; `ketenpost-broker audit refusals --agent-trail` verifies the
//! export and shows the refusal under its code for the refusing organisation only, read
//! live from the running broker (which verifies and merges the trail the FG brings) and
//! offline; a tampered export is refused whole, naming the broken record.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use chrono::{Duration, Utc};
use ketenpost_broker::audit::{AuditEvent, AuditRecord, Outcome};
use ketenpost_tests::agents::{seed_policy, signaal_payload, AgentProcess, Outgoing, Region};
use ketenpost_tests::binary;
use serde_json::Value;

/// `ketenpost-agent <args>` against a running agent's API.
fn agent_cli(agent: &AgentProcess, args: &[&str]) -> Result<Output> {
    Command::new(binary("ketenpost-agent")?)
        .arg("--api")
        .arg(agent.api.addr().to_string())
        .arg("--token-file")
        .arg(agent.dir.join("api.token"))
        .args(args)
        .output()
        .context("ketenpost-agent")
}

/// `ketenpost-broker audit <args>`.
fn broker_audit(args: &[&str]) -> Result<Output> {
    Command::new(binary("ketenpost-broker")?)
        .arg("audit")
        .args(args)
        .output()
        .context("ketenpost-broker audit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_is_in_the_agents_trail_and_in_its_fgs_refusals_report() -> Result<()> {
    let mut region = Region::start(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let (corp_oin, zorg_oin) = (corp.oin.to_string(), zorg.oin.to_string());

    // A case without any consent: a signal from the corporation to the care provider is
    // refused by the corporation's own agent, before anything reaches the broker.
    let gem = region.agent("gemeente")?;
    let case = gem.open_case("uitstroom", &[&corp.oin, &zorg.oin]).await?;
    let signal = Outgoing::new(
        "signaal",
        &case,
        signaal_payload("bedreiging", Utc::now() - Duration::hours(1))?,
    )
    .to(&zorg.oin)
    .purpose("uitstroom");
    let (status, code, message) = corp
        .refusal("POST", "/v1/messages", Some(signal.json()))
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "no_consent"),
        "{status} {code}"
    );
    ensure!(message.contains("refused by the agent"), "{message}");

    // The export holds the refusal: our OIN, the code, what we asked, nothing else.
    let export = corp.dir.join("corp-audit.jsonl");
    let out = agent_cli(corp, &["audit", "export", "--out", &path_arg(&export)])?;
    ensure!(out.status.success(), "export: {}", text(&out.stderr));
    let lines = std::fs::read_to_string(&export)?;
    let records: Vec<AuditRecord> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let refusal = records
        .iter()
        .find(|r| r.event == AuditEvent::EarlyRefused)
        .with_context(|| format!("no early_refused record in {lines}"))?;
    ensure!(refusal.outcome == Outcome::Refused, "{refusal:?}");
    ensure!(
        refusal.reason.as_deref() == Some("no_consent: refused by the sending agent"),
        "{refusal:?}"
    );
    ensure!(
        refusal.actor.as_deref() == Some(corp_oin.as_str()),
        "{refusal:?}"
    );
    ensure!(
        refusal.case_ref.as_deref() == Some(case.as_str()),
        "{refusal:?}"
    );
    ensure!(refusal.kind.as_deref() == Some("signaal"), "{refusal:?}");
    ensure!(
        refusal.counterparties == vec![zorg_oin.clone()],
        "{refusal:?}"
    );
    ensure!(
        !lines.contains("bedreiging"),
        "payload content in the agent's trail"
    );

    // The chain verifies, by the CLI (exit code 0) and the API.
    let out = agent_cli(corp, &["audit", "verify"])?;
    ensure!(out.status.success(), "verify: {}", text(&out.stdout));
    let verdict: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(verdict["intact"] == true, "{verdict}");
    ensure!(
        verdict["records"].as_u64() == Some(records.len() as u64),
        "{verdict}"
    );

    // Live: the corporation's FG brings its agent's trail to a read of the running broker
    // and finds the refusal; the care provider's FG, bringing the same file, does not.
    let fed = path_arg(&region.fed.files.dir);
    let trail = path_arg(&export);
    let broker = region.broker_addr()?.to_string();
    let live = |who: &str| {
        broker_audit(&[
            "refusals",
            "--broker",
            &broker,
            "--federation",
            &fed,
            "--as",
            who,
            "--format",
            "json",
            "--agent-trail",
            &trail,
        ])
    };
    let out = live(&corp_oin)?;
    ensure!(out.status.success(), "live: {}", text(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    ensure!(
        rows.iter()
            .any(|r| r["event"] == "early_refused" && r["party"] == corp_oin.as_str()),
        "live: {rows:?}"
    );
    let out = live(&zorg_oin)?;
    ensure!(out.status.success(), "live: {}", text(&out.stderr));
    ensure!(
        !text(&out.stdout).contains("early_refused"),
        "live: {}",
        text(&out.stdout)
    );

    // The broker never saw it; with the agent's trail the FG of the corporation does.
    region.stop()?;
    let data = path_arg(region.data_dir());
    let refusals = |who: &str, trail: &str| {
        broker_audit(&[
            "refusals",
            "--federation",
            &fed,
            "--data",
            &data,
            "--as",
            who,
            "--format",
            "json",
            "--agent-trail",
            trail,
        ])
    };
    let out = broker_audit(&[
        "refusals",
        "--federation",
        &fed,
        "--data",
        &data,
        "--as",
        &corp_oin,
        "--format",
        "json",
    ])?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    ensure!(
        !text(&out.stdout).contains("early_refused"),
        "the broker's trail alone cannot hold an early refusal"
    );
    let out = refusals(&corp_oin, &trail)?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    ensure!(
        rows.iter().any(|r| r["reason"] == "no_consent"
            && r["event"] == "early_refused"
            && r["party"] == corp_oin.as_str()
            && r["count"] == 1),
        "{rows:?}"
    );
    // Another organisation's FG does not see the corporation's own refusals.
    let out = refusals(&zorg_oin, &trail)?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    ensure!(
        !text(&out.stdout).contains("early_refused"),
        "{}",
        text(&out.stdout)
    );

    // A tampered export is refused whole, naming the file and the broken record.
    let tampered = export.with_file_name("tampered.jsonl");
    std::fs::write(
        &tampered,
        lines.replacen("no_consent: refused", "consent_scope: refused", 1),
    )?;
    let out = refusals(&corp_oin, &path_arg(&tampered))?;
    ensure!(!out.status.success(), "a tampered trail was accepted");
    let err = text(&out.stderr);
    let seq = lines
        .lines()
        .position(|l| l.contains("no_consent: refused"))
        .map(|i| i + 1)
        .unwrap_or(0);
    ensure!(
        err.contains("tampered.jsonl") && err.contains(&format!("broken at record {seq}")),
        "{err}"
    );
    Ok(())
}
