//! The FG's view of the audit trail: who may see which records, filters, the reports and
//! the exports. Pure functions over [`AuditRecord`]s; reading the trail and recording the
//! read is the broker's job (`ketenpost_broker::fg`).
//!
//! # Who sees what
//! The FG of one organisation ([`Viewer::Organisation`]) sees only records that involve
//! its organisation: as the actor, or as a counterparty. Of a record in which it is only a
//! counterparty it sees the actor and itself, not the other counterparties: a signal from
//! A to B and C shows B's FG the flow A → B, never A → C. The federation's FG
//! ([`Viewer::Federation`]) sees every record whole. [`scope`] applies this before any
//! filter or report, so no report can leak around it.
//!
//! # Reports
//! | function | rows | from which records |
//! |---|---|---|
//! | [`flows`] | (from, to, purpose, kind): accepted, refused, late, non-consent | `accepted`, `rejected`, `deadline_late` (`late_on_arrival`), `non_consent_use` |
//! | [`refusals`] | (event, reason, party): count, first, last | every record with outcome `refused` |
//! | [`grounds`] | each message sent on a non-consent ground, to review | `non_consent_use` |
//! | [`deadlines`] | each late arrival, overdue answer (and who was told), late answer | `deadline_late`, `deadline_notice` |
//! | [`breaches`] | each breach notice with its cases, recipients, receipts and state | `accepted` of a `datalek_melding`, `breach_notice`, `deadline_late`, `receipt` |
//! | [`consents`] | each consent, granted and withdrawn | `consent_granted`, `consent_withdrawn` |
//! | [`deletions`] | each deletion order per party, confirmed or not | `deletion_ordered`, `deletion_confirmed` |
//! | [`access`] | for one case: who received data, when, for which purpose, on which ground | `accepted`, `breach_notice`, `non_consent_use`, `receipt` |
//!
//! # Exports
//! [`jsonl`] writes one JSON object per record with the field names of the Logboek
//! Dataverwerkingen; [`csv`] one row per record; [`html`] a self-contained page with an
//! SVG graph of the flows ([`flow_graph_svg`]) and every report as a table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{ConsentRule, Policy, Role};
use serde::Serialize;

use crate::record::{AuditEvent, AuditRecord, Outcome};
use crate::text::{reason_code, time_text};

/// Who reads the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// The FG of one organisation: only flows that involve it.
    Organisation(Oin),
    /// The federation's FG: everything.
    Federation,
}

impl Viewer {
    /// The organisation, for an organisation's FG.
    pub fn oin(&self) -> Option<&Oin> {
        match self {
            Viewer::Organisation(o) => Some(o),
            Viewer::Federation => None,
        }
    }

    /// A short description for report headers.
    pub fn describe(&self, directory: &Directory) -> String {
        match self {
            Viewer::Organisation(o) => format!("FG of {}", label(directory, o.as_str())),
            Viewer::Federation => "the federation's FG (all parties)".to_owned(),
        }
    }
}

/// Which records to report on. Every field narrows; `None` does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Records at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Records with this party as actor or counterparty.
    pub party: Option<Oin>,
    /// Records about this case reference.
    pub case_ref: Option<String>,
    /// Records for this purpose id or processing activity id.
    pub purpose: Option<String>,
    /// Records about this message kind.
    pub kind: Option<String>,
    /// Records with this outcome.
    pub outcome: Option<Outcome>,
}

impl Filter {
    /// Whether a (scoped) record passes the filter.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.from.is_none_or(|f| r.time >= f)
            && self.until.is_none_or(|u| r.time < u)
            && self.party.as_ref().is_none_or(|p| involves(r, p))
            && eq(&self.case_ref, &r.case_ref)
            && self.purpose.as_ref().is_none_or(|p| {
                r.purpose.as_ref() == Some(p) || r.processing_activity.as_ref() == Some(p)
            })
            && eq(&self.kind, &r.kind)
            && self.outcome.is_none_or(|o| r.outcome == o)
    }

    /// Whether the filter narrows anything.
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }
}

fn involves(r: &AuditRecord, p: &Oin) -> bool {
    r.actor.as_deref() == Some(p.as_str()) || r.counterparties.iter().any(|c| c == p.as_str())
}

/// The records `viewer` may see, narrowed as the module docs say, that pass `filter`, in
/// trail order.
pub fn scope(
    records: impl IntoIterator<Item = AuditRecord>,
    viewer: &Viewer,
    filter: &Filter,
) -> Vec<AuditRecord> {
    records
        .into_iter()
        .filter_map(|r| narrow(r, viewer))
        .filter(|r| filter.matches(r))
        .collect()
}

fn narrow(mut r: AuditRecord, viewer: &Viewer) -> Option<AuditRecord> {
    let Viewer::Organisation(me) = viewer else {
        return Some(r);
    };
    let me = me.as_str();
    if r.actor.as_deref() == Some(me) {
        return Some(r);
    }
    if r.counterparties.iter().any(|c| c == me) {
        r.counterparties = vec![me.to_owned()];
        r.recipient_views.retain(|o, _| o == me);
        return Some(r);
    }
    None
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_owned())
}

/// Table cells with organisations named: every OIN of the directory (a cell, or a word
/// of a cell listing several) becomes "Name (OIN)".
pub fn named_cells(rows: Vec<Vec<String>>, directory: &Directory) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|cell| {
                    cell.split(' ')
                        .map(|w| {
                            let listed = w
                                .parse::<Oin>()
                                .is_ok_and(|oin| directory.party(&oin).is_some());
                            if listed {
                                label(directory, w)
                            } else {
                                w.to_owned()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .collect()
}

/// A party's name shortened for a picture or a column head: at most `max` characters.
fn short(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max {
        return name.to_owned();
    }
    // Keep the start and the end: names in one region often differ only at the end
    // ("... Noord", "... Zuid").
    let tail = max / 3;
    let head = max.saturating_sub(tail + 1);
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}

/// The number each party has in the picture and the matrix: its place among the parties
/// that appear, in OIN order, from 1.
fn numbers<'a>(parties: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    parties
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i + 1))
        .collect()
}

/// The directory name of `oin`, or "unknown party".
fn name_of(directory: &Directory, oin: &str) -> String {
    directory
        .parties
        .iter()
        .find(|d| d.oin.as_str() == oin)
        .map(|d| d.name.clone())
        .unwrap_or_else(|| "unknown party".to_owned())
}

