//! Measuring a ladder on the user's own questions, and fitting each tier's
//! confidence to it (`xnai-model-router calibrate`, `eval cascade`).
//!
//! - [`set`] reads calibration sets (questions with accepted answers).
//! - [`sweep`] asks every tier every question and scores the answers.
//! - this module fits each tier's calibration and the threshold that keeps
//!   a precision, and replays the cascade on the answers to say which tier
//!   would serve what ([`fit_ladder`]).
//! - [`write`] saves the fitted values as the config's calibration file,
//!   never leaving a half-written file.
//! - [`cascade`] runs a set through `route_query` for `eval cascade`.

pub mod cascade;
pub mod set;
pub mod sweep;
pub mod write;

use crate::cascade::start_tier;
use crate::classify::classify;
use crate::confidence::fit::{auroc, fit_answers, threshold_for_precision};
use crate::confidence::{Calibration, Features};
use crate::config::Config;
use serde::Serialize;
use set::Question;
use sweep::TierSweep;

/// One tier's calibration report.
#[derive(Debug, Clone, Serialize)]
pub struct TierFit {
    pub name: String,
    pub answered: usize,
    pub accuracy: f64,
    /// AUROC of the confidence under the calibration configured now.
    pub auroc_before: Option<f64>,
    /// AUROC under the fitted calibration (on the same answers it was
    /// fitted on: optimistic).
    pub auroc_after: Option<f64>,
    /// AUROC of the same kind of fit on answers it did not see: each fold
    /// of [`FOLDS`] scored by a calibration fitted on the others. What to
    /// expect on new questions.
    pub auroc_cv: Option<f64>,
    /// The fitted calibration and threshold; absent when the tier failed
    /// or its answers were all right or all wrong.
    pub calibration: Option<Calibration>,
    pub threshold: Option<f64>,
    /// Share of the set this tier would serve in the cascade.
    pub share: f64,
    /// Why it could not be calibrated, or what the user should know.
    pub warnings: Vec<String>,
}

/// The whole ladder's calibration.
#[derive(Debug, Clone, Serialize)]
pub struct LadderFit {
    pub questions: usize,
    /// The precision each threshold keeps among accepted answers.
    pub precision: f64,
    pub tiers: Vec<TierFit>,
    /// Accuracy of the cascade replayed with the fitted values.
    pub cascade_accuracy: f64,
    /// Share of questions the cascade would answer below the top tier.
    pub below_top: f64,
}

/// Fits every tier that answered the whole set. The precision defaults to
/// the best single tier's accuracy: accepted answers at any tier are then
/// right at least as often as the best tier alone.
pub fn fit_ladder(
    config: &Config,
    questions: &[Question],
    sweeps: &[TierSweep],
    precision: Option<f64>,
) -> LadderFit {
    let n = questions.len();
    let best = sweeps
        .iter()
        .filter(|s| s.complete(n))
        .map(TierSweep::accuracy)
        .fold(0.0, f64::max);
    let precision = precision.unwrap_or(best);
    let mut tiers: Vec<TierFit> = sweeps.iter().map(|s| fit_tier(s, n, precision)).collect();
    warn_weaker_than_below(&mut tiers, sweeps, n);
    let (served, cascade_accuracy) = replay(config, questions, sweeps, &tiers);
    for (t, count) in tiers.iter_mut().zip(&served) {
        t.share = *count as f64 / n.max(1) as f64;
    }
    let below = served[..served.len().saturating_sub(1)]
        .iter()
        .sum::<usize>();
    LadderFit {
        questions: n,
        precision,
        tiers,
        cascade_accuracy,
        below_top: below as f64 / n.max(1) as f64,
    }
}

