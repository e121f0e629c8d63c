//! Legal bases: the AVG art. 6 basis of each purpose and kind, the art. 9 and art. 10
//! conditions under which health and justice data travel, the named grounds a sender may
//! invoke, and the covenant's closed list of justification codes.
//!
//! ```toml
//! [justifications]                      # the closed list: a sender names one of these
//! levensgevaar = "acute danger to the life of the client or another (002:333-340)"
//! wettelijke-plicht = "a statutory duty to share (002:341-342)"
//!
//! [grounds.meldrecht]                   # built-in grounds may be adjusted, others added
//! description = "Meldrecht of the professional under the Wet verplichte meldcode"
//! source = "005:120-131"
//! alert_fg = true                       # every use alerts the FGs (default true)
//! justifications = ["levensgevaar"]     # codes allowed with it (default: the whole list)
//!
//! [purposes.zvh]
//! basis = "public_task"                 # consent, public_task, legal_obligation, ...
//! special_data.support = { condition = "substantial_public_interest", source = "..." }
//! special_data.justice = { condition = "member_state_law", source = "UAVG art. 33" }
//!
//! [purposes.zvh.kinds.signaal]
//! grounds = ["legal_duty"]              # the grounds a sender may name for this kind
//! ground_required = true                # every message must name one of them
//! ```
//!
//! How a kind's basis works ([`KindBasis`]):
//! - **consent** (the purpose's or kind's `basis = "consent"`, or `consent = "required"`):
//!   a valid, unwithdrawn consent is needed, unless the sender names one of the kind's
//!   `grounds` instead.
//! - **any other basis** (or `consent = "not_required"`): the message is sent under that
//!   basis (`{"basis": "covenant"}` in the header). With `ground_required` every message
//!   must name one of the kind's grounds, e.g. a public task whose sharing outside the
//!   ordinary course rests on a legal duty the FGs review; without it a sender may still
//!   name one.
//!
//! A ground the policy flags (`alert_fg`, the default) alerts the FGs of the parties
//! involved; an unflagged one is recorded and shows in the FG's grounds report only. Four
//! grounds are built in, each flagged: `acute_danger`, `legal_duty`,
//! `conflict_van_plichten` and `meldrecht`.
//!
//! Justification codes: when the policy has a `[justifications]` table, the header's
//! justification must be one of its codes (and one the ground allows); without one, any
//! short identifier is taken, as a reference into the sender's own file (older policies).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::kind::Category;

/// A named ground for sharing without the client's consent, or for sharing outside the
/// ordinary course of a non-consent basis (`acute_danger`, `legal_duty`, or one the policy
/// declares). An identifier: lowercase letters, digits and `_`, at most 64.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ground(String);

impl schemars::JsonSchema for Ground {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ground".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A named ground: acute_danger, legal_duty, conflict_van_plichten, \
                meldrecht, or one the covenant's policy declares.",
            "type": "string",
            "pattern": "^[a-z0-9_]{1,64}$",
        })
    }
}

impl Ground {
    /// Acute danger to life, serious harm to the client or another, or to public safety
    /// (e.g. 002:333-340, 8f-i).
    pub const ACUTE_DANGER: &'static str = "acute_danger";
    /// A legal obligation to share (e.g. 002:341-342, 8f-ii).
    pub const LEGAL_DUTY: &'static str = "legal_duty";
    /// Conflict of duties: the professional's duty of confidentiality yields to prevent
    /// serious harm.
    pub const CONFLICT_VAN_PLICHTEN: &'static str = "conflict_van_plichten";
    /// The professional's statutory right to report (e.g. Wet verplichte meldcode,
    /// Jeugdwet art. 7.3.8, Wmo 2015 art. 5.2.6).
    pub const MELDRECHT: &'static str = "meldrecht";

