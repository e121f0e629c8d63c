//! ketenpost: field exponentiations four at a time, on the vector backends' packed field
//! elements (the IFMA backend's `F51x4Reduced`, the AVX2 backend's `FieldElement2625x4`),
//! for a caller that takes many square roots and characters of public values (decoding
//! points, testing subgroup membership).
//!
//! Field elements cross this interface as five little-endian limbs of 51 bits (the
//! unsaturated form of this crate's `u64` backend, and of fiat-crypto's tight field
//! elements). Which instructions compute depends on the processor only; how long it takes
//! does not depend on the values.

/// A field element as five limbs of 51 bits, `Σ limbs[i]·2^(51·i)`, each limb below
/// 2^52; results are weakly reduced: each limb below 2^51 + 2^18.
pub type Limbs = [u64; 5];

/// How many vectors of four one exponentiation chain interleaves: a squaring's latency
/// is several times its throughput, so independent chains fill the gaps.
const GROUPS: usize = 3;

/// `z^((p − 5)/8)` (that is, `z^(2^252 − 3)`) of each field element of `z`, written to
/// `out` (of the same length), with the addition chain of this crate's `pow_p58`, four
/// elements to a vector: with AVX-512 IFMA where the processor has it (and the compiler
/// knows it: Rust 1.89 and later, see `build.rs`), else with AVX2; `false`, with nothing
/// written, when it has neither (or the crate was built without the SIMD backend), and the
/// caller computes it its own way.
pub fn pow_p58_all(z: &[Limbs], out: &mut [Limbs]) -> bool {
    #[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
    {
        pow_p58_with(Vectors::here(), z, out)
    }
    #[cfg(not(all(curve25519_dalek_backend = "simd", target_arch = "x86_64")))]
    {
        let _ = (z, out);
        false
    }
}

/// [`pow_p58_all`] with AVX2 even where the processor has AVX-512 IFMA, so that a caller
/// can test and measure both; `false` without AVX2.
pub fn pow_p58_all_avx2(z: &[Limbs], out: &mut [Limbs]) -> bool {
    #[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
    {
        pow_p58_with(Vectors::avx2(), z, out)
    }
    #[cfg(not(all(curve25519_dalek_backend = "simd", target_arch = "x86_64")))]
    {
        let _ = (z, out);
        false
    }
}

#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
fn pow_p58_with(vectors: Option<Vectors>, z: &[Limbs], out: &mut [Limbs]) -> bool {
    if let Some(vectors) = vectors.filter(|_| z.len() == out.len()) {
        // Full rounds of GROUPS vectors, then the rest as one round of as many vectors as
        // it needs, its last padded with copies of its last element.
        for (z, out) in z.chunks(4 * GROUPS).zip(out.chunks_mut(4 * GROUPS)) {
            match z.len().div_ceil(4) {
                1 => round::<1>(vectors, z, out),
                2 => round::<2>(vectors, z, out),
                3 => round::<3>(vectors, z, out),
                _ => round::<GROUPS>(vectors, z, out),
            }
        }
        return true;
    }
    false
}

/// The vector instructions the processor has, best first. A value is made only once the
/// processor was found to have them ([`Vectors::here`], [`Vectors::avx2`]): it is what
/// [`round`] relies on to call the functions compiled for them.
#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Vectors {
    /// AVX-512 IFMA (52-bit multiply-add) on 256-bit registers: the IFMA backend's field
    /// elements, five 52-bit limbs a lane.
    #[cfg(nightly)]
    Ifma,
    /// AVX2: the AVX2 backend's field elements, ten 25.5-bit limbs a lane.
    Avx2,
}

#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
impl Vectors {
    fn here() -> Option<Vectors> {
        #[cfg(nightly)]
        {
            cpufeatures::new!(cpuid_ifma, "avx512ifma", "avx512vl");
            if cpuid_ifma::get() {
                return Some(Vectors::Ifma);
            }
        }
        Vectors::avx2()
    }

    fn avx2() -> Option<Vectors> {
        cpufeatures::new!(cpuid_avx2, "avx2");
        cpuid_avx2::get().then_some(Vectors::Avx2)
    }
}

/// One round of [`pow_p58_all`]: `z` (at most `4·G` elements, more than `4·(G − 1)`) as
/// `G` vectors, the last padded, with the instructions `vectors` says the processor has.
#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
fn round<const G: usize>(vectors: Vectors, z: &[Limbs], out: &mut [Limbs]) {
    let last = z[z.len() - 1];
    let groups: [[Limbs; 4]; G] =
        core::array::from_fn(|g| core::array::from_fn(|i| *z.get(4 * g + i).unwrap_or(&last)));
    let done = match vectors {
        #[cfg(nightly)]
        Vectors::Ifma => ifma::pow_p58(&groups),
        Vectors::Avx2 => avx2::pow_p58(&groups),
    };
    for (o, r) in out.iter_mut().zip(done.iter().flatten()) {
        *o = *r;
    }
}

