//! The decoding loop, plain or speculative, on the inference thread.
//!
//! Each round: draft up to k tokens (with the draft model, by n-gram lookup,
//! or none at all for plain decoding), decode the last emitted token plus the
//! drafts in one target batch with logits at every position, keep the
//! longest prefix the target agrees with, and emit the target's own next
//! token after it. Greedy: a draft is kept when it is the target's argmax, so
//! the output is exactly the target's own greedy output. With temperature:
//! speculative sampling ([`accept_or_resample`]), so the output is
//! distributed as the target's. Both KV caches are then rolled back to the
//! accepted length; llama.cpp needs each sequence's positions to be
//! consecutive, so a draft token the draft model has not seen yet (the last
//! one, when all were accepted) is fed to it at the start of the next round.

use super::ggml_hook::Pass;
use super::llama::{decode, decode_err, feed, Output, Prepared, Slot};
use super::ngram;
use super::sampling::{accept_or_resample, argmax, draw, raw_prob, scored, Pick, Sampler};
use super::{EngineError, GenerateRequest, SpecParams, SpecStats, Speculation};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::time::Instant;

/// Where drafts come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    DraftModel,
    Ngram,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::DraftModel => "draft_model",
            Mode::Ngram => "ngram",
        }
    }
}

/// The draft model's side of the loop: its context and batch, the tokens
/// it must still be fed, and how far its cache reaches.
struct DraftModel<'a, 'd> {
    ctx: &'a mut LlamaContext<'d>,
    batch: LlamaBatch<'static>,
    pending: Vec<LlamaToken>,
    past: usize,
    /// Tokens its sequence holds.
    n_ctx: usize,
    /// Still drafting: it stops for good when its own context (possibly
    /// smaller than the target's) would overflow.
    active: bool,
}

/// One generation's loop state.
struct Decoder<'a, 't, 'd> {
    model: &'t LlamaModel,
    target: &'a mut LlamaContext<'t>,
    draft: Option<DraftModel<'a, 'd>>,
    params: SpecParams,
    mode: Mode,
    greedy: bool,
    n_ctx: usize,
    stats: SpecStats,
    /// The last emitted token, not yet in the target's cache.
    id_last: u32,
    /// Tokens in the target's cache.
    n_past: usize,
    /// Prompt and output so far, for n-gram drafting.
    history: Vec<u32>,
    tbatch: LlamaBatch<'static>,
    /// Drafts per round (adaptive drafting moves it).
    k: usize,
    drafts: Vec<u32>,
    /// The draft model's distribution of each draft (sampling only).
    qdists: Vec<Vec<f32>>,
}

/// Generates into `out`, starting from the prompt's logits at index
/// `first_logits` of the target's last batch. Returns the speculative
/// counters (None for plain decoding).
///
/// # Errors
///
/// A llama.cpp decode failure.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<'t>(
    model: &'t LlamaModel,
    (target, n_ctx): (&mut LlamaContext<'t>, usize),
    draft: Option<Slot<'_, '_>>,
    req: &GenerateRequest,
    prompt: &Prepared,
    first_logits: i32,
    sampler: &mut Sampler,
    out: &mut Output,
) -> Result<Option<SpecStats>, EngineError> {
    let (params, mode) = match req.speculation {
        Speculation::Off => (
            SpecParams {
                draft_max: 0,
                ..SpecParams::default()
            },
            Mode::Plain,
        ),
        Speculation::Draft { params, .. } if draft.is_some() => (params, Mode::DraftModel),
        Speculation::Draft { .. } => {
            return Err(EngineError::Decode("the draft model is not loaded".into()))
        }
        Speculation::Ngram { params } => (params, Mode::Ngram),
    };
    let report = |stats: SpecStats| (mode != Mode::Plain).then_some(stats);
    let mut draft_ms = 0.0;
    let first = sampler.pick(target.get_logits_ith(first_logits));
    if !out.push(model, first) {
        let stats = SpecStats {
            mode: mode.name().to_string(),
            ..SpecStats::default()
        };
        return Ok(report(stats));
    }
    let draft = match draft {
        Some((ctx, cache)) if mode == Mode::DraftModel => {
            let t = Instant::now();
            let ready = prefill_draft(ctx, cache, prompt, req.cache_prompt)?;
            draft_ms = t.elapsed().as_secs_f64() * 1e3;
            ready.then_some((ctx, cache.n_ctx() as usize))
        }
        _ => None,
    };
    let mut dec = Decoder::new(
        model,
        (target, n_ctx),
        draft,
        params,
        mode,
        sampler.is_greedy(),
        &prompt.tokens,
        first.token,
    );
    dec.stats.draft_ms = draft_ms;
    loop {
        // At most as many drafts as can still be emitted, and as fit.
        let k_eff = dec
            .k
            .min(out.left().saturating_sub(1))
            .min(dec.n_ctx.saturating_sub(dec.n_past + 2));
        let n_past_old = dec.n_past;
        dec.propose(k_eff, sampler)?;
        let t = Instant::now();
        dec.verify()?;
        let (m, stopped) = dec.accept(sampler, out);
        dec.stats.verify_ms += t.elapsed().as_secs_f64() * 1e3;
        if mode != Mode::Plain {
            dec.stats.passes += 1;
            dec.stats.drafted += dec.drafts.len() as u32;
            dec.stats.accepted += m as u32;
        }
        if stopped {
            break;
        }
        dec.roll_back(n_past_old, m)?;
        dec.adapt(m);
    }
    let mut stats = dec.stats;
    if stats.drafted > 0 {
        stats.acceptance_rate = stats.accepted as f64 / stats.drafted as f64;
    }
    if stats.passes > 0 {
        stats.mean_accepted_per_pass = out.ids.len() as f64 / stats.passes as f64;
    }
    Ok(report(stats))
}

