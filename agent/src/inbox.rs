//! The inbox: deliveries verified, decrypted, checked against our view and stored until the
//! partner system acknowledges them.
//!
//! [`open_delivery`] is the whole decision for one delivered envelope, without I/O: decode
//! within limits, verify the sender's header signature against the *directory* key (not
//! anything the broker says), check the digests, pick our body, decrypt it, and validate it
//! against the JSON Schema of our view. A body holding a field outside our view is refused
//! and reported ([`RefusedMessage`]), not stored and not receipted: the broker then lets it
//! expire and tells the sender.

use chrono::{DateTime, Utc};
use ketenpost_audit::AuditEntry;
use ketenpost_schemas::control::{DeliveryReceipt, SignedRecord};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{Envelope, Header, LegalBasis, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin, TraceId};
use ketenpost_schemas::keys::SigningKey;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::seal::{self, Opened};
use ketenpost_schemas::Error as SchemaError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{from_json, Sealed, Store};
use crate::Error;

impl Sealed for InboxEntry {
    const SECRET: &'static [&'static str] = &["payload"];
    const WHAT: &'static str = "inbox entry";
}

/// A received message, stored until acknowledged (and never past retention).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The message id.
    pub message_id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its case.
    pub case_ref: CaseRef,
    /// Its purpose.
    pub purpose: String,
    /// The sender.
    pub sender: Oin,
    /// The view (role) we received.
    pub view: Role,
    /// When the sender created it.
    pub created_at: DateTime<Utc>,
    /// When we stored it.
    pub received_at: DateTime<Utc>,
    /// The event it is about.
    pub event_time: Option<DateTime<Utc>>,
    /// The message it answers.
    pub in_reply_to: Option<MessageId>,
    /// The legal basis it was sent under.
    pub legal_basis: LegalBasis,
    /// Its trace id.
    pub trace_id: TraceId,
    /// SHA-256 of our body (named in the receipt).
    pub body_sha256: String,
    /// When the partner system acknowledged it.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When an answer is due from us: the covenant's term for this kind, or the due date
    /// the sender asked for (`answer_requested`), whichever is earlier.
    #[serde(default)]
    pub answer_due: Option<DateTime<Utc>>,
    /// The sender asked us for an answer with this message (its answer request names our
    /// role, or every recipient).
    #[serde(default)]
    pub answer_requested: bool,
    /// The deadline the broker reported as passed without our answer.
    #[serde(default)]
    pub answer_overdue: Option<DateTime<Utc>>,
    /// The header's `event_time` disagrees with the payload's own date of the event
    /// ([`event_time_mismatch`]): the sender's deadlines may be counted from a wrong time.
    #[serde(default)]
    pub event_time_mismatch: bool,
    /// Our view of the payload; `null` once its data key was destroyed (retention or a
    /// deletion in progress).
    #[serde(default)]
    pub payload: Value,
}

/// The signed receipt of a message, kept after the payload is gone so that a message the
/// broker delivers again (its first receipt was lost) is receipted again, not stored again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipted {
    /// The message.
    pub message_id: MessageId,
    /// Its case (for deletion).
    pub case_ref: CaseRef,
    /// The receipt as sent.
    pub receipt: SignedRecord,
    /// Whether the broker took it.
    pub confirmed: bool,
}

/// A delivery the agent would not accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedMessage {
    /// The message id, when the header parsed.
    pub message_id: Option<MessageId>,
    /// The claimed sender, when the header parsed.
    pub sender: Option<Oin>,
    /// The claimed kind.
    pub kind: Option<Kind>,
    /// The claimed case.
    pub case_ref: Option<CaseRef>,
    /// Why, as a code: `malformed`, `unknown_sender`, `bad_signature`, `digest_mismatch`,
    /// `wrong_covenant`, `not_a_recipient`, `not_own_view`, `view_not_ours`,
    /// `decrypt_failed`, `fields_outside_view`,
    /// `schema_violation`, `policy`.
    pub code: String,
    /// Why, in words (field names, never values).
    pub reason: String,
    /// First time the broker delivered it.
    pub first_seen: DateTime<Utc>,
    /// How often it was delivered.
    pub times_seen: u32,
}

