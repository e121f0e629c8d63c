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
//! | [`limits`] | per-party admission |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self};
use ketenpost_schemas::protocol::{
    AcceptFlag, CheckpointWire, RejectCode, Rejection, Request, Response,
};
use tokio::sync::{watch, Notify, RwLock};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::audit::{AuditEntry, AuditEvent, AuditTrail};
use crate::config::BrokerConfig;
use crate::store::{Applied, NoticeSigner, PutTicket, Store, StoreError, TxResult, TxView};
use ketenpost_core::breach::{self as breach_routing, FlowHistory};
use ketenpost_core::checks::{self, Authorised, ControlEffect, Submitted};
use ketenpost_core::clock::{SharedClock, SystemClock};
use ketenpost_core::deadlines::AnswerClock;
use ketenpost_core::effects::Effects;
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Registry;
use ketenpost_core::registry::{Case, Consent, Lookup, Unknown};
use ketenpost_core::transitions;
use ketenpost_transport::tls;

pub use ketenpost_schemas::control::BROKER_SIGNER;

mod access;
mod alerting;
mod exchange;
mod fg;
pub mod limits;
mod metrics_http;
mod quic;
mod records;
mod submit;
mod sweep;
mod tcp;

use limits::{Admission, Refused};

use records::{control, fetch, receipt};
use submit::submit;
use sweep::sweep_once;

struct Shared {
    /// The federation documents in force; replaced whole by a reload.
    docs: std::sync::RwLock<Arc<crate::documents::Documents>>,
    /// The pinned federation key the documents are verified against.
    federation_key: keys::VerifyingKey,
    /// Bumped after every reload that changed the documents: connections re-check their
    /// party against the new set.
    docs_version: watch::Sender<u64>,
    /// The digest of the last set a reload refused, so a refusal is audited once.
    docs_refused: Mutex<Option<String>>,
    /// The endpoint, to put a new TLS configuration (new CRLs) in force; taken at
    /// shutdown so nothing keeps the socket open.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// The TLS-over-TCP acceptor in force (with the CRLs in force), when TCP is on.
    tcp_acceptor: Mutex<Option<tokio_rustls::TlsAcceptor>>,
    limits: Limits,
    config: BrokerConfig,
    store: Store,
    audit: Arc<AuditTrail>,
    /// Signs the broker's own notices.
    notice_signer: NoticeSigner,
    /// Where every `now` comes from.
    clock: SharedClock,
    /// Submits hold it shared while they check and write; control records exclusively, so
    /// a check never reads a case or consent that changes under it.
    registry_lock: RwLock<()>,
    waiters: Mutex<HashMap<Oin, Arc<Notify>>>,
    /// What each party holds of the broker (connections, requests, buffered bytes).
    admission: Arc<Admission>,
    /// Request counters for the metrics.
    counters: crate::metrics::Counters,
    /// False once the broker is shutting down (`/readyz`).
    ready: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The federation documents in force now.
    fn docs(&self) -> Arc<crate::documents::Documents> {
        match self.docs.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How far ahead of `now` an `event_time` may lie.
    fn max_clock_skew(&self) -> chrono::Duration {
        // At most a day (the config check), so this cannot overflow.
        chrono::Duration::seconds(
            i64::try_from(self.config.limits.max_clock_skew_secs).unwrap_or(86_400),
        )
    }

    fn notify(&self, party: &Oin) {
        if let Ok(map) = self.waiters.lock() {
            if let Some(n) = map.get(party) {
                n.notify_waiters();
            }
        }
    }

    fn waiter(&self, party: &Oin) -> Arc<Notify> {
        match self.waiters.lock() {
            Ok(mut map) => map.entry(party.clone()).or_default().clone(),
            Err(_) => Arc::new(Notify::new()),
        }
    }

    fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(entry, self.clock.now()) {
            error!(cause = %e, "audit append failed");
        }
    }

    /// Audit a party's refusal for a limit, once per episode.
    fn over_limit(&self, party: &Oin, refused: Refused) {
        self.counters.limit(refused.limit.as_str());
        if refused.new_episode {
            warn!(%party, limit = refused.limit.as_str(), "party over a limit; refusing it until it is back under");
            self.audit(
                AuditEntry::refused(AuditEvent::LimitExceeded, refused.limit.as_str()).actor(party),
            );
        }
    }

    fn live(&self) -> Live<'_> {
        Live {
            store: &self.store,
            audit: &self.audit,
        }
    }
}

/// The registry the checks read in a running broker: cases, consents and the dedup set
/// from the store, past flows (for breach routing) from the audit trail.
struct Live<'a> {
    store: &'a Store,
    audit: &'a AuditTrail,
}

