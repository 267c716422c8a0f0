//! Sixteen F32 lanes, as plain arrays (the definition) and as AVX-512
//! registers, with the same IEEE operations lane by lane, and the `exp`
//! both use.

use super::LANES;

/// Sixteen lanes of F32 arithmetic, the same IEEE operations lane by lane
/// in every implementation.
pub(super) trait Lanes: Copy {
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// `if a > b { a } else { b }`.
    unsafe fn max(a: Self, b: Self) -> Self;
    /// 0 where `m` is -inf, else `m`.
    unsafe fn base(m: Self) -> Self;
    /// [`exp`], lane by lane.
    unsafe fn exp(x: Self) -> Self;
}

/// The definition: one scalar operation per lane.
#[derive(Clone, Copy)]
pub(super) struct Scalar([f32; LANES]);

impl Scalar {
    fn map(a: Self, f: impl Fn(f32) -> f32) -> Self {
        Scalar(a.0.map(f))
    }

    fn zip(a: Self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Scalar(std::array::from_fn(|l| f(a.0[l], b.0[l])))
    }
}

impl Lanes for Scalar {
    unsafe fn splat(x: f32) -> Self {
        Scalar([x; LANES])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller gives 16 floats at `p`.
        Scalar(unsafe { p.cast::<[f32; LANES]>().read_unaligned() })
    }
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller gives room for 16 floats at `p`.
        unsafe { p.cast::<[f32; LANES]>().write_unaligned(self.0) }
    }
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Scalar(std::array::from_fn(|l| a.0[l].mul_add(b.0[l], c.0[l])))
    }
    unsafe fn mul(a: Self, b: Self) -> Self {
        Scalar::zip(a, b, |x, y| x * y)
    }
    unsafe fn add(a: Self, b: Self) -> Self {
        Scalar::zip(a, b, |x, y| x + y)
    }
    unsafe fn sub(a: Self, b: Self) -> Self {
        Scalar::zip(a, b, |x, y| x - y)
    }
    unsafe fn max(a: Self, b: Self) -> Self {
        Scalar::zip(a, b, |x, y| if x > y { x } else { y })
    }
    unsafe fn base(m: Self) -> Self {
        Scalar::map(m, |x| if x == f32::NEG_INFINITY { 0.0 } else { x })
    }
    unsafe fn exp(x: Self) -> Self {
        Scalar::map(x, exp)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{Lanes, EXP};
    use std::arch::x86_64::*;

    /// Sixteen lanes in one AVX-512 register.
    #[derive(Clone, Copy)]
    pub struct V(__m512);

    // SAFETY (every method): AVX-512 F intrinsics, compiled only into
    // `unit_avx512`, which runs where the CPU has AVX-512 F; memory
    // accesses are unaligned loads and stores of 16 floats the callers
    // provide.
    impl Lanes for V {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f32) -> Self {
            V(_mm512_set1_ps(x))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: see the impl.
            V(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: see the impl.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            V(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn mul(a: Self, b: Self) -> Self {
            V(_mm512_mul_ps(a.0, b.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn add(a: Self, b: Self) -> Self {
            V(_mm512_add_ps(a.0, b.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn sub(a: Self, b: Self) -> Self {
            V(_mm512_sub_ps(a.0, b.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn max(a: Self, b: Self) -> Self {
            // vmaxps: the first operand where it is greater, else the second.
            V(_mm512_max_ps(a.0, b.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn base(m: Self) -> Self {
            let hidden = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m.0, _mm512_set1_ps(f32::NEG_INFINITY));
            V(_mm512_mask_mov_ps(m.0, hidden, _mm512_setzero_ps()))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn exp(x: Self) -> Self {
            let seen = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x.0, _mm512_set1_ps(EXP.low));
            // min(high, x): `high` where it is less than x, else x.
            let x = _mm512_min_ps(_mm512_set1_ps(EXP.high), x.0);
            let x = _mm512_maskz_mov_ps(seen, x);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(EXP.log2e)),
            );
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP.ln2_hi), x);
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP.ln2_lo), r);
            let mut y = _mm512_set1_ps(EXP.poly[0]);
            for c in &EXP.poly[1..] {
                y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
            }
            let y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, r);
            let y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            let pow2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e));
            V(_mm512_maskz_mul_ps(seen, y, pow2))
        }
    }
}

/// [`exp`]'s constants: Cephes' single precision polynomial.
struct ExpConstants {
    low: f32,
    high: f32,
    log2e: f32,
    ln2_hi: f32,
    ln2_lo: f32,
    poly: [f32; 6],
}

const EXP: ExpConstants = ExpConstants {
    low: -87.33,
    high: 88.37,
    log2e: std::f32::consts::LOG2_E,
    ln2_hi: 0.693_359_4,
    ln2_lo: -2.121_944_4e-4,
    poly: [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ],
};

/// `e^x` in single precision (about 1 ulp); exactly 1 at 0 and exactly 0
/// below -87.33 (and at -inf), which the skipped-tile equivalence in the
/// module docs relies on. The vector implementations repeat these
/// operations lane by lane.
pub fn exp(x: f32) -> f32 {
    let seen = x >= EXP.low;
    let x = if EXP.high < x { EXP.high } else { x };
    let x = if seen { x } else { 0.0 };
    let n = (x * EXP.log2e).round_ties_even();
    let r = n.mul_add(-EXP.ln2_lo, n.mul_add(-EXP.ln2_hi, x));
    let mut y = EXP.poly[0];
    for c in &EXP.poly[1..] {
        y = y.mul_add(r, *c);
    }
    let y = (y * r).mul_add(r, r) + 1.0;
    let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if seen {
        y * pow2
    } else {
        0.0
    }
}
