//! The agent against a real broker on loopback: round trip, outage, early refusals,
//! views, tampered documents, deletion orders, and the binary's exit code on bad config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, sha, Net, TestAgent};
use ketenpost_agent::Error;
use ketenpost_schemas::payload::{Aanmelding, Signaal};
use serde_json::{json, Value};

async fn open_case(g: &TestAgent, members: &[&TestAgent]) -> String {
    let case = g
        .ok("POST", "/v1/cases", Some(json!({ "purpose": "uitstroom" })))
        .await;
    let case_ref = case["case_ref"].as_str().unwrap().to_owned();
    for m in members {
        g.ok(
            "POST",
            &format!("/v1/cases/{case_ref}/members"),
            Some(json!({ "oin": m.oin })),
        )
        .await;
    }
    case_ref
}

async fn consent(by: &TestAgent, case_ref: &str, roles: &[&str]) -> String {
    let c = by
        .ok(
            "POST",
            "/v1/consents",
            Some(json!({
                "case_ref": case_ref,
                "roles": roles,
                "document_sha256": sha("Welkom in de Wijk Overeenkomst, getekend"),
            })),
        )
        .await;
    c["record"]["consent_id"].as_str().unwrap().to_owned()
}

/// How many files under `dir` contain `needle` anywhere in their bytes.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Whether the agent's vault holds any data key.
fn has_keys(data: &std::path::Path) -> bool {
    let cases = data.join("vault").join("cases");
    std::fs::read_dir(cases).is_ok_and(|d| {
        d.flatten()
            .any(|c| std::fs::read_dir(c.path()).is_ok_and(|mut k| k.next().is_some()))
    })
}

fn signaal() -> Value {
    serde_json::to_value(Signaal::example()).unwrap()
}

async fn status(a: &TestAgent, id: &str) -> Value {
    a.ok("GET", &format!("/v1/messages/{id}"), None).await
}

async fn wait_status(a: &TestAgent, id: &str, want: &str) -> Value {
    eventually(&format!("message {id} {want}"), || async {
        let s = status(a, id).await;
        (s["status"] == want).then_some(s)
    })
    .await
}

async fn wait_inbox(a: &TestAgent, id: &str) -> Value {
    eventually(&format!("message {id} in the inbox"), || async {
        a.call("GET", &format!("/v1/inbox/{id}"), None).await.ok()
    })
    .await
}

