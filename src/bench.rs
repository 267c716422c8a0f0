//! `bench engine`: our generation speed against llama.cpp's own llama-bench
//! on the same model and thread count, measured in one run, as a ratio.
//!
//! Like for like: llama-bench's `tg` test decodes one token at a time into an
//! almost empty context and never reads the logits. We time `n` generated
//! tokens after a one-line prompt, sampling included (the per-token work on
//! our side is part of what is measured), and count `n - 1` decodes, since
//! the first token comes from the prompt's logits. Rounds alternate between
//! the two so that machine noise hits both alike; medians are reported.

use crate::engine::llama::LlamaEngine;
use crate::engine::{Cancel, Engine, GenerateRequest, LoadSpec, Message, Sampling};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One model's result.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBench {
    pub model: String,
    pub threads: u32,
    pub tokens: u32,
    pub rounds: usize,
    /// Our decodes per second, each round.
    pub ours: Vec<f64>,
    /// llama-bench's tokens per second, each round.
    pub llama_bench: Vec<f64>,
    pub ours_median: f64,
    pub llama_bench_median: f64,
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

/// Runs llama-bench once and returns its average tokens per second.
fn run_llama_bench(bin: &Path, model: &Path, threads: u32, tokens: u32) -> anyhow::Result<f64> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", "0", "-n", &tokens.to_string()])
        .args(["-r", "1", "-o", "json"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "llama-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["avg_ts"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("llama-bench printed no avg_ts: {v}"))
}

/// Benchmarks `model` for `rounds` alternating rounds of `tokens` tokens.
///
/// # Errors
///
/// Model load failures, or llama-bench failing or printing no result.
pub async fn engine_bench(
    llama_bench: &Path,
    model: &Path,
    threads: u32,
    tokens: u32,
    rounds: usize,
) -> anyhow::Result<EngineBench> {
    let engine = LlamaEngine::new();
    let loaded = engine
        .load(LoadSpec {
            name: "bench".into(),
            path: model.to_path_buf(),
            context: 512.max(tokens + 64),
            threads,
            mlock: false,
        })
        .await?;
    let request = GenerateRequest {
        messages: vec![Message::new("user", "Write a long story about a lighthouse.")],
        max_tokens: tokens,
        sampling: Sampling::Greedy,
        stop: Vec::new(),
        ignore_eos: true,
        cancel: Cancel::default(),
    };
    // Warm-up: page the weights in, as llama-bench's own warm-up run does.
    engine.generate(loaded.id, request.clone()).await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        theirs.push(run_llama_bench(llama_bench, model, threads, tokens)?);
        let g = engine.generate(loaded.id, request.clone()).await?;
        ours.push((g.completion_tokens.saturating_sub(1)) as f64 / (g.generate_ms / 1e3));
    }
    engine.unload(loaded.id).await;
    let (o, t) = (median(&ours), median(&theirs));
    Ok(EngineBench {
        model: model.display().to_string(),
        threads,
        tokens,
        rounds,
        ours,
        llama_bench: theirs,
        ours_median: o,
        llama_bench_median: t,
        ratio: o / t,
    })
}

/// Where `scripts/build-llama-bench.sh` puts llama-bench.
pub fn default_llama_bench() -> PathBuf {
    PathBuf::from("target/llama-bench/bin/llama-bench")
}
