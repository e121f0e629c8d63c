//! The broker server: QUIC with mTLS, one task per connection, one request per stream;
//! optionally the same protocol over TLS 1.3 on TCP (`[tcp] listen`), for partners whose
//! network blocks UDP.
//!
//! [`Broker::start`] loads and verifies the federation's documents, opens the store and
//! the audit trail, binds the endpoint (and the TCP listener) and spawns the accept loop
//! and the timers (checkpoints, expiry and retention sweeps). [`Broker::shutdown`] stops
//! accepting, lets in-flight requests finish (bounded), writes a last checkpoint and
//! flushes.
//!
//! | module | what it holds |
//! |---|---|
//! | `exchange` | what both transports share: the connection checks, a request from its bytes to its counted answer |
//! | `quic` | QUIC connections: one request per stream |
//! | `tcp` | TLS-over-TCP connections: length-prefixed frames, one exchange at a time |
//! | `state` | the state every connection, request and timer shares, and the registry the checks read |
//! | [`limits`] | per-party admission |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self};
use tokio::sync::{watch, RwLock};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::audit::{AuditEntry, AuditEvent, AuditTrail};
use crate::config::BrokerConfig;
use crate::store::{NoticeSigner, Store, StoreError};
use ketenpost_core::clock::{SharedClock, SystemClock};
use ketenpost_transport::tls;

pub use ketenpost_schemas::control::BROKER_SIGNER;

mod access;
mod alerting;
mod archiver;
mod exchange;
mod fg;
pub mod limits;
mod metrics_http;
mod quic;
mod records;
mod state;
mod submit;
mod sweep;
mod tcp;

use limits::Admission;
use state::Shared;
use sweep::sweep_once;

/// A running broker.
pub struct Broker {
    addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Reloads the federation documents of a running broker (see [`Broker::reloader`]).
#[derive(Clone)]
pub struct Reloader {
    /// Weak, so a reloader kept by a signal handler does not hold the broker open.
    shared: std::sync::Weak<Shared>,
}

impl Reloader {
    /// [`Broker::backup`], while [`Broker::run_until`] owns the broker.
    pub async fn backup(
        &self,
        dest: &std::path::Path,
    ) -> Result<crate::store::BackupManifest, crate::store::BackupError> {
        let s = self
            .shared
            .upgrade()
            .ok_or(crate::store::BackupError::Store(StoreError::Closed))?;
        let dest = dest.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let m = s.store.backup(&s.audit, &dest, s.now());
            (m, s)
        })
        .await;
        match result {
            Ok((Ok(m), s)) => {
                info!(
                    audit_seq = m.audit_seq,
                    messages = m.messages,
                    "backup written"
                );
                s.audit(AuditEntry::ok(AuditEvent::BackupTaken));
                Ok(m)
            }
            Ok((Err(e), _)) => {
                error!(cause = %e, "backup failed");
                Err(e)
            }
            Err(_) => Err(crate::store::BackupError::Store(StoreError::Closed)),
        }
    }

    /// [`Broker::reload_documents`].
    pub async fn reload(&self) -> Option<u64> {
        let s = self.shared.upgrade()?;
        tokio::task::spawn_blocking(move || reload_documents(&s))
            .await
            .ok()
            .flatten()
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("addr", &self.addr).finish()
    }
}

fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Broker {
    /// Load everything, bind, and start serving, on the system clock.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        Broker::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Broker::start`] with the clock every decision reads `now` from (tests move a
    /// [`ManualClock`](ketenpost_core::clock::ManualClock); the demo runs a scaled one).
    pub async fn start_with_clock(
        config: BrokerConfig,
        clock: SharedClock,
    ) -> anyhow::Result<Broker> {
        let f = &config.federation;
        let federation_key = crate::documents::federation_key(&config)?;
        let docs = crate::documents::load(&config, &federation_key)?;
        let key = keys::signing_key_from_text(&read_text(&f.signing_key)?)
            .context("broker signing key")?;
        if docs.directory.broker_key().ok() != Some(key.verifying_key()) {
            anyhow::bail!("the broker signing key does not match the directory's broker key");
        }

        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
        let db_dir = config.data_dir.join("broker.sled");
        let db = sled::Config::new()
            .path(&db_dir)
            .flush_every_ms(None)
            .cache_capacity(config.limits.cache_mb.saturating_mul(1024 * 1024))
            .open()
            .context("cannot open the broker's database")?;
        let store = Store::open(db.clone(), &db_dir, &config.data_dir.join("spool"))?;
        let audit = Arc::new(AuditTrail::open(
            &db,
            &crate::audit::archive_dir(&config.data_dir),
            key.clone(),
        )?);

        // One rustls configuration (verifier, CRLs) for QUIC and TCP alike.
        let rustls = tls::server_rustls_config(&config.tls)?;
        let server_config =
            tls::quic_server_config(rustls.clone(), config.limits.max_streams_per_connection)?;
        let endpoint = tls::endpoint(config.listen, Some(server_config))
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = endpoint.local_addr()?;
        let tcp = match config.tcp.listen {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen for TLS over TCP on {at}"))?;
                Some(TcpSide {
                    listener,
                    acceptor: tls::tcp_acceptor(rustls),
                })
            }
            None => None,
        };
        let tcp_addr = match &tcp {
            Some(t) => Some(t.listener.local_addr()?),
            None => None,
        };

        let limits = Limits {
            max_envelope: config.limits.max_envelope_bytes,
            ..Limits::default()
        };
        let admission = Admission::new(&config.limits);
        let signer: Oin = BROKER_SIGNER.parse()?;
        let shared = Arc::new(Shared {
            docs: std::sync::RwLock::new(Arc::new(docs)),
            federation_key,
            docs_version: watch::Sender::new(0),
            docs_refused: Mutex::new(None),
            endpoint: Mutex::new(None),
            tcp_acceptor: Mutex::new(tcp.as_ref().map(|t| t.acceptor.clone())),
            limits,
            config,
            store,
            audit,
            notice_signer: NoticeSigner { oin: signer, key },
            clock,
            registry_lock: RwLock::new(()),
            waiters: Mutex::new(HashMap::new()),
            admission,
            counters: crate::metrics::Counters::default(),
            ready: std::sync::atomic::AtomicBool::new(true),
            checks: submit::CheckStage::default(),
        });
        submit::CheckStage::start(&shared).context("cannot start the check threads")?;
        shared.audit(AuditEntry::ok(AuditEvent::BrokerStarted));
        {
            let docs = shared.docs();
            info!(%addr, covenant = %docs.policy.covenant.id, serial = docs.serial(), parties = docs.directory.parties.len(), "broker listening");
        }
        if let Some(at) = tcp_addr {
            info!(addr = %at, "TLS over TCP listening");
        }

        let (tx, rx) = watch::channel(false);
        let mut metrics_addr = None;
        if let Some(at) = shared.config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for metrics on {at}"))?;
            let local = listener.local_addr()?;
            info!(addr = %local, "metrics and health endpoints listening");
            metrics_addr = Some(local);
            tokio::spawn(metrics_http::serve(listener, shared.clone(), rx.clone()));
        }
        if let Ok(mut e) = shared.endpoint.lock() {
            *e = Some(endpoint.clone());
        }
        alerting::init_cursor(&shared)?;
        tokio::spawn(alerting::run(shared.clone(), rx.clone()));
        tokio::spawn(alerting::watch_trail(shared.clone(), rx.clone()));
        tokio::spawn(archiver::run(shared.clone(), rx.clone()));
        let task = tokio::spawn(serve(endpoint, tcp, shared.clone(), rx));
        Ok(Broker {
            addr,
            tcp_addr,
            metrics_addr,
            shared,
            shutdown: tx,
            task,
        })
    }

    /// Read the federation documents again now, as the reload timer does; the serial in
    /// force afterwards when a newer set was put in force. (`ketenpost-broker serve`
    /// calls it on SIGHUP.)
    pub async fn reload_documents(&self) -> Option<u64> {
        self.reloader().reload().await
    }

    /// A handle that reloads the documents while [`Broker::run_until`] owns the broker.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Take a consistent snapshot of the running broker into `dest` (a new or empty
    /// folder); see [`crate::store::BackupManifest`]. Writes wait while it copies.
    pub async fn backup(
        &self,
        dest: &std::path::Path,
    ) -> Result<crate::store::BackupManifest, crate::store::BackupError> {
        self.reloader().backup(dest).await
    }

    /// The serial of the directory in force.
    pub fn document_serial(&self) -> u64 {
        self.shared.docs().serial()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the TLS-over-TCP listener, when it is on (`[tcp] listen`).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The address of the metrics and health endpoints, when they are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Run one expiry and retention sweep as if the time were `now`. The timers do this
    /// every `sweep_interval_secs` with the real time; tests and the demo's shortened
    /// clock call it with a later `now`.
    pub async fn sweep(&self, now: DateTime<Utc>) {
        let s = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || sweep_once(&s, now)).await;
    }

    /// Stop: no new connections, in-flight requests finish (bounded), last checkpoint, flush.
    pub async fn shutdown(self) {
        self.shared
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            error!(cause = %e, "broker task ended abnormally");
        }
        // The check stage too (the serve task stops it; this covers a task that ended
        // abnormally). Every task is gone; close the store so the database lock is
        // released when the last handle drops, here.
        let s = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.checks.stop()).await;
        self.shared.store.close().await;
        let mut shared = self.shared;
        for _ in 0..100 {
            match Arc::try_unwrap(shared) {
                Ok(inner) => {
                    drop(inner);
                    return;
                }
                Err(still) => {
                    shared = still;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        warn!("broker state still referenced after shutdown");
    }

    /// Run until `signal` completes, or until a failed fsync poisons the store; then shut
    /// down. An error when the store was poisoned: the caller exits non-zero, and the next
    /// start recovers from what is on disk.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let poison = self.shared.store.poison().clone();
        let poisoned = tokio::select! {
            () = signal => None,
            cause = poison.wait() => Some(cause),
        };
        match &poisoned {
            None => info!("shutting down"),
            Some(cause) => error!(%cause, "the store is poisoned by a failed fsync: stopping"),
        }
        self.shutdown().await;
        match poisoned {
            None => Ok(()),
            Some(cause) => anyhow::bail!(
                "stopped: a failed fsync poisoned the store ({cause}); nothing written since \
                 it was answered as durable, restart the broker to recover"
            ),
        }
    }
}

