//! Identifiers: OIN, message id, case reference, trace id.
//!
//! None of these may carry personal data: a case reference is a random pseudonym, never a
//! BSN or a name, because it travels in the header the broker sees.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;

/// JSON Schema of a string newtype with a pattern.
macro_rules! string_schema {
    ($t:ty, $desc:literal, $pattern:literal) => {
        impl JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $desc,
                    "pattern": $pattern,
                })
            }
        }
    };
}

/// Organisatie-identificatienummer: exactly 20 ASCII digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Oin(String);

string_schema!(
    Oin,
    "Organisatie-identificatienummer (20 digits)",
    r"^[0-9]{20}$"
);

impl Oin {
    /// The OIN as its 20 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Oin {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Oin(s.to_owned()))
        } else {
            Err(Error::InvalidId {
                what: "OIN",
                reason: "must be exactly 20 digits",
            })
        }
    }
}

impl TryFrom<String> for Oin {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Oin> for String {
    fn from(o: Oin) -> String {
        o.0
    }
}

impl fmt::Display for Oin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Oin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oin({})", self.0)
    }
}

/// A message id: a UUIDv7, so ids sort by creation time.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        uuid::Uuid::parse_str(s)
            .map(MessageId)
            .map_err(|_| Error::InvalidId {
                what: "message id",
                reason: "must be a UUID",
            })
    }
}

/// A case reference: `case-` followed by 26 lowercase base32 characters (128 random bits).
///
/// It is a pseudonym: it says nothing about the client, so the broker may see and log it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CaseRef(String);

string_schema!(
    CaseRef,
    "Pseudonymous case reference",
    r"^case-[a-z2-7]{26}$"
);

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl CaseRef {
    /// A fresh random case reference.
    pub fn random() -> Self {
        let mut bytes = [0u8; 17];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut s = String::with_capacity(31);
        s.push_str("case-");
        // 26 characters of 5 bits each = 130 bits, taken from 136 random bits.
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut it = bytes.iter();
        while s.len() < 31 {
            if bits < 5 {
                acc = (acc << 8) | u64::from(*it.next().unwrap_or(&0));
                bits += 8;
            }
            bits -= 5;
            s.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
        CaseRef(s)
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CaseRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = s.len() == 31
            && s.starts_with("case-")
            && s.as_bytes()[5..].iter().all(|b| BASE32.contains(b));
        if ok {
            Ok(CaseRef(s.to_owned()))
        } else {
            Err(Error::InvalidId {
                what: "case reference",
                reason: "must be 'case-' and 26 characters a-z, 2-7",
            })
        }
    }
}

impl TryFrom<String> for CaseRef {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<CaseRef> for String {
    fn from(c: CaseRef) -> String {
        c.0
    }
}

impl fmt::Display for CaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaseRef({})", self.0)
    }
}

/// A W3C trace-context trace id: 32 lowercase hex characters, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceId([u8; 16]);

string_schema!(TraceId, "W3C trace id", r"^[0-9a-f]{32}$");

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        b[0] |= 1; // never all zero
        TraceId(b)
    }
}

impl FromStr for TraceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = Error::InvalidId {
            what: "trace id",
            reason: "must be 32 lowercase hex characters, not all zero",
        };
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err);
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| err.clone())?;
        if b == [0u8; 16] {
            return Err(err);
        }
        Ok(TraceId(b))
    }
}

impl TryFrom<String> for TraceId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<TraceId> for String {
    fn from(t: TraceId) -> String {
        hex::encode(t.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// Whether `s` is an identifier a header may carry: 1-64 characters of ASCII letters,
/// digits and `_ . : -`. Every text field of a header is one (or a fixed format such as a
/// digest), so that no header can carry free text, and with it a name or other personal
/// data, to the broker.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Deserialize a text field that must be an identifier ([`is_identifier`]).
pub fn identifier<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_identifier(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(
            "an identifier of 1-64 letters, digits, '_', '.', ':' or '-' (no free text)",
        ))
    }
}

/// Deserialize a role name that must be an identifier ([`is_identifier`]).
pub fn role_identifier<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
    identifier(d).map(Role)
}

/// Deserialize a list of role names that must each be an identifier ([`is_identifier`]).
pub fn role_identifiers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.iter().all(|n| is_identifier(n)) {
        Ok(names.into_iter().map(Role).collect())
    } else {
        Err(serde::de::Error::custom(
            "role names of 1-64 letters, digits, '_', '.', ':' or '-' (no free text)",
        ))
    }
}

/// Deserialize a SHA-256 digest: 64 lowercase hex characters.
pub fn sha256_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(
            "a SHA-256 digest of 64 lowercase hex characters",
        ))
    }
}

/// The name of a role, as the policy defines it (`gemeente`, `woningcorporatie`, ...).
#[derive(
    Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Role(String);

impl Role {
    /// A role name. Whether it exists is up to the policy.
    pub fn new(name: impl Into<String>) -> Self {
        Role(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Role({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_texts_are_identifiers_never_free_text() {
        use crate::envelope::LegalBasis;
        let ok = r#"{"basis":"non_consent","ground":"acute_danger","justification":"dossier-2026.114:a"}"#;
        assert!(serde_json::from_str::<LegalBasis>(ok).is_ok());
        for bad in [
            "Jan Jansen, BSN 123456782",
            "",
            "dossier 114",
            "één",
            &"x".repeat(65),
        ] {
            let json = serde_json::json!({
                "basis": "non_consent", "ground": "acute_danger", "justification": bad
            });
            assert!(
                serde_json::from_value::<LegalBasis>(json).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(is_identifier("walcheren-uitstroom"));
        assert!(!is_identifier("uitstroom naar woning"));
    }

    #[test]
    fn oin_must_be_twenty_digits() {
        assert!("00000001234567890000".parse::<Oin>().is_ok());
        assert!("0000000123456789000".parse::<Oin>().is_err());
        assert!("0000000123456789000a".parse::<Oin>().is_err());
        assert!(serde_json::from_str::<Oin>("\"123\"").is_err());
    }

    #[test]
    fn case_refs_are_random_and_parse_back() {
        let a = CaseRef::random();
        let b = CaseRef::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<CaseRef>().ok(), Some(a.clone()));
        assert!("case-123456789012345678901234567"
            .parse::<CaseRef>()
            .is_err());
        assert!("123456789".parse::<CaseRef>().is_err());
    }

    #[test]
    fn trace_ids_round_trip() {
        let t = TraceId::random();
        assert_eq!(t.to_string().parse::<TraceId>().ok(), Some(t));
        assert!("00000000000000000000000000000000"
            .parse::<TraceId>()
            .is_err());
        assert!("ABCDEF00000000000000000000000000"
            .parse::<TraceId>()
            .is_err());
    }
}
