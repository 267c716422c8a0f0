//! The prompt cache of one context (llama-server's `cache_prompt`): which
//! prompt tokens its KV cache holds, how many of a new prompt's leading
//! tokens they cover, and how the rest is cut into batches.
//!
//! Exactness. llama.cpp's arithmetic for a prompt token depends on the batch
//! it is decoded in, not only on the token and what precedes it: measured
//! here, a suffix decoded in a smaller batch than a cold run used gives
//! logits that differ in the last bits on gemma-3 (its F16 attention
//! products), even though tinyBLAS alone is column-invariant. So a cached
//! run must decode every prompt position in the very batch a cold run
//! decodes it in. The rule: a prompt's batches start at each message's
//! first token (unless the batch in progress is still short) and every
//! `n_batch` tokens after a start (a function of the prompt alone,
//! [`batch_starts`]); a cache keeps a prefix only up to a
//! batch start on which its own prompt's batches and the new prompt's agree
//! ([`reusable`]). Messages shared by two turns of a conversation start at
//! the same tokens in both, so a new turn reuses everything up to the
//! previous turn's reply and decodes the rest as a cold run would, to the
//! bit. Tokens the model generated are never reused: they were computed
//! one at a time, not as prompt batches.
//!
//! The kind of pass a batch is decoded in is a function of the batch too
//! ([`PromptCache::pass_for`]): on a model whose generated passes are
//! exact (see `exactness`), a narrow batch near the start of the context
//! (a short question, the last message of a short chat) is decoded as a
//! generated pass, with the arithmetic every generated token gets. So a
//! lower tier's answer handed up for verification can ride in the prompt's
//! last batch ([`PromptCache::prefill_with`]) and be scored in the same
//! pass, and the prompt's positions still come out as a plain run's.

use super::prompt::Prepared;
use super::store::{ModelIdentity, StateStore};
use super::{decode_err, decode_reading_state, feed};
use crate::engine::ggml_hook::Pass;
use crate::engine::EngineError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use std::ops::Range;

/// One sequence slot of a context: its sequence id, the room it has
/// (the context's size over its sequences), the prompt tokens its KV cache
/// holds at positions `0..len`, and the starts of the batches they were
/// decoded in.
#[derive(Debug)]
pub struct PromptCache {
    seq: i32,
    n_ctx: u32,
    tokens: Vec<LlamaToken>,
    starts: Vec<usize>,
    /// Narrow batches near the start go in generated passes (the model's
    /// generated passes are exact).
    narrow_generated: bool,
}

/// Widest prompt batch decoded as a generated pass: the width up to which
/// the exact F32 kernel already computes prompt batches, so an F32 model
/// spends nothing on the change.
pub const GENERATED_BATCH_TOKENS: usize = crate::engine::ggml_hook::NARROW_PROMPT_COLUMNS as usize;

/// Furthest a batch decoded as a generated pass may reach: its attention
/// then runs ggml's reference path, one query row at a time over every
/// cell before it, which costs little over a few hundred cells and more
/// over thousands.
pub const GENERATED_BATCH_END: usize = 512;

/// The rule [`PromptCache::pass_for`] applies, saved with every KV state
/// (see `store`): a state decoded under another rule is not reused.
pub const PASS_RULE: u32 = 2;

/// What [`PromptCache::prefill_with`] decoded besides the prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fused {
    /// Batch index of the first extra token (the prompt's last token's
    /// logits sit just before it).
    pub offset: i32,
    /// Extra tokens decoded after the prompt, each with its logits.
    pub tokens: usize,
    /// Time of that last pass.
    pub ms: f64,
}

/// What [`PromptCache::prefill_with`] did.
pub struct Prefilled {
    /// Leading prompt tokens kept from the cache.
    pub kept: usize,
    /// Where the extra tokens were decoded, if they were.
    pub fused: Option<Fused>,
    /// The model's state at the prompt's last token, where the hook read
    /// it (see `ggml_hook::state`).
    pub state: Option<Vec<f32>>,
}

