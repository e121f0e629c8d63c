//! The covenant policy (TOML): parse and check. Never panics; a policy that loads has
//! durations whose deadlines can be computed.
#![no_main]

use ketenpost_schemas::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml(text) else {
        return;
    };
    let now = chrono::Utc::now();
    for p in policy.purposes.values() {
        let _ = p.case_retention.deadline(now, &policy.calendar);
        let _ = p.consent_backdating.deadline(now, &policy.calendar);
        for rule in p.kinds.values() {
            let _ = rule.undelivered_ttl.deadline(now, &policy.calendar);
            if let Some(d) = rule.send_within {
                let _ = d.deadline(now, &policy.calendar);
            }
            if let Some(d) = rule.answer_within {
                let _ = d.deadline(now, &policy.calendar);
            }
        }
    }
});
