//! Benchmark of the agent: seal-and-submit throughput and idle memory (issue 4, "Speed and
//! size": an idle agent under 50 MB resident; seal-and-submit of a 4 KiB aanmelding to three
//! recipient roles at 500 per second or more).
//!
//! ```text
//! cargo bench -p ketenpost-agent --bench seal_submit                 # seal + idle
//! cargo bench -p ketenpost-agent --bench seal_submit -- seal
//! cargo bench -p ketenpost-agent --bench seal_submit -- idle
//! cargo bench -p ketenpost-agent --bench seal_submit -- seal --messages=5000 --concurrency=1,16
//! ```
//!
//! Every scenario makes a fresh dev federation from the Walcheren policy in a temporary
//! directory, with a roster of one gemeente, one woningcorporatie and **two**
//! zorgaanbieders (so a care provider can send an aanmelding to another one), and starts a
//! real broker in this process on 127.0.0.1:0 with its default limits (every check on, an
//! fsync before each `accepted`).
//!
//! - `seal`: the gemeente's agent opens a case with the three others and registers a
//!   consent for all three roles; the first zorgaanbieder's agent (in this process, default
//!   timing) registers the team. Then:
//!   1. the pure cost of [`ketenpost_schemas::seal::seal`] of the aanmelding (its JSON padded
//!      to 4 KiB through `motivatie`) to the three roles, in a loop on one thread, next to
//!      its parts (schema validation, age encryption of one view);
//!   2. for each `--concurrency` (default `1,16`): `--messages` (5,000) calls of
//!      [`ketenpost_agent::Core::send`] addressed `to` the roles gemeente, woningcorporatie
//!      and zorgaanbieder, that many callers at once. Reported: the rate at which `send`
//!      returns (checked, sealed and fsynced into the outbox) and the rate until the broker
//!      accepted every message (the outbox queue is polled every 5 ms, bounded; then every
//!      message's status is checked to be `accepted`). Only the gemeente's agent ran for
//!      the setup; no recipient agent fetches during the measurement, so the numbers are the
//!      sender's and the broker's.
//!      The agent logs at `info` to a file, as the binary does by default.
//! - `idle`: the release `ketenpost-agent run -c <config>` binary (built next to this bench)
//!   as its own process against the in-process broker, default timing; its VmRSS and VmHWM
//!   come from `/proc/<pid>/status`. Once it logs "agent running" it is left idle for
//!   `--idle-secs` (10); then it registers the case team and sends `--idle-sends` (1,000)
//!   aanmeldingen through `POST /v1/messages` (8 callers) until the broker accepted them
//!   all; then it is left idle again, for `--idle-secs` and twice that. Then SIGTERM, and a
//!   bounded wait for it to stop.
//!
//! Without `--bench` on the command line (`cargo test --all-targets` runs bench targets once
//! as tests) it does nothing: a benchmark is never a timed test.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ketenpost_agent::config::{
    AgentConfig, ApiSection, BrokerSection, InboxSection, KeysSection, TimingSection,
};
use ketenpost_agent::ops::{AddMember, GrantConsent, Member, OpenCase, RegisterCase};
use ketenpost_agent::outbox::Status;
use ketenpost_agent::Agent;
use ketenpost_agent::{SendRequest, To};
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::envelope::LegalBasis;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{self, Aanmelding};
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::seal::{self, Draft, Sender};
use ketenpost_transport::tls::ClientTls;
use serde_json::Value;

const WALCHEREN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/policies/walcheren.toml"
);

const ROSTER: &str = r#"
[[party]]
name = "Gemeente Bench"
oin = "00000001000000000001"
roles = ["gemeente"]
[[party]]
name = "Corporatie Bench"
oin = "00000001000000000002"
roles = ["woningcorporatie"]
[[party]]
name = "Zorg Een"
oin = "00000001000000000003"
roles = ["zorgaanbieder"]
[[party]]
name = "Zorg Twee"
oin = "00000001000000000004"
roles = ["zorgaanbieder"]
"#;

const GEMEENTE: &str = "00000001000000000001";
const CORPORATIE: &str = "00000001000000000002";
const SENDER: &str = "00000001000000000003";
const ZORG_TWEE: &str = "00000001000000000004";

