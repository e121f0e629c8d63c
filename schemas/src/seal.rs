//! Sealing and opening: views per recipient role, age encryption, signatures.
//!
//! Sealing takes a payload and the policy, builds one view per recipient role holding only
//! the fields whose category that role is granted, encrypts each view to the age
//! recipients of that role's parties, and signs the header. Opening verifies, picks the
//! body for me, decrypts it, validates it against the schema of my view and refuses a body
//! that holds a field outside that view.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::digest::sha256_hex;
use crate::directory::Directory;
use crate::envelope::{
    BodyRef, BreachScope, Envelope, Header, LegalBasis, VerifiedEnvelope, HEADER_VERSION,
};
use crate::ids::{CaseRef, MessageId, Oin, TraceId};
use crate::keys::{self, Context, SigningKey};
use crate::kind::Kind;
use crate::payload;
use crate::policy::{Policy, Role};
use crate::Error;

/// Largest decrypted payload accepted, in bytes.
pub const MAX_PLAINTEXT: usize = 4 * 1024 * 1024;

/// What a sender wants to send, before it is sealed.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    /// Message id; a fresh UUIDv7 by default.
    pub id: MessageId,
    /// The purpose (of the case).
    pub purpose: String,
    /// The kind.
    pub kind: Kind,
    /// The case.
    pub case_ref: CaseRef,
    /// Recipients with the role each receives in.
    pub recipients: Vec<(Oin, Role)>,
    /// The legal basis.
    pub legal_basis: LegalBasis,
    /// Event time (observed-at, discovered-at).
    pub event_time: Option<DateTime<Utc>>,
    /// The message this answers.
    pub in_reply_to: Option<MessageId>,
    /// Trace id; a fresh one by default.
    pub trace_id: TraceId,
    /// Breach scope of a datalek_melding.
    pub breach_scope: Option<BreachScope>,
    /// The messages a correctie corrects.
    pub corrects: Vec<MessageId>,
    /// A request for an answer by a due date.
    pub answer_request: Option<crate::envelope::AnswerRequest>,
    /// The full payload; each recipient gets its view of it.
    pub payload: Value,
}

impl Draft {
    /// A draft with a fresh id and trace id.
    pub fn new(
        purpose: impl Into<String>,
        kind: Kind,
        case_ref: CaseRef,
        recipients: Vec<(Oin, Role)>,
        legal_basis: LegalBasis,
        payload: Value,
    ) -> Self {
        Draft {
            id: MessageId::new(),
            purpose: purpose.into(),
            kind,
            case_ref,
            recipients,
            legal_basis,
            event_time: None,
            in_reply_to: None,
            trace_id: TraceId::random(),
            breach_scope: None,
            corrects: Vec::new(),
            answer_request: None,
            payload,
        }
    }
}

/// Who seals: the sender's OIN and signing key.
#[derive(Debug)]
pub struct Sender<'a> {
    /// The sender's OIN.
    pub oin: &'a Oin,
    /// Its ed25519 signing key.
    pub key: &'a SigningKey,
}

/// Seal a draft: validate the payload, build the views, encrypt, sign.
pub fn seal(
    draft: Draft,
    sender: Sender<'_>,
    policy: &Policy,
    directory: &Directory,
    now: DateTime<Utc>,
) -> Result<(Envelope, Header), Error> {
    if !draft.kind.is_content() {
        return Err(Error::Seal(format!(
            "{} is a control record, not sealed content",
            draft.kind
        )));
    }
    let rule = policy.rule(&draft.purpose, draft.kind).ok_or_else(|| {
        Error::Seal(format!(
            "purpose '{}' does not allow {}",
            draft.purpose, draft.kind
        ))
    })?;
    let schema = policy
        .kind_schema(draft.kind)
        .ok_or_else(|| Error::Seal(format!("the policy has no schema for {}", draft.kind)))?;
    payload::validate(schema, &draft.payload)?;
    let full = draft
        .payload
        .as_object()
        .ok_or_else(|| Error::Seal("payload is not a JSON object".into()))?;

    let mut by_role: BTreeMap<Role, Vec<&Oin>> = BTreeMap::new();
    for (oin, role) in &draft.recipients {
        if !rule.recipients.contains(role) {
            return Err(Error::Seal(format!(
                "role '{role}' may not receive {} under purpose '{}'",
                draft.kind, draft.purpose
            )));
        }
        let party = directory
            .active_party(oin)
            .ok_or_else(|| Error::Seal(format!("{oin} is not an active party")))?;
        if !party.has_role(role) {
            return Err(Error::Seal(format!("{oin} does not have role '{role}'")));
        }
        by_role.entry(role.clone()).or_default().push(oin);
    }

    let mut refs = Vec::with_capacity(by_role.len());
    let mut bodies = Vec::with_capacity(by_role.len());
    for (role, oins) in by_role {
        let view = payload::project(schema, &rule.view(&role), full);
        let plaintext = serde_json::to_vec(&view).map_err(|e| Error::Seal(e.to_string()))?;
        let mut recipients = Vec::with_capacity(oins.len());
        for oin in &oins {
            // Checked above: every recipient is an active party.
            let party = directory
                .active_party(oin)
                .ok_or_else(|| Error::Seal(format!("{oin} is not an active party")))?;
            recipients.push(party.recipient()?);
        }
        let ciphertext = encrypt(&recipients, &plaintext)?;
        refs.push(BodyRef {
            view: role,
            recipients: oins.into_iter().cloned().collect(),
            sha256: sha256_hex(&ciphertext),
            size: ciphertext.len() as u64,
        });
        bodies.push(ciphertext);
    }

    let header = Header {
        v: HEADER_VERSION,
        id: draft.id,
        covenant: policy.covenant.id.clone(),
        purpose: draft.purpose,
        kind: draft.kind,
        sender: sender.oin.clone(),
        recipients: draft.recipients.into_iter().map(|(o, _)| o).collect(),
        case_ref: draft.case_ref,
        legal_basis: draft.legal_basis,
        created_at: now,
        event_time: draft.event_time,
        in_reply_to: draft.in_reply_to,
        trace_id: draft.trace_id,
        breach_scope: draft.breach_scope,
        corrects: draft.corrects,
        answer_request: draft.answer_request,
        bodies: refs,
    };
    header.check_structure(&crate::envelope::Limits::default())?;
    let header_bytes = serde_json::to_vec(&header).map_err(|e| Error::Seal(e.to_string()))?;
    let signature = keys::sign(sender.key, Context::Header, &header_bytes);
    Ok((
        Envelope::from_parts(header_bytes, signature, bodies),
        header,
    ))
}

