//! What an operator sees of running broker and agent processes: Prometheus metrics and
//! the health endpoints.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ketenpost_schemas::protocol::{RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::agents::AgentProcess;
use ketenpost_tests::{case_with_consent, signaal, BrokerProcess, Fed, Trio, REQUEST_TIMEOUT};

/// A plain HTTP/1.1 GET; the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    ketenpost_tests::http_get(addr, path).unwrap()
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the Prometheus text exposition format (0.0.4) strictly: every line is a `# HELP`,
/// a `# TYPE` or a sample `name{label="value",...} number`, and every sample belongs to a
/// metric whose type was declared before it.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (metric, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match metric.split_once('{') {
            None => (metric, BTreeMap::new()),
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        assert!(valid_name(k), "bad label in {line:?}");
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (k.to_owned(), v.unwrap().to_owned())
                    })
                    .collect();
                (n, labels)
            }
        };
        assert!(valid_name(name), "bad name in {line:?}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.get(*b).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(typed.contains_key(base), "{name} has no # TYPE before it");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v)
}

/// Header signatures check 2 verified, alone and in batches together.
fn signatures_verified(samples: &[Sample]) -> Option<f64> {
    let verified = |how| {
        value(
            samples,
            "ketenpost_broker_signatures_verified_total",
            Some(("how", how)),
        )
    };
    Some(verified("alone")? + verified("batched")?)
}

