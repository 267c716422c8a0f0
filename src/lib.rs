//! xnai-model-router: local, offline LLM inference through a ladder of
//! llama.cpp models of increasing size.
//!
//! # Layout
//!
//! - [`config`]: tiers.yaml, raw and resolved, validation, JSON Schema.
//! - [`gguf`]: reads and checks a GGUF header before llama.cpp sees the file.
//! - [`estimate`]: a model's memory cost from its GGUF header.
//! - [`engine`]: the inference trait; llama.cpp on its own thread; a scripted fake.
//! - [`pool`]: lazy loading, LRU eviction inside a byte budget, RAII leases.
//! - [`ask`]: one question on one tier, with timings and memory.
//! - [`status`]: the ladder with its costs, as text.
//! - [`quantize`]: derives models of other weight types with llama.cpp's quantizer.
//! - [`bench`]: generation speed against llama.cpp's own llama-bench.
//! - [`memory`]: measured process memory.
//! - [`error`]: the crate error gathering each domain's.

pub mod ask;
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod estimate;
pub mod gguf;
pub mod memory;
pub mod pool;
pub mod quantize;
pub mod status;

pub use error::{Error, Result};
