//! Revoking a party's TLS certificate: a new CRL, signed by the federation CA, that lists
//! its serial besides every serial the current CRL lists.
//!
//! The broker checks client certificates against the CRL at every handshake; a revoked
//! certificate is refused even while the directory still lists the party. Marking the
//! party revoked in the directory ([`revoke_in_directory`]) also stops its signatures from
//! verifying and its name from being a recipient: a new directory version (serial + 1),
//! signed with the federation key.

use std::path::Path;

use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::Oin;
use time::OffsetDateTime;

use crate::federation::Federation;
use crate::lifecycle::write_atomically;
use crate::pki::{cert_der_from_pem, Ca};
use crate::Error;

/// How long a new CRL is valid (its nextUpdate): a year, as the CRL `init` writes.
const CRL_VALIDITY_DAYS: i64 = 365;

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The serial numbers (big-endian bytes) a PEM CRL lists.
pub fn crl_serials(pem: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| Error::BadCertificate(format!("the CRL is not PEM: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents)
        .map_err(|e| Error::BadCertificate(format!("the CRL does not parse: {e}")))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

/// The serial number (big-endian bytes) of a PEM certificate.
pub fn cert_serial(pem: &[u8]) -> Result<Vec<u8>, Error> {
    let der = cert_der_from_pem(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::BadCertificate(format!("the certificate does not parse: {e}")))?;
    Ok(cert.raw_serial().to_vec())
}

/// Revoke the TLS certificate of party `oin`: write a new CRL (to the federation's CRL
/// file, replaced atomically) listing its serial and every serial revoked before.
/// Returns the serial revoked. Revoking a revoked certificate again changes nothing but
/// the CRL's dates.
pub fn revoke_party_cert(
    fed: &Federation,
    oin: &Oin,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, Error> {
    // A party made by `init` has its certificate in the manifest; one enrolled later, in
    // the folder of issued certificates.
    let cert = match fed.parties.iter().find(|p| &p.oin == oin) {
        Some(p) => p.cert.clone(),
        None => {
            let issued = crate::lifecycle::issued_cert_path(fed, oin);
            if !issued.is_file() {
                return Err(Error::Roster {
                    path: None,
                    reason: format!("the federation has no certificate of party {oin}"),
                });
            }
            issued
        }
    };
    let serial = cert_serial(&read(&cert)?)?;
    let mut serials = crl_serials(&read(&fed.ca.crl)?)?;
    if !serials.contains(&serial) {
        serials.push(serial.clone());
    }
    let ca = Ca::load(
        &String::from_utf8_lossy(&read(&fed.ca.cert)?),
        &String::from_utf8_lossy(&read(&fed.ca.key)?),
    )?;
    let at = OffsetDateTime::from_unix_timestamp(now.timestamp())
        .map_err(|_| Error::Time("the CRL's thisUpdate"))?;
    let next = at + time::Duration::days(CRL_VALIDITY_DAYS);
    let number = u64::try_from(now.timestamp()).map_err(|_| Error::Time("the CRL number"))?;
    let refs: Vec<&[u8]> = serials.iter().map(Vec::as_slice).collect();
    let pem = ca.crl_numbered(&refs, number, at, next)?;
    write_atomically(&fed.ca.crl, pem.as_bytes())?;
    Ok(serial)
}

/// Mark party `oin` revoked in the federation's directory: a new version (serial + 1,
/// issued `now`), checked against the policy and signed with the federation key, written
/// over `directory.json` and its `.sig` (each replaced atomically). Returns the new
/// serial. A party revoked already is refused, so a serial is never spent on nothing.
pub fn revoke_in_directory(fed: &Federation, oin: &Oin, now: DateTime<Utc>) -> Result<u64, Error> {
    let policy = fed.load_policy()?;
    let mut directory = fed.load_directory(&policy)?;
    let party = directory
        .parties
        .iter_mut()
        .find(|p| &p.oin == oin)
        .ok_or_else(|| Error::Roster {
            path: None,
            reason: format!("the directory has no party {oin}"),
        })?;
    if party.revoked {
        return Err(Error::Roster {
            path: None,
            reason: format!("party {oin} is revoked already"),
        });
    }
    party.revoked = true;
    crate::lifecycle::publish(fed, None, directory, now)
}

/// What [`revoke`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The party.
    pub oin: Oin,
    /// The serial of its certificate, now on the CRL (big-endian bytes).
    pub serial: Vec<u8>,
    /// The directory version that marks it revoked; `None` when only the CRL was changed.
    pub directory_version: Option<u64>,
}

impl std::fmt::Display for Revoked {
    /// One line for the CRL and, when the directory was changed, one for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revoked the certificate of {} (serial {}); the CRL is rewritten",
            self.oin,
            hex::encode(&self.serial)
        )?;
        if let Some(v) = self.directory_version {
            write!(
                f,
                "\n{} is marked revoked in directory version {v} (signed)",
                self.oin
            )?;
        }
        Ok(())
    }
}

/// `ketenpost-certs revoke`: revoke party `oin`'s certificate ([`revoke_party_cert`]) and,
/// unless `crl_only`, mark it revoked in the directory ([`revoke_in_directory`]), both at
/// `now`.
pub fn revoke(
    fed: &Federation,
    oin: &Oin,
    crl_only: bool,
    now: DateTime<Utc>,
) -> Result<Revoked, Error> {
    let serial = revoke_party_cert(fed, oin, now)?;
    let directory_version = if crl_only {
        None
    } else {
        Some(revoke_in_directory(fed, oin, now)?)
    };
    Ok(Revoked {
        oin: oin.clone(),
        serial,
        directory_version,
    })
}
