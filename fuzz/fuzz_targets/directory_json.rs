//! The partner directory (JSON), checked against a fixed policy. Never panics; a
//! directory that loads has parseable keys for every party.
#![no_main]

use std::sync::OnceLock;

use ketenpost_schemas::directory::Directory;
use ketenpost_schemas::policy::Policy;
use ketenpost_schemas::testdata::TEST_POLICY;
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Policy::from_toml(TEST_POLICY).expect("the test policy loads"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = Directory::from_json(data, policy()) else {
        return;
    };
    for p in &dir.parties {
        assert!(p.verifying_key().is_ok());
        let _ = dir.active_party(&p.oin);
    }
    let _ = dir.broker_key();
});
