//! The kernel's steps for one unit of work (see the parent module): pack
//! the unit's queries, then per KV tile read the mask, convert keys and
//! values, and per query head compute scores, weights and the output.

use super::lanes::Lanes;
use super::{Problem, LANES, ROWS, TILE};
use std::cell::RefCell;

/// Per-thread scratch, kept between ops.
#[derive(Default)]
pub(super) struct Scratch {
    /// Scaled queries, transposed: `[head][dim][ROWS]`.
    qt: Vec<f32>,
    /// Output accumulators, transposed: `[head][dim][ROWS]`.
    ot: Vec<f32>,
    /// Running maximum and sum per row: `[head][ROWS]`.
    m: Vec<f32>,
    s: Vec<f32>,
    /// One tile's keys and values in F32: `[TILE][dim]`.
    kf: Vec<f32>,
    vf: Vec<f32>,
    /// One tile's scores, then weights: `[TILE][ROWS]`.
    st: Vec<f32>,
    /// One tile's mask, transposed: `[TILE][ROWS]`.
    mt: Vec<f32>,
    /// One mask row of a tile.
    row: Vec<f32>,
}

impl Scratch {
    /// Sizes the buffers for a unit; the running state starts afresh
    /// (queries and outputs 0, maxima -inf, sums 0). The tile buffers are
    /// written before they are read, so they are only sized.
    fn reset(&mut self, heads: usize, dim: usize) {
        let fill = |v: &mut Vec<f32>, n: usize, x: f32| {
            v.clear();
            v.resize(n, x);
        };
        fill(&mut self.qt, heads * dim * ROWS, 0.0);
        fill(&mut self.ot, heads * dim * ROWS, 0.0);
        fill(&mut self.m, heads * ROWS, f32::NEG_INFINITY);
        fill(&mut self.s, heads * ROWS, 0.0);
        let size = |v: &mut Vec<f32>, n: usize| v.resize(n.max(v.len()), 0.0);
        size(&mut self.kf, TILE * dim);
        size(&mut self.vf, TILE * dim);
        size(&mut self.st, TILE * ROWS);
        size(&mut self.mt, TILE * ROWS);
        size(&mut self.row, TILE);
    }
}

thread_local! {
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn unit_avx512(p: &Problem, unit: usize, w: &mut Scratch) {
    // SAFETY: the caller's contract (run_unit's).
    unsafe { unit_body::<super::lanes::avx512::V, 8>(p, unit, w) }
}

/// One unit with vectors `V`; `G` cells (scores) or dimensions (output) per
/// register block, which changes the speed, never a lane's arithmetic.
#[inline(always)]
pub(super) unsafe fn unit_body<V: Lanes, const G: usize>(
    p: &Problem,
    unit: usize,
    w: &mut Scratch,
) {
    let blocks = p.tokens.div_ceil(ROWS);
    // Last blocks first: under a causal mask they see the most cells, and
    // ggml's threads take units in order.
    let block = blocks - 1 - unit / p.kv_heads;
    let kv_head = unit % p.kv_heads;
    let t0 = block * ROWS;
    let rows = ROWS.min(p.tokens - t0);
    let group = p.q_heads / p.kv_heads;
    let dim = p.dim;
    w.reset(group, dim);
    for h in 0..group {
        let head = kv_head * group + h;
        let qt = &mut w.qt[h * dim * ROWS..][..dim * ROWS];
        for r in 0..rows {
            // SAFETY: row (t0 + r, head) of the F32 queries, `dim` long.
            let q = unsafe {
                std::slice::from_raw_parts(
                    p.q.add((t0 + r) * p.q_row + head * p.q_head).cast::<f32>(),
                    dim,
                )
            };
            for (i, x) in q.iter().enumerate() {
                qt[i * ROWS + r] = x * p.scale;
            }
        }
    }
    for c0 in (0..p.cells).step_by(TILE) {
        let n = TILE.min(p.cells - c0);
        // SAFETY: the mask rows t0.. t0 + rows hold p.cells halves.
        let mask = unsafe { mask_tile(p, t0, rows, c0, n, w) };
        if mask == Mask::Hidden {
            continue;
        }
        let padded = n.div_ceil(G) * G;
        for c in 0..padded {
            let kf = &mut w.kf[c * dim..][..dim];
            let vf = &mut w.vf[c * dim..][..dim];
            if c < n {
                let cell = c0 + c;
                // SAFETY: cell `cell` of KV head `kv_head`, `dim` halves each.
                unsafe {
                    halves(p.k.add(cell * p.k_row + kv_head * p.k_head), kf);
                    halves(p.v.add(cell * p.v_row + kv_head * p.v_head), vf);
                }
            } else {
                kf.fill(0.0);
                vf.fill(0.0);
            }
        }
        for h in 0..group {
            let at = h * dim * ROWS;
            // SAFETY: every buffer holds what these read and write (reset
            // sized them for `group`, `dim`, TILE and ROWS); `padded` <=
            // TILE and a multiple of G; `dim` a multiple of 16.
            unsafe {
                scores::<V, G>(
                    w.qt[at..].as_ptr(),
                    w.kf.as_ptr(),
                    w.st.as_mut_ptr(),
                    dim,
                    padded,
                );
                if mask == Mask::Mixed {
                    add_mask::<V>(w.st.as_mut_ptr(), w.mt.as_ptr(), n);
                }
                let m = w.m[h * ROWS..].as_mut_ptr();
                let s = w.s[h * ROWS..].as_mut_ptr();
                let alpha = weights::<V>(w.st.as_mut_ptr(), n, m, s);
                accumulate::<V, G>(
                    w.ot[at..].as_mut_ptr(),
                    w.st.as_ptr(),
                    w.vf.as_ptr(),
                    alpha,
                    dim,
                    n,
                );
            }
        }
    }
    for h in 0..group {
        let head = kv_head * group + h;
        let ot = &w.ot[h * dim * ROWS..][..dim * ROWS];
        for r in 0..rows {
            let sum = w.s[h * ROWS + r];
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            // SAFETY: output row (t0 + r, head), `dim` floats, written by
            // this unit only.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    p.out
                        .add((head + (t0 + r) * p.q_heads) * p.out_row)
                        .cast::<f32>(),
                    dim,
                )
            };
            for (i, o) in out.iter_mut().enumerate() {
                *o = ot[i * ROWS + r] * inv;
            }
        }
    }
}

