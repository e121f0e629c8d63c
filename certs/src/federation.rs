//! The federation manifest (`federation.toml`) and the [`Federation`] read back from it.
//!
//! The manifest is the one file tests, the demo and the end-to-end harness read to find
//! everything else: paths in it are relative to the federation directory, so the directory
//! can be moved. [`Federation::load`] turns them into absolute paths.

use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use ketenpost_schemas::directory::{self, Directory, FgScope};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, VerifyingKey};
use ketenpost_schemas::policy::{Policy, Role};
use serde::{Deserialize, Serialize};

use crate::Error;

/// File name of the manifest inside the federation directory.
pub const MANIFEST_FILE: &str = "federation.toml";

/// The version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// A dev federation on disk: where every certificate, key and signed document is.
///
/// Returned by [`crate::init`] and [`Federation::load`]; all paths are absolute. Serialised
/// (with paths relative to [`Federation::dir`]) it is `federation.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// Manifest format version ([`MANIFEST_FORMAT`]), so a future layout is recognised.
    pub format: u32,
    /// The covenant id, as in the policy and the directory.
    pub covenant: String,
    /// When the federation was created; certificate validity is counted from here.
    pub created_at: DateTime<Utc>,
    /// The federation directory itself (absolute). Not stored in the manifest.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The federation signing key, which signs the policy and the directory and which
    /// agents pin. In production it is kept offline.
    pub federation: FederationKeyFiles,
    /// The dev CA: trust anchor for both the broker's server certificate and the partners'
    /// client certificates.
    pub ca: CaFiles,
    /// The covenant policy (an exact copy of the input) and its signature.
    pub policy: SignedFile,
    /// The partner directory (JSON) and its signature.
    pub directory: SignedFile,
    /// The broker's TLS and checkpoint keys.
    pub broker: BrokerFiles,
    /// Deliberately bad client certificates, for tests that the broker refuses them.
    pub negative: NegativeFiles,
    /// Every party, in roster order.
    #[serde(rename = "party")]
    pub parties: Vec<PartyFiles>,
    /// The FGs' credentials: one per party, then the federation's FG.
    #[serde(default, rename = "fg")]
    pub fgs: Vec<FgFiles>,
}

/// An FG's certificate and key, listed in the directory's `fgs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgFiles {
    /// The OIN of the FG's organisation (in the certificate's subject serialNumber).
    pub oin: Oin,
    /// The FG's name in the directory.
    pub name: String,
    /// Whose records it reads.
    pub scope: FgScope,
    /// Its client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), mode 0600.
    pub key: PathBuf,
}

/// The federation key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationKeyFiles {
    /// Secret ed25519 key, text form (`ed25519-secret:...`), mode 0600.
    pub signing_key: PathBuf,
    /// Public key, base64: what broker and agents pin.
    pub public_key: PathBuf,
}

/// The dev CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    /// CA certificate (PEM): the trust anchor.
    pub cert: PathBuf,
    /// CA private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
    /// CRL (PEM) listing the revoked negative certificate.
    pub crl: PathBuf,
}

/// A document and its detached signature by the federation key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedFile {
    /// The document, byte for byte as signed.
    pub file: PathBuf,
    /// The `.sig` file: base64 ed25519 signature over the document's exact bytes.
    pub sig: PathBuf,
}

/// The broker's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFiles {
    /// The broker's name in the directory.
    pub name: String,
    /// TLS server certificate (PEM), from the dev CA.
    pub cert: PathBuf,
    /// TLS private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
    /// ed25519 key for audit checkpoints (text form), mode 0600; its public half is in the
    /// directory.
    pub signing_key: PathBuf,
    /// The names the server certificate is valid for (SAN).
    pub server_names: Vec<String>,
}

/// One party's files, all inside [`PartyFiles::dir`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyFiles {
    /// The party's OIN (also the name of its directory).
    pub oin: Oin,
    /// Organisation name.
    pub name: String,
    /// Its roles under the policy.
    pub roles: Vec<Role>,
    /// `parties/<oin>`.
    pub dir: PathBuf,
    /// mTLS client certificate (PEM).
    pub cert: PathBuf,
    /// mTLS private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
    /// ed25519 signing key (text form), mode 0600.
    pub signing_key: PathBuf,
    /// age X25519 identity (`AGE-SECRET-KEY-1...`), mode 0600.
    pub age_key: PathBuf,
    /// `party.toml`: oin, name and roles, for the agent's configuration.
    pub party_toml: PathBuf,
}

/// A client certificate and key of the negative material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The OIN in the certificate's subject serialNumber.
    pub oin: Oin,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), mode 0600.
    pub key: PathBuf,
}

/// Client certificates a broker must refuse, each for a different reason. All but
/// `wrong_oin` carry the first party's OIN, so only the certificate itself is at fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeFiles {
    /// From our CA, but its validity ended yesterday.
    pub expired: CertFiles,
    /// From our CA and currently valid, but listed in the CRL.
    pub revoked: CertFiles,
    /// Serial number of the revoked certificate (lowercase hex), as listed in the CRL.
    pub revoked_serial: String,
    /// Issued by a foreign CA that nobody trusts.
    pub foreign: CertFiles,
    /// The foreign CA's certificate (PEM), for tests that want to show the chain differs.
    pub foreign_ca: PathBuf,
    /// From our CA and valid, but for an OIN that is not in the directory.
    pub wrong_oin: CertFiles,
}

