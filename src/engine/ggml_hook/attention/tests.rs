use super::kernel::{f16_to_f32, halves, unit_body, SCRATCH};
use super::lanes::{exp, Lanes, Scalar};
use super::*;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// F32 to F16 by truncation, for values of normal half range (test data).
fn to_half(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
}

const NEG_INF_HALF: u16 = 0xfc00;

/// Operands laid out as ggml's would be, owned.
struct Case {
    dim: usize,
    tokens: usize,
    cells: usize,
    q_heads: usize,
    kv_heads: usize,
    q: Vec<f32>,
    k: Vec<u16>,
    v: Vec<u16>,
    /// `[tokens][cells]`.
    mask: Vec<u16>,
    scale: f32,
}

impl Case {
    /// Random operands; row `t` sees cells up to `first + t` and, with a
    /// window, none before `first + t - window`.
    fn new(
        dim: usize,
        tokens: usize,
        cells: usize,
        heads: (usize, usize),
        window: Option<usize>,
    ) -> Case {
        let (q_heads, kv_heads) = heads;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (dim * 31 + tokens * 7 + cells) as u64);
        let q = (0..tokens * q_heads * dim)
            .map(|_| rng.next() * 2.0)
            .collect();
        let k = (0..kv_heads * cells * dim)
            .map(|_| to_half(rng.next()))
            .collect();
        let v = (0..kv_heads * cells * dim)
            .map(|_| to_half(rng.next()))
            .collect();
        let first = cells - tokens;
        let mut mask = vec![0u16; tokens * cells];
        for t in 0..tokens {
            for c in 0..cells {
                let late = c > first + t;
                let early = window.is_some_and(|w| c + w < first + t);
                if late || early {
                    mask[t * cells + c] = NEG_INF_HALF;
                }
            }
        }
        Case {
            dim,
            tokens,
            cells,
            q_heads,
            kv_heads,
            q,
            k,
            v,
            mask,
            scale: 1.0 / (dim as f32).sqrt(),
        }
    }

    /// The problem for query rows `rows` (all cells), writing to `out`.
    fn problem(&self, rows: std::ops::Range<usize>, out: &mut [f32]) -> Problem {
        let (d, f, h) = (self.dim, 4, 2);
        Problem {
            q: self.q[rows.start * self.q_heads * d..].as_ptr().cast(),
            q_row: self.q_heads * d * f,
            q_head: d * f,
            k: self.k.as_ptr().cast(),
            k_row: d * h,
            k_head: self.cells * d * h,
            v: self.v.as_ptr().cast(),
            v_row: d * h,
            v_head: self.cells * d * h,
            mask: self.mask[rows.start * self.cells..].as_ptr().cast(),
            mask_row: self.cells * h,
            out: out.as_mut_ptr().cast(),
            out_row: d * f,
            dim: d,
            tokens: rows.len(),
            cells: self.cells,
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            scale: self.scale,
        }
    }

    /// Runs the kernel on rows `rows`: `[rows][q_heads][dim]`.
    fn run(&self, rows: std::ops::Range<usize>, build: Build) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows.len() * self.q_heads * self.dim];
        let p = self.problem(rows, &mut out);
        for unit in 0..p.units() {
            // SAFETY: `p` views this case's buffers, which hold its shape.
            unsafe { run_unit(&p, unit, build) };
        }
        out
    }

    /// Softmax attention in f64, straight from the definition.
    fn reference(&self) -> Vec<f64> {
        let d = self.dim;
        let group = self.q_heads / self.kv_heads;
        let mut out = vec![0f64; self.tokens * self.q_heads * d];
        for t in 0..self.tokens {
            for h in 0..self.q_heads {
                let g = h / group;
                let q = &self.q[(t * self.q_heads + h) * d..][..d];
                let at = |x: &[u16], c: usize, i: usize| {
                    f64::from(f16_to_f32(x[(g * self.cells + c) * d + i]))
                };
                let mut scores = Vec::new();
                for c in 0..self.cells {
                    if self.mask[t * self.cells + c] == NEG_INF_HALF {
                        continue;
                    }
                    let dot: f64 = (0..d).map(|i| f64::from(q[i]) * at(&self.k, c, i)).sum();
                    scores.push((c, dot * f64::from(self.scale)));
                }
                let top = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s.1 - top).exp()).sum();
                for &(c, s) in &scores {
                    let w = (s - top).exp() / total;
                    for i in 0..d {
                        out[(t * self.q_heads + h) * d + i] += w * at(&self.v, c, i);
                    }
                }
            }
        }
        out
    }
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: {g} against {w}"
        );
    }
}

#[test]
fn exp_is_exact_where_skipping_needs_it_and_close_elsewhere() {
    assert_eq!(exp(0.0).to_bits(), 1f32.to_bits());
    assert_eq!(exp(-0.0).to_bits(), 1f32.to_bits());
    assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0f32.to_bits());
    assert_eq!(exp(-90.0).to_bits(), 0f32.to_bits());
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let want = f64::from(x).exp();
        worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        x += 0.0137;
    }
    assert!(worst < 4e-7, "worst relative error {worst}");
}

