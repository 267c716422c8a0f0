//! Flash attention for prompt batches: every query row's result depends
//! only on that row, the KV cells its mask lets it see, and fixed 64-cell
//! tiles of the KV cache, never on which other rows share its batch.
//!
//! ggml's tiled path packs 64 query rows of one head per tile. A prompt
//! batch that is not a multiple of 64 rows, cut again at ggml's thread
//! chunks, leaves most tiles part-empty, and each still converts and
//! multiplies a whole 64-row tile: measured on a cached turn of an agent
//! conversation (150 new rows over 2,000 cached cells), attention was two
//! thirds of the turn. Here a unit of work is one KV head and 32 query rows
//! (two 16-lane vectors) of every query head that shares it, so each KV
//! tile is converted from F16 once for all of them; the scores are
//! computed cells × rows, so a row's softmax and its output are lane-wise
//! vector arithmetic in the same order in every lane.
//!
//! A row's arithmetic, per tile in KV order: the dot products of its
//! scaled query with each cell's key (FMAs over the head dimension, in
//! order), plus the mask; the running maximum `m`, base `b` (`m`, or 0
//! while nothing is visible), `alpha = exp(m_old - b)`; `p = exp(s - b)`
//! per cell, summed in cell order; `S = S * alpha + sum`; `O = O * alpha +
//! p * V` per cell in order. A tile the mask hides from every row of a unit
//! is skipped, and that is the same arithmetic for each of those rows
//! (`alpha = exp(0) = 1`, `p = 0`), so skipping never depends on the
//! neighbours either. `lanes::exp` returns exactly 0 below -87.33 and
//! exactly 1 at 0, which that equivalence needs; a unit test checks it,
//! and that every row of a batch equals the same row computed alone.
//!
//! The kernel is written once over a 16-lane vector trait (`lanes`), with
//! two implementations: plain arrays, one scalar operation per lane (the
//! definition, which the tests run on any CPU), and AVX-512 registers
//! (prompt passes, on CPUs that have it). Each lane gets the same IEEE
//! operations in both, so the two give the same bits (a unit test checks
//! that too). Only what this kernel supports comes here ([`Problem::of`]):
//! F32 queries, F16 keys and values of one head size, a multiple of 16; no
//! ALiBi, logit soft-capping or attention sinks; one sequence stream.
//! Anything else stays on ggml's path.

use kernel::{unit_body, SCRATCH};
use lanes::Scalar;
use llama_cpp_sys_2::ggml_tensor;

mod kernel;
mod lanes;

/// Lanes of one vector: query rows computed together.
pub const LANES: usize = 16;
/// Query rows of one unit of work: two vectors.
pub const ROWS: usize = 2 * LANES;
/// KV cells per tile.
pub const TILE: usize = 64;
/// Fewest query rows this kernel takes: below one vector, lanes would
/// mostly compute padding.
pub const MIN_ROWS: usize = LANES;

/// One attention op's operands: raw views of ggml's tensors.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    /// F32 queries: row `(t, h)` at `q + t * q_row + h * q_head` bytes.
    pub q: *const u8,
    pub q_row: usize,
    pub q_head: usize,
    /// F16 keys: cell `c` of KV head `g` at `k + c * k_row + g * k_head`.
    pub k: *const u8,
    pub k_row: usize,
    pub k_head: usize,
    /// F16 values, laid out as the keys.
    pub v: *const u8,
    pub v_row: usize,
    pub v_head: usize,
    /// F16 mask, row `t` at `mask + t * mask_row` (null: no mask).
    pub mask: *const u8,
    pub mask_row: usize,
    /// F32 output: row `(t, h)` at `out + (h + t * q_heads) * out_row`.
    pub out: *mut u8,
    pub out_row: usize,
    /// Head size (keys and values).
    pub dim: usize,
    pub tokens: usize,
    pub cells: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub scale: f32,
}

impl Problem {
    /// Units of work: one per KV head and block of [`ROWS`] query rows.
    pub fn units(&self) -> usize {
        self.kv_heads * self.tokens.div_ceil(ROWS)
    }

    /// Whether the kernel takes this shape.
    pub fn supported(&self) -> bool {
        self.dim > 0
            && self.dim.is_multiple_of(LANES)
            && self.tokens >= MIN_ROWS
            && self.cells > 0
            && self.kv_heads > 0
            && self.q_heads.is_multiple_of(self.kv_heads)
    }
}

