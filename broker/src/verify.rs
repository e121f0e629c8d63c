//! Batch verification of the header signatures of concurrent submissions.
//!
//! A submission's signature is checked by the core (`core::checks`, check 2) with
//! [`keys::verify_any`]: ed25519 `verify_strict`. Verifying the signatures of many
//! submissions in one multi-scalar multiplication costs about half as much per signature
//! (see `cargo bench -p ketenpost-broker --bench verify`), so the submit path sends each
//! submission's header signature to the [`Verifier`] first; the verifier thread takes every
//! signature waiting at that moment (at most [`MAX_BATCH`]) and verifies them together. A
//! signature the batch proves is handed to the core as [`PreVerified`], which answers the
//! core's signature check for exactly that key, message and signature; for everything else
//! the core verifies as before. The decision, its order and its refusal are the core's in
//! every case.
//!
//! What a passing batch proves is what `verify_strict` checks, for every signature in it:
//!
//! - `s` is canonical, and `R` decodes, is canonically encoded and is not of small order;
//! - the key is not of small order and has no torsion component (checked once per key);
//! - `R` has no torsion component, so the cofactored batch equation
//!   `[8]·Σ zᵢ(Rᵢ + kᵢAᵢ − sᵢB) = 0` (random 128-bit `zᵢ`) holds for each signature exactly
//!   when `sᵢB − kᵢAᵢ = Rᵢ`, the equation `verify_strict` checks, does.
//!
//! When the batch equation fails, each signature of the batch is verified on its own with
//! `verify_strict`: one bad signature costs its batch a second pass, and refuses only its
//! own message (with `bad_signature`, from the core, as before).

use std::collections::HashMap;
use std::sync::mpsc;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use ketenpost_schemas::keys::{self, Context};
use rand::RngCore as _;
use sha2::{Digest as _, Sha512};

/// Most signatures verified in one batch.
pub const MAX_BATCH: usize = 64;

/// One signature to verify: the signed bytes as [`keys::verify_any`] frames them.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key it must verify with.
    pub key: VerifyingKey,
    /// The framed message ([`keys::framed`]).
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Signature,
}

/// Proof that a batch verified one header signature: the core's check 2 is answered
/// from it for exactly this key, these header bytes and this signature.
#[derive(Debug, Clone)]
pub struct PreVerified {
    key: VerifyingKey,
    header_bytes: Vec<u8>,
    signature: Signature,
}

impl PreVerified {
    /// Whether this proof covers `signature` over `header_bytes` by one of `keys`.
    pub fn covers(
        &self,
        keys: &[VerifyingKey],
        header_bytes: &[u8],
        signature: &Signature,
    ) -> bool {
        keys.contains(&self.key)
            && self.signature == *signature
            && self.header_bytes == header_bytes
    }
}

/// What [`verify_all`] learnt about a key: whether a batch may vouch for it.
fn key_batchable(key: &VerifyingKey) -> bool {
    let a = key.to_edwards();
    !a.is_small_order() && torsion_free(&a)
}

/// Whether `p` lies in the prime-order subgroup: `ℓ·P = 0`, computed as `(ℓ − 1)·P + P`
/// in variable time (`ℓ − 1` is the canonical form of the scalar −1; a point is public).
pub fn torsion_free(p: &EdwardsPoint) -> bool {
    (EdwardsPoint::vartime_multiscalar_mul([-Scalar::ONE], [*p]) + p).is_identity()
}

