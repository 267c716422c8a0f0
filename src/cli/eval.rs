//! `eval routing --set FILE.jsonl`: the classifier on any labeled file,
//! against the lexical scorer on the same file.

use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use xnai_model_router::classify::{self, bank, eval};

#[derive(Subcommand)]
pub enum EvalCmd {
    /// Level and domain accuracy, the confusion matrix and classify latency
    /// on a labeled JSONL file (query, level, domain per line).
    Routing {
        #[arg(long)]
        set: PathBuf,
        /// The classifier to measure.
        #[arg(long, value_enum, default_value_t = Which::Learned)]
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
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    /// The default: the model trained on the built-in bank.
    Learned,
    /// The cue-word scorer alone.
    Lexical,
}

pub fn run(cmd: EvalCmd) -> anyhow::Result<()> {
    let EvalCmd::Routing {
        set,
        method,
        misses,
        cv,
        json,
    } = cmd;
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
