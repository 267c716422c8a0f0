//! The quantized kernels for CPUs without AVX-512 VNNI: ggml's own 8-lane
//! arithmetic, one row per register exactly as `ggml_vec_dot_q4_1_q8_1` and
//! `ggml_vec_dot_q8_0_q8_0` have it, but several rows per step (so their
//! FMA chains overlap), each column block's scale converted once for all
//! rows, and the rows two steps ahead prefetched. ggml's single dot product
//! waits on memory when the weights stream from RAM; these mostly do not.

use super::common::{half, prefetch, Scales};
use super::{Format, Shape, MAX_COLUMNS};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// One column for the inner loops: its blocks and their scales.
#[derive(Clone, Copy)]
struct Column {
    y: *const u8,
    d: *const f32,
    s: *const f32,
}

/// ggml's `hsum_float_8`.
#[inline(always)]
unsafe fn hsum(x: __m256) -> f32 {
    // SAFETY: register-only intrinsics of this build's baseline (AVX2, or
    // the features this function enables); no memory is touched.
    unsafe { super::common::hsum(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x)) }
}

/// `R` Q4_1 rows against `C` Q8_1 columns, each element with
/// `ggml_vec_dot_q4_1_q8_1`'s operations in its order.
#[inline(always)]
unsafe fn q4_1<const C: usize, const R: usize>(
    k: usize,
    rows: [*const u8; R],
    cols: [Column; C],
) -> [[f32; R]; C] {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX2 and FMA (this build's
    // baseline).
    unsafe {
        let (low, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let mut summs = [[0.0f32; R]; C];
        for blk in 0..k {
            for i in 0..R {
                prefetch(rows[0], R * k * 20, blk * R + i);
                let p = rows[i].add(blk * 20);
                let (d0, m0) = (half(p), half(p.add(2)));
                let tmp = _mm_loadu_si128(p.add(4).cast());
                let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp));
                for j in 0..C {
                    let col = cols[j];
                    summs[j][i] += m0 * *col.s.add(blk);
                    let qy = _mm256_loadu_si256(col.y.add(blk * 36 + 4).cast());
                    let xy = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(qx, qy));
                    let d = _mm256_set1_ps(d0 * *col.d.add(blk));
                    acc[j][i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(xy), acc[j][i]);
                }
            }
        }
        let mut out = [[0.0; R]; C];
        for j in 0..C {
            for i in 0..R {
                out[j][i] = hsum(acc[j][i]) + summs[j][i];
            }
        }
        out
    }
}

/// `R` Q8_0 rows against `C` Q8_0 columns, each element with
/// `ggml_vec_dot_q8_0_q8_0`'s operations in its order.
#[inline(always)]
unsafe fn q8_0<const C: usize, const R: usize>(
    k: usize,
    rows: [*const u8; R],
    cols: [Column; C],
) -> [[f32; R]; C] {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX2 and FMA (this build's
    // baseline).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        for blk in 0..k {
            for i in 0..R {
                prefetch(rows[0], R * k * 34, blk * R + i);
                let p = rows[i].add(blk * 34);
                let d0 = half(p);
                let qx = _mm256_loadu_si256(p.add(2).cast());
                let ax = _mm256_sign_epi8(qx, qx);
                for j in 0..C {
                    let col = cols[j];
                    let qy = _mm256_loadu_si256(col.y.add(blk * 34 + 2).cast());
                    let sy = _mm256_sign_epi8(qy, qx);
                    let q = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy));
                    let d = _mm256_set1_ps(d0 * *col.d.add(blk));
                    acc[j][i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc[j][i]);
                }
            }
        }
        let mut out = [[0.0; R]; C];
        for j in 0..C {
            for i in 0..R {
                out[j][i] = hsum(acc[j][i]);
            }
        }
        out
    }
}

/// Rows `r0..r1` against `C` columns, `R` rows per step, then one at a time.
unsafe fn rows<const C: usize, const R: usize>(
    format: Format,
    s: &Shape,
    (r0, r1): (usize, usize),
    a: *const u8,
    cols: [Column; C],
    c: *mut f32,
) {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX2 and FMA (this build's
    // baseline).
    unsafe {
        let (bytes, _) = format.block_bytes();
        let row = |r: usize| a.add(r * s.lda * bytes);
        let mut r = r0;
        while r + R <= r1 {
            let out = match format {
                Format::Q4_1 => q4_1::<C, R>(s.k, std::array::from_fn(|i| row(r + i)), cols),
                Format::Q8_0 => q8_0::<C, R>(s.k, std::array::from_fn(|i| row(r + i)), cols),
            };
            for (j, v) in out.iter().enumerate() {
                for (i, x) in v.iter().enumerate() {
                    *c.add(j * s.ldc + r + i) = *x;
                }
            }
            r += R;
        }
        for r in r..r1 {
            let out = match format {
                Format::Q4_1 => q4_1::<C, 1>(s.k, [row(r)], cols),
                Format::Q8_0 => q8_0::<C, 1>(s.k, [row(r)], cols),
            };
            for (j, v) in out.iter().enumerate() {
                *c.add(j * s.ldc + r) = v[0];
            }
        }
    }
}

/// This thread's rows (`range`) of up to [`MAX_COLUMNS`] columns.
pub unsafe fn gemm(
    format: Format,
    s: Shape,
    range: (usize, usize),
    a: *const u8,
    b: *const u8,
    c: *mut f32,
) {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX2 and FMA (this build's
    // baseline).
    unsafe {
        thread_local! {
            static SCALES: RefCell<[Scales; MAX_COLUMNS]> = RefCell::default();
        }
        let (_, bytes) = format.block_bytes();
        SCALES.with_borrow_mut(|scales| {
            for (j, sc) in scales.iter_mut().enumerate().take(s.n) {
                sc.fill(format, s.k, b.add(j * s.ldb * bytes));
            }
            let col = |j: usize| Column {
                y: b.add(j * s.ldb * bytes),
                d: scales[j].d.as_ptr(),
                s: scales[j].s.as_ptr(),
            };
            match s.n {
                1 => rows::<1, 4>(format, &s, range, a, std::array::from_fn(col), c),
                2 => rows::<2, 2>(format, &s, range, a, std::array::from_fn(col), c),
                3 => rows::<3, 1>(format, &s, range, a, std::array::from_fn(col), c),
                4 => rows::<4, 1>(format, &s, range, a, std::array::from_fn(col), c),
                n => unreachable!("1 to {MAX_COLUMNS} columns, not {n}"),
            }
        });
    }
}
