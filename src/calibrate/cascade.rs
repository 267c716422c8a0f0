//! `eval cascade`: a set through `route_query` against each tier alone, as
//! one table of accuracy retained against cost saved.

use super::set::Question;
use super::sweep::{sweep, TierSweep};
use crate::activity::Call;
use crate::confidence::fit::auroc;
use crate::engine::Engine;
use crate::router::report::HandoffOutcome;
use crate::router::{RouteRequest, Router};
use serde::Serialize;

/// One question through route_query.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    pub line: usize,
    pub tier: String,
    pub right: bool,
    pub confidence: f64,
    /// Wall time of the call, queueing and loading included.
    pub latency_ms: f64,
    /// Model time of all its attempts (prompt processing and generation).
    pub model_ms: f64,
    /// Handoffs verified (the lower answer kept whole) and corrected.
    pub verified: u32,
    pub corrected: u32,
    /// Time of the upper attempts whose handoff was verified (prompt,
    /// verification and the rest), and of their verification passes.
    pub verified_attempt_ms: f64,
    pub verify_ms: f64,
    pub error: Option<String>,
}

/// A row of the table: one tier alone, or the cascade.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub answered: usize,
    pub accuracy: f64,
    /// AUROC of the reported confidence for right against wrong answers.
    pub auroc: Option<f64>,
    /// Share of the set served by this tier through route_query.
    pub share: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    /// Model-seconds spent on the whole set.
    pub model_s: f64,
}

/// The evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeEval {
    pub questions: usize,
    pub tiers: Vec<Row>,
    pub cascade: Row,
    /// Accuracy through route_query over the best single tier's.
    pub accuracy_retained: f64,
    /// 1 - the cascade's model-seconds over the top tier's alone.
    pub cost_saved: f64,
    /// Share answered below the top tier.
    pub below_top: f64,
    pub verified: u32,
    pub corrected: u32,
    /// Mean time of a verified escalation's upper attempt, against the
    /// upper tier generating the same answer alone (the same questions).
    pub verified_ms: Option<f64>,
    pub regenerate_ms: Option<f64>,
    pub routed: Vec<Routed>,
    pub failed_tiers: Vec<String>,
}

/// Runs `questions` through each tier alone (greedy, `max_tokens`) and
/// then through `router.route`, with `progress` hearing each step.
pub async fn evaluate<E: Engine>(
    router: &Router<E>,
    questions: &[Question],
    max_tokens: u32,
    mut progress: impl FnMut(&str, usize),
) -> CascadeEval {
    let sweeps = sweep(router.pool(), questions, max_tokens, &mut progress).await;
    let mut routed = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        routed.push(route_one(router, q, max_tokens).await);
        progress("route_query", i + 1);
    }
    summarise(router, questions.len(), &sweeps, routed)
}

async fn route_one<E: Engine>(router: &Router<E>, q: &Question, max_tokens: u32) -> Routed {
    let req = RouteRequest {
        query: q.question.clone(),
        max_tokens: Some(max_tokens),
        ..RouteRequest::default()
    };
    let started = std::time::Instant::now();
    let result = router.route(req, &Call::default()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(r) => {
            let (mut verified, mut corrected) = (0, 0);
            let (mut verify_ms, mut verified_attempt_ms) = (0.0, 0.0);
            for a in &r.attempts {
                let Some(h) = &a.handoff else { continue };
                verify_ms += h.verify_ms;
                if h.outcome == HandoffOutcome::Verified {
                    verified += 1;
                    verified_attempt_ms += a.generate_ms;
                } else {
                    corrected += 1;
                }
            }
            Routed {
                line: q.line,
                right: q.rule.accepts(&r.answer),
                tier: r.tier,
                confidence: r.confidence,
                latency_ms,
                model_ms: r.attempts.iter().map(|a| a.generate_ms).sum(),
                verified,
                corrected,
                verified_attempt_ms,
                verify_ms,
                error: None,
            }
        }
        Err(e) => Routed {
            line: q.line,
            tier: String::new(),
            right: false,
            confidence: 0.0,
            latency_ms,
            model_ms: 0.0,
            verified: 0,
            corrected: 0,
            verified_attempt_ms: 0.0,
            verify_ms: 0.0,
            error: Some(e.to_string()),
        },
    }
}

