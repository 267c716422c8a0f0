//! `bench prefill`: our prompt processing against llama.cpp's own batch
//! decode of the same number of tokens, on the same model, threads and
//! build, rounds interleaved, as a ratio.
//!
//! The baseline is llama-bench's `pp` method through the same library, in
//! a child process (`bench decode-loop --prefill`; one process per side, as
//! in `bench engine`): a context like the engine's but with llama.cpp's
//! default attention and weight layout, the tokens
//! decoded in batches of n_batch with logits for the last one only, every
//! matrix product on llama.cpp's own kernels (tinyBLAS included; a decode
//! outside the engine is never a generated pass). Our side is a real
//! request through the engine thread with the prompt cache off, so the whole
//! chat prompt is tokenised and processed each round; we count
//! `prompt_tokens / prompt_ms`.

use super::engine::{median, run_baseline_process, run_llama_bench_prompt};
use serde::Serialize;
use std::path::{Path, PathBuf};
use xnai_model_router::engine::ggml_hook;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{Engine, GenerateRequest, LoadSpec};

/// One model's result.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillBench {
    pub model: String,
    pub threads: u32,
    /// Prompt tokens processed per round, on both sides.
    pub tokens: u32,
    pub rounds: usize,
    /// Our prompt tokens per second, each round.
    pub ours: Vec<f64>,
    /// llama.cpp's batch decode, tokens per second, each round.
    pub baseline: Vec<f64>,
    pub ours_median: f64,
    pub baseline_median: f64,
    /// ours / baseline.
    pub ratio: f64,
    /// The prompt kernels in use ([`ggml_hook::prompt_kernel_name`]).
    pub prompt_kernels: String,
    /// The llama-bench binary's `pp` tokens per second, each round, when
    /// given (a llama.cpp built on its own, e.g. for this CPU).
    pub llama_bench: Vec<f64>,
    pub llama_bench_median: Option<f64>,
    /// ours / llama-bench.
    pub llama_bench_ratio: Option<f64>,
}

/// A prompt of roughly `tokens` tokens: varied prose, as an agent's
/// context would be, not one repeated word.
fn long_prompt(tokens: u32) -> String {
    const TOPICS: [&str; 6] = [
        "the build log shows a linker error in the storage module",
        "the test suite timed out while waiting for the database",
        "a user reported that the export button does nothing",
        "the nightly job copied twelve gigabytes of old backups",
        "the configuration file sets the cache size to zero",
        "the profiler shows most time spent parsing JSON",
    ];
    let mut text = String::from("Here are today's notes from the team.\n");
    let mut i = 0;
    // About four characters per token in English prose.
    while text.len() < tokens as usize * 4 {
        let topic = TOPICS[i % TOPICS.len()];
        text.push_str(&format!(
            "Note {}: {topic}; we looked at it on day {} and wrote down what we saw.\n",
            i + 1,
            i % 7 + 1
        ));
        i += 1;
    }
    text.push_str("Summarise the notes in one sentence.");
    text
}

/// Benchmarks `model` over `rounds` alternating rounds of a prompt of
/// about `tokens` tokens, with llama-bench's `pp` of the same length as a
/// third column in each round when `llama_bench` is given.
///
/// # Errors
///
/// Model load failures, or the baseline process or llama-bench failing.
pub async fn prefill_bench(
    model: &Path,
    threads: u32,
    tokens: u32,
    rounds: usize,
    llama_bench: Option<&Path>,
) -> anyhow::Result<PrefillBench> {
    let context = (tokens + 256).next_power_of_two().max(1024);
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
        cache_prompt: false,
        ..GenerateRequest::greedy(&long_prompt(tokens), 1)
    };
    // Warm-up, and the prompt's length in this model's tokens.
    let n = engine
        .generate(loaded.id, request.clone())
        .await?
        .prompt_tokens;
    let (mut ours, mut base, mut external) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(run_baseline_process(model, threads, n, context, true)?);
        if let Some(bin) = llama_bench {
            external.push(run_llama_bench_prompt(bin, model, threads, n)?);
        }
        let g = engine.generate(loaded.id, request.clone()).await?;
        anyhow::ensure!(g.cached_tokens == 0, "the prompt cache was used");
        ours.push(g.prompt_tokens as f64 / (g.prompt_ms / 1e3));
    }
    engine.unload(loaded.id).await;
    let (o, b) = (median(&ours), median(&base));
    let e = (!external.is_empty()).then(|| median(&external));
    Ok(PrefillBench {
        model: model.display().to_string(),
        threads,
        tokens: n,
        rounds,
        ours,
        baseline: base,
        ours_median: o,
        baseline_median: b,
        ratio: o / b,
        prompt_kernels: ggml_hook::prompt_kernel_name(),
        llama_bench: external,
        llama_bench_median: e,
        llama_bench_ratio: e.map(|e| o / e),
    })
}

/// The models here: every `.gguf` of the fetched ladder that exists.
pub fn local_models(dir: &Path) -> Vec<PathBuf> {
    [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "SmolLM2-135M-Instruct.F32.gguf",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .collect()
}

/// One model's result as a line.
pub fn render(r: &PrefillBench) -> String {
    let external = match (r.llama_bench_median, r.llama_bench_ratio) {
        (Some(e), Some(ratio)) => format!("; llama-bench pp {e:.1} tok/s, ratio {ratio:.3}"),
        _ => String::new(),
    };
    format!(
        "{}: ours {:.1} tok/s, llama.cpp batch decode {:.1} tok/s, ratio {:.3}{external} ({} prompt tokens, {} threads, median of {} alternating rounds; prompts on {})\n",
        Path::new(&r.model).file_name().unwrap_or_default().to_string_lossy(),
        r.ours_median,
        r.baseline_median,
        r.ratio,
        r.tokens,
        r.threads,
        r.rounds,
        r.prompt_kernels,
    )
}