impl Registry for Live<'_> {
    fn case(&self, case_ref: &ketenpost_schemas::ids::CaseRef) -> Lookup<Case> {
        self.store.case(case_ref)
    }
    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent> {
        self.store.consent(id)
    }
    fn seen(&self, id: &ketenpost_schemas::ids::MessageId) -> Result<bool, Unknown> {
        self.store.seen(id)
    }
    fn flows_since(&self, from: DateTime<Utc>) -> FlowHistory {
        match self.audit.records_between(from, DateTime::<Utc>::MAX_UTC) {
            Ok(records) => FlowHistory::Flows(breach_routing::flows_from_records(&records)),
            Err(e) => {
                error!(cause = %e, "cannot read the flow history for a breach notice");
                FlowHistory::Unavailable
            }
        }
    }
}

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
        let db = sled::Config::new()
            .path(config.data_dir.join("broker.sled"))
            .flush_every_ms(None)
            .cache_capacity(config.limits.cache_mb.saturating_mul(1024 * 1024))
            .open()
            .context("cannot open the broker's database")?;
        let store = Store::open(db.clone(), &config.data_dir.join("spool"))?;
        let audit = Arc::new(AuditTrail::open(&db, key.clone())?);

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
        });
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
        // Every task is gone; close the store so the database lock is released when the
        // last handle drops, here.
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
    if shared.store.poison().check().is_ok() {
        shared.audit(AuditEntry::ok(AuditEvent::BrokerStopped));
        make_checkpoint(&shared).await;
        if let Err(e) = shared.store.flush() {
            error!(cause = %e, "final flush failed");
        }
    }
    info!(group_commits = shared.store.flush_count(), "broker stopped");
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

async fn handle(req: Request, shared: &Arc<Shared>, oin: &Oin) -> Response {
    match req {
        Request::Submit(bytes) => submit(bytes, shared, oin).await,
        Request::Fetch { max, wait_ms } => fetch(shared, oin, max, wait_ms).await,
        Request::Receipt(rec) => receipt(&rec, shared, oin).await,
        Request::Control(rec) => control(&rec, shared, oin).await,
        Request::Ack { up_to } => match shared.store.ack_notices(oin, up_to) {
            Ok(_) => Response::Done,
            Err(e) => storage_error(e),
        },
        Request::GetDocuments => Response::Documents(shared.docs().raw.clone()),
        Request::AccessFacts(q) => access::facts(q, shared, oin).await,
        // Answered for FG certificates only (`exchange::request`); never reaches here.
        Request::FgRead(_) => Response::Rejected(Rejection::new(
            RejectCode::NotPermitted,
            "FG reports need an FG certificate the directory lists",
        )),
        Request::GetCheckpoint => match shared.audit.latest_checkpoint() {
            Ok(cp) => Response::Checkpoint(cp.map(|c| CheckpointWire {
                seq: c.seq,
                head_hash: c.head_hash.clone(),
                time: c.time_text(),
                signature: c.signature.clone(),
            })),
            Err(e) => Response::Error {
                code: "audit".into(),
                message: e.to_string(),
            },
        },
        Request::ProveExtends { seq, hash } => match shared.audit.prove_extends(seq, &hash) {
            Ok(b) => Response::Extends(b),
            Err(e) => Response::Error {
                code: "audit".into(),
                message: e.to_string(),
            },
        },
    }
}

fn storage_error(e: StoreError) -> Response {
    error!(cause = %e, "storage error");
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not store this; nothing was accepted, try again",
    ))
}

/// The audit record of a refused submission. Before the sender's signature verified,
/// nothing the header claims is recorded (any party could name another's case or
/// partners): only the connection's OIN, the reason and a digest of the bytes. After it,
/// the verified header's typed values (ids, kind, recipients), never content.
fn rejected_entry(
    r: &Rejection,
    oin: &Oin,
    bytes: &[u8],
    verified: Option<&ketenpost_schemas::envelope::Header>,
) -> AuditEntry {
    let e = AuditEntry::refused(AuditEvent::Rejected, r.code.as_str()).actor(oin);
    let Some(h) = verified else {
        return e.request_digest(bytes);
    };
    let mut e = e
        .kind(h.kind)
        .case_ref(&h.case_ref)
        .message_id(h.id)
        .trace_id(h.trace_id)
        .counterparties(h.recipients.iter());
    if let Some(p) = shared_purpose(&h.purpose) {
        e = e.purpose(p);
    }
    e
}

/// A purpose id from a header is only recorded when it is a plain identifier.
fn shared_purpose(p: &str) -> Option<&str> {
    (p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(p)
}
