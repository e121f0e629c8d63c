//! The FG's reports over a broker's data directory: `ketenpost-broker audit <report>`.
//!
//! A [`Session`] opens the broker's database, checks the federation's signed policy and
//! directory, and reads the audit trail on behalf of a [`Viewer`]. Every read is itself
//! audited first: an `audit_read` record naming the reader's organisation (none for the
//! federation's FG), the report, and the case and party it asked about. It is appended
//! to the same hash chain the broker writes, so the chain stays valid and `audit verify`
//! still passes; if the read cannot be recorded, nothing is read.
//!
//! # Live and offline
//! An FG reads a running broker over the protocol (`FgRead`) with an FG certificate the
//! directory lists (`fgs`): the broker scopes the report to that FG and records the read
//! with the verified organisation (`server/fg.rs`). [`Session`] is the forensic path: it
//! opens a stopped broker's data directory (or a backup); sled allows one process per
//! database, so while the broker runs [`Session::open`] fails with
//! [`FgError::BrokerRunning`]. Such a read is recorded as offline, naming nobody: nobody's
//! identity was checked. Both paths share [`Query`] and [`render`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use ketenpost_schemas::calendar::Calendar;
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::duration::PolicyDuration;
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::keys;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol::FgQuery;

use crate::audit::{AuditEntry, AuditError, AuditEvent, AuditRecord, AuditTrail, Head, Outcome};
use crate::config::BrokerConfig;
use crate::report::{self, Filter, HtmlReport, Viewer};

/// What can go wrong when an FG reads the trail.
#[derive(Debug, thiserror::Error)]
pub enum FgError {
    /// A federation document or key cannot be read or does not verify.
    #[error("{0}")]
    Config(String),
    /// A filter or the reader's identity is not valid; nothing was read.
    #[error("{0}")]
    Usage(String),
    /// The data directory holds no broker database.
    #[error("no broker database at {}", .0.display())]
    NoDatabase(PathBuf),
    /// The database is locked: the broker is running.
    #[error("the broker's database at {} is in use (is the broker running?): stop the broker, or run the report on a copy of the data directory", .0.display())]
    BrokerRunning(PathBuf),
    /// sled failed.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// The audit trail could not be read or extended.
    #[error("audit trail: {0}")]
    Audit(#[from] AuditError),
    /// An agent's exported trail (`--agent-trail`) cannot be read, or its hash chain is
    /// broken; none of it is used.
    #[error("agent trail {}: {message}", .file.display())]
    AgentTrail {
        /// The file.
        file: PathBuf,
        /// What is wrong (names the first broken record, never its content).
        message: String,
    },
}

impl FgError {
    /// Whether the error is the caller's (exit code 64) rather than the system's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            FgError::Config(_) | FgError::Usage(_) | FgError::NoDatabase(_)
        )
    }
}

/// The reports, each with the reason code its `audit_read` record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Flows between parties per purpose and kind.
    Flows,
    /// Refusals by reason.
    Refusals,
    /// Non-consent grounds used.
    Grounds,
    /// Late and overdue deadlines.
    Deadlines,
    /// Breach notices and their state.
    Breaches,
    /// Consents granted and withdrawn.
    Consents,
    /// Deletion orders and confirmations.
    Deletions,
    /// The data subject's access report for one case.
    Access,
    /// Data subjects' requests (access, ad-hoc deletion, correction), their state and term.
    Requests,
    /// The (filtered) records themselves, for export.
    Records,
    /// The HTML report with every table and the flow graph.
    Html,
}

impl FromStr for ReportKind {
    type Err = FgError;
    fn from_str(s: &str) -> Result<Self, FgError> {
        Ok(match s {
            "flows" => ReportKind::Flows,
            "refusals" => ReportKind::Refusals,
            "grounds" => ReportKind::Grounds,
            "deadlines" => ReportKind::Deadlines,
            "breaches" => ReportKind::Breaches,
            "consents" => ReportKind::Consents,
            "deletions" => ReportKind::Deletions,
            "access" => ReportKind::Access,
            "requests" => ReportKind::Requests,
            "records" => ReportKind::Records,
            "html" => ReportKind::Html,
            other => {
                return Err(FgError::Usage(format!(
                    "unknown report '{other}': flows, refusals, grounds, deadlines, breaches, \
                     consents, deletions, access, requests, records or html"
                )))
            }
        })
    }
}

