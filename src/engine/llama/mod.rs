//! The llama.cpp engine: one dedicated thread owns every model and context.
//!
//! llama.cpp contexts are not `Sync` and borrow their model, so they live on
//! the inference thread; async callers send [`Command`]s over a channel, each
//! carrying a oneshot for the reply. One thread is also the right amount of
//! parallelism: llama.cpp already spreads one decode over all its threads, and
//! two decodes at once on the same cores only slow each other down. Several
//! requests on one model share that thread's decodes instead: a model
//! loaded with several sequences steps all of its requests together
//! ([`batch`]), and the thread takes new commands between steps.
//!
//! Before a file is loaded, `check_file` runs the Rust GGUF checks and,
//! with a [`Prober`] (the binary's engines have one), the child-process
//! probe of [`crate::probe`]. Every command runs under `catch_unwind`: a
//! panic fails the request it was serving ([`EngineError::Panicked`]), the
//! models that request used forget their cached prompts, and the thread
//! goes on serving.

mod batch;
pub mod embed;
mod exactness;
mod prefix;
pub(super) use prefix::Fused;
pub use prefix::MIN_MESSAGE_BATCH;
mod probe;
mod prompt;
mod resident;
pub mod store;

use super::ggml_hook::{self, Pass};
use super::sampling::{Pick, Sampler};
use super::speculative;
use super::stop::StopSet;
use super::{
    EngineError, FinishReason, GenerateRequest, Generation, LoadSpec, LoadedModel, ModelId,
};
use crate::gguf;
use crate::probe::{Outcome, Prober};
use batch::{Batcher, Job};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
pub(super) use prefix::PromptCache;
pub use probe::probe_here;
pub use prompt::plain_prompt;
use prompt::prepare;
pub(super) use prompt::Prepared;
use resident::Resident;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Instant;
use store::{StateStore, StoreSettings};
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
    /// The prober its loads use, for the embedder's own load.
    prober: Option<Prober>,
}

impl Default for LlamaEngine {
    fn default() -> Self {
        Self::new()
    }
}

/// What the inference thread keeps besides its models.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Where unloaded models' KV states go (see [`store`]).
    pub store: Option<StoreSettings>,
    /// Probes each model file in a child process before loading it (see
    /// [`crate::probe`]).
    pub prober: Option<Prober>,
}

impl EngineSettings {
    /// The settings for a ladder, run from the binary at `exe` (the
    /// probe child is `exe probe-model`): KV states in the config's
    /// `cache` folder (unless its `max_bytes` is 0), files probed unless
    /// `probe.enabled` is false.
    pub fn for_config(config: &crate::config::Config, exe: PathBuf) -> Self {
        EngineSettings {
            store: Some(StoreSettings {
                dir: config.cache.dir.clone(),
                max_bytes: config.cache.max_bytes,
            }),
            prober: config
                .probe
                .enabled
                .then(|| Prober::new(exe, config.probe.dir.clone())),
        }
    }
}

impl LlamaEngine {
    /// Starts the inference thread, keeping no KV state across unloads and
    /// probing nothing. It ends when the last handle is dropped.
    pub fn new() -> Self {
        Self::start(EngineSettings::default())
    }

    /// Starts the inference thread; with `store`, unloaded models' KV
    /// states are kept there and restored (see [`store`]).
    pub fn with_store(store: Option<StoreSettings>) -> Self {
        Self::start(EngineSettings {
            store,
            prober: None,
        })
    }

