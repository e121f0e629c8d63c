//! The state every connection, request and timer of a running broker shares
//! ([`Shared`]), and the registry the checks read through it ([`Live`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ketenpost_core::breach::{self as breach_routing, FlowHistory};
use ketenpost_core::clock::SharedClock;
use ketenpost_core::registry::{Case, Consent, Lookup, Registry, Unknown};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use ketenpost_schemas::protocol::{RejectCode, Rejection, Response};
use tokio::sync::{watch, Notify, RwLock};
use tracing::{error, warn};

use super::limits::{Admission, Refused};
use crate::audit::{AuditEntry, AuditEvent, AuditTrail};
use crate::config::BrokerConfig;
use crate::store::{NoticeSigner, Store, StoreError};

pub(super) struct Shared {
    /// The federation documents in force; replaced whole by a reload.
    pub(super) docs: std::sync::RwLock<Arc<crate::documents::Documents>>,
    /// The pinned federation key the documents are verified against.
    pub(super) federation_key: keys::VerifyingKey,
    /// Bumped after every reload that changed the documents: connections re-check their
    /// party against the new set.
    pub(super) docs_version: watch::Sender<u64>,
    /// The digest of the last set a reload refused, so a refusal is audited once.
    pub(super) docs_refused: Mutex<Option<String>>,
    /// The endpoint, to put a new TLS configuration (new CRLs) in force; taken at
    /// shutdown so nothing keeps the socket open.
    pub(super) endpoint: Mutex<Option<quinn::Endpoint>>,
    /// The TLS-over-TCP acceptor in force (with the CRLs in force), when TCP is on.
    pub(super) tcp_acceptor: Mutex<Option<tokio_rustls::TlsAcceptor>>,
    pub(super) limits: Limits,
    pub(super) config: BrokerConfig,
    pub(super) store: Store,
    pub(super) audit: Arc<AuditTrail>,
    /// Signs the broker's own notices.
    pub(super) notice_signer: NoticeSigner,
    /// Where every `now` comes from.
    pub(super) clock: SharedClock,
    /// Submits hold it shared while they check and write; control records exclusively, so
    /// a check never reads a case or consent that changes under it.
    pub(super) registry_lock: RwLock<()>,
    pub(super) waiters: Mutex<HashMap<Oin, Arc<Notify>>>,
    /// What each party holds of the broker (connections, requests, buffered bytes).
    pub(super) admission: Arc<Admission>,
    /// Request counters for the metrics.
    pub(super) counters: crate::metrics::Counters,
    /// False once the broker is shutting down (`/readyz`).
    pub(super) ready: std::sync::atomic::AtomicBool,
    /// The threads that check submissions, their signatures in batches.
    pub(super) checks: super::submit::CheckStage,
}

impl Shared {
    pub(super) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The federation documents in force now.
    pub(super) fn docs(&self) -> Arc<crate::documents::Documents> {
        match self.docs.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How far ahead of `now` an `event_time` may lie.
    pub(super) fn max_clock_skew(&self) -> chrono::Duration {
        // At most a day (the config check), so this cannot overflow.
        chrono::Duration::seconds(
            i64::try_from(self.config.limits.max_clock_skew_secs).unwrap_or(86_400),
        )
    }

    pub(super) fn notify(&self, party: &Oin) {
        if let Ok(map) = self.waiters.lock() {
            if let Some(n) = map.get(party) {
                n.notify_waiters();
            }
        }
    }

    pub(super) fn waiter(&self, party: &Oin) -> Arc<Notify> {
        match self.waiters.lock() {
            Ok(mut map) => map.entry(party.clone()).or_default().clone(),
            Err(_) => Arc::new(Notify::new()),
        }
    }

    pub(super) fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(entry, self.clock.now()) {
            error!(cause = %e, "audit append failed");
        }
    }

    /// [`Shared::audit`] from async code: the append (a sled write under the chain's
    /// lock, both of which the writer thread holds while its round's transactions run)
    /// runs on a blocking thread, never on an async worker.
    pub(super) async fn audit_async(self: &Arc<Self>, entry: AuditEntry) {
        let s = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.audit(entry)).await {
            error!(cause = %e, "audit append task failed");
        }
    }

    /// Count a party's refusal for a limit, and audit it once per episode (the append on
    /// a blocking thread, as [`Shared::audit_async`]).
    pub(super) async fn over_limit(self: &Arc<Self>, party: &Oin, refused: Refused) {
        self.counters.limit(refused.limit.as_str());
        if refused.new_episode {
            warn!(%party, limit = refused.limit.as_str(), "party over a limit; refusing it until it is back under");
            self.audit_async(
                AuditEntry::refused(AuditEvent::LimitExceeded, refused.limit.as_str()).actor(party),
            )
            .await;
        }
    }

    pub(super) fn live(&self) -> Live<'_> {
        Live {
            store: &self.store,
            audit: &self.audit,
        }
    }
}

/// The registry the checks read in a running broker: cases, consents and the dedup set
/// from the store, past flows (for breach routing) from the audit trail.
pub(super) struct Live<'a> {
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

/// The answer when a request's task (a blocking thread's share of it) panicked or was
/// cancelled: answered as a storage error, which tells the party to try again.
pub(super) fn task_failed(cause: &dyn std::fmt::Display) -> Response {
    error!(%cause, "a request's task failed");
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not store this; nothing was accepted, try again",
    ))
}

pub(super) fn storage_error(e: StoreError) -> Response {
    error!(cause = %e, "storage error");
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not store this; nothing was accepted, try again",
    ))
}
