//! The client side of the broker protocol, for agents and tests.
//!
//! A [`Client`] talks to the broker over one of two transports ([`Transport`]):
//!
//! - **QUIC** ([`Client::connect`]): one authenticated QUIC connection. Every
//!   [`Client::request`] opens its own bidirectional stream, writes one request frame,
//!   finishes its side and reads the broker's one response frame to the end. Requests on
//!   one client run concurrently, up to the broker's stream limit.
//! - **TLS over TCP** ([`Client::connect_tcp`]), for networks that block UDP: length-prefixed
//!   frames, one exchange at a time per connection, a small pool of connections for
//!   concurrent requests (see [`crate::tcp`]).
//!
//! Both read a response bounded by [`MAX_RESPONSE`] (see [`ketenpost_schemas::protocol`]),
//! and both wait at most [`CONNECT_TIMEOUT`] for a connection and the caller's timeout for a
//! request.
//!
//! In TLS 1.3 the client finishes its handshake before the broker has checked the client
//! certificate, so a certificate the broker refuses (foreign, expired, revoked) may only
//! show as an error on the first request ([`ClientError::Connection`] over QUIC,
//! [`ClientError::TcpLost`] over TCP; [`ClientError::tls_alert`] names the alert), not on
//! connect.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ketenpost_schemas::protocol::{Request, Response, MAX_RESPONSE};
use quinn::VarInt;

pub use crate::error::{ClientError, CLOSE_TIMEOUT, CONNECT_TIMEOUT};
use crate::tcp::Pool;
use crate::tls::{self, ClientTls};

/// How a [`Client`] reaches the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP: the broker's `listen` address.
    Quic,
    /// TLS 1.3 over TCP: the broker's `[tcp] listen` address.
    Tcp,
}

impl Transport {
    /// `"quic"` or `"tcp"` (logs, metrics, the agent's health).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection to the broker, authenticated with the organisation's client certificate.
///
/// Cheap to clone: clones share the connection (or the pool of TCP connections), and
/// [`Client::close`] on any of them closes it for all.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Quic {
        /// Kept so [`Client::close`] can wait for the connection to drain; the endpoint
        /// owns the UDP socket.
        endpoint: quinn::Endpoint,
        /// The connection every request opens its stream on.
        conn: quinn::Connection,
    },
    /// The TLS-over-TCP connections, shared by the clones.
    Tcp(Arc<Pool>),
}

impl Client {
    /// Connect to the broker at `broker_addr` over QUIC, verifying its certificate for
    /// `server_name` against the CA of `tls` and presenting the organisation's certificate.
    /// Waits at most [`CONNECT_TIMEOUT`].
    pub async fn connect(
        broker_addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<Client, ClientError> {
        let config = tls::client_config(tls)?;
        Client::connect_with(broker_addr, server_name, config).await
    }

    /// [`Client::connect`] with a ready QUIC client configuration (an agent that keeps its
    /// configuration across reconnects).
    pub async fn connect_with(
        broker_addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<Client, ClientError> {
        Client::connect_within(broker_addr, server_name, config, CONNECT_TIMEOUT).await
    }

    /// [`Client::connect_with`], waiting at most `wait` for the handshake (an agent that
    /// falls back to TCP gives QUIC less time than a connection of its own).
    pub async fn connect_within(
        broker_addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        wait: Duration,
    ) -> Result<Client, ClientError> {
        let bind: SocketAddr = match broker_addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = crate::tls::endpoint(bind, None).map_err(ClientError::Bind)?;
        let connecting = endpoint.connect_with(config, broker_addr, server_name)?;
        let conn = match tokio::time::timeout(wait, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                tracing::debug!(broker = %broker_addr, cause = %err, "connect failed");
                return Err(err.into());
            }
            Err(_) => {
                endpoint.close(VarInt::from_u32(0), b"connect timeout");
                return Err(ClientError::Timeout {
                    what: "connect",
                    after: wait,
                });
            }
        };
        tracing::debug!(broker = %broker_addr, "connected to broker");
        Ok(Client {
            inner: Inner::Quic { endpoint, conn },
        })
    }

    /// Connect to the broker's TLS-over-TCP address `broker_addr`, with the same
    /// certificates as [`Client::connect`]. Makes one connection (at most
    /// [`CONNECT_TIMEOUT`]); further ones are made as concurrent requests need them.
    pub async fn connect_tcp(
        broker_addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<Client, ClientError> {
        let config = tls::tcp_client_config(tls)?;
        Client::connect_tcp_with(broker_addr, server_name, config).await
    }

    /// [`Client::connect_tcp`] with a ready rustls client configuration.
    pub async fn connect_tcp_with(
        broker_addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let pool = Pool::connect(broker_addr, server_name, config).await?;
        Ok(Client {
            inner: Inner::Tcp(Arc::new(pool)),
        })
    }

    /// The transport this client uses.
    pub fn transport(&self) -> Transport {
        match self.inner {
            Inner::Quic { .. } => Transport::Quic,
            Inner::Tcp(_) => Transport::Tcp,
        }
    }

    /// Send one request and wait for its response, for at most `timeout` in all. A
    /// long-polled `Fetch` needs a `timeout` longer than its `wait_ms`.
    ///
    /// A timeout abandons the exchange: over QUIC the broker sees the stream stopped and the
    /// connection stays usable; over TCP that one connection is dropped and the others stay.
    pub async fn request(&self, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: "request",
                after: timeout,
            }),
        }
    }

    async fn exchange(&self, req: &Request) -> Result<Response, ClientError> {
        match &self.inner {
            Inner::Quic { conn, .. } => {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&req.encode()).await?;
                send.finish().map_err(|_| ClientError::StreamClosed)?;
                let bytes = recv.read_to_end(MAX_RESPONSE).await?;
                Response::decode(&bytes).map_err(ClientError::Decode)
            }
            Inner::Tcp(pool) => pool.request(&req.encode()).await,
        }
    }

    /// The underlying QUIC connection (for its statistics, the broker's address, opening
    /// raw streams in tests, or waiting on [`quinn::Connection::closed`]); `None` over TCP.
    pub fn connection(&self) -> Option<&quinn::Connection> {
        match &self.inner {
            Inner::Quic { conn, .. } => Some(conn),
            Inner::Tcp(_) => None,
        }
    }

    /// Why the connection closed, or `None` while it is open. Over TCP, where each request
    /// takes a connection from a pool that reconnects as needed, this is
    /// [`quinn::ConnectionError::LocallyClosed`] once [`Client::close`] was called, and
    /// `None` before.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        match &self.inner {
            Inner::Quic { conn, .. } => conn.close_reason(),
            Inner::Tcp(pool) => pool
                .is_closed()
                .then_some(quinn::ConnectionError::LocallyClosed),
        }
    }

    /// Close the connection (QUIC application code 0; TLS close_notify over TCP) and wait,
    /// at most [`CLOSE_TIMEOUT`], for the close to reach the broker. Closes it for every
    /// clone of this client.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Quic { endpoint, conn } => {
                conn.close(VarInt::from_u32(0), b"bye");
                if tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle())
                    .await
                    .is_err()
                {
                    tracing::debug!("endpoint did not become idle before the close timeout");
                }
            }
            Inner::Tcp(pool) => pool.close().await,
        }
    }
}
