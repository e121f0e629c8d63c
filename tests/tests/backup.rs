//! An online backup of a running broker under load, restored into a new data directory:
//! the restored trail verifies, and the restored broker delivers every message that was
//! accepted before the backup began (real processes).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketenpost_schemas::ids::MessageId;
use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{binary, drain, signaal, BrokerProcess, Fed, Trio};

fn run(name: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary(name).unwrap())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_a_broker_that_verifies_and_delivers_what_was_accepted_before(
) {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let backups = fed.path("backups");
    let broker = BrokerProcess::start_with(
        &fed,
        &fed.path("data"),
        "127.0.0.1:0".parse().unwrap(),
        &["--backup-dir", &backups.to_string_lossy()],
        &[],
    )
    .unwrap();
    let trio = Trio::start(&fed, broker.addr).await.unwrap();
    let Trio {
        corp,
        zorg,
        cc,
        case,
        consent,
        ..
    } = trio;

    // Load: four submitters send signals until told to stop, noting what was accepted.
    let accepted: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fed = Arc::new(fed);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (fed, corp, cc, accepted, stop) = (
            fed.clone(),
            corp.clone(),
            cc.clone(),
            accepted.clone(),
            stop.clone(),
        );
        let (case, zorg_oin) = (case.clone(), zorg.oin.clone());
        load.spawn(async move {
            for _ in 0..5_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let bytes = fed
                    .seal(
                        &corp,
                        signaal(&case, consent, &[(&zorg_oin, "zorgaanbieder")]).unwrap(),
                    )
                    .unwrap();
                if let Ok(Response::Accepted { message_id, .. }) = cc
                    .request(&Request::Submit(bytes), Duration::from_secs(30))
                    .await
                {
                    accepted.lock().unwrap().push(message_id);
                }
            }
        });
    }
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < 200 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything answered `accepted` before the backup begins must be in it.
    let before: BTreeSet<MessageId> = accepted.lock().unwrap().iter().copied().collect();
    assert!(before.len() >= 200, "the load did not get going");
    let dest = tokio::task::block_in_place(|| broker.backup(Duration::from_secs(60))).unwrap();
    // The load goes on during and after the backup: wait for more accepted after it.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() <= before.len() + 10 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    let after = accepted.lock().unwrap().len();
    assert!(after > before.len(), "the load stopped before the backup");
    // The original broker is gone for good: killed, not stopped.
    broker.kill().unwrap();

    let restored = fed.path("restored");
    let (ok, said) = run(
        "ketenpost-broker",
        &[
            "restore",
            "--from",
            &dest.to_string_lossy(),
            "--data",
            &restored.to_string_lossy(),
        ],
    );
    assert!(ok, "restore: {said}");
    let (ok, said) = run(
        "ketenpost-broker",
        &[
            "restore",
            "--from",
            &dest.to_string_lossy(),
            "--data",
            &restored.to_string_lossy(),
        ],
    );
    assert!(
        !ok && said.contains("not empty"),
        "restore over data: {said}"
    );
    let (ok, said) = run(
        "ketenpost-broker",
        &[
            "audit",
            "verify",
            &restored.to_string_lossy(),
            "--key",
            &fed.files.broker.signing_key.to_string_lossy(),
        ],
    );
    assert!(ok, "audit verify of the restored data: {said}");

    // A drill on the backup: eight days on, the undelivered signals have expired (their
    // TTL is 7 days) and their answers are overdue. The backup itself is not changed.
    let manifest_before = std::fs::read(dest.join("BACKUP.json")).unwrap();
    let at = (chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339();
    let (ok, said) = run(
        "ketenpost-broker",
        &[
            "rehearse",
            "--backup",
            &dest.to_string_lossy(),
            "--federation",
            &fed.files.dir.to_string_lossy(),
            "--at",
            &at,
            "--format",
            "json",
        ],
    );
    assert!(ok, "rehearse: {said}");
    // stdout (the JSON) comes first in `said`, the drill broker's log after it.
    let drill: serde_json::Value = serde_json::Deserializer::from_str(&said)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let expired = drill["counts"]["expired"].as_u64().unwrap_or(0);
    assert!(
        expired >= before.len() as u64,
        "the drill expired {expired} of {} messages: {}",
        before.len(),
        drill["counts"]
    );
    assert_eq!(
        std::fs::read(dest.join("BACKUP.json")).unwrap(),
        manifest_before
    );

    let broker = BrokerProcess::start(&fed, &restored, "127.0.0.1:0".parse().unwrap()).unwrap();
    let zc = zorg.connect(broker.addr).await.unwrap();
    let seen = drain(&fed, &zorg, &zc).await.unwrap();
    let missing: Vec<_> = before.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages accepted before the backup are not delivered after the restore",
        missing.len(),
        before.len()
    );
    assert!(seen.values().all(|n| *n == 1), "a message came twice");
    broker.terminate().unwrap();
}
