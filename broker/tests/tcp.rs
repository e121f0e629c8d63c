//! The broker protocol over TLS 1.3 on TCP, against a real broker on loopback (in this
//! process): the same certificates, CRLs and directory checks as QUIC, length-prefixed
//! frames read with the bound of their kind, concurrent requests over the client's pool of
//! connections, and the listener gone after shutdown. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::protocol::{RejectCode, Request, Response, PROTOCOL_VERSION};
use ketenpost_schemas::testdata::TEST_POLICY as POLICY;
use ketenpost_transport::client::{Client, ClientError, Transport};
use ketenpost_transport::tcp::{prefix, read_prefix, write_frame, MAX_POOL};
use ketenpost_transport::tls::{self, ClientTls};
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: tempfile::TempDir,
    fed: Federation,
    broker: Broker,
    tcp: SocketAddr,
}

/// A dev federation and a broker serving QUIC, TCP and its metrics on loopback.
async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let fed = ketenpost_certs::init(&InitOptions::new(&policy, dir.path().join("fed"))).unwrap();
    let mut cfg = BrokerConfig::for_federation(
        &fed,
        dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.tcp.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start(cfg).await.unwrap();
    let tcp = broker.tcp_addr().expect("TCP is on");
    Fixture {
        _dir: dir,
        fed,
        broker,
        tcp,
    }
}

