//! Message kinds and data categories.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Every kind of message that travels through ketenpost.
///
/// *Content* kinds carry an encrypted payload the broker cannot read; *control* kinds are
/// signed records the broker reads and acts on (they hold no personal data). The built-in
/// content kinds are a standard library; a covenant may declare more
/// ([`Kind::Covenant`]), each with its own JSON Schema in the policy. Control kinds are
/// always built in.
///
/// On the wire and in policies a kind is its plain snake_case name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    /// Referral of a client (002:1295-1427, 003:600-891).
    Aanmelding,
    /// The six-field notice from the Transferpunt to a corporation (002:1461-1473).
    Aanmeldbericht,
    /// A nuisance or care signal (003:1615-1626, 001:448-469, 000:1150-1154).
    Signaal,
    /// The answer to a signal, with the steps taken (001:462-469, 002:976-977).
    Reactie,
    /// A personal-data breach notice (000:1772-1802, 004:608-653).
    DatalekMelding,
    /// Notice of a disclosure to a third party under a court order or legal duty (000:1762-1766).
    VerstrekkingDerden,
    /// A correction of data already shared, to every party that received them (AVG art.
    /// 16; 004:671-676, 000:1754-1757).
    Correctie,
    /// A consent grant (000:289-297). Control.
    Toestemming,
    /// Withdrawal of a consent (004:754-758). Control.
    ToestemmingIntrekking,
    /// Case lifecycle: open, add or remove a member, close (000:303-304). Control.
    CaseChange,
    /// The broker's order to delete a case's data (004:700-710). Control.
    DeletionOrder,
    /// A party's signed confirmation that it deleted a case's data. Control.
    DeletionConfirmation,
    /// A recipient's signed receipt of a delivered message. Control.
    DeliveryReceipt,
    /// A broker notice that a deadline passed without the answer it waits for. Control.
    DeadlineNotice,
    /// A broker notice that a message expired undelivered. Control.
    ExpiryNotice,
    /// A content kind the covenant's policy declares (`[kinds.<name>]`), e.g. a
    /// risicotaxatie. Whether it exists is the policy's to say: parsing accepts any valid
    /// name that is not a built-in one.
    Covenant(KindName),
}

impl Kind {
    /// All built-in kinds, in declaration order.
    pub const ALL: [Kind; 15] = [
        Kind::Aanmelding,
        Kind::Aanmeldbericht,
        Kind::Signaal,
        Kind::Reactie,
        Kind::DatalekMelding,
        Kind::VerstrekkingDerden,
        Kind::Correctie,
        Kind::Toestemming,
        Kind::ToestemmingIntrekking,
        Kind::CaseChange,
        Kind::DeletionOrder,
        Kind::DeletionConfirmation,
        Kind::DeliveryReceipt,
        Kind::DeadlineNotice,
        Kind::ExpiryNotice,
    ];

    /// The built-in kinds whose payload is end-to-end encrypted case content.
    pub const CONTENT: [Kind; 7] = [
        Kind::Aanmelding,
        Kind::Aanmeldbericht,
        Kind::Signaal,
        Kind::Reactie,
        Kind::DatalekMelding,
        Kind::VerstrekkingDerden,
        Kind::Correctie,
    ];

    /// Whether the payload is encrypted case content (as opposed to a control record).
    pub fn is_content(self) -> bool {
        matches!(self, Kind::Covenant(_)) || Self::CONTENT.contains(&self)
    }

    /// Whether this is one of the built-in kinds (the standard library and control kinds).
    pub fn is_builtin(self) -> bool {
        !matches!(self, Kind::Covenant(_))
    }

    /// Whether the broker resolves the recipients from its audit trail (the parties that
    /// received the affected data) rather than the case team: a breach notice and a
    /// correction (`core::breach`).
    pub fn routed_by_audit(self) -> bool {
        matches!(self, Kind::DatalekMelding | Kind::Correctie)
    }

