//! The federation documents in force at the broker: the signed policy and directory, and
//! the CRLs, loaded at start and reloaded while the broker runs.
//!
//! [`load`] reads and verifies one consistent set from the files the configuration names.
//! [`Documents::may_replace`] decides whether a newly read set may take the place of the
//! current one: the same covenant and broker key, and never an older version (the
//! directory serial, which the directory binds the policy to by its digest, and every
//! CRL's number). The server swaps the set in one step, so a request sees either the old
//! or the new set, never a mix.

use std::collections::BTreeSet;
use std::path::Path;

use ketenpost_core::checks::{self, Env, SenderKeys};
use ketenpost_schemas::digest::sha256_hex;
use ketenpost_schemas::directory::{self, Directory};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, SignatureCheck, VerifyingKey};
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::protocol;
use ketenpost_transport::revocation::Revocations;
use ketenpost_transport::tls;

use crate::config::BrokerConfig;

/// Why a set of documents could not be loaded or may not replace the current one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentsError {
    /// A file could not be read.
    // The causes are in the message, not chained as sources, so `{:#}` does not print
    // them twice.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A signature, a document or a key is invalid.
    #[error("{what}: {cause}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        cause: ketenpost_schemas::Error,
    },
    /// A CRL could not be read or parsed.
    #[error(transparent)]
    Crl(#[from] tls::TlsError),
    /// The set is valid but may not replace the one in force.
    #[error("{0}")]
    Refused(String),
}

/// One verified set of federation documents.
#[derive(Debug)]
pub struct Documents {
    /// The covenant policy.
    pub policy: Policy,
    /// The partner directory.
    pub directory: Directory,
    /// The signed texts as agents fetch them.
    pub raw: protocol::Documents,
    /// Every party's verifying keys, parsed once.
    pub sender_keys: SenderKeys,
    /// What the CRLs revoke, and their numbers.
    pub revocations: Revocations,
    /// SHA-256 over every file of the set, to notice a change without parsing.
    pub digest: String,
}

/// The raw bytes of the files of a set.
struct Files {
    policy: Vec<u8>,
    policy_sig: String,
    directory: Vec<u8>,
    directory_sig: String,
    crls: Vec<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, DocumentsError> {
    std::fs::read(path).map_err(|cause| DocumentsError::Read {
        path: path.display().to_string(),
        cause,
    })
}

fn read_files(config: &BrokerConfig) -> Result<Files, DocumentsError> {
    let f = &config.federation;
    let text = |p: &Path| {
        String::from_utf8(read(p)?).map_err(|_| DocumentsError::Invalid {
            what: "signature file",
            cause: ketenpost_schemas::Error::BadSignature("document"),
        })
    };
    Ok(Files {
        policy: read(&f.policy)?,
        policy_sig: text(&f.policy_sig)?,
        directory: read(&f.directory)?,
        directory_sig: text(&f.directory_sig)?,
        crls: config
            .tls
            .crls
            .iter()
            .map(|p| read(p))
            .collect::<Result<_, _>>()?,
    })
}

fn digest_of(files: &Files) -> String {
    let mut all = Vec::new();
    for part in [
        files.policy.as_slice(),
        files.policy_sig.as_bytes(),
        files.directory.as_slice(),
        files.directory_sig.as_bytes(),
    ]
    .into_iter()
    .chain(files.crls.iter().map(Vec::as_slice))
    {
        all.extend_from_slice(sha256_hex(part).as_bytes());
    }
    sha256_hex(&all)
}

/// Whether the files the configuration names changed since `current` was loaded (without
/// verifying them again): their digest when they did.
pub fn changed(
    config: &BrokerConfig,
    current: &Documents,
) -> Result<Option<String>, DocumentsError> {
    let digest = digest_of(&read_files(config)?);
    Ok((digest != current.digest).then_some(digest))
}

/// Read and verify the set the configuration names, against the federation key.
pub fn load(config: &BrokerConfig, federation: &VerifyingKey) -> Result<Documents, DocumentsError> {
    let files = read_files(config)?;
    let digest = digest_of(&files);
    let invalid = |what| move |cause| DocumentsError::Invalid { what, cause };
    let (policy, directory) = directory::load_signed_documents(
        federation,
        (&files.policy, &files.policy_sig),
        (&files.directory, &files.directory_sig),
    )
    .map_err(invalid(
        "the policy and directory do not verify against the federation key",
    ))?;
    let mut crls = Vec::new();
    for p in &config.tls.crls {
        crls.extend(tls::load_crls(p)?);
    }
    let raw = protocol::Documents {
        policy: String::from_utf8(files.policy).map_err(|_| DocumentsError::Invalid {
            what: "policy",
            cause: ketenpost_schemas::Error::Policy {
                line: None,
                column: None,
                message: "policy is not UTF-8".into(),
            },
        })?,
        policy_sig: files.policy_sig,
        directory: String::from_utf8(files.directory).map_err(|_| DocumentsError::Invalid {
            what: "directory",
            cause: ketenpost_schemas::Error::Directory("directory is not UTF-8".into()),
        })?,
        directory_sig: files.directory_sig,
    };
    Ok(Documents {
        sender_keys: checks::sender_keys(&directory),
        revocations: Revocations::of(&crls),
        policy,
        directory,
        raw,
        digest,
    })
}

/// The federation public key the configuration pins.
pub fn federation_key(config: &BrokerConfig) -> Result<VerifyingKey, DocumentsError> {
    let path = &config.federation.public_key;
    let text = String::from_utf8(read(path)?).unwrap_or_default();
    keys::verifying_key_from_text(&text).map_err(|cause| DocumentsError::Invalid {
        what: "federation public key",
        cause,
    })
}

/// Why the documents in force do not admit a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// The OIN is not an active party.
    NotActive,
    /// The certificate is not the one the directory lists (nor a previous one in its
    /// rotation overlap).
    NotInDirectory,
    /// A CRL in force lists the certificate.
    Revoked,
}

