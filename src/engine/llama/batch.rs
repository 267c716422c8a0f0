//! Continuous batching: the requests on one model share its decode steps.
//!
//! A model loaded with `sequences` > 1 has that many KV sequences, each
//! with the whole context of one request. Its [`Batcher`] runs steps; each
//! step
//!
//! 1. admits waiting requests into free sequences (the one whose cached
//!    prompt it can reuse most, else the lowest free one);
//! 2. decodes one prompt batch of one joining request, in a prompt pass of
//!    its own, so a long prompt holds the others back one batch at a time;
//!    its first token is sampled from that pass's logits;
//! 3. decodes the last emitted token of every generating request in one
//!    `llama_decode` (a generated pass), and samples each request's next
//!    token with its own sampler, stop strings and limits;
//! 4. answers the requests that finished, which leave the batch: their
//!    generated positions are dropped from their sequence, whose prompt
//!    stays cached for the next request.
//!
//! A cancelled request finishes at the next step, wherever it is.
//!
//! # Exactness
//!
//! A greedy answer decoded in a batch is token for token the one decoded
//! alone. Each sequence is a stream of its own (the KV cache is not
//! unified), so its tokens sit at the same cells, and its attention runs
//! over the same cells in the same order, as when it is alone; a step's
//! matrix products go through the exact kernels of a generated pass, which
//! compute each column with the dot product of a single-token decode,
//! whatever the number of columns (`ggml_hook`); and a prompt is decoded in
//! the very batches a cold run uses, with no other request's tokens in
//! them. The real-model tests check it on every model here.
//!
//! llama.cpp puts requests of consecutive sequence ids in one micro-batch
//! (its split of a non-unified cache), so new requests take the lowest free
//! sequence: when a request in the middle leaves, the step runs in two
//! micro-batches until a new request fills the gap.

use super::prefix::{clear_seq, Prefill, PromptCache};
use super::prompt::{prepare, Prepared};
use super::store::{ModelIdentity, StateStore};
use super::{decode, decode_err, feed, Output};
use crate::engine::ggml_hook::Pass;
use crate::engine::sampling::Sampler;
use crate::engine::{EngineError, FinishReason, GenerateRequest, Generation, PromptFormat};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use tokio::sync::oneshot;

/// A request and where its answer goes.
pub(super) struct Job {
    pub request: Box<GenerateRequest>,
    pub reply: oneshot::Sender<Result<Generation, EngineError>>,
}

/// A request in the batch.
struct Running {
    slot: usize,
    job: Job,
    prep: Prepared,
    /// The prompt batches left to decode; None once the prompt is in.
    prefill: Option<Prefill>,
    /// Prompt tokens reused from the sequence's cache.
    prompt_kept: usize,
    /// Index of the next batch of `prefill` to decode.
    next_batch: usize,
    out: Output,
    sampler: Sampler,
    /// The last emitted token, not yet decoded.
    last: Option<u32>,
    /// Tokens in the sequence's KV cache.
    n_past: usize,
    admitted: Instant,
    /// Time spent decoding its prompt batches (not waiting between them).
    prompt_ms: f64,
    /// The model's state after the prompt, once read.
    prompt_state: Option<Vec<f32>>,
    generating: Option<Instant>,
    /// Sum of the step widths this request took part in, and the steps.
    width_sum: u64,
    steps: u64,
}

/// The requests on one model: waiting for a sequence, or running.
pub(super) struct Batcher {
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    prompt_batch: Option<LlamaBatch<'static>>,
    step_batch: Option<LlamaBatch<'static>>,
}

/// Where a model's saved KV states are, to restore one into sequence 0.
pub(super) type Saved<'a> = Option<(&'a StateStore, &'a ModelIdentity)>;

impl Batcher {
    pub fn new() -> Self {
        Batcher {
            waiting: VecDeque::new(),
            running: Vec::new(),
            prompt_batch: None,
            step_batch: None,
        }
    }

