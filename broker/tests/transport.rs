//! The QUIC + mTLS transport on loopback: a dev federation from `ketenpost-certs`, a tiny
//! server built on [`tls::server_config`] and the [`Client`] library.
//!
//! The server records, per connection, either the OIN it established or the handshake
//! error, and answers every request with `Done` (a `Fetch` after waiting its `wait_ms`, to
//! act like a long poll). Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::protocol::{Request, Response, ALPN, MAX_REQUEST};
use ketenpost_transport::client::{Client, ClientError};
use ketenpost_transport::tls::{self, ClientTls, ServerTls, TlsError};
use quinn::{ConnectionError, TransportErrorCode};
use rustls::AlertDescription;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The policy of the dev federation: three roles, so three parties.
use ketenpost_schemas::testdata::TEST_POLICY as POLICY;

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// A dev federation in a temporary directory (removed on drop).
struct Fixture {
    _dir: tempfile::TempDir,
    fed: Federation,
}

fn federation() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let fed = ketenpost_certs::init(&InitOptions::new(&policy, dir.path().join("fed"))).unwrap();
    assert!(fed.parties.len() >= 2, "the policy has three roles");
    Fixture { _dir: dir, fed }
}

fn server_tls(fed: &Federation) -> ServerTls {
    ServerTls {
        cert: fed.broker.cert.clone(),
        key: fed.broker.key.clone(),
        ca: fed.ca.cert.clone(),
        crls: vec![fed.ca.crl.clone()],
        partner_cas: vec![],
    }
}

fn client_tls(fed: &Federation, cert: &Path, key: &Path) -> ClientTls {
    ClientTls {
        ca: fed.ca.cert.clone(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }
}

/// What the test server saw of one incoming connection.
#[derive(Debug)]
enum Seen {
    /// The handshake completed; the peer's OIN and certificate fingerprint.
    Established {
        oin: Result<Oin, String>,
        fingerprint: Result<String, String>,
    },
    /// The handshake failed.
    Refused(ConnectionError),
}

struct TestServer {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl TestServer {
    async fn next_seen(&mut self) -> Seen {
        timeout(WAIT, self.seen.recv())
            .await
            .expect("server saw no connection in time")
            .expect("server task ended")
    }

    /// Nothing more was seen within a short grace period.
    async fn assert_quiet(&mut self) {
        if let Ok(Some(seen)) = timeout(Duration::from_millis(300), self.seen.recv()).await {
            panic!("server unexpectedly saw {seen:?}");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

fn start_server(config: ServerTls) -> TestServer {
    let config = tls::server_config(&config).unwrap();
    let endpoint = quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = tx.send(Seen::Refused(err));
                        return;
                    }
                };
                let _ = tx.send(Seen::Established {
                    oin: tls::peer_oin(&conn).map_err(|e| e.to_string()),
                    fingerprint: tls::peer_fingerprint(&conn).map_err(|e| e.to_string()),
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(bytes) = recv.read_to_end(MAX_REQUEST).await else {
                            return;
                        };
                        let response = match Request::decode(&bytes) {
                            Ok(Request::Fetch { wait_ms, .. }) => {
                                tokio::time::sleep(Duration::from_millis(wait_ms.into())).await;
                                Response::Done
                            }
                            Ok(_) => Response::Done,
                            Err(e) => Response::Error {
                                code: "malformed".into(),
                                message: e.to_string(),
                            },
                        };
                        let _ = send.write_all(&response.encode()).await;
                        let _ = send.finish();
                        // Let the response reach the client before the stream is dropped.
                        let _ = timeout(WAIT, send.stopped()).await;
                    });
                }
            });
        }
    });
    TestServer {
        addr,
        endpoint,
        seen,
    }
}

/// Connect and make one request; the first error of either.
async fn connect_and_request(
    addr: SocketAddr,
    server_name: &str,
    tls: &ClientTls,
) -> Result<Response, ClientError> {
    let client = timeout(WAIT, Client::connect(addr, server_name, tls))
        .await
        .expect("connect did not return in time")?;
    let result = client.request(&Request::GetCheckpoint, WAIT).await;
    client.close().await;
    result
}

