//! The wire envelope: `header ‖ signature ‖ bodies`.
//!
//! ```text
//! "KPM1"                    magic and format version
//! u32 BE  header length     header: JSON, visible to the broker, no personal data
//! [u8]    header bytes
//! [u8;64] ed25519 signature over the exact header bytes (Context::Header)
//! u8      body count
//! per body: u32 BE length, [u8] age ciphertext
//! ```
//!
//! Decoding is bounded by [`Limits`] and never panics. The types follow the message's life:
//! [`Envelope`] is what came off the wire; [`VerifiedEnvelope`] has a header whose signature
//! verified against the sender's directory key and whose body digests match. Only a
//! verified envelope can be opened or routed.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;
use crate::ids::{CaseRef, MessageId, Oin, TraceId};
use crate::keys::{self, Context, Signature, VerifyingKey};
use crate::kind::Kind;
use crate::policy::{Ground, Role};
use crate::Error;

/// Magic bytes and format version at the start of every envelope.
pub const MAGIC: [u8; 4] = *b"KPM1";
/// The header format version this crate writes and reads.
pub const HEADER_VERSION: u8 = 1;

/// Size limits for decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest header, in bytes.
    pub max_header: usize,
    /// Largest body ciphertext, in bytes.
    pub max_body: usize,
    /// Most bodies (views) in one envelope.
    pub max_bodies: usize,
    /// Largest whole envelope, in bytes.
    pub max_envelope: usize,
    /// Most recipients in one header.
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: 64 * 1024,
            max_body: 4 * 1024 * 1024,
            max_bodies: 16,
            max_envelope: 16 * 1024 * 1024,
            max_recipients: 64,
        }
    }
}

/// The legal basis a message is sent under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "basis", deny_unknown_fields)]
pub enum LegalBasis {
    /// A registered, unwithdrawn consent of the client.
    Consent {
        /// The consent's id.
        consent_id: uuid::Uuid,
    },
    /// A ground the policy allows for the kind (`grounds`): instead of consent, or outside
    /// the ordinary course of a non-consent basis; a flagged ground alerts the FGs.
    NonConsent {
        /// Which ground (`acute_danger`, `legal_duty`, `conflict_van_plichten`,
        /// `meldrecht`, or one the policy declares).
        ground: Ground,
        /// A justification code: one of the covenant's list (`[justifications]`), or,
        /// where the covenant keeps none, a short code referring to the justification the
        /// sender recorded in its own file (never free text: the header must hold no
        /// personal data).
        #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
        #[serde(deserialize_with = "crate::ids::identifier")]
        justification: String,
    },
    /// The kind rests on the covenant itself and needs no consent (a breach notice).
    Covenant,
}

/// Which cases and period a breach notice concerns; the broker routes the notice to every
/// party that exchanged messages about them in that window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreachScope {
    /// The affected cases; empty with `all_cases_of_sender`.
    #[serde(default)]
    pub case_refs: Vec<CaseRef>,
    /// Every case the sender exchanged messages about in the window.
    #[serde(default)]
    pub all_cases_of_sender: bool,
    /// Start of the window.
    pub from: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
}

/// A request for an answer carried by one message: the sender asks the recipients in the
/// roles `by` (every recipient when empty) to answer by `due`. The policy bounds it per
/// kind (`answer_request_max`, the longest term from acceptance a sender may ask); a kind
/// without that key carries no request. The broker starts the answer clock for the owing
/// recipients with this due date, and only they get overdue notices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// The recipient roles that owe the answer, each a role some recipient receives the
    /// message in (its body's view); empty: every recipient owes one.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::ids::role_identifiers"
    )]
    pub by: Vec<Role>,
    /// When the answer is due: an instant after the message's creation, at most the
    /// policy's `answer_request_max` after the broker accepts it.
    pub due: DateTime<Utc>,
}

/// One body of the envelope: the view for one recipient role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyRef {
    /// The recipient role whose view this is.
    #[serde(deserialize_with = "crate::ids::role_identifier")]
    pub view: Role,
    /// The recipients it is encrypted to.
    pub recipients: Vec<Oin>,
    /// SHA-256 (hex) of the ciphertext.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    #[serde(deserialize_with = "crate::ids::sha256_hex")]
    pub sha256: String,
    /// Length of the ciphertext in bytes.
    pub size: u64,
}

/// Most messages one correctie may correct.
pub const MAX_CORRECTED: usize = 100;