/// One tier's fit, or why there is none.
fn fit_tier(s: &TierSweep, n: usize, precision: f64) -> TierFit {
    let labels: Vec<bool> = s.scored.iter().map(|a| a.right).collect();
    let before: Vec<f64> = s.scored.iter().map(|a| a.confidence).collect();
    let mut t = TierFit {
        name: s.name.clone(),
        answered: s.scored.len(),
        accuracy: s.accuracy(),
        auroc_before: auroc(&before, &labels),
        auroc_after: None,
        auroc_cv: None,
        calibration: None,
        threshold: None,
        share: 0.0,
        warnings: Vec::new(),
    };
    if let Some(e) = &s.error {
        t.warnings.push(format!(
            "failed after {} of {n} questions, not calibrated: {e}",
            s.scored.len()
        ));
        return t;
    }
    let features: Vec<_> = s.scored.iter().map(|a| a.features.clone()).collect();
    let Some(c) = fit_answers(&features, &labels) else {
        t.warnings.push(
            "its answers were all right or all wrong: nothing to fit, calibration unchanged".into(),
        );
        return t;
    };
    let after: Vec<f64> = s.scored.iter().map(|a| c.confidence(&a.features)).collect();
    t.auroc_after = auroc(&after, &labels);
    t.auroc_cv = cross_validated_auroc(&features, &labels);
    t.threshold = threshold_for_precision(&after, &labels, precision).or_else(|| {
        t.warnings.push(format!(
            "no threshold keeps precision {precision:.2}: it will pass every answer up"
        ));
        Some(1.0)
    });
    t.calibration = Some(c);
    t
}

/// Folds of [`TierFit::auroc_cv`].
pub const FOLDS: usize = 5;

/// The AUROC of answers each scored by a calibration fitted without its
/// fold (every [`FOLDS`]th answer); None for fewer than two answers a
/// fold, or a fold whose rest cannot be fitted.
fn cross_validated_auroc(features: &[Features], labels: &[bool]) -> Option<f64> {
    let n = features.len();
    if n < 2 * FOLDS {
        return None;
    }
    let mut scores = vec![0.0; n];
    for fold in 0..FOLDS {
        let (train, train_labels): (Vec<Features>, Vec<bool>) = (0..n)
            .filter(|i| i % FOLDS != fold)
            .map(|i| (features[i].clone(), labels[i]))
            .unzip();
        let c = fit_answers(&train, &train_labels)?;
        for i in (fold..n).step_by(FOLDS) {
            scores[i] = c.confidence(&features[i]);
        }
    }
    auroc(&scores, labels)
}

/// Warns about each tier less accurate than a complete tier below it.
fn warn_weaker_than_below(tiers: &mut [TierFit], sweeps: &[TierSweep], n: usize) {
    for i in 1..tiers.len() {
        if !sweeps[i].complete(n) {
            continue;
        }
        let below = (0..i)
            .filter(|&j| sweeps[j].complete(n))
            .max_by(|&a, &b| tiers[a].accuracy.total_cmp(&tiers[b].accuracy));
        if let Some(j) = below.filter(|&j| tiers[j].accuracy > tiers[i].accuracy) {
            let msg = format!(
                "less accurate ({:.0}%) than {} below it ({:.0}%): it does not pay its way on this set",
                tiers[i].accuracy * 100.0,
                tiers[j].name,
                tiers[j].accuracy * 100.0
            );
            tiers[i].warnings.push(msg);
        }
    }
}

/// Replays the cascade on the swept answers with the fitted values (the
/// configured ones where a tier has none): each question starts where the
/// classifier sends it and climbs while its answer's confidence is below
/// the tier's threshold. A greedy verified handoff ends on exactly the
/// upper tier's own answer, so the replay is what serving would do.
/// Returns the questions each tier serves, and the accuracy.
fn replay(
    config: &Config,
    questions: &[Question],
    sweeps: &[TierSweep],
    fits: &[TierFit],
) -> (Vec<usize>, f64) {
    let mut served = vec![0usize; sweeps.len()];
    let mut right = 0usize;
    for (qi, q) in questions.iter().enumerate() {
        let (start, _) = start_tier(config, &classify(&q.question), None);
        let mut last = None;
        let mut escalations = 0;
        for tier in start..sweeps.len() {
            let Some(a) = sweeps[tier].scored.get(qi) else {
                continue;
            };
            last = Some((tier, a.right));
            let t = &config.tiers[tier];
            let (cal, threshold) = match (&fits[tier].calibration, fits[tier].threshold) {
                (Some(c), Some(th)) => (c.clone(), th),
                _ => (t.calibration.clone(), t.threshold),
            };
            if cal.confidence(&a.features) >= threshold
                || escalations >= config.routing.max_escalations
            {
                break;
            }
            escalations += 1;
        }
        if let Some((tier, ok)) = last {
            served[tier] += 1;
            right += ok as usize;
        }
    }
    (served, right as f64 / questions.len().max(1) as f64)
}