impl Problem {
    /// The operands of ggml's `GGML_OP_FLASH_ATTN_EXT` node `dst`, or None
    /// where the kernel does not take them (see the module docs).
    ///
    /// # Safety
    ///
    /// `dst` is a live flash attention node whose sources are live.
    pub unsafe fn of(dst: *const ggml_tensor) -> Option<Problem> {
        use llama_cpp_sys_2::{GGML_TYPE_F16, GGML_TYPE_F32};
        // SAFETY: the caller's contract.
        let dst = unsafe { &*dst };
        let [q, k, v, mask, sinks] = [0, 1, 2, 3, 4].map(|i| dst.src[i]);
        if q.is_null() || k.is_null() || v.is_null() || !sinks.is_null() {
            return None;
        }
        // SAFETY: a live node's sources are live (the caller's contract).
        let (q, k, v) = unsafe { (&*q, &*k, &*v) };
        let param = |i: usize| f32::from_bits(dst.op_params[i] as u32);
        let dim = k.ne[0] as usize;
        let rows_ok = |t: &ggml_tensor, ty, size| {
            t.type_ == ty && t.nb[0] == size && t.ne[0] as usize == dim && t.ne[3] == 1
        };
        let shapes = rows_ok(q, GGML_TYPE_F32, 4)
            && rows_ok(k, GGML_TYPE_F16, 2)
            && rows_ok(v, GGML_TYPE_F16, 2)
            && k.ne[1] == v.ne[1]
            && k.ne[2] == v.ne[2]
            && dst.type_ == GGML_TYPE_F32
            && dst.ne == [dim as i64, q.ne[2], q.ne[1], 1]
            && dst.nb[0] == 4
            && dst.nb[1] == dim * 4
            && dst.nb[2] == dst.nb[1] * q.ne[2] as usize;
        if !shapes || param(1) != 0.0 || param(2) != 0.0 {
            return None;
        }
        let (mask, mask_row) = if mask.is_null() {
            (std::ptr::null(), 0)
        } else {
            // SAFETY: as above.
            let m = unsafe { &*mask };
            let fits = m.type_ == GGML_TYPE_F16
                && m.nb[0] == 2
                && m.ne[0] >= k.ne[1]
                && m.ne[1] >= q.ne[1]
                && m.ne[2] == 1
                && m.ne[3] == 1;
            if !fits {
                return None;
            }
            (m.data as *const u8, m.nb[1])
        };
        let p = Problem {
            q: q.data as *const u8,
            q_row: q.nb[1],
            q_head: q.nb[2],
            k: k.data as *const u8,
            k_row: k.nb[1],
            k_head: k.nb[2],
            v: v.data as *const u8,
            v_row: v.nb[1],
            v_head: v.nb[2],
            mask,
            mask_row,
            out: dst.data.cast(),
            out_row: dst.nb[1],
            dim,
            tokens: q.ne[1] as usize,
            cells: k.ne[1] as usize,
            q_heads: q.ne[2] as usize,
            kv_heads: k.ne[2] as usize,
            scale: param(0),
        };
        p.supported().then_some(p)
    }
}

/// Which implementation of the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Plain Rust over 16-float arrays: the definition, for the tests and
    /// for checking the vector one.
    Scalar,
    /// AVX-512 F registers (x86-64 CPUs that have it).
    Avx512,
}

/// The implementation prompt passes use on this CPU: AVX-512 where it has
/// it, else none (ggml's own attention is faster than the scalar one).
pub fn best() -> Option<Build> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return Some(Build::Avx512);
    }
    None
}

/// Computes unit `unit` of `p` ([`Problem::units`]) with `build`.
///
/// # Safety
///
/// `p` views live tensors of its shape and strides; no other thread
/// computes the same unit meanwhile; `build` is [`Build::Scalar`] or what
/// [`best`] returned.
pub unsafe fn run_unit(p: &Problem, unit: usize, build: Build) {
    SCRATCH.with_borrow_mut(|w| match build {
        // SAFETY: the caller's contract, passed on.
        Build::Scalar => unsafe { unit_body::<Scalar, 4>(p, unit, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, and `best()` saw AVX-512 F on this CPU.
        Build::Avx512 => unsafe { kernel::unit_avx512(p, unit, w) },
        #[cfg(not(target_arch = "x86_64"))]
        Build::Avx512 => unreachable!("AVX-512 is x86-64 only"),
    })
}

#[cfg(test)]
mod tests;