/// The header: everything the broker may see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Format version.
    pub v: u8,
    /// Message id (UUIDv7).
    pub id: MessageId,
    /// Covenant id.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
    #[serde(deserialize_with = "crate::ids::identifier")]
    pub covenant: String,
    /// Purpose id within the covenant; must be the purpose of the case.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
    #[serde(deserialize_with = "crate::ids::identifier")]
    pub purpose: String,
    /// Message kind.
    pub kind: Kind,
    /// Sender OIN; must equal the OIN of the sender's mTLS certificate.
    pub sender: Oin,
    /// Every recipient.
    pub recipients: Vec<Oin>,
    /// The case, by pseudonym.
    pub case_ref: CaseRef,
    /// The legal basis.
    pub legal_basis: LegalBasis,
    /// When the sender created it.
    pub created_at: DateTime<Utc>,
    /// The event the message is about: observed-at of a signal, discovered-at of a breach.
    /// `send_within` deadlines count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// The message this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<MessageId>,
    /// W3C trace id, for the Logboek Dataverwerkingen.
    pub trace_id: TraceId,
    /// For a breach notice: which cases and window it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach_scope: Option<BreachScope>,
    /// For a correctie: the messages whose content it corrects (at most
    /// [`MAX_CORRECTED`]). The broker routes it to every party that received them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrects: Vec<MessageId>,
    /// A request for an answer by a due date ([`AnswerRequest`]), beside any standing
    /// `answer_within` of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_request: Option<AnswerRequest>,
    /// One entry per body, in body order.
    pub bodies: Vec<BodyRef>,
}

impl Header {
    /// Structural checks that need no policy: version, recipients unique and each in
    /// exactly one body, no body recipient outside the header's recipients, limits.
    pub fn check_structure(&self, limits: &Limits) -> Result<(), Error> {
        if self.v != HEADER_VERSION {
            return Err(Error::Decode(format!(
                "header version {} is not supported (expected {HEADER_VERSION})",
                self.v
            )));
        }
        if self.recipients.is_empty() {
            return Err(Error::Decode("header names no recipients".into()));
        }
        if self.recipients.len() > limits.max_recipients {
            return Err(Error::TooLarge {
                what: "recipient list",
                size: self.recipients.len(),
                limit: limits.max_recipients,
            });
        }
        let all: BTreeSet<&Oin> = self.recipients.iter().collect();
        if all.len() != self.recipients.len() {
            return Err(Error::Decode("a recipient is listed twice".into()));
        }
        if all.contains(&self.sender) {
            return Err(Error::Decode("the sender is listed as a recipient".into()));
        }
        let mut covered = BTreeSet::new();
        for b in &self.bodies {
            for r in &b.recipients {
                if !all.contains(r) {
                    return Err(Error::Decode(format!(
                        "body '{}' names {r}, who is not a recipient",
                        b.view
                    )));
                }
                if !covered.insert(r) {
                    return Err(Error::Decode(format!("{r} has more than one body")));
                }
            }
        }
        if covered.len() != all.len() {
            return Err(Error::Decode("a recipient has no body".into()));
        }
        if self.breach_scope.is_some() != (self.kind == Kind::DatalekMelding) {
            return Err(Error::Decode(
                "a breach scope belongs on a datalek_melding and only there".into(),
            ));
        }
        if self.corrects.is_empty() == (self.kind == Kind::Correctie) {
            return Err(Error::Decode(
                "the corrected messages belong on a correctie, and a correctie names them".into(),
            ));
        }
        if let Some(req) = &self.answer_request {
            // Whether the roles are recipients' and the due date within the policy's bound
            // is the broker's check 7 (`answer_request_not_allowed`).
            let mut named = BTreeSet::new();
            if let Some(twice) = req.by.iter().find(|r| !named.insert(*r)) {
                return Err(Error::Decode(format!(
                    "the answer request names role '{twice}' twice"
                )));
            }
        }
        if self.corrects.len() > MAX_CORRECTED {
            return Err(Error::TooLarge {
                what: "list of corrected messages",
                size: self.corrects.len(),
                limit: MAX_CORRECTED,
            });
        }
        Ok(())
    }

    /// The body addressed to `oin`, with its index.
    pub fn body_for(&self, oin: &Oin) -> Option<(usize, &BodyRef)> {
        self.bodies
            .iter()
            .enumerate()
            .find(|(_, b)| b.recipients.contains(oin))
    }
}

/// An envelope as it came off the wire: nothing about it is trusted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    header_bytes: Vec<u8>,
    signature: [u8; 64],
    bodies: Vec<Vec<u8>>,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Decode(format!("truncated {what}")));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<usize, Error> {
        let b = self.take(4, what)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| Error::Decode(format!("{what} does not fit")))
    }
}

