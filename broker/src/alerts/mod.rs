//! FG alerts: the audit events an FG must hear about at once, sent to their webhooks and
//! mailboxes.
//!
//! The broker turns these audit records into alerts:
//!
//! | event | when |
//! |---|---|
//! | `non_consent_use` | a message was sent on a ground the policy flags (`alert_fg`, the default: acute danger, a legal duty, ...); an unflagged ground is recorded (outcome `ok`), not alerted |
//! | `breach_notice` | a breach notice (datalek-melding) was routed |
//! | `deadline_notice` | an answer is overdue and the broker told the parties |
//! | `deadline_late` | a message arrived after its deadline, or an answer came late |
//! | `deletion_overdue` | a party did not confirm a deletion order within its term |
//! | `audit_verification_failed` | the running broker's check of its own trail found damage |
//!
//! Each alert goes to every receiver (webhook or e-mail address, see [`email`]) configured
//! `for` a party the record involves (its actor or a counterparty: that party's FG), and
//! to every `federation` receiver. The body
//! is the record's typed facts and the organisations' names, never content:
//!
//! ```json
//! {"id":"3-1042","event":"non_consent_use","reason":"acute_danger","time":"...",
//!  "seq":1042,"case_ref":"case-...","kind":"aanmelding","message_id":"...",
//!  "parties":[{"oin":"...","name":"..."}],"broker":"..."}
//! ```
//!
//! POSTed as `application/json` with `X-Ketenpost-Alert-Id` (the `id`; a receiver that
//! sees one twice drops the second) and `X-Ketenpost-Signature`, the broker's ed25519
//! signature (base64) over the body in the `alert` context; the broker's public key is in
//! the signed directory. A receiver answering 2xx has accepted it; then the alert is
//! removed and an `alert_sent` record names the event and the receiver. Anything else is
//! retried, oldest first per receiver, with a backoff up to a minute, until accepted. A
//! mail is accepted when the SMTP relay takes it.

pub mod config;
pub mod email;

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::keys::{self, Context, SigningKey};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditRecord};
use config::ReceiverConfig;

/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an audit record is one an FG is alerted about. A use of a ground is, when the
/// policy flags it (the record's outcome is `flagged`).
pub fn alerts_about(record: &AuditRecord) -> bool {
    match record.event {
        AuditEvent::NonConsentUse => record.outcome == crate::audit::Outcome::Flagged,
        event => alerts_about_event(event),
    }
}

fn alerts_about_event(event: AuditEvent) -> bool {
    matches!(
        event,
        AuditEvent::BreachNotice
            | AuditEvent::DeadlineNotice
            | AuditEvent::DeadlineLate
            | AuditEvent::DeletionOverdue
            | AuditEvent::AuditVerificationFailed
    )
}

/// An organisation named in an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// Its OIN.
    pub oin: String,
    /// Its name in the directory.
    pub name: String,
}

/// What a webhook receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per receiver and record: a receiver drops an id it has seen.
    pub id: String,
    /// The audit event.
    pub event: String,
    /// Its reason code (the ground, `late_on_arrival`, ...).
    pub reason: Option<String>,
    /// When it happened.
    pub time: String,
    /// The audit record's seq, to find it in the trail.
    pub seq: u64,
    /// The pseudonymous case reference.
    pub case_ref: Option<String>,
    /// The message kind.
    pub kind: Option<String>,
    /// The message id.
    pub message_id: Option<String>,
    /// The purpose.
    pub purpose: Option<String>,
    /// Every organisation the record involves.
    pub parties: Vec<Named>,
    /// The broker's name.
    pub broker: String,
    /// For `audit_verification_failed`: the first damaged record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<u64>,
}

