//! Memory cost of a model before it is loaded, from its GGUF header alone.
//!
//! cost = weights + KV cache + compute allowance, where
//! - weights are the tensor bytes (memory-mapped or locked, they end up resident);
//! - KV cache = sequences x layers x context x kv_heads x (key_dim + value_dim)
//!   x 2 bytes (f16), one sequence per request decoded together
//!   (`server.max_batch`), each holding the tier's whole context;
//! - compute allowance covers llama.cpp's scratch buffers for one micro-batch:
//!   4 bytes x ubatch x (vocab + 8 x embedding), i.e. the logits of a full
//!   micro-batch plus a few activations per token, and a fixed 48 MiB for the
//!   output buffer, repacked weights and allocator slack. Checked against
//!   llama.cpp's own "compute buffer size" log: SmolLM2-135M 106.8 MiB
//!   (formula 110 MiB), Gemma-3-270M 526.3 MiB (formula 547 MiB), ubatch 512.
//!
//! The estimate errs high: the pool uses it to decide what fits, and the
//! measured RSS after loading is reported beside it so a user can see both.

use crate::gguf::GgufInfo;
use serde::Serialize;

/// Tokens per micro-batch the engine uses for prompt processing.
pub const UBATCH: u32 = 512;
/// Fixed allowance for the output buffer, graph metadata and allocator slack.
const FIXED_OVERHEAD: u64 = 48 << 20;
/// Bytes per KV cache element (llama.cpp's default f16 cache).
const KV_ELEMENT_BYTES: u64 = 2;

/// The shape facts the estimate needs, read from the GGUF header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    pub layers: u64,
    pub embedding: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub key_dim: u64,
    pub value_dim: u64,
    pub vocab: u64,
    pub train_context: u64,
}

impl ModelShape {
    /// Reads the shape from `{arch}.*` keys; `None` names the first missing key.
    ///
    /// # Errors
    ///
    /// The name of the first required metadata key that is missing.
    pub fn from_gguf(info: &GgufInfo) -> Result<Self, String> {
        let need = |suffix: &str| {
            info.arch_int(suffix)
                .filter(|v| *v > 0)
                .map(|v| v as u64)
                .ok_or_else(|| format!("GGUF metadata lacks {{arch}}.{suffix}"))
        };
        info.architecture()
            .ok_or("GGUF metadata lacks general.architecture")?;
        let layers = need("block_count")?;
        let embedding = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = info
            .arch_int("attention.head_count_kv")
            .filter(|v| *v > 0)
            .map_or(heads, |v| v as u64);
        let head_dim = embedding / heads;
        let key_dim = info
            .arch_int("attention.key_length")
            .map_or(head_dim, |v| v as u64);
        let value_dim = info
            .arch_int("attention.value_length")
            .map_or(head_dim, |v| v as u64);
        let vocab = info
            .vocab_size()
            .ok_or("GGUF metadata lacks tokenizer.ggml.tokens")?;
        let train_context = info.arch_int("context_length").unwrap_or(2048) as u64;
        Ok(ModelShape {
            layers,
            embedding,
            heads,
            kv_heads,
            key_dim,
            value_dim,
            vocab,
            train_context,
        })
    }
}

/// Estimated resident bytes of one loaded model, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelCost {
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
    pub total: u64,
}

/// Estimates the cost of `weight_bytes` of weights with `shape` and
/// `sequences` KV sequences of `context` tokens each.
pub fn estimate(weight_bytes: u64, shape: &ModelShape, context: u32, sequences: u32) -> ModelCost {
    let ctx = context as u64 * sequences.max(1) as u64;
    let kv_cache =
        shape.layers * ctx * shape.kv_heads * (shape.key_dim + shape.value_dim) * KV_ELEMENT_BYTES;
    let ub = UBATCH.min(context) as u64;
    let compute = 4 * ub * (shape.vocab + 8 * shape.embedding) + FIXED_OVERHEAD;
    ModelCost {
        weights: weight_bytes,
        kv_cache,
        compute,
        total: weight_bytes + kv_cache + compute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3_8b() -> ModelShape {
        ModelShape {
            layers: 32,
            embedding: 4096,
            heads: 32,
            kv_heads: 8,
            key_dim: 128,
            value_dim: 128,
            vocab: 128_256,
            train_context: 8192,
        }
    }

    #[test]
    fn kv_cache_follows_the_formula() {
        let c = estimate(0, &llama3_8b(), 2048, 1);
        // 32 layers x 2048 x 8 heads x 256 x 2 bytes = 256 MiB
        assert_eq!(c.kv_cache, 256 << 20);
        // Each request decoded together holds a whole context.
        let four = estimate(0, &llama3_8b(), 2048, 4);
        assert_eq!(four.kv_cache, 4 * (256 << 20));
        assert_eq!(four.compute, c.compute);
    }

    #[test]
    fn cost_grows_with_context_and_sums_its_parts() {
        let small = estimate(1000, &llama3_8b(), 512, 1);
        let large = estimate(1000, &llama3_8b(), 4096, 1);
        assert!(large.total > small.total);
        assert_eq!(small.total, small.weights + small.kv_cache + small.compute);
    }
}