/// A broker process of `fed` serving its metrics on an ephemeral port.
fn broker_with_metrics(fed: &Fed) -> BrokerProcess {
    BrokerProcess::start_with(
        fed,
        &fed.path("data"),
        "127.0.0.1:0".parse().unwrap(),
        &["--metrics", "127.0.0.1:0"],
        &[],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let (gem, corp, zorg) = (
        fed.keys(0).unwrap(),
        fed.keys(1).unwrap(),
        fed.keys(2).unwrap(),
    );
    let broker = broker_with_metrics(&fed);
    let m = broker
        .metrics
        .expect("the broker says where its metrics are");
    assert_eq!(get(m, "/healthz").0, 200);
    assert_eq!(get(m, "/readyz").0, 200);
    assert_eq!(get(m, "/nothing").0, 404);

    let (gc, cc, zc) = (
        gem.connect(broker.addr).await.unwrap(),
        corp.connect(broker.addr).await.unwrap(),
        zorg.connect(broker.addr).await.unwrap(),
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
    let bytes = fed
        .seal(
            &corp,
            signaal(&case, consent, &[(&zorg.oin, "zorgaanbieder")]).unwrap(),
        )
        .unwrap();
    for _ in 0..2 {
        // Accepted, then refused as a replay.
        cc.request(&Request::Submit(bytes.clone()), REQUEST_TIMEOUT)
            .await
            .unwrap();
    }

    let (status, text) = get(m, "/metrics");
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    let names: BTreeSet<&str> = samples.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "ketenpost_broker_requests_total",
        "ketenpost_broker_rejected_total",
        "ketenpost_broker_connections",
        "ketenpost_broker_queue_depth",
        "ketenpost_broker_queue_oldest_age_seconds",
        "ketenpost_broker_group_commits_total",
        "ketenpost_broker_group_commit_size_bucket",
        "ketenpost_broker_fsync_seconds_count",
        "ketenpost_broker_spool_fsync_seconds_count",
        "ketenpost_broker_submit_seconds_bucket",
        "ketenpost_broker_store_write_seconds_count",
        "ketenpost_broker_alerts_sent_total",
        "ketenpost_broker_up",
    ] {
        assert!(names.contains(want), "{want} missing from:\n{text}");
    }
    assert_eq!(
        value(
            &samples,
            "ketenpost_broker_requests_total",
            Some(("outcome", "accepted"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ketenpost_broker_rejected_total",
            Some(("code", "replay"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ketenpost_broker_queue_depth",
            Some(("party", zorg.oin.as_str()))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ketenpost_broker_connections",
            Some(("party", corp.oin.as_str()))
        ),
        Some(1.0)
    );
    assert!(value(&samples, "ketenpost_broker_group_commits_total", None).unwrap() >= 1.0);
    assert!(value(&samples, "ketenpost_broker_fsync_seconds_count", None).unwrap() >= 1.0);
    // One accepted message: its body was synced at least once.
    assert!(value(&samples, "ketenpost_broker_spool_fsync_seconds_count", None).unwrap() >= 1.0);
    // Both submissions' header signatures went through check 2's verifier (the replay
    // is refused at check 3), each on its own or in a batch.
    assert_eq!(signatures_verified(&samples), Some(2.0));
    // Both submissions were timed; only the accepted one wrote.
    assert_eq!(
        value(&samples, "ketenpost_broker_submit_seconds_count", None),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "ketenpost_broker_store_write_seconds_count", None),
        Some(1.0)
    );
    assert_eq!(value(&samples, "ketenpost_broker_up", None), Some(1.0));
    // No content and no case reference in what an operator sees.
    assert!(!text.contains(case.as_str()));
    assert!(matches!(
        zc.request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .unwrap(),
        Response::Checkpoint(_)
    ));
    for c in [gc, cc, zc] {
        c.close().await;
    }
    assert!(broker.terminate().unwrap().success());
}

/// Submissions that arrive together are checked together, their header signatures
/// verified in one batch when there are enough. Each gets its own verdict whichever way:
/// the tampered ones are refused at check 2, every other one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_each_get_their_own_signature_verdict() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let broker = broker_with_metrics(&fed);
    let trio = Trio::start(&fed, broker.addr).await.unwrap();
    // One in seven with a flipped bit in its header signature.
    let sealed: Vec<(bool, Vec<u8>)> = (0..48)
        .map(|i| {
            let mut bytes = trio.signal(&fed).unwrap();
            let tampered = i % 7 == 3;
            if tampered {
                let hlen = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
                bytes[8 + hlen + 3] ^= 0x40;
            }
            (tampered, bytes)
        })
        .collect();
    let cc = std::sync::Arc::new(trio.cc);
    let mut submissions = tokio::task::JoinSet::new();
    for (tampered, bytes) in sealed {
        let cc = cc.clone();
        submissions.spawn(async move {
            let answer = cc.request(&Request::Submit(bytes), REQUEST_TIMEOUT).await;
            (tampered, answer.unwrap())
        });
    }
    let mut refused = 0;
    while let Some(joined) = submissions.join_next().await {
        match joined.unwrap() {
            (false, Response::Accepted { .. }) => {}
            (true, Response::Rejected(r)) => {
                assert_eq!((r.code, r.check), (RejectCode::BadSignature, 2));
                refused += 1;
            }
            (tampered, answer) => panic!("tampered {tampered}: {answer:?}"),
        }
    }
    assert_eq!(refused, 7);
    // All 48 went through check 2's signature verification, alone or in a batch.
    let m = broker.metrics.expect("metrics are on");
    let samples = parse_prometheus(&get(m, "/metrics").1);
    assert_eq!(signatures_verified(&samples), Some(48.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_metrics_need_no_token_and_parse() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let broker =
        BrokerProcess::start(&fed, &fed.path("data"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let agent = AgentProcess::start(&fed, 1, broker.addr, &fed.path("agent-1")).unwrap();
    let at = agent.api.addr();
    assert_eq!(get(at, "/healthz").0, 200);
    // Ready once it reached the broker (it fetches its documents at start).
    let mut ready = 0;
    for _ in 0..100 {
        ready = get(at, "/readyz").0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    let (status, text) = get(at, "/metrics");
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    assert_eq!(
        value(&samples, "ketenpost_agent_broker_connected", None),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "ketenpost_agent_outbox_queued", None),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "ketenpost_agent_audit_warnings", None),
        Some(0.0)
    );
    // The API itself still needs the token.
    assert_eq!(get(at, "/v1/health").0, 401);
    // With the broker gone, the agent is alive but not ready.
    assert!(broker.terminate().unwrap().success());
    let mut status = 0;
    for _ in 0..100 {
        status = get(at, "/readyz").0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503);
    assert_eq!(get(at, "/healthz").0, 200);
    agent.terminate().unwrap();
}

/// Delivery receipts that arrive together are checked in the check stage, with each other
/// and with the submissions waiting there, their signatures verified in one batch when
/// there are enough. Each gets its own verdict: a receipt signed with another party's key
/// is refused as a bad signature and its message stays queued; every other one is done
/// and its message goes; the submissions checked beside them are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receipts_each_get_their_own_signature_verdict() {
    const MESSAGES: usize = 24;
    const ALONGSIDE: usize = 16;
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    let broker = broker_with_metrics(&fed);
    let trio = Trio::start(&fed, broker.addr).await.unwrap();
    let fetch_all = |c: &ketenpost_transport::client::Client| {
        let c = c.clone();
        async move {
            let fetch = Request::Fetch {
                max: 256,
                wait_ms: 0,
                skip: Vec::new(),
            };
            match c.request(&fetch, REQUEST_TIMEOUT).await.unwrap() {
                Response::Deliveries(d) => d,
                other => panic!("{other:?}"),
            }
        }
    };
    for _ in 0..MESSAGES {
        let bytes = trio.signal(&fed).unwrap();
        let answer = trio
            .cc
            .request(&Request::Submit(bytes), REQUEST_TIMEOUT)
            .await;
        assert!(matches!(answer.unwrap(), Response::Accepted { .. }));
    }
    let delivered = fetch_all(&trio.zc).await;
    assert_eq!(delivered.len(), MESSAGES);
    // One in eight signed with the corporation's key in the zorgaanbieder's name.
    let receipts: Vec<_> = delivered
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let forged = i % 8 == 5;
            let key = if forged {
                &trio.corp.key
            } else {
                &trio.zorg.key
            };
            let (id, rec) = ketenpost_tests::receipt_for(&fed, &trio.zorg, d, key)
                .unwrap()
                .expect("a message");
            (forged, id, rec)
        })
        .collect();
    let forged: BTreeSet<_> = receipts
        .iter()
        .filter(|(f, _, _)| *f)
        .map(|(_, id, _)| *id)
        .collect();
    let m = broker.metrics.expect("metrics are on");
    let before = signatures_verified(&parse_prometheus(&get(m, "/metrics").1)).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (forged, _, rec) in receipts {
        let zc = trio.zc.clone();
        tasks.spawn(async move {
            let answer = zc.request(&Request::Receipt(rec), REQUEST_TIMEOUT).await;
            (Some(forged), answer.unwrap())
        });
    }
    for _ in 0..ALONGSIDE {
        let (cc, bytes) = (trio.cc.clone(), trio.signal(&fed).unwrap());
        tasks.spawn(async move {
            let answer = cc.request(&Request::Submit(bytes), REQUEST_TIMEOUT).await;
            (None, answer.unwrap())
        });
    }
    let (mut done, mut refused, mut accepted) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (Some(false), Response::Done) => done += 1,
            (Some(true), Response::Rejected(r)) => {
                assert_eq!(r.code, RejectCode::BadSignature, "{r:?}");
                refused += 1;
            }
            (None, Response::Accepted { .. }) => accepted += 1,
            (what, answer) => panic!("{what:?}: {answer:?}"),
        }
    }
    assert_eq!(
        (done, refused, accepted),
        (MESSAGES - forged.len(), forged.len(), ALONGSIDE)
    );
    assert_eq!(forged.len(), 3);
    // Every receipt's and every submission's signature went through the verifier once.
    let after = signatures_verified(&parse_prometheus(&get(m, "/metrics").1)).unwrap();
    assert_eq!(after - before, (MESSAGES + ALONGSIDE) as f64);
    // What is left for the zorgaanbieder: the messages of the forged receipts and the new
    // ones.
    let left = fetch_all(&trio.zc).await;
    assert_eq!(left.len(), forged.len() + ALONGSIDE);
    let left_ids: BTreeSet<_> = left
        .iter()
        .filter_map(|d| ketenpost_tests::receipt_for(&fed, &trio.zorg, d, &trio.zorg.key).unwrap())
        .map(|(id, _)| id)
        .collect();
    assert!(
        forged.is_subset(&left_ids),
        "a forged receipt's message went"
    );
    for c in [trio.gc, trio.cc, trio.zc] {
        c.close().await;
    }
    assert!(broker.terminate().unwrap().success());
}
