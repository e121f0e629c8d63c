//! FG alerts reach their webhooks (real processes): a message sent on a non-consent ground
//! is alerted once to the federation FG's webhook and once to the webhook of a party it
//! involves, which fails at first and gets it after it recovers; each body is signed by
//! the broker, and each accepted alert is in the audit trail. The same alert reaches an
//! FG's mailbox through an SMTP relay that refuses it at first. A trail damaged while the
//! broker was down is found by the broker's own verification at its next start and
//! alerted. A broker killed (SIGKILL) at each point of the alert path sends the alert
//! after its restart, under the same id, and records it once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketenpost_broker::audit::AuditEvent;
use ketenpost_schemas::envelope::LegalBasis;
use ketenpost_schemas::keys::{self, Context};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{Ground, Role};
use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_schemas::seal::Draft;
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::agents::AuditLog;
use ketenpost_tests::{case_with_consent, BrokerProcess, Fed, REQUEST_TIMEOUT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a webhook receiver got: alert id, signature header, body.
type Got = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A webhook receiver on loopback that answers 503 to its first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Got, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Got = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (g, a) = (got.clone(), attempts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (g, a) = (g.clone(), a.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .map(|v| v.trim().to_owned())
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head_end..head_end + len].to_vec();
                // Header values keep their case: take them from the raw head.
                let raw = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let raw_header = |name: &str| {
                    raw.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(": ")?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                let answer: &[u8] = if n <= fail_first {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    g.lock().unwrap().push((
                        raw_header("x-ketenpost-alert-id"),
                        raw_header("x-ketenpost-signature"),
                        body,
                    ));
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, got, attempts)
}

async fn wait_for(got: &Got, n: usize) {
    let until = std::time::Instant::now() + Duration::from_secs(40);
    while got.lock().unwrap().len() < n && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Open a case with a consent for the gemeente only, then send an aanmelding from the
/// zorgaanbieder to the gemeente and the corporation on the acute-danger ground: one
/// `non_consent_use` record. Returns the message id.
async fn send_on_acute_danger(fed: &Fed, broker: &BrokerProcess) -> String {
    let (gem, corp, zorg) = (
        fed.keys(0).unwrap(),
        fed.keys(1).unwrap(),
        fed.keys(2).unwrap(),
    );
    let (gc, zc) = (
        gem.connect(broker.addr).await.unwrap(),
        zorg.connect(broker.addr).await.unwrap(),
    );
    let (case, _) = case_with_consent(
        "test",
        "uitstroom",
        (&gem, &gc, "gemeente"),
        &[
            (&zorg.oin, "zorgaanbieder"),
            (&corp.oin, "woningcorporatie"),
        ],
        (&zorg, &zc),
        &["gemeente"],
    )
    .await
    .unwrap();
    // An aanmelding on the acute-danger ground: no consent covers the corporation.
    let mut draft = Draft::new(
        "uitstroom",
        Kind::Aanmelding,
        case.clone(),
        vec![
            (gem.oin.clone(), Role::new("gemeente")),
            (corp.oin.clone(), Role::new("woningcorporatie")),
        ],
        LegalBasis::NonConsent {
            ground: Ground::new("acute_danger").unwrap(),
            justification: "art-6-1-d".into(),
        },
        serde_json::to_value(ketenpost_schemas::payload::Aanmelding::example()).unwrap(),
    );
    draft.event_time = Some(chrono::Utc::now() - chrono::Duration::minutes(5));
    let bytes = fed.seal(&zorg, draft).unwrap();
    let answer = zc
        .request(&Request::Submit(bytes), REQUEST_TIMEOUT)
        .await
        .unwrap();
    let Response::Accepted { message_id, .. } = answer else {
        panic!("the aanmelding was not accepted: {answer:?}")
    };

    gc.close().await;
    zc.close().await;
    message_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_consent_use_is_alerted_once_per_webhook_and_a_failing_webhook_gets_it_later() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    // Default roster: gemeente, woningcorporatie, zorgaanbieder.
    let corp = fed.keys(1).unwrap();
    let (federation_url, federation_got, _) = receiver(0).await;
    let (corp_url, corp_got, corp_attempts) = receiver(2).await;
    let data = fed.path("data");
    let hooks = [
        format!("federation={federation_url}"),
        format!("{}={corp_url}", corp.oin),
    ];
    let broker = BrokerProcess::start_with(
        &fed,
        &data,
        "127.0.0.1:0".parse().unwrap(),
        &[
            "--alert-webhook",
            &hooks[0],
            "--alert-webhook",
            &hooks[1],
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap();
    let message_id = send_on_acute_danger(&fed, &broker).await;

    wait_for(&federation_got, 1).await;
    wait_for(&corp_got, 1).await;
    tokio::task::block_in_place(|| broker.wait_alerts_settled(Duration::from_secs(40))).unwrap();
    let broker_key = fed.directory.broker_key().unwrap();
    for (who, got) in [("federation", &federation_got), ("corporation", &corp_got)] {
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "the {who} webhook got {} alerts", got.len());
        let (id, sig, body) = &got[0];
        let alert: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(alert["event"], "non_consent_use", "{alert}");
        assert_eq!(alert["reason"], "acute_danger", "{alert}");
        assert_eq!(alert["message_id"], message_id.to_string(), "{alert}");
        assert_eq!(&alert["id"], id.as_str(), "{alert}");
        let names: Vec<&str> = alert["parties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.is_empty()), "{alert}");
        let sig = keys::signature_from_text(sig).unwrap();
        keys::verify(&broker_key, Context::Alert, body, &sig, "alert")
            .expect("the alert is signed by the broker");
    }
    assert!(
        corp_attempts.load(Ordering::SeqCst) >= 3,
        "the failing webhook was not retried"
    );
    broker.terminate().unwrap();

    let log = AuditLog::read(&fed, &data).unwrap();
    let sent = log.of(AuditEvent::AlertSent);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent
        .iter()
        .all(|r| r.reason.as_deref() == Some("non_consent_use")
            && r.message_id.as_deref() == Some(message_id.to_string().as_str())));
    assert!(sent
        .iter()
        .any(|r| r.counterparties == vec![corp.oin.to_string()]));
    assert!(log.verified.is_intact(), "{:?}", log.verified);
}

/// What an SMTP relay on loopback got: one entry per accepted mail, its raw DATA.
type Mails = Arc<Mutex<Vec<String>>>;

/// A minimal SMTP relay on loopback (plaintext, as `security = "none"` allows there) that
/// answers 451 to the DATA of its first `fail_first` mails.
async fn smtp_relay(fail_first: usize) -> (String, Mails, Arc<AtomicUsize>) {
    use tokio::io::AsyncBufReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mails: Mails = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (m, a) = (mails.clone(), attempts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (m, a) = (m.clone(), a.clone());
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                let _ = w.write_all(b"220 fg.test ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fg.test\r\n",
                        "DATA" => {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                                data.push('\n');
                            }
                            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                            if n <= fail_first {
                                b"451 4.3.0 try again later\r\n"
                            } else {
                                m.lock().unwrap().push(data);
                                b"250 2.0.0 queued\r\n"
                            }
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    if w.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, mails, attempts)
}

/// The decoded text of a quoted-printable mail body.
fn quoted_printable(body: &str) -> String {
    let mut out = Vec::new();
    for line in body.lines() {
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                if let Ok(b) = u8::from_str_radix(line.get(i + 1..i + 3).unwrap_or(""), 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        if !soft {
            out.push(b'\n');
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_mailed_to_the_fgs_mailbox_once_after_the_relay_recovers() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let (relay, mails, attempts) = smtp_relay(1).await;
    let data = fed.path("data");
    let broker = BrokerProcess::start_with(
        &fed,
        &data,
        "127.0.0.1:0".parse().unwrap(),
        &[
            "--alert-email",
            "federation=fg@federatie.test",
            "--smtp-relay",
            &relay,
            "--smtp-security",
            "none",
            "--smtp-from",
            "broker@federatie.test",
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap();
    let message_id = send_on_acute_danger(&fed, &broker).await;
    let until = std::time::Instant::now() + Duration::from_secs(40);
    while mails.lock().unwrap().is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| broker.wait_alerts_settled(Duration::from_secs(40))).unwrap();
    broker.terminate().unwrap();

    let mails = mails.lock().unwrap();
    assert_eq!(mails.len(), 1, "the FG got {} mails", mails.len());
    assert!(
        attempts.load(Ordering::SeqCst) >= 2,
        "the refused mail was not retried"
    );
    let raw = &mails[0];
    let (head, body) = raw.split_once("\n\n").unwrap();
    assert!(head.contains("To: fg@federatie.test"), "{head}");
    assert!(
        head.contains("Subject: [ketenpost] data shared without consent"),
        "{head}"
    );
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let text = quoted_printable(body);
    assert!(text.contains("acute_danger"), "{text}");
    // The signed JSON, byte for byte, verifies under the broker's key.
    let json = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("the signed alert is in the mail");
    let alert: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(alert["event"], "non_consent_use");
    assert_eq!(alert["message_id"], message_id.as_str());
    assert_eq!(alert["id"], header("X-Ketenpost-Alert-Id").as_str());
    for party in alert["parties"].as_array().unwrap() {
        let name = party["name"].as_str().unwrap();
        assert!(
            text.contains(&format!("{name} ({})", party["oin"].as_str().unwrap())),
            "{text}"
        );
    }
    let sig = keys::signature_from_text(&header("X-Ketenpost-Signature")).unwrap();
    keys::verify(
        &fed.directory.broker_key().unwrap(),
        Context::Alert,
        json.as_bytes(),
        &sig,
        "alert",
    )
    .expect("the mailed alert is signed by the broker");
    let log = AuditLog::read(&fed, &data).unwrap();
    assert_eq!(log.of(AuditEvent::AlertSent).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_damaged_while_the_broker_was_down_is_alerted_at_its_next_start() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let data = fed.path("data");
    let start = |hook: &str| {
        let hook = format!("federation={hook}");
        BrokerProcess::start_with(
            &fed,
            &data,
            "127.0.0.1:0".parse().unwrap(),
            &["--alert-webhook", &hook],
            &[],
        )
        .unwrap()
    };
    let (url, got, _) = receiver(0).await;
    let broker = start(&url);
    send_on_acute_danger(&fed, &broker).await;
    wait_for(&got, 1).await;
    broker.terminate().unwrap();
    assert!(AuditLog::read(&fed, &data).unwrap().verified.is_intact());

    // While the broker is down, someone edits record 3 in place.
    let tampered = 3u64;
    edit_record(&data, tampered, |record| {
        record["actor"] = serde_json::Value::String("00000009999999999999".into());
    });

    let broker = start(&url);
    let until = std::time::Instant::now() + Duration::from_secs(40);
    let found = loop {
        let found = got.lock().unwrap().iter().find_map(|(_, _, body)| {
            let alert: serde_json::Value = serde_json::from_slice(body).ok()?;
            (alert["event"] == "audit_verification_failed").then_some(alert)
        });
        if found.is_some() || std::time::Instant::now() > until {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    broker.terminate().unwrap();
    let alert = found.expect("the damaged trail was alerted");
    assert_eq!(alert["broken_seq"], tampered, "{alert}");
    assert_eq!(alert["reason"], "altered", "{alert}");
    let log = AuditLog::read(&fed, &data).unwrap();
    let failed = log.of(AuditEvent::AuditVerificationFailed);
    assert_eq!(failed.len(), 1, "recorded once: {failed:?}");
    assert_eq!(failed[0].broken_seq, Some(tampered));
}

/// Edit record `seq` of a stopped broker's trail where it is: in the database, or (moved
/// there by the archiver) in place in the archive file. The edit must keep the record's
/// length.
fn edit_record(data: &std::path::Path, seq: u64, edit: impl FnOnce(&mut serde_json::Value)) {
    let db = sled::open(data.join("broker.sled")).unwrap();
    let tree = db.open_tree(ketenpost_broker::audit::RECORDS_TREE).unwrap();
    // In the database, a record is one line of the round (one transaction's records)
    // that holds it.
    if let Some((first, value)) = ketenpost_broker::audit::round_holding(&tree, seq).unwrap() {
        let mut lines: Vec<Vec<u8>> = ketenpost_broker::audit::round_records(first, &value)
            .map(|(_, line)| line.to_vec())
            .collect();
        if let Some(line) = lines.get_mut(usize::try_from(seq - first).unwrap()) {
            let mut record: serde_json::Value = serde_json::from_slice(line).unwrap();
            edit(&mut record);
            *line = serde_json::to_vec(&record).unwrap();
            tree.insert(ketenpost_audit::seq_key(first), lines.join(&b'\n'))
                .unwrap();
            db.flush().unwrap();
            return;
        }
    }
    let path =
        ketenpost_broker::audit::archive_dir(data).join(ketenpost_broker::audit::ARCHIVE_FILE);
    let text = std::fs::read(&path).unwrap();
    let mut lines: Vec<Vec<u8>> = text.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let line = usize::try_from(seq - 1).unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&lines[line]).unwrap();
    assert_eq!(
        record["seq"], seq,
        "the archive's line {line} holds record {seq}"
    );
    edit(&mut record);
    let edited = serde_json::to_vec(&record).unwrap();
    assert_eq!(
        edited.len(),
        lines[line].len(),
        "the edit keeps the record's length"
    );
    lines[line] = edited;
    std::fs::write(&path, lines.join(&b'\n')).unwrap();
}

/// Kill the broker at `point` of the alert path, restart it without the crash point, and
/// check that the alert still arrives, always under the one id (a receiver drops a second
/// copy), and that the trail records its delivery exactly once.
async fn an_alert_survives_a_crash_at(point: &str) {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let data = fed.path("data");
    let (url, got, _) = receiver(0).await;
    let hook = format!("federation={url}");
    let point_path = std::path::PathBuf::from(point);
    let start = |env: &[(&str, &std::path::Path)]| {
        BrokerProcess::start_with(
            &fed,
            &data,
            "127.0.0.1:0".parse().unwrap(),
            &["--alert-webhook", &hook, "--metrics", "127.0.0.1:0"],
            env,
        )
        .unwrap()
    };
    let mut broker = start(&[("KETENPOST_FAILPOINT", &point_path)]);
    send_on_acute_danger(&fed, &broker).await;
    let died = broker.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        died.is_some(),
        "{point}: the broker never reached its crash point"
    );
    let broker = start(&[]);
    wait_for(&got, 1).await;
    tokio::task::block_in_place(|| broker.wait_alerts_settled(Duration::from_secs(40))).unwrap();
    broker.terminate().unwrap();

    let got = got.lock().unwrap();
    assert!(!got.is_empty(), "{point}: the alert never arrived");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{point}: one alert under one id, got {ids:?}");
    assert!(got.len() <= 2, "{point}: sent {} times", got.len());
    let log = AuditLog::read(&fed, &data).unwrap();
    assert_eq!(log.of(AuditEvent::NonConsentUse).len(), 1, "{point}");
    assert_eq!(log.of(AuditEvent::AlertSent).len(), 1, "{point}");
    assert!(log.verified.is_intact(), "{point}: {:?}", log.verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_survives_a_crash_after_it_is_staged() {
    an_alert_survives_a_crash_at("alert.staged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_survives_a_crash_after_its_receiver_accepted_it() {
    an_alert_survives_a_crash_at("alert.accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_survives_a_crash_after_its_delivery_is_recorded() {
    an_alert_survives_a_crash_at("alert.recorded").await;
}