    /// Starts the inference thread with `settings`.
    pub fn start(settings: EngineSettings) -> Self {
        let (tx, rx) = mpsc::channel();
        let prober = settings.prober.clone();
        std::thread::Builder::new()
            .name("xnai-llama".into())
            .spawn(move || {
                let store = settings.store.and_then(StateStore::new);
                worker(rx, store, settings.prober)
            })
            .expect("spawn the inference thread");
        LlamaEngine { tx, prober }
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

    fn embedder(&self, spec: LoadSpec) -> Option<crate::classify::assist::EmbedderFactory> {
        Some(embed::factory(spec, self.prober.clone()))
    }
}

fn worker(rx: mpsc::Receiver<Command>, store: Option<StateStore>, prober: Option<Prober>) {
    let mut models: HashMap<ModelId, Resident> = HashMap::new();
    let mut batches: HashMap<ModelId, Batcher> = HashMap::new();
    let mut next_id: ModelId = 1;
    loop {
        // With requests in flight, take only the commands already sent and
        // go on stepping; with none, wait for the next command.
        let cmd = if batches.values().all(Batcher::is_idle) {
            match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(cmd) => cmd,
                Err(_) => {
                    step_all(&mut models, &mut batches, store.as_ref());
                    continue;
                }
            }
        };
        match cmd {
            Command::Load(spec, reply) => {
                let result = contain(|| {
                    check_file(&spec, prober.as_ref())?;
                    load(&spec)
                })
                .map(|(mut resident, loaded_ms, context)| {
                    resident.identity = store::ModelIdentity::of(&spec.path);
                    let id = next_id;
                    next_id += 1;
                    models.insert(id, resident);
                    batches.insert(id, Batcher::new());
                    LoadedModel {
                        id,
                        load_ms: loaded_ms,
                        context,
                    }
                });
                let _ = reply.send(result);
            }
            Command::Unload(id, reply) => {
                if let Some(mut b) = batches.remove(&id) {
                    b.fail_all(|| EngineError::NotLoaded(id));
                }
                if let Some(mut r) = models.remove(&id) {
                    if let Some(store) = &store {
                        let _ = contain(|| {
                            r.save_state(store);
                            Ok(())
                        });
                    }
                    tracing::info!(tier = %r.name, "model unloaded");
                }
                let _ = reply.send(());
            }
            Command::Generate(id, request, reply) => {
                if joins_batch(&models, &batches, id, &request) {
                    let job = Job { request, reply };
                    batches.get_mut(&id).expect("a batch per model").push(job);
                    continue;
                }
                let result = contain(|| run_generate(&mut models, id, &request, store.as_ref()));
                if matches!(
                    result,
                    Err(EngineError::Panicked(_) | EngineError::Decode(_))
                ) {
                    forget_prompts(&mut models, id, &request);
                }
                let _ = reply.send(result);
            }
        }
    }
}

/// Whether a request goes to its model's batch rather than being decoded
/// on its own, to its end, now: it does when the model decodes several
/// requests together, unless it decodes speculatively and neither its
/// model nor its draft has anything else to do. Drafting serves one
/// request; a request that meets others decodes plainly among them.
fn joins_batch(
    models: &HashMap<ModelId, Resident>,
    batches: &HashMap<ModelId, Batcher>,
    id: ModelId,
    request: &GenerateRequest,
) -> bool {
    let Some(model) = models.get(&id) else {
        return false;
    };
    if model.sequences() == 1 {
        return false;
    }
    let idle = |m: &ModelId| batches.get(m).is_none_or(Batcher::is_idle);
    if request.verify.is_some() {
        // Verifying a lower answer takes passes of its own, when the model
        // is free; among others it decodes plainly, compared afterwards.
        return !idle(&id);
    }
    match request.speculation {
        super::Speculation::Off => true,
        super::Speculation::Ngram { .. } => !idle(&id),
        super::Speculation::Draft { model: d, .. } => {
            !idle(&id) || !idle(&d) || models.get(&d).is_none()
        }
    }
}

/// One step of every model with requests in flight. A step that fails
/// (or panics) fails the requests running in that model's batch, whose
/// caches are then forgotten; the waiting ones go on.
fn step_all(
    models: &mut HashMap<ModelId, Resident>,
    batches: &mut HashMap<ModelId, Batcher>,
    store: Option<&StateStore>,
) {
    for (id, b) in batches.iter_mut().filter(|(_, b)| !b.is_idle()) {
        let Some(r) = models.get_mut(id) else {
            b.fail_all(|| EngineError::NotLoaded(*id));
            continue;
        };
        let identity = r.identity.clone();
        let saved = store.zip(identity.as_ref());
        let stepped =
            contain(|| r.with_all(|model, ctx, caches| b.step(model, ctx, caches, saved)));
        if let Err(e) = stepped {
            let message = e.to_string();
            tracing::error!(tier = %r.name, error = %message, "a batched decode step failed; its requests fail");
            b.fail_running(|| match &e {
                EngineError::Panicked(p) => EngineError::Panicked(p.clone()),
                _ => EngineError::Decode(message.clone()),
            });
            r.forget();
        }
    }
}

