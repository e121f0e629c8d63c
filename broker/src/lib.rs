//! # ketenpost-broker
//!
//! The broker of one covenant region. It authenticates partners over mTLS (QUIC), checks
//! every submitted message against the covenant policy on the metadata it can see, queues
//! accepted messages durably per recipient, keeps a tamper-evident audit trail and deletes
//! bodies as soon as it no longer may keep them. It never sees case content.
//!
//! | module | what it holds |
//! |---|---|
//! | [`checks`] | the checks of every submission and control record, pure functions |
//! | [`deadlines`] | `send_within` and `answer_within`: answer clocks and due notices, pure |
//! | [`breach`] | breach routing: who exchanged messages about the affected cases, pure |
//! | [`report`] | the FG's view of the audit trail: filters, reports, JSONL/CSV/HTML exports, pure |
//! | [`registry`] | cases and consents as data, and the `Registry` view the checks read |
//! | [`config`] | the TOML configuration, parsed once |
//! | [`server`] | the QUIC server: connections, requests, timers, shutdown |
//! | [`store`] | sled trees: message metadata, per-recipient queues, notices, registries, group commit |
//! | [`spool`] | message bodies in append-only segment files, zeroed in place when deleted |
//! | [`audit`] | the hash-chained audit trail, signed checkpoints, `audit verify` |
//! | [`fg`] | the `ketenpost-broker audit` reports over a stopped broker's data directory |
//! | [`tls`] | QUIC + mTLS configuration (TLS 1.3 only, client certificates and CRLs), the peer's OIN |
//! | [`client`] | the client side of the protocol for agents and tests: connect, request, close |
#![forbid(unsafe_code)]

pub mod audit;
pub mod breach;
pub mod checks;
pub mod client;
pub mod config;
pub mod deadlines;
pub mod fg;
pub mod registry;
pub mod report;
pub mod server;
pub mod spool;
pub mod store;
pub mod tls;
