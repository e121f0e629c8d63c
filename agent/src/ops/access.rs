//! The data subject's access request (AVG art. 15): the operations on [`Core`]. The
//! blind index and the records they use are [`crate::rights`]'.

use chrono::{DateTime, Utc};

use ketenpost_audit::{AuditEntry, AuditEvent};
use ketenpost_schemas::rights::AccessFacts;

use super::Core;
use crate::rights::{normalise, AccessRequest, NewAccessRequest, MAX_IDENTIFIER};
use crate::Error;

impl Core {
    /// Register a data subject's access request: find the person's cases in the blind
    /// index, ask the broker for their facts (it records the request and its term), keep
    /// the answer. With no case found, the answer says so and nothing goes to the broker.
    pub async fn access_request(&self, req: NewAccessRequest) -> Result<AccessRequest, Error> {
        let now = self.clock.now();
        let identifier = normalise(&req.identifier).ok_or_else(|| {
            Error::Invalid(format!(
                "the identifier must hold letters or digits, at most {MAX_IDENTIFIER}"
            ))
        })?;
        let received_on = req.received_on.unwrap_or_else(|| now.date_naive());
        if received_on > now.date_naive() {
            return Err(Error::Invalid("received_on lies in the future".into()));
        }
        let blind = self.store.vault.blind(&identifier);
        drop(identifier);
        let mut case_refs = self.store.cases_of(&blind)?;
        case_refs.sort();
        case_refs.dedup();
        let mut request = AccessRequest {
            id: uuid::Uuid::now_v7(),
            received_on,
            registered_at: now,
            due_at: ketenpost_core::rights::access_due(received_on),
            case_refs,
            facts: None,
            answered_at: None,
        };
        if !request.case_refs.is_empty() {
            let facts = self.ask_access_facts(&request, None).await?;
            request.due_at = facts.due_at;
            request.facts = Some(facts);
        }
        self.store.put_access_request(&request)?;
        self.audit_access(&request, AuditEvent::AccessRequested, now);
        self.store.flush().await?;
        tracing::info!(request = %request.id, cases = request.case_refs.len(), "access request registered");
        Ok(request)
    }

    /// Record that the person has the answer (at the broker too, for the FG report).
    pub async fn access_answered(&self, id: &uuid::Uuid) -> Result<AccessRequest, Error> {
        let mut request = self
            .store
            .access_request(id)?
            .ok_or_else(|| Error::not_found("access request", id))?;
        if request.answered_at.is_some() {
            return Ok(request);
        }
        let now = self.clock.now();
        if !request.case_refs.is_empty() {
            self.ask_access_facts(&request, Some(now)).await?;
        }
        request.answered_at = Some(now);
        self.store.put_access_request(&request)?;
        self.audit_access(&request, AuditEvent::AccessAnswered, now);
        self.store.flush().await?;
        tracing::info!(request = %request.id, "access request answered");
        Ok(request)
    }

    /// The agent's own record of the request (or its answer): one per case, as the
    /// broker writes them, or one without a case when none was found; that one only the
    /// agent's trail holds (`ketenpost-broker audit requests --agent-trail`).
    fn audit_access(&self, r: &AccessRequest, event: AuditEvent, now: DateTime<Utc>) {
        let entry = || {
            let e = AuditEntry::ok(event).actor(&self.me).message_id(r.id);
            if event == AuditEvent::AccessRequested {
                e.due_at(r.due_at)
            } else {
                e
            }
        };
        if r.case_refs.is_empty() {
            self.store.audit(entry(), now);
        }
        for c in &r.case_refs {
            self.store.audit(entry().case_ref(c), now);
        }
    }

    async fn ask_access_facts(
        &self,
        r: &AccessRequest,
        answered_at: Option<DateTime<Utc>>,
    ) -> Result<AccessFacts, Error> {
        use ketenpost_schemas::protocol::{Request, Response};
        let q = ketenpost_schemas::rights::AccessQuery {
            request_id: r.id,
            received_on: r.received_on,
            case_refs: r.case_refs.clone(),
            answered_at,
        };
        match self
            .link
            .request(&Request::AccessFacts(q), self.config.request_timeout())
            .await?
        {
            Response::AccessFacts(f) if f.request_id == r.id => Ok(f),
            Response::Rejected(rej) => {
                tracing::info!(code = %rej.code, request = %r.id, "access query refused by the broker");
                Err(Error::refused_by_broker(rej))
            }
            Response::Error { code, message } => {
                Err(Error::Unexpected(format!("{code}: {message}")))
            }
            other => Err(Error::Unexpected(format!(
                "'{}' to an access query",
                other.name()
            ))),
        }
    }
}