impl ReportKind {
    /// The name of the report (`flows`, ...), as the CLI and [`FgQuery::report`] say it.
    pub fn name(self) -> &'static str {
        self.code()
            .trim_start_matches("report_")
            .trim_start_matches("export_")
    }

    /// The reason code of the `audit_read` record.
    pub fn code(self) -> &'static str {
        match self {
            ReportKind::Flows => "report_flows",
            ReportKind::Refusals => "report_refusals",
            ReportKind::Grounds => "report_grounds",
            ReportKind::Deadlines => "report_deadlines",
            ReportKind::Breaches => "report_breaches",
            ReportKind::Consents => "report_consents",
            ReportKind::Deletions => "report_deletions",
            ReportKind::Access => "report_access",
            ReportKind::Requests => "report_requests",
            ReportKind::Records => "export_records",
            ReportKind::Html => "report_html",
        }
    }
}

/// How a report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Text,
    /// A JSON array of rows.
    Json,
    /// CSV with a header line.
    Csv,
    /// JSON Lines in the Logboek Dataverwerkingen field names (records only).
    Jsonl,
    /// The self-contained HTML report.
    Html,
}

impl Format {
    /// The default format of a report.
    pub fn default_for(kind: ReportKind) -> Format {
        match kind {
            ReportKind::Html => Format::Html,
            ReportKind::Records => Format::Jsonl,
            _ => Format::Text,
        }
    }

    /// The name of the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Html => "html",
        }
    }

    /// The media type of a report in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain",
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Jsonl => "application/jsonl",
            Format::Html => "text/html",
        }
    }
}

/// What an FG asked for, checked: the report, its format and the filter. The same for a
/// live read (an [`FgQuery`] over the protocol) and an offline one (the CLI's flags).
#[derive(Clone, Debug)]
pub struct Query {
    /// The report.
    pub kind: ReportKind,
    /// Its format.
    pub format: Format,
    /// Which records.
    pub filter: Filter,
}

impl Query {
    /// Parse and check an FG's request; the error names the bad value.
    pub fn parse(q: &FgQuery) -> Result<Query, FgError> {
        let kind: ReportKind = q.report.parse()?;
        let format = match &q.format {
            Some(f) => f.parse()?,
            None => Format::default_for(kind),
        };
        let outcome = match q.outcome.as_deref() {
            None => None,
            Some("ok") => Some(Outcome::Ok),
            Some("refused") => Some(Outcome::Refused),
            Some("flagged") => Some(Outcome::Flagged),
            Some(o) => {
                return Err(FgError::Usage(format!(
                    "unknown outcome '{o}': ok, refused or flagged"
                )))
            }
        };
        let party = q
            .party
            .as_deref()
            .map(|p| {
                p.parse()
                    .map_err(|_| FgError::Usage(format!("'{p}' is not an OIN (20 digits)")))
            })
            .transpose()?;
        let filter = Filter {
            from: q.from.as_deref().map(parse_time).transpose()?,
            until: q.until.as_deref().map(parse_time).transpose()?,
            party,
            case_ref: q.case_ref.clone(),
            purpose: q.purpose.clone(),
            kind: q.kind.clone(),
            outcome,
        };
        if kind == ReportKind::Access && filter.case_ref.is_none() {
            return Err(FgError::Usage(
                "the access report needs --case <case reference>".into(),
            ));
        }
        Ok(Query {
            kind,
            format,
            filter,
        })
    }

    /// The `audit_read` record of this read, before anything is read. A live read names
    /// the FG's organisation, whose certificate the broker verified; an offline read (of a
    /// stopped broker's data directory) names nobody, since nobody's identity was checked.
    pub fn audit_entry(&self, reader: Reader<'_>) -> AuditEntry {
        let mut entry = AuditEntry::new(AuditEvent::AuditRead, Outcome::Ok);
        entry = match reader {
            Reader::Live {
                oin,
                federation: false,
            } => entry
                .actor(oin)
                .reason_explained(self.kind.code(), "live, FG certificate"),
            Reader::Live {
                oin,
                federation: true,
            } => entry
                .actor(oin)
                .reason_explained(self.kind.code(), "live, federation FG certificate"),
            Reader::Offline => {
                entry.reason_explained(self.kind.code(), "offline, identity not verified")
            }
        };
        let f = &self.filter;
        if let Some(c) = &f.case_ref {
            entry = entry.case_ref(c);
        }
        if let Some(p) = &f.party {
            entry = entry.counterparty(p);
        }
        if let Some(p) = &f.purpose {
            entry = entry.purpose(p);
        }
        if let Some(k) = &f.kind {
            entry = entry.kind(k);
        }
        entry
    }
}

