//! The TLS-over-TCP side of the broker, for partners whose network blocks UDP: the same
//! rustls configuration as QUIC (verifier, CRLs, TLS 1.3 only), the same handshake
//! admission, connection checks and request path ([`super::exchange`]), with
//! length-prefixed frames ([`ketenpost_transport::tcp`]) and one exchange at a time per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use ketenpost_transport::client::Transport;
use ketenpost_transport::tcp::{read_prefix, write_frame};
use ketenpost_transport::tls::IDLE_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use super::exchange::{admit, request, Admitted, RequestIo};
use super::state::Shared;

/// How long the broker waits for a partner to take a closing connection's close_notify.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Run the TLS handshake of an accepted TCP connection (holding its handshake `slot`,
/// within the handshake timeout), then serve it.
pub(super) async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    slot: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(cause = %e, "cannot set TCP_NODELAY");
    }
    let deadline = shared.config.handshake_timeout();
    let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(cause = %e, %remote, "TCP handshake failed");
            return;
        }
        Err(_) => {
            debug!(%remote, "TCP handshake not completed within its deadline");
            return;
        }
    };
    drop(slot);
    connection(tls, remote, shared, stop).await;
}

/// Serve an established TLS-over-TCP connection: one request after the other, until the
/// partner leaves, the connection is idle for [`IDLE_TIMEOUT`], a request leaves it out of
/// step, or the broker stops.
async fn connection(
    mut tls: TlsStream<TcpStream>,
    remote: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let Admitted {
        oin,
        guard,
        identity,
    } = match admit(&shared, &tls, Transport::Tcp).await {
        Ok(admitted) => admitted,
        Err(_) => {
            let _ = tokio::time::timeout(CLOSE_WAIT, tls.shutdown()).await;
            return;
        }
    };
    let span = info_span!("connection", %oin, %remote, transport = "tcp");
    let mut docs_changed = shared.docs_version.subscribe();
    async move {
        info!("partner connected");
        loop {
            let len = tokio::select! {
                _ = stop.changed() => break,
                Ok(()) = docs_changed.changed() => {
                    // New documents: a party revoked, a certificate replaced or listed in a
                    // CRL loses its connection now.
                    if let Err(refusal) = identity.check(&shared) {
                        warn!(reason = ?refusal, "the new federation documents no longer admit this connection; closing it");
                        break;
                    }
                    continue;
                }
                len = tokio::time::timeout(IDLE_TIMEOUT, read_prefix(&mut tls)) => match len {
                    Ok(Ok(Some(len))) => len,
                    Ok(Ok(None)) => {
                        debug!("partner disconnected");
                        break;
                    }
                    Ok(Err(e)) => {
                        debug!(cause = %e, "partner disconnected");
                        break;
                    }
                    Err(_) => {
                        debug!("connection idle; closing it");
                        break;
                    }
                },
            };
            if let Err(refusal) = identity.check(&shared) {
                // E.g. a rotation's overlap for this certificate ended.
                warn!(reason = ?refusal, "the federation documents no longer admit this connection; closing it");
                break;
            }
            let mut io = TcpIo {
                stream: &mut tls,
                len,
                remaining: len,
                in_step: true,
            };
            if let Err(e) = request(&mut io, &shared, &oin, &guard, identity.caller).await {
                debug!(cause = %e, "request failed");
                break;
            }
            if !io.in_step || !io.skip_rest(&shared).await {
                break;
            }
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, tls.shutdown()).await;
    }
    .instrument(span)
    .await
}

/// One length-prefixed request frame on a connection.
struct TcpIo<'a> {
    stream: &'a mut TlsStream<TcpStream>,
    /// The frame's length, as its prefix announced it.
    len: usize,
    /// Bytes of the frame not read yet.
    remaining: usize,
    /// False once the exchange was abandoned: the byte stream is no longer at a frame
    /// boundary, so the connection cannot carry another request.
    in_step: bool,
}

impl TcpIo<'_> {
    /// After a refused request, discard what the partner still sends of it (without keeping
    /// or counting it against any budget), so the connection stays at a frame boundary:
    /// at most the largest request, within the request timeout. False when the connection
    /// must be closed instead.
    async fn skip_rest(&mut self, shared: &Shared) -> bool {
        if self.remaining == 0 {
            return true;
        }
        if self.remaining > shared.config.largest_request() {
            debug!("refused request too large to skip; closing the connection");
            return false;
        }
        let want = u64::try_from(self.remaining).unwrap_or(u64::MAX);
        let mut rest = (&mut *self.stream).take(want);
        let mut sink = tokio::io::sink();
        let skip = tokio::io::copy(&mut rest, &mut sink);
        match tokio::time::timeout(shared.config.request_timeout(), skip).await {
            Ok(Ok(n)) if n == want => {
                self.remaining = 0;
                true
            }
            _ => false,
        }
    }
}

impl RequestIo for TcpIo<'_> {
    fn announced(&self) -> Option<usize> {
        Some(self.len)
    }

    async fn read(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
        let want = want.min(self.remaining);
        if want == 0 {
            return Ok(0);
        }
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = match self.stream.read(&mut buf[start..]).await {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(start);
                self.in_step = false;
                return Err(e);
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            self.in_step = false;
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.remaining -= n;
        Ok(n)
    }

    fn refuse_rest(&mut self, _code: u32) {
        // The rest is skipped after the answer ([`TcpIo::skip_rest`]): the partner writes
        // its whole frame before it reads the answer.
    }

    fn abandon(&mut self) {
        self.in_step = false;
    }

    async fn respond(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if let Err(e) = write_frame(self.stream, frame).await {
            self.in_step = false;
            return Err(e.into());
        }
        Ok(())
    }
}
