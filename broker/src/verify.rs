//! Batch verification of ed25519 signatures with exactly `verify_strict`'s verdict
//! (issue 16; measured with
//! `cargo bench -p ketenpost-broker --bench verify`).
//!
//! A submission's header signature is checked by the core (`core::checks`, check 2)
//! through a `keys::SignatureCheck`: ed25519 `verify_strict`, one signature at a time,
//! unless the caller verified it beforehand with others ([`Verdicts`]). [`verify_all`]
//! verifies many signatures in one multi-scalar multiplication and says, for each, what
//! `verify_strict` would say:
//!
//! - `s` is canonical, and `R` decodes, is canonically encoded and is not of small order;
//! - the key is not of small order and has no torsion component (checked once per key);
//! - `R` has no torsion component, so the cofactored batch equation
//!   `[8]·Σ zᵢ(Rᵢ + kᵢAᵢ − sᵢB) = 0` (random 128-bit `zᵢ`) holds for each signature exactly
//!   when `sᵢB − kᵢAᵢ = Rᵢ`, the equation `verify_strict` checks, does.
//!
//! When the batch equation fails, each signature is verified on its own: one bad
//! signature refuses only its own item.
//!
//! The third point is what used to cost: without it a batch of 64 takes about 11 µs a
//! signature against 84 µs one at a time (2026-12-02), but then a signer could add a
//! small torsion point to its own `R` and have a message accepted that `verify_strict`
//! (and so every recipient's agent) refuses. Checked by a scalar multiplication by ℓ it
//! cost as much as a verification, and the batch more than verifying one at a time. The
//! check is now [`subgroup::in_prime_subgroup`]: one halving and a pairing of order 4,
//! four field exponentiations (about 19 µs against 30 µs for ℓ·R, 2026-12-03), and
//! `R`'s canonical encoding is a comparison with p instead of a re-encoding. The batch's
//! subgroup tests run two at a time ([`subgroup::in_prime_subgroup_all`], 2026-12-04):
//! a batch of 8 to 64 costs 1.3-1.6 times less than `verify_strict` one at a time (was
//! 1.2-1.4); a batch of two still costs more. With AVX-512 IFMA or AVX2 the
//! exponentiations of all of a batch's points run four to a vector register, three vectors
//! interleaved (`field::pow_p58`, on curve25519-dalek's vector field elements), and the
//! vendored curve25519-dalek runs its IFMA backend on a stable compiler
//! (`vendor/README.md`): with IFMA the subgroup test and decoding of `R` cost 2.7 and
//! 0.7 µs against 5.9 and 2.3, `verify_strict` 19.5 µs against 29, and a batch of 64
//! 7.1 µs a signature against 15.7 (2026-12-04).
//!
//! The broker's check stage (`server/submit.rs`, `CheckStage`) verifies the header
//! signatures of the submissions and the signatures of the delivery receipts it checks
//! together with [`verify_many`]: in one batch from [`MIN_BATCH`] on, one at a time below. The benchmark keeps the numbers current.

mod field;
pub mod subgroup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use ketenpost_schemas::keys::SignatureCheck;
use rand::RngCore as _;
use sha2::{Digest as _, Sha512};

/// One signature to verify: the signed bytes as `keys::verify_any` frames them.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key it must verify with.
    pub key: VerifyingKey,
    /// The framed message (`keys::framed`).
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Signature,
}

/// What [`verify_all`] learnt about a key: whether a batch may vouch for it.
fn key_batchable(key: &VerifyingKey) -> bool {
    let a = key.to_edwards();
    !a.is_small_order() && subgroup::in_prime_subgroup(key.as_bytes())
}

/// Whether `p` lies in the prime-order subgroup: `ℓ·P = 0`, computed as `(ℓ − 1)·P + P`
/// in variable time (`ℓ − 1` is the canonical form of the scalar −1; a point is public).
pub fn torsion_free(p: &EdwardsPoint) -> bool {
    (EdwardsPoint::vartime_multiscalar_mul([-Scalar::ONE], [*p]) + p).is_identity()
}

/// The parts of one signature a batch needs, when its cheap checks pass.
struct Parsed {
    /// `R` as encoded, for its decoding and subgroup test.
    r_bytes: [u8; 32],
    /// `R`, once [`decode_r`] decoded it (the identity before).
    r: EdwardsPoint,
    key: [u8; 32],
    a: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// The checks of `verify_strict` that come before its equation but `R`'s decoding, small
/// order and subgroup tests ([`decode_r`] does those for all), and the parts of the batch
/// equation; `None` when the signature must be verified on its own.
fn parse(item: &Item, batchable: bool) -> Option<Parsed> {
    if !batchable {
        return None;
    }
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*item.signature.s_bytes()))?;
    let r_bytes = *item.signature.r_bytes();
    if !subgroup::canonical_y(&r_bytes) {
        return None;
    }
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(item.key.as_bytes());
    h.update(&item.message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Parsed {
        r_bytes,
        r: EdwardsPoint::identity(),
        key: *item.key.as_bytes(),
        a: item.key.to_edwards(),
        s,
        k,
    })
}

