//! `ketenpost-broker`: serve a covenant region, verify its audit trail, or give its FGs
//! their reports (`audit flows`, `audit breaches`, `audit access`, `audit html`, ...).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};
use ketenpost_broker::audit;
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::fg::{
    merge_agent_records, read_agent_trail, render, FgError, Query, ReportKind, Session,
};
use ketenpost_broker::server::Broker;
use ketenpost_schemas::keys;
use ketenpost_schemas::protocol::{FgQuery, Request, Response};

/// glibc's malloc spent about a quarter of the broker's CPU under load (its
/// arenas consolidating the many small allocations of sled and the checks); mimalloc does
/// the same work for a fraction of it (BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code after a failed fsync poisoned the store (EX_IOERR).
const EXIT_STORAGE: u8 = 74;
/// Exit code for a usage or configuration error (EX_USAGE / EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "ketenpost-broker",
    version,
    about = "The ketenpost broker of one covenant region"
)]
struct Cli {
    /// Log as JSON lines instead of text. The filter comes from RUST_LOG (default: info).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at start; boxing the large `Serve` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve: accept partner connections until SIGINT or SIGTERM.
    Serve {
        /// The broker's TOML configuration.
        #[arg(long, conflicts_with = "federation")]
        config: Option<PathBuf>,
        /// Serve a dev federation made by `ketenpost-certs init` instead of a config file.
        #[arg(long, requires = "data")]
        federation: Option<PathBuf>,
        /// With --federation: where to keep the broker's data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// With --federation: the UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// With --federation: how often expiry, deadlines and retention are swept (1-3600 s).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        sweep_interval_secs: Option<u64>,
        /// With --federation: how often the audit trail is checkpointed (1-60 s).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60))]
        checkpoint_interval_secs: Option<u64>,
        /// With --federation: how often the policy, directory and CRL are re-read (1-3600 s).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        documents_reload_secs: Option<u64>,
        /// With --federation: also accept partner certificates from this external CA (PEM
        /// root, e.g. PKIoverheid); repeatable. Give its CRL with --crl.
        #[arg(long, value_name = "FILE")]
        partner_ca: Vec<PathBuf>,
        /// With --federation: an extra CRL (PEM or DER), e.g. an external CA's; repeatable.
        #[arg(long, value_name = "FILE")]
        crl: Vec<PathBuf>,
        /// Send FG alerts to a webhook: `federation=URL` (every alert) or `OIN=URL` (alerts
        /// about that party); repeatable, added to `[[alerts.webhook]]`.
        #[arg(long, value_name = "FOR=URL")]
        alert_webhook: Vec<String>,
        /// Mail FG alerts: `federation=ADDRESS` or `OIN=ADDRESS`; repeatable, added to
        /// `[[alerts.email]]`; needs an SMTP relay (`--smtp-relay` or `[alerts.smtp]`).
        #[arg(long, value_name = "FOR=ADDRESS")]
        alert_email: Vec<String>,
        /// The SMTP relay for e-mail alerts, `host[:port]` (sets `[alerts.smtp] relay`).
        #[arg(long, value_name = "HOST[:PORT]", requires = "smtp_from")]
        smtp_relay: Option<String>,
        /// The relay's transport security: starttls (default), tls, or none (loopback only).
        #[arg(
            long,
            value_name = "MODE",
            default_value = "starttls",
            requires = "smtp_relay"
        )]
        smtp_security: String,
        /// The sender address of alert mails.
        #[arg(long, value_name = "ADDRESS", requires = "smtp_relay")]
        smtp_from: Option<String>,
        /// Where SIGUSR1 writes an online backup (a new folder per backup, named by the
        /// time; overrides `[backup] dir`).
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<PathBuf>,
        /// Serve Prometheus /metrics, /healthz and /readyz on this TCP address (plain HTTP;
        /// overrides `[metrics] listen`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Also serve the protocol over TLS 1.3 on this TCP address, for partners whose
        /// network blocks UDP (overrides `[tcp] listen`).
        #[arg(long, value_name = "ADDR")]
        tcp: Option<SocketAddr>,
    },
    /// Rehearse deadlines and retention: run the broker's sweep at a later time on a
    /// scratch copy of an online backup, and print what it would do (expiries, deadline
    /// notices, deletion orders). The backup is not changed; nothing is sent.
    Rehearse {
        /// The backup folder (holds BACKUP.json).
        #[arg(long, value_name = "DIR")]
        backup: PathBuf,
        /// The broker's configuration (for the federation files).
        #[arg(long, conflicts_with = "federation")]
        config: Option<PathBuf>,
        /// A dev federation made by `ketenpost-certs init`, instead of --config.
        #[arg(long)]
        federation: Option<PathBuf>,
        /// When the drill stands: RFC 3339, or a date (00:00 Amsterdam time).
        #[arg(long)]
        at: String,
        /// text (default) or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Restore an online backup (made on SIGUSR1) into a new, empty data directory; then
    /// start the broker on it. Check it first with `audit verify`.
    Restore {
        /// The backup folder (holds BACKUP.json).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The new data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Print the optional features this binary was built with (the crash tests check
    /// for `failpoints`).
    #[command(hide = true)]
    Features,
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole hash chain and every signed checkpoint; name the first broken record.
    Verify {
        /// The broker's data directory (the one with broker.sled in it).
        data_dir: PathBuf,
        /// The broker's public checkpoint key (base64), or its signing key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Flows between parties per purpose and kind: accepted, refused, late, non-consent.
    Flows(Box<FgArgs>),
    /// Refusals by reason code and party.
    Refusals(Box<FgArgs>),
    /// Every message sent on a non-consent ground, each to be reviewed.
    Grounds(Box<FgArgs>),
    /// Late arrivals, overdue answers (with who was notified) and late answers.
    Deadlines(Box<FgArgs>),
    /// Breach notices: cases, recipients, receipts; open, notified on time or late.
    Breaches(Box<FgArgs>),
    /// Consents granted and withdrawn.
    Consents(Box<FgArgs>),
    /// Deletion orders per party, and who has not confirmed.
    Deletions(Box<FgArgs>),
    /// The data subject's access report for one case (needs --case).
    Access(Box<FgArgs>),
    /// Data subjects' requests: access requests, ad-hoc deletion orders by reason and
    /// corrections, each with its state, term and whether it is late.
    Requests(Box<FgArgs>),
    /// The filtered records themselves: --format jsonl (Logboek Dataverwerkingen), csv or text.
    Records(Box<FgArgs>),
    /// A self-contained HTML report with a graph of the flows and every table (--out FILE).
    Html(Box<FgArgs>),
}

/// What every FG report takes. Live: `--broker ADDR` with an FG certificate; the broker
/// scopes the report to that FG. Offline (forensic): a stopped broker's data directory or a
/// backup, with `--as OIN` or `--federation-fg` choosing the scope.
#[derive(clap::Args, Debug)]
struct FgArgs {
    /// The broker's TOML configuration (for its data directory and the federation files).
    #[arg(long, conflicts_with = "federation")]
    config: Option<PathBuf>,
    /// A dev federation made by `ketenpost-certs init`, instead of --config.
    #[arg(long)]
    federation: Option<PathBuf>,
    /// With --federation: the broker's data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Read as the FG of this organisation: only flows that involve it.
    #[arg(long = "as", value_name = "OIN")]
    as_oin: Option<String>,
    /// Read as the federation's FG: every flow.
    #[arg(long)]
    federation_fg: bool,
    /// Only records at or after this time (RFC 3339, or a date: 00:00 Amsterdam time).
    #[arg(long)]
    from: Option<String>,
    /// Only records before this time (RFC 3339, or a date: 00:00 Amsterdam time).
    #[arg(long)]
    until: Option<String>,
    /// Only records with this party (OIN) as actor or counterparty.
    #[arg(long)]
    party: Option<String>,
    /// Only records about this case reference.
    #[arg(long)]
    case: Option<String>,
    /// Only records for this purpose id or processing activity.
    #[arg(long)]
    purpose: Option<String>,
    /// Only records about this message kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only records with this outcome: ok, refused or flagged.
    #[arg(long)]
    outcome: Option<String>,
    /// text, json or csv; records also jsonl; html for the HTML report.
    #[arg(long)]
    format: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Read a running broker at this address (QUIC) with an FG certificate, instead of a
    /// stopped broker's data directory.
    #[arg(long, value_name = "ADDR")]
    broker: Option<SocketAddr>,
    /// With --broker: the FG's certificate (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,
    /// With --broker: the FG's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// With --broker: the federation CA the broker's certificate chains to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --broker: the name on the broker's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// An agent's exported audit trail (`ketenpost-agent audit export`), repeatable. Its
    /// hash chain is verified (live: by the broker); its early refusals and refused
    /// deliveries are added to the report, for an organisation's FG only its own.
    #[arg(long, value_name = "FILE")]
    agent_trail: Vec<PathBuf>,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Serve {
            config,
            federation,
            data,
            listen,
            sweep_interval_secs,
            checkpoint_interval_secs,
            documents_reload_secs,
            partner_ca,
            crl,
            backup_dir,
            alert_webhook,
            alert_email,
            smtp_relay,
            smtp_security,
            smtp_from,
            metrics,
            tcp,
        } => {
            let config = match (config, federation, data) {
                (Some(path), _, _) => match BrokerConfig::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("ketenpost-broker: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (None, Some(fed), Some(data)) => match ketenpost_certs::Federation::load(&fed) {
                    Ok(f) => {
                        let mut c = BrokerConfig::for_federation(&f, data, listen);
                        if let Some(s) = sweep_interval_secs {
                            c.timers.sweep_interval_secs = s;
                        }
                        if let Some(s) = checkpoint_interval_secs {
                            c.timers.checkpoint_interval_secs = s;
                        }
                        if let Some(s) = documents_reload_secs {
                            c.timers.documents_reload_secs = s;
                        }
                        c.tls.partner_cas.extend(partner_ca);
                        c.tls.crls.extend(crl);
                        c
                    }
                    Err(e) => {
                        eprintln!("ketenpost-broker: federation {}: {e}", fed.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                _ => {
                    eprintln!("ketenpost-broker: serve needs --config FILE, or --federation DIR --data DIR");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mut config = config;
            if metrics.is_some() {
                config.metrics.listen = metrics;
            }
            if backup_dir.is_some() {
                config.backup.dir = backup_dir;
            }
            if tcp.is_some() {
                config.tcp.listen = tcp;
            }
            let receivers = alert_webhook
                .iter()
                .map(|a| ("--alert-webhook", "FOR=URL", a))
                .chain(
                    alert_email
                        .iter()
                        .map(|a| ("--alert-email", "FOR=ADDRESS", a)),
                );
            for (flag, shape, arg) in receivers {
                let Some((for_, to)) = arg.split_once('=') else {
                    eprintln!("ketenpost-broker: {flag} wants {shape}, got '{arg}'");
                    return ExitCode::from(EXIT_CONFIG);
                };
                let (for_, to) = (for_.to_owned(), to.to_owned());
                if flag == "--alert-webhook" {
                    let hook = ketenpost_broker::config::WebhookConfig { for_, url: to };
                    config.alerts.webhook.push(hook);
                } else {
                    let mail = ketenpost_broker::config::EmailConfig { for_, to };
                    config.alerts.email.push(mail);
                }
            }
            if let (Some(relay), Some(from)) = (smtp_relay, smtp_from) {
                use ketenpost_broker::config::{SmtpConfig, SmtpSecurity};
                let security = match smtp_security.as_str() {
                    "starttls" => SmtpSecurity::Starttls,
                    "tls" => SmtpSecurity::Tls,
                    "none" => SmtpSecurity::None,
                    other => {
                        eprintln!(
                            "ketenpost-broker: --smtp-security is starttls, tls or none, not '{other}'"
                        );
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                config.alerts.smtp = Some(SmtpConfig {
                    relay,
                    security,
                    from,
                    ca: None,
                    username: None,
                    password_file: None,
                });
            }
            if let Err(e) = config.check() {
                eprintln!("ketenpost-broker: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            serve(config)
        }
        Command::Rehearse {
            backup,
            config,
            federation,
            at,
            format,
        } => rehearse(&backup, config, federation, &at, &format),
        Command::Restore { from, data } => match ketenpost_broker::store::restore(&from, &data) {
            Ok(m) => {
                println!(
                    "restored the backup of {} into {}: {} messages, audit trail up to record {}",
                    m.taken_at.to_rfc3339(),
                    data.display(),
                    m.messages,
                    m.audit_seq
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ketenpost-broker: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Features => {
            if ketenpost_broker::failpoint::ENABLED {
                println!("failpoints");
            }
            ExitCode::SUCCESS
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir, key },
        } => verify(data_dir, key),
        Command::Audit { command } => {
            let (kind, args) = match command {
                AuditCommand::Flows(a) => (ReportKind::Flows, a),
                AuditCommand::Refusals(a) => (ReportKind::Refusals, a),
                AuditCommand::Grounds(a) => (ReportKind::Grounds, a),
                AuditCommand::Deadlines(a) => (ReportKind::Deadlines, a),
                AuditCommand::Breaches(a) => (ReportKind::Breaches, a),
                AuditCommand::Consents(a) => (ReportKind::Consents, a),
                AuditCommand::Deletions(a) => (ReportKind::Deletions, a),
                AuditCommand::Access(a) => (ReportKind::Access, a),
                AuditCommand::Requests(a) => (ReportKind::Requests, a),
                AuditCommand::Records(a) => (ReportKind::Records, a),
                AuditCommand::Html(a) => (ReportKind::Html, a),
                AuditCommand::Verify { .. } => return ExitCode::from(EXIT_CONFIG),
            };
            match fg_report(kind, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ketenpost-broker: {e}");
                    if e.is_usage() {
                        ExitCode::from(EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

fn fg_report(kind: ReportKind, a: Box<FgArgs>) -> Result<(), FgError> {
    let query = FgQuery {
        report: kind.name().to_owned(),
        format: a.format.clone(),
        from: a.from.clone(),
        until: a.until.clone(),
        party: a.party.clone(),
        case_ref: a.case.clone(),
        purpose: a.purpose.clone(),
        kind: a.kind.clone(),
        outcome: a.outcome.clone(),
        agent_trails: Vec::new(),
    };
    // Checked here too, so a typo fails before anything is read or recorded.
    let parsed = Query::parse(&query)?;
    let text = match a.broker {
        Some(addr) => live_report(addr, &a, &query)?,
        None => offline_report(&a, &parsed)?,
    };
    match &a.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| FgError::Config(format!("cannot write {}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// A report of a stopped broker's data directory (or a backup): recorded as an offline
/// read; `--as` or `--federation-fg` only choose the scope.
fn offline_report(a: &FgArgs, query: &Query) -> Result<String, FgError> {
    let config = match (&a.config, &a.federation, &a.data) {
        (Some(path), _, _) => {
            BrokerConfig::load(path).map_err(|e| FgError::Config(e.to_string()))?
        }
        (None, Some(fed), Some(data)) => {
            let f = ketenpost_certs::Federation::load(fed)
                .map_err(|e| FgError::Config(format!("federation {}: {e}", fed.display())))?;
            BrokerConfig::for_federation(&f, data.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
        }
        _ => {
            return Err(FgError::Usage(
                "an offline report needs --config FILE, or --federation DIR --data DIR; a live \
                 one --broker ADDR"
                    .into(),
            ))
        }
    };
    let session = Session::open(&config)?;
    let viewer = session.viewer(a.as_oin.as_deref(), a.federation_fg)?;
    // Read (and verify) every agent trail before the read is recorded.
    let mut agent = Vec::new();
    for file in &a.agent_trail {
        agent.extend(read_agent_trail(file)?);
    }
    let now = Utc::now();
    let records = session.read_query(&viewer, query, now)?;
    let records = merge_agent_records(records, agent, &viewer, &query.filter);
    let head = session.head();
    render(
        query.kind,
        query.format,
        &records,
        &viewer,
        &query.filter,
        session.context(&head),
        now,
    )
}

/// A report of a running broker, read with an FG certificate: `--tls-cert`, `--tls-key`
/// and `--ca`, or with `--federation DIR` the FG credential of `--as OIN` (or of the
/// federation's FG with `--federation-fg`) from a dev federation.
fn live_report(addr: SocketAddr, a: &FgArgs, query: &FgQuery) -> Result<String, FgError> {
    let tls =
        match (&a.tls_cert, &a.tls_key, &a.ca, &a.federation) {
            (Some(cert), Some(key), Some(ca), _) => ketenpost_transport::tls::ClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, None, Some(fed)) => {
                let f = ketenpost_certs::Federation::load(fed)
                    .map_err(|e| FgError::Config(format!("federation {}: {e}", fed.display())))?;
                let cred = match (a.as_oin.as_deref(), a.federation_fg) {
                    (Some(o), false) => {
                        let oin = o.parse().map_err(|_| {
                            FgError::Usage(format!("'{o}' is not an OIN (20 digits)"))
                        })?;
                        f.fg(&oin, ketenpost_schemas::directory::FgScope::Organisation)
                    }
                    (None, true) => f.federation_fg(),
                    _ => {
                        return Err(FgError::Usage(
                            "say whose FG credential to use: --as <OIN> or --federation-fg".into(),
                        ))
                    }
                }
                .ok_or_else(|| FgError::Usage("the federation has no such FG credential".into()))?;
                ketenpost_transport::tls::ClientTls {
                    ca: f.ca.cert.clone(),
                    cert: cred.cert.clone(),
                    key: cred.key.clone(),
                }
            }
            _ => return Err(FgError::Usage(
                "a live report needs --tls-cert, --tls-key and --ca (the FG's certificate), or \
                 --federation DIR with --as OIN or --federation-fg"
                    .into(),
            )),
        };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FgError::Config(format!("cannot start the runtime: {e}")))?;
    // The agents' trails go along whole; the broker verifies and merges them.
    let mut query = query.clone();
    for file in &a.agent_trail {
        let text = std::fs::read_to_string(file).map_err(|e| FgError::AgentTrail {
            file: file.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        query.agent_trails.push(text);
    }
    runtime.block_on(async {
        let client = ketenpost_transport::client::Client::connect(addr, &a.server_name, &tls)
            .await
            .map_err(|e| FgError::Config(format!("cannot connect to the broker at {addr}: {e}")))?;
        let answer = client
            .request(&Request::FgRead(query), std::time::Duration::from_secs(120))
            .await;
        client.close().await;
        match answer {
            Ok(Response::FgReport(r)) => Ok(r.body),
            Ok(Response::Rejected(r)) => Err(FgError::Usage(format!(
                "the broker refused the report ({}): {}",
                r.code, r.reason
            ))),
            Ok(other) => Err(FgError::Config(format!("unexpected answer: {other:?}"))),
            Err(e) => Err(FgError::Config(format!(
                "the broker did not answer the report (is this an FG certificate the \
                 directory lists?): {e}"
            ))),
        }
    })
}

fn rehearse(
    backup: &std::path::Path,
    config: Option<PathBuf>,
    federation: Option<PathBuf>,
    at: &str,
    format: &str,
) -> ExitCode {
    let fail = |code: u8, e: &dyn std::fmt::Display| {
        eprintln!("ketenpost-broker: {e}");
        ExitCode::from(code)
    };
    let at = match ketenpost_broker::fg::parse_time(at) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    if !matches!(format, "text" | "json") {
        return fail(
            EXIT_CONFIG,
            &format!("unknown format '{format}': text or json"),
        );
    }
    let config = match (config, federation) {
        (Some(path), _) => match BrokerConfig::load(&path) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_CONFIG, &e),
        },
        (None, Some(fed)) => match ketenpost_certs::Federation::load(&fed) {
            Ok(f) => BrokerConfig::for_federation(
                &f,
                backup.to_owned(),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ),
            Err(e) => return fail(EXIT_CONFIG, &e),
        },
        (None, None) => {
            return fail(
                EXIT_CONFIG,
                &"rehearse needs --config FILE or --federation DIR",
            )
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &e),
    };
    let drill = match runtime.block_on(ketenpost_broker::rehearsal::rehearse(config, backup, at)) {
        Ok(d) => d,
        Err(e) => return fail(1, &e),
    };
    if format == "json" {
        let body = serde_json::json!({
            "at": drill.at.to_rfc3339(),
            "counts": drill.counts,
            "records": drill.records,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "Rehearsal at {}: what the broker's sweep would do then.",
        drill.at.to_rfc3339()
    );
    if drill.counts.is_empty() {
        println!("Nothing: no message expires, no answer is overdue, no retention ends.");
    }
    for (event, n) in &drill.counts {
        println!("  {event}: {n}");
    }
    let rows: Vec<Vec<String>> = drill
        .records
        .iter()
        .map(|r| {
            vec![
                r.event.to_string(),
                r.case_ref.clone().unwrap_or_else(|| "-".into()),
                r.kind.clone().unwrap_or_else(|| "-".into()),
                r.actor.clone().unwrap_or_else(|| "-".into()),
                r.counterparties.join(" "),
                r.reason.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print!(
            "{}",
            ketenpost_broker::report::text_table(
                &["event", "case_ref", "kind", "actor", "parties", "reason"],
                &rows
            )
        );
    }
    ExitCode::SUCCESS
}

fn serve(config: BrokerConfig) -> ExitCode {
    let backup_dir_of_config = config.backup.dir.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.limits.blocking_threads)
        .thread_keep_alive(std::time::Duration::from_secs(10))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ketenpost-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let clock = ketenpost_broker::failpoint::test_clock()
            .unwrap_or_else(|| std::sync::Arc::new(ketenpost_core::clock::SystemClock));
        let broker = match Broker::start_with_clock(config, clock).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ketenpost-broker: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        // Tell a supervisor (or a test harness) where we listen.
        if let Some(m) = broker.metrics_addr() {
            println!("metrics on {m}");
        }
        if let Some(t) = broker.tcp_addr() {
            println!("tcp on {t}");
        }
        println!("listening on {}", broker.local_addr());
        // Freed memory goes back to the system within seconds even while the broker is
        // idle, and the allocator's view is logged every minute and at the signal.
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(cause = %e, "cannot start the allocator's purging thread");
        }
        let memory_log = tokio::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                log_memory();
            }
        });
        // SIGHUP: read the policy, directory and CRLs again now, not at the next timer.
        #[cfg(unix)]
        let hangup = {
            let reloader = broker.reloader();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the federation documents");
                    reloader.reload().await;
                }
            })
        };
        // SIGUSR1: an online backup into a new folder under `[backup] dir`.
        #[cfg(unix)]
        let usr1 = {
            let reloader = broker.reloader();
            let dir = backup_dir_of_config.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
                    return;
                };
                while usr1.recv().await.is_some() {
                    let Some(dir) = &dir else {
                        tracing::warn!(
                            "SIGUSR1: no backup folder configured ([backup] dir or --backup-dir)"
                        );
                        continue;
                    };
                    let dest =
                        dir.join(chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string());
                    if reloader.backup(&dest).await.is_ok() {
                        println!("backup written to {}", dest.display());
                    }
                }
            })
        };
        let result = broker
            .run_until(async {
                shutdown_signal().await;
                log_memory();
            })
            .await;
        memory_log.abort();
        #[cfg(unix)]
        hangup.abort();
        #[cfg(unix)]
        usr1.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ketenpost-broker: {e:#}");
                ExitCode::from(EXIT_STORAGE)
            }
        }
    })
}

/// Log what the allocator holds: `allocated` is live data, `resident` what it keeps in
/// memory for it (the difference is freed memory not yet returned, and fragmentation).
fn log_memory() {
    use tikv_jemalloc_ctl::{epoch, stats};
    let mib = |n: usize| n / (1024 * 1024);
    if epoch::advance().is_ok() {
        if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
            tracing::info!(
                allocated_mib = mib(allocated),
                resident_mib = mib(resident),
                "memory"
            );
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn verify(data_dir: PathBuf, key: PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(&key) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ketenpost-broker: cannot read {}: {e}", key.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let key = match keys::signing_key_from_text(&text) {
        Ok(k) => k.verifying_key(),
        Err(_) => match keys::verifying_key_from_text(&text) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("ketenpost-broker: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let path = data_dir.join("broker.sled");
    if !path.exists() {
        eprintln!("ketenpost-broker: no broker database at {}", path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    let db = match sled::open(&path) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("ketenpost-broker: cannot open {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match audit::verify_chain(&db, &key) {
        Ok(report) => {
            println!("{report}");
            if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("ketenpost-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
