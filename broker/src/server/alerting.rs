//! The alert dispatcher: turns new audit records into alerts (see [`crate::alerts`]) and
//! sends them to the FGs' webhooks and mailboxes until each is accepted; and the trail
//! watch, which verifies the broker's own audit trail while it runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::state::Shared;
use crate::alerts::email::Mailer;
use crate::alerts::{self, Alert, Endpoint, PostError};
use crate::audit::{AuditEntry, AuditEvent};
use crate::config::{Destination, ReceiverConfig};
use crate::store::alerts::{alert_key, split_alert_key};
use crate::store::StoreError;

/// Records scanned per round, so a long backlog does not hold one transaction open.
const SCAN_BATCH: u64 = 10_000;
/// The longest wait before a failing receiver is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Start alerting from the trail's head, the first time alerts run on this data (so an
/// upgraded broker does not alert about its history). Later starts continue from the
/// cursor, so nothing that happened while the broker was down is missed.
pub(super) fn init_cursor(shared: &Shared) -> Result<(), StoreError> {
    if !shared.config.alerts.any() || shared.store.has_alert_cursor()? {
        return Ok(());
    }
    shared.store.stage_alerts(shared.audit.head().seq, &[])
}

/// How one receiver is reached.
enum Channel {
    Webhook(Endpoint),
    Email(Arc<Mailer>, String),
}

impl Channel {
    async fn deliver(&self, id: &str, body: Vec<u8>, signature: &str) -> Result<(), PostError> {
        match self {
            Channel::Webhook(endpoint) => alerts::post(endpoint, id, body, signature).await,
            Channel::Email(mailer, to) => {
                let alert: Alert = serde_json::from_slice(&body)
                    .map_err(|e| PostError::Transport(format!("unreadable queued alert: {e}")))?;
                mailer.send(to, &alert, &body, signature).await
            }
        }
    }
}

/// The channel of every receiver; `None` for one that cannot be set up (logged once).
fn channels(shared: &Shared, receivers: &[ReceiverConfig]) -> Vec<Option<Channel>> {
    let mailer = shared
        .config
        .alerts
        .smtp
        .as_ref()
        .map(|smtp| Mailer::new(smtp).map(Arc::new));
    receivers
        .iter()
        .map(|r| match &r.to {
            Destination::Webhook(url) => match Endpoint::parse(url) {
                Ok(e) => Some(Channel::Webhook(e)),
                Err(e) => {
                    error!(cause = %e, "webhook ignored");
                    None
                }
            },
            Destination::Email(to) => match &mailer {
                Some(Ok(m)) => Some(Channel::Email(m.clone(), to.clone())),
                Some(Err(e)) => {
                    error!(cause = %e, "e-mail alerts off: the SMTP relay cannot be set up");
                    None
                }
                None => None,
            },
        })
        .collect()
}

pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let webhooks = shared.config.alerts.receivers();
    if webhooks.is_empty() {
        return;
    }
    let endpoints = channels(&shared, &webhooks);
    let every = Duration::from_millis(shared.config.alerts.interval_ms);
    // Per receiver: when to try again, and the wait after the next failure.
    let mut backoff: HashMap<u32, (tokio::time::Instant, Duration)> = HashMap::new();
    info!(receivers = webhooks.len(), "FG alerts on");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(every) => {}
        }
        let s = shared.clone();
        let hooks = webhooks.clone();
        match tokio::task::spawn_blocking(move || stage(&s, &hooks)).await {
            Ok(Ok(n)) if n > 0 => debug!(alerts = n, "alerts staged"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!(cause = %e, "cannot stage alerts"),
            Err(e) => error!(cause = %e, "alert staging task failed"),
        }
        let pending = match shared.store.pending_alerts() {
            Ok(p) => p,
            Err(e) => {
                error!(cause = %e, "cannot read the alert queue");
                continue;
            }
        };
        let mut failed: HashSet<u32> = HashSet::new();
        let mut left = pending.len() as u64;
        for (key, body) in pending {
            let Some((receiver, seq)) = split_alert_key(&key) else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if failed.contains(&receiver) || backoff.get(&receiver).is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            let Some(endpoint) = endpoints.get(receiver as usize).and_then(Option::as_ref) else {
                continue;
            };
            let id = format!("{receiver}-{seq}");
            let signature = alerts::sign(&shared.notice_signer.key, &body);
            let alert: Option<Alert> = serde_json::from_slice(&body).ok();
            match endpoint.deliver(&id, body, &signature).await {
                Ok(()) => {
                    crate::failpoint::hit("alert", "accepted");
                    backoff.remove(&receiver);
                    let mut entry = AuditEntry::ok(AuditEvent::AlertSent);
                    if let Some(a) = &alert {
                        entry = entry.reason(event_code(&a.event));
                        if let Some(c) = &a.case_ref {
                            entry = entry.case_ref(c);
                        }
                        if let Some(m) = &a.message_id {
                            entry = entry.message_id(m);
                        }
                    }
                    if let Some(w) = webhooks.get(receiver as usize) {
                        if w.for_ != "federation" {
                            entry = entry.counterparty(&w.for_);
                        }
                    }
                    let s = shared.clone();
                    let k = key.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        s.store.alert_delivered(&s.audit, &k, entry, s.now())
                    })
                    .await;
                    match done {
                        Ok(Ok(())) => {
                            crate::failpoint::hit("alert", "recorded");
                            shared.counters.alert_sent();
                            left -= 1;
                            info!(receiver, seq, "FG alert accepted");
                        }
                        Ok(Err(e)) => {
                            error!(cause = %e, "cannot record a delivered alert; it will be sent again")
                        }
                        Err(e) => error!(cause = %e, "alert bookkeeping task failed"),
                    }
                }
                Err(e) => {
                    failed.insert(receiver);
                    let wait = backoff
                        .get(&receiver)
                        .map_or(every, |(_, w)| (*w * 2).min(MAX_BACKOFF));
                    backoff.insert(receiver, (now + wait, wait));
                    warn!(receiver, cause = %e, retry_in = ?wait, "an FG receiver did not accept an alert; retrying");
                }
            }
        }
        shared.counters.alert_pass(left);
    }
}

