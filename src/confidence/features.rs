//! What an answer's tokens say about it, and what kind of question it
//! answers: the confidence features.

use crate::classify::{Complexity, Domain, Level};
use crate::engine::{FinishReason, Generation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Floor for a token probability before its logarithm is taken.
const PROB_FLOOR: f64 = 1e-9;

/// An answer's confidence features: from its tokens' probabilities and the
/// entropy of each next-token distribution, and the classifier's verdict
/// on the question (a small model's answers to arithmetic are wrong far
/// more often than its answers to look-ups, however sure its tokens are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Features {
    /// The least probable token's probability.
    pub min_prob: f64,
    /// 10th percentile of the token probabilities (nearest rank).
    pub p10_prob: f64,
    /// 25th percentile of the token probabilities.
    pub p25_prob: f64,
    /// Mean natural log of the token probabilities.
    pub mean_logprob: f64,
    /// Mean entropy of the next-token distributions, in nats.
    pub mean_entropy: f64,
    /// Tokens in the answer.
    pub tokens: u32,
    /// The model ended the answer itself (end of text or a stop string),
    /// rather than running out of tokens or context.
    pub stopped: bool,
    /// The question's complexity level and domain, as classified.
    pub level: Level,
    pub domain: Domain,
    /// The model's state after the prompt, where the engine read it: what
    /// a calibration's state probe reads (see `confidence::state`). Not
    /// shown: a vector of the model's width.
    #[serde(skip)]
    #[schemars(skip)]
    pub state: Option<Arc<[f32]>>,
    /// What the tier's state probe read in that state, in log-odds added
    /// to the confidence's (0: an average prompt; above: a question the
    /// model is likelier to know); absent without a probe or a state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_read: Option<f64>,
}

/// Entries in [`Features::vector`].
pub const N_FEATURES: usize = 12;

/// The names of [`Features::vector`]'s entries, as the calibration's keys.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "min_prob",
    "p10_prob",
    "p25_prob",
    "mean_logprob",
    "mean_entropy",
    "log_length",
    "stopped",
    "level",
    "domain_code",
    "domain_math",
    "domain_creative",
    "domain_reasoning",
];

impl Features {
    /// The features of tokens with probabilities `probs` and next-token
    /// entropies `entropies` (missing entropies count as 0), ended by
    /// `finish`, for a question not yet classified (trivial, general: see
    /// [`Features::for_query`]).
    pub fn of(probs: &[f32], entropies: &[f32], finish: FinishReason) -> Self {
        let stopped = matches!(finish, FinishReason::EndOfText | FinishReason::StopString);
        if probs.is_empty() {
            return Features {
                min_prob: 0.0,
                p10_prob: 0.0,
                p25_prob: 0.0,
                mean_logprob: PROB_FLOOR.ln(),
                mean_entropy: 0.0,
                tokens: 0,
                stopped,
                level: Level::Trivial,
                domain: Domain::General,
                state: None,
                state_read: None,
            };
        }
        let mut sorted: Vec<f64> = probs.iter().map(|&p| (p as f64).clamp(0.0, 1.0)).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean_logprob = sorted.iter().map(|p| p.max(PROB_FLOOR).ln()).sum::<f64>() / n;
        let mean_entropy = entropies.iter().map(|&h| h.max(0.0) as f64).sum::<f64>() / n;
        Features {
            min_prob: sorted[0],
            p10_prob: percentile(&sorted, 0.10),
            p25_prob: percentile(&sorted, 0.25),
            mean_logprob,
            mean_entropy,
            tokens: probs.len() as u32,
            stopped,
            level: Level::Trivial,
            domain: Domain::General,
            state: None,
            state_read: None,
        }
    }

    /// The same answer's features for a question classified as `c`.
    pub fn for_query(self, c: &Complexity) -> Self {
        Features {
            level: c.level,
            domain: c.domain,
            ..self
        }
    }

    /// The features of a generation, with the model's state after its
    /// prompt where the engine read it.
    pub fn of_generation(g: &Generation) -> Self {
        Features {
            state: g.prompt_state.as_deref().map(Arc::from),
            ..Self::of(&g.token_probs, &g.token_entropies, g.finish)
        }
    }

    /// The values the calibration weighs, in [`FEATURE_NAMES`]' order: the
    /// length enters as ln(1 + tokens), `stopped` as 0 or 1, the level as
    /// 0 (trivial) to 4 (expert), the domain as one indicator per domain
    /// but general.
    pub fn vector(&self) -> [f64; N_FEATURES] {
        [
            self.min_prob,
            self.p10_prob,
            self.p25_prob,
            self.mean_logprob,
            self.mean_entropy,
            (1.0 + self.tokens as f64).ln(),
            indicator(self.stopped),
            self.level.index() as f64,
            indicator(self.domain == Domain::Code),
            indicator(self.domain == Domain::Math),
            indicator(self.domain == Domain::Creative),
            indicator(self.domain == Domain::Reasoning),
        ]
    }
}

fn indicator(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The nearest-rank `q` quantile of ascending `sorted` (not empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_the_weakest_tokens() {
        let probs: Vec<f32> = (1..=20).map(|i| i as f32 / 20.0).collect();
        let f = Features::of(&probs, &[1.0; 20], FinishReason::EndOfText);
        assert!((f.min_prob - 0.05).abs() < 1e-6);
        assert!((f.p10_prob - 0.10).abs() < 1e-6, "{}", f.p10_prob);
        assert!((f.p25_prob - 0.25).abs() < 1e-6, "{}", f.p25_prob);
        assert!((f.mean_entropy - 1.0).abs() < 1e-9);
        assert_eq!(f.tokens, 20);
        assert!(f.stopped);
        let mean: f64 = probs.iter().map(|&p| (p as f64).ln()).sum::<f64>() / 20.0;
        assert!((f.mean_logprob - mean).abs() < 1e-6);
    }

    #[test]
    fn only_a_natural_end_counts_as_stopped() {
        for (finish, stopped) in [
            (FinishReason::EndOfText, true),
            (FinishReason::StopString, true),
            (FinishReason::Length, false),
            (FinishReason::ContextFull, false),
            (FinishReason::Cancelled, false),
        ] {
            assert_eq!(Features::of(&[0.5], &[], finish).stopped, stopped);
        }
    }

    #[test]
    fn an_empty_answer_has_the_weakest_features() {
        let f = Features::of(&[], &[], FinishReason::EndOfText);
        assert_eq!((f.min_prob, f.tokens), (0.0, 0));
        assert!(f.mean_logprob < -20.0);
        assert_eq!(f.vector()[5], 0.0);
    }

    #[test]
    fn a_single_token_is_every_quantile() {
        let f = Features::of(&[0.3], &[0.2], FinishReason::Length);
        assert!((f.min_prob - 0.3).abs() < 1e-6);
        assert_eq!(f.min_prob, f.p10_prob);
        assert_eq!(f.p10_prob, f.p25_prob);
        assert_eq!(f.vector()[6], 0.0);
    }

    #[test]
    fn the_question_enters_as_its_level_and_domain() {
        let c = crate::classify::classify("What is 1234 times 5678? Show the steps.");
        let f = Features::of(&[0.9], &[0.1], FinishReason::EndOfText).for_query(&c);
        let v = f.vector();
        assert_eq!(v[7], c.level.index() as f64);
        let hot: Vec<usize> = (8..12).filter(|&i| v[i] == 1.0).collect();
        match c.domain {
            Domain::General => assert!(hot.is_empty()),
            d => assert_eq!(hot.len(), 1, "{d:?}"),
        }
        assert_eq!(FEATURE_NAMES.len(), v.len());
    }
}