/// The sender × recipient matrix of accepted messages (refused in brackets), the picture's
/// companion that stays legible for any number of parties.
pub fn flow_matrix(rows: &[FlowRow], directory: &Directory) -> String {
    let edges = edges(rows);
    let senders: BTreeSet<&str> = edges.iter().map(|e| e.from.as_str()).collect();
    let recipients: BTreeSet<&str> = edges.iter().map(|e| e.to.as_str()).collect();
    let number = numbers(edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]));
    let mut out =
        String::from("<table id=\"flow-matrix\" class=\"matrix\"><thead><tr><th>from \\ to</th>");
    for r in &recipients {
        let _ = write!(
            out,
            "<th title=\"{}\">{}</th>",
            escape(&label(directory, r)),
            number.get(r).copied().unwrap_or(0)
        );
    }
    out.push_str("</tr></thead><tbody>");
    for s in &senders {
        let _ = write!(
            out,
            "<tr><th class=\"name\" title=\"{}\">{} {}</th>",
            escape(&label(directory, s)),
            number.get(s).copied().unwrap_or(0),
            escape(&short(&name_of(directory, s), 40))
        );
        for r in &recipients {
            match edges.iter().find(|e| e.from == *s && e.to == *r) {
                Some(e) => {
                    let accepted: u64 = e.kinds.values().sum();
                    let refused = if e.refused > 0 {
                        format!(" <span class=\"refused\">({})</span>", e.refused)
                    } else {
                        String::new()
                    };
                    let _ = write!(out, "<td>{accepted}{refused}</td>");
                }
                None => out.push_str("<td class=\"zero\">·</td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// "Name (OIN)" from the directory, or the OIN alone.
pub fn label(directory: &Directory, oin: &str) -> String {
    match directory.parties.iter().find(|p| p.oin.as_str() == oin) {
        Some(p) => format!("{} ({oin})", p.name),
        None => oin.to_owned(),
    }
}

// ---- flows ---------------------------------------------------------------------------

/// Messages between two parties for one purpose and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    /// The sender's OIN.
    pub from: String,
    /// The recipient's OIN.
    pub to: String,
    /// The purpose id.
    pub purpose: String,
    /// The kind.
    pub kind: String,
    /// Messages accepted.
    pub accepted: u64,
    /// Messages refused (addressed to `to` when the broker refused them).
    pub refused: u64,
    /// Accepted messages that arrived after their `send_within` deadline.
    pub late: u64,
    /// Accepted messages sent on a non-consent ground.
    pub non_consent: u64,
}

/// Flows between parties per purpose and kind.
pub fn flows(records: &[AuditRecord]) -> Vec<FlowRow> {
    let mut rows: BTreeMap<(String, String, String, String), FlowRow> = BTreeMap::new();
    for r in records {
        let field: fn(&mut FlowRow) -> &mut u64 = match (r.event, r.outcome) {
            (AuditEvent::Accepted, Outcome::Ok) => |f| &mut f.accepted,
            // A breach notice refused for its recipient set is the broker telling the
            // sender whom to address (the agent reseals it), not a refused flow; it shows
            // under refusals as `breach_recipients`.
            (AuditEvent::Rejected, _) if reason_code(r) == "breach_recipients" => continue,
            (AuditEvent::Rejected, _) => |f| &mut f.refused,
            (AuditEvent::DeadlineLate, _) if reason_code(r) == "late_on_arrival" => |f| &mut f.late,
            (AuditEvent::NonConsentUse, _) => |f| &mut f.non_consent,
            _ => continue,
        };
        let from = opt(&r.actor);
        let tos: Vec<String> = if r.counterparties.is_empty() {
            vec!["-".to_owned()]
        } else {
            r.counterparties.clone()
        };
        for to in tos {
            let key = (from.clone(), to, opt(&r.purpose), opt(&r.kind));
            let row = rows.entry(key.clone()).or_insert_with(|| FlowRow {
                from: key.0,
                to: key.1,
                purpose: key.2,
                kind: key.3,
                ..FlowRow::default()
            });
            *field(row) += 1;
        }
    }
    rows.into_values().collect()
}

// ---- refusals ------------------------------------------------------------------------

/// Refusals of one kind by one party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalRow {
    /// The reason code.
    pub reason: String,
    /// What was refused (`rejected` for a message, or the control event).
    pub event: String,
    /// The party whose request was refused.
    pub party: String,
    /// How often.
    pub count: u64,
    /// The first time.
    pub first: String,
    /// The last time.
    pub last: String,
}

/// Refusals by reason.
pub fn refusals(records: &[AuditRecord]) -> Vec<RefusalRow> {
    let mut rows: BTreeMap<(String, String, String), RefusalRow> = BTreeMap::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Refused) {
        let key = (reason_code(r), r.event.to_string(), opt(&r.actor));
        let t = time_text(&r.time);
        let row = rows.entry(key.clone()).or_insert_with(|| RefusalRow {
            reason: key.0,
            event: key.1,
            party: key.2,
            count: 0,
            first: t.clone(),
            last: t.clone(),
        });
        row.count += 1;
        row.last = t;
    }
    let mut out: Vec<RefusalRow> = rows.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    out
}

// ---- non-consent grounds -------------------------------------------------------------

/// One message sent without consent, to be reviewed by the FGs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroundRow {
    /// When it was accepted.
    pub time: String,
    /// The ground (`acute_danger`, `legal_duty`).
    pub ground: String,
    /// The sender.
    pub sender: String,
    /// The recipients.
    pub recipients: Vec<String>,
    /// The case.
    pub case_ref: String,
    /// The purpose.
    pub purpose: String,
    /// The kind.
    pub kind: String,
    /// The message, to find the sender's justification in its own file.
    pub message_id: String,
    /// Whether the FGs were alerted (the policy flags the ground); an unflagged ground is
    /// only recorded, for this review.
    pub alerted: bool,
}

/// Every use of a named ground (instead of consent, or outside the ordinary course of a
/// non-consent basis).
pub fn grounds(records: &[AuditRecord]) -> Vec<GroundRow> {
    records
        .iter()
        .filter(|r| r.event == AuditEvent::NonConsentUse)
        .map(|r| GroundRow {
            time: time_text(&r.time),
            ground: reason_code(r),
            sender: opt(&r.actor),
            recipients: r.counterparties.clone(),
            case_ref: opt(&r.case_ref),
            purpose: opt(&r.purpose),
            kind: opt(&r.kind),
            message_id: opt(&r.message_id),
            alerted: r.outcome == Outcome::Flagged,
        })
        .collect()
}

// ---- deadlines -----------------------------------------------------------------------

/// One missed deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadlineRow {
    /// When the broker noticed.
    pub time: String,
    /// `late_on_arrival`, `answer_overdue` or `answer_late`.
    pub what: String,
    /// The party that was late: the sender of a late message, the party that owes or gave
    /// a late answer.
    pub party: String,
    /// The other parties of the message.
    pub counterparties: Vec<String>,
    /// The case.
    pub case_ref: String,
    /// The purpose.
    pub purpose: String,
    /// The kind of the late message (for an answer: of the answer).
    pub kind: String,
    /// The message that was late, or that waits for the answer.
    pub message_id: String,
    /// For an overdue answer: who got the deadline notice.
    pub notified: Vec<String>,
}