const ALL: [&str; 3] = ["gemeente", "woningcorporatie", "zorgaanbieder"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_deliver_receipt_status_round_trip() {
    let net = Net::walcheren().await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let z = net.agent("zorgaanbieder").await;
    let case_ref = open_case(&g, &[&w, &z]).await;
    consent(&g, &case_ref, &ALL).await;

    let sent = g
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({
                "kind": "signaal",
                "case_ref": case_ref,
                "to": [{ "role": "woningcorporatie" }, { "role": "zorgaanbieder" }],
                "payload": signaal(),
            })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    assert_eq!(sent["status"], "queued");

    // Both recipients store it and receipt it; the sender sees it delivered per recipient.
    let done = wait_status(&g, &id, "delivered").await;
    let recipients = done["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2);
    assert!(recipients
        .iter()
        .all(|r| r["status"] == "delivered" && !r["delivered_at"].is_null()));
    assert!(done["accepted_at"].is_string());

    let got = wait_inbox(&w, &id).await;
    assert_eq!(got["view"], "woningcorporatie");
    assert_eq!(got["sender"], json!(g.oin));
    assert_eq!(got["kind"], "signaal");
    assert_eq!(got["payload"]["categorie"], "geluidsoverlast");
    let list = w.ok("GET", "/v1/inbox", None).await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
    assert!(
        list["messages"][0].get("payload").is_none(),
        "lists carry no payload"
    );

    // Acknowledge: gone from the unacknowledged list.
    let acked = w.ok("POST", &format!("/v1/inbox/{id}/ack"), None).await;
    assert!(acked["acknowledged_at"].is_string());
    let list = w.ok("GET", "/v1/inbox", None).await;
    assert!(list["messages"].as_array().unwrap().is_empty());

    // The receiving agent learned the case from the message.
    let learned = w.ok("GET", &format!("/v1/cases/{case_ref}"), None).await;
    assert_eq!(learned["purpose"], "uitstroom");
    assert_eq!(learned["knowledge"], "learned");

    // The CLI over the same API.
    let cli = <ketenpost_agent::cli::Cli as clap::Parser>::try_parse_from([
        "ketenpost-agent",
        "--api",
        &g.agent.api_addr().to_string(),
        "--token-file",
        g.token_file.to_str().unwrap(),
        "status",
        &id,
    ])
    .unwrap();
    let answer = ketenpost_agent::cli::call(&cli).await.unwrap();
    assert_eq!(answer["status"], "delivered");

    // A wrong token is refused.
    let intruder =
        ketenpost_agent::client::ApiClient::new(g.agent.api_addr(), "not-the-token-0000");
    match intruder.call("GET", "/v1/health", None).await {
        Err(Error::Api { status, code, .. }) => {
            assert_eq!(status, 401);
            assert_eq!(code, "unauthorized");
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // The agents keep the broker's checkpoints and have no warnings.
    let health = eventually("a checkpoint", || async {
        let h = g.ok("GET", "/v1/health", None).await;
        h["latest_checkpoint_seq"].is_u64().then_some(h)
    })
    .await;
    assert_eq!(health["audit_warnings"], json!([]));
    assert_eq!(health["broker_connected"], true);

    for a in [g, w, z] {
        a.agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_sent_while_the_broker_is_down_is_delivered_after_it_starts() {
    let mut net = Net::walcheren().await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let case_ref = open_case(&g, &[&w]).await;
    consent(&g, &case_ref, &ALL).await;

    net.stop_broker().await;
    let sent = g
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({
                "kind": "signaal",
                "case_ref": case_ref,
                "to": [{ "oin": w.oin }],
                "payload": signaal(),
            })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    // The agent tried to submit, failed, and keeps the message queued.
    let s = eventually("a failed submission attempt", || async {
        let s = status(&g, &id).await;
        (s["attempts"].as_u64().unwrap_or(0) >= 1).then_some(s)
    })
    .await;
    assert_eq!(s["status"], "queued", "{s}");

    net.start_broker().await;
    wait_status(&g, &id, "delivered").await;
    let got = wait_inbox(&w, &id).await;
    assert_eq!(got["case_ref"], json!(case_ref));

    g.agent.shutdown().await;
    w.agent.shutdown().await;
}

/// Walcheren plus a second purpose, so a message can name the wrong one, and whose
/// signals a corporation may not receive.
fn two_purposes() -> String {
    let base = std::fs::read_to_string(common::WALCHEREN).unwrap();
    format!(
        "{base}\n[purposes.nazorg]\nname = \"nazorg (test)\"\nprocessing_activity = \"nazorg\"\n\
         legal_basis = \"test\"\ncase_retention = \"12 months\"\ncase_managers = [\"gemeente\"]\n\
         consent_recorders = [\"gemeente\"]\n[purposes.nazorg.kinds.signaal]\n\
         senders = [\"gemeente\", \"zorgaanbieder\"]\n\
         recipients = [\"gemeente\", \"zorgaanbieder\"]\n\
         consent = \"required\"\nundelivered_ttl = \"14 days\"\nviews.gemeente = [\"case\"]\n\
         views.zorgaanbieder = [\"case\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rejection_reason_is_refused_early_with_the_brokers_code() {
    let net = Net::with_policy(&two_purposes()).await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let z = net.agent("zorgaanbieder").await;
    let case_ref = open_case(&g, &[&w]).await;

    let send = |body: Value| {
        let g = &g;
        async move { g.fails("POST", "/v1/messages", Some(body)).await }
    };
    let expect = |got: (u16, String, String), code: &str| {
        assert_eq!(got.0, 422, "{got:?}");
        assert_eq!(got.1, code, "{got:?}");
    };

    // Not in the case team: the zorgaanbieder was never added.
    expect(
        send(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": z.oin }], "payload": signaal() })).await,
        "not_in_case_team",
    );
    // The sender's role may not send this kind: only care providers send an aanmelding.
    expect(
        send(json!({
            "kind": "aanmelding", "case_ref": case_ref, "to": [{ "oin": w.oin }],
            "payload": serde_json::to_value(Aanmelding::example()).unwrap(),
        }))
        .await,
        "sender_role_not_allowed",
    );
    // No consent on file.
    expect(
        send(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": w.oin }], "payload": signaal() })).await,
        "no_consent",
    );
    // A withdrawn consent.
    let consent_id = consent(&g, &case_ref, &ALL).await;
    g.ok(
        "POST",
        &format!("/v1/consents/{consent_id}/withdraw"),
        Some(json!({})),
    )
    .await;
    expect(
        send(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": w.oin }], "payload": signaal() })).await,
        "consent_withdrawn",
    );
    expect(
        send(json!({
            "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": w.oin }], "payload": signaal(),
            "legal_basis": { "basis": "consent", "consent_id": consent_id },
        }))
        .await,
        "consent_withdrawn",
    );
    // The wrong purpose for the case.
    expect(
        send(json!({
            "kind": "signaal", "case_ref": case_ref, "purpose": "nazorg",
            "to": [{ "oin": w.oin }], "payload": signaal(),
        }))
        .await,
        "wrong_purpose",
    );
    // The recipient's role may not receive this kind (nazorg signals skip corporations).
    let nazorg = g
        .ok("POST", "/v1/cases", Some(json!({ "purpose": "nazorg" })))
        .await["case_ref"]
        .as_str()
        .unwrap()
        .to_owned();
    g.ok(
        "POST",
        &format!("/v1/cases/{nazorg}/members"),
        Some(json!({ "oin": w.oin })),
    )
    .await;
    expect(
        send(json!({ "kind": "signaal", "case_ref": nazorg, "to": [{ "oin": w.oin }], "payload": signaal() })).await,
        "recipient_role_not_allowed",
    );
    expect(
        send(json!({ "kind": "signaal", "case_ref": nazorg, "to": [{ "role": "woningcorporatie" }], "payload": signaal() })).await,
        "recipient_role_not_allowed",
    );
    // Case management: the corporation may not open a case.
    let (status, code, _) = w
        .fails("POST", "/v1/cases", Some(json!({ "purpose": "uitstroom" })))
        .await;
    assert_eq!((status, code.as_str()), (422, "not_permitted"));

    // Every refusal came from the agent, and nothing was stored or sent.
    let (_, _, message) = send(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": z.oin }], "payload": signaal() })).await;
    assert!(message.contains("refused by the agent"), "{message}");
    assert_eq!(
        g.ok("GET", "/v1/messages", None).await["messages"],
        json!([])
    );

    // The broker agrees where the agent cannot know: a case it never heard of.
    let unknown = "case-aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let sent = z
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({
                "kind": "signaal", "case_ref": unknown, "purpose": "uitstroom",
                "to": [{ "oin": g.oin }], "payload": signaal(),
                "legal_basis": { "basis": "consent", "consent_id": consent_id },
            })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    let rejected = wait_status(&z, &id, "rejected").await;
    assert_eq!(rejected["rejection"]["code"], "unknown_case");

    for a in [g, w, z] {
        a.agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corporation_receiving_an_aanmelding_stores_only_the_housing_view() {
    let net = Net::walcheren().await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let z = net.agent("zorgaanbieder").await;
    let case_ref = open_case(&g, &[&w, &z]).await;
    let consent_id = consent(&g, &case_ref, &ALL).await;

    // The care provider's system registers the team the regievoerder told it about, so
    // recipients can be named by role.
    let team = g.ok("GET", &format!("/v1/cases/{case_ref}"), None).await;
    let members: Vec<Value> = team["members"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(oin, role)| json!({ "oin": oin, "role": role }))
        .collect();
    z.ok(
        "PUT",
        &format!("/v1/cases/{case_ref}"),
        Some(json!({ "purpose": "uitstroom", "members": members })),
    )
    .await;

    let full = serde_json::to_value(Aanmelding::example()).unwrap();
    for field in [
        "ondersteuning",
        "inkomen",
        "schulden",
        "woonwens",
        "identiteit",
    ] {
        assert!(full.get(field).is_some(), "example lacks {field}");
    }
    let sent = z
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({
                "kind": "aanmelding",
                "case_ref": case_ref,
                "to": [{ "role": "gemeente" }, { "role": "woningcorporatie" }],
                "legal_basis": { "basis": "consent", "consent_id": consent_id },
                "payload": full,
            })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    wait_status(&z, &id, "delivered").await;

    let corp = wait_inbox(&w, &id).await;
    assert_eq!(corp["view"], "woningcorporatie");
    let allowed = [
        "formulier",
        "datum_aanmelding_transferpunt",
        "identiteit",
        "huishouden",
        "contact",
        "woonhistorie",
        "woonwens",
        "plaatsing",
        "gedragsaanwijzing",
    ];
    let keys: Vec<&String> = corp["payload"].as_object().unwrap().keys().collect();
    for k in &keys {
        assert!(allowed.contains(&k.as_str()), "the corporation got '{k}'");
    }
    for absent in [
        "ondersteuning",
        "inkomen",
        "schulden",
        "motivatie",
        "justitie",
    ] {
        assert!(
            corp["payload"].get(absent).is_none(),
            "the corporation got '{absent}'"
        );
    }
    assert!(corp["payload"].get("woonwens").is_some());

    // The municipality's view holds the support data.
    let gem = wait_inbox(&g, &id).await;
    assert_eq!(gem["view"], "gemeente");
    assert!(gem["payload"].get("ondersteuning").is_some());
    assert!(gem["payload"].get("justitie").is_none());

    for a in [g, w, z] {
        a.agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_order_removes_the_case_data_and_the_broker_records_the_confirmation() {
    // The payload carries a marker; no file of either agent may ever hold it in the clear.
    let marker = format!("MARKER-{}", uuid::Uuid::now_v7().simple());
    let mut payload = signaal();
    payload["omschrijving"] = json!(format!("{marker} harde muziek na 23.00 uur"));
    let mut net = Net::walcheren().await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let case_ref = open_case(&g, &[&w]).await;
    consent(&g, &case_ref, &ALL).await;
    let sent = g
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": w.oin }], "payload": payload })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    wait_status(&g, &id, "delivered").await;
    let held = wait_inbox(&w, &id).await;
    assert!(held["payload"]["omschrijving"]
        .as_str()
        .unwrap()
        .contains(&marker));
    // While the message is held: its record is on disk (its id is), the marker is not.
    let w_data = net.agent_data(&w.oin);
    let g_data = net.agent_data(&g.oin);
    assert!(
        files_containing(&w_data, id.as_bytes()) > 0,
        "the inbox record is not on disk"
    );
    assert_eq!(files_containing(&w_data, marker.as_bytes()), 0);
    assert_eq!(files_containing(&g_data, marker.as_bytes()), 0);
    assert!(has_keys(&w_data), "the recipient holds no data key");
    g.ok("POST", &format!("/v1/cases/{case_ref}/close"), None)
        .await;

    // Let the case retention (12 months in Walcheren) pass: back-date the closure in the
    // broker's registry while it is stopped, then start it again; its sweep orders deletion.
    net.stop_broker().await;
    let parsed: ketenpost_schemas::ids::CaseRef = case_ref.parse().unwrap();
    {
        let db = sled::Config::new()
            .path(net.broker_data().join("broker.sled"))
            .open()
            .unwrap();
        let store = ketenpost_broker::store::Store::open(
            db.clone(),
            &net.broker_data().join("broker.sled"),
            &net.broker_data().join("spool"),
        )
        .unwrap();
        let mut case = store
            .get_case(&parsed)
            .unwrap()
            .expect("the broker knows the case");
        assert!(case.closed_at.is_some());
        case.closed_at = Some(chrono::Utc::now() - chrono::Duration::days(400));
        store.put_case(&case).unwrap();
        store.flush().unwrap();
        drop(store);
        db.flush().unwrap();
    }
    net.start_broker().await;

    for a in [&w, &g] {
        let orders = eventually("a confirmed deletion order", || async {
            let o = a.ok("GET", "/v1/deletion-orders", None).await;
            let first = o["deletion_orders"].get(0).cloned()?;
            (!first["confirmed_at"].is_null()).then_some(first)
        })
        .await;
        assert_eq!(orders["case_ref"], json!(case_ref));
        assert_eq!(orders["reason"], "retention_ended");
        assert_eq!(orders["deleted_messages"], 1);
        assert!(orders["acknowledged_at"].is_null());
        // The partner system is told and says it deleted its own copies.
        let order_id = orders["order_id"].as_str().unwrap();
        let acked = a
            .ok("POST", &format!("/v1/deletion-orders/{order_id}/ack"), None)
            .await;
        assert!(acked["acknowledged_at"].is_string());
        let health = a.ok("GET", "/v1/health", None).await;
        assert_eq!(health["deletion_orders_unacknowledged"], 0);
    }
    // After the deletion was confirmed: the marker is in no file, and no data key is left.
    for data in [&w_data, &g_data] {
        assert_eq!(files_containing(data, marker.as_bytes()), 0);
        assert!(!has_keys(data), "a data key survived the deletion");
    }
    // The case's data is gone from inbox, outbox and mirror.
    let (status, _, _) = w.fails("GET", &format!("/v1/inbox/{id}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        w.ok("GET", "/v1/inbox?all=true", None).await["messages"],
        json!([])
    );
    let (status, _, _) = g.fails("GET", &format!("/v1/messages/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = g.fails("GET", &format!("/v1/cases/{case_ref}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        g.ok("GET", &format!("/v1/consents?case_ref={case_ref}"), None)
            .await["consents"],
        json!([])
    );

    // The broker recorded both confirmations.
    net.stop_broker().await;
    let db = sled::Config::new()
        .path(net.broker_data().join("broker.sled"))
        .open()
        .unwrap();
    let store = ketenpost_broker::store::Store::open(
        db,
        &net.broker_data().join("broker.sled"),
        &net.broker_data().join("spool"),
    )
    .unwrap();
    let deletions = store.deletions().unwrap();
    let ours: Vec<_> = deletions
        .iter()
        .filter(|d| d.order.case_ref == parsed)
        .collect();
    assert_eq!(ours.len(), 2);
    assert!(ours.iter().all(|d| d.confirmed_at.is_some()), "{ours:?}");

    g.agent.shutdown().await;
    w.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breach_notice_is_sealed_again_to_the_parties_the_broker_routes_it_to() {
    let net = Net::walcheren().await;
    let g = net.agent("gemeente").await;
    let w = net.agent("woningcorporatie").await;
    let z = net.agent("zorgaanbieder").await;
    let case_ref = open_case(&g, &[&w, &z]).await;
    consent(&g, &case_ref, &ALL).await;
    // Only the municipality and the corporation exchanged data about the case.
    let sent = g
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({ "kind": "signaal", "case_ref": case_ref, "to": [{ "oin": w.oin }], "payload": signaal() })),
        )
        .await;
    wait_status(&g, sent["message_id"].as_str().unwrap(), "delivered").await;

    // The corporation reports a breach and guesses the care provider; the broker routes it
    // to the municipality, and the agent seals it again to exactly that.
    let now = chrono::Utc::now();
    let mut breach =
        serde_json::to_value(ketenpost_schemas::payload::DatalekMelding::example()).unwrap();
    breach["betrokken_casussen"] = json!([case_ref]);
    breach["ontdekt_op"] = json!(now);
    breach["tijdvak_van"] = json!(now - chrono::Duration::hours(1));
    breach["tijdvak_tot"] = json!(now + chrono::Duration::minutes(5));
    let sent = w
        .ok(
            "POST",
            "/v1/messages",
            Some(json!({
                "kind": "datalek_melding", "case_ref": case_ref,
                "to": [{ "oin": z.oin }], "payload": breach,
            })),
        )
        .await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    let done = wait_status(&w, &id, "delivered").await;
    let to: Vec<&Value> = done["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["oin"])
        .collect();
    assert_eq!(to, vec![&json!(g.oin)]);

    let got = wait_inbox(&g, &id).await;
    assert_eq!(got["kind"], "datalek_melding");
    let list = g.ok("GET", "/v1/inbox", None).await;
    let item = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["message_id"] == json!(id))
        .unwrap()
        .clone();
    assert!(item["fg_contact"].is_string(), "{item}");
    // The care provider never got it.
    let z_inbox = z.ok("GET", "/v1/inbox?all=true", None).await;
    assert!(z_inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["message_id"] != json!(id)));

    for a in [g, w, z] {
        a.agent.shutdown().await;
    }
}