    /// A ground name, if it has the shape of one.
    pub fn new(name: &str) -> Option<Ground> {
        is_ground_name(name).then(|| Ground(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_ground_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl TryFrom<String> for Ground {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_ground_name(&s) {
            Ok(Ground(s))
        } else {
            Err("a ground is 1-64 lowercase letters, digits or '_'".into())
        }
    }
}

impl From<Ground> for String {
    fn from(g: Ground) -> String {
        g.0
    }
}

impl fmt::Display for Ground {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Ground {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ground({})", self.0)
    }
}

/// The AVG art. 6(1) bases of processing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Art6Basis {
    /// (a) the data subject's consent.
    Consent,
    /// (b) performance of a contract with the data subject.
    Contract,
    /// (c) a legal obligation of the controller.
    LegalObligation,
    /// (d) the vital interests of the data subject or another person.
    VitalInterest,
    /// (e) a task in the public interest or in the exercise of official authority.
    PublicTask,
    /// (f) legitimate interests of the controller or a third party.
    LegitimateInterest,
}

impl Art6Basis {
    /// Every basis, in the order of art. 6(1).
    pub const ALL: [Art6Basis; 6] = [
        Art6Basis::Consent,
        Art6Basis::Contract,
        Art6Basis::LegalObligation,
        Art6Basis::VitalInterest,
        Art6Basis::PublicTask,
        Art6Basis::LegitimateInterest,
    ];

    /// The name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Art6Basis::Consent => "consent",
            Art6Basis::Contract => "contract",
            Art6Basis::LegalObligation => "legal_obligation",
            Art6Basis::VitalInterest => "vital_interest",
            Art6Basis::PublicTask => "public_task",
            Art6Basis::LegitimateInterest => "legitimate_interest",
        }
    }

    /// The article it stands for, for people.
    pub fn article(self) -> &'static str {
        match self {
            Art6Basis::Consent => "AVG art. 6(1)(a), consent",
            Art6Basis::Contract => "AVG art. 6(1)(b), contract",
            Art6Basis::LegalObligation => "AVG art. 6(1)(c), legal obligation",
            Art6Basis::VitalInterest => "AVG art. 6(1)(d), vital interest",
            Art6Basis::PublicTask => "AVG art. 6(1)(e), public task",
            Art6Basis::LegitimateInterest => "AVG art. 6(1)(f), legitimate interest",
        }
    }

    fn parse(s: &str) -> Option<Art6Basis> {
        Art6Basis::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl schemars::JsonSchema for Art6Basis {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Art6Basis".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An AVG art. 6(1) basis: consent (a), contract (b), legal_obligation (c), vital_interest (d), public_task (e), legitimate_interest (f).",
            "type": "string",
            "enum": Art6Basis::ALL.map(|b| b.as_str()),
        })
    }
}

impl fmt::Display for Art6Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition under which special data may be processed: AVG art. 9(2) for health data
/// (category `support`), art. 10 for criminal-law data (category `justice`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum SpecialCondition {
    /// Art. 9(2)(a): explicit consent.
    ExplicitConsent,
    /// Art. 9(2)(b): employment and social-security law.
    SocialSecurity,
    /// Art. 9(2)(c): vital interests where consent cannot be given.
    VitalInterest,
    /// Art. 9(2)(f): legal claims.
    LegalClaims,
    /// Art. 9(2)(g): substantial public interest, on the basis of law (UAVG art. 23).
    SubstantialPublicInterest,
    /// Art. 9(2)(h): health or social care by professionals bound to secrecy (UAVG
    /// art. 30).
    Care,
    /// Art. 9(2)(i): public health.
    PublicHealth,
    /// Art. 10: under the control of official authority.
    OfficialAuthority,
    /// Art. 10: authorised by member-state law providing safeguards (UAVG art. 32-33).
    MemberStateLaw,
}

impl SpecialCondition {
    const ALL: [SpecialCondition; 9] = [
        SpecialCondition::ExplicitConsent,
        SpecialCondition::SocialSecurity,
        SpecialCondition::VitalInterest,
        SpecialCondition::LegalClaims,
        SpecialCondition::SubstantialPublicInterest,
        SpecialCondition::Care,
        SpecialCondition::PublicHealth,
        SpecialCondition::OfficialAuthority,
        SpecialCondition::MemberStateLaw,
    ];