/// The `q` quantile of `xs` (nearest rank); 0 when empty.
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    crate::confidence::features::percentile(&v, q)
}

fn summarise<E: Engine>(
    router: &Router<E>,
    n: usize,
    sweeps: &[TierSweep],
    routed: Vec<Routed>,
) -> CascadeEval {
    let names: Vec<&str> = router
        .config()
        .tiers
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let served = |name: &str| routed.iter().filter(|r| r.tier == name).count();
    let tiers: Vec<Row> = sweeps
        .iter()
        .map(|s| {
            let ms: Vec<f64> = s.scored.iter().map(|a| a.ms).collect();
            let conf: Vec<f64> = s.scored.iter().map(|a| a.confidence).collect();
            let right: Vec<bool> = s.scored.iter().map(|a| a.right).collect();
            Row {
                name: s.name.clone(),
                answered: s.scored.len(),
                accuracy: s.accuracy(),
                auroc: auroc(&conf, &right),
                share: served(&s.name) as f64 / n.max(1) as f64,
                latency_p50_ms: quantile(&ms, 0.5),
                latency_p90_ms: quantile(&ms, 0.9),
                model_s: ms.iter().sum::<f64>() / 1e3,
            }
        })
        .collect();
    let ok: Vec<&Routed> = routed.iter().filter(|r| r.error.is_none()).collect();
    let lat: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
    let conf: Vec<f64> = ok.iter().map(|r| r.confidence).collect();
    let right: Vec<bool> = ok.iter().map(|r| r.right).collect();
    let cascade = Row {
        name: "route_query".into(),
        answered: ok.len(),
        accuracy: right.iter().filter(|&&r| r).count() as f64 / n.max(1) as f64,
        auroc: auroc(&conf, &right),
        share: ok.len() as f64 / n.max(1) as f64,
        latency_p50_ms: quantile(&lat, 0.5),
        latency_p90_ms: quantile(&lat, 0.9),
        model_s: ok.iter().map(|r| r.model_ms).sum::<f64>() / 1e3,
    };
    let complete: Vec<&Row> = tiers.iter().filter(|t| t.answered == n).collect();
    let best = complete.iter().map(|t| t.accuracy).fold(0.0, f64::max);
    let top = tiers.last().filter(|t| t.answered == n);
    let top_name = names.last().copied().unwrap_or_default();
    let (verified_ms, regenerate_ms) = verified_against_regenerated(&routed, sweeps);
    CascadeEval {
        questions: n,
        accuracy_retained: if best > 0.0 {
            cascade.accuracy / best
        } else {
            0.0
        },
        cost_saved: top.map_or(0.0, |t| 1.0 - cascade.model_s / t.model_s.max(1e-9)),
        below_top: ok.iter().filter(|r| r.tier != top_name).count() as f64 / n.max(1) as f64,
        verified: routed.iter().map(|r| r.verified).sum(),
        corrected: routed.iter().map(|r| r.corrected).sum(),
        verified_ms,
        regenerate_ms,
        failed_tiers: sweeps
            .iter()
            .filter(|s| s.error.is_some())
            .map(|s| s.name.clone())
            .collect(),
        tiers,
        cascade,
        routed,
    }
}

/// For calls whose every handoff was verified: the mean time of the
/// verifying attempt, and the mean time the serving tier took to generate
/// that question's answer alone.
fn verified_against_regenerated(
    routed: &[Routed],
    sweeps: &[TierSweep],
) -> (Option<f64>, Option<f64>) {
    let mut pairs = Vec::new();
    for r in routed.iter().filter(|r| r.verified > 0 && r.corrected == 0) {
        let alone = sweeps
            .iter()
            .find(|s| s.name == r.tier)
            .and_then(|s| s.scored.iter().find(|a| a.line == r.line));
        if let Some(a) = alone {
            pairs.push((r.verified_attempt_ms / r.verified as f64, a.ms));
        }
    }
    if pairs.is_empty() {
        return (None, None);
    }
    let k = pairs.len() as f64;
    (
        Some(pairs.iter().map(|p| p.0).sum::<f64>() / k),
        Some(pairs.iter().map(|p| p.1).sum::<f64>() / k),
    )
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&xs, 0.5), 3.0);
        assert_eq!(quantile(&xs, 0.9), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
