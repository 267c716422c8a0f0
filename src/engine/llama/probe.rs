//! The probe child's work (`xnai-model-router probe-model FILE`): load a
//! model the way the engine does, with a small context, render the chat
//! template and tokenize the prompt as a request would, then decode a few
//! of its tokens in a prompt pass and one greedy token in a generated
//! pass, and turn that token back into text. Whatever llama.cpp aborts on
//! along that path, it aborts on in the child.
//!
//! Only a few tokens are decoded: every weight is read once either way,
//! and the probe should cost about one load of the file.

use super::{decode, decode_err, feed, load_batched, prepare};
use crate::engine::ggml_hook::Pass;
use crate::engine::sampling::argmax;
use crate::engine::{EngineError, GenerateRequest, LoadSpec, PromptFormat};
use crate::probe::ProbeFacts;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use std::path::Path;
use std::time::Instant;

/// Context of the probe: enough for a chat-templated question.
const PROBE_CONTEXT: u32 = 256;
/// Tokens per batch: the probe's prompt fits in one, and a small batch
/// keeps llama.cpp's compute buffers (reserved for a full batch) small.
const PROBE_BATCH: u32 = 64;
/// Prompt tokens decoded (the rendered prompt's first ones).
const PROBE_PROMPT: usize = 4;

/// Loads the model at `path` in this process and decodes a few tokens.
/// The parent has run the Rust checks (`check_file`) before starting the
/// child, so they are not repeated here.
///
/// # Errors
///
/// Whatever the engine reports: a model or
/// context llama.cpp cannot create, a prompt it cannot render, a failed decode.
pub fn probe_here(path: &Path, threads: u32) -> Result<ProbeFacts, EngineError> {
    let spec = LoadSpec {
        name: "probe".into(),
        path: path.to_path_buf(),
        context: PROBE_CONTEXT,
        threads,
        mlock: false,
        sequences: 1,
    };
    let (mut resident, load_ms, _) = load_batched(&spec, PROBE_BATCH)?;
    let started = Instant::now();
    resident.with(|model, ctx, _| {
        let request = GenerateRequest::greedy("Say hello.", 1);
        let prep = prepare(model, ctx.n_ctx(), &request)?;
        let prompt = &prep.tokens[..prep.tokens.len().min(PROBE_PROMPT)];
        let mut batch = LlamaBatch::new(PROBE_BATCH as usize, 1);
        feed(ctx, &mut batch, prompt, (0, 0), Pass::Prompt, true)?;
        let next = LlamaToken(argmax(ctx.get_logits_ith(batch.n_tokens() - 1)).0 as i32);
        batch.clear();
        batch
            .add(next, prompt.len() as i32, &[0], true)
            .map_err(decode_err)?;
        decode(ctx, &mut batch, Pass::Generated)?;
        let mut text = Vec::new();
        model
            .vocab()
            .token_to_piece_into(next, &mut text, false, None);
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let vocab = model.vocab();
        let special = |t: LlamaToken| (t.0 >= 0).then_some(t.0);
        Ok(ProbeFacts {
            n_vocab: vocab.n_tokens() as u32,
            n_ctx_train: model.n_ctx_train(),
            n_embd: model.n_embd() as u32,
            n_layer: model.n_layer(),
            bos: special(vocab.bos()),
            eos: special(vocab.eos()),
            chat_template: prep.format == PromptFormat::ModelTemplate,
            decoded_tokens: prompt.len() as u32 + 1,
            load_ms,
            decode_ms,
        })
    })
}
