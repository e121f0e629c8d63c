//! Key material and domain-separated signatures.
//!
//! Every ed25519 signature in ketenpost is made over `ketenpost/v1/<context>\0` followed by
//! the exact bytes being signed, so a signature made for one purpose (a message header)
//! can never be replayed as another (a directory, a receipt, an audit checkpoint).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::Signer;
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::Error;

/// What a signature is for; part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// An envelope header.
    Header,
    /// The partner directory, signed by the federation key.
    Directory,
    /// The covenant policy, signed by the federation key.
    Policy,
    /// A control record (consent, case change, receipt, deletion confirmation) of one
    /// kind: the kind is part of what is signed, so a record signed as one kind never
    /// verifies as another.
    Control(crate::kind::Kind),
    /// An audit checkpoint, signed by the broker.
    Checkpoint,
    /// An FG alert the broker sends to a webhook.
    Alert,
}

impl Context {
    fn label(self) -> &'static str {
        match self {
            Context::Header => "header",
            Context::Directory => "directory",
            Context::Policy => "policy",
            Context::Control(_) => "control",
            Context::Checkpoint => "checkpoint",
            Context::Alert => "alert",
        }
    }
}

/// The bytes a signature in `context` covers: a domain label, then `bytes`.
pub fn framed(context: Context, bytes: &[u8]) -> Vec<u8> {
    let label = context.label();
    let mut m = Vec::with_capacity(13 + label.len() + 40 + bytes.len());
    m.extend_from_slice(b"ketenpost/v1/");
    m.extend_from_slice(label.as_bytes());
    if let Context::Control(kind) = context {
        m.push(b'/');
        m.extend_from_slice(kind.as_str().as_bytes());
    }
    m.push(0);
    m.extend_from_slice(bytes);
    m
}

/// Sign `bytes` for `context`.
pub fn sign(key: &SigningKey, context: Context, bytes: &[u8]) -> Signature {
    key.sign(&framed(context, bytes))
}

/// Verify a signature made by [`sign`]. Uses strict verification (no malleable signatures,
/// no weak keys).
pub fn verify(
    key: &VerifyingKey,
    context: Context,
    bytes: &[u8],
    signature: &Signature,
    what: &'static str,
) -> Result<(), Error> {
    key.verify_strict(&framed(context, bytes), signature)
        .map_err(|_| Error::BadSignature(what))
}

/// [`verify`] against a party's valid keys (its current key and, during a rotation's
/// overlap, its previous ones): valid when any of them verifies.
pub fn verify_any(
    keys: &[VerifyingKey],
    context: Context,
    bytes: &[u8],
    signature: &Signature,
    what: &'static str,
) -> Result<(), Error> {
    verify_any_with(&Strict, keys, context, bytes, signature, what)
}

/// How a signature is checked. Whatever the way, the verdict is `verify_strict`'s: a
/// broker may verify concurrent signatures in one batch, never more leniently.
pub trait SignatureCheck: Sync + std::fmt::Debug {
    /// Whether `signature` over the framed bytes `framed` verifies with `key`, as
    /// `verify_strict` says.
    fn verifies(&self, key: &VerifyingKey, framed: &[u8], signature: &Signature) -> bool;
}

/// `verify_strict`, one signature at a time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strict;

impl SignatureCheck for Strict {
    fn verifies(&self, key: &VerifyingKey, framed: &[u8], signature: &Signature) -> bool {
        key.verify_strict(framed, signature).is_ok()
    }
}

/// [`verify_any`] with the signatures checked by `check`.
pub fn verify_any_with(
    check: &dyn SignatureCheck,
    keys: &[VerifyingKey],
    context: Context,
    bytes: &[u8],
    signature: &Signature,
    what: &'static str,
) -> Result<(), Error> {
    let framed = framed(context, bytes);
    if keys.iter().any(|k| check.verifies(k, &framed, signature)) {
        Ok(())
    } else {
        Err(Error::BadSignature(what))
    }
}

/// A new random signing key.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The text form of a secret signing key: `ed25519-secret:` and base64 of its 32 bytes.
pub fn signing_key_to_text(key: &SigningKey) -> String {
    format!("ed25519-secret:{}", B64.encode(key.to_bytes()))
}

/// Parse the text form of a secret signing key (surrounding whitespace is ignored).
pub fn signing_key_from_text(text: &str) -> Result<SigningKey, Error> {
    let b64 = text
        .trim()
        .strip_prefix("ed25519-secret:")
        .ok_or_else(|| Error::InvalidKey {
            what: "signing key",
            reason: "does not start with 'ed25519-secret:'".into(),
        })?;
    let bytes: [u8; 32] = B64
        .decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::InvalidKey {
            what: "signing key",
            reason: "is not base64 of 32 bytes".into(),
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// The text form of a public key: base64 of its 32 bytes.
pub fn verifying_key_to_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Parse the text form of a public key.
pub fn verifying_key_from_text(text: &str) -> Result<VerifyingKey, Error> {
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::InvalidKey {
            what: "public key",
            reason: "is not base64 of 32 bytes".into(),
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| Error::InvalidKey {
        what: "public key",
        reason: "is not a valid ed25519 point".into(),
    })
}

/// Signature as base64 text.
pub fn signature_to_text(sig: &Signature) -> String {
    B64.encode(sig.to_bytes())
}

/// Parse a base64 signature.
pub fn signature_from_text(text: &str) -> Result<Signature, Error> {
    let bytes: [u8; 64] = B64
        .decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::InvalidKey {
            what: "signature",
            reason: "is not base64 of 64 bytes".into(),
        })?;
    Ok(Signature::from_bytes(&bytes))
}

/// A new age X25519 identity.
pub fn generate_age_identity() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

/// Parse an age identity (`AGE-SECRET-KEY-1...`).
pub fn age_identity_from_text(text: &str) -> Result<age::x25519::Identity, Error> {
    text.trim()
        .parse::<age::x25519::Identity>()
        .map_err(|_| Error::InvalidKey {
            what: "age identity",
            reason: "is not an AGE-SECRET-KEY-1 string".into(),
        })
}

/// Parse an age recipient (`age1...`).
pub fn age_recipient_from_text(text: &str) -> Result<age::x25519::Recipient, Error> {
    text.trim()
        .parse::<age::x25519::Recipient>()
        .map_err(|_| Error::InvalidKey {
            what: "age recipient",
            reason: "is not an age1 string".into(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_bound_to_their_context() {
        let k = generate_signing_key();
        let s = sign(&k, Context::Header, b"abc");
        assert!(verify(&k.verifying_key(), Context::Header, b"abc", &s, "x").is_ok());
        assert!(verify(&k.verifying_key(), Context::Directory, b"abc", &s, "x").is_err());
        assert!(verify(&k.verifying_key(), Context::Header, b"abd", &s, "x").is_err());
    }

    #[test]
    fn key_texts_round_trip() {
        let k = generate_signing_key();
        let back = signing_key_from_text(&signing_key_to_text(&k)).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        let v = verifying_key_from_text(&verifying_key_to_text(&k.verifying_key())).unwrap();
        assert_eq!(v, k.verifying_key());
        assert!(signing_key_from_text("nonsense").is_err());
        assert!(verifying_key_from_text("AAAA").is_err());
        let id = generate_age_identity();
        use age::secrecy::ExposeSecret;
        let text = id.to_string();
        assert!(age_identity_from_text(text.expose_secret()).is_ok());
        assert!(age_recipient_from_text(&id.to_public().to_string()).is_ok());
    }
}
