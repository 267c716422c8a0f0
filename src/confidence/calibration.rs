//! A tier's calibration: a logistic model from an answer's features to the
//! probability that the answer is right.

use super::features::{Features, N_FEATURES};
use super::state::StateProbe;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Coefficients of the logistic model
/// `confidence = 1 / (1 + exp(-(bias + sum of weight x feature)))`,
/// one weight per feature (see [`Features::vector`]). Fitted per tier by
/// `xnai-model-router calibrate`; a tier without one uses [`Calibration::DEFAULT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub bias: f64,
    /// Weight of the least probable token's probability.
    #[serde(default)]
    pub min_prob: f64,
    /// Weight of the 10th percentile token probability.
    #[serde(default)]
    pub p10_prob: f64,
    /// Weight of the 25th percentile token probability.
    #[serde(default)]
    pub p25_prob: f64,
    /// Weight of the mean log-probability.
    #[serde(default)]
    pub mean_logprob: f64,
    /// Weight of the mean next-token entropy (nats).
    #[serde(default)]
    pub mean_entropy: f64,
    /// Weight of ln(1 + answer tokens).
    #[serde(default)]
    pub log_length: f64,
    /// Weight of 1 when the model ended the answer itself, else 0.
    #[serde(default)]
    pub stopped: f64,
    /// Weight of the question's level, 0 (trivial) to 4 (expert).
    #[serde(default)]
    pub level: f64,
    /// Weights of the question's domain (general is the baseline).
    #[serde(default)]
    pub domain_code: f64,
    #[serde(default)]
    pub domain_math: f64,
    #[serde(default)]
    pub domain_creative: f64,
    #[serde(default)]
    pub domain_reasoning: f64,
    /// A linear read of the model's state after the prompt, added to the
    /// log-odds (see `confidence::state`); fitted by `calibrate` where the
    /// engine reads the tier's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateProbe>,
}

impl Calibration {
    /// The calibration of a tier that has none of its own: fitted by
    /// `calibrate` on the training split of `data/calibration/` (286
    /// questions) over the three tiers of the default ladder pooled
    /// together (858 answers, 5-fold cross-validated AUROC per tier
    /// 0.63-0.69). It trusts the least probable token most, and a math or
    /// creative question, or a harder level, lowers the odds. Calibrate
    /// your own tiers.
    pub const DEFAULT: Calibration = Calibration {
        bias: -1.564,
        min_prob: 8.621,
        p10_prob: -3.649,
        p25_prob: 0.216,
        mean_logprob: 1.384,
        mean_entropy: 0.137,
        log_length: 0.539,
        stopped: -0.27,
        level: -0.324,
        domain_code: 0.18,
        domain_math: -1.591,
        domain_creative: -0.883,
        domain_reasoning: 0.0,
        state: None,
    };

    /// The weights in [`Features::vector`]'s order.
    pub fn weights(&self) -> [f64; N_FEATURES] {
        [
            self.min_prob,
            self.p10_prob,
            self.p25_prob,
            self.mean_logprob,
            self.mean_entropy,
            self.log_length,
            self.stopped,
            self.level,
            self.domain_code,
            self.domain_math,
            self.domain_creative,
            self.domain_reasoning,
        ]
    }

    /// The calibration with `bias` and `weights` in [`Features::vector`]'s order.
    pub fn from_weights(bias: f64, w: [f64; N_FEATURES]) -> Self {
        Calibration {
            bias,
            min_prob: w[0],
            p10_prob: w[1],
            p25_prob: w[2],
            mean_logprob: w[3],
            mean_entropy: w[4],
            log_length: w[5],
            stopped: w[6],
            level: w[7],
            domain_code: w[8],
            domain_math: w[9],
            domain_creative: w[10],
            domain_reasoning: w[11],
            state: None,
        }
    }

    /// Whether every coefficient is a finite number.
    pub fn is_finite(&self) -> bool {
        self.bias.is_finite()
            && self.weights().iter().all(|w| w.is_finite())
            && self.state.as_ref().is_none_or(StateProbe::is_finite)
    }

    /// The probability that an answer with features `f` is right (its
    /// model's state read by the probe where there is one); an empty answer
    /// is never right.
    pub fn confidence(&self, f: &Features) -> f64 {
        if f.tokens == 0 {
            return 0.0;
        }
        sigmoid(self.score(&f.vector()) + self.state_read(f).unwrap_or(0.0))
    }

