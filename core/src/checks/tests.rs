#![allow(clippy::unwrap_used)]

use chrono::Duration;
use ketenpost_schemas::envelope::BreachScope;
use ketenpost_schemas::ids::{CaseRef, MessageId};
use ketenpost_schemas::seal::Draft;

use super::*;
use crate::testing::*;

#[test]
fn a_good_message_passes_every_check() {
    let fx = Fx::new();
    let ok = fx
        .check_as(&fx.corp, &fx.seal(&fx.corp, fx.signaal()))
        .unwrap();
    assert!(ok.flags().is_empty());
    assert_eq!(ok.recipients().len(), 2);
    assert_eq!(ok.processing_activity(), "test-uitstroom");
    assert_eq!(ok.expires_at(), fx.now + Duration::days(7));
    assert!(ok.send_deadline().is_some());
}

#[test]
fn check_1_transport_identity_and_directory() {
    let fx = Fx::new();
    // A partner cannot send as another OIN: corp2's connection submits corp's message.
    let bytes = fx.seal(&fx.corp, fx.signaal());
    let r = fx.check_as(&fx.corp2, &bytes).unwrap_err();
    assert_eq!(r.code, RejectCode::TransportIdentity);
    assert_eq!(r.check, 1);
    assert!(r.reason.contains(fx.corp.oin.as_str()));
    // A revoked party.
    let mut fx2 = Fx::new();
    fx2.directory.parties[5].revoked = false;
    let bytes = fx2.seal(&fx2.revoked, fx2.signaal());
    assert_eq!(
        fx.check_as(&fx.revoked, &bytes).err().map(|r| r.code),
        Some(RejectCode::UnknownSender)
    );
    // Garbage.
    assert_eq!(
        fx.check_as(&fx.corp, b"KPM1\0\0").err().map(|r| r.code),
        Some(RejectCode::Malformed)
    );
}

#[test]
fn check_2_signature_and_digests() {
    let fx = Fx::new();
    let bytes = fx.seal(&fx.corp, fx.signaal());
    let hlen = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let mut t = bytes.clone();
    t[8 + hlen + 3] ^= 0x40;
    assert_eq!(
        fx.check_as(&fx.corp, &t).err().map(|r| r.code),
        Some(RejectCode::BadSignature)
    );
    let mut t = bytes.clone();
    let n = t.len();
    t[n - 3] ^= 0x40;
    assert_eq!(
        fx.check_as(&fx.corp, &t).err().map(|r| r.code),
        Some(RejectCode::DigestMismatch)
    );
}

/// A signature check that says what it is told: a broker's verdicts reached beforehand.
#[derive(Debug)]
struct Says(bool);

impl keys::SignatureCheck for Says {
    fn verifies(&self, _: &VerifyingKey, _: &[u8], _: &keys::Signature) -> bool {
        self.0
    }
}

#[test]
fn check_1_alone_then_checks_2_to_7_with_the_callers_verdict() {
    let fx = Fx::new();
    let bytes = fx.seal(&fx.corp, fx.signaal());
    let sub = Submitted {
        transport: &fx.corp.oin,
        bytes: &bytes,
    };
    let c = claim(sub, &fx.env(), fx.now).unwrap();
    // What check 2 is to verify: the framed header under the sender's key.
    let (framed, signature, keys) = c.signed();
    assert!(keys
        .iter()
        .any(|k| k.verify_strict(&framed, &signature).is_ok()));
    // With `verify_strict`, the outcome of check_message.
    let ok = check_claim(c.clone(), fx.env(), &fx.reg, fx.now).unwrap();
    let whole = fx.check_as(&fx.corp, &bytes).unwrap();
    assert_eq!(ok.header(), whole.header());
    assert_eq!(ok.recipients(), whole.recipients());
    // A verdict that refuses is check 2's refusal, and nothing of the header counts as
    // verified.
    let env = Env {
        signatures: &Says(false),
        ..fx.env()
    };
    let r = check_claim(c.clone(), env, &fx.reg, fx.now).unwrap_err();
    assert_eq!(
        (r.rejection.code, r.rejection.check),
        (RejectCode::BadSignature, 2)
    );
    assert!(r.verified.is_none());
    // A verdict that accepts does not excuse the body digests.
    let mut t = bytes.clone();
    let n = t.len();
    t[n - 3] ^= 0x40;
    let tampered = claim(
        Submitted {
            transport: &fx.corp.oin,
            bytes: &t,
        },
        &fx.env(),
        fx.now,
    )
    .unwrap();
    let env = Env {
        signatures: &Says(true),
        ..fx.env()
    };
    let r = check_claim(tampered, env, &fx.reg, fx.now).unwrap_err();
    assert_eq!(r.rejection.code, RejectCode::DigestMismatch);
    // Check 1's refusals come from claim itself.
    let other = Submitted {
        transport: &fx.corp2.oin,
        bytes: &bytes,
    };
    let r = claim(other, &fx.env(), fx.now).unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::TransportIdentity, 1));
}

#[test]
fn check_3_replay() {
    let mut fx = Fx::new();
    let bytes = fx.seal(&fx.corp, fx.signaal());
    let ok = fx.check_as(&fx.corp, &bytes).unwrap();
    fx.reg.seen.insert(ok.header().id);
    let r = fx.check_as(&fx.corp, &bytes).unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::Replay, 3));
}