/// `z^(2^252 − 3)` with the addition chain of this crate's `pow_p58`, over any
/// representation with a squaring and a product.
#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
#[inline(always)]
fn chain<T: Copy>(z: T, square_n: impl Fn(T, u32) -> T, mul: impl Fn(T, T) -> T) -> T {
    let z2 = square_n(z, 1);
    let z9 = mul(square_n(z2, 2), z);
    let z11 = mul(z9, z2);
    let z_5_0 = mul(square_n(z11, 1), z9); // 2^5 - 1
    let z_10_0 = mul(square_n(z_5_0, 5), z_5_0);
    let z_20_0 = mul(square_n(z_10_0, 10), z_10_0);
    let z_40_0 = mul(square_n(z_20_0, 20), z_20_0);
    let z_50_0 = mul(square_n(z_40_0, 10), z_10_0);
    let z_100_0 = mul(square_n(z_50_0, 50), z_50_0);
    let z_200_0 = mul(square_n(z_100_0, 100), z_100_0);
    let z_250_0 = mul(square_n(z_200_0, 50), z_50_0);
    mul(square_n(z_250_0, 2), z)
}

#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64", nightly))]
mod ifma {
    use super::Limbs;
    use crate::backend::serial::u64::field::FieldElement51;
    use crate::backend::vector::ifma::field::{F51x4Reduced, F51x4Unreduced};
    use curve25519_dalek_derive::unsafe_target_feature;

    /// [`super::pow_p58_all`] of each group of four, the groups' chains interleaved. Only
    /// to be called when the processor has AVX-512 IFMA and VL.
    #[unsafe_target_feature("avx512ifma,avx512vl")]
    pub(super) fn pow_p58<const G: usize>(z: &[[Limbs; 4]; G]) -> [[Limbs; 4]; G] {
        // Limbs below 2^52 (the multiply-adds read 52 bits of each), reduced to below
        // 2^51 + 2^18 by the conversion; every square and product is reduced the same way
        // before it is used again.
        let z: [F51x4Reduced; G] = core::array::from_fn(|g| {
            F51x4Reduced::from(F51x4Unreduced::new(
                &FieldElement51(z[g][0]),
                &FieldElement51(z[g][1]),
                &FieldElement51(z[g][2]),
                &FieldElement51(z[g][3]),
            ))
        });
        let square_n = |mut x: [F51x4Reduced; G], n: u32| {
            for _ in 0..n {
                for v in &mut x {
                    *v = F51x4Reduced::from(v.square());
                }
            }
            x
        };
        let mul = |a: [F51x4Reduced; G], b: [F51x4Reduced; G]| {
            let out: [F51x4Reduced; G] =
                core::array::from_fn(|g| F51x4Reduced::from(&a[g] * &b[g]));
            out
        };
        let out = super::chain(z, square_n, mul);
        core::array::from_fn(|g| {
            F51x4Unreduced::from(out[g])
                .split()
                .map(|f| FieldElement51::reduce(f.0).0)
        })
    }
}

#[cfg(all(curve25519_dalek_backend = "simd", target_arch = "x86_64"))]
mod avx2 {
    use super::Limbs;
    use crate::backend::serial::u64::field::FieldElement51;
    use crate::backend::vector::avx2::field::FieldElement2625x4;
    use curve25519_dalek_derive::unsafe_target_feature;

    /// [`super::pow_p58_all`] of each group of four, the groups' chains interleaved (a
    /// squaring's latency is several times its throughput). Only to be called when the
    /// processor has AVX2.
    #[unsafe_target_feature("avx2")]
    pub(super) fn pow_p58<const G: usize>(z: &[[Limbs; 4]; G]) -> [[Limbs; 4]; G] {
        // `new` splits each limb at bit 26 (the high part of a limb below 2^52 fits a u32)
        // and reduces.
        let z: [FieldElement2625x4; G] = core::array::from_fn(|g| {
            FieldElement2625x4::new(
                &FieldElement51(z[g][0]),
                &FieldElement51(z[g][1]),
                &FieldElement51(z[g][2]),
                &FieldElement51(z[g][3]),
            )
        });
        // Every product and square leaves coefficients bounded with b < 0.007, below the
        // preconditions of `square` (1.5) and of both sides of a product (2.5, 1.75).
        let square_n = |mut x: [FieldElement2625x4; G], n: u32| {
            for _ in 0..n {
                for v in &mut x {
                    *v = v.square();
                }
            }
            x
        };
        let mul = |a: [FieldElement2625x4; G], b: [FieldElement2625x4; G]| {
            let out: [FieldElement2625x4; G] = core::array::from_fn(|g| &a[g] * &b[g]);
            out
        };
        let out = super::chain(z, square_n, mul);
        // `split` gives limbs of up to 52 bits; one carry pass brings them to the bound
        // promised above.
        core::array::from_fn(|g| out[g].split().map(|f| FieldElement51::reduce(f.0).0))
    }
}