/// Runs `f`, turning a panic into an error, so one request's bug fails
/// that request and the thread goes on serving the others.
fn contain<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(panicked(panic)))
}

/// The error for a caught panic, logged.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> EngineError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %what, "the inference thread caught a panic; the request failed");
    EngineError::Panicked(what)
}

/// After a generation that panicked or failed to decode, the models it
/// used forget their cached prompts: what their KV caches hold is no
/// longer known, and the next request starts from a clean cache.
fn forget_prompts(models: &mut HashMap<ModelId, Resident>, id: ModelId, req: &GenerateRequest) {
    let draft = match req.speculation {
        super::Speculation::Draft { model, .. } => Some(model),
        _ => None,
    };
    for m in std::iter::once(id).chain(draft) {
        if let Some(r) = models.get_mut(&m) {
            r.forget();
        }
    }
}

fn run_generate(
    models: &mut HashMap<ModelId, Resident>,
    id: ModelId,
    request: &GenerateRequest,
    store: Option<&StateStore>,
) -> Result<Generation, EngineError> {
    panic_if_injected();
    match request.speculation {
        super::Speculation::Draft { model: d, .. } if d == id => Err(EngineError::Decode(
            "a model cannot draft for itself".into(),
        )),
        super::Speculation::Draft { model: d, .. } => match models.get_disjoint_mut([&id, &d]) {
            [Some(t), Some(dr)] => generate(t, Some(dr), request, store),
            [None, _] => Err(EngineError::NotLoaded(id)),
            [_, None] => Err(EngineError::NotLoaded(d)),
        },
        _ => match models.get_mut(&id) {
            Some(r) => generate(r, None, request, store),
            None => Err(EngineError::NotLoaded(id)),
        },
    }
}

/// Set by [`panic_in_next_generate`].
static PANIC_NEXT: AtomicBool = AtomicBool::new(false);

/// Panics if a test asked for it ([`panic_in_next_generate`]).
fn panic_if_injected() {
    if PANIC_NEXT.swap(false, Ordering::SeqCst) {
        panic!("a panic injected by a test");
    }
}

/// Makes the next generation on any engine in this process panic on the
/// inference thread: the tests' way to show a panic fails one request and
/// nothing else.
#[doc(hidden)]
pub fn panic_in_next_generate() {
    PANIC_NEXT.store(true, Ordering::SeqCst);
}

/// The checks a model file passes before this process loads it: the Rust
/// GGUF checks, then (with a prober) a probe in a child process.
fn check_file(spec: &LoadSpec, prober: Option<&Prober>) -> Result<(), EngineError> {
    // llama.cpp aborts the process on some malformed files: check in Rust first.
    gguf::inspect(&spec.path).map_err(|e| EngineError::BadModel {
        tier: spec.name.clone(),
        path: spec.path.clone(),
        reason: e.to_string(),
    })?;
    let Some(prober) = prober else {
        return Ok(());
    };
    let checked = prober.check(&spec.path, spec.threads);
    match checked.verdict.outcome {
        Outcome::Ok { .. } => {
            if !checked.cached {
                tracing::info!(tier = %spec.name, path = %spec.path.display(), probe_ms = checked.verdict.probe_ms, "model file probed");
            }
            Ok(())
        }
        Outcome::Failed { cause } => Err(EngineError::ProbeFailed {
            tier: spec.name.clone(),
            path: spec.path.clone(),
            cause,
        }),
    }
}

fn load(spec: &LoadSpec) -> Result<(Resident, f64, u32), EngineError> {
    load_batched(spec, BATCH)
}