/// Stage the alerts of the records after the cursor; how many.
fn stage(shared: &Shared, webhooks: &[ReceiverConfig]) -> Result<usize, StoreError> {
    let cursor = shared.store.alert_cursor()?;
    let head = shared.audit.head().seq;
    if head <= cursor {
        return Ok(0);
    }
    let until = head.min(cursor.saturating_add(SCAN_BATCH));
    let docs = shared.docs();
    let mut staged = Vec::new();
    let mut last = cursor;
    for record in shared.audit.iter_range(cursor + 1, until) {
        let record = record?;
        last = record.seq;
        if !alerts::alerts_about(&record) {
            continue;
        }
        for receiver in alerts::receivers(&record, webhooks) {
            let alert = Alert::of(&record, receiver, &docs.directory);
            let body = serde_json::to_vec(&alert).unwrap_or_default();
            staged.push((alert_key(receiver, record.seq), body));
        }
    }
    shared.store.stage_alerts(last, &staged)?;
    if !staged.is_empty() {
        crate::failpoint::hit("alert", "staged");
    }
    Ok(staged.len())
}

/// The static reason code of an alerted event.
fn event_code(event: &str) -> &'static str {
    match event {
        "non_consent_use" => "non_consent_use",
        "breach_notice" => "breach_notice",
        "deadline_notice" => "deadline_notice",
        "deadline_late" => "deadline_late",
        "deletion_overdue" => "deletion_overdue",
        "audit_verification_failed" => "audit_verification_failed",
        _ => "alert",
    }
}

/// Verify the whole audit trail (hash chain and checkpoints) right after the start and then
/// every `alerts.verify_interval_secs`. Damage is logged every time and recorded once per
/// distinct damage (first broken record and number of problems) in this run, as an
/// `audit_verification_failed` record, which is alerted like the other FG events.
pub(super) async fn watch_trail(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(shared.config.alerts.verify_interval_secs);
    let mut reported: Option<(u64, usize)> = None;
    loop {
        let s = shared.clone();
        let verified = tokio::task::spawn_blocking(move || {
            crate::audit::verify_trail_of(s.store.db(), &s.audit, &s.audit.verifying_key())
        })
        .await;
        match verified {
            Ok(Ok(report)) => match report.problems.first() {
                None => {
                    reported = None;
                    shared.counters.trail_verified(true);
                    info!(records = report.records, "audit trail verified: intact");
                }
                Some(first) => {
                    shared.counters.trail_verified(false);
                    let damage = (first.seq, report.problems.len());
                    error!(
                        first_broken = first.seq,
                        problems = report.problems.len(),
                        what = first.what.code(),
                        "the audit trail does not verify; run `ketenpost-broker audit verify`"
                    );
                    if reported != Some(damage) {
                        shared.audit(
                            AuditEntry::flagged(
                                AuditEvent::AuditVerificationFailed,
                                first.what.code(),
                            )
                            .broken_seq(first.seq),
                        );
                        reported = Some(damage);
                    }
                }
            },
            Ok(Err(e)) => error!(cause = %e, "cannot verify the audit trail"),
            Err(e) => error!(cause = %e, "audit verification task failed"),
        }
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}
