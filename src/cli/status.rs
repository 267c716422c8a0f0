//! The ladder with its costs, as a text table for `status` and `config check`.

use std::fmt::Write;
use xnai_model_router::config::{ByteSize, Config};

/// Renders the ladder: the budget, then each tier's model, context,
/// threshold and estimated cost by part.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    let m = &config.memory;
    let _ = writeln!(
        out,
        "ladder {} — budget {}, reserve {}, models may use {}, at most {} resident{}",
        config.source.display(),
        m.budget,
        m.reserve,
        ByteSize(m.model_allowance()),
        m.max_loaded,
        if m.preload_next { ", preload next" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:<3} {:<10} {:<7} {:>9} {:>7} {:>6} {:>11} {:>11} {:>11} {:>11}  model",
        "#",
        "tier",
        "role",
        "threshold",
        "context",
        "max",
        "weights",
        "kv cache",
        "compute",
        "total"
    );
    for t in &config.tiers {
        let draft = t
            .draft
            .map(|d| format!(" (draft: {})", config.tiers[d].name))
            .unwrap_or_default();
        // A remote tier's model is on its workers' machines: no costs here.
        let cost = |bytes: u64| {
            if t.remote {
                "-".to_string()
            } else {
                ByteSize(bytes).to_string()
            }
        };
        let remote = if t.remote { "remote: " } else { "" };
        let _ = writeln!(
            out,
            "{:<3} {:<10} {:<7} {:>9.2} {:>7} {:>6} {:>11} {:>11} {:>11} {:>11}  {remote}{}{}",
            t.index,
            t.name,
            t.role.as_str(),
            t.threshold,
            t.context,
            t.max_tokens,
            cost(t.cost.weights),
            cost(t.cost.kv_cache),
            cost(t.cost.compute),
            cost(t.cost.total),
            t.model.display(),
            draft
        );
    }
    out
}