#[test]
fn check_4_purpose_kind_and_sender_role() {
    let fx = Fx::new();
    // A purpose the broker's policy does not have.
    let mut d = fx.signaal();
    d.purpose = "extra".into();
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::UnknownPurpose));
    // A corporation may not send an aanmelding.
    let d = fx.draft(Kind::Aanmelding, &[(&fx.gem, "gemeente")]);
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::SenderRoleNotAllowed));
}

#[test]
fn check_5_need_to_know() {
    let mut fx = Fx::new();
    // Wrong purpose: the case is 'uitstroom', the message says 'overlast'.
    let mut d = fx.signaal();
    d.purpose = "overlast".into();
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::WrongPurpose));
    // A recipient outside the case team.
    let d = fx.draft(Kind::Aanmelding, &[(&fx.corp2, "woningcorporatie")]);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::NotInCaseTeam));
    // A role that may not receive this kind (a corporation receiving a signaal).
    let d = fx.draft(Kind::Signaal, &[(&fx.zorg, "zorgaanbieder")]);
    let mut d2 = d.clone();
    d2.recipients
        .push((fx.dual.oin.clone(), Role::new("woningcorporatie")));
    // dual is 'gemeente' in the case but sealed as 'woningcorporatie': view mismatch.
    assert_eq!(fx.code(&fx.corp, d2), Some(RejectCode::ViewMismatch));
    // Unknown case.
    let mut d = fx.signaal();
    d.case_ref = CaseRef::random();
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::UnknownCase));
    // Closed case.
    let case = fx.reg.cases.get_mut(&fx.case).unwrap();
    case.closed_at = Some(fx.now - Duration::hours(1));
    assert_eq!(
        fx.code(&fx.corp, fx.signaal()),
        Some(RejectCode::CaseClosed)
    );
}

#[test]
fn check_5_recipient_role_not_allowed() {
    let mut fx = Fx::new();
    fx.reg
        .cases
        .get_mut(&fx.case)
        .unwrap()
        .members
        .insert(fx.corp2.oin.clone(), Role::new("woningcorporatie"));
    let mut d = fx.signaal();
    d.recipients
        .push((fx.corp2.oin.clone(), Role::new("woningcorporatie")));
    assert_eq!(
        fx.code(&fx.corp, d),
        Some(RejectCode::RecipientRoleNotAllowed)
    );
}

#[test]
fn check_6_legal_basis() {
    let mut fx = Fx::new();
    // Unknown consent.
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::Consent {
        consent_id: uuid::Uuid::now_v7(),
    };
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::NoConsent));
    // No consent at all.
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::Covenant;
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::NoConsent));
    // A ground the policy does not allow for signaal.
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::NonConsent {
        ground: Ground::new("legal_duty").unwrap(),
        justification: "dossier-17".into(),
    };
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::GroundNotAllowed));
    // A ground the policy allows for aanmelding: accepted and flagged.
    let mut d = fx.draft(Kind::Aanmelding, &[(&fx.gem, "gemeente")]);
    d.legal_basis = LegalBasis::NonConsent {
        ground: Ground::new("acute_danger").unwrap(),
        justification: "dossier-17".into(),
    };
    let ok = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap();
    assert_eq!(ok.ground(), Some(&Ground::new("acute_danger").unwrap()));
    assert!(ok.flags().contains(&AcceptFlag::NonConsentGround));
    // A consent that does not cover the recipient's role.
    fx.reg
        .consents
        .get_mut(&fx.consent)
        .unwrap()
        .record
        .roles
        .retain(|r| r.as_str() != "gemeente");
    assert_eq!(
        fx.code(&fx.corp, fx.signaal()),
        Some(RejectCode::ConsentScope)
    );
    // Expired.
    let mut fx = Fx::new();
    fx.reg
        .consents
        .get_mut(&fx.consent)
        .unwrap()
        .record
        .valid_until = Some(fx.now - Duration::hours(1));
    assert_eq!(
        fx.code(&fx.corp, fx.signaal()),
        Some(RejectCode::ConsentNotValid)
    );
    // Withdrawn.
    let mut fx = Fx::new();
    fx.reg.consents.get_mut(&fx.consent).unwrap().withdrawn_at =
        Some(fx.now - Duration::seconds(1));
    let r = fx
        .check_as(&fx.corp, &fx.seal(&fx.corp, fx.signaal()))
        .unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::ConsentWithdrawn, 6));
    // A consent-free kind sent "under consent".
    let fx = Fx::new();
    let mut d = fx.draft(Kind::DatalekMelding, &[(&fx.gem, "gemeente")]);
    d.event_time = Some(fx.now - Duration::hours(1));
    d.breach_scope = Some(BreachScope {
        case_refs: vec![fx.case.clone()],
        all_cases_of_sender: false,
        from: fx.now - Duration::days(3),
        until: fx.now,
    });
    assert_eq!(
        fx.code(&fx.corp, d.clone()),
        Some(RejectCode::LegalBasisMismatch)
    );
    d.legal_basis = LegalBasis::Covenant;
    assert!(fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).is_ok());
}

#[test]
fn check_7_late_is_accepted_and_flagged() {
    let fx = Fx::new();
    for (hours_ago, late) in [(47, false), (48, false), (49, true)] {
        let mut d = fx.signaal();
        d.event_time = Some(fx.now - Duration::hours(hours_ago));
        let ok = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap();
        assert_eq!(
            ok.flags().contains(&AcceptFlag::Late),
            late,
            "{hours_ago} h"
        );
    }
    let mut d = fx.signaal();
    d.event_time = None;
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::Malformed));
}

fn signed<R: ketenpost_schemas::control::Record>(r: &R, p: &P) -> SignedRecord {
    SignedRecord::sign(r, p.oin.clone(), &p.key).unwrap()
}

