//! The early refusal must agree with the broker: for every refusal it gives, the broker's
//! own `check_message` (or `check_control`), run on the message (or record) the agent would
//! otherwise have sent and on the same facts, gives the same code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use ketenpost_core::checks::{check_message, Env, Submitted};
use ketenpost_core::registry::{Case, Consent, MemRegistry};
use ketenpost_schemas::control::Toestemming;
use ketenpost_schemas::control::{CaseChange, CaseOp, Record, SignedRecord, ToestemmingIntrekking};
use ketenpost_schemas::directory::{BrokerEntry, Directory, Party};
use ketenpost_schemas::envelope::Limits;
use ketenpost_schemas::keys::{self, SigningKey};
use ketenpost_schemas::payload::{Aanmelding, DatalekMelding, Signaal};
use ketenpost_schemas::seal::{seal, Draft, Sender};

use super::*;
use crate::mirror::Knowledge;

const WALCHEREN: &str = include_str!("../../../schemas/policies/walcheren.toml");

fn second_purpose() -> String {
    format!(
        "{WALCHEREN}\n[purposes.nazorg]\nname = \"nazorg\"\nprocessing_activity = \"nazorg\"\n\
         legal_basis = \"test\"\ncase_retention = \"12 months\"\ncase_managers = [\"gemeente\"]\n\
         consent_recorders = [\"gemeente\"]\n[purposes.nazorg.kinds.signaal]\n\
         senders = [\"gemeente\", \"woningcorporatie\", \"zorgaanbieder\"]\n\
         recipients = [\"gemeente\", \"woningcorporatie\", \"zorgaanbieder\"]\n\
         consent = \"required\"\nundelivered_ttl = \"14 days\"\nviews.gemeente = [\"case\"]\n\
         views.woningcorporatie = [\"case\"]\nviews.zorgaanbieder = [\"case\"]\n"
    )
}

struct World {
    policy: Policy,
    directory: Directory,
    keys: Vec<SigningKey>,
    oins: Vec<Oin>,
}

const G: usize = 0;
const W: usize = 1;
const Z: usize = 2;
const W2: usize = 3;

fn world(policy_text: &str) -> World {
    let policy = Policy::from_toml(policy_text).unwrap();
    let roles = [
        "gemeente",
        "woningcorporatie",
        "zorgaanbieder",
        "woningcorporatie",
    ];
    let mut parties = Vec::new();
    let mut keys_ = Vec::new();
    let mut oins = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let k = keys::generate_signing_key();
        let oin: Oin = format!("{:020}", i + 1).parse().unwrap();
        parties.push(Party {
            oin: oin.clone(),
            name: format!("party {i}"),
            roles: vec![Role::new(*role)],
            signing_key: keys::verifying_key_to_text(&k.verifying_key()),
            age_recipient: keys::generate_age_identity().to_public().to_string(),
            cert_fingerprint: "00".repeat(32),
            fg_contact: "fg@example.org".into(),
            revoked: false,
            previous_keys: Vec::new(),
        });
        keys_.push(k);
        oins.push(oin);
    }
    let broker_key = keys::generate_signing_key();
    let directory = Directory {
        covenant: policy.covenant.id.clone(),
        serial: 1,
        issued_at: Utc::now(),
        policy_sha256: "0".repeat(64),
        fgs: Vec::new(),
        broker: BrokerEntry {
            name: "broker".into(),
            signing_key: keys::verifying_key_to_text(&broker_key.verifying_key()),
            cert_fingerprint: "00".repeat(32),
        },
        parties,
    };
    directory.check(&policy).unwrap();
    World {
        policy,
        directory,
        keys: keys_,
        oins,
    }
}

/// The facts both sides see: a case with G (regievoerder) and W, and consents.
struct Facts {
    case: Case,
    consents: Vec<Consent>,
}

impl World {
    fn facts(&self, closed: bool) -> Facts {
        let now = Utc::now();
        let case_ref = CaseRef::random();
        Facts {
            case: Case {
                case_ref,
                covenant: "walcheren".into(),
                purpose: "uitstroom".into(),
                regievoerder: self.oins[G].clone(),
                members: [
                    (self.oins[G].clone(), Role::new("gemeente")),
                    (self.oins[W].clone(), Role::new("woningcorporatie")),
                ]
                .into(),
                former_members: Default::default(),
                opened_at: now - Duration::hours(1),
                closed_at: closed.then_some(now - Duration::minutes(1)),
                deletion_ordered_at: None,
                deleted_by: Default::default(),
                phase: None,
                phase_since: None,
                review_noticed_at: None,
            },
            consents: Vec::new(),
        }
    }

