//! Case-process payloads: a signal about a client ([`Signaal`]), the answer to it
//! ([`Reactie`]), a personal-data breach notice ([`DatalekMelding`]) and the notice of a
//! disclosure to a third party ([`VerstrekkingDerden`]).
//!
//! Citations are `seed:line` into `/work/shared/seeds/` (`000` Walcheren, `001` Flevoland,
//! `002` Friesland, `003` IJmond & Zuid-Kennemerland, `004` Enschede).
//!
//! # Where the fields come from and how they were read
//!
//! - **Signaal**: the signal categories are those the covenants name: not (or no longer)
//!   accepting housing support, noise nuisance, threatening neighbours, squalor, damage to
//!   the dwelling (003:1617-1622), rent arrears (000:1150-1154, 001:246-248), relapse
//!   (002:900, 002:939-941) and "andere knelpunten" (002:941). "Not accepting support" and
//!   care avoidance (000:414-418, 002:1080) are read as one category, `zorgmijding`. The
//!   start of the arrears is asked because the deadlines run from it ("binnen maximaal 1
//!   maand na het ontstaan", 000:1150; "binnen 4 weken", 001:246-248), and whether the
//!   waakvlam period runs because that decides whether the municipality is told
//!   (000:1152, 001:246). The urgency scale is ours: the texts speak of signals, incidents
//!   and calamities where safety is at stake (002:979-983).
//! - **Reactie**: the answer of a care provider to the corporation "over de stappen die zij
//!   zet" within 24 hours (001:462-466), escalation when that does not work (001:468-469),
//!   and feedback to the reporter once the report is dealt with (002:976-977).
//! - **DatalekMelding**: the seven items of 000:1782-1802 (same list in 001:631-643), the
//!   items 004:614-627 add (contact person, consequences and risks, own restoring
//!   measures; "aard en omvang" is covered by `omschrijving` and `aantal_betrokkenen`), the
//!   moment of discovery from which the 48 h, 12 h and 72 h run (000:1772-1776,
//!   004:608-610, 004:650-653), and the scope (cases and time window) so the broker can
//!   reach every party that received the affected data. "De duur van de inbreuk en het
//!   ontstaansmoment" is carried as a start and an end instant.
//! - **VerstrekkingDerden**: "ieder rechterlijk bevel, dagvaarding, wettelijke verplichting of
//!   anderszins verplichting tot het delen van persoonsgegevens met derden", told within two
//!   workdays (000:1762-1766, 001:623-625). The notice says on which ground, to whom and
//!   what; the two-workday term runs from the moment the obligation was received.
//!
//! The fields are case-process data ([`Category::Case`]), except the identities of the
//! persons a breach concerns, which are identity data, and the categorised free text of a
//! signal, an answer and a disclosure notice: `toelichting_zorg` (support),
//! `toelichting_justitie` (justice), `toelichting_wonen` (housing) and
//! `toelichting_financien` (debt). The covenants let the parties share what each needs
//! for its own task only (e.g. 000:297-301, 003:1615-1626, 004:472-480): a police signal's
//! justice context is not for the corporation, the care provider's care context is not for
//! the police. Case-process fields such as `omschrijving` should say what happened without
//! that context; the categorised fields carry it to the roles whose view grants it.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::aanmelding::Contactgegevens;
use super::Payload;
use crate::ids::CaseRef;
use crate::kind::{Category, Kind};

// ---------------------------------------------------------------------------------------
// Signaal
// ---------------------------------------------------------------------------------------

/// A signal of care or nuisance about a client, shared with the parties involved within
/// 48 hours (003:1615-1626, 001:448-451, 000:1150-1154).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signaal {
    /// What kind of signal this is (003:1617-1622, 000:1150, 002:939-941).
    pub categorie: SignaalCategorie,
    /// When the signal was observed (003:1624-1626: shared within 48 hours).
    pub waargenomen_op: DateTime<Utc>,
    /// What was observed (001:448-451, 001:462-463).
    #[schemars(length(min = 1, max = 8000))]
    pub omschrijving: String,
    /// How urgent the sender judges it; `acuut` when safety is at stake (002:979-983).
    pub urgentie: Urgentie,
    /// For rent arrears: the date the arrears arose, from which the reporting term runs
    /// (000:1150-1154, 001:246-248).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huurachterstand_ontstaan_op: Option<NaiveDate>,
    /// Whether the waakvlam (after-care) period runs, in which the municipality is told as
    /// well (000:1150-1154, 001:246-248).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tijdens_waakvlamperiode: Option<bool>,
    /// Care and support context of the signal, seen only by roles granted `support`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_zorg: Option<String>,
    /// Justice context (police, probation, court) of the signal, seen only by roles
    /// granted `justice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_justitie: Option<String>,
    /// Housing and tenancy context of the signal, seen only by roles granted `housing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_wonen: Option<String>,
    /// Debts and arrears context of the signal, seen only by roles granted `debt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_financien: Option<String>,
}

