//! The QUIC + mTLS transport configuration of broker and agents, and the same rustls
//! configurations for TLS over TCP (the fallback for networks that block UDP, see
//! [`crate::tcp`]).
//!
//! Both sides speak TLS 1.3 only, use the `ring` provider and negotiate the ALPN id
//! [`ALPN`]. QUIC needs nothing older; the rustls configurations list TLS 1.3 alone as
//! well, so they cannot fall back when used over TCP either (the workspace also builds
//! rustls without its `tls12` feature). QUIC and TCP share one rustls configuration per
//! side: the same client-certificate verifier, the same CRLs. The broker *requires* a client
//! certificate issued by the federation CA and checks it against the federation's CRLs, so a
//! foreign, expired or revoked certificate fails in the handshake, before a single stream is
//! opened. The OIN in that certificate (subject serialNumber, as PKIoverheid puts it) is the
//! sending organisation: [`peer_oin`] reads it off an established connection, and
//! [`peer_fingerprint`] gives the SHA-256 the partner directory lists.
//!
//! Session resumption is off on both sides: every connection runs the full certificate check
//! at the time it is made, so a certificate that expired or was revoked since an earlier
//! connection cannot slip back in on a session ticket. 0-RTT is off (rustls' default), since
//! 0-RTT data can be replayed.
//!
//! Loading never panics: a missing file, a file without a certificate or key, or a CRL that
//! does not parse is a [`TlsError`] that names the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::protocol::ALPN;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

/// How many request streams one connection may have open at once. Each request is one
/// bidirectional stream, so this bounds the work a single partner can queue at the broker.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 256;

/// A connection with no traffic (not even keep-alives) for this long is closed. The
/// effective timeout is the smaller of both sides' values.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the client sends a keep-alive when it has nothing else to send, so an idle
/// agent (for example one waiting on a long-polled fetch) keeps its connection and NAT
/// binding. Well under [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Most data the broker buffers for one connection before the client has to wait for it to
/// be read. Bounds the memory one partner can tie up; a full request ([`MAX_REQUEST`]) still
/// fits, because the broker reads a stream as it arrives.
///
/// [`MAX_REQUEST`]: ketenpost_schemas::protocol::MAX_REQUEST
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// The files the broker's TLS configuration is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The broker's certificate chain, PEM, end-entity first. Partners check it against the
    /// federation CA and the name they dial.
    pub cert: PathBuf,
    /// The broker's private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key: PathBuf,
    /// The federation CA certificate(s), PEM: the only issuers of partner certificates the
    /// broker accepts. More than one is allowed, for a CA rollover.
    pub ca: PathBuf,
    /// Certificate revocation lists of the federation CA, PEM or DER. With at least one CRL,
    /// every partner certificate must have a known, unrevoked status; with none, revocation
    /// is not checked (a warning is logged). With `partner_cas`, list their CRLs here too.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// External CAs that also issue partner certificates (PEM roots), e.g. the PKIoverheid
    /// Private Root CA: partners present their chain (end-entity and intermediates), the
    /// OIN in subject serialNumber. The directory still pins each certificate.
    #[serde(default)]
    pub partner_cas: Vec<PathBuf>,
}

/// The files an agent's (or a test's) TLS configuration is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The federation CA certificate(s), PEM: the broker's certificate must chain to one.
    pub ca: PathBuf,
    /// The organisation's mTLS client certificate chain, PEM, end-entity first. Its subject
    /// serialNumber is the OIN the broker treats as the sender.
    pub cert: PathBuf,
    /// The private key of that certificate, PEM.
    pub key: PathBuf,
}