/// [`load`] with batches of `batch` tokens (the probe's are small).
fn load_batched(spec: &LoadSpec, batch: u32) -> Result<(Resident, f64, u32), EngineError> {
    let started = Instant::now();
    let backend = backend();
    let model = load_model(&spec.path, spec.mlock).ok_or_else(|| EngineError::LoadFailed {
        tier: spec.name.clone(),
        path: spec.path.clone(),
    })?;
    let threads = spec.threads.max(1) as i32;
    let sequences = spec.sequences.max(1);
    // Each sequence has a stream of its own (llama.cpp's default, not
    // unified): its tokens sit at the same cells as when it is decoded
    // alone, which keeps batched answers exact (see `batch`).
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(spec.context.saturating_mul(sequences)))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(sequences)
        .with_kv_unified(false)
        // Sliding-window layers keep every position, in order, like the
        // others: a cached prefix then meets the cache a cold run builds
        // (see `prefix`). The memory estimate already counts them in full.
        .with_swa_full(true)
        // Flash attention only where the hook keeps it exact in generated
        // passes (see `ggml_hook`).
        .with_flash_attention_policy(if ggml_hook::EXACT_FLASH_ATTENTION {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        })
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut resident = Resident::new(spec.name.clone(), model, sequences, |m| {
        m.new_context(backend, ctx_params)
            .map_err(|e| EngineError::ContextFailed {
                tier: spec.name.clone(),
                context: spec.context,
                reason: e.to_string(),
            })
    })?;
    let exact = !resident.has_window()
        && resident.with(|model, ctx, _| exactness::multi_token_exact(model, ctx))?;
    resident.set_multi_token_exact(exact);
    if !exact {
        tracing::info!(
            tier = %spec.name,
            "tokens decoded together get other logits than alone on this model: it drafts and verifies nothing, to stay exact"
        );
    }
    let context = resident.room();
    tracing::info!(tier = %spec.name, path = %spec.path.display(), context, "model loaded");
    Ok((resident, started.elapsed().as_secs_f64() * 1e3, context))
}

/// Loads `path` with llama.cpp's default model parameters except two:
/// mlock as asked (memory-mapped and locked), and `use_extra_bufts` off, so no weight is
/// repacked at load (Q4_0, Q4_K, IQ4_NL, ... on x86). A repacked matrix's
/// batched product takes its columns four at a time and the rest one by
/// one, with different arithmetic, so a token's logits would depend on its
/// place in the batch: speculative verification and the prompt cache would
/// no longer be exact. (`llama-cpp-2` exposes no setter for it, hence the
/// raw call.) None when llama.cpp cannot load the file.
fn load_model(path: &std::path::Path, mlock: bool) -> Option<LlamaModel> {
    let path = std::ffi::CString::new(path.to_str()?).ok()?;
    // SAFETY: no preconditions; returns llama.cpp's defaults by value.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_default_params() };
    if mlock {
        params.load_mode = llama_cpp_sys_2::LLAMA_LOAD_MODE_MMAP_MLOCK;
    }
    params.use_extra_bufts = false;
    // SAFETY: `path` is NUL-terminated and outlives the call; `params` is
    // llama.cpp's own default with two flags changed; the backend is
    // initialised (`backend()`, called by `load`).
    let raw = unsafe { llama_cpp_sys_2::llama_model_load_from_file(path.as_ptr(), params) };
    let raw = std::ptr::NonNull::new(raw)?;
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over a private
    // `#[repr(transparent)]` wrapper of `NonNull<llama_model>` that owns the
    // model and frees it on drop (llama-cpp-2, pinned with `=`; the engine's
    // tests check both declarations in the pinned source), and we own `raw`.
    Some(unsafe {
        std::mem::transmute::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>, LlamaModel>(raw)
    })
}

pub(super) fn decode_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Decode(e.to_string())
}

