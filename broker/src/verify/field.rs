//! Arithmetic in GF(2²⁵⁵ − 19), over the formally verified limb functions of
//! `fiat-crypto` (the same ones curve25519-dalek's `fiat` backend uses). Only what the
//! subgroup test needs ([`super::subgroup`]); every function is variable-time, which is
//! fine for what it handles: public points of signatures.

use fiat_crypto::curve25519_64 as fiat;

/// A field element, reduced to fiat's tight bounds.
#[derive(Clone, Copy)]
pub struct Fe(fiat::fiat_25519_tight_field_element);

impl std::fmt::Debug for Fe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self
            .to_bytes()
            .iter()
            .rev()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "Fe(0x{hex})")
    }
}

impl Fe {
    pub const ZERO: Fe = Fe(fiat::fiat_25519_tight_field_element([0; 5]));
    pub const ONE: Fe = Fe(fiat::fiat_25519_tight_field_element([1, 0, 0, 0, 0]));

    /// A small integer.
    pub fn from_u64(n: u64) -> Fe {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        Fe::from_bytes(&b)
    }

    /// The element whose little-endian encoding is `bytes`, the top bit ignored (as in a
    /// point's encoding, where it is the sign of `x`).
    pub fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut b = *bytes;
        b[31] &= 0x7f;
        let mut out = fiat::fiat_25519_tight_field_element([0; 5]);
        fiat::fiat_25519_from_bytes(&mut out, &b);
        Fe(out)
    }

    /// The canonical little-endian encoding.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        fiat::fiat_25519_to_bytes(&mut out, &self.0);
        out
    }

    fn loose(self) -> fiat::fiat_25519_loose_field_element {
        let mut out = fiat::fiat_25519_loose_field_element([0; 5]);
        fiat::fiat_25519_relax(&mut out, &self.0);
        out
    }

    fn carry(l: fiat::fiat_25519_loose_field_element) -> Fe {
        let mut out = fiat::fiat_25519_tight_field_element([0; 5]);
        fiat::fiat_25519_carry(&mut out, &l);
        Fe(out)
    }

    pub fn add(self, rhs: Fe) -> Fe {
        let mut out = fiat::fiat_25519_loose_field_element([0; 5]);
        fiat::fiat_25519_add(&mut out, &self.0, &rhs.0);
        Fe::carry(out)
    }

    pub fn sub(self, rhs: Fe) -> Fe {
        let mut out = fiat::fiat_25519_loose_field_element([0; 5]);
        fiat::fiat_25519_sub(&mut out, &self.0, &rhs.0);
        Fe::carry(out)
    }

    pub fn neg(self) -> Fe {
        let mut out = fiat::fiat_25519_loose_field_element([0; 5]);
        fiat::fiat_25519_opp(&mut out, &self.0);
        Fe::carry(out)
    }

    pub fn mul(self, rhs: Fe) -> Fe {
        let mut out = fiat::fiat_25519_tight_field_element([0; 5]);
        fiat::fiat_25519_carry_mul(&mut out, &self.loose(), &rhs.loose());
        Fe(out)
    }

    pub fn square(self) -> Fe {
        let mut out = fiat::fiat_25519_tight_field_element([0; 5]);
        fiat::fiat_25519_carry_square(&mut out, &self.loose());
        Fe(out)
    }

    /// Half of this element.
    pub fn half(self) -> Fe {
        // (p + 1) / 2 is the inverse of 2.
        self.mul(constants().half)
    }

    /// `self` raised to the little-endian exponent `e` (square and multiply; for
    /// constants only).
    fn pow(self, e: &[u8; 32]) -> Fe {
        let mut acc = Fe::ONE;
        for byte in e.iter().rev() {
            for bit in (0..8).rev() {
                acc = acc.square();
                if (byte >> bit) & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        acc
    }

    pub fn equals(self, rhs: Fe) -> bool {
        self.to_bytes() == rhs.to_bytes()
    }

    /// A square root of `self` when it is a square; otherwise a square root of `2·self`
    /// (2 is not a square modulo p, so exactly one of the two exists for a non-zero
    /// element). The flag says which: `true` for a root of `self`.
    pub fn sqrt_or_twice(self) -> (Fe, bool) {
        Fe::sqrt_or_twice_all(&[self])[0]
    }

    /// [`Fe::sqrt_or_twice`] of each value, the exponentiations side by side.
    pub fn sqrt_or_twice_all(values: &[Fe]) -> Vec<(Fe, bool)> {
        let c = constants();
        // b = z^((p + 3) / 8); b² = z · z^((p − 1) / 4), and that last power is 1 or −1
        // for a square, i or −i otherwise.
        let pow = pow_p58(values);
        values
            .iter()
            .zip(pow)
            .map(|(&z, pow)| {
                let b = pow.mul(z);
                let b2 = b.square();
                if b2.equals(z) {
                    (b, true)
                } else if b2.equals(z.neg()) {
                    (b.mul(c.sqrt_m1), true)
                } else if b2.equals(z.mul(c.sqrt_m1)) {
                    // 2·z = −2i·b² = ((1 − i)·b)²
                    (b.mul(Fe::ONE.sub(c.sqrt_m1)), false)
                } else {
                    // b² = −i·z: 2·z = 2i·b² = ((1 + i)·b)²
                    (b.mul(Fe::ONE.add(c.sqrt_m1)), false)
                }
            })
            .collect()
    }

    /// `self^((p − 1) / 4)`: 1 exactly when `self` is a non-zero fourth power.
    #[cfg(test)]
    pub fn quartic_character(self) -> Fe {
        Fe::quartic_character_all(&[self])[0]
    }

    /// `z^((p − 1) / 4)` of each value `z`: 1 exactly when `z` is a non-zero fourth
    /// power; the exponentiations side by side.
    pub fn quartic_character_all(values: &[Fe]) -> Vec<Fe> {
        let pow = pow_p58(values);
        values
            .iter()
            .zip(pow)
            .map(|(&z, pow)| pow.square().mul(z))
            .collect()
    }

    /// `√(u/v)` when `u/v` is a square (with `v` not zero).
    #[cfg(test)]
    pub fn sqrt_ratio(u: Fe, v: Fe) -> Option<Fe> {
        Fe::sqrt_ratio_all(&[(u, v)])[0]
    }

    /// For each `(u, v)`, `√(u/v)` when `u/v` is a square (with `v` not zero), with one
    /// exponentiation: `x = u·v³·(u·v⁷)^((p − 5)/8)`, then `x` or `x·√−1` if either
    /// squares to `u/v`; the exponentiations side by side.
    pub fn sqrt_ratio_all(ratios: &[(Fe, Fe)]) -> Vec<Option<Fe>> {
        let v3: Vec<Fe> = ratios.iter().map(|(_, v)| v.square().mul(*v)).collect();
        let uv7: Vec<Fe> = ratios
            .iter()
            .zip(&v3)
            .map(|((u, v), v3)| u.mul(v3.square().mul(*v)))
            .collect();
        let pow = pow_p58(&uv7);
        ratios
            .iter()
            .zip(v3)
            .zip(pow)
            .map(|((&(u, v), v3), pow)| {
                let x = u.mul(v3).mul(pow);
                let vx2 = v.mul(x.square());
                if vx2.equals(u) {
                    Some(x)
                } else if vx2.equals(u.neg()) {
                    Some(x.mul(constants().sqrt_m1))
                } else {
                    None
                }
            })
            .collect()
    }

    /// A square root of `self`, if it is a square.
    pub fn sqrt(self) -> Option<Fe> {
        match self.sqrt_or_twice() {
            (r, true) => Some(r),
            _ => None,
        }
    }

    /// `1 / self` (zero for zero); for constants only.
    fn invert(self) -> Fe {
        // p − 2 = 2²⁵⁵ − 21
        let mut e = [0xffu8; 32];
        e[0] = 0xeb;
        e[31] = 0x7f;
        self.pow(&e)
    }
}

/// `z^(2²⁵² − 3)`, i.e. `z^((p − 5) / 8)`, of each value. With AVX-512 IFMA or AVX2 they
/// go to curve25519-dalek's vector field elements
/// ([`curve25519_dalek::ketenpost::pow_p58_all`], our addition to the vendored crate),
/// four values to a vector and several vectors interleaved; otherwise, and for fewer than
/// three, to fiat-crypto's, two side by side.
fn pow_p58(z: &[Fe]) -> Vec<Fe> {
    // One or two values are done sooner by fiat-crypto: a vector's chain of squarings
    // takes about twice as long as a scalar one.
    if z.len() >= 3 {
        let limbs: Vec<[u64; 5]> = z.iter().map(|f| f.0 .0).collect();
        let mut out = vec![[0u64; 5]; z.len()];
        if curve25519_dalek::ketenpost::pow_p58_all(&limbs, &mut out) {
            // Weakly reduced limbs (below 2⁵¹ + 2¹⁸) are within fiat's tight bounds.
            return out
                .into_iter()
                .map(|l| Fe(fiat::fiat_25519_tight_field_element(l)))
                .collect();
        }
    }
    let mut out = Vec::with_capacity(z.len());
    let mut pairs = z.chunks_exact(2);
    for p in &mut pairs {
        out.extend(pow_p58_fiat([p[0], p[1]]));
    }
    for &last in pairs.remainder() {
        out.extend(pow_p58_fiat([last]));
    }
    out
}

/// [`pow_p58`] with fiat-crypto, the lanes side by side, with the usual addition chain.
fn pow_p58_fiat<const N: usize>(z: [Fe; N]) -> [Fe; N] {
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

/// Each lane squared `n` times. The lanes' squarings are independent, so the processor
/// overlaps them: a squaring waits for the one before (its result is the next one's
/// input), and two lanes take 16 ns a squaring of both against 9.7 ns for one
/// (2026-12-04; three or four lanes no better than two).
fn square_n<const N: usize>(mut lanes: [Fe; N], n: u32) -> [Fe; N] {
    for _ in 0..n {
        for x in &mut lanes {
            *x = x.square();
        }
    }
    lanes
}

/// Lane by lane products.
fn mul<const N: usize>(a: [Fe; N], b: [Fe; N]) -> [Fe; N] {
    std::array::from_fn(|i| a[i].mul(b[i]))
}

#[derive(Debug)]
pub struct Constants {
    /// (p + 1) / 2, the inverse of 2.
    half: Fe,
    /// √−1 = 2^((p − 1) / 4).
    pub sqrt_m1: Fe,
    /// The curve's `d` = −121665 / 121666.
    pub d: Fe,
}

pub fn constants() -> &'static Constants {
    static C: std::sync::OnceLock<Constants> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        // (p − 1) / 4 = 2²⁵³ − 5
        let mut e = [0xffu8; 32];
        e[0] = 0xfb;
        e[31] = 0x1f;
        let sqrt_m1 = Fe::from_u64(2).pow(&e);
        // (p + 1) / 2 = 2²⁵⁴ − 9
        let mut h = [0xffu8; 32];
        h[0] = 0xf7;
        h[31] = 0x3f;
        let d = Fe::from_u64(121_665)
            .neg()
            .mul(Fe::from_u64(121_666).invert());
        Constants {
            half: Fe::from_bytes(&h),
            sqrt_m1,
            d,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_what_they_claim() {
        let c = constants();
        assert!(c.sqrt_m1.square().equals(Fe::ONE.neg()));
        assert!(c.half.add(c.half).equals(Fe::ONE));
        assert!(c
            .d
            .mul(Fe::from_u64(121_666))
            .equals(Fe::from_u64(121_665).neg()));
        // The curve's d as curve25519-dalek encodes it (RFC 8032, section 5.1).
        let mut rfc = [0u8; 32];
        let hex = "a3785913ca4deb75abd841414d0a700098e879777940c78c73fe6f2bee6c0352";
        for (i, b) in rfc.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        assert_eq!(c.d.to_bytes(), rfc);
    }

    #[test]
    fn square_roots_and_their_twins() {
        let two = Fe::from_u64(2);
        for n in 1..200u64 {
            let x = Fe::from_u64(n)
                .mul(Fe::from_u64(n * 7 + 3))
                .add(Fe::from_u64(n));
            let (r, square) = x.sqrt_or_twice();
            if square {
                assert!(r.square().equals(x), "{n}");
            } else {
                assert!(r.square().equals(x.mul(two)), "{n}");
                assert!(x.sqrt().is_none());
            }
            let s = x.square();
            assert!(s.sqrt().is_some_and(|r| r.square().equals(s)), "{n}");
        }
        assert!(two.sqrt().is_none(), "2 is not a square modulo p");
        assert!(Fe::ZERO.sqrt().is_some_and(|r| r.equals(Fe::ZERO)));
    }

    #[test]
    fn ratios_and_fourth_powers() {
        for n in 2..100u64 {
            let (u, v) = (Fe::from_u64(n * n + 5), Fe::from_u64(3 * n + 1));
            match Fe::sqrt_ratio(u, v) {
                Some(x) => assert!(v.mul(x.square()).equals(u), "{n}"),
                None => assert!(u.mul(v).sqrt().is_none(), "{n}"),
            }
            let x = Fe::from_u64(n);
            assert!(x.square().square().quartic_character().equals(Fe::ONE));
            // 2 is not a square, so 2·x⁴ is not a fourth power.
            let not_fourth = x.square().square().mul(Fe::from_u64(2));
            assert!(!not_fourth.quartic_character().equals(Fe::ONE));
        }
    }

    /// With AVX-512 IFMA or AVX2 (both where the processor has both), four values to a
    /// vector and several vectors at once; the result is fiat-crypto's one at a time, for
    /// every count up to beyond two full rounds of interleaved vectors (so every padding of
    /// a last vector), for edge values and limbs at the top of fiat's tight bounds.
    #[test]
    fn exponentiations_agree_however_many_at_once() {
        let top = (1u64 << 51) + (1 << 47);
        let mut values = vec![
            Fe::ZERO,
            Fe::ONE,
            Fe::ONE.neg(),
            Fe::from_bytes(&[0xff; 32]),
            Fe(fiat::fiat_25519_tight_field_element([top; 5])),
        ];
        let mut x = Fe::from_u64(3);
        while values.len() < 41 {
            x = x.square().add(Fe::from_u64(values.len() as u64));
            values.push(x);
        }
        let limbs: Vec<[u64; 5]> = values.iter().map(|f| f.0 .0).collect();
        for n in 0..=values.len() {
            let got = pow_p58(&values[..n]);
            assert_eq!(got.len(), n);
            // The AVX2 path too where the processor would take AVX-512 IFMA.
            let mut avx2 = vec![[0u64; 5]; n];
            let with_avx2 = curve25519_dalek::ketenpost::pow_p58_all_avx2(&limbs[..n], &mut avx2);
            for (i, (g, &v)) in got.iter().zip(&values[..n]).enumerate() {
                let [want] = pow_p58_fiat([v]);
                assert!(g.equals(want), "value {i} of {n}");
                if with_avx2 {
                    let a = Fe(fiat::fiat_25519_tight_field_element(avx2[i]));
                    assert!(a.equals(want), "value {i} of {n}, AVX2");
                }
            }
        }
    }

    #[test]
    fn encoding_round_trips_and_reduces() {
        let x = Fe::from_u64(0x1234_5678_9abc_def0).square().square();
        assert_eq!(Fe::from_bytes(&x.to_bytes()).to_bytes(), x.to_bytes());
        // p itself encodes zero.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(Fe::from_bytes(&p).equals(Fe::ZERO));
    }
}