impl Payload for Signaal {
    const KIND: Kind = Kind::Signaal;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("categorie", Category::Case),
        ("waargenomen_op", Category::Case),
        ("omschrijving", Category::Case),
        ("urgentie", Category::Case),
        ("huurachterstand_ontstaan_op", Category::Case),
        ("tijdens_waakvlamperiode", Category::Case),
        ("toelichting_zorg", Category::Support),
        ("toelichting_justitie", Category::Justice),
        ("toelichting_wonen", Category::Housing),
        ("toelichting_financien", Category::Debt),
    ];
}

/// The category of a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignaalCategorie {
    /// Care avoidance, including no longer accepting housing support (003:1620-1621,
    /// 000:414-418, 002:1080).
    Zorgmijding,
    /// Noise nuisance (003:1621).
    Geluidsoverlast,
    /// Threatening neighbours (003:1621).
    Bedreiging,
    /// Squalor (003:1622).
    Vervuiling,
    /// Damage done to the dwelling (003:1622).
    SchadeAanWoning,
    /// Rent arrears (000:1150-1154, 001:246-248).
    Huurachterstand,
    /// Relapse (002:900, 002:939-941).
    Terugval,
    /// Another concern or problem ("andere knelpunten", 002:941).
    Overig,
}

/// How urgent a signal is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Urgentie {
    /// Can wait for the next regular contact.
    Laag,
    /// The ordinary case: answer within the covenant's term.
    Normaal,
    /// Needs attention the same day.
    Hoog,
    /// Safety at stake: incident or calamity (002:979-983).
    Acuut,
}

// ---------------------------------------------------------------------------------------
// Reactie
// ---------------------------------------------------------------------------------------

/// The answer to a signal: the steps the recipient takes (001:462-469), and the feedback
/// to the reporter once dealt with (002:976-977).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reactie {
    /// The steps taken or to be taken, at least one (001:465-466).
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 2000)))]
    pub ondernomen_stappen: Vec<String>,
    /// Where the matter stands.
    pub status: ReactieStatus,
    /// Further explanation, within what privacy rules allow (002:976-977).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting: Option<String>,
    /// Date of the next contact or evaluation, if agreed (001:453, 001:468-469).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vervolg_op: Option<NaiveDate>,
    /// Care and support context of the answer, seen only by roles granted `support`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_zorg: Option<String>,
    /// Justice context (police, probation, court) of the answer, seen only by roles
    /// granted `justice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_justitie: Option<String>,
    /// Housing and tenancy context of the answer, seen only by roles granted `housing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_wonen: Option<String>,
    /// Debts and arrears context of the answer, seen only by roles granted `debt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_financien: Option<String>,
}

impl Payload for Reactie {
    const KIND: Kind = Kind::Reactie;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("ondernomen_stappen", Category::Case),
        ("status", Category::Case),
        ("toelichting", Category::Case),
        ("vervolg_op", Category::Case),
        ("toelichting_zorg", Category::Support),
        ("toelichting_justitie", Category::Justice),
        ("toelichting_wonen", Category::Housing),
        ("toelichting_financien", Category::Debt),
    ];
}

/// Where the answer to a signal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReactieStatus {
    /// Being dealt with (001:465-466).
    InBehandeling,
    /// Dealt with; the reporter is told (002:976-977).
    Afgehandeld,
    /// Escalated or referred to another party (001:468-469).
    Doorverwezen,
    /// No action needed or possible.
    GeenActie,
}

// ---------------------------------------------------------------------------------------
// DatalekMelding
// ---------------------------------------------------------------------------------------

