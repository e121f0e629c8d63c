//! The sweep: expiry, deadline notices, case phase terms (review notices, automatic close)
//! and deletion orders, each a decision of the core applied in its own transaction.

use chrono::{DateTime, Utc};
use ketenpost_core::effects::Effects;
use ketenpost_core::transitions;
use tracing::{error, info, warn};

use super::state::Shared;
use crate::store::{Applied, TxResult, TxView};

/// One sweep at `now`: expire undelivered bodies, send the deadline notices that are due,
/// apply the terms of open cases' phases, and order deletions for cases whose retention
/// ended. Each is a decision of the core
/// applied in its own transaction; a decision that fails is logged and skipped, the others
/// go on. One flush makes everything applied durable before any body it released is
/// destroyed and any party is woken. Blocking.
pub(super) fn sweep_once(shared: &Shared, now: DateTime<Utc>) {
    let store = &shared.store;
    let mut done: Vec<(&'static str, Applied)> = Vec::new();
    let mut apply = |op: &'static str, decide: &dyn Fn(&TxView<'_>) -> TxResult<Effects>| {
        let applied = store.transition(op, &shared.audit, &shared.notice_signer, now, |v| {
            decide(v).map(Ok::<_, std::convert::Infallible>)
        });
        match applied {
            Ok(Ok(a)) => {
                let changed = a.changed;
                done.push((op, a));
                changed
            }
            Ok(Err(never)) => match never {},
            Err(e) => {
                error!(op, cause = %e, "a sweep decision failed; the next sweep takes it again");
                false
            }
        }
    };
    match store.due(now) {
        Ok(due) => {
            for id in due {
                if apply("expire", &|v| {
                    Ok(transitions::expire(v.meta(&id)?, v.clock(&id)?, now))
                }) {
                    info!(message = %id, "undelivered message expired");
                }
            }
        }
        Err(e) => error!(cause = %e, "cannot read the expiry index"),
    }
    let docs = shared.docs();
    let calendar = &docs.policy.calendar;
    match store.overdue_clocks(calendar, now) {
        Ok(overdue) => {
            for id in overdue {
                if apply("deadline", &|v| {
                    let Some(clock) = v.clock(&id)? else {
                        return Ok(Effects::default());
                    };
                    let regievoerder = v.case(&clock.case_ref)?.map(|c| c.regievoerder);
                    Ok(transitions::deadline_notices(
                        clock,
                        regievoerder.as_ref(),
                        &docs.policy,
                        now,
                    ))
                }) {
                    info!(message = %id, "answer overdue: deadline notices sent");
                }
            }
        }
        Err(e) => error!(cause = %e, "cannot read the answer clocks"),
    }
    match store.cases() {
        Ok(cases) => {
            for case in cases {
                if case.is_open() {
                    if !transitions::phase_term_due(&case, &docs.policy, now) {
                        continue;
                    }
                    let case_ref = case.case_ref.clone();
                    let broker = &shared.notice_signer.oin;
                    if apply("phase", &|v| {
                        Ok(match v.case(&case_ref)? {
                            Some(case) => transitions::phase_terms(case, &docs.policy, broker, now),
                            None => Effects::default(),
                        })
                    }) {
                        info!(case = %case_ref, "a case phase's term passed: notices sent");
                    }
                    continue;
                }
                if case.deletion_ordered_at.is_some() {
                    continue;
                }
                let case_ref = case.case_ref.clone();
                let clocks = match store.clock_ids_of_case(&case_ref) {
                    Ok(c) => c,
                    Err(e) => {
                        error!(case = %case_ref, cause = %e, "cannot read a case's answer clocks");
                        continue;
                    }
                };
                if apply("deletion", &|v| {
                    Ok(match v.case(&case_ref)? {
                        Some(case) => transitions::order_deletion(case, &clocks, &docs.policy, now),
                        None => Effects::default(),
                    })
                }) {
                    info!(case = %case_ref, "case retention ended: deletion orders sent");
                }
            }
        }
        Err(e) => error!(cause = %e, "cannot read the cases"),
    }
    match store.deletions() {
        Ok(orders) => {
            for d in orders {
                if d.confirmed_at.is_some() || d.overdue_at.is_some() || now <= d.order.delete_by {
                    continue;
                }
                let (order, party) = (d.order.order_id, d.order.party.clone());
                if apply("deletion-overdue", &|v| {
                    Ok(transitions::deletion_overdue(
                        v.deletion(&order, &party)?,
                        now,
                    ))
                }) {
                    warn!(order = %order, %party, "a deletion order is past its term unconfirmed");
                }
            }
        }
        Err(e) => error!(cause = %e, "cannot read the deletion orders"),
    }
    if !done.iter().any(|(_, a)| a.changed) {
        return;
    }
    if let Err(e) = store.flush() {
        // Poisoned: nothing applied here is promised; the broker stops.
        error!(cause = %e, "the sweep's flush failed");
        return;
    }
    for (op, a) in &done {
        store.finish(op, a);
        for p in &a.wake {
            shared.notify(p);
        }
    }
}
