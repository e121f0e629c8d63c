//! # ketenpost-schemas
//!
//! Everything a ketenpost broker and agent agree on, with no I/O and no async runtime:
//!
//! | module | what it holds |
//! |---|---|
//! | [`ids`] | organisation ids (OIN), message ids, case references, trace ids |
//! | [`kind`] | the message kinds (built in, or declared by a covenant) and the data categories a field can belong to |
//! | [`payload`] | typed payloads of the built-in kinds, every content kind's schema with its categories ([`payload::KindSchema`]), views and validation |
//! | [`control`] | records the broker reads itself: consent, case lifecycle, receipts, deletion |
//! | [`envelope`] | the wire envelope: signed header, one age-encrypted body per view |
//! | [`digest`] | content digests (SHA-256 as hex) |
//! | [`seal`] | building views per recipient role, sealing and opening envelopes |
//! | [`policy`] | the covenant as code: roles, declared kinds, purposes, kinds, views, deadlines, retention |
//! | [`duration`], [`calendar`] | policy durations, including Dutch workdays |
//! | [`directory`] | the partner directory and federation signatures |
//! | [`keys`] | key material formats (ed25519 signing keys, age identities) |
//! | [`cert`] | the OIN and fingerprint of a partner's X.509 certificate |
//! | [`protocol`] | the broker protocol: request and response frames, rejection codes |
//! | [`rights`] | the data subject's access request (AVG art. 15): query and facts |
//!
//! ## Dutch words used in this crate
//! The covenants are Dutch; where they name a concept that has no exact English word, the
//! code keeps the Dutch word. Each is defined once, here:
//!
//! - **aanmelding**: a referral of a client, typically by a care provider (zorgaanbieder)
//!   when the client leaves sheltered housing or social relief, to a hub, municipality or
//!   housing corporation.
//! - **aanmeldbericht**: the short notice of six fields that the Friesland Transferpunt
//!   sends to a housing corporation (seed 002:1461-1473).
//! - **signaal**: a signal about a client, such as nuisance (overlast), care avoidance
//!   (zorgmijding) or rent arrears (huurachterstand), shared among the case team.
//! - **reactie**: the answer to a signal ("terugkoppeling"), with the steps taken.
//! - **datalek-melding**: a personal-data breach notice between the partners.
//! - **verstrekking aan derden**: a disclosure to a third party under a court order or a
//!   legal duty, which the other partners must be told about.
//! - **toestemming**: the client's consent to share data among named parties for one purpose.
//! - **regievoerder**: the party that directs a case (usually the municipality).
//! - **FG** (functionaris gegevensbescherming): the data protection officer of a party.
//! - **OIN** (Organisatie-identificatienummer): the 20-digit id of a Dutch public-sector
//!   organisation, carried in the subject serialNumber of its PKIoverheid certificate.
#![forbid(unsafe_code)]

pub mod calendar;
pub mod cert;
pub mod control;
pub mod digest;
pub mod directory;
pub mod duration;
pub mod envelope;
mod error;
pub mod explain;
pub mod ids;
pub mod keys;
pub mod kind;
pub mod payload;
pub mod policy;
pub mod protocol;
pub mod rights;
pub mod seal;

/// Fixtures for tests and examples (not part of the stable API).
#[doc(hidden)]
pub mod testdata {
    /// A small covenant policy with three roles, two purposes and every content kind.
    pub const TEST_POLICY: &str = include_str!("../testdata/test-covenant.toml");
}

pub use error::Error;
