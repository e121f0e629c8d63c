//! The alert dispatcher: turns new audit records into alerts (see [`crate::alerts`]) and
//! sends them to the FGs' webhooks until each is accepted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::Shared;
use crate::alerts::{self, Alert, Endpoint};
use crate::audit::{AuditEntry, AuditEvent};
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
    if shared.config.alerts.webhook.is_empty() || shared.store.has_alert_cursor()? {
        return Ok(());
    }
    shared.store.stage_alerts(shared.audit.head().seq, &[])
}

pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let webhooks = shared.config.alerts.webhook.clone();
    if webhooks.is_empty() {
        return;
    }
    let endpoints: Vec<Option<Endpoint>> = webhooks
        .iter()
        .map(|w| match Endpoint::parse(&w.url) {
            Ok(e) => Some(e),
            Err(e) => {
                error!(cause = %e, "webhook ignored");
                None
            }
        })
        .collect();
    let every = Duration::from_millis(shared.config.alerts.interval_ms);
    // Per receiver: when to try again, and the wait after the next failure.
    let mut backoff: HashMap<u32, (tokio::time::Instant, Duration)> = HashMap::new();
    info!(webhooks = webhooks.len(), "FG alerts on");
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
            match alerts::post(endpoint, &id, body, &signature).await {
                Ok(()) => {
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
                            shared.counters.alert_sent();
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
                    warn!(receiver, cause = %e, retry_in = ?wait, "an FG webhook did not accept an alert; retrying");
                }
            }
        }
    }
}

/// Stage the alerts of the records after the cursor; how many.
fn stage(shared: &Shared, webhooks: &[crate::config::WebhookConfig]) -> Result<usize, StoreError> {
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
        if !alerts::alerts_about(record.event) {
            continue;
        }
        for receiver in alerts::receivers(&record, webhooks) {
            let alert = Alert::of(&record, receiver, &docs.directory);
            let body = serde_json::to_vec(&alert).unwrap_or_default();
            staged.push((alert_key(receiver, record.seq), body));
        }
    }
    shared.store.stage_alerts(last, &staged)?;
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
        _ => "alert",
    }
}
