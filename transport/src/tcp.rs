//! The broker protocol over TLS 1.3 on TCP, for networks that block or throttle UDP.
//!
//! Over QUIC every request has its own stream, and the end of the stream (FIN) marks the
//! end of the request and of the response. A TCP connection is one byte stream, so here
//! every frame ([`Request::encode`](ketenpost_schemas::protocol::Request::encode),
//! [`Response::encode`](ketenpost_schemas::protocol::Response::encode)) is sent as a
//! [`LENGTH_PREFIX`]-byte big-endian length followed by the frame. A connection carries one
//! exchange at a time: the client writes one request frame, the broker answers one response
//! frame, and only then may the next request follow on that connection.
//!
//! Concurrent requests (an agent long-polls a fetch while it submits) each take their own
//! connection from a small pool (at most [`MAX_POOL`] connections): an idle
//! connection when there is one, else a new one. A connection whose exchange failed or was
//! abandoned (a timeout) is dropped, never reused, since its byte stream may be out of step.
//!
//! The TLS configuration is the QUIC one ([`crate::tls`]): TLS 1.3 only, mutual
//! authentication, the same verifier and CRLs on the broker's side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ketenpost_schemas::protocol::{Response, MAX_RESPONSE};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{ClientError, CLOSE_TIMEOUT, CONNECT_TIMEOUT};
use crate::tls::IDLE_TIMEOUT;

/// Bytes of the length that precedes every frame (big-endian `u32`).
pub const LENGTH_PREFIX: usize = 4;

/// Most TLS-over-TCP connections one client holds at once; further concurrent requests wait
/// for one to come free (within their own timeout). Every connection counts against the
/// broker's per-party connection limit (`max_connections_per_party`, 8 by default), so this
/// stays well under it: an agent's long-polled fetch, a submission, a receipt and a control
/// record at once, with room left for the party's CLI and its FG.
pub const MAX_POOL: usize = 4;

/// An idle pooled connection older than this is not reused but closed: the broker closes a
/// connection that carried no request for [`IDLE_TIMEOUT`], and a request must not race that.
pub const POOL_IDLE: Duration = Duration::from_secs(IDLE_TIMEOUT.as_secs() / 2);

/// The length prefix of a frame of `len` bytes; `None` when it does not fit in a `u32`.
pub fn prefix(len: usize) -> Option<[u8; LENGTH_PREFIX]> {
    u32::try_from(len).ok().map(u32::to_be_bytes)
}

/// Write one length-prefixed frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let head = prefix(frame.len())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    // One buffer, so the length and a small frame travel in one TLS record.
    let mut out = Vec::with_capacity(LENGTH_PREFIX + frame.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(frame);
    w.write_all(&out).await?;
    w.flush().await
}

/// Read a frame's length prefix. `Ok(None)` when the peer closed the connection cleanly
/// before the first byte of it (no exchange was in progress).
pub async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<usize>> {
    let mut head = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    // A u32 always fits in usize on the 32- and 64-bit targets the workspace builds for.
    Ok(Some(
        usize::try_from(u32::from_be_bytes(head)).unwrap_or(usize::MAX),
    ))
}

