//! `ketenpost-certs`: the federation operator's tool. Create a local dev federation
//! (`init`); enrol a partner from its own keys (`enrol`); rotate a partner's keys
//! (`rotate`); revoke a partner (`revoke`); sign a new policy or directory version
//! (`policy sign`, `directory sign`). Parses the command line, calls the library and
//! prints a summary; the work is in the library.
//!
//! Exit codes: 0 on success, 64 (EX_USAGE) for a usage or configuration error (bad
//! arguments, unreadable or invalid policy or roster, occupied output directory), 1 for
//! anything else.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ketenpost_certs::{lifecycle, Federation, InitOptions};
use ketenpost_schemas::directory::EnrolmentRequest;
use ketenpost_schemas::policy::Role;

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
    /// marks it revoked. A running broker applies both at its next reload.
    Revoke(RevokeArgs),
    /// Enrol a partner that made its own keys (`ketenpost-agent keygen`): issue its TLS
    /// certificate from its CSR and add it to the directory (a new signed version).
    Enrol(EnrolArgs),
    /// Give a listed partner new keys from a new keygen request; the old keys keep
    /// verifying, and the old certificate keeps connecting, during the overlap.
    Rotate(RotateArgs),
    /// Policy versions, checks and the FG's explanation.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Directory versions.
    Directory {
        #[command(subcommand)]
        command: SignCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Sign FILE as the next version (directory serial + 1); see `directory sign`.
    Sign {
        /// The federation directory.
        #[arg(long, value_name = "DIR")]
        federation: PathBuf,
        /// The new policy (TOML).
        file: PathBuf,
    },
    /// Check a policy file: exit 0 when it is valid, else 65 with every problem found,
    /// each with its line, column and what is wrong.
    Check {
        /// The policy (TOML).
        file: PathBuf,
    },
    /// Print the JSON Schema of the policy file (draft-07), for editors that validate a
    /// policy as it is written; the same as schemas/json/policy.schema.json.
    Schema,
    /// Print the policy as a table an FG can read and sign off: per purpose and kind, who
    /// may send to whom, which fields and categories each role sees, the legal basis and
    /// grounds, and the terms.
    Explain {
        /// The policy (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SignCommand {
    /// Sign FILE as the next version (directory serial + 1) and put it in the federation
    /// directory; running brokers apply it at their next reload, agents at their next
    /// refresh.
    Sign {
        /// The federation directory.
        #[arg(long, value_name = "DIR")]
        federation: PathBuf,
        /// The new policy (TOML) or the edited directory (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// The federation directory.
    #[arg(long, value_name = "DIR")]
    federation: PathBuf,
    /// The partner's `enrolment.json` (public keys), made by `ketenpost-agent keygen`.
    #[arg(long, value_name = "FILE")]
    request: PathBuf,
    /// The partner's certificate request (`tls.csr`, PEM); the federation CA issues the
    /// certificate.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "cert",
        requires = "out"
    )]
    csr: Option<PathBuf>,
    /// Where to write the partner's new certificate (PEM) to hand it over.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Instead of --csr: the partner's certificate from an external CA (PKIoverheid), OIN
    /// in subject serialNumber. The broker must list that CA in `tls.partner_cas`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["csr", "out"])]
    cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EnrolArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// The partner's roles under the policy (comma-separated).
    #[arg(long, value_name = "ROLES", value_delimiter = ',', required = true)]
    roles: Vec<String>,
}