    fn consent(&self, f: &mut Facts, roles: &[&str], withdrawn: bool) -> uuid::Uuid {
        let now = Utc::now();
        let id = uuid::Uuid::now_v7();
        f.consents.push(Consent {
            record: Toestemming {
                consent_id: id,
                covenant: "walcheren".into(),
                purpose: f.case.purpose.clone(),
                case_ref: f.case.case_ref.clone(),
                parties: vec![],
                roles: roles.iter().map(|r| Role::new(*r)).collect(),
                valid_from: now - Duration::hours(1),
                valid_until: None,
                document_sha256: "ab".repeat(32),
                obtained_by: self.oins[G].clone(),
                obtained_at: now - Duration::hours(1),
            },
            withdrawn_at: withdrawn.then_some(now - Duration::minutes(5)),
        });
        id
    }

    /// The agent's mirror of the facts, as the regievoerder G knows them.
    fn mirror(&self, f: &Facts) -> (KnownCase, Vec<KnownConsent>) {
        let c = &f.case;
        (
            KnownCase {
                case_ref: c.case_ref.clone(),
                purpose: c.purpose.clone(),
                members: c.members.clone(),
                regievoerder: Some(c.regievoerder.clone()),
                former_members: c.former_members.clone(),
                former_known: true,
                complete: true,
                knowledge: Knowledge::Managed,
                closed_at: c.closed_at,
                phase: c.phase.clone(),
                review_due: None,
                updated_at: Utc::now(),
            },
            f.consents
                .iter()
                .map(|c| KnownConsent {
                    record: c.record.clone(),
                    withdrawn_at: c.withdrawn_at,
                })
                .collect(),
        )
    }

    fn agent(
        &self,
        sender: usize,
        req: &SendRequest,
        f: Option<&Facts>,
    ) -> Result<Resolved, Error> {
        let mirror = f.map(|f| self.mirror(f));
        let cx = Context {
            me: &self.oins[sender],
            policy: &self.policy,
            directory: &self.directory,
            case: mirror.as_ref().map(|m| &m.0),
            consents: mirror.as_ref().map(|m| m.1.as_slice()).unwrap_or(&[]),
        };
        // What `Agent::send` does: resolve, seal, then the broker's checks over the mirror.
        let resolved = resolve(req, &cx, Utc::now())?;
        let mut draft = Draft::new(
            resolved.purpose.clone(),
            req.kind,
            req.case_ref.clone(),
            resolved.recipients.clone(),
            resolved.legal_basis.clone(),
            req.payload.clone(),
        );
        draft.event_time = resolved.event_time;
        draft.breach_scope = resolved.breach_scope.clone();
        check_sealed(&self.seal_as(sender, draft), &cx, Utc::now())?;
        Ok(resolved)
    }

    /// What `Core` does with a control record: sign it as it will be sent, then the
    /// broker's `check_control` over the mirror of `f` (`None`: a case the agent does not
    /// know).
    fn agent_control<R: Record>(
        &self,
        signer: usize,
        record: &R,
        f: Option<&Facts>,
    ) -> Option<RejectCode> {
        let mirror = f.map(|f| self.mirror(f));
        let cx = Context {
            me: &self.oins[signer],
            policy: &self.policy,
            directory: &self.directory,
            case: mirror.as_ref().map(|m| &m.0),
            consents: mirror.as_ref().map(|m| m.1.as_slice()).unwrap_or(&[]),
        };
        let rec =
            SignedRecord::sign(record, self.oins[signer].clone(), &self.keys[signer]).unwrap();
        match check_control(&rec, &cx, Utc::now()) {
            Ok(()) => None,
            Err(Error::Refused { rejection, by }) => {
                assert_eq!(by, crate::RefusedBy::Agent);
                Some(rejection.code)
            }
            Err(other) => panic!("not a refusal: {other}"),
        }
    }