fn change(fx: &Fx, case: &CaseRef, by: &P, op: CaseOp) -> CaseChange {
    CaseChange {
        case_ref: case.clone(),
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        change: op,
        by: by.oin.clone(),
        at: fx.now,
    }
}

fn control(fx: &Fx, transport: &P, rec: &SignedRecord) -> Result<ControlEffect, Rejection> {
    check_control(
        &transport.oin,
        rec,
        fx.env(),
        &fx.reg,
        |_, _| Ok(None),
        fx.now,
    )
}

#[test]
fn case_lifecycle_is_for_case_managers() {
    let fx = Fx::new();
    let new = CaseRef::random();
    let open = change(
        &fx,
        &new,
        &fx.gem,
        CaseOp::Open {
            role: Role::new("gemeente"),
        },
    );
    match control(&fx, &fx.gem, &signed(&open, &fx.gem)).unwrap() {
        ControlEffect::CaseOpened(c) => {
            assert_eq!(c.regievoerder, fx.gem.oin);
            assert_eq!(c.members.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // A corporation may not open a case.
    let open = change(
        &fx,
        &new,
        &fx.corp,
        CaseOp::Open {
            role: Role::new("woningcorporatie"),
        },
    );
    assert_eq!(
        control(&fx, &fx.corp, &signed(&open, &fx.corp))
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
    // Signed by one, sent over another's connection.
    let add = change(
        &fx,
        &fx.case,
        &fx.gem,
        CaseOp::AddMember {
            oin: fx.corp2.oin.clone(),
            role: Role::new("woningcorporatie"),
        },
    );
    assert_eq!(
        control(&fx, &fx.corp, &signed(&add, &fx.gem))
            .unwrap_err()
            .code,
        RejectCode::TransportIdentity
    );
    match control(&fx, &fx.gem, &signed(&add, &fx.gem)).unwrap() {
        ControlEffect::CaseChanged { case, .. } => {
            assert!(case.members.contains_key(&fx.corp2.oin))
        }
        other => panic!("{other:?}"),
    }
    // A member that is not a manager may not remove others.
    let rm = change(
        &fx,
        &fx.case,
        &fx.zorg,
        CaseOp::RemoveMember {
            oin: fx.corp.oin.clone(),
        },
    );
    assert_eq!(
        control(&fx, &fx.zorg, &signed(&rm, &fx.zorg))
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
    let rm = change(
        &fx,
        &fx.case,
        &fx.gem,
        CaseOp::RemoveMember {
            oin: fx.corp.oin.clone(),
        },
    );
    match control(&fx, &fx.gem, &signed(&rm, &fx.gem)).unwrap() {
        ControlEffect::CaseChanged { case, .. } => {
            assert!(!case.members.contains_key(&fx.corp.oin));
            assert!(case.former_members.contains(&fx.corp.oin));
        }
        other => panic!("{other:?}"),
    }
    // Closing.
    let close = change(&fx, &fx.case, &fx.gem, CaseOp::Close);
    match control(&fx, &fx.gem, &signed(&close, &fx.gem)).unwrap() {
        ControlEffect::CaseChanged { case, .. } => assert_eq!(case.closed_at, Some(fx.now)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn consent_is_registered_by_recorders_and_withdrawn() {
    let fx = Fx::new();
    let grant = Toestemming {
        consent_id: uuid::Uuid::now_v7(),
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        case_ref: fx.case.clone(),
        parties: vec![],
        roles: vec![Role::new("gemeente")],
        valid_from: fx.now,
        valid_until: None,
        document_sha256: "cd".repeat(32),
        obtained_by: fx.zorg.oin.clone(),
        obtained_at: fx.now,
    };
    assert!(matches!(
        control(&fx, &fx.zorg, &signed(&grant, &fx.zorg)),
        Ok(ControlEffect::ConsentGranted(_))
    ));
    // The municipality is no consent recorder under 'uitstroom'.
    let mut by_gem = grant.clone();
    by_gem.obtained_by = fx.gem.oin.clone();
    assert_eq!(
        control(&fx, &fx.gem, &signed(&by_gem, &fx.gem))
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
    // Purpose binding: a consent for another purpose than its case.
    let mut other = grant.clone();
    other.purpose = "overlast".into();
    assert_eq!(
        control(&fx, &fx.zorg, &signed(&other, &fx.zorg))
            .unwrap_err()
            .code,
        RejectCode::WrongPurpose
    );
    // Dates: at most the purpose's consent_backdating (30 days) before the case opened
    // (10 days ago), and never obtained in the future.
    let mut early = grant.clone();
    early.consent_id = uuid::Uuid::now_v7();
    early.valid_from = fx.now - Duration::days(39);
    early.obtained_at = fx.now - Duration::days(39);
    assert!(matches!(
        control(&fx, &fx.zorg, &signed(&early, &fx.zorg)),
        Ok(ControlEffect::ConsentGranted(_))
    ));
    for (valid_from, obtained_at) in [
        (fx.now - Duration::days(41), fx.now),
        (fx.now, fx.now - Duration::days(365)),
        (fx.now, fx.now + Duration::days(1)),
    ] {
        let mut bad = grant.clone();
        bad.consent_id = uuid::Uuid::now_v7();
        bad.valid_from = valid_from;
        bad.obtained_at = obtained_at;
        let r = control(&fx, &fx.zorg, &signed(&bad, &fx.zorg)).unwrap_err();
        assert_eq!(r.code, RejectCode::Malformed, "{r}");
    }
    // Withdrawal of the registered consent takes effect now.
    let w = ToestemmingIntrekking {
        consent_id: fx.consent,
        case_ref: fx.case.clone(),
        withdrawn_at: fx.now + Duration::days(3),
        recorded_by: fx.zorg.oin.clone(),
    };
    match control(&fx, &fx.zorg, &signed(&w, &fx.zorg)).unwrap() {
        ControlEffect::ConsentWithdrawn(c) => assert_eq!(c.withdrawn_at, Some(fx.now)),
        other => panic!("{other:?}"),
    }
    // A tampered record fails its signature.
    let mut rec = signed(&w, &fx.zorg);
    rec.signature = signed(&grant, &fx.zorg).signature;
    assert_eq!(
        control(&fx, &fx.zorg, &rec).unwrap_err().code,
        RejectCode::BadSignature
    );
}

/// A receipt of a new message by `recipient`.
fn receipt_by(fx: &Fx, recipient: &P) -> DeliveryReceipt {
    DeliveryReceipt {
        message_id: MessageId::new(),
        recipient: recipient.oin.clone(),
        body_sha256: "ef".repeat(32),
        received_at: fx.now,
    }
}

#[test]
fn receipts_come_from_their_recipient() {
    let fx = Fx::new();
    let r = receipt_by(&fx, &fx.gem);
    assert!(check_receipt(&fx.gem.oin, &signed(&r, &fx.gem), fx.env(), Utc::now()).is_ok());
    assert_eq!(
        check_receipt(&fx.corp.oin, &signed(&r, &fx.corp), fx.env(), Utc::now())
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
}

/// A receipt must be a `delivery_receipt` signed as one: a record of another kind sent
/// as a receipt is malformed, and a receipt's bytes signed as another kind and relabelled
/// do not verify.
#[test]
fn a_receipt_of_another_kind_or_relabelled_is_refused() {
    let fx = Fx::new();
    let r = receipt_by(&fx, &fx.gem);
    let mut other_kind = signed(&r, &fx.gem);
    other_kind.kind = Kind::Toestemming;
    assert_eq!(
        check_receipt(&fx.gem.oin, &other_kind, fx.env(), fx.now)
            .unwrap_err()
            .code,
        RejectCode::Malformed
    );
    // The receipt's bytes (as `SignedRecord::sign` serialises them), signed under the
    // toestemming context, labelled a receipt.
    let bytes = serde_json::to_vec(&r).unwrap();
    let sig = keys::sign(
        &fx.gem.key,
        keys::Context::Control(Kind::Toestemming),
        &bytes,
    );
    let relabelled = SignedRecord {
        signature: keys::signature_to_text(&sig),
        ..signed(&r, &fx.gem)
    };
    assert_eq!(
        check_receipt(&fx.gem.oin, &relabelled, fx.env(), fx.now)
            .unwrap_err()
            .code,
        RejectCode::BadSignature
    );
}

#[test]
fn records_verify_with_the_keys_parsed_once_when_the_caller_has_them() {
    let fx = Fx::new();
    let r = receipt_by(&fx, &fx.gem);
    // The parsed keys hold another key for the recipient than the directory's text: which
    // one a record verifies with shows which the check used.
    let other = P {
        oin: fx.gem.oin.clone(),
        key: keys::generate_signing_key(),
    };
    let mut rotated = fx.directory.clone();
    for p in rotated.parties.iter_mut().filter(|p| p.oin == fx.gem.oin) {
        p.signing_key = keys::verifying_key_to_text(&other.key.verifying_key());
    }
    let parsed = sender_keys(&rotated);
    let env = Env {
        keys: Some(&parsed),
        ..fx.env()
    };
    assert!(check_receipt(&fx.gem.oin, &signed(&r, &other), env, fx.now).is_ok());
    assert_eq!(
        check_receipt(&fx.gem.oin, &signed(&r, &fx.gem), env, fx.now)
            .unwrap_err()
            .code,
        RejectCode::BadSignature
    );
    // A party whose key does not parse is missing from the parsed keys: its text is
    // parsed after all, and its records are refused as before.
    let mut broken = fx.directory.clone();
    for p in broken.parties.iter_mut().filter(|p| p.oin == fx.gem.oin) {
        p.signing_key = "not a key".into();
    }
    let parsed = sender_keys(&broken);
    assert!(!parsed.contains_key(&fx.gem.oin));
    let env = Env {
        directory: &broken,
        keys: Some(&parsed),
        ..fx.env()
    };
    assert_eq!(
        check_receipt(&fx.gem.oin, &signed(&r, &fx.gem), env, fx.now)
            .unwrap_err()
            .code,
        RejectCode::Malformed
    );
    // Without parsed keys, the directory's text decides.
    assert!(check_receipt(&fx.gem.oin, &signed(&r, &fx.gem), fx.env(), fx.now).is_ok());
    assert_eq!(
        check_receipt(&fx.gem.oin, &signed(&r, &other), fx.env(), fx.now)
            .unwrap_err()
            .code,
        RejectCode::BadSignature
    );
}

// ---- breach routing (check 5 for a datalek_melding) ------------------------------------

use crate::breach::Flow;

/// A flow accepted at `at`, its message id made then (a UUIDv7 of that time).
fn flow(at: DateTime<Utc>, case: &CaseRef, from: &P, to: &[&P]) -> Flow {
    let made = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap(),
        at.timestamp_subsec_nanos(),
    );
    Flow {
        message_id: MessageId(uuid::Uuid::new_v7(made)).to_string(),
        case_ref: case.clone(),
        sender: from.oin.clone(),
        recipients: to.iter().map(|p| p.oin.clone()).collect(),
        at,
    }
}

/// A second case, with corp2 and zorg, and a flow history over both cases: in the window
/// corp -> zorg and zorg -> gem about the main case and zorg -> corp2 about the second;
/// before it corp -> dual about the main case.
fn breach_fx() -> (Fx, CaseRef) {
    let mut fx = Fx::new();
    let b = CaseRef::random();
    let mut case_b = fx.reg.cases[&fx.case].clone();
    case_b.case_ref = b.clone();
    case_b.members = [
        (fx.corp2.oin.clone(), Role::new("woningcorporatie")),
        (fx.zorg.oin.clone(), Role::new("zorgaanbieder")),
    ]
    .into();
    fx.reg.cases.insert(b.clone(), case_b);
    let (n, a) = (fx.now, fx.case.clone());
    fx.reg.flows = Some(vec![
        flow(n - Duration::days(9), &a, &fx.corp, &[&fx.dual]),
        flow(n - Duration::days(2), &a, &fx.corp, &[&fx.zorg]),
        flow(n - Duration::days(1), &a, &fx.zorg, &[&fx.gem]),
        flow(n - Duration::days(1), &b, &fx.zorg, &[&fx.corp2]),
    ]);
    (fx, b)
}

fn breach_draft(fx: &Fx, to: &[(&P, &str)], cases: Vec<CaseRef>, all: bool) -> Draft {
    let mut d = fx.draft(Kind::DatalekMelding, to);
    d.legal_basis = LegalBasis::Covenant;
    d.event_time = Some(fx.now - Duration::hours(1));
    d.breach_scope = Some(BreachScope {
        case_refs: cases,
        all_cases_of_sender: all,
        from: fx.now - Duration::days(3),
        until: fx.now,
    });
    d
}

/// A correctie of `corrects` from a sender to `to`.
fn correctie_draft(fx: &Fx, to: &[(&P, &str)], corrects: Vec<MessageId>) -> Draft {
    let mut d = fx.draft(Kind::Correctie, to);
    d.legal_basis = LegalBasis::Covenant;
    d.corrects = corrects;
    d
}

#[test]
fn a_correctie_goes_to_exactly_the_parties_of_the_messages_it_corrects() {
    let (fx, _) = breach_fx();
    let flows = fx.reg.flows.clone().unwrap();
    // zorg -> gem about the main case; corp is in the team and sent zorg another message.
    let to_gem: MessageId = flows[2].message_id.parse().unwrap();
    let d = correctie_draft(&fx, &[(&fx.gem, "gemeente")], vec![to_gem]);
    let ok = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap();
    assert_eq!(
        ok.recipients(),
        [(fx.gem.oin.clone(), Role::new("gemeente"))]
    );
    assert_eq!(ok.breach().unwrap().cases, [fx.case.clone()].into());

    // Sealed to the case team: refused, with exactly the recipients of the message.
    let d = correctie_draft(
        &fx,
        &[(&fx.corp, "woningcorporatie"), (&fx.gem, "gemeente")],
        vec![to_gem],
    );
    let r = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap_err();
    assert_eq!(r.code, RejectCode::BreachRecipients);
    assert_eq!(
        r.expected_recipients(),
        Some(vec![(fx.gem.oin.clone(), Role::new("gemeente"))])
    );

    // Two messages: the one corp sent zorg as well; zorg corrects, so corp and gem.
    let from_corp: MessageId = flows[1].message_id.parse().unwrap();
    let d = correctie_draft(
        &fx,
        &[(&fx.corp, "woningcorporatie"), (&fx.gem, "gemeente")],
        vec![to_gem, from_corp],
    );
    assert!(fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).is_ok());

    // The recipient may correct it too: back to its sender.
    let d = correctie_draft(&fx, &[(&fx.zorg, "zorgaanbieder")], vec![to_gem]);
    assert!(fx.check_as(&fx.gem, &fx.seal(&fx.gem, d)).is_ok());

    // A party that had no part in the message cannot name it, nor a message the broker
    // never accepted; both are refused alike.
    let d = correctie_draft(&fx, &[(&fx.zorg, "zorgaanbieder")], vec![to_gem]);
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::NotPermitted));
    let d = correctie_draft(&fx, &[(&fx.gem, "gemeente")], vec![MessageId::new()]);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::NotPermitted));
}

#[test]
fn a_breach_goes_to_exactly_the_parties_that_exchanged_messages_in_the_window() {
    let (fx, b) = breach_fx();
    // The main case alone: corp and gem (zorg is the sender; dual was before the window).
    let d = breach_draft(
        &fx,
        &[(&fx.corp, "woningcorporatie"), (&fx.gem, "gemeente")],
        vec![fx.case.clone()],
        false,
    );
    let ok = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap();
    let routing = ok.breach().cloned().unwrap();
    assert_eq!(routing.cases, [fx.case.clone()].into());
    assert_eq!(ok.recipients().len(), 2);

    // The whole case team is too many: refused, with the set to seal to.
    let d = breach_draft(
        &fx,
        &[
            (&fx.corp, "woningcorporatie"),
            (&fx.gem, "gemeente"),
            (&fx.dual, "gemeente"),
        ],
        vec![fx.case.clone()],
        false,
    );
    let r = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::BreachRecipients, 5));
    let mut want = vec![
        (fx.gem.oin.clone(), Role::new("gemeente")),
        (fx.corp.oin.clone(), Role::new("woningcorporatie")),
    ];
    want.sort();
    assert_eq!(r.expected_recipients(), Some(want));
    // Too few is refused as well.
    let d = breach_draft(&fx, &[(&fx.gem, "gemeente")], vec![fx.case.clone()], false);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::BreachRecipients));

    // Both cases: corp2 too, in its role in the second case, although it is not in the
    // team of the notice's own case.
    let d = breach_draft(
        &fx,
        &[
            (&fx.corp, "woningcorporatie"),
            (&fx.gem, "gemeente"),
            (&fx.corp2, "woningcorporatie"),
        ],
        vec![fx.case.clone(), b.clone()],
        false,
    );
    let ok = fx
        .check_as(&fx.zorg, &fx.seal(&fx.zorg, d.clone()))
        .unwrap();
    assert_eq!(
        ok.breach().cloned().unwrap().cases,
        [fx.case.clone(), b.clone()].into()
    );
    // "Every case of this sender in the window" finds the same.
    let d = breach_draft(
        &fx,
        &[
            (&fx.corp, "woningcorporatie"),
            (&fx.gem, "gemeente"),
            (&fx.corp2, "woningcorporatie"),
        ],
        vec![],
        true,
    );
    assert!(fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).is_ok());
}

