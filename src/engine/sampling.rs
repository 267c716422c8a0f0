//! Choosing the next token from a row of logits, and its probability.
//!
//! This runs once per generated token on the hot path, over the whole
//! vocabulary (49k for SmolLM2, 262k for Gemma 3), so it is written to be
//! auto-vectorised: fixed-width lanes, a branch-free `exp`, no sorting of the
//! full vocabulary. Every token's probability is recorded under the model's
//! untempered distribution (softmax of the raw logits): confidence is a
//! property of the model, not of the sampling temperature.

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Always the most probable token: deterministic.
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens
    /// whose probability reaches `top_p`, drawn with a seeded generator.
    Random {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// Nucleus mass used when a caller sets a temperature but no top_p.
pub const DEFAULT_TOP_P: f32 = 0.95;

impl Sampling {
    /// The sampling a call's arguments ask for: greedy when `temperature`
    /// is absent or 0, else seeded nucleus sampling.
    pub fn from_args(temperature: Option<f32>, top_p: f32, seed: u64) -> Self {
        match temperature {
            Some(temperature) if temperature > 0.0 => Sampling::Random {
                temperature,
                top_p,
                seed,
            },
            _ => Sampling::Greedy,
        }
    }
}

/// Lanes for the vectorised reductions (8 x f32 = one AVX2 register).
const LANES: usize = 8;

/// `fast_exp`'s constants: ln 2 in two parts (Cody-Waite), and the shifter
/// 1.5 * 2^23, where floats are one apart, so adding it rounds to an
/// integer (ties to even) whose value the sum's low bits hold.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const SHIFTER: f32 = 12_582_912.0;
/// The Taylor coefficients of e^r after 1 + r.
const C2: f32 = 0.5;
const C3: f32 = 1.0 / 6.0;
const C4: f32 = 1.0 / 24.0;
const C5: f32 = 1.0 / 120.0;
const C6: f32 = 1.0 / 720.0;

/// `e^x` for `x <= 0`, branch-free:
/// exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 computed with
/// a two-part ln 2, |r| <= 0.35, and a degree-6 Taylor polynomial for e^r.
/// Relative error below 1e-6 on [-87, 0]. [`fast_exp8`] is the same
/// arithmetic on eight lanes.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let v = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = v - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * C6)))));
    let n_int = v.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    f32::from_bits(((n_int + 127) << 23) as u32) * p
}

/// [`fast_exp`] on eight lanes, lane for lane the same bits (the same
/// operations in the same order, no fused multiply-adds).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn fast_exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: register-only AVX2 intrinsics, and this build targets AVX2
    // (the cfg above).
    unsafe {
        let k = _mm256_set1_ps;
        let x = _mm256_max_ps(x, k(-87.0));
        let v = _mm256_add_ps(_mm256_mul_ps(x, k(std::f32::consts::LOG2_E)), k(SHIFTER));
        let n = _mm256_sub_ps(v, k(SHIFTER));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, k(LN2_HI))),
            _mm256_mul_ps(n, k(LN2_LO)),
        );
        let mut p = _mm256_mul_ps(r, k(C6));
        for c in [C5, C4, C3, C2, 1.0] {
            p = _mm256_mul_ps(r, _mm256_add_ps(k(c), p));
        }
        let p = _mm256_add_ps(k(1.0), p);
        let n_int = _mm256_sub_epi32(
            _mm256_castps_si256(v),
            _mm256_set1_epi32(SHIFTER.to_bits() as i32),
        );
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127)));
        _mm256_mul_ps(_mm256_castsi256_ps(scale), p)
    }
}

/// Index and value of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> (usize, f32) {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut idx = [0usize; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for l in 0..LANES {
            if chunk[l] > best[l] {
                best[l] = chunk[l];
                idx[l] = c * LANES + l;
            }
        }
    }
    let base = logits.len() - tail.len();
    for (i, &v) in tail.iter().enumerate() {
        if v > best[i] {
            best[i] = v;
            idx[i] = base + i;
        }
    }
    let mut winner = (usize::MAX, f32::NEG_INFINITY);
    for l in 0..LANES {
        if best[l] > winner.1 || (best[l] == winner.1 && idx[l] < winner.0) {
            winner = (idx[l], best[l]);
        }
    }
    winner
}

