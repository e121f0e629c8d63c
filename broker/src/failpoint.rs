//! Crash points and the test clock: see [`ketenpost_transport::failpoint`], shared with the
//! agent. Compiled in only with this crate's `failpoints` feature.

pub use ketenpost_transport::failpoint::*;
