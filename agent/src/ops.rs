//! The agent's operations: [`Core`] holds the state every task shares and implements
//! each operation once (sending, the inbox, cases, consents, deletion); the API handlers
//! (the `api` module) only translate HTTP to these calls, and the background loops
//! (the `sync` module) call the same ones.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, SignedRecord, Toestemming, ToestemmingIntrekking,
};
use ketenpost_schemas::envelope::Header;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin, TraceId};
use ketenpost_schemas::keys::{SigningKey, VerifyingKey};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload;
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_schemas::seal::{self, Draft, Sender};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info};

use ketenpost_audit::{AuditEntry, AuditEvent};
use ketenpost_core::clock::SharedClock;
use ketenpost_transport::failpoint;

use crate::config::AgentConfig;
use crate::deletion::DeletionEntry;
use crate::documents::{Me, Trusted};
use crate::inbox::{InboxEntry, RefusedMessage};
use crate::link::BrokerLink;
use crate::mirror::{Knowledge, KnownCase, KnownConsent};
use crate::outbox::{OutboxEntry, Reseal};
use crate::resolve::{self, SendRequest};
use crate::store::Store;
use crate::Error;

mod access;

/// Name of the cached documents in the meta tree.
pub(crate) const DOCUMENTS: &str = "documents";

/// State shared by the API handlers and the background loops.
pub struct Core {
    /// The configuration.
    pub(crate) config: AgentConfig,
    /// Our OIN.
    pub(crate) me: Oin,
    /// Our signing key.
    pub(crate) signing: SigningKey,
    /// Every age identity we decrypt with: the current one first, then the ones from
    /// before a key rotation (bodies sealed for them may still arrive).
    pub(crate) identities: Vec<age::x25519::Identity>,
    /// The pinned federation key.
    pub(crate) federation: VerifyingKey,
    /// The API bearer token.
    pub(crate) api_token: String,
    /// What the documents are checked against.
    pub(crate) me_keys: Me,
    /// The verified documents in force.
    pub(crate) docs: RwLock<Arc<Trusted>>,
    /// The database.
    pub(crate) store: Store,
    /// The broker connection.
    pub(crate) link: BrokerLink,
    /// Wakes the outbox loop when a message was queued.
    pub(crate) outbox_wake: Notify,
    /// Where every `now` comes from.
    pub(crate) clock: SharedClock,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// Open a case.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenCase {
    /// The purpose the case is for.
    pub purpose: String,
    /// Our role in it (default: our first role that may manage cases under the purpose).
    #[serde(default)]
    pub role: Option<Role>,
    /// The reference to use (default: a fresh random one).
    #[serde(default)]
    pub case_ref: Option<CaseRef>,
}

/// Tell the agent about a case this organisation was added to by another party.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterCase {
    /// The case's purpose.
    pub purpose: String,
    /// The team as the regievoerder told it, ourselves included.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// A case member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The party.
    pub oin: Oin,
    /// Its role in the case.
    pub role: Role,
}

/// Add a member to a case this agent manages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The party.
    pub oin: Oin,
    /// Its role in the case (default: its one directory role).
    #[serde(default)]
    pub role: Option<Role>,
    /// The case's purpose, needed only when the agent does not know the case.
    #[serde(default)]
    pub purpose: Option<String>,
}

/// Register a consent this organisation obtained.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConsent {
    /// The case.
    pub case_ref: CaseRef,
    /// The purpose (default: the case's).
    #[serde(default)]
    pub purpose: Option<String>,
    /// Party types consented to.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Parties consented to, by OIN.
    #[serde(default)]
    pub parties: Vec<Oin>,
    /// From when (default: now).
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    /// Until when (default: until withdrawn).
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    /// SHA-256 (hex) of the signed consent document kept by this organisation.
    pub document_sha256: String,
    /// When the client signed (default: now).
    #[serde(default)]
    pub obtained_at: Option<DateTime<Utc>>,
    /// The consent id (default: a fresh UUIDv7).
    #[serde(default)]
    pub consent_id: Option<uuid::Uuid>,
}

/// Withdraw a consent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawConsent {
    /// When the client withdrew it (default: now).
    #[serde(default)]
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// The case, needed only when the agent does not know the consent.
    #[serde(default)]
    pub case_ref: Option<CaseRef>,
}

