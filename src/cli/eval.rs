//! `eval routing --set FILE.jsonl`: the classifier on any labeled file,
//! against the lexical scorer on the same file. `eval cascade --set
//! FILE.jsonl`: questions with accepted answers through route_query
//! against each tier alone.

use super::{load_config, runtime};
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xnai_model_router::calibrate::cascade::{evaluate, CascadeEval, Row};
use xnai_model_router::calibrate::set;
use xnai_model_router::classify::assist::Assist;
use xnai_model_router::classify::{self, bank, eval};
use xnai_model_router::router::{start_assist, Router};

#[derive(Subcommand)]
pub enum EvalCmd {
    /// Level and domain accuracy, the confusion matrix and classify latency
    /// on a labeled JSONL file (query, level, domain per line).
    Routing {
        #[arg(long)]
        set: PathBuf,
        /// The classifier to measure.
        #[arg(long, value_enum, default_value_t = Which::Assisted)]
        method: Which,
        /// Also list every query whose level or domain was missed.
        #[arg(long)]
        misses: bool,
        /// Instead, K-fold cross-validate a model trained on the file
        /// itself (how well the method learns these examples).
        #[arg(long, value_name = "K")]
        cv: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Accuracy through route_query and of each tier alone, share served
    /// per tier, AUROC of the reported confidence, latency and model cost,
    /// on questions with accepted answers (the calibrate format).
    Cascade {
        #[arg(long)]
        set: PathBuf,
        /// Most tokens per answer.
        #[arg(long, default_value_t = 32)]
        max_tokens: u32,
        /// Also list every question with its tier and whether it was right.
        #[arg(long)]
        each: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    /// The default: the model trained on the built-in bank, with the
    /// smallest tier's embeddings where it is unsure of the domain, as
    /// route_query classifies (the config's first tier; without it, the
    /// learned model alone, said on stderr).
    Assisted,
    /// The model trained on the built-in bank alone (the default path).
    Learned,
    /// The cue-word scorer alone.
    Lexical,
}

pub fn run(config_path: &Path, cmd: EvalCmd) -> anyhow::Result<()> {
    match cmd {
        EvalCmd::Routing {
            set,
            method,
            misses,
            cv,
            json,
        } => routing(config_path, set, method, misses, cv, json),
        EvalCmd::Cascade {
            set,
            max_tokens,
            each,
            json,
        } => cascade(config_path, &set, max_tokens, each, json),
    }
}

fn routing(
    config_path: &Path,
    set: PathBuf,
    method: Which,
    misses: bool,
    cv: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let examples = bank::load(&set)?;
    anyhow::ensure!(!examples.is_empty(), "{} has no examples", set.display());
    let report = match (cv, method) {
        (Some(k), _) => eval::cross_validate(&examples, k),
        (None, method) => match method {
            Which::Learned => {
                // Train before timing, as a server does at its first query.
                let _ = classify::classify("warm up");
                eval::evaluate(&examples, classify::classify)
            }
            Which::Assisted => {
                let _ = classify::classify("warm up");
                match ready_assist(config_path) {
                    Ok(assist) => eval::evaluate_with(
                        &examples,
                        |q| {
                            let mut c = classify::classify(q);
                            assist.refine(q, &mut c);
                            c
                        },
                        true,
                    ),
                    Err(why) => {
                        eprintln!("eval routing: model-assisted domain off ({why}); the learned model alone");
                        eval::evaluate(&examples, classify::classify)
                    }
                }
            }
            Which::Lexical => eval::evaluate(&examples, classify::lexical::classify),
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print!("{}", report.render());
    if misses {
        println!();
        for m in &report.misses {
            let level = format!("{} -> {}", m.labeled.as_str(), m.predicted.as_str());
            let domain = format!(
                "{} -> {}",
                m.labeled_domain.as_str(),
                m.predicted_domain.as_str()
            );
            let shown = |same: bool, s: String| if same { String::new() } else { s };
            println!(
                "{:<20} {:<22} {}",
                shown(m.labeled == m.predicted, level),
                shown(m.labeled_domain == m.predicted_domain, domain),
                m.query
            );
        }
    }
    Ok(())
}

/// The model-assisted domain on the config's first tier, once the bank is
/// embedded (progress on stderr), or why it is off.
fn ready_assist(config_path: &Path) -> Result<Arc<Assist>, String> {
    let config = load_config(config_path).map_err(|e| format!("{e:#}"))?;
    let engine = super::engine(&config).map_err(|e| format!("{e:#}"))?;
    let assist = start_assist(&engine, &config);
    let model = config
        .tiers
        .first()
        .map(|t| format!("{} with {}", t.model.display(), t.name))
        .unwrap_or_default();
    let mut shown = String::new();
    while !assist.wait(std::time::Duration::from_secs(5)) {
        let s = assist.status();
        if s.state == "off" {
            return Err(s.detail);
        }
        let line = format!("{} {}", s.state, s.detail);
        if line != shown {
            eprintln!("eval routing: {model}: {line}");
            shown = line;
        }
    }
    Ok(assist)
}

fn cascade(
    config_path: &Path,
    set_path: &Path,
    max_tokens: u32,
    each: bool,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(max_tokens > 0, "--max-tokens must be at least 1");
    let questions = set::load(set_path)?;
    let mut config = load_config(config_path)?;
    // An evaluation never teaches the user's classifier.
    config.routing.learning.enabled = false;
    let router = Router::new(super::engine(&config)?, Arc::new(config));
    let total = questions.len();
    eprintln!("eval cascade: {total} questions, each tier alone, then route_query");
    let report = runtime()?.block_on(evaluate(&router, &questions, max_tokens, |step, done| {
        if done % 25 == 0 || done == total {
            eprintln!("  {step}: {done}/{total}");
        }
    }));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print!("{}", render(&report));
    if each {
        println!();
        for r in &report.routed {
            let q = &questions
                .iter()
                .find(|q| q.line == r.line)
                .expect("routed from the set")
                .question;
            let mark = if r.right { "right" } else { "wrong" };
            println!("{:<10} {:<6} {:.2}  {q}", r.tier, mark, r.confidence);
        }
    }
    Ok(())
}

fn row(r: &Row) -> String {
    format!(
        "{:<12} {:>7.1}% {:>6} {:>7.1}% {:>9.0} {:>9.0} {:>9.1}\n",
        r.name,
        r.accuracy * 100.0,
        r.auroc.map_or_else(|| "-".into(), |a| format!("{a:.2}")),
        r.share * 100.0,
        r.latency_p50_ms,
        r.latency_p90_ms,
        r.model_s
    )
}

/// The table eval cascade prints.
fn render(e: &CascadeEval) -> String {
    let mut s = format!(
        "{} questions\n\n{:<12} {:>8} {:>6} {:>8} {:>9} {:>9} {:>9}\n",
        e.questions, "", "accuracy", "AUROC", "served", "p50 ms", "p90 ms", "model s"
    );
    for t in &e.tiers {
        s += &row(t);
    }
    s += &row(&e.cascade);
    s += &format!(
        "\nroute_query keeps {:.1}% of the best tier's accuracy at {:.1}% less model time than the top tier alone; {:.1}% answered below the top tier\n",
        e.accuracy_retained * 100.0,
        e.cost_saved * 100.0,
        e.below_top * 100.0
    );
    s += &format!(
        "handoffs: {} verified, {} corrected",
        e.verified, e.corrected
    );
    if let (Some(v), Some(g)) = (e.verified_ms, e.regenerate_ms) {
        s += &format!(
            "; a verified escalation took {v:.0} ms against {g:.0} ms to regenerate ({:.2}x)",
            v / g.max(1e-9)
        );
    }
    s += "\n";
    for t in &e.failed_tiers {
        s += &format!("warning: tier {t} failed during the run; its row is partial\n");
    }
    s
}
