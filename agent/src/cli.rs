//! The command line: `ketenpost-agent run` starts the agent; every other command is a
//! call to a running agent's HTTP API, so the CLI and partner systems share one set of
//! operations and one set of checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::client::ApiClient;
use crate::config::AgentConfig;
use crate::Error;

const EXIT_CODES: &str = "\
Exit codes:
  0   done
  1   refused: the agent's early policy check or the broker refused it (code in the output)
  2   usage error
  3   not found
  64  bad configuration
  65  bad input: the payload file or a value is not valid
  69  unavailable: the agent's API (or, for `run`, the broker) cannot be reached
  70  internal error
  74  I/O error (database, listening socket)
  77  the API token was refused

`audit verify` exits 2 when the agent's audit trail is broken (as `ketenpost-broker audit
verify` does), printing the first broken record.

`run` also exits 65 when the broker's policy or directory is not validly signed by the
pinned federation key: the agent refuses to run on it.";

/// ketenpost agent: the partner organisation's gateway to the covenant's broker.
///
/// `run` starts the agent. The other commands talk to a running agent over its local HTTP
/// API (address and token from the same configuration file) and print its JSON answer.
#[derive(Debug, Parser)]
#[command(name = "ketenpost-agent", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The agent's configuration file (TOML).
    #[arg(
        short,
        long,
        global = true,
        env = "KETENPOST_AGENT_CONFIG",
        default_value = "ketenpost-agent.toml"
    )]
    pub config: PathBuf,
    /// Call the API at this address instead of the configured `api.listen`.
    #[arg(long, global = true, env = "KETENPOST_AGENT_API")]
    pub api: Option<SocketAddr>,
    /// Read the API token from this file instead of the configured `api.token_file`.
    #[arg(long, global = true, env = "KETENPOST_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: fetch and verify the federation documents, serve the API, send and
    /// receive until stopped (SIGINT or SIGTERM).
    Run,
    /// Make this organisation's keys (signing, age, TLS) in a new folder, with the public
    /// enrolment request and the certificate request to send to the federation operator.
    /// Private keys stay here. Needs no configuration file and no running agent.
    #[command(
        after_help = "Example:\n  ketenpost-agent keygen --out keys/ --oin 00000009000000000042 --name 'Zorg Nieuw' --fg-contact fg@zorg.example"
    )]
    Keygen {
        /// The folder to write the keys to (created; must not hold keys yet).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Our OIN.
        #[arg(long)]
        oin: Oin,
        /// Our organisation's name.
        #[arg(long)]
        name: String,
        /// How to reach our FG (an office address).
        #[arg(long)]
        fg_contact: String,
    },
    /// Send a message. Prints its id and status (queued).
    #[command(
        after_help = "Example:\n  ketenpost-agent send --kind signaal --case case-... --to woningcorporatie --payload signaal.json"
    )]
    Send(SendArgs),
    /// Show the status of a sent message, per recipient.
    Status {
        /// The message id.
        id: MessageId,
    },
    /// List sent messages.
    Outbox {
        /// Only messages of this case.
        #[arg(long = "case")]
        case_ref: Option<CaseRef>,
    },
    /// List received messages (unacknowledged ones, unless --all).
    Inbox {
        /// Include acknowledged messages still kept.
        #[arg(long)]
        all: bool,
    },
    /// Show one received message with its payload.
    Read {
        /// The message id.
        id: MessageId,
    },
    /// Acknowledge a received message: your system has stored it.
    Ack {
        /// The message id.
        id: MessageId,
    },
    /// List deliveries the agent refused (bad signature, fields outside our view, ...).
    Refused,
    /// Open, inspect and manage cases.
    #[command(subcommand)]
    Case(CaseCommand),
    /// Register or withdraw a client's consent.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// List the broker's deletion orders the agent carried out, or acknowledge one.
    DeletionOrders {
        /// Acknowledge this order: your system deleted its own copies of the case.
        #[arg(long)]
        ack: Option<uuid::Uuid>,
    },
    /// Show the agent's health: broker connection, counters, audit warnings.
    Health,
    /// The agent's own audit trail, for the FG: export it, or verify its hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A data subject's access requests (AVG art. 15): register one, list, show, write
    /// the answer for the person, record it answered.
    #[command(subcommand)]
    Access(AccessCommand),
}

/// `access` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Register a person's request: reads the BSN or other identifier from standard input
    /// (so it is in no shell history or process list), finds the person's cases and asks
    /// the broker for their facts.
    New {
        /// The day the request was received (YYYY-MM-DD; default today).
        #[arg(long)]
        received_on: Option<chrono::NaiveDate>,
    },
    /// List the access requests with their state and term.
    List,
    /// Show one request and its answer (JSON).
    Show {
        /// The request id.
        id: uuid::Uuid,
    },
    /// Write the answer for the person as HTML.
    Answer {
        /// The request id.
        id: uuid::Uuid,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record that the person has the answer (also at the broker, for the FG report).
    Answered {
        /// The request id.
        id: uuid::Uuid,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the agent's audit records as JSON lines (the broker's record format), for
    /// `ketenpost-broker audit <report> --agent-trail FILE`.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only records at or after this time (RFC 3339). A partial export does not
        /// verify on its own; merge a whole one.
        #[arg(long)]
        from: Option<String>,
        /// Only records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Verify the hash chain of the agent's audit trail; exit code 2 when it is broken.
    Verify,
}

/// `send` arguments.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The message kind: aanmelding, aanmeldbericht, signaal, reactie, datalek_melding,
    /// verstrekking_derden.
    #[arg(long)]
    pub kind: String,
    /// The case reference.
    #[arg(long = "case")]
    pub case_ref: CaseRef,
    /// A file with the full JSON payload ('-' for standard input). Each recipient role
    /// gets only the fields its view allows.
    #[arg(long)]
    pub payload: PathBuf,
    /// A recipient: a role within the case team (e.g. woningcorporatie) or an OIN
    /// (20 digits). Repeat for more.
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// The purpose (default: the case's).
    #[arg(long)]
    pub purpose: Option<String>,
    /// Send under this consent (default: a matching consent on file at the agent).
    #[arg(long, conflicts_with = "ground")]
    pub consent: Option<uuid::Uuid>,
    /// Send on a named ground the policy allows for the kind (acute_danger, legal_duty,
    /// conflict_van_plichten, meldrecht, or one the covenant declares): instead of
    /// consent, or where the kind's basis requires a ground (`policy explain` lists them).
    #[arg(long, requires = "justification")]
    pub ground: Option<String>,
    /// The justification code: one of the covenant's list (`policy explain` shows it), or,
    /// where the covenant keeps none, a code into your own file (no free text).
    #[arg(long)]
    pub justification: Option<String>,
    /// The event time (RFC 3339); by default taken from the payload.
    #[arg(long)]
    pub event_time: Option<String>,
    /// The message this answers.
    #[arg(long)]
    pub in_reply_to: Option<MessageId>,
    /// Ask for an answer by this time (RFC 3339), within the kind's answer_request_max.
    #[arg(long)]
    pub answer_due: Option<String>,
    /// The recipient role that owes that answer (default: every recipient). Repeat for
    /// more.
    #[arg(long = "answer-by", requires = "answer_due")]
    pub answer_by: Vec<String>,
}

/// `case` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// Open a case under a purpose; you become its regievoerder. Prints the case reference.
    Open {
        /// The purpose, e.g. uitstroom.
        #[arg(long)]
        purpose: String,
        /// Your role in the case (default: your role that may manage cases).
        #[arg(long)]
        role: Option<String>,
    },
    /// Add a party to the case team.
    Add {
        /// The case.
        case_ref: CaseRef,
        /// The party's OIN.
        oin: Oin,
        /// Its role in the case (default: its one role in the directory).
        #[arg(long)]
        role: Option<String>,
    },
    /// Remove a party from the case team.
    Remove {
        /// The case.
        case_ref: CaseRef,
        /// The party's OIN.
        oin: Oin,
    },
    /// Close the case; the covenant's case retention starts.
    Close {
        /// The case.
        case_ref: CaseRef,
    },
    /// Show what the agent knows about a case.
    Show {
        /// The case.
        case_ref: CaseRef,
    },
    /// List the cases the agent knows.
    List,
    /// Tell the agent about a case your organisation was added to by its regievoerder.
    Register {
        /// The case.
        case_ref: CaseRef,
        /// Its purpose.
        #[arg(long)]
        purpose: String,
        /// A team member as OIN:ROLE. Repeat for more.
        #[arg(long = "member")]
        members: Vec<String>,
    },
}

/// `consent` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Register a consent your organisation obtained. Prints the consent id.
    Grant {
        /// The case.
        #[arg(long = "case")]
        case_ref: CaseRef,
        /// A party type the client consented to (repeat, or comma-separated).
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// A party the client consented to, by OIN (repeat).
        #[arg(long = "party")]
        parties: Vec<Oin>,
        /// The signed consent document; only its SHA-256 is sent.
        #[arg(
            long,
            conflicts_with = "document_sha256",
            required_unless_present = "document_sha256"
        )]
        document: Option<PathBuf>,
        /// The SHA-256 of the signed consent document.
        #[arg(long)]
        document_sha256: Option<String>,
        /// Valid until (RFC 3339); default: until withdrawn.
        #[arg(long)]
        valid_until: Option<String>,
        /// The purpose (default: the case's).
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Record that the client withdrew a consent.
    Withdraw {
        /// The consent id.
        consent_id: uuid::Uuid,
        /// The case (needed only when the agent does not know the consent).
        #[arg(long = "case")]
        case_ref: Option<CaseRef>,
    },
    /// List the consents the agent knows.
    List {
        /// Only this case's.
        #[arg(long = "case")]
        case_ref: Option<CaseRef>,
    },
}

/// The exit code for an error.
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Config { .. } => 64,
        Error::Documents(_) | Error::Schema(_) | Error::Invalid(_) => 65,
        Error::Refused { .. } => 1,
        Error::NotFound { .. } => 3,
        Error::Broker(_) | Error::NotReady | Error::ApiUnreachable { .. } => 69,
        Error::Io { .. } | Error::Store(_) | Error::Corrupt { .. } => 74,
        Error::Api { status, code, .. } => match (*status, code.as_str()) {
            (401, _) => 77,
            (404, _) => 3,
            (422, "invalid_payload") | (400, _) => 65,
            (422, _) | (409, _) => 1,
            (502 | 503, _) => 69,
            _ => 70,
        },
        _ => 70,
    }
}

fn client(cli: &Cli) -> Result<ApiClient, Error> {
    match (cli.api, &cli.token_file) {
        (Some(addr), Some(tf)) => Ok(ApiClient::new(addr, read_token(tf)?)),
        _ => {
            let cfg = AgentConfig::load(&cli.config)?;
            let base = ApiClient::from_config(&cfg)?;
            let addr = cli.api.unwrap_or(base.addr());
            match &cli.token_file {
                Some(tf) => Ok(ApiClient::new(addr, read_token(tf)?)),
                None => Ok(ApiClient::new(addr, token_of(&cfg)?)),
            }
        }
    }
}

fn read_token(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| Error::Config {
            path: path.to_owned(),
            message: format!("cannot read the API token: {e}"),
        })
}

fn token_of(cfg: &AgentConfig) -> Result<String, Error> {
    read_token(&cfg.api.token_file)
}

fn read_input(path: &Path) -> Result<Vec<u8>, Error> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| Error::io("cannot read standard input", e))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
    }
}

fn recipient(s: &str) -> Value {
    match s.parse::<Oin>() {
        Ok(oin) => json!({ "oin": oin }),
        Err(_) => json!({ "role": s }),
    }
}

fn send_body(a: &SendArgs) -> Result<Value, Error> {
    let payload: Value = serde_json::from_slice(&read_input(&a.payload)?)
        .map_err(|e| Error::Invalid(format!("{} is not JSON: {e}", a.payload.display())))?;
    let mut body = Map::new();
    body.insert("kind".into(), json!(a.kind));
    body.insert("case_ref".into(), json!(a.case_ref));
    body.insert(
        "to".into(),
        Value::Array(a.to.iter().map(|t| recipient(t)).collect()),
    );
    body.insert("payload".into(), payload);
    if let Some(p) = &a.purpose {
        body.insert("purpose".into(), json!(p));
    }
    if let Some(c) = a.consent {
        body.insert(
            "legal_basis".into(),
            json!({ "basis": "consent", "consent_id": c }),
        );
    }
    if let Some(g) = &a.ground {
        body.insert(
            "legal_basis".into(),
            json!({ "basis": "non_consent", "ground": g, "justification": a.justification }),
        );
    }
    if let Some(t) = &a.event_time {
        body.insert("event_time".into(), json!(t));
    }
    if let Some(r) = a.in_reply_to {
        body.insert("in_reply_to".into(), json!(r));
    }
    if let Some(due) = &a.answer_due {
        let mut request = json!({ "due": due });
        if !a.answer_by.is_empty() {
            request["by"] = json!(a.answer_by);
        }
        body.insert("answer_request".into(), request);
    }
    Ok(Value::Object(body))
}

/// Run one client command against the agent's API; the JSON answer to print.
pub async fn call(cli: &Cli) -> Result<Value, Error> {
    let api = client(cli)?;
    match &cli.command {
        Command::Run | Command::Keygen { .. } => Err(Error::Invalid(
            "`run` and `keygen` are not API calls".into(),
        )),
        Command::Send(a) => api.call("POST", "/v1/messages", Some(&send_body(a)?)).await,
        Command::Status { id } => api.call("GET", &format!("/v1/messages/{id}"), None).await,
        Command::Outbox { case_ref } => {
            let q = case_ref
                .as_ref()
                .map(|c| format!("?case_ref={c}"))
                .unwrap_or_default();
            api.call("GET", &format!("/v1/messages{q}"), None).await
        }
        Command::Inbox { all } => api.call("GET", &format!("/v1/inbox?all={all}"), None).await,
        Command::Read { id } => api.call("GET", &format!("/v1/inbox/{id}"), None).await,
        Command::Ack { id } => api.call("POST", &format!("/v1/inbox/{id}/ack"), None).await,
        Command::Refused => api.call("GET", "/v1/refused", None).await,
        Command::Health => api.call("GET", "/v1/health", None).await,
        Command::DeletionOrders { ack: Some(id) } => {
            api.call("POST", &format!("/v1/deletion-orders/{id}/ack"), None)
                .await
        }
        Command::DeletionOrders { ack: None } => api.call("GET", "/v1/deletion-orders", None).await,
        Command::Case(c) => case(&api, c).await,
        Command::Access(c) => access(&api, c).await,
        Command::Consent(c) => consent(&api, c).await,
        Command::Audit(AuditCommand::Verify) => api.call("GET", "/v1/audit/verify", None).await,
        Command::Audit(AuditCommand::Export { out, from, until }) => {
            let mut query = Vec::new();
            for (name, value) in [("from", from), ("until", until)] {
                if let Some(v) = value {
                    let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|_| {
                        Error::Invalid(format!("--{name} '{v}' is not an RFC 3339 time"))
                    })?;
                    // Percent-free: a UTC time with a `Z` needs no escaping.
                    let utc = t
                        .with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                    query.push(format!("{name}={utc}"));
                }
            }
            let path = if query.is_empty() {
                "/v1/audit".to_owned()
            } else {
                format!("/v1/audit?{}", query.join("&"))
            };
            let lines = api.get_bytes(&path).await?;
            let records = lines.iter().filter(|b| **b == b'\n').count();
            match out {
                Some(file) => {
                    std::fs::write(file, &lines)
                        .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
                    Ok(json!({ "records": records, "out": file }))
                }
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .lock()
                        .write_all(&lines)
                        .map_err(|e| Error::io("cannot write standard output", e))?;
                    // Printed already: nothing more to print.
                    Ok(Value::Null)
                }
            }
        }
    }
}

async fn access(api: &ApiClient, c: &AccessCommand) -> Result<Value, Error> {
    match c {
        AccessCommand::New { received_on } => {
            let mut identifier = String::new();
            std::io::stdin()
                .read_line(&mut identifier)
                .map_err(|e| Error::io("cannot read the identifier from standard input", e))?;
            let mut body = json!({ "identifier": identifier.trim() });
            if let Some(d) = received_on {
                body["received_on"] = json!(d);
            }
            api.call("POST", "/v1/access-requests", Some(&body)).await
        }
        AccessCommand::List => api.call("GET", "/v1/access-requests", None).await,
        AccessCommand::Show { id } => {
            api.call("GET", &format!("/v1/access-requests/{id}"), None)
                .await
        }
        AccessCommand::Answered { id } => {
            api.call("POST", &format!("/v1/access-requests/{id}/answered"), None)
                .await
        }
        AccessCommand::Answer { id, out } => {
            let html = api
                .get_bytes(&format!("/v1/access-requests/{id}/answer.html"))
                .await?;
            match out {
                Some(file) => {
                    std::fs::write(file, &html)
                        .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
                    Ok(json!({ "out": file }))
                }
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .lock()
                        .write_all(&html)
                        .map_err(|e| Error::io("cannot write standard output", e))?;
                    Ok(Value::Null)
                }
            }
        }
    }
}

async fn case(api: &ApiClient, c: &CaseCommand) -> Result<Value, Error> {
    match c {
        CaseCommand::Open { purpose, role } => {
            api.call(
                "POST",
                "/v1/cases",
                Some(&json!({ "purpose": purpose, "role": role })),
            )
            .await
        }
        CaseCommand::Add {
            case_ref,
            oin,
            role,
        } => {
            api.call(
                "POST",
                &format!("/v1/cases/{case_ref}/members"),
                Some(&json!({ "oin": oin, "role": role })),
            )
            .await
        }
        CaseCommand::Remove { case_ref, oin } => {
            api.call(
                "DELETE",
                &format!("/v1/cases/{case_ref}/members/{oin}"),
                None,
            )
            .await
        }
        CaseCommand::Close { case_ref } => {
            api.call("POST", &format!("/v1/cases/{case_ref}/close"), None)
                .await
        }
        CaseCommand::Show { case_ref } => {
            api.call("GET", &format!("/v1/cases/{case_ref}"), None)
                .await
        }
        CaseCommand::List => api.call("GET", "/v1/cases", None).await,
        CaseCommand::Register {
            case_ref,
            purpose,
            members,
        } => {
            let mut list = Vec::new();
            for m in members {
                let (oin, role) = m
                    .split_once(':')
                    .ok_or_else(|| Error::Invalid(format!("member '{m}' is not OIN:ROLE")))?;
                list.push(json!({ "oin": oin, "role": role }));
            }
            api.call(
                "PUT",
                &format!("/v1/cases/{case_ref}"),
                Some(&json!({ "purpose": purpose, "members": list })),
            )
            .await
        }
    }
}

async fn consent(api: &ApiClient, c: &ConsentCommand) -> Result<Value, Error> {
    match c {
        ConsentCommand::Grant {
            case_ref,
            roles,
            parties,
            document,
            document_sha256,
            valid_until,
            purpose,
        } => {
            let sha = match (document, document_sha256) {
                (Some(path), _) => hex::encode(Sha256::digest(read_input(path)?)),
                (None, Some(s)) => s.clone(),
                (None, None) => {
                    return Err(Error::Invalid(
                        "give --document or --document-sha256".into(),
                    ))
                }
            };
            let mut body = json!({
                "case_ref": case_ref,
                "roles": roles,
                "parties": parties,
                "document_sha256": sha,
            });
            if let Some(u) = valid_until {
                body["valid_until"] = json!(u);
            }
            if let Some(p) = purpose {
                body["purpose"] = json!(p);
            }
            api.call("POST", "/v1/consents", Some(&body)).await
        }
        ConsentCommand::Withdraw {
            consent_id,
            case_ref,
        } => {
            let body = match case_ref {
                Some(c) => json!({ "case_ref": c }),
                None => json!({}),
            };
            api.call(
                "POST",
                &format!("/v1/consents/{consent_id}/withdraw"),
                Some(&body),
            )
            .await
        }
        ConsentCommand::List { case_ref } => {
            let q = case_ref
                .as_ref()
                .map(|c| format!("?case_ref={c}"))
                .unwrap_or_default();
            api.call("GET", &format!("/v1/consents{q}"), None).await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn recipients_are_roles_or_oins() {
        assert_eq!(
            recipient("woningcorporatie"),
            json!({ "role": "woningcorporatie" })
        );
        assert_eq!(
            recipient("00000001000000000001"),
            json!({ "oin": "00000001000000000001" })
        );
    }

    #[test]
    fn exit_codes() {
        let api = |status, code: &str| Error::Api {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(exit_code(&api(422, "not_in_case_team")), 1);
        assert_eq!(exit_code(&api(422, "invalid_payload")), 65);
        assert_eq!(exit_code(&api(401, "unauthorized")), 77);
        assert_eq!(exit_code(&api(404, "not_found")), 3);
        assert_eq!(exit_code(&api(503, "broker_unavailable")), 69);
        assert_eq!(
            exit_code(&Error::Config {
                path: "x".into(),
                message: String::new()
            }),
            64
        );
    }
}
