//! What both quantized kernels share: a column's scales converted once,
//! ggml's half-to-float and horizontal sum, and the row prefetch.

use super::Format;
use std::arch::x86_64::*;
use std::ptr::read_unaligned;

/// A column's per-block scale and (Q8_1) sum as floats, converted once
/// for all rows; both kernels keep them in buffers reused from call to
/// call (ggml's worker threads live as long as the process).
#[derive(Default)]
pub struct Scales {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl Scales {
    /// Converts the scales of the `k` blocks of `format`'s column at `y`.
    pub unsafe fn fill(&mut self, format: Format, k: usize, y: *const u8) {
        // SAFETY: the caller keeps this function's contract: `p` (or `y`) points to readable
        // block bytes of `format`, and the CPU has AVX2 and F16C (this build's baseline).
        unsafe {
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
}

/// The IEEE half at `p` as a float (exact, as ggml's lookup table).
#[inline(always)]
pub unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: the caller keeps this function's contract: `p` (or `y`) points to readable block
    // bytes of `format`, and the CPU has AVX2 and F16C (this build's baseline).
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            read_unaligned(p.cast::<u16>()) as i32,
        )))
    }
}

/// ggml's `hsum_float_8` of the 8-lane vector `[lo | hi]`.
#[inline(always)]
pub unsafe fn hsum(lo: __m128, hi: __m128) -> f32 {
    // SAFETY: register-only intrinsics of this build's baseline (AVX2, or
    // the features this function enables); no memory is touched.
    unsafe {
        let r = _mm_add_ps(hi, lo);
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
    }
}

/// Prefetches cache line `line` of the rows two steps ahead of the step
/// at `first` (`step` bytes of rows per step, where rows are adjacent,
/// as in a weight matrix): one line per block and pair covers them.
#[inline(always)]
pub unsafe fn prefetch(first: *const u8, step: usize, line: usize) {
    // SAFETY: a prefetch is only a hint: it never faults, whatever the
    // address (computed with wrapping_add).
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(2 * step + 64 * line).cast());
    }
}
