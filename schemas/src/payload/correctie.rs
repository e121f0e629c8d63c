//! The correction of data already shared ([`Correctie`], AVG art. 16).
//!
//! "Partijen verlenen medewerking wanneer een cliënt een verzoek indient ter uitoefening
//! van zijn of haar rechten zoals ... het recht op ... verbetering" (000:1754-1757); the
//! partner that finds its data were wrong tells the procesmanager, who coordinates the
//! correction (004:671-676). A correction names the messages whose content it corrects,
//! so the broker can route it to exactly the parties that received them
//! (`core::breach`), and carries the corrections one list per data category: each
//! recipient sees only the corrections of the categories its view grants, as it saw only
//! those fields of the corrected message.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Payload;
use crate::ids::MessageId;
use crate::kind::{Category, Kind};

/// A correction of the content of earlier messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Correctie {
    /// The messages whose content this corrects; the header's `corrects` names the same
    /// ids, and the broker routes the correction to every party that received them.
    #[schemars(length(min = 1, max = 100))]
    pub berichten: Vec<MessageId>,
    /// What led to the correction.
    pub aanleiding: CorrectieAanleiding,
    /// An explanation for the recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4000))]
    pub toelichting: Option<String>,
    /// Corrections of identity data (name, BSN, date of birth, household).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub identiteit: Vec<Verbetering>,
    /// Corrections of contact data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub contact: Vec<Verbetering>,
    /// Corrections of housing data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub wonen: Vec<Verbetering>,
    /// Corrections of income data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub inkomen: Vec<Verbetering>,
    /// Corrections of debt data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub schulden: Vec<Verbetering>,
    /// Corrections of support and health data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ondersteuning: Vec<Verbetering>,
    /// Corrections of justice data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub justitie: Vec<Verbetering>,
    /// Corrections of case-process data (a signal's description, an answer's steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub casus: Vec<Verbetering>,
}

/// What led to a correction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CorrectieAanleiding {
    /// The person asked for it (AVG art. 16; 000:1754-1757, 004:862-870).
    VerzoekBetrokkene,
    /// A partner found the data to be wrong (004:671-676).
    OnjuistheidGeconstateerd,
}

/// One corrected field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verbetering {
    /// The field of the corrected message, by its name there (e.g. `achternaam`).
    #[schemars(regex(pattern = r"^[a-z0-9_./]{1,128}$"))]
    pub veld: String,
    /// The correct value, as text; absent when the value is removed as wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub juist: Option<String>,
}

impl Payload for Correctie {
    const KIND: Kind = Kind::Correctie;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("berichten", Category::Case),
        ("aanleiding", Category::Case),
        ("toelichting", Category::Case),
        ("identiteit", Category::Identity),
        ("contact", Category::Contact),
        ("wonen", Category::Housing),
        ("inkomen", Category::Income),
        ("schulden", Category::Debt),
        ("ondersteuning", Category::Support),
        ("justitie", Category::Justice),
        ("casus", Category::Case),
    ];
}

impl Correctie {
    /// Whether it corrects anything at all.
    pub fn is_empty(&self) -> bool {
        [
            &self.identiteit,
            &self.contact,
            &self.wonen,
            &self.inkomen,
            &self.schulden,
            &self.ondersteuning,
            &self.justitie,
            &self.casus,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    /// A fictional correction of a misspelt surname and a wrong support profile.
    pub fn example() -> Self {
        Correctie {
            berichten: vec![MessageId(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0001,
            ))],
            aanleiding: CorrectieAanleiding::VerzoekBetrokkene,
            toelichting: Some("De achternaam was verkeerd gespeld.".into()),
            identiteit: vec![Verbetering {
                veld: "achternaam".into(),
                juist: Some("Voorbeeld-de Vries".into()),
            }],
            contact: Vec::new(),
            wonen: Vec::new(),
            inkomen: Vec::new(),
            schulden: Vec::new(),
            ondersteuning: vec![Verbetering {
                veld: "ondersteuningsprofiel".into(),
                juist: Some("Ambulante begeleiding, twee keer per week.".into()),
            }],
            justitie: Vec::new(),
            casus: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::payload::{builtin, project, validate, validate_view, KindSchema};
    use std::collections::BTreeSet;

    fn schema() -> &'static KindSchema {
        builtin(Kind::Correctie).unwrap()
    }

    #[test]
    fn a_view_holds_only_the_corrections_of_its_categories() {
        let full = serde_json::to_value(Correctie::example()).unwrap();
        validate(schema(), &full).unwrap();
        let housing: BTreeSet<Category> = [Category::Case, Category::Identity].into();
        let view = project(schema(), &housing, full.as_object().unwrap());
        assert!(view.get("identiteit").is_some());
        assert!(view.get("ondersteuning").is_none());
        validate_view(schema(), "woningcorporatie", &housing, &view).unwrap();
        let err = validate_view(schema(), "woningcorporatie", &housing, &full);
        assert!(err.is_err());
    }

    #[test]
    fn a_correction_names_a_message_and_corrects_something() {
        let mut v = serde_json::to_value(Correctie::example()).unwrap();
        v["berichten"] = serde_json::json!([]);
        assert!(validate(schema(), &v).is_err());
        let mut empty = Correctie::example();
        assert!(!empty.is_empty());
        empty.identiteit.clear();
        empty.ondersteuning.clear();
        assert!(empty.is_empty());
    }
}
