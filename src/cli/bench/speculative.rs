//! `bench speculative`: speculative against target-only greedy decoding on
//! the same prompts, interleaved A/B in one run, with the outputs compared
//! token for token, plus n-gram drafting on a rewrite prompt.

use super::ratio;
use serde::Serialize;
use std::path::Path;
use xnai_model_router::engine::ggml_hook::{self, HookCounts};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{
    Engine, GenerateRequest, LoadSpec, ModelId, SpecParams, SpecStats, Speculation,
};

/// The reference prompts: five that draw long answers.
pub const SPEC_PROMPTS: [&str; 5] = [
    "Write a detailed essay about the history of the printing press and its effect on society.",
    "Explain step by step how a computer boots, from power on to the login screen.",
    "Describe the water cycle in detail, covering evaporation, condensation and precipitation.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "List and explain ten tips for writing clean, maintainable code.",
];

/// A rewrite prompt, where n-gram drafting shines.
pub const REWRITE_PROMPT: &str = "Rewrite the following paragraph, correcting the spelling and keeping everything else the same:\n\nThe quick brown fox jumpd over the lazy dog. Then the fox ran into the forrest, where it found a small stream. It drank from the stream and rested under a tall oak tree until the sun went down. When night came, the fox returned to its den, tired but happy after a long day of adventures in the woods.";

/// One prompt's A/B result.
#[derive(Debug, Clone, Serialize)]
pub struct SpecPromptResult {
    pub prompt: String,
    pub mode: String,
    pub tokens: u32,
    pub target_tokens_per_second: f64,
    pub speculative_tokens_per_second: f64,
    pub speedup: f64,
    pub acceptance_rate: f64,
    pub mean_accepted_per_pass: f64,
    pub identical: bool,
    /// Milliseconds drafting and verifying, speculative runs summed.
    pub draft_ms: f64,
    pub verify_ms: f64,
    pub passes: u32,
}

/// The whole speculative benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct SpecBench {
    pub draft: String,
    pub target: String,
    pub draft_max: u32,
    pub adaptive: bool,
    /// The kernel computing batched F32 products (verification on an F32
    /// target): `avx512`, `avx2`, or `ggml` (llama.cpp's per-column dot
    /// products, `XNAI_EXACT_GEMM=off`).
    pub batch_kernel: String,
    /// The kernel computing quantized (Q4_1, Q8_0) products of up to four
    /// columns, most of a quantized draft's decoding: `avx512-vnni`,
    /// `avx2`, or `ggml`.
    pub quant_kernel: String,
    /// Matrix products ggml offered the hook during the run, and those the
    /// exact kernels computed (0 taken means ggml computed everything).
    pub hook: HookCounts,
    pub prompts: Vec<SpecPromptResult>,
    /// Draft-model mode over the reference prompts: total tokens / total time, both ways.
    pub target_tokens_per_second: f64,
    pub speculative_tokens_per_second: f64,
    pub speedup: f64,
    pub acceptance_rate: f64,
    pub mean_accepted_per_pass: f64,
    /// True only if every prompt's outputs matched token for token.
    pub identical: bool,
    /// n-gram mode on the rewrite prompt.
    pub ngram: SpecPromptResult,
    /// What the pair costs on this machine, and the best speedup those
    /// costs allow.
    pub cost: SpecCost,
}

/// The costs that bound a draft/target pair's speedup, measured in the run.
#[derive(Debug, Clone, Serialize)]
pub struct SpecCost {
    /// Target-only decoding, per token.
    pub target_ms_per_token: f64,
    /// Drafting, per drafted token.
    pub draft_ms_per_token: f64,
    /// One verification pass (draft_max + 1 positions) with acceptance.
    pub verify_ms_per_pass: f64,
    /// The speedup if every draft were accepted at draft_max:
    /// (K + 1) x target / (K x draft + verify). Better acceptance or
    /// scheduling cannot beat it; only cheaper drafting or verifying can.
    pub ceiling_speedup: f64,
}

/// One prompt's A/B runs: the result, and the sums the totals are made of.
struct Ab {
    result: SpecPromptResult,
    base_ms: f64,
    spec_ms: f64,
    drafted: u32,
    accepted: u32,
    passes: u32,
}

