//! The client side of the broker protocol, for agents and tests.
//!
//! A [`Client`] is one authenticated QUIC connection to the broker. Every
//! [`Client::request`] opens its own bidirectional stream, writes one request frame,
//! finishes its side and reads the broker's one response frame to the end, bounded by
//! [`MAX_RESPONSE`] (see [`ketenpost_schemas::protocol`]). Requests on one client run
//! concurrently, up to the broker's stream limit.
//!
//! In TLS 1.3 the client finishes its handshake before the broker has checked the client
//! certificate, so a certificate the broker refuses (foreign, expired, revoked) may only
//! show as a [`ClientError::Connection`] on the first request, not on [`Client::connect`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ketenpost_schemas::protocol::{Request, Response, MAX_RESPONSE};
use quinn::{ReadError, ReadToEndError, VarInt, WriteError};

use crate::tls::{self, ClientTls, TlsError};

/// How long [`Client::connect`] waits for the QUIC and TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::close`] waits for the connection to drain.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration could not be built from the certificate files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be bound.
    #[error("cannot bind a local UDP socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The connection could not be started (e.g. an invalid server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection was lost: the broker refused the certificate,
    /// the broker's certificate did not verify, the broker went away or closed the connection.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The connect or the request did not complete in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for: `"connect"` or `"request"`.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The broker reset the response stream, or stopped reading the request, with this
    /// application error code.
    #[error("broker reset the stream (code {code})")]
    StreamReset {
        /// The code the broker gave.
        code: VarInt,
    },
    /// The stream was closed locally before the exchange completed. Not expected; reported
    /// rather than assumed away.
    #[error("stream closed before the exchange completed")]
    StreamClosed,
    /// The response was larger than [`MAX_RESPONSE`]; it was not read further.
    #[error("response exceeds {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
    /// The response frame does not decode.
    #[error("undecodable response: {0}")]
    Decode(#[source] ketenpost_schemas::Error),
}

impl From<WriteError> for ClientError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Stopped(code) => ClientError::StreamReset { code },
            WriteError::ConnectionLost(e) => ClientError::Connection(e),
            WriteError::ClosedStream | WriteError::ZeroRttRejected => ClientError::StreamClosed,
        }
    }
}

impl From<ReadToEndError> for ClientError {
    fn from(err: ReadToEndError) -> Self {
        match err {
            ReadToEndError::TooLong => ClientError::TooLarge {
                limit: MAX_RESPONSE,
            },
            ReadToEndError::Read(ReadError::Reset(code)) => ClientError::StreamReset { code },
            ReadToEndError::Read(ReadError::ConnectionLost(e)) => ClientError::Connection(e),
            ReadToEndError::Read(
                ReadError::ClosedStream
                | ReadError::IllegalOrderedRead
                | ReadError::ZeroRttRejected,
            ) => ClientError::StreamClosed,
        }
    }
}

/// A connection to the broker, authenticated with the organisation's client certificate.
///
/// Cheap to clone: clones share the connection, and [`Client::close`] on any of them closes
/// it for all.
#[derive(Clone, Debug)]
pub struct Client {
    /// Kept so [`Client::close`] can wait for the connection to drain; the endpoint owns
    /// the UDP socket.
    endpoint: quinn::Endpoint,
    /// The connection every request opens its stream on.
    conn: quinn::Connection,
}

impl Client {
    /// Connect to the broker at `broker_addr`, verifying its certificate for `server_name`
    /// against the CA of `tls` and presenting the organisation's certificate. Waits at most
    /// [`CONNECT_TIMEOUT`].
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
        let bind: SocketAddr = match broker_addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = crate::tls::endpoint(bind, None).map_err(ClientError::Bind)?;
        let connecting = endpoint.connect_with(config, broker_addr, server_name)?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                tracing::debug!(broker = %broker_addr, cause = %err, "connect failed");
                return Err(err.into());
            }
            Err(_) => {
                endpoint.close(VarInt::from_u32(0), b"connect timeout");
                return Err(ClientError::Timeout {
                    what: "connect",
                    after: CONNECT_TIMEOUT,
                });
            }
        };
        tracing::debug!(broker = %broker_addr, "connected to broker");
        Ok(Client { endpoint, conn })
    }

    /// Send one request and wait for its response, for at most `timeout` in all. A
    /// long-polled `Fetch` needs a `timeout` longer than its `wait_ms`.
    ///
    /// A timeout abandons the stream (the broker sees it stopped); the connection stays
    /// usable for further requests.
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
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(&req.encode()).await?;
        send.finish().map_err(|_| ClientError::StreamClosed)?;
        let bytes = recv.read_to_end(MAX_RESPONSE).await?;
        Response::decode(&bytes).map_err(ClientError::Decode)
    }

    /// The underlying connection (for its statistics, the broker's address, or waiting on
    /// [`quinn::Connection::closed`]).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }

    /// Close the connection (application code 0) and wait, at most [`CLOSE_TIMEOUT`], for
    /// the close to reach the broker. Closes it for every clone of this client.
    pub async fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"bye");
        if tokio::time::timeout(CLOSE_TIMEOUT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("endpoint did not become idle before the close timeout");
        }
    }
}
