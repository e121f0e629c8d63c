//! The broker server: QUIC with mTLS, one task per connection, one request per stream.
//!
//! [`Broker::start`] loads and verifies the federation's documents, opens the store and
//! the audit trail, binds the endpoint and spawns the accept loop and the timers
//! (checkpoints, expiry and retention sweeps). [`Broker::shutdown`] stops accepting,
//! lets in-flight requests finish (bounded), writes a last checkpoint and flushes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use ketenpost_schemas::control::{
    DeadlineNotice, DeletionOrder, DeletionReason, ExpiryNotice, SignedRecord,
};
use ketenpost_schemas::directory::{self, Directory};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol::{
    AcceptFlag, CheckpointWire, Documents, RejectCode, Rejection, Request, Response, MAX_REQUEST,
};
use tokio::sync::{watch, Notify, RwLock};
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::audit::{AuditEntry, AuditEvent, AuditTrail};
use crate::config::BrokerConfig;
use crate::store::{DeletionState, PutTicket, Store, StoreError};
use ketenpost_core::breach::{self as breach_routing, FlowHistory};
use ketenpost_core::checks::{self, Authorised, ControlEffect, Env, Submitted};
use ketenpost_core::deadlines::{self, AnswerClock, Reply};
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Registry;
use ketenpost_core::registry::{Case, Consent, Lookup, Unknown};
use ketenpost_transport::tls;

pub use ketenpost_schemas::control::BROKER_SIGNER;

/// How long deletion orders give a party to delete.
const DELETE_WITHIN_DAYS: i64 = 7;

struct Shared {
    policy: Policy,
    directory: Directory,
    documents: Documents,
    limits: Limits,
    config: BrokerConfig,
    store: Store,
    audit: Arc<AuditTrail>,
    key: SigningKey,
    signer: Oin,
    /// Submits hold it shared while they check and write; control records exclusively, so
    /// a check never reads a case or consent that changes under it.
    registry_lock: RwLock<()>,
    /// The parties' verifying keys, parsed once.
    sender_keys: checks::SenderKeys,
    waiters: Mutex<HashMap<Oin, Arc<Notify>>>,
}

