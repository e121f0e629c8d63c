//! Operational metrics in the Prometheus text format, and the health endpoints.
//!
//! `GET /metrics` (text format 0.0.4), `GET /healthz` (the process serves and its store is
//! not poisoned) and `GET /readyz` (it also accepts connections: not shutting down) on the
//! address of `[metrics] listen` (or `serve --metrics ADDR`). Plain HTTP on an operator's
//! network: the numbers carry OINs and counts, never content or case references.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ketenpost_broker_requests_total{outcome}` | counter | requests answered: `accepted`, `done`, `deliveries`, `rejected`, `receipted` (a `Receipts` request, whatever its receipts' outcomes), `other` |
//! | `ketenpost_broker_rejected_total{code}` | counter | refusals by rejection code (`over_limit` included; each refused receipt of a `Receipts` request counts) |
//! | `ketenpost_broker_limit_refusals_total{limit}` | counter | refusals by per-party limit (also the connections closed over a limit) |
//! | `ketenpost_broker_connections{party}` | gauge | authenticated connections per party (OIN) |
//! | `ketenpost_broker_queue_depth{party}` | gauge | messages queued for a party (not yet receipted or expired) |
//! | `ketenpost_broker_queue_oldest_age_seconds{party}` | gauge | age of the oldest message queued for a party |
//! | `ketenpost_broker_notices_queued{party}` | gauge | broker notices waiting for a party |
//! | `ketenpost_broker_group_commits_total` | counter | group commits (each one fsync of the database) |
//! | `ketenpost_broker_group_commit_size` | histogram | messages or transitions per group commit (for the writer: of the rounds one sync made durable) |
//! | `ketenpost_broker_fsync_seconds` | histogram | per group commit, from the start of its database flush to the end of its fsync (for the writer's rounds: the earliest round's flush to the settling thread's sync) |
//! | `ketenpost_broker_spool_fsync_seconds` | histogram | per spool sync by the writer: the bodies of a round, durable before their metadata is written, and the deletions written since the last sync |
//! | `ketenpost_broker_write_rounds_total{settled_by}` | counter | the writer's rounds that needed a sync, by who synced the log and answered them: `writer` (nothing else was waiting, so the writer did it itself) or `settling` (the settling thread, while the writer went on with the next round) |
//! | `ketenpost_broker_submit_seconds` | histogram | a submission in the broker: its request read whole, to its answer (accepted or refused) |
//! | `ketenpost_broker_store_write_seconds` | histogram | an accepted submission's durable write: its body appended and its write queued, to landed (the spool sync, the writer's round and flush, the settling thread's sync) |
//! | `ketenpost_broker_alerts_sent_total` | counter | FG alerts accepted by their receivers (webhooks, mail relay) |
//! | `ketenpost_broker_alert_passes_total` | counter | passes of the alert dispatcher over its queue (staging, then one try per due alert) |
//! | `ketenpost_broker_alerts_pending` | gauge | FG alerts staged and not yet accepted, after the last pass (absent until the first) |
//! | `ketenpost_broker_audit_trail_intact` | gauge | 1 when the last verification of the audit trail found it intact, 0 when damaged (absent until the first) |
//! | `ketenpost_broker_up` | gauge | 1 while serving, 0 once the store is poisoned |
//! | `ketenpost_broker_documents_serial` | gauge | the directory serial of the federation documents in force |
//! | `ketenpost_broker_signatures_verified_total{how}` | counter | signatures verified in the check stage, of submissions' headers (check 2) and of delivery receipts: `batched` (with the other submissions and receipts checked at the same time, by a batch equation that held: the same verdict; see `verify::verify_many`), `alone` (`verify_strict`, one at a time: below the batch size, after a failing batch, or under a suspect key) |
//! | `ketenpost_broker_documents_refused_total` | counter | sets of changed federation documents refused (each distinct set once) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ketenpost_schemas::protocol::{ReceiptOutcome, Response};

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum, in millionths of the unit.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is added).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        // Float to integer: saturating and never negative for these values.
        let micro = (value.max(0.0) * 1e6) as u64;
        self.sum_micro.fetch_add(micro, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// What the store's group commits report.
#[derive(Debug)]
pub struct CommitStats {
    commits: AtomicU64,
    size: Histogram,
    fsync: Histogram,
    /// The writer's syncs of the message bodies, before their metadata is written.
    spool_fsync: Histogram,
    /// The writer's rounds it synced and answered itself (nothing else waiting).
    settled_by_writer: AtomicU64,
    /// The writer's rounds the settling thread synced and answered.
    settled_by_thread: AtomicU64,
}

/// The bounds of the fsync histograms, in seconds.
const FSYNC_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commits: AtomicU64::new(0),
            size: Histogram::new(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            fsync: Histogram::new(FSYNC_BOUNDS),
            spool_fsync: Histogram::new(FSYNC_BOUNDS),
            settled_by_writer: AtomicU64::new(0),
            settled_by_thread: AtomicU64::new(0),
        }
    }
}