/// The TLS-over-TCP listener and the acceptor with the broker's rustls configuration.
struct TcpSide {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// The next TCP connection, or never when TCP is off.
async fn accept_tcp(tcp: Option<&TcpSide>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tcp {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    endpoint: quinn::Endpoint,
    mut tcp: Option<TcpSide>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut checkpoint = tokio::time::interval(Duration::from_secs(
        shared.config.timers.checkpoint_interval_secs,
    ));
    let mut sweep = tokio::time::interval(Duration::from_secs(
        shared.config.timers.sweep_interval_secs,
    ));
    let mut reload = tokio::time::interval(Duration::from_secs(
        shared.config.timers.documents_reload_secs,
    ));
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Identity is unknown until the handshake completes: cap the handshakes in
                // progress, and give each a deadline; per-party limits apply after it.
                let Some(slot) = shared.admission.handshake(incoming.remote_address().ip()) else {
                    debug!("handshake cap or rate reached, refusing a connection attempt");
                    incoming.refuse();
                    continue;
                };
                let shared = shared.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    let deadline = shared.config.handshake_timeout();
                    let conn = match tokio::time::timeout(deadline, incoming).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => {
                            debug!(cause = %e, "handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!("handshake not completed within its deadline");
                            return;
                        }
                    };
                    drop(slot);
                    if let Err(e) = quic::connection(conn, shared, stop).await {
                        debug!(cause = %e, "connection ended");
                    }
                });
            }
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, remote)) => {
                    // The same handshake admission as QUIC's, before any TLS work.
                    let Some(slot) = shared.admission.handshake(remote.ip()) else {
                        debug!("handshake cap or rate reached, refusing a TCP connection");
                        continue;
                    };
                    // The acceptor in force: a reload may have put new CRLs in it.
                    let acceptor = shared.tcp_acceptor.lock().ok().and_then(|a| a.clone());
                    let Some(acceptor) = acceptor else {
                        continue;
                    };
                    connections.spawn(tcp::handshake(
                        stream,
                        remote,
                        acceptor,
                        slot,
                        shared.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause a moment rather than spin.
                    debug!(cause = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = checkpoint.tick() => make_checkpoint(&shared).await,
            _ = sweep.tick() => {
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || sweep_once(&s, s.now())).await;
            }
            _ = reload.tick() => {
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || reload_documents(&s)).await;
            }
        }
    }
    // Shutdown: stop accepting, give in-flight requests a moment, then close.
    if let Ok(mut e) = shared.endpoint.lock() {
        *e = None;
    }
    endpoint.set_server_config(None);
    tcp.take();
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    endpoint.close(0u32.into(), b"broker shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || s.checks.stop()).await;
    if shared.store.poison().check().is_ok() {
        shared.audit(AuditEntry::ok(AuditEvent::BrokerStopped));
        make_checkpoint(&shared).await;
        if let Err(e) = shared.store.flush() {
            error!(cause = %e, "final flush failed");
        }
    }
    let (signatures_alone, signatures_batched) = shared.counters.signatures();
    info!(
        group_commits = shared.store.flush_count(),
        signatures_alone, signatures_batched, "broker stopped"
    );
}

