//! # ketenpost-agent
//!
//! What a partner organisation (a municipality, housing corporation, care provider) runs.
//! Its own systems talk to the agent over a local HTTP API; the agent talks to the
//! covenant's broker over QUIC with mTLS. It seals every message for its recipients'
//! views, keeps it in a durable outbox until the broker answers, receives, verifies,
//! decrypts and receipts what comes in, and deletes what it may no longer keep.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the TOML configuration, parsed once; key files and the API token |
//! | [`documents`] | the signed policy and directory, verified against the pinned federation key |
//! | [`mirror`] | the local copy of cases and consents the agent knows (the broker is authoritative) |
//! | [`resolve`] | a send request resolved into a message, and the early refusal: core's checks over the mirror, before anything is stored or sent |
//! | [`outbox`] | outbox entries and their status: queued, accepted, rejected, delivered, expired |
//! | [`inbox`] | opening a delivery (pure), inbox entries, receipts, refused deliveries |
//! | [`deletion`] | deletion orders carried out and their signed confirmations |
//! | [`retention`] | local retention decisions, pure |
//! | [`audit`] | the agent's own hash-chained audit trail (early refusals, broker answers, receipts, refused deliveries, deletions) |
//! | [`checkpoints`] | the broker's audit checkpoints seen, and the verdict on a new one |
//! | [`store`] | the sled database |
//! | [`link`] | the broker connection, reconnecting |
//! | [`backoff`] | exponential backoff with jitter |
//! | [`sync`] | the background loops: submit, fetch, checkpoints, documents, retention |
//! | [`ops`] | the operations, implemented once for the API and the loops ([`Core`]) |
//! | [`agent`] | startup and shutdown |
//! | [`api`] | the local HTTP API (axum) |
//! | [`client`], [`cli`] | the API client and the command line over it |
//!
//! Decisions (resolving a request, retention, checkpoint verdicts, opening a delivery, status)
//! are pure functions that take `now`; I/O lives in [`store`], [`link`], [`sync`] and
//! [`api`]. Nothing logs or returns payload content or personal data: logs carry message
//! ids, kinds, case references (pseudonyms), OINs and codes.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod backoff;
pub mod checkpoints;
pub mod cli;
pub mod client;
pub mod config;
pub mod deletion;
pub mod documents;
mod error;
pub mod inbox;
pub mod keygen;
pub mod link;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod outbox;
pub mod resolve;
pub mod retention;
pub mod rights;
pub mod store;
pub mod sync;
pub mod vault;

pub use agent::Agent;
pub use config::AgentConfig;
pub use error::{Error, RefusedBy};
pub use ops::Core;
pub use resolve::{SendRequest, To};
