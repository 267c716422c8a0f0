//! Quantized matrix-vector products for llama.cpp, bit-identical to ggml's
//! own and up to twice as fast: they make the draft model cheaper.
//!
//! A speculative pass is mostly drafting (the reference pair's Q4_1 draft
//! spends three quarters of a pass on its own decodes), and the draft's time
//! is mostly two ggml dot products: `ggml_vec_dot_q4_1_q8_1` for its layers
//! and `ggml_vec_dot_q8_0_q8_0` for its Q8_0 output matrix. ggml calls them
//! once per output element with 8-lane AVX2 code. ggml-cpu also offers every
//! quantized product to `llamafile_sgemm` (after packing the columns into
//! Q8_1 or Q8_0), and that hook is ours (see [`super`]).
//!
//! Here each 16-lane AVX-512 register holds the 8 lanes of two weight rows,
//! so one instruction does two rows' work; the integer products run on
//! AVX-512 VNNI (`vpdpbusd`), whose 32-bit sums are exactly those of
//! ggml's `maddubs`/`madd` pair (no 16-bit sum can saturate for these
//! formats); the column's blocks are unpacked once per call instead of once
//! per row; four pairs of rows go through each step, so four FMA chains
//! overlap, while the rows two steps ahead are prefetched. Every lane sees ggml's operations in ggml's order (the per-block
//! scale product, one FMA per block, then ggml's horizontal sum and, for
//! Q4_1, its separately summed minimum term), so each output is ggml's to
//! the bit, and speculative decoding stays exact whichever model uses it.
//! The unit tests check that against ggml's functions.
//!
//! One caveat, for Q8_0: ggml multiplies signed bytes as `|x| * sign(y, x)`
//! and this kernel as `(x + 128) * y - 128 * y`. The two agree for every
//! column byte ggml's quantizer produces (-127 to 127); only a column byte
//! of -128, which it never writes, would tell them apart.
//!
//! CPUs without AVX-512 VNNI get [`avx2`]: ggml's own 8-lane arithmetic,
//! one row per register, but several rows per step with the rows ahead
//! prefetched, which is most of the gain while the weights stream from
//! memory. Every product is still ggml's to the bit.
//!
//! A kernel takes up to [`MAX_COLUMNS`] columns at once; a wider product
//! of a generated pass (a batch of requests decoded together, a long
//! verification) is computed in blocks of [`ROW_BLOCK`] rows, each against
//! every group of up to [`MAX_COLUMNS`] columns in turn, so a block's
//! weights are still in cache for the next group. Each output is computed
//! alone, so the grouping never changes a bit. Prompt passes go to
//! llama.cpp's kernels. Other formats are left to ggml.

use super::types::{Q4_1, Q8_0, Q8_1};
use super::{QuantKernel, Shape};
use std::ffi::c_int;

mod avx2;
mod common;
mod vnni;

/// The most columns one kernel call takes: they share one unpacking of
/// each row block.
pub const MAX_COLUMNS: usize = 4;

/// Rows computed against every column group before the next rows, in a
/// product wider than [`MAX_COLUMNS`].
pub const ROW_BLOCK: usize = 64;

/// The weight format of a product, with its columns' format implied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Q4_1 weights (scale, minimum, 32 nibbles) against Q8_1 columns.
    Q4_1,
    /// Q8_0 weights (scale, 32 bytes) against Q8_0 columns.
    Q8_0,
}