/// Size of the serialized aanmelding.
const PAYLOAD_BYTES: usize = 4096;
/// Bound on waiting for the broker to accept a phase's messages.
const ACCEPT_LIMIT: Duration = Duration::from_secs(600);
/// Bound on one setup step.
const STEP_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    scenarios: Vec<String>,
    messages: usize,
    concurrency: Vec<usize>,
    seal_iters: usize,
    idle_secs: u64,
    idle_sends: usize,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        scenarios: Vec::new(),
        messages: 5_000,
        concurrency: vec![1, 16],
        seal_iters: 2_000,
        idle_secs: 10,
        idle_sends: 1_000,
    };
    let number = |a: &str, v: &str| -> Result<usize, String> {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{a}: needs a number of at least 1")),
        }
    };
    for a in args {
        if a == "--bench" {
            continue;
        }
        if let Some((k, v)) = a.strip_prefix("--").and_then(|kv| kv.split_once('=')) {
            match k {
                "messages" => o.messages = number(a, v)?,
                "seal-iters" => o.seal_iters = number(a, v)?,
                "idle-secs" => o.idle_secs = number(a, v)? as u64,
                "idle-sends" => o.idle_sends = number(a, v)?,
                "concurrency" => {
                    o.concurrency = v
                        .split(',')
                        .map(|c| number(a, c))
                        .collect::<Result<_, _>>()?
                }
                _ => return Err(format!("unknown option {a}")),
            }
            continue;
        }
        match a.as_str() {
            "seal" | "idle" => o.scenarios.push(a.clone()),
            "all" => o.scenarios.extend(["seal", "idle"].map(String::from)),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = vec!["seal".into(), "idle".into()];
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Process numbers

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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

/// CPU seconds (user + system) this process used so far.
fn own_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat")
}

/// CPU seconds (user + system) the calling thread used so far.
fn thread_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu_secs(path: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let after = text.rfind(')').map_or("", |i| &text[i + 1..]);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // CLK_TCK is 100 on Linux for every architecture this runs on.
    ticks as f64 / 100.0
}

#[derive(Debug, Clone, Copy)]
struct Cost {
    wall_us: f64,
    cpu_us: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// Federation, broker, agents

struct Net {
    dir: tempfile::TempDir,
    fed: Federation,
    broker: Option<Broker>,
}

impl Net {
    async fn start() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let roster = dir.path().join("roster.toml");
        std::fs::write(&roster, ROSTER).unwrap();
        let mut opts = InitOptions::new(WALCHEREN, dir.path().join("fed"));
        opts.roster = Some(roster);
        let fed = ketenpost_certs::init(&opts).unwrap();
        let broker = Broker::start(BrokerConfig::for_federation(
            &fed,
            dir.path().join("broker"),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .unwrap();
        Net {
            dir,
            fed,
            broker: Some(broker),
        }
    }

    fn broker_addr(&self) -> std::net::SocketAddr {
        self.broker.as_ref().unwrap().local_addr()
    }

    /// An agent configuration with the default timing, the API on 127.0.0.1:0.
    fn config(&self, oin: &str) -> AgentConfig {
        let p = self
            .fed
            .parties
            .iter()
            .find(|p| p.oin.as_str() == oin)
            .unwrap();
        let dir = self.dir.path().join("agents").join(oin);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("api.token");
        std::fs::write(&token_file, format!("bench-token-{oin}")).unwrap();
        AgentConfig {
            oin: p.oin.clone(),
            data_dir: dir.join("data"),
            broker: BrokerSection {
                address: self.broker_addr().to_string(),
                server_name: "localhost".into(),
                transport: Default::default(),
                tcp_address: None,
            },
            tls: ClientTls {
                ca: self.fed.ca.cert.clone(),
                cert: p.cert.clone(),
                key: p.key.clone(),
            },
            keys: KeysSection {
                signing_key: p.signing_key.clone(),
                age_identity: p.age_key.clone(),
                previous_age_identities: Vec::new(),
                federation_public_key: None,
                federation_public_key_file: Some(self.fed.federation.public_key.clone()),
            },
            api: ApiSection {
                listen: "127.0.0.1:0".parse().unwrap(),
                token_file,
            },
            timing: TimingSection::default(),
            inbox: InboxSection::default(),
        }
    }

    async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {STEP_LIMIT:?}"),
    }
}

/// The example aanmelding with `motivatie` padded so its JSON is exactly `PAYLOAD_BYTES`.
fn aanmelding_4k() -> Value {
    let mut a = Aanmelding::example();
    let base = "Ik wil weer zelfstandig wonen en werk mee aan de begeleiding. ";
    a.motivatie = Some(base.into());
    let len = serde_json::to_vec(&a).unwrap().len();
    assert!(len < PAYLOAD_BYTES, "the example alone is {len} bytes");
    let mut text = String::from(base);
    while text.len() < base.len() + (PAYLOAD_BYTES - len) {
        text.push_str("Ik houd me aan de afspraken. ");
    }
    text.truncate(base.len() + (PAYLOAD_BYTES - len));
    a.motivatie = Some(text);
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(serde_json::to_vec(&v).unwrap().len(), PAYLOAD_BYTES);
    payload::validate(payload::builtin(Kind::Aanmelding).unwrap(), &v).unwrap();
    v
}

/// The case the benchmark sends in.
struct Team {
    case_ref: CaseRef,
    consent_id: uuid::Uuid,
    members: Vec<Member>,
}

/// A case with gemeente, corporation and both care providers and a consent for the three
/// roles, made by the gemeente's agent (in this process, stopped afterwards).
async fn open_team(net: &Net) -> Team {
    let g = bounded("gemeente agent start", Agent::start(net.config(GEMEENTE)))
        .await
        .unwrap();
    let gc = g.core().clone();
    let case = bounded(
        "open case",
        gc.open_case(OpenCase {
            purpose: "uitstroom".into(),
            ..OpenCase::default()
        }),
    )
    .await
    .unwrap();
    for oin in [CORPORATIE, SENDER, ZORG_TWEE] {
        bounded(
            "add member",
            gc.add_member(
                &case.case_ref,
                AddMember {
                    oin: oin.parse().unwrap(),
                    role: None,
                    purpose: None,
                },
            ),
        )
        .await
        .unwrap();
    }
    let consent = bounded(
        "grant consent",
        gc.grant_consent(GrantConsent {
            case_ref: case.case_ref.clone(),
            purpose: None,
            roles: ["gemeente", "woningcorporatie", "zorgaanbieder"]
                .map(Role::new)
                .to_vec(),
            parties: Vec::new(),
            valid_from: None,
            valid_until: None,
            document_sha256: "ab".repeat(32),
            obtained_at: None,
            consent_id: None,
        }),
    )
    .await
    .unwrap();
    let members = gc
        .case(&case.case_ref)
        .unwrap()
        .members
        .iter()
        .map(|(oin, role)| Member {
            oin: oin.clone(),
            role: role.clone(),
        })
        .collect();
    bounded("gemeente agent shutdown", g.shutdown()).await;
    Team {
        case_ref: case.case_ref,
        consent_id: consent.record.consent_id,
        members,
    }
}

/// The send request of the benchmark: the 4 KiB aanmelding to three roles.
fn send_request(team: &Team) -> SendRequest {
    SendRequest {
        kind: Kind::Aanmelding,
        case_ref: team.case_ref.clone(),
        purpose: None,
        to: ["gemeente", "woningcorporatie", "zorgaanbieder"]
            .map(|r| To::Role(Role::new(r)))
            .to_vec(),
        legal_basis: Some(LegalBasis::Consent {
            consent_id: team.consent_id,
        }),
        event_time: None,
        in_reply_to: None,
        answer_request: None,
        trace_id: None,
        payload: aanmelding_4k(),
    }
}

// ---------------------------------------------------------------------------------------
// seal

fn seal_scenario(rt: &tokio::runtime::Runtime, o: &Opts, out: &mut Vec<String>) {
    let net = rt.block_on(Net::start());
    let log_path = net.dir.path().join("agent.log");
    install_log(&log_path);
    let sender = rt
        .block_on(bounded(
            "sender agent start",
            Agent::start(net.config(SENDER)),
        ))
        .unwrap();
    let team = rt.block_on(open_team(&net));
    rt.block_on(bounded(
        "register case",
        sender.core().register_case(
            &team.case_ref,
            RegisterCase {
                purpose: "uitstroom".into(),
                members: team.members.clone(),
            },
        ),
    ))
    .unwrap();
    let req = send_request(&team);
    let (case_ref, consent_id, payload) =
        (team.case_ref.clone(), team.consent_id, req.payload.clone());

    // 1. The pure cost of sealing, on this thread, nothing else running.
    let core = sender.core().clone();
    let docs = core.docs();
    let recipients: Vec<(Oin, Role)> = vec![
        (GEMEENTE.parse().unwrap(), Role::new("gemeente")),
        (CORPORATIE.parse().unwrap(), Role::new("woningcorporatie")),
        (ZORG_TWEE.parse().unwrap(), Role::new("zorgaanbieder")),
    ];
    let key = ketenpost_schemas::keys::signing_key_from_text(
        std::fs::read_to_string(
            &net.fed
                .parties
                .iter()
                .find(|p| p.oin.as_str() == SENDER)
                .unwrap()
                .signing_key,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    let me: Oin = SENDER.parse().unwrap();
    let draft = Draft::new(
        "uitstroom",
        Kind::Aanmelding,
        case_ref.clone(),
        recipients,
        LegalBasis::Consent { consent_id },
        payload.clone(),
    );
    let iters = o.seal_iters;
    // Mean wall and CPU time of one call, after a warm-up.
    let time_it = |f: &mut dyn FnMut()| -> Cost {
        for _ in 0..iters.min(50) {
            f();
        }
        let (t, cpu) = (Instant::now(), thread_cpu_secs());
        for _ in 0..iters {
            f();
        }
        Cost {
            wall_us: t.elapsed().as_secs_f64() * 1e6 / iters as f64,
            cpu_us: (thread_cpu_secs() - cpu) * 1e6 / iters as f64,
        }
    };
    let mut envelope_len = 0;
    let seal_each = time_it(&mut || {
        let mut d = draft.clone();
        d.id = MessageId::new();
        let (env, _) = seal::seal(
            d,
            Sender {
                oin: &me,
                key: &key,
            },
            &docs.policy,
            &docs.directory,
            Utc::now(),
        )
        .unwrap();
        envelope_len = env.encode().len();
    });
    let validate_each = time_it(&mut || {
        payload::validate(payload::builtin(Kind::Aanmelding).unwrap(), &payload).unwrap();
    });
    let schema_each = time_it(&mut || {
        std::hint::black_box(payload::schema_of(Kind::Aanmelding));
    });
    let schema = payload::schema_of(Kind::Aanmelding).unwrap();
    let compile_each = time_it(&mut || {
        std::hint::black_box(jsonschema::validator_for(&schema).unwrap());
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let compiled_each = time_it(&mut || {
        assert!(validator.iter_errors(&payload).next().is_none());
    });
    let age_recipient = docs
        .directory
        .active_party(&GEMEENTE.parse().unwrap())
        .unwrap()
        .recipient()
        .unwrap();
    let view = vec![0x5au8; PAYLOAD_BYTES];
    let encrypt_each = time_it(&mut || {
        seal::encrypt(std::slice::from_ref(&age_recipient), &view).unwrap();
    });
    let clone_each = time_it(&mut || {
        std::hint::black_box(draft.clone());
    });
    let row = |what: &str, c: Cost| format!("| {what} | {:.0} | {:.0} |\n", c.wall_us, c.cpu_us);
    out.push(format!(
        "## seal: pure cost on one thread, mean of {iters} calls after a warm-up\n\n\
         | step | wall µs | CPU µs |\n|---|---:|---:|\n{}{}{}{}{}{}{}\n\
         One thread seals at most {:.0} messages/s (by CPU time); the sealed envelope is \
         {envelope_len} bytes. `Core::send` validates the payload once itself and once more \
         inside `seal::seal`.\n",
        row(
            "`seal::seal` (validate, 3 views, 3 age encryptions, sign)",
            seal_each
        ),
        row(
            "`payload::validate` (aanmelding, 4 KiB; compiled validator cached)",
            validate_each
        ),
        row(
            "validating with a compiled validator, by hand",
            compiled_each
        ),
        row(
            "(once per kind and view) `payload::schema_of`, schemars generates the schema",
            schema_each
        ),
        row(
            "(once per kind and view) `jsonschema::validator_for` compiles it",
            compile_each
        ),
        row(
            "age encryption of one 4 KiB view to one recipient",
            encrypt_each
        ),
        row("(cloning the draft, part of the seal loop)", clone_each),
        1e6 / seal_each.cpu_us,
    ));
    eprintln!("{}", out.last().unwrap());

    // 2. send, then accepted, per concurrency.
    let mut rows = Vec::new();
    for &c in &o.concurrency {
        let row = rt.block_on(send_phase(&sender, &req, o.messages, c));
        eprintln!("{row}");
        rows.push(row);
    }
    out.push(format!(
        "## seal: {} aanmeldingen (4 KiB) to three recipient roles through `Core::send`\n\n\
         | callers | send returns (msg/s) | send p50 / p99 (ms) | all accepted (msg/s) | CPU ms per message (agent + broker) | load avg |\n\
         |---:|---:|---:|---:|---:|---:|\n{}\n",
        o.messages,
        rows.join("\n")
    ));
    let log_lines = std::fs::read_to_string(&log_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    eprintln!("agent + broker log: {log_lines} lines");
    rt.block_on(async {
        bounded("sender shutdown", sender.shutdown()).await;
        bounded("broker shutdown", net.stop()).await;
    });
}

/// `n` sends with `callers` concurrent callers; one table row.
async fn send_phase(sender: &Agent, req: &SendRequest, n: usize, callers: usize) -> String {
    let core = sender.core().clone();
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let cpu0 = own_cpu_secs();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (core, next, ids, latencies, req) = (
            core.clone(),
            next.clone(),
            ids.clone(),
            latencies.clone(),
            req.clone(),
        );
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                let entry = core.send(req.clone()).await.unwrap();
                let took = t.elapsed();
                ids.lock().unwrap().push(entry.message_id);
                latencies.lock().unwrap().push(took);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let sent_in = started.elapsed();
    let deadline = Instant::now() + ACCEPT_LIMIT;
    while core.store().outbox_queued_len() > 0 {
        assert!(
            Instant::now() < deadline,
            "the broker did not accept every message within {ACCEPT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepted_in = started.elapsed();
    let cpu = own_cpu_secs() - cpu0;
    let ids = std::mem::take(&mut *ids.lock().unwrap());
    assert_eq!(ids.len(), n);
    for id in &ids {
        let s = core.message(id).unwrap().status();
        assert!(
            matches!(s, Status::Accepted | Status::Delivered),
            "message {id} is {s:?}"
        );
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    format!(
        "| {callers} | {:.0} | {:.1} / {:.1} | {:.0} | {:.2} | {} |",
        n as f64 / sent_in.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        n as f64 / accepted_in.as_secs_f64(),
        cpu * 1000.0 / n as f64,
        load_average(),
    )
}

/// Log at `info` to a file, as the binary logs to stderr by default.
fn install_log(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

// ---------------------------------------------------------------------------------------
// idle

struct AgentProc {
    child: Child,
}

impl AgentProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and a bounded wait; kill if it does not stop.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("exited with {status}"),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "did not stop within 30 s of SIGTERM; killed".into();
                }
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // Only when `stop` was not reached (a panic): never leave an agent behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_config(cfg: &AgentConfig, path: &Path) {
    let p = |p: &PathBuf| p.display().to_string();
    let text = format!(
        "oin = {oin:?}\ndata_dir = {data:?}\n\n[broker]\naddress = {addr:?}\nserver_name = {sn:?}\n\n\
         [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
         [keys]\nsigning_key = {sk:?}\nage_identity = {age:?}\nfederation_public_key_file = {fpk:?}\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken_file = {tok:?}\n",
        oin = cfg.oin.as_str(),
        data = p(&cfg.data_dir),
        addr = cfg.broker.address,
        sn = cfg.broker.server_name,
        ca = p(&cfg.tls.ca),
        cert = p(&cfg.tls.cert),
        key = p(&cfg.tls.key),
        sk = p(&cfg.keys.signing_key),
        age = p(&cfg.keys.age_identity),
        fpk = p(cfg.keys.federation_public_key_file.as_ref().unwrap()),
        tok = p(&cfg.api.token_file),
    );
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn idle_scenario(rt: &tokio::runtime::Runtime, o: &Opts, out: &mut Vec<String>) {
    let net = rt.block_on(Net::start());
    let team = rt.block_on(open_team(&net));
    let cfg = net.config(SENDER);
    let token = std::fs::read_to_string(&cfg.api.token_file).unwrap();
    let cfg_path = net.dir.path().join("agent.toml");
    write_config(&cfg, &cfg_path);
    let log_path = net.dir.path().join("agent-process.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let binary = env!("CARGO_BIN_EXE_ketenpost-agent");
    let child = Command::new(binary)
        .args(["run", "-c"])
        .arg(&cfg_path)
        .env_remove("RUST_LOG")
        .env_remove("KETENPOST_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = AgentProc { child };
    let status = format!("/proc/{}/status", agent.pid());

    // Wait (bounded) until it runs; the broker is served by this process's runtime.
    let deadline = Instant::now() + STEP_LIMIT;
    let started = Instant::now();
    let api_addr: std::net::SocketAddr = rt.block_on(async {
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let addr = text
                .lines()
                .find(|l| l.contains("agent running"))
                .and_then(|l| l.split("api_addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            if let Some(a) = addr {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start; see its log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let startup = started.elapsed();
    let at_start = proc_mem(&status);
    let fresh = rt.block_on(idle_for(&status, o.idle_secs));

    // Work, then idle again: register the team, send through the HTTP API, wait until the
    // broker accepted every message.
    let api = ketenpost_agent::client::ApiClient::new(api_addr, token.trim());
    let sent_in = rt.block_on(async {
        let members: Vec<Value> = team
            .members
            .iter()
            .map(|m| serde_json::json!({ "oin": m.oin, "role": m.role }))
            .collect();
        bounded(
            "register the case",
            api.call(
                "PUT",
                &format!("/v1/cases/{}", team.case_ref),
                Some(&serde_json::json!({ "purpose": "uitstroom", "members": members })),
            ),
        )
        .await
        .unwrap();
        let body = serde_json::to_value(send_request(&team)).unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (api, body, next, n) = (api.clone(), body.clone(), next.clone(), o.idle_sends);
            set.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    bounded(
                        "POST /v1/messages",
                        api.call("POST", "/v1/messages", Some(&body)),
                    )
                    .await
                    .unwrap();
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let deadline = Instant::now() + ACCEPT_LIMIT;
        loop {
            let h = bounded("GET /v1/health", api.call("GET", "/v1/health", None))
                .await
                .unwrap();
            if h["outbox_queued"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not accept every message within {ACCEPT_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t.elapsed()
    });
    let after_work = proc_mem(&status);
    let worked = rt.block_on(idle_for(&status, o.idle_secs));
    // The agent ends idle blocking threads (sealing runs on them) 2 s after a burst.
    let longer = rt.block_on(idle_for(&status, 2 * o.idle_secs));
    let threads = std::fs::read_to_string(&status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let stopped = agent.stop();
    rt.block_on(bounded("broker shutdown", net.stop()));
    let verdict = match [fresh, worked, longer].map(|i| i.end.rss_kib * 1024 < 50_000_000) {
        [true, true, true] => "every idle reading is under the 50 MB target",
        [true, false, true] => {
            "the reading 10 s after the burst is OVER the 50 MB target, the others are under it"
        }
        _ => "idle readings are OVER the 50 MB target",
    };
    out.push(format!(
        "## idle: `ketenpost-agent run` (release) as its own process, default timing\n\n\
         | moment | VmRSS MiB | VmHWM MiB |\n|---|---:|---:|\n\
         | it logged \"agent running\" ({:.0} ms after spawn) | {:.1} | {:.1} |\n\
         | after {} s idle (highest VmRSS sampled every 0.5 s: {:.1}) | {:.1} | {:.1} |\n\
         | {} aanmeldingen sent through `POST /v1/messages` (8 callers) and all accepted, in {:.1} s | {:.1} | {:.1} |\n\
         | then {} s idle (highest VmRSS sampled: {:.1}) | {:.1} | {:.1} |\n\
         | and {} s more idle, {} threads left | {:.1} | {:.1} |\n\n\
         {verdict}. At SIGTERM the agent {stopped}.\n",
        ms(startup),
        mib(at_start.rss_kib),
        mib(at_start.hwm_kib),
        o.idle_secs,
        mib(fresh.peak_rss_kib),
        mib(fresh.end.rss_kib),
        mib(fresh.end.hwm_kib),
        o.idle_sends,
        sent_in.as_secs_f64(),
        mib(after_work.rss_kib),
        mib(after_work.hwm_kib),
        o.idle_secs,
        mib(worked.peak_rss_kib),
        mib(worked.end.rss_kib),
        mib(worked.end.hwm_kib),
        2 * o.idle_secs,
        threads,
        mib(longer.end.rss_kib),
        mib(longer.end.hwm_kib),
    ));
    eprintln!("{}", out.last().unwrap());
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    end: Mem,
    peak_rss_kib: u64,
}

/// Leave the process alone for `secs`, sampling its memory every 0.5 s.
async fn idle_for(status: &str, secs: u64) -> Idle {
    let from = Instant::now();
    let mut peak = proc_mem(status).rss_kib;
    while from.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(proc_mem(status).rss_kib);
    }
    Idle {
        end: proc_mem(status),
        peak_rss_kib: peak,
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets`: a benchmark is never a timed test.
        return;
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("seal_submit: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = vec![format!(
        "# ketenpost-agent seal_submit, {} CPUs, load average {} at start\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    )];
    for s in &opts.scenarios {
        match s.as_str() {
            "seal" => seal_scenario(&rt, &opts, &mut out),
            "idle" => idle_scenario(&rt, &opts, &mut out),
            _ => unreachable!(),
        }
    }
    println!("{}", out.join("\n"));
}
