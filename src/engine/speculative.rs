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

use super::llama::{decode_err, feed, Output};
use super::ngram;
use super::sampling::{accept_or_resample, argmax, draw, raw_prob, Sampler};
use super::{EngineError, SpecParams, SpecStats, Speculation};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
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

/// Generates into `out`, starting from the prompt's logits at index
/// `first_logits` of the target's last batch. Returns the speculative
/// counters (None for plain decoding).
///
/// # Errors
///
/// A llama.cpp decode failure.
pub(super) fn run(
    target: &mut LlamaContext<'_>,
    mut draft: Option<&mut LlamaContext<'_>>,
    speculation: Speculation,
    prompt: &[LlamaToken],
    first_logits: i32,
    sampler: &mut Sampler,
    out: &mut Output,
) -> Result<Option<SpecStats>, EngineError> {
    let (params, mode) = match speculation {
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
    // Whether the draft model still drafts: it stops for good when its own
    // context (possibly smaller than the target's) would overflow.
    let mut use_draft = mode == Mode::DraftModel;
    let greedy = sampler.is_greedy();
    let n_ctx = target.n_ctx() as usize;
    let mut stats = SpecStats {
        mode: mode.name().to_string(),
        ..SpecStats::default()
    };
    let report = |stats: SpecStats| (mode != Mode::Plain).then_some(stats);

    let first = sampler.pick(target.get_logits_ith(first_logits));
    if !out.push(first.token, first.prob) {
        return Ok(report(stats));
    }
    let first = first.token;
    let mut id_last = first;
    let mut n_past = prompt.len();
    let mut history: Vec<u32> = Vec::new();
    if mode == Mode::Ngram {
        history.extend(prompt.iter().map(|t| t.0 as u32));
        history.push(first);
    }

    // The draft model's state: what it must still be fed, and where.
    let mut d_pending: Vec<LlamaToken> = Vec::new();
    let mut d_past = 0usize;
    if let Some(d) = draft.as_deref_mut().filter(|_| use_draft) {
        d.clear_kv_cache();
        d_pending.extend_from_slice(prompt);
        d_pending.push(LlamaToken(first as i32));
    }
    let mut dbatch = draft
        .as_deref()
        .map(|d| LlamaBatch::new(d.n_batch() as usize, 1));
    let mut tbatch = LlamaBatch::new(params.draft_max as usize + 1, 1);
    let mut k = params.draft_max as usize;
    let mut drafts: Vec<u32> = Vec::with_capacity(k);
    let mut qdists: Vec<Vec<f32>> = Vec::new();

    loop {
        // At most as many drafts as can still be emitted, and as fit.
        let k_eff = k
            .min(out.left().saturating_sub(1))
            .min(n_ctx.saturating_sub(n_past + 2));
        drafts.clear();
        qdists.clear();
        let n_past_old = n_past;

        // 1. Draft.
        if let Some(d) = draft.as_deref().filter(|_| use_draft) {
            if d_past + d_pending.len() + k_eff + 1 >= d.n_ctx() as usize {
                use_draft = false;
            }
        }
        if let (true, Some(d), Some(db)) = (use_draft, draft.as_deref_mut(), dbatch.as_mut()) {
            let t = Instant::now();
            feed(d, db, &d_pending, d_past)?;
            d_past += d_pending.len();
            d_pending.clear();
            let mut idx = db.n_tokens() - 1;
            for i in 0..k_eff {
                let logits = d.get_logits_ith(idx);
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
                    db.clear();
                    db.add(LlamaToken(tok as i32), d_past as i32, &[0], true)
                        .map_err(decode_err)?;
                    d.decode(db).map_err(decode_err)?;
                    d_past += 1;
                    idx = 0;
                }
            }
            stats.draft_ms += t.elapsed().as_secs_f64() * 1e3;
        } else if mode == Mode::Ngram {
            drafts.extend(ngram::draft(&history, k_eff));
        }

        // 2. Verify: the last token and the drafts in one target batch.
        let t = Instant::now();
        tbatch.clear();
        tbatch
            .add(LlamaToken(id_last as i32), n_past as i32, &[0], true)
            .map_err(decode_err)?;
        for (j, &tok) in drafts.iter().enumerate() {
            tbatch
                .add(LlamaToken(tok as i32), (n_past + 1 + j) as i32, &[0], true)
                .map_err(decode_err)?;
        }
        target.decode(&mut tbatch).map_err(decode_err)?;

        // 3. Accept the agreeing prefix, then the target's own token.
        let mut m = 0;
        let mut stopped = false;
        for i in 0..=drafts.len() {
            let logits = target.get_logits_ith(i as i32);
            let (tok, prob, accepted) = if greedy {
                let p = sampler.pick(logits);
                (p.token, p.prob, i < drafts.len() && p.token == drafts[i])
            } else {
                let p = sampler.distribution(logits);
                let (tok, acc) = match drafts.get(i) {
                    Some(&x) if use_draft => {
                        let (tok, acc) =
                            accept_or_resample(&p, &qdists[i], x as usize, sampler.rng());
                        (tok as u32, acc)
                    }
                    Some(&x) => {
                        // An n-gram draft is a point mass: keep it with
                        // probability p(x), else draw from p without x.
                        if sampler.rng().next_f32() < p[x as usize] {
                            (x, true)
                        } else {
                            let mut rest = p;
                            rest[x as usize] = 0.0;
                            (draw(&rest, sampler.rng()) as u32, false)
                        }
                    }
                    None => (draw(&p, sampler.rng()) as u32, false),
                };
                (tok, raw_prob(logits, tok as usize), acc)
            };
            if !out.push(tok, prob) {
                stopped = true;
                break;
            }
            if mode == Mode::Ngram {
                history.push(tok);
            }
            id_last = tok;
            if !accepted {
                break;
            }
            m += 1;
        }
        stats.verify_ms += t.elapsed().as_secs_f64() * 1e3;
        if mode != Mode::Plain {
            stats.passes += 1;
            stats.drafted += drafts.len() as u32;
            stats.accepted += m as u32;
        }
        if stopped {
            break;
        }

        // 4. Roll both caches back to what was accepted.
        n_past = n_past_old + m + 1;
        if !drafts.is_empty() && m < drafts.len() {
            target
                .kv_cache_seq_rm(0, Some(n_past as u32), None)
                .map_err(decode_err)?;
        }
        if use_draft {
            let keep = n_past.min(d_past);
            if keep < d_past {
                if let Some(d) = draft.as_deref_mut() {
                    d.kv_cache_seq_rm(0, Some(keep as u32), None)
                        .map_err(decode_err)?;
                }
            }
            d_pending.extend(
                drafts[(keep - n_past_old - 1).min(m)..m]
                    .iter()
                    .map(|&t| LlamaToken(t as i32)),
            );
            d_pending.push(LlamaToken(id_last as i32));
            d_past = keep;
        }
        if params.adaptive && !drafts.is_empty() {
            let max = params.draft_max as usize;
            let min = (params.draft_min as usize).max(1);
            k = if m == drafts.len() {
                (k + 2).min(max)
            } else {
                (k + m).div_ceil(2).clamp(min, max)
            };
        }
    }
    if stats.drafted > 0 {
        stats.acceptance_rate = stats.accepted as f64 / stats.drafted as f64;
    }
    if stats.passes > 0 {
        stats.mean_accepted_per_pass = out.ids.len() as f64 / stats.passes as f64;
    }
    Ok(report(stats))
}
