//! The one error type of this crate.
//!
//! Messages name kinds, ids, OINs, case references (pseudonyms) and fields, never payload
//! values: they end up in logs and in API answers.

use std::path::PathBuf;

use ketenpost_schemas::protocol::Rejection;

/// Who refused an operation on policy grounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    /// The agent's own early check, before anything was stored or sent.
    Agent,
    /// The broker, which is authoritative.
    Broker,
}

impl std::fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusedBy::Agent => "agent",
            RefusedBy::Broker => "broker",
        })
    }
}

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is missing, does not parse or is inconsistent. The binary exits
    /// with code 64 on it.
    #[error("configuration {}: {message}", .path.display())]
    Config {
        /// The file (or key file) at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The federation's documents (policy, directory) are not validly signed by the
    /// pinned federation key, or do not fit this agent. The agent refuses to run on them.
    #[error("federation documents refused: {0}")]
    Documents(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local database failed.
    #[error("local database: {0}")]
    Store(#[from] sled::Error),
    /// A record in the local database does not parse (corruption or a format change).
    #[error("local database holds an unreadable {what}: {reason}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// Why it does not parse.
        reason: String,
    },
    /// The agent's own audit trail cannot be read, or its head is corrupt (see
    /// [`crate::audit`]).
    #[error("agent audit trail: {0}")]
    Audit(#[from] ketenpost_audit::AuditError),
    /// The broker could not be reached, or the connection failed.
    #[error("broker unavailable: {0}")]
    Broker(#[from] ketenpost_transport::client::ClientError),
    /// The key store of the payloads at rest failed, or a key or sealed record in it does
    /// not open (see [`crate::vault`]).
    #[error("data key store: {0}")]
    Vault(String),
    /// The broker answered something this agent did not expect for the request.
    #[error("unexpected answer from the broker: {0}")]
    Unexpected(String),
    /// Refused on policy grounds, with the broker's rejection code.
    #[error("refused by the {by}: {rejection}")]
    Refused {
        /// The agent (early) or the broker.
        by: RefusedBy,
        /// Code, check and reason.
        rejection: Rejection,
    },
    /// A payload, envelope, key or record did not pass the schemas crate's checks.
    #[error(transparent)]
    Schema(#[from] ketenpost_schemas::Error),
    /// The thing asked for does not exist (or no longer does).
    #[error("{what} {id} not found")]
    NotFound {
        /// What was looked up.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A request from the partner system is incomplete or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The agent has no verified federation documents yet.
    #[error("the agent has no verified federation documents yet")]
    NotReady,
    /// The local HTTP API answered with an error (CLI side).
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code from the JSON body.
        code: String,
        /// The readable message.
        message: String,
    },
    /// The local HTTP API could not be reached (CLI side).
    #[error("cannot reach the agent's API at {addr}: {reason}")]
    ApiUnreachable {
        /// Where it was looked for.
        addr: String,
        /// Why it failed.
        reason: String,
    },
}

impl Error {
    /// A refusal by the agent's early check.
    pub fn refused_early(rejection: Rejection) -> Self {
        Error::Refused {
            by: RefusedBy::Agent,
            rejection,
        }
    }

    /// A refusal by the broker.
    pub fn refused_by_broker(rejection: Rejection) -> Self {
        Error::Refused {
            by: RefusedBy::Broker,
            rejection,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what,
            reason: e.to_string(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl std::fmt::Display) -> Self {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }
}
