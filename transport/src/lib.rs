//! # ketenpost-transport
//!
//! How broker and agents reach each other: QUIC with mutual TLS 1.3, the partner's OIN
//! read off its verified client certificate, and the request/response client of the
//! broker protocol (frames in [`ketenpost_schemas::protocol`]). Shared by the broker (the
//! server side) and the agent (the client side), so the agent links no broker code.
//!
//! | module | what it holds |
//! |---|---|
//! | [`tls`] | QUIC + mTLS configuration (TLS 1.3 only, client certificates and CRLs), the peer's OIN |
//! | [`client`] | the client side of the protocol: connect, request, close |
//! | [`failpoint`] | crash points and a test clock for the crash tests (feature `failpoints`) |
#![forbid(unsafe_code)]

pub mod client;
pub mod failpoint;
pub mod revocation;
pub mod tls;