impl CommitStats {
    /// One group commit of `size` writes whose fsync took `took`.
    pub fn record(&self, size: usize, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.size.observe(size as f64);
        self.fsync.observe(took.as_secs_f64());
    }

    /// One sync of the spool's bodies by the writer, which took `took`.
    pub fn record_spool_sync(&self, took: Duration) {
        self.spool_fsync.observe(took.as_secs_f64());
    }

    /// `rounds` of the writer's synced and answered, by the writer itself or by the
    /// settling thread.
    pub fn record_settled(&self, rounds: usize, by_writer: bool) {
        let counter = if by_writer {
            &self.settled_by_writer
        } else {
            &self.settled_by_thread
        };
        counter.fetch_add(rounds as u64, Ordering::Relaxed);
    }

    /// The writer's rounds settled so far: by the writer itself, and by the settling
    /// thread.
    pub fn settled(&self) -> (u64, u64) {
        (
            self.settled_by_writer.load(Ordering::Relaxed),
            self.settled_by_thread.load(Ordering::Relaxed),
        )
    }

    /// Group commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// The bounds of the latency histograms, in seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How long submissions take in the broker.
#[derive(Debug)]
pub struct Latencies {
    submit: Histogram,
    store_write: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            submit: Histogram::new(LATENCY_BOUNDS),
            store_write: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// Request counters of a running broker.
#[derive(Debug, Default)]
pub struct Counters {
    latencies: Latencies,
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    limits: Mutex<BTreeMap<&'static str, u64>>,
    connections: Mutex<BTreeMap<&'static str, u64>>,
    alerts_sent: AtomicU64,
    alert_passes: AtomicU64,
    documents_refused: AtomicU64,
    alerts_pending: AtomicU64,
    signatures_alone: AtomicU64,
    signatures_batched: AtomicU64,
    /// 0: not verified yet; 1: intact; 2: damaged.
    trail: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(key).or_default() += 1;
}

fn snapshot(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Counters {
    /// A request answered with `response`: its outcome, and the code of each refusal it
    /// carries (a `Receipts` request's answer carries one per refused receipt).
    pub fn answered(&self, response: &Response) {
        let outcome = match response {
            Response::Accepted { .. } => "accepted",
            Response::Done => "done",
            Response::Deliveries(_) => "deliveries",
            Response::Rejected(r) => {
                bump(&self.rejected, r.code.as_str());
                "rejected"
            }
            Response::Receipted(outcomes) => {
                for o in outcomes {
                    if let ReceiptOutcome::Rejected(r) = o {
                        bump(&self.rejected, r.code.as_str());
                    }
                }
                "receipted"
            }
            _ => "other",
        };
        bump(&self.outcomes, outcome);
    }

    /// An FG alert accepted by its receiver.
    /// `n` signatures verified in the check stage (headers by check 2, delivery receipts),
    /// in one batch or one at a time.
    pub fn signatures_verified(&self, n: usize, batched: bool) {
        let counter = if batched {
            &self.signatures_batched
        } else {
            &self.signatures_alone
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Signatures verified in the check stage so far: one at a time, and in batches.
    pub fn signatures(&self) -> (u64, u64) {
        (
            self.signatures_alone.load(Ordering::Relaxed),
            self.signatures_batched.load(Ordering::Relaxed),
        )
    }

    pub fn alert_sent(&self) {
        self.alerts_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A pass of the alert dispatcher ended with `pending` alerts not yet accepted.
    pub fn alert_pass(&self, pending: u64) {
        self.alerts_pending.store(pending, Ordering::Relaxed);
        self.alert_passes.fetch_add(1, Ordering::Release);
    }

    /// A changed set of federation documents was refused.
    pub fn documents_refused(&self) {
        self.documents_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The outcome of the last verification of the audit trail.
    pub fn trail_verified(&self, intact: bool) {
        self.trail
            .store(if intact { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// A refusal for a per-party limit.
    pub fn limit(&self, limit: &'static str) {
        bump(&self.limits, limit);
    }

    /// A submission answered `took` after its request was read whole.
    pub fn submitted(&self, took: Duration) {
        self.latencies.submit.observe(took.as_secs_f64());
    }

    /// An accepted submission's write landed `took` after it was queued.
    pub fn store_written(&self, took: Duration) {
        self.latencies.store_write.observe(took.as_secs_f64());
    }

    /// A partner connection admitted over `transport` (`quic` or `tcp`).
    pub fn connected(&self, transport: &'static str) {
        bump(&self.connections, transport);
    }
}

/// What one scrape reports besides the counters: read from the store and the admission
/// state at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Per party (OIN): connections, queue depth, oldest queued age (s), notices queued.
    pub parties: BTreeMap<String, PartyGauges>,
    /// Whether the store still takes writes.
    pub up: bool,
    /// The directory serial in force.
    pub documents_serial: u64,
}

/// The gauges of one party.
#[derive(Debug, Default)]
pub struct PartyGauges {
    /// Authenticated connections.
    pub connections: usize,
    /// Messages queued.
    pub queue_depth: u64,
    /// Age of the oldest queued message, in seconds.
    pub oldest_age_secs: Option<f64>,
    /// Broker notices waiting.
    pub notices: u64,
}

/// One metric with one unlabelled sample: its HELP, its TYPE and its value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The Prometheus text of the counters, the commit statistics and `gauges`.
pub fn render(counters: &Counters, commits: &CommitStats, gauges: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    let counter =
        |out: &mut String, name: &str, help: &str, label: &str, map: BTreeMap<&str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (k, v) in map {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
    counter(
        &mut out,
        "ketenpost_broker_requests_total",
        "Requests answered, by outcome.",
        "outcome",
        snapshot(&counters.outcomes),
    );
    counter(
        &mut out,
        "ketenpost_broker_rejected_total",
        "Refusals, by rejection code.",
        "code",
        snapshot(&counters.rejected),
    );
    counter(
        &mut out,
        "ketenpost_broker_limit_refusals_total",
        "Refusals for a per-party limit, by limit.",
        "limit",
        snapshot(&counters.limits),
    );
    counter(
        &mut out,
        "ketenpost_broker_connections_total",
        "Partner connections admitted, by transport (quic, tcp).",
        "transport",
        snapshot(&counters.connections),
    );
    let gauge =
        |out: &mut String, name: &str, help: &str, f: &dyn Fn(&PartyGauges) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (party, g) in &gauges.parties {
                if let Some(v) = f(g) {
                    let _ = writeln!(out, "{name}{{party=\"{party}\"}} {v}");
                }
            }
        };
    gauge(
        &mut out,
        "ketenpost_broker_connections",
        "Authenticated connections, per party.",
        &|g| Some(g.connections as f64),
    );
    gauge(
        &mut out,
        "ketenpost_broker_queue_depth",
        "Messages queued for a party.",
        &|g| Some(g.queue_depth as f64),
    );
    gauge(
        &mut out,
        "ketenpost_broker_queue_oldest_age_seconds",
        "Age of the oldest message queued for a party.",
        &|g| g.oldest_age_secs,
    );
    gauge(
        &mut out,
        "ketenpost_broker_notices_queued",
        "Broker notices waiting for a party.",
        &|g| Some(g.notices as f64),
    );
    single(
        &mut out,
        "ketenpost_broker_group_commits_total",
        "counter",
        "Group commits (one database fsync each).",
        commits.commits(),
    );
    commits.size.render(
        &mut out,
        "ketenpost_broker_group_commit_size",
        "Writes per group commit.",
    );
    commits.fsync.render(
        &mut out,
        "ketenpost_broker_fsync_seconds",
        "Duration of each group commit's fsync.",
    );
    commits.spool_fsync.render(
        &mut out,
        "ketenpost_broker_spool_fsync_seconds",
        "Duration of each sync of the message bodies before their metadata is written.",
    );
    let (by_writer, by_thread) = commits.settled();
    counter(
        &mut out,
        "ketenpost_broker_write_rounds_total",
        "The writer's rounds that needed a sync, by who synced and answered them.",
        "settled_by",
        BTreeMap::from([("settling", by_thread), ("writer", by_writer)]),
    );
    counters.latencies.submit.render(
        &mut out,
        "ketenpost_broker_submit_seconds",
        "A submission in the broker: its request read whole, to its answer.",
    );
    counters.latencies.store_write.render(
        &mut out,
        "ketenpost_broker_store_write_seconds",
        "An accepted submission's durable write: queued, to landed.",
    );
    single(
        &mut out,
        "ketenpost_broker_alerts_sent_total",
        "counter",
        "FG alerts accepted by their receivers.",
        counters.alerts_sent.load(Ordering::Relaxed),
    );
    let (alone, batched) = counters.signatures();
    counter(
        &mut out,
        "ketenpost_broker_signatures_verified_total",
        "Signatures of headers (check 2) and delivery receipts verified, one at a time (alone) or in a batch.",
        "how",
        BTreeMap::from([("alone", alone), ("batched", batched)]),
    );
    single(
        &mut out,
        "ketenpost_broker_documents_refused_total",
        "counter",
        "Sets of changed federation documents refused.",
        counters.documents_refused.load(Ordering::Relaxed),
    );
    let passes = counters.alert_passes.load(Ordering::Acquire);
    single(
        &mut out,
        "ketenpost_broker_alert_passes_total",
        "counter",
        "Passes of the FG alert dispatcher over its queue.",
        passes,
    );
    if passes > 0 {
        single(
            &mut out,
            "ketenpost_broker_alerts_pending",
            "gauge",
            "FG alerts staged and not yet accepted by their receivers, after the last pass.",
            counters.alerts_pending.load(Ordering::Relaxed),
        );
    }
    let trail = counters.trail.load(Ordering::Relaxed);
    if trail != 0 {
        single(
            &mut out,
            "ketenpost_broker_audit_trail_intact",
            "gauge",
            "1 when the last verification found the audit trail intact.",
            u64::from(trail == 1),
        );
    }
    single(
        &mut out,
        "ketenpost_broker_up",
        "gauge",
        "1 while the broker serves; 0 once its store is poisoned.",
        u64::from(gauges.up),
    );
    single(
        &mut out,
        "ketenpost_broker_documents_serial",
        "gauge",
        "The directory serial of the federation documents in force.",
        gauges.documents_serial,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ketenpost_schemas::protocol::{RejectCode, Rejection};

    #[test]
    fn the_text_has_help_type_and_cumulative_buckets() {
        let c = Counters::default();
        c.answered(&Response::Accepted {
            message_id: ketenpost_schemas::ids::MessageId::new(),
            flags: Vec::new(),
        });
        c.answered(&Response::Rejected(Rejection::new(
            RejectCode::Replay,
            "again",
        )));
        // A `Receipts` request: one request, each refused receipt's code.
        let conflict =
            || ReceiptOutcome::Rejected(Rejection::new(RejectCode::Conflict, "another body"));
        c.answered(&Response::Receipted(vec![
            ReceiptOutcome::Done,
            conflict(),
            conflict(),
        ]));
        c.limit("streams_per_party");
        c.connected("tcp");
        c.submitted(Duration::from_micros(1_500));
        c.submitted(Duration::from_millis(30));
        c.store_written(Duration::from_micros(800));
        let s = CommitStats::default();
        s.record(3, Duration::from_millis(2));
        s.record(40, Duration::from_millis(30));
        s.record_spool_sync(Duration::from_micros(300));
        s.record_settled(1, true);
        s.record_settled(2, false);
        s.record_settled(3, false);
        let mut g = Gauges {
            up: true,
            ..Gauges::default()
        };
        g.parties.insert(
            "00000001000000000001".into(),
            PartyGauges {
                connections: 2,
                queue_depth: 5,
                oldest_age_secs: Some(1.5),
                notices: 0,
            },
        );
        let text = render(&c, &s, &g);
        assert!(text.contains("ketenpost_broker_rejected_total{code=\"replay\"} 1"));
        assert!(text.contains("ketenpost_broker_rejected_total{code=\"conflict\"} 2"));
        assert!(text.contains("ketenpost_broker_requests_total{outcome=\"receipted\"} 1"));
        assert!(text.contains("ketenpost_broker_requests_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("ketenpost_broker_group_commit_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("ketenpost_broker_group_commit_size_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("ketenpost_broker_fsync_seconds_count 2"));
        assert!(text.contains("ketenpost_broker_spool_fsync_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("ketenpost_broker_spool_fsync_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("ketenpost_broker_write_rounds_total{settled_by=\"writer\"} 1"));
        assert!(text.contains("ketenpost_broker_write_rounds_total{settled_by=\"settling\"} 5"));
        assert!(text.contains("ketenpost_broker_submit_seconds_bucket{le=\"0.002\"} 1"));
        assert!(text.contains("ketenpost_broker_submit_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("ketenpost_broker_submit_seconds_sum 0.0315"));
        assert!(text.contains("ketenpost_broker_store_write_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains(
            "ketenpost_broker_queue_oldest_age_seconds{party=\"00000001000000000001\"} 1.5"
        ));
        assert!(text.contains("ketenpost_broker_up 1"));
        assert!(text.contains("ketenpost_broker_connections_total{transport=\"tcp\"} 1"));
    }
}