    /// Queues a request; it joins at the next step with a free sequence.
    pub fn push(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Nothing waits or runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Answers every request, running or waiting, with an error made by
    /// `err` and forgets them (the model is being unloaded).
    pub fn fail_all(&mut self, err: impl Fn() -> EngineError) {
        self.fail_running(&err);
        for j in self.waiting.drain(..) {
            let _ = j.reply.send(Err(err()));
        }
    }

    /// Answers the running requests with an error made by `err` and
    /// forgets them (a step that failed or panicked); the waiting ones
    /// stay for the next step.
    pub fn fail_running(&mut self, err: impl Fn() -> EngineError) {
        for r in self.running.drain(..) {
            let _ = r.job.reply.send(Err(err()));
        }
    }

    /// One step (see the module doc).
    ///
    /// # Errors
    ///
    /// A llama.cpp decode failure; the caller fails every request and
    /// forgets the model's caches.
    pub fn step(
        &mut self,
        model: &LlamaModel,
        ctx: &mut LlamaContext<'_>,
        caches: &mut [PromptCache],
        saved: Saved<'_>,
    ) -> Result<(), EngineError> {
        let n_batch = ctx.n_batch() as usize;
        let prompt_batch = self
            .prompt_batch
            .get_or_insert_with(|| LlamaBatch::new(n_batch, 1));
        let step_batch = self
            .step_batch
            .get_or_insert_with(|| LlamaBatch::new(caches.len(), 1));
        admit(
            &mut self.waiting,
            &mut self.running,
            model,
            ctx,
            caches,
            saved,
        );
        for r in &mut self.running {
            if r.job.request.cancel.is_cancelled() && r.out.finish.is_none() {
                r.out.finish = Some(FinishReason::Cancelled);
            }
        }
        prompt_pass(&mut self.running, model, ctx, caches, prompt_batch)?;
        decode_step(&mut self.running, model, ctx, step_batch)?;
        self.leave(model, ctx, caches);
        Ok(())
    }

    /// Answers the finished requests and frees their sequences.
    fn leave(
        &mut self,
        model: &LlamaModel,
        ctx: &mut LlamaContext<'_>,
        caches: &mut [PromptCache],
    ) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].out.finish.is_none() {
                i += 1;
                continue;
            }
            let r = self.running.swap_remove(i);
            let cache = &caches[r.slot];
            if r.prefill.is_some() {
                // Left during its prompt: nothing of it is worth keeping.
                clear_seq(ctx, cache.seq());
            } else {
                // The prompt stays cached; the answer's positions go.
                let _ = ctx.kv_cache_seq_rm(cache.seq(), Some(r.prep.tokens.len() as u32), None);
            }
            let generate_ms = r
                .generating
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
            // A lower answer to verify was not: it is compared instead.
            let verified = r
                .job
                .request
                .verify
                .as_deref()
                .map(|text| super::super::speculative::compared(model, text, &r.out));
            let mut generation =
                r.out
                    .into_generation(&r.prep, r.prompt_kept, r.prompt_ms, generate_ms);
            generation.verified = verified;
            generation.prompt_state = r.prompt_state;
            if r.steps > 0 {
                generation.batch_width = r.width_sum as f64 / r.steps as f64;
            }
            let _ = r.job.reply.send(Ok(generation));
        }
        // Keep admission order: the oldest request's prompt goes first.
        self.running.sort_by_key(|r| r.admitted);
    }
}

/// Moves waiting requests into free sequences.
fn admit(
    waiting: &mut VecDeque<Job>,
    running: &mut Vec<Running>,
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    caches: &mut [PromptCache],
    saved: Saved<'_>,
) {
    let n_batch = ctx.n_batch() as usize;
    while running.len() < caches.len() {
        let Some(job) = waiting.pop_front() else {
            return;
        };
        // A request whose caller is gone, or that cannot be prepared,
        // is answered here and takes no sequence.
        if job.request.cancel.is_cancelled() {
            let _ = job.reply.send(Ok(cancelled_before_start()));
            continue;
        }
        let prepared = catch_unwind(AssertUnwindSafe(|| {
            super::panic_if_injected();
            prepare(model, caches[0].n_ctx(), &job.request)
        }));
        let mut prep = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = job.reply.send(Err(e));
                continue;
            }
            Err(panic) => {
                let _ = job.reply.send(Err(super::panicked(panic)));
                continue;
            }
        };
        let busy: Vec<usize> = running.iter().map(|r| r.slot).collect();
        let reuse = job.request.cache_prompt;
        let slot = (0..caches.len())
            .filter(|s| !busy.contains(s))
            .max_by_key(|&s| {
                let kept = if reuse {
                    caches[s].reusable_for(&prep, n_batch)
                } else {
                    0
                };
                (kept, std::cmp::Reverse(s))
            })
            .expect("a free sequence, as fewer run than there are");
        let cache = &mut caches[slot];
        if let Some((store, identity)) = saved.filter(|_| reuse) {
            cache.restore_from(store, identity, ctx, &prep);
        }
        let prefill = cache.begin(ctx, &prep, reuse);
        let out = Output::for_request(&job.request, &mut prep, cache.n_ctx());
        running.push(Running {
            slot,
            sampler: Sampler::new(job.request.sampling),
            prompt_kept: prefill.kept,
            job,
            prep,
            prefill: Some(prefill),
            next_batch: 0,
            out,
            last: None,
            n_past: 0,
            admitted: Instant::now(),
            prompt_ms: 0.0,
            prompt_state: None,
            generating: None,
            width_sum: 0,
            steps: 0,
        });
    }
}

