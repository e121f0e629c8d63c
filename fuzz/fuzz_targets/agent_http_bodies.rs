//! The request bodies of the agent's HTTP API (what a partner system posts): each type
//! parsed, and a send request resolved by the agent's early check against a fixed policy
//! and directory. Never panics.
#![no_main]

use std::sync::OnceLock;

use chrono::Utc;
use ketenpost_agent::resolve::{resolve, Context, SendRequest};
use ketenpost_agent::ops::{AddMember, GrantConsent, OpenCase, RegisterCase, WithdrawConsent};
use ketenpost_schemas::directory::{BrokerEntry, Directory, Party};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::testdata::TEST_POLICY;
use libfuzzer_sys::fuzz_target;

struct Fixtures {
    me: Oin,
    policy: Policy,
    directory: Directory,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let party = |n: u8, role: &str| Party {
            oin: format!("{n:020}").parse().expect("oin"),
            name: role.into(),
            roles: vec![Role::new(role)],
            signing_key: keys::verifying_key_to_text(&keys::generate_signing_key().verifying_key()),
            age_recipient: keys::generate_age_identity().to_public().to_string(),
            cert_fingerprint: "00".repeat(32),
            fg_contact: "fg@example.org".into(),
            revoked: false,
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
                party(1, "gemeente"),
                party(2, "woningcorporatie"),
                party(3, "zorgaanbieder"),
            ],
        };
        Fixtures {
            me: format!("{:020}", 2).parse().expect("oin"),
            policy: Policy::from_toml(TEST_POLICY).expect("the test policy loads"),
            directory,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<OpenCase>(data);
    let _ = serde_json::from_slice::<RegisterCase>(data);
    let _ = serde_json::from_slice::<AddMember>(data);
    let _ = serde_json::from_slice::<GrantConsent>(data);
    let _ = serde_json::from_slice::<WithdrawConsent>(data);
    let Ok(req) = serde_json::from_slice::<SendRequest>(data) else {
        return;
    };
    let f = fixtures();
    let cx = Context {
        me: &f.me,
        policy: &f.policy,
        directory: &f.directory,
        case: None,
        consents: &[],
    };
    let _ = resolve(&req, &cx, Utc::now());
});
