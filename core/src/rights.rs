//! The data subject's rights as decisions: whether a party may ask for the facts of a
//! person's cases (AVG art. 15), and the one-month term of the answer (004:844-846).
//!
//! Corrections (art. 16) are routed like breach notices ([`crate::breach`]); erasure and
//! objection are ad-hoc deletion orders ([`crate::transitions`]).

use chrono::{DateTime, Months, NaiveDate, Utc};
use ketenpost_schemas::calendar::end_of_local_day;
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::protocol::{RejectCode, Rejection};
use ketenpost_schemas::rights::{AccessQuery, MAX_ACCESS_CASES};

use crate::registry::{Case, Registry};

/// The term of an access answer in calendar months: "uiterlijk binnen één maand na
/// ontvangst van het verzoek" (004:844-846, AVG art. 12(3)).
pub const ACCESS_TERM_MONTHS: u32 = 1;

/// When the answer to a request received on `received_on` is due: the end (in Amsterdam)
/// of the same day one calendar month later, or of the month's last day when it has no
/// such day (30 January: 28 February).
pub fn access_due(received_on: NaiveDate) -> DateTime<Utc> {
    received_on
        .checked_add_months(Months::new(ACCESS_TERM_MONTHS))
        .map_or(DateTime::<Utc>::MAX_UTC, end_of_local_day)
}

/// Check an access query of `asker`: it names at least one and at most
/// [`MAX_ACCESS_CASES`] cases, each one the asker is or was a member of. A case the
/// registry does not know is refused like one the asker was never in, so the refusal
/// says nothing about other parties' cases. Returns the cases.
pub fn check_access(
    q: &AccessQuery,
    asker: &Oin,
    reg: &impl Registry,
) -> Result<Vec<Case>, Rejection> {
    if q.case_refs.is_empty() {
        return Err(Rejection::new(
            RejectCode::Malformed,
            "an access query names at least one case",
        ));
    }
    if q.case_refs.len() > MAX_ACCESS_CASES {
        return Err(Rejection::new(
            RejectCode::Malformed,
            format!("an access query names at most {MAX_ACCESS_CASES} cases"),
        ));
    }
    let mut cases = Vec::with_capacity(q.case_refs.len());
    let mut seen: std::collections::BTreeSet<&CaseRef> = Default::default();
    for c in &q.case_refs {
        if !seen.insert(c) {
            continue;
        }
        let case = reg.case(c).map_err(crate::registry::unknown)?;
        match case {
            Some(case) if was_member(&case, asker) => cases.push(case),
            _ => {
                return Err(Rejection::new(
                    RejectCode::NotInCaseTeam,
                    format!("{asker} is not and was not in the team of case {c}"),
                ))
            }
        }
    }
    Ok(cases)
}

/// Whether `party` is or was in the case's team.
pub fn was_member(case: &Case, party: &Oin) -> bool {
    case.members.contains_key(party) || case.former_members.contains(party)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::MemRegistry;
    use ketenpost_schemas::policy::Role;

    fn oin(n: u64) -> Oin {
        format!("{n:020}").parse().unwrap()
    }

    fn case(members: &[u64], former: &[u64]) -> Case {
        Case {
            case_ref: CaseRef::random(),
            covenant: "test".into(),
            purpose: "uitstroom".into(),
            regievoerder: oin(1),
            members: members
                .iter()
                .map(|n| (oin(*n), Role::new("gemeente")))
                .collect(),
            former_members: former.iter().map(|n| oin(*n)).collect(),
            opened_at: Utc::now(),
            closed_at: None,
            deletion_ordered_at: None,
            deleted_by: Default::default(),
            phase: None,
            phase_since: None,
            review_noticed_at: None,
        }
    }

    fn query(cases: &[&Case]) -> AccessQuery {
        AccessQuery {
            request_id: uuid::Uuid::from_u128(1),
            received_on: NaiveDate::from_ymd_opt(2026, 1, 31).unwrap(),
            case_refs: cases.iter().map(|c| c.case_ref.clone()).collect(),
            answered_at: None,
        }
    }

    #[test]
    fn a_member_or_former_member_may_ask_and_no_one_else() {
        let (a, b) = (case(&[1, 2], &[]), case(&[1], &[3]));
        let mut reg = MemRegistry::default();
        reg.cases.insert(a.case_ref.clone(), a.clone());
        reg.cases.insert(b.case_ref.clone(), b.clone());
        assert_eq!(
            check_access(&query(&[&a, &b]), &oin(1), &reg)
                .unwrap()
                .len(),
            2
        );
        // A former member of b, never in a.
        assert!(check_access(&query(&[&b]), &oin(3), &reg).is_ok());
        let refused = check_access(&query(&[&a, &b]), &oin(3), &reg).unwrap_err();
        assert_eq!(refused.code, RejectCode::NotInCaseTeam);
        // An unknown case is refused the same way.
        let unknown = case(&[3], &[]);
        let r = check_access(&query(&[&unknown]), &oin(3), &reg).unwrap_err();
        assert_eq!(r.code, RejectCode::NotInCaseTeam);
        assert_eq!(
            check_access(&query(&[]), &oin(1), &reg).unwrap_err().code,
            RejectCode::Malformed
        );
    }

    #[test]
    fn the_term_ends_with_the_day_one_calendar_month_after_receipt() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // The end of 28 February in Amsterdam (UTC+1).
        let due = access_due(NaiveDate::from_ymd_opt(2026, 1, 30).unwrap());
        assert_eq!(due, at("2026-02-28T23:00:00Z"));
        // Across the change to summer time: the end of 2 April (UTC+2).
        let due = access_due(NaiveDate::from_ymd_opt(2026, 3, 2).unwrap());
        assert_eq!(due, at("2026-04-02T22:00:00Z"));
    }
}