fn client_tls(fed: &Federation, cert: &Path, key: &Path) -> ClientTls {
    ClientTls {
        ca: fed.ca.cert.clone(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }
}

/// `GET /metrics` of the broker, over plain HTTP/1.0.
fn metrics(broker: &Broker) -> String {
    let at = broker.metrics_addr().expect("metrics are on");
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Connect over TCP and make one request; the first error of either.
async fn connect_and_request(
    addr: SocketAddr,
    tls: &ClientTls,
) -> Result<(Client, Response), ClientError> {
    let client = timeout(WAIT, Client::connect_tcp(addr, "localhost", tls))
        .await
        .expect("connect did not return in time")?;
    let r = client.request(&Request::GetCheckpoint, WAIT).await?;
    Ok((client, r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_party_gets_answers_over_tcp_also_concurrently() {
    let fx = start().await;
    let party = &fx.fed.parties[0];
    let tls = client_tls(&fx.fed, &party.cert, &party.key);
    let (client, first) = connect_and_request(fx.tcp, &tls).await.unwrap();
    assert!(matches!(first, Response::Checkpoint(_)), "{first:?}");
    assert_eq!(client.transport(), Transport::Tcp);
    assert!(client.connection().is_none(), "no QUIC connection under it");
    assert!(matches!(
        client.request(&Request::GetDocuments, WAIT).await.unwrap(),
        Response::Documents(_)
    ));

    // More requests at once than the pool has connections, one of them a long poll: each
    // is answered; the ones over the pool's size wait for a free connection.
    let mut all = tokio::task::JoinSet::new();
    let fetch = Request::Fetch {
        max: 1,
        wait_ms: 1_000,
        skip: Vec::new(),
    };
    let c = client.clone();
    all.spawn(async move { c.request(&fetch, WAIT).await });
    for _ in 0..MAX_POOL + 8 {
        let c = client.clone();
        all.spawn(async move { c.request(&Request::GetCheckpoint, WAIT).await });
    }
    let mut answered = 0;
    while let Some(done) = timeout(WAIT * 2, all.join_next()).await.unwrap() {
        let r = done.unwrap().unwrap();
        assert!(
            matches!(r, Response::Checkpoint(_) | Response::Deliveries(_)),
            "{r:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, MAX_POOL + 9);

    // The broker counted the connections as TCP ones, and none as QUIC.
    let text = metrics(&fx.broker);
    assert!(
        text.contains("ketenpost_broker_connections_total{transport=\"tcp\"}"),
        "{text}"
    );
    assert!(!text.contains("transport=\"quic\""), "{text}");

    client.close().await;
    assert!(client.close_reason().is_some());
    assert!(matches!(
        client.request(&Request::GetCheckpoint, WAIT).await,
        Err(ClientError::Closed)
    ));

    // After shutdown, the TCP listener is gone.
    let tcp = fx.tcp;
    fx.broker.shutdown().await;
    let err = Client::connect_tcp(tcp, "localhost", &tls)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TcpConnect(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_are_refused_over_tcp_with_their_alert() {
    let fx = start().await;
    let neg = &fx.fed.negative;
    for (cert, key, alert) in [
        (
            &neg.foreign.cert,
            &neg.foreign.key,
            AlertDescription::UnknownCA,
        ),
        (
            &neg.revoked.cert,
            &neg.revoked.key,
            AlertDescription::CertificateRevoked,
        ),
        (
            &neg.expired.cert,
            &neg.expired.key,
            AlertDescription::CertificateExpired,
        ),
    ] {
        let err = connect_and_request(fx.tcp, &client_tls(&fx.fed, cert, key))
            .await
            .expect_err("a bad client certificate must not get an answer");
        assert_eq!(err.tls_alert(), Some(alert), "{err:?}");
        assert!(err.is_connection_lost(), "{err:?}");
    }
    // A certificate the CA issued for an OIN outside the directory passes TLS and is then
    // refused by the directory check: the connection closes without an answer.
    let tls = client_tls(&fx.fed, &neg.wrong_oin.cert, &neg.wrong_oin.key);
    let err = connect_and_request(fx.tcp, &tls).await.unwrap_err();
    assert!(matches!(err, ClientError::TcpLost(_)), "{err:?}");
    fx.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_its_bound_is_refused_unread_and_the_connection_stays_served() {
    let fx = start().await;
    let party = &fx.fed.parties[1];
    let config = tls::tcp_client_config(&client_tls(&fx.fed, &party.cert, &party.key)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(fx.tcp).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();

    async fn answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Response {
        let len = timeout(WAIT, read_prefix(s))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut bytes = vec![0; len];
        timeout(WAIT, s.read_exact(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        Response::decode(&bytes).unwrap()
    }

    // A control record may be 64 KiB, a receipt 8 KiB, a fetch (with its `skip`) about
    // 85 KiB: one byte over is refused, the rest skipped, and the connection serves the
    // next request.
    let fetch_bound = ketenpost_schemas::protocol::request_bound(0x02, 0).unwrap();
    for (kind, bound) in [(0x04u8, 64 * 1024), (0x03, 8 * 1024), (0x02, fetch_bound)] {
        let mut frame = vec![PROTOCOL_VERSION, kind];
        frame.resize(bound + 1, b' ');
        write_frame(&mut conn, &frame).await.unwrap();
        let Response::Rejected(r) = answer(&mut conn).await else {
            panic!("kind {kind:#04x} was not refused");
        };
        assert_eq!(r.code, RejectCode::Malformed, "kind {kind:#04x}: {r}");
        assert!(r.reason.contains(&bound.to_string()), "{}", r.reason);
        write_frame(&mut conn, &Request::GetCheckpoint.encode())
            .await
            .unwrap();
        assert!(matches!(answer(&mut conn).await, Response::Checkpoint(_)));
    }

    // A submission announced at 1 GiB: the broker answers after the head alone, without
    // waiting for (or reading) a byte of the body, and then closes the connection, which
    // cannot be skipped back into step.
    conn.write_all(&prefix(1 << 30).unwrap()).await.unwrap();
    conn.write_all(&[PROTOCOL_VERSION, 0x01]).await.unwrap();
    conn.flush().await.unwrap();
    let Response::Rejected(r) = answer(&mut conn).await else {
        panic!("the oversized submission was not refused");
    };
    assert_eq!(r.code, RejectCode::Malformed, "{r}");
    let mut rest = Vec::new();
    let closed = timeout(WAIT, conn.read_to_end(&mut rest)).await.unwrap();
    assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");

    // The pool client of the same party is served as before.
    let tls = client_tls(&fx.fed, &party.cert, &party.key);
    let (client, r) = connect_and_request(fx.tcp, &tls).await.unwrap();
    assert!(matches!(r, Response::Checkpoint(_)), "{r:?}");
    client.close().await;
    fx.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_tcp_serve_the_same_broker_side_by_side() {
    let fx = start().await;
    let party = &fx.fed.parties[0];
    let tls = client_tls(&fx.fed, &party.cert, &party.key);
    let quic = timeout(
        WAIT,
        Client::connect(fx.broker.local_addr(), "localhost", &tls),
    )
    .await
    .unwrap()
    .unwrap();
    let tcp = timeout(WAIT, Client::connect_tcp(fx.tcp, "localhost", &tls))
        .await
        .unwrap()
        .unwrap();
    let (a, b) = (
        quic.request(&Request::GetDocuments, WAIT).await.unwrap(),
        tcp.request(&Request::GetDocuments, WAIT).await.unwrap(),
    );
    assert_eq!(a, b, "one broker, one answer");
    let text = metrics(&fx.broker);
    for t in ["quic", "tcp"] {
        assert!(
            text.contains(&format!(
                "ketenpost_broker_connections_total{{transport=\"{t}\"}} 1"
            )),
            "{text}"
        );
    }
    quic.close().await;
    tcp.close().await;
    fx.broker.shutdown().await;
}

#[test]
fn the_tcp_client_uses_the_quic_rustls_configuration() {
    // TLS 1.3 only and the protocol's ALPN, as over QUIC: the TCP client is built from
    // `client_rustls_config`.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let fed = ketenpost_certs::init(&InitOptions::new(&policy, dir.path().join("fed"))).unwrap();
    let p = &fed.parties[0];
    let cfg: Arc<rustls::ClientConfig> =
        tls::tcp_client_config(&client_tls(&fed, &p.cert, &p.key)).unwrap();
    assert_eq!(
        cfg.alpn_protocols,
        vec![ketenpost_schemas::protocol::ALPN.to_vec()]
    );
    assert!(!cfg.enable_early_data);
}