impl<'a, 't, 'd> Decoder<'a, 't, 'd> {
    /// The state after the prompt and the `first` emitted token.
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &'t LlamaModel,
        (target, n_ctx): (&'a mut LlamaContext<'t>, usize),
        draft: Option<(&'a mut LlamaContext<'d>, usize)>,
        params: SpecParams,
        mode: Mode,
        greedy: bool,
        prompt: &[LlamaToken],
        first: u32,
    ) -> Self {
        let mut history = Vec::new();
        if mode == Mode::Ngram {
            history.extend(prompt.iter().map(|t| t.0 as u32));
            history.push(first);
        }
        // The draft model's cache holds the prompt (prefill_draft).
        let draft = draft.map(|(ctx, n_ctx)| DraftModel {
            batch: LlamaBatch::new(ctx.n_batch() as usize, 1),
            ctx,
            n_ctx,
            pending: vec![LlamaToken(first as i32)],
            past: prompt.len(),
            active: true,
        });
        let k = params.draft_max as usize;
        Decoder {
            model,
            n_ctx,
            target,
            draft,
            params,
            mode,
            greedy,
            stats: SpecStats {
                mode: mode.name().to_string(),
                ..SpecStats::default()
            },
            id_last: first,
            n_past: prompt.len(),
            history,
            tbatch: LlamaBatch::new(k + 1, 1),
            k,
            drafts: Vec::with_capacity(k),
            qdists: Vec::new(),
        }
    }

    /// Step 1: up to `k_eff` drafts, from the draft model or by n-gram.
    fn propose(&mut self, k_eff: usize, sampler: &mut Sampler) -> Result<(), EngineError> {
        self.drafts.clear();
        self.qdists.clear();
        if let Some(d) = self.draft.as_mut().filter(|d| d.active) {
            if d.past + d.pending.len() + k_eff + 1 >= d.n_ctx {
                d.active = false;
            }
        }
        match self.draft.as_mut().filter(|d| d.active) {
            Some(d) => {
                let t = Instant::now();
                let (params, greedy) = (self.params, self.greedy);
                d.draft(
                    k_eff,
                    params,
                    greedy,
                    sampler,
                    &mut self.drafts,
                    &mut self.qdists,
                )?;
                self.stats.draft_ms += t.elapsed().as_secs_f64() * 1e3;
            }
            None if self.mode == Mode::Ngram => {
                self.drafts.extend(ngram::draft(&self.history, k_eff));
            }
            None => {}
        }
        Ok(())
    }

    /// Step 2: the last token and the drafts in one target batch.
    fn verify(&mut self) -> Result<(), EngineError> {
        self.tbatch.clear();
        self.tbatch
            .add(
                LlamaToken(self.id_last as i32),
                self.n_past as i32,
                &[0],
                true,
            )
            .map_err(decode_err)?;
        for (j, &tok) in self.drafts.iter().enumerate() {
            self.tbatch
                .add(
                    LlamaToken(tok as i32),
                    (self.n_past + 1 + j) as i32,
                    &[0],
                    true,
                )
                .map_err(decode_err)?;
        }
        decode(self.target, &mut self.tbatch, Pass::Generated)
    }

    /// Step 3: accepts the agreeing prefix, then the target's own token.
    /// Returns the drafts accepted, and whether the output is complete.
    fn accept(&mut self, sampler: &mut Sampler, out: &mut Output) -> (usize, bool) {
        let mut m = 0;
        for i in 0..=self.drafts.len() {
            let (pick, accepted) = self.judge(i, sampler);
            let tok = pick.token;
            if !out.push(self.model, pick) {
                return (m, true);
            }
            if self.mode == Mode::Ngram {
                self.history.push(tok);
            }
            self.id_last = tok;
            if !accepted {
                break;
            }
            m += 1;
        }
        (m, false)
    }

    /// The target's token at verification position `i`, scored, and
    /// whether it keeps draft `i`.
    fn judge(&self, i: usize, sampler: &mut Sampler) -> (Pick, bool) {
        let logits = self.target.get_logits_ith(i as i32);
        if self.greedy {
            let p = sampler.pick(logits);
            return (p, self.drafts.get(i) == Some(&p.token));
        }
        let Some(&x) = self.drafts.get(i) else {
            return (sampler.next(logits), false);
        };
        let p = sampler.distribution(logits);
        let (tok, acc) = if self.draft.as_ref().is_some_and(|d| d.active) {
            let (tok, acc) = accept_or_resample(&p, &self.qdists[i], x as usize, sampler.rng());
            (tok as u32, acc)
        } else if sampler.rng().next_f32() < p[x as usize] {
            // An n-gram draft is a point mass: keep it with probability
            // p(x), else draw from p without x.
            (x, true)
        } else {
            let mut rest = p;
            rest[x as usize] = 0.0;
            (draw(&rest, sampler.rng()) as u32, false)
        };
        (scored(logits, tok as usize), acc)
    }

    /// Step 4: rolls both caches back to what was accepted (`m` drafts
    /// after the `n_past_old` tokens before this round).
    fn roll_back(&mut self, n_past_old: usize, m: usize) -> Result<(), EngineError> {
        self.n_past = n_past_old + m + 1;
        if !self.drafts.is_empty() && m < self.drafts.len() {
            self.target
                .kv_cache_seq_rm(0, Some(self.n_past as u32), None)
                .map_err(decode_err)?;
        }
        let Some(d) = self.draft.as_mut().filter(|d| d.active) else {
            return Ok(());
        };
        let keep = self.n_past.min(d.past);
        if keep < d.past {
            d.ctx
                .kv_cache_seq_rm(0, Some(keep as u32), None)
                .map_err(decode_err)?;
        }
        d.pending.extend(
            self.drafts[(keep - n_past_old - 1).min(m)..m]
                .iter()
                .map(|&t| LlamaToken(t as i32)),
        );
        d.pending.push(LlamaToken(self.id_last as i32));
        d.past = keep;
        Ok(())
    }

    /// Adaptive drafting: more drafts after a fully accepted round, fewer
    /// after a rejection.
    fn adapt(&mut self, m: usize) {
        if !self.params.adaptive || self.drafts.is_empty() {
            return;
        }
        let max = self.params.draft_max as usize;
        let min = (self.params.draft_min as usize).max(1);
        self.k = if m == self.drafts.len() {
            (self.k + 2).min(max)
        } else {
            (self.k + m).div_ceil(2).clamp(min, max)
        };
    }
}