/// A prompt's batches still to decode after a cache kept what it could.
pub struct Prefill {
    /// Leading prompt tokens kept from the cache.
    pub kept: usize,
    /// The prompt's batches to decode, in order, as token ranges.
    pub batches: Vec<Range<usize>>,
    starts: Vec<usize>,
}

impl PromptCache {
    /// The empty cache of sequence `seq`, which holds up to `n_ctx` tokens.
    pub fn new(seq: i32, n_ctx: u32) -> Self {
        PromptCache {
            seq,
            n_ctx,
            tokens: Vec::new(),
            starts: Vec::new(),
            narrow_generated: false,
        }
    }

    /// Says whether the model's generated passes are exact, which lets
    /// narrow batches near the start go in generated passes
    /// ([`Self::pass_for`]).
    pub fn set_exact(&mut self, exact: bool) {
        self.narrow_generated = exact;
    }

    /// The pass a prompt batch over `range` is decoded in: a generated pass
    /// for a batch of at most [`GENERATED_BATCH_TOKENS`] tokens ending by
    /// [`GENERATED_BATCH_END`] on a model whose generated passes are exact,
    /// else a prompt pass. A function of the batch alone, so cached and
    /// cold runs decode each position alike.
    pub fn pass_for(&self, range: &Range<usize>) -> Pass {
        if self.narrow_generated
            && range.len() <= GENERATED_BATCH_TOKENS
            && range.end <= GENERATED_BATCH_END
        {
            Pass::Generated
        } else {
            Pass::Prompt
        }
    }

    /// The sequence id this cache's tokens sit in.
    pub fn seq(&self) -> i32 {
        self.seq
    }

    /// The most tokens this sequence holds.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The cached prompt tokens.
    pub fn tokens(&self) -> &[LlamaToken] {
        &self.tokens
    }

    /// The starts of the batches the cached tokens were decoded in.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Records that the context's KV cache now holds `tokens`, decoded in
    /// batches starting at `starts` (restored from a saved state).
    pub fn set(&mut self, tokens: Vec<LlamaToken>, starts: Vec<usize>) {
        self.tokens = tokens;
        self.starts = starts;
    }

