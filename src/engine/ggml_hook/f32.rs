//! The batched F32 kernel: each output element with exactly
//! `ggml_vec_dot_f32`'s arithmetic (x86-64-v3 build: four 8-lane FMA
//! accumulators over 32-float steps, then ggml's fixed reduction), but one
//! weight row against up to 12 columns at a time, so a weight is loaded
//! once per row instead of once per column, with the rows prefetched ahead
//! so memory streams while the FMAs run. Where the CPU has AVX-512 the same
//! arithmetic runs two of ggml's 8-lane accumulators per 16-lane register
//! (lane-wise FMAs round the same), at twice the FMA throughput. The unit
//! tests compare every kernel bit for bit with ggml's own `ggml_vec_dot_f32`.

use super::{Kernel, Shape};
use std::arch::x86_64::*;

/// `GGML_F32_STEP` of ggml's AVX build: four 8-lane vectors per step.
const STEP: usize = 32;
/// Floats ahead of the current step to prefetch along a weight row.
const PREFETCH: usize = 1024;
/// Fewest columns per pass over a thread's rows: each weight row is read
/// from memory once per pass, the pass's columns stay in L2.
const PASS: usize = 48;
/// Bytes of columns one pass may hold in L2 (half of a 2 MiB L2), which
/// lets short rows take more columns per pass than [`PASS`]: a verified
/// handoff's prompt and answer (50-odd columns) then read each weight row
/// once, not twice. Measured on the 2-core VM (480 MB of L3) with `eval
/// cascade` on a forced escalation: a verified escalation took 67-69 ms
/// against 69-71 ms with passes of 48 columns.
const L2_COLUMNS: usize = 1024 * 1024;

/// Columns per pass for rows of `k` floats.
fn pass_columns(k: usize) -> usize {
    (L2_COLUMNS / (4 * k.max(1))).max(PASS)
}
/// Bytes of columns one AVX-512 tile may use, so they stay in L1 while
/// the row streams past.
const L1_COLUMNS: usize = 32 * 1024;

pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Only lengths ggml's loop covers with no scalar leftovers.
pub fn supports(k: i64) -> bool {
    k > 0 && k % STEP as i64 == 0
}

/// `GGML_F32x8_REDUCE` of ggml's four accumulators, given `s0 + s2` and
/// `s1 + s3`.
#[inline(always)]
unsafe fn reduce(x0: __m256, x1: __m256) -> f32 {
    // SAFETY: register-only intrinsics of this build's baseline (AVX2, or
    // the features this function enables); no memory is touched.
    unsafe {
        let x0 = _mm256_add_ps(x0, x1);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps(x0, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
    }
}

/// ggml's reduction of one output held in 16-lane registers: `lo` holds
/// accumulators 0 and 1 side by side, `hi` 2 and 3; `[s0 + s2 | s1 + s3]`,
/// then [`reduce`] of the two halves.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce16(lo: __m512, hi: __m512) -> f32 {
    let x = _mm512_castps_pd(_mm512_add_ps(lo, hi));
    let x0 = _mm256_castpd_ps(_mm512_castpd512_pd256(x));
    let x1 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(x));
    // SAFETY: register-only intrinsics; AVX-512 F is enabled here.
    unsafe { reduce(x0, x1) }
}

/// Calls `$tile::<N>` with `N` the runtime `$cols`, from the listed sizes.
macro_rules! dispatch {
    ($tile:ident, $cols:expr, [$($n:literal),+], $k:expr, $row:expr, $col:expr, $out:expr, $ldc:expr, $pf:expr) => {
        match $cols {
            $($n => $tile::<$n>($k, $row, std::array::from_fn($col), $out, $ldc, $pf),)+
            _ => unreachable!("column tiles hold 1 to {} columns", [$($n),+].len()),
        }
    };
}

/// One weight row against `N` columns with ggml's arithmetic: per column
/// four 8-lane accumulators, the row's 32 floats per step loaded once
/// for all `N` columns (whose values are FMA memory operands). With
/// `prefetch` the row is fetched [`PREFETCH`] floats ahead.
#[inline(always)]
unsafe fn tile_avx2<const N: usize>(
    k: usize,
    a: *const f32,
    b: [*const f32; N],
    c: *mut f32,
    ldc: usize,
    prefetch: bool,
) {
    // SAFETY: the caller keeps this function's contract: `a`, `b` and `c` are valid for the
    // shape's rows, columns and strides, and the CPU has the enabled target features (chosen at
    // dispatch by kernel()).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut i = 0;
        while i < k {
            if prefetch {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i + PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i + PREFETCH + 16).cast());
            }
            let av: [__m256; 4] = std::array::from_fn(|q| _mm256_loadu_ps(a.add(i + 8 * q)));
            for (j, sums) in acc.iter_mut().enumerate() {
                for (q, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm256_fmadd_ps(av[q], _mm256_loadu_ps(b[j].add(i + 8 * q)), *sum);
                }
            }
            i += STEP;
        }
        for (j, s) in acc.iter().enumerate() {
            *c.add(j * ldc) = reduce(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        }
    }
}