/// One request/response exchange on a connection: the request frame out, the response
/// frame in. A response announced over [`MAX_RESPONSE`] is refused before any of it is
/// read; the buffer grows only as bytes arrive.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    frame: &[u8],
) -> Result<Response, ClientError> {
    write_frame(stream, frame)
        .await
        .map_err(ClientError::TcpLost)?;
    let len = read_prefix(stream)
        .await
        .map_err(ClientError::TcpLost)?
        .ok_or_else(|| ClientError::TcpLost(std::io::ErrorKind::UnexpectedEof.into()))?;
    if len > MAX_RESPONSE {
        return Err(ClientError::TooLarge {
            limit: MAX_RESPONSE,
        });
    }
    let mut bytes = Vec::new();
    // `len` is at most MAX_RESPONSE, which fits in a u64.
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    (&mut *stream)
        .take(want)
        .read_to_end(&mut bytes)
        .await
        .map_err(ClientError::TcpLost)?;
    if bytes.len() != len {
        return Err(ClientError::TcpLost(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    Response::decode(&bytes).map_err(ClientError::Decode)
}

/// An idle connection and since when it is idle.
struct Idle {
    stream: TlsStream<TcpStream>,
    since: Instant,
}

/// The client's TLS-over-TCP connections to one broker address.
pub(crate) struct Pool {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    /// Connections between exchanges, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// One permit per connection in an exchange. A connection is opened only when none is
    /// idle, so in use and idle together stay at most [`MAX_POOL`].
    slots: Arc<Semaphore>,
    /// Set by [`Pool::close`]: no more requests, no connection goes back to `idle`.
    closed: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `addr`, whose certificate must be valid for `server_name`, with one
    /// connection made (so a broker that cannot be reached fails here, as a QUIC connect does).
    pub(crate) async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Pool, ClientError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::ServerName(server_name.to_owned()))?;
        let pool = Pool {
            addr,
            server_name,
            connector: TlsConnector::from(config),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(MAX_POOL)),
            closed: AtomicBool::new(false),
        };
        let first = pool.open().await?;
        pool.put_back(first);
        tracing::debug!(broker = %addr, "connected to broker over TCP");
        Ok(pool)
    }

    /// A new connection: TCP connect and TLS handshake, at most `CONNECT_TIMEOUT`.
    async fn open(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let handshake = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(ClientError::TcpConnect)?;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
            }
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(ClientError::TcpConnect)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: "connect",
                after: CONNECT_TIMEOUT,
            }),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Pushing and popping cannot leave the list inconsistent; keep using it after a panic.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is young enough; older ones are dropped.
    fn take_idle(&self) -> Option<TlsStream<TcpStream>> {
        let mut idle = self.idle();
        idle.retain(|i| i.since.elapsed() < POOL_IDLE);
        idle.pop().map(|i| i.stream)
    }

    fn put_back(&self, stream: TlsStream<TcpStream>) {
        if !self.closed.load(Ordering::Acquire) {
            self.idle().push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// One exchange on a connection of the pool. Waits for a free slot when [`MAX_POOL`]
    /// connections are busy. A connection goes back to the pool only after a complete
    /// exchange; when this future is dropped (a timeout), its connection is dropped with it.
    pub(crate) async fn request(&self, frame: &[u8]) -> Result<Response, ClientError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut stream = match self.take_idle() {
            Some(s) => s,
            None => self.open().await?,
        };
        let result = exchange(&mut stream, frame).await;
        // After a decoded (or undecodable but whole) response the stream is in step.
        if matches!(result, Ok(_) | Err(ClientError::Decode(_))) {
            self.put_back(stream);
        }
        result
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Refuse further requests, and close the idle connections (TLS close_notify), waiting at
    /// most [`CLOSE_TIMEOUT`]. Connections in an exchange are dropped when it ends.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        let idle: Vec<Idle> = std::mem::take(&mut *self.idle());
        let shut = async {
            for mut i in idle {
                let _ = i.stream.shutdown().await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, shut).await.is_err() {
            tracing::debug!("TCP connections did not close before the close timeout");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ketenpost_schemas::protocol::Response;

    #[tokio::test]
    async fn a_frame_is_its_length_then_its_bytes() {
        let mut out = Vec::new();
        write_frame(&mut out, b"abc").await.unwrap();
        assert_eq!(out, [0, 0, 0, 3, b'a', b'b', b'c']);
        let mut rd = &out[..];
        assert_eq!(read_prefix(&mut rd).await.unwrap(), Some(3));
        let mut empty: &[u8] = &[];
        assert_eq!(read_prefix(&mut empty).await.unwrap(), None);
        let mut cut: &[u8] = &[0, 0];
        assert!(read_prefix(&mut cut).await.is_err());
    }

    #[tokio::test]
    async fn a_response_over_the_bound_is_refused_unread() {
        // A duplex pipe: the "broker" announces a response one byte over the bound.
        let (mut client, mut broker) = tokio::io::duplex(1024);
        let answer = tokio::spawn(async move {
            let len = read_prefix(&mut broker).await.unwrap().unwrap();
            let mut req = vec![0; len];
            broker.read_exact(&mut req).await.unwrap();
            let over = prefix(MAX_RESPONSE + 1).unwrap();
            broker.write_all(&over).await.unwrap();
            broker
        });
        let err = exchange(&mut client, b"\x01\x05").await.unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
        drop(answer.await.unwrap());
    }

    #[tokio::test]
    async fn a_whole_response_is_decoded() {
        let (mut client, mut broker) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let len = read_prefix(&mut broker).await.unwrap().unwrap();
            let mut req = vec![0; len];
            broker.read_exact(&mut req).await.unwrap();
            write_frame(&mut broker, &Response::Done.encode())
                .await
                .unwrap();
            // A cut response: the length promises more than comes.
            let _ = read_prefix(&mut broker).await;
            broker.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        });
        assert_eq!(exchange(&mut client, b"x").await.unwrap(), Response::Done);
        let err = exchange(&mut client, b"y").await.unwrap_err();
        assert!(matches!(err, ClientError::TcpLost(_)), "{err:?}");
    }
}