/// `R` of every parsed signature decoded, all side by side ([`subgroup::decode_all`]: its
/// `x` computed once, for the point the batch equation takes and for the subgroup test),
/// refused when it is not a point or of small order, then its subgroup test
/// ([`subgroup::in_prime_subgroup_decoded`]); one that fails any is verified on its own.
fn decode_r(parsed: &mut [Option<Parsed>]) {
    let encoded: Vec<[u8; 32]> = parsed.iter().flatten().map(|p| p.r_bytes).collect();
    let encoded: Vec<&[u8; 32]> = encoded.iter().collect();
    let decoded = subgroup::decode_all(&encoded);
    let mut decoded_in_order = decoded.iter();
    let mut tested = Vec::with_capacity(decoded.len());
    for p in parsed.iter_mut() {
        let Some(q) = p else {
            continue;
        };
        let r = decoded_in_order
            .next()
            .and_then(Option::as_ref)
            .map(|d| (d, EdwardsPoint::from_affine_unchecked(&d.x, &d.y)));
        match r {
            Some((d, r)) if !r.is_small_order() => {
                q.r = r;
                tested.push(d);
            }
            _ => *p = None,
        }
    }
    let mut verdicts = subgroup::in_prime_subgroup_decoded(&tested).into_iter();
    for p in parsed.iter_mut().filter(|p| p.is_some()) {
        if !verdicts.next().unwrap_or(false) {
            *p = None;
        }
    }
}