impl Envelope {
    /// Assemble an envelope from its parts (used by sealing).
    pub(crate) fn from_parts(
        header_bytes: Vec<u8>,
        signature: Signature,
        bodies: Vec<Vec<u8>>,
    ) -> Self {
        Envelope {
            header_bytes,
            signature: signature.to_bytes(),
            bodies,
        }
    }

    /// Decode an envelope, enforcing `limits`. Never panics.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Envelope, Error> {
        if bytes.len() > limits.max_envelope {
            return Err(Error::TooLarge {
                what: "envelope",
                size: bytes.len(),
                limit: limits.max_envelope,
            });
        }
        let mut r = Reader { buf: bytes };
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a ketenpost envelope (bad magic)".into()));
        }
        let hlen = r.u32("header length")?;
        if hlen > limits.max_header {
            return Err(Error::TooLarge {
                what: "header",
                size: hlen,
                limit: limits.max_header,
            });
        }
        let header_bytes = r.take(hlen, "header")?.to_vec();
        let mut signature = [0u8; 64];
        signature.copy_from_slice(r.take(64, "signature")?);
        let count = usize::from(r.take(1, "body count")?[0]);
        if count == 0 {
            return Err(Error::Decode("envelope has no body".into()));
        }
        if count > limits.max_bodies {
            return Err(Error::TooLarge {
                what: "body count",
                size: count,
                limit: limits.max_bodies,
            });
        }
        let mut bodies = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u32("body length")?;
            if len > limits.max_body {
                return Err(Error::TooLarge {
                    what: "body",
                    size: len,
                    limit: limits.max_body,
                });
            }
            bodies.push(r.take(len, "body")?.to_vec());
        }
        if !r.buf.is_empty() {
            return Err(Error::Decode(format!(
                "{} trailing bytes after the last body",
                r.buf.len()
            )));
        }
        Ok(Envelope {
            header_bytes,
            signature,
            bodies,
        })
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len_u32(self.header_bytes.len()));
        out.extend_from_slice(&self.header_bytes);
        out.extend_from_slice(&self.signature);
        out.push(u8::try_from(self.bodies.len()).unwrap_or(u8::MAX));
        for b in &self.bodies {
            out.extend_from_slice(&len_u32(b.len()));
            out.extend_from_slice(b);
        }
        out
    }

    /// The length [`Envelope::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        4 + 4
            + self.header_bytes.len()
            + 64
            + 1
            + self.bodies.iter().map(|b| 4 + b.len()).sum::<usize>()
    }

    /// The SHA-256 (hex) that the header of the encoded envelope `bytes` lists for the
    /// view of `oin`, or `None` when `oin` has no view in it: what [`Envelope::decode`],
    /// [`Envelope::unverified_header`] and [`Header::body_for`] give, with only the
    /// header's `bodies` decoded and no body copied. Nothing is verified: for an envelope
    /// whose checks passed before (the broker's stored messages, on each receipt).
    pub fn view_digest(bytes: &[u8], oin: &Oin) -> Result<Option<String>, Error> {
        Ok(Envelope::view_of(bytes, oin)?.map(|(_, sha256)| sha256))
    }

    /// The index and SHA-256 (hex) of the view of `oin` in the encoded envelope `bytes`,
    /// or `None` when `oin` has none: [`Header::body_for`] of its header, with only the
    /// header's `bodies` decoded ([`Envelope::view_digest`]).
    pub fn view_of(bytes: &[u8], oin: &Oin) -> Result<Option<(usize, String)>, Error> {
        #[derive(Deserialize)]
        struct Views {
            bodies: Vec<View>,
        }
        #[derive(Deserialize)]
        struct View {
            recipients: Vec<Oin>,
            sha256: String,
        }
        let mut r = Reader { buf: bytes };
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a ketenpost envelope (bad magic)".into()));
        }
        let hlen = r.u32("header length")?;
        let views: Views = serde_json::from_slice(r.take(hlen, "header")?)
            .map_err(|e| Error::Decode(format!("header: {e}")))?;
        Ok(views
            .bodies
            .into_iter()
            .enumerate()
            .find(|(_, b)| b.recipients.contains(oin))
            .map(|(i, b)| (i, b.sha256)))
    }

    /// Parse the header without trusting it, e.g. to learn the claimed sender so its key
    /// can be looked up. The bytes are parsed as they are; nothing is re-serialised.
    pub fn unverified_header(&self) -> Result<Header, Error> {
        serde_json::from_slice(&self.header_bytes)
            .map_err(|e| Error::Decode(format!("header: {e}")))
    }

    /// The encoded envelope `bytes` as delivered to the recipients of its view `index`:
    /// what [`Envelope::decode`] (without limits), [`Envelope::delivery`] and
    /// [`Envelope::encode`] give, written straight from `bytes`, the header not parsed and
    /// no part copied twice. Nothing is verified: for an envelope whose checks passed
    /// before (the broker's stored messages, whose views it knows from those checks). An
    /// error when `bytes` is no whole envelope or has no view `index`.
    pub fn delivery_bytes(bytes: &[u8], index: usize) -> Result<Vec<u8>, Error> {
        let mut r = Reader { buf: bytes };
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::Decode("not a ketenpost envelope (bad magic)".into()));
        }
        let hlen = r.u32("header length")?;
        r.take(hlen, "header")?;
        r.take(64, "signature")?;
        let count = usize::from(r.take(1, "body count")?[0]);
        let head = bytes.len() - r.buf.len();
        let mut view = None;
        for i in 0..count {
            let len = r.u32("body length")?;
            let body = r.take(len, "body")?;
            if i == index {
                view = Some(body);
            }
        }
        if !r.buf.is_empty() {
            return Err(Error::Decode(format!(
                "{} trailing bytes after the last body",
                r.buf.len()
            )));
        }
        let Some(view) = view else {
            return Err(Error::Decode(format!(
                "no view {index} among the envelope's {count}"
            )));
        };
        let mut out = Vec::with_capacity(head + 4 * count + view.len());
        out.extend_from_slice(&bytes[..head]);
        for i in 0..count {
            if i == index {
                out.extend_from_slice(&len_u32(view.len()));
                out.extend_from_slice(view);
            } else {
                out.extend_from_slice(&len_u32(0));
            }
        }
        Ok(out)
    }

    /// The exact header bytes that were signed.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The body ciphertexts.
    pub fn bodies(&self) -> &[Vec<u8>] {
        &self.bodies
    }

    /// Verify the header signature against `sender_key` (the key the directory lists for
    /// the header's sender) and every body digest; check the header's structure.
    ///
    /// `sender_key` is called with the claimed sender and returns its directory key, or
    /// `None` when the sender is unknown or revoked.
    pub fn verify(
        self,
        limits: &Limits,
        sender_key: impl FnOnce(&Oin) -> Option<VerifyingKey>,
    ) -> Result<VerifiedEnvelope, Error> {
        let claimed = self.into_claimed()?;
        let key = sender_key(&claimed.header.sender)
            .ok_or_else(|| Error::UnknownSender(claimed.header.sender.to_string()))?;
        claimed.verify(limits, &key)
    }

    /// [`Envelope::verify`] for a delivery to `me` ([`Claimed::verify_delivery`]).
    pub fn verify_delivery(
        self,
        limits: &Limits,
        me: &Oin,
        sender_key: impl FnOnce(&Oin) -> Option<VerifyingKey>,
    ) -> Result<VerifiedEnvelope, Error> {
        let claimed = self.into_claimed()?;
        let key = sender_key(&claimed.header.sender)
            .ok_or_else(|| Error::UnknownSender(claimed.header.sender.to_string()))?;
        claimed.verify_delivery(limits, &key, me)
    }

    /// This envelope as delivered to one recipient: the header and signature as they
    /// are, the body at `index` (the recipient's view), and every other body withheld
    /// (zero length). The header's digests still prove the one view; the recipient learns
    /// nothing of the other views' ciphertexts. See [`Claimed::verify_delivery`].
    pub fn delivery(&self, index: usize) -> Envelope {
        Envelope {
            header_bytes: self.header_bytes.clone(),
            signature: self.signature,
            bodies: self
                .bodies
                .iter()
                .enumerate()
                .map(|(i, b)| if i == index { b.clone() } else { Vec::new() })
                .collect(),
        }
    }

    /// Parse the header once, to look at what it claims (the sender, to find its key)
    /// and then verify it with [`Claimed::verify`] without parsing it again.
    pub fn into_claimed(self) -> Result<Claimed, Error> {
        let header = self.unverified_header()?;
        Ok(Claimed {
            header,
            envelope: self,
        })
    }
}

