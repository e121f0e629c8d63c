//! The connection to the broker: one client shared by every task, made on first use and
//! made again after it failed.
//!
//! The client is a QUIC connection or, where UDP is blocked, a pool of TLS-over-TCP
//! connections (`broker.transport`, [`TransportMode`]). With `auto` every (re)connect tries
//! QUIC first, for at most [`AUTO_QUIC_WAIT`], and falls back to TCP when that fails,
//! logging a warning each time it does.
//!
//! Requests run concurrently ([`Client::request`]). A request that fails because the
//! connection is gone drops the client, so the next request connects again (and, with
//! `auto`, gives QUIC another chance); the callers (the loops in the `sync` module) back
//! off between attempts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_transport::client::{Client, Transport, CONNECT_TIMEOUT};
use ketenpost_transport::tls::{ClientTls, TcpClientConfig};
use tokio::sync::Mutex;

use crate::config::{BrokerSection, TransportMode};
use crate::Error;

/// How long `auto` waits for a QUIC handshake before it tries TCP. A QUIC handshake takes
/// one round trip; this leaves room for a lost packet or two, and where UDP is silently
/// dropped it is what every (re)connect costs before the fallback.
pub const AUTO_QUIC_WAIT: Duration = Duration::from_secs(3);

/// The agent's side of the broker connection.
pub struct BrokerLink {
    /// `host:port` of the QUIC endpoint, resolved at every connect (a broker may move).
    address: String,
    /// `host:port` of the TLS-over-TCP listener, if the broker has one.
    tcp_address: Option<String>,
    /// QUIC, TCP, or QUIC falling back to TCP.
    mode: TransportMode,
    /// The name the broker's certificate must carry.
    server_name: String,
    /// The QUIC + mTLS client configuration, built once from the certificate files.
    quic: quinn::ClientConfig,
    /// The same rustls configuration for TLS over TCP.
    tcp: TcpClientConfig,
    /// The live connection, if any. Locked only to read or replace it (and while
    /// connecting, so concurrent callers wait for one handshake instead of racing).
    client: Mutex<Option<(u64, Client)>>,
    /// Numbers connections, so a failed request drops only the connection it used.
    generation: AtomicU64,
    /// Whether the last attempt succeeded, for the health endpoint.
    connected: AtomicBool,
    /// The transport of the last connection made: 0 none, 1 QUIC, 2 TCP.
    transport: AtomicU8,
    /// `generation` as it was while on the connection whose broker refused `Receipts` (a
    /// broker from before it); 0 when none did.
    receipts_refused_on: AtomicU64,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("address", &self.address)
            .field("tcp_address", &self.tcp_address)
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| Error::io(format!("cannot resolve {address}"), e))?
        .next()
        .ok_or_else(|| {
            Error::io(
                format!("cannot resolve {address}"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
}

impl BrokerLink {
    /// Build the link; the TLS files are read here (a bad file is a configuration error).
    pub fn new(broker: &BrokerSection, tls: &ClientTls) -> Result<Self, Error> {
        let tls_error = |e: ketenpost_transport::tls::TlsError| Error::Config {
            path: tls.cert.clone(),
            message: format!("TLS: {e}"),
        };
        let quic = ketenpost_transport::tls::client_config(tls).map_err(tls_error)?;
        let tcp = ketenpost_transport::tls::tcp_client_config(tls).map_err(tls_error)?;
        Ok(BrokerLink {
            address: broker.address.clone(),
            tcp_address: broker.tcp_address.clone(),
            mode: broker.transport,
            server_name: broker.server_name.clone(),
            quic,
            tcp,
            client: Mutex::new(None),
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            transport: AtomicU8::new(0),
            receipts_refused_on: AtomicU64::new(0),
        })
    }

    /// Whether the agent currently has a connection that worked.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The transport of the connection while there is one that worked.
    pub fn transport(&self) -> Option<Transport> {
        if !self.is_connected() {
            return None;
        }
        match self.transport.load(Ordering::Relaxed) {
            1 => Some(Transport::Quic),
            2 => Some(Transport::Tcp),
            _ => None,
        }
    }

    async fn connect_quic(&self, wait: Duration) -> Result<Client, Error> {
        let addr = resolve(&self.address).await?;
        Ok(Client::connect_within(addr, &self.server_name, self.quic.clone(), wait).await?)
    }

    async fn connect_tcp(&self, address: &str) -> Result<Client, Error> {
        let addr = resolve(address).await?;
        Ok(Client::connect_tcp_with(addr, &self.server_name, self.tcp.clone()).await?)
    }

    /// A new client by the configured transport.
    async fn connect(&self) -> Result<Client, Error> {
        match (self.mode, self.tcp_address.as_deref()) {
            (TransportMode::Tcp, Some(tcp)) => self.connect_tcp(tcp).await,
            // The configuration check refuses `tcp` without an address; QUIC is all there is.
            (TransportMode::Tcp, None) | (TransportMode::Quic, _) | (TransportMode::Auto, None) => {
                self.connect_quic(CONNECT_TIMEOUT).await
            }
            (TransportMode::Auto, Some(tcp)) => match self.connect_quic(AUTO_QUIC_WAIT).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    tracing::warn!(
                        quic = %self.address,
                        tcp = %tcp,
                        cause = %e,
                        "QUIC to the broker failed; using TCP"
                    );
                    self.connect_tcp(tcp).await
                }
            },
        }
    }

    async fn client(&self) -> Result<(u64, Client), Error> {
        let mut slot = self.client.lock().await;
        if let Some((generation, c)) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok((*generation, c.clone()));
            }
        }
        *slot = None;
        match self.connect().await {
            Ok(c) => {
                tracing::info!(transport = %c.transport(), "connected to the broker");
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                let code = match c.transport() {
                    Transport::Quic => 1,
                    Transport::Tcp => 2,
                };
                self.transport.store(code, Ordering::Relaxed);
                *slot = Some((generation, c.clone()));
                Ok((generation, c))
            }
            Err(e) => {
                self.connected.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Note that the broker of the current connection refused a `Receipts` request as one
    /// it does not know: until the agent connects again, it sends receipts alone
    /// ([`BrokerLink::receipts_refused`]). Noted against the latest connection: when that
    /// was replaced since the refusal, the new one sends receipts alone until it too is
    /// replaced, which costs requests, not receipts.
    pub fn note_receipts_refused(&self) {
        self.receipts_refused_on
            .store(self.generation.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether the broker of the current connection refused `Receipts`
    /// ([`BrokerLink::note_receipts_refused`]).
    pub fn receipts_refused(&self) -> bool {
        let on = self.receipts_refused_on.load(Ordering::Relaxed);
        on != 0 && on == self.generation.load(Ordering::Relaxed)
    }

    /// Send one request, connecting first if needed.
    pub async fn request(&self, req: &Request, timeout: Duration) -> Result<Response, Error> {
        let (generation, client) = self.client().await?;
        match client.request(req, timeout).await {
            Ok(resp) => {
                self.connected.store(true, Ordering::Relaxed);
                Ok(resp)
            }
            Err(e) => {
                if client.close_reason().is_some() || e.is_connection_lost() {
                    self.connected.store(false, Ordering::Relaxed);
                    let mut slot = self.client.lock().await;
                    if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                        *slot = None;
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Close the connection, if any (clean shutdown).
    pub async fn close(&self) {
        let taken = self.client.lock().await.take();
        if let Some((_, c)) = taken {
            c.close().await;
        }
        self.connected.store(false, Ordering::Relaxed);
    }
}
