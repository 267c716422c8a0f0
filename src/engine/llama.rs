//! The llama.cpp engine: one dedicated thread owns every model and context.
//!
//! llama.cpp contexts are not `Sync` and borrow their model, so they live on
//! the inference thread; async callers send [`Command`]s over a channel, each
//! carrying a oneshot for the reply. One thread is also the right amount of
//! parallelism: llama.cpp already spreads one decode over all its threads, and
//! two decodes at once on the same cores only slow each other down.

use super::sampling::Sampler;
use super::stop::StopSet;
use super::{
    EngineError, FinishReason, GenerateRequest, Generation, LoadSpec, LoadedModel, Message,
    ModelId, PromptFormat,
};
use crate::gguf;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Instant;
use tokio::sync::oneshot;

/// Tokens per llama.cpp batch (and micro-batch) when processing a prompt.
const BATCH: u32 = crate::estimate::UBATCH;

/// llama.cpp's backend is process-wide: initialised once, never freed.
static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The process's llama.cpp backend, initialised on first use with llama.cpp's
/// own logging routed to `tracing` (so stdout stays clean for MCP).
pub fn backend() -> &'static LlamaBackend {
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("llama.cpp backend initialises once per process")
    })
}

enum Command {
    Load(LoadSpec, oneshot::Sender<Result<LoadedModel, EngineError>>),
    Unload(ModelId, oneshot::Sender<()>),
    Generate(
        ModelId,
        Box<GenerateRequest>,
        oneshot::Sender<Result<Generation, EngineError>>,
    ),
}

/// Handle to the inference thread. Cloning shares the thread.
#[derive(Clone)]
pub struct LlamaEngine {
    tx: mpsc::Sender<Command>,
}

impl Default for LlamaEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl LlamaEngine {
    /// Starts the inference thread. It ends when the last handle is dropped.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("xnai-llama".into())
            .spawn(move || worker(rx))
            .expect("spawn the inference thread");
        LlamaEngine { tx }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }
}

impl super::Engine for LlamaEngine {
    async fn load(&self, spec: LoadSpec) -> Result<LoadedModel, EngineError> {
        self.call(|r| Command::Load(spec, r)).await?
    }

    async fn unload(&self, id: ModelId) {
        let _ = self.call(|r| Command::Unload(id, r)).await;
    }

    async fn generate(
        &self,
        id: ModelId,
        request: GenerateRequest,
    ) -> Result<Generation, EngineError> {
        self.call(|r| Command::Generate(id, Box::new(request), r))
            .await?
    }
}

/// A loaded model with its context.
///
/// The context borrows the model; both live in one struct on the inference
/// thread. SAFETY: `ctx` is declared first so it drops before `model`, and the
/// model is boxed so its address never moves while the context points at it.
struct Resident {
    ctx: LlamaContext<'static>,
    model: Box<LlamaModel>,
    name: String,
}

fn worker(rx: mpsc::Receiver<Command>) {
    let mut models: HashMap<ModelId, Resident> = HashMap::new();
    let mut next_id: ModelId = 1;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Load(spec, reply) => {
                let result = load(&spec).map(|(resident, loaded_ms, context)| {
                    let id = next_id;
                    next_id += 1;
                    models.insert(id, resident);
                    LoadedModel {
                        id,
                        load_ms: loaded_ms,
                        context,
                    }
                });
                let _ = reply.send(result);
            }
            Command::Unload(id, reply) => {
                if let Some(r) = models.remove(&id) {
                    tracing::info!(tier = %r.name, "model unloaded");
                }
                let _ = reply.send(());
            }
            Command::Generate(id, request, reply) => {
                let result = match models.get_mut(&id) {
                    Some(r) => generate(r, &request),
                    None => Err(EngineError::NotLoaded(id)),
                };
                let _ = reply.send(result);
            }
        }
    }
}

fn load(spec: &LoadSpec) -> Result<(Resident, f64, u32), EngineError> {
    let started = Instant::now();
    // llama.cpp aborts the process on some malformed files: check in Rust first.
    gguf::inspect(&spec.path).map_err(|e| EngineError::BadModel {
        tier: spec.name.clone(),
        path: spec.path.clone(),
        reason: e.to_string(),
    })?;
    let backend = backend();
    let params = LlamaModelParams::default().with_use_mlock(spec.mlock);
    let model = LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|_| {
        EngineError::LoadFailed {
            tier: spec.name.clone(),
            path: spec.path.clone(),
        }
    })?;
    let model = Box::new(model);
    // SAFETY: see `Resident`: the box outlives the context that borrows it.
    let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };
    let threads = spec.threads.max(1) as i32;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(spec.context))
        .with_n_batch(BATCH)
        .with_n_ubatch(BATCH)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx =
        model_ref
            .new_context(backend, ctx_params)
            .map_err(|e| EngineError::ContextFailed {
                tier: spec.name.clone(),
                context: spec.context,
                reason: e.to_string(),
            })?;
    let context = ctx.n_ctx();
    tracing::info!(tier = %spec.name, path = %spec.path.display(), context, "model loaded");
    Ok((
        Resident {
            ctx,
            model,
            name: spec.name.clone(),
        },
        started.elapsed().as_secs_f64() * 1e3,
        context,
    ))
}

