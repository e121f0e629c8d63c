//! A running federation's lifecycle: enrol a partner from its own keys, rotate a partner's
//! keys with an overlap window, and sign new versions of the policy and the directory.
//!
//! Every change is a new directory version: serial + 1, issued now, bound to the exact
//! policy bytes by `policy_sha256`, checked against the policy and signed with the
//! federation key. Brokers and agents pick it up while they run (the broker re-reads its
//! files every `documents_reload_secs`; agents fetch from the broker) and refuse anything
//! older than what they hold.
//!
//! A partner's private keys never come here: `ketenpost-agent keygen` gives the operator
//! an [`EnrolmentRequest`] (public keys) and a certificate request (CSR) for its TLS key.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ketenpost_schemas::digest::sha256_hex;
use ketenpost_schemas::directory::{self, Directory, EnrolmentRequest, Party, PreviousKeys};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, Context};
use ketenpost_schemas::policy::{Policy, Role};
use time::OffsetDateTime;

use crate::federation::Federation;
use crate::pki::{self, Ca, Serials, Validity};
use crate::Error;

/// How long a certificate issued from a partner's request is valid: two years, as `init`.
const LEAF_DAYS: i64 = 2 * 365;

/// Folder of the federation directory where issued partner certificates are kept (the
/// latest of each party as `<oin>.pem`), so a later `revoke` finds their serial.
pub const ISSUED_DIR: &str = "issued";

/// What an enrolment or rotation produced.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The new directory serial.
    pub serial: u64,
    /// The partner's new certificate (PEM), to hand to the partner.
    pub cert_pem: String,
    /// Its fingerprint, as the directory lists it.
    pub fingerprint: String,
    /// Where the federation keeps a copy.
    pub kept_at: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn schema(what: &'static str) -> impl FnOnce(ketenpost_schemas::Error) -> Error {
    move |source| Error::Schemas { what, source }
}

fn roster(reason: String) -> Error {
    Error::Roster { path: None, reason }
}

/// Sign and write a new version of the documents: `directory` as the next serial, with
/// `new_policy` (exact bytes) when the policy changes too. The policy is written before the
/// directory, each document before its signature: a reader in between finds a pair that
/// does not verify and keeps the version it has.
pub fn publish(
    fed: &Federation,
    new_policy: Option<&[u8]>,
    mut directory: Directory,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    let current_policy = fed.load_policy()?;
    let current = fed.load_directory(&current_policy)?;
    let policy_bytes = match new_policy {
        Some(b) => b.to_vec(),
        None => read(&fed.policy.file)?,
    };
    let policy = match new_policy {
        Some(b) => parse_policy(b)?,
        None => current_policy,
    };
    if policy.covenant.id != current.covenant {
        return Err(roster(format!(
            "the new policy is for covenant '{}', the federation is '{}'",
            policy.covenant.id, current.covenant
        )));
    }
    directory.covenant = current.covenant.clone();
    directory.serial = current
        .serial
        .checked_add(1)
        .ok_or_else(|| roster("the directory serial is exhausted".into()))?;
    directory.issued_at = now;
    directory.policy_sha256 = sha256_hex(&policy_bytes);
    directory
        .check(&policy)
        .map_err(schema("new directory (against the policy)"))?;
    let mut json = serde_json::to_vec_pretty(&directory).map_err(|e| Error::Serialize {
        what: "directory",
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    let key = keys::signing_key_from_text(&String::from_utf8_lossy(&read(
        &fed.federation.signing_key,
    )?))
    .map_err(schema("federation signing key"))?;
    if new_policy.is_some() {
        let sig = directory::sign_document(&key, Context::Policy, &policy_bytes);
        write_atomically(&fed.policy.file, &policy_bytes)?;
        write_atomically(&fed.policy.sig, format!("{sig}\n").as_bytes())?;
    }
    let sig = directory::sign_document(&key, Context::Directory, &json);
    write_atomically(&fed.directory.file, &json)?;
    write_atomically(&fed.directory.sig, format!("{sig}\n").as_bytes())?;
    Ok(directory.serial)
}

fn parse_policy(bytes: &[u8]) -> Result<Policy, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        schema("new policy")(ketenpost_schemas::Error::Policy {
            line: None,
            column: None,
            message: "policy is not UTF-8".into(),
        })
    })?;
    Policy::from_toml(text).map_err(schema("new policy"))
}

/// `policy sign`: put `policy` (a self-contained TOML text's exact bytes, see
/// [`crate::policy_file::signable`]) in force as the next version.
/// The directory is carried over (new serial, bound to the new policy) and must still fit
/// it: every role a party has must exist.
pub fn sign_policy(fed: &Federation, policy: &[u8], now: DateTime<Utc>) -> Result<u64, Error> {
    let current = fed.load_directory(&fed.load_policy()?)?;
    publish(fed, Some(policy), current, now)
}