/// [`tile_avx2`] with 16-lane registers: `lo` holds ggml's accumulators
/// 0 and 1 side by side, `hi` 2 and 3, so one 16-float load and one FMA
/// do the work of two, lane for lane the same.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const N: usize>(
    k: usize,
    a: *const f32,
    b: [*const f32; N],
    c: *mut f32,
    ldc: usize,
    prefetch: bool,
) {
    // SAFETY: the caller keeps this function's contract: `a`, `b` and `c` are valid for the
    // shape's rows, columns and strides, and the CPU has the enabled target features (chosen at
    // dispatch by kernel()).
    unsafe {
        let mut lo = [_mm512_setzero_ps(); N];
        let mut hi = [_mm512_setzero_ps(); N];
        let mut i = 0;
        while i < k {
            if prefetch {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i + PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i + PREFETCH + 16).cast());
            }
            let (a0, a1) = (_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(a.add(i + 16)));
            for j in 0..N {
                lo[j] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b[j].add(i)), lo[j]);
                hi[j] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b[j].add(i + 16)), hi[j]);
            }
            i += STEP;
        }
        for j in 0..N {
            *c.add(j * ldc) = reduce16(lo[j], hi[j]);
        }
    }
}

/// [`tile_avx512`] for two weight rows at once: each column register
/// loaded once for both rows, so a step's loads per FMA nearly halve
/// (the accumulators, and so every output's arithmetic, are the same).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pair_avx512<const N: usize>(
    k: usize,
    a: [*const f32; 2],
    b: [*const f32; N],
    c: *mut f32,
    ldc: usize,
    prefetch: bool,
) {
    // SAFETY: as tile_avx512's, for both rows; their outputs are the
    // adjacent elements `c[j * ldc]` and `c[j * ldc + 1]`.
    unsafe {
        let mut lo = [[_mm512_setzero_ps(); N]; 2];
        let mut hi = [[_mm512_setzero_ps(); N]; 2];
        let mut i = 0;
        while i < k {
            if prefetch {
                for row in a {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(i + PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(i + PREFETCH + 16).cast());
                }
            }
            let r0 = [
                _mm512_loadu_ps(a[0].add(i)),
                _mm512_loadu_ps(a[0].add(i + 16)),
            ];
            let r1 = [
                _mm512_loadu_ps(a[1].add(i)),
                _mm512_loadu_ps(a[1].add(i + 16)),
            ];
            for j in 0..N {
                let (b0, b1) = (
                    _mm512_loadu_ps(b[j].add(i)),
                    _mm512_loadu_ps(b[j].add(i + 16)),
                );
                lo[0][j] = _mm512_fmadd_ps(r0[0], b0, lo[0][j]);
                hi[0][j] = _mm512_fmadd_ps(r0[1], b1, hi[0][j]);
                lo[1][j] = _mm512_fmadd_ps(r1[0], b0, lo[1][j]);
                hi[1][j] = _mm512_fmadd_ps(r1[1], b1, hi[1][j]);
            }
            i += STEP;
        }
        for r in 0..2 {
            for j in 0..N {
                *c.add(j * ldc + r) = reduce16(lo[r][j], hi[r][j]);
            }
        }
    }
}

/// Rows `r0..r1` against every column, in passes of up to
/// [`pass_columns`] (which stay in L2) and tiles of up to `width`: a weight row
/// is read from memory once per pass (prefetched by its first tile) and
/// from L1 for the other tiles. `tile(row, c0, cols, out, first)`
/// computes one tile.
#[inline(always)]
unsafe fn passes(
    s: &Shape,
    (r0, r1): (usize, usize),
    width: usize,
    a: *const f32,
    c: *mut f32,
    mut tile: impl FnMut(*const f32, usize, usize, *mut f32, bool),
) {
    // SAFETY: the caller keeps this function's contract: `a`, `b` and `c` are valid for the
    // shape's rows, columns and strides, and the CPU has the enabled target features (chosen at
    // dispatch by kernel()).
    unsafe {
        let per_pass = pass_columns(s.k);
        for pass in (0..s.n).step_by(per_pass) {
            let end = (pass + per_pass).min(s.n);
            for r in r0..r1 {
                for c0 in (pass..end).step_by(width) {
                    let cols = (end - c0).min(width);
                    tile(
                        a.add(r * s.lda),
                        c0,
                        cols,
                        c.add(c0 * s.ldc + r),
                        c0 == pass,
                    );
                }
            }
        }
    }
}

/// [`passes`] with AVX2 tiles of up to 3 columns.
unsafe fn gemm_avx2(s: Shape, rows: (usize, usize), a: *const f32, b: *const f32, c: *mut f32) {
    // SAFETY: the caller keeps this function's contract: `a`, `b` and `c` are valid for the
    // shape's rows, columns and strides, and the CPU has the enabled target features (chosen at
    // dispatch by kernel()).
    unsafe {
        passes(&s, rows, 3, a, c, |row, c0, cols, out, first| {
            let col = |j: usize| b.add((c0 + j) * s.ldb);
            dispatch!(tile_avx2, cols, [1, 2, 3], s.k, row, col, out, s.ldc, first)
        });
    }
}

