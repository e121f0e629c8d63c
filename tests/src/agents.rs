//! Agents as child processes, and a covenant *region* (one broker and the agents a scenario
//! needs) to play the seed covenants in.
//!
//! An [`AgentProcess`] is `ketenpost-agent run -c agent.toml` with its own data folder and its
//! HTTP API on `127.0.0.1:0`. The agent names the address it bound in its `agent running` log
//! line (stderr, JSON with `KETENPOST_LOG_FORMAT=json`); the harness waits for that line, at
//! most [`STARTUP_WAIT`], and then talks to the API with
//! [`ApiClient`](ketenpost_agent::client::ApiClient). Every agent log line also goes to
//! `agent.log` in the agent's folder, and the last lines are quoted when a wait fails.
//!
//! A [`Region`] builds a dev federation from any policy text (a seed policy:
//! [`seed_policy`]), starts the broker process ([`BrokerProcess`]) and the agents of the roles
//! asked for, and at the end stops them all and reads the broker's audit trail
//! ([`AuditLog`]: the records, and the hash chain and checkpoints verified).
//!
//! Every wait is bounded; every process is killed when its handle drops.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use ketenpost_agent::client::ApiClient;
use ketenpost_broker::audit::{self, AuditEvent, AuditRecord, AuditTrail, Outcome, VerifyReport};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{DatalekMelding, Reactie, Signaal};
use ketenpost_schemas::policy::{Policy, Role};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::{binary, BrokerProcess, Fed};

/// How long an agent may take to verify the federation documents and open its API.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);
/// The default bound of a scenario's waits for a delivery or a status.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a wait polls the agent's API.
const POLL: Duration = Duration::from_millis(50);
/// How many log lines of an agent are kept in memory for error messages.
const LOG_TAIL: usize = 40;

/// The text of a seed covenant policy, `schemas/policies/<name>.toml`.
pub fn seed_policy(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/policies")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// A string as a TOML basic string. JSON string escapes (`\"`, `\\`, `\n`, `\u00XX`) are
/// all valid TOML escapes, so the JSON form of a string is a TOML string.
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))?;
    Ok(toml_str(s))
}

/// The last lines an agent logged, shared with the thread that reads its stderr.
#[derive(Clone, Debug, Default)]
struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() == LOG_TAIL {
            q.pop_front();
        }
        q.push_back(line);
    }

    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The API address in an `agent running` log line (JSON or text format).
fn api_addr_in(line: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let fields = v.get("fields")?;
        if fields.get("message")?.as_str()? != "agent running" {
            return None;
        }
        return fields.get("api_addr")?.as_str()?.parse().ok();
    }
    if !line.contains("agent running") {
        return None;
    }
    let rest = line.split("api_addr=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// How an agent reaches the broker: the keys of its `[broker]` section besides the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAt {
    /// `address`: the broker's QUIC endpoint.
    pub quic: SocketAddr,
    /// `tcp_address`: the broker's TLS-over-TCP listener, if given.
    pub tcp: Option<SocketAddr>,
    /// `transport` (`quic`, `tcp`, `auto`); `None` leaves it to the default (`auto`).
    pub transport: Option<&'static str>,
}

impl From<SocketAddr> for BrokerAt {
    fn from(quic: SocketAddr) -> BrokerAt {
        BrokerAt {
            quic,
            tcp: None,
            transport: None,
        }
    }
}

impl BrokerAt {
    /// The `transport` and `tcp_address` lines (each ending in a newline), or nothing.
    fn toml(&self) -> Result<String> {
        let mut out = String::new();
        if let Some(t) = self.transport {
            out.push_str(&format!("transport = {}\n", toml_str(t)));
        }
        if let Some(a) = self.tcp {
            out.push_str(&format!("tcp_address = {}\n", toml_str(&a.to_string())));
        }
        Ok(out)
    }
}

/// How the agents of a [`Region`] reach its broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentLink {
    /// QUIC, as every agent did before TCP existed (`auto` without a TCP address); the
    /// broker serves no TCP.
    Quic,
    /// `transport = "tcp"`. The agents' QUIC `address` is a UDP port that never answers,
    /// so nothing they did can have gone over QUIC.
    Tcp,
    /// `transport = "auto"` with the QUIC `address` a UDP port that never answers, as on a
    /// network that drops UDP: every agent must fall back to TCP.
    AutoFallback,
}

/// An agent that was spawned and has not yet said where its API listens.
#[derive(Debug)]
struct Starting {
    /// `None` once handed to the [`AgentProcess`].
    child: Option<Child>,
    ready: mpsc::Receiver<SocketAddr>,
    log: LogTail,
    oin: Oin,
    name: String,
    roles: Vec<Role>,
    dir: PathBuf,
    token: String,
    /// The thread that reads its stderr; it ends when the process has closed it.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// `ketenpost-agent run` as a child process, with a client for its HTTP API.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: LogTail,
    /// Its organisation.
    pub oin: Oin,
    /// Its organisation's name in the directory.
    pub name: String,
    /// Its roles in the directory.
    pub roles: Vec<Role>,
    /// Its folder: `agent.toml`, `api.token`, `data/`, `agent.log`.
    pub dir: PathBuf,
    /// A client of its HTTP API.
    pub api: ApiClient,
}