/// The two models of a pair, loaded on one engine.
struct Pair {
    engine: LlamaEngine,
    target: ModelId,
    tokens: u32,
    rounds: usize,
}

impl Pair {
    fn request(&self, prompt: &str, speculation: Speculation) -> GenerateRequest {
        GenerateRequest {
            ignore_eos: true,
            speculation,
            ..GenerateRequest::greedy(prompt, self.tokens)
        }
    }

    /// `prompt` target-only and with `speculation`, `rounds` times each,
    /// alternating which goes first so drift hits both alike.
    async fn ab(&self, prompt: &str, speculation: Speculation) -> anyhow::Result<Ab> {
        let (mut base_ms, mut spec_ms, mut n) = (0.0, 0.0, 0);
        let mut identical = true;
        let mut sum = SpecStats::default();
        for round in 0..self.rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut outs = [Vec::new(), Vec::new()];
            for use_spec in order {
                let mode = if use_spec {
                    speculation
                } else {
                    Speculation::Off
                };
                let g = self
                    .engine
                    .generate(self.target, self.request(prompt, mode))
                    .await?;
                if use_spec {
                    spec_ms += g.generate_ms;
                    let s = g.speculative.clone().unwrap_or_default();
                    sum.drafted += s.drafted;
                    sum.accepted += s.accepted;
                    sum.passes += s.passes;
                    sum.draft_ms += s.draft_ms;
                    sum.verify_ms += s.verify_ms;
                } else {
                    base_ms += g.generate_ms;
                    n += g.completion_tokens;
                }
                outs[use_spec as usize] = g.token_ids;
            }
            identical &= outs[0] == outs[1];
        }
        let base_tps = n as f64 / (base_ms / 1e3);
        let spec_tps = n as f64 / (spec_ms / 1e3);
        let result = SpecPromptResult {
            prompt: prompt.chars().take(48).collect(),
            mode: match speculation {
                Speculation::Ngram { .. } => "ngram".into(),
                _ => "draft_model".into(),
            },
            tokens: n / self.rounds as u32,
            target_tokens_per_second: base_tps,
            speculative_tokens_per_second: spec_tps,
            speedup: spec_tps / base_tps,
            acceptance_rate: ratio(sum.accepted as f64, sum.drafted as f64),
            mean_accepted_per_pass: ratio(n as f64, sum.passes as f64),
            identical,
            draft_ms: sum.draft_ms,
            verify_ms: sum.verify_ms,
            passes: sum.passes,
        };
        Ok(Ab {
            result,
            base_ms,
            spec_ms,
            drafted: sum.drafted,
            accepted: sum.accepted,
            passes: sum.passes,
        })
    }
}

