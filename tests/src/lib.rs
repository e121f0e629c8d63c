//! Harness for the end-to-end tests: a dev federation in a temporary directory, the broker
//! as a real process on a loopback port, and parties that connect to it over QUIC (or, with
//! `--tcp`, over TLS on TCP).
//!
//! Every wait is bounded in time; processes are killed when their handle drops.
#![forbid(unsafe_code)]

pub mod agents;
pub mod demo;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use ketenpost_certs::InitOptions;
use ketenpost_schemas::control::{CaseChange, CaseOp, Record, SignedRecord, Toestemming};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::{Request, Response};
use ketenpost_schemas::seal::{seal, Draft, Sender};
use ketenpost_transport::client::Client;
use ketenpost_transport::tls::ClientTls;

/// How long any single request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of a workspace binary, built on demand when a test runs alone.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot find the target directory"))?;
    let path = profile_dir.join(name);
    if !path.exists() {
        let package = match name {
            "ketenpost-broker" => "ketenpost-broker",
            "ketenpost-agent" => "ketenpost-agent",
            "ketenpost-certs" => "ketenpost-certs",
            other => bail!("unknown binary {other}"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .context("cargo build")?;
        if !status.success() || !path.exists() {
            bail!("could not build {name}");
        }
    }
    Ok(path)
}

/// A dev federation in a temporary directory.
#[allow(missing_debug_implementations)]
pub struct Fed {
    dir: tempfile::TempDir,
    /// The federation's files.
    pub files: ketenpost_certs::Federation,
    /// Its policy.
    pub policy: Policy,
    /// Its directory.
    pub directory: Directory,
}

impl Fed {
    /// A federation from a policy text and an optional roster text.
    pub fn new(policy: &str, roster: Option<&str>) -> Result<Fed> {
        Fed::with_files(policy, roster, &[])
    }

    /// [`Fed::new`] with files beside the policy (relative path, content), such as the
    /// schema files its kinds name.
    pub fn with_files(policy: &str, roster: Option<&str>, files: &[(&str, &str)]) -> Result<Fed> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("policy.toml"), policy)?;
        for (path, content) in files {
            let path = dir.path().join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, content)?;
        }
        let mut opts = InitOptions::new(dir.path().join("policy.toml"), dir.path().join("fed"));
        if let Some(r) = roster {
            std::fs::write(dir.path().join("roster.toml"), r)?;
            opts.roster = Some(dir.path().join("roster.toml"));
        }
        let files = ketenpost_certs::init(&opts)?;
        let policy = files.load_policy()?;
        let directory = files.load_directory(&policy)?;
        Ok(Fed {
            dir,
            files,
            policy,
            directory,
        })
    }

    /// A fresh folder inside the federation's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Seal a draft as a party.
    pub fn seal(&self, from: &PartyKeys, draft: Draft) -> Result<Vec<u8>> {
        let (env, _) = seal(
            draft,
            Sender {
                oin: &from.oin,
                key: &from.key,
            },
            &self.policy,
            &self.directory,
            Utc::now(),
        )?;
        Ok(env.encode())
    }

    /// The keys of party `i` (roster order).
    pub fn keys(&self, i: usize) -> Result<PartyKeys> {
        let p = self
            .files
            .parties
            .get(i)
            .ok_or_else(|| anyhow!("no party {i}"))?;
        Ok(PartyKeys {
            oin: p.oin.clone(),
            key: keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key)?)?,
            age: keys::age_identity_from_text(&std::fs::read_to_string(&p.age_key)?)?,
            tls: ClientTls {
                ca: self.files.ca.cert.clone(),
                cert: p.cert.clone(),
                key: p.key.clone(),
            },
        })
    }
}

/// What a party signs, decrypts and connects with.
#[allow(missing_debug_implementations)]
#[derive(Clone)]
pub struct PartyKeys {
    /// Its OIN.
    pub oin: Oin,
    /// Its signing key.
    pub key: SigningKey,
    /// Its age identity.
    pub age: age::x25519::Identity,
    /// Its TLS files.
    pub tls: ClientTls,
}

impl PartyKeys {
    /// Connect to a broker and check the connection with one request.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Client> {
        let c = Client::connect(addr, "localhost", &self.tls).await?;
        c.request(&Request::GetCheckpoint, REQUEST_TIMEOUT).await?;
        Ok(c)
    }

    /// Sign and send a control record.
    pub async fn control<R: Record>(&self, client: &Client, r: &R) -> Result<Response> {
        let rec = SignedRecord::sign(r, self.oin.clone(), &self.key)?;
        Ok(client
            .request(&Request::Control(rec), REQUEST_TIMEOUT)
            .await?)
    }
}