/// Why [`open_delivery`] refused a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What the unverified header claims, if it parsed.
    pub claimed: Option<Box<Header>>,
    /// The code (see [`RefusedMessage::code`]).
    pub code: &'static str,
    /// The reason.
    pub reason: String,
}

impl Refusal {
    fn new(claimed: Option<&Header>, code: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            claimed: claimed.map(|h| Box::new(h.clone())),
            code,
            reason: reason.into(),
        }
    }

    /// The header, when the refusal came after the sender's signature verified (so what
    /// it says is the sender's signed statement); `None` before that (`malformed`,
    /// `unknown_sender`, `bad_signature`), when the header is only a claim.
    pub fn verified_header(&self) -> Option<&Header> {
        match self.code {
            "malformed" | "unknown_sender" | "bad_signature" => None,
            _ => self.claimed.as_deref(),
        }
    }

    /// The record to keep and report.
    pub fn to_record(&self, now: DateTime<Utc>) -> RefusedMessage {
        let h = self.claimed.as_deref();
        RefusedMessage {
            message_id: h.map(|h| h.id),
            sender: h.map(|h| h.sender.clone()),
            kind: h.map(|h| h.kind),
            case_ref: h.map(|h| h.case_ref.clone()),
            code: self.code.to_owned(),
            reason: self.reason.clone(),
            first_seen: now,
            times_seen: 1,
        }
    }
}

/// Verify, decrypt and check one delivered envelope for `me`.
pub fn open_delivery(
    bytes: &[u8],
    me: &Oin,
    identities: &[age::x25519::Identity],
    policy: &Policy,
    directory: &Directory,
    now: DateTime<Utc>,
) -> Result<Opened, Refusal> {
    let limits = Limits::default();
    let envelope = Envelope::decode(bytes, &limits)
        .map_err(|e| Refusal::new(None, "malformed", e.to_string()))?;
    let claimed = envelope
        .unverified_header()
        .map_err(|e| Refusal::new(None, "malformed", e.to_string()))?;
    let c = Some(&claimed);
    // The sender's current key, or a previous one inside its rotation overlap: a message
    // signed just before a rotation is still delivered after it.
    let Some(sender_keys) = directory
        .active_party(&claimed.sender)
        .map(|p| p.verifying_keys_at(now))
        .filter(|keys| !keys.is_empty())
    else {
        return Err(Refusal::new(
            c,
            "unknown_sender",
            format!(
                "sender {} is not an active party in the directory",
                claimed.sender
            ),
        ));
    };
    let verified = envelope
        .into_claimed()
        .and_then(|e| e.verify_delivery_any(&limits, &sender_keys, me))
        .map_err(|e| match e {
            SchemaError::BadSignature(_) => Refusal::new(
                c,
                "bad_signature",
                "the header signature does not verify with the sender's directory key",
            ),
            SchemaError::DigestMismatch { index } => Refusal::new(
                c,
                "digest_mismatch",
                format!("body {index} does not match its digest in the header"),
            ),
            SchemaError::NotARecipient(_) => Refusal::new(
                c,
                "not_a_recipient",
                format!("no body of this message is addressed to {me}"),
            ),
            SchemaError::NotOwnView { .. } => Refusal::new(c, "not_own_view", e.to_string()),
            other => Refusal::new(c, "malformed", other.to_string()),
        })?;
    let header = verified.header();
    if header.covenant != policy.covenant.id {
        return Err(Refusal::new(
            c,
            "wrong_covenant",
            format!("the message is for covenant '{}'", header.covenant),
        ));
    }
    // The broker checked that each body's view is its recipient's case role; we open
    // only a view of a role we have, whatever the header says.
    let my_roles = directory
        .party(me)
        .map(|p| p.roles.as_slice())
        .unwrap_or(&[]);
    match header.body_for(me) {
        None => {
            return Err(Refusal::new(
                c,
                "not_a_recipient",
                format!("no body of this message is addressed to {me}"),
            ))
        }
        Some((_, body)) if !my_roles.contains(&body.view) => {
            return Err(Refusal::new(
                c,
                "view_not_ours",
                SchemaError::ViewNotOurs {
                    view: body.view.to_string(),
                }
                .to_string(),
            ))
        }
        Some(_) => {}
    }
    let opened = seal::open_any(&verified, me, identities, policy).map_err(|e| match e {
        SchemaError::FieldsOutsideView { .. } => {
            Refusal::new(c, "fields_outside_view", e.to_string())
        }
        SchemaError::Schema { .. } => Refusal::new(c, "schema_violation", e.to_string()),
        SchemaError::Decrypt(_) | SchemaError::TooLarge { .. } => {
            Refusal::new(c, "decrypt_failed", e.to_string())
        }
        other => Refusal::new(c, "policy", other.to_string()),
    })?;
    check_anchor(&opened, policy).map_err(|reason| Refusal::new(c, "event_time_anchor", reason))?;
    Ok(opened)
}

