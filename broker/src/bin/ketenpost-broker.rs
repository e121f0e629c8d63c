//! `ketenpost-broker`: serve a covenant region, verify its audit trail, or give its FGs
//! their reports (`audit flows`, `audit breaches`, `audit access`, `audit html`, ...).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ketenpost_broker::config::{BrokerConfig, DevSettings, Overrides};
use ketenpost_broker::daemon::{self, ServeError};
use ketenpost_broker::fg::{FgError, ReportKind};
use ketenpost_broker::fg_cli::{self, ReportSource};
use ketenpost_broker::rehearsal::{self, RehearsalFormat};
use ketenpost_broker::{audit, fg};
use ketenpost_schemas::protocol::FgQuery;

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
        /// With --federation: how often older audit records move into the archive file
        /// (10-60000 ms).
        #[arg(long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
        audit_archive_ms: Option<u64>,
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

/// Print the error and exit with `code`.
fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ketenpost-broker: {e}");
    ExitCode::from(code)
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
            audit_archive_ms,
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
                (Some(path), _, _) => BrokerConfig::load(&path).map_err(|e| e.to_string()),
                (None, Some(fed), Some(data)) => ketenpost_certs::Federation::load(&fed)
                    .map(|f| {
                        let mut c = BrokerConfig::for_federation(&f, data, listen);
                        c.apply_dev_settings(DevSettings {
                            sweep_interval_secs,
                            checkpoint_interval_secs,
                            documents_reload_secs,
                            audit_archive_ms,
                            partner_cas: partner_ca,
                            crls: crl,
                        });
                        c
                    })
                    .map_err(|e| format!("federation {}: {e}", fed.display())),
                _ => Err("serve needs --config FILE, or --federation DIR --data DIR".to_owned()),
            };
            let mut config = match config {
                Ok(c) => c,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let overrides = Overrides {
                metrics,
                backup_dir,
                tcp,
                alert_webhooks: alert_webhook,
                alert_emails: alert_email,
                smtp_relay,
                smtp_security,
                smtp_from,
            };
            if let Err(e) = config.apply_overrides(overrides) {
                return fail(EXIT_CONFIG, &e);
            }
            match daemon::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ ServeError::Runtime(_)) => fail(1, &e),
                Err(e @ ServeError::Start(_)) => fail(EXIT_CONFIG, &e),
                Err(e @ ServeError::Storage(_)) => fail(EXIT_STORAGE, &e),
            }
        }
        Command::Rehearse {
            backup,
            config,
            federation,
            at,
            format,
        } => {
            let at = match fg::parse_time(&at) {
                Ok(t) => t,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let format: RehearsalFormat = match format.parse() {
                Ok(f) => f,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let local = SocketAddr::from(([127, 0, 0, 1], 0));
            let config = match (config, federation) {
                (Some(path), _) => BrokerConfig::load(&path).map_err(|e| e.to_string()),
                (None, Some(fed)) => ketenpost_certs::Federation::load(&fed)
                    .map(|f| BrokerConfig::for_federation(&f, backup.clone(), local))
                    .map_err(|e| e.to_string()),
                (None, None) => Err("rehearse needs --config FILE or --federation DIR".to_owned()),
            };
            let config = match config {
                Ok(c) => c,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            match rehearsal::rehearse_blocking(config, &backup, at, format) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            }
        }
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
            Err(e) => fail(1, &e),
        },
        Command::Features => {
            if ketenpost_broker::failpoint::ENABLED {
                println!("failpoints");
            }
            ExitCode::SUCCESS
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir, key },
        } => match audit::verify_data_dir(&data_dir, &key) {
            Ok(report) => {
                println!("{report}");
                if report.is_intact() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                }
            }
            Err(e) if e.is_usage() => fail(EXIT_CONFIG, &e),
            Err(e) => fail(1, &e),
        },
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
            match fg_report(kind, *args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_usage() => fail(EXIT_CONFIG, &e),
                Err(e) => fail(1, &e),
            }
        }
    }
}

fn fg_report(kind: ReportKind, a: FgArgs) -> Result<(), FgError> {
    let query = FgQuery {
        report: kind.name().to_owned(),
        format: a.format,
        from: a.from,
        until: a.until,
        party: a.party,
        case_ref: a.case,
        purpose: a.purpose,
        kind: a.kind,
        outcome: a.outcome,
        agent_trails: Vec::new(),
    };
    let source = ReportSource {
        config: a.config,
        federation: a.federation,
        data: a.data,
        as_oin: a.as_oin,
        federation_fg: a.federation_fg,
        broker: a.broker,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        ca: a.ca,
        server_name: a.server_name,
        agent_trails: a.agent_trail,
    };
    let text = fg_cli::report(&query, &source)?;
    match &a.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| FgError::Config(format!("cannot write {}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
