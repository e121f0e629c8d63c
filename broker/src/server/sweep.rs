//! The sweep: expiry, deadline notices and deletion orders, each a decision of the core
//! applied in its own transaction.

use super::*;

/// One sweep at `now`: expire undelivered bodies, send the deadline notices that are due,
/// and order deletions for cases whose retention ended. Each is a decision of the core
/// applied in its own transaction; one flush makes them all durable before any body they
/// released is destroyed. Blocking.
pub(super) fn sweep_once(shared: &Shared, now: DateTime<Utc>) {
    if let Err(e) = sweep(shared, now) {
        error!(cause = %e, "sweep failed");
    }
}

fn sweep(shared: &Shared, now: DateTime<Utc>) -> Result<(), StoreError> {
    let store = &shared.store;
    let apply = |op: &'static str,
                 decide: &dyn Fn(&TxView<'_>) -> TxResult<Effects>|
     -> Result<Applied, StoreError> {
        let applied = store.transition(op, &shared.audit, &shared.notice_signer, now, |v| {
            decide(v).map(Ok::<_, std::convert::Infallible>)
        })?;
        match applied {
            Ok(a) => Ok(a),
            Err(never) => match never {},
        }
    };
    let mut done: Vec<(&'static str, Applied)> = Vec::new();
    for id in store.due(now)? {
        let a = apply("expire", &|v| {
            Ok(transitions::expire(v.meta(&id)?, v.clock(&id)?, now))
        })?;
        if a.changed {
            info!(message = %id, "undelivered message expired");
        }
        done.push(("expire", a));
    }
    let calendar = &shared.policy.calendar;
    for clock in store.clocks()? {
        if clock.overdue(calendar, now).is_empty() {
            continue;
        }
        let id = clock.message_id;
        let a = apply("deadline", &|v| {
            let Some(clock) = v.clock(&id)? else {
                return Ok(Effects::default());
            };
            let regievoerder = v.case(&clock.case_ref)?.map(|c| c.regievoerder);
            Ok(transitions::deadline_notices(
                clock,
                regievoerder.as_ref(),
                &shared.policy,
                now,
            ))
        })?;
        if a.changed {
            info!(message = %id, "answer overdue: deadline notices sent");
        }
        done.push(("deadline", a));
    }
    for case in store.cases()? {
        if case.closed_at.is_none() || case.deletion_ordered_at.is_some() {
            continue;
        }
        let case_ref = case.case_ref.clone();
        let clocks = store.clock_ids_of_case(&case_ref)?;
        let a = apply("deletion", &|v| {
            Ok(match v.case(&case_ref)? {
                Some(case) => transitions::order_deletion(case, &clocks, &shared.policy, now),
                None => Effects::default(),
            })
        })?;
        if a.changed {
            info!(case = %case_ref, "case retention ended: deletion orders sent");
        }
        done.push(("deletion", a));
    }
    if done.iter().any(|(_, a)| a.changed) {
        store.flush()?;
    }
    for (op, a) in &done {
        store.finish(op, a);
        for p in &a.wake {
            shared.notify(p);
        }
    }
    Ok(())
}