#[derive(Debug, Args)]
struct RotateArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// How long the old keys and certificate stay valid, in hours (1-720).
    #[arg(long, default_value_t = 72, value_parser = clap::value_parser!(u32).range(1..=720))]
    overlap_hours: u32,
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
        Command::Enrol(args) => {
            let roles: Vec<Role> = args.roles.iter().map(|r| Role::new(r.trim())).collect();
            let external = args.request.cert.is_some();
            issue(&args.request, |fed, req, pem, now| {
                if external {
                    lifecycle::enrol_with_certificate(fed, req, pem, &roles, now)
                } else {
                    lifecycle::enrol(fed, req, pem, &roles, now)
                }
            })
        }
        Command::Rotate(args) => issue(&args.request, |fed, req, csr, now| {
            let overlap = chrono::Duration::hours(i64::from(args.overlap_hours));
            lifecycle::rotate(fed, req, csr, overlap, now)
        }),
        Command::Policy {
            command: PolicyCommand::Sign { federation, file },
        } => match ketenpost_certs::policy_file::signable(&file) {
            Ok((bytes, _)) => sign(&federation, &bytes, "policy", lifecycle::sign_policy),
            Err(e) => fail(e),
        },
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let checked =
                ketenpost_certs::policy_file::check_all(&file).map_err(|errors| -> Vec<String> {
                    errors
                        .iter()
                        .map(|e| format!("{}: {e}", file.display()))
                        .collect()
                });
            match checked {
                Ok(p) => {
                    println!(
                        "{}: valid policy for covenant '{}' ({} purposes)",
                        file.display(),
                        p.covenant.id,
                        p.purposes.len()
                    );
                    for gap in ketenpost_schemas::explain::gaps(&p) {
                        println!("note: {gap}");
                    }
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("{} problem(s)", problems.len());
                    ExitCode::from(EXIT_DATA)
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Schema,
        } => match serde_json::to_string_pretty(&ketenpost_schemas::policy::json_schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Policy {
            command: PolicyCommand::Explain { file },
        } => match read_policy(&file) {
            Ok(p) => {
                print!("{}", ketenpost_schemas::explain::explain(&p));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_DATA)
            }
        },
        Command::Directory {
            command: SignCommand::Sign { federation, file },
        } => match std::fs::read(&file) {
            Ok(bytes) => sign(&federation, &bytes, "directory", lifecycle::sign_directory),
            Err(e) => fail(format!("{}: {e}", file.display())),
        },
    }
}

/// EX_DATAERR from sysexits.h: the input file is not valid.
const EXIT_DATA: u8 = 65;

/// Read and check a policy file; the error names the file, line and column.
fn read_policy(file: &std::path::Path) -> Result<ketenpost_schemas::policy::Policy, String> {
    ketenpost_certs::policy_file::check_all(file)
        .map_err(|mut errors| format!("{}: {}", file.display(), errors.swap_remove(0)))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ketenpost-certs: error: {e}");
    ExitCode::FAILURE
}

/// Enrol or rotate: read the request and the CSR (or the external certificate), run `f`,
/// write the certificate it issued.
fn issue(
    a: &RequestArgs,
    f: impl FnOnce(
        &Federation,
        &EnrolmentRequest,
        &str,
        chrono::DateTime<chrono::Utc>,
    ) -> Result<lifecycle::Issued, ketenpost_certs::Error>,
) -> ExitCode {
    let fed = match Federation::load(&a.federation) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let request: EnrolmentRequest = match std::fs::read(&a.request)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", a.request.display())),
    };
    let Some(input) = a.cert.as_ref().or(a.csr.as_ref()) else {
        return fail("give --csr (with --out) or --cert");
    };
    let pem = match std::fs::read_to_string(input) {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", input.display())),
    };
    let issued = match f(&fed, &request, &pem, chrono::Utc::now()) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    if let Some(out) = &a.out {
        if let Err(e) = std::fs::write(out, issued.cert_pem.as_bytes()) {
            return fail(format!("{}: {e}", out.display()));
        }
        println!(
            "issued the certificate of {} ({}) to {}",
            request.oin,
            issued.fingerprint,
            out.display()
        );
    }
    println!(
        "{} is in directory version {} (signed); running brokers apply it at their next reload",
        request.oin, issued.serial
    );
    ExitCode::SUCCESS
}

fn sign(
    federation: &std::path::Path,
    bytes: &[u8],
    what: &str,
    f: impl FnOnce(
        &Federation,
        &[u8],
        chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, ketenpost_certs::Error>,
) -> ExitCode {
    let fed = match Federation::load(federation) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match f(&fed, bytes, chrono::Utc::now()) {
        Ok(serial) => {
            println!("the {what} is signed as version {serial} (directory serial)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn revoke(args: RevokeArgs) -> ExitCode {
    let result = args
        .oin
        .parse::<ketenpost_schemas::ids::Oin>()
        .map_err(|e| format!("--oin: {e}"))
        .and_then(|oin| {
            let fed = Federation::load(&args.federation).map_err(|e| e.to_string())?;
            ketenpost_certs::revoke::revoke(&fed, &oin, args.crl_only, chrono::Utc::now())
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(revoked) => {
            println!("{revoked}");
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
            print!("{}", ketenpost_certs::init_summary(&fed));
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
