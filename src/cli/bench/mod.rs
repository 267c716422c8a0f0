//! `bench`: speed measured as ratios against a baseline run in the same
//! process or machine, interleaved, never asserted in tests.
//!
//! - [`engine`]: generation tokens/s against llama.cpp's own decode loop.
//! - [`prefill`]: prompt tokens/s against llama.cpp's own batch decode.
//! - [`cache`]: time to first token with the prompt cache and saved KV
//!   states against cold, on an agent-style conversation.
//! - [`speculative`]: speculative against target-only decoding.
//! - [`scaleout`]: the Redis hop, and one worker against two.
//! - [`probe`]: what probing a new model file adds to its first load.
//! - [`concurrency`]: N concurrent requests batched against one at a time,
//!   and against llama.cpp's own batched decode.

pub mod cache;
pub mod concurrency;
pub mod engine;
pub mod prefill;
pub mod probe;
pub mod scaleout;
pub mod speculative;

use super::{cores, load_config, runtime};
use anyhow::bail;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use xnai_model_router::config::UnknownTier;
use xnai_model_router::engine::SpecParams;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Speculative vs target-only greedy decoding, interleaved A/B, plus n-gram mode.
    Speculative {
        /// Draft model (default: SmolLM2-135M Q4_1 in $XNAI_MODELS_DIR).
        #[arg(long)]
        draft: Option<PathBuf>,
        /// Target model (default: SmolLM2-135M F32 in $XNAI_MODELS_DIR).
        #[arg(long)]
        target: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        draft_max: u32,
        #[arg(long, default_value_t = 1)]
        draft_min: u32,
        #[arg(long, default_value_t = 0.0)]
        p_min: f32,
        #[arg(long)]
        adaptive: bool,
        #[arg(long, default_value_t = 160)]
        tokens: u32,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long)]
        threads: Option<u32>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The Redis hop against a local call, and N concurrent requests with
    /// one worker against two (starts its own redis-server and workers).
    Scaleout {
        /// Tier to serve (default: the smallest).
        #[arg(long)]
        tier: Option<String>,
        /// Concurrent requests per throughput round.
        #[arg(long, default_value_t = 8)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Interleaved local/remote pairs for the hop latency.
        #[arg(long, default_value_t = 30)]
        samples: usize,
        /// Use this Redis instead of starting a private redis-server.
        #[arg(long)]
        redis: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The baselines' child process: llama.cpp's raw decode loop (or with
    /// `--prefill`, its batch decode), prints tokens/s.
    #[command(hide = true)]
    DecodeLoop {
        #[arg(long)]
        prefill: bool,
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        threads: u32,
        #[arg(long)]
        tokens: u32,
        #[arg(long)]
        context: u32,
    },
    /// Prompt processing tokens/s against llama.cpp's own batch decode
    /// (its kernels, tinyBLAS included), same model, threads and token count.
    Prefill {
        /// Models to measure (default: every model fetched here).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        #[arg(long)]
        threads: Option<u32>,
        /// Prompt length, in tokens (about).
        #[arg(long, default_value_t = 512)]
        tokens: u32,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Also run this llama-bench binary's prompt test (`pp`, same
        /// tokens and threads) in every round, as a third column: for
        /// instance a llama.cpp built for this CPU's AVX-512.
        #[arg(long, env = "XNAI_LLAMA_BENCH")]
        llama_bench: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time to first token of a growing conversation with the prompt cache
    /// against cold, and after a swap with the saved KV state against cold.
    Cache {
        /// The model (default: SmolLM2-135M Q4_1 in $XNAI_MODELS_DIR).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        threads: Option<u32>,
        /// Tokens (about) of the first turn's prompt.
        #[arg(long, default_value_t = 1500)]
        first: u32,
        /// Further turns.
        #[arg(long, default_value_t = 9)]
        turns: usize,
        /// Tokens (about) each further turn adds.
        #[arg(long, default_value_t = 100)]
        add: u32,
        #[arg(long)]
        json: bool,
    },
    /// What probing a new model file in a child adds to its first answer,
    /// and what a kept verdict adds, in loads of the file.
    Probe {
        /// Models to measure (default: every model fetched here).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        json: bool,
    },
    /// N concurrent requests on one tier decoded together against one at
    /// a time, and llama.cpp's own batched decode (llama-batched-bench's
    /// measurement) as the baseline; plus a short request behind a long one.
    Concurrency {
        /// Tier whose model to measure (default: the smallest local tier).
        #[arg(long)]
        tier: Option<String>,
        /// Measure this model file instead of a tier's.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Concurrent requests (the batch width).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Tokens generated per request.
        #[arg(long, default_value_t = 64)]
        tokens: u32,
        /// Prompt tokens per sequence in llama.cpp's baseline.
        #[arg(long, default_value_t = 32)]
        prompt: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// The concurrency baseline's child process: llama.cpp's batched
    /// decode, prints generation tokens/s.
    #[command(hide = true)]
    BatchedLoop {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        threads: u32,
        #[arg(long)]
        width: usize,
        #[arg(long)]
        prompt: u32,
        #[arg(long)]
        tokens: u32,
    },
    /// Generation tokens/s against llama.cpp's llama-bench, same model and threads.
    Engine {
        /// Models to measure (default: the smallest tier's).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long, default_value_t = 128)]
        tokens: u32,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Also run this llama-bench binary in every round, as a third column.
        #[arg(long, env = "XNAI_LLAMA_BENCH")]
        llama_bench: Option<PathBuf>,
    },
}

/// `num / den`, 0 when there is nothing to divide by.
pub fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Where the fetched models are: `$XNAI_MODELS_DIR`, else the default.
fn models_dir() -> PathBuf {
    let dir = xnai_model_router::config::validate::default_models_dir();
    std::env::var_os("XNAI_MODELS_DIR").map_or(dir, PathBuf::from)
}

/// `models`, or every model fetched here when none was named.
fn models_or_local(models: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let models = if models.is_empty() {
        prefill::local_models(&models_dir())
    } else {
        models
    };
    if models.is_empty() {
        bail!("no models: pass --model, or run scripts/fetch-models.sh");
    }
    Ok(models)
}

/// Prints a result as one JSON object, or as its table.
fn show<T: serde::Serialize>(r: &T, json: bool, table: fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        print!("{}", table(r));
    }
    Ok(())
}

/// Runs a `bench` subcommand; `config_path` names the ladder.
pub fn run(config_path: &Path, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Speculative {
            draft,
            target,
            draft_max,
            draft_min,
            p_min,
            adaptive,
            tokens,
            rounds,
            threads,
            json,
        } => {
            let dir = models_dir();
            let draft = draft.unwrap_or_else(|| dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
            let target = target.unwrap_or_else(|| dir.join("SmolLM2-135M-Instruct.F32.gguf"));
            let params = SpecParams {
                draft_max,
                draft_min,
                p_min,
                adaptive,
            };
            let threads = threads.unwrap_or_else(cores);
            let r = runtime()?.block_on(speculative::speculative_bench(
                &draft,
                &target,
                threads,
                tokens,
                params,
                rounds.max(1),
            ))?;
            show(&r, json, speculative::render_spec)?;
        }
        BenchCmd::Scaleout {
            tier,
            requests,
            max_tokens,
            samples,
            redis,
            json,
        } => {
            let opts = scaleout::ScaleoutOptions {
                config: config_path.to_path_buf(),
                tier,
                requests: requests.max(1),
                max_tokens,
                samples: samples.max(1),
                redis,
                cores: cores(),
            };
            let r = runtime()?.block_on(scaleout::scaleout(&opts))?;
            show(&r, json, scaleout::render)?;
        }
        BenchCmd::DecodeLoop {
            prefill,
            model,
            threads,
            tokens,
            context,
        } => {
            let mut b = engine::Baseline::new(&model, threads, context)?;
            let mut once = || {
                if prefill {
                    b.prefill(tokens)
                } else {
                    b.round(tokens)
                }
            };
            once()?;
            println!("{}", once()?);
        }
        BenchCmd::Prefill {
            models,
            threads,
            tokens,
            rounds,
            llama_bench,
            json,
        } => {
            if let Some(bin) = llama_bench.as_ref().filter(|b| !b.exists()) {
                bail!("llama-bench not found at {}", bin.display());
            }
            let models = models_or_local(models)?;
            let threads = threads.unwrap_or_else(cores);
            let rt = runtime()?;
            for m in models {
                let r = rt.block_on(prefill::prefill_bench(
                    &m,
                    threads,
                    tokens,
                    rounds.max(1),
                    llama_bench.as_deref(),
                ))?;
                show(&r, json, prefill::render)?;
            }
        }
        BenchCmd::Probe {
            models,
            threads,
            rounds,
            json,
        } => {
            let models = models_or_local(models)?;
            let threads = threads.unwrap_or_else(cores);
            let rows = runtime()?.block_on(probe::probe_bench(&models, threads, rounds.max(1)))?;
            show(&rows, json, probe::render)?;
        }
        BenchCmd::Cache {
            model,
            threads,
            first,
            turns,
            add,
            json,
        } => {
            let all = prefill::local_models(&models_dir());
            let model =
                model.unwrap_or_else(|| models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
            if !model.exists() {
                bail!(
                    "{} not found: pass --model, or run scripts/fetch-models.sh",
                    model.display()
                );
            }
            let others = all.into_iter().filter(|m| *m != model).take(2).collect();
            let opts = cache::CacheOptions {
                model,
                others,
                threads: threads.unwrap_or_else(cores),
                first,
                turns,
                add,
            };
            let r = runtime()?.block_on(cache::cache_bench(&opts))?;
            show(&r, json, cache::render)?;
        }
        BenchCmd::Concurrency {
            tier,
            model,
            clients,
            tokens,
            prompt,
            rounds,
            threads,
            json,
        } => {
            let (tier, model, tier_threads, draft) = match model {
                Some(m) => ("(model file)".to_string(), m, None, None),
                None => {
                    let config = load_config(config_path)?;
                    let t = match &tier {
                        Some(name) => config.tier(name).ok_or_else(|| {
                            let names = config.tiers.iter().map(|t| t.name.as_str());
                            anyhow::anyhow!("--tier: {}", UnknownTier::among(name, names))
                        })?,
                        None => config
                            .tiers
                            .iter()
                            .find(|t| !t.remote)
                            .ok_or_else(|| anyhow::anyhow!("the ladder has no local tier"))?,
                    };
                    if t.remote {
                        bail!("tier {} is remote: its workers serve it", t.name);
                    }
                    let draft = t.draft.map(|d| {
                        let speculation = t.speculation(Some(0));
                        (config.tiers[d].model.clone(), speculation)
                    });
                    (t.name.clone(), t.model.clone(), Some(t.threads), draft)
                }
            };
            if clients == 0 {
                bail!("--clients must be at least 1");
            }
            let opts = concurrency::ConcurrencyOptions {
                model,
                draft,
                tier,
                clients,
                threads: threads.or(tier_threads).unwrap_or_else(cores),
                tokens: tokens.max(1),
                prompt: prompt.max(1),
                rounds: rounds.max(1),
            };
            let r = runtime()?.block_on(concurrency::concurrency_bench(&opts))?;
            show(&r, json, concurrency::render)?;
        }
        BenchCmd::BatchedLoop {
            model,
            threads,
            width,
            prompt,
            tokens,
        } => {
            let tps =
                concurrency::batched_loop(&model, threads, width.max(1), prompt.max(1), tokens)?;
            println!("{tps}");
        }
        BenchCmd::Engine {
            models,
            threads,
            tokens,
            rounds,
            llama_bench,
        } => {
            if let Some(bin) = llama_bench.as_ref().filter(|b| !b.exists()) {
                bail!("llama-bench not found at {}", bin.display());
            }
            let models = if models.is_empty() {
                vec![load_config(config_path)?.tiers[0].model.clone()]
            } else {
                models
            };
            let threads = threads.unwrap_or_else(cores);
            let rt = runtime()?;
            for m in models {
                let r = rt.block_on(engine::engine_bench(
                    llama_bench.as_deref(),
                    &m,
                    threads,
                    tokens,
                    rounds,
                ))?;
                println!("{}", engine::render(&m, &r));
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}
