//! # ketenpost-broker
//!
//! The broker of one covenant region. It authenticates partners over mTLS (QUIC), checks
//! every submitted message against the covenant policy on the metadata it can see, queues
//! accepted messages durably per recipient, keeps a tamper-evident audit trail and deletes
//! bodies as soon as it no longer may keep them. It never sees case content.
//!
//! Every decision (the checks, receipts, deadlines, breach routing, expiry, retention) is
//! made by [`ketenpost_core`]; this crate stores, transports and applies its effects.
//!
//! | module | what it holds |
//! |---|---|
//! | [`report`] | the FG's view of the audit trail: filters, reports, JSONL/CSV/HTML exports (`ketenpost_audit::report`, re-exported) |
//! | [`requests`] | the FG's report of data subjects' requests (access, deletion, correction) with their terms (`ketenpost_audit::requests`, re-exported) |
//! | [`config`] | the TOML configuration, parsed once |
//! | [`server`] | the QUIC server: connections, requests, timers, shutdown; submit, records and sweep submodules |
//! | [`store`] | sled trees: message metadata, per-recipient queues, notices, registries, group commit |
//! | [`spool`] | message bodies in append-only segment files, zeroed in place when deleted |
//! | [`direct`] | appends around the page cache (`O_DIRECT`), for the audit archive |
//! | [`audit`] | the hash-chained audit trail, signed checkpoints, `audit verify` |
//! | [`verify`] | batch verification of signatures with `verify_strict`'s verdict: measured, not used (see its docs) |
//! | [`fg`] | the `ketenpost-broker audit` reports over a stopped broker's data directory |
//! | [`fg_cli`] | an `audit <report>` as the command line asks for it: offline or live |
//! | [`rehearsal`] | `rehearse`: a sweep at a later time on a scratch copy of a backup |
//! | [`daemon`] | `serve` as a process: runtime, signals (reload, backup, shutdown) |
#![forbid(unsafe_code)]

pub mod alerts;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod direct;
pub mod documents;
pub mod failpoint;
pub mod fg;
pub mod fg_cli;
pub mod metrics;
pub mod rehearsal;
pub use ketenpost_audit::report;
pub use ketenpost_audit::requests;
pub mod server;
pub mod spool;
pub mod store;
pub mod verify;
