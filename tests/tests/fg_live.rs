//! FGs read a running broker with their own certificates (real processes): each sees its
//! own organisation's records, the federation's FG sees every record, a party's agent
//! certificate gets no report, and every read is in the trail with the verified
//! organisation; a read of the stopped broker's data is marked offline.
#![allow(clippy::unwrap_used)]

use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_schemas::protocol::{FgQuery, RejectCode, Request, Response};
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::agents::AuditLog;
use ketenpost_tests::{binary, signaal, BrokerProcess, Fed, Trio, REQUEST_TIMEOUT};

/// `ketenpost-broker audit <args>`: success and stdout, or stderr.
fn audit(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary("ketenpost-broker").unwrap())
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fgs_read_a_running_broker_each_within_their_scope_and_every_read_is_recorded() {
    let fed = Fed::new(TEST_POLICY, None).unwrap();
    // Default roster: gemeente, woningcorporatie, zorgaanbieder.
    let data = fed.path("data");
    let broker = BrokerProcess::start(&fed, &data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let trio = Trio::start(&fed, broker.addr).await.unwrap();
    let Trio {
        gem,
        corp,
        zorg,
        gc,
        cc,
        zc,
        case,
        consent,
    } = trio;
    // A signal from the corporation to the care provider: the municipality is not in it.
    let bytes = fed
        .seal(
            &corp,
            signaal(&case, consent, &[(&zorg.oin, "zorgaanbieder")]).unwrap(),
        )
        .unwrap();
    let Response::Accepted { message_id, .. } = cc
        .request(&Request::Submit(bytes), REQUEST_TIMEOUT)
        .await
        .unwrap()
    else {
        panic!("the signal was not accepted")
    };
    let id = message_id.to_string();

    let f = fed.files.dir.to_string_lossy().into_owned();
    let addr = broker.addr.to_string();
    let live = |who: &[&str]| {
        let mut args = vec![
            "records",
            "--broker",
            &addr,
            "--federation",
            &f,
            "--format",
            "jsonl",
            "--kind",
            "signaal",
        ];
        args.extend_from_slice(who);
        audit(&args)
    };
    let (ok, corp_sees) = live(&["--as", corp.oin.as_str()]);
    assert!(ok, "the corporation's FG: {corp_sees}");
    assert!(
        corp_sees.contains(&id),
        "the corporation's FG misses its signal"
    );
    let (ok, gem_sees) = live(&["--as", gem.oin.as_str()]);
    assert!(ok, "the municipality's FG: {gem_sees}");
    assert!(
        !gem_sees.contains(&id),
        "the municipality's FG sees the corporation's flow"
    );
    let (ok, all) = live(&["--federation-fg"]);
    assert!(ok && all.contains(&id), "the federation FG: {all}");
    // Every report works live, HTML included.
    for report in ["flows", "refusals", "consents", "html"] {
        let (ok, text) = audit(&[
            report,
            "--broker",
            &addr,
            "--federation",
            &f,
            "--federation-fg",
        ]);
        assert!(ok && !text.is_empty(), "{report}: {text}");
    }
    // Organisations by name, and the purpose's legal basis and retention.
    let (ok, text) = audit(&[
        "flows",
        "--broker",
        &addr,
        "--federation",
        &f,
        "--federation-fg",
    ]);
    assert!(ok, "{text}");
    let corp_name = &fed.files.parties[1].name;
    assert!(
        text.contains(&format!("{corp_name} ({})", corp.oin)),
        "no organisation names in:\n{text}"
    );
    assert!(
        text.contains("legal basis") && text.contains("case retention"),
        "{text}"
    );
    let (ok, json) = audit(&[
        "flows",
        "--broker",
        &addr,
        "--federation",
        &f,
        "--federation-fg",
        "--format",
        "json",
    ]);
    assert!(ok, "{json}");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        rows[0]["names"][corp.oin.as_str()],
        serde_json::json!(corp_name),
        "{rows}"
    );

    // The access report says which data categories each recipient received: the care
    // provider's view of a signal is `case`.
    let case_text = case.to_string();
    let (ok, json) = audit(&[
        "access",
        "--broker",
        &addr,
        "--federation",
        &f,
        "--federation-fg",
        "--case",
        &case_text,
        "--format",
        "json",
    ]);
    assert!(ok, "{json}");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let signal_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["message_id"] == serde_json::json!(id))
        .unwrap_or_else(|| panic!("the signal is not in the access report: {rows}"));
    assert_eq!(
        signal_row["recipient"],
        serde_json::json!(zorg.oin),
        "{rows}"
    );
    assert_eq!(signal_row["categories"], "case", "{rows}");

    // A party's own (agent) certificate gets no report.
    let refused = cc
        .request(
            &Request::FgRead(FgQuery {
                report: "records".into(),
                ..FgQuery::default()
            }),
            REQUEST_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&refused, Response::Rejected(r) if r.code == RejectCode::NotPermitted),
        "{refused:?}"
    );
    // An FG certificate does nothing but read.
    let fg_tls = ketenpost_transport::tls::ClientTls {
        ca: fed.files.ca.cert.clone(),
        cert: fed.files.federation_fg().unwrap().cert.clone(),
        key: fed.files.federation_fg().unwrap().key.clone(),
    };
    let fg = ketenpost_transport::client::Client::connect(broker.addr, "localhost", &fg_tls)
        .await
        .unwrap();
    let fetch = fg
        .request(
            &Request::Fetch {
                max: 10,
                wait_ms: 0,
                skip: Vec::new(),
            },
            REQUEST_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&fetch, Response::Rejected(r) if r.code == RejectCode::NotPermitted),
        "{fetch:?}"
    );
    fg.close().await;
    for c in [&gc, &cc, &zc] {
        c.close().await;
    }
    broker.terminate().unwrap();

    // Offline, on the stopped broker's data: allowed, and recorded as offline.
    let (ok, text) = audit(&[
        "records",
        "--federation",
        &f,
        "--data",
        &data.to_string_lossy(),
        "--federation-fg",
        "--format",
        "jsonl",
    ]);
    assert!(ok, "offline read: {text}");

    let log = AuditLog::read(&fed, &data).unwrap();
    let reads: Vec<_> = log.of(AuditEvent::AuditRead);
    let live_by = |oin: &str| {
        reads.iter().any(|r| {
            r.actor.as_deref() == Some(oin)
                && r.outcome == Outcome::Ok
                && r.reason.as_deref().is_some_and(|x| x.contains("live"))
        })
    };
    assert!(live_by(corp.oin.as_str()), "{reads:?}");
    assert!(live_by(gem.oin.as_str()), "{reads:?}");
    assert!(
        reads.iter().any(|r| r.outcome == Outcome::Refused
            && r.actor.as_deref() == Some(corp.oin.as_str())),
        "the refused read is not recorded: {reads:?}"
    );
    assert!(
        reads.iter().any(
            |r| r.actor.is_none() && r.reason.as_deref().is_some_and(|x| x.contains("offline"))
        ),
        "the offline read is not marked offline: {reads:?}"
    );
    assert!(log.verified.is_intact(), "{:?}", log.verified);
}
