//! Test fixtures for the checks, shared with the tests of the broker's store (feature
//! `testing`): a directory of six parties, a case with five of them, a consent, and sealing.
#![allow(clippy::unwrap_used, missing_docs)]

use chrono::Duration;
use ketenpost_schemas::control::Toestemming;
use ketenpost_schemas::directory::{BrokerEntry, Party};
use ketenpost_schemas::ids::CaseRef;
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::payload::{Aanmelding, DatalekMelding, Signaal};
use ketenpost_schemas::seal::{seal, Draft, Sender};
use serde_json::Value;

use chrono::{DateTime, Utc};
use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::envelope::{LegalBasis, Limits};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::{RejectCode, Rejection};

use crate::checks::{check_message, Authorised, Env, Submitted};
use crate::registry::{Case, Consent, MemRegistry};

/// The policy the broker enforces.
pub use ketenpost_schemas::testdata::TEST_POLICY as STRICT;

/// A sender-side policy that allows more, so the broker's own checks can be reached: a
/// corporation may send an aanmelding and receive a signaal (under legal duty too), and
/// there is an extra purpose the broker does not know.
pub fn lenient() -> String {
    let mut v: toml::Table = toml::from_str(STRICT).unwrap();
    let uit = &mut v["purposes"]["uitstroom"]["kinds"];
    let aanmelding = uit["aanmelding"].as_table_mut().unwrap();
    aanmelding["senders"] = toml::Value::from(vec!["zorgaanbieder", "woningcorporatie"]);
    let signaal = uit["signaal"].as_table_mut().unwrap();
    signaal["recipients"] =
        toml::Value::from(vec!["zorgaanbieder", "gemeente", "woningcorporatie"]);
    signaal.insert("grounds".into(), toml::Value::from(vec!["legal_duty"]));
    signaal["views"]
        .as_table_mut()
        .unwrap()
        .insert("woningcorporatie".into(), toml::Value::from(vec!["case"]));
    let mut extra = v["purposes"]["overlast"].clone();
    extra["processing_activity"] = toml::Value::from("test-extra");
    v["purposes"]
        .as_table_mut()
        .unwrap()
        .insert("extra".into(), extra);
    toml::to_string(&v).unwrap()
}

/// A party of the fixture.
#[derive(Debug)]
pub struct P {
    pub oin: Oin,
    pub key: SigningKey,
}

/// The checks' fixture, also used by the store's tests: a directory of six parties, a
/// case with five of them, and a consent for the three roles.
#[derive(Debug)]
pub struct Fx {
    pub strict: Policy,
    pub lenient: Policy,
    pub directory: Directory,
    pub limits: Limits,
    pub gem: P,
    pub zorg: P,
    pub corp: P,
    pub corp2: P,
    /// Has two roles in the directory: gemeente and woningcorporatie.
    pub dual: P,
    pub revoked: P,
    pub reg: MemRegistry,
    pub case: CaseRef,
    pub consent: uuid::Uuid,
    pub now: DateTime<Utc>,
}

/// A party with a fresh signing key and OIN `n`.
pub fn party(n: u64) -> P {
    P {
        oin: format!("{:020}", n).parse().unwrap(),
        key: keys::generate_signing_key(),
    }
}

impl Default for Fx {
    fn default() -> Fx {
        Fx::new()
    }
}

