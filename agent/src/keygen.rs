//! `ketenpost-agent keygen`: a partner makes its own keys. Private keys are written here,
//! mode 0600, and never leave the partner; the federation operator gets only the public
//! [`EnrolmentRequest`] (`enrolment.json`) and a certificate request for the TLS key
//! (`tls.csr`), and returns a certificate (`ketenpost-certs enrol` or `rotate`).
//!
//! Files written to the output folder, which must not hold any of them yet:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `signing.key` | ed25519 signing key (`[keys] signing_key`) | 0600 |
//! | `age.key` | age identity (`[keys] age_identity`) | 0600 |
//! | `tls.key` | TLS private key, ECDSA P-256 PKCS#8 (`[tls] key`) | 0600 |
//! | `tls.csr` | certificate request for it, subject serialNumber = OIN | 0644 |
//! | `enrolment.json` | OIN, name, FG contact and the public keys | 0644 |

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ketenpost_schemas::directory::EnrolmentRequest;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;

use crate::Error;

/// The files [`keygen`] writes, in order.
pub const FILES: [&str; 5] = [
    "signing.key",
    "age.key",
    "tls.key",
    "tls.csr",
    "enrolment.json",
];

/// What [`keygen`] made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The public request for the federation operator.
    pub request: EnrolmentRequest,
    /// Where each file went.
    pub files: Vec<PathBuf>,
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Make a partner's keys and requests in `out` (created when missing). Refuses to
/// overwrite any of [`FILES`]: keys that exist may be in use.
pub fn keygen(out: &Path, oin: &Oin, name: &str, fg_contact: &str) -> Result<Generated, Error> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    if let Some(existing) = FILES.iter().map(|f| out.join(f)).find(|p| p.exists()) {
        return Err(Error::Invalid(format!(
            "{} exists; keygen never overwrites keys (use an empty folder)",
            existing.display()
        )));
    }
    let signing = keys::generate_signing_key();
    let age = keys::generate_age_identity();
    let request = EnrolmentRequest {
        oin: oin.clone(),
        name: name.to_owned(),
        signing_key: keys::verifying_key_to_text(&signing.verifying_key()),
        age_recipient: age.to_public().to_string(),
        fg_contact: fg_contact.to_owned(),
    };
    request
        .check()
        .map_err(|e| Error::Invalid(format!("enrolment request: {e}")))?;
    let (tls_key, csr) = certificate_request(oin, name)?;
    let json = serde_json::to_vec_pretty(&request)
        .map_err(|e| Error::Invalid(format!("enrolment request: {e}")))?;
    let secret_age = {
        use age::secrecy::ExposeSecret as _;
        age.to_string().expose_secret().to_owned()
    };
    let contents: [(&str, Vec<u8>, bool); 5] = [
        (
            FILES[0],
            format!("{}\n", keys::signing_key_to_text(&signing)).into_bytes(),
            true,
        ),
        (FILES[1], format!("{secret_age}\n").into_bytes(), true),
        (FILES[2], tls_key.into_bytes(), true),
        (FILES[3], csr.into_bytes(), false),
        (FILES[4], [json, b"\n".to_vec()].concat(), false),
    ];
    let mut files = Vec::new();
    for (file, bytes, secret) in contents {
        let path = out.join(file);
        write(&path, &bytes, secret)?;
        files.push(path);
    }
    Ok(Generated { request, files })
}

/// A new ECDSA P-256 TLS key (PKCS#8 PEM) and a CSR for it (PEM) naming the OIN in
/// subject serialNumber and the organisation in CN and O. The CA sets the final subject
/// and usages itself; the CSR proves possession of the key.
fn certificate_request(oin: &Oin, name: &str) -> Result<(String, String), Error> {
    let bad = |e: rcgen::Error| Error::Invalid(format!("certificate request: {e}"));
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn.push(rcgen::DnType::OrganizationName, name);
    let serial = rcgen::PrintableString::try_from(oin.as_str()).map_err(bad)?;
    // 2.5.4.5: subject serialNumber, where PKIoverheid puts the OIN.
    dn.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
        rcgen::DnValue::PrintableString(serial),
    );
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(bad)?;
    Ok((key.serialize_pem(), csr.pem().map_err(bad)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_keys_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let oin: Oin = "00000009000000000042".parse().unwrap();
        let g = keygen(dir.path(), &oin, "Zorg Nieuw", "fg@zorg.example").unwrap();
        assert_eq!(g.files.len(), FILES.len());
        #[cfg(unix)]
        for secret in ["signing.key", "age.key", "tls.key"] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{secret} is readable by others");
        }
        let back: EnrolmentRequest =
            serde_json::from_slice(&std::fs::read(dir.path().join("enrolment.json")).unwrap())
                .unwrap();
        assert_eq!(back, g.request);
        let signing = keys::signing_key_from_text(
            &std::fs::read_to_string(dir.path().join("signing.key")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            keys::verifying_key_to_text(&signing.verifying_key()),
            back.signing_key
        );
        let csr = std::fs::read_to_string(dir.path().join("tls.csr")).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let err = keygen(dir.path(), &oin, "Zorg Nieuw", "fg@zorg.example").unwrap_err();
        assert!(err.to_string().contains("never overwrites"), "{err}");
    }
}