/// The TLS alert the broker closed the connection with, as the client sees it.
fn alert_of(err: &ClientError) -> Option<u8> {
    match err {
        ClientError::Connection(ConnectionError::ConnectionClosed(close)) => {
            let code = u64::from(close.error_code);
            (code & !0xff == 0x100).then_some((code & 0xff) as u8)
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_valid_party_connects_and_the_server_sees_its_oin() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let party = &fx.fed.parties[0];
    let client = timeout(
        WAIT,
        Client::connect(
            server.addr,
            "localhost",
            &client_tls(&fx.fed, &party.cert, &party.key),
        ),
    )
    .await
    .unwrap()
    .unwrap();

    let Seen::Established { oin, fingerprint } = server.next_seen().await else {
        panic!("the handshake of a valid party failed");
    };
    assert_eq!(oin.unwrap(), party.oin);
    let der = ketenpost_certs::cert_der_from_pem(&std::fs::read(&party.cert).unwrap()).unwrap();
    assert_eq!(fingerprint.unwrap(), ketenpost_certs::fingerprint(&der));

    assert_eq!(
        client.request(&Request::GetDocuments, WAIT).await.unwrap(),
        Response::Done
    );
    // Several requests at once, each on its own stream of the same connection.
    let clone = client.clone();
    let many = (0..8u64).map(|i| {
        let c = clone.clone();
        async move { c.request(&Request::Ack { up_to: i }, WAIT).await }
    });
    for result in futures_join_all(many).await {
        assert_eq!(result.unwrap(), Response::Done);
    }
    server.assert_quiet().await;
    client.close().await;
    assert!(matches!(
        client.close_reason(),
        Some(ConnectionError::LocallyClosed)
    ));
}

/// `futures::future::join_all` without the dependency: spawn and await each.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(timeout(WAIT, h).await.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn two_parties_are_told_apart() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    for party in &fx.fed.parties[..2] {
        let tls = client_tls(&fx.fed, &party.cert, &party.key);
        assert_eq!(
            connect_and_request(server.addr, "localhost", &tls)
                .await
                .unwrap(),
            Response::Done
        );
        match server.next_seen().await {
            Seen::Established { oin, .. } => assert_eq!(oin.unwrap(), party.oin),
            other => panic!("{other:?}"),
        }
    }
}

/// A refused certificate: the connect or the first request fails with the expected TLS
/// alert, and the server records a failed handshake and never an established connection.
async fn assert_refused(server: &mut TestServer, tls: &ClientTls, alert: AlertDescription) {
    let err = connect_and_request(server.addr, "localhost", tls)
        .await
        .expect_err("a bad client certificate must not get an answer");
    assert_eq!(alert_of(&err), Some(u8::from(alert)), "{err:?}");
    match server.next_seen().await {
        Seen::Refused(ConnectionError::TransportError(e)) => {
            assert_eq!(e.code, TransportErrorCode::crypto(u8::from(alert)), "{e}");
        }
        other => panic!("expected a refused handshake, server saw {other:?}"),
    }
    server.assert_quiet().await;
}

#[tokio::test]
async fn a_foreign_ca_certificate_is_refused_at_the_handshake() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let neg = &fx.fed.negative.foreign;
    assert_eq!(
        neg.oin, fx.fed.parties[0].oin,
        "it impersonates a real party"
    );
    let tls = client_tls(&fx.fed, &neg.cert, &neg.key);
    assert_refused(&mut server, &tls, AlertDescription::UnknownCA).await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_the_handshake() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let neg = &fx.fed.negative.expired;
    let tls = client_tls(&fx.fed, &neg.cert, &neg.key);
    assert_refused(&mut server, &tls, AlertDescription::CertificateExpired).await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_handshake() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let neg = &fx.fed.negative.revoked;
    let tls = client_tls(&fx.fed, &neg.cert, &neg.key);
    assert_refused(&mut server, &tls, AlertDescription::CertificateRevoked).await;
}

#[tokio::test]
async fn the_revoked_certificate_is_refused_because_of_the_crl() {
    // The control case: without the CRL the same certificate gets in, so it is the CRL,
    // not some other defect of the certificate, that the previous test saw refuse it.
    let fx = federation();
    let mut config = server_tls(&fx.fed);
    config.crls.clear();
    let mut server = start_server(config);
    let neg = &fx.fed.negative.revoked;
    let tls = client_tls(&fx.fed, &neg.cert, &neg.key);
    assert_eq!(
        connect_and_request(server.addr, "localhost", &tls)
            .await
            .unwrap(),
        Response::Done
    );
    assert!(matches!(server.next_seen().await, Seen::Established { .. }));
}

