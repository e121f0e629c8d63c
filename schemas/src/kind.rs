//! Message kinds and data categories.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Every kind of message that travels through ketenpost.
///
/// *Content* kinds carry an encrypted payload the broker cannot read; *control* kinds are
/// signed records the broker reads and acts on (they hold no personal data).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
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
}

impl Kind {
    /// All kinds, in declaration order.
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

    /// The kinds whose payload is end-to-end encrypted case content.
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
        Self::CONTENT.contains(&self)
    }

    /// Whether the broker resolves the recipients from its audit trail (the parties that
    /// received the affected data) rather than the case team: a breach notice and a
    /// correction (`core::breach`).
    pub fn routed_by_audit(self) -> bool {
        matches!(self, Kind::DatalekMelding | Kind::Correctie)
    }

    /// The snake_case name used in policies, headers and schema file names.
    pub fn as_str(self) -> &'static str {
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
    fn from_str(s: &str) -> Result<Self, Error> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::UnknownName {
                what: "message kind",
                name: s.to_owned(),
            })
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
        assert!("brief".parse::<Kind>().is_err());
    }
}
