//! The broker over real QUIC on loopback: every check with its own rejection code,
//! restart durability, receipts, expiry and `audit verify`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeliveryReceipt, ExpiryNotice, Record, SignedRecord, Toestemming,
    ToestemmingIntrekking,
};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{Envelope, LegalBasis, Limits};
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{Aanmelding, Signaal};
use ketenpost_schemas::policy::{Ground, Policy, Role};
use ketenpost_schemas::protocol::{
    envelope_from_b64, AcceptFlag, Delivery, ReceiptOutcome, RejectCode, Request, Response,
};
use ketenpost_schemas::seal::{open, seal, Draft, Sender};
use ketenpost_transport::client::Client;
use ketenpost_transport::tls::ClientTls;

use ketenpost_schemas::testdata::TEST_POLICY as POLICY;

const ROSTER: &str = r#"
[[party]]
name = "Gemeente Test"
oin = "00000001000000000001"
roles = ["gemeente"]
[[party]]
name = "Zorg Test"
oin = "00000001000000000002"
roles = ["zorgaanbieder"]
[[party]]
name = "Corporatie Een"
oin = "00000001000000000003"
roles = ["woningcorporatie"]
[[party]]
name = "Corporatie Twee"
oin = "00000001000000000004"
roles = ["woningcorporatie"]
"#;

const T: Duration = Duration::from_secs(10);

struct World {
    _dir: tempfile::TempDir,
    fed: Federation,
    policy: Policy,
    directory: Directory,
    data: PathBuf,
    broker: Option<Broker>,
    addr: SocketAddr,
}

struct Party {
    oin: Oin,
    key: SigningKey,
    age: age::x25519::Identity,
    client: Client,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        std::fs::write(dir.path().join("roster.toml"), ROSTER).unwrap();
        let mut opts = InitOptions::new(dir.path().join("policy.toml"), dir.path().join("fed"));
        opts.roster = Some(dir.path().join("roster.toml"));
        let fed = ketenpost_certs::init(&opts).unwrap();
        let policy = fed.load_policy().unwrap();
        let directory = fed.load_directory(&policy).unwrap();
        let data = dir.path().join("data");
        let mut w = World {
            _dir: dir,
            fed,
            policy,
            directory,
            data,
            broker: None,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        w.start().await;
        w
    }

    async fn start(&mut self) {
        let cfg = BrokerConfig::for_federation(&self.fed, self.data.clone(), self.addr);
        let b = Broker::start(cfg).await.unwrap();
        self.addr = b.local_addr();
        self.broker = Some(b);
    }

    async fn stop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }

    async fn connect_files(&self, cert: &Path, key: &Path) -> Result<Client, String> {
        let tls = ClientTls {
            ca: self.fed.ca.cert.clone(),
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        let c = Client::connect(self.addr, "localhost", &tls)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3 client auth failures show on the first request.
        match c.request(&Request::GetCheckpoint, T).await {
            Ok(_) => Ok(c),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn party(&self, i: usize) -> Party {
        let p = &self.fed.parties[i];
        Party {
            oin: p.oin.clone(),
            key: keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key).unwrap())
                .unwrap(),
            age: keys::age_identity_from_text(&std::fs::read_to_string(&p.age_key).unwrap())
                .unwrap(),
            client: self.connect_files(&p.cert, &p.key).await.unwrap(),
        }
    }

    fn seal(&self, from: &Party, draft: Draft) -> Vec<u8> {
        seal(
            draft,
            Sender {
                oin: &from.oin,
                key: &from.key,
            },
            &self.policy,
            &self.directory,
            Utc::now(),
        )
        .unwrap()
        .0
        .encode()
    }
}

async fn send(p: &Party, req: Request) -> Response {
    p.client.request(&req, T).await.unwrap()
}

async fn control<R: Record>(p: &Party, r: &R) -> Response {
    send(
        p,
        Request::Control(SignedRecord::sign(r, p.oin.clone(), &p.key).unwrap()),
    )
    .await
}