/// What the mask does to one tile, for a unit's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mask {
    /// Every cell visible to every row (mask 0, or no mask).
    Open,
    /// Every cell hidden from every row: the tile is skipped.
    Hidden,
    /// Anything else: `mt` holds the mask, transposed.
    Mixed,
}

/// Reads the mask of cells `c0..c0 + n` for rows `t0..t0 + rows`.
///
/// # Safety
///
/// Mask rows `t0..t0 + rows` hold at least `c0 + n` halves (or no mask).
#[inline(always)]
unsafe fn mask_tile(
    p: &Problem,
    t0: usize,
    rows: usize,
    c0: usize,
    n: usize,
    w: &mut Scratch,
) -> Mask {
    if p.mask.is_null() {
        return Mask::Open;
    }
    let (mut open, mut hidden) = (true, true);
    let row = |r: usize, out: &mut [f32]| {
        // SAFETY: the caller's contract.
        unsafe { halves(p.mask.add((t0 + r) * p.mask_row + c0 * 2), out) }
    };
    for r in 0..rows {
        let out = &mut w.row[..n];
        row(r, out);
        for &x in out.iter() {
            open &= x == 0.0;
            hidden &= x == f32::NEG_INFINITY;
        }
    }
    match (open, hidden) {
        (true, _) => Mask::Open,
        (_, true) => Mask::Hidden,
        _ => {
            w.mt[..n * ROWS].fill(0.0);
            for r in 0..rows {
                let out = &mut w.row[..n];
                row(r, out);
                for (c, &x) in out.iter().enumerate() {
                    w.mt[c * ROWS + r] = x;
                }
            }
            Mask::Mixed
        }
    }
}

