//! The AVX-512 VNNI kernel: each 16-lane register holds the 8 lanes of two
//! weight rows, byte products run on `vpdpbusd`, and every lane sees
//! ggml's operations in ggml's order (see the parent module).

use super::common::{hsum, prefetch, Scales};
use super::{Format, Shape, MAX_COLUMNS};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ptr::read_unaligned;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// One column, unpacked for the kernels: per block its 32 values laid
/// out to meet a register of two rows, the 32-bit lane correction (Q8_0)
/// and its scales.
#[derive(Default)]
struct Column {
    q: Vec<__m512i>,
    correction: Vec<__m512i>,
    scales: Scales,
}

/// Unpacks one column of `k` blocks into `col` (its buffers are reused
/// from call to call, as [`Scales`]).
///
/// Q4_1 registers hold `[low nibbles A | low B | high A | high B]`, so
/// the column's 32 bytes go `[y0..16 | y0..16 | y16..32 | y16..32]`.
/// Q8_0 registers hold `[row A's 32 bytes | row B's]`, so the column is
/// repeated; its weights enter VNNI's unsigned operand as `x + 128`, and
/// the correction `-128 * (sum of each 4 column bytes)` takes that back.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn column(col: &mut Column, format: Format, k: usize, y: *const u8) {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX-512 F/BW/VL/VNNI (checked
    // by has_vnni() at dispatch).
    unsafe {
        let (_, bytes) = format.block_bytes();
        col.scales.fill(format, k, y);
        col.q.clear();
        col.correction.clear();
        for blk in 0..k {
            let p = y.add(blk * bytes);
            match format {
                Format::Q4_1 => {
                    let v = _mm512_castsi256_si512(_mm256_loadu_si256(p.add(4).cast()));
                    let lanes = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
                    col.q.push(_mm512_permutexvar_epi64(lanes, v));
                }
                Format::Q8_0 => {
                    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2).cast()));
                    let sums =
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), v);
                    col.q.push(v);
                    col.correction
                        .push(_mm512_sub_epi32(_mm512_setzero_si512(), sums));
                }
            }
        }
    }
}

/// Where one unpacked column's blocks are, for the kernels' inner loops.
#[derive(Clone, Copy)]
struct Blocks {
    q: *const __m512i,
    correction: *const __m512i,
    d: *const f32,
    s: *const f32,
}

impl Column {
    fn blocks(&self) -> Blocks {
        Blocks {
            q: self.q.as_ptr(),
            correction: self.correction.as_ptr(),
            d: self.scales.d.as_ptr(),
            s: self.scales.s.as_ptr(),
        }
    }
}

/// `P` pairs of Q4_1 rows against `C` columns. Per block, each pair's
/// nibbles are unpacked once into one register (`[low A | low B | high
/// A | high B]`, each row's 8 lanes in ggml's order within its halves),
/// then per column one VNNI product, ggml's scale `d_x * d_y` in each
/// row's lanes and one FMA; each row's `m_x * s_y` sum runs in its own
/// float lane. `P` independent accumulators keep the FMA latency hidden.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_1_rows<const C: usize, const P: usize>(
    k: usize,
    rows: [[*const u8; 2]; P],
    cols: [Blocks; C],
) -> [[[f32; 2]; P]; C] {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX-512 F/BW/VL/VNNI (checked
    // by has_vnni() at dispatch).
    unsafe {
        let nibble = _mm512_set1_epi8(0x0F);
        // [d_A, m_A, d_B, m_B] lane 0 or 2 to each row's lanes.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
        let mut acc = [[_mm512_setzero_ps(); P]; C];
        let mut summs = [[_mm_setzero_ps(); P]; C];
        for blk in 0..k {
            for p in 0..P {
                prefetch(rows[0][0], 2 * P * k * 20, blk * P + p);
                let (pa, pb) = (rows[p][0].add(blk * 20), rows[p][1].add(blk * 20));
                let xa = _mm_loadu_si128(pa.add(4).cast());
                let xb = _mm_loadu_si128(pb.add(4).cast());
                let x = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(xa), xb);
                let z = _mm512_and_si512(
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(x), _mm256_srli_epi16::<4>(x)),
                    nibble,
                );
                let dm = _mm_cvtph_ps(_mm_insert_epi32::<1>(
                    _mm_cvtsi32_si128(read_unaligned(pa.cast::<i32>())),
                    read_unaligned(pb.cast::<i32>()),
                ));
                for j in 0..C {
                    let col = cols[j];
                    let scale = _mm_mul_ps(dm, _mm_set1_ps(*col.d.add(blk)));
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scale));
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), z, *col.q.add(blk));
                    acc[j][p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[j][p]);
                    summs[j][p] = _mm_fmadd_ps(dm, _mm_set1_ps(*col.s.add(blk)), summs[j][p]);
                }
            }
        }
        let mut out = [[[0.0; 2]; P]; C];
        for j in 0..C {
            for p in 0..P {
                let l = quarters(acc[j][p]);
                let m: [f32; 4] = std::mem::transmute(summs[j][p]);
                out[j][p] = [hsum(l[0], l[2]) + m[1], hsum(l[1], l[3]) + m[3]];
            }
        }
        out
    }
}