/// The test covenant's three parties (default roster: gemeente, woningcorporatie,
/// zorgaanbieder) connected to a broker, with a case the gemeente opened and the
/// zorgaanbieder's consent for all three roles ([`Trio::CONSENT_ROLES`]).
#[allow(missing_debug_implementations)]
pub struct Trio {
    /// The gemeente's keys and its connection.
    pub gem: PartyKeys,
    /// The woningcorporatie's keys.
    pub corp: PartyKeys,
    /// The zorgaanbieder's keys.
    pub zorg: PartyKeys,
    /// The gemeente's connection.
    pub gc: Client,
    /// The woningcorporatie's connection.
    pub cc: Client,
    /// The zorgaanbieder's connection.
    pub zc: Client,
    /// The case.
    pub case: CaseRef,
    /// The consent.
    pub consent: uuid::Uuid,
}

impl Trio {
    /// The roles the zorgaanbieder's consent names: every role of the case team.
    pub const CONSENT_ROLES: &'static [&'static str] =
        &["gemeente", "zorgaanbieder", "woningcorporatie"];

    /// Connect the three parties of `fed` to the broker at `addr` and set up the case.
    pub async fn start(fed: &Fed, addr: SocketAddr) -> Result<Trio> {
        let (gem, corp, zorg) = (fed.keys(0)?, fed.keys(1)?, fed.keys(2)?);
        let (gc, cc, zc) = (
            gem.connect(addr).await?,
            corp.connect(addr).await?,
            zorg.connect(addr).await?,
        );
        let (case, consent) = case_with_consent(
            "test",
            "uitstroom",
            (&gem, &gc, "gemeente"),
            &[
                (&zorg.oin, "zorgaanbieder"),
                (&corp.oin, "woningcorporatie"),
            ],
            (&zorg, &zc),
            Trio::CONSENT_ROLES,
        )
        .await?;
        Ok(Trio {
            gem,
            corp,
            zorg,
            gc,
            cc,
            zc,
            case,
            consent,
        })
    }

    /// The corporation's signal to the care provider in the case, sealed.
    pub fn signal(&self, fed: &Fed) -> Result<Vec<u8>> {
        fed.seal(
            &self.corp,
            signaal(
                &self.case,
                self.consent,
                &[(&self.zorg.oin, "zorgaanbieder")],
            )?,
        )
    }
}

/// Open a case as `manager` (with `role`) and add `members`; register a consent by
/// `recorder` covering `roles`. Returns the case and the consent id.
pub async fn case_with_consent(
    covenant: &str,
    purpose: &str,
    manager: (&PartyKeys, &Client, &str),
    members: &[(&Oin, &str)],
    recorder: (&PartyKeys, &Client),
    roles: &[&str],
) -> Result<(CaseRef, uuid::Uuid)> {
    let case = CaseRef::random();
    let (m, mc, mrole) = manager;
    let change = |op| CaseChange {
        case_ref: case.clone(),
        covenant: covenant.into(),
        purpose: purpose.into(),
        change: op,
        by: m.oin.clone(),
        at: Utc::now(),
    };
    expect_done(
        m.control(
            mc,
            &change(CaseOp::Open {
                role: Role::new(mrole),
            }),
        )
        .await?,
    )?;
    for (oin, role) in members {
        expect_done(
            m.control(
                mc,
                &change(CaseOp::AddMember {
                    oin: (*oin).clone(),
                    role: Role::new(*role),
                }),
            )
            .await?,
        )?;
    }
    let consent = uuid::Uuid::now_v7();
    let (r, rc) = recorder;
    let t = Toestemming {
        consent_id: consent,
        covenant: covenant.into(),
        purpose: purpose.into(),
        case_ref: case.clone(),
        parties: vec![],
        roles: roles.iter().map(|r| Role::new(*r)).collect(),
        valid_from: Utc::now() - chrono::Duration::minutes(1),
        valid_until: None,
        document_sha256: "ab".repeat(32),
        obtained_by: r.oin.clone(),
        obtained_at: Utc::now(),
    };
    expect_done(r.control(rc, &t).await?)?;
    Ok((case, consent))
}

fn expect_done(r: Response) -> Result<()> {
    match r {
        Response::Done => Ok(()),
        other => bail!("expected done, got {other:?}"),
    }
}