    /// The name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialCondition::ExplicitConsent => "explicit_consent",
            SpecialCondition::SocialSecurity => "social_security",
            SpecialCondition::VitalInterest => "vital_interest",
            SpecialCondition::LegalClaims => "legal_claims",
            SpecialCondition::SubstantialPublicInterest => "substantial_public_interest",
            SpecialCondition::Care => "care",
            SpecialCondition::PublicHealth => "public_health",
            SpecialCondition::OfficialAuthority => "official_authority",
            SpecialCondition::MemberStateLaw => "member_state_law",
        }
    }

    /// The article it stands for, for people.
    pub fn article(self) -> &'static str {
        match self {
            SpecialCondition::ExplicitConsent => "AVG art. 9(2)(a), explicit consent",
            SpecialCondition::SocialSecurity => "AVG art. 9(2)(b), social-security law",
            SpecialCondition::VitalInterest => "AVG art. 9(2)(c), vital interest",
            SpecialCondition::LegalClaims => "AVG art. 9(2)(f), legal claims",
            SpecialCondition::SubstantialPublicInterest => {
                "AVG art. 9(2)(g), substantial public interest"
            }
            SpecialCondition::Care => "AVG art. 9(2)(h), care by professionals bound to secrecy",
            SpecialCondition::PublicHealth => "AVG art. 9(2)(i), public health",
            SpecialCondition::OfficialAuthority => "AVG art. 10, under official authority",
            SpecialCondition::MemberStateLaw => "AVG art. 10, authorised by law (UAVG art. 32-33)",
        }
    }

    /// Whether it is an art. 10 condition (criminal-law data) rather than art. 9.
    pub fn is_art10(self) -> bool {
        matches!(
            self,
            SpecialCondition::OfficialAuthority | SpecialCondition::MemberStateLaw
        )
    }

    fn parse(s: &str) -> Option<SpecialCondition> {
        SpecialCondition::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl schemars::JsonSchema for SpecialCondition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SpecialCondition".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An AVG art. 9(2) condition (explicit_consent, social_security, vital_interest, legal_claims, substantial_public_interest, care, public_health) for support data, or an art. 10 condition (official_authority, member_state_law) for justice data.",
            "type": "string",
            "enum": SpecialCondition::ALL.map(|c| c.as_str()),
        })
    }
}

impl fmt::Display for SpecialCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The data categories that are special data, with the article that governs them.
pub const SPECIAL_CATEGORIES: [(Category, &str); 2] = [
    (Category::Support, "art. 9 (health)"),
    (Category::Justice, "art. 10 (criminal-law data)"),
];

/// The condition a purpose names for one special category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialData {
    /// The art. 9(2) or art. 10 condition.
    pub condition: SpecialCondition,
    /// Where the covenant or the law says so, in words.
    pub source: String,
}

/// A ground the policy knows: built in, adjusted or declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroundDef {
    /// What it is, in words.
    pub description: String,
    /// Where the covenant or the law provides it.
    pub source: String,
    /// Whether each use alerts the FGs (otherwise it is recorded for their review only).
    pub alert_fg: bool,
    /// The justification codes a sender may give with it; `None`: any code of the
    /// covenant's list (or any code, when the covenant keeps no list).
    pub justifications: Option<BTreeSet<String>>,
}

/// The grounds and justification codes of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grounds {
    /// Every ground the policy knows, built in or declared.
    pub defs: BTreeMap<Ground, GroundDef>,
    /// The covenant's closed list of justification codes, with what each means; empty:
    /// the covenant keeps no list and any short code is taken.
    pub justifications: BTreeMap<String, String>,
}

impl Grounds {
    /// The definition of `ground`, if the policy knows it.
    pub fn get(&self, ground: &Ground) -> Option<&GroundDef> {
        self.defs.get(ground)
    }

