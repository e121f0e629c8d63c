//! Kill the broker with SIGKILL while parties are sending; after a restart every message
//! that was accepted is delivered exactly once, and nothing that was never accepted appears.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ketenpost_schemas::ids::MessageId;
use ketenpost_schemas::protocol::{RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{case_with_consent, signaal, BrokerProcess, Fed, REQUEST_TIMEOUT};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_survive_sigkill_exactly_once() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    // Default roster: one party per role, sorted: gemeente, woningcorporatie, zorgaanbieder.
    let (gem, corp, zorg) = (
        fed.keys(0).unwrap(),
        fed.keys(1).unwrap(),
        fed.keys(2).unwrap(),
    );
    let data = fed.path("broker-data");
    let broker = BrokerProcess::start(&fed, &data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = broker.addr;

    let (gc, cc, zc) = (
        gem.connect(addr).await.unwrap(),
        corp.connect(addr).await.unwrap(),
        zorg.connect(addr).await.unwrap(),
    );
    let (case, consent) = case_with_consent(
        "test",
        "uitstroom",
        (&gem, &gc, "gemeente"),
        &[
            (&zorg.oin, "zorgaanbieder"),
            (&corp.oin, "woningcorporatie"),
        ],
        (&zorg, &zc),
        &["gemeente", "zorgaanbieder", "woningcorporatie"],
    )
    .await
    .unwrap();

    // Pre-seal the messages; send them from 4 tasks until the broker dies.
    let total = 400;
    let mut sealed = Vec::new();
    for _ in 0..total {
        let d = signaal(
            &case,
            consent,
            &[(&zorg.oin, "zorgaanbieder"), (&gem.oin, "gemeente")],
        )
        .unwrap();
        let id = d.id;
        sealed.push((id, fed.seal(&corp, d).unwrap()));
    }
    let accepted = Arc::new(Mutex::new(BTreeSet::<MessageId>::new()));
    let unknown = Arc::new(Mutex::new(BTreeMap::<MessageId, Vec<u8>>::new()));
    let queue = Arc::new(Mutex::new(sealed));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (queue, accepted, unknown, cc) =
            (queue.clone(), accepted.clone(), unknown.clone(), cc.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((id, bytes)) = queue.lock().await.pop() else {
                    break;
                };
                match cc
                    .request(&Request::Submit(bytes.clone()), Duration::from_secs(3))
                    .await
                {
                    Ok(Response::Accepted { message_id, .. }) => {
                        accepted.lock().await.insert(message_id);
                    }
                    Ok(other) => panic!("unexpected answer {other:?}"),
                    // The broker died under us: outcome unknown. Stop sending; what is
                    // left in the queue was never sent.
                    Err(_) => {
                        unknown.lock().await.insert(id, bytes);
                        break;
                    }
                }
            }
        }));
    }
    // Let some be accepted, then SIGKILL.
    for _ in 0..200 {
        if accepted.lock().await.len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill().unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    let mut accepted = accepted.lock().await.clone();
    let unknown = unknown.lock().await.clone();
    assert!(!accepted.is_empty(), "nothing was accepted before the kill");
    assert!(
        !unknown.is_empty(),
        "the kill came after everything was sent"
    );

    // Restart on the same data; resubmit what has an unknown outcome, as an agent's
    // outbox does: accepted now, or `replay` (it was stored before the kill).
    let broker = BrokerProcess::start(&fed, &data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = broker.addr;
    let cc = corp.connect(addr).await.unwrap();
    for (id, bytes) in &unknown {
        match cc
            .request(&Request::Submit(bytes.clone()), REQUEST_TIMEOUT)
            .await
            .unwrap()
        {
            Response::Accepted { message_id, .. } => {
                accepted.insert(message_id);
            }
            Response::Rejected(r) if r.code == RejectCode::Replay => {
                accepted.insert(*id);
            }
            other => panic!("resubmission: {other:?}"),
        }
    }

    // Every accepted message reaches each recipient exactly once, and nothing else does.
    for p in [&zorg, &gem] {
        let c = p.connect(addr).await.unwrap();
        let seen = ketenpost_tests::drain(&fed, p, &c).await.unwrap();
        let got: BTreeSet<MessageId> = seen.keys().copied().collect();
        assert_eq!(
            got, accepted,
            "deliveries to {} differ from the accepted set",
            p.oin
        );
        assert!(
            seen.values().all(|n| *n == 1),
            "a message was delivered twice"
        );
    }
    let status = broker.terminate().unwrap();
    assert!(status.success());
}
