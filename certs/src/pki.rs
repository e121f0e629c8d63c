//! The X.509 side: a CA, client and server certificates, a CRL, and reading the OIN back
//! out of a certificate.
//!
//! Client certificates follow PKIoverheid: the organisation's name in CN and O, its OIN in
//! the subject serialNumber (OID 2.5.4.5, a PrintableString), extended key usage
//! clientAuth. Keys are ECDSA P-256.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ketenpost_schemas::ids::Oin;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PrintableString, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// The OID of the subject serialNumber attribute, where PKIoverheid puts the OIN.
pub const SERIAL_NUMBER_OID: &[u64] = &[2, 5, 4, 5];

/// The names the broker's dev server certificate is valid for.
pub const BROKER_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Lowercase hex SHA-256 of a certificate's DER: the fingerprint the directory lists.
pub use ketenpost_schemas::cert::fingerprint;

/// The OIN of the organisation a certificate (DER) was issued to: the subject's
/// serialNumber attribute, as PKIoverheid certificates carry it
/// ([`ketenpost_schemas::cert::oin_from_cert_der`]). Errors: [`Error::BadCertificate`] when
/// the bytes are not exactly one certificate, [`Error::NoOin`] when there is no
/// serialNumber, [`Error::BadOin`] when it is not 20 digits or occurs more than once.
pub fn oin_from_cert_der(der: &[u8]) -> Result<Oin, Error> {
    use ketenpost_schemas::cert::CertError;
    ketenpost_schemas::cert::oin_from_cert_der(der).map_err(|e| match e {
        CertError::BadCertificate(m) => Error::BadCertificate(m),
        CertError::NoOin => Error::NoOin,
        CertError::BadOin { reason } => Error::BadOin { reason },
    })
}

/// The DER of the first certificate in a PEM text.
pub fn cert_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, Error> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| Error::BadCertificate(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(Error::BadCertificate(format!(
            "PEM block is '{}', not 'CERTIFICATE'",
            pem.label
        )));
    }
    Ok(pem.contents)
}

/// A certificate with its private key, as written to disk.
#[derive(Debug)]
pub(crate) struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The certificate, DER (for fingerprints).
    pub der: Vec<u8>,
    /// The serial number's bytes (positive, no leading zero).
    pub serial: Vec<u8>,
}

/// A certificate authority that can issue certificates and CRLs.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub issued: Issued,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("serial", &hex::encode(&self.issued.serial))
            .finish_non_exhaustive()
    }
}

/// Hands out random serial numbers, never the same one twice within one federation.
#[derive(Debug, Default)]
pub(crate) struct Serials {
    used: BTreeSet<Vec<u8>>,
}

impl Serials {
    /// 16 random bytes; the first in 0x01..=0x7f, so the DER INTEGER is positive and its
    /// bytes are exactly these (no sign or stripped zero byte).
    fn next(&mut self) -> Vec<u8> {
        loop {
            let mut b = vec![0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut b);
            b[0] = (b[0] & 0x7f).max(1);
            if self.used.insert(b.clone()) {
                return b;
            }
        }
    }
}

/// Validity window of a certificate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// `now + from .. now + to`.
    pub fn around(now: OffsetDateTime, from: Duration, to: Duration) -> Result<Validity, Error> {
        Ok(Validity {
            not_before: now
                .checked_add(from)
                .ok_or(Error::Time("not-before overflows"))?,
            not_after: now
                .checked_add(to)
                .ok_or(Error::Time("not-after overflows"))?,
        })
    }
}

fn base_params(validity: Validity, serial: &[u8]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params
}

/// The parameters of a partner's client certificate, PKIoverheid style: CN and O the
/// organisation's name, serialNumber its OIN, EKU clientAuth.
fn client_params(
    name: &str,
    oin: &Oin,
    validity: Validity,
    serials: &mut Serials,
) -> Result<CertificateParams, Error> {
    let mut params = base_params(validity, &serials.next());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, name);
    let oin_value =
        PrintableString::try_from(oin.as_str()).map_err(Error::generate("subject serialNumber"))?;
    dn.push(
        DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
        DnValue::PrintableString(oin_value),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn serials_of(params: &CertificateParams) -> Vec<u8> {
    params
        .serial_number
        .as_ref()
        .map(SerialNumber::to_bytes)
        .unwrap_or_default()
}

fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate().map_err(Error::generate("ECDSA P-256 key"))
}

