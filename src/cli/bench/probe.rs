//! `bench probe`: what probing a new model file adds to its first answer,
//! against the load itself, interleaved in one run.
//!
//! Each round and model measures the time to a first answer on the file
//! three ways: loaded as it is (no probe), probed first (a fresh verdict
//! folder: a new file), and with the verdict kept from that probe. Before
//! the first two, the file's pages are dropped from the page cache
//! (`posix_fadvise(DONTNEED)`), as for a file not read since it was
//! written; the order of the two alternates between rounds.

use super::engine::median;
use super::ratio;
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{Engine, GenerateRequest, LoadSpec};
use xnai_model_router::probe::{Outcome, Prober};

#[derive(Debug, Serialize)]
pub struct ProbeRow {
    pub model: String,
    /// Median milliseconds of the load alone (the no-probe run's).
    pub load_ms: f64,
    /// Median milliseconds to a first answer without a probe.
    pub plain_ms: f64,
    /// The same with a probe of a file never probed before.
    pub probed_ms: f64,
    /// The same with the verdict kept from an earlier probe.
    pub kept_ms: f64,
    /// Median milliseconds the probe child ran.
    pub probe_ms: f64,
    /// (probed - plain) / load: what a new file's probe adds, in loads.
    pub added_loads: f64,
    /// (kept - plain) / load: what a probed file's check adds, in loads.
    pub kept_added_loads: f64,
}

#[derive(Default, Clone)]
struct Samples {
    load: Vec<f64>,
    plain: Vec<f64>,
    probed: Vec<f64>,
    kept: Vec<f64>,
    probe: Vec<f64>,
}

/// Measures each model `rounds` times.
pub async fn probe_bench(
    models: &[PathBuf],
    threads: u32,
    rounds: usize,
) -> anyhow::Result<Vec<ProbeRow>> {
    let exe = std::env::current_exe()?;
    let engine = LlamaEngine::new();
    let mut samples = vec![Samples::default(); models.len()];
    for round in 0..rounds {
        for (m, model) in models.iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let prober = Prober::new(exe.clone(), dir.path().to_path_buf());
            let s = &mut samples[m];
            for probed in [round % 2 == 0, round % 2 == 1] {
                forget_pages(model)?;
                if probed {
                    let started = Instant::now();
                    let checked = prober.check(model, threads);
                    if let Outcome::Failed { cause } = checked.verdict.outcome {
                        anyhow::bail!("{} failed its probe: {cause}", model.display());
                    }
                    s.probe.push(checked.verdict.probe_ms);
                    first_answer(&engine, model, threads).await?;
                    s.probed.push(ms(started));
                } else {
                    let started = Instant::now();
                    let load_ms = first_answer(&engine, model, threads).await?;
                    s.plain.push(ms(started));
                    s.load.push(load_ms);
                }
            }
            let started = Instant::now();
            anyhow::ensure!(
                prober.check(model, threads).cached,
                "the verdict was not kept"
            );
            first_answer(&engine, model, threads).await?;
            s.kept.push(ms(started));
        }
    }
    Ok(models
        .iter()
        .zip(samples)
        .map(|(m, s)| row(m, &s))
        .collect())
}

fn row(model: &Path, s: &Samples) -> ProbeRow {
    let (load, plain, probed, kept) = (
        median(&s.load),
        median(&s.plain),
        median(&s.probed),
        median(&s.kept),
    );
    ProbeRow {
        model: model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        load_ms: load,
        plain_ms: plain,
        probed_ms: probed,
        kept_ms: kept,
        probe_ms: median(&s.probe),
        added_loads: ratio(probed - plain, load),
        kept_added_loads: ratio(kept - plain, load),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Drops the file's cached pages, so the next read comes from the disk.
fn forget_pages(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: posix_fadvise only advises the kernel about an open file
    // descriptor that `file` keeps alive for the call; no memory is shared.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise failed with {rc}");
    Ok(())
}

/// Loads `model`, answers one greedy token and unloads it; returns the
/// load's milliseconds.
async fn first_answer(engine: &LlamaEngine, model: &Path, threads: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let loaded = engine
        .load(LoadSpec {
            name: "bench".into(),
            path: model.to_path_buf(),
            context: 2048,
            threads,
            mlock: false,
            sequences: 1,
        })
        .await?;
    let load_ms = ms(started);
    let answer = engine
        .generate(loaded.id, GenerateRequest::greedy("Say hello.", 1))
        .await;
    engine.unload(loaded.id).await;
    answer?;
    Ok(load_ms)
}

pub fn render(rows: &Vec<ProbeRow>) -> String {
    let mut out = format!(
        "{:<34} {:>8} {:>9} {:>10} {:>8} {:>9} {:>12} {:>12}\n",
        "model",
        "load ms",
        "plain ms",
        "probed ms",
        "kept ms",
        "probe ms",
        "added loads",
        "kept: loads"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>8.0} {:>9.0} {:>10.0} {:>8.0} {:>9.0} {:>12.2} {:>12.2}\n",
            r.model,
            r.load_ms,
            r.plain_ms,
            r.probed_ms,
            r.kept_ms,
            r.probe_ms,
            r.added_loads,
            r.kept_added_loads
        ));
    }
    out
}
