//! The partner directory and federation signatures.
//!
//! The directory lists every party of the covenant: its OIN, name, roles, the ed25519 key it
//! signs with, the age recipient it receives on, the fingerprint of its mTLS certificate and
//! its FG's contact. The federation operator signs it, and the policy, with the federation
//! key; agents pin that key, so a broker cannot swap a recipient's encryption key.
//!
//! On disk a signed document is the document file plus a `.sig` file holding the base64
//! signature over its exact bytes ([`crate::keys::Context::Directory`] or
//! [`crate::keys::Context::Policy`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::Oin;
use crate::keys::{self, Context, SigningKey, VerifyingKey};
use crate::policy::{Policy, Role};
use crate::Error;

/// Largest directory or policy document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// The signed list of the covenant's parties.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// The covenant id this directory belongs to (must match the policy).
    pub covenant: String,
    /// Increases with every new version, so an old directory cannot be replayed.
    pub serial: u64,
    /// When the federation operator issued it.
    pub issued_at: DateTime<Utc>,
    /// SHA-256 (lowercase hex) of the exact policy file this directory goes with. It binds
    /// the policy to the directory's serial: a policy change is a new directory version,
    /// and an older policy served with a newer directory does not load (rollback).
    #[serde(deserialize_with = "crate::ids::sha256_hex")]
    pub policy_sha256: String,
    /// The broker of this covenant region.
    pub broker: BrokerEntry,
    /// Every party.
    pub parties: Vec<Party>,
    /// The FGs who may read the running broker's audit trail, each with its own
    /// certificate and scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fgs: Vec<FgEntry>,
}

/// Whose records an FG may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FgScope {
    /// The records its own organisation is party to.
    Organisation,
    /// Every record of the covenant: the federation's FG.
    Covenant,
}

/// An FG's credential: the certificate (with the organisation's OIN in subject
/// serialNumber) its reports are read with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FgEntry {
    /// The OIN of the FG's organisation (a party, for scope `organisation`).
    pub oin: Oin,
    /// What the FG is called in reports (a function, e.g. "FG Gemeente Vlissingen").
    pub name: String,
    /// SHA-256 (hex) of the FG's certificate.
    pub cert_fingerprint: String,
    /// Whose records it reads.
    pub scope: FgScope,
}

/// The broker's entry: the key its audit checkpoints are signed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerEntry {
    /// Name of the broker's operator.
    pub name: String,
    /// ed25519 public key (base64) for audit checkpoints and broker notices.
    pub signing_key: String,
    /// SHA-256 (hex) of the broker's TLS certificate (DER).
    pub cert_fingerprint: String,
}

/// One party of the covenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// The party's OIN; its mTLS certificate carries the same in subject serialNumber.
    pub oin: Oin,
    /// Organisation name.
    pub name: String,
    /// Roles the party has under the policy.
    pub roles: Vec<Role>,
    /// ed25519 public key (base64) its headers and records are signed with.
    pub signing_key: String,
    /// age X25519 recipient (`age1...`) its bodies are encrypted to.
    pub age_recipient: String,
    /// SHA-256 (hex) of its mTLS client certificate (DER).
    pub cert_fingerprint: String,
    /// How to reach the party's FG (an office address, not a person's private data).
    pub fg_contact: String,
    /// A revoked party may neither send nor receive.
    #[serde(default)]
    pub revoked: bool,
    /// Keys the party had before its last rotations. Each stays valid for verifying what
    /// the party signed, and its certificate for connecting, until `valid_until`: the
    /// overlap in which messages signed before the rotation are still delivered and an
    /// agent switches to its new keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKeys>,
}

/// What a partner sends the federation operator to join (or to rotate its keys): its
/// public keys, made by `ketenpost-agent keygen` next to a certificate request (CSR) for
/// its TLS key. Only public halves: private keys never leave the partner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentRequest {
    /// The partner's OIN.
    pub oin: Oin,
    /// Organisation name.
    pub name: String,
    /// ed25519 public key (base64).
    pub signing_key: String,
    /// age X25519 recipient (`age1...`).
    pub age_recipient: String,
    /// How to reach the partner's FG (an office address).
    pub fg_contact: String,
}

impl EnrolmentRequest {
    /// Check the keys parse and the texts are plain lines.
    pub fn check(&self) -> Result<(), Error> {
        keys::verifying_key_from_text(&self.signing_key)?;
        keys::age_recipient_from_text(&self.age_recipient)?;
        for (what, text) in [("name", &self.name), ("fg_contact", &self.fg_contact)] {
            if text.trim().is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
                return Err(Error::Directory(format!(
                    "the enrolment request's {what} must be one line of 1-200 characters"
                )));
            }
        }
        Ok(())
    }
}

