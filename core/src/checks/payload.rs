//! The checks over a message's payload that its schema cannot express.
//!
//! The broker never sees a payload (it holds sealed bodies), so only the sending agent runs
//! these, before it seals; they are core's all the same, one rule in one place.

use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{self, Correctie};
use ketenpost_schemas::policy::KindRule;
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use serde::Deserialize as _;
use serde_json::Value;

/// The payload of a `kind` message under `purpose` (whose rule is `rule`) carries what the
/// covenant requires beyond the kind's schema:
///
/// - every field of the rule's `required_fields` (e.g. a breach notice's items a-e), not
///   empty;
/// - a `correctie` corrects at least one field (its schema cannot say "at least one of
///   these lists").
///
/// The payload is valid against the kind's schema already. A refusal is `malformed`.
pub fn check_payload(
    (kind, purpose, rule): (Kind, &str, &KindRule),
    payload: &Value,
) -> Result<(), Rejection> {
    let missing = payload::missing_fields(&rule.required_fields, payload);
    if !missing.is_empty() {
        return Err(Rejection::new(
            RejectCode::Malformed,
            format!(
                "the covenant requires {} in a {kind} under purpose '{purpose}'",
                missing.join(", ")
            ),
        ));
    }
    if kind == Kind::Correctie {
        let correctie = Correctie::deserialize(payload).map_err(|_| {
            Rejection::new(
                RejectCode::Malformed,
                "the correctie payload does not parse",
            )
        })?;
        if correctie.is_empty() {
            return Err(Rejection::new(
                RejectCode::Malformed,
                "a correctie corrects at least one field (identiteit, contact, wonen, inkomen, \
                 schulden, ondersteuning, justitie or casus)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ketenpost_schemas::policy::Policy;

    const WALCHEREN: &str = include_str!("../../../schemas/policies/walcheren.toml");

    fn rule(policy: &Policy, kind: Kind) -> (String, KindRule) {
        let (purpose, p) = policy
            .purposes
            .iter()
            .find(|(_, p)| p.kinds.contains_key(&kind))
            .unwrap();
        (purpose.clone(), p.kinds[&kind].clone())
    }

    #[test]
    fn a_correctie_that_corrects_nothing_is_malformed() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (purpose, rule) = rule(&policy, Kind::Correctie);
        let good = serde_json::to_value(Correctie::example()).unwrap();
        assert_eq!(
            check_payload((Kind::Correctie, &purpose, &rule), &good),
            Ok(())
        );
        let mut empty: Correctie = serde_json::from_value(good).unwrap();
        empty.identiteit.clear();
        empty.contact.clear();
        empty.wonen.clear();
        empty.inkomen.clear();
        empty.schulden.clear();
        empty.ondersteuning.clear();
        empty.justitie.clear();
        empty.casus.clear();
        let refused = check_payload(
            (Kind::Correctie, &purpose, &rule),
            &serde_json::to_value(empty).unwrap(),
        )
        .unwrap_err();
        assert_eq!(refused.code, RejectCode::Malformed);
    }

    #[test]
    fn a_required_field_left_out_is_malformed() {
        let policy = Policy::from_toml(WALCHEREN).unwrap();
        let (purpose, mut rule) = rule(&policy, Kind::Signaal);
        rule.required_fields.insert("toelichting_extra".into());
        let refused = check_payload(
            (Kind::Signaal, &purpose, &rule),
            &serde_json::json!({ "toelichting_extra": "  " }),
        )
        .unwrap_err();
        assert_eq!(refused.code, RejectCode::Malformed);
        assert!(refused.reason.contains("toelichting_extra"), "{refused:?}");
        assert_eq!(
            check_payload(
                (Kind::Signaal, &purpose, &rule),
                &serde_json::json!({ "toelichting_extra": "x" }),
            ),
            Ok(())
        );
    }
}