    /// What the broker says about the same control record on the facts `f`.
    fn broker_control<R: Record>(
        &self,
        signer: usize,
        record: &R,
        f: &Facts,
    ) -> Option<RejectCode> {
        let rec =
            SignedRecord::sign(record, self.oins[signer].clone(), &self.keys[signer]).unwrap();
        let mut reg = MemRegistry::default();
        reg.cases.insert(f.case.case_ref.clone(), f.case.clone());
        for c in &f.consents {
            reg.consents.insert(c.record.consent_id, c.clone());
        }
        let env = Env {
            policy: &self.policy,
            directory: &self.directory,
            limits: &Limits::default(),
            keys: None,
            max_clock_skew: ketenpost_core::checks::DEFAULT_CLOCK_SKEW,
            signatures: &ketenpost_schemas::keys::Strict,
        };
        ketenpost_core::checks::check_control(
            &self.oins[signer],
            &rec,
            env,
            &reg,
            |_, _| Ok(None),
            Utc::now(),
        )
        .err()
        .map(|r| r.code)
    }

    fn change(&self, by: usize, f: &Facts, change: CaseOp) -> CaseChange {
        CaseChange {
            case_ref: f.case.case_ref.clone(),
            covenant: "walcheren".into(),
            purpose: f.case.purpose.clone(),
            change,
            by: self.oins[by].clone(),
            at: Utc::now(),
        }
    }

    /// The envelope party `sender` seals from `draft`.
    fn seal_as(&self, sender: usize, draft: Draft) -> Vec<u8> {
        seal(
            draft,
            Sender {
                oin: &self.oins[sender],
                key: &self.keys[sender],
            },
            &self.policy,
            &self.directory,
            Utc::now(),
        )
        .unwrap()
        .0
        .encode()
    }

    /// The agent refuses `req` with `code`, and so does the broker for the message the
    /// agent would have sealed.
    /// The message's recipients when it goes to the corporation.
    fn corporation(&self) -> Vec<(Oin, Role)> {
        vec![(self.oins[W].clone(), role("woningcorporatie"))]
    }

    /// The agent and the broker refuse `req` from `sender` to the corporation with `want`.
    fn both_refuse(
        &self,
        sender: usize,
        req: &SendRequest,
        basis: LegalBasis,
        f: &Facts,
        want: RejectCode,
    ) {
        assert_eq!(code(self.agent(sender, req, Some(f))), Some(want), "agent");
        assert_eq!(
            self.broker(sender, req, self.corporation(), basis, f),
            Err(want),
            "broker"
        );
    }

    /// What the broker says about the message the agent would have sealed.
    fn broker(
        &self,
        sender: usize,
        req: &SendRequest,
        recipients: Vec<(Oin, Role)>,
        basis: LegalBasis,
        f: &Facts,
    ) -> Result<(), RejectCode> {
        let mut draft = Draft::new(
            req.purpose.clone().unwrap_or_else(|| "uitstroom".into()),
            req.kind,
            req.case_ref.clone(),
            recipients,
            basis,
            req.payload.clone(),
        );
        draft.event_time = event_time_from_payload(req.kind, &req.payload);
        if req.kind == Kind::DatalekMelding {
            draft.breach_scope = breach_scope_from_payload(&req.payload);
        }
        let bytes = self.seal_as(sender, draft);
        let mut reg = MemRegistry::default();
        reg.cases.insert(f.case.case_ref.clone(), f.case.clone());
        for c in &f.consents {
            reg.consents.insert(c.record.consent_id, c.clone());
        }
        check_message(
            Submitted {
                transport: &self.oins[sender],
                bytes: &bytes,
            },
            Env {
                policy: &self.policy,
                directory: &self.directory,
                limits: &Limits::default(),
                keys: None,
                max_clock_skew: ketenpost_core::checks::DEFAULT_CLOCK_SKEW,
                signatures: &ketenpost_schemas::keys::Strict,
            },
            &reg,
            Utc::now(),
        )
        .map(|_| ())
        .map_err(|r| r.code)
    }
}

fn signaal(case_ref: &CaseRef, to: Vec<To>) -> SendRequest {
    SendRequest {
        kind: Kind::Signaal,
        case_ref: case_ref.clone(),
        purpose: None,
        to,
        legal_basis: None,
        event_time: None,
        in_reply_to: None,
        answer_request: None,
        trace_id: None,
        payload: serde_json::to_value(Signaal::example()).unwrap(),
    }
}

fn code(r: Result<Resolved, Error>) -> Option<RejectCode> {
    match r {
        Ok(_) => None,
        Err(Error::Refused { rejection, by }) => {
            assert_eq!(by, crate::RefusedBy::Agent);
            Some(rejection.code)
        }
        Err(other) => panic!("not a refusal: {other}"),
    }
}

fn role(r: &str) -> Role {
    Role::new(r)
}