/// Who reads, for the `audit_read` record.
#[derive(Clone, Copy, Debug)]
pub enum Reader<'a> {
    /// Over the protocol with an FG certificate the directory lists.
    Live {
        /// The FG's organisation.
        oin: &'a Oin,
        /// The federation's FG (scope covenant).
        federation: bool,
    },
    /// The data directory of a stopped broker, read by whoever can read it.
    Offline,
}

/// What a report is rendered against besides the records.
#[derive(Clone, Copy, Debug)]
pub struct ReportContext<'a> {
    /// The covenant policy.
    pub policy: &'a Policy,
    /// The partner directory (for names).
    pub directory: &'a Directory,
    /// The trail's head when the report was read.
    pub head: (u64, &'a str),
}

impl FromStr for Format {
    type Err = FgError;
    fn from_str(s: &str) -> Result<Self, FgError> {
        Ok(match s {
            "text" => Format::Text,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "jsonl" => Format::Jsonl,
            "html" => Format::Html,
            other => {
                return Err(FgError::Usage(format!(
                    "unknown format '{other}': text, json, csv, jsonl or html"
                )))
            }
        })
    }
}

/// An open broker database and the federation's documents, for reading the trail.
pub struct Session {
    trail: AuditTrail,
    /// The covenant policy.
    pub policy: Policy,
    /// The partner directory.
    pub directory: Directory,
    db: sled::Db,
    /// sled's log, synced after a flush ([`ketenpost_transport::durable`]).
    log: ketenpost_transport::durable::LogSync,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("trail", &self.trail)
            .finish_non_exhaustive()
    }
}

fn read_text(path: &Path) -> Result<String, FgError> {
    std::fs::read_to_string(path)
        .map_err(|e| FgError::Config(format!("cannot read {}: {e}", path.display())))
}

