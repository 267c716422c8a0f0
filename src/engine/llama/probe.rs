//! The probe child's work (`xnai-model-router probe-model FILE`): load a
//! model the way the engine does, with a small context, and decode a
//! short greedy answer through the same prompt, prefill and sampling
//! code. Whatever llama.cpp aborts on here, it aborts on in the child.

use super::{check_file, generate, load};
use crate::engine::{EngineError, GenerateRequest, LoadSpec};
use crate::probe::ProbeFacts;
use std::path::Path;
use std::time::Instant;

/// Context of the probe: enough for a chat-templated question.
const PROBE_CONTEXT: u32 = 256;
/// Tokens the probe generates after its prompt.
const PROBE_TOKENS: u32 = 4;

/// Loads the model at `path` in this process and decodes a few tokens.
///
/// # Errors
///
/// Whatever the engine reports: a file the Rust checks reject, a model or
/// context llama.cpp cannot create, a failed decode.
pub fn probe_here(path: &Path, threads: u32) -> Result<ProbeFacts, EngineError> {
    let spec = LoadSpec {
        name: "probe".into(),
        path: path.to_path_buf(),
        context: PROBE_CONTEXT,
        threads,
        mlock: false,
    };
    check_file(&spec, None)?;
    let (mut resident, load_ms, _) = load(&spec)?;
    let started = Instant::now();
    let request = GenerateRequest::greedy("Say hello.", PROBE_TOKENS);
    let answer = generate(&mut resident, None, &request, None)?;
    let decode_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(resident.with(|model, _, _| {
        let vocab = model.vocab();
        let special = |t: llama_cpp_2::token::LlamaToken| (t.0 >= 0).then_some(t.0);
        ProbeFacts {
            n_vocab: vocab.n_tokens() as u32,
            n_ctx_train: model.n_ctx_train(),
            n_embd: model.n_embd() as u32,
            n_layer: model.n_layer(),
            bos: special(vocab.bos()),
            eos: special(vocab.eos()),
            chat_template: answer.prompt_format == crate::engine::PromptFormat::ModelTemplate,
            decoded_tokens: answer.prompt_tokens + answer.completion_tokens,
            load_ms,
            decode_ms,
        }
    }))
}