/// A personal-data breach notice to the parties concerned: within 48 hours (000:1772-1776,
/// 001:627-629), to the procesmanager within 12 hours (004:608-614).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatalekMelding {
    /// Detailed description of the breach, its nature and extent (000:1786-1788,
    /// 004:615).
    #[schemars(length(min = 1, max = 8000))]
    pub omschrijving: String,
    /// The types of personal data involved, as data categories (000:1790, 001:636).
    #[schemars(length(min = 1, max = 8))]
    pub soort_persoonsgegevens: Vec<Category>,
    /// Number of persons whose data are involved, an estimate if need be (000:1792,
    /// 001:637).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aantal_betrokkenen: Option<u32>,
    /// Identity (name) of the persons involved (000:1792-1794, 001:638).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 200)))]
    pub identiteit_betrokkenen: Vec<String>,
    /// Measures taken to limit the consequences for the persons involved and to end the
    /// breach (000:1796-1798, 004:619-621).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub getroffen_maatregelen: Option<String>,
    /// Measures the party itself has taken or will take to restore the protection of the
    /// data (004:625-627).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub eigen_herstelmaatregelen: Option<String>,
    /// Cause of the breach (000:1800, 001:642).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub oorzaak: Option<String>,
    /// Possible consequences and risks for the persons involved (004:622-624).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub gevolgen_en_risicos: Option<String>,
    /// When the breach began ("ontstaansmoment", 000:1802, 001:643).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ontstaan_op: Option<DateTime<Utc>>,
    /// When the breach ended; with `ontstaan_op` this gives its duration; absent while it
    /// lasts or is unknown (000:1802, 001:643).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beeindigd_op: Option<DateTime<Utc>>,
    /// When the party learned of the breach; the 48 h, 12 h and 72 h terms run from here
    /// (000:1774, 004:608-609, 004:652).
    pub ontdekt_op: DateTime<Utc>,
    /// When the breach was reported to the Autoriteit Persoonsgegevens, if it was
    /// (004:631-636, 004:650-653).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemeld_bij_ap_op: Option<DateTime<Utc>>,
    /// The person from whom more information about the breach can be obtained
    /// (004:616-618).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contactpersoon: Option<Contactgegevens>,
    /// The references of the affected cases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub betrokken_casussen: Vec<CaseRef>,
    /// Whether every case the sender exchanged messages about in the window is affected.
    #[serde(default)]
    pub alle_casussen_van_afzender: bool,
    /// Start of the window of exchanged messages the breach affects.
    pub tijdvak_van: DateTime<Utc>,
    /// End of that window.
    pub tijdvak_tot: DateTime<Utc>,
}

impl Payload for DatalekMelding {
    const KIND: Kind = Kind::DatalekMelding;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("omschrijving", Category::Case),
        ("soort_persoonsgegevens", Category::Case),
        ("aantal_betrokkenen", Category::Case),
        ("identiteit_betrokkenen", Category::Identity),
        ("getroffen_maatregelen", Category::Case),
        ("eigen_herstelmaatregelen", Category::Case),
        ("oorzaak", Category::Case),
        ("gevolgen_en_risicos", Category::Case),
        ("ontstaan_op", Category::Case),
        ("beeindigd_op", Category::Case),
        ("ontdekt_op", Category::Case),
        ("gemeld_bij_ap_op", Category::Case),
        ("contactpersoon", Category::Case),
        ("betrokken_casussen", Category::Case),
        ("alle_casussen_van_afzender", Category::Case),
        ("tijdvak_van", Category::Case),
        ("tijdvak_tot", Category::Case),
    ];
}

// ---------------------------------------------------------------------------------------
// VerstrekkingDerden
// ---------------------------------------------------------------------------------------

/// Notice that a party must or did disclose personal data to a third party, told to the
/// parties concerned within two workdays (000:1762-1766, 001:623-625).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerstrekkingDerden {
    /// The obligation the disclosure rests on (000:1762-1764, 001:623-624).
    pub grondslag: Grondslag,
    /// The third party (organisation) the data go to (000:1766).
    #[schemars(length(min = 1, max = 300))]
    pub ontvanger: String,
    /// Which personal data were or will be disclosed (000:1764-1766).
    #[schemars(length(min = 1, max = 8000))]
    pub verstrekte_gegevens: String,
    /// Date the obligation (order, summons, duty) was received; the two workdays run from
    /// here (000:1762).
    pub verplichting_ontvangen_op: NaiveDate,
    /// Date the data were or will be disclosed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verstrekt_op: Option<NaiveDate>,
    /// Further explanation, e.g. the authority that gave the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting: Option<String>,
    /// Care and support context of the disclosure, seen only by roles granted `support`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_zorg: Option<String>,
    /// Justice context (police, probation, court) of the disclosure, seen only by roles
    /// granted `justice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_justitie: Option<String>,
    /// Housing and tenancy context of the disclosure, seen only by roles granted `housing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_wonen: Option<String>,
    /// Debts and arrears context of the disclosure, seen only by roles granted `debt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub toelichting_financien: Option<String>,
}