/// Late and overdue deadlines.
pub fn deadlines(records: &[AuditRecord]) -> Vec<DeadlineRow> {
    let mut notified: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.event == AuditEvent::DeadlineNotice)
    {
        notified
            .entry(opt(&r.message_id))
            .or_default()
            .extend(r.counterparties.iter().cloned());
    }
    records
        .iter()
        .filter(|r| r.event == AuditEvent::DeadlineLate)
        .map(|r| {
            let what = reason_code(r);
            let message_id = opt(&r.message_id);
            DeadlineRow {
                time: time_text(&r.time),
                notified: if what == "answer_overdue" {
                    notified
                        .get(&message_id)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
                what,
                party: opt(&r.actor),
                counterparties: r.counterparties.clone(),
                case_ref: opt(&r.case_ref),
                purpose: opt(&r.purpose),
                kind: opt(&r.kind),
                message_id,
            }
        })
        .collect()
}

// ---- breaches ------------------------------------------------------------------------

/// Where a breach notice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachState {
    /// Accepted, but not every recipient has receipted it yet.
    Open,
    /// Every recipient receipted it, and it reached the broker within its `send_within`.
    NotifiedOnTime,
    /// Every recipient receipted it, but it reached the broker after its `send_within`.
    NotifiedLate,
}

impl BreachState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreachState::Open => "open",
            BreachState::NotifiedOnTime => "notified_on_time",
            BreachState::NotifiedLate => "notified_late",
        }
    }
}

/// One breach notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreachRow {
    /// The notice's message id.
    pub message_id: String,
    /// When the broker accepted it.
    pub accepted_at: String,
    /// The party that reported the breach.
    pub sender: String,
    /// The affected cases.
    pub cases: Vec<String>,
    /// The parties it went to (their FGs are alerted through their agents).
    pub recipients: Vec<String>,
    /// Recipients that receipted it, with when.
    pub receipted: BTreeMap<String, String>,
    /// Whether it arrived after its `send_within` deadline (48 h, 12 h to the
    /// procesmanager in Enschede, ...).
    pub late: bool,
    /// Open, notified on time or notified late.
    pub state: BreachState,
}

/// Every breach notice, with its state.
pub fn breaches(records: &[AuditRecord]) -> Vec<BreachRow> {
    let dl = Kind::DatalekMelding.as_str();
    let mut rows: BTreeMap<String, BreachRow> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.event == AuditEvent::Accepted && r.kind.as_deref() == Some(dl))
    {
        let id = opt(&r.message_id);
        order.push(id.clone());
        rows.insert(
            id.clone(),
            BreachRow {
                message_id: id,
                accepted_at: time_text(&r.time),
                sender: opt(&r.actor),
                cases: r.case_ref.iter().cloned().collect(),
                recipients: r.counterparties.clone(),
                receipted: BTreeMap::new(),
                late: false,
                state: BreachState::Open,
            },
        );
    }
    for r in records {
        let Some(row) = r.message_id.as_ref().and_then(|id| rows.get_mut(id)) else {
            continue;
        };
        match r.event {
            AuditEvent::BreachNotice => {
                if let Some(c) = &r.case_ref {
                    if !row.cases.contains(c) {
                        row.cases.push(c.clone());
                    }
                }
            }
            AuditEvent::DeadlineLate if reason_code(r) == "late_on_arrival" => row.late = true,
            AuditEvent::Receipt if r.outcome == Outcome::Ok => {
                if let Some(a) = &r.actor {
                    row.receipted
                        .entry(a.clone())
                        .or_insert_with(|| time_text(&r.time));
                }
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| rows.remove(&id))
        .map(|mut row| {
            let all = row.recipients.iter().all(|p| row.receipted.contains_key(p));
            row.state = match (all, row.late) {
                (false, _) => BreachState::Open,
                (true, false) => BreachState::NotifiedOnTime,
                (true, true) => BreachState::NotifiedLate,
            };
            row
        })
        .collect()
}

// ---- consents ------------------------------------------------------------------------

/// One consent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsentRow {
    /// The consent id.
    pub consent_id: String,
    /// The case.
    pub case_ref: String,
    /// The purpose.
    pub purpose: String,
    /// The party that registered it.
    pub granted_by: String,
    /// When.
    pub granted_at: String,
    /// The parties it names by OIN (a consent by role names none).
    pub parties: Vec<String>,
    /// Who recorded the withdrawal.
    pub withdrawn_by: Option<String>,
    /// When.
    pub withdrawn_at: Option<String>,
}

/// Consents granted and withdrawn.
pub fn consents(records: &[AuditRecord]) -> Vec<ConsentRow> {
    let mut rows: BTreeMap<String, ConsentRow> = BTreeMap::new();
    let mut order = Vec::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        let id = opt(&r.message_id);
        match r.event {
            AuditEvent::ConsentGranted => {
                order.push(id.clone());
                rows.insert(
                    id.clone(),
                    ConsentRow {
                        consent_id: id,
                        case_ref: opt(&r.case_ref),
                        purpose: opt(&r.purpose),
                        granted_by: opt(&r.actor),
                        granted_at: time_text(&r.time),
                        parties: r.counterparties.clone(),
                        withdrawn_by: None,
                        withdrawn_at: None,
                    },
                );
            }
            AuditEvent::ConsentWithdrawn => {
                let row = rows.entry(id.clone()).or_insert_with(|| {
                    // The grant is outside the window or not visible: show the withdrawal.
                    order.push(id.clone());
                    ConsentRow {
                        consent_id: id.clone(),
                        case_ref: opt(&r.case_ref),
                        purpose: opt(&r.purpose),
                        granted_by: "-".into(),
                        granted_at: "-".into(),
                        parties: Vec::new(),
                        withdrawn_by: None,
                        withdrawn_at: None,
                    }
                });
                row.withdrawn_by = Some(opt(&r.actor));
                row.withdrawn_at = Some(time_text(&r.time));
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| rows.remove(&id))
        .collect()
}

// ---- deletions -----------------------------------------------------------------------

/// One party's part of one deletion order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeletionRow {
    /// The order.
    pub order_id: String,
    /// The case.
    pub case_ref: String,
    /// The party ordered to delete.
    pub party: String,
    /// Why (`retention_ended`).
    pub reason: String,
    /// When the order went out.
    pub ordered_at: String,
    /// When the party confirmed; `None`: not confirmed.
    pub confirmed_at: Option<String>,
}