/// An envelope with its header parsed but not yet verified (see
/// [`Envelope::into_claimed`]).
#[derive(Clone, Debug)]
pub struct Claimed {
    header: Header,
    envelope: Envelope,
}

impl Claimed {
    /// What the header claims; nothing in it is verified yet.
    pub fn unverified_header(&self) -> &Header {
        &self.header
    }

    /// The header bytes the signature covers (before framing, see `keys::framed`), and
    /// the signature.
    pub fn signed(&self) -> (&[u8], Signature) {
        (
            &self.envelope.header_bytes,
            Signature::from_bytes(&self.envelope.signature),
        )
    }

    /// Check the header signature against `key` (the claimed sender's), the header's
    /// structure and every body digest.
    pub fn verify(self, limits: &Limits, key: &VerifyingKey) -> Result<VerifiedEnvelope, Error> {
        self.verify_bodies(limits, std::slice::from_ref(key), None, &keys::Strict)
    }

    /// [`Claimed::verify`] with any of the sender's valid keys (its current key and,
    /// during a rotation's overlap, its previous ones).
    pub fn verify_any(
        self,
        limits: &Limits,
        keys: &[VerifyingKey],
    ) -> Result<VerifiedEnvelope, Error> {
        self.verify_bodies(limits, keys, None, &keys::Strict)
    }