#[test]
fn a_good_message_passes_both() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    w.consent(
        &mut f,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
        false,
    );
    let req = signaal(&f.case.case_ref, vec![To::Role(role("woningcorporatie"))]);
    let resolved = w.agent(G, &req, Some(&f)).unwrap();
    assert_eq!(resolved.recipients, w.corporation());
    assert!(matches!(resolved.legal_basis, LegalBasis::Consent { .. }));
    assert!(resolved.event_time.is_some());
    assert_eq!(
        w.broker(G, &req, resolved.recipients, resolved.legal_basis, &f),
        Ok(())
    );
}

#[test]
fn not_in_case_team_agrees() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    let id = w.consent(
        &mut f,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
        false,
    );
    let req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[Z].clone())]);
    assert_eq!(
        code(w.agent(G, &req, Some(&f))),
        Some(RejectCode::NotInCaseTeam)
    );
    let basis = LegalBasis::Consent { consent_id: id };
    assert_eq!(
        w.broker(
            G,
            &req,
            vec![(w.oins[Z].clone(), role("zorgaanbieder"))],
            basis,
            &f
        ),
        Err(RejectCode::NotInCaseTeam)
    );
    // By role, too: nobody in the team is a zorgaanbieder.
    let req = signaal(&f.case.case_ref, vec![To::Role(role("zorgaanbieder"))]);
    assert_eq!(
        code(w.agent(G, &req, Some(&f))),
        Some(RejectCode::NotInCaseTeam)
    );
}

#[test]
fn sender_role_not_allowed_agrees() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    let id = w.consent(
        &mut f,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
        false,
    );
    let mut req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    req.kind = Kind::Aanmelding;
    req.payload = serde_json::to_value(Aanmelding::example()).unwrap();
    w.both_refuse(
        G,
        &req,
        LegalBasis::Consent { consent_id: id },
        &f,
        RejectCode::SenderRoleNotAllowed,
    );
    // Without the case, from the directory roles alone.
    assert_eq!(
        code(w.agent(
            G,
            &{
                let mut r = req.clone();
                r.purpose = Some("uitstroom".into());
                r
            },
            None
        )),
        Some(RejectCode::SenderRoleNotAllowed)
    );
}

#[test]
fn no_consent_agrees() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    let req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    assert_eq!(
        code(w.agent(G, &req, Some(&f))),
        Some(RejectCode::NoConsent)
    );
    for basis in [
        LegalBasis::Covenant,
        LegalBasis::Consent {
            consent_id: uuid::Uuid::now_v7(),
        },
    ] {
        assert_eq!(
            w.broker(G, &req, w.corporation(), basis, &f),
            Err(RejectCode::NoConsent)
        );
    }
    let mut covenant = req.clone();
    covenant.legal_basis = Some(LegalBasis::Covenant);
    assert_eq!(
        code(w.agent(G, &covenant, Some(&f))),
        Some(RejectCode::NoConsent)
    );
}

#[test]
fn withdrawn_consent_agrees() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    let id = w.consent(&mut f, &["gemeente", "woningcorporatie"], true);
    let req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    assert_eq!(
        code(w.agent(G, &req, Some(&f))),
        Some(RejectCode::ConsentWithdrawn)
    );
    let mut named = req.clone();
    named.legal_basis = Some(LegalBasis::Consent { consent_id: id });
    assert_eq!(
        code(w.agent(G, &named, Some(&f))),
        Some(RejectCode::ConsentWithdrawn)
    );
    assert_eq!(
        w.broker(
            G,
            &req,
            w.corporation(),
            LegalBasis::Consent { consent_id: id },
            &f
        ),
        Err(RejectCode::ConsentWithdrawn)
    );
}

#[test]
fn consent_scope_agrees() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    let id = w.consent(&mut f, &["gemeente"], false);
    let req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    w.both_refuse(
        G,
        &req,
        LegalBasis::Consent { consent_id: id },
        &f,
        RejectCode::ConsentScope,
    );
}

#[test]
fn wrong_purpose_agrees() {
    let w = world(&second_purpose());
    let mut f = w.facts(false);
    let id = w.consent(&mut f, &["gemeente", "woningcorporatie"], false);
    let mut req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    req.purpose = Some("nazorg".into());
    w.both_refuse(
        G,
        &req,
        LegalBasis::Consent { consent_id: id },
        &f,
        RejectCode::WrongPurpose,
    );
}