#[tokio::test]
async fn a_wrong_oin_certificate_passes_tls_and_shows_its_oin() {
    // TLS only proves the CA issued it; refusing an OIN outside the directory is the
    // broker's check 1, which needs to see exactly this OIN.
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let neg = &fx.fed.negative.wrong_oin;
    assert!(fx.fed.party(&neg.oin).is_none());
    let tls = client_tls(&fx.fed, &neg.cert, &neg.key);
    assert_eq!(
        connect_and_request(server.addr, "localhost", &tls)
            .await
            .unwrap(),
        Response::Done
    );
    match server.next_seen().await {
        Seen::Established { oin, .. } => assert_eq!(oin.unwrap(), neg.oin),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_client_verifies_the_broker_name() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let party = &fx.fed.parties[0];
    let tls = client_tls(&fx.fed, &party.cert, &party.key);
    let err = connect_and_request(server.addr, "broker.elsewhere.example", &tls)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connection(_)), "{err:?}");
    assert!(matches!(server.next_seen().await, Seen::Refused(_)));
}

#[tokio::test]
async fn the_client_refuses_a_broker_from_another_ca() {
    let fx = federation();
    let mut server = start_server(server_tls(&fx.fed));
    let party = &fx.fed.parties[0];
    let mut tls = client_tls(&fx.fed, &party.cert, &party.key);
    tls.ca = fx.fed.negative.foreign_ca.clone();
    let err = connect_and_request(server.addr, "localhost", &tls)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connection(_)), "{err:?}");
    assert!(matches!(server.next_seen().await, Seen::Refused(_)));
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_connection_stays_usable() {
    let fx = federation();
    let server = start_server(server_tls(&fx.fed));
    let party = &fx.fed.parties[0];
    let client = timeout(
        WAIT,
        Client::connect(
            server.addr,
            "localhost",
            &client_tls(&fx.fed, &party.cert, &party.key),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let slow = Request::Fetch {
        max: 1,
        wait_ms: 5_000,
        skip: Vec::new(),
    };
    let err = client
        .request(&slow, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                what: "request",
                ..
            }
        ),
        "{err:?}"
    );
    let quick = Request::Fetch {
        max: 1,
        wait_ms: 50,
        skip: Vec::new(),
    };
    assert_eq!(client.request(&quick, WAIT).await.unwrap(), Response::Done);
    client.close().await;
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_typed_error_naming_it() {
    let fx = federation();
    let party = &fx.fed.parties[0];
    let missing = fx.fed.dir.join("no-such-cert.pem");
    let tls = client_tls(&fx.fed, &missing, &party.key);
    let err = Client::connect((Ipv4Addr::LOCALHOST, 9).into(), "localhost", &tls)
        .await
        .unwrap_err();
    match err {
        ClientError::Tls(TlsError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    // A key file given as the certificate: no certificate in it.
    let swapped = client_tls(&fx.fed, &party.key, &party.key);
    assert!(matches!(
        tls::client_config(&swapped).unwrap_err(),
        TlsError::NoCertificate { .. }
    ));
    // A certificate given as the key.
    let mut config = server_tls(&fx.fed);
    config.key = config.cert.clone();
    assert!(matches!(
        tls::server_config(&config).unwrap_err(),
        TlsError::NoPrivateKey { .. }
    ));
    // The CRL given as a CA, the CA given as a CRL.
    let mut config = server_tls(&fx.fed);
    config.crls = vec![fx.fed.ca.cert.clone()];
    assert!(matches!(
        tls::server_config(&config).unwrap_err(),
        TlsError::BadCrl { .. }
    ));
    // Another party's key with this party's certificate.
    let other = &fx.fed.parties[1];
    let mismatched = client_tls(&fx.fed, &party.cert, &other.key);
    assert!(matches!(
        tls::client_config(&mismatched).unwrap_err(),
        TlsError::Config { .. }
    ));
}

// ---- TLS 1.2 is neither accepted nor offered ---------------------------------------------

#[derive(Debug, PartialEq)]
enum FailedSide {
    Client,
    Server,
}

/// Run a TLS handshake in memory, without sockets. The error of the side that failed first.
fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), (FailedSide, rustls::Error)> {
    for _ in 0..16 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server
                .process_new_packets()
                .map_err(|e| (FailedSide::Server, e))?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client
                .process_new_packets()
                .map_err(|e| (FailedSide::Client, e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

#[test]
fn the_configurations_negotiate_tls13_and_the_alpn() {
    let fx = federation();
    let party = &fx.fed.parties[0];
    let server_cfg = Arc::new(tls::server_rustls_config(&server_tls(&fx.fed)).unwrap());
    let client_cfg =
        Arc::new(tls::client_rustls_config(&client_tls(&fx.fed, &party.cert, &party.key)).unwrap());
    let mut client = rustls::ClientConnection::new(client_cfg, name()).unwrap();
    let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
    handshake(&mut client, &mut server).unwrap();
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server.alpn_protocol(), Some(ALPN));
    let peer = server.peer_certificates().unwrap();
    assert_eq!(
        ketenpost_certs::oin_from_cert_der(peer[0].as_ref()).unwrap(),
        party.oin
    );
}

// The workspace builds rustls without its `tls12` feature, so a TLS 1.2 peer cannot be
// built with rustls itself; these tests speak the bytes of a ClientHello directly.

fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
}

fn with_u16_len(data: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// The ClientHello record of a TLS 1.2 client: legacy version 1.2, an ECDHE-ECDSA suite,
/// and optionally a `supported_versions` extension that lists only TLS 1.2.
fn tls12_client_hello(with_supported_versions: bool) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut sni = vec![0u8];
    sni.extend_from_slice(&with_u16_len(b"localhost"));
    ext(&mut exts, 0x0000, &with_u16_len(&sni));
    ext(&mut exts, 0x000a, &with_u16_len(&[0x00, 0x1d, 0x00, 0x17]));
    ext(&mut exts, 0x000b, &[0x01, 0x00]);
    ext(&mut exts, 0x000d, &with_u16_len(&[0x04, 0x03, 0x08, 0x04]));
    let mut alpn = vec![u8::try_from(ALPN.len()).unwrap()];
    alpn.extend_from_slice(ALPN);
    ext(&mut exts, 0x0010, &with_u16_len(&alpn));
    if with_supported_versions {
        ext(&mut exts, 0x002b, &[0x02, 0x03, 0x03]);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // no session id
    body.extend_from_slice(&with_u16_len(&[0xc0, 0x2b, 0x00, 0xff]));
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&with_u16_len(&exts));
    let mut hs = vec![0x01];
    hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&with_u16_len(&hs));
    record
}

#[test]
fn the_broker_does_not_accept_tls12() {
    let fx = federation();
    let server_cfg = Arc::new(tls::server_rustls_config(&server_tls(&fx.fed)).unwrap());
    for with_supported_versions in [false, true] {
        let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
        let hello = tls12_client_hello(with_supported_versions);
        let mut rd = &hello[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        let err = server.process_new_packets().unwrap_err();
        assert!(matches!(err, rustls::Error::PeerIncompatible(_)), "{err:?}");
        // The server answers with a fatal protocol_version alert, and nothing else.
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        let protocol_version = u8::from(AlertDescription::ProtocolVersion);
        assert_eq!(out, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, protocol_version]);
    }
}

/// The extensions of the ClientHello in a TLS record, as (type, data).
fn client_hello_extensions(record: &[u8]) -> Vec<(u16, Vec<u8>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, tail) = b.split_at(n);
        *b = tail;
        head
    }
    fn u16_of(b: &mut &[u8]) -> usize {
        let v = take(b, 2);
        usize::from(u16::from_be_bytes([v[0], v[1]]))
    }
    let mut b = record;
    assert_eq!(take(&mut b, 1), [0x16], "a handshake record");
    take(&mut b, 2);
    let len = u16_of(&mut b);
    let mut b = take(&mut b, len);
    assert_eq!(take(&mut b, 1), [0x01], "a ClientHello");
    take(&mut b, 3 + 2 + 32); // length, legacy version, random
    let sid = usize::from(take(&mut b, 1)[0]);
    take(&mut b, sid);
    let suites = u16_of(&mut b);
    take(&mut b, suites);
    let comp = usize::from(take(&mut b, 1)[0]);
    take(&mut b, comp);
    let len = u16_of(&mut b);
    let mut exts = take(&mut b, len);
    let mut out = Vec::new();
    while !exts.is_empty() {
        let kind = u16::try_from(u16_of(&mut exts)).unwrap();
        let len = u16_of(&mut exts);
        out.push((kind, take(&mut exts, len).to_vec()));
    }
    out
}

#[test]
fn the_agent_offers_only_tls13() {
    let fx = federation();
    let party = &fx.fed.parties[0];
    let client_cfg =
        Arc::new(tls::client_rustls_config(&client_tls(&fx.fed, &party.cert, &party.key)).unwrap());
    let mut client = rustls::ClientConnection::new(client_cfg, name()).unwrap();
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).unwrap();
    }
    let exts = client_hello_extensions(&hello);
    let versions = exts
        .iter()
        .find(|(kind, _)| *kind == 0x002b)
        .map(|(_, data)| data.clone())
        .expect("a TLS 1.3 ClientHello has supported_versions");
    assert_eq!(versions, [0x02, 0x03, 0x04], "exactly one version: TLS 1.3");
    let alpn = exts
        .iter()
        .find(|(kind, _)| *kind == 0x0010)
        .map(|(_, data)| data.clone())
        .expect("the ClientHello carries ALPN");
    assert!(alpn.ends_with(ALPN));
}
