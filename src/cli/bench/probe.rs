//! `bench probe`: what probing adds to the first load of a new model file,
//! and to the load of a file already probed, against the load itself,
//! interleaved in one run.

use super::engine::median;
use super::ratio;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{Engine, LoadSpec};
use xnai_model_router::probe::{Outcome, Prober};

#[derive(Debug, Serialize)]
pub struct ProbeRow {
    pub model: String,
    /// Median milliseconds of a probe of a file never probed (the child
    /// start, load, a few decoded tokens, and the verdict written).
    pub probe_ms: f64,
    /// Median milliseconds of the same file loaded in this process with a
    /// context of the same size as the tiers' default.
    pub load_ms: f64,
    /// Median milliseconds of a check that finds the kept verdict.
    pub kept_verdict_ms: f64,
    /// probe_ms / load_ms: the goal is at most 1.
    pub probe_per_load: f64,
}

/// Measures each model `rounds` times, a fresh verdict folder per round.
pub async fn probe_bench(
    models: &[PathBuf],
    threads: u32,
    rounds: usize,
) -> anyhow::Result<Vec<ProbeRow>> {
    let exe = std::env::current_exe()?;
    let engine = LlamaEngine::new();
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new()); models.len()];
    for _ in 0..rounds {
        for (m, model) in models.iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let prober = Prober::new(exe.clone(), dir.path().to_path_buf());
            let (probe_ms, checked) = timed(|| prober.check(model, threads));
            if let Outcome::Failed { cause } = checked.verdict.outcome {
                anyhow::bail!("{} failed its probe: {cause}", model.display());
            }
            let load_ms = load_once(&engine, model, threads).await?;
            let (kept_ms, again) = timed(|| prober.check(model, threads));
            anyhow::ensure!(again.cached, "the verdict was not kept");
            samples[m].0.push(probe_ms);
            samples[m].1.push(load_ms);
            samples[m].2.push(kept_ms);
        }
    }
    Ok(models
        .iter()
        .zip(samples)
        .map(|(model, (probe, load, kept))| ProbeRow {
            model: model
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            probe_ms: median(&probe),
            load_ms: median(&load),
            kept_verdict_ms: median(&kept),
            probe_per_load: ratio(median(&probe), median(&load)),
        })
        .collect())
}

fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let started = Instant::now();
    let out = f();
    (started.elapsed().as_secs_f64() * 1e3, out)
}

async fn load_once(engine: &LlamaEngine, model: &Path, threads: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let loaded = engine
        .load(LoadSpec {
            name: "bench".into(),
            path: model.to_path_buf(),
            context: 2048,
            threads,
            mlock: false,
        })
        .await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    engine.unload(loaded.id).await;
    Ok(ms)
}

pub fn render(rows: &Vec<ProbeRow>) -> String {
    let mut out = format!(
        "{:<36} {:>10} {:>10} {:>12} {:>11}\n",
        "model", "probe ms", "load ms", "kept ms", "probe/load"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<36} {:>10.0} {:>10.0} {:>12.1} {:>11.2}\n",
            r.model, r.probe_ms, r.load_ms, r.kept_verdict_ms, r.probe_per_load
        ));
    }
    out
}