/// A kind whose term runs from a payload fact (`event_time_from`): the header's
/// `event_time`, from which the broker counts the sender's deadline, must be the time that
/// fact gives in our view of the payload. Where our view holds none of the anchor fields
/// there is nothing to compare.
fn check_anchor(opened: &Opened, policy: &Policy) -> Result<(), String> {
    let h = &opened.header;
    let Some(rule) = policy.rule(&h.purpose, h.kind) else {
        return Ok(());
    };
    let anchored =
        ketenpost_schemas::policy::anchors::event_time(&rule.event_time_from, &opened.payload)?;
    match anchored {
        Some((field, at)) if h.event_time != Some(at) => Err(format!(
            "the header's event_time is not the time of the payload's '{field}', from which \
             the {} deadline runs",
            h.kind
        )),
        _ => Ok(()),
    }
}

/// The role a sender must have had: its one directory role that may send the kind.
pub fn sender_role(header: &Header, policy: &Policy, directory: &Directory) -> Option<Role> {
    let rule = policy.rule(&header.purpose, header.kind)?;
    let party = directory.active_party(&header.sender)?;
    let mut allowed = party.roles.iter().filter(|r| rule.senders.contains(*r));
    match (allowed.next(), allowed.next()) {
        (Some(r), None) => Some(r.clone()),
        _ => None,
    }
}

/// The inbox entry for an opened message; `answer_due` from the policy's `answer_within`
/// for the kind, counted from now (delivery), as the broker counts it, when our role in
/// the message owes an answer (`answer_by`), or the due date of the message's answer
/// request when it names our role (or no role), whichever is earlier.
pub fn entry(opened: Opened, policy: &Policy, now: DateTime<Utc>) -> InboxEntry {
    let standing = policy
        .rule(&opened.header.purpose, opened.header.kind)
        .filter(|r| r.answer_by.is_empty() || r.answer_by.contains(&opened.view))
        .and_then(|r| r.answer_within)
        .map(|d| d.deadline(now, &policy.calendar));
    let requested = opened
        .header
        .answer_request
        .as_ref()
        .filter(|q| q.by.is_empty() || q.by.contains(&opened.view))
        .map(|q| q.due);
    let answer_due = match (standing, requested) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let event_time_mismatch = event_time_mismatch(&opened.header, &opened.payload);
    let h = opened.header;
    InboxEntry {
        message_id: h.id,
        kind: h.kind,
        case_ref: h.case_ref,
        purpose: h.purpose,
        sender: h.sender,
        view: opened.view,
        created_at: h.created_at,
        received_at: now,
        event_time: h.event_time,
        in_reply_to: h.in_reply_to,
        legal_basis: h.legal_basis,
        trace_id: h.trace_id,
        body_sha256: opened.body_sha256,
        acknowledged_at: None,
        answer_due,
        answer_requested: requested.is_some(),
        answer_overdue: None,
        event_time_mismatch,
        payload: opened.payload,
    }
}

