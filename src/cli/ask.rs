//! `ask`: one question on a tier, on every tier, or on any GGUF file,
//! printed with everything measured on the way.

use super::{load_config, runtime};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xnai_model_router::ask::{ask, AskOptions};
use xnai_model_router::config::Config;
use xnai_model_router::engine::sampling::DEFAULT_TOP_P;
use xnai_model_router::pool::TierPool;

#[derive(Args)]
pub struct AskArgs {
    /// Tier name from the config.
    #[arg(long, conflicts_with_all = ["model", "all"])]
    tier: Option<String>,
    /// Any GGUF file, bypassing the config's tiers.
    #[arg(long, conflicts_with = "all")]
    model: Option<PathBuf>,
    /// Ask every tier in turn, smallest first, in one process.
    #[arg(long)]
    all: bool,
    /// Most tokens to generate (default: the tier's max_tokens).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature; greedy when absent or 0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most probable tokens up to this mass.
    #[arg(long, default_value_t = DEFAULT_TOP_P)]
    top_p: f32,
    /// Seed for sampling; the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// The question.
    question: String,
}

/// Asks, printing each answer and then its JSON report.
pub fn run(config_path: &Path, a: AskArgs) -> anyhow::Result<()> {
    let config = match &a.model {
        Some(path) => Config::for_model(path)?,
        None => load_config(config_path)?,
    };
    let tiers: Vec<Option<String>> = if a.all {
        config.tiers.iter().map(|t| Some(t.name.clone())).collect()
    } else {
        vec![a.tier.clone()]
    };
    let pool = TierPool::new(super::engine(&config)?, Arc::new(config));
    let rt = runtime()?;
    for tier in tiers {
        let opts = AskOptions {
            tier,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            stop: a.stop.clone(),
            system: a.system.clone(),
        };
        let result = rt.block_on(ask(&pool, &a.question, &opts))?;
        println!("[{}] {}", result.tier, result.answer);
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}
