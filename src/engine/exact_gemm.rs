//! A batched F32 matrix product for llama.cpp that is bit-identical to its
//! single-token one, so speculative verification is both exact and fast.
//!
//! Greedy speculative decoding is exact only if the target's logits for a
//! token are the same whether it decodes that token alone or inside a
//! verification batch. llama.cpp computes a one-column product with
//! `ggml_vec_dot_f32` per output element, and a batch either with llamafile's
//! tinyBLAS (a different summation order: outputs drift in the last bits and
//! greedy output with them) or, with llamafile off, with that same dot
//! product per element, which reloads every weight row once per column: a
//! 9-token verification then costs over twice a single-token decode.
//!
//! This module is the third way. ggml-cpu, built with `GGML_LLAMAFILE`,
//! offers every matrix product to `llamafile_sgemm` (single columns too,
//! quantized ones after packing their columns); `build.rs` links with
//! `--wrap=llamafile_sgemm`, so that call lands in
//! [`__wrap_llamafile_sgemm`]. For F32 x F32 it computes each output element
//! with exactly `ggml_vec_dot_f32`'s arithmetic (x86-64-v3 build: four 8-lane
//! FMA accumulators over 32-float steps, then ggml's fixed reduction), but
//! one weight row against up to 12 columns at a time, so a weight is loaded
//! once per row instead of once per column, and with the rows prefetched
//! ahead so memory streams while the FMAs run. Where the CPU has AVX-512 the
//! same arithmetic runs two of ggml's 8-lane accumulators per 16-lane
//! register (lane-wise FMAs round the same), at twice the FMA throughput.
//! Single F32 columns, lengths with scalar leftovers and F16 weights answer
//! `false`, and ggml computes them as it always did. The unit tests compare
//! every kernel bit for bit with ggml's own `ggml_vec_dot_f32`.
//!
//! Quantized products go to [`exact_quant`], which takes narrow Q4_1 and
//! Q8_0 ones (a quantized draft's decoding is made of them) and declines
//! the rest.
//!
//! `XNAI_EXACT_GEMM=off` leaves every product to ggml (slower verification
//! and drafting, same results); `avx2` keeps to the 8-lane kernels, F32 and
//! quantized.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use super::exact_quant;

/// The head of ggml's `struct ggml_compute_params`: this thread and the count.
#[repr(C)]
pub struct ComputeParams {
    ith: c_int,
    nth: c_int,
}

/// `GGML_TYPE_F32`.
const F32: c_int = 0;

/// Sizes and strides (in floats) of one product: `C[j * ldc + i] =
/// dot(A[i * lda ..][..k], B[j * ldb ..][..k])` for `i < m`, `j < n`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// Which kernel computes the products this module takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 16-lane registers holding two of ggml's 8-lane accumulators.
    Avx512,
    /// ggml's own 8-lane layout.
    Avx2,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
        }
    }
}

/// The kernel for this process: `XNAI_EXACT_GEMM` (`off`, `avx2`; `auto` or
/// unset: AVX-512 where the CPU has it, else AVX2); None where this build's ggml
/// dot product is not one the kernels reproduce.
pub fn kernel() -> Option<Kernel> {
    static CHOSEN: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let setting = std::env::var("XNAI_EXACT_GEMM").unwrap_or_default();
        if !matches!(setting.as_str(), "" | "auto" | "off" | "avx2") {
            tracing::warn!(
                value = %setting,
                "XNAI_EXACT_GEMM is auto, off or avx2; using auto"
            );
        }
        let chosen = match setting.as_str() {
            "off" => None,
            _ if !x86::BUILT => None,
            "avx2" => Some(Kernel::Avx2),
            _ if x86::has_avx512() => Some(Kernel::Avx512),
            _ => Some(Kernel::Avx2),
        };
        tracing::debug!(
            kernel = chosen.map_or("ggml", Kernel::name),
            "batched F32 products (speculative verification)"
        );
        chosen
    })
}

/// The name of the kernel in use, or `ggml` when ggml computes every product.
pub fn kernel_name() -> &'static str {
    kernel().map_or("ggml", Kernel::name)
}

/// The kernel for quantized products of up to [`exact_quant::MAX_COLUMNS`]
/// columns (a draft's decoding): AVX-512 VNNI under `auto` where the CPU
/// has it, else the 8-lane one; None where ggml computes them.
pub fn quant_kernel() -> Option<exact_quant::QuantKernel> {
    static VNNI: OnceLock<bool> = OnceLock::new();
    match kernel()? {
        Kernel::Avx512 if *VNNI.get_or_init(exact_quant::has_vnni) => {
            Some(exact_quant::QuantKernel::Avx512Vnni)
        }
        _ => Some(exact_quant::QuantKernel::Avx2),
    }
}

/// The name of [`quant_kernel`], or `ggml`.
pub fn quant_kernel_name() -> &'static str {
    quant_kernel().map_or("ggml", exact_quant::QuantKernel::name)
}

