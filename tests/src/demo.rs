//! The demo: one case under the Walcheren covenant, from opening to deletion, played by a
//! real broker and three agents on loopback and told as a story a person can follow.
//!
//! `cargo run --bin ketenpost-demo` runs [`run`]; `tests/tests/demo.rs` runs it too and
//! checks the [`Summary`], so the demo doubles as a smoke test of the whole system. Every
//! act asserts what should happen and fails the run, with a message saying which step,
//! when it does not.
//!
//! Everything runs in one process: a dev federation made by [`ketenpost_certs::init`] in a
//! temporary directory, [`Broker::start`] on `127.0.0.1:0` and one [`Agent`] per
//! organisation, each with its own database and QUIC connection with mutual TLS. The
//! broker and agents are shut down and the directory removed before [`run`] returns,
//! whether the story succeeded or not.
//!
//! What the story shows of a message is what each party may see: the broker's lines show
//! only header data (OINs, pseudonymous case references, kinds, ids); a recipient's lines
//! show the *names* of the fields it decrypted, never their values. The payloads are the
//! fictional examples of `ketenpost_schemas::payload`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use chrono::{DateTime, Months, SecondsFormat, Utc};
use ketenpost_agent::config::{
    AgentConfig, ApiSection, BrokerSection, InboxSection, KeysSection, TimingSection,
};
use ketenpost_agent::inbox::InboxEntry;
use ketenpost_agent::ops::{
    AddMember, GrantConsent, Member, OpenCase, RegisterCase, WithdrawConsent,
};
use ketenpost_agent::outbox::{OutboxEntry, Status, Submission};
use ketenpost_agent::{Agent, Core, RefusedBy};
use ketenpost_agent::{SendRequest, To};
use ketenpost_broker::audit::{self, AuditRecord};
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::fg::{self, Format, ReportKind, Session};
use ketenpost_broker::report::{self, Filter, Viewer};
use ketenpost_broker::server::Broker;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::control::CaseOp;
use ketenpost_schemas::digest::sha256_hex;
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::LegalBasis;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::{Category, Kind};
use ketenpost_schemas::payload::{self, Aanmelding, DatalekMelding, Reactie, Signaal};
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::{AcceptFlag, RejectCode, Rejection};
use ketenpost_transport::tls::ClientTls;
use serde_json::Value;

/// The covenant the demo plays, embedded so the demo runs from any directory.
const POLICY: &str = include_str!("../../schemas/policies/walcheren.toml");

/// The purpose every message of the case is for.
const PURPOSE: &str = "uitstroom";

/// The parties: the covenant's own (000:8-108), marked as demo parties, with made-up OINs.
const ROSTER: &str = r#"
[[party]]
name = "Gemeente Vlissingen (demo)"
oin = "00000001000001000001"
roles = ["gemeente"]

[[party]]
name = "Gemeente Middelburg (demo)"
oin = "00000001000001000002"
roles = ["gemeente"]

[[party]]
name = "l'escaut (demo)"
oin = "00000001000002000001"
roles = ["woningcorporatie"]

[[party]]
name = "Woongoed Middelburg (demo)"
oin = "00000001000002000002"
roles = ["woningcorporatie"]

[[party]]
name = "Emergis (demo)"
oin = "00000001000003000001"
roles = ["zorgaanbieder"]

[[party]]
name = "Leger des Heils (demo)"
oin = "00000001000003000002"
roles = ["zorgaanbieder"]
"#;

/// The municipality, regievoerder of the case.
const VLISSINGEN: &str = "00000001000001000001";
/// The housing corporation in the case team.
const LESCAUT: &str = "00000001000002000001";
/// A housing corporation that is not in the case team.
const WOONGOED: &str = "00000001000002000002";
/// The care provider in the case team.
const EMERGIS: &str = "00000001000003000001";

/// The client's consent as the Welkom in de Wijk Overeenkomst records it (000:293-297;
/// the article that requires it runs from 000:289).
const CONSENT_TEXT: [&str; 5] = [
    "Ik, <naam cliënt>, stem ermee in dat gemeente, zorgaanbieders en woningcorporatie",
    "informatie met elkaar delen ten behoeve van mijn Weer Thuis op Walcheren procedure. Aan",
    "mij is uitgelegd dat partijen deze informatie uitwisselen en gebruiken om aan mij de best",
    "passende ondersteuning en huisvesting te bieden en dat partijen de informatie die zij",
    "uitwisselen niet voor andere doeleinden uitwisselen, gebruiken of bewaren.",
];

/// The longest any single wait in the demo may take.
const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// How the story is told.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Colour the story with ANSI escapes (the binary sets it only when stdout is a
    /// terminal).
    pub colour: bool,
    /// Also write the federation FG's HTML report (flow graph and every table) here.
    pub html_report: Option<PathBuf>,
}

/// A message refused in act 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What was tried.
    pub attempt: String,
    /// Who refused it: the sender's agent (early) or the broker.
    pub by: RefusedBy,
    /// The rejection code.
    pub code: RejectCode,
}

/// What the demo established, for the test that runs it.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The case's pseudonymous reference.
    pub case_ref: CaseRef,
    /// Top-level fields of the aanmelding the housing corporation decrypted.
    pub corporation_fields: BTreeSet<String>,
    /// Top-level fields of the aanmelding the municipality decrypted.
    pub municipality_fields: BTreeSet<String>,
    /// Top-level fields of the aanmelding as the care provider wrote it.
    pub full_fields: BTreeSet<String>,
    /// The refusals of act 3, in order.
    pub refusals: Vec<Refusal>,
    /// The OINs the breach notice was first addressed to.
    pub breach_addressed: BTreeSet<Oin>,
    /// The OINs the broker routed the breach notice to, all of which receipted it.
    pub breach_recipients: BTreeSet<Oin>,
    /// The OINs whose agents deleted the case and whose confirmation the broker recorded.
    pub deletions_confirmed: BTreeSet<Oin>,
    /// Records in the audit trail when it was verified after shutdown.
    pub audit_records: u64,
    /// Signed checkpoints in the audit trail then.
    pub audit_checkpoints: u64,
    /// The seq of the latest broker checkpoint each agent held (and found consistent).
    pub agent_checkpoints: Vec<(Oin, u64)>,
    /// Rows of the FG's flow report (from, to, kind, accepted, refused).
    pub flows: Vec<(Oin, Oin, String, u64, u64)>,
    /// How long the whole demo took.
    pub elapsed: Duration,
}

/// Play the demo, writing the story to `out`. Starts its own runtime; everything it starts
/// is stopped and its temporary directory removed before it returns.
pub fn run(out: &mut impl Write, opts: &Options) -> Result<Summary> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(play(out, opts));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

// ---- telling ---------------------------------------------------------------------------

/// Writes the story, with colour when asked.
struct Story<'w, W: Write> {
    out: &'w mut W,
    colour: bool,
}

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

/// Indent of the text under a numbered step.
const INDENT: &str = "       ";
/// Widest line the story writes (a long id or OIN list may still exceed it).
const WIDTH: usize = 100;

