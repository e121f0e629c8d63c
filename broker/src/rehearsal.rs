//! Rehearsing deadlines and retention: what the broker would do at a later time, run on a
//! scratch copy of a backup with the clock moved there (no libfaketime, no production
//! data touched).
//!
//! [`rehearse`] restores the backup into a scratch folder, starts a broker on it with a
//! manual clock standing at the chosen time (no network beyond loopback, no alerts, no
//! metrics), runs one expiry, deadline and retention sweep, stops, and reads back the
//! audit records the drill produced: expiries, deadline notices, deletion orders. The
//! scratch folder is removed afterwards; the backup is never written to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_core::clock::ManualClock;

use crate::audit::AuditRecord;
use crate::config::BrokerConfig;
use crate::fg::{Format, Query, ReportKind, Session};
use crate::report::{Filter, Viewer};
use crate::server::Broker;

/// What a drill found.
#[derive(Debug)]
pub struct Rehearsal {
    /// When the drill stood.
    pub at: DateTime<Utc>,
    /// The records the sweep at `at` wrote (the drill's own start and stop left out).
    pub records: Vec<AuditRecord>,
    /// How many of each event.
    pub counts: BTreeMap<String, usize>,
}

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    /// The backup is not usable.
    #[error(transparent)]
    Backup(#[from] crate::store::BackupError),
    /// The drill's broker failed.
    #[error("the drill's broker: {0:#}")]
    Broker(#[from] anyhow::Error),
    /// Its trail could not be read back.
    #[error(transparent)]
    Read(#[from] crate::fg::FgError),
    /// `at` lies before the backup was taken.
    #[error("the drill must stand after the backup was taken ({0})")]
    Before(DateTime<Utc>),
    /// The runtime for the drill's broker could not start.
    #[error(transparent)]
    Runtime(std::io::Error),
}

/// How [`render`] writes a drill: a text summary and table, or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RehearsalFormat {
    /// The counts and a table of the records (the default).
    Text,
    /// `{"at", "counts", "records"}`, pretty-printed.
    Json,
}

impl std::str::FromStr for RehearsalFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<RehearsalFormat, String> {
        match s {
            "text" => Ok(RehearsalFormat::Text),
            "json" => Ok(RehearsalFormat::Json),
            other => Err(format!("unknown format '{other}': text or json")),
        }
    }
}

/// Removes the scratch folder however the drill ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the drill: `config` names the federation files (its data directory, listen
/// address, alerts and metrics are replaced), `backup` a folder made by an online backup.
pub async fn rehearse(
    mut config: BrokerConfig,
    backup: &Path,
    at: DateTime<Utc>,
) -> Result<Rehearsal, RehearsalError> {
    let manifest = crate::store::manifest(backup)?;
    if at < manifest.taken_at {
        return Err(RehearsalError::Before(manifest.taken_at));
    }
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "ketenpost-rehearsal-{}",
        uuid::Uuid::now_v7().simple()
    )));
    crate::store::restore(backup, &scratch.0)?;
    config.data_dir = scratch.0.clone();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.tcp.listen = None;
    config.metrics.listen = None;
    config.alerts.webhook.clear();
    config.backup.dir = None;
    let clock = ManualClock::new(at);
    let broker = Broker::start_with_clock(config.clone(), Arc::new(clock)).await?;
    broker.sweep(at).await;
    broker.shutdown().await;
    let session = Session::open(&config)?;
    let query = Query {
        kind: ReportKind::Records,
        format: Format::Jsonl,
        filter: Filter {
            from: Some(at),
            ..Filter::default()
        },
    };
    let records: Vec<AuditRecord> = session
        .read_query(&Viewer::Federation, &query, at)?
        .into_iter()
        .filter(|r| {
            !matches!(
                r.event,
                crate::audit::AuditEvent::BrokerStarted
                    | crate::audit::AuditEvent::BrokerStopped
                    | crate::audit::AuditEvent::Checkpoint
                    | crate::audit::AuditEvent::AuditRead
            )
        })
        .collect();
    let mut counts = BTreeMap::new();
    for r in &records {
        *counts.entry(r.event.as_str().to_owned()).or_default() += 1;
    }
    drop(session);
    drop(scratch);
    Ok(Rehearsal {
        at,
        records,
        counts,
    })
}

/// `ketenpost-broker rehearse`: run the drill ([`rehearse`]) on a runtime of its own and
/// [`render`] what it found.
pub fn rehearse_blocking(
    config: BrokerConfig,
    backup: &Path,
    at: DateTime<Utc>,
    format: RehearsalFormat,
) -> Result<String, RehearsalError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RehearsalError::Runtime)?;
    let drill = runtime.block_on(rehearse(config, backup, at))?;
    Ok(render(&drill, format))
}

/// A drill as the operator reads it: in text, the time, the count of each event and a
/// table of the records (event, case, kind, actor, parties, reason); in JSON, the time,
/// the counts and the records themselves. Ends with a newline.
pub fn render(drill: &Rehearsal, format: RehearsalFormat) -> String {
    use std::fmt::Write as _;
    if format == RehearsalFormat::Json {
        let body = serde_json::json!({
            "at": drill.at.to_rfc3339(),
            "counts": drill.counts,
            "records": drill.records,
        });
        return format!(
            "{}\n",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    let mut out = format!(
        "Rehearsal at {}: what the broker's sweep would do then.\n",
        drill.at.to_rfc3339()
    );
    if drill.counts.is_empty() {
        out.push_str("Nothing: no message expires, no answer is overdue, no retention ends.\n");
    }
    for (event, n) in &drill.counts {
        let _ = writeln!(out, "  {event}: {n}");
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = drill
        .records
        .iter()
        .map(|r| {
            vec![
                r.event.to_string(),
                dash(&r.case_ref),
                dash(&r.kind),
                dash(&r.actor),
                r.counterparties.join(" "),
                dash(&r.reason),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&crate::report::text_table(
            &["event", "case_ref", "kind", "actor", "parties", "reason"],
            &rows,
        ));
    }
    out
}