    /// Forgets the cache (the context's KV cache is being cleared).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.starts.clear();
    }

    /// Restores a saved state from `store` into `ctx` when this cache is
    /// empty (the tier was just loaded, perhaps back after a swap) and a
    /// stored state lets `prompt` keep some of its tokens. Any failure
    /// leaves the cache empty and the prompt to be decoded cold.
    pub fn restore_from(
        &mut self,
        store: &StateStore,
        identity: &ModelIdentity,
        ctx: &mut LlamaContext<'_>,
        prompt: &Prepared,
    ) {
        // Saved states are sequence 0's (see `Resident::save_state`).
        if !self.tokens.is_empty() || self.seq != 0 {
            return;
        }
        let starts = batch_starts(
            prompt.tokens.len(),
            ctx.n_batch() as usize,
            &prompt.message_starts,
        );
        let score = |t: &[LlamaToken], s: &[usize]| reusable((t, s), (&prompt.tokens, &starts));
        let Some((key, entry, _)) = store.best(identity, 0, score) else {
            return;
        };
        let Some(tokens) = store.restore(&key, &entry, ctx) else {
            return;
        };
        // A sliding-window cache saves only its window; the positions it
        // restores then sit at other cells than a cold run's, which changes
        // the last bits, so such a state is not used (and not saved: see
        // `Resident::save_state`).
        if ctx.kv_cache_seq_pos_min(0) != 0 {
            tracing::debug!("a windowed KV state cannot be reused exactly; answering cold");
            clear_seq(ctx, 0);
            return;
        }
        tracing::debug!(tokens = tokens.len(), "KV state restored");
        self.set(tokens, entry.starts);
    }

    /// How many leading tokens of `prompt` this cache would keep.
    pub fn reusable_for(&self, prompt: &Prepared, n_batch: usize) -> usize {
        let starts = batch_starts(prompt.tokens.len(), n_batch, &prompt.message_starts);
        reusable((&self.tokens, &self.starts), (&prompt.tokens, &starts))
    }

    /// Brings `ctx`'s KV cache to `prompt`: keeps the reusable prefix
    /// (none unless `reuse`), decodes the rest in prompt passes. Returns
    /// the tokens kept.
    ///
    /// # Errors
    ///
    /// A llama.cpp decode failure; the cache is then empty.
    pub fn prefill(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
        prompt: &Prepared,
        reuse: bool,
    ) -> Result<usize, EngineError> {
        Ok(self.prefill_with(ctx, batch, prompt, reuse, &[])?.kept)
    }

    /// [`Self::prefill`], with `extra` tokens decoded after the prompt in
    /// its last pass, each with its logits, where that pass is a generated
    /// one ([`Self::pass_for`]) with room for them: a lower answer verified
    /// in the pass that ends the prompt. Returns the tokens kept, where
    /// `extra` was decoded if it was, and the model's state at the prompt's
    /// last token. The cache records the prompt only; the extra positions
    /// are the caller's to keep or drop.
    ///
    /// # Errors
    ///
    /// A llama.cpp decode failure; the cache is then empty.
    pub fn prefill_with(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
        prompt: &Prepared,
        reuse: bool,
        extra: &[LlamaToken],
    ) -> Result<Prefilled, EngineError> {
        let plan = self.begin(ctx, prompt, reuse);
        let mut fused = None;
        let mut state = None;
        // Callers' batches hold n_batch tokens.
        let room = ctx.n_batch() as usize;
        for (i, range) in plan.batches.iter().enumerate() {
            let tokens = &prompt.tokens[range.clone()];
            let last = i + 1 == plan.batches.len();
            let pass = self.pass_for(range);
            if last
                && !extra.is_empty()
                && pass == Pass::Generated
                && tokens.len() + extra.len() <= room
            {
                let t = std::time::Instant::now();
                state = decode_with_extra(ctx, batch, (tokens, extra), (range.start, self.seq))?;
                fused = Some(Fused {
                    offset: tokens.len() as i32,
                    tokens: extra.len(),
                    ms: t.elapsed().as_secs_f64() * 1e3,
                });
            } else {
                state = feed(ctx, batch, tokens, (range.start, self.seq), pass, last)?;
            }
        }
        let kept = plan.kept;
        self.finish(prompt, plan);
        Ok(Prefilled { kept, fused, state })
    }

    /// The first half of [`PromptCache::prefill`]: keeps the reusable
    /// prefix in the KV cache (none unless `reuse`), drops the rest, and
    /// returns the batches left to decode. The cache records nothing until
    /// [`PromptCache::finish`].
    pub fn begin(&mut self, ctx: &mut LlamaContext<'_>, prompt: &Prepared, reuse: bool) -> Prefill {
        let tokens = &prompt.tokens;
        let starts = batch_starts(tokens.len(), ctx.n_batch() as usize, &prompt.message_starts);
        let mut keep = if reuse {
            reusable((&self.tokens, &self.starts), (tokens, &starts))
        } else {
            0
        };
        self.clear();
        if keep == 0 || !trim(ctx, self.seq, keep) {
            clear_seq(ctx, self.seq);
            keep = 0;
        }
        let first = starts.partition_point(|&s| s < keep);
        let batches = (first..starts.len())
            .map(|i| starts[i]..starts.get(i + 1).copied().unwrap_or(tokens.len()))
            .collect();
        Prefill {
            kept: keep,
            batches,
            starts,
        }
    }

    /// Records that every batch of `plan` was decoded: the KV cache holds
    /// `prompt`.
    pub fn finish(&mut self, prompt: &Prepared, plan: Prefill) {
        self.set(prompt.tokens.clone(), plan.starts);
    }
}

