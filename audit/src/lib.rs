//! `ketenpost-audit`: the tamper-evident audit trail: records, entries, the chain,
//! checkpoints and verification (pure; no I/O). Used by the core, the broker, the agent
//! and the FG commands.
//!
//! Storing them is the broker's (`ketenpost_broker::audit::AuditTrail`, sled); reading and
//! checking them is shared by broker, agent and the FG tools.
//!
//! Every decision the broker takes about a message, a consent, a case, a deadline, a breach
//! notice or a deletion becomes one [`AuditRecord`], in the spirit of the Logboek
//! Dataverwerkingen and NEN 7513: what happened ([`AuditEvent`]), when, which organisation
//! acted, for which case reference, purpose and processing activity, with which
//! counterparties, and the outcome with a reason code.
//!
//! # What never enters a record
//! No payload content and no personal data. A record only carries OINs (organisation ids),
//! pseudonymous case references, message and trace ids, policy names (purpose, processing
//! activity, kind) and reason *codes*. The types enforce what they can: [`AuditEntry`] is
//! the only way to write a record, `AuditTrail::append` refuses an actor or counterparty
//! that is not a 20-digit OIN and identifiers that look like free text, and a reason can
//! only be a `&'static str` code (plus an optional fixed `&'static str` explanation), so
//! nothing read from the network can become a reason.
//!
//! # The chain
//! Records are numbered `seq = 1, 2, 3, ...` without gaps and stored in the sled tree
//! `audit` under the big-endian bytes of their `seq`, so sled's key order is seq order.
//! Each record holds `prev_hash`, the hash of the record before it (64 zeros for record 1),
//! and `hash`, its own hash:
//!
//! > **canonical bytes of a record** = the `serde_json` serialisation of the
//! > [`AuditRecord`] with its `hash` field set to the empty string `""` (fields in
//! > declaration order, optional fields omitted when absent, no whitespace);
//! > `hash` = lowercase hex of SHA-256 over those bytes.
//!
//! The value stored in sled is the `serde_json` serialisation of the complete record;
//! [`verify_chain`] also insists the stored bytes are exactly that (no extra fields, no
//! reformatting), so any byte-level edit is noticed.
//!
//! Record times never go backwards: a record is dated `max(now, time of the previous
//! record)`, which keeps the trail ordered by time as well as by seq even when concurrent
//! callers pass slightly different clocks (and lets `AuditTrail::records_between` use a
//! binary search).
//!
//! # Checkpoints
//! A hash chain alone does not stop whoever holds the database from rewriting all of it.
//! The broker therefore signs periodic [`Checkpoint`]s (`seq`, `head_hash`, `time`) with
//! its ed25519 key and hands them to agents. An agent that holds a checkpoint can later ask
//! the broker to prove the record at that seq still has that hash
//! (`AuditTrail::prove_extends`) and can compare checkpoints it holds
//! ([`Checkpoint::extends`]); `ketenpost-broker audit verify` ([`verify_chain`]) checks
//! every stored checkpoint against the records. Checkpoints live in the sled tree
//! `audit_checkpoints` under the big-endian bytes of their `seq`.
//!
//! > **signed bytes of a checkpoint** = the UTF-8 bytes of
//! > `format!("{seq}:{head_hash}:{time}")`, where `time` is RFC 3339 in UTC with a `Z`
//! > suffix and only as many fractional digits as needed (chrono
//! > `to_rfc3339_opts(SecondsFormat::AutoSi, true)`, see [`Checkpoint::time_text`]);
//! > the signature is `keys::sign(broker_key, Context::Checkpoint, bytes)`, so it is
//! > domain-separated from every other ketenpost signature. Checkpoint times are whole
//! > seconds, e.g. `42:ab12…:2025-03-01T09:30:00Z`.
//!
//! # Durability and concurrency
//! `AuditTrail::append` writes into sled but does not flush: the broker group-commits
//! with `db.flush_async()` before it answers `accepted`, so one fsync covers the queue
//! write and the audit record. `AuditTrail::checkpoint` does flush, because a checkpoint
//! handed to an agent must never cover records a crash could lose. Appends from many
//! threads are serialised by one mutex around the head of the chain, so seqs stay
//! contiguous and every `prev_hash` is right.
//!
//! Reading the trail is itself an event to audit ([`AuditEvent::AuditRead`]); that is the
//! reader's job (the FG report), not this module's.
#![forbid(unsafe_code)]

mod chain;
mod checkpoint;
mod record;
pub mod report;
pub mod requests;
mod text;
mod verify;

pub use chain::*;
pub use checkpoint::*;
pub use record::*;
pub use verify::*;
