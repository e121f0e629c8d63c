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
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::directory::{self, Directory};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self};
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol::{
    AcceptFlag, CheckpointWire, Documents, RejectCode, Rejection, Request, Response, MAX_REQUEST,
};
use tokio::sync::{watch, Notify, RwLock};
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::audit::{AuditEntry, AuditEvent, AuditTrail};
use crate::config::BrokerConfig;
use crate::store::{Applied, NoticeSigner, PutTicket, Store, StoreError, TxResult, TxView};
use ketenpost_core::breach::{self as breach_routing, FlowHistory};
use ketenpost_core::checks::{self, Authorised, ControlEffect, Env, Submitted};
use ketenpost_core::clock::{SharedClock, SystemClock};
use ketenpost_core::deadlines::{AnswerClock, Reply};
use ketenpost_core::effects::Effects;
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Registry;
use ketenpost_core::registry::{Case, Consent, Lookup, Unknown};
use ketenpost_core::transitions;
use ketenpost_transport::tls;

pub use ketenpost_schemas::control::BROKER_SIGNER;

struct Shared {
    policy: Policy,
    directory: Directory,
    documents: Documents,
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
    /// The parties' verifying keys, parsed once.
    sender_keys: checks::SenderKeys,
    waiters: Mutex<HashMap<Oin, Arc<Notify>>>,
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

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
        if let Err(e) = self.audit.append(entry, self.clock.now()) {
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
            notice_signer: NoticeSigner { oin: signer, key },
            clock,
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
                let _ = tokio::task::spawn_blocking(move || sweep_once(&s, s.now())).await;
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
    match tokio::task::spawn_blocking(move || s.audit.checkpoint(s.now())).await {
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
}

async fn submit(bytes: Vec<u8>, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = shared.now();
    let guard = shared.registry_lock.read().await;
    // The checks and the start of the write (appending the body to the spool) run on a
    // blocking thread; the store's writer thread writes and flushes the message with the
    // rest of its batch, and the submission waits for that here without holding a thread.
    // The registry lock stays held until the message landed, so no consent withdrawal or
    // case change falls between its checks and its write.
    let (s, o) = (shared.clone(), oin.clone());
    let begun = tokio::task::spawn_blocking(move || {
        let authorised = stage_check(&bytes, &s, &o, now)?;
        let ticket = stage_write(&authorised, &bytes, &s, &o, now)?;
        Ok((authorised, bytes, ticket))
    })
    .await;
    let (authorised, bytes, ticket) = match begun {
        Ok(Ok(begun)) => begun,
        Ok(Err(response)) => return response,
        Err(e) => return submit_task_failed(&e),
    };
    // The rest runs in its own task, so that it completes (the answer bookkeeping) even
    // when the connection goes.
    let (s, o) = (shared.clone(), oin.clone());
    let finish = tokio::spawn(async move {
        if let Err(e) = ticket.landed().await {
            return Err(put_failed(e, &authorised, &s, &o, &bytes));
        }
        Ok(stage_answer(&authorised, &s, &o, now).await)
    });
    let staged = match finish.await {
        Ok(Ok(staged)) => staged,
        Ok(Err(response)) => return response,
        Err(e) => return submit_task_failed(&e),
    };
    drop(guard);
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
    fn of(authorised: &Authorised) -> Staged {
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
        }
    }
}

/// Start the store write of an authorised submission with its audit records and answer
/// clock; blocking (see [`submit`]). The caller holds the registry lock shared.
fn stage_write(
    authorised: &Authorised,
    bytes: &[u8],
    shared: &Arc<Shared>,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<PutTicket, Response> {
    let meta = MessageMeta::accepted(authorised, now);
    // The answer clock is written in the message's own transaction.
    let clock = shared
        .policy
        .rule(&authorised.header().purpose, authorised.header().kind)
        .and_then(|rule| AnswerClock::start(&meta, rule));
    let entries = accepted_entries(authorised, &meta.recipients, oin);
    shared
        .store
        .begin_put(authorised, &meta, &shared.audit, entries, clock.as_ref())
        .map_err(|e| put_failed(e, authorised, shared, oin, bytes))
}

/// The bookkeeping of an answer whose message landed: the answer clock of the message it
/// answers, and a late answer's audit record, one transition of its own (committed before
/// `accepted` is answered).
async fn stage_answer(
    authorised: &Authorised,
    shared: &Arc<Shared>,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Staged {
    let h = authorised.header();
    let Some(answered) = h.in_reply_to else {
        return Staged::of(authorised);
    };
    let (id, sender, kind) = (h.id, oin.clone(), h.kind);
    let late_entry = about_message(
        AuditEntry::flagged(AuditEvent::DeadlineLate, "answer_late"),
        authorised,
        oin,
    );
    let s = shared.clone();
    let outcome = transition(
        shared,
        "answer",
        move |v| {
            let reply = Reply {
                id,
                sender: &sender,
                kind,
                in_reply_to: Some(answered),
            };
            Ok(Ok::<_, std::convert::Infallible>(transitions::answered(
                reply,
                v.clock(&answered)?,
                late_entry.clone(),
                &s.policy,
                now,
            )))
        },
        now,
        Durability::Commit,
    )
    .await;
    if let Err(e) = outcome {
        // The message is stored; only the answer bookkeeping failed. A notice may follow
        // that should not have; that is logged, not a reason to refuse the message.
        error!(cause = %e, "cannot record an answer");
    }
    Staged::of(authorised)
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
                    // The first fetch of each message is recorded (fetched flag and the
                    // `delivered` record, one transaction). It needs no commit of its own:
                    // lost in a crash, both are written again at the next fetch.
                    let party = oin.clone();
                    let now = shared.now();
                    if let Err(e) = transition(
                        shared,
                        "fetch",
                        move |v| {
                            let mut fx = Effects::default();
                            for id in &first {
                                fx.extend(transitions::fetched(&party, v.meta(id)?));
                            }
                            Ok(Ok::<_, std::convert::Infallible>(fx))
                        },
                        now,
                        Durability::Lazy,
                    )
                    .await
                    {
                        return storage_error(e);
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

/// When a transition's transaction must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Before the caller is answered (and before any body it released is destroyed).
    Commit,
    /// With the next group commit; the transition releases no body.
    Lazy,
}

/// Apply one decision of the core in one transaction ([`Store::transition`]), make it
/// durable, then destroy the bodies it released and wake the parties it notified.
async fn transition<E: Send + 'static>(
    shared: &Arc<Shared>,
    op: &'static str,
    decide: impl Fn(&TxView<'_>) -> TxResult<Result<Effects, E>> + Send + 'static,
    now: DateTime<Utc>,
    durability: Durability,
) -> Result<Result<(), E>, StoreError> {
    let s = shared.clone();
    let applied = tokio::task::spawn_blocking(move || {
        s.store
            .transition(op, &s.audit, &s.notice_signer, now, decide)
    })
    .await
    .map_err(|_| StoreError::Closed)??;
    let applied = match applied {
        Ok(a) => a,
        Err(refused) => return Ok(Err(refused)),
    };
    if applied.changed && (durability == Durability::Commit || !applied.destroy.is_empty()) {
        shared.store.commit().await?;
    }
    shared.store.finish(op, &applied);
    for p in &applied.wake {
        shared.notify(p);
    }
    Ok(Ok(()))
}

async fn receipt(rec: &SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let r = match checks::check_receipt(oin, rec, shared.env()) {
        Ok(r) => r,
        Err(rej) => {
            shared.audit(AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str()).actor(oin));
            return Response::Rejected(rej);
        }
    };
    // The body never changes, so the digest of the recipient's view is read before the
    // transaction; everything that does change is read inside it.
    let digest = match shared.store.view_digest(&r.message_id, oin) {
        Ok(d) => d,
        Err(e) => return storage_error(e),
    };
    let (party, forwarded, id, now) = (oin.clone(), rec.clone(), r.message_id, shared.now());
    let outcome = transition(
        shared,
        "receipt",
        move |v| {
            Ok(transitions::receipt(
                &party,
                &r,
                &forwarded,
                v.meta(&id)?,
                digest.as_deref(),
                v.clock(&id)?,
                now,
            ))
        },
        now,
        Durability::Commit,
    )
    .await;
    match outcome {
        Ok(Ok(())) => Response::Done,
        Ok(Err(rej)) => {
            shared.audit(
                AuditEntry::refused(AuditEvent::Receipt, rej.code.as_str())
                    .actor(oin)
                    .message_id(id),
            );
            Response::Rejected(rej)
        }
        Err(e) => storage_error(e),
    }
}

async fn control(rec: &SignedRecord, shared: &Arc<Shared>, oin: &Oin) -> Response {
    let now = shared.now();
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
    let (actor, s) = (oin.clone(), shared.clone());
    let outcome = transition(
        shared,
        "control",
        move |v| {
            let deletion = match &effect {
                ControlEffect::DeletionConfirmed(c) => v.deletion(&c.order_id, &c.party)?,
                _ => None,
            };
            Ok(Ok::<_, std::convert::Infallible>(transitions::control(
                effect.clone(),
                &actor,
                deletion,
                &s.policy,
                now,
            )))
        },
        now,
        Durability::Commit,
    )
    .await;
    match outcome {
        Ok(Ok(())) => Response::Done,
        Ok(Err(never)) => match never {},
        Err(e) => storage_error(e),
    }
}

/// One sweep at `now`: expire undelivered bodies, send the deadline notices that are due,
/// and order deletions for cases whose retention ended. Each is a decision of the core
/// applied in its own transaction; one flush makes them all durable before any body they
/// released is destroyed. Blocking.
fn sweep_once(shared: &Shared, now: DateTime<Utc>) {
    if let Err(e) = sweep(shared, now) {
        error!(cause = %e, "sweep failed");
    }
}

fn sweep(shared: &Shared, now: DateTime<Utc>) -> Result<(), StoreError> {
    let store = &shared.store;
    let apply = |op: &'static str,
                 decide: &dyn Fn(&TxView<'_>) -> TxResult<Effects>|
     -> Result<Applied, StoreError> {
        let applied = store.transition(op, &shared.audit, &shared.notice_signer, now, |v| {
            decide(v).map(Ok::<_, std::convert::Infallible>)
        })?;
        match applied {
            Ok(a) => Ok(a),
            Err(never) => match never {},
        }
    };
    let mut done: Vec<(&'static str, Applied)> = Vec::new();
    for id in store.due(now)? {
        let a = apply("expire", &|v| {
            Ok(transitions::expire(v.meta(&id)?, v.clock(&id)?, now))
        })?;
        if a.changed {
            info!(message = %id, "undelivered message expired");
        }
        done.push(("expire", a));
    }
    let calendar = &shared.policy.calendar;
    for clock in store.clocks()? {
        if clock.overdue(calendar, now).is_empty() {
            continue;
        }
        let id = clock.message_id;
        let a = apply("deadline", &|v| {
            let Some(clock) = v.clock(&id)? else {
                return Ok(Effects::default());
            };
            let regievoerder = v.case(&clock.case_ref)?.map(|c| c.regievoerder);
            Ok(transitions::deadline_notices(
                clock,
                regievoerder.as_ref(),
                &shared.policy,
                now,
            ))
        })?;
        if a.changed {
            info!(message = %id, "answer overdue: deadline notices sent");
        }
        done.push(("deadline", a));
    }
    for case in store.cases()? {
        if case.closed_at.is_none() || case.deletion_ordered_at.is_some() {
            continue;
        }
        let case_ref = case.case_ref.clone();
        let clocks = store.clock_ids_of_case(&case_ref)?;
        let a = apply("deletion", &|v| {
            Ok(match v.case(&case_ref)? {
                Some(case) => transitions::order_deletion(case, &clocks, &shared.policy, now),
                None => Effects::default(),
            })
        })?;
        if a.changed {
            info!(case = %case_ref, "case retention ended: deletion orders sent");
        }
        done.push(("deletion", a));
    }
    if done.iter().any(|(_, a)| a.changed) {
        store.flush()?;
    }
    for (op, a) in &done {
        store.finish(op, a);
        for p in &a.wake {
            shared.notify(p);
        }
    }
    Ok(())
}
