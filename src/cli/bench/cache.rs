//! `bench cache`: time to first token of an agent-style conversation on one
//! model, with the prompt cache against cold, turn by turn in the same run,
//! and after the model is swapped out (two others loaded) and back, with its
//! saved KV state against cold. Every cached answer is compared with its
//! cold answer, token for token.
//!
//! Time to first token is the attempt's `prompt_ms` (tokenising, restoring
//! a saved state, decoding the prompt); the first token comes from the last
//! prompt batch's logits. Each turn runs the cached request first, then the
//! cold one (`cache_prompt: false`), which leaves the cache holding that
//! turn's prompt, as the cached request did: the next turn starts from the
//! same state either way.

use super::engine::median;
use serde::Serialize;
use std::path::{Path, PathBuf};
use xnai_model_router::engine::llama::store::{self, StoreSettings};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{Engine, GenerateRequest, Generation, LoadSpec, Message, ModelId};

/// One turn's times.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub cold_ms: f64,
    pub cached_ms: f64,
    /// cached / cold.
    pub ratio: f64,
    pub identical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheBench {
    pub model: String,
    pub threads: u32,
    pub turns: Vec<Turn>,
    /// Median cached / cold over the turns after the first.
    pub cached_ratio: f64,
    /// The first turn after the model was swapped out and back.
    pub after_swap: Turn,
    pub identical: bool,
}

/// Options of one run.
pub struct CacheOptions {
    pub model: PathBuf,
    /// Models loaded meanwhile to swap it out.
    pub others: Vec<PathBuf>,
    pub threads: u32,
    pub first: u32,
    pub turns: usize,
    pub add: u32,
}

/// About `tokens` tokens of varied notes, as an agent's context would be.
fn notes(tokens: u32, seed: usize) -> String {
    const WHAT: [&str; 5] = [
        "the build failed in the storage module",
        "a test timed out waiting for the database",
        "the export button does nothing on Safari",
        "the nightly backup copied stale files",
        "the cache size was set to zero in staging",
    ];
    let mut text = String::new();
    let mut i = seed;
    // About 2.6 characters per token for these lines (SmolLM2, gemma-3).
    while text.len() * 10 < tokens as usize * 26 {
        text.push_str(&format!(
            "Log {i}: {}; seen on host {} at {:02}:{:02}.\n",
            WHAT[i % WHAT.len()],
            i % 13,
            i % 24,
            (i * 7) % 60
        ));
        i += 1;
    }
    text
}

fn load(path: &Path, threads: u32) -> LoadSpec {
    LoadSpec {
        name: path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        path: path.to_path_buf(),
        context: 8192,
        threads,
        mlock: false,
        sequences: 1,
    }
}

/// Runs one turn: cached, then cold; returns the turn and the answer.
async fn turn(
    engine: &LlamaEngine,
    id: ModelId,
    messages: &[Message],
) -> anyhow::Result<(Turn, Generation)> {
    let request = |cache_prompt| GenerateRequest {
        cache_prompt,
        ..GenerateRequest::new(messages.to_vec(), 16)
    };
    let cached = engine.generate(id, request(true)).await?;
    let cold = engine.generate(id, request(false)).await?;
    let t = Turn {
        prompt_tokens: cold.prompt_tokens,
        cached_tokens: cached.cached_tokens,
        cold_ms: cold.prompt_ms,
        cached_ms: cached.prompt_ms,
        ratio: cached.prompt_ms / cold.prompt_ms,
        identical: cached.token_ids == cold.token_ids,
    };
    Ok((t, cached))
}

/// Runs the conversation.
///
/// # Errors
///
/// A model fails to load or a generation fails.
pub async fn cache_bench(o: &CacheOptions) -> anyhow::Result<CacheBench> {
    let dir = std::env::temp_dir().join(format!("xnai-bench-kv-{}", std::process::id()));
    let engine = LlamaEngine::with_store(Some(StoreSettings {
        dir: dir.clone(),
        max_bytes: 4 << 30,
    }));
    let mut id = engine.load(load(&o.model, o.threads)).await?.id;
    let mut messages = vec![
        Message::new(
            "system",
            "You are a careful assistant for an on-call engineer.",
        ),
        Message::new(
            "user",
            format!("{}Which problem comes up most?", notes(o.first, 0)),
        ),
    ];
    // Warm-up: page the weights in.
    engine
        .generate(id, GenerateRequest::greedy("Hello.", 4))
        .await?;
    let mut turns = Vec::new();
    for i in 0..=o.turns {
        let (t, answer) = turn(&engine, id, &messages).await?;
        eprintln!(
            "turn {i}: {} prompt tokens, {} cached, cold {:.0} ms, cached {:.0} ms",
            t.prompt_tokens, t.cached_tokens, t.cold_ms, t.cached_ms
        );
        turns.push(t);
        messages.push(Message::new("assistant", answer.text));
        messages.push(Message::new(
            "user",
            format!("{}What changed since then?", notes(o.add, 1000 + i * 50)),
        ));
    }
    // Swap it out: unloading saves its state; two other models take turns.
    engine.unload(id).await;
    for other in &o.others {
        let other_id = engine.load(load(other, o.threads)).await?.id;
        engine
            .generate(other_id, GenerateRequest::greedy("Hello.", 4))
            .await?;
        engine.unload(other_id).await;
    }
    id = engine.load(load(&o.model, o.threads)).await?.id;
    let before = store::counts();
    let (after_swap, _) = turn(&engine, id, &messages).await?;
    if store::counts().hits == before.hits {
        eprintln!(
            "note: no saved state was restored after the swap (see the README's cache section)"
        );
    }
    engine.unload(id).await;
    let _ = std::fs::remove_dir_all(&dir);
    let ratios: Vec<f64> = turns.iter().skip(1).map(|t| t.ratio).collect();
    let identical = turns.iter().all(|t| t.identical) && after_swap.identical;
    Ok(CacheBench {
        model: o.model.display().to_string(),
        threads: o.threads,
        cached_ratio: median(&ratios),
        turns,
        after_swap,
        identical,
    })
}

/// The result as a few lines.
pub fn render(r: &CacheBench) -> String {
    let name = Path::new(&r.model)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut out = format!(
        "{name} ({} threads): time to first token, cached / cold\n",
        r.threads
    );
    for (i, t) in r.turns.iter().enumerate() {
        out.push_str(&format!(
            "  turn {i}: {} tokens ({} cached): {:.0} ms / {:.0} ms = {:.3}{}\n",
            t.prompt_tokens,
            t.cached_tokens,
            t.cached_ms,
            t.cold_ms,
            t.ratio,
            if t.identical { "" } else { "  ANSWERS DIFFER" }
        ));
    }
    let s = &r.after_swap;
    out.push_str(&format!(
        "  median cached/cold over turns 1..: {:.3}\n  after a swap: {} tokens ({} restored): {:.0} ms / {:.0} ms = {:.3}\n  every answer identical to its cold answer: {}\n",
        r.cached_ratio, s.prompt_tokens, s.cached_tokens, s.cached_ms, s.cold_ms, s.ratio, r.identical
    ));
    out
}