/// Fetch everything queued for `p`, open (verify and decrypt) each message and receipt
/// it, until the queue is empty; how often each message id came.
pub async fn drain(
    fed: &Fed,
    p: &PartyKeys,
    c: &Client,
) -> Result<std::collections::BTreeMap<ketenpost_schemas::ids::MessageId, usize>> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10_000 {
        let Response::Deliveries(items) = c
            .request(
                &Request::Fetch {
                    max: 256,
                    wait_ms: 0,
                    skip: Vec::new(),
                },
                REQUEST_TIMEOUT,
            )
            .await?
        else {
            bail!("a fetch was not answered with deliveries");
        };
        if items.is_empty() {
            return Ok(seen);
        }
        for item in items {
            let Some((id, rec)) = receipt_for(fed, p, &item, &p.key)? else {
                continue;
            };
            *seen.entry(id).or_default() += 1;
            match c.request(&Request::Receipt(rec), REQUEST_TIMEOUT).await? {
                Response::Done => {}
                other => bail!("a receipt was answered {other:?}"),
            }
        }
    }
    bail!("the queue did not empty")
}

/// For a message delivered to `p`: open it (verify and decrypt) and make its delivery
/// receipt, signed as `p` with `key` (`p.key`, or another to forge one); its id and the
/// receipt. `None` for a notice.
pub fn receipt_for(
    fed: &Fed,
    p: &PartyKeys,
    item: &ketenpost_schemas::protocol::Delivery,
    key: &SigningKey,
) -> Result<Option<(ketenpost_schemas::ids::MessageId, SignedRecord)>> {
    use ketenpost_schemas::envelope::{Envelope, Limits};
    use ketenpost_schemas::protocol::{envelope_from_b64, Delivery};
    let Delivery::Message { envelope, .. } = item else {
        return Ok(None);
    };
    let env = Envelope::decode(&envelope_from_b64(envelope)?, &Limits::default())?;
    let v = env.verify_delivery(&Limits::default(), &p.oin, |o| {
        fed.directory
            .active_party(o)
            .and_then(|p| p.verifying_key().ok())
    })?;
    let opened = ketenpost_schemas::seal::open(&v, &p.oin, &p.age, &fed.policy)?;
    let receipt = ketenpost_schemas::control::DeliveryReceipt {
        message_id: opened.header.id,
        recipient: p.oin.clone(),
        body_sha256: opened.body_sha256.clone(),
        received_at: Utc::now(),
    };
    let rec = SignedRecord::sign(&receipt, p.oin.clone(), key)?;
    Ok(Some((opened.header.id, rec)))
}

/// A plain HTTP/1.1 GET (metrics and health endpoints); the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head in the answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status in the answer"))?
        .parse()?;
    // The bodies here are small: axum sends them with a content-length, not chunked.
    Ok((status, body.to_owned()))
}