/// Whether the header's `event_time` (the sender's claim, from which deadlines count)
/// disagrees with the date the payload itself gives for the event, where our view has
/// one: by more than a minute, or for a payload that gives only a day, outside that day.
pub fn event_time_mismatch(header: &Header, payload: &Value) -> bool {
    let (Some(claimed), Some(stated)) = (
        header.event_time,
        crate::resolve::event_time_from_payload(header.kind, payload),
    ) else {
        return false;
    };
    if header.kind == Kind::VerstrekkingDerden {
        // `stated` is the start of an Amsterdam calendar day, taken as UTC midnight; that
        // day starts up to two hours earlier in UTC.
        let from = stated - chrono::Duration::hours(2);
        let until = stated + chrono::Duration::days(1);
        !(from..until).contains(&claimed)
    } else {
        (claimed - stated).num_seconds().abs() > 60
    }
}

/// Sign the receipt for a stored entry.
pub fn receipt(entry: &InboxEntry, me: &Oin, key: &SigningKey) -> Result<SignedRecord, Error> {
    let r = DeliveryReceipt {
        message_id: entry.message_id,
        recipient: me.clone(),
        body_sha256: entry.body_sha256.clone(),
        received_at: entry.received_at,
    };
    Ok(SignedRecord::sign(&r, me.clone(), key)?)
}

impl Store {
    /// Store a received message with its receipt, and flush, before the receipt goes out.
    /// Its audit record (`audit`) goes into the agent's trail after both writes, and is
    /// made durable by the same flush.
    pub async fn inbox_insert(
        &self,
        entry: &InboxEntry,
        receipt: &Receipted,
        audit: AuditEntry,
        schema: Option<&ketenpost_schemas::payload::KindSchema>,
    ) -> Result<(), Error> {
        let key = entry.message_id.0.as_bytes();
        {
            let _guard = self.lock();
            self.put_sealed(&self.inbox, key, entry)?;
            Store::put(&self.receipted, key, receipt)?;
            let blinds = crate::rights::blinds_of(&self.vault, schema, &entry.payload);
            self.index_identifiers(&entry.case_ref, &blinds)?;
        }
        self.audit(audit, entry.received_at);
        self.flush().await
    }

    /// An inbox entry.
    pub fn inbox_get(&self, id: &MessageId) -> Result<Option<InboxEntry>, Error> {
        self.get_sealed(&self.inbox, id.0.as_bytes())
    }

    /// Every inbox entry, oldest first.
    pub fn inbox_all(&self) -> Result<Vec<InboxEntry>, Error> {
        self.all_sealed(&self.inbox)
    }

    /// Mark an entry acknowledged (once; a second ack keeps the first time).
    pub fn inbox_ack(
        &self,
        id: &MessageId,
        now: DateTime<Utc>,
    ) -> Result<Option<InboxEntry>, Error> {
        let _guard = self.lock();
        let key = id.0.as_bytes();
        let Some(mut e) = self.get_sealed::<InboxEntry>(&self.inbox, key)? else {
            return Ok(None);
        };
        if e.acknowledged_at.is_none() {
            e.acknowledged_at = Some(now);
            self.put_sealed(&self.inbox, key, &e)?;
        }
        Ok(Some(e))
    }

    /// Note that the broker reported our answer to a received message overdue.
    pub fn inbox_overdue(&self, id: &MessageId, deadline: DateTime<Utc>) -> Result<bool, Error> {
        let _guard = self.lock();
        let key = id.0.as_bytes();
        let Some(mut e) = self.get_sealed::<InboxEntry>(&self.inbox, key)? else {
            return Ok(false);
        };
        e.answer_overdue = Some(deadline);
        self.put_sealed(&self.inbox, key, &e)?;
        Ok(true)
    }

    /// Remove an inbox entry (retention): its data key first, so the payload cannot be
    /// opened from what sled's log still holds; its receipt stays.
    pub fn inbox_remove(&self, id: &MessageId) -> Result<(), Error> {
        let _guard = self.lock();
        let key = id.0.as_bytes();
        if let Some(ids) = self.inbox.get(key)? {
            let ids: crate::store::CaseOnly = from_json("inbox entry", &ids)?;
            self.vault.destroy_message(&ids.case_ref, id)?;
        }
        self.inbox.remove(key)?;
        Ok(())
    }