impl Federation {
    /// Read `federation.toml` from `dir` and resolve its paths against `dir`.
    ///
    /// Fails with [`Error::Manifest`] when the manifest is missing, does not parse, has an
    /// unknown format, or names a path outside `dir` (absolute, or with `..`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Federation, Error> {
        let dir = dir.as_ref();
        let manifest = dir.join(MANIFEST_FILE);
        let bad = |reason: String| Error::Manifest {
            path: manifest.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&manifest).map_err(|e| bad(e.to_string()))?;
        let mut fed: Federation = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if fed.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {} is not the supported format {MANIFEST_FORMAT}",
                fed.format
            )));
        }
        let base = std::path::absolute(dir).map_err(|e| bad(e.to_string()))?;
        for p in fed.paths_mut() {
            if !is_inside(p) {
                return Err(bad(format!(
                    "path '{}' leaves the federation directory",
                    p.display()
                )));
            }
            *p = base.join(&*p);
        }
        fed.dir = base;
        Ok(fed)
    }

    /// The FG credential of `oin`'s organisation with `scope`.
    pub fn fg(&self, oin: &Oin, scope: FgScope) -> Option<&FgFiles> {
        self.fgs.iter().find(|f| &f.oin == oin && f.scope == scope)
    }

    /// The federation FG's credential.
    pub fn federation_fg(&self) -> Option<&FgFiles> {
        self.fgs.iter().find(|f| f.scope == FgScope::Covenant)
    }

    /// The party with this OIN.
    pub fn party(&self, oin: &Oin) -> Option<&PartyFiles> {
        self.parties.iter().find(|p| &p.oin == oin)
    }

    /// The federation's public key, which broker and agents pin.
    pub fn federation_public_key(&self) -> Result<VerifyingKey, Error> {
        let path = &self.federation.public_key;
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        keys::verifying_key_from_text(&text).map_err(|source| Error::Schemas {
            what: "federation public key",
            source,
        })
    }

    /// The policy, after checking its signature against the federation key.
    pub fn load_policy(&self) -> Result<Policy, Error> {
        let key = self.federation_public_key()?;
        let (bytes, sig) = self.policy.read()?;
        directory::load_signed_policy(&key, &bytes, &sig).map_err(|source| Error::Schemas {
            what: "signed policy",
            source,
        })
    }

    /// The directory, after checking its signature against the federation key and its
    /// contents against `policy`.
    pub fn load_directory(&self, policy: &Policy) -> Result<Directory, Error> {
        let key = self.federation_public_key()?;
        let (bytes, sig) = self.directory.read()?;
        directory::load_signed_directory(&key, &bytes, &sig, policy).map_err(|source| {
            Error::Schemas {
                what: "signed directory",
                source,
            }
        })
    }

    /// Every path in the manifest, for resolving them in one place.
    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut v = vec![
            &mut self.federation.signing_key,
            &mut self.federation.public_key,
            &mut self.ca.cert,
            &mut self.ca.key,
            &mut self.ca.crl,
            &mut self.policy.file,
            &mut self.policy.sig,
            &mut self.directory.file,
            &mut self.directory.sig,
            &mut self.broker.cert,
            &mut self.broker.key,
            &mut self.broker.signing_key,
            &mut self.negative.expired.cert,
            &mut self.negative.expired.key,
            &mut self.negative.revoked.cert,
            &mut self.negative.revoked.key,
            &mut self.negative.foreign.cert,
            &mut self.negative.foreign.key,
            &mut self.negative.foreign_ca,
            &mut self.negative.wrong_oin.cert,
            &mut self.negative.wrong_oin.key,
        ];
        for f in &mut self.fgs {
            v.extend([&mut f.cert, &mut f.key]);
        }
        for p in &mut self.parties {
            v.extend([
                &mut p.dir,
                &mut p.cert,
                &mut p.key,
                &mut p.signing_key,
                &mut p.age_key,
                &mut p.party_toml,
            ]);
        }
        v
    }
}

impl SignedFile {
    /// The document's bytes and the signature text.
    pub fn read(&self) -> Result<(Vec<u8>, String), Error> {
        let bytes = std::fs::read(&self.file).map_err(|e| Error::read(&self.file, e))?;
        let sig = std::fs::read_to_string(&self.sig).map_err(|e| Error::read(&self.sig, e))?;
        Ok((bytes, sig))
    }
}

/// A relative path made only of normal components.
fn is_inside(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_inside() {
        assert!(is_inside(Path::new("ca/ca.pem")));
        assert!(!is_inside(Path::new("/etc/passwd")));
        assert!(!is_inside(Path::new("../x")));
        assert!(!is_inside(Path::new("a/../../x")));
        assert!(!is_inside(Path::new("")));
    }
}
