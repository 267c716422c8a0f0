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
//!
//! A verified handoff is one more source of drafts: a lower tier's answer,
//! tokenised in the target's vocabulary (after the whitespace the target's
//! first token opens with), is offered whole in the first round, so one
//! batch scores all of it; after the first disagreement its rest sits in the
//! lookup history between the prompt and the output, and n-gram lookup
//! drafts from it. The output is the target's own, greedy or sampled, as
//! for any draft. Where the prompt's last batch is a generated pass (see
//! `llama::prefix`), that first round rides in it ([`first_round`]): the
//! pass that ends the prompt also scores the lower answer, and the loop's
//! first round only reads its logits.

use super::ggml_hook::Pass;
use super::llama::{decode, decode_err, feed, Fused, Output, Prepared, Slot};
use super::ngram;
use super::sampling::{accept_or_resample, argmax, draw, raw_prob, scored, Pick, Sampler};
use super::{EngineError, GenerateRequest, SpecParams, SpecStats, Speculation, VerifyStats};
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
    /// A lower tier's answer, verified whole in the first pass; after the
    /// first disagreement its rest drafts by n-gram lookup.
    Handoff,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::DraftModel => "draft_model",
            Mode::Ngram => "ngram",
            Mode::Handoff => "handoff",
        }
    }

    /// Whether drafts come from looking up the history.
    fn looks_up(self) -> bool {
        matches!(self, Mode::Ngram | Mode::Handoff)
    }
}

/// The lower tier's answer being verified.
struct Handoff {
    /// Its tokens not yet checked; emptied at the first disagreement.
    pending: Vec<u32>,
    /// Whether this round's drafts are the lower answer's.
    this_round: bool,
    stats: VerifyStats,
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
    handoff: Option<Handoff>,
    /// The first round, already decoded with the prompt's last batch.
    fused: Option<Fused>,
    /// Where this round's logits start in the target's last batch.
    logits_at: i32,
    /// Time of a fused pass not yet booked to a round.
    carried_ms: f64,
}

/// What one generation's loop reports: its speculative counters (None for
/// plain decoding) and what became of a lower answer given to verify.
pub(super) type Report = (Option<SpecStats>, Option<VerifyStats>);

