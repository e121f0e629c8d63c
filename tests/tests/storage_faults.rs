//! The check stage's write of a batch's bodies fails (a full disk, an I/O error), in a
//! running broker: each submission of that batch is answered with the storage error and
//! nothing of it is kept, while the broker goes on.
//!
//! - every submission is answered `accepted` or `storage`, never anything else;
//! - the bytes a failed write put into the spool are gone at once (the segment still ends
//!   in zeros where its records end);
//! - a refused submission sent again is accepted as new, not as a duplicate: nothing of
//!   its first try was recorded;
//! - every message is delivered once, and the audit trail verifies after a restart, with
//!   one `accepted` record per message and none for the failed tries.
//!
//! The broker binary is built with the `failpoints` feature (see `tests/Cargo.toml`);
//! `KETENPOST_FAULT=spool.append*2` makes its first two appends to the spool fail after
//! their bytes were written (`transport/src/failpoint.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ketenpost_audit::{AuditEvent, AuditRecord};
use ketenpost_schemas::envelope::{Envelope, Limits};
use ketenpost_schemas::ids::MessageId;
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{drain, on_disk, BrokerProcess, Fed, Trio, REQUEST_TIMEOUT};

/// Messages submitted at once.
const MESSAGES: usize = 16;

fn id_of(bytes: &[u8]) -> MessageId {
    Envelope::decode(bytes, &Limits::default())
        .unwrap()
        .unverified_header()
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_body_write_refuses_its_batch_and_keeps_nothing_of_it() {
    let features = std::process::Command::new(ketenpost_tests::binary("ketenpost-broker").unwrap())
        .arg("features")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&features.stdout).contains("failpoints"),
        "the broker binary was built without faults; run `cargo test --workspace`"
    );
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let data = fed.path("broker-data");
    let fault = PathBuf::from("spool.append*2");
    let broker = BrokerProcess::start_with(
        &fed,
        &data,
        "127.0.0.1:0".parse().unwrap(),
        &[],
        &[("KETENPOST_FAULT", &fault)],
    )
    .unwrap();
    let trio = Trio::start(&fed, broker.addr).await.unwrap();

    // Alone: the fault refuses it, and what the failed write put into the spool is zeroed
    // at once (no later append overwrote it).
    let alone = trio.signal(&fed).unwrap();
    match trio
        .cc
        .request(&Request::Submit(alone.clone()), REQUEST_TIMEOUT)
        .await
        .unwrap()
    {
        Response::Rejected(r) if r.code == RejectCode::Storage => {
            assert!(r.reason.contains("nothing was accepted"), "{}", r.reason);
        }
        other => panic!("a submission whose body write failed was answered {other:?}"),
    }
    assert!(
        !on_disk(&data.join("spool"), &alone),
        "the body of a refused submission is in the spool"
    );

    // Submitted together, so that the check stage takes several of them into one batch:
    // the first batch is refused whole, the others accepted.
    let mut envelopes: Vec<Vec<u8>> = (0..MESSAGES).map(|_| trio.signal(&fed).unwrap()).collect();
    let mut sent = tokio::task::JoinSet::new();
    for (i, bytes) in envelopes.iter().enumerate() {
        let (c, bytes) = (trio.cc.clone(), bytes.clone());
        sent.spawn(async move {
            let answer = c.request(&Request::Submit(bytes), REQUEST_TIMEOUT).await;
            (i, answer.unwrap())
        });
    }
    let mut refused = Vec::new();
    let mut accepted = 0;
    while let Some(done) = sent.join_next().await {
        let (i, answer) = done.unwrap();
        match answer {
            Response::Accepted { message_id, flags } => {
                assert_eq!(message_id, id_of(&envelopes[i]));
                assert!(!flags.contains(&AcceptFlag::Duplicate), "{flags:?}");
                accepted += 1;
            }
            Response::Rejected(r) if r.code == RejectCode::Storage => refused.push(i),
            other => panic!("a submission was answered {other:?}"),
        }
    }
    assert!(!refused.is_empty(), "the second fault refused nothing");
    assert_eq!(accepted + refused.len(), MESSAGES);
    eprintln!("the failed batch refused {} of {MESSAGES}", refused.len());
    envelopes.push(alone);
    refused.push(MESSAGES);

    // Sent again, each is accepted as new: its first try left no trace.
    for &i in &refused {
        match trio
            .cc
            .request(&Request::Submit(envelopes[i].clone()), REQUEST_TIMEOUT)
            .await
            .unwrap()
        {
            Response::Accepted { flags, .. } => {
                assert!(!flags.contains(&AcceptFlag::Duplicate), "{flags:?}");
            }
            other => panic!("a submission sent again was answered {other:?}"),
        }
    }
    let seen = drain(&fed, &trio.zorg, &trio.zc).await.unwrap();
    let expected: BTreeMap<MessageId, usize> = envelopes.iter().map(|e| (id_of(e), 1)).collect();
    assert_eq!(seen, expected, "each message delivered once");
    drop(trio);

    // After a restart: nothing comes again, and no body is left.
    broker.terminate().unwrap();
    let broker = BrokerProcess::start(&fed, &data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let zorg = fed.keys(2).unwrap();
    let zc = zorg.connect(broker.addr).await.unwrap();
    assert!(drain(&fed, &zorg, &zc).await.unwrap().is_empty());
    drop(zc);
    broker.terminate().unwrap();
    for e in &envelopes {
        assert!(
            !on_disk(&data.join("spool"), e),
            "a receipted body is in the spool"
        );
    }

    // The trail verifies; each message accepted once, the failed tries not at all.
    let db = sled::open(data.join("broker.sled")).unwrap();
    let broker_key = ketenpost_schemas::keys::signing_key_from_text(
        &std::fs::read_to_string(&fed.files.broker.signing_key).unwrap(),
    )
    .unwrap()
    .verifying_key();
    let archive = ketenpost_broker::audit::archive_dir(&data);
    let report = ketenpost_broker::audit::verify_chain(&db, &archive, &broker_key).unwrap();
    assert!(report.is_intact(), "audit verify: {report}");
    let records: Vec<AuditRecord> = ketenpost_broker::audit::stored_records(&db, &archive).unwrap();
    for e in &envelopes {
        let id = id_of(e).to_string();
        let accepted = records
            .iter()
            .filter(|r| r.event == AuditEvent::Accepted && r.message_id.as_deref() == Some(&id))
            .count();
        assert_eq!(accepted, 1, "accepted records of one message");
    }
}