/// `directory sign`: put an edited directory (JSON) in force as the next version. Its
/// serial, issue time and policy digest are set here; the rest is checked against the
/// policy in force.
pub fn sign_directory(fed: &Federation, json: &[u8], now: DateTime<Utc>) -> Result<u64, Error> {
    let edited: Directory = serde_json::from_slice(json).map_err(|e| {
        schema("edited directory")(ketenpost_schemas::Error::Directory(e.to_string()))
    })?;
    publish(fed, None, edited, now)
}

fn load_ca(fed: &Federation) -> Result<Ca, Error> {
    Ca::load(
        &String::from_utf8_lossy(&read(&fed.ca.cert)?),
        &String::from_utf8_lossy(&read(&fed.ca.key)?),
    )
}

fn issue(
    fed: &Federation,
    request: &EnrolmentRequest,
    csr_pem: &str,
    now: DateTime<Utc>,
) -> Result<(pki::Issued, PathBuf), Error> {
    let t = OffsetDateTime::from_unix_timestamp(now.timestamp())
        .map_err(|_| Error::Time("the certificate's validity"))?;
    let validity = Validity::around(
        t,
        -time::Duration::hours(1),
        time::Duration::days(LEAF_DAYS),
    )?;
    let issued = load_ca(fed)?.client_cert_from_csr(
        csr_pem,
        &request.name,
        &request.oin,
        validity,
        &mut Serials::default(),
    )?;
    let kept = keep_certificate(fed, &request.oin, &issued.cert_pem)?;
    Ok((issued, kept))
}

