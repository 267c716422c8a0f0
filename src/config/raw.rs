//! The config file as written: parsed with serde, unknown fields denied,
//! nothing checked yet. [`super::validate`] turns it into the resolved form.

use super::size::ByteSize;
use crate::classify::{Domain, Level};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// tiers.yaml: a ladder of llama.cpp models, smallest first.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// How much memory the resident models may use, and how many at once.
    #[serde(default)]
    pub memory: RawMemory,
    /// How queries are routed to tiers and escalated.
    #[serde(default)]
    pub routing: RawRouting,
    /// The request queue and the HTTP server's limits.
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub cache: CacheSettings,
    /// Each new model file is first loaded in a child process, so a file
    /// that crashes llama.cpp fails its tier instead of the server.
    #[serde(default)]
    pub probe: ProbeSettings,
    /// Scale-out over Redis Streams (`serve --redis`, `worker`).
    #[serde(default)]
    pub redis: RedisSettings,
    /// A calibration file (written by `xnai-model-router calibrate
    /// --write`) that sets the threshold and calibration of the tiers it
    /// lists, over what the tiers below say. Relative paths resolve against
    /// this file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// The ladder, smallest and fastest first; later tiers are larger.
    pub tiers: Vec<RawTier>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// The tier each complexity level starts at. Levels left out are spread
    /// over the ladder: level i of 5 goes to tier floor(i x tiers / 5).
    #[serde(default)]
    pub levels: BTreeMap<Level, String>,
    /// Send a domain (code, math, creative, reasoning, general) to a tier,
    /// with a fallback tier used when that one cannot load.
    #[serde(default)]
    pub domains: BTreeMap<Domain, RawDomainRoute>,
    /// Most escalations after the first attempt. Default: 2.
    #[serde(default = "default_max_escalations")]
    pub max_escalations: u32,
    /// Hand the lower tier's answer to the next tier when a request
    /// escalates (how: `handoff`). Default: true.
    #[serde(default = "default_true")]
    pub hand_over_draft: bool,
    /// How the next tier uses the lower answer. `verify` (the default): it
    /// scores the answer as its own continuation of the conversation in one
    /// pass, keeps what it agrees with and goes on from the first
    /// disagreement, so a greedy answer is exactly its own. `refine`: the
    /// answer is put in its prompt as a draft to rewrite.
    #[serde(default)]
    pub handoff: crate::cascade::HandoffMode,
    /// Total token budget of a request; each tier's share follows its role
    /// (router 10% up to 512, draft 25% up to 1024, refine 50% up to 2048,
    /// expert 75%), capped by the tier's max_tokens. Default: 4096.
    #[serde(default = "default_token_budget")]
    pub token_budget: u32,
    /// Recent requests kept for force_escalate. Default: 64.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Learn from corrections: a force_escalate, and a cascade that escalated
    /// and then met a higher tier's threshold, record the query with the
    /// level that tier stands for, and the classifier retrains with them.
    /// Default: true.
    #[serde(default = "default_true")]
    pub learn: bool,
    /// The corrections store (an SQLite file). Default:
    /// `$XDG_DATA_HOME/xnai-model-router/routing.db`
    /// (`~/.local/share/xnai-model-router/routing.db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Most corrections kept; the oldest go first. Default: 10000.
    #[serde(default = "default_store_max")]
    pub store_max: usize,
    /// What one force_escalate correction weighs in training, against 1 for
    /// an example of the built-in bank. Default: 4.
    #[serde(default = "default_correction_weight")]
    pub correction_weight: f64,
    /// What one cascade correction weighs (a weaker signal; 0 keeps none).
    /// Default: 1.
    #[serde(default = "default_cascade_weight")]
    pub cascade_weight: f64,
    /// Where the classifier is unsure of a query's domain, let the smallest
    /// tier's model settle it: it embeds the query and compares it with
    /// the bank (embedded once per model, in the background, and cached
    /// under `$XDG_CACHE_HOME/xnai-model-router/assist`). Default: true.
    #[serde(default = "default_true")]
    pub assist: bool,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            handoff: Default::default(),
            levels: BTreeMap::new(),
            domains: BTreeMap::new(),
            max_escalations: default_max_escalations(),
            hand_over_draft: true,
            token_budget: default_token_budget(),
            history: default_history(),
            learn: true,
            assist: true,
            store: None,
            store_max: default_store_max(),
            correction_weight: default_correction_weight(),
            cascade_weight: default_cascade_weight(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDomainRoute {
    pub tier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

fn default_max_escalations() -> u32 {
    2
}

fn default_true() -> bool {
    true
}

fn default_token_budget() -> u32 {
    4096
}

fn default_history() -> usize {
    64
}

fn default_store_max() -> usize {
    10_000
}

fn default_correction_weight() -> f64 {
    4.0
}

fn default_cascade_weight() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// Total memory of the machine this ladder is sized for, in bytes or with a
    /// unit (`6GB`). Default: 6 GB, the original target machine.
    #[serde(default = "default_budget")]
    pub budget: ByteSize,
    /// Part of the budget kept for the OS and this application; models get
    /// `budget - reserve`. Default: 1 GB.
    #[serde(default = "default_reserve")]
    pub reserve: ByteSize,
    /// Most models resident at once. Default: 2.
    #[serde(default = "default_max_loaded")]
    pub max_loaded: usize,
    /// After a request, load the next tier up if that evicts nothing in use,
    /// so an escalation finds it warm. Default: false.
    #[serde(default)]
    pub preload_next: bool,
}

impl Default for RawMemory {
    fn default() -> Self {
        RawMemory {
            budget: default_budget(),
            reserve: default_reserve(),
            max_loaded: default_max_loaded(),
            preload_next: false,
        }
    }
}

/// The request queue, shutdown and the HTTP transport's limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Requests that may wait while one is being answered; one more gets a
    /// busy error at once. Default: 16.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// How many times a waiting request may be overtaken by a later one for
    /// a tier that is already resident (avoids load/evict thrashing when
    /// agents alternate tiers, without starving anyone). 0 keeps strict
    /// arrival order. Default: 4.
    #[serde(default = "default_max_bypass")]
    pub max_bypass: u32,
    /// Requests one resident tier decodes together (continuous batching):
    /// each has a KV sequence of the tier's full context, so a tier's KV
    /// cache, and its memory estimate, grow with this. 1 answers one
    /// request at a time. Default: 4.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM
    /// before they are cancelled. Default: 30.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Largest HTTP request body accepted. Default: 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Most HTTP sessions open at once (Streamable HTTP and SSE together).
    /// Default: 64.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Seconds after which an HTTP session with no activity is closed.
    /// Default: 600.
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            queue_depth: default_queue_depth(),
            max_bypass: default_max_bypass(),
            max_batch: default_max_batch(),
            shutdown_grace_secs: default_shutdown_grace(),
            max_body: default_max_body(),
            max_sessions: default_max_sessions(),
            session_idle_secs: default_session_idle(),
        }
    }
}

