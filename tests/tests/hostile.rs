//! A hostile partner against the real broker process: floods, forged headers, far-future
//! events, revoked certificates, bad directories, and what a recipient gets to see.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use ketenpost_audit::{AuditEvent, AuditRecord};
use ketenpost_schemas::envelope::{Envelope, Limits};
use ketenpost_schemas::ids::CaseRef;
use ketenpost_schemas::protocol::{envelope_from_b64, Delivery, RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{
    binary, case_with_consent, signaal, BrokerProcess, Fed, PartyKeys, REQUEST_TIMEOUT,
};
use ketenpost_transport::client::Client;

fn rejection(r: Response) -> ketenpost_schemas::protocol::Rejection {
    match r {
        Response::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Submit `bytes` and return the broker's answer.
async fn submit(c: &Client, bytes: Vec<u8>) -> Response {
    c.request(&Request::Submit(bytes), REQUEST_TIMEOUT)
        .await
        .unwrap()
}

/// Every audit record of a stopped broker.
fn records(data: &Path) -> Vec<AuditRecord> {
    let db = sled::open(data.join("broker.sled")).unwrap();
    ketenpost_broker::audit::stored_records(&db, &ketenpost_broker::audit::archive_dir(data))
        .unwrap()
}

/// A federation, a running broker, and a case with consent in which the corporation
/// (party 1) may send signals to the care provider (2) and the municipality (0).
struct Setup {
    fed: Fed,
    broker: BrokerProcess,
    parties: Vec<PartyKeys>,
    case: CaseRef,
    consent: uuid::Uuid,
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

/// [`setup`] with extra `serve` arguments for the broker.
async fn setup_with(args: &[&str]) -> Setup {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let parties: Vec<PartyKeys> = (0..3).map(|i| fed.keys(i).unwrap()).collect();
    let broker = BrokerProcess::start_with(
        &fed,
        &fed.path("data"),
        "127.0.0.1:0".parse().unwrap(),
        args,
        &[],
    )
    .unwrap();
    let (gem, corp, zorg) = (&parties[0], &parties[1], &parties[2]);
    let gc = gem.connect(broker.addr).await.unwrap();
    let zc = zorg.connect(broker.addr).await.unwrap();
    let (case, consent) = case_with_consent(
        "test",
        "uitstroom",
        (gem, &gc, "gemeente"),
        &[
            (&zorg.oin, "zorgaanbieder"),
            (&corp.oin, "woningcorporatie"),
        ],
        (zorg, &zc),
        &["gemeente", "zorgaanbieder", "woningcorporatie"],
    )
    .await
    .unwrap();
    gc.close().await;
    zc.close().await;
    Setup {
        fed,
        broker,
        parties,
        case,
        consent,
    }
}

/// Fetch until something arrives (at most 20 s).
async fn fetch_one(c: &Client) -> Vec<Delivery> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let r = c
            .request(
                &Request::Fetch {
                    max: 16,
                    wait_ms: 1000,
                    skip: Vec::new(),
                },
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();
        if let Response::Deliveries(d) = r {
            if !d.is_empty() {
                return d;
            }
        }
    }
    panic!("nothing was delivered within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_partner_does_not_lock_out_another() {
    let s = setup().await;
    let addr = s.broker.addr;
    let (gem, corp, zorg) = (&s.parties[0], &s.parties[1], &s.parties[2]);

    // The municipality floods: 40 connections at once, 8 of which the broker keeps.
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let tls = gem.tls.clone();
        attempts.spawn(async move {
            match Client::connect(addr, "localhost", &tls).await {
                Ok(c) => match c.request(&Request::GetCheckpoint, REQUEST_TIMEOUT).await {
                    Ok(Response::Checkpoint(_)) => Some(c),
                    _ => None,
                },
                Err(_) => None,
            }
        });
    }
    let mut held: Vec<Client> = Vec::new();
    while let Some(done) = attempts.join_next().await {
        held.extend(done.unwrap());
    }
    assert!(
        !held.is_empty() && held.len() <= 8,
        "{} flood connections were served (the limit per party is 8)",
        held.len()
    );

    // On those, 40 requests each that announce a large envelope, send 256 KiB of it and
    // stall: more than the party's 256 requests in flight.
    let mut stalled = Vec::new();
    let mut over_limit = 0;
    for c in &held {
        for _ in 0..40 {
            let Ok((mut send, mut recv)) = c.connection().expect("a QUIC client").open_bi().await
            else {
                continue;
            };
            let mut head = vec![ketenpost_schemas::protocol::PROTOCOL_VERSION, 0x01];
            head.extend(std::iter::repeat_n(0u8, 256 * 1024));
            let _ = tokio::time::timeout(Duration::from_millis(200), send.write_all(&head)).await;
            // A refused request is answered at once.
            if let Ok(Ok(bytes)) =
                tokio::time::timeout(Duration::from_millis(50), recv.read_to_end(4096)).await
            {
                if let Ok(Response::Rejected(r)) = Response::decode(&bytes) {
                    assert_eq!(r.code, RejectCode::OverLimit, "{r}");
                    over_limit += 1;
                }
            }
            stalled.push((send, recv));
        }
    }
    assert!(
        over_limit > 0,
        "no flood request was refused over the limit"
    );

    // Meanwhile the corporation and the care provider work as usual.
    let t0 = Instant::now();
    let cc = corp.connect(addr).await.unwrap();
    let zc = zorg.connect(addr).await.unwrap();
    let to = [(&zorg.oin, "zorgaanbieder")];
    let bytes = s
        .fed
        .seal(corp, signaal(&s.case, s.consent, &to).unwrap())
        .unwrap();
    let r = submit(&cc, bytes).await;
    assert!(matches!(r, Response::Accepted { .. }), "{r:?}");
    let got = fetch_one(&zc).await;
    assert!(matches!(got[0], Delivery::Message { .. }));
    let served_in = t0.elapsed();
    assert!(
        served_in < Duration::from_secs(20),
        "the second partner waited {served_in:?}"
    );

    drop(stalled);
    for c in &held {
        c.close().await;
    }
    cc.close().await;
    zc.close().await;
    let data = s.fed.path("data");
    assert!(s.broker.terminate().unwrap().success());

    // Each episode is audited once, for the flooding party only.
    let limits: Vec<AuditRecord> = records(&data)
        .into_iter()
        .filter(|r| r.event == AuditEvent::LimitExceeded)
        .collect();
    let of = |reason: &str| {
        limits
            .iter()
            .filter(|r| r.reason.as_deref() == Some(reason))
            .count()
    };
    assert!(
        limits
            .iter()
            .all(|r| r.actor.as_deref() == Some(gem.oin.as_str())),
        "{limits:?}"
    );
    assert_eq!(of("connections_per_party"), 1, "{limits:?}");
    assert_eq!(of("streams_per_party"), 1, "{limits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_record_only_verified_facts() {
    let s = setup().await;
    let (gem, corp, zorg) = (&s.parties[0], &s.parties[1], &s.parties[2]);
    let cc = corp.connect(s.broker.addr).await.unwrap();
    let zc = zorg.connect(s.broker.addr).await.unwrap();
    // A header naming a case nobody opened, and the municipality, with a broken signature.
    let forged_case = CaseRef::random();
    let to = [(&gem.oin, "gemeente")];
    let mut bytes = s
        .fed
        .seal(corp, signaal(&forged_case, s.consent, &to).unwrap())
        .unwrap();
    let hlen = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    bytes[8 + hlen + 1] ^= 1;
    let r = submit(&cc, bytes.clone()).await;
    assert_eq!(rejection(r).code, RejectCode::BadSignature);
    // The same forged case, sent over another party's connection.
    let other = s
        .fed
        .seal(corp, signaal(&forged_case, s.consent, &to).unwrap())
        .unwrap();
    let r = submit(&zc, other).await;
    assert_eq!(rejection(r).code, RejectCode::TransportIdentity);
    // A correctly signed message refused later (check 5) is recorded with its facts.
    let unknown_case = CaseRef::random();
    let signed = s
        .fed
        .seal(corp, signaal(&unknown_case, s.consent, &to).unwrap())
        .unwrap();
    let r = submit(&cc, signed).await;
    assert_eq!(rejection(r).code, RejectCode::UnknownCase);
    cc.close().await;
    zc.close().await;
    let data = s.fed.path("data");
    assert!(s.broker.terminate().unwrap().success());

    let all = records(&data);
    let mentions = |r: &AuditRecord| {
        r.case_ref.as_deref() == Some(forged_case.as_str())
            || serde_json::to_string(r)
                .unwrap()
                .contains(forged_case.as_str())
    };
    assert!(
        !all.iter().any(mentions),
        "an unverified header claim reached the audit trail"
    );
    let refused: Vec<&AuditRecord> = all
        .iter()
        .filter(|r| r.event == AuditEvent::Rejected)
        .collect();
    let bad_sig = refused
        .iter()
        .find(|r| r.reason.as_deref() == Some("bad_signature"))
        .expect("the bad signature is audited");
    assert_eq!(bad_sig.actor.as_deref(), Some(corp.oin.as_str()));
    assert!(bad_sig.counterparties.is_empty() && bad_sig.kind.is_none());
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(bad_sig.request_digest.as_deref(), Some(digest.as_str()));
    let transport = refused
        .iter()
        .find(|r| r.reason.as_deref() == Some("transport_identity"))
        .expect("the transport identity refusal is audited");
    assert_eq!(transport.actor.as_deref(), Some(zorg.oin.as_str()));
    assert!(transport.case_ref.is_none() && transport.counterparties.is_empty());
    let verified = refused
        .iter()
        .find(|r| r.reason.as_deref() == Some("unknown_case"))
        .expect("the unknown case refusal is audited");
    assert_eq!(verified.case_ref.as_deref(), Some(unknown_case.as_str()));
    assert_eq!(verified.counterparties, vec![gem.oin.to_string()]);
}

/// The same message sent many times at once: copies checked together all pass the replay
/// check (nothing of theirs has landed yet), so the write itself must find the id: one
/// copy is accepted, and each other is refused as a replay and audited as one (the
/// write's refusal is audited off the async workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_sent_at_once_are_accepted_once_and_each_other_refused_as_a_replay() {
    let s = setup().await;
    let (corp, zorg) = (&s.parties[1], &s.parties[2]);
    let to = [(&zorg.oin, "zorgaanbieder")];
    let bytes = s
        .fed
        .seal(corp, signaal(&s.case, s.consent, &to).unwrap())
        .unwrap();
    let id = Envelope::decode(&bytes, &Limits::default())
        .unwrap()
        .unverified_header()
        .unwrap()
        .id
        .to_string();
    const COPIES: usize = 24;
    let connections = [
        std::sync::Arc::new(corp.connect(s.broker.addr).await.unwrap()),
        std::sync::Arc::new(corp.connect(s.broker.addr).await.unwrap()),
    ];
    let mut copies = tokio::task::JoinSet::new();
    for i in 0..COPIES {
        let (c, bytes) = (connections[i % 2].clone(), bytes.clone());
        copies.spawn(async move { submit(&c, bytes).await });
    }
    let (mut accepted, mut replays) = (0, 0);
    while let Some(r) = copies.join_next().await {
        match r.unwrap() {
            Response::Accepted { .. } => accepted += 1,
            Response::Rejected(r) if r.code == RejectCode::Replay => replays += 1,
            other => panic!("a copy got {other:?}"),
        }
    }
    assert_eq!((accepted, replays), (1, COPIES - 1));
    for c in connections {
        c.close().await;
    }
    let data = s.fed.path("data");
    assert!(s.broker.terminate().unwrap().success());
    let all = records(&data);
    let about = |event: AuditEvent| {
        all.iter()
            .filter(|r| r.event == event && r.message_id.as_deref() == Some(id.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(about(AuditEvent::Accepted).len(), 1);
    let refused = about(AuditEvent::Rejected);
    assert_eq!(refused.len(), COPIES - 1, "each replay is audited");
    for r in refused {
        assert_eq!(r.reason.as_deref(), Some("replay"));
        assert_eq!(r.actor.as_deref(), Some(corp.oin.as_str()));
    }
}

/// A partner that signs badly, sending at once with another that signs well: the check
/// stage verifies the submissions it takes together in one batch, so the bad signatures
/// meet the good ones in the same batches. Each good one is still accepted and each bad
/// one refused and audited as such, every bad one having been verified on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_in_the_same_batches_refuse_only_themselves() {
    let s = setup_with(&["--metrics", "127.0.0.1:0"]).await;
    let (gem, corp, zorg) = (&s.parties[0], &s.parties[1], &s.parties[2]);
    const EACH: usize = 48;
    let to = [(&zorg.oin, "zorgaanbieder")];
    let good: Vec<Vec<u8>> = (0..EACH)
        .map(|_| {
            s.fed
                .seal(corp, signaal(&s.case, s.consent, &to).unwrap())
                .unwrap()
        })
        .collect();
    // The municipality's own messages, each with one bit of its signature flipped: in
    // `s`'s low bytes (it stays canonical, so the signature goes into a batch and makes
    // its equation fail) or in `R` (which may then not decode at all).
    let bad: Vec<Vec<u8>> = (0..EACH)
        .map(|i| {
            let mut bytes = s
                .fed
                .seal(gem, signaal(&s.case, s.consent, &to).unwrap())
                .unwrap();
            let hlen = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            let at = if i % 2 == 0 { 32 + i % 16 } else { i % 32 };
            bytes[8 + hlen + at] ^= 1 << (i % 8);
            bytes
        })
        .collect();
    let honest = [
        std::sync::Arc::new(corp.connect(s.broker.addr).await.unwrap()),
        std::sync::Arc::new(corp.connect(s.broker.addr).await.unwrap()),
    ];
    let hostile = [
        std::sync::Arc::new(gem.connect(s.broker.addr).await.unwrap()),
        std::sync::Arc::new(gem.connect(s.broker.addr).await.unwrap()),
    ];
    let mut all = tokio::task::JoinSet::new();
    for (i, (g, b)) in good.into_iter().zip(bad).enumerate() {
        let c = honest[i % 2].clone();
        all.spawn(async move { (true, submit(&c, g).await) });
        let c = hostile[i % 2].clone();
        all.spawn(async move { (false, submit(&c, b).await) });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(r) = all.join_next().await {
        match r.unwrap() {
            (true, Response::Accepted { .. }) => accepted += 1,
            (false, Response::Rejected(r)) if r.code == RejectCode::BadSignature => refused += 1,
            (good, other) => panic!("a {} one got {other:?}", if good { "good" } else { "bad" }),
        }
    }
    assert_eq!((accepted, refused), (EACH, EACH));
    let v = s
        .broker
        .metrics_of(&[
            "ketenpost_broker_signatures_verified_total{how=\"alone\"}",
            "ketenpost_broker_signatures_verified_total{how=\"batched\"}",
        ])
        .unwrap();
    let (alone, batched) = (v[0].unwrap(), v[1].unwrap());
    // A bad signature is never vouched for by a batch: each was verified alone, after
    // its batch failed or with its key suspect.
    assert!(alone >= EACH as u64, "alone {alone}, batched {batched}");
    assert!(alone + batched >= 2 * EACH as u64);
    for c in honest.iter().chain(&hostile) {
        c.close().await;
    }
    let data = s.fed.path("data");
    assert!(s.broker.terminate().unwrap().success());
    let all = records(&data);
    let by = |event: AuditEvent, who: &ketenpost_schemas::ids::Oin| {
        all.iter()
            .filter(|r| r.event == event && r.actor.as_deref() == Some(who.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(by(AuditEvent::Accepted, &corp.oin).len(), EACH);
    assert!(by(AuditEvent::Rejected, &corp.oin).is_empty());
    let refusals = by(AuditEvent::Rejected, &gem.oin);
    assert_eq!(refusals.len(), EACH);
    assert!(refusals
        .iter()
        .all(|r| r.reason.as_deref() == Some("bad_signature")));
    assert!(by(AuditEvent::Accepted, &gem.oin).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_read_with_the_bound_of_their_kind() {
    let s = setup().await;
    let corp = &s.parties[1];
    let cc = corp.connect(s.broker.addr).await.unwrap();
    // A control record may be 64 KiB, a receipt 8 KiB, a fetch (with its `skip`) about
    // 85 KiB: one byte over is refused without the rest being read.
    let fetch_bound = ketenpost_schemas::protocol::request_bound(0x02, 0).unwrap();
    for (kind, bound) in [(0x04u8, 64 * 1024), (0x03, 8 * 1024), (0x02, fetch_bound)] {
        let mut frame = vec![ketenpost_schemas::protocol::PROTOCOL_VERSION, kind];
        frame.resize(bound + 1, b' ');
        let (mut send, mut recv) = cc
            .connection()
            .expect("a QUIC client")
            .open_bi()
            .await
            .unwrap();
        // The broker may stop the stream before it has all of it.
        let _ = send.write_all(&frame).await;
        let _ = send.finish();
        let bytes = recv.read_to_end(64 * 1024).await.unwrap();
        let r = rejection(Response::decode(&bytes).unwrap());
        assert_eq!(r.code, RejectCode::Malformed, "kind {kind:#04x}: {r}");
        assert!(r.reason.contains(&bound.to_string()), "{}", r.reason);
    }
    // The connection is still served.
    assert!(matches!(
        cc.request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .unwrap(),
        Response::Checkpoint(_)
    ));
    cc.close().await;
    assert!(s.broker.terminate().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_event_time_is_refused() {
    let s = setup().await;
    let (corp, zorg) = (&s.parties[1], &s.parties[2]);
    let cc = corp.connect(s.broker.addr).await.unwrap();
    let to = [(&zorg.oin, "zorgaanbieder")];
    let mut d = signaal(&s.case, s.consent, &to).unwrap();
    d.event_time = Some(chrono::Utc::now() + chrono::Duration::days(365));
    let r = submit(&cc, s.fed.seal(corp, d).unwrap()).await;
    let r = rejection(r);
    assert_eq!(r.code, RejectCode::Malformed);
    assert!(r.reason.contains("event_time"), "{}", r.reason);
    // Within the allowed drift it is fine.
    let mut d = signaal(&s.case, s.consent, &to).unwrap();
    d.event_time = Some(chrono::Utc::now() + chrono::Duration::seconds(60));
    let r = submit(&cc, s.fed.seal(corp, d).unwrap()).await;
    assert!(matches!(r, Response::Accepted { .. }), "{r:?}");
    cc.close().await;
    assert!(s.broker.terminate().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_receives_only_its_own_view() {
    let s = setup().await;
    let (gem, corp, zorg) = (&s.parties[0], &s.parties[1], &s.parties[2]);
    let cc = corp.connect(s.broker.addr).await.unwrap();
    let zc = zorg.connect(s.broker.addr).await.unwrap();
    let to = [(&zorg.oin, "zorgaanbieder"), (&gem.oin, "gemeente")];
    let sent = s
        .fed
        .seal(corp, signaal(&s.case, s.consent, &to).unwrap())
        .unwrap();
    let r = submit(&cc, sent.clone()).await;
    assert!(matches!(r, Response::Accepted { .. }), "{r:?}");
    let Delivery::Message { envelope, .. } = &fetch_one(&zc).await[0] else {
        panic!("expected a message");
    };
    let limits = Limits::default();
    let got = Envelope::decode(&envelope_from_b64(envelope).unwrap(), &limits).unwrap();
    let original = Envelope::decode(&sent, &limits).unwrap();
    assert_eq!(got.header_bytes(), original.header_bytes());
    let header = original.unverified_header().unwrap();
    let (mine, _) = header.body_for(&zorg.oin).unwrap();
    for (i, body) in got.bodies().iter().enumerate() {
        if i == mine {
            assert_eq!(body, &original.bodies()[i]);
        } else {
            assert!(
                body.is_empty(),
                "body {i} (another role's view) was delivered"
            );
        }
    }
    // It verifies as a delivery to the care provider, and to nobody else.
    let key = s
        .fed
        .directory
        .party(&corp.oin)
        .unwrap()
        .verifying_key()
        .unwrap();
    got.clone()
        .into_claimed()
        .unwrap()
        .verify_delivery(&limits, &key, &zorg.oin)
        .unwrap();
    assert!(got
        .into_claimed()
        .unwrap()
        .verify_delivery(&limits, &key, &gem.oin)
        .is_err());
    cc.close().await;
    zc.close().await;
    assert!(s.broker.terminate().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_still_listed_in_the_directory_is_refused() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let (gem, corp) = (fed.keys(0).unwrap(), fed.keys(1).unwrap());
    // Revoke the corporation's certificate; the directory still lists it as active.
    let out = std::process::Command::new(binary("ketenpost-certs").unwrap())
        .args(["revoke", "--federation"])
        .arg(&fed.files.dir)
        .args(["--oin", corp.oin.as_str(), "--crl-only"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fed.directory.active_party(&corp.oin).is_some());
    let broker =
        BrokerProcess::start(&fed, &fed.path("data"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let refused = match corp.connect(broker.addr).await {
        Ok(c) => c
            .request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a revoked certificate was served");
    // Everybody else is still served.
    let gc = gem.connect(broker.addr).await.unwrap();
    gc.close().await;
    assert!(broker.terminate().unwrap().success());
}

#[test]
fn a_directory_entry_without_a_fingerprint_is_refused_at_load() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let f = &fed.files;
    let mut dir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&f.directory.file).unwrap()).unwrap();
    dir["parties"][1]["cert_fingerprint"] = serde_json::json!("");
    let bytes = serde_json::to_vec_pretty(&dir).unwrap();
    let key = ketenpost_schemas::keys::signing_key_from_text(
        &std::fs::read_to_string(&f.federation.signing_key).unwrap(),
    )
    .unwrap();
    let sig =
        ketenpost_schemas::keys::sign(&key, ketenpost_schemas::keys::Context::Directory, &bytes);
    std::fs::write(&f.directory.file, &bytes).unwrap();
    std::fs::write(
        &f.directory.sig,
        ketenpost_schemas::keys::signature_to_text(&sig),
    )
    .unwrap();
    let out = std::process::Command::new(binary("ketenpost-broker").unwrap())
        .arg("serve")
        .arg("--federation")
        .arg(&f.dir)
        .arg("--data")
        .arg(fed.path("data"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the broker started");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cert_fingerprint"), "{said}");
}