/// AVX-512: rows two at a time ([`pair_avx512`]) against tiles of up to
/// 6 columns (24 accumulators), as many as keep the tile's columns within
/// [`L1_COLUMNS`]; an odd last row against tiles of up to 12
/// ([`tile_avx512`]). Passes of [`pass_columns`] as in [`passes`].
#[target_feature(enable = "avx512f")]
unsafe fn gemm_avx512(
    s: Shape,
    (r0, r1): (usize, usize),
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    // SAFETY: the caller keeps this function's contract: `a`, `b` and `c` are valid for the
    // shape's rows, columns and strides, and the CPU has AVX-512 F (chosen at dispatch by
    // kernel()).
    unsafe {
        let fit = L1_COLUMNS / (4 * s.k);
        let col = |c0: usize| move |j: usize| b.add((c0 + j) * s.ldb);
        let pairs = r0 + (r1 - r0) / 2 * 2;
        let per_pass = pass_columns(s.k);
        for pass in (0..s.n).step_by(per_pass) {
            let end = (pass + per_pass).min(s.n);
            let width = fit.clamp(1, 6);
            for r in (r0..pairs).step_by(2) {
                let rows = [a.add(r * s.lda), a.add((r + 1) * s.lda)];
                for c0 in (pass..end).step_by(width) {
                    let cols = (end - c0).min(width);
                    dispatch!(
                        pair_avx512,
                        cols,
                        [1, 2, 3, 4, 5, 6],
                        s.k,
                        rows,
                        col(c0),
                        c.add(c0 * s.ldc + r),
                        s.ldc,
                        c0 == pass
                    )
                }
            }
            let width = fit.clamp(1, 12);
            for r in pairs..r1 {
                for c0 in (pass..end).step_by(width) {
                    let cols = (end - c0).min(width);
                    dispatch!(
                        tile_avx512,
                        cols,
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                        s.k,
                        a.add(r * s.lda),
                        col(c0),
                        c.add(c0 * s.ldc + r),
                        s.ldc,
                        c0 == pass
                    )
                }
            }
        }
    }
}

/// Thread `ith` of `nth` computes its contiguous share of the rows of `C`.
///
/// # Safety
///
/// `a`, `b` and `c` are valid for the shape's rows, columns and strides,
/// `s.k` passes [`supports`], and for [`Kernel::Avx512`] the CPU has
/// AVX-512F ([`has_avx512`]).
pub unsafe fn gemm(
    kernel: Kernel,
    ith: usize,
    nth: usize,
    s: Shape,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    let rows = (s.m * ith / nth, s.m * (ith + 1) / nth);
    // SAFETY: the caller's guarantees are the kernels' own.
    unsafe {
        match kernel {
            Kernel::Avx512 => gemm_avx512(s, rows, a, b, c),
            Kernel::Avx2 => gemm_avx2(s, rows, a, b, c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ggml_hook::tests::{assert_same, reference, values};

    /// One kernel, run as `nth` threads one after the other.
    fn computed(kernel: Kernel, s: Shape, a: &[f32], b: &[f32], nth: usize) -> Vec<f32> {
        let mut c = vec![f32::NAN; s.ldc * s.n];
        for ith in 0..nth {
            // SAFETY: the buffers hold the shape's rows and columns, and k
            // is a multiple of 32.
            unsafe { gemm(kernel, ith, nth, s, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
        }
        c
    }

    #[test]
    fn every_kernel_is_bit_identical_to_ggml_vec_dot_f32() {
        let mut kernels = vec![Kernel::Avx2];
        if has_avx512() {
            kernels.push(Kernel::Avx512);
        }
        eprintln!("kernels checked: {kernels:?}");
        let mut checked = 0;
        for &k in &[32, 64, 576, 1536] {
            for &m in &[1, 3, 5, 64] {
                for &n in &[1, 2, 3, 4, 9, 12, 13, 50] {
                    // Padded strides, as ggml's views may have.
                    let s = Shape {
                        m,
                        n,
                        k,
                        lda: k + 8,
                        ldb: k + 32,
                        ldc: m + 3,
                    };
                    let a = values(s.lda * m, (k * m) as u64);
                    let b = values(s.ldb * n, (k + n) as u64);
                    let want = reference(s, &a, &b);
                    for &kernel in &kernels {
                        for nth in [1, 2, 3] {
                            let got = computed(kernel, s, &a, &b, nth);
                            checked += assert_same(&format!("{kernel:?} x{nth}"), s, &got, &want);
                        }
                    }
                }
            }
        }
        assert!(
            checked > 50_000 * kernels.len(),
            "{checked} elements compared"
        );
    }
}