impl Payload for VerstrekkingDerden {
    const KIND: Kind = Kind::VerstrekkingDerden;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("grondslag", Category::Case),
        ("ontvanger", Category::Case),
        ("verstrekte_gegevens", Category::Case),
        ("verplichting_ontvangen_op", Category::Case),
        ("verstrekt_op", Category::Case),
        ("toelichting", Category::Case),
        ("toelichting_zorg", Category::Support),
        ("toelichting_justitie", Category::Justice),
        ("toelichting_wonen", Category::Housing),
        ("toelichting_financien", Category::Debt),
    ];
}

/// The ground of a disclosure to a third party (000:1762-1764, 001:623-624).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grondslag {
    /// A court order ("rechterlijk bevel").
    RechterlijkBevel,
    /// A summons ("dagvaarding").
    Dagvaarding,
    /// A legal obligation ("wettelijke verplichting").
    WettelijkeVerplichting,
    /// Another obligation ("anderszins verplichting").
    AndereVerplichting,
}

// ---------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------

fn instant(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap_or_default()
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

impl Signaal {
    /// A fictional signal from a corporation about noise nuisance, for demos and tests.
    pub fn example() -> Self {
        Signaal {
            categorie: SignaalCategorie::Geluidsoverlast,
            waargenomen_op: instant(2025, 5, 12, 22, 30),
            omschrijving: "Buren melden sinds een week harde muziek na 23.00 uur; \
                           huurder reageert niet op een briefje van de huismeester."
                .into(),
            urgentie: Urgentie::Normaal,
            huurachterstand_ontstaan_op: None,
            tijdens_waakvlamperiode: Some(true),
            toelichting_zorg: None,
            toelichting_justitie: None,
            toelichting_wonen: None,
            toelichting_financien: None,
        }
    }
}

impl Reactie {
    /// A fictional answer of a care provider to [`Signaal::example`].
    pub fn example() -> Self {
        Reactie {
            ondernomen_stappen: vec![
                "Huisbezoek door de woonbegeleider op 13 mei".into(),
                "Afspraken over geluid en huisregels vastgelegd met de huurder".into(),
            ],
            status: ReactieStatus::InBehandeling,
            toelichting: Some(
                "Begeleiding tijdelijk opgeschaald naar drie contacten per week.".into(),
            ),
            vervolg_op: Some(day(2025, 5, 26)),
            toelichting_zorg: None,
            toelichting_justitie: None,
            toelichting_wonen: None,
            toelichting_financien: None,
        }
    }
}

impl DatalekMelding {
    /// A fictional breach notice: a mail with a referral went to the wrong corporation.
    pub fn example() -> Self {
        DatalekMelding {
            omschrijving: "Een aanmeldbericht is per abuis naar een verkeerde \
                           woningcorporatie gestuurd."
                .into(),
            soort_persoonsgegevens: vec![Category::Identity, Category::Contact, Category::Housing],
            aantal_betrokkenen: Some(1),
            identiteit_betrokkenen: vec!["Voorbeeld, J.P.".into()],
            getroffen_maatregelen: Some(
                "Ontvanger gevraagd het bericht te verwijderen; verwijdering bevestigd.".into(),
            ),
            eigen_herstelmaatregelen: Some("Adreslijst gecontroleerd en gecorrigeerd.".into()),
            oorzaak: Some("Verkeerde ontvanger gekozen in de adreslijst.".into()),
            gevolgen_en_risicos: Some(
                "Gering: de ontvanger is zelf convenantpartij en heeft het bericht verwijderd."
                    .into(),
            ),
            ontstaan_op: Some(instant(2025, 6, 2, 9, 15)),
            beeindigd_op: Some(instant(2025, 6, 2, 11, 0)),
            ontdekt_op: instant(2025, 6, 2, 10, 40),
            gemeld_bij_ap_op: None,
            contactpersoon: Some(Contactgegevens {
                naam: "E. Privacy".into(),
                organisatie: Some("Functionaris gegevensbescherming, Gemeente Voorbeeld".into()),
                telefoonnummer: Some("058-3333333".into()),
                email: Some("fg@example.org".into()),
            }),
            betrokken_casussen: "case-voorbeeldcasusabcdefghijkl"
                .parse::<CaseRef>()
                .into_iter()
                .collect(),
            alle_casussen_van_afzender: false,
            tijdvak_van: instant(2025, 6, 2, 9, 0),
            tijdvak_tot: instant(2025, 6, 2, 11, 0),
        }
    }
}

impl VerstrekkingDerden {
    /// A fictional notice of a disclosure under a legal obligation.
    pub fn example() -> Self {
        VerstrekkingDerden {
            grondslag: Grondslag::WettelijkeVerplichting,
            ontvanger: "Voorbeeld Toezichthouder Sociaal Domein".into(),
            verstrekte_gegevens: "Naam, adres en de data van de huisbezoeken in 2025.".into(),
            verplichting_ontvangen_op: day(2025, 7, 1),
            verstrekt_op: Some(day(2025, 7, 3)),
            toelichting: Some(
                "Vordering in het kader van een onderzoek naar een calamiteit.".into(),
            ),
            toelichting_zorg: None,
            toelichting_justitie: None,
            toelichting_wonen: None,
            toelichting_financien: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::super::aanmelding::tests::{
        assert_example_valid, assert_fields_match, assert_rejects_unknown,
    };
    use super::*;

    #[test]
    fn signaal() {
        assert_fields_match::<Signaal>();
        assert_example_valid(&Signaal::example());
        assert_rejects_unknown(&Signaal::example());
        assert!(Signaal::FIELDS
            .iter()
            .all(|(n, c)| *c == Category::Case || n.starts_with("toelichting_")));
        let bad: Result<Signaal, _> = serde_json::from_value(json!({
            "categorie": "inbraak",
            "waargenomen_op": "2025-05-12T22:30:00Z",
            "omschrijving": "x",
            "urgentie": "laag"
        }));
        assert!(bad.is_err());
        let schema = schemars::schema_for!(Signaal).to_value();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut long = serde_json::to_value(Signaal::example()).unwrap();
        long["omschrijving"] = json!("x".repeat(8001));
        assert!(!validator.is_valid(&long));
    }

    #[test]
    fn reactie() {
        assert_fields_match::<Reactie>();
        assert_example_valid(&Reactie::example());
        assert_rejects_unknown(&Reactie::example());
        assert!(Reactie::FIELDS
            .iter()
            .all(|(n, c)| *c == Category::Case || n.starts_with("toelichting_")));
        let schema = schemars::schema_for!(Reactie).to_value();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut none = serde_json::to_value(Reactie::example()).unwrap();
        none["ondernomen_stappen"] = json!([]);
        assert!(!validator.is_valid(&none));
        none.as_object_mut().unwrap().remove("ondernomen_stappen");
        assert!(serde_json::from_value::<Reactie>(none).is_err());
    }

    #[test]
    fn datalek_melding() {
        assert_fields_match::<DatalekMelding>();
        assert_example_valid(&DatalekMelding::example());
        assert_rejects_unknown(&DatalekMelding::example());
        for (name, category) in DatalekMelding::FIELDS {
            let expected = if *name == "identiteit_betrokkenen" {
                Category::Identity
            } else {
                Category::Case
            };
            assert_eq!(*category, expected, "{name}");
        }
        let minimal: DatalekMelding = serde_json::from_value(json!({
            "omschrijving": "Laptop verloren",
            "soort_persoonsgegevens": ["identity"],
            "ontdekt_op": "2025-06-02T10:40:00Z",
            "alle_casussen_van_afzender": true,
            "tijdvak_van": "2025-05-01T00:00:00Z",
            "tijdvak_tot": "2025-06-02T10:40:00Z"
        }))
        .unwrap();
        assert!(minimal.alle_casussen_van_afzender);
        let mut bad = serde_json::to_value(DatalekMelding::example()).unwrap();
        bad["betrokken_casussen"] = json!(["123456789"]);
        assert!(serde_json::from_value::<DatalekMelding>(bad).is_err());
    }

    #[test]
    fn verstrekking_derden() {
        assert_fields_match::<VerstrekkingDerden>();
        assert_example_valid(&VerstrekkingDerden::example());
        assert_rejects_unknown(&VerstrekkingDerden::example());
        assert!(VerstrekkingDerden::FIELDS
            .iter()
            .all(|(n, c)| *c == Category::Case || n.starts_with("toelichting_")));
        for g in [
            "rechterlijk_bevel",
            "dagvaarding",
            "wettelijke_verplichting",
            "andere_verplichting",
        ] {
            assert!(serde_json::from_value::<Grondslag>(json!(g)).is_ok());
        }
    }
}