/// Brings the draft model's cache to the prompt, as its target's (prompt
/// passes, the longest cached prefix kept); false, with the draft left
/// alone, when the prompt leaves its context no room to draft.
fn prefill_draft(
    ctx: &mut LlamaContext<'_>,
    cache: &mut super::llama::PromptCache,
    prompt: &Prepared,
    reuse: bool,
) -> Result<bool, EngineError> {
    if prompt.tokens.len() + 2 >= cache.n_ctx() as usize {
        return Ok(false);
    }
    let mut batch = LlamaBatch::new(ctx.n_batch() as usize, 1);
    cache.prefill(ctx, &mut batch, prompt, reuse)?;
    Ok(true)
}

impl DraftModel<'_, '_> {
    /// Feeds what the draft model has not seen, then drafts up to `k_eff`
    /// tokens into `drafts` (and their distributions into `qdists` when
    /// sampling), stopping early below `p_min` once `draft_min` are drafted.
    fn draft(
        &mut self,
        k_eff: usize,
        params: SpecParams,
        greedy: bool,
        sampler: &mut Sampler,
        drafts: &mut Vec<u32>,
        qdists: &mut Vec<Vec<f32>>,
    ) -> Result<(), EngineError> {
        feed(
            self.ctx,
            &mut self.batch,
            &self.pending,
            self.past,
            0,
            Pass::Generated,
        )?;
        self.past += self.pending.len();
        self.pending.clear();
        let mut idx = self.batch.n_tokens() - 1;
        for i in 0..k_eff {
            let logits = self.ctx.get_logits_ith(idx);
            let (tok, q) = if greedy {
                let (tok, _) = argmax(logits);
                let q = if params.p_min > 0.0 {
                    raw_prob(logits, tok)
                } else {
                    1.0
                };
                (tok, q)
            } else {
                let dist = sampler.distribution(logits);
                let tok = draw(&dist, sampler.rng());
                let q = dist[tok];
                qdists.push(dist);
                (tok, q)
            };
            if i as u32 >= params.draft_min && q < params.p_min {
                qdists.truncate(drafts.len());
                break;
            }
            drafts.push(tok as u32);
            if i + 1 < k_eff {
                self.batch.clear();
                self.batch
                    .add(LlamaToken(tok as i32), self.past as i32, &[0], true)
                    .map_err(decode_err)?;
                decode(self.ctx, &mut self.batch, Pass::Generated)?;
                self.past += 1;
                idx = 0;
            }
        }
        Ok(())
    }
}