    /// What this calibration's state probe reads in `f`'s state, where it
    /// has a probe and `f` a state of the probe's width
    /// ([`Features::state_read`]).
    pub fn state_read(&self, f: &Features) -> Option<f64> {
        let (probe, state) = (self.state.as_ref()?, f.state.as_deref()?);
        (probe.weights.len() == state.len()).then(|| probe.read(Some(state)))
    }

    /// `f` with [`Features::state_read`] filled in, as results show it.
    pub fn annotate(&self, f: Features) -> Features {
        Features {
            state_read: self.state_read(&f),
            ..f
        }
    }

    /// The model's log-odds for feature vector `x`.
    pub fn score(&self, x: &[f64; N_FEATURES]) -> f64 {
        self.bias
            + self
                .weights()
                .iter()
                .zip(x)
                .map(|(w, v)| w * v)
                .sum::<f64>()
    }
}

impl Default for Calibration {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The logistic function, in (0, 1) for finite input.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FinishReason;

    #[test]
    fn weights_round_trip_in_feature_order() {
        let w: [f64; N_FEATURES] = std::array::from_fn(|i| i as f64 + 1.0);
        let c = Calibration::from_weights(-1.0, w);
        assert_eq!(c.weights(), w);
        assert_eq!(c.bias, -1.0);
        assert_eq!(c.log_length, 6.0);
        assert_eq!(c.domain_reasoning, 12.0);
    }

    #[test]
    fn confident_tokens_score_higher_than_unsure_ones() {
        let c = Calibration::DEFAULT;
        let sure = Features::of(&[0.95; 10], &[0.1; 10], FinishReason::EndOfText);
        let unsure = Features::of(&[0.3; 10], &[2.5; 10], FinishReason::EndOfText);
        let (a, b) = (c.confidence(&sure), c.confidence(&unsure));
        assert!(a > b && (0.0..1.0).contains(&b) && a < 1.0, "{a} {b}");
        let empty = Features::of(&[], &[], FinishReason::EndOfText);
        assert_eq!(c.confidence(&empty), 0.0);
    }

    #[test]
    fn a_state_probe_moves_the_log_odds_by_its_read() {
        let plain = Calibration::DEFAULT;
        let probed = Calibration {
            state: Some(StateProbe {
                weights: vec![1.0, -2.0],
                center: 0.5,
            }),
            ..Calibration::DEFAULT
        };
        let f = Features::of(&[0.6; 5], &[0.5; 5], FinishReason::EndOfText);
        let with_state = Features {
            state: Some(std::sync::Arc::from(&[3.0f32, 1.0][..])),
            ..f.clone()
        };
        // 3 - 2 - 0.5 = 0.5 more log-odds.
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let moved = logit(probed.confidence(&with_state)) - logit(plain.confidence(&with_state));
        assert!((moved - 0.5).abs() < 1e-9, "{moved}");
        assert_eq!(probed.annotate(with_state).state_read, Some(0.5));
        // No state, or one of another width: the average prompt, no read.
        assert_eq!(probed.confidence(&f), plain.confidence(&f));
        assert_eq!(probed.annotate(f.clone()).state_read, None);
        let wide = Features {
            state: Some(std::sync::Arc::from(&[1.0f32, 1.0, 1.0][..])),
            ..f
        };
        assert_eq!(probed.confidence(&wide), plain.confidence(&wide));
        assert_eq!(probed.state_read(&wide), None);
        assert_eq!(plain.state_read(&wide), None);
    }

    #[test]
    fn sigmoid_is_stable_at_the_extremes() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(1000.0) <= 1.0 && sigmoid(-1000.0) >= 0.0);
        assert!(sigmoid(-1000.0).is_finite());
    }

    #[test]
    fn missing_weights_default_to_zero_and_unknown_keys_are_refused() {
        let c: Calibration = serde_json::from_str(r#"{"bias": 0.5, "min_prob": 2}"#).unwrap();
        assert_eq!((c.bias, c.min_prob, c.stopped), (0.5, 2.0, 0.0));
        let bad = serde_json::from_str::<Calibration>(r#"{"bias": 0, "minprob": 1}"#);
        assert!(bad.unwrap_err().to_string().contains("minprob"));
    }
}
