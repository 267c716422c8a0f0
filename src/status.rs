//! The ladder with its costs, as a text table for `status`.

use crate::config::{ByteSize, Config};
use crate::pool::PoolStatus;
use std::fmt::Write;

/// Renders the ladder: each tier's model, context, threshold and estimated
/// cost by part, then the budget, and what is resident if `pool` is given.
pub fn render(config: &Config, pool: Option<&PoolStatus>) -> String {
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
    if let Some(p) = pool {
        let names: Vec<&str> = p.resident.iter().map(|r| r.tier.as_str()).collect();
        let _ = writeln!(
            out,
            "resident: [{}] estimated {}, process RSS {}",
            names.join(", "),
            ByteSize(p.estimated_bytes),
            ByteSize(p.process_rss)
        );
    }
    out
}
