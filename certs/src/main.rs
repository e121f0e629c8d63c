//! `ketenpost-certs`: create a local dev federation (`init`) and revoke a party's
//! certificate (`revoke`). Parses the command line, calls the library and prints a
//! summary; the work is in the library.
//!
//! Exit codes: 0 on success, 64 (EX_USAGE) for a usage or configuration error (bad
//! arguments, unreadable or invalid policy or roster, occupied output directory), 1 for
//! anything else.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ketenpost_certs::{Federation, InitOptions};

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

/// Test PKI and signed documents for a local ketenpost federation (development only).
#[derive(Debug, Parser)]
#[command(name = "ketenpost-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a dev federation: CA, broker and party certificates and keys, negative test
    /// certificates, and the policy and directory signed by a new federation key.
    Init(InitArgs),
    /// Revoke a party: a new CRL (ca/crl.pem) that lists its TLS certificate besides every
    /// certificate revoked before, and a new directory version (serial + 1, signed) that
    /// marks it revoked. Restart the broker to apply them.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The federation directory (made by `init`).
    #[arg(long, value_name = "DIR")]
    federation: PathBuf,
    /// The party to revoke.
    #[arg(long, value_name = "OIN")]
    oin: String,
    /// Only the CRL; leave the directory as it is (e.g. a compromised certificate whose
    /// party gets a new one).
    #[arg(long)]
    crl_only: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The covenant policy (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The directory to create the federation in.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A roster of parties (`[[party]]` name, oin, roles); default: one party per role.
    #[arg(long, value_name = "FILE")]
    roster: Option<PathBuf>,
    /// Replace the federation in a non-empty output directory.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Init(args) => init(args),
        Command::Revoke(args) => revoke(args),
    }
}

fn revoke(args: RevokeArgs) -> ExitCode {
    let result = args
        .oin
        .parse::<ketenpost_schemas::ids::Oin>()
        .map_err(|e| format!("--oin: {e}"))
        .and_then(|oin| {
            let fed = Federation::load(&args.federation).map_err(|e| e.to_string())?;
            let now = chrono::Utc::now();
            let serial = ketenpost_certs::revoke::revoke_party_cert(&fed, &oin, now)
                .map_err(|e| e.to_string())?;
            let version = if args.crl_only {
                None
            } else {
                Some(
                    ketenpost_certs::revoke::revoke_in_directory(&fed, &oin, now)
                        .map_err(|e| e.to_string())?,
                )
            };
            Ok((oin, serial, version))
        });
    match result {
        Ok((oin, serial, version)) => {
            println!(
                "revoked the certificate of {oin} (serial {}); the CRL is rewritten",
                hex::encode(serial)
            );
            if let Some(v) = version {
                println!("{oin} is marked revoked in directory version {v} (signed)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ketenpost-certs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(args: InitArgs) -> ExitCode {
    let mut opts = InitOptions::new(args.policy, args.out);
    opts.roster = args.roster;
    opts.force = args.force;
    match ketenpost_certs::init(&opts) {
        Ok(fed) => {
            print_summary(&fed);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ketenpost-certs: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            if e.is_config_error() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_summary(fed: &Federation) {
    let rel = |p: &std::path::Path| p.strip_prefix(&fed.dir).unwrap_or(p).display().to_string();
    println!(
        "created dev federation for covenant '{}' in {}",
        fed.covenant,
        fed.dir.display()
    );
    println!("  CA         {}", rel(&fed.ca.cert));
    println!(
        "  broker     {} ({})",
        rel(&fed.broker.cert),
        fed.broker.server_names.join(", ")
    );
    println!(
        "  directory  {} ({} parties, signed)",
        rel(&fed.directory.file),
        fed.parties.len()
    );
    for p in &fed.parties {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        println!("  party      {}  {}  [{}]", p.oin, p.name, roles.join(", "));
    }
    println!("  negative   expired, revoked, foreign, wrong-oin in negative/");
    println!(
        "federation key: {} (development only; in production it stays offline)",
        rel(&fed.federation.signing_key)
    );
}
