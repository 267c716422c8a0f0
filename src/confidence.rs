//! Confidence of an answer, from the probabilities of its tokens.
//!
//! confidence = G^0.7 x W^0.3, where
//! - G is the geometric mean of all token probabilities (exp of the mean
//!   log-probability): how sure the model was on average;
//! - W is the geometric mean over the weakest run of 8 consecutive tokens
//!   (the whole answer when shorter): one confused stretch, a made-up name or
//!   number, drags the answer down even when the rest is fluent.
//!
//! Both are in (0, 1], so the confidence is too; an empty answer has 0.

/// Tokens in the window for the weakest stretch.
pub const WINDOW: usize = 8;
/// Weight of the weakest stretch against the whole answer.
pub const WEAKEST_WEIGHT: f64 = 0.3;

/// The confidence of an answer whose tokens had probabilities `probs`.
pub fn confidence(probs: &[f32]) -> f64 {
    if probs.is_empty() {
        return 0.0;
    }
    let logs: Vec<f64> = probs
        .iter()
        .map(|&p| (p as f64).clamp(1e-12, 1.0).ln())
        .collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    let w = WINDOW.min(logs.len());
    let mut sum: f64 = logs[..w].iter().sum();
    let mut weakest = sum;
    for i in w..logs.len() {
        sum += logs[i] - logs[i - w];
        weakest = weakest.min(sum);
    }
    let weakest_mean = weakest / w as f64;
    ((1.0 - WEAKEST_WEIGHT) * mean + WEAKEST_WEIGHT * weakest_mean)
        .exp()
        .clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_answers_score_one_and_empty_zero() {
        assert!((confidence(&[1.0; 20]) - 1.0).abs() < 1e-12);
        assert_eq!(confidence(&[]), 0.0);
    }

    #[test]
    fn uniform_probability_is_its_own_confidence() {
        assert!((confidence(&[0.5; 30]) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_weak_stretch_lowers_confidence_more_than_its_share() {
        let mut probs = vec![0.95f32; 100];
        for p in &mut probs[40..48] {
            *p = 0.05;
        }
        let c = confidence(&probs);
        let geo = (probs.iter().map(|&p| (p as f64).ln()).sum::<f64>() / 100.0).exp();
        assert!(c < geo, "{c} vs geometric mean {geo}");
        assert!(c > 0.0 && c < 1.0);
    }

    #[test]
    fn always_in_unit_interval() {
        for probs in [
            vec![1e-30f32; 3],
            vec![0.3, 1.0, 0.0],
            vec![f32::MIN_POSITIVE],
        ] {
            let c = confidence(&probs);
            assert!((0.0..=1.0).contains(&c), "{c}");
        }
    }
}
