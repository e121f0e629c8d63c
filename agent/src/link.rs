//! The connection to the broker: one QUIC connection shared by every task, made on first
//! use and made again after it failed.
//!
//! Requests run concurrently on their own streams ([`Client::request`]). A request that
//! fails because the connection is gone drops it, so the next request reconnects; the
//! callers (the loops in the `sync` module) back off between attempts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_transport::client::{Client, ClientError};
use ketenpost_transport::tls::ClientTls;
use tokio::sync::Mutex;

use crate::Error;

/// The agent's side of the broker connection.
pub struct BrokerLink {
    /// `host:port`, resolved at every connect (a broker may move).
    address: String,
    /// The name the broker's certificate must carry.
    server_name: String,
    /// The QUIC + mTLS client configuration, built once from the certificate files.
    quic: quinn::ClientConfig,
    /// The live connection, if any. Locked only to read or replace it (and while
    /// connecting, so concurrent callers wait for one handshake instead of racing).
    client: Mutex<Option<(u64, Client)>>,
    /// Numbers connections, so a failed request drops only the connection it used.
    generation: AtomicU64,
    /// Whether the last attempt succeeded, for the health endpoint.
    connected: AtomicBool,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl BrokerLink {
    /// Build the link; the TLS files are read here (a bad file is a configuration error).
    pub fn new(address: String, server_name: String, tls: &ClientTls) -> Result<Self, Error> {
        let quic = ketenpost_transport::tls::client_config(tls).map_err(|e| Error::Config {
            path: tls.cert.clone(),
            message: format!("TLS: {e}"),
        })?;
        Ok(BrokerLink {
            address,
            server_name,
            quic,
            client: Mutex::new(None),
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        })
    }

    /// Whether the agent currently has a connection that worked.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    async fn client(&self) -> Result<(u64, Client), Error> {
        let mut slot = self.client.lock().await;
        if let Some((generation, c)) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok((*generation, c.clone()));
            }
        }
        *slot = None;
        let addr = tokio::net::lookup_host(&self.address)
            .await
            .map_err(|e| Error::io(format!("cannot resolve {}", self.address), e))?
            .next()
            .ok_or_else(|| {
                Error::io(
                    format!("cannot resolve {}", self.address),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
        match Client::connect_with(addr, &self.server_name, self.quic.clone()).await {
            Ok(c) => {
                tracing::info!(broker = %addr, "connected to the broker");
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                *slot = Some((generation, c.clone()));
                Ok((generation, c))
            }
            Err(e) => {
                self.connected.store(false, Ordering::Relaxed);
                Err(e.into())
            }
        }
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
                if client.close_reason().is_some() || matches!(e, ClientError::Connection(_)) {
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
