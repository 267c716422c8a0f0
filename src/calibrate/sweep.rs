//! Every tier alone on every question of a set, each answer scored.

use super::set::Question;
use crate::ask::{ask, AskOptions};
use crate::confidence::Features;
use crate::engine::Engine;
use crate::pool::TierPool;

/// One tier's answer to one question.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The question's line in its file.
    pub line: usize,
    pub answer: String,
    /// Whether the question's rule accepts the answer.
    pub right: bool,
    pub features: Features,
    /// The confidence under the tier's calibration as configured.
    pub confidence: f64,
    /// Prompt processing plus generation, in milliseconds.
    pub ms: f64,
}

/// One tier over the whole set; a tier that fails keeps the answers it
/// gave and the error that stopped it.
#[derive(Debug, Clone)]
pub struct TierSweep {
    pub tier: usize,
    pub name: String,
    pub scored: Vec<Scored>,
    pub error: Option<String>,
}

impl TierSweep {
    /// Whether it answered every question.
    pub fn complete(&self, questions: usize) -> bool {
        self.error.is_none() && self.scored.len() == questions
    }

    /// Share of its answers that are right.
    pub fn accuracy(&self) -> f64 {
        if self.scored.is_empty() {
            return 0.0;
        }
        self.scored.iter().filter(|s| s.right).count() as f64 / self.scored.len() as f64
    }
}

/// Asks every tier of `pool` every question (greedy, at most `max_tokens`
/// tokens each), one tier at a time so each loads once. `progress` hears
/// (tier, questions done) after each answer. A tier that fails is
/// reported in its sweep and the others go on.
pub async fn sweep<E: Engine>(
    pool: &TierPool<E>,
    questions: &[Question],
    max_tokens: u32,
    mut progress: impl FnMut(&str, usize),
) -> Vec<TierSweep> {
    let config = pool.config().clone();
    let mut out = Vec::new();
    for t in &config.tiers {
        let mut s = TierSweep {
            tier: t.index,
            name: t.name.clone(),
            scored: Vec::with_capacity(questions.len()),
            error: None,
        };
        let opts = AskOptions {
            tier: Some(t.name.clone()),
            max_tokens: Some(max_tokens),
            ..AskOptions::default()
        };
        for q in questions {
            match ask(pool, &q.question, &opts).await {
                Ok(r) => s.scored.push(Scored {
                    line: q.line,
                    right: q.rule.accepts(&r.answer),
                    answer: r.answer,
                    features: r.features,
                    confidence: r.confidence,
                    ms: r.prompt_ms + r.generate_ms,
                }),
                Err(e) => {
                    s.error = Some(e.to_string());
                    break;
                }
            }
            progress(&t.name, s.scored.len());
        }
        out.push(s);
    }
    out
}