/// `sum(exp((x - max) * scale))` over the row.
pub fn sum_exp(logits: &[f32], max: f32, scale: f32) -> f32 {
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let (acc, _) = exp_lanes(&logits[..logits.len() - tail.len()], max, scale);
    acc.iter().sum::<f32>()
        + tail
            .iter()
            .map(|&x| fast_exp((x - max) * scale))
            .sum::<f32>()
}

/// Per lane of `body` (whole chunks of [`LANES`]): `sum(e)` and
/// `sum(e * d)` with `d = (x - max) * scale` and `e = exp(d)`. Both sums
/// above build on it; on AVX2 it runs [`fast_exp8`], lane for lane the
/// bits of [`exp_lanes_scalar`].
fn exp_lanes(body: &[f32], max: f32, scale: f32) -> ([f32; LANES], [f32; LANES]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        let (mut acc, mut mom) = ([0f32; LANES], [0f32; LANES]);
        // SAFETY: AVX2 intrinsics on this AVX2 build; each load reads one
        // whole chunk of LANES floats, each store writes one LANES array.
        unsafe {
            let (mut a, mut m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (max8, scale8) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
            for chunk in body.chunks_exact(LANES) {
                let x = _mm256_loadu_ps(chunk.as_ptr());
                let d = _mm256_mul_ps(_mm256_sub_ps(x, max8), scale8);
                let e = fast_exp8(d);
                a = _mm256_add_ps(a, e);
                m = _mm256_add_ps(m, _mm256_mul_ps(e, d));
            }
            _mm256_storeu_ps(acc.as_mut_ptr(), a);
            _mm256_storeu_ps(mom.as_mut_ptr(), m);
        }
        (acc, mom)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    exp_lanes_scalar(body, max, scale)
}

/// [`exp_lanes`] one float at a time.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn exp_lanes_scalar(body: &[f32], max: f32, scale: f32) -> ([f32; LANES], [f32; LANES]) {
    let (mut acc, mut mom) = ([0f32; LANES], [0f32; LANES]);
    for chunk in body.chunks_exact(LANES) {
        for l in 0..LANES {
            let d = (chunk[l] - max) * scale;
            let e = fast_exp(d);
            acc[l] += e;
            mom[l] += e * d;
        }
    }
    (acc, mom)
}

/// SplitMix64: small, fast, and good enough to draw tokens reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The sampler of one generation: the strategy, its generator, scratch space.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: Rng,
    scratch: Vec<(f32, u32)>,
}

/// One chosen token, its probability under the untempered distribution,
/// and that distribution's entropy (nats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub prob: f32,
    pub entropy: f32,
}

/// `sum(exp(x - max))` and `sum(exp(x - max) * (x - max))` over the row, in
/// one pass: the softmax's normaliser and what its entropy needs.
fn sum_exp_moment(logits: &[f32], max: f32) -> (f32, f32) {
    let tail = logits.chunks_exact(LANES).remainder();
    // A scale of 1 changes no bit of `x - max`.
    let (acc, mom) = exp_lanes(&logits[..logits.len() - tail.len()], max, 1.0);
    let (mut z, mut m) = (acc.iter().sum::<f32>(), mom.iter().sum::<f32>());
    for &x in tail {
        let d = x - max;
        let e = fast_exp(d);
        z += e;
        m += e * d;
    }
    (z, m)
}

/// `token` scored under softmax(`logits`) (temperature 1): its probability
/// and the distribution's entropy, ln z - E[x - max].
pub fn scored(logits: &[f32], token: usize) -> Pick {
    let (_, max) = argmax(logits);
    pick_of(logits, token, max)
}

