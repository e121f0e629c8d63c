//! The referral of a client ([`Aanmelding`]) and the six-field notice to a housing
//! corporation ([`Aanmeldbericht`]).
//!
//! Citations are `seed:line` into `/work/shared/seeds/` (`002` = Friesland, `003` =
//! IJmond & Zuid-Kennemerland, `000`/`001` = Walcheren/Flevoland).
//!
//! # Where the fields come from
//!
//! [`Aanmelding`] is the union of
//! - the four Friesland forms (Registratie, Aanmelding, Vervolg wonen, Plaatsing) of
//!   002:1295-1427, with the phases described in 002:1430-1487 and the legally required
//!   minimum set of 002:1261-1269; and
//! - the IJmond & Zuid-Kennemerland application form ("aanvraagformulier", 003:515-526)
//!   whose contents are described in 003:600-891, with a few items the same handbook says
//!   are recorded "op het aanvraagformulier" elsewhere (003:1156-1158, 003:1344-1391,
//!   003:1900-1925).
//!
//! # How the flattened Friesland table was read
//!
//! The table at 002:1295-1427 is four columns wide (Registratie | Aanmelding | Vervolg wonen |
//! Plaatsing), extracted row by row; a line starting with a space means the cells before
//! it were empty. Lines 1309-1325 repeat 1292-1308 (a page break) and are ignored. Read
//! that way, with the phase descriptions as a check:
//! - **Registratie** (identity, origin, housing past, professionals involved, how the
//!   situation arose, 002:1431-1433): achternaam en voorletters, burgerservicenummer,
//!   geboortedatum, huidig adres, herkomstgemeente, laatste woonplaats, eerste aanmelding
//!   opvang, start verblijf opvang, datum aanmelding Transferpunt, hoofdinkomen, betrokken
//!   zorgaanbieder, verantwoordelijke gemeente participatie uitkering, locatie
//!   maatschappelijke opvang, contactgegevens begeleider, naam casusregisseur, naam
//!   procesregisseur, reden dakloosheid, datum start dakloosheid.
//! - **Aanmelding** (support plan, origin, registrations with corporations, 002:1438-1441):
//!   achternaam en voorletters, telefoonnummer, mailadres, herkomstgemeente, leefsituatie,
//!   laatste woonsituatie, naam vorige verhuurder of instantie van vorige woonsituatie,
//!   inschrijvingen en data woningcorporaties, bestaan schuldenproblematiek, vorm van
//!   ondersteuning bij schulden, verwacht uitstroomprofiel, uitvraag uitzetting woning in
//!   het verleden, noodzaak inzet Transferpunt, reden inzet Transferpunt, betrokkenheid
//!   gebiedsteam.
//! - **Vervolg wonen**: achternaam en voorletters, uitstroomprofiel, naam verhuurder of
//!   instantie van uitstroom, uitstroomgemeente, noodzaak inzet Transferpunt, reden inzet
//!   Transferpunt.
//! - **Plaatsing** (which support starts and who gives it, 002:1482-1487): achternaam en
//!   voorletters, mutatie adres, datum mutatie, definitief uitstroomprofiel, naam
//!   verhuurder, definitieve uitstroomgemeente, type woning van uitstroom, type en
//!   intensiteit van ondersteuning, startdatum ondersteuning, naam ondersteunende instantie,
//!   soort huurcontract, wijze van toewijzing, gedragsaanwijzing.
//!
//! The column of "betrokken zorgaanbieder" (Registratie or Aanmelding) and of "type woning
//! van uitstroom" (Vervolg wonen or Plaatsing) is not certain; it does not change the union.
//! A field that occurs on several forms (herkomstgemeente, noodzaak/reden inzet
//! Transferpunt) appears once. "Mutatie adres"/"datum mutatie" are read as the new address
//! after placement and the date of the move; "eerste aanmelding opvang" is read as a date.
//!
//! # Categories
//!
//! Views are cut at the top level, so the payload is grouped into sections that each hold
//! one category. Health and support data (support profile, care provider, the health
//! grounds for excluding neighbourhoods) sit only in `ondersteuning`/`motivatie`; justice
//! grounds only in `justitie`; income and debts in their own sections. A housing
//! corporation, which gets identity, contact and housing, therefore never receives them
//! (002:834-836, 001:439-445, 003:1905-1911).
//!
//! - An eviction in the past and a negative landlord statement are housing history.
//! - A rent debt at a corporation is a debt (003:784-794), not housing.
//! - "Gedragsaanwijzing" (Plaatsing form) is, in this covenant, a tenancy arrangement the
//!   corporation itself makes at the intake of a new tenant, named alongside the
//!   three-party tenancy agreement (002:1207-1210); it is therefore tagged housing, kept as
//!   its own top-level field so its category can be changed in one line.
//! - Whether a client has a mentor or curator is support data; a bewindvoerder is debt data.
//! - The reasons for excluding areas are split: the areas themselves are housing
//!   (`woonwens`), health reasons are support, safety reasons are justice (003:1913-1925).
//! - The forms ask no criminal history; `justitie` holds only the justice grounds for
//!   excluding areas that 003:1921-1925 names.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Payload;
use crate::kind::{Category, Kind};

// ---------------------------------------------------------------------------------------
// Aanmelding
// ---------------------------------------------------------------------------------------

