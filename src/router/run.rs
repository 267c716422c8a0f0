//! The confidence cascade: attempt a tier, judge its answer, go up while
//! it falls short. The decisions themselves are plain functions in
//! [`crate::cascade`]; this loop applies them and keeps the books.

use super::report::{Attempt, HandoffReport, RouteResult, Timings, TokenCounts};
use super::stats::Spent;
use super::tiers::{Ran, Tiers, Work};
use super::validate::ValidRequest;
use super::{Record, Router};
use crate::activity::Call;
use crate::cascade::{self, Draft, HandoffMode, Outcome, Position, RoutedBy};
use crate::classify::Complexity;
use crate::confidence::Features;
use crate::engine::sampling::DEFAULT_TOP_P;
use crate::engine::{Engine, EngineError, FinishReason, Sampling};
use crate::error::{Error, ErrorKind, Result};
use crate::memory::MemoryView;
use std::time::Instant;

/// Where a cascade starts and what it carries in.
pub struct Plan {
    pub request: ValidRequest,
    pub complexity: Complexity,
    pub start: usize,
    /// Tried once if the start tier fails before any answer.
    pub fallback: Option<usize>,
    pub routed_by: RoutedBy,
    /// A lower tier's answer to refine (force_escalate).
    pub draft: Option<Draft>,
}

/// The answer that stands so far.
struct Answer {
    tier: usize,
    text: String,
    confidence: f64,
    prompt_tokens: u32,
    per_second: f64,
}

/// What the cascade has done so far.
#[derive(Default)]
struct Books {
    attempts: Vec<Attempt>,
    timings: Timings,
    tokens_used: u32,
    escalations: u32,
    answer: Option<Answer>,
}

/// What the loop does after an attempt.
enum Next {
    /// Try this tier, handing it this draft.
    Climb(usize, Option<Draft>),
    Stop,
}

impl<E: Engine> Router<E> {
    /// Runs `plan` from its start tier until an answer stands.
    pub(super) async fn run(
        &self,
        plan: Plan,
        started: Instant,
        call: &Call,
    ) -> Result<RouteResult> {
        // The queue asks which tiers are resident whenever a slot frees.
        let resident = || self.pool.resident_tiers();
        let mut tiers = self.tiers(&resident);
        let mut books = Books::default();
        let mut fallback = plan.fallback;
        let mut next = Next::Climb(plan.start, plan.draft.clone());
        while let Next::Climb(tier, draft) = next {
            let work = self.work(&plan.request, tier, draft.as_ref());
            let max_tokens = work.max_tokens;
            let ran = tiers.run(tier, work, call).await;
            next = match ran.map_err(|e| self.prompt_too_long(e, tier)) {
                Ok(ran) => {
                    let from = draft.as_ref().map(|d| d.tier.as_str());
                    let asked = (&plan.complexity, from);
                    self.judge(tier, ran, max_tokens, asked, &mut books)?
                }
                Err(e) if !matches!(e.kind(), ErrorKind::Failed) => return Err(e),
                Err(e) => {
                    self.stats(tier, &Spent::nothing());
                    let first = books.answer.is_none();
                    if first && fallback.is_none() {
                        return Err(e);
                    }
                    let t = &self.config.tiers[tier];
                    books.attempts.push(Attempt {
                        error: Some(e.to_string()),
                        ..Attempt::on(t, max_tokens)
                    });
                    match fallback.take().filter(|_| first) {
                        // The first tier failed: try the domain's fallback once.
                        Some(f) => {
                            tracing::warn!(tier = %t.name, error = %e, "falling back");
                            Next::Climb(f, None)
                        }
                        None => Next::Stop,
                    }
                }
            };
        }
        Ok(self.finish(plan, books, started))
    }

    /// The seam in front of this router's local and remote tiers.
    fn tiers<'r>(&'r self, resident: &'r (dyn Fn() -> Vec<usize> + Sync)) -> Tiers<'r, E> {
        Tiers {
            config: &self.config,
            pool: &self.pool,
            queue: &self.queue,
            remote: self.remote.as_ref(),
            resident,
            turn: None,
        }
    }

