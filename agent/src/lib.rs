//! ketenpost agent.
#![forbid(unsafe_code)]