#[test]
fn a_breach_scope_must_be_sound_and_the_senders_own() {
    let (mut fx, b) = breach_fx();
    let to = [(&fx.corp, "woningcorporatie"), (&fx.gem, "gemeente")];
    // The notice's case must be among the affected ones.
    let d = breach_draft(&fx, &to, vec![b.clone()], false);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::Malformed));
    // No case and not "all cases".
    let d = breach_draft(&fx, &to, vec![], false);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::Malformed));
    // A window that ends before it starts.
    let mut d = breach_draft(&fx, &to, vec![fx.case.clone()], false);
    if let Some(s) = d.breach_scope.as_mut() {
        s.until = s.from - Duration::seconds(1);
    }
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::Malformed));
    // The gemeente was never in case B: it cannot ask who exchanged messages about it.
    let d = breach_draft(
        &fx,
        &[(&fx.corp, "woningcorporatie")],
        vec![fx.case.clone(), b.clone()],
        false,
    );
    assert_eq!(fx.code(&fx.gem, d), Some(RejectCode::NotInCaseTeam));
    // An unknown affected case.
    let d = breach_draft(&fx, &to, vec![fx.case.clone(), CaseRef::random()], false);
    assert_eq!(fx.code(&fx.zorg, d), Some(RejectCode::UnknownCase));
    // Nobody to tell: refused with an empty set.
    fx.reg.flows = Some(vec![]);
    let d = breach_draft(&fx, &to, vec![fx.case.clone()], false);
    let r = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap_err();
    assert_eq!(r.expected_recipients(), Some(vec![]));
}

