//! Crash points and the test clock: see [`ketenpost_transport::failpoint`], shared with the
//! agent. Compiled in only with this crate's `failpoints` feature.

pub use ketenpost_transport::failpoint::*;

/// The clock the broker process runs on: the test clock when this crate is built with
/// `failpoints` and the test names a clock file ([`test_clock`]), else the system clock.
/// `serve` runs the broker on it and the offline FG reads stamp their reads with it.
pub fn clock() -> ketenpost_core::clock::SharedClock {
    test_clock().unwrap_or_else(|| std::sync::Arc::new(ketenpost_core::clock::SystemClock))
}