/// Decodes a prompt's last batch `tokens` (logits for its last token only)
/// and `extra` after it (logits for each) at `pos` of sequence `seq`, in
/// one generated pass; returns the model's state at the prompt's last token.
fn decode_with_extra(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    (tokens, extra): (&[LlamaToken], &[LlamaToken]),
    (pos, seq): (usize, i32),
) -> Result<Option<Vec<f32>>, EngineError> {
    batch.clear();
    let last = tokens.len() - 1;
    for (i, &t) in tokens.iter().chain(extra).enumerate() {
        batch
            .add(t, (pos + i) as i32, &[seq], i >= last)
            .map_err(decode_err)?;
    }
    decode_reading_state(ctx, batch, Pass::Generated)
}

/// Empties sequence `seq` of `ctx`'s KV cache.
pub(super) fn clear_seq(ctx: &mut LlamaContext<'_>, seq: i32) {
    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
}

/// Drops every cached position from `keep` on; false where llama.cpp
/// cannot (a recurrent model's state) or the kept positions are not all
/// there (a sliding-window cache that already dropped some).
fn trim(ctx: &mut LlamaContext<'_>, seq: i32, keep: usize) -> bool {
    if ctx.kv_cache_seq_rm(seq, Some(keep as u32), None).is_err() {
        return false;
    }
    ctx.kv_cache_seq_pos_min(seq) == 0 && ctx.kv_cache_seq_pos_max(seq) == keep as i32 - 1
}

/// Fewest tokens a batch holds before a message start may open the next
/// one. Every batch reads all the weights once, so a run of short messages
/// (a chat's one-line turns, an agent's small tool results) is decoded
/// together rather than one memory-bound batch each; a cached turn then
/// recomputes at most this many tokens more.
pub const MIN_MESSAGE_BATCH: usize = 32;

/// The starts of a prompt's batches, all below `len`: 0; each of
/// `message_starts` that comes at least [`MIN_MESSAGE_BATCH`] tokens after
/// the batch in progress began; and `n_batch` tokens after any start. Each
/// start depends only on the tokens before it, so two prompts that share
/// their leading messages share those batches.
pub fn batch_starts(len: usize, n_batch: usize, message_starts: &[usize]) -> Vec<usize> {
    let mut messages: Vec<usize> = message_starts
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < len)
        .collect();
    messages.sort_unstable();
    messages.dedup();
    let mut out = Vec::new();
    let mut next_message = messages.into_iter().peekable();
    let mut start = 0;
    while start < len {
        out.push(start);
        let opens_batch = |s: &usize| *s >= start + MIN_MESSAGE_BATCH.min(n_batch);
        while next_message.next_if(|s| !opens_batch(s)).is_some() {}
        start = (start + n_batch.max(1)).min(next_message.peek().copied().unwrap_or(len));
    }
    out
}

