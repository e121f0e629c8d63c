//! # ketenpost-certs
//!
//! Creates a complete local **dev federation** from a covenant policy: a CA, a TLS
//! certificate for the broker, for every party an mTLS client certificate, an ed25519
//! signing key and an age identity, the partner directory and the policy signed by a fresh
//! federation key, and a set of deliberately bad certificates for negative tests.
//!
//! ```text
//! <dir>/federation.toml                 manifest: every path below, relative (see Federation)
//! <dir>/federation/signing.key          federation ed25519 key (0600)   signs policy + directory
//! <dir>/federation/signing.pub          its public half (base64)        agents and broker pin it
//! <dir>/ca/ca.pem, ca/ca.key (0600)     dev CA, trust anchor for server and client certs
//! <dir>/ca/crl.pem                      CRL listing negative/revoked
//! <dir>/broker/cert.pem, key.pem (0600) server cert: SAN localhost, 127.0.0.1, ::1; serverAuth
//! <dir>/broker/signing.key (0600)       ed25519 key for audit checkpoints
//! <dir>/parties/<oin>/cert.pem          client cert: CN = O = name, serialNumber = OIN; clientAuth
//! <dir>/parties/<oin>/key.pem (0600)    its key
//! <dir>/parties/<oin>/signing.key (0600)  ed25519 key for headers, receipts, records
//! <dir>/parties/<oin>/age.key (0600)    age X25519 identity, AGE-SECRET-KEY-1...
//! <dir>/parties/<oin>/party.toml        oin, name, roles
//! <dir>/policy.toml, policy.toml.sig    exact copy of the input policy, signed (Context::Policy)
//! <dir>/directory.json, .sig            partner directory, signed (Context::Directory)
//! <dir>/negative/expired/               first party's OIN, our CA, validity ended yesterday
//! <dir>/negative/revoked/               first party's OIN, our CA, valid, but in ca/crl.pem
//! <dir>/negative/foreign/               first party's OIN, issued by negative/foreign/ca.pem
//! <dir>/negative/wrong-oin/             our CA, valid, for an OIN not in the directory
//! ```
//!
//! ## Why negative material
//! The broker's first check (DESIGN.md) is that the mTLS identity is a known, unrevoked
//! partner. That check is only tested if there are certificates that must fail it, each for
//! exactly one reason: the expired, revoked and foreign certificates carry a real party's
//! OIN, so a broker that accepted one would let an attacker act as that party; the
//! wrong-OIN certificate is perfectly valid, so only the directory lookup can refuse it.
//! Generating them with the federation, instead of checking in fixtures, keeps them valid
//! (or precisely invalid) relative to the CA of the run.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`init`](crate::init()) | [`InitOptions`] and [`init`]: generate everything in memory, then write it |
//! | [`federation`] | the manifest and [`Federation`], the federation read back from disk |
//! | [`roster`] | which parties exist: one per role by default, or a roster file |
//! | [`pki`] | CA, certificates, CRL; [`oin_from_cert_der`] and [`fingerprint`] |
//! | [`policy_file`] | a policy file on disk with its kinds' schema files, made self-contained for signing |
//!
//! Private keys are created with mode 0600 at `open` time (never chmod-ed later) and
//! nothing is overwritten unless `force` is given. This tool is for development and tests
//! only: in production the certificates come from PKIoverheid and the federation key is
//! kept offline (see the crate README).
#![forbid(unsafe_code)]

mod error;
pub mod federation;
mod init;
pub mod lifecycle;
pub mod pki;
pub mod policy_file;
pub mod revoke;
pub mod roster;

pub use error::Error;
pub use federation::Federation;
pub use init::{
    init, init_summary, InitOptions, BROKER_NAME, CA_NAME, FOREIGN_CA_NAME, WRITTEN_ENTRIES,
    WRONG_OIN_NAME,
};
pub use pki::{cert_der_from_pem, fingerprint, oin_from_cert_der};
pub use roster::{Roster, RosterParty};