    /// The snake_case name used in policies, headers and schema file names.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Covenant(name) => name.as_str(),
            builtin => builtin.builtin_name(),
        }
    }

    /// The name of a built-in kind; a covenant kind has none here.
    fn builtin_name(self) -> &'static str {
        match self {
            Kind::Aanmelding => "aanmelding",
            Kind::Aanmeldbericht => "aanmeldbericht",
            Kind::Signaal => "signaal",
            Kind::Reactie => "reactie",
            Kind::DatalekMelding => "datalek_melding",
            Kind::VerstrekkingDerden => "verstrekking_derden",
            Kind::Correctie => "correctie",
            Kind::Toestemming => "toestemming",
            Kind::ToestemmingIntrekking => "toestemming_intrekking",
            Kind::CaseChange => "case_change",
            Kind::DeletionOrder => "deletion_order",
            Kind::DeletionConfirmation => "deletion_confirmation",
            Kind::DeliveryReceipt => "delivery_receipt",
            Kind::DeadlineNotice => "deadline_notice",
            Kind::ExpiryNotice => "expiry_notice",
            Kind::Covenant(_) => "",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = Error;
    /// A built-in name gives the built-in kind; any other valid name a covenant kind.
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(k) = Kind::ALL.into_iter().find(|k| k.builtin_name() == s) {
            return Ok(k);
        }
        KindName::new(s)
            .map(Kind::Covenant)
            .ok_or_else(|| Error::UnknownName {
                what: "message kind",
                name: s.to_owned(),
            })
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a message kind: 1-{} characters a-z, 0-9 or '_', starting with a letter",
                    KindName::MAX
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Kind, E> {
                v.parse().map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Other("a malformed kind"), &self)
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl JsonSchema for Kind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Kind".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A message kind: a built-in one or one the covenant's policy declares.",
            "type": "string",
            "pattern": KindName::PATTERN,
        })
    }
}

/// The name of a covenant-defined kind: 1 to [`KindName::MAX`] bytes of `[a-z0-9_]`,
/// starting with a letter. Held inline so that [`Kind`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KindName {
    /// The name, zero-padded (so the derived order is the order of the names).
    bytes: [u8; KindName::MAX],
    len: u8,
}

impl KindName {
    /// The longest name, in bytes.
    pub const MAX: usize = 40;
    /// The names allowed, as a regular expression.
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_]{0,39}$";

    /// The name, if `s` is a valid one. Built-in names are valid too; [`Kind::from_str`]
    /// is what maps them to their built-in kind.
    pub fn new(s: &str) -> Option<KindName> {
        let b = s.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= Self::MAX
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        if !valid {
            return None;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..b.len()].copy_from_slice(b);
        Some(KindName {
            bytes,
            len: b.len() as u8,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let b = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        // Only ASCII is ever stored (checked in `new`), so this cannot fail.
        std::str::from_utf8(b).unwrap_or("")
    }
}

impl fmt::Debug for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The category of a payload field. A policy grants categories per recipient role; a role
/// sees a field only when it is granted the field's category.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Who the client is: name, BSN, date of birth, household composition.
    Identity,
    /// How to reach the client and the professionals around them.
    Contact,
    /// Housing history, current and wished-for housing, landlord and tenancy.
    Housing,
    /// Income and benefits.
    Income,
    /// Debts, arrears and debt support.
    Debt,
    /// Support and health: support profile, care provider, type and intensity of care.
    Support,
    /// Justice: police, probation, court orders, criminal history.
    Justice,
    /// Case-process information: a signal, an answer, a breach notice, a disclosure notice.
    Case,
}

impl Category {
    /// All categories.
    pub const ALL: [Category; 8] = [
        Category::Identity,
        Category::Contact,
        Category::Housing,
        Category::Income,
        Category::Debt,
        Category::Support,
        Category::Justice,
        Category::Case,
    ];

    /// The snake_case name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::Contact => "contact",
            Category::Housing => "housing",
            Category::Income => "income",
            Category::Debt => "debt",
            Category::Support => "support",
            Category::Justice => "justice",
            Category::Case => "case",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::UnknownName {
                what: "data category",
                name: s.to_owned(),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().ok(), Some(k));
            assert_eq!(
                serde_json::to_string(&k).ok(),
                Some(format!("\"{}\"", k.as_str()))
            );
        }
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>().ok(), Some(c));
        }
        for bad in ["", "Brief", "9brief", "brief-1", "a b", &"a".repeat(41)] {
            assert!(bad.parse::<Kind>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Kind>("\"Brief\"").is_err());
    }

    #[test]
    fn other_names_are_covenant_kinds() {
        let k: Kind = "risicotaxatie".parse().unwrap();
        assert_eq!(k, Kind::Covenant(KindName::new("risicotaxatie").unwrap()));
        assert!(k.is_content() && !k.is_builtin());
        assert_eq!(k.as_str(), "risicotaxatie");
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"risicotaxatie\"");
        assert_eq!(
            serde_json::from_str::<Kind>("\"risicotaxatie\"").unwrap(),
            k
        );
        let longest = "a".repeat(KindName::MAX);
        assert_eq!(longest.parse::<Kind>().unwrap().as_str(), longest);
        // The order of covenant kinds is the order of their names.
        let (a, b): (Kind, Kind) = ("plan".parse().unwrap(), "plan_van_aanpak".parse().unwrap());
        assert!(a < b);
        assert!(Kind::Signaal < a);
    }
}
