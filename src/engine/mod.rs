//! The inference engine behind a trait: load a model, generate, unload.
//!
//! The real engine ([`llama::LlamaEngine`]) runs llama.cpp on a dedicated
//! thread that owns every model and context; [`fake::FakeEngine`] is a
//! scripted stand-in for fast policy and protocol tests. Callers (the pool,
//! the `ask` command, the MCP layer) only see this trait. [`speculative`] is
//! the decoding loop; [`ggml_hook`] takes ggml's matrix product hook: a
//! batched F32 kernel for verification batches, bit-identical to the
//! single-token path, and quantized kernels (Q4_1, Q8_0) that speed up a
//! draft's decoding, bit-identical to ggml's.

pub mod fake;
pub mod ggml_hook;
pub mod llama;
pub mod ngram;
pub mod sampling;
pub mod speculative;
pub mod stop;

pub use sampling::Sampling;

use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Handle of a model loaded by an engine.
pub type ModelId = u64;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Tier name, for messages.
    pub name: String,
    pub path: PathBuf,
    pub context: u32,
    pub threads: u32,
    pub mlock: bool,
    /// Requests the model decodes together, each in its own KV sequence
    /// of `context` tokens (`server.max_batch`); 1 decodes one at a time.
    pub sequences: u32,
}

impl LoadSpec {
    /// The spec of an embedder on tier `t`'s model: its name and file, one
    /// sequence, never locked in memory (the embedder runs one thread).
    pub fn for_embeddings(t: &crate::config::Tier) -> Self {
        LoadSpec {
            name: t.name.clone(),
            path: t.model.clone(),
            context: t.context,
            threads: t.threads,
            mlock: false,
            sequences: 1,
        }
    }
}

/// A loaded model, as the engine reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedModel {
    pub id: ModelId,
    pub load_ms: f64,
    /// The context size llama.cpp actually allocated.
    pub context: u32,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// A flag a caller sets to stop a generation at the next token; waiting
/// for a queue slot or a model ends too.
#[derive(Debug, Clone, Default)]
pub struct Cancel(tokio_util::sync::CancellationToken);

impl Cancel {
    pub fn cancel(&self) {
        self.0.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }

    /// Cancelled with `parent` (and on its own).
    pub fn child_of(parent: &tokio_util::sync::CancellationToken) -> Self {
        Cancel(parent.child_token())
    }
}

/// Tokens emitted so far by a running generation, for progress reports.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU32>);

impl Progress {
    pub fn set(&self, tokens: u32) {
        self.0.store(tokens, Ordering::Relaxed);
    }

    pub fn tokens(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Speculative decoding knobs, per tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecParams {
    pub draft_max: u32,
    pub draft_min: u32,
    /// Stop drafting when the draft's probability of its token is below this.
    pub p_min: f32,
    pub adaptive: bool,
}

impl Default for SpecParams {
    fn default() -> Self {
        SpecParams {
            draft_max: 8,
            draft_min: 1,
            p_min: 0.0,
            adaptive: false,
        }
    }
}

/// How tokens are drafted for the target to verify.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Speculation {
    /// Plain decoding, one token per target pass.
    #[default]
    Off,
    /// A smaller model with the same vocabulary drafts.
    Draft { model: ModelId, params: SpecParams },
    /// Prompt lookup: n-grams of the prompt and the text so far draft.
    Ngram { params: SpecParams },
}

/// What speculative decoding did during one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SpecStats {
    /// `draft_model` or `ngram`.
    pub mode: String,
    /// Target passes (verification batches).
    pub passes: u32,
    pub drafted: u32,
    pub accepted: u32,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// Tokens emitted per target pass (accepted drafts plus the target's own).
    pub mean_accepted_per_pass: f64,
    pub draft_ms: f64,
    pub verify_ms: f64,
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks only).
    pub ignore_eos: bool,
    pub cancel: Cancel,
    /// Updated with the number of tokens emitted as they are emitted.
    pub progress: Progress,
    pub speculation: Speculation,
    /// Reuse the tier's cached prompt prefix (the default); false computes
    /// the whole prompt, as a cold run (benchmarks, comparisons).
    pub cache_prompt: bool,
    /// A lower tier's answer to this same conversation, to verify first: it
    /// is tokenised in this model's vocabulary and scored as this model's
    /// own continuation in one pass; the agreeing prefix is kept and
    /// decoding goes on from the first disagreement, with the rest of the
    /// answer as a lookup draft (see [`speculative`]). The output is what
    /// this model would generate without it.
    pub verify: Option<String>,
}

impl GenerateRequest {
    /// A greedy request for one user message.
    pub fn greedy(question: &str, max_tokens: u32) -> Self {
        Self::new(vec![Message::new("user", question)], max_tokens)
    }