#[test]
fn a_revoked_party_gets_no_breach_notice() {
    let (mut fx, _) = breach_fx();
    let (n, a) = (fx.now, fx.case.clone());
    let extra = flow(n - Duration::hours(5), &a, &fx.revoked, &[&fx.zorg]);
    if let Some(f) = fx.reg.flows.as_mut() {
        f.push(extra);
    }
    let d = breach_draft(
        &fx,
        &[(&fx.corp, "woningcorporatie"), (&fx.gem, "gemeente")],
        vec![fx.case.clone()],
        false,
    );
    assert!(fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).is_ok());
}

#[test]
fn ad_hoc_deletion_orders_come_from_the_regievoerder_for_holders_only() {
    use ketenpost_schemas::control::DeletionReason;
    let fx = Fx::new();
    let order = |by: &P, reason, parties: Vec<Oin>| {
        change(&fx, &fx.case, by, CaseOp::OrderDeletion { reason, parties })
    };
    let refused = |by: &P, c: &CaseChange| control(&fx, by, &signed(c, by)).unwrap_err().code;
    // Only the case's manager orders.
    let by_member = order(&fx.zorg, DeletionReason::Erasure, vec![]);
    assert_eq!(refused(&fx.zorg, &by_member), RejectCode::NotPermitted);
    // Retention orders are the broker's; a handover names others than the regievoerder;
    // only parties that hold the case's data can be ordered.
    for bad in [
        order(&fx.gem, DeletionReason::RetentionEnded, vec![]),
        order(&fx.gem, DeletionReason::Handover, vec![]),
        order(&fx.gem, DeletionReason::Handover, vec![fx.gem.oin.clone()]),
        order(
            &fx.gem,
            DeletionReason::Objection,
            vec![fx.corp2.oin.clone()],
        ),
    ] {
        assert_eq!(refused(&fx.gem, &bad), RejectCode::Conflict, "{bad:?}");
    }
    // A handover: the party leaves the team and is marked as having deleted.
    let handover = order(&fx.gem, DeletionReason::Handover, vec![fx.corp.oin.clone()]);
    match control(&fx, &fx.gem, &signed(&handover, &fx.gem)).unwrap() {
        ControlEffect::DeletionRequested { case, ordered, .. } => {
            assert_eq!(ordered, [fx.corp.oin.clone()].into());
            assert!(!case.members.contains_key(&fx.corp.oin));
            assert!(case.deleted_by.contains(&fx.corp.oin));
            assert!(case.is_open());
        }
        other => panic!("{other:?}"),
    }
    // An erasure orders every holder and ends the case.
    let erasure = order(&fx.gem, DeletionReason::Erasure, vec![]);
    match control(&fx, &fx.gem, &signed(&erasure, &fx.gem)).unwrap() {
        ControlEffect::DeletionRequested { case, ordered, .. } => {
            assert_eq!(ordered, case.all_parties());
            assert_eq!(case.deletion_ordered_at, Some(fx.now));
            assert!(!case.is_open());
        }
        other => panic!("{other:?}"),
    }
}

