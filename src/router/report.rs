//! What the router reports: a route result with every attempt, and the
//! ladder's status for get_tier_status. Plain serializable data; the MCP
//! tools publish these types' JSON Schemas as their output schemas.

use crate::cascade::{Outcome, RoutedBy};
use crate::classify::Complexity;
use crate::confidence::Features;
use crate::config::Tier;
use crate::engine::{FinishReason, PromptFormat, SpecStats};
use crate::memory::MemoryView;
use crate::remote::RemoteStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One tier's try at the answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub tier: String,
    pub role: String,
    pub model: String,
    /// The calibrated probability that this answer is right, in [0, 1];
    /// 0 when the attempt failed.
    pub confidence: f64,
    pub threshold: f64,
    /// What the confidence was computed from (absent when the attempt failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// What happened after it: confidence_met, escalated, top_tier_reached,
    /// escalation_limit, budget, or failed.
    pub outcome: Outcome,
    pub prompt_tokens: u32,
    /// Leading prompt tokens reused from the tier's prompt cache or a saved
    /// KV state instead of computed.
    #[serde(default)]
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub max_tokens: u32,
    pub tokens_per_second: f64,
    /// Waiting for the request queue (first local attempt), for an in-use
    /// model to free up and for the inference thread, or for a worker.
    pub queue_ms: f64,
    pub load_ms: f64,
    /// Prompt processing and generation.
    pub generate_ms: f64,
    pub finish: Option<FinishReason>,
    pub prompt_format: Option<PromptFormat>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Drafting and acceptance, when this attempt was decoded speculatively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpecStats>,
    /// Mean requests decoded together while this one generated (1 = alone;
    /// at most `server.max_batch`).
    #[serde(default)]
    pub batch_width: f64,
    /// The worker that answered, when the tier is remote (served through Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// How this attempt verified the lower tier's answer (routing.handoff: verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffReport>,
}

/// Whether a verified handoff kept the lower answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoffOutcome {
    /// This tier agreed with the lower answer token for token: it stands.
    Verified,
    /// This tier kept a prefix (maybe none) and wrote the rest itself.
    Corrected,
}

/// A lower tier's answer, as the next tier verified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandoffReport {
    /// The tier whose answer was verified.
    pub from_tier: String,
    pub outcome: HandoffOutcome,
    /// The lower answer's tokens in this tier's vocabulary.
    pub offered_tokens: u32,
    /// Leading tokens of it this tier kept.
    pub accepted_tokens: u32,
    /// Time of the pass that scored the lower answer.
    pub verify_ms: f64,
    /// The lower answer was scored in the pass that ended the prompt (a
    /// short prompt on a model whose multi-token passes are exact), not in
    /// a pass of its own.
    #[serde(default)]
    pub with_prompt: bool,
}

impl HandoffReport {
    /// The report of `stats` for an answer handed up from `from_tier`.
    pub fn of(from_tier: &str, stats: &crate::engine::VerifyStats) -> Self {
        HandoffReport {
            from_tier: from_tier.to_string(),
            outcome: if stats.whole {
                HandoffOutcome::Verified
            } else {
                HandoffOutcome::Corrected
            },
            offered_tokens: stats.offered,
            accepted_tokens: stats.accepted,
            verify_ms: stats.verify_ms,
            with_prompt: stats.with_prompt,
        }
    }
}