/// The [`Pick`] of `token` given the row's largest logit `max`.
fn pick_of(logits: &[f32], token: usize, max: f32) -> Pick {
    let (z, m) = sum_exp_moment(logits, max);
    Pick {
        token: token as u32,
        prob: (fast_exp(logits[token] - max) / z).clamp(f32::MIN_POSITIVE, 1.0),
        entropy: (z.ln() - m / z).max(0.0),
    }
}

/// Probability of `token` under softmax(`logits`) (temperature 1).
pub fn raw_prob(logits: &[f32], token: usize) -> f32 {
    let (_, max) = argmax(logits);
    (fast_exp(logits[token] - max) / sum_exp(logits, max, 1.0)).clamp(f32::MIN_POSITIVE, 1.0)
}

/// Speculative sampling's accept/resample step (Leviathan et al. 2023;
/// Chen et al. 2023): `x` was drawn from the draft distribution `q`; keep it
/// with probability min(1, p(x)/q(x)), else draw from normalised
/// max(0, p - q). The result is distributed exactly as `p`.
/// Returns the token and whether the draft was kept.
pub fn accept_or_resample(p: &[f32], q: &[f32], x: usize, rng: &mut Rng) -> (usize, bool) {
    let (px, qx) = (p[x], q[x]);
    if qx <= 0.0 || rng.next_f32() < (px / qx).min(1.0) {
        return (x, true);
    }
    let total: f32 = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).sum();
    if total <= 0.0 {
        return (x, true);
    }
    let mut target = rng.next_f32() * total;
    let mut last = x;
    for (i, (a, b)) in p.iter().zip(q).enumerate() {
        let w = (a - b).max(0.0);
        if w > 0.0 {
            last = i;
            target -= w;
            if target <= 0.0 {
                return (i, false);
            }
        }
    }
    (last, false)
}

/// Draws an index from the normalised distribution `probs`.
pub fn draw(probs: &[f32], rng: &mut Rng) -> usize {
    let total: f32 = probs.iter().sum();
    let mut target = rng.next_f32() * total;
    let mut last = 0;
    for (i, &w) in probs.iter().enumerate() {
        if w > 0.0 {
            last = i;
            target -= w;
            if target <= 0.0 {
                return i;
            }
        }
    }
    last
}