    /// A greedy request for `messages`, with no stop strings, no
    /// cancellation, no progress and no speculation: set what differs.
    pub fn new(messages: Vec<Message>, max_tokens: u32) -> Self {
        GenerateRequest {
            messages,
            max_tokens,
            sampling: Sampling::Greedy,
            stop: Vec::new(),
            ignore_eos: false,
            cancel: Cancel::default(),
            progress: Progress::default(),
            speculation: Speculation::Off,
            cache_prompt: true,
            verify: None,
        }
    }
}

/// Why generation ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-generation token.
    EndOfText,
    /// `max_tokens` reached.
    Length,
    /// A stop string appeared.
    StopString,
    /// The context filled up.
    ContextFull,
    Cancelled,
}

/// How the prompt was formatted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// The chat template stored in the GGUF.
    ModelTemplate,
    /// A plain `User:/Assistant:` layout: the model has no usable template.
    Plain,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Probability of every generated token under the model, each in (0, 1].
    pub token_probs: Vec<f32>,
    /// Entropy (nats) of the next-token distribution each token came from.
    #[serde(default)]
    pub token_entropies: Vec<f32>,
    pub prompt_tokens: u32,
    /// Leading prompt tokens whose KV state was reused (prompt cache or a
    /// restored state) instead of computed.
    #[serde(default)]
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub finish: FinishReason,
    pub prompt_format: PromptFormat,
    /// Time to process the prompt.
    pub prompt_ms: f64,
    /// Time from the end of the prompt to the last token.
    pub generate_ms: f64,
    /// Generated tokens per second of `generate_ms`.
    pub tokens_per_second: f64,
    /// Drafting and verification counts when decoding was speculative.
    pub speculative: Option<SpecStats>,
    /// Mean number of requests in the decode steps that produced this
    /// answer's tokens (1 when it was decoded on its own).
    #[serde(default = "one")]
    pub batch_width: f64,
    /// What became of a lower tier's answer given to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<VerifyStats>,
    /// The model's state after the prompt (its final norm's output at the
    /// prompt's last token), where the engine could read it: what the
    /// confidence's state probe reads (see `confidence::state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_state: Option<Vec<f32>>,
}

/// A verified handoff, as the engine saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VerifyStats {
    /// The lower answer's tokens in this model's vocabulary.
    pub offered: u32,
    /// Leading tokens of it this model kept as its own.
    pub accepted: u32,
    /// The output is the lower answer, whole (the same text).
    pub whole: bool,
    /// Time of the pass that scored the lower answer.
    pub verify_ms: f64,
    /// It was scored in the pass that ended the prompt (a short prompt on
    /// a model whose generated passes are exact), not in a pass of its own.
    #[serde(default)]
    pub with_prompt: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("tier {tier}: {path} is not a usable model: {reason}")]
    BadModel {
        tier: String,
        path: PathBuf,
        reason: String,
    },
    #[error("tier {tier}: llama.cpp could not load {path} (unsupported architecture or corrupt tensors; see the log)")]
    LoadFailed { tier: String, path: PathBuf },
    #[error("tier {tier}: llama.cpp could not create a context of {context} tokens: {reason}")]
    ContextFailed {
        tier: String,
        context: u32,
        reason: String,
    },
    #[error("the prompt has {tokens} tokens but the context holds {context}: shorten it or raise the tier's context")]
    PromptTooLong { tokens: usize, context: u32 },
    #[error(
        "tier {tier}: {path} failed its probe in a child process, so it was not loaded: {cause}"
    )]
    ProbeFailed {
        tier: String,
        path: PathBuf,
        cause: String,
    },
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    #[error("the inference thread panicked on this request (it goes on serving others): {0}")]
    Panicked(String),
    #[error("model {0} is not loaded")]
    NotLoaded(ModelId),
    #[error("the inference thread has stopped")]
    Stopped,
}

/// An inference engine: llama.cpp, or a scripted fake.
pub trait Engine: Send + Sync + 'static {
    /// Loads the model in `spec`.
    fn load(&self, spec: LoadSpec)
        -> impl Future<Output = Result<LoadedModel, EngineError>> + Send;
    /// Frees a loaded model.
    fn unload(&self, id: ModelId) -> impl Future<Output = ()> + Send;
    /// Generates an answer with a loaded model.
    fn generate(
        &self,
        id: ModelId,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<Generation, EngineError>> + Send;
    /// Makes query embeddings with the model in `spec` (its path, name and
    /// threads), for the model-assisted domain; None when the engine has
    /// none (the fake engine).
    fn embedder(&self, spec: LoadSpec) -> Option<crate::classify::assist::EmbedderFactory> {
        let _ = spec;
        None
    }
}