impl Ca {
    /// A new self-signed CA: CA:true (no intermediates below it), key usage keyCertSign and
    /// cRLSign.
    pub fn new(
        common_name: &str,
        organisation: &str,
        validity: Validity,
        serials: &mut Serials,
    ) -> Result<Ca, Error> {
        let key = new_key()?;
        let serial = serials.next();
        let mut params = base_params(validity, &serial);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, organisation);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(Error::generate("CA certificate"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial,
        };
        Ok(Ca { cert, key, issued })
    }

    fn sign(&self, params: CertificateParams, what: &'static str) -> Result<Issued, Error> {
        let key = new_key()?;
        let serial = serials_of(&params);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(Error::generate(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial,
        })
    }

    /// A partner's mTLS client certificate, PKIoverheid style: CN and O the organisation's
    /// name, serialNumber its OIN, EKU clientAuth.
    pub fn client_cert(
        &self,
        name: &str,
        oin: &Oin,
        validity: Validity,
        serials: &mut Serials,
    ) -> Result<Issued, Error> {
        let params = client_params(name, oin, validity, serials)?;
        self.sign(params, "client certificate")
    }

    /// A partner's client certificate for the key in its certificate request (PEM), as
    /// [`Ca::client_cert`] makes them: the request's self-signature must verify, and only
    /// its public key is used; name, OIN, usages and validity are ours.
    pub fn client_cert_from_csr(
        &self,
        csr_pem: &str,
        name: &str,
        oin: &Oin,
        validity: Validity,
        serials: &mut Serials,
    ) -> Result<Issued, Error> {
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::generate(
                "certificate request (it does not parse or its signature does not verify)",
            ))?;
        let params = client_params(name, oin, validity, serials)?;
        let serial = serials_of(&params);
        csr.params = params;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(Error::generate("client certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            der: cert.der().to_vec(),
            serial,
        })
    }

    /// The broker's TLS server certificate for loopback: SAN `localhost`, `127.0.0.1`,
    /// `::1`; EKU serverAuth.
    pub fn server_cert(
        &self,
        name: &str,
        validity: Validity,
        serials: &mut Serials,
    ) -> Result<Issued, Error> {
        let mut params = base_params(validity, &serials.next());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, name);
        params.distinguished_name = dn;
        let localhost = Ia5String::try_from("localhost").map_err(Error::generate("server name"))?;
        params.subject_alt_names = vec![
            SanType::DnsName(localhost),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        self.sign(params, "server certificate")
    }

    /// The CA of an existing federation, from its certificate and key (PEM): to issue
    /// and revoke after `init`.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(Error::generate("CA key (reading it)"))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(Error::generate("CA certificate (reading it)"))?;
        let serial = params
            .serial_number
            .as_ref()
            .map(SerialNumber::to_bytes)
            .unwrap_or_default();
        // Re-signing the same name and key gives a certificate that issues as the original:
        // same issuer name, same key (and so the same key identifier).
        let cert = params
            .self_signed(&key)
            .map_err(Error::generate("CA certificate"))?;
        let issued = Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            der: cert_der_from_pem(cert_pem.as_bytes())?,
            serial,
        };
        Ok(Ca { cert, key, issued })
    }

    /// A CRL (number 1) listing `revoked` serials as key-compromised at `now`, valid until
    /// `next_update`.
    pub fn crl(
        &self,
        revoked: &[&[u8]],
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, Error> {
        self.crl_numbered(revoked, 1, now, next_update)
    }

    /// [`Ca::crl`] with its CRL number (a later CRL has a higher one).
    pub fn crl_numbered(
        &self,
        revoked: &[&[u8]],
        number: u64,
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, Error> {
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .and_then(|crl| crl.pem())
            .map_err(Error::generate("CRL"))
    }
}