impl Sampler {
    pub fn is_greedy(&self) -> bool {
        match self.sampling {
            Sampling::Greedy => true,
            Sampling::Random { temperature, .. } => temperature <= 0.0,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The token after the first, as the decoding loop picks it when no
    /// draft is offered: the argmax when greedy, else a draw from
    /// [`Sampler::distribution`]; with its untempered probability. (The
    /// first token comes from [`Sampler::pick`].)
    pub fn next(&mut self, logits: &[f32]) -> Pick {
        if self.is_greedy() {
            return self.pick(logits);
        }
        let p = self.distribution(logits);
        scored(logits, draw(&p, &mut self.rng))
    }

    /// The distribution this sampler draws from: softmax at the temperature,
    /// restricted to the top-p nucleus, normalised. Dense over the vocabulary.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<f32> {
        let (temperature, top_p) = match self.sampling {
            Sampling::Random {
                temperature, top_p, ..
            } if temperature > 0.0 => (temperature, top_p),
            _ => {
                let mut d = vec![0.0; logits.len()];
                d[argmax(logits).0] = 1.0;
                return d;
            }
        };
        let (_, max) = argmax(logits);
        let scale = 1.0 / temperature;
        let mut d: Vec<f32> = logits
            .iter()
            .map(|&x| fast_exp((x - max) * scale))
            .collect();
        if top_p < 1.0 {
            // The smallest weight inside the nucleus: keep everything at or above it.
            let z: f32 = d.iter().sum();
            self.scratch.clear();
            self.scratch
                .extend(d.iter().enumerate().map(|(i, &w)| (w, i as u32)));
            self.scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            let mut mass = 0.0;
            let mut cut = 0.0;
            for &(w, _) in &self.scratch {
                mass += w;
                cut = w;
                if mass >= top_p * z {
                    break;
                }
            }
            d.iter_mut().filter(|w| **w < cut).for_each(|w| *w = 0.0);
        }
        let z: f32 = d.iter().sum();
        d.iter_mut().for_each(|w| *w /= z);
        d
    }

    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Random { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Sampler {
            sampling,
            rng: Rng::new(seed),
            scratch: Vec::new(),
        }
    }

    /// Picks the next token from `logits`.
    pub fn pick(&mut self, logits: &[f32]) -> Pick {
        let (best, max) = argmax(logits);
        let token = match self.sampling {
            Sampling::Greedy => best,
            Sampling::Random {
                temperature, top_p, ..
            } => {
                if temperature <= 0.0 {
                    best
                } else {
                    self.draw(logits, max, 1.0 / temperature, top_p)
                }
            }
        };
        pick_of(logits, token, max)
    }

    /// Draws from softmax(logits * scale) restricted to the top-p nucleus.
    fn draw(&mut self, logits: &[f32], max: f32, scale: f32, top_p: f32) -> usize {
        let z = sum_exp(logits, max, scale);
        let weight = |x: f32| fast_exp((x - max) * scale);
        if top_p >= 1.0 {
            let mut target = self.rng.next_f32() * z;
            for (i, &x) in logits.iter().enumerate() {
                target -= weight(x);
                if target <= 0.0 {
                    return i;
                }
            }
            return argmax(logits).0;
        }
        // Grow a top-k window until it holds top_p of the mass: each round is
        // O(vocab) with select_nth, never a full sort of the vocabulary.
        let need = top_p.max(0.0) * z;
        self.scratch.clear();
        self.scratch
            .extend(logits.iter().enumerate().map(|(i, &x)| (x, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        let mut k = 64.min(self.scratch.len());
        loop {
            if k < self.scratch.len() {
                self.scratch.select_nth_unstable_by(k - 1, by_logit_desc);
            }
            let top = &mut self.scratch[..k];
            top.sort_unstable_by(by_logit_desc);
            let mut mass = 0.0;
            let mut keep = k;
            for (j, &(x, _)) in top.iter().enumerate() {
                mass += weight(x);
                if mass >= need {
                    keep = j + 1;
                    break;
                }
            }
            if mass >= need || k == self.scratch.len() {
                let kept = &self.scratch[..keep];
                let total: f32 = kept.iter().map(|&(x, _)| weight(x)).sum();
                let mut target = self.rng.next_f32() * total;
                for &(x, id) in kept {
                    target -= weight(x);
                    if target <= 0.0 {
                        return id as usize;
                    }
                }
                return kept[keep - 1].1 as usize;
            }
            k = (k * 4).min(self.scratch.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = -86.0f32;
        while x <= 0.0 {
            let rel = (fast_exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 1e-6, "x={x} rel={rel}");
            x += 0.0137;
        }
        assert!(fast_exp(-1000.0) >= 0.0);
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn eight_lane_exp_and_sums_are_the_scalar_bits() {
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.004_7 - 1e-7).collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: an AVX2 build; one chunk of 8 floats in, 8 out.
            unsafe {
                _mm256_storeu_ps(got.as_mut_ptr(), fast_exp8(_mm256_loadu_ps(chunk.as_ptr())))
            };
            for (g, &x) in got.iter().zip(chunk) {
                assert_eq!(g.to_bits(), fast_exp(x).to_bits(), "x = {x}");
            }
        }
        // The lane sums, against one float at a time.
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1000) as f32) / 97.0)
            .collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        for scale in [1.0, 1.0 / 0.7] {
            let (va, vm) = exp_lanes(&logits, max, scale);
            let (sa, sm) = exp_lanes_scalar(&logits, max, scale);
            assert_eq!(va.map(f32::to_bits), sa.map(f32::to_bits), "scale {scale}");
            assert_eq!(vm.map(f32::to_bits), sm.map(f32::to_bits), "scale {scale}");
        }
    }

    #[test]
    fn entropy_is_that_of_the_softmax() {
        let uniform = vec![0.25f32; 37];
        let p = scored(&uniform, 3);
        assert!((p.entropy - 37f32.ln()).abs() < 1e-4, "{}", p.entropy);
        assert!((p.prob - 1.0 / 37.0).abs() < 1e-6);
        let mut sharp = vec![-50.0f32; 20];
        sharp[7] = 50.0;
        let p = scored(&sharp, 7);
        assert!(p.entropy < 1e-4 && p.prob > 0.999, "{p:?}");
        // Two equal logits: ln 2, and pick() agrees with scored().
        let two = [1.0f32, 1.0, -90.0];
        let p = Sampler::new(Sampling::Greedy).pick(&two);
        assert!((p.entropy - 2f32.ln()).abs() < 1e-5);
        assert_eq!(p, scored(&two, 0));
    }

    #[test]
    fn argmax_finds_first_maximum_in_tail_and_body() {
        let mut v = vec![0.0f32; 37];
        v[35] = 5.0;
        assert_eq!(argmax(&v), (35, 5.0));
        v[3] = 5.0;
        assert_eq!(argmax(&v), (3, 5.0));
    }

    #[test]
    fn greedy_prob_is_the_softmax_of_the_winner() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let pick = Sampler::new(Sampling::Greedy).pick(&logits);
        let z: f32 = logits.iter().map(|x| (x - 3.0).exp()).sum();
        assert_eq!(pick.token, 1);
        assert!((pick.prob - 1.0 / z).abs() < 1e-5);
    }

    #[test]
    fn random_sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75]
        let logits = [0.0f32, 3f32.ln()];
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        });
        let n = 20_000;
        let ones = (0..n).filter(|_| s.pick(&logits).token == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "frac={frac}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // 200 tokens; token 0 holds ~0.9 of the mass: top_p 0.5 keeps only it.
        let mut logits = vec![0.0f32; 200];
        logits[0] = 10.0;
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..500).all(|_| s.pick(&logits).token == 0));
    }

    #[test]
    fn speculative_sampling_yields_the_target_distribution() {
        // Target p and a quite different draft q over four tokens.
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let q = [0.1f32, 0.2, 0.3, 0.4];
        let mut rng = Rng::new(3);
        let n = 200_000;
        let mut counts = [0usize; 4];
        let mut kept = 0;
        for _ in 0..n {
            let x = draw(&q, &mut rng);
            let (t, accepted) = accept_or_resample(&p, &q, x, &mut rng);
            counts[t] += 1;
            kept += accepted as usize;
        }
        for i in 0..4 {
            let f = counts[i] as f64 / n as f64;
            assert!(
                (f - p[i] as f64).abs() < 0.006,
                "token {i}: {f} vs {}",
                p[i]
            );
        }
        // Acceptance rate is sum(min(p, q)) = 0.1 + 0.2 + 0.15 + 0.05 = 0.5.
        let rate = kept as f64 / n as f64;
        assert!((rate - 0.5).abs() < 0.01, "{rate}");
        // Keeping every draft (a typical bug) would give q, not p.
        assert!((counts[3] as f64 / n as f64) < 0.1);
    }

    #[test]
    fn distribution_respects_temperature_and_top_p() {
        let logits = [0.0f32, 3f32.ln(), -10.0];
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
        });
        let d = s.distribution(&logits);
        assert!((d[1] / d[0] - 3.0).abs() < 1e-3);
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
        });
        let d = s.distribution(&logits);
        assert_eq!((d[0], d[2]), (0.0, 0.0));
        assert!((d[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0)
            .collect();
        let run = || {
            let mut s = Sampler::new(Sampling::Random {
                temperature: 0.8,
                top_p: 0.95,
                seed: 42,
            });
            (0..50).map(|_| s.pick(&logits).token).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
