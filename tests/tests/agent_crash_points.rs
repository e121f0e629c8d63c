//! Kill an agent with SIGKILL at each of its write points (outbox, submission, notice
//! acknowledgement, inbox, receipt, deletion, deletion confirmation), start it again on the
//! same data, and check
//! that nothing was lost or done twice:
//!
//! - the message the corporation sent is accepted once and sits in its outbox once;
//! - the zorgaanbieder has it in its inbox exactly once, and receipted it once;
//! - every party deleted the case once and the broker recorded one confirmation each;
//! - the broker's audit trail verifies.
//!
//! The agent binary is built with the `failpoints` feature (see `tests/Cargo.toml`);
//! `KETENPOST_FAILPOINT=agent-<step>.<stage>` makes it SIGKILL itself there. The broker runs
//! on a test clock file, so a year of case retention passes without sleeping.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::agents::{signaal_payload, AgentProcess, AuditLog, Outgoing};
use ketenpost_tests::{BrokerProcess, Fed};
use serde_json::Value;

const DAY: i64 = 24 * 3600;
/// Roster order of the default roster: gemeente, woningcorporatie, zorgaanbieder.
const GEM: usize = 0;
const CORP: usize = 1;
const ZORG: usize = 2;

struct Run {
    fed: Fed,
    point: &'static str,
    broker: BrokerProcess,
    clock_file: PathBuf,
    agents: Vec<AgentProcess>,
    victim: usize,
    crashed: bool,
}

impl Run {
    fn dir(fed: &Fed, i: usize) -> PathBuf {
        fed.path(&format!("agent-{i}"))
    }

    /// If the victim died at its crash point, start it again without one.
    fn revive(&mut self) {
        if self.crashed {
            return;
        }
        let exited = self.agents[self.victim].wait_exit(Duration::ZERO).unwrap();
        if exited.is_some() {
            self.crashed = true;
            let addr = self.broker.addr;
            let dir = Run::dir(&self.fed, self.victim);
            self.agents[self.victim] =
                AgentProcess::start(&self.fed, self.victim, addr, &dir).unwrap();
        }
    }