impl Format {
    /// The format for ggml's weight and column types, if this module has a
    /// kernel for the pair.
    pub fn of(a_type: c_int, b_type: c_int) -> Option<Format> {
        match (a_type, b_type) {
            (Q4_1, Q8_1) => Some(Format::Q4_1),
            (Q8_0, Q8_0) => Some(Format::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one 32-value block of weights and of a column.
    pub fn block_bytes(self) -> (usize, usize) {
        match self {
            Format::Q4_1 => (20, 36),
            Format::Q8_0 => (34, 34),
        }
    }
}

/// Whether this CPU runs [`QuantKernel::Avx512Vnni`].
pub fn has_vnni() -> bool {
    vnni::available()
}

/// Thread `ith` of `nth` computes its share of the rows of `C`. The shape
/// counts blocks (`k`, `lda`, `ldb`) and floats (`ldc`), as ggml passes
/// them to `llamafile_sgemm`.
///
/// # Safety
///
/// For `Avx512Vnni`, [`has_vnni`]; `1 <= s.n`; and `a`, `b`, `c` are
/// valid for the shape's rows, columns and strides in `format`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    kernel: QuantKernel,
    format: Format,
    ith: usize,
    nth: usize,
    s: Shape,
    a: *const u8,
    b: *const u8,
    c: *mut f32,
) {
    debug_assert!(s.n >= 1);
    let rows = (s.m * ith / nth, s.m * (ith + 1) / nth);
    if rows.0 >= rows.1 {
        return;
    }
    let run = |s: Shape, rows, b, c| {
        // SAFETY: the caller's guarantees are the kernels' own, for the
        // columns `b` and `c` start at (within the caller's product).
        unsafe {
            match kernel {
                QuantKernel::Avx512Vnni => vnni::gemm(format, s, rows, a, b, c),
                QuantKernel::Avx2 => avx2::gemm(format, s, rows, a, b, c),
            }
        }
    };
    if s.n <= MAX_COLUMNS {
        run(s, rows, b, c);
        return;
    }
    let (_, column_bytes) = format.block_bytes();
    for first in (rows.0..rows.1).step_by(ROW_BLOCK) {
        let block = (first, (first + ROW_BLOCK).min(rows.1));
        for j in (0..s.n).step_by(MAX_COLUMNS) {
            let group = Shape {
                n: MAX_COLUMNS.min(s.n - j),
                ..s
            };
            // SAFETY: column j < n starts `j` column strides into `b` and
            // `c`, inside the caller's buffers.
            let (b, c) = unsafe { (b.add(j * s.ldb * column_bytes), c.add(j * s.ldc)) };
            run(group, block, b, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ggml_hook::types::{F32, Q4_0};
    use std::ffi::c_int;

    extern "C" {
        /// Fills ggml-cpu's half-to-float table, which its dot products read.
        fn ggml_cpu_init();
        /// ggml's own dot products, the reference.
        fn ggml_vec_dot_q4_1_q8_1(
            n: c_int,
            s: *mut f32,
            bs: usize,
            x: *const u8,
            bx: usize,
            y: *const u8,
            by: usize,
            nrc: c_int,
        );
        fn ggml_vec_dot_q8_0_q8_0(
            n: c_int,
            s: *mut f32,
            bs: usize,
            x: *const u8,
            bx: usize,
            y: *const u8,
            by: usize,
            nrc: c_int,
        );
    }

    /// Deterministic blocks of `format`'s weights (or columns, with
    /// `column`): random values, every scale a finite normal half.
    fn blocks(format: Format, column: bool, count: usize, seed: u64) -> Vec<u8> {
        let (wa, wb) = format.block_bytes();
        let bytes = if column { wb } else { wa };
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(count * bytes);
        for _ in 0..count {
            let halves = if format == Format::Q4_1 { 2 } else { 1 };
            for _ in 0..halves {
                let r = next();
                // Sign, exponent 8..22 (2^-7 .. 2^7), ten mantissa bits.
                let half = ((r & 1) << 15) | ((8 + (r >> 1) % 15) << 10) | ((r >> 8) & 0x3FF);
                out.extend_from_slice(&(half as u16).to_le_bytes());
            }
            while out.len() % bytes != 0 {
                // Columns come from ggml's quantizer, whose values lie in
                // -127..=127; weights may hold any byte.
                let byte = next() as u8;
                out.push(if column && byte == 0x80 { 0x81 } else { byte });
            }
        }
        out
    }

    fn reference(format: Format, s: Shape, a: &[u8], b: &[u8]) -> Vec<f32> {
        let (wa, wb) = format.block_bytes();
        // SAFETY: idempotent, no arguments.
        unsafe { ggml_cpu_init() };
        let mut c = vec![f32::NAN; s.ldc * s.n];
        for j in 0..s.n {
            for i in 0..s.m {
                let (x, y) = (a[i * s.lda * wa..].as_ptr(), b[j * s.ldb * wb..].as_ptr());
                let out = &mut c[j * s.ldc + i];
                let n = (s.k * 32) as c_int;
                // SAFETY: row i and column j each hold k blocks.
                unsafe {
                    match format {
                        Format::Q4_1 => ggml_vec_dot_q4_1_q8_1(n, out, 0, x, 0, y, 0, 1),
                        Format::Q8_0 => ggml_vec_dot_q8_0_q8_0(n, out, 0, x, 0, y, 0, 1),
                    }
                }
            }
        }
        c
    }

    /// ggml's llamafile hook, as ggml calls it with `nth` threads one after
    /// the other; None where it declines.
    fn hooked(format: Format, s: Shape, a: &[u8], b: &[u8], nth: c_int) -> Option<Vec<f32>> {
        let (a_type, b_type) = match format {
            Format::Q4_1 => (Q4_1, Q8_1),
            Format::Q8_0 => (Q8_0, Q8_0),
        };
        crate::engine::ggml_hook::run_hook(s, a, b, [a_type, b_type, F32], nth)
    }

    #[test]
    fn the_quantized_kernels_are_bit_identical_to_ggml() {
        let mut kernels = vec![QuantKernel::Avx2];
        if has_vnni() {
            kernels.push(QuantKernel::Avx512Vnni);
        }
        eprintln!("kernels checked: {kernels:?}");
        let mut checked = 0;
        for format in [Format::Q4_1, Format::Q8_0] {
            for &k in &[1, 2, 18, 48] {
                for &m in &[1, 2, 3, 5, 8, 33, ROW_BLOCK + 7] {
                    // Wider than one kernel call too: row blocks against
                    // column groups.
                    for n in (1..=MAX_COLUMNS).chain([MAX_COLUMNS + 1, 2 * MAX_COLUMNS, 11]) {
                        // Padded strides, as ggml's views may have.
                        let s = Shape {
                            m,
                            n,
                            k,
                            lda: k + 1,
                            ldb: k + 2,
                            ldc: m + 3,
                        };
                        let a = blocks(format, false, s.lda * m, (k * m) as u64);
                        let b = blocks(format, true, s.ldb * n, (k + 7 * n) as u64);
                        let want = reference(format, s, &a, &b);
                        for &kernel in &kernels {
                            for nth in [1, 2, 3] {
                                let mut got = vec![f32::NAN; s.ldc * s.n];
                                for ith in 0..nth {
                                    // SAFETY: the buffers hold the shape's
                                    // rows and columns; the kernel runs here.
                                    unsafe {
                                        gemm(
                                            kernel,
                                            format,
                                            ith,
                                            nth,
                                            s,
                                            a.as_ptr(),
                                            b.as_ptr(),
                                            got.as_mut_ptr(),
                                        )
                                    };
                                }
                                for j in 0..n {
                                    for i in 0..m {
                                        let (g, w) = (got[j * s.ldc + i], want[j * s.ldc + i]);
                                        assert_eq!(
                                            g.to_bits(),
                                            w.to_bits(),
                                            "{kernel:?} {format:?} x{nth} {s:?}: C[{j}][{i}] {g} vs ggml {w}"
                                        );
                                        checked += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            checked > 10_000 * kernels.len(),
            "{checked} elements compared"
        );
    }

    #[test]
    fn the_hook_runs_the_chosen_kernel() {
        let s = Shape {
            m: 9,
            n: 2,
            k: 18,
            lda: 18,
            ldb: 18,
            ldc: 9,
        };
        for format in [Format::Q4_1, Format::Q8_0] {
            let a = blocks(format, false, s.m * s.k, 5);
            let b = blocks(format, true, s.n * s.k, 6);
            let got = hooked(format, s, &a, &b, 2).expect("a two-column product");
            let want = reference(format, s, &a, &b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{format:?}");
        }
        let expected = if has_vnni() { "avx512-vnni" } else { "avx2" };
        assert_eq!(crate::engine::ggml_hook::quant_kernel_name(), expected);
    }

    #[test]
    fn wide_batches_are_taken_and_other_formats_left_to_ggml() {
        let s = Shape {
            m: 4,
            n: 2 * MAX_COLUMNS + 1,
            k: 2,
            lda: 2,
            ldb: 2,
            ldc: 4,
        };
        let a = blocks(Format::Q4_1, false, 8, 3);
        let b = blocks(Format::Q4_1, true, 2 * s.n, 4);
        let got = hooked(Format::Q4_1, s, &a, &b, 2).expect("a batch of requests");
        let want = reference(Format::Q4_1, s, &a, &b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        assert_eq!(
            Format::of(Q4_1, F32),
            None,
            "F32 columns (ggml packs them first)"
        );
        assert_eq!(Format::of(Q4_0, Q8_0), None, "Q4_0 weights");
        assert_eq!(Format::of(Q4_1, Q8_1), Some(Format::Q4_1));
        assert_eq!(Format::of(Q8_0, Q8_0), Some(Format::Q8_0));
    }
}