/// Deletion orders and who has (not) confirmed them.
pub fn deletions(records: &[AuditRecord]) -> Vec<DeletionRow> {
    let mut rows: Vec<DeletionRow> = Vec::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        match r.event {
            AuditEvent::DeletionOrdered => {
                for p in &r.counterparties {
                    rows.push(DeletionRow {
                        order_id: opt(&r.message_id),
                        case_ref: opt(&r.case_ref),
                        party: p.clone(),
                        reason: reason_code(r),
                        ordered_at: time_text(&r.time),
                        confirmed_at: None,
                    });
                }
            }
            AuditEvent::DeletionConfirmed => {
                let (order, party) = (opt(&r.message_id), opt(&r.actor));
                if let Some(row) = rows
                    .iter_mut()
                    .find(|d| d.order_id == order && d.party == party)
                {
                    row.confirmed_at = Some(time_text(&r.time));
                }
            }
            _ => {}
        }
    }
    rows
}

// ---- access report -------------------------------------------------------------------

/// One recipient of one message about the case: an answer to "who received my data".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessRow {
    /// When the broker accepted the message (the recipient could fetch it from then on).
    pub time: String,
    /// The party that sent the data.
    pub sender: String,
    /// The party that received it.
    pub recipient: String,
    /// The purpose id.
    pub purpose: String,
    /// The processing activity, as in the parties' registers.
    pub processing_activity: String,
    /// The kind of message.
    pub kind: String,
    /// The legal ground: `consent`, the kind's art. 6 basis (`public_task`, ...),
    /// `covenant` (an older policy naming none), or `non_consent:<ground>`.
    pub ground: String,
    /// The data categories the recipient received: its view's categories under the policy
    /// (`-` for records from before views were recorded).
    pub categories: String,
    /// When the recipient's signed receipt arrived; `None`: not (yet) received.
    pub received_at: Option<String>,
    /// The message.
    pub message_id: String,
}

/// The data subject's access report for one case reference (AVG art. 15, 004:825-853):
/// chronologically, which parties received data about the case, when, for which purpose
/// and on which ground. `records` should already be scoped to the viewer.
pub fn access(records: &[AuditRecord], case_ref: &str, policy: &Policy) -> Vec<AccessRow> {
    let about = |r: &AuditRecord| r.case_ref.as_deref() == Some(case_ref);
    let mut non_consent: BTreeMap<&str, String> = BTreeMap::new();
    let mut receipts: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for r in records {
        let Some(id) = r.message_id.as_deref() else {
            continue;
        };
        match r.event {
            AuditEvent::NonConsentUse => {
                non_consent.insert(id, reason_code(r));
            }
            AuditEvent::Receipt if r.outcome == Outcome::Ok => {
                if let Some(a) = r.actor.as_deref() {
                    receipts
                        .entry((id, a))
                        .or_insert_with(|| time_text(&r.time));
                }
            }
            _ => {}
        }
    }
    let ground = |r: &AuditRecord| -> String {
        let id = r.message_id.as_deref().unwrap_or("");
        if let Some(g) = non_consent.get(id) {
            return format!("non_consent:{g}");
        }
        let rule = r
            .kind
            .as_deref()
            .and_then(|k| k.parse::<Kind>().ok())
            .and_then(|k| policy.rule(r.purpose.as_deref()?, k));
        match rule.map(|r| (r.consent, r.basis)) {
            Some((ConsentRule::Required, _)) => "consent".into(),
            Some((ConsentRule::NotRequired, Some(basis))) => basis.as_str().into(),
            Some((ConsentRule::NotRequired, None)) => "covenant".into(),
            None => "-".into(),
        }
    };
    // The categories of the view the recipient got the message in, under the policy.
    let categories = |r: &AuditRecord, to: &str| -> String {
        let view = r.recipient_views.get(to).map(|v| Role::new(v.as_str()));
        let rule = r
            .kind
            .as_deref()
            .and_then(|k| k.parse::<Kind>().ok())
            .and_then(|k| policy.rule(r.purpose.as_deref()?, k));
        match (view, rule) {
            (Some(v), Some(rule)) => {
                let cats: Vec<String> = rule.view(&v).iter().map(|c| c.to_string()).collect();
                cats.join(" ")
            }
            _ => "-".into(),
        }
    };
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut rows = Vec::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        let counts = match r.event {
            AuditEvent::Accepted => about(r),
            // A breach notice or correction about this case whose header named another
            // case.
            AuditEvent::BreachNotice | AuditEvent::Correction => about(r),
            _ => false,
        };
        if !counts {
            continue;
        }
        let id = opt(&r.message_id);
        for to in &r.counterparties {
            if !seen.insert((id.clone(), to.clone())) {
                continue;
            }
            rows.push(AccessRow {
                time: time_text(&r.time),
                sender: opt(&r.actor),
                recipient: to.clone(),
                purpose: opt(&r.purpose),
                processing_activity: opt(&r.processing_activity),
                kind: opt(&r.kind),
                ground: ground(r),
                categories: categories(r, to),
                received_at: receipts.get(&(id.as_str(), to.as_str())).cloned(),
                message_id: id.clone(),
            });
        }
    }
    rows.sort_by(|a, b| a.time.cmp(&b.time));
    rows
}

// ---- exports -------------------------------------------------------------------------

/// One record in the field names of the Logboek Dataverwerkingen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogboekLine {
    /// The W3C trace id of the message (so the partners' own logs can be joined); for
    /// events without one, the first 32 hex digits of the record's hash.
    pub trace_id: String,
    /// The first 16 hex digits of the record's hash: unique per record.
    pub span_id: String,
    /// The event (`accepted`, `delivered`, `deadline_late`, ...).
    pub name: String,
    /// `STATUS_CODE_OK` (done, also when flagged) or `STATUS_CODE_ERROR` (refused).
    pub status_code: String,
    /// When it happened (an event: start and end are the same instant).
    pub start_time: String,
    /// When it ended.
    pub end_time: String,
    /// `dpl.core.processing_activity_id`: the processing activity of the purpose.
    pub processing_activity_id: Option<String>,
    /// `dpl.core.data_subject_id`: the data subject's pseudonym, the case reference.
    pub data_subject_id: Option<String>,
    /// ketenpost's own fields.
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl LogboekLine {
    /// The Logboek line of a record.
    pub fn of(r: &AuditRecord) -> LogboekLine {
        let hash = |n: usize| r.hash.get(..n).unwrap_or(&r.hash).to_owned();
        let mut attributes = BTreeMap::new();
        let mut put = |k: &str, v: serde_json::Value| {
            attributes.insert(format!("ketenpost.{k}"), v);
        };
        put("seq", r.seq.into());
        put("outcome", r.outcome.as_str().into());
        for (k, v) in [
            ("actor", &r.actor),
            ("user", &r.user),
            ("purpose", &r.purpose),
            ("kind", &r.kind),
            ("message_id", &r.message_id),
            ("reason", &r.reason),
        ] {
            if let Some(v) = v {
                put(k, v.as_str().into());
            }
        }
        if !r.counterparties.is_empty() {
            put("counterparties", r.counterparties.clone().into());
        }
        put("hash", r.hash.clone().into());
        let t = time_text(&r.time);
        LogboekLine {
            trace_id: r.trace_id.clone().unwrap_or_else(|| hash(32)),
            span_id: hash(16),
            name: r.event.to_string(),
            status_code: match r.outcome {
                Outcome::Refused => "STATUS_CODE_ERROR",
                Outcome::Ok | Outcome::Flagged => "STATUS_CODE_OK",
            }
            .to_owned(),
            start_time: t.clone(),
            end_time: t,
            processing_activity_id: r.processing_activity.clone(),
            data_subject_id: r.case_ref.clone(),
            attributes,
        }
    }
}