impl<W: Write> Story<'_, W> {
    fn styled(&mut self, style: &str, text: &str) -> Result<()> {
        if self.colour && !style.is_empty() {
            writeln!(self.out, "{style}{text}{RESET}")?;
        } else {
            writeln!(self.out, "{text}")?;
        }
        Ok(())
    }

    fn line(&mut self, text: impl AsRef<str>) -> Result<()> {
        writeln!(self.out, "{}", text.as_ref())?;
        Ok(())
    }

    fn blank(&mut self) -> Result<()> {
        self.line("")
    }

    /// A section heading with a blank line before and after.
    fn heading(&mut self, text: &str) -> Result<()> {
        self.blank()?;
        self.styled(BOLD, text)?;
        self.blank()
    }

    fn act(&mut self, n: u8, title: &str) -> Result<()> {
        self.blank()?;
        self.styled(BOLD, &format!("ACT {n}  {title}"))
    }

    /// `lead` then `text` wrapped to [`WIDTH`], continuation lines indented under the text.
    fn hang(&mut self, style: &str, lead: &str, text: &str) -> Result<()> {
        let pad = " ".repeat(lead.chars().count());
        let width = WIDTH.saturating_sub(pad.len()).max(20);
        for (i, l) in wrap(text, width).into_iter().enumerate() {
            let first = if i == 0 { lead } else { pad.as_str() };
            self.styled(style, &format!("{first}{l}"))?;
        }
        Ok(())
    }

    /// A numbered step: `  1.2  text`, after a blank line.
    fn step(&mut self, number: &str, text: impl AsRef<str>) -> Result<()> {
        self.blank()?;
        let lead = format!("  {number:<5}");
        let width = WIDTH.saturating_sub(INDENT.len());
        for (i, l) in wrap(text.as_ref(), width).into_iter().enumerate() {
            if i > 0 {
                self.line(format!("{INDENT}{l}"))?;
            } else if self.colour {
                writeln!(self.out, "{BOLD}{lead}{RESET}{l}")?;
            } else {
                writeln!(self.out, "{lead}{l}")?;
            }
        }
        Ok(())
    }

    /// More text under the current step.
    fn more(&mut self, text: impl AsRef<str>) -> Result<()> {
        self.hang("", INDENT, text.as_ref())
    }

    /// What the broker sees: header data only, one part per line.
    fn broker(&mut self, parts: &[String]) -> Result<()> {
        let lead = format!("{INDENT}broker sees  ");
        let pad = " ".repeat(lead.chars().count());
        for (i, p) in parts.iter().enumerate() {
            self.hang(CYAN, if i == 0 { &lead } else { &pad }, p)?;
        }
        Ok(())
    }

    /// An expected good outcome.
    fn ok(&mut self, text: impl AsRef<str>) -> Result<()> {
        self.hang(GREEN, &format!("{INDENT}ok  "), text.as_ref())
    }

    /// An expected refusal.
    fn refused(&mut self, by: RefusedBy, r: &Rejection) -> Result<()> {
        let who = match by {
            RefusedBy::Agent => {
                "REFUSED by the sender's own agent, before anything was stored or sent"
            }
            RefusedBy::Broker => "REFUSED by the broker; nothing was queued or delivered",
        };
        self.hang(YELLOW, INDENT, who)?;
        self.hang(
            YELLOW,
            &format!("{INDENT}  code    "),
            &format!("{} (check {} of the broker's 8)", r.code, r.check),
        )?;
        self.hang(YELLOW, &format!("{INDENT}  reason  "), &r.reason)
    }

    /// A remark on the side.
    fn dim(&mut self, text: impl AsRef<str>) -> Result<()> {
        self.hang(DIM, INDENT, text.as_ref())
    }
}

// ---- the cast --------------------------------------------------------------------------

/// An organisation with a running agent.
struct Org {
    name: String,
    role: Role,
    oin: Oin,
    agent: Agent,
}

impl Org {
    fn core(&self) -> &Arc<Core> {
        self.agent.core()
    }

    /// "Emergis (demo) [zorgaanbieder]"
    fn who(&self) -> String {
        format!("{} [{}]", self.name, self.role)
    }
}

/// The federation, the broker and the agents; [`World::shutdown`] stops what runs.
struct World {
    dir: PathBuf,
    fed: Federation,
    policy: Policy,
    directory: Directory,
    broker: Option<Broker>,
    orgs: Vec<Org>,
}

impl World {
    fn create(dir: &Path) -> Result<World> {
        let policy_path = dir.join("walcheren.toml");
        std::fs::write(&policy_path, POLICY).context("cannot write the policy")?;
        let roster_path = dir.join("roster.toml");
        std::fs::write(&roster_path, ROSTER).context("cannot write the roster")?;
        let mut opts = InitOptions::new(&policy_path, dir.join("federation"));
        opts.roster = Some(roster_path);
        let fed = ketenpost_certs::init(&opts).context("cannot create the dev federation")?;
        let policy = fed.load_policy().context("the signed policy")?;
        let directory = fed
            .load_directory(&policy)
            .context("the signed directory")?;
        Ok(World {
            dir: dir.to_owned(),
            fed,
            policy,
            directory,
            broker: None,
            orgs: Vec::new(),
        })
    }

    fn broker_config(&self) -> Result<BrokerConfig> {
        let mut c = BrokerConfig::for_federation(
            &self.fed,
            self.dir.join("broker"),
            "127.0.0.1:0".parse()?,
        );
        // Checkpoints every second, so the agents hold one before the story ends.
        c.timers.checkpoint_interval_secs = 1;
        Ok(c)
    }

    async fn start(&mut self) -> Result<()> {
        let broker = Broker::start(self.broker_config()?)
            .await
            .context("the broker did not start")?;
        let addr = broker.local_addr();
        self.broker = Some(broker);
        for oin in [VLISSINGEN, LESCAUT, EMERGIS] {
            let config = self.agent_config(oin, &addr.to_string())?;
            let oin = config.oin.clone();
            let party = self
                .directory
                .party(&oin)
                .ok_or_else(|| anyhow!("{oin} is not in the directory"))?;
            let (name, role) = (party.name.clone(), party.roles.first().cloned());
            let agent = Agent::start(config)
                .await
                .with_context(|| format!("the agent of {name} did not start"))?;
            self.orgs.push(Org {
                name,
                role: role.ok_or_else(|| anyhow!("{oin} has no role"))?,
                oin,
                agent,
            });
        }
        Ok(())
    }

    fn agent_config(&self, oin: &str, broker: &str) -> Result<AgentConfig> {
        let p = self
            .fed
            .parties
            .iter()
            .find(|p| p.oin.as_str() == oin)
            .ok_or_else(|| anyhow!("no party {oin} in the federation"))?;
        let dir = self.dir.join("agents").join(oin);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("api.token");
        std::fs::write(&token_file, format!("demo-token-{oin}"))?;
        Ok(AgentConfig {
            oin: p.oin.clone(),
            data_dir: dir.join("data"),
            broker: BrokerSection {
                address: broker.to_owned(),
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
                listen: "127.0.0.1:0".parse()?,
                token_file,
            },
            timing: TimingSection {
                fetch_wait_ms: 500,
                retry_min_ms: 50,
                retry_max_ms: 500,
                request_timeout_ms: 5_000,
                checkpoint_interval_secs: 1,
                documents_refresh_secs: 3600,
                sweep_interval_secs: 1,
                startup_wait_secs: 10,
            },
            inbox: InboxSection::default(),
        })
    }

    fn org(&self, oin: &str) -> Result<&Org> {
        self.orgs
            .iter()
            .find(|o| o.oin.as_str() == oin)
            .ok_or_else(|| anyhow!("no running agent for {oin}"))
    }

    /// Stop the agents, then the broker, each bounded in time.
    async fn shutdown(&mut self) -> Result<()> {
        let limit = Duration::from_secs(15);
        let mut late = Vec::new();
        for org in self.orgs.drain(..) {
            if tokio::time::timeout(limit, org.agent.shutdown())
                .await
                .is_err()
            {
                late.push(org.name);
            }
        }
        if let Some(b) = self.broker.take() {
            if tokio::time::timeout(limit, b.shutdown()).await.is_err() {
                late.push("the broker".into());
            }
        }
        ensure!(
            late.is_empty(),
            "did not stop within {} s: {}",
            limit.as_secs(),
            late.join(", ")
        );
        Ok(())
    }

