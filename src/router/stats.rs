//! Per-tier statistics for get_tier_status: every attempt, whatever its
//! end (answered, escalated, cancelled, failed), goes through
//! [`TierStats::record`].

use crate::engine::SpecStats;

/// What one attempt spent on a tier.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent<'a> {
    /// Load, queue and generation time.
    pub latency_ms: f64,
    pub tokens: u32,
    /// Generation time alone (no prompt processing), for tokens/s.
    pub generate_ms: f64,
    pub speculative: Option<&'a SpecStats>,
    /// The attempt escalated to the next tier.
    pub escalated: bool,
    /// Prompt tokens, and those reused from a cache instead of computed.
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    /// Mean requests decoded together with it (0 when nothing was generated).
    pub batch_width: f64,
}

impl Spent<'_> {
    /// An attempt that failed before generating: it counts, costs nothing.
    pub fn nothing() -> Self {
        Spent::default()
    }
}

/// One tier's totals.
#[derive(Debug, Clone, Default)]
pub struct TierStats {
    pub attempts: u64,
    /// Requests whose final answer came from this tier.
    pub answers: u64,
    pub escalations_out: u64,
    latency_ms_sum: f64,
    tokens: u64,
    generate_ms_sum: f64,
    spec: SpecStats,
    /// Tokens emitted by speculative attempts, for tokens per target pass.
    spec_tokens: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens reused (prompt cache, saved KV state).
    pub cached_tokens: u64,
    width_sum: f64,
    width_attempts: u64,
}

impl TierStats {
    /// Adds one attempt.
    pub fn record(&mut self, s: &Spent) {
        self.attempts += 1;
        self.latency_ms_sum += s.latency_ms;
        self.tokens += u64::from(s.tokens);
        self.generate_ms_sum += s.generate_ms;
        self.prompt_tokens += u64::from(s.prompt_tokens);
        self.cached_tokens += u64::from(s.cached_tokens);
        if s.escalated {
            self.escalations_out += 1;
        }
        if s.batch_width > 0.0 {
            self.width_sum += s.batch_width;
            self.width_attempts += 1;
        }
        if let Some(sp) = s.speculative {
            self.spec.mode = sp.mode.clone();
            self.spec.passes += sp.passes;
            self.spec.drafted += sp.drafted;
            self.spec.accepted += sp.accepted;
            self.spec.draft_ms += sp.draft_ms;
            self.spec.verify_ms += sp.verify_ms;
            self.spec_tokens += u64::from(s.tokens);
        }
    }

    /// Mean load + queue + generation time per attempt (0 before any).
    pub fn mean_latency_ms(&self) -> f64 {
        if self.attempts > 0 {
            self.latency_ms_sum / self.attempts as f64
        } else {
            0.0
        }
    }

    /// Mean requests decoded together per attempt (0 before any).
    pub fn mean_batch_width(&self) -> f64 {
        if self.width_attempts > 0 {
            self.width_sum / self.width_attempts as f64
        } else {
            0.0
        }
    }

    /// Generated tokens per second of generation time (0 before any).
    pub fn tokens_per_second(&self) -> f64 {
        if self.generate_ms_sum > 0.0 {
            self.tokens as f64 / (self.generate_ms_sum / 1e3)
        } else {
            0.0
        }
    }

    /// Speculative totals with their ratios; `None` when no attempt drafted.
    pub fn speculative(&self) -> Option<SpecStats> {
        (self.spec.passes > 0).then(|| SpecStats {
            mean_accepted_per_pass: self.spec_tokens as f64 / self.spec.passes as f64,
            acceptance_rate: if self.spec.drafted > 0 {
                f64::from(self.spec.accepted) / f64::from(self.spec.drafted)
            } else {
                0.0
            },
            ..self.spec.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(passes: u32, drafted: u32, accepted: u32) -> SpecStats {
        SpecStats {
            mode: "draft".into(),
            passes,
            drafted,
            accepted,
            ..SpecStats::default()
        }
    }

    #[test]
    fn attempts_of_every_kind_add_up() {
        let mut s = TierStats::default();
        s.record(&Spent {
            latency_ms: 300.0,
            tokens: 20,
            generate_ms: 100.0,
            escalated: true,
            ..Spent::default()
        });
        s.record(&Spent::nothing());
        s.record(&Spent {
            latency_ms: 100.0,
            tokens: 10,
            generate_ms: 200.0,
            ..Spent::default()
        });
        assert_eq!((s.attempts, s.escalations_out), (3, 1));
        assert!((s.mean_latency_ms() - 400.0 / 3.0).abs() < 1e-9);
        assert!((s.tokens_per_second() - 100.0).abs() < 1e-9);
        assert!(s.speculative().is_none());
    }

    #[test]
    fn an_idle_tier_reports_zeros() {
        let s = TierStats::default();
        assert_eq!((s.mean_latency_ms(), s.tokens_per_second()), (0.0, 0.0));
    }

    #[test]
    fn speculative_totals_give_acceptance_and_tokens_per_pass() {
        let mut s = TierStats::default();
        let (a, b) = (spec(4, 16, 8), spec(6, 24, 22));
        for (sp, tokens) in [(&a, 12), (&b, 28)] {
            s.record(&Spent {
                tokens,
                speculative: Some(sp),
                ..Spent::default()
            });
        }
        s.record(&Spent {
            tokens: 100,
            ..Spent::default()
        });
        let sp = s.speculative().unwrap();
        assert_eq!((sp.passes, sp.drafted, sp.accepted), (10, 40, 30));
        assert!((sp.acceptance_rate - 0.75).abs() < 1e-9);
        assert!((sp.mean_accepted_per_pass - 4.0).abs() < 1e-9);
    }
}