/// A referral of a client leaving sheltered housing or social relief: the union of the four
/// Friesland forms (002:1295-1427) and the IJmond & Zuid-Kennemerland application form
/// (003:600-891). Only the form and the client's identity are required; every phase fills
/// in what it asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aanmelding {
    /// Which form this referral is (002:1286-1288, 003:520).
    pub formulier: Formulier,
    /// Date the client was registered with the Transferpunt (002:1364-1365). On the
    /// aanmeldformulier it is the day its term runs from: "Binnen 2 weken na registratie
    /// wordt het aanmeldformulier ... ingevuld" (002:1438).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datum_aanmelding_transferpunt: Option<NaiveDate>,
    /// The day an MO uitstromer entered the maatschappelijke opvang, given on its
    /// registratieformulier: the registration with the gemeente van herkomst and the
    /// Transferpunt is due "binnen twee weken na instroom in Maatschappelijke Opvang"
    /// (002:606-608). A term fact of the referral, so category `case` (the stay itself is
    /// `woonhistorie.start_verblijf_opvang`, housing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instroom_opvang_op: Option<NaiveDate>,
    /// Who the client is (002:1296-1326, 002:1263-1265, 003:624).
    pub identiteit: Identiteit,
    /// The household the dwelling is asked for (003:862-870, 003:1374-1378).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huishouden: Option<Huishouden>,
    /// How to reach the client and the professionals around them (002:1308, 002:1326,
    /// 002:1333, 002:1390-1404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    /// Current and past housing situation, origin and how homelessness arose (002:1333-1417,
    /// 003:608-620).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woonhistorie: Option<Woonhistorie>,
    /// Where and how the client is to live after outflow (002:1326-1359, 003:873-881,
    /// 003:1344-1391).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woonwens: Option<Woonwens>,
    /// The placement once housing is found: new address, landlord, tenancy (002:1308-1397,
    /// Plaatsing form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaatsing: Option<Plaatsing>,
    /// Whether a gedragsaanwijzing (a behavioural arrangement the corporation makes with a
    /// new tenant, 002:1207-1210) applies to the tenancy (002:1402, Plaatsing form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gedragsaanwijzing: Option<bool>,
    /// Income, benefits and health insurance (002:1367-1375, 003:654-658, 003:770-779).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inkomen: Option<Inkomen>,
    /// Debts and debt administration (002:1385-1395, 003:668-676, 003:783-794, 003:843-847).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schulden: Option<Schulden>,
    /// Support profile, care provider, support need and the health grounds behind housing
    /// needs (002:1308-1425, 003:600-614, 003:854-858, 003:1913-1919).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ondersteuning: Option<Ondersteuning>,
    /// The client's motivation letter: why they want the arrangement and will cooperate
    /// with the agreed support (003:660-666, 003:821-828).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8000))]
    pub motivatie: Option<String>,
    /// Justice data the application form may carry (003:1900-1925).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justitie: Option<Justitie>,
}

impl Payload for Aanmelding {
    const KIND: Kind = Kind::Aanmelding;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("formulier", Category::Case),
        ("datum_aanmelding_transferpunt", Category::Case),
        ("instroom_opvang_op", Category::Case),
        ("identiteit", Category::Identity),
        ("huishouden", Category::Identity),
        ("contact", Category::Contact),
        ("woonhistorie", Category::Housing),
        ("woonwens", Category::Housing),
        ("plaatsing", Category::Housing),
        ("gedragsaanwijzing", Category::Housing),
        ("inkomen", Category::Income),
        ("schulden", Category::Debt),
        ("ondersteuning", Category::Support),
        ("motivatie", Category::Support),
        ("justitie", Category::Justice),
    ];
}

/// Which form a referral is. Friesland uses one form per phase (002:1286-1288); IJmond &
/// Zuid-Kennemerland uses one application form (003:515-526).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Formulier {
    /// Registration at intake: identity, origin, housing past (002:1430-1436).
    Registratie,
    /// Referral within two weeks of registration: support plan, origin, registrations
    /// (002:1437-1457).
    Aanmelding,
    /// Working towards outflow, mediation with a corporation (002:1459-1465).
    VervolgWonen,
    /// Placement: changes of residence after outflow (002:1481-1487).
    Plaatsing,
    /// Application for an urgency under the Uitstroomregeling Pact (003:515-526).
    AanvraagUitstroomregelingPact,
}

/// Who the client is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identiteit {
    /// Surname and initials (002:1296-1306, all four forms; 002:1264).
    #[schemars(length(min = 1, max = 200))]
    pub achternaam_voorletters: String,
    /// Citizen service number, nine digits (002:1308, 002:1263; 003:740-742).
    #[schemars(regex(pattern = r"^[0-9]{9}$"))]
    pub burgerservicenummer: String,
    /// Date of birth (002:1326, 002:1265; at least 18 years, 003:626).
    pub geboortedatum: NaiveDate,
    /// Kind of the client's valid residence document (003:624, 003:807-820).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verblijfsdocument: Option<Verblijfsdocument>,
}

/// A residence document (003:807-820).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verblijfsdocument {
    /// Dutch passport or identity card (003:812).
    NederlandsPaspoortOfIdKaart,
    /// Independent residence document (003:814).
    ZelfstandigVerblijfsdocument,
    /// European (non-Dutch) passport; not eligible in 003 (003:818).
    EuropeesPaspoort,
    /// Residence document tied to living with a family member (003:820).
    VerblijfsdocumentBijFamilielid,
    /// Another document.
    Overig,
}

/// The household the dwelling is asked for (003:862-870).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Huishouden {
    /// Number of persons who will live at the address, including the client (003:862-865,
    /// 003:1375-1376).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub aantal_personen: Option<u8>,
    /// Number of resident children the client has at least half of the care duty for under
    /// the parenting plan (003:863-865).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 19))]
    pub inwonende_kinderen: Option<u8>,
    /// Whether the client has co-parenting or shared care ("deelzorg") for children, which
    /// may call for a larger dwelling (003:1374-1378).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co_ouderschap: Option<bool>,
    /// Whether the client asks to live together with a partner who also applies; granted
    /// only by exception (003:866-870).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samenwonen_aangevraagd: Option<bool>,
}