    /// The conversation, token allowance and sampling for `tier`; a lower
    /// answer goes in as one to verify, or framed into the prompt to refine
    /// (`routing.handoff`).
    fn work<'a>(&self, req: &ValidRequest, tier: usize, draft: Option<&'a Draft>) -> Work<'a> {
        let t = &self.config.tiers[tier];
        let routing = &self.config.routing;
        let handoff = draft.filter(|_| routing.hand_over_draft);
        let verify = routing.handoff == HandoffMode::Verify;
        let framed = handoff.filter(|_| !verify);
        let seed = self.state.lock().unwrap().counter;
        Work {
            messages: cascade::messages(req.system.as_deref(), &req.history, &req.query, framed),
            verify,
            max_tokens: req.max_tokens.unwrap_or_else(|| {
                cascade::role_tokens(t.role, routing.token_budget).min(t.max_tokens)
            }),
            sampling: Sampling::from_args(req.temperature, DEFAULT_TOP_P, seed),
            handoff,
        }
    }

    /// A prompt longer than the tier's context is the caller's to fix.
    fn prompt_too_long(&self, e: Error, tier: usize) -> Error {
        match e {
            Error::Engine(EngineError::PromptTooLong { tokens, context }) => Error::invalid(
                "query",
                format!(
                    "the prompt is {tokens} tokens but tier {} holds {context} (its context): shorten the query or history",
                    self.config.tiers[tier].name
                ),
            ),
            e => e,
        }
    }

    /// Books an attempt that generated, for a question classified as
    /// `complexity` (handed an answer from the tier `from`, if any), and
    /// decides whether to go up.
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`] when the call was cancelled mid-generation.
    fn judge(
        &self,
        tier: usize,
        ran: Ran,
        max_tokens: u32,
        (complexity, from): (&Complexity, Option<&str>),
        books: &mut Books,
    ) -> Result<Next> {
        let t = &self.config.tiers[tier];
        let g = &ran.generation;
        let refined = from.is_some() && self.config.routing.handoff == HandoffMode::Refine;
        let text = if refined {
            cascade::strip_framing(&g.text)
        } else {
            g.text.clone()
        };
        let generate_ms = g.prompt_ms + g.generate_ms;
        let spent = |escalated| Spent {
            latency_ms: ran.load_ms + ran.queue_ms + generate_ms,
            tokens: g.completion_tokens,
            generate_ms: g.generate_ms,
            speculative: g.speculative.as_ref(),
            escalated,
            prompt_tokens: g.prompt_tokens,
            cached_tokens: g.cached_tokens,
            batch_width: g.batch_width,
        };
        if g.finish == FinishReason::Cancelled {
            self.stats(tier, &spent(false));
            return Err(Error::Cancelled {
                stage: Some(format!(
                    "at tier {} after {} tokens",
                    t.name, g.completion_tokens
                )),
            });
        }
        let features = t
            .calibration
            .annotate(Features::of_generation(g).for_query(complexity));
        let conf = t.calibration.confidence(&features);
        books.tokens_used += g.completion_tokens;
        books.timings.load_ms += ran.load_ms;
        books.timings.queue_ms += ran.queue_ms;
        books.timings.generate_ms += generate_ms;
        let routing = &self.config.routing;
        let outcome = cascade::after_attempt(
            conf,
            t.threshold,
            &Position {
                tier,
                tiers: self.config.tiers.len(),
                escalations: books.escalations,
                max_escalations: routing.max_escalations,
                tokens_used: books.tokens_used,
                token_budget: routing.token_budget,
            },
        );
        self.stats(tier, &spent(outcome == Outcome::Escalated));
        books.attempts.push(Attempt {
            confidence: conf,
            features: Some(features),
            outcome,
            prompt_tokens: g.prompt_tokens,
            cached_tokens: g.cached_tokens,
            completion_tokens: g.completion_tokens,
            tokens_per_second: g.tokens_per_second,
            queue_ms: ran.queue_ms,
            load_ms: ran.load_ms,
            generate_ms,
            finish: Some(g.finish),
            prompt_format: Some(g.prompt_format),
            speculative: g.speculative.clone(),
            batch_width: g.batch_width,
            worker: ran.worker.clone(),
            handoff: from
                .zip(g.verified.as_ref())
                .map(|(f, v)| HandoffReport::of(f, v)),
            ..Attempt::on(t, max_tokens)
        });
        books.answer = Some(Answer {
            tier,
            text: text.clone(),
            confidence: conf,
            prompt_tokens: g.prompt_tokens,
            per_second: g.tokens_per_second,
        });
        if outcome != Outcome::Escalated {
            return Ok(Next::Stop);
        }
        books.escalations += 1;
        Ok(Next::Climb(
            tier + 1,
            Some(Draft {
                tier: t.name.clone(),
                answer: text,
                confidence: conf,
            }),
        ))
    }

    /// The result, with the answer kept for force_escalate.
    fn finish(&self, plan: Plan, mut books: Books, started: Instant) -> RouteResult {
        if climbed_and_met(&plan, &books) {
            // A cascade correction: weaker than force_escalate, not awaited.
            let tier = books.answer.as_ref().map_or(plan.start, |a| a.tier);
            drop(self.learn(
                &plan.request.query,
                &plan.complexity,
                tier,
                crate::classify::store::Source::Cascade,
            ));
        }
        let answer = books
            .answer
            .expect("the loop returns early unless some attempt answered");
        let t = &self.config.tiers[answer.tier];
        let id = self.remember(Record {
            id: String::new(),
            request: plan.request,
            tier: answer.tier,
            answer: answer.text.clone(),
            confidence: answer.confidence,
            complexity: plan.complexity.clone(),
        });
        books.timings.total_ms = started.elapsed().as_secs_f64() * 1e3;
        RouteResult {
            request_id: id,
            answer: answer.text,
            tier: t.name.clone(),
            model: t.model.display().to_string(),
            confidence: answer.confidence,
            threshold: t.threshold,
            complexity: plan.complexity,
            routed_by: plan.routed_by,
            attempts: books.attempts,
            timings: books.timings,
            tokens: TokenCounts {
                prompt: answer.prompt_tokens,
                completion: books.tokens_used,
                per_second: answer.per_second,
            },
            memory: MemoryView::of(&self.pool.status()),
            escalated_from: None,
        }
    }
}

/// Whether a classifier-routed request escalated and then met a higher
/// tier's threshold: a correction of where it started.
fn climbed_and_met(plan: &Plan, books: &Books) -> bool {
    plan.routed_by == RoutedBy::Classifier
        && books.answer.as_ref().is_some_and(|a| a.tier > plan.start)
        && books
            .attempts
            .last()
            .is_some_and(|a| a.outcome == Outcome::ConfidenceMet)
}