/// The strict test policy with an active phase and a waakvlam that allows only signals.
fn phased(fx: &mut Fx) {
    use ketenpost_schemas::duration::PolicyDuration;
    use ketenpost_schemas::policy::Phase;
    let purpose = fx.strict.purposes.get_mut("uitstroom").unwrap();
    let all = purpose.kinds.keys().copied().collect();
    purpose.phases = vec![
        Phase {
            name: "actief".into(),
            kinds: all,
            review_within: Some(PolicyDuration::Weeks(2)),
            close_after: None,
        },
        Phase {
            name: "waakvlam".into(),
            kinds: [Kind::Signaal].into(),
            review_within: None,
            close_after: Some(PolicyDuration::Weeks(4)),
        },
    ];
}

#[test]
fn a_case_manager_moves_the_case_and_its_phase_bounds_the_kinds() {
    let mut fx = Fx::new();
    phased(&mut fx);
    // The first phase allows every kind.
    let d = fx.draft(Kind::Aanmelding, &[(&fx.gem, "gemeente")]);
    assert_eq!(fx.code(&fx.zorg, d), None);

    // Only a case manager moves the case, only to a declared phase, not to where it is.
    let to = |phase: &str| CaseOp::EnterPhase {
        phase: phase.into(),
    };
    let by_corp = change(&fx, &fx.case, &fx.corp, to("waakvlam"));
    assert_eq!(
        control(&fx, &fx.corp, &signed(&by_corp, &fx.corp))
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
    let unknown = change(&fx, &fx.case, &fx.gem, to("nazorg"));
    assert_eq!(
        control(&fx, &fx.gem, &signed(&unknown, &fx.gem))
            .unwrap_err()
            .code,
        RejectCode::Conflict
    );
    let same = change(&fx, &fx.case, &fx.gem, to("actief"));
    assert_eq!(
        control(&fx, &fx.gem, &signed(&same, &fx.gem))
            .unwrap_err()
            .code,
        RejectCode::Conflict
    );
    // A party cannot forge the broker's review notice.
    let review = change(
        &fx,
        &fx.case,
        &fx.gem,
        CaseOp::ReviewDue {
            phase: "actief".into(),
            due: fx.now,
        },
    );
    assert_eq!(
        control(&fx, &fx.gem, &signed(&review, &fx.gem))
            .unwrap_err()
            .code,
        RejectCode::NotPermitted
    );
    let mut noticed = fx.reg.cases[&fx.case].clone();
    noticed.review_noticed_at = Some(fx.now - Duration::hours(1));
    fx.reg.cases.insert(fx.case.clone(), noticed);
    let moved = change(&fx, &fx.case, &fx.gem, to("waakvlam"));
    let case = match control(&fx, &fx.gem, &signed(&moved, &fx.gem)).unwrap() {
        ControlEffect::CaseChanged { case, .. } => case,
        other => panic!("{other:?}"),
    };
    assert_eq!(case.phase.as_deref(), Some("waakvlam"));
    assert_eq!(case.phase_since, Some(fx.now));
    assert_eq!(
        case.review_noticed_at, None,
        "a new phase has its own review"
    );
    fx.reg.cases.insert(fx.case.clone(), case);

    // In the waakvlam: a signal passes, an aanmelding is refused at check 5, a breach
    // notice still travels (checked by its own routing, not by the phase).
    assert_eq!(fx.code(&fx.corp, fx.signaal()), None);
    let d = fx.draft(Kind::Aanmelding, &[(&fx.gem, "gemeente")]);
    let r = fx.check_as(&fx.zorg, &fx.seal(&fx.zorg, d)).unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::KindNotInPhase, 5));
    assert!(r.reason.contains("waakvlam"), "{}", r.reason);
    assert!(ketenpost_schemas::policy::phases::allows(
        &fx.strict.purposes["uitstroom"].phases,
        Some("waakvlam"),
        Kind::DatalekMelding
    ));
}