/// JSON Lines: one [`LogboekLine`] per record.
pub fn jsonl(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        // Plain data always serialises.
        if let Ok(line) = serde_json::to_string(&LogboekLine::of(r)) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Rows as CSV (RFC 4180), with a header line.
pub fn csv_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The columns of [`csv`].
pub const CSV_COLUMNS: [&str; 15] = [
    "seq",
    "time",
    "event",
    "outcome",
    "actor",
    "counterparties",
    "case_ref",
    "purpose",
    "processing_activity",
    "kind",
    "message_id",
    "reason",
    "trace_id",
    "user",
    "hash",
];

/// One CSV row per record; counterparties are separated by `;`.
pub fn csv(records: &[AuditRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                time_text(&r.time),
                r.event.to_string(),
                r.outcome.to_string(),
                r.actor.clone().unwrap_or_default(),
                r.counterparties.join(";"),
                r.case_ref.clone().unwrap_or_default(),
                r.purpose.clone().unwrap_or_default(),
                r.processing_activity.clone().unwrap_or_default(),
                r.kind.clone().unwrap_or_default(),
                r.message_id.clone().unwrap_or_default(),
                r.reason.clone().unwrap_or_default(),
                r.trace_id.clone().unwrap_or_default(),
                r.user.clone().unwrap_or_default(),
                r.hash.clone(),
            ]
        })
        .collect();
    csv_table(&CSV_COLUMNS, &rows)
}

/// Text safe inside HTML and SVG (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// One edge of the flow graph: every message from one party to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edge {
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Accepted messages per kind.
    pub kinds: BTreeMap<String, u64>,
    /// Refused messages.
    pub refused: u64,
    /// Late messages.
    pub late: u64,
}

/// The flow rows folded into one edge per (from, to) pair, purposes merged.
pub fn edges(rows: &[FlowRow]) -> Vec<Edge> {
    let mut out: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for f in rows.iter().filter(|f| f.to != "-" && f.from != "-") {
        let e = out
            .entry((f.from.clone(), f.to.clone()))
            .or_insert_with(|| Edge {
                from: f.from.clone(),
                to: f.to.clone(),
                ..Edge::default()
            });
        if f.accepted > 0 {
            *e.kinds.entry(f.kind.clone()).or_default() += f.accepted;
        }
        e.refused += f.refused;
        e.late += f.late;
    }
    out.into_values().collect()
}

const SVG_SIZE: f64 = 720.0;

