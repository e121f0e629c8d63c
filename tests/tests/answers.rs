//! Answer requests carried by a single message, through real processes: a corporation's
//! signal asks only the care provider for an answer by a due date the policy bounds
//! (`answer_request_max`); only the care provider owes one, only it is named in the
//! overdue notice when the test clock passes the due date, and its answer after that
//! date carries `late_answer` itself and shows as `answer_late` in the FG's deadline
//! report. A request beyond the policy's bound is refused with the reason.

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Duration, Utc};
use ketenpost_broker::audit::AuditEvent;
use ketenpost_tests::agents::{reactie_payload, AgentProcess, Outgoing, Region, WAIT};
use serde_json::{json, Value};

/// The test covenant, its signal with no standing answer term and a request bound of
/// 5 days: only an answer request makes anyone owe an answer.
fn policy() -> String {
    let base = ketenpost_schemas::testdata::TEST_POLICY;
    let signal = "[purposes.uitstroom.kinds.signaal]\n";
    let at = base
        .find(signal)
        .expect("the test policy has a signal rule")
        + signal.len();
    let rule_end = base[at..].find("\n\n").map_or(base.len(), |e| at + e);
    let rule = base[at..rule_end].replace("answer_within = \"24 hours\"\n", "");
    format!(
        "{}{rule}\nanswer_request_max = \"5 days\"{}",
        &base[..at],
        &base[rule_end..]
    )
}

fn flags(status: &Value) -> Vec<&str> {
    status["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Poll the sender's status of `id` until it lists an overdue answer.
async fn overdue(corp: &AgentProcess, id: &str) -> Result<Value> {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let s = corp.status(id).await?;
        if s["overdue"].as_array().is_some_and(|o| !o.is_empty()) {
            return Ok(s);
        }
        ensure!(
            std::time::Instant::now() < until,
            "no overdue answer within {WAIT:?}: {s}\n{}",
            corp.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_recipient_asked_owes_the_answer_and_its_late_answer_is_flagged() -> Result<()> {
    let region = Region::start_clocked(
        &policy(),
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let (case, consent) = region.uitstroom_team("test consent").await?;
    let signal = |due: DateTime<Utc>| -> Result<Outgoing> {
        Ok(
            Outgoing::uitstroom_signaal(&case, "geluidsoverlast", &gem.oin, &consent)?
                .to(&zorg.oin)
                .answer_request(&["zorgaanbieder"], due),
        )
    };

    // Beyond the policy's bound of 5 days: refused by the sending agent, with the reason.
    let (status, code, message) = corp
        .refusal(
            "POST",
            "/v1/messages",
            Some(signal(Utc::now() + Duration::days(6))?.json()),
        )
        .await?;
    ensure!(
        status == 422 && code == "answer_request_not_allowed",
        "{status} {code}: {message}"
    );
    ensure!(message.contains("at most 5 days"), "{message}");
    // A role no recipient has.
    let mut stray = signal(Utc::now() + Duration::days(2))?.json();
    stray["answer_request"]["by"] = json!(["woningcorporatie"]);
    let (_, code, message) = corp.refusal("POST", "/v1/messages", Some(stray)).await?;
    ensure!(code == "answer_request_not_allowed", "{code}: {message}");

    // To the gemeente and the care provider, asking only the care provider, within 2 days.
    let due = Utc::now() + Duration::days(2);
    let id = corp.send(&signal(due)?).await?;
    let accepted = corp.wait_for_status(&id, "delivered", WAIT).await?;
    ensure!(flags(&accepted).is_empty(), "{accepted}");
    gem.wait_for_message(&id, WAIT).await?;
    zorg.wait_for_message(&id, WAIT).await?;
    // The care provider's inbox shows that an answer is owed and by when; the gemeente's
    // does not.
    let at_zorg = zorg
        .inbox_summary(&id)
        .await?
        .context("not in zorg's inbox")?;
    ensure!(at_zorg["answer_requested"] == json!(true), "{at_zorg}");
    let owed_by: DateTime<Utc> = serde_json::from_value(at_zorg["answer_due"].clone())?;
    ensure!((owed_by - due).num_milliseconds().abs() < 1000, "{at_zorg}");
    let at_gem = gem
        .inbox_summary(&id)
        .await?
        .context("not in gem's inbox")?;
    ensure!(
        at_gem["answer_requested"] == json!(false) && at_gem["answer_due"].is_null(),
        "{at_gem}"
    );

    // Three days on: the care provider's answer is overdue; the gemeente owes nothing.
    region.set_clock(3 * 24 * 3600)?;
    let status = overdue(corp, &id).await?;
    let owing: Vec<&str> = status["overdue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["owed_by"].as_str())
        .collect();
    ensure!(owing == [zorg.oin.as_str()], "{status}");

    // The care provider answers after the due date: the answer carries late_answer itself.
    let reactie = Outgoing::new("reactie", &case, reactie_payload()?)
        .to(&corp.oin)
        .consent(&consent)
        .in_reply_to(&id);
    let answer = zorg.send(&reactie).await?;
    let answered = zorg.wait_for_status(&answer, "accepted", WAIT).await?;
    ensure!(flags(&answered) == ["late_answer"], "{answered}");

    let (zorg_oin, gem_oin) = (zorg.oin.to_string(), gem.oin.to_string());
    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    // One overdue answer, owed by the care provider; no notice names the gemeente as a
    // party that owes one.
    let overdue_rows: Vec<_> = audit
        .of(AuditEvent::DeadlineLate)
        .into_iter()
        .filter(|r| {
            r.reason
                .as_deref()
                .is_some_and(|w| w.starts_with("answer_overdue"))
        })
        .collect();
    ensure!(overdue_rows.len() == 1, "{overdue_rows:?}");
    ensure!(
        overdue_rows[0].actor.as_deref() == Some(zorg_oin.as_str()),
        "{overdue_rows:?}"
    );
    ensure!(
        audit
            .of(AuditEvent::DeadlineLate)
            .iter()
            .all(|r| r.actor.as_deref() != Some(gem_oin.as_str())),
        "the gemeente owed nothing"
    );
    // The FG's deadline report: overdue, then answered late, both by the care provider.
    let rows = ketenpost_broker::report::deadlines(&audit.records);
    let about: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.message_id == id)
        .map(|r| (r.what.as_str(), r.party.as_str()))
        .collect();
    ensure!(
        about
            == [
                ("answer_overdue", zorg_oin.as_str()),
                ("answer_late", zorg_oin.as_str())
            ],
        "{rows:?}"
    );
    Ok(())
}
