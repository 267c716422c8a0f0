//! The hidden `probe-model` subcommand a probe child runs, and
//! `config check --probe`, which probes every local tier's file up front.

use std::path::Path;
use xnai_model_router::config::Config;
use xnai_model_router::engine::llama::probe_here;
use xnai_model_router::probe::{Outcome, Prober};

/// The child's work: load `path`, decode a few tokens, print the facts as
/// one JSON line on stdout. A failure is an error (exit status 1 and the
/// cause on stderr); an abort inside llama.cpp ends the child, which is
/// what it is for.
pub fn child(path: &Path, threads: u32) -> anyhow::Result<()> {
    let facts = probe_here(path, threads)?;
    println!("{}", serde_json::to_string(&facts)?);
    Ok(())
}

/// Probes each local tier's file (cached verdicts included) and prints a
/// verdict per tier. True when every file is good.
pub fn check_all(config: &Config) -> anyhow::Result<bool> {
    let exe = std::env::current_exe()?;
    let prober = Prober::new(exe, config.probe.dir.clone());
    let mut all_good = true;
    for tier in config.tiers.iter().filter(|t| !t.remote) {
        let checked = prober.check(&tier.model, tier.threads);
        let how = if checked.cached {
            "verdict kept from an earlier probe".to_string()
        } else {
            format!("probed in {:.0} ms", checked.verdict.probe_ms)
        };
        match &checked.verdict.outcome {
            Outcome::Ok { facts } => println!(
                "probe {}: ok ({how}; load {:.0} ms, {} tokens decoded, vocabulary {}, trained context {}) {}",
                tier.name,
                facts.load_ms,
                facts.decoded_tokens,
                facts.n_vocab,
                facts.n_ctx_train,
                tier.model.display()
            ),
            Outcome::Failed { cause } => {
                all_good = false;
                println!(
                    "probe {}: FAILED ({how}) {}: {cause}",
                    tier.name,
                    tier.model.display()
                );
            }
        }
    }
    Ok(all_good)
}