    /// The kept receipt of a message, if it was received before.
    pub fn receipted(&self, id: &MessageId) -> Result<Option<Receipted>, Error> {
        Store::get(&self.receipted, "receipt", id.0.as_bytes())
    }

    /// Mark a kept receipt as taken by the broker.
    pub fn receipt_confirmed(&self, id: &MessageId) -> Result<(), Error> {
        let _guard = self.lock();
        let key = id.0.as_bytes();
        if let Some(mut r) = Store::get::<Receipted>(&self.receipted, "receipt", key)? {
            if !r.confirmed {
                r.confirmed = true;
                Store::put(&self.receipted, key, &r)?;
            }
        }
        Ok(())
    }

    /// Record a refused delivery (or count another delivery of it). Returns whether it is
    /// new.
    pub fn refused_note(&self, key: &[u8], record: RefusedMessage) -> Result<bool, Error> {
        let _guard = self.lock();
        let existing: Option<RefusedMessage> = Store::get(&self.refused, "refused delivery", key)?;
        let (record, new) = match existing {
            Some(mut r) => {
                r.times_seen = r.times_seen.saturating_add(1);
                (r, false)
            }
            None => (record, true),
        };
        Store::put(&self.refused, key, &record)?;
        Ok(new)
    }

    /// Every refused delivery.
    pub fn refused_all(&self) -> Result<Vec<RefusedMessage>, Error> {
        Store::all(&self.refused, "refused delivery")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ketenpost_schemas::directory::{BrokerEntry, Party};
    use ketenpost_schemas::envelope::LegalBasis;
    use ketenpost_schemas::keys;
    use ketenpost_schemas::payload::Aanmelding;
    use ketenpost_schemas::seal::{seal, Draft, Sender};

    const WALCHEREN: &str = include_str!("../../schemas/policies/walcheren.toml");

    struct Side {
        oin: Oin,
        key: SigningKey,
        age: age::x25519::Identity,
    }

    fn side(n: u8) -> Side {
        Side {
            oin: format!("{n:020}").parse().unwrap(),
            key: keys::generate_signing_key(),
            age: keys::generate_age_identity(),
        }
    }

    fn party(s: &Side, role: &str) -> Party {
        Party {
            oin: s.oin.clone(),
            name: role.into(),
            roles: vec![Role::new(role)],
            signing_key: keys::verifying_key_to_text(&s.key.verifying_key()),
            age_recipient: s.age.to_public().to_string(),
            cert_fingerprint: "00".repeat(32),
            fg_contact: "fg@example.org".into(),
            revoked: false,
            previous_keys: Vec::new(),
        }
    }

    fn directory(parties: Vec<Party>) -> Directory {
        Directory {
            covenant: "walcheren".into(),
            serial: 1,
            issued_at: Utc::now(),
            policy_sha256: "0".repeat(64),
            fgs: Vec::new(),
            broker: BrokerEntry {
                name: "broker".into(),
                signing_key: keys::verifying_key_to_text(
                    &keys::generate_signing_key().verifying_key(),
                ),
                cert_fingerprint: "00".repeat(32),
            },
            parties,
        }
    }

    /// An aanmelding from `from` to `to` (with the roles given), sealed under `policy`
    /// and `dir`: the whole envelope, every view.
    fn aanmelding(policy: &Policy, dir: &Directory, from: &Side, to: &[(&Side, &str)]) -> Envelope {
        let draft = Draft::new(
            "uitstroom",
            Kind::Aanmelding,
            CaseRef::random(),
            to.iter()
                .map(|(s, r)| (s.oin.clone(), Role::new(*r)))
                .collect(),
            LegalBasis::Consent {
                consent_id: uuid::Uuid::now_v7(),
            },
            serde_json::to_value(Aanmelding::example()).unwrap(),
        );
        let sender = Sender {
            oin: &from.oin,
            key: &from.key,
        };
        seal(draft, sender, policy, dir, Utc::now()).unwrap().0
    }

    /// An aanmelding from the care provider to the corporation, sealed under `policy`.
    /// Open `bytes` as delivered to `to`, now.
    fn open_as(
        bytes: &[u8],
        to: &Side,
        policy: &Policy,
        dir: &Directory,
    ) -> Result<Opened, Refusal> {
        open_delivery(
            bytes,
            &to.oin,
            std::slice::from_ref(&to.age),
            policy,
            dir,
            Utc::now(),
        )
    }

    fn sealed(policy: &Policy, dir: &Directory, zorg: &Side, corp: &Side) -> Vec<u8> {
        aanmelding(policy, dir, zorg, &[(corp, "woningcorporatie")]).encode()
    }

    #[test]
    fn a_rent_arrears_signal_whose_event_time_is_not_its_anchor_is_refused() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (corp, gem) = (side(1), side(2));
        let dir = directory(vec![
            party(&corp, "woningcorporatie"),
            party(&gem, "gemeente"),
        ]);
        let mut payload =
            serde_json::to_value(ketenpost_schemas::payload::Signaal::example()).unwrap();
        payload["categorie"] = serde_json::json!("huurachterstand");
        payload["huurachterstand_ontstaan_op"] = serde_json::json!("2025-03-01");
        let signal = |event_time: DateTime<Utc>| {
            let mut draft = Draft::new(
                "uitstroom",
                Kind::Signaal,
                CaseRef::random(),
                vec![(gem.oin.clone(), Role::new("gemeente"))],
                LegalBasis::Consent {
                    consent_id: uuid::Uuid::now_v7(),
                },
                payload.clone(),
            );
            draft.event_time = Some(event_time);
            let sender = Sender {
                oin: &corp.oin,
                key: &corp.key,
            };
            seal(draft, sender, &policy, &dir, Utc::now())
                .unwrap()
                .0
                .encode()
        };
        // 000:1150-1154: the term runs from the day the arrears arose, from its start in
        // Amsterdam (winter time: 23:00 UTC the day before).
        let arose: DateTime<Utc> = "2025-02-28T23:00:00Z".parse().unwrap();
        assert!(open_as(&signal(arose), &gem, &policy, &dir).is_ok());
        // A sender that counts from the observation instead (a later event time, so a
        // later deadline) is refused, naming the anchor and no value.
        let observed: DateTime<Utc> = payload["waargenomen_op"].as_str().unwrap().parse().unwrap();
        let refusal = open_as(&signal(observed), &gem, &policy, &dir).unwrap_err();
        assert_eq!(refusal.code, "event_time_anchor", "{}", refusal.reason);
        assert!(refusal.reason.contains("huurachterstand_ontstaan_op"));
        assert!(!refusal.reason.contains("2025"), "{}", refusal.reason);
    }