/// `P` pairs of Q8_0 rows against `C` columns: per block each pair's 32
/// bytes side by side (offset to unsigned), then per column one VNNI
/// product starting from the column's correction, ggml's scale and one
/// FMA.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_rows<const C: usize, const P: usize>(
    k: usize,
    rows: [[*const u8; 2]; P],
    cols: [Blocks; C],
) -> [[[f32; 2]; P]; C] {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX-512 F/BW/VL/VNNI (checked
    // by has_vnni() at dispatch).
    unsafe {
        let offset = _mm512_set1_epi8(-128);
        // [d_A, d_B, ..] lane 0 to row A's lanes, 1 to row B's.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut acc = [[_mm512_setzero_ps(); P]; C];
        for blk in 0..k {
            for p in 0..P {
                prefetch(rows[0][0], 2 * P * k * 34, blk * P + p);
                let (pa, pb) = (rows[p][0].add(blk * 34), rows[p][1].add(blk * 34));
                let xa = _mm256_loadu_si256(pa.add(2).cast());
                let xb = _mm256_loadu_si256(pb.add(2).cast());
                let z = _mm512_xor_si512(
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(xa), xb),
                    offset,
                );
                let d = _mm_cvtph_ps(_mm_insert_epi16::<1>(
                    _mm_cvtsi32_si128(read_unaligned(pa.cast::<u16>()) as i32),
                    read_unaligned(pb.cast::<u16>()) as i32,
                ));
                for j in 0..C {
                    let col = cols[j];
                    let scale = _mm_mul_ps(d, _mm_set1_ps(*col.d.add(blk)));
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scale));
                    let dot = _mm512_dpbusd_epi32(*col.correction.add(blk), z, *col.q.add(blk));
                    acc[j][p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[j][p]);
                }
            }
        }
        let mut out = [[[0.0; 2]; P]; C];
        for j in 0..C {
            for p in 0..P {
                let l = quarters(acc[j][p]);
                out[j][p] = [hsum(l[0], l[1]), hsum(l[2], l[3])];
            }
        }
        out
    }
}

/// The four 128-bit quarters of a register.
#[inline(always)]
unsafe fn quarters(v: __m512) -> [__m128; 4] {
    // SAFETY: register-only intrinsics of this build's baseline (AVX2, or
    // the features this function enables); no memory is touched.
    unsafe {
        [
            _mm512_extractf32x4_ps::<0>(v),
            _mm512_extractf32x4_ps::<1>(v),
            _mm512_extractf32x4_ps::<2>(v),
            _mm512_extractf32x4_ps::<3>(v),
        ]
    }
}

/// Rows `r0..r1` against `C` columns: `P` pairs of rows per step, then
/// single pairs, and a last odd row paired with itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows<const C: usize, const P: usize>(
    format: Format,
    s: &Shape,
    (r0, r1): (usize, usize),
    a: *const u8,
    cols: [Blocks; C],
    c: *mut f32,
) {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX-512 F/BW/VL/VNNI (checked
    // by has_vnni() at dispatch).
    unsafe {
        let (bytes, _) = format.block_bytes();
        let row = |r: usize| a.add(r.min(r1 - 1) * s.lda * bytes);
        let mut r = r0;
        while r < r1 {
            let step = if r + 2 * P <= r1 { 2 * P } else { 2 };
            // Room for up to 8 rows (P <= 4).
            let mut out = [[0.0f32; 8]; C];
            if step == 2 * P {
                let rows = std::array::from_fn(|p| [row(r + 2 * p), row(r + 2 * p + 1)]);
                let v = match format {
                    Format::Q4_1 => q4_1_rows::<C, P>(s.k, rows, cols),
                    Format::Q8_0 => q8_0_rows::<C, P>(s.k, rows, cols),
                };
                for j in 0..C {
                    for p in 0..P {
                        out[j][2 * p..2 * p + 2].copy_from_slice(&v[j][p]);
                    }
                }
            } else {
                let rows = [[row(r), row(r + 1)]];
                let v = match format {
                    Format::Q4_1 => q4_1_rows::<C, 1>(s.k, rows, cols),
                    Format::Q8_0 => q8_0_rows::<C, 1>(s.k, rows, cols),
                };
                for j in 0..C {
                    out[j][..2].copy_from_slice(&v[j][0]);
                }
            }
            for (j, v) in out.iter().enumerate() {
                for (i, x) in v.iter().take(step.min(r1 - r)).enumerate() {
                    *c.add(j * s.ldc + r + i) = *x;
                }
            }
            r += step;
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm(
    format: Format,
    s: Shape,
    range: (usize, usize),
    a: *const u8,
    b: *const u8,
    c: *mut f32,
) {
    // SAFETY: the caller keeps this function's contract: the rows and columns hold the shape's
    // blocks in `format`, `c` holds the outputs, and the CPU has AVX-512 F/BW/VL/VNNI (checked
    // by has_vnni() at dispatch).
    unsafe {
        thread_local! {
            static COLUMNS: RefCell<[Column; MAX_COLUMNS]> = RefCell::default();
        }
        let (_, bytes) = format.block_bytes();
        COLUMNS.with_borrow_mut(|cols| {
            for (j, col) in cols.iter_mut().enumerate().take(s.n) {
                column(col, format, s.k, b.add(j * s.ldb * bytes));
            }
            let blocks = |j: usize| cols[j].blocks();
            match s.n {
                1 => rows::<1, 4>(format, &s, range, a, std::array::from_fn(blocks), c),
                2 => rows::<2, 2>(format, &s, range, a, std::array::from_fn(blocks), c),
                3 => rows::<3, 2>(format, &s, range, a, std::array::from_fn(blocks), c),
                4 => rows::<4, 1>(format, &s, range, a, std::array::from_fn(blocks), c),
                n => unreachable!("1 to {MAX_COLUMNS} columns, not {n}"),
            }
        });
    }
}
