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
///
/// The request is a PKCS#10 `CertificationRequest` (RFC 2986) written here in DER: the
/// agent makes one request of one fixed shape, which does not warrant linking a
/// certificate generator (the CA's `rcgen`) into every agent. ring, which rustls uses
/// already, makes the key and the signature.
fn certificate_request(oin: &Oin, name: &str) -> Result<(String, String), Error> {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

    let bad = |what: &str| Error::Invalid(format!("certificate request: {what}"));
    if !oin.as_str().bytes().all(is_printable) {
        return Err(bad("the OIN is not a PrintableString"));
    }
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| bad("no key could be generated"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| bad("the generated key does not load"))?;
    let info = der::request_info(name, oin.as_str(), key.public_key().as_ref());
    let signature = key
        .sign(&rng, &info)
        .map_err(|_| bad("the request could not be signed"))?;
    let csr = der::request(&info, signature.as_ref());
    Ok((
        pem("PRIVATE KEY", pkcs8.as_ref()),
        pem("CERTIFICATE REQUEST", &csr),
    ))
}

/// X.680's PrintableString alphabet.
fn is_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)
}

/// RFC 7468 text encoding: base64 in lines of 64.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the one certificate request shape the agent makes.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    /// `[0] IMPLICIT` (constructed): the request's attributes.
    const ATTRIBUTES: u8 = 0xa0;

    /// 2.5.4.3 commonName, 2.5.4.10 organizationName, 2.5.4.5 serialNumber.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
    /// 1.2.840.10045.2.1 id-ecPublicKey, 1.2.840.10045.3.1.7 prime256v1,
    /// 1.2.840.10045.4.3.2 ecdsa-with-SHA256.
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

    /// One TLV, with the definite length in its shortest form.
    pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len();
        let mut out = vec![tag];
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(SEQUENCE, &parts.concat())
    }

    /// `BIT STRING` with no unused bits.
    fn bits(bytes: &[u8]) -> Vec<u8> {
        tlv(BIT_STRING, &[&[0u8][..], bytes].concat())
    }

    /// One relative distinguished name of one attribute.
    fn rdn(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        tlv(SET, &seq(&[&tlv(OID, oid), &tlv(tag, value.as_bytes())]))
    }

    /// `CertificationRequestInfo`: version 0, the subject, the key, no attributes.
    pub(super) fn request_info(name: &str, serial_number: &str, public_point: &[u8]) -> Vec<u8> {
        let subject = seq(&[
            &rdn(CN, UTF8_STRING, name),
            &rdn(O, UTF8_STRING, name),
            &rdn(SERIAL_NUMBER, PRINTABLE_STRING, serial_number),
        ]);
        let algorithm = seq(&[&tlv(OID, EC_PUBLIC_KEY), &tlv(OID, P256)]);
        let key = seq(&[&algorithm, &bits(public_point)]);
        seq(&[&tlv(INTEGER, &[0]), &subject, &key, &tlv(ATTRIBUTES, &[])])
    }

    /// `CertificationRequest`: the info, the algorithm and its signature.
    pub(super) fn request(info: &[u8], signature: &[u8]) -> Vec<u8> {
        seq(&[info, &seq(&[&tlv(OID, ECDSA_SHA256)]), &bits(signature)])
    }
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

    /// The CA's parser (rcgen, as `ketenpost-certs enrol` uses it) accepts the request,
    /// verifies its signature and reads the OIN and the key of `tls.key` from it.
    #[test]
    fn the_certificate_request_verifies_and_names_the_oin_and_the_key() {
        let oin: Oin = "00000009000000000042".parse().unwrap();
        // A name long enough for two-byte DER lengths, and not ASCII.
        let name = format!("Stichting Zorg én Welzijn {}", "x".repeat(300));
        let (key_pem, csr_pem) = certificate_request(&oin, &name).unwrap();
        use rcgen::PublicKeyData as _;
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(params.public_key.der_bytes(), key.public_key_raw());
        let dn = &params.params.distinguished_name;
        let serial = dn.get(&rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]));
        assert!(
            matches!(serial, Some(rcgen::DnValue::PrintableString(s)) if s.as_str() == oin.as_str()),
            "{serial:?}"
        );
        assert!(matches!(
            dn.get(&rcgen::DnType::CommonName),
            Some(rcgen::DnValue::Utf8String(s)) if *s == name
        ));
        // A flipped bit anywhere in the signed part fails the CA's check.
        let mut tampered = x509_body(&csr_pem);
        tampered[40] ^= 1;
        let tampered = rustls::pki_types::CertificateSigningRequestDer::from(tampered);
        assert!(rcgen::CertificateSigningRequestParams::from_der(&tampered).is_err());
    }

    fn x509_body(pem_text: &str) -> Vec<u8> {
        use base64::Engine as _;
        let b64: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn der_lengths_take_their_shortest_form() {
        assert_eq!(der::tlv(0x04, &[7; 3])[..2], [0x04, 3]);
        assert_eq!(der::tlv(0x04, &[7; 127])[..2], [0x04, 127]);
        assert_eq!(der::tlv(0x04, &[7; 128])[..3], [0x04, 0x81, 128]);
        assert_eq!(der::tlv(0x04, &[7; 256])[..4], [0x04, 0x82, 1, 0]);
    }

    #[test]
    fn pem_lines_hold_64_characters() {
        let text = pem("CERTIFICATE REQUEST", &[0xab; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE REQUEST-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE REQUEST-----");
    }
}