impl AgentProcess {
    /// Write the configuration of party `party` (roster order, `fed.files.parties`) into
    /// `dir`, run the agent against the broker at `broker`, and wait (at most
    /// [`STARTUP_WAIT`]) until its API listens.
    pub fn start(fed: &Fed, party: usize, broker: SocketAddr, dir: &Path) -> Result<AgentProcess> {
        Self::start_at(fed, party, &broker.into(), dir)
    }

    /// [`AgentProcess::start`] with the agent's whole `[broker]` reach: its QUIC address,
    /// the broker's TCP address and the transport.
    pub fn start_at(
        fed: &Fed,
        party: usize,
        broker: &BrokerAt,
        dir: &Path,
    ) -> Result<AgentProcess> {
        Self::spawn(fed, party, broker, dir, &[])?.ready(Instant::now() + STARTUP_WAIT)
    }

    /// [`AgentProcess::start`] with extra environment variables (the crash tests'
    /// `KETENPOST_FAILPOINT`). Started again in the same `dir`, it keeps its data.
    pub fn start_with_env(
        fed: &Fed,
        party: usize,
        broker: SocketAddr,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        Self::spawn(fed, party, &broker.into(), dir, env)?.ready(Instant::now() + STARTUP_WAIT)
    }

    /// Wait (at most `limit`) for the process to end by itself; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the agents of several parties at once (each in `root/<OIN>`), then wait for
    /// all of them, at most [`STARTUP_WAIT`] in total.
    pub fn start_all(
        fed: &Fed,
        parties: &[usize],
        broker: &BrokerAt,
        root: &Path,
    ) -> Result<Vec<AgentProcess>> {
        Self::start_all_with_env(fed, parties, broker, root, &[])
    }

    /// [`AgentProcess::start_all`] with extra environment variables for every agent.
    pub fn start_all_with_env(
        fed: &Fed,
        parties: &[usize],
        broker: &BrokerAt,
        root: &Path,
        env: &[(&str, &str)],
    ) -> Result<Vec<AgentProcess>> {
        let mut starting = Vec::new();
        for &i in parties {
            let p = fed
                .files
                .parties
                .get(i)
                .ok_or_else(|| anyhow!("no party {i}"))?;
            starting.push(Self::spawn(
                fed,
                i,
                broker,
                &root.join(p.oin.as_str()),
                env,
            )?);
        }
        let deadline = Instant::now() + STARTUP_WAIT;
        starting.into_iter().map(|s| s.ready(deadline)).collect()
    }

    fn spawn(
        fed: &Fed,
        party: usize,
        broker: &BrokerAt,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Starting> {
        Self::spawn_spec(&AgentSpec::of(fed, party)?, fed, broker, dir, env)
    }

    /// Start an agent with an explicit identity (a party enrolled after `init`, or one
    /// with rotated keys), and wait until its API listens.
    pub fn start_spec(
        spec: &AgentSpec,
        fed: &Fed,
        broker: impl Into<BrokerAt>,
        dir: &Path,
    ) -> Result<AgentProcess> {
        Self::spawn_spec(spec, fed, &broker.into(), dir, &[])?.ready(Instant::now() + STARTUP_WAIT)
    }

    fn spawn_spec(
        p: &AgentSpec,
        fed: &Fed,
        broker: &BrokerAt,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Starting> {
        std::fs::create_dir_all(dir)?;
        let token = format!("kp-test-{}", uuid::Uuid::now_v7().simple());
        std::fs::write(dir.join("api.token"), &token)?;
        let previous = p
            .previous_age
            .iter()
            .map(|a| toml_path(a))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let config = format!(
            "oin = {oin}\n\
             data_dir = \"data\"\n\
             \n\
             [broker]\n\
             address = {broker}\n\
             server_name = \"localhost\"\n\
             {transport}\
             \n\
             [tls]\n\
             ca = {ca}\n\
             cert = {cert}\n\
             key = {key}\n\
             \n\
             [keys]\n\
             signing_key = {signing}\n\
             age_identity = {age}\n\
             previous_age_identities = [{previous}]\n\
             federation_public_key_file = {fedkey}\n\
             \n\
             [api]\n\
             listen = \"127.0.0.1:0\"\n\
             token_file = \"api.token\"\n\
             \n\
             [timing]\n\
             fetch_wait_ms = 500\n\
             retry_min_ms = 50\n\
             retry_max_ms = 500\n\
             request_timeout_ms = 5000\n\
             checkpoint_interval_secs = 1\n\
             documents_refresh_secs = {refresh}\n\
             sweep_interval_secs = 1\n\
             startup_wait_secs = 20\n",
            oin = toml_str(p.oin.as_str()),
            broker = toml_str(&broker.quic.to_string()),
            transport = broker.toml()?,
            ca = toml_path(&fed.files.ca.cert)?,
            cert = toml_path(&p.cert)?,
            key = toml_path(&p.key)?,
            signing = toml_path(&p.signing_key)?,
            age = toml_path(&p.age_key)?,
            fedkey = toml_path(&fed.files.federation.public_key)?,
            refresh = p.documents_refresh_secs,
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(binary("ketenpost-agent")?);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("KETENPOST_LOG_FORMAT", "json")
            .env_remove("KETENPOST_AGENT_CONFIG")
            .env_remove("KETENPOST_AGENT_API")
            .env_remove("KETENPOST_AGENT_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ketenpost-agent")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut file = std::fs::File::create(dir.join("agent.log"))?;
        let log = LogTail::default();
        let (tx, ready) = mpsc::channel();
        let tail = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(addr) = api_addr_in(&line) {
                    let _ = tx.send(addr);
                }
                tail.push(line);
            }
        });
        Ok(Starting {
            child: Some(child),
            ready,
            log,
            oin: p.oin.clone(),
            name: p.name.clone(),
            roles: p.roles.clone(),
            dir: dir.to_owned(),
            token,
            reader: Some(reader),
        })
    }

