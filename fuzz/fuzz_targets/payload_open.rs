//! Opening a body: age decryption of a ciphertext (the first input byte picks whether the
//! rest is taken as ciphertext or as decrypted JSON), then the view check of every kind
//! for every role of the test policy. Never panics.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use ketenpost_schemas::keys;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload;
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::seal;
use ketenpost_schemas::testdata::TEST_POLICY;
use libfuzzer_sys::fuzz_target;

fn fixtures() -> &'static (age::x25519::Identity, Policy) {
    static F: OnceLock<(age::x25519::Identity, Policy)> = OnceLock::new();
    F.get_or_init(|| {
        (
            keys::generate_age_identity(),
            Policy::from_toml(TEST_POLICY).expect("the test policy loads"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let (identity, policy) = fixtures();
    if first & 1 == 0 {
        let _ = seal::decrypt(identity, rest);
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    for purpose in policy.purposes.values() {
        for (kind, rule) in &purpose.kinds {
            let Some(schema) = policy.kind_schema(*kind) else {
                continue;
            };
            for role in &rule.recipients {
                let granted = rule.view(role);
                let _ = payload::validate_view(schema, role.as_str(), &granted, &value);
            }
        }
    }
    for kind in Kind::CONTENT {
        let Some(schema) = payload::builtin(kind) else {
            continue;
        };
        let _ = payload::validate(schema, &value);
        if let Some(obj) = value.as_object() {
            let _ = payload::project(schema, &BTreeSet::new(), obj);
        }
    }
});
