//! Startup: the agent refuses documents that do not verify against its pinned federation
//! key, and the binary exits 64 on a bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::Net;
use ketenpost_agent::{Agent, Error};
use ketenpost_schemas::keys;
use ketenpost_schemas::protocol::{CheckpointWire, Documents, Request, Response};
use ketenpost_transport::tls::ServerTls;

type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// A broker impostor with the real broker certificate, answering with `handler`.
async fn impostor(net: &Net, handler: Handler) -> (quinn::Endpoint, SocketAddr) {
    let config = ketenpost_transport::tls::server_config(&ServerTls {
        cert: net.fed.broker.cert.clone(),
        key: net.fed.broker.key.clone(),
        ca: net.fed.ca.cert.clone(),
        crls: vec![],
        partner_cas: vec![],
    })
    .unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(bytes) = recv.read_to_end(1 << 20).await else {
                        return;
                    };
                    let resp = match Request::decode(&bytes) {
                        Ok(req) => handler(req),
                        Err(e) => Response::Error {
                            code: "impostor".into(),
                            message: e.to_string(),
                        },
                    };
                    let _ = send.write_all(&resp.encode()).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (endpoint, addr)
}

/// An impostor that serves `docs` and nothing else.
async fn serving(net: &Net, docs: Documents) -> (quinn::Endpoint, SocketAddr) {
    impostor(
        net,
        Arc::new(move |req| match req {
            Request::GetDocuments => Response::Documents(docs.clone()),
            _ => Response::Error {
                code: "impostor".into(),
                message: "only documents here".into(),
            },
        }),
    )
    .await
}

fn real_documents(net: &Net) -> Documents {
    let (policy, policy_sig) = net.fed.policy.read().unwrap();
    let (directory, directory_sig) = net.fed.directory.read().unwrap();
    Documents {
        policy: String::from_utf8(policy).unwrap(),
        policy_sig,
        directory: String::from_utf8(directory).unwrap(),
        directory_sig,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_directory_is_refused_at_startup() {
    let mut net = Net::walcheren().await;
    net.stop_broker().await;

    // Swap the corporation's encryption key in the directory, keep the signature.
    let mut docs = real_documents(&net);
    let corp = net.oin("woningcorporatie");
    let mut dir: serde_json::Value = serde_json::from_str(&docs.directory).unwrap();
    for p in dir["parties"].as_array_mut().unwrap() {
        if p["oin"] == serde_json::json!(corp) {
            p["age_recipient"] =
                serde_json::json!(keys::generate_age_identity().to_public().to_string());
        }
    }
    docs.directory = serde_json::to_string(&dir).unwrap();
    let (endpoint, addr) = serving(&net, docs).await;
    match Agent::start(net.config("gemeente", addr)).await {
        Err(Error::Documents(message)) => {
            assert!(message.contains("directory"), "{message}");
        }
        Ok(_) => panic!("the agent ran on a tampered directory"),
        Err(other) => panic!("refused for another reason: {other}"),
    }

    // Documents signed by another federation key are refused as well.
    let other = keys::generate_signing_key();
    let mut docs = real_documents(&net);
    docs.directory_sig = ketenpost_schemas::directory::sign_document(
        &other,
        keys::Context::Directory,
        docs.directory.as_bytes(),
    );
    docs.policy_sig = ketenpost_schemas::directory::sign_document(
        &other,
        keys::Context::Policy,
        docs.policy.as_bytes(),
    );
    let (endpoint2, addr2) = serving(&net, docs).await;
    assert!(matches!(
        Agent::start(net.config("zorgaanbieder", addr2)).await,
        Err(Error::Documents(_))
    ));

    // The untampered documents from the same impostor are accepted (the test is fair).
    let (endpoint3, addr3) = serving(&net, real_documents(&net)).await;
    let agent = Agent::start(net.config("woningcorporatie", addr3))
        .await
        .expect("genuine documents are accepted");
    agent.shutdown().await;
    for e in [endpoint, endpoint2, endpoint3] {
        e.close(0u32.into(), b"done");
    }
}

#[test]
fn the_binary_exits_64_on_a_bad_config() {
    let bin = env!("CARGO_BIN_EXE_ketenpost-agent");
    let out = std::process::Command::new(bin)
        .args(["run", "--config", "/nonexistent/ketenpost-agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad configuration"), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/ketenpost-agent.toml"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "oin = \"123\"\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("20 digits"));

    // A client command against no agent: unavailable.
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef").unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--api",
            "127.0.0.1:9",
            "--token-file",
            token.to_str().unwrap(),
            "health",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn help_texts_name_every_command() {
    let bin = env!("CARGO_BIN_EXE_ketenpost-agent");
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "run",
        "send",
        "status",
        "inbox",
        "ack",
        "case",
        "consent",
        "deletion-orders",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    assert!(help.contains("Exit codes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_that_does_not_extend_the_earlier_one_is_warned_about() {
    let mut net = Net::walcheren().await;
    net.stop_broker().await;
    let key =
        keys::signing_key_from_text(&std::fs::read_to_string(&net.fed.broker.signing_key).unwrap())
            .unwrap();
    let checkpoint = move |seq: u64, hash: &str, time: &str| {
        let bytes = format!("{seq}:{hash}:{time}");
        CheckpointWire {
            seq,
            head_hash: hash.to_owned(),
            time: time.to_owned(),
            signature: keys::signature_to_text(&keys::sign(
                &key,
                keys::Context::Checkpoint,
                bytes.as_bytes(),
            )),
        }
    };
    let first = checkpoint(5, &"a".repeat(64), "2025-03-01T09:30:00Z");
    // The same record with another hash: the history was rewritten.
    let rewritten = checkpoint(5, &"b".repeat(64), "2025-03-01T09:31:00Z");
    let docs = real_documents(&net);
    let calls = Arc::new(AtomicU32::new(0));
    let (endpoint, addr) = impostor(
        &net,
        Arc::new(move |req| match req {
            Request::GetDocuments => Response::Documents(docs.clone()),
            Request::GetCheckpoint => {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Response::Checkpoint(Some(if n == 0 {
                    first.clone()
                } else {
                    rewritten.clone()
                }))
            }
            _ => Response::Error {
                code: "impostor".into(),
                message: "not here".into(),
            },
        }),
    )
    .await;
    let agent = common::TestAgent::start(net.config("gemeente", addr)).await;
    let health = common::eventually("an audit warning", || async {
        let h = agent.ok("GET", "/v1/health", None).await;
        (!h["audit_warnings"].as_array()?.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(health["latest_checkpoint_seq"], 5);
    let warning = &health["audit_warnings"][0];
    assert_eq!(warning["seq"], 5);
    assert_eq!(warning["earlier_seq"], 5);
    agent.agent.shutdown().await;
    endpoint.close(0u32.into(), b"done");
}