/// Keep a copy of the certificate of `oin` in the federation (for a later `revoke`).
fn keep_certificate(fed: &Federation, oin: &Oin, cert_pem: &str) -> Result<PathBuf, Error> {
    let dir = fed.dir.join(ISSUED_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
    let kept = issued_cert_path(fed, oin);
    write_atomically(&kept, cert_pem.as_bytes())?;
    Ok(kept)
}

/// A certificate for a party being enrolled: its PEM, its DER, where the federation keeps it.
type EnrolledCertificate = (String, Vec<u8>, PathBuf);

/// Add the party of `request` with `roles`, its certificate made (or checked) by
/// `certificate` once the request is known to be new, as the next directory version.
fn enrol_party(
    fed: &Federation,
    request: &EnrolmentRequest,
    roles: &[Role],
    now: DateTime<Utc>,
    certificate: impl FnOnce() -> Result<EnrolledCertificate, Error>,
) -> Result<Issued, Error> {
    request.check().map_err(schema("enrolment request"))?;
    let mut directory = fed.load_directory(&fed.load_policy()?)?;
    if directory.party(&request.oin).is_some() {
        return Err(roster(format!(
            "party {} is in the directory already; rotate its keys instead",
            request.oin
        )));
    }
    if roles.is_empty() {
        return Err(roster("a party needs at least one role".into()));
    }
    let (cert_pem, der, kept_at) = certificate()?;
    let fingerprint = pki::fingerprint(&der);
    directory.parties.push(Party {
        oin: request.oin.clone(),
        name: request.name.clone(),
        roles: roles.to_vec(),
        signing_key: request.signing_key.clone(),
        age_recipient: request.age_recipient.clone(),
        cert_fingerprint: fingerprint.clone(),
        fg_contact: request.fg_contact.clone(),
        revoked: false,
        previous_keys: Vec::new(),
    });
    let serial = publish(fed, None, directory, now)?;
    Ok(Issued {
        serial,
        cert_pem,
        fingerprint,
        kept_at,
    })
}

/// Where the federation keeps the latest certificate it issued to `oin` from a request.
pub fn issued_cert_path(fed: &Federation, oin: &Oin) -> PathBuf {
    fed.dir.join(ISSUED_DIR).join(format!("{oin}.pem"))
}

/// `enrol`: issue the partner's certificate from its request and add it, with `roles`,
/// to the directory as the next version. A party already listed is refused (rotate it).
pub fn enrol(
    fed: &Federation,
    request: &EnrolmentRequest,
    csr_pem: &str,
    roles: &[Role],
    now: DateTime<Utc>,
) -> Result<Issued, Error> {
    enrol_party(fed, request, roles, now, || {
        let (issued, kept_at) = issue(fed, request, csr_pem, now)?;
        Ok((issued.cert_pem, issued.der, kept_at))
    })
}

/// `rotate`: give a listed party the keys of its new request. Its current keys become
/// previous keys valid until `now + overlap`: what it signed before still verifies, and
/// its old certificate still connects, until then. Previous keys whose window ended are
/// dropped.
pub fn rotate(
    fed: &Federation,
    request: &EnrolmentRequest,
    csr_pem: &str,
    overlap: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Issued, Error> {
    request.check().map_err(schema("rotation request"))?;
    let mut directory = fed.load_directory(&fed.load_policy()?)?;
    let party = directory
        .parties
        .iter_mut()
        .find(|p| p.oin == request.oin)
        .ok_or_else(|| roster(format!("the directory has no party {}", request.oin)))?;
    if party.revoked {
        return Err(roster(format!(
            "party {} is revoked; enrol it anew under a decision of the covenant",
            request.oin
        )));
    }
    if party.signing_key == request.signing_key || party.age_recipient == request.age_recipient {
        return Err(roster(
            "the request carries the party's current keys; a rotation needs new ones".into(),
        ));
    }
    let valid_until = now
        .checked_add_signed(overlap)
        .ok_or(Error::Time("the overlap window"))?;
    let (issued, kept_at) = issue(fed, request, csr_pem, now)?;
    let fingerprint = pki::fingerprint(&issued.der);
    party.previous_keys.retain(|k| k.valid_until > now);
    party.previous_keys.push(PreviousKeys {
        signing_key: std::mem::replace(&mut party.signing_key, request.signing_key.clone()),
        age_recipient: std::mem::replace(&mut party.age_recipient, request.age_recipient.clone()),
        cert_fingerprint: std::mem::replace(&mut party.cert_fingerprint, fingerprint.clone()),
        valid_until,
    });
    party.fg_contact = request.fg_contact.clone();
    let serial = publish(fed, None, directory, now)?;
    Ok(Issued {
        serial,
        cert_pem: issued.cert_pem,
        fingerprint,
        kept_at,
    })
}

/// `enrol --cert`: add a partner whose certificate an external CA issued (PKIoverheid:
/// the OIN in subject serialNumber). The certificate's OIN must be the request's; the
/// directory pins its fingerprint. The broker must trust that CA (`tls.partner_cas`) and
/// have its CRL (`tls.crls`).
pub fn enrol_with_certificate(
    fed: &Federation,
    request: &EnrolmentRequest,
    cert_pem: &str,
    roles: &[Role],
    now: DateTime<Utc>,
) -> Result<Issued, Error> {
    let der = pki::cert_der_from_pem(cert_pem.as_bytes())?;
    let oin = pki::oin_from_cert_der(&der)?;
    if oin != request.oin {
        return Err(roster(format!(
            "the certificate names OIN {oin} in subject serialNumber, the request {}",
            request.oin
        )));
    }
    enrol_party(fed, request, roles, now, || {
        let kept_at = keep_certificate(fed, &request.oin, cert_pem)?;
        Ok((cert_pem.to_owned(), der, kept_at))
    })
}

/// A stand-in for an external CA (the role PKIoverheid plays in production), for tests
/// and rehearsals: a root CA with an empty CRL that issues partner certificates from
/// CSRs, PKIoverheid style. Never for production.
#[derive(Debug, Clone)]
pub struct ExternalCa {
    /// The root certificate (PEM): what the broker lists in `tls.partner_cas`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Its CRL (PEM): what the broker lists in `tls.crls`.
    pub crl: PathBuf,
}

impl ExternalCa {
    /// Create one in `dir` (`ca.pem`, `ca.key`, `crl.pem`).
    pub fn create(dir: &Path, name: &str, now: DateTime<Utc>) -> Result<ExternalCa, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        let t = OffsetDateTime::from_unix_timestamp(now.timestamp())
            .map_err(|_| Error::Time("the external CA's validity"))?;
        let validity = Validity::around(t, -time::Duration::hours(1), time::Duration::days(3650))?;
        let ca = Ca::new(name, name, validity, &mut Serials::default())?;
        let crl = ca.crl_numbered(&[], 1, t, t + time::Duration::days(365))?;
        let files = ExternalCa {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            crl: dir.join("crl.pem"),
        };
        write_atomically(&files.cert, ca.issued.cert_pem.as_bytes())?;
        write_atomically(&files.key, ca.issued.key_pem.as_bytes())?;
        write_atomically(&files.crl, crl.as_bytes())?;
        Ok(files)
    }

    /// Issue a partner certificate (PEM) for the key of `csr_pem`.
    pub fn issue(
        &self,
        csr_pem: &str,
        name: &str,
        oin: &Oin,
        now: DateTime<Utc>,
    ) -> Result<String, Error> {
        let ca = Ca::load(
            &String::from_utf8_lossy(&read(&self.cert)?),
            &String::from_utf8_lossy(&read(&self.key)?),
        )?;
        let t = OffsetDateTime::from_unix_timestamp(now.timestamp())
            .map_err(|_| Error::Time("the certificate's validity"))?;
        let validity = Validity::around(
            t,
            -time::Duration::hours(1),
            time::Duration::days(LEAF_DAYS),
        )?;
        Ok(ca
            .client_cert_from_csr(csr_pem, name, oin, validity, &mut Serials::default())?
            .cert_pem)
    }
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::write(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::write(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::write(path, e))
}