/// ggml-cpu's batched matrix product hook (see the module docs): computes
/// this thread's share of the rows of `C` and returns true, or returns false
/// to let ggml compute the product itself.
///
/// # Safety
///
/// Called by ggml with valid pointers and strides for the shapes given.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn __wrap_llamafile_sgemm(
    params: *const ComputeParams,
    m: i64,
    n: i64,
    k: i64,
    a: *const c_void,
    lda: i64,
    b: *const c_void,
    ldb: i64,
    c: *mut c_void,
    ldc: i64,
    a_type: c_int,
    b_type: c_int,
    c_type: c_int,
) -> bool {
    let Some(kernel) = kernel() else {
        return false;
    };
    let params = &*params;
    let (ith, nth) = (params.ith as usize, params.nth as usize);
    let shape = Shape {
        m: m as usize,
        n: n as usize,
        k: k as usize,
        lda: lda as usize,
        ldb: ldb as usize,
        ldc: ldc as usize,
    };
    if c_type != F32 || n < 1 {
        return false;
    }
    if let Some(format) = exact_quant::Format::of(a_type, b_type) {
        let Some(quant) = quant_kernel() else {
            return false;
        };
        if shape.n > exact_quant::MAX_COLUMNS {
            return false;
        }
        exact_quant::gemm(quant, format, ith, nth, shape, a.cast(), b.cast(), c.cast());
        return true;
    }
    if (a_type, b_type) != (F32, F32) || !x86::supports(k) || n < 2 {
        return false;
    }
    gemm(kernel, ith, nth, shape, a.cast(), b.cast(), c.cast());
    true
}

/// Calls the hook as ggml would with `nth` threads, one after the other:
/// `C`, or None where the hook declines the product.
#[cfg(test)]
pub(crate) fn run_hook<T>(
    s: Shape,
    a: &[T],
    b: &[T],
    [a_type, b_type, c_type]: [c_int; 3],
    nth: c_int,
) -> Option<Vec<f32>> {
    let mut c = vec![f32::NAN; s.ldc * s.n];
    for ith in 0..nth {
        let params = ComputeParams { ith, nth };
        // SAFETY: the callers' buffers hold the shape's rows and columns.
        let done = unsafe {
            __wrap_llamafile_sgemm(
                &params,
                s.m as i64,
                s.n as i64,
                s.k as i64,
                a.as_ptr().cast(),
                s.lda as i64,
                b.as_ptr().cast(),
                s.ldb as i64,
                c.as_mut_ptr().cast(),
                s.ldc as i64,
                a_type,
                b_type,
                c_type,
            )
        };
        if !done {
            return None;
        }
    }
    Some(c)
}

/// Thread `ith` of `nth` computes its contiguous share of the rows of `C`.
///
/// # Safety
///
/// `a`, `b` and `c` are valid for the shape's rows, columns and strides,
/// `s.k` passes [`x86::supports`], and `kernel` came from [`kernel`] (or is
/// `Avx2` on a build where [`kernel`] is not None).
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
    match kernel {
        Kernel::Avx512 => x86::gemm_avx512(s, rows, a, b, c),
        Kernel::Avx2 => x86::gemm_avx2(s, rows, a, b, c),
    }
}

/// The kernels, for builds whose ggml sums F32 dot products in four 8-lane
/// AVX accumulators (x86-64-v3: AVX2 and FMA, no AVX-512 at build time;
/// `build.rs` sets `ggml_f32x8` for them).
#[cfg(ggml_f32x8)]
mod x86 {
    use super::Shape;
    use std::arch::x86_64::*;

    pub const BUILT: bool = true;

    /// `GGML_F32_STEP` of ggml's AVX build: four 8-lane vectors per step.
    const STEP: usize = 32;
    /// Floats ahead of the current step to prefetch along a weight row.
    const PREFETCH: usize = 1024;
    /// Columns per pass over a thread's rows: each weight row is read from
    /// memory once per pass, the pass's columns stay in L2.
    const PASS: usize = 48;
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
        let x0 = _mm256_add_ps(x0, x1);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps(x0, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
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
            // [s0 + s2 | s1 + s3], then ggml's reduction of the two halves.
            let x = _mm512_castps_pd(_mm512_add_ps(lo[j], hi[j]));
            let x0 = _mm256_castpd_ps(_mm512_castpd512_pd256(x));
            let x1 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(x));
            *c.add(j * ldc) = reduce(x0, x1);
        }
    }

    /// Rows `r0..r1` against every column, in passes of up to [`PASS`]
    /// columns (which stay in L2) and tiles of up to `width`: a weight row
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
        for pass in (0..s.n).step_by(PASS) {
            let end = (pass + PASS).min(s.n);
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

    /// [`passes`] with AVX2 tiles of up to 3 columns.
    pub unsafe fn gemm_avx2(
        s: Shape,
        rows: (usize, usize),
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) {
        passes(&s, rows, 3, a, c, |row, c0, cols, out, first| {
            let col = |j: usize| b.add((c0 + j) * s.ldb);
            dispatch!(tile_avx2, cols, [1, 2, 3], s.k, row, col, out, s.ldc, first)
        });
    }

    /// [`passes`] with AVX-512 tiles of up to 12 columns (24 accumulators
    /// and two row registers of the 32), as many as keep the tile's columns
    /// within [`L1_COLUMNS`]: a verification batch is one or two tiles.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_avx512(
        s: Shape,
        rows: (usize, usize),
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) {
        let width = (L1_COLUMNS / (4 * s.k)).clamp(1, 12);
        passes(&s, rows, width, a, c, |row, c0, cols, out, first| {
            let col = |j: usize| b.add((c0 + j) * s.ldb);
            dispatch!(
                tile_avx512,
                cols,
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                s.k,
                row,
                col,
                out,
                s.ldc,
                first
            )
        });
    }
}