/// An SVG picture of the flows: parties on a circle, one curved arrow per (sender,
/// recipient) labelled with the accepted messages per kind; an edge with refusals is red
/// and dashed, one with late messages has an orange label with the count. Every node is a
/// `<g class="node" data-oin="...">`, every edge a `<g class="edge ..." data-from="..."
/// data-to="...">`, so tests and tools can read the picture back.
pub fn flow_graph_svg(rows: &[FlowRow], directory: &Directory) -> String {
    let edges = edges(rows);
    let parties: BTreeSet<&str> = edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect();
    let n = parties.len().max(1);
    let (cx, cy, radius) = (
        SVG_SIZE / 2.0,
        SVG_SIZE / 2.0 - 10.0,
        SVG_SIZE / 2.0 - 110.0,
    );
    let pos: BTreeMap<&str, (f64, f64)> = parties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let a = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
            (*p, (cx + radius * a.cos(), cy + radius * a.sin()))
        })
        .collect();
    // Beyond six parties the labels on the arrows would overlap: the counts are then in
    // each arrow's tooltip and in the matrix beside the picture.
    let labelled = n <= 6;
    let mut svg = String::new();
    // Room left and right of the circle for the names of the outermost parties.
    let pad = 150.0;
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" id="flow-graph" viewBox="{x0} 0 {w} {s}" width="{w}" height="{s}" role="img" aria-label="Flows between parties">"##,
        x0 = -pad,
        w = SVG_SIZE + 2.0 * pad,
        s = SVG_SIZE
    );
    svg.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker><marker id="arrow-refused" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#c0392b"/></marker></defs>"##,
    );
    if edges.is_empty() {
        svg.push_str(r##"<text x="20" y="40" class="empty">No flows in this selection.</text>"##);
    }
    for e in &edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(e.from.as_str()), pos.get(e.to.as_str()))
        else {
            continue;
        };
        // Shorten to the node circles and bend to the left of the direction of travel, so
        // A -> B and B -> A do not overlap.
        let (dx, dy) = (x2 - x1, y2 - y1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let (ux, uy) = (dx / len, dy / len);
        let r = 34.0;
        let (sx, sy, ex, ey) = (x1 + ux * r, y1 + uy * r, x2 - ux * r, y2 - uy * r);
        let bend = 50.0;
        let (mx, my) = ((sx + ex) / 2.0 - uy * bend, (sy + ey) / 2.0 + ux * bend);
        let mut class = String::from("edge");
        if e.refused > 0 {
            class.push_str(" refused");
        }
        if e.late > 0 {
            class.push_str(" late");
        }
        let kinds: Vec<String> = e.kinds.iter().map(|(k, c)| format!("{k} {c}")).collect();
        let mut label = kinds.join(", ");
        if e.refused > 0 {
            if !label.is_empty() {
                label.push_str(", ");
            }
            let _ = write!(label, "refused {}", e.refused);
        }
        let (stroke, marker, dash) = if e.refused > 0 {
            ("#c0392b", "arrow-refused", r#" stroke-dasharray="6 4""#)
        } else {
            ("#444", "arrow", "")
        };
        // The curve passes through the midpoint moved by half the bend; the label sits just
        // outside it, on the side of its own direction.
        let off = bend * 0.5 + 12.0;
        let (lx, ly) = ((sx + ex) / 2.0 - uy * off, (sy + ey) / 2.0 + ux * off + 4.0);
        let text = if labelled {
            format!(
                r##"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" font-size="11" fill="#222" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text>"##,
                escape(&label)
            )
        } else {
            String::new()
        };
        let _ = write!(
            svg,
            r##"<g class="{class}" data-from="{from}" data-to="{to}" data-kinds="{kinds}" data-refused="{refused}" data-late="{late}"><title>{title}</title><path d="M {sx:.1} {sy:.1} Q {mx:.1} {my:.1} {ex:.1} {ey:.1}" fill="none" stroke="{stroke}" stroke-width="{w:.1}"{dash} marker-end="url(#{marker})"/>{text}"##,
            from = escape(&e.from),
            to = escape(&e.to),
            kinds = escape(&kinds.join(";")),
            refused = e.refused,
            late = e.late,
            title = escape(&format!(
                "{} to {}: {label}",
                name_of(directory, &e.from),
                name_of(directory, &e.to)
            )),
            w = 1.5 + (e.kinds.values().sum::<u64>() as f64).ln_1p(),
        );
        if e.late > 0 && labelled {
            let _ = write!(
                svg,
                r##"<text class="late-mark" x="{lx:.1}" y="{:.1}" text-anchor="middle" font-size="11" font-weight="bold" fill="#d35400" stroke="#fff" stroke-width="3" paint-order="stroke">late {}</text>"##,
                ly + 13.0,
                e.late
            );
        }
        svg.push_str("</g>");
    }
    let number = numbers(parties.iter().copied());
    for (p, (x, y)) in &pos {
        let name = name_of(directory, p);
        // Names outside the circle of nodes, away from the arrows inside it; on the left
        // and right they run outward from the node, so they never cross the picture's edge.
        // With many parties every name runs outward, so neighbours at the top and bottom
        // do not write over each other.
        let (anchor, tx, ny, oy) = if labelled && (*x - cx).abs() < radius * 0.5 {
            let (ny, oy) = if *y < cy {
                (y - 51.0, y - 38.0)
            } else {
                (y + 46.0, y + 59.0)
            };
            ("middle", *x, ny, oy)
        } else {
            let (dx, dy) = (x - cx, y - cy);
            let len = (dx * dx + dy * dy).sqrt().max(1.0);
            let (ux, uy) = (dx / len, dy / len);
            let (tx, ty) = (x + ux * 36.0, y + uy * 36.0);
            let anchor = if *x < cx { "end" } else { "start" };
            (anchor, tx, ty - 2.0, ty + 11.0)
        };
        let _ = write!(
            svg,
            r##"<g class="node" data-oin="{oin}"><title>{full}</title><circle cx="{x:.1}" cy="{y:.1}" r="30" fill="#eaf2f8" stroke="#2e86c1" stroke-width="2"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle" font-size="16" font-weight="bold" fill="#1b4f72">{n}</text><text x="{tx:.1}" y="{ny:.1}" text-anchor="{anchor}" font-size="12" font-weight="bold">{name}</text><text x="{tx:.1}" y="{oy:.1}" text-anchor="{anchor}" font-size="10" fill="#555">{oin}</text></g>"##,
            oin = escape(p),
            full = escape(&label(directory, p)),
            n = number.get(p).copied().unwrap_or(0),
            ty = y + 6.0,
            name = escape(&short(&name, 30)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Everything an HTML report shows.
#[derive(Debug)]
pub struct HtmlReport<'a> {
    /// Who reads.
    pub viewer: &'a Viewer,
    /// The filter applied.
    pub filter: &'a Filter,
    /// The scoped records.
    pub records: &'a [AuditRecord],
    /// The policy (for the access report's grounds).
    pub policy: &'a Policy,
    /// The directory (for party names).
    pub directory: &'a Directory,
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
    /// The audit trail's head (seq and hash) when it was read, so a reader can check the
    /// report against a checkpoint.
    pub head: (u64, String),
}

/// [`table_raw`] with organisations named in the cells.
fn table(
    out: &mut String,
    directory: &Directory,
    id: &str,
    title: &str,
    header: &[&str],
    rows: &[Vec<String>],
) {
    table_raw(
        out,
        id,
        title,
        header,
        &named_cells(rows.to_vec(), directory),
    );
}

fn table_raw(out: &mut String, id: &str, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<section id=\"{id}\"><h2>{}</h2>", escape(title));
    if rows.is_empty() {
        out.push_str("<p class=\"none\">None in this selection.</p></section>");
        return;
    }
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// The rows of each report as text cells, shared by the text, CSV and HTML outputs.
pub mod rows {
    use super::*;

    fn list(v: &[String]) -> String {
        if v.is_empty() {
            "-".into()
        } else {
            v.join(" ")
        }
    }

    /// Header and rows of [`flows`].
    pub fn flows(rows: &[FlowRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "from",
                "to",
                "purpose",
                "kind",
                "accepted",
                "refused",
                "late",
                "non_consent",
            ],
            rows.iter()
                .map(|f| {
                    vec![
                        f.from.clone(),
                        f.to.clone(),
                        f.purpose.clone(),
                        f.kind.clone(),
                        f.accepted.to_string(),
                        f.refused.to_string(),
                        f.late.to_string(),
                        f.non_consent.to_string(),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`refusals`].
    pub fn refusals(rows: &[RefusalRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec!["reason", "event", "party", "count", "first", "last"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.reason.clone(),
                        r.event.clone(),
                        r.party.clone(),
                        r.count.to_string(),
                        r.first.clone(),
                        r.last.clone(),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`grounds`].
    pub fn grounds(rows: &[GroundRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "time",
                "ground",
                "sender",
                "recipients",
                "case_ref",
                "purpose",
                "kind",
                "message_id",
                "alerted",
            ],
            rows.iter()
                .map(|g| {
                    vec![
                        g.time.clone(),
                        g.ground.clone(),
                        g.sender.clone(),
                        list(&g.recipients),
                        g.case_ref.clone(),
                        g.purpose.clone(),
                        g.kind.clone(),
                        g.message_id.clone(),
                        if g.alerted { "yes" } else { "no" }.to_owned(),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`deadlines`].
    pub fn deadlines(rows: &[DeadlineRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "time",
                "what",
                "party",
                "counterparties",
                "case_ref",
                "purpose",
                "kind",
                "message_id",
                "notified",
            ],
            rows.iter()
                .map(|d| {
                    vec![
                        d.time.clone(),
                        d.what.clone(),
                        d.party.clone(),
                        list(&d.counterparties),
                        d.case_ref.clone(),
                        d.purpose.clone(),
                        d.kind.clone(),
                        d.message_id.clone(),
                        list(&d.notified),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`breaches`].
    pub fn breaches(rows: &[BreachRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "state",
                "accepted_at",
                "sender",
                "cases",
                "recipients",
                "receipted",
                "late",
                "message_id",
            ],
            rows.iter()
                .map(|b| {
                    vec![
                        b.state.as_str().to_owned(),
                        b.accepted_at.clone(),
                        b.sender.clone(),
                        list(&b.cases),
                        list(&b.recipients),
                        format!("{}/{}", b.receipted.len(), b.recipients.len()),
                        if b.late { "late" } else { "in time" }.to_owned(),
                        b.message_id.clone(),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`consents`].
    pub fn consents(rows: &[ConsentRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "consent_id",
                "case_ref",
                "purpose",
                "granted_by",
                "granted_at",
                "parties",
                "withdrawn_by",
                "withdrawn_at",
            ],
            rows.iter()
                .map(|c| {
                    vec![
                        c.consent_id.clone(),
                        c.case_ref.clone(),
                        c.purpose.clone(),
                        c.granted_by.clone(),
                        c.granted_at.clone(),
                        list(&c.parties),
                        c.withdrawn_by.clone().unwrap_or_else(|| "-".into()),
                        c.withdrawn_at.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`deletions`].
    pub fn deletions(rows: &[DeletionRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "order_id",
                "case_ref",
                "party",
                "reason",
                "ordered_at",
                "confirmed_at",
            ],
            rows.iter()
                .map(|d| {
                    vec![
                        d.order_id.clone(),
                        d.case_ref.clone(),
                        d.party.clone(),
                        d.reason.clone(),
                        d.ordered_at.clone(),
                        d.confirmed_at
                            .clone()
                            .unwrap_or_else(|| "NOT CONFIRMED".into()),
                    ]
                })
                .collect(),
        )
    }

    /// Header and rows of [`access`].
    pub fn access(rows: &[AccessRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        (
            vec![
                "time",
                "recipient",
                "sender",
                "purpose",
                "processing_activity",
                "kind",
                "ground",
                "categories",
                "received_at",
                "message_id",
            ],
            rows.iter()
                .map(|a| {
                    vec![
                        a.time.clone(),
                        a.recipient.clone(),
                        a.sender.clone(),
                        a.purpose.clone(),
                        a.processing_activity.clone(),
                        a.kind.clone(),
                        a.ground.clone(),
                        a.categories.clone(),
                        a.received_at.clone().unwrap_or_else(|| "-".into()),
                        a.message_id.clone(),
                    ]
                })
                .collect(),
        )
    }
}

/// A plain-text table with aligned columns.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

fn filter_text(f: &Filter) -> String {
    if f.is_empty() {
        return "none".to_owned();
    }
    let mut parts = Vec::new();
    if let Some(t) = &f.from {
        parts.push(format!("from {}", time_text(t)));
    }
    if let Some(t) = &f.until {
        parts.push(format!("until {}", time_text(t)));
    }
    if let Some(p) = &f.party {
        parts.push(format!("party {p}"));
    }
    if let Some(c) = &f.case_ref {
        parts.push(format!("case {c}"));
    }
    if let Some(p) = &f.purpose {
        parts.push(format!("purpose {p}"));
    }
    if let Some(k) = &f.kind {
        parts.push(format!("kind {k}"));
    }
    if let Some(o) = &f.outcome {
        parts.push(format!("outcome {o}"));
    }
    parts.join(", ")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:.8em;width:100%}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}thead th{white-space:nowrap}\
th{background:#f4f6f7}p.none{color:#777}.legend span{margin-right:2em}\
table.matrix{width:auto}table.matrix td,table.matrix thead th{text-align:center;min-width:1.8em}table.matrix th.name{white-space:nowrap}table.matrix td.zero{color:#bbb}span.refused{color:#c0392b}\
#flow-graph{max-width:100%;height:auto}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dt{font-weight:bold}\
@page{size:A4;margin:12mm}@media print{body{margin:0;max-width:none}h2{break-after:avoid}tr{break-inside:avoid}#flow-graph{max-height:170mm}}";

/// The self-contained HTML report: scope, the flow graph, and every report as a table
/// (the access report too when the filter names a case). No scripts, no external files.
pub fn html(report: &HtmlReport<'_>) -> String {
    let recs = report.records;
    let flow_rows = flows(recs);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<title>ketenpost FG report</title>");
    let _ = write!(out, "<style>{STYLE}</style></head><body>");
    let _ = write!(
        out,
        "<h1>ketenpost: FG report, covenant {}</h1>",
        escape(&report.policy.covenant.name)
    );
    let _ = write!(
        out,
        "<dl><dt>For</dt><dd>{}</dd><dt>Filter</dt><dd>{}</dd><dt>Generated</dt><dd>{}</dd>\
         <dt>Records</dt><dd>{}</dd><dt>Audit trail head</dt><dd>record {} hash {}</dd></dl>",
        escape(&report.viewer.describe(report.directory)),
        escape(&filter_text(report.filter)),
        escape(&time_text(&report.generated_at)),
        recs.len(),
        report.head.0,
        escape(&report.head.1),
    );
    out.push_str("<section id=\"graph\"><h2>Flows between parties</h2>");
    out.push_str(
        "<p class=\"legend\"><span>arrow: sender to recipient, labelled with accepted \
         messages per kind</span><span style=\"color:#c0392b\">red dashed: refusals</span>\
         <span style=\"color:#d35400\">orange: late messages</span></p>",
    );
    out.push_str(&flow_graph_svg(&flow_rows, report.directory));
    out.push_str("<h2>Messages from sender to recipient</h2><p class=\"legend\"><span>accepted messages; refused in brackets; parties by their number in the picture</span></p>");
    out.push_str(&flow_matrix(&flow_rows, report.directory));
    out.push_str("</section>");
    let flow_edges = edges(&flow_rows);
    let number = numbers(
        flow_edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()]),
    );
    let parties: Vec<Vec<String>> = number
        .iter()
        .map(|(o, n)| vec![n.to_string(), (*o).to_owned(), name_of(report.directory, o)])
        .collect();
    table_raw(
        &mut out,
        "parties",
        "Parties (numbered as in the picture)",
        &["#", "oin", "party"],
        &parties,
    );
    let (h, r) = rows::flows(&flow_rows);
    table(
        &mut out,
        report.directory,
        "flows",
        "Flows per purpose and kind",
        &h,
        &r,
    );
    let (h, r) = rows::refusals(&refusals(recs));
    table(
        &mut out,
        report.directory,
        "refusals",
        "Refusals by reason",
        &h,
        &r,
    );
    let (h, r) = rows::grounds(&grounds(recs));
    table(
        &mut out,
        report.directory,
        "grounds",
        "Grounds used instead of consent or outside the ordinary basis (review each)",
        &h,
        &r,
    );
    let (h, r) = rows::deadlines(&deadlines(recs));
    table(
        &mut out,
        report.directory,
        "deadlines",
        "Late and overdue deadlines",
        &h,
        &r,
    );
    let (h, r) = rows::breaches(&breaches(recs));
    table(
        &mut out,
        report.directory,
        "breaches",
        "Breach notices",
        &h,
        &r,
    );
    let (h, r) = rows::consents(&consents(recs));
    table(
        &mut out,
        report.directory,
        "consents",
        "Consents granted and withdrawn",
        &h,
        &r,
    );
    let (h, r) = rows::deletions(&deletions(recs));
    table(
        &mut out,
        report.directory,
        "deletions",
        "Deletion orders",
        &h,
        &r,
    );
    let (h, r) = crate::requests::cells(&crate::requests::requests(recs, report.generated_at));
    table(
        &mut out,
        report.directory,
        "requests",
        "Data subjects' requests (access, deletion, correction) and their terms",
        &h,
        &r,
    );
    if let Some(case) = &report.filter.case_ref {
        let (h, r) = rows::access(&access(recs, case, report.policy));
        table(
            &mut out,
            report.directory,
            "access",
            &format!("Access report for case {case}"),
            &h,
            &r,
        );
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::GENESIS_HASH;
    use chrono::Duration;

    fn oin(n: u64) -> String {
        format!("{n:020}")
    }

    struct B {
        seq: u64,
        t0: DateTime<Utc>,
        out: Vec<AuditRecord>,
    }

    impl B {
        fn new() -> B {
            B {
                seq: 0,
                t0: Utc::now(),
                out: Vec::new(),
            }
        }
        #[allow(clippy::too_many_arguments)]
        fn add(
            &mut self,
            event: AuditEvent,
            outcome: Outcome,
            actor: Option<u64>,
            to: &[u64],
            case: &str,
            kind: &str,
            id: &str,
            reason: Option<&str>,
        ) {
            self.seq += 1;
            self.out.push(AuditRecord {
                seq: self.seq,
                time: self.t0 + Duration::seconds(self.seq as i64),
                event,
                actor: actor.map(oin),
                user: None,
                case_ref: Some(case.into()),
                purpose: Some("uitstroom".into()),
                processing_activity: Some("test-uitstroom".into()),
                kind: Some(kind.into()),
                message_id: Some(id.into()),
                counterparties: to.iter().map(|n| oin(*n)).collect(),
                outcome,
                reason: reason.map(str::to_owned),
                trace_id: None,
                request_digest: None,
                document_serial: None,
                broken_seq: None,
                recipient_views: Default::default(),
                due_at: None,
                prev_hash: GENESIS_HASH.into(),
                hash: format!("{:064x}", self.seq),
            });
        }
    }

    fn sample() -> Vec<AuditRecord> {
        use AuditEvent::*;
        let mut b = B::new();
        b.add(
            Accepted,
            Outcome::Ok,
            Some(3),
            &[1, 2],
            "case-a",
            "signaal",
            "m1",
            None,
        );
        b.add(
            Accepted,
            Outcome::Ok,
            Some(4),
            &[5],
            "case-b",
            "signaal",
            "m2",
            None,
        );
        b.add(
            Rejected,
            Outcome::Refused,
            Some(3),
            &[4],
            "case-a",
            "signaal",
            "m3",
            Some("not_in_case_team"),
        );
        b.add(
            DeadlineLate,
            Outcome::Flagged,
            Some(3),
            &[1, 2],
            "case-a",
            "signaal",
            "m1",
            Some("late_on_arrival"),
        );
        b.add(
            Receipt,
            Outcome::Ok,
            Some(1),
            &[3],
            "case-a",
            "signaal",
            "m1",
            None,
        );
        b.add(
            NonConsentUse,
            Outcome::Flagged,
            Some(2),
            &[1],
            "case-a",
            "aanmelding",
            "m4",
            Some("acute_danger"),
        );
        b.add(
            Accepted,
            Outcome::Ok,
            Some(2),
            &[1],
            "case-a",
            "aanmelding",
            "m4",
            None,
        );
        b.out
    }

    #[test]
    fn an_organisation_sees_only_its_own_flows() {
        let recs = sample();
        let mine = scope(
            recs.clone(),
            &Viewer::Organisation(oin(2).parse().unwrap()),
            &Filter::default(),
        );
        // m1 (3 -> 1, 2) narrowed to 3 -> 2; m2 (4 -> 5) invisible; m4 its own.
        let f = flows(&mine);
        assert!(
            f.iter().all(|r| r.from == oin(2) || r.to == oin(2)),
            "{f:?}"
        );
        assert!(!f.iter().any(|r| r.to == oin(1) && r.from == oin(3)));
        assert!(!f.iter().any(|r| r.from == oin(4)));
        let all = scope(recs, &Viewer::Federation, &Filter::default());
        assert_eq!(all.len(), 7);
        assert!(flows(&all)
            .iter()
            .any(|r| r.from == oin(4) && r.to == oin(5)));
    }

    #[test]
    fn filters_narrow() {
        let recs = sample();
        let f = Filter {
            case_ref: Some("case-b".into()),
            ..Filter::default()
        };
        assert_eq!(scope(recs.clone(), &Viewer::Federation, &f).len(), 1);
        let f = Filter {
            outcome: Some(Outcome::Refused),
            ..Filter::default()
        };
        let r = refusals(&scope(recs.clone(), &Viewer::Federation, &f));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, "not_in_case_team");
        let f = Filter {
            party: Some(oin(5).parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(scope(recs.clone(), &Viewer::Federation, &f).len(), 1);
        let f = Filter {
            kind: Some("aanmelding".into()),
            ..Filter::default()
        };
        assert_eq!(grounds(&scope(recs, &Viewer::Federation, &f)).len(), 1);
    }

    #[test]
    fn flows_count_accepted_refused_late_and_non_consent() {
        let f = flows(&sample());
        let row = |from: u64, to: u64, kind: &str| {
            f.iter()
                .find(|r| r.from == oin(from) && r.to == oin(to) && r.kind == kind)
                .cloned()
                .unwrap()
        };
        assert_eq!(row(3, 1, "signaal").accepted, 1);
        assert_eq!(row(3, 1, "signaal").late, 1);
        assert_eq!(row(3, 4, "signaal").refused, 1);
        assert_eq!(row(2, 1, "aanmelding").non_consent, 1);
    }

    #[test]
    fn exports_carry_logboek_names_and_escape() {
        let recs = sample();
        let lines = jsonl(&recs);
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        for k in [
            "trace_id",
            "span_id",
            "name",
            "status_code",
            "start_time",
            "end_time",
            "processing_activity_id",
            "data_subject_id",
        ] {
            assert!(first.get(k).is_some(), "{k}");
        }
        assert_eq!(first["data_subject_id"], "case-a");
        assert_eq!(first["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(first["trace_id"].as_str().unwrap().len(), 32);
        let c = csv(&recs);
        assert_eq!(c.lines().count(), 8);
        assert!(c.starts_with("seq,time,event"));
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