/// Where a tier's KV state goes when it is unloaded, so that a prompt that
/// shares its prefix after the tier comes back is restored, not recomputed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Folder for saved states. Default: the project's cache folder,
    /// `~/.cache/xnai-model-router/kv`.
    #[serde(default)]
    pub dir: Option<String>,
    /// Most bytes of saved states kept on disk, least recently used out
    /// first; 0 turns saving off. Default: 2 GiB.
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: ByteSize,
}

fn default_cache_max_bytes() -> ByteSize {
    ByteSize(2 << 30)
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            dir: None,
            max_bytes: default_cache_max_bytes(),
        }
    }
}

/// Loading each new model file in a child process before this one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Probe model files before loading them. Default: true. Turning it
    /// off lets a malformed file that llama.cpp aborts on end the process.
    #[serde(default = "default_true_probe")]
    pub enabled: bool,
    /// Folder for the verdicts, one per file identity (path, size,
    /// modification time, hash of its first and last bytes). Default:
    /// `~/.cache/xnai-model-router/probes`.
    #[serde(default)]
    pub dir: Option<String>,
}

fn default_true_probe() -> bool {
    true
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            enabled: true,
            dir: None,
        }
    }
}

/// Scale-out over Redis Streams: delivery, retention and failure timings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Milliseconds a job may sit unacknowledged with a worker that stopped
    /// renewing it (died or hung) before another worker takes it over.
    /// Default: 30000.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Deliveries after which a job whose workers keep stopping on it is
    /// failed and moved to the dead-letter stream. Default: 3.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: usize,
    /// Approximate most entries kept per job stream (XADD MAXLEN ~).
    /// Default: 10000.
    #[serde(default = "default_stream_maxlen")]
    pub stream_maxlen: usize,
    /// Seconds results, progress and cancel keys live. Default: 600.
    #[serde(default = "default_result_ttl")]
    pub result_ttl_secs: u64,
    /// Seconds between worker heartbeats; a worker is listed until three
    /// are missed. Default: 2.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Seconds a remote attempt may take, queueing included, before the
    /// front end gives up on it. Default: 900.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds an in-flight remote attempt waits for an unreachable Redis
    /// to come back before failing. Default: 30.
    #[serde(default = "default_outage")]
    pub outage_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            claim_idle_ms: default_claim_idle_ms(),
            max_deliveries: default_max_deliveries(),
            stream_maxlen: default_stream_maxlen(),
            result_ttl_secs: default_result_ttl(),
            heartbeat_secs: default_heartbeat(),
            request_timeout_secs: default_request_timeout(),
            outage_secs: default_outage(),
        }
    }
}