impl Session {
    /// Open the broker's data directory with its configuration: verify the policy and the
    /// directory against the federation key, then open the database and the trail.
    pub fn open(config: &BrokerConfig) -> Result<Session, FgError> {
        let f = &config.federation;
        let bad = |what: &str, e: &dyn std::fmt::Display| FgError::Config(format!("{what}: {e}"));
        let fed_key = keys::verifying_key_from_text(&read_text(&f.public_key)?)
            .map_err(|e| bad("federation public key", &e))?;
        let docs = crate::documents::load(config, &fed_key).map_err(|e| {
            bad(
                "the policy and directory are not validly signed by the federation key",
                &e,
            )
        })?;
        let (policy, directory) = (docs.policy, docs.directory);
        let key = keys::signing_key_from_text(&read_text(&f.signing_key)?)
            .map_err(|e| bad("broker signing key", &e))?;
        let path = config.data_dir.join("broker.sled");
        if !path.exists() {
            return Err(FgError::NoDatabase(path));
        }
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    FgError::BrokerRunning(path.clone())
                }
                other => FgError::Storage(other),
            })?;
        let log = ketenpost_transport::durable::LogSync::open(&path)
            .map_err(|e| FgError::Storage(e.into()))?;
        let trail = AuditTrail::open(&db, &crate::audit::archive_dir(&config.data_dir), key)?;
        Ok(Session {
            trail,
            policy,
            directory,
            db,
            log,
        })
    }

    /// The reader, from `--as OIN` or `--federation-fg`. An organisation must be a party
    /// of the directory.
    pub fn viewer(&self, as_oin: Option<&str>, federation: bool) -> Result<Viewer, FgError> {
        match (as_oin, federation) {
            (Some(_), true) => Err(FgError::Usage(
                "give either --as <OIN> or --federation-fg, not both".into(),
            )),
            (None, false) => Err(FgError::Usage(
                "say whose FG reads: --as <OIN> for one organisation, or --federation-fg".into(),
            )),
            (None, true) => Ok(Viewer::Federation),
            (Some(o), false) => {
                let oin: Oin = o
                    .parse()
                    .map_err(|_| FgError::Usage(format!("'{o}' is not an OIN (20 digits)")))?;
                if !self.directory.parties.iter().any(|p| p.oin == oin) {
                    return Err(FgError::Usage(format!(
                        "{oin} is not a party of this covenant's directory"
                    )));
                }
                Ok(Viewer::Organisation(oin))
            }
        }
    }

    /// Check a filter's values against the policy, so a typo is an error rather than an
    /// empty report.
    pub fn check_filter(&self, filter: &Filter) -> Result<(), FgError> {
        check_filter(&self.policy, filter)
    }

    /// The head of the trail.
    pub fn head(&self) -> Head {
        self.trail.head()
    }

    /// What a report of this session is rendered against, at trail head `head`.
    pub fn context<'a>(&'a self, head: &'a Head) -> ReportContext<'a> {
        ReportContext {
            policy: &self.policy,
            directory: &self.directory,
            head: (head.seq, &head.hash),
        }
    }

    /// [`Session::read_query`] for a report with its default format.
    pub fn read(
        &self,
        viewer: &Viewer,
        filter: &Filter,
        report: ReportKind,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, FgError> {
        let query = Query {
            kind: report,
            format: Format::default_for(report),
            filter: filter.clone(),
        };
        self.read_query(viewer, &query, now)
    }

    /// Record the read (offline: no identity), then read the records `viewer` may see
    /// that pass the query's filter, in trail order.
    pub fn read_query(
        &self,
        viewer: &Viewer,
        query: &Query,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, FgError> {
        check_filter(&self.policy, &query.filter)?;
        self.trail.append(query.audit_entry(Reader::Offline), now)?;
        self.log.flush(&self.db)?;
        let f = &query.filter;
        let records = self.trail.records_between(
            f.from.unwrap_or(DateTime::<Utc>::MIN_UTC),
            f.until.unwrap_or(DateTime::<Utc>::MAX_UTC),
        )?;
        Ok(report::scope(records, viewer, f))
    }
}

/// Read an agent's exported audit trail (`ketenpost-agent audit export`: JSON lines of
/// [`AuditRecord`], exactly as the agent stores them) and verify its hash chain from
/// record 1. A broken or partial file is refused whole, naming the first broken record.
pub fn read_agent_trail(path: &Path) -> Result<Vec<AuditRecord>, FgError> {
    let bytes = std::fs::read(path).map_err(|e| FgError::AgentTrail {
        file: path.to_owned(),
        message: format!("cannot read it: {e}"),
    })?;
    parse_agent_trail(&bytes, path)
}

/// Parse and verify an agent's exported trail (see [`read_agent_trail`]); `source` names
/// it in errors (its file, or its place in a live read).
pub fn parse_agent_trail(bytes: &[u8], source: &Path) -> Result<Vec<AuditRecord>, FgError> {
    let bad = |message: String| FgError::AgentTrail {
        file: source.to_owned(),
        message,
    };
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let verdict = ketenpost_audit::verify_exported(lines.iter().copied());
    if let Some(seq) = verdict.first_broken {
        return Err(bad(format!(
            "the hash chain is broken at record {seq} ({}); refusing the whole file",
            verdict.problem.as_deref().unwrap_or("broken")
        )));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| crate::audit::parse_record(i as u64 + 1, l).map_err(|e| bad(e.to_string())))
        .collect()
}

/// Whether an agent's record is one the broker's trail cannot hold: a message its agent
/// refused before it reached the broker, a delivery its agent refused, or an access
/// request (and its answer) for which the agent found no case to ask about. The agent's
/// other records (the broker's answers, receipts, deletions) are the same facts the
/// broker records itself; they stay out of the reports so nothing is counted twice.
pub fn agent_only(r: &AuditRecord) -> bool {
    match r.event {
        AuditEvent::EarlyRefused | AuditEvent::DeliveryRefused => true,
        AuditEvent::AccessRequested | AuditEvent::AccessAnswered => r.case_ref.is_none(),
        _ => false,
    }
}

/// Add the records of agents' trails to a report's (already scoped) broker records, in
/// time order: only [`agent_only`] records, only those the filter keeps, and for an
/// organisation's FG only those of its own agent (the actor is that organisation).
pub fn merge_agent_records(
    mut records: Vec<AuditRecord>,
    agent: Vec<AuditRecord>,
    viewer: &Viewer,
    filter: &Filter,
) -> Vec<AuditRecord> {
    let mine = |r: &AuditRecord| match viewer {
        Viewer::Federation => true,
        Viewer::Organisation(oin) => r.actor.as_deref() == Some(oin.as_str()),
    };
    records.extend(
        agent
            .into_iter()
            .filter(|r| agent_only(r) && mine(r) && filter.matches(r)),
    );
    // Stable: records of one instant keep the broker's order first.
    records.sort_by_key(|r| r.time);
    records
}

/// Check a filter's values against the policy, so a typo is an error rather than an
/// empty report.
pub fn check_filter(policy: &Policy, filter: &Filter) -> Result<(), FgError> {
    if let Some(c) = &filter.case_ref {
        CaseRef::from_str(c)
            .map_err(|_| FgError::Usage(format!("'{c}' is not a case reference")))?;
    }
    if let Some(k) = &filter.kind {
        Kind::from_str(k).map_err(|_| FgError::Usage(format!("unknown kind '{k}'")))?;
    }
    if let Some(p) = &filter.purpose {
        let known = policy
            .purposes
            .values()
            .any(|q| &q.id == p || &q.processing_activity == p);
        if !known {
            return Err(FgError::Usage(format!(
                "the policy has no purpose or processing activity '{p}'"
            )));
        }
    }
    if let (Some(f), Some(u)) = (filter.from, filter.until) {
        if f >= u {
            return Err(FgError::Usage("--from must be before --until".into()));
        }
    }
    Ok(())
}

/// A time from the command line: RFC 3339, or a date (`2025-03-01`) meaning 00:00 in
/// Amsterdam on that day, summer or winter time.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, FgError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        FgError::Usage(format!(
            "'{text}' is not a time (RFC 3339, e.g. 2025-03-01T09:00:00Z) or a date (2025-03-01)"
        ))
    })?;
    // "0 workdays" ends at the end of the local day it starts in, so counted from noon UTC
    // on the day before it gives 00:00 Amsterdam time on `date`.
    let noon_before = date
        .pred_opt()
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| FgError::Usage(format!("'{text}' is out of range")))?;
    Ok(PolicyDuration::Workdays(0).deadline(noon_before, &Calendar::dutch()))
}

