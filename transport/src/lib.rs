//! # ketenpost-transport
//!
//! How broker and agents reach each other: QUIC with mutual TLS 1.3 (or the same TLS over
//! TCP where UDP is blocked), the partner's OIN
//! read off its verified client certificate, and the request/response client of the
//! broker protocol (frames in [`ketenpost_schemas::protocol`]). Shared by the broker (the
//! server side) and the agent (the client side), so the agent links no broker code.
//!
//! | module | what it holds |
//! |---|---|
//! | [`tls`] | QUIC + mTLS configuration (TLS 1.3 only, client certificates and CRLs), the peer's OIN |
//! | [`tcp`] | TLS over TCP: length-prefixed frames, the client's connection pool |
//! | [`client`] | the client side of the protocol over either transport: connect, request, close |
//! | [`durable`] | a sled flush that is durable: sled's flush and an `fdatasync` of its log |
//! | [`failpoint`] | crash points and a test clock for the crash tests (feature `failpoints`) |
//! | [`signal`] | the signals a process stops on (SIGINT, SIGTERM) |
#![forbid(unsafe_code)]

pub mod client;
pub mod durable;
mod error;
pub mod failpoint;
pub mod revocation;
pub mod signal;
pub mod tcp;
pub mod tls;