#[test]
fn closed_case_and_legal_basis_mismatch_agree() {
    let w = world(WALCHEREN);
    let mut f = w.facts(true);
    let id = w.consent(&mut f, &["gemeente", "woningcorporatie"], false);
    let req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    w.both_refuse(
        G,
        &req,
        LegalBasis::Consent { consent_id: id },
        &f,
        RejectCode::CaseClosed,
    );

    // A breach notice rests on the covenant; it may concern a closed case.
    let mut breach = req.clone();
    breach.kind = Kind::DatalekMelding;
    let mut payload = serde_json::to_value(DatalekMelding::example()).unwrap();
    payload["betrokken_casussen"] = serde_json::json!([f.case.case_ref]);
    breach.payload = payload;
    let resolved = w.agent(G, &breach, Some(&f)).unwrap();
    assert_eq!(resolved.legal_basis, LegalBasis::Covenant);
    assert!(resolved.breach_scope.is_some());
    breach.legal_basis = Some(LegalBasis::Consent { consent_id: id });
    w.both_refuse(
        G,
        &breach,
        LegalBasis::Consent { consent_id: id },
        &f,
        RejectCode::LegalBasisMismatch,
    );
}

#[test]
fn ground_not_allowed_agrees() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    let mut req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    let basis = LegalBasis::NonConsent {
        ground: ketenpost_schemas::policy::Ground::new("acute_danger").unwrap(),
        justification: "J-1".into(),
    };
    req.legal_basis = Some(basis.clone());
    w.both_refuse(G, &req, basis, &f, RejectCode::GroundNotAllowed);
}

#[test]
fn what_the_agent_cannot_know_is_left_to_the_broker() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    // An unknown case: the agent passes (given the purpose), the broker decides.
    let mut req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W2].clone())]);
    req.purpose = Some("uitstroom".into());
    req.legal_basis = Some(LegalBasis::Consent {
        consent_id: uuid::Uuid::now_v7(),
    });
    let resolved = w.agent(G, &req, None).unwrap();
    assert_eq!(resolved.recipients[0].1, role("woningcorporatie"));
    assert_eq!(
        w.broker(G, &req, resolved.recipients, resolved.legal_basis, &f),
        Err(RejectCode::NotInCaseTeam)
    );
    // Without the case the purpose must be given.
    let mut no_purpose = req.clone();
    no_purpose.purpose = None;
    assert!(matches!(
        w.agent(G, &no_purpose, None),
        Err(Error::Invalid(_))
    ));
    // Recipients by role need the case team.
    let by_role = signaal(&f.case.case_ref, vec![To::Role(role("woningcorporatie"))]);
    let mut by_role = by_role;
    by_role.purpose = Some("uitstroom".into());
    assert!(matches!(w.agent(G, &by_role, None), Err(Error::Invalid(_))));
}

#[test]
fn case_changes_are_checked_by_core_early() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    // Only gemeente manages cases in Walcheren. A new case: the agent cannot know whether
    // the reference is taken, but it knows who may open one.
    let mut fresh = w.facts(false);
    fresh.case.case_ref = CaseRef::random();
    for (who, want) in [(G, None), (Z, Some(RejectCode::NotPermitted))] {
        let role = open_role(&w.oins[who], "uitstroom", None, &w.policy, &w.directory).unwrap();
        let open = w.change(who, &fresh, CaseOp::Open { role });
        assert_eq!(w.agent_control(who, &open, None), want);
        assert_eq!(w.broker_control(who, &open, &f), want);
    }
    // The corporation may not change the team; a member is not added twice; the
    // regievoerder does not leave its own case.
    let add = CaseOp::AddMember {
        oin: w.oins[Z].clone(),
        role: role("zorgaanbieder"),
    };
    let again = CaseOp::AddMember {
        oin: w.oins[W].clone(),
        role: role("woningcorporatie"),
    };
    let leave = CaseOp::RemoveMember {
        oin: w.oins[G].clone(),
    };
    let no_phase = CaseOp::EnterPhase {
        phase: "nergens".into(),
    };
    for (who, op, want) in [
        (G, add.clone(), None),
        (W, add, Some(RejectCode::NotPermitted)),
        (G, again, Some(RejectCode::Conflict)),
        (G, leave, Some(RejectCode::Conflict)),
        (G, no_phase, Some(RejectCode::Conflict)),
        (
            G,
            CaseOp::ReviewDue {
                phase: "team_thuis".into(),
                due: Utc::now(),
            },
            Some(RejectCode::NotPermitted),
        ),
    ] {
        let change = w.change(who, &f, op.clone());
        assert_eq!(w.agent_control(who, &change, Some(&f)), want, "{op:?}");
        assert_eq!(w.broker_control(who, &change, &f), want, "{op:?}");
    }
    // A closed case changes no more.
    let closed = w.facts(true);
    let change = w.change(G, &closed, CaseOp::Close);
    assert_eq!(
        w.agent_control(G, &change, Some(&closed)),
        Some(RejectCode::CaseClosed)
    );
    assert_eq!(
        w.broker_control(G, &change, &closed),
        Some(RejectCode::CaseClosed)
    );
}