/// How to reach the client and the professionals around them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// The client's telephone number (002:1308, Aanmelding form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\+?[0-9][0-9 ()-]{4,18}[0-9]$"))]
    pub telefoonnummer: Option<String>,
    /// The client's e-mail address (002:1326, "mailadres").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub mailadres: Option<String>,
    /// The client's current address, possibly a shelter or postal address (002:1333).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huidig_adres: Option<Adres>,
    /// The professionals involved: the begeleider's contact details, the names of the
    /// casusregisseur and procesregisseur (002:1390-1404), the applicant (003:569-571).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub contactpersonen: Vec<Contactpersoon>,
}

/// A Dutch address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Adres {
    /// Street name.
    #[schemars(length(min = 1, max = 200))]
    pub straat: String,
    /// House number.
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}$"))]
    pub huisnummer: String,
    /// House number suffix (letter or addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10))]
    pub huisnummertoevoeging: Option<String>,
    /// Postcode, four digits and two capitals.
    #[schemars(regex(pattern = r"^[1-9][0-9]{3} ?[A-Z]{2}$"))]
    pub postcode: String,
    /// Town.
    #[schemars(length(min = 1, max = 100))]
    pub woonplaats: String,
    /// Whether this is a postal address only ("briefadres", 002:1256, 003:630).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub briefadres: Option<bool>,
}

/// A professional contact person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Contactpersoon {
    /// The person's role around the client.
    pub rol: ContactRol,
    /// Name.
    #[schemars(length(min = 1, max = 200))]
    pub naam: String,
    /// Organisation the person works for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub organisatie: Option<String>,
    /// Telephone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\+?[0-9][0-9 ()-]{4,18}[0-9]$"))]
    pub telefoonnummer: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub email: Option<String>,
}

/// The role of a professional contact person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactRol {
    /// The client's counsellor at the care provider (002:1390-1391).
    Begeleider,
    /// The case director (002:1399).
    Casusregisseur,
    /// The process director (002:1404).
    Procesregisseur,
    /// The care provider's outflow coordinator (002:1271-1273).
    Uitstroomcoordinator,
    /// A member of the municipality's area team (002:895, 002:1448).
    Gebiedsteammedewerker,
    /// The Friesland Transferpunt (002:1446-1447).
    Transferpunt,
    /// The housing counsellor after the move (003:854-858).
    Woonbegeleider,
    /// The person who filed the application (003:567-571).
    Aanvrager,
    /// Another role.
    Overig,
}

/// Contact details of a person without a role field (used where the field says the role).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Contactgegevens {
    /// Name.
    #[schemars(length(min = 1, max = 200))]
    pub naam: String,
    /// Organisation or function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub organisatie: Option<String>,
    /// Telephone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\+?[0-9][0-9 ()-]{4,18}[0-9]$"))]
    pub telefoonnummer: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub email: Option<String>,
}

/// Current and past housing situation. Holds housing facts only: health or justice context
/// belongs in `ondersteuning` or `justitie`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Woonhistorie {
    /// Municipality of origin (002:1333, 002:1336, 002:1266; 003:723-727, 003:1347-1348).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub herkomstgemeente: Option<String>,
    /// The client's living situation now (002:1336, Aanmelding form); the text gives no
    /// value list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 500))]
    pub leefsituatie: Option<String>,
    /// Last place of residence (002:1341).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub laatste_woonplaats: Option<String>,
    /// Last (previous) housing situation (002:1341, 002:1268).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 500))]
    pub laatste_woonsituatie: Option<String>,
    /// Name of the previous landlord or of the institution of the previous housing situation
    /// (002:1350-1353).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub naam_vorige_verhuurder_of_instantie: Option<String>,
    /// Date of the first registration at a shelter (002:1347-1348).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eerste_aanmelding_opvang: Option<NaiveDate>,
    /// Date the current stay in the shelter began (002:1358).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_verblijf_opvang: Option<NaiveDate>,
    /// Location of the social-relief shelter (002:1381-1383).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub locatie_maatschappelijke_opvang: Option<String>,
    /// Date homelessness began (002:1416-1417).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datum_start_dakloosheid: Option<NaiveDate>,
    /// Reasons for homelessness (002:1410, 002:1267; 003:608-610).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub reden_dakloosheid: Vec<RedenDakloosheid>,
    /// Short explanation of the reason for homelessness, e.g. the year of a divorce
    /// (003:608-610).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub toelichting_reden_dakloosheid: Option<String>,
    /// Short account of the housing and residence past: where the client demonstrably
    /// stayed, where their current resources are (003:616-620).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub toelichting_woon_verblijfsverleden: Option<String>,
    /// Whether the client was evicted from a dwelling in the past (002:1404-1406;
    /// 003:786-788).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uitzetting_in_verleden: Option<bool>,
    /// Whether the client has a negative landlord statement that bars a new tenancy
    /// (003:668-669).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negatieve_huurdersverklaring: Option<bool>,
    /// Whether the client stayed temporarily in a satellite dwelling outside the region
    /// (003:885).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verblijf_satellietwoning_buiten_regio: Option<bool>,
    /// Why the client should be housed in the region when the regional tie is insufficient
    /// (hardship clause) (003:754-763, 003:889-891).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub toelichting_regiobinding: Option<String>,
}