/// Decodes `tokens` of sequence `seq` from position `pos` in batches of
/// the context's n_batch as passes of the given kind, with logits for the
/// last token only, or for none (a prompt batch that is not its prompt's
/// last: the KV cache is the same, and no output row is computed). With
/// logits, returns the model's state at the last token where the hook
/// read it (see `ggml_hook::state`).
pub(super) fn feed(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    tokens: &[LlamaToken],
    (pos, seq): (usize, i32),
    pass: Pass,
    logits: bool,
) -> Result<Option<Vec<f32>>, EngineError> {
    let n_batch = ctx.n_batch() as usize;
    let last = tokens.len() - 1;
    let chunks = tokens.len().div_ceil(n_batch);
    for (c, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            let i = c * n_batch + j;
            batch
                .add(t, (pos + i) as i32, &[seq], logits && i == last)
                .map_err(decode_err)?;
        }
        if logits && c + 1 == chunks {
            return decode_reading_state(ctx, batch, pass);
        }
        decode(ctx, batch, pass)?;
    }
    Ok(None)
}

/// One `llama_decode` of `batch` as a pass of the given kind.
pub(super) fn decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    pass: Pass,
) -> Result<(), EngineError> {
    ggml_hook::in_pass(pass, || ctx.decode(batch)).map_err(decode_err)
}

/// [`decode`], returning the model's state at the batch's first token with
/// logits, where the hook read it.
pub(super) fn decode_reading_state(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    pass: Pass,
) -> Result<Option<Vec<f32>>, EngineError> {
    let (decoded, state) = ggml_hook::state::in_pass_reading_state(pass, || ctx.decode(batch));
    decoded.map_err(decode_err)?;
    Ok(state)
}

fn generate(
    r: &mut Resident,
    draft: Option<&mut Resident>,
    req: &GenerateRequest,
    store: Option<&StateStore>,
) -> Result<Generation, EngineError> {
    let saved = store.zip(r.identity.clone()).filter(|_| req.cache_prompt);
    let saved = saved.as_ref().map(|(s, id)| (*s, id));
    // A model whose tokens decode differently together than alone drafts
    // and verifies nothing (see `exactness`).
    let exact = r.multi_token_exact();
    match draft.filter(|_| exact) {
        None => {
            r.with(|model, ctx, cache| generate_with(model, (ctx, cache), None, req, saved, exact))
        }
        Some(d) => r.with(|model, ctx, cache| {
            d.with(|_, draft_ctx, draft_cache| {
                generate_with(
                    model,
                    (ctx, cache),
                    Some((draft_ctx, draft_cache)),
                    req,
                    saved,
                    exact,
                )
            })
        }),
    }
}

/// A context and its prompt cache.
pub(super) type Slot<'a, 'm> = (&'a mut LlamaContext<'m>, &'a mut PromptCache);

fn generate_with<'m>(
    model: &'m LlamaModel,
    (ctx, cache): Slot<'_, 'm>,
    draft: Option<Slot<'_, '_>>,
    req: &GenerateRequest,
    saved: Option<(&StateStore, &store::ModelIdentity)>,
    multi_token_exact: bool,
) -> Result<Generation, EngineError> {
    let mut prep = prepare(model, cache.n_ctx(), req)?;
    let started = Instant::now();
    let mut batch = LlamaBatch::new(ctx.n_batch() as usize, 1);
    if let Some((store, identity)) = saved {
        cache.restore_from(store, identity, ctx, &prep);
    }
    let mut out = Output::for_request(req, &mut prep, cache.n_ctx());
    // A lower answer to verify rides in the prompt's last pass where it can.
    let sizes = (
        prep.tokens.len(),
        cache.n_ctx() as usize,
        ctx.n_batch() as usize,
    );
    let lower = speculative::lower_tokens(model, req);
    let extra = speculative::first_round(lower.as_deref(), multi_token_exact, sizes, out.left());
    let prefix::Prefilled {
        kept: cached_tokens,
        fused,
        state,
    } = cache.prefill_with(ctx, &mut batch, &prep, req.cache_prompt, &extra)?;
    let fused_ms = fused.map_or(0.0, |f| f.ms);
    let prompt_ms = started.elapsed().as_secs_f64() * 1e3 - fused_ms;

    let gen_started = Instant::now();
    let mut sampler = Sampler::new(req.sampling);
    let last_logits = fused.map_or(batch.n_tokens() - 1, |f| f.offset - 1);
    let target = (ctx, cache.n_ctx() as usize);
    let (speculative, verified) = speculative::run(
        model,
        (target.0, target.1, multi_token_exact),
        draft,
        req,
        &prep,
        (last_logits, lower, fused),
        &mut sampler,
        &mut out,
    )?;
    let generate_ms = gen_started.elapsed().as_secs_f64() * 1e3 + fused_ms;
    let mut generation = out.into_generation(&prep, cached_tokens, prompt_ms, generate_ms);
    generation.speculative = speculative;
    generation.verified = verified;
    generation.prompt_state = state;
    Ok(generation)
}