impl Shared {
    fn env(&self) -> Env<'_> {
        Env {
            policy: &self.policy,
            directory: &self.directory,
            limits: &self.limits,
            keys: Some(&self.sender_keys),
        }
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
        if let Err(e) = self.audit.append(entry, Utc::now()) {
            error!(cause = %e, "audit append failed");
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
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("addr", &self.addr).finish()
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Broker {
    /// Load everything, bind, and start serving.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        let f = &config.federation;
        let fed_key = keys::verifying_key_from_text(&read_text(&f.public_key)?)
            .context("federation public key")?;
        let policy_bytes = read(&f.policy)?;
        let policy_sig = read_text(&f.policy_sig)?;
        let policy = directory::load_signed_policy(&fed_key, &policy_bytes, &policy_sig)
            .context("the policy is not validly signed by the federation key")?;
        let dir_bytes = read(&f.directory)?;
        let dir_sig = read_text(&f.directory_sig)?;
        let directory = directory::load_signed_directory(&fed_key, &dir_bytes, &dir_sig, &policy)
            .context("the directory is not validly signed by the federation key")?;
        let key = keys::signing_key_from_text(&read_text(&f.signing_key)?)
            .context("broker signing key")?;
        if directory.broker_key().ok() != Some(key.verifying_key()) {
            anyhow::bail!("the broker signing key does not match the directory's broker key");
        }
        let documents = Documents {
            policy: String::from_utf8(policy_bytes).context("policy is not UTF-8")?,
            policy_sig,
            directory: String::from_utf8(dir_bytes).context("directory is not UTF-8")?,
            directory_sig: dir_sig,
        };

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

        let server_config =
            tls::server_config_with_streams(&config.tls, config.limits.max_streams_per_connection)?;
        let endpoint = tls::endpoint(config.listen, Some(server_config))
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = endpoint.local_addr()?;

        let limits = Limits {
            max_envelope: config.limits.max_envelope_bytes,
            ..Limits::default()
        };
        let signer: Oin = BROKER_SIGNER.parse()?;
        let sender_keys = checks::sender_keys(&directory);
        let shared = Arc::new(Shared {
            policy,
            directory,
            documents,
            limits,
            config,
            store,
            audit,
            key,
            signer,
            registry_lock: RwLock::new(()),
            sender_keys,
            waiters: Mutex::new(HashMap::new()),
        });
        shared.audit(AuditEntry::ok(AuditEvent::BrokerStarted));
        info!(%addr, covenant = %shared.policy.covenant.id, parties = shared.directory.parties.len(), "broker listening");

        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(endpoint, shared.clone(), rx));
        Ok(Broker {
            addr,
            shared,
            shutdown: tx,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

    /// Run until `signal` completes, then shut down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        info!("shutting down");
        self.shutdown().await;
    }
}

async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut checkpoint = tokio::time::interval(Duration::from_secs(
        shared.config.timers.checkpoint_interval_secs,
    ));
    let mut sweep = tokio::time::interval(Duration::from_secs(
        shared.config.timers.sweep_interval_secs,
    ));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if connections.len() >= shared.config.limits.max_connections {
                    warn!("connection limit reached, refusing a connection");
                    incoming.refuse();
                    continue;
                }
                let shared = shared.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    if let Err(e) = connection(incoming, shared, stop).await {
                        debug!(cause = %e, "connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = checkpoint.tick() => make_checkpoint(&shared).await,
            _ = sweep.tick() => {
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || sweep_once(&s, Utc::now())).await;
            }
        }
    }
    // Shutdown: stop accepting, give in-flight requests a moment, then close.
    endpoint.set_server_config(None);
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
    shared.audit(AuditEntry::ok(AuditEvent::BrokerStopped));
    make_checkpoint(&shared).await;
    if let Err(e) = shared.store.flush() {
        error!(cause = %e, "final flush failed");
    }
    info!(group_commits = shared.store.flush_count(), "broker stopped");
}

async fn make_checkpoint(shared: &Arc<Shared>) {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || s.audit.checkpoint(Utc::now())).await {
        Ok(Ok(cp)) => debug!(seq = cp.seq, "audit checkpoint"),
        Ok(Err(e)) => error!(cause = %e, "audit checkpoint failed"),
        Err(e) => error!(cause = %e, "audit checkpoint task failed"),
    }
}