/// A reason for homelessness (003:608-610).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedenDakloosheid {
    /// Divorce or relationship break-up.
    Scheiding,
    /// Rent arrears.
    Huurschuld,
    /// Improper use of the dwelling.
    OneigenlijkGebruikWoning,
    /// Nuisance.
    Overlast,
    /// Another reason ("of andere reden").
    Anders,
}

/// Where and how the client is to live after outflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Woonwens {
    /// Municipality the client is expected to move to (002:1333, Vervolg wonen; 002:1446;
    /// 003:1347-1357).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub uitstroomgemeente: Option<String>,
    /// Name of the intended landlord or institution of outflow (002:1326-1329).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub naam_verhuurder_of_instantie_van_uitstroom: Option<String>,
    /// Whether the Transferpunt must mediate because regular outflow will not succeed
    /// (002:1336-1337, 002:1410-1411; 002:1453-1456).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noodzaak_inzet_transferpunt: Option<bool>,
    /// Why the Transferpunt is needed, e.g. registration too short for regular allocation
    /// (002:1341-1342, 002:1419-1420; 002:624-627).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub reden_inzet_transferpunt: Option<String>,
    /// Registrations as house seeker with corporations and their dates (002:1358-1359;
    /// 003:650-652, 003:691-696).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 30))]
    pub inschrijvingen_woningcorporaties: Vec<Inschrijving>,
    /// Neighbourhoods or municipalities where the client must not be housed (003:873-877,
    /// 003:1387-1389). The reasons go in `ondersteuning` or `justitie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 100)))]
    pub uitgesloten_zoekgebieden: Vec<String>,
    /// Search areas advised, e.g. near a social support network (003:1390-1391).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 100)))]
    pub geadviseerde_zoekgebieden: Vec<String>,
    /// Dwelling features needed for a successful match, e.g. step-free access or a maximum
    /// floor (003:1366-1372, 003:1380-1384).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 200)))]
    pub noodzakelijke_woningkenmerken: Vec<String>,
}

/// A registration as house seeker (002:1358-1359, 003:650-652).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inschrijving {
    /// The corporation or house-seeker system (e.g. Woonservice, Woonopmaat, 003:650-652).
    #[schemars(length(min = 1, max = 200))]
    pub organisatie: String,
    /// Registration date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inschrijfdatum: Option<NaiveDate>,
}

/// The placement once housing is found (Plaatsing form, 002:1482-1487).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plaatsing {
    /// The client's new address ("mutatie adres", 002:1308).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutatie_adres: Option<Adres>,
    /// Date of the move ("datum mutatie", 002:1331).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datum_mutatie: Option<NaiveDate>,
    /// Name of the landlord (002:1339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub naam_verhuurder: Option<String>,
    /// Final municipality of outflow (002:1344-1345).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub definitieve_uitstroomgemeente: Option<String>,
    /// Type of dwelling of outflow, e.g. studio or two-room flat (002:1355-1356;
    /// 003:1360-1363).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub type_woning_van_uitstroom: Option<String>,
    /// Kind of tenancy agreement (002:1388).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soort_huurcontract: Option<SoortHuurcontract>,
    /// How the dwelling was allocated (002:1397).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wijze_van_toewijzing: Option<WijzeVanToewijzing>,
}

/// Kind of tenancy agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SoortHuurcontract {
    /// A regular tenancy without a third signing party (002:691-692).
    Regulier,
    /// A three-party tenancy with the care provider (002:688-699), called driehoekscontract
    /// in 003:1513-1526.
    DriePartijenHuurovereenkomst,
    /// Intermediary letting: the contract is in the care organisation's name (003:1530-1539).
    IntermediaireVerhuur,
    /// Another kind.
    Overig,
}

/// How a dwelling was allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WijzeVanToewijzing {
    /// The client responded to the regular offer (002:619-621).
    Regulier,
    /// Allocated through mediation outside regular allocation (002:1453-1456).
    Bemiddeling,
    /// Allocated on an urgency (003:63-65, 003:573-583).
    Urgentie,
    /// Another way.
    Overig,
}

/// Income, benefits and health insurance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inkomen {
    /// Main source of income (002:1367; 003:838-840).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hoofdinkomen: Option<Hoofdinkomen>,
    /// Municipality responsible for the Participatiewet benefit (002:1373-1375).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub verantwoordelijke_gemeente_participatie_uitkering: Option<String>,
    /// Whether the client has a regular source of income from work or benefit (003:656,
    /// 003:838-840).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reguliere_bron_van_inkomsten: Option<bool>,
    /// Taxable annual income in whole euros, from the tax authority's income statement, for
    /// the allocation income limit (003:770-779, 003:536-538).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000_000))]
    pub belastbaar_jaarinkomen: Option<u32>,
    /// Whether the previous year's income statement is attached (003:776-779).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inkomstenverklaring_bijgevoegd: Option<bool>,
    /// Explanation of income, e.g. with an IB60 statement showing no income (003:887).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub toelichting_inkomen: Option<String>,
    /// Whether the client is insured for health costs (003:658, 003:832-835).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ziektekostenverzekering: Option<bool>,
}

/// A main source of income.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hoofdinkomen {
    /// Income from work (003:839-840).
    Werk,
    /// A benefit (003:839-840; Participatiewet, 002:1373-1375).
    Uitkering,
    /// No income (003:887).
    GeenInkomen,
    /// Another source.
    Overig,
}