    /// Poll (bounded) until `check` gives a value, reviving the victim when it died.
    async fn until<T>(&mut self, what: &str, check: impl AsyncCheck<T>) -> T {
        let start = Instant::now();
        loop {
            self.revive();
            if let Some(v) = check.check(self).await {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "{}: {what} did not happen within 40 s",
                self.point
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A condition over the run, polled by [`Run::until`].
trait AsyncCheck<T> {
    async fn check(&self, run: &Run) -> Option<T>;
}

struct Outbox;
impl AsyncCheck<Vec<Value>> for Outbox {
    async fn check(&self, run: &Run) -> Option<Vec<Value>> {
        let v = run.agents[CORP]
            .call("GET", "/v1/messages", None)
            .await
            .ok()?;
        let list = v["messages"].as_array().cloned()?;
        (!list.is_empty()).then_some(list)
    }
}

struct Delivered(String);
impl AsyncCheck<()> for Delivered {
    async fn check(&self, run: &Run) -> Option<()> {
        let s = run.agents[CORP]
            .call("GET", &format!("/v1/messages/{}", self.0), None)
            .await
            .ok()?;
        (s["status"] == "delivered").then_some(())
    }
}

struct InInbox(String);
impl AsyncCheck<usize> for InInbox {
    async fn check(&self, run: &Run) -> Option<usize> {
        let v = run.agents[ZORG]
            .call("GET", "/v1/inbox?all=true", None)
            .await
            .ok()?;
        let list = v["messages"].as_array().cloned()?;
        let n = list
            .iter()
            .filter(|m| m["message_id"].as_str() == Some(self.0.as_str()))
            .count();
        (n > 0).then_some(n)
    }
}

struct AllDeleted;
impl AsyncCheck<()> for AllDeleted {
    async fn check(&self, run: &Run) -> Option<()> {
        for a in &run.agents {
            let v = a.call("GET", "/v1/deletion-orders", None).await.ok()?;
            let list = v["deletion_orders"].as_array().cloned()?;
            if list.len() != 1 || list[0]["confirmed_at"].is_null() {
                return None;
            }
        }
        Some(())
    }
}

async fn scenario(point: &'static str, victim: usize) {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let clock_file = fed.path("clock");
    std::fs::write(&clock_file, "0").unwrap();
    let broker = BrokerProcess::start_with(
        &fed,
        &fed.path("broker-data"),
        "127.0.0.1:0".parse().unwrap(),
        &["--sweep-interval-secs", "1"],
        &[("KETENPOST_TEST_CLOCK_FILE", &clock_file)],
    )
    .unwrap();
    let mut agents = Vec::new();
    for i in [GEM, CORP, ZORG] {
        let env: Vec<(&str, &str)> = if i == victim {
            vec![("KETENPOST_FAILPOINT", point)]
        } else {
            vec![]
        };
        agents.push(
            AgentProcess::start_with_env(&fed, i, broker.addr, &Run::dir(&fed, i), &env).unwrap(),
        );
    }
    let mut run = Run {
        fed,
        point,
        broker,
        clock_file,
        agents,
        victim,
        crashed: false,
    };

    // The gemeente opens the case; the zorgaanbieder registers it and the client's consent.
    let (corp_oin, zorg_oin) = (run.agents[CORP].oin.clone(), run.agents[ZORG].oin.clone());
    let case = run.agents[GEM]
        .open_case("uitstroom", &[&zorg_oin, &corp_oin])
        .await
        .unwrap();
    run.agents[ZORG]
        .register_case_from(&run.agents[GEM], &case)
        .await
        .unwrap();
    run.agents[CORP]
        .register_case_from(&run.agents[GEM], &case)
        .await
        .unwrap();
    let consent_id = run.agents[ZORG]
        .grant_consent(
            &case,
            &["gemeente", "zorgaanbieder", "woningcorporatie"],
            "consent",
        )
        .await
        .unwrap();

    // The corporation signals the zorgaanbieder. Killed before it answered, the partner
    // system does not know the id: the outbox says which message there is.
    let m = Outgoing::new(
        "signaal",
        &case,
        signaal_payload("geluidsoverlast", Utc::now() - chrono::Duration::hours(1)).unwrap(),
    )
    .to(&zorg_oin)
    .consent(&consent_id);
    let _ = run.agents[CORP].send(&m).await;
    let outbox = run.until("the message in the outbox", Outbox).await;
    assert_eq!(outbox.len(), 1, "{point}: outbox {outbox:?}");
    let id = outbox[0]["message_id"].as_str().unwrap().to_owned();
    run.until("delivery", Delivered(id.clone())).await;
    let copies = run
        .until("the message in the inbox", InInbox(id.clone()))
        .await;
    assert_eq!(
        copies, 1,
        "{point}: the inbox holds the message {copies} times"
    );

    // The case closes; a year and two days on, every party deletes it and confirms.
    run.agents[GEM]
        .call("POST", &format!("/v1/cases/{case}/close"), None)
        .await
        .unwrap();
    std::fs::write(&run.clock_file, (367 * DAY).to_string()).unwrap();
    run.until("every deletion confirmed", AllDeleted).await;
    assert!(
        run.crashed,
        "{point}: the agent never reached its crash point (built without failpoints?)"
    );

    // No agent holds a data key of the deleted case any more.
    for i in 0..run.agents.len() {
        let cases = Run::dir(&run.fed, i).join("data/vault/cases");
        assert!(
            cases.is_dir(),
            "{point}: agent {i} has no vault at {cases:?}"
        );
        let keys = std::fs::read_dir(&cases)
            .map(|d| {
                d.flatten()
                    .filter_map(|c| std::fs::read_dir(c.path()).ok())
                    .map(|k| k.count())
                    .sum::<usize>()
            })
            .unwrap_or(0);
        assert_eq!(keys, 0, "{point}: agent {i} still holds {keys} data keys");
    }

    // Stop everything, then read the broker's trail.
    let agents = std::mem::take(&mut run.agents);
    for a in agents {
        a.terminate().unwrap();
    }
    let Run { fed, broker, .. } = run;
    assert!(broker.terminate().unwrap().success());
    let log = AuditLog::read(&fed, &fed.path("broker-data")).unwrap();
    let ok = |event: AuditEvent, by: Option<&str>| {
        log.records
            .iter()
            .filter(|r| {
                r.event == event
                    && r.outcome != Outcome::Refused
                    && by.is_none_or(|o| r.actor.as_deref() == Some(o))
            })
            .count()
    };
    let about = log.about(&id);
    let accepted = about
        .iter()
        .filter(|r| r.event == AuditEvent::Accepted)
        .count();
    assert_eq!(accepted, 1, "{point}: accepted records");
    let receipts = about
        .iter()
        .filter(|r| r.event == AuditEvent::Receipt && r.outcome != Outcome::Refused)
        .count();
    assert_eq!(receipts, 1, "{point}: receipt records");
    for p in fed.files.parties.iter().take(3) {
        assert_eq!(
            ok(AuditEvent::DeletionConfirmed, Some(p.oin.as_str())),
            1,
            "{point}: confirmations by {}",
            p.name
        );
    }
}

macro_rules! crash_at {
    ($($name:ident => $point:literal, $victim:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                scenario($point, $victim).await;
            }
        )*
    };
}

crash_at! {
    agent_crash_after_the_outbox_write => "agent-outbox.durable", CORP;
    agent_crash_after_the_broker_accepted => "agent-submit.answered", CORP;
    agent_crash_after_notices_are_acknowledged => "agent-notice.acked", CORP;
    agent_crash_after_the_inbox_write => "agent-inbox.durable", ZORG;
    agent_crash_after_the_broker_took_the_receipt => "agent-receipt.answered", ZORG;
    agent_crash_after_shredding_the_keys => "agent-deletion.shredded", ZORG;
    agent_crash_after_deleting => "agent-deletion.durable", ZORG;
    agent_crash_after_the_broker_took_the_confirmation => "agent-confirmation.answered", ZORG;
}
