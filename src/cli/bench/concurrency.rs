//! `bench concurrency`: N concurrent requests on one tier decoded together
//! (continuous batching) against the same requests one at a time, and
//! llama.cpp's own batched decode as the baseline, in one run, rounds
//! interleaved.
//!
//! - **One at a time**: the tier's model loaded with one sequence (today's
//!   engine with `server.max_batch: 1`); the N requests are sent together
//!   and answered one after another, so each one's latency includes its
//!   wait.
//! - **Batched**: the model loaded with N sequences; the same N requests
//!   sent together.
//! - **llama.cpp**: llama-batched-bench's measurement through the same
//!   library, in a child process (`bench batched-loop`): N sequences of a
//!   `prompt`-token prompt decoded in one batch, then `tokens` steps of one
//!   token per sequence; its generation tokens/s (llama-batched-bench's
//!   S_TG) excludes the prompt.
//!
//! Aggregate generation tokens/s is counted as llama-batched-bench counts
//! S_TG: all generated tokens over the burst's wall time less the time
//! spent decoding prompts (each answer's `prompt_ms`, which in a batch is
//! its prompt batches' own decode time); the end-to-end figure, prompts
//! in, is shown beside it. Each request generates exactly `tokens` tokens
//! (end of text ignored) and the batched answers are compared token for
//! token with the one-at-a-time ones.
//!
//! A second measurement: a short request that arrives while a long one is
//! being generated, against the same short request alone (p90 of its
//! latency over the rounds).

use super::engine::{child_stdout, median};
use super::ratio;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xnai_model_router::engine::ggml_hook;
use xnai_model_router::engine::llama::{backend, LlamaEngine};
use xnai_model_router::engine::{Engine, GenerateRequest, LoadSpec, ModelId, Speculation};

/// What to measure.
pub struct ConcurrencyOptions {
    pub model: PathBuf,
    /// The tier's draft model and its speculation settings (the model id
    /// in it is replaced), when it has one: one at a time is then also
    /// measured with speculative decoding.
    pub draft: Option<(PathBuf, Speculation)>,
    /// The tier's name, for the report.
    pub tier: String,
    pub clients: usize,
    pub threads: u32,
    /// Tokens generated per request.
    pub tokens: u32,
    /// Prompt tokens per sequence in llama.cpp's baseline (about the length
    /// of our chat prompts).
    pub prompt: u32,
    pub rounds: usize,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyBench {
    pub tier: String,
    pub model: String,
    pub clients: usize,
    pub threads: u32,
    pub tokens: u32,
    pub rounds: usize,
    /// Aggregate generation tokens per second (prompt decoding time left
    /// out, as llama-batched-bench's S_TG), each round.
    pub one_at_a_time: Vec<f64>,
    pub batched: Vec<f64>,
    pub llama_cpp: Vec<f64>,
    pub one_at_a_time_median: f64,
    pub batched_median: f64,
    pub llama_cpp_median: f64,
    /// Generated tokens over the whole burst's wall time (prompts in), median.
    pub one_at_a_time_end_to_end: f64,
    pub batched_end_to_end: f64,
    /// Mean requests per decode step in the batched bursts (median).
    pub batch_width: f64,
    /// One at a time with the tier's draft decoding speculatively
    /// (generation tokens/s, median), when the tier has a draft.
    pub speculative_one_at_a_time: Option<f64>,
    /// batched / one at a time.
    pub speedup: f64,
    /// batched / llama.cpp.
    pub vs_llama_cpp: f64,
    /// Per-request latency, milliseconds, over every round.
    pub one_at_a_time_p50_ms: f64,
    pub one_at_a_time_p90_ms: f64,
    pub batched_p50_ms: f64,
    pub batched_p90_ms: f64,
    /// Every batched answer equals its one-at-a-time answer.
    pub identical: bool,
    /// The short request's latency alone and behind a long one (p90).
    pub short_alone_p90_ms: f64,
    pub short_behind_long_p90_ms: f64,
    pub short_slowdown: f64,
}

const QUESTIONS: [&str; 8] = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a hash map handles collisions, with an example in Python.",
    "Describe the water cycle for a class of ten-year-old children.",
    "List the steps to bake a loaf of sourdough bread at home.",
    "Compare trains and planes for a trip of five hundred kilometres.",
    "Summarise the causes of the French Revolution in a paragraph.",
    "Give advice to a new programmer who wants to learn Rust.",
    "Write a polite email asking a colleague to review a pull request.",
];