/// Debts and debt administration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schulden {
    /// Whether there are debt problems (002:1385-1386; 003:674).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bestaan_schuldenproblematiek: Option<bool>,
    /// Form(s) of support with debts in place (002:1393-1395; 003:674-676, 003:794).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub vorm_van_ondersteuning_bij_schulden: Vec<VormSchuldondersteuning>,
    /// Whether a rent debt with a corporation is open (003:783-794; 002:578-582).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huurschuld_bij_corporatie: Option<bool>,
    /// Whether a payment arrangement for that rent debt is or will be made (003:670-672,
    /// 003:790-794).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regeling_huurschuld: Option<bool>,
    /// Whether the client is willing to accept budget management or administration
    /// (003:674-676, 003:843-845).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bereid_tot_budgetbeheer_of_bewindvoering: Option<bool>,
    /// Contact details of the client's administrator (bewindvoerder) (003:846-847).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bewindvoerder: Option<Contactgegevens>,
}

/// A form of support with debts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VormSchuldondersteuning {
    /// Municipal debt counselling (002:581-582, 002:849).
    Schuldhulpverlening,
    /// Court-appointed administration (003:674, 003:843-847).
    Bewindvoering,
    /// Budget management (003:676, 003:844; 000:1146-1148).
    Budgetbeheer,
    /// A (voluntary) payment arrangement (003:674, 003:794).
    Betalingsregeling,
    /// Another form.
    Overig,
}

/// Support and health: the support profile, the care provider and support need, and the
/// health grounds behind housing needs. Never shared with a corporation by default
/// (002:834-836, 003:1905-1911).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ondersteuning {
    /// Expected outflow profile (002:1399-1400, Aanmelding form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verwacht_uitstroomprofiel: Option<Uitstroomprofiel>,
    /// Outflow profile (002:1308, Vervolg wonen form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uitstroomprofiel: Option<Uitstroomprofiel>,
    /// Final outflow profile (002:1333-1334, Plaatsing form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definitief_uitstroomprofiel: Option<Uitstroomprofiel>,
    /// The care provider involved (002:1370-1371).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub betrokken_zorgaanbieder: Option<String>,
    /// Whether the municipality's area team is involved (002:1424-1425, 002:1269).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betrokkenheid_gebiedsteam: Option<bool>,
    /// Whether the client has an OGGZ decision for social relief (003:606).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oggz_beschikking_maatschappelijke_opvang: Option<bool>,
    /// Short account of the client's request for help and support need, by life domain
    /// (003:612-614).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4000))]
    pub hulpvraag_ondersteuningsbehoefte: Option<String>,
    /// Whether the client meets the self-reliance criteria and can live independently with
    /// at least two years of housing support (003:600-602).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zelfredzaam_met_woonbegeleiding: Option<bool>,
    /// Type and intensity of the support after outflow (002:1361-1362; 002:845).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2000))]
    pub type_en_intensiteit_ondersteuning: Option<String>,
    /// Start date of the support after outflow (002:1367-1368).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startdatum_ondersteuning: Option<NaiveDate>,
    /// Name of the organisation giving the support (002:1377-1379; 002:1486-1487).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub naam_ondersteunende_instantie: Option<String>,
    /// The organisation that will give the housing support (003:854-858).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub woonbegeleidende_organisatie: Option<String>,
    /// Whether the intended housing-support organisation has met the client and agreed
    /// (003:1156-1158).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woonbegeleiding_akkoord: Option<bool>,
    /// Contact details of the client's mentor, if any (003:846-847).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentor: Option<Contactgegevens>,
    /// Contact details of the client's curator, if any (003:846-847).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curator: Option<Contactgegevens>,
    /// Health grounds for the housing needs: trauma, risk of relapse, past substance use,
    /// physical limitations (003:873-877, 003:1380-1390, 003:1913-1919).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4000))]
    pub gezondheidsgronden_woonbehoeften: Option<String>,
}

/// The outflow profile: the type of outflow the client is heading for (002:1449-1451,
/// 002:1482-1485). The text gives examples, not a closed list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Uitstroomprofiel {
    /// Independent living in an ordinary dwelling (002:1450, 002:1484).
    ZelfstandigWonen,
    /// Sheltered housing (002:1450).
    BeschermdWonen,
    /// Another form of residence with care or support (002:1484).
    AnderVerblijfMetZorgOfOndersteuning,
    /// Relief in another region, by warm handover (002:1442-1444).
    OpvangAndereRegio,
    /// Another profile.
    Overig,
}

/// Justice data on the application form: only with the client's consent and not
/// automatically shared with a corporation (003:1900-1911).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Justitie {
    /// Justice grounds for excluding areas: safety risks such as stalking or the presence of
    /// (former) perpetrators of domestic violence (003:873-877, 003:1921-1925).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4000))]
    pub justitiele_gronden_woonbehoeften: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Aanmeldbericht
// ---------------------------------------------------------------------------------------

/// The notice with which the Friesland Transferpunt asks a corporation to mediate, with
/// exactly the six fields of 002:1467-1473, all required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aanmeldbericht {
    /// Citizen service number of the main occupant (002:1468).
    #[schemars(regex(pattern = r"^[0-9]{9}$"))]
    pub burgerservicenummer_hoofdbewoner: String,
    /// Surname and initials (002:1469).
    #[schemars(length(min = 1, max = 200))]
    pub achternaam_initialen: String,
    /// The client's living situation (002:1470); the text gives no value list.
    #[schemars(length(min = 1, max = 500))]
    pub leefsituatie: String,
    /// Intended municipality of outflow (002:1471).
    #[schemars(length(min = 1, max = 100))]
    pub beoogde_gemeente_van_uitstroom: String,
    /// Support profile of the client, on main lines only; never the support plan itself
    /// (002:1472; 002:834-836).
    pub ondersteuningsprofiel_uitstromer: Ondersteuningsprofiel,
    /// Contact details of the contact persons involved (002:1473).
    #[schemars(length(min = 1, max = 10))]
    pub contactgegevens_betrokken_contactpersonen: Vec<Contactpersoon>,
}

