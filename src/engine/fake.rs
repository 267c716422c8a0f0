//! A scripted engine for fast policy and protocol tests: per tier, a canned
//! answer with a fixed token probability, a delay, or a failure. It never
//! stands in for llama.cpp in tests that claim the product works.

use super::{
    Engine, EngineError, FinishReason, GenerateRequest, Generation, LoadSpec, LoadedModel, ModelId,
    PromptFormat,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What the fake does for one tier.
#[derive(Debug, Clone)]
pub struct Script {
    pub text: String,
    /// Probability given to every generated token.
    pub prob: f32,
    pub delay: Duration,
    /// Fail to load with this reason.
    pub load_error: Option<String>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            text: "fake answer".into(),
            prob: 0.9,
            delay: Duration::ZERO,
            load_error: None,
        }
    }
}

#[derive(Default)]
pub struct FakeEngine {
    /// Scripts by tier name. A std mutex: held for a lookup, never across `.await`.
    scripts: Mutex<HashMap<String, Script>>,
    /// Tier name of each loaded model id.
    loaded: Mutex<HashMap<ModelId, String>>,
    next: AtomicU64,
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn script(&self, tier: &str, script: Script) {
        self.scripts
            .lock()
            .unwrap()
            .insert(tier.to_string(), script);
    }

    /// Tier names currently loaded in the fake, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<String> = self.loaded.lock().unwrap().values().cloned().collect();
        v.sort();
        v
    }

    fn script_for(&self, tier: &str) -> Script {
        self.scripts
            .lock()
            .unwrap()
            .get(tier)
            .cloned()
            .unwrap_or_default()
    }
}

impl Engine for FakeEngine {
    async fn load(&self, spec: LoadSpec) -> Result<LoadedModel, EngineError> {
        let script = self.script_for(&spec.name);
        if let Some(reason) = script.load_error {
            return Err(EngineError::BadModel {
                tier: spec.name,
                path: spec.path,
                reason,
            });
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.loaded.lock().unwrap().insert(id, spec.name);
        Ok(LoadedModel {
            id,
            load_ms: 0.0,
            context: spec.context,
        })
    }

    async fn unload(&self, id: ModelId) {
        self.loaded.lock().unwrap().remove(&id);
    }

    async fn generate(
        &self,
        id: ModelId,
        request: GenerateRequest,
    ) -> Result<Generation, EngineError> {
        let tier = self
            .loaded
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or(EngineError::NotLoaded(id))?;
        let script = self.script_for(&tier);
        let words: Vec<&str> = script.text.split_whitespace().collect();
        let limit = words.len().min(request.max_tokens as usize);
        // The delay is spread over the words, one "token" each, so progress
        // and cancellation behave as in a real generation.
        let per_word = script.delay / limit.max(1) as u32;
        let mut n = 0;
        let mut cancelled = false;
        while n < limit {
            if request.cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            if !per_word.is_zero() {
                tokio::time::sleep(per_word).await;
            }
            n += 1;
            request.progress.set(n as u32);
        }
        let text = words[..n].join(" ");
        Ok(Generation {
            text,
            token_ids: (0..n as u32).collect(),
            token_probs: vec![script.prob; n],
            token_entropies: vec![0.0; n],
            prompt_tokens: request
                .messages
                .iter()
                .map(|m| m.content.len() as u32 / 4)
                .sum(),
            cached_tokens: 0,
            completion_tokens: n as u32,
            finish: if cancelled {
                FinishReason::Cancelled
            } else if n < words.len() {
                FinishReason::Length
            } else {
                FinishReason::EndOfText
            },
            prompt_format: PromptFormat::ModelTemplate,
            prompt_ms: 0.0,
            generate_ms: script.delay.as_secs_f64() * 1e3,
            tokens_per_second: 0.0,
            batch_width: 1.0,
            verified: None,
            prompt_state: None,
            speculative: None,
        })
    }
}