/// A message opened by its recipient.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// The verified header.
    pub header: Header,
    /// The role whose view was received.
    pub view: Role,
    /// SHA-256 (hex) of the body ciphertext, for the receipt.
    pub body_sha256: String,
    /// The view's payload, validated against its schema.
    pub payload: Value,
}

/// Open a verified envelope for `me`: pick my body, decrypt, validate my view.
pub fn open(
    verified: &VerifiedEnvelope,
    me: &Oin,
    identity: &age::x25519::Identity,
    policy: &Policy,
) -> Result<Opened, Error> {
    open_any(verified, me, std::slice::from_ref(identity), policy)
}

/// [`open`] with every identity the recipient holds: its current one and, after a key
/// rotation, the previous ones that bodies sealed before the rotation were encrypted to.
pub fn open_any(
    verified: &VerifiedEnvelope,
    me: &Oin,
    identities: &[age::x25519::Identity],
    policy: &Policy,
) -> Result<Opened, Error> {
    let header = verified.header();
    let (index, body_ref) = header
        .body_for(me)
        .ok_or_else(|| Error::NotARecipient(me.to_string()))?;
    let ciphertext = verified
        .envelope()
        .bodies()
        .get(index)
        .ok_or(Error::DigestMismatch { index })?;
    let rule = policy.rule(&header.purpose, header.kind).ok_or_else(|| {
        Error::Seal(format!(
            "purpose '{}' does not allow {}",
            header.purpose, header.kind
        ))
    })?;
    if !rule.recipients.contains(&body_ref.view) {
        return Err(Error::Seal(format!(
            "role '{}' may not receive {}",
            body_ref.view, header.kind
        )));
    }
    let plaintext = decrypt_any(identities, ciphertext)?;
    let value: Value = serde_json::from_slice(&plaintext)
        .map_err(|_| Error::Decrypt("body is not JSON".into()))?;
    let schema = policy
        .kind_schema(header.kind)
        .ok_or_else(|| Error::Seal(format!("the policy has no schema for {}", header.kind)))?;
    let granted = rule.view(&body_ref.view);
    payload::validate_view(schema, body_ref.view.as_str(), &granted, &value)?;
    Ok(Opened {
        header: header.clone(),
        view: body_ref.view.clone(),
        body_sha256: body_ref.sha256.clone(),
        payload: value,
    })
}

/// Encrypt to every recipient (one age file with one stanza per recipient).
pub fn encrypt(recipients: &[age::x25519::Recipient], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| Error::Encrypt(e.to_string()))?;
    writer
        .write_all(plaintext)
        .map_err(|e| Error::Encrypt(e.to_string()))?;
    writer.finish().map_err(|e| Error::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Decrypt with my identity, refusing plaintexts over [`MAX_PLAINTEXT`].
pub fn decrypt(identity: &age::x25519::Identity, ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
    decrypt_any(std::slice::from_ref(identity), ciphertext)
}

/// [`decrypt`] with any of several identities (current and previous keys).
pub fn decrypt_any(
    identities: &[age::x25519::Identity],
    ciphertext: &[u8],
) -> Result<Vec<u8>, Error> {
    let decryptor = age::Decryptor::new(ciphertext).map_err(|e| Error::Decrypt(e.to_string()))?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| Error::Decrypt(e.to_string()))?;
    let mut out = Vec::new();
    reader
        .take(MAX_PLAINTEXT as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Decrypt(e.to_string()))?;
    if out.len() > MAX_PLAINTEXT {
        return Err(Error::TooLarge {
            what: "decrypted body",
            size: out.len(),
            limit: MAX_PLAINTEXT,
        });
    }
    Ok(out)
}

/// The roles of `recipients` as the directory lists them, for a kind under a purpose:
/// the first of each party's roles that may receive the kind.
pub fn recipient_roles(
    policy: &Policy,
    directory: &Directory,
    purpose: &str,
    kind: Kind,
    recipients: &[Oin],
) -> Result<Vec<(Oin, Role)>, Error> {
    let rule = policy
        .rule(purpose, kind)
        .ok_or_else(|| Error::Seal(format!("purpose '{purpose}' does not allow {kind}")))?;
    let allowed: BTreeSet<&Role> = rule.recipients.iter().collect();
    recipients
        .iter()
        .map(|oin| {
            let party = directory
                .active_party(oin)
                .ok_or_else(|| Error::Seal(format!("{oin} is not an active party")))?;
            party
                .roles
                .iter()
                .find(|r| allowed.contains(r))
                .map(|r| (oin.clone(), r.clone()))
                .ok_or_else(|| Error::Seal(format!("{oin} has no role that may receive {kind}")))
        })
        .collect()
}

#[cfg(test)]
mod tests;
