//! Signed control records as a partner sends them (JSON): parse, then verify as every
//! record kind. A random input never verifies with a key it was not signed with.
#![no_main]

use std::sync::OnceLock;

use ketenpost_schemas::control::{
    CaseChange, DeletionConfirmation, DeliveryReceipt, SignedRecord, Toestemming,
    ToestemmingIntrekking,
};
use ketenpost_schemas::keys::{self, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| keys::generate_signing_key().verifying_key())
}

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = serde_json::from_slice::<SignedRecord>(data) else {
        return;
    };
    assert!(rec.verify::<Toestemming>(key()).is_err());
    assert!(rec.verify::<ToestemmingIntrekking>(key()).is_err());
    assert!(rec.verify::<CaseChange>(key()).is_err());
    assert!(rec.verify::<DeliveryReceipt>(key()).is_err());
    assert!(rec.verify::<DeletionConfirmation>(key()).is_err());
});