fn request(i: usize, tokens: u32) -> GenerateRequest {
    GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::greedy(QUESTIONS[i % QUESTIONS.len()], tokens)
    }
}

/// `speculation` with the draft model `id`.
fn with_draft(speculation: Speculation, id: ModelId) -> Speculation {
    match speculation {
        Speculation::Draft { params, .. } => Speculation::Draft { model: id, params },
        other => other,
    }
}

/// One burst of concurrent requests.
struct Burst {
    /// Each answer's tokens.
    ids: Vec<Vec<u32>>,
    /// Each request's latency, milliseconds.
    latency: Vec<f64>,
    /// Generated tokens per second of the burst's wall time, prompts
    /// included.
    end_to_end: f64,
    /// Generated tokens per second of the wall time less the time spent
    /// decoding prompts (llama-batched-bench's S_TG).
    generation: f64,
    /// Mean requests per decode step.
    width: f64,
}

/// Sends `n` requests at once, decoded with `speculation`.
async fn burst(
    engine: &LlamaEngine,
    id: ModelId,
    n: usize,
    tokens: u32,
    speculation: Speculation,
) -> anyhow::Result<Burst> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let engine = engine.clone();
        let r = GenerateRequest {
            speculation,
            ..request(i, tokens)
        };
        tasks.push(tokio::spawn(async move {
            let g = engine.generate(id, r).await;
            (g, started.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let (mut ids, mut latency, mut generated, mut prompt_ms, mut width) =
        (Vec::new(), Vec::new(), 0u64, 0.0, 0.0);
    for t in tasks {
        let (g, ms) = t.await?;
        let g = g?;
        generated += g.completion_tokens as u64;
        prompt_ms += g.prompt_ms;
        width += g.batch_width / n as f64;
        ids.push(g.token_ids);
        latency.push(ms);
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(Burst {
        ids,
        latency,
        end_to_end: generated as f64 / wall,
        generation: generated as f64 / (wall - prompt_ms / 1e3).max(1e-9),
        width,
    })
}

/// The short request's latency alone, then behind a long one that has
/// started generating.
async fn short_behind_long(
    engine: &LlamaEngine,
    id: ModelId,
    tokens: u32,
) -> anyhow::Result<(f64, f64)> {
    let short = || request(1, (tokens / 4).max(8));
    let t = Instant::now();
    engine.generate(id, short()).await?;
    let alone = t.elapsed().as_secs_f64() * 1e3;
    let long = {
        let engine = engine.clone();
        let r = request(0, tokens * 4);
        tokio::spawn(async move { engine.generate(id, r).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    engine.generate(id, short()).await?;
    let behind = t.elapsed().as_secs_f64() * 1e3;
    long.await??;
    Ok((alone, behind))
}

fn load(model: &Path, threads: u32, tokens: u32, sequences: u32) -> LoadSpec {
    LoadSpec {
        name: "bench".into(),
        path: model.to_path_buf(),
        context: 512.max(tokens * 4 + 128),
        threads,
        mlock: false,
        sequences,
    }
}

/// Runs the benchmark.
///
/// # Errors
///
/// A model that fails to load, a failed generation, or a failed baseline.
pub async fn concurrency_bench(o: &ConcurrencyOptions) -> anyhow::Result<ConcurrencyBench> {
    let n = o.clients.max(1);
    let engine = LlamaEngine::new();
    let single = engine
        .load(load(&o.model, o.threads, o.tokens, 1))
        .await?
        .id;
    let batched = engine
        .load(load(&o.model, o.threads, o.tokens, n as u32))
        .await?
        .id;
    let draft = match &o.draft {
        Some((path, speculation)) => {
            let id = engine.load(load(path, o.threads, o.tokens, 1)).await?.id;
            Some((id, with_draft(*speculation, id)))
        }
        None => None,
    };
    let off = Speculation::Off;
    // Warm-up: page the weights in.
    burst(&engine, batched, n, 8, off).await?;
    burst(&engine, single, 1, 8, off).await?;
    let (mut seq_tps, mut bat_tps, mut base_tps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seq_lat, mut bat_lat) = (Vec::new(), Vec::new());
    let (mut seq_e2e, mut bat_e2e, mut widths) = (Vec::new(), Vec::new(), Vec::new());
    let mut spec_tps = Vec::new();
    let (mut alone, mut behind) = (Vec::new(), Vec::new());
    let mut identical = true;
    for _ in 0..o.rounds.max(1) {
        base_tps.push(run_batched_process(
            &o.model, o.threads, n, o.prompt, o.tokens,
        )?);
        let a = burst(&engine, single, n, o.tokens, off).await?;
        if let Some((_, speculation)) = draft {
            let d = burst(&engine, single, n, o.tokens, speculation).await?;
            spec_tps.push(d.generation);
            identical &= d.ids == a.ids;
        }
        seq_tps.push(a.generation);
        seq_e2e.push(a.end_to_end);
        seq_lat.extend(a.latency);
        let b = burst(&engine, batched, n, o.tokens, off).await?;
        bat_tps.push(b.generation);
        bat_e2e.push(b.end_to_end);
        bat_lat.extend(b.latency);
        widths.push(b.width);
        identical &= a.ids == b.ids;
        let (s, l) = short_behind_long(&engine, batched, o.tokens).await?;
        alone.push(s);
        behind.push(l);
    }
    engine.unload(single).await;
    if let Some((id, _)) = draft {
        engine.unload(id).await;
    }
    engine.unload(batched).await;
    let (s, b, l) = (median(&seq_tps), median(&bat_tps), median(&base_tps));
    let (alone_p90, behind_p90) = (percentile(&alone, 0.9), percentile(&behind, 0.9));
    Ok(ConcurrencyBench {
        tier: o.tier.clone(),
        model: o.model.display().to_string(),
        clients: n,
        threads: o.threads,
        tokens: o.tokens,
        rounds: o.rounds.max(1),
        one_at_a_time_p50_ms: percentile(&seq_lat, 0.5),
        one_at_a_time_p90_ms: percentile(&seq_lat, 0.9),
        batched_p50_ms: percentile(&bat_lat, 0.5),
        batched_p90_ms: percentile(&bat_lat, 0.9),
        one_at_a_time: seq_tps,
        batched: bat_tps,
        llama_cpp: base_tps,
        one_at_a_time_median: s,
        batched_median: b,
        one_at_a_time_end_to_end: median(&seq_e2e),
        batched_end_to_end: median(&bat_e2e),
        batch_width: median(&widths),
        speculative_one_at_a_time: (!spec_tps.is_empty()).then(|| median(&spec_tps)),
        llama_cpp_median: l,
        speedup: ratio(b, s),
        vs_llama_cpp: ratio(b, l),
        identical,
        short_alone_p90_ms: alone_p90,
        short_behind_long_p90_ms: behind_p90,
        short_slowdown: ratio(behind_p90, alone_p90),
    })
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// The result as a table.
pub fn render(r: &ConcurrencyBench) -> String {
    format!(
        "{} ({}), {} concurrent requests x {} tokens, {} threads, median of {} interleaved rounds\n\
         {:<28}{:>12}{:>12}{:>12}{:>12}\n\
         {:<28}{:>12.1}{:>12.1}{:>12.1}{:>12.1}\n\
         {:<28}{:>12.1}{:>12.1}{:>12.1}{:>12.1}\n\
         {:<28}{:>12.1}\n\
         batched / one at a time {:.2}x, batched / llama.cpp {:.2}x, identical answers: {}, mean batch width {:.1}\n\
         a short request behind a long one: p90 {:.0} ms against {:.0} ms alone ({:.2}x)\n{}",
        r.tier,
        Path::new(&r.model)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        r.clients,
        r.tokens,
        r.threads,
        r.rounds,
        "",
        "gen tok/s",
        "e2e tok/s",
        "p50 ms",
        "p90 ms",
        "one at a time",
        r.one_at_a_time_median,
        r.one_at_a_time_end_to_end,
        r.one_at_a_time_p50_ms,
        r.one_at_a_time_p90_ms,
        "batched",
        r.batched_median,
        r.batched_end_to_end,
        r.batched_p50_ms,
        r.batched_p90_ms,
        "llama.cpp batched decode",
        r.llama_cpp_median,
        r.speedup,
        r.vs_llama_cpp,
        if r.identical { "yes" } else { "NO" },
        r.batch_width,
        r.short_behind_long_p90_ms,
        r.short_alone_p90_ms,
        r.short_slowdown,
        r.speculative_one_at_a_time
            .map(|t| format!(
                "one at a time with the tier's draft (speculative): {t:.1} gen tok/s; batched / speculative {:.2}x\n",
                ratio(r.batched_median, t)
            ))
            .unwrap_or_default(),
    )
}

/// Runs llama.cpp's batched decode in a child process (`bench
/// batched-loop`) and returns its generation tokens per second.
fn run_batched_process(
    model: &Path,
    threads: u32,
    width: usize,
    prompt: u32,
    tokens: u32,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench", "batched-loop", "--model"])
        .arg(model)
        .args(["--threads", &threads.to_string()])
        .args(["--width", &width.to_string()])
        .args(["--prompt", &prompt.to_string()])
        .args(["--tokens", &tokens.to_string()])
        .env("XNAI_LOG", "error")
        // llama.cpp's own kernels only, none of ours.
        .env(ggml_hook::PROMPT_GEMM_ENV, "llama");
    Ok(child_stdout(&mut cmd, "baseline process")?.trim().parse()?)
}

/// llama-batched-bench's measurement through the library, with llama.cpp's
/// default model and context settings: `width` sequences of `prompt`
/// tokens in one batch, then `tokens` decodes of one token per sequence.
/// Returns the generation tokens per second (S_TG) of the second of two
/// runs (the first warms up).
///
/// # Errors
///
/// The model or context fails to load, or a decode fails.
pub fn batched_loop(
    model: &Path,
    threads: u32,
    width: usize,
    prompt: u32,
    tokens: u32,
) -> anyhow::Result<f64> {
    let model = LlamaModel::load_from_file(backend(), model, &LlamaModelParams::default())?;
    let t = threads as i32;
    let n_ctx = width as u32 * (prompt + tokens) + 256;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx.max(512))
        .with_n_ubatch(512)
        .with_n_seq_max(width as u32)
        .with_n_threads(t)
        .with_n_threads_batch(t);
    let mut ctx = model.new_context(backend(), params)?;
    let mut batch = LlamaBatch::new((width * prompt.max(1) as usize).max(width), 1);
    let mut tg = 0.0;
    for _ in 0..2 {
        ctx.clear_kv_cache();
        batch.clear();
        for s in 0..width {
            for p in 0..prompt {
                let last = s + 1 == width && p + 1 == prompt;
                batch.add(LlamaToken(0), p as i32, &[s as i32], last)?;
            }
        }
        ctx.decode(&mut batch)?;
        let started = Instant::now();
        for i in 0..tokens {
            batch.clear();
            for s in 0..width {
                batch.add(LlamaToken(0), (prompt + i) as i32, &[s as i32], true)?;
            }
            ctx.decode(&mut batch)?;
        }
        tg = (width as u32 * tokens) as f64 / started.elapsed().as_secs_f64();
    }
    Ok(tg)
}