/// Decodes one prompt batch of the oldest request still reading its
/// prompt; at its prompt's end, samples its first token.
fn prompt_pass(
    running: &mut [Running],
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    caches: &mut [PromptCache],
    batch: &mut LlamaBatch,
) -> Result<(), EngineError> {
    let Some(r) = running
        .iter_mut()
        .find(|r| r.prefill.is_some() && r.out.finish.is_none())
    else {
        return Ok(());
    };
    let plan = r.prefill.as_ref().expect("found by its prefill");
    let range = plan.batches[r.next_batch].clone();
    let seq = caches[r.slot].seq();
    let started = Instant::now();
    let last = r.next_batch + 1 == plan.batches.len();
    let pass = caches[r.slot].pass_for(&range);
    let state = feed(
        ctx,
        batch,
        &r.prep.tokens[range.clone()],
        (range.start, seq),
        pass,
        last,
    )?;
    r.prompt_ms += started.elapsed().as_secs_f64() * 1e3;
    r.prompt_state = state;
    r.next_batch += 1;
    if r.next_batch < plan.batches.len() {
        return Ok(());
    }
    let plan = r.prefill.take().expect("checked above");
    caches[r.slot].finish(&r.prep, plan);
    r.generating = Some(Instant::now());
    r.n_past = r.prep.tokens.len();
    let first = r.sampler.pick(ctx.get_logits_ith(batch.n_tokens() - 1));
    if r.out.push(model, first) {
        r.last = Some(first.token);
    }
    Ok(())
}

/// Decodes every generating request's last token in one generated pass
/// and samples each one's next token.
fn decode_step(
    running: &mut [Running],
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
) -> Result<(), EngineError> {
    batch.clear();
    // In sequence order: llama.cpp puts only consecutive sequences in one
    // micro-batch.
    let mut members: Vec<usize> = (0..running.len())
        .filter(|&i| running[i].last.is_some() && running[i].out.finish.is_none())
        .collect();
    members.sort_by_key(|&i| running[i].slot);
    for &i in &members {
        let r = &running[i];
        let last = r.last.expect("filtered above");
        batch
            .add(
                LlamaToken(last as i32),
                r.n_past as i32,
                &[r.slot as i32],
                true,
            )
            .map_err(decode_err)?;
    }
    if members.is_empty() {
        return Ok(());
    }
    decode(ctx, batch, Pass::Generated)?;
    let width = members.len() as u64;
    for (k, &i) in members.iter().enumerate() {
        let r = &mut running[i];
        let pick = r.sampler.next(ctx.get_logits_ith(k as i32));
        r.n_past += 1;
        r.width_sum += width;
        r.steps += 1;
        r.last = r.out.push(model, pick).then_some(pick.token);
    }
    Ok(())
}

/// The answer to a request cancelled before it was admitted.
fn cancelled_before_start() -> Generation {
    Generation {
        text: String::new(),
        token_ids: Vec::new(),
        token_probs: Vec::new(),
        token_entropies: Vec::new(),
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
        finish: FinishReason::Cancelled,
        prompt_format: PromptFormat::ModelTemplate,
        prompt_ms: 0.0,
        generate_ms: 0.0,
        tokens_per_second: 0.0,
        speculative: None,
        batch_width: 1.0,
        verified: None,
        prompt_state: None,
    }
}
