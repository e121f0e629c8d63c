//! Load benchmark of the broker: throughput, paced latency and memory with a long queue.
//!
//! ```text
//! cargo bench -p ketenpost-broker --bench load                 # throughput + latency
//! cargo bench -p ketenpost-broker --bench load -- throughput   # one scenario
//! cargo bench -p ketenpost-broker --bench load -- latency
//! cargo bench -p ketenpost-broker --bench load -- memory       # 1,000,000 queued; minutes
//! cargo bench -p ketenpost-broker --bench load -- flood        # p99 alone vs during a flood
//! cargo bench -p ketenpost-broker --bench load -- e2e          # submit -> delivered -> receipt
//! cargo bench -p ketenpost-broker --bench load -- throughput --messages=100000 --concurrency=256
//! ```
//!
//! Every scenario makes a fresh dev federation (one gemeente, one zorgaanbieder, four
//! woningcorporaties) in a temporary directory, starts the release `ketenpost-broker serve
//! --config` binary (the one `cargo bench` builds) as a **separate process** on 127.0.0.1
//! with default limits (every check on, a group-committed sled flush before each
//! `accepted`, info logging to a file; `--cache-mb=N` sets `limits.cache_mb`,
//! `--check-threads=N` and `--check-batch=N` `limits.check_threads` and
//! `limits.check_batch` (to size the check stage for a machine), `--archive-ms=N`
//! `timers.audit_archive_ms`), opens a case
//! with all parties and a consent, and seals every message **before** the clock starts: a
//! `signaal` from a corporation to the zorgaanbieder, its `omschrijving` padded until the
//! envelope is at least 1 KiB (the example signaal already makes about 1.2 KiB, so it is
//! not padded), each with its own id. The four corporations submit over their
//! own QUIC connection each. The broker's memory is read from `/proc/<pid>/status`
//! (VmRSS, VmHWM), apart from the load generator's. At the end the broker gets SIGTERM, its
//! log gives the number of group commits, and the temporary directory is removed.
//!
//! Scenarios:
//! - `throughput`: `--messages` (50,000) sealed messages, `--concurrency` (128) requests in
//!   flight over the four connections; accepted/s, group commits, latency percentiles.
//! - `latency`: paced at `--rate` (500) msg/s for `--seconds` (20) after a 2 s warm-up;
//!   submit-to-accepted percentiles measured from each message's scheduled send time.
//! - `flood`: the latency scenario's paced load from the four corporations (`--rate`,
//!   `--seconds`), first alone, then while the municipality floods the broker: it keeps
//!   opening connections (a handshake each, refused after its 8th), holds 64 requests on
//!   each connection it keeps that announce a large envelope, send 256 KiB of it and stall,
//!   and sends oversized frames. Reports the other partners' p50/p99 in both phases.
//! - `e2e`: end to end, every step durable. The zorgaanbieder long-polls (`Fetch`, up to
//!   256 at a time, waiting up to 0.5 s), signs a `DeliveryReceipt` for every delivered
//!   message and sends a fetched batch's receipts at once in one `Receipts` request
//!   (`--lone-receipts`: each in a request of its own, as the agent did before), while a
//!   fetch always waits, naming the messages whose receipts are on their way in `skip`
//!   (`--serial-fetch`: the next fetch only once the batch is receipted, as the agent did
//!   before); the broker deletes the body when the receipt is durable and forwards the
//!   receipt to the sender, whose connection long-polls its notices and acknowledges them
//!   (`Ack`). First `--messages` messages as fast as the flood of `throughput`
//!   (`--concurrency`): end-to-end msg/s (first submit to last receipt answered) and
//!   submit-to-delivered percentiles; then paced at `--e2e-rate` (1,000) msg/s for
//!   `--seconds` after a 2 s warm-up: submit-to-accepted, submit-to-delivered and
//!   submit-to-receipted percentiles from each message's scheduled send time. At the end
//!   a fetch must find the recipient's queue empty.
//! - `memory`: `--queue` (1,000,000) messages queued for a recipient that never fetches,
//!   sealed and submitted in batches of `--batch` (25,000); broker RSS at the end and its
//!   peak, the size of the data directory, and the RSS after a restart on that data.
//!
//! The broker inherits the environment (e.g. `MALLOC_ARENA_MAX`), except `RUST_LOG`.
//! With `KETENPOST_BENCH_TIMELINE=<file>`, `e2e` writes every paced message's times
//! (scheduled submit, accepted, delivered, receipted; microseconds from a moment it prints
//! as unix time) to that CSV file.
//!
//! Without `--bench` on the command line (`cargo test --all-targets` runs bench targets
//! once as tests) it does nothing: a benchmark is never a timed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::control::{CaseChange, CaseOp, Record, SignedRecord, Toestemming};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::LegalBasis;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::Signaal;
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::{ReceiptOutcome, Request, Response, MAX_RECEIPTS};
use ketenpost_schemas::seal::{seal, Draft, Sender};
use ketenpost_transport::client::Client;
use ketenpost_transport::tls::ClientTls;

const POLICY: &str = r#"
[covenant]
id = "bench"
name = "Benchmark covenant"

[roles.gemeente]
description = "municipality"
[roles.zorgaanbieder]
description = "care provider"
[roles.woningcorporatie]
description = "housing corporation"

[purposes.uitstroom]
name = "Uitstroom"
processing_activity = "bench-uitstroom"
legal_basis = "consent"
case_retention = "1 year"
case_managers = ["gemeente"]
consent_recorders = ["zorgaanbieder"]

[purposes.uitstroom.kinds.signaal]
senders = ["woningcorporatie"]
recipients = ["zorgaanbieder", "gemeente"]
consent = "required"
send_within = "48 hours"
undelivered_ttl = "30 days"
views.zorgaanbieder = ["case"]
views.gemeente = ["case"]
"#;

const ROSTER: &str = r#"
[[party]]
name = "Gemeente Bench"
oin = "00000001000000000001"
roles = ["gemeente"]
[[party]]
name = "Zorg Bench"
oin = "00000001000000000002"
roles = ["zorgaanbieder"]
[[party]]
name = "Corporatie Een"
oin = "00000001000000000003"
roles = ["woningcorporatie"]
[[party]]
name = "Corporatie Twee"
oin = "00000001000000000004"
roles = ["woningcorporatie"]
[[party]]
name = "Corporatie Drie"
oin = "00000001000000000005"
roles = ["woningcorporatie"]
[[party]]
name = "Corporatie Vier"
oin = "00000001000000000006"
roles = ["woningcorporatie"]
"#;

/// Roster indices.
const GEMEENTE: usize = 0;
const ZORG: usize = 1;
const SENDERS: [usize; 4] = [2, 3, 4, 5];