    /// "Emergis (demo)" for an OIN of the directory.
    fn name(&self, oin: &str) -> String {
        self.directory
            .parties
            .iter()
            .find(|p| p.oin.as_str() == oin)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| oin.to_owned())
    }

    fn names<'a>(&self, oins: impl IntoIterator<Item = &'a Oin>) -> String {
        oins.into_iter()
            .map(|o| self.name(o.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---- helpers ---------------------------------------------------------------------------

/// Poll `f` until it gives a value, for at most [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn request(kind: Kind, case: &CaseRef, to: Vec<To>, payload: Value) -> SendRequest {
    SendRequest {
        kind,
        case_ref: case.clone(),
        purpose: None,
        to,
        legal_basis: None,
        event_time: None,
        in_reply_to: None,
        answer_request: None,
        trace_id: None,
        payload,
    }
}

/// The last 8 hex digits of an id: enough to tell the story's messages apart.
fn short(id: impl std::fmt::Display) -> String {
    let s = id.to_string();
    let tail = s.len().saturating_sub(8);
    format!("…{}", s.get(tail..).unwrap_or(&s))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Send, expecting the agent to take the message (it may still be refused by the broker).
async fn send(from: &Org, req: SendRequest) -> Result<OutboxEntry> {
    let kind = req.kind;
    from.core()
        .send(req)
        .await
        .with_context(|| format!("{} could not send its {kind}", from.name))
}

/// Wait until every recipient receipted the message.
async fn delivered(from: &Org, id: &MessageId) -> Result<OutboxEntry> {
    until(&format!("message {id} to be delivered"), || async move {
        let e = from.core().message(id)?;
        match (&e.submission, e.status()) {
            (_, Status::Delivered) => Ok(Some(e)),
            (Submission::Rejected { rejection, .. }, _) => {
                bail!("the broker refused message {id}: {rejection}")
            }
            (_, Status::Expired) => bail!("message {id} expired undelivered"),
            _ => Ok(None),
        }
    })
    .await
}

/// Wait until the message is in the recipient's inbox.
async fn received(to: &Org, id: &MessageId) -> Result<InboxEntry> {
    until(
        &format!("message {id} in the inbox of {}", to.name),
        || async move {
            match to.core().inbox_entry(id) {
                Ok(e) => Ok(Some(e)),
                Err(ketenpost_agent::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await
}

/// The refusal by the sender's own agent this attempt must end in.
fn refused_early(
    attempt: Result<OutboxEntry, ketenpost_agent::Error>,
    what: &str,
) -> Result<Rejection> {
    match attempt {
        Err(ketenpost_agent::Error::Refused {
            by: RefusedBy::Agent,
            rejection,
        }) => Ok(rejection),
        Err(e) => Err(anyhow!(e).context(format!("{what}: expected a refusal by the agent"))),
        Ok(e) => bail!(
            "{what}: the agent took message {}, which it should have refused",
            e.message_id
        ),
    }
}

/// Wait for the broker's answer to a message it must refuse.
async fn refused_by_broker(from: &Org, id: &MessageId) -> Result<Rejection> {
    until(&format!("the broker's answer to {id}"), || async move {
        let e = from.core().message(id)?;
        match e.submission {
            Submission::Rejected { rejection, .. } => Ok(Some(rejection)),
            Submission::Accepted { .. } => {
                bail!("the broker accepted message {id}, which it should have refused")
            }
            Submission::Queued => Ok(None),
        }
    })
    .await
}

/// The header the broker checks, as the sender sealed it: what the broker sees of a
/// message, one part per line.
fn header_lines(e: &OutboxEntry, from: &Oin) -> Vec<String> {
    let to: Vec<&str> = e.recipients.iter().map(|r| r.oin.as_str()).collect();
    let views: BTreeSet<&String> = e.recipients.iter().map(|r| &r.body_sha256).collect();
    vec![
        format!("{} {}, case {}", e.kind, short(e.message_id), e.case_ref),
        format!("from {from} to {}", to.join(", ")),
        format!(
            "{} encrypted view{}, which it cannot open",
            views.len(),
            if views.len() == 1 { "" } else { "s" }
        ),
    ]
}

/// The top-level field names of a payload (an object).
fn field_names(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The data category of a top-level field of `kind`.
fn category(kind: Kind, field: &str) -> Option<Category> {
    payload::type_fields(kind)?
        .iter()
        .find(|(n, _)| *n == field)
        .map(|(_, c)| *c)
}

/// Field names in the order the payload type declares them.
fn ordered(kind: Kind, fields: &BTreeSet<String>) -> String {
    payload::type_fields(kind)
        .unwrap_or(&[])
        .iter()
        .filter(|(n, _)| fields.contains(*n))
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Field names in the order the payload type declares them, each with its category.
fn listed(kind: Kind, fields: &BTreeSet<String>) -> String {
    let order = payload::type_fields(kind).unwrap_or(&[]);
    order
        .iter()
        .filter(|(n, _)| fields.contains(*n))
        .map(|(n, c)| format!("{n} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wrap `text` at spaces to lines of at most `width` characters (a longer word stays
/// whole); leading spaces are kept on every line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let body = text.trim_start_matches(' ');
    let lead = " ".repeat(text.len() - body.len());
    let mut lines = Vec::new();
    let mut cur = lead.clone();
    let mut empty = true;
    for word in body.split(' ') {
        if !empty && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut cur, lead.clone()));
            empty = true;
        }
        if !empty {
            cur.push(' ');
        }
        cur.push_str(word);
        empty = false;
    }
    lines.push(cur);
    lines
}

/// Wrap a list of items (which may hold spaces themselves) joined by ", ".
fn wrap_items(items: &[String], width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{item},")
        } else {
            item.clone()
        };
        if !cur.is_empty() && cur.chars().count() + 1 + piece.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&piece);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Print what a recipient decrypted of an aanmelding: field names, never values.
fn show_view<W: Write>(
    s: &mut Story<'_, W>,
    org: &Org,
    entry: &InboxEntry,
    full: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let got = field_names(&entry.payload);
    let withheld: BTreeSet<String> = full.difference(&got).cloned().collect();
    s.more(format!(
        "{} decrypted its view \"{}\": {} of the {} fields",
        org.who(),
        entry.view,
        got.len(),
        full.len()
    ))?;
    for (i, l) in wrap(&listed(Kind::Aanmelding, &got), 80).iter().enumerate() {
        s.more(format!(
            "  {} {l}",
            if i == 0 { "received" } else { "        " }
        ))?;
    }
    let withheld_text = if withheld.is_empty() {
        "-".to_owned()
    } else {
        listed(Kind::Aanmelding, &withheld)
    };
    for (i, l) in wrap(&withheld_text, 80).iter().enumerate() {
        s.more(format!(
            "  {} {l}",
            if i == 0 { "withheld" } else { "        " }
        ))?;
    }
    Ok(got)
}

/// The fields of `full` whose category the policy grants `role` for `kind`.
fn expected_view(
    policy: &Policy,
    kind: Kind,
    role: &Role,
    full: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let granted = policy
        .rule(PURPOSE, kind)
        .and_then(|r| r.views.get(role))
        .ok_or_else(|| anyhow!("the policy gives role {role} no view of {kind}"))?;
    Ok(full
        .iter()
        .filter(|f| category(kind, f).is_some_and(|c| granted.contains(&c)))
        .cloned()
        .collect())
}

// ---- the story -------------------------------------------------------------------------

async fn play<W: Write>(out: &mut W, opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let mut s = Story {
        out,
        colour: opts.colour,
    };
    let tmp = tempfile::Builder::new()
        .prefix("ketenpost-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let tmp_path = tmp.path().to_owned();

    intro(&mut s)?;
    let mut world = World::create(tmp.path())?;
    let played = async {
        world.start().await?;
        setup(&mut s, &world)?;
        acts(&mut s, &world).await
    }
    .await;
    // Stop everything whatever happened, then report the first failure.
    let stopped = world.shutdown().await;
    let mut summary = played?;
    stopped?;

    act6(&mut s, &world, &mut summary, opts)?;

    drop(world);
    tmp.close()
        .with_context(|| format!("cannot remove {}", tmp_path.display()))?;
    ensure!(
        !tmp_path.exists(),
        "{} is still there after removal",
        tmp_path.display()
    );
    summary.elapsed = started.elapsed();
    s.heading("THE END")?;
    s.line(format!(
        "  Every step behaved as the covenant says, in {:.1} s. The agents and the broker are",
        summary.elapsed.as_secs_f64()
    ))?;
    s.line("  stopped and the temporary directory with the federation and all databases is gone.")?;
    s.blank()?;
    Ok(summary)
}

fn intro<W: Write>(s: &mut Story<'_, W>) -> Result<()> {
    s.heading("ketenpost demo: one client's case under \"Weer Thuis op Walcheren\"")?;
    for l in [
        "  Under this covenant a municipality, a housing corporation and a care provider share",
        "  information about a client who moves from sheltered housing to a home of their own,",
        "  with the client's consent and only as far as each party needs to know.",
        "",
        "  Every organisation, person and case detail below is fictional: the organisations are",
        "  the covenant's parties (000:8-108) marked \"(demo)\", the messages the example payloads",
        "  of ketenpost-schemas. One broker and three agents run in this process and talk QUIC",
        "  with mutual TLS over 127.0.0.1. Lines marked \"broker sees\" show what the broker sees",
        "  of a message: header data such as OINs, a pseudonymous case reference, the kind and",
        "  ids. Never content.",
    ] {
        s.line(l)?;
    }
    Ok(())
}

fn setup<W: Write>(s: &mut Story<'_, W>, w: &World) -> Result<()> {
    s.heading("SETUP")?;
    s.line(
        "  A dev federation in a temporary directory: a CA, a certificate per party carrying its",
    )?;
    s.line(
        "  OIN (as PKIoverheid does), signing and encryption keys, and the partner directory and",
    )?;
    s.line("  covenant policy, both signed by the federation key that broker and agents pin.")?;
    s.blank()?;
    let running: BTreeSet<&str> = w.orgs.iter().map(|o| o.oin.as_str()).collect();
    for p in &w.directory.parties {
        let roles = p
            .roles
            .iter()
            .map(Role::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let note = if running.contains(p.oin.as_str()) {
            "agent running"
        } else {
            "in the directory only"
        };
        s.line(format!(
            "    {}  {:<28} {:<17} {note}",
            p.oin, p.name, roles
        ))?;
    }
    s.blank()?;
    if let Some(b) = &w.broker {
        s.line(format!(
            "  Broker of covenant \"{}\" listening on {} (QUIC, TLS 1.3, client certificates).",
            w.policy.covenant.id,
            b.local_addr()
        ))?;
    }
    s.line("  Each agent fetched the signed documents from the broker and verified them against")?;
    s.line("  the pinned federation key before it started.")?;
    Ok(())
}

/// The organisations that play, by their part.
struct Cast<'a> {
    /// The municipality, regievoerder.
    g: &'a Org,
    /// The housing corporation.
    corp: &'a Org,
    /// The care provider.
    z: &'a Org,
}

/// What act 1 establishes and the later acts build on.
struct Thread {
    case: CaseRef,
    /// When the story began: the start of the breach window in act 4.
    started: DateTime<Utc>,
    consent_id: uuid::Uuid,
    /// The legal basis the corporation learned from the aanmelding's header.
    consent_basis: LegalBasis,
}

/// The aanmelding's top-level fields: as written, and as each recipient decrypted them.
struct Views {
    corporation: BTreeSet<String>,
    municipality: BTreeSet<String>,
    full: BTreeSet<String>,
}

async fn acts<W: Write>(s: &mut Story<'_, W>, w: &World) -> Result<Summary> {
    let c = Cast {
        g: w.org(VLISSINGEN)?,
        corp: w.org(LESCAUT)?,
        z: w.org(EMERGIS)?,
    };
    let (t, views) = act1(s, w, &c).await?;
    let signal_id = act2(s, w, &c, &t).await?;
    let refusals = act3(s, w, &c, &t, signal_id).await?;
    let (breach_addressed, breach_recipients) = act4(s, w, &c, &t).await?;
    let (deletions_confirmed, agent_checkpoints) = act5(s, w, &c, &t).await?;
    Ok(Summary {
        case_ref: t.case,
        corporation_fields: views.corporation,
        municipality_fields: views.municipality,
        full_fields: views.full,
        refusals,
        breach_addressed,
        breach_recipients,
        deletions_confirmed,
        audit_records: 0,
        audit_checkpoints: 0,
        agent_checkpoints,
        flows: Vec::new(),
        elapsed: Duration::ZERO,
    })
}

/// Act 1: the case is opened, consent registered, the aanmelding sent in views.
async fn act1<W: Write>(s: &mut Story<'_, W>, w: &World, c: &Cast<'_>) -> Result<(Thread, Views)> {
    let (g, corp, z) = (c.g, c.corp, c.z);
    s.act(
        1,
        "The case is opened, the client consents, the care provider refers the client",
    )?;
    let story_start = Utc::now();
    let purpose = w
        .policy
        .purposes
        .get(PURPOSE)
        .ok_or_else(|| anyhow!("the policy has no purpose {PURPOSE}"))?;
    let opened = g
        .core()
        .open_case(OpenCase {
            purpose: PURPOSE.into(),
            role: None,
            case_ref: None,
        })
        .await
        .context("1.1: the municipality opens the case")?;
    let case = opened.case_ref.clone();
    for m in [z, corp] {
        g.core()
            .add_member(
                &case,
                AddMember {
                    oin: m.oin.clone(),
                    role: Some(m.role.clone()),
                    purpose: None,
                },
            )
            .await
            .with_context(|| format!("1.1: adding {} to the case team", m.name))?;
    }
    s.step(
        "1.1",
        format!(
            "{} opens a case as regievoerder and forms the team:",
            g.who()
        ),
    )?;
    s.more(format!(
        "case     {case}  (a random pseudonym: no name, no BSN)"
    ))?;
    s.more(format!(
        "purpose  \"{}\" (processing activity {})",
        purpose.id, purpose.processing_activity
    ))?;
    s.more(format!("team     {}, regievoerder", g.who()))?;
    s.more(format!("         {}", z.who()))?;
    s.more(format!("         {}", corp.who()))?;
    s.dim("Only a gemeente may open cases here (policy: case_managers = [\"gemeente\"]).")?;

    let team = g.core().case(&case)?;
    let members: Vec<Member> = team
        .members
        .iter()
        .map(|(oin, role)| Member {
            oin: oin.clone(),
            role: role.clone(),
        })
        .collect();
    for m in [z, corp] {
        m.core()
            .register_case(
                &case,
                RegisterCase {
                    purpose: PURPOSE.into(),
                    members: members.clone(),
                },
            )
            .await
            .with_context(|| format!("1.1: {} registers the case", m.name))?;
    }
    s.more("The regievoerder tells the team the case reference; their systems register it.")?;

    let document = CONSENT_TEXT.join("\n");
    let consent = z
        .core()
        .grant_consent(GrantConsent {
            case_ref: case.clone(),
            purpose: None,
            roles: ["gemeente", "woningcorporatie", "zorgaanbieder"]
                .into_iter()
                .map(Role::new)
                .collect(),
            parties: Vec::new(),
            valid_from: None,
            valid_until: None,
            document_sha256: sha256_hex(document.as_bytes()),
            obtained_at: None,
            consent_id: None,
        })
        .await
        .context("1.2: the care provider registers the consent")?;
    let consent_id = consent.record.consent_id;
    s.step(
        "1.2",
        format!(
            "{} registers the client's consent, as the Welkom in de Wijk Overeenkomst \
             records it (000:289-297):",
            z.who()
        ),
    )?;
    s.blank()?;
    for (i, l) in CONSENT_TEXT.iter().enumerate() {
        let open = if i == 0 { "\"" } else { " " };
        let close = if i + 1 == CONSENT_TEXT.len() {
            "\""
        } else {
            ""
        };
        // Quoted as the covenant words it, line for line: not rewrapped.
        s.line(format!("{INDENT}  {open}{l}{close}"))?;
    }
    s.blank()?;
    s.more(format!(
        "consent {}: purpose {PURPOSE}; parties: gemeente, woningcorporatie, zorgaanbieder",
        short(consent_id)
    ))?;
    s.broker(&[
        format!("toestemming {}, case {case}", short(consent_id)),
        format!("signed by {}", z.oin),
        format!(
            "scope + SHA-256 of the signed document ({}…), not the document",
            consent.record.document_sha256.get(..12).unwrap_or("")
        ),
    ])?;

    let full_value = serde_json::to_value(Aanmelding::example())?;
    let full = field_names(&full_value);
    let t0 = Instant::now();
    let sent = send(
        z,
        request(
            Kind::Aanmelding,
            &case,
            vec![
                To::Role(Role::new("gemeente")),
                To::Role(Role::new("woningcorporatie")),
            ],
            full_value,
        ),
    )
    .await
    .context("1.3: the aanmelding")?;
    let aanmelding = sent.message_id;
    s.step(
        "1.3",
        format!(
            "{} -> {}, {}: aanmelding (referral)",
            z.name, g.name, corp.name
        ),
    )?;
    s.more(format!(
        "The full referral has {} fields. The agent seals one view per recipient role, \
         holding only the fields the policy grants that role, encrypted to that recipient \
         alone.",
        full.len()
    ))?;
    let done = delivered(z, &aanmelding).await.context("1.3")?;
    s.broker(&header_lines(&done, &z.oin))?;
    s.ok(format!(
        "accepted, delivered, and receipted by both recipients ({})",
        millis(t0.elapsed())
    ))?;
    let corp_entry = received(corp, &aanmelding).await?;
    let g_entry = received(g, &aanmelding).await?;
    s.blank()?;
    let corporation_fields = show_view(s, corp, &corp_entry, &full)?;
    s.blank()?;
    let municipality_fields = show_view(s, g, &g_entry, &full)?;
    for (org, entry, got) in [
        (corp, &corp_entry, &corporation_fields),
        (g, &g_entry, &municipality_fields),
    ] {
        ensure!(
            entry.view == org.role,
            "1.3: {} got view {}, not {}",
            org.name,
            entry.view,
            org.role
        );
        let want = expected_view(&w.policy, Kind::Aanmelding, &org.role, &full)?;
        ensure!(
            got == &want,
            "1.3: {} decrypted fields {:?}, the policy grants {:?}",
            org.name,
            got,
            want
        );
    }
    ensure!(
        corporation_fields.len() < municipality_fields.len()
            && corporation_fields.is_subset(&municipality_fields),
        "1.3: the corporation's view should be narrower than the municipality's"
    );
    s.dim(
        "The corporation sees housing \"op hoofdlijnen\", no support plan, income or debts \
         (002:834-836, 001:439-445). Justice data, had there been any, would go to nobody: \
         no Walcheren step needs them.",
    )?;

    let consent_basis = match &corp_entry.legal_basis {
        b @ LegalBasis::Consent { .. } => b.clone(),
        other => bail!("1.3: the aanmelding carried legal basis {other:?}, not the consent"),
    };
    Ok((
        Thread {
            case,
            started: story_start,
            consent_id,
            consent_basis,
        },
        Views {
            corporation: corporation_fields,
            municipality: municipality_fields,
            full,
        },
    ))
}

/// Act 2: a signal and the answer to it.
async fn act2<W: Write>(
    s: &mut Story<'_, W>,
    w: &World,
    c: &Cast<'_>,
    t: &Thread,
) -> Result<MessageId> {
    let (g, corp, z) = (c.g, c.corp, c.z);
    let case = t.case.clone();
    let consent_id = t.consent_id;
    s.act(2, "A signal of nuisance, and the care provider's answer")?;
    let mut signaal = Signaal::example();
    signaal.waargenomen_op = Utc::now() - chrono::Duration::hours(3);
    let mut req = request(
        Kind::Signaal,
        &case,
        vec![
            To::Role(Role::new("zorgaanbieder")),
            To::Role(Role::new("gemeente")),
        ],
        serde_json::to_value(&signaal)?,
    );
    req.legal_basis = Some(t.consent_basis.clone());
    let t0 = Instant::now();
    let sent = send(corp, req).await.context("2.1: the signaal")?;
    let signal_id = sent.message_id;
    s.step(
        "2.1",
        format!(
            "{} -> {}, {}: signaal (geluidsoverlast)",
            corp.name, z.name, g.name
        ),
    )?;
    s.more(format!(
        "Neighbours complain about loud music at night. The corporation names consent {}, \
         which it learned from the aanmelding's header; the broker checks that it covers \
         sender and recipients.",
        short(consent_id)
    ))?;
    let done = delivered(corp, &signal_id).await.context("2.1")?;
    s.broker(&header_lines(&done, &corp.oin))?;
    if let Submission::Accepted { flags, .. } = &done.submission {
        ensure!(flags.is_empty(), "2.1: the signal was flagged {flags:?}");
    }
    let term = w
        .policy
        .rule(PURPOSE, Kind::Signaal)
        .and_then(|r| r.send_within)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "-".into());
    s.ok(format!(
        "delivered to both within the covenant's term for signals ({term} from the \
         observation) ({})",
        millis(t0.elapsed())
    ))?;
    let z_signal = received(z, &signal_id).await?;
    let g_signal = received(g, &signal_id).await?;
    ensure!(
        field_names(&z_signal.payload) == field_names(&g_signal.payload),
        "2.1: the two recipients got different views of the signal"
    );
    s.more(format!(
        "Both decrypted the same fields (the policy grants both only case-process data): {}",
        ordered(Kind::Signaal, &field_names(&z_signal.payload))
    ))?;

    let mut req = request(
        Kind::Reactie,
        &case,
        vec![To::Oin(corp.oin.clone())],
        serde_json::to_value(Reactie::example())?,
    );
    req.in_reply_to = Some(signal_id);
    let t0 = Instant::now();
    let sent = send(z, req).await.context("2.2: the reactie")?;
    let reactie = sent.message_id;
    s.step(
        "2.2",
        format!(
            "{} -> {}: reactie, in reply to signal {}",
            z.name,
            corp.name,
            short(signal_id)
        ),
    )?;
    s.more(
        "The care provider's home visit and the agreements made (\"afhandeling wordt \
         teruggekoppeld aan de melder\", 002:976-977).",
    )?;
    let done = delivered(z, &reactie).await.context("2.2")?;
    let mut seen = header_lines(&done, &z.oin);
    seen.push(format!("in reply to {}", short(signal_id)));
    s.broker(&seen)?;
    let answer = received(corp, &reactie).await?;
    ensure!(
        answer.in_reply_to == Some(signal_id),
        "2.2: the reactie does not point at the signal"
    );
    s.ok(format!(
        "delivered; the corporation's agent links it to its signal ({})",
        millis(t0.elapsed())
    ))?;
    Ok(signal_id)
}

/// Act 3: outside the case team, and after withdrawal: refused by the broker and early.
async fn act3<W: Write>(
    s: &mut Story<'_, W>,
    w: &World,
    c: &Cast<'_>,
    t: &Thread,
    signal_id: MessageId,
) -> Result<Vec<Refusal>> {
    let (g, corp, z) = (c.g, c.corp, c.z);
    let case = t.case.clone();
    let consent_id = t.consent_id;
    let outsider: Oin = WOONGOED.parse()?;
    s.act(3, "What the covenant forbids is refused")?;
    let mut refusals = Vec::new();
    let outsider_name = w.name(WOONGOED);

    let mut forward = Signaal::example();
    forward.waargenomen_op = Utc::now() - chrono::Duration::hours(2);
    let sent = send(
        z,
        request(
            Kind::Signaal,
            &case,
            vec![To::Oin(outsider.clone())],
            serde_json::to_value(&forward)?,
        ),
    )
    .await
    .context("3.1: the agent should pass this message on to the broker")?;
    s.step(
        "3.1",
        format!("{} -> {outsider_name} [woningcorporatie]: signaal", z.name),
    )?;
    s.more(format!(
        "{outsider_name} is a covenant party, but not in this client's case team."
    ))?;
    s.more(
        "Emergis's agent knows the team only as it was told, so it cannot be sure; it passes \
         the message on, and the broker, which keeps the team, decides.",
    )?;
    let r = refused_by_broker(z, &sent.message_id)
        .await
        .context("3.1")?;
    s.refused(RefusedBy::Broker, &r)?;
    ensure!(
        r.code == RejectCode::NotInCaseTeam,
        "3.1: expected not_in_case_team, got {r}"
    );
    refusals.push(Refusal {
        attempt: "care provider -> corporation outside the case team".into(),
        by: RefusedBy::Broker,
        code: r.code,
    });

    let attempt = g
        .core()
        .send(request(
            Kind::Signaal,
            &case,
            vec![To::Oin(outsider.clone())],
            serde_json::to_value(&forward)?,
        ))
        .await;
    s.step(
        "3.2",
        format!("{} -> {outsider_name}: the same signal", g.name),
    )?;
    s.more("The regievoerder's agent manages the team itself, so it knows better at once.")?;
    let r = refused_early(attempt, "3.2")?;
    s.refused(RefusedBy::Agent, &r)?;
    ensure!(
        r.code == RejectCode::NotInCaseTeam,
        "3.2: expected not_in_case_team, got {r}"
    );
    refusals.push(Refusal {
        attempt: "municipality -> corporation outside the case team".into(),
        by: RefusedBy::Agent,
        code: r.code,
    });

    z.core()
        .withdraw_consent(&consent_id, WithdrawConsent::default())
        .await
        .context("3.3: withdrawing the consent")?;
    s.step(
        "3.3",
        format!(
            "The client withdraws consent; {} records the withdrawal (004:754-758).",
            z.name
        ),
    )?;
    s.broker(&[
        format!("toestemming_intrekking of consent {}", short(consent_id)),
        format!("case {case}, signed by {}", z.oin),
    ])?;

    let mut again = Signaal::example();
    again.waargenomen_op = Utc::now() - chrono::Duration::hours(1);
    let mut req = request(
        Kind::Signaal,
        &case,
        vec![
            To::Role(Role::new("zorgaanbieder")),
            To::Role(Role::new("gemeente")),
        ],
        serde_json::to_value(&again)?,
    );
    req.legal_basis = Some(t.consent_basis.clone());
    let sent = send(corp, req)
        .await
        .context("3.4: the agent should pass this message on to the broker")?;
    s.step(
        "3.4",
        format!("{} -> {}, {}: another signaal", corp.name, z.name, g.name),
    )?;
    s.more(format!(
        "It names consent {} as before. The corporation's agent has not heard of the \
         withdrawal; the broker has.",
        short(consent_id)
    ))?;
    let r = refused_by_broker(corp, &sent.message_id)
        .await
        .context("3.4")?;
    s.refused(RefusedBy::Broker, &r)?;
    ensure!(
        r.code == RejectCode::ConsentWithdrawn,
        "3.4: expected consent_withdrawn, got {r}"
    );
    for org in [z, g] {
        ensure!(
            matches!(
                org.core().inbox_entry(&sent.message_id),
                Err(ketenpost_agent::Error::NotFound { .. })
            ),
            "3.4: the refused signal reached {}",
            org.name
        );
    }
    refusals.push(Refusal {
        attempt: "corporation -> team after the consent was withdrawn".into(),
        by: RefusedBy::Broker,
        code: r.code,
    });

    let mut req = request(
        Kind::Reactie,
        &case,
        vec![To::Oin(corp.oin.clone())],
        serde_json::to_value(Reactie::example())?,
    );
    req.in_reply_to = Some(signal_id);
    let attempt = z.core().send(req).await;
    s.step(
        "3.5",
        format!("{} -> {}: a further reactie", z.name, corp.name),
    )?;
    s.more("Emergis recorded the withdrawal itself, so its own agent stops the message.")?;
    let r = refused_early(attempt, "3.5")?;
    s.refused(RefusedBy::Agent, &r)?;
    ensure!(
        r.code == RejectCode::ConsentWithdrawn,
        "3.5: expected consent_withdrawn, got {r}"
    );
    refusals.push(Refusal {
        attempt: "care provider -> corporation after the consent was withdrawn".into(),
        by: RefusedBy::Agent,
        code: r.code,
    });
    s.blank()?;
    s.dim(
        "Refusals by the broker are in its audit trail; refusals by an agent never left the \
         organisation (they are in that agent's log).",
    )?;
    Ok(refusals)
}

/// Act 4: a breach notice, routed by the broker. Returns whom it was addressed and routed to.
async fn act4<W: Write>(
    s: &mut Story<'_, W>,
    w: &World,
    c: &Cast<'_>,
    t: &Thread,
) -> Result<(BTreeSet<Oin>, BTreeSet<Oin>)> {
    let (g, corp, z) = (c.g, c.corp, c.z);
    let case = t.case.clone();
    let outsider_name = w.name(WOONGOED);
    s.act(4, "A data breach is reported to the parties concerned")?;
    let now = Utc::now();
    let mut breach = DatalekMelding::example();
    breach.omschrijving = "Een medewerker heeft de reactie van de zorgaanbieder op een signaal \
                           per abuis doorgestuurd naar een verkeerd e-mailadres."
        .into();
    breach.oorzaak = Some("Verkeerde ontvanger gekozen bij het doorsturen.".into());
    breach.gevolgen_en_risicos = Some(
        "Beperkt: de ontvanger heeft verklaard het bericht ongelezen te hebben verwijderd.".into(),
    );
    breach.ontstaan_op = Some(now - chrono::Duration::minutes(40));
    breach.beeindigd_op = Some(now - chrono::Duration::minutes(20));
    breach.ontdekt_op = now - chrono::Duration::minutes(10);
    breach.betrokken_casussen = vec![case.clone()];
    breach.alle_casussen_van_afzender = false;
    breach.tijdvak_van = t.started - chrono::Duration::minutes(1);
    breach.tijdvak_tot = now;
    let t0 = Instant::now();
    let sent = send(
        corp,
        request(
            Kind::DatalekMelding,
            &case,
            vec![To::Oin(z.oin.clone())],
            serde_json::to_value(&breach)?,
        ),
    )
    .await
    .context("4.1: the datalek-melding")?;
    let breach_id = sent.message_id;
    let addressed: BTreeSet<Oin> = sent.recipients.iter().map(|r| r.oin.clone()).collect();
    s.step(
        "4.1",
        format!(
            "{} reports a data breach (datalek-melding) in this case",
            corp.name
        ),
    )?;
    s.more(format!(
        "A staff member forwarded Emergis's reactie to a wrong e-mail address. It was \
         discovered 10 minutes ago; the notice covers the case's messages since {}. The \
         corporation addresses it to {} only, whose reply it was.",
        time(breach.tijdvak_van),
        w.names(&addressed)
    ))?;
    let done = delivered(corp, &breach_id).await.context("4.1")?;
    let routed: BTreeSet<Oin> = done.recipients.iter().map(|r| r.oin.clone()).collect();
    let expected: BTreeSet<Oin> = [z.oin.clone(), g.oin.clone()].into();
    ensure!(
        routed == expected,
        "4.1: the breach notice went to {}, expected {}",
        w.names(&routed),
        w.names(&expected)
    );
    s.broker(&header_lines(&done, &corp.oin))?;
    s.more(format!(
        "The broker reads in its audit trail who sent or received messages about this case \
         in that window: {}. It refused the notice as addressed (code breach_recipients) \
         and named that set; the agent sealed it again to exactly those parties, under the \
         same message id ({} submissions in all).",
        w.names(&routed),
        done.attempts
    ))?;
    if let Submission::Accepted { flags, .. } = &done.submission {
        ensure!(
            !flags.contains(&AcceptFlag::Late),
            "4.1: the breach notice was late"
        );
    }
    let window = w
        .policy
        .rule(PURPOSE, Kind::DatalekMelding)
        .and_then(|r| r.send_within)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "-".into());
    s.ok(format!(
        "delivered to {} within the covenant's {window} (000:1772-1776) ({})",
        w.names(&routed),
        millis(t0.elapsed())
    ))?;
    for org in [z, g] {
        let e = received(org, &breach_id).await?;
        let fg = w
            .directory
            .party(&org.oin)
            .map(|p| p.fg_contact.clone())
            .unwrap_or_default();
        s.more(format!(
            "{}: view \"{}\", {} fields; its agent flags it for the FG ({fg})",
            org.name,
            e.view,
            field_names(&e.payload).len()
        ))?;
    }
    s.more(format!(
        "{outsider_name} is not told: its message was refused, it never held data."
    ))?;
    Ok((addressed, routed))
}

/// Act 5: closure, retention on a shortened clock, deletion orders and confirmations.
/// Returns who confirmed, and the checkpoint each agent holds.
async fn act5<W: Write>(
    s: &mut Story<'_, W>,
    w: &World,
    c: &Cast<'_>,
    t: &Thread,
) -> Result<(BTreeSet<Oin>, Vec<(Oin, u64)>)> {
    let (g, corp, z) = (c.g, c.corp, c.z);
    let case = t.case.clone();
    let purpose = w
        .policy
        .purposes
        .get(PURPOSE)
        .ok_or_else(|| anyhow!("the policy has no purpose {PURPOSE}"))?;
    s.act(
        5,
        "The case is closed; after the retention period every copy is deleted",
    )?;
    g.core()
        .change_case(&case, CaseOp::Close, None)
        .await
        .context("5.1: closing the case")?;
    let closed_at = Utc::now();
    let retention_end = purpose
        .case_retention
        .deadline(closed_at, &w.policy.calendar);
    s.step("5.1", format!("{} closes case {case}.", g.who()))?;
    s.more(format!(
        "The covenant keeps case data {} after closure: until {}.",
        purpose.case_retention,
        time(retention_end)
    ))?;

    let clock = closed_at
        .checked_add_months(Months::new(13))
        .ok_or_else(|| anyhow!("cannot add 13 months to {closed_at}"))?;
    ensure!(
        clock > retention_end,
        "5.2: the shortened clock is too short"
    );
    s.step("5.2", "SHORTENED CLOCK: the demo does not wait a year.")?;
    s.more(format!(
        "It asks the broker to run its retention sweep as if it were {} (13 months on). \
         Everything else keeps running on the real clock.",
        time(clock)
    ))?;
    let broker = w
        .broker
        .as_ref()
        .ok_or_else(|| anyhow!("the broker is not running"))?;
    let t0 = Instant::now();
    broker.sweep(clock).await;

    s.step(
        "5.3",
        "The broker orders every party of the case to delete it:",
    )?;
    let mut deletions_confirmed = BTreeSet::new();
    let mut order = None;
    let case_ref = &case;
    for org in [g, corp, z] {
        let entry = until(
            &format!("the deletion confirmation of {}", org.name),
            || async move {
                let orders = org.core().deletion_orders()?;
                let mine = orders
                    .into_iter()
                    .find(|d| &d.case_ref == case_ref && d.confirmed_at.is_some());
                if let Some(d) = orders_refused(org, case_ref)? {
                    bail!(
                        "the broker refused the deletion confirmation of {}: {d}",
                        org.name
                    );
                }
                Ok(mine)
            },
        )
        .await
        .context("5.3")?;
        org.core()
            .ack_deletion(&entry.order_id)
            .await
            .context("5.3: the partner system acknowledges the deletion")?;
        s.ok(format!(
            "{}: deleted {} message(s); the broker recorded its signed confirmation",
            org.name, entry.deleted_messages
        ))?;
        deletions_confirmed.insert(org.oin.clone());
        order.get_or_insert((entry.order_id, entry.delete_by));
    }
    if let Some((id, by)) = order {
        s.more(format!(
            "(order {}, delete by {} on the shortened clock; all confirmed in {})",
            short(id),
            time(by),
            millis(t0.elapsed())
        ))?;
    }
    for org in [g, corp, z] {
        let inbox = org
            .core()
            .inbox(true)?
            .into_iter()
            .filter(|e| e.case_ref == case)
            .count();
        let outbox = org.core().messages(Some(&case))?.len();
        let known = org.core().case(&case).is_ok();
        ensure!(
            inbox == 0 && outbox == 0 && !known,
            "5.3: {} still holds case data (inbox {inbox}, outbox {outbox}, case known {known})",
            org.name
        );
    }
    s.more(
        "Nothing of the case is left in any agent; each partner system has acknowledged that \
         it deleted its own copies too (004:703-710).",
    )?;

    // The agents hold the broker's signed checkpoints and found no rewritten history.
    let mut agent_checkpoints = Vec::new();
    for org in [g, corp, z] {
        let seq = until(&format!("a checkpoint at {}", org.name), || async move {
            let h = org.core().health()?;
            ensure!(
                h.audit_warnings.is_empty(),
                "{} warns about the broker's audit trail: {:?}",
                org.name,
                h.audit_warnings
            );
            Ok(h.latest_checkpoint_seq)
        })
        .await?;
        agent_checkpoints.push((org.oin.clone(), seq));
    }
    Ok((deletions_confirmed, agent_checkpoints))
}

/// A refusal of this party's deletion confirmation for the case, if the broker refused it.
fn orders_refused(org: &Org, case: &CaseRef) -> Result<Option<Rejection>> {
    Ok(org
        .core()
        .deletion_orders()?
        .into_iter()
        .find(|d| &d.case_ref == case)
        .and_then(|d| d.confirmation_refused))
}

// ---- act 6 -----------------------------------------------------------------------------

/// Open the stopped broker's database; the lock can outlive the shutdown by a moment.
fn open_db(path: &Path) -> Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            // Held by the broker's last handles for a moment after its shutdown.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
    }
}

fn open_session(config: &BrokerConfig) -> Result<Session> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Session::open(config) {
            Ok(s) => return Ok(s),
            Err(fg::FgError::BrokerRunning(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("cannot open the broker's data for the FG"),
        }
    }
}

fn act6<W: Write>(
    s: &mut Story<'_, W>,
    w: &World,
    sum: &mut Summary,
    opts: &Options,
) -> Result<()> {
    s.act(
        6,
        "The audit trail is verified, and the FG reads what happened",
    )?;
    s.blank()?;
    s.line("  The agents and the broker are stopped.")?;
    let config = w.broker_config()?;
    let db_path = config.data_dir.join("broker.sled");
    let broker_key = w
        .directory
        .broker_key()
        .context("the directory's broker key")?;
    let verified = {
        let db = open_db(&db_path)?;
        audit::verify_chain(&db, &audit::archive_dir(&config.data_dir), &broker_key)
            .context("verifying the audit trail")?
    };
    ensure!(
        verified.is_intact(),
        "6.1: the audit trail does not verify: {verified}"
    );
    ensure!(
        verified.checkpoints > 0,
        "6.1: the broker signed no checkpoint"
    );
    sum.audit_records = verified.records;
    sum.audit_checkpoints = verified.checkpoints;
    s.step(
        "6.1",
        "Audit trail verification (as `ketenpost-broker audit verify` does it):",
    )?;
    s.ok(format!("{verified}"))?;
    s.more(
        "Checked: every record's hash and its link to the record before it, and every \
         checkpoint's signature under the broker's key from the federation-signed directory.",
    )?;
    let held: Vec<String> = sum
        .agent_checkpoints
        .iter()
        .map(|(o, seq)| format!("{} #{seq}", short_name(w, o.as_str())))
        .collect();
    s.more(format!(
        "The agents hold checkpoints too ({}), so a rewritten history would show.",
        held.join(", ")
    ))?;

    let session = open_session(&config)?;
    let viewer = Viewer::Federation;
    let filter = Filter::default();
    let now = Utc::now();
    let name = |oin: &str| short_name(w, oin);

    s.step(
        "6.2",
        "The federation FG's summary, read from the audit trail (each read is itself recorded \
         there, as audit_read). Organisation names come from the directory.",
    )?;

    let records = session
        .read(&viewer, &filter, ReportKind::Flows, now)
        .context("the FG's flow report")?;
    let mut by_event: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        *by_event.entry(r.event.to_string()).or_default() += 1;
    }
    s.blank()?;
    s.more("Records by event:")?;
    let events: Vec<String> = by_event.iter().map(|(e, n)| format!("{e} {n}")).collect();
    for l in wrap_items(&events, WIDTH - INDENT.len() - 2) {
        s.more(format!("  {l}"))?;
    }

    let flows = report::flows(&records);
    s.blank()?;
    s.more("Flows between parties (purpose uitstroom):")?;
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                name(&f.from),
                name(&f.to),
                f.kind.clone(),
                f.accepted.to_string(),
                f.refused.to_string(),
                f.late.to_string(),
                f.non_consent.to_string(),
            ]
        })
        .collect();
    table(
        s,
        &[
            "from",
            "to",
            "kind",
            "accepted",
            "refused",
            "late",
            "no consent",
        ],
        &rows,
    )?;
    sum.flows = flows
        .iter()
        .filter_map(|f| {
            Some((
                f.from.parse().ok()?,
                f.to.parse().ok()?,
                f.kind.clone(),
                f.accepted,
                f.refused,
            ))
        })
        .collect();

    let records = session.read(&viewer, &filter, ReportKind::Refusals, now)?;
    let refusals = report::refusals(&records);
    s.blank()?;
    s.more("Refusals by reason:")?;
    let rows: Vec<Vec<String>> = refusals
        .iter()
        .map(|r| {
            vec![
                r.reason.clone(),
                r.event.clone(),
                name(&r.party),
                r.count.to_string(),
            ]
        })
        .collect();
    table(s, &["reason", "event", "party", "count"], &rows)?;
    s.dim("(breach_recipients is the broker telling the sender of act 4 whom to address.)")?;

    let records = session.read(&viewer, &filter, ReportKind::Grounds, now)?;
    let grounds = report::grounds(&records);
    s.blank()?;
    if grounds.is_empty() {
        s.more(
            "Sharing without consent (non-consent grounds): none. Every message rested on the \
             client's consent, and the breach notice on the covenant itself.",
        )?;
    } else {
        s.more(format!(
            "Sharing without consent: {} message(s) to review.",
            grounds.len()
        ))?;
    }

    let records = session.read(&viewer, &filter, ReportKind::Consents, now)?;
    let consents = report::consents(&records);
    s.blank()?;
    s.more("Consents:")?;
    let rows: Vec<Vec<String>> = consents
        .iter()
        .map(|c| {
            vec![
                short(&c.consent_id),
                name(&c.granted_by),
                c.withdrawn_by
                    .as_deref()
                    .map(&name)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(s, &["consent", "granted by", "withdrawn by"], &rows)?;

    let records = session.read(&viewer, &filter, ReportKind::Breaches, now)?;
    let breaches = report::breaches(&records);
    s.blank()?;
    s.more("Breach notices:")?;
    let rows: Vec<Vec<String>> = breaches
        .iter()
        .map(|b| {
            vec![
                short(&b.message_id),
                name(&b.sender),
                b.recipients
                    .iter()
                    .map(|r| name(r))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{}/{}", b.receipted.len(), b.recipients.len()),
                b.state.as_str().to_owned(),
            ]
        })
        .collect();
    table(s, &["notice", "from", "to", "receipted", "state"], &rows)?;

    let records = session.read(&viewer, &filter, ReportKind::Deletions, now)?;
    let deletions = report::deletions(&records);
    s.blank()?;
    s.more("Deletion orders:")?;
    let rows: Vec<Vec<String>> = deletions
        .iter()
        .map(|d| {
            vec![
                short(&d.order_id),
                name(&d.party),
                d.reason.clone(),
                if d.confirmed_at.is_some() {
                    "confirmed".to_owned()
                } else {
                    "NOT CONFIRMED".to_owned()
                },
            ]
        })
        .collect();
    table(s, &["order", "party", "reason", "confirmation"], &rows)?;

    // The FG's view must agree with the story.
    let case = sum.case_ref.to_string();
    let accepted = |from: &str, to: &str, kind: Kind| {
        flows
            .iter()
            .any(|f| f.from == from && f.to == to && f.kind == kind.as_str() && f.accepted == 1)
    };
    ensure!(
        accepted(EMERGIS, VLISSINGEN, Kind::Aanmelding)
            && accepted(EMERGIS, LESCAUT, Kind::Aanmelding)
            && accepted(LESCAUT, EMERGIS, Kind::Signaal)
            && accepted(LESCAUT, VLISSINGEN, Kind::Signaal)
            && accepted(EMERGIS, LESCAUT, Kind::Reactie)
            && accepted(LESCAUT, EMERGIS, Kind::DatalekMelding)
            && accepted(LESCAUT, VLISSINGEN, Kind::DatalekMelding),
        "6.2: the flow report misses a flow of the story"
    );
    ensure!(
        !flows.iter().any(|f| f.to == WOONGOED && f.accepted > 0),
        "6.2: something was accepted for the party outside the case team"
    );
    let refused = |code: &str| refusals.iter().any(|r| r.reason == code);
    ensure!(
        refused("not_in_case_team") && refused("consent_withdrawn"),
        "6.2: the refusal report misses a refusal by the broker"
    );
    ensure!(grounds.is_empty(), "6.2: a non-consent ground was used");
    ensure!(
        consents.len() == 1 && consents.iter().all(|c| c.withdrawn_at.is_some()),
        "6.2: expected one consent, withdrawn"
    );
    ensure!(
        breaches.len() == 1
            && breaches
                .iter()
                .all(|b| b.state == report::BreachState::NotifiedOnTime),
        "6.2: expected one breach notice, notified on time"
    );
    let confirmed: BTreeSet<&str> = deletions
        .iter()
        .filter(|d| d.case_ref == case && d.confirmed_at.is_some())
        .map(|d| d.party.as_str())
        .collect();
    ensure!(
        deletions.len() == 3 && confirmed == BTreeSet::from([VLISSINGEN, LESCAUT, EMERGIS]),
        "6.2: expected three confirmed deletion orders, got {deletions:?}"
    );

    if let Some(path) = &opts.html_report {
        let records = session.read(&viewer, &filter, ReportKind::Html, now)?;
        let head = session.head();
        let html = fg::render(
            ReportKind::Html,
            Format::Html,
            &records,
            &viewer,
            &filter,
            session.context(&head),
            now,
        )?;
        std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))?;
        s.blank()?;
        s.more(format!(
            "The full HTML report with the flow graph is in {}.",
            path.display()
        ))?;
    }
    drop(session);

    let again = {
        let db = open_db(&db_path)?;
        audit::verify_chain(&db, &audit::archive_dir(&config.data_dir), &broker_key)?
    };
    ensure!(
        again.is_intact(),
        "6.2: the audit trail does not verify after the FG's reads: {again}"
    );
    s.blank()?;
    s.ok(format!(
        "The trail still verifies after the FG's reads: {} records, {} of them audit_read.",
        again.records,
        again.records.saturating_sub(verified.records)
    ))?;
    check_no_personal_data(&records_of(&db_path)?)?;
    Ok(())
}

/// Every record of the trail, to check what the broker wrote.
fn records_of(db_path: &Path) -> Result<Vec<AuditRecord>> {
    let db = open_db(db_path)?;
    let data_dir = db_path.parent().context("the database's data directory")?;
    Ok(audit::stored_records(&db, &audit::archive_dir(data_dir))?)
}

/// The broker's trail must hold none of the example payloads' personal data.
fn check_no_personal_data(records: &[AuditRecord]) -> Result<()> {
    let text = serde_json::to_string(records)?;
    for value in personal_values()? {
        ensure!(
            !text.contains(&value),
            "the broker's audit trail holds a value of a payload"
        );
    }
    Ok(())
}

/// The string values of the example payloads' identity and contact fields (names, BSN,
/// addresses, phone numbers): what must never show up outside a recipient's view.
pub fn personal_values() -> Result<BTreeSet<String>> {
    fn strings(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if s.chars().count() >= 4 => {
                out.insert(s.clone());
            }
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    let aanmelding = serde_json::to_value(Aanmelding::example())?;
    for (field, cat) in payload::type_fields(Kind::Aanmelding).unwrap_or(&[]) {
        if matches!(cat, Category::Identity | Category::Contact) {
            if let Some(v) = aanmelding.get(*field) {
                strings(v, &mut out);
            }
        }
    }
    let breach = serde_json::to_value(DatalekMelding::example())?;
    if let Some(v) = breach.get("identiteit_betrokkenen") {
        strings(v, &mut out);
    }
    // Dates and enum values (snake_case words) are not personal data on their own.
    let is_date = |s: &str| s.parse::<chrono::NaiveDate>().is_ok();
    let is_enum = |s: &str| s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    out.retain(|s| !is_date(s) && !is_enum(s));
    Ok(out)
}

/// "Emergis" for the OIN of "Emergis (demo)": the tables are wide enough as it is.
fn short_name(w: &World, oin: &str) -> String {
    let n = w.name(oin);
    n.strip_suffix(" (demo)").map(str::to_owned).unwrap_or(n)
}

fn table<W: Write>(s: &mut Story<'_, W>, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    for l in report::text_table(header, rows).lines() {
        s.more(format!("  {l}"))?;
    }
    Ok(())
}
