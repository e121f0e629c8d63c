//! Negative paths through a real broker process: each is refused with its own code (or at
//! the handshake), and none breaks the connection for what follows.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ketenpost_schemas::control::{CaseChange, CaseOp, ToestemmingIntrekking};
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{case_with_consent, signaal, BrokerProcess, Fed, REQUEST_TIMEOUT};
use ketenpost_transport::client::Client;
use ketenpost_transport::tls::ClientTls;

fn code(r: Response) -> RejectCode {
    match r {
        Response::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_process_refuses_each_bad_message() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let (gem, corp, zorg) = (
        fed.keys(0).unwrap(),
        fed.keys(1).unwrap(),
        fed.keys(2).unwrap(),
    );
    let broker =
        BrokerProcess::start(&fed, &fed.path("data"), "127.0.0.1:0".parse().unwrap()).unwrap();
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
    let to = [(&zorg.oin, "zorgaanbieder")];
    let submit = |c: &Client, b: Vec<u8>| {
        let c = c.clone();
        async move {
            c.request(&Request::Submit(b), REQUEST_TIMEOUT)
                .await
                .unwrap()
        }
    };

    // A certificate whose OIN is not in the directory: the connection is refused.
    let n = &fed.files.negative;
    let wrong = ClientTls {
        ca: fed.files.ca.cert.clone(),
        cert: n.wrong_oin.cert.clone(),
        key: n.wrong_oin.key.clone(),
    };
    let refused = match Client::connect(addr, "localhost", &wrong).await {
        Ok(c) => c
            .request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a certificate for an unknown OIN was served");

    // Sent as another OIN.
    let bytes = fed
        .seal(&corp, signaal(&case, consent, &to).unwrap())
        .unwrap();
    assert_eq!(
        code(submit(&gc, bytes.clone()).await),
        RejectCode::TransportIdentity
    );

    // Accepted once, then a replay.
    assert!(matches!(
        submit(&cc, bytes.clone()).await,
        Response::Accepted { .. }
    ));
    assert_eq!(code(submit(&cc, bytes).await), RejectCode::Replay);

    // A bad signature: flip a bit of the signature.
    let mut bytes = fed
        .seal(&corp, signaal(&case, consent, &to).unwrap())
        .unwrap();
    let hlen = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    bytes[8 + hlen + 1] ^= 1;
    assert_eq!(code(submit(&cc, bytes).await), RejectCode::BadSignature);

    // Wrong purpose: the case is 'uitstroom'.
    let mut d = signaal(&case, consent, &to).unwrap();
    d.purpose = "overlast".into();
    d.event_time = None;
    assert_eq!(
        code(submit(&cc, fed.seal(&corp, d).unwrap()).await),
        RejectCode::WrongPurpose
    );
    // A second case with only the gemeente and the corporation in its team (check 5 comes
    // before the consent check 6, so no consent is needed to be refused here).
    let other_case = ketenpost_schemas::ids::CaseRef::random();
    for op in [
        CaseOp::Open {
            role: Role::new("gemeente"),
        },
        CaseOp::AddMember {
            oin: corp.oin.clone(),
            role: Role::new("woningcorporatie"),
        },
    ] {
        let change = CaseChange {
            case_ref: other_case.clone(),
            covenant: "test".into(),
            purpose: "uitstroom".into(),
            change: op,
            by: gem.oin.clone(),
            at: chrono::Utc::now(),
        };
        assert_eq!(gem.control(&gc, &change).await.unwrap(), Response::Done);
    }
    let other_consent = uuid::Uuid::now_v7();
    let d = signaal(&other_case, other_consent, &to).unwrap();
    assert_eq!(
        code(submit(&cc, fed.seal(&corp, d).unwrap()).await),
        RejectCode::NotInCaseTeam
    );

    // Malformed bytes; an oversized frame.
    assert_eq!(
        code(submit(&cc, b"KPM1 not an envelope".to_vec()).await),
        RejectCode::Malformed
    );
    let huge = vec![0u8; 17 * 1024 * 1024 + 16];
    // Either a `malformed` answer, or the broker stops reading the stream: both refuse it.
    if let Ok(r) = cc
        .request(&Request::Submit(huge), Duration::from_secs(60))
        .await
    {
        assert_eq!(code(r), RejectCode::Malformed);
    }

    // Withdrawn consent: refused for every later message.
    let w = ToestemmingIntrekking {
        consent_id: consent,
        case_ref: case.clone(),
        withdrawn_at: chrono::Utc::now(),
        recorded_by: zorg.oin.clone(),
    };
    assert_eq!(zorg.control(&zc, &w).await.unwrap(), Response::Done);
    let d = signaal(&case, consent, &to).unwrap();
    assert_eq!(
        code(submit(&cc, fed.seal(&corp, d).unwrap()).await),
        RejectCode::ConsentWithdrawn
    );

    // The connection still works after all that.
    assert!(matches!(
        cc.request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .unwrap(),
        Response::Checkpoint(_)
    ));
    assert!(broker.terminate().unwrap().success());
}