impl Fx {
    pub fn new() -> Fx {
        let strict = Policy::from_toml(STRICT).unwrap();
        let lenient = Policy::from_toml(&lenient()).unwrap();
        let (gem, zorg, corp, corp2, dual, revoked) =
            (party(1), party(2), party(3), party(4), party(5), party(6));
        let entry = |p: &P, roles: &[&str], revoked: bool| Party {
            oin: p.oin.clone(),
            name: format!("party {}", p.oin),
            roles: roles.iter().map(|r| Role::new(*r)).collect(),
            signing_key: keys::verifying_key_to_text(&p.key.verifying_key()),
            age_recipient: keys::generate_age_identity().to_public().to_string(),
            cert_fingerprint: "00".repeat(32),
            fg_contact: "fg@example.org".into(),
            revoked,
            previous_keys: Vec::new(),
        };
        let directory = Directory {
            covenant: "test".into(),
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
            parties: vec![
                entry(&gem, &["gemeente"], false),
                entry(&zorg, &["zorgaanbieder"], false),
                entry(&corp, &["woningcorporatie"], false),
                entry(&corp2, &["woningcorporatie"], false),
                entry(&dual, &["gemeente", "woningcorporatie"], false),
                entry(&revoked, &["woningcorporatie"], true),
            ],
        };
        let now = Utc::now();
        let case = CaseRef::random();
        let consent = uuid::Uuid::now_v7();
        let mut reg = MemRegistry::default();
        reg.cases.insert(
            case.clone(),
            Case {
                case_ref: case.clone(),
                covenant: "test".into(),
                purpose: "uitstroom".into(),
                regievoerder: gem.oin.clone(),
                members: [
                    (gem.oin.clone(), Role::new("gemeente")),
                    (zorg.oin.clone(), Role::new("zorgaanbieder")),
                    (corp.oin.clone(), Role::new("woningcorporatie")),
                    (dual.oin.clone(), Role::new("gemeente")),
                    (revoked.oin.clone(), Role::new("woningcorporatie")),
                ]
                .into(),
                former_members: Default::default(),
                opened_at: now - Duration::days(10),
                closed_at: None,
                deletion_ordered_at: None,
                deleted_by: Default::default(),
                phase: None,
                phase_since: None,
                review_noticed_at: None,
            },
        );
        reg.consents.insert(
            consent,
            Consent {
                record: Toestemming {
                    consent_id: consent,
                    covenant: "test".into(),
                    purpose: "uitstroom".into(),
                    case_ref: case.clone(),
                    parties: vec![],
                    roles: vec![
                        Role::new("gemeente"),
                        Role::new("zorgaanbieder"),
                        Role::new("woningcorporatie"),
                    ],
                    valid_from: now - Duration::days(5),
                    valid_until: None,
                    document_sha256: "ab".repeat(32),
                    obtained_by: zorg.oin.clone(),
                    obtained_at: now - Duration::days(5),
                },
                withdrawn_at: None,
            },
        );
        Fx {
            strict,
            lenient,
            directory,
            limits: Limits::default(),
            gem,
            zorg,
            corp,
            corp2,
            dual,
            revoked,
            reg,
            case,
            consent,
            now,
        }
    }

    pub fn env(&self) -> Env<'_> {
        Env {
            policy: &self.strict,
            directory: &self.directory,
            limits: &self.limits,
            keys: None,
            max_clock_skew: crate::checks::DEFAULT_CLOCK_SKEW,
            signatures: &ketenpost_schemas::keys::Strict,
        }
    }

    pub fn draft(&self, kind: Kind, to: &[(&P, &str)]) -> Draft {
        let payload: Value = match kind {
            Kind::Aanmelding => serde_json::to_value(Aanmelding::example()).unwrap(),
            Kind::Signaal => serde_json::to_value(Signaal::example()).unwrap(),
            Kind::DatalekMelding => serde_json::to_value(DatalekMelding::example()).unwrap(),
            Kind::Correctie => {
                serde_json::to_value(ketenpost_schemas::payload::Correctie::example()).unwrap()
            }
            _ => unreachable!(),
        };
        let mut d = Draft::new(
            "uitstroom",
            kind,
            self.case.clone(),
            to.iter()
                .map(|(p, r)| (p.oin.clone(), Role::new(*r)))
                .collect(),
            LegalBasis::Consent {
                consent_id: self.consent,
            },
            payload,
        );
        if kind == Kind::Signaal {
            d.event_time = Some(self.now - Duration::hours(3));
        }
        d
    }

    pub fn seal(&self, from: &P, draft: Draft) -> Vec<u8> {
        seal(
            draft,
            Sender {
                oin: &from.oin,
                key: &from.key,
            },
            &self.lenient,
            &self.directory,
            self.now,
        )
        .unwrap()
        .0
        .encode()
    }

    pub fn check_as(&self, transport: &P, bytes: &[u8]) -> Result<Authorised, Rejection> {
        check_message(
            Submitted {
                transport: &transport.oin,
                bytes,
            },
            self.env(),
            &self.reg,
            self.now,
        )
    }

    /// Seal as `from`, submit over `from`'s connection, return the code if refused.
    pub fn code(&self, from: &P, draft: Draft) -> Option<RejectCode> {
        self.check_as(from, &self.seal(from, draft))
            .err()
            .map(|r| r.code)
    }

    /// The strict policy's signaal rule, to change for one test.
    pub fn signaal_rule(&mut self) -> &mut ketenpost_schemas::policy::KindRule {
        self.strict
            .purposes
            .get_mut("uitstroom")
            .and_then(|p| p.kinds.get_mut(&Kind::Signaal))
            .expect("the test policy's uitstroom purpose allows signaal")
    }

    pub fn signaal(&self) -> Draft {
        self.draft(
            Kind::Signaal,
            &[(&self.zorg, "zorgaanbieder"), (&self.gem, "gemeente")],
        )
    }
}