/// Target envelope size.
const ENVELOPE_BYTES: usize = 1024;
/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole submission phase.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    scenarios: Vec<String>,
    messages: usize,
    concurrency: usize,
    rate: u64,
    seconds: u64,
    queue: usize,
    batch: usize,
    /// `limits.cache_mb` for the broker; `None` leaves the broker's default.
    cache_mb: Option<u64>,
    /// `limits.check_threads` and `limits.check_batch` for the broker; `None` leaves the
    /// broker's default.
    check_threads: Option<u64>,
    check_batch: Option<u64>,
    /// `timers.audit_archive_ms` for the broker; `None` leaves the broker's default.
    archive_ms: Option<u64>,
    /// The paced part of the `e2e` scenario, msg/s.
    e2e_rate: u64,
    /// The `e2e` recipient fetches again only once a batch is receipted (`--serial-fetch`,
    /// as the agent did before `skip`).
    serial_fetch: bool,
    /// The `e2e` recipient sends each receipt in a request of its own (`--lone-receipts`,
    /// as the agent did before `Receipts`) instead of a fetched batch's in one.
    lone_receipts: bool,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        scenarios: Vec::new(),
        messages: 50_000,
        concurrency: 128,
        rate: 500,
        seconds: 20,
        queue: 1_000_000,
        batch: 25_000,
        cache_mb: None,
        check_threads: None,
        check_batch: None,
        archive_ms: None,
        e2e_rate: 1_000,
        serial_fetch: false,
        lone_receipts: false,
    };
    for a in args {
        if a == "--bench" {
            continue;
        }
        if a == "--serial-fetch" {
            o.serial_fetch = true;
            continue;
        }
        if a == "--lone-receipts" {
            o.lone_receipts = true;
            continue;
        }
        if let Some((k, v)) = a.strip_prefix("--").and_then(|kv| kv.split_once('=')) {
            let n: u64 = v.parse().map_err(|_| format!("{a}: not a number"))?;
            if n == 0 {
                return Err(format!("{a}: must be at least 1"));
            }
            let n_usize = usize::try_from(n).map_err(|_| format!("{a}: too large"))?;
            match k {
                "messages" => o.messages = n_usize,
                "concurrency" => o.concurrency = n_usize,
                "rate" => o.rate = n,
                "seconds" => o.seconds = n,
                "queue" => o.queue = n_usize,
                "batch" => o.batch = n_usize,
                "cache-mb" => o.cache_mb = Some(n),
                "check-threads" => o.check_threads = Some(n),
                "check-batch" => o.check_batch = Some(n),
                "archive-ms" => o.archive_ms = Some(n),
                "e2e-rate" => o.e2e_rate = n,
                _ => return Err(format!("unknown option {a}")),
            }
            continue;
        }
        match a.as_str() {
            "throughput" | "latency" | "memory" | "flood" | "e2e" => o.scenarios.push(a.clone()),
            "all" => o
                .scenarios
                .extend(["throughput", "latency", "e2e", "flood", "memory"].map(String::from)),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = vec!["throughput".into(), "latency".into()];
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// The broker process

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

/// `GET /metrics` from the broker's metrics endpoint (plain HTTP on loopback).
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// A histogram of the broker's metrics: (upper bound, cumulative count) per bucket.
#[derive(Debug, Default)]
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of histogram `name` in a scrape.
    fn of(text: &str, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{le=\"");
        Buckets(
            text.lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(|rest| {
                    let (le, count) = rest.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// What was counted between `before` and `self`.
    fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// The upper bound of the bucket holding quantile `q`, as text ("<= 2 ms").
    fn quantile_ms(&self, q: f64) -> String {
        let total = self.0.last().map_or(0, |b| b.1);
        if total == 0 {
            return "-".into();
        }
        let want = (q * total as f64).ceil() as u64;
        match self.0.iter().find(|b| b.1 >= want) {
            Some(&(le, _)) if le.is_finite() => format!("<= {} ms", le * 1e3),
            _ => "above the last bound".into(),
        }
    }

    /// p50, p99 and the largest as text. The largest matters at a steady rate: one stall
    /// of the disk delays every message that arrives during it, so a single slow fsync
    /// among thousands can set the messages' p99.
    fn summary_ms(&self) -> String {
        format!(
            "p50 {} p99 {} max {} ({} observed)",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(1.0),
            self.0.last().map_or(0, |b| b.1)
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct BrokerProc {
    child: Child,
    addr: SocketAddr,
    /// The broker's metrics endpoint.
    metrics: Option<SocketAddr>,
    log: PathBuf,
    clk_tck: u64,
}

impl BrokerProc {
    fn start(config: &Path, log: &Path) -> BrokerProc {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ketenpost-broker"))
            .args(["serve", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // `metrics on ADDR` (and `tcp on ADDR`) come before `listening on ADDR`.
            let mut out = std::io::BufReader::new(stdout);
            let mut metrics = None;
            for _ in 0..8 {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(m) = line.trim().strip_prefix("metrics on ") {
                    metrics = m.parse::<SocketAddr>().ok();
                } else if !line.starts_with("tcp on ") {
                    let _ = tx.send((line, metrics));
                    return;
                }
            }
            let _ = tx.send((String::new(), metrics));
        });
        // Opening a large database (the memory scenario's restart) takes a while.
        let (line, metrics) = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the broker did not report its address; see {}",
                    log.display()
                );
            }
        };
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected broker output {line:?}; see {}", log.display());
        };
        let addr = addr.parse().unwrap();
        BrokerProc {
            child,
            addr,
            metrics,
            log: log.to_owned(),
            clk_tck: clk_tck(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn mem(&self) -> Mem {
        proc_mem(&format!("/proc/{}/status", self.pid()))
    }

    /// The broker's metrics now (empty without an endpoint).
    fn scrape(&self) -> String {
        self.metrics.map(scrape).unwrap_or_default()
    }

    /// CPU seconds the broker used so far (user + system).
    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(&format!("/proc/{}/stat", self.pid()), self.clk_tck)
    }

    /// Whether the broker's log holds `needle` yet.
    fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(needle))
    }

    /// SIGTERM, wait (bounded) for a clean stop; what it logged.
    fn stop(mut self) -> Stopped {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("broker exited with {status}");
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!("broker did not stop within 60 s of SIGTERM; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = |message: &str| text.lines().rev().find(|l| l.contains(message));
        Stopped {
            commits: last("broker stopped").and_then(|l| log_field(l, "group_commits")),
            signatures: last("broker stopped").and_then(|l| {
                Some((
                    log_field(l, "signatures_alone")?,
                    log_field(l, "signatures_batched")?,
                ))
            }),
            allocator: last(" memory allocated_mib=").and_then(|l| {
                Some((
                    log_field(l, "allocated_mib")?,
                    log_field(l, "resident_mib")?,
                ))
            }),
        }
    }
}

/// What a stopped broker logged.
struct Stopped {
    /// Group commits over its run.
    commits: Option<u64>,
    /// Signatures (headers and receipts) verified one at a time, and in batches.
    signatures: Option<(u64, u64)>,
    /// The allocator's view at the signal: (allocated, resident) MiB.
    allocator: Option<(u64, u64)>,
}

/// The number after `name=` in a text log line.
fn log_field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let rest = &line[line.find(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        // Only if `stop` was not reached (a panic): never leave a broker behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn proc_mem(path: &str) -> Mem {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

fn proc_cpu_secs(path: &str, clk_tck: u64) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are the 14th and 15th.
    let after = text.rfind(')').map_or("", |i| &text[i + 1..]);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / clk_tck as f64
}

/// CPU seconds this process (the load generator) used so far.
fn own_cpu_secs(clk_tck: u64) -> f64 {
    proc_cpu_secs("/proc/self/stat", clk_tck)
}

/// The 1-minute load average: other work on the machine skews every number here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Bytes in files under `dir` (apparent size) and bytes allocated on disk.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

// ---------------------------------------------------------------------------------------
// The federation, the case and the sealed messages

struct Bench {
    dir: tempfile::TempDir,
    fed: Federation,
    policy: Policy,
    directory: Directory,
    keys: Vec<SigningKey>,
    case: CaseRef,
    consent: uuid::Uuid,
    pad: usize,
    cache_mb: Option<u64>,
    check_threads: Option<u64>,
    check_batch: Option<u64>,
    archive_ms: Option<u64>,
    serial_fetch: bool,
    lone_receipts: bool,
}

impl Bench {
    fn new(o: &Opts) -> Bench {
        let dir = tempfile::Builder::new()
            .prefix("ketenpost-bench-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        std::fs::write(dir.path().join("roster.toml"), ROSTER).unwrap();
        let mut opts = InitOptions::new(dir.path().join("policy.toml"), dir.path().join("fed"));
        opts.roster = Some(dir.path().join("roster.toml"));
        let fed = ketenpost_certs::init(&opts).unwrap();
        let policy = fed.load_policy().unwrap();
        let directory = fed.load_directory(&policy).unwrap();
        let keys = fed
            .parties
            .iter()
            .map(|p| {
                keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key).unwrap())
                    .unwrap()
            })
            .collect();
        let mut b = Bench {
            dir,
            fed,
            policy,
            directory,
            keys,
            case: CaseRef::random(),
            consent: uuid::Uuid::now_v7(),
            pad: 0,
            cache_mb: o.cache_mb,
            check_threads: o.check_threads,
            check_batch: o.check_batch,
            archive_ms: o.archive_ms,
            serial_fetch: o.serial_fetch,
            lone_receipts: o.lone_receipts,
        };
        b.pad = b.calibrate();
        b
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The broker's configuration file: the dev federation's files, default limits (or
    /// the given cache size and check stage), an ephemeral port on 127.0.0.1.
    fn config_file(&self) -> PathBuf {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let f = &self.fed;
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {}\n\n[tls]\ncert = {}\nkey = {}\nca = {}\n\
             crls = [{}]\n\n[federation]\npublic_key = {}\npolicy = {}\npolicy_sig = {}\n\
             directory = {}\ndirectory_sig = {}\nsigning_key = {}\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            q(&self.data()),
            q(&f.broker.cert),
            q(&f.broker.key),
            q(&f.ca.cert),
            q(&f.ca.crl),
            q(&f.federation.public_key),
            q(&f.policy.file),
            q(&f.policy.sig),
            q(&f.directory.file),
            q(&f.directory.sig),
            q(&f.broker.signing_key),
        );
        let limits = [
            ("cache_mb", self.cache_mb),
            ("check_threads", self.check_threads),
            ("check_batch", self.check_batch),
        ];
        if limits.iter().any(|(_, v)| v.is_some()) {
            text.push_str("\n[limits]\n");
            for (name, value) in limits {
                if let Some(v) = value {
                    text.push_str(&format!("{name} = {v}\n"));
                }
            }
        }
        if let Some(ms) = self.archive_ms {
            text.push_str(&format!("\n[timers]\naudit_archive_ms = {ms}\n"));
        }
        let path = self.dir.path().join("broker.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start_broker(&self) -> BrokerProc {
        BrokerProc::start(&self.config_file(), &self.dir.path().join("broker.log"))
    }

    fn oin(&self, i: usize) -> &Oin {
        &self.fed.parties[i].oin
    }

    async fn connect(&self, addr: SocketAddr, i: usize) -> Client {
        let p = &self.fed.parties[i];
        let tls = ClientTls {
            ca: self.fed.ca.cert.clone(),
            cert: p.cert.clone(),
            key: p.key.clone(),
        };
        let c = Client::connect(addr, "localhost", &tls).await.unwrap();
        let r = c
            .request(&Request::GetCheckpoint, REQUEST_TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(r, Response::Checkpoint(_)), "{r:?}");
        c
    }

    async fn control<R: Record>(&self, c: &Client, i: usize, r: &R) {
        let rec = SignedRecord::sign(r, self.oin(i).clone(), &self.keys[i]).unwrap();
        let resp = c
            .request(&Request::Control(rec), REQUEST_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(resp, Response::Done);
    }

    /// Open the case with every party in its team and record the consent.
    async fn setup_case(&self, addr: SocketAddr) {
        let gem = self.connect(addr, GEMEENTE).await;
        let zorg = self.connect(addr, ZORG).await;
        let change = |op| CaseChange {
            case_ref: self.case.clone(),
            covenant: "bench".into(),
            purpose: "uitstroom".into(),
            change: op,
            by: self.oin(GEMEENTE).clone(),
            at: Utc::now(),
        };
        self.control(
            &gem,
            GEMEENTE,
            &change(CaseOp::Open {
                role: Role::new("gemeente"),
            }),
        )
        .await;
        let mut members = vec![(ZORG, "zorgaanbieder")];
        members.extend(SENDERS.map(|i| (i, "woningcorporatie")));
        for (i, role) in members {
            self.control(
                &gem,
                GEMEENTE,
                &change(CaseOp::AddMember {
                    oin: self.oin(i).clone(),
                    role: Role::new(role),
                }),
            )
            .await;
        }
        let t = Toestemming {
            consent_id: self.consent,
            covenant: "bench".into(),
            purpose: "uitstroom".into(),
            case_ref: self.case.clone(),
            parties: vec![],
            roles: ["gemeente", "zorgaanbieder", "woningcorporatie"]
                .map(Role::new)
                .to_vec(),
            valid_from: Utc::now() - chrono::Duration::minutes(1),
            valid_until: None,
            document_sha256: "ab".repeat(32),
            obtained_by: self.oin(ZORG).clone(),
            obtained_at: Utc::now(),
        };
        self.control(&zorg, ZORG, &t).await;
        gem.close().await;
        zorg.close().await;
    }

    /// One sealed signaal from sender `s` (roster index) to the zorgaanbieder: its id and
    /// its envelope.
    fn seal_one(&self, s: usize, pad: usize) -> (MessageId, Vec<u8>) {
        let mut payload = Signaal::example();
        payload.waargenomen_op = Utc::now() - chrono::Duration::hours(2);
        if pad > 0 {
            payload.omschrijving.push(' ');
            payload.omschrijving.push_str(&"x".repeat(pad));
        }
        let mut d = Draft::new(
            "uitstroom",
            Kind::Signaal,
            self.case.clone(),
            vec![(self.oin(ZORG).clone(), Role::new("zorgaanbieder"))],
            LegalBasis::Consent {
                consent_id: self.consent,
            },
            serde_json::to_value(payload).unwrap(),
        );
        d.event_time = Some(Utc::now() - chrono::Duration::hours(2));
        let sealed = seal(
            d,
            Sender {
                oin: self.oin(s),
                key: &self.keys[s],
            },
            &self.policy,
            &self.directory,
            Utc::now(),
        )
        .unwrap();
        (sealed.1.id, sealed.0.encode())
    }

    /// The padding that makes an envelope about [`ENVELOPE_BYTES`]; none if it is larger
    /// already.
    fn calibrate(&self) -> usize {
        let base = self.seal_one(SENDERS[0], 0).1.len();
        if base >= ENVELOPE_BYTES {
            return 0;
        }
        let mut pad = ENVELOPE_BYTES - base;
        for _ in 0..8 {
            let size = self.seal_one(SENDERS[0], pad).1.len();
            if size == ENVELOPE_BYTES || (size < ENVELOPE_BYTES && ENVELOPE_BYTES - size < 8) {
                break;
            }
            // The body is encrypted and encoded, so a padding byte costs a little over one
            // envelope byte: step by the difference, scaled down a little.
            let diff = size.abs_diff(ENVELOPE_BYTES) * 3 / 4;
            pad = if size > ENVELOPE_BYTES {
                pad.saturating_sub(diff.max(1))
            } else {
                pad + diff.max(1)
            };
        }
        pad
    }

    /// Seal `n` messages on every core; message `k` is from `SENDERS[(first + k) % 4]`.
    fn seal_many(&self, first: usize, n: usize) -> Vec<Msg> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per = n.div_ceil(threads);
        let mut out = Vec::with_capacity(n);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let lo = (t * per).min(n);
                    let hi = ((t + 1) * per).min(n);
                    scope.spawn(move || {
                        (lo..hi)
                            .map(|k| {
                                let conn = (first + k) % SENDERS.len();
                                let (id, bytes) = self.seal_one(SENDERS[conn], self.pad);
                                Msg { conn, id, bytes }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                out.extend(h.join().unwrap());
            }
        });
        out
    }

    async fn sender_clients(&self, addr: SocketAddr) -> Vec<Client> {
        let mut v = Vec::new();
        for i in SENDERS {
            v.push(self.connect(addr, i).await);
        }
        v
    }
}

struct Msg {
    /// Which sender connection submits it.
    conn: usize,
    /// Its message id.
    id: MessageId,
    bytes: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// Submitting

#[derive(Debug, Default)]
struct Outcome {
    accepted: usize,
    rejected: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    /// Submit-to-accepted, microseconds, accepted messages only.
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn record(&mut self, r: Result<Response, String>, took: Duration) {
        match r {
            Ok(Response::Accepted { .. }) => {
                self.accepted += 1;
                self.latencies_us
                    .push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            }
            Ok(Response::Rejected(rej)) => {
                *self
                    .rejected
                    .entry(rej.code.as_str().to_owned())
                    .or_default() += 1;
            }
            Ok(other) => *self.errors.entry(format!("{other:?}")).or_default() += 1,
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn merge(&mut self, o: Outcome) {
        self.accepted += o.accepted;
        for (k, v) in o.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latencies_us.extend(o.latencies_us);
    }

    fn failures(&self) -> usize {
        self.rejected.values().sum::<usize>() + self.errors.values().sum::<usize>()
    }

    fn check_clean(&self, what: &str) {
        if self.failures() > 0 {
            eprintln!(
                "{what}: {} not accepted: rejected {:?}, errors {:?}",
                self.failures(),
                self.rejected,
                self.errors
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentiles(lat_us: &mut [u64]) -> Option<Percentiles> {
    if lat_us.is_empty() {
        return None;
    }
    lat_us.sort_unstable();
    let at = |q: f64| {
        let i = ((lat_us.len() as f64 * q).ceil() as usize).clamp(1, lat_us.len()) - 1;
        lat_us[i] as f64 / 1000.0
    };
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: lat_us[lat_us.len() - 1] as f64 / 1000.0,
    })
}

fn fmt_pct(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            p.p50, p.p90, p.p99, p.p999, p.max
        ),
        None => "no accepted messages".into(),
    }
}

async fn submit(client: &Client, bytes: &[u8]) -> Result<Response, String> {
    client
        .request(&Request::Submit(bytes.to_vec()), REQUEST_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// Submit every message as fast as possible with `concurrency` requests in flight.
async fn flood(clients: &[Client], msgs: Arc<Vec<Msg>>, concurrency: usize) -> Outcome {
    flood_tracked(clients, msgs, concurrency, None).await
}

/// [`flood`], noting each submission's start in `track`.
async fn flood_tracked(
    clients: &[Client],
    msgs: Arc<Vec<Msg>>,
    concurrency: usize,
    track: Option<Arc<Track>>,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(msgs.len()) {
        let (clients, msgs, next) = (clients.to_vec(), msgs.clone(), next.clone());
        let track = track.clone();
        tasks.spawn(async move {
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= msgs.len() || Instant::now() > deadline {
                    break;
                }
                let m = &msgs[i];
                let t0 = Instant::now();
                if let Some(t) = &track {
                    t.note(&t.submitted, i, t0);
                }
                let r = submit(&clients[m.conn], &m.bytes).await;
                out.record(r, t0.elapsed());
            }
            out
        });
    }
    let mut all = Outcome::default();
    while let Some(r) = tasks.join_next().await {
        all.merge(r.unwrap());
    }
    all
}

/// Submit messages paced at `rate` per second; latency counts from each scheduled time.
async fn paced(clients: &[Client], msgs: Arc<Vec<Msg>>, rate: u64) -> (Outcome, usize) {
    paced_tracked(clients, msgs, rate, None).await
}

/// [`paced`], noting each message's scheduled send time in `track`.
async fn paced_tracked(
    clients: &[Client],
    msgs: Arc<Vec<Msg>>,
    rate: u64,
    track: Option<Arc<Track>>,
) -> (Outcome, usize) {
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Outcome::default();
    for i in 0..msgs.len() {
        let due = start + interval * u32::try_from(i).unwrap();
        tokio::time::sleep_until(due).await;
        if let Some(t) = &track {
            t.note(&t.submitted, i, due.into_std());
        }
        let (client, msgs) = (clients[msgs[i].conn].clone(), msgs.clone());
        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
        let track = track.clone();
        tasks.spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            max_in_flight.fetch_max(now, Ordering::Relaxed);
            let r = submit(&client, &msgs[i].bytes).await;
            if let Some(t) = &track {
                t.note(&t.accepted, i, Instant::now());
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (r, due.elapsed())
        });
        // Collect finished ones as we go so the set stays small.
        while let Some(r) = tasks.try_join_next() {
            let (r, took) = r.unwrap();
            out.record(r, took);
        }
    }
    while let Some(r) = tasks.join_next().await {
        let (r, took) = r.unwrap();
        out.record(r, took);
    }
    (out, max_in_flight.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Debug, Default)]
struct Summary {
    lines: Vec<String>,
}

impl Summary {
    fn add(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

async fn throughput(o: &Opts, sum: &mut Summary) {
    let load = load_average();
    let b = Bench::new(o);
    let broker = b.start_broker();
    b.setup_case(broker.addr).await;
    let clients = b.sender_clients(broker.addr).await;
    let t = Instant::now();
    let msgs = Arc::new(b.seal_many(0, o.messages));
    let avg = msgs.iter().map(|m| m.bytes.len()).sum::<usize>() / msgs.len();
    println!(
        "throughput: sealed {} messages (avg envelope {avg} bytes) in {:.1} s",
        msgs.len(),
        t.elapsed().as_secs_f64()
    );
    let (cpu0, gen0) = (broker.cpu_secs(), own_cpu_secs(broker.clk_tck));
    let t = Instant::now();
    let mut out = flood(&clients, msgs, o.concurrency).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = broker.cpu_secs() - cpu0;
    let gen = own_cpu_secs(broker.clk_tck) - gen0;
    let mem = broker.mem();
    out.check_clean("throughput");
    for c in &clients {
        c.close().await;
    }
    let stopped = broker.stop();
    let commits = stopped.commits;
    let rate = out.accepted as f64 / secs;
    let commits_text = commits.map_or("unknown".into(), |c| c.to_string());
    if let Some((alone, batched)) = stopped.signatures {
        sum.add(format!(
            "throughput: header signatures verified one at a time {alone}, in batches {batched}"
        ));
    }
    sum.add(format!(
        "throughput: {} accepted of {} in {secs:.2} s = {rate:.0} accepted/s \
         ({} in flight, 4 connections, avg envelope {avg} B) [target >= 5000/s: {}]",
        out.accepted,
        o.messages,
        o.concurrency,
        verdict(rate >= 5000.0 && out.failures() == 0)
    ));
    sum.add(format!(
        "throughput: group commits (fsyncs) over the broker's whole run: {commits_text} \
         (~{:.0} messages per commit); broker RSS {:.0} MiB",
        commits.map_or(0.0, |c| out.accepted as f64 / c.max(1) as f64),
        mib(mem.rss_kib)
    ));
    sum.add(format!(
        "throughput: CPU: broker {cpu:.1} s ({:.0}% of one core, {:.0} us per message), \
         load generator {gen:.1} s ({:.0}%); machine load average before: {}",
        100.0 * cpu / secs,
        1e6 * cpu / out.accepted.max(1) as f64,
        100.0 * gen / secs,
        load
    ));
    sum.add(format!(
        "throughput: latency under load: {}",
        fmt_pct(percentiles(&mut out.latencies_us))
    ));
}

async fn latency(o: &Opts, sum: &mut Summary) {
    let load = load_average();
    let b = Bench::new(o);
    let broker = b.start_broker();
    b.setup_case(broker.addr).await;
    let clients = b.sender_clients(broker.addr).await;
    let warm_n = usize::try_from(o.rate * 2).unwrap();
    let n = usize::try_from(o.rate * o.seconds).unwrap();
    let warm = Arc::new(b.seal_many(0, warm_n));
    let msgs = Arc::new(b.seal_many(warm_n, n));
    let (w, _) = paced(&clients, warm, o.rate).await;
    w.check_clean("latency warm-up");
    let cpu0 = broker.cpu_secs();
    let t = Instant::now();
    let (mut out, max_in_flight) = paced(&clients, msgs, o.rate).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = broker.cpu_secs() - cpu0;
    out.check_clean("latency");
    for c in &clients {
        c.close().await;
    }
    let commits = broker.stop().commits;
    let p = percentiles(&mut out.latencies_us);
    sum.add(format!(
        "latency: {} accepted of {n} paced at {}/s over {secs:.1} s (after a 2 s warm-up): {} \
         [target p99 < 20 ms: {}]",
        out.accepted,
        o.rate,
        fmt_pct(p),
        verdict(p.is_some_and(|p| p.p99 < 20.0) && out.failures() == 0)
    ));
    sum.add(format!(
        "latency: at most {max_in_flight} in flight; broker CPU {:.0}% of one core; \
         group commits over the whole run: {}; machine load average before: {load}",
        100.0 * cpu / secs,
        commits.map_or("unknown".into(), |c| c.to_string())
    ));
}

/// What the flooding party managed.
#[derive(Debug, Default)]
struct FloodStats {
    attempts: AtomicUsize,
    served: AtomicUsize,
    stalled: AtomicUsize,
    over_limit: AtomicUsize,
    oversized: AtomicUsize,
}

/// Flood the broker as party `who` until `stop`: see the `flood` scenario.
async fn flooder(
    addr: SocketAddr,
    tls: ClientTls,
    stop: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<FloodStats>,
) {
    let mut held: Vec<Client> = Vec::new();
    let mut stalled = Vec::new();
    let huge = Request::Submit(vec![0u8; 17 * 1024 * 1024]).encode();
    while !stop.load(Ordering::Relaxed) {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(c) = Client::connect(addr, "localhost", &tls).await else {
            continue;
        };
        match c.request(&Request::GetCheckpoint, REQUEST_TIMEOUT).await {
            Ok(Response::Checkpoint(_)) => {}
            _ => continue,
        }
        stats.served.fetch_add(1, Ordering::Relaxed);
        // Requests that announce a large envelope and stall.
        for _ in 0..64 {
            let Ok((mut send, mut recv)) = c.connection().expect("a QUIC client").open_bi().await
            else {
                break;
            };
            let mut head = vec![ketenpost_schemas::protocol::PROTOCOL_VERSION, 0x01];
            head.resize(256 * 1024, 0);
            let _ = tokio::time::timeout(Duration::from_millis(100), send.write_all(&head)).await;
            if let Ok(Ok(b)) =
                tokio::time::timeout(Duration::from_millis(5), recv.read_to_end(4096)).await
            {
                if matches!(Response::decode(&b), Ok(Response::Rejected(_))) {
                    stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            stats.stalled.fetch_add(1, Ordering::Relaxed);
            stalled.push((send, recv));
        }
        // An oversized frame, refused after its bound.
        let c2 = c.clone();
        let huge = huge.clone();
        let stats2 = stats.clone();
        tokio::spawn(async move {
            if let Ok((mut send, mut recv)) =
                c2.connection().expect("a QUIC client").open_bi().await
            {
                let _ = tokio::time::timeout(Duration::from_secs(5), send.write_all(&huge)).await;
                let _ = send.finish();
                if tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(4096))
                    .await
                    .is_ok()
                {
                    stats2.oversized.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        held.push(c);
    }
    drop(stalled);
    for c in held {
        c.close().await;
    }
}

async fn flood_scenario(o: &Opts, sum: &mut Summary) {
    let load = load_average();
    let b = Bench::new(o);
    let broker = b.start_broker();
    b.setup_case(broker.addr).await;
    let clients = b.sender_clients(broker.addr).await;
    let warm_n = usize::try_from(o.rate * 2).unwrap();
    let n = usize::try_from(o.rate * o.seconds).unwrap();
    let warm = Arc::new(b.seal_many(0, warm_n));
    let alone_msgs = Arc::new(b.seal_many(warm_n, n));
    let flood_msgs = Arc::new(b.seal_many(warm_n + n, n));
    let (w, _) = paced(&clients, warm, o.rate).await;
    w.check_clean("flood warm-up");
    let (mut alone, _) = paced(&clients, alone_msgs, o.rate).await;
    alone.check_clean("flood (alone)");

    let p = &b.fed.parties[0];
    let tls = ClientTls {
        ca: b.fed.ca.cert.clone(),
        cert: p.cert.clone(),
        key: p.key.clone(),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..2 {
        flooders.spawn(flooder(
            broker.addr,
            tls.clone(),
            stop.clone(),
            stats.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem_flood = broker.mem();
    let (mut during, _) = paced(&clients, flood_msgs, o.rate).await;
    stop.store(true, Ordering::Relaxed);
    while flooders.join_next().await.is_some() {}
    during.check_clean("flood (during)");
    for c in &clients {
        c.close().await;
    }
    broker.stop();
    let (pa, pd) = (
        percentiles(&mut alone.latencies_us),
        percentiles(&mut during.latencies_us),
    );
    let ratio = match (pa, pd) {
        (Some(a), Some(d)) if a.p99 > 0.0 => d.p99 / a.p99,
        _ => f64::INFINITY,
    };
    sum.add(format!(
        "flood: other partners at {}/s for {} s, alone: {}",
        o.rate,
        o.seconds,
        fmt_pct(pa)
    ));
    sum.add(format!(
        "flood: the same while one partner floods: {} (p99 {ratio:.2}x alone) [target <= 2x: {}]",
        fmt_pct(pd),
        verdict(ratio <= 2.0 && during.failures() == 0)
    ));
    sum.add(format!(
        "flood: the flooder tried {} connections, {} were served (8 at a time at most), held \
         {} stalled 256 KiB requests, got {} over_limit answers, sent {} oversized frames; \
         broker RSS during the flood {:.0} MiB; machine load average before: {load}",
        stats.attempts.load(Ordering::Relaxed),
        stats.served.load(Ordering::Relaxed),
        stats.stalled.load(Ordering::Relaxed),
        stats.over_limit.load(Ordering::Relaxed),
        stats.oversized.load(Ordering::Relaxed),
        mib(mem_flood.rss_kib)
    ));
}

async fn memory(o: &Opts, sum: &mut Summary) {
    let load = load_average();
    let b = Bench::new(o);
    let broker = b.start_broker();
    b.setup_case(broker.addr).await;
    let clients = b.sender_clients(broker.addr).await;
    let start = Instant::now();
    let mut submit_secs = 0.0;
    let mut total = Outcome::default();
    let mut queued = 0;
    while queued < o.queue && start.elapsed() < Duration::from_secs(3600) {
        let n = o.batch.min(o.queue - queued);
        let msgs = Arc::new(b.seal_many(queued, n));
        let t = Instant::now();
        let mut out = flood(&clients, msgs, o.concurrency).await;
        submit_secs += t.elapsed().as_secs_f64();
        out.latencies_us = Vec::new();
        total.merge(out);
        queued += n;
        let mem = broker.mem();
        if queued % 100_000 == 0 || queued == o.queue {
            let (apparent, _) = disk_usage(&b.data());
            println!(
                "memory: {queued:>8} submitted, {:>8} accepted, {:>6.0} s: broker RSS {:.0} MiB \
                 (peak {:.0} MiB), data {:.0} MiB",
                total.accepted,
                start.elapsed().as_secs_f64(),
                mib(mem.rss_kib),
                mib(mem.hwm_kib),
                apparent as f64 / 1048576.0
            );
        }
    }
    total.check_clean("memory");
    // Let the timers (checkpoint, sweep) run once more on the full queue.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let end = broker.mem();
    for c in &clients {
        c.close().await;
    }
    let stopped = broker.stop();
    let (apparent, allocated) = disk_usage(&b.data());
    sum.add(format!(
        "memory: {} messages queued (never fetched), cache_mb {}, submitted at {:.0}/s on \
         average: broker RSS at the end {:.0} MiB, peak (VmHWM) {:.0} MiB [target < 200 MB: {}]",
        total.accepted,
        o.cache_mb.map_or("default".into(), |m| m.to_string()),
        total.accepted as f64 / submit_secs,
        mib(end.rss_kib),
        mib(end.hwm_kib),
        verdict(end.hwm_kib * 1024 < 200_000_000 && total.accepted == o.queue)
    ));
    sum.add(format!(
        "memory: data directory {:.0} MiB apparent, {:.0} MiB allocated ({:.0} bytes per \
         message); machine load average before: {load}",
        apparent as f64 / 1048576.0,
        allocated as f64 / 1048576.0,
        allocated as f64 / total.accepted.max(1) as f64
    ));
    if let Some((live, resident)) = stopped.allocator {
        sum.add(format!(
            "memory: the broker's allocator at the end: {live} MiB allocated (live), \
             {resident} MiB resident"
        ));
    }
    // A restart on the full queue: recovery time and memory.
    let t = Instant::now();
    let broker = b.start_broker();
    let up = t.elapsed().as_secs_f64();
    let zorg = b.connect(broker.addr, ZORG).await;
    let r = zorg
        .request(
            &Request::Fetch {
                max: 10,
                wait_ms: 0,
                skip: Vec::new(),
            },
            REQUEST_TIMEOUT,
        )
        .await
        .unwrap();
    let fetched = match r {
        Response::Deliveries(d) => d.len(),
        other => panic!("{other:?}"),
    };
    let after = broker.mem();
    // The timers' first run over the long queue: the sweep, and the audit trail's
    // verification, which reads every record. RSS every 5 s until the broker logs the
    // verification's result (at most 10 minutes), then 15 s more.
    let since = Instant::now();
    let verified = loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let m = broker.mem();
        println!(
            "memory: restarted {:>4.0} s: broker RSS {:.0} MiB (peak {:.0} MiB)",
            since.elapsed().as_secs_f64(),
            mib(m.rss_kib),
            mib(m.hwm_kib)
        );
        if broker.logged("audit trail verified") {
            break Some(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > Duration::from_secs(600) {
            break None;
        }
    };
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled = broker.mem();
    zorg.close().await;
    let stopped = broker.stop();
    sum.add(format!(
        "memory: restart on that data: listening after {up:.1} s, first fetch gave {fetched}, \
         broker RSS {:.0} MiB (peak {:.0} MiB) [target < 150 MB: {}]",
        mib(after.rss_kib),
        mib(after.hwm_kib),
        verdict(after.hwm_kib * 1024 < 150_000_000)
    ));
    sum.add(format!(
        "memory: after the restart, the trail verified {}; 15 s after that RSS {:.0} MiB, peak \
         since the restart {:.0} MiB [target < 150 MB: {}]",
        verified.map_or("not within 10 minutes".to_owned(), |s| format!(
            "after {s:.0} s"
        )),
        mib(settled.rss_kib),
        mib(settled.hwm_kib),
        verdict(settled.hwm_kib * 1024 < 150_000_000)
    ));
    if let Some((live, resident)) = stopped.allocator {
        sum.add(format!(
            "memory: the restarted broker's allocator at the end: {live} MiB allocated (live), \
             {resident} MiB resident"
        ));
    }
}

// ---------------------------------------------------------------------------------------
// End to end

/// When each message of one phase was submitted, delivered and receipted (microseconds
/// since `epoch`, `u64::MAX` while not yet), by its index in the phase.
struct Track {
    epoch: Instant,
    /// `epoch` as wall-clock time, to line a timeline up with the broker's log.
    epoch_unix: std::time::SystemTime,
    index: std::collections::HashMap<MessageId, usize>,
    submitted: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
    receipted: Vec<AtomicU64>,
    /// Receipts answered `done`.
    done: AtomicUsize,
    /// How many receipts end the phase: every message, or as many as were accepted once
    /// the submissions are over.
    expected: AtomicUsize,
    /// Deliveries of a message delivered before (a fetch before its receipt was durable).
    redelivered: AtomicUsize,
    /// Deliveries of messages of no phase, receipts not answered `done`.
    stray: AtomicUsize,
    failed_receipts: AtomicUsize,
}

impl Track {
    fn new(msgs: &[Msg]) -> Track {
        let n = msgs.len();
        let none = || (0..n).map(|_| AtomicU64::new(u64::MAX)).collect::<Vec<_>>();
        Track {
            epoch: Instant::now(),
            epoch_unix: std::time::SystemTime::now(),
            index: msgs.iter().enumerate().map(|(i, m)| (m.id, i)).collect(),
            submitted: none(),
            accepted: none(),
            delivered: none(),
            receipted: none(),
            done: AtomicUsize::new(0),
            expected: AtomicUsize::new(n),
            redelivered: AtomicUsize::new(0),
            stray: AtomicUsize::new(0),
            failed_receipts: AtomicUsize::new(0),
        }
    }

    fn note(&self, what: &[AtomicU64], i: usize, at: Instant) {
        let us = u64::try_from(at.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX - 1);
        what[i].store(us, Ordering::Relaxed);
    }

    /// Microseconds from submission to `what` of every message that got there.
    fn since_submit(&self, what: &[AtomicU64]) -> Vec<u64> {
        self.submitted
            .iter()
            .zip(what)
            .filter_map(|(s, w)| {
                let (s, w) = (s.load(Ordering::Relaxed), w.load(Ordering::Relaxed));
                (s != u64::MAX && w != u64::MAX).then_some(w.saturating_sub(s))
            })
            .collect()
    }

    /// Every message's times as CSV (`index,submitted_us,accepted_us,delivered_us,
    /// receipted_us`, empty while not yet), for a look at when the slow ones came.
    fn write_timeline(&self, path: &Path) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let mut csv = String::from("index,submitted_us,accepted_us,delivered_us,receipted_us\n");
        let at = |v: &[AtomicU64], i: usize| match v[i].load(Ordering::Relaxed) {
            u64::MAX => String::new(),
            us => us.to_string(),
        };
        for i in 0..self.submitted.len() {
            let _ = writeln!(
                csv,
                "{i},{},{},{},{}",
                at(&self.submitted, i),
                at(&self.accepted, i),
                at(&self.delivered, i),
                at(&self.receipted, i)
            );
        }
        std::fs::write(path, csv)
    }

    /// From the first submission to the last receipt answered, seconds.
    fn span_secs(&self) -> f64 {
        let first = self
            .submitted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let last = self
            .receipted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&v| v != u64::MAX)
            .max()
            .unwrap_or(first);
        last.saturating_sub(first) as f64 / 1e6
    }
}

/// The recipient (the zorgaanbieder), as the agent is: a fetch always waiting, naming in
/// `skip` the messages whose receipts are still on their way; for every delivered message
/// a signed receipt, sent at once. With `serial`, as the agent did before `skip`: all
/// receipts of a fetch answered before the next fetch. Until every message of `track` is
/// receipted or `stop` is set. Nothing is decrypted: the receipt names the digest the
/// header lists for the recipient's view.
async fn recipient(
    c: Client,
    me: Oin,
    key: SigningKey,
    track: Arc<Track>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    serial: bool,
    lone: bool,
) -> Client {
    let limits = ketenpost_schemas::envelope::Limits::default();
    let deadline = Instant::now() + PHASE_LIMIT;
    // Queue positions of the messages whose receipts are on their way.
    let in_hand = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeSet::<u64>::new(),
    ));
    let mut receipts = tokio::task::JoinSet::new();
    while track.done.load(Ordering::Relaxed) < track.expected.load(Ordering::Relaxed)
        && !stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        // Finished receipts need not be held.
        while receipts.try_join_next().is_some() {}
        let skip: Vec<u64> = in_hand.lock().unwrap().iter().copied().collect();
        let r = c
            .request(
                &Request::Fetch {
                    max: 256,
                    wait_ms: 500,
                    skip,
                },
                REQUEST_TIMEOUT,
            )
            .await;
        let at = Instant::now();
        let items = match r {
            Ok(Response::Deliveries(items)) => items,
            other => panic!("a fetch was answered {other:?}"),
        };
        // (message index, queue position, signed receipt) of each delivered message.
        let mut signed = Vec::with_capacity(items.len());
        for item in items {
            let ketenpost_schemas::protocol::Delivery::Message { envelope, seq } = item else {
                continue;
            };
            let bytes = ketenpost_schemas::protocol::envelope_from_b64(&envelope).unwrap();
            let env = ketenpost_schemas::envelope::Envelope::decode(&bytes, &limits).unwrap();
            let header = env.unverified_header().unwrap();
            let Some(&i) = track.index.get(&header.id) else {
                track.stray.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if track.delivered[i].load(Ordering::Relaxed) == u64::MAX {
                track.note(&track.delivered, i, at);
            } else {
                track.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            in_hand.lock().unwrap().insert(seq);
            let (_, view) = header.body_for(&me).unwrap();
            let receipt = ketenpost_schemas::control::DeliveryReceipt {
                message_id: header.id,
                recipient: me.clone(),
                body_sha256: view.sha256.clone(),
                received_at: Utc::now(),
            };
            signed.push((
                i,
                seq,
                SignedRecord::sign(&receipt, me.clone(), &key).unwrap(),
            ));
        }
        // A fetched batch's receipts in one request (`--lone-receipts`: one request each).
        let per_request = if lone { 1 } else { MAX_RECEIPTS };
        while !signed.is_empty() {
            let batch: Vec<_> = signed.drain(..signed.len().min(per_request)).collect();
            let (c, track, in_hand) = (c.clone(), track.clone(), in_hand.clone());
            receipts.spawn(async move {
                let (held, recs): (Vec<(usize, u64)>, Vec<SignedRecord>) = batch
                    .into_iter()
                    .map(|(i, seq, rec)| ((i, seq), rec))
                    .unzip();
                let outcomes = if lone {
                    let rec = recs.into_iter().next().unwrap();
                    match c.request(&Request::Receipt(rec), REQUEST_TIMEOUT).await {
                        Ok(answer) => vec![ReceiptOutcome::of(answer)],
                        Err(_) => Vec::new(),
                    }
                } else {
                    match c.request(&Request::Receipts(recs), REQUEST_TIMEOUT).await {
                        Ok(Response::Receipted(outcomes)) => outcomes,
                        _ => Vec::new(),
                    }
                };
                let at = Instant::now();
                for (k, &(i, seq)) in held.iter().enumerate() {
                    if outcomes.get(k) == Some(&ReceiptOutcome::Done) {
                        track.note(&track.receipted, i, at);
                        track.done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        track.failed_receipts.fetch_add(1, Ordering::Relaxed);
                    }
                    in_hand.lock().unwrap().remove(&seq);
                }
            });
        }
        if serial {
            while receipts.join_next().await.is_some() {}
        }
    }
    while receipts.join_next().await.is_some() {}
    c
}

/// A sender's connection long-polls its notices (the forwarded receipts) and
/// acknowledges them, until `stop`. Counts the notices.
async fn notice_drain(
    c: Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
    notices: Arc<AtomicUsize>,
) {
    let deadline = Instant::now() + PHASE_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let r = c
            .request(
                &Request::Fetch {
                    max: 256,
                    wait_ms: 200,
                    skip: Vec::new(),
                },
                REQUEST_TIMEOUT,
            )
            .await;
        let items = match r {
            Ok(Response::Deliveries(items)) => items,
            other => panic!("a sender's fetch was answered {other:?}"),
        };
        let up_to = items
            .iter()
            .filter_map(|d| match d {
                ketenpost_schemas::protocol::Delivery::Notice { seq, .. } => Some(*seq),
                ketenpost_schemas::protocol::Delivery::Message { .. } => None,
            })
            .max();
        if let Some(up_to) = up_to {
            notices.fetch_add(items.len(), Ordering::Relaxed);
            match c.request(&Request::Ack { up_to }, REQUEST_TIMEOUT).await {
                Ok(Response::Done) => {}
                other => panic!("an ack was answered {other:?}"),
            }
        }
    }
}

/// One end-to-end phase: the recipient and the senders' notice loops run while `submit`
/// submits the phase's messages; returns the submissions' outcome when every message is
/// receipted (or the phase's bound ran out).
async fn e2e_phase<F>(
    b: &Bench,
    addr: SocketAddr,
    clients: &[Client],
    track: Arc<Track>,
    submit: F,
) -> (Outcome, usize)
where
    F: std::future::Future<Output = Outcome>,
{
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let zorg = b.connect(addr, ZORG).await;
    let rx = tokio::spawn(recipient(
        zorg,
        b.oin(ZORG).clone(),
        b.keys[ZORG].clone(),
        track.clone(),
        stop.clone(),
        b.serial_fetch,
        b.lone_receipts,
    ));
    let notices = Arc::new(AtomicUsize::new(0));
    let mut drains = tokio::task::JoinSet::new();
    for c in clients {
        drains.spawn(notice_drain(c.clone(), stop.clone(), notices.clone()));
    }
    let out = submit.await;
    track.expected.store(out.accepted, Ordering::Relaxed);
    let zorg = tokio::time::timeout(PHASE_LIMIT, rx).await;
    stop.store(true, Ordering::Relaxed);
    while drains.join_next().await.is_some() {}
    let zorg = zorg.expect("the recipient did not finish in time").unwrap();
    zorg.close().await;
    (out, notices.load(Ordering::Relaxed))
}

/// What the broker's own histograms saw between two scrapes: the part of the latency
/// spent inside the broker, and the disk's.
fn broker_side(what: &str, before: &str, after: &str) -> String {
    let h = |name: &str| Buckets::of(after, name).since(&Buckets::of(before, name));
    let settled = |by: &str| {
        let name = format!("ketenpost_broker_write_rounds_total{{settled_by=\"{by}\"}}");
        sample(after, &name).saturating_sub(sample(before, &name))
    };
    format!(
        "{what}: in the broker (its histograms' bucket bounds): submission (read whole to \
         answered) {}; durable write (queued to landed) {}; spool fsync {}; database \
         flush and fsync {}; writer rounds settled by the writer {}, by the settling thread {}",
        h("ketenpost_broker_submit_seconds").summary_ms(),
        h("ketenpost_broker_store_write_seconds").summary_ms(),
        h("ketenpost_broker_spool_fsync_seconds").summary_ms(),
        h("ketenpost_broker_fsync_seconds").summary_ms(),
        settled("writer"),
        settled("settling"),
    )
}

/// The value of the sample `name` (with its labels) in a scrape; 0 when absent.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn e2e(o: &Opts, sum: &mut Summary) {
    let load = load_average();
    let b = Bench::new(o);
    let broker = b.start_broker();
    b.setup_case(broker.addr).await;
    let clients = b.sender_clients(broker.addr).await;

    // Saturation: submit as fast as the throughput scenario while the recipient keeps up.
    let msgs = Arc::new(b.seal_many(0, o.messages));
    let track = Arc::new(Track::new(&msgs));
    let cpu0 = broker.cpu_secs();
    let t = Instant::now();
    let (mut out, notices) = e2e_phase(
        &b,
        broker.addr,
        &clients,
        track.clone(),
        flood_tracked(&clients, msgs.clone(), o.concurrency, Some(track.clone())),
    )
    .await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = broker.cpu_secs() - cpu0;
    out.check_clean("e2e");
    let done = track.done.load(Ordering::Relaxed);
    let span = track.span_secs();
    let rate = done as f64 / span.max(1e-9);
    sum.add(format!(
        "e2e: {done} of {} messages accepted, delivered and receipted in {span:.2} s = \
         {rate:.0} msg/s end to end ({} accepted, {} in flight; {} redelivered, {} failed \
         receipts, {notices} notices acked by the senders)",
        o.messages,
        out.accepted,
        o.concurrency,
        track.redelivered.load(Ordering::Relaxed),
        track.failed_receipts.load(Ordering::Relaxed),
    ));
    sum.add(format!(
        "e2e: at saturation: submit->accepted {}",
        fmt_pct(percentiles(&mut out.latencies_us))
    ));
    sum.add(format!(
        "e2e: at saturation: submit->delivered {}",
        fmt_pct(percentiles(&mut track.since_submit(&track.delivered)))
    ));
    sum.add(format!(
        "e2e: broker CPU {cpu:.1} s over {wall:.1} s ({:.0} us per message end to end)",
        1e6 * cpu / done.max(1) as f64
    ));

    // Paced: what a partner sees at a moderate load.
    let warm_n = usize::try_from(o.e2e_rate * 2).unwrap();
    let n = usize::try_from(o.e2e_rate * o.seconds).unwrap();
    let warm = Arc::new(b.seal_many(o.messages, warm_n));
    let paced_msgs = Arc::new(b.seal_many(o.messages + warm_n, n));
    let wtrack = Arc::new(Track::new(&warm));
    let (w, _) = e2e_phase(&b, broker.addr, &clients, wtrack.clone(), async {
        paced_tracked(&clients, warm.clone(), o.e2e_rate, Some(wtrack.clone()))
            .await
            .0
    })
    .await;
    w.check_clean("e2e warm-up");
    let ptrack = Arc::new(Track::new(&paced_msgs));
    let metrics0 = broker.scrape();
    let cpu0 = broker.cpu_secs();
    let t = Instant::now();
    let (mut p_out, _) = e2e_phase(&b, broker.addr, &clients, ptrack.clone(), async {
        paced_tracked(
            &clients,
            paced_msgs.clone(),
            o.e2e_rate,
            Some(ptrack.clone()),
        )
        .await
        .0
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = broker.cpu_secs() - cpu0;
    let metrics1 = broker.scrape();
    p_out.check_clean("e2e paced");
    if let Some(path) = std::env::var_os("KETENPOST_BENCH_TIMELINE") {
        match ptrack.write_timeline(Path::new(&path)) {
            Ok(()) => println!(
                "e2e: paced phase's timeline written to {} (microseconds from unix time {} us)",
                Path::new(&path).display(),
                ptrack
                    .epoch_unix
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros())
            ),
            Err(e) => println!("e2e: cannot write the timeline: {e}"),
        }
    }
    let accepted = percentiles(&mut p_out.latencies_us);
    let delivered = percentiles(&mut ptrack.since_submit(&ptrack.delivered));
    let receipted = percentiles(&mut ptrack.since_submit(&ptrack.receipted));
    sum.add(format!(
        "e2e: paced at {}/s for {} s ({} receipted of {n}): submit->accepted {} \
         [target p99 < 5 ms: {}]",
        o.e2e_rate,
        o.seconds,
        ptrack.done.load(Ordering::Relaxed),
        fmt_pct(accepted),
        verdict(accepted.is_some_and(|p| p.p99 < 5.0) && p_out.failures() == 0)
    ));
    sum.add(format!(
        "e2e: paced: submit->delivered {} [target p99 < 10 ms: {}]",
        fmt_pct(delivered),
        verdict(delivered.is_some_and(|p| p.p99 < 10.0))
    ));
    sum.add(format!(
        "e2e: paced: submit->receipted {}; broker CPU {:.0}% of one core",
        fmt_pct(receipted),
        100.0 * cpu / secs
    ));
    sum.add(broker_side("e2e: paced", &metrics0, &metrics1));

    // Every body deleted: the recipient's queue is empty.
    let zorg = b.connect(broker.addr, ZORG).await;
    let left = match zorg
        .request(
            &Request::Fetch {
                max: 256,
                wait_ms: 0,
                skip: Vec::new(),
            },
            REQUEST_TIMEOUT,
        )
        .await
        .unwrap()
    {
        Response::Deliveries(d) => d
            .iter()
            .filter(|d| matches!(d, ketenpost_schemas::protocol::Delivery::Message { .. }))
            .count(),
        other => panic!("{other:?}"),
    };
    zorg.close().await;
    for c in &clients {
        c.close().await;
    }
    let stopped = broker.stop();
    let commits = stopped.commits;
    if let Some((alone, batched)) = stopped.signatures {
        sum.add(format!(
            "e2e: signatures verified (headers and receipts) one at a time {alone}, in batches {batched}"
        ));
    }
    let (apparent, _) = disk_usage(&b.data());
    sum.add(format!(
        "e2e: after the run the recipient's queue holds {left} messages; data directory \
         {:.0} MiB; group commits over the whole run: {}; machine load average before: {load}",
        apparent as f64 / 1048576.0,
        commits.map_or("unknown".into(), |c| c.to_string())
    ));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("load: a benchmark; run it with `cargo bench -p ketenpost-broker --bench load`");
        return;
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sum = Summary::default();
    println!(
        "load: {} cores, scenarios {:?}, broker {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.scenarios,
        env!("CARGO_BIN_EXE_ketenpost-broker")
    );
    for s in &opts.scenarios {
        match s.as_str() {
            "throughput" => rt.block_on(throughput(&opts, &mut sum)),
            "latency" => rt.block_on(latency(&opts, &mut sum)),
            "memory" => rt.block_on(memory(&opts, &mut sum)),
            "flood" => rt.block_on(flood_scenario(&opts, &mut sum)),
            "e2e" => rt.block_on(e2e(&opts, &mut sum)),
            _ => unreachable!(),
        }
    }
    println!("\n== summary ==");
    for l in &sum.lines {
        println!("{l}");
    }
}
