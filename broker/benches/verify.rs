//! Micro-benchmark of header signature verification: per signature, `verify_strict` one at
//! a time against the broker's batch verification ([`ketenpost_broker::verify::verify_all`])
//! in batches of 2 to 64, what a failing batch costs, and what it costs once the key it
//! failed under is suspect.
//!
//! ```text
//! cargo bench -p ketenpost-broker --bench verify
//! ```
//!
//! The messages are 700-byte headers framed as the envelope's signature covers them, each
//! signed by one of six keys (the load benchmark's parties). Each figure is the best of
//! five rounds of about 0.5 s (the machine is shared; the best round is the least
//! disturbed). Without `--bench` on the command line it does nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ketenpost_broker::verify::{verify_all, Item, KeyMemory, Suspects};
use ketenpost_schemas::keys::{self, Context};

fn items(n: usize) -> Vec<Item> {
    let keys: Vec<_> = (0..6).map(|_| keys::generate_signing_key()).collect();
    (0..n)
        .map(|i| {
            let k = &keys[i % keys.len()];
            let mut header = format!("{{\"n\":{i},\"pad\":\"");
            header.push_str(&"x".repeat(700 - header.len() - 2));
            header.push_str("\"}");
            let message = keys::framed(Context::Header, header.as_bytes());
            let signature = ed25519_dalek::Signer::sign(k, &message);
            Item {
                key: k.verifying_key(),
                message,
                signature,
            }
        })
        .collect()
}

/// Microseconds per signature of `f` over `per_round` signatures, best of five rounds.
fn best_us(per_round: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_millis(500) {
            f();
            n += per_round;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    best
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "verify: a benchmark; run it with `cargo bench -p ketenpost-broker --bench verify`"
        );
        return;
    }
    let all = items(64);
    let single = best_us(all.len(), || {
        for it in &all {
            assert!(it.key.verify_strict(&it.message, &it.signature).is_ok());
        }
    });
    println!("verify_strict, one at a time:        {single:6.1} us per signature");
    for n in [2, 4, 8, 16, 32, 64] {
        let batch = &all[..n];
        let mut memory = KeyMemory::default();
        let us = best_us(n, || {
            assert!(verify_all(batch, &mut memory).verdicts.iter().all(|ok| *ok));
        });
        println!(
            "batch of {n:2}:                        {us:6.1} us per signature ({:.2}x)",
            single / us
        );
    }
    for n in [16, 64] {
        let mut bad = all[..n].to_vec();
        bad[n / 2].message.push(b'!');
        // A memory that forgets at once: every round the batch fails and each signature is
        // verified again on its own (a key's first failure).
        let mut forgetful = KeyMemory::new(Arc::new(Suspects::new(Duration::ZERO)));
        let us = best_us(bad.len(), || {
            let got = verify_all(&bad, &mut forgetful);
            assert_eq!(got.verdicts.iter().filter(|ok| !**ok).count(), 1);
        });
        println!(
            "batch of {n:2} with one bad signature:  {us:6.1} us per signature (the batch, then \
             each on its own)"
        );
        // The broker's memory: after the first failure the key is suspect, and its
        // signatures are verified alone beside a batch of the others that holds.
        let mut memory = KeyMemory::default();
        let us = best_us(bad.len(), || {
            let got = verify_all(&bad, &mut memory);
            assert_eq!(got.verdicts.iter().filter(|ok| !**ok).count(), 1);
        });
        println!(
            "  ... from a key that failed before:  {us:6.1} us per signature (the key's alone, \
             the others batched)"
        );
    }
    // The parts: what the exact (torsion-free R) check costs per signature.
    let r: Vec<_> = all
        .iter()
        .map(|it| {
            curve25519_dalek::edwards::CompressedEdwardsY(*it.signature.r_bytes())
                .decompress()
                .unwrap()
        })
        .collect();
    let us = best_us(r.len(), || {
        for p in &r {
            assert!(ketenpost_broker::verify::torsion_free(p));
        }
    });
    println!("(R torsion-free by ℓ·R, vartime:     {us:6.1} us per signature)");
    let us = best_us(r.len(), || {
        for it in &all {
            assert!(ketenpost_broker::verify::subgroup::in_prime_subgroup(
                it.signature.r_bytes()
            ));
        }
    });
    println!("of which: R in the subgroup (halving): {us:6.1} us per signature");
    let encoded: Vec<&[u8; 32]> = all.iter().map(|it| it.signature.r_bytes()).collect();
    let us = best_us(r.len(), || {
        let verdicts = ketenpost_broker::verify::subgroup::in_prime_subgroup_all(&encoded);
        assert!(verdicts.iter().all(|ok| *ok));
    });
    println!("          the same, all side by side:  {us:6.1} us per signature");
    let us = best_us(r.len(), || {
        for it in &all {
            let r = curve25519_dalek::edwards::CompressedEdwardsY(*it.signature.r_bytes());
            assert!(r.decompress().is_some());
        }
    });
    println!("R decompressed (curve25519-dalek):    {us:6.1} us per signature");
    let us = best_us(r.len(), || {
        let decoded = ketenpost_broker::verify::subgroup::decode_all(&encoded);
        assert!(decoded.iter().all(Option::is_some));
    });
    println!("R decoded, all side by side (batch):  {us:6.1} us per signature");
    let us = best_us(r.len(), || {
        for p in &r {
            assert!(p.is_torsion_free());
        }
    });
    println!("(R torsion-free, constant time:     {us:6.1} us per signature)");
}