impl Payload for Aanmeldbericht {
    const KIND: Kind = Kind::Aanmeldbericht;
    const FIELDS: &'static [(&'static str, Category)] = &[
        ("burgerservicenummer_hoofdbewoner", Category::Identity),
        ("achternaam_initialen", Category::Identity),
        ("leefsituatie", Category::Housing),
        ("beoogde_gemeente_van_uitstroom", Category::Housing),
        ("ondersteuningsprofiel_uitstromer", Category::Support),
        (
            "contactgegevens_betrokken_contactpersonen",
            Category::Contact,
        ),
    ];
}

/// The support profile in an aanmeldbericht (002:1472), "op hoofdlijnen" (002:834-836).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ondersteuningsprofiel {
    /// The outflow profile (002:1308, 002:1449-1451).
    pub uitstroomprofiel: Uitstroomprofiel,
    /// Type and intensity of the support after outflow, in a sentence (002:1361-1362,
    /// 002:845).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub type_en_intensiteit_ondersteuning: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Helpers and examples
// ---------------------------------------------------------------------------------------

/// Whether `bsn` is nine digits that pass the Dutch eleven test ("elfproef"): the weighted
/// sum 9·d1 + 8·d2 + … + 2·d8 − 1·d9 is a positive multiple of 11. The schema checks only
/// the nine digits; a sender may call this before sealing.
pub fn bsn_elfproef(bsn: &str) -> bool {
    let b = bsn.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: i32 = b
        .iter()
        .zip([9, 8, 7, 6, 5, 4, 3, 2, -1])
        .map(|(d, w)| i32::from(d - b'0') * w)
        .sum();
    sum > 0 && sum % 11 == 0
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

impl Aanmelding {
    /// A filled-in, entirely fictional referral (Aanmelding form, Friesland) for demos and
    /// tests. The BSN 111222333 passes the eleven test but belongs to no one.
    pub fn example() -> Self {
        Aanmelding {
            formulier: Formulier::Aanmelding,
            datum_aanmelding_transferpunt: Some(date(2025, 3, 4)),
            instroom_opvang_op: None,
            identiteit: Identiteit {
                achternaam_voorletters: "Voorbeeld, J.P.".into(),
                burgerservicenummer: "111222333".into(),
                geboortedatum: date(1987, 6, 15),
                verblijfsdocument: Some(Verblijfsdocument::NederlandsPaspoortOfIdKaart),
            },
            huishouden: Some(Huishouden {
                aantal_personen: Some(1),
                inwonende_kinderen: Some(0),
                co_ouderschap: Some(false),
                samenwonen_aangevraagd: Some(false),
            }),
            contact: Some(Contact {
                telefoonnummer: Some("06-12345678".into()),
                mailadres: Some("jp.voorbeeld@example.org".into()),
                huidig_adres: Some(Adres {
                    straat: "Proefstraat".into(),
                    huisnummer: "12".into(),
                    huisnummertoevoeging: None,
                    postcode: "9999 ZZ".into(),
                    woonplaats: "Voorbeelddorp".into(),
                    briefadres: Some(true),
                }),
                contactpersonen: vec![
                    Contactpersoon {
                        rol: ContactRol::Begeleider,
                        naam: "A. de Testmedewerker".into(),
                        organisatie: Some("Zorgaanbieder Voorbeeld".into()),
                        telefoonnummer: Some("058-0000000".into()),
                        email: Some("a.testmedewerker@example.org".into()),
                    },
                    Contactpersoon {
                        rol: ContactRol::Casusregisseur,
                        naam: "B. Regie".into(),
                        organisatie: Some("Gemeente Voorbeeld".into()),
                        telefoonnummer: None,
                        email: None,
                    },
                ],
            }),
            woonhistorie: Some(Woonhistorie {
                herkomstgemeente: Some("Voorbeeldgemeente".into()),
                leefsituatie: Some("Alleenstaand, verblijft in de nachtopvang".into()),
                laatste_woonplaats: Some("Voorbeelddorp".into()),
                laatste_woonsituatie: Some("Huurwoning, daarna inwonend bij een vriend".into()),
                naam_vorige_verhuurder_of_instantie: Some("Woningstichting Voorbeeld".into()),
                eerste_aanmelding_opvang: Some(date(2024, 11, 20)),
                start_verblijf_opvang: Some(date(2024, 11, 21)),
                locatie_maatschappelijke_opvang: Some("Opvanglocatie Proefhuis".into()),
                datum_start_dakloosheid: Some(date(2024, 10, 1)),
                reden_dakloosheid: vec![RedenDakloosheid::Scheiding],
                toelichting_reden_dakloosheid: Some(
                    "Scheiding in 2024; woning bleef bij ex-partner.".into(),
                ),
                toelichting_woon_verblijfsverleden: Some(
                    "Sinds 2015 ingeschreven in de herkomstgemeente; netwerk woont daar.".into(),
                ),
                uitzetting_in_verleden: Some(false),
                negatieve_huurdersverklaring: Some(false),
                verblijf_satellietwoning_buiten_regio: None,
                toelichting_regiobinding: None,
            }),
            woonwens: Some(Woonwens {
                uitstroomgemeente: Some("Voorbeeldgemeente".into()),
                naam_verhuurder_of_instantie_van_uitstroom: None,
                noodzaak_inzet_transferpunt: Some(true),
                reden_inzet_transferpunt: Some(
                    "Inschrijfduur te kort voor reguliere toewijzing.".into(),
                ),
                inschrijvingen_woningcorporaties: vec![Inschrijving {
                    organisatie: "Woningstichting Voorbeeld".into(),
                    inschrijfdatum: Some(date(2024, 11, 25)),
                }],
                uitgesloten_zoekgebieden: vec!["Wijk Noord".into()],
                geadviseerde_zoekgebieden: vec![],
                noodzakelijke_woningkenmerken: vec!["traploos bereikbaar".into()],
            }),
            plaatsing: None,
            gedragsaanwijzing: None,
            inkomen: Some(Inkomen {
                hoofdinkomen: Some(Hoofdinkomen::Uitkering),
                verantwoordelijke_gemeente_participatie_uitkering: Some("Voorbeeldgemeente".into()),
                reguliere_bron_van_inkomsten: Some(true),
                belastbaar_jaarinkomen: Some(17_500),
                inkomstenverklaring_bijgevoegd: Some(true),
                toelichting_inkomen: None,
                ziektekostenverzekering: Some(true),
            }),
            schulden: Some(Schulden {
                bestaan_schuldenproblematiek: Some(true),
                vorm_van_ondersteuning_bij_schulden: vec![
                    VormSchuldondersteuning::Bewindvoering,
                    VormSchuldondersteuning::Betalingsregeling,
                ],
                huurschuld_bij_corporatie: Some(false),
                regeling_huurschuld: None,
                bereid_tot_budgetbeheer_of_bewindvoering: Some(true),
                bewindvoerder: Some(Contactgegevens {
                    naam: "C. Bewind".into(),
                    organisatie: Some("Bewindvoering Voorbeeld".into()),
                    telefoonnummer: Some("058-1111111".into()),
                    email: None,
                }),
            }),
            ondersteuning: Some(Ondersteuning {
                verwacht_uitstroomprofiel: Some(Uitstroomprofiel::ZelfstandigWonen),
                uitstroomprofiel: None,
                definitief_uitstroomprofiel: None,
                betrokken_zorgaanbieder: Some("Zorgaanbieder Voorbeeld".into()),
                betrokkenheid_gebiedsteam: Some(true),
                oggz_beschikking_maatschappelijke_opvang: Some(true),
                hulpvraag_ondersteuningsbehoefte: Some(
                    "Ondersteuning bij financiën en daginvulling.".into(),
                ),
                zelfredzaam_met_woonbegeleiding: Some(true),
                type_en_intensiteit_ondersteuning: Some(
                    "Ambulante woonbegeleiding, twee keer per week".into(),
                ),
                startdatum_ondersteuning: None,
                naam_ondersteunende_instantie: None,
                woonbegeleidende_organisatie: Some("Woonbegeleiding Voorbeeld".into()),
                woonbegeleiding_akkoord: Some(true),
                mentor: None,
                curator: None,
                gezondheidsgronden_woonbehoeften: Some(
                    "Verhoogd risico op terugval in Wijk Noord.".into(),
                ),
            }),
            motivatie: Some("Ik wil weer zelfstandig wonen en werk mee aan de begeleiding.".into()),
            justitie: None,
        }
    }
}

impl Aanmeldbericht {
    /// A filled-in, entirely fictional aanmeldbericht for demos and tests.
    pub fn example() -> Self {
        Aanmeldbericht {
            burgerservicenummer_hoofdbewoner: "111222333".into(),
            achternaam_initialen: "Voorbeeld, J.P.".into(),
            leefsituatie: "Alleenstaand, verblijft in de nachtopvang".into(),
            beoogde_gemeente_van_uitstroom: "Voorbeeldgemeente".into(),
            ondersteuningsprofiel_uitstromer: Ondersteuningsprofiel {
                uitstroomprofiel: Uitstroomprofiel::ZelfstandigWonen,
                type_en_intensiteit_ondersteuning: Some(
                    "Ambulante woonbegeleiding, twee keer per week".into(),
                ),
            },
            contactgegevens_betrokken_contactpersonen: vec![
                Contactpersoon {
                    rol: ContactRol::Begeleider,
                    naam: "A. de Testmedewerker".into(),
                    organisatie: Some("Zorgaanbieder Voorbeeld".into()),
                    telefoonnummer: Some("058-0000000".into()),
                    email: Some("a.testmedewerker@example.org".into()),
                },
                Contactpersoon {
                    rol: ContactRol::Transferpunt,
                    naam: "D. Transfer".into(),
                    organisatie: Some("Transferpunt".into()),
                    telefoonnummer: Some("058-2222222".into()),
                    email: None,
                },
            ],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;

    /// The top-level property names of `T`'s schema.
    pub(crate) fn properties<T: JsonSchema>() -> BTreeSet<String> {
        let schema = schemars::schema_for!(T).to_value();
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// `FIELDS` names every schema property exactly once and nothing else.
    pub(crate) fn assert_fields_match<T: Payload>() {
        let listed: Vec<&str> = T::FIELDS.iter().map(|(n, _)| *n).collect();
        let unique: BTreeSet<String> = listed.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(unique.len(), listed.len(), "a field is listed twice");
        assert_eq!(unique, properties::<T>());
    }

    /// The example validates against the type's own JSON Schema and survives a round trip.
    pub(crate) fn assert_example_valid<T>(example: &T)
    where
        T: Payload + PartialEq + std::fmt::Debug,
    {
        let schema = schemars::schema_for!(T).to_value();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let value = serde_json::to_value(example).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let back: T = serde_json::from_value(value).unwrap();
        assert_eq!(&back, example);
    }

    /// Unknown fields are refused by serde and by the schema, at the top level.
    pub(crate) fn assert_rejects_unknown<T: Payload + std::fmt::Debug>(example: &T) {
        let mut value = serde_json::to_value(example).unwrap();
        value
            .as_object_mut()
            .unwrap()
            .insert("onbekend_veld".into(), json!(1));
        assert!(serde_json::from_value::<T>(value.clone()).is_err());
        let schema = schemars::schema_for!(T).to_value();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(!validator.is_valid(&value));
    }

    /// Every property name and enum value reachable from `schema`, following `$ref`s.
    fn words(root: &Value, schema: &Value, out: &mut BTreeSet<String>, seen: &mut Vec<String>) {
        match schema {
            Value::Object(obj) => {
                if let Some(Value::String(r)) = obj.get("$ref") {
                    if !seen.contains(r) {
                        seen.push(r.clone());
                        let name = r.trim_start_matches("#/$defs/");
                        words(root, &root["$defs"][name], out, seen);
                    }
                }
                if let Some(Value::Object(props)) = obj.get("properties") {
                    out.extend(props.keys().cloned());
                }
                if let Some(Value::String(c)) = obj.get("const") {
                    out.insert(c.clone());
                }
                if let Some(Value::Array(e)) = obj.get("enum") {
                    out.extend(e.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
                for (k, v) in obj {
                    if k != "$defs" {
                        words(root, v, out, seen);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| words(root, v, out, seen)),
            _ => {}
        }
    }

    #[test]
    fn aanmelding_example_is_valid() {
        assert_example_valid(&Aanmelding::example());
        assert!(bsn_elfproef(
            &Aanmelding::example().identiteit.burgerservicenummer
        ));
    }

    #[test]
    fn aanmelding_fields_cover_the_schema() {
        assert_fields_match::<Aanmelding>();
    }

    #[test]
    fn aanmelding_rejects_unknown_fields() {
        let example = Aanmelding::example();
        assert_rejects_unknown(&example);
        // Nested sections refuse unknown fields too.
        let mut value = serde_json::to_value(&example).unwrap();
        value["identiteit"]["diagnose"] = json!("x");
        assert!(serde_json::from_value::<Aanmelding>(value).is_err());
    }

    #[test]
    fn aanmelding_minimum_is_form_and_identity() {
        let min = json!({
            "formulier": "registratie",
            "identiteit": {
                "achternaam_voorletters": "Voorbeeld, J.P.",
                "burgerservicenummer": "111222333",
                "geboortedatum": "1987-06-15"
            }
        });
        let a: Aanmelding = serde_json::from_value(min.clone()).unwrap();
        assert_eq!(serde_json::to_value(&a).unwrap(), min);
        let schema = schemars::schema_for!(Aanmelding).to_value();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, BTreeSet::from(["formulier", "identiteit"]));
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&min));
        let mut bad = min.clone();
        bad["identiteit"]["burgerservicenummer"] = json!("12345");
        assert!(!validator.is_valid(&bad));
    }

    /// A corporation gets identity, contact and housing: nothing in those sections may be
    /// named after support, health, justice, income or debt.
    #[test]
    fn no_sensitive_words_in_identity_contact_or_housing() {
        const SENSITIVE: &[&str] = &[
            "ondersteun",
            "zorg",
            "gezond",
            "hulpvraag",
            "profiel",
            "oggz",
            "beschikking",
            "diagnos",
            "medic",
            "psych",
            "verslav",
            "trauma",
            "terugval",
            "mentor",
            "curator",
            "bewind",
            "justit",
            "strafr",
            "detentie",
            "schuldhulp",
            "schuldenproblematiek",
            "inkomen",
            "uitkering",
        ];
        let root = schemars::schema_for!(Aanmelding).to_value();
        for (name, category) in Aanmelding::FIELDS {
            if !matches!(
                category,
                Category::Identity | Category::Contact | Category::Housing
            ) {
                continue;
            }
            let mut found = BTreeSet::new();
            words(
                &root,
                &root["properties"][*name],
                &mut found,
                &mut Vec::new(),
            );
            found.insert((*name).to_owned());
            // Contact roles such as "begeleider" are not health data, and "huurschuld" as a
            // reason for homelessness is housing history (003:608-610), so neither is listed.
            for word in &found {
                for bad in SENSITIVE {
                    assert!(
                        !word.contains(bad),
                        "{name} ({category}) holds '{word}', which looks like '{bad}' data"
                    );
                }
            }
        }
    }

    #[test]
    fn aanmeldbericht_has_exactly_the_six_fields() {
        assert_fields_match::<Aanmeldbericht>();
        assert_eq!(Aanmeldbericht::FIELDS.len(), 6);
        let schema = schemars::schema_for!(Aanmeldbericht).to_value();
        assert_eq!(schema["required"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn aanmeldbericht_example_is_valid_and_strict() {
        let example = Aanmeldbericht::example();
        assert_example_valid(&example);
        assert_rejects_unknown(&example);
        assert!(bsn_elfproef(&example.burgerservicenummer_hoofdbewoner));
        let mut value = serde_json::to_value(&example).unwrap();
        value["contactgegevens_betrokken_contactpersonen"] = json!([]);
        let schema = schemars::schema_for!(Aanmeldbericht).to_value();
        assert!(!jsonschema::validator_for(&schema).unwrap().is_valid(&value));
    }

    #[test]
    fn elfproef() {
        assert!(bsn_elfproef("111222333"));
        assert!(bsn_elfproef("123456782"));
        assert!(!bsn_elfproef("123456789"));
        assert!(!bsn_elfproef("000000000"));
        assert!(!bsn_elfproef("11122233"));
        assert!(!bsn_elfproef("11122233a"));
    }
}
