//! The `ketenpost-agent` binary: parse the command line, set up tracing, and either run
//! the agent until a signal or make one call to a running agent's API.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use ketenpost_agent::cli::{self, AuditCommand, Cli, Command};
use ketenpost_agent::{Agent, AgentConfig, Error};
use tracing_subscriber::EnvFilter;

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("KETENPOST_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: &Cli) -> Result<(), Error> {
    let config = AgentConfig::load(&cli.config)?;
    // A test build (feature `failpoints`) reads its clock from KETENPOST_TEST_CLOCK_FILE
    // when set, as the broker does; otherwise the system clock.
    let agent = match ketenpost_transport::failpoint::test_clock() {
        Some(clock) => Agent::start_with_clock(config, clock).await?,
        None => Agent::start(config).await?,
    };
    agent
        .run_until(ketenpost_transport::signal::shutdown_signal())
        .await;
    Ok(())
}

fn report(e: &Error) -> ExitCode {
    let code = cli::exit_code(e);
    match e {
        Error::Config { .. } => eprintln!("ketenpost-agent: bad configuration: {e}"),
        Error::Documents(_) => {
            eprintln!("ketenpost-agent: refusing to run: {e}")
        }
        Error::NotReady => eprintln!(
            "ketenpost-agent: no verified federation documents: the broker could not be reached \
             and there is no verified copy from an earlier run"
        ),
        _ => eprintln!("ketenpost-agent: {e}"),
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Sealing, opening and flushes run on blocking threads. An agent is a small service:
    // a few of them are enough, and they end soon after a burst, so an idle agent gives
    // back their memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ketenpost-agent: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match &cli.command {
        Command::Keygen {
            out,
            oin,
            name,
            fg_contact,
        } => match ketenpost_agent::keygen::keygen(out, oin, name, fg_contact) {
            Ok(g) => {
                for f in &g.files {
                    println!("wrote {}", f.display());
                }
                println!(
                    "send enrolment.json and tls.csr to the federation operator; keep the keys here"
                );
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        },
        Command::Run => {
            init_tracing();
            match runtime.block_on(run(&cli)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(cause = %e, "agent stopped with an error");
                    report(&e)
                }
            }
        }
        _ => match runtime.block_on(cli::call(&cli)) {
            // Written by the command itself (an audit export to standard output).
            Ok(serde_json::Value::Null) => ExitCode::SUCCESS,
            Ok(answer) => {
                let text =
                    serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string());
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout().lock(), "{text}");
                let broken_trail = matches!(cli.command, Command::Audit(AuditCommand::Verify))
                    && answer.get("intact") != Some(&serde_json::Value::Bool(true));
                if broken_trail {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => report(&e),
        },
    }
}