/// A public-task kind whose every message must name a flagged ground: no consent is
/// looked at, the ground and its justification code are checked against the policy, and
/// an unflagged ground goes through without an FG alert.
#[test]
fn a_public_task_kind_goes_on_its_grounds_and_their_justification_codes() {
    use ketenpost_schemas::policy::{Art6Basis, GroundDef};
    let mut fx = Fx::new();
    let legal_duty = Ground::new(Ground::LEGAL_DUTY).unwrap();
    let meldrecht = Ground::new(Ground::MELDRECHT).unwrap();
    {
        let rule = fx.signaal_rule();
        rule.consent = ConsentRule::NotRequired;
        rule.basis = Some(Art6Basis::PublicTask);
        rule.grounds = [legal_duty.clone(), meldrecht.clone()].into();
        rule.ground_required = true;
        let p = &mut fx.strict;
        p.grounds
            .justifications
            .insert("wettelijke-taak".into(), "a statutory task".into());
        p.grounds
            .justifications
            .insert("meldcode".into(), "the meldcode".into());
        let m: &mut GroundDef = p.grounds.defs.get_mut(&meldrecht).unwrap();
        m.alert_fg = false;
        m.justifications = Some(["meldcode".to_owned()].into());
    }
    let on = |ground: &Ground, code: &str| {
        let mut d = fx.signaal();
        d.legal_basis = LegalBasis::NonConsent {
            ground: ground.clone(),
            justification: code.into(),
        };
        d
    };
    // On the flagged legal duty with a listed code: accepted, flagged, alerting.
    let ok = fx
        .check_as(
            &fx.corp,
            &fx.seal(&fx.corp, on(&legal_duty, "wettelijke-taak")),
        )
        .unwrap();
    assert_eq!(ok.ground(), Some(&legal_duty));
    assert!(ok.ground_alerts_fg());
    assert!(ok.flags().contains(&AcceptFlag::NonConsentGround));
    // On the unflagged meldrecht: accepted, recorded, no alert.
    let ok = fx
        .check_as(&fx.corp, &fx.seal(&fx.corp, on(&meldrecht, "meldcode")))
        .unwrap();
    assert!(!ok.ground_alerts_fg());
    // A code outside the covenant's list, or one the ground does not allow.
    assert_eq!(
        fx.code(&fx.corp, on(&legal_duty, "dossier-17")),
        Some(RejectCode::GroundNotAllowed)
    );
    assert_eq!(
        fx.code(&fx.corp, on(&meldrecht, "wettelijke-taak")),
        Some(RejectCode::GroundNotAllowed)
    );
    // A ground the kind does not name.
    assert_eq!(
        fx.code(
            &fx.corp,
            on(
                &Ground::new(Ground::ACUTE_DANGER).unwrap(),
                "wettelijke-taak"
            )
        ),
        Some(RejectCode::GroundNotAllowed)
    );
    // Without a ground, or "under consent" (even a valid one): refused.
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::Covenant;
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::LegalBasisMismatch));
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::Consent {
        consent_id: fx.consent,
    };
    assert_eq!(fx.code(&fx.corp, d), Some(RejectCode::LegalBasisMismatch));
    // Without ground_required the basis alone carries it.
    fx.signaal_rule().ground_required = false;
    let mut d = fx.signaal();
    d.legal_basis = LegalBasis::Covenant;
    let ok = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap();
    assert_eq!(ok.ground(), None);
    assert!(!ok.flags().contains(&AcceptFlag::NonConsentGround));
}

