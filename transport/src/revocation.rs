//! What the broker needs from CRLs besides handing them to rustls: the serials they list
//! (to close connections whose certificate was revoked after they connected) and their
//! CRL number (a newer CRL may never be replaced by an older one).

use std::collections::BTreeSet;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

/// A certificate serial number: its big-endian bytes without leading zeros.
pub type Serial = Vec<u8>;

fn trimmed(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// The revocation facts of a set of CRLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Every serial any of the CRLs lists.
    pub serials: BTreeSet<Serial>,
    /// The CRL numbers, in the order of the CRLs (`None` for a CRL without one).
    pub numbers: Vec<Option<Serial>>,
}

impl Revocations {
    /// Read the facts of CRLs that [`crate::tls::load_crls`] already parsed once; a CRL
    /// that does not parse here contributes nothing.
    pub fn of(crls: &[CertificateRevocationListDer<'_>]) -> Revocations {
        let mut out = Revocations::default();
        for crl in crls {
            let Ok((_, parsed)) = x509_parser::parse_x509_crl(crl.as_ref()) else {
                out.numbers.push(None);
                continue;
            };
            for revoked in parsed.iter_revoked_certificates() {
                out.serials.insert(trimmed(revoked.raw_serial()));
            }
            out.numbers
                .push(parsed.crl_number().map(|n| trimmed(&n.to_bytes_be())));
        }
        out
    }

    /// Whether these CRLs are no older than `current`: for every CRL position both have
    /// a number for, the new number is at least the current one.
    pub fn not_older_than(&self, current: &Revocations) -> bool {
        self.numbers
            .iter()
            .zip(&current.numbers)
            .all(|(new, old)| match (new, old) {
                (Some(n), Some(o)) => (n.len(), n) >= (o.len(), o),
                _ => true,
            })
    }

    /// Whether the certificate with this serial is listed.
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.serials.contains(&trimmed(serial))
    }
}

/// The serial number of a certificate (DER), or `None` when it does not parse.
pub fn cert_serial(der: &CertificateDer<'_>) -> Option<Serial> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(trimmed(cert.raw_serial()))
}