/// The generated tokens as they are accepted: ids, probabilities, text, and
/// the reason to stop once there is one.
pub(super) struct Output {
    stops: StopSet,
    /// Most tokens to emit: max_tokens capped by the context's room.
    budget: usize,
    max_tokens: usize,
    ignore_eos: bool,
    cancel: super::Cancel,
    progress: super::Progress,
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
    pub entropies: Vec<f32>,
    pub text: Vec<u8>,
    pub finish: Option<FinishReason>,
}

impl Output {
    /// The output of `req`, whose prompt `prep` (its stop strings taken)
    /// fills part of a sequence of `n_ctx` tokens.
    fn for_request(req: &GenerateRequest, prep: &mut Prepared, n_ctx: u32) -> Self {
        let room = (n_ctx as usize).saturating_sub(prep.tokens.len());
        let budget = (req.max_tokens as usize).min(room);
        Output {
            stops: std::mem::take(&mut prep.stops),
            budget,
            max_tokens: req.max_tokens as usize,
            ignore_eos: req.ignore_eos,
            cancel: req.cancel.clone(),
            progress: req.progress.clone(),
            ids: Vec::with_capacity(budget),
            probs: Vec::with_capacity(budget),
            entropies: Vec::with_capacity(budget),
            text: Vec::new(),
            finish: None,
        }
    }

    /// The finished generation (not speculative): its text, tokens, counts
    /// and timings.
    fn into_generation(
        self,
        prep: &Prepared,
        cached_tokens: usize,
        prompt_ms: f64,
        generate_ms: f64,
    ) -> Generation {
        let completion_tokens = self.ids.len() as u32;
        Generation {
            text: String::from_utf8_lossy(&self.text).trim().to_string(),
            token_ids: self.ids,
            token_probs: self.probs,
            token_entropies: self.entropies,
            prompt_tokens: prep.tokens.len() as u32,
            cached_tokens: cached_tokens as u32,
            completion_tokens,
            finish: self.finish.unwrap_or(FinishReason::Length),
            prompt_format: prep.format,
            prompt_ms,
            generate_ms,
            tokens_per_second: if generate_ms > 0.0 {
                completion_tokens as f64 / (generate_ms / 1e3)
            } else {
                0.0
            },
            speculative: None,
            batch_width: 1.0,
            verified: None,
            prompt_state: None,
        }
    }

    /// Tokens that may still be emitted.
    pub fn left(&self) -> usize {
        self.budget.saturating_sub(self.ids.len())
    }

    /// Emits one token of `model`; returns false once generation must stop.
    pub fn push(&mut self, model: &LlamaModel, pick: Pick) -> bool {
        let token = pick.token;
        if self.finish.is_some() {
            return false;
        }
        if self.cancel.is_cancelled() {
            self.finish = Some(FinishReason::Cancelled);
            return false;
        }
        let t = LlamaToken(token as i32);
        if !self.ignore_eos && model.vocab().is_eog(t) {
            self.finish = Some(FinishReason::EndOfText);
            return false;
        }
        self.ids.push(token);
        self.probs.push(pick.prob);
        self.entropies.push(pick.entropy);
        self.progress.set(self.ids.len() as u32);
        let old_len = self.text.len();
        model
            .vocab()
            .token_to_piece_into(t, &mut self.text, false, None);
        if let Some(at) = self.stops.find(&self.text, old_len) {
            self.text.truncate(at);
            self.finish = Some(FinishReason::StopString);
            return false;
        }
        if self.ids.len() >= self.budget {
            self.finish = Some(if self.ids.len() >= self.max_tokens {
                FinishReason::Length
            } else {
                FinishReason::ContextFull
            });
            return false;
        }
        true
    }
}
