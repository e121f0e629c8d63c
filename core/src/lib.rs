//! # ketenpost-core
//!
//! The decision engine of ketenpost: every check and every state transition the broker
//! and the agents make, as pure functions of (input, what the registries know, policy,
//! now). Nothing here does I/O, reads a clock or starts a thread (compare quinn-proto and
//! rustls): the broker and the agent apply what these functions decide.
//!
//! | module | what it holds |
//! |---|---|
//! | [`checks`] | the checks of every submission, control record and receipt, in DESIGN order |
//! | [`registry`] | cases and consents as data, and the [`Registry`](registry::Registry) view the checks read |
//! | [`deadlines`] | `send_within` and `answer_within`: answer clocks and due notices |
//! | [`breach`] | breach routing: who exchanged messages about the affected cases |
//! | [`rights`] | the data subject's access request: who may ask, and the answer's term |
//! | [`message`] | what the broker keeps about a queued message besides its body |
//! | (`ketenpost-audit`) | audit records, entries, the hash chain and signed checkpoints: a crate of its own, below this one |
//! | [`clock`] | the [`Clock`](clock::Clock) every `now` comes from |
//! | [`transitions`] | receipts, fetches, expiry, deadline notices, deletion orders, control records: decisions returning [`Effects`](effects::Effects) |
//! | [`effects`] | what a decision changes, applied by a store in one transaction |
#![forbid(unsafe_code)]

pub mod breach;
pub mod checks;
pub mod clock;
pub mod deadlines;
pub mod effects;
pub mod message;
pub mod registry;
pub mod rights;
pub mod transitions;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
