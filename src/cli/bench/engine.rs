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

use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use xnai_model_router::engine::ggml_hook;
use xnai_model_router::engine::llama::{backend, LlamaEngine};
use xnai_model_router::engine::{Engine, GenerateRequest, LoadSpec};

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

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

/// Runs the baseline in a child process (`bench decode-loop`): a warm-up
/// round, then one timed round of `tokens` single-token decodes, or with
/// `prefill` one batch decode of `tokens` tokens.
pub fn run_baseline_process(
    model: &Path,
    threads: u32,
    tokens: u32,
    context: u32,
    prefill: bool,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    if prefill {
        cmd.args(["bench", "decode-loop", "--prefill", "--model"]);
    } else {
        cmd.args(["bench", "decode-loop", "--model"]);
    }
    cmd.arg(model)
        .args([
            "--threads",
            &threads.to_string(),
            "--tokens",
            &tokens.to_string(),
        ])
        .args(["--context", &context.to_string()])
        .env("XNAI_LOG", "error")
        // llama.cpp's own kernels only, none of ours.
        .env(ggml_hook::PROMPT_GEMM_ENV, "llama");
    Ok(child_stdout(&mut cmd, "baseline process")?.trim().parse()?)
}

/// Runs `cmd` to completion and returns its stdout; a failure carries its stderr.
pub(super) fn child_stdout(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs llama-bench's generation test (`tg`) once and returns its average
/// tokens per second.
fn run_llama_bench(bin: &Path, model: &Path, threads: u32, tokens: u32) -> anyhow::Result<f64> {
    run_llama_bench_test(bin, model, threads, ("0", &tokens.to_string()))
}

/// Runs llama-bench's prompt test (`pp`) of `tokens` once and returns its
/// average tokens per second.
pub fn run_llama_bench_prompt(
    bin: &Path,
    model: &Path,
    threads: u32,
    tokens: u32,
) -> anyhow::Result<f64> {
    run_llama_bench_test(bin, model, threads, (&tokens.to_string(), "0"))
}

/// One llama-bench run of `-p prompt -n generated` at its own defaults
/// otherwise (flash attention, repacking); its average tokens per second.
fn run_llama_bench_test(
    bin: &Path,
    model: &Path,
    threads: u32,
    (prompt, generated): (&str, &str),
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(bin);
    cmd.arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", prompt, "-n", generated])
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
    rng: xnai_model_router::engine::sampling::Rng,
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
            .with_n_batch(xnai_model_router::estimate::UBATCH)
            .with_n_ubatch(xnai_model_router::estimate::UBATCH)
            .with_n_seq_max(1)
            .with_n_threads(t)
            .with_n_threads_batch(t);
        Ok(Baseline {
            ctx: model.new_context(backend(), params)?,
            n_vocab: model.n_vocab(),
            bos: model.vocab().bos(),
            rng: xnai_model_router::engine::sampling::Rng::new(1),
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

    /// llama-bench's `pp` test: `tokens` random tokens decoded in batches
    /// of n_batch with logits for the last one; returns tokens per second.
    ///
    /// # Errors
    ///
    /// A decode fails.
    pub fn prefill(&mut self, tokens: u32) -> anyhow::Result<f64> {
        let n_batch = self.ctx.n_batch() as usize;
        let ids: Vec<LlamaToken> = (0..tokens)
            .map(|_| LlamaToken((self.rng.next_u64() % self.n_vocab as u64) as i32))
            .collect();
        let mut batch = LlamaBatch::new(n_batch, 1);
        self.ctx.clear_kv_cache();
        let started = Instant::now();
        for (c, chunk) in ids.chunks(n_batch).enumerate() {
            batch.clear();
            for (j, &id) in chunk.iter().enumerate() {
                let pos = c * n_batch + j;
                batch.add(id, pos as i32, &[0], pos + 1 == ids.len())?;
            }
            self.ctx.decode(&mut batch)?;
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
            sequences: 1,
        })
        .await?;

    let request = GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::greedy("Write a long story about a lighthouse.", tokens)
    };
    // Warm-up: page the weights in, as llama-bench's own warm-up run does.
    engine.generate(loaded.id, request.clone()).await?;
    let (mut ours, mut base, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(run_baseline_process(
            model, threads, tokens, context, false,
        )?);
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

/// One model's result as a line.
pub fn render(model: &Path, r: &EngineBench) -> String {
    format!(
        "{}: ours {:.1} tok/s, llama.cpp decode loop {:.1} tok/s, ratio {:.3}{} ({} threads, {} tokens, median of {} alternating rounds)",
        model.file_name().unwrap_or_default().to_string_lossy(),
        r.ours_median,
        r.baseline_median,
        r.ratio,
        r.llama_bench_median
            .map(|t| format!(", llama-bench {t:.1} tok/s"))
            .unwrap_or_default(),
        r.threads,
        r.tokens,
        r.rounds
    )
}