#[test]
fn halves_convert_exactly() {
    let cases = [
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x7bff, 65504.0),
        (0x0001, 2f32.powi(-24)),
        (0x0400, 2f32.powi(-14)),
        (0x8000, -0.0),
        (NEG_INF_HALF, f32::NEG_INFINITY),
    ];
    for (h, want) in cases {
        assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
    }
    // The vector conversion (F16C on x86-64) against the scalar one, for
    // every half, NaNs by bits too.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut out = vec![0f32; all.len()];
    // SAFETY: `all` holds out.len() halves.
    unsafe { halves(all.as_ptr().cast(), &mut out) };
    for (h, got) in all.iter().zip(&out) {
        assert_eq!(got.to_bits(), f16_to_f32(*h).to_bits(), "{h:#06x}");
    }
}

#[test]
fn matches_softmax_attention_in_f64() {
    let cases = [
        Case::new(64, 37, 150, (6, 2), None),
        Case::new(32, 70, 70, (4, 4), None),
        Case::new(16, 16, 300, (3, 1), Some(100)),
    ];
    for case in cases {
        let got = case.run(0..case.tokens, Build::Scalar);
        let want = case.reference();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = (f64::from(*g) - w).abs();
            assert!(
                err < 2e-5 * (1.0 + w.abs()),
                "dim {} element {i}: {g} against {w}",
                case.dim
            );
        }
    }
}

#[test]
fn a_row_is_the_same_alone_or_in_any_batch() {
    for case in [
        Case::new(64, 37, 150, (6, 2), None),
        Case::new(16, 40, 400, (3, 1), Some(64)),
    ] {
        let all = case.run(0..case.tokens, Build::Scalar);
        let row = case.q_heads * case.dim;
        // The last rows as a batch of their own, then every row alone.
        let tail = case.tokens - 20;
        let got = case.run(tail..case.tokens, Build::Scalar);
        assert_bits("last 20 rows", &got, &all[tail * row..]);
        for t in 0..case.tokens {
            let got = case.run(t..t + 1, Build::Scalar);
            assert_bits(&format!("row {t} alone"), &got, &all[t * row..][..row]);
        }
    }
}

#[test]
fn more_hidden_cells_change_nothing() {
    // The same rows over a KV cache with 100 more cells, hidden from all of
    // them (as llama.cpp's padded or other sequences' cells are).
    let case = Case::new(64, 37, 150, (6, 2), None);
    let mut wide = Case::new(64, 37, 250, (6, 2), None);
    for t in 0..case.tokens {
        for c in 0..wide.cells {
            wide.mask[t * wide.cells + c] = match c < case.cells {
                true => case.mask[t * case.cells + c],
                false => NEG_INF_HALF,
            };
        }
    }
    let per_cell = case.dim;
    for g in 0..case.kv_heads {
        for c in 0..case.cells {
            let from = (g * case.cells + c) * per_cell;
            let to = (g * wide.cells + c) * per_cell;
            wide.k[to..to + per_cell].copy_from_slice(&case.k[from..from + per_cell]);
            wide.v[to..to + per_cell].copy_from_slice(&case.v[from..from + per_cell]);
        }
    }
    wide.q.clone_from(&case.q);
    let narrow = case.run(0..case.tokens, Build::Scalar);
    assert_bits(
        "wider cache",
        &wide.run(0..wide.tokens, Build::Scalar),
        &narrow,
    );
}

#[test]
fn register_blocking_and_builds_do_not_change_a_bit() {
    let case = Case::new(64, 45, 200, (6, 2), None);
    let base = case.run(0..case.tokens, Build::Scalar);
    // The AVX-512 build's blocking (8), on the scalar lanes.
    let mut out = vec![f32::NAN; base.len()];
    let p = case.problem(0..case.tokens, &mut out);
    SCRATCH.with_borrow_mut(|w| {
        for unit in 0..p.units() {
            // SAFETY: `p` views this case's buffers.
            unsafe { unit_body::<Scalar, 8>(&p, unit, w) };
        }
    });
    assert_bits("8 per block", &out, &base);
    if best() == Some(Build::Avx512) {
        assert_bits("AVX-512", &case.run(0..case.tokens, Build::Avx512), &base);
    }
}

/// The AVX-512 `exp`, lane by lane, against the scalar one over its whole
/// range and the edges (where the CPU has AVX-512).
#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_exp_is_the_scalar_exp() {
    use super::lanes::avx512::V;
    if best() != Some(Build::Avx512) {
        return;
    }
    let xs: Vec<f32> = (0..4096)
        .map(|i| -100.0 + i as f32 * 0.0477)
        .chain([0.0, -0.0, f32::NEG_INFINITY, -87.33, 88.37, 1e-30])
        .collect();
    for chunk in xs.chunks_exact(LANES) {
        // SAFETY: AVX-512 F is there (best() saw it); 16 floats each way.
        let got = unsafe {
            let mut out = [0f32; LANES];
            V::exp(V::load(chunk.as_ptr())).store(out.as_mut_ptr());
            out
        };
        for (x, g) in chunk.iter().zip(got) {
            assert_eq!(g.to_bits(), exp(*x).to_bits(), "exp({x})");
        }
    }
}
