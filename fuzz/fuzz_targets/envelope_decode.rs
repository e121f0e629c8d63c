//! The wire envelope: decode, parse the header, verify (as a submission and as a delivery),
//! and make a delivery of it. Nothing may panic; a random input never verifies.
#![no_main]

use std::sync::OnceLock;

use ketenpost_schemas::envelope::{Envelope, Limits};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| keys::generate_signing_key().verifying_key())
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(env) = Envelope::decode(data, &limits) else {
        return;
    };
    let _ = env.encode();
    let _ = env.delivery(0);
    let Ok(claimed) = env.clone().into_claimed() else {
        return;
    };
    let me: Oin = match claimed.unverified_header().recipients.first() {
        Some(o) => o.clone(),
        None => return,
    };
    assert!(claimed.clone().verify(&limits, key()).is_err());
    assert!(claimed.verify_delivery(&limits, key(), &me).is_err());
});
