//! `calibrate --set FILE.jsonl`: every tier on every question, each tier's
//! confidence fitted to its answers, and (with `--write`) the fitted values
//! saved where the config reads them.

use super::{load_config, runtime};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xnai_model_router::calibrate::{fit_ladder, set, sweep, write, LadderFit};
use xnai_model_router::config::raw::RawConfig;
use xnai_model_router::pool::TierPool;

#[derive(Args)]
pub struct CalibrateArgs {
    /// Questions with accepted answers, one JSON object per line:
    /// {"question": ..., "contains" | "exact": [...] | "regex": "..."}.
    #[arg(long)]
    set: PathBuf,
    /// Precision each tier's accepted answers should keep. Default: the
    /// most accurate tier's accuracy on the set.
    #[arg(long, value_parser = unit_interval)]
    precision: Option<f64>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Save the fitted thresholds and calibrations in the config's
    /// calibration file (named in the config if it names none).
    #[arg(long)]
    write: bool,
    /// Also write every tier's answer to every question, scored, with its
    /// features and confidence, to this JSONL file.
    #[arg(long, value_name = "FILE")]
    answers: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is outside (0, 1]"))
    }
}

pub fn run(config_path: &Path, a: CalibrateArgs) -> anyhow::Result<()> {
    if a.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    let questions = set::load(&a.set)?;
    let config = load_config(config_path)?;
    let pool = TierPool::new(super::engine(&config)?, Arc::new(config));
    let total = questions.len();
    eprintln!(
        "calibrate: {} questions x {} tiers",
        total,
        pool.config().tiers.len()
    );
    let sweeps = runtime()?.block_on(sweep::sweep(
        &pool,
        &questions,
        a.max_tokens,
        |tier, done| {
            if done % 25 == 0 || done == total {
                eprintln!("  {tier}: {done}/{total}");
            }
        },
    ));
    if let Some(path) = &a.answers {
        write_answers(path, &questions, &sweeps)
            .with_context(|| format!("writing answers to {}", path.display()))?;
    }
    let fit = fit_ladder(pool.config(), &questions, &sweeps, a.precision);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&fit)?);
    } else {
        print!("{}", render(&fit));
    }
    if a.write {
        let named = read_named(config_path)?;
        let saved = write::save(config_path, named.as_deref(), &fit)?;
        eprintln!(
            "calibrate: wrote {} ({}){}",
            saved.calibration_file.display(),
            saved.tiers.join(", "),
            if saved.config_updated {
                format!("; {} now names it", config_path.display())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Every swept answer as one JSON line.
fn write_answers(
    path: &Path,
    questions: &[set::Question],
    sweeps: &[sweep::TierSweep],
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in sweeps {
        for (a, q) in s.scored.iter().zip(questions) {
            let row = serde_json::json!({
                "line": a.line,
                "tier": s.name,
                "question": q.question,
                "answer": a.answer,
                "right": a.right,
                "confidence": a.confidence,
                "features": a.features,
                "ms": a.ms,
            });
            writeln!(out, "{row}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The calibration file the config names, read without resolving the rest.
fn read_named(config: &Path) -> anyhow::Result<Option<String>> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let raw: RawConfig = yaml_serde::from_str(&text)?;
    Ok(raw.calibration)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The table calibrate prints.
pub fn render(fit: &LadderFit) -> String {
    let mut s = format!(
        "{} questions; thresholds keep precision {:.3}\n\n{:<12} {:>8} {:>8} {:>12} {:>11} {:>8} {:>9} {:>7}\n",
        fit.questions, fit.precision, "tier", "answered", "accuracy", "AUROC before", "AUROC after", "AUROC cv", "threshold", "share"
    );
    for t in &fit.tiers {
        s += &format!(
            "{:<12} {:>8} {:>7.1}% {:>12} {:>11} {:>8} {:>9} {:>6.1}%\n",
            t.name,
            t.answered,
            t.accuracy * 100.0,
            pct(t.auroc_before),
            pct(t.auroc_after),
            pct(t.auroc_cv),
            pct(t.threshold),
            t.share * 100.0
        );
    }
    s += &format!(
        "\ncascade replayed with these values: accuracy {:.1}%, {:.1}% answered below the top tier\n",
        fit.cascade_accuracy * 100.0,
        fit.below_top * 100.0
    );
    s += &format!(
        "AUROC after is measured on the answers fitted on; AUROC cv scores each of {} folds with a fit on the others: expect that on new questions\n",
        xnai_model_router::calibrate::FOLDS
    );
    for t in &fit.tiers {
        for w in &t.warnings {
            s += &format!("warning: {}: {w}\n", t.name);
        }
    }
    s
}