/// What a reload changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new directory version (and with it perhaps a new policy).
    Directory,
    /// The same directory version; only the CRLs changed.
    Crls,
}

impl Documents {
    /// The decision environment over these documents, with header signatures checked by
    /// `signatures`.
    pub fn env<'a>(
        &'a self,
        limits: &'a Limits,
        max_clock_skew: chrono::Duration,
        signatures: &'a dyn SignatureCheck,
    ) -> Env<'a> {
        Env {
            policy: &self.policy,
            directory: &self.directory,
            limits,
            keys: Some(&self.sender_keys),
            max_clock_skew,
            signatures,
        }
    }

    /// The directory serial.
    pub fn serial(&self) -> u64 {
        self.directory.serial
    }

    /// Whether `new` may replace these documents, and what it changes.
    pub fn may_replace(&self, new: &Documents) -> Result<Change, DocumentsError> {
        let refuse = |m: String| Err(DocumentsError::Refused(m));
        if new.policy.covenant.id != self.policy.covenant.id {
            return refuse(format!(
                "the new documents are for covenant '{}', this broker serves '{}'",
                new.policy.covenant.id, self.policy.covenant.id
            ));
        }
        if new.directory.broker.signing_key != self.directory.broker.signing_key
            || new.directory.broker.cert_fingerprint != self.directory.broker.cert_fingerprint
        {
            return refuse(
                "the new directory lists another broker key or certificate; a broker key \
                 change needs a restart with the new key"
                    .into(),
            );
        }
        if !new.revocations.not_older_than(&self.revocations) {
            return refuse("a CRL has a lower CRL number than the one in force (rollback)".into());
        }
        let same_texts =
            new.raw.policy == self.raw.policy && new.raw.directory == self.raw.directory;
        match new.serial().cmp(&self.serial()) {
            std::cmp::Ordering::Greater => Ok(Change::Directory),
            std::cmp::Ordering::Equal if same_texts => Ok(Change::Crls),
            std::cmp::Ordering::Equal => refuse(format!(
                "directory serial {} is in force with other contents; a new version needs a \
                 higher serial",
                self.serial()
            )),
            std::cmp::Ordering::Less => refuse(format!(
                "directory serial {} is older than serial {} in force (rollback)",
                new.serial(),
                self.serial()
            )),
        }
    }

    /// Whether a connection with this certificate may act as `oin` under these documents
    /// at `now`: an active party, the certificate the directory lists (or a previous one in
    /// its rotation overlap), not revoked by a CRL.
    pub fn admits(
        &self,
        oin: &Oin,
        fingerprint: &str,
        serial: Option<&[u8]>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), NotAdmitted> {
        let party = self
            .directory
            .active_party(oin)
            .ok_or(NotAdmitted::NotActive)?;
        if !party.accepts_certificate(fingerprint, now) {
            return Err(NotAdmitted::NotInDirectory);
        }
        if serial.is_some_and(|s| self.revocations.revokes(s)) {
            return Err(NotAdmitted::Revoked);
        }
        Ok(())
    }

    /// The OINs of the parties, active or not.
    pub fn oins(&self) -> BTreeSet<&Oin> {
        self.directory.parties.iter().map(|p| &p.oin).collect()
    }
}