/// A party's keys before a rotation, with the end of their overlap window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviousKeys {
    /// The former ed25519 public key (base64).
    pub signing_key: String,
    /// The former age recipient: bodies are no longer encrypted to it, it is listed so
    /// the FG can see which key older bodies were sealed for.
    pub age_recipient: String,
    /// SHA-256 (hex) of the former mTLS certificate.
    pub cert_fingerprint: String,
    /// Until when the former key verifies and the former certificate connects.
    pub valid_until: DateTime<Utc>,
}

/// A certificate fingerprint is the lowercase hex SHA-256 of the DER certificate: 64
/// characters. An empty one would switch the broker's certificate pinning off.
fn check_fingerprint(whose: &str, fp: &str) -> Result<(), Error> {
    if fp.len() == 64 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(Error::Directory(format!(
            "{whose} has no valid cert_fingerprint: it must be the lowercase hex SHA-256 of \
             its certificate (64 characters), got {} characters",
            fp.len()
        )))
    }
}

impl Directory {
    /// Parse a directory document (JSON) and check it against the policy.
    pub fn from_json(bytes: &[u8], policy: &Policy) -> Result<Directory, Error> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::TooLarge {
                what: "directory",
                size: bytes.len(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let dir: Directory =
            serde_json::from_slice(bytes).map_err(|e| Error::Directory(e.to_string()))?;
        dir.check(policy)?;
        Ok(dir)
    }

    /// Check the directory against the policy: same covenant, unique OINs, known roles,
    /// keys that parse.
    pub fn check(&self, policy: &Policy) -> Result<(), Error> {
        if self.covenant != policy.covenant.id {
            return Err(Error::Directory(format!(
                "directory is for covenant '{}', the policy for '{}'",
                self.covenant, policy.covenant.id
            )));
        }
        keys::verifying_key_from_text(&self.broker.signing_key)?;
        check_fingerprint("the broker", &self.broker.cert_fingerprint)?;
        let mut seen = BTreeSet::new();
        for p in &self.parties {
            if !seen.insert(&p.oin) {
                return Err(Error::Directory(format!("OIN {} is listed twice", p.oin)));
            }
            if p.roles.is_empty() {
                return Err(Error::Directory(format!("party {} has no role", p.oin)));
            }
            for r in &p.roles {
                if !policy.has_role(r) {
                    return Err(Error::Directory(format!(
                        "party {} has role '{r}', which the policy does not define",
                        p.oin
                    )));
                }
            }
            keys::verifying_key_from_text(&p.signing_key)?;
            keys::age_recipient_from_text(&p.age_recipient)?;
            check_fingerprint(&format!("party {}", p.oin), &p.cert_fingerprint)?;
            for old in &p.previous_keys {
                keys::verifying_key_from_text(&old.signing_key)?;
                keys::age_recipient_from_text(&old.age_recipient)?;
                check_fingerprint(
                    &format!("a previous key of party {}", p.oin),
                    &old.cert_fingerprint,
                )?;
                if old.signing_key == p.signing_key {
                    return Err(Error::Directory(format!(
                        "party {} lists its current signing key as a previous key",
                        p.oin
                    )));
                }
            }
        }
        let mut fg_certs = BTreeSet::new();
        for f in &self.fgs {
            check_fingerprint(&format!("the FG of {}", f.oin), &f.cert_fingerprint)?;
            if !fg_certs.insert(&f.cert_fingerprint)
                || self
                    .parties
                    .iter()
                    .any(|p| p.cert_fingerprint == f.cert_fingerprint)
            {
                return Err(Error::Directory(format!(
                    "the FG certificate of {} is listed twice, or is a party's own certificate",
                    f.oin
                )));
            }
            if f.scope == FgScope::Organisation && self.party(&f.oin).is_none() {
                return Err(Error::Directory(format!(
                    "the FG of {} reads its organisation's records, but {} is not a party",
                    f.oin, f.oin
                )));
            }
        }
        Ok(())
    }

    /// The FG whose certificate has this fingerprint and OIN.
    pub fn fg(&self, oin: &Oin, fingerprint: &str) -> Option<&FgEntry> {
        self.fgs
            .iter()
            .find(|f| &f.oin == oin && f.cert_fingerprint == fingerprint)
    }

    /// The entry of a party, revoked or not.
    pub fn party(&self, oin: &Oin) -> Option<&Party> {
        self.parties.iter().find(|p| &p.oin == oin)
    }

    /// The entry of a party that is not revoked.
    pub fn active_party(&self, oin: &Oin) -> Option<&Party> {
        self.party(oin).filter(|p| !p.revoked)
    }

    /// The active parties that have `role`.
    pub fn with_role<'a>(&'a self, role: &'a Role) -> impl Iterator<Item = &'a Party> + 'a {
        self.parties
            .iter()
            .filter(move |p| !p.revoked && p.roles.contains(role))
    }