/// Check 7 for a message's own answer request: the kind must allow one
/// (`answer_request_max`), its due date must lie after acceptance and within the bound, and
/// its roles must be recipients' roles.
#[test]
fn check_7_answer_request() {
    use ketenpost_schemas::envelope::AnswerRequest;
    let mut fx = Fx::new();
    let ask = |by: &[&str], due: DateTime<Utc>| {
        let mut d = fx.signaal();
        d.answer_request = Some(AnswerRequest {
            by: by.iter().map(|r| Role::new(*r)).collect(),
            due,
        });
        d
    };
    // The test policy's signaal sets no answer_request_max: it carries no request.
    let d = ask(&["zorgaanbieder"], fx.now + Duration::days(2));
    let r = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap_err();
    assert_eq!((r.code, r.check), (RejectCode::AnswerRequestNotAllowed, 7));
    assert!(r.reason.contains("answer_request_max"), "{}", r.reason);

    fx.signaal_rule().answer_request_max = Some("10 days".parse().unwrap());
    let now = fx.now;
    let ask = |by: &[&str], due: DateTime<Utc>| {
        let mut d = fx.signaal();
        d.answer_request = Some(AnswerRequest {
            by: by.iter().map(|r| Role::new(*r)).collect(),
            due,
        });
        d
    };
    // Within the bound, exactly at it, and for every recipient: accepted.
    for d in [
        ask(&["zorgaanbieder"], now + Duration::days(2)),
        ask(&["zorgaanbieder"], now + Duration::days(10)),
        ask(&[], now + Duration::days(1)),
    ] {
        assert!(fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).is_ok());
    }
    // One second past the bound: refused, naming the bound.
    let d = ask(
        &["zorgaanbieder"],
        now + Duration::days(10) + Duration::seconds(1),
    );
    let r = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap_err();
    assert_eq!(r.code, RejectCode::AnswerRequestNotAllowed);
    assert!(r.reason.contains("at most 10 days"), "{}", r.reason);
    // Due at or before acceptance: refused.
    for due in [now, now - Duration::hours(1)] {
        let d = ask(&["zorgaanbieder"], due);
        let r = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap_err();
        assert_eq!(r.code, RejectCode::AnswerRequestNotAllowed, "{}", r.reason);
    }
    // A role no recipient has (the corporation is the sender, not a recipient).
    let d = ask(&["woningcorporatie"], now + Duration::days(1));
    let r = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap_err();
    assert_eq!(r.code, RejectCode::AnswerRequestNotAllowed);
    assert!(r.reason.contains("'woningcorporatie'"), "{}", r.reason);
}

/// A term anchored only on optional payload fields binds only a message that carries one:
/// without an event time such a message has no send deadline, where another kind's
/// message is refused.
#[test]
fn check_7_a_term_that_needs_an_anchor_binds_only_anchored_messages() {
    let mut fx = Fx::new();
    let mut d = fx.signaal();
    d.event_time = None;
    assert_eq!(fx.code(&fx.corp, d.clone()), Some(RejectCode::Malformed));
    fx.signaal_rule().term_needs_anchor = true;
    let ok = fx.check_as(&fx.corp, &fx.seal(&fx.corp, d)).unwrap();
    assert_eq!(ok.send_deadline(), None);
    assert!(ok.flags().is_empty());
}
