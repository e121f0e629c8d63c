//! A message's stored metadata as the broker reads it back from sled (binary, or JSON from
//! an older version): a damaged value is an error, never a panic, and whatever decodes
//! encodes back to a value that decodes to the same metadata.
#![no_main]

use ketenpost_core::message::MessageMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = MessageMeta::from_bytes(data) else {
        return;
    };
    let again = MessageMeta::from_bytes(&meta.to_bytes()).expect("an encoded value decodes");
    assert_eq!(again, meta);
});
