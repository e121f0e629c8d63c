//! Protocol frames: requests (what the broker reads from any partner) and responses (what
//! an agent reads from the broker). Decoding never panics; what decodes encodes again and
//! decodes to the same value.
#![no_main]

use ketenpost_schemas::protocol::{request_bound, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(kind) = data.get(1) {
        let _ = request_bound(*kind, 16 * 1024 * 1024);
    }
    if let Ok(req) = Request::decode(data) {
        assert_eq!(Request::decode(&req.encode()).ok(), Some(req));
    }
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(Response::decode(&resp.encode()).ok(), Some(resp));
    }
});