/// Converts `out.len()` F16 values at `src` (any alignment) to F32: exact.
///
/// # Safety
///
/// `src` holds `out.len()` halves.
#[inline(always)]
pub(super) unsafe fn halves(src: *const u8, out: &mut [f32]) {
    let src = src.cast::<u16>();
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    {
        use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        let mut chunks = out.chunks_exact_mut(8);
        let mut i = 0;
        for chunk in &mut chunks {
            // SAFETY: 8 halves at src + i (the caller's contract); F16C is
            // in this build's baseline.
            unsafe {
                let h = _mm_loadu_si128(src.add(i).cast());
                _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for (j, o) in chunks.into_remainder().iter_mut().enumerate() {
            // SAFETY: within the caller's `out.len()` halves.
            *o = f16_to_f32(unsafe { src.add(i + j).read_unaligned() });
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    for (j, o) in out.iter_mut().enumerate() {
        // SAFETY: within the caller's `out.len()` halves.
        *o = f16_to_f32(unsafe { src.add(j).read_unaligned() });
    }
}

/// IEEE half to single, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let shift = frac.leading_zeros() - 21;
            let frac = (frac << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (frac << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Scores `st[c][r] = sum_i qt[i][r] * kf[c][i]` for `cells` cells (a
/// multiple of `G`), FMAs in `i` order.
///
/// # Safety
///
/// `qt` holds `dim * ROWS` floats, `kf` `cells * dim`, `st` `cells * ROWS`.
#[inline(always)]
unsafe fn scores<V: Lanes, const G: usize>(
    qt: *const f32,
    kf: *const f32,
    st: *mut f32,
    dim: usize,
    cells: usize,
) {
    // SAFETY (whole body): within the extents the caller gives.
    unsafe {
        for c in (0..cells).step_by(G) {
            let mut acc = [[V::splat(0.0); 2]; G];
            for i in 0..dim {
                let q0 = V::load(qt.add(i * ROWS));
                let q1 = V::load(qt.add(i * ROWS + LANES));
                for (j, a) in acc.iter_mut().enumerate() {
                    let k = V::splat(*kf.add((c + j) * dim + i));
                    a[0] = V::fma(q0, k, a[0]);
                    a[1] = V::fma(q1, k, a[1]);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                a[0].store(st.add((c + j) * ROWS));
                a[1].store(st.add((c + j) * ROWS + LANES));
            }
        }
    }
}

/// Adds the transposed mask `mt` to the scores of `n` cells.
///
/// # Safety
///
/// `st` and `mt` hold `n * ROWS` floats.
#[inline(always)]
unsafe fn add_mask<V: Lanes>(st: *mut f32, mt: *const f32, n: usize) {
    // SAFETY: within the extents the caller gives.
    unsafe {
        for i in (0..n * ROWS).step_by(LANES) {
            V::add(V::load(st.add(i)), V::load(mt.add(i))).store(st.add(i));
        }
    }
}

/// Turns a tile's scores (`n` cells) into weights in place and updates each
/// row's running maximum `m` and sum `s`; returns each row's `alpha`, the
/// factor the row's output so far must be scaled by.
///
/// # Safety
///
/// `st` holds `n * ROWS` floats, `m` and `s` `ROWS` each.
#[inline(always)]
unsafe fn weights<V: Lanes>(st: *mut f32, n: usize, m: *mut f32, s: *mut f32) -> [V; 2] {
    // SAFETY: within the extents the caller gives.
    unsafe {
        let mut alpha = [V::splat(0.0); 2];
        for (half, a) in alpha.iter_mut().enumerate() {
            let lane = half * LANES;
            let mut top = V::splat(f32::NEG_INFINITY);
            for c in 0..n {
                top = V::max(V::load(st.add(c * ROWS + lane)), top);
            }
            let old = V::load(m.add(lane));
            let new = V::max(top, old);
            let base = V::base(new);
            *a = V::exp(V::sub(old, base));
            new.store(m.add(lane));
            let mut sum = V::splat(0.0);
            for c in 0..n {
                let at = st.add(c * ROWS + lane);
                let e = V::exp(V::sub(V::load(at), base));
                e.store(at);
                sum = V::add(sum, e);
            }
            V::fma(V::load(s.add(lane)), *a, sum).store(s.add(lane));
        }
        alpha
    }
}

/// `ot[i][r] = ot[i][r] * alpha[r] + sum_c st[c][r] * vf[c][i]`, cells in
/// order; `G` dimensions per register block (`dim` is a multiple of it).
///
/// # Safety
///
/// `ot` holds `dim * ROWS` floats, `st` `n * ROWS`, `vf` `n * dim`.
#[inline(always)]
unsafe fn accumulate<V: Lanes, const G: usize>(
    ot: *mut f32,
    st: *const f32,
    vf: *const f32,
    alpha: [V; 2],
    dim: usize,
    n: usize,
) {
    // SAFETY: within the extents the caller gives.
    unsafe {
        for i0 in (0..dim).step_by(G) {
            let mut acc = [[V::splat(0.0); 2]; G];
            for (j, a) in acc.iter_mut().enumerate() {
                let o = ot.add((i0 + j) * ROWS);
                a[0] = V::mul(V::load(o), alpha[0]);
                a[1] = V::mul(V::load(o.add(LANES)), alpha[1]);
            }
            for c in 0..n {
                let p0 = V::load(st.add(c * ROWS));
                let p1 = V::load(st.add(c * ROWS + LANES));
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = V::splat(*vf.add(c * dim + i0 + j));
                    a[0] = V::fma(p0, v, a[0]);
                    a[1] = V::fma(p1, v, a[1]);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let o = ot.add((i0 + j) * ROWS);
                a[0].store(o);
                a[1].store(o.add(LANES));
            }
        }
    }
}