/// Whether the batch equation holds for every one of `parts`.
fn batch_equation(parts: &[&Parsed]) -> bool {
    let mut rng = rand::thread_rng();
    let zs: Vec<Scalar> = parts
        .iter()
        .map(|_| {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b[..16]);
            Scalar::from_bytes_mod_order(b)
        })
        .collect();
    let b_coefficient: Scalar = -parts.iter().zip(&zs).map(|(p, z)| z * p.s).sum::<Scalar>();
    // Σ zᵢ·kᵢ·Aᵢ with one term per key: a party signs many of a batch's messages.
    let mut keys: Vec<(&[u8; 32], EdwardsPoint, Scalar)> = Vec::new();
    for (p, z) in parts.iter().zip(&zs) {
        let c = z * p.k;
        match keys.iter_mut().find(|(k, _, _)| **k == p.key) {
            Some(entry) => entry.2 += c,
            None => keys.push((&p.key, p.a, c)),
        }
    }
    let scalars = std::iter::once(b_coefficient)
        .chain(zs.iter().copied())
        .chain(keys.iter().map(|(_, _, c)| *c));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(parts.iter().map(|p| p.r))
        .chain(keys.iter().map(|(_, a, _)| *a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

/// What a verifying thread remembers about keys from one batch to the next: whether a
/// batch may vouch for a key (its own cache), and the keys a signature failed under
/// lately ([`Suspects`], shared by all the threads that verify).
#[derive(Debug)]
pub struct KeyMemory {
    /// Whether a batch may vouch for a key ([`key_batchable`]), learnt once per key.
    batchable: HashMap<[u8; 32], bool>,
    suspects: Arc<Suspects>,
}

impl Default for KeyMemory {
    /// A memory with suspects of its own, kept for [`SUSPECT_FOR`].
    fn default() -> Self {
        KeyMemory::new(Arc::new(Suspects::new(SUSPECT_FOR)))
    }
}

impl KeyMemory {
    /// A memory that shares `suspects` with the other verifying threads.
    pub fn new(suspects: Arc<Suspects>) -> Self {
        KeyMemory {
            batchable: HashMap::new(),
            suspects,
        }
    }

    /// Whether a batch may vouch for signatures under `key`, suspicion aside (that is
    /// [`Suspects::which`]).
    fn batchable(&mut self, key: &VerifyingKey) -> bool {
        *self
            .batchable
            .entry(*key.as_bytes())
            .or_insert_with(|| key_batchable(key))
    }
}

/// How long a key's signatures are verified alone after one failed under it.
pub const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// Keys a signature failed under, each with the instant until which its signatures are
/// verified alone. A failing batch verifies every one of its signatures again, so a
/// partner that keeps sending bad signatures (or signs with a key the batch does not try,
/// inside a rotation's overlap) would otherwise cost every batch it lands in; shared by
/// the verifying threads, so that it costs one batch, not one per thread.
#[derive(Debug)]
pub struct Suspects {
    until: Mutex<HashMap<[u8; 32], Instant>>,
    /// How long a key stays suspect after a failure.
    suspect_for: Duration,
}

impl Suspects {
    /// No suspects yet; a key stays one for `suspect_for` after a failure.
    pub fn new(suspect_for: Duration) -> Self {
        Suspects {
            until: Mutex::new(HashMap::new()),
            suspect_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For each item, whether its key is suspect at `now` (one lock for all).
    fn which(&self, items: &[Item], now: Instant) -> Vec<bool> {
        let until = self.lock();
        items
            .iter()
            .map(|it| until.get(it.key.as_bytes()).is_some_and(|u| *u > now))
            .collect()
    }

    /// Signatures failed under `keys` at `now` (one lock for all).
    fn failed<'a>(&self, keys: impl IntoIterator<Item = &'a VerifyingKey>, now: Instant) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        let mut until = self.lock();
        // The keys are the registry's, so this stays small; expired ones go anyway.
        if until.len() >= 64 {
            until.retain(|_, u| *u > now);
        }
        for key in keys {
            until.insert(*key.as_bytes(), now + self.suspect_for);
        }
    }

    /// Whether signatures under `key` are verified alone at `now`.
    pub fn is_suspect(&self, key: &VerifyingKey, now: Instant) -> bool {
        self.lock().get(key.as_bytes()).is_some_and(|u| *u > now)
    }
}

/// The verdicts of [`verify_all`] or [`verify_many`], in the items' order, and how many
/// of them a batch equation gave (the others came from `verify_strict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `true` where the signature verifies as `verify_strict` would say.
    pub verdicts: Vec<bool>,
    /// How many verdicts a batch equation that held gave.
    pub batched: usize,
}

impl Verified {
    /// How many verdicts `verify_strict` gave.
    pub fn alone(&self) -> usize {
        self.verdicts.len() - self.batched
    }
}

/// Verify every item as `verify_strict` would. Items that pass the cheap checks, under
/// keys no signature failed under lately (`memory`), are verified in one batch; if the
/// batch equation fails (and for the others) each is verified on its own, and the keys
/// that failed are remembered as suspect for [`SUSPECT_FOR`].
pub fn verify_all(items: &[Item], memory: &mut KeyMemory) -> Verified {
    let now = Instant::now();
    let mut parsed: Vec<Option<Parsed>> = if items.len() > 1 {
        let suspect = memory.suspects.which(items, now);
        items
            .iter()
            .zip(suspect)
            .map(|(it, suspect)| {
                let ok = !suspect && memory.batchable(&it.key);
                parse(it, ok)
            })
            .collect()
    } else {
        items.iter().map(|_| None).collect()
    };
    decode_r(&mut parsed);
    let in_batch: Vec<&Parsed> = parsed.iter().flatten().collect();
    let batch_ok = in_batch.len() > 1 && batch_equation(&in_batch);
    let batched = if batch_ok { in_batch.len() } else { 0 };
    let verdicts: Vec<bool> = items
        .iter()
        .zip(&parsed)
        .map(|(it, p)| (batch_ok && p.is_some()) || strict(it))
        .collect();
    memory.suspects.failed(failed_keys(items, &verdicts), now);
    Verified { verdicts, batched }
}

/// The keys of the items whose verdict is `false`.
fn failed_keys<'a>(
    items: &'a [Item],
    verdicts: &'a [bool],
) -> impl Iterator<Item = &'a VerifyingKey> {
    items
        .iter()
        .zip(verdicts)
        .filter(|(_, ok)| !**ok)
        .map(|(it, _)| &it.key)
}

fn strict(item: &Item) -> bool {
    item.key
        .verify_strict(&item.message, &item.signature)
        .is_ok()
}

/// Fewest signatures [`verify_many`] verifies in one batch; fewer are verified one at a
/// time (a batch of two costs more than two `verify_strict`s; see the benchmark).
pub const MIN_BATCH: usize = 8;

/// [`verify_all`] from [`MIN_BATCH`] items on, `verify_strict` one at a time below.
pub fn verify_many(items: &[Item], memory: &mut KeyMemory) -> Verified {
    if items.len() < MIN_BATCH {
        let verdicts: Vec<bool> = items.iter().map(strict).collect();
        memory
            .suspects
            .failed(failed_keys(items, &verdicts), Instant::now());
        Verified {
            verdicts,
            batched: 0,
        }
    } else {
        verify_all(items, memory)
    }
}