/// How many leading tokens of a new prompt a cache can keep: the last batch
/// start on which the cached prompt's batches and the new one's agree (the
/// cached prompt's end counting as a start of its own), within their common
/// prefix and leaving at least one token to decode for the logits.
pub fn reusable<T: PartialEq>(
    (cached, cached_starts): (&[T], &[usize]),
    (prompt, starts): (&[T], &[usize]),
) -> usize {
    let common = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let limit = common.min(prompt.len().saturating_sub(1));
    let cached_starts = cached_starts.iter().copied().chain([cached.len()]);
    let mut keep = 0;
    for (a, b) in cached_starts.zip(starts.iter().copied()) {
        if a != b || b > limit {
            break;
        }
        keep = b;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_start_at_each_message_and_every_n_batch_tokens_after_it() {
        assert_eq!(batch_starts(10, 4, &[]), vec![0, 4, 8]);
        assert_eq!(batch_starts(10, 4, &[3, 9]), vec![0, 4, 8]);
        assert_eq!(batch_starts(14, 4, &[6, 11]), vec![0, 4, 8, 12]);
        assert_eq!(batch_starts(10, 512, &[3, 3, 12]), vec![0]);
        assert_eq!(batch_starts(1, 512, &[]), vec![0]);
        assert!(batch_starts(0, 512, &[]).is_empty());
        // Long messages each open a batch; n_batch cuts them.
        assert_eq!(batch_starts(1200, 512, &[100, 700]), vec![0, 100, 612, 700]);
    }

    #[test]
    fn short_messages_share_a_batch() {
        let m = MIN_MESSAGE_BATCH;
        // A short system prompt joins the first user message's batch...
        assert_eq!(batch_starts(600, 512, &[10, 600]), vec![0, 512]);
        // ...and a run of short turns is one batch, until it is long enough.
        let short: Vec<usize> = (1..20).map(|i| i * 5).collect();
        let starts = batch_starts(200, 512, &short);
        let step = m.div_ceil(5) * 5;
        assert_eq!(starts, vec![0, step, 2 * step]);
        // A longer prompt with the same leading messages has the same
        // leading batches.
        let mut more = short.clone();
        more.extend([200, 260]);
        assert_eq!(batch_starts(300, 512, &more)[..starts.len()], starts[..]);
    }

    #[test]
    fn a_new_turn_reuses_the_previous_prompt_up_to_a_shared_batch_start() {
        // Turn 1: system (0..40), user (40..80); turn 2 adds the reply and a
        // new question, whose batches start at 80 and 120.
        let turn1: Vec<i32> = [vec![1; 40], vec![2; 40]].concat();
        let turn2: Vec<i32> = [turn1.clone(), vec![3; 40], vec![4; 40]].concat();
        let (s1, s2) = (
            batch_starts(80, 64, &[40]),
            batch_starts(160, 64, &[40, 80, 120]),
        );
        assert_eq!(s1, vec![0, 40]);
        assert_eq!(s2, vec![0, 40, 80, 120]);
        // Everything the first turn decoded: its end is a start in turn 2.
        assert_eq!(reusable((&turn1[..], &s1[..]), (&turn2[..], &s2[..])), 80);
        // The same prompt again: up to the last batch start.
        assert_eq!(reusable((&turn2[..], &s2[..]), (&turn2[..], &s2[..])), 120);
        // A prompt that diverges inside a batch keeps the batches before it.
        let other: Vec<i32> = [vec![1; 40], vec![2; 30], vec![9; 40]].concat();
        let so = batch_starts(110, 64, &[40, 70]);
        assert_eq!(reusable((&turn2[..], &s2[..]), (&other[..], &so[..])), 40);
        // Batches that disagree stop the reuse even where tokens agree.
        let shifted = batch_starts(160, 64, &[50, 90, 130]);
        assert_eq!(
            reusable((&turn2[..], &s2[..]), (&turn2[..], &shifted[..])),
            0
        );
        assert_eq!(reusable::<i32>((&[], &[]), (&turn2[..], &s2[..])), 0);
    }

    #[test]
    fn narrow_batches_near_the_start_are_generated_passes_on_exact_models() {
        let mut cache = PromptCache::new(0, 4096);
        let narrow = 0..GENERATED_BATCH_TOKENS;
        assert_eq!(cache.pass_for(&narrow), Pass::Prompt, "not yet known exact");
        cache.set_exact(true);
        assert_eq!(cache.pass_for(&narrow), Pass::Generated);
        let end = GENERATED_BATCH_END;
        assert_eq!(cache.pass_for(&(end - 4..end)), Pass::Generated);
        assert_eq!(cache.pass_for(&(end - 4..end + 1)), Pass::Prompt, "too far");
        assert_eq!(
            cache.pass_for(&(0..GENERATED_BATCH_TOKENS + 1)),
            Pass::Prompt,
            "too wide"
        );
        cache.set_exact(false);
        assert_eq!(cache.pass_for(&narrow), Pass::Prompt);
    }

    #[test]
    fn reuse_always_leaves_a_token_to_decode() {
        let p = [5, 6, 7, 8];
        let s = batch_starts(4, 2, &[]);
        assert_eq!(reusable((&p[..], &s[..]), (&p[..], &s[..])), 2);
        let one = [5];
        let s1 = batch_starts(1, 2, &[]);
        assert_eq!(reusable((&one[..], &s1[..]), (&one[..], &s1[..])), 0);
    }
}
