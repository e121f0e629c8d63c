//! Deadlines, breach routing and the FG's reports, end to end: a broker on loopback QUIC,
//! partners that seal, submit, fetch and receipt, then `ketenpost-broker audit ...` over
//! the stopped broker's data directory.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_core::clock::{Clock, OffsetClock};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeadlineNotice, DeliveryReceipt, Record, SignedRecord, Toestemming,
};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{BreachScope, Envelope, LegalBasis, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{Aanmelding, DatalekMelding, Reactie, Signaal};
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::{
    envelope_from_b64, AcceptFlag, Delivery, RejectCode, Request, Response,
};
use ketenpost_schemas::seal::{open, seal, Draft, Sender};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_transport::client::Client;
use ketenpost_transport::tls::ClientTls;
use serde_json::Value;

const ROSTER: &str = r#"
[[party]]
name = "Gemeente Test"
oin = "00000001000000000001"
roles = ["gemeente"]
[[party]]
name = "Zorg Een"
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
[[party]]
name = "Zorg Twee"
oin = "00000001000000000005"
roles = ["zorgaanbieder"]
"#;

const T: Duration = Duration::from_secs(10);

struct Party {
    oin: Oin,
    key: SigningKey,
    age: age::x25519::Identity,
    client: Client,
}

struct World {
    _dir: tempfile::TempDir,
    fed: Federation,
    policy: Policy,
    directory: Directory,
    data: PathBuf,
    broker: Option<Broker>,
    addr: SocketAddr,
    /// The broker's clock: a test jumps it ahead instead of sleeping.
    clock: OffsetClock,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), TEST_POLICY).unwrap();
        std::fs::write(dir.path().join("roster.toml"), ROSTER).unwrap();
        let mut opts = InitOptions::new(dir.path().join("policy.toml"), dir.path().join("fed"));
        opts.roster = Some(dir.path().join("roster.toml"));
        let fed = ketenpost_certs::init(&opts).unwrap();
        let policy = fed.load_policy().unwrap();
        let directory = fed.load_directory(&policy).unwrap();
        let data = dir.path().join("data");
        let cfg = BrokerConfig::for_federation(&fed, data.clone(), "127.0.0.1:0".parse().unwrap());
        let clock = OffsetClock::new();
        let broker = Broker::start_with_clock(cfg, std::sync::Arc::new(clock.clone()))
            .await
            .unwrap();
        let addr = broker.local_addr();
        World {
            clock,
            _dir: dir,
            fed,
            policy,
            directory,
            data,
            broker: Some(broker),
            addr,
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    async fn stop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }

    async fn party(&self, i: usize) -> Party {
        let p = &self.fed.parties[i];
        let tls = ClientTls {
            ca: self.fed.ca.cert.clone(),
            cert: p.cert.clone(),
            key: p.key.clone(),
        };
        Party {
            oin: p.oin.clone(),
            key: keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key).unwrap())
                .unwrap(),
            age: keys::age_identity_from_text(&std::fs::read_to_string(&p.age_key).unwrap())
                .unwrap(),
            client: Client::connect(self.addr, "localhost", &tls).await.unwrap(),
        }
    }

    async fn submit(&self, from: &Party, d: Draft) -> Response {
        let bytes = seal(
            d,
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
        .encode();
        send(from, Request::Submit(bytes)).await
    }

    /// Fetch, open and receipt every message waiting for `p`; return the opened headers'
    /// ids and kinds, and the notices.
    async fn take(&self, p: &Party) -> (Vec<(MessageId, Kind)>, Vec<SignedRecord>) {
        let (mut messages, mut notices) = (Vec::new(), Vec::new());
        let items = match send(
            p,
            Request::Fetch {
                max: 100,
                wait_ms: 0,
                skip: Vec::new(),
            },
        )
        .await
        {
            Response::Deliveries(d) => d,
            other => panic!("{other:?}"),
        };
        let mut last_notice = None;
        for item in items {
            match item {
                Delivery::Message { envelope, .. } => {
                    let env = Envelope::decode(
                        &envelope_from_b64(&envelope).unwrap(),
                        &Limits::default(),
                    )
                    .unwrap();
                    let dir = &self.directory;
                    let v = env
                        .verify_delivery(&Limits::default(), &p.oin, |o| {
                            dir.active_party(o).and_then(|p| p.verifying_key().ok())
                        })
                        .unwrap();
                    let opened = open(&v, &p.oin, &p.age, &self.policy).unwrap();
                    let receipt = DeliveryReceipt {
                        message_id: opened.header.id,
                        recipient: p.oin.clone(),
                        body_sha256: opened.body_sha256.clone(),
                        received_at: Utc::now(),
                    };
                    let rec = SignedRecord::sign(&receipt, p.oin.clone(), &p.key).unwrap();
                    assert_eq!(send(p, Request::Receipt(rec)).await, Response::Done);
                    messages.push((opened.header.id, opened.header.kind));
                }
                Delivery::Notice { seq, record } => {
                    last_notice = Some(seq);
                    notices.push(record);
                }
            }
        }
        if let Some(up_to) = last_notice {
            assert_eq!(send(p, Request::Ack { up_to }).await, Response::Done);
        }
        (messages, notices)
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

fn accepted(r: Response) -> (MessageId, Vec<AcceptFlag>) {
    match r {
        Response::Accepted { message_id, flags } => (message_id, flags),
        other => panic!("expected accepted, got {other:?}"),
    }
}

/// Open a case managed by `regie` with `members`, and a consent for every role.
async fn open_case(
    regie: &Party,
    members: &[(&Party, &str)],
    recorder: &Party,
) -> (CaseRef, uuid::Uuid) {
    let case = CaseRef::random();
    let change = |op| CaseChange {
        case_ref: case.clone(),
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        change: op,
        by: regie.oin.clone(),
        at: Utc::now(),
    };
    let r = control(
        regie,
        &change(CaseOp::Open {
            role: Role::new("gemeente"),
        }),
    )
    .await;
    assert_eq!(r, Response::Done);
    for (p, role) in members {
        let r = control(
            regie,
            &change(CaseOp::AddMember {
                oin: p.oin.clone(),
                role: Role::new(*role),
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
        obtained_by: recorder.oin.clone(),
        obtained_at: Utc::now(),
    };
    assert_eq!(control(recorder, &t).await, Response::Done);
    (case, consent)
}

fn to(list: &[(&Party, &str)]) -> Vec<(Oin, Role)> {
    list.iter()
        .map(|(p, r)| (p.oin.clone(), Role::new(*r)))
        .collect()
}

fn signaal(
    case: &CaseRef,
    consent: uuid::Uuid,
    recipients: &[(&Party, &str)],
    observed_hours_ago: i64,
) -> Draft {
    let mut d = Draft::new(
        "uitstroom",
        Kind::Signaal,
        case.clone(),
        to(recipients),
        LegalBasis::Consent {
            consent_id: consent,
        },
        serde_json::to_value(Signaal::example()).unwrap(),
    );
    d.event_time = Some(Utc::now() - chrono::Duration::hours(observed_hours_ago));
    d
}

fn reactie(
    case: &CaseRef,
    consent: uuid::Uuid,
    recipients: &[(&Party, &str)],
    answers: MessageId,
) -> Draft {
    let mut d = Draft::new(
        "uitstroom",
        Kind::Reactie,
        case.clone(),
        to(recipients),
        LegalBasis::Consent {
            consent_id: consent,
        },
        serde_json::to_value(Reactie::example()).unwrap(),
    );
    d.in_reply_to = Some(answers);
    d
}

fn breach(case: &CaseRef, recipients: Vec<(Oin, Role)>, from: DateTime<Utc>) -> Draft {
    let mut d = Draft::new(
        "uitstroom",
        Kind::DatalekMelding,
        case.clone(),
        recipients,
        LegalBasis::Covenant,
        serde_json::to_value(DatalekMelding::example()).unwrap(),
    );
    d.event_time = Some(Utc::now() - chrono::Duration::hours(1));
    d.breach_scope = Some(BreachScope {
        case_refs: vec![case.clone()],
        all_cases_of_sender: false,
        from,
        until: Utc::now() + chrono::Duration::hours(1),
    });
    d
}

fn deadline_notices(records: &[SignedRecord], broker: &Directory) -> Vec<DeadlineNotice> {
    let key = broker.broker_key().unwrap();
    records
        .iter()
        .filter(|r| r.kind == Kind::DeadlineNotice)
        .map(|r| r.verify::<DeadlineNotice>(&key).unwrap())
        .collect()
}

/// `ketenpost-broker audit <args>` over the world's (stopped) broker; stdout on success.
fn audit_cli(w: &World, args: &[&str]) -> String {
    let out = audit_cli_raw(w, args);
    assert!(
        out.status.success(),
        "audit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn audit_cli_raw(w: &World, args: &[&str]) -> std::process::Output {
    let fed = w.fed.dir.to_str().unwrap();
    let data = w.data.to_str().unwrap();
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--federation", fed, "--data", data]);
    std::process::Command::new(env!("CARGO_BIN_EXE_ketenpost-broker"))
        .args(&all)
        .output()
        .unwrap()
}

fn json_rows(text: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(text).unwrap() {
        Value::Array(rows) => rows,
        other => panic!("{other}"),
    }
}

fn verify_chain(w: &World) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ketenpost-broker"))
        .args([
            "audit",
            "verify",
            w.data.to_str().unwrap(),
            "--key",
            w.fed.broker.signing_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the chain broke: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn late_signals_are_marked_and_an_unanswered_signal_gets_exactly_one_notice() {
    let mut w = World::new().await;
    let (gem, zorg, corp, corp2) = (
        w.party(0).await,
        w.party(1).await,
        w.party(2).await,
        w.party(3).await,
    );
    let (case, consent) = open_case(
        &gem,
        &[(&zorg, "zorgaanbieder"), (&corp, "woningcorporatie")],
        &zorg,
    )
    .await;

    // Observed 49 hours ago, 48 allowed: accepted, and flagged late.
    let (late_id, flags) = accepted(
        w.submit(
            &corp,
            signaal(&case, consent, &[(&zorg, "zorgaanbieder")], 49),
        )
        .await,
    );
    assert_eq!(flags, vec![AcceptFlag::Late]);
    // Two timely signals: one will be answered, one not.
    let (unanswered, flags) = accepted(
        w.submit(
            &corp,
            signaal(&case, consent, &[(&zorg, "zorgaanbieder")], 2),
        )
        .await,
    );
    assert!(flags.is_empty());
    let (answered, _) = accepted(
        w.submit(
            &corp,
            signaal(&case, consent, &[(&zorg, "zorgaanbieder")], 2),
        )
        .await,
    );

    // The care provider receives (receipts) all three; the clocks start.
    let (got, _) = w.take(&zorg).await;
    assert_eq!(got.len(), 3);
    let (_, flags) = accepted(
        w.submit(
            &zorg,
            reactie(&case, consent, &[(&corp, "woningcorporatie")], answered),
        )
        .await,
    );
    assert!(flags.is_empty(), "an answer in time is not late");
    // The late signal is answered too, late: 25 hours after delivery is past 24 hours only
    // at the sweep below, so answer it now (in time) to keep this test about one notice.
    accepted(
        w.submit(
            &zorg,
            reactie(&case, consent, &[(&corp, "woningcorporatie")], late_id),
        )
        .await,
    );
    // Drain what is there so far.
    for p in [&gem, &corp, &corp2] {
        w.take(p).await;
    }

    // 23 hours on: nothing due yet.
    w.broker()
        .sweep(Utc::now() + chrono::Duration::hours(23))
        .await;
    for p in [&gem, &zorg, &corp] {
        assert!(deadline_notices(&w.take(p).await.1, &w.directory).is_empty());
    }
    // 25 hours on: one notice about the unanswered signal, to the care provider that owes
    // the answer, the corporation that sent it and the gemeente that directs the case.
    w.broker()
        .sweep(Utc::now() + chrono::Duration::hours(25))
        .await;
    for p in [&zorg, &corp, &gem] {
        let notices = deadline_notices(&w.take(p).await.1, &w.directory);
        assert_eq!(notices.len(), 1, "{} got {notices:?}", p.oin);
        let n = &notices[0];
        assert_eq!(n.message_id, unanswered);
        assert_eq!(n.owed_by, zorg.oin);
        assert_eq!(n.case_ref, case);
        assert_eq!(n.kind, Kind::Signaal);
    }
    assert!(deadline_notices(&w.take(&corp2).await.1, &w.directory).is_empty());
    // Later sweeps send nothing again.
    w.broker()
        .sweep(Utc::now() + chrono::Duration::hours(50))
        .await;
    w.broker()
        .sweep(Utc::now() + chrono::Duration::days(5))
        .await;
    for p in [&zorg, &corp, &gem, &corp2] {
        assert!(deadline_notices(&w.take(p).await.1, &w.directory).is_empty());
    }
    // The reports need the broker stopped: a running broker's database is locked.
    let out = audit_cli_raw(&w, &["flows", "--federation-fg"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the broker running?"));
    w.stop().await;

    // The trail shows the late arrival and the overdue answer with who was told.
    let rows = json_rows(&audit_cli(
        &w,
        &["deadlines", "--federation-fg", "--format", "json"],
    ));
    let late: Vec<&Value> = rows
        .iter()
        .filter(|r| r["what"] == "late_on_arrival")
        .collect();
    assert_eq!(late.len(), 1, "{rows:?}");
    assert_eq!(late[0]["message_id"], late_id.to_string());
    assert_eq!(late[0]["party"], corp.oin.to_string());
    let overdue: Vec<&Value> = rows
        .iter()
        .filter(|r| r["what"] == "answer_overdue")
        .collect();
    assert_eq!(overdue.len(), 1, "{rows:?}");
    assert_eq!(overdue[0]["message_id"], unanswered.to_string());
    assert_eq!(overdue[0]["party"], zorg.oin.to_string());
    let told: BTreeSet<&str> = overdue[0]["notified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        told,
        [gem.oin.as_str(), zorg.oin.as_str(), corp.oin.as_str()].into()
    );
    // Reading was audited, and the chain is still whole.
    let records = audit_cli(&w, &["records", "--federation-fg", "--format", "jsonl"]);
    let reads = records
        .lines()
        .filter(|l| l.contains("\"name\":\"audit_read\""))
        .count();
    assert_eq!(reads, 2, "the deadlines read and this export");
    verify_chain(&w);
}

#[tokio::test]
async fn breach_routing_fg_scopes_access_report_and_html() {
    let mut w = World::new().await;
    let (gem, zorg, corp, corp2, zorg2) = (
        w.party(0).await,
        w.party(1).await,
        w.party(2).await,
        w.party(3).await,
        w.party(4).await,
    );
    // Case A: gemeente, both care providers, one corporation. Case B: the other
    // corporation and the second care provider, nothing to do with the first ones.
    let (a, consent_a) = open_case(
        &gem,
        &[
            (&zorg, "zorgaanbieder"),
            (&zorg2, "zorgaanbieder"),
            (&corp, "woningcorporatie"),
        ],
        &zorg,
    )
    .await;
    let (b, consent_b) = open_case(
        &gem,
        &[(&zorg2, "zorgaanbieder"), (&corp2, "woningcorporatie")],
        &zorg2,
    )
    .await;

    // Before the breach window: the second care provider got a signal about case A.
    accepted(
        w.submit(
            &corp,
            signaal(&a, consent_a, &[(&zorg2, "zorgaanbieder")], 1),
        )
        .await,
    );
    // A second on the broker's clock before the window opens, and one after.
    w.clock.advance(chrono::Duration::seconds(1));
    let window_start = w.clock.now();
    w.clock.advance(chrono::Duration::seconds(1));
    // In the window, about case A: corporation -> care provider (late), care provider ->
    // gemeente and corporation.
    accepted(
        w.submit(
            &corp,
            signaal(&a, consent_a, &[(&zorg, "zorgaanbieder")], 50),
        )
        .await,
    );
    let mut aanmelding = Draft::new(
        "uitstroom",
        Kind::Aanmelding,
        a.clone(),
        to(&[(&gem, "gemeente"), (&corp, "woningcorporatie")]),
        LegalBasis::Consent {
            consent_id: consent_a,
        },
        serde_json::to_value(Aanmelding::example()).unwrap(),
    );
    aanmelding.event_time = None;
    accepted(w.submit(&zorg, aanmelding).await);
    // About case B, in the window: not part of the breach.
    accepted(
        w.submit(
            &corp2,
            signaal(&b, consent_b, &[(&zorg2, "zorgaanbieder")], 1),
        )
        .await,
    );
    accepted(
        w.submit(&corp, signaal(&a, consent_a, &[(&gem, "gemeente")], 1))
            .await,
    );
    // A refusal: a signal without the time it was observed.
    let mut no_time = signaal(&a, consent_a, &[(&zorg, "zorgaanbieder")], 1);
    no_time.event_time = None;
    let r = w.submit(&corp, no_time).await;
    assert!(matches!(r, Response::Rejected(_)), "{r:?}");

    // The care provider reports a breach about case A. It guesses the whole case team;
    // the broker answers with the parties that really exchanged messages in the window.
    let guess = to(&[
        (&gem, "gemeente"),
        (&zorg2, "zorgaanbieder"),
        (&corp, "woningcorporatie"),
    ]);
    let r = w.submit(&zorg, breach(&a, guess, window_start)).await;
    let Response::Rejected(rej) = r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.code, RejectCode::BreachRecipients);
    let expected = rej.expected_recipients().unwrap();
    assert_eq!(
        expected,
        to(&[(&gem, "gemeente"), (&corp, "woningcorporatie")])
    );
    // Resealed to exactly that set: accepted.
    let (breach_id, flags) = accepted(w.submit(&zorg, breach(&a, expected, window_start)).await);
    assert!(flags.is_empty());
    // Exactly those two receive it; nobody else.
    let has_breach = |got: &[(MessageId, Kind)]| got.iter().any(|(id, _)| *id == breach_id);
    assert!(has_breach(&w.take(&gem).await.0));
    assert!(has_breach(&w.take(&corp).await.0));
    for p in [&zorg, &zorg2, &corp2] {
        assert!(!has_breach(&w.take(p).await.0), "{} got the breach", p.oin);
    }
    w.stop().await;

    // The federation's FG: the breach, notified on time (both recipients receipted).
    let rows = json_rows(&audit_cli(
        &w,
        &["breaches", "--federation-fg", "--format", "json"],
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["message_id"], breach_id.to_string());
    assert_eq!(rows[0]["state"], "notified_on_time");
    assert_eq!(rows[0]["cases"], serde_json::json!([a.to_string()]));

    // An FG of one organisation sees no flow between two others.
    let flows_of = |as_oin: &Oin| {
        json_rows(&audit_cli(
            &w,
            &["flows", "--as", as_oin.as_str(), "--format", "json"],
        ))
    };
    let corp2_view = flows_of(&corp2.oin);
    assert!(!corp2_view.is_empty());
    for row in &corp2_view {
        let (f, t) = (row["from"].as_str().unwrap(), row["to"].as_str().unwrap());
        assert!(f == corp2.oin.as_str() || t == corp2.oin.as_str(), "{row}");
    }
    let zorg_view = flows_of(&zorg.oin);
    assert!(zorg_view
        .iter()
        .all(|r| r["from"] == zorg.oin.as_str() || r["to"] == zorg.oin.as_str()));
    // The corporation's signal to the second care provider exists, but is not the first
    // care provider's business.
    let all = json_rows(&audit_cli(
        &w,
        &["flows", "--federation-fg", "--format", "json"],
    ));
    assert!(all
        .iter()
        .any(|r| r["from"] == corp.oin.as_str() && r["to"] == zorg2.oin.as_str()));
    assert!(all
        .iter()
        .any(|r| r["from"] == corp2.oin.as_str() && r["to"] == zorg2.oin.as_str()));
    // And the refusal is counted on its edge.
    assert!(all.iter().any(|r| r["from"] == corp.oin.as_str()
        && r["to"] == zorg.oin.as_str()
        && r["kind"] == "signaal"
        && r["refused"] == 1
        && r["late"] == 1));

    // The access report of case A lists every party that received data about it.
    let access = json_rows(&audit_cli(
        &w,
        &[
            "access",
            "--federation-fg",
            "--case",
            a.as_str(),
            "--format",
            "json",
        ],
    ));
    let recipients: BTreeSet<&str> = access
        .iter()
        .map(|r| r["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(
        recipients,
        [
            gem.oin.as_str(),
            zorg.oin.as_str(),
            zorg2.oin.as_str(),
            corp.oin.as_str()
        ]
        .into()
    );
    let times: Vec<&str> = access.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "chronological");
    assert!(access
        .iter()
        .all(|r| r["ground"] == "consent" || r["ground"] == "covenant"));
    assert!(
        access.iter().all(|r| r["received_at"].is_string()),
        "all receipted"
    );
    // The second corporation's FG finds nothing about case A.
    let none = json_rows(&audit_cli(
        &w,
        &[
            "access",
            "--as",
            corp2.oin.as_str(),
            "--case",
            a.as_str(),
            "--format",
            "json",
        ],
    ));
    assert!(none.is_empty(), "{none:?}");

    // The HTML report: a graph with the parties as nodes and the flows as edges.
    let html_path = w.data.parent().unwrap().join("report.html");
    audit_cli(
        &w,
        &[
            "html",
            "--federation-fg",
            "--out",
            html_path.to_str().unwrap(),
        ],
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    check_html_report(&html, &[&gem, &zorg, &corp, &corp2, &zorg2]);
    open_in_chromium(&html_path);
    // An organisation's HTML holds no node it had no flow with.
    let mine = w.data.parent().unwrap().join("corp2.html");
    audit_cli(
        &w,
        &[
            "html",
            "--as",
            corp2.oin.as_str(),
            "--out",
            mine.to_str().unwrap(),
        ],
    );
    let html = std::fs::read_to_string(&mine).unwrap();
    let nodes = attr_values(&html, "g class=\"node\" data-oin=\"");
    assert!(!nodes.contains(&gem.oin.to_string()), "{nodes:?}");
    assert!(nodes.contains(&corp2.oin.to_string()));

    // Bad usage is refused with 64 and reads nothing.
    let out = audit_cli_raw(&w, &["flows"]);
    assert_eq!(out.status.code(), Some(64));
    let out = audit_cli_raw(&w, &["flows", "--as", "00000009999999999999"]);
    assert_eq!(out.status.code(), Some(64));
    let out = audit_cli_raw(&w, &["access", "--federation-fg"]);
    assert_eq!(out.status.code(), Some(64));
    verify_chain(&w);
}

/// The values of an attribute, found after `prefix` up to the closing quote.
fn attr_values(html: &str, prefix: &str) -> Vec<String> {
    html.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &html[i + prefix.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// Check the report structurally: well-formed SVG, one node per party with flows, edges
/// with their counts, refusals and late messages marked, no scripts or external files.
fn check_html_report(html: &str, parties: &[&Party]) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "self-contained, no scripts");
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "no external files"
    );
    let start = html.find("<svg").expect("an svg graph");
    let end = html.find("</svg>").expect("a closed svg") + "</svg>".len();
    let svg = &html[start..end];
    assert_balanced(svg);
    let nodes: BTreeSet<String> = attr_values(svg, "<g class=\"node\" data-oin=\"")
        .into_iter()
        .collect();
    let want: BTreeSet<String> = parties.iter().map(|p| p.oin.to_string()).collect();
    assert_eq!(nodes, want);
    let edges = attr_values(svg, "<g class=\"edge");
    assert!(edges.len() >= 5, "{edges:?}");
    assert!(svg.contains("class=\"edge refused\"") || svg.contains("class=\"edge refused late\""));
    assert!(svg.contains(" late\""), "a late edge");
    assert!(svg.contains("signaal "), "counts per kind on the edges");
    for section in [
        "flows",
        "refusals",
        "grounds",
        "deadlines",
        "breaches",
        "consents",
        "deletions",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{section}\">")),
            "{section}"
        );
    }
}

/// A minimal XML well-formedness check: every element closes, in order.
fn assert_balanced(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        let end = after.find('>').expect("unterminated tag");
        let tag = &after[..end];
        rest = &after[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap_or_default();
            stack.push(name.to_owned());
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

/// Open the report in headless Chromium when it is installed (CI installs it) and check
/// that the rendered DOM has the graph. Skipped, with a note, when it is not.
fn open_in_chromium(path: &Path) {
    let Some(browser) = chromium() else {
        eprintln!("note: chromium is not installed; the HTML report was checked structurally only");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", path.display()),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("<svg"), "chromium rendered no svg: {dom}");
    assert!(
        dom.contains("class=\"node\""),
        "no nodes in the rendered graph"
    );
    assert!(
        dom.contains("class=\"edge"),
        "no edges in the rendered graph"
    );
}

/// The HTML report of a covenant with fifteen parties: every party drawn with its name
/// inside the picture, no overlapping arrow labels (the counts move to the tooltips and
/// the sender × recipient matrix), names in the tables; rendered by headless Chromium at
/// 1,400 px wide and printed to an A4 PDF.
#[test]
fn the_html_report_stays_legible_for_fifteen_parties_and_prints_on_a4() {
    use ketenpost_broker::audit::{AuditEntry, AuditEvent, ChainHead};
    use ketenpost_broker::report::{self, Filter, HtmlReport, Viewer};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), TEST_POLICY).unwrap();
    let mut roster = String::new();
    let roles = ["gemeente", "woningcorporatie", "zorgaanbieder"];
    for i in 0..15 {
        roster.push_str(&format!(
            "[[party]]\nname = \"Stichting Regionale Samenwerking Noord {i:02}\"\noin = \"000000090000000001{i:02}\"\nroles = [\"{}\"]\n\n",
            roles[i % 3]
        ));
    }
    std::fs::write(dir.path().join("roster.toml"), roster).unwrap();
    let mut opts = InitOptions::new(dir.path().join("policy.toml"), dir.path().join("fed"));
    opts.roster = Some(dir.path().join("roster.toml"));
    let fed = ketenpost_certs::init(&opts).unwrap();
    let policy = fed.load_policy().unwrap();
    let directory = fed.load_directory(&policy).unwrap();

    // Every party sends to the next three; every fifth flow is also refused once.
    let now = Utc::now();
    let mut head = ChainHead::genesis();
    let mut records = Vec::new();
    let oins: Vec<String> = directory
        .parties
        .iter()
        .map(|p| p.oin.to_string())
        .collect();
    for (i, from) in oins.iter().enumerate() {
        for step in 1..=3 {
            let to = &oins[(i + step) % oins.len()];
            let mut entries = vec![AuditEntry::ok(AuditEvent::Accepted)];
            if (i + step) % 5 == 0 {
                entries.push(AuditEntry::refused(AuditEvent::Rejected, "no_consent"));
            }
            for e in entries {
                let e = e
                    .actor(from)
                    .counterparties([to])
                    .kind("signaal")
                    .purpose("uitstroom")
                    .message_id(MessageId::new());
                let (r, _) = head.next(e, now).unwrap();
                head.advance(&r);
                records.push(r);
            }
        }
    }
    let last = records.last().unwrap().clone();
    let html = report::html(&HtmlReport {
        viewer: &Viewer::Federation,
        filter: &Filter::default(),
        records: &records,
        policy: &policy,
        directory: &directory,
        generated_at: now,
        head: (last.seq, last.hash.clone()),
    });
    assert_eq!(
        html.matches("class=\"node\"").count(),
        15,
        "every party is drawn"
    );
    assert!(
        !html.contains("text-anchor=\"middle\" font-size=\"11\""),
        "arrow labels are drawn for fifteen parties; they overlap"
    );
    assert!(
        html.contains("id=\"flow-matrix\""),
        "no sender × recipient matrix"
    );
    assert!(
        html.contains("Stichting Regionale Samenwerking Noord 07 (00000009000000000107)"),
        "the tables name the organisations"
    );
    assert!(html.contains("@page{size:A4"), "no A4 print style");
    let path = dir.path().join("report.html");
    std::fs::write(&path, &html).unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap() + 6];
    assert_balanced(svg);
    open_in_chromium(&path);
    let Some(browser) = chromium() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = dir.path().join("report.png");
    let pdf = dir.path().join("report.pdf");
    for arg in [
        format!("--screenshot={}", shot.display()),
        format!("--print-to-pdf={}", pdf.display()),
    ] {
        let out = std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,2400",
                "--no-pdf-header-footer",
                &format!("--user-data-dir={}", profile.path().display()),
                &arg,
                &format!("file://{}", path.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // KETENPOST_KEEP_REPORT=DIR keeps the screenshot and the PDF for a person to look at.
    if let Some(keep) = std::env::var_os("KETENPOST_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&shot, keep.join("report.png")).unwrap();
        std::fs::copy(&pdf, keep.join("report.pdf")).unwrap();
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "the screenshot is missing or blank ({} bytes)",
        png.len()
    );
    let pdf = std::fs::read(&pdf).unwrap();
    assert!(pdf.starts_with(b"%PDF"), "no PDF printed");
}

/// The Chromium binary, when installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