/// Verdicts reached beforehand (by [`verify_many`]) for check 2 of one submission, or for
/// one delivery receipt's signature: the [`SignatureCheck`] its `check_claim` (or
/// `check_receipt_claim`) runs with. It answers only for exactly the key,
/// bytes and signature it holds a verdict on, and `false` for anything else.
#[derive(Debug, Default)]
pub struct Verdicts(pub Vec<(Item, bool)>);

impl SignatureCheck for Verdicts {
    fn verifies(&self, key: &VerifyingKey, framed: &[u8], signature: &Signature) -> bool {
        self.0.iter().any(|(it, ok)| {
            *ok && it.key == *key && it.signature == *signature && it.message == framed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ketenpost_schemas::keys::{self, generate_signing_key, Context};

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| {
                let k = generate_signing_key();
                let message = keys::framed(Context::Header, format!("header {i}").as_bytes());
                let signature = ed25519_dalek::Signer::sign(&k, &message);
                Item {
                    key: k.verifying_key(),
                    message,
                    signature,
                }
            })
            .collect()
    }

    /// The batch equation's multi-scalar multiplication and `verify_strict`'s double-base
    /// one run on curve25519-dalek's vector backend (AVX-512 IFMA or AVX2, whichever this
    /// processor has; the vendored build enables IFMA on a stable compiler,
    /// `vendor/README.md`), the base point's multiplication on its serial tables. On
    /// multiples of the base point they must give the same points.
    #[test]
    fn the_vector_backend_agrees_with_the_serial_base_point_tables() {
        let random = || {
            let mut b = [0u8; 64];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
            Scalar::from_bytes_mod_order_wide(&b)
        };
        for n in [1usize, 2, 3, 8, 33, 64] {
            let k: Vec<Scalar> = (0..n).map(|_| random()).collect();
            let c: Vec<Scalar> = (0..n).map(|_| random()).collect();
            let points: Vec<EdwardsPoint> = k.iter().map(EdwardsPoint::mul_base).collect();
            let sum: Scalar = c.iter().zip(&k).map(|(c, k)| c * k).sum();
            assert_eq!(
                EdwardsPoint::vartime_multiscalar_mul(&c, &points),
                EdwardsPoint::mul_base(&sum),
                "{n} points"
            );
            let (a, b) = (random(), random());
            assert_eq!(
                EdwardsPoint::vartime_double_scalar_mul_basepoint(&a, &points[0], &b),
                EdwardsPoint::mul_base(&(a * k[0] + b)),
            );
        }
    }

    #[test]
    fn torsion_free_agrees_with_curve25519_dalek() {
        let p = ED25519_BASEPOINT_POINT * Scalar::from(12345u64);
        assert!(torsion_free(&p) && p.is_torsion_free());
        for t in curve25519_dalek::constants::EIGHT_TORSION.iter().skip(1) {
            assert!(!torsion_free(&(p + t)));
            assert!(!(p + t).is_torsion_free());
        }
    }

    /// A signature with a torsion component in `R`: the cofactored equation holds,
    /// `verify_strict`'s does not.
    fn torsion_item() -> Item {
        let k = generate_signing_key();
        let message = b"torsion".to_vec();
        let a = k.verifying_key();
        let r_scalar = Scalar::from_bytes_mod_order([7u8; 32]);
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let r_point = ED25519_BASEPOINT_POINT * r_scalar + torsion;
        let r_bytes = r_point.compress();
        let mut h = Sha512::new();
        h.update(r_bytes.as_bytes());
        h.update(a.as_bytes());
        h.update(&message);
        let kk = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r_scalar + kk * k.to_scalar();
        Item {
            key: a,
            message,
            signature: Signature::from_components(r_bytes.to_bytes(), s.to_bytes()),
        }
    }

    #[test]
    fn verify_many_gives_verify_stricts_verdict_below_and_above_the_batch_size() {
        for n in [5, MIN_BATCH - 1, MIN_BATCH, 40, 73] {
            let mut v = items(n);
            v[1].message.push(b'!');
            v[2].key = v[3].key;
            v[4] = torsion_item();
            let mut memory = KeyMemory::default();
            let want: Vec<bool> = v.iter().map(strict).collect();
            assert_eq!(want.iter().filter(|ok| !**ok).count(), 3);
            assert_eq!(verify_many(&v, &mut memory).verdicts, want, "{n} items");
        }
    }

    #[test]
    fn verdicts_answer_only_for_what_they_hold() {
        let v = items(3);
        let verdicts = Verdicts(vec![(v[0].clone(), true), (v[1].clone(), false)]);
        let holds = |it: &Item| verdicts.verifies(&it.key, &it.message, &it.signature);
        assert!(holds(&v[0]));
        assert!(!holds(&v[1]), "a refused signature");
        assert!(!holds(&v[2]), "a signature without a verdict");
        let mut other = v[0].clone();
        other.message.push(b'!');
        assert!(!holds(&other), "other bytes under a verified signature");
        other = v[0].clone();
        other.key = v[2].key;
        assert!(!holds(&other), "another key");
    }

    #[test]
    fn a_good_batch_verifies() {
        let got = verify_all(&items(16), &mut KeyMemory::default());
        assert_eq!(got.verdicts, vec![true; 16]);
        assert_eq!(got.batched, 16);
    }

    #[test]
    fn one_bad_signature_fails_only_itself() {
        let mut memory = KeyMemory::default();
        let mut v = items(16);
        // Another message under the same signature.
        v[5].message.push(b'!');
        // A signature by another key.
        v[9].key = v[10].key;
        let got = verify_all(&v, &mut memory);
        assert_eq!(got.batched, 0, "the batch failed: each verified alone");
        for (i, ok) in got.verdicts.iter().enumerate() {
            assert_eq!(*ok, i != 5 && i != 9, "item {i}");
        }
    }

    #[test]
    fn a_signature_with_a_torsion_component_is_refused_as_verify_strict_does() {
        // R + T for a point T of order 8: the batch must not vouch for it.
        let bad = torsion_item();
        assert!(!strict(&bad));
        let mut v = items(8);
        v.push(bad);
        let got = verify_all(&v, &mut KeyMemory::default());
        assert_eq!(got.verdicts, [vec![true; 8], vec![false]].concat());
        assert_eq!(
            got.batched, 8,
            "the torsion signature was kept out of the batch"
        );
    }

    #[test]
    fn a_key_a_signature_failed_under_is_verified_alone_for_a_while() {
        let mut memory = KeyMemory::default();
        let signer = generate_signing_key();
        let sign = |text: &str| {
            let message = keys::framed(Context::Header, text.as_bytes());
            let signature = ed25519_dalek::Signer::sign(&signer, &message);
            Item {
                key: signer.verifying_key(),
                message,
                signature,
            }
        };
        // A bad signature under `signer` fails the first batch: everything is verified
        // again alone, and `signer` becomes suspect.
        let mut v = items(15);
        let mut bad = sign("first");
        bad.message.push(b'!');
        v.push(bad);
        let first = verify_all(&v, &mut memory);
        assert_eq!(first.verdicts, [vec![true; 15], vec![false]].concat());
        assert_eq!(first.batched, 0);
        assert!(memory
            .suspects
            .is_suspect(&signer.verifying_key(), Instant::now()));
        // The next batch: `signer`'s signatures, bad and good, are verified alone; the
        // others still in one batch, which holds.
        let mut v = items(14);
        let mut bad = sign("second");
        bad.message.push(b'!');
        v.push(bad);
        v.push(sign("third"));
        let second = verify_all(&v, &mut memory);
        assert_eq!(
            second.verdicts,
            [vec![true; 14], vec![false], vec![true]].concat()
        );
        assert_eq!(second.batched, 14);
        assert_eq!(second.alone(), 2);
        // Another thread's memory shares the suspects: the key is verified alone there too.
        let mut other = KeyMemory::new(memory.suspects.clone());
        let mut v = items(15);
        v.push(sign("shared"));
        assert_eq!(verify_all(&v, &mut other).batched, 15);
        // Once the suspicion expired, the key's signatures go in batches again.
        let mut memory = KeyMemory::new(Arc::new(Suspects::new(Duration::ZERO)));
        let mut v = items(15);
        let mut bad = sign("fourth");
        bad.message.push(b'!');
        v.push(bad);
        assert_eq!(verify_all(&v, &mut memory).batched, 0);
        let mut v = items(15);
        v.push(sign("fifth"));
        assert_eq!(verify_all(&v, &mut memory).batched, 16);
    }

    #[test]
    fn a_failure_below_the_batch_size_makes_the_key_suspect_too() {
        let mut memory = KeyMemory::default();
        let mut v = items(3);
        v[0].message.push(b'!');
        let got = verify_many(&v, &mut memory);
        assert_eq!(got.verdicts, vec![false, true, true]);
        assert!(memory.suspects.is_suspect(&v[0].key, Instant::now()));
        assert!(!memory.suspects.is_suspect(&v[1].key, Instant::now()));
    }
}
