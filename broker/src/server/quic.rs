//! The QUIC side of the broker: one task per connection, one request per bidirectional
//! stream. The checks and the request path are [`super::exchange`]'s.

use std::sync::Arc;
use std::time::Duration;

use ketenpost_transport::client::Transport;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::exchange::{admit, request, Admitted, RequestIo};
use super::state::Shared;

/// Serve an established QUIC connection until the partner leaves or the broker stops.
pub(super) async fn connection(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Admitted {
        oin,
        guard,
        identity,
    } = match admit(&shared, &conn, Transport::Quic).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            conn.close(refusal.code().into(), refusal.reason());
            return Ok(());
        }
    };
    let span = info_span!("connection", %oin, remote = %conn.remote_address(), transport = "quic");
    let mut docs_changed = shared.docs_version.subscribe();
    async move {
        info!("partner connected");
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Ok(()) = docs_changed.changed() => {
                    // New documents: a party revoked, a certificate replaced or listed in a
                    // CRL loses its connection now, not at its next reconnect.
                    if let Err(refusal) = identity.check(&shared) {
                        warn!(reason = ?refusal, "the new federation documents no longer admit this connection; closing it");
                        conn.close(refusal.code().into(), refusal.reason());
                        break;
                    }
                }
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => {
                        if let Err(refusal) = identity.check(&shared) {
                            // E.g. a rotation's overlap for this certificate ended.
                            warn!(reason = ?refusal, "the federation documents no longer admit this connection; closing it");
                            conn.close(refusal.code().into(), refusal.reason());
                            break;
                        }
                        let shared = shared.clone();
                        let oin = oin.clone();
                        let guard = guard.clone();
                        let caller = identity.caller;
                        streams.spawn(async move {
                            let mut io = QuicIo { send, recv };
                            if let Err(e) = request(&mut io, &shared, &oin, &guard, caller).await {
                                debug!(cause = %e, "stream failed");
                            }
                        }.in_current_span());
                    }
                    Err(e) => {
                        debug!(cause = %e, "partner disconnected");
                        break;
                    }
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
            }
        }
        // Let in-flight requests finish their commit and answer.
        let drain = async { while streams.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        Ok(())
    }
    .instrument(span)
    .await
}

/// One request on its own stream: the end of the stream (FIN) ends the request.
struct QuicIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RequestIo for QuicIo {
    fn announced(&self) -> Option<usize> {
        None
    }

    async fn read(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
        loop {
            match self.recv.read_chunk(want, true).await? {
                None => return Ok(0),
                // 0 means the end of the request: an empty chunk is not that.
                Some(chunk) if chunk.bytes.is_empty() => continue,
                Some(chunk) => {
                    buf.extend_from_slice(&chunk.bytes);
                    return Ok(chunk.bytes.len());
                }
            }
        }
    }

    fn refuse_rest(&mut self, code: u32) {
        let _ = self.recv.stop(code.into());
    }

    fn abandon(&mut self) {
        let _ = self.send.reset(1u32.into());
    }

    async fn respond(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(frame).await?;
        self.send.finish()?;
        Ok(())
    }
}