    /// [`Claimed::verify_any`] with the header signature checked by `check` (a broker's
    /// batching verifier; the verdict is `verify_strict`'s either way).
    pub fn verify_any_with(
        self,
        limits: &Limits,
        keys: &[VerifyingKey],
        check: &dyn keys::SignatureCheck,
    ) -> Result<VerifiedEnvelope, Error> {
        self.verify_bodies(limits, keys, None, check)
    }

    /// Verify a delivery to `me` ([`Envelope::delivery`]): the header signature and
    /// structure, the digest of my body, and that every other body is withheld. A
    /// delivery that carries another recipient's view is refused
    /// ([`Error::NotOwnView`]): it is not what a broker sends.
    pub fn verify_delivery(
        self,
        limits: &Limits,
        key: &VerifyingKey,
        me: &Oin,
    ) -> Result<VerifiedEnvelope, Error> {
        self.verify_bodies(limits, std::slice::from_ref(key), Some(me), &keys::Strict)
    }

    /// [`Claimed::verify_delivery`] with any of the sender's valid keys.
    pub fn verify_delivery_any(
        self,
        limits: &Limits,
        keys: &[VerifyingKey],
        me: &Oin,
    ) -> Result<VerifiedEnvelope, Error> {
        self.verify_bodies(limits, keys, Some(me), &keys::Strict)
    }

    /// The signature and structure; then every body's digest (`me` is `None`), or only
    /// `me`'s body's with every other body withheld.
    fn verify_bodies(
        self,
        limits: &Limits,
        keys: &[VerifyingKey],
        me: Option<&Oin>,
        check: &dyn keys::SignatureCheck,
    ) -> Result<VerifiedEnvelope, Error> {
        let Claimed { header, envelope } = self;
        let sig = Signature::from_bytes(&envelope.signature);
        keys::verify_any_with(
            check,
            keys,
            Context::Header,
            &envelope.header_bytes,
            &sig,
            "header",
        )?;
        header.check_structure(limits)?;
        if header.bodies.len() != envelope.bodies.len() {
            return Err(Error::Decode(format!(
                "header lists {} bodies, envelope carries {}",
                header.bodies.len(),
                envelope.bodies.len()
            )));
        }
        let mine = match me {
            None => None,
            Some(me) => Some(
                header
                    .body_for(me)
                    .ok_or_else(|| Error::NotARecipient(me.to_string()))?
                    .0,
            ),
        };
        for (i, (r, b)) in header.bodies.iter().zip(&envelope.bodies).enumerate() {
            let withheld = mine.is_some_and(|m| m != i);
            if withheld {
                if !b.is_empty() {
                    return Err(Error::NotOwnView { index: i });
                }
            } else if r.size != b.len() as u64 || r.sha256 != sha256_hex(b) {
                return Err(Error::DigestMismatch { index: i });
            }
        }
        Ok(VerifiedEnvelope { header, envelope })
    }
}

fn len_u32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// An envelope whose header signature and body digests verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    header: Header,
    envelope: Envelope,
}

impl VerifiedEnvelope {
    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The envelope, for forwarding as it is.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Take the envelope out.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }

    /// Keep only the body for one recipient (what the broker queues for it): the header
    /// and signature stay as they are, other bodies are left out of what is stored.
    pub fn body_for(&self, oin: &Oin) -> Option<(usize, &[u8])> {
        let (i, _) = self.header.body_for(oin)?;
        self.envelope.bodies.get(i).map(|b| (i, b.as_slice()))
    }
}
