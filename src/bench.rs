//! `bench engine`: our generation speed against llama.cpp's own decode speed
//! on the same model, thread count and build, measured in one run, as a ratio.
//!
//! The baseline is llama-bench's `tg` method through the same llama.cpp
//! library, in a child process of its own as llama-bench would be: one token
//! per `llama_decode` into a fresh context, the next token drawn at random,
//! logits never read. (In one process, two threads driving llama.cpp make two
//! OpenMP teams; libgomp then sees more threads than cores and throttles its
//! spin-waiting, which slows both sides and hides the real ratio.) Our side is a real
//! generation through the engine thread: chat prompt, then `n` tokens with
//! greedy sampling over the full vocabulary and detokenisation, so every bit
//! of per-token work on the Rust side is inside the measurement. We count
//! `n - 1` decodes (the first token comes from the prompt's logits). Rounds
//! alternate between the two so machine noise hits both alike; medians are
//! reported. With `--llama-bench PATH`, llama.cpp's llama-bench binary runs
//! in the same rounds as a third column.

use crate::engine::llama::{backend, LlamaEngine};
use crate::engine::{Cancel, Engine, GenerateRequest, LoadSpec, Message, Sampling};
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;

/// One model's result.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBench {
    pub model: String,
    pub threads: u32,
    pub tokens: u32,
    pub rounds: usize,
    /// Our decodes per second, each round.
    pub ours: Vec<f64>,
    /// llama.cpp's raw decode loop (llama-bench's tg method), each round.
    pub baseline: Vec<f64>,
    /// The llama-bench binary's tokens per second, each round, when given.
    pub llama_bench: Vec<f64>,
    pub ours_median: f64,
    pub baseline_median: f64,
    pub llama_bench_median: Option<f64>,
    /// ours / baseline.
    pub ratio: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

/// Runs the baseline in a child process (`bench decode-loop`): a warm-up
/// round, then one timed round.
fn run_baseline_process(
    model: &Path,
    threads: u32,
    tokens: u32,
    context: u32,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench", "decode-loop", "--model"])
        .arg(model)
        .args([
            "--threads",
            &threads.to_string(),
            "--tokens",
            &tokens.to_string(),
        ])
        .args(["--context", &context.to_string()])
        .env("XNAI_LOG", "error");
    Ok(child_stdout(&mut cmd, "baseline process")?.trim().parse()?)
}

/// Runs `cmd` to completion and returns its stdout; a failure carries its stderr.
fn child_stdout(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs llama-bench once and returns its average tokens per second.
fn run_llama_bench(bin: &Path, model: &Path, threads: u32, tokens: u32) -> anyhow::Result<f64> {
    let mut cmd = Command::new(bin);
    cmd.arg("-m")
        .arg(model)
        .args([
            "-t",
            &threads.to_string(),
            "-p",
            "0",
            "-n",
            &tokens.to_string(),
        ])
        .args(["-r", "1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&child_stdout(&mut cmd, "llama-bench")?)?;
    v[0]["avg_ts"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("llama-bench printed no avg_ts: {v}"))
}

/// llama-bench's `tg` test through the library: `tokens` single-token decodes.
pub struct Baseline {
    ctx: llama_cpp_2::context::LlamaContext<'static>,
    n_vocab: i32,
    bos: LlamaToken,
    rng: crate::engine::sampling::Rng,
}

impl Baseline {
    /// Loads `model` into a context like the engine's.
    ///
    /// # Errors
    ///
    /// The model or context fails to load.
    pub fn new(model: &Path, threads: u32, context: u32) -> anyhow::Result<Self> {
        let model: &'static LlamaModel = Box::leak(Box::new(LlamaModel::load_from_file(
            backend(),
            model,
            &LlamaModelParams::default(),
        )?));
        let t = threads as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context))
            .with_n_batch(crate::estimate::UBATCH)
            .with_n_ubatch(crate::estimate::UBATCH)
            .with_n_seq_max(1)
            .with_n_threads(t)
            .with_n_threads_batch(t);
        Ok(Baseline {
            ctx: model.new_context(backend(), params)?,
            n_vocab: model.n_vocab(),
            bos: model.vocab().bos(),
            rng: crate::engine::sampling::Rng::new(1),
        })
    }

    /// One timed run of `tokens` decodes; returns tokens per second.
    ///
    /// # Errors
    ///
    /// A decode fails.
    pub fn round(&mut self, tokens: u32) -> anyhow::Result<f64> {
        self.ctx.clear_kv_cache();
        let mut token = self.bos;
        let started = Instant::now();
        for _ in 0..tokens {
            let one = [token];
            let mut batch = LlamaBatch::get_one(&one)?;
            self.ctx.decode(&mut batch)?;
            token = LlamaToken((self.rng.next_u64() % self.n_vocab as u64) as i32);
        }
        Ok(tokens as f64 / started.elapsed().as_secs_f64())
    }
}

