//! `ketenpost-broker`: serve a covenant region, or verify an audit trail.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ketenpost_broker::audit;
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_schemas::keys;

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
    },
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
                    Ok(f) => BrokerConfig::for_federation(&f, data, listen),
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
            serve(config)
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir, key },
        } => verify(data_dir, key),
    }
}

fn serve(config: BrokerConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ketenpost-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ketenpost-broker: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        // Tell a supervisor (or a test harness) where we listen.
        println!("listening on {}", broker.local_addr());
        broker.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
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
