//! What an answer's tokens say about it: the confidence features.

use crate::engine::{FinishReason, Generation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Floor for a token probability before its logarithm is taken.
const PROB_FLOOR: f64 = 1e-9;

/// An answer's confidence features, from its tokens' probabilities and the
/// entropy of each next-token distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
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
}

/// Entries in [`Features::vector`].
pub const N_FEATURES: usize = 7;

/// The names of [`Features::vector`]'s entries, as the calibration's keys.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "min_prob",
    "p10_prob",
    "p25_prob",
    "mean_logprob",
    "mean_entropy",
    "log_length",
    "stopped",
];

impl Features {
    /// The features of tokens with probabilities `probs` and next-token
    /// entropies `entropies` (missing entropies count as 0), ended by `finish`.
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
        }
    }

    /// The features of a generation.
    pub fn of_generation(g: &Generation) -> Self {
        Self::of(&g.token_probs, &g.token_entropies, g.finish)
    }

    /// The values the calibration weighs, in [`FEATURE_NAMES`]' order: the
    /// length enters as ln(1 + tokens), `stopped` as 0 or 1.
    pub fn vector(&self) -> [f64; N_FEATURES] {
        [
            self.min_prob,
            self.p10_prob,
            self.p25_prob,
            self.mean_logprob,
            self.mean_entropy,
            (1.0 + self.tokens as f64).ln(),
            if self.stopped { 1.0 } else { 0.0 },
        ]
    }
}

/// The nearest-rank `q` quantile of ascending `sorted` (not empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
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
}