impl Attempt {
    /// An attempt on `t` that has not run yet: failed until told otherwise.
    pub fn on(t: &Tier, max_tokens: u32) -> Self {
        Attempt {
            tier: t.name.clone(),
            role: t.role.as_str().into(),
            model: t.model.display().to_string(),
            confidence: 0.0,
            threshold: t.threshold,
            features: None,
            outcome: Outcome::Failed,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            max_tokens,
            tokens_per_second: 0.0,
            queue_ms: 0.0,
            load_ms: 0.0,
            generate_ms: 0.0,
            finish: None,
            prompt_format: None,
            error: None,
            speculative: None,
            batch_width: 0.0,
            worker: None,
            handoff: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    pub classify_ms: f64,
    /// Waiting in the request queue, for an in-use model to free up and
    /// for the inference thread (or a worker), all attempts.
    pub queue_ms: f64,
    pub load_ms: f64,
    /// Prompt processing and generation, all attempts.
    pub generate_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TokenCounts {
    /// Prompt tokens of the answering attempt.
    pub prompt: u32,
    /// Tokens generated by all attempts.
    pub completion: u32,
    /// Generation speed of the answering attempt.
    pub per_second: f64,
}

/// The result of route_query and force_escalate.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RouteResult {
    /// Pass to force_escalate to re-answer one tier up.
    pub request_id: String,
    pub answer: String,
    /// The tier and model that produced the answer.
    pub tier: String,
    pub model: String,
    pub confidence: f64,
    /// The answering tier's threshold.
    pub threshold: f64,
    pub complexity: Complexity,
    /// Why the first tier was chosen.
    pub routed_by: RoutedBy,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    pub timings: Timings,
    pub tokens: TokenCounts,
    /// Memory after the request.
    pub memory: MemoryView,
    /// For force_escalate: the request this one re-answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_from: Option<String>,
}

/// One tier in get_tier_status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TierStatus {
    pub name: String,
    /// Served by workers through Redis rather than by this process.
    pub remote: bool,
    /// Healthy workers that serve it (remote tiers).
    pub workers: Vec<String>,
    pub role: String,
    pub model: String,
    pub threshold: f64,
    pub loaded: bool,
    /// Requests using it right now.
    pub in_use: usize,
    /// Requests the queue runs on it right now (at most `max_batch`, which
    /// it decodes together).
    pub running: usize,
    /// Requests it decodes together at most (`server.max_batch`; 1 for a
    /// remote tier, whose workers have their own).
    pub max_batch: u32,
    /// Mean requests decoded together during its attempts (1 = alone).
    pub mean_batch_width: f64,
    pub estimated_bytes: u64,
    /// Process RSS measured right after its latest load; null if never loaded.
    pub rss_after_load: Option<u64>,
    /// Milliseconds since it was last used; null when not loaded.
    pub idle_ms: Option<f64>,
    pub loads: u64,
    pub evictions: u64,
    pub attempts: u64,
    /// Requests whose final answer came from this tier.
    pub requests_served: u64,
    /// Attempts here that escalated to the next tier.
    pub escalations_out: u64,
    /// Mean of load + queue + generate per attempt.
    pub mean_latency_ms: f64,
    /// Prompt tokens of its attempts, and how many were reused from its
    /// prompt cache or a saved KV state instead of computed.
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub tokens_per_second: f64,
    /// Speculative decoding totals over this tier's attempts.
    pub speculative: Option<SpecStats>,
}

/// The result of get_tier_status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TierStatusReport {
    pub tiers: Vec<TierStatus>,
    /// Redis and its workers, when this server has remote tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStatus>,
    pub memory: MemoryView,
    /// The KV state store (`cache:`): states saved when tiers were
    /// unloaded, restores, misses and failures since the server started.
    pub kv_store: crate::engine::llama::store::StoreCounts,
    /// Model files probed in a child process (`probe:`) since the server
    /// started, verdicts reused from earlier probes, and files found bad.
    pub probes: crate::probe::ProbeCounts,
    /// The classifier: its bank, the corrections it learned from
    /// (force_escalate, cascades that climbed), and whether learning is on.
    pub routing: crate::classify::learning::LearningStatus,
    /// The model-assisted domain (`routing.assist`): whether it is ready,
    /// still embedding the bank, or off and why; how often it was
    /// consulted and how often it changed a domain.
    pub assist: crate::classify::assist::AssistStatus,
}