/// Other builds: ggml computes every product itself.
#[cfg(not(ggml_f32x8))]
mod x86 {
    use super::Shape;

    pub const BUILT: bool = false;

    pub fn has_avx512() -> bool {
        false
    }

    pub fn supports(_k: i64) -> bool {
        false
    }

    pub unsafe fn gemm_avx2(
        _: Shape,
        _: (usize, usize),
        _: *const f32,
        _: *const f32,
        _: *mut f32,
    ) {
        unreachable!("kernel() is None on this build")
    }

    pub unsafe fn gemm_avx512(
        _: Shape,
        _: (usize, usize),
        _: *const f32,
        _: *const f32,
        _: *mut f32,
    ) {
        unreachable!("kernel() is None on this build")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        /// ggml's own single-column dot product, the reference.
        fn ggml_vec_dot_f32(
            n: c_int,
            s: *mut f32,
            bs: usize,
            x: *const f32,
            bx: usize,
            y: *const f32,
            by: usize,
            nrc: c_int,
        );
    }

    /// A small deterministic generator of values of mixed sign and scale.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let unit = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * [1.0, 0.01, 30.0, 1e-4][i % 4]
            })
            .collect()
    }

    fn hooked(s: Shape, a: &[f32], b: &[f32], types: [c_int; 3]) -> Option<Vec<f32>> {
        run_hook(s, a, b, types, 2)
    }

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

    fn reference(s: Shape, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![f32::NAN; s.ldc * s.n];
        for j in 0..s.n {
            for i in 0..s.m {
                // SAFETY: row i and column j each hold k floats.
                unsafe {
                    ggml_vec_dot_f32(
                        s.k as c_int,
                        &mut c[j * s.ldc + i],
                        0,
                        a[i * s.lda..].as_ptr(),
                        0,
                        b[j * s.ldb..].as_ptr(),
                        0,
                        1,
                    )
                };
            }
        }
        c
    }

    fn assert_same(what: &str, s: Shape, got: &[f32], want: &[f32]) -> usize {
        for j in 0..s.n {
            for i in 0..s.m {
                let (g, w) = (got[j * s.ldc + i], want[j * s.ldc + i]);
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{what} {s:?}: C[{j}][{i}] {g} vs ggml {w}"
                );
            }
        }
        s.m * s.n
    }

    #[test]
    fn every_kernel_is_bit_identical_to_ggml_vec_dot_f32() {
        let mut kernels = vec![Kernel::Avx2];
        if x86::has_avx512() {
            kernels.push(Kernel::Avx512);
        }
        eprintln!("kernels checked: {kernels:?}");
        let mut checked = 0;
        for &k in &[32, 64, 576, 1536] {
            for &m in &[1, 3, 5, 64] {
                for &n in &[2, 3, 4, 9, 12, 13, 50] {
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
        assert!(checked > 100_000, "{checked} elements compared");
    }

    #[test]
    fn the_hook_takes_f32_batches_and_leaves_the_rest_to_ggml() {
        let s = Shape {
            m: 7,
            n: 5,
            k: 64,
            lda: 64,
            ldb: 64,
            ldc: 7,
        };
        let (a, b) = (values(7 * 64, 1), values(5 * 64, 2));
        let f32s = [F32; 3];
        let got = hooked(s, &a, &b, f32s).expect("an F32 batch with k % 32 == 0");
        assert_same("hook", s, &got, &reference(s, &a, &b));
        assert!(
            hooked(Shape { n: 1, ..s }, &a, &b, f32s).is_none(),
            "one column"
        );
        assert!(
            hooked(Shape { k: 40, ..s }, &a, &b, f32s).is_none(),
            "k % 32 != 0"
        );
        // GGML_TYPE_F16 weights or activations.
        assert!(hooked(s, &a, &b, [1, F32, F32]).is_none(), "F16 weights");
        assert!(hooked(s, &a, &b, [F32, 1, F32]).is_none(), "F16 columns");
    }
}