/// Generates into `out`, starting from the prompt's logits at index
/// `first_logits` of the target's last batch; `lower` is the request's
/// answer to verify in the target's vocabulary ([`lower_tokens`]), and
/// `fused` says what of it that batch also decoded ([`first_round`]).
///
/// # Errors
///
/// A llama.cpp decode failure.
///
/// `exact` says whether the target's tokens get the same logits decoded
/// together as alone; when not, it decodes plainly whatever it was asked
/// (a lower answer to verify is then only compared with the output).
#[allow(clippy::too_many_arguments)]
pub(super) fn run<'t>(
    model: &'t LlamaModel,
    (target, n_ctx, exact): (&mut LlamaContext<'t>, usize, bool),
    draft: Option<Slot<'_, '_>>,
    req: &GenerateRequest,
    prompt: &Prepared,
    (first_logits, lower, fused): (i32, Option<Vec<u32>>, Option<Fused>),
    sampler: &mut Sampler,
    out: &mut Output,
) -> Result<Report, EngineError> {
    let lower_text = req.verify.as_deref().unwrap_or_default();
    let plain = SpecParams {
        draft_max: 0,
        ..SpecParams::default()
    };
    let (params, mode) = match req.speculation {
        _ if !exact => (plain, Mode::Plain),
        _ if lower.as_ref().is_some_and(|l| !l.is_empty()) => (
            SpecParams {
                draft_max: LOOKUP_DRAFTS,
                ..SpecParams::default()
            },
            Mode::Handoff,
        ),
        Speculation::Off => (plain, Mode::Plain),
        Speculation::Draft { params, .. } if draft.is_some() => (params, Mode::DraftModel),
        Speculation::Draft { .. } => {
            return Err(EngineError::Decode("the draft model is not loaded".into()))
        }
        Speculation::Ngram { params } => (params, Mode::Ngram),
    };
    let mut lower = lower.unwrap_or_default();
    let mut draft_ms = 0.0;
    let first = sampler.pick(target.get_logits_ith(first_logits));
    let going = out.push(model, first);
    // The fused lower answer holds unless the target opened otherwise.
    let agrees = mode == Mode::Handoff && lower.first() == Some(&first.token);
    let fused = match fused {
        Some(f) if agrees => Some(f),
        Some(_) => {
            target
                .kv_cache_seq_rm(0, Some(prompt.tokens.len() as u32), None)
                .map_err(decode_err)?;
            None
        }
        None => None,
    };
    if mode == Mode::Handoff && !agrees {
        lower = lead_like(model, first.token, lower_text).unwrap_or(lower);
    }
    // What the loop reports once it ends.
    let report = |stats: SpecStats, handoff: Option<Handoff>, out: &Output| {
        let verified = req.verify.as_ref().map(|text| match handoff {
            Some(h) => VerifyStats {
                offered: lower.len() as u32,
                whole: !lower.is_empty() && same_text(out, text),
                with_prompt: fused.is_some(),
                ..h.stats
            },
            None => compared(model, text, out),
        });
        ((mode != Mode::Plain).then_some(stats), verified)
    };
    if !going {
        let stats = SpecStats {
            mode: mode.name().to_string(),
            ..SpecStats::default()
        };
        let handoff = (mode == Mode::Handoff).then(|| Handoff::after_first(&lower, first.token));
        return Ok(report(stats, handoff, out));
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
        (&prompt.tokens, &lower),
        first.token,
    );
    dec.stats.draft_ms = draft_ms;
    dec.fused = fused;
    loop {
        // At most as many drafts as can still be emitted, and as fit.
        let k_eff = dec
            .drafts_wanted()
            .min(out.left().saturating_sub(1))
            .min(dec.n_ctx.saturating_sub(dec.n_past + 2));
        let n_past_old = dec.n_past;
        dec.propose(k_eff, sampler)?;
        let t = Instant::now();
        dec.verify()?;
        let (m, stopped) = dec.accept(sampler, out);
        let verify_ms = t.elapsed().as_secs_f64() * 1e3 + std::mem::take(&mut dec.carried_ms);
        dec.stats.verify_ms += verify_ms;
        dec.note_handoff(m, verify_ms);
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
    let mut stats = std::mem::take(&mut dec.stats);
    if stats.drafted > 0 {
        stats.acceptance_rate = stats.accepted as f64 / stats.drafted as f64;
    }
    if stats.passes > 0 {
        stats.mean_accepted_per_pass = out.ids.len() as f64 / stats.passes as f64;
    }
    let handoff = dec.handoff.take();
    Ok(report(stats, handoff, out))
}

/// The answer `req` hands up to verify, in `model`'s vocabulary; None
/// when it hands none up.
pub(super) fn lower_tokens(model: &LlamaModel, req: &GenerateRequest) -> Option<Vec<u32>> {
    let text = req.verify.as_deref()?;
    let tokens = model.vocab().tokenize(text.trim().as_bytes(), false, false);
    Some(tokens.iter().map(|t| t.0 as u32).collect())
}

/// What of a lower answer to verify can ride in the prompt's last pass:
/// the tokens the loop's first round would decode (the answer's first
/// token, which the target must open with for them to count, and as many
/// more as that round drafts), when the model's multi-token passes are
/// `exact` and a `lower` answer is handed up; empty otherwise. Whether the
/// pass takes them is the prompt cache's call (`PromptCache::prefill_with`).
pub(super) fn first_round(
    lower: Option<&[u32]>,
    exact: bool,
    (prompt_len, n_ctx, n_batch): (usize, usize, usize),
    budget: usize,
) -> Vec<LlamaToken> {
    let Some(lower) = lower.filter(|_| exact) else {
        return Vec::new();
    };
    // As the first round bounds its drafts (see `run`'s loop).
    let drafts = (lower.len().saturating_sub(1))
        .min(n_batch.saturating_sub(1))
        .min(budget.saturating_sub(2))
        .min(n_ctx.saturating_sub(prompt_len + 2));
    if drafts == 0 {
        return Vec::new();
    }
    lower[..=drafts]
        .iter()
        .map(|&t| LlamaToken(t as i32))
        .collect()
}

/// The lower answer `text` tokenised after the whitespace the target's
/// `first` token starts with (a newline, a space), as a model that opens
/// its answer that way would continue it; None when `first` starts with
/// none or `text` already does.
fn lead_like(model: &LlamaModel, first: u32, text: &str) -> Option<Vec<u32>> {
    let mut piece = Vec::new();
    model
        .vocab()
        .token_to_piece_into(LlamaToken(first as i32), &mut piece, false, None);
    let piece = String::from_utf8_lossy(&piece);
    let lead = &piece[..piece.len() - piece.trim_start().len()];
    let text = text.trim();
    if lead.is_empty() || text.is_empty() {
        return None;
    }
    let tokens = model
        .vocab()
        .tokenize(format!("{lead}{text}").as_bytes(), false, false);
    Some(tokens.iter().map(|t| t.0 as u32).collect())
}

/// A lower answer `text` compared with an output decoded without verifying
/// it (a model that is not multi-token exact, or a request decoded inside
/// a batch): the prefix of its tokens the output shares, and whether the
/// output is the same text.
pub(super) fn compared(model: &LlamaModel, text: &str, out: &Output) -> VerifyStats {
    let tokens = |t: &str| -> Vec<u32> {
        let ids = model.vocab().tokenize(t.trim().as_bytes(), false, false);
        ids.iter().map(|t| t.0 as u32).collect()
    };
    let mut lower = tokens(text);
    if let Some(&first) = out.ids.first().filter(|&&f| lower.first() != Some(&f)) {
        lower = lead_like(model, first, text).unwrap_or(lower);
    }
    VerifyStats {
        offered: lower.len() as u32,
        accepted: out
            .ids
            .iter()
            .zip(&lower)
            .take_while(|(a, b)| a == b)
            .count() as u32,
        whole: !lower.is_empty() && same_text(out, text),
        verify_ms: 0.0,
        with_prompt: false,
    }
}

/// Whether the output is the lower answer `text`: the same text, however
/// the tokens split it.
fn same_text(out: &Output, text: &str) -> bool {
    String::from_utf8_lossy(&out.text).trim() == text.trim()
}

/// Lookup drafts per pass after a handoff's first disagreement.
const LOOKUP_DRAFTS: u32 = 8;

impl Handoff {
    /// The handoff once the target's own first token is known.
    fn after_first(lower: &[u32], first: u32) -> Self {
        let agrees = lower.first() == Some(&first);
        Handoff {
            pending: if agrees {
                lower[1..].to_vec()
            } else {
                Vec::new()
            },
            this_round: false,
            stats: VerifyStats {
                accepted: agrees as u32,
                ..VerifyStats::default()
            },
        }
    }
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
        (prompt, lower): (&[LlamaToken], &[u32]),
        first: u32,
    ) -> Self {
        let mut history = Vec::new();
        if mode.looks_up() {
            // The lower answer sits between the prompt and the output, so
            // lookups find its continuations.
            history.extend(prompt.iter().map(|t| t.0 as u32));
            history.extend_from_slice(lower);
            history.push(first);
        }
        let handoff = (mode == Mode::Handoff).then(|| Handoff::after_first(lower, first));
        // A handoff's first pass holds the whole lower answer (up to what
        // one batch takes).
        let width = match &handoff {
            Some(h) => h.pending.len().min(target.n_batch() as usize - 1),
            None => 0,
        };
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
            tbatch: LlamaBatch::new(k.max(width) + 1, 1),
            k,
            drafts: Vec::with_capacity(k.max(width)),
            qdists: Vec::new(),
            handoff,
            fused: None,
            logits_at: 0,
            carried_ms: 0.0,
        }
    }

    /// Drafts this round would like: the rest of a lower answer being
    /// verified (as many as one batch takes), else the usual k.
    fn drafts_wanted(&self) -> usize {
        match &self.handoff {
            Some(h) if !h.pending.is_empty() => h.pending.len().min(self.tbatch_room()),
            _ => self.k,
        }
    }

    /// Drafts one target batch can take after the last token.
    fn tbatch_room(&self) -> usize {
        (self.target.n_batch() as usize).saturating_sub(1)
    }

    /// Books a round of a handoff: `m` of its drafts kept, in `ms`.
    fn note_handoff(&mut self, m: usize, ms: f64) {
        let Some(h) = self.handoff.as_mut().filter(|h| h.this_round) else {
            return;
        };
        h.this_round = false;
        h.stats.accepted += m as u32;
        h.stats.verify_ms += ms;
        if m == self.drafts.len() {
            h.pending.drain(..m);
        } else {
            h.pending.clear();
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
            None if self.handoff.as_ref().is_some_and(|h| !h.pending.is_empty()) => {
                let h = self.handoff.as_mut().expect("checked above");
                self.drafts
                    .extend_from_slice(&h.pending[..k_eff.min(h.pending.len())]);
                h.this_round = !self.drafts.is_empty();
            }
            None if self.mode.looks_up() => {
                self.drafts.extend(ngram::draft(&self.history, k_eff));
            }
            None => {}
        }
        Ok(())
    }

    /// Step 2: the last token and the drafts in one target batch, unless
    /// the prompt's last pass decoded exactly these already (then their
    /// logits are read where it left them; any other round drops its
    /// positions first).
    fn verify(&mut self) -> Result<(), EngineError> {
        self.logits_at = 0;
        if let Some(f) = self.fused.take() {
            if f.tokens == self.drafts.len() + 1 {
                self.logits_at = f.offset;
                self.carried_ms = f.ms;
                return Ok(());
            }
            self.target
                .kv_cache_seq_rm(0, Some(self.n_past as u32), None)
                .map_err(decode_err)?;
        }
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
            if self.mode.looks_up() {
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
        let logits = self.target.get_logits_ith(self.logits_at + i as i32);
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
            (self.past, 0),
            Pass::Generated,
            true,
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
