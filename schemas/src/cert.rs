//! What a partner's X.509 certificate says about it: the OIN in the subject serialNumber
//! (as PKIoverheid carries it) and the SHA-256 fingerprint the partner directory lists.
//!
//! The transport reads these off a verified mTLS client certificate; the federation tools
//! write them. Only parsing: chain, validity and revocation are the TLS layer's to check.

use sha2::{Digest, Sha256};
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;

use crate::ids::Oin;

/// Why a certificate names no usable organisation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The bytes are not exactly one X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    /// The subject has no serialNumber attribute (OID 2.5.4.5).
    #[error("certificate subject has no serialNumber (OIN)")]
    NoOin,
    /// The subject serialNumber is not a usable OIN: not a string, not 20 digits, or
    /// present more than once (which would make the identity ambiguous).
    #[error("certificate subject serialNumber is not an OIN: {reason}")]
    BadOin {
        /// Why it is rejected (the value itself is not repeated).
        reason: &'static str,
    },
}

/// Lowercase hex SHA-256 of a certificate's DER: the fingerprint the directory lists.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The OIN of the organisation a certificate (DER) was issued to: the subject's
/// serialNumber attribute, as PKIoverheid certificates carry it.
pub fn oin_from_cert_der(der: &[u8]) -> Result<Oin, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::BadCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    let mut found = cert.subject().iter_by_oid(&OID_X509_SERIALNUMBER);
    let attr = found.next().ok_or(CertError::NoOin)?;
    if found.next().is_some() {
        return Err(CertError::BadOin {
            reason: "the subject has more than one serialNumber",
        });
    }
    let text = attr.as_str().map_err(|_| CertError::BadOin {
        reason: "serialNumber is not a string",
    })?;
    text.parse().map_err(|_| CertError::BadOin {
        reason: "serialNumber must be exactly 20 digits",
    })
}