/// The agent's health, for `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// Our OIN.
    pub oin: Oin,
    /// The covenant.
    pub covenant: String,
    /// Serial of the directory in force.
    pub directory_serial: u64,
    /// Whether the last broker request got through.
    pub broker_connected: bool,
    /// How the agent reaches the broker now, `quic` or `tcp` (see `broker.transport`);
    /// absent while not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_transport: Option<String>,
    /// Messages waiting for submission.
    pub outbox_queued: usize,
    /// Received messages not yet acknowledged.
    pub inbox_unacknowledged: usize,
    /// Deliveries the agent refused.
    pub refused_deliveries: usize,
    /// Deletion orders the partner system has not acknowledged.
    pub deletion_orders_unacknowledged: usize,
    /// Seq of the latest broker audit checkpoint seen.
    pub latest_checkpoint_seq: Option<u64>,
    /// Loud warnings about the broker's audit trail; should be empty.
    pub audit_warnings: Vec<crate::checkpoints::AuditWarning>,
}

impl Core {
    /// The documents in force.
    pub fn docs(&self) -> Arc<Trusted> {
        match self.docs.read() {
            Ok(d) => d.clone(),
            // A poisoned lock still holds a complete Arc (it is replaced whole).
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the documents after they verified and may replace the current ones.
    pub(crate) fn set_docs(&self, new: Trusted) -> Result<(), Error> {
        self.store.meta_put(DOCUMENTS, &new.raw)?;
        match self.docs.write() {
            Ok(mut d) => *d = Arc::new(new),
            Err(p) => *p.into_inner() = Arc::new(new),
        }
        Ok(())
    }

    /// Our OIN.
    pub fn oin(&self) -> &Oin {
        &self.me
    }

    /// The store (for embedding and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- sending -----------------------------------------------------------------------

    /// Check, seal and store a message; it is on disk before this returns its entry.
    pub async fn send(&self, mut req: SendRequest) -> Result<OutboxEntry, Error> {
        let now = self.clock.now();
        let docs = self.docs();
        // A kind the policy does not know has no schema; resolving refuses it below.
        if let Some(schema) = docs.policy.kind_schema(req.kind) {
            payload::validate(schema, &req.payload)?;
        }
        let case = self.store.case(&req.case_ref)?;
        let consents = self.store.consents(Some(&req.case_ref))?;
        let cx = resolve::Context {
            me: &self.me,
            policy: &docs.policy,
            directory: &docs.directory,
            case: case.as_ref(),
            consents: &consents,
        };
        let resolved = match resolve::resolve(&req, &cx, now) {
            Ok(r) => r,
            Err(e) => return Err(self.refused_early(e, &req, None, now).await),
        };
        let identifiers = crate::rights::blinds_of(
            &self.store.vault,
            docs.policy.kind_schema(req.kind),
            &req.payload,
        );
        let parts = Reseal {
            purpose: resolved.purpose,
            legal_basis: resolved.legal_basis,
            event_time: resolved.event_time,
            in_reply_to: req.in_reply_to,
            trace_id: req.trace_id.unwrap_or_else(TraceId::random),
            breach_scope: resolved.breach_scope,
            corrects: resolved.corrects,
            answer_request: req.answer_request.clone(),
            // Taken, not cloned: the request stays whole enough to audit a refusal.
            payload: std::mem::take(&mut req.payload),
            reseals: 0,
        };
        let (envelope, header) = self
            .seal_parts(
                MessageId::new(),
                req.kind,
                &req.case_ref,
                resolved.recipients.clone(),
                &parts,
            )
            .await?;
        if let Err(e) = resolve::check_sealed(&envelope, &cx, now) {
            return Err(self.refused_early(e, &req, Some(&header), now).await);
        }
        let mut entry = OutboxEntry::sealed(&header, &envelope, &resolved.recipients);
        if req.kind.routed_by_audit() {
            entry.reseal = Some(parts);
        }
        self.store.outbox_insert(&entry, &identifiers).await?;
        failpoint::hit("agent-outbox", "durable");
        self.outbox_wake.notify_one();
        info!(
            message = %entry.message_id,
            kind = %entry.kind,
            case = %entry.case_ref,
            recipients = entry.recipients.len(),
            "message queued"
        );
        Ok(entry)
    }

    /// Log and audit an early refusal (any other error passes through untouched), and
    /// hand the error back for the API's 422. The record holds only what this agent put
    /// in its own request: our OIN, the kind and case, a purpose the policy knows, the
    /// recipients named by OIN, and once sealed the message id, recipients and trace id.
    async fn refused_early(
        &self,
        e: Error,
        req: &SendRequest,
        header: Option<&Header>,
        now: DateTime<Utc>,
    ) -> Error {
        let Error::Refused { rejection, .. } = &e else {
            return e;
        };
        info!(code = %rejection.code, kind = %req.kind, case = %req.case_ref, "message refused early");
        let docs = self.docs();
        let code = rejection.code.as_str();
        let mut entry = AuditEntry::refused(AuditEvent::EarlyRefused, code)
            .reason_explained(code, "refused by the sending agent")
            .actor(&self.me)
            .kind(req.kind)
            .case_ref(&req.case_ref);
        let purpose = match header {
            Some(h) => Some(h.purpose.clone()),
            None => req.purpose.clone().or_else(|| {
                self.store
                    .case(&req.case_ref)
                    .ok()
                    .flatten()
                    .map(|c| c.purpose)
            }),
        };
        // Only a purpose the policy defines: a request may name anything.
        if let Some(p) = purpose.and_then(|p| docs.policy.purposes.get(&p).map(|d| (p, d))) {
            entry = entry
                .purpose(&p.0)
                .processing_activity(&p.1.processing_activity);
        }
        entry = match header {
            Some(h) => entry
                .message_id(h.id)
                .trace_id(h.trace_id)
                .counterparties(h.recipients.iter()),
            None => entry.counterparties(req.to.iter().filter_map(|t| match t {
                resolve::To::Oin(o) => Some(o),
                resolve::To::Role(_) => None,
            })),
        };
        self.store.audit(entry, now);
        if let Err(flush) = self.store.flush().await {
            error!(cause = %flush, "cannot flush the audit record of an early refusal");
        }
        e
    }

    /// Seal a message (off the async threads: age encryption and signing are CPU work).
    pub(crate) async fn seal_parts(
        &self,
        id: MessageId,
        kind: Kind,
        case_ref: &CaseRef,
        recipients: Vec<(Oin, Role)>,
        parts: &Reseal,
    ) -> Result<(Vec<u8>, Header), Error> {
        let docs = self.docs();
        let mut draft = Draft::new(
            parts.purpose.clone(),
            kind,
            case_ref.clone(),
            recipients,
            parts.legal_basis.clone(),
            parts.payload.clone(),
        );
        draft.id = id;
        draft.event_time = parts.event_time;
        draft.in_reply_to = parts.in_reply_to;
        draft.breach_scope = parts.breach_scope.clone();
        draft.corrects = parts.corrects.clone();
        draft.answer_request = parts.answer_request.clone();
        draft.trace_id = parts.trace_id;
        let me = self.me.clone();
        let key = self.signing.clone();
        let now = self.clock.now();
        let (envelope, header) = tokio::task::spawn_blocking(move || {
            seal::seal(
                draft,
                Sender {
                    oin: &me,
                    key: &key,
                },
                &docs.policy,
                &docs.directory,
                now,
            )
        })
        .await
        .map_err(|e| Error::Invalid(format!("sealing was interrupted: {e}")))??;
        Ok((envelope.encode(), header))
    }

    /// A message's outbox entry.
    pub fn message(&self, id: &MessageId) -> Result<OutboxEntry, Error> {
        self.store
            .outbox_get(id)?
            .ok_or_else(|| Error::not_found("message", id))
    }

    /// Outbox entries, optionally of one case.
    pub fn messages(&self, case_ref: Option<&CaseRef>) -> Result<Vec<OutboxEntry>, Error> {
        Ok(self
            .store
            .outbox_all()?
            .into_iter()
            .filter(|e| case_ref.is_none_or(|c| &e.case_ref == c))
            .collect())
    }

    // ---- inbox -------------------------------------------------------------------------

    /// Inbox entries; only unacknowledged ones unless `all`.
    pub fn inbox(&self, all: bool) -> Result<Vec<InboxEntry>, Error> {
        Ok(self
            .store
            .inbox_all()?
            .into_iter()
            .filter(|e| all || e.acknowledged_at.is_none())
            .collect())
    }

    /// One inbox entry, payload included.
    pub fn inbox_entry(&self, id: &MessageId) -> Result<InboxEntry, Error> {
        self.store
            .inbox_get(id)?
            .ok_or_else(|| Error::not_found("inbox message", id))
    }

    /// Acknowledge an inbox entry: the partner system has it.
    pub async fn ack(&self, id: &MessageId) -> Result<InboxEntry, Error> {
        let e = self
            .store
            .inbox_ack(id, self.clock.now())?
            .ok_or_else(|| Error::not_found("inbox message", id))?;
        self.store.flush().await?;
        info!(message = %id, "inbox message acknowledged");
        Ok(e)
    }

    /// Deliveries the agent refused.
    pub fn refused(&self) -> Result<Vec<RefusedMessage>, Error> {
        self.store.refused_all()
    }

    // ---- control records ---------------------------------------------------------------

    async fn submit_control(&self, rec: SignedRecord) -> Result<(), Error> {
        let kind = rec.kind;
        match self
            .link
            .request(&Request::Control(rec), self.config.request_timeout())
            .await?
        {
            Response::Done => Ok(()),
            Response::Rejected(r) => {
                info!(code = %r.code, %kind, "control record refused by the broker");
                Err(Error::refused_by_broker(r))
            }
            Response::Error { code, message } => {
                Err(Error::Unexpected(format!("{code}: {message}")))
            }
            other => Err(Error::Unexpected(format!(
                "'{}' to a control record",
                other.name()
            ))),
        }
    }

    /// The broker's check of a signed control record over what this agent knows of its
    /// case and consents ([`resolve::check_control`]), before it is submitted.
    fn check_control(
        &self,
        rec: &SignedRecord,
        docs: &Trusted,
        case: Option<&KnownCase>,
        consents: &[KnownConsent],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let cx = resolve::Context {
            me: &self.me,
            policy: &docs.policy,
            directory: &docs.directory,
            case,
            consents,
        };
        resolve::check_control(rec, &cx, now)
    }

    /// Open a case as its regievoerder.
    pub async fn open_case(&self, req: OpenCase) -> Result<KnownCase, Error> {
        let now = self.clock.now();
        let docs = self.docs();
        let role = resolve::open_role(
            &self.me,
            &req.purpose,
            req.role.as_ref(),
            &docs.policy,
            &docs.directory,
        )?;
        let case_ref = req.case_ref.unwrap_or_else(CaseRef::random);
        let change = CaseChange {
            case_ref: case_ref.clone(),
            covenant: docs.policy.covenant.id.clone(),
            purpose: req.purpose.clone(),
            change: CaseOp::Open { role: role.clone() },
            by: self.me.clone(),
            at: now,
        };
        let rec = SignedRecord::sign(&change, self.me.clone(), &self.signing)?;
        let known = self.store.case(&case_ref)?;
        self.check_control(&rec, &docs, known.as_ref(), &[], now)?;
        self.submit_control(rec).await?;
        let case = KnownCase::opened(case_ref, req.purpose, self.me.clone(), role, now);
        self.store.put_case(&case)?;
        self.store.flush().await?;
        info!(case = %case.case_ref, purpose = %case.purpose, "case opened");
        Ok(case)
    }

    /// Add, remove or close: a change to a case this organisation manages.
    pub async fn change_case(
        &self,
        case_ref: &CaseRef,
        op: CaseOp,
        purpose: Option<String>,
    ) -> Result<Option<KnownCase>, Error> {
        let now = self.clock.now();
        let docs = self.docs();
        let known = self.store.case(case_ref)?;
        let purpose = match (&known, purpose) {
            (Some(c), _) => c.purpose.clone(),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "case {case_ref} is not known to this agent: give its 'purpose'"
                )))
            }
        };
        let change = CaseChange {
            case_ref: case_ref.clone(),
            covenant: docs.policy.covenant.id.clone(),
            purpose: purpose.clone(),
            change: op.clone(),
            by: self.me.clone(),
            at: now,
        };
        let rec = SignedRecord::sign(&change, self.me.clone(), &self.signing)?;
        self.check_control(&rec, &docs, known.as_ref(), &[], now)?;
        self.submit_control(rec).await?;
        let p = docs.policy.purposes.get(&purpose);
        let updated = self.store.update_case(case_ref, |c| {
            c.map(|mut c| {
                c.apply(&op, p, now);
                c
            })
        })?;
        self.store.flush().await?;
        info!(case = %case_ref, op = op_name(&op), "case changed");
        Ok(updated)
    }

    /// Add a member, resolving its role from the directory when not given.
    pub async fn add_member(
        &self,
        case_ref: &CaseRef,
        req: AddMember,
    ) -> Result<Option<KnownCase>, Error> {
        let role = match req.role {
            Some(r) => r,
            None => {
                let docs = self.docs();
                let party = docs.directory.active_party(&req.oin).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} is not an active party in the directory",
                        req.oin
                    ))
                })?;
                match party.roles.as_slice() {
                    [one] => one.clone(),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{} has several roles; give the role it has in this case",
                            req.oin
                        )))
                    }
                }
            }
        };
        self.change_case(
            case_ref,
            CaseOp::AddMember { oin: req.oin, role },
            req.purpose,
        )
        .await
    }

    /// Record a case this organisation was added to by another party, as the partner
    /// system was told. Local knowledge only: it lets the agent address recipients by
    /// role; the broker still decides.
    pub async fn register_case(
        &self,
        case_ref: &CaseRef,
        req: RegisterCase,
    ) -> Result<KnownCase, Error> {
        let docs = self.docs();
        if !docs.policy.purposes.contains_key(&req.purpose) {
            return Err(Error::Invalid(format!(
                "the policy has no purpose '{}'",
                req.purpose
            )));
        }
        for m in &req.members {
            let ok = docs
                .directory
                .party(&m.oin)
                .is_some_and(|p| p.has_role(&m.role));
            if !ok {
                return Err(Error::Invalid(format!(
                    "{} does not have role '{}' in the directory",
                    m.oin, m.role
                )));
            }
        }
        let now = self.clock.now();
        let case = self
            .store
            .update_case(case_ref, |existing| {
                let mut c = existing.unwrap_or_else(|| KnownCase {
                    case_ref: case_ref.clone(),
                    purpose: req.purpose.clone(),
                    members: Default::default(),
                    regievoerder: None,
                    former_members: Default::default(),
                    former_known: true,
                    complete: false,
                    knowledge: Knowledge::Registered,
                    closed_at: None,
                    phase: None,
                    review_due: None,
                    updated_at: now,
                });
                if c.knowledge != Knowledge::Managed {
                    c.purpose = req.purpose.clone();
                    for m in &req.members {
                        c.members.insert(m.oin.clone(), m.role.clone());
                    }
                    c.knowledge = Knowledge::Registered;
                    c.updated_at = now;
                }
                Some(c)
            })?
            .ok_or_else(|| Error::not_found("case", case_ref))?;
        self.store.flush().await?;
        Ok(case)
    }

    /// A known case.
    pub fn case(&self, case_ref: &CaseRef) -> Result<KnownCase, Error> {
        self.store
            .case(case_ref)?
            .ok_or_else(|| Error::not_found("case", case_ref))
    }

    /// Every known case.
    pub fn cases(&self) -> Result<Vec<KnownCase>, Error> {
        self.store.cases()
    }

    /// Register a consent this organisation obtained.
    pub async fn grant_consent(&self, req: GrantConsent) -> Result<KnownConsent, Error> {
        let now = self.clock.now();
        let docs = self.docs();
        let case = self.store.case(&req.case_ref)?;
        let purpose = match (&req.purpose, &case) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => c.purpose.clone(),
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "case {} is not known to this agent: give 'purpose'",
                    req.case_ref
                )))
            }
        };
        let sha = req.document_sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(
                "document_sha256 must be the SHA-256 of the signed consent document, 64 hex characters"
                    .into(),
            ));
        }
        let record = Toestemming {
            consent_id: req.consent_id.unwrap_or_else(uuid::Uuid::now_v7),
            covenant: docs.policy.covenant.id.clone(),
            purpose,
            case_ref: req.case_ref,
            parties: req.parties,
            roles: req.roles,
            valid_from: req.valid_from.unwrap_or(now),
            valid_until: req.valid_until,
            document_sha256: sha,
            obtained_by: self.me.clone(),
            obtained_at: req.obtained_at.unwrap_or(now),
        };
        let rec = SignedRecord::sign(&record, self.me.clone(), &self.signing)?;
        let consents = self.store.consents(Some(&record.case_ref))?;
        self.check_control(&rec, &docs, case.as_ref(), &consents, now)?;
        self.submit_control(rec).await?;
        let consent = KnownConsent {
            record,
            withdrawn_at: None,
        };
        self.store.put_consent(&consent)?;
        self.store.flush().await?;
        info!(consent = %consent.record.consent_id, case = %consent.record.case_ref, "consent registered");
        Ok(consent)
    }

    /// Record the withdrawal of a consent.
    pub async fn withdraw_consent(
        &self,
        consent_id: &uuid::Uuid,
        req: WithdrawConsent,
    ) -> Result<Option<KnownConsent>, Error> {
        let now = self.clock.now();
        let known = self.store.consent(consent_id)?;
        let case_ref = match (&known, req.case_ref) {
            (Some(c), _) => c.record.case_ref.clone(),
            (None, Some(c)) => c,
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "consent {consent_id} is not known to this agent: give its 'case_ref'"
                )))
            }
        };
        let at = req.withdrawn_at.unwrap_or(now);
        let record = ToestemmingIntrekking {
            consent_id: *consent_id,
            case_ref,
            withdrawn_at: at,
            recorded_by: self.me.clone(),
        };
        let rec = SignedRecord::sign(&record, self.me.clone(), &self.signing)?;
        let case = self.store.case(&record.case_ref)?;
        let consents = self.store.consents(Some(&record.case_ref))?;
        self.check_control(&rec, &self.docs(), case.as_ref(), &consents, now)?;
        self.submit_control(rec).await?;
        let updated = match known {
            Some(mut c) => {
                // As the broker records it: effective now at the latest.
                c.withdrawn_at = Some(at.max(c.record.valid_from).min(now));
                self.store.put_consent(&c)?;
                self.store.flush().await?;
                Some(c)
            }
            None => None,
        };
        info!(consent = %consent_id, "consent withdrawn");
        Ok(updated)
    }

    /// Consents known, optionally of one case.
    pub fn consents(&self, case_ref: Option<&CaseRef>) -> Result<Vec<KnownConsent>, Error> {
        self.store.consents(case_ref)
    }

    // ---- deletion orders ---------------------------------------------------------------

    /// Deletion orders carried out.
    pub fn deletion_orders(&self) -> Result<Vec<DeletionEntry>, Error> {
        self.store.deletions()
    }

    /// The partner system deleted its own copies of the case.
    pub async fn ack_deletion(&self, order_id: &uuid::Uuid) -> Result<DeletionEntry, Error> {
        let now = self.clock.now();
        let e = self
            .store
            .deletion_update(order_id, |e| {
                e.acknowledged_at.get_or_insert(now);
            })?
            .ok_or_else(|| Error::not_found("deletion order", order_id))?;
        self.store.flush().await?;
        Ok(e)
    }

    // ---- health ------------------------------------------------------------------------

    /// Health and counters.
    pub fn health(&self) -> Result<Health, Error> {
        let docs = self.docs();
        Ok(Health {
            oin: self.me.clone(),
            covenant: docs.policy.covenant.id.clone(),
            directory_serial: docs.serial(),
            broker_connected: self.link.is_connected(),
            broker_transport: self.link.transport().map(|t| t.as_str().to_owned()),
            outbox_queued: self.store.outbox_queued_len(),
            inbox_unacknowledged: self.inbox(false)?.len(),
            refused_deliveries: self.store.refused.len(),
            deletion_orders_unacknowledged: self
                .store
                .deletions()?
                .iter()
                .filter(|d| d.acknowledged_at.is_none())
                .count(),
            latest_checkpoint_seq: self.store.latest_checkpoint()?.map(|c| c.seq),
            audit_warnings: self.store.audit_warnings()?,
        })
    }
}

fn op_name(op: &CaseOp) -> &'static str {
    match op {
        CaseOp::Open { .. } => "open",
        CaseOp::AddMember { .. } => "add_member",
        CaseOp::RemoveMember { .. } => "remove_member",
        CaseOp::Close => "close",
        CaseOp::EnterPhase { .. } => "enter_phase",
        CaseOp::ReviewDue { .. } => "review_due",
        CaseOp::OrderDeletion { .. } => "order_deletion",
    }
}
