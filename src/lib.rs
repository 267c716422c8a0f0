//! xnai-model-router: local, offline LLM inference through a ladder of
//! llama.cpp models of increasing size.
//!
//! # Layout
//!
//! - [`config`]: tiers.yaml, raw and resolved, validation, JSON Schema.
//! - [`gguf`]: reads and checks a GGUF header before llama.cpp sees the file.
//! - [`probe`]: loads each new model file in a child process first, so a file
//!   llama.cpp aborts on fails its tier, not the server; verdicts kept by file identity.
//! - [`estimate`]: a model's memory cost from its GGUF header.
//! - [`cascade`]: start tier, escalation decisions, token shares, the handoff
//!   modes (verify the lower answer, or refine it as a draft).
//! - [`classify`]: the complexity classifier: a model learned from the example bank
//!   over hashed n-grams and the lexical cue-word signals; where it is unsure of the
//!   domain, the smallest tier's embeddings (`classify::assist`); example files; its
//!   evaluation.
//! - [`confidence`]: an answer's confidence: features of its tokens, a probe
//!   of the model's state after the prompt, a per-tier logistic calibration
//!   to the probability it is right, fitting and AUROC.
//! - [`calibrate`]: a ladder measured on questions with accepted answers: every
//!   tier swept, calibrations and thresholds fitted and saved, `eval cascade`.
//! - [`engine`]: the inference trait; llama.cpp on its own thread (a model and its
//!   context owned together), where the requests on one model are decoded together
//!   (continuous batching); the prompt cache (`engine::llama::prefix`, whose last
//!   pass can also score a handed-up answer); speculative decoding; `engine::ggml_hook`, ggml's matrix
//!   product hook with exact F32 and quantized kernels, its flash attention
//!   hook with a prompt kernel of its own, and the reading of the model's state
//!   after a prompt (`engine::ggml_hook::state`); query embeddings on a thread of their own
//!   (`engine::llama::embed`); a scripted fake.
//! - [`pool`]: lazy loading, LRU eviction inside a byte budget, RAII leases, and
//!   [`pool::TierPool::run`], the one way to run a request on a tier.
//! - [`ask`]: one question on one tier, with timings and memory.
//! - [`activity`]: what a call is doing now (queued, loading, generating) for progress reports.
//! - [`router`]: the routing service: argument checks, the cascade over local and
//!   remote tiers through one seam, the queue, history, per-tier statistics, reports.
//! - [`vocab`]: whether one model can draft for another (llama.cpp's rule).
//! - [`quantize`]: derives models of other weight types with llama.cpp's quantizer.
//! - [`http`]: MCP over HTTP (Streamable HTTP and the older SSE), guards, limits, health and metrics.
//! - [`remote`]: scale-out over Redis Streams: the front end's remote tiers and the worker.
//! - [`mcp`]: the MCP tools (route_query, get_tier_status, force_escalate), their
//!   arguments and schemas, MCP over stdio, and the manifest.
//! - [`memory`]: measured process memory, and the one memory view reports show.
//! - [`metrics`]: Prometheus metrics for `GET /metrics`.
//! - [`error`]: the crate error gathering each domain's, and its [`error::ErrorKind`].
//!
//! The binary's subcommands (serve, worker, ask, status, config, bench) live
//! in `src/cli/`, apart from the library.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod activity;
pub mod ask;
pub mod calibrate;
pub mod cascade;
pub mod classify;
pub mod confidence;
pub mod config;
pub mod engine;
pub mod error;
pub mod estimate;
pub mod gguf;
pub mod http;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod quantize;
pub mod remote;
pub mod router;
pub mod vocab;

pub use error::{Error, Result};
