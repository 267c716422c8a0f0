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
        let _ = writeln!(
            out,
            "{:<3} {:<10} {:<7} {:>9.2} {:>7} {:>6} {:>11} {:>11} {:>11} {:>11}  {}{}",
            t.index,
            t.name,
            t.role.as_str(),
            t.threshold,
            t.context,
            t.max_tokens,
            ByteSize(t.cost.weights).to_string(),
            ByteSize(t.cost.kv_cache).to_string(),
            ByteSize(t.cost.compute).to_string(),
            ByteSize(t.cost.total).to_string(),
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