fn default_claim_idle_ms() -> u64 {
    30_000
}

fn default_max_deliveries() -> usize {
    3
}

fn default_stream_maxlen() -> usize {
    10_000
}

fn default_result_ttl() -> u64 {
    600
}

fn default_heartbeat() -> u64 {
    2
}

fn default_request_timeout() -> u64 {
    900
}

fn default_outage() -> u64 {
    30
}

fn default_queue_depth() -> usize {
    16
}

fn default_max_bypass() -> u32 {
    4
}

fn default_max_batch() -> u32 {
    4
}

fn default_shutdown_grace() -> u64 {
    30
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_max_sessions() -> usize {
    64
}

fn default_session_idle() -> u64 {
    600
}

fn default_budget() -> ByteSize {
    ByteSize::gib(6)
}

fn default_reserve() -> ByteSize {
    ByteSize::gib(1)
}

fn default_max_loaded() -> usize {
    2
}

/// What a tier is for, from the design's ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// ~0.5B: trivial queries, routing.
    Router,
    /// ~1.5-3B: drafts and simple answers.
    Draft,
    /// ~3-7B: refines drafts, medium queries.
    Refine,
    /// 7B+: expert queries only.
    Expert,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Draft => "draft",
            Role::Refine => "refine",
            Role::Expert => "expert",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Unique name, used by `--tier`, `preferred_tier` and `draft`.
    pub name: String,
    pub role: Role,
    /// GGUF file. Relative paths resolve against this file's folder;
    /// `${XNAI_MODELS_DIR}` (and any `${VAR}`) expands from the environment.
    pub model: String,
    /// Minimum answer confidence in [0,1] to stop at this tier; below it the
    /// request escalates. The confidence is the calibrated probability that
    /// the answer is right, so the threshold is the precision this tier's
    /// accepted answers should keep (`calibrate` fits it).
    pub threshold: f64,
    /// Most tokens this tier generates for one answer.
    pub max_tokens: u32,
    /// Another tier whose model drafts for this one (speculative decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Context size in tokens. Default: the smaller of 4096 and the model's
    /// training context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<u32>,
    /// CPU threads for generation. Default: the number of CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Lock the weights in RAM (mlock) so the OS never pages them out.
    /// Default: false (weights are memory-mapped).
    #[serde(default)]
    pub mlock: bool,
    /// Speculative decoding settings (used with `draft`, or for n-gram drafting).
    #[serde(default)]
    pub speculative: RawSpeculative,
    /// Served by `worker` processes through Redis (`serve --redis URL`), not
    /// by the front end: its model file need not exist on the front end's
    /// machine. Default: false.
    #[serde(default)]
    pub remote: bool,
    /// How this tier's answer features become its confidence (a logistic
    /// model; `calibrate` fits it). Default: the built-in calibration
    /// fitted on the default ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::confidence::Calibration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpeculative {
    /// Most tokens drafted per target pass. Default: 8.
    #[serde(default = "default_draft_max")]
    pub draft_max: u32,
    /// Fewest tokens drafted per pass (adaptive mode never goes below). Default: 1.
    #[serde(default = "default_draft_min")]
    pub draft_min: u32,
    /// Stop a draft early when the draft model's probability of its next
    /// token is below this. Default: 0 (never stop early).
    #[serde(default)]
    pub p_min: f32,
    /// Grow the draft length while drafts are accepted, shrink it on early
    /// rejections. Default: false.
    #[serde(default)]
    pub adaptive: bool,
    /// Without a draft model, draft by prompt lookup (n-grams of the prompt
    /// and the text so far). Default: false.
    #[serde(default)]
    pub ngram: bool,
}

impl Default for RawSpeculative {
    fn default() -> Self {
        RawSpeculative {
            draft_max: default_draft_max(),
            draft_min: default_draft_min(),
            p_min: 0.0,
            adaptive: false,
            ngram: false,
        }
    }
}

fn default_draft_max() -> u32 {
    8
}

fn default_draft_min() -> u32 {
    1
}