async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let oin = match tls::peer_oin(&conn) {
        Ok(oin) => oin,
        Err(e) => {
            warn!(cause = %e, "client certificate carries no usable OIN");
            conn.close(1u32.into(), b"no OIN in certificate");
            return Ok(());
        }
    };
    let Some(party) = shared.directory.active_party(&oin) else {
        warn!(%oin, "connection from a party that is not active in the directory");
        conn.close(2u32.into(), b"not an active party");
        return Ok(());
    };
    let fingerprint = tls::peer_fingerprint(&conn).unwrap_or_default();
    if !party.cert_fingerprint.is_empty() && party.cert_fingerprint != fingerprint {
        warn!(%oin, "client certificate is not the one the directory lists");
        conn.close(3u32.into(), b"certificate not in directory");
        return Ok(());
    }
    let span = info_span!("connection", %oin, remote = %conn.remote_address());
    async move {
        info!("partner connected");
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => {
                        let shared = shared.clone();
                        let oin = oin.clone();
                        streams.spawn(async move {
                            if let Err(e) = stream(send, recv, &shared, &oin).await {
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

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Arc<Shared>,
    oin: &Oin,
) -> anyhow::Result<()> {
    let limit = MAX_REQUEST.min(shared.config.limits.max_envelope_bytes + 1024);
    let bytes = match tokio::time::timeout(shared.config.request_timeout(), recv.read_to_end(limit))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            let r = Rejection::new(
                RejectCode::Malformed,
                format!("request is over the limit of {limit} bytes"),
            );
            shared.audit(AuditEntry::refused(AuditEvent::Rejected, r.code.as_str()).actor(oin));
            send.write_all(&Response::Rejected(r).encode()).await?;
            send.finish()?;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            let _ = send.reset(1u32.into());
            return Ok(());
        }
    };
    let response = match Request::decode(&bytes) {
        Ok(req) => handle(req, shared, oin).await,
        Err(e) => Response::Rejected(Rejection::new(RejectCode::Malformed, e.to_string())),
    };
    send.write_all(&response.encode()).await?;
    send.finish()?;
    Ok(())
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
        Request::GetDocuments => Response::Documents(shared.documents.clone()),
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

fn rejected_entry(r: &Rejection, oin: &Oin, bytes: &[u8], limits: &Limits) -> AuditEntry {
    let mut e = AuditEntry::refused(AuditEvent::Rejected, r.code.as_str()).actor(oin);
    // What the header claims, when it parses: typed values only (ids, kind), never content.
    if let Ok(h) = ketenpost_schemas::envelope::Envelope::decode(bytes, limits)
        .and_then(|env| env.unverified_header())
    {
        e = e
            .kind(h.kind)
            .case_ref(&h.case_ref)
            .message_id(h.id)
            .trace_id(h.trace_id)
            .counterparties(h.recipients.iter());
        if let Some(p) = shared_purpose(&h.purpose) {
            e = e.purpose(p);
        }
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

/// What a submission staged in the store, to be committed and answered.
struct Staged {
    id: ketenpost_schemas::ids::MessageId,
    kind: ketenpost_schemas::kind::Kind,
    flags: Vec<AcceptFlag>,
    recipients: std::collections::BTreeSet<Oin>,
    /// Something was written after the message's own flushed transaction.
    needs_commit: bool,
}

async fn submit(bytes: Vec<u8>, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = Utc::now();
    let guard = shared.registry_lock.read().await;
    // The checks and the start of the write (appending the body to the spool) run on a
    // blocking thread; the store's writer thread writes and flushes the message with the
    // rest of its batch, and the submission waits for that here without holding a thread.
    // The registry lock stays held until the message landed, so no consent withdrawal or
    // case change falls between its checks and its write.
    let (s, o) = (shared.clone(), oin.clone());
    let begun = tokio::task::spawn_blocking(move || {
        let authorised = stage_check(&bytes, &s, &o, now)?;
        let (ticket, new_clock) = stage_write(&authorised, &bytes, &s, &o, now)?;
        Ok((authorised, bytes, ticket, new_clock))
    })
    .await;
    let (authorised, bytes, ticket, new_clock) = match begun {
        Ok(Ok(begun)) => begun,
        Ok(Err(response)) => return response,
        Err(e) => return submit_task_failed(&e),
    };
    // The rest runs in its own task, so that it completes (the answer bookkeeping, or
    // forgetting the clock of a write that failed) even when the connection goes.
    let (s, o) = (shared.clone(), oin.clone());
    let finish = tokio::spawn(async move {
        if let Err(e) = ticket.landed().await {
            if new_clock {
                if let Err(e) = s.store.forget_clock(&authorised.header().id) {
                    error!(cause = %e, "cannot forget the answer clock of a message not accepted");
                }
            }
            return Err(put_failed(e, &authorised, &s, &o, &bytes));
        }
        if authorised.header().in_reply_to.is_none() {
            return Ok(Staged::of(&authorised, false));
        }
        tokio::task::spawn_blocking(move || stage_answer(&authorised, &s, &o, now))
            .await
            .map_err(|e| submit_task_failed(&e))
    });
    let staged = match finish.await {
        Ok(Ok(staged)) => staged,
        Ok(Err(response)) => return response,
        Err(e) => return submit_task_failed(&e),
    };
    drop(guard);
    if staged.needs_commit {
        if let Err(e) = shared.store.commit().await {
            return storage_error(e);
        }
    }
    for r in &staged.recipients {
        shared.notify(r);
    }
    debug!(kind = %staged.kind, recipients = staged.recipients.len(), flags = ?staged.flags, "message accepted");
    Response::Accepted {
        message_id: staged.id,
        flags: staged.flags,
    }
}

/// The checks of a submission; blocking (see [`submit`]). The caller holds the registry
/// lock shared.
fn stage_check(
    bytes: &[u8],
    shared: &Arc<Shared>,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<Authorised, Response> {
    match checks::check_message(
        Submitted {
            transport: oin,
            bytes,
        },
        shared.env(),
        &shared.live(),
        now,
    ) {
        Ok(a) => Ok(a),
        Err(r) => {
            info!(code = %r.code, check = r.check, "message rejected");
            shared.audit(rejected_entry(&r, oin, bytes, &shared.limits));
            Err(Response::Rejected(r))
        }
    }
}

fn submit_task_failed(e: &tokio::task::JoinError) -> Response {
    error!(cause = %e, "submit task failed");
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not store this; nothing was accepted, try again",
    ))
}

impl Staged {
    fn of(authorised: &Authorised, needs_commit: bool) -> Staged {
        let h = authorised.header();
        Staged {
            id: h.id,
            kind: h.kind,
            flags: authorised.flags.clone(),
            recipients: authorised
                .recipients
                .iter()
                .map(|(o, _)| o.clone())
                .collect(),
            needs_commit,
        }
    }
}

/// Start the store write of an authorised submission with its audit records; blocking
/// (see [`submit`]). Returns the write's ticket and whether an answer clock was started
/// for it (to forget when the write fails). The caller holds the registry lock shared.
fn stage_write(
    authorised: &Authorised,
    bytes: &[u8],
    shared: &Arc<Shared>,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<(PutTicket, bool), Response> {
    let meta = MessageMeta::accepted(authorised, now);
    // The answer clock goes in before the message, so no delivery can precede it.
    let clock = shared
        .policy
        .rule(&authorised.header().purpose, authorised.header().kind)
        .and_then(|rule| AnswerClock::start(&meta, rule));
    let new_clock = match &clock {
        Some(c) => match shared.store.start_clock(c) {
            Ok(new) => new,
            Err(e) => return Err(storage_error(e)),
        },
        None => false,
    };
    let entries = accepted_entries(authorised, &meta.recipients, oin);
    match shared
        .store
        .begin_put(authorised, &meta, &shared.audit, entries)
    {
        Ok(ticket) => Ok((ticket, new_clock)),
        Err(e) => {
            if new_clock {
                if let Err(e) = shared.store.forget_clock(&authorised.header().id) {
                    error!(cause = %e, "cannot forget the answer clock of a message not accepted");
                }
            }
            Err(put_failed(e, authorised, shared, oin, bytes))
        }
    }
}

/// The bookkeeping of an answer whose message landed: the clock of the message it
/// answers, and a late answer's audit record; blocking. That write still needs a commit
/// before `accepted` ([`Staged::needs_commit`]).
fn stage_answer(
    authorised: &Authorised,
    shared: &Arc<Shared>,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Staged {
    let answer = match shared.store.record_answer(
        Reply {
            id: authorised.header().id,
            sender: oin,
            kind: authorised.header().kind,
            in_reply_to: authorised.header().in_reply_to,
        },
        now,
        &shared.policy.calendar,
    ) {
        Ok(a) => a,
        Err(e) => {
            // The message is stored; only the answer bookkeeping failed. A notice may follow
            // that should not have; that is logged, not a reason to refuse the message.
            error!(cause = %e, "cannot record an answer");
            None
        }
    };
    if let Some(a) = answer.as_ref().filter(|a| a.answer.late) {
        // A late answer: recorded against the message it answers.
        shared.audit(
            about_message(
                AuditEntry::flagged(AuditEvent::DeadlineLate, "answer_late"),
                authorised,
                oin,
            )
            .message_id(a.answered)
            .counterparty(&a.answer.owed_to),
        );
    }
    Staged::of(authorised, answer.is_some())
}

fn put_failed(
    e: StoreError,
    authorised: &Authorised,
    shared: &Arc<Shared>,
    oin: &Oin,
    bytes: &[u8],
) -> Response {
    match e {
        StoreError::Duplicate => {
            let r = Rejection::new(
                RejectCode::Replay,
                format!("message id {} was accepted before", authorised.header().id),
            );
            shared.audit(rejected_entry(&r, oin, bytes, &shared.limits));
            Response::Rejected(r)
        }
        e => storage_error(e),
    }
}

/// `entry` about a message `oin` sent: the sender, case, purpose, processing activity,
/// kind and trace id.
fn about_message(entry: AuditEntry, authorised: &Authorised, oin: &Oin) -> AuditEntry {
    let h = authorised.header();
    entry
        .actor(oin)
        .case_ref(&h.case_ref)
        .purpose(&h.purpose)
        .processing_activity(&authorised.processing_activity)
        .kind(h.kind)
        .trace_id(h.trace_id)
}

/// The audit records of accepting a message, written with it.
fn accepted_entries(
    authorised: &Authorised,
    recipients: &std::collections::BTreeSet<Oin>,
    oin: &Oin,
) -> Vec<AuditEntry> {
    let h = authorised.header();
    let base = |entry: AuditEntry| {
        about_message(entry, authorised, oin)
            .message_id(h.id)
            .counterparties(recipients.iter())
    };
    let mut entries = vec![base(AuditEntry::ok(AuditEvent::Accepted))];
    if let Some(ground) = authorised.ground {
        entries.push(base(AuditEntry::flagged(
            AuditEvent::NonConsentUse,
            ground.as_str(),
        )));
    }
    if authorised.flags.contains(&AcceptFlag::Late) {
        entries.push(base(AuditEntry::flagged(
            AuditEvent::DeadlineLate,
            "late_on_arrival",
        )));
    }
    if let Some(routing) = &authorised.breach {
        // One record per affected case, naming every party concerned, so the breach shows
        // in each case's access report and in the report of each party's FG.
        for case in &routing.cases {
            entries.push(
                AuditEntry::ok(AuditEvent::BreachNotice)
                    .actor(oin)
                    .case_ref(case)
                    .purpose(&h.purpose)
                    .processing_activity(&authorised.processing_activity)
                    .kind(h.kind)
                    .message_id(h.id)
                    .trace_id(h.trace_id)
                    .counterparties(recipients.iter())
                    .reason("routed_to_parties_concerned"),
            );
        }
    }
    entries
}

async fn fetch(shared: &Arc<Shared>, oin: &Oin, max: u16, wait_ms: u32) -> Response {
    let max = usize::from(max.clamp(1, shared.config.limits.max_fetch));
    let wait = Duration::from_millis(u64::from(wait_ms).min(30_000));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notify = shared.waiter(oin);
        let notified = notify.notified();
        match shared.store.fetch(oin, max) {
            Ok((items, first)) => {
                if !first.is_empty() {
                    let now = Utc::now();
                    let entries: Vec<AuditEntry> = first
                        .iter()
                        .map(|m| {
                            AuditEntry::ok(AuditEvent::Delivered)
                                .actor(oin)
                                .case_ref(&m.case_ref)
                                .purpose(&m.purpose)
                                .kind(m.kind)
                                .message_id(m.id)
                                .counterparty(&m.sender)
                        })
                        .collect();
                    if let Err(e) = shared.audit.append_batch(entries, now) {
                        error!(cause = %e, "audit append failed");
                    }
                }
                if !items.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Response::Deliveries(items);
                }
            }
            Err(e) => return storage_error(e),
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Response::Deliveries(Vec::new());
        }
    }
}

async fn receipt(rec: &SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let r = match checks::check_receipt(oin, rec, shared.env()) {
        Ok(r) => r,
        Err(rej) => {
            shared.audit(AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str()).actor(oin));
            return Response::Rejected(rej);
        }
    };
    let outcome = match shared
        .store
        .receipt(oin, &r.message_id, &r.body_sha256, rec)
    {
        Ok(Some(o)) => o,
        Ok(None) => {
            let rej = Rejection::new(
                RejectCode::Conflict,
                format!(
                    "message {} is not queued for {oin} with that body digest",
                    r.message_id
                ),
            );
            shared.audit(
                AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str())
                    .actor(oin)
                    .message_id(r.message_id),
            );
            return Response::Rejected(rej);
        }
        Err(e) => return storage_error(e),
    };
    let m = &outcome.meta;
    let now = Utc::now();
    // Delivered: the recipient's signed receipt says it stored the message. Its answer
    // clock starts here.
    if shared
        .policy
        .rule(&m.purpose, m.kind)
        .is_some_and(|r| r.answer_within.is_some())
    {
        if let Err(e) = shared.store.record_delivery(&m.id, oin, now) {
            error!(cause = %e, "cannot start an answer clock");
        }
    }
    let mut entries = vec![AuditEntry::ok(AuditEvent::Receipt)
        .actor(oin)
        .case_ref(&m.case_ref)
        .purpose(&m.purpose)
        .kind(m.kind)
        .message_id(m.id)
        .counterparty(&m.sender)];
    if outcome.body_deleted {
        entries.push(
            AuditEntry::ok(AuditEvent::BodyDeleted)
                .case_ref(&m.case_ref)
                .kind(m.kind)
                .message_id(m.id)
                .reason("all_receipted"),
        );
    }
    if let Err(e) = shared.audit.append_batch(entries, now) {
        error!(cause = %e, "audit append failed");
    }
    if let Err(e) = shared.store.commit().await {
        return storage_error(e);
    }
    shared.notify(&m.sender);
    Response::Done
}

async fn control(rec: &SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = Utc::now();
    let _guard = shared.registry_lock.write().await;
    let store = &shared.store;
    let pending = |order: &uuid::Uuid, party: &Oin| matches!(store.deletion(order, party), Ok(Some(d)) if d.confirmed_at.is_none());
    let effect = match checks::check_control(oin, rec, shared.env(), store, pending, now) {
        Ok(e) => e,
        Err(r) => {
            info!(code = %r.code, kind = %rec.kind, "control record refused");
            let event = match rec.kind {
                ketenpost_schemas::kind::Kind::Toestemming => AuditEvent::ConsentGranted,
                ketenpost_schemas::kind::Kind::ToestemmingIntrekking => {
                    AuditEvent::ConsentWithdrawn
                }
                ketenpost_schemas::kind::Kind::DeletionConfirmation => {
                    AuditEvent::DeletionConfirmed
                }
                _ => AuditEvent::CaseOpened,
            };
            shared.audit(
                AuditEntry::refused(event, r.code.as_str())
                    .actor(oin)
                    .kind(rec.kind),
            );
            return Response::Rejected(r);
        }
    };
    let result = apply_control(&effect, shared, oin, now);
    if let Err(e) = result {
        return storage_error(e);
    }
    if let Err(e) = shared.store.commit().await {
        return storage_error(e);
    }
    Response::Done
}

fn apply_control(
    effect: &ControlEffect,
    shared: &Shared,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let store = &shared.store;
    let purpose_of = |p: &str| {
        shared
            .policy
            .purposes
            .get(p)
            .map(|p| p.processing_activity.clone())
            .unwrap_or_default()
    };
    let entry = match effect {
        ControlEffect::CaseOpened(case) => {
            store.put_case(case)?;
            AuditEntry::ok(AuditEvent::CaseOpened)
                .case_ref(&case.case_ref)
                .purpose(&case.purpose)
                .processing_activity(purpose_of(&case.purpose))
        }
        ControlEffect::CaseChanged { case, change } => {
            store.put_case(case)?;
            use ketenpost_schemas::control::CaseOp;
            let (event, other) = match &change.change {
                CaseOp::AddMember { oin, .. } => (AuditEvent::CaseMemberAdded, Some(oin)),
                CaseOp::RemoveMember { oin } => (AuditEvent::CaseMemberRemoved, Some(oin)),
                CaseOp::Close | CaseOp::Open { .. } => (AuditEvent::CaseClosed, None),
            };
            let mut e = AuditEntry::ok(event)
                .case_ref(&case.case_ref)
                .purpose(&case.purpose)
                .processing_activity(purpose_of(&case.purpose));
            if let Some(o) = other {
                e = e.counterparty(o);
            }
            e
        }
        ControlEffect::ConsentGranted(c) => {
            store.put_consent(c)?;
            AuditEntry::ok(AuditEvent::ConsentGranted)
                .case_ref(&c.record.case_ref)
                .purpose(&c.record.purpose)
                .processing_activity(purpose_of(&c.record.purpose))
                .message_id(c.record.consent_id)
                .counterparties(c.record.parties.iter())
        }
        ControlEffect::ConsentWithdrawn(c) => {
            store.put_consent(c)?;
            AuditEntry::ok(AuditEvent::ConsentWithdrawn)
                .case_ref(&c.record.case_ref)
                .purpose(&c.record.purpose)
                .processing_activity(purpose_of(&c.record.purpose))
                .message_id(c.record.consent_id)
        }
        ControlEffect::DeletionConfirmed(conf) => {
            if let Some(mut d) = store.deletion(&conf.order_id, &conf.party)? {
                d.confirmed_at = Some(now);
                store.put_deletion(&d)?;
            }
            AuditEntry::ok(AuditEvent::DeletionConfirmed)
                .case_ref(&conf.case_ref)
                .message_id(conf.order_id)
        }
    };
    shared.audit(entry.actor(oin));
    Ok(())
}

/// One sweep: expire undelivered bodies, and order deletions for cases whose retention ended.
fn sweep_once(shared: &Shared, now: DateTime<Utc>) {
    match shared.store.expire(now) {
        Ok(expired) => {
            for m in expired {
                let mut entries = Vec::new();
                for r in &m.pending {
                    entries.push(
                        AuditEntry::flagged(AuditEvent::Expired, "undelivered_ttl")
                            .actor(&m.sender)
                            .case_ref(&m.case_ref)
                            .purpose(&m.purpose)
                            .kind(m.kind)
                            .message_id(m.id)
                            .counterparty(r),
                    );
                    let notice = ExpiryNotice {
                        message_id: m.id,
                        recipient: r.clone(),
                        expired_at: now,
                    };
                    match SignedRecord::sign(&notice, shared.signer.clone(), &shared.key) {
                        Ok(rec) => {
                            if let Err(e) = shared.store.push_notice(&m.sender, &rec) {
                                error!(cause = %e, "cannot queue expiry notice");
                            }
                        }
                        Err(e) => error!(cause = %e, "cannot sign expiry notice"),
                    }
                }
                entries.push(
                    AuditEntry::ok(AuditEvent::BodyDeleted)
                        .case_ref(&m.case_ref)
                        .kind(m.kind)
                        .message_id(m.id)
                        .reason("expired"),
                );
                if let Err(e) = shared.audit.append_batch(entries, now) {
                    error!(cause = %e, "audit append failed");
                }
                if let Err(e) = shared.store.drop_undelivered(&m.id, &m.pending) {
                    error!(cause = %e, "cannot update the answer clock of an expired message");
                }
                shared.notify(&m.sender);
                info!(message = %m.id, "undelivered message expired");
            }
        }
        Err(e) => error!(cause = %e, "expiry sweep failed"),
    }
    if let Err(e) = send_deadline_notices(shared, now) {
        error!(cause = %e, "deadline sweep failed");
    }
    if let Err(e) = order_deletions(shared, now) {
        error!(cause = %e, "retention sweep failed");
    }
    if let Err(e) = shared.store.flush() {
        error!(cause = %e, "flush after sweep failed");
    }
}

/// Send the deadline notices that are due: one per (message, party that owes an answer),
/// to that party, the message's sender and the case's regievoerder, each exactly once.
fn send_deadline_notices(shared: &Shared, now: DateTime<Utc>) -> Result<(), StoreError> {
    let calendar = &shared.policy.calendar;
    for mut clock in shared.store.clocks()? {
        if clock.overdue(calendar, now).is_empty() {
            continue;
        }
        let regievoerder = shared
            .store
            .get_case(&clock.case_ref)?
            .map(|c| c.regievoerder);
        let due = deadlines::take_due(&mut clock, calendar, now, regievoerder.as_ref());
        if due.is_empty() {
            continue;
        }
        let mut batch = Vec::with_capacity(due.len());
        for d in due {
            let notice = DeadlineNotice {
                message_id: clock.message_id,
                case_ref: clock.case_ref.clone(),
                kind: clock.kind,
                owed_by: d.owed_by.clone(),
                deadline: d.deadline,
                issued_at: now,
            };
            match SignedRecord::sign(&notice, shared.signer.clone(), &shared.key) {
                Ok(rec) => {
                    let records = d.to.iter().map(|p| (p.clone(), rec.clone())).collect();
                    batch.push((d, records));
                }
                Err(e) => error!(cause = %e, "cannot sign a deadline notice"),
            }
        }
        let sent = shared
            .store
            .send_due_notices(&clock.message_id, &batch, now)?;
        let activity = shared
            .policy
            .purposes
            .get(&clock.purpose)
            .map(|p| p.processing_activity.clone());
        let mut entries = Vec::new();
        for (d, _) in sent.iter().filter_map(|i| batch.get(*i)) {
            let base = |e: AuditEntry| {
                let e = e
                    .case_ref(&clock.case_ref)
                    .purpose(&clock.purpose)
                    .kind(clock.kind)
                    .message_id(clock.message_id);
                match &activity {
                    Some(a) => e.processing_activity(a),
                    None => e,
                }
            };
            entries.push(
                base(AuditEntry::flagged(
                    AuditEvent::DeadlineLate,
                    "answer_overdue",
                ))
                .actor(&d.owed_by)
                .counterparty(&clock.sender),
            );
            entries.push(
                base(AuditEntry::ok(AuditEvent::DeadlineNotice))
                    .counterparties(d.to.iter())
                    .reason("answer_overdue"),
            );
            for p in &d.to {
                shared.notify(p);
            }
            info!(message = %clock.message_id, owed_by = %d.owed_by, "answer overdue: deadline notice sent");
        }
        if !entries.is_empty() {
            if let Err(e) = shared.audit.append_batch(entries, now) {
                error!(cause = %e, "audit append failed");
            }
        }
    }
    Ok(())
}

fn order_deletions(shared: &Shared, now: DateTime<Utc>) -> Result<(), StoreError> {
    for mut case in shared.store.cases()? {
        let (Some(closed), None) = (case.closed_at, case.deletion_ordered_at) else {
            continue;
        };
        let Some(purpose) = shared.policy.purposes.get(&case.purpose) else {
            continue;
        };
        if purpose
            .case_retention
            .deadline(closed, &shared.policy.calendar)
            > now
        {
            continue;
        }
        let order_id = uuid::Uuid::now_v7();
        for party in case.all_parties() {
            let order = DeletionOrder {
                order_id,
                case_ref: case.case_ref.clone(),
                reason: DeletionReason::RetentionEnded,
                party: party.clone(),
                issued_at: now,
                delete_by: now + chrono::Duration::days(DELETE_WITHIN_DAYS),
            };
            let rec = match SignedRecord::sign(&order, shared.signer.clone(), &shared.key) {
                Ok(r) => r,
                Err(e) => {
                    error!(cause = %e, "cannot sign deletion order");
                    continue;
                }
            };
            shared.store.put_deletion(&DeletionState {
                order,
                confirmed_at: None,
            })?;
            shared.store.push_notice(&party, &rec)?;
            shared.audit(
                AuditEntry::ok(AuditEvent::DeletionOrdered)
                    .case_ref(&case.case_ref)
                    .purpose(&case.purpose)
                    .processing_activity(&purpose.processing_activity)
                    .message_id(order_id)
                    .counterparty(&party)
                    .reason("retention_ended"),
            );
            shared.notify(&party);
        }
        case.deletion_ordered_at = Some(now);
        shared.store.put_case(&case)?;
        shared.store.forget_clocks_of_case(&case.case_ref)?;
        info!(case = %case.case_ref, "case retention ended: deletion orders sent");
    }
    Ok(())
}