#[test]
fn a_case_the_agent_does_not_know_whole_is_the_brokers_to_decide() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    let add = w.change(
        W,
        &f,
        CaseOp::AddMember {
            oin: w.oins[Z].clone(),
            role: role("zorgaanbieder"),
        },
    );
    // Unknown here, refused there.
    assert_eq!(w.agent_control(W, &add, None), None);
    assert_eq!(
        w.broker_control(W, &add, &f),
        Some(RejectCode::NotPermitted)
    );
}

#[test]
fn consents_are_checked_by_core_early() {
    let w = world(WALCHEREN);
    let mut f = w.facts(false);
    // A corporation may not register consent in Walcheren.
    let mut t = Toestemming {
        consent_id: uuid::Uuid::now_v7(),
        covenant: "walcheren".into(),
        purpose: "uitstroom".into(),
        case_ref: f.case.case_ref.clone(),
        parties: vec![],
        roles: vec![role("gemeente")],
        valid_from: Utc::now(),
        valid_until: None,
        document_sha256: "ab".repeat(32),
        obtained_by: w.oins[W].clone(),
        obtained_at: Utc::now(),
    };
    assert_eq!(
        w.agent_control(W, &t, Some(&f)),
        Some(RejectCode::NotPermitted)
    );
    assert_eq!(w.broker_control(W, &t, &f), Some(RejectCode::NotPermitted));
    t.obtained_by = w.oins[G].clone();
    assert_eq!(w.agent_control(G, &t, Some(&f)), None);
    assert_eq!(w.broker_control(G, &t, &f), None);
    t.roles.clear();
    assert_eq!(
        w.agent_control(G, &t, Some(&f)),
        Some(RejectCode::Malformed)
    );
    assert_eq!(w.broker_control(G, &t, &f), Some(RejectCode::Malformed));

    // A consent withdrawn once is not withdrawn again.
    let id = w.consent(&mut f, &["gemeente", "woningcorporatie"], true);
    let withdrawal = ToestemmingIntrekking {
        consent_id: id,
        case_ref: f.case.case_ref.clone(),
        withdrawn_at: Utc::now(),
        recorded_by: w.oins[G].clone(),
    };
    assert_eq!(
        w.agent_control(G, &withdrawal, Some(&f)),
        Some(RejectCode::Conflict)
    );
    assert_eq!(
        w.broker_control(G, &withdrawal, &f),
        Some(RejectCode::Conflict)
    );
    // Also where the agent does not know the case team whole: the consent is its own.
    let mut learned = w.facts(false);
    learned.case.case_ref = f.case.case_ref.clone();
    learned.consents = f.consents.clone();
    let (mut case, consents) = w.mirror(&learned);
    case.complete = false;
    let cx = Context {
        me: &w.oins[G],
        policy: &w.policy,
        directory: &w.directory,
        case: Some(&case),
        consents: &consents,
    };
    let rec = SignedRecord::sign(&withdrawal, w.oins[G].clone(), &w.keys[G]).unwrap();
    assert!(matches!(
        check_control(&rec, &cx, Utc::now()),
        Err(Error::Refused { rejection, .. }) if rejection.code == RejectCode::Conflict
    ));
}

#[test]
fn a_correctie_that_corrects_nothing_is_refused_early() {
    let w = world(WALCHEREN);
    let f = w.facts(false);
    let mut req = signaal(&f.case.case_ref, vec![To::Oin(w.oins[W].clone())]);
    req.kind = Kind::Correctie;
    let mut correctie = payload::Correctie::example();
    correctie.identiteit.clear();
    correctie.contact.clear();
    correctie.wonen.clear();
    correctie.inkomen.clear();
    correctie.schulden.clear();
    correctie.ondersteuning.clear();
    correctie.justitie.clear();
    correctie.casus.clear();
    req.payload = serde_json::to_value(correctie).unwrap();
    assert_eq!(
        code(w.agent(G, &req, Some(&f))),
        Some(RejectCode::Malformed)
    );
}