/// Target-only vs speculative greedy, interleaved A/B in one process.
///
/// # Errors
///
/// A model that fails to load or a failed generation.
pub async fn speculative_bench(
    draft: &Path,
    target: &Path,
    threads: u32,
    tokens: u32,
    params: SpecParams,
    rounds: usize,
) -> anyhow::Result<SpecBench> {
    let hook_before = ggml_hook::counts();
    let engine = LlamaEngine::new();
    let spec = |name: &str, path: &Path| LoadSpec {
        name: name.into(),
        path: path.to_path_buf(),
        context: 1024,
        threads,
        mlock: false,
        sequences: 1,
    };
    let t = engine.load(spec("target", target)).await?;
    let d = engine.load(spec("draft", draft)).await?;
    let pair = Pair {
        engine,
        target: t.id,
        tokens,
        rounds,
    };
    let with_draft = Speculation::Draft {
        model: d.id,
        params,
    };
    // Warm-up: page in both models.
    pair.engine
        .generate(t.id, pair.request("Hi", with_draft))
        .await?;
    let mut prompts = Vec::new();
    let (mut base_ms, mut spec_ms, mut total) = (0.0, 0.0, 0u32);
    let (mut drafted, mut accepted, mut passes) = (0, 0, 0);
    for p in SPEC_PROMPTS {
        let ab = pair.ab(p, with_draft).await?;
        base_ms += ab.base_ms;
        spec_ms += ab.spec_ms;
        total += ab.result.tokens * rounds as u32;
        drafted += ab.drafted;
        accepted += ab.accepted;
        passes += ab.passes;
        prompts.push(ab.result);
    }
    let ngram = pair
        .ab(REWRITE_PROMPT, Speculation::Ngram { params })
        .await?
        .result;
    let k = f64::from(params.draft_max);
    let target_ms_per_token = ratio(base_ms, total as f64);
    let draft_ms_per_token = ratio(prompts.iter().map(|p| p.draft_ms).sum(), drafted as f64);
    let verify_ms_per_pass = ratio(prompts.iter().map(|p| p.verify_ms).sum(), passes as f64);
    let cost = SpecCost {
        target_ms_per_token,
        draft_ms_per_token,
        verify_ms_per_pass,
        ceiling_speedup: ratio(
            (k + 1.0) * target_ms_per_token,
            k * draft_ms_per_token + verify_ms_per_pass,
        ),
    };
    pair.engine.unload(d.id).await;
    pair.engine.unload(t.id).await;
    let after = ggml_hook::counts();
    let target_tps = total as f64 / (base_ms / 1e3);
    let spec_tps = total as f64 / (spec_ms / 1e3);
    Ok(SpecBench {
        draft: draft.display().to_string(),
        target: target.display().to_string(),
        draft_max: params.draft_max,
        adaptive: params.adaptive,
        batch_kernel: ggml_hook::kernel_name().to_string(),
        quant_kernel: ggml_hook::quant_kernel_name().to_string(),
        hook: after.since(hook_before),
        identical: prompts.iter().all(|p| p.identical),
        prompts,
        target_tokens_per_second: target_tps,
        speculative_tokens_per_second: spec_tps,
        speedup: spec_tps / target_tps,
        acceptance_rate: ratio(accepted as f64, drafted as f64),
        mean_accepted_per_pass: ratio(total as f64, passes as f64),
        ngram,
        cost,
    })
}

/// The speculative benchmark as a table.
pub fn render_spec(r: &SpecBench) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "draft  {}\ntarget {}\ndraft_max {}{}, batched F32 kernel {}, quantized kernel {}, hook took {} of {} products",
        r.draft,
        r.target,
        r.draft_max,
        if r.adaptive { " (adaptive)" } else { "" },
        r.batch_kernel,
        r.quant_kernel,
        r.hook.taken,
        r.hook.offered
    );
    let _ = writeln!(
        s,
        "{:<50} {:>7} {:>9} {:>9} {:>8} {:>7} {:>8} {:>9}",
        "prompt", "tokens", "target/s", "spec/s", "speedup", "accept", "per pass", "identical"
    );
    for p in r.prompts.iter().chain(std::iter::once(&r.ngram)) {
        let _ = writeln!(
            s,
            "{:<50} {:>7} {:>9.1} {:>9.1} {:>7.2}x {:>6.1}% {:>8.2} {:>9}",
            format!("[{}] {}", p.mode, p.prompt),
            p.tokens,
            p.target_tokens_per_second,
            p.speculative_tokens_per_second,
            p.speedup,
            p.acceptance_rate * 100.0,
            p.mean_accepted_per_pass,
            p.identical
        );
    }
    let _ = writeln!(
        s,
        "overall (draft model): target {:.1} tok/s, speculative {:.1} tok/s, speedup {:.2}x, acceptance {:.1}%, {:.2} tokens per target pass, identical: {}",
        r.target_tokens_per_second,
        r.speculative_tokens_per_second,
        r.speedup,
        r.acceptance_rate * 100.0,
        r.mean_accepted_per_pass,
        r.identical
    );
    let c = &r.cost;
    let _ = writeln!(
        s,
        "costs: target {:.1} ms/token, draft {:.1} ms/token, verify {:.1} ms/pass; \
         ceiling at 100% acceptance and draft_max {}: {:.2}x",
        c.target_ms_per_token,
        c.draft_ms_per_token,
        c.verify_ms_per_pass,
        r.draft_max,
        c.ceiling_speedup
    );
    s
}