    #[test]
    fn a_corporation_opens_only_its_housing_view() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (zorg, corp) = (side(1), side(2));
        let dir = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "woningcorporatie"),
        ]);
        let bytes = sealed(&policy, &dir, &zorg, &corp);
        let opened = open_as(&bytes, &corp, &policy, &dir).unwrap();
        assert_eq!(opened.view.as_str(), "woningcorporatie");
        assert!(opened.payload.get("woonwens").is_some());
        assert!(opened.payload.get("ondersteuning").is_none());
        assert!(opened.payload.get("inkomen").is_none());
    }

    #[test]
    fn a_body_labelled_with_another_roles_view_is_refused() {
        // A sender that gives the corporation the municipality's (wider) view.
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (zorg, corp) = (side(1), side(2));
        let dir = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "woningcorporatie"),
        ]);
        // Sealed against a directory in which the corporation is a municipality.
        let forged = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "gemeente"),
        ]);
        let bytes = aanmelding(&policy, &forged, &zorg, &[(&corp, "gemeente")]).encode();
        let refusal = open_as(&bytes, &corp, &policy, &dir).unwrap_err();
        assert_eq!(refusal.code, "view_not_ours", "{}", refusal.reason);
        assert!(refusal.reason.contains("gemeente"), "{}", refusal.reason);
    }

    #[test]
    fn a_delivery_carrying_another_recipients_body_is_refused() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (zorg, corp, gem) = (side(1), side(2), side(3));
        let dir = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "woningcorporatie"),
            party(&gem, "gemeente"),
        ]);
        let whole = aanmelding(
            &policy,
            &dir,
            &zorg,
            &[(&corp, "woningcorporatie"), (&gem, "gemeente")],
        );
        // The whole envelope (every view) is not what a broker delivers.
        let refusal = open_as(&whole.encode(), &corp, &policy, &dir).unwrap_err();
        assert_eq!(refusal.code, "not_own_view", "{}", refusal.reason);
        // The delivery with only our own view opens.
        let header = whole.unverified_header().unwrap();
        let (mine, _) = header.body_for(&corp.oin).unwrap();
        let delivery = whole.delivery(mine).encode();
        let opened = open_as(&delivery, &corp, &policy, &dir).unwrap();
        assert_eq!(opened.view.as_str(), "woningcorporatie");
    }

    #[test]
    fn a_body_with_fields_outside_our_view_is_refused_by_name() {
        // A sender whose policy (wrongly) shows support data to corporations.
        let leaky = WALCHEREN.replace(
            "views.woningcorporatie = [\"case\", \"identity\", \"contact\", \"housing\"]",
            "views.woningcorporatie = [\"case\", \"identity\", \"contact\", \"housing\", \"support\"]",
        );
        assert_ne!(leaky, WALCHEREN);
        let leaky = Policy::from_toml(&leaky).unwrap();
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (zorg, corp) = (side(1), side(2));
        let dir = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "woningcorporatie"),
        ]);
        let bytes = sealed(&leaky, &dir, &zorg, &corp);
        let refusal = open_as(&bytes, &corp, &policy, &dir).unwrap_err();
        assert_eq!(refusal.code, "fields_outside_view");
        assert!(
            refusal.reason.contains("ondersteuning"),
            "{}",
            refusal.reason
        );
        // The reason names fields, never values.
        assert!(!refusal.reason.contains("111222333"));
        let record = refusal.to_record(Utc::now());
        assert_eq!(record.sender, Some(zorg.oin.clone()));
        assert!(record.message_id.is_some());
    }

    #[test]
    fn forged_tampered_and_foreign_deliveries_are_refused() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (zorg, corp, stranger) = (side(1), side(2), side(3));
        let dir = directory(vec![
            party(&zorg, "zorgaanbieder"),
            party(&corp, "woningcorporatie"),
        ]);
        let bytes = sealed(&policy, &dir, &zorg, &corp);

        // A body byte changed: the digest in the signed header no longer matches.
        let mut tampered = bytes.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        let r = open_as(&tampered, &corp, &policy, &dir).unwrap_err();
        assert_eq!(r.code, "digest_mismatch");

        // The directory lists another key for the sender.
        let mut forged_dir = dir.clone();
        forged_dir.parties[0].signing_key =
            keys::verifying_key_to_text(&keys::generate_signing_key().verifying_key());
        let r = open_as(&bytes, &corp, &policy, &forged_dir).unwrap_err();
        assert_eq!(r.code, "bad_signature");

        // A sender the directory does not know.
        let only_corp = directory(vec![party(&corp, "woningcorporatie")]);
        let r = open_as(&bytes, &corp, &policy, &only_corp).unwrap_err();
        assert_eq!(r.code, "unknown_sender");

        // Not for us.
        let r = open_as(&bytes, &stranger, &policy, &dir).unwrap_err();
        assert_eq!(r.code, "not_a_recipient");

        // Garbage never panics.
        for junk in [
            &b""[..],
            b"KPM1",
            b"KPM1\xff\xff\xff\xff",
            &bytes[..bytes.len() / 2],
        ] {
            let r = open_as(junk, &corp, &policy, &dir).unwrap_err();
            assert_eq!(r.code, "malformed");
        }
    }
}