/// The parts of one signature a batch needs, when its cheap checks pass.
struct Parsed {
    r: EdwardsPoint,
    a: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// The cheap checks of `verify_strict` and the parts of the batch equation; `None` when
/// the signature must be verified on its own.
fn parse(item: &Item, batchable: bool) -> Option<Parsed> {
    if !batchable {
        return None;
    }
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*item.signature.s_bytes()))?;
    let r_bytes = CompressedEdwardsY(*item.signature.r_bytes());
    let r = r_bytes.decompress()?;
    if r.is_small_order() || r.compress() != r_bytes || !torsion_free(&r) {
        return None;
    }
    let mut h = Sha512::new();
    h.update(r_bytes.as_bytes());
    h.update(item.key.as_bytes());
    h.update(&item.message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Parsed {
        r,
        a: item.key.to_edwards(),
        s,
        k,
    })
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
    let scalars = std::iter::once(b_coefficient)
        .chain(zs.iter().copied())
        .chain(parts.iter().zip(&zs).map(|(p, z)| z * p.k));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(parts.iter().map(|p| p.r))
        .chain(parts.iter().map(|p| p.a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

/// Verify every item; `true` where its signature verifies as `verify_strict` would say.
/// Items that pass the cheap checks are verified in one batch; if the batch equation
/// fails (or for the others) each is verified on its own. `keys_seen` caches
/// [`key_batchable`] per key.
pub fn verify_all(items: &[Item], keys_seen: &mut HashMap<[u8; 32], bool>) -> Vec<bool> {
    if items.len() == 1 {
        return vec![strict(&items[0])];
    }
    let parsed: Vec<Option<Parsed>> = items
        .iter()
        .map(|it| {
            let ok = *keys_seen
                .entry(*it.key.as_bytes())
                .or_insert_with(|| key_batchable(&it.key));
            parse(it, ok)
        })
        .collect();
    let in_batch: Vec<&Parsed> = parsed.iter().flatten().collect();
    let batch_ok = in_batch.len() > 1 && batch_equation(&in_batch);
    items
        .iter()
        .zip(&parsed)
        .map(|(it, p)| (batch_ok && p.is_some()) || strict(it))
        .collect()
}

fn strict(item: &Item) -> bool {
    item.key
        .verify_strict(&item.message, &item.signature)
        .is_ok()
}

/// The header bytes and the signature of an encoded envelope (see
/// `ketenpost_schemas::envelope::Envelope::decode`), without decoding the rest; `None` when
/// its frame does not start as an envelope's within `limits`.
pub fn header_and_signature<'a>(
    bytes: &'a [u8],
    limits: &ketenpost_schemas::envelope::Limits,
) -> Option<(&'a [u8], Signature)> {
    if bytes.len() > limits.max_envelope {
        return None;
    }
    let (magic, rest) = bytes.split_first_chunk::<4>()?;
    if *magic != ketenpost_schemas::envelope::MAGIC {
        return None;
    }
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if len > limits.max_header || rest.len() < len + 64 {
        return None;
    }
    let (header, rest) = rest.split_at(len);
    let (signature, _) = rest.split_first_chunk::<64>()?;
    Some((header, Signature::from_bytes(signature)))
}

/// One signature waiting for its batch.
struct Job {
    item: Item,
    header_bytes: Vec<u8>,
    answer: tokio::sync::oneshot::Sender<Option<PreVerified>>,
}

/// The verifier thread: batches the header signatures of concurrent submissions.
#[derive(Clone)]
pub struct Verifier {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    /// Start the verifier thread; it ends when every handle is dropped.
    pub fn start() -> std::io::Result<Verifier> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ketenpost-verify".into())
            .spawn(move || {
                let mut keys_seen = HashMap::new();
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    if keys_seen.len() > 4096 {
                        keys_seen.clear();
                    }
                    let items: Vec<Item> = jobs.iter().map(|j| j.item.clone()).collect();
                    let ok = verify_all(&items, &mut keys_seen);
                    for (job, ok) in jobs.into_iter().zip(ok) {
                        let proof = ok.then(|| PreVerified {
                            key: job.item.key,
                            header_bytes: job.header_bytes,
                            signature: job.item.signature,
                        });
                        let _ = job.answer.send(proof);
                    }
                }
            })?;
        Ok(Verifier { tx })
    }

    /// Verify `signature` over `header_bytes` (an envelope header) with `key` in the next
    /// batch; `None` when it does not verify with that key (or the thread is gone): then
    /// the core verifies it itself.
    pub async fn header(
        &self,
        key: VerifyingKey,
        header_bytes: &[u8],
        signature: Signature,
    ) -> Option<PreVerified> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            item: Item {
                key,
                message: keys::framed(Context::Header, header_bytes),
                signature,
            },
            header_bytes: header_bytes.to_vec(),
            answer,
        };
        self.tx.send(job).ok()?;
        rx.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ketenpost_schemas::keys::generate_signing_key;

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

    #[test]
    fn torsion_free_agrees_with_curve25519_dalek() {
        let p = ED25519_BASEPOINT_POINT * Scalar::from(12345u64);
        assert!(torsion_free(&p) && p.is_torsion_free());
        for t in curve25519_dalek::constants::EIGHT_TORSION.iter().skip(1) {
            assert!(!torsion_free(&(p + t)));
            assert!(!(p + t).is_torsion_free());
        }
    }

    #[test]
    fn a_good_batch_verifies() {
        let mut seen = HashMap::new();
        assert_eq!(verify_all(&items(16), &mut seen), vec![true; 16]);
    }

    #[test]
    fn one_bad_signature_fails_only_itself() {
        let mut seen = HashMap::new();
        let mut v = items(16);
        // Another message under the same signature.
        v[5].message.push(b'!');
        // A signature by another key.
        v[9].key = v[10].key;
        let got = verify_all(&v, &mut seen);
        for (i, ok) in got.iter().enumerate() {
            assert_eq!(*ok, i != 5 && i != 9, "item {i}");
        }
    }

    #[test]
    fn a_signature_with_a_torsion_component_is_refused_as_verify_strict_does() {
        // R + T for a point T of order 8: the cofactored equation holds, verify_strict's
        // does not. The batch must not vouch for it.
        let k = generate_signing_key();
        let message = b"torsion".to_vec();
        let a = k.verifying_key();
        // Sign by hand with a nonce point that carries a torsion component.
        let r_scalar = Scalar::from_bytes_mod_order([7u8; 32]);
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let r_point = ED25519_BASEPOINT_POINT * r_scalar + torsion;
        let r_bytes = r_point.compress();
        let mut h = Sha512::new();
        h.update(r_bytes.as_bytes());
        h.update(a.as_bytes());
        h.update(&message);
        let kk = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let secret = k.to_scalar();
        let s = r_scalar + kk * secret;
        let signature = Signature::from_components(r_bytes.to_bytes(), s.to_bytes());
        let bad = Item {
            key: a,
            message,
            signature,
        };
        assert!(a.verify_strict(&bad.message, &bad.signature).is_err());
        let mut v = items(8);
        v.push(bad);
        let mut seen = HashMap::new();
        let got = verify_all(&v, &mut seen);
        assert_eq!(got, [vec![true; 8], vec![false]].concat());
    }
}
