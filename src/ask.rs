//! One question on one tier, with timings and memory: the library function
//! behind the `ask` command.

use crate::engine::{Engine, FinishReason, GenerateRequest, Message, PromptFormat, Sampling};
use crate::error::{Error, Result};
use crate::memory::MemoryView;
use crate::pool::{Served, TierPool};
use crate::router::check_generation_args;
use serde::Serialize;
use std::time::Instant;

/// How to ask.
#[derive(Debug, Clone)]
pub struct AskOptions {
    /// Tier name; `None` means the smallest tier.
    pub tier: Option<String>,
    /// Overrides the tier's `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Greedy when `None`.
    pub temperature: Option<f32>,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub system: Option<String>,
}

impl Default for AskOptions {
    fn default() -> Self {
        AskOptions {
            tier: None,
            max_tokens: None,
            temperature: None,
            top_p: crate::engine::sampling::DEFAULT_TOP_P,
            seed: 0,
            stop: Vec::new(),
            system: None,
        }
    }
}

/// Memory after the answer: the pool's view, and this tier's part of it.
#[derive(Debug, Clone, Serialize)]
pub struct AskMemory {
    /// This tier's estimated cost.
    pub tier_estimated_bytes: u64,
    /// Process RSS measured right after this tier's model loaded.
    pub rss_after_load: u64,
    #[serde(flatten)]
    pub pool: MemoryView,
}

/// The answer and everything measured on the way.
#[derive(Debug, Clone, Serialize)]
pub struct AskResult {
    pub answer: String,
    pub tier: String,
    pub role: &'static str,
    pub model: String,
    pub finish: FinishReason,
    pub prompt_format: PromptFormat,
    pub prompt_tokens: u32,
    /// Leading prompt tokens reused (prompt cache, saved KV state).
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// Generated tokens per second of generation time.
    pub tokens_per_second: f64,
    /// The answer's calibrated confidence (see [`crate::confidence`]).
    pub confidence: f64,
    /// What the confidence was computed from.
    pub features: crate::confidence::Features,
    /// Geometric mean of the generated tokens' probabilities.
    pub mean_token_prob: f64,
    pub min_token_prob: f64,
    pub load_ms: f64,
    pub wait_ms: f64,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    pub total_ms: f64,
    /// Drafting and acceptance when the tier decodes speculatively.
    pub speculative: Option<crate::engine::SpecStats>,
    pub memory: AskMemory,
}

/// Asks `question` on one tier of `pool`.
///
/// # Errors
///
/// [`Error::InvalidInput`] for an empty question or bad options, the pool's
/// error when the tier cannot load, the engine's when generation fails.
pub async fn ask<E: Engine>(
    pool: &TierPool<E>,
    question: &str,
    opts: &AskOptions,
) -> Result<AskResult> {
    let started = Instant::now();
    if question.trim().is_empty() {
        return Err(Error::invalid("question", "must not be empty"));
    }
    check_generation_args(opts.max_tokens, opts.temperature)?;
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(Error::invalid(
            "top_p",
            format!("{} is outside (0, 1]", opts.top_p),
        ));
    }
    let tier = match &opts.tier {
        Some(name) => pool.tier_index(name)?,
        None => 0,
    };
    let t = pool.config().tiers[tier].clone();
    let mut messages = Vec::new();
    if let Some(s) = &opts.system {
        messages.push(Message::new("system", s.clone()));
    }
    messages.push(Message::new("user", question));
    let request = GenerateRequest {
        sampling: Sampling::from_args(opts.temperature, opts.top_p, opts.seed),
        stop: opts.stop.clone(),
        ..GenerateRequest::new(messages, opts.max_tokens.unwrap_or(t.max_tokens))
    };
    let Served {
        generation: g,
        load_ms,
        wait_ms,
    } = pool.run(tier, request).await?;

    let status = pool.status();
    let rss_after_load = status
        .resident
        .iter()
        .find(|r| r.tier == t.name)
        .map_or(0, |r| r.rss_after_load);
    let features = t.calibration.annotate(
        crate::confidence::Features::of_generation(&g)
            .for_query(&crate::classify::classify(question)),
    );
    let n = g.token_probs.len().max(1) as f64;
    let mean_log: f64 = g.token_probs.iter().map(|&p| (p as f64).ln()).sum::<f64>() / n;
    Ok(AskResult {
        tier: t.name.clone(),
        role: t.role.as_str(),
        model: t.model.display().to_string(),
        finish: g.finish,
        prompt_format: g.prompt_format,
        prompt_tokens: g.prompt_tokens,
        cached_tokens: g.cached_tokens,
        completion_tokens: g.completion_tokens,
        tokens_per_second: g.tokens_per_second,
        confidence: t.calibration.confidence(&features),
        features,
        mean_token_prob: if g.token_probs.is_empty() {
            0.0
        } else {
            mean_log.exp()
        },
        min_token_prob: g.token_probs.iter().copied().fold(1.0f32, f32::min) as f64,
        load_ms,
        wait_ms,
        prompt_ms: g.prompt_ms,
        generate_ms: g.generate_ms,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        speculative: g.speculative,
        answer: g.text,
        memory: AskMemory {
            tier_estimated_bytes: t.cost.total,
            rss_after_load,
            pool: MemoryView::of(&status),
        },
    })
}