impl Alert {
    /// The alert of `record` for receiver number `receiver`.
    pub fn of(record: &AuditRecord, receiver: u32, directory: &Directory) -> Alert {
        let name = |oin: &str| {
            directory
                .parties
                .iter()
                .find(|p| p.oin.as_str() == oin)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| "(not in the directory)".into())
        };
        let parties = record
            .actor
            .iter()
            .chain(record.counterparties.iter())
            .map(|o| Named {
                oin: o.clone(),
                name: name(o),
            })
            .collect();
        Alert {
            id: format!("{receiver}-{}", record.seq),
            event: record.event.as_str().to_owned(),
            reason: record.reason.clone(),
            time: record.time.to_rfc3339(),
            seq: record.seq,
            case_ref: record.case_ref.clone(),
            kind: record.kind.clone(),
            message_id: record.message_id.clone(),
            purpose: record.purpose.clone(),
            parties,
            broker: directory.broker.name.clone(),
            broken_seq: record.broken_seq,
        }
    }
}

/// The receivers (indexes into `receivers`, see
/// [`AlertsConfig::receivers`](config::AlertsConfig::receivers)) of an alert about
/// `record`.
pub fn receivers(record: &AuditRecord, receivers: &[ReceiverConfig]) -> Vec<u32> {
    let involved = |oin: &str| {
        record.actor.as_deref() == Some(oin) || record.counterparties.iter().any(|c| c == oin)
    };
    receivers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.for_ == "federation" || involved(&w.for_))
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

/// Sign an alert body.
pub fn sign(key: &SigningKey, body: &[u8]) -> String {
    keys::signature_to_text(&keys::sign(key, Context::Alert, body))
}

/// A webhook's address: `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, to connect to.
    pub authority: String,
    /// The URI to POST.
    pub uri: hyper::Uri,
}

impl Endpoint {
    /// Parse a webhook URL; only `http://` (put the receiver on the broker's network, or
    /// behind a local TLS-terminating proxy).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "'{url}': only http:// webhooks are supported (use a local TLS proxy for https)"
            ));
        }
        let host = uri.host().ok_or_else(|| format!("'{url}' names no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Endpoint {
            authority: format!("{host}:{port}"),
            uri,
        })
    }
}

/// Why a POST did not deliver an alert.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The receiver could not be reached or the exchange failed.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered, but not 2xx.
    #[error("the receiver answered {0}")]
    Status(u16),
    /// No answer in time.
    #[error("no answer within {POST_TIMEOUT:?}")]
    Timeout,
}

/// POST one signed alert; `Ok` when the receiver answered 2xx.
pub async fn post(
    endpoint: &Endpoint,
    id: &str,
    body: Vec<u8>,
    signature: &str,
) -> Result<(), PostError> {
    let exchange = async {
        let t = |e: &dyn std::fmt::Display| PostError::Transport(e.to_string());
        let stream = tokio::net::TcpStream::connect(&endpoint.authority)
            .await
            .map_err(|e| t(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| t(&e))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::post(endpoint.uri.clone())
            .header(hyper::header::HOST, endpoint.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-ketenpost-alert-id", id)
            .header("x-ketenpost-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| t(&e))?;
        let response = sender.send_request(request).await.map_err(|e| t(&e))?;
        let status = response.status();
        // Read (and drop) the answer so the connection ends cleanly.
        let _ = response.into_body().collect().await;
        driver.abort();
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    };
    match tokio::time::timeout(POST_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(PostError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    fn rec(event: AuditEvent, outcome: Outcome, reason: &str) -> AuditRecord {
        AuditRecord {
            outcome,
            reason: Some(reason.into()),
            ..crate::audit::bare_record(event, chrono::Utc::now())
        }
    }

    /// A ground the policy flags is alerted; one it does not flag is recorded only.
    #[test]
    fn only_a_flagged_ground_is_alerted() {
        assert!(alerts_about(&rec(
            AuditEvent::NonConsentUse,
            Outcome::Flagged,
            "legal_duty"
        )));
        assert!(!alerts_about(&rec(
            AuditEvent::NonConsentUse,
            Outcome::Ok,
            "meldrecht"
        )));
        assert!(alerts_about(&rec(
            AuditEvent::BreachNotice,
            Outcome::Ok,
            "routed_to_parties_concerned"
        )));
        assert!(!alerts_about(&rec(AuditEvent::Accepted, Outcome::Ok, "x")));
    }
}