impl BrokerProcess {
    /// The directory serial the broker has in force, from its metrics (started with
    /// `--metrics`).
    pub fn documents_serial(&self) -> Result<u64> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("the broker was started without --metrics"))?;
        let (_, body) = http_get(addr, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("ketenpost_broker_documents_serial "))
            .ok_or_else(|| anyhow!("no documents serial in the metrics"))?
            .trim()
            .parse()
            .map_err(Into::into)
    }

    /// One sample of the broker's metrics (started with `--metrics`); `None` when absent.
    pub fn metric(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.metrics_of(&[name])?[0])
    }

    /// Samples of the broker's metrics, all from one scrape; `None` where absent.
    pub fn metrics_of(&self, names: &[&str]) -> Result<Vec<Option<u64>>> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("the broker was started without --metrics"))?;
        let (_, body) = http_get(addr, "/metrics")?;
        names
            .iter()
            .map(|name| {
                let prefix = format!("{name} ");
                body.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map(|v| v.trim().parse().map_err(Into::into))
                    .transpose()
            })
            .collect()
    }

    /// Wait (at most `limit`) until two passes of the alert dispatcher in a row have
    /// ended with no alert pending and the second sent nothing: every alert staged was
    /// accepted and recorded, and a whole pass after that found nothing to send again. A
    /// copy sent twice would have arrived by then.
    pub fn wait_alerts_settled(&self, limit: Duration) -> Result<()> {
        let until = std::time::Instant::now() + limit;
        // The pass and the sent count at the first quiet scrape.
        let mut quiet_at: Option<(u64, u64)> = None;
        loop {
            let m = self.metrics_of(&[
                "ketenpost_broker_alert_passes_total",
                "ketenpost_broker_alerts_pending",
                "ketenpost_broker_alerts_sent_total",
            ])?;
            let (passes, pending, sent) = (m[0].unwrap_or(0), m[1], m[2].unwrap_or(0));
            match (pending, quiet_at) {
                (Some(0), Some((p, s))) if passes > p && sent == s => return Ok(()),
                (Some(0), Some((_, s))) if sent == s => {}
                (Some(0), _) => quiet_at = Some((passes, sent)),
                _ => quiet_at = None,
            }
            if std::time::Instant::now() >= until {
                bail!("alerts still pending ({pending:?}) after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (at most `limit`) until the broker has directory serial `serial` in force.
    pub fn wait_for_serial(&self, serial: u64, limit: Duration) -> Result<()> {
        let until = std::time::Instant::now() + limit;
        loop {
            let now = self.documents_serial()?;
            if now == serial {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                bail!("the broker has serial {now} in force, not {serial}, after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The broker as a child process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its metrics and health endpoints, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// The backups it said it wrote (`backup written to DIR` on stdout).
    backups: mpsc::Receiver<PathBuf>,
    /// The address of its TLS-over-TCP listener, when started with `--tcp`.
    pub tcp: Option<SocketAddr>,
}

impl BrokerProcess {
    /// Start `ketenpost-broker serve --federation` on `listen` (port 0 for any) with its
    /// data in `data`; wait (at most 30 s) until it says where it listens.
    pub fn start(fed: &Fed, data: &Path, listen: SocketAddr) -> Result<BrokerProcess> {
        BrokerProcess::start_with(fed, data, listen, &[], &[])
    }

    /// [`BrokerProcess::start`] with extra `serve` arguments and environment variables
    /// (the crash tests' `KETENPOST_FAILPOINT` and test clock).
    pub fn start_with(
        fed: &Fed,
        data: &Path,
        listen: SocketAddr,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<BrokerProcess> {
        let mut cmd = Command::new(binary("ketenpost-broker")?);
        cmd.arg("serve")
            .arg("--federation")
            .arg(&fed.files.dir)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(listen.to_string())
            .args(args)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn broker")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log_w = log.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log_w.lock() {
                    if l.len() < 200 {
                        l.push(line);
                    }
                }
            }
        });
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        let (backup_tx, backups) = mpsc::channel();
        let metrics = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let metrics_w = metrics.clone();
        let tcp = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let tcp_w = tcp.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("metrics on ") {
                    if let (Ok(mut m), Ok(addr)) = (metrics_w.lock(), a.trim().parse()) {
                        *m = Some(addr);
                    }
                }
                if let Some(a) = line.strip_prefix("tcp on ") {
                    if let (Ok(mut t), Ok(addr)) = (tcp_w.lock(), a.trim().parse()) {
                        *t = Some(addr);
                    }
                }
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_owned());
                }
                if let Some(d) = line.strip_prefix("backup written to ") {
                    let _ = backup_tx.send(PathBuf::from(d.trim()));
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse()?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Its stderr is closed now: the reader passes on the last lines and ends.
                let _ = stderr_reader.join();
                let said = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!(
                    "the broker did not start within 30 s (a stale binary? run `cargo test \
                     --workspace`, which rebuilds it); it said:\n{said}"
                );
            }
        };
        // "metrics on" and "tcp on" are printed before "listening on".
        let metrics = metrics.lock().ok().and_then(|m| *m);
        let tcp = tcp.lock().ok().and_then(|t| *t);
        Ok(BrokerProcess {
            child,
            addr,
            metrics,
            backups,
            tcp,
        })
    }

    /// Wait (at most `limit`) for the process to end by itself; its status, or `None` when
    /// it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final flush.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Ask for an online backup (SIGUSR1; the broker needs `--backup-dir`) and wait (at
    /// most `limit`) until it says where it wrote it.
    pub fn backup(&self, limit: Duration) -> Result<PathBuf> {
        Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()?;
        self.backups
            .recv_timeout(limit)
            .map_err(|_| anyhow!("no backup written within {limit:?}"))
    }

    /// SIGTERM and wait (at most 15 s) for a clean exit.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        bail!("the broker did not stop within 15 s of SIGTERM")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A draft of the test covenant's signaal from a corporation.
pub fn signaal(case: &CaseRef, consent: uuid::Uuid, to: &[(&Oin, &str)]) -> Result<Draft> {
    let mut d = Draft::new(
        "uitstroom",
        ketenpost_schemas::kind::Kind::Signaal,
        case.clone(),
        to.iter()
            .map(|(o, r)| ((*o).clone(), Role::new(*r)))
            .collect(),
        ketenpost_schemas::envelope::LegalBasis::Consent {
            consent_id: consent,
        },
        serde_json::to_value(ketenpost_schemas::payload::Signaal::example())?,
    );
    d.event_time = Some(Utc::now() - chrono::Duration::hours(1));
    Ok(d)
}

/// Whether any file in `dir` (not its subdirectories) holds `needle`: a body or a record
/// that must be gone from a data directory.
pub fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        std::fs::read(e.path())
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}