/// What can go wrong while building a TLS configuration or reading a peer's identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key, CA or CRL file could not be read (missing, unreadable).
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A PEM file is malformed (broken armour, bad base64).
    #[error("{} is not valid PEM: {reason}", .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// A certificate or CA file holds no `CERTIFICATE` block.
    #[error("no certificate in {}", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key in {}", .path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA file holds a certificate that cannot serve as a trust anchor.
    #[error("{} holds an unusable CA certificate: {reason}", .path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        reason: String,
    },
    /// A CRL file holds no CRL, or one that does not parse.
    #[error("bad CRL in {}: {reason}", .path.display())]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration, e.g. the private key does not belong to the
    /// certificate, or the provider cannot do TLS 1.3.
    #[error("invalid TLS configuration ({what}): {source}")]
    Config {
        /// Which part was being configured.
        what: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA and CRLs.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration (no cipher suite usable for QUIC's initial
    /// packets).
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The connection carries no peer certificate. Cannot happen on a broker connection,
    /// where client certificates are required; reported rather than assumed.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate does not name an organisation: no subject serialNumber, not a
    /// 20-digit OIN, more than one, or not a parseable certificate.
    #[error("peer certificate names no usable OIN: {0}")]
    PeerIdentity(#[from] ketenpost_schemas::cert::CertError),
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_pem(path: &Path, err: pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

/// The certificates of a PEM file, in order. At least one, or [`TlsError::NoCertificate`].
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => bad_pem(path, other),
    })
}

/// The CRLs of a file: every `X509 CRL` PEM block, or the whole file as one DER CRL (how
/// PKIoverheid publishes them). Each is parsed here, so a broken CRL is reported with its
/// file name at start-up rather than as a failed handshake later. A CRL past its nextUpdate
/// is logged as a warning: it is still honoured, since the revocations in it stay valid.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::BadCrl {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_file(path)?;
    let mut crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if crls.is_empty() {
        // 0x30: a DER SEQUENCE, which a CRL is. Anything else is neither PEM nor DER.
        if bytes.first() == Some(&0x30) {
            crls.push(CertificateRevocationListDer::from(bytes));
        } else {
            return Err(bad("no X509 CRL block and not a DER CRL".into()));
        }
    }
    for crl in &crls {
        let (rest, parsed) =
            x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the CRL".into()));
        }
        if let Some(next) = parsed.next_update() {
            if next < x509_parser::time::ASN1Time::now() {
                tracing::warn!(
                    crl = %path.display(),
                    next_update = %next,
                    "CRL is past its nextUpdate; still honoured, publish a fresh one"
                );
            }
        }
    }
    Ok(crls)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, path)?;
    Ok(roots)
}

fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Config { what, source }
}

/// The broker's rustls configuration: TLS 1.3 only, client certificate required and
/// verified against the federation CA and CRLs, ALPN [`ALPN`], no resumption.
///
/// [`server_config`] wraps this for QUIC; it is public so tests can check the TLS layer
/// on its own (e.g. that a TLS 1.2 client is refused).
pub fn server_rustls_config(paths: &ServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = load_roots(&paths.ca)?;
    for path in &paths.partner_cas {
        add_roots(&mut roots, path)?;
    }
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    for path in &paths.crls {
        crls.extend(load_crls(path)?);
    }
    if crls.is_empty() {
        tracing::warn!("no CRL configured: partner certificate revocation is not checked");
    }
    let crl_count = crls.len();
    // Defaults kept on purpose: the whole chain is checked, and a certificate whose status
    // no CRL covers is refused (fail closed).
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .build()?;
    let chain = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_err("broker certificate and key"))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    tracing::info!(
        cert = %paths.cert.display(),
        ca = %paths.ca.display(),
        crls = crl_count,
        "broker TLS configuration loaded"
    );
    Ok(config)
}

/// The broker's QUIC server configuration: [`server_rustls_config`] plus the transport
/// limits ([`MAX_CONCURRENT_BIDI_STREAMS`], [`IDLE_TIMEOUT`], [`CONNECTION_RECEIVE_WINDOW`];
/// no unidirectional streams or datagrams, which the protocol does not use).
pub fn server_config(paths: &ServerTls) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with_streams(paths, MAX_CONCURRENT_BIDI_STREAMS)
}

/// [`server_config`] with another limit on concurrent requests (streams) per connection.
pub fn server_config_with_streams(
    paths: &ServerTls,
    max_streams: u32,
) -> Result<quinn::ServerConfig, TlsError> {
    quic_server_config(server_rustls_config(paths)?, max_streams)
}

/// The QUIC server configuration around a ready [`server_rustls_config`] (a broker that
/// also serves TLS over TCP builds the rustls configuration once, for both).
pub fn quic_server_config(
    rustls: rustls::ServerConfig,
    max_streams: u32,
) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = QuicServerConfig::try_from(rustls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = base_transport();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// An agent's rustls configuration: TLS 1.3 only, the broker verified against the
/// federation CA, the organisation's certificate presented, ALPN [`ALPN`], no resumption.
pub fn client_rustls_config(paths: &ClientTls) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(&paths.ca)?;
    let chain = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("protocol versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_err("client certificate and key"))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// An agent's QUIC client configuration: [`client_rustls_config`], keep-alive every
/// [`KEEP_ALIVE_INTERVAL`], and no streams the broker could open towards the agent
/// (protocol version 1 has only client-initiated requests).
pub fn client_config(paths: &ClientTls) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(client_rustls_config(paths)?)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = base_transport();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Settings both sides share.
fn base_transport() -> TransportConfig {
    let mut transport = TransportConfig::default();
    // IDLE_TIMEOUT in milliseconds; a u32 cannot exceed the VarInt bound, so this cannot fail.
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    transport
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    transport
}

/// The broker's acceptor for TLS over TCP, around a ready [`server_rustls_config`]: the
/// same verifier and CRLs as its QUIC endpoint.
pub fn tcp_acceptor(rustls: rustls::ServerConfig) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(Arc::new(rustls))
}

/// An agent's TLS-over-TCP client configuration (shared, cheap to clone).
pub type TcpClientConfig = Arc<rustls::ClientConfig>;

/// An agent's TLS-over-TCP client configuration: [`client_rustls_config`], as for QUIC.
pub fn tcp_client_config(paths: &ClientTls) -> Result<TcpClientConfig, TlsError> {
    Ok(Arc::new(client_rustls_config(paths)?))
}

/// An established connection whose peer presented a (verified) certificate chain: a QUIC
/// connection, or a TLS-over-TCP stream on the broker's side. [`peer_oin`] and
/// [`peer_fingerprint`] read either.
pub trait PeerCertificates {
    /// The peer's end-entity certificate (DER), if it presented one.
    fn end_entity(&self) -> Option<CertificateDer<'static>>;
}

impl PeerCertificates for quinn::Connection {
    fn end_entity(&self) -> Option<CertificateDer<'static>> {
        self.peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.into_iter().next())
    }
}