/// Read the federation files again and put a newer valid set in force; see
/// [`crate::documents`]. Returns the serial in force afterwards when it changed anything.
/// A refused set (older, badly signed, another covenant or broker key) keeps the current
/// one; it is logged and audited once per distinct set of files.
fn reload_documents(shared: &Shared) -> Option<u64> {
    use crate::documents::{self, Change};
    let current = shared.docs();
    let digest = match documents::changed(&shared.config, &current) {
        Ok(None) => return None,
        Ok(Some(digest)) => digest,
        Err(e) => {
            warn!(cause = %e, "cannot read the federation documents to reload them");
            return None;
        }
    };
    let refused = |e: documents::DocumentsError, serial: Option<u64>| {
        let mut last = shared
            .docs_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(digest.as_str()) {
            return;
        }
        *last = Some(digest.clone());
        error!(cause = %e, serial_in_force = current.serial(), "refusing the new federation documents; keeping the ones in force");
        let code = match e {
            documents::DocumentsError::Refused(_) => "version_not_newer",
            _ => "invalid_documents",
        };
        let mut entry = AuditEntry::refused(AuditEvent::DocumentsChanged, code);
        if let Some(serial) = serial {
            entry = entry.document_serial(serial);
        }
        shared.audit(entry);
        shared.counters.documents_refused();
    };
    let new = match documents::load(&shared.config, &shared.federation_key) {
        Ok(new) => new,
        Err(e) => {
            refused(e, None);
            return None;
        }
    };
    let change = match current.may_replace(&new) {
        Ok(change) => change,
        Err(e) => {
            refused(e, Some(new.serial()));
            return None;
        }
    };
    if new.revocations != current.revocations || change == Change::Crls {
        let built = tls::server_rustls_config(&shared.config.tls).and_then(|rustls| {
            let quic = tls::quic_server_config(
                rustls.clone(),
                shared.config.limits.max_streams_per_connection,
            )?;
            Ok((quic, tls::tcp_acceptor(rustls)))
        });
        match built {
            Ok((quic, tcp)) => {
                if let Ok(Some(endpoint)) = shared.endpoint.lock().as_deref() {
                    endpoint.set_server_config(Some(quic));
                }
                if let Ok(mut acceptor) = shared.tcp_acceptor.lock() {
                    if acceptor.is_some() {
                        *acceptor = Some(tcp);
                    }
                }
            }
            Err(e) => {
                error!(cause = %e, "cannot build the TLS configuration with the new CRLs; keeping the documents in force");
                return None;
            }
        }
    }
    let serial = new.serial();
    let parties = new.directory.parties.len();
    match shared.docs.write() {
        Ok(mut d) => *d = Arc::new(new),
        Err(p) => *p.into_inner() = Arc::new(new),
    }
    shared.docs_version.send_modify(|v| *v += 1);
    *shared
        .docs_refused
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = None;
    info!(serial, parties, change = ?change, "new federation documents in force");
    shared.audit(
        AuditEntry::ok(AuditEvent::DocumentsChanged)
            .reason(match change {
                Change::Directory => "directory_version",
                Change::Crls => "crl_update",
            })
            .document_serial(serial),
    );
    Some(serial)
}

/// Sign a checkpoint, unless the store is poisoned (no checkpoint may cover records a
/// failed fsync may have lost). A checkpoint whose flush fails poisons the store.
async fn make_checkpoint(shared: &Arc<Shared>) {
    if shared.store.poison().check().is_err() {
        return;
    }
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || s.audit.checkpoint(s.now())).await {
        Ok(Ok(cp)) => debug!(seq = cp.seq, "audit checkpoint"),
        Ok(Err(e @ crate::audit::AuditError::Storage(_))) => shared.store.poison().set(e),
        Ok(Err(e)) => error!(cause = %e, "audit checkpoint failed"),
        Err(e) => error!(cause = %e, "audit checkpoint task failed"),
    }
}