    /// A call to the API; an error answer becomes an error naming the call.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.api
            .call(method, path, body.as_ref())
            .await
            .with_context(|| format!("{}: {method} {path}", self.name))
    }

    /// A call that must be refused: its HTTP status, error code and message.
    pub async fn refusal(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String, String)> {
        match self.api.call(method, path, body.as_ref()).await {
            Ok(v) => bail!("{}: {method} {path} was not refused: {v}", self.name),
            Err(ketenpost_agent::Error::Api {
                status,
                code,
                message,
            }) => Ok((status, code, message)),
            Err(e) => Err(anyhow!(e).context(format!("{}: {method} {path}", self.name))),
        }
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Value> {
        self.call("GET", "/v1/health", None).await
    }

    /// Open a case under `purpose` (as this party's case-managing role) and add `members`
    /// (each in its one directory role). Returns the case reference.
    pub async fn open_case(&self, purpose: &str, members: &[&Oin]) -> Result<String> {
        let case = self
            .call("POST", "/v1/cases", Some(json!({ "purpose": purpose })))
            .await?;
        let case_ref = text(&case["case_ref"], "case_ref")?;
        for m in members {
            self.add_member(&case_ref, m, None).await?;
        }
        Ok(case_ref)
    }

    /// Add a member to a case; `purpose` only when this agent does not know the case.
    pub async fn add_member(
        &self,
        case_ref: &str,
        oin: &Oin,
        purpose: Option<&str>,
    ) -> Result<Value> {
        let mut body = json!({ "oin": oin });
        if let Some(p) = purpose {
            body["purpose"] = json!(p);
        }
        self.call("POST", &format!("/v1/cases/{case_ref}/members"), Some(body))
            .await
    }

    /// Tell this agent about a case another party manages, with the team as `manager`'s
    /// agent knows it (what the regievoerder tells its partners outside ketenpost).
    pub async fn register_case_from(
        &self,
        manager: &AgentProcess,
        case_ref: &str,
    ) -> Result<Value> {
        let case = manager
            .call("GET", &format!("/v1/cases/{case_ref}"), None)
            .await?;
        let members: Vec<Value> = case["members"]
            .as_object()
            .ok_or_else(|| anyhow!("case without members: {case}"))?
            .iter()
            .map(|(oin, role)| json!({ "oin": oin, "role": role }))
            .collect();
        self.call(
            "PUT",
            &format!("/v1/cases/{case_ref}"),
            Some(json!({ "purpose": case["purpose"], "members": members })),
        )
        .await
    }

    /// Register a consent this organisation obtained for `roles` in a case it knows;
    /// `document` stands for the signed consent document (only its SHA-256 travels).
    /// Returns the consent id.
    pub async fn grant_consent(
        &self,
        case_ref: &str,
        roles: &[&str],
        document: &str,
    ) -> Result<String> {
        let c = self
            .call(
                "POST",
                "/v1/consents",
                Some(json!({
                    "case_ref": case_ref,
                    "roles": roles,
                    "document_sha256": hex::encode(Sha256::digest(document.as_bytes())),
                })),
            )
            .await?;
        text(&c["record"]["consent_id"], "consent_id")
    }

    /// Send a message; returns its id (status `queued`).
    pub async fn send(&self, m: &Outgoing) -> Result<String> {
        let sent = self
            .call("POST", "/v1/messages", Some(m.json()))
            .await
            .with_context(|| format!("send {}", m.kind()))?;
        text(&sent["message_id"], "message_id")
    }

    /// Send a message that must be refused, early by the agent (HTTP 422) or by the broker
    /// (status `rejected`, waited for at most `timeout`). Returns the rejection code.
    pub async fn send_refused(&self, m: &Outgoing, timeout: Duration) -> Result<String> {
        match self.api.call("POST", "/v1/messages", Some(&m.json())).await {
            Err(ketenpost_agent::Error::Api {
                status: 422, code, ..
            }) => Ok(code),
            Err(e) => Err(anyhow!(e).context(format!("{}: send {}", self.name, m.kind()))),
            Ok(sent) => {
                let id = text(&sent["message_id"], "message_id")?;
                let s = self.wait_for_status(&id, "rejected", timeout).await?;
                text(&s["rejection"]["code"], "rejection.code")
            }
        }
    }

    /// The status of a sent message (`GET /v1/messages/{id}`).
    pub async fn status(&self, id: &str) -> Result<Value> {
        self.call("GET", &format!("/v1/messages/{id}"), None).await
    }

    /// Wait (at most `timeout`) until a sent message has `status` (`accepted`, `rejected`,
    /// `delivered`, `expired`; `accepted` is also met by `delivered`). Fails at once when it
    /// reaches another final status.
    pub async fn wait_for_status(
        &self,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.status(id).await?;
            let now = s["status"].as_str().unwrap_or_default();
            // A delivered message was accepted on the way.
            if now == status || (status == "accepted" && now == "delivered") {
                return Ok(s);
            }
            let settled = match status {
                "accepted" | "delivered" => matches!(now, "rejected" | "expired"),
                _ => matches!(now, "rejected" | "delivered" | "expired"),
            };
            if settled {
                bail!(
                    "{}: message {id} became '{now}', not '{status}': {s}",
                    self.name
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: message {id} not '{status}' within {timeout:?}: {s}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The inbox list, acknowledged messages included (`GET /v1/inbox?all=true`).
    pub async fn inbox(&self) -> Result<Vec<Value>> {
        let list = self.call("GET", "/v1/inbox?all=true", None).await?;
        Ok(list["messages"].as_array().cloned().unwrap_or_default())
    }

    /// The inbox list entry (summary, with `answer_due` and `fg_contact`) of a message.
    pub async fn inbox_summary(&self, id: &str) -> Result<Option<Value>> {
        Ok(self
            .inbox()
            .await?
            .into_iter()
            .find(|m| m["message_id"].as_str() == Some(id)))
    }

    /// Wait (at most `timeout`) until the message `id` is in the inbox; returns it with its
    /// payload (`GET /v1/inbox/{id}`).
    pub async fn wait_for_message(&self, id: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.api.call("GET", &format!("/v1/inbox/{id}"), None).await {
                Ok(v) => return Ok(v),
                Err(ketenpost_agent::Error::Api { status: 404, .. }) => {}
                Err(e) => return Err(anyhow!(e).context(format!("{}: read {id}", self.name))),
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: message {id} not received within {timeout:?}; refused deliveries: {}\n{}",
                    self.name,
                    self.call("GET", "/v1/refused", None).await?,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait (at most `timeout`) until a message of `kind` is in the inbox; returns the
    /// first (oldest) one with its payload.
    pub async fn wait_for_inbox(&self, kind: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let first = self.inbox().await?.into_iter().find(|m| m["kind"] == kind);
            if let Some(m) = first {
                let id = text(&m["message_id"], "message_id")?;
                return self.call("GET", &format!("/v1/inbox/{id}"), None).await;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: no {kind} received within {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the inbox holds (or held, acknowledged) the message `id`.
    pub async fn has_received(&self, id: &str) -> Result<bool> {
        Ok(self.inbox_summary(id).await?.is_some())
    }

    /// The agent's last log lines.
    pub fn log_tail(&self) -> String {
        format!(
            "--- last log lines of {} ---\n{}",
            self.name,
            self.log.text()
        )
    }

    /// SIGTERM and wait (at most 15 s) for a clean exit; SIGKILL after that.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        terminate(&mut self.child, Duration::from_secs(15))
    }
}

impl Starting {
    /// Wait until the agent says where its API listens, at most until `deadline`.
    fn ready(mut self, deadline: Instant) -> Result<AgentProcess> {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = self.ready.recv_timeout(left);
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the agent process was handed over already"))?;
        match got {
            Ok(addr) => Ok(AgentProcess {
                api: ApiClient::new(addr, self.token.clone()),
                child,
                log: self.log.clone(),
                oin: self.oin.clone(),
                name: self.name.clone(),
                roles: self.roles.clone(),
                dir: self.dir.clone(),
            }),
            Err(e) => {
                let exit = match e {
                    // The agent closed stderr: it exited.
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("it exited ({:?})", child.wait().ok())
                    }
                    mpsc::RecvTimeoutError::Timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        format!("it did not open its API within {STARTUP_WAIT:?}")
                    }
                };
                // The process is gone and its stderr closed: the reader passes on the
                // last lines and ends.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                bail!(
                    "agent of {} ({}) did not start: {exit}\n{}",
                    self.name,
                    self.oin,
                    self.log.text()
                )
            }
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child, bound: Duration) -> Result<std::process::ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    bail!(
        "process {} did not stop within {bound:?} of SIGTERM",
        child.id()
    )
}

fn text(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {what} in the answer: {v}"))
}

/// Who an agent process is: its OIN, names and key files.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Its organisation.
    pub oin: Oin,
    /// Its organisation's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Its TLS certificate and key.
    pub cert: PathBuf,
    /// Its TLS key.
    pub key: PathBuf,
    /// Its signing key.
    pub signing_key: PathBuf,
    /// Its age identity.
    pub age_key: PathBuf,
    /// Its age identities from before a rotation.
    pub previous_age: Vec<PathBuf>,
    /// How often it fetches the federation documents (3600 s unless a test needs less).
    pub documents_refresh_secs: u64,
}

impl AgentSpec {
    /// The identity of party `i` of `fed` (roster order).
    pub fn of(fed: &Fed, i: usize) -> Result<AgentSpec> {
        let p = fed
            .files
            .parties
            .get(i)
            .ok_or_else(|| anyhow!("no party {i}"))?;
        Ok(AgentSpec {
            oin: p.oin.clone(),
            name: p.name.clone(),
            roles: p.roles.clone(),
            cert: p.cert.clone(),
            key: p.key.clone(),
            signing_key: p.signing_key.clone(),
            age_key: p.age_key.clone(),
            previous_age: Vec::new(),
            documents_refresh_secs: 3600,
        })
    }
}

/// A message to send through an agent's API (`POST /v1/messages`).
#[derive(Clone, Debug)]
pub struct Outgoing {
    body: Map<String, Value>,
}

impl Outgoing {
    /// A message of `kind` about `case_ref` with the full `payload`; add recipients.
    pub fn new(kind: &str, case_ref: &str, payload: Value) -> Outgoing {
        let mut body = Map::new();
        body.insert("kind".into(), json!(kind));
        body.insert("case_ref".into(), json!(case_ref));
        body.insert("to".into(), json!([]));
        body.insert("payload".into(), payload);
        Outgoing { body }
    }

    fn push_to(mut self, r: Value) -> Self {
        if let Some(Value::Array(to)) = self.body.get_mut("to") {
            to.push(r);
        }
        self
    }

    /// A signal of `category` about `case` to `to` under purpose `uitstroom` and `consent`,
    /// observed an hour ago: the signal most scenarios send.
    pub fn uitstroom_signaal(case: &str, category: &str, to: &Oin, consent: &str) -> Result<Self> {
        Ok(Outgoing::new(
            "signaal",
            case,
            signaal_payload(category, Utc::now() - chrono::Duration::hours(1))?,
        )
        .to(to)
        .purpose("uitstroom")
        .consent(consent))
    }

    /// A recipient by OIN.
    pub fn to(self, oin: &Oin) -> Self {
        self.push_to(json!({ "oin": oin }))
    }

    /// Every member of the case team with `role` (the agent must know the case).
    pub fn to_role(self, role: &str) -> Self {
        self.push_to(json!({ "role": role }))
    }

    /// The purpose (needed when the agent does not know the case).
    pub fn purpose(mut self, purpose: &str) -> Self {
        self.body.insert("purpose".into(), json!(purpose));
        self
    }

    /// Send under a consent registered (possibly by another party) at the broker.
    pub fn consent(mut self, consent_id: &str) -> Self {
        self.body.insert(
            "legal_basis".into(),
            json!({ "basis": "consent", "consent_id": consent_id }),
        );
        self
    }

    /// Send under a non-consent ground (`acute_danger`, `legal_duty`) with a justification
    /// code.
    pub fn ground(mut self, ground: &str, justification: &str) -> Self {
        self.body.insert(
            "legal_basis".into(),
            json!({ "basis": "non_consent", "ground": ground, "justification": justification }),
        );
        self
    }

    /// The message this one answers.
    pub fn in_reply_to(mut self, id: &str) -> Self {
        self.body.insert("in_reply_to".into(), json!(id));
        self
    }

    /// Ask the recipients in `by` (every recipient when empty) for an answer by `due`.
    pub fn answer_request(mut self, by: &[&str], due: DateTime<Utc>) -> Self {
        let mut request = json!({ "due": due });
        if !by.is_empty() {
            request["by"] = json!(by);
        }
        self.body.insert("answer_request".into(), request);
        self
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        self.body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The request body.
    pub fn json(&self) -> Value {
        Value::Object(self.body.clone())
    }
}

/// A signaal payload of `category` (`geluidsoverlast`, `bedreiging`, ...) observed at
/// `observed` (its event time, from which `send_within` counts).
pub fn signaal_payload(category: &str, observed: DateTime<Utc>) -> Result<Value> {
    let mut v = serde_json::to_value(Signaal::example())?;
    v["categorie"] = json!(category);
    v["waargenomen_op"] = json!(observed);
    Ok(v)
}

/// A reactie payload (steps taken).
pub fn reactie_payload() -> Result<Value> {
    Ok(serde_json::to_value(Reactie::example())?)
}

/// A datalek-melding about `cases`: the leak began at `began` and may still go on until
/// `until` (the window whose exchanges it concerns); it was discovered at `discovered`
/// (its event time, from which `send_within` counts).
pub fn datalek_payload(
    cases: &[&str],
    began: DateTime<Utc>,
    discovered: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Value> {
    let mut v = serde_json::to_value(DatalekMelding::example())?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("the example is not an object"))?;
    obj.insert("betrokken_casussen".into(), json!(cases));
    obj.insert("ontstaan_op".into(), json!(began));
    obj.remove("beeindigd_op");
    obj.insert("ontdekt_op".into(), json!(discovered));
    obj.insert("tijdvak_van".into(), json!(began));
    obj.insert("tijdvak_tot".into(), json!(until));
    Ok(v)
}

/// The top-level fields of `payload` that the view of `role` for `kind` under `purpose`
/// may hold, by the policy: what that role must receive of it, and no more.
pub fn view_fields(
    policy: &Policy,
    purpose: &str,
    kind: &str,
    role: &str,
    payload: &Value,
) -> Result<BTreeSet<String>> {
    let k = Kind::from_str(kind).map_err(|e| anyhow!("kind {kind}: {e}"))?;
    let rule = policy
        .purposes
        .get(purpose)
        .and_then(|p| p.kinds.get(&k))
        .ok_or_else(|| anyhow!("the policy has no {kind} under {purpose}"))?;
    let granted = rule
        .views
        .get(&Role::new(role))
        .ok_or_else(|| anyhow!("the policy gives {role} no view of {kind}"))?;
    let schema = policy
        .kind_schema(k)
        .ok_or_else(|| anyhow!("the policy has no schema for {kind}"))?;
    let allowed: BTreeSet<&str> = schema.fields_in_view(granted).collect();
    Ok(keys_of(payload)
        .into_iter()
        .filter(|f| allowed.contains(f.as_str()))
        .collect())
}

/// The top-level field names of a JSON object (empty for anything else).
pub fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The broker's audit trail, read after the broker stopped.
#[derive(Debug)]
pub struct AuditLog {
    /// Every record, in trail order.
    pub records: Vec<AuditRecord>,
    /// The result of verifying the hash chain and the signed checkpoints.
    pub verified: VerifyReport,
}

impl AuditLog {
    /// Verify and read the trail in the broker data folder `data` (the broker must have
    /// stopped: its database is locked while it runs).
    pub fn read(fed: &Fed, data: &Path) -> Result<AuditLog> {
        let signer =
            keys::signing_key_from_text(&std::fs::read_to_string(&fed.files.broker.signing_key)?)?;
        let path = data.join("broker.sled");
        if !path.exists() {
            bail!("no broker database at {}", path.display());
        }
        let db = sled::Config::new()
            .path(&path)
            .open()
            .with_context(|| format!("open {}", path.display()))?;
        let archive = audit::archive_dir(data);
        let verified = audit::verify_chain(&db, &archive, &signer.verifying_key())?;
        let trail = AuditTrail::open(&db, &archive, signer)?;
        let records = trail
            .iter_range(1, trail.head().seq)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuditLog { records, verified })
    }

    /// The records about message `id`, in order.
    pub fn about(&self, id: &str) -> Vec<&AuditRecord> {
        self.records
            .iter()
            .filter(|r| r.message_id.as_deref() == Some(id))
            .collect()
    }

    /// The first record of `event` about message `id`.
    pub fn find(&self, event: AuditEvent, id: &str) -> Option<&AuditRecord> {
        self.about(id).into_iter().find(|r| r.event == event)
    }

    /// The first record of `event` about message `id`, or an error listing what there is.
    pub fn expect(&self, event: AuditEvent, id: &str) -> Result<&AuditRecord> {
        self.find(event, id).ok_or_else(|| {
            anyhow!(
                "no '{event}' record for message {id}; its records: {:?}",
                self.summary(id)
            )
        })
    }

    /// `(event, outcome, reason)` of every record about message `id`, for messages.
    pub fn summary(&self, id: &str) -> Vec<(AuditEvent, Outcome, Option<String>)> {
        self.about(id)
            .into_iter()
            .map(|r| (r.event, r.outcome, r.reason.clone()))
            .collect()
    }

    /// Every record of `event`.
    pub fn of(&self, event: AuditEvent) -> Vec<&AuditRecord> {
        self.records.iter().filter(|r| r.event == event).collect()
    }
}

/// One covenant region on loopback: a dev federation from a policy text, the broker as a
/// process, and the agents of the roles a scenario needs, each a process.
pub struct Region {
    /// The federation.
    pub fed: Fed,
    broker: Option<BrokerProcess>,
    data: PathBuf,
    agents: Vec<AgentProcess>,
    /// How the agents reach the broker.
    link: AgentLink,
    /// A bound UDP socket nobody reads: the agents' QUIC address when QUIC must not work
    /// (held for the region's life, so the port cannot be taken by something that answers).
    _silent_udp: Option<std::net::UdpSocket>,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("covenant", &self.fed.policy.covenant.id)
            .field("broker", &self.broker)
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// Build a federation from `policy` (and `roster`, default one party per role), start
    /// the broker on `127.0.0.1:0`, and the agents of the first party with each of `roles`.
    pub fn start(policy: &str, roster: Option<&str>, roles: &[&str]) -> Result<Region> {
        Region::start_with(policy, roster, roles, AgentLink::Quic)
    }

    /// [`Region::start`] with the agents reaching the broker by `link`; for `Tcp` and
    /// `AutoFallback` the broker also serves TLS over TCP (`--tcp 127.0.0.1:0`).
    pub fn start_with(
        policy: &str,
        roster: Option<&str>,
        roles: &[&str],
        link: AgentLink,
    ) -> Result<Region> {
        Region::start_inner(Fed::new(policy, roster)?, roles, link, false)
    }

    /// [`Region::start`] with files beside the policy (relative path, content), such as
    /// the schema files its kinds name (`schema_file`).
    pub fn start_with_files(
        policy: &str,
        files: &[(&str, &str)],
        roles: &[&str],
    ) -> Result<Region> {
        Region::start_inner(
            Fed::with_files(policy, None, files)?,
            roles,
            AgentLink::Quic,
            false,
        )
    }

    /// [`Region::start`] with broker and agents on one test clock: the file
    /// [`Region::clock_file`] holds how many seconds the region runs ahead of real time
    /// (written `0` here), so a test moves every process through months without sleeping.
    pub fn start_clocked(policy: &str, roles: &[&str]) -> Result<Region> {
        Region::start_inner(Fed::new(policy, None)?, roles, AgentLink::Quic, true)
    }

    /// The test clock file of a region started with [`Region::start_clocked`].
    pub fn clock_file(&self) -> PathBuf {
        self.fed.path("clock")
    }

    /// Move the region's test clock to `seconds` ahead of real time.
    pub fn set_clock(&self, seconds: i64) -> Result<()> {
        Ok(std::fs::write(self.clock_file(), seconds.to_string())?)
    }

    fn start_inner(fed: Fed, roles: &[&str], link: AgentLink, clocked: bool) -> Result<Region> {
        let data = fed.path("broker-data");
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let clock = fed.path("clock");
        let clock_text = clock
            .to_str()
            .ok_or_else(|| anyhow!("the clock file's path is not UTF-8"))?
            .to_owned();
        if clocked {
            std::fs::write(&clock, "0")?;
        }
        let broker_env: Vec<(&str, &Path)> = if clocked {
            vec![(ketenpost_transport::failpoint::CLOCK_ENV, clock.as_path())]
        } else {
            Vec::new()
        };
        let agent_env: Vec<(&str, &str)> = if clocked {
            vec![(
                ketenpost_transport::failpoint::CLOCK_ENV,
                clock_text.as_str(),
            )]
        } else {
            Vec::new()
        };
        let broker = match link {
            AgentLink::Quic => BrokerProcess::start_with(&fed, &data, loopback, &[], &broker_env)?,
            AgentLink::Tcp | AgentLink::AutoFallback => BrokerProcess::start_with(
                &fed,
                &data,
                loopback,
                &["--tcp", "127.0.0.1:0"],
                &broker_env,
            )?,
        };
        let (at, silent) = match link {
            AgentLink::Quic => (BrokerAt::from(broker.addr), None),
            AgentLink::Tcp | AgentLink::AutoFallback => {
                let silent = std::net::UdpSocket::bind(loopback)?;
                let at = BrokerAt {
                    quic: silent.local_addr()?,
                    tcp: Some(
                        broker
                            .tcp
                            .ok_or_else(|| anyhow!("the broker did not say 'tcp on'"))?,
                    ),
                    transport: Some(if link == AgentLink::Tcp {
                        "tcp"
                    } else {
                        "auto"
                    }),
                };
                (at, Some(silent))
            }
        };
        let parties = roles
            .iter()
            .map(|r| party_with_role(&fed, r))
            .collect::<Result<Vec<_>>>()?;
        let agents =
            AgentProcess::start_all_with_env(&fed, &parties, &at, &fed.path("agents"), &agent_env)?;
        Ok(Region {
            fed,
            broker: Some(broker),
            data,
            agents,
            link,
            _silent_udp: silent,
        })
    }

    /// Check that every agent reaches the broker the way the region's [`AgentLink`] says:
    /// its health names the transport in use, and with `AutoFallback` its log has the
    /// fallback warning. Call it after the scenario, before [`Region::finish`].
    pub async fn check_link(&self) -> Result<()> {
        let want = match self.link {
            AgentLink::Quic => "quic",
            AgentLink::Tcp | AgentLink::AutoFallback => "tcp",
        };
        for a in &self.agents {
            let health = a.health().await?;
            if health["broker_transport"] != want {
                bail!(
                    "{} reaches the broker by {}, not {want}",
                    a.name,
                    health["broker_transport"]
                );
            }
            let log = std::fs::read_to_string(a.dir.join("agent.log"))?;
            let fell_back = log.contains("QUIC to the broker failed; using TCP");
            if fell_back != (self.link == AgentLink::AutoFallback) {
                bail!(
                    "{}: fallback warning {} in its log\n{}",
                    a.name,
                    if fell_back { "found" } else { "missing" },
                    a.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The broker's address.
    pub fn broker_addr(&self) -> Result<SocketAddr> {
        Ok(self
            .broker
            .as_ref()
            .ok_or_else(|| anyhow!("the broker stopped"))?
            .addr)
    }

    /// The uitstroom team most scenarios start from: the gemeente opens a case with the
    /// corporation and the care provider, both register it, and the care provider records
    /// the client's consent (`document`) for the three roles. Returns the case and the
    /// consent id.
    pub async fn uitstroom_team(&self, document: &str) -> Result<(String, String)> {
        let (gem, corp, zorg) = (
            self.agent("gemeente")?,
            self.agent("woningcorporatie")?,
            self.agent("zorgaanbieder")?,
        );
        let case = gem.open_case("uitstroom", &[&corp.oin, &zorg.oin]).await?;
        zorg.register_case_from(gem, &case).await?;
        corp.register_case_from(gem, &case).await?;
        let consent = zorg
            .grant_consent(
                &case,
                &["gemeente", "woningcorporatie", "zorgaanbieder"],
                document,
            )
            .await?;
        Ok((case, consent))
    }

    /// The running agent of the party with `role`.
    pub fn agent(&self, role: &str) -> Result<&AgentProcess> {
        self.agents
            .iter()
            .find(|a| a.roles.iter().any(|r| r.as_str() == role))
            .ok_or_else(|| anyhow!("no agent with role '{role}' was started"))
    }

    /// The OIN of the first party with `role` (whether or not its agent runs).
    pub fn oin(&self, role: &str) -> Result<Oin> {
        let i = party_with_role(&self.fed, role)?;
        Ok(self.fed.files.parties[i].oin.clone())
    }

    /// Stop the agents (SIGTERM) and the broker (SIGTERM, clean exit), then verify and read
    /// the broker's audit trail.
    pub fn finish(mut self) -> Result<AuditLog> {
        self.stop()?;
        AuditLog::read(&self.fed, &self.data)
    }

    /// Stop the agents and the broker (as [`Region::finish`]) but keep the federation and
    /// the data directories, e.g. to run `ketenpost-broker audit` on them.
    pub fn stop(&mut self) -> Result<()> {
        for a in std::mem::take(&mut self.agents) {
            a.terminate()?;
        }
        if let Some(b) = self.broker.take() {
            let status = b.terminate()?;
            if !status.success() {
                bail!("the broker exited with {status}");
            }
        }
        Ok(())
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

fn party_with_role(fed: &Fed, role: &str) -> Result<usize> {
    fed.files
        .parties
        .iter()
        .position(|p| p.roles.iter().any(|r| r.as_str() == role))
        .ok_or_else(|| anyhow!("no party with role '{role}' in the federation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_address_is_found_in_json_and_text_logs() {
        let json = r#"{"timestamp":"t","level":"INFO","fields":{"message":"agent running","api_addr":"127.0.0.1:4321","oin":"x"},"target":"ketenpost_agent::agent"}"#;
        assert_eq!(api_addr_in(json), "127.0.0.1:4321".parse().ok());
        let other = r#"{"fields":{"message":"case opened","api_addr":"127.0.0.1:1"}}"#;
        assert_eq!(api_addr_in(other), None);
        let text = "2025-01-01T00:00:00Z  INFO ketenpost_agent::agent: agent running api_addr=127.0.0.1:99 oin=1";
        assert_eq!(api_addr_in(text), "127.0.0.1:99".parse().ok());
    }
}