impl<IO> PeerCertificates for tokio_rustls::server::TlsStream<IO> {
    fn end_entity(&self) -> Option<CertificateDer<'static>> {
        let (_, conn) = self.get_ref();
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.clone().into_owned())
    }
}

/// The DER of the peer's end-entity certificate on an established connection.
fn peer_cert(conn: &impl PeerCertificates) -> Result<CertificateDer<'static>, TlsError> {
    conn.end_entity().ok_or(TlsError::NoPeerCertificate)
}

/// The OIN of the organisation on the other end of a connection: the subject serialNumber
/// (OID 2.5.4.5) of its verified client certificate. This is the sender identity the broker
/// holds every submitted message against (check 1).
pub fn peer_oin(conn: &impl PeerCertificates) -> Result<Oin, TlsError> {
    let cert = peer_cert(conn)?;
    Ok(ketenpost_schemas::cert::oin_from_cert_der(cert.as_ref())?)
}

/// The serial number of the peer's end-entity certificate (see
/// [`crate::revocation::cert_serial`]).
pub fn peer_serial(conn: &impl PeerCertificates) -> Result<crate::revocation::Serial, TlsError> {
    let cert = peer_cert(conn)?;
    crate::revocation::cert_serial(&cert).ok_or(TlsError::NoPeerCertificate)
}

/// Lowercase hex SHA-256 of the peer's end-entity certificate (DER): the fingerprint the
/// partner directory lists, so the broker can tell a re-issued or unlisted certificate
/// from the one the federation registered.
pub fn peer_fingerprint(conn: &impl PeerCertificates) -> Result<String, TlsError> {
    let cert = peer_cert(conn)?;
    Ok(ketenpost_schemas::cert::fingerprint(cert.as_ref()))
}

/// The kernel buffer size asked for on a QUIC endpoint's UDP socket.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` for a QUIC endpoint, with receive and send buffers of
/// [`UDP_BUFFER_BYTES`] (the kernel caps them at `net.core.rmem_max` / `wmem_max`). With
/// the default of about 200 KiB a burst of datagrams on a busy machine overflows the
/// receive buffer, and QUIC recovers the loss only after a probe timeout: single requests
/// then took seconds under load.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(cause = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(cause = %e, "cannot enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on [`udp_socket`]: a server when `server` is given, else a client.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        udp_socket(addr)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load_certs(Path::new("/nonexistent/ketenpost/cert.pem")).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ketenpost/cert.pem"));
    }

    #[test]
    fn a_file_without_certificate_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = temp_file(&dir, "empty.pem", b"just some text\n");
        assert!(matches!(
            load_certs(&empty).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));
        assert!(matches!(
            load_key(&empty).unwrap_err(),
            TlsError::NoPrivateKey { .. }
        ));
    }

    #[test]
    fn broken_pem_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let broken = temp_file(
            &dir,
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certs(&broken).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { .. }), "{err:?}");
        let unterminated = temp_file(&dir, "open.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert!(load_certs(&unterminated).is_err());
    }

    #[test]
    fn a_bad_crl_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = temp_file(&dir, "crl.pem", b"not a crl");
        let err = load_crls(&text).unwrap_err();
        assert!(matches!(err, TlsError::BadCrl { .. }), "{err:?}");
        assert!(err.to_string().contains("crl.pem"));
        let der_garbage = temp_file(&dir, "crl.der", &[0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            load_crls(&der_garbage).unwrap_err(),
            TlsError::BadCrl { .. }
        ));
        let pem_garbage = temp_file(
            &dir,
            "crl2.pem",
            b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
        );
        assert!(matches!(
            load_crls(&pem_garbage).unwrap_err(),
            TlsError::BadCrl { .. }
        ));
    }

    #[test]
    fn transport_limits_are_sane() {
        assert!(KEEP_ALIVE_INTERVAL < IDLE_TIMEOUT);
        assert!(CONNECTION_RECEIVE_WINDOW as usize > ketenpost_schemas::protocol::MAX_REQUEST);
    }
}
