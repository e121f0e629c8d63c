//! Micro-benchmark of sealing an audit record: hashing it and producing the JSON that is
//! stored, for the record the broker writes when it accepts a message.
//!
//! ```text
//! cargo bench -p ketenpost-audit --bench seal
//! ```
//!
//! It alternates, round by round, [`AuditRecord::seal`] (one serialization: the hash is
//! put into the canonical bytes) with what sealing did before: the hash over a copy of
//! the record serialized with an empty `hash`, then the record serialized again to store
//! it. Both start from a copy of the same unsealed record. Without `--bench` on the
//! command line it does nothing.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use chrono::{TimeZone as _, Utc};
use ketenpost_audit::{AuditEntry, AuditEvent, AuditRecord, ChainHead, Outcome};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 5_000;

/// An unsealed record as the broker writes it for an accepted message.
fn accepted() -> AuditRecord {
    let entry = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok)
        .actor("00000001234567890000")
        .case_ref("case-0123456789abcdefghijklmnop")
        .purpose("walcheren-uitstroom")
        .processing_activity("pa-uitstroom-signaal")
        .kind("signaal")
        .message_id("0190f3a4-1c2b-7d3e-8f40-123456789abc")
        .counterparty("00000009876543210000")
        .recipient_views(&[("00000009876543210000", "zorgaanbieder")])
        .trace_id("4bf92f3577b34da6a3ce929d0e0e4736");
    let now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap();
    let (mut record, _) = ChainHead::genesis().next(entry, now).unwrap();
    record.hash.clear();
    record
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("seal: a benchmark; run it with `cargo bench -p ketenpost-audit --bench seal`");
        return;
    }
    let record = accepted();
    let (mut once, mut twice) = (Vec::new(), Vec::new());
    let mut stored = 0usize;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let (_, bytes) = record.clone().seal().unwrap();
            stored += bytes.len();
        }
        once.push(t.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let mut r = record.clone();
            r.hash = r.compute_hash().unwrap();
            let bytes = serde_json::to_vec(&r).unwrap();
            stored += bytes.len();
        }
        twice.push(t.elapsed().as_nanos() as f64 / PER_ROUND as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "seal: {} records of {} bytes: serialized once {:.2} us a record, hashed then serialized again {:.2} us (medians of {ROUNDS} rounds)",
        ROUNDS * PER_ROUND * 2,
        stored / (ROUNDS * PER_ROUND * 2),
        median(once) / 1000.0,
        median(twice) / 1000.0,
    );
}
