//! Quantized matrix-vector products for llama.cpp, bit-identical to ggml's
//! own and up to twice as fast: they make the draft model cheaper.
//!
//! A speculative pass is mostly drafting (the reference pair's Q4_1 draft
//! spends three quarters of a pass on its own decodes), and the draft's time
//! is mostly two ggml dot products: `ggml_vec_dot_q4_1_q8_1` for its layers
//! and `ggml_vec_dot_q8_0_q8_0` for its Q8_0 output matrix. ggml calls them
//! once per output element with 8-lane AVX2 code. ggml-cpu also offers every
//! quantized product to `llamafile_sgemm` (after packing the columns into
//! Q8_1 or Q8_0), and that hook is ours (see [`super::exact_gemm`]).
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
//! Only products of up to [`MAX_COLUMNS`] columns (decoding, a draft's
//! catch-up) are taken; longer batches (prompt processing) keep ggml's
//! cache-tiled loop. Other formats are left to ggml.

use std::ffi::c_int;

use super::exact_gemm::Shape;

/// `GGML_TYPE_Q4_1`.
pub const Q4_1: c_int = 3;
/// `GGML_TYPE_Q8_0`.
pub const Q8_0: c_int = 8;
/// `GGML_TYPE_Q8_1`.
pub const Q8_1: c_int = 9;

/// The widest product taken: columns share one unpacking of each row block.
pub const MAX_COLUMNS: usize = 4;

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

/// Which kernel computes the quantized products this module takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKernel {
    /// Two rows per 16-lane register, byte products on AVX-512 VNNI.
    Avx512Vnni,
    /// ggml's own 8-lane arithmetic, several rows per step ([`avx2`]).
    Avx2,
}

impl QuantKernel {
    pub fn name(self) -> &'static str {
        match self {
            QuantKernel::Avx512Vnni => "avx512-vnni",
            QuantKernel::Avx2 => "avx2",
        }
    }
}

/// Whether this CPU and build run [`QuantKernel::Avx512Vnni`].
pub fn has_vnni() -> bool {
    x86::available()
}

/// Thread `ith` of `nth` computes its share of the rows of `C` for up to
/// [`MAX_COLUMNS`] columns. The shape counts blocks (`k`, `lda`, `ldb`) and
/// floats (`ldc`), as ggml passes them to `llamafile_sgemm`.
///
/// # Safety
///
/// The kernel runs here (this build has the `ggml_f32x8` kernels; for
/// `Avx512Vnni`, [`has_vnni`]), `1 <= s.n <= MAX_COLUMNS`, and `a`, `b`,
/// `c` are valid for the shape's rows, columns and strides in `format`.
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
    debug_assert!((1..=MAX_COLUMNS).contains(&s.n));
    let rows = (s.m * ith / nth, s.m * (ith + 1) / nth);
    if rows.0 >= rows.1 {
        return;
    }
    match kernel {
        QuantKernel::Avx512Vnni => x86::gemm(format, s, rows, a, b, c),
        QuantKernel::Avx2 => avx2::gemm(format, s, rows, a, b, c),
    }
}

#[cfg(ggml_f32x8)]
mod avx2;

/// Other builds: ggml computes every quantized product itself (the stub
/// `x86` below answers for both kernels).
#[cfg(not(ggml_f32x8))]
use x86 as avx2;

/// The AVX-512 VNNI kernel, for builds whose ggml runs the AVX2 dot
/// products above (`ggml_f32x8`, set by `build.rs`).
#[cfg(ggml_f32x8)]
mod x86 {
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

    /// A column's per-block scale and (Q8_1) sum as floats, converted once
    /// for all rows; both kernels keep them in buffers reused from call to
    /// call (ggml's worker threads live as long as the process).
    #[derive(Default)]
    pub(super) struct Scales {
        pub(super) d: Vec<f32>,
        pub(super) s: Vec<f32>,
    }

    impl Scales {
        /// Converts the scales of the `k` blocks of `format`'s column at `y`.
        pub(super) unsafe fn fill(&mut self, format: Format, k: usize, y: *const u8) {
            let (_, bytes) = format.block_bytes();
            self.d.clear();
            self.s.clear();
            for blk in 0..k {
                let p = y.add(blk * bytes);
                self.d.push(half(p));
                if format == Format::Q4_1 {
                    self.s.push(half(p.add(2)));
                }
            }
        }
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

    /// The IEEE half at `p` as a float (exact, as ggml's lookup table).
    #[inline(always)]
    pub(super) unsafe fn half(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            read_unaligned(p.cast::<u16>()) as i32,
        )))
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

    /// ggml's `hsum_float_8` of the 8-lane vector `[lo | hi]`.
    #[inline(always)]
    pub(super) unsafe fn hsum(lo: __m128, hi: __m128) -> f32 {
        let r = _mm_add_ps(hi, lo);
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
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

    /// Prefetches cache line `line` of the rows two steps ahead of the step
    /// at `first` (`step` bytes of rows per step, where rows are adjacent,
    /// as in a weight matrix): one line per block and pair covers them.
    #[inline(always)]
    pub(super) unsafe fn prefetch(first: *const u8, step: usize, line: usize) {
        _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(2 * step + 64 * line).cast());
    }

    /// The four 128-bit quarters of a register.
    #[inline(always)]
    unsafe fn quarters(v: __m512) -> [__m128; 4] {
        [
            _mm512_extractf32x4_ps::<0>(v),
            _mm512_extractf32x4_ps::<1>(v),
            _mm512_extractf32x4_ps::<2>(v),
            _mm512_extractf32x4_ps::<3>(v),
        ]
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

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn gemm(
        format: Format,
        s: Shape,
        range: (usize, usize),
        a: *const u8,
        b: *const u8,
        c: *mut f32,
    ) {
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

/// Other builds: ggml computes every quantized product itself.
#[cfg(not(ggml_f32x8))]
mod x86 {
    use super::{Format, Shape};

    pub fn available() -> bool {
        false
    }

    pub unsafe fn gemm(
        _: Format,
        _: Shape,
        _: (usize, usize),
        _: *const u8,
        _: *const u8,
        _: *mut f32,
    ) {
        unreachable!("exact_gemm::kernel() is None on this build")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        super::super::exact_gemm::run_hook(s, a, b, [a_type, b_type, 0], nth)
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
                for &m in &[1, 2, 3, 5, 8, 33] {
                    for n in 1..=MAX_COLUMNS {
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
        assert_eq!(super::super::exact_gemm::quant_kernel_name(), expected);
    }

    #[test]
    fn wide_batches_and_other_formats_are_left_to_ggml() {
        let s = Shape {
            m: 4,
            n: MAX_COLUMNS + 1,
            k: 2,
            lda: 2,
            ldb: 2,
            ldc: 4,
        };
        let a = blocks(Format::Q4_1, false, 8, 3);
        let b = blocks(Format::Q4_1, true, 2 * s.n, 4);
        assert!(
            hooked(Format::Q4_1, s, &a, &b, 2).is_none(),
            "prompt-sized batch"
        );
        assert_eq!(
            Format::of(Q4_1, 0),
            None,
            "F32 columns (ggml packs them first)"
        );
        assert_eq!(Format::of(2, 8), None, "Q4_0 weights");
        assert_eq!(Format::of(Q4_1, Q8_1), Some(Format::Q4_1));
        assert_eq!(Format::of(Q8_0, Q8_0), Some(Format::Q8_0));
    }
}