fn apply_template(
    model: &LlamaModel,
    tmpl: &LlamaChatTemplate,
    messages: &[Message],
) -> Option<String> {
    let chat: Vec<LlamaChatMessage> = messages
        .iter()
        .filter_map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()).ok())
        .collect();
    model
        .apply_chat_template(tmpl, &chat, true)
        .map_err(|e| tracing::warn!(error = %e, "chat template could not be applied"))
        .ok()
}

/// Renders the conversation with the model's chat template, or as plain
/// `User:/Assistant:` text when the GGUF carries none (base models such as
/// the Gemma 3 270M file here) or llama.cpp cannot apply it.
fn render_prompt(model: &LlamaModel, messages: &[Message]) -> (String, PromptFormat) {
    match model
        .chat_template(None)
        .ok()
        .and_then(|t| apply_template(model, &t, messages))
    {
        Some(p) => (p, PromptFormat::ModelTemplate),
        None => (plain_prompt(messages), PromptFormat::Plain),
    }
}

/// The fallback layout for models without a chat template.
pub fn plain_prompt(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let who = match m.role.as_str() {
            "system" => "System",
            "assistant" => "Assistant",
            _ => "User",
        };
        out.push_str(who);
        out.push_str(": ");
        out.push_str(m.content.trim());
        out.push('\n');
    }
    out.push_str("Assistant:");
    out
}

fn decode_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Decode(e.to_string())
}

fn generate(r: &mut Resident, req: &GenerateRequest) -> Result<Generation, EngineError> {
    let model: &LlamaModel = &r.model;
    let vocab = model.vocab();
    let (prompt, prompt_format) = render_prompt(model, &req.messages);
    // Plain prompts would otherwise run on into a made-up next turn.
    let mut stops = req.stop.clone();
    if prompt_format == PromptFormat::Plain {
        stops.push("\nUser:".into());
    }
    let stop_set = StopSet::new(&stops);
    let mut tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    // Templates that spell out BOS themselves would get a second one.
    if tokens.len() >= 2 && tokens[0] == tokens[1] && tokens[0] == vocab.bos() {
        tokens.remove(0);
    }
    let n_ctx = r.ctx.n_ctx();
    if tokens.len() + 1 >= n_ctx as usize {
        return Err(EngineError::PromptTooLong {
            tokens: tokens.len(),
            context: n_ctx,
        });
    }

    let started = Instant::now();
    r.ctx.clear_kv_cache();
    // llama.cpp caps n_batch at the context size: chunk by what it allocated.
    let n_batch = r.ctx.n_batch() as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    let last = tokens.len() - 1;
    for (c, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            let pos = c * n_batch + j;
            batch
                .add(t, pos as i32, &[0], pos == last)
                .map_err(decode_err)?;
        }
        r.ctx.decode(&mut batch).map_err(decode_err)?;
    }
    let prompt_ms = started.elapsed().as_secs_f64() * 1e3;

    let gen_started = Instant::now();
    let mut sampler = Sampler::new(req.sampling);
    let room = n_ctx as usize - tokens.len();
    let budget = (req.max_tokens as usize).min(room);
    let mut pos = tokens.len() as i32;
    let mut logits_idx = batch.n_tokens() - 1;
    let mut ids = Vec::with_capacity(budget);
    let mut probs = Vec::with_capacity(budget);
    let mut text: Vec<u8> = Vec::new();
    let finish = loop {
        if req.cancel.is_cancelled() {
            break FinishReason::Cancelled;
        }
        let pick = sampler.pick(r.ctx.get_logits_ith(logits_idx));
        let token = LlamaToken(pick.token as i32);
        if !req.ignore_eos && vocab.is_eog(token) {
            break FinishReason::EndOfText;
        }
        ids.push(pick.token);
        probs.push(pick.prob);
        let old_len = text.len();
        vocab.token_to_piece_into(token, &mut text, false, None);
        if let Some(at) = stop_set.find(&text, old_len) {
            text.truncate(at);
            break FinishReason::StopString;
        }
        if ids.len() >= budget {
            break if ids.len() >= req.max_tokens as usize {
                FinishReason::Length
            } else {
                FinishReason::ContextFull
            };
        }
        batch.clear();
        batch.add(token, pos, &[0], true).map_err(decode_err)?;
        r.ctx.decode(&mut batch).map_err(decode_err)?;
        pos += 1;
        logits_idx = 0;
    };
    let generate_ms = gen_started.elapsed().as_secs_f64() * 1e3;
    let completion_tokens = ids.len() as u32;
    Ok(Generation {
        text: String::from_utf8_lossy(&text).trim().to_string(),
        token_ids: ids,
        token_probs: probs,
        prompt_tokens: tokens.len() as u32,
        completion_tokens,
        finish,
        prompt_format,
        prompt_ms,
        generate_ms,
        tokens_per_second: if generate_ms > 0.0 {
            completion_tokens as f64 / (generate_ms / 1e3)
        } else {
            0.0
        },
    })
}