/// JSON rows with a `names` object beside each row: the directory name of every OIN the
/// row mentions. The rows themselves keep their fields, so consumers stay compatible.
fn with_names(value: serde_json::Value, directory: &Directory) -> serde_json::Value {
    fn oins(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => {
                out.extend(s.split(' ').map(str::to_owned));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| oins(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| oins(x, out)),
            _ => {}
        }
    }
    let serde_json::Value::Array(rows) = value else {
        return value;
    };
    serde_json::Value::Array(
        rows.into_iter()
            .map(|mut row| {
                let mut found = Vec::new();
                oins(&row, &mut found);
                let names: serde_json::Map<String, serde_json::Value> = found
                    .into_iter()
                    .filter_map(|w| {
                        let p = directory.party(&w.parse::<Oin>().ok()?)?;
                        Some((w, serde_json::Value::String(p.name.clone())))
                    })
                    .collect();
                if let serde_json::Value::Object(o) = &mut row {
                    o.insert("names".into(), serde_json::Value::Object(names));
                }
                row
            })
            .collect(),
    )
}

/// For a text report: each purpose the records are about, with its processing activity,
/// legal basis and case retention from the policy.
fn purposes_preamble(records: &[AuditRecord], policy: &Policy) -> String {
    let mut seen = std::collections::BTreeSet::new();
    for r in records {
        if let Some(p) = &r.purpose {
            seen.insert(p.as_str());
        }
    }
    let mut out = String::new();
    for id in seen {
        if let Some(p) = policy
            .purposes
            .values()
            .find(|p| p.id == id || p.processing_activity == id)
        {
            out.push_str(&format!(
                "purpose {} ({}): processing activity {}, legal basis {}, case retention {}\n",
                p.id, p.name, p.processing_activity, p.legal_basis, p.case_retention
            ));
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Write a report of `records` (already scoped) in `format`.
pub fn render(
    kind: ReportKind,
    format: Format,
    records: &[AuditRecord],
    viewer: &Viewer,
    filter: &Filter,
    cx: ReportContext<'_>,
    now: DateTime<Utc>,
) -> Result<String, FgError> {
    let policy = cx.policy;
    if format == Format::Html || kind == ReportKind::Html {
        return Ok(report::html(&HtmlReport {
            viewer,
            filter,
            records,
            policy,
            directory: cx.directory,
            generated_at: now,
            head: (cx.head.0, cx.head.1.to_owned()),
        }));
    }
    if kind == ReportKind::Records {
        return match format {
            Format::Jsonl | Format::Json => Ok(report::jsonl(records)),
            Format::Csv => Ok(report::csv(records)),
            Format::Text => {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            r.seq.to_string(),
                            r.time.to_rfc3339(),
                            r.event.to_string(),
                            r.outcome.to_string(),
                            r.actor.clone().unwrap_or_else(|| "-".into()),
                            r.counterparties.join(" "),
                            r.case_ref.clone().unwrap_or_else(|| "-".into()),
                            r.kind.clone().unwrap_or_else(|| "-".into()),
                            r.reason.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                Ok(report::text_table(
                    &[
                        "seq",
                        "time",
                        "event",
                        "outcome",
                        "actor",
                        "counterparties",
                        "case_ref",
                        "kind",
                        "reason",
                    ],
                    &rows,
                ))
            }
            Format::Html => Err(FgError::Usage("unreachable format".into())),
        };
    }
    if format == Format::Jsonl {
        return Err(FgError::Usage(
            "jsonl is the export format of `audit records`; use json, csv or text here".into(),
        ));
    }
    let directory = cx.directory;
    macro_rules! out {
        ($rows:expr, $cells:path) => {{
            let rows = $rows;
            match format {
                Format::Json => {
                    let value =
                        serde_json::to_value(&rows).map_err(|e| FgError::Usage(e.to_string()))?;
                    serde_json::to_string_pretty(&with_names(value, directory))
                        .map(|mut s| {
                            s.push('\n');
                            s
                        })
                        .map_err(|e| FgError::Usage(e.to_string()))
                }
                Format::Csv => {
                    let (h, r) = $cells(&rows);
                    Ok(report::csv_table(&h, &report::named_cells(r, directory)))
                }
                _ => {
                    let (h, r) = $cells(&rows);
                    let mut text = purposes_preamble(records, policy);
                    text.push_str(&report::text_table(&h, &report::named_cells(r, directory)));
                    Ok(text)
                }
            }
        }};
    }
    match kind {
        ReportKind::Flows => out!(report::flows(records), report::rows::flows),
        ReportKind::Refusals => out!(report::refusals(records), report::rows::refusals),
        ReportKind::Grounds => out!(report::grounds(records), report::rows::grounds),
        ReportKind::Deadlines => out!(report::deadlines(records), report::rows::deadlines),
        ReportKind::Breaches => out!(report::breaches(records), report::rows::breaches),
        ReportKind::Consents => out!(report::consents(records), report::rows::consents),
        ReportKind::Deletions => out!(report::deletions(records), report::rows::deletions),
        ReportKind::Access => {
            let case = filter.case_ref.as_deref().ok_or_else(|| {
                FgError::Usage("the access report needs --case <case reference>".into())
            })?;
            out!(report::access(records, case, policy), report::rows::access)
        }
        ReportKind::Requests => out!(
            crate::requests::requests(records, now),
            crate::requests::cells
        ),
        ReportKind::Records | ReportKind::Html => Err(FgError::Usage("unreachable".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_date_is_midnight_in_amsterdam() {
        // Winter time (UTC+1) and summer time (UTC+2).
        assert_eq!(
            parse_time("2025-03-01").unwrap(),
            Utc.with_ymd_and_hms(2025, 2, 28, 23, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("2025-07-01").unwrap(),
            Utc.with_ymd_and_hms(2025, 6, 30, 22, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("2025-03-01T09:00:00+01:00").unwrap(),
            Utc.with_ymd_and_hms(2025, 3, 1, 8, 0, 0).unwrap()
        );
        assert!(matches!(parse_time("yesterday"), Err(FgError::Usage(_))));
    }
}