fn code(r: Response) -> RejectCode {
    match r {
        Response::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn accepted(r: Response) -> Vec<AcceptFlag> {
    match r {
        Response::Accepted { flags, .. } => flags,
        other => panic!("expected accepted, got {other:?}"),
    }
}

struct Scene {
    w: World,
    gem: Party,
    zorg: Party,
    corp: Party,
    corp2: Party,
    case: CaseRef,
    consent: uuid::Uuid,
}

/// A case under 'uitstroom' with gemeente, zorgaanbieder and one corporation, and a consent.
async fn scene() -> Scene {
    let w = World::new().await;
    let (gem, zorg, corp, corp2) = (
        w.party(0).await,
        w.party(1).await,
        w.party(2).await,
        w.party(3).await,
    );
    let case = CaseRef::random();
    let change = |op| CaseChange {
        case_ref: case.clone(),
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        change: op,
        by: gem.oin.clone(),
        at: Utc::now(),
    };
    assert_eq!(
        control(
            &gem,
            &change(CaseOp::Open {
                role: Role::new("gemeente")
            })
        )
        .await,
        Response::Done
    );
    for (p, role) in [(&zorg, "zorgaanbieder"), (&corp, "woningcorporatie")] {
        let r = control(
            &gem,
            &change(CaseOp::AddMember {
                oin: p.oin.clone(),
                role: Role::new(role),
            }),
        )
        .await;
        assert_eq!(r, Response::Done);
    }
    let consent = uuid::Uuid::now_v7();
    let t = Toestemming {
        consent_id: consent,
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        case_ref: case.clone(),
        parties: vec![],
        roles: ["gemeente", "zorgaanbieder", "woningcorporatie"]
            .map(Role::new)
            .to_vec(),
        valid_from: Utc::now() - chrono::Duration::minutes(1),
        valid_until: None,
        document_sha256: "ab".repeat(32),
        obtained_by: zorg.oin.clone(),
        obtained_at: Utc::now(),
    };
    assert_eq!(control(&zorg, &t).await, Response::Done);
    Scene {
        w,
        gem,
        zorg,
        corp,
        corp2,
        case,
        consent,
    }
}

impl Scene {
    fn signaal(&self, to: &[(&Party, &str)]) -> Draft {
        let mut d = Draft::new(
            "uitstroom",
            Kind::Signaal,
            self.case.clone(),
            to.iter()
                .map(|(p, r)| (p.oin.clone(), Role::new(*r)))
                .collect(),
            LegalBasis::Consent {
                consent_id: self.consent,
            },
            serde_json::to_value(Signaal::example()).unwrap(),
        );
        d.event_time = Some(Utc::now() - chrono::Duration::hours(2));
        d
    }

    fn aanmelding(&self) -> Draft {
        Draft::new(
            "uitstroom",
            Kind::Aanmelding,
            self.case.clone(),
            vec![
                (self.gem.oin.clone(), Role::new("gemeente")),
                (self.corp.oin.clone(), Role::new("woningcorporatie")),
            ],
            LegalBasis::Consent {
                consent_id: self.consent,
            },
            serde_json::to_value(Aanmelding::example()).unwrap(),
        )
    }

    async fn submit(&self, from: &Party, d: Draft) -> Response {
        send(from, Request::Submit(self.w.seal(from, d))).await
    }
}

async fn fetch(p: &Party) -> Vec<Delivery> {
    match send(
        p,
        Request::Fetch {
            max: 50,
            wait_ms: 0,
            skip: Vec::new(),
        },
    )
    .await
    {
        Response::Deliveries(d) => d,
        other => panic!("{other:?}"),
    }
}

/// The queue positions of the messages among `d`.
fn message_seqs(d: &[Delivery]) -> Vec<u64> {
    d.iter()
        .filter_map(|d| match d {
            Delivery::Message { seq, .. } => Some(*seq),
            Delivery::Notice { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn a_fetch_that_skips_what_it_holds_waits_for_the_next_message() {
    let s = scene().await;
    let (zorg, corp) = (&s.zorg, &s.corp);
    accepted(s.submit(corp, s.signaal(&[(zorg, "zorgaanbieder")])).await);
    let held = message_seqs(&fetch(zorg).await);
    assert_eq!(held.len(), 1);
    // Skipping the one message queued, a long poll waits and comes back empty...
    let skipping = |wait_ms| Request::Fetch {
        max: 50,
        wait_ms,
        skip: held.clone(),
    };
    let started = std::time::Instant::now();
    match send(zorg, skipping(300)).await {
        Response::Deliveries(d) => assert!(message_seqs(&d).is_empty(), "{d:?}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    // ...and is answered by the next message, alone.
    let waiting = tokio::spawn({
        let (client, req) = (zorg.client.clone(), skipping(10_000));
        async move { client.request(&req, T).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    accepted(s.submit(corp, s.signaal(&[(zorg, "zorgaanbieder")])).await);
    let next = match waiting.await.unwrap() {
        Response::Deliveries(d) => message_seqs(&d),
        other => panic!("{other:?}"),
    };
    assert_eq!(next.len(), 1);
    assert_ne!(next, held);
    // Not receipted, the first is still queued: a fetch without skip has both.
    assert_eq!(message_seqs(&fetch(zorg).await).len(), 2);
}

#[tokio::test]
async fn every_check_refuses_with_its_own_code() {
    let s = scene().await;
    let (zorg, gem, corp, corp2) = (&s.zorg, &s.gem, &s.corp, &s.corp2);

    // The happy path first.
    let flags = accepted(
        s.submit(
            corp,
            s.signaal(&[(zorg, "zorgaanbieder"), (gem, "gemeente")]),
        )
        .await,
    );
    assert!(flags.is_empty());

    // 1. A partner cannot send as another OIN.
    let forged = s.w.seal(corp, s.signaal(&[(zorg, "zorgaanbieder")]));
    assert_eq!(
        code(send(corp2, Request::Submit(forged)).await),
        RejectCode::TransportIdentity
    );

    // 3. Replay.
    let bytes = s.w.seal(corp, s.signaal(&[(zorg, "zorgaanbieder")]));
    accepted(send(corp, Request::Submit(bytes.clone())).await);
    assert_eq!(
        code(send(corp, Request::Submit(bytes)).await),
        RejectCode::Replay
    );

    // 4. A role not allowed to send the kind.
    let mut d = s.signaal(&[(zorg, "zorgaanbieder")]);
    d.kind = Kind::Aanmelding;
    d.payload = serde_json::to_value(Aanmelding::example()).unwrap();
    d.recipients = vec![(gem.oin.clone(), Role::new("gemeente"))];
    d.event_time = None;
    assert_eq!(
        code(s.submit(corp, d).await),
        RejectCode::SenderRoleNotAllowed
    );

    // 5. A recipient outside the case team; a wrong purpose.
    let mut d = s.aanmelding();
    d.recipients = vec![(corp2.oin.clone(), Role::new("woningcorporatie"))];
    assert_eq!(code(s.submit(zorg, d).await), RejectCode::NotInCaseTeam);
    let mut d = s.signaal(&[(zorg, "zorgaanbieder")]);
    d.purpose = "overlast".into();
    d.event_time = None;
    assert_eq!(code(s.submit(corp, d).await), RejectCode::WrongPurpose);

    // 6. No consent; a ground the policy does not allow for signaal; an allowed ground.
    let mut d = s.signaal(&[(zorg, "zorgaanbieder")]);
    d.legal_basis = LegalBasis::Covenant;
    assert_eq!(code(s.submit(corp, d).await), RejectCode::NoConsent);
    let mut d = s.signaal(&[(zorg, "zorgaanbieder")]);
    d.legal_basis = LegalBasis::NonConsent {
        ground: Ground::new("acute_danger").unwrap(),
        justification: "file-123".into(),
    };
    assert_eq!(code(s.submit(corp, d).await), RejectCode::GroundNotAllowed);
    let mut d = s.aanmelding();
    d.legal_basis = LegalBasis::NonConsent {
        ground: Ground::new("acute_danger").unwrap(),
        justification: "file-123".into(),
    };
    assert_eq!(
        accepted(s.submit(zorg, d).await),
        vec![AcceptFlag::NonConsentGround]
    );

    // 7. Late is accepted and flagged.
    let mut d = s.signaal(&[(zorg, "zorgaanbieder")]);
    d.event_time = Some(Utc::now() - chrono::Duration::hours(49));
    assert_eq!(accepted(s.submit(corp, d).await), vec![AcceptFlag::Late]);

    // Withdrawn consent: refused for every later message.
    let w = ToestemmingIntrekking {
        consent_id: s.consent,
        case_ref: s.case.clone(),
        withdrawn_at: Utc::now(),
        recorded_by: zorg.oin.clone(),
    };
    assert_eq!(control(zorg, &w).await, Response::Done);
    let d = s.signaal(&[(zorg, "zorgaanbieder")]);
    assert_eq!(code(s.submit(corp, d).await), RejectCode::ConsentWithdrawn);

    // Garbage is refused, not fatal to the connection.
    assert_eq!(
        code(send(corp, Request::Submit(vec![1, 2, 3])).await),
        RejectCode::Malformed
    );
    assert!(matches!(
        send(corp, Request::GetCheckpoint).await,
        Response::Checkpoint(_)
    ));
}

#[tokio::test]
async fn bad_certificates_are_refused_at_the_handshake() {
    let w = World::new().await;
    let n = &w.fed.negative;
    for (what, files) in [
        ("expired", &n.expired),
        ("revoked", &n.revoked),
        ("foreign", &n.foreign),
    ] {
        let r = w.connect_files(&files.cert, &files.key).await;
        assert!(r.is_err(), "{what} certificate was accepted");
    }
    // A valid certificate for an OIN outside the directory: the connection is closed.
    let r = w.connect_files(&n.wrong_oin.cert, &n.wrong_oin.key).await;
    assert!(r.is_err(), "wrong-OIN certificate was accepted");
}

#[tokio::test]
async fn accepted_messages_survive_a_restart_and_go_once_receipted() {
    let mut s = scene().await;
    let r = s.submit(&s.zorg, s.aanmelding()).await;
    let Response::Accepted { message_id, .. } = r else {
        panic!("{r:?}")
    };

    s.w.stop().await;
    s.w.start().await;
    let corp = s.w.party(2).await;
    let zorg = s.w.party(1).await;

    let items = fetch(&corp).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let Delivery::Message { envelope, .. } = &items[0] else {
        panic!()
    };
    let env = Envelope::decode(&envelope_from_b64(envelope).unwrap(), &Limits::default()).unwrap();
    let dir = &s.w.directory;
    let v = env
        .verify_delivery(&Limits::default(), &corp.oin, |o| {
            dir.active_party(o).and_then(|p| p.verifying_key().ok())
        })
        .unwrap();
    let opened = open(&v, &corp.oin, &corp.age, &s.w.policy).unwrap();
    assert_eq!(opened.header.id, message_id);
    // The corporation's view only.
    for k in opened.payload.as_object().unwrap().keys() {
        assert!(
            [
                "identiteit",
                "huishouden",
                "contact",
                "woonhistorie",
                "woonwens",
                "plaatsing",
                "gedragsaanwijzing"
            ]
            .contains(&k.as_str()),
            "{k}"
        );
    }
    // Not receipted yet: fetched again.
    assert_eq!(fetch(&corp).await.len(), 1);
    let receipt = DeliveryReceipt {
        message_id,
        recipient: corp.oin.clone(),
        body_sha256: opened.body_sha256.clone(),
        received_at: Utc::now(),
    };
    // A receipt signed by someone else is refused.
    let forged = SignedRecord::sign(&receipt, corp.oin.clone(), &zorg.key).unwrap();
    assert_eq!(
        code(send(&corp, Request::Receipt(forged)).await),
        RejectCode::BadSignature
    );
    let rec = SignedRecord::sign(&receipt, corp.oin.clone(), &corp.key).unwrap();
    assert_eq!(send(&corp, Request::Receipt(rec)).await, Response::Done);
    assert!(fetch(&corp).await.is_empty());

    // The sender gets the recipient's signed receipt.
    let items = fetch(&zorg).await;
    let Some(Delivery::Notice { record, seq }) = items.first() else {
        panic!("{items:?}")
    };
    let back: DeliveryReceipt = record.verify(&corp.key.verifying_key()).unwrap();
    assert_eq!(back.message_id, message_id);
    assert_eq!(
        send(&zorg, Request::Ack { up_to: *seq }).await,
        Response::Done
    );
    assert!(fetch(&zorg).await.is_empty());
    s.w.stop().await;
}

#[tokio::test]
async fn receipts_sent_together_each_get_their_own_outcome_in_order() {
    let s = scene().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        match s.submit(&s.zorg, s.aanmelding()).await {
            Response::Accepted { message_id, .. } => ids.push(message_id),
            r => panic!("{r:?}"),
        }
    }
    let (corp, zorg) = (&s.corp, &s.zorg);
    let dir = &s.w.directory;
    let mut receipts = std::collections::HashMap::new();
    for item in fetch(corp).await {
        let Delivery::Message { envelope, .. } = item else {
            panic!("{item:?}")
        };
        let env =
            Envelope::decode(&envelope_from_b64(&envelope).unwrap(), &Limits::default()).unwrap();
        let v = env
            .verify_delivery(&Limits::default(), &corp.oin, |o| {
                dir.active_party(o).and_then(|p| p.verifying_key().ok())
            })
            .unwrap();
        let opened = open(&v, &corp.oin, &corp.age, &s.w.policy).unwrap();
        let receipt = DeliveryReceipt {
            message_id: opened.header.id,
            recipient: corp.oin.clone(),
            body_sha256: opened.body_sha256.clone(),
            received_at: Utc::now(),
        };
        receipts.insert(opened.header.id, receipt);
    }
    assert_eq!(receipts.len(), 2);
    let sign = |r: &DeliveryReceipt, key| SignedRecord::sign(r, corp.oin.clone(), key).unwrap();
    let (first, second) = (&receipts[&ids[0]], &receipts[&ids[1]]);
    let other_body = DeliveryReceipt {
        body_sha256: "00".repeat(32),
        ..second.clone()
    };
    let batch = vec![
        sign(first, &corp.key),
        // Signed by someone else, for another body, then the right one.
        sign(second, &zorg.key),
        sign(&other_body, &corp.key),
        sign(second, &corp.key),
        // Again: taken before, not a refusal.
        sign(first, &corp.key),
    ];
    let Response::Receipted(outcomes) = send(corp, Request::Receipts(batch)).await else {
        panic!("receipts were not answered with their outcomes")
    };
    let codes: Vec<Option<RejectCode>> = outcomes
        .iter()
        .map(|o| match o {
            ReceiptOutcome::Done => None,
            ReceiptOutcome::Rejected(r) => Some(r.code),
            ReceiptOutcome::Error { code, message } => panic!("{code}: {message}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some(RejectCode::BadSignature),
            Some(RejectCode::Conflict),
            None,
            None
        ]
    );
    // Both taken: nothing queued for the corporation; the sender gets both receipts.
    assert!(fetch(corp).await.is_empty());
    let notices = fetch(zorg).await;
    let mut forwarded: Vec<_> = notices
        .iter()
        .map(|d| match d {
            Delivery::Notice { record, .. } => {
                let r: DeliveryReceipt = record.verify(&corp.key.verifying_key()).unwrap();
                r.message_id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    forwarded.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(forwarded, expected);
    // A request with no receipts is refused as malformed.
    assert_eq!(
        code(send(corp, Request::Receipts(Vec::new())).await),
        RejectCode::Malformed
    );
}

#[tokio::test]
async fn an_expired_body_is_deleted_and_the_sender_told() {
    let mut s = scene().await;
    let r = s
        .submit(&s.corp, s.signaal(&[(&s.zorg, "zorgaanbieder")]))
        .await;
    let Response::Accepted { message_id, .. } = r else {
        panic!("{r:?}")
    };
    let broker = s.w.broker.as_ref().unwrap();
    broker.sweep(Utc::now() + chrono::Duration::days(6)).await;
    assert_eq!(fetch(&s.zorg).await.len(), 1, "not expired before its TTL");
    broker.sweep(Utc::now() + chrono::Duration::days(8)).await;
    assert!(
        fetch(&s.zorg).await.is_empty(),
        "expired body still delivered"
    );
    let notices = fetch(&s.corp).await;
    let Some(Delivery::Notice { record, .. }) = notices.first() else {
        panic!("{notices:?}")
    };
    let broker_key = s.w.directory.broker_key().unwrap();
    let n: ExpiryNotice = record.verify(&broker_key).unwrap();
    assert_eq!(
        (n.message_id, n.recipient.clone()),
        (message_id, s.zorg.oin.clone())
    );
    s.w.stop().await;
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ketenpost-broker"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn audit_verify_finds_an_edited_record() {
    let mut s = scene().await;
    accepted(s.submit(&s.zorg, s.aanmelding()).await);
    s.w.stop().await;
    let data = s.w.data.to_str().unwrap().to_owned();
    let key = s.w.fed.broker.signing_key.to_str().unwrap().to_owned();
    let out = cli(&["audit", "verify", &data, "--key", &key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Edit record 3 in place.
    {
        let db = sled::open(s.w.data.join("broker.sled")).unwrap();
        let tree = db.open_tree(ketenpost_broker::audit::RECORDS_TREE).unwrap();
        // Record 3 is one line of the round (one transaction's records) that holds it.
        let (first, v) = ketenpost_broker::audit::round_holding(&tree, 3)
            .unwrap()
            .unwrap();
        let lines: Vec<Vec<u8>> = ketenpost_broker::audit::round_records(first, &v)
            .map(|(seq, line)| {
                let text = String::from_utf8(line.to_vec()).unwrap();
                let text = if seq == 3 {
                    text.replace("\"ok\"", "\"refused\"")
                } else {
                    text
                };
                text.into_bytes()
            })
            .collect();
        assert!(lines.len() as u64 > 3 - first, "the round holds record 3");
        tree.insert(first.to_be_bytes(), lines.join(&b'\n'))
            .unwrap();
        db.flush().unwrap();
    }
    let out = cli(&["audit", "verify", &data, "--key", &key]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("record 3"), "{text}");
}

#[tokio::test]
async fn a_bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "listen = 12\n").unwrap();
    let out = cli(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.toml"));
    let out = cli(&["serve", "--config", "/nonexistent/broker.toml"]);
    assert_eq!(out.status.code(), Some(64));
}

/// Concurrent submissions are verified in batches (`ketenpost_broker::verify`): one bad
/// signature among them refuses only its own message, with the refusal a lone bad
/// signature gets (check 2, `bad_signature`, the same reason), and every other is accepted.
#[tokio::test]
async fn one_bad_signature_among_concurrent_submissions_refuses_only_it() {
    let s = scene().await;
    let (zorg, corp) = (&s.zorg, &s.corp);
    let tamper = |mut bytes: Vec<u8>| {
        // The first byte of the signature, after the magic, the length and the header.
        let hlen = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
        bytes[8 + hlen] ^= 0x01;
        bytes
    };
    // Alone: today's refusal.
    let alone = match send(
        corp,
        Request::Submit(tamper(
            s.w.seal(corp, s.signaal(&[(zorg, "zorgaanbieder")])),
        )),
    )
    .await
    {
        Response::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(alone.code, RejectCode::BadSignature);

    for round in 0..3 {
        let mut msgs: Vec<Vec<u8>> = (0..32)
            .map(|_| s.w.seal(corp, s.signaal(&[(zorg, "zorgaanbieder")])))
            .collect();
        let bad = 7 + round * 9;
        msgs[bad] = tamper(msgs[bad].clone());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in msgs.into_iter().enumerate() {
            let c = corp.client.clone();
            tasks.spawn(async move { (i, c.request(&Request::Submit(m), T).await.unwrap()) });
        }
        let mut accepted_n = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                (i, Response::Rejected(r)) => {
                    assert_eq!(i, bad, "only the tampered message is refused");
                    assert_eq!(r, alone, "the same refusal as a lone bad signature");
                }
                (i, Response::Accepted { .. }) => {
                    assert_ne!(i, bad);
                    accepted_n += 1;
                }
                (_, other) => panic!("{other:?}"),
            }
        }
        assert_eq!(accepted_n, 31);
    }
}