    /// Whether a use of `ground` alerts the FGs (an unknown ground does: it never passes
    /// the checks anyway).
    pub fn alerts_fg(&self, ground: &Ground) -> bool {
        self.get(ground).is_none_or(|g| g.alert_fg)
    }

    /// Why `code` may not justify a use of `ground`, if it may not.
    pub fn refuse_justification(&self, ground: &Ground, code: &str) -> Option<String> {
        if let Some(allowed) = self.get(ground).and_then(|g| g.justifications.as_ref()) {
            if !allowed.contains(code) {
                return Some(format!(
                    "justification '{code}' is not one the policy allows with ground \
                     '{ground}' (allowed: {})",
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        } else if !self.justifications.is_empty() && !self.justifications.contains_key(code) {
            return Some(format!(
                "justification '{code}' is not in the covenant's list of justification \
                 codes ({})",
                self.justifications
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        None
    }
}

impl Default for Grounds {
    /// The built-in grounds, each flagged, and no list of justification codes.
    fn default() -> Self {
        let builtin = [
            (
                Ground::ACUTE_DANGER,
                "acute danger to life, of serious harm to the client or another, or to \
                 public safety",
            ),
            (Ground::LEGAL_DUTY, "a legal obligation to share"),
            (
                Ground::CONFLICT_VAN_PLICHTEN,
                "conflict van plichten: confidentiality yields to prevent serious harm",
            ),
            (
                Ground::MELDRECHT,
                "meldrecht: the professional's statutory right to report",
            ),
        ];
        Grounds {
            defs: builtin
                .into_iter()
                .map(|(name, description)| {
                    (
                        Ground(name.to_owned()),
                        GroundDef {
                            description: description.to_owned(),
                            source: String::new(),
                            alert_fg: true,
                            justifications: None,
                        },
                    )
                })
                .collect(),
            justifications: BTreeMap::new(),
        }
    }
}

// ---- raw form, as written -------------------------------------------------------------

/// A ground a sender may name: a built-in one adjusted, or one the covenant declares.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "GroundDecl")]
pub(super) struct RawGround {
    /// What the ground is, in words (required for a ground that is not built in).
    #[serde(default)]
    description: Option<String>,
    /// Where the covenant or the law provides it.
    #[serde(default)]
    source: Option<String>,
    /// Whether each use alerts the FGs (default true); otherwise it is recorded for
    /// their grounds report only.
    #[serde(default)]
    alert_fg: Option<bool>,
    /// The justification codes (from [justifications]) a sender may give with this
    /// ground (default: all of them).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    justifications: Option<Vec<Spanned<String>>>,
}

/// The condition under which one special category travels for a purpose.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SpecialData")]
pub(super) struct RawSpecialData {
    /// The AVG art. 9(2) condition (support) or art. 10 condition (justice).
    #[schemars(with = "SpecialCondition")]
    condition: Spanned<String>,
    /// Where the covenant or the law says so, in words.
    #[serde(default)]
    source: String,
}

/// The `special_data` table of a purpose, for the policy file's schema: one entry per
/// special category.
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "SpecialDataTable")]
#[allow(dead_code)]
pub(super) struct RawSpecialDataTable {
    /// Health and support data (AVG art. 9): an art. 9(2) condition.
    support: Option<RawSpecialData>,
    /// Criminal-law data (AVG art. 10): an art. 10 condition.
    justice: Option<RawSpecialData>,
}

/// A problem at a byte offset of the policy text.
pub(super) type Problem = (usize, String);

/// The policy's grounds: the built-in ones, adjusted and extended by `[grounds.*]`, and the
/// list of justification codes.
pub(super) fn grounds(
    raw: BTreeMap<Spanned<String>, RawGround>,
    justifications: BTreeMap<String, Spanned<String>>,
) -> Result<Grounds, Problem> {
    let mut out = Grounds::default();
    for (code, text) in &justifications {
        if !crate::ids::is_identifier(code) {
            return Err((
                text.span().start,
                format!(
                    "justification code '{code}' is not an identifier: 1-64 letters, digits, \
                     '_', '.', ':' or '-'"
                ),
            ));
        }
        out.justifications
            .insert(code.clone(), text.get_ref().clone());
    }
    for (name, g) in raw {
        let Some(ground) = Ground::new(name.get_ref()) else {
            return Err((
                name.span().start,
                format!(
                    "ground '{}' is not a valid name: 1-64 lowercase letters, digits or '_'",
                    name.get_ref()
                ),
            ));
        };
        let def = out.defs.entry(ground).or_insert_with(|| GroundDef {
            description: String::new(),
            source: String::new(),
            alert_fg: true,
            justifications: None,
        });
        if let Some(d) = g.description {
            def.description = d;
        }
        if let Some(s) = g.source {
            def.source = s;
        }
        if let Some(a) = g.alert_fg {
            def.alert_fg = a;
        }
        if let Some(codes) = g.justifications {
            let mut set = BTreeSet::new();
            for c in codes {
                if !out.justifications.contains_key(c.get_ref()) {
                    return Err((
                        c.span().start,
                        format!(
                            "ground '{}': justification '{}' is not in [justifications]",
                            name.get_ref(),
                            c.get_ref()
                        ),
                    ));
                }
                set.insert(c.into_inner());
            }
            if set.is_empty() {
                return Err((
                    name.span().start,
                    format!(
                        "ground '{}': an empty justifications list would make it unusable",
                        name.get_ref()
                    ),
                ));
            }
            def.justifications = Some(set);
        }
        if def.description.is_empty() {
            return Err((
                name.span().start,
                format!(
                    "ground '{}' is not built in, so it needs a description",
                    name.get_ref()
                ),
            ));
        }
    }
    Ok(out)
}

/// An art. 6 basis as written.
pub(super) fn basis(raw: &Spanned<String>) -> Result<Art6Basis, Problem> {
    Art6Basis::parse(raw.get_ref()).ok_or_else(|| {
        (
            raw.span().start,
            format!(
                "unknown legal basis '{}' (expected one of {})",
                raw.get_ref(),
                Art6Basis::ALL.map(|b| b.as_str()).join(", ")
            ),
        )
    })
}

/// A purpose's `special_data` table as written.
pub(super) fn special_data(
    raw: BTreeMap<Spanned<String>, RawSpecialData>,
) -> Result<BTreeMap<Category, SpecialData>, Problem> {
    let mut out = BTreeMap::new();
    for (cat, sd) in raw {
        let category = cat
            .get_ref()
            .parse::<Category>()
            .ok()
            .filter(|c| SPECIAL_CATEGORIES.iter().any(|(s, _)| s == c))
            .ok_or_else(|| {
                (
                    cat.span().start,
                    format!(
                        "special_data.{}: only support (art. 9) and justice (art. 10) are \
                         special categories",
                        cat.get_ref()
                    ),
                )
            })?;
        let condition = SpecialCondition::parse(sd.condition.get_ref()).ok_or_else(|| {
            (
                sd.condition.span().start,
                format!(
                    "special_data.{category}: unknown condition '{}' (expected one of {})",
                    sd.condition.get_ref(),
                    SpecialCondition::ALL.map(|c| c.as_str()).join(", ")
                ),
            )
        })?;
        let art10 = category == Category::Justice;
        if condition.is_art10() != art10 {
            return Err((
                sd.condition.span().start,
                format!(
                    "special_data.{category}: '{condition}' is an {} condition, but {category} \
                     data fall under {}",
                    if condition.is_art10() {
                        "art. 10"
                    } else {
                        "art. 9(2)"
                    },
                    if art10 { "art. 10" } else { "art. 9" }
                ),
            ));
        }
        out.insert(
            category,
            SpecialData {
                condition,
                source: sd.source,
            },
        );
    }
    Ok(out)
}
