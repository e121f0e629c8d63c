//! The client's error and its timeouts, shared by both transports ([`crate::client`] over
//! QUIC, [`crate::tcp`] over TLS on TCP); re-exported from [`crate::client`].

use std::time::Duration;

use ketenpost_schemas::protocol::MAX_RESPONSE;
use quinn::{ReadError, ReadToEndError, VarInt, WriteError};

use crate::tls::TlsError;

/// How long [`Client::connect`](crate::client::Client::connect) waits for the QUIC and TLS
/// handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::close`](crate::client::Client::close) waits for the connection to drain.
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
    /// A TLS-over-TCP connection could not be made: the TCP connect failed (nothing
    /// listens, the network refuses it) or the TLS handshake did (the broker's certificate
    /// did not verify, the broker sent an alert).
    #[error("cannot connect over TCP: {0}")]
    TcpConnect(#[source] std::io::Error),
    /// A TLS-over-TCP connection failed during an exchange: the broker refused the client
    /// certificate (a TLS alert, see [`ClientError::tls_alert`]), closed the connection, or
    /// it was lost. The connection is dropped; the next request opens another.
    #[error("TCP connection failed: {0}")]
    TcpLost(#[source] std::io::Error),
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The client was closed ([`Client::close`](crate::client::Client::close)) before or
    /// during the request.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether the connection to the broker is gone or could not be made (rather than this
    /// one request failing): the caller should connect again, after a backoff.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Connection(_)
                | ClientError::TcpConnect(_)
                | ClientError::TcpLost(_)
                | ClientError::Closed
        )
    }

    /// The TLS alert the broker ended the connection with, if that is what happened (a
    /// refused client certificate: `unknown_ca`, `certificate_expired`, ...), on either
    /// transport.
    pub fn tls_alert(&self) -> Option<rustls::AlertDescription> {
        match self {
            ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close)) => {
                // QUIC carries a TLS alert as the crypto error 0x100 + alert.
                let code = u64::from(close.error_code);
                (code & !0xff == 0x100).then(|| rustls::AlertDescription::from((code & 0xff) as u8))
            }
            ClientError::TcpConnect(e) | ClientError::TcpLost(e) => {
                match e.get_ref()?.downcast_ref::<rustls::Error>()? {
                    rustls::Error::AlertReceived(alert) => Some(*alert),
                    _ => None,
                }
            }
            _ => None,
        }
    }
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