/// Benchmarks `model` for `rounds` alternating rounds of `tokens` tokens.
///
/// # Errors
///
/// Model load failures, or llama-bench failing or printing no result.
pub async fn engine_bench(
    llama_bench: Option<&Path>,
    model: &Path,
    threads: u32,
    tokens: u32,
    rounds: usize,
) -> anyhow::Result<EngineBench> {
    let context = 512.max(tokens + 64);
    let engine = LlamaEngine::new();
    let loaded = engine
        .load(LoadSpec {
            name: "bench".into(),
            path: model.to_path_buf(),
            context,
            threads,
            mlock: false,
        })
        .await?;

    let request = GenerateRequest {
        messages: vec![Message::new(
            "user",
            "Write a long story about a lighthouse.",
        )],
        max_tokens: tokens,
        sampling: Sampling::Greedy,
        stop: Vec::new(),
        ignore_eos: true,
        cancel: Cancel::default(),
        progress: Default::default(),
        speculation: Default::default(),
    };
    // Warm-up: page the weights in, as llama-bench's own warm-up run does.
    engine.generate(loaded.id, request.clone()).await?;
    let (mut ours, mut base, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(run_baseline_process(model, threads, tokens, context)?);
        let g = engine.generate(loaded.id, request.clone()).await?;
        ours.push((g.completion_tokens.saturating_sub(1)) as f64 / (g.generate_ms / 1e3));
        if let Some(bin) = llama_bench {
            theirs.push(run_llama_bench(bin, model, threads, tokens)?);
        }
    }
    engine.unload(loaded.id).await;
    let (o, b) = (median(&ours), median(&base));
    Ok(EngineBench {
        model: model.display().to_string(),
        threads,
        tokens,
        rounds,
        ours,
        baseline: base,
        llama_bench_median: (!theirs.is_empty()).then(|| median(&theirs)),
        llama_bench: theirs,
        ours_median: o,
        baseline_median: b,
        ratio: o / b,
    })
}

/// `num / den`, or 0 when there is nothing to divide by.
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

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
    params: crate::engine::SpecParams,
    rounds: usize,
) -> anyhow::Result<SpecBench> {
    use crate::engine::Speculation;
    let engine = LlamaEngine::new();
    let spec = |name: &str, path: &Path| LoadSpec {
        name: name.into(),
        path: path.to_path_buf(),
        context: 1024,
        threads,
        mlock: false,
    };
    let t = engine.load(spec("target", target)).await?;
    let d = engine.load(spec("draft", draft)).await?;
    let request = |prompt: &str, speculation| GenerateRequest {
        messages: vec![Message::new("user", prompt)],
        max_tokens: tokens,
        sampling: Sampling::Greedy,
        stop: Vec::new(),
        ignore_eos: true,
        cancel: Cancel::default(),
        progress: Default::default(),
        speculation,
    };
    // Warm-up: page in both models.
    engine
        .generate(
            t.id,
            request(
                "Hi",
                Speculation::Draft {
                    model: d.id,
                    params,
                },
            ),
        )
        .await?;

    let run_ab = async |prompt: &str,
                        speculation: Speculation|
           -> anyhow::Result<(SpecPromptResult, f64, f64, u32, u32, u32)> {
        let (mut base_ms, mut spec_ms) = (0.0, 0.0);
        let mut identical = true;
        let mut n = 0;
        let (mut drafted, mut accepted, mut passes) = (0, 0, 0);
        let (mut draft_ms, mut verify_ms) = (0.0, 0.0);
        for round in 0..rounds {
            // Alternate which goes first, so drift hits both alike.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut outs = [Vec::new(), Vec::new()];
            for use_spec in order {
                let g = engine
                    .generate(
                        t.id,
                        request(
                            prompt,
                            if use_spec {
                                speculation
                            } else {
                                Speculation::Off
                            },
                        ),
                    )
                    .await?;
                if use_spec {
                    spec_ms += g.generate_ms;
                    let s = g.speculative.clone().unwrap_or_default();
                    drafted += s.drafted;
                    accepted += s.accepted;
                    passes += s.passes;
                    draft_ms += s.draft_ms;
                    verify_ms += s.verify_ms;
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
        let r = SpecPromptResult {
            prompt: prompt.chars().take(48).collect(),
            mode: match speculation {
                Speculation::Ngram { .. } => "ngram".into(),
                _ => "draft_model".into(),
            },
            tokens: n / rounds as u32,
            target_tokens_per_second: base_tps,
            speculative_tokens_per_second: spec_tps,
            speedup: spec_tps / base_tps,
            acceptance_rate: ratio(accepted as f64, drafted as f64),
            mean_accepted_per_pass: ratio(n as f64, passes as f64),
            identical,
            draft_ms,
            verify_ms,
            passes,
        };
        Ok((r, base_ms, spec_ms, drafted, accepted, passes))
    };

    let mut prompts = Vec::new();
    let (mut base_ms, mut spec_ms, mut total) = (0.0, 0.0, 0u32);
    let (mut drafted, mut accepted, mut passes) = (0, 0, 0);
    for p in SPEC_PROMPTS {
        let (r, b, s, dr, ac, pa) = run_ab(
            p,
            Speculation::Draft {
                model: d.id,
                params,
            },
        )
        .await?;
        base_ms += b;
        spec_ms += s;
        total += r.tokens * rounds as u32;
        drafted += dr;
        accepted += ac;
        passes += pa;
        prompts.push(r);
    }
    let (ngram, ..) = run_ab(REWRITE_PROMPT, Speculation::Ngram { params }).await?;
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
    engine.unload(d.id).await;
    engine.unload(t.id).await;
    let target_tps = total as f64 / (base_ms / 1e3);
    let spec_tps = total as f64 / (spec_ms / 1e3);
    Ok(SpecBench {
        draft: draft.display().to_string(),
        target: target.display().to_string(),
        draft_max: params.draft_max,
        adaptive: params.adaptive,
        batch_kernel: crate::engine::exact_gemm::kernel_name().to_string(),
        quant_kernel: crate::engine::exact_gemm::quant_kernel_name().to_string(),
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
        "draft  {}\ntarget {}\ndraft_max {}{}, batched F32 kernel {}, quantized kernel {}",
        r.draft,
        r.target,
        r.draft_max,
        if r.adaptive { " (adaptive)" } else { "" },
        r.batch_kernel,
        r.quant_kernel
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