    /// The broker's checkpoint key.
    pub fn broker_key(&self) -> Result<VerifyingKey, Error> {
        keys::verifying_key_from_text(&self.broker.signing_key)
    }
}

impl Party {
    /// The party's signing key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, Error> {
        keys::verifying_key_from_text(&self.signing_key)
    }

    /// Every key a signature of this party may verify with at `now`: the current one
    /// first, then the previous keys whose overlap window has not ended. Keys that do not
    /// parse are left out (the directory check refuses them).
    pub fn verifying_keys_at(&self, now: DateTime<Utc>) -> Vec<VerifyingKey> {
        std::iter::once(self.signing_key.as_str())
            .chain(
                self.previous_keys
                    .iter()
                    .filter(|k| k.valid_until > now)
                    .map(|k| k.signing_key.as_str()),
            )
            .filter_map(|k| keys::verifying_key_from_text(k).ok())
            .collect()
    }

    /// Whether a certificate with this fingerprint may connect as this party at `now`:
    /// the current one, or a previous one inside its overlap window.
    pub fn accepts_certificate(&self, fingerprint: &str, now: DateTime<Utc>) -> bool {
        self.cert_fingerprint == fingerprint
            || self
                .previous_keys
                .iter()
                .any(|k| k.valid_until > now && k.cert_fingerprint == fingerprint)
    }

    /// The party's age recipient.
    pub fn recipient(&self) -> Result<age::x25519::Recipient, Error> {
        keys::age_recipient_from_text(&self.age_recipient)
    }

    /// Whether the party has `role`.
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}

/// Sign a directory or policy document with the federation key; returns the `.sig` text.
pub fn sign_document(federation: &SigningKey, context: Context, bytes: &[u8]) -> String {
    keys::signature_to_text(&keys::sign(federation, context, bytes))
}

/// Verify a document's `.sig` text against the pinned federation key.
pub fn verify_document(
    federation: &VerifyingKey,
    context: Context,
    bytes: &[u8],
    sig_text: &str,
) -> Result<(), Error> {
    let what = match context {
        Context::Policy => "policy",
        _ => "directory",
    };
    let sig = keys::signature_from_text(sig_text).map_err(|_| Error::BadSignature(what))?;
    keys::verify(federation, context, bytes, &sig, what)
}

/// Verify and parse a signed policy.
pub fn load_signed_policy(
    federation: &VerifyingKey,
    text: &[u8],
    sig_text: &str,
) -> Result<Policy, Error> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::TooLarge {
            what: "policy",
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    verify_document(federation, Context::Policy, text, sig_text)?;
    let text = std::str::from_utf8(text).map_err(|_| Error::Policy {
        line: None,
        column: None,
        message: "policy is not UTF-8".into(),
    })?;
    Policy::from_toml(text)
}

/// Verify and parse a signed policy and directory that belong together: both signatures,
/// the directory against the policy, and the directory's `policy_sha256` against the
/// policy's exact bytes (so an older policy cannot be served with a newer directory).
pub fn load_signed_documents(
    federation: &VerifyingKey,
    policy: (&[u8], &str),
    directory: (&[u8], &str),
) -> Result<(Policy, Directory), Error> {
    let parsed_policy = load_signed_policy(federation, policy.0, policy.1)?;
    let dir = load_signed_directory(federation, directory.0, directory.1, &parsed_policy)?;
    let digest = crate::digest::sha256_hex(policy.0);
    if dir.policy_sha256 != digest {
        return Err(Error::Directory(format!(
            "directory serial {} goes with another policy (its policy_sha256 is {}, the \
             policy's digest is {digest})",
            dir.serial, dir.policy_sha256
        )));
    }
    Ok((parsed_policy, dir))
}

/// Verify and parse a signed directory.
pub fn load_signed_directory(
    federation: &VerifyingKey,
    bytes: &[u8],
    sig_text: &str,
    policy: &Policy,
) -> Result<Directory, Error> {
    verify_document(federation, Context::Directory, bytes, sig_text)?;
    Directory::from_json(bytes, policy)
}
